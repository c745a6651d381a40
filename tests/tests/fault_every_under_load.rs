//! Every fault the emulator can inject, under load (four queue pairs on four threads, QD 16,
//! random 4 KiB writes and reads), with the freed-write checker on (issue 12, "what it must
//! show"). For each fault: submitted = succeeded + failed, held requests among the failed
//! and counted exactly as the quarantine holds them; no completion twice and accounting
//! checked while requests are in flight (the load harness panics otherwise); the host never
//! touched the device in an undefined way; and no device write ever landed in memory the
//! driver had given back, including late writes after the controller is dropped. Where the
//! controller survives, every block whose last write succeeded reads back as written.
//!
//! Deterministic: each fault is injected by the first queue pair after a fixed count of its
//! requests, and counts or latches (never wall-clock thresholds) decide what the device
//! does. `FlipBit` is the one fault left out: it corrupts stored data on purpose, which
//! the data-verify tests cover (`tests/tests/emu_driver.rs`).

use std::sync::Arc;
use std::time::Duration;

use nvme_dio::{Controller, ControllerOptions, MemoryOptions, PciFunction, QueuePairOptions};
use nvme_dio_dma::Bar0;
use nvme_dio_emu::{Action, EmuConfig, EmuFunction, Fault, Mode, NsConfig, Target};
use nvme_dio_queue::status::{sc, sct};
use nvme_dio_queue::{Status, opcode};
use nvme_dio_tests::load::{self, Load};

const QUEUES: usize = 4;
const REGION: u64 = 512;

/// What a row expects besides the invariants every row checks.
#[derive(Clone, Copy, PartialEq, Eq)]
enum After {
    /// The controller works afterwards: the data of every successful write reads back.
    Survives,
    /// The controller is gone or dead afterwards (noticed at the latest when the owner
    /// asks, `Controller::is_gone`).
    Lost,
}

fn config(mode: Mode) -> EmuConfig {
    EmuConfig {
        mode,
        namespaces: vec![NsConfig::ram(QUEUES as u64 * REGION, 4096)],
        check_freed_writes: true,
        ..EmuConfig::default()
    }
}

fn bring_up(cfg: EmuConfig) -> (Arc<EmuFunction>, Controller<EmuFunction>) {
    let dev = Arc::new(EmuFunction::new(cfg).expect("emulated controller"));
    let opts = ControllerOptions::default()
        .memory(MemoryOptions::any_pages(8 << 20))
        .admin_timeout(Duration::from_secs(1));
    let ctrl = Controller::new(Arc::clone(&dev), opts).expect("bring-up");
    (dev, ctrl)
}

fn load() -> Load {
    Load {
        queues: QUEUES,
        qd: 16,
        ios: 600,
        region_blocks: REGION,
        qp: QueuePairOptions::default()
            .entries(32)
            .timeout(Duration::from_millis(100)),
        // A hang detector, not a measurement: a healthy run takes well under a second.
        stall: Duration::from_secs(30),
        fault_after: 150,
        max_time: Duration::from_secs(120),
    }
}

/// Runs the load with `inject` called once from the first queue pair, then checks the
/// invariants and `after`.
fn under_load(
    mode: Mode,
    after: After,
    inject: impl FnOnce(&Arc<EmuFunction>, &Controller<EmuFunction>) + Send + 'static,
) {
    under_load_with(config(mode), after, false, inject);
}

/// `disabled_doorbells`: the controller disables itself behind the driver's back (a power
/// cut), so I/O doorbells written between that and the driver's next look at CSTS are
/// expected (no driver can avoid them without a register read per doorbell); nothing else
/// undefined is.
fn under_load_with(
    cfg: EmuConfig,
    after: After,
    disabled_doorbells: bool,
    inject: impl FnOnce(&Arc<EmuFunction>, &Controller<EmuFunction>) + Send + 'static,
) {
    let (dev, ctrl) = bring_up(cfg);
    let (d, c2) = (Arc::clone(&dev), ctrl.clone());
    let (c, written) = load::run(&ctrl, &load(), move || inject(&d, &c2));
    assert_eq!(
        c.submitted,
        c.success + c.error,
        "every accepted request completed exactly once: {c:?}"
    );
    assert_eq!(
        ctrl.quarantine().held_buffers as u64,
        c.held,
        "held completions are exactly the quarantined buffers: {c:?}"
    );
    match after {
        After::Survives => {
            assert!(!ctrl.is_gone(), "{c:?}");
            assert!(load::verify(&ctrl, &written) > 0, "{c:?}");
        }
        After::Lost => assert!(ctrl.is_gone(), "{c:?}"),
    }
    let ub: Vec<String> = dev
        .ub_events()
        .into_iter()
        .filter(|e| {
            !(disabled_doorbells
                && e.starts_with("doorbell ")
                && !e.starts_with("doorbell 0 ")
                && !e.starts_with("doorbell 1 ")
                && e.contains("while not enabled and ready"))
        })
        .collect();
    assert!(ub.is_empty(), "{ub:?}");
    drop(ctrl);
    // A device that was never stopped keeps writing on register accesses: give it the
    // chance, after every handle is gone and the driver has given everything back.
    for _ in 0..100 {
        let _ = dev.bar0().read32(0x1c);
    }
    assert_eq!(
        dev.stats().freed_writes,
        0,
        "a device write into memory given back: {:?}",
        dev.freed_write_events().first()
    );
}

