//! Memory tests. Every test that creates DMA memory holds `SERIAL`: the hugepage tests change
//! the system's hugepage reservation, and the others must not eat the pages they reserve.

// A list of one IOVA range is exactly what these tests mean.
#![allow(clippy::single_range_in_vec_init)]
use super::*;
use std::sync::Mutex;

const MIB: usize = 1 << 20;

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn read_u64(path: &str) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Raises the hugepage reservation so that `free` pages of `page` are free; gives the old
/// reservation back on drop (also when the test fails).
struct Reservation {
    page: PageKind,
    prev: u64,
}

impl Reservation {
    fn ensure_free(page: PageKind, free: u64) -> Result<Reservation, String> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err("not root: cannot reserve hugepages".into());
        }
        let path = page.nr_hugepages_path();
        let prev = read_u64(path).ok_or_else(|| format!("cannot read {path}"))?;
        let now_free = page.free_pages().ok_or("no hugepage pool of this size")?;
        let r = Reservation { page, prev };
        if now_free < free {
            let want = prev + (free - now_free);
            std::fs::write(path, format!("{want}\n"))
                .map_err(|e| format!("cannot write {path}: {e}"))?;
            let got = page.free_pages().unwrap_or(0);
            if got < free {
                return Err(format!(
                    "asked the kernel for {want} {page} pages, only {got} free (memory fragmented?)"
                ));
                // `r` drops here and restores the old reservation.
            }
        }
        Ok(r)
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let path = self.page.nr_hugepages_path();
        if let Err(e) = std::fs::write(path, format!("{}\n", self.prev)) {
            eprintln!("could not restore {path} to {}: {e}", self.prev);
        }
    }
}

macro_rules! skip {
    ($($arg:tt)*) => {{
        eprintln!("SKIPPED: {}", format!($($arg)*));
        return;
    }};
}

fn small_opts() -> MemoryOptions {
    MemoryOptions::default()
        .page(PageKind::Huge2M)
        .region_bytes(2 * MIB)
        .allow_fallback(true)
}

fn mem_with(mapper: &Arc<RecordingMapper>, opts: MemoryOptions) -> DmaMemory {
    DmaMemory::new(mapper.clone(), opts).expect("DMA memory")
}

#[test]
fn alloc_is_zeroed_aligned_and_host_pointer_matches_the_mapping() {
    let _g = serial();
    let mapper = Arc::new(RecordingMapper::new());
    let mem = mem_with(&mapper, small_opts());
    let buf = mem.alloc(4096, 4096).unwrap();
    assert!(buf.iova() >= crate::IOVA_FLOOR);
    assert_eq!(buf.iova() % 4096, 0);
    assert_eq!(buf.len(), 4096);
    let mut out = vec![0xffu8; 4096];
    buf.copy_to_slice(0, &mut out).unwrap();
    assert!(out.iter().all(|&b| b == 0));
    buf.write_u64(8, 0xdead_beef_cafe_f00d);
    // What the emulated controller does: translate the IOVA through the mapping it was given.
    let p = mapper.translate(buf.iova() + 8, 8).expect("IOVA is mapped") as *const u64;
    // SAFETY: the mapping is live (mem and buf exist) and 8-aligned; volatile read.
    assert_eq!(unsafe { p.read_volatile() }, 0xdead_beef_cafe_f00d);
}

#[test]
fn one_map_per_region_growth_and_dedicated_regions() {
    let _g = serial();
    let mapper = Arc::new(RecordingMapper::new());
    let mem = mem_with(&mapper, small_opts());
    assert_eq!(mapper.map_calls(), 1);
    // 2 MiB region: 500 x 4 KiB fit without another map.
    let bufs: Vec<_> = (0..500).map(|_| mem.alloc(4096, 4096).unwrap()).collect();
    assert_eq!(
        mapper.map_calls(),
        1,
        "allocations inside a region must not map again"
    );
    // The rest of the region cannot hold 64 KiB: a new region is mapped.
    let more = mem.alloc(64 * 1024, 4096).unwrap();
    assert_eq!(mapper.map_calls(), 2);
    assert_eq!(mem.region_count(), 2);
    // Larger than region_bytes: a dedicated region, unmapped as soon as the buffer goes.
    let big = mem.alloc(5 * MIB, 4096).unwrap();
    assert_eq!(big.len(), 5 * MIB);
    assert_eq!(mapper.map_calls(), 3);
    assert_eq!(mem.region_count(), 2);
    let big_iova = big.iova();
    drop(big);
    assert_eq!(mapper.unmap_calls(), 1);
    assert!(mapper.translate(big_iova, 1).is_none());
    // All IOVAs distinct and inside mappings.
    let mut iovas: Vec<u64> = bufs.iter().map(|b| b.iova()).collect();
    iovas.push(more.iova());
    iovas.sort_unstable();
    iovas.dedup();
    assert_eq!(iovas.len(), 501);
    for b in &bufs {
        assert!(mapper.translate(b.iova(), b.len()).is_some());
    }
    drop(bufs);
    drop(more);
    drop(mem);
    assert!(
        mapper.mappings().is_empty(),
        "every region unmapped: {:x?}",
        mapper.mappings()
    );
    assert_eq!(mapper.unmap_calls(), 3);
}

