//! Failure without harm (issue 12): on every failure path (a reset that fails, removal, a
//! dropped queue pair) a buffer the device may still write is never handed back to the
//! caller or the allocator until DMA is proven stopped. Each test checks that every
//! request completed exactly once (submitted = succeeded + failed, held ones among the
//! failed and counted), and that the emulator's freed-write checker saw no device write into
//! memory the driver had given back. Deterministic: faults are injected by count.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use nvme_dio::{
    Bufs, Completion, Controller, ControllerOptions, IoQueuePair, Lba, MemoryOptions, PciFunction,
    QueuePairOptions,
};
use nvme_dio_dma::{Bar0, DmaMapper};
use nvme_dio_emu::{Action, EmuConfig, EmuFunction, Fault, Mode, NsConfig, Target};
use nvme_dio_queue::opcode;
use vmm_sys_util::eventfd::EventFd;

fn emu(mode: Mode) -> Arc<EmuFunction> {
    let cfg = EmuConfig {
        mode,
        namespaces: vec![NsConfig::ram(4096, 4096)],
        ..EmuConfig::default()
    };
    Arc::new(EmuFunction::new(cfg).expect("emulated controller"))
}

fn opts() -> ControllerOptions {
    ControllerOptions::default()
        .memory(MemoryOptions::any_pages(8 << 20))
        .admin_timeout(Duration::from_secs(2))
}

fn qp_opts() -> QueuePairOptions {
    QueuePairOptions::default()
        .entries(64)
        .timeout(Duration::from_secs(600))
}

/// An emulated function that can neither clear bus mastering nor be reset: after a failed
/// disable nothing proves its DMA stopped. The system can ask for it back (`removal`).
struct Stubborn(Arc<EmuFunction>, std::sync::atomic::AtomicBool);

impl Stubborn {
    fn new(emu: &Arc<EmuFunction>) -> Stubborn {
        Stubborn(Arc::clone(emu), std::sync::atomic::AtomicBool::new(false))
    }
}

impl PciFunction for Stubborn {
    type Bar = <EmuFunction as PciFunction>::Bar;
    fn bar0(&self) -> &Self::Bar {
        self.0.bar0()
    }
    fn dma_mapper(&self) -> Arc<dyn DmaMapper> {
        self.0.dma_mapper()
    }
    fn msix_vectors(&self) -> u32 {
        self.0.msix_vectors()
    }
    fn enable_msix(&self, count: u32) -> Result<Vec<Arc<EventFd>>, nvme_dio_dma::Error> {
        self.0.enable_msix(count)
    }
    fn disable_msix(&self) -> Result<(), nvme_dio_dma::Error> {
        self.0.disable_msix()
    }
    fn removal_requested(&self) -> bool {
        self.1.load(std::sync::atomic::Ordering::Acquire)
    }
    fn set_bus_master(&self, _enable: bool) -> Result<(), nvme_dio_dma::Error> {
        Err(nvme_dio_dma::Error::BusMasterUnsupported {
            function: "stubborn".into(),
        })
    }
    fn reset(&self) -> Result<(), nvme_dio_dma::Error> {
        Err(nvme_dio_dma::Error::BusMasterUnsupported {
            function: "stubborn (no function reset either)".into(),
        })
    }
    fn describe(&self) -> String {
        "stubborn emu".into()
    }
}

/// Every completion of `qp` until none is in flight (bounded by polls, not time).
fn collect<D: PciFunction>(qp: &mut IoQueuePair<D>, want: usize) -> Vec<Completion> {
    let mut out = Vec::new();
    for _ in 0..1_000_000 {
        qp.poll();
        out.extend(std::iter::from_fn(|| qp.next_completion()));
        if out.len() >= want && qp.outstanding() == 0 {
            break;
        }
    }
    let tags: HashSet<u64> = out.iter().map(|c| c.tag).collect();
    assert_eq!(tags.len(), out.len(), "no completion twice");
    out
}

