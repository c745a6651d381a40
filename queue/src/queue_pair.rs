//! The queue-pair core: every decision of an I/O queue pair, with no I/O in it.
//!
//! This is a sans-I/O state machine in the manner of quinn-proto and h2. It holds the
//! tracker slab with its CID generations ([`tracker`]), the ring indices and phase
//! ([`ring`]), split parents ([`split`]), deadlines and reset epochs, and it retires every
//! request exactly once through one function ([`QueuePairCore::retire`]). It never touches
//! DMA memory, reads no clock and allocates nothing on the single-command path. The driver
//! (`nvme-dio`'s `qpair` module) is the shell around it: it copies the entries the core
//! hands out into the SQ ring, writes the doorbell values the core says are owed, reads CQEs
//! from the ring at the head the core names and feeds them back, and feeds ticks and resets.
//!
//! ```text
//! shell                                   core
//! submit(tag, bufs, build) -------------> claim a tracker, build(slot) -> Sqe, CID set
//!                          <------------- Sink::write_sqe(index, sqe)
//! take_sq_doorbell()       <------------- Some(tail) once per batch
//! (CQ slot at cq_head() has cq_phase())
//! on_cqe(cqe)              -------------> match CID, retire -> Delivery { tag, outcome, bufs }
//! take_cq_doorbell()       <------------- Some(head) once per batch
//! on_tick(now)             -------------> Tick { aborts: [cid], reset }
//! on_teardown(why, epoch)  -------------> every request in flight retired, rings empty
//! ```
//!
//! ## Invariants (each checked by the tests in `queue_pair/tests.rs`)
//!
//! 1. Every accepted request is delivered exactly once: as a success, a device error, a
//!    timeout, or a teardown. `submitted = succeeded + failed + in flight`, always.
//! 2. A slot is reused only after the controller gave it back (its CQE was consumed) or
//!    forgot it (a teardown). A CQE whose CID does not name a busy slot in its current use
//!    (generation) changes nothing but a counter.
//! 3. The SQ head moves only forward and never past the tail the controller was told; a
//!    junk CQE of this SQ still moves it when it is in range, so the ring cannot fill up
//!    for good after one bad entry.
//! 4. The buffers of a request come back exactly once, with its delivery; a split's with the
//!    parent's delivery, after its last child.

mod ring;
mod split;
mod tracker;

#[cfg(any(test, feature = "model"))]
pub mod model;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::time::Duration;

use crate::cmd::{Dptr, Read, Write};
use crate::status::{sc, sct};
use crate::{Cid, Command, Cqe, PrpError, Qid, QueueSize, Segment, SglError, Sqe, Status};

use ring::{CqIndex, SqIndex};
use split::{Parent, Splits};
pub use split::{SplitKind, SplitMeta, SplitOp};
use tracker::{NO_PARENT, Slab};

/// A point in time on the shell's monotonic clock, in nanoseconds from any origin.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Stamp(pub u64);

impl Stamp {
    /// Time from `earlier` to `self` (zero if `earlier` is later).
    pub fn since(self, earlier: Stamp) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }
}

/// Why requests still in flight are retired without their CQE.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Teardown {
    /// The controller was reset (disabled, so it dropped every queue and stopped its DMA).
    Reset,
    /// The device is gone (removed, or given back to the system after DMA was stopped).
    Gone,
    /// A reset failed: the controller may still write the buffers. The shell must hold them
    /// until DMA is proven stopped.
    Dead,
    /// The queue pair is being dropped.
    Deleted,
}

/// How a request ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The controller completed it successfully.
    Success,
    /// The controller completed it with an error status.
    Status {
        /// The command's opcode.
        opcode: u8,
        /// The completion status.
        status: Status,
    },
    /// It passed its deadline and the controller aborted it on request.
    TimedOut {
        /// The command's opcode.
        opcode: u8,
    },
    /// A child of a split could not be described (a driver bug, reported not panicked on).
    Unbuildable(DptrError),
    /// It was in flight when the queue pair was torn down.
    TornDown(Teardown),
    /// It never reached the controller and now never will: accepted while a reset ran, or
    /// waiting to go out again after one (whose disable stopped the controller), when the
    /// queues were torn down for this reason or could not be re-created. No controller
    /// holds it, so its buffers are free whatever state the controller is in. (A split's
    /// children are never reported so: a sibling may still be with the controller.)
    NotSent(Teardown),
}

