//! The controller state machine: registers (NVMe Base 2.0, 3.1.4), queues, completion
//! posting, interrupts, held (delayed/dropped/AER) commands and fault application.
//!
//! Everything here runs under the one lock of [`crate::function::Shared`]: a doorbell write
//! takes it once and processes every new entry of that queue.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nvme_dio_queue::regs::{Cc, shn, shst};
use nvme_dio_queue::status::sct;
use nvme_dio_queue::{Sqe, Status};
use vmm_sys_util::eventfd::EventFd;

use nvme_dio_dma::RangeSet;

use crate::config::EmuConfig;
use crate::fault::{Action, Faults};
use crate::mem::Table;

/// Counters, read with [`crate::EmuFunction::stats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EmuStats {
    /// Admin commands processed (any opcode).
    pub admin: u64,
    /// Read commands processed (including failed ones).
    pub reads: u64,
    /// Write commands processed.
    pub writes: u64,
    /// Flush commands processed.
    pub flushes: u64,
    /// Write Zeroes commands processed.
    pub write_zeroes: u64,
    /// Dataset Management commands processed.
    pub dsm: u64,
    /// Write and Write Zeroes commands with Force Unit Access set (counted in `writes` or
    /// `write_zeroes` too).
    pub fua_writes: u64,
    /// Verify commands processed.
    pub verifies: u64,
    /// Copy commands processed.
    pub copies: u64,
    /// Other I/O opcodes (all failed with Invalid Command Opcode).
    pub other_io: u64,
    /// I/O commands completed with an error status.
    pub io_errors: u64,
    /// Completion queue entries written to host memory (including injected extra ones).
    pub completions: u64,
    /// Completions that found their CQ full and were held until the head doorbell moved.
    pub cq_full_holds: u64,
    /// Injected faults that fired.
    pub faults_fired: u64,
    /// Undefined-behaviour events recorded (see [`crate::EmuFunction::ub_events`]).
    pub ub_events: u64,
    /// Error events recorded (see [`crate::EmuFunction::err_events`]).
    pub err_events: u64,
    /// MSI-X eventfd signals.
    pub interrupts: u64,
    /// Device writes into memory the host had given back (the freed-write checker; see
    /// [`crate::EmuFunction::freed_write_events`]). Zero for a correct driver.
    pub freed_writes: u64,
    /// Writes the device made after a disable, from [`crate::Fault::LateWrites`].
    pub late_writes: u64,
    /// BAR reads answered with all ones by [`crate::Fault::AllOnesReads`].
    pub all_ones_reads: u64,
    /// Blocks whose unflushed writes a [`crate::EmuFunction::power_cut`] lost.
    pub lost_blocks: u64,
    /// Doorbell Buffer Config commands accepted (shadow doorbells set up; a controller
    /// reset forgets them).
    pub dbbuf_configs: u64,
}

/// An I/O or admin submission queue.
#[derive(Debug)]
pub(crate) struct Sq {
    pub(crate) base: u64,
    pub(crate) size: u32,
    pub(crate) head: u32,
    pub(crate) tail: u32,
    pub(crate) cqid: u16,
    pub(crate) hint: usize,
}

/// A completion the CQ had no room for (or an extra injected one waiting its turn).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Pending {
    pub(crate) sqid: u16,
    pub(crate) cid: u16,
    pub(crate) result: u32,
    pub(crate) status: Status,
}

/// A completion queue.
#[derive(Debug)]
pub(crate) struct Cq {
    pub(crate) base: u64,
    pub(crate) size: u32,
    pub(crate) head: u32,
    pub(crate) tail: u32,
    pub(crate) phase: bool,
    pub(crate) ien: bool,
    pub(crate) iv: u16,
    pub(crate) hint: usize,
    pub(crate) irq_pending: bool,
    /// Completions waiting for room, oldest first.
    pub(crate) pending: VecDeque<Pending>,
    /// Submission queues posting here (a CQ with SQs cannot be deleted).
    pub(crate) sqs: u16,
}

/// A command whose completion is held: dropped, delayed, or an Async Event Request.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Held {
    pub(crate) sqid: u16,
    pub(crate) cid: u16,
    pub(crate) result: u32,
    pub(crate) status: Status,
    /// Post once this instant has passed; `None` = never (dropped or AER), unless `after`.
    pub(crate) deadline: Option<Instant>,
    /// Post after this many more host register accesses ([`Action::DelayAccesses`]).
    pub(crate) after: Option<u32>,
    /// An Async Event Request (counts against AERL).
    pub(crate) aer: bool,
    /// First data page of a Read or Write (IOVA, bytes), for [`crate::Fault::LateWrites`].
    pub(crate) data: Option<(u64, u32)>,
}

/// A namespace and its store.
#[derive(Debug)]
pub(crate) struct Namespace {
    pub(crate) blocks: u64,
    pub(crate) lba_shift: u32,
    pub(crate) ms: u16,
    pub(crate) ram: bool,
    pub(crate) noiob: u16,
    /// The namespace's configuration (format, PI, atomic and copy parameters).
    pub(crate) cfg: crate::config::NsConfig,
    pub(crate) data: Vec<u8>,
    pub(crate) meta: Vec<u8>,
    /// The volatile write cache model (RAM namespaces with `EmuConfig::vwc`): what stable
    /// storage holds. `data` is what reads see; blocks in `dirty` differ from here until a
    /// Flush (or FUA) copies them, and a power cut copies them back. Empty: no model.
    pub(crate) durable: Vec<u8>,
    /// Blocks written into the cache and not yet flushed.
    pub(crate) dirty: RangeSet,
    /// In the active namespace list (false once removed at run time).
    pub(crate) active: bool,
}

