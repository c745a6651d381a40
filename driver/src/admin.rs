//! The admin queue: one command at a time, submitted and waited for synchronously.
//!
//! Admin commands are rare (bring-up, queue creation, abort), so the admin queue is polled
//! under a mutex rather than run like an I/O queue pair. It shares the ring code with them.
//! A command whose answer nobody needs (an Abort) is sent without waiting: its completion
//! is reaped by the next command.

use std::time::{Duration, Instant};

use nvme_dio_dma::{Bar0, DmaBuf, DmaMemory};
use nvme_dio_queue::cmd::Dptr;
use nvme_dio_queue::queue_pair::{Delivery, DptrError, Outcome, QueuePairCore, Sink, Teardown};
use nvme_dio_queue::{Command, Cqe, PrpError, Qid, QueueSize, Segment, Sqe, regs};

use crate::error::{Error, opcode_name};
use crate::ring::{CqMem, SqMem};

/// The admin SQ/CQ pair: the same core as an I/O queue pair, driven synchronously.
#[derive(Debug)]
pub(crate) struct AdminQueue {
    core: QueuePairCore<()>,
    sq: SqMem,
    cq: CqMem,
    sq_db: usize,
    cq_db: usize,
    next_tag: u64,
    /// Completions nobody waited for: an Abort's, or one that came after its command had
    /// timed out.
    pub(crate) late: u64,
    /// Asynchronous Event Requests outstanding (tags from [`AER_TAG`] up).
    pub(crate) aers: u32,
    /// Completion DW0s of AERs that completed successfully, not yet handed out.
    pub(crate) events: Vec<u32>,
}

/// Tags of Asynchronous Event Requests: never those of `execute` (which counts up from 0).
const AER_TAG: u64 = 1 << 63;

/// The admin queue's sink: entries only (admin commands carry their own data pointer).
struct AdminSink<'a>(&'a SqMem);

impl Sink for AdminSink<'_> {
    fn write_sqe(&mut self, index: u32, sqe: &Sqe) {
        self.0.write(index, sqe);
    }

    fn data_pointer(&mut self, _: u16, _: &[Segment], _: &Command) -> Result<Dptr, DptrError> {
        // Admin commands are never split.
        Err(DptrError::Prp(PrpError::ZeroLength))
    }
}

impl AdminQueue {
    pub(crate) fn new(
        mem: &DmaMemory,
        size: QueueSize,
        page: usize,
        dstrd: u8,
    ) -> Result<AdminQueue, Error> {
        let sq = mem.alloc(size.entries() as usize * SqMem::ENTRY_BYTES, page)?;
        let cq = mem.alloc(size.entries() as usize * CqMem::ENTRY_BYTES, page)?;
        Ok(AdminQueue {
            // Deadlines are the caller's (`execute`'s timeout), not the core's.
            core: QueuePairCore::new(Qid::ADMIN, size, Duration::MAX, 0),
            sq: SqMem::new(sq, size),
            cq: CqMem::new(cq, size),
            sq_db: regs::sq_tail_doorbell(Qid::ADMIN, dstrd),
            cq_db: regs::cq_head_doorbell(Qid::ADMIN, dstrd),
            next_tag: 0,
            late: 0,
            aers: 0,
            events: Vec::new(),
        })
    }

    /// Forgets ring state after the controller was disabled (the rings are re-programmed).
    pub(crate) fn reset(&mut self) {
        self.sq.clear();
        self.cq.clear();
        self.core.on_teardown(Teardown::Reset, 0);
        while self.core.next_delivery().is_some() {}
        // The controller forgot its AERs with its queues: the caller arms new ones.
        self.aers = 0;
    }

    /// Submits Asynchronous Event Requests until `want` are outstanding (they complete
    /// only when an event occurs, and each holds an admin slot meanwhile).
    ///
    /// Then it waits for one ordinary admin command (Get Features, Number of Queues): an
    /// AER never completes, so nothing else says the controller has fetched its entry, and
    /// a controller dropped right after (its admin SQ unmapped) would then read freed
    /// memory. That command's completion reports an SQ head past the AERs: they were
    /// consumed. (Seen in the VM suite: QEMU fetched an AER entry after the controller was
    /// dropped, an IOMMU fault and CSTS.CFS.)
    pub(crate) fn arm_aers<B: Bar0>(&mut self, bar: &B, want: u32, timeout: Duration) {
        let mut placed = false;
        while self.aers < want {
            let sqe = nvme_dio_queue::cmd::AsyncEventRequest::new().build();
            let tag = AER_TAG | self.next_tag;
            self.next_tag += 1;
            let r = self.core.submit(&mut AdminSink(&self.sq), tag, (), |_, _| {
                Ok::<_, std::convert::Infallible>(sqe)
            });
            if r.is_err() {
                break; // the ring is full: fewer AERs, events still come through them
            }
            self.aers += 1;
            placed = true;
        }
        if placed && let Some(tail) = self.core.take_sq_doorbell() {
            nvme_dio_dma::barrier::wmb();
            bar.write32(self.sq_db, tail);
        }
        if placed {
            let fence = nvme_dio_queue::cmd::GetFeatures::number_of_queues().build();
            let _ = self.execute(bar, fence, timeout);
        }
    }

