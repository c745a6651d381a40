//! PRP building (NVMe Base 2.0, 4.1.1 and 4.3.1).
//!
//! A command's data is described by PRP1 (the first byte; any dword-aligned offset) and PRP2:
//! nothing when the data fits in PRP1's page, the second page's address when it spans two
//! pages, otherwise the address of a PRP list whose entries are the page addresses after the
//! first. A list page holds `page / 8` entries; when more are needed, the last slot of each
//! full list page holds the address of the next list page (chaining). That is exactly how
//! QEMU walks it: at the last slot of a list page, if more than one page of data remains,
//! the slot is a chain pointer.
//!
//! The rule an iovec set must obey to be one PRP command: every segment except the first
//! starts on a page boundary, every segment except the last ends on one, and PRP1 is dword
//! aligned. QEMU does not check PRP1 dword alignment; we do.
//!
//! The list pages belong to the caller ([`PrpListPages`]): the driver hands out the PRP list
//! page of the command's tracker (allocated once, IOVA cached), tests hand out a `Vec`.

use crate::cmd::Dptr;
use crate::types::{Iova, PageSize};

/// A run of device-visible bytes: one iovec as the device sees it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Segment {
    /// Where the bytes start.
    pub iova: Iova,
    /// How many bytes.
    pub len: u32,
}

impl Segment {
    /// A segment of `len` bytes at `iova`.
    pub const fn new(iova: u64, len: u32) -> Segment {
        Segment {
            iova: Iova(iova),
            len,
        }
    }
}

/// A sub-range of a segment slice: bytes `first_offset..` of `segs[first]` through bytes
/// `..last_end` of `segs[last]` (inclusive `last`, exclusive `last_end`). When
/// `first == last` the range is `first_offset..last_end` of that one segment.
///
/// The planner produces one per command; [`build_range`] and [`crate::sgl::build_range`]
/// consume them without allocating.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SegRange {
    /// Index of the first segment.
    pub first: usize,
    /// Byte offset into `segs[first]` where the range starts.
    pub first_offset: u32,
    /// Index of the last segment (inclusive).
    pub last: usize,
    /// Exclusive byte end within `segs[last]`.
    pub last_end: u32,
}

impl SegRange {
    /// The whole of `segs` (an empty slice gives an empty range).
    pub fn whole(segs: &[Segment]) -> SegRange {
        match segs.last() {
            Some(l) => SegRange {
                first: 0,
                first_offset: 0,
                last: segs.len() - 1,
                last_end: l.len,
            },
            None => SegRange::default(),
        }
    }

    /// The pieces of the range as `(index in segs, sub-segment)`, zero-length ones included.
    ///
    /// # Panics
    /// If the range does not lie within `segs`.
    pub fn pieces<'a>(
        &self,
        segs: &'a [Segment],
    ) -> impl Iterator<Item = (usize, Segment)> + 'a + use<'a> {
        let r = *self;
        segs[r.first..=r.last]
            .iter()
            .enumerate()
            .map(move |(k, s)| {
                let i = r.first + k;
                let start = if i == r.first { r.first_offset } else { 0 };
                let end = if i == r.last { r.last_end } else { s.len };
                assert!(
                    start <= end && end <= s.len,
                    "SegRange {r:?} outside segment {i}"
                );
                (i, Segment::new(s.iova.0 + start as u64, end - start))
            })
    }

    /// Total bytes in the range.
    ///
    /// # Panics
    /// If the range does not lie within `segs`.
    pub fn len(&self, segs: &[Segment]) -> u64 {
        self.pieces(segs).map(|(_, s)| s.len as u64).sum()
    }

    /// True if the range holds no bytes.
    ///
    /// # Panics
    /// If the range does not lie within `segs`.
    pub fn is_empty(&self, segs: &[Segment]) -> bool {
        self.len(segs) == 0
    }
}

/// Where PRP list pages come from.
pub trait PrpListPages {
    /// IOVA of list page `n` (0-based), or None when the caller has no page n.
    /// Each page must be page aligned and one controller page long.
    fn page(&mut self, n: usize) -> Option<Iova>;
    /// Store entry `i` of list page `n` (called in order).
    fn set(&mut self, n: usize, i: usize, entry: u64);
}

