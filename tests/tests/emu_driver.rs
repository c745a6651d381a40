//! The driver against the emulated controller: bring-up, I/O with verify over sizes, offsets
//! and iovec shapes, ring wraps, interrupt mode, several queue pairs on several threads, and
//! bad input. Runs everywhere (`cargo test`); the VM suite runs the same checks on VFIO.

use std::sync::Arc;
use std::time::Duration;

use nvme_dio::{
    CompletionMode, Controller, ControllerOptions, Error, Lba, MemoryOptions, QueuePairOptions,
};
use nvme_dio_emu::{EmuConfig, EmuFunction, Mode, NsConfig};
use nvme_dio_tests::io::{Seg, alloc_iovec, pattern, scatter, shapes, wait_one, write_read_verify};

fn options() -> ControllerOptions {
    ControllerOptions::default()
        // The host may have no hugepages reserved; ordinary pages are fine for the emulator.
        .memory(MemoryOptions::any_pages(8 << 20))
}

fn bring_up(
    cfg: EmuConfig,
    opts: ControllerOptions,
) -> (Arc<EmuFunction>, Controller<EmuFunction>) {
    let dev = Arc::new(EmuFunction::new(cfg).expect("emulated controller"));
    let ctrl = Controller::new(Arc::clone(&dev), opts).expect("bring-up");
    (dev, ctrl)
}

fn assert_no_ub(dev: &EmuFunction) {
    let ub = dev.ub_events();
    assert!(
        ub.is_empty(),
        "the driver did something a real controller ignores: {ub:?}"
    );
}

#[test]
fn bring_up_reports_what_the_controller_was_told() {
    let cfg = EmuConfig {
        serial: "emu-serial-1".into(),
        mdts: 5,
        ready_delay: Duration::from_millis(20),
        namespaces: vec![NsConfig::ram(1 << 14, 4096), NsConfig::null(1 << 20, 512)],
        ..EmuConfig::default()
    };
    let (dev, ctrl) = bring_up(cfg, options());
    let info = ctrl.info();
    assert_eq!(info.serial, "emu-serial-1");
    assert_eq!(info.model, "nvme-dio emulated controller");
    assert_eq!(info.mdts, 5);
    assert_eq!(info.max_transfer, 4096 << 5, "MDTS 5 at a 4 KiB MPSMIN");
    let ns = ctrl.namespaces();
    assert_eq!(ns.len(), 2);
    assert_eq!(
        (ns[0].id().0, ns[0].blocks(), ns[0].lba_size()),
        (1, 1 << 14, 4096)
    );
    assert_eq!(
        (ns[1].id().0, ns[1].blocks(), ns[1].lba_size()),
        (2, 1 << 20, 512)
    );
    assert!(matches!(
        ctrl.namespace(3),
        Err(Error::NoSuchNamespace { .. })
    ));
    assert_no_ub(&dev);
}

#[test]
fn write_read_verify_over_sizes_offsets_and_iovec_shapes() {
    let cfg = EmuConfig {
        namespaces: vec![NsConfig::ram(1 << 14, 512)],
        ..EmuConfig::default()
    };
    let (dev, ctrl) = bring_up(cfg, options());
    let ns = ctrl.namespace(1).unwrap().clone();
    let mut qp = ctrl.create_io_qpair(QueuePairOptions::default()).unwrap();
    let mut lba = 0u64;
    let mut cases = 0;
    for total in [512usize, 4096, 8192, 12 << 10, 128 << 10, 1 << 20, 4 << 20] {
        for shape in shapes(total, 512) {
            let blocks = (total / 512) as u64;
            if lba + blocks > ns.blocks() {
                lba = 0;
            }
            write_read_verify(&ctrl, &mut qp, &ns, lba, &shape, lba ^ total as u64);
            lba += blocks + 7;
            cases += 1;
        }
    }
    assert!(cases > 40, "only {cases} cases ran");
    assert!(
        qp.stats().split_requests > 0,
        "some shapes must split (4 MiB is past MDTS)"
    );
    assert_no_ub(&dev);
}

