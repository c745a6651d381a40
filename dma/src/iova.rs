//! IOVA allocation: which device addresses a DMA region gets.
//!
//! The IOMMU only accepts IOVAs inside the ranges the kernel reports
//! (`VFIO_IOMMU_GET_INFO`, IOVA-range capability). QEMU's emulated Intel IOMMU, for one,
//! gives a 39-bit space (below 512 GiB), so identity IOVA = VA (addresses near 2^47) fails
//! there. [`IovaAllocator`] hands out aligned, non-overlapping ranges inside the reported
//! ones, never below [`IOVA_FLOOR`] (1 MiB), so IOVA 0 is never valid and a zero PRP entry is
//! always a bug the device (or the emulated controller) can catch.
//!
//! Pure logic, no `unsafe`: unit tests and a property test below.

use std::collections::BTreeMap;
use std::ops::Range;

use crate::Error;

/// No IOVA below this is handed out (1 MiB): a zero (or tiny) bus address is always a bug.
pub const IOVA_FLOOR: u64 = 1 << 20;

/// First-fit allocator of half-open `u64` ranges with coalescing free.
///
/// Used for IOVAs (via [`IovaAllocator`]) and for sub-allocating offsets inside one DMA
/// region.
#[derive(Debug, Clone)]
pub(crate) struct RangeAllocator {
    /// The ranges this allocator manages (sorted, disjoint).
    managed: Vec<Range<u64>>,
    /// Free blocks: start -> end (half-open), disjoint and never adjacent (coalesced).
    free: BTreeMap<u64, u64>,
}

impl RangeAllocator {
    /// An allocator over `ranges` (empty ones are dropped; overlapping ones merged).
    pub(crate) fn new(ranges: impl IntoIterator<Item = Range<u64>>) -> Self {
        let mut rs: Vec<Range<u64>> = ranges.into_iter().filter(|r| r.start < r.end).collect();
        rs.sort_by_key(|r| r.start);
        let mut managed: Vec<Range<u64>> = Vec::with_capacity(rs.len());
        for r in rs {
            match managed.last_mut() {
                Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
                _ => managed.push(r),
            }
        }
        let free = managed.iter().map(|r| (r.start, r.end)).collect();
        Self { managed, free }
    }

    /// Allocates `len` bytes aligned to `align` (a power of two). `None` if nothing fits.
    pub(crate) fn alloc(&mut self, len: u64, align: u64) -> Option<u64> {
        if len == 0 || !align.is_power_of_two() {
            return None;
        }
        let mut found = None;
        for (&start, &end) in &self.free {
            let Some(aligned) = start.checked_next_multiple_of(align) else {
                continue;
            };
            match aligned.checked_add(len) {
                Some(stop) if stop <= end => {
                    found = Some((start, end, aligned, stop));
                    break;
                }
                _ => {}
            }
        }
        let (start, end, aligned, stop) = found?;
        self.free.remove(&start);
        if start < aligned {
            self.free.insert(start, aligned);
        }
        if stop < end {
            self.free.insert(stop, end);
        }
        Some(aligned)
    }

    /// Claims exactly `start..start+len` if all of it is free. False (nothing changes) if
    /// any byte of it is in use or outside the managed ranges.
    pub(crate) fn claim(&mut self, start: u64, len: u64) -> bool {
        let Some(stop) = start.checked_add(len) else {
            return false;
        };
        if len == 0 {
            return false;
        }
        let Some((&fstart, &fend)) = self.free.range(..=start).next_back() else {
            return false;
        };
        if fend < stop {
            return false;
        }
        self.free.remove(&fstart);
        if fstart < start {
            self.free.insert(fstart, start);
        }
        if stop < fend {
            self.free.insert(stop, fend);
        }
        true
    }