#[test]
fn buffers_keep_their_region_mapped_after_the_memory_is_dropped() {
    let _g = serial();
    let mapper = Arc::new(RecordingMapper::new());
    let mem = mem_with(&mapper, small_opts());
    let buf = mem.alloc(512, 512).unwrap();
    drop(mem);
    assert_eq!(mapper.mappings().len(), 1);
    buf.write_u32(0, 7);
    assert_eq!(buf.read_u32(0), 7);
    drop(buf);
    assert!(mapper.mappings().is_empty());
}

#[test]
fn freed_space_is_reused_and_zeroed_again() {
    let _g = serial();
    let mapper = Arc::new(RecordingMapper::new());
    let mem = mem_with(&mapper, small_opts());
    let a = mem.alloc(8192, 4096).unwrap();
    let iova = a.iova();
    a.fill(0xab);
    drop(a);
    let b = mem.alloc(8192, 4096).unwrap();
    assert_eq!(b.iova(), iova, "first fit reuses the freed range");
    let mut out = vec![1u8; 8192];
    b.copy_to_slice(0, &mut out).unwrap();
    assert!(out.iter().all(|&x| x == 0), "alloc must zero reused memory");
}

#[test]
fn bad_arguments_are_errors() {
    let _g = serial();
    let mapper = Arc::new(RecordingMapper::new());
    let mem = mem_with(&mapper, small_opts());
    assert!(matches!(
        mem.alloc(0, 4096),
        Err(Error::InvalidArgument { .. })
    ));
    assert!(matches!(
        mem.alloc(64, 3),
        Err(Error::InvalidArgument { .. })
    ));
    assert!(matches!(
        mem.alloc(64, 4 * MIB),
        Err(Error::InvalidArgument { .. })
    ));
    assert!(matches!(
        mem.pool(0, 4, 64),
        Err(Error::InvalidArgument { .. })
    ));
    assert!(matches!(
        mem.pool(64, 0, 64),
        Err(Error::InvalidArgument { .. })
    ));
    let zero = small_opts().region_bytes(0);
    assert!(matches!(
        DmaMemory::new(mapper.clone(), zero),
        Err(Error::InvalidArgument { .. })
    ));
    // Alignment below 4 is raised to 4.
    let b = mem.alloc(3, 1).unwrap();
    assert_eq!(b.iova() % 4, 0);
}

#[test]
fn iovas_stay_inside_the_mapper_ranges() {
    let _g = serial();
    // QEMU's ranges above the MSI hole only.
    let mapper = Arc::new(RecordingMapper::with_ranges(vec![
        0xfef0_0000..0x80_0000_0000,
    ]));
    let mem = mem_with(&mapper, small_opts());
    let b = mem.alloc(4096, 4096).unwrap();
    assert!(
        b.iova() >= 0xfef0_0000 && b.iova() < 0x80_0000_0000,
        "{:#x}",
        b.iova()
    );
    assert_eq!(
        mapper.mappings()[0].0 % (2 * MIB as u64),
        0,
        "regions are 2 MiB aligned"
    );
}

#[test]
fn out_of_iova_space_is_a_clear_error() {
    let _g = serial();
    // 1 MiB floor + 2 MiB alignment leaves no room for a 2 MiB region below 3 MiB.
    let mapper = Arc::new(RecordingMapper::with_ranges(vec![0..3 * MIB as u64]));
    let err = DmaMemory::new(mapper.clone(), small_opts()).unwrap_err();
    assert!(matches!(err, Error::OutOfIova { .. }), "{err}");
    assert!(err.to_string().contains("no IOVA space left"), "{err}");
    assert!(mapper.mappings().is_empty());
}

