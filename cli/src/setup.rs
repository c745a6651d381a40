//! `nvme-dio setup` and `nvme-dio reset`: hand NVMe controllers to vfio-pci and back, reserve
//! hugepages, show the state; what SPDK's `scripts/setup.sh` does, with its safety checks.
//!
//! - `setup BDF...` binds those controllers; `setup` with no address binds every NVMe
//!   controller that is not in use, filtered by `PCI_ALLOWED` / `PCI_BLOCKED` (space or comma
//!   separated addresses, as setup.sh reads them); `setup --hugepages N` or
//!   `--hugepages-node NODE:N` alone only reserves hugepages; `setup status` shows it all.
//! - Setup refuses (for an address given) or skips (with no address) before touching anything
//!   when binding would hurt or cannot work: the function is not an NVMe controller, one of
//!   its namespaces (or their partitions) is mounted, used as swap or held by another block
//!   device (LVM, RAID, dm-crypt: `/sys/class/block/NAME/holders`), there is no IOMMU group,
//!   or another device in the group is bound to a host driver (VFIO would refuse the group).
//!   Then it binds with `driver_override`, `unbind`, `drivers_probe` (the kernel's documented
//!   sequence), and checks RLIMIT_MEMLOCK, which VFIO pins DMA memory against.
//! - What setup bound, and the driver each had, is remembered in `/run/nvme-dio/setup.json`
//!   (gone at reboot, as the bindings are), so `reset` with no address gives back exactly
//!   that; `reset BDF` gives one controller to the kernel's nvme driver.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::args::{ResetArgs, SetupAction, SetupArgs};
use crate::error::CliError;
use crate::sysfs::{NVME_CLASS, Sysfs};

/// Drivers a device may have in a group VFIO accepts: vfio-pci, none, and the ones the
/// kernel's VFIO core allows (`pci-stub`, and `pcieport` for bridges).
const GROUP_OK: &[&str] = &["vfio-pci", "pci-stub", "pcieport"];

/// Where setup remembers what it bound, under the sysfs root (`/run` is gone at reboot, and
/// so are the bindings).
pub const STATE_FILE: &str = "run/nvme-dio/setup.json";

/// The 2 MiB hugepage pool of each NUMA node, relative to `sys/devices/system/node/nodeN/`.
const NODE_POOL: &str = "hugepages/hugepages-2048kB";

fn write(s: &Sysfs, step: &str, path: &Path, value: &str) -> Result<(), CliError> {
    s.write(path, value).map_err(|source| CliError::Sysfs {
        step: step.to_string(),
        path: path.to_owned(),
        source,
    })
}

/// One controller setup bound.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bound {
    /// The PCI address.
    pub bdf: String,
    /// The driver it had before (`nvme`, or none).
    pub driver_before: Option<String>,
}

/// The state file's content.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// Controllers bound to vfio-pci by `nvme-dio setup`, in the order it bound them.
    pub bound: Vec<Bound>,
}

/// Reads the state file (none: nothing bound).
///
/// # Errors
///
/// [`CliError::File`] if it cannot be read, [`CliError::BadArgument`] if it is damaged.
pub fn load_state(s: &Sysfs) -> Result<State, CliError> {
    let path = s.path(STATE_FILE);
    match std::fs::read_to_string(&path) {
        Ok(t) => serde_json::from_str(&t).map_err(|e| {
            CliError::BadArgument(format!(
                "{} is damaged ({e}): remove it; `nvme-dio setup status` still shows what is bound where, and `nvme-dio reset BDF` gives a controller back",
                path.display()
            ))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State::default()),
        Err(source) => Err(CliError::File {
            op: "read",
            path,
            source,
        }),
    }
}

fn save_state(s: &Sysfs, st: &State) -> Result<(), CliError> {
    let path = s.path(STATE_FILE);
    let err = |source| CliError::File {
        op: "write",
        path: path.clone(),
        source,
    };
    if st.bound.is_empty() {
        return match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(err(e)),
            _ => Ok(()),
        };
    }
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).map_err(err)?;
    }
    std::fs::write(&path, serde_json::to_string_pretty(st)? + "\n").map_err(err)
}

/// `PCI_ALLOWED` and `PCI_BLOCKED`: which controllers `setup` with no address may take.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PciLists {
    /// If not empty, only these.
    pub allowed: Vec<String>,
    /// Never these.
    pub blocked: Vec<String>,
}

