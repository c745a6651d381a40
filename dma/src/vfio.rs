//! VFIO: a PCI function bound to vfio-pci, seen through [`PciFunction`].
//!
//! [`VfioFunction::open`] goes through the steps a user would check by hand, and fails with
//! the step that is wrong and what to do about it:
//!
//! 1. the PCI address is well formed and exists in sysfs;
//! 2. it has an IOMMU group (else the IOMMU is off);
//! 3. it is bound to vfio-pci, and every other device in its group is bound to vfio-pci, to a
//!    driver vfio accepts (`pci-stub`, `pcieport`) or to none (the group is *viable*);
//! 4. `/dev/vfio/vfio` exists (else the modules are not loaded);
//! 5. a type1 v2 container takes the group, the device fd is opened (vfio-ioctls);
//! 6. BAR0 is mmapped from the device fd at the region offset (vfio-ioctls has no BAR mmap);
//! 7. memory space and bus mastering are enabled in the command register and read back;
//! 8. the container's IOVA ranges are read with `VFIO_IOMMU_GET_INFO` (IOVA-range capability;
//!    vfio-ioctls lacks it). A kernel without the capability gets `[1 MiB, 512 GiB)` and a
//!    note ([`VfioMapper::iova_ranges_note`]).
//!
//! vfio-ioctls is used where it reports errors (container, device, DMA map/unmap, MSI-X);
//! config space, reset and IOMMU info are done here because the crate only logs failures
//! there or lacks them.
//!
//! iommufd (`/dev/iommu`, vfio cdev) is not implemented: the CI guest kernel has none, and
//! the legacy container covers every kernel we run on.

use std::fmt;
use std::fs::OpenOptions;
use std::io;
use std::ops::Range;
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use memmap2::{MmapOptions, MmapRaw};
use vfio_bindings::bindings::vfio::{
    VFIO_BASE, VFIO_IOMMU_INFO_CAPS, VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE,
    VFIO_PCI_BAR0_REGION_INDEX, VFIO_PCI_CONFIG_REGION_INDEX, VFIO_PCI_MSIX_IRQ_INDEX,
    VFIO_PCI_REQ_IRQ_INDEX, VFIO_REGION_INFO_FLAG_MMAP, VFIO_TYPE, vfio_iommu_type1_info,
};
use vfio_ioctls::{VfioContainer, VfioDevice, VfioError, VfioOps, VfioRegionInfoCap};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use crate::Error;
use crate::device::{Bar0, DmaMapper, PciFunction};
use crate::memory::{DmaMemory, MemoryOptions};

/// The two VFIO ioctls vfio-ioctls does not wrap (private: their numbers are tested).
mod ioctls {
    use super::{VFIO_BASE, VFIO_TYPE};

    vmm_sys_util::ioctl_io_nr!(VFIO_DEVICE_RESET, VFIO_TYPE as u32, VFIO_BASE + 11);
    vmm_sys_util::ioctl_io_nr!(VFIO_IOMMU_GET_INFO, VFIO_TYPE as u32, VFIO_BASE + 12);
}
use ioctls::{VFIO_DEVICE_RESET, VFIO_IOMMU_GET_INFO};

/// IOVA ranges assumed when the kernel reports none: above 1 MiB (never IOVA 0) and below
/// 512 GiB (the 39-bit space of QEMU's emulated Intel IOMMU).
pub const FALLBACK_IOVA_RANGES: Range<u64> = (1 << 20)..(512 << 30);

/// Drivers vfio accepts for other devices of a viable group (besides vfio-pci itself).
const VFIO_FRIENDLY_DRIVERS: &[&str] = &["vfio-pci", "pci-stub", "pcieport"];

/// PCI command register bits (PCI Local Bus 3.0, 6.2.2).
const PCI_COMMAND: u64 = 0x04;
const PCI_COMMAND_MEMORY: u16 = 1 << 1;
const PCI_COMMAND_MASTER: u16 = 1 << 2;

