//! Shadow doorbells (Doorbell Buffer Config, issue 13 item 3) against the emulated
//! controller: on only when asked for and offered, I/O through them checked by the
//! emulator's QEMU rule (an MMIO doorbell whose shadow entry disagrees is undefined
//! behaviour: QEMU acts on the shadow value), and set up again after every reset.

use std::sync::Arc;
use std::time::Duration;

use nvme_dio::{Controller, ControllerOptions, MemoryOptions, QueuePairOptions};
use nvme_dio_emu::{EmuConfig, EmuFunction, Mode, NsConfig};
use nvme_dio_tests::io::{Seg, write_read_verify};
use nvme_dio_tests::load::{self, Load};

const QUEUES: usize = 2;
const REGION: u64 = 1024;

fn bring_up(mode: Mode, offered: bool, asked: bool) -> (Arc<EmuFunction>, Controller<EmuFunction>) {
    let cfg = EmuConfig {
        mode,
        dbbuf: offered,
        namespaces: vec![NsConfig::ram(QUEUES as u64 * REGION, 4096)],
        ..EmuConfig::default()
    };
    let dev = Arc::new(EmuFunction::new(cfg).expect("emulated controller"));
    let opts = ControllerOptions::default()
        .memory(MemoryOptions::any_pages(8 << 20))
        .admin_timeout(Duration::from_secs(2))
        .shadow_doorbells(asked);
    let ctrl = Controller::new(Arc::clone(&dev), opts).expect("bring-up");
    (dev, ctrl)
}

fn assert_no_ub(dev: &EmuFunction) {
    let ub = dev.ub_events();
    assert!(
        ub.is_empty(),
        "the driver did something QEMU would not act on: {ub:?}"
    );
}

fn some_io(ctrl: &Controller<EmuFunction>, dev: &EmuFunction) {
    let ns = ctrl.namespace(1).expect("namespace 1").clone();
    let mut qp = ctrl
        .create_io_qpair(QueuePairOptions::default().entries(8))
        .expect("queue pair");
    // More I/Os than the queue has entries: both rings wrap several times.
    for i in 0..40u64 {
        write_read_verify(
            ctrl,
            &mut qp,
            &ns,
            i * 2,
            &[Seg {
                offset: 0,
                len: 8192,
            }],
            i,
        );
    }
    assert_no_ub(dev);
}

#[test]
fn off_unless_asked_for_and_offered() {
    for (offered, asked) in [(true, false), (false, true), (false, false)] {
        let (dev, ctrl) = bring_up(Mode::Inline, offered, asked);
        assert!(
            !ctrl.info().shadow_doorbells,
            "offered {offered}, asked {asked}"
        );
        assert_eq!(dev.stats().dbbuf_configs, 0);
        some_io(&ctrl, &dev);
    }
}

#[test]
fn io_through_shadow_doorbells_keeps_the_qemu_rule() {
    for mode in [Mode::Inline, Mode::Thread] {
        let (dev, ctrl) = bring_up(mode, true, true);
        assert!(ctrl.info().shadow_doorbells);
        assert_eq!(dev.stats().dbbuf_configs, 1);
        some_io(&ctrl, &dev);
        // A qid used before gets fresh shadow entries: a new queue pair starts from 0.
        some_io(&ctrl, &dev);
    }
}

#[test]
fn a_reset_sets_them_up_again_and_queue_pairs_carry_on() {
    let (dev, ctrl) = bring_up(Mode::Inline, true, true);
    let c2 = ctrl.clone();
    let l = Load {
        queues: QUEUES,
        qd: 16,
        ios: 1200,
        region_blocks: REGION,
        qp: QueuePairOptions::default()
            .entries(32)
            .timeout(Duration::from_millis(300)),
        stall: Duration::from_secs(20),
        fault_after: 300,
        max_time: Duration::from_secs(120),
    };
    let (c, written) = load::run(&ctrl, &l, move || {
        c2.reset().expect("reset");
    });
    assert_eq!(c.submitted, c.success + c.error, "{c:?}");
    assert_eq!(ctrl.resets(), 1);
    assert_eq!(
        dev.stats().dbbuf_configs,
        2,
        "Doorbell Buffer Config at bring-up and after the reset"
    );
    assert!(c.success > 600, "{c:?}");
    assert!(load::verify(&ctrl, &written) > 100);
    assert_no_ub(&dev);
}
