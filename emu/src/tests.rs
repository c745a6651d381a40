//! Drives the controller by hand: raw register writes, hand-built SQEs, host memory from
//! `std::alloc` mapped through the emulator's own mapper.

use std::alloc::Layout;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nvme_dio_dma::{Bar0, DmaMapper, PciFunction};
use nvme_dio_queue::entry::PSDT_SGL;
use nvme_dio_queue::opcode::{admin, cns, feature, log, nvm};
use nvme_dio_queue::regs::{self, Cc, Csts};
use nvme_dio_queue::status::{csc, sc, sct};
use nvme_dio_queue::{Cqe, PageSize, Sqe, Status};

use crate::*;

/// Page-aligned host memory mapped at `iova` through the emulator's mapper.
pub(crate) struct Mem {
    ptr: *mut u8,
    len: usize,
    iova: u64,
    mapper: Arc<dyn DmaMapper>,
}

// SAFETY: the memory is owned by this struct and only accessed through raw pointers.
unsafe impl Send for Mem {}

impl Mem {
    pub(crate) fn new(f: &EmuFunction, iova: u64, len: usize) -> Mem {
        let layout = Layout::from_size_align(len, 4096).unwrap();
        // SAFETY: `len` is non-zero.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        assert!(!ptr.is_null());
        let mapper = f.dma_mapper();
        // SAFETY: `ptr..ptr+len` is ours until Drop, which unmaps before freeing.
        unsafe { mapper.map(iova, ptr, len) }.unwrap();
        Mem {
            ptr,
            len,
            iova,
            mapper,
        }
    }

    pub(crate) fn write(&self, off: usize, b: &[u8]) {
        assert!(off + b.len() <= self.len);
        // SAFETY: in bounds; raw copy, no reference into device-visible memory.
        unsafe { std::ptr::copy_nonoverlapping(b.as_ptr(), self.ptr.add(off), b.len()) };
    }

    pub(crate) fn read(&self, off: usize, n: usize) -> Vec<u8> {
        assert!(off + n <= self.len);
        let mut v = vec![0u8; n];
        // SAFETY: in bounds.
        unsafe { std::ptr::copy_nonoverlapping(self.ptr.add(off), v.as_mut_ptr(), n) };
        v
    }

    pub(crate) fn write_u64(&self, off: usize, v: u64) {
        self.write(off, &v.to_le_bytes());
    }

    pub(crate) fn read_u32(&self, off: usize) -> u32 {
        u32::from_le_bytes(self.read(off, 4).try_into().unwrap())
    }

    pub(crate) fn write_sqe(&self, off: usize, sqe: &Sqe) {
        for (i, q) in sqe.to_qwords().iter().enumerate() {
            self.write_u64(off + i * 8, *q);
        }
    }

    pub(crate) fn read_cqe(&self, off: usize) -> Cqe {
        let d: Vec<u32> = (0..4).map(|i| self.read_u32(off + i * 4)).collect();
        Cqe::from_dwords([d[0], d[1], d[2], d[3]])
    }

    pub(crate) fn iova(&self, off: usize) -> u64 {
        self.iova + off as u64
    }
}

impl Drop for Mem {
    fn drop(&mut self) {
        let _ = self.mapper.unmap(self.iova, self.len);
        // SAFETY: allocated in `new` with this layout; unmapped above.
        unsafe { std::alloc::dealloc(self.ptr, Layout::from_size_align(self.len, 4096).unwrap()) };
    }
}

// Layout of the test memory (4 MiB at IOVA 1 MiB).
pub(crate) const MEM_IOVA: u64 = 0x10_0000;
pub(crate) const ASQ: usize = 0x0000;
pub(crate) const ACQ: usize = 0x1000;
pub(crate) const SQ1: usize = 0x2000;
pub(crate) const CQ1: usize = 0x3000;
pub(crate) const LIST: usize = 0x4000; // PRP lists / SGL segments (4 pages)
pub(crate) const BUF: usize = 0x10000; // admin data buffer (one page)
pub(crate) const DATA: usize = 0x20000; // I/O data (many pages)
pub(crate) const QSIZE: u32 = 64;

/// A hand-driven host.
pub(crate) struct Host {
    pub(crate) f: EmuFunction,
    pub(crate) mem: Mem,
    asq_tail: u32,
    acq_head: u32,
    acq_phase: bool,
    pub(crate) sq1_tail: u32,
    pub(crate) cq1_head: u32,
    pub(crate) cq1_phase: bool,
    pub(crate) cq1_size: u32,
    pub(crate) sq1_size: u32,
}

pub(crate) fn cc_good() -> Cc {
    Cc::default()
        .with_en(true)
        .with_mps(PageSize::SIZE_4K)
        .with_iosqes(6)
        .with_iocqes(4)
}

