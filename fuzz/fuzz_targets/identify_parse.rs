//! Arbitrary bytes as Identify pages -> every accessor -> limits.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nvme_dio_fuzz::identify_check::{IdentifyInput, check};

fuzz_target!(|data: &[u8]| check(&IdentifyInput::from_bytes(data)));