#[test]
fn single_buffer_inside_the_limits_takes_one_command() {
    let (dev, ctrl) = bring_up(EmuConfig::default(), options());
    let ns = ctrl.namespace(1).unwrap().clone();
    let mut qp = ctrl.create_io_qpair(QueuePairOptions::default()).unwrap();
    for (off, len) in [
        (0usize, 4096usize),
        (0x800, 4096),
        (0, 512 << 10),
        (4, 64 << 10),
    ] {
        let cmds = write_read_verify(&ctrl, &mut qp, &ns, 8, &[Seg { offset: off, len }], 3);
        assert_eq!(
            cmds, 2,
            "write and read of {len} bytes at offset {off:#x} are one command each"
        );
    }
    assert_eq!(qp.stats().split_requests, 0);
    assert_no_ub(&dev);
}

#[test]
fn split_requests_complete_once_with_small_mdts() {
    // MDTS 1: 8 KiB per command, so 1 MiB needs 128 commands, more than the queue holds.
    let cfg = EmuConfig {
        mdts: 1,
        namespaces: vec![NsConfig::ram(1 << 12, 4096)],
        ..EmuConfig::default()
    };
    let (dev, ctrl) = bring_up(cfg, options());
    let ns = ctrl.namespace(1).unwrap().clone();
    let mut qp = ctrl
        .create_io_qpair(QueuePairOptions::default().entries(16))
        .unwrap();
    let cmds = write_read_verify(
        &ctrl,
        &mut qp,
        &ns,
        100,
        &[Seg {
            offset: 0,
            len: 1 << 20,
        }],
        9,
    );
    assert_eq!(cmds, 256, "1 MiB at 8 KiB per command, written and read");
    assert_eq!(qp.stats().completed, 2, "two requests, each completed once");
    assert_no_ub(&dev);
}

#[test]
fn qd1_and_full_queue_wrap_both_rings_many_times() {
    let cfg = EmuConfig {
        namespaces: vec![NsConfig::ram(1 << 12, 4096)],
        ..EmuConfig::default()
    };
    let (dev, ctrl) = bring_up(cfg, options());
    let ns = ctrl.namespace(1).unwrap().clone();
    let entries = 8u32;
    let mut qp = ctrl
        .create_io_qpair(QueuePairOptions::default().entries(entries))
        .unwrap();
    // QD 1: many times around an 8-entry ring.
    for i in 0..(entries as u64 * 5) {
        write_read_verify(
            &ctrl,
            &mut qp,
            &ns,
            i,
            &[Seg {
                offset: 0,
                len: 4096,
            }],
            i,
        );
    }
    // QD = entries - 1, kept full while the rings wrap.
    let depth = qp.capacity();
    assert_eq!(depth, entries as usize - 1);
    let total = 200u64;
    let (mut next, mut done) = (0u64, 0u64);
    let mut seen = vec![false; total as usize];
    while done < total {
        // Requests not yet taken back count against the depth, so the queue never refuses.
        while next < total && ((next - done) as usize) < depth {
            let b = ctrl.memory().alloc(4096, 4096).unwrap();
            b.copy_from_slice(0, &pattern(4096, next % 512, 7, 4096))
                .unwrap();
            qp.write(&ns, Lba(next % 512), b, next)
                .expect("a free slot was counted");
            next += 1;
        }
        assert!(qp.outstanding() <= depth);
        let c = wait_one(&mut qp, Duration::from_secs(10));
        c.result.unwrap();
        assert!(!seen[c.tag as usize], "tag {} completed twice", c.tag);
        seen[c.tag as usize] = true;
        done += 1;
    }
    assert!(seen.iter().all(|s| *s));
    assert_eq!(qp.stats().stale_cqes, 0);
    assert_no_ub(&dev);
}