/// Result of executing one command.
pub(crate) enum Outcome {
    /// Post a completion with this result and status.
    Done(u32, Status),
    /// Hold it (Async Event Request); never posted unless aborted.
    Hold,
}

/// Shadow doorbell and EventIdx buffers (Doorbell Buffer Config, Base 2.0, 5.8).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Dbbuf {
    pub(crate) shadow: u64,
    pub(crate) eventidx: u64,
    pub(crate) hint: usize,
}

/// Status helpers.
pub(crate) fn st(sct_: u8, sc_: u8) -> Status {
    Status::new(sct_, sc_).with_dnr()
}
pub(crate) const fn generic(sc_: u8) -> Status {
    Status::new(sct::GENERIC, sc_).with_dnr()
}

/// The whole controller.
#[derive(Debug)]
pub(crate) struct State {
    // Hot: touched for every command.
    pub(crate) table: Table,
    pub(crate) sqs: Vec<Option<Sq>>,
    pub(crate) cqs: Vec<Option<Cq>>,
    pub(crate) ns: Vec<Namespace>,
    pub(crate) faults: Faults,
    pub(crate) page: u64,
    pub(crate) mdts_bytes: u64,
    pub(crate) data_hint: usize,
    pub(crate) list_hint: usize,
    pub(crate) stats: EmuStats,
    pub(crate) irq_list: Vec<u16>,
    /// CSTS.RDY as the host currently sees it.
    pub(crate) rdy: bool,
    pub(crate) cfs: bool,
    /// CC.EN was accepted (queues exist).
    pub(crate) enabled: bool,
    pub(crate) delayed: usize,
    pub(crate) dbbuf: Option<Dbbuf>,

    // Cold: registers and configuration.
    pub(crate) cfg: EmuConfig,
    pub(crate) cc: u32,
    pub(crate) shst: u8,
    pub(crate) aqa: u32,
    pub(crate) asq: u64,
    pub(crate) acq: u64,
    pub(crate) intms: u32,
    rdy_target: bool,
    rdy_at: Instant,
    pub(crate) held: Vec<Held>,
    pub(crate) msix: Vec<Arc<EventFd>>,
    pub(crate) ub: Vec<String>,
    pub(crate) errs: Vec<String>,
    /// Granted (SQs, CQs) from Set Features Number of Queues.
    pub(crate) nq: (u16, u16),
    pub(crate) int_coalescing: u32,
    pub(crate) vwc_enabled: bool,
    pub(crate) aers: u32,
    /// Asynchronous events, health, logs (`events.rs`).
    pub(crate) events: crate::events::Events,
    pub(crate) power_on: Instant,
    pub(crate) bytes_read: u64,
    pub(crate) bytes_written: u64,

    // Injected controller faults (see `crate::Fault`).
    /// Held commands waiting for `after` register accesses.
    pub(crate) counted: usize,
    /// `Fault::DisableHangs` armed, and fired (the disable that never completes).
    pub(crate) disable_hangs: bool,
    pub(crate) disable_hung: bool,
    /// `Fault::LateWrites` armed (accesses), then the pages and accesses left.
    pub(crate) late_armed: u32,
    /// (IOVA, bytes, given back since): a page the host freed after the capture is one
    /// the device must not write, even once it is allocated to someone else again.
    pub(crate) late_pages: Vec<(u64, u32, bool)>,
    pub(crate) late_left: u32,
    /// `Fault::EnableFails`: enables still to fail.
    pub(crate) enable_fails: u32,
    /// PCI command register Bus Master Enable (`PciFunction::set_bus_master`): clear, the
    /// function does no DMA at all (doorbells are ignored, nothing is posted or written).
    pub(crate) bus_master: bool,
}

/// Async Event Request Limit (zero-based, Identify Controller AERL): 4 outstanding.
pub(crate) const AERL: u32 = 3;

impl State {
    pub(crate) fn new(cfg: EmuConfig) -> State {
        let nq = cfg.max_ioqpairs as usize + 1;
        let mut ns: Vec<Namespace> = cfg
            .namespaces
            .iter()
            .map(|n| Namespace::from_config(n, cfg.vwc))
            .collect();
        for n in &mut ns {
            // Never-written blocks carry the all-ones tuple: reads skip their checks.
            let blocks = n.blocks;
            n.escape_pi(0, blocks);
        }
        State {
            table: Table::default(),
            sqs: (0..nq).map(|_| None).collect(),
            cqs: (0..nq).map(|_| None).collect(),
            ns,
            faults: Faults::default(),
            page: 4096 << cfg.mpsmin,
            mdts_bytes: mdts_bytes(&cfg),
            data_hint: 0,
            list_hint: 0,
            stats: EmuStats::default(),
            irq_list: Vec::with_capacity(nq),
            rdy: false,
            cfs: false,
            enabled: false,
            delayed: 0,
            dbbuf: None,
            cc: 0,
            shst: 0,
            aqa: 0,
            asq: 0,
            acq: 0,
            intms: 0,
            rdy_target: false,
            rdy_at: Instant::now(),
            held: Vec::new(),
            msix: Vec::new(),
            ub: Vec::new(),
            errs: Vec::new(),
            nq: (cfg.max_ioqpairs, cfg.max_ioqpairs),
            int_coalescing: 0,
            vwc_enabled: cfg.vwc,
            aers: 0,
            events: Default::default(),
            power_on: Instant::now(),
            bytes_read: 0,
            bytes_written: 0,
            counted: 0,
            disable_hangs: false,
            disable_hung: false,
            late_armed: 0,
            late_pages: Vec::new(),
            late_left: 0,
            enable_fails: 0,
            bus_master: true,
            cfg,
        }
    }