pub(crate) fn wait_ready(bar: &EmuBar, want: bool) -> Csts {
    let t = Instant::now();
    loop {
        let c = Csts(bar.read32(regs::CSTS));
        if c.rdy() == want || c.cfs() {
            return c;
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "CSTS.RDY never became {want}"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

impl Host {
    pub(crate) fn new(cfg: EmuConfig) -> Host {
        let f = EmuFunction::new(cfg).unwrap();
        let mem = Mem::new(&f, MEM_IOVA, 4 << 20);
        Host {
            f,
            mem,
            asq_tail: 0,
            acq_head: 0,
            acq_phase: true,
            sq1_tail: 0,
            cq1_head: 0,
            cq1_phase: true,
            cq1_size: QSIZE,
            sq1_size: QSIZE,
        }
    }

    pub(crate) fn bar(&self) -> &EmuBar {
        self.f.bar0()
    }

    /// Configures the admin queues and enables, waiting for RDY.
    pub(crate) fn enable(&mut self) {
        let bar = self.f.bar0();
        bar.write32(regs::AQA, (QSIZE - 1) | (QSIZE - 1) << 16);
        bar.write64(regs::ASQ, self.mem.iova(ASQ));
        bar.write64(regs::ACQ, self.mem.iova(ACQ));
        bar.write32(regs::CC, cc_good().0);
        let c = wait_ready(bar, true);
        assert!(
            c.rdy() && !c.cfs(),
            "enable failed: {:?}",
            self.f.ub_events()
        );
    }

    /// A host started and enabled with the default configuration plus `tweak`.
    pub(crate) fn started(tweak: impl FnOnce(&mut EmuConfig)) -> Host {
        let mut cfg = EmuConfig::default();
        tweak(&mut cfg);
        let mut h = Host::new(cfg);
        h.enable();
        h
    }

    /// Submits one admin command and returns its completion.
    pub(crate) fn admin(&mut self, mut sqe: Sqe) -> Cqe {
        sqe.cid = 0x100 + self.asq_tail as u16;
        self.mem.write_sqe(ASQ + self.asq_tail as usize * 64, &sqe);
        self.asq_tail = (self.asq_tail + 1) % QSIZE;
        self.bar().write32(regs::DOORBELL_BASE, self.asq_tail);
        let t = Instant::now();
        let c = loop {
            // Inline mode completes before the doorbell write returns; thread mode soon after.
            if let Some(c) = self.pop_admin() {
                break c;
            }
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "admin command did not complete"
            );
            std::thread::yield_now();
        };
        assert_eq!(c.cid, sqe.cid);
        c
    }

    pub(crate) fn pop_admin(&mut self) -> Option<Cqe> {
        let c = self.mem.read_cqe(ACQ + self.acq_head as usize * 16);
        if c.status.phase() != self.acq_phase {
            return None;
        }
        self.acq_head = (self.acq_head + 1) % QSIZE;
        if self.acq_head == 0 {
            self.acq_phase = !self.acq_phase;
        }
        self.bar().write32(regs::DOORBELL_BASE + 4, self.acq_head);
        Some(c)
    }

    pub(crate) fn create_pair(&mut self, cq_size: u32, sq_size: u32, ien: bool, iv: u16) {
        let c = self.admin(create_cq(1, self.mem.iova(CQ1), cq_size, ien, iv));
        assert!(c.status.is_success(), "create cq: {}", c.status);
        let c = self.admin(create_sq(1, self.mem.iova(SQ1), sq_size, 1));
        assert!(c.status.is_success(), "create sq: {}", c.status);
        self.cq1_size = cq_size;
        self.sq1_size = sq_size;
    }

    /// Places `sqe` in SQ 1 without ringing.
    pub(crate) fn push_io(&mut self, sqe: &Sqe) {
        self.mem.write_sqe(SQ1 + self.sq1_tail as usize * 64, sqe);
        self.sq1_tail = (self.sq1_tail + 1) % self.sq1_size;
    }

    pub(crate) fn ring_io(&self) {
        self.bar().write32(regs::DOORBELL_BASE + 8, self.sq1_tail);
    }

    /// Takes the next CQ 1 entry, if posted (does not ring the head doorbell).
    pub(crate) fn peek_io(&mut self) -> Option<Cqe> {
        let c = self.mem.read_cqe(CQ1 + self.cq1_head as usize * 16);
        if c.status.phase() != self.cq1_phase {
            return None;
        }
        self.cq1_head = (self.cq1_head + 1) % self.cq1_size;
        if self.cq1_head == 0 {
            self.cq1_phase = !self.cq1_phase;
        }
        Some(c)
    }

    pub(crate) fn ring_cq1(&self) {
        self.bar().write32(regs::DOORBELL_BASE + 12, self.cq1_head);
    }

    /// Submits one I/O command and returns its completion (inline mode).
    pub(crate) fn io(&mut self, sqe: Sqe) -> Cqe {
        self.push_io(&sqe);
        self.ring_io();
        let c = self.peek_io().expect("I/O command did not complete");
        self.ring_cq1();
        assert_eq!(c.cid, sqe.cid);
        assert_eq!(c.sqid, 1);
        c
    }

    /// Submits one I/O command and waits for its completion (thread mode).
    pub(crate) fn io_wait(&mut self, sqe: Sqe) -> Cqe {
        self.push_io(&sqe);
        self.ring_io();
        let t = Instant::now();
        loop {
            if let Some(c) = self.peek_io() {
                self.ring_cq1();
                return c;
            }
            assert!(t.elapsed() < Duration::from_secs(20), "no completion");
            std::thread::yield_now();
        }
    }

    pub(crate) fn assert_no_ub(&self) {
        assert_eq!(self.f.ub_events(), Vec::<String>::new());
    }
}

// ------------------------------------------------------------------ SQE helpers

pub(crate) fn create_cq(qid: u16, base: u64, size: u32, ien: bool, iv: u16) -> Sqe {
    Sqe {
        opc: admin::CREATE_IO_CQ,
        prp1: base,
        cdw10: qid as u32 | (size.wrapping_sub(1) & 0xffff) << 16,
        cdw11: 1 | (ien as u32) << 1 | (iv as u32) << 16,
        ..Sqe::default()
    }
}

pub(crate) fn create_sq(qid: u16, base: u64, size: u32, cqid: u16) -> Sqe {
    Sqe {
        opc: admin::CREATE_IO_SQ,
        prp1: base,
        cdw10: qid as u32 | (size.wrapping_sub(1) & 0xffff) << 16,
        cdw11: 1 | (cqid as u32) << 16,
        ..Sqe::default()
    }
}

pub(crate) fn rw(opc: u8, nsid: u32, slba: u64, nlb: u32, prp1: u64, prp2: u64) -> Sqe {
    Sqe {
        opc,
        cid: 7,
        nsid,
        prp1,
        prp2,
        cdw10: slba as u32,
        cdw11: (slba >> 32) as u32,
        cdw12: nlb - 1,
        ..Sqe::default()
    }
}

fn identify(cns_: u8, nsid: u32, buf: u64) -> Sqe {
    Sqe {
        opc: admin::IDENTIFY,
        nsid,
        prp1: buf,
        cdw10: cns_ as u32,
        ..Sqe::default()
    }
}

fn status(sct_: u8, sc_: u8) -> Status {
    Status::new(sct_, sc_).with_dnr()
}

fn assert_status(c: &Cqe, want: Status) {
    assert_eq!(
        c.status.with_phase(false),
        want,
        "got {} want {}",
        c.status,
        want
    );
}

fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

// ------------------------------------------------------------------ registers

#[test]
fn cap_and_vs_mirror_qemu() {
    let h = Host::new(EmuConfig::default());
    assert_eq!(h.bar().read64(regs::CAP), 0x0040_1820_0f01_07ff);
    assert_eq!(h.bar().read32(regs::CAP), 0x0f01_07ff);
    assert_eq!(h.bar().read32(regs::CAP + 4), 0x0040_1820);
    assert_eq!(h.bar().read32(regs::VS), 0x0001_0400);
    assert_eq!(h.f.msix_vectors(), 65);
    h.assert_no_ub();
}

#[test]
fn ready_stays_zero_until_the_delay_and_early_doorbells_are_ub() {
    let cfg = EmuConfig {
        ready_delay: Duration::from_secs(3600),
        ..EmuConfig::default()
    };
    let h = Host::new(cfg);
    let bar = h.bar();
    bar.write32(regs::AQA, 0x003f_003f);
    bar.write64(regs::ASQ, h.mem.iova(ASQ));
    bar.write64(regs::ACQ, h.mem.iova(ACQ));
    bar.write32(regs::CC, cc_good().0);
    assert!(!Csts(bar.read32(regs::CSTS)).rdy(), "RDY must lag CC.EN");
    h.mem
        .write_sqe(ASQ, &identify(cns::CONTROLLER, 0, h.mem.iova(BUF)));
    bar.write32(regs::DOORBELL_BASE, 1);
    assert_eq!(
        h.f.stats().admin,
        0,
        "a doorbell before RDY=1 must not be processed"
    );
    let ub = h.f.ub_events();
    assert_eq!(ub.len(), 1);
    assert!(ub[0].contains("RDY=0"), "{ub:?}");
}

#[test]
fn ready_follows_enable_and_disable_after_a_short_delay() {
    let cfg = EmuConfig {
        ready_delay: Duration::from_millis(20),
        ..EmuConfig::default()
    };
    let mut h = Host::new(cfg);
    h.enable(); // waits for RDY=1
    let c = h.admin(identify(cns::CONTROLLER, 0, h.mem.iova(BUF)));
    assert!(c.status.is_success());
    h.bar().write32(regs::CC, cc_good().with_en(false).0);
    let c = wait_ready(h.bar(), false);
    assert!(!c.rdy() && !c.cfs());
    h.assert_no_ub();
}

#[test]
fn bad_configurations_set_cfs_and_a_good_one_clears_it() {
    type Misconfigure = Box<dyn Fn(&Host)>;
    let bad: Vec<(&str, Misconfigure)> = vec![
        (
            "MPS above MPSMAX",
            Box::new(|h: &Host| h.bar().write32(regs::CC, cc_good().0 | 5 << 7)),
        ),
        (
            "IOSQES 5",
            Box::new(|h: &Host| h.bar().write32(regs::CC, cc_good().with_iosqes(5).0)),
        ),
        (
            "IOCQES 0",
            Box::new(|h: &Host| h.bar().write32(regs::CC, cc_good().with_iocqes(0).0)),
        ),
        (
            "ASQ misaligned",
            Box::new(|h: &Host| {
                h.bar().write64(regs::ASQ, h.mem.iova(ASQ) + 0x40);
                h.bar().write32(regs::CC, cc_good().0)
            }),
        ),
        (
            "AQA size 1",
            Box::new(|h: &Host| {
                h.bar().write32(regs::AQA, 0);
                h.bar().write32(regs::CC, cc_good().0)
            }),
        ),
        (
            "CSS 1",
            Box::new(|h: &Host| h.bar().write32(regs::CC, cc_good().with_css(1).0)),
        ),
    ];
    for (what, f) in bad {
        let h = Host::new(EmuConfig::default());
        h.bar().write32(regs::AQA, 0x003f_003f);
        h.bar().write64(regs::ASQ, h.mem.iova(ASQ));
        h.bar().write64(regs::ACQ, h.mem.iova(ACQ));
        f(&h);
        let c = Csts(h.bar().read32(regs::CSTS));
        assert!(c.cfs() && !c.rdy(), "{what}: CSTS {:#x}", c.0);
        assert_eq!(h.f.err_events().len(), 1, "{what}");
        // Reset and enable properly: CFS clears.
        h.bar().write32(regs::CC, 0);
        h.bar().write32(regs::AQA, 0x003f_003f);
        h.bar().write64(regs::ASQ, h.mem.iova(ASQ));
        h.bar().write32(regs::CC, cc_good().0);
        let c = Csts(h.bar().read32(regs::CSTS));
        assert!(
            c.rdy() && !c.cfs(),
            "{what}: after a good enable CSTS {:#x}",
            c.0
        );
    }
}

#[test]
fn shutdown_notification_completes() {
    let h = Host::started(|_| {});
    h.bar()
        .write32(regs::CC, cc_good().with_shn(regs::shn::NORMAL).0);
    assert_eq!(
        Csts(h.bar().read32(regs::CSTS)).shst(),
        regs::shst::COMPLETE
    );
    h.assert_no_ub();
}

#[test]
fn bad_mmio_is_ignored_and_recorded() {
    let h = Host::started(|_| {});
    h.bar().write32(0x1002, 1); // misaligned
    h.bar().write32(regs::CSTS, 1); // read-only
    h.bar().write32(regs::DOORBELL_BASE + 8 * 5, 1); // SQ 5 does not exist
    h.bar().write32(regs::DOORBELL_BASE, QSIZE); // tail >= size
    h.bar().write32(regs::DOORBELL_BASE + 4, 3); // CQ head past the posted entries
    h.bar().write64(regs::CC, 0); // 64-bit write to a 32-bit register
    assert_eq!(h.f.ub_events().len(), 6, "{:?}", h.f.ub_events());
    assert_eq!(h.f.stats().ub_events, 6);
    assert!(
        Csts(h.bar().read32(regs::CSTS)).rdy(),
        "ignored, not acted on"
    );
}

#[test]
fn intms_with_msix_enabled_is_ub() {
    let h = Host::started(|_| {});
    h.f.enable_msix(2).unwrap();
    h.bar().write32(regs::INTMS, 1);
    assert_eq!(h.f.ub_events().len(), 1);
}

// ------------------------------------------------------------------ admin

#[test]
fn identify_controller_namespace_and_list() {
    let mut h = Host::started(|c| {
        c.namespaces = vec![NsConfig::ram(1000, 512), NsConfig::null(1 << 30, 4096)];
        c.dbbuf = true;
        c.sgl = true;
    });
    let c = h.admin(identify(cns::CONTROLLER, 0, h.mem.iova(BUF)));
    assert!(c.status.is_success());
    let p = h.mem.read(BUF, 4096);
    assert_eq!(&p[4..12], b"deadbeef");
    assert_eq!(
        String::from_utf8_lossy(&p[24..64]).trim_end(),
        "nvme-dio emulated controller"
    );
    assert_eq!(p[77], 7, "MDTS");
    assert_eq!(
        u32::from_le_bytes(p[80..84].try_into().unwrap()),
        0x0001_0400
    );
    assert_eq!(
        u16::from_le_bytes([p[256], p[257]]) & 1 << 8,
        1 << 8,
        "OACS dbbuf"
    );
    assert_eq!((p[512], p[513]), (0x66, 0x44));
    // NN: the most namespaces there can be (they can be added at run time), not how many are.
    assert_eq!(
        u32::from_le_bytes(p[516..520].try_into().unwrap()),
        1024,
        "NN"
    );
    assert_eq!(p[525] & 1, 1, "VWC present");
    assert_eq!(p[536] & 3, 1, "SGLS");

    let c = h.admin(identify(cns::NAMESPACE, 2, h.mem.iova(BUF)));
    assert!(c.status.is_success());
    let p = h.mem.read(BUF, 4096);
    assert_eq!(u64::from_le_bytes(p[0..8].try_into().unwrap()), 1 << 30);
    assert_eq!(p[26] & 0xf, 0);
    assert_eq!(p[128 + 2], 12, "LBADS");

    let c = h.admin(identify(cns::ACTIVE_NAMESPACES, 0, h.mem.iova(BUF)));
    assert!(c.status.is_success());
    assert_eq!(h.mem.read_u32(BUF), 1);
    assert_eq!(h.mem.read_u32(BUF + 4), 2);
    assert_eq!(h.mem.read_u32(BUF + 8), 0);

    let c = h.admin(identify(cns::NAMESPACE, 3, h.mem.iova(BUF)));
    assert_status(&c, status(sct::GENERIC, sc::INVALID_NAMESPACE));
    let c = h.admin(identify(0x55, 0, h.mem.iova(BUF)));
    assert_status(&c, status(sct::GENERIC, sc::INVALID_FIELD));
    h.assert_no_ub();
}

#[test]
fn number_of_queues_grants_the_minimum_and_only_before_queues_exist() {
    let mut h = Host::started(|c| c.max_ioqpairs = 4);
    let set_nq = |n: u32| Sqe {
        opc: admin::SET_FEATURES,
        cdw10: feature::NUMBER_OF_QUEUES as u32,
        cdw11: (n - 1) | (n - 1) << 16,
        ..Sqe::default()
    };
    let c = h.admin(set_nq(16));
    assert!(c.status.is_success());
    assert_eq!(c.result, 3 | 3 << 16, "granted 4 of 16");
    let c = h.admin(set_nq(2));
    assert_eq!(c.result, 1 | 1 << 16);
    // qid 3 is above the grant of 2.
    let c = h.admin(create_cq(3, h.mem.iova(CQ1), 16, false, 0));
    assert_status(&c, status(sct::COMMAND_SPECIFIC, csc::INVALID_QID));
    h.create_pair(16, 16, false, 0);
    let c = h.admin(set_nq(2));
    assert_status(&c, status(sct::GENERIC, 0x0c));
    let c = h.admin(Sqe {
        opc: admin::GET_FEATURES,
        cdw10: feature::NUMBER_OF_QUEUES as u32,
        ..Sqe::default()
    });
    assert_eq!(c.result, 1 | 1 << 16);
    h.assert_no_ub();
}

#[test]
fn create_and_delete_queue_errors_match_qemu() {
    let mut h = Host::started(|_| {});
    let cq = h.mem.iova(CQ1);
    let sq = h.mem.iova(SQ1);
    let cases = [
        (
            "cq qid 0",
            create_cq(0, cq, 16, false, 0),
            status(1, csc::INVALID_QID),
        ),
        (
            "cq qid > max",
            create_cq(65, cq, 16, false, 0),
            status(1, csc::INVALID_QID),
        ),
        (
            "cq size 1",
            create_cq(1, cq, 1, false, 0),
            status(1, csc::INVALID_QUEUE_SIZE),
        ),
        (
            "cq size > MQES",
            create_cq(1, cq, 2049, false, 0),
            status(1, csc::INVALID_QUEUE_SIZE),
        ),
        (
            "cq misaligned",
            create_cq(1, cq + 0x100, 16, false, 0),
            status(0, sc::INVALID_PRP_OFFSET),
        ),
        (
            "cq vector without MSI-X",
            create_cq(1, cq, 16, true, 1),
            status(1, csc::INVALID_VECTOR),
        ),
        (
            "sq missing cq",
            create_sq(1, sq, 16, 1),
            status(1, csc::CQ_INVALID),
        ),
    ];
    for (what, sqe, want) in cases {
        let c = h.admin(sqe);
        assert_eq!(c.status.with_phase(false), want, "{what}: got {}", c.status);
    }
    h.f.enable_msix(65).unwrap();
    let c = h.admin(create_cq(1, cq, 16, true, 65));
    assert_status(&c, status(1, csc::INVALID_VECTOR));
    h.create_pair(16, 16, true, 64);
    let cases = [
        (
            "duplicate cq",
            create_cq(1, cq, 16, false, 0),
            status(1, csc::INVALID_QID),
        ),
        (
            "duplicate sq",
            create_sq(1, sq, 16, 1),
            status(1, csc::INVALID_QID),
        ),
        (
            "sq qid 0",
            create_sq(0, sq, 16, 1),
            status(1, csc::INVALID_QID),
        ),
        (
            "sq size 1",
            create_sq(2, sq + 0x1000, 1, 1),
            status(1, csc::INVALID_QUEUE_SIZE),
        ),
        (
            "sq misaligned",
            create_sq(2, sq + 8, 16, 1),
            status(0, sc::INVALID_PRP_OFFSET),
        ),
        (
            "delete cq with an sq",
            Sqe {
                opc: admin::DELETE_IO_CQ,
                cdw10: 1,
                ..Sqe::default()
            },
            status(1, 0x0c),
        ),
        (
            "delete missing sq",
            Sqe {
                opc: admin::DELETE_IO_SQ,
                cdw10: 9,
                ..Sqe::default()
            },
            status(1, csc::INVALID_QID),
        ),
        (
            "unknown opcode",
            Sqe {
                opc: 0x7f,
                ..Sqe::default()
            },
            status(0, sc::INVALID_OPCODE),
        ),
    ];
    for (what, sqe, want) in cases {
        let c = h.admin(sqe);
        assert_eq!(c.status.with_phase(false), want, "{what}: got {}", c.status);
    }
    let c = h.admin(Sqe {
        opc: admin::DELETE_IO_SQ,
        cdw10: 1,
        ..Sqe::default()
    });
    assert!(c.status.is_success());
    let c = h.admin(Sqe {
        opc: admin::DELETE_IO_CQ,
        cdw10: 1,
        ..Sqe::default()
    });
    assert!(c.status.is_success());
    h.assert_no_ub();
}

#[test]
fn log_pages_and_features() {
    let mut h = Host::started(|_| {});
    let get_log = |lid: u8, dwords: u32, buf: u64| Sqe {
        opc: admin::GET_LOG_PAGE,
        prp1: buf,
        cdw10: lid as u32 | (dwords - 1) << 16,
        ..Sqe::default()
    };
    let c = h.admin(get_log(log::SMART_HEALTH, 128, h.mem.iova(BUF)));
    assert!(c.status.is_success());
    let p = h.mem.read(BUF, 512);
    assert_eq!(p[3], 100, "available spare");
    assert!(
        u16::from_le_bytes([p[1], p[2]]) > 273,
        "temperature in kelvin"
    );
    let c = h.admin(get_log(log::ERROR_INFORMATION, 16, h.mem.iova(BUF)));
    assert!(c.status.is_success());
    let c = h.admin(get_log(0x70, 16, h.mem.iova(BUF)));
    assert_status(&c, status(1, 0x09));
    // VWC off then read back; interrupt coalescing round trip.
    let set = |fid: u8, v: u32| Sqe {
        opc: admin::SET_FEATURES,
        cdw10: fid as u32,
        cdw11: v,
        ..Sqe::default()
    };
    let get = |fid: u8| Sqe {
        opc: admin::GET_FEATURES,
        cdw10: fid as u32,
        ..Sqe::default()
    };
    assert!(
        h.admin(set(feature::VOLATILE_WRITE_CACHE, 0))
            .status
            .is_success()
    );
    assert_eq!(h.admin(get(feature::VOLATILE_WRITE_CACHE)).result, 0);
    assert!(
        h.admin(set(feature::INTERRUPT_COALESCING, 0x0a04))
            .status
            .is_success()
    );
    assert_eq!(h.admin(get(feature::INTERRUPT_COALESCING)).result, 0x0a04);
    let c = h.admin(set(0x7e, 0));
    assert_status(&c, status(0, sc::INVALID_FIELD));
    h.assert_no_ub();
}

// ------------------------------------------------------------------ I/O data path

fn io_host(tweak: impl FnOnce(&mut EmuConfig)) -> Host {
    let mut h = Host::started(|c| {
        c.namespaces = vec![NsConfig::ram(4096, 512), NsConfig::null(1 << 20, 4096)];
        tweak(c)
    });
    h.create_pair(QSIZE, QSIZE, false, 0);
    h
}

#[test]
fn write_then_read_with_a_prp_list_round_trips() {
    let mut h = io_host(|_| {});
    // 40 blocks of 512 = 20 KiB starting 0x200 into a page: PRP1 + a 5-entry list.
    let data = pattern(40 * 512, 3);
    let start = DATA + 0x200;
    h.mem.write(start, &data);
    let pages: Vec<u64> = (1..=5).map(|i| h.mem.iova(DATA + i * 0x1000)).collect();
    for (i, p) in pages.iter().enumerate() {
        h.mem.write_u64(LIST + i * 8, *p);
    }
    let c = h.io(rw(
        nvm::WRITE,
        1,
        100,
        40,
        h.mem.iova(start),
        h.mem.iova(LIST),
    ));
    assert!(c.status.is_success(), "{}", c.status);
    let mut stored = vec![0u8; data.len()];
    h.f.read_blocks(1, 100, &mut stored).unwrap();
    assert_eq!(stored, data);
    // Read it back into a different place: PRP1 page aligned, two pages -> PRP2 direct.
    let c = h.io(rw(
        nvm::READ,
        1,
        100,
        16,
        h.mem.iova(DATA + 0x10_0000),
        h.mem.iova(DATA + 0x10_1000),
    ));
    assert!(c.status.is_success(), "{}", c.status);
    assert_eq!(h.mem.read(DATA + 0x10_0000, 8192), data[..8192]);
    assert_eq!(c.sqhd, 2, "sqhd after two commands");
    let s = h.f.stats();
    assert_eq!((s.reads, s.writes, s.io_errors), (1, 1, 0));
    h.assert_no_ub();
}

#[test]
fn prp_rule_violations_fail_with_their_status() {
    let mut h = io_host(|_| {});
    let d = h.mem.iova(DATA);
    let list = h.mem.iova(LIST);
    // A list whose second entry is misaligned.
    h.mem.write_u64(LIST, d + 0x1000);
    h.mem.write_u64(LIST + 8, d + 0x2010);
    let cases = [
        (
            "PRP1 not dword aligned",
            rw(nvm::READ, 1, 0, 1, d + 2, 0),
            status(0, sc::INVALID_PRP_OFFSET),
        ),
        (
            "PRP2 data pointer misaligned",
            rw(nvm::READ, 1, 0, 16, d, d + 0x1200),
            status(0, sc::INVALID_PRP_OFFSET),
        ),
        (
            "list entry misaligned",
            rw(nvm::READ, 1, 0, 24, d, list),
            status(0, sc::INVALID_PRP_OFFSET),
        ),
        (
            "list pointer not qword aligned",
            rw(nvm::READ, 1, 0, 24, d, list + 4),
            status(0, sc::INVALID_PRP_OFFSET),
        ),
        (
            "over MDTS",
            rw(nvm::READ, 2, 0, 129, d, list),
            status(0, sc::INVALID_FIELD),
        ),
        (
            "LBA out of range",
            rw(nvm::READ, 1, 4095, 2, d, 0),
            status(0, sc::LBA_OUT_OF_RANGE),
        ),
        (
            "LBA overflow",
            rw(nvm::READ, 1, u64::MAX, 2, d, 0),
            status(0, sc::LBA_OUT_OF_RANGE),
        ),
        (
            "nsid 0",
            rw(nvm::READ, 0, 0, 1, d, 0),
            status(0, sc::INVALID_NAMESPACE),
        ),
        (
            "nsid 3",
            rw(nvm::WRITE, 3, 0, 1, d, 0),
            status(0, sc::INVALID_NAMESPACE),
        ),
        (
            "unmapped PRP1",
            rw(nvm::READ, 1, 0, 1, 0x8000_0000, 0),
            status(0, sc::DATA_TRANSFER_ERROR),
        ),
        (
            "unmapped PRP2",
            rw(nvm::READ, 2, 0, 2, d, 0x8000_0000),
            status(0, sc::DATA_TRANSFER_ERROR),
        ),
        (
            "unmapped list",
            rw(nvm::READ, 2, 0, 3, d, 0x8000_0000),
            status(0, sc::DATA_TRANSFER_ERROR),
        ),
        (
            "SGL when disabled",
            Sqe {
                flags: PSDT_SGL,
                ..rw(nvm::READ, 1, 0, 1, d, 0)
            },
            status(0, sc::INVALID_FIELD),
        ),
        (
            "unknown I/O opcode",
            Sqe {
                opc: 0x7d,
                ..rw(0, 1, 0, 1, d, 0)
            },
            status(0, sc::INVALID_OPCODE),
        ),
    ];
    for (what, sqe, want) in cases {
        let c = h.io(sqe);
        assert_eq!(c.status.with_phase(false), want, "{what}: got {}", c.status);
    }
    assert_eq!(h.f.stats().io_errors, 14);
    h.assert_no_ub();
}

#[test]
fn a_null_namespace_still_walks_chained_lists_and_limits_mappings() {
    let mut h = io_host(|c| c.mdts = 0);
    let d = h.mem.iova(DATA);
    // Three list pages at LIST, LIST+0x1000, LIST+0x2000; each chains to the next.
    let entries_per_page = 512;
    let fill = |h: &Host, bad_chain: bool| {
        for p in 0..3 {
            for i in 0..entries_per_page {
                let off = LIST + p * 0x1000 + i * 8;
                if i == entries_per_page - 1 && p < 2 {
                    let next = h.mem.iova(LIST + (p + 1) * 0x1000) + if bad_chain { 8 } else { 0 };
                    h.mem.write_u64(off, next);
                } else {
                    h.mem.write_u64(off, d); // every entry may name the same page
                }
            }
        }
    };
    fill(&h, false);
    // 1 (PRP1) + 511 + 511 + 512 = 1535 pages available; 1024 allowed.
    let c = h.io(rw(nvm::READ, 2, 0, 1024, d, h.mem.iova(LIST)));
    assert!(c.status.is_success(), "{}", c.status);
    let c = h.io(rw(nvm::READ, 2, 0, 1025, d, h.mem.iova(LIST)));
    assert_status(&c, status(0, sc::INTERNAL_ERROR));
    fill(&h, true);
    let c = h.io(rw(nvm::READ, 2, 0, 1000, d, h.mem.iova(LIST)));
    assert_status(&c, status(0, sc::INVALID_PRP_OFFSET));
    h.assert_no_ub();
}

#[test]
fn write_zeroes_and_deallocate_zero_ram() {
    let mut h = io_host(|_| {});
    h.f.write_blocks(1, 0, &[0xaa; 512 * 8]).unwrap();
    let c = h.io(Sqe {
        opc: nvm::WRITE_ZEROES,
        nsid: 1,
        cdw10: 1,
        cdw12: 1,
        ..Sqe::default()
    });
    assert!(c.status.is_success());
    let range = [0u32.to_le_bytes(), 2u32.to_le_bytes()].concat();
    let range = [range, 5u64.to_le_bytes().to_vec()].concat();
    h.mem.write(BUF, &range);
    let c = h.io(Sqe {
        opc: nvm::DATASET_MANAGEMENT,
        nsid: 1,
        prp1: h.mem.iova(BUF),
        cdw10: 0,
        cdw11: 1 << 2,
        ..Sqe::default()
    });
    assert!(c.status.is_success(), "{}", c.status);
    let mut b = vec![0u8; 512 * 8];
    h.f.read_blocks(1, 0, &mut b).unwrap();
    let zeroed: Vec<bool> = b.chunks(512).map(|c| c.iter().all(|&x| x == 0)).collect();
    assert_eq!(zeroed, [false, true, true, false, false, true, true, false]);
    let c = h.io(Sqe {
        opc: nvm::FLUSH,
        nsid: 0xffff_ffff,
        ..Sqe::default()
    });
    assert!(c.status.is_success());
    let c = h.io(Sqe {
        opc: nvm::WRITE_ZEROES,
        nsid: 1,
        cdw10: 4095,
        cdw12: 1,
        ..Sqe::default()
    });
    assert_status(&c, status(0, sc::LBA_OUT_OF_RANGE));
    h.assert_no_ub();
}

fn sgl_desc(addr: u64, len: u32, ty: u8) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&addr.to_le_bytes());
    b[8..12].copy_from_slice(&len.to_le_bytes());
    b[15] = ty << 4;
    b
}

