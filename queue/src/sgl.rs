//! SGL building (NVMe Base 2.0, 4.3.2).
//!
//! One segment goes inline in the DPTR as a Data Block descriptor. More go in descriptor
//! lists in caller pages: the DPTR is a Last Segment descriptor pointing at list page 0 when
//! everything fits in one page (`page / 16` descriptors), otherwise a Segment descriptor; a
//! page that is not the final one gives its last slot to a Segment (or, pointing at the
//! final page, Last Segment) descriptor for the next page. This is what QEMU's
//! `nvme_map_sgl` walks: a segment ending in a Data Block ends the SGL.
//!
//! A descriptor is 16 bytes, written as two little-endian quadwords: the address, then the
//! length in the low 32 bits and the SGL identifier (type << 4 | subtype) in the top byte.
//! SGLs impose no page rule, so an iovec set that breaks the PRP rule can go out as one SGL
//! command; each segment must only be dword aligned when the controller says so
//! (`SglSupport::dword_aligned_only`), which the planner enforces for every segment anyway.

use crate::cmd::Dptr;
use crate::prp::{PrpListPages, SegRange, Segment};
use crate::types::{Iova, PageSize};

/// SGL descriptor type identifiers (type in bits 7:4, subtype 0 = address).
pub mod desc_type {
    /// Data Block.
    pub const DATA_BLOCK: u8 = 0x00;
    /// Segment: points at the next list, which ends in another segment descriptor.
    pub const SEGMENT: u8 = 0x20;
    /// Last Segment: points at the final list, which holds only data descriptors.
    pub const LAST_SEGMENT: u8 = 0x30;
}

/// A 16-byte SGL descriptor as two quadwords.
#[inline]
pub fn descriptor(addr: u64, len: u32, id: u8) -> [u64; 2] {
    [addr, len as u64 | (id as u64) << 56]
}

/// Where SGL descriptor list pages come from. Every [`PrpListPages`] is one (descriptor `i`
/// occupies quadword slots `2i` and `2i + 1`), so the driver implements only that.
pub trait SglListPages {
    /// IOVA of list page `n` (0-based), or None when the caller has no page n.
    fn page(&mut self, n: usize) -> Option<Iova>;
    /// Store descriptor `i` of list page `n` (called in order).
    fn set(&mut self, n: usize, i: usize, desc: [u64; 2]);
}

impl<T: PrpListPages> SglListPages for T {
    fn page(&mut self, n: usize) -> Option<Iova> {
        PrpListPages::page(self, n)
    }

    fn set(&mut self, n: usize, i: usize, desc: [u64; 2]) {
        PrpListPages::set(self, n, 2 * i, desc[0]);
        PrpListPages::set(self, n, 2 * i + 1, desc[1]);
    }
}

/// Why a segment set cannot be described by an SGL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SglError {
    /// No bytes at all.
    #[error("no data to describe: an SGL command needs at least one byte")]
    ZeroLength,
    /// A segment holds no bytes.
    #[error("segment {index} is empty: drop empty iovecs before submitting")]
    ZeroLengthSegment {
        /// Index in the caller's slice.
        index: usize,
    },
    /// The caller's list pages ran out.
    #[error(
        "the SGL needs {needed} descriptor list pages but fewer were provided: split the I/O (the planner's SglLimits::max_descriptors) or provide more pages"
    )]
    ListPagesExhausted {
        /// List pages the segments need.
        needed: usize,
    },
}

/// List pages needed for `descriptors` data descriptors (1 needs none: it goes inline).
pub fn list_pages_needed(descriptors: usize, page: PageSize) -> usize {
    let per = page.bytes() / 16;
    if descriptors <= 1 {
        0
    } else {
        (descriptors - 1).div_ceil(per - 1)
    }
}

/// Data descriptors that fit in `list_pages` pages (chaining included); 1 with no pages.
pub fn max_descriptors(list_pages: usize, page: PageSize) -> u32 {
    let per = page.bytes() / 16;
    let n = if list_pages == 0 {
        1
    } else {
        list_pages * (per - 1) + 1
    };
    n.min(u32::MAX as usize) as u32
}

/// Describes `segs` with an SGL, writing any descriptor list into `list`.
///
/// # Errors
/// See [`SglError`].
pub fn build<L: SglListPages>(
    segs: &[Segment],
    page: PageSize,
    list: &mut L,
) -> Result<Dptr, SglError> {
    if segs.is_empty() {
        return Err(SglError::ZeroLength);
    }
    build_range(segs, &SegRange::whole(segs), page, list)
}

