//! Cutting the commands without a data transfer (Verify, Write Zeroes) and the range-list
//! commands (Dataset Management, Copy) at the controller's limits: pure functions, each
//! command of the result within every limit, the whole covering exactly the input in order.

/// Cuts `blocks` blocks at `slba` into pieces of at most `max` blocks: `(slba, blocks)`.
///
/// # Panics
/// If `max` is 0.
pub fn split_blocks(slba: u64, blocks: u64, max: u64) -> Vec<(u64, u32)> {
    assert!(max > 0, "max 0");
    let mut out = Vec::new();
    let mut at = 0;
    while at < blocks {
        let n = (blocks - at).min(max);
        out.push((slba + at, n as u32));
        at += n;
    }
    out
}

/// Limits of one Dataset Management command (CNS 06h: DMRL, DMRSL, DMSL; 256 ranges when
/// none is reported).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DsmLimits {
    /// Ranges per command (1 ..= 256).
    pub ranges: u32,
    /// Blocks per range (DMRSL), `u32::MAX` when not reported.
    pub range_blocks: u32,
    /// Blocks per command (DMSL), `u64::MAX` when not reported.
    pub blocks: u64,
}

/// Cuts deallocate ranges `(slba, blocks)` into commands, each within `l`.
pub fn split_dsm(ranges: &[(u64, u32)], l: DsmLimits) -> Vec<Vec<(u64, u32)>> {
    let per_range = l
        .range_blocks
        .max(1)
        .min(l.blocks.min(u32::MAX as u64) as u32)
        .max(1);
    let mut out: Vec<Vec<(u64, u32)>> = Vec::new();
    let mut cur: Vec<(u64, u32)> = Vec::new();
    let mut cur_blocks = 0u64;
    for &(slba, n) in ranges {
        for (s, k) in split_blocks(slba, n as u64, per_range as u64) {
            if !cur.is_empty()
                && (cur.len() as u32 >= l.ranges.clamp(1, 256) || cur_blocks + k as u64 > l.blocks)
            {
                out.push(std::mem::take(&mut cur));
                cur_blocks = 0;
            }
            cur.push((s, k));
            cur_blocks += k as u64;
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// Limits of one Copy command (Identify Namespace MSSRL, MCL, MSRC).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CopyCut {
    /// Blocks per source range (MSSRL), at most 65 536.
    pub range_blocks: u32,
    /// Blocks per command (MCL).
    pub blocks: u64,
    /// Source ranges per command (MSRC + 1), 1 ..= 256.
    pub ranges: u16,
}

/// One Copy command of a cut: its destination and its source ranges, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CopyPiece {
    /// Destination of its first block.
    pub sdlba: u64,
    /// Source ranges `(slba, blocks)`.
    pub ranges: Vec<(u64, u32)>,
}

/// Cuts a copy of `ranges` (in order) to consecutive blocks from `sdlba` into commands,
/// each within `l`.
pub fn split_copy(ranges: &[(u64, u32)], sdlba: u64, l: CopyCut) -> Vec<CopyPiece> {
    let per_range = (l.range_blocks.clamp(1, 65_536) as u64).min(l.blocks.max(1));
    let mut out: Vec<CopyPiece> = Vec::new();
    let mut dest = sdlba;
    let mut cur = CopyPiece {
        sdlba,
        ranges: Vec::new(),
    };
    let mut cur_blocks = 0u64;
    for &(slba, n) in ranges {
        for (s, k) in split_blocks(slba, n as u64, per_range) {
            if !cur.ranges.is_empty()
                && (cur.ranges.len() >= l.ranges.clamp(1, 256) as usize
                    || cur_blocks + k as u64 > l.blocks)
            {
                let next = CopyPiece {
                    sdlba: dest,
                    ranges: Vec::new(),
                };
                out.push(std::mem::replace(&mut cur, next));
                cur_blocks = 0;
            }
            cur.ranges.push((s, k));
            cur_blocks += k as u64;
            dest += k as u64;
        }
    }
    if !cur.ranges.is_empty() {
        out.push(cur);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_cut_at_the_limit() {
        assert_eq!(split_blocks(10, 5, 2), [(10, 2), (12, 2), (14, 1)]);
        assert_eq!(split_blocks(0, 4, 8), [(0, 4)]);
    }

    #[test]
    fn dsm_cut_at_range_size_range_count_and_total() {
        let l = DsmLimits {
            ranges: 2,
            range_blocks: 100,
            blocks: 250,
        };
        let got = split_dsm(&[(0, 250), (1000, 10), (2000, 1)], l);
        assert_eq!(
            got,
            vec![
                vec![(0, 100), (100, 100)],
                vec![(200, 50), (1000, 10)],
                vec![(2000, 1)]
            ]
        );
        let none = DsmLimits {
            ranges: 256,
            range_blocks: u32::MAX,
            blocks: u64::MAX,
        };
        assert_eq!(
            split_dsm(&[(0, 7), (9, 1)], none),
            vec![vec![(0, 7), (9, 1)]]
        );
        for cmd in split_dsm(
            &[(5, 1000)],
            DsmLimits {
                ranges: 3,
                range_blocks: 64,
                blocks: 150,
            },
        ) {
            assert!(cmd.len() <= 3 && cmd.iter().all(|r| r.1 <= 64));
            assert!(cmd.iter().map(|r| r.1 as u64).sum::<u64>() <= 150);
        }
    }

    #[test]
    fn copy_cut_at_mssrl_msrc_and_mcl_with_moving_destinations() {
        let l = CopyCut {
            range_blocks: 128,
            blocks: 200,
            ranges: 2,
        };
        let got = split_copy(&[(0, 300), (1000, 8)], 5000, l);
        assert_eq!(
            got,
            vec![
                CopyPiece {
                    sdlba: 5000,
                    ranges: vec![(0, 128)]
                },
                CopyPiece {
                    sdlba: 5128,
                    ranges: vec![(128, 128), (256, 44)]
                },
                CopyPiece {
                    sdlba: 5300,
                    ranges: vec![(1000, 8)]
                },
            ]
        );
        let total: u64 = got.iter().flat_map(|p| &p.ranges).map(|r| r.1 as u64).sum();
        assert_eq!(total, 308);
    }
}
