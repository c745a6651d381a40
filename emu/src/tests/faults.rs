//! The faults of issue 12 (failure without harm) and the freed-write checker: each shown
//! to behave as documented, with counts, never with time.

use nvme_dio_dma::{DmaBuf, DmaMemory, DmaStopped, MemoryOptions};

use super::*;

fn disable(h: &Host) {
    h.bar().write32(regs::CC, cc_good().with_en(false).0);
}

fn csts(h: &Host) -> Csts {
    Csts(h.bar().read32(regs::CSTS))
}

fn flush(nsid: u32) -> Sqe {
    Sqe {
        opc: nvm::FLUSH,
        nsid,
        cid: 3,
        ..Sqe::default()
    }
}

fn fua(mut sqe: Sqe) -> Sqe {
    sqe.cdw12 |= 1 << 30;
    sqe
}

#[test]
fn a_hung_disable_keeps_rdy_and_the_queues_until_a_function_reset() {
    let mut h = io_host(|_| {});
    h.f.inject(Fault::DisableHangs).unwrap();
    disable(&h);
    for _ in 0..5 {
        let c = csts(&h);
        assert!(c.rdy() && !c.cfs(), "RDY stays 1 after CC.EN = 0");
    }
    assert_eq!(
        h.bar().read32(regs::CC) & 1,
        0,
        "CC reads back what was written"
    );
    // The controller still runs what it has: DMA is not stopped.
    assert!(h.io(flush(1)).status.is_success());
    // Another disable/enable changes nothing.
    h.bar().write32(regs::CC, cc_good().0);
    disable(&h);
    assert!(csts(&h).rdy());
    assert_eq!(h.f.stats().faults_fired, 1);
    // A function-level reset ends it.
    h.f.reset().unwrap();
    assert!(!csts(&h).rdy());
    h.acq_head = 0;
    h.acq_phase = true;
    h.asq_tail = 0;
    h.mem.write(ACQ, &[0u8; 4096]);
    h.enable();
    h.assert_no_ub();
}

#[test]
fn late_writes_hit_the_data_page_of_a_held_read_while_the_disable_hangs() {
    let mut h = io_host(|_| {});
    h.f.inject(fault(Target::NthIo(0), Action::Drop)).unwrap();
    h.mem.write(DATA, &[0x11; 8192]);
    // 12 blocks of 512 starting 0x800 into a page: the first data page is 0x800 bytes.
    h.push_io(&rw(
        nvm::READ,
        1,
        0,
        12,
        h.mem.iova(DATA + 0x800),
        h.mem.iova(DATA + 0x1000),
    ));
    h.ring_io();
    assert!(h.peek_io().is_none(), "held");
    assert_eq!(
        h.mem.read(DATA + 0x800, 4),
        [0; 4],
        "the read ran (RAM is zero)"
    );
    h.f.inject(Fault::DisableHangs).unwrap();
    h.f.inject(Fault::LateWrites { accesses: 2 }).unwrap();
    disable(&h);
    assert_eq!(
        h.f.stats().late_writes,
        0,
        "nothing during the CC write itself"
    );
    let _ = csts(&h);
    assert_eq!(h.f.stats().late_writes, 1);
    assert_eq!(h.mem.read(DATA + 0x800, 0x800), vec![0xde; 0x800]);
    assert_eq!(
        h.mem.read(DATA + 0x7fc, 4),
        [0x11; 4],
        "before the buffer: untouched"
    );
    assert_eq!(
        h.mem.read(DATA + 0x1000, 4),
        [0; 4],
        "only the first data page"
    );
    h.mem.write(DATA + 0x800, &[0; 0x800]);
    let _ = csts(&h);
    assert_eq!(h.f.stats().late_writes, 2);
    assert_eq!(h.mem.read(DATA + 0x800, 4), [0xde; 4], "written again");
    h.mem.write(DATA + 0x800, &[0; 0x800]);
    let _ = csts(&h);
    assert_eq!(h.f.stats().late_writes, 2, "two accesses, then it stops");
    assert_eq!(h.mem.read(DATA + 0x800, 4), [0; 4]);
}

