//! The `--json` writer of `nvme-dio bench`, and the schema other tools read (`nvme-dio plot`
//! reads the histogram bins).
//!
//! ## Schema `nvme-dio-bench/1`
//!
//! Every key with a unit names it (`_bytes`, `_s`, `_ns`, `_per_io`, `mib_s` = MiB/s,
//! `iops` = I/Os per second); counts have none; `null` means "not applicable here".
//!
//! One run (`--repeat 1`, the default) prints one [`Report`] object:
//!
//! - `schema`: `"nvme-dio-bench/1"`; `tool` {`name`: `"nvme-dio"`, `version`};
//!   `timestamp` (RFC 3339, UTC, when the report was made); `host` (the hostname).
//! - `device` (as given; several joined by `,`), `device_description`, `emulated`,
//!   `engine` (`vfio` | `io_uring`).
//! - `settings` {workload, read_pct, io_size_bytes (the largest with bssplit),
//!   lba_size_bytes, queue_depth, queues (worker threads), cpus, num_qpairs, segments,
//!   segment_shapes [[in-page offset, len]..], mode, batch, time_s, warmup_s, ios,
//!   working_set_bytes, verify, seed, pinned, emu_mode, iopoll, sqpoll, offset_bytes,
//!   random_distribution, bssplit [[bytes, percent]..], write_kind (write | trim |
//!   write_zeroes), fua, fsync, rate_iops, percentiles [..]}.
//! - `targets` [{device, nsid, lba_size_bytes, working_set_bytes, queue_pairs}].
//! - All I/Os together: `ios`, `bytes`, `elapsed_s`, `iops`, `mib_s`, `latency`
//!   {avg_ns, min_ns, max_ns, p50_ns, p90_ns, p99_ns, p99_9_ns, p99_99_ns},
//!   `percentiles_ns` {"50": ns, "99.9": ns, ...} (the --percentiles list, in its order),
//!   `latency_histogram_ns`.
//! - Per direction, `read` and `write` (trims and write zeroes count as writes), each
//!   {`ios`, `bytes`, `iops`, `mib_s`, `latency` {as above}, `percentiles_ns`,
//!   `latency_histogram_ns`}.
//! - `latency_histogram_ns`: `[{"le_ns": N, "count": N}, ...]`, lowest first, only
//!   non-empty bins: `count` I/Os had a latency above the previous bin's `le_ns` and at
//!   most this `le_ns` (not cumulative; a CDF is the running sum over the total). The bins
//!   are the HDR histogram's own buckets, 3 significant digits (each at most 0.1% wide).
//!   Latency runs from the clock read before the submit to the one after the poll that
//!   reaped the completion; successful I/Os only.
//! - `cpu_ns_per_io` (the worker threads' CPU time), `wall_ns_per_io`.
//! - `table` [{device, nsid, worker, core, ios, bytes, iops, mib_s, avg_ns, min_ns,
//!   max_ns}] one per device x core (SPDK perf's table), and `total` (the same keys).
//! - `intervals` [{t_s, ios, iops, mib_s}] with --status-interval (the end of each
//!   interval, seconds into the measuring window; the I/Os completed in it), else `[]`.
//! - `errors`, `first_error`, `verify` {checked_blocks, mismatches, first_mismatch} or
//!   null, `flushes` {count, latency} or null, `emulator` {reads, writes, flushes,
//!   write_zeroes, dsm, fua_writes, io_errors} or null.
//! - `queues` [{queue, device, nsid, worker, cpu, submitted, completed, errors,
//!   split_requests, commands, doorbell_writes, sq_doorbells, cq_doorbells, polls,
//!   empty_polls, timeouts, interrupts, syscalls}] (null where the engine has no such
//!   thing), `notes` [..].
//!
//! Several runs (`--repeat N`, N > 1) print one object: `schema`, `tool`, `timestamp`,
//! `host`, `runs` [Report, ...] (each as above) and `summary` {`runs`, and for each of
//! `iops`, `mib_s`, `avg_ns`, `p50_ns`, `p99_ns`, `p99_9_ns`, `max_ns`: {min, median,
//! max}}. A reader that wants one histogram takes `runs[i]`.