#[test]
fn copies_are_bounds_checked_and_follow_the_view() {
    let _g = serial();
    let mapper = Arc::new(RecordingMapper::new());
    let mem = mem_with(&mapper, small_opts());
    let mut b = mem.alloc(4096, 4096).unwrap();
    let base = b.iova();
    assert!(matches!(
        b.copy_from_slice(4000, &[1u8; 97]),
        Err(Error::OutOfBounds {
            offset: 4000,
            len: 97,
            size: 4096
        })
    ));
    let mut out = [0u8; 16];
    assert!(b.copy_to_slice(4090, &mut out).is_err());
    assert!(b.copy_to_slice(usize::MAX, &mut out).is_err());
    // Nothing was written by the refused copy.
    b.copy_to_slice(4000, &mut out).unwrap();
    assert_eq!(out, [0u8; 16]);
    b.copy_from_slice(4080, &[9u8; 16]).unwrap();

    // A view at an odd in-page offset: iova/len follow, offsets are view-relative.
    b.set_view(512, 1024).unwrap();
    assert_eq!(b.iova(), base + 512);
    assert_eq!(b.len(), 1024);
    assert_eq!(b.capacity(), 4096);
    b.copy_from_slice(0, b"hello").unwrap();
    assert!(b.copy_from_slice(1020, b"hello").is_err());
    assert!(matches!(
        b.set_view(4000, 97),
        Err(Error::OutOfBounds { .. })
    ));
    assert!(b.set_view(usize::MAX, 2).is_err());
    assert_eq!(b.len(), 1024, "a refused set_view leaves the view alone");
    b.set_view(4096, 0).unwrap();
    assert!(b.is_empty());
    b.reset_view();
    assert_eq!((b.iova(), b.len()), (base, 4096));
    let mut hello = [0u8; 5];
    b.copy_to_slice(512, &mut hello).unwrap();
    assert_eq!(&hello, b"hello");
    let mut tail = [0u8; 16];
    b.copy_to_slice(4080, &mut tail).unwrap();
    assert_eq!(tail, [9u8; 16]);
}

#[test]
fn slot_accessors_are_little_endian_and_in_order() {
    let _g = serial();
    let mapper = Arc::new(RecordingMapper::new());
    let mem = mem_with(&mapper, small_opts());
    let b = mem.alloc(4096, 4096).unwrap();
    let q: [u64; 8] = std::array::from_fn(|i| 0x0101_0101_0101_0101 * i as u64 + 0x1000 + i as u64);
    b.write_qwords(64, &q);
    let mut raw = [0u8; 64];
    b.copy_to_slice(64, &mut raw).unwrap();
    for (i, chunk) in raw.chunks_exact(8).enumerate() {
        assert_eq!(u64::from_le_bytes(chunk.try_into().unwrap()), q[i]);
    }
    b.copy_from_slice(128, &[1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 4, 0, 0, 0x80])
        .unwrap();
    assert_eq!(b.read_dwords(128), [1, 2, 3, 0x8000_0004]);
    assert_eq!(b.read_u64(64), q[0]);
    b.write_u32(4092, 0xfeed);
    assert_eq!(b.read_u32(4092), 0xfeed);
}

#[test]
#[should_panic(expected = "past the end of the buffer")]
fn word_access_past_the_end_panics() {
    let _g = serial();
    let mapper = Arc::new(RecordingMapper::new());
    let mem = mem_with(&mapper, small_opts());
    let b = mem.alloc(64, 64).unwrap();
    b.read_u64(60);
}

#[test]
#[should_panic(expected = "not 4-byte aligned")]
fn misaligned_word_access_panics() {
    let _g = serial();
    let mapper = Arc::new(RecordingMapper::new());
    let mem = mem_with(&mapper, small_opts());
    let b = mem.alloc(64, 64).unwrap();
    b.write_u32(2, 1);
}

#[test]
#[should_panic(expected = "past the end of the buffer")]
fn qword_slot_past_the_view_panics() {
    let _g = serial();
    let mapper = Arc::new(RecordingMapper::new());
    let mem = mem_with(&mapper, small_opts());
    let mut b = mem.alloc(4096, 4096).unwrap();
    b.set_view(0, 100).unwrap();
    b.write_qwords(64, &[0; 8]);
}

#[test]
fn pool_blocks_are_aligned_distinct_and_come_back() {
    let _g = serial();
    let mapper = Arc::new(RecordingMapper::new());
    let mem = mem_with(&mapper, small_opts());
    let pool = mem.pool(100, 8, 128).unwrap();
    assert_eq!(
        (pool.block_size(), pool.capacity(), pool.available()),
        (100, 8, 8)
    );
    let blocks: Vec<_> = (0..8).map(|_| pool.alloc().unwrap()).collect();
    assert!(pool.alloc().is_none(), "pool of 8 gave a 9th block");
    assert_eq!(pool.available(), 0);
    let mut iovas: Vec<u64> = blocks.iter().map(|b| b.iova()).collect();
    assert!(iovas.iter().all(|i| i % 128 == 0));
    iovas.sort_unstable();
    iovas.dedup();
    assert_eq!(iovas.len(), 8);
    assert!(
        iovas.windows(2).all(|w| w[1] - w[0] >= 128),
        "blocks overlap"
    );
    for b in &blocks {
        assert_eq!(b.len(), 100);
        let mut z = [1u8; 100];
        b.copy_to_slice(0, &mut z).unwrap();
        assert_eq!(z, [0u8; 100], "fresh pool blocks are zero");
        assert!(b.copy_from_slice(1, &[0; 100]).is_err());
    }
    drop(blocks);
    assert_eq!(pool.available(), 8);
    // Blocks outlive the pool handle; the pool's memory outlives both.
    let b = pool.alloc().unwrap();
    let iova = b.iova();
    drop(pool);
    b.write_u32(0, 5);
    assert!(mapper.translate(iova, 100).is_some());
    drop(b);
}

