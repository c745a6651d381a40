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
    Control, Job, MEASURE, QueueCounters, QueueResult, Report, STOP, WorkerResult, budget_left,
    make_job, mark_end, phase, pin, publish, thread_cpu,
};
use crate::args::{BenchArgs, DeviceSpec, Mode, WriteKind};
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

/// Labels for the devices of a run: as given, with `#k` (1-based position) added where the
/// same string names several (several emulated controllers).
pub fn device_labels(devices: &[DeviceSpec]) -> Vec<String> {
    let names: Vec<String> = devices.iter().map(ToString::to_string).collect();
    names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            if names.iter().filter(|m| *m == n).count() > 1 {
                format!("{n}#{}", i + 1)
            } else {
                n.clone()
            }
        })
        .collect()
}

/// One device x namespace, resolved.
struct Target {
    dev: usize,
    label: String,
    ns: Namespace,
    job: Job,
}

/// Runs the benchmark through the nvme-dio driver.
///
/// # Errors
///
/// Device, geometry and setup errors; I/O failures and mismatches come back in the report.
pub fn run(args: &BenchArgs) -> Result<Report, CliError> {
    let ntargets = args.devices.len() * args.nsids.len();
    let layout = super::Layout::new(args, ntargets)?;
    let labels = device_labels(&args.devices);
    let mut ctrls = Vec::with_capacity(args.devices.len());
    let mut descriptions = Vec::new();
    for (d, device) in args.devices.iter().enumerate() {
        // The emulated namespace holds the working set after --offset.
        let ns_size = args.size.map(|sz| match args.offset {
            None => sz,
            Some(crate::args::Offset::Bytes(o)) => sz + o,
            Some(crate::args::Offset::Percent(p)) => {
                (sz * 100).div_ceil(100 - p as u64).div_ceil(4096) * 4096
            }
        });
        let emu = match device {
            DeviceSpec::Emu(e) => EmuConfig {
                dbbuf: args.shadow_doorbells,
                ..emu_config(
                    e.ram,
                    args.emu_lba_size(),
                    ns_size,
                    args.emu_thread || e.thread,
                    args.emu_sgl,
                )
            },
            _ => EmuConfig::default(),
        };
        // Every target of this device is `d * nsids + n`.
        let lanes: usize = (0..args.nsids.len())
            .map(|n| layout.lanes_on(d * args.nsids.len() + n))
            .sum();
        let want = u16::try_from(lanes).unwrap_or(u16::MAX);
        let opts = controller_options(want, args.mode.uses_interrupts(), !args.no_sgl)
            .shadow_doorbells(args.shadow_doorbells);
        let (ctrl, description) = open_controller(device, emu, opts)?;
        descriptions.push(if args.devices.len() > 1 {
            format!("{}: {description}", labels[d])
        } else {
            description
        });
        ctrls.push(ctrl);
    }
    bench_on(args, &layout, &labels, ctrls, descriptions)
}

