//! Faults survived, nothing lost: each fault the emulated controller can inject, under load
//! at QD 32 on several queue pairs. Every test checks submitted = success + error, that every
//! request completed exactly once (the load harness panics on a second completion or a
//! hang), and, where the controller survives, that a verify pass reads back every block whose
//! last write succeeded. Run them all with `cargo test --workspace fault`.

use std::sync::Arc;
use std::time::Duration;

use nvme_dio::{Controller, ControllerOptions, Error, Lba, MemoryOptions, QueuePairOptions};
use nvme_dio_emu::{Action, EmuConfig, EmuFunction, Fault, Mode, NsConfig, Target};
use nvme_dio_queue::Status;
use nvme_dio_queue::opcode;
use nvme_dio_queue::status::{sc, sct};
use nvme_dio_tests::load::{self, Counts, Load};

const QUEUES: usize = 4;
const REGION: u64 = 1024;

fn bring_up(mode: Mode) -> (Arc<EmuFunction>, Controller<EmuFunction>) {
    let cfg = EmuConfig {
        mode,
        namespaces: vec![NsConfig::ram(QUEUES as u64 * REGION, 4096)],
        ..EmuConfig::default()
    };
    let dev = Arc::new(EmuFunction::new(cfg).expect("emulated controller"));
    let opts = ControllerOptions::default()
        .memory(MemoryOptions::any_pages(8 << 20))
        .admin_timeout(Duration::from_secs(2));
    let ctrl = Controller::new(Arc::clone(&dev), opts).expect("bring-up");
    (dev, ctrl)
}

fn load(ios: u64) -> Load {
    Load {
        queues: QUEUES,
        qd: 32,
        ios,
        region_blocks: REGION,
        qp: QueuePairOptions::default()
            .entries(64)
            .timeout(Duration::from_millis(300)),
        stall: Duration::from_secs(20),
        fault_after: ios / 4,
        max_time: Duration::from_secs(120),
    }
}

fn check_accounting(c: &Counts) {
    assert_eq!(
        c.submitted,
        c.success + c.error,
        "every accepted request completed exactly once: {c:?}"
    );
}

/// Completed-with-error requests whose message contains `needle` (refusals not counted).
fn errors_matching(c: &Counts, needle: &str) -> u64 {
    c.errors
        .iter()
        .filter(|(e, _)| !e.starts_with("refused: ") && e.contains(needle))
        .map(|(_, n)| n)
        .sum()
}

#[test]
fn fault_error_status_is_delivered_with_its_name() {
    let (dev, ctrl) = bring_up(Mode::Inline);
    let d = Arc::clone(&dev);
    let (c, written) = load::run(&ctrl, &load(1500), move || {
        let status = Status::new(sct::GENERIC, sc::INTERNAL_ERROR).with_dnr();
        d.inject(Fault::Command {
            target: Target::NthIo(3),
            action: Action::Status(status),
        })
        .unwrap();
    });
    check_accounting(&c);
    assert_eq!(c.error, 1, "{c:?}");
    assert_eq!(
        errors_matching(&c, "Internal Error (sct 0, sc 0x06, DNR)"),
        1,
        "{c:?}"
    );
    assert!(load::verify(&ctrl, &written) > 500);
    assert!(dev.ub_events().is_empty(), "{:?}", dev.ub_events());
}

#[test]
fn fault_dropped_completion_times_out_and_is_aborted() {
    let (dev, ctrl) = bring_up(Mode::Inline);
    let d = Arc::clone(&dev);
    let (c, written) = load::run(&ctrl, &load(1500), move || {
        d.inject(Fault::Command {
            target: Target::NthIo(5),
            action: Action::Drop,
        })
        .unwrap();
    });
    check_accounting(&c);
    assert_eq!(c.error, 1, "{c:?}");
    assert_eq!(
        errors_matching(&c, "timed out"),
        1,
        "the dropped command is aborted and reported as a timeout: {c:?}"
    );
    assert_eq!(ctrl.resets(), 0, "an abort that works needs no reset");
    assert!(load::verify(&ctrl, &written) > 500);
    assert!(dev.ub_events().is_empty(), "{:?}", dev.ub_events());
}