    /// Records an undefined-behaviour event (the host did something a real controller may
    /// ignore or misbehave on). QEMU traces these as `pci_nvme_ub_*`.
    #[cold]
    pub(crate) fn ub(&mut self, what: String) {
        self.stats.ub_events += 1;
        self.ub.push(what);
    }

    /// Records an error event: the controller failed a request in a way QEMU traces as
    /// `pci_nvme_err_*` (failed enable, fatal error). Negative tests expect these.
    #[cold]
    pub(crate) fn err(&mut self, what: String) {
        self.stats.err_events += 1;
        self.errs.push(what);
    }

    /// Enters the fatal state (CSTS.CFS), as a controller does on an internal error.
    #[cold]
    pub(crate) fn fatal(&mut self, why: String) {
        self.cfs = true;
        self.err(format!("controller fatal (CSTS.CFS set): {why}"));
    }

    // ---------------------------------------------------------------- registers

    /// Brings CSTS.RDY up to date with CC.EN after the ready delay.
    pub(crate) fn update_ready(&mut self) {
        if self.rdy != self.rdy_target && Instant::now() >= self.rdy_at {
            self.rdy = self.rdy_target;
        }
    }

    pub(crate) fn csts(&mut self) -> u32 {
        self.update_ready();
        self.rdy as u32 | (self.cfs as u32) << 1 | (self.shst as u32 & 3) << 2
    }

    fn set_rdy_target(&mut self, target: bool) {
        self.rdy_target = target;
        self.rdy_at = Instant::now() + self.cfg.ready_delay;
        if self.cfg.ready_delay == Duration::ZERO {
            self.rdy = target;
        }
    }

    pub(crate) fn write_cc(&mut self, v: u32) {
        if self.disable_hung {
            // Fault::DisableHangs: the controller no longer answers CC (only FLR helps).
            self.cc = v;
            return;
        }
        let old = Cc(self.cc);
        let new = Cc(v);
        self.update_ready();
        if !old.en() && new.en() {
            if self.rdy {
                self.ub(format!(
                    "CC.EN set to 1 (CC={v:#010x}) while CSTS.RDY is still 1: wait for RDY=0 after clearing EN"
                ));
            }
            self.cc = v;
            if self.enable_fails > 0 {
                self.enable_fails -= 1;
                self.stats.faults_fired += 1;
                self.cfs = true;
                self.err(
                    "controller enable failed (CSTS.CFS set): injected EnableFails, reset again"
                        .to_string(),
                );
                return;
            }
            match self.start() {
                Ok(()) => {
                    self.cfs = false;
                    self.enabled = true;
                    self.set_rdy_target(true);
                }
                Err(why) => {
                    // QEMU: nvme_start_ctrl failed -> CSTS = CFS.
                    self.cfs = true;
                    self.err(format!("controller enable failed (CSTS.CFS set): {why}"));
                }
            }
        } else if old.en() && !new.en() {
            self.cc = v;
            if self.late_armed > 0 {
                self.late_pages = self
                    .held
                    .iter()
                    .filter_map(|h| h.data)
                    .map(|(iova, len)| (iova, len, false))
                    .collect();
                self.late_left = std::mem::take(&mut self.late_armed);
                self.stats.faults_fired += 1;
            }
            if self.disable_hangs {
                // The disable never completes: RDY stays 1, queues and held commands stay.
                self.disable_hangs = false;
                self.disable_hung = true;
                self.stats.faults_fired += 1;
                return;
            }
            self.reset_ctrl();
            self.set_rdy_target(false);
        } else {
            let fixed = !(1u32 | 0x3 << 14);
            if old.en() && (old.0 ^ v) & fixed != 0 {
                self.ub(format!(
                    "CC changed from {:#010x} to {v:#010x} while enabled (only SHN may change)",
                    old.0
                ));
            }
            self.cc = v;
        }
        match new.shn() {
            shn::NORMAL | shn::ABRUPT => self.shst = shst::COMPLETE,
            _ => {
                if old.shn() != shn::NONE {
                    self.shst = shst::NORMAL;
                }
            }
        }
    }

