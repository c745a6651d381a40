//! One device type for every tool: the emulated controller or a VFIO function, and one
//! parser for the strings that name them.
//!
//! The driver is generic over its device ([`PciFunction`]) so a database can pick one at
//! compile time; tools, the C ABI and the examples pick one at run time from a string, and
//! use [`Device`] for that. It is its own BAR: one `match` per register access, beside a
//! doorbell write that costs far more.
//!
//! Device strings, the same everywhere:
//!
//! | string | device |
//! | --- | --- |
//! | `emu`, `emu:null` | the emulated controller with a null namespace (keeps no data: CPU-cost runs) |
//! | `emu:ram` | the emulated controller with a RAM namespace (keeps data: verify, examples) |
//! | `...:thread` | (after `emu`, `emu:null` or `emu:ram`) completions from the emulator's own thread, like hardware, instead of inside the doorbell write |
//! | `...:512` | (likewise) 512-byte blocks instead of 4 KiB |
//! | `0000:01:00.0`, `01:00.0` | a PCI function bound to vfio-pci |

use std::sync::Arc;

use nvme_dio_dma::{Bar0, DmaMapper, PciFunction, VfioFunction};
use nvme_dio_emu::{EmuConfig, EmuFunction, Mode, NsConfig};
use vmm_sys_util::eventfd::EventFd;

use crate::controller::{Controller, ControllerOptions};
use nvme_dio_dma::MemoryOptions;

/// Bytes of the emulated RAM namespace unless told otherwise (64 MiB).
pub const EMU_RAM_BYTES: u64 = 64 << 20;
/// Bytes of the emulated null namespace unless told otherwise (1 TiB: it stores nothing).
pub const EMU_NULL_BYTES: u64 = 1 << 40;

/// What a device string names.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DeviceSpec {
    /// The emulated controller.
    Emu(EmuSpec),
    /// A PCI function in canonical `DDDD:BB:DD.F` form.
    Pci(String),
}

/// The emulated controller a string asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct EmuSpec {
    /// RAM namespace (keeps data) rather than null.
    pub ram: bool,
    /// Completions from the emulator's own thread.
    pub thread: bool,
    /// Block size.
    pub lba_size: u32,
}

impl EmuSpec {
    /// `emu`: a null namespace of 4 KiB blocks, completions inline.
    pub const fn null() -> EmuSpec {
        EmuSpec {
            ram: false,
            thread: false,
            lba_size: 4096,
        }
    }

    /// `emu:ram`: a RAM namespace of 4 KiB blocks, completions inline.
    pub const fn ram() -> EmuSpec {
        EmuSpec {
            ram: true,
            ..EmuSpec::null()
        }
    }

    /// The same with completions from the emulator's own thread (`:thread`).
    pub const fn thread(mut self, thread: bool) -> EmuSpec {
        self.thread = thread;
        self
    }

    /// The same with `lba_size`-byte blocks (`:512`).
    pub const fn lba_size(mut self, lba_size: u32) -> EmuSpec {
        self.lba_size = lba_size;
        self
    }

    /// The emulator configuration for this spec with a namespace of `bytes` (or the
    /// default size for its kind).
    pub fn config(&self, bytes: Option<u64>) -> EmuConfig {
        let bytes = bytes.unwrap_or(if self.ram {
            EMU_RAM_BYTES
        } else {
            EMU_NULL_BYTES
        });
        let blocks = (bytes / self.lba_size as u64).max(1);
        EmuConfig {
            namespaces: vec![if self.ram {
                NsConfig::ram(blocks, self.lba_size)
            } else {
                NsConfig::null(blocks, self.lba_size)
            }],
            mode: if self.thread {
                Mode::Thread
            } else {
                Mode::Inline
            },
            ..EmuConfig::default()
        }
    }
}

impl std::fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceSpec::Pci(bdf) => f.write_str(bdf),
            DeviceSpec::Emu(e) => {
                f.write_str(if e.ram { "emu:ram" } else { "emu" })?;
                if e.thread {
                    f.write_str(":thread")?;
                }
                if e.lba_size != 4096 {
                    write!(f, ":{}", e.lba_size)?;
                }
                Ok(())
            }
        }
    }
}

