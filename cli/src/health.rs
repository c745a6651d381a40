//! `nvme-dio smart-log`, `error-log` and `get-feature`: the controller's health, its error
//! log and its features, in the spirit of nvme-cli's commands of the same names (the same
//! field names, text or `--json`), read through the nvme-dio driver.

use std::fmt::Write as _;

use clap::Args;
use nvme_dio::{Controller, Device, ErrorLogEntry, OpenError, SmartLog};
use serde::Serialize;

use crate::args::{DeviceSpec, parse_device};
use crate::error::CliError;

/// `nvme-dio smart-log`.
#[derive(Clone, Debug, Args)]
pub struct SmartLogArgs {
    /// `emu`, `emu:ram`, or a PCI address bound to vfio-pci.
    #[arg(short, long, default_value = "emu", value_parser = parse_device)]
    pub device: DeviceSpec,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `nvme-dio error-log`.
#[derive(Clone, Debug, Args)]
pub struct ErrorLogArgs {
    /// `emu`, `emu:ram`, or a PCI address bound to vfio-pci.
    #[arg(short, long, default_value = "emu", value_parser = parse_device)]
    pub device: DeviceSpec,
    /// Entries to read (at most what the controller keeps, ELPE + 1).
    #[arg(short, long, default_value_t = 64)]
    pub entries: u32,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `nvme-dio get-feature`.
#[derive(Clone, Debug, Args)]
pub struct GetFeatureArgs {
    /// `emu`, `emu:ram`, or a PCI address bound to vfio-pci.
    #[arg(short, long, default_value = "emu", value_parser = parse_device)]
    pub device: DeviceSpec,
    /// Feature identifier, decimal or 0x hex (all the common features if not given).
    #[arg(short = 'f', long = "feature-id", value_parser = parse_fid)]
    pub feature_id: Option<u8>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// Parses a feature identifier: `8`, `0x08`.
///
/// # Errors
///
/// A sentence naming the accepted forms.
pub fn parse_fid(s: &str) -> Result<u8, String> {
    let t = s.trim();
    let v = match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        Some(h) => u8::from_str_radix(h, 16),
        None => t.parse::<u8>(),
    };
    v.map_err(|_| {
        format!("{s:?} is not a feature identifier: use 0 to 255, decimal or hex like 0x08")
    })
}

/// Brings the controller up for an admin-only look (one queue pair granted, no MSI-X).
fn open(device: &DeviceSpec) -> Result<Controller<Device>, CliError> {
    if let DeviceSpec::Path(p) = device {
        return Err(CliError::BadArgument(format!(
            "{}: health and logs need an NVMe controller nvme-dio drives (emu, or a PCI \
             address bound to vfio-pci, see `nvme-dio list`); for a kernel device use nvme-cli \
             (`nvme smart-log /dev/nvme0`)",
            p.display()
        )));
    }
    Controller::open(&device.to_string(), |o| {
        o.io_queues = 1;
        o.interrupts = false;
    })
    .map_err(|e| match e {
        OpenError::Emu(source) => CliError::Emu { source },
        OpenError::Vfio(source) => CliError::Vfio {
            device: device.to_string(),
            source,
        },
        OpenError::Driver(source) => CliError::driver(device, source),
        other => CliError::BadArgument(other.to_string()),
    })
}

/// The SMART / Health log, as `--json` prints it (nvme-cli's field names).
#[derive(Clone, Debug, Serialize)]
pub struct SmartReport {
    /// The device as given.
    pub device: String,
    /// Critical Warning byte.
    pub critical_warning: u8,
    /// The warnings set, by name.
    pub critical_warnings: Vec<&'static str>,
    /// Composite temperature, kelvin.
    pub temperature: u16,
    /// Available spare, percent.
    pub avail_spare: u8,
    /// Available spare threshold, percent.
    pub spare_thresh: u8,
    /// Percentage used.
    pub percent_used: u8,
    /// Endurance group critical warning summary.
    pub endurance_grp_critical_warning_summary: u8,
    /// Data units read (thousands of 512-byte units).
    pub data_units_read: u128,
    /// Data units written.
    pub data_units_written: u128,
    /// Read commands.
    pub host_read_commands: u128,
    /// Write commands.
    pub host_write_commands: u128,
    /// Minutes busy.
    pub controller_busy_time: u128,
    /// Power cycles.
    pub power_cycles: u128,
    /// Power-on hours.
    pub power_on_hours: u128,
    /// Unsafe shutdowns.
    pub unsafe_shutdowns: u128,
    /// Media and data integrity errors.
    pub media_errors: u128,
    /// Error information log entries.
    pub num_err_log_entries: u128,
    /// Minutes above the warning temperature.
    pub warning_temp_time: u32,
    /// Minutes above the critical temperature.
    pub critical_comp_time: u32,
    /// Temperature sensors 1..8 that report (kelvin).
    pub temperature_sensors: Vec<u16>,
}

impl SmartReport {
    fn new(device: String, s: &SmartLog) -> SmartReport {
        SmartReport {
            device,
            critical_warning: s.critical_warning.0,
            critical_warnings: s.critical_warning.names(),
            temperature: s.temperature_kelvin,
            avail_spare: s.available_spare,
            spare_thresh: s.spare_threshold,
            percent_used: s.percentage_used,
            endurance_grp_critical_warning_summary: s.endurance_group_warning,
            data_units_read: s.data_units_read,
            data_units_written: s.data_units_written,
            host_read_commands: s.host_read_commands,
            host_write_commands: s.host_write_commands,
            controller_busy_time: s.controller_busy_minutes,
            power_cycles: s.power_cycles,
            power_on_hours: s.power_on_hours,
            unsafe_shutdowns: s.unsafe_shutdowns,
            media_errors: s.media_errors,
            num_err_log_entries: s.error_log_entries,
            warning_temp_time: s.warning_temperature_minutes,
            critical_comp_time: s.critical_temperature_minutes,
            temperature_sensors: s
                .temperature_sensors
                .iter()
                .copied()
                .filter(|&t| t != 0)
                .collect(),
        }
    }
}

/// Decimal units of 512 000 bytes, nvme-cli style ("1.02 GB").
fn units(u: u128) -> String {
    let b = u as f64 * 512_000.0;
    let (v, unit) = if b >= 1e12 {
        (b / 1e12, "TB")
    } else if b >= 1e9 {
        (b / 1e9, "GB")
    } else if b >= 1e6 {
        (b / 1e6, "MB")
    } else {
        (b / 1e3, "kB")
    };
    format!("{u} ({v:.2} {unit})")
}

/// The human form of the SMART log.
pub fn smart_human(r: &SmartReport) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "Smart Log for NVME device:{} namespace-id:ffffffff",
        r.device
    );
    let mut line = |k: &str, v: String| {
        let _ = writeln!(o, "{k:<40}: {v}");
    };
    let warn = if r.critical_warnings.is_empty() {
        format!("{:#x}", r.critical_warning)
    } else {
        format!(
            "{:#x} ({})",
            r.critical_warning,
            r.critical_warnings.join(", ")
        )
    };
    line("critical_warning", warn);
    line(
        "temperature",
        format!("{} °C ({} K)", r.temperature as i32 - 273, r.temperature),
    );
    line("available_spare", format!("{}%", r.avail_spare));
    line("available_spare_threshold", format!("{}%", r.spare_thresh));
    line("percentage_used", format!("{}%", r.percent_used));
    line(
        "endurance group critical warning summary",
        format!("{:#x}", r.endurance_grp_critical_warning_summary),
    );
    line("Data Units Read", units(r.data_units_read));
    line("Data Units Written", units(r.data_units_written));
    line("host_read_commands", r.host_read_commands.to_string());
    line("host_write_commands", r.host_write_commands.to_string());
    line("controller_busy_time", r.controller_busy_time.to_string());
    line("power_cycles", r.power_cycles.to_string());
    line("power_on_hours", r.power_on_hours.to_string());
    line("unsafe_shutdowns", r.unsafe_shutdowns.to_string());
    line("media_errors", r.media_errors.to_string());
    line("num_err_log_entries", r.num_err_log_entries.to_string());
    line("Warning Temperature Time", r.warning_temp_time.to_string());
    line(
        "Critical Composite Temperature Time",
        r.critical_comp_time.to_string(),
    );
    for (i, t) in r.temperature_sensors.iter().enumerate() {
        line(
            &format!("Temperature Sensor {}", i + 1),
            format!("{} °C ({t} K)", *t as i32 - 273),
        );
    }
    o
}

