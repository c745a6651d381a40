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

// ---- metadata and protection information I/O ----------------------------------------------

use nvme_dio::{Bufs, Error, Io, Lba, PiOptions, QueuePairOptions, error::BadRequest};
use nvme_dio_tests::datapath;

/// The namespaces of the VM matrix, on one emulated controller with a small MDTS (16 KiB)
/// so that 40-block transfers split.
fn matrix() -> Vec<NsConfig> {
    let mut v = Vec::new();
    for lba in [512u32, 4096] {
        v.push(NsConfig {
            metadata_size: 8,
            ..NsConfig::ram(256, lba)
        });
        v.push(NsConfig {
            metadata_size: 8,
            extended: true,
            ..NsConfig::ram(256, lba)
        });
        for (kind, first, ext, ms) in [
            (PiType::Type1, false, false, 8),
            (PiType::Type2, true, true, 16),
            (PiType::Type3, false, false, 16),
            (PiType::Type1, false, true, 8),
        ] {
            v.push(NsConfig {
                metadata_size: ms,
                extended: ext,
                pi: pi(kind, first, PiFormat::Guard16),
                ..NsConfig::ram(256, lba)
            });
        }
    }
    v.push(NsConfig {
        metadata_size: 16,
        pi: pi(PiType::Type1, false, PiFormat::Guard64),
        ..NsConfig::ram(256, 4096)
    });
    v
}

fn matrix_ctrl() -> Controller<EmuFunction> {
    open(EmuConfig {
        mdts: 2,
        namespaces: matrix(),
        ..EmuConfig::default()
    })
}

#[test]
fn metadata_round_trips_single_and_split_on_every_format() {
    let ctrl = matrix_ctrl();
    let mut qp = ctrl
        .create_io_qpair(QueuePairOptions::default().entries(64))
        .unwrap();
    for nsid in 1..=ctrl.namespaces().len() as u32 {
        let ns = ctrl.namespace(nsid).unwrap().clone();
        let what = format!(
            "ns {nsid} ({} B, {})",
            ns.lba_size(),
            ns.metadata_format().unwrap()
        );
        let one = datapath::roundtrip(&ctrl, &mut qp, &ns, 3, 2, 1);
        assert_eq!(one, 2, "{what}: 2 blocks in one command each way");
        let splits = qp.stats().split_requests;
        let n = datapath::roundtrip(&ctrl, &mut qp, &ns, 10, 40, 1);
        assert!(
            n > 2,
            "{what}: 40 blocks over a 16 KiB MDTS must split ({n} commands)"
        );
        assert_eq!(qp.stats().split_requests, splits + 2, "{what}");
        // Several buffers, the split moving the metadata pointer with each child.
        datapath::roundtrip(&ctrl, &mut qp, &ns, 60, 24, 3);
    }
}

#[test]
fn pi_pract_wrong_guard_and_corrupted_pi() {
    let ctrl = matrix_ctrl();
    let mut qp = ctrl.create_io_qpair(QueuePairOptions::default()).unwrap();
    for nsid in 1..=ctrl.namespaces().len() as u32 {
        let ns = ctrl.namespace(nsid).unwrap().clone();
        if ns.metadata_format().unwrap().pi.is_none() {
            continue;
        }
        datapath::pract_write_reads_back_valid_pi(&ctrl, &mut qp, &ns, 100, 4);
        datapath::wrong_guard_write_is_refused(&ctrl, &mut qp, &ns, 120);
        datapath::corrupted_pi_fails_the_read(&ctrl, &mut qp, &ns, 130);
    }
}

#[test]
fn unwritten_pi_blocks_read_with_every_check_on() {
    // Never written: the all-ones tuple turns the checks off, as on QEMU.
    let ctrl = matrix_ctrl();
    let mut qp = ctrl.create_io_qpair(QueuePairOptions::default()).unwrap();
    let ns = ctrl.namespace(3).unwrap().clone();
    datapath::read_blocks(&ctrl, &mut qp, &ns, 200, 4, 1, datapath::check_all(&ns, 1)).unwrap();
}

