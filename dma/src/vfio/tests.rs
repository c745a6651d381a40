//! VFIO tests that run without a device: address parsing, sysfs checks against a fake tree,
//! the IOMMU-info parser, ioctl numbers, BAR accessors over ordinary memory, and the error
//! path of `open`. The real device path runs in the VM suite through `vm_smoke_test` (and
//! `vm_smoke_test_if_configured` below: ignored unless run with `--ignored` and
//! NVME_DIO_VFIO_BDF set; the VM suite runs the smoke test through `tests/tests/vm_driver.rs`).

// A list of one IOVA range is exactly what these tests mean.
#![allow(clippy::single_range_in_vec_init)]
use super::*;
use std::os::unix::fs::symlink;

#[test]
fn pci_addresses_are_parsed_and_normalised() {
    assert_eq!(parse_bdf("0000:01:00.0").unwrap(), "0000:01:00.0");
    assert_eq!(parse_bdf("0000:AF:1F.7").unwrap(), "0000:af:1f.7");
    assert_eq!(parse_bdf("01:00.0").unwrap(), "0000:01:00.0");
    for bad in [
        "",
        "0000:01:00",
        "0000:01:00.8",
        "0000:01:20.0",
        "1:00.0",
        "0000:01:00.0.0",
        "000g:01:00.0",
        "00000:01:00.0",
        "0000-01-00.0",
        "0000:01:00.",
        "/dev/nvme0",
    ] {
        let err = parse_bdf(bad).unwrap_err();
        assert!(
            matches!(err, Error::BadPciAddress { .. }),
            "{bad:?} accepted"
        );
        assert!(
            err.to_string().contains("0000:01:00.0"),
            "message shows the format: {err}"
        );
    }
}

/// A throwaway sysfs tree under the temp dir, removed on drop.
struct FakeSys {
    root: PathBuf,
}

