//! A write-ahead log with group commit, driven from the command line.
//!
//! ```text
//! cargo run -p nvme-dio-examples --example wal                    # emulated controller
//! cargo run -p nvme-dio-examples --example wal -- --device 0000:00:04.0
//! wal --device BDF --crash-after 5000     # abort() right after LSN 5000 is durable
//! wal --device BDF --recover --expect-lsn 5000
//! ```
//!
//! Writers (threads) append demo records whose every byte recovery can check. A normal run
//! ends by reading the log back (same process) and verifying it.
//!
//! Lines on stdout, for scripts:
//! `EPOCH e`, `ACKED count=N last_lsn=L`, `RECOVERED records=M last_lsn=L epoch=E`.
//! Exit status: 0 ok, 1 verification failed (fewer records than acknowledged, or a corrupt
//! one), 2 bad arguments, 3 device or I/O error. With `--crash-after` the process dies of
//! SIGABRT after printing `ACKED`.

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use clap::{Parser, ValueEnum};
use nvme_dio::{Controller, Device, DeviceSpec, OpenError, PciFunction, Report};
use nvme_dio_examples::wal::{
    Durability, DurableHook, Recovered, Wal, WalConfig, check_demo_payload, demo_payload, recover,
};

#[derive(Clone, Copy, Debug, ValueEnum)]
enum DurabilityArg {
    Fua,
    Flush,
}

/// A write-ahead log with group commit over nvme-dio.
#[derive(Debug, Parser)]
#[command(name = "wal")]
struct Args {
    /// `emu:ram:thread` (the emulated controller with a RAM namespace, completing on its own
    /// thread like hardware; add `:512` for 512-byte blocks) or a PCI address bound to
    /// vfio-pci. Device strings mean the same in every nvme-dio tool.
    #[arg(long, default_value = "emu:ram:thread")]
    device: String,
    /// Namespace.
    #[arg(long, default_value_t = 1)]
    nsid: u32,
    /// Writer threads.
    #[arg(long, default_value_t = 8)]
    writers: u32,
    /// Records in all (split across the writers).
    #[arg(long, default_value_t = 20_000)]
    records: u64,
    /// Largest payload, bytes.
    #[arg(long, default_value_t = 2000)]
    max_payload: usize,
    /// First block of the log.
    #[arg(long, default_value_t = 0)]
    start_lba: u64,
    /// Blocks of the log region (0: to the end of the namespace).
    #[arg(long, default_value_t = 0)]
    log_blocks: u64,
    /// FUA writes, or write + flush.
    #[arg(long, value_enum, default_value = "fua")]
    durability: DurabilityArg,
    /// Batches in flight.
    #[arg(long, default_value_t = 4)]
    depth: usize,
    /// Largest batch, bytes.
    #[arg(long, default_value_t = 128 << 10)]
    max_batch: usize,
    /// Abort the process right after this many records are durable (printing ACKED first).
    #[arg(long)]
    crash_after: Option<u64>,
    /// Only read the log back and verify it.
    #[arg(long)]
    recover: bool,
    /// With --recover: fail unless every LSN up to this one is intact.
    #[arg(long, default_value_t = 0)]
    expect_lsn: u64,
    /// Blocks of the emulated namespace.
    #[arg(long, default_value_t = 64 * 1024)]
    emu_blocks: u64,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let opened = args
        .device
        .parse::<DeviceSpec>()
        .map_err(OpenError::from)
        .and_then(|spec| {
            let bytes = match &spec {
                DeviceSpec::Emu(e) => Some(args.emu_blocks * e.lba_size as u64),
                _ => None,
            };
            let dev = Device::open(&spec, bytes)?;
            let opts = dev.default_options();
            Controller::new(Arc::new(dev), opts).map_err(OpenError::Driver)
        });
    match opened {
        Ok(ctrl) => run(ctrl, &args),
        Err(e) => {
            eprintln!("wal: cannot open {}: {}", args.device, Report(&e));
            ExitCode::from(3)
        }
    }
}

