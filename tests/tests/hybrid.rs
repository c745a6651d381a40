//! Hybrid completion for one queue pair (issue 13, item 4): `wait` spins on the CQ before it
//! arms the interrupt. Counted, never timed: a completion found while spinning costs no
//! interrupt (no wakeup is counted), a late one makes the wait arm and sleep (counted), and
//! every request still completes exactly once.

use std::sync::Arc;
use std::time::Duration;

use nvme_dio::QueuePairOptions;
use nvme_dio::{CompletionMode, Controller, ControllerOptions, Lba, MemoryOptions};
use nvme_dio_emu::{Action, EmuConfig, EmuFunction, Fault, Mode, NsConfig, Target};

fn bring_up(mode: Mode) -> (Arc<EmuFunction>, Controller<EmuFunction>) {
    let dev = Arc::new(
        EmuFunction::new(EmuConfig {
            mode,
            namespaces: vec![NsConfig::ram(1024, 4096)],
            ..EmuConfig::default()
        })
        .unwrap(),
    );
    let opts = ControllerOptions::default().memory(MemoryOptions::any_pages(8 << 20));
    let ctrl = Controller::new(Arc::clone(&dev), opts).unwrap();
    (dev, ctrl)
}

#[test]
fn completions_found_while_spinning_cost_no_interrupt() {
    // The emulator completes on its own thread, like hardware. A spin cap this large is
    // never used up by a device that answers at all, so every wait ends in the spin.
    let (_dev, ctrl) = bring_up(Mode::Thread);
    let ns = ctrl.namespace(1).unwrap().clone();
    let mut qp = ctrl
        .create_io_qpair(
            QueuePairOptions::default()
                .mode(CompletionMode::Hybrid)
                .hybrid_spin(u32::MAX),
        )
        .unwrap();
    for tag in 0..20 {
        let buf = ctrl.memory().alloc(4096, 4096).unwrap();
        qp.read(&ns, Lba(tag), buf, tag)
            .map_err(|r| r.error)
            .unwrap();
        let mut got = None;
        while got.is_none() {
            qp.wait(Duration::from_secs(5)).unwrap();
            got = qp.next_completion();
        }
        let c = got.unwrap();
        assert_eq!(c.tag, tag);
        c.result.unwrap();
    }
    let st = qp.stats();
    assert_eq!(st.sleeps, 0, "{st:?}");
    assert_eq!(
        st.interrupts, 0,
        "no wakeup: every completion was found spinning {st:?}"
    );
    assert!(st.spin_completions > 0, "{st:?}");
    assert_eq!((st.submitted, st.completed, st.errors), (20, 20, 0));
}

#[test]
fn a_late_completion_makes_the_wait_arm_and_sleep_and_it_still_comes_once() {
    let (dev, ctrl) = bring_up(Mode::Inline);
    let ns = ctrl.namespace(1).unwrap().clone();
    let mut qp = ctrl
        .create_io_qpair(
            QueuePairOptions::default()
                .mode(CompletionMode::Hybrid)
                .hybrid_spin(64),
        )
        .unwrap();
    // Executed, answered only when the test says so.
    dev.inject(Fault::Command {
        target: Target::NthIo(0),
        action: Action::Drop,
    })
    .unwrap();
    let buf = ctrl.memory().alloc(4096, 4096).unwrap();
    qp.write(&ns, Lba(9), buf, 7).map_err(|r| r.error).unwrap();
    // Nothing can complete: the spin runs out, the wait arms and sleeps, and times out.
    assert_eq!(qp.wait(Duration::from_millis(5)).unwrap(), 0);
    let st = qp.stats();
    assert_eq!((st.sleeps, st.spin_completions), (1, 0), "{st:?}");
    // The device answers (its MSI-X eventfd is signalled); the next wait delivers it.
    assert_eq!(dev.release_dropped(), 1);
    let mut done = Vec::new();
    while done.is_empty() {
        qp.wait(Duration::from_secs(5)).unwrap();
        done.extend(std::iter::from_fn(|| qp.next_completion()));
    }
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].tag, 7);
    done[0].result.as_ref().unwrap();
    qp.check_accounting().unwrap();
}
