//! # nvme-dio: a userspace NVMe driver
//!
//! nvme-dio drives a PCIe NVMe controller from user space: it brings the controller up
//! itself (admin queue, Identify, namespaces, I/O queue pairs) and moves data between the
//! device and DMA buffers the caller owns, without the kernel on the I/O path.
//!
//! ## Model
//!
//! - A [`Controller`] is brought up once over a device ([`nvme_dio_dma::PciFunction`]: VFIO
//!   for real hardware, `nvme-dio-emu` for tests). It is cheap to clone and can be shared
//!   across threads.
//! - Each thread creates its own [`IoQueuePair`]: `Send`, not `Sync`, no locks on the I/O
//!   path. Buffers come from the controller's [`nvme_dio_dma::DmaMemory`] (hugepages mapped
//!   into the IOMMU once).
//! - A read or write takes one buffer or an iovec set. The planner (in `nvme-dio-queue`)
//!   turns it into ONE command when it fits the controller's limits (the fast path: no
//!   allocation, no child bookkeeping), or several; a split request completes once, after its
//!   last part, with the first error if any part failed.
//! - Submissions are batched: the doorbell is written once per [`IoQueuePair::ring`] /
//!   [`IoQueuePair::poll`]. Completions are reaped by polling or, per queue pair, by waiting
//!   on its MSI-X eventfd ([`CompletionMode`]), and handed out as [`Completion`]s carrying
//!   the caller's tag, the result and the buffers.
//!
//! - Many queue pairs (on one or several controllers) can be driven by one thread as a
//!   [`PollGroup`], with one wait over all of them and hybrid completion (spin while I/O
//!   flows, sleep on one epoll over the MSI-X eventfds when idle).
//! - A long-running service also hears from the device: [`Controller::poll_events`]
//!   (Asynchronous Event Requests kept outstanding; health warnings, namespace changes with
//!   the list refreshed), the SMART / Health, Error and Firmware logs as typed structures,
//!   Get/Set Features, interrupt coalescing ([`ControllerOptions::coalescing`]), and a
//!   [`DeviceWatcher`] for controllers bound to vfio-pci after start or gone while idle.
//!
//! The data path, file by file: `submit.rs` (the [`Io`] request, plan, data pointer, entry
//! into the SQ slot) -> `ring.rs` (doorbell without a lock, CQ slot, phase) -> `qpair.rs`
//! (CQEs fed to the core, deadlines, resets) -> `completion.rs` ([`Completion`]). Every
//! decision on the way is made by the pure queue-pair core,
//! `nvme_dio_queue::queue_pair`. Bring-up lives in `controller.rs`, the admin queue in
//! `admin.rs`.
//!
//! ## Embedding: what the library does to its host process
//!
//! - **No threads.** Every call runs on the caller's thread: submission, polling, waits,
//!   deadlines (checked when the caller polls or waits), resets and removal handling. The
//!   only thread in the workspace is the emulated controller's own in
//!   `nvme_dio_emu::Mode::Thread`, a test device.
//! - **No signal handlers**, no change to the signal mask, no `atexit`.
//! - **No CPU affinity or scheduling changes**: pin your threads as you like (the CLI pins
//!   its worker threads itself; the library never does).
//! - **What it does take**: the VFIO device and container file descriptors, one eventfd per
//!   MSI-X vector, hugepage (or ordinary, locked) mappings for its own DMA memory, capped by
//!   [`MemoryOptions::budget`], and the memory you register ([`DmaMemory::register`]).
//!
//! `tests/tests/embedding.rs` checks the first three from `/proc/self/status` around a
//! controller's whole life.

