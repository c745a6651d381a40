//! The `plan_prp_sgl` target: arbitrary iovec sets and limits through `plan::plan`, then
//! every planned command through `prp::build_range` / `sgl::build_range` and the reference
//! walkers of [`crate::walk`].
//!
//! What the planner promises (queue/src/plan.rs and STYLE.md section 6), checked here:
//! - an error names something really wrong with the input, and a valid input only fails
//!   with `CannotSplit` (and, for small inputs, only when a brute-force search finds no plan);
//! - a plan's commands build without error into the list pages the limits allow, and the
//!   controller's walk of each covers exactly that command's share of the caller's bytes, in
//!   order; the shares concatenate to the whole transfer;
//! - LBAs are contiguous from `slba`; each command carries 1 ..= 65 536 blocks and at most
//!   `max_transfer` bytes, and never crosses a NOIOB boundary (no exception: the planner caps
//!   every command at the boundary);
//! - SGL commands only when the limits allow SGLs, with at most `max_descriptors` pieces;
//! - `Plan::One` exactly when there is one command, and (small inputs) the fewest commands
//!   any valid split achieves: the planner's docs claim greedy is minimal.

use arbitrary::Arbitrary;
use nvme_dio_queue::plan::{
    self, Limits, MAX_BLOCKS_PER_COMMAND, Plan, PlanError, SglLimits, SplitReason,
};
use nvme_dio_queue::prp::Segment;
use nvme_dio_queue::{Dptr, Lba, PageSize, prp, sgl};

use crate::walk::{self, ListMem};

/// Bytes above which an input is skipped (walking costs one step per page).
const MAX_TOTAL: u64 = 96 << 20;

/// One iovec as the fuzzer describes it.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum SegIn {
    /// Any address and length (mostly invalid: alignment, overflow).
    Raw {
        /// IOVA.
        iova: u64,
        /// Bytes.
        len: u32,
    },
    /// Dword aligned, somewhere in page `page` (of 64 KiB slots, so segments rarely touch).
    Dwords {
        /// 64 KiB slot index.
        page: u32,
        /// Start, in dwords from the slot start.
        start: u16,
        /// Length in dwords (+1).
        len: u16,
    },
    /// Whole pages of the configured page size at page index `page`.
    Pages {
        /// First page index (times the page size).
        page: u32,
        /// Pages (+1).
        count: u8,
    },
    /// Starts mid-page, ends on a page boundary (a valid first PRP segment).
    Head {
        /// Page index of the end.
        page: u32,
        /// Dwords before the end (+1).
        dwords: u16,
    },
    /// Starts on a page boundary, ends anywhere dword aligned (a valid last PRP segment).
    Tail {
        /// Page index of the start.
        page: u32,
        /// Length in dwords (+1).
        dwords: u32,
    },
    /// A big run of blocks (to reach MDTS, 65 536 blocks and list chaining).
    Big {
        /// Page index of the start.
        page: u16,
        /// Offset within the page, in dwords.
        offset: u16,
        /// Length in 4 KiB units (+1).
        units: u16,
    },
}

/// NOIOB as the fuzzer picks it.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum NoiobIn {
    /// No boundary.
    None,
    /// `1 << (shift % 17)` blocks.
    Pow2(u8),
    /// What Identify can say (16 bits, maybe not a power of two).
    Raw(u16),
    /// Wider than Identify can say (the planner takes a u32).
    Wide(u32),
}

/// The whole input.
#[derive(Arbitrary, Debug, Clone)]
pub struct PlanInput {
    /// Block size: `1 << (9 + lba_shift % 8)` (512 ..= 64 KiB).
    pub lba_shift: u8,
    /// Page: 4 KiB, 8 KiB or 64 KiB.
    pub page: u8,
    /// List pages per command: `list_pages % 5`.
    pub list_pages: u8,
    /// MDTS as `4 KiB << mdts` (`None`: no limit).
    pub mdts: Option<u8>,
    /// A further cap on the max transfer (any value: the planner must cope).
    pub mt_cap: Option<u32>,
    /// NOIOB.
    pub noiob: NoiobIn,
    /// First block.
    pub slba: u64,
    /// Namespace size: `slba + blocks + k` for `Some(k)`, else `raw_ns_blocks`.
    pub ns_slack: Option<u16>,
    /// Namespace size when `ns_slack` is `None`.
    pub raw_ns_blocks: u64,
    /// SGL support: `Some(requested max descriptors)`, capped at what the list pages hold.
    pub sgl: Option<u16>,
    /// Pad the last segment to a whole number of blocks.
    pub pad: bool,
    /// The iovecs.
    pub segs: Vec<SegIn>,
}

