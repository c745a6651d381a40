//! Poll groups: many queue pairs, on one or several controllers, driven by one thread.
//!
//! A database reactor owns a [`PollGroup`] and the queue pairs in it. It submits on a member
//! ([`PollGroup::qpair_mut`]), then calls [`PollGroup::poll`] / [`PollGroup::completions`]
//! (every member once) or [`PollGroup::wait`] (one wait over all of them).
//!
//! ## Hybrid completion
//!
//! [`GroupMode::Hybrid`] spins while I/O flows and sleeps when it does not: `wait` polls
//! every member until `idle_polls` group polls in a row found nothing, then arms the
//! interrupts and sleeps on ONE epoll that holds every member's MSI-X eventfd (each
//! distinct vector once), so the thread burns no CPU while the devices are idle. It wakes
//! on the first interrupt of any member, polls the whole group, and spins again.
//!
//! Arming is how the race between "the last poll found nothing" and "sleep" is closed:
//! 1. take every readiness the epoll collected while the group was spinning (a wait of
//!    zero: the eventfds are registered edge triggered, so this empties the ready list),
//! 2. poll every member once more: a completion posted before step 1 is found here,
//! 3. sleep: a completion posted after step 1 is followed by an interrupt, which is a new
//!    edge, which ends the sleep. At worst a completion found in step 2 leaves one edge
//!    behind, which costs one empty wakeup later (counted in [`GroupStats::wakeups`]).
//!
//! The eventfds are never read by the group: edge triggering sees every interrupt as a new
//! edge, which is also what a vector shared between queue pairs needs (see `qpair.rs`).
//!
//! While a member has commands in flight the sleep is cut into slices of its tick period
//! (at most 100 ms), so command deadlines and the device's health are still looked at; a
//! slice that ends with completions found is a lost interrupt, rescued and counted
//! ([`GroupStats::rescued`]), as `IoQueuePair::wait` does. With nothing in flight a slice is
//! a second (a removal is still noticed). [`GroupMode::Interrupt`] is hybrid with
//! `idle_polls: 0`; [`GroupMode::Poll`] never sleeps.
//!
//! MSI-X cannot be masked per vector through VFIO, so members raise their interrupts while
//! the group spins too (the kernel signals an eventfd that nobody waits on). Interrupt
//! coalescing (`ControllerOptions::coalescing`) makes that cheaper at depth.
//!
//! ## A reactor of its own
//!
//! [`PollGroup::waker`] gives a handle another thread can use to end a sleep (new work
//! arrived). [`PollGroup::as_raw_fd`] is the group's epoll descriptor: readable when any
//! member's interrupt fired or the waker was used, so an external reactor (tokio's
//! `AsyncFd`, an outer epoll) registers the whole group once and calls
//! [`PollGroup::poll`] when it is readable.
//!
//! ## Removal
//!
//! A member whose device goes away (or whose controller dies) fails its requests fast, as
//! alone: the group's polls and timer slices run every member's health checks, and the
//! emulator (like a real removal through VFIO) signals the eventfds so a sleeping group
//! wakes. The other members carry on; take the dead one out with [`PollGroup::remove`].

use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use nvme_dio_dma::PciFunction;
use nvme_dio_dma::clock::coarse_nanos;
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};
use vmm_sys_util::poll::{PollContext, WatchingEvents};

use crate::completion::Completion;
use crate::error::{BadOption, Error};
use crate::qpair::IoQueuePair;

/// How a group waits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum GroupMode {
    /// Spin on the completion queues; never sleep. Members may be in any completion mode.
    Poll,
    /// Sleep on the interrupts as soon as a poll finds nothing. Members must be
    /// interrupt-mode queue pairs.
    Interrupt,
    /// Spin while I/O flows; after `idle_polls` group polls in a row found nothing, arm
    /// the interrupts and sleep. Members must be interrupt-mode queue pairs.
    Hybrid {
        /// Empty group polls before sleeping. One group poll looks at every member once
        /// (tens of nanoseconds per member when nothing is there), so 10 000 with a few
        /// members is a spin of some hundreds of microseconds.
        idle_polls: u32,
    },
}

impl GroupMode {
    /// Empty polls before sleeping; `None` when the group never sleeps.
    fn idle_polls(self) -> Option<u32> {
        match self {
            GroupMode::Poll => None,
            GroupMode::Interrupt => Some(0),
            GroupMode::Hybrid { idle_polls } => Some(idle_polls),
        }
    }
}