//!
//! ## Quick start: bring-up, one write, one read
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use nvme_dio::{Controller, ControllerOptions, Lba, MemoryOptions, QueuePairOptions};
//! use nvme_dio_emu::{EmuConfig, EmuFunction};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // Real hardware: Arc::new(nvme_dio_dma::VfioFunction::open("0000:01:00.0")?)
//! let dev = Arc::new(EmuFunction::new(EmuConfig::default())?);
//! // No hugepages reserved? Allow ordinary pages (fine for the emulator).
//! let opts = ControllerOptions::default().memory(MemoryOptions::any_pages(8 << 20));
//! let ctrl = Controller::new(dev, opts)?; // Clone + Sync: share it across threads
//! let ns = ctrl.namespace(1)?.clone();
//! let mut qp = ctrl.create_io_qpair(QueuePairOptions::default())?; // one per thread
//!
//! let buf = ctrl.memory().alloc(4096, 4096)?;
//! buf.copy_from_slice(0, b"hello, nvme")?;
//! qp.write_fua(&ns, Lba(0), buf, 1).map_err(|r| r.error)?; // queued; no doorbell yet
//! let c = loop {
//!     qp.wait(Duration::from_secs(1))?; // rings the doorbell, then reaps
//!     if let Some(c) = qp.next_completion() {
//!         break c;
//!     }
//! };
//! c.result?; // durable: it was a FUA write
//! let buf = c.bufs.into_one().expect("the buffer comes back");
//! buf.fill(0);
//! qp.read(&ns, Lba(0), buf, 2).map_err(|r| r.error)?;
//! let c = loop {
//!     qp.wait(Duration::from_secs(1))?;
//!     if let Some(c) = qp.next_completion() {
//!         break c;
//!     }
//! };
//! c.result?;
//! let mut got = [0u8; 11];
//! c.bufs.into_one().expect("buffer").copy_to_slice(0, &mut got)?;
//! assert_eq!(&got, b"hello, nvme");
//! # Ok(())
//! # }
//! ```
//!
//!
//! More in `examples/` (a write-ahead log with group commit) and in the README's
//! "Embedding" section (async Rust, C).

#![forbid(unsafe_code)]
#![deny(missing_docs)]

// One I/O through the files, in order: io.rs (the request) -> submit.rs (plan -> the core claims a tracker
// -> data pointer -> entry into the SQ slot) -> ring.rs (doorbell, CQ slot, phase) ->
// qpair.rs (CQE fed to the core, ticks, resets) -> completion.rs (what the caller gets).
// The decisions are in nvme_dio_queue::queue_pair.
mod admin;
mod completion;
mod controller;
mod device;
pub mod error;
mod events;
mod future;
mod health;
mod hybrid;
mod io;
mod namespace;
mod options;
mod poll_group;
mod qpair;
mod recovery;
mod regio;
mod ring;
mod submit;
mod watcher;

pub use completion::{Bufs, Completion, Completions, QueueStats, Rejected, WithMetadata};
pub use controller::{Controller, ControllerInfo, ControllerOptions};
pub use device::{
    Device, DeviceSpec, DeviceSpecError, EMU_NULL_BYTES, EMU_RAM_BYTES, EmuSpec, OpenError,
};
pub use error::{Error, ErrorKind, Report, Stage};
pub use events::{AERS, AsyncEvent, ErrorEvent, Event, HealthEvent, NamespaceChanges};
pub use future::{AsyncQueuePair, InterruptFd, IoFailed, IoFuture};
pub use health::{
    COMMON_FEATURES, CriticalWarning, ErrorLogEntry, FirmwareSlotLog, LogError, SmartLog,
    decode_feature, feature_name,
};
pub use io::{Io, PiOptions, RwOptions};
pub use namespace::{AtomicLimits, CommandLimits, CopyLimits, Namespace, PreferredSizes};
/// The DMA layer's errors (inside [`Error::Dma`]).
pub use nvme_dio_dma::Error as DmaError;
pub use nvme_dio_dma::VfioFunction;
pub use nvme_dio_dma::{
    DmaBuf, DmaMemory, DmaPool, MemoryOptions, MmapMut, PageKind, PciFunction, Registration,
};
/// The NVMe spec types and command builders (for [`IoQueuePair::submit_raw`]).
pub use nvme_dio_queue as spec;
pub use nvme_dio_queue::pi::{MetadataFormat, PiFormat, PiTags, PiType, Prinfo, Protection};
pub use nvme_dio_queue::{Lba, Nsid, Status};
pub use options::Coalescing;
pub use poll_group::{
    AddRejected, GroupCounters, GroupMode, GroupStats, GroupWaker, MemberId, PollGroup,
};
pub use qpair::{
    CompletionMode, DEFAULT_HYBRID_SPIN, DEFAULT_RETRIES, IoQueuePair, QueuePairOptions,
};
pub use watcher::{DeviceEvent, DeviceWatcher};
