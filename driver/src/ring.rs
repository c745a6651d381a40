//! The queue pair's device-visible side: SQ and CQ slots in DMA memory, and the doorbells.
//!
//! The rings are the only device-visible structures the hot path touches. Slots are written
//! and read as whole entries through the dma crate's volatile accessors; no reference into
//! the ring ever exists. Which slot to write or read, and which doorbell value is owed, is
//! the core's decision (`nvme_dio_queue::queue_pair`); this file only moves bytes, and keeps
//! each memory fence in the same function as the access it orders.
//!
//! ## Doorbells without a lock, and why none from before a reset reaches the controller after it
//!
//! Each queue pair owns one flag in [`DoorbellGate`] (indexed by its qid). A doorbell write
//! ([`Doorbells::ring`]) is:
//!
//! ```text
//! D1  flag[qid].store(true, SeqCst)
//! D2  if epoch.load(SeqCst) != my_epoch { flag[qid].store(false); return (not written) }
//! D3  MMIO write of the doorbell
//! D4  flag[qid].store(false, Release)
//! ```
//!
//! and a controller reset (`Shared::reset`, `Shared::release_for_removal`) begins with
//!
//! ```text
//! R1  epoch.fetch_add(1, SeqCst)
//! R2  for every flag: while flag.load(SeqCst) { spin }      (DoorbellGate::close)
//! R3  CC.EN = 0 ...
//! ```
//!
//! Claim: no doorbell written for epoch `e` reaches the controller after R3 of the reset that
//! ends epoch `e`. All of D1, D2, R1, R2 are SeqCst, so they sit in one total order S that
//! agrees with each thread's program order. If D2 read `e` (the old epoch), D2 comes before
//! R1 in S, hence D1 < D2 < R1 < R2: R2's load of the flag sees D1's `true` or a later store
//! to it, and the only later store is D4. So R2 spins until D4, and D4 is a release store
//! after D3: R2's acquiring load that reads it makes D3 happen before R3. (BAR0 is mapped
//! uncached; x86 keeps uncached stores in program order, so the doorbell reaches the device
//! before CC.EN = 0.) If D2 read a newer epoch, there is no D3. The wait in R2 is bounded by
//! one MMIO write per queue pair caught between D1 and D4, and a queue pair that is not
//! ringing never holds its flag, so an idle or stuck queue pair cannot block a reset.
//!
//! The cost on the doorbell path is two stores and a load to a cache line of the queue
//! pair's own (the flags are padded apart), instead of a controller-wide lock.
//!
//! ## Shadow doorbells (Doorbell Buffer Config) under the same gate
//!
//! With shadow doorbells ([`ShadowDoorbells`], I/O queues only, as Linux), D3 becomes
//!
//! ```text
//! D3a old = shadow[db]; shadow[db] = value          (memory the controller reads any time)
//! D3b mb(); ei = eventidx[db]
//! D3c if need_event(ei, value, old): MMIO write of the doorbell
//! ```
//!
//! The shadow store is a doorbell too (the controller may act on it without any MMIO), so
//! it stays between D2 and D4: by the argument above, every shadow store of epoch `e`
//! happens before R3 of the reset that ends `e`. That reset zeroes both pages after R3 and
//! before it sends Doorbell Buffer Config again, so the new epoch's queues start from
//! shadow values of 0 and no store from the old epoch can land on top of them. A queue
//! pair zeroes its own two entries before it creates its queues (a qid used before left its
//! last values there). D3b is Linux's `nvme_dbbuf_update_and_check_event`: a full fence
//! between the shadow store and the EventIdx load (the controller fences between its
//! EventIdx store and its shadow load), so one of the two sides always sees the other's
//! write: either the controller reads the new shadow value, or the host sees an EventIdx
//! that asks for the MMIO write.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crossbeam_utils::CachePadded;
use nvme_dio_dma::{Bar0, DmaBuf, SharedWords, barrier};
use nvme_dio_queue::regs::DOORBELL_BASE;
use nvme_dio_queue::{Cqe, QueueSize, Sqe};

/// The shadow doorbell and EventIdx pages of Doorbell Buffer Config (NVMe Base 2.0, 5.8),
/// one per controller. Entry offsets are the doorbells' own offsets from 0x1000 (same
/// stride).
#[derive(Debug)]
pub(crate) struct ShadowDoorbells {
    shadow: SharedWords,
    eventidx: SharedWords,
}