/// `n` reads the controller executes but never completes (it holds them, and a device that
/// keeps writing after a failed disable writes their pages).
fn submit_held_reads<D: PciFunction>(
    dev: &EmuFunction,
    ctrl: &Controller<D>,
    qp: &mut IoQueuePair<D>,
    n: u32,
) {
    dev.inject(Fault::Command {
        target: Target::Opcode {
            admin: false,
            opcode: opcode::nvm::READ,
            count: n,
        },
        action: Action::Drop,
    })
    .unwrap();
    let ns = ctrl.namespace(1).unwrap().clone();
    for i in 0..n {
        let buf = ctrl.memory().alloc(4096, 4096).unwrap();
        qp.read(&ns, Lba(i as u64), buf, i as u64).unwrap();
    }
    for _ in 0..100 {
        qp.poll();
    }
    assert_eq!(qp.ready(), 0, "the reads are held by the controller");
}

/// A reset whose disable hangs (CSTS.RDY stays 1) while the device keeps writing the pages
/// of the reads it holds: the controller is declared dead.
fn fail_reset_with_late_writes<D: PciFunction>(dev: &EmuFunction, ctrl: &Controller<D>) {
    dev.inject(Fault::DisableHangs).unwrap();
    dev.inject(Fault::LateWrites {
        accesses: 1_000_000,
    })
    .unwrap();
    assert!(ctrl.reset().is_err(), "the disable hangs: the reset fails");
    assert!(ctrl.is_gone());
}

#[test]
fn fault_dead_controller_stops_dma_before_buffers_come_back() {
    let dev = emu(Mode::Inline);
    let ctrl = Controller::new(Arc::clone(&dev), opts()).unwrap();
    let mut qp = ctrl.create_io_qpair(qp_opts()).unwrap();
    submit_held_reads(&dev, &ctrl, &mut qp, 4);
    fail_reset_with_late_writes(&dev, &ctrl);
    let done = collect(&mut qp, 4);
    assert_eq!(done.len(), 4);
    let stats = qp.stats();
    assert_eq!(stats.submitted, stats.completed, "{stats:?}");
    assert_eq!(stats.errors, 4, "{stats:?}");
    assert_eq!(stats.held, 0, "DMA proven stopped: nothing held: {stats:?}");
    assert_eq!(
        ctrl.dma_stopped(),
        Some(nvme_dio_dma::DmaStopped::BusMasterCleared)
    );
    assert_eq!(ctrl.quarantine().held_buffers, 0);
    // Bus mastering was cleared before the buffers came back: the device writes them no more.
    let late = dev.stats().late_writes;
    for _ in 0..100 {
        let _ = dev.bar0().read32(0x1c);
    }
    assert_eq!(
        dev.stats().late_writes,
        late,
        "the device still writes buffers that were handed back"
    );
    for c in done {
        let err = c.result.expect_err("failed by the dead controller");
        assert!(err.to_string().contains("did not come back"), "{err}");
        let buf = c
            .bufs
            .into_one()
            .expect("DMA proven stopped: the buffer comes back");
        let mut page = vec![0u8; 4096];
        buf.copy_to_slice(0, &mut page).unwrap();
        assert!(page.iter().all(|&b| b != 0xde) || dev.stats().late_writes > 0);
        drop(buf);
    }
    drop(qp);
    drop(ctrl);
    for _ in 0..100 {
        let _ = dev.bar0().read32(0x1c);
    }
    assert_eq!(
        dev.stats().freed_writes,
        0,
        "{:?}",
        dev.freed_write_events()
    );
}

#[test]
fn fault_dead_controller_without_proof_holds_buffers() {
    let emu = emu(Mode::Inline);
    let dev = Arc::new(Stubborn::new(&emu));
    let ctrl = Controller::new(Arc::clone(&dev), opts()).unwrap();
    let mut qp = ctrl.create_io_qpair(qp_opts()).unwrap();
    submit_held_reads(&emu, &ctrl, &mut qp, 4);
    fail_reset_with_late_writes(&emu, &ctrl);
    let done = collect(&mut qp, 4);
    assert_eq!(done.len(), 4);
    let stats = qp.stats();
    assert_eq!(stats.submitted, stats.completed, "{stats:?}");
    assert_eq!(stats.held, 4, "held requests are counted: {stats:?}");
    assert_eq!(ctrl.dma_stopped(), None);
    assert_eq!(ctrl.quarantine().held_buffers, 4);
    for c in done {
        let err = c.result.expect_err("failed by the dead controller");
        assert!(
            err.to_string().contains("held"),
            "the completion says so: {err}"
        );
        assert!(
            matches!(c.bufs, Bufs::None),
            "a buffer the device may still write came back: {:?}",
            c.bufs
        );
    }
    assert!(emu.stats().late_writes > 0, "the device does keep writing");
    drop(qp);
    drop(ctrl);
    for _ in 0..100 {
        let _ = emu.bar0().read32(0x1c);
    }
    assert_eq!(
        emu.stats().freed_writes,
        0,
        "{:?}",
        emu.freed_write_events()
    );
}