    /// CC.EN 0 -> 1: validate like QEMU's `nvme_start_ctrl` (and a little more) and create
    /// the admin queues.
    fn start(&mut self) -> Result<(), String> {
        let cc = Cc(self.cc);
        let mps = (self.cc >> 7) & 0xf;
        if mps < self.cfg.mpsmin as u32 || mps > self.cfg.mpsmax as u32 {
            return Err(format!(
                "CC.MPS {mps} outside CAP.MPSMIN..=MPSMAX {}..={}",
                self.cfg.mpsmin, self.cfg.mpsmax
            ));
        }
        let page = 4096u64 << mps;
        if cc.iosqes() != 6 || cc.iocqes() != 4 {
            return Err(format!(
                "CC.IOSQES {} / IOCQES {} must be 6 / 4",
                cc.iosqes(),
                cc.iocqes()
            ));
        }
        if !matches!(cc.css(), 0 | 6 | 7) {
            return Err(format!("CC.CSS {} not supported", cc.css()));
        }
        if cc.ams() != 0 {
            return Err(format!("CC.AMS {} not supported (CAP.AMS = 0)", cc.ams()));
        }
        let asqs = self.aqa & 0xfff;
        let acqs = (self.aqa >> 16) & 0xfff;
        if asqs == 0 || acqs == 0 {
            return Err(format!("AQA {:#010x}: admin queue size of 1", self.aqa));
        }
        if self.asq & (page - 1) != 0 || self.acq & (page - 1) != 0 {
            return Err(format!(
                "ASQ {:#x} / ACQ {:#x} not aligned to the {page}-byte page",
                self.asq, self.acq
            ));
        }
        if self.asq == 0 || self.acq == 0 {
            return Err("ASQ or ACQ is 0".to_string());
        }
        self.page = page;
        self.mdts_bytes = mdts_bytes(&self.cfg);
        self.sqs[0] = Some(Sq {
            base: self.asq,
            size: asqs + 1,
            head: 0,
            tail: 0,
            cqid: 0,
            hint: 0,
        });
        self.cqs[0] = Some(Cq {
            base: self.acq,
            size: acqs + 1,
            head: 0,
            tail: 0,
            phase: true,
            ien: true,
            iv: 0,
            hint: 0,
            irq_pending: false,
            pending: VecDeque::new(),
            sqs: 1,
        });
        Ok(())
    }

    /// Controller reset (CC.EN 1 -> 0): queues, held commands and features are gone.
    pub(crate) fn reset_ctrl(&mut self) {
        for q in &mut self.sqs {
            *q = None;
        }
        for q in &mut self.cqs {
            *q = None;
        }
        self.held.clear();
        self.delayed = 0;
        self.counted = 0;
        self.aers = 0;
        self.events.masked = 0;
        self.events.config = 0;
        self.dbbuf = None;
        self.nq = (self.cfg.max_ioqpairs, self.cfg.max_ioqpairs);
        self.int_coalescing = 0;
        self.vwc_enabled = self.cfg.vwc;
        self.enabled = false;
        self.irq_list.clear();
        self.shst = shst::NORMAL;
    }

    /// Function-level reset: everything back to power-on, MSI-X off.
    pub(crate) fn flr(&mut self) {
        self.reset_ctrl();
        self.cc = 0;
        self.aqa = 0;
        self.asq = 0;
        self.acq = 0;
        self.intms = 0;
        self.cfs = false;
        self.rdy = false;
        self.rdy_target = false;
        self.msix.clear();
        self.disable_hung = false;
        self.late_pages.clear();
        self.late_left = 0;
    }

    /// The host reported `iova..iova+len` free: remember it for the pages late writes
    /// still target.
    pub(crate) fn range_freed(&mut self, iova: u64, len: u64) {
        self.table.free.insert(iova, len);
        for p in &mut self.late_pages {
            if iova < p.0 + p.1 as u64 && p.0 < iova + len {
                p.2 = true;
            }
        }
    }

    /// A held command completed (posted late, or aborted): the device is done with its
    /// buffer, so late writes stop targeting it and the host may free it.
    fn forget_late_page(&mut self, data: Option<(u64, u32)>) {
        if let Some(d) = data {
            if !self.late_pages.is_empty() {
                self.late_pages.retain(|p| (p.0, p.1) != d);
            }
        }
    }

    /// One host register access (a 32-bit BAR read or write): counts down
    /// [`Action::DelayAccesses`] completions (posted by the caller's `poll_delayed`) and
    /// makes the writes of [`crate::Fault::LateWrites`].
    #[inline]
    pub(crate) fn on_access(&mut self) {
        if self.counted > 0 {
            self.count_down();
        }
        if self.late_left > 0 {
            self.late_write();
        }
    }

    #[cold]
    fn count_down(&mut self) {
        let now = Instant::now();
        for h in &mut self.held {
            if let Some(n) = h.after {
                if n <= 1 {
                    // Due: `poll_delayed` posts it.
                    h.after = None;
                    h.deadline = Some(now);
                    self.counted -= 1;
                } else {
                    h.after = Some(n - 1);
                }
            }
        }
    }

    #[cold]
    fn late_write(&mut self) {
        if !self.bus_master {
            return; // nothing is issued (or counted) while bus mastering is off
        }
        self.update_ready();
        if !self.rdy {
            // The disable completed: DMA is stopped.
            self.late_pages.clear();
            self.late_left = 0;
            return;
        }
        self.late_left -= 1;
        for &(iova, len, freed) in &self.late_pages {
            let junk = vec![0xde; len as usize];
            let mut h = self.data_hint;
            if freed {
                // Given back since the command was issued: a bug even if the bytes belong
                // to a new owner now (the free-bytes check alone cannot see that).
                self.table.flag_reused(iova, len as u64);
            }
            if self.table.write(iova, &junk, &mut h) {
                self.stats.late_writes += 1;
            }
        }
    }

    // ---------------------------------------------------------------- doorbells

