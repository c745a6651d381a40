//! # nvme-dio-examples: what an embedding engine writes
//!
//! - [`wal`]: a write-ahead log with group commit. Writer threads append records over a
//!   channel; one I/O thread batches them into block-aligned FUA (or write + flush) writes
//!   and acknowledges each record when its batch is durable, in LSN order; [`wal::recover`]
//!   reads the log back. The `wal` example (`examples/wal.rs`) drives it from the command
//!   line, on the emulated controller or a PCI device, with a simulated crash.
//! - `c/wal.c`: the same idea over the C ABI (`nvme-dio-capi`), built and run by the tests
//!   crate (`tests/tests/capi_c_example.rs`).
//!
//! The sections below are the driver's entry points in use; each is a doctest, so it
//! compiles and runs against the emulated controller on every `cargo test`.
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
//! ## Keeping a queue depth: submit many, ring once
//!
//! ```
//! # use std::sync::Arc;
//! # use nvme_dio::{Controller, ControllerOptions, Lba, MemoryOptions, QueuePairOptions};
//! # use nvme_dio_emu::{EmuConfig, EmuFunction};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dev = Arc::new(EmuFunction::new(EmuConfig::default())?);
//! # let opts = ControllerOptions::default().memory(MemoryOptions::any_pages(8 << 20));
//! # let ctrl = Controller::new(dev, opts)?;
//! # let ns = ctrl.namespace(1)?.clone();
//! let mut qp = ctrl.create_io_qpair(QueuePairOptions::default())?;
//! let mut free: Vec<_> =
//!     (0..32).map(|_| ctrl.memory().alloc(4096, 4096)).collect::<Result<_, _>>()?;
//! let (mut next, total, mut done) = (0u64, 1000u64, 0u64);
//! while done < total {
//!     while next < total && let Some(buf) = free.pop() {
//!         qp.read(&ns, Lba(next % ns.blocks()), buf, next).map_err(|r| r.error)?;
//!         next += 1;
//!     }
//!     for c in qp.completions() { // one doorbell for everything queued above
//!         c.result?;
//!         free.extend(c.bufs.into_one()); // the buffer goes back to the free list
//!         done += 1;
//!     }
//! }
//! assert!(qp.stats().sq_doorbells < total);
//! # Ok(())
//! # }
//! ```
//!
//! ## A VFIO device
//!
//! ```no_run
//! use std::sync::Arc;
//! use nvme_dio::{Controller, ControllerOptions};
//! use nvme_dio_dma::VfioFunction;
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dev = Arc::new(VfioFunction::open("0000:01:00.0")?); // bound to vfio-pci
//! let ctrl = Controller::new(dev, ControllerOptions::default())?; // hugepages reserved
//! println!("{}: {} namespace(s)", ctrl.info().model, ctrl.namespaces().len());
//! # Ok(())
//! # }
//! ```

#![forbid(unsafe_code)]

pub mod wal;
