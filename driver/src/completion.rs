//! What comes back from a queue pair: [`Completion`]s (with the request's [`Bufs`]),
//! [`Rejected`] submissions, the [`Completions`] iterator and the counters.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use nvme_dio_dma::{DmaBuf, DmaMemory, DmaStopped, PciFunction};
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
    /// Data buffers ([`Bufs::One`] or [`Bufs::Many`]) and the separate metadata buffer
    /// ([`crate::Io::metadata`]). Boxed, so that every request without metadata moves a
    /// `Bufs` no larger than before.
    WithMetadata(Box<WithMetadata>),
}

/// A request's data buffers with its separate metadata buffer.
#[derive(Debug)]
pub struct WithMetadata {
    /// The data: [`Bufs::One`] or [`Bufs::Many`].
    pub data: Bufs,
    /// The metadata (MPTR).
    pub metadata: DmaBuf,
}

impl Bufs {
    /// True if there is no buffer.
    pub fn is_none(&self) -> bool {
        matches!(self, Bufs::None)
    }

    /// The single buffer, if this was a one-buffer request.
    #[inline]
    pub fn into_one(self) -> Option<DmaBuf> {
        match self {
            Bufs::One(b) => Some(b),
            _ => None,
        }
    }

    /// All buffers, in order: the data, then the metadata buffer if there is one.
    #[inline]
    pub fn into_vec(self) -> Vec<DmaBuf> {
        match self {
            Bufs::None => Vec::new(),
            Bufs::One(b) => vec![b],
            Bufs::Many(v) => v,
            Bufs::WithMetadata(w) => {
                let WithMetadata { data, metadata } = *w;
                let mut v = data.into_vec();
                v.push(metadata);
                v
            }
        }
    }

    /// The data buffers, in order (not the metadata buffer).
    pub fn iter(&self) -> std::slice::Iter<'_, DmaBuf> {
        match self {
            Bufs::None => [].iter(),
            Bufs::One(b) => std::slice::from_ref(b).iter(),
            Bufs::Many(v) => v.iter(),
            Bufs::WithMetadata(w) => w.data.iter(),
        }
    }

    /// The separate metadata buffer, if there is one.
    pub fn metadata(&self) -> Option<&DmaBuf> {
        match self {
            Bufs::WithMetadata(w) => Some(&w.metadata),
            _ => None,
        }
    }

    /// The data buffers (as [`Bufs::One`] / [`Bufs::Many`]) and the metadata buffer apart.
    pub fn into_parts(self) -> (Bufs, Option<DmaBuf>) {
        match self {
            Bufs::WithMetadata(w) => {
                let WithMetadata { data, metadata } = *w;
                (data, Some(metadata))
            }
            b => (b, None),
        }
    }
}

/// The quarantine rule, in one place: a buffer the device may still write is never handed
/// back to the caller or the allocator until DMA is proven stopped (the controller disabled
/// with RDY = 0 read back, bus mastering cleared, a function reset, the mapping removed).
/// Every failure path that retires requests the device may still hold (a reset that failed,
/// the device gone, a queue pair dropped whose deletion was not confirmed) goes through
/// [`Quarantine::hold`].
#[derive(Clone, Debug)]
pub(crate) struct Quarantine {
    pub(crate) mem: DmaMemory,
    /// The proof that DMA stopped, once there is one (see [`proof_code`]); 0 = none.
    pub(crate) proof: Arc<AtomicU8>,
}

/// [`DmaStopped`] as a non-zero byte, for an atomic.
pub(crate) fn proof_code(p: DmaStopped) -> u8 {
    match p {
        DmaStopped::ControllerDisabled => 1,
        DmaStopped::BusMasterCleared => 2,
        DmaStopped::FunctionReset => 3,
        DmaStopped::MappingRemoved => 4,
    }
}

impl Quarantine {
    /// How DMA was proven stopped, if it was.
    pub(crate) fn proof(&self) -> Option<DmaStopped> {
        match self.proof.load(Ordering::Acquire) {
            1 => Some(DmaStopped::ControllerDisabled),
            2 => Some(DmaStopped::BusMasterCleared),
            3 => Some(DmaStopped::FunctionReset),
            4 => Some(DmaStopped::MappingRemoved),
            _ => None,
        }
    }

    /// Records the proof and gives back every buffer held so far. Called before the state
    /// that makes queue pairs retire their requests is published.
    pub(crate) fn proven(&self, p: DmaStopped) {
        self.proof.store(proof_code(p), Ordering::Release);
        self.mem.release_quarantine(p);
    }

