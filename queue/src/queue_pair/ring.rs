//! Ring indices: the SQ tail (ours), the SQ head (the controller's, learnt from `cqe.sqhd`),
//! the CQ head and phase (ours), and the doorbell values owed. No memory here: the shell
//! writes entries at the indices this module hands out and reads entries at the head it
//! names.

use crate::QueueSize;

/// Submission queue indices.
///
/// "Full" is `(tail + 1) % entries == head`: one slot always stays empty, so a full ring and
/// an empty one look different to the controller (NVMe Base 2.0, 3.3.1.5).
#[derive(Clone, Debug)]
pub(crate) struct SqIndex {
    entries: u32,
    tail: u32,
    head: u32,
    /// The tail last written to the doorbell: `tail != rung` means a doorbell is owed.
    rung: u32,
}

impl SqIndex {
    pub(crate) fn new(size: QueueSize) -> SqIndex {
        SqIndex {
            entries: size.entries(),
            tail: 0,
            head: 0,
            rung: 0,
        }
    }

    #[inline]
    pub(crate) fn is_full(&self) -> bool {
        self.advance(self.tail) == self.head
    }

    /// Takes the tail slot for a new entry: returns its index and advances the tail. The
    /// caller checked [`SqIndex::is_full`].
    #[inline]
    pub(crate) fn push(&mut self) -> u32 {
        debug_assert!(!self.is_full());
        let at = self.tail;
        self.tail = self.advance(at);
        at
    }

    /// True if entries were pushed since the last doorbell value was taken.
    #[inline]
    pub(crate) fn doorbell_owed(&self) -> bool {
        self.tail != self.rung
    }

    /// The tail to write to the SQ tail doorbell, once per batch.
    #[inline]
    pub(crate) fn take_doorbell(&mut self) -> Option<u32> {
        if self.tail == self.rung {
            return None;
        }
        self.rung = self.tail;
        Some(self.tail)
    }

    /// Records the head a CQE reported; false (and nothing changes) if it is not a slot
    /// index or would move the head past what the controller was told. The slots the
    /// controller may have consumed are `head..rung`, so a new head lies in `head..=rung`.
    #[inline]
    pub(crate) fn set_head(&mut self, sqhd: u16) -> bool {
        let h = sqhd as u32;
        if h >= self.entries {
            return false;
        }
        let may_consume = (self.rung + self.entries - self.head) % self.entries;
        let moved = (h + self.entries - self.head) % self.entries;
        if moved > may_consume {
            return false;
        }
        self.head = h;
        true
    }

    /// Entries the controller was told of and has not reported consumed.
    pub(crate) fn unconsumed(&self) -> u32 {
        (self.rung + self.entries - self.head) % self.entries
    }

    pub(crate) fn tail(&self) -> u32 {
        self.tail
    }

    pub(crate) fn head(&self) -> u32 {
        self.head
    }

    /// Back to an empty ring (the controller forgot the queue in a reset).
    pub(crate) fn reset(&mut self) {
        self.tail = 0;
        self.head = 0;
        self.rung = 0;
    }

    #[inline]
    fn advance(&self, i: u32) -> u32 {
        if i + 1 == self.entries { 0 } else { i + 1 }
    }
}

/// Completion queue head and expected phase.
///
/// The controller posts its first pass over the ring with phase 1 into zeroed memory, so an
/// entry is new exactly when its phase bit equals [`CqIndex::phase`]; the phase flips each
/// time the head wraps.
#[derive(Clone, Debug)]
pub(crate) struct CqIndex {
    entries: u32,
    head: u32,
    phase: bool,
    /// Entries consumed since the head doorbell value was last taken.
    unrung: u32,
}

impl CqIndex {
    pub(crate) fn new(size: QueueSize) -> CqIndex {
        CqIndex {
            entries: size.entries(),
            head: 0,
            phase: true,
            unrung: 0,
        }
    }

    #[inline]
    pub(crate) fn head(&self) -> u32 {
        self.head
    }

    #[inline]
    pub(crate) fn phase(&self) -> bool {
        self.phase
    }

    /// The entry at the head was consumed.
    #[inline]
    pub(crate) fn advance(&mut self) {
        self.head += 1;
        if self.head == self.entries {
            self.head = 0;
            self.phase = !self.phase;
        }
        self.unrung += 1;
    }

    /// The head to write to the CQ head doorbell, once per batch.
    #[inline]
    pub(crate) fn take_doorbell(&mut self) -> Option<u32> {
        if self.unrung == 0 {
            return None;
        }
        self.unrung = 0;
        Some(self.head)
    }

    /// Back to the first pass (the shell zeroes the memory so no old entry has phase 1).
    pub(crate) fn reset(&mut self) {
        self.head = 0;
        self.phase = true;
        self.unrung = 0;
    }
}
