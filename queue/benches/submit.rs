//! Micro-benchmarks of the submission hot path: PRP building and the planner.
//!
//! Run: `cargo bench -p nvme-dio-queue --bench submit -- --warm-up-time 1 --measurement-time 2`.
//!
//! Results are consumed field by field, as the driver does (the PRPs go into the entry, the
//! entry into the ring as eight qwords). Passing a whole `Result<Plan, _>` or `Dptr` to
//! `black_box` forces it through memory and adds a store-forwarding stall of a few ns that
//! the real path does not pay; `plan/*` keeps that form for comparison with `plan_matched`.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use nvme_dio_queue::cmd::Read;
use nvme_dio_queue::plan::{self, Limits};
use nvme_dio_queue::prp::{self, PrpListPages, Segment};
use nvme_dio_queue::{Dptr, Iova, Lba, Nsid, PageSize};

const PAGE: PageSize = PageSize::SIZE_4K;

/// Preallocated list pages, as a tracker holds them: the IOVA is cached, the storage fixed.
struct Pages {
    base: u64,
    slots: Vec<u64>,
}

impl Pages {
    fn new(pages: usize) -> Self {
        Pages {
            base: 0x7000_0000,
            slots: vec![0; pages * 512],
        }
    }
}

impl PrpListPages for Pages {
    #[inline]
    fn page(&mut self, n: usize) -> Option<Iova> {
        (n < self.slots.len() / 512).then(|| Iova(self.base + (n as u64) * 4096))
    }

    #[inline]
    fn set(&mut self, n: usize, i: usize, entry: u64) {
        self.slots[n * 512 + i] = entry;
    }
}

fn cases() -> Vec<(&'static str, Vec<Segment>)> {
    vec![
        ("4k", vec![Segment::new(0x10_0000, 4096)]),
        ("128k", vec![Segment::new(0x10_0000, 128 << 10)]),
        ("2m", vec![Segment::new(0x4000_0000, 2 << 20)]),
        (
            "8x4k-iovec",
            (0..8)
                .map(|k| Segment::new(0x10_0000 + k * 0x3_0000, 4096))
                .collect(),
        ),
    ]
}

fn bench_prp(c: &mut Criterion) {
    let mut g = c.benchmark_group("prp_build");
    let mut pages = Pages::new(2);
    for (name, segs) in cases() {
        g.bench_function(name, |b| {
            b.iter(|| match prp::build(black_box(&segs), PAGE, &mut pages) {
                Ok(Dptr::Prp { prp1, prp2 }) => {
                    black_box(prp1);
                    black_box(prp2);
                }
                _ => unreachable!(),
            })
        });
    }
    g.finish();
}

fn bench_plan(c: &mut Criterion) {
    // QEMU's defaults: MDTS 7 (512 KiB), one list page per command, 512-byte blocks.
    let limits = Limits {
        lba_size: 512,
        page: PAGE,
        max_transfer: plan::max_transfer(Some(512 << 10), PAGE, 1),
        noiob: 0,
        ns_blocks: 1 << 30,
        sgl: None,
    };
    let mut g = c.benchmark_group("plan");
    for (name, segs) in cases() {
        g.bench_function(name, |b| {
            b.iter(|| plan::plan(black_box(&segs), Lba(64), black_box(&limits)).unwrap())
        });
    }
    g.finish();

    // The way the driver consumes a plan: match it at once, use the command's fields.
    let segs = [Segment::new(0x10_0000, 4096)];
    c.bench_function("plan_matched/4k", |b| {
        b.iter(
            || match plan::plan(black_box(&segs), Lba(64), black_box(&limits)) {
                Ok(plan::Plan::One(c)) => black_box(c.nlb),
                _ => unreachable!(),
            },
        )
    });

    // The whole submit-side fast path of a 4 KiB read, the way the driver does it: plan,
    // match, build the PRPs, build the entry.
    let segs = [Segment::new(0x10_0000, 4096)];
    let mut pages = Pages::new(1);
    c.bench_function("submit_path/4k", |b| {
        b.iter(|| {
            let segs = black_box(&segs);
            match plan::plan(segs, Lba(64), black_box(&limits)) {
                Ok(plan::Plan::One(cmd)) => {
                    let dptr = prp::build_range(segs, &cmd.segs, PAGE, &mut pages).unwrap();
                    let sqe = Read::new(Nsid(1), cmd.slba, cmd.nlb).build(dptr);
                    // The queue writes the slot as eight qwords.
                    for q in sqe.to_qwords() {
                        black_box(q);
                    }
                }
                _ => unreachable!(),
            }
        })
    });
}

criterion_group!(benches, bench_prp, bench_plan);
criterion_main!(benches);
