//! `nvme-dio plot a.json b.json -o cmp.svg`: the latency of several bench runs, overlaid.
//!
//! Reads `nvme-dio bench --json` files. Where a file carries histogram bins
//! (`latency_histogram_ns: [{"le_ns": N, "count": N}, ...]`, anywhere in the object, once per
//! direction: under `read` / `write`, or as a map keyed by direction), each direction is one
//! series with a CDF and a histogram; a file with only the percentile keys of older runs
//! (`latency.p50_ns` ...) gives a CDF through its percentiles (no histogram). The SVG is
//! written by hand: two panels on the same log-scaled latency axis, a CDF on a "nines" scale
//! (0, 90, 99, 99.9 ... %: the tail is what a storage engineer compares) and the histogram
//! as the fraction of I/Os per bin (10 bins per decade, so runs of any length compare), and
//! a legend with each run's settings and p50 / p99.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::args::PlotArgs;
use crate::error::CliError;

/// One curve: a run, or one direction of a run.
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    /// The legend label.
    pub label: String,
    /// Cumulative points `(latency_ns, fraction 0..=1)`, ascending.
    pub cdf: Vec<(f64, f64)>,
    /// Histogram bins `(upper bound ns, count)`, when the file has them.
    pub bins: Option<Vec<(f64, u64)>>,
}

impl Series {
    /// The latency at fraction `p` (first CDF point at or above it).
    pub fn quantile(&self, p: f64) -> Option<f64> {
        self.cdf
            .iter()
            .find(|&&(_, f)| f >= p - 1e-12)
            .map(|&(x, _)| x)
    }
}

fn bins_of(v: &Value) -> Option<Vec<(f64, u64)>> {
    let a = v.as_array()?;
    let mut out: Vec<(f64, u64)> = a
        .iter()
        .filter_map(|b| Some((b.get("le_ns")?.as_f64()?, b.get("count")?.as_u64()?)))
        .collect();
    out.sort_by(|a, b| a.0.total_cmp(&b.0));
    (!out.is_empty()).then_some(out)
}

/// Every `latency_histogram_ns` in `v` with the direction it belongs to (the nearest
/// `read` / `write` / ... key above it, or the key of a map of histograms); per-queue
/// arrays are skipped (they repeat the totals).
fn find_histograms(v: &Value, dir: &str, out: &mut Vec<(String, Vec<(f64, u64)>)>, depth: u8) {
    let Some(o) = v.as_object() else { return };
    if depth > 4 {
        return;
    }
    for (k, x) in o {
        if k == "latency_histogram_ns" {
            if let Some(b) = bins_of(x) {
                out.push((dir.to_string(), b));
            } else if let Some(m) = x.as_object() {
                for (d, h) in m {
                    if let Some(b) = bins_of(h) {
                        out.push((d.clone(), b));
                    }
                }
            }
        } else if x.is_object() && k != "settings" {
            let d = if dir.is_empty() { k.as_str() } else { dir };
            find_histograms(x, d, out, depth + 1);
        }
    }
}

/// `p99_9_ns` -> 99.9, `p50_ns` -> 50.
fn percentile_key(k: &str) -> Option<f64> {
    let n = k.strip_prefix('p')?.strip_suffix("_ns")?;
    n.replacen('_', ".", 1).parse().ok()
}

fn cdf_from_percentiles(l: &Value) -> Option<Vec<(f64, f64)>> {
    let o = l.as_object()?;
    let mut pts: Vec<(f64, f64)> = o
        .iter()
        .filter_map(|(k, v)| Some((v.as_f64()?, percentile_key(k)? / 100.0)))
        .collect();
    if let Some(min) = o.get("min_ns").and_then(Value::as_f64) {
        pts.push((min, 0.0));
    }
    if let Some(max) = o.get("max_ns").and_then(Value::as_f64) {
        pts.push((max, 1.0));
    }
    pts.retain(|&(x, _)| x > 0.0);
    pts.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.total_cmp(&b.0)));
    // Percentiles of a histogram are monotone; keep them so even if rounding is not.
    for i in 1..pts.len() {
        pts[i].0 = pts[i].0.max(pts[i - 1].0);
    }
    (pts.len() >= 2).then_some(pts)
}

