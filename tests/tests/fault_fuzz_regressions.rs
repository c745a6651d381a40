//! Minimal reproducers of what the fuzz targets (fuzz/, `ci/fuzz`) found. A test marked
//! `#[ignore = "bug: ..."]` reproduces a bug that is not fixed yet: fix it, then drop the
//! ignore (and the matching skip in the fuzz harness, named in the test's comment).

use std::sync::Arc;
use std::time::Duration;

use nvme_dio::{
    CompletionMode, Controller, ControllerOptions, Error, Lba, MemoryOptions, QueuePairOptions,
};
use nvme_dio_emu::{EmuConfig, EmuFunction, Mode, NsConfig};
use nvme_dio_queue::plan::{self, Limits};
use nvme_dio_queue::prp::{self, PrpListPages, Segment};
use nvme_dio_queue::{Iova, PageSize};

fn bring_up() -> (Arc<EmuFunction>, Controller<EmuFunction>) {
    let cfg = EmuConfig {
        mode: Mode::Inline,
        namespaces: vec![NsConfig::ram(256, 512)],
        ..EmuConfig::default()
    };
    let dev = Arc::new(EmuFunction::new(cfg).expect("emulated controller"));
    let opts = ControllerOptions::default()
        .io_queues(1)
        .memory(MemoryOptions::any_pages(2 << 20))
        .admin_timeout(Duration::from_secs(5))
        .interrupts(false);
    let ctrl = Controller::new(Arc::clone(&dev), opts).expect("bring-up");
    (dev, ctrl)
}

/// Found by `cqe_processing`. A junk CQE names a command in flight (right SQ, right CID) but
/// carries an SQ head out of range: the driver completes the command and frees its slot,
/// but keeps its SQ head (bad_sq_heads). The command's real CQE then arrives stale, and a
/// stale CQE's SQ head is ignored, so the head never catches up. With 2 slots in a 3-entry
/// ring, the next submit finds a free slot but a ring it believes full, and
/// `SqRing::push`'s `debug_assert!(!is_full)` ("caller checks is_full (trackers bound the
/// ring)") panics. The assumption that a free tracker means a free SQ slot holds only while
/// every SQ head comes from a trusted CQE. In a release build the entry is written anyway;
/// on a device that had not fetched the ring, the new tail equals its head and the ring
/// looks empty, so the queued commands are never executed (timeouts, then a reset).
/// Fixed: the SQ head is taken from every CQE of the SQ that passes the range check (stale
/// ones included), and a submit finds no slot while the ring is full (backpressure).
#[test]
fn fault_junk_cqe_with_bad_sq_head_does_not_overfill_the_sq() {
    let (dev, ctrl) = bring_up();
    let ns = ctrl.namespace(1).unwrap().clone();
    let mut qp = ctrl
        .create_io_qpair(
            QueuePairOptions::default()
                .entries(3)
                .mode(CompletionMode::Poll)
                .timeout(Duration::from_secs(600)),
        )
        .unwrap();
    // The junk CQE's error status has DNR clear: with retries on, tag 1 would go out again
    // instead of completing with it. This test is about the SQ head, so retries are off.
    qp.set_retries(0);
    let qid = qp.qid().0;
    qp.flush(&ns, 1).unwrap();
    // The first command's CID: slot 0, generation 1, with one slot bit for two slots.
    let cid = 1u32 << 1;
    let status = 0x3f5e_u32; // any error status
    assert!(dev.post_raw_cqe(qid, [0, 0, 1023 | (qid as u32) << 16, cid | status << 16]));
    qp.flush(&ns, 2).unwrap();
    qp.poll();
    let early = qp.next_completion().expect("the junk completes tag 1");
    assert_eq!(early.tag, 1);
    assert!(matches!(early.result, Err(Error::Command { .. })));
    assert_eq!(qp.stats().bad_sq_heads, 1);
    assert_eq!(qp.stats().stale_cqes, 1, "tag 1's real CQE");

    // A slot is free; submitting must not panic (accepted, or refused as full).
    let buf = ctrl.memory().alloc(512, 4096).unwrap();
    match qp.read(&ns, Lba(0), buf, 3) {
        Ok(()) => {}
        Err(r) => assert!(matches!(*r.error, Error::QueueFull { .. }), "{:?}", r.error),
    }
    // Everything accepted completes once (tag 2 now, tag 3 if accepted).
    for _ in 0..10 {
        qp.poll();
    }
    let mut tags: Vec<u64> = std::iter::from_fn(|| qp.next_completion())
        .map(|c| c.tag)
        .collect();
    tags.sort();
    assert!(tags == [2] || tags == [2, 3], "{tags:?}");
}

/// List pages at 0x7000_0000 for the PRP builder.
struct Pages(Vec<u64>);

impl PrpListPages for Pages {
    fn page(&mut self, n: usize) -> Option<Iova> {
        (n < 4).then(|| Iova(0x7000_0000 + n as u64 * 4096))
    }
    fn set(&mut self, _n: usize, _i: usize, entry: u64) {
        self.0.push(entry);
    }
}

/// Found by `plan_prp_sgl`. A segment whose bytes run past 2^64 (IOVA
/// 0xffff_ffff_ffff_ff00, 512 bytes) is accepted by `plan::plan` as one command, and
/// `prp::build_range` then overflows computing its last page (`start + len - 1`): a panic
/// with overflow checks, and in a release build a wrapped end, so garbage PRPs. The driver
/// cannot produce such a segment (DMA buffers never wrap), so this is a gap in the pure
/// planner's input checks, not a reachable I/O bug. Fixed: the planner refuses such a
/// segment (`PlanError::SegmentWraps`).
#[test]
fn fault_plan_refuses_a_segment_that_wraps_the_address_space() {
    let limits = Limits {
        lba_size: 512,
        page: PageSize::SIZE_4K,
        max_transfer: plan::max_transfer(None, PageSize::SIZE_4K, 1),
        noiob: 0,
        ns_blocks: 1 << 20,
        sgl: None,
    };
    let segs = [Segment::new(0xffff_ffff_ffff_ff00, 512)];
    match plan::plan(&segs, nvme_dio_queue::Lba(0), &limits) {
        Err(_) => {}
        Ok(p) => {
            // If it is planned, building it must at least not panic or wrap.
            let c = p.commands()[0];
            let r = std::panic::catch_unwind(|| {
                prp::build_range(&segs, &c.segs, PageSize::SIZE_4K, &mut Pages(Vec::new()))
            });
            panic!("planned a wrapping segment as {c:?}; building it gives {r:?}");
        }
    }
}