/// One read of `qp`, waited for.
fn read_one<D: PciFunction>(ctrl: &Controller<D>, qp: &mut IoQueuePair<D>, tag: u64) -> Completion {
    let ns = ctrl.namespace(1).unwrap().clone();
    let buf = ctrl.memory().alloc(4096, 4096).unwrap();
    qp.read(&ns, Lba(tag), buf, tag).unwrap();
    let mut done = Vec::new();
    while done.is_empty() {
        qp.wait(Duration::from_secs(5)).unwrap();
        done.extend(std::iter::from_fn(|| qp.next_completion()));
    }
    assert_eq!(done.len(), 1);
    done.pop().unwrap()
}

#[test]
fn fault_single_all_ones_read_is_not_a_removal() {
    let dev = emu(Mode::Inline);
    let ctrl = Controller::new(Arc::clone(&dev), opts()).unwrap();
    let mut qp = ctrl
        .create_io_qpair(qp_opts().timeout(Duration::from_millis(400)))
        .unwrap();
    // In a reset: its first register read (CC) reads all ones once.
    dev.inject(Fault::AllOnesReads { reads: 1 }).unwrap();
    ctrl.reset()
        .expect("a transient all-ones read does not fail the reset");
    assert!(!ctrl.is_gone());
    // In a queue pair's health check: the command completes after the next register access,
    // which is the tick's CSTS read, answered with all ones once.
    dev.inject(Fault::Command {
        target: Target::NthIo(0),
        action: Action::DelayAccesses(1),
    })
    .unwrap();
    dev.inject(Fault::AllOnesReads { reads: 1 }).unwrap();
    let c = read_one(&ctrl, &mut qp, 1);
    assert!(c.result.is_ok(), "{:?}", c.result);
    assert_eq!(
        dev.stats().all_ones_reads,
        2,
        "both transient reads happened"
    );
    assert!(!ctrl.is_gone(), "one all-ones read is not a removal");
    let c = read_one(&ctrl, &mut qp, 2);
    assert!(c.result.is_ok(), "I/O goes on: {:?}", c.result);
    let stats = qp.stats();
    assert_eq!(stats.submitted, stats.completed, "{stats:?}");
    assert_eq!(stats.errors, 0, "{stats:?}");
    drop(qp);
    drop(ctrl);
    assert_eq!(
        dev.stats().freed_writes,
        0,
        "{:?}",
        dev.freed_write_events()
    );
}

#[test]
fn fault_removal_whose_disable_fails_holds_buffers() {
    let emu = emu(Mode::Inline);
    let dev = Arc::new(Stubborn::new(&emu));
    let ctrl = Controller::new(Arc::clone(&dev), opts()).unwrap();
    let mut qp = ctrl.create_io_qpair(qp_opts()).unwrap();
    submit_held_reads(&emu, &ctrl, &mut qp, 3);
    emu.inject(Fault::DisableHangs).unwrap();
    emu.inject(Fault::LateWrites {
        accesses: 1_000_000,
    })
    .unwrap();
    dev.1.store(true, std::sync::atomic::Ordering::Release);
    assert!(ctrl.is_gone(), "released for removal");
    let done = collect(&mut qp, 3);
    assert_eq!(done.len(), 3);
    for c in done {
        let err = c.result.expect_err("failed: the device is going");
        assert!(
            err.to_string().contains("held"),
            "the completion says so: {err}"
        );
        assert!(
            c.bufs.is_none(),
            "a buffer the device may still write came back"
        );
    }
    let stats = qp.stats();
    assert_eq!(stats.submitted, stats.completed, "{stats:?}");
    assert_eq!(stats.held, 3, "{stats:?}");
    assert_eq!(ctrl.quarantine().held_buffers, 3);
    assert!(emu.stats().late_writes > 0, "the device does keep writing");
    drop(qp);
    drop(ctrl);
    for _ in 0..100 {
        let _ = emu.bar0().read32(0x1c);
    }
    assert_eq!(
        emu.stats().freed_writes,
        0,
        "{:?}",
        emu.freed_write_events()
    );
}

