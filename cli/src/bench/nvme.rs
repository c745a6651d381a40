//! The userspace engine: the nvme-dio driver on a VFIO-bound controller or on the embedded
//! emulated controller.
//!
//! Each worker owns one I/O queue pair and `qd` request slots, each with its buffers
//! allocated once (no allocation per I/O: the buffers travel into the driver with the
//! request and come back with its completion). Poll mode spins on `poll()`; irq mode sleeps
//! in `wait()` on the queue's MSI-X eventfd.
//!
//! With the emulated controller the emulator runs inline: its work happens inside the
//! doorbell write. The figures are then the CPU cost of driver plus emulator per I/O, not a
//! device's; the report says so.

use std::sync::Arc;
use std::time::{Duration, Instant};

use nvme_dio::{
    Bufs, CompletionMode, Controller, ControllerOptions, Device, DmaBuf, Error, Io, IoQueuePair,
    Lba, MemoryOptions, Namespace, PciFunction, QueuePairOptions, QueueStats, Rejected,
};
use nvme_dio_emu::{EmuConfig, EmuFunction, Fault, NsConfig};

use super::pattern::{self, OpGen};
use super::{
    Control, Job, MEASURE, QueueResult, Report, STOP, budget_left, make_job, mark_end, phase, pin,
    publish, thread_cpu,
};
use crate::args::{BenchArgs, DeviceSpec, Mode};
use crate::error::CliError;
use crate::stats;

/// Size of the emulated null namespace: 1 TiB (nothing is stored).
pub const EMU_NULL_BYTES: u64 = 1 << 40;
/// Default size of the emulated RAM namespace: 64 MiB.
pub const EMU_RAM_BYTES: u64 = 64 << 20;

/// The emulated controller's configuration for `emu` / `emu:ram`.
pub fn emu_config(
    ram: bool,
    lba_size: u32,
    size: Option<u64>,
    thread: bool,
    sgl: bool,
) -> EmuConfig {
    let bytes = size.unwrap_or(if ram { EMU_RAM_BYTES } else { EMU_NULL_BYTES });
    let blocks = (bytes / lba_size as u64).max(1);
    EmuConfig {
        namespaces: vec![if ram {
            NsConfig::ram(blocks, lba_size)
        } else {
            NsConfig::null(blocks, lba_size)
        }],
        mode: if thread {
            nvme_dio_emu::Mode::Thread
        } else {
            nvme_dio_emu::Mode::Inline
        },
        sgl,
        // The freed-write checker is a test oracle (a range lookup per DMA write): the bench
        // measures the driver, and the tests keep it on.
        check_freed_writes: false,
        ..EmuConfig::default()
    }
}

/// Controller options for the tools: ordinary pages when no hugepages are reserved.
pub fn controller_options(queues: u16, interrupts: bool, sgl: bool) -> ControllerOptions {
    ControllerOptions::default()
        .io_queues(queues.max(1))
        .interrupts(interrupts)
        .use_sgl(sgl)
        .memory(MemoryOptions::any_pages(32 << 20))
}

/// Opens the device and brings its controller up: one device type for every backend
/// ([`nvme_dio::Device`]); returns the controller and a description of the device.
///
/// # Errors
///
/// [`CliError::BadArgument`] for a path, device and bring-up errors.
pub fn open_controller(
    device: &DeviceSpec,
    emu: EmuConfig,
    opts: ControllerOptions,
) -> Result<(Controller<Device>, String), CliError> {
    match device {
        DeviceSpec::Emu(e) => {
            let ns = &emu.namespaces[0];
            let desc = format!(
                "EMULATED controller, in-process, {}; {} namespace 1: {} blocks of {} bytes",
                if emu.mode == nvme_dio_emu::Mode::Thread {
                    "on its own thread polling the doorbells"
                } else {
                    "inline: its work runs inside the doorbell write"
                },
                if e.ram { "RAM" } else { "null" },
                ns.blocks,
                ns.lba_size
            );
            let dev = EmuFunction::new(emu).map_err(|source| CliError::Emu { source })?;
            let ctrl = Controller::new(Arc::new(Device::Emu(dev)), opts)
                .map_err(|e| CliError::driver(device, e))?;
            Ok((ctrl, desc))
        }
        DeviceSpec::Pci(bdf) => {
            check_pci(&crate::sysfs::Sysfs::host(), bdf)?;
            let dev = nvme_dio_dma::VfioFunction::open(bdf).map_err(|source| CliError::Vfio {
                device: bdf.clone(),
                source,
            })?;
            let ctrl = Controller::new(Arc::new(Device::Vfio(dev)), opts)
                .map_err(|e| CliError::driver(device, e))?;
            let i = ctrl.info();
            let desc = format!(
                "{} (serial {}, firmware {}) via vfio-pci",
                i.model.trim(),
                i.serial.trim(),
                i.firmware.trim()
            );
            Ok((ctrl, desc))
        }
        DeviceSpec::Path(p) => Err(CliError::BadArgument(format!(
            "{} is a path: the userspace driver needs `emu`, `emu:ram` or a PCI address (see `nvme-dio list`)",
            p.display()
        ))),
    }
}