#[test]
fn bad_metadata_and_pi_input_is_refused_before_anything_is_queued() {
    let ctrl = matrix_ctrl();
    let plain = open(EmuConfig::default());
    let mut qp = ctrl.create_io_qpair(QueuePairOptions::default()).unwrap();
    let mut pq = plain.create_io_qpair(QueuePairOptions::default()).unwrap();
    let sep = ctrl.namespace(1).unwrap().clone(); // 512 B, 8 B separate, no PI
    let ext = ctrl.namespace(2).unwrap().clone(); // 512 B, 8 B extended
    let t1 = ctrl.namespace(3).unwrap().clone(); // type 1, separate
    let t3 = ctrl.namespace(5).unwrap().clone(); // type 3, 16 B separate
    let none = plain.namespace(1).unwrap().clone();
    let buf = |c: &Controller<EmuFunction>, n| c.memory().alloc(n, 4096).unwrap();
    let expect = |r: Result<(), nvme_dio::Rejected>, want: &dyn Fn(&Error) -> bool, what: &str| {
        let e = r.expect_err(what);
        assert!(want(&e.error), "{what}: got {}", e.error.report());
        assert!(!e.bufs.is_none(), "{what}: the buffers come back");
    };
    expect(
        qp.submit(Io::write(&sep, Lba(0), buf(&ctrl, 1024)), 1),
        &|e| {
            matches!(
                e,
                Error::Bad(BadRequest::MetadataMissing { needed: 16, .. })
            )
        },
        "no metadata buffer",
    );
    expect(
        qp.submit(
            Io::write(&sep, Lba(0), buf(&ctrl, 4096)).metadata(buf(&ctrl, 4)),
            1,
        ),
        &|e| {
            matches!(
                e,
                Error::Bad(BadRequest::MetadataTooSmall {
                    have: 4,
                    needed: 64
                })
            )
        },
        "metadata buffer too small",
    );
    expect(
        qp.submit(
            Io::write(&ext, Lba(0), buf(&ctrl, 520)).metadata(buf(&ctrl, 8)),
            1,
        ),
        &|e| {
            matches!(
                e,
                Error::Bad(BadRequest::MetadataInDataBuffer {
                    block_bytes: 520,
                    ..
                })
            )
        },
        "separate metadata on an extended format",
    );
    expect(
        qp.submit(Io::write(&ext, Lba(0), buf(&ctrl, 512)), 1),
        &|e| matches!(e, Error::Invalid(_)),
        "an extended buffer that is not whole blocks of data + metadata",
    );
    expect(
        pq.submit(
            Io::write(&none, Lba(0), buf(&plain, 512)).metadata(buf(&plain, 8)),
            1,
        ),
        &|e| matches!(e, Error::Bad(BadRequest::MetadataWithoutFormat { .. })),
        "metadata on a namespace without it",
    );
    expect(
        pq.submit(
            Io::write(&none, Lba(0), buf(&plain, 512)).pi(PiOptions::pract()),
            1,
        ),
        &|e| matches!(e, Error::Bad(BadRequest::PiWithoutProtection { .. })),
        "PI options on a namespace without metadata",
    );
    expect(
        qp.submit(
            Io::write(&sep, Lba(0), buf(&ctrl, 512))
                .metadata(buf(&ctrl, 8))
                .pi(PiOptions::pract()),
            1,
        ),
        &|e| matches!(e, Error::Bad(BadRequest::PiWithoutProtection { .. })),
        "PI options on a namespace with metadata but no PI",
    );
    expect(
        qp.submit(
            Io::read(&t1, Lba(5), buf(&ctrl, 512))
                .metadata(buf(&ctrl, 8))
                .pi(PiOptions::check(nvme_dio::Prinfo::CHECK_ALL).ref_tag(6)),
            1,
        ),
        &|e| {
            matches!(
                e,
                Error::Bad(BadRequest::RefTagNotLba {
                    given: 6,
                    want: 5,
                    ..
                })
            )
        },
        "type 1 with a reference tag that is not the LBA",
    );
    expect(
        qp.submit(
            Io::read(&t3, Lba(5), buf(&ctrl, 512))
                .metadata(buf(&ctrl, 16))
                .pi(PiOptions::check(nvme_dio::Prinfo::CHECK_ALL)),
            1,
        ),
        &|e| matches!(e, Error::Bad(BadRequest::PiOption { .. })),
        "type 3 with the reference tag check",
    );
    assert_eq!(qp.stats().commands, 0, "nothing reached the device");
    assert_eq!(pq.stats().commands, 0);
    // PRACT where the metadata is only the tuple: no metadata buffer needed.
    let (r, bufs) = datapath::run(
        &mut qp,
        Io::write(&t1, Lba(0), buf(&ctrl, 512)).pi(PiOptions::pract()),
        9,
    );
    r.unwrap();
    assert!(matches!(bufs, Bufs::One(_)));
}

// ---- atomic writes -------------------------------------------------------------------------

use nvme_dio::error::AtomicRefusal;

