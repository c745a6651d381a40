//! Arbitrary iovec sets and limits -> plan -> PRP/SGL build -> controller walk.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nvme_dio_fuzz::plan_check::{PlanInput, check};

fuzz_target!(|inp: PlanInput| check(&inp));