use serde::Serialize;

use super::Report;
use crate::error::CliError;

/// The schema name and version in every object.
pub const SCHEMA: &str = "nvme-dio-bench/1";

/// Which program wrote the report.
#[derive(Clone, Debug, Serialize)]
pub struct Tool {
    /// `nvme-dio`.
    pub name: &'static str,
    /// The crate version.
    pub version: &'static str,
}

/// This tool.
pub fn tool() -> Tool {
    Tool {
        name: "nvme-dio",
        version: env!("CARGO_PKG_VERSION"),
    }
}

/// Now, as RFC 3339 in UTC: `2026-12-02T01:23:45Z`.
pub fn timestamp() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    rfc3339(secs)
}

/// Seconds since the epoch as RFC 3339 UTC (the civil-from-days algorithm of Howard
/// Hinnant's date library).
pub fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// The host's name (the kernel's), or `unknown`.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

/// min / median / max of one figure over the runs.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Spread {
    /// Lowest.
    pub min: f64,
    /// Median (the mean of the two middle runs for an even count).
    pub median: f64,
    /// Highest.
    pub max: f64,
}

impl Spread {
    /// Of `v` (not empty).
    pub fn of(mut v: Vec<f64>) -> Spread {
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Spread {
            min: v[0],
            median,
            max: v[n - 1],
        }
    }
}

/// `--repeat N`: the spread of the main figures.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    /// Runs made.
    pub runs: usize,
    /// I/Os per second.
    pub iops: Spread,
    /// MiB per second.
    pub mib_s: Spread,
    /// Mean latency.
    pub avg_ns: Spread,
    /// Median latency.
    pub p50_ns: Spread,
    /// 99th percentile.
    pub p99_ns: Spread,
    /// 99.9th percentile.
    pub p99_9_ns: Spread,
    /// Highest latency.
    pub max_ns: Spread,
}

impl Summary {
    /// Over `runs` (not empty).
    pub fn of(runs: &[Report]) -> Summary {
        let f = |g: &dyn Fn(&Report) -> f64| Spread::of(runs.iter().map(g).collect());
        Summary {
            runs: runs.len(),
            iops: f(&|r| r.iops),
            mib_s: f(&|r| r.mib_s),
            avg_ns: f(&|r| r.latency.avg),
            p50_ns: f(&|r| r.latency.p50 as f64),
            p99_ns: f(&|r| r.latency.p99 as f64),
            p99_9_ns: f(&|r| r.latency.p99_9 as f64),
            max_ns: f(&|r| r.latency.max as f64),
        }
    }
}

#[derive(Serialize)]
struct Repeated<'a> {
    schema: &'static str,
    tool: Tool,
    timestamp: String,
    host: String,
    runs: &'a [Report],
    summary: Summary,
}

/// The JSON text for the runs: one report, or the repeated form.
///
/// # Errors
///
/// [`CliError::Json`] if serialisation fails.
pub fn render(runs: &[Report]) -> Result<String, CliError> {
    let text = if let [one] = runs {
        serde_json::to_string_pretty(one)?
    } else {
        serde_json::to_string_pretty(&Repeated {
            schema: SCHEMA,
            tool: tool(),
            timestamp: timestamp(),
            host: hostname(),
            runs,
            summary: Summary::of(runs),
        })?
    };
    Ok(text + "\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_796_175_045), "2026-12-02T01:30:45Z");
    }

    #[test]
    fn spread_takes_min_median_max() {
        assert_eq!(
            Spread::of(vec![3.0, 1.0, 2.0]),
            Spread {
                min: 1.0,
                median: 2.0,
                max: 3.0
            }
        );
        assert_eq!(Spread::of(vec![4.0, 1.0]).median, 2.5);
    }
}
