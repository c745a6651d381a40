//! A model controller for the core: it consumes the entries the core writes, completes
//! them in any order, posts junk CQEs, advances time and tears the queues down, and checks
//! the core's invariants after every step. The core's property test and the
//! `cqe_processing` fuzz target both drive the core through it (`feature = "model"`).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use super::*;
use crate::cmd::Read;
use crate::status::sc;
use crate::{Lba, Nsid, SegRange};

fn size(n: u32) -> QueueSize {
    QueueSize::new(n).expect("2..=65536 entries")
}

/// A buffer set stand-in: the tag it was submitted under, so its return can be checked.
#[derive(Debug, PartialEq, Eq)]
pub struct Token(pub u64);

/// The model's SQ ring: entries, and the checks of what the core writes.
#[derive(Debug, Default)]
pub struct VecSink {
    pub(crate) ring: Vec<Option<Sqe>>,
    /// SQ indices written and not yet consumed by the model controller.
    pub(crate) unconsumed: BTreeSet<u32>,
    /// Fail the next `n` data pointer builds.
    pub(crate) fail_builds: u32,
    /// Every CID the model controller holds (consumed from the ring, not completed).
    pub(crate) device_holds: BTreeSet<u16>,
    pub(crate) slot_mask: u16,
    pub(crate) violations: Vec<String>,
}

impl Sink for VecSink {
    fn write_sqe(&mut self, index: u32, sqe: &Sqe) {
        if !self.unconsumed.insert(index) {
            self.violations.push(format!(
                "SQ slot {index} overwritten before the controller read it"
            ));
        }
        let slot = sqe.cid & self.slot_mask;
        if self.device_holds.iter().any(|c| c & self.slot_mask == slot) {
            self.violations.push(format!(
                "tracker slot {slot} reused while the controller holds it"
            ));
        }
        self.ring[index as usize] = Some(*sqe);
    }

    fn data_pointer(
        &mut self,
        slot: u16,
        _segs: &[Segment],
        _cmd: &Command,
    ) -> Result<Dptr, DptrError> {
        if self.fail_builds > 0 {
            self.fail_builds -= 1;
            return Err(DptrError::Prp(PrpError::Prp1NotDwordAligned { iova: 1 }));
        }
        Ok(Dptr::Prp {
            prp1: 0x1000 * (slot as u64 + 1),
            prp2: 0,
        })
    }
}

/// One event the model feeds the core.
#[derive(Clone, Debug)]
#[allow(missing_docs)] // each variant's doc names its fields
pub enum Step {
    /// Submit a request of one command; `fail` makes its builder refuse.
    One { fail: bool },
    /// Submit a split of `children` commands; `bad` of them fail to build.
    Split { children: u8, bad: u8 },
    /// Take the SQ doorbell value (the model controller sees the tail).
    Doorbell,
    /// The controller reads up to `n` entries from the SQ.
    Fetch { n: u8 },
    /// The controller completes the `pick`-th command it holds, with `status`.
    Complete { pick: u8, status: u8 },
    /// A CQE naming another SQ, a stale CID, or a CID completed before.
    Junk { kind: u8, pick: u8 },
    /// Time passes, then a tick.
    Tick { ms: u16 },
    /// The controller is reset (or declared dead, or removed).
    Teardown { kind: u8 },
    /// The shell pumps waiting split children.
    Pump,
    /// A controller reset begins: the core is paused until the next teardown.
    Pause,
    /// The shell takes deliveries.
    Take,
}

/// The core, its sink and a model controller.
#[derive(Debug)]
pub struct Model {
    pub(crate) core: QueuePairCore<Token>,
    pub(crate) sink: VecSink,
    pub(crate) entries: u32,
    /// The model controller's SQ head and the tail it was told.
    pub(crate) dev_head: u32,
    pub(crate) dev_tail: u32,
    /// Per CID held: was it aborted on request?
    pub(crate) held_order: Vec<u16>,
    pub(crate) completed_cids: Vec<u16>,
    pub(crate) accepted: BTreeMap<u64, bool>, // tag -> delivered
    pub(crate) next_tag: u64,
    pub(crate) now: u64,
    pub(crate) epoch: u64,
}

