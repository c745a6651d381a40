//! Command-line arguments (clap derive) and the value parsers behind them.
//!
//! Every parser returns a sentence that says what was expected, so that clap's
//! `error: invalid value '4x' for '--io-size <SIZE>': ...` line is enough to fix the call.

use std::fmt;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
pub use nvme_dio::EmuSpec;

/// The `nvme-dio` command: benchmark, list, identify and set up NVMe controllers for the
/// nvme-dio userspace driver.
#[derive(Debug, Parser)]
#[command(name = "nvme-dio", version, about, propagate_version = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Measure IOPS, bandwidth and latency of a device (the emulated controller by default).
    Bench(Box<BenchArgs>),
    /// List the NVMe controllers on this machine and what each is bound to.
    List(ListArgs),
    /// Show what a controller and its namespaces report (Identify).
    Identify(IdentifyArgs),
    /// Bind a controller to vfio-pci so nvme-dio can drive it; reserve hugepages.
    Setup(SetupArgs),
    /// Give a controller back to the kernel's nvme driver.
    Reset(ResetArgs),
}

/// Which device to drive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeviceSpec {
    /// The embedded emulated controller, named as in the library ([`nvme_dio::DeviceSpec`]):
    /// a null namespace (`emu`) or a RAM one (`emu:ram`), `:thread`, `:512`.
    Emu(EmuSpec),
    /// A PCI function bound to vfio-pci, `DDDD:BB:DD.F`.
    Pci(String),
    /// A block device or file, driven through the kernel (io_uring engine).
    Path(PathBuf),
}

impl DeviceSpec {
    /// True for the emulated controller.
    pub fn is_emu(&self) -> bool {
        matches!(self, DeviceSpec::Emu(_))
    }

    /// True for the emulated controller with a RAM namespace (it keeps what is written).
    pub fn is_emu_ram(&self) -> bool {
        matches!(self, DeviceSpec::Emu(e) if e.ram)
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Emu(e) => write!(f, "{}", nvme_dio::DeviceSpec::Emu(*e)),
            DeviceSpec::Pci(b) => f.write_str(b),
            DeviceSpec::Path(p) => write!(f, "{}", p.display()),
        }
    }
}

/// Parses a device string: the library's ([`nvme_dio::DeviceSpec`]: `emu`, `emu:ram`,
/// `...:thread`, `...:512`, a PCI address such as `0000:01:00.0` or `01:00.0`), or else a path
/// for the kernel engine.
///
/// # Errors
///
/// A sentence naming the accepted forms.
pub fn parse_device(s: &str) -> Result<DeviceSpec, String> {
    match s.parse::<nvme_dio::DeviceSpec>() {
        Ok(nvme_dio::DeviceSpec::Emu(e)) => return Ok(DeviceSpec::Emu(e)),
        Ok(nvme_dio::DeviceSpec::Pci(bdf)) => return Ok(DeviceSpec::Pci(bdf)),
        Ok(other) => return Err(format!("{other}: not a device nvme-dio bench can drive")),
        Err(e) if s == "emu" || s.starts_with("emu:") => return Err(e.to_string()),
        Err(_) => {}
    }
    // A path: anything with a slash, or a name that exists here (`--device testfile`).
    if s.contains('/') || std::path::Path::new(s).exists() {
        return Ok(DeviceSpec::Path(PathBuf::from(s)));
    }
    if s.contains(':')
        && s.contains('.')
        && s.chars()
            .all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.')
    {
        return Err(format!(
            "{s:?} is not a valid PCI address: expected [domain:]bus:device.function in hex, with the device 00 to 1f and the function 0 to 7, like 0000:01:00.0 (see `nvme-dio list`)"
        ));
    }
    Err(format!(
        "unknown device {s:?}: expected `emu` (emulated, null namespace), `emu:ram` (emulated, RAM namespace), \
         a PCI address like 0000:01:00.0 (see `nvme-dio list`), or a path to a block device or file such as /dev/nvme0n1 or ./file"
    ))
}

