//! Every kept corpus input replayed through its target's check, on stable Rust: a quick pass
//! (not fuzzing) that `ci/test` runs, so a change that breaks an input the fuzzers once found
//! interesting fails there, not only when someone fuzzes.

use std::path::{Path, PathBuf};

use arbitrary::{Arbitrary, Unstructured};

use crate::cqe::CqeInput;
use crate::identify_check::IdentifyInput;
use crate::plan_check::PlanInput;

fn inputs(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    let mut v: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("corpus entry").path())
        .map(|p| {
            let b = std::fs::read(&p).expect("corpus file");
            (p, b)
        })
        .collect();
    v.sort();
    assert!(!v.is_empty(), "no corpus in {}", dir.display());
    v
}

/// Decodes as libFuzzer's `fuzz_target!(|x: T|)` does: inputs that do not decode are skipped
/// by the fuzzer too.
fn decode<T: for<'a> Arbitrary<'a>>(b: &[u8]) -> Option<T> {
    T::arbitrary_take_rest(Unstructured::new(b)).ok()
}

#[test]
fn plan_prp_sgl_corpus() {
    let mut n = 0;
    for (_, b) in inputs("plan_prp_sgl") {
        if let Some(inp) = decode::<PlanInput>(&b) {
            crate::plan_check::check(&inp);
            n += 1;
        }
    }
    assert!(n > 0, "no input decoded");
}

#[test]
fn identify_parse_corpus() {
    for (_, b) in inputs("identify_parse") {
        crate::identify_check::check(&IdentifyInput::from_bytes(&b));
    }
}

#[test]
fn cqe_processing_corpus() {
    let mut n = 0;
    for (_, b) in inputs("cqe_processing") {
        crate::core_model::run(&b);
        if let Some(inp) = decode::<CqeInput>(&b) {
            crate::cqe::run(&inp);
            n += 1;
        }
    }
    assert!(n > 0, "no input decoded");
}
