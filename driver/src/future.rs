//! An async face over a queue pair: futures that complete when the queue pair reaps their
//! completion. Executor-agnostic: no runtime is assumed, and interrupt mode hands its eventfd
//! to whatever reactor the embedder runs (tokio's `AsyncFd`, an epoll loop, a blocking wait).
//!
//! ## Model
//!
//! An [`AsyncQueuePair`] wraps one [`IoQueuePair`] and owns its tags. It is a cheap,
//! cloneable handle (`Rc`): single-threaded and `!Send`, like a thread-per-core engine wants
//! (one queue pair per core, its tasks on that core's executor; with tokio, a
//! current-thread runtime, `LocalSet::spawn_local` or plain `join!`).
//!
//! - **Submission is eager.** [`AsyncQueuePair::read`] and friends put the command in the
//!   submission queue when they are *called*, and return an [`IoFuture`]. The doorbell is
//!   written when a future is first polled, so creating 32 futures and then awaiting them
//!   together (`join!`, `join_all`) submits 32 commands with one doorbell write.
//! - **Backpressure is waiting.** If the queue is full at the call, the future keeps the
//!   request and submits it when a slot frees (on a later poll).
//! - **Refusals resolve at once.** Input the driver refuses before queueing (misaligned
//!   buffer, LBA past the end) resolves the future with [`IoFailed`] on its first poll, the
//!   buffers inside.
//! - **Completion routing.** Polling any future, or calling [`AsyncQueuePair::process`],
//!   reaps the completion queue and hands each completion to the future waiting for its tag,
//!   waking that future's waker.
//! - **Buffers are owned.** A future owns its [`DmaBuf`]s from submission to completion and
//!   gives them back in its output, so dropping a future early is memory-safe: the request
//!   still runs to completion on the device (a write may land), and its buffers are freed
//!   when its completion is reaped.
//!
//! ## Poll mode and interrupt mode
//!
//! - [`CompletionMode::Poll`]: a pending future asks to be polled again at once
//!   (`wake_by_ref`), so the executor spins on the completion queue while I/O is in flight.
//!   Lowest latency; the core is busy while anything is outstanding.
//! - [`CompletionMode::Interrupt`]: a pending future just waits for its waker. Something must
//!   call [`AsyncQueuePair::process`] when the queue pair's interrupt fires: register
//!   [`AsyncQueuePair::interrupt_fd`] with a reactor and, when it is readable, clear the
//!   readiness, [`InterruptFd::ack`], then `process()`. Without a reactor,
//!   [`AsyncQueuePair::wait`] blocks the thread on the interrupt (a minimal executor's idle
//!   hook). Command deadlines are checked while processing, so a reactor should also call
//!   `process()` on a timer (about every 100 ms) to notice a lost interrupt or a hung command.
//!
//! ```
//! # use std::sync::Arc;
//! # use nvme_dio::{Controller, ControllerOptions, MemoryOptions, QueuePairOptions,
//! #     Lba, AsyncQueuePair};
//! # use nvme_dio_emu::{EmuConfig, EmuFunction};
//! # fn block_on<F: std::future::Future>(f: F) -> F::Output {
//! #     struct W(std::thread::Thread);
//! #     impl std::task::Wake for W { fn wake(self: Arc<Self>) { self.0.unpark() } }
//! #     let waker = std::task::Waker::from(Arc::new(W(std::thread::current())));
//! #     let mut cx = std::task::Context::from_waker(&waker);
//! #     let mut f = std::pin::pin!(f);
//! #     loop {
//! #         if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) { return v; }
//! #         std::thread::park();
//! #     }
//! # }
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dev = Arc::new(EmuFunction::new(EmuConfig::default())?);
//! # let opts = ControllerOptions::default().memory(MemoryOptions::any_pages(8 << 20));
//! let ctrl = Controller::new(dev, opts)?;
//! let ns = ctrl.namespace(1)?.clone();
//! let aqp = AsyncQueuePair::new(ctrl.create_io_qpair(QueuePairOptions::default())?);
//!
//! let buf = ctrl.memory().alloc(4096, 4096)?;
//! buf.copy_from_slice(0, b"hello, device")?;
//! block_on(async {
//!     let buf = aqp.write_fua(&ns, Lba(8), buf).await?;   // durable when it resolves
//!     buf.fill(0);
//!     let buf = aqp.read(&ns, Lba(8), buf).await?;
//!     let mut got = [0u8; 13];
//!     buf.copy_to_slice(0, &mut got)?;
//!     assert_eq!(&got, b"hello, device");
//!     Ok::<_, Box<dyn std::error::Error>>(())
//! })?;
//! # Ok(())
//! # }
//! ```

