//! Emulator cost per command: inline mode, 4 KiB random reads at QD 32 on one core, through
//! raw register writes and hand-built SQEs (no driver). Prints ns/command; no assertion.
//!
//! `cargo bench -p nvme-dio-emu --bench inline_null`

use std::alloc::Layout;
use std::time::Instant;

use nvme_dio_dma::{Bar0, PciFunction};
use nvme_dio_emu::{EmuConfig, EmuFunction, NsConfig};
use nvme_dio_queue::opcode::{admin, nvm};
use nvme_dio_queue::regs::{self, Cc, Csts};
use nvme_dio_queue::{Cqe, PageSize, Sqe};

const IOVA: u64 = 0x10_0000;
const ASQ: usize = 0;
const ACQ: usize = 0x1000;
const SQ1: usize = 0x10000; // 256 * 64 = 16 KiB
const CQ1: usize = 0x20000; // 256 * 16 = 4 KiB
const DATA: usize = 0x40000; // 32 buffers of 4 KiB
const Q: u32 = 256;
const QD: usize = 32;

struct Host {
    base: *mut u8,
}

impl Host {
    fn w64(&self, off: usize, v: u64) {
        // SAFETY: `off + 8` is inside the 1 MiB allocation (offsets are constants above).
        unsafe { std::ptr::write_volatile(self.base.add(off).cast::<u64>(), v) }
    }
    fn r32(&self, off: usize) -> u32 {
        // SAFETY: as above, 4-aligned.
        unsafe { std::ptr::read_volatile(self.base.add(off).cast::<u32>()) }
    }
    fn sqe(&self, off: usize, s: &Sqe) {
        for (i, q) in s.to_qwords().iter().enumerate() {
            self.w64(off + i * 8, *q);
        }
    }
    fn cqe(&self, off: usize) -> Cqe {
        Cqe::from_dwords([
            self.r32(off),
            self.r32(off + 4),
            self.r32(off + 8),
            self.r32(off + 12),
        ])
    }
}

fn run(name: &str, ns: NsConfig) {
    let f = EmuFunction::new(EmuConfig {
        namespaces: vec![ns],
        ..EmuConfig::default()
    })
    .unwrap();
    let len = 1 << 20;
    let layout = Layout::from_size_align(len, 4096).unwrap();
    // SAFETY: non-zero size.
    let base = unsafe { std::alloc::alloc_zeroed(layout) };
    // SAFETY: `base..base+len` lives until the end of this function, after the emulator
    // (and its mapping) is gone... the mapping is removed by `unmap` below first.
    unsafe { f.dma_mapper().map(IOVA, base, len) }.unwrap();
    let h = Host { base };
    let bar = f.bar0();
    bar.write32(regs::AQA, 0x003f_003f);
    bar.write64(regs::ASQ, IOVA + ASQ as u64);
    bar.write64(regs::ACQ, IOVA + ACQ as u64);
    let cc = Cc::default()
        .with_en(true)
        .with_mps(PageSize::SIZE_4K)
        .with_iosqes(6)
        .with_iocqes(4);
    bar.write32(regs::CC, cc.0);
    assert!(Csts(bar.read32(regs::CSTS)).rdy());
    let cq = Sqe {
        opc: admin::CREATE_IO_CQ,
        prp1: IOVA + CQ1 as u64,
        cdw10: 1 | (Q - 1) << 16,
        cdw11: 1,
        ..Sqe::default()
    };
    let sq = Sqe {
        opc: admin::CREATE_IO_SQ,
        cid: 1,
        prp1: IOVA + SQ1 as u64,
        cdw10: 1 | (Q - 1) << 16,
        cdw11: 1 | 1 << 16,
        ..Sqe::default()
    };
    h.sqe(ASQ, &cq);
    h.sqe(ASQ + 64, &sq);
    bar.write32(regs::DOORBELL_BASE, 2);
    assert!(h.cqe(ACQ).status.is_success() && h.cqe(ACQ + 16).status.is_success());
    bar.write32(regs::DOORBELL_BASE + 4, 2);

    let blocks = 1u64 << 18; // 1 GiB of 4 KiB blocks
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let (mut tail, mut head, mut phase) = (0u32, 0u32, true);
    let iters = 200_000usize;
    let mut done = 0usize;
    let t = Instant::now();
    for _ in 0..iters {
        for i in 0..QD {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let s = Sqe {
                opc: nvm::READ,
                cid: i as u16,
                nsid: 1,
                prp1: IOVA + (DATA + i * 4096) as u64,
                cdw10: (rng % blocks) as u32,
                ..Sqe::default()
            };
            h.sqe(SQ1 + tail as usize * 64, &s);
            tail = (tail + 1) % Q;
        }
        bar.write32(regs::DOORBELL_BASE + 8, tail);
        loop {
            let c = h.cqe(CQ1 + head as usize * 16);
            if c.status.phase() != phase {
                break;
            }
            debug_assert!(c.status.is_success());
            done += 1;
            head = (head + 1) % Q;
            if head == 0 {
                phase = !phase;
            }
        }
        bar.write32(regs::DOORBELL_BASE + 12, head);
    }
    let el = t.elapsed();
    assert_eq!(done, iters * QD);
    assert!(f.ub_events().is_empty());
    let ns_per = el.as_nanos() as f64 / done as f64;
    println!(
        "{name}: {done} reads in {el:?}: {ns_per:.1} ns/command (emulator + this minimal host), {:.2} M IOPS",
        1e3 / ns_per
    );
    f.dma_mapper().unmap(IOVA, len).unwrap();
    drop(f);
    // SAFETY: allocated above with this layout; unmapped, and the emulator is gone.
    unsafe { std::alloc::dealloc(base, layout) };
}

fn main() {
    run(
        "inline, null namespace, 4 KiB random read, QD 32",
        NsConfig::null(1 << 18, 4096),
    );
    run(
        "inline, RAM namespace, 4 KiB random read, QD 32",
        NsConfig::ram(1 << 18, 4096),
    );
}
