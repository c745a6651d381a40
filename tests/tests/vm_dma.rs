//! The dma crate's VFIO path on a real (QEMU) NVMe function, in the VM suite: open, BAR0,
//! DMA memory mapped into the IOMMU, MSI-X, reset; a hand-driven admin queue doing real DMA;
//! a second open refused. `#[ignore]`d on the host; the guest runs them with
//! `--include-ignored`.

use nvme_dio_dma::{Bar0, Error, MemoryOptions, PciFunction, VfioFunction, parse_bdf};
use std::io;

use nvme_dio_tests::vm;

const GUEST: &str = "VM suite: needs the QEMU guest, run ci/vm-test";

/// The whole VFIO path in one go: open, CAP/VS from BAR0, DMA memory (IOMMU-mapped once)
/// with a buffer inside the reported IOVA ranges, MSI-X on and off, a checked function
/// reset, and teardown.
#[test]
#[ignore = "VM suite: needs the QEMU guest, run ci/vm-test"]
fn vm_dma_open_map_msix_reset() {
    let bdf = vm::controller("default").expect(GUEST).bdf;
    let f = VfioFunction::open(&bdf).unwrap_or_else(|e| panic!("open {bdf}: {e}"));
    let bar = f.bar0();
    let (cap, vs) = (bar.read64(0), bar.read32(8));
    assert!(cap != u64::MAX && vs != u32::MAX, "device gone");
    assert_eq!(vs >> 16, 1, "NVMe major version 1");
    assert!(bar.len() >= 0x1000 + 8, "BAR0 holds the doorbells");
    let mem = f
        .dma_memory(
            MemoryOptions::default()
                .region_bytes(2 << 20)
                .allow_fallback(true),
        )
        .unwrap();
    let buf = mem.alloc(4096, 4096).unwrap();
    buf.write_u64(0, 0x1234_5678_9abc_def0);
    assert_eq!(buf.read_u64(0), 0x1234_5678_9abc_def0);
    let ranges = f.dma_mapper().iova_ranges();
    assert!(buf.iova() >= nvme_dio_dma::IOVA_FLOOR);
    assert!(
        ranges.iter().any(|r| r.contains(&buf.iova())),
        "{ranges:x?}"
    );
    // 39-bit guest IOMMU: everything below 512 GiB.
    assert!(buf.iova() < 512 << 30);
    let n = f.msix_vectors().min(2);
    assert!(n > 0, "QEMU's NVMe offers MSI-X");
    drop(f.enable_msix(n).unwrap());
    f.disable_msix().unwrap();
    f.reset().unwrap();
    drop(buf);
    drop(mem);
}

