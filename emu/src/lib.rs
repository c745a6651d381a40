//! # nvme-dio-emu: a software NVMe controller behind the device seam
//!
//! [`EmuFunction`] implements [`nvme_dio_dma::PciFunction`], the same seam the VFIO backend
//! implements, so the driver runs unchanged against it. It behaves like a strict NVMe Base
//! 2.0 controller with QEMU 7.2's defaults (CAP 0x004018200f0107ff, VS 1.4.0, MDTS 7,
//! 64 I/O queue pairs, 65 MSI-X vectors).
//!
//! ## The model
//!
//! * **BAR0** ([`EmuBar`]): CAP, VS, INTMS/INTMC, CC, CSTS, AQA, ASQ, ACQ and the doorbells at
//!   `0x1000 + n * (4 << CAP.DSTRD)`. CC.EN 0 -> 1 validates the configuration like QEMU's
//!   `nvme_start_ctrl` (MPS within MPSMIN..=MPSMAX, IOSQES 6, IOCQES 4, admin queue sizes,
//!   ASQ/ACQ page aligned; plus CSS and AMS) and sets CSTS.CFS if it is bad. CSTS.RDY follows
//!   CC.EN only after [`EmuConfig::ready_delay`], in both directions. CC.SHN sets
//!   CSTS.SHST to complete.
//! * **DMA**: [`PciFunction::dma_mapper`](nvme_dio_dma::PciFunction::dma_mapper) returns the emulator's IOMMU, a sorted table of
//!   `IOVA range -> host pointer`. The controller reaches host memory only through it; an
//!   unmapped IOVA in a data pointer is a Data Transfer Error (0/0x04), as an IOMMU fault would
//!   be; an unmapped queue entry is a controller fatal error (CSTS.CFS). The IOVA space is
//!   `[0x1000, 1 << 39)`, like QEMU's 39-bit vIOMMU.
//! * **Namespaces**: [`Backing::Ram`] stores data; [`Backing::Null`] stores nothing, but every
//!   PRP/SGL is still validated and every list walked.
//! * **Commands**: Identify (CNS 0, 1, 2), Set/Get Features (Number of Queues, Interrupt
//!   Coalescing, Volatile Write Cache), Create/Delete I/O CQ/SQ with QEMU's checks, Abort, Get
//!   Log Page (Error Information, SMART), Doorbell Buffer Config, Async Event Request (held,
//!   never completed); Read, Write, Flush, Write Zeroes, Dataset Management.
//! * **Completions** carry SQ head, SQ id, CID and phase. The controller never overruns a
//!   full CQ: completions wait until the head doorbell makes room. With MSI-X enabled
//!   ([`nvme_dio_dma::PciFunction::enable_msix`]) a CQ created with IEN signals its vector's
//!   eventfd after each batch of postings.
//! * **Undefined behaviour** the host commits (a doorbell for a missing queue or out of
//!   range, a doorbell before CSTS.RDY=1, MMIO at a misaligned, unknown or read-only offset,
//!   INTMS/INTMC with MSI-X on, registers changed while enabled, a CQ head past the posted
//!   entries) is ignored like QEMU does, but recorded: [`EmuFunction::ub_events`] is the
//!   host-side equivalent of QEMU's `pci_nvme_ub_*` trace, and tests assert it is empty.
//!   Controller-level failures (a rejected enable, a fatal error) go to
//!   [`EmuFunction::err_events`], like QEMU's `pci_nvme_err_*`.
//! * **Asynchronous events** (`events.rs`): AERs are held and completed by events
//!   ([`EmuFunction::raise_event`], [`EmuFunction::set_health`], namespace changes), masked
//!   per type until the host reads the log page; namespaces can be added, resized and
//!   removed at run time ([`EmuFunction::add_namespace`] and friends), with the Changed
//!   Namespace List, Firmware Slot, Error Information ([`EmuFunction::log_error`]) and
//!   SMART / Health ([`Health`]) log pages.
//! * **Faults** ([`Fault`], [`EmuFunction::inject`]): error status, dropped, delayed (by
//!   time or by a count of register accesses), duplicated or stale completions for the Nth
//!   I/O command or an opcode (a late Create I/O CQ is one); CSTS.CFS; surprise removal;
//!   transient all-ones reads; a disable that never completes (RDY stays 1); a device that
//!   keeps writing the data pages of the commands it holds after a failed disable; a
//!   controller that needs more than one reset; a flipped bit in stored data.
//!   [`EmuFunction::stats`] counts what happened.
//! * **Volatile write cache** ([`EmuConfig::vwc`], on by default): RAM namespaces keep
//!   what stable storage holds apart from what reads see; a Flush, FUA, or writing with the
//!   cache turned off makes a write durable, and [`EmuFunction::power_cut`] loses the rest.
//! * **The freed-write checker** ([`EmuConfig::check_freed_writes`], on by default): the
//!   mapper asks the host's `nvme_dio_dma::DmaMemory` to report which mapped bytes are free
//!   (regions mapped, buffers and pool blocks given back; held and leaked buffers never
//!   are), and every device write (data, CQE, EventIdx, late write) into free bytes is
//!   counted in [`EmuStats::freed_writes`] and described in
//!   [`EmuFunction::freed_write_events`]: memory the driver gave back while the device
//!   could still write it. A driver that keeps the quarantine rule causes none; tests
//!   assert it. Memory mapped by hand (not through `DmaMemory`) is never checked.
//!
//! ## Modes
//!
//! * [`Mode::Inline`] (default): deterministic. A doorbell write processes every new entry of
//!   that SQ (or posts held completions after a CQ head write) before `write32` returns;
//!   delayed completions are posted on a later register access once their time has passed.
//!   One lock per doorbell write, none per command; no allocation on the I/O path.
//! * [`Mode::Thread`]: doorbell writes only store the value (two atomics) and a background
//!   thread polls them, like hardware; it parks after a short idle spin and stops on drop.
//!   With shadow doorbells enabled it also polls the shadow buffer.
//!
//! ## Stricter than QEMU (a driver that passes here passes there, not the reverse)
//!
//! * PRP1 must be dword aligned (QEMU does not check): Invalid PRP Offset (0/0x13) DNR.
//!   We chose 0x13 over Invalid Field because the spec lists a bad PRP offset under it.
//! * A PRP list pointer (PRP2 when the transfer needs a list) must be quadword aligned:
//!   0/0x13 (QEMU accepts any offset).
//! * CSTS.RDY lags CC.EN by `ready_delay` (QEMU sets it synchronously), and doorbells before
//!   RDY=1 are ignored and recorded.
//! * Set Features Number of Queues after I/O queues exist fails with Command Sequence Error,
//!   and grants `min(requested, max_ioqpairs)` (QEMU always reports its maximum); queue IDs
//!   above the grant are Invalid Queue Identifier.
//! * CC.CSS and CC.AMS are checked at enable; a CQ head doorbell beyond the posted entries,
//!   and register writes while enabled, are recorded as ub.
//!
//! Not modelled: interrupt coalescing (accepted and reported, every batch interrupts),
//! per-vector MSI-X masking, end-to-end protection, controller memory buffer, namespaces
//! management, more than one LBA format per namespace.

