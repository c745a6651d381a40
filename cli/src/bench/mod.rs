//! `nvme-dio bench`: keep QD I/Os in flight per queue, on one thread per queue, and measure.
//!
//! ## What is measured
//!
//! - Latency of each I/O runs from a clock read taken *before* its submit call (so a doorbell
//!   write that stalls is inside it) to the clock read taken right after the poll that reaped
//!   its completion. One clock read covers a batch: every I/O submitted in one refill gets
//!   the same start, every completion reaped by one poll the same end. Recorded in an HDR
//!   histogram (3 significant digits).
//! - IOPS and MiB/s count I/Os completed while measuring (after `--warmup`), per queue over
//!   that queue's own measuring window, summed across queues.
//! - Per-queue counters are the driver's (or io_uring's) differences over the window.
//!
//! ## `--json`
//!
//! One object ([`Report`]). Every key with a unit names it (`_bytes`, `_s`, `_ns`,
//! `_per_io`); counts have none. `device`, `device_description`, `emulated`, `engine`
//! (`vfio`|`io_uring`), `settings` {workload, read_pct, io_size_bytes, lba_size_bytes,
//! queue_depth, queues, segments, segment_shapes [[in-page offset, len]..], mode, batch,
//! time_s, warmup_s, ios, working_set_bytes, verify, seed, pinned, emu_mode, iopoll,
//! sqpoll, shadow_doorbells}, `ios`, `bytes`, `elapsed_s`, `iops`, `mib_s`, `cpu_ns_per_io` (the worker
//! threads' own CPU time), `wall_ns_per_io`, `latency` {avg_ns, min_ns, max_ns, p50_ns,
//! p90_ns, p99_ns, p99_9_ns, p99_99_ns} (successful I/Os only; zeroes if none succeeded),
//! `errors`, `first_error`, `verify` {checked_blocks, mismatches, first_mismatch} or null,
//! `queues` [{queue, cpu, submitted, completed, errors, split_requests, commands,
//! doorbell_writes, sq_doorbells, cq_doorbells, polls, empty_polls, timeouts, interrupts,
//! syscalls}] (null where the engine has no such thing), `notes`.
//!
//! The engines (`nvme.rs`: the nvme-dio driver on VFIO or the emulated controller;
//! `uring.rs`: the kernel through io_uring) share the workload generator and verify pattern
//! (`pattern.rs`) and the run control here.

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

use crate::args::{BenchArgs, DeviceSpec, Engine, Mode, Workload};
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
    /// Measured completions per queue, for the progress line.
    pub progress: Vec<Padded>,
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
    /// Measured I/Os per queue to stop after.
    pub ios_per_queue: Vec<Option<u64>>,
    /// Completion mode.
    pub mode: Mode,
    /// Queues.
    pub queues: usize,
    /// Pin worker threads.
    pub pin: bool,
    /// `--queue-entries`, if given.
    pub queue_entries: Option<u32>,
}

impl Job {
    /// Blocks per I/O.
    pub fn io_blocks(&self) -> u64 {
        self.io_size / self.lba_size as u64
    }
}