    /// Gives `start..start+len` back. Refused (and nothing changes) if the range is outside
    /// the managed ranges or overlaps something already free (a double free).
    pub(crate) fn free(&mut self, start: u64, len: u64) -> Result<(), Error> {
        let bad = Error::IovaFree { iova: start, len };
        if len == 0 {
            return Err(bad);
        }
        let end = start
            .checked_add(len)
            .ok_or(Error::IovaFree { iova: start, len })?;
        if !self
            .managed
            .iter()
            .any(|r| r.start <= start && end <= r.end)
        {
            return Err(bad);
        }
        // The free block starting at or before `start` must end at or before it...
        if let Some((_, &pend)) = self.free.range(..=start).next_back() {
            if pend > start {
                return Err(bad);
            }
        }
        // ...and the next free block must start at or after `end`.
        if let Some((&nstart, _)) = self.free.range(start..).next() {
            if nstart < end {
                return Err(bad);
            }
        }
        let mut new_start = start;
        let mut new_end = end;
        if let Some((&pstart, &pend)) = self.free.range(..start).next_back() {
            if pend == start {
                self.free.remove(&pstart);
                new_start = pstart;
            }
        }
        if let Some(nend) = self.free.get(&end).copied() {
            self.free.remove(&end);
            new_end = nend;
        }
        self.free.insert(new_start, new_end);
        Ok(())
    }

    /// Bytes currently free.
    pub(crate) fn free_bytes(&self) -> u64 {
        self.free.iter().map(|(s, e)| e - s).sum()
    }

    /// Bytes managed in total.
    pub(crate) fn total_bytes(&self) -> u64 {
        self.managed.iter().map(|r| r.end - r.start).sum()
    }

    /// The managed ranges.
    pub(crate) fn managed(&self) -> &[Range<u64>] {
        &self.managed
    }
}

/// Hands out IOVAs inside the IOMMU's accepted ranges, one allocator per container.
///
/// ```
/// use nvme_dio_dma::IovaAllocator;
/// let mut a = IovaAllocator::new(&[0..(512u64 << 30)]);
/// let iova = a.alloc(2 << 20, 2 << 20).unwrap();
/// assert!(iova >= 1 << 20, "never below 1 MiB");
/// a.free(iova, 2 << 20).unwrap();
/// ```
#[derive(Debug, Clone)]
pub struct IovaAllocator {
    inner: RangeAllocator,
}

impl IovaAllocator {
    /// An allocator over `ranges` (half-open), each clipped to start at [`IOVA_FLOOR`] or
    /// later.
    pub fn new(ranges: &[Range<u64>]) -> Self {
        let clipped = ranges
            .iter()
            .map(|r| r.start.max(IOVA_FLOOR)..r.end)
            .filter(|r| r.start < r.end);
        Self {
            inner: RangeAllocator::new(clipped),
        }
    }

    /// Allocates `len` bytes of IOVA space aligned to `align` (a power of two).
    /// `None` if `len` is zero, `align` is not a power of two, or nothing fits.
    pub fn alloc(&mut self, len: u64, align: u64) -> Option<u64> {
        self.inner.alloc(len, align)
    }

    /// Gives `iova..iova+len` back for reuse.
    ///
    /// # Errors
    ///
    /// [`Error::IovaFree`] if the range is outside the allocator's ranges or (partly) free
    /// already; nothing changes then.
    pub fn free(&mut self, iova: u64, len: u64) -> Result<(), Error> {
        self.inner.free(iova, len)
    }

    /// Bytes of IOVA space not handed out.
    pub fn free_bytes(&self) -> u64 {
        self.inner.free_bytes()
    }

    /// Bytes of IOVA space managed in total.
    pub fn total_bytes(&self) -> u64 {
        self.inner.total_bytes()
    }

    /// The (clipped, merged) ranges this allocator hands out from.
    pub fn ranges(&self) -> &[Range<u64>] {
        self.inner.managed()
    }
}

