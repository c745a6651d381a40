//! `nvme-dio bench`: keep QD I/Os in flight on each device x namespace from each worker
//! thread (SPDK perf's layout: [`Layout`]), and measure.
//!
//! ## What is measured
//!
//! - Latency of each I/O runs from a clock read taken *before* its submit call (so a doorbell
//!   write that stalls is inside it) to the clock read taken right after the poll that reaped
//!   its completion. One clock read covers a batch: every I/O submitted in one refill gets
//!   the same start, every completion reaped by one poll the same end. Recorded in an HDR
//!   histogram (3 significant digits).
//! - IOPS and MiB/s count I/Os completed while measuring (after `--warmup`), per worker over
//!   that worker's own measuring window, summed across workers (and per table row, the
//!   row's I/Os over its worker's window).
//! - Per-queue counters are the driver's (or io_uring's) differences over the window.
//!
//! ## `--json`
//!
//! One object per run, or one holding every run for `--repeat`: the keys and their units
//! are documented at the top of `json.rs`, the writer.
//!
//! The engines (`nvme.rs`: the nvme-dio driver on VFIO or the emulated controller;
//! `uring.rs`: the kernel through io_uring) share the workload generator and verify pattern
//! (`pattern.rs`) and the run control here.

pub mod json;
pub mod nvme;
pub mod pattern;
pub mod uring;

use std::fmt::Write as _;
use std::io::IsTerminal;
use std::sync::Barrier;
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::args::{BenchArgs, DeviceSpec, Engine, Mode, Offset, Workload, WriteKind};
use crate::error::CliError;
use crate::stats::{self, Latency, fmt_ns, fmt_rate};

/// Run phases, published by the main thread.
pub const WARMUP: u8 = 0;
/// Measuring.
pub const MEASURE: u8 = 1;
/// Stop submitting, drain, return.
pub const STOP: u8 = 2;

/// A counter on its own cache line (written by one worker, read by the progress line).
#[derive(Debug, Default)]
#[repr(align(64))]
pub struct Padded(pub AtomicU64);

/// What the main thread and the workers share.
#[derive(Debug)]
pub struct Control {
    /// WARMUP, MEASURE or STOP.
    pub phase: AtomicU8,
    /// Workers that finished (reached --ios, or failed).
    pub done: AtomicUsize,
    /// Measured completions per worker, for the progress and status lines.
    pub progress: Vec<Padded>,
    /// Their bytes.
    pub progress_bytes: Vec<Padded>,
    /// All workers and the main thread meet here once set up, so the clock starts together.
    pub ready: Barrier,
}

/// Everything a worker needs to know about the workload, resolved against the device.
#[derive(Clone, Debug)]
pub struct Job {
    /// Read percentage (100 = reads only).
    pub read_pct: u8,
    /// Random offsets.
    pub random: bool,
    /// Bytes per I/O.
    pub io_size: u64,
    /// Block size of the device (namespace LBA size, or 512 for the kernel path).
    pub lba_size: u32,
    /// Blocks in the working set (from block 0).
    pub region_blocks: u64,
    /// I/Os in flight per queue.
    pub qd: u32,
    /// Doorbell batch.
    pub batch: u32,
    /// Segment shapes (`pattern::segment_shapes`); one entry = a plain buffer.
    pub shapes: Vec<(usize, usize)>,
    /// Seed of offsets and the verify pattern.
    pub seed: u64,
    /// Check reads, pattern writes.
    pub verify: bool,
    /// Completion mode.
    pub mode: Mode,
    /// `--queue-entries`, if given.
    pub queue_entries: Option<u32>,
    /// First block of the working set (--offset).
    pub region_start: u64,
    /// Random offsets' distribution, resolved over the region.
    pub dist: pattern::DistState,
    /// --bssplit in blocks: `(blocks, percent)`; empty: every I/O is `io_size`.
    pub sizes: Vec<(u64, u8)>,
    /// What the writes are (write, trim, write zeroes).
    pub write_kind: WriteKind,
    /// FUA on writes.
    pub fua: bool,
    /// A Flush after every N writes, per queue pair.
    pub fsync: Option<u32>,
    /// I/Os per second per worker.
    pub rate_iops: Option<u64>,
}

/// Who does what, SPDK perf's way: the targets (each device x each namespace) and the
/// workers (one per listed CPU, or --queues) are paired round robin into contexts, `max(targets,
/// workers)` of them, so every target has a worker and every worker a target; each context
/// drives its target through -P queue pairs ("lanes"), the context's -q I/Os spread over them.
#[derive(Clone, Debug)]
pub struct Layout {
    /// Per worker: the CPU it is pinned to (None: not pinned).
    pub worker_cpus: Vec<Option<usize>>,
    /// The contexts, in table order.
    pub ctxs: Vec<CtxPlan>,
}

/// One (target, worker) pair.
#[derive(Clone, Debug)]
pub struct CtxPlan {
    /// Index of the target (device x namespace).
    pub target: usize,
    /// Index of the worker thread.
    pub worker: usize,
    /// Its queue pairs.
    pub lanes: Vec<LanePlan>,
}

/// One queue pair of a context.
#[derive(Clone, Copy, Debug)]
pub struct LanePlan {
    /// I/Os in flight on it.
    pub qd: u32,
    /// Measured I/Os to stop after (--ios split over every lane).
    pub budget: Option<u64>,
    /// Its index among the lanes of its target, and their count (offsets and seeds).
    pub index: usize,
    /// Lanes on the same target.
    pub of: usize,
}

/// `n` split into `parts` shares as even as possible; share `i`.
fn share(n: u64, parts: u64, i: u64) -> u64 {
    n / parts + u64::from(i < n % parts)
}

impl Layout {
    /// Lays out `targets` targets over the workers the arguments ask for.
    ///
    /// # Errors
    ///
    /// [`CliError::BadArgument`] when -q cannot feed every queue pair.
    pub fn new(args: &BenchArgs, targets: usize) -> Result<Layout, CliError> {
        let workers = args.workers();
        let ncpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let worker_cpus = (0..workers)
            .map(|w| match args.cpu_list() {
                Some(list) => Some(list[w]),
                None if args.no_pin => None,
                None => Some(w % ncpus),
            })
            .collect();
        let p = args.num_qpairs;
        if args.queue_depth < p {
            return Err(CliError::BadArgument(format!(
                "-q {} is fewer I/Os than the -P {p} queue pairs it is spread over: use -q {p} or more, or fewer queue pairs",
                args.queue_depth
            )));
        }
        let count = targets.max(workers);
        let total_lanes = (count * p as usize) as u64;
        let mut per_target = vec![0usize; targets];
        let mut ctxs = Vec::with_capacity(count);
        for i in 0..count {
            let target = i % targets;
            let lanes = (0..p)
                .map(|j| {
                    let global = (i * p as usize + j as usize) as u64;
                    let index = per_target[target];
                    per_target[target] += 1;
                    LanePlan {
                        qd: share(args.queue_depth as u64, p as u64, j as u64) as u32,
                        budget: args.ios.map(|n| share(n, total_lanes, global)),
                        index,
                        of: 0,
                    }
                })
                .collect();
            ctxs.push(CtxPlan {
                target,
                worker: i % workers,
                lanes,
            });
        }
        for c in &mut ctxs {
            for l in &mut c.lanes {
                l.of = per_target[c.target];
            }
        }
        Ok(Layout { worker_cpus, ctxs })
    }

    /// Worker threads.
    pub fn workers(&self) -> usize {
        self.worker_cpus.len()
    }

    /// The contexts of worker `w`, by index.
    pub fn ctxs_of(&self, w: usize) -> impl Iterator<Item = usize> + '_ {
        (0..self.ctxs.len()).filter(move |&i| self.ctxs[i].worker == w)
    }

    /// Queue pairs the run opens on target `t`.
    pub fn lanes_on(&self, t: usize) -> usize {
        self.ctxs
            .iter()
            .filter(|c| c.target == t)
            .map(|c| c.lanes.len())
            .sum()
    }
}

impl Job {
    /// Blocks per I/O (the largest, with --bssplit).
    pub fn io_blocks(&self) -> u64 {
        self.io_size / self.lba_size as u64
    }

    /// The offset and size generator of lane `index` of `of` on this job's target.
    pub fn op_gen(&self, index: usize, of: usize) -> pattern::OpGen {
        pattern::OpGen::new(
            self.seed,
            index,
            of,
            self.random,
            self.read_pct,
            self.io_blocks(),
            self.region_blocks,
        )
        .start(self.region_start)
        .sizes(&self.sizes, index, of)
        .dist(self.dist)
    }
}