/// Checks and normalises a PCI address: `DDDD:BB:DD.F` (hex, any case), or `BB:DD.F` for
/// domain 0. Returns the lower-case, full form (`0000:01:00.0`).
///
/// # Errors
///
/// [`Error::BadPciAddress`] if the text is not a PCI address.
pub fn parse_bdf(bdf: &str) -> Result<String, Error> {
    let bad = || Error::BadPciAddress {
        bdf: bdf.to_string(),
    };
    let parts: Vec<&str> = bdf.split(':').collect();
    let (dom, bus, devfn) = match parts.as_slice() {
        [d, b, df] => (*d, *b, *df),
        [b, df] => ("0000", *b, *df),
        _ => return Err(bad()),
    };
    let (dev, func) = devfn.split_once('.').ok_or_else(bad)?;
    let hex = |s: &str, width: usize, max: u32| -> Option<u32> {
        if s.len() != width || !s.bytes().all(|c| c.is_ascii_hexdigit()) {
            return None;
        }
        u32::from_str_radix(s, 16).ok().filter(|&v| v <= max)
    };
    let d = hex(dom, 4, 0xffff).ok_or_else(bad)?;
    let b = hex(bus, 2, 0xff).ok_or_else(bad)?;
    let v = hex(dev, 2, 0x1f).ok_or_else(bad)?;
    let f = hex(func, 1, 7).ok_or_else(bad)?;
    Ok(format!("{d:04x}:{b:02x}:{v:02x}.{f:x}"))
}

/// What sysfs says about a device: its path and IOMMU group, after the viability checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SysfsDevice {
    /// Normalised PCI address.
    pub bdf: String,
    /// `<sysfs>/bus/pci/devices/<bdf>`.
    pub path: PathBuf,
    /// IOMMU group number (`/dev/vfio/<group>`).
    pub group: u32,
}

fn driver_of(dev: &Path) -> Option<String> {
    let link = std::fs::read_link(dev.join("driver")).ok()?;
    link.file_name().map(|n| n.to_string_lossy().into_owned())
}

/// Steps 1-3 of [`VfioFunction::open`] against a sysfs tree rooted at `sysfs` (normally
/// `/sys`; tests pass a fake tree).
///
/// # Errors
///
/// [`Error::BadPciAddress`], [`Error::DeviceNotFound`], [`Error::NoIommu`],
/// [`Error::NotBoundToVfio`], [`Error::GroupNotViable`].
pub fn check_sysfs(sysfs: &Path, bdf: &str) -> Result<SysfsDevice, Error> {
    let bdf = parse_bdf(bdf)?;
    let path = sysfs.join("bus/pci/devices").join(&bdf);
    if !path.exists() {
        return Err(Error::DeviceNotFound {
            bdf,
            path: path.display().to_string(),
        });
    }
    let group_link = std::fs::read_link(path.join("iommu_group"))
        .map_err(|_| Error::NoIommu { bdf: bdf.clone() })?;
    let group: u32 = group_link
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| Error::NoIommu { bdf: bdf.clone() })?;
    let driver = driver_of(&path);
    if driver.as_deref() != Some("vfio-pci") {
        return Err(Error::NotBoundToVfio { bdf, driver });
    }
    let group_dir = sysfs
        .join("kernel/iommu_groups")
        .join(group.to_string())
        .join("devices");
    // A missing group directory (odd sysfs) is left to the kernel's own viability check.
    if let Ok(entries) = std::fs::read_dir(&group_dir) {
        let mut others: Vec<(String, Option<String>)> = entries
            .filter_map(|e| e.ok())
            .map(|e| {
                (
                    e.file_name().to_string_lossy().into_owned(),
                    driver_of(&e.path()),
                )
            })
            .collect();
        others.sort();
        for (device, drv) in others {
            if let Some(drv) = drv {
                if !VFIO_FRIENDLY_DRIVERS.contains(&drv.as_str()) {
                    return Err(Error::GroupNotViable {
                        group,
                        device,
                        driver: drv,
                    });
                }
            }
        }
    }
    Ok(SysfsDevice { bdf, path, group })
}

