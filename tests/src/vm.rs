//! The VM suite's view of its guest (ci/vm-test, format in ci/vm/README.md).
//!
//! The harness boots a QEMU guest with several emulated NVMe controllers at fixed PCI
//! addresses, binds each to vfio-pci, and describes them in a matrix file. A VM test starts
//! with [`matrix_or_skip`] (or [`controller`]): on the host it gets `None` and returns early;
//! in the guest (`NVME_DIO_VM=1`) a missing or malformed matrix panics, so the test fails.
//!
//! A negative test that makes QEMU log a `pci_nvme_err_*` trace event calls
//! [`expect_trace_err`] first; the harness fails the run on every such event no test declared.

use std::fmt;
use std::io::Write;
use std::path::PathBuf;

/// Set to `1` by the guest's init.
pub const ENV_VM: &str = "NVME_DIO_VM";
/// Path of the matrix file (`/matrix` in the guest).
pub const ENV_MATRIX: &str = "NVME_DIO_VM_MATRIX";
/// Path of the file collecting declared trace error events.
pub const ENV_EXPECT: &str = "NVME_DIO_VM_EXPECT";

/// The line a VM test prints when it runs on the host.
pub const SKIP_MESSAGE: &str = "skipped: not in the VM guest (run ci/vm-test)";

/// One namespace of a matrix controller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmNamespace {
    pub nsid: u32,
    /// Size in logical blocks of the controller's `lba_size`.
    pub blocks: u64,
}

/// One emulated NVMe controller of the guest, bound to vfio-pci.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmController {
    /// PCI address, e.g. `0000:00:04.0`.
    pub bdf: String,
    /// What the controller is for: `default`, `mdts2`, `mdts0`, `ns512` (vm-test), `bench`.
    pub role: String,
    pub serial: String,
    /// QEMU's `mdts` (0 = unlimited).
    pub mdts: u8,
    /// Logical block size in bytes of every namespace.
    pub lba_size: u32,
    pub namespaces: Vec<VmNamespace>,
}

impl VmController {
    /// `/sys/bus/pci/devices/<bdf>`, the path VFIO opens the device by.
    pub fn sysfs(&self) -> PathBuf {
        PathBuf::from("/sys/bus/pci/devices").join(&self.bdf)
    }

    /// The controller's IOMMU group number (its `/dev/vfio/<group>`).
    pub fn iommu_group(&self) -> std::io::Result<u32> {
        let link = std::fs::read_link(self.sysfs().join("iommu_group"))?;
        link.file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| {
                std::io::Error::other(format!("{}: odd iommu_group link {link:?}", self.bdf))
            })
    }
}

/// A malformed matrix line.
#[derive(Debug, PartialEq, Eq)]
pub struct MatrixError {
    pub line: usize,
    pub reason: String,
}

impl fmt::Display for MatrixError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "matrix line {}: {} (format: ci/vm/README.md)",
            self.line, self.reason
        )
    }
}

impl std::error::Error for MatrixError {}

/// Parses the matrix text: `bdf role serial mdts lba_size nsid:blocks[,nsid:blocks...]` per
/// line, `#` starts a comment line.
pub fn parse_matrix(text: &str) -> Result<Vec<VmController>, MatrixError> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let err = |reason: String| MatrixError {
            line: i + 1,
            reason,
        };
        let f: Vec<&str> = line.split_whitespace().collect();
        let [bdf, role, serial, mdts, lba_size, ns] = f[..] else {
            return Err(err(format!("expected 6 fields, got {}", f.len())));
        };
        let mdts = mdts
            .parse()
            .map_err(|_| err(format!("mdts {mdts:?} is not a number")))?;
        let lba_size = lba_size
            .parse()
            .map_err(|_| err(format!("lba_size {lba_size:?} is not a number")))?;
        let namespaces = ns
            .split(',')
            .map(|n| {
                let (nsid, blocks) = n
                    .split_once(':')
                    .ok_or_else(|| err(format!("namespace {n:?} is not nsid:blocks")))?;
                Ok(VmNamespace {
                    nsid: nsid
                        .parse()
                        .map_err(|_| err(format!("nsid {nsid:?} is not a number")))?,
                    blocks: blocks
                        .parse()
                        .map_err(|_| err(format!("blocks {blocks:?} is not a number")))?,
                })
            })
            .collect::<Result<_, _>>()?;
        out.push(VmController {
            bdf: bdf.to_owned(),
            role: role.to_owned(),
            serial: serial.to_owned(),
            mdts,
            lba_size,
            namespaces,
        });
    }
    Ok(out)
}

