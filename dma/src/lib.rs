//! # nvme-dio-dma: the unsafe floor
//!
//! Everything in nvme-dio that touches raw memory or the kernel's VFIO interface lives here;
//! the crates above (`queue`, `driver`, `cli`) forbid `unsafe`.
//!
//! ## The model
//!
//! * A **PCIe function** ([`PciFunction`], [`device`]) offers BAR0 (32/64-bit volatile
//!   registers), a [`DmaMapper`] (the IOMMU), MSI-X eventfds and reset. [`VfioFunction`]
//!   implements it over vfio-pci; the emulated controller (`nvme-dio-emu`) implements the same
//!   seam in software.
//! * **DMA memory** ([`DmaMemory`]) is a set of *regions*: hugepage mappings (2 MiB pages,
//!   1 GiB on request; ordinary pinned pages only if the caller allows the fallback), each
//!   populated up front and mapped into the IOMMU **once**, at an IOVA from the container's
//!   [`IovaAllocator`] (inside the ranges the IOMMU accepts, never below 1 MiB). A region is
//!   unmapped when the [`DmaMemory`] and the last buffer in it are gone (a region dedicated to
//!   one large buffer: when that buffer is dropped). Buffers ([`DmaBuf`]) are carved out of
//!   regions; a [`DmaPool`] holds fixed-size blocks with lock-free allocate/free.
//!
//! ## Device-memory rules
//!
//! Memory the device can DMA into may change under the CPU at any moment, so:
//!
//! 1. **No `&T` or `&mut T` into device-visible memory, ever** — not even briefly. The
//!    compiler may assume referenced memory does not change; the device does not care. Only
//!    raw pointers are held.
//! 2. Ring slots and registers are accessed with **volatile** loads and stores of whole,
//!    naturally aligned words ([`DmaBuf::write_qwords`], [`DmaBuf::read_dwords`],
//!    [`Bar0::write32`]...). BAR0 has no accessor narrower than 32 bits.
//! 3. Data buffers are copied in and out through **bounds-checked** methods
//!    ([`DmaBuf::copy_from_slice`], [`DmaBuf::copy_to_slice`]); an out-of-range copy is an
//!    `Err`, never a silent truncation.
//! 4. Ordering between memory and MMIO lives in [`barrier`]: `wmb()` between writing an SQ
//!    entry and ringing the doorbell, `rmb()` between seeing a CQ phase bit and reading the
//!    entry.
//! 5. Memory stays mapped (and allocated) while any buffer in it exists; IOVAs are never
//!    reused while the device may still hold them.
//! 6. A register read of all ones means the device is gone: callers turn it into
//!    [`Error::DeviceGone`], never into a value.
//! 7. **The quarantine rule.** A buffer the device may still write (a command that never
//!    completed, a queue whose deletion was never confirmed, anything in flight when the
//!    controller failed) is never returned to an allocator or a caller until DMA is proven
//!    stopped. It goes into [`DmaMemory::quarantine`], where it is held and counted
//!    ([`DmaMemory::held_buffers`], [`DmaMemory::held_bytes`]), and comes out only through
//!    [`DmaMemory::release_quarantine`], which takes a [`DmaStopped`] proof: the controller
//!    disabled (CC.EN = 0 and CSTS.RDY read 0, not all ones), bus mastering cleared, a
//!    function reset done, or the IOMMU mapping removed. Without such a proof the buffer
//!    stays held, and if its [`DmaMemory`] goes first it is leaked
//!    ([`DmaBuf::leak_on_drop`]: allocated and mapped for the life of the process, a pool
//!    block with its whole pool). Every failure path (timeout, reset, removal, drop, dead
//!    controller) goes through this one place.
//!
//!    A mapper may watch the rule being kept: one whose [`DmaMapper::tracks_allocations`]
//!    is true is told which mapped bytes are free ([`DmaMapper::range_freed`],
//!    [`DmaMapper::range_allocated`]); the emulated controller flags every device write into
//!    free bytes.
//!
//! ## Errors
//!
//! One [`Error`] enum; every message says what to do (reserve hugepages, bind the device,
//! enable the IOMMU...).

#![deny(missing_docs)]
pub mod barrier;
pub mod clock;
pub mod device;
pub mod iova;
pub mod memory;
pub mod vfio;

pub use device::{Bar0, DmaMapper, PciFunction};
pub use iova::{IOVA_FLOOR, IovaAllocator, RangeSet};
/// The mapping type [`DmaMemory::register`] takes over (memmap2's).
pub use memmap2::MmapMut;
pub use memory::{
    DmaBuf, DmaMemory, DmaPool, DmaStopped, MemoryOptions, PageKind, QuarantineStats, Registration,
    SharedWords,
};
pub use vfio::{VfioBar, VfioFunction, VfioMapper, parse_bdf};