impl Model {
    /// A core of `entries` entries per ring, and an idle model controller.
    pub fn new(entries: u32) -> Model {
        Model::with_retries(entries, 0)
    }

    /// The same with a retry limit: requests failed with a retryable status, or dropped by
    /// a teardown for reset, are placed again up to `retries` times.
    pub fn with_retries(entries: u32, retries: u8) -> Model {
        let mut m = Model::plain(entries);
        m.core.set_retries(retries);
        m
    }

    fn plain(entries: u32) -> Model {
        let slots = entries - 1;
        let slot_bits = u32::BITS - (slots.max(2) - 1).leading_zeros();
        Model {
            core: QueuePairCore::new(Qid(1), size(entries), Duration::from_millis(100), 0),
            sink: VecSink {
                ring: vec![None; entries as usize],
                slot_mask: ((1u32 << slot_bits) - 1) as u16,
                ..VecSink::default()
            },
            entries,
            dev_head: 0,
            dev_tail: 0,
            held_order: Vec::new(),
            completed_cids: Vec::new(),
            accepted: BTreeMap::new(),
            next_tag: 1,
            now: 0,
            epoch: 0,
        }
    }

    pub(crate) fn cqe(&self, cid: u16, status: Status) -> Cqe {
        Cqe {
            result: 0,
            rsvd: 0,
            sqhd: self.dev_head as u16,
            sqid: 1,
            cid,
            status,
        }
    }

    pub(crate) fn children(n: u8) -> Vec<Command> {
        (0..n as u64)
            .map(|i| Command {
                slba: Lba(i * 8),
                nlb: 8,
                sgl: false,
                segs: SegRange {
                    first: i as usize,
                    first_offset: 0,
                    last: i as usize,
                    last_end: 4096,
                },
            })
            .collect()
    }