/// Why a segment set cannot be described by PRPs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PrpError {
    /// PRP1 (the first byte) is not dword aligned.
    #[error(
        "data starts at {iova:#x}, which is not 4-byte aligned: PRP1 must be dword aligned; align the buffer"
    )]
    Prp1NotDwordAligned {
        /// The first byte's address.
        iova: u64,
    },
    /// A segment other than the first does not start on a page boundary.
    #[error(
        "segment {index} starts at {iova:#x}, not on a page boundary: only the first segment may start mid-page with PRPs; split the I/O there (the planner does) or use SGLs"
    )]
    SegmentStartNotPageAligned {
        /// Index in the caller's slice.
        index: usize,
        /// Its start.
        iova: u64,
    },
    /// A segment other than the last does not end on a page boundary.
    #[error(
        "segment {index} ends at {end:#x}, not on a page boundary: only the last segment may end mid-page with PRPs; split the I/O there (the planner does) or use SGLs"
    )]
    SegmentEndNotPageAligned {
        /// Index in the caller's slice.
        index: usize,
        /// Its exclusive end address.
        end: u64,
    },
    /// No bytes at all.
    #[error("no data to describe: a PRP command needs at least one byte")]
    ZeroLength,
    /// A segment holds no bytes.
    #[error("segment {index} is empty: drop empty iovecs before submitting")]
    ZeroLengthSegment {
        /// Index in the caller's slice.
        index: usize,
    },
    /// The caller's list pages ran out.
    #[error(
        "the PRP list needs {needed} list pages but fewer were provided: lower the max transfer (see plan::max_transfer) or provide more list pages"
    )]
    ListPagesExhausted {
        /// List pages the segments need.
        needed: usize,
    },
}

/// Number of list pages needed to hold `total_entries` PRP list entries (the entries after
/// PRP1, i.e. the page addresses after the first page), chaining included.
///
/// 0 or 1 entries need no list (PRP2 holds the one entry); up to `page / 8` entries fit one
/// page; beyond that every full page gives its last slot to the chain pointer, so each
/// page after the first adds `page / 8 - 1` entries.
pub fn list_pages_needed(total_entries: usize, page: PageSize) -> usize {
    let per = page.bytes() / 8;
    if total_entries <= 1 {
        0
    } else {
        // p pages hold p * (per - 1) + 1 entries.
        (total_entries - 1).div_ceil(per - 1)
    }
}

/// Describes `segs` with PRPs, writing any list into `list`.
///
/// # Errors
/// See [`PrpError`]: the first rule broken, naming the segment.
#[inline(always)]
pub fn build<L: PrpListPages>(
    segs: &[Segment],
    page: PageSize,
    list: &mut L,
) -> Result<Dptr, PrpError> {
    if let [s] = segs
        && let Some(d) = two_pages(s.iova.0, s.len as u64, page)
    {
        return Ok(d);
    }
    if segs.is_empty() {
        return Err(PrpError::ZeroLength);
    }
    build_range_slow(segs, &SegRange::whole(segs), page, list)
}

/// The common case without a list: `len > 0` bytes at dword-aligned `start` within two
/// pages. Shifts and masks only.
#[inline(always)]
fn two_pages(start: u64, len: u64, page: PageSize) -> Option<Dptr> {
    let shift = page.shift();
    if len == 0 || start & 3 != 0 {
        return None;
    }
    let first_page = start >> shift;
    let last_page = (start + len - 1) >> shift;
    match last_page - first_page {
        0 => Some(Dptr::Prp {
            prp1: start,
            prp2: 0,
        }),
        1 => Some(Dptr::Prp {
            prp1: start,
            prp2: last_page << shift,
        }),
        _ => None,
    }
}