use std::io;

/// Errors of the dma layer. Each message says what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The PCI address is not `DDDD:BB:DD.F`.
    #[error(
        "bad PCI address {bdf:?}: expected domain:bus:device.function like 0000:01:00.0 (see `lspci -D`)"
    )]
    BadPciAddress {
        /// What was given.
        bdf: String,
    },
    /// No such device in sysfs.
    #[error("no PCI device {bdf} ({path} does not exist): check the address with `lspci -D`")]
    DeviceNotFound {
        /// PCI address.
        bdf: String,
        /// The sysfs path that was looked for.
        path: String,
    },
    /// The device has no IOMMU group: the IOMMU is off.
    #[error(
        "{bdf} has no IOMMU group (no iommu_group link in sysfs): the IOMMU is off; boot with intel_iommu=on (or amd_iommu=on) and enable VT-d/AMD-Vi in the firmware"
    )]
    NoIommu {
        /// PCI address.
        bdf: String,
    },
    /// The device is bound to another driver (or to none).
    #[error(
        "{bdf} is bound to {}, not vfio-pci: run `nvme-dio setup {bdf}` (it unbinds the device and binds it to vfio-pci)",
        driver.as_deref().unwrap_or("no driver")
    )]
    NotBoundToVfio {
        /// PCI address.
        bdf: String,
        /// The current driver, if any.
        driver: Option<String>,
    },
    /// Another device in the IOMMU group is bound to a host driver.
    #[error(
        "IOMMU group {group} is not viable: {device} in the same group is bound to {driver}; bind it to vfio-pci too (`nvme-dio setup {device}`) or unbind it"
    )]
    GroupNotViable {
        /// The IOMMU group number.
        group: u32,
        /// The offending device.
        device: String,
        /// Its driver.
        driver: String,
    },
    /// The VFIO character devices are missing.
    #[error("{path} is missing: load the VFIO modules (`modprobe vfio-pci`)")]
    VfioMissing {
        /// The missing path.
        path: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The device is already open elsewhere.
    #[error("{bdf} is busy: another process (or another VfioFunction) has it open")]
    DeviceBusy {
        /// PCI address.
        bdf: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A vfio-ioctls call failed.
    #[error("VFIO {op} failed on {bdf}")]
    Vfio {
        /// What was attempted.
        op: &'static str,
        /// PCI address (or "container").
        bdf: String,
        /// The VFIO error.
        #[source]
        source: vfio_ioctls::VfioError,
    },
    /// A system call failed.
    #[error("{op} failed")]
    Os {
        /// What was attempted.
        op: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Pinned memory would exceed RLIMIT_MEMLOCK.
    #[error(
        "RLIMIT_MEMLOCK is {current} bytes but {needed} are needed: raise it (`ulimit -l unlimited`, or LimitMEMLOCK= in the systemd unit) or run as root"
    )]
    MemlockTooLow {
        /// The current soft limit in bytes.
        current: u64,
        /// Bytes needed in total.
        needed: u64,
    },
    /// Not enough free hugepages.
    #[error(
        "not enough free {page} hugepages: need {needed}, {free} free of {total} reserved; reserve more with `{}` or `nvme-dio setup --hugepages {suggest}`",
        page.reserve_command(*suggest)
    )]
    NoHugepages {
        /// The page size asked for.
        page: PageKind,
        /// Pages needed for the region that failed.
        needed: u64,
        /// Pages free when it failed.
        free: u64,
        /// Pages reserved in total when it failed.
        total: u64,
        /// A total that would have been enough (`total + needed - free`).
        suggest: u64,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// mmap of DMA memory failed for another reason.
    #[error("mapping {len} bytes of DMA memory failed")]
    Mmap {
        /// Bytes asked for.
        len: usize,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A register read all ones, or the device fd reports it gone.
    #[error("device {bdf} is gone (register read all ones or removed): reset or re-attach it")]
    DeviceGone {
        /// PCI address.
        bdf: String,
    },
    /// A config-space write did not stick.
    #[error(
        "PCI config write to {bdf} at {offset:#x} did not stick: wrote {wrote:#x}, read back {read:#x}"
    )]
    ConfigWrite {
        /// PCI address.
        bdf: String,
        /// Config-space offset.
        offset: u64,
        /// Value written.
        wrote: u32,
        /// Value read back.
        read: u32,
    },
    /// BAR0 is unusable (absent, too small or not mmappable).
    #[error("BAR0 of {bdf} is unusable: {reason}")]
    Bar {
        /// PCI address.
        bdf: String,
        /// Why.
        reason: String,
    },
    /// More MSI-X vectors asked for than the function has.
    #[error("{requested} MSI-X vectors requested but {bdf} offers {available}")]
    MsixVectors {
        /// PCI address.
        bdf: String,
        /// Vectors asked for.
        requested: u32,
        /// Vectors available.
        available: u32,
    },
    /// The function cannot have its Bus Master Enable bit changed.
    #[error(
        "{function} cannot set or clear Bus Master Enable: stop DMA another way (disable the controller, reset the function, or unmap its memory)"
    )]
    BusMasterUnsupported {
        /// The function, as [`PciFunction::describe`] names it.
        function: String,
    },
    /// The function cannot be reset.
    #[error("{bdf} does not support reset (no VFIO_DEVICE_FLAGS_RESET)")]
    ResetUnsupported {
        /// PCI address.
        bdf: String,
    },
    /// The IOVA space is exhausted.
    #[error(
        "no IOVA space left for {len} bytes aligned to {align} (ranges {ranges}): free buffers or use fewer, larger regions"
    )]
    OutOfIova {
        /// Bytes asked for.
        len: u64,
        /// Alignment asked for.
        align: u64,
        /// The ranges managed, for the message.
        ranges: String,
    },
    /// An IOVA range was freed twice or was never allocated.
    #[error("IOVA range {iova:#x}+{len:#x} is not allocated (double free or foreign range)")]
    IovaFree {
        /// Start.
        iova: u64,
        /// Length.
        len: u64,
    },
    /// An access outside a buffer's view.
    #[error(
        "access at offset {offset} of {len} bytes is outside the buffer ({size} bytes visible)"
    )]
    OutOfBounds {
        /// Offset of the access.
        offset: usize,
        /// Length of the access.
        len: usize,
        /// Bytes visible.
        size: usize,
    },
    /// A bad argument (zero length, alignment not a power of two...).
    #[error("invalid argument: {what}")]
    InvalidArgument {
        /// What was wrong.
        what: String,
    },
    /// [`MemoryOptions::budget`] would be exceeded by a new region.
    #[error(
        "the DMA memory budget of {budget} bytes would be exceeded: {mapped} mapped, a new region needs {needed}; raise MemoryOptions::budget, free buffers, or register your own memory (DmaMemory::register)"
    )]
    BudgetExceeded {
        /// The budget.
        budget: usize,
        /// Bytes mapped now.
        mapped: usize,
        /// Bytes the new region needs.
        needed: usize,
    },
    /// Memory to register does not start and end on a 4 KiB boundary.
    #[error(
        "memory to register must start and end on a 4 KiB page boundary (address {addr:#x}, {len} bytes): register whole pages of an mmap'ed area"
    )]
    RegisterUnaligned {
        /// Start address.
        addr: usize,
        /// Length in bytes.
        len: usize,
    },
    /// Memory to register overlaps memory already registered.
    #[error(
        "memory at {addr:#x} ({len} bytes) overlaps memory already registered at {other_addr:#x} ({other_len} bytes): register each area once"
    )]
    RegisterOverlaps {
        /// Start address.
        addr: usize,
        /// Length in bytes.
        len: usize,
        /// The registration it overlaps.
        other_addr: usize,
        /// Its length.
        other_len: usize,
    },
    /// A registration still has buffers: it cannot be unregistered yet.
    #[error(
        "registered memory at {addr:#x} still has {buffers} buffer(s) (held by you, in flight, or held because the device may still write them): complete and drop them, then unregister"
    )]
    RegistrationBusy {
        /// Start address.
        addr: usize,
        /// Buffers still alive.
        buffers: usize,
    },
    /// The IOMMU refused another mapping (VFIO's per-container mapping limit).
    #[error(
        "the IOMMU refused another DMA mapping of {len} bytes: vfio_iommu_type1 allows dma_entry_limit mappings per container (65535 by default, /sys/module/vfio_iommu_type1/parameters/dma_entry_limit); register fewer, larger areas"
    )]
    TooManyMappings {
        /// Bytes of the mapping refused.
        len: usize,
    },
    /// A DMA mapping conflicts with an existing one (or does not exist on unmap).
    #[error("DMA {op} of IOVA {iova:#x}+{len:#x} refused: {reason}")]
    Mapping {
        /// "map" or "unmap".
        op: &'static str,
        /// IOVA.
        iova: u64,
        /// Length.
        len: usize,
        /// Why.
        reason: String,
    },
}

impl Error {
    pub(crate) fn os(op: &'static str, source: io::Error) -> Self {
        Error::Os { op, source }
    }
}