use std::cell::RefCell;
use std::future::Future;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use nvme_dio_dma::{DmaBuf, PciFunction};
use nvme_dio_queue::Lba;
use vmm_sys_util::eventfd::EventFd;

use crate::completion::{Bufs, Completion, QueueStats, Rejected};
use crate::error::Error;
use crate::namespace::Namespace;
use crate::qpair::{CompletionMode, IoQueuePair};

/// A request that failed: why, and its buffers handed back.
///
/// `B` is what the request carried: a [`DmaBuf`] (read, write), a `Vec<DmaBuf>` (readv,
/// writev) or `()` (flush). Converts into [`Error`] (dropping the buffers) so `?` works in a
/// function returning `Result<_, nvme_dio::Error>`.
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub struct IoFailed<B> {
    /// Why it failed: refused before queueing ([`Error::Invalid`], [`Error::OutOfRange`],
    /// [`Error::DeviceGone`]) or completed with an error ([`Error::Command`],
    /// [`Error::Timeout`]).
    #[source]
    pub error: Error,
    /// The request's buffers.
    pub bufs: B,
}

impl<B> From<IoFailed<B>> for Error {
    fn from(f: IoFailed<B>) -> Error {
        f.error
    }
}

/// A duplicate of a queue pair's interrupt eventfd, for a reactor.
///
/// Readable when the queue pair's MSI-X vector fired. Implements [`AsRawFd`], which is what
/// tokio's `AsyncFd` and epoll loops take. The descriptor is a `dup` of the queue pair's own,
/// so it stays valid while this value lives, even after the queue pair is gone (it then
/// simply never fires). It owns that descriptor for its whole life, which is the contract of
/// tokio's `unsafe fn AsyncFd::register` (tokio 1.54 deprecated the safe `AsyncFd::new`).
#[derive(Debug)]
pub struct InterruptFd {
    fd: EventFd,
    /// Other queue pairs share the vector: never reset the counter (see `ack`).
    shared: bool,
}

impl InterruptFd {
    /// Resets the eventfd counter and returns how many interrupts it had counted.
    ///
    /// Call it after the reactor reported readiness (and after clearing that readiness), then
    /// call [`AsyncQueuePair::process`]: every completion posted before the interrupt that
    /// was just acknowledged is then reaped.
    ///
    /// # Errors
    ///
    /// [`std::io::ErrorKind::WouldBlock`] if no interrupt is pending (the eventfd is
    /// non-blocking); other I/O errors from `read(2)`.
    ///
    /// On a vector shared with other queue pairs (a controller with fewer MSI-X vectors than
    /// queue pairs) the counter is left alone, since resetting it would swallow the other
    /// sharers' wakeup: this returns 1 at once. Register the descriptor edge-triggered then
    /// (tokio's `AsyncFd` is): every interrupt is a new edge.
    pub fn ack(&self) -> std::io::Result<u64> {
        if self.shared {
            return Ok(1);
        }
        self.fd.read()
    }
}

impl AsRawFd for InterruptFd {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// What a tag's slot holds.
#[derive(Debug)]
enum Slot {
    /// Free for the next request.
    Free,
    /// In flight; the waker of the future waiting for it (none until first polled).
    Waiting(Option<Waker>),
    /// Completed, not yet taken by its future.
    Done(Completion),
    /// Its future was dropped while it was in flight: drop the completion when it comes.
    Abandoned,
}

#[derive(Debug, Default)]
struct State {
    /// Indexed by tag.
    slots: Vec<Slot>,
    free: Vec<u32>,
    /// Futures waiting for a free queue slot (the queue was full when they submitted).
    space_waiters: Vec<Waker>,
    /// Reused between `process` calls so routing allocates nothing.
    wake: Vec<Waker>,
}

impl State {
    fn alloc_tag(&mut self) -> u32 {
        match self.free.pop() {
            Some(t) => {
                self.slots[t as usize] = Slot::Waiting(None);
                t
            }
            None => {
                self.slots.push(Slot::Waiting(None));
                (self.slots.len() - 1) as u32
            }
        }
    }

    fn release(&mut self, tag: u32) {
        self.slots[tag as usize] = Slot::Free;
        self.free.push(tag);
    }

