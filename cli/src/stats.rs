//! Latency statistics: the HDR histogram every worker records into, the summary printed and
//! serialised, and the SVG histogram.

use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Highest latency recorded exactly: 100 s (anything slower is clamped to it).
const MAX_NS: u64 = 100_000_000_000;

/// A fresh latency histogram in nanoseconds, 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_NS, 3).expect("static bounds are valid")
}

/// Records one latency (clamped into the histogram's range).
#[inline]
pub fn record(h: &mut Histogram<u64>, ns: u64) {
    h.saturating_record(ns.clamp(1, MAX_NS));
}

/// Latency figures in nanoseconds (JSON keys carry the unit: `avg_ns`, `p99_9_ns`, ...).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Latency {
    /// Mean.
    #[serde(rename = "avg_ns")]
    pub avg: f64,
    /// Smallest.
    #[serde(rename = "min_ns")]
    pub min: u64,
    /// Largest.
    #[serde(rename = "max_ns")]
    pub max: u64,
    /// Median.
    #[serde(rename = "p50_ns")]
    pub p50: u64,
    /// 90th percentile.
    #[serde(rename = "p90_ns")]
    pub p90: u64,
    /// 99th.
    #[serde(rename = "p99_ns")]
    pub p99: u64,
    /// 99.9th.
    #[serde(rename = "p99_9_ns")]
    pub p99_9: u64,
    /// 99.99th.
    #[serde(rename = "p99_99_ns")]
    pub p99_99: u64,
}

impl Latency {
    /// Summarises a histogram (all zeroes if it is empty).
    pub fn from_histogram(h: &Histogram<u64>) -> Latency {
        if h.is_empty() {
            return Latency::default();
        }
        Latency {
            avg: h.mean(),
            min: h.min(),
            max: h.max(),
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            p99_9: h.value_at_quantile(0.999),
            p99_99: h.value_at_quantile(0.9999),
        }
    }
}

/// One bin of an exported latency histogram: the I/Os whose latency is above the previous
/// bin's `le_ns` and at most this one's (not cumulative).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Bin {
    /// Upper bound of the bin, ns (inclusive).
    pub le_ns: u64,
    /// I/Os in the bin.
    pub count: u64,
}

/// The histogram's non-empty buckets, lowest first, at its full resolution (3 significant
/// digits: each bucket spans at most 0.1% of its value).
pub fn bins(h: &Histogram<u64>) -> Vec<Bin> {
    h.iter_recorded()
        .map(|v| Bin {
            le_ns: h.highest_equivalent(v.value_iterated_to()),
            count: v.count_since_last_iteration(),
        })
        .collect()
}

/// The latency at each percentile of `list`, as `(name, ns)`: `("99.9", 12345)`.
pub fn percentiles(h: &Histogram<u64>, list: &[f64]) -> Percentiles {
    Percentiles(
        list.iter()
            .map(|&p| {
                (
                    pct_name(p),
                    if h.is_empty() {
                        0
                    } else {
                        h.value_at_quantile(p / 100.0)
                    },
                )
            })
            .collect(),
    )
}