fn sgl_sqe(opc: u8, nlb: u32, d: [u8; 16]) -> Sqe {
    Sqe {
        flags: PSDT_SGL,
        prp1: u64::from_le_bytes(d[..8].try_into().unwrap()),
        prp2: u64::from_le_bytes(d[8..].try_into().unwrap()),
        ..rw(opc, 1, 0, nlb, 0, 0)
    }
}

#[test]
fn sgl_data_blocks_segments_and_errors() {
    let mut h = io_host(|c| c.sgl = true);
    let data = pattern(3 * 512, 9);
    // Three unaligned pieces: 100 + 700 + 736 bytes, via a segment then a last segment.
    let (a, b, c) = (DATA + 3, DATA + 0x5001, DATA + 0x9007);
    h.mem.write(a, &data[..100]);
    h.mem.write(b, &data[100..800]);
    h.mem.write(c, &data[800..]);
    let seg2 = LIST + 0x800;
    h.mem.write(LIST, &sgl_desc(h.mem.iova(a), 100, 0));
    h.mem.write(LIST + 16, &sgl_desc(h.mem.iova(seg2), 32, 3));
    h.mem.write(seg2, &sgl_desc(h.mem.iova(b), 700, 0));
    h.mem.write(seg2 + 16, &sgl_desc(h.mem.iova(c), 736, 0));
    let cq = h.io(sgl_sqe(nvm::WRITE, 3, sgl_desc(h.mem.iova(LIST), 32, 2)));
    assert!(cq.status.is_success(), "{}", cq.status);
    let mut stored = vec![0u8; data.len()];
    h.f.read_blocks(1, 0, &mut stored).unwrap();
    assert_eq!(stored, data);
    // One data block in the SQE.
    let cq = h.io(sgl_sqe(
        nvm::READ,
        1,
        sgl_desc(h.mem.iova(DATA + 0x20001), 512, 0),
    ));
    assert!(cq.status.is_success());
    assert_eq!(h.mem.read(DATA + 0x20001, 512), data[..512]);
    let cases = [
        (
            "short",
            sgl_sqe(nvm::READ, 2, sgl_desc(h.mem.iova(DATA), 512, 0)),
            sc::SGL_LENGTH_INVALID,
        ),
        (
            "long",
            sgl_sqe(nvm::READ, 1, sgl_desc(h.mem.iova(DATA), 1024, 0)),
            sc::SGL_LENGTH_INVALID,
        ),
        (
            "bit bucket",
            sgl_sqe(nvm::READ, 1, sgl_desc(h.mem.iova(DATA), 512, 1)),
            sc::SGL_DESCRIPTOR_TYPE_INVALID,
        ),
        (
            "type 5",
            sgl_sqe(nvm::READ, 1, sgl_desc(h.mem.iova(DATA), 512, 5)),
            sc::SGL_DESCRIPTOR_TYPE_INVALID,
        ),
        (
            "segment length 20",
            sgl_sqe(nvm::READ, 1, sgl_desc(h.mem.iova(LIST), 20, 2)),
            0x0d,
        ),
        (
            "unmapped block",
            sgl_sqe(nvm::READ, 1, sgl_desc(0x8000_0000, 512, 0)),
            sc::DATA_TRANSFER_ERROR,
        ),
    ];
    for (what, sqe, code) in cases {
        let c = h.io(sqe);
        assert_eq!(
            c.status.with_phase(false),
            status(0, code),
            "{what}: got {}",
            c.status
        );
    }
    h.assert_no_ub();
}

