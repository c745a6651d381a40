//! Command-line arguments (clap derive) and the value parsers behind them.
//!
//! Every parser returns a sentence that says what was expected, so that clap's
//! `error: invalid value '4x' for '--io-size <SIZE>': ...` line is enough to fix the call.

use std::fmt;
use std::path::PathBuf;

use clap::{ArgAction, Args, Parser, Subcommand, ValueEnum};
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
    /// Overlay the latency CDFs and histograms of several `bench --json` runs in one SVG.
    Plot(PlotArgs),
    /// Show the SMART / Health log (nvme-cli's smart-log).
    SmartLog(crate::health::SmartLogArgs),
    /// Show the Error Information log (nvme-cli's error-log).
    ErrorLog(crate::health::ErrorLogArgs),
    /// Show a feature, or all the common ones (nvme-cli's get-feature).
    GetFeature(crate::health::GetFeatureArgs),
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

pub use crate::bench::pattern::Distribution;

/// `--offset`: bytes, or a percentage of the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Offset {
    /// Bytes from the start.
    Bytes(u64),
    /// Percent of the device (0-99).
    Percent(u8),
}

fn parse_offset(s: &str) -> Result<Offset, String> {
    let t = s.trim();
    if t.starts_with('-') {
        return Err(format!(
            "{s:?}: negative offsets are not allowed: give bytes (like 1g) or a percentage (like 50%)"
        ));
    }
    if let Some(p) = t.strip_suffix('%') {
        return match p.parse::<u32>() {
            Ok(v) if v < 100 => Ok(Offset::Percent(v as u8)),
            Ok(v) => Err(format!(
                "{v}% is out of range: an offset percentage is 0 to 99 (the range must hold an I/O)"
            )),
            Err(_) => Err(format!(
                "{s:?} is not an offset: give bytes (like 1g) or a percentage (like 50%)"
            )),
        };
    }
    if t == "0" {
        return Ok(Offset::Bytes(0));
    }
    parse_size(t).map(Offset::Bytes)
}

fn parse_distribution(s: &str) -> Result<Distribution, String> {
    let t = s.trim().to_ascii_lowercase();
    let forms = "random, zipf:THETA (like zipf:1.2), pareto:H (like pareto:0.2) or normal:DEV (like normal:10)";
    let (name, param) = match t.split_once(':') {
        Some((n, p)) => (n, Some(p)),
        None => (t.as_str(), None),
    };
    let num = |what: &str| -> Result<f64, String> {
        let p = param.ok_or_else(|| format!("{name} needs its {what}: give {forms}"))?;
        match p.parse::<f64>() {
            Ok(v) if v.is_finite() => Ok(v),
            _ => Err(format!("{p:?} is not a number: give {forms}")),
        }
    };
    match name {
        "random" | "uniform" if param.is_none() => Ok(Distribution::Uniform),
        "zipf" => {
            let theta = num("theta")?;
            if theta <= 0.0 || theta == 1.0 {
                return Err(format!(
                    "zipf theta {theta} is out of range: it must be above 0 and not 1 (fio's rule), like zipf:1.2"
                ));
            }
            Ok(Distribution::Zipf(theta))
        }
        "pareto" => {
            let h = num("shape h")?;
            if !(h > 0.0 && h < 1.0) {
                return Err(format!(
                    "pareto h {h} is out of range: it must be between 0 and 1, like pareto:0.2"
                ));
            }
            Ok(Distribution::Pareto(h))
        }
        "normal" | "gauss" => {
            let dev = num("deviation in percent")?;
            if !(dev > 0.0 && dev <= 100.0) {
                return Err(format!(
                    "normal deviation {dev}% is out of range: give a percentage of the range above 0, up to 100, like normal:10"
                ));
            }
            Ok(Distribution::Normal(dev))
        }
        _ => Err(format!("{s:?} is not a distribution: give {forms}")),
    }
}

/// `--bssplit`: `(bytes, percent)` pairs summing to 100.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BsSplit(pub Vec<(u64, u8)>);