    /// A doorbell write: `idx` is (offset - 0x1000) / stride: `2 * qid` for an SQ tail,
    /// `2 * qid + 1` for a CQ head.
    pub(crate) fn doorbell(&mut self, idx: usize, value: u32) {
        if !self.bus_master {
            return; // no DMA: nothing can be fetched or posted
        }
        if self.delayed > 0 {
            self.poll_delayed();
        }
        if !self.rdy {
            self.update_ready();
        }
        if !self.enabled || !self.rdy {
            let (en, rdy) = (self.cc & 1, self.rdy as u8);
            self.ub(format!(
                "doorbell {idx} written with {value} while not enabled and ready (CC.EN={en}, CSTS.RDY={rdy}): wait for RDY=1 after setting EN"
            ));
            return;
        }
        if self.cfs {
            return; // a failed controller processes nothing; not the host's fault
        }
        let qid = idx / 2;
        let value = self.shadow_agrees(idx, value);
        if idx % 2 == 0 {
            self.sq_tail(qid, value);
        } else {
            self.cq_head(qid, value);
        }
        if !self.irq_list.is_empty() {
            self.flush_irqs();
        }
    }

    pub(crate) fn sq_tail(&mut self, qid: usize, value: u32) {
        let Some(Some(sq)) = self.sqs.get_mut(qid) else {
            self.ub(format!(
                "SQ {qid} tail doorbell written ({value}) but no such queue"
            ));
            return;
        };
        if value >= sq.size {
            let size = sq.size;
            self.ub(format!(
                "SQ {qid} tail doorbell {value} >= queue size {size}: ignored"
            ));
            return;
        }
        sq.tail = value;
        self.process_sq(qid);
    }

    pub(crate) fn cq_head(&mut self, qid: usize, value: u32) {
        let Some(Some(cq)) = self.cqs.get_mut(qid) else {
            self.ub(format!(
                "CQ {qid} head doorbell written ({value}) but no such queue"
            ));
            return;
        };
        if value >= cq.size {
            let size = cq.size;
            self.ub(format!(
                "CQ {qid} head doorbell {value} >= queue size {size}: ignored"
            ));
            return;
        }
        // The new head may only consume entries the controller has posted.
        let used = (cq.tail + cq.size - cq.head) % cq.size;
        let advance = (value + cq.size - cq.head) % cq.size;
        if advance > used {
            let (h, t) = (cq.head, cq.tail);
            self.ub(format!(
                "CQ {qid} head doorbell {value} passes the posted entries (head {h}, tail {t}): ignored"
            ));
            return;
        }
        cq.head = value;
        if !cq.pending.is_empty() {
            self.drain_pending(qid);
        }
        if let Some(db) = self.dbbuf {
            if qid != 0 {
                let off = self.db_offset(2 * qid + 1);
                let mut h = db.hint;
                self.table.write_u32(db.eventidx + off, value, &mut h);
            }
        }
    }

    /// With shadow doorbells on, QEMU 7.2 takes an I/O queue's tail and head from the shadow
    /// doorbell buffer even after an MMIO doorbell write (`nvme_process_sq` and
    /// `nvme_post_cqes` re-read it; only the admin queue's MMIO value is copied into the
    /// buffer). A host that writes the register without the shadow entry (or a different
    /// value) is acted on with the shadow value there: flagged as undefined behaviour here,
    /// and the shadow value used, as QEMU would.
    fn shadow_agrees(&mut self, idx: usize, value: u32) -> u32 {
        let Some(db) = self.dbbuf else {
            return value;
        };
        if idx < 2 {
            return value; // the admin queue: MMIO only
        }
        let off = self.db_offset(idx);
        let mut h = db.hint;
        match self.table.read_u32(db.shadow + off, &mut h) {
            Some(v) if v == value => value,
            // The host wrote the shadow entry, then the register, and has moved the shadow
            // on since: in thread mode a doorbell write is processed after the host went on.
            // Shadow at or past the register's value, counting from where the controller
            // is: what QEMU does too (it takes the newer shadow value). Not a fault.
            Some(v) if self.shadow_is_ahead(idx, value, v) => v,
            Some(v) => {
                let (kind, qid) = if idx % 2 == 0 {
                    ("SQ", idx / 2)
                } else {
                    ("CQ", idx / 2)
                };
                self.ub(format!(
                    "{kind} {qid} doorbell written with {value} by MMIO while its shadow doorbell holds {v}: QEMU acts on the shadow value (write the shadow doorbell first)"
                ));
                v
            }
            None => value,
        }
    }

    /// For doorbell `idx` (SQ tail if even, CQ head if odd): from the controller's current
    /// index of that queue, `shadow` is at least as far on as `mmio` (ring order).
    fn shadow_is_ahead(&self, idx: usize, mmio: u32, shadow: u32) -> bool {
        let qid = idx / 2;
        let (cur, size) = if idx % 2 == 0 {
            match self.sqs.get(qid) {
                Some(Some(q)) => (q.tail, q.size),
                _ => return false,
            }
        } else {
            match self.cqs.get(qid) {
                Some(Some(q)) => (q.head, q.size),
                _ => return false,
            }
        };
        if mmio >= size || shadow >= size {
            return false;
        }
        let dist = |to: u32| (to + size - cur) % size;
        dist(mmio) <= dist(shadow)
    }