#[test]
fn unmapped_queue_memory_is_a_fatal_error() {
    let mut h = io_host(|_| {});
    h.mem.mapper.unmap(h.mem.iova, h.mem.len).unwrap();
    h.bar().write32(regs::DOORBELL_BASE + 8, 1);
    assert!(Csts(h.bar().read32(regs::CSTS)).cfs());
    // Map it back so Drop's unmap has something to remove.
    // SAFETY: the memory is still allocated and owned by `h.mem`.
    unsafe { h.mem.mapper.map(h.mem.iova, h.mem.ptr, h.mem.len) }.unwrap();
    assert_eq!(h.f.err_events().len(), 1, "{:?}", h.f.err_events());
    h.assert_no_ub();
    h.sq1_tail = 0;
}

#[test]
fn a_full_cq_holds_completions_until_the_head_moves() {
    let mut h = Host::started(|_| {});
    h.create_pair(4, 16, false, 0); // 3 usable CQ slots
    for i in 0..6 {
        h.push_io(&Sqe {
            opc: nvm::FLUSH,
            nsid: 1,
            cid: i,
            ..Sqe::default()
        });
    }
    h.ring_io();
    let got: Vec<u16> = std::iter::from_fn(|| h.peek_io()).map(|c| c.cid).collect();
    assert_eq!(got, [0, 1, 2], "only three fit");
    assert_eq!(h.f.stats().cq_full_holds, 3);
    h.ring_cq1();
    let got: Vec<Cqe> = std::iter::from_fn(|| h.peek_io()).collect();
    assert_eq!(got.iter().map(|c| c.cid).collect::<Vec<_>>(), [3, 4, 5]);
    assert!(got.iter().all(|c| c.sqhd == 6));
    h.ring_cq1();
    assert_eq!(h.f.stats().completions, 2 + 6); // two admin + six I/O
    h.assert_no_ub();
}

