//! Spec details of bring-up (issue 12, defect 11), checked through a BAR that records what
//! the driver writes and can report NVMe 2.0 registers the emulator does not have: CC's
//! fields are written before EN, CRTO is honoured, a doorbell past the end of BAR0 is a
//! clear error instead of a fault.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use nvme_dio::error::Nonsense;
use nvme_dio::{Controller, ControllerOptions, Error, Lba, MemoryOptions, PciFunction};
use nvme_dio::{QueuePairOptions, spec::regs};
use nvme_dio_dma::{Bar0, DmaMapper};
use nvme_dio_emu::{EmuConfig, EmuFunction, Mode, NsConfig};
use vmm_sys_util::eventfd::EventFd;

/// BAR0 of an emulated controller, seen through a recorder.
struct SpyBar {
    emu: Arc<EmuFunction>,
    /// The length the BAR claims; an access past it panics, as a slice of a mapped BAR does.
    len: usize,
    /// Bits or-ed into CAP's high dword.
    cap_hi: u32,
    /// What CRTO (0x68) reads.
    crto: u32,
    /// Every value written to CC, in order.
    cc: Mutex<Vec<u32>>,
}

impl Bar0 for SpyBar {
    fn read32(&self, offset: usize) -> u32 {
        assert!(offset + 4 <= self.len, "read past BAR0 at {offset:#x}");
        match offset {
            0x04 => self.emu.bar0().read32(offset) | self.cap_hi,
            regs::CRTO => self.crto,
            _ => self.emu.bar0().read32(offset),
        }
    }
    fn write32(&self, offset: usize, value: u32) {
        assert!(offset + 4 <= self.len, "write past BAR0 at {offset:#x}");
        if offset == regs::CC {
            self.cc.lock().unwrap().push(value);
        }
        self.emu.bar0().write32(offset, value)
    }
    fn read64(&self, offset: usize) -> u64 {
        self.read32(offset) as u64 | (self.read32(offset + 4) as u64) << 32
    }
    fn write64(&self, offset: usize, value: u64) {
        self.write32(offset, value as u32);
        self.write32(offset + 4, (value >> 32) as u32);
    }
    fn len(&self) -> usize {
        self.len
    }
}

struct Spy {
    emu: Arc<EmuFunction>,
    bar: SpyBar,
}

impl Spy {
    fn new(len: Option<usize>, cap_hi: u32, crto: u32) -> Arc<Spy> {
        let emu = Arc::new(
            EmuFunction::new(EmuConfig {
                mode: Mode::Inline,
                namespaces: vec![NsConfig::ram(1024, 4096)],
                ..EmuConfig::default()
            })
            .unwrap(),
        );
        // As after power-on: disabled, CC = 0 (the emulator starts enabled, like a controller
        // a previous owner left running).
        emu.bar0().write32(regs::CC, 0);
        assert_eq!(emu.bar0().read32(regs::CSTS) & 1, 0);
        let bar = SpyBar {
            emu: Arc::clone(&emu),
            len: len.unwrap_or(emu.bar0().len()),
            cap_hi,
            crto,
            cc: Mutex::new(Vec::new()),
        };
        Arc::new(Spy { emu, bar })
    }
}

impl PciFunction for Spy {
    type Bar = SpyBar;
    fn bar0(&self) -> &SpyBar {
        &self.bar
    }
    fn dma_mapper(&self) -> Arc<dyn DmaMapper> {
        self.emu.dma_mapper()
    }
    fn msix_vectors(&self) -> u32 {
        self.emu.msix_vectors()
    }
    fn enable_msix(&self, count: u32) -> Result<Vec<Arc<EventFd>>, nvme_dio_dma::Error> {
        self.emu.enable_msix(count)
    }
    fn disable_msix(&self) -> Result<(), nvme_dio_dma::Error> {
        self.emu.disable_msix()
    }
    fn set_bus_master(&self, enable: bool) -> Result<(), nvme_dio_dma::Error> {
        self.emu.set_bus_master(enable)
    }
    fn reset(&self) -> Result<(), nvme_dio_dma::Error> {
        self.emu.reset()
    }
    fn describe(&self) -> String {
        "spy on emu".into()
    }
}

