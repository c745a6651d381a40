//! The iovec planner: one command (the fast path) or several.
//!
//! Given the caller's segments, the starting LBA and the namespace/controller limits,
//! [`plan`] decides how the transfer goes out:
//!
//! - [`Plan::One`]: everything fits one command. No allocation, no child bookkeeping: the
//!   same fast path as SPDK's "no child request" and the Linux single-bio helper.
//! - [`Plan::Split`]: children, each a whole number of blocks, cut where a single command is
//!   not allowed to go: at the namespace optimal I/O boundary (NOIOB), at the max transfer
//!   (MDTS and PRP list capacity), at 65 536 blocks, and where the segments break the PRP
//!   rule (see [`crate::prp`]). Where the controller supports SGLs a child may go out as an
//!   SGL command instead, which ignores the page rule.
//!
//! Children are greedy-maximal: each extends as far as either a PRP or an SGL command can
//! reach from where the previous one ended (PRP when both reach equally far). Because the
//! reach never shrinks when the start moves forward, greedy gives the minimal count.
//!
//! A split point must fall on a block boundary. Where the PRP rule breaks inside a block and
//! no SGL can carry that block, there is no valid plan: [`PlanError::CannotSplit`].

use crate::prp::{SegRange, Segment};
use crate::types::{Lba, PageSize};

/// Largest block count one read/write command carries (NLB is a 16-bit zero-based field).
pub const MAX_BLOCKS_PER_COMMAND: u32 = 65_536;

/// What a namespace on a controller allows one command to carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Bytes per logical block (a power of two).
    pub lba_size: u32,
    /// The controller memory page size (CC.MPS).
    pub page: PageSize,
    /// Bytes per command: already the minimum of MDTS and the PRP list capacity
    /// (see [`max_transfer`]).
    pub max_transfer: u32,
    /// Namespace Optimal I/O Boundary in blocks, 0 = none.
    pub noiob: u32,
    /// Namespace size in blocks (NSZE).
    pub ns_blocks: u64,
    /// SGL limits when the controller supports SGLs for I/O and the driver wants them.
    pub sgl: Option<SglLimits>,
}

impl Limits {
    /// The limits for namespace `ns` on controller `ctrl`, with CAP.MPSMIN `mpsmin`, memory
    /// page size `page` (CC.MPS), `list_pages` PRP/SGL list pages per command, and SGLs used
    /// when `want_sgl` and the controller supports them.
    ///
    /// QEMU rejects commands with more than 1024 mappings (Internal Error): at 4 KiB pages keep
    /// `list_pages <= 2` (at most 1024 PRP entries), which this also caps SGL descriptors to.
    pub fn from_identify(
        ctrl: &crate::identify::IdentifyController,
        ns: &crate::identify::IdentifyNamespace,
        mpsmin: PageSize,
        page: PageSize,
        list_pages: usize,
        want_sgl: bool,
    ) -> Limits {
        let sgl = (want_sgl && ctrl.sgls().supported).then(|| SglLimits {
            max_descriptors: crate::sgl::max_descriptors(list_pages, page).min(1024),
        });
        Limits {
            lba_size: ns.current_lba_format().data_size,
            page,
            max_transfer: max_transfer(ctrl.max_transfer_bytes(mpsmin), page, list_pages),
            noiob: ns.noiob() as u32,
            ns_blocks: ns.nsze(),
            sgl,
        }
    }
}

/// SGL limits of one command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SglLimits {
    /// Data descriptors one command may carry (1 = inline only); see
    /// [`crate::sgl::max_descriptors`] for what a number of list pages holds.
    pub max_descriptors: u32,
}

/// One command of a plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Command {
    /// First block.
    pub slba: Lba,
    /// Blocks, a real count (1 ..= 65 536).
    pub nlb: u32,
    /// Describe the data with an SGL ([`crate::sgl::build_range`]) rather than PRPs
    /// ([`crate::prp::build_range`]).
    pub sgl: bool,
    /// The caller's bytes this command carries.
    pub segs: SegRange,
}

/// How an iovec set goes out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Plan {
    /// One command: the fast path.
    One(Command),
    /// Several, in order; their bytes concatenate to the caller's and their LBA ranges to
    /// the parent's.
    Split(Vec<Command>),
}

impl Plan {
    /// The commands, in order.
    pub fn commands(&self) -> &[Command] {
        match self {
            Plan::One(c) => core::slice::from_ref(c),
            Plan::Split(v) => v,
        }
    }

    /// Number of commands.
    pub fn len(&self) -> usize {
        self.commands().len()
    }

