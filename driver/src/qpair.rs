//! I/O queue pairs: the submission path (iovec set -> plan -> SQE -> SQ slot -> doorbell) and
//! the completion path (CQ slot -> tracker -> [`Completion`]).
//!
//! A queue pair is owned by one thread: it is `Send` but not `Sync`, and every method takes
//! `&mut self`, so no lock sits on the I/O path.
//!
//! ## Doorbells: submit many, ring once
//!
//! Submitting writes the entry into the SQ but does not ring the doorbell. The doorbell is
//! written once per batch: by [`IoQueuePair::ring`], or at the start of
//! [`IoQueuePair::poll`] / [`IoQueuePair::wait`]. Call one of them after submitting.
//!
//! ## Completions
//!
//! Every accepted request completes exactly once, as a [`Completion`] carrying the caller's
//! tag, the result and the request's buffers. A database loop calls `poll()` and then drains
//! `next_completion()` (or uses [`IoQueuePair::completions`]). Completions are collected
//! before the CQ head doorbell is written and handed out after it, so resubmitting from the
//! completion loop can never overrun the completion queue.
//!
//! A submit call either accepts the request (`Ok`) or refuses it with its buffers handed
//! back ([`Rejected`]); nothing is queued on a refusal.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use nvme_dio_dma::{Bar0, DmaBuf, PciFunction};
use nvme_dio_queue::cmd::{DatasetManagement, Dptr, DsmRange, Flush, Read, Write, WriteZeroes};
use nvme_dio_queue::plan::{self, Command, Plan};
use nvme_dio_queue::prp::{self, PrpListPages, Segment};
use nvme_dio_queue::regs::Csts;
use nvme_dio_queue::sgl;
use nvme_dio_queue::status::{sc, sct};
use nvme_dio_queue::{Cqe, Iova, Lba, Qid, QueueSize, Sqe, opcode, regs};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::poll::PollContext;

use crate::controller::{DEAD, GONE, LIVE, Shared};
use crate::error::{Error, opcode_name};
use crate::namespace::Namespace;
use crate::ring::{CqRing, SqRing};

/// How a queue pair learns about completions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CompletionMode {
    /// The caller polls the completion queue (lowest latency; burns the core).
    #[default]
    Poll,
    /// The queue pair's MSI-X vector signals an eventfd; [`IoQueuePair::wait`] sleeps on it.
    Interrupt,
}

/// Queue pair settings.
#[derive(Clone, Debug)]
pub struct QueuePairOptions {
    /// Entries in the SQ and in the CQ (capped at CAP.MQES). One slot stays empty, so
    /// `entries - 1` requests can be in flight.
    pub entries: u32,
    /// Poll or interrupt completion.
    pub mode: CompletionMode,
    /// A command still in flight after this long is aborted and completes with
    /// [`Error::Timeout`].
    pub timeout: Duration,
}

impl Default for QueuePairOptions {
    fn default() -> Self {
        QueuePairOptions {
            entries: 256,
            mode: CompletionMode::Poll,
            timeout: Duration::from_secs(30),
        }
    }
}

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

impl Rejected {
    fn new(error: Error, bufs: Bufs) -> Rejected {
        Rejected {
            error: Box::new(error),
            bufs,
        }
    }
}

impl Bufs {
    /// Marks every buffer to be leaked when dropped (the device may still write it).
    fn leak_on_drop(&mut self) {
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

/// Per queue pair counters.
#[derive(Clone, Debug, Default)]
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

const NO_PARENT: u32 = u32::MAX;

/// Polls between two looks at the deadlines (and the clock).
const SCAN_EVERY_POLLS: u32 = 1024;

/// One SQ slot's bookkeeping (SPDK's tracker): it owns the request's buffers and its PRP
/// list page until the completion is delivered.
#[derive(Debug)]
struct Tracker {
    busy: bool,
    /// When the command passed its deadline and was aborted.
    timed_out_at: Option<Instant>,
    opc: u8,
    /// Bumped on every use; the CID carries it so a stale CQE cannot match a reused slot.
    generation: u16,
    parent: u32,
    tag: u64,
    bufs: Bufs,
    submitted: Option<Instant>,
    /// PRP list / SGL descriptor pages, allocated once, IOVA cached in the buffer.
    list: DmaBuf,
}

/// A request that was split into several commands.
#[derive(Debug)]
struct Parent {
    tag: u64,
    opc: u8,
    fua: bool,
    nsid: u32,
    bufs: Bufs,
    segs: Vec<Segment>,
    children: Vec<Command>,
    next_child: usize,
    in_flight: u32,
    error: Option<Error>,
}

struct ListPages<'a> {
    buf: &'a DmaBuf,
    page: usize,
    pages: usize,
}

impl PrpListPages for ListPages<'_> {
    #[inline]
    fn page(&mut self, n: usize) -> Option<Iova> {
        (n < self.pages).then(|| Iova(self.buf.iova() + (n * self.page) as u64))
    }
    #[inline]
    fn set(&mut self, n: usize, i: usize, entry: u64) {
        self.buf.write_u64(n * self.page + i * 8, entry);
    }
}

struct IrqWait {
    fd: Arc<EventFd>,
    poll: PollContext<u32>,
}

impl std::fmt::Debug for IrqWait {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IrqWait")
    }
}

