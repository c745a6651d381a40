//! What a database needs on the data path, against the emulated controller: namespace
//! formats with metadata and protection information, metadata and PI I/O, atomic writes,
//! flush without a cache, Copy and Verify, and the split limits of the commands without
//! data. The VM suite runs the same scenarios (`nvme_dio_tests::datapath`) on QEMU.

use std::sync::Arc;

use nvme_dio::{Controller, ControllerOptions, MemoryOptions, PiFormat, PiType, Protection};
use nvme_dio_emu::{EmuConfig, EmuFunction, NsAtomic, NsConfig, NsOptimal, NvmLimits};

fn opts() -> ControllerOptions {
    ControllerOptions::default()
        .memory(MemoryOptions::any_pages(16 << 20))
        .io_queues(2)
}

fn open(cfg: EmuConfig) -> Controller<EmuFunction> {
    Controller::new(Arc::new(EmuFunction::new(cfg).unwrap()), opts()).unwrap()
}

fn pi(kind: PiType, first: bool, format: PiFormat) -> Option<Protection> {
    Some(Protection {
        kind,
        first,
        format,
    })
}

#[test]
fn namespace_exposes_the_metadata_format() {
    let cfg = EmuConfig {
        namespaces: vec![
            NsConfig::ram(64, 512),
            NsConfig {
                metadata_size: 8,
                ..NsConfig::ram(64, 512)
            },
            NsConfig {
                metadata_size: 16,
                extended: true,
                pi: pi(PiType::Type2, true, PiFormat::Guard16),
                ..NsConfig::ram(64, 4096)
            },
            NsConfig {
                metadata_size: 16,
                pi: pi(PiType::Type3, false, PiFormat::Guard64),
                ..NsConfig::ram(64, 4096)
            },
        ],
        ..EmuConfig::default()
    };
    let ctrl = open(cfg);
    let ns = |i| ctrl.namespace(i).unwrap().clone();
    assert_eq!(ns(1).metadata_format(), None);
    let m = ns(2).metadata_format().unwrap();
    assert_eq!((m.size, m.extended, m.pi), (8, false, None));
    assert_eq!(ns(2).buffer_block_size(), 512);
    let m = ns(3).metadata_format().unwrap();
    assert_eq!(
        (m.size, m.extended, m.pi),
        (16, true, pi(PiType::Type2, true, PiFormat::Guard16))
    );
    assert_eq!(ns(3).buffer_block_size(), 4096 + 16);
    // The 64-bit guard is only in the CNS 05h page: the driver asked for it.
    let m = ns(4).metadata_format().unwrap();
    assert_eq!(m.pi, pi(PiType::Type3, false, PiFormat::Guard64));
    assert_eq!(
        m.to_string(),
        "16 B separate, PI type 3 (64-bit guard, last bytes)"
    );
}

#[test]
fn atomic_preferred_copy_and_command_limits_are_exposed() {
    let cfg = EmuConfig {
        awun: 4,
        awupf: 2,
        nvm_limits: Some(NvmLimits {
            vsl: 3,
            wzsl: 2,
            dmrl: 4,
            dmrsl: 100,
            dmsl: 1000,
        }),
        namespaces: vec![
            NsConfig::ram(64, 512),
            NsConfig {
                atomic: Some(NsAtomic {
                    nawun: 16,
                    nawupf: 8,
                    nabsn: 32,
                    nabo: 4,
                    nabspf: 16,
                }),
                optimal: Some(NsOptimal {
                    npwg: 8,
                    npwa: 8,
                    npdg: 64,
                    npda: 64,
                    nows: 32,
                }),
                ..NsConfig::ram(64, 512)
            },
        ],
        ..EmuConfig::default()
    };
    let ctrl = open(cfg);
    let a = ctrl.namespace(1).unwrap().atomic_limits();
    assert_eq!(
        (a.normal, a.power_fail, a.namespace_specific),
        (4, 2, false)
    );
    assert_eq!(a.boundary_power_fail, 0);
    let n2 = ctrl.namespace(2).unwrap();
    let a = n2.atomic_limits();
    assert_eq!(
        (a.normal, a.power_fail, a.boundary_normal, a.boundary_offset),
        (16, 8, 32, 4)
    );
    assert_eq!(a.boundary_power_fail, 16);
    assert!(!a.crosses_power_fail_boundary(4, 16));
    assert!(a.crosses_power_fail_boundary(3, 2));
    assert!(a.crosses_power_fail_boundary(19, 2));
    let p = n2.preferred_sizes().unwrap();
    assert_eq!(
        (
            p.write_granularity,
            p.deallocate_granularity,
            p.optimal_write
        ),
        (8, 64, 32)
    );
    assert_eq!(ctrl.namespace(1).unwrap().preferred_sizes(), None);
    let c = n2.copy_limits().unwrap();
    assert_eq!(
        (c.max_range_blocks, c.max_blocks, c.max_ranges),
        (128, 128, 128)
    );
    assert!(n2.supports_verify());
    let l = n2.command_limits();
    assert_eq!(l.verify_blocks, Some(4096 << 3));
    assert_eq!(l.write_zeroes_blocks, Some(4096 << 2));
    assert_eq!(
        (l.dsm_ranges, l.dsm_range_blocks, l.dsm_blocks),
        (Some(4), Some(100), Some(1000))
    );
}

#[test]
fn a_controller_without_the_cns_06h_page_has_no_command_limits() {
    let ctrl = open(EmuConfig {
        nvm_limits: None,
        copy_verify: false,
        ..EmuConfig::default()
    });
    let ns = ctrl.namespace(1).unwrap();
    assert_eq!(ns.command_limits(), nvme_dio::CommandLimits::default());
    assert!(ns.copy_limits().is_none());
    assert!(!ns.supports_verify());
}