fn atomic_ctrl() -> Controller<EmuFunction> {
    open(EmuConfig {
        namespaces: vec![
            NsConfig {
                atomic: Some(NsAtomic {
                    nawun: 8,
                    nawupf: 8,
                    nabsn: 16,
                    nabo: 0,
                    nabspf: 16,
                }),
                ..NsConfig::ram(256, 512)
            },
            NsConfig::ram(256, 512),
        ],
        ..EmuConfig::default()
    })
}

fn atomic_write(
    ctrl: &Controller<EmuFunction>,
    qp: &mut nvme_dio::IoQueuePair<EmuFunction>,
    ns: &nvme_dio::Namespace,
    lba: u64,
    bufs: &[usize],
) -> Result<(), Error> {
    let v: Vec<_> = bufs
        .iter()
        .map(|&n| ctrl.memory().alloc(n, 4096).unwrap())
        .collect();
    match qp.submit(Io::writev(ns, Lba(lba), v).atomic(), 5) {
        Err(r) => Err(*r.error),
        Ok(()) => {
            let c = nvme_dio_tests::io::wait_one(qp, std::time::Duration::from_secs(5));
            c.result
        }
    }
}

#[test]
fn atomic_writes_go_as_one_command_or_are_refused_naming_the_limit() {
    let ctrl = atomic_ctrl();
    let dev = ctrl.device().clone();
    let mut qp = ctrl.create_io_qpair(QueuePairOptions::default()).unwrap();
    let ns = ctrl.namespace(1).unwrap().clone();
    // Fits: 8 blocks inside one 16-block boundary: exactly one Write command.
    let writes = dev.stats().writes;
    atomic_write(&ctrl, &mut qp, &ns, 16, &[4096]).unwrap();
    assert_eq!(dev.stats().writes, writes + 1);
    assert_eq!(qp.stats().split_requests, 0);
    // Larger than NAWUPF.
    let e = atomic_write(&ctrl, &mut qp, &ns, 32, &[8192]).unwrap_err();
    assert!(
        matches!(
            e,
            Error::Bad(BadRequest::NotAtomic(AtomicRefusal::TooLarge {
                blocks: 16,
                limit: 8
            }))
        ),
        "{}",
        e.report()
    );
    assert!(
        e.to_string().contains("atomic write unit of 8 blocks"),
        "{e}"
    );
    // Crosses the power-fail boundary at block 16.
    let e = atomic_write(&ctrl, &mut qp, &ns, 12, &[4096]).unwrap_err();
    assert!(
        matches!(
            e,
            Error::Bad(BadRequest::NotAtomic(AtomicRefusal::CrossesBoundary {
                slba: 12,
                blocks: 8,
                boundary: 16,
                ..
            }))
        ),
        "{}",
        e.report()
    );
    // Fits in size, but the buffers break the PRP rule at a block boundary: would split.
    let e = atomic_write(&ctrl, &mut qp, &ns, 48, &[1024, 1024]).unwrap_err();
    assert!(
        matches!(
            e,
            Error::Bad(BadRequest::NotAtomic(AtomicRefusal::WouldSplit {
                commands: 2
            }))
        ),
        "{}",
        e.report()
    );
    assert_eq!(
        dev.stats().writes,
        writes + 1,
        "refused writes never reached the device"
    );
    // Without namespace values the controller's AWUPF (1 block, as QEMU) applies.
    let plain = ctrl.namespace(2).unwrap().clone();
    assert_eq!(plain.atomic_limits().power_fail, 1);
    atomic_write(&ctrl, &mut qp, &plain, 0, &[512]).unwrap();
    let e = atomic_write(&ctrl, &mut qp, &plain, 0, &[1024]).unwrap_err();
    assert!(matches!(
        e,
        Error::Bad(BadRequest::NotAtomic(AtomicRefusal::TooLarge {
            limit: 1,
            ..
        }))
    ));
}

// ---- flush ---------------------------------------------------------------------------------

#[test]
fn flush_without_a_volatile_write_cache_completes_without_a_command() {
    for vwc in [false, true] {
        let ctrl = open(EmuConfig {
            vwc,
            ..EmuConfig::default()
        });
        let dev = ctrl.device().clone();
        let ns = ctrl.namespace(1).unwrap().clone();
        assert_eq!(ns.has_volatile_write_cache(), vwc);
        let mut qp = ctrl.create_io_qpair(QueuePairOptions::default()).unwrap();
        let flushes = dev.stats().flushes;
        for t in 0..3 {
            qp.flush(&ns, t).map_err(|r| r.error).unwrap();
            let c = nvme_dio_tests::io::wait_one(&mut qp, std::time::Duration::from_secs(5));
            assert_eq!(c.tag, t);
            c.result.unwrap();
        }
        let s = qp.stats();
        if vwc {
            assert_eq!(dev.stats().flushes, flushes + 3);
            assert_eq!(s.flushes_without_command, 0);
        } else {
            assert_eq!(
                dev.stats().flushes,
                flushes,
                "no Flush command reached the device"
            );
            assert_eq!((s.flushes_without_command, s.commands), (3, 0));
        }
        assert_eq!((s.submitted, s.completed), (3, 3));
    }
}