/// Linux's `nvme_dbbuf_need_event`: did the index move from `old` to `new` past
/// `event_idx` (the controller asked to be told by MMIO once it does)? 16-bit wrapping
/// arithmetic, as the spec's indices are.
#[inline]
pub(crate) fn need_event(event_idx: u16, new: u16, old: u16) -> bool {
    new.wrapping_sub(event_idx).wrapping_sub(1) < new.wrapping_sub(old)
}

impl ShadowDoorbells {
    /// Two pages, each page aligned in IOVA space.
    pub(crate) fn new(shadow: DmaBuf, eventidx: DmaBuf) -> ShadowDoorbells {
        let s = ShadowDoorbells {
            shadow: SharedWords::new(shadow),
            eventidx: SharedWords::new(eventidx),
        };
        s.clear();
        s
    }

    pub(crate) fn shadow_iova(&self) -> u64 {
        self.shadow.iova()
    }

    pub(crate) fn eventidx_iova(&self) -> u64 {
        self.eventidx.iova()
    }

    /// Zeroes both pages (bring-up and every reset, after the controller was disabled).
    pub(crate) fn clear(&self) {
        self.shadow.zero();
        self.eventidx.zero();
    }

    /// Zeroes the entries of one queue pair (before its queues are created).
    pub(crate) fn clear_queue(&self, sq_doorbell: usize, cq_doorbell: usize) {
        for off in [sq_doorbell, cq_doorbell] {
            self.shadow.store(off - DOORBELL_BASE, 0);
            self.eventidx.store(off - DOORBELL_BASE, 0);
        }
    }

    /// D3a and D3b: stores `value` as the shadow doorbell at MMIO offset `doorbell`, and
    /// says whether the controller also needs the MMIO write.
    #[inline]
    fn update_and_check(&self, doorbell: usize, value: u32) -> bool {
        let off = doorbell - DOORBELL_BASE;
        let old = self.shadow.load(off);
        self.shadow.store(off, value);
        barrier::mb();
        let ei = self.eventidx.load(off);
        need_event(ei as u16, value as u16, old as u16)
    }
}

/// What a doorbell write did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Rung {
    /// Written to the register (and to the shadow doorbell, if in use).
    Mmio,
    /// Written to the shadow doorbell only: the controller's EventIdx said it will read it.
    ShadowOnly,
    /// Not written: a reset began (the entries never reach the controller).
    Refused,
}

/// One "in doorbell" flag per queue id (see the module docs for the protocol).
#[derive(Debug)]
pub(crate) struct DoorbellGate {
    flags: Box<[CachePadded<AtomicBool>]>,
}

impl DoorbellGate {
    /// Flags for qids `0..=max_qid`.
    pub(crate) fn new(max_qid: u16) -> DoorbellGate {
        DoorbellGate {
            flags: (0..=max_qid as usize)
                .map(|_| CachePadded::new(AtomicBool::new(false)))
                .collect(),
        }
    }

    /// R2: waits until no queue pair is between D1 and D4. The caller did R1 first.
    pub(crate) fn close(&self) {
        for f in self.flags.iter() {
            while f.load(Ordering::SeqCst) {
                std::hint::spin_loop();
            }
        }
    }
}

/// A queue pair's two doorbells and the epoch its queues belong to.
#[derive(Debug)]
pub(crate) struct Doorbells {
    qid: usize,
    sq_tail: usize,
    cq_head: usize,
}

impl Doorbells {
    pub(crate) fn new(qid: u16, sq_tail: usize, cq_head: usize) -> Doorbells {
        Doorbells {
            qid: qid as usize,
            sq_tail,
            cq_head,
        }
    }

    /// Writes the SQ tail doorbell unless the controller was reset since `my_epoch`
    /// ([`Rung::Refused`] then: the entries never reach it). The entries themselves must be
    /// visible in memory before the controller can see the new tail: the write fence is
    /// here, next to the store it orders (the shadow doorbell's store too).
    #[inline]
    pub(crate) fn ring_sq<B: Bar0>(
        &self,
        bar: &B,
        gate: &DoorbellGate,
        epoch: &AtomicU64,
        my_epoch: u64,
        shadow: Option<&ShadowDoorbells>,
        tail: u32,
    ) -> Rung {
        barrier::wmb();
        self.ring(bar, gate, epoch, my_epoch, shadow, self.sq_tail, tail)
    }

    /// Writes the CQ head doorbell unless the controller was reset since `my_epoch`. The
    /// entries up to `head` were read before this (program order; the reads completed).
    #[inline]
    pub(crate) fn ring_cq<B: Bar0>(
        &self,
        bar: &B,
        gate: &DoorbellGate,
        epoch: &AtomicU64,
        my_epoch: u64,
        shadow: Option<&ShadowDoorbells>,
        head: u32,
    ) -> Rung {
        self.ring(bar, gate, epoch, my_epoch, shadow, self.cq_head, head)
    }