#[test]
fn late_writes_stop_when_the_disable_completes_or_the_function_resets() {
    // A disable that completes (RDY = 0 at once with no ready delay) stops DMA.
    let mut h = io_host(|_| {});
    h.f.inject(fault(Target::NthIo(0), Action::Drop)).unwrap();
    h.push_io(&rw(nvm::READ, 1, 0, 8, h.mem.iova(DATA), 0));
    h.ring_io();
    h.f.inject(Fault::LateWrites { accesses: 5 }).unwrap();
    h.mem.write(DATA, &[0x11; 4096]);
    disable(&h);
    assert!(!csts(&h).rdy());
    let _ = csts(&h);
    assert_eq!(h.f.stats().late_writes, 0);
    assert_eq!(h.mem.read(DATA, 4), [0x11; 4]);
    // A hung disable: a function reset stops it.
    let mut h = io_host(|_| {});
    h.f.inject(fault(Target::NthIo(0), Action::Drop)).unwrap();
    h.push_io(&rw(nvm::READ, 1, 0, 8, h.mem.iova(DATA), 0));
    h.ring_io();
    h.f.inject(Fault::DisableHangs).unwrap();
    h.f.inject(Fault::LateWrites { accesses: 5 }).unwrap();
    disable(&h);
    let _ = csts(&h);
    assert_eq!(h.f.stats().late_writes, 1);
    h.f.reset().unwrap();
    h.mem.write(DATA, &[0x11; 4096]);
    for _ in 0..5 {
        let _ = csts(&h);
    }
    assert_eq!(h.f.stats().late_writes, 1);
    assert_eq!(h.mem.read(DATA, 4), [0x11; 4]);
}

#[test]
fn a_create_io_cq_that_completes_after_a_count_of_accesses() {
    let mut h = Host::started(|_| {});
    h.f.inject(fault(
        Target::Opcode {
            admin: true,
            opcode: admin::CREATE_IO_CQ,
            count: 1,
        },
        Action::DelayAccesses(3),
    ))
    .unwrap();
    let mut sqe = create_cq(1, h.mem.iova(CQ1), QSIZE, false, 0);
    sqe.cid = 0x55;
    h.mem.write_sqe(ASQ + h.asq_tail as usize * 64, &sqe);
    h.asq_tail += 1;
    h.bar().write32(regs::DOORBELL_BASE, h.asq_tail);
    assert!(h.pop_admin().is_none(), "not completed");
    assert_eq!(h.f.held_commands(), 1);
    let _ = csts(&h);
    let _ = csts(&h);
    assert!(h.pop_admin().is_none(), "two accesses: still late");
    let _ = csts(&h);
    let c = h.pop_admin().expect("posted on the third access");
    assert_eq!(c.cid, 0x55);
    assert!(c.status.is_success(), "{}", c.status);
    assert_eq!(h.f.held_commands(), 0);
    // The queue existed all along: a second create of the same ID is refused, an SQ on it
    // works.
    let again = h.admin(create_cq(1, h.mem.iova(CQ1), QSIZE, false, 0));
    assert_status(&again, status(sct::COMMAND_SPECIFIC, csc::INVALID_QID));
    assert!(
        h.admin(create_sq(1, h.mem.iova(SQ1), QSIZE, 1))
            .status
            .is_success()
    );
    h.assert_no_ub();
}

#[test]
fn an_access_delayed_command_is_found_by_abort_and_gone_after_reset() {
    let mut h = io_host(|_| {});
    h.f.inject(fault(Target::NthIo(0), Action::DelayAccesses(100)))
        .unwrap();
    h.push_io(&flush(1));
    h.ring_io();
    let c = h.admin(Sqe {
        opc: admin::ABORT,
        cdw10: 1 | 3 << 16,
        ..Sqe::default()
    });
    assert_eq!(c.result & 1, 0, "aborted");
    let c = h.peek_io().unwrap();
    assert_eq!(
        c.status.with_phase(false),
        Status::new(0, sc::ABORT_REQUESTED)
    );
    h.ring_cq1();
    for _ in 0..200 {
        let _ = csts(&h);
    }
    assert!(h.peek_io().is_none(), "posted once, by the abort");
}

#[test]
fn transient_all_ones_reads_then_normal_values() {
    let h = io_host(|_| {});
    h.f.inject(Fault::AllOnesReads { reads: 3 }).unwrap();
    assert_eq!(h.bar().read32(regs::CSTS), u32::MAX);
    assert_eq!(h.bar().read64(regs::CAP), u64::MAX);
    // Writes still work while reads are bad.
    h.bar().write32(regs::INTMS, 1);
    assert_eq!(h.bar().read32(regs::VS), u32::MAX);
    assert_eq!(h.bar().read32(regs::VS), 0x0001_0400);
    assert!(csts(&h).rdy());
    assert_eq!(h.bar().read64(regs::CAP), EmuConfig::default().cap());
    assert_eq!(h.bar().read32(regs::INTMS), 1);
    let s = h.f.stats();
    assert_eq!((s.all_ones_reads, s.faults_fired), (3, 1));
    h.assert_no_ub();
}