#[test]
fn pool_memory_is_given_back_to_the_region() {
    let _g = serial();
    let mapper = Arc::new(RecordingMapper::new());
    let mem = mem_with(&mapper, small_opts());
    let pool = mem.pool(4096, 256, 4096).unwrap(); // 1 MiB of the 2 MiB region
    let first = pool.alloc().unwrap().iova();
    drop(pool);
    // The whole region is free again: a 2 MiB allocation fits without a new map.
    let all = mem.alloc(2 * MIB, 4096).unwrap();
    assert_eq!(mapper.map_calls(), 1);
    assert!(all.iova() <= first);
}

#[test]
fn pool_under_concurrent_alloc_free_loses_nothing() {
    let _g = serial();
    let mapper = Arc::new(RecordingMapper::new());
    let mem = mem_with(&mapper, small_opts());
    const BLOCKS: usize = 64;
    let pool = mem.pool(512, BLOCKS, 512).unwrap();
    let threads = 4;
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let pool = pool.clone();
            std::thread::spawn(move || {
                let mut got = 0usize;
                for round in 0..3000u64 {
                    let want = 1 + (round as usize * 7 + t) % 24;
                    let mut held = Vec::with_capacity(want);
                    for _ in 0..want {
                        match pool.alloc() {
                            Some(b) => held.push(b),
                            None => break,
                        }
                    }
                    let tag = |i: usize| ((t as u64) << 56) | (round << 16) | i as u64;
                    for (i, b) in held.iter().enumerate() {
                        b.write_u64(0, tag(i));
                        b.write_u64(504, !tag(i));
                    }
                    std::thread::yield_now();
                    for (i, b) in held.iter().enumerate() {
                        // Another thread holding the same block would have overwritten this.
                        assert_eq!(
                            b.read_u64(0),
                            tag(i),
                            "block {:#x} handed out twice",
                            b.iova()
                        );
                        assert_eq!(b.read_u64(504), !tag(i));
                    }
                    got += held.len();
                }
                got
            })
        })
        .collect();
    let total: usize = handles
        .into_iter()
        .map(|h| h.join().expect("worker panicked"))
        .sum();
    assert!(total > 0);
    assert_eq!(pool.available(), BLOCKS, "blocks lost under concurrency");
    let all: Vec<_> = (0..BLOCKS)
        .map(|_| pool.alloc().expect("every block back"))
        .collect();
    let mut iovas: Vec<u64> = all.iter().map(|b| b.iova()).collect();
    iovas.sort_unstable();
    iovas.dedup();
    assert_eq!(iovas.len(), BLOCKS);
}

#[test]
fn recording_mapper_refuses_overlap_double_unmap_and_out_of_range() {
    let m = RecordingMapper::with_ranges(vec![0..(1 << 30)]);
    let host = std::ptr::null_mut::<u8>().wrapping_add(0x1000);
    // SAFETY: RecordingMapper never dereferences `host`; it only records it.
    unsafe {
        m.map(1 << 20, host, 1 << 20).unwrap();
        assert!(
            m.map((1 << 20) + 4096, host, 4096).is_err(),
            "overlap accepted"
        );
        assert!(
            m.map(0, host, (1 << 20) + 1).is_err(),
            "overlap from below accepted"
        );
        assert!(m.map(1 << 30, host, 4096).is_err(), "out of range accepted");
    }
    assert!(m.unmap(1 << 20, 4096).is_err(), "partial unmap accepted");
    m.unmap(1 << 20, 1 << 20).unwrap();
    assert!(matches!(
        m.unmap(1 << 20, 1 << 20),
        Err(Error::Mapping { op: "unmap", .. })
    ));
}

// ---- hugepages, for real ----

#[test]
fn hugepages_back_regions_and_are_given_back() {
    let _g = serial();
    let res = match Reservation::ensure_free(PageKind::Huge2M, 8) {
        Ok(r) => r,
        Err(why) => skip!("hugepage test needs 8 free 2 MiB pages: {why}"),
    };
    let before = PageKind::Huge2M.free_pages().unwrap();
    let mapper = Arc::new(RecordingMapper::new());
    let opts = MemoryOptions::default()
        .page(PageKind::Huge2M)
        .region_bytes(4 * MIB)
        .allow_fallback(false);
    let mem = DmaMemory::new(mapper.clone(), opts).expect("hugepage region");
    assert!(!mem.is_fallback());
    assert_eq!(
        PageKind::Huge2M.free_pages().unwrap(),
        before - 2,
        "region is two hugepages"
    );
    let b = mem.alloc(MIB, 4096).unwrap();
    assert!(b.is_huge());
    let data: Vec<u8> = (0..MIB).map(|i| (i * 31 % 251) as u8).collect();
    b.copy_from_slice(0, &data).unwrap();
    let mut back = vec![0u8; MIB];
    b.copy_to_slice(0, &mut back).unwrap();
    assert_eq!(back, data);
    // The mapping is 2 MiB aligned both in IOVA and host space (one IOMMU large page).
    let (iova, host, len) = mapper.mappings()[0];
    assert_eq!(
        (iova % (2 * MIB as u64), host % (2 * MIB), len),
        (0, 0, 4 * MIB)
    );
    drop(b);
    drop(mem);
    assert!(mapper.mappings().is_empty());
    assert_eq!(
        PageKind::Huge2M.free_pages().unwrap(),
        before,
        "hugepages given back"
    );
    drop(res);
}