fn cdf_from_bins(b: &[(f64, u64)]) -> Vec<(f64, f64)> {
    let total: u64 = b.iter().map(|x| x.1).sum();
    let mut cum = 0;
    b.iter()
        .filter(|x| x.1 > 0)
        .map(|&(le, c)| {
            cum += c;
            (le, cum as f64 / total as f64)
        })
        .collect()
}

/// A short description of the run: `randread 4k QD 32 emu, 590 k IOPS`.
fn describe(v: &Value) -> String {
    let s = &v["settings"];
    let mut parts = Vec::new();
    if let Some(w) = s["workload"].as_str() {
        parts.push(w.to_string());
    }
    if let Some(b) = s["io_size_bytes"].as_u64() {
        parts.push(if b % 1024 == 0 {
            format!("{}k", b / 1024)
        } else {
            format!("{b}B")
        });
    }
    if let Some(q) = s["queue_depth"].as_u64() {
        parts.push(format!("QD {q}"));
    }
    if let Some(d) = v["device"].as_str() {
        parts.push(d.to_string());
    }
    let mut d = parts.join(" ");
    if let Some(iops) = v["iops"].as_f64() {
        let _ = write!(d, ", {:.0} k IOPS", iops / 1e3);
    }
    d
}

/// The series of one bench JSON object; `name` labels them (the file's stem).
///
/// # Errors
///
/// A sentence when the object has neither histogram bins nor latency percentiles.
pub fn series(name: &str, v: &Value) -> Result<Vec<Series>, String> {
    let what = describe(v);
    let label = |dir: &str| {
        let mut l = name.to_string();
        if !dir.is_empty() {
            let _ = write!(l, " ({dir})");
        }
        if !what.is_empty() {
            let _ = write!(l, ": {what}");
        }
        l
    };
    let mut h = Vec::new();
    find_histograms(v, "", &mut h, 0);
    h.retain(|(_, b)| b.iter().any(|x| x.1 > 0));
    // A direction's own histogram says more than the total of both.
    if h.iter().any(|(d, _)| !d.is_empty()) {
        h.retain(|(d, _)| !d.is_empty());
    }
    if !h.is_empty() {
        // One direction only (a read-only or write-only run): it needs no direction in its
        // name.
        let one = h.len() == 1;
        return Ok(h
            .into_iter()
            .map(|(d, b)| Series {
                label: label(if one { "" } else { &d }),
                cdf: cdf_from_bins(&b),
                bins: Some(b),
            })
            .collect());
    }
    // Older files: the percentiles, per direction where present, else the total.
    let mut out = Vec::new();
    for d in ["read", "write"] {
        if let Some(cdf) = cdf_from_percentiles(&v[d]["latency"]) {
            out.push(Series {
                label: label(d),
                cdf,
                bins: None,
            });
        }
    }
    if out.is_empty()
        && let Some(cdf) = cdf_from_percentiles(&v["latency"])
    {
        out.push(Series {
            label: label(""),
            cdf,
            bins: None,
        });
    }
    if out.is_empty() {
        return Err(
            "has no latency data (neither latency_histogram_ns bins nor latency percentiles such as latency.p50_ns, all above zero): give files written by `nvme-dio bench --json` of runs that completed I/Os".into(),
        );
    }
    Ok(out)
}

const COLORS: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
];

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// `1 µs`, `20 ms`: a latency tick label.
pub fn ns_label(ns: f64) -> String {
    let (v, u) = if ns >= 1e9 {
        (ns / 1e9, "s")
    } else if ns >= 1e6 {
        (ns / 1e6, "ms")
    } else if ns >= 1e3 {
        (ns / 1e3, "µs")
    } else {
        (ns, "ns")
    };
    // Three significant digits: 2.06 µs, 24.6 µs, 379 µs (tick values print whole).
    let digits = if v >= 100.0 {
        0
    } else if v >= 10.0 {
        1
    } else {
        2
    };
    let t = format!("{v:.digits$}");
    let t = if t.contains('.') {
        t.trim_end_matches('0').trim_end_matches('.')
    } else {
        &t
    };
    format!("{t} {u}")
}

