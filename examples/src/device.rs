//! Opening the device an example runs on: the emulated controller by default, or a PCI
//! function bound to vfio-pci.

use std::sync::Arc;

use nvme_dio::{Controller, ControllerOptions, MemoryOptions};
use nvme_dio_dma::VfioFunction;
use nvme_dio_emu::{EmuConfig, EmuFunction, Mode, NsConfig};

/// A controller on either backend (the examples are generic over the device; this picks it).
#[derive(Debug)]
pub enum AnyController {
    /// The emulated controller.
    Emu(Controller<EmuFunction>),
    /// A VFIO device.
    Vfio(Controller<VfioFunction>),
}

/// Errors opening a device.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The emulated controller could not be built.
    #[error("emulated controller: {0}")]
    Emu(#[from] nvme_dio_emu::EmuError),
    /// The PCI device could not be opened.
    #[error("{0}")]
    Vfio(#[from] nvme_dio_dma::Error),
    /// Bring-up failed.
    #[error("{0}")]
    Driver(#[from] nvme_dio::Error),
}

/// Opens `emu` (a RAM namespace of `emu_blocks` 4 KiB blocks, completing on its own thread
/// like hardware), `emu:512` (the same with 512-byte blocks, QEMU's default format), or a
/// PCI address such as `0000:00:04.0`.
///
/// # Errors
///
/// [`OpenError`] naming what failed (a PCI error says how to bind the device or reserve
/// hugepages).
pub fn open(device: &str, emu_blocks: u64) -> Result<AnyController, OpenError> {
    let lba = match device {
        "emu" => Some(4096),
        "emu:512" => Some(512),
        _ => None,
    };
    if let Some(lba) = lba {
        let dev = EmuFunction::new(EmuConfig {
            mode: Mode::Thread,
            namespaces: vec![NsConfig::ram(emu_blocks, lba)],
            ..EmuConfig::default()
        })?;
        let opts = ControllerOptions {
            // No IOMMU to pin for: ordinary pages do when no hugepages are reserved.
            memory: MemoryOptions::any_pages(8 << 20),
            ..ControllerOptions::default()
        };
        return Ok(AnyController::Emu(Controller::new(Arc::new(dev), opts)?));
    }
    let dev = VfioFunction::open(device)?;
    Ok(AnyController::Vfio(Controller::new(
        Arc::new(dev),
        ControllerOptions::default(),
    )?))
}