fn parse_bssplit(s: &str) -> Result<BsSplit, String> {
    let form = "give size/percent pairs separated by colons, like 4k/50:64k/40:1m/10";
    let parts: Vec<&str> = s.trim().split(':').filter(|p| !p.is_empty()).collect();
    if parts.is_empty() {
        return Err(format!("an empty --bssplit: {form}"));
    }
    let mut out = Vec::new();
    let mut rest = None;
    for (i, part) in parts.iter().enumerate() {
        let (size, pct) = match part.split_once('/') {
            Some((a, b)) => (a, Some(b)),
            None => (*part, None),
        };
        let bytes = parse_io_size(size).map_err(|e| format!("{part:?}: {e}"))?;
        match pct {
            Some(p) => {
                let v: u32 = p
                    .trim_end_matches('%')
                    .parse()
                    .map_err(|_| format!("{p:?} in {part:?} is not a percentage: {form}"))?;
                if v > 100 {
                    return Err(format!("{v}% in {part:?} is more than 100%: {form}"));
                }
                out.push((bytes, v as u8));
            }
            None if i + 1 == parts.len() => rest = Some(bytes),
            None => {
                return Err(format!(
                    "{part:?} has no percentage: only the last size may leave it out (it takes the rest): {form}"
                ));
            }
        }
    }
    let sum: u32 = out.iter().map(|p| p.1 as u32).sum();
    match rest {
        Some(b) if sum <= 100 => out.push((b, (100 - sum) as u8)),
        Some(_) => {}
        None if sum == 100 => {}
        None => {}
    }
    let sum: u32 = out.iter().map(|p| p.1 as u32).sum();
    if sum != 100 {
        return Err(format!(
            "the percentages of --bssplit {s} add up to {sum}, not 100: {form}"
        ));
    }
    out.retain(|p| p.1 > 0);
    Ok(BsSplit(out))
}

/// `--percentiles`: percentages in (0, 100], in the order given.
#[derive(Clone, Debug, PartialEq)]
pub struct Percentiles(pub Vec<f64>);

fn parse_percentiles(s: &str) -> Result<Percentiles, String> {
    let form = "give percentages above 0 and up to 100 separated by commas, like 50,99,99.9";
    let mut out = Vec::new();
    for part in s.split([',', ':']).map(str::trim) {
        let v: f64 = part
            .parse()
            .map_err(|_| format!("{part:?} is not a percentage: {form}"))?;
        if !(v > 0.0 && v <= 100.0) {
            return Err(format!("{v} is out of range: {form}"));
        }
        if out.contains(&v) {
            return Err(format!("{v} is given twice: {form}"));
        }
        out.push(v);
    }
    Ok(Percentiles(out))
}

fn parse_interval(s: &str) -> Result<f64, String> {
    let v = parse_seconds(s)?;
    if v < 0.1 {
        return Err(format!(
            "{v} s is too short: a status line every 0.1 s or more (like 1)"
        ));
    }
    Ok(v)
}

fn parse_repeat(s: &str) -> Result<u32, String> {
    parse_whole(s, 1, 1000, false).map(|v| v as u32)
}

fn parse_fsync(s: &str) -> Result<u32, String> {
    parse_whole(s, 1, u32::MAX as u64, false).map(|v| v as u32)
}

fn parse_rate(s: &str) -> Result<u64, String> {
    parse_whole(s, 1, 1 << 40, false)
}

fn parse_num_qpairs(s: &str) -> Result<u32, String> {
    parse_whole(s, 1, 64, false).map(|v| v as u32)
}

/// CPUs for worker threads, in the order given, without repeats.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CpuList(pub Vec<usize>);

/// The highest CPU number accepted in a mask or list (the kernel's CPU_SETSIZE is 1024).
const MAX_CPU: usize = 1023;