/// The deepest "nines" the CDF axis shows: 99.999 %.
const NINES: f64 = 5.0;

fn nines(p: f64) -> f64 {
    (-(1.0 - p).max(10f64.powf(-NINES)).log10()).clamp(0.0, NINES)
}

/// Draws the series. Geometry: 960 px wide; CDF panel, histogram panel, legend below.
pub fn svg(series: &[Series], title: &str) -> String {
    const W: f64 = 960.0;
    const L: f64 = 90.0;
    const R: f64 = 930.0;
    const CDF_TOP: f64 = 70.0;
    const CDF_BOT: f64 = 370.0;
    const H_TOP: f64 = 430.0;
    const H_BOT: f64 = 640.0;
    let legend_top = 700.0;
    let height = legend_top + 24.0 * series.len() as f64 + 20.0;

    let xs = series
        .iter()
        .flat_map(|s| s.cdf.iter().map(|p| p.0))
        .filter(|x| *x > 0.0);
    let (lo, hi) = xs.fold((f64::MAX, 0f64), |(a, b), x| (a.min(x), b.max(x)));
    let (lo, hi) = if hi <= 0.0 { (1.0, 10.0) } else { (lo, hi) };
    let dlo = lo.log10().floor();
    let dhi = hi.log10().ceil().max(dlo + 1.0);
    let x_of = |ns: f64| L + (ns.max(1e-3).log10() - dlo) / (dhi - dlo) * (R - L);

    let mut o = String::new();
    let _ = writeln!(
        o,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{height}" viewBox="0 0 {W} {height}" font-family="sans-serif" font-size="13">"#
    );
    let _ = writeln!(
        o,
        r#"<rect x="0" y="0" width="{W}" height="{height}" fill="white"/>"#
    );
    let _ = writeln!(
        o,
        r#"<text x="{}" y="30" text-anchor="middle" font-size="17" font-weight="bold">{}</text>"#,
        W / 2.0,
        esc(title)
    );

    // Both panels: frame, decade grid and labels on the shared latency axis.
    for (top, bot) in [(CDF_TOP, CDF_BOT), (H_TOP, H_BOT)] {
        let _ = writeln!(
            o,
            r##"<rect x="{L}" y="{top}" width="{}" height="{}" fill="none" stroke="#444"/>"##,
            R - L,
            bot - top
        );
        let mut d = dlo;
        while d <= dhi + 1e-9 {
            let ns = 10f64.powf(d);
            let x = x_of(ns);
            let _ = writeln!(
                o,
                r##"<line x1="{x:.1}" y1="{top}" x2="{x:.1}" y2="{bot}" stroke="#ccc"/><text x="{x:.1}" y="{}" text-anchor="middle">{}</text>"##,
                bot + 18.0,
                ns_label(ns)
            );
            if d < dhi {
                for m in 2..10 {
                    let xm = x_of(ns * m as f64);
                    let _ = writeln!(
                        o,
                        r##"<line x1="{xm:.1}" y1="{bot}" x2="{xm:.1}" y2="{}" stroke="#444"/>"##,
                        bot - 5.0
                    );
                }
            }
            d += 1.0;
        }
        let _ = writeln!(
            o,
            r#"<text x="{}" y="{}" text-anchor="middle">latency (log scale)</text>"#,
            (L + R) / 2.0,
            bot + 38.0
        );
    }

    // CDF panel: the y axis in nines.
    let y_cdf = |p: f64| CDF_BOT - nines(p) / NINES * (CDF_BOT - CDF_TOP);
    for (k, name) in ["0%", "90%", "99%", "99.9%", "99.99%", "99.999%"]
        .iter()
        .enumerate()
    {
        let y = CDF_BOT - k as f64 / NINES * (CDF_BOT - CDF_TOP);
        let _ = writeln!(
            o,
            r##"<line x1="{L}" y1="{y:.1}" x2="{R}" y2="{y:.1}" stroke="#ccc"/><text x="{}" y="{:.1}" text-anchor="end">{name}</text>"##,
            L - 6.0,
            y + 4.0
        );
    }
    let _ = writeln!(
        o,
        r#"<text x="22" y="{}" text-anchor="middle" transform="rotate(-90 22 {})">I/Os at or below (CDF)</text>"#,
        (CDF_TOP + CDF_BOT) / 2.0,
        (CDF_TOP + CDF_BOT) / 2.0
    );
    for (i, s) in series.iter().enumerate() {
        let c = COLORS[i % COLORS.len()];
        // A step function: the fraction holds until the next point's latency.
        let mut d = String::new();
        let mut prev = 0.0;
        for (k, &(x, p)) in s.cdf.iter().enumerate() {
            let (px, py) = (x_of(x), y_cdf(p));
            if k == 0 {
                let _ = write!(d, "M{px:.1},{:.1}", y_cdf(0.0));
            } else {
                let _ = write!(d, " L{px:.1},{:.1}", y_cdf(prev));
            }
            let _ = write!(d, " L{px:.1},{py:.1}");
            prev = p;
        }
        let _ = writeln!(
            o,
            r#"<path d="{d}" fill="none" stroke="{c}" stroke-width="2.5"/>"#
        );
    }

    // Histogram panel: fraction of I/Os per tenth of a decade.
    const PER_DECADE: f64 = 10.0;
    let nbins = ((dhi - dlo) * PER_DECADE).round() as usize;
    let rebinned: Vec<Option<Vec<f64>>> = series
        .iter()
        .map(|s| {
            let b = s.bins.as_ref()?;
            let total: u64 = b.iter().map(|x| x.1).sum();
            let mut v = vec![0.0; nbins];
            for &(le, c) in b {
                let i = ((le.max(1e-3).log10() - dlo) * PER_DECADE).ceil() as isize - 1;
                v[i.clamp(0, nbins as isize - 1) as usize] += c as f64 / total.max(1) as f64;
            }
            Some(v)
        })
        .collect();
    let top = rebinned
        .iter()
        .flatten()
        .flat_map(|v| v.iter().copied())
        .fold(0f64, f64::max);
    let ymax = if top <= 0.0 {
        1.0
    } else {
        ((top * 10.0).ceil() / 10.0).min(1.0)
    };
    let y_h = |f: f64| H_BOT - f / ymax * (H_BOT - H_TOP);
    for k in 0..=4 {
        let f = ymax * k as f64 / 4.0;
        let y = y_h(f);
        let _ = writeln!(
            o,
            r##"<line x1="{L}" y1="{y:.1}" x2="{R}" y2="{y:.1}" stroke="#eee"/><text x="{}" y="{:.1}" text-anchor="end">{:.0}%</text>"##,
            L - 6.0,
            y + 4.0,
            f * 100.0
        );
    }
    let _ = writeln!(
        o,
        r#"<text x="22" y="{}" text-anchor="middle" transform="rotate(-90 22 {})">I/Os per bin</text>"#,
        (H_TOP + H_BOT) / 2.0,
        (H_TOP + H_BOT) / 2.0
    );
    if rebinned.iter().all(Option::is_none) {
        let _ = writeln!(
            o,
            r##"<text x="{}" y="{}" text-anchor="middle" fill="#666">no histogram bins in these files (older bench JSON: percentiles only)</text>"##,
            (L + R) / 2.0,
            (H_TOP + H_BOT) / 2.0
        );
    }
    let bin_x = |i: usize| x_of(10f64.powf(dlo + i as f64 / PER_DECADE));
    for (i, v) in rebinned.iter().enumerate() {
        let Some(v) = v else { continue };
        let c = COLORS[i % COLORS.len()];
        let mut d = format!("M{:.1},{:.1}", bin_x(0), y_h(0.0));
        for (k, &f) in v.iter().enumerate() {
            let _ = write!(
                d,
                " L{:.1},{:.1} L{:.1},{:.1}",
                bin_x(k),
                y_h(f),
                bin_x(k + 1),
                y_h(f)
            );
        }
        let _ = write!(d, " L{:.1},{:.1}", bin_x(nbins), y_h(0.0));
        let _ = writeln!(
            o,
            r#"<path d="{d}" fill="{c}" fill-opacity="0.12" stroke="{c}" stroke-width="2.5"/>"#
        );
    }

    // Legend: colour, label, p50 and p99.
    for (i, s) in series.iter().enumerate() {
        let c = COLORS[i % COLORS.len()];
        let y = legend_top + 24.0 * i as f64;
        let q = |p: f64| s.quantile(p).map_or("-".to_string(), ns_label);
        let _ = writeln!(
            o,
            r#"<rect x="{L}" y="{:.1}" width="16" height="16" fill="{c}"/><text x="{}" y="{:.1}">{} — p50 {}, p99 {}, p99.9 {}</text>"#,
            y - 13.0,
            L + 24.0,
            y,
            esc(&s.label),
            q(0.5),
            q(0.99),
            q(0.999)
        );
    }
    o.push_str("</svg>\n");
    o
}