/// A member of a [`PollGroup`]: the handle [`PollGroup::add`] gave. Never reused within a
/// group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MemberId(pub u32);

/// A queue pair the group refused; it comes back.
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub struct AddRejected<D: PciFunction> {
    /// Why it was refused.
    #[source]
    pub error: Error,
    /// The queue pair, unchanged.
    pub qp: Box<IoQueuePair<D>>,
}

/// A group's counters since creation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct GroupStats {
    /// Group polls (each looks at every member once).
    pub polls: u64,
    /// Group polls that found nothing.
    pub empty_polls: u64,
    /// Times the group armed the interrupts and went to sleep.
    pub sleeps: u64,
    /// Sleeps ended by a member's interrupt (including the empty ones a shared vector or
    /// the arming race causes).
    pub wakeups: u64,
    /// Sleeps ended by the clock (a tick slice, or the caller's timeout).
    pub timer_wakeups: u64,
    /// Sleeps ended by [`GroupWaker::wake`].
    pub woken: u64,
    /// Timer wakeups that found completions: interrupts lost, completions rescued.
    pub rescued: u64,
}

/// The counters, readable from any thread while the group's thread works (a monitoring
/// thread, or a test that waits for the group to fall asleep). One writer, so updating them
/// costs a relaxed load and store each.
#[derive(Debug, Default)]
pub struct GroupCounters {
    polls: AtomicU64,
    empty_polls: AtomicU64,
    sleeps: AtomicU64,
    wakeups: AtomicU64,
    timer_wakeups: AtomicU64,
    woken: AtomicU64,
    rescued: AtomicU64,
}

/// Adds one to a counter that only the group's thread writes.
#[inline]
fn bump(c: &AtomicU64) {
    c.store(c.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
}

impl GroupCounters {
    /// A snapshot.
    pub fn snapshot(&self) -> GroupStats {
        let l = |c: &AtomicU64| c.load(Ordering::Relaxed);
        GroupStats {
            polls: l(&self.polls),
            empty_polls: l(&self.empty_polls),
            sleeps: l(&self.sleeps),
            wakeups: l(&self.wakeups),
            timer_wakeups: l(&self.timer_wakeups),
            woken: l(&self.woken),
            rescued: l(&self.rescued),
        }
    }
}

/// Ends a [`PollGroup`]'s sleep from another thread. Cheap to clone; `Send + Sync`.
#[derive(Clone, Debug)]
pub struct GroupWaker {
    fd: Arc<EventFd>,
}

impl GroupWaker {
    /// Wakes the group if it sleeps, or makes its next sleep end at once.
    ///
    /// # Errors
    ///
    /// The `write(2)` error of the eventfd (practically never).
    pub fn wake(&self) -> std::io::Result<()> {
        self.fd.write(1)
    }
}

/// The token of the waker in the group's epoll (eventfds use their index in `fds`).
const WAKER_TOKEN: u32 = u32::MAX;

/// How long a sleep with nothing in flight lasts before the health checks run.
const IDLE_SLICE: Duration = Duration::from_secs(1);

/// Spins between two looks at the clock in [`PollGroup::wait`].
const SPINS_PER_CLOCK_READ: u32 = 256;

/// One distinct eventfd in the group's epoll and how many members use it.
#[derive(Debug)]
struct Irq {
    raw: RawFd,
    users: u32,
}

/// Queue pairs, on one or several controllers, polled together by one thread, with one
/// wait over all of them. See the [module documentation](self).
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
/// use nvme_dio::{CompletionMode, Controller, GroupMode, Lba, PollGroup, QueuePairOptions};
/// let a = Controller::open("emu:ram:thread", |_| {})?;
/// let b = Controller::open("emu:ram:thread", |_| {})?;
/// let irq = QueuePairOptions::default().mode(CompletionMode::Interrupt);
/// let mut group = PollGroup::new(GroupMode::Hybrid { idle_polls: 1000 })?;
/// let qa = group.add(a.create_io_qpair(irq.clone())?)?;
/// let qb = group.add(b.create_io_qpair(irq)?)?;
/// let (na, nb) = (a.namespace(1)?.clone(), b.namespace(1)?.clone());
/// group.qpair_mut(qa).unwrap().read(&na, Lba(0), a.memory().alloc(4096, 4096)?, 1)
///     .map_err(|r| r.error)?;
/// group.qpair_mut(qb).unwrap().read(&nb, Lba(0), b.memory().alloc(4096, 4096)?, 2)
///     .map_err(|r| r.error)?;
/// let mut tags = Vec::new();
/// while tags.len() < 2 {
///     group.wait(Duration::from_secs(5))?; // rings both doorbells, spins, then sleeps
///     while let Some((_member, c)) = group.next_completion() {
///         c.result?;
///         tags.push(c.tag);
///     }
/// }
/// tags.sort();
/// assert_eq!(tags, [1, 2]);
/// # Ok(())
/// # }
/// ```
pub struct PollGroup<D: PciFunction> {
    members: Vec<Option<IoQueuePair<D>>>,
    /// Where `next_completion` looks first (round robin, so no member starves).
    cursor: usize,
    /// Group polls in a row that found nothing.
    idle_run: u32,
    mode: GroupMode,
    epoll: PollContext<u32>,
    fds: Vec<Irq>,
    waker: Arc<EventFd>,
    counters: Arc<GroupCounters>,
}

impl<D: PciFunction> std::fmt::Debug for PollGroup<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PollGroup")
            .field("members", &self.len())
            .field("mode", &self.mode)
            .field("stats", &self.stats())
            .finish()
    }
}