/// Checks, from sysfs, that `bdf` is an NVMe controller bound to vfio-pci, so the message
/// names what is wrong (opening a host bridge through VFIO blamed the IOMMU).
///
/// # Errors
///
/// [`CliError::BadArgument`] naming the address, what it is, and what to do.
pub fn check_pci(s: &crate::sysfs::Sysfs, bdf: &str) -> Result<(), CliError> {
    let bad = |m: String| Err(CliError::BadArgument(m));
    let dir = s.dev(bdf);
    if !dir.exists() {
        return bad(format!(
            "no PCI device {bdf} ({} does not exist): `nvme-dio list` shows the NVMe controllers",
            dir.display()
        ));
    }
    match s.class(bdf) {
        Some(crate::sysfs::NVME_CLASS) => {}
        Some(c) => {
            return bad(format!(
                "{bdf} is not an NVMe controller (PCI class {c:#08x}; NVMe is {:#08x}): `nvme-dio list` shows the NVMe controllers",
                crate::sysfs::NVME_CLASS
            ));
        }
        None => {}
    }
    match s.driver(bdf).as_deref() {
        Some("vfio-pci") => Ok(()),
        Some(d) => bad(format!(
            "{bdf} is bound to the {d} driver, not vfio-pci: run `nvme-dio setup {bdf}` first{}",
            if d == "nvme" {
                " (or bench its block device through the kernel, e.g. --device /dev/nvme0n1)"
            } else {
                ""
            }
        )),
        None => bad(format!(
            "{bdf} is bound to no driver: run `nvme-dio setup {bdf}` to bind it to vfio-pci"
        )),
    }
}

/// Runs the benchmark through the nvme-dio driver.
///
/// # Errors
///
/// Device, geometry and setup errors; I/O failures and mismatches come back in the report.
pub fn run(args: &BenchArgs) -> Result<Report, CliError> {
    let emu = match &args.device {
        DeviceSpec::Emu(e) => EmuConfig {
            dbbuf: args.shadow_doorbells,
            ..emu_config(
                e.ram,
                args.emu_lba_size(),
                args.size,
                args.emu_thread || e.thread,
                args.emu_sgl,
            )
        },
        _ => EmuConfig::default(),
    };
    let opts = controller_options(args.queues, args.mode == Mode::Irq, !args.no_sgl)
        .shadow_doorbells(args.shadow_doorbells);
    let (ctrl, description) = open_controller(&args.device, emu, opts)?;
    bench_on(args, ctrl, description)
}