#[test]
fn no_free_hugepages_is_a_clear_error_or_a_flagged_fallback() {
    let _g = serial();
    if read_u64("/proc/sys/vm/nr_overcommit_hugepages").unwrap_or(0) != 0 {
        skip!("nr_overcommit_hugepages is set: the kernel would hand out surplus pages");
    }
    let free = PageKind::Huge2M.free_pages().unwrap_or(0);
    let total = PageKind::Huge2M.total_pages().unwrap_or(0);
    let pages = free + 4; // more than are free
    let mapper = Arc::new(RecordingMapper::new());
    let opts = MemoryOptions::default()
        .page(PageKind::Huge2M)
        .region_bytes(pages as usize * 2 * MIB)
        .allow_fallback(false);
    let err = DmaMemory::new(mapper.clone(), opts).unwrap_err();
    match &err {
        Error::NoHugepages {
            page,
            needed,
            free: f,
            suggest,
            ..
        } => {
            assert_eq!(*page, PageKind::Huge2M);
            assert_eq!(*needed, pages);
            assert_eq!(*f, free);
            assert!(*suggest >= total + 4);
        }
        other => panic!("expected NoHugepages, got {other:?}"),
    }
    let msg = err.to_string();
    assert!(msg.contains(&format!("need {pages}")), "{msg}");
    assert!(
        msg.contains("echo ") && msg.contains("> /proc/sys/vm/nr_hugepages"),
        "{msg}"
    );
    assert!(msg.contains("nvme-dio setup --hugepages"), "{msg}");
    assert!(mapper.mappings().is_empty());

    let mem = DmaMemory::new(mapper.clone(), opts.allow_fallback(true))
        .expect("fallback to ordinary pages");
    assert!(mem.is_fallback(), "fallback must be reported");
    let b = mem.alloc(4096, 4096).unwrap();
    assert!(!b.is_huge());
    b.write_u64(0, 1);
    assert_eq!(mapper.map_calls(), 1);
}

#[test]
fn one_gib_pages_when_they_can_be_reserved() {
    let _g = serial();
    if PageKind::Huge1G.free_pages().is_none() {
        skip!("kernel has no 1 GiB hugepage pool");
    }
    let res = match Reservation::ensure_free(PageKind::Huge1G, 1) {
        Ok(r) => r,
        Err(why) => skip!("1 GiB hugepage test: {why}"),
    };
    let mapper = Arc::new(RecordingMapper::new());
    let opts = MemoryOptions::default()
        .page(PageKind::Huge1G)
        .region_bytes(1)
        .allow_fallback(false);
    let mem = DmaMemory::new(mapper.clone(), opts).expect("1 GiB region");
    assert!(!mem.is_fallback());
    let (iova, host, len) = mapper.mappings()[0];
    assert_eq!((iova % (1 << 30), host % (1 << 30), len), (0, 0, 1 << 30));
    let b = mem.alloc(4096, 4096).unwrap();
    assert!(b.is_huge());
    b.write_u64(0, 42);
    assert_eq!(b.read_u64(0), 42);
    drop(b);
    drop(mem);
    drop(res);
}

#[test]
fn reservation_guard_restores_on_failure() {
    let _g = serial();
    let path = PageKind::Huge2M.nr_hugepages_path();
    let before = match read_u64(path) {
        Some(v) => v,
        None => skip!("no {path}"),
    };
    let r = std::panic::catch_unwind(|| {
        let _res = match Reservation::ensure_free(PageKind::Huge2M, 2) {
            Ok(r) => r,
            Err(why) => {
                eprintln!("SKIPPED (inner): {why}");
                return;
            }
        };
        panic!("test body fails while pages are reserved");
    });
    let _ = r;
    assert_eq!(
        read_u64(path),
        Some(before),
        "reservation not given back after a panic"
    );
}

#[test]
fn two_memories_over_one_mapper_share_its_iova_space() {
    let _g = serial();
    let mapper = Arc::new(RecordingMapper::new());
    let a = mem_with(&mapper, small_opts());
    // Without a per-mapper allocator this would reuse the first IOVA and the mapper (like
    // VFIO) would refuse the overlapping map.
    let b = mem_with(&mapper, small_opts());
    let (x, y) = (a.alloc(4096, 4096).unwrap(), b.alloc(4096, 4096).unwrap());
    assert_ne!(x.iova(), y.iova());
    assert_eq!(mapper.mappings().len(), 2);
    // A fresh mapper starts a fresh IOVA space.
    let other = Arc::new(RecordingMapper::new());
    let c = mem_with(&other, small_opts());
    assert_eq!(other.mappings()[0].0, mapper.mappings()[0].0);
    drop((x, y, a, b, c));
    assert!(mapper.mappings().is_empty() && other.mappings().is_empty());
}

