//! What the benchmark writes and how reads are checked, the offsets it picks, and the shape
//! of an I/O's iovec set.
//!
//! ## Verify pattern
//!
//! Every block written carries its own LBA (bytes 0..8, little endian), the run's seed
//! (8..16) and then a pseudo-random stream derived from both. The content depends only on
//! (LBA, seed), never on which write put it there, so concurrent writes of the same block
//! (several queues, random offsets) all write the same bytes and a read racing a write sees
//! the same data either way. What it catches: data from another block (misdirected or
//! misplaced I/O, wrong PRP), stale or never-written blocks (the working set is written
//! first, so a zero block is a lost write), torn or corrupted bytes.

/// SplitMix64: a fast, well-mixed 64-bit generator (offsets and the verify stream).
#[derive(Clone, Copy, Debug)]
pub struct Rng(pub u64);

impl Rng {
    /// The next 64 random bits.
    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (n > 0), by multiply-shift (no division on the hot path).
    #[inline]
    pub fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }
}

/// Fills `buf` (a whole number of `lba_size` blocks) with the pattern of the blocks from
/// `first_lba`.
pub fn fill(buf: &mut [u8], first_lba: u64, lba_size: usize, seed: u64) {
    for (i, block) in buf.chunks_exact_mut(lba_size).enumerate() {
        let lba = first_lba + i as u64;
        let mut rng = Rng(lba.wrapping_mul(0x2545_f491_4f6c_dd1d) ^ seed);
        for (j, w) in block.chunks_exact_mut(8).enumerate() {
            let v = match j {
                0 => lba,
                1 => seed,
                _ => rng.next_u64(),
            };
            w.copy_from_slice(&v.to_le_bytes());
        }
    }
}

/// A block that did not hold what was written to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mismatch {
    /// The block.
    pub lba: u64,
    /// First differing byte within the block.
    pub offset: usize,
    /// Expected byte.
    pub expected: u8,
    /// Byte read.
    pub got: u8,
    /// The LBA the block claims to be (its first 8 bytes).
    pub claims_lba: u64,
    /// The whole block read as zeroes: never written, or the device keeps no data.
    pub zeroes: bool,
}

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "LBA {} byte {}: expected {:#04x}, read {:#04x}{}",
            self.lba,
            self.offset,
            self.expected,
            self.got,
            if self.zeroes {
                " (the whole block reads as zeroes: it was never written, or the device keeps no data)".to_string()
            } else if self.claims_lba != self.lba {
                format!(
                    " (the block's header names LBA {}: data from another block?)",
                    self.claims_lba
                )
            } else {
                String::new()
            }
        )
    }
}

/// Checks `buf` against the pattern of the blocks from `first_lba`, using `scratch` (same
/// length) for the expected bytes. Returns the mismatching blocks (first byte of each).
pub fn check(
    buf: &[u8],
    first_lba: u64,
    lba_size: usize,
    seed: u64,
    scratch: &mut [u8],
) -> Vec<Mismatch> {
    fill(scratch, first_lba, lba_size, seed);
    let mut out = Vec::new();
    for (i, (got, want)) in buf
        .chunks_exact(lba_size)
        .zip(scratch.chunks_exact(lba_size))
        .enumerate()
    {
        if got != want {
            let offset = got.iter().zip(want).position(|(a, b)| a != b).unwrap_or(0);
            out.push(Mismatch {
                lba: first_lba + i as u64,
                offset,
                expected: want[offset],
                got: got[offset],
                claims_lba: u64::from_le_bytes(
                    got[..8].try_into().expect("blocks are at least 512 bytes"),
                ),
                zeroes: got.iter().all(|&b| b == 0),
            });
        }
    }
    out
}

