//! Shared I/O helpers for the integration tests, generic over the device so the same checks
//! run against the emulated controller and, in the VM suite, against QEMU's NVMe via VFIO.

use std::time::Duration;

use nvme_dio::{Completion, Controller, DmaBuf, IoQueuePair, Lba, Namespace, PciFunction};

/// The byte pattern for `lba` written with `seed`: every 8 bytes carry the LBA, the seed and
/// the offset, so a misplaced block or a shifted byte is caught.
pub fn pattern(lba_size: u32, first_lba: u64, seed: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    for (i, chunk) in v.chunks_mut(8).enumerate() {
        let byte = i as u64 * 8;
        let lba = first_lba + byte / lba_size as u64;
        let word = lba.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ seed ^ (byte % lba_size as u64) << 48;
        chunk.copy_from_slice(&word.to_le_bytes()[..chunk.len()]);
    }
    v
}

/// One segment shape: the in-page offset and length of a buffer of an iovec set.
#[derive(Clone, Copy, Debug)]
pub struct Seg {
    /// Offset of the segment's first byte within its allocation.
    pub offset: usize,
    /// Length in bytes.
    pub len: usize,
}

/// Allocates buffers for `shape`, each its own page-aligned allocation narrowed to the
/// segment's offset and length.
pub fn alloc_iovec<D: PciFunction>(ctrl: &Controller<D>, shape: &[Seg]) -> Vec<DmaBuf> {
    shape
        .iter()
        .map(|s| {
            let mut b = ctrl
                .memory()
                .alloc(s.offset + s.len, 4096)
                .expect("DMA buffer");
            b.set_view(s.offset, s.len)
                .expect("view inside the allocation");
            b
        })
        .collect()
}

/// Copies `data` across the buffers of an iovec set, in order.
pub fn scatter(bufs: &[DmaBuf], data: &[u8]) {
    let mut at = 0;
    for b in bufs {
        b.copy_from_slice(0, &data[at..at + b.len()])
            .expect("copy in");
        at += b.len();
    }
    assert_eq!(at, data.len(), "iovec set and data differ in length");
}

/// Reads the buffers of an iovec set back into one vector.
pub fn gather(bufs: &[DmaBuf]) -> Vec<u8> {
    let mut out = Vec::new();
    for b in bufs {
        let mut v = vec![0u8; b.len()];
        b.copy_to_slice(0, &mut v).expect("copy out");
        out.extend_from_slice(&v);
    }
    out
}

/// Polls until one completion is ready and returns it; panics after `limit` of no progress
/// (a hang is a failure, never a pass).
pub fn wait_one<D: PciFunction>(qp: &mut IoQueuePair<D>, limit: Duration) -> Completion {
    let start = std::time::Instant::now();
    loop {
        qp.wait(Duration::from_millis(50)).expect("wait");
        if let Some(c) = qp.next_completion() {
            return c;
        }
        assert!(
            start.elapsed() < limit,
            "no completion after {limit:?}; stats {:?}",
            qp.stats()
        );
    }
}

/// Writes `shape` at `lba` with `seed`, reads it back through a fresh iovec set of the same
/// shape, and checks every byte. Returns the number of commands the two requests took.
pub fn write_read_verify<D: PciFunction>(
    ctrl: &Controller<D>,
    qp: &mut IoQueuePair<D>,
    ns: &Namespace,
    lba: u64,
    shape: &[Seg],
    seed: u64,
) -> u64 {
    let len: usize = shape.iter().map(|s| s.len).sum();
    let data = pattern(ns.lba_size(), lba, seed, len);
    let wbufs = alloc_iovec(ctrl, shape);
    scatter(&wbufs, &data);
    let before = qp.stats().commands;
    qp.writev(ns, Lba(lba), wbufs, 1)
        .unwrap_or_else(|r| panic!("writev {shape:?} at {lba}: {}", r.error));
    let c = wait_one(qp, Duration::from_secs(30));
    assert_eq!(c.tag, 1);
    c.result
        .unwrap_or_else(|e| panic!("write {shape:?} at {lba}: {e}"));
    assert_eq!(
        c.bufs.into_vec().len(),
        shape.len(),
        "every buffer comes back"
    );

    let rbufs = alloc_iovec(ctrl, shape);
    for b in &rbufs {
        b.fill(0xa5);
    }
    qp.readv(ns, Lba(lba), rbufs, 2)
        .unwrap_or_else(|r| panic!("readv {shape:?} at {lba}: {}", r.error));
    let c = wait_one(qp, Duration::from_secs(30));
    assert_eq!(c.tag, 2);
    c.result
        .unwrap_or_else(|e| panic!("read {shape:?} at {lba}: {e}"));
    let got = gather(&c.bufs.into_vec());
    if got != data {
        let at = got.iter().zip(&data).position(|(a, b)| a != b).unwrap_or(0);
        panic!("data mismatch for {shape:?} at lba {lba}: first difference at byte {at}");
    }
    qp.stats().commands - before
}

/// Iovec shapes covering in-page offset classes and 1..=64 segments, all of `total` bytes
/// (a multiple of `lba`), dword aligned. Some follow the PRP rule, some break it on purpose.
pub fn shapes(total: usize, lba: usize) -> Vec<Vec<Seg>> {
    let page = 4096;
    let mut out = vec![vec![Seg {
        offset: 0,
        len: total,
    }]];
    for off in [4, 512, 0x800, page - 512] {
        out.push(vec![Seg {
            offset: off,
            len: total,
        }]);
    }
    // PRP-friendly: first segment ends on a page boundary, the rest start on one.
    if total >= 2 * page {
        let first = page - 0x800;
        let rest = total - first;
        out.push(vec![
            Seg {
                offset: 0x800,
                len: first,
            },
            Seg {
                offset: 0,
                len: rest,
            },
        ]);
    }
    // Block-sized pieces each in its own page: breaks the PRP rule at every join.
    let blocks = total / lba;
    for n in [2usize, 3, 8, 64] {
        if blocks >= n {
            let per = blocks / n;
            let mut segs: Vec<Seg> = (0..n - 1)
                .map(|i| Seg {
                    offset: (i * 8) % 64,
                    len: per * lba,
                })
                .collect();
            segs.push(Seg {
                offset: 0,
                len: total - per * lba * (n - 1),
            });
            out.push(segs);
        }
    }
    out
}