    pub(crate) fn db_offset(&self, idx: usize) -> u64 {
        (idx as u64) * (4u64 << self.cfg.dstrd)
    }

    /// Fetches and executes every entry between head and tail of SQ `qid`.
    pub(crate) fn process_sq(&mut self, qid: usize) {
        loop {
            if self.cfs {
                return;
            }
            let Some(Some(sq)) = self.sqs.get_mut(qid) else {
                return;
            };
            if sq.head == sq.tail {
                break;
            }
            let iova = sq.base + sq.head as u64 * 64;
            let Some(q) = self.table.read_sqe(iova, &mut sq.hint) else {
                let head = sq.head;
                self.fatal(format!(
                    "SQ {qid} entry {head} at IOVA {iova:#x} is not mapped"
                ));
                return;
            };
            sq.head = if sq.head + 1 == sq.size {
                0
            } else {
                sq.head + 1
            };
            let cqid = sq.cqid;
            let sqe = Sqe::from_qwords(q);
            self.execute(qid as u16, cqid, &sqe);
        }
        if let Some(db) = self.dbbuf {
            if qid != 0 {
                if let Some(Some(sq)) = self.sqs.get(qid) {
                    let tail = sq.tail;
                    let off = self.db_offset(2 * qid);
                    let mut h = db.hint;
                    self.table.write_u32(db.eventidx + off, tail, &mut h);
                }
            }
        }
    }

    /// Thread mode with shadow doorbells: picks up tails and heads the host wrote only to
    /// the shadow buffer.
    pub(crate) fn poll_shadow(&mut self) {
        let Some(db) = self.dbbuf else {
            return;
        };
        if !self.bus_master {
            return;
        }
        for qid in 1..self.sqs.len() {
            let mut h = db.hint;
            if let Some(sq) = &self.sqs[qid] {
                let off = self.db_offset(2 * qid);
                if let Some(v) = self.table.read_u32(db.shadow + off, &mut h) {
                    if v != sq.tail {
                        self.sq_tail(qid, v);
                    }
                }
            }
            if let Some(cq) = &self.cqs[qid] {
                let off = self.db_offset(2 * qid + 1);
                if let Some(v) = self.table.read_u32(db.shadow + off, &mut h) {
                    if v != cq.head {
                        self.cq_head(qid, v);
                    }
                }
            }
        }
    }

    fn count_cmd(&mut self, admin: bool, opc: u8, cdw12: u32) {
        use nvme_dio_queue::opcode::nvm;
        let s = &mut self.stats;
        if admin {
            s.admin += 1;
            return;
        }
        match opc {
            nvm::READ => s.reads += 1,
            nvm::WRITE => s.writes += 1,
            nvm::FLUSH => s.flushes += 1,
            nvm::WRITE_ZEROES => s.write_zeroes += 1,
            nvm::DATASET_MANAGEMENT => s.dsm += 1,
            nvm::VERIFY => s.verifies += 1,
            nvm::COPY => s.copies += 1,
            _ => s.other_io += 1,
        }
        // FUA is bit 30 of CDW12 in both Write and Write Zeroes (NVM Command Set 1.0, 3.2.6, 3.2.8).
        if matches!(opc, nvm::WRITE | nvm::WRITE_ZEROES) && cdw12 & (1 << 30) != 0 {
            s.fua_writes += 1;
        }
    }

    /// Executes one command and delivers its completion, applying an armed fault.
    fn execute(&mut self, sqid: u16, cqid: u16, sqe: &Sqe) {
        let admin = sqid == 0;
        self.count_cmd(admin, sqe.opc, sqe.cdw12);
        let action = if self.faults.armed.is_empty() {
            None
        } else {
            self.faults.take(admin, sqe.opc)
        };
        if let Some(Action::Lose) = action {
            self.stats.faults_fired += 1;
            self.held.push(Held {
                sqid,
                cid: sqe.cid,
                result: 0,
                status: Status::new(0, nvme_dio_queue::status::sc::ABORT_REQUESTED),
                deadline: None,
                after: None,
                aer: false,
                data: None,
            });
            return;
        }
        if let Some(Action::Status(status)) = action {
            self.stats.faults_fired += 1;
            if !admin && !status.is_success() {
                self.stats.io_errors += 1;
            }
            self.post(cqid, sqid, sqe.cid, 0, status.with_phase(false));
            return;
        }
        let out = if admin { self.admin(sqe) } else { self.io(sqe) };
        let (result, status) = match out {
            Outcome::Done(r, s) => (r, s),
            Outcome::Hold => {
                self.held.push(Held {
                    sqid,
                    cid: sqe.cid,
                    result: 0,
                    status: Status::SUCCESS,
                    deadline: None,
                    after: None,
                    aer: true,
                    data: None,
                });
                return;
            }
        };
        if !admin && !status.is_success() {
            self.stats.io_errors += 1;
        }
        let Some(action) = action else {
            self.post(cqid, sqid, sqe.cid, result, status);
            return;
        };
        self.stats.faults_fired += 1;
        match action {
            Action::Status(_) | Action::Lose => unreachable!("handled above"),
            Action::Drop | Action::Delay(_) | Action::DelayAccesses(_) => {
                let (deadline, after) = match action {
                    Action::Delay(d) => {
                        self.delayed += 1;
                        (Some(Instant::now() + d), None)
                    }
                    Action::DelayAccesses(n) => {
                        self.delayed += 1;
                        self.counted += 1;
                        (None, Some(n))
                    }
                    _ => (None, None),
                };
                let data = if admin {
                    None
                } else {
                    self.first_data_page(sqe)
                };
                self.held.push(Held {
                    sqid,
                    cid: sqe.cid,
                    result,
                    status,
                    deadline,
                    after,
                    aer: false,
                    data,
                });
            }
            Action::DuplicateCqe => {
                self.post(cqid, sqid, sqe.cid, result, status);
                self.post(cqid, sqid, sqe.cid, result, status);
            }
            Action::StaleCqe => {
                self.post(cqid, sqid, sqe.cid, result, status);
                let stale = [0x8000u16, 0x4000, 0x2000, 0x1000, 0x0800, 0x0001]
                    .iter()
                    .map(|m| sqe.cid ^ m)
                    .find(|&c| !self.cid_outstanding(sqid, c))
                    .unwrap_or(sqe.cid);
                self.post(cqid, sqid, stale, 0, Status::SUCCESS);
            }
        }
    }

