//! `nvme-dio setup BDF` and `nvme-dio reset BDF`: hand a controller to vfio-pci and back.
//!
//! Setup refuses before touching anything when binding would hurt or cannot work: the
//! function is not an NVMe controller, one of its namespaces (or their partitions) is
//! mounted or used as swap, there is no IOMMU group, or another device in the group is bound
//! to a host driver (VFIO would refuse the group). Then it binds with `driver_override`,
//! `unbind`, `drivers_probe` (the kernel's documented sequence), reserves hugepages if asked,
//! and checks RLIMIT_MEMLOCK, which VFIO pins DMA memory against.

use std::path::Path;

use crate::args::{ResetArgs, SetupArgs};
use crate::error::CliError;
use crate::sysfs::{NVME_CLASS, Sysfs};

/// Drivers a device may have in a group VFIO accepts: vfio-pci, none, and the ones the
/// kernel's VFIO core allows (`pci-stub`, and `pcieport` for bridges).
const GROUP_OK: &[&str] = &["vfio-pci", "pci-stub", "pcieport"];

fn write(s: &Sysfs, step: &str, path: &Path, value: &str) -> Result<(), CliError> {
    s.write(path, value).map_err(|source| CliError::Sysfs {
        step: step.to_string(),
        path: path.to_owned(),
        source,
    })
}

/// Checks that `bdf` is an NVMe controller that can be taken from the kernel. Returns its
/// IOMMU group.
///
/// # Errors
///
/// [`CliError::Refused`] with the reason and what to do.
pub fn preflight(s: &Sysfs, bdf: &str) -> Result<u32, CliError> {
    let refuse = |reason: String| {
        Err(CliError::Refused {
            action: "set up",
            bdf: bdf.to_string(),
            reason,
        })
    };
    if !s.dev(bdf).exists() {
        return refuse(format!(
            "there is no PCI device {bdf} in {}; see `nvme-dio list`",
            s.pci_devices_dir().display()
        ));
    }
    match s.class(bdf) {
        Some(NVME_CLASS) => {}
        Some(c) => {
            return refuse(format!(
                "it is not an NVMe controller (PCI class {c:#08x}, NVMe is 0x010802)"
            ));
        }
        None => return refuse("its PCI class cannot be read".into()),
    }
    let mut busy = Vec::new();
    for disk in s.block_devices(bdf) {
        for name in std::iter::once(disk.clone()).chain(s.partitions(&disk)) {
            for m in s.mounts_of(&name) {
                busy.push(format!("/dev/{name} on {m}"));
            }
        }
    }
    if !busy.is_empty() {
        return refuse(format!(
            "it holds mounted filesystems or swap ({}): unmount them (and swapoff) first; binding to vfio-pci would pull the disk out from under them",
            busy.join(", ")
        ));
    }
    let Some(group) = s.iommu_group(bdf) else {
        return refuse(
            "it has no IOMMU group: the IOMMU is off; boot with intel_iommu=on (or amd_iommu=on) and enable VT-d / AMD-Vi in the firmware".into(),
        );
    };
    for other in s.group_devices(bdf) {
        if other == bdf {
            continue;
        }
        if let Some(d) = s.driver(&other)
            && !GROUP_OK.contains(&d.as_str())
        {
            return refuse(format!(
                "IOMMU group {group} is not viable: {other} in the same group is bound to {d}; VFIO needs every device in a group bound to vfio-pci or to nothing (run `nvme-dio setup {other}` if it is an NVMe controller, or unbind it)"
            ));
        }
    }
    Ok(group)
}

/// Runs `nvme-dio setup`.
///
/// # Errors
///
/// [`CliError::Refused`] from the checks, [`CliError::Sysfs`] if a write fails (not root?).
pub fn setup(s: &Sysfs, a: &SetupArgs) -> Result<(), CliError> {
    let bdf = a.bdf.as_str();
    let group = preflight(s, bdf)?;
    let before = s.driver(bdf);
    if before.as_deref() == Some("vfio-pci") {
        crate::out::status(&format!(
            "{bdf} is already bound to vfio-pci (IOMMU group {group})"
        ))?;
    } else {
        bind_vfio(s, bdf)?;
        crate::out::status(&format!(
            "{bdf}: {} -> vfio-pci (IOMMU group {group})",
            before.as_deref().unwrap_or("no driver")
        ))?;
    }
    let node = s.path(&format!("dev/vfio/{group}"));
    if !node.exists() {
        crate::out::status(&format!(
            "warning: {} does not exist yet; check `dmesg` for vfio-pci errors",
            node.display()
        ))?;
    }
    if let Some(n) = a.hugepages {
        reserve_hugepages(s, n)?;
    }
    for line in memlock_advice(s) {
        crate::out::status(&line)?;
    }
    crate::out::status(&format!("ready: nvme-dio bench --device {bdf}"))?;
    Ok(())
}

