//! The queue-pair core driven directly through its model controller, then the same bytes as
//! junk CQEs between real completions on a live queue pair (emulated controller).
#![no_main]

use libfuzzer_sys::fuzz_target;
use nvme_dio_fuzz::cqe::{CqeInput, run};

fuzz_target!(|data: &[u8]| {
    nvme_dio_fuzz::core_model::run(data);
    if let Ok(inp) =
        <CqeInput as arbitrary::Arbitrary>::arbitrary_take_rest(arbitrary::Unstructured::new(data))
    {
        run(&inp);
    }
});