/// The segments of one I/O: `(offset into its own page-aligned buffer, length)` each.
///
/// `io_size` is cut into `n` whole-block pieces (the last takes the remainder). Segment 0
/// starts page aligned; segment i > 0 starts `512 * ((i - 1) % 7 + 1)` bytes into its
/// page. Every boundary between segments therefore breaks the PRP rule (only the first
/// segment may start off a page boundary), at a block boundary, so without SGLs the
/// planner must split the I/O into `n` commands, one per segment; with SGLs it may go out
/// as one SGL command.
///
/// With fewer blocks than segments (a 512-byte read in 2 segments), whole-block pieces do
/// not exist. An SGL command still carries such an iovec set, since SGL data blocks need
/// only be dword aligned and sized (NVMe Base 2.0, 4.1.2): when `sub_block` is `Ok` the I/O
/// is cut into `n` dword-multiple pieces instead (the last takes the remainder). Without
/// SGLs (`sub_block` is `Err(why)`) the I/O cannot be described, since the planner splits
/// only at block boundaries; the sentence says why.
///
/// # Errors
///
/// A sentence if the I/O has fewer blocks than segments and `sub_block` is `Err`, or fewer
/// dwords than segments.
pub fn segment_shapes(
    io_size: u64,
    lba_size: u32,
    n: u32,
    sub_block: Result<(), &str>,
) -> Result<Vec<(usize, usize)>, String> {
    let blocks = io_size / lba_size as u64;
    let (unit, units) = if n > 0 && blocks >= n as u64 {
        (lba_size as u64, blocks)
    } else if let Err(why) = sub_block {
        return Err(format!(
            "--segments {n} needs at least {n} blocks per I/O here, but --io-size {io_size} is {blocks} block(s) of {lba_size} bytes, and {why}: raise --io-size to {} or more",
            n as u64 * lba_size as u64
        ));
    } else if n > 0 && io_size / 4 >= n as u64 {
        (4, io_size / 4)
    } else {
        return Err(format!(
            "--segments {n} needs at least {n} dwords (4 bytes each) per I/O, but --io-size is {io_size} bytes"
        ));
    };
    let per = units / n as u64;
    Ok((0..n as u64)
        .map(|i| {
            let u = if i + 1 == n as u64 {
                units - per * (n as u64 - 1)
            } else {
                per
            };
            let off = if i == 0 {
                0
            } else {
                512 * ((i as usize - 1) % 7 + 1)
            };
            (off, (u * unit) as usize)
        })
        .collect())
}

/// Lays segments out back to back in one buffer, each starting on a fresh page plus its
/// in-page offset: returns `(offset, len)` into the buffer and the buffer size.
pub fn pack_segments(shapes: &[(usize, usize)]) -> (Vec<(usize, usize)>, usize) {
    let mut pos = 0usize;
    let mut out = Vec::with_capacity(shapes.len());
    for &(off, len) in shapes {
        let start = pos.div_ceil(4096) * 4096 + off;
        out.push((start, len));
        pos = start + len;
    }
    (out, pos.div_ceil(4096) * 4096)
}

/// A random-offset distribution, as fio's `random_distribution` (`random`, `zipf:THETA`,
/// `pareto:H`, `normal:DEV`).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
#[serde(tag = "kind", content = "param", rename_all = "lowercase")]
pub enum Distribution {
    /// Every unit equally likely (fio's default, `random`).
    Uniform,
    /// Zipf with exponent theta (> 0, not 1): a few units take most I/Os.
    Zipf(f64),
    /// Pareto with shape h (0 < h < 1): h = 0.2 sends about 80% of I/Os to 20% of units.
    Pareto(f64),
    /// Normal, with the standard deviation in percent of the range (0 < dev <= 100).
    Normal(f64),
}

impl std::fmt::Display for Distribution {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Distribution::Uniform => f.write_str("random"),
            Distribution::Zipf(t) => write!(f, "zipf:{t}"),
            Distribution::Pareto(h) => write!(f, "pareto:{h}"),
            Distribution::Normal(d) => write!(f, "normal:{d}"),
        }
    }
}

/// fio computes the zipf normaliser over at most this many units (lib/zipf.c,
/// ZIPF_MAX_GEN); so do we.
const ZIPF_MAX_GEN: u64 = 10_000_000;

/// A distribution resolved against a number of units, with its constants computed once
/// (the zipf normaliser is a sum over up to 10 M terms).
#[derive(Clone, Copy, Debug)]
pub struct DistState {
    kind: Distribution,
    n: u64,
    zetan: f64,
    zeta2: f64,
    alpha: f64,
    eta: f64,
    pareto_pow: f64,
    stddev: f64,
}