/// Issue 12, defect 1: a leaked pool block must keep its bytes out of every allocator, also
/// after the pool is gone (before the fix the pool's whole range went back to the region heap,
/// and the next `alloc` got the leaked block's IOVA: two live buffers over the same bytes).
#[test]
fn a_leaked_pool_block_is_never_handed_out_again() {
    let _g = serial();
    let mapper = Arc::new(RecordingMapper::new());
    let mem = mem_with(&mapper, small_opts());
    let pool = mem.pool(4096, 4, 4096).unwrap();
    let mut a = pool.alloc().unwrap();
    let leaked = a.iova()..a.iova() + 4096;
    a.leak_on_drop();
    drop(a);
    // The pool never gives it out again ...
    let others: Vec<_> = std::iter::from_fn(|| pool.alloc()).collect();
    assert_eq!(others.len(), 3, "the leaked block stays out of the pool");
    assert!(others.iter().all(|b| !leaked.contains(&b.iova())));
    drop(others);
    drop(pool);
    // ... nor does the region heap once the pool is gone: fill the region with pages and
    // check none of them overlaps the leaked block.
    let mut got = Vec::new();
    while mapper.map_calls() == 1 {
        let b = mem.alloc(4096, 4096).unwrap();
        if mapper.map_calls() != 1 {
            break; // a new region: the first one is full
        }
        assert!(
            !leaked.contains(&b.iova()),
            "IOVA {:#x} of a leaked pool block handed out again",
            b.iova()
        );
        got.push(b);
    }
    assert!(
        got.len() >= 2 * MIB / 4096 - 4,
        "the rest of the region is usable"
    );
}

#[test]
fn quarantine_holds_buffers_until_dma_is_proven_stopped() {
    let _g = serial();
    let mapper = Arc::new(RecordingMapper::tracking());
    let mem = mem_with(&mapper, small_opts());
    let pool = mem.pool(4096, 2, 4096).unwrap();
    let a = mem.alloc(8192, 4096).unwrap();
    let b = pool.alloc().unwrap();
    let (ia, ib) = (a.iova(), b.iova());
    mem.quarantine(a).unwrap();
    mem.quarantine_all([b]).unwrap();
    assert_eq!((mem.held_buffers(), mem.held_bytes()), (2, 8192 + 4096));
    // Held bytes stay allocated: nobody gets them, and a device write there is no violation.
    assert_eq!(pool.available(), 1);
    let c = pool.alloc().unwrap();
    assert_ne!(c.iova(), ib);
    assert!(pool.alloc().is_none(), "the held block is not in the pool");
    let mut others = Vec::new();
    for _ in 0..64 {
        let x = mem.alloc(8192, 4096).unwrap();
        assert!(
            x.iova() + 8192 <= ia || x.iova() >= ia + 8192,
            "held bytes handed out"
        );
        others.push(x);
    }
    assert_eq!(mapper.free_overlap(ia, 8192), None);
    assert_eq!(mapper.free_overlap(ib, 4096), None);
    let r = mem.release_quarantine(DmaStopped::ControllerDisabled);
    assert_eq!((r.held_buffers, r.held_bytes), (2, 8192 + 4096));
    assert_eq!((mem.held_buffers(), mem.held_bytes()), (0, 0));
    let st = mem.quarantine_stats();
    assert_eq!(
        (st.released_buffers, st.released_bytes, st.releases),
        (2, 8192 + 4096, 1)
    );
    // Released: back in their allocators, and free for the checker.
    assert_eq!(pool.available(), 1);
    assert_eq!(mapper.free_overlap(ib, 4096), Some(ib..ib + 4096));
    assert_eq!(mapper.free_overlap(ia, 8192), Some(ia..ia + 8192));
    assert_eq!(
        mem.alloc(8192, 4096).unwrap().iova(),
        ia,
        "first fit reuses it"
    );
    assert_eq!(
        mem.release_quarantine(DmaStopped::FunctionReset),
        QuarantineStats::default()
    );
}

#[test]
fn held_buffers_are_leaked_when_the_memory_goes_first() {
    let _g = serial();
    let mapper = Arc::new(RecordingMapper::tracking());
    let mem = mem_with(&mapper, small_opts());
    let a = mem.alloc(4096, 4096).unwrap();
    let ia = a.iova();
    mem.quarantine(a).unwrap();
    let keep = mem.alloc(4096, 4096).unwrap(); // keeps the region alive past `mem`
    drop(mem);
    assert!(mapper.translate(ia, 4096).is_some(), "still mapped");
    assert_eq!(mapper.free_overlap(ia, 4096), None, "never reported free");
    drop(keep);
    assert!(
        mapper.translate(ia, 4096).is_some(),
        "the region is leaked, not unmapped"
    );
    assert_eq!(mapper.unmap_calls(), 0);
}