#[test]
fn fault_dropped_queue_pair_holds_split_parents_buffers() {
    // MDTS 1: 8 KiB per command, so a 32 KiB read is one parent with four children.
    let dev = Arc::new(
        EmuFunction::new(EmuConfig {
            mode: Mode::Inline,
            mdts: 1,
            namespaces: vec![NsConfig::ram(4096, 4096)],
            ..EmuConfig::default()
        })
        .unwrap(),
    );
    let ctrl = Controller::new(Arc::clone(&dev), opts()).unwrap();
    let mut qp = ctrl.create_io_qpair(qp_opts()).unwrap();
    let ns = ctrl.namespace(1).unwrap().clone();
    dev.inject(Fault::Command {
        target: Target::Opcode {
            admin: false,
            opcode: opcode::nvm::READ,
            count: 4,
        },
        action: Action::Drop,
    })
    .unwrap();
    let buf = ctrl.memory().alloc(32 << 10, 4096).unwrap();
    qp.read(&ns, Lba(0), buf, 7).unwrap();
    for _ in 0..100 {
        qp.poll();
    }
    assert_eq!(qp.stats().split_requests, 1);
    assert_eq!(
        dev.held_commands(),
        4,
        "the children are held by the controller"
    );
    // The deletion is never confirmed: the controller may still write the parent's buffer.
    dev.inject(Fault::Command {
        target: Target::Opcode {
            admin: true,
            opcode: opcode::admin::DELETE_IO_SQ,
            count: 1,
        },
        action: Action::Status(nvme_dio::Status::new(0, 0x06)),
    })
    .unwrap();
    let before = ctrl.quarantine().held_buffers;
    drop(qp);
    assert_eq!(
        ctrl.quarantine().held_buffers,
        before + 1,
        "the split parent's buffer is held"
    );
    // Now the device keeps writing the pages it holds while a disable hangs.
    dev.inject(Fault::DisableHangs).unwrap();
    dev.inject(Fault::LateWrites {
        accesses: 1_000_000,
    })
    .unwrap();
    let _ = ctrl.reset();
    assert!(dev.stats().late_writes > 0);
    drop(ctrl);
    assert_eq!(
        dev.stats().freed_writes,
        0,
        "{:?}",
        dev.freed_write_events().first()
    );
}

#[test]
fn fault_reset_reports_completions_already_posted_as_what_they_were() {
    let dev = emu(Mode::Inline);
    let ctrl = Controller::new(Arc::clone(&dev), opts()).unwrap();
    let mut qp = ctrl.create_io_qpair(qp_opts()).unwrap();
    let ns = ctrl.namespace(1).unwrap().clone();
    for i in 0..8u64 {
        dev.write_blocks(1, i, &[i as u8 + 1; 4096]).unwrap();
    }
    for i in 0..8u64 {
        let buf = ctrl.memory().alloc(4096, 4096).unwrap();
        qp.read(&ns, Lba(i), buf, i).unwrap();
    }
    // The doorbell goes out; the inline controller executes the reads and posts their
    // completions, which nobody has reaped yet when the reset comes.
    qp.ring();
    ctrl.reset().unwrap();
    let done = collect(&mut qp, 8);
    assert_eq!(done.len(), 8);
    for c in done {
        assert!(c.result.is_ok(), "posted before the reset: {:?}", c.result);
        let mut page = vec![0u8; 4096];
        c.bufs
            .into_one()
            .unwrap()
            .copy_to_slice(0, &mut page)
            .unwrap();
        assert!(page.iter().all(|&b| b == c.tag as u8 + 1), "read {}", c.tag);
    }
    let stats = qp.stats();
    assert_eq!(stats.submitted, stats.completed, "{stats:?}");
    assert_eq!(stats.errors, 0, "{stats:?}");
    let c = read_one(&ctrl, &mut qp, 9);
    assert!(
        c.result.is_ok(),
        "I/O goes on after the reset: {:?}",
        c.result
    );
    drop(qp);
    drop(ctrl);
    assert_eq!(
        dev.stats().freed_writes,
        0,
        "{:?}",
        dev.freed_write_events().first()
    );
}