#[test]
fn interrupt_mode_signals_the_queue_eventfd() {
    // Inline: the controller completes inside the doorbell write, so the vector's eventfd
    // must already be signalled when ring() returns.
    let cfg = EmuConfig {
        namespaces: vec![NsConfig::ram(1 << 12, 4096)],
        ..EmuConfig::default()
    };
    let (dev, ctrl) = bring_up(cfg, options());
    let ns = ctrl.namespace(1).unwrap().clone();
    let mut qp = ctrl
        .create_io_qpair(QueuePairOptions::default().mode(CompletionMode::Interrupt))
        .unwrap();
    let mut polled = ctrl.create_io_qpair(QueuePairOptions::default()).unwrap();
    assert!(
        polled.eventfd().is_none(),
        "a polled queue pair has no interrupt"
    );
    for i in 0..20 {
        qp.read(&ns, Lba(i), ctrl.memory().alloc(4096, 4096).unwrap(), i)
            .unwrap();
        qp.ring();
        let fired = qp
            .eventfd()
            .expect("interrupt mode has an eventfd")
            .read()
            .expect("eventfd signalled");
        assert!(fired >= 1);
        assert_eq!(qp.poll(), 1);
        qp.next_completion().unwrap().result.unwrap();
        // The polled queue pair's I/O must not signal anything.
        polled
            .read(&ns, Lba(i), ctrl.memory().alloc(4096, 4096).unwrap(), i)
            .unwrap();
        assert_eq!(polled.poll(), 1);
        polled.next_completion().unwrap().result.unwrap();
    }
    assert!(
        qp.eventfd().unwrap().read().is_err(),
        "no interrupt for the polled queue's I/O"
    );
    assert_no_ub(&dev);
}

#[test]
fn interrupt_mode_sleeps_until_the_device_signals() {
    // Thread mode: the controller works on its own thread, so wait() really sleeps on the
    // eventfd and is woken by the interrupt.
    let cfg = EmuConfig {
        mode: Mode::Thread,
        namespaces: vec![NsConfig::ram(1 << 12, 4096)],
        ..EmuConfig::default()
    };
    let (dev, ctrl) = bring_up(cfg, options());
    let ns = ctrl.namespace(1).unwrap().clone();
    let mut qp = ctrl
        .create_io_qpair(QueuePairOptions::default().mode(CompletionMode::Interrupt))
        .unwrap();
    for i in 0..50 {
        write_read_verify(
            &ctrl,
            &mut qp,
            &ns,
            i,
            &[Seg {
                offset: 0,
                len: 8192,
            }],
            i,
        );
    }
    let s = qp.stats();
    assert!(
        s.interrupts > 0,
        "completions arrived without an interrupt: {s:?}"
    );
    assert_eq!(s.lost_interrupts, 0, "{s:?}");
    assert_no_ub(&dev);
}

#[test]
fn several_queue_pairs_on_several_threads() {
    let cfg = EmuConfig {
        mode: Mode::Thread,
        namespaces: vec![NsConfig::ram(1 << 14, 4096)],
        ..EmuConfig::default()
    };
    let (dev, ctrl) = bring_up(cfg, options());
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let ctrl = ctrl.clone();
            std::thread::spawn(move || {
                let ns = ctrl.namespace(1).unwrap().clone();
                let mut qp = ctrl
                    .create_io_qpair(QueuePairOptions::default().entries(32))
                    .unwrap();
                // Each thread owns a disjoint LBA range.
                for i in 0..100 {
                    let lba = t * 4096 + (i * 3) % 4000;
                    let shape = [Seg {
                        offset: 0x200,
                        len: 12 << 10,
                    }];
                    write_read_verify(&ctrl, &mut qp, &ns, lba, &shape, t << 32 | i);
                }
                qp.stats().completed
            })
        })
        .collect();
    for t in threads {
        assert_eq!(t.join().expect("thread panicked"), 200);
    }
    assert_no_ub(&dev);
}