/// `50`, `99.9`, `99.99`: a percentile without trailing zeroes.
pub fn pct_name(p: f64) -> String {
    let s = format!("{p:.4}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// Percentiles in the order asked for; serialised as a JSON object `{"50": ns, ...}`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Percentiles(pub Vec<(String, u64)>);

impl Serialize for Percentiles {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}

/// Formats nanoseconds for people: `850 ns`, `6.70 us`, `1.25 ms`, `2.00 s`.
pub fn fmt_ns(ns: f64) -> String {
    if ns < 1_000.0 {
        format!("{ns:.0} ns")
    } else if ns < 1_000_000.0 {
        format!("{:.2} us", ns / 1e3)
    } else if ns < 1_000_000_000.0 {
        format!("{:.2} ms", ns / 1e6)
    } else {
        format!("{:.2} s", ns / 1e9)
    }
}

/// Formats an I/O rate: `5.12 M`, `345.0 k`, `812`.
pub fn fmt_rate(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2} M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.1} k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

/// Log-spaced bins: `(low_ns, high_ns, count)`, 10 per decade, from the first non-empty bin
/// to the last.
pub fn log_bins(h: &Histogram<u64>) -> Vec<(f64, f64, u64)> {
    if h.is_empty() {
        return Vec::new();
    }
    const PER_DECADE: f64 = 10.0;
    let lo_exp = ((h.min().max(1) as f64).log10() * PER_DECADE).floor() as i64;
    let hi_exp = ((h.max().max(1) as f64).log10() * PER_DECADE).floor() as i64;
    let mut bins = Vec::new();
    for e in lo_exp..=hi_exp {
        let lo = 10f64.powf(e as f64 / PER_DECADE);
        let hi = 10f64.powf((e + 1) as f64 / PER_DECADE);
        let count = h.count_between(
            lo.ceil() as u64,
            (hi.ceil() as u64).saturating_sub(1).max(lo.ceil() as u64),
        );
        bins.push((lo, hi, count));
    }
    bins
}

/// Formats a power-of-ten tick: `100 ns`, `1 us`, `10 ms`, `1 s`.
fn tick_label(ns: f64) -> String {
    let (v, unit) = if ns < 1e3 {
        (ns, "ns")
    } else if ns < 1e6 {
        (ns / 1e3, "us")
    } else if ns < 1e9 {
        (ns / 1e6, "ms")
    } else {
        (ns / 1e9, "s")
    };
    format!("{} {unit}", v.round())
}

/// Draws the latency histogram as a standalone SVG: log-scaled latency on x (ticks at each
/// power of ten, 10 bins per decade), I/O count per bin on a log scale on y (so the tail is
/// visible), the p50/p99/p99.9 marked, and `title` plus `lines` (device, engine, settings,
/// figures) on top.
pub fn histogram_svg(h: &Histogram<u64>, title: &str, lines: &[String]) -> String {
    let lines: Vec<String> = lines.iter().flat_map(|l| wrap(l, 140)).collect();
    let (w, ht) = (960.0, 520.0);
    let top = 50.0 + 16.0 * lines.len() as f64;
    let (left, right, bottom) = (80.0, 30.0, 60.0);
    let (pw, ph) = (w - left - right, ht - top - bottom);
    let bins = log_bins(h);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{ht}" viewBox="0 0 {w} {ht}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        s,
        r#"<rect x="0" y="0" width="{w}" height="{ht}" fill="white"/>"#
    );
    let _ = writeln!(
        s,
        r#"<text x="20" y="24" font-size="16" font-weight="bold">{}</text>"#,
        xml(title)
    );
    for (i, l) in lines.iter().enumerate() {
        let _ = writeln!(
            s,
            r#"<text x="20" y="{}">{}</text>"#,
            44.0 + 16.0 * i as f64,
            xml(l)
        );
    }
    if bins.is_empty() {
        let _ = writeln!(
            s,
            r#"<text x="{left}" y="{}">no I/O completed</text>"#,
            top + ph / 2.0
        );
        s.push_str("</svg>\n");
        return s;
    }
    let x_lo = bins[0].0.log10().floor();
    let x_hi = bins[bins.len() - 1].1.log10().ceil().max(x_lo + 1.0);
    let x = |ns: f64| left + (ns.log10() - x_lo) / (x_hi - x_lo) * pw;
    let c_max = bins.iter().map(|b| b.2).max().unwrap_or(1).max(1) as f64;
    let y_hi = (c_max + 1.0).log10().ceil().max(1.0);
    // log10(count + 1): a bin of one I/O still shows.
    let y = |count: f64| top + ph - (count + 1.0).log10() / y_hi * ph;
    // Axes and grid.
    let _ = writeln!(
        s,
        r#"<line x1="{left}" y1="{}" x2="{}" y2="{}" stroke="black"/>"#,
        top + ph,
        left + pw,
        top + ph
    );
    let _ = writeln!(
        s,
        r#"<line x1="{left}" y1="{top}" x2="{left}" y2="{}" stroke="black"/>"#,
        top + ph
    );
    let mut e = x_lo;
    while e <= x_hi + 1e-9 {
        let xv = x(10f64.powf(e));
        let _ = writeln!(
            s,
            r##"<line x1="{xv:.1}" y1="{top}" x2="{xv:.1}" y2="{}" stroke="#e0e0e0"/>"##,
            top + ph
        );
        let _ = writeln!(
            s,
            r#"<text x="{xv:.1}" y="{}" text-anchor="middle">{}</text>"#,
            top + ph + 18.0,
            tick_label(10f64.powf(e))
        );
        e += 1.0;
    }
    for k in 0..=y_hi as u32 {
        let c = 10f64.powi(k as i32);
        let yv = y(c - 1.0);
        let _ = writeln!(
            s,
            r#"<line x1="{}" y1="{yv:.1}" x2="{left}" y2="{yv:.1}" stroke="black"/>"#,
            left - 5.0
        );
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{:.1}" text-anchor="end">{}</text>"#,
            left - 8.0,
            yv + 4.0,
            c as u64
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">latency (log scale): clock read before submit to completion reaped</text>"#,
        left + pw / 2.0,
        ht - 18.0
    );
    let _ = writeln!(
        s,
        r#"<text x="18" y="{0}" text-anchor="middle" transform="rotate(-90 18 {0})">I/Os per bin (log scale)</text>"#,
        top + ph / 2.0
    );
    // Bars.
    for &(lo, hi, count) in &bins {
        if count == 0 {
            continue;
        }
        let (x0, x1) = (x(lo), x(hi));
        let y0 = y(count as f64);
        let _ = writeln!(
            s,
            r##"<rect x="{x0:.1}" y="{y0:.1}" width="{:.1}" height="{:.1}" fill="#4878a8"><title>{} - {}: {count} I/Os</title></rect>"##,
            (x1 - x0 - 1.0).max(0.5),
            top + ph - y0,
            fmt_ns(lo),
            fmt_ns(hi)
        );
    }
    // Percentile markers, labels staggered so close ones stay readable.
    for (i, (q, name)) in [
        (0.5, "p50"),
        (0.99, "p99"),
        (0.999, "p99.9"),
        (0.9999, "p99.99"),
    ]
    .into_iter()
    .enumerate()
    {
        let v = h.value_at_quantile(q).max(1) as f64;
        let xv = x(v);
        let _ = writeln!(
            s,
            r##"<line x1="{xv:.1}" y1="{top}" x2="{xv:.1}" y2="{}" stroke="#c03030" stroke-dasharray="4 3"/>"##,
            top + ph
        );
        let _ = writeln!(
            s,
            r##"<text x="{:.1}" y="{}" fill="#c03030">{name} {}</text>"##,
            xv + 3.0,
            top + 12.0 + 14.0 * i as f64,
            fmt_ns(v)
        );
    }
    s.push_str("</svg>\n");
    s
}