impl PciLists {
    /// Parses the two lists (space or comma separated addresses, short forms allowed).
    ///
    /// # Errors
    ///
    /// [`CliError::BadArgument`] naming the variable and the entry that is not an address.
    pub fn parse(allowed: &str, blocked: &str) -> Result<PciLists, CliError> {
        let list = |name: &str, v: &str| -> Result<Vec<String>, CliError> {
            v.split(|c: char| c.is_whitespace() || c == ',')
                .filter(|x| !x.is_empty())
                .map(|x| {
                    crate::args::parse_bdf(x).ok_or_else(|| {
                        CliError::BadArgument(format!(
                            "{name} holds {x:?}, which is not a PCI address: give addresses like 0000:01:00.0, separated by spaces"
                        ))
                    })
                })
                .collect()
        };
        Ok(PciLists {
            allowed: list("PCI_ALLOWED", allowed)?,
            blocked: list("PCI_BLOCKED", blocked)?,
        })
    }

    /// From the environment.
    ///
    /// # Errors
    ///
    /// As [`PciLists::parse`].
    pub fn from_env() -> Result<PciLists, CliError> {
        let var = |n: &str| std::env::var(n).unwrap_or_default();
        PciLists::parse(&var("PCI_ALLOWED"), &var("PCI_BLOCKED"))
    }

    fn admits(&self, bdf: &str) -> bool {
        (self.allowed.is_empty() || self.allowed.iter().any(|a| a == bdf))
            && !self.blocked.iter().any(|b| b == bdf)
    }
}

/// What uses `bdf`'s namespaces: mounts, swap, and holders (device mapper, md), as
/// `/dev/nvme0n1p1 on /data`, `/dev/nvme0n1 held by dm-0`.
pub fn in_use(s: &Sysfs, bdf: &str) -> Vec<String> {
    let mut busy = Vec::new();
    for disk in s.block_devices(bdf) {
        for name in std::iter::once(disk.clone()).chain(s.partitions(&disk)) {
            for m in s.mounts_of(&name) {
                busy.push(format!("/dev/{name} on {m}"));
            }
            for h in s.holders(&name) {
                busy.push(format!("/dev/{name} held by {h}"));
            }
        }
    }
    busy
}

/// Checks that `bdf` is an NVMe controller that can be taken from the kernel. Returns its
/// IOMMU group.
///
/// # Errors
///
/// [`CliError::Refused`] with the reason and what to do.
pub fn preflight(s: &Sysfs, bdf: &str) -> Result<u32, CliError> {
    preflight_with(s, bdf, &[])
}