/// Normalises a PCI address `DDDD:BB:DD.F` or `BB:DD.F` (hex) to `dddd:bb:dd.f`: the one
/// parser the library uses too ([`nvme_dio_dma::parse_bdf`]).
pub fn parse_bdf(s: &str) -> Option<String> {
    nvme_dio_dma::parse_bdf(s).ok()
}

/// Parses a byte size: `4096`, `4k`, `128K`, `1m`, `1MiB`, `2g` (binary units).
///
/// # Errors
///
/// A sentence with examples, for anything else or zero.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    if t.starts_with('-') {
        return Err(format!(
            "{s:?}: negative sizes are not allowed: use a number of bytes with an optional k/m/g suffix, like 512, 4k or 1m"
        ));
    }
    let lower = t.to_ascii_lowercase();
    let digits = lower.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit = &lower[digits.len()..];
    let mult: u64 = match unit {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        _ => {
            return Err(format!(
                "{s:?} is not a size: use a number of bytes with an optional k/m/g suffix, like 512, 4k, 128k or 1m"
            ));
        }
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{s:?} is not a size: use a number of bytes with an optional k/m/g suffix, like 512, 4k, 128k or 1m"))?;
    let v = n
        .checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too large"))?;
    if v == 0 {
        return Err(
            "a size of zero bytes cannot be transferred: use at least one block, like 4k".into(),
        );
    }
    Ok(v)
}

/// Parses a whole number in `lo..=hi` (decimal; `0x` hex too if `hex`), with a sentence
/// for a negative number, junk, or a value out of range. clap puts the flag in front:
/// `invalid value '-5' for '--queue-depth <QUEUE_DEPTH>': ...`.
fn parse_whole(s: &str, lo: u64, hi: u64, hex: bool) -> Result<u64, String> {
    let t = s.trim();
    let range = if hi == u64::MAX {
        format!("a whole number of at least {lo}, below 2^64")
    } else {
        format!("a whole number from {lo} to {hi}")
    };
    if t.starts_with('-') {
        return Err(format!("negative numbers are not allowed: give {range}"));
    }
    let v = match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        Some(h) if hex => u64::from_str_radix(h, 16),
        _ => t.parse::<u64>(),
    };
    let v = v.map_err(|e| {
        if matches!(e.kind(), std::num::IntErrorKind::PosOverflow) {
            format!("{s:?} is too large: give {range}")
        } else {
            format!(
                "{s:?} is not a whole number: give {range}{}",
                if hex {
                    " (decimal, or hex with 0x)"
                } else {
                    ""
                }
            )
        }
    })?;
    if !(lo..=hi).contains(&v) {
        return Err(format!("{v} is out of range: give {range}"));
    }
    Ok(v)
}

fn parse_queue_depth(s: &str) -> Result<u32, String> {
    parse_whole(s, 1, 65_535, false).map(|v| v as u32)
}

fn parse_ios(s: &str) -> Result<u64, String> {
    parse_whole(s, 1, u64::MAX, false)
}

fn parse_queues(s: &str) -> Result<u16, String> {
    parse_whole(s, 1, 1024, false).map(|v| v as u16)
}

fn parse_segments(s: &str) -> Result<u32, String> {
    parse_whole(s, 1, 256, false).map(|v| v as u32)
}

fn parse_batch(s: &str) -> Result<u32, String> {
    parse_whole(s, 1, u32::MAX as u64, false).map(|v| v as u32)
}

fn parse_seed(s: &str) -> Result<u64, String> {
    parse_whole(s, 0, u64::MAX, true)
}

fn parse_nsid(s: &str) -> Result<u32, String> {
    // NSID 0 and 0xffffffff (broadcast) never name one namespace.
    parse_whole(s, 1, 0xffff_fffe, false).map(|v| v as u32)
}