fn bind_vfio(s: &Sysfs, bdf: &str) -> Result<(), CliError> {
    let drivers = s.path("sys/bus/pci/drivers/vfio-pci");
    if !drivers.exists() && s.path("") == Path::new("/") {
        // Loading the module is the one step a user would otherwise do by hand.
        let _ = std::process::Command::new("modprobe")
            .arg("vfio-pci")
            .status();
    }
    if !drivers.exists() {
        return Err(CliError::Refused {
            action: "set up",
            bdf: bdf.to_string(),
            reason: "the vfio-pci driver is not loaded and `modprobe vfio-pci` did not load it: install your distribution's VFIO modules".into(),
        });
    }
    let dev = s.dev(bdf);
    write(
        s,
        "setting driver_override to vfio-pci",
        &dev.join("driver_override"),
        "vfio-pci",
    )?;
    if s.driver(bdf).is_some() {
        write(
            s,
            "unbinding the current driver",
            &dev.join("driver/unbind"),
            bdf,
        )?;
    }
    write(
        s,
        "probing drivers",
        &s.path("sys/bus/pci/drivers_probe"),
        bdf,
    )?;
    match s.driver(bdf) {
        Some(d) if d == "vfio-pci" => Ok(()),
        other => Err(CliError::Refused {
            action: "set up",
            bdf: bdf.to_string(),
            reason: format!(
                "after driver_override + drivers_probe it is bound to {}, not vfio-pci: see `dmesg | tail` for why vfio-pci did not take it",
                other.as_deref().unwrap_or("no driver")
            ),
        }),
    }
}

fn reserve_hugepages(s: &Sysfs, want: u64) -> Result<(), CliError> {
    let path = s.path("proc/sys/vm/nr_hugepages");
    let read = || {
        std::fs::read_to_string(&path)
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    let have = read();
    if have < want {
        write(s, "reserving 2 MiB hugepages", &path, &want.to_string())?;
    }
    let now = read();
    let free =
        std::fs::read_to_string(s.path("sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages"))
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok());
    if now < want {
        crate::out::status(&format!(
            "warning: only {now} of {want} 2 MiB hugepages could be reserved (memory is fragmented): reserve them at boot with hugepages={want}"
        ))?;
    } else {
        crate::out::status(&format!(
            "hugepages: {now} x 2 MiB reserved{}",
            free.map(|f| format!(", {f} free")).unwrap_or_default()
        ))?;
    }
    Ok(())
}

/// What to say about RLIMIT_MEMLOCK: VFIO pins every DMA mapping against it unless the
/// process has CAP_IPC_LOCK.
pub fn memlock_advice(s: &Sysfs) -> Vec<String> {
    const NEED: u64 = 64 << 20;
    match s.memlock_limit() {
        Some(Some(limit)) if limit < NEED && !s.has_ipc_lock() => vec![format!(
            "warning: RLIMIT_MEMLOCK is {} KiB and this process lacks CAP_IPC_LOCK: VFIO pins DMA memory against that limit, so nvme-dio may fail to map its buffers; raise it (`ulimit -l unlimited`, or LimitMEMLOCK=infinity for a service) or run as root",
            limit >> 10
        )],
        Some(Some(limit)) if limit < NEED => {
            vec![format!(
                "memlock: limit {} KiB, but CAP_IPC_LOCK lifts it for VFIO pinning",
                limit >> 10
            )]
        }
        Some(_) => vec!["memlock: the limit is large enough for VFIO pinning".into()],
        None => vec!["memlock: /proc/self/limits is unreadable; check `ulimit -l`".into()],
    }
}