/// Real DMA through the IOMMU, in the VM suite: bring up the admin queue by hand (raw NVMe
/// registers; this crate knows no NVMe, so it stays in a test), run Identify Controller into
/// a hugepage buffer, and check the completion, the data the device wrote and the MSI-X
/// eventfd of vector 0.
#[test]
#[ignore = "VM suite: needs the QEMU guest, run ci/vm-test"]
fn vm_dma_identify_by_hand() {
    use nvme_dio_dma::barrier::{rmb, wmb};
    use std::time::{Duration, Instant};

    let bdf = vm::controller("default").expect(GUEST).bdf;
    let f = VfioFunction::open(&bdf).unwrap_or_else(|e| panic!("open {bdf}: {e}"));
    let bar = f.bar0();
    let cap = bar.read64(0x0);
    assert_ne!(cap, u64::MAX, "device gone");
    let dstrd = (cap >> 32) & 0xf;
    let limit = Duration::from_millis(500 * ((cap >> 24) & 0xff).max(1));
    // A hang guard, not a timed assertion: the device gets its own CAP.TO.
    let wait_rdy = |want: u32| {
        let t = Instant::now();
        while bar.read32(0x1c) & 1 != want {
            assert!(t.elapsed() < limit, "CSTS.RDY never became {want}");
            std::thread::sleep(Duration::from_millis(1));
        }
    };
    bar.write32(0x14, 0); // CC.EN = 0
    wait_rdy(0);

    let mem = f
        .dma_memory(
            MemoryOptions::default()
                .region_bytes(2 << 20)
                .allow_fallback(true),
        )
        .unwrap();
    let asq = mem.alloc(4096, 4096).unwrap();
    let acq = mem.alloc(4096, 4096).unwrap();
    let id = mem.alloc(4096, 4096).unwrap();
    id.fill(0xee);
    let fds = f.enable_msix(1).unwrap();

    bar.write32(0x24, (15 << 16) | 15); // AQA: 16-entry admin queues
    bar.write64(0x28, asq.iova()); // ASQ
    bar.write64(0x30, acq.iova()); // ACQ
    bar.write32(0x14, (4 << 20) | (6 << 16) | 1); // CC: IOCQES 16 B, IOSQES 64 B, MPS 4 KiB, EN
    wait_rdy(1);

    // Identify (opcode 0x06), CID 0x2a, CNS 1 (controller), PRP1 = the buffer.
    let sqe = [0x06 | (0x2a << 16), 0, 0, id.iova(), 0, 1, 0, 0];
    asq.write_qwords(0, &sqe);
    wmb(); // the SQ entry is visible before the doorbell
    bar.write32(0x1000, 1); // SQ 0 tail = 1

    let t = Instant::now();
    let cqe = loop {
        let dw = acq.read_dwords(0);
        if dw[3] & (1 << 16) != 0 {
            rmb(); // the phase bit was seen: now the rest of the entry and the data
            break acq.read_dwords(0);
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "no completion for Identify"
        );
        std::thread::yield_now();
    };
    bar.write32(0x1000 + (4 << dstrd), 1); // CQ 0 head = 1
    assert_eq!(cqe[3] & 0xffff, 0x2a, "CID");
    assert_eq!((cqe[3] >> 17) & 0x7fff, 0, "status");
    let mut data = vec![0u8; 4096];
    id.copy_to_slice(0, &mut data).unwrap();
    assert_eq!(
        u16::from_le_bytes([data[0], data[1]]),
        0x1b36,
        "PCI vendor id in Identify"
    );
    let model = String::from_utf8_lossy(&data[24..64]).trim().to_string();
    assert!(model.starts_with("QEMU NVMe Ctrl"), "model {model:?}");

    // The admin CQ interrupts on vector 0.
    let t = Instant::now();
    let fired = loop {
        match fds[0].read() {
            Ok(n) => break n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                assert!(
                    t.elapsed() < Duration::from_secs(5),
                    "MSI-X vector 0 never fired"
                );
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) => panic!("eventfd read: {e}"),
        }
    };
    assert!(fired >= 1);
    eprintln!(
        "identify via {}: model {model:?}, buffer IOVA {:#x}, MSI-X fired",
        f.describe(),
        id.iova()
    );

    bar.write32(0x14, 0);
    wait_rdy(0);
    f.disable_msix().unwrap();
    f.reset().unwrap();
}

/// In the VM suite: a second open of the same function is refused with a clear error, and
/// the function can be opened again once the first user is gone.
#[test]
#[ignore = "VM suite: needs the QEMU guest, run ci/vm-test"]
fn vm_dma_second_open_is_busy() {
    let bdf = vm::controller("default").expect(GUEST).bdf;
    let first = VfioFunction::open(&bdf).unwrap();
    let err = VfioFunction::open(&bdf).unwrap_err();
    assert!(matches!(err, Error::DeviceBusy { .. }), "{err:?}");
    assert!(err.to_string().contains("busy"), "{err}");
    drop(first);
    let again = VfioFunction::open(&bdf).unwrap();
    assert_eq!(again.bdf(), parse_bdf(&bdf).unwrap());
}