    /// Never true: a plan has at least one command.
    pub fn is_empty(&self) -> bool {
        self.commands().is_empty()
    }
}

/// Why no split point could be found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SplitReason {
    /// The boundary before this segment breaks the PRP rule (one side not page aligned) and
    /// falls inside a block, and no SGL command can carry that block.
    PrpBreakInsideBlock,
    /// One block spans more segments than an SGL command may carry descriptors, and PRPs
    /// cannot carry it either.
    TooManyDescriptorsInBlock,
    /// The max transfer is smaller than one block.
    MaxTransferBelowBlock,
}

impl core::fmt::Display for SplitReason {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            SplitReason::PrpBreakInsideBlock => {
                "the boundary before it is not page aligned (PRP rule) and lies inside a block, \
                 so no command boundary can go there; make iovec boundaries page aligned or \
                 block aligned, or use a controller with SGL support"
            }
            SplitReason::TooManyDescriptorsInBlock => {
                "one block spans more iovecs than an SGL command may carry; use fewer, larger iovecs"
            }
            SplitReason::MaxTransferBelowBlock => {
                "the max transfer is smaller than one block; check the Limits (MDTS, list pages)"
            }
        })
    }
}

/// Why an iovec set cannot be planned. Nothing is queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// No bytes.
    #[error("the I/O has no bytes: pass at least one block")]
    ZeroLength,
    /// An empty segment.
    #[error("segment {index} is empty: drop empty iovecs before submitting")]
    ZeroLengthSegment {
        /// Index in the caller's slice.
        index: usize,
    },
    /// The total is not a whole number of blocks.
    #[error(
        "the I/O is {len} bytes, not a multiple of the {lba_size}-byte block size: pad or trim it"
    )]
    LengthNotBlockMultiple {
        /// Total bytes.
        len: u64,
        /// Block size.
        lba_size: u32,
    },
    /// A segment does not start on a 4-byte boundary.
    #[error(
        "segment {index} starts at {iova:#x}, not 4-byte aligned: NVMe needs dword-aligned buffers; align it"
    )]
    SegmentNotDwordAligned {
        /// Index in the caller's slice.
        index: usize,
        /// Its start.
        iova: u64,
    },
    /// A segment's length is not a multiple of 4 bytes.
    #[error("segment {index} is {len} bytes, not a multiple of 4: NVMe needs dword-sized buffers")]
    SegmentLengthNotDwordMultiple {
        /// Index in the caller's slice.
        index: usize,
        /// Its length.
        len: u32,
    },
    /// A segment's bytes run past the end of the 64-bit address space.
    #[error(
        "segment {index} ({len} bytes at {iova:#x}) runs past the end of the address space: it is not a DMA buffer"
    )]
    SegmentWraps {
        /// Index in the caller's slice.
        index: usize,
        /// Its start.
        iova: u64,
        /// Its length.
        len: u32,
    },
    /// The LBA range runs past the namespace.
    #[error(
        "blocks {slba}..{slba}+{blocks} run past the namespace end ({ns_blocks} blocks): check the offset"
    )]
    OutOfRange {
        /// First block.
        slba: u64,
        /// Blocks requested.
        blocks: u64,
        /// Namespace size.
        ns_blocks: u64,
    },
    /// No valid split exists.
    #[error("cannot split the I/O at segment {index}: {reason}")]
    CannotSplit {
        /// Index in the caller's slice of the segment where the split fails.
        index: usize,
        /// Why.
        reason: SplitReason,
    },
}

/// Bytes one command may carry: `min(MDTS, PRP capacity of list_pages list pages)`.
///
/// The PRP capacity is (entries the list pages hold) * page, NOT + 1 page: PRP1 may start
/// mid-page, and then a transfer of k pages spans k + 1 pages, PRP1 plus k entries. With
/// one list page that is `page / 8 * page` (SPDK: 503 pages for its 503-entry lists). With
/// more pages each page after the first gives one slot to the chain pointer, so `n` pages
/// hold `n * (page / 8 - 1) + 1` entries (for `n == 1` exactly the issue's
/// `entries_per_list_page * page`); with no list page only PRP2 is left: one page.
/// The result is capped to the largest page multiple that fits a `u32`.
///
/// QEMU fails a command with more than 1024 mappings (Internal Error, DNR): with 4 KiB pages
/// two list pages (1023 entries + PRP1) is the most it takes.
pub fn max_transfer(mdts_bytes: Option<u64>, page: PageSize, list_pages: usize) -> u32 {
    let per = (page.bytes() / 8) as u64;
    let entries = if list_pages == 0 {
        1
    } else {
        (list_pages as u64)
            .saturating_mul(per - 1)
            .saturating_add(1)
    };
    let prp = entries.saturating_mul(page.bytes() as u64);
    let cap = (u32::MAX as u64 + 1) - page.bytes() as u64;
    prp.min(mdts_bytes.unwrap_or(u64::MAX)).min(cap) as u32
}