/// Per-queue counters over the measuring window. Fields an engine has no notion of are
/// `null` in JSON (e.g. doorbells for io_uring, syscalls for vfio).
#[derive(Clone, Debug, Default, Serialize)]
pub struct QueueCounters {
    /// Queue index (0-based, over the whole run).
    pub queue: usize,
    /// The device it belongs to (its label in the table).
    pub device: String,
    /// The namespace it drives.
    pub nsid: u32,
    /// The worker thread that owns it.
    pub worker: usize,
    /// CPU the worker was pinned to.
    pub cpu: Option<usize>,
    /// Requests submitted.
    pub submitted: u64,
    /// Requests completed.
    pub completed: u64,
    /// Requests that failed.
    pub errors: u64,
    /// Requests that needed more than one command.
    pub split_requests: Option<u64>,
    /// Commands placed in the SQ.
    pub commands: Option<u64>,
    /// Doorbell register (MMIO) writes, SQ tail plus CQ head (fewer than their sum when
    /// shadow doorbells spared some).
    pub doorbell_writes: Option<u64>,
    /// SQ tail doorbell writes.
    pub sq_doorbells: Option<u64>,
    /// CQ head doorbell writes.
    pub cq_doorbells: Option<u64>,
    /// Calls to poll the completion queue.
    pub polls: u64,
    /// Polls that found nothing.
    pub empty_polls: u64,
    /// Commands that timed out.
    pub timeouts: Option<u64>,
    /// Interrupt wakeups (irq mode).
    pub interrupts: Option<u64>,
    /// io_uring_enter calls (io_uring engine).
    pub syscalls: Option<u64>,
}

/// What one worker measured: its clocks, and one result per context it drove.
#[derive(Debug)]
pub struct WorkerResult {
    /// The measuring window.
    pub elapsed: Duration,
    /// CPU time the worker thread used in that window (None if a clock failed).
    pub cpu: Option<CpuSample>,
    /// Per context (table row).
    pub ctxs: Vec<QueueResult>,
}

/// What one context (a target driven by one worker) measured: a row of the table.
#[derive(Debug)]
pub struct QueueResult {
    /// The context's index in the layout (table order).
    pub ctx: usize,
    /// Per direction: reads, then writes (trims and write zeroes count as writes).
    pub dirs: [DirResult; 2],
    /// I/Os completed successfully while measuring.
    pub ios: u64,
    /// Bytes they moved.
    pub bytes: u64,
    /// Failed I/Os.
    pub errors: u64,
    /// The first failure.
    pub first_error: Option<String>,
    /// Blocks checked by verify.
    pub checked_blocks: u64,
    /// Blocks that failed verify.
    pub mismatches: u64,
    /// The first mismatch.
    pub first_mismatch: Option<String>,
    /// Counters, one per queue pair of the context.
    pub counters: Vec<QueueCounters>,
    /// Flushes (--fsync) completed while measuring; not counted in `ios`.
    pub flushes: u64,
    /// Their latency.
    pub flush_hist: Histogram<u64>,
}

/// One direction's successful I/Os.
#[derive(Debug)]
pub struct DirResult {
    /// I/Os.
    pub ios: u64,
    /// Bytes.
    pub bytes: u64,
    /// Latency histogram (ns).
    pub hist: Histogram<u64>,
}

impl DirResult {
    fn new() -> DirResult {
        DirResult {
            ios: 0,
            bytes: 0,
            hist: stats::new_histogram(),
        }
    }
}

impl QueueResult {
    /// Records one successful I/O: its direction, latency and bytes.
    #[inline]
    pub fn record(&mut self, write: bool, ns: u64, bytes: u64) {
        let d = &mut self.dirs[usize::from(write)];
        stats::record(&mut d.hist, ns);
        d.ios += 1;
        d.bytes += bytes;
        self.ios += 1;
        self.bytes += bytes;
    }

    /// Both directions' latencies together.
    pub fn hist(&self) -> Histogram<u64> {
        let mut h = self.dirs[0].hist.clone();
        h.add(&self.dirs[1].hist).expect("histograms share bounds");
        h
    }

    /// An empty result for context `ctx`.
    pub fn new(ctx: usize) -> QueueResult {
        QueueResult {
            ctx,
            dirs: [DirResult::new(), DirResult::new()],
            ios: 0,
            bytes: 0,
            errors: 0,
            first_error: None,
            checked_blocks: 0,
            mismatches: 0,
            first_mismatch: None,
            counters: Vec::new(),
            flushes: 0,
            flush_hist: stats::new_histogram(),
        }
    }
}

/// The settings, as run.
#[derive(Clone, Debug, Serialize)]
pub struct Settings {
    /// Access pattern.
    pub workload: Workload,
    /// Read percentage.
    pub read_pct: u8,
    /// Bytes per I/O.
    #[serde(rename = "io_size_bytes")]
    pub io_size: u64,
    /// Device block size.
    #[serde(rename = "lba_size_bytes")]
    pub lba_size: u32,
    /// I/Os in flight per namespace per worker (spread over its -P queue pairs).
    pub queue_depth: u32,
    /// Worker threads.
    pub queues: u16,
    /// The CPUs of -c / --cpus, null without.
    pub cpus: Option<Vec<usize>>,
    /// Queue pairs per namespace per worker (-P).
    pub num_qpairs: u32,
    /// Segments per I/O.
    pub segments: u32,
    /// Segment `(in-page offset, length)` shapes.
    pub segment_shapes: Vec<(usize, usize)>,
    /// Completion mode.
    pub mode: Mode,
    /// Doorbell batch.
    pub batch: u32,
    /// Seconds measured (the cap when `ios` is set).
    pub time_s: f64,
    /// Seconds of warm-up, discarded.
    pub warmup_s: f64,
    /// Stop after this many I/Os.
    pub ios: Option<u64>,
    /// Bytes of the device used.
    pub working_set_bytes: u64,
    /// Verify on.
    pub verify: bool,
    /// Seed.
    pub seed: u64,
    /// Threads pinned to CPUs.
    pub pinned: bool,
    /// The emulated controller's mode: "inline" or "thread" (null for real devices).
    pub emu_mode: Option<&'static str>,
    /// io_uring IOPOLL.
    pub iopoll: bool,
    /// io_uring SQPOLL.
    pub sqpoll: bool,
    /// Where the working set starts, bytes (--offset).
    pub offset_bytes: u64,
    /// Random offsets' distribution: `random`, `zipf:1.2`, ...
    pub random_distribution: String,
    /// --bssplit as `[bytes, percent]` pairs (null without).
    pub bssplit: Option<Vec<(u64, u8)>>,
    /// What the writes are: write, trim, write_zeroes.
    pub write_kind: WriteKind,
    /// FUA on writes.
    pub fua: bool,
    /// A Flush after every N writes per queue pair (null without).
    pub fsync: Option<u32>,
    /// I/O rate cap per worker (null without).
    pub rate_iops: Option<u64>,
    /// The percentiles reported (--percentiles).
    pub percentiles: Vec<f64>,
    /// Shadow doorbells asked for (vfio engine; in use if the controller offers them).
    pub shadow_doorbells: bool,
}

/// CPU time per I/O from the kernel's own accounting (getrusage), split into user and
/// system time: the worker threads' (RUSAGE_THREAD over each worker's window), and the
/// whole process's (RUSAGE_SELF over the measuring window: the emulator's thread, an
/// interrupt wait's wakeups and the main thread included). Null where it cannot be read.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct CpuReport {
    /// Worker threads, user mode.
    pub user_ns_per_io: Option<f64>,
    /// Worker threads, kernel mode.
    pub system_ns_per_io: Option<f64>,
    /// The process, user mode.
    pub process_user_ns_per_io: Option<f64>,
    /// The process, kernel mode.
    pub process_system_ns_per_io: Option<f64>,
}

/// One direction's figures.
#[derive(Clone, Debug, Default, Serialize)]
pub struct DirReport {
    /// Measured I/Os.
    pub ios: u64,
    /// Their bytes.
    pub bytes: u64,
    /// I/Os per second (sum over workers).
    pub iops: f64,
    /// MiB per second.
    pub mib_s: f64,
    /// Latency.
    pub latency: Latency,
    /// The --percentiles, ns.
    pub percentiles_ns: stats::Percentiles,
    /// The latency histogram (see json.rs).
    pub latency_histogram_ns: Vec<stats::Bin>,
}

impl DirReport {
    fn new(
        ios: u64,
        bytes: u64,
        iops: f64,
        mib_s: f64,
        h: &Histogram<u64>,
        pcts: &[f64],
    ) -> DirReport {
        DirReport {
            ios,
            bytes,
            iops,
            mib_s,
            latency: Latency::from_histogram(h),
            percentiles_ns: stats::percentiles(h, pcts),
            latency_histogram_ns: stats::bins(h),
        }
    }
}

/// One --status-interval line.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Interval {
    /// End of the interval, seconds into the measuring window.
    pub t_s: f64,
    /// I/Os completed in it.
    pub ios: u64,
    /// Their rate.
    pub iops: f64,
    /// MiB per second.
    pub mib_s: f64,
}

/// What the emulated controllers counted, by command, over the whole run (the first I/Os
/// and the prefill included): proof of what reached the device.
#[derive(Clone, Debug, Default, Serialize)]
pub struct EmuCounts {
    /// Read commands.
    pub reads: u64,
    /// Write commands.
    pub writes: u64,
    /// Flush commands.
    pub flushes: u64,
    /// Write Zeroes commands.
    pub write_zeroes: u64,
    /// Dataset Management (trim) commands.
    pub dsm: u64,
    /// Writes and write zeroes with FUA.
    pub fua_writes: u64,
    /// I/O commands that failed.
    pub io_errors: u64,
}