    /// Moves `bufs` into the quarantine unless DMA is proven stopped. Returns true if it held
    /// any buffer (`bufs` is then [`Bufs::None`]).
    pub(crate) fn hold(&self, bufs: &mut Bufs) -> bool {
        if bufs.is_none() || self.proof().is_some() {
            return false;
        }
        // A buffer of another device's memory cannot be in this one's quarantine; the DMA
        // layer leaks it then (never frees it), which keeps the rule too.
        let _ = self.mem.quarantine_all(std::mem::take(bufs).into_vec());
        true
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
    /// still write (it was in flight when a reset failed or the device went, and DMA was not
    /// proven stopped) are held by `q`, never returned; `held` counts such requests.
    #[inline]
    pub(crate) fn from_delivery(
        d: Delivery<Bufs>,
        qid: u16,
        timeout: Duration,
        q: &Quarantine,
        held: &mut u64,
    ) -> Completion {
        let Delivery {
            tag,
            outcome,
            mut bufs,
            ..
        } = d;
        // The success path is a move; building an error is out of line.
        let result = match outcome {
            Outcome::Success => Ok(()),
            failed => Err(failure(failed, &mut bufs, qid, timeout, q, held)),
        };
        Completion { tag, result, bufs }
    }
}

/// The error a failed delivery carries.
#[cold]
#[inline(never)]
fn failure(
    outcome: Outcome,
    bufs: &mut Bufs,
    qid: u16,
    timeout: Duration,
    q: &Quarantine,
    held: &mut u64,
) -> Error {
    match outcome {
        Outcome::Success => unreachable!("successes are not failures"),
        Outcome::Status { opcode, status } => {
            let opcode_name = opcode_name(false, opcode);
            match (status.sct(), status.sc()) {
                (nvme_dio_queue::status::sct::MEDIA, 0x82) => Error::GuardCheck {
                    qid,
                    opcode_name,
                    status,
                },
                (nvme_dio_queue::status::sct::MEDIA, 0x83) => Error::AppTagCheck {
                    qid,
                    opcode_name,
                    status,
                },
                (nvme_dio_queue::status::sct::MEDIA, 0x84) => Error::RefTagCheck {
                    qid,
                    opcode_name,
                    status,
                },
                _ => Error::Command {
                    qid,
                    opcode,
                    opcode_name,
                    status,
                },
            }
        }
        Outcome::TimedOut { opcode } => Error::Timeout {
            qid,
            opcode_name: opcode_name(false, opcode),
            after: timeout,
        },
        Outcome::Unbuildable(e) => Error::DataPointer { qid, source: e },
        // No controller ever held it (or the reset that dropped it stopped the one that
        // did): nothing to quarantine.
        Outcome::NotSent(why) => torn_down(why),
        Outcome::TornDown(why) => {
            let e = torn_down(why);
            // A reset disabled the controller (RDY = 0 read back) before it retired anything,
            // and a deleted queue's requests are delivered only once the deletion was
            // confirmed: only a dead or gone controller may still write.
            if matches!(why, Teardown::Dead | Teardown::Gone) && q.hold(bufs) {
                *held += 1;
                return Error::BuffersHeld {
                    qid,
                    cause: Box::new(e),
                };
            }
            e
        }
    }
}

fn torn_down(why: Teardown) -> Error {
    match why {
        Teardown::Reset => Error::Aborted(AbortReason::Reset),
        Teardown::Dead => Error::Aborted(AbortReason::ResetFailed),
        Teardown::Gone => Error::DeviceGone {
            register: nvme_dio_queue::regs::CSTS,
        },
        Teardown::Deleted => Error::Aborted(AbortReason::QueueDeleted),
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
    /// Of `sq_doorbells + cq_doorbells`, those written to the shadow doorbell only: the
    /// controller's EventIdx said it would read them there, so no MMIO write was made.
    pub shadow_only_doorbells: u64,
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
    /// [`crate::CompletionMode::Hybrid`]: waits whose completion was found while spinning.
    pub spin_completions: u64,
    /// [`crate::CompletionMode::Hybrid`]: waits that spun their whole budget, armed the
    /// interrupt and slept.
    pub sleeps: u64,
    /// Aborts sent for commands past their deadline (sent without waiting for the answer:
    /// the aborted command completes on this queue pair, and one that does not is reset).
    pub aborts_sent: u64,
    /// Failed requests whose buffers were held, not returned, because the device may still
    /// write them ([`Error::BuffersHeld`]); counted among `errors`.
    pub held: u64,
    /// Requests submitted again after a retryable status or a reset
    /// ([`IoQueuePair::set_retries`]).
    pub retries: u64,
    /// Flushes completed at once without a command: the controller has no volatile write
    /// cache, so every completed write is already durable.
    pub flushes_without_command: u64,
    /// The MSI-X vector of an interrupt-mode queue pair.
    pub vector: Option<u16>,
    /// Other queue pairs share that vector (fewer vectors than queue pairs).
    pub vector_shared: bool,
}

/// The shell's own counters (the core keeps the rest).
#[derive(Clone, Debug, Default)]
pub(crate) struct ShellCounters {
    pub(crate) polls: u64,
    pub(crate) empty_polls: u64,
    pub(crate) lost_interrupts: u64,
    pub(crate) interrupts: u64,
    pub(crate) resets_requested: u64,
    pub(crate) aborts_sent: u64,
    pub(crate) spin_completions: u64,
    pub(crate) sleeps: u64,
    /// Doorbell values dropped because a reset began first.
    pub(crate) doorbells_dropped: u64,
    /// Doorbell values written to the shadow doorbell only (no MMIO).
    pub(crate) shadow_only_doorbells: u64,
    /// Requests whose buffers were held (see [`Quarantine`]).
    pub(crate) held: u64,
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
            shadow_only_doorbells: shell.shadow_only_doorbells,
            polls: shell.polls,
            empty_polls: shell.empty_polls,
            timeouts: core.timeouts,
            stale_cqes: core.stale_cqes,
            foreign_cqes: core.foreign_cqes,
            bad_sq_heads: core.bad_sq_heads,
            lost_interrupts: shell.lost_interrupts,
            interrupts: shell.interrupts,
            resets_requested: shell.resets_requested,
            aborts_sent: shell.aborts_sent,
            spin_completions: shell.spin_completions,
            sleeps: shell.sleeps,
            held: shell.held,
            retries: core.retries,
            flushes_without_command: core.without_command,
            vector: None,
            vector_shared: false,
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