/// Runs `nvme-dio smart-log`.
///
/// # Errors
///
/// Device, bring-up and admin command errors.
pub fn smart_log(a: &SmartLogArgs) -> Result<(), CliError> {
    let ctrl = open(&a.device)?;
    let s = ctrl
        .smart_log()
        .map_err(|e| CliError::driver(&a.device, e))?;
    let r = SmartReport::new(a.device.to_string(), &s);
    if a.json {
        crate::out::println(&serde_json::to_string_pretty(&r)?)
    } else {
        crate::out::print(&smart_human(&r))
    }
}

/// One Error Information log entry, as `--json` prints it (nvme-cli's field names).
#[derive(Clone, Debug, Serialize)]
pub struct ErrorReport {
    /// Error count.
    pub error_count: u64,
    /// Submission queue.
    pub sqid: u16,
    /// Command identifier.
    pub cmdid: u16,
    /// Status field (bits 15:1 of the CQE status, shifted as nvme-cli prints it: without
    /// the phase bit).
    pub status_field: u16,
    /// The status, by name.
    pub status: String,
    /// Parameter error location.
    pub parm_error_location: u16,
    /// LBA.
    pub lba: u64,
    /// Namespace.
    pub nsid: u32,
    /// Vendor specific information available.
    pub vs: u8,
    /// Transport type.
    pub trtype: u8,
    /// Command specific information.
    pub cs: u64,
}