impl Outcome {
    /// True for [`Outcome::Success`].
    pub fn is_success(&self) -> bool {
        matches!(self, Outcome::Success)
    }
}

/// Why building a data pointer failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DptrError {
    /// PRP building refused.
    #[error(transparent)]
    Prp(#[from] PrpError),
    /// SGL building refused.
    #[error(transparent)]
    Sgl(#[from] SglError),
}

/// A finished request, as the core hands it out.
#[derive(Debug)]
pub struct Delivery<B> {
    /// The caller's tag.
    pub tag: u64,
    /// How it ended.
    pub outcome: Outcome,
    /// Its buffers, given back.
    pub bufs: B,
    /// Dword 0 of its CQE (command specific; 0 when it did not complete on the device, and
    /// for a split).
    pub result: u32,
}

/// Why a submission was refused; nothing was queued and the buffers come back with it.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal<E> {
    /// No free tracker or SQ slot.
    Full {
        /// Requests in flight.
        in_flight: usize,
    },
    /// A split is still waiting for slots; nothing may overtake it.
    BehindSplit,
    /// The shell's builder refused the entry.
    Build(E),
}

/// Where the core puts submission entries: the shell's SQ ring, or a test's Vec.
pub trait Sink {
    /// Copies `sqe` into SQ slot `index`.
    fn write_sqe(&mut self, index: u32, sqe: &Sqe);
    /// Builds the data pointer for `cmd` (bytes `cmd.segs` of `segs`) using the list pages
    /// of tracker `slot`.
    ///
    /// # Errors
    ///
    /// [`DptrError`] if the bytes cannot be described.
    fn data_pointer(
        &mut self,
        slot: u16,
        segs: &[Segment],
        cmd: &Command,
    ) -> Result<Dptr, DptrError>;
}

/// What a CQE turned out to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CqeVerdict {
    /// It completed a command.
    Matched,
    /// It named another SQ: ignored.
    Foreign,
    /// Its CID names no command in flight (stale or duplicate): ignored.
    Stale,
}

/// What a tick asks the shell to do.
#[derive(Debug, PartialEq, Eq)]
pub struct Tick<'a> {
    /// Commands that just passed their deadline: send an Abort for each. If an Abort
    /// cannot be sent, reset the controller.
    pub aborts: &'a [Cid],
    /// An aborted command did not come back within the grace period: reset the controller.
    pub reset: bool,
}

/// Counters since creation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Requests accepted.
    pub submitted: u64,
    /// Requests delivered with [`Outcome::Success`].
    pub succeeded: u64,
    /// Requests delivered with any other outcome.
    pub failed: u64,
    /// Requests that needed more than one command.
    pub split_requests: u64,
    /// Commands placed in the SQ.
    pub commands: u64,
    /// SQ tail doorbell values handed out.
    pub sq_doorbells: u64,
    /// CQ head doorbell values handed out.
    pub cq_doorbells: u64,
    /// Commands that passed their deadline.
    pub timeouts: u64,
    /// CQEs naming a CID that is not in flight (stale or duplicate).
    pub stale_cqes: u64,
    /// CQEs naming another SQ.
    pub foreign_cqes: u64,
    /// CQEs whose SQ head moved backwards or out of range.
    pub bad_sq_heads: u64,
    /// Teardowns (resets adopted, removal, deletion).
    pub teardowns: u64,
    /// Requests placed again: after a retryable status (DNR clear) or a reset.
    pub retries: u64,
    /// Requests completed at once without a command ([`QueuePairCore::complete_now`]: a
    /// flush with no volatile write cache).
    pub without_command: u64,
}

/// The counters do not add up (a bug in the core).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "accounting broken: submitted {submitted} != succeeded {succeeded} + failed {failed} + in flight {in_flight}"
)]
pub struct AccountingError {
    /// Requests accepted.
    pub submitted: u64,
    /// Delivered successfully.
    pub succeeded: u64,
    /// Delivered with a failure.
    pub failed: u64,
    /// Accepted and not yet delivered.
    pub in_flight: u64,
}