/// Plans the commands for `segs` starting at `slba`.
///
/// # Errors
/// See [`PlanError`]; nothing is half-planned.
///
/// The block size need not be a power of two: a transfer that carries each block's
/// metadata in the data buffer (an extended LBA format) plans with blocks of data + metadata
/// bytes (520, 4104, ...), and split points fall on those.
///
/// # Panics
/// If `limits.lba_size` is 0.
#[inline(always)]
pub fn plan(segs: &[Segment], slba: Lba, limits: &Limits) -> Result<Plan, PlanError> {
    assert!(limits.lba_size != 0, "lba_size 0");

    // Fast path: one segment that fits one command.
    if let [s] = segs {
        check_segment(0, s)?;
        let blocks = check_total(s.len as u64, slba, limits)?;
        if fits(slba.0, blocks, s.len as u64, limits) {
            return Ok(Plan::One(Command {
                slba,
                nlb: blocks as u32,
                sgl: false,
                segs: SegRange {
                    first: 0,
                    first_offset: 0,
                    last: 0,
                    last_end: s.len,
                },
            }));
        }
        return plan_slow(segs, slba, blocks, limits);
    }
    plan_multi(segs, slba, limits)
}

/// Several segments: check them all, then one command if the set fits, else split.
#[inline(never)]
fn plan_multi(segs: &[Segment], slba: Lba, limits: &Limits) -> Result<Plan, PlanError> {
    let mask = limits.page.bytes() as u64 - 1;
    let mut total = 0u64;
    let mut prp_ok = true;
    for (i, s) in segs.iter().enumerate() {
        check_segment(i, s)?;
        total += s.len as u64;
        if i > 0 && s.iova.0 & mask != 0
            || i + 1 < segs.len() && (s.iova.0 + s.len as u64) & mask != 0
        {
            prp_ok = false;
        }
    }
    if segs.is_empty() {
        return Err(PlanError::ZeroLength);
    }
    let blocks = check_total(total, slba, limits)?;
    if fits(slba.0, blocks, total, limits) {
        let sgl = match (prp_ok, limits.sgl) {
            (true, _) => Some(false),
            (false, Some(l)) if segs.len() <= l.max_descriptors as usize => Some(true),
            _ => None,
        };
        if let Some(sgl) = sgl {
            return Ok(Plan::One(Command {
                slba,
                nlb: blocks as u32,
                sgl,
                segs: SegRange::whole(segs),
            }));
        }
    }
    plan_slow(segs, slba, blocks, limits)
}

#[inline]
fn check_segment(i: usize, s: &Segment) -> Result<(), PlanError> {
    if s.len == 0 {
        return Err(PlanError::ZeroLengthSegment { index: i });
    }
    if s.iova.0 & 3 != 0 {
        return Err(PlanError::SegmentNotDwordAligned {
            index: i,
            iova: s.iova.0,
        });
    }
    if s.len & 3 != 0 {
        return Err(PlanError::SegmentLengthNotDwordMultiple {
            index: i,
            len: s.len,
        });
    }
    if s.iova.0.checked_add(s.len as u64).is_none() {
        return Err(PlanError::SegmentWraps {
            index: i,
            iova: s.iova.0,
            len: s.len,
        });
    }
    Ok(())
}

/// Checks the total and the range; returns the block count.
#[inline]
fn check_total(total: u64, slba: Lba, limits: &Limits) -> Result<u64, PlanError> {
    let bs = limits.lba_size as u64;
    let (rem, blocks) = if bs.is_power_of_two() {
        (total & (bs - 1), total >> bs.trailing_zeros())
    } else {
        (total % bs, total / bs)
    };
    if rem != 0 {
        return Err(PlanError::LengthNotBlockMultiple {
            len: total,
            lba_size: limits.lba_size,
        });
    }
    match slba.0.checked_add(blocks) {
        Some(end) if end <= limits.ns_blocks => Ok(blocks),
        _ => Err(PlanError::OutOfRange {
            slba: slba.0,
            blocks,
            ns_blocks: limits.ns_blocks,
        }),
    }
}

/// Blocks from `lba` to the next NOIOB boundary (u64::MAX when there is none).
#[inline]
fn noiob_left(lba: u64, noiob: u32) -> u64 {
    match noiob {
        0 => u64::MAX,
        n if n.is_power_of_two() => n as u64 - (lba & (n as u64 - 1)),
        n => n as u64 - lba % n as u64,
    }
}

