//! The admin queue: one command at a time, submitted and waited for synchronously.
//!
//! Admin commands are rare (bring-up, queue creation, abort), so the admin queue is polled
//! under a mutex rather than run like an I/O queue pair. It shares the ring code with them.

use std::time::{Duration, Instant};

use nvme_dio_dma::{Bar0, DmaBuf, DmaMemory};
use nvme_dio_queue::{Cqe, Qid, QueueSize, Sqe, regs};

use crate::error::{Error, opcode_name};
use crate::ring::{CqRing, SqRing};

/// The admin SQ/CQ pair.
#[derive(Debug)]
pub(crate) struct AdminQueue {
    sq: SqRing,
    cq: CqRing,
    sq_db: usize,
    cq_db: usize,
    next_cid: u16,
    /// Completions whose CID matched no outstanding admin command.
    pub(crate) stale: u64,
}

impl AdminQueue {
    pub(crate) fn new(
        mem: &DmaMemory,
        size: QueueSize,
        page: usize,
        dstrd: u8,
    ) -> Result<AdminQueue, Error> {
        let sq = mem.alloc(size.entries() as usize * SqRing::ENTRY_BYTES, page)?;
        let cq = mem.alloc(size.entries() as usize * CqRing::ENTRY_BYTES, page)?;
        Ok(AdminQueue {
            sq: SqRing::new(sq, size),
            cq: CqRing::new(cq, size),
            sq_db: regs::sq_tail_doorbell(Qid::ADMIN, dstrd),
            cq_db: regs::cq_head_doorbell(Qid::ADMIN, dstrd),
            next_cid: 0,
            stale: 0,
        })
    }

    /// Forgets ring state after the controller was disabled (the rings are re-programmed).
    pub(crate) fn reset(&mut self) {
        self.sq.reset();
        self.cq.reset();
    }

    pub(crate) fn sq_iova(&self) -> u64 {
        self.sq.iova()
    }

    pub(crate) fn cq_iova(&self) -> u64 {
        self.cq.iova()
    }

    /// Submits `sqe` and waits up to `timeout` for its completion.
    ///
    /// # Errors
    ///
    /// [`Error::Command`] with the device's status, [`Error::AdminTimeout`] if no completion
    /// came, [`Error::DeviceGone`] if CSTS reads all ones while waiting.
    pub(crate) fn execute<B: Bar0>(
        &mut self,
        bar: &B,
        mut sqe: Sqe,
        timeout: Duration,
    ) -> Result<Cqe, Error> {
        let cid = self.next_cid;
        self.next_cid = self.next_cid.wrapping_add(1);
        sqe.cid = cid;
        if self.sq.is_full() {
            // One command at a time: the ring can only be full if the device stopped
            // consuming; treat it like a timeout on the previous command.
            return Err(Error::AdminTimeout {
                opcode_name: opcode_name(true, sqe.opc),
                after: Duration::ZERO,
            });
        }
        self.sq.push(&sqe);
        if let Some(tail) = self.sq.take_doorbell() {
            bar.write32(self.sq_db, tail);
        }
        let start = Instant::now();
        let mut spins = 0u32;
        loop {
            while let Some(cqe) = self.cq.pop() {
                self.sq.set_head(cqe.sqhd);
                if let Some(head) = self.cq.take_doorbell() {
                    bar.write32(self.cq_db, head);
                }
                if cqe.cid != cid {
                    self.stale += 1;
                    continue;
                }
                if cqe.status.is_success() {
                    return Ok(cqe);
                }
                return Err(Error::Command {
                    opcode: sqe.opc,
                    opcode_name: opcode_name(true, sqe.opc),
                    status: cqe.status,
                });
            }
            spins += 1;
            if spins % 1024 == 0 {
                if bar.read32(regs::CSTS) == u32::MAX {
                    return Err(Error::DeviceGone {
                        register: regs::CSTS,
                    });
                }
                if start.elapsed() > timeout {
                    return Err(Error::AdminTimeout {
                        opcode_name: opcode_name(true, sqe.opc),
                        after: timeout,
                    });
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