fn ctrl_with_short_admin_timeout(dev: &Arc<EmuFunction>) -> Controller<EmuFunction> {
    Controller::new(
        Arc::clone(dev),
        opts()
            .io_queues(4)
            .admin_timeout(Duration::from_millis(100)),
    )
    .unwrap()
}

/// A Create I/O CQ that completes only after a million register accesses: long after the
/// driver gave up on it. The queue exists on the controller all the same.
fn late_create_cq(dev: &EmuFunction) {
    dev.inject(Fault::Command {
        target: Target::Opcode {
            admin: true,
            opcode: opcode::admin::CREATE_IO_CQ,
            count: 1,
        },
        action: Action::DelayAccesses(1_000_000),
    })
    .unwrap();
}

/// Every granted queue pair can be created and does I/O.
fn all_queue_pairs_work(ctrl: &Controller<EmuFunction>) {
    let mut qps = Vec::new();
    for i in 0..ctrl.info().io_queues {
        let qp = ctrl.create_io_qpair(qp_opts());
        qps.push(qp.unwrap_or_else(|e| panic!("queue pair {i}: {e}")));
    }
    for (i, qp) in qps.iter_mut().enumerate() {
        let c = read_one(ctrl, qp, i as u64);
        assert!(c.result.is_ok(), "{:?}", c.result);
        let stats = qp.stats();
        assert_eq!(stats.submitted, stats.completed, "{stats:?}");
    }
}

#[test]
fn fault_late_create_cq_does_not_poison_the_qid() {
    let dev = emu(Mode::Inline);
    let ctrl = ctrl_with_short_admin_timeout(&dev);
    late_create_cq(&dev);
    let e = ctrl
        .create_io_qpair(qp_opts())
        .expect_err("the create times out");
    assert!(e.to_string().contains("no completion"), "{e}");
    all_queue_pairs_work(&ctrl);
    assert_eq!(ctrl.resets(), 0, "deleting the late queue was enough");
    drop(ctrl);
    assert_eq!(
        dev.stats().freed_writes,
        0,
        "{:?}",
        dev.freed_write_events().first()
    );
}

#[test]
fn fault_admin_timeout_in_create_leads_to_a_reset() {
    let dev = emu(Mode::Inline);
    let ctrl = ctrl_with_short_admin_timeout(&dev);
    late_create_cq(&dev);
    // ... and the Delete I/O CQ that would clean it up never answers either.
    dev.inject(Fault::Command {
        target: Target::Opcode {
            admin: true,
            opcode: opcode::admin::DELETE_IO_CQ,
            count: 1,
        },
        action: Action::Drop,
    })
    .unwrap();
    ctrl.create_io_qpair(qp_opts())
        .expect_err("the create times out");
    assert_eq!(
        ctrl.resets(),
        1,
        "an admin queue that stops answering is reset"
    );
    all_queue_pairs_work(&ctrl);
    drop(ctrl);
    assert_eq!(
        dev.stats().freed_writes,
        0,
        "{:?}",
        dev.freed_write_events().first()
    );
}

