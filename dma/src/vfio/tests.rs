//! VFIO tests that run without a device: address parsing, sysfs checks against a fake tree,
//! the IOMMU-info parser, ioctl numbers, BAR accessors over ordinary memory, and the error
//! path of `open`. The real device path runs in the VM suite: `tests/tests/vm_dma.rs`.

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