/// An I/O submission/completion queue pair, owned by one thread.
#[derive(Debug)]
pub struct IoQueuePair<D: PciFunction> {
    // Hot: touched on every I/O.
    sq: SqRing,
    cq: CqRing,
    sq_db: usize,
    cq_db: usize,
    shared: Arc<Shared<D>>,
    trackers: Vec<Tracker>,
    free: Vec<u16>,
    slot_bits: u32,
    /// The DMA address space of this controller: buffers must come from it.
    domain: usize,
    ready: VecDeque<Completion>,
    /// Slots submitted since the last doorbell: stamped with the doorbell's time.
    unstamped: Vec<u16>,
    scratch: Vec<Segment>,
    stats: QueueStats,
    // Cold: splits, timeouts, interrupts.
    parents: Vec<Option<Parent>>,
    free_parents: Vec<u32>,
    /// Split requests with children still to submit, oldest first.
    pending: VecDeque<u32>,
    qid: Qid,
    size: QueueSize,
    vector: Option<u16>,
    /// The controller reset epoch this queue pair's queues belong to.
    epoch: u64,
    /// Set when the queues could not be re-created after a reset.
    lost: Option<String>,
    polls_since_scan: u32,
    page: usize,
    list_pages: usize,
    timeout: Duration,
    last_scan: Instant,
    irq: Option<IrqWait>,
    mode: CompletionMode,
}

impl<D: PciFunction> IoQueuePair<D> {
    pub(crate) fn new(
        shared: Arc<Shared<D>>,
        qid: Qid,
        size: QueueSize,
        (sq_mem, cq_mem): (DmaBuf, DmaBuf),
        irq: Option<Arc<EventFd>>,
        epoch: u64,
        opts: QueuePairOptions,
    ) -> Result<IoQueuePair<D>, Error> {
        let slots = size.entries() - 1;
        let page = shared.page.bytes();
        let list_pages = shared.prp_list_pages;
        // All list pages in one allocation, sliced per tracker, mapped once.
        let mut trackers = Vec::with_capacity(slots as usize);
        for _ in 0..slots {
            let list = shared.mem.alloc(page * list_pages, page)?;
            trackers.push(Tracker {
                busy: false,
                timed_out_at: None,
                opc: 0,
                generation: 0,
                parent: NO_PARENT,
                tag: 0,
                bufs: Bufs::None,
                submitted: None,
                list,
            });
        }
        let irq_vector = irq.as_ref().map(|_| qid.0);
        let irq = match irq {
            None => None,
            Some(fd) => {
                let poll = PollContext::new().map_err(|e| Error::Wait(e.into()))?;
                poll.add(fd.as_ref(), 0u32)
                    .map_err(|e| Error::Wait(e.into()))?;
                Some(IrqWait { fd, poll })
            }
        };
        let domain = shared.mem.domain();
        let slot_bits = u32::BITS - (slots.max(2) - 1).leading_zeros();
        let dstrd = shared.dstrd;
        let now = Instant::now();
        Ok(IoQueuePair {
            sq: SqRing::new(sq_mem, size),
            cq: CqRing::new(cq_mem, size),
            sq_db: regs::sq_tail_doorbell(qid, dstrd),
            cq_db: regs::cq_head_doorbell(qid, dstrd),
            shared,
            trackers,
            free: (0..slots as u16).rev().collect(),
            slot_bits,
            domain,
            ready: VecDeque::with_capacity(slots as usize),
            unstamped: Vec::with_capacity(slots as usize),
            scratch: Vec::new(),
            stats: QueueStats::default(),
            parents: Vec::new(),
            free_parents: Vec::new(),
            pending: VecDeque::new(),
            qid,
            size,
            vector: irq_vector,
            epoch,
            lost: None,
            polls_since_scan: 0,
            page,
            list_pages,
            timeout: opts.timeout,
            last_scan: now,
            irq,
            mode: opts.mode,
        })
    }

    /// The queue identifier.
    pub fn qid(&self) -> Qid {
        self.qid
    }

    /// The completion mode chosen at creation.
    pub fn mode(&self) -> CompletionMode {
        self.mode
    }

    /// Requests that can be in flight at once.
    pub fn capacity(&self) -> usize {
        self.trackers.len()
    }

    /// Commands in flight (the device owns their slots).
    pub fn outstanding(&self) -> usize {
        self.trackers.len() - self.free.len()
    }

    /// Counters since creation.
    pub fn stats(&self) -> &QueueStats {
        &self.stats
    }

    /// The interrupt eventfd of an interrupt-mode queue pair, for an external reactor
    /// (epoll, tokio's `AsyncFd`): when it is readable, call [`IoQueuePair::poll`].
    pub fn eventfd(&self) -> Option<&EventFd> {
        self.irq.as_ref().map(|i| i.fd.as_ref())
    }

    // ---- submission -------------------------------------------------------------------

    /// Reads `buf.len()` bytes starting at block `lba` into `buf`.
    ///
    /// The buffer moves into the request and comes back in its [`Completion`], so it cannot
    /// be freed or touched while the device owns it:
    ///
    /// ```compile_fail,E0382
    /// fn f<D: nvme_dio::PciFunction>(
    ///     qp: &mut nvme_dio::IoQueuePair<D>,
    ///     ns: &nvme_dio::Namespace,
    ///     buf: nvme_dio::DmaBuf,
    /// ) {
    ///     qp.read(ns, nvme_dio::Lba(0), buf, 1).unwrap();
    ///     drop(buf); // the request owns it until it completes
    /// }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Rejected`] (with `buf` inside) if the request is invalid or the queue is full.
    #[inline]
    pub fn read(
        &mut self,
        ns: &Namespace,
        lba: Lba,
        buf: DmaBuf,
        tag: u64,
    ) -> Result<(), Rejected> {
        self.rw(ns, lba, Bufs::One(buf), tag, opcode::nvm::READ, false)
    }

