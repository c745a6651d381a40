//! Devices that come and go: a watcher that finds NVMe controllers bound to vfio-pci after
//! the process started, reports the ones that left, and notices a controller it watches
//! that was removed (or asked back by the system) while idle.
//!
//! ## Model
//!
//! The watcher is polled, like everything else here: [`DeviceWatcher::scan`] reads sysfs
//! (`<root>/bus/pci/devices/*`: class 0x010802, driver link `vfio-pci`), compares with the
//! previous scan and returns what changed as [`DeviceEvent`]s; a caller opens an arrived
//! controller itself ([`crate::Controller::open`] with the address). Controllers handed to
//! [`DeviceWatcher::watch`] are checked on every scan with [`crate::Controller::is_gone`]
//! (the VFIO removal request, or all-ones registers), so a removal of an idle controller,
//! which no I/O would notice, is reported too ([`DeviceEvent::Gone`]). A busy controller's
//! requests already fail fast on their own (`Error::DeviceGone`), also inside poll groups.
//! Scan from a timer (a second is plenty): a scan costs a few directory reads.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use nvme_dio_dma::PciFunction;

use crate::controller::Controller;

/// The PCI class of an NVMe controller (mass storage, NVM, NVMe programming interface).
const NVME_CLASS: u32 = 0x010802;

/// What changed between two scans.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DeviceEvent {
    /// An NVMe controller is now bound to vfio-pci (new, or newly bound): open it.
    Arrived(String),
    /// A controller bound to vfio-pci before is no longer (removed, or unbound).
    Left(String),
    /// A watched controller is gone (removal, or the system asked for it back): drop
    /// every handle to it so the kernel can release it.
    Gone(String),
}

/// A watched controller, checked on every scan.
trait Watched: Send {
    fn gone(&self) -> bool;
}

impl<D: PciFunction> Watched for Controller<D> {
    fn gone(&self) -> bool {
        if self.is_gone() {
            return true;
        }
        // An idle controller nobody touches: look at a register. All ones, read twice
        // (`regio::read32`), is a device that went away without asking (surprise
        // removal); it is released as a removal is.
        let s = self.shared();
        if crate::regio::read32(s.dev.bar0(), nvme_dio_queue::regs::CSTS).is_err() {
            s.release_for_removal();
        }
        self.is_gone()
    }
}

/// Finds NVMe controllers bound to vfio-pci as they come and go. See the
/// [module documentation](self).
pub struct DeviceWatcher {
    root: PathBuf,
    known: BTreeSet<String>,
    watched: Vec<(String, Box<dyn Watched>)>,
}

impl std::fmt::Debug for DeviceWatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceWatcher")
            .field("root", &self.root)
            .field("known", &self.known)
            .field("watched", &self.watched.len())
            .finish()
    }
}

impl Default for DeviceWatcher {
    fn default() -> Self {
        DeviceWatcher::new()
    }
}

impl DeviceWatcher {
    /// A watcher of `/sys`. The first [`DeviceWatcher::scan`] reports every controller
    /// bound now as arrived.
    pub fn new() -> DeviceWatcher {
        DeviceWatcher::with_root("/sys")
    }

    /// A watcher of the sysfs tree at `root` (tests pass a fake tree).
    pub fn with_root(root: impl AsRef<Path>) -> DeviceWatcher {
        DeviceWatcher {
            root: root.as_ref().to_path_buf(),
            known: BTreeSet::new(),
            watched: Vec::new(),
        }
    }

    /// Treats the controllers bound now as known: the next scan reports only changes.
    pub fn baseline(&mut self) {
        self.known = self.bound().into_iter().collect();
    }

    /// Checks `ctrl` (at PCI address `bdf`) on every scan; reported once as
    /// [`DeviceEvent::Gone`] when it is, then forgotten.
    pub fn watch<D: PciFunction>(&mut self, bdf: impl Into<String>, ctrl: Controller<D>) {
        self.watched.push((bdf.into(), Box::new(ctrl)));
    }

    /// NVMe controllers bound to vfio-pci now, sorted.
    pub fn bound(&self) -> Vec<String> {
        let dir = self.root.join("bus/pci/devices");
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return Vec::new();
        };
        let mut out: Vec<String> = entries
            .filter_map(|e| e.ok())
            .filter(|e| is_vfio_nvme(&e.path()))
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        out.sort();
        out
    }

    /// What changed since the last scan: arrivals and departures of vfio-pci bound NVMe
    /// controllers (in address order), then watched controllers found gone.
    pub fn scan(&mut self) -> Vec<DeviceEvent> {
        let now: BTreeSet<String> = self.bound().into_iter().collect();
        let mut out: Vec<DeviceEvent> = now
            .difference(&self.known)
            .map(|b| DeviceEvent::Arrived(b.clone()))
            .collect();
        out.extend(
            self.known
                .difference(&now)
                .map(|b| DeviceEvent::Left(b.clone())),
        );
        self.known = now;
        let mut i = 0;
        while i < self.watched.len() {
            if self.watched[i].1.gone() {
                let (bdf, _) = self.watched.remove(i);
                out.push(DeviceEvent::Gone(bdf));
            } else {
                i += 1;
            }
        }
        out
    }
}

