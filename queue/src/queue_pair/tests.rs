//! The core's tests: table tests of the ring indices and CIDs, and a property test that drives
//! the core against a model controller through random interleavings and checks the
//! invariants of the module docs after every step.

use std::collections::HashSet;

use proptest::prelude::*;

use super::model::{Model, Step, Token, VecSink};
use super::ring::{CqIndex, SqIndex};
use super::tracker::{NO_PARENT, Slab};
use super::*;
use crate::cmd::Read;
use crate::{Lba, Nsid};

fn size(n: u32) -> QueueSize {
    QueueSize::new(n).unwrap()
}

// ---- table tests ------------------------------------------------------------------------

#[test]
fn sq_full_and_empty_and_wrap() {
    let mut sq = SqIndex::new(size(4));
    assert!(!sq.is_full());
    assert_eq!(sq.take_doorbell(), None, "nothing pushed, nothing owed");
    assert_eq!((sq.push(), sq.push(), sq.push()), (0, 1, 2));
    assert!(sq.is_full(), "(tail + 1) % 4 == head: one slot stays empty");
    assert_eq!(sq.take_doorbell(), Some(3));
    assert_eq!(sq.take_doorbell(), None, "once per batch");
    assert!(sq.set_head(2));
    assert!(!sq.is_full());
    assert_eq!(sq.push(), 3);
    assert_eq!(sq.push(), 0, "the tail wraps to slot 0");
    assert!(sq.is_full());
    assert_eq!(sq.take_doorbell(), Some(1));
}

#[test]
fn sq_head_only_moves_forward_within_what_was_rung() {
    let mut sq = SqIndex::new(size(8));
    for _ in 0..5 {
        sq.push();
    }
    assert!(
        !sq.set_head(1),
        "nothing rung yet: the controller cannot have consumed slot 0"
    );
    sq.take_doorbell();
    assert!(sq.set_head(3));
    assert!(sq.set_head(3), "the same head again is fine");
    assert!(!sq.set_head(6), "past the tail the controller was told (5)");
    assert!(!sq.set_head(8), "not a slot index");
    assert!(
        !sq.set_head(2),
        "backwards looks like a move past the tail: refused"
    );
    assert!(sq.set_head(5));
    assert_eq!(sq.unconsumed(), 0);
}

#[test]
fn cq_phase_flips_on_every_wrap() {
    let mut cq = CqIndex::new(size(3));
    assert_eq!(
        (cq.head(), cq.phase()),
        (0, true),
        "first pass posts phase 1"
    );
    assert_eq!(cq.take_doorbell(), None);
    cq.advance();
    cq.advance();
    assert_eq!((cq.head(), cq.phase()), (2, true));
    cq.advance();
    assert_eq!(
        (cq.head(), cq.phase()),
        (0, false),
        "wrapped: phase 0 now means new"
    );
    assert_eq!(cq.take_doorbell(), Some(0));
    assert_eq!(cq.take_doorbell(), None);
    for _ in 0..3 {
        cq.advance();
    }
    assert_eq!((cq.head(), cq.phase()), (0, true));
    cq.reset();
    assert_eq!((cq.head(), cq.phase(), cq.take_doorbell()), (0, true, None));
}

#[test]
fn cid_generation_catches_a_reused_slot() {
    let mut slab: Slab<()> = Slab::new(3);
    let s = slab.claim(2, NO_PARENT, 7, Some(())).unwrap();
    let first = slab.cid(s);
    assert_eq!(slab.lookup(first), Some(s));
    slab.release(s);
    assert_eq!(slab.lookup(first), None, "released: the CID is stale");
    let again = slab.claim(2, NO_PARENT, 8, Some(())).unwrap();
    assert_eq!(again, s, "the same slot comes back first");
    let second = slab.cid(again);
    assert_ne!(first, second, "but with another generation");
    assert_eq!(
        slab.lookup(first),
        None,
        "the old CID does not match the new use"
    );
    assert_eq!(slab.lookup(second), Some(s));
    assert_eq!(slab.lookup(Cid(0xffff)), None, "no such slot");
}