    /// The first data page (IOVA, bytes) of a Read or Write with a PRP data pointer.
    fn first_data_page(&self, sqe: &Sqe) -> Option<(u64, u32)> {
        use nvme_dio_queue::opcode::nvm;
        if !matches!(sqe.opc, nvm::READ | nvm::WRITE) || sqe.flags >> 6 != 0 {
            return None;
        }
        let i = self.ns_index(sqe.nsid).ok()?;
        let len = ((sqe.cdw12 & 0xffff) as u64 + 1) << self.ns[i].lba_shift;
        let first = len.min(self.page - (sqe.prp1 & (self.page - 1)));
        Some((sqe.prp1, first as u32))
    }

    /// True if `cid` is held, or sits in SQ `sqid` between head and tail (not fetched yet).
    fn cid_outstanding(&mut self, sqid: u16, cid: u16) -> bool {
        if self.held.iter().any(|h| h.sqid == sqid && h.cid == cid) {
            return true;
        }
        let Some(Some(sq)) = self.sqs.get_mut(sqid as usize) else {
            return false;
        };
        let mut i = sq.head;
        while i != sq.tail {
            if let Some(q) = self.table.read_sqe(sq.base + i as u64 * 64, &mut sq.hint) {
                if (q[0] >> 16) as u16 == cid {
                    return true;
                }
            }
            i = (i + 1) % sq.size;
        }
        false
    }

    // ---------------------------------------------------------------- completions

    /// Posts a completion to CQ `cqid`, or holds it if the CQ is full (a controller never
    /// overruns the host's CQ).
    pub(crate) fn post(&mut self, cqid: u16, sqid: u16, cid: u16, result: u32, status: Status) {
        let Some(Some(cq)) = self.cqs.get_mut(cqid as usize) else {
            return;
        };
        let p = Pending {
            sqid,
            cid,
            result,
            status,
        };
        let next = if cq.tail + 1 == cq.size {
            0
        } else {
            cq.tail + 1
        };
        if next == cq.head || !cq.pending.is_empty() {
            cq.pending.push_back(p);
            self.stats.cq_full_holds += 1;
            return;
        }
        self.write_cqe(cqid as usize, p);
    }

    /// Writes `p` into the next slot of CQ `cqid` (which has room).
    fn write_cqe(&mut self, cqid: usize, p: Pending) {
        let sqhd = match self.sqs.get(p.sqid as usize) {
            Some(Some(sq)) => sq.head,
            _ => 0,
        };
        let Some(Some(cq)) = self.cqs.get_mut(cqid) else {
            return;
        };
        let d = [
            p.result,
            0,
            sqhd & 0xffff | (p.sqid as u32) << 16,
            p.cid as u32 | (p.status.with_phase(cq.phase).raw() as u32) << 16,
        ];
        self.write_cqe_dwords(cqid, d);
    }

    /// Writes the raw entry `d` (its phase tag already set) into the tail slot of CQ
    /// `cqid` (which exists and has room), advances the tail and queues the interrupt.
    fn write_cqe_dwords(&mut self, cqid: usize, d: [u32; 4]) {
        let Some(Some(cq)) = self.cqs.get_mut(cqid) else {
            return;
        };
        let iova = cq.base + cq.tail as u64 * 16;
        if !self.table.write_cqe(iova, d, &mut cq.hint) {
            let tail = cq.tail;
            self.fatal(format!(
                "CQ {cqid} entry {tail} at IOVA {iova:#x} is not mapped (or not 4-byte aligned in host memory)"
            ));
            return;
        }
        cq.tail += 1;
        if cq.tail == cq.size {
            cq.tail = 0;
            cq.phase = !cq.phase;
        }
        if cq.ien && !cq.irq_pending {
            cq.irq_pending = true;
            self.irq_list.push(cqid as u16);
        }
        self.stats.completions += 1;
    }

