//! Hostile or broken controllers: nonsense capabilities and Identify data are detected and
//! reported at bring-up, never turned into out-of-range memory access.

use std::ops::Range;
use std::sync::Arc;

use nvme_dio::{Controller, ControllerOptions, Error, Lba, MemoryOptions, QueuePairOptions, Stage};
use nvme_dio_dma::{Bar0, DmaMapper, PciFunction};
use nvme_dio_emu::{EmuConfig, EmuFunction, NsConfig};
use nvme_dio_tests::io::{Seg, write_read_verify};
use vmm_sys_util::eventfd::EventFd;

fn opts() -> ControllerOptions {
    ControllerOptions::default().memory(MemoryOptions::any_pages(8 << 20))
}

/// The emulated controller with CAP rewritten on the way out.
struct BadCap {
    inner: Arc<EmuFunction>,
    bar: BadCapBar,
}

struct BadCapBar {
    inner: Arc<EmuFunction>,
    cap: u64,
}

impl Bar0 for BadCapBar {
    fn read32(&self, offset: usize) -> u32 {
        // The driver reads CAP as two dwords, low first.
        match offset {
            0 => self.cap as u32,
            4 => (self.cap >> 32) as u32,
            _ => self.inner.bar0().read32(offset),
        }
    }
    fn write32(&self, offset: usize, value: u32) {
        self.inner.bar0().write32(offset, value)
    }
    fn read64(&self, offset: usize) -> u64 {
        if offset == 0 {
            self.cap
        } else {
            self.inner.bar0().read64(offset)
        }
    }
    fn write64(&self, offset: usize, value: u64) {
        self.inner.bar0().write64(offset, value)
    }
    fn len(&self) -> usize {
        self.inner.bar0().len()
    }
}

impl PciFunction for BadCap {
    type Bar = BadCapBar;
    fn bar0(&self) -> &BadCapBar {
        &self.bar
    }
    fn dma_mapper(&self) -> Arc<dyn DmaMapper> {
        self.inner.dma_mapper()
    }
    fn msix_vectors(&self) -> u32 {
        self.inner.msix_vectors()
    }
    fn enable_msix(&self, count: u32) -> Result<Vec<Arc<EventFd>>, nvme_dio_dma::Error> {
        self.inner.enable_msix(count)
    }
    fn disable_msix(&self) -> Result<(), nvme_dio_dma::Error> {
        self.inner.disable_msix()
    }
    fn reset(&self) -> Result<(), nvme_dio_dma::Error> {
        self.inner.reset()
    }
    fn describe(&self) -> String {
        "emu with a rewritten CAP".into()
    }
}

fn with_cap(edit: impl Fn(u64) -> u64) -> Result<Controller<BadCap>, Error> {
    let inner = Arc::new(EmuFunction::new(EmuConfig::default()).unwrap());
    let cap = edit(inner.bar0().read64(0));
    let dev = BadCap {
        inner: Arc::clone(&inner),
        bar: BadCapBar { inner, cap },
    };
    Controller::new(Arc::new(dev), opts())
}

fn stage_of(e: &Error) -> Option<Stage> {
    match e {
        Error::BringUp { stage, .. } => Some(*stage),
        _ => None,
    }
}

#[test]
fn fault_hostile_cap_values_are_refused_at_bring_up() {
    type CapEdit = Box<dyn Fn(u64) -> u64>;
    let cases: Vec<(&str, CapEdit, &str)> = vec![
        ("MQES 0", Box::new(|c| c & !0xffff), "CAP.MQES is 0"),
        (
            "no NVM command set",
            Box::new(|c| c & !(1 << 37)),
            "does not include the NVM command set",
        ),
        (
            "MPSMIN above MPSMAX",
            Box::new(|c| (c & !(0xff << 48)) | (0x3 << 48)),
            "is above CAP.MPSMAX",
        ),
        (
            "a 128 MiB minimum page",
            Box::new(|c| c | (0xff << 48)),
            "this driver handles up to 64 KiB",
        ),
        (
            "all ones (device gone)",
            Box::new(|_| u64::MAX),
            "device gone",
        ),
    ];
    for (what, edit, want) in cases {
        match with_cap(edit) {
            Ok(_) => panic!("{what}: bring-up accepted it"),
            Err(e) => {
                println!("{what:40} -> {e}");
                assert_eq!(stage_of(&e), Some(Stage::Capabilities), "{what}: {e}");
                assert!(e.report().contains(want), "{what}: {}", e.report());
            }
        }
    }
}

#[test]
fn fault_hostile_zero_namespaces_is_reported_not_used() {
    let cfg = EmuConfig {
        namespaces: vec![],
        ..EmuConfig::default()
    };
    let ctrl = Controller::new(Arc::new(EmuFunction::new(cfg).unwrap()), opts()).unwrap();
    assert!(ctrl.namespaces().is_empty());
    let e = ctrl.namespace(1).unwrap_err();
    assert_eq!(
        e.to_string(),
        "namespace 1 does not exist on this controller (active: [])"
    );
}

#[test]
fn fault_hostile_absurd_mdts_is_capped_and_io_still_verifies() {
    for mdts in [15u8, 60, 255] {
        let cfg = EmuConfig {
            mdts,
            namespaces: vec![NsConfig::ram(4096, 4096)],
            ..EmuConfig::default()
        };
        let ctrl = Controller::new(Arc::new(EmuFunction::new(cfg).unwrap()), opts()).unwrap();
        let info = ctrl.info();
        // One PRP list page per command caps a command at 512 pages whatever MDTS claims.
        assert_eq!(info.max_transfer, 2 << 20, "mdts {mdts}");
        let ns = ctrl.namespace(1).unwrap().clone();
        let mut qp = ctrl.create_io_qpair(QueuePairOptions::default()).unwrap();
        let cmds = write_read_verify(
            &ctrl,
            &mut qp,
            &ns,
            0,
            &[Seg {
                offset: 0,
                len: 4 << 20,
            }],
            1,
        );
        assert_eq!(
            cmds, 4,
            "mdts {mdts}: 4 MiB split in two 2 MiB commands each way"
        );
        let _ = Lba(0);
    }
}

#[test]
fn fault_hostile_iova_ranges_are_respected() {
    // The emulated controller's IOMMU takes IOVAs below 512 GiB, like QEMU's default vIOMMU:
    // every buffer the driver hands it must lie there.
    let dev = Arc::new(EmuFunction::new(EmuConfig::default()).unwrap());
    let ranges: Vec<Range<u64>> = dev.dma_mapper().iova_ranges();
    let ctrl = Controller::new(Arc::clone(&dev), opts()).unwrap();
    for _ in 0..64 {
        let b = ctrl.memory().alloc(1 << 20, 4096).unwrap();
        let (start, end) = (b.iova(), b.iova() + b.len() as u64);
        assert!(
            ranges.iter().any(|r| r.start <= start && end <= r.end),
            "{start:#x}..{end:#x} outside {ranges:x?}"
        );
        assert!(start >= 1 << 20, "IOVA 0 is never handed out");
        std::mem::forget(b);
    }
}