#[test]
fn cid_generations_wrap_within_the_bits_left() {
    // 3 slots: 2 slot bits, 14 generation bits.
    let mut slab: Slab<()> = Slab::new(3);
    let mut seen = HashSet::new();
    for _ in 0..(1 << 14) {
        let s = slab.claim(0, NO_PARENT, 0, Some(())).unwrap();
        assert!(
            seen.insert(slab.cid(s)),
            "a CID repeats only after 2^14 uses"
        );
        slab.release(s);
    }
    let s = slab.claim(0, NO_PARENT, 0, Some(())).unwrap();
    assert!(!seen.insert(slab.cid(s)), "then the generation wraps");
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => prop::bool::weighted(0.1).prop_map(|fail| Step::One { fail }),
        2 => (2u8..6, 0u8..2).prop_map(|(children, bad)| Step::Split { children, bad }),
        4 => Just(Step::Doorbell),
        4 => (1u8..8).prop_map(|n| Step::Fetch { n }),
        6 => (any::<u8>(), 0u8..4).prop_map(|(pick, status)| Step::Complete { pick, status }),
        2 => (0u8..3, any::<u8>()).prop_map(|(kind, pick)| Step::Junk { kind, pick }),
        1 => (0u16..400).prop_map(|ms| Step::Tick { ms }),
        1 => (0u8..10).prop_map(|kind| Step::Teardown { kind }),
        2 => Just(Step::Pump),
        1 => Just(Step::Pause),
        3 => Just(Step::Take),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    /// Random interleavings of submits (single and split, with build failures), doorbells,
    /// fetches, completions in any order, junk CQEs, ticks past deadlines and teardowns:
    /// after every step the invariants hold, and at the end every request came out once.
    #[test]
    fn core_against_a_model_controller(
        entries in prop_oneof![Just(2u32), Just(3), Just(4), Just(8), Just(33)],
        retries in prop_oneof![Just(0u8), Just(2)],
        steps in proptest::collection::vec(step(), 1..200),
    ) {
        let mut m = Model::with_retries(entries, retries);
        for s in &steps {
            m.run(s);
            m.check();
        }
        m.quiesce();
    }
}

#[test]
fn a_split_completes_once_after_its_last_child_with_the_first_failure() {
    let mut m = Model::new(3); // two slots: a split of 4 must wait for slots
    m.run(&Step::Split {
        children: 4,
        bad: 0,
    });
    assert_eq!(m.core.commands_in_flight(), 2);
    assert_eq!(m.core.splits_waiting(), 1);
    m.run(&Step::One { fail: false });
    assert_eq!(m.accepted.len(), 1, "nothing overtakes a waiting split");
    m.run(&Step::Doorbell);
    m.run(&Step::Fetch { n: 2 });
    m.run(&Step::Complete { pick: 0, status: 2 }); // the first child fails
    m.run(&Step::Complete { pick: 0, status: 0 });
    m.core.pump(&mut m.sink);
    assert_eq!(m.core.commands_in_flight(), 0, "no child after a failure");
    let d = m
        .core
        .next_delivery()
        .expect("delivered after its last child");
    assert!(
        matches!(d.outcome, Outcome::Status { opcode: 0x02, .. }),
        "{:?}",
        d.outcome
    ); // tag 1: a read
    assert!(m.core.next_delivery().is_none(), "exactly once");
    m.core.check_accounting().unwrap();
}

#[test]
fn deadlines_count_from_the_first_tick_and_abort_then_reset() {
    let mut m = Model::new(4);
    m.run(&Step::One { fail: false });
    m.run(&Step::Doorbell);
    m.run(&Step::Fetch { n: 1 });
    let t0 = Stamp(1_000_000_000);
    let t = m.core.on_tick(t0);
    assert_eq!(
        (t.aborts.len(), t.reset),
        (0, false),
        "first sight: the clock starts"
    );
    let t = m.core.on_tick(Stamp(t0.0 + 100_000_000));
    assert_eq!(
        (t.aborts.len(), t.reset),
        (0, false),
        "at the deadline, not past it"
    );
    let t = m.core.on_tick(Stamp(t0.0 + 100_000_001));
    assert_eq!(t.aborts.len(), 1, "past the deadline: abort it once");
    let t = m.core.on_tick(Stamp(t0.0 + 150_000_000));
    assert_eq!(
        (t.aborts.len(), t.reset),
        (0, false),
        "within the grace period"
    );
    let t = m.core.on_tick(Stamp(t0.0 + 300_000_002));
    assert!(t.reset, "not back a grace period after the Abort: reset");
    assert_eq!(m.core.counters().timeouts, 1);
}