// ---- Copy, Verify, and the split limits of Dataset Management and Write Zeroes -------------

use nvme_dio_emu::CopyLimits;

fn write_pattern(
    ctrl: &Controller<EmuFunction>,
    qp: &mut nvme_dio::IoQueuePair<EmuFunction>,
    ns: &nvme_dio::Namespace,
    lba: u64,
    blocks: u64,
    seed: u64,
) -> Vec<u8> {
    let data = nvme_dio_tests::io::pattern(ns.lba_size(), lba, seed, (blocks * 512) as usize);
    let b = ctrl.memory().alloc(data.len(), 4096).unwrap();
    b.copy_from_slice(0, &data).unwrap();
    datapath::run(qp, Io::write(ns, Lba(lba), b), 1).0.unwrap();
    data
}

fn read_back(
    ctrl: &Controller<EmuFunction>,
    qp: &mut nvme_dio::IoQueuePair<EmuFunction>,
    ns: &nvme_dio::Namespace,
    lba: u64,
    blocks: u64,
) -> Vec<u8> {
    let b = ctrl.memory().alloc((blocks * 512) as usize, 4096).unwrap();
    let (r, bufs) = datapath::run(qp, Io::read(ns, Lba(lba), b), 2);
    r.unwrap();
    nvme_dio_tests::io::gather(&bufs.into_vec())
}

#[test]
fn copy_splits_at_mssrl_msrc_and_mcl_and_moves_the_data() {
    let ctrl = open(EmuConfig {
        namespaces: vec![NsConfig {
            copy: CopyLimits {
                mssrl: 4,
                mcl: 8,
                msrc: 2,
            },
            ..NsConfig::ram(256, 512)
        }],
        ..EmuConfig::default()
    });
    let dev = ctrl.device().clone();
    let mut qp = ctrl.create_io_qpair(QueuePairOptions::default()).unwrap();
    let ns = ctrl.namespace(1).unwrap().clone();
    let a = write_pattern(&ctrl, &mut qp, &ns, 0, 10, 1);
    let b = write_pattern(&ctrl, &mut qp, &ns, 50, 3, 2);
    let ranges = [(Lba(0), 10), (Lba(50), 3)];
    let copies = dev.stats().copies;
    let (r, _) = datapath::run(&mut qp, Io::copy(&ns, &ranges, Lba(100)), 3);
    r.unwrap();
    // 13 blocks, at most 4 per range, 2 ranges and 8 blocks per command: 4+4 | 2+3.
    assert_eq!(dev.stats().copies, copies + 2);
    let got = read_back(&ctrl, &mut qp, &ns, 100, 13);
    assert!(got[..10 * 512] == a[..], "first range copied");
    assert!(got[10 * 512..] == b[..], "second range copied");
    // One command when it fits.
    let (r, _) = datapath::run(&mut qp, Io::copy(&ns, &[(Lba(0), 4)], Lba(200)), 4);
    r.unwrap();
    assert_eq!(dev.stats().copies, copies + 3);
    // Bad input: a source past the end, a destination past the end, no ranges.
    for (rs, d) in [
        (&[(Lba(255), 2)][..], Lba(0)),
        (&[(Lba(0), 2)][..], Lba(255)),
    ] {
        let e = qp.submit(Io::copy(&ns, rs, d), 9).unwrap_err();
        assert!(matches!(*e.error, Error::OutOfRange { .. }), "{}", e.error);
    }
    let e = qp.submit(Io::copy(&ns, &[], Lba(0)), 9).unwrap_err();
    assert!(matches!(
        *e.error,
        Error::Bad(BadRequest::CopyRanges { ranges: 0 })
    ));
}