fn parse_timeout_ms(s: &str) -> Result<u64, String> {
    if s.trim() == "0" {
        return Err(
            "a timeout of 0 ms would fail every I/O: give milliseconds, at least 1 (the default is 30000)"
                .into(),
        );
    }
    parse_whole(s, 1, 3_600_000, false)
}

fn parse_lba(s: &str) -> Result<u64, String> {
    parse_whole(s, 0, u64::MAX, false)
}

fn parse_hugepages(s: &str) -> Result<u64, String> {
    parse_whole(s, 0, u64::MAX, false)
}

fn parse_io_size(s: &str) -> Result<u64, String> {
    let v = parse_size(s)?;
    if v % 512 != 0 {
        return Err(format!(
            "{v} bytes is not a multiple of 512: an I/O is a whole number of blocks (try 4k)"
        ));
    }
    if v > 1 << 30 {
        return Err(format!(
            "{v} bytes is more than 1 GiB per I/O: use a smaller size such as 128k or 1m"
        ));
    }
    Ok(v)
}

fn parse_seconds(s: &str) -> Result<f64, String> {
    if s.trim().starts_with('-') {
        return Err(format!(
            "{s:?}: negative durations are not allowed: give seconds, like 10 or 0.5"
        ));
    }
    match s.trim_end_matches('s').parse::<f64>() {
        Ok(v) if (0.0..=86_400.0).contains(&v) => Ok(v),
        Ok(v) if v.is_finite() => Err(format!(
            "{v} s is out of range: give seconds from 0 to 86400 (one day)"
        )),
        _ => Err(format!(
            "{s:?} is not a duration: give seconds, like 10 or 0.5"
        )),
    }
}

fn parse_mix(s: &str) -> Result<u8, String> {
    if s.trim().starts_with('-') {
        return Err(format!(
            "{s:?}: negative percentages are not allowed: --mix is the read percentage, 0 to 100 (like 70)"
        ));
    }
    match s.trim_end_matches('%').parse::<u32>() {
        Ok(v) if v <= 100 => Ok(v as u8),
        Ok(v) => Err(format!(
            "{v} is out of range: --mix is the read percentage, 0 to 100"
        )),
        Err(_) => Err(format!(
            "{s:?} is not a percentage: --mix is the read percentage, 0 to 100 (like 70)"
        )),
    }
}

/// The access pattern.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Workload {
    /// Sequential reads.
    Read,
    /// Sequential writes.
    Write,
    /// Random reads.
    Randread,
    /// Random writes.
    Randwrite,
    /// Sequential, reads and writes mixed by --mix.
    Rw,
    /// Random, reads and writes mixed by --mix.
    Randrw,
}

impl Workload {
    /// Random offsets.
    pub fn random(self) -> bool {
        matches!(
            self,
            Workload::Randread | Workload::Randwrite | Workload::Randrw
        )
    }

    /// Read percentage implied by the workload, given the mix for mixed ones.
    pub fn read_pct(self, mix: u8) -> u8 {
        match self {
            Workload::Read | Workload::Randread => 100,
            Workload::Write | Workload::Randwrite => 0,
            Workload::Rw | Workload::Randrw => mix,
        }
    }
}

impl fmt::Display for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(
            self.to_possible_value()
                .expect("no skipped variants")
                .get_name(),
        )
    }
}

/// The I/O engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, serde::Serialize)]
pub enum Engine {
    /// The nvme-dio userspace driver (VFIO, or the emulated controller).
    #[value(name = "vfio")]
    #[serde(rename = "vfio")]
    Vfio,
    /// The kernel: O_DIRECT through io_uring.
    #[value(name = "io_uring")]
    #[serde(rename = "io_uring")]
    IoUring,
}

impl fmt::Display for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Engine::Vfio => "vfio",
            Engine::IoUring => "io_uring",
        })
    }
}