/// The flushes of --fsync.
#[derive(Clone, Debug, Serialize)]
pub struct FlushReport {
    /// Flushes completed while measuring.
    pub count: u64,
    /// Their latency, ns.
    pub latency: Latency,
}

/// Verify results.
#[derive(Clone, Debug, Serialize)]
pub struct VerifyReport {
    /// Blocks checked.
    pub checked_blocks: u64,
    /// Blocks that did not match.
    pub mismatches: u64,
    /// The first mismatch.
    pub first_mismatch: Option<String>,
}

/// One row of the per-device x core table (SPDK perf's "Device Information" lines), or
/// the total.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Row {
    /// The device's label (as given; `emu#2` for the second of several emulated ones).
    pub device: String,
    /// The namespace (0 in the total).
    pub nsid: u32,
    /// The worker thread (null in the total).
    pub worker: Option<usize>,
    /// The CPU it was pinned to (null if not pinned, and in the total).
    pub core: Option<usize>,
    /// Measured I/Os.
    pub ios: u64,
    /// Measured bytes.
    pub bytes: u64,
    /// I/Os per second.
    pub iops: f64,
    /// MiB per second.
    pub mib_s: f64,
    /// Mean latency, ns.
    pub avg_ns: f64,
    /// Lowest latency, ns.
    pub min_ns: u64,
    /// Highest latency, ns.
    pub max_ns: u64,
}

/// One device x namespace of the run, as resolved.
#[derive(Clone, Debug, Serialize)]
pub struct TargetInfo {
    /// The device's label.
    pub device: String,
    /// The namespace.
    pub nsid: u32,
    /// Its block size.
    pub lba_size_bytes: u32,
    /// Bytes of it used.
    pub working_set_bytes: u64,
    /// Queue pairs opened on it.
    pub queue_pairs: usize,
}

/// The whole result: what `--json` prints (keys in json.rs).
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// `nvme-dio-bench/1`.
    pub schema: &'static str,
    /// The tool and its version.
    pub tool: json::Tool,
    /// When the report was made (RFC 3339, UTC).
    pub timestamp: String,
    /// The host.
    pub host: String,
    /// The device as given (`emu`, a PCI address, a path); several joined by commas.
    pub device: String,
    /// Every device x namespace of the run.
    pub targets: Vec<TargetInfo>,
    /// Per device x core, in layout order (SPDK perf's table).
    pub table: Vec<Row>,
    /// The table's total line.
    pub total: Row,
    /// What it is.
    pub device_description: String,
    /// The emulated controller (figures are driver + emulator CPU cost, not a device's).
    pub emulated: bool,
    /// vfio or io_uring.
    pub engine: Engine,
    /// The settings.
    pub settings: Settings,
    /// Measured I/Os.
    pub ios: u64,
    /// Measured bytes.
    pub bytes: u64,
    /// Longest queue's measuring window, seconds.
    pub elapsed_s: f64,
    /// I/Os per second (sum over queues).
    pub iops: f64,
    /// MiB per second (sum over queues).
    pub mib_s: f64,
    /// CPU time per I/O, ns: the worker threads' own CPU time (the kernel's per-thread
    /// accounting) over the measuring window, summed, divided by the I/Os. Null if the
    /// clock could not be read.
    pub cpu_ns_per_io: Option<f64>,
    /// User and system CPU time per I/O (issue 15: poll, irq and hybrid compared honestly).
    pub cpu: CpuReport,
    /// Wall time per I/O, ns: `queues * window / I/Os`. Equal to the CPU time when the
    /// workers spin (poll mode); larger when they sleep.
    pub wall_ns_per_io: f64,
    /// Latency in ns.
    pub latency: Latency,
    /// The --percentiles of all I/Os, ns.
    pub percentiles_ns: stats::Percentiles,
    /// All I/Os' latency histogram.
    pub latency_histogram_ns: Vec<stats::Bin>,
    /// Reads.
    pub read: DirReport,
    /// Writes (trims and write zeroes included).
    pub write: DirReport,
    /// --status-interval lines.
    pub intervals: Vec<Interval>,
    /// Failed I/Os.
    pub errors: u64,
    /// The first failure.
    pub first_error: Option<String>,
    /// Verify results (null without --verify).
    pub verify: Option<VerifyReport>,
    /// Per-queue counters.
    pub queues: Vec<QueueCounters>,
    /// Flushes (--fsync), null without.
    pub flushes: Option<FlushReport>,
    /// Commands the emulated controllers counted (null for real devices).
    pub emulator: Option<EmuCounts>,
    /// Remarks about the setup (fallback memory, registration refused, ...).
    pub notes: Vec<String>,
    /// The merged histogram (not serialised).
    #[serde(skip)]
    pub hist: Option<Histogram<u64>>,
}

/// Runs `nvme-dio bench` and prints the result.
///
/// # Errors
///
/// Bad argument combinations, device errors, failed I/Os, verify mismatches.
pub fn run(args: &BenchArgs) -> Result<(), CliError> {
    check_args(args)?;
    // Output paths are checked before the run, so a typo does not cost the run's results.
    let hist = OutFile::create(
        args.histogram.as_deref(),
        "create the histogram file (checked before the run)",
    )?;
    let output = OutFile::create(
        args.output.as_deref(),
        "create the output file (checked before the run)",
    )?;
    // Ctrl-C stops the run and prints what was measured (fio does the same); a second
    // Ctrl-C terminates as usual. Without the handler Ctrl-C still works, only abruptly.
    let mut notes = Vec::new();
    if let Err(e) = nvme_dio_uring::catch_sigint() {
        notes.push(format!("Ctrl-C will end the run without a report: {e}"));
    }
    let mut reports = Vec::new();
    for _ in 0..args.repeat {
        let result = match (args.engine(), args.device()) {
            (Engine::Vfio, DeviceSpec::Emu(_) | DeviceSpec::Pci(_)) => nvme::run(args),
            (Engine::IoUring, DeviceSpec::Path(p)) => uring::run(args, p),
            (Engine::Vfio, DeviceSpec::Path(p)) => Err(CliError::BadArgument(format!(
                "--engine vfio drives a PCI controller (or `emu`), not a path: use --engine io_uring for {}, or give the controller's PCI address (see `nvme-dio list`)",
                p.display()
            ))),
            (Engine::IoUring, d) => Err(CliError::BadArgument(format!(
                "--engine io_uring goes through the kernel and needs a block device or file path, not {d}: use --engine vfio for it"
            ))),
        };
        let mut report = match result {
            Ok(r) => r,
            Err(e) => {
                // Runs that finished are still reported when a later one cannot start
                // (Ctrl-C during its set-up, above all).
                if reports.is_empty() {
                    for f in [hist, output].into_iter().flatten() {
                        f.discard();
                    }
                    return Err(e);
                }
                break;
            }
        };
        report.intervals = std::mem::take(&mut *intervals());
        report.notes.extend(notes.iter().cloned());
        let stop = interrupted();
        if stop {
            report.notes.push(format!(
                "interrupted by Ctrl-C after {:.2} s of measuring: the figures cover the I/Os completed until then",
                report.elapsed_s
            ));
        }
        let failed = report.errors > 0 || report.verify.as_ref().is_some_and(|v| v.mismatches > 0);
        reports.push(report);
        if stop || failed {
            break;
        }
    }
    finish(args, &reports, hist, output)?;
    if interrupted() {
        return Err(CliError::Interrupted(
            "; the report covers the run until then".into(),
        ));
    }
    Ok(())
}

/// True once Ctrl-C arrived (after [`run`] installed its handler).
pub fn interrupted() -> bool {
    nvme_dio_uring::sigint_caught()
}

/// The error for a Ctrl-C during a step before measuring (bring-up, writing the working
/// set): there is nothing to report.
pub fn interrupted_during(what: &str) -> CliError {
    CliError::Interrupted(format!(" while {what}; nothing was measured"))
}

/// An output file (--histogram, --output), created before the run so a bad path fails at
/// once.
#[derive(Debug)]
pub struct OutFile {
    path: std::path::PathBuf,
    file: std::fs::File,
}

impl OutFile {
    fn create(
        path: Option<&std::path::Path>,
        op: &'static str,
    ) -> Result<Option<OutFile>, CliError> {
        let Some(path) = path else {
            return Ok(None);
        };
        let file = std::fs::File::create(path).map_err(|source| CliError::File {
            op,
            path: path.to_owned(),
            source,
        })?;
        Ok(Some(OutFile {
            path: path.to_owned(),
            file,
        }))
    }

    /// Removes the (empty) file again when the run failed before any result.
    fn discard(self) {
        drop(self.file);
        let _ = std::fs::remove_file(&self.path);
    }

    fn write(&mut self, text: &str, op: &'static str) -> Result<(), CliError> {
        std::io::Write::write_all(&mut self.file, text.as_bytes()).map_err(|source| {
            CliError::File {
                op,
                path: self.path.clone(),
                source,
            }
        })
    }
}

