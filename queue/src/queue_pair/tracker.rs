//! The tracker slab: one tracker per command slot, and the CID that names it.
//!
//! A CID is `generation << slot_bits | slot`. The slot indexes the slab; the generation is
//! bumped each time the slot is used, so a stale or duplicate CQE (one naming a slot that
//! has since been reused) does not match and is counted instead of trusted. Encode
//! ([`Slab::cid`]) and decode ([`Slab::lookup`]) sit next to each other on purpose.

use crate::{Cid, Sqe};

use super::Stamp;

/// A tracker that belongs to no split (a request of one command).
pub(crate) const NO_PARENT: u32 = u32::MAX;

/// One command slot's bookkeeping (SPDK's tracker).
#[derive(Debug)]
pub(crate) struct Tracker<B> {
    /// The controller may hold this command.
    pub(crate) busy: bool,
    pub(crate) generation: u16,
    pub(crate) opcode: u8,
    /// Index of the split this command is a child of, or [`NO_PARENT`].
    pub(crate) parent: u32,
    pub(crate) tag: u64,
    /// The request's buffers (a child's stay with its parent).
    pub(crate) bufs: Option<B>,
    /// The first tick that saw the command in flight (deadlines count from it).
    pub(crate) seen: Option<Stamp>,
    /// When the command passed its deadline and an Abort was asked for.
    pub(crate) aborted: Option<Stamp>,
    /// The entry as placed (CID aside), kept for a retry when retries are on, or for the
    /// first placement of a request accepted while the core is paused.
    pub(crate) sqe: Sqe,
    /// Times this request was placed again (a retryable status, or a reset).
    pub(crate) tries: u8,
    /// Waiting in the core's retry queue to be placed (not on the controller).
    pub(crate) queued: bool,
    /// `sqe` holds this request's entry (retries were on when it was submitted).
    pub(crate) kept: bool,
}

/// The slab and its free list.
#[derive(Debug)]
pub(crate) struct Slab<B> {
    pub(crate) trackers: Vec<Tracker<B>>,
    free: Vec<u16>,
    slot_bits: u32,
}

impl<B> Slab<B> {
    /// `slots` trackers (at most 65 535: one SQ slot always stays empty).
    pub(crate) fn new(slots: u32) -> Slab<B> {
        debug_assert!((1..=65_535).contains(&slots));
        let trackers = (0..slots)
            .map(|_| Tracker {
                busy: false,
                generation: 0,
                opcode: 0,
                parent: NO_PARENT,
                tag: 0,
                bufs: None,
                seen: None,
                aborted: None,
                sqe: Sqe::default(),
                tries: 0,
                queued: false,
                kept: false,
            })
            .collect();
        Slab {
            trackers,
            // Popped from the end: slot 0 first, which keeps tests readable.
            free: (0..slots as u16).rev().collect(),
            slot_bits: u32::BITS - (slots.max(2) - 1).leading_zeros(),
        }
    }

    pub(crate) fn capacity(&self) -> usize {
        self.trackers.len()
    }

    pub(crate) fn busy(&self) -> usize {
        self.trackers.len() - self.free.len()
    }

    pub(crate) fn has_free(&self) -> bool {
        !self.free.is_empty()
    }

    /// Takes a free slot, bumps its generation and marks it busy.
    #[inline]
    pub(crate) fn claim(
        &mut self,
        opcode: u8,
        parent: u32,
        tag: u64,
        bufs: Option<B>,
    ) -> Option<u16> {
        let slot = self.free.pop()?;
        let t = &mut self.trackers[slot as usize];
        t.generation = t.generation.wrapping_add(1);
        t.busy = true;
        t.opcode = opcode;
        t.parent = parent;
        t.tag = tag;
        t.bufs = bufs;
        t.seen = None;
        t.aborted = None;
        t.tries = 0;
        t.queued = false;
        t.kept = false;
        Some(slot)
    }

    /// Gives a claimed slot back before its entry reached the ring (building it failed).
    /// The generation stays bumped, which is harmless.
    pub(crate) fn unclaim(&mut self, slot: u16) -> Option<B> {
        let t = &mut self.trackers[slot as usize];
        debug_assert!(t.busy);
        t.busy = false;
        self.free.push(slot);
        t.bufs.take()
    }

    /// The CID that names `slot` in its current use.
    #[inline]
    pub(crate) fn cid(&self, slot: u16) -> Cid {
        let generation = self.trackers[slot as usize].generation as u32;
        Cid(((generation << self.slot_bits) | slot as u32) as u16)
    }

    /// The slot a CQE's CID names, if that slot is busy in the same use (generation).
    #[inline]
    pub(crate) fn lookup(&self, cid: Cid) -> Option<u16> {
        let slot = (cid.0 as u32 & ((1 << self.slot_bits) - 1)) as u16;
        let generation = (cid.0 as u32 >> self.slot_bits) as u16;
        let gen_mask = (0xffffu32 >> self.slot_bits) as u16;
        match self.trackers.get(slot as usize) {
            Some(t) if t.busy && (t.generation & gen_mask) == generation => Some(slot),
            _ => None,
        }
    }

    /// Gives a busy slot a new use for a retry: a new CID generation (so a late or duplicate
    /// CQE of the previous placement is stale), deadlines from scratch, queued for placing.
    pub(crate) fn requeue(&mut self, slot: u16) {
        let t = &mut self.trackers[slot as usize];
        debug_assert!(t.busy);
        t.generation = t.generation.wrapping_add(1);
        t.tries = t.tries.saturating_add(1);
        t.seen = None;
        t.aborted = None;
        t.queued = true;
    }

    /// Frees a busy slot: the controller no longer holds it. Returns what it carried.
    #[inline]
    pub(crate) fn release(&mut self, slot: u16) -> Released<B> {
        let t = &mut self.trackers[slot as usize];
        debug_assert!(t.busy);
        t.busy = false;
        let r = Released {
            parent: t.parent,
            tag: t.tag,
            bufs: t.bufs.take(),
        };
        self.free.push(slot);
        r
    }
}

/// What a freed tracker carried.
pub(crate) struct Released<B> {
    pub(crate) parent: u32,
    pub(crate) tag: u64,
    pub(crate) bufs: Option<B>,
}