    /// Writes an arbitrary entry into I/O CQ `cqid` at its tail with the current phase tag
    /// (bit 16 of `d[3]` is overwritten), as a broken or hostile controller would. Returns
    /// false, writing nothing, if the queue does not exist, is the admin CQ, is full, or has
    /// completions waiting for room (they go first), or the controller is not running.
    pub(crate) fn post_raw(&mut self, cqid: u16, mut d: [u32; 4]) -> bool {
        if cqid == 0 || self.cfs || !self.enabled || !self.bus_master {
            return false;
        }
        let Some(Some(cq)) = self.cqs.get(cqid as usize) else {
            return false;
        };
        let next = if cq.tail + 1 == cq.size {
            0
        } else {
            cq.tail + 1
        };
        if next == cq.head || !cq.pending.is_empty() {
            return false;
        }
        d[3] = (d[3] & !(1 << 16)) | (cq.phase as u32) << 16;
        let completions = self.stats.completions;
        self.write_cqe_dwords(cqid as usize, d);
        self.stats.completions != completions
    }

    /// Posts held-for-room completions of CQ `cqid` while it has room.
    fn drain_pending(&mut self, cqid: usize) {
        loop {
            let Some(Some(cq)) = self.cqs.get_mut(cqid) else {
                return;
            };
            let next = if cq.tail + 1 == cq.size {
                0
            } else {
                cq.tail + 1
            };
            if next == cq.head {
                return;
            }
            let Some(p) = cq.pending.pop_front() else {
                return;
            };
            self.write_cqe(cqid, p);
            if self.cfs {
                return;
            }
        }
    }

    /// Signals the MSI-X vectors of CQs that got entries.
    pub(crate) fn flush_irqs(&mut self) {
        let mut list = std::mem::take(&mut self.irq_list);
        for &cqid in &list {
            if let Some(Some(cq)) = self.cqs.get_mut(cqid as usize) {
                cq.irq_pending = false;
                if let Some(fd) = self.msix.get(cq.iv as usize) {
                    // An eventfd write only fails on counter overflow (never, with +1s).
                    let _ = fd.write(1);
                    self.stats.interrupts += 1;
                }
            }
        }
        list.clear();
        self.irq_list = list;
    }

    /// Posts delayed completions whose time has come.
    pub(crate) fn poll_delayed(&mut self) {
        if self.delayed == 0 || !self.bus_master {
            return;
        }
        let now = Instant::now();
        let mut i = 0;
        while i < self.held.len() {
            let h = self.held[i];
            if h.deadline.is_some_and(|d| d <= now) {
                self.held.remove(i);
                self.delayed -= 1;
                self.forget_late_page(h.data);
                let cqid = match self.sqs.get(h.sqid as usize) {
                    Some(Some(sq)) => sq.cqid,
                    _ => continue, // its SQ was deleted: nothing to post to
                };
                self.post(cqid, h.sqid, h.cid, h.result, h.status);
            } else {
                i += 1;
            }
        }
        if !self.irq_list.is_empty() {
            self.flush_irqs();
        }
    }

    /// The earliest deadline of a delayed completion.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.held.iter().filter_map(|h| h.deadline).min()
    }

    /// Completes a held command with `status` (Abort, SQ deletion). Returns false if it
    /// was not held.
    pub(crate) fn complete_held(&mut self, sqid: u16, cid: u16, status: Status) -> bool {
        let Some(i) = self
            .held
            .iter()
            .position(|h| h.sqid == sqid && h.cid == cid)
        else {
            return false;
        };
        self.release_held(i, 0, status);
        true
    }

    /// Posts every dropped command's completion (see `EmuFunction::release_dropped`), with
    /// the result it was executed with (a Set Features' granted queues, say).
    pub(crate) fn release_dropped(&mut self) -> usize {
        let mut n = 0;
        while let Some(i) = self
            .held
            .iter()
            .position(|h| h.deadline.is_none() && h.after.is_none() && !h.aer)
        {
            let h = self.held[i];
            self.release_held(i, h.result, h.status);
            n += 1;
        }
        n
    }

    /// Takes held command `i` off the list (and out of the counts it is in) and posts its
    /// completion, if its SQ still exists.
    fn release_held(&mut self, i: usize, result: u32, status: Status) {
        let h = self.held.remove(i);
        self.forget_late_page(h.data);
        if h.deadline.is_some() || h.after.is_some() {
            self.delayed -= 1;
        }
        if h.after.is_some() {
            self.counted -= 1;
        }
        if h.aer {
            self.aers -= 1;
        }
        if let Some(Some(sq)) = self.sqs.get(h.sqid as usize) {
            let cqid = sq.cqid;
            self.post(cqid, h.sqid, h.cid, result, status);
        }
    }

    /// A readable summary for `Debug`-style diagnostics in tests.
    pub(crate) fn describe_queues(&self) -> String {
        let mut s = String::new();
        for (i, q) in self.sqs.iter().enumerate() {
            if let Some(q) = q {
                let _ = write!(s, "sq{i}(h{} t{} cq{}) ", q.head, q.tail, q.cqid);
            }
        }
        for (i, q) in self.cqs.iter().enumerate() {
            if let Some(q) = q {
                let _ = write!(
                    s,
                    "cq{i}(h{} t{} p{} pend{}) ",
                    q.head,
                    q.tail,
                    q.phase as u8,
                    q.pending.len()
                );
            }
        }
        s
    }
}

/// MDTS in bytes (0 = unlimited). MDTS is a shift that a hostile configuration may push past
/// 64 bits: saturate rather than overflow.
fn mdts_bytes(cfg: &EmuConfig) -> u64 {
    match cfg.mdts {
        0 => 0,
        m if 12 + cfg.mpsmin as u32 + m as u32 >= 64 => u64::MAX,
        m => (4096u64 << cfg.mpsmin) << m,
    }
}
