//! One device type for both backends, so the C ABI has one controller type.
//!
//! The driver is generic over its device; C has no generics. [`AnyFunction`] is the emulated
//! controller or a VFIO function behind one `PciFunction`, and is its own BAR (one `match` per
//! register access, next to a doorbell write that costs far more).

use std::sync::Arc;

use nvme_dio::{ControllerOptions, MemoryOptions, PciFunction};
use nvme_dio_dma::{Bar0, DmaMapper, VfioFunction};
use nvme_dio_emu::{EmuConfig, EmuFunction, Mode, NsConfig};
use vmm_sys_util::eventfd::EventFd;

/// The emulated controller or a VFIO-bound PCI function.
#[derive(Debug)]
pub enum AnyFunction {
    /// `nvme-dio-emu`.
    Emu(EmuFunction),
    /// A vfio-pci bound NVMe function.
    Vfio(VfioFunction),
}

impl Bar0 for AnyFunction {
    #[inline]
    fn read32(&self, offset: usize) -> u32 {
        match self {
            AnyFunction::Emu(f) => f.bar0().read32(offset),
            AnyFunction::Vfio(f) => f.bar0().read32(offset),
        }
    }
    #[inline]
    fn write32(&self, offset: usize, value: u32) {
        match self {
            AnyFunction::Emu(f) => f.bar0().write32(offset, value),
            AnyFunction::Vfio(f) => f.bar0().write32(offset, value),
        }
    }
    #[inline]
    fn read64(&self, offset: usize) -> u64 {
        match self {
            AnyFunction::Emu(f) => f.bar0().read64(offset),
            AnyFunction::Vfio(f) => f.bar0().read64(offset),
        }
    }
    #[inline]
    fn write64(&self, offset: usize, value: u64) {
        match self {
            AnyFunction::Emu(f) => f.bar0().write64(offset, value),
            AnyFunction::Vfio(f) => f.bar0().write64(offset, value),
        }
    }
    fn len(&self) -> usize {
        match self {
            AnyFunction::Emu(f) => f.bar0().len(),
            AnyFunction::Vfio(f) => f.bar0().len(),
        }
    }
}

impl PciFunction for AnyFunction {
    type Bar = AnyFunction;

    fn bar0(&self) -> &AnyFunction {
        self
    }
    fn dma_mapper(&self) -> Arc<dyn DmaMapper> {
        match self {
            AnyFunction::Emu(f) => f.dma_mapper(),
            AnyFunction::Vfio(f) => f.dma_mapper(),
        }
    }
    fn msix_vectors(&self) -> u32 {
        match self {
            AnyFunction::Emu(f) => f.msix_vectors(),
            AnyFunction::Vfio(f) => f.msix_vectors(),
        }
    }
    fn enable_msix(&self, count: u32) -> Result<Vec<Arc<EventFd>>, nvme_dio_dma::Error> {
        match self {
            AnyFunction::Emu(f) => f.enable_msix(count),
            AnyFunction::Vfio(f) => f.enable_msix(count),
        }
    }
    fn disable_msix(&self) -> Result<(), nvme_dio_dma::Error> {
        match self {
            AnyFunction::Emu(f) => f.disable_msix(),
            AnyFunction::Vfio(f) => f.disable_msix(),
        }
    }
    fn removal_requested(&self) -> bool {
        match self {
            AnyFunction::Emu(f) => f.removal_requested(),
            AnyFunction::Vfio(f) => f.removal_requested(),
        }
    }
    fn reset(&self) -> Result<(), nvme_dio_dma::Error> {
        match self {
            AnyFunction::Emu(f) => f.reset(),
            AnyFunction::Vfio(f) => f.reset(),
        }
    }
    fn describe(&self) -> String {
        match self {
            AnyFunction::Emu(f) => f.describe(),
            AnyFunction::Vfio(f) => f.describe(),
        }
    }
}

/// What `nvd_open` was asked for.
#[derive(Debug, PartialEq, Eq)]
pub enum Target {
    /// The emulated controller: RAM or null namespace, inline or thread mode.
    Emu {
        /// Keep data (RAM) or drop it (null).
        ram: bool,
        /// Complete on a background thread, like hardware.
        thread: bool,
    },
    /// A PCI address in `DDDD:BB:DD.F` form.
    Pci(String),
}

/// Parses a device string: `emu`, `emu:ram`, `emu:null`, `emu:thread` (RAM, completed on its
/// own thread), or a PCI address.
pub fn parse_target(s: &str) -> Result<Target, String> {
    match s {
        "emu" | "emu:ram" => Ok(Target::Emu {
            ram: true,
            thread: false,
        }),
        "emu:null" => Ok(Target::Emu {
            ram: false,
            thread: false,
        }),
        "emu:thread" => Ok(Target::Emu {
            ram: true,
            thread: true,
        }),
        other if other.starts_with("emu") => Err(format!(
            "unknown emulated device {other:?}: use emu, emu:ram, emu:null or emu:thread"
        )),
        bdf => nvme_dio_dma::parse_bdf(bdf)
            .map(Target::Pci)
            .map_err(|e| e.to_string()),
    }
}

/// Blocks of the emulated RAM namespace (4 KiB each: 64 MiB).
pub(crate) const EMU_RAM_BLOCKS: u64 = 16 * 1024;
/// Blocks of the emulated null namespace (4 KiB each: 1 GiB).
pub(crate) const EMU_NULL_BLOCKS: u64 = 256 * 1024;

/// Opens the device and chooses the controller options for it.
pub fn open(target: &Target) -> Result<(Arc<AnyFunction>, ControllerOptions), String> {
    match target {
        Target::Emu { ram, thread } => {
            let ns = if *ram {
                NsConfig::ram(EMU_RAM_BLOCKS, 4096)
            } else {
                NsConfig::null(EMU_NULL_BLOCKS, 4096)
            };
            let cfg = EmuConfig {
                mode: if *thread { Mode::Thread } else { Mode::Inline },
                namespaces: vec![ns],
                ..EmuConfig::default()
            };
            let f = EmuFunction::new(cfg).map_err(|e| e.to_string())?;
            // The emulator needs no IOMMU pinning: ordinary pages are fine without hugepages.
            let opts = ControllerOptions {
                memory: MemoryOptions::any_pages(8 << 20),
                ..ControllerOptions::default()
            };
            Ok((Arc::new(AnyFunction::Emu(f)), opts))
        }
        Target::Pci(bdf) => {
            let f = VfioFunction::open(bdf).map_err(|e| e.to_string())?;
            Ok((Arc::new(AnyFunction::Vfio(f)), ControllerOptions::default()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_strings() {
        assert_eq!(
            parse_target("emu"),
            Ok(Target::Emu {
                ram: true,
                thread: false
            })
        );
        assert_eq!(
            parse_target("emu:null"),
            Ok(Target::Emu {
                ram: false,
                thread: false
            })
        );
        assert!(parse_target("emu:disk").unwrap_err().contains("emu:ram"));
        assert_eq!(
            parse_target("0000:00:04.0"),
            Ok(Target::Pci("0000:00:04.0".into()))
        );
        assert!(parse_target("04.0").is_err());
    }
}
