//! Split requests: a parent that owns the caller's buffers and segment list, and the
//! children the planner cut it into.
//!
//! Ordering: children go out in order, and nothing submitted after a split overtakes it
//! while it still waits for slots (the core refuses new requests until the split's last
//! child is in the ring). A parent completes once, when its last child does, with the first
//! failure any child had; after a failure no further child is submitted.

use std::collections::VecDeque;

use crate::pi::{PiTags, Prinfo};
use crate::{Command, Lba, Nsid, Segment};

use super::Outcome;

/// How to build each child of a split read or write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SplitOp {
    /// Write (true) or read (false).
    pub write: bool,
    /// Force Unit Access on every child (writes and reads alike, as the parent asked).
    pub fua: bool,
    /// The namespace.
    pub nsid: Nsid,
    /// Metadata and protection information, carried into each child.
    pub meta: SplitMeta,
    /// The command each child is.
    pub kind: SplitKind,
}

/// The command the children of a split are. For [`SplitKind::Deallocate`] and
/// [`SplitKind::Copy`] a child's `nlb` is its number of ranges and its bytes are its range
/// list (for Copy its `slba` is the destination); Verify and Write Zeroes children have no
/// data.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SplitKind {
    /// Read or Write (per [`SplitOp::write`]).
    #[default]
    Rw,
    /// Verify.
    Verify,
    /// Write Zeroes.
    WriteZeroes,
    /// Dataset Management, deallocate.
    Deallocate,
    /// Copy (format 0 source ranges).
    Copy,
}

impl SplitKind {
    /// True if each child has a data pointer.
    pub fn has_data(self) -> bool {
        !matches!(self, SplitKind::Verify | SplitKind::WriteZeroes)
    }
}

/// What each child of a split read or write carries besides its data: its slice of the
/// separate metadata buffer (the pointer moves with the child's first block) and its PI
/// fields (the initial reference tag moves with it for types 1 and 2).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SplitMeta {
    /// The parent's first block.
    pub slba: Lba,
    /// MPTR of the parent's first block, 0 = no separate metadata.
    pub mptr: u64,
    /// Metadata bytes per block.
    pub ms: u16,
    /// PRINFO of every child.
    pub prinfo: Prinfo,
    /// The parent's tags (its first block's reference tag).
    pub tags: PiTags,
    /// The reference tag counts up per block (PI types 1 and 2).
    pub ref_increments: bool,
    /// Mask of the reference tag (32 or 48 bits).
    pub ref_mask: u64,
}

impl SplitMeta {
    /// The child's MPTR and tags for a child starting at `slba`.
    pub fn for_child(&self, slba: Lba) -> (u64, PiTags) {
        let off = slba.0.wrapping_sub(self.slba.0);
        let mptr = if self.mptr == 0 {
            0
        } else {
            self.mptr + off * self.ms as u64
        };
        let mut tags = self.tags;
        if self.ref_increments {
            tags.reftag = tags.reftag.wrapping_add(off) & self.ref_mask;
        }
        (mptr, tags)
    }
}

/// A request that goes out as several commands.
#[derive(Debug)]
pub(crate) struct Parent<B> {
    pub(crate) tag: u64,
    pub(crate) op: SplitOp,
    pub(crate) bufs: B,
    pub(crate) segs: Vec<Segment>,
    pub(crate) children: Vec<Command>,
    /// Children placed so far.
    pub(crate) next: usize,
    /// Children placed and not yet completed.
    pub(crate) in_flight: u32,
    /// The first failure of any child.
    pub(crate) failure: Option<Outcome>,
}

impl<B> Parent<B> {
    /// True when nothing of it is with the controller and nothing more will be sent.
    pub(crate) fn is_done(&self) -> bool {
        self.in_flight == 0 && (self.next == self.children.len() || self.failure.is_some())
    }
}

/// The parents of one queue pair: a slab (indices are stable while a parent lives) and the
/// queue of those still waiting to place children, oldest first.
#[derive(Debug)]
pub(crate) struct Splits<B> {
    slots: Vec<Option<Parent<B>>>,
    free: Vec<u32>,
    pub(crate) pending: VecDeque<u32>,
}

impl<B> Splits<B> {
    pub(crate) fn new() -> Splits<B> {
        Splits {
            slots: Vec::new(),
            free: Vec::new(),
            pending: VecDeque::new(),
        }
    }

    /// Stores a new parent and queues it for its children to be placed.
    pub(crate) fn insert(&mut self, p: Parent<B>) -> u32 {
        let idx = match self.free.pop() {
            Some(i) => {
                self.slots[i as usize] = Some(p);
                i
            }
            None => {
                self.slots.push(Some(p));
                (self.slots.len() - 1) as u32
            }
        };
        self.pending.push_back(idx);
        idx
    }

    pub(crate) fn get_mut(&mut self, idx: u32) -> Option<&mut Parent<B>> {
        self.slots.get_mut(idx as usize).and_then(Option::as_mut)
    }

    /// Removes a parent that [`Parent::is_done`].
    pub(crate) fn remove(&mut self, idx: u32) -> Parent<B> {
        let p = self.slots[idx as usize].take().expect("a live parent");
        self.free.push(idx);
        if let Some(pos) = self.pending.iter().position(|&i| i == idx) {
            self.pending.remove(pos);
        }
        p
    }

    /// Indices of every live parent.
    pub(crate) fn live(&self) -> Vec<u32> {
        (0..self.slots.len() as u32)
            .filter(|&i| self.slots[i as usize].is_some())
            .collect()
    }

    pub(crate) fn live_count(&self) -> usize {
        self.slots.len() - self.free.len()
    }
}
