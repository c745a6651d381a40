//! Asynchronous events against the emulated controller: AERs kept outstanding, injected
//! events delivered typed, the log page read that re-enables an event type, health
//! warnings, firmware activation, namespaces added, resized and removed at run time, and
//! AERs placed again after a reset.

use std::sync::Arc;
use std::time::Duration;

use nvme_dio::{
    AsyncEvent, Controller, ControllerOptions, ErrorEvent, ErrorKind, Event, HealthEvent, Lba,
    MemoryOptions, NamespaceChanges, Nsid, QueuePairOptions,
};
use nvme_dio_emu::{EmuConfig, EmuFunction, Health, Mode, NsConfig};
use nvme_dio_tests::io::wait_one;

fn bring_up(namespaces: Vec<NsConfig>, mode: Mode) -> (Arc<EmuFunction>, Controller<EmuFunction>) {
    let cfg = EmuConfig {
        namespaces,
        mode,
        ..EmuConfig::default()
    };
    let dev = Arc::new(EmuFunction::new(cfg).expect("emulated controller"));
    let opts = ControllerOptions::default().memory(MemoryOptions::any_pages(16 << 20));
    let ctrl = Controller::new(Arc::clone(&dev), opts).expect("bring-up");
    (dev, ctrl)
}

fn one_ns() -> Vec<NsConfig> {
    vec![NsConfig::ram(1 << 12, 4096)]
}

#[test]
fn aers_are_kept_outstanding_and_deliver_an_injected_event() {
    let (dev, ctrl) = bring_up(one_ns(), Mode::Inline);
    // Bring-up enabled every SMART warning and both notices the controller lists in OAES,
    // and left AERs outstanding (the emulator's AERL allows 4).
    assert_eq!(dev.async_event_config(), 0xff | 1 << 8 | 1 << 9);
    assert_eq!(dev.outstanding_aers(), 4, "{}", dev.describe_queues());
    assert_eq!(ctrl.poll_events().unwrap(), vec![], "nothing happened yet");

    dev.raise_event(AsyncEvent::Health(HealthEvent::Temperature));
    // The admin queue's interrupt says an event is there.
    let fd = ctrl.event_fd().expect("MSI-X is on");
    assert!(fd.read().unwrap() >= 1);
    assert_eq!(
        ctrl.poll_events().unwrap(),
        vec![Event::Health(HealthEvent::Temperature)]
    );
    assert_eq!(dev.outstanding_aers(), 4, "the AER used was placed again");

    // The same type again: the controller masks a type until its log page is read, so
    // this one arrives only because poll_events read the SMART log.
    dev.raise_event(AsyncEvent::Health(HealthEvent::Reliability));
    dev.raise_event(AsyncEvent::Error(ErrorEvent::PersistentInternal));
    let got = ctrl.poll_events().unwrap();
    assert_eq!(
        got,
        vec![
            Event::Health(HealthEvent::Reliability),
            Event::Error(ErrorEvent::PersistentInternal)
        ]
    );
    assert_eq!(dev.events(), (3, 0), "all delivered, none waiting");

    // More events than AERs, of one type: each waits in the controller until the log
    // read for the one before unmasks the type, and comes on a later call.
    for _ in 0..6 {
        dev.raise_event(AsyncEvent::Error(ErrorEvent::TransientInternal));
    }
    let mut n = 0;
    for _ in 0..10 {
        n += ctrl.poll_events().unwrap().len();
    }
    assert_eq!(n, 6, "every event delivered once");
    assert!(dev.ub_events().is_empty(), "{:?}", dev.ub_events());
}

