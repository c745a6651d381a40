//! `nvme-dio list`: every NVMe controller (PCI class 0x010802) in sysfs.

use std::fmt::Write as _;

use crate::args::ListArgs;
use crate::error::CliError;
use crate::sysfs::{Controller, Sysfs};

/// Runs `nvme-dio list` on this machine.
///
/// # Errors
///
/// Only if the output cannot be written (see [`crate::out`]).
pub fn run(args: &ListArgs) -> Result<(), CliError> {
    let s = Sysfs::host();
    let c = s.nvme_controllers();
    if args.json {
        crate::out::println(&serde_json::to_string_pretty(&c)?)
    } else {
        crate::out::print(&render(&c, &s))
    }
}

/// The human listing.
pub fn render(c: &[Controller], s: &Sysfs) -> String {
    let mut o = String::new();
    if c.is_empty() {
        let _ = writeln!(
            o,
            "no NVMe controllers found in {} (PCI class 0x010802); `nvme-dio bench` uses the emulated controller by default",
            s.pci_devices_dir().display()
        );
        return o;
    }
    let _ = writeln!(
        o,
        "{:<14} {:<11} {:<10} {:<11} {:<5} block devices",
        "address", "vendor:dev", "driver", "iommu group", "numa"
    );
    for x in c {
        let _ = writeln!(
            o,
            "{:<14} {:04x}:{:04x}  {:<10} {:<11} {:<5} {}",
            x.address,
            x.vendor,
            x.device,
            x.driver.as_deref().unwrap_or("(none)"),
            x.iommu_group
                .map_or("(no iommu)".to_string(), |g| g.to_string()),
            x.numa_node.map_or("-".to_string(), |n| n.to_string()),
            if x.block_devices.is_empty() {
                "-".to_string()
            } else {
                x.block_devices.join(" ")
            }
        );
    }
    if c.iter().any(|x| x.driver.as_deref() != Some("vfio-pci")) {
        let _ = writeln!(
            o,
            "to drive a controller with nvme-dio, bind it to vfio-pci: nvme-dio setup <address>"
        );
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sysfs::NVME_CLASS;
    use crate::sysfs::fake::Tree;

    #[test]
    fn empty_machine_says_so_in_one_line() {
        let t = Tree::new("list-empty");
        let s = t.sysfs();
        let out = render(&s.nvme_controllers(), &s);
        assert!(out.starts_with("no NVMe controllers found"), "{out}");
        assert_eq!(out.lines().count(), 1);
    }

    #[test]
    fn listing_shows_driver_group_numa_and_disks() {
        let t = Tree::new("list-render");
        t.device("0000:01:00.0", NVME_CLASS, Some("nvme"), Some(7));
        t.namespace("0000:01:00.0", 0, 1);
        t.device("0000:02:00.0", NVME_CLASS, None, None);
        let s = t.sysfs();
        let out = render(&s.nvme_controllers(), &s);
        let lines: Vec<&str> = out.lines().collect();
        assert!(
            lines[1].contains("0000:01:00.0")
                && lines[1].contains("1b36:0010")
                && lines[1].contains("nvme0n1"),
            "{out}"
        );
        assert!(lines[1].contains(" 7 "), "{out}");
        assert!(
            lines[2].contains("(none)") && lines[2].contains("(no iommu)"),
            "{out}"
        );
        assert!(out.contains("nvme-dio setup"));
    }
}