/// A set of half-open `u64` ranges, kept disjoint and coalesced: which mapped bytes are free,
/// for a mapper that checks device writes against them (the emulated controller's
/// freed-write checker, the tests' `RecordingMapper::tracking`).
///
/// ```
/// use nvme_dio_dma::RangeSet;
/// let mut free = RangeSet::default();
/// free.insert(0x1000, 0x3000); // 0x1000..0x4000
/// free.remove(0x2000, 0x1000); // handed out: 0x1000..0x2000 and 0x3000..0x4000 stay
/// assert_eq!(free.overlap(0x1800, 0x1000), Some(0x1800..0x2000));
/// assert_eq!(free.overlap(0x2000, 0x1000), None);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RangeSet {
    /// start -> end, disjoint and never adjacent.
    map: BTreeMap<u64, u64>,
}

impl RangeSet {
    /// Adds `start..start+len` (overlapping or adjacent members are merged). An empty range
    /// adds nothing; one running past `u64::MAX` is clipped there.
    pub fn insert(&mut self, start: u64, len: u64) {
        let end = start.saturating_add(len);
        if start >= end {
            return;
        }
        let (mut lo, mut hi) = (start, end);
        // Merge members that overlap or touch, one at a time (no allocation: this runs for
        // every buffer free and every cached write in the emulator).
        while let Some((&s, &e)) = self.map.range(..=hi).next_back() {
            if e < lo {
                break;
            }
            self.map.remove(&s);
            lo = lo.min(s);
            hi = hi.max(e);
        }
        self.map.insert(lo, hi);
    }

    /// Removes `start..start+len` (members are cut where they overlap it).
    pub fn remove(&mut self, start: u64, len: u64) {
        let end = start.saturating_add(len);
        if start >= end {
            return;
        }
        // The last member starting before `end`, while it reaches past `start`: cut it.
        // A left piece kept ends at `start`, so the loop stops there.
        while let Some((&s, &e)) = self.map.range(..end).next_back() {
            if e <= start {
                break;
            }
            self.map.remove(&s);
            if e > end {
                self.map.insert(end, e);
            }
            if s < start {
                self.map.insert(s, start);
                break;
            }
        }
    }

    /// The first part of `start..start+len` that is in the set, if any. O(log n).
    pub fn overlap(&self, start: u64, len: u64) -> Option<Range<u64>> {
        let end = start.saturating_add(len);
        if start >= end {
            return None;
        }
        // Members are disjoint: if any overlaps, the last one starting before `end` does.
        let (&s, &e) = self.map.range(..end).next_back()?;
        (e > start).then(|| {
            // The first overlapping member may be an earlier one.
            let first = self
                .map
                .range(..end)
                .rev()
                .take_while(|&(_, &me)| me > start)
                .last()
                .map_or((s, e), |(&a, &b)| (a, b));
            first.0.max(start)..first.1.min(end)
        })
    }

    /// True if no range is in the set.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Bytes in the set.
    pub fn bytes(&self) -> u64 {
        self.map.iter().map(|(s, e)| e - s).sum()
    }

    /// The members, in order.
    pub fn ranges(&self) -> impl Iterator<Item = Range<u64>> + '_ {
        self.map.iter().map(|(&s, &e)| s..e)
    }
}