#[test]
fn a_controller_that_needs_two_resets() {
    let mut h = Host::new(EmuConfig::default());
    h.f.inject(Fault::EnableFails { times: 1 }).unwrap();
    let bar = h.bar();
    bar.write32(regs::AQA, (QSIZE - 1) | (QSIZE - 1) << 16);
    bar.write64(regs::ASQ, h.mem.iova(ASQ));
    bar.write64(regs::ACQ, h.mem.iova(ACQ));
    bar.write32(regs::CC, cc_good().0);
    let c = csts(&h);
    assert!(c.cfs() && !c.rdy(), "the first enable fails: {c:?}");
    assert!(
        h.f.err_events().iter().any(|e| e.contains("EnableFails")),
        "{:?}",
        h.f.err_events()
    );
    disable(&h);
    assert!(!csts(&h).rdy());
    h.enable(); // the second works (asserts RDY = 1, CFS = 0)
    assert!(
        h.admin(identify(cns::CONTROLLER, 0, h.mem.iova(BUF)))
            .status
            .is_success()
    );
    assert_eq!(h.f.stats().faults_fired, 1);
    h.assert_no_ub();
}

#[test]
fn a_power_cut_loses_exactly_the_writes_the_cache_still_held() {
    let mut h = io_host(|_| {});
    let id = h.admin(identify(cns::CONTROLLER, 0, h.mem.iova(BUF)));
    assert!(id.status.is_success());
    assert_eq!(h.mem.read(BUF + 525, 1)[0] & 1, 1, "VWC present");
    let d = h.mem.iova(DATA);
    let put = |h: &mut Host, seed: u8, sqe: Sqe| {
        h.mem.write(DATA, &pattern(4096, seed));
        assert!(h.io(sqe).status.is_success());
    };
    put(&mut h, 3, rw(nvm::WRITE, 1, 16, 8, d, 0)); // cached, then flushed
    assert!(h.io(flush(1)).status.is_success());
    put(&mut h, 1, rw(nvm::WRITE, 1, 0, 8, d, 0)); // cached
    put(&mut h, 2, fua(rw(nvm::WRITE, 1, 8, 8, d, 0))); // FUA: durable
    put(&mut h, 4, rw(nvm::WRITE, 1, 24, 8, d, 0)); // cached
    put(&mut h, 5, rw(nvm::WRITE, 1, 40, 8, d, 0)); // cached, then overwritten with FUA
    put(&mut h, 6, fua(rw(nvm::WRITE, 1, 40, 8, d, 0)));
    // Reads see the cache.
    let mut got = vec![0u8; 4096];
    h.f.read_blocks(1, 24, &mut got).unwrap();
    assert_eq!(got, pattern(4096, 4));
    assert_eq!(
        h.f.power_cut(),
        8 + 8,
        "blocks 0..8 and 24..32 were still cached"
    );
    let block = |h: &Host, lba| {
        let mut b = vec![0u8; 4096];
        h.f.read_blocks(1, lba, &mut b).unwrap();
        b
    };
    assert_eq!(block(&h, 0), vec![0; 4096], "cached write lost");
    assert_eq!(block(&h, 8), pattern(4096, 2), "FUA write kept");
    assert_eq!(block(&h, 16), pattern(4096, 3), "flushed write kept");
    assert_eq!(block(&h, 24), vec![0; 4096], "cached write lost");
    assert_eq!(
        block(&h, 40),
        pattern(4096, 6),
        "FUA over a cached write kept"
    );
    assert_eq!(h.f.stats().lost_blocks, 16);
    // Power-on state.
    assert_eq!(
        (h.bar().read32(regs::CC), h.bar().read32(regs::CSTS)),
        (0, 0)
    );
}