    /// D1..D4 of the module docs (D3a..D3c with shadow doorbells).
    #[inline]
    #[allow(clippy::too_many_arguments)]
    fn ring<B: Bar0>(
        &self,
        bar: &B,
        gate: &DoorbellGate,
        epoch: &AtomicU64,
        my_epoch: u64,
        shadow: Option<&ShadowDoorbells>,
        offset: usize,
        value: u32,
    ) -> Rung {
        let flag = &gate.flags[self.qid];
        flag.store(true, Ordering::SeqCst); // D1
        if epoch.load(Ordering::SeqCst) != my_epoch {
            // D2: a reset began; it may already be disabling the controller.
            flag.store(false, Ordering::Release);
            return Rung::Refused;
        }
        let rung = match shadow {
            Some(s) if !s.update_and_check(offset, value) => Rung::ShadowOnly, // D3a, D3b
            _ => {
                bar.write32(offset, value); // D3 (D3c)
                Rung::Mmio
            }
        };
        flag.store(false, Ordering::Release); // D4
        rung
    }
}

/// The SQ ring's memory.
#[derive(Debug)]
pub(crate) struct SqMem {
    mem: DmaBuf,
}

impl SqMem {
    pub(crate) const ENTRY_BYTES: usize = 64;

    pub(crate) fn new(mem: DmaBuf, size: QueueSize) -> SqMem {
        debug_assert!(mem.len() >= size.entries() as usize * Self::ENTRY_BYTES);
        SqMem { mem }
    }

    pub(crate) fn iova(&self) -> u64 {
        self.mem.iova()
    }

    /// Copies `sqe` into slot `index` as eight volatile qword stores. The controller reads
    /// it only after a doorbell ([`Doorbells::ring_sq`] fences first).
    #[inline]
    pub(crate) fn write(&self, index: u32, sqe: &Sqe) {
        self.mem
            .write_qwords(index as usize * Self::ENTRY_BYTES, &sqe.to_qwords());
    }

    /// Zeroes the ring (the queue will be created anew).
    pub(crate) fn clear(&self) {
        self.mem.fill(0);
    }

    /// Keeps the memory allocated forever (the device may still read or write it).
    pub(crate) fn leak(&mut self) {
        self.mem.leak_on_drop();
    }
}

/// The CQ ring's memory.
#[derive(Debug)]
pub(crate) struct CqMem {
    mem: DmaBuf,
}

impl CqMem {
    pub(crate) const ENTRY_BYTES: usize = 16;

    pub(crate) fn new(mem: DmaBuf, size: QueueSize) -> CqMem {
        debug_assert!(mem.len() >= size.entries() as usize * Self::ENTRY_BYTES);
        CqMem { mem }
    }

    pub(crate) fn iova(&self) -> u64 {
        self.mem.iova()
    }

    /// The entry in slot `head` if the controller has posted it (its phase bit is `phase`).
    #[inline]
    pub(crate) fn read_new(&self, head: u32, phase: bool) -> Option<Cqe> {
        let off = head as usize * Self::ENTRY_BYTES;
        let dw3 = self.mem.read_u32(off + Cqe::DW3_OFFSET);
        if Cqe::phase_of_dw3(dw3) != phase {
            return None;
        }
        // The phase bit says the entry is new; its other dwords must not be read before it.
        barrier::rmb();
        Some(Cqe::from_dwords(self.mem.read_dwords(off)))
    }

    /// Zeroes the ring so no old entry carries the phase the host expects next.
    pub(crate) fn clear(&self) {
        self.mem.fill(0);
    }

    /// Keeps the memory allocated forever (the device may still write it).
    pub(crate) fn leak(&mut self) {
        self.mem.leak_on_drop();
    }
}

#[cfg(test)]
mod tests {
    use super::need_event;

    #[test]
    fn need_event_is_linux_s() {
        // The controller consumed up to 5 and asks to hear of anything past it.
        assert!(need_event(5, 6, 5));
        assert!(need_event(5, 9, 5));
        // It has not caught up with 7 yet (EventIdx still 5): moving 7 -> 9 needs no MMIO.
        assert!(!need_event(5, 9, 7));
        // Nothing moved.
        assert!(!need_event(5, 5, 5));
        // Across the 16-bit wrap.
        assert!(need_event(0xffff, 1, 0xffff));
        assert!(!need_event(0xfffe, 1, 0xffff));
    }
}