/// Parses the buffer filled by `VFIO_IOMMU_GET_INFO`: walks the capability chain and returns
/// the IOVA ranges (half-open; the kernel's ends are inclusive), or `None` if the
/// IOVA-range capability is absent or malformed.
pub fn parse_iommu_info_ranges(buf: &[u8]) -> Option<Vec<Range<u64>>> {
    let u32_at = |o: usize| -> Option<u32> {
        Some(u32::from_ne_bytes(
            buf.get(o..o.checked_add(4)?)?.try_into().ok()?,
        ))
    };
    let u16_at = |o: usize| -> Option<u16> {
        Some(u16::from_ne_bytes(
            buf.get(o..o.checked_add(2)?)?.try_into().ok()?,
        ))
    };
    let u64_at = |o: usize| -> Option<u64> {
        Some(u64::from_ne_bytes(
            buf.get(o..o.checked_add(8)?)?.try_into().ok()?,
        ))
    };
    // struct vfio_iommu_type1_info { argsz, flags, iova_pgsizes: u64, cap_offset, pad }
    let flags = u32_at(4)?;
    if flags & VFIO_IOMMU_INFO_CAPS == 0 {
        return None;
    }
    let mut off = u32_at(16)? as usize;
    let mut hops = 0;
    while off != 0 && hops < 64 {
        hops += 1;
        // struct vfio_info_cap_header { id: u16, version: u16, next: u32 }
        let id = u16_at(off)?;
        let next = u32_at(off + 4)? as usize;
        if u32::from(id) == VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE {
            // { header (8), nr_iovas: u32, reserved: u32, ranges: [{start, end}] }
            let n = u32_at(off + 8)? as usize;
            let mut out = Vec::with_capacity(n.min(64));
            for i in 0..n {
                let base = off + 16 + i * 16;
                let start = u64_at(base)?;
                let end = u64_at(base + 8)?;
                if end >= start {
                    out.push(start..end.saturating_add(1));
                }
            }
            return Some(out);
        }
        off = next;
    }
    None
}

/// The IOMMU of a VFIO container, as a [`DmaMapper`].
///
/// Holds the device open (an `Arc`), so the group stays attached to the container, and the
/// mappings stay valid, for as long as any [`DmaMemory`] uses this mapper.
pub struct VfioMapper {
    container: Arc<VfioContainer>,
    /// Keeps the group attached (see the type's doc). Dropped after nothing maps any more.
    _device: Arc<VfioDevice>,
    ranges: Vec<Range<u64>>,
    note: Option<String>,
    pinned: AtomicU64,
}

impl fmt::Debug for VfioMapper {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VfioMapper")
            .field("ranges", &format_args!("{:x?}", self.ranges))
            .field("note", &self.note)
            .field("pinned", &self.pinned.load(Ordering::Relaxed))
            .finish()
    }
}

impl VfioMapper {
    /// Why the IOVA ranges are the fallback ones, if they are.
    pub fn iova_ranges_note(&self) -> Option<&str> {
        self.note.as_deref()
    }

    /// Bytes currently mapped (pinned) through this mapper.
    pub fn pinned_bytes(&self) -> u64 {
        self.pinned.load(Ordering::Relaxed)
    }
}

/// `VFIO_IOMMU_GET_INFO` on the container, with the IOVA-range capability.
fn query_iova_ranges(container: &VfioContainer) -> (Vec<Range<u64>>, Option<String>) {
    let fd = container.as_raw_fd();
    let base = std::mem::size_of::<vfio_iommu_type1_info>();
    let mut buf: Vec<u64> = vec![0; base.div_ceil(8)];
    let ask = |buf: &mut Vec<u64>| -> io::Result<u32> {
        let bytes = buf.len() * 8;
        // argsz and flags are the first two u32s; the kernel writes the size it needs back
        // into argsz.
        let mut head = [0u8; 8];
        head[..4].copy_from_slice(&(bytes as u32).to_ne_bytes());
        buf[0] = u64::from_ne_bytes(head);
        // SAFETY: `buf` is a writable, 8-aligned buffer of `bytes` bytes and argsz says so;
        // VFIO_IOMMU_GET_INFO writes at most argsz bytes into it.
        let ret = unsafe { libc::ioctl(fd, VFIO_IOMMU_GET_INFO() as _, buf.as_mut_ptr()) };
        if ret != 0 {
            return Err(io::Error::last_os_error());
        }
        let head = buf[0].to_ne_bytes();
        Ok(u32::from_ne_bytes([head[0], head[1], head[2], head[3]]))
    };
    let fallback = |why: String| (vec![FALLBACK_IOVA_RANGES], Some(why));
    let need = match ask(&mut buf) {
        Ok(n) => n as usize,
        Err(e) => {
            return fallback(format!(
                "VFIO_IOMMU_GET_INFO failed ({e}); assuming [1 MiB, 512 GiB)"
            ));
        }
    };
    if need > base {
        buf = vec![0; need.div_ceil(8)];
        if let Err(e) = ask(&mut buf) {
            return fallback(format!(
                "VFIO_IOMMU_GET_INFO failed ({e}); assuming [1 MiB, 512 GiB)"
            ));
        }
    }
    let bytes: Vec<u8> = buf.iter().flat_map(|w| w.to_ne_bytes()).collect();
    match parse_iommu_info_ranges(&bytes) {
        Some(r) if !r.is_empty() => (r, None),
        _ => fallback(
            "the kernel reports no IOVA-range capability; assuming [1 MiB, 512 GiB)".into(),
        ),
    }
}