#[test]
fn fault_completion_delayed_past_the_deadline_times_out() {
    let (dev, ctrl) = bring_up(Mode::Thread);
    let d = Arc::clone(&dev);
    let (c, written) = load::run(&ctrl, &load(1500), move || {
        d.inject(Fault::Command {
            target: Target::NthIo(7),
            action: Action::Delay(Duration::from_secs(3)),
        })
        .unwrap();
    });
    check_accounting(&c);
    assert_eq!(c.error, 1, "{c:?}");
    assert_eq!(errors_matching(&c, "timed out"), 1, "{c:?}");
    assert!(load::verify(&ctrl, &written) > 500);
    assert!(dev.ub_events().is_empty(), "{:?}", dev.ub_events());
}

#[test]
fn fault_delayed_completion_within_the_deadline_succeeds() {
    let (dev, ctrl) = bring_up(Mode::Thread);
    let d = Arc::clone(&dev);
    let (c, _) = load::run(&ctrl, &load(800), move || {
        d.inject(Fault::Command {
            target: Target::NthIo(7),
            action: Action::Delay(Duration::from_millis(50)),
        })
        .unwrap();
    });
    check_accounting(&c);
    assert_eq!(c.error, 0, "{c:?}");
}

#[test]
fn fault_stuck_command_the_abort_cannot_free_resets_the_controller() {
    let (dev, ctrl) = bring_up(Mode::Inline);
    let d = Arc::clone(&dev);
    let (c, written) = load::run(&ctrl, &load(1500), move || {
        // The command never completes, and the Abort for it "succeeds" without finding it.
        d.inject(Fault::Command {
            target: Target::NthIo(5),
            action: Action::Drop,
        })
        .unwrap();
        d.inject(Fault::Command {
            target: Target::Opcode {
                admin: true,
                opcode: opcode::admin::ABORT,
                count: 1,
            },
            action: Action::Status(Status::SUCCESS),
        })
        .unwrap();
    });
    check_accounting(&c);
    assert_eq!(ctrl.resets(), 1, "{c:?}");
    // The stuck command and the requests in flight at the reset are submitted again on the
    // new queues (retries, 3 by default): they fail only if they fail again.
    assert_eq!(
        c.error,
        errors_matching(&c, "aborted: the controller was reset") + errors_matching(&c, "timed out"),
        "only the stuck command and the requests in flight at the reset may fail: {c:?}"
    );
    // The queue pairs kept working after the reset: most requests succeeded.
    assert!(c.success > 5000, "{c:?}");
    assert!(load::verify(&ctrl, &written) > 500);
}

#[test]
fn fault_controller_fatal_status_resets_and_recovers() {
    let (dev, ctrl) = bring_up(Mode::Inline);
    let d = Arc::clone(&dev);
    let (c, written) = load::run(&ctrl, &load(1500), move || {
        d.inject(Fault::ControllerFatal).unwrap();
    });
    check_accounting(&c);
    assert_eq!(ctrl.resets(), 1, "{c:?}");
    assert_eq!(
        c.error,
        errors_matching(&c, "aborted: the controller was reset"),
        "{c:?}"
    );
    assert!(c.success > 5000, "{c:?}");
    assert!(load::verify(&ctrl, &written) > 500);
}

#[test]
fn fault_surprise_removal_fails_everything_fast() {
    let (dev, ctrl) = bring_up(Mode::Inline);
    let d = Arc::clone(&dev);
    let (c, _) = load::run(&ctrl, &load(1500), move || {
        d.inject(Fault::SurpriseRemoval).unwrap();
    });
    check_accounting(&c);
    assert!(
        c.submitted < 6000,
        "submission stopped after the removal: {c:?}"
    );
    assert_eq!(c.error, errors_matching(&c, "device gone"), "{c:?}");
    assert!(
        c.refused >= 1,
        "new requests are refused once the device is gone: {c:?}"
    );
    // New queue pairs and requests fail fast with the same error.
    let e = ctrl
        .create_io_qpair(QueuePairOptions::default())
        .unwrap_err();
    assert!(matches!(e, Error::DeviceGone { .. }), "{e}");
}

