//! Reading (and for `setup`, writing) sysfs and procfs, under a root directory so that tests
//! can build a fake tree: `Sysfs::host()` is `/`, a test passes a temporary directory.

use std::path::{Path, PathBuf};

use serde::Serialize;

/// PCI class code of an NVM Express controller (mass storage, NVM, NVMe programming interface).
pub const NVME_CLASS: u32 = 0x010802;

/// The environment variable that moves [`Sysfs::host`]'s root (tests only).
pub const SYSFS_ROOT_ENV: &str = "NVME_DIO_SYSFS_ROOT";

/// A view of `/sys` and `/proc` under `root`.
#[derive(Clone, Debug)]
pub struct Sysfs {
    root: PathBuf,
    /// Tests: a fake kernel that reacts to writes (unbind, drivers_probe) as the real one.
    #[cfg(test)]
    pub(crate) kernel: Option<fn(&Sysfs, &Path, &str)>,
}

/// One NVMe controller as sysfs describes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Controller {
    /// PCI address.
    pub address: String,
    /// PCI vendor id.
    pub vendor: u16,
    /// PCI device id.
    pub device: u16,
    /// The bound driver (`nvme`, `vfio-pci`, ...), if any.
    pub driver: Option<String>,
    /// IOMMU group, if the IOMMU is on.
    pub iommu_group: Option<u32>,
    /// NUMA node (None when the platform reports -1 or nothing).
    pub numa_node: Option<i32>,
    /// Block devices (namespaces) of a kernel-bound controller, like `nvme0n1`.
    pub block_devices: Vec<String>,
}

/// Who a controller is and what it holds: from sysfs for a kernel-bound controller (as
/// `nvme list` reads it), from Identify for one bound to vfio-pci.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Identity {
    /// Model number.
    pub model: String,
    /// Serial number.
    pub serial: String,
    /// Firmware revision.
    pub firmware: String,
    /// The kernel's controller name (`nvme0`), for a kernel-bound controller.
    pub kernel_name: Option<String>,
    /// The namespaces.
    pub namespaces: Vec<NamespaceSummary>,
}

impl Identity {
    /// Bytes of all namespaces together.
    pub fn capacity_bytes(&self) -> u64 {
        self.namespaces.iter().map(|n| n.bytes).sum()
    }
}

/// One namespace in a listing.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct NamespaceSummary {
    /// NSID (0 when the kernel does not say).
    pub nsid: u32,
    /// The block device (`nvme0n1`), for a kernel-bound controller.
    pub block_device: Option<String>,
    /// Size in bytes.
    pub bytes: u64,
    /// Logical block size in bytes.
    pub lba_size: u32,
}

fn read_trim(p: &Path) -> Option<String> {
    std::fs::read_to_string(p)
        .ok()
        .map(|s| s.trim().to_string())
}

fn parse_hex(s: &str) -> Option<u32> {
    u32::from_str_radix(s.trim().trim_start_matches("0x"), 16).ok()
}

fn link_name(p: &Path) -> Option<String> {
    std::fs::read_link(p)
        .ok()?
        .file_name()?
        .to_str()
        .map(str::to_owned)
}

/// True for a namespace block device name `nvme<N>n<M>` (or the multipath path form
/// `nvme<N>c<C>n<M>`, returned as `nvme<N>n<M>`).
fn namespace_name(name: &str) -> Option<String> {
    let rest = name.strip_prefix("nvme")?;
    let (ctrl, rest) = rest.split_at(rest.find(|c: char| !c.is_ascii_digit())?);
    let rest = match rest.strip_prefix('c') {
        Some(r) => r.trim_start_matches(|c: char| c.is_ascii_digit()),
        None => rest,
    };
    let ns = rest.strip_prefix('n')?;
    (!ctrl.is_empty() && !ns.is_empty() && ns.chars().all(|c| c.is_ascii_digit()))
        .then(|| format!("nvme{ctrl}n{ns}"))
}

