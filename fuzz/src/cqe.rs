//! The `cqe_processing` target: a controller brought up on the emulated controller (inline
//! mode), one poll-mode queue pair, real I/O, and fuzzer-chosen completion entries posted
//! raw into its CQ ([`EmuFunction::post_raw_cqe`]) between the real ones: any CID, SQ id,
//! SQ head and status. Device faults (dropped, duplicated, stale, failed completions) and
//! controller resets are mixed in.
//!
//! Checked after every poll and at the end:
//! - nothing panics (debug assertions and overflow checks on);
//! - a completion is delivered only for a request that was accepted, and at most once;
//! - after the ops, once the CQ is drained, every request still in flight is one the device
//!   holds (a dropped completion), and a controller reset completes all of them: every
//!   accepted request is then delivered exactly once;
//! - every CQE the device wrote to the I/O CQ is accounted for: it completed a request, or
//!   was counted stale or foreign; the foreign count is exactly the junk naming another SQ.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use arbitrary::Arbitrary;
use nvme_dio::{
    Completion, CompletionMode, Controller, ControllerOptions, Error, IoQueuePair, Lba,
    MemoryOptions, Namespace, PageKind, QueuePairOptions,
};
use nvme_dio_emu::{Action, EmuConfig, EmuFunction, Fault, Mode, NsConfig, Target};
use nvme_dio_queue::Status;

/// The namespace: 256 blocks of 512 bytes.
const NS_BLOCKS: u64 = 256;
const LBA: usize = 512;

/// How a junk CQE names its command.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum CidIn {
    /// Any 16 bits.
    Raw(u16),
    /// The CID the driver gives slot `slot` in generation `generation` (its layout: the
    /// slot in the low bits, the generation above), so junk can hit commands in flight.
    Slot {
        /// Slot (modulo the slots).
        slot: u8,
        /// Generation.
        generation: u8,
    },
}

/// Which SQ a junk CQE names.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum SqidIn {
    /// The queue pair's own.
    Own,
    /// Any.
    Raw(u16),
}

/// A device fault for the next I/O commands.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum FaultIn {
    /// The `n % 4`-th next command's completion is never posted.
    Drop(u8),
    /// Posted twice.
    Duplicate(u8),
    /// Followed by a CQE with a CID not outstanding.
    Stale(u8),
    /// Not executed; completed with this status.
    Status(u8, u16),
}

/// One step.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Op {
    /// Read `1 + blocks % 4` blocks at `lba`.
    Read {
        /// First block.
        lba: u8,
        /// Blocks - 1 (mod 4).
        blocks: u8,
    },
    /// Write `1 + blocks % 4` blocks at `lba`.
    Write {
        /// First block.
        lba: u8,
        /// Blocks - 1 (mod 4).
        blocks: u8,
    },
    /// Read or write an iovec set of `2 + parts % 4` one-block buffers, each page aligned:
    /// the joints break the PRP rule on block boundaries, so without SGLs the request is
    /// split into one child per buffer (children wait for slots), with SGLs it is one command.
    Vector {
        /// Write (else read).
        write: bool,
        /// First block.
        lba: u8,
        /// Buffers - 2 (mod 4).
        parts: u8,
    },
    /// Flush.
    Flush,
    /// Arm a device fault.
    Fault(FaultIn),
    /// Post a junk CQE.
    Junk {
        /// CID.
        cid: CidIn,
        /// SQ id.
        sqid: SqidIn,
        /// SQ head pointer.
        sqhd: u16,
        /// DW3 31:16 (the phase bit is replaced by the controller's).
        status: u16,
        /// DW0 (command specific).
        dw0: u32,
    },
    /// Poll and take completions.
    Poll,
    /// `wait(0)`: in interrupt mode, checks the eventfd then the CQ.
    Wait,
    /// Ring the SQ doorbell.
    Ring,
    /// Drain the CQ, then reset the controller.
    Reset,
}

/// The whole input.
#[derive(Arbitrary, Debug, Clone)]
pub struct CqeInput {
    /// Queue entries: `2 + entries % 15` (2 ..= 16).
    pub entries: u8,
    /// The controller supports SGLs (and the driver uses them).
    pub sgl: bool,
    /// The queue pair runs in interrupt mode (MSI-X eventfd).
    pub interrupt: bool,
    /// The steps (at most 256 are run).
    pub ops: Vec<Op>,
}