#[cfg(test)]
// A list of one IOVA range is exactly what these tests mean.
#[allow(clippy::single_range_in_vec_init)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;

    #[test]
    fn claim_takes_exactly_a_free_range_or_nothing() {
        let mut a = RangeAllocator::new([0..64]);
        assert!(a.claim(16, 16));
        assert!(!a.claim(8, 16), "overlaps the claimed 16..32");
        assert!(!a.claim(16, 1), "in use");
        assert!(!a.claim(60, 8), "past the end");
        assert!(!a.claim(0, 0));
        assert!(a.claim(0, 16) && a.claim(32, 32));
        assert_eq!(a.free_bytes(), 0);
        a.free(16, 16).unwrap();
        assert!(a.claim(16, 16), "free again after the free");
    }

    #[test]
    fn never_hands_out_zero_or_below_floor() {
        let mut a = IovaAllocator::new(&[0..16 * MIB]);
        assert_eq!(a.ranges(), &[MIB..16 * MIB]);
        let first = a.alloc(4096, 4096).unwrap();
        assert_eq!(first, MIB);
    }

    #[test]
    fn range_start_above_floor_is_kept() {
        let mut a = IovaAllocator::new(&[0xfef0_0000..0x7f_ffff_ffff + 1]);
        assert_eq!(a.alloc(2 * MIB, 2 * MIB).unwrap(), 0xff00_0000);
    }

    #[test]
    fn qemu_ranges_skip_the_msi_hole() {
        // What QEMU's intel-iommu reports (inclusive ends converted to half-open).
        let mut a = IovaAllocator::new(&[0..0xfee0_0000, 0xfef0_0000..0x80_0000_0000]);
        // Fill the low range, then the next allocation must land above the hole.
        let low = a.alloc(0xfee0_0000 - MIB, MIB).unwrap();
        assert_eq!(low, MIB);
        let next = a.alloc(2 * MIB, 2 * MIB).unwrap();
        assert!(next >= 0xfef0_0000, "{next:#x} is in the hole");
        assert!(next + 2 * MIB <= 512 * GIB);
    }

    #[test]
    fn alignment_is_honoured_and_gap_reused() {
        let mut a = IovaAllocator::new(&[0..64 * MIB]);
        let x = a.alloc(4096, 4096).unwrap();
        assert_eq!(x, MIB);
        let y = a.alloc(2 * MIB, 2 * MIB).unwrap();
        assert_eq!(y, 2 * MIB);
        // The gap MIB+4096..2MIB is reusable for small allocations.
        let z = a.alloc(4096, 4096).unwrap();
        assert_eq!(z, MIB + 4096);
    }

    #[test]
    fn free_coalesces_and_refuses_double_free() {
        let mut a = IovaAllocator::new(&[0..8 * MIB]);
        let total = a.free_bytes();
        let x = a.alloc(MIB, MIB).unwrap();
        let y = a.alloc(MIB, MIB).unwrap();
        a.free(x, MIB).unwrap();
        assert!(matches!(a.free(x, MIB), Err(Error::IovaFree { .. })));
        a.free(y, MIB).unwrap();
        assert_eq!(a.free_bytes(), total);
        // Fully coalesced: the whole space fits one allocation again.
        assert_eq!(a.alloc(7 * MIB, MIB), Some(MIB));
    }

    #[test]
    fn free_outside_ranges_is_refused() {
        let mut a = IovaAllocator::new(&[0..8 * MIB]);
        assert!(a.free(0, 4096).is_err());
        assert!(a.free(8 * MIB, 4096).is_err());
        assert!(a.free(u64::MAX - 10, 100).is_err());
    }

    #[test]
    fn exhaustion_and_bad_args_give_none() {
        let mut a = IovaAllocator::new(&[0..2 * MIB]);
        assert_eq!(a.alloc(0, 4096), None);
        assert_eq!(a.alloc(4096, 3), None);
        assert_eq!(a.alloc(2 * MIB, 4096), None);
        assert_eq!(a.alloc(MIB, 4096), Some(MIB));
        assert_eq!(a.alloc(1, 4), None);
        let mut empty = IovaAllocator::new(&[0..MIB]);
        assert_eq!(empty.alloc(4096, 4096), None);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Alloc { len: u64, align_shift: u8 },
        Free { pick: usize },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (1u64..(3 * MIB), 2u8..22)
                .prop_map(|(len, align_shift)| Op::Alloc { len, align_shift }),
            any::<usize>().prop_map(|pick| Op::Free { pick }),
        ]
    }

    proptest! {
        #[test]
        fn no_overlap_in_range_and_all_reusable(
            gaps in proptest::collection::vec((0u64..64, 1u64..64), 1..4),
            ops in proptest::collection::vec(op(), 1..200),
        ) {
            // Build disjoint ranges from (gap, size) pairs in MiB.
            let mut ranges = Vec::new();
            let mut at = 0u64;
            for (gap, size) in gaps {
                at += gap * MIB;
                ranges.push(at..at + size * MIB);
                at += size * MIB;
            }
            let mut a = IovaAllocator::new(&ranges);
            let total = a.free_bytes();
            let mut live: Vec<(u64, u64)> = Vec::new();
            for op in ops {
                match op {
                    Op::Alloc { len, align_shift } => {
                        let align = 1u64 << align_shift;
                        if let Some(iova) = a.alloc(len, align) {
                            prop_assert_eq!(iova % align, 0);
                            prop_assert!(iova >= IOVA_FLOOR);
                            // Adjacent input ranges are merged, so check against the merged
                            // ranges, and that both ends lie in an input range.
                            prop_assert!(a.ranges().iter().any(|r| r.start <= iova && iova + len <= r.end),
                                "{:#x}+{:#x} outside ranges", iova, len);
                            for p in [iova, iova + len - 1] {
                                prop_assert!(ranges.iter().any(|r| r.contains(&p)), "{:#x} outside input", p);
                            }
                            for &(s, l) in &live {
                                prop_assert!(iova + len <= s || s + l <= iova,
                                    "overlap {:#x}+{:#x} with {:#x}+{:#x}", iova, len, s, l);
                            }
                            live.push((iova, len));
                        }
                    }
                    Op::Free { pick } => {
                        if !live.is_empty() {
                            let (s, l) = live.swap_remove(pick % live.len());
                            prop_assert!(a.free(s, l).is_ok());
                            prop_assert!(a.free(s, l).is_err(), "double free accepted");
                        }
                    }
                }
                let used: u64 = live.iter().map(|&(_, l)| l).sum();
                prop_assert!(a.free_bytes() + used <= total);
            }
            for (s, l) in live.drain(..) {
                prop_assert!(a.free(s, l).is_ok());
            }
            // Everything freed is reusable: the accounting is whole again and the largest
            // clipped range can be allocated in one piece.
            prop_assert_eq!(a.free_bytes(), total);
            if let Some(big) = a.ranges().iter().map(|r| r.end - r.start).max() {
                let got = a.alloc(big, 1);
                prop_assert!(got.is_some_and(|s| a.ranges().iter().any(|r| r.start == s)));
            }
        }
    }

    proptest! {
        /// RangeSet against a bitmap: after any inserts and removes, membership, overlap,
        /// byte count and the disjoint-and-coalesced shape all agree.
        #[test]
        fn range_set_matches_a_bitmap(ops in proptest::collection::vec((any::<bool>(), 0u64..200, 0u64..60), 0..60)) {
            let mut set = RangeSet::default();
            let mut bits = [false; 300];
            for (add, start, len) in ops {
                if add { set.insert(start, len) } else { set.remove(start, len) }
                for b in &mut bits[start as usize..(start + len) as usize] { *b = add; }
                let rs: Vec<_> = set.ranges().collect();
                for w in rs.windows(2) {
                    prop_assert!(w[0].end < w[1].start, "not disjoint and coalesced: {:?}", rs);
                }
                prop_assert_eq!(set.bytes(), bits.iter().filter(|&&b| b).count() as u64);
                for (q, ql) in [(0u64, 300u64), (start, len), (start.saturating_sub(3), 7), (start + len, 5)] {
                    let first = (q..q + ql).find(|&i| bits[i as usize]);
                    let got = set.overlap(q, ql);
                    prop_assert_eq!(got.as_ref().map(|r| r.start), first, "overlap({}, {})", q, ql);
                    if let Some(r) = got {
                        prop_assert!((r.start..r.end).all(|i| bits[i as usize]) && r.end <= q + ql);
                    }
                }
            }
        }
    }
}