fn check_args(a: &BenchArgs) -> Result<(), CliError> {
    let bad = |s: String| Err(CliError::BadArgument(s));
    if a.mix.is_some() && !matches!(a.workload, Workload::Rw | Workload::Randrw) {
        return bad(format!(
            "--mix only applies to -w rw or -w randrw, not -w {}",
            a.workload
        ));
    }
    if a.devices.len() > 1 || a.nsids.len() > 1 {
        if a.engine() == Engine::IoUring
            || a.devices
                .iter()
                .any(|d| !d.is_emu() && !matches!(d, DeviceSpec::Pci(_)))
        {
            return bad("several --device or --nsid in one run work with the vfio engine (emu or PCI addresses); bench one block device or file at a time through io_uring".into());
        }
        for (i, d) in a.devices.iter().enumerate() {
            if matches!(d, DeviceSpec::Pci(_)) && a.devices[..i].contains(d) {
                return bad(format!(
                    "--device {d} is given twice: a controller can be opened once; use --nsid for its namespaces, or -P for more queue pairs"
                ));
            }
        }
        for (i, n) in a.nsids.iter().enumerate() {
            if a.nsids[..i].contains(n) {
                return bad(format!(
                    "--nsid {n} is given twice: name each namespace once (-P {} gives more queue pairs per namespace)",
                    a.num_qpairs.max(2)
                ));
            }
        }
        if a.inject_flip_bit.is_some() {
            return bad("--inject-flip-bit is a testing aid for a single --device emu:ram".into());
        }
    }
    let kind = a.workload.write_kind();
    if a.verify && kind != WriteKind::Write {
        return bad(format!(
            "--verify checks what writes put down, and -w {} writes no data pattern: use -w write, randwrite, rw or randrw",
            a.workload
        ));
    }
    if a.random_distribution != pattern::Distribution::Uniform && !a.workload.random() {
        return bad(format!(
            "--random_distribution {} shapes random offsets, and -w {} is sequential: use a rand* workload (randread, randwrite, randrw, randtrim, randwritezeroes)",
            a.random_distribution, a.workload
        ));
    }
    if a.read_pct() == 100 {
        if let Some(n) = a.fsync {
            return bad(format!(
                "--fsync {n} sends a Flush after every {n} writes, and -w {} writes nothing: use a workload that writes",
                a.workload
            ));
        }
        if a.fua {
            return bad(format!(
                "--fua marks writes, and -w {} writes nothing: use a workload that writes",
                a.workload
            ));
        }
    }
    if a.fua && kind == WriteKind::Trim {
        return bad(
            "--fua applies to writes and write zeroes; a trim (Dataset Management) has no FUA bit"
                .into(),
        );
    }
    if a.engine() == Engine::IoUring && kind != WriteKind::Write {
        return bad(format!(
            "-w {} is a vfio engine feature (NVMe commands the driver sends itself); the io_uring engine does reads, writes, --fsync and --fua: bench an NVMe controller through vfio (or `emu`) for it",
            a.workload
        ));
    }
    if a.bssplit.is_some() && a.segments > 1 {
        return bad("--bssplit and --segments do not combine: mixed sizes go as one buffer each; drop one of them".into());
    }
    if a.mode == Mode::Hybrid && a.engine() == Engine::IoUring {
        return bad("--mode hybrid is the vfio engine's (spin, then sleep on MSI-X); the io_uring engine has poll (spin on the CQ ring, or --iopoll) and irq".into());
    }
    if a.num_qpairs > 1 && a.engine() == Engine::IoUring {
        return bad("-P (queue pairs per namespace) is a vfio engine option: the io_uring engine has one ring per worker; use --queues or --cpus for more".into());
    }
    if let Some(list) = a.cpu_list() {
        let online = online_cpus();
        if let Some(c) = list.iter().find(|c| !online.contains(c)) {
            return bad(format!(
                "CPU {c} is not online on this machine (online: {}): name CPUs that exist (see /sys/devices/system/cpu/online)",
                fmt_cpus(&online)
            ));
        }
    }
    if a.inject_flip_bit.is_some() && !a.device().is_emu_ram() {
        return bad("--inject-flip-bit is a testing aid for --device emu:ram only".into());
    }
    if a.inject_write_protect && !a.all_emu() {
        return bad(
            "--inject-write-protect is a testing aid for the emulated controller only (--device emu or emu:ram)".into(),
        );
    }
    if a.inject_io_error.is_some() && !a.all_emu() {
        return bad(
            "--inject-io-error is a testing aid for the emulated controller only (--device emu or emu:ram)".into(),
        );
    }
    if a.emu_sgl && !a.all_emu() {
        return bad(
            "--emu-sgl applies to the emulated controller only (--device emu or emu:ram)".into(),
        );
    }
    if a.emu_thread && !a.all_emu() {
        return bad(
            "--emu-thread applies to the emulated controller only (--device emu or emu:ram)".into(),
        );
    }
    if a.shadow_doorbells && a.engine() != Engine::Vfio {
        return bad(
            "--shadow-doorbells is a vfio engine option (the kernel decides its own)".into(),
        );
    }
    if (a.iopoll || a.sqpoll) && a.engine() != Engine::IoUring {
        return bad("--iopoll and --sqpoll are io_uring options: add --engine io_uring and a block device or file".into());
    }
    if a.time <= 0.0 && a.ios.is_none() {
        return bad("-t 0 measures nothing: give a time in seconds, or --ios N".into());
    }
    if a.verify && a.devices.iter().any(|d| d.is_emu() && !d.is_emu_ram()) {
        return bad("--verify needs a namespace that keeps what is written, and `--device emu` is a null namespace (writes are dropped, reads return zeroes): use --device emu:ram".into());
    }
    let rams = a.devices.iter().filter(|d| d.is_emu_ram()).count() as u64;
    if rams > 0 {
        let want = a.size.unwrap_or(nvme::EMU_RAM_BYTES).saturating_mul(rams);
        if let Some(avail) = mem_available()
            && want > avail
        {
            return bad(format!(
                "--size {} for `--device emu:ram` needs {} of RAM for the emulated namespace, but only {} is available (MemAvailable in /proc/meminfo): use a smaller --size, or --device emu (a null namespace of any size) when the data need not be kept",
                human_size(want),
                human_size(want),
                human_size(avail)
            ));
        }
    }
    Ok(())
}

/// The CPUs online (from sysfs; 0..available_parallelism where it cannot be read).
pub fn online_cpus() -> Vec<usize> {
    std::fs::read_to_string("/sys/devices/system/cpu/online")
        .ok()
        .and_then(|t| crate::args::parse_cpu_list(t.trim()).ok())
        .map(|l| l.0)
        .unwrap_or_else(|| {
            (0..std::thread::available_parallelism().map_or(1, |n| n.get())).collect()
        })
}

/// `0-3,6`.
pub fn fmt_cpus(cpus: &[usize]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < cpus.len() {
        let mut j = i;
        while j + 1 < cpus.len() && cpus[j + 1] == cpus[j] + 1 {
            j += 1;
        }
        out.push(if i == j {
            cpus[i].to_string()
        } else {
            format!("{}-{}", cpus[i], cpus[j])
        });
        i = j + 1;
    }
    out.join(",")
}

/// MemAvailable from /proc/meminfo, bytes (None where it cannot be read).
fn mem_available() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// `1.5 GiB`, `64.0 MiB`, `4.0 KiB`, `512 bytes`.
pub fn human_size(b: u64) -> String {
    const UNITS: [(u64, &str); 4] = [
        (1 << 40, "TiB"),
        (1 << 30, "GiB"),
        (1 << 20, "MiB"),
        (1 << 10, "KiB"),
    ];
    for (u, name) in UNITS {
        if b >= u {
            return format!("{:.1} {name}", b as f64 / u as f64);
        }
    }
    format!("{b} bytes")
}

/// A progress bar on stderr for a long step (writing the working set before verify), when
/// stderr is a terminal; `None` otherwise (scripts and tests see nothing).
pub fn progress_bar(what: &str, bytes: u64) -> Option<indicatif::ProgressBar> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let b = indicatif::ProgressBar::new(bytes);
    b.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg} {bar:30} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .expect("static template"),
    );
    b.set_message(what.to_string());
    Some(b)
}