#[test]
fn an_aborted_command_is_delivered_as_a_timeout() {
    let mut m = Model::new(4);
    m.run(&Step::One { fail: false });
    m.run(&Step::Doorbell);
    m.run(&Step::Fetch { n: 1 });
    m.core.on_tick(Stamp(0));
    let cid = m.core.on_tick(Stamp(200_000_000)).aborts[0];
    let v = m
        .core
        .on_cqe(m.cqe(cid.0, Status::new(0, sc::ABORT_REQUESTED)));
    assert_eq!(v, CqeVerdict::Matched);
    let d = m.core.next_delivery().unwrap();
    assert_eq!(d.outcome, Outcome::TimedOut { opcode: 0x02 });
}

#[test]
fn teardown_retires_everything_once_and_empties_the_rings() {
    let mut m = Model::new(8);
    for _ in 0..3 {
        m.run(&Step::One { fail: false });
    }
    m.run(&Step::Split {
        children: 5,
        bad: 0,
    });
    m.run(&Step::Doorbell);
    m.run(&Step::Fetch { n: 2 });
    m.run(&Step::Complete { pick: 0, status: 0 });
    m.teardown(Teardown::Dead);
    let mut outcomes = Vec::new();
    while let Some(d) = m.core.next_delivery() {
        outcomes.push((d.tag, d.outcome));
    }
    assert_eq!(outcomes.len(), 4, "{outcomes:?}");
    assert_eq!(
        outcomes[0].1,
        Outcome::Success,
        "completed before the teardown"
    );
    assert!(
        outcomes[1..]
            .iter()
            .all(|(_, o)| *o == Outcome::TornDown(Teardown::Dead))
    );
    assert_eq!(m.core.sq_indices(), (0, 0, 0));
    assert_eq!((m.core.cq_head(), m.core.cq_phase()), (0, true));
    m.core.check_accounting().unwrap();
}

#[test]
fn accounting_check_can_fail() {
    let mut m = Model::new(4);
    m.run(&Step::One { fail: false });
    m.core.counters.submitted += 1; // a request counted but never tracked
    assert!(m.core.check_accounting().is_err());
}

// ---- retries ----------------------------------------------------------------------------

#[test]
fn a_retryable_status_places_the_same_entry_again_under_a_new_cid_and_delivers_once() {
    let mut core: QueuePairCore<Token> =
        QueuePairCore::new(Qid(1), size(4), Duration::from_secs(1), 0);
    core.set_retries(2);
    let mut sink = VecSink {
        ring: vec![None; 4],
        slot_mask: 0b11,
        ..VecSink::default()
    };
    core.submit(&mut sink, 7, Token(7), |_, _| {
        Ok::<_, ()>(Read::new(Nsid(1), Lba(42), 1).build(Dptr::None))
    })
    .unwrap();
    let first = sink.ring[0].unwrap();
    let cqe = |cid: u16, sqhd: u16, status: Status| Cqe {
        result: 0,
        rsvd: 0,
        sqhd,
        sqid: 1,
        cid,
        status,
    };
    let retryable = Status::new(sct::GENERIC, sc::INTERNAL_ERROR);
    core.take_sq_doorbell();
    assert_eq!(
        core.on_cqe(cqe(first.cid, 1, retryable)),
        CqeVerdict::Matched
    );
    assert_eq!(core.ready(), 0, "retried, not delivered");
    assert_eq!(core.retries_waiting(), 1);
    core.pump(&mut sink);
    let second = sink.ring[1].unwrap();
    assert_ne!(second.cid, first.cid, "a new CID generation");
    assert_eq!(
        Sqe { cid: 0, ..second },
        Sqe { cid: 0, ..first },
        "the same entry"
    );
    // A duplicate of the first placement's CQE is stale now.
    core.take_sq_doorbell();
    assert_eq!(core.on_cqe(cqe(first.cid, 2, retryable)), CqeVerdict::Stale);
    // Failing again: the second retry; then a third failure is delivered (limit 2).
    assert_eq!(
        core.on_cqe(cqe(second.cid, 2, retryable)),
        CqeVerdict::Matched
    );
    core.pump(&mut sink);
    let third = sink.ring[2].unwrap();
    core.take_sq_doorbell();
    core.on_cqe(cqe(third.cid, 3, retryable));
    let d = core
        .next_delivery()
        .expect("delivered after the last retry");
    assert_eq!((d.tag, d.bufs), (7, Token(7)));
    assert!(matches!(d.outcome, Outcome::Status { .. }));
    assert!(core.next_delivery().is_none());
    assert_eq!(core.counters().retries, 2);
    assert_eq!(core.counters().failed, 1);
    core.check_accounting().unwrap();
}