fn memlock_limit() -> Option<u64> {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the struct we own.
    let ret = unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut rl) };
    (ret == 0 && rl.rlim_cur != libc::RLIM_INFINITY).then_some(rl.rlim_cur)
}

impl DmaMapper for VfioMapper {
    unsafe fn map(&self, iova: u64, host: *mut u8, len: usize) -> Result<(), Error> {
        // SAFETY: the caller upholds DmaMapper::map's contract, which is vfio_dma_map's: the
        // range stays allocated and is only accessed through raw pointers until unmapped.
        match unsafe { self.container.vfio_dma_map(iova, len, host) } {
            Ok(()) => {
                self.pinned.fetch_add(len as u64, Ordering::Relaxed);
                Ok(())
            }
            Err(VfioError::IommuDmaMap(e)) if e.errno() == libc::ENOMEM => {
                let needed = self.pinned.load(Ordering::Relaxed) + len as u64;
                match memlock_limit() {
                    Some(current) if current < needed => {
                        Err(Error::MemlockTooLow { current, needed })
                    }
                    _ => Err(Error::Os {
                        op: "VFIO_IOMMU_MAP_DMA (out of memory or too many mappings)",
                        source: io::Error::from_raw_os_error(e.errno()),
                    }),
                }
            }
            Err(VfioError::IommuDmaMap(e)) if e.errno() == libc::ENOSPC => {
                Err(Error::TooManyMappings { len })
            }
            Err(source) => Err(Error::Vfio {
                op: "DMA map",
                bdf: "container".into(),
                source,
            }),
        }
    }

    fn unmap(&self, iova: u64, len: usize) -> Result<(), Error> {
        self.container
            .vfio_dma_unmap(iova, len)
            .map_err(|source| Error::Vfio {
                op: "DMA unmap",
                bdf: "container".into(),
                source,
            })?;
        self.pinned.fetch_sub(len as u64, Ordering::Relaxed);
        Ok(())
    }

    fn iova_ranges(&self) -> Vec<Range<u64>> {
        self.ranges.clone()
    }
}

/// BAR0 of a VFIO function, mmapped from the device fd.
///
/// Accessors are single volatile loads/stores with a bounds and alignment check; no lock,
/// no dynamic dispatch, no syscall.
pub struct VfioBar {
    ptr: *mut u8,
    len: usize,
    _map: MmapRaw,
}

// SAFETY: `ptr` points into the mapping `_map` owns for the bar's life; all access goes
// through volatile 32/64-bit operations on MMIO, which the device serialises, so using the
// bar from several threads is as sound as it is from one.
unsafe impl Send for VfioBar {}
// SAFETY: see the `Send` impl.
unsafe impl Sync for VfioBar {}

impl fmt::Debug for VfioBar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VfioBar")
            .field("ptr", &self.ptr)
            .field("len", &self.len)
            .finish()
    }
}

impl VfioBar {
    #[inline(always)]
    #[track_caller]
    fn at(&self, offset: usize, width: usize) -> *mut u8 {
        // len >= 4096 (checked when mapped), so `len - width` cannot underflow.
        assert!(
            offset <= self.len - width && offset % width == 0,
            "BAR0 access at {offset:#x} ({width} bytes) is outside the {:#x}-byte BAR or misaligned",
            self.len
        );
        // SAFETY: offset + width <= len (checked), so the pointer stays in the mapping.
        unsafe { self.ptr.add(offset) }
    }
}

impl Bar0 for VfioBar {
    #[inline]
    fn read32(&self, offset: usize) -> u32 {
        let p = self.at(offset, 4) as *const u32;
        // SAFETY: in bounds and 4-aligned (checked); MMIO is read with one volatile load.
        unsafe { p.read_volatile() }
    }

