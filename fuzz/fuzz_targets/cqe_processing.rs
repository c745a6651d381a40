//! Junk CQEs between real completions on a live queue pair (emulated controller).
#![no_main]

use libfuzzer_sys::fuzz_target;
use nvme_dio_fuzz::cqe::{CqeInput, run};

fuzz_target!(|inp: CqeInput| {
    run(&inp);
});