#[test]
fn verify_checks_pi_and_splits_at_vsl() {
    let ctrl = open(EmuConfig {
        nvm_limits: Some(NvmLimits {
            vsl: 1, // 8 KiB: 16 blocks of 512
            ..NvmLimits::default()
        }),
        namespaces: vec![NsConfig {
            metadata_size: 8,
            pi: pi(PiType::Type1, false, PiFormat::Guard16),
            ..NsConfig::ram(256, 512)
        }],
        ..EmuConfig::default()
    });
    let dev = ctrl.device().clone();
    let mut qp = ctrl.create_io_qpair(QueuePairOptions::default()).unwrap();
    let ns = ctrl.namespace(1).unwrap().clone();
    datapath::roundtrip(&ctrl, &mut qp, &ns, 0, 40, 1);
    let v = dev.stats().verifies;
    let checks = datapath::check_all(&ns, 0x0042).unwrap();
    let (r, _) = datapath::run(&mut qp, Io::verify_pi(&ns, Lba(0), 40, checks), 5);
    r.unwrap();
    assert_eq!(dev.stats().verifies, v + 3, "40 blocks at 16 per Verify");
    // A corrupted tuple fails Verify with the guard error.
    datapath::corrupted_pi_fails_the_read(&ctrl, &mut qp, &ns, 100);
    let (r, _) = datapath::run(&mut qp, Io::verify_pi(&ns, Lba(100), 1, checks), 6);
    assert!(matches!(r, Err(Error::GuardCheck { .. })), "{r:?}");
    // Without checks it passes; PRACT is refused before queuing.
    let (r, _) = datapath::run(&mut qp, Io::verify(&ns, Lba(100), 1), 7);
    r.unwrap();
    let e = qp
        .submit(Io::verify_pi(&ns, Lba(0), 1, PiOptions::pract()), 8)
        .unwrap_err();
    assert!(matches!(*e.error, Error::Bad(BadRequest::PiOption { .. })));
}

#[test]
fn deallocate_and_write_zeroes_split_at_the_reported_limits() {
    let limits = NvmLimits {
        vsl: 7,
        wzsl: 1, // 8 KiB: 16 blocks of 512
        dmrl: 2,
        dmrsl: 8,
        dmsl: 12,
    };
    let ctrl = open(EmuConfig {
        nvm_limits: Some(limits),
        namespaces: vec![NsConfig::ram(256, 512)],
        ..EmuConfig::default()
    });
    let dev = ctrl.device().clone();
    let mut qp = ctrl.create_io_qpair(QueuePairOptions::default()).unwrap();
    let ns = ctrl.namespace(1).unwrap().clone();
    write_pattern(&ctrl, &mut qp, &ns, 0, 128, 9);
    let dsm = dev.stats().dsm;
    let (r, _) = datapath::run(
        &mut qp,
        Io::deallocate(&ns, &[(Lba(0), 20), (Lba(100), 4)]),
        3,
    );
    r.unwrap();
    // (0,8) | (8,8) (16,4) | (100,4): DMRSL 8, DMSL 12, DMRL 2.
    assert_eq!(dev.stats().dsm, dsm + 3);
    assert!(
        read_back(&ctrl, &mut qp, &ns, 0, 20)
            .iter()
            .all(|&b| b == 0)
    );
    assert!(
        read_back(&ctrl, &mut qp, &ns, 100, 4)
            .iter()
            .all(|&b| b == 0)
    );
    assert!(
        read_back(&ctrl, &mut qp, &ns, 20, 1)
            .iter()
            .any(|&b| b != 0)
    );
    let wz = dev.stats().write_zeroes;
    let (r, _) = datapath::run(&mut qp, Io::write_zeroes(&ns, Lba(30), 40), 4);
    r.unwrap();
    assert_eq!(
        dev.stats().write_zeroes,
        wz + 3,
        "40 blocks at 16 per Write Zeroes"
    );
    assert!(
        read_back(&ctrl, &mut qp, &ns, 30, 40)
            .iter()
            .all(|&b| b == 0)
    );

    // The same requests on a controller without the CNS 06h page: one command each.
    let ctrl = open(EmuConfig {
        nvm_limits: None,
        namespaces: vec![NsConfig::ram(256, 512)],
        ..EmuConfig::default()
    });
    let dev = ctrl.device().clone();
    let mut qp = ctrl.create_io_qpair(QueuePairOptions::default()).unwrap();
    let ns = ctrl.namespace(1).unwrap().clone();
    let ranges = [(Lba(0), 20), (Lba(100), 4)];
    datapath::run(&mut qp, Io::deallocate(&ns, &ranges), 3)
        .0
        .unwrap();
    datapath::run(&mut qp, Io::write_zeroes(&ns, Lba(30), 40), 4)
        .0
        .unwrap();
    assert_eq!((dev.stats().dsm, dev.stats().write_zeroes), (1, 1));
}