impl<D: PciFunction> PollGroup<D> {
    /// An empty group that waits the way `mode` says.
    ///
    /// # Errors
    ///
    /// [`Error::Wait`] if the epoll or the waker's eventfd cannot be created.
    pub fn new(mode: GroupMode) -> Result<PollGroup<D>, Error> {
        let epoll = PollContext::new().map_err(|e| Error::Wait(e.into()))?;
        let waker = Arc::new(EventFd::new(EFD_NONBLOCK).map_err(Error::Wait)?);
        epoll
            .add(waker.as_ref(), WAKER_TOKEN)
            .map_err(|e| Error::Wait(e.into()))?;
        Ok(PollGroup {
            members: Vec::new(),
            cursor: 0,
            idle_run: 0,
            mode,
            epoll,
            fds: Vec::new(),
            waker,
            counters: Arc::new(GroupCounters::default()),
        })
    }

    /// How the group waits.
    pub fn mode(&self) -> GroupMode {
        self.mode
    }

    /// Adds `qp` to the group; submit on it through [`PollGroup::qpair_mut`].
    ///
    /// # Errors
    ///
    /// [`AddRejected`] (the queue pair comes back) with [`BadOption::GroupNeedsInterrupt`]
    /// when the group sleeps and `qp` is a poll-mode queue pair (it has no interrupt to
    /// wake the group), or [`Error::Wait`] if its eventfd cannot be added to the epoll.
    pub fn add(&mut self, qp: IoQueuePair<D>) -> Result<MemberId, AddRejected<D>> {
        if self.mode.idle_polls().is_some() {
            let Some(fd) = qp.eventfd() else {
                let error = Error::BadOption(BadOption::GroupNeedsInterrupt { qid: qp.qid().0 });
                return Err(AddRejected {
                    error,
                    qp: Box::new(qp),
                });
            };
            let raw = fd.as_raw_fd();
            if let Some(i) = self.fds.iter_mut().find(|i| i.raw == raw) {
                // A vector several members share is in the epoll once.
                i.users += 1;
            } else {
                let token = self.fds.len() as u32;
                let events = WatchingEvents::new((libc::EPOLLIN | libc::EPOLLET) as u32);
                if let Err(e) = self.epoll.add_fd_with_events(fd, events, token) {
                    let error = Error::Wait(e.into());
                    return Err(AddRejected {
                        error,
                        qp: Box::new(qp),
                    });
                }
                self.fds.push(Irq { raw, users: 1 });
            }
        }
        self.members.push(Some(qp));
        Ok(MemberId((self.members.len() - 1) as u32))
    }

    /// Takes member `id` out of the group and gives it back (`None` if there is no such
    /// member). Completions it had ready stay in it.
    pub fn remove(&mut self, id: MemberId) -> Option<IoQueuePair<D>> {
        let qp = self.members.get_mut(id.0 as usize)?.take()?;
        if let Some(fd) = qp.eventfd() {
            let raw = fd.as_raw_fd();
            if let Some(pos) = self.fds.iter().position(|i| i.raw == raw) {
                self.fds[pos].users -= 1;
                if self.fds[pos].users == 0 {
                    // Tokens are indices into `fds`; keep the slot (raw -1), so the others
                    // keep theirs. A failed delete only leaves a spurious wakeup behind.
                    let _ = self.epoll.delete(fd);
                    self.fds[pos].raw = -1;
                }
            }
        }
        Some(qp)
    }