/// A device string that names nothing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeviceSpecError {
    /// An `emu` string with a part that is not `null`, `ram`, `thread` or `512`.
    #[error(
        "unknown emulated device {given:?} (at {part:?}): use emu (null namespace), emu:ram (RAM \
         namespace), optionally followed by :thread and/or :512"
    )]
    Emu {
        /// The whole string.
        given: String,
        /// The part not understood.
        part: String,
    },
    /// Neither `emu...` nor a PCI address.
    #[error(
        "unknown device {given:?}: expected emu, emu:ram or a PCI address such as 0000:01:00.0"
    )]
    Unknown {
        /// The string.
        given: String,
        /// Why it is not a PCI address.
        #[source]
        source: nvme_dio_dma::Error,
    },
}

impl std::str::FromStr for DeviceSpec {
    type Err = DeviceSpecError;

    fn from_str(s: &str) -> Result<DeviceSpec, DeviceSpecError> {
        let mut parts = s.split(':');
        if parts.next() == Some("emu") {
            let mut spec = EmuSpec::null();
            for (i, part) in parts.enumerate() {
                match part {
                    "null" if i == 0 => spec.ram = false,
                    "ram" if i == 0 => spec.ram = true,
                    "thread" => spec.thread = true,
                    "512" => spec.lba_size = 512,
                    "4k" | "4096" => spec.lba_size = 4096,
                    _ => {
                        return Err(DeviceSpecError::Emu {
                            given: s.to_string(),
                            part: part.to_string(),
                        });
                    }
                }
            }
            return Ok(DeviceSpec::Emu(spec));
        }
        nvme_dio_dma::parse_bdf(s)
            .map(DeviceSpec::Pci)
            .map_err(|source| DeviceSpecError::Unknown {
                given: s.to_string(),
                source,
            })
    }
}

/// The emulated controller or a vfio-pci bound PCI function, behind one [`PciFunction`].
#[derive(Debug)]
#[non_exhaustive]
pub enum Device {
    /// `nvme-dio-emu`.
    Emu(EmuFunction),
    /// A vfio-pci bound NVMe function.
    Vfio(VfioFunction),
}