#[test]
fn a_reset_keeps_retryable_requests_and_places_them_on_the_new_queues() {
    let mut core: QueuePairCore<Token> =
        QueuePairCore::new(Qid(1), size(4), Duration::from_secs(1), 0);
    core.set_retries(1);
    let mut sink = VecSink {
        ring: vec![None; 4],
        slot_mask: 0b11,
        ..VecSink::default()
    };
    for tag in [1, 2] {
        core.submit(&mut sink, tag, Token(tag), |_, _| {
            Ok::<_, ()>(Read::new(Nsid(1), Lba(tag), 1).build(Dptr::None))
        })
        .unwrap();
    }
    core.on_teardown(Teardown::Reset, 1);
    core.on_teardown(Teardown::Reset, 1); // adopted twice (reset, then re-created): one try
    assert_eq!(core.ready(), 0);
    assert_eq!(core.retries_waiting(), 2);
    assert_eq!(core.counters().retries, 2);
    sink.ring = vec![None; 4];
    sink.unconsumed.clear();
    core.pump(&mut sink);
    assert!(sink.ring[0].is_some() && sink.ring[1].is_some());
    // The next reset is one too many: delivered as torn down.
    core.on_teardown(Teardown::Reset, 2);
    let tags: Vec<u64> = std::iter::from_fn(|| core.next_delivery())
        .map(|d| {
            assert_eq!(d.outcome, Outcome::TornDown(Teardown::Reset));
            d.tag
        })
        .collect();
    assert_eq!(tags, vec![1, 2]);
    core.check_accounting().unwrap();
    // A dead controller retires waiting retries too.
    core.submit(&mut sink, 3, Token(3), |_, _| {
        Ok::<_, ()>(Read::new(Nsid(1), Lba(3), 1).build(Dptr::None))
    })
    .unwrap();
    core.on_teardown(Teardown::Reset, 3);
    assert_eq!(core.retries_waiting(), 1);
    core.on_teardown(Teardown::Dead, 3);
    assert_eq!(core.retries_waiting(), 0);
    assert_eq!(
        core.next_delivery().unwrap().outcome,
        Outcome::NotSent(Teardown::Dead),
        "waiting to go out again, it was with no controller: its buffers are free"
    );
    core.check_accounting().unwrap();
}

#[test]
fn while_paused_requests_are_accepted_placed_only_after_resume_and_have_no_deadline() {
    let mut m = Model::new(4);
    m.run(&Step::Pause);
    m.run(&Step::One { fail: false });
    m.run(&Step::Split {
        children: 2,
        bad: 0,
    });
    assert_eq!(
        m.accepted.len(),
        2,
        "both accepted: the submitter never waits"
    );
    assert_eq!(
        m.core.take_sq_doorbell(),
        None,
        "nothing placed while paused"
    );
    assert!(m.sink.ring.iter().all(Option::is_none));
    m.core.pump(&mut m.sink);
    assert!(
        m.sink.ring.iter().all(Option::is_none),
        "pump places nothing"
    );
    // Time passes during the reset: a request that never reached the controller has no
    // deadline to miss.
    let first = m.core.on_tick(Stamp(1));
    assert!(first.aborts.is_empty() && !first.reset);
    let later = m.core.on_tick(Stamp(10_000_000_000));
    assert!(later.aborts.is_empty() && !later.reset);
    assert_eq!(m.core.counters().timeouts, 0);
    // The reset settles: the queues are re-created (teardown for reset) and placing resumes.
    m.teardown(Teardown::Reset);
    m.core.pump(&mut m.sink);
    m.run(&Step::Doorbell);
    assert_eq!(m.dev_tail, 3, "the single, then both children");
    m.quiesce();
    assert_eq!(m.core.counters().failed, 0);
}