impl From<&ErrorLogEntry> for ErrorReport {
    fn from(e: &ErrorLogEntry) -> ErrorReport {
        ErrorReport {
            error_count: e.error_count,
            sqid: e.sqid,
            cmdid: e.cid,
            status_field: e.status.raw() >> 1,
            status: e.status.to_string(),
            parm_error_location: e.parameter_location,
            lba: e.lba,
            nsid: e.nsid,
            vs: e.vendor_specific,
            trtype: e.transport_type,
            cs: e.command_specific,
        }
    }
}

/// The error log, as `--json` prints it.
#[derive(Clone, Debug, Serialize)]
pub struct ErrorLogReport {
    /// The device as given.
    pub device: String,
    /// Entries in use, newest first.
    pub errors: Vec<ErrorReport>,
}

/// The human form of the error log.
pub fn error_human(r: &ErrorLogReport) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "Error Log Entries for device:{} entries:{}",
        r.device,
        r.errors.len()
    );
    let _ = writeln!(o, ".................");
    for (i, e) in r.errors.iter().enumerate() {
        let _ = writeln!(o, " Entry[{i:2}]");
        let _ = writeln!(o, ".................");
        let _ = writeln!(o, "error_count     : {}", e.error_count);
        let _ = writeln!(o, "sqid            : {}", e.sqid);
        let _ = writeln!(o, "cmdid           : {:#x}", e.cmdid);
        let _ = writeln!(o, "status_field    : {:#x} ({})", e.status_field, e.status);
        let _ = writeln!(o, "phase_tag       : 0");
        let _ = writeln!(o, "parm_err_loc    : {:#x}", e.parm_error_location);
        let _ = writeln!(o, "lba             : {:#x}", e.lba);
        let _ = writeln!(o, "nsid            : {:#x}", e.nsid);
        let _ = writeln!(o, "vs              : {}", e.vs);
        let _ = writeln!(o, "trtype          : {}", e.trtype);
        let _ = writeln!(o, "cs              : {:#x}", e.cs);
        let _ = writeln!(o, ".................");
    }
    o
}

/// Runs `nvme-dio error-log`.
///
/// # Errors
///
/// Device, bring-up and admin command errors.
pub fn error_log(a: &ErrorLogArgs) -> Result<(), CliError> {
    let ctrl = open(&a.device)?;
    let log = ctrl
        .error_log(a.entries)
        .map_err(|e| CliError::driver(&a.device, e))?;
    let r = ErrorLogReport {
        device: a.device.to_string(),
        errors: log.iter().map(ErrorReport::from).collect(),
    };
    if a.json {
        crate::out::println(&serde_json::to_string_pretty(&r)?)
    } else {
        crate::out::print(&error_human(&r))
    }
}

