//! Health and logs against the emulated controller: SMART / Health, Error Information and
//! Firmware Slot log pages read through the driver as typed structures, and Get Features of
//! the common features.

use std::sync::Arc;
use std::time::Duration;

use nvme_dio::spec::opcode::feature;
use nvme_dio::{
    COMMON_FEATURES, Coalescing, Controller, ControllerOptions, Lba, MemoryOptions,
    QueuePairOptions, Status, decode_feature,
};
use nvme_dio_emu::{EmuConfig, EmuFunction, ErrorEntry, Health, NsConfig};
use nvme_dio_tests::io::wait_one;

fn bring_up(opts: ControllerOptions) -> (Arc<EmuFunction>, Controller<EmuFunction>) {
    let cfg = EmuConfig {
        namespaces: vec![NsConfig::ram(1 << 12, 4096)],
        firmware: "2.5".into(),
        ..EmuConfig::default()
    };
    let dev = Arc::new(EmuFunction::new(cfg).expect("emulated controller"));
    let ctrl = Controller::new(Arc::clone(&dev), opts).expect("bring-up");
    (dev, ctrl)
}

fn opts() -> ControllerOptions {
    ControllerOptions::default().memory(MemoryOptions::any_pages(16 << 20))
}

#[test]
fn smart_log_reports_health_and_counters() {
    let (dev, ctrl) = bring_up(opts());
    let s = ctrl.smart_log().unwrap();
    assert!(s.critical_warning.is_clear());
    assert_eq!((s.temperature_celsius(), s.available_spare), (40, 100));
    assert_eq!(s.host_read_commands, 0);

    // Ten 4 KiB reads and five writes: the counters move.
    let ns = ctrl.namespace(1).unwrap();
    let mut qp = ctrl.create_io_qpair(QueuePairOptions::default()).unwrap();
    for i in 0..15u64 {
        let buf = ctrl.memory().alloc(4096, 4096).unwrap();
        let r = if i < 10 {
            qp.read(&ns, Lba(i), buf, i)
        } else {
            qp.write(&ns, Lba(i), buf, i)
        };
        r.map_err(|r| r.error).unwrap();
        wait_one(&mut qp, Duration::from_secs(10)).result.unwrap();
    }
    dev.set_health(Health {
        critical_warning: 0b110,
        temperature_kelvin: 273 + 77,
        available_spare: 42,
        spare_threshold: 10,
        percentage_used: 7,
        media_errors: 3,
    });
    let s = ctrl.smart_log().unwrap();
    assert!(s.critical_warning.temperature() && s.critical_warning.reliability_degraded());
    assert_eq!(
        (
            s.temperature_celsius(),
            s.available_spare,
            s.spare_threshold,
            s.percentage_used
        ),
        (77, 42, 10, 7)
    );
    assert_eq!((s.host_read_commands, s.host_write_commands), (10, 5));
    assert_eq!(
        s.data_units_read, 1,
        "40 KiB is one (rounded up) unit of 512 000 bytes"
    );
    assert_eq!((s.media_errors, s.power_cycles), (3, 1));
}

#[test]
fn error_log_entries_come_newest_first() {
    let (dev, ctrl) = bring_up(opts());
    assert_eq!(ctrl.error_log(64).unwrap(), vec![], "no errors yet");
    for i in 0..6u16 {
        dev.log_error(ErrorEntry {
            sqid: 1,
            cid: 100 + i,
            status: Status::new(0, 0x80).with_dnr(),
            lba: 1000 + i as u64,
            nsid: 1,
        });
    }
    // The controller keeps ELPE + 1 = 4 entries.
    let log = ctrl.error_log(64).unwrap();
    assert_eq!(log.len(), 4);
    assert_eq!(
        log.iter()
            .map(|e| (e.error_count, e.cid))
            .collect::<Vec<_>>(),
        [(6, 105), (5, 104), (4, 103), (3, 102)]
    );
    let e = log[0];
    assert_eq!((e.sqid, e.lba, e.nsid), (1, 1005, 1));
    assert_eq!(e.status, Status::new(0, 0x80).with_dnr());
    assert_eq!(e.status.name(), Status::new(0, 0x80).name());
    assert_eq!(ctrl.error_log(2).unwrap().len(), 2, "fewer when asked");
    assert_eq!(ctrl.smart_log().unwrap().error_log_entries, 6);
}

#[test]
fn firmware_slot_log_names_the_running_firmware() {
    let (_dev, ctrl) = bring_up(opts());
    let f = ctrl.firmware_slot_log().unwrap();
    assert_eq!(f.active_slot, 1);
    assert_eq!(f.slots[0].as_deref(), Some("2.5"));
    assert!(f.slots[1..].iter().all(Option::is_none));
}

#[test]
fn get_features_reads_the_common_features() {
    let c = Coalescing::new(16, Duration::from_micros(300)).unwrap();
    let (_dev, ctrl) = bring_up(opts().io_queues(8).coalescing(Some(c)));
    for (fid, name) in COMMON_FEATURES {
        let v = ctrl
            .get_feature(fid)
            .unwrap_or_else(|e| panic!("{name}: {}", e.report()));
        assert!(!decode_feature(fid, v).is_empty(), "{name}");
    }
    let nq = ctrl.get_feature(feature::NUMBER_OF_QUEUES).unwrap();
    assert_eq!(
        decode_feature(feature::NUMBER_OF_QUEUES, nq),
        [("submission queues", 8), ("completion queues", 8)]
    );
    let ic = ctrl.get_feature(feature::INTERRUPT_COALESCING).unwrap();
    assert_eq!(
        decode_feature(feature::INTERRUPT_COALESCING, ic),
        [
            ("aggregation threshold", 16),
            ("aggregation time (100 us)", 3)
        ]
    );
    let aec = ctrl.get_feature(feature::ASYNC_EVENT_CONFIG).unwrap();
    assert_eq!(aec, 0xff | 1 << 8 | 1 << 9, "what bring-up enabled");
    let e = ctrl.get_feature(0x7e).unwrap_err();
    assert_eq!(
        e.status().map(|s| (s.sct(), s.sc())),
        Some((0, 0x02)),
        "{e}"
    );
}
