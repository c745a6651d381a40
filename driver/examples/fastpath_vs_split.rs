//! The seed's experiment, on the emulated null controller: the same 64 KiB random reads sent
//! as ONE command (the fast path: no parent, no children) and forced into a split of 8
//! commands (a controller whose MDTS allows 8 KiB), alternating in one run, with the ratio.
//!
//! ```text
//! cargo run --release -p nvme-dio --example fastpath_vs_split            # both, alternating
//! cargo run --release -p nvme-dio --example fastpath_vs_split -- one 20000   # one mode only
//! ci/fastpath-split        # the same under callgrind: instructions per I/O, and the ratio
//! ```

use std::sync::Arc;
use std::time::Instant;

use nvme_dio::{Controller, ControllerOptions, IoQueuePair, Lba, MemoryOptions, QueuePairOptions};
use nvme_dio_emu::{EmuConfig, EmuFunction, NsConfig};

const IO_BYTES: usize = 64 << 10;
const QD: usize = 32;

struct Setup {
    ctrl: Controller<EmuFunction>,
    qp: IoQueuePair<EmuFunction>,
    blocks: u64,
    rng: u64,
}

fn setup(mdts: u8) -> Setup {
    let blocks = 1u64 << 24;
    let dev = EmuFunction::new(EmuConfig {
        namespaces: vec![NsConfig::null(blocks, 4096)],
        mdts,
        // A test oracle, not the driver's cost.
        check_freed_writes: false,
        ..EmuConfig::default()
    })
    .expect("emulated controller");
    let ctrl = Controller::new(
        Arc::new(dev),
        ControllerOptions::default().memory(MemoryOptions::any_pages(32 << 20)),
    )
    .expect("bring-up");
    let ns = ctrl.namespace(1).expect("namespace 1").clone();
    let mut qp = ctrl
        .create_io_qpair(QueuePairOptions::with_entries(1024))
        .expect("queue pair");
    for i in 0..QD {
        let b = ctrl.memory().alloc(IO_BYTES, 4096).expect("buffer");
        qp.read(&ns, Lba(i as u64 * 16), b, i as u64).expect("read");
    }
    qp.ring();
    Setup {
        ctrl,
        qp,
        blocks,
        rng: 0x2545_f491_4f6c_dd1d,
    }
}

/// Runs `ios` reads (keeping QD in flight); returns the seconds it took.
fn run(s: &mut Setup, ios: u64) -> f64 {
    let ns = s.ctrl.namespace(1).expect("namespace 1").clone();
    let per_io = (IO_BYTES / 4096) as u64;
    let start = Instant::now();
    let mut done = 0;
    while done < ios {
        s.qp.poll();
        while let Some(c) = s.qp.next_completion() {
            c.result.expect("read succeeds");
            s.rng ^= s.rng << 13;
            s.rng ^= s.rng >> 7;
            s.rng ^= s.rng << 17;
            let lba = (s.rng % (s.blocks / per_io)) * per_io;
            let buf = c.bufs.into_one().expect("buffer");
            s.qp.read(&ns, Lba(lba), buf, c.tag).expect("read");
            done += 1;
        }
    }
    start.elapsed().as_secs_f64()
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_else(|| "both".into());
    let ios: u64 = args
        .next()
        .map_or(200_000, |a| a.parse().expect("I/O count"));
    // MDTS 7 at 4 KiB pages: 512 KiB per command, so 64 KiB is one command. MDTS 1: 8 KiB
    // per command, so 64 KiB is a split of 8.
    let (mut one, mut split) = (setup(7), setup(1));
    match mode.as_str() {
        "one" => {
            run(&mut one, ios);
        }
        "split" => {
            run(&mut split, ios);
        }
        _ => {
            run(&mut one, ios / 10); // warm-up, discarded
            run(&mut split, ios / 10);
            let mut r = Vec::new();
            for _ in 0..5 {
                let a = ios as f64 / run(&mut one, ios);
                let b = ios as f64 / run(&mut split, ios);
                r.push((a, b));
            }
            let mut ratios: Vec<f64> = r.iter().map(|(a, b)| a / b).collect();
            ratios.sort_by(f64::total_cmp);
            let mut ones: Vec<f64> = r.iter().map(|x| x.0).collect();
            let mut splits: Vec<f64> = r.iter().map(|x| x.1).collect();
            ones.sort_by(f64::total_cmp);
            splits.sort_by(f64::total_cmp);
            println!(
                "emu-inline-null, 64 KiB randread, QD {QD}, one core, 5 alternating rounds of {ios} I/Os"
            );
            println!("one command : {:>10.0} IOPS (median)", ones[2]);
            println!("split of 8  : {:>10.0} IOPS (median)", splits[2]);
            println!(
                "ratio one/split: median {:.2} (min {:.2}, max {:.2})",
                ratios[2], ratios[0], ratios[4]
            );
            let st = one.qp.stats();
            let sp = split.qp.stats();
            println!(
                "commands per request: one {:.2}, split {:.2}",
                st.commands as f64 / st.submitted as f64,
                sp.commands as f64 / sp.submitted as f64
            );
        }
    }
}