    /// Writes `buf` to the blocks starting at `lba`.
    ///
    /// # Errors
    ///
    /// [`Rejected`] (with `buf` inside) if the request is invalid or the queue is full.
    #[inline]
    pub fn write(
        &mut self,
        ns: &Namespace,
        lba: Lba,
        buf: DmaBuf,
        tag: u64,
    ) -> Result<(), Rejected> {
        self.rw(ns, lba, Bufs::One(buf), tag, opcode::nvm::WRITE, false)
    }

    /// Writes `buf` with Force Unit Access: durable when it completes.
    ///
    /// # Errors
    ///
    /// As [`IoQueuePair::write`].
    pub fn write_fua(
        &mut self,
        ns: &Namespace,
        lba: Lba,
        buf: DmaBuf,
        tag: u64,
    ) -> Result<(), Rejected> {
        self.rw(ns, lba, Bufs::One(buf), tag, opcode::nvm::WRITE, true)
    }

    /// Reads into an iovec set, in order, starting at `lba`.
    ///
    /// # Errors
    ///
    /// [`Rejected`] (with the buffers inside) if the request is invalid or the queue is full.
    pub fn readv(
        &mut self,
        ns: &Namespace,
        lba: Lba,
        bufs: Vec<DmaBuf>,
        tag: u64,
    ) -> Result<(), Rejected> {
        self.rw(ns, lba, Bufs::Many(bufs), tag, opcode::nvm::READ, false)
    }

    /// Writes an iovec set, in order, starting at `lba`.
    ///
    /// # Errors
    ///
    /// [`Rejected`] (with the buffers inside) if the request is invalid or the queue is full.
    pub fn writev(
        &mut self,
        ns: &Namespace,
        lba: Lba,
        bufs: Vec<DmaBuf>,
        tag: u64,
    ) -> Result<(), Rejected> {
        self.rw(ns, lba, Bufs::Many(bufs), tag, opcode::nvm::WRITE, false)
    }

    /// Writes an iovec set with Force Unit Access.
    ///
    /// # Errors
    ///
    /// As [`IoQueuePair::writev`].
    pub fn writev_fua(
        &mut self,
        ns: &Namespace,
        lba: Lba,
        bufs: Vec<DmaBuf>,
        tag: u64,
    ) -> Result<(), Rejected> {
        self.rw(ns, lba, Bufs::Many(bufs), tag, opcode::nvm::WRITE, true)
    }

    /// Flushes the volatile write cache of the namespace.
    ///
    /// # Errors
    ///
    /// [`Rejected`] if the queue is full or the device is gone.
    pub fn flush(&mut self, ns: &Namespace, tag: u64) -> Result<(), Rejected> {
        let sqe = Flush::new(ns.id()).build();
        self.submit_simple(sqe, tag, Bufs::None)
    }

    /// Writes zeroes to `blocks` blocks starting at `lba` (no data transfer).
    ///
    /// # Errors
    ///
    /// [`Rejected`] if the range is invalid, the command unsupported, or the queue full.
    pub fn write_zeroes(
        &mut self,
        ns: &Namespace,
        lba: Lba,
        blocks: u32,
        tag: u64,
    ) -> Result<(), Rejected> {
        let reject = |error: Error| Err(Rejected::new(error, Bufs::None));
        if !ns.supports_write_zeroes() {
            return reject(Error::NotSupported("Write Zeroes"));
        }
        if let Err(e) = check_range(ns, lba, blocks as u64, 65_536) {
            return reject(e);
        }
        let sqe = WriteZeroes::new(ns.id(), lba, blocks).build();
        self.submit_simple(sqe, tag, Bufs::None)
    }

    /// Deallocates (trims) the given ranges of `(first block, block count)`.
    ///
    /// # Errors
    ///
    /// [`Rejected`] if a range is invalid, there are more than 256 or none, the command is
    /// unsupported, the queue is full, or the range list cannot be allocated.
    pub fn deallocate(
        &mut self,
        ns: &Namespace,
        ranges: &[(Lba, u32)],
        tag: u64,
    ) -> Result<(), Rejected> {
        let reject = |error: Error| Err(Rejected::new(error, Bufs::None));
        if !ns.supports_deallocate() {
            return reject(Error::NotSupported("Dataset Management (deallocate)"));
        }
        if ranges.is_empty() || ranges.len() > 256 {
            return reject(Error::BadRequest(format!(
                "{} deallocate ranges: Dataset Management takes 1..=256 per command",
                ranges.len()
            )));
        }
        for &(lba, n) in ranges {
            if let Err(e) = check_range(ns, lba, n as u64, u32::MAX as u64) {
                return reject(e);
            }
        }
        let list = match self.shared.mem.alloc(ranges.len() * 16, self.page) {
            Ok(b) => b,
            Err(e) => return reject(e.into()),
        };
        for (i, &(lba, n)) in ranges.iter().enumerate() {
            let r = DsmRange {
                context: 0,
                nlb: n,
                slba: lba.0,
            }
            .to_bytes();
            if let Err(e) = list.copy_from_slice(i * 16, &r) {
                return reject(e.into());
            }
        }
        let sqe = DatasetManagement::deallocate(ns.id(), ranges.len() as u32).build(Dptr::Prp {
            prp1: list.iova(),
            prp2: 0,
        });
        // The range list travels as the request's buffer so it lives until completion.
        self.submit_simple(sqe, tag, Bufs::One(list))
    }