/// The state of one I/O queue pair, without its memory. See the module docs.
#[derive(Debug)]
pub struct QueuePairCore<B> {
    // Hot: touched on every I/O.
    slab: Slab<B>,
    sq: SqIndex,
    cq: CqIndex,
    qid: Qid,
    ready: VecDeque<Delivery<B>>,
    counters: Counters,
    // Cold: splits, deadlines, resets.
    splits: Splits<B>,
    timeout: Duration,
    epoch: u64,
    aborts: Vec<Cid>,
    /// Times a request of one command is placed again before its failure is delivered.
    retry_limit: u8,
    /// Slots waiting to be placed (again, or for the first time while paused), oldest
    /// first.
    retries: VecDeque<u16>,
    /// A controller reset is running: requests are accepted but not placed.
    paused: bool,
}

impl<B> QueuePairCore<B> {
    /// The core of queue pair `qid` with `size` entries per ring (so `size - 1` commands in
    /// flight), created in controller reset epoch `epoch`.
    pub fn new(qid: Qid, size: QueueSize, timeout: Duration, epoch: u64) -> QueuePairCore<B> {
        let slots = size.entries() - 1;
        QueuePairCore {
            slab: Slab::new(slots),
            sq: SqIndex::new(size),
            cq: CqIndex::new(size),
            qid,
            ready: VecDeque::with_capacity(slots as usize),
            counters: Counters::default(),
            splits: Splits::new(),
            timeout,
            epoch,
            aborts: Vec::new(),
            retry_limit: 0,
            retries: VecDeque::new(),
            paused: false,
        }
    }

    /// Requests of one command that fail with a retryable status (DNR clear) or are
    /// dropped by a controller reset are placed again, up to `limit` times, before their
    /// failure is delivered; the caller sees one delivery. 0 (the default) turns it off.
    /// A split's children are retried one by one, each up to `limit` times; the split is
    /// delivered once, after its last child.
    pub fn set_retries(&mut self, limit: u8) {
        self.retry_limit = limit;
    }

    /// Commands waiting to be placed ([`QueuePairCore::pump`] places them): retries, and
    /// requests accepted while paused.
    pub fn retries_waiting(&self) -> usize {
        self.retries.len()
    }

    /// A controller reset is running: from now on requests are accepted (they hold their
    /// trackers) but nothing is placed in the SQ, so the submitter never waits for the reset.
    /// After the reset, the shell re-creates the queues, calls [`QueuePairCore::resume`] and
    /// [`QueuePairCore::pump`]; if the queues are lost, [`QueuePairCore::fail_retries`]
    /// fails what waited. A teardown other than for a reset retires them too.
    pub fn pause(&mut self) {
        self.paused = true;
    }

    /// Placing may go on (the queues exist again).
    pub fn resume(&mut self) {
        self.paused = false;
    }

    /// True between [`QueuePairCore::pause`] and [`QueuePairCore::resume`].
    pub fn is_paused(&self) -> bool {
        self.paused
    }

    /// The queue identifier.
    pub fn qid(&self) -> Qid {
        self.qid
    }

    /// Commands that can be in flight at once.
    pub fn capacity(&self) -> usize {
        self.slab.capacity()
    }

    /// Commands the controller may hold (their slots are busy).
    pub fn commands_in_flight(&self) -> usize {
        self.slab.busy()
    }

    /// Requests accepted and not yet delivered (a split counts once).
    pub fn requests_in_flight(&self) -> u64 {
        self.counters.submitted - self.counters.succeeded - self.counters.failed
    }

    /// Split requests that still have children to place.
    pub fn splits_waiting(&self) -> usize {
        self.splits.pending.len()
    }

    /// The reset epoch these queues belong to.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The deadline of each command.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Counters since creation.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// `submitted = succeeded + failed + in flight`, counted independently: the in-flight
    /// side is recounted from the busy trackers and the live split parents, so a lost or
    /// doubled delivery shows. (A delivery is counted when it is made, taken or not.)
    ///
    /// # Errors
    ///
    /// [`AccountingError`] if the counts disagree.
    pub fn check_accounting(&self) -> Result<(), AccountingError> {
        let singles = self
            .slab
            .trackers
            .iter()
            .filter(|t| t.busy && t.parent == NO_PARENT)
            .count();
        let in_flight = (singles + self.splits.live_count()) as u64;
        let c = &self.counters;
        if c.submitted == c.succeeded + c.failed + in_flight {
            Ok(())
        } else {
            Err(AccountingError {
                submitted: c.submitted,
                succeeded: c.succeeded,
                failed: c.failed,
                in_flight,
            })
        }
    }