impl Sysfs {
    /// The real machine: `/`, or the directory named by `NVME_DIO_SYSFS_ROOT` (a testing aid:
    /// the CLI tests run `list` and `setup` against a fake tree through the binary).
    pub fn host() -> Sysfs {
        Sysfs {
            root: std::env::var_os(SYSFS_ROOT_ENV)
                .filter(|v| !v.is_empty())
                .map_or_else(|| PathBuf::from("/"), PathBuf::from),
            #[cfg(test)]
            kernel: None,
        }
    }

    /// A tree under `root` (tests).
    pub fn at(root: impl Into<PathBuf>) -> Sysfs {
        Sysfs {
            root: root.into(),
            #[cfg(test)]
            kernel: None,
        }
    }

    /// `<root>/<rel>`.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel.trim_start_matches('/'))
    }

    /// `/sys/bus/pci/devices`.
    pub fn pci_devices_dir(&self) -> PathBuf {
        self.path("sys/bus/pci/devices")
    }

    /// `/sys/bus/pci/devices/<bdf>`.
    pub fn dev(&self, bdf: &str) -> PathBuf {
        self.pci_devices_dir().join(bdf)
    }

    /// The PCI class code of `bdf`.
    pub fn class(&self, bdf: &str) -> Option<u32> {
        read_trim(&self.dev(bdf).join("class")).and_then(|s| parse_hex(&s))
    }

    /// The driver bound to `bdf`.
    pub fn driver(&self, bdf: &str) -> Option<String> {
        link_name(&self.dev(bdf).join("driver"))
    }

    /// The IOMMU group of `bdf`.
    pub fn iommu_group(&self, bdf: &str) -> Option<u32> {
        link_name(&self.dev(bdf).join("iommu_group"))?.parse().ok()
    }

    /// Every device in `bdf`'s IOMMU group (including itself), sorted.
    pub fn group_devices(&self, bdf: &str) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.dev(bdf).join("iommu_group/devices"))
            .map(|d| {
                d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    /// Namespace block devices of a kernel-bound controller
    /// (`/sys/bus/pci/devices/BDF/nvme/nvme*/nvme*n*`), sorted.
    pub fn block_devices(&self, bdf: &str) -> Vec<String> {
        let mut out = Vec::new();
        let Ok(ctrls) = std::fs::read_dir(self.dev(bdf).join("nvme")) else {
            return out;
        };
        for c in ctrls.flatten() {
            let Ok(entries) = std::fs::read_dir(c.path()) else {
                continue;
            };
            for e in entries.flatten() {
                if let Some(n) = e.file_name().to_str().and_then(namespace_name)
                    && !out.contains(&n)
                {
                    out.push(n);
                }
            }
        }
        out.sort();
        out
    }

    /// The kernel's controller directories of `bdf` (`.../nvme/nvme0`), sorted.
    fn kernel_ctrl_dirs(&self, bdf: &str) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(self.dev(bdf).join("nvme"))
            .map(|d| d.filter_map(|e| Some(e.ok()?.path())).collect())
            .unwrap_or_default();
        v.sort();
        v
    }

    /// What the kernel's nvme driver publishes about a controller it drives: model, serial
    /// and firmware (`.../nvme/nvme0/{model,serial,firmware_rev}`) and each namespace's size
    /// (`/sys/class/block/nvme0n1/size`, in 512-byte sectors), block size
    /// (`queue/logical_block_size`) and NSID (`nsid`). None when there is no such directory.
    pub fn kernel_identity(&self, bdf: &str) -> Option<Identity> {
        let ctrl = self.kernel_ctrl_dirs(bdf).into_iter().next()?;
        let field = |f: &str| read_trim(&ctrl.join(f)).unwrap_or_default();
        let namespaces = self
            .block_devices(bdf)
            .into_iter()
            .map(|name| {
                let b = self.path("sys/class/block").join(&name);
                let num = |f: &str| read_trim(&b.join(f)).and_then(|s| s.parse::<u64>().ok());
                NamespaceSummary {
                    nsid: num("nsid").unwrap_or_else(|| {
                        // nvme0n3 -> 3 when the attribute is missing (older kernels).
                        name.rsplit('n')
                            .next()
                            .and_then(|n| n.parse().ok())
                            .unwrap_or(0)
                    }) as u32,
                    bytes: num("size").unwrap_or(0) * 512,
                    lba_size: num("queue/logical_block_size").unwrap_or(0) as u32,
                    block_device: Some(name),
                }
            })
            .collect();
        Some(Identity {
            model: field("model"),
            serial: field("serial"),
            firmware: field("firmware_rev"),
            kernel_name: ctrl.file_name().and_then(|n| n.to_str()).map(str::to_owned),
            namespaces,
        })
    }

    /// Partitions of block device `name` (`/sys/class/block/<name>/<name>p*`).
    pub fn partitions(&self, name: &str) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.path("sys/class/block").join(name))
            .map(|d| {
                d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                    .filter(|n| n.starts_with(name) && n.len() > name.len())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    /// Every NVMe controller, sorted by address.
    pub fn nvme_controllers(&self) -> Vec<Controller> {
        let Ok(dir) = std::fs::read_dir(self.pci_devices_dir()) else {
            return Vec::new();
        };
        let mut bdfs: Vec<String> = dir
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .collect();
        bdfs.sort();
        bdfs.into_iter()
            .filter(|b| self.class(b) == Some(NVME_CLASS))
            .map(|b| self.controller(&b))
            .collect()
    }

    /// What sysfs says about `bdf`.
    pub fn controller(&self, bdf: &str) -> Controller {
        let d = self.dev(bdf);
        let id = |f: &str| {
            read_trim(&d.join(f))
                .and_then(|s| parse_hex(&s))
                .unwrap_or(0) as u16
        };
        let driver = self.driver(bdf);
        Controller {
            address: bdf.to_string(),
            vendor: id("vendor"),
            device: id("device"),
            block_devices: if driver.as_deref() == Some("nvme") {
                self.block_devices(bdf)
            } else {
                Vec::new()
            },
            driver,
            iommu_group: self.iommu_group(bdf),
            numa_node: read_trim(&d.join("numa_node"))
                .and_then(|s| s.parse().ok())
                .filter(|&n: &i32| n >= 0),
        }
    }

    /// Mount points of `/dev/<name>` in `/proc/mounts` (and `"swap"` if it is in `/proc/swaps`).
    pub fn mounts_of(&self, name: &str) -> Vec<String> {
        let dev = format!("/dev/{name}");
        let mut out: Vec<String> = read_trim(&self.path("proc/mounts"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let mut f = l.split_whitespace();
                (f.next()? == dev).then(|| f.next().map(str::to_owned))?
            })
            .collect();
        if read_trim(&self.path("proc/swaps"))
            .unwrap_or_default()
            .lines()
            .any(|l| l.split_whitespace().next() == Some(dev.as_str()))
        {
            out.push("swap".into());
        }
        out
    }

    /// RLIMIT_MEMLOCK soft limit in bytes from `/proc/self/limits` (None = unlimited).
    pub fn memlock_limit(&self) -> Option<Option<u64>> {
        let text = read_trim(&self.path("proc/self/limits"))?;
        let line = text.lines().find(|l| l.starts_with("Max locked memory"))?;
        let soft = line["Max locked memory".len()..]
            .split_whitespace()
            .next()?;
        Some(if soft == "unlimited" {
            None
        } else {
            Some(soft.parse().ok()?)
        })
    }

    /// True if the process has CAP_IPC_LOCK (then VFIO pinning ignores RLIMIT_MEMLOCK).
    pub fn has_ipc_lock(&self) -> bool {
        read_trim(&self.path("proc/self/status"))
            .and_then(|s| {
                let l = s.lines().find(|l| l.starts_with("CapEff:"))?;
                u64::from_str_radix(l["CapEff:".len()..].trim(), 16).ok()
            })
            .is_some_and(|caps| caps & (1 << 14) != 0)
    }

    /// Writes `value` to `rel` under the root.
    ///
    /// # Errors
    ///
    /// The OS error.
    pub fn write(&self, path: &Path, value: &str) -> std::io::Result<()> {
        std::fs::write(path, value)?;
        #[cfg(test)]
        if let Some(k) = self.kernel {
            k(self, path, value);
        }
        Ok(())
    }

    /// Block devices stacked on `name` (`/sys/class/block/<name>/holders`: device mapper for
    /// LVM and dm-crypt, md for RAID), sorted.
    pub fn holders(&self, name: &str) -> Vec<String> {
        let mut v: Vec<String> =
            std::fs::read_dir(self.path("sys/class/block").join(name).join("holders"))
                .map(|d| {
                    d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                        .collect()
                })
                .unwrap_or_default();
        v.sort();
        v
    }
}

#[cfg(test)]
pub(crate) mod fake {
    //! A fake sysfs/procfs tree for tests.
    use std::path::{Path, PathBuf};

    use super::Sysfs;

    /// A temporary tree, removed on drop.
    pub struct Tree {
        pub root: PathBuf,
    }

    impl Drop for Tree {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }

    impl Tree {
        pub fn new(name: &str) -> Tree {
            let root =
                std::env::temp_dir().join(format!("nvme-dio-sysfs-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&root);
            std::fs::create_dir_all(root.join("sys/bus/pci/devices")).unwrap();
            std::fs::create_dir_all(root.join("sys/bus/pci/drivers")).unwrap();
            std::fs::create_dir_all(root.join("sys/kernel/iommu_groups")).unwrap();
            std::fs::create_dir_all(root.join("proc/self")).unwrap();
            std::fs::write(root.join("proc/mounts"), "/dev/vda / ext4 rw 0 0\n").unwrap();
            Tree { root }
        }

        pub fn sysfs(&self) -> Sysfs {
            Sysfs::at(&self.root)
        }

        /// The tree with a fake kernel: `driver/unbind` drops the driver link and
        /// `drivers_probe` binds the device to its `driver_override`, or else to `nvme`.
        pub fn sysfs_with_kernel(&self) -> Sysfs {
            let mut s = Sysfs::at(&self.root);
            s.kernel = Some(fake_kernel);
            s
        }
    }

    fn fake_kernel(s: &Sysfs, path: &Path, value: &str) {
        if path.ends_with("driver/unbind") {
            // `<dev>/driver/unbind`: the device is two levels up (through the link).
            let dev = path.parent().and_then(Path::parent).unwrap();
            let _ = std::fs::remove_file(dev.join("driver"));
        } else if path.ends_with("drivers_probe") {
            let dev = s.dev(value.trim());
            if std::fs::read_link(dev.join("driver")).is_ok() {
                return;
            }
            let over = std::fs::read_to_string(dev.join("driver_override")).unwrap_or_default();
            let over = over.trim();
            let drv = if over.is_empty() || over == "(null)" {
                "nvme"
            } else {
                over
            };
            let dd = s.path("sys/bus/pci/drivers").join(drv);
            std::fs::create_dir_all(&dd).unwrap();
            std::os::unix::fs::symlink(dd, dev.join("driver")).unwrap();
        }
    }

    impl Tree {
        pub fn file(&self, rel: &str, text: &str) {
            let p = self.root.join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }

        fn link(&self, rel: &str, target: &Path) {
            let p = self.root.join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            let _ = std::fs::remove_file(&p);
            std::os::unix::fs::symlink(target, p).unwrap();
        }

        /// A PCI device with class, ids, driver, IOMMU group and NUMA node.
        pub fn device(&self, bdf: &str, class: u32, driver: Option<&str>, group: Option<u32>) {
            let d = format!("sys/bus/pci/devices/{bdf}");
            self.file(&format!("{d}/class"), &format!("{class:#08x}\n"));
            self.file(&format!("{d}/vendor"), "0x1b36\n");
            self.file(&format!("{d}/device"), "0x0010\n");
            self.file(&format!("{d}/numa_node"), "-1\n");
            self.file(&format!("{d}/driver_override"), "(null)\n");
            if let Some(drv) = driver {
                let dd = self.root.join("sys/bus/pci/drivers").join(drv);
                std::fs::create_dir_all(&dd).unwrap();
                self.link(&format!("{d}/driver"), &dd);
            }
            if let Some(g) = group {
                let gd = self.root.join(format!("sys/kernel/iommu_groups/{g}"));
                std::fs::create_dir_all(gd.join("devices")).unwrap();
                self.link(&format!("{d}/iommu_group"), &gd);
                self.link(
                    &format!("sys/kernel/iommu_groups/{g}/devices/{bdf}"),
                    &self.root.join(&d),
                );
            }
        }

        /// A namespace block device under a kernel-bound controller.
        pub fn namespace(&self, bdf: &str, ctrl: u32, ns: u32) {
            let name = format!("nvme{ctrl}n{ns}");
            std::fs::create_dir_all(
                self.root
                    .join(format!("sys/bus/pci/devices/{bdf}/nvme/nvme{ctrl}/{name}")),
            )
            .unwrap();
            std::fs::create_dir_all(self.root.join(format!("sys/class/block/{name}"))).unwrap();
        }

        /// What the kernel's nvme driver publishes: the controller's model, serial and
        /// firmware (padded, as the kernel writes them) and a namespace's size, block size
        /// and NSID.
        pub fn kernel_ctrl(&self, bdf: &str, ctrl: u32, model: &str, serial: &str, fw: &str) {
            let d = format!("sys/bus/pci/devices/{bdf}/nvme/nvme{ctrl}");
            self.file(&format!("{d}/model"), &format!("{model:<40}\n"));
            self.file(&format!("{d}/serial"), &format!("{serial:<20}\n"));
            self.file(&format!("{d}/firmware_rev"), &format!("{fw:<8}\n"));
        }

        /// A 2 MiB hugepage pool for NUMA node `node`.
        pub fn numa_node(&self, node: u32, total: u64, free: u64) {
            let d = format!("sys/devices/system/node/node{node}/hugepages/hugepages-2048kB");
            self.file(&format!("{d}/nr_hugepages"), &format!("{total}\n"));
            self.file(&format!("{d}/free_hugepages"), &format!("{free}\n"));
        }

        /// A namespace's size (bytes), block size and NSID, as the block layer shows them.
        pub fn namespace_size(&self, name: &str, bytes: u64, lba_size: u32, nsid: u32) {
            let d = format!("sys/class/block/{name}");
            self.file(&format!("{d}/size"), &format!("{}\n", bytes / 512));
            self.file(
                &format!("{d}/queue/logical_block_size"),
                &format!("{lba_size}\n"),
            );
            self.file(&format!("{d}/nsid"), &format!("{nsid}\n"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fake::Tree;
    use super::*;

    #[test]
    fn finds_nvme_controllers_with_driver_group_and_disks_and_skips_others() {
        let t = Tree::new("list");
        t.device("0000:00:03.0", 0x020000, Some("virtio-pci"), Some(3));
        t.device("0000:01:00.0", NVME_CLASS, Some("nvme"), Some(7));
        t.namespace("0000:01:00.0", 0, 1);
        t.namespace("0000:01:00.0", 0, 2);
        t.device("0000:02:00.0", NVME_CLASS, Some("vfio-pci"), Some(8));
        t.file("sys/bus/pci/devices/0000:02:00.0/numa_node", "1\n");
        let s = t.sysfs();
        let c = s.nvme_controllers();
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].address, "0000:01:00.0");
        assert_eq!((c[0].vendor, c[0].device), (0x1b36, 0x0010));
        assert_eq!(c[0].driver.as_deref(), Some("nvme"));
        assert_eq!(c[0].iommu_group, Some(7));
        assert_eq!(c[0].numa_node, None, "-1 means no NUMA information");
        assert_eq!(c[0].block_devices, vec!["nvme0n1", "nvme0n2"]);
        assert_eq!(c[1].driver.as_deref(), Some("vfio-pci"));
        assert_eq!(c[1].numa_node, Some(1));
        assert!(c[1].block_devices.is_empty());
        assert_eq!(s.group_devices("0000:01:00.0"), vec!["0000:01:00.0"]);
    }

    #[test]
    fn kernel_identity_reads_model_serial_firmware_and_namespace_sizes() {
        let t = Tree::new("kernel-identity");
        t.device("0000:01:00.0", NVME_CLASS, Some("nvme"), Some(7));
        t.kernel_ctrl("0000:01:00.0", 0, "QEMU NVMe Ctrl", "dflt0001", "8.0.0");
        t.namespace("0000:01:00.0", 0, 1);
        t.namespace("0000:01:00.0", 0, 2);
        t.namespace_size("nvme0n1", 64 << 20, 4096, 1);
        t.namespace_size("nvme0n2", 32 << 20, 512, 2);
        t.device("0000:02:00.0", NVME_CLASS, Some("vfio-pci"), Some(8));
        let s = t.sysfs();
        let id = s.kernel_identity("0000:01:00.0").unwrap();
        assert_eq!(
            (id.model.as_str(), id.serial.as_str(), id.firmware.as_str()),
            ("QEMU NVMe Ctrl", "dflt0001", "8.0.0"),
            "the kernel's padding is trimmed"
        );
        assert_eq!(id.kernel_name.as_deref(), Some("nvme0"));
        assert_eq!(
            id.namespaces,
            vec![
                NamespaceSummary {
                    nsid: 1,
                    block_device: Some("nvme0n1".into()),
                    bytes: 64 << 20,
                    lba_size: 4096
                },
                NamespaceSummary {
                    nsid: 2,
                    block_device: Some("nvme0n2".into()),
                    bytes: 32 << 20,
                    lba_size: 512
                }
            ]
        );
        assert_eq!(id.capacity_bytes(), 96 << 20);
        assert_eq!(
            s.kernel_identity("0000:02:00.0"),
            None,
            "vfio-pci: not the kernel's"
        );
    }

    #[test]
    fn namespace_names_include_the_multipath_form() {
        assert_eq!(namespace_name("nvme0n1").as_deref(), Some("nvme0n1"));
        assert_eq!(namespace_name("nvme12c3n4").as_deref(), Some("nvme12n4"));
        assert_eq!(namespace_name("nvme0"), None);
        assert_eq!(namespace_name("ng0n1"), None);
        assert_eq!(namespace_name("nvme0n1p1"), None);
    }

    #[test]
    fn mounts_swaps_and_memlock_are_read_from_procfs() {
        let t = Tree::new("proc");
        t.file(
            "proc/mounts",
            "/dev/nvme0n1p1 /data xfs rw 0 0\n/dev/nvme0n1 /raw ext4 rw 0 0\n",
        );
        t.file(
            "proc/swaps",
            "Filename Type Size Used Priority\n/dev/nvme0n1p2 partition 100 0 -2\n",
        );
        t.file(
            "proc/self/limits",
            "Limit                     Soft Limit           Hard Limit           Units\nMax locked memory         8388608              8388608              bytes\n",
        );
        t.file("proc/self/status", "Name:\tx\nCapEff:\t0000000000004000\n");
        let s = t.sysfs();
        assert_eq!(s.mounts_of("nvme0n1p1"), vec!["/data"]);
        assert_eq!(s.mounts_of("nvme0n1"), vec!["/raw"]);
        assert_eq!(s.mounts_of("nvme0n1p2"), vec!["swap"]);
        assert!(s.mounts_of("nvme1n1").is_empty());
        assert_eq!(s.memlock_limit(), Some(Some(8 << 20)));
        assert!(s.has_ipc_lock());
        t.file(
            "proc/self/limits",
            "Max locked memory         unlimited            unlimited            bytes\n",
        );
        assert_eq!(s.memlock_limit(), Some(None));
    }
}