/// Parses a CPU list: `0-3`, `0,2`, `1-2,5` (as `taskset -c` and SPDK's `[0-3]`).
///
/// # Errors
///
/// A sentence naming the accepted form.
pub fn parse_cpu_list(s: &str) -> Result<CpuList, String> {
    let form = "give CPU numbers and ranges separated by commas, like 0-3 or 0,2,5";
    let t = s.trim();
    if t.is_empty() {
        return Err(format!("an empty CPU list: {form}"));
    }
    let mut cpus = Vec::new();
    for part in t.split(',') {
        let part = part.trim();
        let num = |x: &str| -> Result<usize, String> {
            if x.starts_with('-') || x.is_empty() {
                return Err(format!("{s:?} is not a CPU list: {form}"));
            }
            let v: usize = x
                .parse()
                .map_err(|_| format!("{x:?} in {s:?} is not a CPU number: {form}"))?;
            if v > MAX_CPU {
                return Err(format!("CPU {v} is out of range: CPUs are 0 to {MAX_CPU}"));
            }
            Ok(v)
        };
        let (lo, hi) = match part.split_once('-') {
            Some((a, b)) => (num(a)?, num(b)?),
            None => {
                let v = num(part)?;
                (v, v)
            }
        };
        if lo > hi {
            return Err(format!(
                "{part:?}: a range goes from the lower CPU to the higher, like {hi}-{lo}"
            ));
        }
        for c in lo..=hi {
            if cpus.contains(&c) {
                return Err(format!(
                    "CPU {c} is given twice in {s:?}: name each CPU once"
                ));
            }
            cpus.push(c);
        }
    }
    Ok(CpuList(cpus))
}

/// Parses SPDK perf's core mask: hex (`0x3`, `3`) or a bracketed list (`[0-3,6]`).
///
/// # Errors
///
/// A sentence naming the accepted forms.
pub fn parse_core_mask(s: &str) -> Result<CpuList, String> {
    let t = s.trim();
    if let Some(list) = t.strip_prefix('[').and_then(|x| x.strip_suffix(']')) {
        return parse_cpu_list(list);
    }
    let hex = t
        .strip_prefix("0x")
        .or_else(|| t.strip_prefix("0X"))
        .unwrap_or(t);
    let form = "give a hex mask like 0x3 (CPUs 0 and 1) or a list like [0-3]";
    if hex.is_empty() || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(format!("{s:?} is not a core mask: {form}"));
    }
    let mut cpus = Vec::new();
    for (i, c) in hex.chars().rev().enumerate() {
        let nibble = c.to_digit(16).expect("checked hex digit") as usize;
        for b in 0..4 {
            if nibble & (1 << b) != 0 {
                let cpu = i * 4 + b;
                if cpu > MAX_CPU {
                    return Err(format!("{s:?} names CPU {cpu}: CPUs are 0 to {MAX_CPU}"));
                }
                cpus.push(cpu);
            }
        }
    }
    if cpus.is_empty() {
        return Err(format!("{s:?} selects no CPU: {form}"));
    }
    Ok(CpuList(cpus))
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
    #[value(alias = "readwrite")]
    Rw,
    /// Random, reads and writes mixed by --mix.
    Randrw,
    /// Sequential deallocate (trim): Dataset Management, one range of --io-size each.
    Trim,
    /// Random deallocate (trim).
    Randtrim,
    /// Sequential Write Zeroes (no data transferred).
    Writezeroes,
    /// Random Write Zeroes.
    Randwritezeroes,
}

/// What the non-read I/Os of a workload are.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WriteKind {
    /// Write commands carrying data.
    Write,
    /// Dataset Management with the deallocate attribute.
    Trim,
    /// Write Zeroes.
    WriteZeroes,
}

impl Workload {
    /// Random offsets.
    pub fn random(self) -> bool {
        matches!(
            self,
            Workload::Randread
                | Workload::Randwrite
                | Workload::Randrw
                | Workload::Randtrim
                | Workload::Randwritezeroes
        )
    }

    /// What its writes are.
    pub fn write_kind(self) -> WriteKind {
        match self {
            Workload::Trim | Workload::Randtrim => WriteKind::Trim,
            Workload::Writezeroes | Workload::Randwritezeroes => WriteKind::WriteZeroes,
            _ => WriteKind::Write,
        }
    }