    #[inline]
    fn write32(&self, offset: usize, value: u32) {
        let p = self.at(offset, 4) as *mut u32;
        // SAFETY: in bounds and 4-aligned (checked); one volatile store (the doorbell path).
        unsafe { p.write_volatile(value) }
    }

    #[inline]
    fn read64(&self, offset: usize) -> u64 {
        let p = self.at(offset, 8) as *const u64;
        // SAFETY: in bounds and 8-aligned (checked); one volatile 64-bit load.
        unsafe { p.read_volatile() }
    }

    #[inline]
    fn write64(&self, offset: usize, value: u64) {
        let p = self.at(offset, 8) as *mut u64;
        // SAFETY: in bounds and 8-aligned (checked); one volatile 64-bit store.
        unsafe { p.write_volatile(value) }
    }

    #[inline]
    fn len(&self) -> usize {
        self.len
    }
}

/// A PCI function bound to vfio-pci: BAR0, the container's IOMMU, MSI-X and reset.
///
/// Drop order: BAR0 is unmapped, then the device fd is closed once every [`DmaMemory`] over
/// [`PciFunction::dma_mapper`] is gone too (the mapper keeps the group attached).
pub struct VfioFunction {
    bar: VfioBar,
    bdf: String,
    group: u32,
    device: Arc<VfioDevice>,
    mapper: Arc<VfioMapper>,
    msix: u32,
    msix_fds: Mutex<Vec<Arc<EventFd>>>,
    /// The kernel's "release this device" request (VFIO_PCI_REQ_IRQ_INDEX): signalled when
    /// the device is being unplugged or unbound, and the kernel waits until we close it.
    removal: Option<EventFd>,
    removal_seen: std::sync::atomic::AtomicBool,
}

impl fmt::Debug for VfioFunction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VfioFunction")
            .field("bdf", &self.bdf)
            .field("group", &self.group)
            .field("bar0", &self.bar)
            .field("msix", &self.msix)
            .field("mapper", &self.mapper)
            .finish()
    }
}

fn map_open_err(bdf: &str, group: u32, op: &'static str, e: VfioError) -> Error {
    match e {
        VfioError::OpenContainer(source) if source.kind() == io::ErrorKind::NotFound => {
            Error::VfioMissing {
                path: "/dev/vfio/vfio".into(),
                source,
            }
        }
        VfioError::OpenGroup(source, _) if source.raw_os_error() == Some(libc::EBUSY) => {
            Error::DeviceBusy {
                bdf: bdf.to_string(),
                source,
            }
        }
        VfioError::OpenGroup(source, _) if source.kind() == io::ErrorKind::NotFound => {
            Error::VfioMissing {
                path: format!("/dev/vfio/{group}"),
                source,
            }
        }
        VfioError::GroupViable => Error::GroupNotViable {
            group,
            device: "(a device in the group)".into(),
            driver: "a host driver (see /sys/kernel/iommu_groups/N/devices)".into(),
        },
        VfioError::GroupGetDeviceFD(errno) if errno.errno() == libc::EBUSY => Error::DeviceBusy {
            bdf: bdf.to_string(),
            source: io::Error::from_raw_os_error(libc::EBUSY),
        },
        source => Error::Vfio {
            op,
            bdf: bdf.to_string(),
            source,
        },
    }
}

