//! Seed inputs for the corpus, written by an ignored test:
//! `cargo +nightly test --lib -- --ignored write_seeds` (from fuzz/).
//!
//! Identify seeds are real pages (the emulator's Identify Controller, hand-built namespaces).
//! The structured targets take `arbitrary` bytes, which have no encoder, so their seeds are
//! found by decoding pseudo-random bytes and keeping the first input that shows each
//! behaviour worth starting from (a chained PRP list, an SGL command, a NOIOB split, a
//! refusal; junk hitting a command in flight, a reset, duplicates).

use std::path::Path;

use arbitrary::{Arbitrary, Unstructured};
use nvme_dio_queue::identify::{IdentifyController, IdentifyNamespace, LbaFormat};
use nvme_dio_queue::plan::{self, Plan, PlanError};
use nvme_dio_queue::{Dptr, prp};

use crate::cqe::{CidIn, CqeInput, FaultIn, Op, SqidIn};
use crate::identify_check::IdentifyInput;
use crate::plan_check::{PlanInput, materialize};
use crate::walk::ListMem;

/// xorshift64*: deterministic bytes, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn bytes(&mut self, max: usize) -> Vec<u8> {
        let n = 8 + (self.next() as usize % max);
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// The first of `tries` pseudo-random byte strings whose decoded input satisfies `want`.
fn find<T: for<'a> Arbitrary<'a>>(
    seed: u64,
    max: usize,
    tries: usize,
    want: impl Fn(&T) -> bool,
) -> Option<Vec<u8>> {
    let mut rng = Rng(seed);
    for _ in 0..tries {
        let b = rng.bytes(max);
        if let Ok(t) = T::arbitrary_take_rest(Unstructured::new(&b))
            && want(&t)
        {
            return Some(b);
        }
    }
    None
}

fn planned(inp: &PlanInput) -> Option<(Result<Plan, PlanError>, usize)> {
    let (segs, slba, limits) = materialize(inp)?;
    let r = plan::plan(&segs, slba, &limits);
    // Most list pages any PRP command of the plan uses.
    let mut pages = 0;
    if let Ok(p) = &r {
        for c in p.commands().iter().filter(|c| !c.sgl) {
            let mut mem = ListMem::new(limits.page, (inp.list_pages % 5) as usize);
            if let Ok(Dptr::Prp { .. }) = prp::build_range(&segs, &c.segs, limits.page, &mut mem) {
                pages = pages.max(mem.pages_used);
            }
        }
    }
    Some((r, pages))
}

fn plan_seeds() -> Vec<(&'static str, Vec<u8>)> {
    type Want = fn(&PlanInput) -> bool;
    let wants: [(&str, Want); 6] = [
        (
            "one-prp-multi-segment",
            |i| matches!(planned(i), Some((Ok(Plan::One(c)), _)) if !c.sgl && c.segs.last > c.segs.first),
        ),
        ("split-at-noiob", |i| {
            !matches!(i.noiob, crate::plan_check::NoiobIn::None)
                && matches!(planned(i), Some((Ok(Plan::Split(v)), _)) if v.len() >= 3)
        }),
        (
            "sgl-command",
            |i| matches!(planned(i), Some((Ok(p), _)) if p.commands().iter().any(|c| c.sgl && c.segs.last > c.segs.first)),
        ),
        (
            "chained-prp-list",
            |i| matches!(planned(i), Some((Ok(_), pages)) if pages >= 2),
        ),
        ("cannot-split", |i| {
            matches!(planned(i), Some((Err(PlanError::CannotSplit { .. }), _)))
        }),
        ("prp-split-no-sgl", |i| {
            i.sgl.is_none() && matches!(planned(i), Some((Ok(Plan::Split(v)), _)) if v.len() >= 2)
        }),
    ];
    wants
        .iter()
        .enumerate()
        .filter_map(|(k, (name, want))| {
            find::<PlanInput>(0x5eed + k as u64, 300, 2_000_000, want).map(|b| (*name, b))
        })
        .collect()
}