/// The benchmark on a controller that is up.
fn bench_on(
    args: &BenchArgs,
    ctrl: Controller<Device>,
    mut description: String,
) -> Result<Report, CliError> {
    let emu = ctrl.device().as_emu();
    {
        let dev = args.device.to_string();
        let ns = ctrl
            .namespace(args.nsid)
            .map_err(|e| CliError::driver(&dev, e))?
            .clone();
        let sub_block = if ns.supports_sgl() {
            Ok(())
        } else if args.no_sgl {
            Err("--no-sgl forces PRPs, which the planner splits only at block boundaries")
        } else {
            Err(
                "this controller does not support SGLs (without them each segment must be whole blocks)",
            )
        };
        let job = make_job(args, ns.lba_size(), ns.bytes(), sub_block)?;
        let info = ctrl.info();
        if args.queues > info.io_queues {
            return Err(CliError::BadArgument(format!(
                "--queues {}: the controller granted {} I/O queue pairs: use --queues {} or fewer",
                args.queues, info.io_queues, info.io_queues
            )));
        }
        let mqes = info.cap.mqes().entries();
        if job.qd + 1 > mqes {
            return Err(CliError::BadArgument(format!(
                "-q {} needs {} entries per queue (one stays free), but the controller allows {}: use -q {} or less",
                job.qd,
                job.qd + 1,
                mqes,
                mqes - 1
            )));
        }
        let mut notes = Vec::new();
        if let Some(n) = job.queue_entries
            && n < needed_entries(&job)
        {
            return Err(CliError::BadArgument(format!(
                "--queue-entries {n} holds fewer than the {} that -q {} with {} segment(s) per I/O needs (one entry stays free): use --queue-entries {} or more, or a lower -q",
                needed_entries(&job),
                job.qd,
                job.shapes.len(),
                needed_entries(&job)
            )));
        }
        if let Some(n) = job.queue_entries
            && n > mqes
        {
            return Err(CliError::BadArgument(format!(
                "--queue-entries {n}: the controller allows {mqes} entries per queue (CAP.MQES + 1): use --queue-entries {mqes} or less"
            )));
        }
        if needed_entries(&job) > mqes {
            notes.push(format!(
                "queues have {mqes} entries (the controller's limit), fewer than -q {} x {} segments + 1: an I/O that splits into one command per segment may wait for room",
                job.qd,
                job.shapes.len()
            ));
        }
        if ctrl.memory().is_fallback() {
            notes.push(
                "DMA buffers are on ordinary pages (no free 2 MiB hugepages): reserve some with `nvme-dio setup BDF --hugepages N` for real devices".into(),
            );
        }
        if emu.is_some() {
            notes.push(if args.emu_thread {
                "emulated controller on its own thread: figures include the hand-off between two threads, not a device's".into()
            } else {
                "emulated controller: the emulator works inside the doorbell write, so these are driver + emulator CPU figures, not a device's".into()
            });
        }
        if emu.is_some() && !args.emu_thread && args.mode == Mode::Irq {
            notes.push("--mode irq on the inline emulator: each completion is posted inside the doorbell write, so the worker finds it before it would sleep and never waits on the interrupt; add --emu-thread for a worker that really sleeps".into());
        }
        if job.shapes.len() > 1 {
            notes.push(if ns.supports_sgl() {
                "segments: the controller supports SGLs, so an iovec set that breaks the PRP rule may go out as one SGL command (use --no-sgl to force PRP splits)".into()
            } else {
                format!("segments: each I/O is {} segments whose boundaries break the PRP rule, so the planner splits it", job.shapes.len())
            });
        }
        if let (true, Some(emu)) = (args.inject_write_protect, &emu) {
            emu.inject(Fault::Command {
                target: nvme_dio_emu::Target::Opcode {
                    admin: false,
                    opcode: nvme_dio_queue::opcode::nvm::WRITE,
                    count: u32::MAX,
                },
                action: nvme_dio_emu::Action::Status(
                    nvme_dio_queue::Status::new(0, 0x20).with_dnr(),
                ),
            })
            .map_err(|source| CliError::Emu { source })?;
        }
        first_ios(&ctrl, &ns, &job, &dev)?;
        if job.verify && job.read_pct > 0 {
            prefill(&ctrl, &ns, &job, &dev)?;
        }
        if let Some(lba) = args.inject_flip_bit {
            let emu = emu
                .as_ref()
                .expect("checked: --inject-flip-bit needs emu:ram");
            emu.inject(Fault::FlipBit {
                nsid: args.nsid,
                lba,
                bit: 0,
            })
            .map_err(|source| CliError::Emu { source })?;
            notes.push(format!("testing aid: bit 0 of LBA {lba} was flipped in the emulator's storage after the working set was written"));
        }
        if let (Some(n), Some(emu)) = (args.inject_io_error, &emu) {
            emu.inject(Fault::Command {
                target: nvme_dio_emu::Target::NthIo(n),
                action: nvme_dio_emu::Action::Status(
                    nvme_dio_queue::Status::new(0, 0x06).with_dnr(),
                ),
            })
            .map_err(|source| CliError::Emu { source })?;
            notes.push(format!(
                "testing aid: I/O command {n} of the run was made to fail"
            ));
        }
        let timeout = Duration::from_millis(args.timeout_ms);
        let results = super::run_workers(args, &job, |q, ctl| {
            worker(&ctrl, &ns, &job, timeout, &dev, q, ctl)
        })?;
        for r in &results {
            if job.pin && r.counters.cpu.is_none() {
                notes.push(format!(
                    "queue {} was not pinned to a CPU",
                    r.counters.queue
                ));
            }
        }
        description.push_str(&format!(
            "; {} I/O queue pair(s) asked for and granted, {} entries each (--queue-entries), max transfer {} bytes",
            ctrl.info().io_queues,
            entries(&job).min(ctrl.info().cap.mqes().entries()),
            ns.max_transfer()
        ));
        Ok(super::report(args, &job, description, results, notes))
    }
}

