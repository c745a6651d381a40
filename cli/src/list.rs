//! `nvme-dio list`: every NVMe controller (PCI class 0x010802) in sysfs, with its model,
//! serial, firmware, namespaces and capacity, as `nvme list` shows them: read from sysfs for
//! a controller the kernel's nvme driver holds (what `nvme list` reads), and from Identify
//! for one bound to vfio-pci (the kernel knows nothing about it then), unless `--no-open`.

use std::fmt::Write as _;
use std::sync::Arc;

use serde::Serialize;

use crate::args::ListArgs;
use crate::error::CliError;
use crate::sysfs::{Controller, Identity, NamespaceSummary, Sysfs};

/// One controller of the listing.
#[derive(Clone, Debug, Serialize)]
pub struct Entry {
    /// What sysfs says about the PCI function.
    #[serde(flatten)]
    pub pci: Controller,
    /// Model number.
    pub model: Option<String>,
    /// Serial number.
    pub serial: Option<String>,
    /// Firmware revision.
    pub firmware: Option<String>,
    /// The kernel's controller name (`nvme0`).
    pub kernel_name: Option<String>,
    /// Bytes of all its namespaces.
    pub capacity_bytes: Option<u64>,
    /// Its namespaces.
    pub namespaces: Vec<NamespaceSummary>,
    /// Where model, serial and namespaces came from: `sysfs` (the kernel's nvme driver) or
    /// `identify` (read through VFIO).
    pub source: Option<&'static str>,
    /// Why they are missing, when they are.
    pub note: Option<String>,
}

/// Reads a vfio-pci-bound controller's Identify data: brings it up through VFIO (a
/// controller another process holds is refused by VFIO with EBUSY and left alone).
///
/// # Errors
///
/// The bring-up error, as one line.
pub fn vfio_identity(bdf: &str) -> Result<Identity, String> {
    use crate::args::DeviceSpec;
    use crate::bench::nvme::{controller_options, open_controller};
    let dev = DeviceSpec::Pci(bdf.to_string());
    let (ctrl, _) = open_controller(
        &dev,
        nvme_dio_emu::EmuConfig::default(),
        controller_options(1, false, true),
    )
    .map_err(|e| {
        crate::error::render(&e)
            .replace("error: ", "")
            .replace('\n', ";")
    })?;
    let i = ctrl.info();
    Ok(Identity {
        model: i.model.trim().to_string(),
        serial: i.serial.trim().to_string(),
        firmware: i.firmware.trim().to_string(),
        kernel_name: None,
        namespaces: ctrl
            .namespaces()
            .iter()
            .map(|n| NamespaceSummary {
                nsid: n.id().0,
                block_device: None,
                bytes: n.bytes(),
                lba_size: n.lba_size(),
            })
            .collect(),
    })
}

/// A function that reads a vfio-pci-bound controller's identity (tests pass a fake).
pub type Opener = Arc<dyn Fn(&str) -> Result<Identity, String>>;

/// The listing of `s`: sysfs for kernel-bound controllers, `open` for vfio-pci-bound ones
/// (None: do not open them).
pub fn gather(s: &Sysfs, open: Option<&Opener>) -> Vec<Entry> {
    s.nvme_controllers()
        .into_iter()
        .map(|pci| {
            let (id, source, note) = match pci.driver.as_deref() {
                Some("nvme") => match s.kernel_identity(&pci.address) {
                    Some(id) => (Some(id), Some("sysfs"), None),
                    None => (
                        None,
                        None,
                        Some("the nvme driver has not published it in sysfs yet (probing?)".into()),
                    ),
                },
                Some("vfio-pci") => match open {
                    Some(open) => match open(&pci.address) {
                        Ok(id) => (Some(id), Some("identify"), None),
                        Err(e) => (None, None, Some(format!("cannot read Identify: {e}"))),
                    },
                    None => (
                        None,
                        None,
                        Some("bound to vfio-pci; --no-open leaves it unread".into()),
                    ),
                },
                Some(other) => (None, None, Some(format!("bound to {other}"))),
                None => (
                    None,
                    None,
                    Some("no driver bound: `nvme-dio setup` or `nvme-dio reset` binds one".into()),
                ),
            };
            Entry {
                model: id.as_ref().map(|i| i.model.clone()),
                serial: id.as_ref().map(|i| i.serial.clone()),
                firmware: id.as_ref().map(|i| i.firmware.clone()),
                kernel_name: id.as_ref().and_then(|i| i.kernel_name.clone()),
                capacity_bytes: id.as_ref().map(Identity::capacity_bytes),
                namespaces: id.map(|i| i.namespaces).unwrap_or_default(),
                source,
                note,
                pci,
            }
        })
        .collect()
}