    /// Read percentage implied by the workload, given the mix for mixed ones.
    pub fn read_pct(self, mix: u8) -> u8 {
        match self {
            Workload::Read | Workload::Randread => 100,
            Workload::Write
            | Workload::Randwrite
            | Workload::Trim
            | Workload::Randtrim
            | Workload::Writezeroes
            | Workload::Randwritezeroes => 0,
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

/// `--output-format` (fio's).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// The human summary.
    Normal,
    /// One JSON object (as --json).
    Json,
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
    /// Spin on the CQ an adaptive while, then sleep on the interrupt (vfio only).
    Hybrid,
}

impl Mode {
    /// Sleeps on interrupts at some point (irq, hybrid): needs MSI-X vectors.
    pub fn uses_interrupts(self) -> bool {
        self != Mode::Poll
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Poll => "poll",
            Mode::Irq => "irq",
            Mode::Hybrid => "hybrid",
        })
    }
}

/// `nvme-dio bench`.
#[derive(Clone, Debug, Args)]
#[command(after_help = "Examples:\n  \
    nvme-dio bench -t 2                                  # emulated controller, 4k randread QD 32\n  \
    nvme-dio bench --device emu:ram --verify -w randrw --segments 3\n  \
    nvme-dio bench --device 0000:01:00.0 -q 128 -o 4k -w randread --json\n  \
    nvme-dio bench --device /dev/nvme0n1 --engine io_uring --iopoll -q 128\n  \
    nvme-dio bench --device 0000:01:00.0 --device 0000:02:00.0 -c 0x3 -P 2 -q 64   # SPDK perf style\n  \
    nvme-dio bench --rw=randrw --rwmixread=70 --bs=4k --iodepth=16 --runtime=10 --random_distribution=zipf:1.2 --fsync=32   # fio style\n  \
    nvme-dio bench -w randrw --percentiles 50,99,99.9 --status-interval 1 --repeat 3 --json --output run.json")]
pub struct BenchArgs {
    /// Device: `emu` (emulated controller, null namespace), `emu:ram` (RAM namespace, for
    /// --verify; add `:thread` for completions from the emulator's own thread, `:512` for
    /// 512-byte blocks), a PCI address bound to vfio-pci, or a block device / file (io_uring).
    ///
    /// Repeat it for several devices in one run (SPDK perf's several `-r`): each device's
    /// namespaces (--nsid) are spread over the worker threads, as SPDK perf does.
    #[arg(short, long = "device", value_name = "DEVICE", default_value = "emu", value_parser = parse_device, action = ArgAction::Append)]
    pub devices: Vec<DeviceSpec>,

    /// I/O engine. Default: vfio for emu and PCI devices, io_uring for paths.
    #[arg(short, long, value_enum)]
    pub engine: Option<Engine>,

    /// I/Os kept in flight per namespace per worker (SPDK perf's -q), spread over its -P
    /// queue pairs; with one of each, per queue.
    #[arg(short = 'q', long, visible_alias = "iodepth", default_value_t = 32, value_parser = parse_queue_depth, allow_negative_numbers = true)]
    pub queue_depth: u32,

    /// Entries of each submission and completion queue, independent of -q (as SPDK perf's
    /// `-Q`... and `io_queue_size`). Default: the controller's maximum, up to 1024, and at
    /// least what -q and --segments need.
    #[arg(long, value_parser = clap::value_parser!(u32).range(2..=65536))]
    pub queue_entries: Option<u32>,

    /// Bytes per I/O (4k, 128k, 1m; a multiple of 512).
    #[arg(short = 'o', long, visible_aliases = ["bs", "blocksize"], default_value = "4k", value_parser = parse_io_size, allow_hyphen_values = true)]
    pub io_size: u64,

    /// Access pattern.
    #[arg(short, long, visible_aliases = ["rw", "readwrite"], value_enum, default_value_t = Workload::Randread)]
    pub workload: Workload,

    /// Read percentage for rw / randrw (0-100).
    #[arg(short = 'M', long, visible_alias = "rwmixread", value_parser = parse_mix, allow_negative_numbers = true)]
    pub mix: Option<u8>,

