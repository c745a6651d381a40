//! I/O queue pairs: the shell around the queue-pair core.
//!
//! Every decision (which slot, which CID, which doorbell value, which request is done, what
//! a teardown retires) is made by [`nvme_dio_queue::queue_pair::QueuePairCore`]; this file
//! does the I/O: it polls the CQ ring for new entries and feeds them to the core, writes the
//! doorbells the core says are owed (`ring.rs`), reads the clock and feeds ticks, and catches
//! up with controller resets. Submission lives in `submit.rs`, what comes back in
//! `completion.rs`.
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
//! `next_completion()` (or iterates [`IoQueuePair::completions`]). Completions are collected
//! before the CQ head doorbell is written and handed out after it, so resubmitting from the
//! completion loop can never overrun the completion queue.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use nvme_dio_dma::clock::coarse_nanos;
use nvme_dio_dma::{DmaBuf, PciFunction};
use nvme_dio_queue::queue_pair::{QueuePairCore, Stamp, Teardown};
use nvme_dio_queue::regs::Csts;
use nvme_dio_queue::{PageSize, Qid, QueueSize, Segment, regs};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::poll::PollContext;

use crate::completion::{Bufs, Completion, Completions, Quarantine, QueueStats, ShellCounters};
use crate::controller::{GONE, LIVE, Shared};
use crate::error::Error;
use crate::ring::{CqMem, Doorbells, Rung, SqMem};
use crate::submit::ListMem;

/// How a queue pair learns about completions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum CompletionMode {
    /// The caller polls the completion queue (lowest latency; burns the core).
    #[default]
    Poll,
    /// The queue pair's MSI-X vector signals an eventfd; [`IoQueuePair::wait`] sleeps on it.
    Interrupt,
    /// [`IoQueuePair::wait`] spins on the CQ for an adaptive number of polls (up to
    /// [`QueuePairOptions::hybrid_spin`]) before it arms the interrupt and sleeps: at low
    /// queue depth a completion that comes soon costs no interrupt round trip, one that
    /// comes late costs no burnt core. Needs an MSI-X vector, as `Interrupt`.
    Hybrid,
}

/// Queue pair settings. Start from `QueuePairOptions::default()` (or `with_entries`) and
/// change what you need with the setters: new options can then be added without breaking
/// callers.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct QueuePairOptions {
    /// Entries in the SQ and in the CQ (capped at CAP.MQES). One slot stays empty, so
    /// `entries - 1` requests can be in flight.
    pub entries: u32,
    /// Poll or interrupt completion.
    pub mode: CompletionMode,
    /// A command still in flight after this long is aborted and completes with
    /// [`Error::Timeout`].
    pub timeout: Duration,
    /// [`CompletionMode::Hybrid`]: the most CQ polls one wait spins before it sleeps.
    pub hybrid_spin: u32,
}

/// Retries per request a new queue pair starts with (see [`IoQueuePair::set_retries`]).
pub const DEFAULT_RETRIES: u8 = 3;

impl Default for QueuePairOptions {
    fn default() -> Self {
        QueuePairOptions {
            entries: 256,
            mode: CompletionMode::Poll,
            timeout: Duration::from_secs(30),
            hybrid_spin: DEFAULT_HYBRID_SPIN,
        }
    }
}

impl QueuePairOptions {
    /// The defaults with `entries` entries per ring.
    pub fn with_entries(entries: u32) -> QueuePairOptions {
        QueuePairOptions::default().entries(entries)
    }

    /// These options with `entries` entries per ring.
    pub fn entries(mut self, entries: u32) -> QueuePairOptions {
        self.entries = entries;
        self
    }

    /// These options with completion mode `mode`.
    pub fn mode(mut self, mode: CompletionMode) -> QueuePairOptions {
        self.mode = mode;
        self
    }

    /// These options with deadline `timeout` per command.
    pub fn timeout(mut self, timeout: Duration) -> QueuePairOptions {
        self.timeout = timeout;
        self
    }

    /// [`CompletionMode::Hybrid`]: spin at most `polls` CQ polls per wait before sleeping
    /// (0 makes it interrupt mode). The default, 8192, is a few tens of microseconds.
    pub fn hybrid_spin(mut self, polls: u32) -> QueuePairOptions {
        self.hybrid_spin = polls;
        self
    }
}

/// The default cap of a hybrid queue pair's spin, in CQ polls.
pub const DEFAULT_HYBRID_SPIN: u32 = 8192;