/// Runs `nvme-dio list` on this machine.
///
/// # Errors
///
/// Only if the output cannot be written (see [`crate::out`]).
pub fn run(args: &ListArgs) -> Result<(), CliError> {
    let s = Sysfs::host();
    let open: Opener = Arc::new(vfio_identity);
    let c = gather(&s, (!args.no_open).then_some(&open));
    if args.json {
        crate::out::println(&serde_json::to_string_pretty(&c)?)
    } else {
        crate::out::print(&render(&c, &s))
    }
}

/// Bytes as nvme-cli shows capacities: decimal units (GB, TB), two decimals.
pub fn size(b: u64) -> String {
    const UNITS: [&str; 6] = ["B", "kB", "MB", "GB", "TB", "PB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1000.0 && u < UNITS.len() - 1 {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.2} {}", UNITS[u])
    }
}

/// The human listing: one line per controller, then one per namespace.
pub fn render(c: &[Entry], s: &Sysfs) -> String {
    let mut o = String::new();
    if c.is_empty() {
        let _ = writeln!(
            o,
            "no NVMe controllers found in {} (PCI class 0x010802); `nvme-dio bench` uses the emulated controller by default",
            s.pci_devices_dir().display()
        );
        return o;
    }
    let dash = |v: &Option<String>| v.clone().filter(|s| !s.is_empty()).unwrap_or("-".into());
    let rows: Vec<[String; 9]> = c
        .iter()
        .map(|x| {
            [
                x.pci.address.clone(),
                format!("{:04x}:{:04x}", x.pci.vendor, x.pci.device),
                x.pci.driver.clone().unwrap_or("(none)".into()),
                x.pci
                    .iommu_group
                    .map_or("(no iommu)".to_string(), |g| g.to_string()),
                x.pci.numa_node.map_or("-".to_string(), |n| n.to_string()),
                dash(&x.model),
                dash(&x.serial),
                dash(&x.firmware),
                x.capacity_bytes.map_or("-".to_string(), size),
            ]
        })
        .collect();
    let head = [
        "address",
        "vendor:dev",
        "driver",
        "iommu group",
        "numa",
        "model",
        "serial",
        "firmware",
        "capacity",
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
    let line = |cells: &[&str]| {
        let mut l = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                l.push_str(cell);
            } else {
                let _ = write!(l, "{cell:<0$}  ", w[i]);
            }
        }
        l
    };
    let _ = writeln!(o, "{}", line(&head));
    for (x, r) in c.iter().zip(&rows) {
        let cells: Vec<&str> = r.iter().map(String::as_str).collect();
        let _ = writeln!(o, "{}", line(&cells));
        for n in &x.namespaces {
            let _ = writeln!(
                o,
                "  namespace {}{}: {} ({} blocks of {} bytes)",
                n.nsid,
                n.block_device
                    .as_ref()
                    .map(|b| format!(" /dev/{b}"))
                    .unwrap_or_default(),
                size(n.bytes),
                n.bytes.checked_div(n.lba_size as u64).unwrap_or(0),
                n.lba_size
            );
        }
        if let Some(note) = &x.note {
            let _ = writeln!(o, "  ({note})");
        }
    }
    if c.iter()
        .any(|x| x.pci.driver.as_deref() != Some("vfio-pci"))
    {
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

    fn fake_open() -> Opener {
        Arc::new(|bdf: &str| match bdf {
            "0000:03:00.0" => Ok(Identity {
                model: "QEMU NVMe Ctrl".into(),
                serial: "vfio0003".into(),
                firmware: "8.0.0".into(),
                kernel_name: None,
                namespaces: vec![NamespaceSummary {
                    nsid: 1,
                    block_device: None,
                    bytes: 1 << 30,
                    lba_size: 512,
                }],
            }),
            _ => Err("cannot open 0000:04:00.0 through VFIO: Device or resource busy".into()),
        })
    }

    #[test]
    fn empty_machine_says_so_in_one_line() {
        let t = Tree::new("list-empty");
        let s = t.sysfs();
        let out = render(&gather(&s, None), &s);
        assert!(out.starts_with("no NVMe controllers found"), "{out}");
        assert_eq!(out.lines().count(), 1);
    }

    #[test]
    fn listing_shows_model_serial_firmware_capacity_and_driver_for_every_binding() {
        let t = Tree::new("list-render");
        t.device("0000:01:00.0", NVME_CLASS, Some("nvme"), Some(7));
        t.kernel_ctrl(
            "0000:01:00.0",
            0,
            "Samsung SSD 980 PRO 1TB",
            "S5GXNF0R",
            "5B2QGXA7",
        );
        t.namespace("0000:01:00.0", 0, 1);
        t.namespace_size("nvme0n1", 1_000_204_886_016, 512, 1);
        t.device("0000:02:00.0", NVME_CLASS, None, None);
        t.device("0000:03:00.0", NVME_CLASS, Some("vfio-pci"), Some(9));
        t.device("0000:04:00.0", NVME_CLASS, Some("vfio-pci"), Some(10));
        let s = t.sysfs();
        let open = fake_open();
        let e = gather(&s, Some(&open));
        let out = render(&e, &s);
        let lines: Vec<&str> = out.lines().collect();
        assert!(lines[0].starts_with("address") && lines[0].contains("model"));
        // The kernel's controller, from sysfs as `nvme list` reads it.
        for want in [
            "0000:01:00.0",
            "1b36:0010",
            "nvme ",
            "Samsung SSD 980 PRO 1TB",
            "S5GXNF0R",
            "5B2QGXA7",
            "1.00 TB",
        ] {
            assert!(lines[1].contains(want), "{want:?} in {:?}\n{out}", lines[1]);
        }
        assert!(lines[1].contains(" 7 "), "{out}");
        assert_eq!(
            lines[2],
            "  namespace 1 /dev/nvme0n1: 1.00 TB (1953525168 blocks of 512 bytes)"
        );
        // No driver: said so.
        assert!(
            lines[3].contains("(none)") && lines[3].contains("(no iommu)"),
            "{out}"
        );
        assert!(lines[4].contains("no driver bound"), "{out}");
        // vfio-pci, read through Identify.
        assert!(
            lines[5].contains("vfio-pci") && lines[5].contains("vfio0003"),
            "{out}"
        );
        assert!(lines[6].contains("namespace 1: 1.07 GB"), "{out}");
        // One that another process holds: the reason, nothing disturbed.
        assert!(lines[8].contains("Device or resource busy"), "{out}");
        assert!(out.contains("nvme-dio setup"));
        assert_eq!(e[0].source, Some("sysfs"));
        assert_eq!(e[2].source, Some("identify"));
        assert_eq!(e[3].source, None);
        // --no-open: the vfio-pci ones stay unread.
        let e = gather(&s, None);
        assert!(e[2].note.as_deref().unwrap().contains("--no-open"), "{e:?}");
        assert_eq!(e[0].model.as_deref(), Some("Samsung SSD 980 PRO 1TB"));
    }

    #[test]
    fn json_keeps_the_pci_keys_and_adds_the_identity() {
        let t = Tree::new("list-json");
        t.device("0000:01:00.0", NVME_CLASS, Some("nvme"), Some(7));
        t.kernel_ctrl("0000:01:00.0", 0, "QEMU NVMe Ctrl", "dflt0001", "8.0.0");
        t.namespace("0000:01:00.0", 0, 1);
        t.namespace_size("nvme0n1", 64 << 20, 4096, 1);
        let v = serde_json::to_value(gather(&t.sysfs(), None)).unwrap();
        let c = &v[0];
        assert_eq!(c["address"], "0000:01:00.0");
        assert_eq!(c["driver"], "nvme");
        assert_eq!(c["iommu_group"], 7);
        assert_eq!(c["block_devices"][0], "nvme0n1");
        assert_eq!(c["model"], "QEMU NVMe Ctrl");
        assert_eq!(c["serial"], "dflt0001");
        assert_eq!(c["firmware"], "8.0.0");
        assert_eq!(c["kernel_name"], "nvme0");
        assert_eq!(c["capacity_bytes"], 64 << 20);
        assert_eq!(c["namespaces"][0]["lba_size"], 4096);
        assert_eq!(c["source"], "sysfs");
    }

    #[test]
    fn sizes_use_decimal_units_as_nvme_cli() {
        assert_eq!(size(512), "512 B");
        assert_eq!(size(64 << 20), "67.11 MB");
        assert_eq!(size(1_000_204_886_016), "1.00 TB");
    }
}