#[test]
fn fault_surprise_removal_wakes_interrupt_waiters() {
    let (dev, ctrl) = bring_up(Mode::Thread);
    let ns = ctrl.namespace(1).unwrap().clone();
    let mut qp = ctrl
        .create_io_qpair(QueuePairOptions::default().mode(nvme_dio::CompletionMode::Interrupt))
        .unwrap();
    dev.inject(Fault::Command {
        target: Target::NthIo(0),
        action: Action::Drop,
    })
    .unwrap();
    qp.read(&ns, Lba(0), ctrl.memory().alloc(4096, 4096).unwrap(), 1)
        .unwrap();
    qp.ring();
    dev.inject(Fault::SurpriseRemoval).unwrap();
    // Bounded by a count of waits, not by the clock: the removal signals the eventfd, so
    // the first wait returns with the failed request.
    let mut waits = 0;
    let c = loop {
        qp.wait(Duration::from_secs(1)).unwrap();
        waits += 1;
        if let Some(c) = qp.next_completion() {
            break c;
        }
        assert!(waits < 10, "the waiter never woke");
    };
    assert!(
        matches!(c.result, Err(Error::DeviceGone { .. })),
        "{:?}",
        c.result
    );
    assert!(c.bufs.into_one().is_some());
}

#[test]
fn fault_stale_and_duplicate_cqes_are_counted_not_trusted() {
    for action in [Action::StaleCqe, Action::DuplicateCqe] {
        let (dev, ctrl) = bring_up(Mode::Inline);
        let ns = ctrl.namespace(1).unwrap().clone();
        let mut qp = ctrl
            .create_io_qpair(QueuePairOptions::default().entries(64))
            .unwrap();
        dev.inject(Fault::Command {
            target: Target::NthIo(10),
            action,
        })
        .unwrap();
        let mut done = 0;
        for i in 0..100u64 {
            qp.read(&ns, Lba(i), ctrl.memory().alloc(4096, 4096).unwrap(), i)
                .unwrap();
            qp.poll();
            while let Some(c) = qp.next_completion() {
                c.result.unwrap();
                done += 1;
            }
        }
        while done < 100 {
            qp.wait(Duration::from_millis(100)).unwrap();
            while let Some(c) = qp.next_completion() {
                c.result.unwrap();
                done += 1;
            }
        }
        assert_eq!(done, 100, "{action:?}: each request completed exactly once");
        assert_eq!(qp.stats().completed, 100);
        assert_eq!(qp.stats().stale_cqes, 1, "{action:?}: {:?}", qp.stats());
    }
}

#[test]
fn fault_reset_under_load_keeps_queue_pairs_working() {
    let (dev, ctrl) = bring_up(Mode::Inline);
    let c2 = ctrl.clone();
    let (c, written) = load::run(&ctrl, &load(1500), move || {
        c2.reset().expect("reset");
    });
    check_accounting(&c);
    assert_eq!(ctrl.resets(), 1);
    assert_eq!(
        c.error,
        errors_matching(&c, "aborted: the controller was reset"),
        "{c:?}"
    );
    assert!(c.success > 5000, "{c:?}");
    assert!(load::verify(&ctrl, &written) > 500);
    assert!(dev.ub_events().is_empty(), "{:?}", dev.ub_events());
}

/// Issue 12, defect 5 (idle half): a queue pair with nothing in flight, polled now and then
/// (a reactor's timer), still notices that the device went away: its next submission is
/// refused as gone, without a request having to time out first. Before, the device was
/// looked at only while commands were in flight.
#[test]
fn fault_an_idle_queue_pair_notices_a_removed_device() {
    let (dev, ctrl) = bring_up(Mode::Inline);
    let ns = ctrl.namespace(1).unwrap().clone();
    let mut qp = ctrl.create_io_qpair(QueuePairOptions::default()).unwrap();
    dev.inject(Fault::SurpriseRemoval).unwrap();
    // Poll as an idle reactor would, a few times a second; give up after 10 s (a hang
    // detector, not a measurement: the driver looks once a second).
    let mut noticed = false;
    for _ in 0..200 {
        qp.poll();
        if ctrl.is_gone() {
            noticed = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(noticed, "an idle queue pair never noticed the removal");
    let buf = ctrl.memory().alloc(4096, 4096).unwrap();
    let r = qp.read(&ns, Lba(0), buf, 1).unwrap_err();
    assert!(
        matches!(*r.error, Error::DeviceGone { .. }),
        "refused as gone: {}",
        r.error
    );
}