    /// Read or write of an iovec set: plan, then one command (fast path) or a split.
    #[inline]
    fn rw(
        &mut self,
        ns: &Namespace,
        lba: Lba,
        bufs: Bufs,
        tag: u64,
        opc: u8,
        fua: bool,
    ) -> Result<(), Rejected> {
        if let Err(e) = self.sync() {
            return Err(Rejected::new(e, bufs));
        }
        if !self.pending.is_empty() {
            // Keep order: nothing overtakes a split that is still waiting for slots.
            return Err(Rejected::new(
                Error::QueueFull {
                    outstanding: self.outstanding(),
                },
                bufs,
            ));
        }
        if let Err(e) = self.check_buffers(&bufs) {
            return Err(Rejected::new(e, bufs));
        }
        if ns.metadata_size() != 0 {
            // The format carries separate metadata, which would need a metadata pointer per
            // command; without one the controller would DMA it to IOVA 0.
            return Err(Rejected::new(
                Error::BadRequest(format!(
                    "namespace {} is formatted with {} bytes of metadata per block, which \
                     nvme-dio does not transfer: use a format without metadata",
                    ns.id(),
                    ns.metadata_size()
                )),
                bufs,
            ));
        }
        let one;
        let segs: &[Segment] = match &bufs {
            Bufs::One(b) => {
                one = [segment_of(b)];
                &one
            }
            Bufs::Many(v) => {
                self.scratch.clear();
                self.scratch.extend(v.iter().map(segment_of));
                &self.scratch
            }
            Bufs::None => &[],
        };
        let planned = plan::plan(segs, lba, ns.limits());
        match planned {
            Err(e) => Err(Rejected::new(plan_error(ns, e), bufs)),
            Ok(Plan::One(cmd)) => {
                let Some(slot) = take_slot(&self.sq, &mut self.free) else {
                    return Err(Rejected::new(
                        Error::QueueFull {
                            outstanding: self.outstanding(),
                        },
                        bufs,
                    ));
                };
                let dptr = match self.build_dptr(slot, segs, &cmd) {
                    Ok(d) => d,
                    Err(e) => {
                        self.free.push(slot);
                        return Err(Rejected::new(e, bufs));
                    }
                };
                let sqe = rw_sqe(opc, ns.id().0, &cmd, fua, dptr);
                self.stats.submitted += 1;
                self.place(slot, sqe, tag, NO_PARENT, bufs);
                Ok(())
            }
            Ok(Plan::Split(children)) => {
                if self.free.is_empty() {
                    return Err(Rejected::new(
                        Error::QueueFull {
                            outstanding: self.outstanding(),
                        },
                        bufs,
                    ));
                }
                let segs = segs.to_vec();
                self.stats.submitted += 1;
                self.stats.split_requests += 1;
                let parent = Parent {
                    tag,
                    opc,
                    fua,
                    nsid: ns.id().0,
                    bufs,
                    segs,
                    children,
                    next_child: 0,
                    in_flight: 0,
                    error: None,
                };
                let idx = match self.free_parents.pop() {
                    Some(i) => {
                        self.parents[i as usize] = Some(parent);
                        i
                    }
                    None => {
                        self.parents.push(Some(parent));
                        (self.parents.len() - 1) as u32
                    }
                };
                self.pending.push_back(idx);
                self.submit_pending();
                Ok(())
            }
        }
    }

    /// Every buffer must be mapped for this controller (another device's buffers have IOVAs
    /// that mean something else here) and fit a segment length.
    #[inline]
    fn check_buffers(&self, bufs: &Bufs) -> Result<(), Error> {
        let check = |index: usize, b: &DmaBuf| {
            if b.domain() != self.domain {
                return Err(Error::ForeignBuffer { index });
            }
            if b.len() > u32::MAX as usize {
                return Err(Error::BadRequest(format!(
                    "buffer {index} is {} bytes; one buffer holds at most 4 GiB - 1",
                    b.len()
                )));
            }
            Ok(())
        };
        match bufs {
            Bufs::None => Ok(()),
            Bufs::One(b) => check(0, b),
            Bufs::Many(v) => v.iter().enumerate().try_for_each(|(i, b)| check(i, b)),
        }
    }