    /// Seconds to measure.
    #[arg(short, long, visible_alias = "runtime", default_value = "5", value_parser = parse_seconds, allow_negative_numbers = true)]
    pub time: f64,

    /// Seconds to run before measuring (discarded).
    #[arg(long, visible_aliases = ["ramp_time", "ramp-time"], default_value = "0", value_parser = parse_seconds, allow_negative_numbers = true)]
    pub warmup: f64,

    /// Stop after this many measured I/Os in total (split across queues): short,
    /// deterministic runs for tests.
    #[arg(long, value_parser = parse_ios, allow_negative_numbers = true)]
    pub ios: Option<u64>,

    /// Worker threads, pinned to CPU (worker index mod CPUs) unless --no-pin; each drives
    /// its own queue pair(s). With -c / --cpus the CPU list says instead (one worker each).
    #[arg(long, visible_alias = "numjobs", default_value_t = 1, value_parser = parse_queues, allow_negative_numbers = true, conflicts_with_all = ["core_mask", "cpus"])]
    pub queues: u16,

    /// SPDK perf's core mask: one worker thread per CPU in the mask, pinned to it. Hex
    /// (`0x3` = CPUs 0 and 1) or a list in brackets (`[0-3,6]`).
    #[arg(short = 'c', long, value_name = "MASK", value_parser = parse_core_mask, conflicts_with = "cpus")]
    pub core_mask: Option<CpuList>,

    /// CPUs to run worker threads on, one pinned worker each: `0-3`, `0,2`, `1-2,5`.
    #[arg(long, value_name = "LIST", value_parser = parse_cpu_list)]
    pub cpus: Option<CpuList>,

    /// Queue pairs per namespace per worker (SPDK perf's -P): the worker spreads that
    /// namespace's -q I/Os over them, round robin.
    #[arg(short = 'P', long, default_value_t = 1, value_parser = parse_num_qpairs, allow_negative_numbers = true)]
    pub num_qpairs: u32,

    /// Do not pin worker threads to CPUs.
    #[arg(long, conflicts_with_all = ["core_mask", "cpus"])]
    pub no_pin: bool,

    /// Send each I/O as an iovec set of N segments. Segment 0 starts page aligned; segment
    /// i > 0 starts 512 * ((i - 1) % 7 + 1) bytes into a page, so each boundary breaks the
    /// PRP rule and (without SGLs) the planner splits the I/O into N commands.
    #[arg(long, default_value_t = 1, value_parser = parse_segments, allow_negative_numbers = true)]
    pub segments: u32,

    /// Completion mode: spin on the CQ (poll), sleep on the interrupt (irq), or spin an
    /// adaptive while and then sleep (hybrid; nvme-dio engine only).
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
    #[arg(long, visible_alias = "randseed", value_parser = parse_seed, allow_negative_numbers = true)]
    pub seed: Option<u64>,

    /// Bytes of the device to use, from --offset (default: the rest of it; 256 MiB with
    /// --verify on a real device, since it is written first).
    #[arg(long, value_parser = parse_size, allow_hyphen_values = true)]
    pub size: Option<u64>,

    /// Where the range the I/Os go to starts (fio's offset): bytes (`1g`, a multiple of the
    /// block size) or a percentage of the device (`50%`).
    #[arg(long, value_parser = parse_offset, allow_hyphen_values = true)]
    pub offset: Option<Offset>,

    /// Where random offsets fall (fio's random_distribution): `random` (uniform),
    /// `zipf:THETA` (theta > 0, not 1; 1.2 is a common hot set), `pareto:H` (0 < h < 1;
    /// 0.2 = 80/20), `normal:DEV` (deviation in percent of the range). The hot units are
    /// scattered over the range by a hash, as fio does.
    #[arg(long, visible_alias = "random_distribution", default_value = "random", value_parser = parse_distribution)]
    pub random_distribution: Distribution,