impl FakeSys {
    fn new(name: &str) -> FakeSys {
        let root =
            std::env::temp_dir().join(format!("nvme-dio-dma-sysfs-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("bus/pci/devices")).unwrap();
        std::fs::create_dir_all(root.join("bus/pci/drivers")).unwrap();
        FakeSys { root }
    }

    /// Adds a device in `group` bound to `driver`.
    fn device(&self, bdf: &str, group: Option<u32>, driver: Option<&str>) -> &Self {
        let dev = self.root.join("bus/pci/devices").join(bdf);
        std::fs::create_dir_all(&dev).unwrap();
        if let Some(g) = group {
            let gdir = self.root.join("kernel/iommu_groups").join(g.to_string());
            std::fs::create_dir_all(gdir.join("devices")).unwrap();
            symlink(&gdir, dev.join("iommu_group")).unwrap();
            symlink(&dev, gdir.join("devices").join(bdf)).unwrap();
        }
        if let Some(d) = driver {
            let ddir = self.root.join("bus/pci/drivers").join(d);
            std::fs::create_dir_all(&ddir).unwrap();
            symlink(&ddir, dev.join("driver")).unwrap();
        }
        self
    }
}

impl Drop for FakeSys {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

#[test]
fn sysfs_missing_device_is_a_clear_error() {
    let sys = FakeSys::new("missing");
    let err = check_sysfs(&sys.root, "0000:01:00.0").unwrap_err();
    assert!(matches!(err, Error::DeviceNotFound { .. }), "{err:?}");
    assert!(err.to_string().contains("lspci -D"), "{err}");
}

#[test]
fn sysfs_without_iommu_group_says_enable_the_iommu() {
    let sys = FakeSys::new("noiommu");
    sys.device("0000:01:00.0", None, Some("nvme"));
    let err = check_sysfs(&sys.root, "0000:01:00.0").unwrap_err();
    assert!(matches!(err, Error::NoIommu { .. }), "{err:?}");
    assert!(err.to_string().contains("intel_iommu=on"), "{err}");
}

#[test]
fn sysfs_device_on_another_driver_says_run_setup() {
    let sys = FakeSys::new("nvmedrv");
    sys.device("0000:01:00.0", Some(5), Some("nvme"));
    let err = check_sysfs(&sys.root, "01:00.0").unwrap_err();
    match &err {
        Error::NotBoundToVfio { bdf, driver } => {
            assert_eq!(bdf, "0000:01:00.0");
            assert_eq!(driver.as_deref(), Some("nvme"));
        }
        other => panic!("expected NotBoundToVfio, got {other:?}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains("bound to nvme") && msg.contains("nvme-dio setup 0000:01:00.0"),
        "{msg}"
    );

    let sys = FakeSys::new("nodrv");
    sys.device("0000:01:00.0", Some(5), None);
    let err = check_sysfs(&sys.root, "0000:01:00.0").unwrap_err();
    assert!(err.to_string().contains("bound to no driver"), "{err}");
}

#[test]
fn sysfs_group_with_a_host_driver_is_not_viable() {
    let sys = FakeSys::new("notviable");
    sys.device("0000:01:00.0", Some(7), Some("vfio-pci"))
        .device("0000:01:00.1", Some(7), Some("snd_hda_intel"));
    let err = check_sysfs(&sys.root, "0000:01:00.0").unwrap_err();
    match &err {
        Error::GroupNotViable {
            group,
            device,
            driver,
        } => {
            assert_eq!(
                (*group, device.as_str(), driver.as_str()),
                (7, "0000:01:00.1", "snd_hda_intel")
            );
        }
        other => panic!("expected GroupNotViable, got {other:?}"),
    }
    assert!(
        err.to_string()
            .contains("0000:01:00.1 in the same group is bound to snd_hda_intel")
    );
}

#[test]
fn sysfs_viable_group_passes() {
    let sys = FakeSys::new("viable");
    sys.device("0000:01:00.0", Some(9), Some("vfio-pci"))
        .device("0000:00:01.0", Some(9), Some("pcieport"))
        .device("0000:01:00.1", Some(9), None);
    let d = check_sysfs(&sys.root, "0000:01:00.0").unwrap();
    assert_eq!(d.group, 9);
    assert_eq!(d.bdf, "0000:01:00.0");
    assert!(d.path.ends_with("bus/pci/devices/0000:01:00.0"));
}

#[test]
fn open_fails_clearly_on_this_host() {
    assert!(matches!(
        VfioFunction::open("nonsense"),
        Err(Error::BadPciAddress { .. })
    ));
    let bdf = "0000:fe:1f.7";
    if Path::new("/sys/bus/pci/devices").join(bdf).exists() {
        eprintln!("SKIPPED: {bdf} exists on this host");
        return;
    }
    let err = VfioFunction::open(bdf).unwrap_err();
    assert!(matches!(err, Error::DeviceNotFound { .. }), "{err:?}");
    assert!(err.to_string().contains(bdf));
}

#[test]
fn vm_smoke_test_reports_a_clear_error_without_a_device() {
    let err = vm_smoke_test("0000:fe:1f.6").unwrap_err();
    assert!(matches!(err, Error::DeviceNotFound { .. }), "{err:?}");
}

/// The VM suite sets NVME_DIO_VFIO_BDF to the vfio-pci bound NVMe function.
#[test]
#[ignore = "needs a vfio-pci bound NVMe: NVME_DIO_VFIO_BDF=BDF cargo test -p nvme-dio-dma -- --ignored"]
fn vm_smoke_test_if_configured() {
    let bdf = std::env::var("NVME_DIO_VFIO_BDF")
        .expect("NVME_DIO_VFIO_BDF names the vfio-pci bound device to test");
    let r = vm_smoke_test(&bdf).unwrap_or_else(|e| panic!("VFIO smoke test on {bdf}: {e}"));
    eprintln!("{r:#x?}");
    assert_eq!(r.vs >> 16, 1, "NVMe major version 1");
    assert!(r.bar0_len >= 0x1000 + 8, "BAR0 holds the doorbells");
    assert!(r.buf_iova >= crate::IOVA_FLOOR);
    assert!(r.iova_ranges.iter().any(|x| x.contains(&r.buf_iova)));
    // 39-bit guest IOMMU: everything below 512 GiB.
    assert!(r.buf_iova < 512 << 30);
}

#[test]
fn ioctl_numbers_match_the_kernel() {
    // _IO(';', 100 + n): no direction, no size.
    assert_eq!(VFIO_DEVICE_RESET(), 0x3b6f);
    assert_eq!(VFIO_IOMMU_GET_INFO(), 0x3b70);
}

fn info_buf(flags: u32, caps: &[(u16, Vec<u8>)]) -> Vec<u8> {
    // vfio_iommu_type1_info (24 bytes), then the caps chained in order.
    let mut b = vec![0u8; 24];
    b[4..8].copy_from_slice(&flags.to_ne_bytes());
    b[8..16].copy_from_slice(&(0x1000u64 | 0x20_0000 | 0x4000_0000).to_ne_bytes());
    let mut prev_next_at: Option<usize> = None;
    for (id, body) in caps {
        let at = b.len();
        match prev_next_at {
            None => b[16..20].copy_from_slice(&(at as u32).to_ne_bytes()),
            Some(p) => b[p..p + 4].copy_from_slice(&(at as u32).to_ne_bytes()),
        }
        b.extend_from_slice(&id.to_ne_bytes());
        b.extend_from_slice(&1u16.to_ne_bytes());
        prev_next_at = Some(b.len());
        b.extend_from_slice(&0u32.to_ne_bytes());
        b.extend_from_slice(body);
    }
    let argsz = b.len() as u32;
    b[0..4].copy_from_slice(&argsz.to_ne_bytes());
    b
}

fn iova_cap(ranges: &[(u64, u64)]) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&(ranges.len() as u32).to_ne_bytes());
    body.extend_from_slice(&0u32.to_ne_bytes());
    for &(s, e) in ranges {
        body.extend_from_slice(&s.to_ne_bytes());
        body.extend_from_slice(&e.to_ne_bytes());
    }
    body
}

#[test]
fn iommu_info_iova_ranges_are_parsed_from_the_cap_chain() {
    // What QEMU's intel-iommu guest reports (inclusive ends), after a migration cap.
    let migration = vec![0u8; 24];
    let buf = info_buf(
        VFIO_IOMMU_INFO_CAPS | 1,
        &[
            (2, migration),
            (
                1,
                iova_cap(&[(0, 0xfedf_ffff), (0xfef0_0000, 0x7f_ffff_ffff)]),
            ),
        ],
    );
    assert_eq!(
        parse_iommu_info_ranges(&buf).unwrap(),
        vec![0..0xfee0_0000, 0xfef0_0000..0x80_0000_0000]
    );
}

#[test]
fn iommu_info_without_the_capability_gives_none() {
    assert_eq!(parse_iommu_info_ranges(&info_buf(1, &[])), None);
    assert_eq!(
        parse_iommu_info_ranges(&info_buf(VFIO_IOMMU_INFO_CAPS, &[(2, vec![0; 24])])),
        None
    );
    // Truncated: the cap claims 3 ranges, the buffer holds 1.
    let mut b = info_buf(VFIO_IOMMU_INFO_CAPS, &[(1, iova_cap(&[(0, 0xffff)]))]);
    let n_at = 24 + 8;
    b[n_at..n_at + 4].copy_from_slice(&3u32.to_ne_bytes());
    assert_eq!(parse_iommu_info_ranges(&b), None);
    // A looping chain ends.
    let mut b = info_buf(VFIO_IOMMU_INFO_CAPS, &[(2, vec![0; 8])]);
    b[24 + 4..24 + 8].copy_from_slice(&24u32.to_ne_bytes());
    assert_eq!(parse_iommu_info_ranges(&b), None);
    assert_eq!(parse_iommu_info_ranges(&[0u8; 4]), None);
}

fn fake_bar(len: usize) -> VfioBar {
    let map = MmapRaw::from(MmapOptions::new().len(len).map_anon().unwrap());
    VfioBar {
        ptr: map.as_mut_ptr(),
        len,
        _map: map,
    }
}

#[test]
fn bar_accessors_are_volatile_words() {
    let bar = fake_bar(0x4000);
    bar.write32(0x1000, 0xdead_beef);
    bar.write64(0x28, 0x1122_3344_5566_7788);
    assert_eq!(bar.read32(0x1000), 0xdead_beef);
    assert_eq!(bar.read64(0x28), 0x1122_3344_5566_7788);
    assert_eq!(bar.read32(0x28), 0x5566_7788, "little-endian halves");
    bar.write32(0x3ffc, 1);
    assert_eq!(bar.len(), 0x4000);
}

#[test]
#[should_panic(expected = "outside the 0x4000-byte BAR")]
fn bar_access_past_the_end_panics() {
    fake_bar(0x4000).write32(0x4000, 1);
}

#[test]
#[should_panic(expected = "misaligned")]
fn bar_misaligned_access_panics() {
    fake_bar(0x4000).read64(0x1004);
}

#[test]
fn error_messages_say_what_to_do() {
    let e = Error::VfioMissing {
        path: "/dev/vfio/vfio".into(),
        source: io::Error::from_raw_os_error(libc::ENOENT),
    };
    assert!(e.to_string().contains("modprobe vfio-pci"));
    assert!(
        std::error::Error::source(&e).is_some(),
        "OS error kept as source"
    );
    let e = Error::MemlockTooLow {
        current: 65536,
        needed: 33554432,
    };
    assert!(e.to_string().contains("65536") && e.to_string().contains("33554432"));
    assert!(e.to_string().contains("ulimit -l"));
    let e = Error::NoHugepages {
        page: crate::PageKind::Huge1G,
        needed: 2,
        free: 0,
        total: 0,
        suggest: 2,
        source: io::Error::from_raw_os_error(libc::ENOMEM),
    };
    let m = e.to_string();
    assert!(
        m.contains("1 GiB") && m.contains("hugepages-1048576kB/nr_hugepages"),
        "{m}"
    );
    assert!(m.contains("nvme-dio setup --hugepages 2"), "{m}");
}

/// Real DMA through the IOMMU, in the VM suite: bring up the admin queue by hand (raw NVMe
/// registers; this crate knows no NVMe, so it stays in a test), run Identify Controller into
/// a hugepage buffer, and check the completion, the data the device wrote and the MSI-X
/// eventfd of vector 0.
#[test]
#[ignore = "needs a vfio-pci bound NVMe: NVME_DIO_VFIO_BDF=BDF cargo test -p nvme-dio-dma -- --ignored"]
fn vm_dma_identify_if_configured() {
    use crate::barrier::{rmb, wmb};
    use std::time::{Duration, Instant};

    let bdf = std::env::var("NVME_DIO_VFIO_BDF")
        .expect("NVME_DIO_VFIO_BDF names the vfio-pci bound device to test");
    let f = VfioFunction::open(&bdf).unwrap_or_else(|e| panic!("open {bdf}: {e}"));
    let bar = f.bar0();
    let cap = bar.read64(0x0);
    assert_ne!(cap, u64::MAX, "device gone");
    let dstrd = (cap >> 32) & 0xf;
    let limit = Duration::from_millis(500 * ((cap >> 24) & 0xff).max(1));
    // A hang guard, not a timed assertion: the device gets its own CAP.TO.
    let wait_rdy = |want: u32| {
        let t = Instant::now();
        while bar.read32(0x1c) & 1 != want {
            assert!(t.elapsed() < limit, "CSTS.RDY never became {want}");
            std::thread::sleep(Duration::from_millis(1));
        }
    };
    bar.write32(0x14, 0); // CC.EN = 0
    wait_rdy(0);

    let mem = f
        .dma_memory(MemoryOptions {
            region_bytes: 2 << 20,
            allow_fallback: true,
            ..Default::default()
        })
        .unwrap();
    let asq = mem.alloc(4096, 4096).unwrap();
    let acq = mem.alloc(4096, 4096).unwrap();
    let id = mem.alloc(4096, 4096).unwrap();
    id.fill(0xee);
    let fds = f.enable_msix(1).unwrap();

    bar.write32(0x24, (15 << 16) | 15); // AQA: 16-entry admin queues
    bar.write64(0x28, asq.iova()); // ASQ
    bar.write64(0x30, acq.iova()); // ACQ
    bar.write32(0x14, (4 << 20) | (6 << 16) | 1); // CC: IOCQES 16 B, IOSQES 64 B, MPS 4 KiB, EN
    wait_rdy(1);

    // Identify (opcode 0x06), CID 0x2a, CNS 1 (controller), PRP1 = the buffer.
    let sqe = [0x06 | (0x2a << 16), 0, 0, id.iova(), 0, 1, 0, 0];
    asq.write_qwords(0, &sqe);
    wmb(); // the SQ entry is visible before the doorbell
    bar.write32(0x1000, 1); // SQ 0 tail = 1

    let t = Instant::now();
    let cqe = loop {
        let dw = acq.read_dwords(0);
        if dw[3] & (1 << 16) != 0 {
            rmb(); // the phase bit was seen: now the rest of the entry and the data
            break acq.read_dwords(0);
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "no completion for Identify"
        );
        std::thread::yield_now();
    };
    bar.write32(0x1000 + (4 << dstrd), 1); // CQ 0 head = 1
    assert_eq!(cqe[3] & 0xffff, 0x2a, "CID");
    assert_eq!((cqe[3] >> 17) & 0x7fff, 0, "status");
    let mut data = vec![0u8; 4096];
    id.copy_to_slice(0, &mut data).unwrap();
    assert_eq!(
        u16::from_le_bytes([data[0], data[1]]),
        0x1b36,
        "PCI vendor id in Identify"
    );
    let model = String::from_utf8_lossy(&data[24..64]).trim().to_string();
    assert!(model.starts_with("QEMU NVMe Ctrl"), "model {model:?}");

    // The admin CQ interrupts on vector 0.
    let t = Instant::now();
    let fired = loop {
        match fds[0].read() {
            Ok(n) => break n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                assert!(
                    t.elapsed() < Duration::from_secs(5),
                    "MSI-X vector 0 never fired"
                );
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) => panic!("eventfd read: {e}"),
        }
    };
    assert!(fired >= 1);
    eprintln!(
        "identify via {}: model {model:?}, buffer IOVA {:#x}, MSI-X fired",
        f.describe(),
        id.iova()
    );

    bar.write32(0x14, 0);
    wait_rdy(0);
    f.disable_msix().unwrap();
    f.reset().unwrap();
}

/// In the VM suite: a second open of the same function is refused with a clear error, and
/// the function can be opened again once the first user is gone.
#[test]
#[ignore = "needs a vfio-pci bound NVMe: NVME_DIO_VFIO_BDF=BDF cargo test -p nvme-dio-dma -- --ignored"]
fn vm_second_open_is_busy_if_configured() {
    let bdf = std::env::var("NVME_DIO_VFIO_BDF")
        .expect("NVME_DIO_VFIO_BDF names the vfio-pci bound device to test");
    let first = VfioFunction::open(&bdf).unwrap();
    let err = VfioFunction::open(&bdf).unwrap_err();
    assert!(matches!(err, Error::DeviceBusy { .. }), "{err:?}");
    assert!(err.to_string().contains("busy"), "{err}");
    drop(first);
    let again = VfioFunction::open(&bdf).unwrap();
    assert_eq!(again.bdf(), parse_bdf(&bdf).unwrap());
}