fn cqe_seeds() -> Vec<(&'static str, Vec<u8>)> {
    type Want = fn(&CqeInput) -> bool;
    fn has(i: &CqeInput, f: impl Fn(&Op) -> bool) -> bool {
        i.ops.iter().take(256).any(f)
    }
    let wants: [(&str, Want); 5] = [
        ("io-junk-own-sq-reset", |i| {
            has(i, |o| matches!(o, Op::Write { .. }))
                && has(i, |o| matches!(o, Op::Read { .. }))
                && has(i, |o| {
                    matches!(
                        o,
                        Op::Junk {
                            sqid: SqidIn::Own,
                            ..
                        }
                    )
                })
                && has(i, |o| matches!(o, Op::Reset))
        }),
        ("junk-slot-cids-and-dropped", |i| {
            i.entries % 15 <= 2
                && has(i, |o| {
                    matches!(
                        o,
                        Op::Junk {
                            cid: CidIn::Slot { .. },
                            sqid: SqidIn::Own,
                            ..
                        }
                    )
                })
                && has(i, |o| matches!(o, Op::Fault(FaultIn::Drop(_))))
                && has(i, |o| matches!(o, Op::Flush))
        }),
        ("duplicates-stale-and-polls", |i| {
            has(i, |o| matches!(o, Op::Fault(FaultIn::Duplicate(_))))
                && has(i, |o| matches!(o, Op::Fault(FaultIn::Stale(_))))
                && i.ops
                    .iter()
                    .filter(|o| matches!(o, Op::Write { .. } | Op::Read { .. }))
                    .count()
                    >= 4
                && has(i, |o| matches!(o, Op::Poll))
        }),
        ("vectors-sgl-interrupts", |i| {
            i.sgl
                && i.interrupt
                && has(i, |o| matches!(o, Op::Vector { .. }))
                && has(i, |o| matches!(o, Op::Wait))
        }),
        ("split-vectors-small-queue", |i| {
            !i.sgl
                && i.entries % 15 <= 2
                && i.ops
                    .iter()
                    .filter(|o| matches!(o, Op::Vector { .. }))
                    .count()
                    >= 2
                && has(i, |o| {
                    matches!(
                        o,
                        Op::Junk {
                            sqid: SqidIn::Own,
                            ..
                        }
                    )
                })
        }),
    ];
    wants
        .iter()
        .enumerate()
        .filter_map(|(k, (name, want))| {
            find::<CqeInput>(0xc0e + k as u64, 400, 2_000_000, want).map(|b| (*name, b))
        })
        .collect()
}