/// The benchmark on controllers that are up.
fn bench_on(
    args: &BenchArgs,
    layout: &super::Layout,
    labels: &[String],
    ctrls: Vec<Controller<Device>>,
    mut descriptions: Vec<String>,
) -> Result<Report, CliError> {
    let mut notes = Vec::new();
    let mut targets = Vec::new();
    let mut fallback = Vec::new();
    for (d, ctrl) in ctrls.iter().enumerate() {
        let dev = &labels[d];
        let info = ctrl.info();
        let lanes: usize = (0..args.nsids.len())
            .map(|n| layout.lanes_on(d * args.nsids.len() + n))
            .sum();
        if lanes > info.io_queues as usize {
            return Err(CliError::BadArgument(
                if args.devices.len() == 1 && args.nsids.len() == 1 && args.num_qpairs == 1 {
                    format!(
                        "--queues {}: the controller granted {} I/O queue pairs: use --queues {} or fewer",
                        lanes, info.io_queues, info.io_queues
                    )
                } else {
                    format!(
                        "{dev}: this run needs {lanes} I/O queue pairs on it (workers x namespaces x -P {}), but the controller granted {}: use fewer workers (--queues, -c, --cpus), namespaces or -P",
                        args.num_qpairs, info.io_queues
                    )
                },
            ));
        }
        for &nsid in &args.nsids {
            let ns = ctrl
                .namespace(nsid)
                .map_err(|e| CliError::driver(dev, e))?
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
            if let Some(f) = ns.metadata_format().filter(|f| !f.pract_strips()) {
                return Err(CliError::BadArgument(format!(
                    "{dev}: namespace {nsid} is formatted with {f} of metadata per block: the \
                     bench runs on formats without metadata, or with PI whose metadata is only \
                     the PI tuple (it then lets the controller insert and strip the PI: PRACT)"
                )));
            }
            let job = make_job(args, ns.lba_size(), ns.bytes(), sub_block)?;
            check_entries(ctrl, &job, &mut notes)?;
            if job.shapes.len() > 1 && targets.is_empty() {
                notes.push(if ns.supports_sgl() {
                    "segments: the controller supports SGLs, so an iovec set that breaks the PRP rule may go out as one SGL command (use --no-sgl to force PRP splits)".into()
                } else {
                    format!("segments: each I/O is {} segments whose boundaries break the PRP rule, so the planner splits it", job.shapes.len())
                });
            }
            targets.push(Target {
                dev: d,
                label: dev.clone(),
                ns,
                job,
            });
        }
        if ctrl.memory().is_fallback() {
            fallback.push(dev.as_str());
        }
    }
    if !fallback.is_empty() {
        notes.push(format!(
            "DMA buffers{} are on ordinary pages (no free 2 MiB hugepages): reserve some with `nvme-dio setup BDF --hugepages N` for real devices",
            if labels.len() > 1 {
                format!(" of {}", fallback.join(", "))
            } else {
                String::new()
            }
        ));
    }
    let any_emu = ctrls.iter().any(|c| c.device().as_emu().is_some());
    if any_emu {
        notes.push(if args.emu_thread {
            "emulated controller on its own thread: figures include the hand-off between two threads, not a device's".into()
        } else {
            "emulated controller: the emulator works inside the doorbell write, so these are driver + emulator CPU figures, not a device's".into()
        });
    }
    if any_emu && !args.emu_thread && args.mode.uses_interrupts() {
        notes.push("--mode irq on the inline emulator: each completion is posted inside the doorbell write, so the worker finds it before it would sleep and never waits on the interrupt; add --emu-thread for a worker that really sleeps".into());
    }
    if args.mode.uses_interrupts()
        && layout.ctxs.iter().any(|c| {
            layout.ctxs.iter().filter(|d| d.worker == c.worker).count() * c.lanes.len() > 1
        })
    {
        notes.push("--mode irq with several queue pairs on one worker: it polls them all, then sleeps on one queue's interrupt for at most 1 ms at a time".into());
    }
    if args.inject_write_protect {
        for ctrl in &ctrls {
            if let Some(emu) = ctrl.device().as_emu() {
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
        }
    }
    for t in &targets {
        let ctrl = &ctrls[t.dev];
        first_ios(ctrl, &t.ns, &t.job, &t.label)?;
        if t.job.verify && t.job.read_pct > 0 {
            prefill(ctrl, &t.ns, &t.job, &t.label)?;
        }
    }
    if let Some(lba) = args.inject_flip_bit {
        let emu = ctrls[0]
            .device()
            .as_emu()
            .expect("checked: --inject-flip-bit needs emu:ram");
        emu.inject(Fault::FlipBit {
            nsid: args.nsids[0],
            lba,
            bit: 0,
        })
        .map_err(|source| CliError::Emu { source })?;
        notes.push(format!("testing aid: bit 0 of LBA {lba} was flipped in the emulator's storage after the working set was written"));
    }
    if let Some(n) = args.inject_io_error {
        for ctrl in &ctrls {
            if let Some(emu) = ctrl.device().as_emu() {
                emu.inject(Fault::Command {
                    target: nvme_dio_emu::Target::NthIo(n),
                    action: nvme_dio_emu::Action::Status(
                        nvme_dio_queue::Status::new(0, 0x06).with_dnr(),
                    ),
                })
                .map_err(|source| CliError::Emu { source })?;
            }
        }
        notes.push(format!(
            "testing aid: I/O command {n} of the run was made to fail"
        ));
    }
    let timeout = Duration::from_millis(args.timeout_ms);
    let results = super::run_workers(args, layout, |w, ctl| {
        worker(&ctrls, &targets, layout, timeout, w, ctl)
    })?;
    for (w, cpu) in layout.worker_cpus.iter().enumerate() {
        let pinned = results[w]
            .ctxs
            .first()
            .and_then(|c| c.counters.first())
            .and_then(|q| q.cpu);
        if cpu.is_some() && pinned.is_none() {
            notes.push(format!("worker {w} was not pinned to a CPU"));
        }
    }
    for (d, ctrl) in ctrls.iter().enumerate() {
        let t = targets
            .iter()
            .find(|t| t.dev == d)
            .expect("every device has a target");
        descriptions[d].push_str(&format!(
            "; {} I/O queue pair(s) asked for and granted, {} entries each (--queue-entries), max transfer {} bytes",
            ctrl.info().io_queues,
            entries(&t.job).min(ctrl.info().cap.mqes().entries()),
            t.ns.max_transfer()
        ));
    }
    let infos = targets
        .iter()
        .enumerate()
        .map(|(i, t)| super::TargetInfo {
            device: t.label.clone(),
            nsid: t.ns.id().0,
            lba_size_bytes: t.job.lba_size,
            working_set_bytes: t.job.region_blocks * t.job.lba_size as u64,
            queue_pairs: layout.lanes_on(i),
        })
        .collect();
    let mut r = super::report(
        args,
        layout,
        infos,
        &targets[0].job,
        descriptions.join("; "),
        results,
        notes,
    );
    let mut counts: Option<super::EmuCounts> = None;
    for ctrl in &ctrls {
        if let Some(emu) = ctrl.device().as_emu() {
            let st = emu.stats();
            let c = counts.get_or_insert_with(Default::default);
            c.reads += st.reads;
            c.writes += st.writes;
            c.flushes += st.flushes;
            c.write_zeroes += st.write_zeroes;
            c.dsm += st.dsm;
            c.fua_writes += st.fua_writes;
            c.io_errors += st.io_errors;
        }
    }
    r.emulator = counts;
    Ok(r)
}

/// Checks the queue sizes the job needs against the controller, before anything runs.
fn check_entries<D: PciFunction>(
    ctrl: &Controller<D>,
    job: &Job,
    notes: &mut Vec<String>,
) -> Result<(), CliError> {
    let mqes = ctrl.info().cap.mqes().entries();
    if job.qd + 1 > mqes {
        return Err(CliError::BadArgument(format!(
            "-q {} needs {} entries per queue (one stays free), but the controller allows {}: use -q {} or less",
            job.qd,
            job.qd + 1,
            mqes,
            mqes - 1
        )));
    }
    if let Some(n) = job.queue_entries
        && n < needed_entries(job)
    {
        return Err(CliError::BadArgument(format!(
            "--queue-entries {n} holds fewer than the {} that -q {} with {} segment(s) per I/O needs (one entry stays free): use --queue-entries {} or more, or a lower -q",
            needed_entries(job),
            job.qd,
            job.shapes.len(),
            needed_entries(job)
        )));
    }
    if let Some(n) = job.queue_entries
        && n > mqes
    {
        return Err(CliError::BadArgument(format!(
            "--queue-entries {n}: the controller allows {mqes} entries per queue (CAP.MQES + 1): use --queue-entries {mqes} or less"
        )));
    }
    if needed_entries(job) > mqes {
        notes.push(format!(
            "queues have {mqes} entries (the controller's limit), fewer than -q {} x {} segments + 1: an I/O that splits into one command per segment may wait for room",
            job.qd,
            job.shapes.len()
        ));
    }
    Ok(())
}

/// One request slot: its buffers while idle, and what it carries while in flight.
struct Slot {
    bufs: Bufs,
    start: Instant,
    lba: u64,
    blocks: u64,
    kind: Kind,
}

/// What a slot's request is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Read,
    Write,
    Trim,
    Zeroes,
    Flush,
}