fn io(dev: &EmuFunction, target: Target, action: Action) {
    dev.inject(Fault::Command { target, action }).unwrap();
}

fn admin(opcode: u8) -> Target {
    Target::Opcode {
        admin: true,
        opcode,
        count: 1,
    }
}

#[test]
fn fault_every_retryable_status() {
    under_load(Mode::Inline, After::Survives, |d, _| {
        let s = Status::new(sct::GENERIC, sc::INTERNAL_ERROR);
        io(d, Target::NthIo(3), Action::Status(s));
    });
}

#[test]
fn fault_every_status_with_dnr() {
    under_load(Mode::Inline, After::Survives, |d, _| {
        let s = Status::new(sct::GENERIC, sc::INTERNAL_ERROR).with_dnr();
        io(d, Target::NthIo(3), Action::Status(s));
    });
}

#[test]
fn fault_every_dropped_completion() {
    under_load(Mode::Inline, After::Survives, |d, _| {
        io(d, Target::NthIo(5), Action::Drop);
    });
}

#[test]
fn fault_every_lost_command_and_lost_abort() {
    under_load(Mode::Inline, After::Survives, |d, _| {
        io(d, Target::NthIo(5), Action::Lose);
        io(d, admin(opcode::admin::ABORT), Action::Lose);
    });
}

#[test]
fn fault_every_delay_past_the_deadline() {
    under_load(Mode::Inline, After::Survives, |d, _| {
        io(d, Target::NthIo(7), Action::Delay(Duration::from_secs(2)));
    });
}

#[test]
fn fault_every_delay_by_register_accesses() {
    under_load(Mode::Inline, After::Survives, |d, _| {
        io(d, Target::NthIo(7), Action::DelayAccesses(50));
    });
}

#[test]
fn fault_every_stale_cqe() {
    under_load(Mode::Inline, After::Survives, |d, _| {
        io(d, Target::NthIo(2), Action::StaleCqe);
    });
}

#[test]
fn fault_every_duplicate_cqe() {
    under_load(Mode::Inline, After::Survives, |d, _| {
        io(d, Target::NthIo(2), Action::DuplicateCqe);
    });
}

#[test]
fn fault_every_status_on_the_background_thread() {
    under_load(Mode::Thread, After::Survives, |d, _| {
        let s = Status::new(sct::GENERIC, sc::INTERNAL_ERROR);
        io(
            d,
            Target::Opcode {
                admin: false,
                opcode: opcode::nvm::WRITE,
                count: 20,
            },
            Action::Status(s),
        );
    });
}

#[test]
fn fault_every_controller_fatal() {
    under_load(Mode::Inline, After::Survives, |d, _| {
        d.inject(Fault::ControllerFatal).unwrap();
    });
}

#[test]
fn fault_every_controller_that_needs_two_resets() {
    under_load(Mode::Inline, After::Survives, |d, _| {
        d.inject(Fault::EnableFails { times: 1 }).unwrap();
        d.inject(Fault::ControllerFatal).unwrap();
    });
}

#[test]
fn fault_every_late_create_cq_during_a_reset() {
    under_load(Mode::Inline, After::Survives, |d, c| {
        io(
            d,
            admin(opcode::admin::CREATE_IO_CQ),
            Action::DelayAccesses(1_000_000),
        );
        let _ = c.reset();
    });
}

#[test]
fn fault_every_transient_all_ones_read() {
    under_load(Mode::Inline, After::Survives, |d, _| {
        d.inject(Fault::AllOnesReads { reads: 1 }).unwrap();
    });
}

#[test]
fn fault_every_all_ones_reads_that_last() {
    under_load(Mode::Inline, After::Lost, |d, _| {
        d.inject(Fault::AllOnesReads { reads: 1_000_000 }).unwrap();
    });
}

#[test]
fn fault_every_surprise_removal() {
    under_load(Mode::Inline, After::Lost, |d, _| {
        d.inject(Fault::SurpriseRemoval).unwrap();
    });
}

#[test]
fn fault_every_disable_that_hangs_with_late_writes() {
    under_load(Mode::Inline, After::Lost, |d, c| {
        io(
            d,
            Target::Opcode {
                admin: false,
                opcode: opcode::nvm::READ,
                count: 4,
            },
            Action::Drop,
        );
        d.inject(Fault::DisableHangs).unwrap();
        d.inject(Fault::LateWrites { accesses: 1_000 }).unwrap();
        let _ = c.reset();
    });
}

/// The controller loses power and comes back in its power-on state (CC.EN = 0, no queues)
/// under load: the driver's commands time out, the Aborts go nowhere, and a reset brings it
/// back. Without a volatile write cache nothing acknowledged is lost, so the data verify
/// holds (losing unflushed writes is the WAL example's test, `tests/tests/vm_examples.rs`
/// and `examples/src/wal.rs`).
#[test]
fn fault_every_power_cut() {
    let cfg = EmuConfig {
        vwc: false,
        ..config(Mode::Inline)
    };
    under_load_with(cfg, After::Survives, true, |d, _| {
        d.power_cut();
    });
}