fn config(args: &Args) -> WalConfig {
    WalConfig {
        nsid: args.nsid,
        start_lba: args.start_lba,
        log_blocks: args.log_blocks,
        max_batch_bytes: args.max_batch,
        depth: args.depth,
        durability: match args.durability {
            DurabilityArg::Fua => Durability::Fua,
            DurabilityArg::Flush => Durability::Flush,
        },
    }
}

fn run<D: PciFunction>(ctrl: Controller<D>, args: &Args) -> ExitCode {
    let cfg = config(args);
    if args.recover {
        return match recover(&ctrl, &cfg) {
            Ok(found) => verdict(&found, args.expect_lsn, args.max_payload),
            Err(e) => {
                eprintln!("wal: recovery failed: {e}");
                ExitCode::from(3)
            }
        };
    }

    let hook: Option<DurableHook> = args.crash_after.map(|n| {
        Box::new(move |lsn: u64| {
            if lsn >= n {
                // Acks go out in LSN order, so LSN n durable means 1..=n are.
                println!("ACKED count={lsn} last_lsn={lsn}");
                let _ = std::io::stdout().flush();
                std::process::abort();
            }
            true
        }) as DurableHook
    });
    let wal = match Wal::start_with_hook(ctrl.clone(), cfg.clone(), hook) {
        Ok(w) => w,
        Err(e) => {
            eprintln!("wal: cannot start the log: {e}");
            return ExitCode::from(3);
        }
    };
    println!("EPOCH {}", wal.epoch());
    let _ = std::io::stdout().flush();

    let start = Instant::now();
    let acked = Arc::new(AtomicU64::new(0));
    let per = args.records / args.writers.max(1) as u64;
    let extra = args.records % args.writers.max(1) as u64;
    let threads: Vec<_> = (0..args.writers.max(1))
        .map(|w| {
            let (h, acked, max) = (wal.handle(), Arc::clone(&acked), args.max_payload);
            let n = per + u64::from((w as u64) < extra);
            std::thread::spawn(move || {
                for s in 0..n {
                    h.append(demo_payload(w, s as u32, max))?;
                    acked.fetch_add(1, Ordering::Relaxed);
                }
                Ok(())
            })
        })
        .collect();
    let mut failed = None;
    for t in threads {
        if let Err(e) = t.join().expect("writer thread") {
            failed.get_or_insert(e);
        }
    }
    let stats = wal.shutdown();
    let took = start.elapsed();
    let stats = match (failed, stats) {
        (None, Ok(s)) => s,
        (Some(e), _) | (None, Err(e)) => {
            eprintln!("wal: {e}");
            return ExitCode::from(3);
        }
    };
    println!(
        "ACKED count={} last_lsn={}",
        acked.load(Ordering::Relaxed),
        stats.last_lsn
    );
    eprintln!(
        "wal: {} records in {:.2?} ({:.0}/s), {} batches ({:.1} records each), {} flushes, {} blocks",
        stats.records,
        took,
        stats.records as f64 / took.as_secs_f64(),
        stats.batches,
        stats.records as f64 / stats.batches.max(1) as f64,
        stats.flushes,
        stats.blocks
    );
    match recover(&ctrl, &cfg) {
        Ok(found) => verdict(&found, stats.last_lsn, args.max_payload),
        Err(e) => {
            eprintln!("wal: recovery failed: {e}");
            ExitCode::from(3)
        }
    }
}

/// Prints what recovery found and checks it against what was acknowledged.
fn verdict(found: &Recovered, expect_lsn: u64, max_payload: usize) -> ExitCode {
    println!(
        "RECOVERED records={} last_lsn={} epoch={}",
        found.records.len(),
        found.last_lsn(),
        found.epoch.map_or("none".to_string(), |e| e.to_string())
    );
    if let Some(bad) = found
        .records
        .iter()
        .find(|r| !check_demo_payload(&r.payload, max_payload))
    {
        eprintln!("wal: record LSN {} has the wrong payload", bad.lsn);
        return ExitCode::from(1);
    }
    if found.last_lsn() < expect_lsn {
        eprintln!(
            "wal: LOST acknowledged records: intact up to LSN {}, acknowledged up to {expect_lsn}",
            found.last_lsn()
        );
        return ExitCode::from(1);
    }
    ExitCode::SUCCESS
}