    /// The member `id`, to submit on (`None` if there is no such member).
    pub fn qpair_mut(&mut self, id: MemberId) -> Option<&mut IoQueuePair<D>> {
        self.members.get_mut(id.0 as usize)?.as_mut()
    }

    /// The member `id`, to look at.
    pub fn qpair(&self, id: MemberId) -> Option<&IoQueuePair<D>> {
        self.members.get(id.0 as usize)?.as_ref()
    }

    /// The members, with their ids.
    pub fn members(&self) -> impl Iterator<Item = (MemberId, &IoQueuePair<D>)> {
        self.members
            .iter()
            .enumerate()
            .filter_map(|(i, m)| Some((MemberId(i as u32), m.as_ref()?)))
    }

    /// How many queue pairs are in the group.
    pub fn len(&self) -> usize {
        self.members.iter().filter(|m| m.is_some()).count()
    }

    /// True if the group has no member.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Requests in flight over all members (accepted, not yet delivered).
    pub fn in_flight(&self) -> u64 {
        self.live().map(|qp| qp.core.requests_in_flight()).sum()
    }

    /// Completions ready to take over all members.
    pub fn ready(&self) -> usize {
        self.live().map(|qp| qp.ready()).sum()
    }

    fn live(&self) -> impl Iterator<Item = &IoQueuePair<D>> {
        self.members.iter().flatten()
    }

    /// Counters since creation.
    pub fn stats(&self) -> GroupStats {
        self.counters.snapshot()
    }

    /// The counters, shared: readable from another thread while this one polls or sleeps.
    pub fn counters(&self) -> Arc<GroupCounters> {
        Arc::clone(&self.counters)
    }

    /// A handle that ends the group's sleep from another thread.
    pub fn waker(&self) -> GroupWaker {
        GroupWaker {
            fd: Arc::clone(&self.waker),
        }
    }

    /// Polls every member once (ringing its doorbell, reaping its completions, running its
    /// deadlines and health checks) and returns how many completions are ready over all.
    pub fn poll(&mut self) -> usize {
        let mut n = 0;
        for qp in self.members.iter_mut().flatten() {
            n += qp.poll();
        }
        let c = &self.counters;
        bump(&c.polls);
        if n == 0 {
            bump(&c.empty_polls);
            self.idle_run = self.idle_run.saturating_add(1);
        } else {
            self.idle_run = 0;
        }
        n
    }

    /// Takes the next completion of any member, round robin over the members, with the
    /// member it came from.
    pub fn next_completion(&mut self) -> Option<(MemberId, Completion)> {
        let len = self.members.len();
        for k in 0..len {
            let i = (self.cursor + k) % len;
            if let Some(c) = self.members[i].as_mut().and_then(|qp| qp.next_completion()) {
                self.cursor = (i + 1) % len;
                return Some((MemberId(i as u32), c));
            }
        }
        None
    }