/// [`preflight`], where the devices in `binding` are being bound to vfio-pci in the same run
/// (so they do not make an IOMMU group unviable).
///
/// # Errors
///
/// As [`preflight`].
pub fn preflight_with(s: &Sysfs, bdf: &str, binding: &[String]) -> Result<u32, CliError> {
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
    let busy = in_use(s, bdf);
    if !busy.is_empty() {
        return refuse(format!(
            "it holds mounted filesystems, swap or held block devices ({}): unmount them (swapoff, or stop the LVM / RAID / dm-crypt device) first; binding to vfio-pci would pull the disk out from under them",
            busy.join(", ")
        ));
    }
    let Some(group) = s.iommu_group(bdf) else {
        return refuse(
            "it has no IOMMU group: the IOMMU is off; boot with intel_iommu=on (or amd_iommu=on) and enable VT-d / AMD-Vi in the firmware".into(),
        );
    };
    for other in s.group_devices(bdf) {
        if other == bdf || binding.contains(&other) {
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

/// Runs `nvme-dio setup`, with `PCI_ALLOWED` / `PCI_BLOCKED` from the environment.
///
/// # Errors
///
/// As [`setup_with`].
pub fn setup(s: &Sysfs, a: &SetupArgs) -> Result<(), CliError> {
    setup_with(s, a, &PciLists::from_env()?)
}

fn node_pool(s: &Sysfs, node: u32) -> std::path::PathBuf {
    s.path(&format!("sys/devices/system/node/node{node}/{NODE_POOL}"))
}

/// The NUMA nodes with a 2 MiB hugepage pool, ascending.
pub fn numa_nodes(s: &Sysfs) -> Vec<u32> {
    let mut v: Vec<u32> = std::fs::read_dir(s.path("sys/devices/system/node"))
        .map(|d| {
            d.filter_map(|e| {
                e.ok()?
                    .file_name()
                    .to_str()?
                    .strip_prefix("node")?
                    .parse()
                    .ok()
            })
            .collect()
        })
        .unwrap_or_default();
    v.retain(|&n| node_pool(s, n).exists());
    v.sort_unstable();
    v
}

fn read_num(p: &Path) -> Option<u64> {
    std::fs::read_to_string(p).ok()?.trim().parse().ok()
}

/// Runs `nvme-dio setup` with the given allow and block lists.
///
/// # Errors
///
/// [`CliError::Refused`] from the checks of an address given (nothing is touched then),
/// [`CliError::BadArgument`] for a NUMA node without a hugepage pool, [`CliError::Sysfs`] if a
/// write fails (not root?).
pub fn setup_with(s: &Sysfs, a: &SetupArgs, lists: &PciLists) -> Result<(), CliError> {
    if let Some(SetupAction::Status(st)) = &a.action {
        return status(s, st.json);
    }
    // Every check before anything is written.
    for &(node, _) in &a.hugepages_node {
        if !node_pool(s, node).exists() {
            let nodes = numa_nodes(s);
            return Err(CliError::BadArgument(format!(
                "NUMA node {node} has no 2 MiB hugepage pool ({} does not exist); the nodes here are {}",
                node_pool(s, node).display(),
                if nodes.is_empty() {
                    "none (use --hugepages N)".to_string()
                } else {
                    nodes
                        .iter()
                        .map(u32::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            )));
        }
    }
    if a.hugepages_only() {
        return hugepages_and_advice(s, a);
    }
    let explicit = !a.bdfs.is_empty();
    let mut targets: Vec<String> = Vec::new();
    if explicit {
        for b in &a.bdfs {
            if lists.blocked.contains(b) {
                return Err(CliError::Refused {
                    action: "set up",
                    bdf: b.clone(),
                    reason: "it is in PCI_BLOCKED".into(),
                });
            }
            if !targets.contains(b) {
                targets.push(b.clone());
            }
        }
    } else {
        let all = s.nvme_controllers();
        targets = all
            .iter()
            .map(|c| c.address.clone())
            .filter(|b| lists.admits(b))
            .collect();
        if targets.is_empty() {
            crate::out::status(&if all.is_empty() {
                format!(
                    "no NVMe controllers found in {} (PCI class 0x010802): nothing to bind",
                    s.pci_devices_dir().display()
                )
            } else {
                format!(
                    "PCI_ALLOWED / PCI_BLOCKED leave none of the {} NVMe controller(s) to bind",
                    all.len()
                )
            })?;
        }
    }
    let mut ready = Vec::new();
    for b in &targets {
        match preflight_with(s, b, &targets) {
            Ok(g) => ready.push((b.as_str(), g)),
            Err(CliError::Refused { reason, .. }) if !explicit => {
                crate::out::status(&format!("skipping {b}: {reason}"))?;
            }
            Err(e) => return Err(e),
        }
    }
    let mut state = load_state(s)?;
    for &(bdf, group) in &ready {
        let before = s.driver(bdf);
        if before.as_deref() == Some("vfio-pci") {
            crate::out::status(&format!(
                "{bdf} is already bound to vfio-pci (IOMMU group {group})"
            ))?;
        } else {
            bind_vfio(s, bdf)?;
            if !state.bound.iter().any(|x| x.bdf == bdf) {
                state.bound.push(Bound {
                    bdf: bdf.to_string(),
                    driver_before: before.clone(),
                });
            }
            // Saved after each bind: a later failure must not forget this one.
            save_state(s, &state)?;
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
    }
    hugepages_and_advice(s, a)?;
    match ready.as_slice() {
        [] => Ok(()),
        [(bdf, _)] => crate::out::status(&format!("ready: nvme-dio bench --device {bdf}")),
        many => crate::out::status(&format!(
            "ready: {} controllers ({}); nvme-dio bench --device {}",
            many.len(),
            many.iter().map(|r| r.0).collect::<Vec<_>>().join(" "),
            many[0].0
        )),
    }
}

fn hugepages_and_advice(s: &Sysfs, a: &SetupArgs) -> Result<(), CliError> {
    if let Some(n) = a.hugepages {
        reserve_hugepages(s, n)?;
    }
    for &(node, n) in &a.hugepages_node {
        reserve_node_hugepages(s, node, n)?;
    }
    for line in memlock_advice(s) {
        crate::out::status(&line)?;
    }
    Ok(())
}

fn reserve_node_hugepages(s: &Sysfs, node: u32, want: u64) -> Result<(), CliError> {
    let pool = node_pool(s, node);
    let nr = pool.join("nr_hugepages");
    if read_num(&nr).unwrap_or(0) < want {
        write(
            s,
            &format!("reserving 2 MiB hugepages on NUMA node {node}"),
            &nr,
            &want.to_string(),
        )?;
    }
    let now = read_num(&nr).unwrap_or(0);
    if now < want {
        crate::out::status(&format!(
            "warning: only {now} of {want} 2 MiB hugepages could be reserved on NUMA node {node} (its memory is fragmented or short): reserve them at boot"
        ))
    } else {
        crate::out::status(&format!(
            "hugepages on NUMA node {node}: {now} x 2 MiB reserved{}",
            read_num(&pool.join("free_hugepages"))
                .map(|f| format!(", {f} free"))
                .unwrap_or_default()
        ))
    }
}

/// One controller in `setup status`.
#[derive(Clone, Debug, Serialize)]
pub struct ControllerStatus {
    /// PCI address.
    pub address: String,
    /// The bound driver.
    pub driver: Option<String>,
    /// NUMA node.
    pub numa_node: Option<i32>,
    /// IOMMU group.
    pub iommu_group: Option<u32>,
    /// Namespace block devices (kernel-bound).
    pub block_devices: Vec<String>,
    /// Mounts, swap and holders on its namespaces (setup skips it while this is not empty).
    pub in_use: Vec<String>,
    /// `nvme-dio setup` bound it (the state file says so).
    pub set_up_by_nvme_dio: bool,
    /// The driver it had before setup bound it.
    pub driver_before: Option<String>,
}

/// A hugepage pool (system wide, or one NUMA node).
#[derive(Clone, Debug, Serialize)]
pub struct PoolStatus {
    /// The NUMA node, or None for the system-wide pool.
    pub node: Option<u32>,
    /// Pages reserved.
    pub total: Option<u64>,
    /// Pages free.
    pub free: Option<u64>,
}

/// `nvme-dio setup status`.
#[derive(Clone, Debug, Serialize)]
pub struct Status {
    /// The vfio-pci driver is loaded.
    pub vfio_pci_loaded: bool,
    /// Size of the pages below, KiB.
    pub hugepage_kib: u64,
    /// The system-wide pool, then one per NUMA node.
    pub hugepages: Vec<PoolStatus>,
    /// Every NVMe controller.
    pub controllers: Vec<ControllerStatus>,
    /// What setup bound that is not there any more (hot-removed).
    pub missing: Vec<String>,
    /// The state file.
    pub state_file: String,
}

/// Gathers `setup status`.
///
/// # Errors
///
/// As [`load_state`].
pub fn gather_status(s: &Sysfs) -> Result<Status, CliError> {
    let state = load_state(s)?;
    let pool = s.path("sys/kernel/mm/hugepages/hugepages-2048kB");
    let mut hugepages = vec![PoolStatus {
        node: None,
        total: read_num(&pool.join("nr_hugepages"))
            .or_else(|| read_num(&s.path("proc/sys/vm/nr_hugepages"))),
        free: read_num(&pool.join("free_hugepages")),
    }];
    for n in numa_nodes(s) {
        let p = node_pool(s, n);
        hugepages.push(PoolStatus {
            node: Some(n),
            total: read_num(&p.join("nr_hugepages")),
            free: read_num(&p.join("free_hugepages")),
        });
    }
    let controllers: Vec<ControllerStatus> = s
        .nvme_controllers()
        .into_iter()
        .map(|c| {
            let mine = state.bound.iter().find(|b| b.bdf == c.address);
            ControllerStatus {
                in_use: in_use(s, &c.address),
                set_up_by_nvme_dio: mine.is_some(),
                driver_before: mine.and_then(|b| b.driver_before.clone()),
                address: c.address,
                driver: c.driver,
                numa_node: c.numa_node,
                iommu_group: c.iommu_group,
                block_devices: c.block_devices,
            }
        })
        .collect();
    let missing = state
        .bound
        .iter()
        .filter(|b| !controllers.iter().any(|c| c.address == b.bdf))
        .map(|b| b.bdf.clone())
        .collect();
    Ok(Status {
        vfio_pci_loaded: s.path("sys/bus/pci/drivers/vfio-pci").exists(),
        hugepage_kib: 2048,
        hugepages,
        controllers,
        missing,
        state_file: s.path(STATE_FILE).display().to_string(),
    })
}

/// The human form of `setup status`.
pub fn render_status(st: &Status) -> String {
    use std::fmt::Write as _;
    let mut o = String::new();
    let n = |v: Option<u64>| v.map_or("?".to_string(), |v| v.to_string());
    let _ = writeln!(
        o,
        "vfio-pci driver: {}",
        if st.vfio_pci_loaded {
            "loaded"
        } else {
            "not loaded (`nvme-dio setup` runs `modprobe vfio-pci`)"
        }
    );
    for p in &st.hugepages {
        let _ = writeln!(
            o,
            "{}: {} reserved, {} free",
            match p.node {
                None => format!("hugepages ({} KiB)", st.hugepage_kib),
                Some(node) => format!("  NUMA node {node}"),
            },
            n(p.total),
            n(p.free)
        );
    }
    if st.controllers.is_empty() {
        let _ = writeln!(o, "no NVMe controllers");
    } else {
        let rows: Vec<[String; 6]> = st
            .controllers
            .iter()
            .map(|c| {
                [
                    c.address.clone(),
                    c.driver.clone().unwrap_or("(none)".into()),
                    c.numa_node.map_or("-".into(), |v| v.to_string()),
                    c.iommu_group.map_or("(no iommu)".into(), |v| v.to_string()),
                    if c.set_up_by_nvme_dio {
                        format!(
                            "yes (was {})",
                            c.driver_before.as_deref().unwrap_or("no driver")
                        )
                    } else {
                        "no".into()
                    },
                    match (c.in_use.is_empty(), c.block_devices.is_empty()) {
                        (false, _) => format!("in use: {}", c.in_use.join(", ")),
                        (true, false) => c.block_devices.join(" "),
                        (true, true) => "-".into(),
                    },
                ]
            })
            .collect();
        let head = [
            "address",
            "driver",
            "numa",
            "iommu group",
            "set up by nvme-dio",
            "block devices",
        ];
        let w: Vec<usize> = (0..head.len())
            .map(|i| {
                rows.iter()
                    .map(|r| r[i].chars().count())
                    .chain([head[i].len()])
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let line = |cells: Vec<&str>| {
            let mut l = String::new();
            for (i, c) in cells.iter().enumerate() {
                if i + 1 == cells.len() {
                    l.push_str(c);
                } else {
                    let _ = write!(l, "{c:<0$}  ", w[i]);
                }
            }
            l
        };
        let _ = writeln!(o, "{}", line(head.to_vec()));
        for r in &rows {
            let _ = writeln!(o, "{}", line(r.iter().map(String::as_str).collect()));
        }
    }
    for m in &st.missing {
        let _ = writeln!(
            o,
            "{m}: set up by nvme-dio, but no longer present (removed?); `nvme-dio reset` forgets it"
        );
    }
    o
}

fn status(s: &Sysfs, json: bool) -> Result<(), CliError> {
    let st = gather_status(s)?;
    if json {
        crate::out::println(&serde_json::to_string_pretty(&st)?)
    } else {
        let mut text = render_status(&st);
        for l in memlock_advice(s) {
            text.push_str(&l);
            text.push('\n');
        }
        crate::out::print(&text)
    }
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

/// Runs `nvme-dio reset`: one controller back to the kernel's nvme driver, or (with no
/// address) every controller `setup` bound, each back to the driver it had.
///
/// # Errors
///
/// [`CliError::Refused`] if it is not an NVMe controller, [`CliError::Sysfs`] if a write fails.
pub fn reset(s: &Sysfs, a: &ResetArgs) -> Result<(), CliError> {
    let Some(bdf) = a.bdf.as_deref() else {
        return reset_all(s);
    };
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
    rebind(s, bdf, Some("nvme"))?;
    let mut state = load_state(s)?;
    let n = state.bound.len();
    state.bound.retain(|b| b.bdf != bdf);
    if state.bound.len() != n {
        save_state(s, &state)?;
    }
    Ok(())
}

fn reset_all(s: &Sysfs) -> Result<(), CliError> {
    let mut state = load_state(s)?;
    if state.bound.is_empty() {
        return crate::out::status(&format!(
            "nothing to reset: `nvme-dio setup` has bound no controller ({} has none); `nvme-dio reset BDF` gives a given one to the kernel's nvme driver",
            s.path(STATE_FILE).display()
        ));
    }
    let mut first_error = None;
    for b in state.bound.clone() {
        let bdf = b.bdf.as_str();
        let now = s.driver(bdf);
        let result = if !s.dev(bdf).exists() {
            crate::out::status(&format!("{bdf}: no longer present (removed?); forgotten"))
        } else if now.as_deref() != Some("vfio-pci") {
            crate::out::status(&format!(
                "{bdf}: bound to {} now, not vfio-pci: left as it is, forgotten",
                now.as_deref().unwrap_or("no driver")
            ))
        } else {
            rebind(s, bdf, b.driver_before.as_deref())
        };
        match result {
            Ok(()) => {
                state.bound.retain(|x| x.bdf != bdf);
                save_state(s, &state)?;
            }
            Err(e) => {
                let _ = crate::out::status(&format!("{bdf}: {e}"));
                first_error.get_or_insert(e);
            }
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// Gives `bdf` to `target` (`nvme`, another driver, or none), clearing `driver_override`.
fn rebind(s: &Sysfs, bdf: &str, target: Option<&str>) -> Result<(), CliError> {
    let refuse = |reason: String| {
        Err(CliError::Refused {
            action: "reset",
            bdf: bdf.to_string(),
            reason,
        })
    };
    let dev = s.dev(bdf);
    let before = s.driver(bdf);
    // An empty line clears the override, so the normal match (nvme) applies again; another
    // driver is named in it for the probe, then cleared.
    let over = match target {
        Some(t) if t != "nvme" => t.to_string(),
        _ => "\n".to_string(),
    };
    write(
        s,
        "clearing driver_override",
        &dev.join("driver_override"),
        &over,
    )?;
    if before.is_some() && before.as_deref() != target {
        write(
            s,
            "unbinding the current driver",
            &dev.join("driver/unbind"),
            bdf,
        )?;
    }
    let Some(target) = target else {
        return crate::out::status(&format!(
            "{bdf}: {} -> no driver (as before setup)",
            before.as_deref().unwrap_or("no driver")
        ));
    };
    if s.driver(bdf).is_none() {
        write(
            s,
            "probing drivers",
            &s.path("sys/bus/pci/drivers_probe"),
            bdf,
        )?;
    }
    if target != "nvme" {
        write(
            s,
            "clearing driver_override",
            &dev.join("driver_override"),
            "\n",
        )?;
    }
    match s.driver(bdf) {
        Some(d) if d == target => {
            let disks = s.block_devices(bdf);
            crate::out::status(&format!(
                "{bdf}: {} -> {target}{}",
                before.as_deref().unwrap_or("no driver"),
                if target != "nvme" {
                    String::new()
                } else if disks.is_empty() {
                    " (namespaces appear in a moment; see `nvme-dio list`)".to_string()
                } else {
                    format!(", block devices {}", disks.join(" "))
                }
            ))?;
            Ok(())
        }
        other if target == "nvme" => refuse(format!(
            "after clearing driver_override it is bound to {}, not nvme: is the nvme module loaded (`modprobe nvme`)? see `dmesg | tail`",
            other.as_deref().unwrap_or("no driver")
        )),
        other => refuse(format!(
            "after driver_override {target} + drivers_probe it is bound to {}, not {target}: see `dmesg | tail`",
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
            bdfs: vec![bdf.into()],
            ..no_args()
        }
    }

    fn no_args() -> SetupArgs {
        SetupArgs {
            action: None,
            bdfs: Vec::new(),
            all: false,
            hugepages: None,
            hugepages_node: Vec::new(),
        }
    }

    fn setup(s: &Sysfs, a: &SetupArgs) -> Result<(), CliError> {
        setup_with(s, a, &PciLists::default())
    }

    fn driver(t: &Tree, bdf: &str) -> Option<String> {
        t.sysfs().driver(bdf)
    }

    /// A: idle, kernel-bound. B: a mounted partition. C: a namespace under LVM. D: idle,
    /// but PCI_BLOCKED. E: no driver. F: already vfio-pci. Each in its own IOMMU group.
    fn machine(name: &str) -> Tree {
        let t = Tree::new(name);
        for (i, (bdf, drv)) in [
            ("0000:0a:00.0", Some("nvme")),
            ("0000:0b:00.0", Some("nvme")),
            ("0000:0c:00.0", Some("nvme")),
            ("0000:0d:00.0", Some("nvme")),
            ("0000:0e:00.0", None),
            ("0000:0f:00.0", Some("vfio-pci")),
        ]
        .into_iter()
        .enumerate()
        {
            t.device(bdf, NVME_CLASS, drv, Some(i as u32 + 1));
        }
        std::fs::create_dir_all(t.root.join("sys/bus/pci/drivers/vfio-pci")).unwrap();
        t.namespace("0000:0b:00.0", 1, 1);
        std::fs::create_dir_all(t.root.join("sys/class/block/nvme1n1/nvme1n1p1")).unwrap();
        t.file(
            "proc/mounts",
            "/dev/vda / ext4 rw 0 0\n/dev/nvme1n1p1 /data xfs rw 0 0\n",
        );
        t.namespace("0000:0c:00.0", 2, 1);
        std::fs::create_dir_all(t.root.join("sys/class/block/nvme2n1/holders/dm-0")).unwrap();
        t
    }

    #[test]
    fn setup_with_no_address_binds_every_idle_controller_and_reset_gives_back_exactly_those() {
        let t = machine("setup-all");
        let s = t.sysfs_with_kernel();
        let lists = PciLists::parse("", "0000:0d:00.0").unwrap();
        setup_with(&s, &no_args(), &lists).unwrap();
        assert_eq!(driver(&t, "0000:0a:00.0").as_deref(), Some("vfio-pci"));
        assert_eq!(driver(&t, "0000:0e:00.0").as_deref(), Some("vfio-pci"));
        // In use (mounted, held by LVM), blocked: untouched.
        assert_eq!(driver(&t, "0000:0b:00.0").as_deref(), Some("nvme"));
        assert_eq!(driver(&t, "0000:0c:00.0").as_deref(), Some("nvme"));
        assert_eq!(driver(&t, "0000:0d:00.0").as_deref(), Some("nvme"));
        for b in ["0000:0b:00.0", "0000:0c:00.0", "0000:0d:00.0"] {
            let ov = std::fs::read_to_string(s.dev(b).join("driver_override")).unwrap();
            assert_eq!(ov, "(null)\n", "{b}: nothing written");
        }
        let st = load_state(&s).unwrap();
        assert_eq!(
            st.bound,
            vec![
                Bound {
                    bdf: "0000:0a:00.0".into(),
                    driver_before: Some("nvme".into())
                },
                Bound {
                    bdf: "0000:0e:00.0".into(),
                    driver_before: None
                }
            ],
            "the already-bound F is not recorded: setup did not bind it"
        );
        let status = gather_status(&s).unwrap();
        let by = |b: &str| status.controllers.iter().find(|c| c.address == b).unwrap();
        assert!(by("0000:0a:00.0").set_up_by_nvme_dio);
        assert!(!by("0000:0f:00.0").set_up_by_nvme_dio);
        assert_eq!(by("0000:0b:00.0").in_use, vec!["/dev/nvme1n1p1 on /data"]);
        assert_eq!(by("0000:0c:00.0").in_use, vec!["/dev/nvme2n1 held by dm-0"]);
        let text = render_status(&status);
        assert!(text.contains("yes (was nvme)") && text.contains("yes (was no driver)"));
        assert!(text.contains("in use: /dev/nvme1n1p1 on /data"), "{text}");
        // A second setup changes nothing and keeps the record.
        setup_with(&s, &no_args(), &lists).unwrap();
        assert_eq!(load_state(&s).unwrap(), st);

        reset(&s, &ResetArgs { bdf: None }).unwrap();
        assert_eq!(driver(&t, "0000:0a:00.0").as_deref(), Some("nvme"), "back");
        assert_eq!(driver(&t, "0000:0e:00.0"), None, "back to no driver");
        assert_eq!(
            driver(&t, "0000:0f:00.0").as_deref(),
            Some("vfio-pci"),
            "not ours"
        );
        assert!(!s.path(STATE_FILE).exists(), "nothing left to remember");
        // Nothing left: says so, succeeds.
        reset(&s, &ResetArgs { bdf: None }).unwrap();
    }

    #[test]
    fn pci_allowed_limits_setup_and_bad_entries_are_named() {
        let t = machine("setup-allowed");
        let s = t.sysfs_with_kernel();
        let lists = PciLists::parse("0e:00.0, 0000:0b:00.0", "").unwrap();
        assert_eq!(lists.allowed, vec!["0000:0e:00.0", "0000:0b:00.0"]);
        setup_with(&s, &no_args(), &lists).unwrap();
        assert_eq!(driver(&t, "0000:0e:00.0").as_deref(), Some("vfio-pci"));
        assert_eq!(
            driver(&t, "0000:0a:00.0").as_deref(),
            Some("nvme"),
            "not allowed"
        );
        assert_eq!(
            driver(&t, "0000:0b:00.0").as_deref(),
            Some("nvme"),
            "in use"
        );
        let e = PciLists::parse("", "0000:0a:00.0 junk").unwrap_err();
        assert!(e.to_string().contains("PCI_BLOCKED holds \"junk\""), "{e}");
        // An address given that PCI_BLOCKED names is refused.
        let e = setup_with(
            &s,
            &args("0000:0a:00.0"),
            &PciLists::parse("", "0000:0a:00.0").unwrap(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("in PCI_BLOCKED"), "{e}");
    }

    #[test]
    fn addresses_given_are_all_checked_before_any_is_bound() {
        let t = machine("setup-explicit");
        let s = t.sysfs_with_kernel();
        let a = SetupArgs {
            bdfs: vec!["0000:0a:00.0".into(), "0000:0c:00.0".into()],
            ..no_args()
        };
        let e = setup(&s, &a).unwrap_err().to_string();
        assert!(
            e.contains("0000:0c:00.0") && e.contains("held by dm-0"),
            "{e}"
        );
        assert_eq!(
            driver(&t, "0000:0a:00.0").as_deref(),
            Some("nvme"),
            "untouched"
        );
        let a = SetupArgs {
            bdfs: vec!["0000:0a:00.0".into(), "0000:0e:00.0".into()],
            ..no_args()
        };
        setup(&s, &a).unwrap();
        assert_eq!(load_state(&s).unwrap().bound.len(), 2);
        // reset BDF: that one to nvme, and forgotten.
        reset(
            &s,
            &ResetArgs {
                bdf: Some("0000:0e:00.0".into()),
            },
        )
        .unwrap();
        assert_eq!(driver(&t, "0000:0e:00.0").as_deref(), Some("nvme"));
        assert_eq!(
            load_state(&s).unwrap().bound,
            vec![Bound {
                bdf: "0000:0a:00.0".into(),
                driver_before: Some("nvme".into())
            }]
        );
    }

    #[test]
    fn hugepages_alone_reserve_per_node_and_bind_nothing() {
        let t = machine("setup-huge");
        t.numa_node(0, 0, 0);
        t.numa_node(1, 4, 4);
        t.file("proc/sys/vm/nr_hugepages", "4\n");
        let s = t.sysfs_with_kernel();
        let a = SetupArgs {
            hugepages_node: vec![(0, 512), (1, 2)],
            hugepages: Some(16),
            ..no_args()
        };
        assert!(a.hugepages_only());
        setup(&s, &a).unwrap();
        let read = |p: &str| std::fs::read_to_string(t.root.join(p)).unwrap();
        assert_eq!(
            read("sys/devices/system/node/node0/hugepages/hugepages-2048kB/nr_hugepages"),
            "512"
        );
        assert_eq!(
            read("sys/devices/system/node/node1/hugepages/hugepages-2048kB/nr_hugepages"),
            "4\n",
            "already at least 2: left alone"
        );
        assert_eq!(read("proc/sys/vm/nr_hugepages"), "16");
        assert_eq!(
            driver(&t, "0000:0a:00.0").as_deref(),
            Some("nvme"),
            "no binding"
        );
        assert!(!s.path(STATE_FILE).exists());
        assert_eq!(numa_nodes(&s), vec![0, 1]);
        // A node without a pool is refused before anything is written.
        let e = setup(
            &s,
            &SetupArgs {
                hugepages_node: vec![(0, 1024), (7, 1)],
                ..no_args()
            },
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("NUMA node 7") && e.contains("the nodes here are 0, 1"),
            "{e}"
        );
        assert_eq!(
            read("sys/devices/system/node/node0/hugepages/hugepages-2048kB/nr_hugepages"),
            "512"
        );
        let st = gather_status(&s).unwrap();
        assert_eq!(st.hugepages.len(), 3, "system wide, node 0, node 1");
        assert_eq!(
            (st.hugepages[2].node, st.hugepages[2].free),
            (Some(1), Some(4))
        );
    }

    #[test]
    fn a_damaged_state_file_is_named_with_what_to_do() {
        let t = machine("setup-damaged");
        t.file(STATE_FILE, "{not json");
        let e = load_state(&t.sysfs()).unwrap_err().to_string();
        assert!(
            e.contains("setup.json is damaged") && e.contains("remove it"),
            "{e}"
        );
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