/// One feature, as `--json` prints it.
#[derive(Clone, Debug, Serialize)]
pub struct FeatureReport {
    /// Feature identifier.
    pub fid: u8,
    /// Its name, if known.
    pub name: Option<&'static str>,
    /// The current value (Get Features DW0).
    pub value: u32,
    /// The value's fields, decoded.
    pub fields: Vec<(&'static str, u64)>,
    /// Why it could not be read (the controller refused), if so.
    pub error: Option<String>,
}

/// Reads the features (`fid`, or all the common ones).
///
/// # Errors
///
/// Device and bring-up errors; a single feature the controller refuses is an error too,
/// while in the list of all a refused one is reported in its entry.
pub fn features(device: &DeviceSpec, fid: Option<u8>) -> Result<Vec<FeatureReport>, CliError> {
    let ctrl = open(device)?;
    let fids: Vec<u8> = match fid {
        Some(f) => vec![f],
        None => nvme_dio::COMMON_FEATURES.iter().map(|(f, _)| *f).collect(),
    };
    let mut out = Vec::new();
    for f in fids {
        let name = nvme_dio::feature_name(f);
        match ctrl.get_feature(f) {
            Ok(v) => out.push(FeatureReport {
                fid: f,
                name,
                value: v,
                fields: nvme_dio::decode_feature(f, v),
                error: None,
            }),
            Err(e) if fid.is_some() => return Err(CliError::driver(device, e)),
            Err(e) => out.push(FeatureReport {
                fid: f,
                name,
                value: 0,
                fields: Vec::new(),
                error: Some(e.report()),
            }),
        }
    }
    Ok(out)
}

/// The human form of the features.
pub fn features_human(v: &[FeatureReport]) -> String {
    let mut o = String::new();
    for f in v {
        let name = f.name.unwrap_or("unknown feature");
        match &f.error {
            Some(e) => {
                let _ = writeln!(o, "get-feature:{:#04x} ({name}): {e}", f.fid);
            }
            None => {
                let _ = writeln!(
                    o,
                    "get-feature:{:#04x} ({name}), Current value:{:#010x}",
                    f.fid, f.value
                );
                for (k, v) in &f.fields {
                    let _ = writeln!(o, "\t{k:<40}: {v}");
                }
            }
        }
    }
    o
}

/// Runs `nvme-dio get-feature`.
///
/// # Errors
///
/// As [`features`].
pub fn get_feature(a: &GetFeatureArgs) -> Result<(), CliError> {
    let v = features(&a.device, a.feature_id)?;
    if a.json {
        crate::out::println(&serde_json::to_string_pretty(&v)?)
    } else {
        crate::out::print(&features_human(&v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn emu() -> DeviceSpec {
        DeviceSpec::Emu(nvme_dio::EmuSpec::ram())
    }

    #[test]
    fn smart_log_text_and_json() {
        let ctrl = open(&emu()).unwrap();
        let r = SmartReport::new("emu:ram".into(), &ctrl.smart_log().unwrap());
        let h = smart_human(&r);
        assert!(h.starts_with("Smart Log for NVME device:emu:ram"), "{h}");
        assert!(
            h.contains("temperature                             : 40 °C (313 K)"),
            "{h}"
        );
        assert!(
            h.contains("available_spare                         : 100%"),
            "{h}"
        );
        let j: serde_json::Value = serde_json::to_value(&r).unwrap();
        assert_eq!(j["temperature"], 313);
        assert_eq!(j["avail_spare"], 100);
        assert_eq!(j["critical_warning"], 0);
        assert_eq!(j["power_cycles"], 1);
    }

    #[test]
    fn error_log_text_and_json() {
        let e = ErrorLogEntry::from_bytes(&{
            let mut p = [0u8; 64];
            p[0] = 3;
            p[8] = 1;
            p[10] = 0x42;
            p[12..14].copy_from_slice(&nvme_dio::Status::new(0, 0x80).raw().to_le_bytes());
            p
        })
        .unwrap();
        let r = ErrorLogReport {
            device: "emu".into(),
            errors: vec![ErrorReport::from(&e)],
        };
        let h = error_human(&r);
        assert!(h.contains("error_count     : 3"), "{h}");
        assert!(h.contains("cmdid           : 0x42"), "{h}");
        assert!(
            h.contains("status_field    : 0x80 (LBA Out of Range"),
            "{h}"
        );
        let j = serde_json::to_value(&r).unwrap();
        assert_eq!(j["errors"][0]["status_field"], 0x80);
        assert_eq!(j["errors"][0]["sqid"], 1);
        // An emulated controller without errors: an empty list.
        let ctrl = open(&emu()).unwrap();
        assert!(ctrl.error_log(64).unwrap().is_empty());
    }

    #[test]
    fn get_feature_all_and_one() {
        let all = features(&emu(), None).unwrap();
        assert_eq!(all.len(), nvme_dio::COMMON_FEATURES.len());
        assert!(all.iter().all(|f| f.error.is_none()), "{all:?}");
        let h = features_human(&all);
        assert!(
            h.contains("get-feature:0x07 (Number of Queues), Current value:0x00000000"),
            "{h}"
        );
        let one = features(&emu(), Some(0x0b)).unwrap();
        assert_eq!(one[0].value, 0x3ff);
        let j = serde_json::to_value(&one).unwrap();
        assert_eq!(j[0]["name"], "Asynchronous Event Configuration");
        // A feature the controller does not have: a clear error naming the status.
        let e = features(&emu(), Some(0x7e)).unwrap_err();
        assert!(e.to_string().contains("Invalid Field"), "{e}");
        assert_eq!(parse_fid("0x0b"), Ok(11));
        assert_eq!(parse_fid("7"), Ok(7));
        assert!(parse_fid("0x100").unwrap_err().contains("0 to 255"));
    }

    #[test]
    fn a_path_is_refused_with_a_pointer_to_nvme_cli() {
        let e = open(&DeviceSpec::Path("/dev/nvme0n1".into())).unwrap_err();
        assert!(e.to_string().contains("nvme smart-log"), "{e}");
    }
}