// ------------------------------------------------------------------ interrupts

#[test]
fn msix_eventfd_fires_for_a_cq_with_ien() {
    let mut h = Host::started(|_| {});
    let fds = h.f.enable_msix(3).unwrap();
    h.create_pair(QSIZE, QSIZE, true, 2);
    let _ = fds[0].read(); // admin completions signalled vector 0
    let c = h.io(Sqe {
        opc: nvm::FLUSH,
        nsid: 1,
        ..Sqe::default()
    });
    assert!(c.status.is_success());
    assert_eq!(fds[2].read().unwrap(), 1);
    assert!(fds[1].read().is_err(), "vector 1 is not used");
    h.assert_no_ub();
}

// ------------------------------------------------------------------ faults

fn fault(target: Target, action: Action) -> Fault {
    Fault::Command { target, action }
}

#[test]
fn injected_status_fires_once_on_the_nth_io() {
    let mut h = io_host(|_| {});
    let st = Status::new(sct::MEDIA, 0x81);
    h.f.inject(fault(Target::NthIo(1), Action::Status(st)))
        .unwrap();
    let flush = Sqe {
        opc: nvm::FLUSH,
        nsid: 1,
        ..Sqe::default()
    };
    assert!(h.io(flush).status.is_success());
    assert_eq!(h.io(flush).status.with_phase(false), st);
    assert!(h.io(flush).status.is_success());
    assert_eq!(h.f.stats().faults_fired, 1);
}