fn opts(io_queues: u16) -> ControllerOptions {
    ControllerOptions::default()
        .io_queues(io_queues)
        .memory(MemoryOptions::any_pages(8 << 20))
}

#[test]
fn cc_fields_are_written_before_en() {
    let dev = Spy::new(None, 0, 0);
    let ctrl = Controller::new(Arc::clone(&dev), opts(2)).unwrap();
    ctrl.reset().unwrap();
    let cc = dev.bar.cc.lock().unwrap().clone();
    let enables: Vec<usize> = (0..cc.len()).filter(|&i| cc[i] & 1 == 1).collect();
    assert_eq!(
        enables.len(),
        2,
        "bring-up and reset each enable once: {cc:x?}"
    );
    for i in enables {
        assert!(i > 0, "CC written with EN and its fields at once: {cc:x?}");
        assert_eq!(
            cc[i - 1],
            cc[i] & !1,
            "the write before EN carries the same fields with EN = 0: {cc:x?}"
        );
    }
}

#[test]
fn crto_ready_with_media_timeout_is_honoured() {
    // CAP.CRMS.CRWMS (bit 59) and CRTO.CRWMT = 60 (30 s), longer than the emulator's CAP.TO.
    let dev = Spy::new(None, 1 << (59 - 32), 60);
    let ctrl = Controller::new(Arc::clone(&dev), opts(2)).unwrap();
    assert_eq!(ctrl.info().ready_timeout, Duration::from_secs(30));
    // Without CRMS the register is not looked at.
    let dev = Spy::new(None, 0, 60);
    let ctrl = Controller::new(Arc::clone(&dev), opts(2)).unwrap();
    assert!(ctrl.info().ready_timeout < Duration::from_secs(30));
    assert_eq!(
        ctrl.info().shutdown_timeout,
        ctrl.info().cap.timeout().max(Duration::from_secs(1)),
        "no RTD3E: CAP.TO"
    );
}

#[test]
fn a_doorbell_past_the_bar_is_a_clear_error() {
    // Room for the admin queue's and I/O queues 1 and 2's doorbells (stride 4), no more.
    let len = regs::cq_head_doorbell(nvme_dio::spec::Qid(2), 0) + 4;
    let dev = Spy::new(Some(len), 0, 0);
    let ctrl = Controller::new(Arc::clone(&dev), opts(4)).unwrap();
    assert_eq!(ctrl.info().io_queues, 4);
    let ns = ctrl.namespace(1).unwrap().clone();
    let mut qps = Vec::new();
    let mut refused = Vec::new();
    for _ in 0..4 {
        match ctrl.create_io_qpair(QueuePairOptions::with_entries(8)) {
            Ok(qp) => qps.push(qp),
            Err(e) => refused.push(e),
        }
    }
    assert_eq!(qps.len(), 2, "queues 1 and 2 fit: {refused:?}");
    assert_eq!(refused.len(), 2);
    for e in &refused {
        assert!(
            matches!(e, Error::Nonsense(Nonsense::DoorbellPastBar { .. })),
            "{e}"
        );
        assert!(e.to_string().contains("past BAR0"), "{e}");
    }
    for (i, qp) in qps.iter_mut().enumerate() {
        let buf = ctrl.memory().alloc(4096, 4096).unwrap();
        qp.read(&ns, Lba(i as u64), buf, 0).unwrap();
        let mut n = 0;
        while n == 0 {
            n = qp.wait(Duration::from_secs(5)).unwrap();
        }
        assert!(qp.next_completion().unwrap().result.is_ok());
    }
}