#[test]
fn requests_accepted_while_paused_fail_once_when_the_queues_are_lost() {
    let mut m = Model::new(8);
    m.run(&Step::Pause);
    m.run(&Step::One { fail: false });
    m.run(&Step::Split {
        children: 3,
        bad: 0,
    });
    m.core.resume();
    m.core.fail_retries(Teardown::Reset);
    m.take();
    assert!(m.accepted.values().all(|done| *done), "{:?}", m.accepted);
    assert_eq!(m.core.counters().failed, 2);
    assert_eq!(m.core.requests_in_flight(), 0);
    m.check();
}

#[test]
fn a_split_child_with_a_retryable_status_goes_again_and_the_split_is_delivered_once() {
    let mut m = Model::with_retries(8, 1);
    m.run(&Step::Split {
        children: 3,
        bad: 0,
    });
    m.run(&Step::Doorbell);
    m.run(&Step::Fetch { n: 3 });
    m.run(&Step::Complete { pick: 1, status: 3 }); // retryable: goes out again
    assert_eq!(m.core.retries_waiting(), 1);
    assert_eq!(m.core.ready(), 0);
    m.core.pump(&mut m.sink);
    m.quiesce();
    let c = m.core.counters();
    assert_eq!((c.succeeded, c.failed, c.retries), (1, 0, 1));
    assert_eq!(c.commands, 4, "three children and one retry");
}

#[test]
fn with_retries_a_split_survives_a_reset() {
    let mut m = Model::with_retries(3, 1); // two slots: two of four children go out first
    m.run(&Step::Split {
        children: 4,
        bad: 0,
    });
    m.run(&Step::Doorbell);
    m.run(&Step::Fetch { n: 2 });
    m.run(&Step::Complete { pick: 0, status: 0 });
    m.teardown(Teardown::Reset);
    assert_eq!(m.core.ready(), 0, "not failed by the reset");
    assert_eq!(
        m.core.retries_waiting(),
        1,
        "the child in flight waits to go again"
    );
    m.quiesce();
    let c = m.core.counters();
    assert_eq!((c.succeeded, c.failed), (1, 0));
    // Without retries the same reset fails it.
    let mut m = Model::new(3);
    m.run(&Step::Split {
        children: 4,
        bad: 0,
    });
    m.teardown(Teardown::Reset);
    m.take();
    assert_eq!(m.core.counters().failed, 1);
}

#[test]
fn split_children_move_the_metadata_pointer_and_the_reference_tag() {
    use crate::pi::{PiTags, Prinfo};
    let mut m = Model::new(8);
    let tags = PiTags {
        reftag: 100,
        apptag: 7,
        appmask: 0xffff,
    };
    let op = SplitOp {
        write: true,
        fua: false,
        nsid: crate::Nsid(1),
        meta: SplitMeta {
            slba: crate::Lba(0),
            mptr: 0x9000,
            ms: 8,
            prinfo: Prinfo::CHECK_ALL,
            tags,
            ref_increments: true,
            ref_mask: 0xffff_ffff,
        },
        kind: SplitKind::Rw,
    };
    let segs = vec![
        Segment {
            iova: crate::Iova(0x10000),
            len: 4096
        };
        3
    ];
    m.core
        .submit_split(&mut m.sink, 1, Token(1), op, segs, Model::children(3))
        .unwrap();
    let got: Vec<(u64, u32, u32, u32)> = m
        .sink
        .ring
        .iter()
        .flatten()
        .map(|s| (s.mptr, s.cdw14, s.cdw15, s.cdw12 >> 26))
        .collect();
    // Children at blocks 0, 8 and 16 of 8 blocks each: MPTR moves 64 bytes, the tag 8.
    assert_eq!(
        got,
        [
            (0x9000, 100, 0xffff_0007, 0b0111),
            (0x9040, 108, 0xffff_0007, 0b0111),
            (0x9080, 116, 0xffff_0007, 0b0111)
        ]
    );
}