    // ---- submission -------------------------------------------------------------------

    /// Places one command: claims a tracker, asks `build` for the entry (the shell writes
    /// its data pointer into the slot's list pages), sets its CID and hands it to `sink`.
    ///
    /// # Errors
    ///
    /// [`Refusal`] with `bufs` when the queue is full, a split waits, or `build` fails;
    /// nothing is queued then.
    #[inline]
    pub fn submit<S: Sink, E>(
        &mut self,
        sink: &mut S,
        tag: u64,
        bufs: B,
        build: impl FnOnce(&mut S, u16) -> Result<Sqe, E>,
    ) -> Result<(), (Refusal<E>, B)> {
        if let Err(r) = self.admit() {
            return Err((r, bufs));
        }
        // The opcode is known once the entry is built; the tracker is claimed first so the
        // builder can use the slot's list pages.
        let slot = self
            .slab
            .claim(0, NO_PARENT, tag, Some(bufs))
            .expect("a free tracker (checked)");
        let sqe = match build(sink, slot) {
            Ok(sqe) => sqe,
            Err(e) => {
                let bufs = self.slab.unclaim(slot).expect("bufs were stored");
                return Err((Refusal::Build(e), bufs));
            }
        };
        let t = &mut self.slab.trackers[slot as usize];
        if self.retry_limit > 0 {
            t.sqe = sqe;
            t.kept = true;
        }
        if self.paused {
            t.sqe = sqe;
            t.queued = true;
            self.retries.push_back(slot);
        } else {
            self.place(sink, slot, sqe);
        }
        self.counters.submitted += 1;
        Ok(())
    }

    /// Accepts a request that needs no command (a flush where there is no volatile write
    /// cache: every completed write is already durable) and delivers it now, successfully.
    /// It does not overtake a split still waiting for slots.
    ///
    /// # Errors
    ///
    /// [`Refusal::BehindSplit`] with `bufs`.
    pub fn complete_now(
        &mut self,
        tag: u64,
        bufs: B,
    ) -> Result<(), (Refusal<core::convert::Infallible>, B)> {
        if !self.splits.pending.is_empty() {
            return Err((Refusal::BehindSplit, bufs));
        }
        self.counters.submitted += 1;
        self.counters.without_command += 1;
        self.deliver(tag, Outcome::Success, bufs, 0);
        Ok(())
    }

    /// A new request may be accepted: nothing waits ahead of it and a tracker and an SQ
    /// slot are free.
    #[inline]
    fn admit<E>(&self) -> Result<(), Refusal<E>> {
        if !self.splits.pending.is_empty() {
            return Err(Refusal::BehindSplit);
        }
        if self.sq.is_full() || !self.slab.has_free() {
            return Err(Refusal::Full {
                in_flight: self.slab.busy(),
            });
        }
        Ok(())
    }

    /// Puts the entry of claimed tracker `slot` in the next SQ slot under its CID (every
    /// placement goes through here: a new request, a split child, a retry).
    #[inline]
    fn place<S: Sink>(&mut self, sink: &mut S, slot: u16, mut sqe: Sqe) {
        self.slab.trackers[slot as usize].opcode = sqe.opc;
        sqe.cid = self.slab.cid(slot).0;
        let index = self.sq.push();
        sink.write_sqe(index, &sqe);
        self.counters.commands += 1;
    }

    /// Accepts a request that goes out as `children` (from the planner) and places as
    /// many of them as there are free slots; the rest follow from [`QueuePairCore::pump`]
    /// as slots free up.
    ///
    /// # Errors
    ///
    /// [`Refusal::Full`] when not even one child could be placed, [`Refusal::BehindSplit`]
    /// when another split still waits; the buffers come back and nothing is queued.
    pub fn submit_split<S: Sink>(
        &mut self,
        sink: &mut S,
        tag: u64,
        bufs: B,
        op: SplitOp,
        segs: Vec<Segment>,
        children: Vec<Command>,
    ) -> Result<(), (Refusal<DptrError>, B)> {
        if let Err(r) = self.admit() {
            return Err((r, bufs));
        }
        debug_assert!(!children.is_empty());
        self.counters.submitted += 1;
        self.counters.split_requests += 1;
        self.splits.insert(Parent {
            tag,
            op,
            bufs,
            segs,
            children,
            next: 0,
            in_flight: 0,
            failure: None,
        });
        self.pump(sink);
        Ok(())
    }