#[test]
fn health_warnings_and_firmware_activation_come_typed() {
    let (dev, ctrl) = bring_up(one_ns(), Mode::Thread);
    dev.set_health(Health {
        critical_warning: 0b11, // spare below threshold, temperature
        temperature_kelvin: 273 + 85,
        available_spare: 5,
        ..Health::default()
    });
    dev.raise_event(AsyncEvent::FirmwareActivationStarting);
    let mut got = Vec::new();
    // Thread mode: the controller posts on its own thread; poll until all three are in.
    let start = std::time::Instant::now();
    while got.len() < 3 {
        got.extend(ctrl.poll_events().unwrap());
        assert!(start.elapsed() < Duration::from_secs(30), "{got:?}");
        std::thread::yield_now();
    }
    got.sort_by_key(|e| format!("{e:?}"));
    assert_eq!(
        got,
        vec![
            Event::FirmwareActivation,
            Event::Health(HealthEvent::SpareBelowThreshold),
            Event::Health(HealthEvent::Temperature),
        ]
    );
}

#[test]
fn events_come_through_again_after_a_reset() {
    let (dev, ctrl) = bring_up(one_ns(), Mode::Inline);
    ctrl.reset().unwrap();
    // The reset made the controller forget its AERs and its event configuration.
    assert_eq!(
        dev.outstanding_aers(),
        4,
        "AERs placed again after the reset"
    );
    assert_eq!(dev.async_event_config(), 0xff | 1 << 8 | 1 << 9);
    dev.raise_event(AsyncEvent::Health(HealthEvent::SpareBelowThreshold));
    assert_eq!(
        ctrl.poll_events().unwrap(),
        vec![Event::Health(HealthEvent::SpareBelowThreshold)]
    );
}

#[test]
fn namespaces_added_resized_and_removed_at_run_time_are_seen() {
    let (dev, ctrl) = bring_up(
        vec![NsConfig::ram(1024, 4096), NsConfig::ram(256, 512)],
        Mode::Inline,
    );
    let mut qp = ctrl.create_io_qpair(QueuePairOptions::default()).unwrap();
    let ns1 = ctrl.namespace(1).unwrap();
    let ns2 = ctrl.namespace(2).unwrap();
    assert_eq!(ctrl.namespaces().len(), 2);

    // Added.
    let nsid = dev.add_namespace(NsConfig::ram(512, 4096)).unwrap();
    assert_eq!(nsid, 3);
    assert_eq!(
        ctrl.poll_events().unwrap(),
        vec![Event::Namespaces(NamespaceChanges {
            added: vec![Nsid(3)],
            ..Default::default()
        })]
    );
    let ns3 = ctrl.namespace(3).unwrap();
    assert_eq!((ns3.blocks(), ns3.lba_size()), (512, 4096));
    let buf = ctrl.memory().alloc(4096, 4096).unwrap();
    buf.fill(0x5a);
    qp.write(&ns3, Lba(511), buf, 1)
        .map_err(|r| r.error)
        .unwrap();
    wait_one(&mut qp, Duration::from_secs(10)).result.unwrap();

    // Resized: the list has the new size; the block past the old end is usable.
    dev.resize_namespace(1, 2048).unwrap();
    assert_eq!(
        ctrl.poll_events().unwrap(),
        vec![Event::Namespaces(NamespaceChanges {
            resized: vec![(Nsid(1), 1024, 2048)],
            ..Default::default()
        })]
    );
    let grown = ctrl.namespace(1).unwrap();
    assert_eq!(grown.blocks(), 2048);
    assert_eq!(ns1.blocks(), 1024, "an old copy is a snapshot");
    let buf = ctrl.memory().alloc(4096, 4096).unwrap();
    qp.read(&grown, Lba(2047), buf, 2)
        .map_err(|r| r.error)
        .unwrap();
    wait_one(&mut qp, Duration::from_secs(10)).result.unwrap();

    // Removed: it leaves the list, and every copy refuses I/O with a clear error.
    dev.remove_namespace(2).unwrap();
    assert_eq!(
        ctrl.poll_events().unwrap(),
        vec![Event::Namespaces(NamespaceChanges {
            removed: vec![Nsid(2)],
            ..Default::default()
        })]
    );
    assert!(ns2.is_removed());
    assert_eq!(
        ctrl.namespaces()
            .iter()
            .map(|n| n.id().0)
            .collect::<Vec<_>>(),
        [1, 3]
    );
    let buf = ctrl.memory().alloc(512, 4096).unwrap();
    let r = qp.read(&ns2, Lba(0), buf, 3).unwrap_err();
    assert_eq!(r.error.kind(), ErrorKind::OutOfRange);
    assert!(r.error.to_string().contains("was removed"), "{}", r.error);
    assert!(!r.bufs.is_none(), "the buffer comes back");
    let r = qp.flush(&ns2, 4).unwrap_err();
    assert!(
        matches!(*r.error, nvme_dio::Error::NamespaceRemoved { .. }),
        "{}",
        r.error
    );
    assert!(ctrl.namespace(2).is_err());
    // The others are untouched.
    assert!(!ns1.is_removed() && !ns3.is_removed());
    let buf = ctrl.memory().alloc(4096, 4096).unwrap();
    qp.read(&ns3, Lba(511), buf, 5)
        .map_err(|r| r.error)
        .unwrap();
    let c = wait_one(&mut qp, Duration::from_secs(10));
    c.result.unwrap();
    let mut b = [0u8; 4];
    c.bufs.into_one().unwrap().copy_to_slice(0, &mut b).unwrap();
    assert_eq!(b, [0x5a; 4]);

    // Several changes before one poll: one refresh sees them all.
    dev.add_namespace(NsConfig::null(1 << 20, 4096)).unwrap();
    dev.resize_namespace(3, 100).unwrap();
    let got = ctrl.poll_events().unwrap();
    assert_eq!(
        got,
        vec![Event::Namespaces(NamespaceChanges {
            added: vec![Nsid(4)],
            resized: vec![(Nsid(3), 512, 100)],
            removed: vec![],
        })]
    );
    assert!(dev.ub_events().is_empty(), "{:?}", dev.ub_events());
}