/// Bookkeeping of one run.
struct Run {
    dev: Arc<EmuFunction>,
    ctrl: Controller<EmuFunction>,
    ns: Namespace,
    qp: IoQueuePair<EmuFunction>,
    next_tag: u64,
    accepted: HashSet<u64>,
    delivered: HashSet<u64>,
    /// Commands (not requests: a split request has several) that a reset failed.
    failed_by_reset: u64,
    /// Junk CQEs posted naming another SQ.
    junk_foreign: u64,
    /// CQEs the emulator counted that went to the admin CQ during resets.
    admin_cqes: u64,
    /// The emulator's CQE count when the queue pair was ready.
    cqes_at_start: u64,
    slots: u32,
    slot_bits: u32,
}

/// Brings a controller up on a fresh emulated controller with one queue pair.
fn bring_up(entries: u32, sgl: bool, interrupt: bool) -> Run {
    let cfg = EmuConfig {
        mode: Mode::Inline,
        sgl,
        max_ioqpairs: 2,
        msix_vectors: 3,
        namespaces: vec![NsConfig::ram(NS_BLOCKS, LBA as u32)],
        ..EmuConfig::default()
    };
    let dev = Arc::new(EmuFunction::new(cfg).expect("emulated controller"));
    let opts = ControllerOptions::default()
        .io_queues(1)
        .admin_entries(8)
        .admin_timeout(Duration::from_secs(5))
        .memory(
            MemoryOptions::default()
                .page(PageKind::Huge2M)
                .region_bytes(2 << 20)
                .allow_fallback(true),
        )
        .interrupts(interrupt)
        .use_sgl(true);
    let ctrl = Controller::new(Arc::clone(&dev), opts).expect("bring-up on the emulator");
    let ns = ctrl.namespace(1).expect("namespace 1").clone();
    let qp = ctrl
        .create_io_qpair(
            QueuePairOptions::default()
                .entries(entries)
                .mode(if interrupt {
                    CompletionMode::Interrupt
                } else {
                    CompletionMode::Poll
                })
                // Long: no deadline fires during a run; stuck commands are the reset's job.
                .timeout(Duration::from_secs(600)),
        )
        .expect("queue pair");
    // The CQE accounting below counts one CQE per placed command that was not torn down; a
    // retry places a command again after a reset dropped it, so retries are off here (the
    // fault tests cover them).
    let mut qp = qp;
    qp.set_retries(0);
    let slots = qp.capacity() as u32;
    let slot_bits = u32::BITS - (slots.max(2) - 1).leading_zeros();
    let cqes_at_start = dev.stats().completions;
    Run {
        dev,
        ctrl,
        ns,
        qp,
        next_tag: 1,
        accepted: HashSet::new(),
        delivered: HashSet::new(),
        failed_by_reset: 0,
        junk_foreign: 0,
        admin_cqes: 0,
        cqes_at_start,
        slots,
        slot_bits,
    }
}

impl Run {
    fn take(&mut self, c: Completion) {
        assert!(
            self.accepted.contains(&c.tag),
            "completion for tag {} that was never accepted: {c:?}",
            c.tag
        );
        assert!(
            self.delivered.insert(c.tag),
            "tag {} completed twice: {c:?}",
            c.tag
        );
        match &c.result {
            Ok(()) | Err(Error::Command { .. } | Error::Timeout { .. } | Error::Aborted(_)) => {}
            Err(e) => panic!("unexpected completion error for tag {}: {e:?}", c.tag),
        }
    }

    fn poll(&mut self) {
        self.qp.poll();
        while let Some(c) = self.qp.next_completion() {
            self.take(c);
        }
    }

    /// Polls until a poll finds nothing new in the CQ (the emulator posts completions it
    /// held for room once the head doorbell moves, so one poll may not be enough).
    fn drain(&mut self) {
        for _ in 0..10_000 {
            let empty = self.qp.stats().empty_polls;
            self.poll();
            if self.qp.stats().empty_polls > empty {
                return;
            }
        }
        panic!("the CQ never runs dry: {}", self.dev.describe_queues());
    }

