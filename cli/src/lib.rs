//! # nvme-dio-cli: the `nvme-dio` command
//!
//! - `bench`: IOPS, MiB/s and latency percentiles of a device, SPDK perf / fio style, through
//!   the nvme-dio userspace driver (a VFIO-bound controller, or the embedded emulated
//!   controller by default) or through the kernel (io_uring, O_DIRECT) for a side-by-side
//!   figure. Human summary, `--json`, an SVG latency histogram, `--verify`.
//! - `list`: the NVMe controllers in sysfs, their drivers, IOMMU groups, NUMA nodes, disks.
//! - `identify`: what a controller and its namespaces report.
//! - `plot`: the latency CDFs and histograms of several `bench --json` runs in one SVG.
//! - `smart-log`, `error-log`, `get-feature`: health, errors and features, nvme-cli style
//!   (`health.rs`).
//! - `setup` / `reset`: bind controllers to vfio-pci (one, several, or every one not in use,
//!   with `PCI_ALLOWED` / `PCI_BLOCKED`; the safety checks: mounts, swap, holders, IOMMU
//!   group viability, RLIMIT_MEMLOCK), reserve hugepages (per NUMA node too), `setup status`,
//!   and give back everything setup bound.
//!
//! The library half exists so the pieces are unit-tested; `main.rs` only parses and
//! dispatches. `#![forbid(unsafe_code)]`: the system calls the benchmark needs beyond std
//! (io_uring, sched_setaffinity, the Ctrl-C flag, the thread CPU clock) live in
//! `nvme-dio-uring`.
//!
//! All standard output goes through [`out`]: a reader that goes away (`| head`) ends the
//! command quietly with status 0, a full disk is an error. Ctrl-C during `bench` prints the
//! report of what ran and exits with 130.

#![forbid(unsafe_code)]

pub mod args;
pub mod bench;
pub mod error;
pub mod health;
pub mod identify;
pub mod list;
pub mod out;
pub mod plot;
pub mod setup;
pub mod stats;
pub mod sysfs;

pub use error::CliError;

/// Runs one parsed command.
///
/// # Errors
///
/// Whatever the command fails with; [`error::render`] turns it into the printed lines.
pub fn run(cli: args::Cli) -> Result<(), CliError> {
    match cli.command {
        args::Command::Bench(a) => bench::run(&a),
        args::Command::List(a) => list::run(&a),
        args::Command::Identify(a) => identify::run(&a),
        args::Command::Setup(a) => setup::setup(&sysfs::Sysfs::host(), &a),
        args::Command::Reset(a) => setup::reset(&sysfs::Sysfs::host(), &a),
        args::Command::Plot(a) => plot::run(&a),
        args::Command::SmartLog(a) => health::smart_log(&a),
        args::Command::ErrorLog(a) => health::error_log(&a),
        args::Command::GetFeature(a) => health::get_feature(&a),
    }
}