    /// Places requests waiting for a retry, then waiting children of split requests, while
    /// slots are free, oldest first (nothing while paused).
    pub fn pump<S: Sink>(&mut self, sink: &mut S) {
        if self.paused {
            return;
        }
        while let Some(&slot) = self.retries.front() {
            if self.sq.is_full() {
                return;
            }
            self.retries.pop_front();
            let t = &mut self.slab.trackers[slot as usize];
            t.queued = false;
            let sqe = t.sqe;
            self.place(sink, slot, sqe);
        }
        while let Some(&idx) = self.splits.pending.front() {
            loop {
                let p = self.splits.get_mut(idx).expect("pending parents are live");
                if p.failure.is_some() || p.next == p.children.len() {
                    break;
                }
                if self.sq.is_full() || !self.slab.has_free() {
                    return;
                }
                let cmd = p.children[p.next];
                let op = p.op;
                let slot = self
                    .slab
                    .claim(0, idx, 0, None)
                    .expect("a free tracker (checked)");
                let p = self.splits.get_mut(idx).expect("live");
                p.next += 1;
                let dptr = if op.kind.has_data() {
                    sink.data_pointer(slot, &p.segs, &cmd)
                } else {
                    Ok(Dptr::None)
                };
                match dptr {
                    Ok(dptr) => {
                        p.in_flight += 1;
                        let sqe = child_sqe(op, &cmd, dptr);
                        if self.retry_limit > 0 {
                            // The data pointer lives in this slot's list pages, which stay
                            // the child's until it is retired: the entry can go out again.
                            let t = &mut self.slab.trackers[slot as usize];
                            t.sqe = sqe;
                            t.kept = true;
                        }
                        self.place(sink, slot, sqe);
                    }
                    Err(e) => {
                        self.slab.unclaim(slot);
                        p.failure.get_or_insert(Outcome::Unbuildable(e));
                    }
                }
            }
            self.splits.pending.pop_front();
            self.finish_split_if_done(idx);
        }
    }

    /// The SQ tail to write to the doorbell, if entries were placed since the last one.
    /// The shell writes it (after its write fence) or, if a reset intervened, drops it.
    #[inline]
    pub fn take_sq_doorbell(&mut self) -> Option<u32> {
        let tail = self.sq.take_doorbell()?;
        self.counters.sq_doorbells += 1;
        Some(tail)
    }

    /// True if entries were placed since the last SQ doorbell value was taken.
    #[inline]
    pub fn sq_doorbell_owed(&self) -> bool {
        self.sq.doorbell_owed()
    }

    // ---- completion -------------------------------------------------------------------

    /// The CQ slot the next new entry will appear in.
    #[inline]
    pub fn cq_head(&self) -> u32 {
        self.cq.head()
    }

    /// The phase bit a new entry at [`QueuePairCore::cq_head`] carries.
    #[inline]
    pub fn cq_phase(&self) -> bool {
        self.cq.phase()
    }

    /// Consumes the CQE the shell read at [`QueuePairCore::cq_head`] (its phase matched).
    /// Nothing in it is trusted until its CID names a busy slot in the same generation; its
    /// SQ head only if it is one the controller could report.
    #[inline]
    pub fn on_cqe(&mut self, cqe: Cqe) -> CqeVerdict {
        self.cq.advance();
        if cqe.sqid != self.qid.0 {
            self.counters.foreign_cqes += 1;
            return CqeVerdict::Foreign;
        }
        // Taken from every CQE of this SQ, stale ones included (invariant 3).
        if !self.sq.set_head(cqe.sqhd) {
            self.counters.bad_sq_heads += 1;
        }
        let Some(slot) = self.slab.lookup(Cid(cqe.cid)) else {
            self.counters.stale_cqes += 1;
            return CqeVerdict::Stale;
        };
        let t = &self.slab.trackers[slot as usize];
        if !cqe.status.is_success()
            && !cqe.status.dnr()
            && t.aborted.is_none()
            && self.retryable(slot)
        {
            self.requeue(slot);
            return CqeVerdict::Matched;
        }
        let outcome = if cqe.status.is_success() {
            Outcome::Success
        } else if t.aborted.is_some()
            && cqe.status.sct() == sct::GENERIC
            && cqe.status.sc() == sc::ABORT_REQUESTED
        {
            Outcome::TimedOut { opcode: t.opcode }
        } else {
            Outcome::Status {
                opcode: t.opcode,
                status: cqe.status,
            }
        };
        self.retire(slot, outcome, cqe.result);
        CqeVerdict::Matched
    }