impl Kind {
    /// The request carries the slot's data buffers (they come back with the completion).
    fn carries_bufs(self) -> bool {
        matches!(self, Kind::Read | Kind::Write)
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Read => "read",
            Kind::Write => "write",
            Kind::Trim => "trim",
            Kind::Zeroes => "write zeroes",
            Kind::Flush => "flush",
        }
    }

    /// The kind of a generated op in a job.
    fn of(job: &Job, write: bool) -> Kind {
        match (write, job.write_kind) {
            (false, _) => Kind::Read,
            (true, WriteKind::Write) => Kind::Write,
            (true, WriteKind::Trim) => Kind::Trim,
            (true, WriteKind::WriteZeroes) => Kind::Zeroes,
        }
    }
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
        // The bench's streams are the data only.
        Bufs::WithMetadata(w) => w.data.iter().for_each(put),
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
        Bufs::WithMetadata(w) => w.data.iter().for_each(get),
        Bufs::None => {}
    }
}

/// Submits one request of `kind`. Reads and writes take `bufs` (and give them back in the
/// rejection); the others leave the slot's buffers where they are.
///
/// Reads and writes go through the driver's read / write sugar (no `Io` value built and
/// matched: the path the driver's own benchmark measures); the rest out of line.
#[allow(clippy::too_many_arguments)]
#[inline]
fn submit<D: PciFunction>(
    qp: &mut nvme_dio::IoQueuePair<D>,
    ns: &Namespace,
    kind: Kind,
    lba: u64,
    blocks: u64,
    fua: bool,
    bufs: Bufs,
    tag: u64,
) -> Result<(), Rejected> {
    let l = Lba(lba);
    if ns.metadata_format().is_some() {
        // PI (PRACT) options ride on the request: the general path.
        return submit_other(qp, ns, kind, lba, blocks, fua, bufs, tag);
    }
    match (kind, bufs) {
        (Kind::Read, Bufs::One(b)) => qp.read(ns, l, b, tag),
        (Kind::Write, Bufs::One(b)) if fua => qp.write_fua(ns, l, b, tag),
        (Kind::Write, Bufs::One(b)) => qp.write(ns, l, b, tag),
        (Kind::Read, Bufs::Many(v)) => qp.readv(ns, l, v, tag),
        (Kind::Write, Bufs::Many(v)) if fua => qp.writev_fua(ns, l, v, tag),
        (Kind::Write, Bufs::Many(v)) => qp.writev(ns, l, v, tag),
        (kind, bufs) => submit_other(qp, ns, kind, lba, blocks, fua, bufs, tag),
    }
}

