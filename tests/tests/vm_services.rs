//! Long-running services through VFIO against QEMU's NVMe, in the VM guest (ci/vm-test):
//! a poll group over two controllers, hybrid completion through MSI-X, interrupt coalescing
//! and an asynchronous event from QEMU, and the SMART, error and firmware logs and features
//! read from QEMU. `#[ignore]`d on the host (no device); the guest runs them with
//! `--include-ignored`.
//!
//! Controllers (ci/vm/README.md): `default` and `mdts0`, both with QEMU's 65 MSI-X vectors.
//! Everything here only reads the disks.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nvme_dio::spec::opcode::feature;
use nvme_dio::{
    COMMON_FEATURES, Coalescing, CompletionMode, Controller, ControllerOptions, Event, GroupMode,
    HealthEvent, Lba, MemberId, PollGroup, QueuePairOptions, decode_feature,
};
use nvme_dio_dma::VfioFunction;
use nvme_dio_tests::vm;

fn open(role: &str, opts: ControllerOptions) -> Controller<VfioFunction> {
    let c =
        vm::controller(role).unwrap_or_else(|| panic!("no {role} controller: not in the VM guest"));
    let dev = VfioFunction::open(&c.bdf).unwrap_or_else(|e| panic!("{}: {e}", c.bdf));
    Controller::new(Arc::new(dev), opts).unwrap_or_else(|e| panic!("{}: {}", c.bdf, e.report()))
}

fn irq() -> QueuePairOptions {
    QueuePairOptions::with_entries(64).mode(CompletionMode::Interrupt)
}