    /// Mixed I/O sizes (fio's bssplit): `4k/50:64k/40:1m/10`, size/percent pairs; the last
    /// percentage may be left out (it takes the rest). Replaces --io-size.
    #[arg(long, value_parser = parse_bssplit, conflicts_with = "io_size")]
    pub bssplit: Option<BsSplit>,

    /// Send a Flush after every N writes, per queue pair (fio's fsync): flushes are
    /// counted and timed apart from the data I/Os.
    #[arg(long, value_name = "N", value_parser = parse_fsync, allow_negative_numbers = true)]
    pub fsync: Option<u32>,

    /// Set Force Unit Access on every write (and write zeroes): durable when it completes.
    #[arg(long)]
    pub fua: bool,

    /// Cap the I/O rate at N I/Os per second per worker thread (fio's rate_iops, which is
    /// per job), spread evenly over its queue pairs.
    #[arg(long, visible_alias = "rate_iops", value_name = "N", value_parser = parse_rate, allow_negative_numbers = true)]
    pub rate_iops: Option<u64>,

    /// Namespace to use (vfio engine); repeat it for several (every device uses each).
    #[arg(long = "nsid", value_name = "NSID", default_value = "1", value_parser = parse_nsid, allow_negative_numbers = true, action = ArgAction::Append)]
    pub nsids: Vec<u32>,

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

    /// Print one JSON object instead of the human summary (keys documented in
    /// cli/src/bench/json.rs).
    #[arg(long)]
    pub json: bool,

    /// fio's spelling of the report's form: `normal` (the text) or `json` (as --json).
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub output_format: Option<OutputFormat>,

    /// Write the report (text or --json) to FILE instead of standard output (fio's
    /// --output); the path is checked before the run.
    #[arg(long, value_name = "FILE")]
    pub output: Option<PathBuf>,

    /// Print a line with the IOPS and MiB/s of every S seconds while measuring (fio's
    /// --status-interval); with --json they go into `intervals` instead.
    #[arg(long, visible_alias = "status_interval", value_name = "S", value_parser = parse_interval, allow_negative_numbers = true)]
    pub status_interval: Option<f64>,

    /// Latency percentiles to report (fio's percentile_list): `50,99,99.9` (or with `:`).
    #[arg(long, visible_alias = "percentile_list", value_name = "LIST", default_value = "50,90,99,99.9,99.99", value_parser = parse_percentiles)]
    pub percentiles: Percentiles,

    /// Run the whole benchmark N times and report each run and the min / median / max.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = parse_repeat, allow_negative_numbers = true)]
    pub repeat: u32,

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
    /// The first device (the only one, in most runs).
    pub fn device(&self) -> &DeviceSpec {
        &self.devices[0]
    }

    /// True when every device is the emulated controller.
    pub fn all_emu(&self) -> bool {
        self.devices.iter().all(DeviceSpec::is_emu)
    }

    /// The CPUs given with -c or --cpus, if any: one pinned worker each.
    pub fn cpu_list(&self) -> Option<&[usize]> {
        self.core_mask
            .as_ref()
            .or(self.cpus.as_ref())
            .map(|c| c.0.as_slice())
    }

    /// Worker threads: one per listed CPU, else --queues.
    pub fn workers(&self) -> usize {
        self.cpu_list().map_or(self.queues as usize, <[usize]>::len)
    }

    /// The engine to use: explicit, or the device's natural one.
    pub fn engine(&self) -> Engine {
        self.engine.unwrap_or(match self.device() {
            DeviceSpec::Path(_) => Engine::IoUring,
            _ => Engine::Vfio,
        })
    }

    /// JSON output: --json or --output-format json.
    pub fn json(&self) -> bool {
        self.json || self.output_format == Some(OutputFormat::Json)
    }