#[test]
fn flush_all_and_a_disabled_cache_make_writes_durable() {
    let mut h = io_host(|_| {});
    let d = h.mem.iova(DATA);
    h.mem.write(DATA, &pattern(4096, 7));
    assert!(h.io(rw(nvm::WRITE, 1, 0, 8, d, 0)).status.is_success());
    assert!(h.io(flush(0xffff_ffff)).status.is_success());
    // Cache off (Set Features VWC = 0): writes go straight to the medium.
    let c = h.admin(Sqe {
        opc: admin::SET_FEATURES,
        cdw10: feature::VOLATILE_WRITE_CACHE as u32,
        cdw11: 0,
        ..Sqe::default()
    });
    assert!(c.status.is_success());
    assert!(h.io(rw(nvm::WRITE, 1, 8, 8, d, 0)).status.is_success());
    // Write Zeroes goes through the cache like a write.
    let c = h.admin(Sqe {
        opc: admin::SET_FEATURES,
        cdw10: feature::VOLATILE_WRITE_CACHE as u32,
        cdw11: 1,
        ..Sqe::default()
    });
    assert!(c.status.is_success());
    let wz = Sqe {
        opc: nvm::WRITE_ZEROES,
        nsid: 1,
        cid: 4,
        cdw10: 0,
        cdw12: 3,
        ..Sqe::default()
    };
    assert!(h.io(wz).status.is_success());
    assert_eq!(h.f.power_cut(), 4, "only the zeroed blocks were cached");
    let mut b = vec![0u8; 8192];
    h.f.read_blocks(1, 0, &mut b).unwrap();
    assert_eq!(
        b[..4096],
        pattern(4096, 7),
        "the zeroes were lost, the flushed data not"
    );
    assert_eq!(b[4096..], pattern(4096, 7));
    // Without a write cache nothing is lost, and Identify says there is none.
    let mut h = io_host(|c| c.vwc = false);
    assert!(h.io(rw(nvm::WRITE, 1, 0, 8, d, 0)).status.is_success());
    let id = h.admin(identify(cns::CONTROLLER, 0, h.mem.iova(BUF)));
    assert!(id.status.is_success());
    assert_eq!(h.mem.read(BUF + 525, 1)[0] & 1, 0, "no VWC");
    assert_eq!(h.f.power_cut(), 0);
}

// ------------------------------------------------------------------ the freed-write checker

/// A host whose queues and buffers come from nvme-dio-dma's `DmaMemory` over the
/// emulator's mapper, so the memory reports what it gives back.
struct DmaHost {
    f: EmuFunction,
    mem: DmaMemory,
    asq: DmaBuf,
    acq: DmaBuf,
    sq: Option<DmaBuf>,
    cq: Option<DmaBuf>,
    atail: u32,
    ahead: u32,
    stail: u32,
}

impl DmaHost {
    fn new() -> DmaHost {
        let f = EmuFunction::new(EmuConfig::default()).unwrap();
        let mem = DmaMemory::new(f.dma_mapper(), MemoryOptions::any_pages(2 << 20))
            .expect("DMA memory (ordinary pages allowed)");
        let asq = mem.alloc(4096, 4096).unwrap();
        let acq = mem.alloc(4096, 4096).unwrap();
        let bar = f.bar0();
        bar.write32(regs::AQA, 0x003f_003f);
        bar.write64(regs::ASQ, asq.iova());
        bar.write64(regs::ACQ, acq.iova());
        bar.write32(regs::CC, cc_good().0);
        assert!(Csts(bar.read32(regs::CSTS)).rdy());
        let mut h = DmaHost {
            f,
            mem,
            asq,
            acq,
            sq: None,
            cq: None,
            atail: 0,
            ahead: 0,
            stail: 0,
        };
        let sq = h.mem.alloc(4096, 4096).unwrap();
        let cq = h.mem.alloc(4096, 4096).unwrap();
        assert!(h.admin(create_cq(1, cq.iova(), 64, false, 0)).is_success());
        assert!(h.admin(create_sq(1, sq.iova(), 64, 1)).is_success());
        h.sq = Some(sq);
        h.cq = Some(cq);
        h
    }

    fn admin(&mut self, mut sqe: Sqe) -> Status {
        sqe.cid = self.atail as u16;
        self.asq
            .write_qwords(self.atail as usize * 64, &sqe.to_qwords());
        self.atail += 1;
        self.f.bar0().write32(regs::DOORBELL_BASE, self.atail);
        let c = Cqe::from_dwords(self.acq.read_dwords(self.ahead as usize * 16));
        assert!(c.status.phase(), "inline admin commands complete at once");
        self.ahead += 1;
        self.f.bar0().write32(regs::DOORBELL_BASE + 4, self.ahead);
        c.status.with_phase(false)
    }

    fn submit(&mut self, sqe: Sqe) {
        let sq = self.sq.as_ref().unwrap();
        sq.write_qwords(self.stail as usize * 64, &sqe.to_qwords());
        self.stail += 1;
        self.f.bar0().write32(regs::DOORBELL_BASE + 8, self.stail);
    }
}