    /// Hands a completion to its slot; returns the waker to wake, if any.
    fn route(&mut self, c: Completion) -> Option<Waker> {
        let tag = c.tag as u32;
        match self.slots.get_mut(tag as usize) {
            Some(slot @ Slot::Waiting(_)) => {
                let Slot::Waiting(waker) = std::mem::replace(slot, Slot::Done(c)) else {
                    unreachable!("matched Waiting")
                };
                waker
            }
            Some(Slot::Abandoned) => {
                // Dropping the completion frees the buffers: the device is done with them.
                self.release(tag);
                None
            }
            // Every tag on this queue pair is ours, and the driver delivers each once: a
            // completion for a free or finished slot cannot happen; ignore it rather than
            // corrupt a live slot.
            _ => None,
        }
    }
}

#[derive(Debug)]
struct Inner<D: PciFunction> {
    qp: RefCell<IoQueuePair<D>>,
    state: RefCell<State>,
    mode: CompletionMode,
}

/// A queue pair with an async face: read, write, readv, writev and flush return futures.
///
/// A cheap handle: clone it into each task of the thread that owns it. Not `Send` (one
/// thread owns a queue pair). See the [module documentation](self) for the model.
#[derive(Debug)]
pub struct AsyncQueuePair<D: PciFunction> {
    inner: Rc<Inner<D>>,
}

impl<D: PciFunction> Clone for AsyncQueuePair<D> {
    fn clone(&self) -> Self {
        AsyncQueuePair {
            inner: Rc::clone(&self.inner),
        }
    }
}

/// The operation of a request waiting for a free queue slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Read,
    Write,
    WriteFua,
    Flush,
}

/// A request kept by its future until the queue has room.
#[derive(Debug)]
struct Queued {
    op: Op,
    ns: Namespace,
    lba: Lba,
    bufs: Bufs,
}

#[derive(Debug)]
enum FutState {
    /// Submitted under this tag.
    InFlight(u32),
    /// The queue was full: submit when polled and a slot is free.
    Queued(Box<Queued>),
    /// Refused at submission: resolve with this on the first poll.
    Refused(Box<Error>, Bufs),
    /// The output was taken.
    Finished,
}

/// A read, write or flush in progress on an [`AsyncQueuePair`]; resolves to the request's
/// buffers (`B`), or an [`IoFailed`] carrying the error and the buffers.
///
/// Dropping it before it resolves does not cancel the command on the device; its buffers are
/// freed when its completion is reaped.
#[must_use = "the request is submitted, but its result and buffers come back only through the future"]
#[derive(Debug)]
pub struct IoFuture<D: PciFunction, B> {
    qp: AsyncQueuePair<D>,
    state: FutState,
    unpack: fn(Bufs) -> B,
}

fn unpack_one(b: Bufs) -> DmaBuf {
    match b {
        Bufs::One(b) => b,
        // A one-buffer request always comes back with its one buffer.
        _ => unreachable!("a one-buffer request returned {b:?}"),
    }
}

fn unpack_many(b: Bufs) -> Vec<DmaBuf> {
    b.into_vec()
}

fn unpack_none(_: Bufs) {}

impl<D: PciFunction> AsyncQueuePair<D> {
    /// Wraps `qp`. Every request on it must go through this handle from now on (the handle
    /// owns the tags).
    pub fn new(qp: IoQueuePair<D>) -> AsyncQueuePair<D> {
        let mode = qp.mode();
        AsyncQueuePair {
            inner: Rc::new(Inner {
                qp: RefCell::new(qp),
                state: RefCell::new(State::default()),
                mode,
            }),
        }
    }

    /// Gives the queue pair back, if this is the last handle, no future is alive and nothing
    /// is in flight; otherwise returns the handle unchanged.
    ///
    /// # Errors
    ///
    /// `Err(self)` while other handles or futures exist or requests are outstanding.
    pub fn into_inner(self) -> Result<IoQueuePair<D>, AsyncQueuePair<D>> {
        if self.inner.qp.borrow().outstanding() > 0 {
            return Err(self);
        }
        match Rc::try_unwrap(self.inner) {
            Ok(inner) => Ok(inner.qp.into_inner()),
            Err(inner) => Err(AsyncQueuePair { inner }),
        }
    }

    /// The completion mode of the queue pair.
    pub fn mode(&self) -> CompletionMode {
        self.inner.mode
    }

    /// Requests in flight on the device.
    pub fn outstanding(&self) -> usize {
        self.inner.qp.borrow().outstanding()
    }