#[test]
fn bad_input_is_refused_before_anything_is_queued() {
    let cfg = EmuConfig {
        namespaces: vec![NsConfig::ram(1024, 4096)],
        ..EmuConfig::default()
    };
    let (dev, ctrl) = bring_up(cfg, options());
    let ns = ctrl.namespace(1).unwrap().clone();
    let mut qp = ctrl
        .create_io_qpair(QueuePairOptions::default().entries(4))
        .unwrap();
    let mem = ctrl.memory();

    // Not a whole number of blocks.
    let r = qp
        .write(&ns, Lba(0), mem.alloc(1000, 4096).unwrap(), 1)
        .unwrap_err();
    assert!(matches!(*r.error, Error::Invalid(_)), "{}", r.error);
    assert_eq!(r.bufs.into_one().expect("buffer back").len(), 1000);
    // Past the end of the namespace.
    let r = qp
        .read(&ns, Lba(1023), mem.alloc(8192, 4096).unwrap(), 1)
        .unwrap_err();
    assert!(r.error.to_string().contains("past"), "{}", r.error);
    // Not dword aligned.
    let mut b = mem.alloc(8192, 4096).unwrap();
    b.set_view(2, 4096).unwrap();
    let r = qp.read(&ns, Lba(0), b, 1).unwrap_err();
    assert!(matches!(*r.error, Error::Invalid(_)), "{}", r.error);
    // Zero length.
    let r = qp.readv(&ns, Lba(0), Vec::new(), 1).unwrap_err();
    assert!(matches!(*r.error, Error::Invalid(_)), "{}", r.error);
    assert_eq!(qp.stats().submitted, 0, "nothing was accepted");
    assert_eq!(qp.stats().commands, 0, "nothing reached the queue");

    // Queue full is backpressure the caller sees, with the buffer handed back.
    for i in 0..qp.capacity() as u64 {
        qp.read(&ns, Lba(i), mem.alloc(4096, 4096).unwrap(), i)
            .unwrap();
    }
    let r = qp
        .read(&ns, Lba(0), mem.alloc(4096, 4096).unwrap(), 99)
        .unwrap_err();
    assert!(matches!(*r.error, Error::QueueFull { .. }), "{}", r.error);
    assert!(r.bufs.into_one().is_some());
    let mut got = 0;
    while got < qp.capacity() {
        wait_one(&mut qp, Duration::from_secs(5)).result.unwrap();
        got += 1;
    }
    assert_no_ub(&dev);
}

#[test]
fn flush_write_zeroes_and_deallocate() {
    let cfg = EmuConfig {
        namespaces: vec![NsConfig::ram(1024, 4096)],
        ..EmuConfig::default()
    };
    let (dev, ctrl) = bring_up(cfg, options());
    let ns = ctrl.namespace(1).unwrap().clone();
    let mut qp = ctrl.create_io_qpair(QueuePairOptions::default()).unwrap();
    write_read_verify(
        &ctrl,
        &mut qp,
        &ns,
        10,
        &[Seg {
            offset: 0,
            len: 4 * 4096,
        }],
        5,
    );
    qp.flush(&ns, 1).unwrap();
    wait_one(&mut qp, Duration::from_secs(5)).result.unwrap();
    qp.write_zeroes(&ns, Lba(10), 2, 2).unwrap();
    wait_one(&mut qp, Duration::from_secs(5)).result.unwrap();
    qp.deallocate(&ns, &[(Lba(12), 1)], 3).unwrap();
    wait_one(&mut qp, Duration::from_secs(5)).result.unwrap();
    let bufs = alloc_iovec(
        &ctrl,
        &[Seg {
            offset: 0,
            len: 4 * 4096,
        }],
    );
    scatter(&bufs, &vec![0xff; 4 * 4096]);
    qp.readv(&ns, Lba(10), bufs, 4).unwrap();
    let c = wait_one(&mut qp, Duration::from_secs(5));
    c.result.unwrap();
    let got = nvme_dio_tests::io::gather(&c.bufs.into_vec());
    assert!(
        got[..3 * 4096].iter().all(|&b| b == 0),
        "zeroed and deallocated blocks read as zeroes"
    );
    assert_eq!(
        &got[3 * 4096..],
        &pattern(4096, 10, 5, 4 * 4096)[3 * 4096..],
        "block 13 kept its data"
    );
    assert_no_ub(&dev);
}