/// How often an idle queue pair looks at the device's health (removal, CSTS).
const IDLE_TICK: Duration = Duration::from_secs(1);

/// Polls between two looks at the deadline of a [`IoQueuePair::wait`] in poll mode.
const SPINS_PER_CLOCK_READ: u32 = 1024;

struct IrqWait {
    fd: Arc<EventFd>,
    poll: PollContext<u32>,
    /// Other queue pairs use the same vector: the eventfd is never read here (see
    /// `IrqParts`).
    shared: bool,
}

/// A queue pair's interrupt: its vector's eventfd, the epoll it sleeps in, and whether the
/// vector is shared with other queue pairs.
pub(crate) struct IrqParts {
    pub(crate) fd: Arc<EventFd>,
    pub(crate) poll: PollContext<u32>,
    pub(crate) shared: bool,
}

impl std::fmt::Debug for IrqWait {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IrqWait")
    }
}

/// What a new queue pair is made of (allocated before its queues are created, so nothing
/// can fail after the controller holds them).
pub(crate) struct Parts {
    pub(crate) qid: Qid,
    pub(crate) size: QueueSize,
    pub(crate) sq: DmaBuf,
    pub(crate) cq: DmaBuf,
    pub(crate) lists: DmaBuf,
    pub(crate) irq: Option<IrqParts>,
    pub(crate) vector: Option<u16>,
}

/// An I/O submission/completion queue pair, owned by one thread.
#[derive(Debug)]
pub struct IoQueuePair<D: PciFunction> {
    // Hot: touched on every I/O.
    pub(crate) core: QueuePairCore<Bufs>,
    pub(crate) sq: SqMem,
    pub(crate) cq: CqMem,
    pub(crate) lists: ListMem,
    doorbells: Doorbells,
    pub(crate) shared: Arc<Shared<D>>,
    /// The DMA address space of this controller: buffers must come from it.
    pub(crate) domain: usize,
    pub(crate) scratch: Vec<Segment>,
    pub(crate) counters: ShellCounters,
    pub(crate) quarantine: Quarantine,
    // Cold: time, resets, interrupts.
    pub(crate) page: PageSize,
    size: QueueSize,
    vector: Option<u16>,
    /// Set when the queues could not be re-created after a reset.
    lost: Option<Arc<Error>>,
    last_tick: Stamp,
    tick_every: Duration,
    irq: Option<IrqWait>,
    mode: CompletionMode,
    /// [`CompletionMode::Hybrid`]'s spin state.
    spin: Option<crate::hybrid::Spin>,
}

impl<D: PciFunction> IoQueuePair<D> {
    pub(crate) fn new(
        shared: Arc<Shared<D>>,
        parts: Parts,
        epoch: u64,
        opts: &QueuePairOptions,
    ) -> IoQueuePair<D> {
        let Parts {
            qid,
            size,
            sq,
            cq,
            lists,
            irq,
            vector,
        } = parts;
        let page = shared.page;
        let dstrd = shared.dstrd;
        let mut core = QueuePairCore::new(qid, size, opts.timeout, epoch);
        core.set_retries(DEFAULT_RETRIES);
        IoQueuePair {
            core,
            sq: SqMem::new(sq, size),
            cq: CqMem::new(cq, size),
            lists: ListMem::new(lists, shared.prp_list_pages, page),
            doorbells: Doorbells::new(
                qid.0,
                regs::sq_tail_doorbell(qid, dstrd),
                regs::cq_head_doorbell(qid, dstrd),
            ),
            domain: shared.mem.domain(),
            quarantine: shared.quarantine.clone(),
            shared,
            scratch: Vec::new(),
            counters: ShellCounters::default(),
            page,
            size,
            vector,
            lost: None,
            last_tick: Stamp(coarse_nanos()),
            // The core's deadlines are late by at most one tick period.
            tick_every: (opts.timeout / 4)
                .clamp(Duration::from_millis(1), Duration::from_millis(100)),
            irq: irq.map(|p| IrqWait {
                fd: p.fd,
                poll: p.poll,
                shared: p.shared,
            }),
            mode: opts.mode,
            spin: (opts.mode == CompletionMode::Hybrid)
                .then(|| crate::hybrid::Spin::new(opts.hybrid_spin)),
        }
    }

    /// The queue identifier.
    pub fn qid(&self) -> Qid {
        self.core.qid()
    }

    /// The completion mode chosen at creation.
    pub fn mode(&self) -> CompletionMode {
        self.mode
    }

