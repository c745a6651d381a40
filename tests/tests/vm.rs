//! The VM suite (run by ci/vm-test inside a QEMU guest with `--include-ignored`; on the host
//! every test is ignored, so a host run never counts them as passed).
//!
//! These first tests check the harness's promise to the driver tests: every controller of the
//! matrix is a QEMU NVMe bound to vfio-pci in its own IOMMU group, with its BAR0 and the
//! hugepages the driver needs.

use std::collections::BTreeSet;
use std::path::Path;

use nvme_dio_tests::vm::{self, VmController};

fn sysfs_link_name(c: &VmController, link: &str) -> String {
    let target = std::fs::read_link(c.sysfs().join(link))
        .unwrap_or_else(|e| panic!("{}: no {link} link: {e}", c.bdf));
    target.file_name().unwrap().to_string_lossy().into_owned()
}

#[test]
#[ignore = "VM suite: needs the QEMU guest, run ci/vm-test"]
fn matrix_has_the_harness_roles() {
    let Some(m) = vm::matrix_or_skip() else {
        return;
    };
    let roles: BTreeSet<&str> = m.iter().map(|c| c.role.as_str()).collect();
    // At least these: other blocks of the harness add their own controllers (the data
    // path's meta512/meta4k, ...).
    let base = BTreeSet::from(["default", "hotplug", "mdts0", "mdts2", "msix2", "ns512"]);
    assert!(base.is_subset(&roles), "{m:?}");
    let ns512 = vm::controller("ns512").unwrap();
    assert_eq!(ns512.lba_size, 512);
    assert_eq!(ns512.namespaces.len(), 2);
    assert_eq!(vm::controller("mdts2").unwrap().mdts, 2);
    assert_eq!(vm::controller("mdts0").unwrap().mdts, 0);
    for c in &m {
        assert!(c.sysfs().is_dir(), "{}: no such PCI device", c.bdf);
    }
}

#[test]
#[ignore = "VM suite: needs the QEMU guest, run ci/vm-test"]
fn controllers_are_bound_to_vfio_pci() {
    let Some(m) = vm::matrix_or_skip() else {
        return;
    };
    for c in &m {
        assert_eq!(sysfs_link_name(c, "driver"), "vfio-pci", "{}", c.bdf);
    }
}

#[test]
#[ignore = "VM suite: needs the QEMU guest, run ci/vm-test"]
fn each_controller_has_its_own_vfio_group() {
    let Some(m) = vm::matrix_or_skip() else {
        return;
    };
    assert!(
        Path::new("/dev/vfio/vfio").exists(),
        "/dev/vfio/vfio missing: vfio modules not loaded"
    );
    let mut groups = BTreeSet::new();
    for c in &m {
        let g = c.iommu_group().unwrap();
        let node = format!("/dev/vfio/{g}");
        assert!(Path::new(&node).exists(), "{}: {node} missing", c.bdf);
        assert!(
            groups.insert(g),
            "{}: group {g} shared with another controller",
            c.bdf
        );
    }
}

#[test]
#[ignore = "VM suite: needs the QEMU guest, run ci/vm-test"]
fn config_space_identifies_qemu_nvme() {
    let Some(m) = vm::matrix_or_skip() else {
        return;
    };
    for c in &m {
        let cfg = std::fs::read(c.sysfs().join("config")).unwrap();
        assert!(
            cfg.len() >= 64,
            "{}: config space {} bytes",
            c.bdf,
            cfg.len()
        );
        let vendor = u16::from_le_bytes([cfg[0], cfg[1]]);
        let device = u16::from_le_bytes([cfg[2], cfg[3]]);
        // Class code: base class 0x01 (storage), subclass 0x08 (NVM), prog-if 0x02 (NVMe).
        let class = [cfg[11], cfg[10], cfg[9]];
        assert!(
            (vendor, device) == (0x1b36, 0x0010),
            "{}: PCI id {vendor:04x}:{device:04x}, not QEMU's NVMe 1b36:0010",
            c.bdf
        );
        assert_eq!(class, [0x01, 0x08, 0x02], "{}: class", c.bdf);
    }
}

#[test]
#[ignore = "VM suite: needs the QEMU guest, run ci/vm-test"]
fn bar0_is_at_least_16k() {
    let Some(m) = vm::matrix_or_skip() else {
        return;
    };
    for c in &m {
        let res = std::fs::read_to_string(c.sysfs().join("resource")).unwrap();
        let bar0: Vec<u64> = res
            .lines()
            .next()
            .unwrap()
            .split_whitespace()
            .map(|h| u64::from_str_radix(h.trim_start_matches("0x"), 16).unwrap())
            .collect();
        let (start, end) = (bar0[0], bar0[1]);
        assert!(start != 0 && end > start, "{}: BAR0 unassigned", c.bdf);
        assert!(
            end - start + 1 >= 16 * 1024,
            "{}: BAR0 is {} bytes",
            c.bdf,
            end - start + 1
        );
    }
}

#[test]
#[ignore = "VM suite: needs the QEMU guest, run ci/vm-test"]
fn hugepages_are_reserved() {
    if vm::matrix_or_skip().is_none() {
        return;
    }
    let n: u64 = std::fs::read_to_string("/proc/sys/vm/nr_hugepages")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(n >= 64, "only {n} hugepages reserved");
}