#[test]
fn fault_controller_that_needs_two_resets_comes_back() {
    let dev = emu(Mode::Inline);
    let ctrl = Controller::new(Arc::clone(&dev), opts()).unwrap();
    let mut qp = ctrl.create_io_qpair(qp_opts()).unwrap();
    // Retries off: the requests the reset drops fail with it (retries are tested below).
    qp.set_retries(0);
    submit_held_reads(&dev, &ctrl, &mut qp, 3);
    // The first enable after the disable fails (CSTS.CFS, RDY stays 0).
    dev.inject(Fault::EnableFails { times: 1 }).unwrap();
    ctrl.reset()
        .expect("the reset is retried, and the second attempt works");
    assert!(!ctrl.is_gone());
    assert_eq!(ctrl.resets(), 1);
    let done = collect(&mut qp, 3);
    assert_eq!(done.len(), 3);
    for c in done {
        let err = c.result.expect_err("aborted by the reset");
        assert!(err.to_string().contains("reset"), "{err}");
        assert!(
            c.bufs.into_one().is_some(),
            "the disable stopped DMA: buffers come back"
        );
    }
    let c = read_one(&ctrl, &mut qp, 10);
    assert!(c.result.is_ok(), "I/O continues: {:?}", c.result);
    let stats = qp.stats();
    assert_eq!(stats.submitted, stats.completed, "{stats:?}");
    assert_eq!(stats.errors, 3, "{stats:?}");
    assert_eq!(stats.held, 0, "{stats:?}");
    drop(qp);
    drop(ctrl);
    assert_eq!(
        dev.stats().freed_writes,
        0,
        "{:?}",
        dev.freed_write_events().first()
    );
}

// ---- under load: four queue pairs at QD 32 ----------------------------------------------

fn harm_load(ios: u64) -> nvme_dio_tests::load::Load {
    nvme_dio_tests::load::Load {
        queues: 4,
        qd: 32,
        ios,
        region_blocks: 1024,
        qp: QueuePairOptions::default()
            .entries(64)
            .timeout(Duration::from_secs(600)),
        stall: Duration::from_secs(60),
        fault_after: ios / 4,
        max_time: Duration::from_secs(120),
    }
}

fn load_emu() -> Arc<EmuFunction> {
    Arc::new(
        EmuFunction::new(EmuConfig {
            mode: Mode::Inline,
            namespaces: vec![NsConfig::ram(4 * 1024, 4096)],
            ..EmuConfig::default()
        })
        .unwrap(),
    )
}

/// Held reads on the controller, then a reset whose disable hangs while the device keeps
/// writing the held pages: injected from the load's first queue pair.
fn dead_under_load_fault<D: PciFunction + 'static>(
    emu: &Arc<EmuFunction>,
    ctrl: &Controller<D>,
) -> impl FnOnce() + Send + 'static {
    let emu = Arc::clone(emu);
    let ctrl = ctrl.clone();
    move || {
        emu.inject(Fault::Command {
            target: Target::Opcode {
                admin: false,
                opcode: opcode::nvm::READ,
                count: 8,
            },
            action: Action::Drop,
        })
        .unwrap();
        // The reset comes once the controller holds some of the dropped reads (a count,
        // not a time), from another thread so this queue pair keeps submitting.
        let reset = std::thread::spawn(move || {
            while emu.held_commands() < 4 {
                std::thread::yield_now();
            }
            emu.inject(Fault::DisableHangs).unwrap();
            emu.inject(Fault::LateWrites {
                accesses: 1_000_000,
            })
            .unwrap();
            let _ = ctrl.reset();
        });
        drop(reset); // detached: the load runs until the reset has failed every queue pair
    }
}

#[test]
fn fault_load_dead_controller_stops_dma_nothing_lost_nothing_written_freed() {
    let emu = load_emu();
    let ctrl = Controller::new(Arc::clone(&emu), opts()).unwrap();
    let fault = dead_under_load_fault(&emu, &ctrl);
    let (c, _) = nvme_dio_tests::load::run(&ctrl, &harm_load(2000), fault);
    assert_eq!(c.submitted, c.success + c.error, "{c:?}");
    assert!(c.error > 0, "{c:?}");
    assert_eq!(c.held, 0, "bus mastering cleared: nothing held: {c:?}");
    assert!(ctrl.is_gone());
    drop(ctrl);
    assert_eq!(
        emu.stats().freed_writes,
        0,
        "{:?}",
        emu.freed_write_events().first()
    );
}

#[test]
fn fault_load_dead_controller_without_proof_holds_and_writes_nothing_freed() {
    let emu = load_emu();
    let dev = Arc::new(Stubborn::new(&emu));
    let ctrl = Controller::new(Arc::clone(&dev), opts()).unwrap();
    let fault = dead_under_load_fault(&emu, &ctrl);
    let (c, _) = nvme_dio_tests::load::run(&ctrl, &harm_load(2000), fault);
    assert_eq!(c.submitted, c.success + c.error, "{c:?}");
    assert!(c.held > 0, "{c:?}");
    assert_eq!(ctrl.quarantine().held_buffers as u64, c.held, "{c:?}");
    assert!(emu.stats().late_writes > 0);
    drop(ctrl);
    for _ in 0..100 {
        let _ = emu.bar0().read32(0x1c);
    }
    assert_eq!(
        emu.stats().freed_writes,
        0,
        "{:?}",
        emu.freed_write_events().first()
    );
}