/// True inside the harness's guest.
pub fn in_guest() -> bool {
    std::env::var(ENV_VM).is_ok_and(|v| v == "1")
}

/// The guest's controllers; `None` on the host.
///
/// # Panics
///
/// In the guest, when the matrix file cannot be read or parsed: a VM test must fail then.
pub fn matrix() -> Option<Vec<VmController>> {
    if !in_guest() {
        return None;
    }
    let path = std::env::var(ENV_MATRIX).unwrap_or_else(|_| "/matrix".to_owned());
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("in the VM guest but cannot read the matrix {path}: {e}"));
    let m = parse_matrix(&text).unwrap_or_else(|e| panic!("{path}: {e}"));
    assert!(!m.is_empty(), "{path} lists no controller");
    Some(m)
}

/// [`matrix`], printing [`SKIP_MESSAGE`] on the host.
pub fn matrix_or_skip() -> Option<Vec<VmController>> {
    let m = matrix();
    if m.is_none() {
        println!("{SKIP_MESSAGE}");
    }
    m
}

/// The guest's controller with this role; `None` (and the skip message) on the host.
///
/// # Panics
///
/// In the guest, when no controller has that role.
pub fn controller(role: &str) -> Option<VmController> {
    let m = matrix_or_skip()?;
    let c = m.iter().find(|c| c.role == role).cloned();
    Some(c.unwrap_or_else(|| panic!("the VM matrix has no controller with role {role:?}: {m:?}")))
}

/// Declares that this run may make QEMU log the trace event `event` (a full name such as
/// `pci_nvme_err_invalid_prp2_align`); call it before the command that provokes it. The
/// allowance covers the whole run. No-op on the host.
///
/// # Panics
///
/// When `event` is not a `pci_nvme_err_*` name (`pci_nvme_ub_*` can never be allowed), or the
/// declaration cannot be recorded in the guest.
pub fn expect_trace_err(event: &str) {
    assert!(
        event.starts_with("pci_nvme_err_")
            && event[13..]
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_')
            && event.len() > 13,
        "{event:?} is not a pci_nvme_err_* trace event name"
    );
    if !in_guest() {
        return;
    }
    let path = std::env::var(ENV_EXPECT).unwrap_or_else(|_| "/tmp/vm-expect-err".to_owned());
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("cannot record expected trace event in {path}: {e}"));
    writeln!(f, "{event}").unwrap_or_else(|e| panic!("writing {path}: {e}"));
}

/// Asks the host harness to hot-unplug the controller with `role` (QMP `device_del`). The
/// request goes straight to the serial console, past libtest's output capture; the harness
/// watches the console and answers at once.
pub fn ask_host_device_del(role: &str) {
    let mut console = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/console")
        .expect("/dev/console (only in the VM guest)");
    writeln!(console, "\nVM-QMP: device_del role={role}").expect("write to the console");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_harness_format() {
        let m = parse_matrix(
            "# bdf role serial mdts lba_size namespaces\n\
             0000:00:04.0 default dflt0001 7 4096 1:16384\n\
             \n\
             0000:00:07.0 ns512 lba00512 7 512 1:65536,2:65536\n",
        )
        .unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].bdf, "0000:00:04.0");
        assert_eq!(m[0].role, "default");
        assert_eq!(m[0].serial, "dflt0001");
        assert_eq!(m[0].mdts, 7);
        assert_eq!(m[0].lba_size, 4096);
        assert_eq!(
            m[0].namespaces,
            [VmNamespace {
                nsid: 1,
                blocks: 16384
            }]
        );
        assert_eq!(m[1].namespaces.len(), 2);
        assert_eq!(m[1].namespaces[1].nsid, 2);
        assert_eq!(m[1].namespaces[1].blocks, 65536);
    }

    #[test]
    fn rejects_malformed_lines_with_their_number() {
        let e = parse_matrix("# c\n0000:00:04.0 default x 7 4096\n").unwrap_err();
        assert_eq!(e.line, 2);
        assert!(e.reason.contains("6 fields"), "{e}");
        let e = parse_matrix("0000:00:04.0 default x seven 4096 1:1\n").unwrap_err();
        assert!(e.reason.contains("mdts"), "{e}");
        let e = parse_matrix("0000:00:04.0 default x 7 4096 1-1\n").unwrap_err();
        assert!(e.reason.contains("nsid:blocks"), "{e}");
    }

    #[test]
    #[should_panic(expected = "not a pci_nvme_err_")]
    fn expect_trace_err_refuses_ub_events() {
        expect_trace_err("pci_nvme_ub_db_wr_misaligned");
    }
}