fn stem(p: &Path) -> String {
    p.file_stem()
        .map_or_else(|| p.display().to_string(), |s| s.to_string_lossy().into())
}

/// Runs `nvme-dio plot`.
///
/// # Errors
///
/// [`CliError::File`] for a file that cannot be read or the SVG that cannot be written;
/// [`CliError::BadArgument`] for a file that is not bench JSON.
pub fn run(a: &PlotArgs) -> Result<(), CliError> {
    let mut all = Vec::new();
    for f in &a.files {
        let text = std::fs::read_to_string(f).map_err(|source| CliError::File {
            op: "read",
            path: f.clone(),
            source,
        })?;
        let v: Value = serde_json::from_str(&text).map_err(|e| {
            CliError::BadArgument(format!(
                "{} is not JSON ({e}): give files written by `nvme-dio bench --json > FILE`",
                f.display()
            ))
        })?;
        let s = series(&stem(f), &v)
            .map_err(|e| CliError::BadArgument(format!("{} {e}", f.display())))?;
        all.extend(s);
    }
    let title = a.title.clone().unwrap_or_else(|| {
        format!(
            "nvme-dio bench latency: {}",
            a.files
                .iter()
                .map(|f| stem(f))
                .collect::<Vec<_>>()
                .join(" vs ")
        )
    });
    let out: &PathBuf = &a.output;
    std::fs::write(out, svg(&all, &title)).map_err(|source| CliError::File {
        op: "write",
        path: out.clone(),
        source,
    })?;
    crate::out::status(&format!(
        "wrote {} ({} series from {} file(s))",
        out.display(),
        all.len(),
        a.files.len()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn old_style() -> Value {
        json!({"device": "emu", "iops": 500000.0,
               "settings": {"workload": "randread", "io_size_bytes": 4096, "queue_depth": 32},
               "latency": {"avg_ns": 50000.0, "min_ns": 20000, "max_ns": 300000,
                           "p50_ns": 40000, "p90_ns": 48000, "p99_ns": 90000,
                           "p99_9_ns": 200000, "p99_99_ns": 300000}})
    }

    #[test]
    fn percentile_keys_give_a_cdf_when_there_are_no_bins() {
        let s = series("a", &old_style()).unwrap();
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].label, "a: randread 4k QD 32 emu, 500 k IOPS");
        assert!(s[0].bins.is_none());
        assert_eq!(s[0].cdf.first(), Some(&(20000.0, 0.0)));
        assert_eq!(s[0].cdf.last(), Some(&(300000.0, 1.0)));
        assert_eq!(s[0].quantile(0.5), Some(40000.0));
        assert_eq!(s[0].quantile(0.999), Some(200000.0));
        assert_eq!(percentile_key("p99_99_ns"), Some(99.99));
        assert_eq!(percentile_key("avg_ns"), None);
    }

    #[test]
    fn histogram_bins_per_direction_win_over_percentiles() {
        let mut v = old_style();
        v["read"] = json!({"latency_histogram_ns": [
            {"le_ns": 1000, "count": 1}, {"le_ns": 2000, "count": 2}, {"le_ns": 4000, "count": 1}]});
        v["write"] = json!({"latency_histogram_ns": [{"le_ns": 8000, "count": 4}]});
        // A per-queue copy and a total are not extra series.
        v["queues"] = json!([{"latency_histogram_ns": [{"le_ns": 1, "count": 9}]}]);
        v["latency_histogram_ns"] = json!([{"le_ns": 1000, "count": 8}]);
        let s = series("b", &v).unwrap();
        assert_eq!(s.len(), 2, "{s:?}");
        assert!(s[0].label.starts_with("b (read): "), "{}", s[0].label);
        assert_eq!(
            s[0].cdf,
            vec![(1000.0, 0.25), (2000.0, 0.75), (4000.0, 1.0)]
        );
        assert_eq!(s[0].quantile(0.5), Some(2000.0));
        assert!(s[1].label.starts_with("b (write): "));
        // A map keyed by direction works too; one direction alone needs no name.
        let v = json!({"latency_histogram_ns": {
            "read": [{"le_ns": 5, "count": 1}], "write": [{"le_ns": 9, "count": 1}]}});
        assert_eq!(series("c", &v).unwrap()[0].label, "c (read)");
        let v = json!({"latency_histogram_ns": {"read": [{"le_ns": 5, "count": 1}]}});
        assert_eq!(series("c", &v).unwrap()[0].label, "c");
        // Only a total: one series without a direction.
        let v = json!({"latency_histogram_ns": [{"le_ns": 5, "count": 1}]});
        assert_eq!(series("d", &v).unwrap()[0].label, "d");
    }

    #[test]
    fn a_file_without_latency_is_refused_with_the_reason() {
        let e = series("x", &json!({"ios": 0, "latency": {"p50_ns": 0}})).unwrap_err();
        assert!(e.contains("no latency data"), "{e}");
    }

    #[test]
    fn svg_has_both_panels_log_ticks_and_a_legend_per_series() {
        let mut v = old_style();
        v["read"] = json!({"latency_histogram_ns": [
            {"le_ns": 900, "count": 5}, {"le_ns": 35000, "count": 90}, {"le_ns": 2000000, "count": 5}]});
        let mut s = series("a <1>", &old_style()).unwrap();
        s.extend(series("b", &v).unwrap());
        let svg = svg(&s, "t & u");
        assert!(svg.starts_with("<svg ") && svg.ends_with("</svg>\n"));
        assert!(
            svg.contains("t &amp; u") && svg.contains("a &lt;1&gt;"),
            "escaped"
        );
        // Decades from 100 ns to 10 ms, labelled.
        for t in [
            ">100 ns<", ">1 µs<", ">10 µs<", ">1 ms<", ">10 ms<", ">99.9%<",
        ] {
            assert!(svg.contains(t), "tick {t}");
        }
        assert_eq!(svg.matches(COLORS[0]).count(), 2, "CDF + legend, no bins");
        assert_eq!(
            svg.matches(COLORS[1]).count(),
            4,
            "CDF, bins (fill and stroke), legend"
        );
        assert!(svg.contains("p50 40 µs, p99 90 µs"), "{svg}");
        assert_eq!(ns_label(1500.0), "1.5 µs");
        assert_eq!(ns_label(2063.0), "2.06 µs");
        assert_eq!(ns_label(24607.0), "24.6 µs");
        assert_eq!(ns_label(3_789_000.0), "3.79 ms");
        assert_eq!(ns_label(100.0), "100 ns");
    }
}