/// [`build`] over a sub-range of `segs`. Error indices are indices into `segs`.
///
/// # Errors
/// See [`SglError`].
///
/// # Panics
/// If `range` does not lie within `segs`.
pub fn build_range<L: SglListPages>(
    segs: &[Segment],
    range: &SegRange,
    page: PageSize,
    list: &mut L,
) -> Result<Dptr, SglError> {
    let mut count = 0usize;
    let mut only = Segment::default();
    for (i, s) in range.pieces(segs) {
        if s.len == 0 {
            return Err(if segs[i].len == 0 {
                SglError::ZeroLengthSegment { index: i }
            } else {
                SglError::ZeroLength
            });
        }
        count += 1;
        only = s;
    }
    match count {
        0 => return Err(SglError::ZeroLength),
        1 => {
            return Ok(Dptr::Sgl(descriptor(
                only.iova.0,
                only.len,
                desc_type::DATA_BLOCK,
            )));
        }
        _ => {}
    }
    let per = page.bytes() / 16;
    let needed = list_pages_needed(count, page);
    let exhausted = SglError::ListPagesExhausted { needed };
    // Descriptors that land in list page n (the last page takes what is left).
    let in_page = |n: usize| -> usize {
        if n + 1 == needed {
            count - n * (per - 1)
        } else {
            per
        }
    };
    let ptr_type = |n: usize| {
        if n + 1 == needed {
            desc_type::LAST_SEGMENT
        } else {
            desc_type::SEGMENT
        }
    };
    let head = list.page(0).ok_or(exhausted)?;
    let dptr = descriptor(head.0, (in_page(0) * 16) as u32, ptr_type(0));
    let mut n = 0usize;
    let mut i = 0usize;
    let mut remaining = count;
    for (_, s) in range.pieces(segs) {
        if i == per - 1 && remaining > 1 {
            let next = list.page(n + 1).ok_or(exhausted)?;
            list.set(
                n,
                i,
                descriptor(next.0, (in_page(n + 1) * 16) as u32, ptr_type(n + 1)),
            );
            n += 1;
            i = 0;
        }
        list.set(n, i, descriptor(s.iova.0, s.len, desc_type::DATA_BLOCK));
        i += 1;
        remaining -= 1;
    }
    debug_assert_eq!(n + 1, needed);
    Ok(Dptr::Sgl(dptr))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::prp::tests::{VecPages, coalesce};
    use proptest::prelude::*;

    /// A controller's SGL walk (QEMU hw/nvme nvme_map_sgl): the (address, len) runs it
    /// transfers for `len` bytes, or why it rejects the SGL.
    pub(crate) fn walk(
        dptr: [u64; 2],
        len: u64,
        mem: &VecPages,
    ) -> Result<Vec<(u64, u64)>, &'static str> {
        let ty = |d: [u64; 2]| (d[1] >> 56) as u8;
        let dlen = |d: [u64; 2]| d[1] as u32 as u64;
        let mut out = Vec::new();
        let mut left = len;
        let mut data = |d: [u64; 2], out: &mut Vec<(u64, u64)>| -> Result<(), &'static str> {
            if ty(d) != desc_type::DATA_BLOCK {
                return Err("descriptor type invalid");
            }
            if d[1] & 0x00ff_ffff_0000_0000 != 0 {
                return Err("reserved bits set");
            }
            let t = left.min(dlen(d));
            if t > 0 {
                out.push((d[0], t));
            }
            left -= t;
            Ok(())
        };
        if ty(dptr) == desc_type::DATA_BLOCK {
            data(dptr, &mut out)?;
        } else {
            let mut seg = dptr;
            loop {
                if ty(seg) != desc_type::SEGMENT && ty(seg) != desc_type::LAST_SEGMENT {
                    return Err("segment descriptor invalid");
                }
                let sl = dlen(seg);
                if sl == 0 || sl % 16 != 0 {
                    return Err("segment length invalid");
                }
                let n = (sl / 16) as usize;
                let d = |k: usize| [mem.read(seg[0], 2 * k), mem.read(seg[0], 2 * k + 1)];
                let last = d(n - 1);
                if ty(last) == desc_type::DATA_BLOCK {
                    for k in 0..n {
                        data(d(k), &mut out)?;
                    }
                    break;
                }
                if ty(seg) == desc_type::LAST_SEGMENT {
                    return Err("last segment chains");
                }
                for k in 0..n - 1 {
                    data(d(k), &mut out)?;
                }
                seg = last;
            }
        }
        if left != 0 {
            return Err("SGL shorter than the transfer");
        }
        Ok(out)
    }

    const P4K: PageSize = PageSize::SIZE_4K;
    const LIST: u64 = 0x7000_0000;

    #[test]
    fn one_segment_is_inline() {
        let mut l = VecPages::new(LIST, P4K, 0);
        let d = build(&[Segment::new(0x1002, 0x2222)], P4K, &mut l).unwrap();
        assert_eq!(d, Dptr::Sgl([0x1002, 0x2222]));
        assert!(l.pages.is_empty());
    }

    #[test]
    fn several_segments_use_a_last_segment_list() {
        let segs = [
            Segment::new(0x1004, 0x100),
            Segment::new(0x3000, 0x200),
            Segment::new(0x9008, 0x10),
        ];
        let mut l = VecPages::new(LIST, P4K, 1);
        let Dptr::Sgl(d) = build(&segs, P4K, &mut l).unwrap() else {
            panic!()
        };
        assert_eq!(d, [LIST, 48 | 0x30 << 56]);
        assert_eq!(l.pages[0], [0x1004, 0x100, 0x3000, 0x200, 0x9008, 0x10]);
        let walked = walk(d, 0x310, &l).unwrap();
        assert_eq!(
            walked,
            vec![(0x1004, 0x100), (0x3000, 0x200), (0x9008, 0x10)]
        );
    }

    #[test]
    fn more_than_a_page_of_descriptors_chains() {
        // 256 descriptors per 4 KiB page: 300 need two pages (255 + chain, then 45).
        let segs: Vec<Segment> = (0..300)
            .map(|k| Segment::new(0x10_0000 + k * 0x1000, 0x200))
            .collect();
        let mut l = VecPages::new(LIST, P4K, 1);
        assert_eq!(
            build(&segs, P4K, &mut l),
            Err(SglError::ListPagesExhausted { needed: 2 })
        );
        let mut l = VecPages::new(LIST, P4K, 2);
        let Dptr::Sgl(d) = build(&segs, P4K, &mut l).unwrap() else {
            panic!()
        };
        assert_eq!(d, [LIST, 4096 | 0x20 << 56]);
        assert_eq!(l.pages[0][510], LIST + 4096);
        assert_eq!(l.pages[0][511], (45 * 16) | (0x30 << 56));
        assert_eq!(l.pages[1].len(), 90);
        let walked = walk(d, 300 * 0x200, &l).unwrap();
        assert_eq!(walked.len(), 300);
        assert_eq!(walked[299], (0x10_0000 + 299 * 0x1000, 0x200));
        assert_eq!(list_pages_needed(256, P4K), 1);
        assert_eq!(list_pages_needed(257, P4K), 2);
        assert_eq!(max_descriptors(2, P4K), 511);
        assert_eq!(max_descriptors(0, P4K), 1);
    }

    #[test]
    fn errors() {
        let mut l = VecPages::new(LIST, P4K, 1);
        assert_eq!(build(&[], P4K, &mut l), Err(SglError::ZeroLength));
        assert_eq!(
            build(
                &[Segment::new(0x1000, 8), Segment::new(0x2000, 0)],
                P4K,
                &mut l
            ),
            Err(SglError::ZeroLengthSegment { index: 1 })
        );
    }

    proptest! {
        #[test]
        fn walker_covers_exactly_the_bytes(
            lens in proptest::collection::vec(1u32..5000, 1..700),
            pages in 1usize..4,
        ) {
            let segs: Vec<Segment> = lens
                .iter()
                .enumerate()
                .map(|(k, &len)| Segment::new(0x1_0000_0000 + k as u64 * 0x10_0000 + (len as u64 % 7) * 4, len))
                .collect();
            let total: u64 = segs.iter().map(|s| s.len as u64).sum();
            let mut l = VecPages::new(LIST, P4K, pages);
            match build(&segs, P4K, &mut l) {
                Ok(Dptr::Sgl(d)) => {
                    let walked = walk(d, total, &l).unwrap();
                    let want = coalesce(segs.iter().map(|s| (s.iova.0, s.len as u64)));
                    prop_assert_eq!(coalesce(walked), want);
                }
                Err(SglError::ListPagesExhausted { needed }) => {
                    prop_assert!(needed > pages);
                    prop_assert!(segs.len() > max_descriptors(pages, P4K) as usize);
                }
                other => prop_assert!(false, "{:?}", other),
            }
        }
    }
}