    /// The CQ head to write to the doorbell, if entries were consumed since the last one.
    #[inline]
    pub fn take_cq_doorbell(&mut self) -> Option<u32> {
        let head = self.cq.take_doorbell()?;
        self.counters.cq_doorbells += 1;
        Some(head)
    }

    /// The next finished request.
    #[inline]
    pub fn next_delivery(&mut self) -> Option<Delivery<B>> {
        self.ready.pop_front()
    }

    /// Finished requests not taken yet.
    #[inline]
    pub fn ready(&self) -> usize {
        self.ready.len()
    }

    // ---- time and resets --------------------------------------------------------------

    /// Looks at the deadlines. A command's deadline counts from the first tick that saw it
    /// in flight, so a deadline is never early, and late by at most one tick period; the
    /// shell ticks at least every `timeout / 4`. A command past its deadline is named for an
    /// Abort once; one that has not come back a grace period after that asks for a reset.
    pub fn on_tick(&mut self, now: Stamp) -> Tick<'_> {
        self.aborts.clear();
        let grace = self
            .timeout
            .clamp(Duration::from_millis(10), Duration::from_secs(5));
        let mut reset = false;
        for slot in 0..self.slab.capacity() as u16 {
            let t = &mut self.slab.trackers[slot as usize];
            if !t.busy || t.queued {
                // Free, or waiting to be placed: not with the controller, so no deadline
                // runs (a retry's starts when it is seen in flight again).
                continue;
            }
            match (t.seen, t.aborted) {
                (None, _) => t.seen = Some(now),
                (Some(at), None) if now.since(at) > self.timeout => {
                    t.aborted = Some(now);
                    self.counters.timeouts += 1;
                    let cid = self.slab.cid(slot);
                    self.aborts.push(cid);
                }
                (_, Some(at)) if now.since(at) > grace => reset = true,
                _ => {}
            }
        }
        Tick {
            aborts: &self.aborts,
            reset,
        }
    }

    /// Retires every request in flight with [`Outcome::TornDown`] (`why`), and every split
    /// still waiting, and empties the rings: the controller forgot these queues (a reset,
    /// removal, or deletion). The shell reaps the CQ first, so completions the controller
    /// had already posted are delivered as what they are. `epoch` is the reset epoch the
    /// re-created queues will belong to.
    pub fn on_teardown(&mut self, why: Teardown, epoch: u64) {
        self.counters.teardowns += 1;
        if why != Teardown::Reset {
            self.retries.clear();
        }
        for slot in 0..self.slab.capacity() as u16 {
            let t = &self.slab.trackers[slot as usize];
            if !t.busy {
                continue;
            }
            if why == Teardown::Reset && t.queued {
                continue; // already waiting to go out again, on the new queues
            }
            if why == Teardown::Reset && self.retryable(slot) {
                // The reset disabled the controller: this command is gone from it, its
                // buffers untouched from now on; it goes out again on the new queues.
                self.requeue(slot);
                continue;
            }
            let outcome = if t.queued && t.parent == NO_PARENT {
                Outcome::NotSent(why)
            } else {
                Outcome::TornDown(why)
            };
            self.retire(slot, outcome, 0);
        }
        if why != Teardown::Reset {
            for idx in self.splits.live() {
                let p = self.splits.get_mut(idx).expect("live");
                p.failure.get_or_insert(Outcome::TornDown(why));
                self.finish_split_if_done(idx);
            }
            debug_assert_eq!(self.splits.live_count(), 0);
        }
        // A reset fails a split only through its children: one in flight without tries left
        // was retired above and fails it; one with tries left waits to go out again, and
        // children not placed yet (a split accepted while paused, or waiting for slots)
        // follow from `pump` on the new queues.
        self.sq.reset();
        self.cq.reset();
        self.epoch = epoch;
    }

    /// Retires every command waiting to be placed with [`Outcome::NotSent`] (`why`): the
    /// queues could not be re-created, so they will never go out. The splits still waiting
    /// fail with them.
    pub fn fail_retries(&mut self, why: Teardown) {
        while let Some(slot) = self.retries.pop_front() {
            let t = &mut self.slab.trackers[slot as usize];
            t.queued = false;
            let outcome = if t.parent == NO_PARENT {
                Outcome::NotSent(why)
            } else {
                Outcome::TornDown(why)
            };
            self.retire(slot, outcome, 0);
        }
        for idx in self.splits.live() {
            let p = self.splits.get_mut(idx).expect("live");
            p.failure.get_or_insert(Outcome::TornDown(why));
            self.finish_split_if_done(idx);
        }
    }

    // ---- retries ----------------------------------------------------------------------

    /// A command (a request's only one, or a split's child) with tries left (its entry
    /// was kept).
    fn retryable(&self, slot: u16) -> bool {
        let t = &self.slab.trackers[slot as usize];
        t.kept && t.tries < self.retry_limit
    }

    fn requeue(&mut self, slot: u16) {
        self.slab.requeue(slot);
        self.retries.push_back(slot);
        self.counters.retries += 1;
    }

    // ---- retirement -------------------------------------------------------------------

    /// The one way a command leaves the controller's hands: its tracker is freed and its
    /// request delivered, or, for a child, its parent told.
    #[inline]
    fn retire(&mut self, slot: u16, outcome: Outcome, result: u32) {
        let r = self.slab.release(slot);
        if r.parent == NO_PARENT {
            let bufs = r.bufs.expect("a request of one command owns its buffers");
            self.deliver(r.tag, outcome, bufs, result);
            return;
        }
        let p = self
            .splits
            .get_mut(r.parent)
            .expect("a child's parent lives until its last child");
        p.in_flight -= 1;
        if !outcome.is_success() {
            p.failure.get_or_insert(outcome);
        }
        self.finish_split_if_done(r.parent);
    }

    fn finish_split_if_done(&mut self, idx: u32) {
        let done = self.splits.get_mut(idx).is_some_and(|p| p.is_done());
        if done {
            let p = self.splits.remove(idx);
            self.deliver(p.tag, p.failure.unwrap_or(Outcome::Success), p.bufs, 0);
        }
    }

    #[inline]
    fn deliver(&mut self, tag: u64, outcome: Outcome, bufs: B, result: u32) {
        if outcome.is_success() {
            self.counters.succeeded += 1;
        } else {
            self.counters.failed += 1;
        }
        self.ready.push_back(Delivery {
            tag,
            outcome,
            bufs,
            result,
        });
    }

    /// SQ indices, for tests and diagnostics: (head, tail, unconsumed).
    pub fn sq_indices(&self) -> (u32, u32, u32) {
        (self.sq.head(), self.sq.tail(), self.sq.unconsumed())
    }
}

