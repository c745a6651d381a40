//! Recovery that never makes an I/O thread wait (issue 12, defect 6): an Abort is sent, not
//! waited for, and a submission made while another thread resets the controller is accepted
//! at once and goes out on the re-created queues. Deterministic: the emulator holds the
//! commands the test names (an Abort, the reset's Set Features) until the test lets them go;
//! the assertions look at what is held and counted, never at how long anything took.

use std::sync::Arc;
use std::time::Duration;

use nvme_dio::{Completion, Controller, ControllerOptions, IoQueuePair, Lba, MemoryOptions};
use nvme_dio::{PciFunction, QueuePairOptions};
use nvme_dio_emu::{Action, EmuConfig, EmuFunction, Fault, Mode, NsConfig, Target};
use nvme_dio_queue::opcode;

fn emu() -> Arc<EmuFunction> {
    let cfg = EmuConfig {
        mode: Mode::Inline,
        namespaces: vec![NsConfig::ram(4096, 4096)],
        ..EmuConfig::default()
    };
    Arc::new(EmuFunction::new(cfg).expect("emulated controller"))
}

fn controller(dev: &Arc<EmuFunction>) -> Controller<EmuFunction> {
    let opts = ControllerOptions::default()
        .memory(MemoryOptions::any_pages(8 << 20))
        .admin_timeout(Duration::from_secs(2));
    Controller::new(Arc::clone(dev), opts).expect("controller up")
}

fn hold_next_admin(dev: &EmuFunction, opcode: u8, action: Action) {
    dev.inject(Fault::Command {
        target: Target::Opcode {
            admin: true,
            opcode,
            count: 1,
        },
        action,
    })
    .expect("inject");
}

/// Every completion until none is in flight (bounded by polls, not time).
fn collect<D: PciFunction>(qp: &mut IoQueuePair<D>) -> Vec<Completion> {
    let mut out = Vec::new();
    for _ in 0..10_000_000 {
        qp.poll();
        out.extend(std::iter::from_fn(|| qp.next_completion()));
        if qp.outstanding() == 0 {
            break;
        }
    }
    out
}

#[test]
fn fault_an_abort_that_is_never_answered_does_not_hold_up_the_io_thread() {
    let dev = emu();
    let ctrl = controller(&dev);
    let ns = ctrl.namespace(1).unwrap().clone();
    let mut qp = ctrl
        .create_io_qpair(
            QueuePairOptions::default()
                .entries(16)
                .timeout(Duration::from_millis(20)),
        )
        .unwrap();
    // The read is executed but never answered; the Abort sent for it is lost in the device
    // (neither executed nor answered).
    dev.inject(Fault::Command {
        target: Target::NthIo(0),
        action: Action::Drop,
    })
    .unwrap();
    hold_next_admin(&dev, opcode::admin::ABORT, Action::Lose);
    let buf = ctrl.memory().alloc(4096, 4096).unwrap();
    qp.read(&ns, Lba(3), buf, 1).map_err(|r| r.error).unwrap();
    while qp.stats().aborts_sent == 0 {
        qp.poll();
    }
    // The poll that sent the Abort came back while the Abort is still unanswered. (Before
    // the fix it waited the admin timeout for the answer, then reset the controller, which
    // dropped both held commands.)
    assert_eq!(
        dev.held_commands(),
        2,
        "the read and its Abort, both unanswered"
    );
    let st = qp.stats();
    assert_eq!((st.timeouts, st.resets_requested), (1, 0));
    assert_eq!(ctrl.resets(), 0);
    // The grace period runs out into a reset; the read is placed again on the new queues
    // (retries are on by default) and completes once.
    let done = collect(&mut qp);
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].tag, 1);
    done[0].result.as_ref().expect("retried after the reset");
    assert_eq!(ctrl.resets(), 1);
    let st = qp.stats();
    assert_eq!((st.submitted, st.completed, st.errors), (1, 1, 0));
}

#[test]
fn fault_a_submission_while_another_thread_resets_is_accepted_at_once_and_goes_out_after() {
    let dev = emu();
    let ctrl = controller(&dev);
    let ns = ctrl.namespace(1).unwrap().clone();
    let mut qp = ctrl
        .create_io_qpair(QueuePairOptions::default().entries(16))
        .unwrap();
    // The reset stops at its Set Features (Number of Queues) until the test releases it.
    hold_next_admin(&dev, opcode::admin::SET_FEATURES, Action::Drop);
    std::thread::scope(|sc| {
        let resetter = sc.spawn(|| ctrl.reset());
        while dev.held_commands() == 0 {
            std::thread::yield_now();
        }
        let buf = ctrl.memory().alloc(4096, 4096).unwrap();
        qp.write(&ns, Lba(5), buf, 9)
            .map_err(|r| r.error)
            .expect("accepted while the reset runs");
        // Accepted while the reset still waits: the submitter did not wait for it. (Before
        // the fix it slept until the reset settled, which here took the admin timeout and a
        // second attempt.)
        assert_eq!(
            dev.held_commands(),
            1,
            "the reset's Set Features is still held"
        );
        assert_eq!(ctrl.resets(), 0);
        assert_eq!(qp.stats().commands, 0, "nothing placed on the old queues");
        assert_eq!(dev.release_dropped(), 1);
        resetter.join().unwrap().expect("the reset completes");
    });
    let done = collect(&mut qp);
    assert_eq!(done.len(), 1, "delivered once");
    assert_eq!(done[0].tag, 9);
    done[0].result.as_ref().expect("written on the new queues");
    assert_eq!(ctrl.resets(), 1);
    let st = qp.stats();
    assert_eq!(
        (st.submitted, st.completed, st.errors, st.commands),
        (1, 1, 0, 1)
    );
}