    /// Requests that can be in flight at once.
    pub fn capacity(&self) -> usize {
        self.inner.qp.borrow().capacity()
    }

    /// The queue pair's counters.
    pub fn stats(&self) -> QueueStats {
        self.inner.qp.borrow().stats().clone()
    }

    /// A duplicate of the queue pair's interrupt eventfd, for a reactor (see the module
    /// documentation for the loop to run).
    ///
    /// Here the reactor is a bare epoll loop: a one-future executor that sleeps in epoll
    /// until the queue pair's interrupt fires. With tokio, register it in an `AsyncFd`.
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use std::time::Duration;
    /// # use std::task::{Context, Poll, Waker};
    /// # use nvme_dio::{AsyncQueuePair, CompletionMode, Controller, ControllerOptions, Lba,
    /// #     MemoryOptions, QueuePairOptions};
    /// # use nvme_dio_emu::{EmuConfig, EmuFunction, Mode};
    /// use vmm_sys_util::poll::PollContext;
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let dev = Arc::new(EmuFunction::new(EmuConfig { mode: Mode::Thread, ..EmuConfig::default() })?);
    /// # let opts = ControllerOptions::default().memory(MemoryOptions::any_pages(8 << 20));
    /// # let ctrl = Controller::new(dev, opts)?;
    /// # let ns = ctrl.namespace(1)?.clone();
    /// let qp = ctrl.create_io_qpair(QueuePairOptions::default().mode(CompletionMode::Interrupt))?;
    /// let aqp = AsyncQueuePair::new(qp);
    /// let irq = aqp.interrupt_fd()?;
    /// let epoll = PollContext::<u32>::new()?;
    /// epoll.add(&irq, 0)?;
    ///
    /// let mut read = std::pin::pin!(aqp.read(&ns, Lba(0), ctrl.memory().alloc(4096, 4096)?));
    /// let mut cx = Context::from_waker(Waker::noop()); // completion is seen by re-polling
    /// let buf = loop {
    ///     if let Poll::Ready(r) = read.as_mut().poll(&mut cx) {
    ///         break r?;
    ///     }
    ///     // Sleep until the interrupt (or 100 ms, so deadlines are still checked).
    ///     epoll.wait_timeout(Duration::from_millis(100))?;
    ///     let _ = irq.ack();
    ///     aqp.process();
    /// };
    /// assert_eq!(buf.len(), 4096);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::NotSupported`] for a poll-mode queue pair; [`Error::Wait`] if the descriptor
    /// cannot be duplicated.
    pub fn interrupt_fd(&self) -> Result<InterruptFd, Error> {
        let qp = self.inner.qp.borrow();
        let fd = qp
            .eventfd()
            .ok_or(Error::NotSupported(crate::error::Feature::InterruptFd))?;
        let shared = qp.vector().is_some_and(|(_, shared)| shared);
        fd.try_clone()
            .map(|fd| InterruptFd { fd, shared })
            .map_err(Error::Wait)
    }

    /// Reads into `buf` from the blocks starting at `lba`; resolves to `buf`, filled.
    pub fn read(&self, ns: &Namespace, lba: Lba, buf: DmaBuf) -> IoFuture<D, DmaBuf> {
        self.start(Op::Read, ns, lba, Bufs::One(buf), unpack_one)
    }

    /// Writes `buf` to the blocks starting at `lba`; resolves to `buf`.
    pub fn write(&self, ns: &Namespace, lba: Lba, buf: DmaBuf) -> IoFuture<D, DmaBuf> {
        self.start(Op::Write, ns, lba, Bufs::One(buf), unpack_one)
    }

    /// Writes `buf` with Force Unit Access: the data is durable when the future resolves.
    pub fn write_fua(&self, ns: &Namespace, lba: Lba, buf: DmaBuf) -> IoFuture<D, DmaBuf> {
        self.start(Op::WriteFua, ns, lba, Bufs::One(buf), unpack_one)
    }

    /// Reads into an iovec set, in order, from the blocks starting at `lba`.
    pub fn readv(&self, ns: &Namespace, lba: Lba, bufs: Vec<DmaBuf>) -> IoFuture<D, Vec<DmaBuf>> {
        self.start(Op::Read, ns, lba, Bufs::Many(bufs), unpack_many)
    }

    /// Writes an iovec set, in order, to the blocks starting at `lba`.
    pub fn writev(&self, ns: &Namespace, lba: Lba, bufs: Vec<DmaBuf>) -> IoFuture<D, Vec<DmaBuf>> {
        self.start(Op::Write, ns, lba, Bufs::Many(bufs), unpack_many)
    }

