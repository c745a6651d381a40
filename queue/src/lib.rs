//! # nvme-dio-queue: the pure submission core
//!
//! Everything between "an iovec set for a read or write" and "an entry in a submission queue
//! slot" that does not touch a device: the NVMe spec types, the typed command builders, PRP
//! and SGL building, and the planner that decides whether an iovec set goes out as ONE
//! command (the fast path: no allocation, no child bookkeeping) or must be split.
//!
//! ## The model
//!
//! One I/O flows through the modules in this order:
//!
//! 1. [`plan::plan`] takes the caller's [`Segment`]s (device addresses and lengths), the
//!    starting [`Lba`] and the namespace's [`Limits`] (block size, page size, max transfer,
//!    NOIOB, size, SGL support) and returns a [`Plan`]: [`Plan::One`] when everything fits
//!    one command (no allocation), or [`Plan::Split`] with children cut at NOIOB boundaries,
//!    at the max transfer, at 65 536 blocks and where the segments break the PRP page rule.
//!    Each child names its bytes as a [`SegRange`] into the caller's slice.
//! 2. [`prp::build_range`] (or [`sgl::build_range`] for a child marked `sgl`) turns a range
//!    into a [`Dptr`], writing any PRP list / SGL descriptor list into pages the caller
//!    provides through [`PrpListPages`] (the driver: the tracker's list page; tests: a Vec).
//! 3. A typed builder from [`cmd`] ([`cmd::Read`], [`cmd::Write`], ...) turns the command
//!    and its `Dptr` into an [`Sqe`]. The queue sets the CID when it places it in a slot.
//! 4. The completion comes back as a [`Cqe`] whose [`Status`] says what happened.
//!
//! Admin commands use the same builders; their data ([`identify`] pages) is parsed here too,
//! and the emulated controller builds those pages with the same offsets.
//!
//! The crate is pure (`#![forbid(unsafe_code)]`), so all of it is tested on any machine:
//! table tests against the spec's layouts, and property tests that walk the produced PRPs and
//! SGLs the way QEMU's controller does.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod cmd;
pub mod entry;
pub mod event;
pub mod identify;
pub mod log;
pub mod opcode;
pub mod pi;
pub mod plan;
pub mod prp;
pub mod queue_pair;
pub mod ranges;
pub mod regs;
pub mod sgl;
pub mod status;
pub mod types;

pub use cmd::Dptr;
pub use entry::{Cqe, Sqe};
pub use identify::{
    ActiveNamespaceList, IdentifyController, IdentifyError, IdentifyNamespace,
    IdentifyNvmController, IdentifyNvmNamespace, LbaFormat, SglSupport,
};
pub use pi::{MetadataFormat, PiFormat, PiTags, PiType, Prinfo, Protection};
pub use plan::{Command, Limits, Plan, PlanError, SglLimits, SplitReason};
pub use prp::{PrpError, PrpListPages, SegRange, Segment};
pub use sgl::{SglError, SglListPages};
pub use status::Status;
pub use types::{Cid, Iova, Lba, Nsid, PageSize, Qid, QueueSize};