/// How completions are found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Spin on the completion queue.
    Poll,
    /// Sleep on the queue's MSI-X interrupt (vfio) or in io_uring_enter (io_uring).
    Irq,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Poll => "poll",
            Mode::Irq => "irq",
        })
    }
}

/// `nvme-dio bench`.
#[derive(Clone, Debug, Args)]
#[command(after_help = "Examples:\n  \
    nvme-dio bench -t 2                                  # emulated controller, 4k randread QD 32\n  \
    nvme-dio bench --device emu:ram --verify -w randrw --segments 3\n  \
    nvme-dio bench --device 0000:01:00.0 -q 128 -o 4k -w randread --json\n  \
    nvme-dio bench --device /dev/nvme0n1 --engine io_uring --iopoll -q 128")]
pub struct BenchArgs {
    /// Device: `emu` (emulated controller, null namespace), `emu:ram` (RAM namespace, for
    /// --verify; add `:thread` for completions from the emulator's own thread, `:512` for
    /// 512-byte blocks), a PCI address bound to vfio-pci, or a block device / file (io_uring).
    #[arg(short, long, default_value = "emu", value_parser = parse_device)]
    pub device: DeviceSpec,

    /// I/O engine. Default: vfio for emu and PCI devices, io_uring for paths.
    #[arg(short, long, value_enum)]
    pub engine: Option<Engine>,

    /// I/Os kept in flight per queue.
    #[arg(short = 'q', long, default_value_t = 32, value_parser = parse_queue_depth, allow_negative_numbers = true)]
    pub queue_depth: u32,

    /// Entries of each submission and completion queue, independent of -q (as SPDK perf's
    /// `-Q`... and `io_queue_size`). Default: the controller's maximum, up to 1024, and at
    /// least what -q and --segments need.
    #[arg(long, value_parser = clap::value_parser!(u32).range(2..=65536))]
    pub queue_entries: Option<u32>,

    /// Bytes per I/O (4k, 128k, 1m; a multiple of 512).
    #[arg(short = 'o', long, visible_alias = "bs", default_value = "4k", value_parser = parse_io_size, allow_hyphen_values = true)]
    pub io_size: u64,

    /// Access pattern.
    #[arg(short, long, value_enum, default_value_t = Workload::Randread)]
    pub workload: Workload,

    /// Read percentage for rw / randrw (0-100).
    #[arg(short = 'M', long, value_parser = parse_mix, allow_negative_numbers = true)]
    pub mix: Option<u8>,

    /// Seconds to measure.
    #[arg(short, long, default_value = "5", value_parser = parse_seconds, allow_negative_numbers = true)]
    pub time: f64,

    /// Seconds to run before measuring (discarded).
    #[arg(long, default_value = "0", value_parser = parse_seconds, allow_negative_numbers = true)]
    pub warmup: f64,

    /// Stop after this many measured I/Os in total (split across queues): short,
    /// deterministic runs for tests.
    #[arg(long, value_parser = parse_ios, allow_negative_numbers = true)]
    pub ios: Option<u64>,

    /// Queue pairs, one thread each, pinned to CPU (queue index mod CPUs) unless --no-pin.
    #[arg(long, default_value_t = 1, value_parser = parse_queues, allow_negative_numbers = true)]
    pub queues: u16,

    /// Do not pin worker threads to CPUs.
    #[arg(long)]
    pub no_pin: bool,

    /// Send each I/O as an iovec set of N segments. Segment 0 starts page aligned; segment
    /// i > 0 starts 512 * ((i - 1) % 7 + 1) bytes into a page, so each boundary breaks the
    /// PRP rule and (without SGLs) the planner splits the I/O into N commands.
    #[arg(long, default_value_t = 1, value_parser = parse_segments, allow_negative_numbers = true)]
    pub segments: u32,

    /// Completion mode: spin on the CQ (poll) or sleep on the interrupt (irq).
    #[arg(long, value_enum, default_value_t = Mode::Poll)]
    pub mode: Mode,

