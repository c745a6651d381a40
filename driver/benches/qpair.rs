//! Driver + emulated controller cost per I/O: 4 KiB random reads at QD 32 on one core,
//! against the inline emulator's null namespace (its work happens inside the doorbell write,
//! so the figure is the CPU cost of both, per I/O).
//!
//! `cargo bench -p nvme-dio --bench qpair`

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use nvme_dio::{Controller, ControllerOptions, Lba, MemoryOptions, QueuePairOptions};
use nvme_dio_emu::{EmuConfig, EmuFunction, NsConfig};

fn randread_qd(c: &mut Criterion, qd: usize) {
    let blocks = 1u64 << 20;
    let cfg = EmuConfig {
        namespaces: vec![NsConfig::null(blocks, 4096)],
        // The freed-write checker is a test oracle (a range lookup per DMA write); this
        // measures the driver.
        check_freed_writes: false,
        ..EmuConfig::default()
    };
    let dev = Arc::new(EmuFunction::new(cfg).unwrap());
    let opts = ControllerOptions::default().memory(MemoryOptions::any_pages(16 << 20));
    let ctrl = Controller::new(dev, opts).unwrap();
    let ns = ctrl.namespace(1).unwrap().clone();
    let mut qp = ctrl
        .create_io_qpair(QueuePairOptions::default().entries(256))
        .unwrap();
    let pool = ctrl.memory().pool(4096, qd, 4096).unwrap();
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut next_lba = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % blocks
    };
    for i in 0..qd {
        qp.read(&ns, Lba(next_lba()), pool.alloc().unwrap(), i as u64)
            .unwrap();
    }
    let mut g = c.benchmark_group("emu-inline-null");
    g.throughput(Throughput::Elements(1));
    g.measurement_time(Duration::from_secs(3));
    g.bench_function(format!("randread-4k-qd{qd}"), |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            let mut done = 0;
            while done < iters {
                qp.poll();
                while let Some(c) = qp.next_completion() {
                    let buf = c.bufs.into_one().unwrap();
                    qp.read(&ns, Lba(next_lba()), buf, c.tag).unwrap();
                    done += 1;
                }
            }
            start.elapsed()
        })
    });
    g.finish();
}

fn benches(c: &mut Criterion) {
    randread_qd(c, 1);
    randread_qd(c, 32);
}

criterion_group!(qpair, benches);
criterion_main!(qpair);
