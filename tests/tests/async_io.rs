//! The async face (`nvme_dio::AsyncQueuePair`) against the emulated controller, on two
//! executors: a minimal one written here (a `block_on` with a thread-parker waker, whose idle
//! step can block on the queue pair's interrupt), and tokio's current-thread runtime (poll
//! mode with `join!`, interrupt mode with the eventfd registered in `AsyncFd`).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use nvme_dio::{
    AsyncQueuePair, CompletionMode, Controller, ControllerOptions, DmaBuf, Error, IoFailed, Lba,
    MemoryOptions, QueuePairOptions, Status,
};
use nvme_dio_emu::{Action, EmuConfig, EmuFunction, Fault, Mode, NsConfig, Target};
use nvme_dio_tests::io::{gather, pattern, scatter};

// ---- a minimal executor ----------------------------------------------------------------------

struct Parker {
    woken: AtomicBool,
    thread: std::thread::Thread,
}

impl Wake for Parker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.thread.unpark();
    }
}

/// Runs `fut` to completion on this thread. When the future is pending and nobody woke it,
/// `idle` runs (it may block, e.g. on the queue pair's interrupt); without one the thread
/// parks. Panics if the future makes no progress for 30 s (a hang is a failure).
fn block_on_with<F: Future>(fut: F, mut idle: Option<&mut dyn FnMut()>) -> F::Output {
    let parker = Arc::new(Parker {
        woken: AtomicBool::new(false),
        thread: std::thread::current(),
    });
    let waker = Waker::from(Arc::clone(&parker));
    let mut cx = Context::from_waker(&waker);
    let mut fut = std::pin::pin!(fut);
    let start = std::time::Instant::now();
    loop {
        if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return v;
        }
        while !parker.woken.swap(false, Ordering::Acquire) {
            assert!(start.elapsed() < Duration::from_secs(30), "future hung");
            match idle.as_mut() {
                Some(f) => f(),
                None => std::thread::park_timeout(Duration::from_millis(100)),
            }
        }
    }
}

fn block_on<F: Future>(fut: F) -> F::Output {
    block_on_with(fut, None)
}

/// Polls every future each round until all are done; outputs in input order.
struct JoinAll<F: Future> {
    futs: Vec<Option<Pin<Box<F>>>>,
    out: Vec<Option<F::Output>>,
}

fn join_all<F: Future>(futs: impl IntoIterator<Item = F>) -> JoinAll<F> {
    let futs: Vec<_> = futs.into_iter().map(|f| Some(Box::pin(f))).collect();
    let out = futs.iter().map(|_| None).collect();
    JoinAll { futs, out }
}

// The futures are boxed and the outputs are never pinned: nothing in a JoinAll is pinned in
// place, so moving it is fine whatever F::Output is.
impl<F: Future> Unpin for JoinAll<F> {}

