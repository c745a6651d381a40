//! # nvme-dio-queue: the pure submission core
//!
//! Everything between "an iovec set for a read or write" and "an entry in a submission queue
//! slot" that does not touch a device: the NVMe spec types, the typed command builders, PRP
//! and SGL building, and the planner that decides whether an iovec set goes out as ONE
//! command (the fast path: no allocation, no child bookkeeping) or must be split.
//!
//! The crate is pure (`#![forbid(unsafe_code)]`), so all of it is tested on any machine.

#![forbid(unsafe_code)]

pub mod entry;
pub mod opcode;
pub mod regs;
pub mod status;
pub mod types;

pub use entry::{Cqe, Sqe};
pub use status::Status;
pub use types::{Cid, Iova, Lba, Nsid, PageSize, Qid, QueueSize};
