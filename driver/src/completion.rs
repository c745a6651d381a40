//! What comes back from a queue pair: [`Completion`]s (with the request's [`Bufs`]),
//! [`Rejected`] submissions, the [`Completions`] iterator and the counters.

use std::time::Duration;

use nvme_dio_dma::{DmaBuf, PciFunction};
use nvme_dio_queue::queue_pair::{Counters, Delivery, Outcome, Teardown};

use crate::error::{AbortReason, Error, opcode_name};
use crate::qpair::IoQueuePair;

/// The buffers of a request, handed back with its completion.
#[derive(Debug, Default)]
pub enum Bufs {
    /// A request without data (flush, write zeroes).
    #[default]
    None,
    /// A single buffer (read, write).
    One(DmaBuf),
    /// An iovec set (readv, writev).
    Many(Vec<DmaBuf>),
}

impl Bufs {
    /// Marks every buffer to be leaked when dropped (the device may still write it).
    pub(crate) fn leak_on_drop(&mut self) {
        match self {
            Bufs::None => {}
            Bufs::One(b) => b.leak_on_drop(),
            Bufs::Many(v) => v.iter_mut().for_each(DmaBuf::leak_on_drop),
        }
    }

    /// The single buffer, if this was a one-buffer request.
    pub fn into_one(self) -> Option<DmaBuf> {
        match self {
            Bufs::One(b) => Some(b),
            _ => None,
        }
    }

    /// All buffers, in order.
    pub fn into_vec(self) -> Vec<DmaBuf> {
        match self {
            Bufs::None => Vec::new(),
            Bufs::One(b) => vec![b],
            Bufs::Many(v) => v,
        }
    }
}

/// A finished request.
#[derive(Debug)]
pub struct Completion {
    /// The tag the caller gave at submission.
    pub tag: u64,
    /// Success, or why it failed.
    pub result: Result<(), Error>,
    /// The request's buffers, returned to the caller.
    pub bufs: Bufs,
}

impl Completion {
    /// The core's delivery as the caller sees it. Buffers of a request the controller may
    /// still write (it was in flight when a reset failed) come back marked to be leaked,
    /// never to be reused.
    #[inline]
    pub(crate) fn from_delivery(d: Delivery<Bufs>, qid: u16, timeout: Duration) -> Completion {
        let Delivery {
            tag,
            outcome,
            mut bufs,
            ..
        } = d;
        // The success path is a move; building an error is out of line.
        let result = match outcome {
            Outcome::Success => Ok(()),
            failed => Err(failure(failed, &mut bufs, qid, timeout)),
        };
        Completion { tag, result, bufs }
    }
}

/// The error a failed delivery carries.
#[cold]
#[inline(never)]
fn failure(outcome: Outcome, bufs: &mut Bufs, qid: u16, timeout: Duration) -> Error {
    match outcome {
        Outcome::Success => unreachable!("successes are not failures"),
        Outcome::Status { opcode, status } => Error::Command {
            qid,
            opcode,
            opcode_name: opcode_name(false, opcode),
            status,
        },
        Outcome::TimedOut { opcode } => Error::Timeout {
            qid,
            opcode_name: opcode_name(false, opcode),
            after: timeout,
        },
        Outcome::Unbuildable(e) => Error::DataPointer { qid, source: e },
        Outcome::TornDown(why) => {
            if why == Teardown::Dead {
                bufs.leak_on_drop();
            }
            match why {
                Teardown::Reset => Error::Aborted(AbortReason::Reset),
                Teardown::Dead => Error::Aborted(AbortReason::ResetFailed),
                Teardown::Gone => Error::DeviceGone {
                    register: nvme_dio_queue::regs::CSTS,
                },
                Teardown::Deleted => Error::Aborted(AbortReason::QueueDeleted),
            }
        }
    }
}

/// A request refused before anything was queued; its buffers come back.
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub struct Rejected {
    /// Why it was refused (boxed: a refusal is rare, and the submit path's `Result` stays
    /// small).
    #[source]
    pub error: Box<Error>,
    /// The buffers that were passed in.
    pub bufs: Bufs,
}

impl Rejected {
    pub(crate) fn new(error: Error, bufs: Bufs) -> Rejected {
        Rejected {
            error: Box::new(error),
            bufs,
        }
    }
}

/// Per queue pair counters.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct QueueStats {
    /// Requests accepted.
    pub submitted: u64,
    /// Requests completed (success or error).
    pub completed: u64,
    /// Requests that completed with an error.
    pub errors: u64,
    /// Requests that needed more than one command.
    pub split_requests: u64,
    /// Commands placed in the SQ.
    pub commands: u64,
    /// SQ tail doorbell writes.
    pub sq_doorbells: u64,
    /// CQ head doorbell writes.
    pub cq_doorbells: u64,
    /// Calls to poll.
    pub polls: u64,
    /// Polls that found nothing.
    pub empty_polls: u64,
    /// Commands that passed their deadline.
    pub timeouts: u64,
    /// CQEs naming a CID that is not in flight (stale or duplicate): ignored.
    pub stale_cqes: u64,
    /// CQEs naming another SQ: ignored.
    pub foreign_cqes: u64,
    /// CQEs whose SQ head moved backwards or out of range.
    pub bad_sq_heads: u64,
    /// Interrupt waits that timed out but found completions (a lost interrupt, rescued).
    pub lost_interrupts: u64,
    /// Interrupt wakeups.
    pub interrupts: u64,
    /// Controller resets this queue pair asked for (stuck command or CSTS.CFS).
    pub resets_requested: u64,
}

/// The shell's own counters (the core keeps the rest).
#[derive(Clone, Debug, Default)]
pub(crate) struct ShellCounters {
    pub(crate) polls: u64,
    pub(crate) empty_polls: u64,
    pub(crate) lost_interrupts: u64,
    pub(crate) interrupts: u64,
    pub(crate) resets_requested: u64,
    /// Doorbell values dropped because a reset began first.
    pub(crate) doorbells_dropped: u64,
}

impl QueueStats {
    pub(crate) fn combine(core: &Counters, shell: &ShellCounters) -> QueueStats {
        QueueStats {
            submitted: core.submitted,
            completed: core.succeeded + core.failed,
            errors: core.failed,
            split_requests: core.split_requests,
            commands: core.commands,
            sq_doorbells: core.sq_doorbells - shell.doorbells_dropped.min(core.sq_doorbells),
            cq_doorbells: core.cq_doorbells,
            polls: shell.polls,
            empty_polls: shell.empty_polls,
            timeouts: core.timeouts,
            stale_cqes: core.stale_cqes,
            foreign_cqes: core.foreign_cqes,
            bad_sq_heads: core.bad_sq_heads,
            lost_interrupts: shell.lost_interrupts,
            interrupts: shell.interrupts,
            resets_requested: shell.resets_requested,
        }
    }
}

/// The completions ready after one poll, handed out one at a time. A completion that was
/// not yielded stays in the queue pair: breaking out of the loop, or `?` on an error, loses
/// nothing; the next [`IoQueuePair::next_completion`] or `completions()` returns the rest.
#[derive(Debug)]
pub struct Completions<'a, D: PciFunction> {
    pub(crate) qp: &'a mut IoQueuePair<D>,
}

impl<D: PciFunction> Iterator for Completions<'_, D> {
    type Item = Completion;

    #[inline]
    fn next(&mut self) -> Option<Completion> {
        self.qp.next_completion()
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = self.qp.ready();
        (n, Some(n))
    }
}