#[test]
fn a_foreign_buffer_is_refused_by_the_quarantine_and_leaked() {
    let _g = serial();
    let m1 = Arc::new(RecordingMapper::tracking());
    let m2 = Arc::new(RecordingMapper::new());
    let mem1 = mem_with(&m1, small_opts());
    let mem2 = mem_with(&m2, small_opts());
    let b = mem2.alloc(4096, 4096).unwrap();
    let ib = b.iova();
    let e = mem1.quarantine(b).unwrap_err();
    assert!(e.to_string().contains("another device"), "{e}");
    assert_eq!(mem1.held_buffers(), 0);
    drop(mem2);
    assert!(m2.translate(ib, 4096).is_some(), "leaked, so still mapped");
}

#[test]
fn a_tracking_mapper_sees_every_allocation_and_free() {
    let _g = serial();
    let mapper = Arc::new(RecordingMapper::tracking());
    let mem = mem_with(&mapper, small_opts());
    let (base, len) = {
        let m = mapper.mappings()[0];
        (m.0, m.2)
    };
    assert_eq!(
        mapper.free_overlap(base, len),
        Some(base..base + len as u64)
    );
    let a = mem.alloc(4096, 4096).unwrap();
    let ia = a.iova();
    assert_eq!(mapper.free_overlap(ia, 4096), None);
    drop(a);
    assert_eq!(mapper.free_overlap(ia, 4096), Some(ia..ia + 4096));
    // Pool blocks: in use between alloc and drop; free otherwise (the pool's free blocks
    // are memory the driver is not using).
    let pool = mem.pool(512, 4, 512).unwrap();
    let b = pool.alloc().unwrap();
    let ib = b.iova();
    assert_eq!(mapper.free_overlap(ib, 512), None);
    assert!(mapper.free_overlap(ib + 512, 512).is_some(), "free block");
    drop(b);
    assert!(mapper.free_overlap(ib, 512).is_some());
    // Leaked: never free again.
    let mut c = pool.alloc().unwrap();
    let ic = c.iova();
    c.leak_on_drop();
    drop(c);
    drop(pool);
    assert_eq!(mapper.free_overlap(ic, 512), None);
}

#[test]
fn an_alias_shares_bytes_and_iovas_and_frees_nothing() {
    let _g = serial();
    let mapper = Arc::new(RecordingMapper::new());
    let mem = mem_with(&mapper, small_opts());
    let mut b = mem.alloc(16384, 4096).unwrap();
    b.set_view(4096, 8192).unwrap();
    let p = b.as_ptr();
    assert_eq!(
        mapper.translate(b.iova(), 1).expect("mapped"),
        p,
        "as_ptr is the host address of the view's first byte"
    );
    // SAFETY: `b` outlives the alias, and no request uses either.
    let a = unsafe { b.alias(4096, 4096) }.unwrap();
    assert_eq!(
        (a.iova(), a.len(), a.capacity()),
        (b.iova() + 4096, 4096, 4096)
    );
    assert_eq!(a.domain(), b.domain());
    a.copy_from_slice(0, b"alias").unwrap();
    let mut out = [0u8; 5];
    b.copy_to_slice(4096, &mut out).unwrap();
    assert_eq!(&out, b"alias");
    // SAFETY: as above.
    let past_end = unsafe { b.alias(4097, 4096) };
    assert!(matches!(past_end, Err(Error::OutOfBounds { .. })));
    // SAFETY: as above.
    assert!(unsafe { b.alias(usize::MAX, 2) }.is_err());
    drop(a);
    // Dropping the alias gave nothing back: a new allocation does not land on those bytes.
    let c = mem.alloc(4096, 4096).unwrap();
    let (lo, hi) = (b.iova() - 4096, b.iova() + 12288);
    assert!(
        c.iova() < lo || c.iova() >= hi,
        "{:#x} inside {lo:#x}..{hi:#x}",
        c.iova()
    );
}

// ---- caller memory (register.rs) ---------------------------------------------------------

fn caller_pool(len: usize) -> memmap2::MmapMut {
    let mut m = memmap2::MmapMut::map_anon(len).expect("anonymous mapping");
    for (i, b) in m.iter_mut().enumerate() {
        *b = (i / 4096) as u8;
    }
    m
}