/// Per-queue counters over the measuring window. Fields an engine has no notion of are
/// `null` in JSON (e.g. doorbells for io_uring, syscalls for vfio).
#[derive(Clone, Debug, Default, Serialize)]
pub struct QueueCounters {
    /// Queue index (0-based).
    pub queue: usize,
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

/// What one worker measured.
#[derive(Debug)]
pub struct QueueResult {
    /// Latency histogram (ns).
    pub hist: Histogram<u64>,
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
    /// The measuring window.
    pub elapsed: Duration,
    /// CPU time the worker thread used in that window (None if the clock failed).
    pub cpu: Option<Duration>,
    /// Counters.
    pub counters: QueueCounters,
}

impl QueueResult {
    /// An empty result for queue `q`.
    pub fn new(q: usize, cpu: Option<usize>) -> QueueResult {
        QueueResult {
            hist: stats::new_histogram(),
            ios: 0,
            bytes: 0,
            errors: 0,
            first_error: None,
            checked_blocks: 0,
            mismatches: 0,
            first_mismatch: None,
            elapsed: Duration::ZERO,
            cpu: None,
            counters: QueueCounters {
                queue: q,
                cpu,
                ..Default::default()
            },
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
    /// I/Os in flight per queue.
    pub queue_depth: u32,
    /// Queue pairs (threads).
    pub queues: u16,
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
    /// Shadow doorbells asked for (vfio engine; in use if the controller offers them).
    pub shadow_doorbells: bool,
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

/// The whole result: what `--json` prints.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// The device as given (`emu`, a PCI address, a path).
    pub device: String,
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
    /// Wall time per I/O, ns: `queues * window / I/Os`. Equal to the CPU time when the
    /// workers spin (poll mode); larger when they sleep.
    pub wall_ns_per_io: f64,
    /// Latency in ns.
    pub latency: Latency,
    /// Failed I/Os.
    pub errors: u64,
    /// The first failure.
    pub first_error: Option<String>,
    /// Verify results (null without --verify).
    pub verify: Option<VerifyReport>,
    /// Per-queue counters.
    pub queues: Vec<QueueCounters>,
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
    let hist = HistogramFile::create(args)?;
    // Ctrl-C stops the run and prints what was measured (fio does the same); a second
    // Ctrl-C terminates as usual. Without the handler Ctrl-C still works, only abruptly.
    let mut notes = Vec::new();
    if let Err(e) = nvme_dio_uring::catch_sigint() {
        notes.push(format!("Ctrl-C will end the run without a report: {e}"));
    }
    let result = match (args.engine(), &args.device) {
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
            if let Some(h) = hist {
                h.discard();
            }
            return Err(e);
        }
    };
    report.notes.extend(notes);
    let interrupted = interrupted();
    if interrupted {
        report.notes.push(format!(
            "interrupted by Ctrl-C after {:.2} s of measuring: the figures cover the I/Os completed until then",
            report.elapsed_s
        ));
    }
    finish(args, report, hist)?;
    if interrupted {
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

/// The `--histogram` file, created before the run so a bad path fails at once.
#[derive(Debug)]
pub struct HistogramFile {
    path: std::path::PathBuf,
    file: std::fs::File,
}

impl HistogramFile {
    fn create(args: &BenchArgs) -> Result<Option<HistogramFile>, CliError> {
        let Some(path) = &args.histogram else {
            return Ok(None);
        };
        let file = std::fs::File::create(path).map_err(|source| CliError::File {
            op: "create the histogram file (checked before the run)",
            path: path.clone(),
            source,
        })?;
        Ok(Some(HistogramFile {
            path: path.clone(),
            file,
        }))
    }

    /// Removes the (empty) file again when the run failed before any result.
    fn discard(self) {
        drop(self.file);
        let _ = std::fs::remove_file(&self.path);
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
    if a.inject_flip_bit.is_some() && !a.device.is_emu_ram() {
        return bad("--inject-flip-bit is a testing aid for --device emu:ram only".into());
    }
    if a.inject_write_protect && !a.device.is_emu() {
        return bad(
            "--inject-write-protect is a testing aid for the emulated controller only (--device emu or emu:ram)".into(),
        );
    }
    if a.inject_io_error.is_some() && !a.device.is_emu() {
        return bad(
            "--inject-io-error is a testing aid for the emulated controller only (--device emu or emu:ram)".into(),
        );
    }
    if a.emu_sgl && !a.device.is_emu() {
        return bad(
            "--emu-sgl applies to the emulated controller only (--device emu or emu:ram)".into(),
        );
    }
    if a.emu_thread && !a.device.is_emu() {
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
    if a.verify && a.device.is_emu() && !a.device.is_emu_ram() {
        return bad("--verify needs a namespace that keeps what is written, and `--device emu` is a null namespace (writes are dropped, reads return zeroes): use --device emu:ram".into());
    }
    if a.device.is_emu_ram() {
        let want = a.size.unwrap_or(nvme::EMU_RAM_BYTES);
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
    if args.io_size % lba_size as u64 != 0 {
        return bad(format!(
            "--io-size {} is not a multiple of the device's {lba_size}-byte blocks: use a multiple such as {}",
            args.io_size,
            lba_size.max(4096)
        ));
    }
    let shapes = pattern::segment_shapes(args.io_size, lba_size, args.segments, sub_block)
        .map_err(CliError::BadArgument)?;
    let default_size = match (&args.device, args.verify) {
        (DeviceSpec::Emu(_), _) | (_, false) => device_bytes,
        (_, true) => device_bytes.min(256 << 20),
    };
    let size = args.size.unwrap_or(default_size);
    if size > device_bytes {
        return bad(format!(
            "--size {size} is larger than the device ({device_bytes} bytes)"
        ));
    }
    if size < args.io_size {
        return bad(format!(
            "the working set ({size} bytes) is smaller than one I/O ({} bytes): raise --size or lower --io-size",
            args.io_size
        ));
    }
    let queues = args.queues as usize;
    let ios_per_queue = (0..queues)
        .map(|q| {
            args.ios
                .map(|n| n / queues as u64 + u64::from((q as u64) < n % queues as u64))
        })
        .collect();
    Ok(Job {
        read_pct: args.read_pct(),
        random: args.workload.random(),
        io_size: args.io_size,
        lba_size,
        region_blocks: size / lba_size as u64,
        qd: args.queue_depth,
        batch: args.batch(),
        shapes,
        seed: args.seed.unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        }),
        verify: args.verify,
        ios_per_queue,
        mode: args.mode,
        queues,
        pin: !args.no_pin,
        queue_entries: args.queue_entries,
    })
}

/// Runs `worker(queue, control)` on one thread per queue: they set up, meet at the barrier,
/// warm up, measure, stop. The main thread keeps time and draws the progress line.
///
/// # Errors
///
/// The first worker error (by queue order), or [`CliError::WorkerPanicked`].
pub fn run_workers<F>(args: &BenchArgs, job: &Job, worker: F) -> Result<Vec<QueueResult>, CliError>
where
    F: Fn(usize, &Control) -> Result<QueueResult, CliError> + Sync,
{
    let n = job.queues;
    let ctl = Control {
        phase: AtomicU8::new(if args.warmup > 0.0 { WARMUP } else { MEASURE }),
        done: AtomicUsize::new(0),
        progress: (0..n).map(|_| Padded::default()).collect(),
        ready: Barrier::new(n + 1),
    };
    let show = !args.json && std::io::stdout().is_terminal();
    let results: Vec<std::thread::Result<Result<QueueResult, CliError>>> =
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..n)
                .map(|q| {
                    let (ctl, worker) = (&ctl, &worker);
                    std::thread::Builder::new()
                        .name(format!("bench-q{q}"))
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
    let end = start + Duration::from_secs_f64(args.time);
    let mut last = (start, 0u64);
    while !all_done() {
        let now = Instant::now();
        if now >= end && args.time > 0.0 {
            break;
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
        let left = if args.time > 0.0 {
            end.saturating_duration_since(now)
        } else {
            tick
        };
        std::thread::sleep(tick.min(left).max(Duration::from_millis(1)));
    }
    ctl.phase.store(STOP, Ordering::Release);
    if let Some(b) = bar {
        b.finish_and_clear();
    }
}

fn fmt_secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

/// Merges the workers' results into the report.
pub fn report(
    args: &BenchArgs,
    job: &Job,
    description: String,
    results: Vec<QueueResult>,
    notes: Vec<String>,
) -> Report {
    let mut hist = stats::new_histogram();
    let (mut ios, mut bytes, mut errors, mut iops, mut mib_s) = (0u64, 0u64, 0u64, 0.0, 0.0);
    let (mut checked, mut mismatches) = (0u64, 0u64);
    let (mut first_error, mut first_mismatch) = (None, None);
    let mut elapsed = Duration::ZERO;
    let mut wall_ns = 0.0;
    let mut cpu_ns = Some(0.0);
    let mut queues = Vec::new();
    for r in results {
        hist.add(&r.hist).expect("histograms share bounds");
        ios += r.ios;
        bytes += r.bytes;
        errors += r.errors;
        checked += r.checked_blocks;
        mismatches += r.mismatches;
        first_error = first_error.or(r.first_error);
        first_mismatch = first_mismatch.or(r.first_mismatch);
        let secs = r.elapsed.as_secs_f64();
        if secs > 0.0 {
            iops += r.ios as f64 / secs;
            mib_s += r.bytes as f64 / secs / (1 << 20) as f64;
        }
        wall_ns += secs * 1e9;
        cpu_ns = cpu_ns.zip(r.cpu).map(|(a, c)| a + c.as_secs_f64() * 1e9);
        elapsed = elapsed.max(r.elapsed);
        queues.push(r.counters);
    }
    Report {
        device: args.device.to_string(),
        device_description: description,
        emulated: args.device.is_emu(),
        engine: args.engine(),
        settings: Settings {
            workload: args.workload,
            read_pct: job.read_pct,
            io_size: job.io_size,
            lba_size: job.lba_size,
            queue_depth: job.qd,
            queues: args.queues,
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
            pinned: job.pin,
            emu_mode: args.device.is_emu().then_some(if args.emu_thread {
                "thread"
            } else {
                "inline"
            }),
            iopoll: args.iopoll,
            sqpoll: args.sqpoll,
            shadow_doorbells: args.shadow_doorbells,
        },
        ios,
        bytes,
        elapsed_s: elapsed.as_secs_f64(),
        iops,
        mib_s,
        cpu_ns_per_io: cpu_ns.map(|c| if ios > 0 { c / ios as f64 } else { 0.0 }),
        wall_ns_per_io: if ios > 0 { wall_ns / ios as f64 } else { 0.0 },
        latency: Latency::from_histogram(&hist),
        errors,
        first_error,
        verify: job.verify.then_some(VerifyReport {
            checked_blocks: checked,
            mismatches,
            first_mismatch,
        }),
        queues,
        notes,
        hist: Some(hist),
    }
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
        if s.mode == Mode::Irq { " irq" } else { "" }
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
    let _ = writeln!(
        o,
        "wall/IO  {:>12}   {t} (queues x measuring window / I/Os; {})",
        fmt_ns(r.wall_ns_per_io),
        match s.mode {
            Mode::Poll => "poll mode: the workers spin, so CPU and wall time are close",
            Mode::Irq => "irq mode: the workers sleep between completions",
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
        let _ = writeln!(
            o,
            "         p50 {}  p90 {}  p99 {}  p99.9 {}  p99.99 {}   {t}",
            fmt_ns(l.p50 as f64),
            fmt_ns(l.p90 as f64),
            fmt_ns(l.p99 as f64),
            fmt_ns(l.p99_9 as f64),
            fmt_ns(l.p99_99 as f64)
        );
    }
    let _ = writeln!(
        o,
        "I/Os     {} in {:.2} s, {} errors",
        r.ios, r.elapsed_s, r.errors
    );
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
            "queue {}{}: submitted {} completed {} errors {} splits {} commands {} doorbells {} (sq {} cq {}) polls {} empty {} timeouts {}{}{}",
            q.queue,
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

fn finish(args: &BenchArgs, r: Report, hist: Option<HistogramFile>) -> Result<(), CliError> {
    if let (Some(mut out), Some(h)) = (hist, &r.hist) {
        let lines = vec![
            r.device_description.clone(),
            format!("settings: {}", tag(&r)),
            format!(
                "{} IOPS, {:.1} MiB/s, {} I/Os; latency avg {}, p50 {}, p99 {}, p99.9 {}, max {}",
                fmt_rate(r.iops),
                r.mib_s,
                r.ios,
                fmt_ns(r.latency.avg),
                fmt_ns(r.latency.p50 as f64),
                fmt_ns(r.latency.p99 as f64),
                fmt_ns(r.latency.p99_9 as f64),
                fmt_ns(r.latency.max as f64)
            ),
        ];
        let svg = stats::histogram_svg(
            h,
            &format!("nvme-dio bench: {} ({} engine)", r.device, r.engine),
            &lines,
        );
        std::io::Write::write_all(&mut out.file, svg.as_bytes()).map_err(|source| {
            CliError::File {
                op: "write the histogram to",
                path: out.path.clone(),
                source,
            }
        })?;
    }
    let text = if args.json {
        serde_json::to_string_pretty(&r)? + "\n"
    } else {
        let mut t = human(&r);
        if let Some(p) = &args.histogram {
            let _ = writeln!(t, "histogram written to {}", p.display());
        }
        t
    };
    // A failed or mismatching run still fails when its report could not be printed: the
    // output error comes after those.
    let printed = crate::out::print(&text);
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
    printed
}

/// Pins the calling worker to CPU `q % cpus` if asked; returns the CPU, or a note why not.
pub fn pin(job: &Job, q: usize) -> (Option<usize>, Option<String>) {
    if !job.pin {
        return (None, None);
    }
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let cpu = q % cpus;
    match nvme_dio_uring::pin_current_thread(cpu) {
        Ok(()) => (Some(cpu), None),
        Err(e) => (
            None,
            Some(format!("queue {q} not pinned to cpu {cpu}: {e}")),
        ),
    }
}

/// The calling thread's CPU time so far (None if the clock cannot be read).
pub fn thread_cpu() -> Option<Duration> {
    nvme_dio_uring::thread_cpu_time().ok()
}

/// Marks the end of a worker's measuring window, wall and CPU clocks together (once).
pub fn mark_end(t_end: &mut Option<Instant>, cpu_end: &mut Option<Duration>) {
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
pub fn publish(ctl: &Control, q: usize, completed: u64) {
    ctl.progress[q].0.store(completed, Ordering::Relaxed);
}

/// The current phase.
#[inline]
pub fn phase(ctl: &Control) -> u8 {
    ctl.phase.load(Ordering::Acquire)
}