    /// Polls once and hands out what is ready, as `IoQueuePair::completions` does: a
    /// completion not taken stays queued.
    pub fn completions(&mut self) -> impl Iterator<Item = (MemberId, Completion)> + '_ {
        self.poll();
        std::iter::from_fn(move || self.next_completion())
    }

    /// Waits up to `timeout` until at least one completion is ready on any member; returns
    /// how many are (0: the timeout passed, or [`GroupWaker::wake`] was called).
    /// `Duration::MAX` waits for as long as it takes.
    ///
    /// [`GroupMode::Poll`] spins, and returns at once when nothing is in flight. A group
    /// that sleeps spins first while `idle_polls` is not used up (hybrid), then sleeps on
    /// the members' interrupts; with nothing in flight it sleeps until the timeout or a
    /// wake (a reactor's idle).
    ///
    /// # Errors
    ///
    /// [`Error::Wait`] if waiting on the epoll fails.
    pub fn wait(&mut self, timeout: Duration) -> Result<usize, Error> {
        let n = self.poll();
        if n > 0 {
            return Ok(n);
        }
        let start = coarse_nanos();
        let limit = u64::try_from(timeout.as_nanos()).unwrap_or(u64::MAX);
        let left = || Duration::from_nanos(limit.saturating_sub(coarse_nanos() - start));
        let Some(idle_polls) = self.mode.idle_polls() else {
            // Poll mode: spin until something is ready, nothing is in flight, or time is up.
            loop {
                for _ in 0..SPINS_PER_CLOCK_READ {
                    let n = self.poll();
                    if n > 0 || self.in_flight() == 0 {
                        return Ok(n);
                    }
                    std::hint::spin_loop();
                }
                if left().is_zero() {
                    return Ok(0);
                }
            }
        };
        // Hybrid: spin while the run of empty polls is short (I/O is flowing) and something
        // is in flight; nothing in flight means nothing can complete, so sleep at once.
        let mut spins = 0u32;
        while self.idle_run < idle_polls && self.in_flight() > 0 {
            let n = self.poll();
            if n > 0 {
                return Ok(n);
            }
            spins += 1;
            if spins % SPINS_PER_CLOCK_READ == 0 && left().is_zero() {
                return Ok(0);
            }
            std::hint::spin_loop();
        }
        loop {
            // Arm (see the module documentation): forget the edges collected while
            // spinning, then look once more.
            self.epoll
                .wait_timeout(Duration::ZERO)
                .map_err(|e| Error::Wait(e.into()))?;
            let n = self.poll();
            if n > 0 {
                return Ok(n);
            }
            let left = left();
            if left.is_zero() {
                return Ok(0);
            }
            // epoll counts whole milliseconds and rounds down: round up instead, so a
            // remainder under a millisecond is one short sleep, not a spin of zero-length ones.
            let slice = ceil_ms(left.min(self.slice()));
            bump(&self.counters.sleeps);
            let (irq, woken) = {
                let events = self
                    .epoll
                    .wait_timeout(slice)
                    .map_err(|e| Error::Wait(e.into()))?;
                let mut irq = false;
                let mut woken = false;
                for e in events.iter_readable() {
                    if e.token() == WAKER_TOKEN {
                        woken = true;
                    } else {
                        irq = true;
                    }
                }
                (irq, woken)
            };
            let c = &self.counters;
            if woken {
                let _ = self.waker.read();
                bump(&c.woken);
            }
            if irq {
                bump(&c.wakeups);
            }
            if !irq && !woken {
                bump(&c.timer_wakeups);
            }
            let n = self.poll();
            if n > 0 {
                if !irq && !woken {
                    bump(&self.counters.rescued);
                }
                // I/O flows again: the next wait spins first.
                self.idle_run = 0;
                return Ok(n);
            }
            if woken {
                return Ok(0);
            }
        }
    }

    /// How long one sleep may last: the shortest tick period of a member with commands in
    /// flight (their deadlines), else a second (health checks).
    fn slice(&self) -> Duration {
        self.live()
            .filter(|qp| qp.outstanding() > 0)
            .map(|qp| qp.tick_every())
            .min()
            .unwrap_or(IDLE_SLICE)
            // epoll counts in milliseconds: never a zero-length sleep that would spin.
            .max(Duration::from_millis(1))
    }

    /// Waits up to `timeout` for every request in flight on every member to complete, and
    /// returns the completions not taken yet (as `IoQueuePair::drain`).
    ///
    /// # Errors
    ///
    /// [`Error::Wait`] if waiting fails.
    pub fn drain(&mut self, timeout: Duration) -> Result<Vec<(MemberId, Completion)>, Error> {
        let start = coarse_nanos();
        let limit = u64::try_from(timeout.as_nanos()).unwrap_or(u64::MAX);
        let mut out = Vec::new();
        while self.in_flight() > 0 {
            let waited = coarse_nanos().saturating_sub(start);
            if waited >= limit {
                break;
            }
            let left = Duration::from_nanos(limit - waited);
            self.wait(left.min(Duration::from_millis(100)))?;
            out.extend(std::iter::from_fn(|| self.next_completion()));
        }
        self.poll();
        out.extend(std::iter::from_fn(|| self.next_completion()));
        Ok(out)
    }
}

/// `d` rounded up to whole milliseconds.
fn ceil_ms(d: Duration) -> Duration {
    Duration::from_millis(u64::try_from(d.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX))
}

impl<D: PciFunction> AsRawFd for PollGroup<D> {
    /// The group's epoll: readable when a member's interrupt fired or the waker was used.
    /// Register it with an outer reactor (edge triggered readiness is what it gives), then
    /// call [`PollGroup::poll`] when it is readable.
    fn as_raw_fd(&self) -> RawFd {
        self.epoll.as_raw_fd()
    }
}