    /// Requests that can be in flight at once.
    pub fn capacity(&self) -> usize {
        self.core.capacity()
    }

    /// Commands in flight (the device owns their slots).
    pub fn outstanding(&self) -> usize {
        self.core.commands_in_flight()
    }

    /// A request of one command that fails with a retryable status (DNR clear) or is
    /// dropped by a controller reset is submitted again, up to `limit` times
    /// ([`DEFAULT_RETRIES`] to begin with), before its failure is delivered: the caller sees
    /// one completion, [`QueueStats::retries`] counts the retries. 0 turns them off. Split
    /// requests are not retried. The limit applies at once; only requests submitted while
    /// retries are on can be retried (their entry is kept, 64 bytes per slot).
    pub fn set_retries(&mut self, limit: u8) {
        self.core.set_retries(limit);
    }

    /// Counters since creation.
    pub fn stats(&self) -> QueueStats {
        let mut s = QueueStats::combine(self.core.counters(), &self.counters);
        (s.vector, s.vector_shared) = match self.vector() {
            Some((v, shared)) => (Some(v), shared),
            None => (None, false),
        };
        s
    }

    /// Checks that every request accepted is delivered, failed, or still in flight, from
    /// independent counts (see the core). Tests call it while requests are in flight.
    ///
    /// # Errors
    ///
    /// The core's accounting error if the counts disagree.
    pub fn check_accounting(&self) -> Result<(), nvme_dio_queue::queue_pair::AccountingError> {
        self.core.check_accounting()
    }

    /// The MSI-X vector of an interrupt-mode queue pair, and whether other queue pairs
    /// share it (the controller has fewer vectors than queue pairs).
    pub fn vector(&self) -> Option<(u16, bool)> {
        Some((self.vector?, self.irq.as_ref()?.shared))
    }

    /// How often the queue pair looks at its deadlines while commands are in flight.
    pub(crate) fn tick_every(&self) -> Duration {
        self.tick_every
    }

    /// The interrupt eventfd of an interrupt-mode queue pair, for an external reactor
    /// (epoll, tokio's `AsyncFd`): when it is readable, call [`IoQueuePair::poll`].
    pub fn eventfd(&self) -> Option<&EventFd> {
        self.irq.as_ref().map(|i| i.fd.as_ref())
    }

    // ---- doorbells --------------------------------------------------------------------

    /// Writes the SQ tail doorbell if anything was submitted since the last write.
    #[inline]
    pub fn ring(&mut self) {
        let Some(tail) = self.core.take_sq_doorbell() else {
            return;
        };
        let s = &*self.shared;
        match self.doorbells.ring_sq(
            s.dev.bar0(),
            &s.gate,
            &s.epoch,
            self.core.epoch(),
            s.shadow.as_ref(),
            tail,
        ) {
            Rung::Mmio => {}
            Rung::ShadowOnly => self.counters.shadow_only_doorbells += 1,
            Rung::Refused => {
                // A reset began: these entries never reach the controller; catching up
                // with the reset retires them.
                self.counters.doorbells_dropped += 1;
                self.catch_up();
            }
        }
    }

    // ---- completion -------------------------------------------------------------------

    /// Rings the doorbell, reaps every new completion, and returns how many completions
    /// are ready to take with [`IoQueuePair::next_completion`].
    pub fn poll(&mut self) -> usize {
        self.catch_up();
        self.ring();
        self.counters.polls += 1;
        if self.reap() == 0 {
            self.counters.empty_polls += 1;
        }
        if self.core.splits_waiting() > 0 || self.core.retries_waiting() > 0 {
            self.pump();
        }
        self.maybe_tick();
        self.core.ready()
    }

    /// Places what waits for free slots (retries, split children) and rings the doorbell.
    fn pump(&mut self) {
        let mut placer = crate::submit::Placer {
            sq: &self.sq,
            lists: &self.lists,
        };
        self.core.pump(&mut placer);
        self.ring();
    }

    /// Takes the next finished request, if any (call [`IoQueuePair::poll`] to find more).
    #[inline]
    pub fn next_completion(&mut self) -> Option<Completion> {
        let d = self.core.next_delivery()?;
        Some(Completion::from_delivery(
            d,
            self.core.qid().0,
            self.core.timeout(),
            &self.quarantine,
            &mut self.counters.held,
        ))
    }

    /// Completions ready to take.
    pub fn ready(&self) -> usize {
        self.core.ready()
    }