    /// Feeds one step to the core (and the model controller).
    ///
    /// # Panics
    ///
    /// When the core breaks an invariant.
    pub fn run(&mut self, s: &Step) {
        match *s {
            Step::One { fail } => {
                let tag = self.next_tag;
                self.next_tag += 1;
                let r = self
                    .core
                    .submit(&mut self.sink, tag, Token(tag), |_, _slot| {
                        if fail {
                            Err("refused")
                        } else {
                            Ok(Read::new(Nsid(1), Lba(tag), 1).build(Dptr::None))
                        }
                    });
                match r {
                    Ok(()) => {
                        self.accepted.insert(tag, false);
                    }
                    Err((_, Token(t))) => assert_eq!(t, tag, "a refusal gives the buffers back"),
                }
            }
            Step::Split { children, bad } => {
                let tag = self.next_tag;
                self.next_tag += 1;
                self.sink.fail_builds = bad as u32;
                let segs = vec![
                    Segment {
                        iova: crate::Iova(0x10000),
                        len: 4096
                    };
                    children as usize
                ];
                let op = SplitOp {
                    meta: Default::default(),
                    kind: Default::default(),
                    write: tag % 2 == 0,
                    fua: false,
                    nsid: Nsid(1),
                };
                match self.core.submit_split(
                    &mut self.sink,
                    tag,
                    Token(tag),
                    op,
                    segs,
                    Self::children(children),
                ) {
                    Ok(()) => {
                        self.accepted.insert(tag, false);
                    }
                    Err((_, Token(t))) => assert_eq!(t, tag),
                }
                self.sink.fail_builds = 0;
            }
            Step::Doorbell => {
                if let Some(tail) = self.core.take_sq_doorbell() {
                    self.dev_tail = tail;
                }
            }
            Step::Fetch { n } => {
                for _ in 0..n {
                    if self.dev_head == self.dev_tail {
                        break;
                    }
                    let sqe = self.sink.ring[self.dev_head as usize]
                        .take()
                        .expect("the controller reads a written slot");
                    self.sink.unconsumed.remove(&self.dev_head);
                    assert!(
                        self.sink.device_holds.insert(sqe.cid),
                        "CID unique in flight"
                    );
                    self.held_order.push(sqe.cid);
                    self.dev_head = (self.dev_head + 1) % self.entries;
                }
            }
            Step::Complete { pick, status } => {
                if self.held_order.is_empty() {
                    return;
                }
                let cid = self
                    .held_order
                    .remove(pick as usize % self.held_order.len());
                self.sink.device_holds.remove(&cid);
                let status = match status {
                    0 | 1 => Status::SUCCESS,
                    2 => Status::new(0, sc::INTERNAL_ERROR).with_dnr(),
                    // Retryable (no DNR) unless it was aborted on request.
                    _ => Status::new(0, sc::ABORT_REQUESTED),
                };
                let v = self.core.on_cqe(self.cqe(cid, status));
                assert_eq!(v, CqeVerdict::Matched, "a CQE for a held command matches");
                self.completed_cids.push(cid);
            }
            Step::Junk { kind, pick } => {
                let live: BTreeSet<u16> = self
                    .sink
                    .device_holds
                    .iter()
                    .copied()
                    .chain(self.sink.ring.iter().flatten().map(|s| s.cid))
                    .collect();
                let (mut cqe, want) = match kind {
                    0 => {
                        // Another SQ's entry, even with a CID that is live here.
                        let cid = live.iter().next().copied().unwrap_or(pick as u16);
                        let mut c = self.cqe(cid, Status::SUCCESS);
                        c.sqid = 2;
                        (c, CqeVerdict::Foreign)
                    }
                    1 => {
                        let cid = (pick as u16).wrapping_mul(257);
                        if live.contains(&cid) {
                            return;
                        }
                        (self.cqe(cid, Status::SUCCESS), CqeVerdict::Stale)
                    }
                    _ => {
                        let Some(&cid) = self.completed_cids.last() else {
                            return;
                        };
                        if live.contains(&cid) {
                            return;
                        }
                        // A duplicate, with a head that is not a slot index.
                        let mut c = self.cqe(cid, Status::SUCCESS);
                        if pick % 2 == 0 {
                            c.sqhd = self.entries as u16 + pick as u16;
                        }
                        (c, CqeVerdict::Stale)
                    }
                };
                cqe.rsvd = 0;
                assert_eq!(self.core.on_cqe(cqe), want);
            }
            Step::Tick { ms } => {
                self.now += ms as u64 * 1_000_000;
                let tick = self.core.on_tick(Stamp(self.now));
                let (aborts, reset) = (tick.aborts.to_vec(), tick.reset);
                for Cid(cid) in aborts {
                    // The controller honours every other Abort.
                    if cid % 2 == 0
                        && let Some(pos) = self.held_order.iter().position(|&c| c == cid)
                    {
                        self.held_order.remove(pos);
                        self.sink.device_holds.remove(&cid);
                        let c = self.cqe(cid, Status::new(0, sc::ABORT_REQUESTED));
                        assert_eq!(self.core.on_cqe(c), CqeVerdict::Matched);
                        self.completed_cids.push(cid);
                    }
                }
                if reset {
                    self.teardown(Teardown::Reset);
                }
            }
            Step::Teardown { kind } => {
                let why = match kind {
                    0..=6 => Teardown::Reset,
                    7 => Teardown::Dead,
                    8 => Teardown::Gone,
                    _ => Teardown::Deleted,
                };
                self.teardown(why);
            }
            Step::Pump => self.core.pump(&mut self.sink),
            Step::Pause => self.core.pause(),
            Step::Take => self.take(),
        }
    }