/// True if one command may carry `blocks` blocks (`bytes` bytes) at `slba`, page rule aside.
#[inline]
fn fits(slba: u64, blocks: u64, bytes: u64, limits: &Limits) -> bool {
    bytes <= limits.max_transfer as u64
        && blocks <= MAX_BLOCKS_PER_COMMAND as u64
        && blocks <= noiob_left(slba, limits.noiob)
}

/// The greedy splitter (out of line: the fast path in [`plan`] stays small). Positions are byte offsets from the start of the transfer; block
/// boundaries are multiples of the block size.
#[cold]
#[inline(never)]
fn plan_slow(segs: &[Segment], slba: Lba, blocks: u64, limits: &Limits) -> Result<Plan, PlanError> {
    let bs = limits.lba_size as u64;
    let total = blocks * bs;
    let mask = limits.page.bytes() as u64 - 1;
    let mt_blocks = limits.max_transfer as u64 / bs;
    if mt_blocks == 0 {
        return Err(PlanError::CannotSplit {
            index: 0,
            reason: SplitReason::MaxTransferBelowBlock,
        });
    }
    let round = |p: u64| p / bs * bs;
    let breaks = |j: usize| {
        let (a, b) = (segs[j], segs[j + 1]);
        (a.iova.0 + a.len as u64) & mask != 0 || b.iova.0 & mask != 0
    };

    let mut out: Vec<Command> = Vec::new();
    // Cursor: segment index, offset in it, byte position, byte position of the segment start.
    let (mut si, mut so, mut pos, mut seg_start) = (0usize, 0u32, 0u64, 0u64);
    while pos < total {
        let lba = slba.0 + pos / bs;
        let cap_blocks = ((total - pos) / bs)
            .min(mt_blocks)
            .min(MAX_BLOCKS_PER_COMMAND as u64)
            .min(noiob_left(lba, limits.noiob));
        let cap_end = pos + cap_blocks * bs;

        // PRP reach: up to the first boundary that breaks the page rule, rounded down to a
        // block; the data after it must start a new command.
        let mut prp_end = cap_end;
        let mut j = si;
        let mut seg_end = seg_start + segs[si].len as u64;
        while seg_end < cap_end {
            if breaks(j) {
                prp_end = round(seg_end);
                break;
            }
            j += 1;
            seg_end += segs[j].len as u64;
        }
        let prp_break_at = j + 1;

        // SGL reach: up to the end of the max_descriptors-th piece, rounded down to a block.
        let sgl_end = match limits.sgl {
            None => 0,
            Some(l) => {
                let d = l.max_descriptors.max(1) as usize;
                let mut k = si;
                let mut end = seg_start + segs[si].len as u64;
                while end < cap_end && k + 1 < si + d {
                    k += 1;
                    end += segs[k].len as u64;
                }
                if end >= cap_end { cap_end } else { round(end) }
            }
        };

        let (end, sgl) = if prp_end > pos && prp_end >= sgl_end {
            (prp_end, false)
        } else if sgl_end > pos {
            (sgl_end, true)
        } else if limits.sgl.is_none() {
            return Err(PlanError::CannotSplit {
                index: prp_break_at,
                reason: SplitReason::PrpBreakInsideBlock,
            });
        } else {
            return Err(PlanError::CannotSplit {
                index: si,
                reason: SplitReason::TooManyDescriptorsInBlock,
            });
        };

        // Find the segment holding byte end - 1.
        let mut k = si;
        let mut kstart = seg_start;
        while kstart + (segs[k].len as u64) < end {
            kstart += segs[k].len as u64;
            k += 1;
        }
        let last_end = (end - kstart) as u32;
        let cmd = Command {
            slba: Lba(lba),
            nlb: ((end - pos) / bs) as u32,
            sgl,
            segs: SegRange {
                first: si,
                first_offset: so,
                last: k,
                last_end,
            },
        };
        if end == total && out.is_empty() {
            return Ok(Plan::One(cmd));
        }
        out.push(cmd);
        if last_end == segs[k].len {
            (si, so, seg_start) = (k + 1, 0, end);
        } else {
            (si, so, seg_start) = (k, last_end, kstart);
        }
        pos = end;
    }
    Ok(Plan::Split(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cmd::Dptr;
    use crate::prp::tests::{VecPages, coalesce, walk as prp_walk};
    use crate::sgl::tests::walk as sgl_walk;
    use proptest::prelude::*;

    const P4K: PageSize = PageSize::SIZE_4K;

    fn limits() -> Limits {
        Limits {
            lba_size: 512,
            page: P4K,
            max_transfer: max_transfer(Some(128 << 10), P4K, 1),
            noiob: 0,
            ns_blocks: 1 << 30,
            sgl: None,
        }
    }

    /// Builds and walks every command as a controller would; returns the byte runs per
    /// command, checking each command's limits and the LBA chain on the way.
    fn execute(segs: &[Segment], slba: u64, l: &Limits, p: &Plan) -> Vec<(u64, u64)> {
        let mut runs = Vec::new();
        let mut next = slba;
        for c in p.commands() {
            assert_eq!(c.slba.0, next, "children concatenate to the parent's LBAs");
            assert!(c.nlb >= 1 && c.nlb <= MAX_BLOCKS_PER_COMMAND);
            let bytes = c.nlb as u64 * l.lba_size as u64;
            assert!(bytes <= l.max_transfer as u64, "{c:?} over max transfer");
            assert!(
                c.nlb as u64 <= noiob_left(c.slba.0, l.noiob),
                "{c:?} crosses NOIOB"
            );
            assert_eq!(c.segs.len(segs), bytes);
            let mut mem = VecPages::new(0x7000_0000, l.page, 64);
            let walked = if c.sgl {
                let lim = l.sgl.expect("SGL command without SGL support");
                assert!(c.segs.last - c.segs.first < lim.max_descriptors as usize);
                let Dptr::Sgl(d) =
                    crate::sgl::build_range(segs, &c.segs, l.page, &mut mem).unwrap()
                else {
                    panic!("not SGL")
                };
                sgl_walk(d, bytes, &mem).unwrap()
            } else {
                let Dptr::Prp { prp1, prp2 } =
                    crate::prp::build_range(segs, &c.segs, l.page, &mut mem).unwrap()
                else {
                    panic!("not PRP")
                };
                prp_walk(prp1, prp2, bytes, l.page, &mem).unwrap()
            };
            runs.extend(walked);
            next += c.nlb as u64;
        }
        coalesce(runs)
    }

    /// Reference: the minimal number of commands, by brute force over block boundaries.
    fn min_commands(segs: &[Segment], slba: u64, l: &Limits) -> Option<usize> {
        let lba = l.lba_size as u64;
        let total: u64 = segs.iter().map(|s| s.len as u64).sum();
        let nb = (total / lba) as usize;
        let ps = l.page.bytes() as u64;
        // Byte ranges of each segment in transfer coordinates.
        let mut starts = vec![0u64];
        for s in segs {
            starts.push(starts.last().unwrap() + s.len as u64);
        }
        let ok = |a: usize, b: usize| -> bool {
            let n = (b - a) as u64;
            let (pa, pb) = (a as u64 * lba, b as u64 * lba);
            if n * lba > l.max_transfer as u64 || n > 65_536 {
                return false;
            }
            if l.noiob != 0 {
                let nio = l.noiob as u64;
                let s = slba + a as u64;
                if (s / nio) != ((s + n - 1) / nio) {
                    return false;
                }
            }
            // Segments touched and their pieces.
            let touched: Vec<usize> = (0..segs.len())
                .filter(|&i| starts[i] < pb && starts[i + 1] > pa)
                .collect();
            let prp = touched.windows(2).all(|w| {
                let (x, y) = (segs[w[0]], segs[w[1]]);
                (x.iova.0 + x.len as u64) % ps == 0 && y.iova.0 % ps == 0
            });
            let sgl = l
                .sgl
                .is_some_and(|s| touched.len() <= s.max_descriptors as usize);
            prp || sgl
        };
        let mut best = vec![usize::MAX; nb + 1];
        best[0] = 0;
        for b in 1..=nb {
            for a in 0..b {
                if best[a] != usize::MAX && ok(a, b) {
                    best[b] = best[b].min(best[a] + 1);
                }
            }
        }
        (best[nb] != usize::MAX).then_some(best[nb])
    }

    #[test]
    fn single_4k_is_one_command() {
        let segs = [Segment::new(0x10_0000, 4096)];
        let p = plan(&segs, Lba(8), &limits()).unwrap();
        assert_eq!(
            p,
            Plan::One(Command {
                slba: Lba(8),
                nlb: 8,
                sgl: false,
                segs: SegRange {
                    first: 0,
                    first_offset: 0,
                    last: 0,
                    last_end: 4096
                }
            })
        );
    }

    #[test]
    fn limits_from_identify() {
        use crate::identify::{IdentifyController, IdentifyNamespace, LbaFormat};
        let mut c = IdentifyController::builder();
        c.set_mdts(7).set_sgls(0b01);
        let mut ns = IdentifyNamespace::builder();
        ns.set_nsze(1000).set_noiob(64).set_lbaf(
            0,
            LbaFormat {
                data_size: 4096,
                ..LbaFormat::default()
            },
        );
        let l = Limits::from_identify(&c, &ns, P4K, P4K, 1, true);
        assert_eq!(
            l,
            Limits {
                lba_size: 4096,
                page: P4K,
                max_transfer: 512 << 10,
                noiob: 64,
                ns_blocks: 1000,
                sgl: Some(SglLimits {
                    max_descriptors: 256
                }),
            }
        );
        assert_eq!(Limits::from_identify(&c, &ns, P4K, P4K, 1, false).sgl, None);
    }

    #[test]
    fn max_transfer_is_not_plus_one_page() {
        assert_eq!(max_transfer(None, P4K, 1), 512 * 4096);
        assert_eq!(max_transfer(Some(512 << 10), P4K, 1), 512 << 10);
        assert_eq!(max_transfer(None, P4K, 0), 4096);
        assert_eq!(max_transfer(None, P4K, 2), (2 * 511 + 1) * 4096);
        assert_eq!(max_transfer(None, P4K, 1 << 20), u32::MAX - 4095);
        // A max-size transfer starting mid-page needs exactly one full list page.
        let mt = max_transfer(None, P4K, 1);
        let segs = [Segment::new(0x10_0200, mt)];
        let mut mem = VecPages::new(0x7000_0000, P4K, 1);
        assert!(crate::prp::build(&segs, P4K, &mut mem).is_ok());
    }

    #[test]
    fn splits_at_max_transfer_and_65536_blocks() {
        let mut l = limits();
        l.max_transfer = 8192;
        let segs = [Segment::new(0x10_0000, 5 * 4096)];
        let p = plan(&segs, Lba(0), &l).unwrap();
        let nlbs: Vec<u32> = p.commands().iter().map(|c| c.nlb).collect();
        assert_eq!(nlbs, [16, 16, 8]);
        assert_eq!(p.commands()[1].segs.first_offset, 8192);
        assert_eq!(execute(&segs, 0, &l, &p), vec![(0x10_0000, 5 * 4096)]);

        let mut l = limits();
        l.max_transfer = u32::MAX - 4095;
        l.lba_size = 512;
        let segs = [Segment::new(0x1000_0000, 65_537 * 512)];
        let p = plan(&segs, Lba(0), &l).unwrap();
        let nlbs: Vec<u32> = p.commands().iter().map(|c| c.nlb).collect();
        assert_eq!(nlbs, [65_536, 1]);
    }

    #[test]
    fn extended_blocks_of_data_and_metadata_split_on_their_own_boundaries() {
        // 520-byte blocks (512 data + 8 metadata) in one buffer, 4 KiB per command: 7 blocks
        // (3640 bytes) fit, children start mid-page at multiples of 520 (dword aligned).
        let mut l = limits();
        l.lba_size = 520;
        l.max_transfer = 4096;
        let segs = [Segment::new(0x10_0000, 16 * 520)];
        let p = plan(&segs, Lba(0), &l).unwrap();
        let shape: Vec<(u64, u32, u32)> = p
            .commands()
            .iter()
            .map(|c| (c.slba.0, c.nlb, c.segs.first_offset))
            .collect();
        assert_eq!(shape, [(0, 7, 0), (7, 7, 3640), (14, 2, 7280)]);
        assert_eq!(execute(&segs, 0, &l, &p), vec![(0x10_0000, 16 * 520)]);
        assert_eq!(
            plan(&[Segment::new(0x10_0000, 1024)], Lba(0), &l),
            Err(PlanError::LengthNotBlockMultiple {
                len: 1024,
                lba_size: 520
            })
        );
        let one = plan(&[Segment::new(0x10_0000, 2 * 520)], Lba(3), &l).unwrap();
        assert!(matches!(one, Plan::One(Command { nlb: 2, .. })));
    }

    #[test]
    fn splits_at_noiob_boundaries() {
        let mut l = limits();
        l.noiob = 16;
        let segs = [Segment::new(0x10_0000, 32 * 512)];
        let p = plan(&segs, Lba(10), &l).unwrap();
        let shape: Vec<(u64, u32)> = p.commands().iter().map(|c| (c.slba.0, c.nlb)).collect();
        assert_eq!(shape, [(10, 6), (16, 16), (32, 10)]);
        // Not a power of two.
        l.noiob = 12;
        let p = plan(&segs, Lba(10), &l).unwrap();
        let shape: Vec<(u64, u32)> = p.commands().iter().map(|c| (c.slba.0, c.nlb)).collect();
        assert_eq!(shape, [(10, 2), (12, 12), (24, 12), (36, 6)]);
    }

    #[test]
    fn splits_where_the_prp_rule_breaks() {
        // Segment 0 ends mid-page at a block boundary: two PRP commands.
        let segs = [
            Segment::new(0x10_0000, 0x600),
            Segment::new(0x20_0000, 0x1000),
        ];
        let p = plan(&segs, Lba(0), &limits()).unwrap();
        assert_eq!(p.len(), 2);
        assert_eq!(p.commands()[0].segs.last, 0);
        assert_eq!(p.commands()[1].segs.first, 1);
        // With SGL the same set is one SGL command.
        let mut l = limits();
        l.sgl = Some(SglLimits {
            max_descriptors: 16,
        });
        let p = plan(&segs, Lba(0), &l).unwrap();
        assert!(matches!(p, Plan::One(Command { sgl: true, .. })));
        assert_eq!(
            execute(&segs, 0, &l, &p),
            vec![(0x10_0000, 0x600), (0x20_0000, 0x1000)]
        );
    }

    #[test]
    fn mid_block_break_without_sgl_is_an_error() {
        let segs = [
            Segment::new(0x10_0000, 0x100),
            Segment::new(0x20_0000, 0x100),
        ];
        let e = plan(&segs, Lba(0), &limits()).unwrap_err();
        assert_eq!(
            e,
            PlanError::CannotSplit {
                index: 1,
                reason: SplitReason::PrpBreakInsideBlock
            }
        );
        assert!(e.to_string().contains("segment 1"));
        let mut l = limits();
        l.sgl = Some(SglLimits { max_descriptors: 1 });
        assert_eq!(
            plan(&segs, Lba(0), &l).unwrap_err(),
            PlanError::CannotSplit {
                index: 0,
                reason: SplitReason::TooManyDescriptorsInBlock
            }
        );
        l.sgl = Some(SglLimits { max_descriptors: 2 });
        assert!(matches!(
            plan(&segs, Lba(0), &l),
            Ok(Plan::One(Command { sgl: true, .. }))
        ));
    }

    #[test]
    fn input_errors() {
        let l = limits();
        assert_eq!(plan(&[], Lba(0), &l), Err(PlanError::ZeroLength));
        assert_eq!(
            plan(&[Segment::new(0x1000, 0)], Lba(0), &l),
            Err(PlanError::ZeroLengthSegment { index: 0 })
        );
        assert_eq!(
            plan(
                &[Segment::new(0x1000, 512), Segment::new(0x2002, 512)],
                Lba(0),
                &l
            ),
            Err(PlanError::SegmentNotDwordAligned {
                index: 1,
                iova: 0x2002
            })
        );
        assert_eq!(
            plan(&[Segment::new(0x1000, 510)], Lba(0), &l),
            Err(PlanError::SegmentLengthNotDwordMultiple { index: 0, len: 510 })
        );
        assert_eq!(
            plan(&[Segment::new(0x1000, 1024 + 256)], Lba(0), &l),
            Err(PlanError::LengthNotBlockMultiple {
                len: 1280,
                lba_size: 512
            })
        );
        assert_eq!(
            plan(&[Segment::new(0x1000, 1024)], Lba((1 << 30) - 1), &l),
            Err(PlanError::OutOfRange {
                slba: (1 << 30) - 1,
                blocks: 2,
                ns_blocks: 1 << 30
            })
        );
        assert!(plan(&[Segment::new(0x1000, 1024)], Lba(u64::MAX), &l).is_err());
    }

    /// Random segment shapes: each segment either page-aligned at both ends or with a
    /// random dword offset/length, so PRP breaks land on and off block boundaries.
    fn arb_case() -> impl Strategy<Value = (Vec<Segment>, u64, Limits)> {
        let seg = (any::<bool>(), 0u64..1024, 1u32..4, 1u32..3000);
        (
            proptest::collection::vec(seg, 1..7),
            prop_oneof![Just(512u32), Just(4096u32)],
            prop_oneof![Just(4096u32), Just(8192), Just(16384), Just(64 << 10)],
            prop_oneof![Just(0u32), Just(4), Just(8), Just(12), Just(32)],
            prop_oneof![
                Just(None),
                (1u32..5).prop_map(|d| Some(SglLimits { max_descriptors: d }))
            ],
            0u64..64,
            prop_oneof![3 => Just(P4K), 1 => Just(PageSize::new(16384).unwrap())],
        )
            .prop_map(|(shapes, lba, mt, noiob, sgl, slba, page)| {
                let mut segs: Vec<Segment> = shapes
                    .iter()
                    .enumerate()
                    .map(|(k, &(aligned, off, pages, len))| {
                        let base = 0x1_0000_0000 + k as u64 * 0x100_0000;
                        if aligned {
                            Segment::new(base, pages * 4096)
                        } else {
                            Segment::new(base + off * 4, len * 4)
                        }
                    })
                    .collect();
                // Pad the last segment to a whole number of blocks.
                let total: u64 = segs.iter().map(|s| s.len as u64).sum();
                let pad = (lba as u64 - total % lba as u64) % lba as u64;
                segs.last_mut().unwrap().len += pad as u32;
                let l = Limits {
                    lba_size: lba,
                    page,
                    max_transfer: mt.max(lba),
                    noiob,
                    ns_blocks: 1 << 20,
                    sgl,
                };
                (segs, slba, l)
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn plans_cover_exactly_the_bytes_with_the_fewest_commands((segs, slba, l) in arb_case()) {
            let want = coalesce(segs.iter().map(|s| (s.iova.0, s.len as u64)));
            match (plan(&segs, Lba(slba), &l), min_commands(&segs, slba, &l)) {
                (Ok(p), Some(min)) => {
                    prop_assert_eq!(execute(&segs, slba, &l, &p), want);
                    let total: u64 = segs.iter().map(|s| s.len as u64).sum();
                    let nlb: u64 = p.commands().iter().map(|c| c.nlb as u64).sum();
                    prop_assert_eq!(nlb * l.lba_size as u64, total);
                    prop_assert_eq!(p.len(), min, "not minimal: {:?}", p);
                    prop_assert_eq!(matches!(p, Plan::One(_)), min == 1);
                }
                (Err(PlanError::CannotSplit { .. }), None) => {}
                (r, m) => prop_assert!(false, "plan {:?} but reference minimum {:?}", r, m),
            }
        }

        #[test]
        fn chained_prp_lists_cover_the_bytes(
            first_off in 0u64..1024,
            first_pages in 1u64..700,
            mids in proptest::collection::vec(1u32..400, 0..3),
            noiob in prop_oneof![Just(0u32), Just(256), Just(700)],
        ) {
            // Long transfers with two list pages per command: children chain their lists.
            let mut segs = vec![Segment::new(
                0x1_0000_0000 + first_off * 4,
                (first_pages * 4096 - first_off * 4) as u32,
            )];
            for (k, m) in mids.iter().enumerate() {
                segs.push(Segment::new(0x4_0000_0000 + k as u64 * 0x1000_0000, m * 4096));
            }
            let total: u64 = segs.iter().map(|s| s.len as u64).sum();
            let pad = (512 - total % 512) % 512;
            segs.last_mut().unwrap().len += pad as u32;
            let l = Limits {
                lba_size: 512,
                page: P4K,
                max_transfer: max_transfer(None, P4K, 2),
                noiob,
                ns_blocks: 1 << 40,
                sgl: None,
            };
            let p = plan(&segs, Lba(3), &l).unwrap();
            let want = coalesce(segs.iter().map(|s| (s.iova.0, s.len as u64)));
            prop_assert_eq!(execute(&segs, 3, &l, &p), want);
            let total: u64 = segs.iter().map(|s| s.len as u64).sum();
            if noiob == 0 {
                prop_assert_eq!(p.len() as u64, total.div_ceil(l.max_transfer as u64));
            }
        }

        #[test]
        fn fast_path_whenever_the_set_fits(
            first_off in 0u64..1024,
            mids in proptest::collection::vec(1u32..3, 0..3),
            blocks_last in 1u32..8,
            slba in 0u64..1000,
        ) {
            // A PRP-valid set within the limits is always exactly one PRP command.
            let mut segs = vec![Segment::new(0x10_0000 + first_off * 4, 4096 - (first_off as u32 * 4))];
            for (k, m) in mids.iter().enumerate() {
                segs.push(Segment::new(0x2000_0000 + k as u64 * 0x10_0000, m * 4096));
            }
            segs.push(Segment::new(0x9000_0000, blocks_last * 512));
            let total: u64 = segs.iter().map(|s| s.len as u64).sum();
            let pad = (512 - total % 512) % 512;
            segs.last_mut().unwrap().len += pad as u32;
            let l = limits();
            let p = plan(&segs, Lba(slba), &l).unwrap();
            prop_assert!(matches!(p, Plan::One(Command { sgl: false, .. })), "{:?}", p);
            prop_assert_eq!(p.commands()[0].segs, SegRange::whole(&segs));
        }
    }
}
