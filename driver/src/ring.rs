//! Submission and completion rings in DMA memory: index and phase logic, volatile slot access.
//!
//! The rings are the only device-visible structures the hot path touches. Slots are written
//! and read as whole entries through the dma crate's volatile accessors; no reference into
//! the ring ever exists.

use nvme_dio_dma::{DmaBuf, barrier};
use nvme_dio_queue::{Cqe, QueueSize, Sqe};

/// A submission queue: the host owns `tail`, the device reports `head` through `cqe.sqhd`.
#[derive(Debug)]
pub(crate) struct SqRing {
    mem: DmaBuf,
    entries: u32,
    tail: u32,
    head: u32,
    /// The tail last written to the doorbell: `tail != rung` means a doorbell is owed.
    rung: u32,
}

impl SqRing {
    pub(crate) const ENTRY_BYTES: usize = 64;

    pub(crate) fn new(mem: DmaBuf, size: QueueSize) -> SqRing {
        debug_assert!(mem.len() >= size.entries() as usize * Self::ENTRY_BYTES);
        SqRing {
            mem,
            entries: size.entries(),
            tail: 0,
            head: 0,
            rung: 0,
        }
    }

    pub(crate) fn iova(&self) -> u64 {
        self.mem.iova()
    }

    /// "Full" is `(tail + 1) % len == head`: one slot always stays empty so that a full ring
    /// and an empty one look different to the device.
    #[inline]
    pub(crate) fn is_full(&self) -> bool {
        self.advance(self.tail) == self.head
    }

    /// Writes `sqe` into the tail slot and advances the tail. The device sees it only after
    /// the next doorbell write.
    #[inline]
    pub(crate) fn push(&mut self, sqe: &Sqe) {
        debug_assert!(
            !self.is_full(),
            "caller checks is_full (trackers bound the ring)"
        );
        self.mem
            .write_qwords(self.tail as usize * Self::ENTRY_BYTES, &sqe.to_qwords());
        self.tail = self.advance(self.tail);
    }

    /// True if entries were pushed since the last doorbell write.
    #[inline]
    pub(crate) fn doorbell_owed(&self) -> bool {
        self.tail != self.rung
    }

    /// The tail to write to the doorbell, if any entry was pushed since the last one.
    #[inline]
    pub(crate) fn take_doorbell(&mut self) -> Option<u32> {
        if self.tail == self.rung {
            return None;
        }
        // The entries must be visible in memory before the device can see the new tail.
        barrier::wmb();
        self.rung = self.tail;
        Some(self.tail)
    }

    /// Records the head the controller reported; returns false if it is not a slot index
    /// or would move the head past the tail (a broken controller).
    #[inline]
    pub(crate) fn set_head(&mut self, sqhd: u16) -> bool {
        let h = sqhd as u32;
        if h >= self.entries {
            return false;
        }
        // The head may only move forward, and never past what the device was told: the
        // slots it may have consumed are head..rung, so the new head lies in head..=rung.
        let in_flight = (self.rung + self.entries - self.head) % self.entries;
        let moved = (h + self.entries - self.head) % self.entries;
        if moved > in_flight {
            return false;
        }
        self.head = h;
        true
    }

    /// Keeps the ring's memory allocated forever (the device may still write it).
    pub(crate) fn leak(&mut self) {
        self.mem.leak_on_drop();
    }

    /// Forgets everything (the controller was reset; the queue will be created anew).
    pub(crate) fn reset(&mut self) {
        self.tail = 0;
        self.head = 0;
        self.rung = 0;
        self.mem.fill(0);
    }

    #[inline]
    fn advance(&self, i: u32) -> u32 {
        if i + 1 == self.entries { 0 } else { i + 1 }
    }
}

/// A completion queue: the host owns `head` and the expected phase.
#[derive(Debug)]
pub(crate) struct CqRing {
    mem: DmaBuf,
    entries: u32,
    head: u32,
    phase: bool,
    /// Entries consumed since the head doorbell was last written.
    unrung: u32,
}

impl CqRing {
    pub(crate) const ENTRY_BYTES: usize = 16;

    pub(crate) fn new(mem: DmaBuf, size: QueueSize) -> CqRing {
        debug_assert!(mem.len() >= size.entries() as usize * Self::ENTRY_BYTES);
        // The device posts its first pass with phase 1; the memory starts zeroed.
        CqRing {
            mem,
            entries: size.entries(),
            head: 0,
            phase: true,
            unrung: 0,
        }
    }

    pub(crate) fn iova(&self) -> u64 {
        self.mem.iova()
    }

    /// The next new entry, if the device has posted one; advances the head.
    #[inline]
    pub(crate) fn pop(&mut self) -> Option<Cqe> {
        let off = self.head as usize * Self::ENTRY_BYTES;
        let dw3 = self.mem.read_u32(off + Cqe::DW3_OFFSET);
        if Cqe::phase_of_dw3(dw3) != self.phase {
            return None;
        }
        // The phase bit says the entry is new; its other dwords must not be read before it.
        barrier::rmb();
        let cqe = Cqe::from_dwords(self.mem.read_dwords(off));
        self.head += 1;
        if self.head == self.entries {
            self.head = 0;
            self.phase = !self.phase;
        }
        self.unrung += 1;
        Some(cqe)
    }

    /// The head to write to the doorbell, if any entry was consumed since the last one.
    #[inline]
    pub(crate) fn take_doorbell(&mut self) -> Option<u32> {
        if self.unrung == 0 {
            return None;
        }
        self.unrung = 0;
        Some(self.head)
    }

    /// Keeps the ring's memory allocated forever (the device may still write it).
    pub(crate) fn leak(&mut self) {
        self.mem.leak_on_drop();
    }

    /// Forgets everything (the controller was reset; the queue will be created anew). The
    /// memory is zeroed so no old entry carries the phase the host now expects.
    pub(crate) fn reset(&mut self) {
        self.head = 0;
        self.phase = true;
        self.unrung = 0;
        self.mem.fill(0);
    }
}