/// Opening a device failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The string names no device.
    #[error(transparent)]
    Spec(#[from] DeviceSpecError),
    /// The emulated controller could not be built.
    #[error("the emulated controller could not be built")]
    Emu(#[source] nvme_dio_emu::EmuError),
    /// The PCI function could not be opened through VFIO.
    #[error("opening the PCI function failed")]
    Vfio(#[source] nvme_dio_dma::Error),
    /// The controller did not come up.
    #[error("the controller did not come up")]
    Driver(#[source] crate::Error),
}

impl Device {
    /// Opens the device `spec` names; an emulated namespace gets `emu_bytes` (or its
    /// default size).
    ///
    /// # Errors
    ///
    /// [`OpenError`] naming what failed.
    pub fn open(spec: &DeviceSpec, emu_bytes: Option<u64>) -> Result<Device, OpenError> {
        match spec {
            DeviceSpec::Emu(e) => EmuFunction::new(e.config(emu_bytes))
                .map(Device::Emu)
                .map_err(OpenError::Emu),
            DeviceSpec::Pci(bdf) => VfioFunction::open(bdf)
                .map(Device::Vfio)
                .map_err(OpenError::Vfio),
        }
    }

    /// Controller options that suit this device: the emulator needs no IOMMU pinning, so it
    /// takes ordinary pages when no hugepages are reserved; a real device gets the defaults
    /// (hugepages).
    pub fn default_options(&self) -> ControllerOptions {
        match self {
            Device::Emu(_) => {
                ControllerOptions::default().memory(MemoryOptions::any_pages(32 << 20))
            }
            Device::Vfio(_) => ControllerOptions::default(),
        }
    }

    /// The emulated controller, if this is one (for fault injection in tests).
    pub fn as_emu(&self) -> Option<&EmuFunction> {
        match self {
            Device::Emu(f) => Some(f),
            Device::Vfio(_) => None,
        }
    }
}

impl Controller<Device> {
    /// Opens the device a string names and brings its controller up with the options that
    /// suit it ([`Device::default_options`]), changed by `adjust`.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let ctrl = nvme_dio::Controller::open("emu:ram", |_| {})?;
    /// assert_eq!(ctrl.namespace(1)?.lba_size(), 4096);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`OpenError`] naming what failed.
    pub fn open(
        spec: &str,
        adjust: impl FnOnce(&mut ControllerOptions),
    ) -> Result<Controller<Device>, OpenError> {
        let spec: DeviceSpec = spec.parse()?;
        let dev = Device::open(&spec, None)?;
        let mut opts = dev.default_options();
        adjust(&mut opts);
        Controller::new(Arc::new(dev), opts).map_err(OpenError::Driver)
    }
}

impl Bar0 for Device {
    #[inline]
    fn read32(&self, offset: usize) -> u32 {
        match self {
            Device::Emu(f) => f.bar0().read32(offset),
            Device::Vfio(f) => f.bar0().read32(offset),
        }
    }
    #[inline]
    fn write32(&self, offset: usize, value: u32) {
        match self {
            Device::Emu(f) => f.bar0().write32(offset, value),
            Device::Vfio(f) => f.bar0().write32(offset, value),
        }
    }
    #[inline]
    fn read64(&self, offset: usize) -> u64 {
        match self {
            Device::Emu(f) => f.bar0().read64(offset),
            Device::Vfio(f) => f.bar0().read64(offset),
        }
    }
    #[inline]
    fn write64(&self, offset: usize, value: u64) {
        match self {
            Device::Emu(f) => f.bar0().write64(offset, value),
            Device::Vfio(f) => f.bar0().write64(offset, value),
        }
    }
    fn len(&self) -> usize {
        match self {
            Device::Emu(f) => f.bar0().len(),
            Device::Vfio(f) => f.bar0().len(),
        }
    }
}

impl PciFunction for Device {
    type Bar = Device;

    fn bar0(&self) -> &Device {
        self
    }
    fn dma_mapper(&self) -> Arc<dyn DmaMapper> {
        match self {
            Device::Emu(f) => f.dma_mapper(),
            Device::Vfio(f) => f.dma_mapper(),
        }
    }
    fn msix_vectors(&self) -> u32 {
        match self {
            Device::Emu(f) => f.msix_vectors(),
            Device::Vfio(f) => f.msix_vectors(),
        }
    }
    fn enable_msix(&self, count: u32) -> Result<Vec<Arc<EventFd>>, nvme_dio_dma::Error> {
        match self {
            Device::Emu(f) => f.enable_msix(count),
            Device::Vfio(f) => f.enable_msix(count),
        }
    }
    fn disable_msix(&self) -> Result<(), nvme_dio_dma::Error> {
        match self {
            Device::Emu(f) => f.disable_msix(),
            Device::Vfio(f) => f.disable_msix(),
        }
    }
    fn removal_requested(&self) -> bool {
        match self {
            Device::Emu(f) => f.removal_requested(),
            Device::Vfio(f) => f.removal_requested(),
        }
    }
    fn reset(&self) -> Result<(), nvme_dio_dma::Error> {
        match self {
            Device::Emu(f) => f.reset(),
            Device::Vfio(f) => f.reset(),
        }
    }
    fn set_bus_master(&self, enable: bool) -> Result<(), nvme_dio_dma::Error> {
        match self {
            Device::Emu(f) => f.set_bus_master(enable),
            Device::Vfio(f) => f.set_bus_master(enable),
        }
    }
    fn describe(&self) -> String {
        match self {
            Device::Emu(f) => f.describe(),
            Device::Vfio(f) => f.describe(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn emu(ram: bool, thread: bool, lba_size: u32) -> DeviceSpec {
        DeviceSpec::Emu(EmuSpec {
            ram,
            thread,
            lba_size,
        })
    }

    #[test]
    fn device_strings_mean_one_thing() {
        let cases = [
            ("emu", emu(false, false, 4096)),
            ("emu:null", emu(false, false, 4096)),
            ("emu:ram", emu(true, false, 4096)),
            ("emu:ram:thread", emu(true, true, 4096)),
            ("emu:thread", emu(false, true, 4096)),
            ("emu:ram:512", emu(true, false, 512)),
            ("emu:ram:thread:512", emu(true, true, 512)),
            ("0000:00:04.0", DeviceSpec::Pci("0000:00:04.0".into())),
            ("01:00.0", DeviceSpec::Pci("0000:01:00.0".into())),
        ];
        for (s, want) in cases {
            assert_eq!(s.parse::<DeviceSpec>().unwrap(), want, "{s}");
            // Display gives a string that parses back to the same spec.
            assert_eq!(want.to_string().parse::<DeviceSpec>().unwrap(), want, "{s}");
        }
        for bad in ["emu:disk", "emu:thread:ram", "emu:", "04.0", "nvme0"] {
            let e = bad.parse::<DeviceSpec>().unwrap_err();
            assert!(e.to_string().contains("emu:ram"), "{bad}: {e}");
        }
    }
}