#[test]
fn a_dropped_completion_is_found_by_abort() {
    let mut h = io_host(|_| {});
    h.f.inject(fault(
        Target::Opcode {
            admin: false,
            opcode: nvm::FLUSH,
            count: 1,
        },
        Action::Drop,
    ))
    .unwrap();
    h.push_io(&Sqe {
        opc: nvm::FLUSH,
        nsid: 1,
        cid: 42,
        ..Sqe::default()
    });
    h.ring_io();
    assert!(h.peek_io().is_none(), "dropped");
    assert_eq!(h.f.held_commands(), 1);
    let c = h.admin(Sqe {
        opc: admin::ABORT,
        cdw10: 1 | 42 << 16,
        ..Sqe::default()
    });
    assert_eq!(c.result & 1, 0, "aborted");
    let aborted = h.peek_io().expect("the aborted command completes");
    assert_eq!(aborted.cid, 42);
    assert_eq!(
        aborted.status.with_phase(false),
        Status::new(0, sc::ABORT_REQUESTED)
    );
    h.ring_cq1();
    let c = h.admin(Sqe {
        opc: admin::ABORT,
        cdw10: 1 | 42 << 16,
        ..Sqe::default()
    });
    assert_eq!(c.result & 1, 1, "nothing left to abort");
    assert_eq!(h.f.stats().faults_fired, 1);
    h.assert_no_ub();
}

#[test]
fn a_delayed_completion_is_posted_on_a_later_access() {
    let mut h = io_host(|_| {});
    h.f.inject(fault(
        Target::NthIo(0),
        Action::Delay(Duration::from_millis(5)),
    ))
    .unwrap();
    h.push_io(&Sqe {
        opc: nvm::FLUSH,
        nsid: 1,
        cid: 9,
        ..Sqe::default()
    });
    h.ring_io();
    let t = Instant::now();
    let c = loop {
        let _ = h.bar().read32(regs::CSTS); // any register access lets the controller post
        if let Some(c) = h.peek_io() {
            break c;
        }
        assert!(t.elapsed() < Duration::from_secs(20));
        std::thread::sleep(Duration::from_millis(1));
    };
    h.ring_cq1();
    assert_eq!(c.cid, 9);
    assert!(c.status.is_success());
    assert_eq!(h.f.held_commands(), 0);
    h.assert_no_ub();
}

#[test]
fn duplicate_and_stale_completions() {
    let mut h = io_host(|_| {});
    h.f.inject(fault(Target::NthIo(0), Action::DuplicateCqe))
        .unwrap();
    h.push_io(&Sqe {
        opc: nvm::FLUSH,
        nsid: 1,
        cid: 5,
        ..Sqe::default()
    });
    h.ring_io();
    let a = h.peek_io().unwrap();
    let b = h.peek_io().unwrap();
    assert!(h.peek_io().is_none());
    assert_eq!((a.cid, b.cid), (5, 5));
    h.ring_cq1();
    h.f.inject(fault(Target::NthIo(0), Action::StaleCqe))
        .unwrap();
    h.push_io(&Sqe {
        opc: nvm::FLUSH,
        nsid: 1,
        cid: 6,
        ..Sqe::default()
    });
    h.ring_io();
    let a = h.peek_io().unwrap();
    let b = h.peek_io().unwrap();
    assert_eq!(a.cid, 6);
    assert_ne!(
        b.cid, 6,
        "the stale entry names a CID that is not outstanding"
    );
    h.ring_cq1();
    assert_eq!(h.f.stats().faults_fired, 2);
    h.assert_no_ub();
}

#[test]
fn raw_cqes_land_at_the_tail_with_the_phase_and_respect_a_full_cq() {
    let mut h = Host::started(|_| {});
    let fds = h.f.enable_msix(2).unwrap();
    h.create_pair(4, 16, true, 1); // 3 usable CQ slots
    let _ = fds[1].read();
    assert!(!h.f.post_raw_cqe(0, [0; 4]), "not the admin CQ");
    assert!(!h.f.post_raw_cqe(2, [0; 4]), "no CQ 2");
    // Whatever the caller puts in bit 16 (the phase), the current phase goes out.
    let junk = [
        0xdead_beef,
        0x1234,
        0xffff_0007,
        0xabcd_0000 | 0x4242 | 1 << 16,
    ];
    assert!(h.f.post_raw_cqe(1, junk));
    assert_eq!(fds[1].read().unwrap(), 1, "its vector is signalled");
    let c = h.peek_io().expect("posted with the current phase");
    assert_eq!(c.to_dwords(), [junk[0], junk[1], junk[2], junk[3]]);
    assert_eq!((c.cid, c.sqid, c.sqhd), (0x4242, 0xffff, 7));
    // A real completion follows the junk in order.
    h.push_io(&Sqe {
        opc: nvm::FLUSH,
        nsid: 1,
        cid: 9,
        ..Sqe::default()
    });
    h.ring_io();
    assert_eq!(h.peek_io().unwrap().cid, 9);
    h.ring_cq1();
    for cid in 0..3 {
        assert!(h.f.post_raw_cqe(1, [0, 0, 0, cid]));
    }
    assert!(
        !h.f.post_raw_cqe(1, [0, 0, 0, 3]),
        "full: the host has not rung"
    );
    // The third one wrapped the tail, so its phase flipped.
    let got: Vec<(u16, bool)> = std::iter::from_fn(|| h.peek_io())
        .map(|c| (c.cid, c.status.phase()))
        .collect();
    assert_eq!(got, [(0, true), (1, true), (2, false)]);
    h.ring_cq1();
    assert!(h.f.post_raw_cqe(1, [0, 0, 0, 4]));
    let c = h.peek_io().unwrap();
    assert_eq!((c.cid, c.status.phase()), (4, false));
    assert_eq!(
        h.f.stats().completions,
        2 + 1 + 5,
        "two admin, one real, five raw"
    );
    h.assert_no_ub();
}

#[test]
fn controller_fatal_and_surprise_removal() {
    let mut h = io_host(|_| {});
    h.f.inject(Fault::ControllerFatal).unwrap();
    assert!(Csts(h.bar().read32(regs::CSTS)).cfs());
    h.push_io(&Sqe {
        opc: nvm::FLUSH,
        nsid: 1,
        ..Sqe::default()
    });
    h.ring_io();
    assert!(
        h.peek_io().is_none(),
        "a failed controller processes nothing"
    );

    let fds = h.f.enable_msix(2).unwrap();
    h.f.inject(Fault::SurpriseRemoval).unwrap();
    assert_eq!(h.bar().read32(regs::CSTS), u32::MAX);
    assert_eq!(h.bar().read64(regs::CAP), u64::MAX);
    assert_eq!(fds[0].read().unwrap(), 1);
    assert_eq!(fds[1].read().unwrap(), 1);
    h.bar().write32(regs::CC, 0);
    assert_eq!(h.bar().read32(regs::CC), u32::MAX);
}