/// Splits `s` at spaces into lines of at most `width` characters (longer words stay whole).
fn wrap(s: &str, width: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for word in s.split(' ') {
        if !cur.is_empty() && cur.len() + 1 + word.len() > width {
            out.push(std::mem::take(&mut cur));
        }
        if !cur.is_empty() {
            cur.push(' ');
        }
        cur.push_str(word);
    }
    out.push(cur);
    out
}

fn xml(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_percentiles_follow_the_recorded_values() {
        let mut h = new_histogram();
        for v in 1..=10_000u64 {
            record(&mut h, v * 100);
        }
        let l = Latency::from_histogram(&h);
        assert_eq!(l.min, 100);
        assert!(
            (l.p50 as f64 - 500_000.0).abs() / 500_000.0 < 0.002,
            "{l:?}"
        );
        assert!(
            (l.p99 as f64 - 990_000.0).abs() / 990_000.0 < 0.002,
            "{l:?}"
        );
        assert!(l.p99_9 >= l.p99 && l.p99_99 >= l.p99_9 && l.max >= l.p99_99);
        assert_eq!(
            Latency::from_histogram(&new_histogram()),
            Latency::default()
        );
    }

    #[test]
    fn log_bins_cover_every_recorded_value_once() {
        let mut h = new_histogram();
        for v in [150u64, 900, 1_000, 7_000, 7_100, 2_000_000] {
            record(&mut h, v);
        }
        let bins = log_bins(&h);
        assert_eq!(bins.iter().map(|b| b.2).sum::<u64>(), 6);
        assert!(
            bins.windows(2).all(|w| (w[0].1 - w[1].0).abs() < 1e-6),
            "bins are contiguous"
        );
    }

    #[test]
    fn svg_has_bars_axis_labels_and_escapes_the_title() {
        let mut h = new_histogram();
        for v in 0..1000u64 {
            record(&mut h, 5_000 + v * 10);
        }
        record(&mut h, 1_000_000);
        let svg = histogram_svg(&h, "emu <null> & co", &["randread 4 KiB QD 32".to_string()]);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.matches("<rect").count() >= 3, "background plus bars");
        assert!(svg.contains("emu &lt;null&gt; &amp; co"));
        assert!(
            svg.contains(">1 ms<") && svg.contains("p99") && svg.contains("randread 4 KiB QD 32")
        );
        let empty = histogram_svg(&new_histogram(), "t", &[]);
        assert!(empty.contains("no I/O completed"));
    }

    #[test]
    fn bins_hold_every_io_once_and_percentiles_keep_their_order() {
        let mut h = new_histogram();
        for v in [150u64, 150, 900, 7_000, 2_000_000] {
            record(&mut h, v);
        }
        let b = bins(&h);
        assert_eq!(b.iter().map(|x| x.count).sum::<u64>(), 5);
        assert!(b.windows(2).all(|w| w[0].le_ns < w[1].le_ns));
        assert_eq!(
            b[0],
            Bin {
                le_ns: 150,
                count: 2
            }
        );
        assert!(b.last().unwrap().le_ns >= 2_000_000);
        let p = percentiles(&h, &[99.9, 50.0]);
        assert_eq!(p.0[0].0, "99.9");
        assert_eq!(p.0[1], ("50".to_string(), 900));
        assert_eq!(
            serde_json::to_string(&p).unwrap(),
            format!(r#"{{"99.9":{},"50":900}}"#, p.0[0].1)
        );
        assert_eq!(pct_name(99.99), "99.99");
        assert_eq!(pct_name(100.0), "100");
    }

    #[test]
    fn wrap_splits_at_spaces() {
        assert_eq!(wrap("aa bb cc", 5), vec!["aa bb", "cc"]);
        assert_eq!(wrap("abcdefgh x", 3), vec!["abcdefgh", "x"]);
    }

    #[test]
    fn human_units() {
        assert_eq!(fmt_ns(850.0), "850 ns");
        assert_eq!(fmt_ns(6_700.0), "6.70 us");
        assert_eq!(fmt_ns(1_250_000.0), "1.25 ms");
        assert_eq!(fmt_rate(5_120_000.0), "5.12 M");
        assert_eq!(fmt_rate(345_000.0), "345.0 k");
    }
}