#[allow(clippy::too_many_arguments)]
#[inline(never)]
fn submit_other<D: PciFunction>(
    qp: &mut nvme_dio::IoQueuePair<D>,
    ns: &Namespace,
    kind: Kind,
    lba: u64,
    blocks: u64,
    fua: bool,
    bufs: Bufs,
    tag: u64,
) -> Result<(), Rejected> {
    let lba = Lba(lba);
    // A PI format whose metadata is only the tuple: the controller generates the PI on
    // writes and checks nothing the host sent, and strips it on reads (no metadata buffer).
    let opts = match ns.metadata_format() {
        Some(f) if f.pract_strips() => nvme_dio::RwOptions {
            pi: Some(nvme_dio::PiOptions::pract()),
            atomic: false,
        },
        _ => Default::default(),
    };
    let io = match kind {
        Kind::Write => Io::Write {
            ns,
            lba,
            bufs,
            fua,
            opts,
        },
        Kind::Read => Io::Read {
            ns,
            lba,
            bufs,
            fua: false,
            opts,
        },
        Kind::Trim => {
            return qp.submit(
                Io::Deallocate {
                    ns,
                    ranges: &[(lba, blocks as u32)],
                },
                tag,
            );
        }
        // Io::WriteZeroes has no FUA; with it the command is built here (the range is
        // inside the checked working set, and support was checked before the run).
        Kind::Zeroes if fua => {
            let sqe = nvme_dio_queue::cmd::WriteZeroes::new(ns.id(), lba, blocks as u32)
                .fua(true)
                .build();
            Io::Raw { sqe, buf: None }
        }
        Kind::Zeroes => Io::WriteZeroes {
            ns,
            lba,
            blocks: blocks as u32,
        },
        Kind::Flush => Io::Flush { ns },
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
    let what_of = |kind: Kind| -> Option<String> {
        match kind {
            Kind::Trim if !ns.supports_deallocate() => Some("trim (Dataset Management, deallocate)"),
            Kind::Zeroes if !ns.supports_write_zeroes() => Some("Write Zeroes"),
            _ => None,
        }
        .map(|w| format!("{dev}: the controller does not support {w} (ONCS in Identify Controller): -w {} cannot run on it", match kind { Kind::Trim => "trim / randtrim", _ => "writezeroes / randwritezeroes" }))
    };
    let mut qp = setup_qpair(ctrl, job, dev)?;
    let mut bufs = alloc_slot_bufs(ctrl, &job.shapes)?;
    let start = job.region_start;
    let mut kinds = Vec::new();
    if job.read_pct > 0 {
        kinds.push(Kind::Read);
    }
    if job.read_pct < 100 || job.verify {
        let k = Kind::of(job, true);
        if let Some(m) = what_of(k) {
            return Err(CliError::BadArgument(m));
        }
        if k == Kind::Write {
            // Written with the verify pattern, as the run (or its prefill) would.
            let mut stream = vec![0u8; job.io_size as usize];
            pattern::fill(&mut stream, start, job.lba_size as usize, job.seed);
            scatter(&bufs, &stream);
        }
        kinds.push(k);
    }
    if job.fsync.is_some() {
        kinds.push(Kind::Flush);
    }
    for kind in kinds {
        let what = match kind {
            Kind::Flush => "a flush".to_string(),
            k => format!(
                "a {}{} of {} bytes",
                if job.fua && k != Kind::Read {
                    "FUA "
                } else {
                    ""
                },
                k.name(),
                job.io_size
            ),
        };
        let offset = start * job.lba_size as u64;
        let give = if kind.carries_bufs() {
            std::mem::take(&mut bufs)
        } else {
            Bufs::None
        };
        submit(&mut qp, ns, kind, start, job.io_blocks(), job.fua, give, 0).map_err(|r| {
            CliError::FirstIo {
                device: dev.to_string(),
                what: what.clone(),
                offset,
                detail: r.error.report(),
            }
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
        if kind.carries_bufs() {
            bufs = c.bufs;
        }
        if let Err(e) = c.result {
            return Err(CliError::FirstIo {
                device: dev.to_string(),
                what,
                offset,
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
            let lba = job.region_start + next * job.io_blocks();
            pattern::fill(&mut stream, lba, job.lba_size as usize, job.seed);
            scatter(&slots[i].0, &stream);
            let bufs = std::mem::take(&mut slots[i].0);
            match submit(
                &mut qp,
                ns,
                Kind::Write,
                lba,
                job.io_blocks(),
                false,
                bufs,
                i as u64,
            ) {
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

fn diff(a: &QueueStats, b: &QueueStats, c: &mut QueueCounters) {
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

/// One queue pair of a worker, with its request slots.
struct Lane<'a> {
    /// Index of the worker's result (context) it adds to.
    res: usize,
    qp: IoQueuePair<Device>,
    ns: &'a Namespace,
    job: &'a Job,
    slots: Vec<Slot>,
    idle: Vec<u32>,
    ops: OpGen,
    budget: Option<u64>,
    issued: u64,
    /// Writes since the last Flush (--fsync).
    writes_since_flush: u32,
    /// --rate-iops: time between submissions, and when the next is due.
    interval: Option<Duration>,
    due: Instant,
    s0: QueueStats,
    counters: QueueCounters,
}

impl Lane<'_> {
    fn busy(&self) -> bool {
        self.idle.len() != self.slots.len()
    }

    fn out_of_budget(&self) -> bool {
        !budget_left(self.budget, self.issued)
    }
}

fn worker(
    ctrls: &[Controller<Device>],
    targets: &[Target],
    layout: &super::Layout,
    timeout: Duration,
    w: usize,
    ctl: &Control,
) -> Result<WorkerResult, CliError> {
    let (cpu, _note) = pin(layout, w);
    let ctx_ids: Vec<usize> = layout.ctxs_of(w).collect();
    let setup = (|| {
        let mut lanes = Vec::new();
        for (r, &c) in ctx_ids.iter().enumerate() {
            let plan = &layout.ctxs[c];
            let t = &targets[plan.target];
            let ctrl = &ctrls[t.dev];
            let mode = match t.job.mode {
                Mode::Poll => CompletionMode::Poll,
                Mode::Irq => CompletionMode::Interrupt,
                Mode::Hybrid => CompletionMode::Hybrid,
            };
            for (j, lp) in plan.lanes.iter().enumerate() {
                let qp = ctrl
                    .create_io_qpair(
                        QueuePairOptions::default()
                            .entries(entries(&t.job))
                            .mode(mode)
                            .timeout(timeout),
                    )
                    .map_err(|e| CliError::driver(&t.label, e))?;
                let mut slots = Vec::with_capacity(lp.qd as usize);
                for _ in 0..lp.qd {
                    slots.push(Slot {
                        bufs: alloc_slot_bufs(ctrl, &t.job.shapes)?,
                        start: Instant::now(),
                        lba: 0,
                        blocks: 0,
                        kind: Kind::Read,
                    });
                }
                let lanes_here: usize = ctx_ids.iter().map(|&c| layout.ctxs[c].lanes.len()).sum();
                let s0 = qp.stats().clone();
                let queue = layout.ctxs[..c]
                    .iter()
                    .map(|x| x.lanes.len())
                    .sum::<usize>()
                    + j;
                lanes.push(Lane {
                    res: r,
                    qp,
                    ns: &t.ns,
                    job: &t.job,
                    idle: (0..lp.qd).rev().collect(),
                    slots,
                    ops: t.job.op_gen(lp.index, lp.of),
                    budget: lp.budget,
                    issued: 0,
                    writes_since_flush: 0,
                    interval: t
                        .job
                        .rate_iops
                        .map(|r| Duration::from_secs_f64(lanes_here as f64 / r as f64)),
                    due: Instant::now(),
                    s0,
                    counters: QueueCounters {
                        queue,
                        device: t.label.clone(),
                        nsid: t.ns.id().0,
                        worker: w,
                        cpu,
                        ..Default::default()
                    },
                });
            }
        }
        Ok::<_, CliError>(lanes)
    })();
    ctl.ready.wait();
    let mut lanes = setup?;
    let fresh = || -> Vec<QueueResult> { ctx_ids.iter().map(|&c| QueueResult::new(c)).collect() };
    let mut res = fresh();
    let single = lanes.len() == 1;
    let max_io = lanes
        .iter()
        .map(|l| l.job.io_size as usize)
        .max()
        .unwrap_or(0);
    let verify = lanes.iter().any(|l| l.job.verify);
    let (mut stream, mut expect) = if verify {
        (vec![0u8; max_io], vec![0u8; max_io])
    } else {
        (Vec::new(), Vec::new())
    };
    let wait_slice = Duration::from_millis(100);
    let multi_slice = Duration::from_millis(1);

    let mut measuring = phase(ctl) >= MEASURE;
    let mut stopped = false;
    let mut failed = false;
    let mut t_start = Instant::now();
    // --rate-iops: I/O k of the window is due k intervals after its start.
    for l in &mut lanes {
        l.due = t_start;
    }
    let mut t_end = None;
    let mut cpu_start = thread_cpu();
    let mut cpu_end = None;
    let mut waiter = 0usize;
    loop {
        let ph = phase(ctl);
        if !measuring && ph >= MEASURE {
            measuring = true;
            res = fresh();
            t_start = Instant::now();
            for l in &mut lanes {
                l.s0 = l.qp.stats().clone();
                l.issued = 0;
                l.due = t_start;
            }
            cpu_start = thread_cpu();
        }
        if ph == STOP && !stopped {
            stopped = true;
            mark_end(&mut t_end, &mut cpu_end);
        }
        for l in lanes.iter_mut() {
            if stopped || failed || l.idle.is_empty() || (measuring && l.out_of_budget()) {
                continue;
            }
            submit_batch(l, measuring, &mut stream)?;
        }
        if !lanes.iter().any(Lane::busy) {
            if stopped || failed || (measuring && lanes.iter().all(Lane::out_of_budget)) {
                break;
            }
            // Held back by --rate-iops with nothing in flight: sleep until the next is due.
            if let Some(due) = lanes
                .iter()
                .filter(|l| l.interval.is_some())
                .map(|l| l.due)
                .min()
            {
                let now = Instant::now();
                if due > now {
                    std::thread::sleep((due - now).min(Duration::from_millis(10)));
                }
            }
            continue;
        }
        let mut n = 0;
        match lanes[0].job.mode {
            Mode::Poll => {
                for l in lanes.iter_mut().filter(|l| l.busy()) {
                    n += l.qp.poll();
                }
            }
            Mode::Irq | Mode::Hybrid if single => {
                let l = &mut lanes[0];
                n =
                    l.qp.wait(wait_slice)
                        .map_err(|e| CliError::driver(&l.counters.device, e))?;
            }
            Mode::Irq | Mode::Hybrid => {
                for l in lanes.iter_mut().filter(|l| l.busy()) {
                    n += l.qp.poll();
                }
                if n == 0 {
                    // Nothing anywhere: sleep on one busy queue's interrupt, a short while.
                    let k = lanes.len();
                    waiter = (waiter + 1) % k;
                    if let Some(l) = (0..k)
                        .map(|i| (waiter + i) % k)
                        .find(|&i| lanes[i].busy())
                        .map(|i| &mut lanes[i])
                    {
                        n =
                            l.qp.wait(multi_slice)
                                .map_err(|e| CliError::driver(&l.counters.device, e))?;
                    }
                }
            }
        }
        if n == 0 {
            continue;
        }
        let now = Instant::now();
        for l in lanes.iter_mut() {
            let r = &mut res[l.res];
            reap(
                l,
                r,
                now,
                measuring && !stopped,
                &mut failed,
                &mut stream,
                &mut expect,
            );
        }
        if measuring && !stopped && lanes.iter().all(|l| l.out_of_budget() && !l.busy()) {
            mark_end(&mut t_end, &mut cpu_end);
        }
        publish(
            ctl,
            w,
            res.iter().map(|r| r.ios).sum(),
            res.iter().map(|r| r.bytes).sum(),
        );
    }
    let elapsed = t_end.unwrap_or_else(Instant::now).duration_since(t_start);
    let cpu_used = cpu_end
        .or_else(thread_cpu)
        .zip(cpu_start)
        .map(|(b, a)| b.saturating_sub(a));
    for mut l in lanes {
        let s1 = l.qp.stats().clone();
        diff(&l.s0, &s1, &mut l.counters);
        let r = &mut res[l.res];
        if s1.stale_cqes > l.s0.stale_cqes {
            r.first_error.get_or_insert_with(|| {
                format!(
                    "{} stale completions were ignored",
                    s1.stale_cqes - l.s0.stale_cqes
                )
            });
        }
        r.counters.push(l.counters);
    }
    Ok(WorkerResult {
        elapsed,
        cpu: cpu_used,
        ctxs: res,
    })
}

/// Submits as many I/Os as the lane has idle slots, budget and rate for, ringing the
/// doorbell every `batch`; a Flush after every --fsync writes.
fn submit_batch(l: &mut Lane<'_>, measuring: bool, stream: &mut [u8]) -> Result<(), CliError> {
    // One clock read before the batch: every I/O in it starts no later than this.
    let t0 = Instant::now();
    let job = l.job;
    let lba_size = job.lba_size as usize;
    let mut in_batch = 0;
    while let Some(&i) = l.idle.last() {
        if measuring && l.out_of_budget() {
            break;
        }
        let s = &mut l.slots[i as usize];
        let flush = job.fsync.is_some_and(|n| l.writes_since_flush >= n);
        let (kind, lba, blocks) = if flush {
            (Kind::Flush, 0, 0)
        } else {
            if let Some(iv) = l.interval {
                if t0 < l.due {
                    break;
                }
                l.due += iv;
            }
            let (lba, blocks, write) = l.ops.next_op();
            (Kind::of(job, write), lba, blocks)
        };
        let len = blocks as usize * lba_size;
        let bufs = if kind.carries_bufs() {
            if !job.sizes.is_empty()
                && let Bufs::One(b) = &mut s.bufs
            {
                b.set_view(0, len)
                    .expect("slots hold the largest --bssplit size");
            }
            if kind == Kind::Write && job.verify {
                pattern::fill(&mut stream[..len], lba, lba_size, job.seed);
                scatter(&s.bufs, &stream[..len]);
            }
            std::mem::take(&mut s.bufs)
        } else {
            Bufs::None
        };
        match submit(&mut l.qp, l.ns, kind, lba, blocks, job.fua, bufs, i as u64) {
            Ok(()) => {
                l.idle.pop();
                s.start = t0;
                s.lba = lba;
                s.blocks = blocks;
                s.kind = kind;
                if kind == Kind::Flush {
                    l.writes_since_flush = 0;
                } else {
                    if kind != Kind::Read {
                        l.writes_since_flush += 1;
                    }
                    if measuring {
                        l.issued += 1;
                    }
                }
                in_batch += 1;
                if in_batch == job.batch {
                    l.qp.ring();
                    in_batch = 0;
                }
            }
            Err(r) if matches!(*r.error, Error::QueueFull { .. }) => {
                if kind.carries_bufs() {
                    s.bufs = r.bufs;
                }
                break;
            }
            Err(r) => return Err(CliError::driver(&l.counters.device, *r.error)),
        }
    }
    if in_batch > 0 {
        l.qp.ring();
    }
    Ok(())
}

/// Takes the lane's completions: latency of successful I/Os, errors, verify.
fn reap(
    l: &mut Lane<'_>,
    r: &mut QueueResult,
    now: Instant,
    counting: bool,
    failed: &mut bool,
    stream: &mut [u8],
    expect: &mut [u8],
) {
    let job = l.job;
    let lba_size = job.lba_size as usize;
    while let Some(c) = l.qp.next_completion() {
        let i = c.tag as usize;
        let s = &mut l.slots[i];
        if s.kind.carries_bufs() {
            s.bufs = c.bufs;
        }
        l.idle.push(i as u32);
        if !counting {
            continue;
        }
        if let Err(e) = c.result {
            r.errors += 1;
            r.first_error.get_or_insert_with(|| {
                format!(
                    "{} nsid {}: {} at LBA {}: {}",
                    l.counters.device,
                    l.counters.nsid,
                    s.kind.name(),
                    s.lba,
                    e.report()
                )
            });
            *failed = true;
            continue;
        }
        // Latency of successful I/Os only: a failure's time says nothing about the device.
        let ns = now.duration_since(s.start).as_nanos() as u64;
        if s.kind == Kind::Flush {
            r.flushes += 1;
            stats::record(&mut r.flush_hist, ns);
            continue;
        }
        let len = s.blocks as usize * lba_size;
        r.record(s.kind != Kind::Read, ns, len as u64);
        if job.verify && s.kind == Kind::Read {
            gather(&s.bufs, &mut stream[..len]);
            let bad = pattern::check(
                &stream[..len],
                s.lba,
                lba_size,
                job.seed,
                &mut expect[..len],
            );
            r.checked_blocks += s.blocks;
            if let Some(m) = bad.first() {
                r.first_mismatch.get_or_insert_with(|| m.to_string());
            }
            r.mismatches += bad.len() as u64;
        }
    }
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
