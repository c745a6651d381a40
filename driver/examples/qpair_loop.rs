//! A fixed number of 4 KiB random reads at a fixed queue depth on the inline emulated null
//! namespace, with nothing else in the process: the loop to count instructions per I/O in.
//!
//! ```text
//! cargo build --release -p nvme-dio --example qpair_loop
//! valgrind --tool=callgrind target/release/examples/qpair_loop 32 200000
//! valgrind --tool=callgrind target/release/examples/qpair_loop 32 400000
//! ```
//!
//! (difference of the two totals) / 200 000 = instructions per I/O, driver and emulator.

use std::sync::Arc;

use nvme_dio::{Controller, ControllerOptions, Lba, MemoryOptions, QueuePairOptions};
use nvme_dio_emu::{EmuConfig, EmuFunction, NsConfig};

fn main() {
    let mut args = std::env::args().skip(1);
    let qd: usize = args.next().map_or(32, |a| a.parse().expect("queue depth"));
    let ios: u64 = args
        .next()
        .map_or(1_000_000, |a| a.parse().expect("I/O count"));
    let blocks = 1u64 << 20;
    let cfg = EmuConfig {
        namespaces: vec![NsConfig::null(blocks, 4096)],
        // The freed-write checker is a test oracle (a range lookup per DMA write); this
        // measures the driver.
        check_freed_writes: false,
        ..EmuConfig::default()
    };
    let dev = Arc::new(EmuFunction::new(cfg).expect("emulated controller"));
    let opts = ControllerOptions::default().memory(MemoryOptions::any_pages(16 << 20));
    let ctrl = Controller::new(dev, opts).expect("bring-up");
    let ns = ctrl.namespace(1).expect("namespace 1").clone();
    let mut qp = ctrl
        .create_io_qpair(QueuePairOptions::default().entries(256))
        .expect("queue pair");
    let pool = ctrl.memory().pool(4096, qd, 4096).expect("pool");
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut next_lba = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % blocks
    };
    for i in 0..qd {
        qp.read(
            &ns,
            Lba(next_lba()),
            pool.alloc().expect("buffer"),
            i as u64,
        )
        .expect("read");
    }
    let mut done = 0u64;
    let start = std::time::Instant::now();
    while done < ios {
        qp.poll();
        while let Some(c) = qp.next_completion() {
            c.result.expect("read succeeds");
            let buf = c.bufs.into_one().expect("buffer");
            qp.read(&ns, Lba(next_lba()), buf, c.tag).expect("read");
            done += 1;
        }
    }
    let el = start.elapsed();
    println!(
        "qd {qd}: {done} reads in {el:?}: {:.1} ns per I/O (emu-inline-null, one core)",
        el.as_nanos() as f64 / done as f64
    );
}