/// Builds the segments and limits the input describes; `None` when it is too big to walk.
pub fn materialize(inp: &PlanInput) -> Option<(Vec<Segment>, Lba, Limits)> {
    let lba_size = 1u32 << (9 + inp.lba_shift % 8);
    let page = match inp.page % 3 {
        0 => PageSize::SIZE_4K,
        1 => PageSize::new(8192).unwrap(),
        _ => PageSize::new(64 << 10).unwrap(),
    };
    let ps = page.bytes() as u64;
    let list_pages = (inp.list_pages % 5) as usize;
    if inp.segs.len() > 1100 {
        return None;
    }
    let mut segs: Vec<Segment> = inp
        .segs
        .iter()
        .map(|s| match *s {
            SegIn::Raw { iova, len } => Segment::new(iova, len),
            SegIn::Dwords { page, start, len } => Segment::new(
                ((page as u64) << 16) + start as u64 * 4,
                (len as u32 + 1) * 4,
            ),
            SegIn::Pages { page, count } => {
                Segment::new(page as u64 * ps, ((count as u64 + 1) * ps) as u32)
            }
            SegIn::Head { page, dwords } => {
                let n = (dwords as u64 % (ps / 4)) + 1;
                Segment::new((page as u64 + 1) * ps - n * 4, (n * 4) as u32)
            }
            SegIn::Tail { page, dwords } => {
                Segment::new(page as u64 * ps, (dwords % (1 << 22) + 1) * 4)
            }
            SegIn::Big {
                page,
                offset,
                units,
            } => Segment::new(
                (page as u64 + 1) * (1 << 26) + (offset as u64 * 4) % ps,
                (units as u32 + 1) * 4096,
            ),
        })
        .collect();
    let total: u64 = segs.iter().map(|s| s.len as u64).sum();
    if inp.pad {
        let pad = (lba_size as u64 - total % lba_size as u64) % lba_size as u64;
        if let Some(last) = segs.last_mut() {
            last.len = last.len.checked_add(pad as u32)?;
        }
    }
    let total: u64 = segs.iter().map(|s| s.len as u64).sum();
    if total > MAX_TOTAL {
        return None;
    }
    let mdts = inp.mdts.map(|m| 4096u64 << (m % 24));
    let mut max_transfer = plan::max_transfer(mdts, page, list_pages);
    if let Some(c) = inp.mt_cap {
        max_transfer = max_transfer.min(c);
    }
    let noiob = match inp.noiob {
        NoiobIn::None => 0,
        NoiobIn::Pow2(s) => 1 << (s % 17),
        NoiobIn::Raw(n) => n as u32,
        NoiobIn::Wide(n) => n,
    };
    let blocks = total / lba_size as u64;
    let ns_blocks = match inp.ns_slack {
        Some(k) => inp.slba.saturating_add(blocks).saturating_add(k as u64),
        None => inp.raw_ns_blocks,
    };
    let sgl = inp.sgl.map(|d| SglLimits {
        max_descriptors: (d as u32).clamp(1, sgl::max_descriptors(list_pages, page)),
    });
    let limits = Limits {
        lba_size,
        page,
        max_transfer,
        noiob,
        ns_blocks,
        sgl,
    };
    Some((segs, Lba(inp.slba), limits))
}

/// Runs the planner on `inp` and checks every promise; panics on a broken one.
pub fn check(inp: &PlanInput) {
    let Some((segs, slba, limits)) = materialize(inp) else {
        return;
    };
    let list_pages = (inp.list_pages % 5) as usize;
    check_plan(&segs, slba, &limits, list_pages);
}

/// The checks, on concrete segments and limits.
pub fn check_plan(segs: &[Segment], slba: Lba, limits: &Limits, list_pages: usize) {
    let result = plan::plan(segs, slba, limits);
    let reference = small(segs, slba, limits).then(|| min_commands(segs, slba.0, limits));
    match &result {
        Err(e) => check_error(e, segs, slba, limits, reference),
        Ok(p) => {
            check_commands(p, segs, slba, limits, list_pages);
            if let Some(r) = reference {
                assert_eq!(
                    Some(p.len()),
                    r,
                    "plan is not minimal (or the reference is wrong): {p:?} for {segs:?} {limits:?}"
                );
            }
        }
    }
}