    /// Submits an I/O command as built by the caller (a vendor command, or a test that wants
    /// the device, not the driver, to judge a request). The driver checks nothing but the
    /// buffer's origin: it sets the CID and, if `buf` is given, PRP1/PRP2 (with a PRP list in
    /// the slot's own list pages when the buffer spans more than two pages). Device errors
    /// come back in the [`Completion`] as [`Error::Command`].
    ///
    /// # Errors
    ///
    /// [`Rejected`] if the queue is full, the buffer is foreign, or it cannot be described
    /// by PRPs (not dword aligned, or larger than the list pages hold).
    pub fn submit_raw(
        &mut self,
        mut sqe: Sqe,
        buf: Option<DmaBuf>,
        tag: u64,
    ) -> Result<(), Rejected> {
        let bufs = buf.map_or(Bufs::None, Bufs::One);
        if let Err(e) = self.check_buffers(&bufs) {
            return Err(Rejected::new(e, bufs));
        }
        let (slot, bufs) = self.claim_slot(bufs)?;
        if let Bufs::One(b) = &bufs {
            let seg = [segment_of(b)];
            let mut list = ListPages {
                buf: &self.trackers[slot as usize].list,
                page: self.page,
                pages: self.list_pages,
            };
            match prp::build(&seg, self.shared.page, &mut list) {
                Ok(Dptr::Prp { prp1, prp2 }) => {
                    sqe.prp1 = prp1;
                    sqe.prp2 = prp2;
                    sqe.flags &= !nvme_dio_queue::entry::PSDT_SGL;
                }
                other => {
                    self.free.push(slot);
                    let why = match other {
                        Err(e) => e.to_string(),
                        Ok(_) => "PRP building returned no PRPs".to_string(),
                    };
                    return Err(Rejected::new(Error::BadRequest(why), bufs));
                }
            }
        }
        self.stats.submitted += 1;
        self.place(slot, sqe, tag, NO_PARENT, bufs);
        Ok(())
    }

    /// Submits a command without a planner (flush, write zeroes, deallocate).
    fn submit_simple(&mut self, sqe: Sqe, tag: u64, bufs: Bufs) -> Result<(), Rejected> {
        let (slot, bufs) = self.claim_slot(bufs)?;
        self.stats.submitted += 1;
        self.place(slot, sqe, tag, NO_PARENT, bufs);
        Ok(())
    }

    /// A free slot for one command, after catching up with any reset; refused (with the
    /// buffers) when the queue pair is full or its controller is lost.
    fn claim_slot(&mut self, bufs: Bufs) -> Result<(u16, Bufs), Rejected> {
        if let Err(e) = self.sync() {
            return Err(Rejected::new(e, bufs));
        }
        match self.take_slot() {
            // Keep order: nothing overtakes a split that is still waiting for slots.
            Some(slot) if self.pending.is_empty() => Ok((slot, bufs)),
            taken => {
                if let Some(slot) = taken {
                    self.free.push(slot);
                }
                Err(Rejected::new(
                    Error::QueueFull {
                        outstanding: self.outstanding(),
                    },
                    bufs,
                ))
            }
        }
    }

    /// Builds the data pointer for `cmd` in the slot's own list pages.
    #[inline]
    fn build_dptr(&self, slot: u16, segs: &[Segment], cmd: &Command) -> Result<Dptr, Error> {
        let mut list = ListPages {
            buf: &self.trackers[slot as usize].list,
            page: self.page,
            pages: self.list_pages,
        };
        let page = self.shared.page;
        let r = if cmd.sgl {
            sgl::build_range(segs, &cmd.segs, page, &mut list).map_err(|e| e.to_string())
        } else {
            prp::build_range(segs, &cmd.segs, page, &mut list).map_err(|e| e.to_string())
        };
        // The planner only emits commands that fit the rules and the list pages, so a
        // failure here is a driver bug; it is reported, not panicked on.
        r.map_err(|e| Error::Nonsense(format!("data pointer for a planned command: {e}")))
    }

    /// A free tracker, if the SQ also has room. With a trustworthy controller a free tracker
    /// always means a free SQ slot (trackers number `entries - 1`); a controller that
    /// reports SQ heads it should not can break that, and then this is backpressure, not an
    /// overwritten slot.
    #[inline]
    fn take_slot(&mut self) -> Option<u16> {
        take_slot(&self.sq, &mut self.free)
    }

    /// Puts `sqe` in the SQ under `slot`'s CID and records the tracker.
    #[inline]
    fn place(&mut self, slot: u16, mut sqe: Sqe, tag: u64, parent: u32, bufs: Bufs) {
        let t = &mut self.trackers[slot as usize];
        t.generation = t.generation.wrapping_add(1);
        t.busy = true;
        t.timed_out_at = None;
        t.opc = sqe.opc;
        t.parent = parent;
        t.tag = tag;
        t.bufs = bufs;
        t.submitted = None;
        sqe.cid = self.cid(slot);
        self.sq.push(&sqe);
        self.unstamped.push(slot);
        self.stats.commands += 1;
    }

    #[inline]
    fn cid(&self, slot: u16) -> u16 {
        // Low bits: the slot. High bits: the slot's generation, to catch stale CQEs.
        let generation = self.trackers[slot as usize].generation as u32;
        ((generation << self.slot_bits) | slot as u32) as u16
    }

    /// Submits waiting children of split requests while slots are free.
    fn submit_pending(&mut self) {
        while let Some(&idx) = self.pending.front() {
            while let Some(p) = self.parents[idx as usize].as_mut() {
                if p.error.is_some() || p.next_child == p.children.len() {
                    // A failed split submits no more children.
                    p.next_child = p.children.len();
                    break;
                }
                let Some(slot) = take_slot(&self.sq, &mut self.free) else {
                    return;
                };
                let cmd = p.children[p.next_child];
                p.next_child += 1;
                let (opc, fua, nsid) = (p.opc, p.fua, p.nsid);
                let segs = std::mem::take(&mut p.segs);
                let dptr = self.build_dptr(slot, &segs, &cmd);
                let p = self.parents[idx as usize].as_mut().expect("parent present");
                p.segs = segs;
                match dptr {
                    Ok(dptr) => {
                        p.in_flight += 1;
                        self.place(slot, rw_sqe(opc, nsid, &cmd, fua, dptr), 0, idx, Bufs::None);
                    }
                    Err(e) => {
                        self.free.push(slot);
                        p.error = Some(e);
                    }
                }
            }
            self.pending.pop_front();
            self.finish_parent_if_done(idx);
        }
    }