/// One request slot: its buffers while idle, and what it carries while in flight.
struct Slot {
    bufs: Bufs,
    start: Instant,
    lba: u64,
    write: bool,
}

fn alloc_slot_bufs<D: PciFunction>(
    ctrl: &Controller<D>,
    shapes: &[(usize, usize)],
) -> Result<Bufs, CliError> {
    let mem = |source| CliError::Memory {
        what: "I/O buffers".into(),
        source,
    };
    if let [(0, len)] = shapes {
        return Ok(Bufs::One(ctrl.memory().alloc(*len, 4096).map_err(mem)?));
    }
    let mut v = Vec::with_capacity(shapes.len());
    for &(off, len) in shapes {
        let mut b = ctrl
            .memory()
            .alloc((off + len).div_ceil(4096) * 4096, 4096)
            .map_err(mem)?;
        b.set_view(off, len).map_err(mem)?;
        v.push(b);
    }
    Ok(Bufs::Many(v))
}

/// Copies a contiguous stream into the request's buffers, in order.
fn scatter(bufs: &Bufs, stream: &[u8]) {
    let mut pos = 0;
    let mut put = |b: &DmaBuf| {
        b.copy_from_slice(0, &stream[pos..pos + b.len()])
            .expect("the stream is as long as the buffers");
        pos += b.len();
    };
    match bufs {
        Bufs::One(b) => put(b),
        Bufs::Many(v) => v.iter().for_each(put),
        Bufs::None => {}
    }
}

/// Copies the request's buffers into a contiguous stream.
fn gather(bufs: &Bufs, stream: &mut [u8]) {
    let mut pos = 0;
    let mut get = |b: &DmaBuf| {
        b.copy_to_slice(0, &mut stream[pos..pos + b.len()])
            .expect("the stream is as long as the buffers");
        pos += b.len();
    };
    match bufs {
        Bufs::One(b) => get(b),
        Bufs::Many(v) => v.iter().for_each(get),
        Bufs::None => {}
    }
}

fn submit<D: PciFunction>(
    qp: &mut nvme_dio::IoQueuePair<D>,
    ns: &Namespace,
    lba: u64,
    write: bool,
    bufs: Bufs,
    tag: u64,
) -> Result<(), Rejected> {
    let lba = Lba(lba);
    let io = if write {
        Io::Write {
            ns,
            lba,
            bufs,
            fua: false,
        }
    } else {
        Io::Read {
            ns,
            lba,
            bufs,
            fua: false,
        }
    };
    qp.submit(io, tag)
}

/// Entries per queue the I/O needs at least: a split I/O takes one slot per command, so
/// room for every segment of every request, plus the slot that stays empty.
fn needed_entries(job: &Job) -> u32 {
    (job.qd * job.shapes.len() as u32 + 1).clamp(2, 65_536)
}

/// Entries per queue: `--queue-entries`, else the controller's maximum up to 1 024 (as SPDK
/// perf does: deep rings cost nothing and spare the CQ-full case), and never fewer than the
/// I/O needs.
fn entries(job: &Job) -> u32 {
    job.queue_entries
        .unwrap_or(1024)
        .max(needed_entries(job))
        .clamp(2, 65_536)
}