#[test]
fn a_temperature_threshold_below_the_temperature_raises_a_health_event() {
    use nvme_dio::spec::opcode::feature;
    let (_dev, ctrl) = bring_up(one_ns(), Mode::Inline);
    assert_eq!(
        ctrl.get_feature(feature::TEMPERATURE_THRESHOLD).unwrap(),
        343
    );
    // 40 C now; a 30 C (303 K) over-temperature threshold is crossed at once.
    ctrl.set_feature(feature::TEMPERATURE_THRESHOLD, 303)
        .unwrap();
    assert_eq!(
        ctrl.poll_events().unwrap(),
        vec![Event::Health(HealthEvent::Temperature)]
    );
    assert!(ctrl.smart_log().unwrap().critical_warning.temperature());
    assert_eq!(
        ctrl.get_feature(feature::TEMPERATURE_THRESHOLD).unwrap(),
        303
    );
}

/// An AER never completes, so nothing but a later command says the controller fetched it:
/// a controller dropped right after bring-up must not leave an AER entry unfetched in an
/// admin SQ that is unmapped next (the VM suite saw QEMU read it: an IOMMU fault, CFS).
/// The threaded emulator fetches entries on its own thread, as QEMU does.
#[test]
fn a_controller_dropped_at_once_leaves_no_aer_unfetched() {
    for i in 0..40 {
        let cfg = EmuConfig {
            mode: Mode::Thread,
            ..EmuConfig::default()
        };
        let dev = Arc::new(EmuFunction::new(cfg).unwrap());
        let opts = ControllerOptions::default().memory(MemoryOptions::any_pages(16 << 20));
        let ctrl = Controller::new(Arc::clone(&dev), opts).unwrap();
        drop(ctrl);
        // Let the controller's thread run whatever it still had.
        std::thread::sleep(Duration::from_millis(2));
        assert_eq!(dev.err_events(), Vec::<String>::new(), "run {i}");
        assert_eq!(dev.outstanding_aers(), 4, "run {i}: every AER was fetched");
    }
}