    /// Writes an iovec set with Force Unit Access.
    pub fn writev_fua(
        &self,
        ns: &Namespace,
        lba: Lba,
        bufs: Vec<DmaBuf>,
    ) -> IoFuture<D, Vec<DmaBuf>> {
        self.start(Op::WriteFua, ns, lba, Bufs::Many(bufs), unpack_many)
    }

    /// Flushes the namespace's volatile write cache: every write that completed before this
    /// was submitted is durable when it resolves.
    pub fn flush(&self, ns: &Namespace) -> IoFuture<D, ()> {
        self.start(Op::Flush, ns, Lba(0), Bufs::None, unpack_none)
    }

    /// Reaps the completion queue and wakes the futures whose requests completed; returns how
    /// many completed. Also writes a pending doorbell and checks command deadlines.
    ///
    /// Futures call this themselves when polled; a reactor calls it when the interrupt fires.
    pub fn process(&self) -> usize {
        let mut wake = {
            let mut st = self.inner.state.borrow_mut();
            std::mem::take(&mut st.wake)
        };
        let n = self.reap(&mut wake);
        for w in wake.drain(..) {
            w.wake();
        }
        self.inner.state.borrow_mut().wake = wake;
        n
    }

    /// Blocks the thread until at least one request completes or `timeout` passes, then
    /// routes the completions like [`AsyncQueuePair::process`]; returns how many completed.
    ///
    /// In interrupt mode this sleeps on the eventfd (and rescues a lost interrupt, see
    /// [`IoQueuePair::wait`]); in poll mode it spins. Meant as the idle hook of a minimal
    /// executor that has nothing to run but I/O.
    ///
    /// # Errors
    ///
    /// [`Error::Wait`] if waiting on the eventfd fails.
    pub fn wait(&self, timeout: Duration) -> Result<usize, Error> {
        self.inner.qp.borrow_mut().wait(timeout)?;
        Ok(self.process())
    }

    /// Reaps into the slots; collects the wakers to wake (woken by the caller, after every
    /// borrow is released, so a waker that polls inline cannot hit a borrowed `RefCell`).
    fn reap(&self, wake: &mut Vec<Waker>) -> usize {
        let mut qp = self.inner.qp.borrow_mut();
        let mut st = self.inner.state.borrow_mut();
        qp.poll();
        let mut n = 0;
        while let Some(c) = qp.next_completion() {
            n += 1;
            if let Some(w) = st.route(c) {
                wake.push(w);
            }
        }
        if n > 0 {
            wake.append(&mut st.space_waiters);
        }
        n
    }

    fn start<B>(
        &self,
        op: Op,
        ns: &Namespace,
        lba: Lba,
        bufs: Bufs,
        unpack: fn(Bufs) -> B,
    ) -> IoFuture<D, B> {
        let state = match self.submit(op, ns, lba, bufs) {
            Ok(tag) => FutState::InFlight(tag),
            Err(r) if matches!(*r.error, Error::QueueFull { .. }) => {
                FutState::Queued(Box::new(Queued {
                    op,
                    ns: ns.clone(),
                    lba,
                    bufs: r.bufs,
                }))
            }
            Err(r) => FutState::Refused(r.error, r.bufs),
        };
        IoFuture {
            qp: self.clone(),
            state,
            unpack,
        }
    }

    /// Submits under a fresh tag; the tag is released again on a refusal.
    fn submit(&self, op: Op, ns: &Namespace, lba: Lba, bufs: Bufs) -> Result<u32, Rejected> {
        let tag = self.inner.state.borrow_mut().alloc_tag();
        let t = tag as u64;
        let mut qp = self.inner.qp.borrow_mut();
        let r = match (op, bufs) {
            (Op::Flush, _) => qp.flush(ns, t),
            (Op::Read, Bufs::One(b)) => qp.read(ns, lba, b, t),
            (Op::Read, b) => qp.readv(ns, lba, b.into_vec(), t),
            (Op::Write, Bufs::One(b)) => qp.write(ns, lba, b, t),
            (Op::Write, b) => qp.writev(ns, lba, b.into_vec(), t),
            (Op::WriteFua, Bufs::One(b)) => qp.write_fua(ns, lba, b, t),
            (Op::WriteFua, b) => qp.writev_fua(ns, lba, b.into_vec(), t),
        };
        drop(qp);
        match r {
            Ok(()) => Ok(tag),
            Err(e) => {
                self.inner.state.borrow_mut().release(tag);
                Err(e)
            }
        }
    }