    /// Submit up to N I/Os, then ring the doorbell once. Default: the queue depth (one
    /// doorbell per completion batch).
    #[arg(long, value_parser = parse_batch, allow_negative_numbers = true)]
    pub batch: Option<u32>,

    /// Write data that carries its LBA and a seed, check every read; a mismatch fails the
    /// run. The working set is written first when the workload reads.
    #[arg(long)]
    pub verify: bool,

    /// Seed for the random offsets and the verify pattern: a whole number, decimal or 0x
    /// hex (default: from the clock).
    #[arg(long, value_parser = parse_seed, allow_negative_numbers = true)]
    pub seed: Option<u64>,

    /// Bytes of the device to use, from offset 0 (default: all of it; 256 MiB with
    /// --verify on a real device, since it is written first).
    #[arg(long, value_parser = parse_size, allow_hyphen_values = true)]
    pub size: Option<u64>,

    /// Namespace to use (vfio engine).
    #[arg(long, default_value_t = 1, value_parser = parse_nsid, allow_negative_numbers = true)]
    pub nsid: u32,

    /// Per-I/O timeout in milliseconds (vfio engine): a late command is aborted and counted.
    #[arg(long, default_value_t = 30_000, value_parser = parse_timeout_ms, allow_negative_numbers = true)]
    pub timeout_ms: u64,

    /// Describe data with PRPs only, even where the controller supports SGLs.
    #[arg(long)]
    pub no_sgl: bool,

    /// Block size of the emulated namespace (512 or 4096; default: what the device string
    /// says, 4096 unless it ends in `:512`, as everywhere in nvme-dio).
    #[arg(long, value_parser = ["512", "4096"])]
    pub emu_lba_size: Option<String>,

    /// Run the emulated controller on its own thread, polling its doorbells like hardware
    /// (default: inline, inside the doorbell write). With --mode irq the worker then really
    /// sleeps on the queue's interrupt eventfd.
    #[arg(long)]
    pub emu_thread: bool,

    /// The emulated controller advertises and accepts SGLs, as QEMU's does (default: PRPs
    /// only, so --segments splits).
    #[arg(long)]
    pub emu_sgl: bool,

    /// vfio engine: shadow doorbells (Doorbell Buffer Config) where the controller offers
    /// them; on the emulated controller this also makes it offer them.
    #[arg(long)]
    pub shadow_doorbells: bool,

    /// io_uring: IORING_SETUP_IOPOLL (the kernel polls the device; needs poll queues).
    #[arg(long)]
    pub iopoll: bool,

    /// io_uring: IORING_SETUP_SQPOLL (a kernel thread submits).
    #[arg(long)]
    pub sqpoll: bool,

    /// Print one JSON object instead of the human summary.
    #[arg(long)]
    pub json: bool,

    /// Write a log-scaled latency histogram to this SVG file.
    #[arg(long, value_name = "FILE.svg")]
    pub histogram: Option<PathBuf>,

    /// Testing aid, emulated RAM device only: after the working set is written, flip bit 0
    /// of this LBA in the emulator's storage, so --verify must fail.
    #[arg(long, value_name = "LBA", hide = true, value_parser = parse_lba, allow_negative_numbers = true)]
    pub inject_flip_bit: Option<u64>,

    /// Testing aid, emulated controller only: the Nth I/O command from the start of the run
    /// (0 = the first) fails with Internal Error (DNR).
    #[arg(long, value_name = "N", hide = true, value_parser = parse_lba, allow_negative_numbers = true)]
    pub inject_io_error: Option<u64>,

    /// Testing aid, emulated controller only: every write fails with Namespace is Write
    /// Protected, as on a write-protected namespace.
    #[arg(long, hide = true)]
    pub inject_write_protect: bool,
}

