//! Poll groups against the emulated controller: many queue pairs on two controllers driven
//! by one thread with exactly-once delivery, hybrid completion that falls asleep when idle
//! and wakes on the next completion (asserted by counts, not by time), the waker, and a
//! busy device removed inside a group.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nvme_dio::{
    CompletionMode, Controller, ControllerOptions, ErrorKind, GroupMode, Lba, MemberId,
    MemoryOptions, PollGroup, QueuePairOptions,
};
use nvme_dio_dma::{Bar0, PciFunction};
use nvme_dio_emu::{Action, EmuConfig, EmuFunction, Fault, Mode, NsConfig, Target};

fn controller(mode: Mode) -> (Arc<EmuFunction>, Controller<EmuFunction>) {
    let cfg = EmuConfig {
        namespaces: vec![NsConfig::null(1 << 20, 4096)],
        mode,
        ..EmuConfig::default()
    };
    let dev = Arc::new(EmuFunction::new(cfg).expect("emulated controller"));
    let opts = ControllerOptions::default().memory(MemoryOptions::any_pages(16 << 20));
    let ctrl = Controller::new(Arc::clone(&dev), opts).expect("bring-up");
    (dev, ctrl)
}

fn irq() -> QueuePairOptions {
    QueuePairOptions::with_entries(64).mode(CompletionMode::Interrupt)
}

/// Spins (yielding) until `cond` holds; panics after a minute so a bug hangs no CI run.
/// Not a timed assertion: the bound only turns a hang into a failure.
fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < Duration::from_secs(60), "never: {what}");
        std::thread::yield_now();
    }
}