    /// The largest I/O: --io-size, or the largest size of --bssplit.
    pub fn max_io_size(&self) -> u64 {
        self.bssplit
            .as_ref()
            .and_then(|b| b.0.iter().map(|p| p.0).max())
            .unwrap_or(self.io_size)
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
        match (&self.emu_lba_size, self.device()) {
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
    /// Do not open controllers bound to vfio-pci to read their model, serial and
    /// namespaces (opening resets an idle controller; one another process holds is refused
    /// by VFIO and left alone either way).
    #[arg(long)]
    pub no_open: bool,
}

/// `nvme-dio identify`.
#[derive(Clone, Debug, Args)]
#[command(after_help = "Examples:\n  \
    nvme-dio identify                                # the emulated controller\n  \
    nvme-dio identify --device 0000:01:00.0 --json   # every field, nvme-cli's names\n  \
    nvme-dio identify --device 0000:01:00.0 -b > id.bin   # the 4 KiB pages (controller, then namespaces)")]
pub struct IdentifyArgs {
    /// `emu`, `emu:ram`, or a PCI address bound to vfio-pci.
    #[arg(short, long, default_value = "emu", value_parser = parse_device)]
    pub device: DeviceSpec,
    /// Print JSON.
    #[arg(long, conflicts_with = "raw")]
    pub json: bool,
    /// Write the raw Identify pages, binary, as nvme-cli's `-b`: the controller's 4096 bytes,
    /// then each namespace's 4096 bytes in NSID order (or only --nsid's).
    #[arg(short = 'b', long, visible_alias = "raw-binary")]
    pub raw: bool,
    /// Show only this namespace.
    #[arg(short = 'n', long, value_parser = parse_nsid, allow_negative_numbers = true)]
    pub nsid: Option<u32>,
}

/// `nvme-dio plot`.
#[derive(Clone, Debug, Args)]
#[command(after_help = "Example:\n  \
    nvme-dio bench -q 1 --json > qd1.json; nvme-dio bench -q 32 --json > qd32.json\n  \
    nvme-dio plot qd1.json qd32.json -o cmp.svg")]
pub struct PlotArgs {
    /// Files written by `nvme-dio bench --json`; each is labelled by its name.
    #[arg(required = true, value_name = "RUN.json")]
    pub files: Vec<PathBuf>,
    /// The SVG to write.
    #[arg(short, long, value_name = "FILE.svg")]
    pub output: PathBuf,
    /// Title (default: the file names).
    #[arg(long)]
    pub title: Option<String>,
}

/// `nvme-dio setup`.
#[derive(Clone, Debug, Args)]
#[command(
    args_conflicts_with_subcommands = true,
    after_help = "With no address (or with --all), every NVMe controller that is not in use is bound:\n\
    one with a mounted filesystem, swap, or a holder (LVM, RAID, dm-crypt) on a namespace\n\
    is skipped with the reason. PCI_ALLOWED=\"ADDR ...\" limits that to those addresses,\n\
    PCI_BLOCKED=\"ADDR ...\" leaves those alone, as in SPDK's setup.sh. What setup binds is\n\
    remembered (/run/nvme-dio/setup.json) so `nvme-dio reset` gives back all of it.\n\n\
Examples:\n  \
    nvme-dio setup                          # every controller not in use, no hugepages change\n  \
    nvme-dio setup 0000:01:00.0 --hugepages 64\n  \
    nvme-dio setup --hugepages 512          # hugepages only\n  \
    nvme-dio setup --hugepages-node 0:512 --hugepages-node 1:512\n  \
    PCI_BLOCKED=0000:01:00.0 nvme-dio setup --all --hugepages 64\n  \
    nvme-dio setup status"
)]
pub struct SetupArgs {
    /// `setup status`: what is bound where, hugepages per NUMA node.
    #[command(subcommand)]
    pub action: Option<SetupAction>,
    /// PCI addresses of NVMe controllers, like 0000:01:00.0. None: every NVMe controller not
    /// in use (unless only hugepages are asked for).
    #[arg(value_name = "BDF", value_parser = parse_bdf_arg)]
    pub bdfs: Vec<String>,
    /// Bind every NVMe controller not in use, also when hugepages are asked for.
    #[arg(long, conflicts_with = "bdfs")]
    pub all: bool,
    /// Make sure at least this many 2 MiB hugepages are reserved (system wide).
    #[arg(long, value_parser = parse_hugepages, allow_negative_numbers = true)]
    pub hugepages: Option<u64>,
    /// Make sure at least PAGES 2 MiB hugepages are reserved on NUMA node NODE (repeat it
    /// for several nodes).
    #[arg(long, value_name = "NODE:PAGES", value_parser = parse_node_pages, allow_hyphen_values = true)]
    pub hugepages_node: Vec<(u32, u64)>,
}

