//! The device seam: "a PCIe function with a BAR0, a DMA mapper and interrupt eventfds".
//!
//! The driver is generic over [`PciFunction`], so every call below is monomorphised: on VFIO a
//! doorbell write is one volatile store into the mapped BAR, with no dynamic dispatch, no lock
//! and no syscall. The emulated controller (`nvme-dio-emu`) implements the same trait, and its
//! register writes are where it does its work.

use std::ops::Range;
use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;

use crate::Error;

/// BAR0 of an NVMe controller: 32- and 64-bit registers only.
///
/// NVMe leaves MMIO narrower than 32 bits undefined (QEMU ignores it), so no narrower
/// accessor exists. Offsets are byte offsets into BAR0 and must be naturally aligned.
pub trait Bar0: Send + Sync {
    /// Reads the 32-bit register at `offset`. All ones means the device is gone: callers turn
    /// that into an error, never into a value.
    fn read32(&self, offset: usize) -> u32;
    /// Writes the 32-bit register at `offset` (a doorbell, CC, AQA, INTMS...).
    fn write32(&self, offset: usize, value: u32);
    /// Reads the 64-bit register at `offset` (CAP, ASQ, ACQ).
    fn read64(&self, offset: usize) -> u64;
    /// Writes the 64-bit register at `offset` (ASQ, ACQ).
    fn write64(&self, offset: usize, value: u64);
    /// Length of BAR0 in bytes; accesses at or past it are refused.
    fn len(&self) -> usize;
    /// True if BAR0 has no bytes (never for a real controller).
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Maps host memory into the device's IOVA space (the IOMMU for VFIO, a translation table
/// for the emulated controller).
pub trait DmaMapper: Send + Sync {
    /// Makes `len` bytes at host address `host` visible to the device at `iova`.
    ///
    /// # Safety
    ///
    /// `host..host+len` must stay allocated, and must not be handed to anyone else, until
    /// [`DmaMapper::unmap`] for the same range returns: the device may read and write it at
    /// any time until then.
    unsafe fn map(&self, iova: u64, host: *mut u8, len: usize) -> Result<(), Error>;
    /// Removes a mapping made by [`DmaMapper::map`] (same `iova` and `len`).
    ///
    /// # Errors
    ///
    /// Fails if no such mapping exists.
    fn unmap(&self, iova: u64, len: usize) -> Result<(), Error>;
    /// IOVA ranges the device accepts (half-open), from VFIO_IOMMU_GET_INFO on VFIO.
    fn iova_ranges(&self) -> Vec<Range<u64>>;

    /// True if this mapper wants to be told which mapped bytes are free and which are in use
    /// ([`DmaMapper::range_freed`], [`DmaMapper::range_allocated`]). Asked once per region
    /// when [`crate::DmaMemory`] maps it; false by default (VFIO: a real IOMMU cannot use it),
    /// so the hooks cost nothing there. The emulated controller says true and flags any
    /// device write into free bytes: memory the driver has given back.
    fn tracks_allocations(&self) -> bool {
        false
    }

    /// `iova..iova+len` (mapped) was handed to an owner: a buffer or a pool block. Called
    /// after the allocator gave it out, only if [`DmaMapper::tracks_allocations`].
    fn range_allocated(&self, iova: u64, len: usize) {
        let _ = (iova, len);
    }

    /// `iova..iova+len` (mapped) is free: a region was just mapped (all of it), or a buffer
    /// or pool block is going back to its allocator (called before it can be handed out
    /// again). A device write there from now on is a driver bug. Only called if
    /// [`DmaMapper::tracks_allocations`]; buffers leaked or held in quarantine are never
    /// reported free.
    fn range_freed(&self, iova: u64, len: usize) {
        let _ = (iova, len);
    }
}

/// A PCIe function the NVMe driver can own: BAR0, DMA, MSI-X and reset.
pub trait PciFunction: Send + Sync + 'static {
    /// The BAR0 accessor; the driver keeps it inline in its hot structures.
    type Bar: Bar0;
    /// BAR0 of the function (memory space and bus mastering already enabled).
    fn bar0(&self) -> &Self::Bar;
    /// The function's DMA mapper, shared with the memory regions that map through it.
    fn dma_mapper(&self) -> Arc<dyn DmaMapper>;
    /// Number of MSI-X vectors the function offers (0 if none).
    fn msix_vectors(&self) -> u32;
    /// Enables MSI-X vectors `0..count`, one eventfd each, signalled by the device.
    ///
    /// # Errors
    ///
    /// Fails if `count` exceeds [`PciFunction::msix_vectors`] or the kernel refuses.
    fn enable_msix(&self, count: u32) -> Result<Vec<Arc<EventFd>>, Error>;
    /// Disables MSI-X; the eventfds stop firing.
    ///
    /// # Errors
    ///
    /// Fails if the kernel refuses.
    fn disable_msix(&self) -> Result<(), Error>;
    /// True once the system asked for the device back (hot unplug, unbind): the owner must
    /// stop using it and release it. Checked off the I/O path (a syscall on VFIO).
    fn removal_requested(&self) -> bool {
        false
    }
    /// Sets (`true`) or clears (`false`) Bus Master Enable in the function's PCI command
    /// register, checked by reading it back. While it is clear the function can issue no
    /// memory requests: no DMA at all, whatever the controller thinks it is doing. Clearing
    /// it is the proof [`crate::DmaStopped::BusMasterCleared`] (Linux clears it before it
    /// cancels requests of a dead controller).
    ///
    /// # Errors
    ///
    /// [`Error::BusMasterUnsupported`] by default (a function that cannot do it); the
    /// config-space error (or [`Error::DeviceGone`]) on VFIO.
    fn set_bus_master(&self, enable: bool) -> Result<(), Error> {
        let _ = enable;
        Err(Error::BusMasterUnsupported {
            function: self.describe(),
        })
    }
    /// A function-level reset (VFIO_DEVICE_RESET), used when the controller is wedged.
    ///
    /// # Errors
    ///
    /// Fails if the function cannot be reset.
    fn reset(&self) -> Result<(), Error>;
    /// Human-readable identity for messages ("0000:01:00.0 (vfio)", "emu").
    fn describe(&self) -> String;
}