    fn reset(&mut self) {
        self.drain();
        let before = self.dev.stats().completions;
        // The CQ is dry: every command still in flight is one the reset fails.
        self.failed_by_reset += self.qp.outstanding() as u64;
        let r = self.ctrl.reset();
        assert!(
            r.is_ok(),
            "reset of a healthy emulated controller failed: {r:?}"
        );
        // The queue pair notices the reset on its next poll: it fails what it had in
        // flight and re-creates its queues (admin commands).
        self.poll();
        self.admin_cqes += self.dev.stats().completions - before;
    }

    fn buf(&self, blocks: u8) -> nvme_dio::DmaBuf {
        let len = (1 + blocks as usize % 4) * LBA;
        self.ctrl.memory().alloc(len, 4096).expect("DMA buffer")
    }

    fn accepted(&mut self, tag: u64, r: Result<(), nvme_dio::Rejected>) {
        match r {
            Ok(()) => assert!(self.accepted.insert(tag)),
            Err(rej) => match *rej.error {
                Error::QueueFull { .. } => {}
                e => panic!("valid request refused: {e:?}"),
            },
        }
    }

    fn step(&mut self, op: Op) {
        let tag = self.next_tag;
        self.next_tag += 1;
        match op {
            Op::Read { lba, blocks } | Op::Write { lba, blocks } => {
                let b = self.buf(blocks);
                let lba = Lba(lba as u64 % (NS_BLOCKS - 4));
                let r = if matches!(op, Op::Read { .. }) {
                    self.qp.read(&self.ns, lba, b, tag)
                } else {
                    self.qp.write(&self.ns, lba, b, tag)
                };
                self.accepted(tag, r);
            }
            Op::Vector { write, lba, parts } => {
                let n = 2 + parts as u64 % 4;
                let bufs = (0..n).map(|_| self.buf(0)).collect();
                let lba = Lba(lba as u64 % (NS_BLOCKS - n));
                let r = if write {
                    self.qp.writev(&self.ns, lba, bufs, tag)
                } else {
                    self.qp.readv(&self.ns, lba, bufs, tag)
                };
                self.accepted(tag, r);
            }
            Op::Flush => {
                let r = self.qp.flush(&self.ns, tag);
                self.accepted(tag, r);
            }
            Op::Fault(f) => {
                let (n, action) = match f {
                    FaultIn::Drop(n) => (n, Action::Drop),
                    FaultIn::Duplicate(n) => (n, Action::DuplicateCqe),
                    FaultIn::Stale(n) => (n, Action::StaleCqe),
                    FaultIn::Status(n, s) => (n, Action::Status(Status::from_raw(s & !1))),
                };
                self.dev
                    .inject(Fault::Command {
                        target: Target::NthIo((n % 4) as u64),
                        action,
                    })
                    .expect("inject");
            }
            Op::Junk {
                cid,
                sqid,
                sqhd,
                status,
                dw0,
            } => {
                let own = self.qp.qid().0;
                let sqid = match sqid {
                    SqidIn::Own => own,
                    SqidIn::Raw(s) => s,
                };
                let cid = match cid {
                    CidIn::Raw(c) => c,
                    CidIn::Slot { slot, generation } => {
                        (((generation as u32) << self.slot_bits) | (slot as u32 % self.slots))
                            as u16
                    }
                };
                let dwords = [
                    dw0,
                    0,
                    sqhd as u32 | (sqid as u32) << 16,
                    cid as u32 | (status as u32) << 16,
                ];
                if !self.dev.post_raw_cqe(own, dwords) {
                    // The CQ is full: make room, then try once more.
                    self.poll();
                    if !self.dev.post_raw_cqe(own, dwords) {
                        return;
                    }
                }
                if sqid != own {
                    self.junk_foreign += 1;
                }
            }
            Op::Poll => self.poll(),
            Op::Wait => {
                self.qp.wait(Duration::ZERO).expect("wait");
                while let Some(c) = self.qp.next_completion() {
                    self.take(c);
                }
            }
            Op::Ring => self.qp.ring(),
            Op::Reset => self.reset(),
        }
    }