impl VfioFunction {
    /// Opens the function at PCI address `bdf` ("0000:01:00.0") and prepares it for a driver:
    /// BAR0 mapped, memory space and bus mastering enabled, IOVA ranges known.
    ///
    /// # Errors
    ///
    /// One variant per step that can fail (see the module doc): [`Error::BadPciAddress`],
    /// [`Error::DeviceNotFound`], [`Error::NoIommu`], [`Error::NotBoundToVfio`],
    /// [`Error::GroupNotViable`], [`Error::VfioMissing`], [`Error::DeviceBusy`],
    /// [`Error::Vfio`], [`Error::Bar`], [`Error::ConfigWrite`], [`Error::DeviceGone`].
    pub fn open(bdf: &str) -> Result<VfioFunction, Error> {
        let sys = check_sysfs(Path::new("/sys"), bdf)?;
        let bdf = sys.bdf.clone();
        match OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/vfio/vfio")
        {
            Ok(_) => {}
            Err(source) if source.kind() == io::ErrorKind::NotFound => {
                return Err(Error::VfioMissing {
                    path: "/dev/vfio/vfio".into(),
                    source,
                });
            }
            Err(source) => {
                let op = "open /dev/vfio/vfio (run as root, or give your user access to it)";
                return Err(Error::os(op, source));
            }
        }
        let container = Arc::new(
            VfioContainer::new(None).map_err(|e| map_open_err(&bdf, sys.group, "container", e))?,
        );
        let ops: Arc<dyn VfioOps> = container.clone();
        let device = Arc::new(
            VfioDevice::new(&sys.path, ops, false)
                .map_err(|e| map_open_err(&bdf, sys.group, "device open", e))?,
        );
        let bar = map_bar0(&device, &bdf)?;
        let (ranges, note) = query_iova_ranges(&container);
        let msix = device
            .get_irq_info(VFIO_PCI_MSIX_IRQ_INDEX)
            .map_or(0, |i| i.count);
        // Best effort: a kernel without the request IRQ still has the all-ones check.
        let removal = EventFd::new(EFD_NONBLOCK)
            .ok()
            .filter(|fd| device.enable_irq(VFIO_PCI_REQ_IRQ_INDEX, vec![fd]).is_ok());
        let f = VfioFunction {
            bar,
            bdf,
            group: sys.group,
            mapper: Arc::new(VfioMapper {
                container,
                _device: device.clone(),
                ranges,
                note,
                pinned: AtomicU64::new(0),
            }),
            device,
            msix,
            msix_fds: Mutex::new(Vec::new()),
            removal,
            removal_seen: std::sync::atomic::AtomicBool::new(false),
        };
        f.enable_bus_master()?;
        Ok(f)
    }

    /// Normalised PCI address.
    pub fn bdf(&self) -> &str {
        &self.bdf
    }

    /// IOMMU group number.
    pub fn iommu_group(&self) -> u32 {
        self.group
    }

    /// The concrete mapper (for its IOVA-range note and pinned-bytes counter).
    pub fn vfio_mapper(&self) -> &Arc<VfioMapper> {
        &self.mapper
    }

    /// Region info as `(offset in the device fd, size, flags)`.
    pub fn region_info(&self, index: u32) -> (u64, u64, u32) {
        (
            self.device.get_region_offset(index),
            self.device.get_region_size(index),
            self.device.get_region_flags(index),
        )
    }

    fn fd(&self) -> RawFd {
        self.device.as_raw_fd()
    }

    /// Where `offset..offset+len` of config space sits in the device fd.
    fn config_pos(&self, offset: u64, len: usize) -> Result<libc::off_t, Error> {
        let base = self.device.get_region_offset(VFIO_PCI_CONFIG_REGION_INDEX);
        let size = self.device.get_region_size(VFIO_PCI_CONFIG_REGION_INDEX);
        if offset.checked_add(len as u64).is_none_or(|end| end > size) {
            return Err(Error::InvalidArgument {
                what: format!("config access at {offset:#x}+{len} past {size:#x}"),
            });
        }
        Ok((base + offset) as libc::off_t)
    }

    fn check_io(n: isize, len: usize, op: &'static str) -> Result<(), Error> {
        if n < 0 {
            return Err(Error::os(op, io::Error::last_os_error()));
        }
        if n as usize != len {
            let short = io::Error::new(io::ErrorKind::UnexpectedEof, format!("{n} of {len} bytes"));
            return Err(Error::os(op, short));
        }
        Ok(())
    }

    /// Reads `buf.len()` bytes of config space at `offset` (pread on the device fd; every
    /// failure and short read is an error, unlike vfio-ioctls' `region_read`).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] past the end of config space; [`Error::Os`] if the read
    /// fails or is short.
    pub fn config_read(&self, offset: u64, buf: &mut [u8]) -> Result<(), Error> {
        let pos = self.config_pos(offset, buf.len())?;
        // SAFETY: `buf` is a live, writable slice of `buf.len()` bytes; pread writes at most
        // that many.
        let n = unsafe { libc::pread(self.fd(), buf.as_mut_ptr().cast(), buf.len(), pos) };
        Self::check_io(n, buf.len(), "config space read")
    }