    /// A delivery that is not the command `execute` waits for.
    fn route_other(&mut self, tag: u64, outcome: &Outcome, result: u32) {
        if tag & AER_TAG == 0 {
            self.late += 1;
            return;
        }
        self.aers = self.aers.saturating_sub(1);
        // An AER that failed (Abort Requested when the controller is reset, AER Limit
        // Exceeded) carries no event.
        if matches!(outcome, Outcome::Success) {
            self.events.push(result);
        }
    }

    /// Never frees the rings (the controller may still write them).
    pub(crate) fn leak(&mut self) {
        self.sq.leak();
        self.cq.leak();
    }

    pub(crate) fn sq_iova(&self) -> u64 {
        self.sq.iova()
    }

    pub(crate) fn cq_iova(&self) -> u64 {
        self.cq.iova()
    }

    /// Reaps every completion posted so far and writes the CQ head doorbell once. The one
    /// for `want` comes back with its CQE; every other one goes to `route_other` (an AER's
    /// event, an Abort's answer, a late answer).
    pub(crate) fn reap<B: Bar0>(
        &mut self,
        bar: &B,
        want: Option<u64>,
    ) -> Option<(Delivery<()>, Cqe)> {
        let mut found = None;
        while let Some(cqe) = self.cq.read_new(self.core.cq_head(), self.core.cq_phase()) {
            self.core.on_cqe(cqe);
            while let Some(d) = self.core.next_delivery() {
                if found.is_none() && Some(d.tag) == want {
                    found = Some((d, cqe));
                } else {
                    self.route_other(d.tag, &d.outcome, d.result);
                }
            }
        }
        if let Some(head) = self.core.take_cq_doorbell() {
            bar.write32(self.cq_db, head);
        }
        found
    }

    /// Places `sqe` and rings the doorbell; returns its tag. `None` if the queue is full:
    /// every slot holds a command that never came back.
    fn start<B: Bar0>(&mut self, bar: &B, sqe: Sqe) -> Option<u64> {
        let tag = self.next_tag;
        self.next_tag += 1;
        self.core
            .submit(&mut AdminSink(&self.sq), tag, (), |_, _| {
                Ok::<_, std::convert::Infallible>(sqe)
            })
            .ok()?;
        if let Some(tail) = self.core.take_sq_doorbell() {
            nvme_dio_dma::barrier::wmb();
            bar.write32(self.sq_db, tail);
        }
        Some(tag)
    }

    /// Sends `sqe` without waiting for its completion (the next command reaps it). False
    /// if it could not be placed.
    pub(crate) fn send<B: Bar0>(&mut self, bar: &B, sqe: Sqe) -> bool {
        self.reap(bar, None);
        self.start(bar, sqe).is_some()
    }

    /// Submits `sqe` and waits up to `timeout` for its completion.
    ///
    /// # Errors
    ///
    /// [`Error::Command`] with the device's status, [`Error::AdminTimeout`] if no completion
    /// came (or the ring is full of commands that never came back), [`Error::DeviceGone`]
    /// if CSTS reads all ones while waiting.
    pub(crate) fn execute<B: Bar0>(
        &mut self,
        bar: &B,
        sqe: Sqe,
        timeout: Duration,
    ) -> Result<Cqe, Error> {
        let opc = sqe.opc;
        let timed_out = || Error::AdminTimeout {
            opcode_name: opcode_name(true, opc),
            after: timeout,
        };
        self.reap(bar, None);
        // Full: every slot holds a command that timed out and never came back.
        let tag = self.start(bar, sqe).ok_or_else(timed_out)?;
        let start = Instant::now();
        let mut spins = 0u32;
        loop {
            if let Some((d, cqe)) = self.reap(bar, Some(tag)) {
                return match d.outcome {
                    Outcome::Success => Ok(Cqe {
                        result: d.result,
                        ..cqe
                    }),
                    Outcome::Status { opcode, status } => Err(Error::Command {
                        qid: 0,
                        opcode,
                        opcode_name: opcode_name(true, opcode),
                        status,
                    }),
                    _ => Err(timed_out()),
                };
            }
            spins += 1;
            if spins % 1024 == 0 {
                // All ones, confirmed by reading again (see `regio::read32`).
                crate::regio::read32(bar, regs::CSTS)?;
                if start.elapsed() > timeout {
                    return Err(timed_out());
                }
                std::thread::yield_now();
            }
        }
    }

    /// Executes a command that transfers one page or less into `buf` (Identify, Get Log Page).
    pub(crate) fn execute_with_buf<B: Bar0>(
        &mut self,
        bar: &B,
        build: impl FnOnce(nvme_dio_queue::cmd::Dptr) -> Sqe,
        buf: &DmaBuf,
        timeout: Duration,
    ) -> Result<Cqe, Error> {
        let dptr = nvme_dio_queue::cmd::Dptr::Prp {
            prp1: buf.iova(),
            prp2: 0,
        };
        self.execute(bar, build(dptr), timeout)
    }
}
