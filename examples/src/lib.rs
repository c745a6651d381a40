//! # nvme-dio-examples: what an embedding engine writes
//!
//! - [`wal`]: a write-ahead log with group commit. Writer threads append records over a
//!   channel; one I/O thread batches them into block-aligned FUA (or write + flush) writes
//!   and acknowledges each record when its batch is durable, in LSN order; [`wal::recover`]
//!   reads the log back. The `wal` example (`examples/wal.rs`) drives it from the command
//!   line, on the emulated controller or a PCI device, with a simulated crash.
//! - `c/wal.c`: the same idea over the C ABI (`nvme-dio-capi`), built by the tests crate.
//! - [`device`]: open `emu` or a PCI address, the way both examples take `--device`.

#![forbid(unsafe_code)]

pub mod device;
pub mod wal;