/// Builds the job from the arguments and the device's geometry.
///
/// # Errors
///
/// [`CliError::BadArgument`] when the I/O size, segments or working set do not fit the device.
/// `sub_block` says whether segments smaller than a block can be sent (SGLs), or why not.
pub fn make_job(
    args: &BenchArgs,
    lba_size: u32,
    device_bytes: u64,
    sub_block: Result<(), &str>,
) -> Result<Job, CliError> {
    let bad = |s: String| Err(CliError::BadArgument(s));
    let io_size = args.max_io_size();
    if let Some(split) = &args.bssplit {
        if let Some(&(b, _)) = split.0.iter().find(|p| p.0 % lba_size as u64 != 0) {
            return bad(format!(
                "--bssplit size {b} is not a multiple of the device's {lba_size}-byte blocks: use multiples such as {}",
                lba_size.max(4096)
            ));
        }
    } else if args.io_size % lba_size as u64 != 0 {
        return bad(format!(
            "--io-size {} is not a multiple of the device's {lba_size}-byte blocks: use a multiple such as {}",
            args.io_size,
            lba_size.max(4096)
        ));
    }
    let shapes = pattern::segment_shapes(io_size, lba_size, args.segments, sub_block)
        .map_err(CliError::BadArgument)?;
    let offset = match args.offset {
        None => 0,
        Some(Offset::Bytes(b)) => {
            if b % lba_size as u64 != 0 {
                return bad(format!(
                    "--offset {b} is not a multiple of the device's {lba_size}-byte blocks"
                ));
            }
            b
        }
        Some(Offset::Percent(p)) => {
            (device_bytes as u128 * p as u128 / 100) as u64 / lba_size as u64 * lba_size as u64
        }
    };
    if offset >= device_bytes {
        return bad(format!(
            "--offset {offset} is at or past the end of the device ({device_bytes} bytes): give a smaller offset, or a percentage like 50%"
        ));
    }
    let left = device_bytes - offset;
    let default_size = match (args.device(), args.verify) {
        (DeviceSpec::Emu(_), _) | (_, false) => left,
        (_, true) => left.min(256 << 20),
    };
    let size = args.size.unwrap_or(default_size);
    if size > left {
        return bad(if offset > 0 {
            format!(
                "--offset {offset} + --size {size} ends past the end of the device ({device_bytes} bytes): lower one of them"
            )
        } else {
            format!("--size {size} is larger than the device ({device_bytes} bytes)")
        });
    }
    if size < io_size {
        return bad(format!(
            "the working set ({size} bytes) is smaller than one I/O ({io_size} bytes): raise --size or lower --io-size"
        ));
    }
    let io_blocks = io_size / lba_size as u64;
    let write_kind = args.workload.write_kind();
    if write_kind == WriteKind::WriteZeroes && io_blocks > 65_536 {
        return bad(format!(
            "Write Zeroes covers at most 65536 blocks per command, and --io-size {io_size} is {io_blocks} blocks of {lba_size} bytes: lower --io-size"
        ));
    }
    // Offsets step by whole largest I/Os' worth at the end of the region, so every size
    // of --bssplit fits (and the prefill of --verify covers every block read).
    let region_blocks = size / lba_size as u64 / io_blocks * io_blocks;
    let sizes: Vec<(u64, u8)> = args
        .bssplit
        .as_ref()
        .map(|b| {
            b.0.iter()
                .map(|&(bytes, p)| (bytes / lba_size as u64, p))
                .collect()
        })
        .unwrap_or_default();
    let step = sizes.iter().map(|s| s.0).min().unwrap_or(io_blocks);
    Ok(Job {
        read_pct: args.read_pct(),
        random: args.workload.random(),
        io_size,
        lba_size,
        region_start: offset / lba_size as u64,
        region_blocks,
        qd: args.queue_depth,
        batch: args.batch(),
        shapes,
        seed: args.seed.unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        }),
        verify: args.verify,
        mode: args.mode,
        queue_entries: args.queue_entries,
        dist: pattern::DistState::new(args.random_distribution, (region_blocks / step).max(1)),
        sizes,
        write_kind,
        fua: args.fua,
        fsync: args.fsync,
        rate_iops: args.rate_iops,
    })
}

/// Runs `worker(queue, control)` on one thread per queue: they set up, meet at the barrier,
/// warm up, measure, stop. The main thread keeps time and draws the progress line.
///
/// # Errors
///
/// The first worker error (by queue order), or [`CliError::WorkerPanicked`].
pub fn run_workers<F>(
    args: &BenchArgs,
    layout: &Layout,
    worker: F,
) -> Result<Vec<WorkerResult>, CliError>
where
    F: Fn(usize, &Control) -> Result<WorkerResult, CliError> + Sync,
{
    let n = layout.workers();
    let ctl = Control {
        phase: AtomicU8::new(if args.warmup > 0.0 { WARMUP } else { MEASURE }),
        done: AtomicUsize::new(0),
        progress: (0..n).map(|_| Padded::default()).collect(),
        progress_bytes: (0..n).map(|_| Padded::default()).collect(),
        ready: Barrier::new(n + 1),
    };
    let show = !args.json() && std::io::stdout().is_terminal();
    let results: Vec<std::thread::Result<Result<WorkerResult, CliError>>> =
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..n)
                .map(|q| {
                    let (ctl, worker) = (&ctl, &worker);
                    std::thread::Builder::new()
                        .name(format!("bench-w{q}"))
                        .spawn_scoped(s, move || {
                            // Ctrl-C goes to the main thread (it keeps time and stops the
                            // run); a worker asleep in an interrupt wait must not get EINTR.
                            let _ = nvme_dio_uring::block_sigint_in_this_thread();
                            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                                worker(q, ctl)
                            }));
                            ctl.done.fetch_add(1, Ordering::Release);
                            match r {
                                Ok(r) => r,
                                Err(p) => std::panic::resume_unwind(p),
                            }
                        })
                        .expect("spawning a worker thread")
                })
                .collect();
            ctl.ready.wait();
            keep_time(args, &ctl, show);
            handles.into_iter().map(|h| h.join()).collect()
        });
    let mut out = Vec::with_capacity(n);
    for (q, r) in results.into_iter().enumerate() {
        match r {
            Ok(Ok(r)) => out.push(r),
            Ok(Err(e)) => return Err(e),
            Err(p) => {
                let message = p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "unknown panic".into());
                return Err(CliError::WorkerPanicked { queue: q, message });
            }
        }
    }
    Ok(out)
}

fn keep_time(args: &BenchArgs, ctl: &Control, show: bool) {
    let n = ctl.progress.len();
    let bar = show.then(|| {
        let b = indicatif::ProgressBar::new_spinner();
        b.set_style(
            indicatif::ProgressStyle::with_template("{spinner} {elapsed:>3} {msg}")
                .expect("static template"),
        );
        b
    });
    let tick = Duration::from_millis(100);
    let all_done = || ctl.done.load(Ordering::Acquire) == n || interrupted();
    if args.warmup > 0.0 {
        let end = Instant::now() + Duration::from_secs_f64(args.warmup);
        while Instant::now() < end && !all_done() {
            if let Some(b) = &bar {
                b.set_message(format!("warming up ({:.1} s)", args.warmup));
                b.tick();
            }
            std::thread::sleep(tick.min(end.saturating_duration_since(Instant::now())));
        }
        ctl.phase.store(MEASURE, Ordering::Release);
    }
    let start = Instant::now();
    let ru_start = nvme_dio_uring::process_rusage().ok();
    *process_window() = None;
    let end = start + Duration::from_secs_f64(args.time);
    let mut last = (start, 0u64);
    let every = args.status_interval.map(Duration::from_secs_f64);
    let mut status = (start, 0u64, 0u64);
    let sum = |v: &[Padded]| -> u64 { v.iter().map(|p| p.0.load(Ordering::Relaxed)).sum() };
    intervals().clear();
    while !all_done() {
        let now = Instant::now();
        if now >= end && args.time > 0.0 {
            break;
        }
        if let Some(every) = every
            && now >= status.0 + every
        {
            let (ios, bytes) = (sum(&ctl.progress), sum(&ctl.progress_bytes));
            let dt = now.duration_since(status.0).as_secs_f64();
            let iv = Interval {
                t_s: now.duration_since(start).as_secs_f64(),
                ios: ios - status.1,
                iops: (ios - status.1) as f64 / dt,
                mib_s: (bytes - status.2) as f64 / dt / (1 << 20) as f64,
            };
            status = (now, ios, bytes);
            intervals().push(iv);
            if !args.json() {
                let line = format!(
                    "[{:>7.1} s] IOPS {:>10}  MiB/s {:>9.1}  I/Os {}",
                    iv.t_s,
                    fmt_rate(iv.iops),
                    iv.mib_s,
                    iv.ios
                );
                match &bar {
                    Some(b) => b.println(line),
                    // A closed pipe or full disk shows again, and fails, at the report.
                    None => {
                        let _ = crate::out::println(&line);
                    }
                }
            }
        }
        if let Some(b) = &bar {
            let total: u64 = ctl
                .progress
                .iter()
                .map(|p| p.0.load(Ordering::Relaxed))
                .sum();
            let dt = now.duration_since(last.0).as_secs_f64().max(1e-3);
            let rate = total.saturating_sub(last.1) as f64 / dt;
            last = (now, total);
            b.set_message(format!(
                "{} of {:.1} s  {} IOPS  {:.1} MiB/s  {} I/Os",
                fmt_secs(now.duration_since(start)),
                args.time,
                fmt_rate(rate),
                rate * args.io_size as f64 / (1 << 20) as f64,
                total
            ));
            b.tick();
        }
        let mut left = if args.time > 0.0 {
            end.saturating_duration_since(now)
        } else {
            tick
        };
        if let Some(every) = every {
            left = left.min((status.0 + every).saturating_duration_since(now));
        }
        std::thread::sleep(tick.min(left).max(Duration::from_millis(1)));
    }
    ctl.phase.store(STOP, Ordering::Release);
    // The window ends when every worker has drained and stopped its clocks.
    while ctl.done.load(Ordering::Acquire) < n {
        std::thread::sleep(Duration::from_millis(1));
    }
    *process_window() = ru_start
        .zip(nvme_dio_uring::process_rusage().ok())
        .map(|(a, b)| nvme_dio_uring::CpuTimes {
            user: b.user.saturating_sub(a.user),
            system: b.system.saturating_sub(a.system),
        });
    if let Some(b) = bar {
        b.finish_and_clear();
    }
}