/// The input mistakes a planner must refuse, in no particular order.
fn input_faults(segs: &[Segment], slba: Lba, limits: &Limits) -> Vec<PlanError> {
    let mut v = Vec::new();
    if segs.is_empty() {
        v.push(PlanError::ZeroLength);
    }
    for (index, s) in segs.iter().enumerate() {
        if s.len == 0 {
            v.push(PlanError::ZeroLengthSegment { index });
        }
        if s.iova.0 & 3 != 0 {
            v.push(PlanError::SegmentNotDwordAligned {
                index,
                iova: s.iova.0,
            });
        }
        if s.len & 3 != 0 {
            v.push(PlanError::SegmentLengthNotDwordMultiple { index, len: s.len });
        }
        if s.iova.0.checked_add(s.len as u64).is_none() {
            v.push(PlanError::SegmentWraps {
                index,
                iova: s.iova.0,
                len: s.len,
            });
        }
    }
    let total: u64 = segs.iter().map(|s| s.len as u64).sum();
    if !total.is_multiple_of(limits.lba_size as u64) {
        v.push(PlanError::LengthNotBlockMultiple {
            len: total,
            lba_size: limits.lba_size,
        });
    } else {
        let blocks = total / limits.lba_size as u64;
        if slba.0 as u128 + blocks as u128 > limits.ns_blocks as u128 {
            v.push(PlanError::OutOfRange {
                slba: slba.0,
                blocks,
                ns_blocks: limits.ns_blocks,
            });
        }
    }
    v
}

fn check_error(
    e: &PlanError,
    segs: &[Segment],
    slba: Lba,
    limits: &Limits,
    reference: Option<Option<usize>>,
) {
    let faults = input_faults(segs, slba, limits);
    match e {
        PlanError::CannotSplit { index, reason } => {
            assert!(
                faults.is_empty(),
                "CannotSplit ({reason:?}) although the input has a plain fault {faults:?}"
            );
            assert!(
                *index < segs.len(),
                "CannotSplit names segment {index} of {}",
                segs.len()
            );
            match reason {
                SplitReason::MaxTransferBelowBlock => {
                    assert!(
                        limits.max_transfer < limits.lba_size,
                        "{e:?} but {limits:?}"
                    )
                }
                SplitReason::PrpBreakInsideBlock => {
                    assert!(limits.sgl.is_none(), "{e:?} with SGLs allowed")
                }
                SplitReason::TooManyDescriptorsInBlock => {
                    assert!(limits.sgl.is_some(), "{e:?} without SGLs")
                }
            }
            if let Some(r) = reference {
                assert_eq!(
                    r, None,
                    "CannotSplit ({e:?}) but a {r:?}-command plan exists for {segs:?} {limits:?}"
                );
            }
        }
        other => assert!(
            faults.contains(other),
            "error {other:?} does not describe the input (its faults: {faults:?})"
        ),
    }
}

/// The bytes `[from, to)` of the transfer as `(iova, len)` runs of the caller's segments.
fn expected_runs(segs: &[Segment], from: u64, to: u64) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut at = 0u64;
    for s in segs {
        let (a, b) = (at, at + s.len as u64);
        let (lo, hi) = (a.max(from), b.min(to));
        if lo < hi {
            out.push((s.iova.0.wrapping_add(lo - a), hi - lo));
        }
        at = b;
    }
    walk::coalesce(out)
}

fn check_commands(p: &Plan, segs: &[Segment], slba: Lba, limits: &Limits, list_pages: usize) {
    let cmds = p.commands();
    assert!(!cmds.is_empty(), "a plan without commands");
    assert_eq!(
        matches!(p, Plan::One(_)),
        cmds.len() == 1,
        "Plan::One iff one command: {p:?}"
    );
    assert!(
        input_faults(segs, slba, limits).is_empty(),
        "planned an invalid input: {p:?}"
    );
    let lba = limits.lba_size as u64;
    let total: u64 = segs.iter().map(|s| s.len as u64).sum();
    let mut next = slba.0;
    let mut pos = 0u64;
    for c in cmds {
        assert_eq!(c.slba.0, next, "LBAs not contiguous: {p:?}");
        assert!(
            (1..=MAX_BLOCKS_PER_COMMAND).contains(&c.nlb),
            "NLB {} out of 1..=65536",
            c.nlb
        );
        let bytes = c.nlb as u64 * lba;
        assert!(
            bytes <= limits.max_transfer as u64,
            "{c:?} carries {bytes} bytes, max transfer {}",
            limits.max_transfer
        );
        if limits.noiob != 0 {
            let n = limits.noiob as u64;
            assert_eq!(
                c.slba.0 / n,
                (c.slba.0 + c.nlb as u64 - 1) / n,
                "{c:?} crosses a NOIOB ({n}) boundary"
            );
        }
        assert!(
            c.segs.last < segs.len() && c.segs.first <= c.segs.last,
            "{c:?} names segments outside the {} given",
            segs.len()
        );
        assert_eq!(
            c.segs.len(segs),
            bytes,
            "{c:?}: its range holds other than nlb blocks"
        );
        let pieces = c.segs.last - c.segs.first + 1;
        let mut mem = ListMem::new(limits.page, list_pages);
        let runs = if c.sgl {
            let l = limits.sgl.expect("an SGL command without SGL support");
            assert!(
                pieces <= l.max_descriptors as usize,
                "{c:?}: {pieces} descriptors > {l:?}"
            );
            match sgl::build_range(segs, &c.segs, limits.page, &mut mem) {
                Ok(Dptr::Sgl(d)) => walk::sgl(d, bytes, &mem),
                other => panic!("planned SGL command {c:?} does not build: {other:?}"),
            }
        } else {
            match prp::build_range(segs, &c.segs, limits.page, &mut mem) {
                Ok(Dptr::Prp { prp1, prp2 }) => walk::prp(prp1, prp2, bytes, limits.page, &mem),
                other => panic!("planned PRP command {c:?} does not build: {other:?}"),
            }
        };
        let runs = runs.unwrap_or_else(|e| panic!("controller rejects planned {c:?}: {e}"));
        assert_eq!(
            walk::coalesce(runs),
            expected_runs(segs, pos, pos + bytes),
            "{c:?} moves other bytes than bytes {pos}..{} of the transfer",
            pos + bytes
        );
        next += c.nlb as u64;
        pos += bytes;
    }
    assert_eq!(pos, total, "the plan carries {pos} of {total} bytes");
}