    /// Writes `buf` to config space at `offset` (pwrite on the device fd). Not read back:
    /// use [`VfioFunction::config_write16_checked`] for registers.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] past the end of config space; [`Error::Os`] if the write
    /// fails or is short.
    pub fn config_write(&self, offset: u64, buf: &[u8]) -> Result<(), Error> {
        let pos = self.config_pos(offset, buf.len())?;
        // SAFETY: `buf` is a live slice of `buf.len()` bytes; pwrite only reads it.
        let n = unsafe { libc::pwrite(self.fd(), buf.as_ptr().cast(), buf.len(), pos) };
        Self::check_io(n, buf.len(), "config space write")
    }

    /// Reads a 32-bit config-space register at `offset` (4-aligned).
    ///
    /// # Errors
    ///
    /// [`Error::Os`] if the read fails; [`Error::DeviceGone`] if it reads all ones at
    /// offset 0 (vendor/device id).
    pub fn config_read32(&self, offset: u64) -> Result<u32, Error> {
        let mut b = [0u8; 4];
        self.config_read(offset, &mut b)?;
        let v = u32::from_le_bytes(b);
        if offset == 0 && v == u32::MAX {
            return Err(Error::DeviceGone {
                bdf: self.bdf.clone(),
            });
        }
        Ok(v)
    }

    /// Reads a 16-bit config-space register at `offset` (2-aligned).
    ///
    /// # Errors
    ///
    /// [`Error::Os`] if the read fails.
    pub fn config_read16(&self, offset: u64) -> Result<u16, Error> {
        let mut b = [0u8; 2];
        self.config_read(offset, &mut b)?;
        Ok(u16::from_le_bytes(b))
    }

    /// Writes a 16-bit config-space register and checks, by reading it back, that the bits in
    /// `check_mask` took the written value.
    ///
    /// # Errors
    ///
    /// [`Error::Os`] if the write or read fails; [`Error::ConfigWrite`] if the value did not
    /// stick.
    pub fn config_write16_checked(
        &self,
        offset: u64,
        value: u16,
        check_mask: u16,
    ) -> Result<(), Error> {
        self.config_write(offset, &value.to_le_bytes())?;
        let back = self.config_read16(offset)?;
        if back & check_mask != value & check_mask {
            return Err(Error::ConfigWrite {
                bdf: self.bdf.clone(),
                offset,
                wrote: value.into(),
                read: back.into(),
            });
        }
        Ok(())
    }

    /// Sets Memory Space Enable and Bus Master Enable in the command register (read back).
    ///
    /// # Errors
    ///
    /// As [`VfioFunction::config_write16_checked`]; [`Error::DeviceGone`] if config space
    /// reads all ones.
    pub fn enable_bus_master(&self) -> Result<(), Error> {
        self.config_read32(0)?;
        let cmd = self.config_read16(PCI_COMMAND)?;
        let want = cmd | PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER;
        self.config_write16_checked(PCI_COMMAND, want, PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER)
    }

    /// Clears Bus Master Enable (the device can no longer DMA). Checked by reading back.
    ///
    /// # Errors
    ///
    /// As [`VfioFunction::config_write16_checked`].
    pub fn disable_bus_master(&self) -> Result<(), Error> {
        let cmd = self.config_read16(PCI_COMMAND)?;
        self.config_write16_checked(PCI_COMMAND, cmd & !PCI_COMMAND_MASTER, PCI_COMMAND_MASTER)
    }

    /// DMA memory over this function's IOMMU (a shortcut for
    /// `DmaMemory::new(self.dma_mapper(), opts)`).
    ///
    /// # Errors
    ///
    /// As [`DmaMemory::new`].
    pub fn dma_memory(&self, opts: MemoryOptions) -> Result<DmaMemory, Error> {
        DmaMemory::new(self.dma_mapper(), opts)
    }
}