#[test]
fn a_flipped_bit_shows_in_read_data() {
    let mut h = io_host(|_| {});
    h.f.write_blocks(1, 10, &[0u8; 512]).unwrap();
    h.f.inject(Fault::FlipBit {
        nsid: 1,
        lba: 10,
        bit: 9,
    })
    .unwrap();
    let c = h.io(rw(nvm::READ, 1, 10, 1, h.mem.iova(DATA), 0));
    assert!(c.status.is_success());
    let b = h.mem.read(DATA, 512);
    assert_eq!(b[1], 2);
    assert_eq!(b.iter().filter(|&&x| x != 0).count(), 1);
    assert!(
        h.f.inject(Fault::FlipBit {
            nsid: 2,
            lba: 0,
            bit: 0
        })
        .is_err(),
        "null"
    );
}

#[test]
fn async_event_requests_are_held_and_limited() {
    let mut h = Host::started(|_| {});
    let aer = Sqe {
        opc: admin::ASYNC_EVENT_REQUEST,
        ..Sqe::default()
    };
    for i in 0..4u16 {
        h.mem.write_sqe(
            ASQ + i as usize * 64,
            &Sqe {
                cid: 0x200 + i,
                ..aer
            },
        );
    }
    h.asq_tail = 4;
    h.bar().write32(regs::DOORBELL_BASE, 4);
    assert!(h.pop_admin().is_none());
    let c = h.admin(aer);
    assert_status(&c, status(1, 0x05));
    h.assert_no_ub();
}

// ------------------------------------------------------------------ thread mode, dbbuf

#[test]
fn thread_mode_processes_doorbells_in_the_background() {
    let mut h = Host::new(EmuConfig {
        mode: Mode::Thread,
        ..EmuConfig::default()
    });
    h.enable();
    h.create_pair(QSIZE, QSIZE, false, 0);
    let data = pattern(4096, 1);
    h.mem.write(DATA, &data);
    for i in 0..100u64 {
        let c = h.io_wait(rw(nvm::WRITE, 1, i * 8, 8, h.mem.iova(DATA), 0));
        assert!(c.status.is_success());
    }
    let c = h.io_wait(rw(nvm::READ, 1, 99 * 8, 8, h.mem.iova(DATA + 0x1000), 0));
    assert!(c.status.is_success());
    assert_eq!(h.mem.read(DATA + 0x1000, 4096), data);
    h.assert_no_ub();
}

#[test]
fn shadow_doorbells_are_honoured() {
    let mut h = Host::new(EmuConfig {
        mode: Mode::Thread,
        dbbuf: true,
        ..EmuConfig::default()
    });
    h.enable();
    h.create_pair(QSIZE, QSIZE, false, 0);
    let (shadow, ei) = (LIST, LIST + 0x1000);
    let c = h.admin(Sqe {
        opc: admin::DOORBELL_BUFFER_CONFIG,
        prp1: h.mem.iova(shadow),
        prp2: h.mem.iova(ei),
        ..Sqe::default()
    });
    assert!(c.status.is_success(), "{}", c.status);
    // Submit through the shadow buffer only: the thread picks it up.
    h.push_io(&Sqe {
        opc: nvm::FLUSH,
        nsid: 1,
        cid: 77,
        ..Sqe::default()
    });
    h.mem.write(shadow + 8, &h.sq1_tail.to_le_bytes());
    let t = Instant::now();
    let c = loop {
        if let Some(c) = h.peek_io() {
            break c;
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "shadow doorbell not seen"
        );
        std::thread::yield_now();
    };
    assert_eq!(c.cid, 77);
    assert_eq!(
        h.mem.read_u32(ei + 8),
        1,
        "EventIdx follows the processed tail"
    );
    h.mem.write(shadow + 12, &h.cq1_head.to_le_bytes());
    h.assert_no_ub();
}

/// Inline mode, shadow doorbells configured at `LIST` (shadow) and `LIST + 0x1000` (EventIdx).
fn inline_with_dbbuf() -> (Host, usize, usize) {
    let mut h = Host::new(EmuConfig {
        dbbuf: true,
        ..EmuConfig::default()
    });
    h.enable();
    h.create_pair(QSIZE, QSIZE, false, 0);
    let (shadow, ei) = (LIST, LIST + 0x1000);
    let c = h.admin(Sqe {
        opc: admin::DOORBELL_BUFFER_CONFIG,
        prp1: h.mem.iova(shadow),
        prp2: h.mem.iova(ei),
        ..Sqe::default()
    });
    assert!(c.status.is_success(), "{}", c.status);
    (h, shadow, ei)
}

#[test]
fn an_mmio_doorbell_without_its_shadow_entry_is_ub_and_the_shadow_value_wins() {
    // QEMU 7.2 re-reads an I/O queue's tail from the shadow buffer when it processes the
    // queue, so an MMIO write alone submits nothing there.
    let (mut h, _shadow, _ei) = inline_with_dbbuf();
    h.push_io(&Sqe {
        opc: nvm::FLUSH,
        nsid: 1,
        cid: 5,
        ..Sqe::default()
    });
    h.ring_io(); // the register only
    assert!(
        h.peek_io().is_none(),
        "acted on the MMIO value, not the shadow's"
    );
    let ub = h.f.ub_events();
    assert_eq!(ub.len(), 1, "{ub:?}");
    assert!(ub[0].contains("shadow doorbell holds 0"), "{ub:?}");
}

#[test]
fn shadow_then_mmio_is_what_the_host_must_do() {
    let (mut h, shadow, ei) = inline_with_dbbuf();
    h.push_io(&Sqe {
        opc: nvm::FLUSH,
        nsid: 1,
        cid: 6,
        ..Sqe::default()
    });
    h.mem.write(shadow + 8, &h.sq1_tail.to_le_bytes());
    h.ring_io();
    let c = h.peek_io().expect("completion");
    assert_eq!(c.cid, 6);
    assert_eq!(h.mem.read_u32(ei + 8), 1, "EventIdx = the tail consumed");
    h.mem.write(shadow + 12, &h.cq1_head.to_le_bytes());
    h.ring_cq1();
    h.assert_no_ub();
}

#[test]
fn doorbell_buffer_config_writes_the_current_tails_and_heads_into_the_shadow_buffer() {
    // As QEMU's nvme_dbbuf_config: queues that exist keep going from where they are.
    let mut h = Host::new(EmuConfig {
        dbbuf: true,
        ..EmuConfig::default()
    });
    h.enable();
    h.create_pair(QSIZE, QSIZE, false, 0);
    for cid in 0..3 {
        let c = h.io(Sqe {
            opc: nvm::FLUSH,
            nsid: 1,
            cid,
            ..Sqe::default()
        });
        assert!(c.status.is_success());
    }
    let (shadow, ei) = (LIST, LIST + 0x1000);
    h.mem.write(shadow, &[0xffu8; 16]);
    let c = h.admin(Sqe {
        opc: admin::DOORBELL_BUFFER_CONFIG,
        prp1: h.mem.iova(shadow),
        prp2: h.mem.iova(ei),
        ..Sqe::default()
    });
    assert!(c.status.is_success(), "{}", c.status);
    assert_eq!(h.mem.read_u32(shadow + 8), 3, "SQ 1 tail");
    assert_eq!(h.mem.read_u32(shadow + 12), 3, "CQ 1 head");
    h.assert_no_ub();
}

#[test]
fn doorbell_buffer_config_is_an_invalid_opcode_when_not_advertised() {
    let mut h = Host::started(|_| {});
    let c = h.admin(Sqe {
        opc: admin::DOORBELL_BUFFER_CONFIG,
        prp1: h.mem.iova(LIST),
        prp2: h.mem.iova(LIST + 0x1000),
        ..Sqe::default()
    });
    assert_status(&c, status(0, sc::INVALID_OPCODE));
}