    fn finish_parent_if_done(&mut self, idx: u32) {
        let done = match &self.parents[idx as usize] {
            Some(p) => p.in_flight == 0 && p.next_child == p.children.len(),
            None => false,
        };
        if done && !self.pending.contains(&idx) {
            let p = self.parents[idx as usize].take().expect("parent present");
            self.free_parents.push(idx);
            self.deliver(Completion {
                tag: p.tag,
                result: p.error.map_or(Ok(()), Err),
                bufs: p.bufs,
            });
        }
    }

    #[inline]
    fn deliver(&mut self, c: Completion) {
        self.stats.completed += 1;
        if c.result.is_err() {
            self.stats.errors += 1;
        }
        self.ready.push_back(c);
    }

    /// Writes the SQ tail doorbell if anything was submitted since the last write.
    #[inline]
    pub fn ring(&mut self) {
        if !self.sq.doorbell_owed() {
            return;
        }
        let gate = self.shared.gate.read().unwrap_or_else(|p| p.into_inner());
        if self.shared.epoch.load(Ordering::Acquire) != self.epoch {
            // The controller was reset under us: these entries never reach it.
            drop(gate);
            self.adopt_reset();
            return;
        }
        if let Some(tail) = self.sq.take_doorbell() {
            let now = Instant::now();
            for &s in &self.unstamped {
                self.trackers[s as usize].submitted = Some(now);
            }
            self.unstamped.clear();
            self.shared.dev.bar0().write32(self.sq_db, tail);
            self.stats.sq_doorbells += 1;
        }
    }

    // ---- completion -------------------------------------------------------------------

    /// Rings the doorbell, reaps every new completion, and returns how many completions
    /// are ready to take with [`IoQueuePair::next_completion`].
    pub fn poll(&mut self) -> usize {
        if self.shared.epoch.load(Ordering::Acquire) != self.epoch {
            self.adopt_reset();
        }
        if self.shared.state.load(Ordering::Acquire) != LIVE && self.outstanding() > 0 {
            self.fail_all();
        }
        self.ring();
        self.stats.polls += 1;
        let n = self.reap();
        if n == 0 {
            self.stats.empty_polls += 1;
        }
        if !self.pending.is_empty() {
            self.submit_pending();
            self.ring();
        }
        // Deadlines are looked at every so many polls, busy or idle: reading the clock on
        // every empty poll would cost more than the poll (and much more in a VM whose clock
        // source traps), while a stuck command still shows within the scan period.
        self.polls_since_scan += 1;
        if self.polls_since_scan >= SCAN_EVERY_POLLS && self.outstanding() > 0 {
            self.polls_since_scan = 0;
            self.check_deadlines();
        }
        self.ready.len()
    }

    /// Takes the next finished request, if any (call [`IoQueuePair::poll`] to find more).
    #[inline]
    pub fn next_completion(&mut self) -> Option<Completion> {
        self.ready.pop_front()
    }