impl<F: Future> Future for JoinAll<F> {
    type Output = Vec<F::Output>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Vec<F::Output>> {
        let this = self.get_mut();
        let mut pending = false;
        for (f, o) in this.futs.iter_mut().zip(this.out.iter_mut()) {
            if let Some(fut) = f {
                match fut.as_mut().poll(cx) {
                    Poll::Ready(v) => {
                        *o = Some(v);
                        *f = None;
                    }
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(this.out.iter_mut().map(|o| o.take().unwrap()).collect())
        }
    }
}

// ---- fixtures ----------------------------------------------------------------------------------

fn options() -> ControllerOptions {
    ControllerOptions::default().memory(MemoryOptions::any_pages(8 << 20))
}

fn bring_up(mode: Mode) -> (Arc<EmuFunction>, Controller<EmuFunction>) {
    let cfg = EmuConfig {
        mode,
        namespaces: vec![NsConfig::ram(1 << 12, 4096)],
        ..EmuConfig::default()
    };
    let dev = Arc::new(EmuFunction::new(cfg).expect("emulated controller"));
    let ctrl = Controller::new(Arc::clone(&dev), options()).expect("bring-up");
    (dev, ctrl)
}

fn qpair(
    ctrl: &Controller<EmuFunction>,
    entries: u32,
    mode: CompletionMode,
) -> AsyncQueuePair<EmuFunction> {
    AsyncQueuePair::new(
        ctrl.create_io_qpair(QueuePairOptions::default().entries(entries).mode(mode))
            .expect("queue pair"),
    )
}

fn filled(ctrl: &Controller<EmuFunction>, lba: u64, seed: u64) -> DmaBuf {
    let b = ctrl.memory().alloc(4096, 4096).unwrap();
    b.copy_from_slice(0, &pattern(4096, lba, seed, 4096))
        .unwrap();
    b
}

fn contents(b: &DmaBuf) -> Vec<u8> {
    gather(std::slice::from_ref(b))
}

fn assert_no_ub(dev: &EmuFunction) {
    assert!(dev.ub_events().is_empty(), "{:?}", dev.ub_events());
}

/// Writes `n` blocks concurrently (all futures created first: one doorbell), reads them back
/// concurrently, and checks every byte.
async fn write_then_read_many(
    ctrl: &Controller<EmuFunction>,
    aqp: &AsyncQueuePair<EmuFunction>,
    n: u64,
    seed: u64,
) {
    let ns = ctrl.namespace(1).unwrap().clone();
    let writes: Vec<_> = (0..n)
        .map(|i| aqp.write(&ns, Lba(i), filled(ctrl, i, seed)))
        .collect();
    for r in join_all(writes).await {
        r.expect("write");
    }
    let reads: Vec<_> = (0..n)
        .map(|i| aqp.read(&ns, Lba(i), ctrl.memory().alloc(4096, 4096).unwrap()))
        .collect();
    for (i, r) in join_all(reads).await.into_iter().enumerate() {
        let b = r.expect("read");
        assert_eq!(
            contents(&b),
            pattern(4096, i as u64, seed, 4096),
            "block {i}"
        );
    }
}

// ---- minimal executor ---------------------------------------------------------------------------

#[test]
fn poll_mode_on_a_minimal_executor() {
    let (dev, ctrl) = bring_up(Mode::Inline);
    let aqp = qpair(&ctrl, 64, CompletionMode::Poll);
    block_on(write_then_read_many(&ctrl, &aqp, 40, 1));
    let s = aqp.stats();
    assert_eq!(s.completed, 80);
    assert!(
        s.sq_doorbells < 80,
        "futures created together share doorbells: {s:?}"
    );
    assert_eq!(aqp.outstanding(), 0);
    assert!(
        aqp.into_inner().is_ok(),
        "idle, last handle: the queue pair comes back"
    );
    assert_no_ub(&dev);
}

#[test]
fn a_full_queue_makes_futures_wait_not_fail() {
    // 4 entries: 3 requests in flight at most, 50 submitted at once.
    let (dev, ctrl) = bring_up(Mode::Thread);
    let aqp = qpair(&ctrl, 4, CompletionMode::Poll);
    assert_eq!(aqp.capacity(), 3);
    block_on(write_then_read_many(&ctrl, &aqp, 50, 2));
    assert_eq!(aqp.stats().completed, 100);
    assert_no_ub(&dev);
}

#[test]
fn iovecs_fua_and_flush() {
    let (dev, ctrl) = bring_up(Mode::Inline);
    let ns = ctrl.namespace(1).unwrap().clone();
    let aqp = qpair(&ctrl, 32, CompletionMode::Poll);
    let data = pattern(4096, 100, 3, 3 * 4096);
    block_on(async {
        let bufs: Vec<DmaBuf> = (0..3)
            .map(|_| ctrl.memory().alloc(4096, 4096).unwrap())
            .collect();
        scatter(&bufs, &data);
        let bufs = aqp.writev_fua(&ns, Lba(100), bufs).await.expect("writev");
        assert_eq!(bufs.len(), 3, "every buffer comes back");
        aqp.flush(&ns).await.expect("flush");
        let rbufs: Vec<DmaBuf> = (0..3)
            .map(|_| ctrl.memory().alloc(4096, 4096).unwrap())
            .collect();
        let rbufs = aqp.readv(&ns, Lba(100), rbufs).await.expect("readv");
        assert_eq!(gather(&rbufs), data);
        let b = aqp
            .write(&ns, Lba(200), filled(&ctrl, 200, 4))
            .await
            .unwrap();
        let b = aqp.write_fua(&ns, Lba(201), b).await.unwrap();
        b.fill(0);
        let b = aqp.read(&ns, Lba(201), b).await.unwrap();
        assert_eq!(contents(&b), pattern(4096, 200, 4, 4096));
    });
    let mut stored = vec![0u8; 3 * 4096];
    dev.read_blocks(1, 100, &mut stored).unwrap();
    assert_eq!(stored, data, "the device holds what was written");
    assert_no_ub(&dev);
}

#[test]
fn refusals_and_device_errors_hand_the_buffers_back() {
    let (dev, ctrl) = bring_up(Mode::Inline);
    let ns = ctrl.namespace(1).unwrap().clone();
    let aqp = qpair(&ctrl, 8, CompletionMode::Poll);
    block_on(async {
        // Refused before queueing: not a whole block.
        let b = ctrl.memory().alloc(1000, 4096).unwrap();
        let IoFailed { error, bufs } = aqp.write(&ns, Lba(0), b).await.unwrap_err();
        assert!(matches!(error, Error::Invalid(_)), "{error}");
        assert_eq!(bufs.len(), 1000);
        // Refused: past the end.
        let b = ctrl.memory().alloc(8192, 4096).unwrap();
        let f = aqp.read(&ns, Lba(ns.blocks() - 1), b).await.unwrap_err();
        // (The planner reports it as Invalid; write_zeroes says OutOfRange: see the review.)
        assert!(f.error.to_string().contains("past"), "{}", f.error);
        assert_eq!(f.bufs.len(), 8192);
        // Completed with an error status by the device.
        let internal = Status::new(0, 0x06).with_dnr();
        dev.inject(Fault::Command {
            target: Target::NthIo(0),
            action: Action::Status(internal),
        })
        .unwrap();
        let f = aqp
            .read(&ns, Lba(3), ctrl.memory().alloc(4096, 4096).unwrap())
            .await
            .unwrap_err();
        assert_eq!(f.error.status().map(|s| s.sc()), Some(0x06), "{}", f.error);
        assert_eq!(f.bufs.len(), 4096);
        // `?` into the driver's error type.
        let converted: Error = f.into();
        assert!(matches!(converted, Error::Command { .. }));
    });
    assert_eq!(aqp.stats().errors, 1);
    assert_no_ub(&dev);
}

#[test]
fn dropping_a_future_in_flight_is_safe_and_frees_its_slot() {
    let (dev, ctrl) = bring_up(Mode::Inline);
    let ns = ctrl.namespace(1).unwrap().clone();
    let aqp = qpair(&ctrl, 4, CompletionMode::Poll);
    // Fill the queue, drop every future without polling it: the commands still run.
    for i in 0..3u64 {
        drop(aqp.write(&ns, Lba(i), filled(&ctrl, i, 9)));
    }
    assert_eq!(aqp.outstanding(), 3);
    // A new request waits for space, then completes; the dropped ones are reaped on the way.
    let b = block_on(aqp.read(&ns, Lba(0), ctrl.memory().alloc(4096, 4096).unwrap())).unwrap();
    assert_eq!(
        contents(&b),
        pattern(4096, 0, 9, 4096),
        "the dropped write still landed"
    );
    while aqp.outstanding() > 0 {
        aqp.process();
    }
    // Polled once, then dropped while in flight (the device holds it for a while).
    dev.inject(Fault::Command {
        target: Target::NthIo(0),
        action: Action::Delay(Duration::from_millis(20)),
    })
    .unwrap();
    let mut f = Box::pin(aqp.read(&ns, Lba(1), ctrl.memory().alloc(4096, 4096).unwrap()));
    let waker = Waker::noop();
    assert!(
        f.as_mut()
            .poll(&mut Context::from_waker(waker))
            .is_pending()
    );
    drop(f);
    while aqp.outstanding() > 0 {
        aqp.process();
    }
    assert_eq!(aqp.stats().stale_cqes, 0);
    assert!(
        aqp.into_inner().is_ok(),
        "nothing left in flight or waiting"
    );
    assert_no_ub(&dev);
}

#[test]
fn interrupt_mode_on_a_minimal_executor_sleeps_on_the_eventfd() {
    let (dev, ctrl) = bring_up(Mode::Thread);
    let aqp = qpair(&ctrl, 16, CompletionMode::Interrupt);
    let hook = aqp.clone();
    let mut idle = move || {
        hook.wait(Duration::from_millis(100)).expect("wait");
    };
    block_on_with(write_then_read_many(&ctrl, &aqp, 30, 5), Some(&mut idle));
    let s = aqp.stats();
    assert_eq!(s.completed, 60);
    assert!(s.interrupts > 0, "woken by interrupts: {s:?}");
    assert_no_ub(&dev);
}

#[test]
fn a_poll_mode_queue_pair_has_no_interrupt_fd() {
    let (_dev, ctrl) = bring_up(Mode::Inline);
    let aqp = qpair(&ctrl, 8, CompletionMode::Poll);
    assert!(matches!(aqp.interrupt_fd(), Err(Error::NotSupported(_))));
}

// ---- tokio ---------------------------------------------------------------------------------

/// Registers the interrupt eventfd with tokio's reactor.
///
/// tokio 1.54 deprecated `AsyncFd::new` for `unsafe fn register`, whose contract is that the
/// descriptor stays open and the same while registered. `InterruptFd` owns its descriptor (a
/// dup of the queue pair's eventfd) for its whole life, so that holds, and the safe,
/// deprecated constructor is used rather than `unsafe` outside the crates that allow it.
#[allow(deprecated)]
fn register(fd: nvme_dio::InterruptFd) -> tokio::io::unix::AsyncFd<nvme_dio::InterruptFd> {
    tokio::io::unix::AsyncFd::new(fd).expect("AsyncFd")
}

#[tokio::test(flavor = "current_thread")]
async fn tokio_poll_mode_with_join() {
    let (dev, ctrl) = bring_up(Mode::Thread);
    let ns = ctrl.namespace(1).unwrap().clone();
    let aqp = qpair(&ctrl, 32, CompletionMode::Poll);
    let (a, b) = tokio::join!(
        aqp.write(&ns, Lba(1), filled(&ctrl, 1, 7)),
        aqp.write(&ns, Lba(2), filled(&ctrl, 2, 7)),
    );
    a.unwrap();
    b.unwrap();
    write_then_read_many(&ctrl, &aqp, 20, 8).await;
    assert_no_ub(&dev);
}

#[tokio::test(flavor = "current_thread")]
async fn tokio_interrupt_mode_with_asyncfd_reactor() {
    let (dev, ctrl) = bring_up(Mode::Thread);
    let aqp = qpair(&ctrl, 16, CompletionMode::Interrupt);
    let irq = register(aqp.interrupt_fd().expect("interrupt mode"));
    let local = tokio::task::LocalSet::new();
    let acked = std::rc::Rc::new(std::cell::Cell::new(0u64));
    let reactor = {
        let (aqp, acked) = (aqp.clone(), acked.clone());
        local.spawn_local(async move {
            loop {
                // Wake on the interrupt, or every 100 ms so deadlines are checked.
                if let Ok(guard) =
                    tokio::time::timeout(Duration::from_millis(100), irq.readable()).await
                {
                    let mut guard = guard.expect("readable");
                    // Clear, then ack, then reap: an interrupt after the ack re-arms the fd.
                    guard.clear_ready();
                    if let Ok(n) = irq.get_ref().ack() {
                        acked.set(acked.get() + n);
                    }
                }
                aqp.process();
            }
        })
    };
    let ctrl2 = ctrl.clone();
    let aqp2 = aqp.clone();
    local
        .run_until(async move { write_then_read_many(&ctrl2, &aqp2, 30, 11).await })
        .await;
    reactor.abort();
    assert_eq!(aqp.stats().completed, 60);
    assert!(
        acked.get() > 0,
        "the reactor saw the queue pair's interrupts"
    );
    assert_no_ub(&dev);
}

#[test]
fn tokio_interrupt_mode_spawned_tasks() {
    // Requests issued from many spawned local tasks, completed through the reactor task.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (dev, ctrl) = bring_up(Mode::Thread);
    let ns = ctrl.namespace(1).unwrap().clone();
    let aqp = qpair(&ctrl, 8, CompletionMode::Interrupt);
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async {
        let irq = register(aqp.interrupt_fd().unwrap());
        let r = aqp.clone();
        let reactor = tokio::task::spawn_local(async move {
            loop {
                if let Ok(g) =
                    tokio::time::timeout(Duration::from_millis(100), irq.readable()).await
                {
                    g.expect("readable").clear_ready();
                    let _ = irq.get_ref().ack();
                }
                r.process();
            }
        });
        let tasks: Vec<_> = (0..24u64)
            .map(|i| {
                let (aqp, ns, ctrl) = (aqp.clone(), ns.clone(), ctrl.clone());
                tokio::task::spawn_local(async move {
                    let b = aqp.write(&ns, Lba(i), filled(&ctrl, i, 21)).await.unwrap();
                    b.fill(0);
                    let b = aqp.read(&ns, Lba(i), b).await.unwrap();
                    assert_eq!(contents(&b), pattern(4096, i, 21, 4096));
                })
            })
            .collect();
        for t in tasks {
            t.await.expect("task");
        }
        reactor.abort();
    });
    assert_eq!(aqp.stats().completed, 48);
    assert_no_ub(&dev);
}