mod admin;
pub mod config;
mod ctrl;
mod events;
pub mod fault;
mod function;
mod identify;
mod io;
mod mem;
mod meta;

#[cfg(test)]
mod tests;

pub use config::{
    Backing, CopyLimits, EmuConfig, Mode, NsAtomic, NsConfig, NsOptimal, NvmLimits, PiFormat,
    PiType, Protection,
};
pub use ctrl::EmuStats;
pub use events::{ErrorEntry, Health};
pub use fault::{Action, Fault, Target};
pub use function::{EmuBar, EmuFunction, EmuMapper};

/// Errors of the emulated controller.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EmuError {
    /// The configuration cannot be built.
    #[error("invalid emulator configuration: {what}; fix the EmuConfig field")]
    InvalidConfig {
        /// What is wrong.
        what: String,
    },
    /// The background thread of `Mode::Thread` could not be started.
    #[error(
        "cannot spawn the emulator thread ({source}); use Mode::Inline or raise the thread limit"
    )]
    Thread {
        /// The OS error.
        #[source]
        source: std::sync::Arc<std::io::Error>,
    },
    /// A block outside a RAM namespace was addressed.
    #[error(
        "namespace {nsid} has no stored block {lba} (no such namespace, not RAM-backed, or past its end)"
    )]
    NoSuchBlock {
        /// Namespace.
        nsid: u32,
        /// Block.
        lba: u64,
    },
}