/// A poll-mode queue pair for the work before the run (the first I/Os, the prefill).
fn setup_qpair<D: PciFunction>(
    ctrl: &Controller<D>,
    job: &Job,
    dev: &str,
) -> Result<IoQueuePair<D>, CliError> {
    ctrl.create_io_qpair(
        QueuePairOptions::default()
            .entries(entries(job))
            .mode(CompletionMode::Poll)
            .timeout(Duration::from_secs(30)),
    )
    .map_err(|e| CliError::driver(dev, e))
}

/// Does one I/O of each direction the run uses at LBA 0 before the run starts, so a
/// namespace that refuses it (write protected, or an I/O the controller cannot take)
/// fails at once with the controller's status, instead of after a run of failures.
fn first_ios<D: PciFunction>(
    ctrl: &Controller<D>,
    ns: &Namespace,
    job: &Job,
    dev: &str,
) -> Result<(), CliError> {
    let mut qp = setup_qpair(ctrl, job, dev)?;
    let mut bufs = alloc_slot_bufs(ctrl, &job.shapes)?;
    let mut dirs = Vec::new();
    if job.read_pct > 0 {
        dirs.push((false, "read"));
    }
    if job.read_pct < 100 || job.verify {
        // Written with the verify pattern of LBA 0, as the run (or its prefill) would.
        let mut stream = vec![0u8; job.io_size as usize];
        pattern::fill(&mut stream, 0, job.lba_size as usize, job.seed);
        scatter(&bufs, &stream);
        dirs.push((true, "write"));
    }
    for (write, name) in dirs {
        let what = format!("a {name} of {} bytes", job.io_size);
        submit(&mut qp, ns, 0, write, bufs, 0).map_err(|r| CliError::FirstIo {
            device: dev.to_string(),
            what: what.clone(),
            detail: r.error.report(),
        })?;
        let c = loop {
            qp.wait(Duration::from_secs(30))
                .map_err(|e| CliError::driver(dev, e))?;
            if let Some(c) = qp.next_completion() {
                break c;
            }
            if super::interrupted() {
                return Err(super::interrupted_during("trying the first I/O"));
            }
        };
        bufs = c.bufs;
        if let Err(e) = c.result {
            return Err(CliError::FirstIo {
                device: dev.to_string(),
                what,
                detail: e.report(),
            });
        }
    }
    Ok(())
}

/// Writes the working set once with the verify pattern (QD deep, io-size chunks).
fn prefill<D: PciFunction>(
    ctrl: &Controller<D>,
    ns: &Namespace,
    job: &Job,
    dev: &str,
) -> Result<(), CliError> {
    let mut qp = setup_qpair(ctrl, job, dev)?;
    let units = job.region_blocks / job.io_blocks();
    let mut slots = Vec::new();
    for _ in 0..job.qd.min(units.min(u32::MAX as u64) as u32).max(1) {
        slots.push((alloc_slot_bufs(ctrl, &job.shapes)?, 0u64));
    }
    let mut idle: Vec<usize> = (0..slots.len()).collect();
    let mut stream = vec![0u8; job.io_size as usize];
    let (mut next, mut done) = (0u64, 0u64);
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
            && let Some(&i) = idle.last()
        {
            let lba = next * job.io_blocks();
            pattern::fill(&mut stream, lba, job.lba_size as usize, job.seed);
            scatter(&slots[i].0, &stream);
            let bufs = std::mem::take(&mut slots[i].0);
            match submit(&mut qp, ns, lba, true, bufs, i as u64) {
                Ok(()) => {
                    idle.pop();
                    slots[i].1 = lba;
                    next += 1;
                }
                Err(r) if matches!(*r.error, Error::QueueFull { .. }) => {
                    slots[i].0 = r.bufs;
                    break;
                }
                Err(r) => return Err(CliError::driver(dev, *r.error)),
            }
        }
        qp.wait(Duration::from_secs(30))
            .map_err(|e| CliError::driver(dev, e))?;
        while let Some(c) = qp.next_completion() {
            let i = c.tag as usize;
            slots[i].0 = c.bufs;
            if let Err(e) = c.result {
                return Err(CliError::IoFailed {
                    count: 1,
                    first: format!(
                        "writing the working set before verify, at LBA {}: {}",
                        slots[i].1,
                        e.report()
                    ),
                });
            }
            idle.push(i);
            done += 1;
        }
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    Ok(())
}