    /// Takes the completion of `tag` if it is there; otherwise (re)registers `waker`.
    fn take_or_register(&self, tag: u32, waker: Option<&Waker>) -> Option<Completion> {
        let mut st = self.inner.state.borrow_mut();
        let slot = &mut st.slots[tag as usize];
        match slot {
            Slot::Done(_) => {
                let Slot::Done(c) = std::mem::replace(slot, Slot::Free) else {
                    unreachable!("matched Done")
                };
                st.free.push(tag);
                Some(c)
            }
            Slot::Waiting(w) => {
                match (w.as_ref(), waker) {
                    (Some(old), Some(new)) if old.will_wake(new) => {}
                    (_, new) => *w = new.cloned(),
                }
                None
            }
            Slot::Free | Slot::Abandoned => unreachable!("a live future's slot is {slot:?}"),
        }
    }

    fn abandon(&self, tag: u32) {
        let mut st = self.inner.state.borrow_mut();
        match st.slots[tag as usize] {
            // Dropping the completion frees the buffers.
            Slot::Done(_) => st.release(tag),
            _ => st.slots[tag as usize] = Slot::Abandoned,
        }
    }
}

impl<D: PciFunction, B> IoFuture<D, B> {
    /// The tag the request carries on its queue pair, once it is submitted (for tracing).
    pub fn tag(&self) -> Option<u64> {
        match self.state {
            FutState::InFlight(t) => Some(t as u64),
            _ => None,
        }
    }

    fn finish(&mut self, result: Result<(), Error>, bufs: Bufs) -> Result<B, IoFailed<B>> {
        self.state = FutState::Finished;
        let bufs = (self.unpack)(bufs);
        match result {
            Ok(()) => Ok(bufs),
            Err(error) => Err(IoFailed { error, bufs }),
        }
    }
}

impl<D: PciFunction, B> Future for IoFuture<D, B> {
    type Output = Result<B, IoFailed<B>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // Every field is Unpin (no self-references), so the future is Unpin.
        let this = self.get_mut();
        // A hybrid queue pair's futures behave as interrupt mode's (the spin is `wait`'s).
        let poll_mode = this.qp.inner.mode == CompletionMode::Poll;
        match std::mem::replace(&mut this.state, FutState::Finished) {
            FutState::Finished => panic!("IoFuture polled after it resolved"),
            FutState::Refused(error, bufs) => Poll::Ready(this.finish(Err(*error), bufs)),
            FutState::Queued(q) => {
                // Reap first: completions free slots.
                this.qp.process();
                let Queued { op, ns, lba, bufs } = *q;
                match this.qp.submit(op, &ns, lba, bufs) {
                    Ok(tag) => {
                        this.state = FutState::InFlight(tag);
                        // Poll again at once: that rings the doorbell and registers the waker.
                        cx.waker().wake_by_ref();
                    }
                    Err(r) if matches!(*r.error, Error::QueueFull { .. }) => {
                        this.state = FutState::Queued(Box::new(Queued {
                            op,
                            ns,
                            lba,
                            bufs: r.bufs,
                        }));
                        if poll_mode {
                            cx.waker().wake_by_ref();
                        } else {
                            let mut st = this.qp.inner.state.borrow_mut();
                            st.space_waiters.push(cx.waker().clone());
                        }
                    }
                    Err(r) => return Poll::Ready(this.finish(Err(*r.error), r.bufs)),
                }
                Poll::Pending
            }
            FutState::InFlight(tag) => {
                this.state = FutState::InFlight(tag);
                // Unregister our waker while reaping: our own completion needs no wake-up.
                if let Some(c) = this.qp.take_or_register(tag, None) {
                    return Poll::Ready(this.finish(c.result, c.bufs));
                }
                this.qp.process();
                if let Some(c) = this.qp.take_or_register(tag, Some(cx.waker())) {
                    return Poll::Ready(this.finish(c.result, c.bufs));
                }
                if poll_mode {
                    // Nobody else will wake us: ask to be polled again (the executor spins on
                    // the completion queue, which is what poll mode is for).
                    cx.waker().wake_by_ref();
                }
                Poll::Pending
            }
        }
    }
}

impl<D: PciFunction, B> Drop for IoFuture<D, B> {
    fn drop(&mut self) {
        if let FutState::InFlight(tag) = self.state {
            self.qp.abandon(tag);
        }
    }
}
