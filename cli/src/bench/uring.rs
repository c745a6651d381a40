//! The kernel engine: the same workload through O_DIRECT and io_uring (registered buffers
//! and file; `--iopoll`, `--sqpoll`), for a figure beside the userspace driver's.
//!
//! Poll mode spins on the completion ring (with `--iopoll` it calls io_uring_enter, which is
//! where the kernel polls the device); irq mode sleeps in io_uring_enter until a completion.

use std::path::{Path, PathBuf};
use std::time::Instant;

use nvme_dio_uring::{Dir, Uring, UringOptions};

use super::pattern;
use super::{
    Control, Job, MEASURE, QueueCounters, QueueResult, Report, STOP, WorkerResult, budget_left,
    make_job, mark_end, phase, pin, publish, thread_cpu,
};
use crate::args::{BenchArgs, Mode};
use crate::error::CliError;

/// Why the kernel path takes whole-block segments only.
const KERNEL_SEGMENTS: &str = "O_DIRECT through the kernel takes whole-block segments only";

fn uerr(path: &Path) -> impl Fn(nvme_dio_uring::UringError) -> CliError + '_ {
    move |source| CliError::Uring {
        path: path.to_owned(),
        source,
    }
}

/// The logical block size of a block device (sysfs), or 512 for a regular file.
fn logical_block_size(path: &Path) -> u32 {
    let Ok(real) = std::fs::canonicalize(path) else {
        return 512;
    };
    let Some(name) = real
        .strip_prefix("/dev")
        .ok()
        .and_then(|p| p.to_str())
        .map(str::to_owned)
    else {
        return 512;
    };
    std::fs::read_to_string(format!("/sys/class/block/{name}/queue/logical_block_size"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(512)
}

fn options(args: &BenchArgs, job_writes: bool) -> UringOptions {
    UringOptions {
        entries: (args.queue_depth * 2).next_power_of_two().max(8),
        iopoll: args.iopoll,
        sqpoll: args.sqpoll.then_some(2000),
        register_buffers: true,
        register_file: true,
        write: job_writes,
    }
}

/// Runs the benchmark on `path` through io_uring.
///
/// # Errors
///
/// Open/setup failures, bad geometry, failed I/Os, verify mismatches (in the report).
pub fn run(args: &BenchArgs, path: &Path) -> Result<Report, CliError> {
    if let Ok(m) = std::fs::metadata(path) {
        use std::os::unix::fs::FileTypeExt;
        let t = m.file_type();
        let what = if t.is_dir() {
            Some("a directory")
        } else if t.is_char_device() {
            Some("a character device, not a block device")
        } else if t.is_fifo() || t.is_socket() {
            Some("a pipe or socket")
        } else {
            None
        };
        if let Some(what) = what {
            return Err(CliError::BadArgument(format!(
                "{} is {what}: give a block device (like /dev/nvme0n1) or a file on a filesystem that supports O_DIRECT",
                path.display()
            )));
        }
    }
    let writes = args.read_pct() < 100 || args.verify;
    if writes {
        refuse_mounted(&crate::sysfs::Sysfs::host(), path)?;
    }
    let opts = options(args, writes);
    let lba = logical_block_size(path);
    let (packed, slot_bytes) = pattern::pack_segments(
        &pattern::segment_shapes(args.max_io_size(), lba, args.segments, Err(KERNEL_SEGMENTS))
            .map_err(CliError::BadArgument)?,
    );
    let mut probe =
        Uring::open(path, args.queue_depth as usize, slot_bytes, &opts).map_err(uerr(path))?;
    let job = make_job(
        args,
        lba,
        probe.size() / lba as u64 * lba as u64,
        Err(KERNEL_SEGMENTS),
    )?;
    let mut notes = probe.info().notes.clone();
    first_ios(&mut probe, &job, &packed, path, args.iopoll, writes)?;
    if job.verify && job.read_pct > 0 {
        prefill(&mut probe, &job, &packed, path)?;
    }
    drop(probe);
    let layout = super::Layout::new(args, 1)?;
    let path_buf: PathBuf = path.to_owned();
    let label = path.display().to_string();
    let results = super::run_workers(args, &layout, |q, ctl| {
        worker(
            &path_buf, &opts, &job, &layout, &label, &packed, slot_bytes, q, ctl,
        )
    })?;
    for (w, r) in results.iter().enumerate() {
        if layout.worker_cpus[w].is_some() && r.ctxs[0].counters[0].cpu.is_none() {
            notes.push(format!("worker {w} was not pinned to a CPU"));
        }
    }
    if std::fs::metadata(path).is_ok_and(|m| m.is_file()) {
        notes.push(
            "a regular file: blocks never written (sparse or fallocated) read as zeroes without touching the device, so write the file first for a device figure".into(),
        );
    }
    let info = format!(
        "kernel block path: O_DIRECT, io_uring{}{}, {lba}-byte blocks, {} bytes",
        if args.iopoll { " IOPOLL" } else { "" },
        if args.sqpoll { " SQPOLL" } else { "" },
        job.region_blocks * lba as u64
    );
    let targets = vec![super::TargetInfo {
        device: label,
        nsid: 1,
        lba_size_bytes: lba,
        working_set_bytes: job.region_blocks * lba as u64,
        queue_pairs: layout.workers(),
    }];
    Ok(super::report(
        args, &layout, targets, &job, info, results, notes,
    ))
}

/// Refuses to write to a block device that (or a partition of which) is mounted or used as
/// swap: the benchmark would destroy the filesystem.
fn refuse_mounted(s: &crate::sysfs::Sysfs, path: &Path) -> Result<(), CliError> {
    use std::os::unix::fs::FileTypeExt;
    let Ok(real) = std::fs::canonicalize(path) else {
        return Ok(());
    };
    if !std::fs::metadata(&real).is_ok_and(|m| m.file_type().is_block_device()) {
        return Ok(());
    }
    let Some(name) = real.file_name().and_then(|n| n.to_str()) else {
        return Ok(());
    };
    let mut busy = Vec::new();
    for n in std::iter::once(name.to_string()).chain(s.partitions(name)) {
        for m in s.mounts_of(&n) {
            busy.push(format!("/dev/{n} on {m}"));
        }
    }
    if busy.is_empty() {
        return Ok(());
    }
    Err(CliError::BadArgument(format!(
        "refusing to write to {}: it is in use ({}); writing would destroy that data. Use a read-only workload (-w read / randread) or an unused device",
        path.display(),
        busy.join(", ")
    )))
}

/// Does one I/O of each direction the run uses at offset 0 before the run starts, so that a
/// device that cannot do it (a read-only device, `--iopoll` on a file or a device without
/// poll queues) fails at once with the reason, instead of after a run of failures.
fn first_ios(
    u: &mut Uring,
    job: &Job,
    packed: &[(usize, usize)],
    path: &Path,
    iopoll: bool,
    writes: bool,
) -> Result<(), CliError> {
    let io = job.io_size as usize;
    if packed.len() > 1 {
        u.set_segments(0, packed).map_err(uerr(path))?;
    }
    let mut dirs = Vec::new();
    if job.read_pct > 0 {
        dirs.push((Dir::Read, "read"));
    }
    if writes {
        // With verify the working set is written next anyway; without, the run writes
        // whatever its buffers hold, as this one does.
        dirs.push((
            Dir::Write,
            if job.fua {
                "FUA (RWF_DSYNC) write"
            } else {
                "write"
            },
        ));
    }
    if job.fsync.is_some() {
        // The fsync goes as slot 0 too; its result is 0, not a length.
        u.push_fsync(0).map_err(uerr(path))?;
        let res = loop {
            u.submit(1).map_err(uerr(path))?;
            let mut got = None;
            u.reap(|_, _, r| got = Some(r));
            if let Some(r) = got {
                break r;
            }
            if super::interrupted() {
                return Err(super::interrupted_during("trying the first I/O"));
            }
        };
        if res < 0 {
            return Err(CliError::FirstIo {
                device: path.display().to_string(),
                offset: 0,
                what: "an fsync (for --fsync)".into(),
                detail: describe(res, 0, 0, job.lba_size),
            });
        }
    }
    for (dir, name) in dirs {
        let flags = if dir == Dir::Write && job.fua {
            nvme_dio_uring::RWF_DSYNC
        } else {
            0
        };
        u.push_with(0, dir, job.region_start * job.lba_size as u64, io, flags)
            .map_err(uerr(path))?;
        let res = loop {
            u.submit(1).map_err(uerr(path))?;
            let mut got = None;
            u.reap(|_, _, r| got = Some(r));
            if let Some(r) = got {
                break r;
            }
            if super::interrupted() {
                return Err(super::interrupted_during("trying the first I/O"));
            }
        };
        if res != io as i32 {
            return Err(CliError::FirstIo {
                device: path.display().to_string(),
                offset: job.region_start * job.lba_size as u64,
                what: format!(
                    "a {name} of {io} bytes{}",
                    if iopoll { " with --iopoll" } else { "" }
                ),
                detail: describe(res, io, job.region_start, job.lba_size),
            });
        }
    }
    Ok(())
}

/// Writes the working set once with the verify pattern, so every later read has something
/// to be checked against.
fn prefill(
    u: &mut Uring,
    job: &Job,
    packed: &[(usize, usize)],
    path: &Path,
) -> Result<(), CliError> {
    let io = job.io_size as usize;
    let units = job.region_blocks / job.io_blocks();
    let mut stream = vec![0u8; io];
    let (mut next, mut done) = (0u64, 0u64);
    let mut idle: Vec<usize> = (0..u.slots()).collect();
    let mut lbas = vec![0u64; u.slots()];
    for (slot, _) in lbas.iter().enumerate() {
        if packed.len() > 1 {
            u.set_segments(slot, packed).map_err(uerr(path))?;
        }
    }
    let bar = super::progress_bar("writing the working set before verify", units * job.io_size);
    while done < units {
        if super::interrupted() {
            return Err(super::interrupted_during(
                "writing the working set before verify",
            ));
        }
        if let Some(b) = &bar {
            b.set_position(done * job.io_size);
        }
        while next < units
            && let Some(slot) = idle.pop()
        {
            let lba = job.region_start + next * job.io_blocks();
            pattern::fill(&mut stream, lba, job.lba_size as usize, job.seed);
            scatter(u.slot_mut(slot).map_err(uerr(path))?, packed, &stream);
            u.push(slot, Dir::Write, lba * job.lba_size as u64, io)
                .map_err(uerr(path))?;
            lbas[slot] = lba;
            next += 1;
        }
        u.submit(1).map_err(uerr(path))?;
        let mut failed = None;
        u.reap(|_, slot, res| {
            if res != io as i32 && failed.is_none() {
                failed = Some(describe(res, io, lbas[slot], job.lba_size));
            }
            idle.push(slot);
            done += 1;
        });
        if let Some(first) = failed {
            return Err(CliError::IoFailed {
                count: 1,
                first: format!("writing the working set before verify: {first}"),
            });
        }
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    Ok(())
}

/// Copies a contiguous stream into the packed segments of a slot.
fn scatter(slot: &mut [u8], packed: &[(usize, usize)], stream: &[u8]) {
    let mut pos = 0;
    for &(off, len) in packed {
        slot[off..off + len].copy_from_slice(&stream[pos..pos + len]);
        pos += len;
    }
}

/// Copies the packed segments of a slot into a contiguous stream.
fn gather(slot: &[u8], packed: &[(usize, usize)], stream: &mut [u8]) {
    let mut pos = 0;
    for &(off, len) in packed {
        stream[pos..pos + len].copy_from_slice(&slot[off..off + len]);
        pos += len;
    }
}

fn describe(res: i32, want: usize, lba: u64, lba_size: u32) -> String {
    let at = format!("at byte offset {}", lba * lba_size as u64);
    if res >= 0 {
        return format!("short transfer {at}: {res} of {want} bytes (past the end of the file?)");
    }
    let e = std::io::Error::from_raw_os_error(-res);
    let hint = match -res {
        1 | 13 | 30 => {
            // EPERM, EACCES, EROFS
            ": the device or file is read-only; use a read workload (-w read / randread) or a writable device"
        }
        22 => {
            // EINVAL
            ": O_DIRECT needs offsets, lengths and buffers aligned to the device's logical block size"
        }
        95 => {
            ": the device cannot do this (with --iopoll: only a block device with poll queues can be polled, not a regular file; load nvme with poll_queues=N, or drop --iopoll)"
        }
        _ => "",
    };
    format!("{e} {at}{hint}")
}

#[allow(clippy::too_many_arguments)]
fn worker(
    path: &Path,
    opts: &UringOptions,
    job: &Job,
    layout: &super::Layout,
    label: &str,
    packed: &[(usize, usize)],
    slot_bytes: usize,
    q: usize,
    ctl: &Control,
) -> Result<WorkerResult, CliError> {
    let ctx = layout.ctxs_of(q).next().expect("one context per worker");
    let lane = layout.ctxs[ctx].lanes[0];
    let qd = lane.qd as usize;
    // The ring is set up before pinning: an SQPOLL thread inherits the creator's CPU mask,
    // and pinned to the CPU our worker spins on it would starve.
    let setup = (|| {
        let mut u = Uring::open(path, qd, slot_bytes, opts).map_err(uerr(path))?;
        if packed.len() > 1 {
            for slot in 0..qd {
                u.set_segments(slot, packed).map_err(uerr(path))?;
            }
        }
        Ok::<_, CliError>(u)
    })();
    let (cpu, _note) = pin(layout, q);
    ctl.ready.wait();
    let mut u = setup?;

    let io = job.io_size as usize;
    let lba_size = job.lba_size as usize;
    let budget = lane.budget;
    let mut ops_gen = job.op_gen(lane.index, lane.of);
    let interval = job
        .rate_iops
        .map(|r| std::time::Duration::from_secs_f64(1.0 / r as f64));
    let mut res = QueueResult::new(ctx);
    let mut starts = vec![Instant::now(); qd];
    let mut ops = vec![(0u64, 0u64, false); qd];
    let mut idle: Vec<usize> = (0..qd).rev().collect();
    let mut reaped: Vec<(usize, i32)> = Vec::with_capacity(qd);
    let (mut stream, mut expect) = (vec![0u8; io], vec![0u8; io]);
    let spin_reap = job.mode == Mode::Poll && !opts.iopoll;
    let batch = job.batch as usize;

    let mut measuring = phase(ctl) >= MEASURE;
    let mut stopped = false;
    let mut failed = false;
    let mut t_start = Instant::now();
    // --rate-iops: I/O k of the window is due k intervals after its start.
    let mut due = t_start;
    let mut t_end = None;
    let mut cpu_start = thread_cpu();
    let mut cpu_end = None;
    let mut issued = 0u64;
    let mut writes_since_flush = 0u32;
    let (mut submitted, mut completed, mut polls, mut empty, mut syscalls) =
        (0u64, 0u64, 0u64, 0u64, 0u64);
    loop {
        let ph = phase(ctl);
        if !measuring && ph >= MEASURE {
            measuring = true;
            res = QueueResult::new(ctx);
            (submitted, completed, polls, empty, syscalls, issued) = (0, 0, 0, 0, 0, 0);
            t_start = Instant::now();
            due = t_start;
            cpu_start = thread_cpu();
        }
        if ph == STOP && !stopped {
            stopped = true;
            mark_end(&mut t_end, &mut cpu_end);
        }
        let out_of_budget = measuring && !budget_left(budget, issued);
        if !stopped && !failed && !out_of_budget && !idle.is_empty() {
            let t0 = Instant::now();
            let mut pending = 0;
            while let Some(&slot) = idle.last() {
                if measuring && !budget_left(budget, issued) {
                    break;
                }
                if job.fsync.is_some_and(|n| writes_since_flush >= n) {
                    match u.push_fsync(slot) {
                        Ok(()) => {}
                        Err(nvme_dio_uring::UringError::QueueFull) => break,
                        Err(e) => return Err(uerr(path)(e)),
                    }
                    idle.pop();
                    starts[slot] = t0;
                    // Zero blocks marks the fsync.
                    ops[slot] = (0, 0, true);
                    writes_since_flush = 0;
                    submitted += 1;
                    pending += 1;
                    if pending == batch {
                        u.submit(0).map_err(uerr(path))?;
                        syscalls += 1;
                        pending = 0;
                    }
                    continue;
                }
                if let Some(iv) = interval {
                    if t0 < due {
                        break;
                    }
                    due += iv;
                }
                let (lba, blocks, write) = ops_gen.next_op();
                let len = blocks as usize * lba_size;
                if write && job.verify {
                    pattern::fill(&mut stream[..len], lba, lba_size, job.seed);
                    let one = [(0, len)];
                    scatter(
                        u.slot_mut(slot).map_err(uerr(path))?,
                        if packed.len() > 1 { packed } else { &one },
                        &stream[..len],
                    );
                }
                let dir = if write { Dir::Write } else { Dir::Read };
                let flags = if write && job.fua {
                    nvme_dio_uring::RWF_DSYNC
                } else {
                    0
                };
                match u.push_with(slot, dir, lba * lba_size as u64, len, flags) {
                    Ok(()) => {}
                    // SQPOLL: the kernel thread has not taken the entries yet; try later.
                    Err(nvme_dio_uring::UringError::QueueFull) => break,
                    Err(e) => return Err(uerr(path)(e)),
                }
                idle.pop();
                starts[slot] = t0;
                ops[slot] = (lba, blocks, write);
                if write {
                    writes_since_flush += 1;
                }
                submitted += 1;
                if measuring {
                    issued += 1;
                }
                pending += 1;
                if pending == batch {
                    u.submit(0).map_err(uerr(path))?;
                    syscalls += 1;
                    pending = 0;
                }
            }
            if pending > 0 {
                u.submit(0).map_err(uerr(path))?;
                syscalls += 1;
            }
        }
        if u.in_flight() == 0 {
            if stopped || failed || (measuring && !budget_left(budget, issued)) {
                break;
            }
            continue;
        }
        if !spin_reap {
            u.submit(1).map_err(uerr(path))?;
            syscalls += 1;
        }
        polls += 1;
        u.reap(|_, slot, r| reaped.push((slot, r)));
        if reaped.is_empty() {
            empty += 1;
            continue;
        }
        let now = Instant::now();
        for (slot, r) in reaped.drain(..) {
            idle.push(slot);
            completed += 1;
            if !measuring || stopped {
                continue;
            }
            let (lba, blocks, write) = ops[slot];
            if blocks == 0 {
                if r < 0 {
                    res.errors += 1;
                    res.first_error.get_or_insert_with(|| {
                        format!("fsync failed: {}", std::io::Error::from_raw_os_error(-r))
                    });
                    failed = true;
                } else {
                    res.flushes += 1;
                    crate::stats::record(
                        &mut res.flush_hist,
                        now.duration_since(starts[slot]).as_nanos() as u64,
                    );
                }
                continue;
            }
            let len = blocks as usize * lba_size;
            if r != len as i32 {
                res.errors += 1;
                res.first_error
                    .get_or_insert_with(|| describe(r, len, lba, job.lba_size));
                failed = true;
                continue;
            }
            // Latency of successful I/Os only: a failure's time says nothing about the device.
            res.record(
                write,
                now.duration_since(starts[slot]).as_nanos() as u64,
                len as u64,
            );
            if job.verify && !write {
                let one = [(0, len)];
                gather(
                    u.slot(slot).map_err(uerr(path))?,
                    if packed.len() > 1 { packed } else { &one },
                    &mut stream[..len],
                );
                let bad =
                    pattern::check(&stream[..len], lba, lba_size, job.seed, &mut expect[..len]);
                res.checked_blocks += blocks;
                if let Some(m) = bad.first() {
                    res.first_mismatch.get_or_insert_with(|| m.to_string());
                }
                res.mismatches += bad.len() as u64;
            }
        }
        if measuring && !stopped && !budget_left(budget, issued) && u.in_flight() == 0 {
            mark_end(&mut t_end, &mut cpu_end);
        }
        publish(ctl, q, res.ios, res.bytes);
    }
    let elapsed = t_end.unwrap_or_else(Instant::now).duration_since(t_start);
    let cpu_used = cpu_end
        .or_else(thread_cpu)
        .zip(cpu_start)
        .map(|(b, a)| b.saturating_sub(a));
    res.counters.push(QueueCounters {
        queue: q,
        device: label.to_string(),
        nsid: 1,
        worker: q,
        cpu,
        submitted,
        completed,
        errors: res.errors,
        polls,
        empty_polls: empty,
        syscalls: Some(syscalls),
        split_requests: Some(0),
        ..Default::default()
    });
    if u.unknown_completions > 0 {
        res.first_error.get_or_insert_with(|| {
            format!(
                "{} completions named no I/O in flight",
                u.unknown_completions
            )
        });
    }
    Ok(WorkerResult {
        elapsed,
        cpu: cpu_used,
        ctxs: vec![res],
    })
}