fn diff(a: &QueueStats, b: &QueueStats, r: &mut QueueResult) {
    let c = &mut r.counters;
    c.submitted = b.submitted - a.submitted;
    c.completed = b.completed - a.completed;
    c.errors = b.errors - a.errors;
    c.split_requests = Some(b.split_requests - a.split_requests);
    c.commands = Some(b.commands - a.commands);
    c.sq_doorbells = Some(b.sq_doorbells - a.sq_doorbells);
    c.cq_doorbells = Some(b.cq_doorbells - a.cq_doorbells);
    // MMIO writes: with shadow doorbells some values went to the shadow page only.
    c.doorbell_writes = Some(
        c.sq_doorbells.unwrap_or(0) + c.cq_doorbells.unwrap_or(0)
            - (b.shadow_only_doorbells - a.shadow_only_doorbells),
    );
    c.polls = b.polls - a.polls;
    c.empty_polls = b.empty_polls - a.empty_polls;
    c.timeouts = Some(b.timeouts - a.timeouts);
    c.interrupts = Some(b.interrupts - a.interrupts);
}

fn worker<D: PciFunction>(
    ctrl: &Controller<D>,
    ns: &Namespace,
    job: &Job,
    timeout: Duration,
    dev: &str,
    q: usize,
    ctl: &Control,
) -> Result<QueueResult, CliError> {
    let (cpu, _note) = pin(job, q);
    let mode = match job.mode {
        Mode::Poll => CompletionMode::Poll,
        Mode::Irq => CompletionMode::Interrupt,
    };
    let setup = (|| {
        let qp = ctrl
            .create_io_qpair(
                QueuePairOptions::default()
                    .entries(entries(job))
                    .mode(mode)
                    .timeout(timeout),
            )
            .map_err(|e| CliError::driver(dev, e))?;
        let mut slots = Vec::with_capacity(job.qd as usize);
        for _ in 0..job.qd {
            slots.push(Slot {
                bufs: alloc_slot_bufs(ctrl, &job.shapes)?,
                start: Instant::now(),
                lba: 0,
                write: false,
            });
        }
        Ok::<_, CliError>((qp, slots))
    })();
    ctl.ready.wait();
    let (mut qp, mut slots) = setup?;

    let io = job.io_size as usize;
    let lba_size = job.lba_size as usize;
    let budget = job.ios_per_queue[q];
    let batch = job.batch;
    let nslots = slots.len();
    let mut ops_gen = OpGen::new(
        job.seed,
        q,
        job.queues,
        job.random,
        job.read_pct,
        job.io_blocks(),
        job.region_blocks,
    );
    let mut res = QueueResult::new(q, cpu);
    let mut idle: Vec<u32> = (0..nslots as u32).rev().collect();
    let (mut stream, mut expect) = if job.verify {
        (vec![0u8; io], vec![0u8; io])
    } else {
        (Vec::new(), Vec::new())
    };
    let wait_slice = Duration::from_millis(100);

    let mut measuring = phase(ctl) >= MEASURE;
    let mut stopped = false;
    let mut failed = false;
    let mut t_start = Instant::now();
    let mut t_end = None;
    let mut cpu_start = thread_cpu();
    let mut cpu_end = None;
    let mut s0 = qp.stats().clone();
    let mut issued = 0u64;
    loop {
        let ph = phase(ctl);
        if !measuring && ph >= MEASURE {
            measuring = true;
            res = QueueResult::new(q, cpu);
            s0 = qp.stats().clone();
            issued = 0;
            t_start = Instant::now();
            cpu_start = thread_cpu();
        }
        if ph == STOP && !stopped {
            stopped = true;
            mark_end(&mut t_end, &mut cpu_end);
        }
        if !stopped && !failed && !idle.is_empty() && (!measuring || budget_left(budget, issued)) {
            // One clock read before the batch: every I/O in it starts no later than this.
            let t0 = Instant::now();
            let mut in_batch = 0;
            while let Some(&i) = idle.last() {
                if measuring && !budget_left(budget, issued) {
                    break;
                }
                let (lba, write) = ops_gen.next_op();
                let s = &mut slots[i as usize];
                if write && job.verify {
                    pattern::fill(&mut stream, lba, lba_size, job.seed);
                    scatter(&s.bufs, &stream);
                }
                let bufs = std::mem::take(&mut s.bufs);
                match submit(&mut qp, ns, lba, write, bufs, i as u64) {
                    Ok(()) => {
                        idle.pop();
                        s.start = t0;
                        s.lba = lba;
                        s.write = write;
                        if measuring {
                            issued += 1;
                        }
                        in_batch += 1;
                        if in_batch == batch {
                            qp.ring();
                            in_batch = 0;
                        }
                    }
                    Err(r) if matches!(*r.error, Error::QueueFull { .. }) => {
                        s.bufs = r.bufs;
                        break;
                    }
                    Err(r) => return Err(CliError::driver(dev, *r.error)),
                }
            }
            if in_batch > 0 {
                qp.ring();
            }
        }
        if idle.len() == nslots {
            if stopped || failed || (measuring && !budget_left(budget, issued)) {
                break;
            }
            continue;
        }
        let n = match job.mode {
            Mode::Poll => qp.poll(),
            Mode::Irq => qp.wait(wait_slice).map_err(|e| CliError::driver(dev, e))?,
        };
        if n == 0 {
            continue;
        }
        let now = Instant::now();
        while let Some(c) = qp.next_completion() {
            let i = c.tag as usize;
            let s = &mut slots[i];
            s.bufs = c.bufs;
            idle.push(i as u32);
            if !measuring || stopped {
                continue;
            }
            if let Err(e) = c.result {
                res.errors += 1;
                res.first_error.get_or_insert_with(|| {
                    format!(
                        "{} at LBA {}: {}",
                        if s.write { "write" } else { "read" },
                        s.lba,
                        e.report()
                    )
                });
                failed = true;
                continue;
            }
            // Latency of successful I/Os only: a failure's time says nothing about the device.
            stats::record(&mut res.hist, now.duration_since(s.start).as_nanos() as u64);
            res.ios += 1;
            res.bytes += io as u64;
            if job.verify && !s.write {
                gather(&s.bufs, &mut stream);
                let bad = pattern::check(&stream, s.lba, lba_size, job.seed, &mut expect);
                res.checked_blocks += job.io_blocks();
                if let Some(m) = bad.first() {
                    res.first_mismatch.get_or_insert_with(|| m.to_string());
                }
                res.mismatches += bad.len() as u64;
            }
        }
        if measuring && !stopped && !budget_left(budget, issued) && idle.len() == nslots {
            mark_end(&mut t_end, &mut cpu_end);
        }
        publish(ctl, q, res.ios);
    }
    res.elapsed = t_end.unwrap_or_else(Instant::now).duration_since(t_start);
    res.cpu = cpu_end
        .or_else(thread_cpu)
        .zip(cpu_start)
        .map(|(b, a)| b.saturating_sub(a));
    let s1 = qp.stats().clone();
    diff(&s0, &s1, &mut res);
    if s1.stale_cqes > s0.stale_cqes {
        res.first_error.get_or_insert_with(|| {
            format!(
                "{} stale completions were ignored",
                s1.stale_cqes - s0.stale_cqes
            )
        });
    }
    Ok(res)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sysfs::NVME_CLASS;
    use crate::sysfs::fake::Tree;

    #[test]
    fn a_pci_address_is_checked_for_existence_class_and_driver_first() {
        let t = Tree::new("check-pci");
        t.device("0000:00:00.0", 0x060000, None, None);
        t.device("0000:01:00.0", NVME_CLASS, Some("nvme"), Some(3));
        t.device("0000:02:00.0", NVME_CLASS, Some("vfio-pci"), Some(4));
        t.device("0000:03:00.0", NVME_CLASS, None, Some(5));
        let s = t.sysfs();
        let msg = |bdf| check_pci(&s, bdf).unwrap_err().to_string();
        assert!(msg("0000:09:00.0").contains("no PCI device 0000:09:00.0"));
        let m = msg("0000:00:00.0");
        assert!(
            m.contains("not an NVMe controller (PCI class 0x060000") && !m.contains("IOMMU"),
            "{m}"
        );
        let m = msg("0000:01:00.0");
        assert!(
            m.contains("bound to the nvme driver, not vfio-pci")
                && m.contains("nvme-dio setup 0000:01:00.0"),
            "{m}"
        );
        assert!(msg("0000:03:00.0").contains("bound to no driver"));
        check_pci(&s, "0000:02:00.0").unwrap();
    }
}