/// [`build`] over a sub-range of `segs` (one command of a split plan). Error indices are
/// indices into `segs`.
///
/// # Errors
/// See [`PrpError`].
///
/// # Panics
/// If `range` does not lie within `segs`.
#[inline(always)]
pub fn build_range<L: PrpListPages>(
    segs: &[Segment],
    range: &SegRange,
    page: PageSize,
    list: &mut L,
) -> Result<Dptr, PrpError> {
    // Fast path: one segment within two pages. No list, no loop, inlined into the caller.
    if range.first == range.last
        && let Some(s) = segs.get(range.first)
        && range.first_offset < range.last_end
        && range.last_end <= s.len
        && let Some(d) = two_pages(
            s.iova.0 + range.first_offset as u64,
            (range.last_end - range.first_offset) as u64,
            page,
        )
    {
        return Ok(d);
    }
    build_range_slow(segs, range, page, list)
}

/// Everything but the two-page fast path, out of line.
#[inline(never)]
fn build_range_slow<L: PrpListPages>(
    segs: &[Segment],
    range: &SegRange,
    page: PageSize,
    list: &mut L,
) -> Result<Dptr, PrpError> {
    let shift = page.shift();
    let mask = page.bytes() as u64 - 1;
    let (first, last) = (range.first, range.last);
    let in_range = &segs[first..=last];
    // Byte bounds [start, end) of piece k (segment first + k) of the range.
    let bounds = |k: usize| -> (u64, u64) {
        let s = in_range[k];
        let a = if k == 0 { range.first_offset } else { 0 };
        let b = if k == last - first {
            range.last_end
        } else {
            s.len
        };
        assert!(
            a <= b && b <= s.len,
            "SegRange {range:?} outside segment {}",
            first + k
        );
        (s.iova.0 + a as u64, s.iova.0 + b as u64)
    };

    // Pass 1: check the rules and count the entries after PRP1.
    let (prp1, first_end) = bounds(0);
    if prp1 == first_end {
        return Err(if in_range[0].len == 0 {
            PrpError::ZeroLengthSegment { index: first }
        } else {
            PrpError::ZeroLength
        });
    }
    if prp1 & 3 != 0 {
        return Err(PrpError::Prp1NotDwordAligned { iova: prp1 });
    }
    let mut entries = (((first_end - 1) >> shift) - (prp1 >> shift)) as usize;
    for k in 0..in_range.len() {
        let (start, end) = bounds(k);
        let index = first + k;
        if start == end {
            return Err(PrpError::ZeroLengthSegment { index });
        }
        if k != 0 {
            if start & mask != 0 {
                return Err(PrpError::SegmentStartNotPageAligned { index, iova: start });
            }
            entries += (((end - 1) >> shift) - (start >> shift) + 1) as usize;
        }
        if index != last && end & mask != 0 {
            return Err(PrpError::SegmentEndNotPageAligned { index, end });
        }
    }

    // The page addresses after PRP1's page, in order: piece 0 from its second page, the
    // others from their (aligned) start.
    let step = mask + 1;
    let second = (prp1 & !mask) + step;
    if entries == 0 {
        return Ok(Dptr::Prp { prp1, prp2: 0 });
    }
    if entries == 1 {
        let prp2 = if second < first_end {
            second
        } else {
            bounds(1).0
        };
        return Ok(Dptr::Prp { prp1, prp2 });
    }

    let per = page.bytes() / 8;
    let needed = list_pages_needed(entries, page);
    let exhausted = PrpError::ListPagesExhausted { needed };
    let head = list.page(0).ok_or(exhausted)?;
    debug_assert_eq!(head.0 & mask, 0, "PRP list page not page aligned");
    let (mut n, mut i, mut remaining) = (0usize, 0usize, entries);
    for k in 0..in_range.len() {
        let (start, end) = bounds(k);
        let mut a = if k == 0 { second } else { start };
        while a < end {
            if i == per - 1 && remaining > 1 {
                // Last slot of a full list page with more to come: chain to the next page.
                let next = list.page(n + 1).ok_or(exhausted)?;
                debug_assert_eq!(next.0 & mask, 0, "PRP list page not page aligned");
                list.set(n, i, next.0);
                n += 1;
                i = 0;
            }
            list.set(n, i, a);
            i += 1;
            remaining -= 1;
            a += step;
        }
    }
    debug_assert_eq!(remaining, 0);
    debug_assert_eq!(n + 1, needed);
    Ok(Dptr::Prp { prp1, prp2: head.0 })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    /// List pages over a Vec: page n lives at `base + n * page`.
    pub(crate) struct VecPages {
        pub base: u64,
        pub page: usize,
        pub limit: usize,
        pub pages: Vec<Vec<u64>>,
    }

    impl VecPages {
        pub fn new(base: u64, page: PageSize, limit: usize) -> Self {
            VecPages {
                base,
                page: page.bytes(),
                limit,
                pages: Vec::new(),
            }
        }

        /// Reads qword `i` of the page at `iova`, as a controller would.
        pub fn read(&self, iova: u64, i: usize) -> u64 {
            let n = ((iova - self.base) / self.page as u64) as usize;
            assert_eq!(iova, self.base + (n * self.page) as u64, "not a list page");
            self.pages[n].get(i).copied().unwrap_or(0xdead_dead)
        }
    }

    impl PrpListPages for VecPages {
        fn page(&mut self, n: usize) -> Option<Iova> {
            if n >= self.limit {
                return None;
            }
            while self.pages.len() <= n {
                self.pages.push(Vec::new());
            }
            Some(Iova(self.base + (n * self.page) as u64))
        }

        fn set(&mut self, n: usize, i: usize, entry: u64) {
            let p = &mut self.pages[n];
            assert_eq!(p.len(), i, "entries must be set in order");
            assert!(i < self.page / 8);
            p.push(entry);
        }
    }

    /// A controller's PRP walk (QEMU hw/nvme nvme_map_prp, plus the PRP1 dword rule QEMU
    /// skips): returns the (address, len) runs it would transfer for `len` bytes.
    pub(crate) fn walk(
        prp1: u64,
        prp2: u64,
        len: u64,
        page: PageSize,
        mem: &VecPages,
    ) -> Result<Vec<(u64, u64)>, &'static str> {
        let ps = page.bytes() as u64;
        let mut out = Vec::new();
        if prp1 & 3 != 0 {
            return Err("PRP1 not dword aligned");
        }
        let first = (ps - (prp1 & (ps - 1))).min(len);
        out.push((prp1, first));
        let mut len = len - first;
        if len == 0 {
            return Ok(out);
        }
        if prp2 == 0 {
            return Err("PRP2 missing");
        }
        if len <= ps {
            if prp2 & (ps - 1) != 0 {
                return Err("PRP2 not page aligned");
            }
            out.push((prp2, len));
            return Ok(out);
        }
        let per = (ps / 8) as usize;
        let mut list = prp2;
        let mut nents = ((ps - (prp2 & (ps - 1))) / 8) as usize;
        let mut i = 0;
        while len != 0 {
            let mut ent = mem.read(list, i);
            if i == nents - 1 && len > ps {
                if ent & (ps - 1) != 0 {
                    return Err("chain pointer not page aligned");
                }
                list = ent;
                i = 0;
                nents = (len.div_ceil(ps) as usize).min(per);
                ent = mem.read(list, i);
            }
            if ent & (ps - 1) != 0 {
                return Err("PRP list entry not page aligned");
            }
            let t = len.min(ps);
            out.push((ent, t));
            len -= t;
            i += 1;
        }
        Ok(out)
    }

    /// Merges adjacent runs so two descriptions of the same bytes compare equal.
    pub(crate) fn coalesce(runs: impl IntoIterator<Item = (u64, u64)>) -> Vec<(u64, u64)> {
        let mut out: Vec<(u64, u64)> = Vec::new();
        for (a, l) in runs {
            if l == 0 {
                continue;
            }
            match out.last_mut() {
                Some((pa, pl)) if *pa + *pl == a => *pl += l,
                _ => out.push((a, l)),
            }
        }
        out
    }

    const P4K: PageSize = PageSize::SIZE_4K;
    const LIST: u64 = 0x7000_0000;

    fn prp(segs: &[Segment], limit: usize) -> (Result<Dptr, PrpError>, VecPages) {
        let mut l = VecPages::new(LIST, P4K, limit);
        (build(segs, P4K, &mut l), l)
    }

    #[test]
    fn table() {
        // (segments) -> (prp1, prp2, list page 0)
        type Case<'a> = (&'a [Segment], u64, u64, &'a [u64]);
        let cases: &[Case<'_>] = &[
            // One 512-byte block.
            (&[Segment::new(0x1_0000, 512)], 0x1_0000, 0, &[]),
            // 4 KiB at a page start: one page.
            (&[Segment::new(0x1_0000, 4096)], 0x1_0000, 0, &[]),
            // 4 KiB at 0x800: PRP2 is the next page.
            (&[Segment::new(0x1_0800, 4096)], 0x1_0800, 0x1_1000, &[]),
            // 8 KiB at page start: two pages.
            (&[Segment::new(0x1_0000, 8192)], 0x1_0000, 0x1_1000, &[]),
            // 8 KiB at an offset: three pages, PRP2 is a list.
            (
                &[Segment::new(0x1_0200, 8192)],
                0x1_0200,
                LIST,
                &[0x1_1000, 0x1_2000],
            ),
            // Two segments, page-aligned joint.
            (
                &[
                    Segment::new(0x1_0800, 0x800),
                    Segment::new(0x5_0000, 0x2000),
                ],
                0x1_0800,
                LIST,
                &[0x5_0000, 0x5_1000],
            ),
            (
                &[Segment::new(0x1_0800, 0x800), Segment::new(0x5_0000, 0x200)],
                0x1_0800,
                0x5_0000,
                &[],
            ),
        ];
        for &(segs, p1, p2, lst) in cases {
            let (r, l) = prp(segs, 1);
            assert_eq!(r, Ok(Dptr::Prp { prp1: p1, prp2: p2 }), "{segs:?}");
            if lst.is_empty() {
                assert!(l.pages.is_empty(), "{segs:?}");
            } else {
                assert_eq!(l.pages[0], lst, "{segs:?}");
            }
        }
    }

    #[test]
    fn exactly_one_full_list_page() {
        // PRP1's page + 512 list entries: 513 pages, data page aligned.
        let segs = [Segment::new(0x100_0000, 513 * 4096)];
        let (r, l) = prp(&segs, 1);
        assert_eq!(
            r,
            Ok(Dptr::Prp {
                prp1: 0x100_0000,
                prp2: LIST
            })
        );
        assert_eq!(l.pages.len(), 1);
        assert_eq!(l.pages[0].len(), 512);
        assert_eq!(l.pages[0][511], 0x100_0000 + 512 * 4096);
        assert_eq!(list_pages_needed(512, P4K), 1);
    }

    #[test]
    fn one_entry_past_a_full_list_page_chains() {
        let segs = [Segment::new(0x100_0000, 514 * 4096)];
        let (r, _) = prp(&segs, 1);
        assert_eq!(r, Err(PrpError::ListPagesExhausted { needed: 2 }));
        let (r, l) = prp(&segs, 2);
        assert_eq!(
            r,
            Ok(Dptr::Prp {
                prp1: 0x100_0000,
                prp2: LIST
            })
        );
        // Last slot of page 0 is the chain pointer to page 1, which holds the last 2 entries.
        assert_eq!(l.pages[0][511], LIST + 4096);
        assert_eq!(l.pages[0][510], 0x100_0000 + 511 * 4096);
        assert_eq!(
            l.pages[1],
            [0x100_0000 + 512 * 4096, 0x100_0000 + 513 * 4096]
        );
        assert_eq!(list_pages_needed(513, P4K), 2);
        assert_eq!(list_pages_needed(1 + 511 * 2, P4K), 2);
        assert_eq!(list_pages_needed(2 + 511 * 2, P4K), 3);
        let walked = walk(0x100_0000, LIST, 514 * 4096, P4K, &l).unwrap();
        assert_eq!(
            coalesce(walked),
            vec![(0x100_0000, 514 * 4096)],
            "controller walk covers the bytes"
        );
    }

    #[test]
    fn rule_violations_name_the_segment() {
        let bad = |segs: &[Segment]| prp(segs, 4).0.unwrap_err();
        assert_eq!(
            bad(&[Segment::new(0x1002, 512)]),
            PrpError::Prp1NotDwordAligned { iova: 0x1002 }
        );
        assert_eq!(
            bad(&[Segment::new(0x1002, 0x3000)]),
            PrpError::Prp1NotDwordAligned { iova: 0x1002 }
        );
        assert_eq!(
            bad(&[Segment::new(0x1000, 0x1000), Segment::new(0x2200, 0x200)]),
            PrpError::SegmentStartNotPageAligned {
                index: 1,
                iova: 0x2200
            }
        );
        assert_eq!(
            bad(&[
                Segment::new(0x1000, 0x1000),
                Segment::new(0x4000, 0x800),
                Segment::new(0x9000, 0x200)
            ]),
            PrpError::SegmentEndNotPageAligned {
                index: 1,
                end: 0x4800
            }
        );
        assert_eq!(bad(&[]), PrpError::ZeroLength);
        assert_eq!(
            bad(&[Segment::new(0x1000, 0x1000), Segment::new(0x4000, 0)]),
            PrpError::ZeroLengthSegment { index: 1 }
        );
        assert_eq!(
            bad(&[Segment::new(0x1000, 0)]),
            PrpError::ZeroLengthSegment { index: 0 }
        );
    }

    #[test]
    fn sub_range_reports_absolute_indices() {
        let segs = [
            Segment::new(0x1000, 0x1000),
            Segment::new(0x8000, 0x3000),
            Segment::new(0x20_0000, 0x1000),
        ];
        let r = SegRange {
            first: 1,
            first_offset: 0x1800,
            last: 2,
            last_end: 0x200,
        };
        let mut l = VecPages::new(LIST, P4K, 1);
        let d = build_range(&segs, &r, P4K, &mut l).unwrap();
        assert_eq!(
            d,
            Dptr::Prp {
                prp1: 0x9800,
                prp2: LIST
            }
        );
        assert_eq!(l.pages[0], [0xa000, 0x20_0000]);
        let r = SegRange {
            first: 0,
            first_offset: 0x800,
            last: 1,
            last_end: 0x1000,
        };
        let d = build_range(&segs, &r, P4K, &mut l).unwrap();
        assert_eq!(
            d,
            Dptr::Prp {
                prp1: 0x1800,
                prp2: 0x8000
            }
        );
    }

    proptest! {
        #[test]
        fn walker_covers_exactly_the_bytes(
            first_off in 0u64..1024,
            first_pages in 0u64..3,
            mids in proptest::collection::vec(1u64..4, 0..4),
            last_len in 1u64..3000,
            page_shift in 12u32..14,
        ) {
            let page = PageSize::new(1 << page_shift).unwrap();
            let ps = page.bytes() as u64;
            // First segment ends on a page boundary, middles are whole pages, the last
            // starts on one: a PRP-valid set with scattered addresses.
            let mut segs = vec![];
            let first_start = 0x10_0000 + first_off * 4;
            let first_end = (first_start & !(ps - 1)) + ps * (first_pages + 1);
            segs.push(Segment::new(first_start, (first_end - first_start) as u32));
            for (k, m) in mids.iter().enumerate() {
                segs.push(Segment::new(0x4000_0000 + (k as u64) * 0x100_0000, (m * ps) as u32));
            }
            segs.push(Segment::new(0x9000_0000, (last_len * 4) as u32));
            let total: u64 = segs.iter().map(|s| s.len as u64).sum();
            let mut l = VecPages::new(LIST, page, 8);
            let Dptr::Prp { prp1, prp2 } = build(&segs, page, &mut l).unwrap() else {
                panic!("not PRP")
            };
            let walked = walk(prp1, prp2, total, page, &l).unwrap();
            let want = coalesce(segs.iter().map(|s| (s.iova.0, s.len as u64)));
            prop_assert_eq!(coalesce(walked), want);
        }
    }
}