fn map_bar0(device: &VfioDevice, bdf: &str) -> Result<VfioBar, Error> {
    let bad = |reason: String| Error::Bar {
        bdf: bdf.to_string(),
        reason,
    };
    let idx = VFIO_PCI_BAR0_REGION_INDEX;
    let size = device.get_region_size(idx) as usize;
    let offset = device.get_region_offset(idx);
    let flags = device.get_region_flags(idx);
    if size < 4096 {
        return Err(bad(format!(
            "size {size:#x} (an NVMe BAR0 has at least 4 KiB)"
        )));
    }
    if flags & VFIO_REGION_INFO_FLAG_MMAP == 0 {
        return Err(bad("vfio-pci does not allow mmap of it".into()));
    }
    let fd = device.as_raw_fd();
    let map = match MmapOptions::new().offset(offset).len(size).map_raw(fd) {
        Ok(m) => m,
        Err(whole) => {
            // Without IRQ remapping vfio-pci refuses to mmap the MSI-X table inside BAR0 and
            // offers sparse areas instead: the registers and doorbells sit in the first one.
            let first = device
                .get_region_caps(idx)
                .into_iter()
                .find_map(|c| match c {
                    VfioRegionInfoCap::SparseMmap(s) => s.areas.into_iter().find(|a| a.offset == 0),
                    _ => None,
                });
            match first {
                Some(a) if a.size >= 4096 => MmapOptions::new()
                    .offset(offset)
                    .len(a.size as usize)
                    .map_raw(fd)
                    .map_err(|e| bad(format!("mmap failed: {e} (whole BAR: {whole})")))?,
                _ => return Err(bad(format!("mmap failed: {whole}"))),
            }
        }
    };
    Ok(VfioBar {
        ptr: map.as_mut_ptr(),
        len: map.len(),
        _map: map,
    })
}

impl PciFunction for VfioFunction {
    type Bar = VfioBar;

    fn bar0(&self) -> &VfioBar {
        &self.bar
    }

    fn dma_mapper(&self) -> Arc<dyn DmaMapper> {
        self.mapper.clone()
    }

    fn msix_vectors(&self) -> u32 {
        self.msix
    }

    fn enable_msix(&self, count: u32) -> Result<Vec<Arc<EventFd>>, Error> {
        if count == 0 || count > self.msix {
            return Err(Error::MsixVectors {
                bdf: self.bdf.clone(),
                requested: count,
                available: self.msix,
            });
        }
        let fds = (0..count)
            .map(|_| EventFd::new(EFD_NONBLOCK).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Error::os("eventfd", e))?;
        let refs: Vec<&EventFd> = fds.iter().map(|f| f.as_ref()).collect();
        self.device
            .enable_msix(refs)
            .map_err(|source| Error::Vfio {
                op: "enable MSI-X",
                bdf: self.bdf.clone(),
                source,
            })?;
        *self.msix_fds.lock().unwrap_or_else(|e| e.into_inner()) = fds.clone();
        Ok(fds)
    }

    fn disable_msix(&self) -> Result<(), Error> {
        self.device.disable_msix().map_err(|source| Error::Vfio {
            op: "disable MSI-X",
            bdf: self.bdf.clone(),
            source,
        })?;
        self.msix_fds
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        Ok(())
    }

    fn removal_requested(&self) -> bool {
        use std::sync::atomic::Ordering;
        if self.removal_seen.load(Ordering::Relaxed) {
            return true;
        }
        // Non-blocking: Ok means the kernel asked for the device back.
        let asked = self.removal.as_ref().is_some_and(|fd| fd.read().is_ok());
        if asked {
            self.removal_seen.store(true, Ordering::Relaxed);
        }
        asked
    }

    fn reset(&self) -> Result<(), Error> {
        // SAFETY: VFIO_DEVICE_RESET takes no argument; the fd is our open device.
        let ret = unsafe { libc::ioctl(self.fd(), VFIO_DEVICE_RESET() as _) };
        if ret != 0 {
            let e = io::Error::last_os_error();
            return Err(match e.raw_os_error() {
                Some(libc::EINVAL) | Some(libc::ENOTTY) => Error::ResetUnsupported {
                    bdf: self.bdf.clone(),
                },
                _ => Error::os("VFIO_DEVICE_RESET", e),
            });
        }
        // A function reset clears the command register: turn memory and bus master back on.
        self.enable_bus_master()
    }

    fn set_bus_master(&self, enable: bool) -> Result<(), Error> {
        if enable {
            self.enable_bus_master()
        } else {
            self.disable_bus_master()
        }
    }

    fn describe(&self) -> String {
        format!("{} (vfio, group {})", self.bdf, self.group)
    }
}

#[cfg(test)]
mod tests;