fn is_vfio_nvme(dev: &Path) -> bool {
    let class = std::fs::read_to_string(dev.join("class")).ok();
    let class = class
        .as_deref()
        .map(str::trim)
        .and_then(|c| u32::from_str_radix(c.trim_start_matches("0x"), 16).ok());
    if class != Some(NVME_CLASS) {
        return false;
    }
    std::fs::read_link(dev.join("driver"))
        .ok()
        .and_then(|l| l.file_name().map(|n| n == "vfio-pci"))
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake sysfs: `bus/pci/devices/<bdf>/{class, driver -> ../../drivers/<drv>}`.
    struct Fake(PathBuf);

    impl Fake {
        fn new(name: &str) -> Fake {
            let p =
                std::env::temp_dir().join(format!("nvme-dio-watch-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(p.join("bus/pci/devices")).unwrap();
            std::fs::create_dir_all(p.join("bus/pci/drivers/vfio-pci")).unwrap();
            std::fs::create_dir_all(p.join("bus/pci/drivers/nvme")).unwrap();
            Fake(p)
        }
        fn add(&self, bdf: &str, class: &str, driver: Option<&str>) {
            let d = self.0.join("bus/pci/devices").join(bdf);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("class"), format!("{class}\n")).unwrap();
            self.bind(bdf, driver);
        }
        fn bind(&self, bdf: &str, driver: Option<&str>) {
            let d = self.0.join("bus/pci/devices").join(bdf);
            let _ = std::fs::remove_file(d.join("driver"));
            if let Some(drv) = driver {
                let target = self.0.join("bus/pci/drivers").join(drv);
                std::os::unix::fs::symlink(target, d.join("driver")).unwrap();
            }
        }
        fn remove(&self, bdf: &str) {
            std::fs::remove_dir_all(self.0.join("bus/pci/devices").join(bdf)).unwrap();
        }
    }

    impl Drop for Fake {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn arrivals_and_departures_of_vfio_bound_nvme_controllers() {
        let f = Fake::new("scan");
        f.add("0000:00:04.0", "0x010802", Some("vfio-pci"));
        f.add("0000:00:05.0", "0x010802", Some("nvme")); // the kernel's: not ours
        f.add("0000:00:06.0", "0x020000", Some("vfio-pci")); // a NIC on vfio-pci
        let mut w = DeviceWatcher::with_root(&f.0);
        assert_eq!(w.scan(), [DeviceEvent::Arrived("0000:00:04.0".into())]);
        assert_eq!(w.scan(), [], "nothing changed");
        // Bound to vfio-pci later (nvme-dio setup), a new one hot-plugged, one removed.
        f.bind("0000:00:05.0", Some("vfio-pci"));
        f.add("0000:01:00.0", "0x010802", Some("vfio-pci"));
        f.remove("0000:00:04.0");
        assert_eq!(
            w.scan(),
            [
                DeviceEvent::Arrived("0000:00:05.0".into()),
                DeviceEvent::Arrived("0000:01:00.0".into()),
                DeviceEvent::Left("0000:00:04.0".into()),
            ]
        );
        // Given back to the kernel: it left us.
        f.bind("0000:00:05.0", Some("nvme"));
        assert_eq!(w.scan(), [DeviceEvent::Left("0000:00:05.0".into())]);
        // A baseline hides what is there already.
        let mut w2 = DeviceWatcher::with_root(&f.0);
        w2.baseline();
        assert_eq!(w2.scan(), []);
    }

    #[test]
    fn an_idle_watched_controller_that_is_removed_is_reported_once() {
        let f = Fake::new("gone");
        let ctrl = Controller::open("emu", |_| {}).unwrap();
        let mut w = DeviceWatcher::with_root(&f.0);
        w.watch("emu", ctrl.clone());
        assert_eq!(w.scan(), []);
        // No I/O is running: only the watcher's scan can notice.
        ctrl.device()
            .as_emu()
            .unwrap()
            .inject(nvme_dio_emu::Fault::SurpriseRemoval)
            .unwrap();
        assert_eq!(w.scan(), [DeviceEvent::Gone("emu".into())]);
        assert_eq!(w.scan(), [], "reported once");
    }
}