#[test]
#[ignore = "VM suite: needs the QEMU guest, run ci/vm-test"]
fn vm_services_poll_group_over_two_controllers_delivers_each_tag_once() {
    const TOTAL: u64 = 2000;
    let ctrls = [
        open("default", ControllerOptions::default()),
        open("mdts0", ControllerOptions::default()),
    ];
    let mut group = PollGroup::new(GroupMode::Hybrid { idle_polls: 2000 }).unwrap();
    let mut members: Vec<(MemberId, usize)> = Vec::new();
    for (c, ctrl) in ctrls.iter().enumerate() {
        for _ in 0..4 {
            members.push((group.add(ctrl.create_io_qpair(irq()).unwrap()).unwrap(), c));
        }
    }
    let submit = |group: &mut PollGroup<VfioFunction>, m: usize, next: &mut u64| {
        let (id, c) = members[m];
        let ctrl = &ctrls[c];
        let ns = ctrl.namespace(1).unwrap();
        let tag = *next << 8 | m as u64;
        let buf = ctrl.memory().alloc(4096, 4096).unwrap();
        group
            .qpair_mut(id)
            .unwrap()
            .read(&ns, Lba(*next % 4096), buf, tag)
            .map_err(|r| r.error)
            .unwrap();
        *next += 1;
    };
    let mut next = 0;
    for m in 0..members.len() {
        for _ in 0..4 {
            submit(&mut group, m, &mut next);
        }
    }
    let mut seen: HashMap<u64, u32> = HashMap::new();
    let start = Instant::now();
    while (seen.len() as u64) < next {
        group.wait(Duration::from_millis(500)).unwrap();
        while let Some((id, c)) = group.next_completion() {
            c.result.unwrap();
            let m = (c.tag & 0xff) as usize;
            assert_eq!(members[m].0, id, "tag {:#x} from the wrong member", c.tag);
            *seen.entry(c.tag).or_default() += 1;
            if next < TOTAL {
                submit(&mut group, m, &mut next);
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "stuck at {} of {next}: {:?}",
            seen.len(),
            group.stats()
        );
    }
    assert_eq!(seen.len() as u64, TOTAL);
    assert!(seen.values().all(|&n| n == 1), "a tag delivered twice");
    for (_, qp) in group.members() {
        qp.check_accounting().unwrap();
        assert_eq!(qp.stats().stale_cqes, 0);
    }
    println!(
        "8 queue pairs on 2 controllers, {TOTAL} reads: {:?}",
        group.stats()
    );
}

#[test]
#[ignore = "VM suite: needs the QEMU guest, run ci/vm-test"]
fn vm_services_hybrid_sleeps_on_msix_and_wakes_on_completions() {
    let ctrl = open("default", ControllerOptions::default());
    let ns = ctrl.namespace(1).unwrap();
    let mut group = PollGroup::new(GroupMode::Interrupt).unwrap();
    let id = group.add(ctrl.create_io_qpair(irq()).unwrap()).unwrap();

    // Idle: nothing in flight, the group sleeps the whole wait (counts, not time).
    let before = group.stats();
    assert_eq!(group.wait(Duration::from_millis(300)).unwrap(), 0);
    let idle = group.stats();
    assert!(idle.sleeps > before.sleeps, "{idle:?}");
    assert!(
        idle.polls - before.polls <= 2 + 2 * (idle.sleeps - before.sleeps),
        "polled only around its sleeps: {before:?} -> {idle:?}"
    );

    // QD 1 reads: each wait arms the interrupt and sleeps; MSI-X wakes it.
    for i in 0..200u64 {
        let buf = ctrl.memory().alloc(4096, 4096).unwrap();
        let qp = group.qpair_mut(id).unwrap();
        qp.read(&ns, Lba(i), buf, i).map_err(|r| r.error).unwrap();
        let c = loop {
            group.wait(Duration::from_secs(5)).unwrap();
            if let Some((_, c)) = group.next_completion() {
                break c;
            }
        };
        assert_eq!(c.tag, i);
        c.result.unwrap();
    }
    let s = group.stats();
    println!("200 QD 1 reads in interrupt mode: {s:?}");
    assert!(s.sleeps > idle.sleeps, "{s:?}");
    assert!(s.wakeups > idle.wakeups, "MSI-X woke the group: {s:?}");
    let qs = group.qpair(id).unwrap().stats();
    assert_eq!(qs.completed, 200, "{qs:?}");
}

#[test]
#[ignore = "VM suite: needs the QEMU guest, run ci/vm-test"]
fn vm_services_smart_error_firmware_logs_and_features_from_qemu() {
    // QEMU 7.2 has no interrupt coalescing: Set Features 08h is refused with Feature Not
    // Changeable, and bring-up says so clearly.
    vm::expect_trace_err("pci_nvme_err_req_status");
    let c = Coalescing::new(8, Duration::from_micros(200)).unwrap();
    let bdf = vm::controller("default").unwrap().bdf;
    let dev = VfioFunction::open(&bdf).unwrap();
    let e = Controller::new(
        Arc::new(dev),
        ControllerOptions::default().coalescing(Some(c)),
    )
    .unwrap_err();
    println!("{}", e.report());
    assert_eq!(e.kind(), nvme_dio::ErrorKind::Unsupported, "{}", e.report());
    assert!(
        e.report().contains("Feature Not Changeable"),
        "{}",
        e.report()
    );
    let ctrl = open("default", ControllerOptions::default());
    // A few reads so the counters move.
    let ns = ctrl.namespace(1).unwrap();
    let mut qp = ctrl.create_io_qpair(QueuePairOptions::default()).unwrap();
    for i in 0..8u64 {
        let buf = ctrl.memory().alloc(4096, 4096).unwrap();
        qp.read(&ns, Lba(i), buf, i).map_err(|r| r.error).unwrap();
        nvme_dio_tests::io::wait_one(&mut qp, Duration::from_secs(10))
            .result
            .unwrap();
    }
    let s = ctrl.smart_log().unwrap();
    println!("QEMU SMART: {s:?}");
    assert!(
        (250..400).contains(&s.temperature_kelvin),
        "a plausible temperature: {s:?}"
    );
    assert!(
        s.available_spare <= 100 && s.percentage_used <= 100,
        "{s:?}"
    );
    assert!(s.host_read_commands >= 8, "QEMU counts our reads: {s:?}");

    let errors = ctrl.error_log(64).unwrap();
    println!("QEMU error log: {errors:?}");
    assert!(errors.iter().all(|e| e.error_count != 0));

    let f = ctrl.firmware_slot_log().unwrap();
    println!("QEMU firmware slots: {f:?}");
    assert_eq!(f.active_slot, 1);
    // QEMU 7.2 reports "1.0" in slot 1 while Identify's firmware revision is its own
    // version ("7.2.22"): only that slot 1 holds something is checked.
    assert!(
        f.slots[0].as_deref().is_some_and(|r| !r.is_empty()),
        "{f:?}"
    );

    // Error Recovery is per namespace (QEMU refuses NSID 0): not read here.
    for (fid, name) in COMMON_FEATURES {
        if fid == feature::ERROR_RECOVERY {
            continue;
        }
        let v = ctrl
            .get_feature(fid)
            .unwrap_or_else(|e| panic!("{name}: {}", e.report()));
        println!("{name}: {v:#x} {:?}", decode_feature(fid, v));
    }
    // QEMU keeps no coalescing: threshold 0 (one completion), time 0.
    let ic = ctrl.get_feature(feature::INTERRUPT_COALESCING).unwrap();
    assert_eq!(ic & 0xffff, 0, "{ic:#x}");
    let aec = ctrl.get_feature(feature::ASYNC_EVENT_CONFIG).unwrap();
    assert_eq!(aec & 0xff, 0xff, "SMART warnings enabled: {aec:#x}");
}

#[test]
#[ignore = "VM suite: needs the QEMU guest, run ci/vm-test"]
fn vm_services_qemu_reports_a_temperature_event_through_an_aer() {
    let ctrl = open("mdts0", ControllerOptions::default());
    let was = ctrl.get_feature(feature::TEMPERATURE_THRESHOLD).unwrap();
    assert_eq!(ctrl.poll_events().unwrap(), vec![], "nothing yet");
    // QEMU raises a SMART temperature event when the over-temperature threshold is set
    // below the temperature (hw/nvme/ctrl.c, nvme_set_feature).
    ctrl.set_feature(feature::TEMPERATURE_THRESHOLD, 250)
        .unwrap();
    let mut got = Vec::new();
    let start = Instant::now();
    while got.is_empty() {
        got = ctrl.poll_events().unwrap();
        assert!(start.elapsed() < Duration::from_secs(30), "no event came");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(got, vec![Event::Health(HealthEvent::Temperature)]);
    assert!(ctrl.smart_log().unwrap().critical_warning.temperature());
    ctrl.set_feature(feature::TEMPERATURE_THRESHOLD, was & 0xffff)
        .unwrap();
}

#[test]
#[ignore = "VM suite: needs the QEMU guest, run ci/vm-test"]
fn vm_services_watcher_finds_the_vfio_bound_controllers_and_an_idle_one_gone() {
    use nvme_dio::{DeviceEvent, DeviceWatcher};
    let matrix = vm::matrix().expect("in the VM guest");
    let mut w = DeviceWatcher::new();
    let arrived: Vec<String> = w
        .scan()
        .into_iter()
        .filter_map(|e| match e {
            DeviceEvent::Arrived(b) => Some(b),
            _ => None,
        })
        .collect();
    println!("bound to vfio-pci: {arrived:?}");
    // The hotplug controller may have been unplugged by an earlier test of this boot.
    for c in matrix.iter().filter(|c| c.role != "hotplug") {
        assert!(arrived.contains(&c.bdf), "{} not found: {arrived:?}", c.bdf);
    }
    assert_eq!(w.scan(), [], "nothing changed");
    // A watched controller that stays up is not reported.
    let ctrl = open("default", ControllerOptions::default());
    w.watch(vm::controller("default").unwrap().bdf, ctrl.clone());
    assert_eq!(w.scan(), []);
}