// ---- retries ------------------------------------------------------------------------------

fn fail_reads(dev: &EmuFunction, count: u32, dnr: bool) {
    let mut status = nvme_dio::Status::new(0, 0x06); // Internal Error
    if dnr {
        status = status.with_dnr();
    }
    dev.inject(Fault::Command {
        target: Target::Opcode {
            admin: false,
            opcode: opcode::nvm::READ,
            count,
        },
        action: Action::Status(status),
    })
    .unwrap();
}

#[test]
fn fault_retryable_status_is_retried_and_the_caller_sees_one_completion() {
    let dev = emu(Mode::Inline);
    let ctrl = Controller::new(Arc::clone(&dev), opts()).unwrap();
    let mut qp = ctrl.create_io_qpair(qp_opts()).unwrap();
    // Fails once without DNR: the retry succeeds.
    fail_reads(&dev, 1, false);
    let c = read_one(&ctrl, &mut qp, 1);
    assert!(c.result.is_ok(), "{:?}", c.result);
    assert_eq!(qp.stats().retries, 1);
    // Fails with DNR: not retried.
    fail_reads(&dev, 1, true);
    let c = read_one(&ctrl, &mut qp, 2);
    assert!(c.result.is_err());
    assert_eq!(qp.stats().retries, 1);
    // Fails every time: delivered once, after the default 3 retries.
    fail_reads(&dev, 10, false);
    let c = read_one(&ctrl, &mut qp, 3);
    assert!(c.result.is_err());
    assert_eq!(qp.stats().retries, 1 + nvme_dio::DEFAULT_RETRIES as u64);
    dev.clear_faults();
    // Retries off.
    qp.set_retries(0);
    fail_reads(&dev, 1, false);
    let c = read_one(&ctrl, &mut qp, 4);
    assert!(c.result.is_err());
    let stats = qp.stats();
    assert_eq!(stats.retries, 1 + nvme_dio::DEFAULT_RETRIES as u64);
    assert_eq!(stats.submitted, 4, "{stats:?}");
    assert_eq!(stats.completed, 4, "one completion per request: {stats:?}");
    assert_eq!(stats.errors, 3, "{stats:?}");
    drop(qp);
    drop(ctrl);
    assert_eq!(
        dev.stats().freed_writes,
        0,
        "{:?}",
        dev.freed_write_events().first()
    );
}

#[test]
fn fault_requests_dropped_by_a_reset_are_retried() {
    let dev = emu(Mode::Inline);
    let ctrl = Controller::new(Arc::clone(&dev), opts()).unwrap();
    let mut qp = ctrl.create_io_qpair(qp_opts()).unwrap();
    submit_held_reads(&dev, &ctrl, &mut qp, 4);
    ctrl.reset().unwrap();
    let done = collect(&mut qp, 4);
    assert_eq!(done.len(), 4);
    assert!(done.iter().all(|c| c.result.is_ok()), "{done:?}");
    assert_eq!(qp.stats().retries, 4);
    // With retries off they fail with the reset.
    qp.set_retries(0);
    submit_held_reads(&dev, &ctrl, &mut qp, 2);
    ctrl.reset().unwrap();
    let done = collect(&mut qp, 2);
    assert_eq!(done.len(), 2);
    assert!(
        done.iter()
            .all(|c| matches!(&c.result, Err(nvme_dio::Error::Aborted(_)))),
        "{done:?}"
    );
    let stats = qp.stats();
    assert_eq!(stats.submitted, stats.completed, "{stats:?}");
    assert_eq!(stats.retries, 4, "{stats:?}");
    drop(qp);
    drop(ctrl);
    assert_eq!(
        dev.stats().freed_writes,
        0,
        "{:?}",
        dev.freed_write_events().first()
    );
}