#[test]
fn registered_memory_is_used_in_place_and_given_back_only_without_buffers() {
    let _g = serial();
    let mapper = Arc::new(RecordingMapper::new());
    let mem = mem_with(&mapper, small_opts());
    let pool = caller_pool(16 * 4096);
    let host = pool.as_ptr() as usize;
    let reg = mem.register(pool).map_err(|(_, e)| e).unwrap();
    assert_eq!((reg.len(), reg.as_ptr() as usize), (16 * 4096, host));
    let page = reg.buf(2 * 4096, 4096).unwrap();
    // The caller's bytes, not zeroes; the device sees the caller's memory itself.
    let mut got = vec![0u8; 4096];
    page.copy_to_slice(0, &mut got).unwrap();
    assert!(
        got.iter().all(|&b| b == 2),
        "used in place, not copied or zeroed"
    );
    let p = mapper.translate(page.iova(), 4096).expect("mapped");
    assert_eq!(p as usize, host + 2 * 4096);
    page.write_u32(0, 0xfeed_f00d);
    // Busy while a buffer lives: the registration comes back, still mapped.
    let (reg, e) = reg.unregister().unwrap_err();
    assert!(
        matches!(e, Error::RegistrationBusy { buffers: 1, .. }),
        "{e}"
    );
    assert!(e.to_string().contains("complete and drop them"), "{e}");
    assert!(mapper.translate(reg.iova(), 4096).is_some());
    drop(page);
    let unmaps = mapper.unmap_calls();
    let pool = reg
        .unregister()
        .map_err(|(_, e)| e)
        .unwrap()
        .expect("the mapping back");
    assert_eq!(
        mapper.unmap_calls(),
        unmaps + 1,
        "unmapped before it came back"
    );
    assert_eq!(&pool[2 * 4096..2 * 4096 + 4], &0xfeed_f00du32.to_ne_bytes());
    // Registering it again works: the first registration's entry is gone.
    let reg = mem.register(pool).map_err(|(_, e)| e).unwrap();
    assert!(reg.unregister().is_ok());
}

#[test]
fn registration_refuses_unaligned_overlapping_and_double_claimed_memory() {
    let _g = serial();
    let mapper = Arc::new(RecordingMapper::new());
    let mem = mem_with(&mapper, small_opts());
    let odd = memmap2::MmapMut::map_anon(4096 + 100).unwrap();
    let (_, e) = mem.register(odd).unwrap_err();
    assert!(
        matches!(e, Error::RegisterUnaligned { len: 4196, .. }),
        "{e}"
    );
    let reg = mem
        .register(caller_pool(8 * 4096))
        .map_err(|(_, e)| e)
        .unwrap();
    // SAFETY: the bytes belong to `reg`'s live mapping; the call is refused before mapping.
    let e = unsafe { mem.register_raw(reg.as_ptr().add(4096), 4096) }.unwrap_err();
    assert!(matches!(e, Error::RegisterOverlaps { .. }), "{e}");
    // SAFETY: as above (unaligned: refused first).
    let e = unsafe { mem.register_raw(reg.as_ptr().add(100), 4096) }.unwrap_err();
    assert!(matches!(e, Error::RegisterUnaligned { .. }), "{e}");
    let a = reg.buf(0, 8192).unwrap();
    assert!(reg.buf(4096, 4096).is_err(), "already in a live buffer");
    assert!(reg.buf(7 * 4096, 8192).is_err(), "past the end");
    assert!(reg.buf(usize::MAX, 2).is_err(), "overflow");
    let b = reg.alloc(4096, 4096).unwrap();
    assert_eq!(b.iova(), reg.iova() + 8192, "first free range after `a`");
    drop((a, b));
    assert_eq!(reg.buffers(), 0);
}

#[test]
fn a_quarantined_buffer_keeps_its_registration_mapped() {
    let _g = serial();
    let mapper = Arc::new(RecordingMapper::new());
    let mem = mem_with(&mapper, small_opts());
    let reg = mem
        .register(caller_pool(4 * 4096))
        .map_err(|(_, e)| e)
        .unwrap();
    mem.quarantine(reg.buf(0, 4096).unwrap()).unwrap();
    let (reg, e) = reg.unregister().unwrap_err();
    assert!(e.to_string().contains("device may still write"), "{e}");
    mem.release_quarantine(DmaStopped::ControllerDisabled);
    assert!(reg.unregister().is_ok());
}

#[test]
fn the_budget_caps_what_the_library_maps_itself_not_registered_memory() {
    let _g = serial();
    let mapper = Arc::new(RecordingMapper::new());
    let mem = mem_with(&mapper, small_opts().budget(4 * MIB));
    let _a = mem.alloc(2 * MIB, 4096).unwrap(); // fills the first region
    let _b = mem.alloc(2 * MIB, 4096).unwrap(); // a second region: 4 MiB mapped
    let e = mem.alloc(4096, 4096).unwrap_err();
    assert!(
        matches!(e, Error::BudgetExceeded { budget, mapped, .. } if budget == 4 * MIB && mapped == 4 * MIB),
        "{e}"
    );
    let reg = mem.register(caller_pool(MIB)).map_err(|(_, e)| e).unwrap();
    assert!(
        reg.buf(0, 4096).is_ok(),
        "registered memory is outside the budget"
    );
    drop(_b);
    assert!(
        mem.alloc(4096, 4096).is_ok(),
        "room again once a region is gone"
    );
}