/// Small enough for the brute-force reference.
fn small(segs: &[Segment], slba: Lba, limits: &Limits) -> bool {
    let total: u64 = segs.iter().map(|s| s.len as u64).sum();
    segs.len() <= 24
        && total / (limits.lba_size as u64) <= 96
        && input_faults(segs, slba, limits).is_empty()
}

/// The fewest commands of any valid split at block boundaries (None: no valid split),
/// by dynamic programming over block boundaries.
fn min_commands(segs: &[Segment], slba: u64, l: &Limits) -> Option<usize> {
    let lba = l.lba_size as u64;
    let ps = l.page.bytes() as u128;
    let total: u64 = segs.iter().map(|s| s.len as u64).sum();
    let nb = (total / lba) as usize;
    let mut starts = vec![0u64];
    for s in segs {
        starts.push(starts.last().unwrap() + s.len as u64);
    }
    let ok = |a: usize, b: usize| -> bool {
        let n = (b - a) as u64;
        if n * lba > l.max_transfer as u64 || n > MAX_BLOCKS_PER_COMMAND as u64 {
            return false;
        }
        if l.noiob != 0 {
            let nio = l.noiob as u128;
            let s = slba as u128 + a as u128;
            if s / nio != (s + n as u128 - 1) / nio {
                return false;
            }
        }
        let (pa, pb) = (a as u64 * lba, b as u64 * lba);
        let touched: Vec<usize> = (0..segs.len())
            .filter(|&i| starts[i] < pb && starts[i + 1] > pa)
            .collect();
        let prp_ok = touched.windows(2).all(|w| {
            let (x, y) = (segs[w[0]], segs[w[1]]);
            (x.iova.0 as u128 + x.len as u128).is_multiple_of(ps)
                && (y.iova.0 as u128).is_multiple_of(ps)
        });
        let sgl_ok = l
            .sgl
            .is_some_and(|s| touched.len() <= s.max_descriptors as usize);
        prp_ok || sgl_ok
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

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            lba_size: 512,
            page: PageSize::SIZE_4K,
            max_transfer: plan::max_transfer(Some(128 << 10), PageSize::SIZE_4K, 1),
            noiob: 0,
            ns_blocks: 1 << 20,
            sgl: None,
        }
    }

    #[test]
    fn the_checks_pass_on_known_good_and_bad_sets() {
        let l = limits();
        check_plan(
            &[
                Segment::new(0x10_0200, 0x3e00),
                Segment::new(0x20_0000, 0x2000),
            ],
            Lba(5),
            &l,
            1,
        );
        // PRP break on a block boundary: split.
        check_plan(
            &[
                Segment::new(0x10_0000, 0x600),
                Segment::new(0x20_0000, 0x1000),
            ],
            Lba(0),
            &l,
            1,
        );
        // Break inside a block: CannotSplit, and the reference agrees.
        check_plan(
            &[
                Segment::new(0x10_0000, 0x100),
                Segment::new(0x20_0000, 0x100),
            ],
            Lba(0),
            &l,
            1,
        );
        let sgl = Limits {
            sgl: Some(SglLimits { max_descriptors: 2 }),
            noiob: 3,
            ..l
        };
        check_plan(
            &[
                Segment::new(0x10_0000, 0x100),
                Segment::new(0x20_0000, 0x700),
            ],
            Lba(2),
            &sgl,
            1,
        );
        check_plan(&[Segment::new(0x1002, 0x200)], Lba(0), &l, 1);
        check_plan(&[], Lba(0), &l, 1);
    }
}