/// The --status-interval lines of the current run (the main thread keeps time; the
/// engine's report is made after).
fn intervals() -> std::sync::MutexGuard<'static, Vec<Interval>> {
    static INTERVALS: std::sync::Mutex<Vec<Interval>> = std::sync::Mutex::new(Vec::new());
    INTERVALS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn fmt_secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

/// Merges the workers' results into the report. `job` is the first target's (the
/// settings); `targets` names every target in layout order.
pub fn report(
    args: &BenchArgs,
    layout: &Layout,
    targets: Vec<TargetInfo>,
    job: &Job,
    description: String,
    results: Vec<WorkerResult>,
    notes: Vec<String>,
) -> Report {
    let mut hist = stats::new_histogram();
    let (mut ios, mut bytes, mut errors, mut iops, mut mib_s) = (0u64, 0u64, 0u64, 0.0, 0.0);
    let (mut checked, mut mismatches) = (0u64, 0u64);
    let (mut first_error, mut first_mismatch) = (None, None);
    let mut elapsed = Duration::ZERO;
    let mut wall_ns = 0.0;
    let mut cpu_ns = Some(0.0);
    let mut user_sys = Some((0.0, 0.0));
    let mut rows: Vec<(usize, Row)> = Vec::new();
    let mut queues = Vec::new();
    let mut flush_hist = stats::new_histogram();
    let mut flushes = 0u64;
    let mut dir_hist = [stats::new_histogram(), stats::new_histogram()];
    let mut dir_sum = [(0u64, 0u64, 0.0f64, 0.0f64); 2];
    for w in results {
        let secs = w.elapsed.as_secs_f64();
        wall_ns += secs * 1e9;
        cpu_ns = cpu_ns
            .zip(w.cpu)
            .map(|(a, c)| a + c.total.as_secs_f64() * 1e9);
        user_sys = user_sys.zip(w.cpu).map(|((u, s), c)| {
            (
                u + c.user.as_secs_f64() * 1e9,
                s + c.system.as_secs_f64() * 1e9,
            )
        });
        elapsed = elapsed.max(w.elapsed);
        for r in w.ctxs {
            let r_hist = r.hist();
            hist.add(&r_hist).expect("histograms share bounds");
            for (d, dr) in r.dirs.iter().enumerate() {
                dir_hist[d].add(&dr.hist).expect("histograms share bounds");
                dir_sum[d].0 += dr.ios;
                dir_sum[d].1 += dr.bytes;
                if secs > 0.0 {
                    dir_sum[d].2 += dr.ios as f64 / secs;
                    dir_sum[d].3 += dr.bytes as f64 / secs / (1 << 20) as f64;
                }
            }
            flush_hist
                .add(&r.flush_hist)
                .expect("histograms share bounds");
            flushes += r.flushes;
            ios += r.ios;
            bytes += r.bytes;
            errors += r.errors;
            checked += r.checked_blocks;
            mismatches += r.mismatches;
            first_error = first_error.or(r.first_error);
            first_mismatch = first_mismatch.or(r.first_mismatch);
            let (r_iops, r_mib) = if secs > 0.0 {
                (
                    r.ios as f64 / secs,
                    r.bytes as f64 / secs / (1 << 20) as f64,
                )
            } else {
                (0.0, 0.0)
            };
            iops += r_iops;
            mib_s += r_mib;
            let plan = &layout.ctxs[r.ctx];
            let lat = Latency::from_histogram(&r_hist);
            rows.push((
                r.ctx,
                Row {
                    device: targets[plan.target].device.clone(),
                    nsid: targets[plan.target].nsid,
                    worker: Some(plan.worker),
                    core: layout.worker_cpus[plan.worker],
                    ios: r.ios,
                    bytes: r.bytes,
                    iops: r_iops,
                    mib_s: r_mib,
                    avg_ns: lat.avg,
                    min_ns: lat.min,
                    max_ns: lat.max,
                },
            ));
            queues.extend(r.counters);
        }
    }
    rows.sort_by_key(|r| r.0);
    queues.sort_by_key(|q| q.queue);
    let latency = Latency::from_histogram(&hist);
    let total = Row {
        device: "Total".into(),
        nsid: 0,
        worker: None,
        core: None,
        ios,
        bytes,
        iops,
        mib_s,
        avg_ns: latency.avg,
        min_ns: latency.min,
        max_ns: latency.max,
    };
    let device = targets
        .iter()
        .map(|t| t.device.as_str())
        .fold(Vec::<&str>::new(), |mut v, d| {
            if !v.contains(&d) {
                v.push(d);
            }
            v
        })
        .join(",");
    let pcts = &args.percentiles.0;
    let dir = |d: usize| {
        let (ios, bytes, iops, mib) = dir_sum[d];
        DirReport::new(ios, bytes, iops, mib, &dir_hist[d], pcts)
    };
    Report {
        schema: json::SCHEMA,
        tool: json::tool(),
        timestamp: json::timestamp(),
        host: json::hostname(),
        percentiles_ns: stats::percentiles(&hist, pcts),
        latency_histogram_ns: stats::bins(&hist),
        read: dir(0),
        write: dir(1),
        intervals: Vec::new(),
        device,
        targets,
        table: rows.into_iter().map(|r| r.1).collect(),
        total,
        device_description: description,
        emulated: args.all_emu(),
        engine: args.engine(),
        settings: Settings {
            workload: args.workload,
            read_pct: job.read_pct,
            io_size: job.io_size,
            lba_size: job.lba_size,
            queue_depth: job.qd,
            queues: layout.workers() as u16,
            cpus: args.cpu_list().map(<[usize]>::to_vec),
            num_qpairs: args.num_qpairs,
            segments: args.segments,
            segment_shapes: job.shapes.clone(),
            mode: job.mode,
            batch: job.batch,
            time_s: args.time,
            warmup_s: args.warmup,
            ios: args.ios,
            working_set_bytes: job.region_blocks * job.lba_size as u64,
            verify: job.verify,
            seed: job.seed,
            pinned: layout.worker_cpus.iter().any(Option::is_some),
            emu_mode: args.device().is_emu().then_some(if args.emu_thread {
                "thread"
            } else {
                "inline"
            }),
            iopoll: args.iopoll,
            sqpoll: args.sqpoll,
            offset_bytes: job.region_start * job.lba_size as u64,
            random_distribution: args.random_distribution.to_string(),
            bssplit: args.bssplit.as_ref().map(|b| b.0.clone()),
            write_kind: job.write_kind,
            fua: job.fua,
            fsync: job.fsync,
            rate_iops: job.rate_iops,
            percentiles: pcts.clone(),
            shadow_doorbells: args.shadow_doorbells,
        },
        ios,
        bytes,
        elapsed_s: elapsed.as_secs_f64(),
        iops,
        mib_s,
        cpu_ns_per_io: cpu_ns.map(|c| if ios > 0 { c / ios as f64 } else { 0.0 }),
        wall_ns_per_io: if ios > 0 { wall_ns / ios as f64 } else { 0.0 },
        cpu: {
            let per = |x: f64| if ios > 0 { x / ios as f64 } else { 0.0 };
            let process = *process_window();
            CpuReport {
                user_ns_per_io: user_sys.map(|u| per(u.0)),
                system_ns_per_io: user_sys.map(|u| per(u.1)),
                process_user_ns_per_io: process.map(|p| per(p.user.as_secs_f64() * 1e9)),
                process_system_ns_per_io: process.map(|p| per(p.system.as_secs_f64() * 1e9)),
            }
        },
        latency,
        errors,
        first_error,
        verify: job.verify.then_some(VerifyReport {
            checked_blocks: checked,
            mismatches,
            first_mismatch,
        }),
        queues,
        flushes: job.fsync.map(|_| FlushReport {
            count: flushes,
            latency: Latency::from_histogram(&flush_hist),
        }),
        emulator: None,
        notes,
        hist: Some(hist),
    }
}

/// SPDK perf's table: one line per device x core, then the total; latency in microseconds.
pub fn table(r: &Report) -> String {
    let name = |row: &Row| {
        if row.worker.is_none() {
            return "Total".to_string();
        }
        format!(
            "{} NSID {} from {}",
            row.device,
            row.nsid,
            match row.core {
                Some(c) => format!("core {c:>2}"),
                None => format!("worker {} (unpinned)", row.worker.unwrap_or(0)),
            }
        )
    };
    let width = r
        .table
        .iter()
        .map(|row| name(row).len())
        .max()
        .unwrap_or(0)
        .max("Device Information".len());
    let line = |row: &Row| {
        format!(
            "{:<width$} : {:>12.2} {:>10.2} {:>10.2} {:>10.2} {:>10.2}\n",
            name(row),
            row.iops,
            row.mib_s,
            row.avg_ns / 1e3,
            row.min_ns as f64 / 1e3,
            row.max_ns as f64 / 1e3
        )
    };
    let rule = "=".repeat(width + 60);
    let mut o = String::new();
    let _ = writeln!(o, "{rule}");
    let _ = writeln!(
        o,
        "{:<width$}   {:>12} {:>10} {:>32}",
        "", "", "", "Latency(us)"
    );
    let _ = writeln!(
        o,
        "{:<width$} : {:>12} {:>10} {:>10} {:>10} {:>10}",
        "Device Information", "IOPS", "MiB/s", "Average", "min", "max"
    );
    for row in &r.table {
        o.push_str(&line(row));
    }
    let _ = writeln!(o, "{rule}");
    o.push_str(&line(&r.total));
    o
}