/// Runs `nvme-dio reset`: back to the kernel's nvme driver.
///
/// # Errors
///
/// [`CliError::Refused`] if it is not an NVMe controller, [`CliError::Sysfs`] if a write fails.
pub fn reset(s: &Sysfs, a: &ResetArgs) -> Result<(), CliError> {
    let bdf = a.bdf.as_str();
    let refuse = |reason: String| {
        Err(CliError::Refused {
            action: "reset",
            bdf: bdf.to_string(),
            reason,
        })
    };
    if !s.dev(bdf).exists() {
        return refuse(format!("there is no PCI device {bdf}; see `nvme-dio list`"));
    }
    match s.class(bdf) {
        Some(NVME_CLASS) => {}
        c => {
            return refuse(format!(
                "it is not an NVMe controller (PCI class {}, NVMe is 0x010802)",
                c.map_or("unreadable".to_string(), |c| format!("{c:#08x}"))
            ));
        }
    }
    let dev = s.dev(bdf);
    let before = s.driver(bdf);
    // An empty line clears the override, so the normal match (nvme) applies again.
    write(
        s,
        "clearing driver_override",
        &dev.join("driver_override"),
        "\n",
    )?;
    if before.is_some() && before.as_deref() != Some("nvme") {
        write(
            s,
            "unbinding the current driver",
            &dev.join("driver/unbind"),
            bdf,
        )?;
    }
    if s.driver(bdf).is_none() {
        write(
            s,
            "probing drivers",
            &s.path("sys/bus/pci/drivers_probe"),
            bdf,
        )?;
    }
    match s.driver(bdf) {
        Some(d) if d == "nvme" => {
            let disks = s.block_devices(bdf);
            crate::out::status(&format!(
                "{bdf}: {} -> nvme{}",
                before.as_deref().unwrap_or("no driver"),
                if disks.is_empty() {
                    " (namespaces appear in a moment; see `nvme-dio list`)".to_string()
                } else {
                    format!(", block devices {}", disks.join(" "))
                }
            ))?;
            Ok(())
        }
        other => refuse(format!(
            "after clearing driver_override it is bound to {}, not nvme: is the nvme module loaded (`modprobe nvme`)? see `dmesg | tail`",
            other.as_deref().unwrap_or("no driver")
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sysfs::fake::Tree;

    fn args(bdf: &str) -> SetupArgs {
        SetupArgs {
            bdf: bdf.into(),
            hugepages: None,
        }
    }

    #[test]
    fn refuses_a_controller_with_a_mounted_filesystem_and_names_it() {
        let t = Tree::new("setup-mounted");
        t.device("0000:01:00.0", NVME_CLASS, Some("nvme"), Some(7));
        t.namespace("0000:01:00.0", 0, 1);
        std::fs::create_dir_all(t.root.join("sys/class/block/nvme0n1/nvme0n1p1")).unwrap();
        t.file(
            "proc/mounts",
            "/dev/vda / ext4 rw 0 0\n/dev/nvme0n1p1 /data xfs rw 0 0\n",
        );
        let e = setup(&t.sysfs(), &args("0000:01:00.0"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("/dev/nvme0n1p1 on /data") && e.contains("unmount"),
            "{e}"
        );
        let ov = std::fs::read_to_string(
            t.root
                .join("sys/bus/pci/devices/0000:01:00.0/driver_override"),
        )
        .unwrap();
        assert_eq!(ov, "(null)\n", "nothing was written before refusing");
    }

    #[test]
    fn refuses_non_nvme_missing_devices_no_iommu_and_unviable_groups() {
        let t = Tree::new("setup-refuse");
        t.device("0000:00:03.0", 0x020000, Some("virtio-pci"), Some(3));
        t.device("0000:01:00.0", NVME_CLASS, Some("nvme"), None);
        t.device("0000:02:00.0", NVME_CLASS, None, Some(9));
        t.device("0000:02:00.1", 0x0c0330, Some("xhci_hcd"), Some(9));
        let s = t.sysfs();
        let e = |b: &str| setup(&s, &args(b)).unwrap_err().to_string();
        assert!(e("0000:00:03.0").contains("not an NVMe controller"));
        assert!(e("0000:09:00.0").contains("no PCI device"));
        assert!(e("0000:01:00.0").contains("no IOMMU group"));
        let g = e("0000:02:00.0");
        assert!(
            g.contains("group 9 is not viable")
                && g.contains("0000:02:00.1")
                && g.contains("xhci_hcd"),
            "{g}"
        );
    }

    #[test]
    fn bind_writes_override_unbind_and_probe_then_checks_the_result() {
        let t = Tree::new("setup-bind");
        t.device("0000:01:00.0", NVME_CLASS, Some("nvme"), Some(7));
        std::fs::create_dir_all(t.root.join("sys/bus/pci/drivers/vfio-pci")).unwrap();
        // The fake kernel does not rebind, so the final check must notice.
        let e = setup(&t.sysfs(), &args("0000:01:00.0"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("bound to nvme, not vfio-pci") && e.contains("dmesg"),
            "{e}"
        );
        let read = |p: &str| std::fs::read_to_string(t.root.join(p)).unwrap();
        assert_eq!(
            read("sys/bus/pci/devices/0000:01:00.0/driver_override"),
            "vfio-pci"
        );
        assert_eq!(read("sys/bus/pci/drivers/nvme/unbind"), "0000:01:00.0");
        assert_eq!(read("sys/bus/pci/drivers_probe"), "0000:01:00.0");
    }

    #[test]
    fn memlock_advice_depends_on_the_limit_and_cap_ipc_lock() {
        let t = Tree::new("setup-memlock");
        let s = t.sysfs();
        t.file(
            "proc/self/limits",
            "Max locked memory         8388608              8388608              bytes\n",
        );
        t.file("proc/self/status", "CapEff:\t0000000000000000\n");
        assert!(memlock_advice(&s)[0].contains("warning: RLIMIT_MEMLOCK is 8192 KiB"));
        t.file("proc/self/status", "CapEff:\t000001ffffffffff\n");
        assert!(memlock_advice(&s)[0].contains("CAP_IPC_LOCK lifts it"));
        t.file(
            "proc/self/limits",
            "Max locked memory         unlimited            unlimited            bytes\n",
        );
        assert!(memlock_advice(&s)[0].contains("large enough"));
    }
}