#[test]
fn raw_commands_let_the_device_judge_the_request() {
    use nvme_dio::spec::cmd::{Dptr, Read};
    let cfg = EmuConfig {
        namespaces: vec![NsConfig::ram(1024, 4096)],
        ..EmuConfig::default()
    };
    let (dev, ctrl) = bring_up(cfg, options());
    let ns = ctrl.namespace(1).unwrap().clone();
    let mut qp = ctrl.create_io_qpair(QueuePairOptions::default()).unwrap();
    // A read the driver would refuse (past the end) goes to the device as a raw command.
    let sqe = Read::new(ns.id(), Lba(1023), 2).build(Dptr::None);
    let buf = ctrl.memory().alloc(8192, 4096).unwrap();
    qp.submit_raw(sqe, Some(buf), 7).unwrap();
    let c = wait_one(&mut qp, Duration::from_secs(5));
    let e = c.result.unwrap_err();
    assert_eq!(
        e.to_string(),
        "Read failed on queue 1: LBA Out of Range (sct 0, sc 0x80, DNR)"
    );
    assert!(e.status().is_some_and(|s| s.dnr()));
    assert!(c.bufs.into_one().is_some());
    // A valid raw read works and uses a PRP list for 12 KiB at an offset.
    let mut buf = ctrl.memory().alloc(16384, 4096).unwrap();
    buf.set_view(0x800, 12288).unwrap();
    qp.submit_raw(
        Read::new(ns.id(), Lba(0), 3).build(Dptr::None),
        Some(buf),
        8,
    )
    .unwrap();
    wait_one(&mut qp, Duration::from_secs(5)).result.unwrap();
    assert_no_ub(&dev);
}

#[test]
fn drain_hands_back_every_request_in_flight() {
    let cfg = EmuConfig {
        mode: Mode::Thread,
        namespaces: vec![NsConfig::ram(1024, 4096)],
        ..EmuConfig::default()
    };
    let (dev, ctrl) = bring_up(cfg, options());
    let ns = ctrl.namespace(1).unwrap().clone();
    let mut qp = ctrl.create_io_qpair(QueuePairOptions::default()).unwrap();
    for i in 0..20 {
        qp.read(&ns, Lba(i), ctrl.memory().alloc(4096, 4096).unwrap(), i)
            .unwrap();
    }
    let mut got: Vec<u64> = qp
        .drain(Duration::from_secs(10))
        .unwrap()
        .into_iter()
        .map(|c| c.tag)
        .collect();
    got.sort();
    assert_eq!(got, (0..20).collect::<Vec<_>>());
    assert_eq!(qp.outstanding(), 0);
    assert_no_ub(&dev);
}

#[test]
fn breaking_out_of_completions_loses_nothing() {
    use nvme_dio_emu::{Action, Fault, Target};
    use nvme_dio_queue::Status;
    let (dev, ctrl) = bring_up(EmuConfig::default(), options());
    let ns = ctrl.namespace(1).unwrap().clone();
    let mut qp = ctrl.create_io_qpair(QueuePairOptions::default()).unwrap();
    // The first of eight reads fails; the loop below gives up at the first error, as a `?`
    // would.
    dev.inject(Fault::Command {
        target: Target::NthIo(0),
        action: Action::Status(Status::new(0, 0x06).with_dnr()),
    })
    .unwrap();
    for tag in 0..8 {
        qp.read(&ns, Lba(tag), ctrl.memory().alloc(4096, 4096).unwrap(), tag)
            .unwrap();
    }
    while qp.ready() < 8 {
        qp.wait(Duration::from_secs(1)).unwrap();
    }
    let mut seen = Vec::new();
    for c in qp.completions() {
        seen.push(c.tag);
        if c.result.is_err() {
            break;
        }
    }
    assert_eq!(
        seen,
        vec![0],
        "the failed read comes first and ends the loop"
    );
    assert_eq!(qp.ready(), 7, "the seven not yielded are still queued");
    let rest: Vec<u64> = qp.completions().map(|c| c.tag).collect();
    assert_eq!(
        rest,
        (1..8).collect::<Vec<_>>(),
        "and come out next time, in order"
    );
    assert_eq!(qp.stats().completed, 8);
    assert_no_ub(&dev);
}