/// A short tag with the device, engine and settings, printed beside every figure.
pub fn tag(r: &Report) -> String {
    let s = &r.settings;
    let mix = match s.workload {
        Workload::Rw | Workload::Randrw => format!(" {}%r", s.read_pct),
        _ => String::new(),
    };
    format!(
        "[{} {} {}{mix} {} qd{} x{}{}{}{}]",
        if s.emu_mode == Some("thread") {
            format!("{}/thread", r.device)
        } else {
            r.device.clone()
        },
        r.engine,
        s.workload,
        human_bytes(s.io_size),
        s.queue_depth,
        s.queues,
        if s.segments > 1 {
            format!(" seg{}", s.segments)
        } else {
            String::new()
        },
        if s.batch != s.queue_depth {
            format!(" b{}", s.batch)
        } else {
            String::new()
        },
        match s.mode {
            Mode::Poll => "",
            Mode::Irq => " irq",
            Mode::Hybrid => " hybrid",
        }
    )
}

fn human_bytes(b: u64) -> String {
    match b {
        b if b >= 1 << 30 && b % (1 << 30) == 0 => format!("{}g", b >> 30),
        b if b >= 1 << 20 && b % (1 << 20) == 0 => format!("{}m", b >> 20),
        b if b >= 1 << 10 && b % (1 << 10) == 0 => format!("{}k", b >> 10),
        b => format!("{b}"),
    }
}

/// `p50 6.70 us  p99 ...`.
fn fmt_pcts(p: &stats::Percentiles) -> String {
    p.0.iter()
        .map(|(k, v)| format!("p{k} {}", fmt_ns(*v as f64)))
        .collect::<Vec<_>>()
        .join("  ")
}

/// The human summary, SPDK perf / fio style, the tag beside every figure.
pub fn human(r: &Report) -> String {
    let s = &r.settings;
    let t = tag(r);
    let l = &r.latency;
    let mut o = String::new();
    let _ = writeln!(o, "device   {} ({})", r.device, r.device_description);
    let _ = writeln!(
        o,
        "engine   {}   workload {} ({}% reads)  io-size {}  qd {}  queues {}  segments {}  mode {}  batch {}  {} s{}{}{}",
        r.engine,
        s.workload,
        s.read_pct,
        human_bytes(s.io_size),
        s.queue_depth,
        s.queues,
        s.segments,
        s.mode,
        s.batch,
        s.time_s,
        if s.warmup_s > 0.0 {
            format!(" (+{} s warm-up)", s.warmup_s)
        } else {
            String::new()
        },
        s.ios
            .map(|n| format!("  stop after {n} I/Os"))
            .unwrap_or_default(),
        if s.verify {
            format!("  verify (seed {})", s.seed)
        } else {
            String::new()
        },
    );
    let mut extra = Vec::new();
    if s.offset_bytes > 0 {
        extra.push(format!("offset {}", human_bytes(s.offset_bytes)));
    }
    if s.random_distribution != "random" && s.workload.random() {
        extra.push(format!("distribution {}", s.random_distribution));
    }
    if let Some(b) = &s.bssplit {
        let parts: Vec<String> = b
            .iter()
            .map(|(sz, p)| format!("{}/{p}", human_bytes(*sz)))
            .collect();
        extra.push(format!("bssplit {}", parts.join(":")));
    }
    if s.fua {
        extra.push("fua".into());
    }
    if let Some(n) = s.fsync {
        extra.push(format!("fsync {n}"));
    }
    if let Some(n) = s.rate_iops {
        extra.push(format!("rate {n} IOPS per worker"));
    }
    if !extra.is_empty() {
        let _ = writeln!(o, "         {}", extra.join("  "));
    }
    let _ = writeln!(o, "IOPS     {:>12}   {t}", fmt_rate(r.iops));
    let _ = writeln!(o, "MiB/s    {:>12.1}   {t}", r.mib_s);
    let _ = writeln!(
        o,
        "CPU/IO   {:>12}   {t} (worker threads' CPU time / I/Os{})",
        r.cpu_ns_per_io.map_or("unknown".to_string(), fmt_ns),
        match (s.emu_mode, r.engine, s.sqpoll) {
            (Some("thread"), ..) => "; the emulator thread's CPU is not included",
            (Some(_), ..) => "; includes the inline emulator's work",
            (None, Engine::IoUring, true) => "; the kernel's SQPOLL thread is not included",
            (None, Engine::IoUring, false) => "; includes the kernel's work in io_uring_enter",
            _ => "",
        }
    );
    if let (Some(u), Some(sy)) = (r.cpu.user_ns_per_io, r.cpu.system_ns_per_io) {
        let _ = writeln!(
            o,
            "user/IO  {:>12}   {t} (and {} system: worker threads, getrusage{})",
            fmt_ns(u),
            fmt_ns(sy),
            match (r.cpu.process_user_ns_per_io, r.cpu.process_system_ns_per_io) {
                (Some(pu), Some(ps)) => format!(
                    "; whole process {} user + {} system",
                    fmt_ns(pu),
                    fmt_ns(ps)
                ),
                _ => String::new(),
            }
        );
    }
    let _ = writeln!(
        o,
        "wall/IO  {:>12}   {t} (queues x measuring window / I/Os; {})",
        fmt_ns(r.wall_ns_per_io),
        match s.mode {
            Mode::Poll => "poll mode: the workers spin, so CPU and wall time are close",
            Mode::Irq => "irq mode: the workers sleep between completions",
            Mode::Hybrid => "hybrid mode: the workers spin a while, then sleep",
        }
    );
    if r.ios == 0 {
        let _ = writeln!(o, "latency  none: no I/O succeeded   {t}");
    } else {
        let _ = writeln!(
            o,
            "latency  avg {}  min {}  max {}   {t}",
            fmt_ns(l.avg),
            fmt_ns(l.min as f64),
            fmt_ns(l.max as f64)
        );
        let _ = writeln!(o, "         {}   {t}", fmt_pcts(&r.percentiles_ns));
        if r.read.ios > 0 && r.write.ios > 0 {
            for (name, d) in [("read", &r.read), ("write", &r.write)] {
                let _ = writeln!(
                    o,
                    "{name:<8} IOPS {}  MiB/s {:.1}  latency avg {}  min {}  max {}  {}",
                    fmt_rate(d.iops),
                    d.mib_s,
                    fmt_ns(d.latency.avg),
                    fmt_ns(d.latency.min as f64),
                    fmt_ns(d.latency.max as f64),
                    fmt_pcts(&d.percentiles_ns)
                );
            }
        }
    }
    let _ = writeln!(
        o,
        "I/Os     {} in {:.2} s, {} errors",
        r.ios, r.elapsed_s, r.errors
    );
    if let Some(f) = &r.flushes {
        let _ = writeln!(
            o,
            "flushes  {} (one per {} writes per queue), latency avg {}  p99 {}  max {}",
            f.count,
            s.fsync.unwrap_or(0),
            fmt_ns(f.latency.avg),
            fmt_ns(f.latency.p99 as f64),
            fmt_ns(f.latency.max as f64)
        );
    }
    if let Some(e) = &r.emulator {
        let _ = writeln!(
            o,
            "emulator reads {} writes {} flushes {} write-zeroes {} trims {} fua {} errors {} (commands the emulated controller saw, setup included)",
            e.reads, e.writes, e.flushes, e.write_zeroes, e.dsm, e.fua_writes, e.io_errors
        );
    }
    o.push_str(&table(r));
    if let Some(v) = &r.verify {
        let _ = writeln!(
            o,
            "verify   {} blocks checked, {} mismatches",
            v.checked_blocks, v.mismatches
        );
    }
    for q in &r.queues {
        let opt = |v: Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
        let _ = writeln!(
            o,
            "queue {}{}{}: submitted {} completed {} errors {} splits {} commands {} doorbells {} (sq {} cq {}) polls {} empty {} timeouts {}{}{}",
            q.queue,
            if r.targets.len() > 1 {
                format!(" ({} nsid {}, worker {})", q.device, q.nsid, q.worker)
            } else {
                String::new()
            },
            q.cpu.map(|c| format!(" (cpu {c})")).unwrap_or_default(),
            q.submitted,
            q.completed,
            q.errors,
            opt(q.split_requests),
            opt(q.commands),
            opt(q.doorbell_writes),
            opt(q.sq_doorbells),
            opt(q.cq_doorbells),
            q.polls,
            q.empty_polls,
            opt(q.timeouts),
            q.interrupts
                .map(|v| format!(" interrupts {v}"))
                .unwrap_or_default(),
            q.syscalls
                .map(|v| format!(" syscalls {v}"))
                .unwrap_or_default(),
        );
    }
    for n in &r.notes {
        let _ = writeln!(o, "note: {n}");
    }
    o
}