#[test]
fn the_checker_flags_a_device_write_into_memory_the_driver_gave_back() {
    let mut h = DmaHost::new();
    let page = h.mem.alloc(4096, 4096).unwrap();
    let iova = page.iova();
    assert!(h.admin(identify(cns::CONTROLLER, 0, iova)).is_success());
    assert_eq!(h.f.stats().freed_writes, 0, "into a live buffer: fine");
    drop(page);
    assert!(h.admin(identify(cns::CONTROLLER, 0, iova)).is_success());
    assert_eq!(h.f.stats().freed_writes, 1);
    let ev = h.f.freed_write_events();
    assert!(ev[0].contains(&format!("{iova:#x}")), "{ev:?}");
    // A freed pool block counts too, and a block handed out again does not.
    let pool = h.mem.pool(4096, 2, 4096).unwrap();
    let b = pool.alloc().unwrap();
    let bi = b.iova();
    drop(b);
    assert!(h.admin(identify(cns::CONTROLLER, 0, bi)).is_success());
    assert_eq!(h.f.stats().freed_writes, 2);
    let again: Vec<_> = std::iter::from_fn(|| pool.alloc()).collect();
    assert!(again.iter().any(|b| b.iova() == bi));
    assert!(h.admin(identify(cns::CONTROLLER, 0, bi)).is_success());
    assert_eq!(h.f.stats().freed_writes, 2);
    assert!(h.f.ub_events().is_empty());
}

#[test]
fn late_writes_into_a_dropped_buffer_fail_the_checker() {
    let mut h = DmaHost::new();
    h.f.inject(fault(Target::NthIo(0), Action::Drop)).unwrap();
    let data = h.mem.alloc(4096, 4096).unwrap();
    h.submit(rw(nvm::READ, 1, 0, 8, data.iova(), 0));
    assert_eq!(h.f.held_commands(), 1);
    assert_eq!(
        h.f.stats().freed_writes,
        0,
        "the read itself hit a live buffer"
    );
    // The driver gives up on the command, the disable fails, and it frees the buffer
    // anyway: exactly what the quarantine rule forbids.
    h.f.inject(Fault::DisableHangs).unwrap();
    h.f.inject(Fault::LateWrites { accesses: 1 }).unwrap();
    h.f.bar0().write32(regs::CC, cc_good().with_en(false).0);
    drop(data);
    assert!(
        Csts(h.f.bar0().read32(regs::CSTS)).rdy(),
        "the disable hangs"
    );
    let s = h.f.stats();
    assert_eq!(
        (s.late_writes, s.freed_writes),
        (1, 1),
        "{:?}",
        h.f.freed_write_events()
    );
}

#[test]
fn late_writes_into_a_quarantined_buffer_are_harmless() {
    let mut h = DmaHost::new();
    h.f.inject(fault(Target::NthIo(0), Action::Drop)).unwrap();
    let data = h.mem.alloc(4096, 4096).unwrap();
    let iova = data.iova();
    h.submit(rw(nvm::READ, 1, 0, 8, iova, 0));
    h.f.inject(Fault::DisableHangs).unwrap();
    h.f.inject(Fault::LateWrites { accesses: 3 }).unwrap();
    h.f.bar0().write32(regs::CC, cc_good().with_en(false).0);
    h.mem.quarantine(data).unwrap();
    assert!(Csts(h.f.bar0().read32(regs::CSTS)).rdy());
    assert_eq!(h.f.stats().late_writes, 1);
    // No proof yet (RDY is still 1): hold on. Then a function reset stops DMA.
    h.f.reset().unwrap();
    assert_eq!(h.mem.held_buffers(), 1);
    let r = h.mem.release_quarantine(DmaStopped::FunctionReset);
    assert_eq!(r.held_buffers, 1);
    for _ in 0..3 {
        let _ = h.f.bar0().read32(regs::CSTS);
    }
    let s = h.f.stats();
    assert_eq!(
        (s.late_writes, s.freed_writes),
        (1, 0),
        "{:?}",
        h.f.freed_write_events()
    );
    // And the bytes are reusable now.
    assert_eq!(h.mem.alloc(4096, 4096).unwrap().iova(), iova);
}