fn identify_seeds() -> Vec<(&'static str, Vec<u8>)> {
    // The emulator's defaults (QEMU-like): MDTS 7, SGLs off, VWC, write zeroes + DSM.
    let mut c = IdentifyController::builder();
    c.set_vid(0x1b36)
        .set_serial("deadbeef")
        .set_model("nvme-dio emulated controller")
        .set_firmware("1.0")
        .set_mdts(7)
        .set_cntlid(1)
        .set_ver(0x0001_0400)
        .set_acl(4)
        .set_aerl(4)
        .set_maxcmd(2048)
        .set_nn(1)
        .set_oncs(0b1100)
        .set_vwc_present(true);
    let mut ns = IdentifyNamespace::builder();
    ns.set_nsze(1 << 20)
        .set_ncap(1 << 20)
        .set_nlbaf(2)
        .set_flbas_index(0)
        .set_noiob(0);
    ns.set_lbaf(
        0,
        LbaFormat {
            data_size: 512,
            ..LbaFormat::default()
        },
    );
    ns.set_lbaf(
        1,
        LbaFormat {
            data_size: 4096,
            ..LbaFormat::default()
        },
    );
    let plain = IdentifyInput {
        raw_length: false,
        want_sgl: true,
        mpsmin: 0,
        mps: 0,
        list_pages: 1,
        ctrl: c.as_bytes().to_vec(),
        ns: ns.as_bytes().to_vec(),
    };
    // SGLs (dword aligned), no MDTS, 4 KiB blocks with NOIOB, 64 formats, FLBAS high bits.
    let mut c2 = c.clone();
    c2.set_mdts(0).set_sgls(0b10);
    let mut ns2 = ns.clone();
    ns2.set_nlbaf(64).set_flbas_index(33).set_noiob(48);
    ns2.set_lbaf(
        33,
        LbaFormat {
            data_size: 4096,
            metadata_size: 8,
            relative_performance: 2,
        },
    );
    let sgl = IdentifyInput {
        mps: 4,
        mpsmin: 0,
        list_pages: 2,
        ctrl: c2.as_bytes().to_vec(),
        ns: ns2.as_bytes().to_vec(),
        ..plain.clone()
    };
    // A huge MDTS and an unusable format (LBADS 0).
    let mut c3 = c.clone();
    c3.set_mdts(0xff);
    let mut ns3 = ns.clone();
    ns3.set_lbaf(0, LbaFormat::default());
    let hostile = IdentifyInput {
        mpsmin: 15,
        mps: 15,
        list_pages: u16::MAX,
        ctrl: c3.as_bytes().to_vec(),
        ns: ns3.as_bytes().to_vec(),
        ..plain.clone()
    };
    let short = IdentifyInput {
        raw_length: true,
        ctrl: c.as_bytes()[..100].to_vec(),
        ns: vec![0; 4097],
        ..plain.clone()
    };
    vec![
        ("emu-defaults", plain.to_bytes()),
        ("sgl-64-formats-noiob", sgl.to_bytes()),
        ("hostile-mdts-lbads0", hostile.to_bytes()),
        ("wrong-lengths", short.to_bytes()),
    ]
}

fn write(dir: &Path, seeds: Vec<(&'static str, Vec<u8>)>) {
    std::fs::create_dir_all(dir).unwrap();
    for (name, bytes) in seeds {
        std::fs::write(dir.join(format!("seed-{name}")), bytes).unwrap();
        eprintln!("{}/seed-{name}", dir.display());
    }
}

#[test]
#[ignore = "writes the corpus seeds: cargo +nightly test --lib -- --ignored write_seeds"]
fn write_seeds() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let id = identify_seeds();
    for (_, b) in &id {
        crate::identify_check::check(&IdentifyInput::from_bytes(b));
    }
    write(&corpus.join("identify_parse"), id);
    let ps = plan_seeds();
    assert_eq!(ps.len(), 6, "every plan seed found");
    write(&corpus.join("plan_prp_sgl"), ps);
    let cs = cqe_seeds();
    assert_eq!(cs.len(), 5, "every CQE seed found");
    write(&corpus.join("cqe_processing"), cs);
}

#[test]
fn identify_bytes_round_trip() {
    for (_, b) in identify_seeds() {
        let i = IdentifyInput::from_bytes(&b);
        assert_eq!(IdentifyInput::from_bytes(&i.to_bytes()), i);
    }
}

/// Replays a corpus directory of `cqe_processing` inputs outside libFuzzer (a plain test
/// build, debug assertions on): `FUZZ_REPLAY=../ci/out/fuzz/corpus/cqe_processing
/// cargo +nightly test --lib -- --ignored replay_cqe --nocapture`.
#[test]
#[ignore = "needs FUZZ_REPLAY=<corpus dir>"]
fn replay_cqe() {
    let dir = std::env::var("FUZZ_REPLAY").expect("FUZZ_REPLAY=<corpus dir>");
    let mut n = 0;
    for e in std::fs::read_dir(dir).unwrap() {
        let b = std::fs::read(e.unwrap().path()).unwrap();
        if let Ok(i) = CqeInput::arbitrary_take_rest(Unstructured::new(&b)) {
            crate::cqe::run(&i);
            n += 1;
        }
    }
    eprintln!("{n} inputs replayed");
}
