//! # nvme-dio-fuzz: libFuzzer targets and the checks they run
//!
//! Three targets (in `fuzz_targets/`), each a thin `fuzz_target!` over a check function
//! here, so the checks can be unit tested and a crash input replayed from a plain test:
//!
//! - `plan_prp_sgl` ([`plan_check`]): arbitrary iovec sets and limits through the planner,
//!   the PRP/SGL builders and reference controller walkers ([`walk`], after QEMU).
//! - `identify_parse` ([`identify_check`]): arbitrary bytes as Identify pages, every
//!   accessor, the limits derived from them.
//! - `cqe_processing` ([`core_model`], then [`cqe`]): the queue-pair core driven directly
//!   through its model controller; then junk completion entries posted into a live queue
//!   pair's CQ on the emulated controller, between real completions, faults and resets.
//!
//! Run them with `ci/fuzz [seconds-per-target]`; the corpus lives in `fuzz/corpus/<target>`.

pub mod core_model;
pub mod cqe;
pub mod identify_check;
pub mod plan_check;
pub mod walk;

#[cfg(test)]
mod replay;
#[cfg(test)]
mod seeds;