impl BenchArgs {
    /// The engine to use: explicit, or the device's natural one.
    pub fn engine(&self) -> Engine {
        self.engine.unwrap_or(match self.device {
            DeviceSpec::Path(_) => Engine::IoUring,
            _ => Engine::Vfio,
        })
    }

    /// The read percentage of the workload.
    pub fn read_pct(&self) -> u8 {
        self.workload.read_pct(self.mix.unwrap_or(50))
    }

    /// Doorbell batch.
    pub fn batch(&self) -> u32 {
        self.batch.unwrap_or(self.queue_depth).min(self.queue_depth)
    }

    /// Emulated namespace block size.
    pub fn emu_lba_size(&self) -> u32 {
        match (&self.emu_lba_size, &self.device) {
            (Some(s), _) => s.parse().expect("clap allows 512 or 4096 only"),
            (None, DeviceSpec::Emu(e)) => e.lba_size,
            _ => 4096,
        }
    }
}

/// `nvme-dio list`.
#[derive(Clone, Debug, Args)]
pub struct ListArgs {
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `nvme-dio identify`.
#[derive(Clone, Debug, Args)]
pub struct IdentifyArgs {
    /// `emu`, `emu:ram`, or a PCI address bound to vfio-pci.
    #[arg(short, long, default_value = "emu", value_parser = parse_device)]
    pub device: DeviceSpec,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `nvme-dio setup`.
#[derive(Clone, Debug, Args)]
pub struct SetupArgs {
    /// PCI address of the NVMe controller, like 0000:01:00.0.
    #[arg(value_parser = parse_bdf_arg)]
    pub bdf: String,
    /// Make sure at least this many 2 MiB hugepages are reserved.
    #[arg(long, value_parser = parse_hugepages, allow_negative_numbers = true)]
    pub hugepages: Option<u64>,
}

/// `nvme-dio reset`.
#[derive(Clone, Debug, Args)]
pub struct ResetArgs {
    /// PCI address of the NVMe controller, like 0000:01:00.0.
    #[arg(value_parser = parse_bdf_arg)]
    pub bdf: String,
}

fn parse_bdf_arg(s: &str) -> Result<String, String> {
    parse_bdf(s).ok_or_else(|| format!("{s:?} is not a PCI address: expected domain:bus:device.function like 0000:01:00.0 (see `nvme-dio list`)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_take_binary_suffixes_and_refuse_junk_and_zero() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("4k"), Ok(4096));
        assert_eq!(parse_size("128K"), Ok(128 << 10));
        assert_eq!(parse_size("1m"), Ok(1 << 20));
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        assert_eq!(parse_size("2g"), Ok(2 << 30));
        assert!(parse_size("4x").unwrap_err().contains("not a size"));
        assert!(parse_size("k").is_err());
        assert!(parse_size("0").unwrap_err().contains("zero"));
        assert!(
            parse_io_size("1000")
                .unwrap_err()
                .contains("multiple of 512")
        );
        assert!(parse_io_size("2g").unwrap_err().contains("1 GiB"));
    }

    #[test]
    fn devices_are_emu_pci_or_paths_and_anything_else_is_refused() {
        assert_eq!(parse_device("emu"), Ok(DeviceSpec::Emu(EmuSpec::null())));
        assert_eq!(parse_device("emu:ram"), Ok(DeviceSpec::Emu(EmuSpec::ram())));
        assert_eq!(
            parse_device("emu:ram:thread:512"),
            Ok(DeviceSpec::Emu(EmuSpec::ram().thread(true).lba_size(512)))
        );
        assert_eq!(
            parse_device("0000:01:00.0"),
            Ok(DeviceSpec::Pci("0000:01:00.0".into()))
        );
        assert_eq!(
            parse_device("01:00.7"),
            Ok(DeviceSpec::Pci("0000:01:00.7".into()))
        );
        assert!(
            parse_device("1:0.7")
                .unwrap_err()
                .contains("not a valid PCI address"),
            "the widths are fixed, as in lspci's output"
        );
        assert_eq!(
            parse_device("/dev/nvme0n1"),
            Ok(DeviceSpec::Path("/dev/nvme0n1".into()))
        );
        assert_eq!(parse_device("./f"), Ok(DeviceSpec::Path("./f".into())));
        // A bare name is a path when such a file exists (it is refused otherwise).
        let name = format!("nvme-dio-args-test-{}", std::process::id());
        let here = std::env::current_dir().unwrap().join(&name);
        std::fs::write(&here, b"x").unwrap();
        let r = parse_device(&name);
        std::fs::remove_file(&here).unwrap();
        assert_eq!(r, Ok(DeviceSpec::Path(name.clone().into())));
        assert!(parse_device(&name).is_err());
        assert!(
            parse_device("bogus")
                .unwrap_err()
                .contains("unknown device")
        );
        assert!(
            parse_device("0000:01:20.0").is_err(),
            "device 0x20 is out of range"
        );
        assert!(
            parse_device("0000:01:00.8").is_err(),
            "function 8 is out of range"
        );
    }

    #[test]
    fn whole_numbers_name_the_expected_form() {
        assert_eq!(parse_queue_depth("32"), Ok(32));
        assert!(
            parse_queue_depth("-5")
                .unwrap_err()
                .contains("negative numbers are not allowed: give a whole number from 1 to 65535")
        );
        assert!(parse_queue_depth("0").unwrap_err().contains("out of range"));
        assert!(
            parse_queue_depth("x")
                .unwrap_err()
                .contains("not a whole number")
        );
        assert!(
            parse_ios("99999999999999999999")
                .unwrap_err()
                .contains("too large")
        );
        assert_eq!(parse_seed("42"), Ok(42));
        assert_eq!(parse_seed("0x2a"), Ok(42));
        assert!(
            parse_seed("abc")
                .unwrap_err()
                .contains("decimal, or hex with 0x")
        );
        assert!(parse_timeout_ms("0").unwrap_err().contains("at least 1"));
        assert!(parse_size("-4k").unwrap_err().contains("negative sizes"));
        assert!(
            parse_seconds("-1")
                .unwrap_err()
                .contains("negative durations")
        );
        assert!(
            parse_mix("-1")
                .unwrap_err()
                .contains("negative percentages")
        );
        let e = Cli::try_parse_from(["nvme-dio", "bench", "-q", "-5"])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("'-5' for '--queue-depth") && e.contains("negative numbers"),
            "{e}"
        );
    }

    #[test]
    fn mix_is_a_percentage() {
        assert_eq!(parse_mix("70"), Ok(70));
        assert_eq!(parse_mix("100%"), Ok(100));
        assert!(parse_mix("101").unwrap_err().contains("0 to 100"));
        assert!(parse_mix("-1").is_err());
    }

    #[test]
    fn defaults_pick_the_engine_from_the_device() {
        let a = Cli::try_parse_from(["nvme-dio", "bench"]).unwrap();
        let Command::Bench(b) = a.command else {
            panic!("bench")
        };
        assert_eq!(
            (b.device.clone(), b.engine(), b.queue_depth, b.io_size),
            (DeviceSpec::Emu(EmuSpec::null()), Engine::Vfio, 32, 4096)
        );
        assert_eq!(
            (b.workload, b.batch(), b.emu_lba_size()),
            (Workload::Randread, 32, 4096)
        );
        let a = Cli::try_parse_from([
            "nvme-dio", "bench", "--device", "/tmp/f", "--bs", "128k", "-w", "randrw", "-M", "70",
        ])
        .unwrap();
        let Command::Bench(b) = a.command else {
            panic!("bench")
        };
        assert_eq!(
            (b.engine(), b.io_size, b.read_pct()),
            (Engine::IoUring, 128 << 10, 70)
        );
        assert!(Cli::try_parse_from(["nvme-dio", "bench", "-M", "150"]).is_err());
    }
}