/// Issue 12, defect 12: a controller with fewer MSI-X vectors than queue pairs (QEMU's
/// `msix_qsize`): the queue pairs share the I/O vectors, say so in their stats, and every
/// request of every sharer completes, woken by the shared interrupt. Before, the second
/// interrupt-mode queue pair was refused ("needs MSI-X vector 2, but 2 are enabled").
#[test]
fn interrupt_mode_shares_vectors_when_the_controller_has_too_few() {
    let cfg = EmuConfig {
        mode: Mode::Thread,
        // The admin vector and one I/O vector, for three queue pairs.
        msix_vectors: 2,
        namespaces: vec![NsConfig::ram(1 << 14, 4096)],
        ..EmuConfig::default()
    };
    let (dev, ctrl) = bring_up(cfg, options().io_queues(3));
    let threads: Vec<_> = (0..3u64)
        .map(|t| {
            let ctrl = ctrl.clone();
            std::thread::spawn(move || {
                let ns = ctrl.namespace(1).unwrap().clone();
                let mut qp = ctrl
                    .create_io_qpair(QueuePairOptions::default().mode(CompletionMode::Interrupt))
                    .expect("interrupt mode on a shared vector");
                for i in 0..100 {
                    write_read_verify(
                        &ctrl,
                        &mut qp,
                        &ns,
                        t * 1000 + i,
                        &[Seg {
                            offset: 0,
                            len: 4096,
                        }],
                        t * 7 + i,
                    );
                }
                qp.stats()
            })
        })
        .collect();
    for t in threads {
        let s = t.join().expect("thread");
        assert_eq!((s.vector, s.vector_shared), (Some(1), true), "{s:?}");
        assert_eq!(s.completed, 200, "{s:?}");
        assert_eq!(s.errors, 0, "{s:?}");
        assert!(s.interrupts > 0, "woken by the shared interrupt: {s:?}");
        assert_eq!(s.lost_interrupts, 0, "no sharer's wakeup swallowed: {s:?}");
    }
    assert_no_ub(&dev);
}

#[test]
fn interrupt_coalescing_reaches_the_controller_and_survives_a_reset() {
    use nvme_dio::Coalescing;
    let c = Coalescing::new(8, Duration::from_micros(250)).unwrap();
    assert_eq!(
        (c.threshold, c.time_100us),
        (8, 3),
        "time rounds up to 100 us units"
    );
    let (dev, ctrl) = bring_up(EmuConfig::default(), options().coalescing(Some(c)));
    // Spec encoding: threshold 0's based, time in 100 us units.
    assert_eq!(dev.interrupt_coalescing(), (7, 3));
    assert_eq!(ctrl.info().coalescing, Some(c));
    // A reset sets features back to their defaults; the driver programs it again.
    ctrl.reset().unwrap();
    assert_eq!(
        dev.interrupt_coalescing(),
        (7, 3),
        "programmed again after the reset"
    );
    // Without the option the controller's default stays.
    let (dev, _ctrl) = bring_up(EmuConfig::default(), options());
    assert_eq!(dev.interrupt_coalescing(), (0, 0));
    // Out of range: a clear error, nothing sent.
    for (t, time) in [(0, Duration::ZERO), (1, Duration::from_micros(25_600))] {
        let e = Coalescing::new(t, time).unwrap_err();
        assert!(e.to_string().contains("25.5 ms"), "{e}");
    }
}