/// fio scatters the hot units of zipf, pareto and normal over the range with a hash (unless
/// `random_distribution` is given with `:0` hashing off, which we do not offer): the same.
#[inline]
fn scatter_hash(v: u64) -> u64 {
    let mut z = v.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl DistState {
    /// `kind` over `n` units (n > 0).
    pub fn new(kind: Distribution, n: u64) -> DistState {
        let n = n.max(1);
        let mut d = DistState {
            kind,
            n,
            zetan: 0.0,
            zeta2: 0.0,
            alpha: 0.0,
            eta: 0.0,
            pareto_pow: 0.0,
            stddev: 0.0,
        };
        match kind {
            Distribution::Uniform => {}
            // Gray et al., "Quickly generating billion-record synthetic databases" (1994),
            // as fio's lib/zipf.c implements it.
            Distribution::Zipf(theta) => {
                d.zetan = (1..=n.min(ZIPF_MAX_GEN))
                    .map(|i| (1.0 / i as f64).powf(theta))
                    .sum();
                d.zeta2 = 1.0 + 0.5f64.powf(theta);
                d.alpha = 1.0 / (1.0 - theta);
                d.eta = (1.0 - (2.0 / n as f64).powf(1.0 - theta)) / (1.0 - d.zeta2 / d.zetan);
            }
            Distribution::Pareto(h) => d.pareto_pow = h.ln() / (1.0 - h).ln(),
            Distribution::Normal(dev) => d.stddev = dev / 100.0 * n as f64,
        }
        d
    }

    /// The distribution.
    pub fn kind(&self) -> Distribution {
        self.kind
    }

    /// A unit in `0..n`.
    #[inline]
    pub fn sample(&self, rng: &mut Rng) -> u64 {
        match self.kind {
            Distribution::Uniform => rng.below(self.n),
            _ => self.sample_skewed(rng),
        }
    }

    /// The skewed distributions, out of line so the uniform case stays small.
    #[inline(never)]
    fn sample_skewed(&self, rng: &mut Rng) -> u64 {
        let n = self.n;
        let uniform = |rng: &mut Rng| (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        let v = match self.kind {
            Distribution::Uniform => return rng.below(n),
            Distribution::Zipf(theta) => {
                let u = uniform(rng);
                let uz = u * self.zetan;
                let v = if uz < 1.0 {
                    1
                } else if uz < 1.0 + 0.5f64.powf(theta) {
                    2
                } else {
                    1 + (n as f64 * (self.eta * u - self.eta + 1.0).powf(self.alpha)) as u64
                };
                v.saturating_sub(1)
            }
            Distribution::Pareto(_) => ((n - 1) as f64 * uniform(rng).powf(self.pareto_pow)) as u64,
            Distribution::Normal(_) => {
                // Box-Muller, centred in the range.
                let (u1, u2) = (uniform(rng).max(f64::MIN_POSITIVE), uniform(rng));
                let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
                let x = n as f64 / 2.0 + z * self.stddev;
                x.clamp(0.0, (n - 1) as f64) as u64
            }
        };
        scatter_hash(v) % n
    }
}

/// Picks each I/O's block, size and direction.
#[derive(Clone, Debug)]
pub struct OpGen {
    rng: Rng,
    random: bool,
    read_pct: u8,
    io_blocks: u64,
    /// Block of the region's start.
    start: u64,
    /// Blocks in the region.
    region: u64,
    /// Offsets are multiples of this many blocks (the I/O size, or the smallest of
    /// --bssplit).
    step: u64,
    /// --bssplit: (blocks, cumulative percentage) each; empty: always `io_blocks`.
    sizes: Vec<(u64, u8)>,
    dist: DistState,
    next: u64,
}

impl OpGen {
    /// A generator over `region_blocks` blocks in `io_blocks` steps; queue `q` of `queues`
    /// starts its sequential walk at its share of the region.
    pub fn new(
        seed: u64,
        q: usize,
        queues: usize,
        random: bool,
        read_pct: u8,
        io_blocks: u64,
        region_blocks: u64,
    ) -> OpGen {
        let units = (region_blocks / io_blocks).max(1);
        OpGen {
            rng: Rng(seed ^ (q as u64).wrapping_mul(0xd6e8_feb8_6659_fd93)),
            random,
            read_pct,
            io_blocks,
            start: 0,
            region: units * io_blocks,
            step: io_blocks,
            sizes: Vec::new(),
            dist: DistState::new(Distribution::Uniform, units),
            next: units * q as u64 / queues.max(1) as u64 * io_blocks,
        }
    }

    /// The region starts at block `start` (--offset).
    pub fn start(mut self, start: u64) -> OpGen {
        self.start = start;
        self
    }

    /// Random offsets follow `dist` (its units are steps of the I/O size, or of the smallest
    /// --bssplit size).
    pub fn dist(mut self, dist: DistState) -> OpGen {
        self.dist = dist;
        self
    }

    /// Mixed sizes (--bssplit): `(blocks, percent)` pairs summing to 100; offsets step by
    /// the smallest, and `region_blocks` must be a multiple of the largest.
    pub fn sizes(mut self, split: &[(u64, u8)], queue: usize, queues: usize) -> OpGen {
        if split.is_empty() {
            return self;
        }
        let mut cum = 0u8;
        self.sizes = split
            .iter()
            .map(|&(b, p)| {
                cum += p;
                (b, cum)
            })
            .collect();
        self.step = split.iter().map(|s| s.0).min().unwrap_or(self.io_blocks);
        let units = self.region / self.step;
        self.next = units * queue as u64 / queues.max(1) as u64 * self.step;
        self
    }

    /// Units random offsets are drawn from.
    pub fn units(&self) -> u64 {
        (self.region / self.step).max(1)
    }

    /// The next I/O: `(first block, blocks, is_write)`.
    #[inline]
    pub fn next_op(&mut self) -> (u64, u64, bool) {
        let blocks = if self.sizes.is_empty() {
            self.io_blocks
        } else {
            let r = self.rng.below(100) as u8;
            self.sizes
                .iter()
                .find(|s| r < s.1)
                .map_or(self.io_blocks, |s| s.0)
        };
        let rel = if self.random {
            let l = self.dist.sample(&mut self.rng) * self.step;
            if l + blocks > self.region {
                (self.region - blocks) / self.step * self.step
            } else {
                l
            }
        } else {
            let l = if self.next + blocks > self.region {
                0
            } else {
                self.next
            };
            self.next = l + blocks;
            l
        };
        let write = match self.read_pct {
            100 => false,
            0 => true,
            p => self.rng.below(100) >= p as u64,
        };
        (self.start + rel, blocks, write)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_round_trips_and_names_the_bad_block_and_byte() {
        let mut buf = vec![0u8; 4 * 512];
        let mut scratch = vec![0u8; buf.len()];
        fill(&mut buf, 100, 512, 7);
        assert!(check(&buf, 100, 512, 7, &mut scratch).is_empty());
        assert_eq!(u64::from_le_bytes(buf[512..520].try_into().unwrap()), 101);
        buf[2 * 512 + 300] ^= 1;
        let m = check(&buf, 100, 512, 7, &mut scratch);
        assert_eq!(m.len(), 1);
        assert_eq!((m[0].lba, m[0].offset, m[0].claims_lba), (102, 300, 102));
        assert_eq!(m[0].got, m[0].expected ^ 1);
        // Another seed, or the same data checked at another LBA, is wrong everywhere.
        assert_eq!(check(&buf, 100, 512, 8, &mut scratch).len(), 4);
        let m = check(&buf, 101, 512, 7, &mut scratch);
        assert_eq!(m.len(), 4);
        assert!(
            m[0].to_string().contains("header names LBA 100"),
            "{}",
            m[0]
        );
        // A never-written (zero) block is a mismatch too.
        let m = check(&[0u8; 512], 5, 512, 7, &mut scratch[..512]);
        assert_eq!(m.len(), 1);
        // ... and is named as such, not as data from another block.
        let text = m[0].to_string();
        assert!(
            text.contains("reads as zeroes") && !text.contains("another block"),
            "{text}"
        );
    }

    const NO: Result<(), &str> = Err("no SGLs");

    #[test]
    fn segment_shapes_cut_whole_blocks_at_non_page_offsets() {
        assert_eq!(segment_shapes(4096, 4096, 1, NO).unwrap(), vec![(0, 4096)]);
        assert_eq!(
            segment_shapes(4096, 512, 3, NO).unwrap(),
            vec![(0, 1024), (512, 1024), (1024, 2048)]
        );
        let s = segment_shapes(64 << 10, 4096, 9, NO).unwrap();
        assert_eq!(s.iter().map(|x| x.1).sum::<usize>(), 64 << 10);
        assert!(
            s[1..].iter().all(|&(o, _)| o % 4096 != 0 && o % 512 == 0),
            "{s:?}"
        );
        assert_eq!(s[8].0, 512, "offsets cycle through 512..3584");
        assert!(
            segment_shapes(4096, 4096, 3, NO)
                .unwrap_err()
                .contains("at least 3 blocks per I/O here, but --io-size 4096 is 1 block(s) of 4096 bytes, and no SGLs")
        );
        // With SGLs: dword-multiple pieces, at the same in-page offsets.
        assert_eq!(
            segment_shapes(512, 512, 2, Ok(())).unwrap(),
            vec![(0, 256), (512, 256)]
        );
        let s = segment_shapes(4096, 4096, 3, Ok(())).unwrap();
        assert_eq!(s, vec![(0, 1364), (512, 1364), (1024, 1368)]);
        assert!(s.iter().all(|&(o, l)| o % 4 == 0 && l % 4 == 0));
        // Whole blocks are still preferred when there are enough.
        assert_eq!(
            segment_shapes(4096, 512, 3, Ok(())).unwrap(),
            segment_shapes(4096, 512, 3, NO).unwrap()
        );
        assert!(
            segment_shapes(8, 512, 3, Ok(()))
                .unwrap_err()
                .contains("at least 3 dwords")
        );
        let (packed, total) = pack_segments(&segment_shapes(4096, 512, 3, NO).unwrap());
        assert_eq!(
            packed,
            vec![(0, 1024), (4096 + 512, 1024), (8192 + 1024, 2048)]
        );
        assert_eq!(total, 12288);
    }

    #[test]
    fn op_gen_stays_in_the_region_walks_sequentially_and_mixes() {
        let mut g = OpGen::new(1, 0, 1, false, 100, 8, 80);
        let lbas: Vec<u64> = (0..12).map(|_| g.next_op().0).collect();
        assert_eq!(lbas, vec![0, 8, 16, 24, 32, 40, 48, 56, 64, 72, 0, 8]);
        let mut g = OpGen::new(1, 1, 2, false, 0, 8, 80);
        assert_eq!(g.next_op(), (40, 8, true), "queue 1 of 2 starts half way");
        let mut g = OpGen::new(3, 0, 1, true, 70, 8, 8000);
        let ops: Vec<(u64, u64, bool)> = (0..10_000).map(|_| g.next_op()).collect();
        assert!(ops.iter().all(|&(l, _, _)| l % 8 == 0 && l < 8000));
        let reads = ops.iter().filter(|o| !o.2).count();
        assert!(
            (6500..7500).contains(&reads),
            "{reads} reads of 10000 at 70%"
        );
    }

    #[test]
    fn offsets_stay_inside_the_offset_range_and_bssplit_mixes_sizes() {
        // Region of 800 blocks from block 1000, sizes 1 block (50%) and 8 blocks (50%).
        let mut g =
            OpGen::new(5, 0, 1, true, 100, 8, 800)
                .start(1000)
                .sizes(&[(1, 50), (8, 50)], 0, 1);
        let ops: Vec<_> = (0..20_000).map(|_| g.next_op()).collect();
        assert!(
            ops.iter().all(|&(l, b, _)| l >= 1000 && l + b <= 1800),
            "inside the range"
        );
        let small = ops.iter().filter(|o| o.1 == 1).count();
        assert!((9_000..11_000).contains(&small), "{small} of 20000 at 50%");
        assert!(
            ops.iter().any(|o| o.0 % 8 != 0),
            "offsets step by the smallest size"
        );
        // Sequential with mixed sizes: back to back, wrapping inside the region.
        let mut g = OpGen::new(5, 0, 1, false, 100, 8, 80).sizes(&[(2, 50), (8, 50)], 0, 1);
        let mut expect = 0;
        for _ in 0..100 {
            let (l, b, _) = g.next_op();
            if expect + b > 80 {
                expect = 0;
            }
            assert_eq!(l, expect);
            expect = l + b;
        }
    }

    /// The share of I/Os that the most used 10% of units take.
    fn top_tenth_share(d: Distribution) -> f64 {
        let n = 10_000u64;
        let st = DistState::new(d, n);
        let mut rng = Rng(42);
        let mut hits = vec![0u32; n as usize];
        let draws = 200_000;
        for _ in 0..draws {
            let u = st.sample(&mut rng);
            assert!(u < n);
            hits[u as usize] += 1;
        }
        hits.sort_unstable_by(|a, b| b.cmp(a));
        hits[..(n / 10) as usize]
            .iter()
            .map(|&h| h as f64)
            .sum::<f64>()
            / draws as f64
    }

    #[test]
    fn skewed_distributions_concentrate_io_and_uniform_does_not() {
        let uniform = top_tenth_share(Distribution::Uniform);
        assert!(uniform < 0.15, "uniform: the top 10% take {uniform}");
        let zipf = top_tenth_share(Distribution::Zipf(1.2));
        assert!(zipf > 0.7, "zipf:1.2: the top 10% take {zipf}");
        let pareto = top_tenth_share(Distribution::Pareto(0.2));
        assert!(pareto > 0.5, "pareto:0.2: the top 10% take {pareto}");
        // normal:5 puts ~68% within 5% of the centre: a tenth of the units takes most.
        let normal = top_tenth_share(Distribution::Normal(5.0));
        assert!(normal > 0.6, "normal:5: the top 10% take {normal}");
        // Zipf with theta below 1 is skewed too, less so.
        let mild = top_tenth_share(Distribution::Zipf(0.8));
        assert!(mild > uniform && mild < zipf, "zipf:0.8 {mild}");
    }
}