fn finish(
    args: &BenchArgs,
    runs: &[Report],
    hist: Option<OutFile>,
    output: Option<OutFile>,
) -> Result<(), CliError> {
    let last = runs.last().expect("at least one run");
    if let Some(mut out) = hist {
        // Every run's I/Os in one histogram.
        let mut h = stats::new_histogram();
        for r in runs {
            if let Some(x) = &r.hist {
                h.add(x).expect("histograms share bounds");
            }
        }
        let l = Latency::from_histogram(&h);
        let ios: u64 = runs.iter().map(|r| r.ios).sum();
        let lines = vec![
            last.device_description.clone(),
            format!(
                "settings: {}{}",
                tag(last),
                if runs.len() > 1 {
                    format!(" ({} runs together)", runs.len())
                } else {
                    String::new()
                }
            ),
            format!(
                "{} IOPS, {:.1} MiB/s, {} I/Os; latency avg {}, p50 {}, p99 {}, p99.9 {}, max {}",
                fmt_rate(last.iops),
                last.mib_s,
                ios,
                fmt_ns(l.avg),
                fmt_ns(l.p50 as f64),
                fmt_ns(l.p99 as f64),
                fmt_ns(l.p99_9 as f64),
                fmt_ns(l.max as f64)
            ),
        ];
        let svg = stats::histogram_svg(
            &h,
            &format!("nvme-dio bench: {} ({} engine)", last.device, last.engine),
            &lines,
        );
        out.write(&svg, "write the histogram to")?;
    }
    let text = if args.json() {
        json::render(runs)?
    } else {
        let mut t = String::new();
        for (i, r) in runs.iter().enumerate() {
            if runs.len() > 1 {
                let _ = writeln!(t, "--- run {} of {} ---", i + 1, args.repeat);
            }
            t.push_str(&human(r));
        }
        if runs.len() > 1 {
            t.push_str(&repeat_summary(&json::Summary::of(runs)));
        }
        if let Some(p) = &args.histogram {
            let _ = writeln!(t, "histogram written to {}", p.display());
        }
        t
    };
    // A failed or mismatching run still fails when its report could not be printed: the
    // output error comes after those.
    let printed = match output {
        Some(mut f) => f.write(&text, "write the report to"),
        None => crate::out::print(&text),
    };
    for r in runs {
        if let Some(v) = &r.verify
            && v.mismatches > 0
        {
            return Err(CliError::VerifyFailed {
                count: v.mismatches,
                first: v.first_mismatch.clone().unwrap_or_default(),
            });
        }
        if r.errors > 0 {
            return Err(CliError::IoFailed {
                count: r.errors,
                first: r.first_error.clone().unwrap_or_default(),
            });
        }
    }
    printed
}

/// The min / median / max lines of --repeat.
fn repeat_summary(s: &json::Summary) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "--- {} runs ---        {:>12} {:>12} {:>12}",
        s.runs, "min", "median", "max"
    );
    let rate = |x: &json::Spread| [x.min, x.median, x.max].map(fmt_rate);
    let ns = |x: &json::Spread| [x.min, x.median, x.max].map(fmt_ns);
    let mib = |x: &json::Spread| [x.min, x.median, x.max].map(|v| format!("{v:.1}"));
    for (name, v) in [
        ("IOPS", rate(&s.iops)),
        ("MiB/s", mib(&s.mib_s)),
        ("latency avg", ns(&s.avg_ns)),
        ("latency p50", ns(&s.p50_ns)),
        ("latency p99", ns(&s.p99_ns)),
        ("latency p99.9", ns(&s.p99_9_ns)),
        ("latency max", ns(&s.max_ns)),
    ] {
        let _ = writeln!(o, "{name:<22} {:>12} {:>12} {:>12}", v[0], v[1], v[2]);
    }
    o
}

/// Pins the calling worker `w` to its CPU in the layout, if it has one; returns the CPU, or
/// a note why not.
pub fn pin(layout: &Layout, w: usize) -> (Option<usize>, Option<String>) {
    let Some(cpu) = layout.worker_cpus[w] else {
        return (None, None);
    };
    match nvme_dio_uring::pin_current_thread(cpu) {
        Ok(()) => (Some(cpu), None),
        Err(e) => (
            None,
            Some(format!("worker {w} not pinned to cpu {cpu}: {e}")),
        ),
    }
}

/// A thread's CPU clocks at one moment: the precise total (`CLOCK_THREAD_CPUTIME_ID`) and
/// the kernel's user / system split (`getrusage(RUSAGE_THREAD)`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuSample {
    /// User + system, ns resolution.
    pub total: Duration,
    /// User mode.
    pub user: Duration,
    /// Kernel mode on the thread's behalf.
    pub system: Duration,
}

impl CpuSample {
    /// `self - earlier`, clamped at zero.
    pub fn saturating_sub(self, earlier: CpuSample) -> CpuSample {
        CpuSample {
            total: self.total.saturating_sub(earlier.total),
            user: self.user.saturating_sub(earlier.user),
            system: self.system.saturating_sub(earlier.system),
        }
    }
}

/// The calling thread's CPU time so far (None if a clock cannot be read).
pub fn thread_cpu() -> Option<CpuSample> {
    let total = nvme_dio_uring::thread_cpu_time().ok()?;
    let ru = nvme_dio_uring::thread_rusage().ok()?;
    Some(CpuSample {
        total,
        user: ru.user,
        system: ru.system,
    })
}

/// The process's user / system time over the last measuring window, set by the timekeeper.
fn process_window() -> std::sync::MutexGuard<'static, Option<nvme_dio_uring::CpuTimes>> {
    static WINDOW: std::sync::Mutex<Option<nvme_dio_uring::CpuTimes>> = std::sync::Mutex::new(None);
    WINDOW
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Marks the end of a worker's measuring window, wall and CPU clocks together (once).
pub fn mark_end(t_end: &mut Option<Instant>, cpu_end: &mut Option<CpuSample>) {
    if t_end.is_none() {
        *t_end = Some(Instant::now());
        *cpu_end = thread_cpu();
    }
}

/// Shared end-of-window bookkeeping: once a worker has its budget of measured I/Os, it
/// stops submitting.
#[inline]
pub fn budget_left(budget: Option<u64>, issued: u64) -> bool {
    budget.is_none_or(|b| issued < b)
}

/// Keeps the per-queue counters a worker may share with the progress line.
#[inline]
pub fn publish(ctl: &Control, q: usize, completed: u64, bytes: u64) {
    ctl.progress[q].0.store(completed, Ordering::Relaxed);
    ctl.progress_bytes[q].0.store(bytes, Ordering::Relaxed);
}

/// The current phase.
#[inline]
pub fn phase(ctl: &Control) -> u8 {
    ctl.phase.load(Ordering::Acquire)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn args(extra: &[&str]) -> BenchArgs {
        let mut v = vec!["nvme-dio", "bench"];
        v.extend_from_slice(extra);
        match crate::args::Cli::try_parse_from(v).unwrap().command {
            crate::args::Command::Bench(b) => *b,
            _ => unreachable!(),
        }
    }

    #[test]
    fn layout_pairs_targets_and_workers_round_robin_as_spdk_perf() {
        // 2 targets on 2 cores: one each.
        let l = Layout::new(&args(&["-c", "0x3", "--ios", "10"]), 2).unwrap();
        let pairs: Vec<_> = l.ctxs.iter().map(|c| (c.target, c.worker)).collect();
        assert_eq!(pairs, vec![(0, 0), (1, 1)]);
        assert_eq!(l.worker_cpus, vec![Some(0), Some(1)]);
        // 3 targets on 2 workers: the third goes back to worker 0.
        let l = Layout::new(&args(&["--queues", "2", "--no-pin"]), 3).unwrap();
        let pairs: Vec<_> = l.ctxs.iter().map(|c| (c.target, c.worker)).collect();
        assert_eq!(pairs, vec![(0, 0), (1, 1), (2, 0)]);
        assert_eq!(l.worker_cpus, vec![None, None]);
        // 1 target, 2 workers, -P 2, -q 5, --ios 11: 4 lanes on the target.
        let l = Layout::new(
            &args(&["--cpus", "0-1", "-P", "2", "-q", "5", "--ios", "11"]),
            1,
        )
        .unwrap();
        assert_eq!(l.lanes_on(0), 4);
        let lanes: Vec<LanePlan> = l.ctxs.iter().flat_map(|c| c.lanes.clone()).collect();
        assert_eq!(
            lanes.iter().map(|x| x.qd).collect::<Vec<_>>(),
            vec![3, 2, 3, 2]
        );
        assert_eq!(lanes.iter().map(|x| x.budget.unwrap()).sum::<u64>(), 11);
        assert_eq!(
            lanes.iter().map(|x| x.index).collect::<Vec<_>>(),
            vec![0, 1, 2, 3]
        );
        assert!(lanes.iter().all(|x| x.of == 4));
        let e = Layout::new(&args(&["-P", "4", "-q", "2"]), 1).unwrap_err();
        assert!(e.to_string().contains("fewer I/Os than the -P 4"), "{e}");
    }

    #[test]
    fn cpu_lists_print_as_ranges() {
        assert_eq!(fmt_cpus(&[0, 1, 2, 5, 7, 8]), "0-2,5,7-8");
        assert_eq!(fmt_cpus(&[3]), "3");
    }
}