/// 8 queue pairs on 2 controllers (4 each), one thread, a group in `mode`: every tag is
/// delivered exactly once, by the member it was submitted on.
fn eight_on_two(mode: GroupMode, qp_mode: CompletionMode, emu: Mode) {
    const TOTAL: u64 = 4000;
    const DEPTH: u64 = 8;
    let ctrls = [controller(emu), controller(emu)];
    let mut group = PollGroup::new(mode).unwrap();
    let mut members: Vec<(MemberId, usize)> = Vec::new();
    for (c, (_, ctrl)) in ctrls.iter().enumerate() {
        for _ in 0..4 {
            let qp = ctrl
                .create_io_qpair(QueuePairOptions::with_entries(64).mode(qp_mode))
                .unwrap();
            members.push((group.add(qp).unwrap(), c));
        }
    }
    assert_eq!(group.len(), 8);
    let mut seen: HashMap<u64, u32> = HashMap::new();
    let mut next = 0u64;
    let submit = |group: &mut PollGroup<EmuFunction>, m: usize, next: &mut u64| {
        let (id, c) = members[m];
        let ctrl = &ctrls[c].1;
        let ns = ctrl.namespace(1).unwrap().clone();
        // The tag names the member, so delivery by the wrong member is seen.
        let tag = *next << 8 | m as u64;
        let buf = ctrl.memory().alloc(4096, 4096).unwrap();
        group
            .qpair_mut(id)
            .unwrap()
            .read(&ns, Lba(*next % 1000), buf, tag)
            .map_err(|r| r.error)
            .unwrap();
        *next += 1;
    };
    for m in 0..8 {
        for _ in 0..DEPTH {
            submit(&mut group, m, &mut next);
        }
    }
    let mut done = 0u64;
    let start = Instant::now();
    while done < next {
        group.wait(Duration::from_millis(100)).unwrap();
        while let Some((id, c)) = group.next_completion() {
            c.result.unwrap();
            let m = (c.tag & 0xff) as usize;
            assert_eq!(
                members[m].0, id,
                "tag {:#x} came from the wrong member",
                c.tag
            );
            *seen.entry(c.tag).or_default() += 1;
            done += 1;
            if next < TOTAL {
                submit(&mut group, m, &mut next);
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "stuck: {done} of {next} delivered; {:?}",
            group.stats()
        );
    }
    assert_eq!(next, TOTAL);
    assert_eq!(seen.len() as u64, TOTAL, "every tag delivered");
    assert!(seen.values().all(|&n| n == 1), "a tag delivered twice");
    assert_eq!(group.in_flight(), 0);
    for (_, qp) in group.members() {
        qp.check_accounting().unwrap();
        assert_eq!(qp.stats().stale_cqes, 0);
    }
    for (dev, _) in &ctrls {
        assert!(dev.ub_events().is_empty(), "{:?}", dev.ub_events());
    }
}

#[test]
fn group_of_8_on_2_controllers_hybrid_delivers_each_tag_once() {
    eight_on_two(
        GroupMode::Hybrid { idle_polls: 64 },
        CompletionMode::Interrupt,
        Mode::Thread,
    );
}

#[test]
fn group_of_8_on_2_controllers_interrupt_delivers_each_tag_once() {
    eight_on_two(
        GroupMode::Interrupt,
        CompletionMode::Interrupt,
        Mode::Thread,
    );
}

#[test]
fn group_of_8_on_2_controllers_polled_delivers_each_tag_once() {
    eight_on_two(GroupMode::Poll, CompletionMode::Poll, Mode::Inline);
    eight_on_two(GroupMode::Poll, CompletionMode::Poll, Mode::Thread);
}

#[test]
fn a_sleeping_group_refuses_a_queue_pair_without_interrupt() {
    let (_, ctrl) = controller(Mode::Inline);
    let mut group = PollGroup::new(GroupMode::Hybrid { idle_polls: 10 }).unwrap();
    let qp = ctrl.create_io_qpair(QueuePairOptions::default()).unwrap();
    let r = group.add(qp).unwrap_err();
    assert_eq!(r.error.kind(), ErrorKind::InvalidInput);
    assert!(
        r.error.to_string().contains("CompletionMode::Interrupt"),
        "{}",
        r.error
    );
    // The queue pair came back and still works; a polling group takes it.
    let mut poll = PollGroup::new(GroupMode::Poll).unwrap();
    poll.add(*r.qp).unwrap();
    assert!(group.is_empty());
}

/// The emulator posts a delayed completion on its own clock only when the host touches a
/// register; `DelayAccesses` makes "the completion comes later" deterministic: it comes
/// when another thread does those accesses, after the group fell asleep.
#[test]
fn hybrid_falls_asleep_when_idle_and_wakes_on_the_next_completion() {
    const LATE: u32 = 50;
    let (dev_a, a) = controller(Mode::Inline);
    let (_dev_b, b) = controller(Mode::Inline);
    let mut group = PollGroup::new(GroupMode::Hybrid { idle_polls: 500 }).unwrap();
    let qa = group.add(a.create_io_qpair(irq()).unwrap()).unwrap();
    let qb = group.add(b.create_io_qpair(irq()).unwrap()).unwrap();

    // I/O flows: completions come at once, the group never sleeps.
    for i in 0..100 {
        for (id, ctrl) in [(qa, &a), (qb, &b)] {
            let ns = ctrl.namespace(1).unwrap().clone();
            let buf = ctrl.memory().alloc(4096, 4096).unwrap();
            let qp = group.qpair_mut(id).unwrap();
            qp.read(&ns, Lba(i), buf, i).map_err(|r| r.error).unwrap();
        }
        let mut got = 0;
        while got < 2 {
            group.wait(Duration::from_secs(10)).unwrap();
            while group.next_completion().is_some() {
                got += 1;
            }
        }
    }
    assert_eq!(
        group.stats().sleeps,
        0,
        "flowing I/O is polled: {:?}",
        group.stats()
    );

    // One read whose completion comes only after LATE register accesses.
    dev_a
        .inject(Fault::Command {
            target: Target::NthIo(0),
            action: Action::DelayAccesses(LATE),
        })
        .unwrap();
    let ns = a.namespace(1).unwrap().clone();
    let buf = a.memory().alloc(4096, 4096).unwrap();
    group
        .qpair_mut(qa)
        .unwrap()
        .read(&ns, Lba(7), buf, 777)
        .map_err(|r| r.error)
        .unwrap();
    let counters = group.counters();
    let before = group.stats();
    let waiter = std::thread::spawn(move || {
        let n = group.wait(Duration::from_secs(60)).unwrap();
        (group, n)
    });
    let t0 = Instant::now();
    until("the group sleeps", || {
        counters.snapshot().sleeps > before.sleeps
    });
    // Idle for a while: a spinning group would count thousands of polls meanwhile.
    std::thread::sleep(Duration::from_millis(300));
    let asleep = counters.snapshot();
    let idle = t0.elapsed();
    assert_eq!(asleep.wakeups, before.wakeups, "no interrupt yet");
    // The completion: the device posts it, its interrupt wakes the group.
    for _ in 0..LATE + 1 {
        dev_a.bar0().read32(nvme_dio::spec::regs::CSTS);
    }
    let (mut group, n) = waiter.join().unwrap();
    assert_eq!(n, 1, "woke with the completion ready");
    let (id, c) = group.next_completion().unwrap();
    assert_eq!((id, c.tag), (qa, 777));
    c.result.unwrap();
    let after = group.stats();
    // Counts, not time: while idle, the group polled only when it woke (each sleep costs
    // the arming poll and the poll after waking), and only the clock's tick slices woke it.
    let sleeps = after.sleeps - before.sleeps;
    let polls = after.polls - before.polls;
    let timer = asleep.timer_wakeups - before.timer_wakeups;
    let spin = 500 + 2; // the spin before the first sleep, and wait's first poll
    assert!(
        sleeps <= timer + 1 + (after.wakeups - before.wakeups),
        "every sleep but the last ended by a tick or the interrupt: {before:?} -> {after:?}"
    );
    assert!(
        polls <= spin + 2 * sleeps,
        "polls while asleep: {polls} for {sleeps} sleeps: {before:?} -> {after:?}"
    );
    assert!(
        after.wakeups > before.wakeups,
        "woken by the interrupt: {after:?}"
    );
    // And the sleeps were real: a tick slice is 100 ms (the qpair's 30 s timeout / 4,
    // capped), so at most one per 100 ms of the clock went by (an upper bound the clock
    // gives; a slow machine only lowers the count).
    let ticks = idle.as_millis() as u64 / 100 + 2;
    assert!(
        timer <= ticks,
        "{timer} tick wakeups in {idle:?}: sleeps too short"
    );
    assert_eq!(after.rescued, 0, "no interrupt lost: {after:?}");
}

#[test]
fn an_idle_group_sleeps_until_woken() {
    let (_, a) = controller(Mode::Inline);
    let mut group = PollGroup::new(GroupMode::Hybrid {
        idle_polls: 1_000_000,
    })
    .unwrap();
    group.add(a.create_io_qpair(irq()).unwrap()).unwrap();
    let counters = group.counters();
    let waker = group.waker();
    let waiter = std::thread::spawn(move || {
        // Nothing in flight: no spinning at all, straight to sleep.
        let n = group.wait(Duration::MAX).unwrap();
        (group, n)
    });
    until("the group sleeps", || counters.snapshot().sleeps > 0);
    std::thread::sleep(Duration::from_millis(200));
    let asleep = counters.snapshot();
    waker.wake().unwrap();
    let (group, n) = waiter.join().unwrap();
    assert_eq!(n, 0);
    let s = group.stats();
    assert_eq!(s.woken, 1, "{s:?}");
    assert!(
        asleep.polls <= 2 + 2 * asleep.sleeps,
        "polled only around its sleeps: {asleep:?}"
    );
    assert!(s.sleeps <= 1 + s.timer_wakeups, "{s:?}");
}

#[test]
fn removal_of_a_busy_device_inside_a_group_fails_its_requests_fast() {
    let (dev_a, a) = controller(Mode::Inline);
    let (dev_b, b) = controller(Mode::Thread);
    let mut group = PollGroup::new(GroupMode::Hybrid { idle_polls: 100 }).unwrap();
    let qa = group.add(a.create_io_qpair(irq()).unwrap()).unwrap();
    let qb = group.add(b.create_io_qpair(irq()).unwrap()).unwrap();
    // A's commands are held by the device (never completed), B's complete.
    dev_a
        .inject(Fault::Command {
            target: Target::Opcode {
                admin: false,
                opcode: nvme_dio::spec::opcode::nvm::READ,
                count: 4,
            },
            action: Action::Drop,
        })
        .unwrap();
    let na = a.namespace(1).unwrap().clone();
    let nb = b.namespace(1).unwrap().clone();
    for i in 0..4 {
        let buf = a.memory().alloc(4096, 4096).unwrap();
        let qp = group.qpair_mut(qa).unwrap();
        qp.read(&na, Lba(i), buf, 100 + i)
            .map_err(|r| r.error)
            .unwrap();
    }
    group.poll();
    assert_eq!(dev_a.held_commands(), 4);
    dev_a.inject(Fault::SurpriseRemoval).unwrap();
    for i in 0..4 {
        let buf = b.memory().alloc(4096, 4096).unwrap();
        let qp = group.qpair_mut(qb).unwrap();
        qp.read(&nb, Lba(i), buf, 200 + i)
            .map_err(|r| r.error)
            .unwrap();
    }
    let mut failed = Vec::new();
    let mut ok = Vec::new();
    let start = Instant::now();
    while failed.len() + ok.len() < 8 {
        group.wait(Duration::from_secs(1)).unwrap();
        while let Some((id, c)) = group.next_completion() {
            match c.result {
                Ok(()) => ok.push((id, c.tag)),
                Err(e) => {
                    assert_eq!(e.kind(), ErrorKind::NoDevice, "{}", e.report());
                    failed.push((id, c.tag));
                }
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "stuck: {failed:?} {ok:?}"
        );
    }
    failed.sort();
    ok.sort();
    assert_eq!(failed, (100..104).map(|t| (qa, t)).collect::<Vec<_>>());
    assert_eq!(ok, (200..204).map(|t| (qb, t)).collect::<Vec<_>>());
    // The gone member refuses new work at once; the other carries on.
    let buf = a.memory().alloc(4096, 4096).unwrap();
    let r = group.qpair_mut(qa).unwrap().read(&na, Lba(0), buf, 1);
    assert_eq!(r.unwrap_err().error.kind(), ErrorKind::NoDevice);
    let gone = group.remove(qa).unwrap();
    drop(gone);
    let buf = b.memory().alloc(4096, 4096).unwrap();
    let qp = group.qpair_mut(qb).unwrap();
    qp.read(&nb, Lba(9), buf, 9).map_err(|r| r.error).unwrap();
    let c = loop {
        group.wait(Duration::from_secs(1)).unwrap();
        if let Some(c) = group.next_completion() {
            break c;
        }
    };
    assert_eq!((c.0, c.1.tag), (qb, 9));
    c.1.result.unwrap();
    assert!(dev_b.ub_events().is_empty());
}