/// The entry of one command of a read or write: a split's child, or the one command of a
/// request with metadata or PI (its MPTR and tags moved to the command's first block).
pub fn child_sqe(op: SplitOp, cmd: &Command, dptr: Dptr) -> Sqe {
    let (mptr, tags) = op.meta.for_child(cmd.slba);
    let prinfo = op.meta.prinfo;
    match op.kind {
        SplitKind::Rw => {}
        SplitKind::Verify => {
            return crate::cmd::Verify::new(op.nsid, cmd.slba, cmd.nlb)
                .protection(prinfo, tags)
                .build();
        }
        SplitKind::WriteZeroes => {
            return crate::cmd::WriteZeroes::new(op.nsid, cmd.slba, cmd.nlb)
                .fua(op.fua)
                .build();
        }
        SplitKind::Deallocate => {
            return crate::cmd::DatasetManagement::deallocate(op.nsid, cmd.nlb).build(dptr);
        }
        SplitKind::Copy => {
            return crate::cmd::Copy::new(op.nsid, cmd.slba, cmd.nlb)
                .fua(op.fua)
                .build(dptr);
        }
    }
    if op.write {
        Write::new(op.nsid, cmd.slba, cmd.nlb)
            .fua(op.fua)
            .metadata(crate::Iova(mptr))
            .protection(prinfo, tags)
            .build(dptr)
    } else {
        Read::new(op.nsid, cmd.slba, cmd.nlb)
            .fua(op.fua)
            .metadata(crate::Iova(mptr))
            .protection(prinfo, tags)
            .build(dptr)
    }
}