    /// Polls once and drains what is ready: `for c in qp.completions() { ... }`.
    pub fn completions(&mut self) -> std::collections::vec_deque::Drain<'_, Completion> {
        self.poll();
        self.ready.drain(..)
    }

    /// Waits up to `timeout` until at least one completion is ready; returns how many are.
    ///
    /// In interrupt mode this sleeps on the queue's MSI-X eventfd. If the wait times out,
    /// the CQ is still checked: a completion found then is a lost interrupt, counted in
    /// [`QueueStats::lost_interrupts`] and delivered. In poll mode it spins on the CQ.
    ///
    /// # Errors
    ///
    /// [`Error::Wait`] if waiting on the eventfd fails.
    pub fn wait(&mut self, timeout: Duration) -> Result<usize, Error> {
        let n = self.poll();
        if n > 0 || self.outstanding() == 0 {
            return Ok(n);
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match &self.irq {
                Some(irq) => {
                    // Wake at least every deadline-scan period so timeouts are seen.
                    let slice = left.min(Duration::from_millis(100));
                    let events = irq
                        .poll
                        .wait_timeout(slice)
                        .map_err(|e| Error::Wait(e.into()))?;
                    let woke = events.iter_readable().next().is_some();
                    if woke {
                        // Non-blocking eventfd: reading resets its counter.
                        let _ = irq.fd.read();
                    }
                    drop(events);
                    if woke {
                        self.stats.interrupts += 1;
                    }
                    let n = self.poll();
                    if n > 0 {
                        if !woke {
                            self.stats.lost_interrupts += 1;
                        }
                        return Ok(n);
                    }
                    // Sleeping polls are few: look at the deadlines after every slice.
                    self.check_deadlines();
                    if !self.ready.is_empty() {
                        return Ok(self.ready.len());
                    }
                }
                None => {
                    // Spin without reading the clock each time round (poll() looks at the
                    // deadlines itself).
                    for _ in 0..SCAN_EVERY_POLLS {
                        let n = self.poll();
                        if n > 0 || self.outstanding() == 0 {
                            return Ok(n);
                        }
                        std::hint::spin_loop();
                    }
                }
            }
            if left.is_zero() || self.outstanding() == 0 {
                return Ok(self.ready.len());
            }
        }
    }

    /// Waits up to `timeout` for every request in flight to complete and returns all the
    /// completions not taken yet: call it before dropping a queue pair that still has I/O
    /// in flight (dropping abandons it). Requests still in flight at the deadline stay so.
    ///
    /// # Errors
    ///
    /// [`Error::Wait`] if waiting on the eventfd fails.
    pub fn drain(&mut self, timeout: Duration) -> Result<Vec<Completion>, Error> {
        let deadline = Instant::now() + timeout;
        while self.outstanding() > 0 || !self.pending.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            self.wait(left.min(Duration::from_millis(100)))?;
        }
        self.poll();
        Ok(self.ready.drain(..).collect())
    }

    /// Reaps new CQEs into the ready list, then writes the CQ head doorbell once.
    #[inline]
    fn reap(&mut self) -> usize {
        let mut n = 0;
        while let Some(cqe) = self.cq.pop() {
            self.complete(cqe);
            n += 1;
        }
        if let Some(head) = self.cq.take_doorbell() {
            let _gate = self.shared.gate.read().unwrap_or_else(|p| p.into_inner());
            if self.shared.epoch.load(Ordering::Acquire) == self.epoch {
                self.shared.dev.bar0().write32(self.cq_db, head);
                self.stats.cq_doorbells += 1;
            }
        }
        n
    }

    /// Matches one CQE to its tracker. Nothing in a CQE is trusted until its CID names a
    /// slot in flight with the same generation; its SQ head only if it is one the device
    /// could report (between the last head and the last tail rung).
    #[inline]
    fn complete(&mut self, cqe: Cqe) {
        if cqe.sqid != self.qid.0 {
            self.stats.foreign_cqes += 1;
            return;
        }
        // Taken from every CQE of this SQ, stale ones included: a head learnt only from
        // matched CQEs could lag forever after a junk CQE, and the ring would fill.
        if !self.sq.set_head(cqe.sqhd) {
            self.stats.bad_sq_heads += 1;
        }
        let slot = (cqe.cid as u32 & ((1 << self.slot_bits) - 1)) as usize;
        let generation = (cqe.cid as u32 >> self.slot_bits) as u16;
        let gen_mask = (0xffffu32 >> self.slot_bits) as u16;
        match self.trackers.get(slot) {
            Some(t) if t.busy && (t.generation & gen_mask) == generation => {}
            _ => {
                self.stats.stale_cqes += 1;
                return;
            }
        }
        let t = &mut self.trackers[slot];
        t.busy = false;
        let result = if cqe.status.is_success() {
            Ok(())
        } else if t.timed_out_at.is_some()
            && cqe.status.sct() == sct::GENERIC
            && cqe.status.sc() == sc::ABORT_REQUESTED
        {
            Err(Error::Timeout {
                opcode_name: opcode_name(false, t.opc),
                after: self.timeout,
            })
        } else {
            Err(Error::Command {
                opcode: t.opc,
                opcode_name: opcode_name(false, t.opc),
                status: cqe.status,
            })
        };
        let parent = t.parent;
        let tag = t.tag;
        let bufs = std::mem::take(&mut t.bufs);
        self.free.push(slot as u16);
        if parent == NO_PARENT {
            self.deliver(Completion { tag, result, bufs });
        } else {
            let p = self.parents[parent as usize]
                .as_mut()
                .expect("child of a live parent");
            p.in_flight -= 1;
            if let Err(e) = result
                && p.error.is_none()
            {
                p.error = Some(e);
            }
            self.finish_parent_if_done(parent);
        }
    }

    /// Aborts commands past their deadline, resets the controller when an abort does not
    /// help or CSTS.CFS is set, and notices a device that has gone away.
    fn check_deadlines(&mut self) {
        let now = Instant::now();
        let period = (self.timeout / 4).clamp(Duration::from_millis(1), Duration::from_millis(100));
        if now.duration_since(self.last_scan) < period {
            return;
        }
        self.last_scan = now;
        if self.shared.dev.removal_requested() {
            self.shared.release_for_removal();
        }
        let csts = self.shared.dev.bar0().read32(regs::CSTS);
        if csts == u32::MAX {
            let _ =
                self.shared
                    .state
                    .compare_exchange(LIVE, GONE, Ordering::AcqRel, Ordering::Acquire);
        }
        if self.shared.state.load(Ordering::Acquire) != LIVE {
            self.fail_all();
            return;
        }
        let mut reset = Csts(csts).cfs();
        // An aborted command that has not come back within the grace period is stuck.
        let grace = self
            .timeout
            .clamp(Duration::from_millis(10), Duration::from_secs(5));
        for slot in 0..self.trackers.len() {
            if reset {
                break;
            }
            let t = &self.trackers[slot];
            if !t.busy {
                continue;
            }
            match (t.submitted, t.timed_out_at) {
                (Some(at), None) if now.duration_since(at) > self.timeout => {
                    self.trackers[slot].timed_out_at = Some(now);
                    self.stats.timeouts += 1;
                    let cid = self.cid(slot as u16);
                    // An aborted command completes on this CQ with Command Abort Requested
                    // and is delivered as a timeout. A controller may decline (QEMU always
                    // does): then the command gets the grace period before a reset.
                    reset = self.shared.abort(self.qid, cid).is_err();
                }
                (_, Some(at)) if now.duration_since(at) > grace => reset = true,
                _ => {}
            }
        }
        if reset {
            self.stats.resets_requested += 1;
            // A failed reset marks the controller unusable; adopt_reset fails what is in
            // flight either way.
            let _ = self.shared.reset(self.epoch);
            self.adopt_reset();
        }
    }

    /// Catches up with a controller reset: fails what was in flight (the controller dropped
    /// it when it was disabled) and re-creates this queue pair's queues.
    fn adopt_reset(&mut self) {
        self.fail_all();
        self.sq.reset();
        self.cq.reset();
        self.unstamped.clear();
        let iovas = (self.sq.iova(), self.cq.iova());
        match self
            .shared
            .create_queues(self.qid, self.size, iovas, self.vector)
        {
            Ok(epoch) => {
                self.epoch = epoch;
                self.lost = None;
            }
            Err(e) => {
                self.epoch = self.shared.epoch.load(Ordering::Acquire);
                self.lost = Some(e.to_string());
            }
        }
    }

    /// Before a submission: catch up with a reset; refuse if the controller or this queue
    /// pair's queues are lost.
    #[inline]
    fn sync(&mut self) -> Result<(), Error> {
        if self.shared.epoch.load(Ordering::Acquire) != self.epoch {
            self.adopt_reset();
        }
        self.shared.check_live()?;
        match &self.lost {
            None => Ok(()),
            Some(why) => Err(Error::QueueLost(why.clone())),
        }
    }

    /// Completes every request in flight, and every split still waiting, with the error the
    /// controller's state calls for. If the controller is dead (a reset failed, so it may
    /// still write memory) the buffers come back marked to be leaked, never reused.
    fn fail_all(&mut self) {
        let state = self.shared.state.load(Ordering::Acquire);
        let why = || match state {
            LIVE => Error::Aborted("reset"),
            GONE => Error::DeviceGone {
                register: regs::CSTS,
            },
            _ => Error::Aborted("reset, and did not come back"),
        };
        for slot in 0..self.trackers.len() {
            if !self.trackers[slot].busy {
                continue;
            }
            let t = &mut self.trackers[slot];
            t.busy = false;
            let (parent, tag, mut bufs) = (t.parent, t.tag, std::mem::take(&mut t.bufs));
            if state == DEAD {
                bufs.leak_on_drop();
            }
            self.free.push(slot as u16);
            if parent == NO_PARENT {
                self.deliver(Completion {
                    tag,
                    result: Err(why()),
                    bufs,
                });
            } else if let Some(p) = self.parents[parent as usize].as_mut() {
                p.in_flight -= 1;
                p.error.get_or_insert_with(why);
            }
        }
        self.pending.clear();
        for idx in 0..self.parents.len() as u32 {
            if let Some(p) = self.parents[idx as usize].as_mut() {
                p.next_child = p.children.len();
                p.error.get_or_insert_with(why);
                if state == DEAD {
                    p.bufs.leak_on_drop();
                }
            }
            self.finish_parent_if_done(idx);
        }
    }
}