impl SetupArgs {
    /// Only hugepages were asked for: no address, no --all, a hugepage flag.
    pub fn hugepages_only(&self) -> bool {
        self.bdfs.is_empty()
            && !self.all
            && (self.hugepages.is_some() || !self.hugepages_node.is_empty())
    }
}

/// `nvme-dio setup <action>`.
#[derive(Clone, Debug, Subcommand)]
pub enum SetupAction {
    /// Show the NVMe controllers, their drivers and which nvme-dio bound, the vfio-pci
    /// driver, and the hugepages (per NUMA node).
    Status(SetupStatusArgs),
}

/// `nvme-dio setup status`.
#[derive(Clone, Debug, Args)]
pub struct SetupStatusArgs {
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `nvme-dio reset`.
#[derive(Clone, Debug, Args)]
pub struct ResetArgs {
    /// PCI address of the NVMe controller, like 0000:01:00.0. None: every controller
    /// `nvme-dio setup` bound (back to the driver it had).
    #[arg(value_parser = parse_bdf_arg)]
    pub bdf: Option<String>,
}

fn parse_node_pages(s: &str) -> Result<(u32, u64), String> {
    let bad = || {
        format!("{s:?} is not NODE:PAGES: give a NUMA node and a number of 2 MiB pages, like 0:512")
    };
    let (n, p) = s.split_once(':').ok_or_else(bad)?;
    let node = parse_whole(n, 0, 1023, false).map_err(|e| format!("NUMA node {e}"))?;
    let pages = parse_hugepages(p).map_err(|e| format!("hugepages {e}"))?;
    Ok((node as u32, pages))
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
    fn core_masks_and_cpu_lists_name_cpus_in_order() {
        assert_eq!(parse_core_mask("0x3"), Ok(CpuList(vec![0, 1])));
        assert_eq!(parse_core_mask("5"), Ok(CpuList(vec![0, 2])));
        assert_eq!(parse_core_mask("0x10"), Ok(CpuList(vec![4])));
        assert_eq!(parse_core_mask("[0-2,5]"), Ok(CpuList(vec![0, 1, 2, 5])));
        assert!(
            parse_core_mask("0x0")
                .unwrap_err()
                .contains("selects no CPU")
        );
        assert!(
            parse_core_mask("zz")
                .unwrap_err()
                .contains("not a core mask")
        );
        assert_eq!(parse_cpu_list("0-3"), Ok(CpuList(vec![0, 1, 2, 3])));
        assert_eq!(parse_cpu_list("1-2,5"), Ok(CpuList(vec![1, 2, 5])));
        assert!(
            parse_cpu_list("3-1")
                .unwrap_err()
                .contains("lower CPU to the higher")
        );
        assert!(parse_cpu_list("0,0").unwrap_err().contains("given twice"));
        assert!(
            parse_cpu_list("a")
                .unwrap_err()
                .contains("not a CPU number")
        );
        assert!(parse_cpu_list("2000").unwrap_err().contains("out of range"));
        let a = Cli::try_parse_from([
            "nvme-dio", "bench", "-c", "0x3", "--device", "emu", "--device", "emu:ram", "--nsid",
            "1",
        ])
        .unwrap();
        let Command::Bench(b) = a.command else {
            panic!("bench")
        };
        assert_eq!(
            (b.workers(), b.devices.len(), b.nsids.clone()),
            (2, 2, vec![1])
        );
        assert!(Cli::try_parse_from(["nvme-dio", "bench", "-c", "1", "--queues", "2"]).is_err());
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
            (b.device().clone(), b.engine(), b.queue_depth, b.io_size),
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