#[test]
fn clearing_bus_master_stops_every_dma_and_proves_the_quarantine_free() {
    let mut h = DmaHost::new();
    h.f.inject(fault(Target::NthIo(0), Action::Drop)).unwrap();
    let data = h.mem.alloc(4096, 4096).unwrap();
    h.submit(rw(nvm::READ, 1, 0, 8, data.iova(), 0));
    h.f.inject(Fault::DisableHangs).unwrap();
    h.f.inject(Fault::LateWrites { accesses: 10 }).unwrap();
    h.f.bar0().write32(regs::CC, cc_good().with_en(false).0);
    h.mem.quarantine(data).unwrap();
    let _ = h.f.bar0().read32(regs::CSTS);
    assert_eq!(h.f.stats().late_writes, 1, "the device is still writing");
    // The disable hangs; clearing bus mastering stops DMA regardless.
    h.f.set_bus_master(false).unwrap();
    h.mem.release_quarantine(DmaStopped::BusMasterCleared);
    let again = h.mem.alloc(4096, 4096).unwrap(); // someone else's buffer now
    again.fill(0x11);
    for _ in 0..5 {
        let _ = h.f.bar0().read32(regs::CSTS);
    }
    let reads = h.f.stats().reads;
    h.submit(rw(nvm::READ, 1, 0, 8, again.iova(), 0)); // doorbell ignored: no DMA
    let s = h.f.stats();
    assert_eq!((s.late_writes, s.freed_writes, s.reads), (1, 0, reads));
    let mut b = [0u8; 8];
    again.copy_to_slice(0, &mut b).unwrap();
    assert_eq!(b, [0x11; 8], "nothing reached the new owner's buffer");
    // A function reset turns bus mastering back on (as VfioFunction::reset does).
    h.f.reset().unwrap();
    assert!(!Csts(h.f.bar0().read32(regs::CSTS)).rdy());
    assert!(h.f.ub_events().is_empty(), "{:?}", h.f.ub_events());
}

#[test]
fn a_late_write_into_a_freed_and_reallocated_buffer_is_still_flagged() {
    let mut h = DmaHost::new();
    h.f.inject(fault(Target::NthIo(0), Action::Drop)).unwrap();
    let data = h.mem.alloc(4096, 4096).unwrap();
    let iova = data.iova();
    h.submit(rw(nvm::READ, 1, 0, 8, iova, 0));
    h.f.inject(Fault::DisableHangs).unwrap();
    h.f.inject(Fault::LateWrites { accesses: 1 }).unwrap();
    h.f.bar0().write32(regs::CC, cc_good().with_en(false).0);
    drop(data);
    let other = h.mem.alloc(4096, 4096).unwrap();
    assert_eq!(other.iova(), iova, "handed to a new owner");
    let _ = h.f.bar0().read32(regs::CSTS);
    let s = h.f.stats();
    assert_eq!(
        (s.late_writes, s.freed_writes),
        (1, 1),
        "{:?}",
        h.f.freed_write_events()
    );
    let mut b = [0u8; 4];
    other.copy_to_slice(0, &mut b).unwrap();
    assert_eq!(
        b, [0xde; 4],
        "the new owner's bytes were overwritten: the harm itself"
    );
}

#[test]
fn late_writes_end_for_a_command_that_completes() {
    // A hung controller that still posts a delayed completion is done with that buffer:
    // the host may free it then, and no late write follows.
    let mut h = DmaHost::new();
    h.f.inject(fault(Target::NthIo(0), Action::DelayAccesses(2)))
        .unwrap();
    let data = h.mem.alloc(4096, 4096).unwrap();
    h.submit(rw(nvm::READ, 1, 0, 8, data.iova(), 0));
    h.f.inject(Fault::DisableHangs).unwrap();
    h.f.inject(Fault::LateWrites { accesses: 10 }).unwrap();
    // The CC write is the first counted access (the countdown is at 1 after it) ...
    h.f.bar0().write32(regs::CC, cc_good().with_en(false).0);
    assert_eq!(h.f.stats().late_writes, 0);
    // ... and this read the second: one late write, then the completion is posted.
    let _ = h.f.bar0().read32(regs::CSTS);
    assert_eq!(h.f.stats().late_writes, 1);
    let cqe = Cqe::from_dwords(h.cq.as_ref().unwrap().read_dwords(0));
    assert!(
        cqe.status.phase() && cqe.status.is_success(),
        "{}",
        cqe.status
    );
    drop(data); // completed: giving it back is right
    for _ in 0..5 {
        let _ = h.f.bar0().read32(regs::CSTS);
    }
    let s = h.f.stats();
    assert_eq!(
        (s.late_writes, s.freed_writes),
        (1, 0),
        "{:?}",
        h.f.freed_write_events()
    );
}