impl<D: PciFunction> Drop for IoQueuePair<D> {
    fn drop(&mut self) {
        // Deleting the SQ makes the controller abort whatever it still holds; only then may
        // the rings, list pages and in-flight buffers be freed. If the controller does not
        // confirm the deletion it may still write them: leak them rather than hand memory
        // the device can write back to the allocator. Requests still in flight are not
        // delivered (there is no one left to deliver them to).
        if !self.shared.delete_qpair(self.qid) {
            for t in &mut self.trackers {
                t.list.leak_on_drop();
                t.bufs.leak_on_drop();
            }
            self.sq.leak();
            self.cq.leak();
        }
    }
}

/// The planner's view of a buffer (its length was checked to fit a `u32` in
/// `check_buffers`).
#[inline]
fn segment_of(b: &DmaBuf) -> Segment {
    Segment {
        iova: Iova(b.iova()),
        len: b.len() as u32,
    }
}

/// See [`IoQueuePair::take_slot`] (a free function so callers can hold other field borrows).
#[inline]
fn take_slot(sq: &SqRing, free: &mut Vec<u16>) -> Option<u16> {
    if sq.is_full() { None } else { free.pop() }
}

#[inline]
fn rw_sqe(opc: u8, nsid: u32, cmd: &Command, fua: bool, dptr: Dptr) -> Sqe {
    let nsid = nvme_dio_queue::Nsid(nsid);
    if opc == opcode::nvm::READ {
        Read::new(nsid, cmd.slba, cmd.nlb).fua(fua).build(dptr)
    } else {
        Write::new(nsid, cmd.slba, cmd.nlb).fua(fua).build(dptr)
    }
}

/// A planner refusal as the driver's error: a range past the end reads the same whichever
/// call found it.
fn plan_error(ns: &Namespace, e: plan::PlanError) -> Error {
    match e {
        plan::PlanError::OutOfRange {
            slba,
            blocks,
            ns_blocks,
        } => Error::OutOfRange {
            nsid: ns.id(),
            slba: Lba(slba),
            blocks,
            ns_blocks,
        },
        e => Error::Invalid(e),
    }
}

fn check_range(ns: &Namespace, lba: Lba, blocks: u64, max: u64) -> Result<(), Error> {
    if blocks == 0 || blocks > max {
        return Err(Error::BadRequest(format!(
            "{blocks} blocks: one command takes 1..={max}"
        )));
    }
    if lba
        .0
        .checked_add(blocks)
        .is_none_or(|end| end > ns.blocks())
    {
        return Err(Error::OutOfRange {
            nsid: ns.id(),
            slba: lba,
            blocks,
            ns_blocks: ns.blocks(),
        });
    }
    Ok(())
}
