//! The queue-pair core itself, driven through the model controller of
//! `nvme_dio_queue::queue_pair::model`: every three bytes are one step (a submit, a split, a
//! doorbell, fetches, completions in any order, junk CQEs, ticks, teardowns), the invariants
//! are checked after each, and at the end every accepted request must come out exactly once.

use nvme_dio_queue::queue_pair::model::{Model, Step};

/// Runs the steps `data` encodes; the first byte picks the ring size.
pub fn run(data: &[u8]) {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let entries = [2u32, 3, 4, 8, 33, 256][first as usize % 6];
    let mut m = Model::new(entries);
    for b in rest.chunks_exact(3) {
        m.run(&Step::from_bytes([b[0], b[1], b[2]]));
        m.check();
    }
    m.quiesce();
}