    /// Polls once and hands out what is ready: `for c in qp.completions() { ... }`. A
    /// completion the loop did not take (a `break`, a `?`) stays queued for the next call.
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use nvme_dio::{Controller, ControllerOptions, Lba, MemoryOptions, QueuePairOptions};
    /// # use nvme_dio_emu::{EmuConfig, EmuFunction};
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let dev = Arc::new(EmuFunction::new(EmuConfig::default())?);
    /// # let opts = ControllerOptions::default().memory(MemoryOptions::any_pages(8 << 20));
    /// # let ctrl = Controller::new(dev, opts)?;
    /// # let ns = ctrl.namespace(1)?.clone();
    /// let mut qp = ctrl.create_io_qpair(QueuePairOptions::default())?;
    /// for lba in 0..4 {
    ///     qp.read(&ns, Lba(lba), ctrl.memory().alloc(4096, 4096)?, lba).map_err(|r| r.error)?;
    /// }
    /// let mut done = 0;
    /// while done < 4 {
    ///     qp.wait(std::time::Duration::from_secs(1))?;
    ///     for c in qp.completions() {
    ///         c.result?; // an early return leaves the rest queued, not lost
    ///         done += 1;
    ///     }
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn completions(&mut self) -> Completions<'_, D> {
        self.poll();
        Completions { qp: self }
    }

    /// Waits up to `timeout` until at least one completion is ready; returns how many are.
    /// `Duration::MAX` waits for as long as it takes.
    ///
    /// In interrupt mode this sleeps on the queue's MSI-X eventfd. If the wait times out,
    /// the CQ is still checked: a completion found then is a lost interrupt, counted in
    /// [`QueueStats::lost_interrupts`] and delivered. In poll mode it spins on the CQ.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::time::Duration;
    /// use nvme_dio::{Controller, Lba, QueuePairOptions};
    /// let ctrl = Controller::open("emu:ram:thread", |_| {})?; // completes on its own thread
    /// let ns = ctrl.namespace(1)?.clone();
    /// let mut qp = ctrl.create_io_qpair(QueuePairOptions::default())?;
    /// qp.read(&ns, Lba(0), ctrl.memory().alloc(4096, 4096)?, 7).map_err(|r| r.error)?;
    /// while qp.wait(Duration::from_secs(1))? == 0 {} // rings the doorbell, then waits
    /// let c = qp.next_completion().expect("one is ready");
    /// assert_eq!(c.tag, 7);
    /// c.result?;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::Wait`] if waiting on the eventfd fails.
    pub fn wait(&mut self, timeout: Duration) -> Result<usize, Error> {
        let n = self.poll();
        if n > 0 || self.core.requests_in_flight() == 0 {
            return Ok(n);
        }
        if self.spin.is_some()
            && let Some(n) = self.spin_then_arm()
        {
            return Ok(n);
        }
        let start = coarse_nanos();
        let limit = u64::try_from(timeout.as_nanos()).unwrap_or(u64::MAX);
        loop {
            let waited = coarse_nanos().saturating_sub(start);
            let left = Duration::from_nanos(limit.saturating_sub(waited));
            if let Some(irq) = &self.irq {
                // Wake at least once a tick period so deadlines are seen.
                let slice = left.min(self.tick_every);
                let events = irq
                    .poll
                    .wait_timeout(slice)
                    .map_err(|e| Error::Wait(e.into()))?;
                let woke = events.iter_readable().next().is_some();
                drop(events);
                if woke {
                    // Non-blocking eventfd: reading resets its counter. A shared one is left
                    // alone (edge triggered: every interrupt is a new edge for every sharer).
                    if !irq.shared {
                        let _ = irq.fd.read();
                    }
                    self.counters.interrupts += 1;
                }
                let n = self.poll();
                if n > 0 {
                    if !woke {
                        self.counters.lost_interrupts += 1;
                    }
                    return Ok(n);
                }
            } else {
                // Spin; poll() looks at the clock for deadlines itself, this loop only for
                // its own limit.
                for _ in 0..SPINS_PER_CLOCK_READ {
                    let n = self.poll();
                    if n > 0 || self.core.requests_in_flight() == 0 {
                        return Ok(n);
                    }
                    std::hint::spin_loop();
                }
            }
            if left.is_zero() || self.core.requests_in_flight() == 0 {
                return Ok(self.core.ready());
            }
        }
    }

    /// Hybrid mode, before sleeping: spin the adaptive budget of polls; if nothing came, arm
    /// (take the edges the spin's own completions left on the eventfd, then poll once more,
    /// so a completion between the last poll and the sleep is not slept through). Returns
    /// the completions ready if it found some (the wait is over), `None` to sleep.
    fn spin_then_arm(&mut self) -> Option<usize> {
        let budget = self.spin.as_ref().map_or(0, crate::hybrid::Spin::budget);
        for polls in 0..budget {
            let n = self.poll();
            if n > 0 || self.core.requests_in_flight() == 0 {
                if let Some(s) = &mut self.spin {
                    s.found(polls);
                }
                self.counters.spin_completions += 1;
                return Some(n);
            }
            std::hint::spin_loop();
        }
        if let Some(s) = &mut self.spin {
            s.slept();
        }
        if let Some(irq) = &self.irq
            && !irq.shared
        {
            let _ = irq.fd.read();
        }
        let n = self.poll();
        if n > 0 {
            return Some(n);
        }
        self.counters.sleeps += 1;
        None
    }

    /// Waits up to `timeout` for every request in flight to complete and returns all the
    /// completions not taken yet: call it before dropping a queue pair that still has I/O
    /// in flight. Requests still in flight at the deadline stay so. `Duration::MAX` waits
    /// for as long as it takes.
    ///
    /// # Errors
    ///
    /// [`Error::Wait`] if waiting on the eventfd fails.
    pub fn drain(&mut self, timeout: Duration) -> Result<Vec<Completion>, Error> {
        let start = coarse_nanos();
        let limit = u64::try_from(timeout.as_nanos()).unwrap_or(u64::MAX);
        while self.core.requests_in_flight() > 0 {
            let waited = coarse_nanos().saturating_sub(start);
            if waited >= limit {
                break;
            }
            let left = Duration::from_nanos(limit - waited);
            self.wait(left.min(Duration::from_millis(100)))?;
        }
        self.poll();
        Ok(std::iter::from_fn(|| self.next_completion()).collect())
    }

    /// Feeds every new CQE to the core, then writes the CQ head doorbell once.
    #[inline]
    fn reap(&mut self) -> usize {
        let mut n = 0;
        while let Some(cqe) = self.cq.read_new(self.core.cq_head(), self.core.cq_phase()) {
            self.core.on_cqe(cqe);
            n += 1;
        }
        if let Some(head) = self.core.take_cq_doorbell() {
            let s = &*self.shared;
            // Refused only when a reset began; the new queues start from head 0 anyway.
            let rung = self.doorbells.ring_cq(
                s.dev.bar0(),
                &s.gate,
                &s.epoch,
                self.core.epoch(),
                s.shadow.as_ref(),
                head,
            );
            if rung == Rung::ShadowOnly {
                self.counters.shadow_only_doorbells += 1;
            }
        }
        n
    }

    // ---- time -------------------------------------------------------------------------

    /// Ticks the core once a tick period, by the clock (not by counting polls): a queue
    /// polled rarely, from a reactor's timer, still sees its deadlines on time.
    #[inline]
    fn maybe_tick(&mut self) {
        let now = Stamp(coarse_nanos());
        // Idle, there are no deadlines to watch, but the device's health still is: a removal
        // or a dead controller is noticed within IDLE_TICK even by a queue pair that only
        // polls now and then.
        let every = if self.core.commands_in_flight() == 0 {
            IDLE_TICK.max(self.tick_every)
        } else {
            self.tick_every
        };
        if now.since(self.last_tick) < every {
            return;
        }
        self.last_tick = now;
        self.tick(now);
    }

    /// Looks at the device's health and the core's deadlines: Aborts for commands past
    /// theirs, a controller reset when an Abort does not help, CSTS.CFS is set, or the
    /// controller is no longer ready (CSTS.RDY = 0: it reset itself).
    fn tick(&mut self, now: Stamp) {
        let s = Arc::clone(&self.shared);
        if s.epoch.load(Ordering::Acquire) != self.core.epoch() {
            // A reset began (or ended and is not adopted yet): it owns the controller's
            // health until it settles, and our deadlines run again on the new queues.
            self.catch_up();
            return;
        }
        if s.dev.removal_requested() {
            s.release_for_removal();
        }
        // One all-ones read is not a removal (link retraining, AER/DPC recovery read so for
        // a moment): `read32` reads again before it believes it. Confirmed, the device is
        // released as for a removal request: DMA stopped (or proven not stoppable) first.
        let csts = match crate::regio::read32(s.dev.bar0(), regs::CSTS) {
            Ok(v) => v,
            Err(_) => {
                s.release_for_removal();
                0
            }
        };
        if s.state.load(Ordering::Acquire) != LIVE {
            self.catch_up();
            return;
        }
        let tick = self.core.on_tick(now);
        // CSTS.RDY = 0 on a controller we enabled: it reset itself (a power loss, a reset
        // by someone else) and holds no queue any more; Aborts would go nowhere.
        let csts = Csts(csts);
        let reset = csts.cfs() || !csts.rdy() || tick.reset;
        let aborts = if reset {
            Vec::new()
        } else {
            tick.aborts.to_vec()
        };
        for cid in aborts {
            // An aborted command completes on this CQ with Command Abort Requested and is
            // delivered as a timeout. The Abort is sent, not waited for: its own answer
            // does not matter here. A controller may decline (QEMU always does), the Abort
            // may never be answered, or the admin queue may be busy so it is not sent: in
            // every case the command gets the grace period and then a reset.
            if s.send_abort(self.core.qid(), cid.0) {
                self.counters.aborts_sent += 1;
            }
        }
        if reset {
            self.counters.resets_requested += 1;
            // A failed reset marks the controller unusable; catching up retires what is in
            // flight either way.
            let _ = s.reset(self.core.epoch());
            self.catch_up();
        }
    }

    // ---- resets -----------------------------------------------------------------------

    /// Catches up with a reset that has settled (or with a controller declared gone or
    /// dead): reaps what the controller posted before it stopped, retires everything else
    /// in flight through the core, and re-creates the queues. Returns at once, without
    /// waiting, while a reset is still running.
    pub(crate) fn catch_up(&mut self) {
        // The common case, on every poll: nothing to catch up with (two loads, no clone).
        let e = self.shared.epoch.load(Ordering::Acquire);
        if e == self.core.epoch() {
            if self.core.requests_in_flight() == 0
                || self.shared.state.load(Ordering::Acquire) == LIVE
            {
                return;
            }
        } else if !self.shared.is_settled(e) {
            return;
        }
        // The state is read only now, after the reset was seen settled: a reset publishes
        // its outcome (DEAD, GONE) before it settles. Read before, a reset that failed in
        // between would look like one that worked, and requests the device still holds
        // would be placed again and, with the queues lost, handed back.
        let state = self.shared.state.load(Ordering::Acquire);
        let s = Arc::clone(&self.shared);
        // Completions the controller posted before it was disabled are what they are
        // (Linux reaps the CQ before it cancels requests).
        self.reap();
        let why = match state {
            LIVE => Teardown::Reset,
            GONE => Teardown::Gone,
            _ => Teardown::Dead,
        };
        self.sq.clear();
        self.cq.clear();
        self.core.on_teardown(why, e);
        // Requests accepted during the reset wait in the core until the queues exist again
        // (or fail below with those dropped by the reset).
        self.core.resume();
        if state == LIVE {
            let iovas = (self.sq.iova(), self.cq.iova());
            match s.create_queues(self.core.qid(), self.size, iovas, self.vector) {
                Ok(created_in) => {
                    // Created under the admin lock, after every reset up to `created_in`.
                    self.core.on_teardown(Teardown::Reset, created_in);
                    self.lost = None;
                    // Requests the reset dropped go out again on the new queues.
                    if self.core.retries_waiting() > 0 {
                        self.pump();
                    }
                }
                // If the controller may still hold the queues (`maybe_held`), Drop's
                // deletion finds out; until it is confirmed the rings are never freed.
                Err(f) => {
                    self.lost = Some(Arc::new(f.error));
                    self.core.fail_retries(Teardown::Reset);
                }
            }
        }
    }

    /// Before a submission: catch up with a reset that has settled; refuse if the
    /// controller or this queue pair's queues are lost. While a reset is still running the
    /// request is accepted but not placed (the core is paused): the submitter never waits
    /// for a reset, and the request goes out on the re-created queues when this queue pair
    /// catches up, or fails once if they cannot be re-created.
    #[inline]
    pub(crate) fn sync(&mut self) -> Result<(), Error> {
        let s = &*self.shared;
        let e = s.epoch.load(Ordering::Acquire);
        if e != self.core.epoch() {
            if s.is_settled(e) {
                self.catch_up();
            } else {
                self.core.pause();
            }
        }
        self.shared.check_live()?;
        match &self.lost {
            None => Ok(()),
            Some(why) => Err(Error::QueueLost {
                qid: self.core.qid().0,
                source: Arc::clone(why),
            }),
        }
    }
}