    pub(crate) fn teardown(&mut self, why: Teardown) {
        // The controller forgets its queues.
        self.held_order.clear();
        self.sink.device_holds.clear();
        self.sink.unconsumed.clear();
        self.sink.ring.iter_mut().for_each(|s| *s = None);
        self.dev_head = 0;
        self.dev_tail = 0;
        self.epoch += 1;
        self.core.on_teardown(why, self.epoch);
        // The queues exist again (the shell re-created them): placing goes on.
        self.core.resume();
        // Nothing is with the controller; commands dropped by a reset (and requests accepted
        // while paused) may wait, holding their trackers, to be placed: with retries on, a
        // split survives a reset, its children waiting or still to be placed.
        assert_eq!(self.core.commands_in_flight(), self.core.retries_waiting());
        if why != Teardown::Reset {
            assert_eq!(self.core.retries_waiting(), 0);
            assert_eq!(self.core.requests_in_flight(), 0);
        }
        assert!(
            self.core.requests_in_flight()
                <= (self.core.retries_waiting() + self.core.splits.live_count()) as u64
        );
        assert_eq!(self.core.epoch(), self.epoch);
    }

    pub(crate) fn take(&mut self) {
        while let Some(d) = self.core.next_delivery() {
            assert_eq!(d.bufs, Token(d.tag), "the request's own buffers come back");
            match self.accepted.get_mut(&d.tag) {
                None => panic!("delivered tag {} was never accepted", d.tag),
                Some(true) => panic!("tag {} delivered twice", d.tag),
                Some(done) => *done = true,
            }
        }
    }

    /// The invariants that hold after every step.
    ///
    /// # Panics
    ///
    /// When one does not.
    pub fn check(&self) {
        assert!(
            self.sink.violations.is_empty(),
            "{:?}",
            self.sink.violations
        );
        self.core.check_accounting().unwrap();
        let c = self.core.counters();
        let accepted = self.accepted.len() as u64;
        assert_eq!(c.submitted, accepted, "submitted counts accepted requests");
    }

    /// Completes everything; every accepted request must come out, exactly once.
    ///
    /// # Panics
    ///
    /// When one does not.
    pub fn quiesce(&mut self) {
        if self.core.is_paused() {
            // The reset that paused the core ends.
            self.teardown(Teardown::Reset);
        }
        for _ in 0..10_000 {
            self.core.pump(&mut self.sink);
            if let Some(t) = self.core.take_sq_doorbell() {
                self.dev_tail = t;
            }
            self.run(&Step::Fetch { n: 255 });
            while !self.held_order.is_empty() {
                self.run(&Step::Complete { pick: 0, status: 0 });
            }
            self.take();
            self.check();
            if self.core.requests_in_flight() == 0 {
                break;
            }
        }
        assert_eq!(self.core.requests_in_flight(), 0);
        let lost: Vec<_> = self.accepted.iter().filter(|(_, d)| !**d).collect();
        assert!(lost.is_empty(), "never delivered: {lost:?}");
    }
}

impl Step {
    /// A step from three bytes (for the fuzzer: any bytes are a valid sequence of steps).
    pub fn from_bytes(b: [u8; 3]) -> Step {
        match b[0] % 20 {
            0..=5 => Step::One {
                fail: b[1] % 10 == 0,
            },
            6 | 7 => Step::Split {
                children: 2 + b[1] % 4,
                bad: b[2] % 2,
            },
            8..=10 => Step::Doorbell,
            11 | 12 => Step::Fetch { n: 1 + b[1] % 8 },
            13 | 14 => Step::Complete {
                pick: b[1],
                status: b[2] % 4,
            },
            15 => Step::Junk {
                kind: b[1] % 3,
                pick: b[2],
            },
            16 => Step::Tick {
                ms: u16::from_le_bytes([b[1], b[2]]) % 400,
            },
            17 => Step::Teardown { kind: b[1] % 10 },
            18 if b[1] % 4 == 0 => Step::Pause,
            18 => Step::Pump,
            _ => Step::Take,
        }
    }
}