    fn finish(mut self) {
        self.drain();
        let held = self.dev.held_commands();
        assert!(
            self.qp.outstanding() <= held,
            "{} commands in flight after the CQ ran dry, but the device holds only {held}",
            self.qp.outstanding()
        );
        if self.qp.outstanding() > 0 {
            self.reset();
            self.drain();
        }
        assert_eq!(
            self.qp.outstanding(),
            0,
            "a reset leaves commands in flight"
        );
        assert_eq!(
            self.delivered, self.accepted,
            "every accepted request completes exactly once"
        );
        let s = self.qp.stats().clone();
        let written = self.dev.stats().completions - self.cqes_at_start - self.admin_cqes;
        assert_eq!(
            s.foreign_cqes, self.junk_foreign,
            "foreign CQEs counted vs junk naming another SQ: {s:?}"
        );
        let matched = s.commands - self.failed_by_reset;
        assert_eq!(
            written,
            matched + s.stale_cqes + s.foreign_cqes,
            "CQEs written to the I/O CQ vs commands completed by one + stale + foreign: {s:?}"
        );
        assert_eq!(s.submitted, self.accepted.len() as u64);
        assert_eq!(s.completed, self.accepted.len() as u64);
        assert!(
            self.dev.ub_events().is_empty(),
            "the driver committed UB: {:?}",
            self.dev.ub_events()
        );
    }
}

/// Runs one input; panics when a check fails.
pub fn run(inp: &CqeInput) {
    let mut r = bring_up(2 + (inp.entries % 15) as u32, inp.sgl, inp.interrupt);
    for &op in inp.ops.iter().take(256) {
        r.step(op);
    }
    r.finish();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn junk_between_real_io_is_accounted() {
        let ops = vec![
            Op::Write { lba: 3, blocks: 1 },
            Op::Read { lba: 3, blocks: 1 },
            Op::Junk {
                cid: CidIn::Raw(0x7777),
                sqid: SqidIn::Own,
                sqhd: 0,
                status: 0,
                dw0: 0,
            },
            Op::Junk {
                cid: CidIn::Slot {
                    slot: 0,
                    generation: 9,
                },
                sqid: SqidIn::Raw(9),
                sqhd: 3,
                status: 0x4,
                dw0: 1,
            },
            Op::Fault(FaultIn::Drop(0)),
            Op::Flush,
            Op::Fault(FaultIn::Duplicate(0)),
            Op::Flush,
            Op::Poll,
            Op::Reset,
            Op::Write { lba: 9, blocks: 3 },
            Op::Ring,
            Op::Vector {
                write: true,
                lba: 7,
                parts: 3,
            },
            Op::Junk {
                cid: CidIn::Slot {
                    slot: 1,
                    generation: 13,
                },
                sqid: SqidIn::Own,
                sqhd: 1,
                status: 0,
                dw0: 0,
            },
            Op::Wait,
            Op::Vector {
                write: false,
                lba: 7,
                parts: 3,
            },
            Op::Poll,
        ];
        let t = std::time::Instant::now();
        run(&CqeInput {
            entries: 4,
            sgl: false,
            interrupt: false,
            ops: ops.clone(),
        });
        run(&CqeInput {
            entries: 5,
            sgl: true,
            interrupt: true,
            ops,
        });
        eprintln!("one run: {:?}", t.elapsed());
    }

    #[test]
    fn junk_naming_a_live_command_completes_it_and_its_real_cqe_is_stale() {
        // 4 entries: 3 slots, CID = generation << 2 | slot; the first flush is slot 0, gen 1.
        let ops = vec![
            Op::Flush,
            Op::Junk {
                cid: CidIn::Slot {
                    slot: 0,
                    generation: 1,
                },
                sqid: SqidIn::Own,
                sqhd: 1,
                status: 0,
                dw0: 0,
            },
            Op::Poll,
            Op::Write { lba: 1, blocks: 0 },
            Op::Poll,
        ];
        run(&CqeInput {
            entries: 2,
            sgl: false,
            interrupt: false,
            ops,
        });
    }

    #[test]
    fn junk_with_a_bad_sq_head_for_a_live_command_then_a_full_ring() {
        // The first finding (tests/tests/fault_fuzz_regressions.rs,
        // fault_junk_cqe_with_bad_sq_head_does_not_overfill_the_sq), as the fuzzer found it.
        let ops = vec![
            Op::Flush,
            Op::Junk {
                cid: CidIn::Slot {
                    slot: 0,
                    generation: 1,
                },
                sqid: SqidIn::Own,
                sqhd: 1023,
                status: 0x3f5e,
                dw0: 0,
            },
            Op::Flush,
            Op::Poll,
            Op::Read { lba: 0, blocks: 0 },
        ];
        run(&CqeInput {
            entries: 1,
            sgl: false,
            interrupt: false,
            ops,
        });
    }
}