#[test]
fn reset_returns_to_power_on() {
    let mut h = io_host(|_| {});
    h.f.reset().unwrap();
    assert_eq!(h.bar().read32(regs::CC), 0);
    assert_eq!(h.bar().read32(regs::CSTS), 0);
    h.acq_head = 0;
    h.acq_phase = true;
    h.asq_tail = 0;
    h.mem.write(ACQ, &[0u8; 4096]);
    h.enable();
    assert!(
        h.admin(identify(cns::CONTROLLER, 0, h.mem.iova(BUF)))
            .status
            .is_success()
    );
    h.assert_no_ub();
}

#[test]
fn config_validation_and_mapper_errors() {
    assert!(
        EmuFunction::new(EmuConfig {
            mqes: 1,
            ..EmuConfig::default()
        })
        .is_err()
    );
    let bad_ns = EmuConfig {
        namespaces: vec![NsConfig::ram(8, 1024)],
        ..EmuConfig::default()
    };
    assert!(EmuFunction::new(bad_ns).is_err());
    let f = EmuFunction::new(EmuConfig::default()).unwrap();
    let m = f.dma_mapper();
    assert_eq!(m.iova_ranges(), vec![0x1000..1 << 39]);
    assert!(m.unmap(0x1000, 0x1000).is_err());
    let mut page = vec![0u8; 4096];
    // SAFETY: `page` outlives the mapping (unmapped below).
    assert!(unsafe { m.map(1 << 39, page.as_mut_ptr(), 4096) }.is_err());
    // SAFETY: as above.
    unsafe { m.map(0x2000, page.as_mut_ptr(), 4096) }.unwrap();
    // SAFETY: as above (the call is refused anyway).
    let overlap = unsafe { m.map(0x2800, page.as_mut_ptr(), 4096) };
    assert!(overlap.is_err(), "overlap");
    m.unmap(0x2000, 4096).unwrap();
}

// ------------------------------------------------------------------ cross-checks

#[test]
fn identify_pages_parse_with_the_drivers_parser() {
    use nvme_dio_queue::identify::{ActiveNamespaceList, IdentifyController, IdentifyNamespace};
    use nvme_dio_queue::{Nsid, regs::Version};
    let mut h = Host::started(|c| {
        c.namespaces = vec![NsConfig {
            noiob: 64,
            ..NsConfig::ram(1000, 4096)
        }];
        c.sgl = true;
    });
    assert!(
        h.admin(identify(cns::CONTROLLER, 0, h.mem.iova(BUF)))
            .status
            .is_success()
    );
    let id = IdentifyController::from_bytes(&h.mem.read(BUF, 4096)).unwrap();
    assert_eq!(id.serial(), "deadbeef");
    assert_eq!(id.model(), "nvme-dio emulated controller");
    assert_eq!(id.mdts(), 7);
    assert_eq!(id.nn(), 1024);
    assert_eq!(id.ver(), Version(0x0001_0400));
    assert_eq!((id.sqes().required, id.cqes().required), (6, 4));
    assert!(id.vwc_present());
    assert!(id.sgls().supported && !id.sgls().dword_aligned_only);
    assert!(id.oncs().write_zeroes() && id.oncs().dataset_management());
    assert!(!id.oacs().doorbell_buffer_config());
    assert_eq!(id.aerl(), 4);

    assert!(
        h.admin(identify(cns::NAMESPACE, 1, h.mem.iova(BUF)))
            .status
            .is_success()
    );
    let ns = IdentifyNamespace::from_bytes(&h.mem.read(BUF, 4096)).unwrap();
    assert_eq!(ns.nsze(), 1000);
    assert_eq!(ns.noiob(), 64);
    assert_eq!(ns.current_lba_format().data_size, 4096);
    assert_eq!(ns.current_lba_format().metadata_size, 0);

    assert!(
        h.admin(identify(cns::ACTIVE_NAMESPACES, 0, h.mem.iova(BUF)))
            .status
            .is_success()
    );
    let list = ActiveNamespaceList::parse(&h.mem.read(BUF, 4096)).unwrap();
    assert_eq!(list, vec![Nsid(1)]);
    h.assert_no_ub();
}

#[test]
fn dma_memory_from_the_dma_crate_maps_through_the_emulator() {
    use nvme_dio_dma::{DmaMemory, MemoryOptions};
    let f = EmuFunction::new(EmuConfig::default()).unwrap();
    let opts = MemoryOptions::default()
        .region_bytes(2 << 20)
        .allow_fallback(true);
    let mem = match DmaMemory::new(f.dma_mapper(), opts) {
        Ok(m) => m,
        Err(e) => {
            println!("skipped: no DMA memory on this machine: {e}");
            return;
        }
    };
    let asq = mem.alloc(4096, 4096).unwrap();
    let acq = mem.alloc(4096, 4096).unwrap();
    let buf = mem.alloc(4096, 4096).unwrap();
    let bar = f.bar0();
    bar.write32(regs::AQA, 0x000f_000f);
    bar.write64(regs::ASQ, asq.iova());
    bar.write64(regs::ACQ, acq.iova());
    bar.write32(regs::CC, cc_good().0);
    assert!(Csts(bar.read32(regs::CSTS)).rdy());
    asq.write_qwords(0, &identify(cns::CONTROLLER, 0, buf.iova()).to_qwords());
    bar.write32(regs::DOORBELL_BASE, 1);
    let c = Cqe::from_dwords(acq.read_dwords(0));
    assert!(c.status.phase() && c.status.is_success(), "{}", c.status);
    let mut page = vec![0u8; 4096];
    buf.copy_to_slice(0, &mut page).unwrap();
    assert_eq!(&page[4..12], b"deadbeef");
    assert!(f.ub_events().is_empty());
}

#[test]
fn thread_mode_holds_delays_and_drains_a_full_cq() {
    let mut h = Host::new(EmuConfig {
        mode: Mode::Thread,
        ..EmuConfig::default()
    });
    h.enable();
    h.create_pair(4, 16, false, 0);
    h.f.inject(fault(
        Target::NthIo(0),
        Action::Delay(Duration::from_millis(2)),
    ))
    .unwrap();
    for i in 0..6 {
        h.push_io(&Sqe {
            opc: nvm::FLUSH,
            nsid: 1,
            cid: i,
            ..Sqe::default()
        });
    }
    h.ring_io();
    let mut got = Vec::new();
    let t = Instant::now();
    while got.len() < 6 {
        if let Some(c) = h.peek_io() {
            got.push(c.cid);
            h.ring_cq1();
        }
        assert!(t.elapsed() < Duration::from_secs(20), "got only {got:?}");
        std::thread::yield_now();
    }
    got.sort_unstable();
    assert_eq!(got, [0, 1, 2, 3, 4, 5]);
    h.assert_no_ub();
}

#[test]
fn deleting_an_sq_completes_its_held_commands_and_admin_faults_work() {
    let mut h = io_host(|_| {});
    h.f.inject(fault(Target::NthIo(0), Action::Drop)).unwrap();
    h.push_io(&Sqe {
        opc: nvm::FLUSH,
        nsid: 1,
        cid: 11,
        ..Sqe::default()
    });
    h.ring_io();
    assert!(h.peek_io().is_none());
    let c = h.admin(Sqe {
        opc: admin::DELETE_IO_SQ,
        cdw10: 1,
        ..Sqe::default()
    });
    assert!(c.status.is_success());
    let c = h
        .peek_io()
        .expect("the held command completes on SQ deletion");
    assert_eq!(c.cid, 11);
    assert_eq!(
        c.status.with_phase(false),
        Status::new(0, sc::ABORTED_SQ_DELETION)
    );
    h.ring_cq1();
    assert_eq!(h.f.held_commands(), 0);
    // An admin opcode fault: the next Create I/O SQ fails with the injected status.
    let injected = Status::new(sct::GENERIC, sc::INTERNAL_ERROR);
    h.f.inject(fault(
        Target::Opcode {
            admin: true,
            opcode: admin::CREATE_IO_SQ,
            count: 1,
        },
        Action::Status(injected),
    ))
    .unwrap();
    let c = h.admin(create_sq(1, h.mem.iova(SQ1), 16, 1));
    assert_eq!(c.status.with_phase(false), injected);
    let c = h.admin(create_sq(1, h.mem.iova(SQ1), 16, 1));
    assert!(c.status.is_success(), "fires once");
    assert_eq!(h.f.stats().faults_fired, 2);
    h.assert_no_ub();
}

mod faults;
