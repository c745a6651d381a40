//! `nvme-dio identify`: bring the controller up and print what it reports, as nvme-cli's
//! `id-ctrl` and `id-ns` do: a summary of what nvme-dio will use, then every field of the
//! Identify Controller page (power states included) and of each namespace's Identify
//! Namespace page (with the LBA format table, the one in use marked). `--json` carries the
//! same fields under nvme-cli's names; `--raw` (nvme-cli's `-b`) writes the 4 KiB pages.
//! The field tables live in `nvme_dio_queue::identify` (pure, tested against the spec's
//! byte layout).

use std::fmt::Write as _;
use std::io::IsTerminal;

use nvme_dio::{Controller, Device};
use nvme_dio_emu::EmuConfig;
use nvme_dio_queue::identify::{
    CONTROLLER_FIELDS, FieldDef, FieldValue, IDENTIFY_LEN, NAMESPACE_FIELDS, PowerState,
    relative_performance_name,
};
use serde::Serialize;
use serde::ser::SerializeMap;

use crate::args::{DeviceSpec, IdentifyArgs};
use crate::bench::nvme::{controller_options, emu_config, open_controller};
use crate::error::CliError;

/// The controller, as `--json` prints it.
#[derive(Clone, Debug, Serialize)]
pub struct ControllerReport {
    /// The device as given.
    pub device: String,
    /// Emulated controller.
    pub emulated: bool,
    /// PCI vendor id.
    pub vendor_id: u16,
    /// Model number.
    pub model: String,
    /// Serial number.
    pub serial: String,
    /// Firmware revision.
    pub firmware: String,
    /// NVMe version.
    pub version: String,
    /// MDTS as reported (0 = no limit).
    pub mdts: u8,
    /// Max transfer per command the driver uses, bytes.
    pub max_transfer_bytes: u32,
    /// Controller memory page size in use.
    pub page_size_bytes: usize,
    /// CAP.MQES: entries per I/O queue at most.
    pub max_queue_entries: u32,
    /// I/O queue pairs the controller grants (identify asks for the most, 65535).
    pub io_queues: u16,
    /// MSI-X vectors the driver could enable (identify asks for one per queue plus the
    /// admin queue's); 0 means interrupt mode is not available.
    pub msix_vectors: u32,
    /// CAP.TO.
    pub ready_timeout_ms: u128,
    /// Doorbell stride in bytes (`4 << CAP.DSTRD`).
    pub doorbell_stride_bytes: u32,
    /// SGLs supported and used for I/O.
    pub sgl: bool,
    /// NN: namespaces supported.
    pub max_namespaces: u32,
    /// Volatile write cache present.
    pub volatile_write_cache: bool,
    /// Every field of Identify Controller, under nvme-cli's names, in byte order.
    pub identify_controller: Fields,
    /// The power state descriptors (NPSS + 1).
    pub power_states: Vec<PowerStateReport>,
    /// Active namespaces.
    pub namespaces: Vec<NamespaceReport>,
    /// The raw Identify Controller page (for `--raw`).
    #[serde(skip)]
    pub raw: Box<[u8; IDENTIFY_LEN]>,
}

/// The fields of one Identify page, serialised as one JSON object in byte order.
#[derive(Clone, Debug)]
pub struct Fields {
    defs: &'static [FieldDef],
    page: Box<[u8; IDENTIFY_LEN]>,
}

impl Fields {
    fn new(defs: &'static [FieldDef], page: &[u8; IDENTIFY_LEN]) -> Fields {
        Fields {
            defs,
            page: Box::new(*page),
        }
    }

    /// The field called `name`, as printed.
    pub fn show(&self, name: &str) -> Option<String> {
        self.defs
            .iter()
            .find(|d| d.name == name)
            .map(|d| d.show(&self.page))
    }

    /// `name : value  (set bits)` lines, as nvme-cli prints them.
    fn render(&self, o: &mut String) {
        let w = self.defs.iter().map(|d| d.name.len()).max().unwrap_or(0);
        for d in self.defs {
            let bits = d.set_bits(&self.page);
            let _ = writeln!(
                o,
                "  {:<w$} : {}{}",
                d.name,
                d.show(&self.page),
                if bits.is_empty() {
                    String::new()
                } else {
                    format!("  ({})", bits.join(", "))
                }
            );
        }
    }
}

impl Serialize for Fields {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.defs.len()))?;
        for d in self.defs {
            match d.read(&self.page) {
                // Numbers stay numbers (nvme-cli's JSON does the same); 16-byte capacities
                // that do not fit 64 bits are written as u128.
                FieldValue::Int(v) => match u64::try_from(v) {
                    Ok(v) => m.serialize_entry(d.name, &v)?,
                    Err(_) => m.serialize_entry(d.name, &v)?,
                },
                FieldValue::Text(t) => m.serialize_entry(d.name, &t)?,
                // GUIDs and EUI64 as hex strings, in byte order.
                FieldValue::Bytes(_) => m.serialize_entry(d.name, &d.show(&self.page))?,
            }
        }
        m.end()
    }
}

/// One power state descriptor.
#[derive(Clone, Debug, Serialize)]
pub struct PowerStateReport {
    /// Power state number.
    pub index: usize,
    /// Maximum power, watts.
    pub max_power_w: f64,
    /// False for a non-operational state (NOPS).
    pub operational: bool,
    /// Entry latency, microseconds.
    pub entry_latency_us: u32,
    /// Exit latency, microseconds.
    pub exit_latency_us: u32,
    /// Relative read throughput (0 = best).
    pub rrt: u8,
    /// Relative read latency.
    pub rrl: u8,
    /// Relative write throughput.
    pub rwt: u8,
    /// Relative write latency.
    pub rwl: u8,
    /// Idle power, watts (None: not reported).
    pub idle_power_w: Option<f64>,
    /// Active power, watts (None: not reported).
    pub active_power_w: Option<f64>,
    /// Active power workload (APW).
    pub active_power_workload: u8,
}

impl PowerStateReport {
    fn new(index: usize, p: &PowerState) -> PowerStateReport {
        PowerStateReport {
            index,
            max_power_w: p.max_power_watts(),
            operational: !p.non_operational,
            entry_latency_us: p.enlat_us,
            exit_latency_us: p.exlat_us,
            rrt: p.rrt,
            rrl: p.rrl,
            rwt: p.rwt,
            rwl: p.rwl,
            idle_power_w: p.idle_power_watts(),
            active_power_w: p.active_power_watts(),
            active_power_workload: p.apw,
        }
    }
}

/// One entry of a namespace's LBA format table.
#[derive(Clone, Debug, Serialize)]
pub struct LbaFormatReport {
    /// Format index.
    pub index: usize,
    /// Data bytes per block (`2^lbads`).
    pub data_bytes: u32,
    /// LBADS.
    pub lbads: u8,
    /// Metadata bytes per block (MS).
    pub metadata_bytes: u16,
    /// Relative performance (RP): 0 best .. 3 degraded.
    pub relative_performance: u8,
    /// The namespace is formatted with this one (FLBAS).
    pub in_use: bool,
}

/// One namespace.
#[derive(Clone, Debug, Serialize)]
pub struct NamespaceReport {
    /// NSID.
    pub nsid: u32,
    /// Size in blocks (NSZE).
    pub blocks: u64,
    /// Capacity in blocks (NCAP).
    pub capacity_blocks: u64,
    /// Bytes.
    pub bytes: u64,
    /// The LBA format in use: data bytes per block.
    pub lba_size_bytes: u32,
    /// The LBA format in use: metadata bytes per block.
    pub metadata_size_bytes: u16,
    /// The metadata format: extended or separate, PI type, position and guard
    /// (`8 B separate, PI type 1 (16-bit guard, last bytes)`); `None` without metadata.
    pub metadata_format: Option<String>,
    /// Max transfer per command, bytes.
    pub max_transfer_bytes: u32,
    /// NOIOB in blocks (0 = none).
    pub optimal_io_boundary_blocks: u32,
    /// Write Zeroes supported.
    pub write_zeroes: bool,
    /// Deallocate (trim) supported.
    pub deallocate: bool,
    /// The LBA format table.
    pub lba_formats: Vec<LbaFormatReport>,
    /// Every field of Identify Namespace, under nvme-cli's names, in byte order.
    pub identify: Fields,
    /// The raw Identify Namespace page (for `--raw`).
    #[serde(skip)]
    pub raw: Box<[u8; IDENTIFY_LEN]>,
}

/// What the controller that is up says about itself.
fn describe(
    device: String,
    emulated: bool,
    ctrl: &Controller<Device>,
) -> Result<ControllerReport, CliError> {
    {
        let i = ctrl.info();
        Ok(ControllerReport {
            device,
            emulated,
            vendor_id: i.vid,
            model: i.model.trim().to_string(),
            serial: i.serial.trim().to_string(),
            firmware: i.firmware.trim().to_string(),
            version: i.version.to_string(),
            mdts: i.mdts,
            max_transfer_bytes: i.max_transfer,
            page_size_bytes: i.page_size.bytes(),
            max_queue_entries: i.cap.mqes().entries(),
            io_queues: i.io_queues,
            msix_vectors: i.msix_vectors,
            ready_timeout_ms: i.cap.timeout().as_millis(),
            doorbell_stride_bytes: 4u32 << i.cap.dstrd(),
            sgl: i.sgl,
            max_namespaces: i.max_namespaces,
            volatile_write_cache: i.identify.vwc_present(),
            identify_controller: Fields::new(CONTROLLER_FIELDS, i.identify.as_bytes()),
            power_states: i
                .identify
                .power_states()
                .iter()
                .enumerate()
                .map(|(k, p)| PowerStateReport::new(k, p))
                .collect(),
            raw: Box::new(*i.identify.as_bytes()),
            namespaces: ctrl
                .namespaces()
                .iter()
                .map(|n| NamespaceReport {
                    nsid: n.id().0,
                    blocks: n.blocks(),
                    capacity_blocks: n.capacity(),
                    bytes: n.bytes(),
                    lba_size_bytes: n.lba_size(),
                    metadata_size_bytes: n.metadata_size(),
                    metadata_format: n.metadata_format().map(|f| f.to_string()),
                    max_transfer_bytes: n.max_transfer(),
                    optimal_io_boundary_blocks: n.optimal_io_boundary(),
                    write_zeroes: n.supports_write_zeroes(),
                    deallocate: n.supports_deallocate(),
                    lba_formats: {
                        let id = n.identify();
                        let cur = id.flbas_index() as usize;
                        id.lba_formats()
                            .iter()
                            .enumerate()
                            .map(|(k, f)| LbaFormatReport {
                                index: k,
                                data_bytes: f.data_size,
                                lbads: f.lbads(),
                                metadata_bytes: f.metadata_size,
                                relative_performance: f.relative_performance,
                                in_use: k == cur,
                            })
                            .collect()
                    },
                    identify: Fields::new(NAMESPACE_FIELDS, n.identify().as_bytes()),
                    raw: Box::new(*n.identify().as_bytes()),
                })
                .collect(),
        })
    }
}

/// Brings the controller up and describes it.
///
/// # Errors
///
/// Device and bring-up errors.
pub fn identify(device: &DeviceSpec) -> Result<ControllerReport, CliError> {
    let emu = match device {
        DeviceSpec::Emu(e) => emu_config(e.ram, e.lba_size, None, e.thread, false),
        _ => EmuConfig::default(),
    };
    // Ask for the most a controller can grant (65535 queue pairs, interrupts on), so what
    // is printed is what the controller allows, not what one queue pair needed: bench gets
    // the same numbers. Set Features only records the count; nothing is created.
    let (ctrl, _) = open_controller(device, emu, controller_options(u16::MAX, true, true))?;
    describe(device.to_string(), device.is_emu(), &ctrl)
}

/// Runs `nvme-dio identify`.
///
/// # Errors
///
/// As [`identify`].
pub fn run(a: &IdentifyArgs) -> Result<(), CliError> {
    if a.raw && std::io::stdout().is_terminal() {
        return Err(CliError::BadArgument(
            "--raw writes the binary Identify pages (4096 bytes each: the controller's, then each namespace's): redirect it, like `nvme-dio identify --raw > id.bin`, or pipe it to `xxd`".into(),
        ));
    }
    let mut r = identify(&a.device)?;
    if let Some(nsid) = a.nsid {
        if !r.namespaces.iter().any(|n| n.nsid == nsid) {
            return Err(CliError::BadArgument(format!(
                "namespace {nsid} is not active on {}: the active ones are {}",
                r.device,
                if r.namespaces.is_empty() {
                    "none".to_string()
                } else {
                    r.namespaces
                        .iter()
                        .map(|n| n.nsid.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            )));
        }
        r.namespaces.retain(|n| n.nsid == nsid);
    }
    if a.raw {
        let mut bytes = Vec::with_capacity(IDENTIFY_LEN * (1 + r.namespaces.len()));
        bytes.extend_from_slice(&r.raw[..]);
        for n in &r.namespaces {
            bytes.extend_from_slice(&n.raw[..]);
        }
        crate::out::write_bytes(&bytes)
    } else if a.json {
        crate::out::println(&serde_json::to_string_pretty(&r)?)
    } else {
        crate::out::print(&human(&r))
    }
}

fn mib(b: u64) -> String {
    if b >= 1 << 30 {
        format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64)
    } else {
        format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64)
    }
}

/// The human form.
pub fn human(r: &ControllerReport) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "controller {}{}",
        r.device,
        if r.emulated {
            " (EMULATED, in-process)"
        } else {
            ""
        }
    );
    let _ = writeln!(o, "  model           {}", r.model);
    let _ = writeln!(o, "  serial          {}", r.serial);
    let _ = writeln!(o, "  firmware        {}", r.firmware);
    let _ = writeln!(o, "  vendor id       {:#06x}", r.vendor_id);
    let _ = writeln!(o, "  NVMe version    {}", r.version);
    let _ = writeln!(
        o,
        "  MDTS            {}  (max transfer per command {} KiB)",
        if r.mdts == 0 {
            "0 (no limit)".to_string()
        } else {
            r.mdts.to_string()
        },
        r.max_transfer_bytes >> 10
    );
    let _ = writeln!(o, "  page size       {} bytes", r.page_size_bytes);
    let _ = writeln!(
        o,
        "  queues          {} I/O queue pairs granted (the most this controller gives), up to {} entries each",
        r.io_queues, r.max_queue_entries
    );
    let _ = writeln!(
        o,
        "  interrupts      {}",
        if r.msix_vectors > 1 {
            format!(
                "{} MSI-X vectors (one per I/O queue plus the admin queue's): --mode irq works",
                r.msix_vectors
            )
        } else {
            "no MSI-X vectors for I/O queues: --mode irq is not available".to_string()
        }
    );
    let _ = writeln!(
        o,
        "  doorbell stride {} bytes, ready timeout {} ms",
        r.doorbell_stride_bytes, r.ready_timeout_ms
    );
    let _ = writeln!(
        o,
        "  SGL             {}",
        if r.sgl {
            "supported (used for iovec sets that break the PRP rule)"
        } else {
            "not supported (PRPs only)"
        }
    );
    let _ = writeln!(
        o,
        "  write cache     {}",
        if r.volatile_write_cache {
            "volatile (Flush matters)"
        } else {
            "none"
        }
    );
    let _ = writeln!(
        o,
        "  namespaces      {} active of {} supported",
        r.namespaces.len(),
        r.max_namespaces
    );
    for n in &r.namespaces {
        let _ = writeln!(
            o,
            "  namespace {}: {} blocks x {} bytes{} = {} (capacity {} blocks); max transfer {} KiB{}; write zeroes {}, deallocate {}",
            n.nsid,
            n.blocks,
            n.lba_size_bytes,
            if let Some(f) = &n.metadata_format {
                format!(" + metadata ({f})")
            } else if n.metadata_size_bytes > 0 {
                format!(" + {} metadata", n.metadata_size_bytes)
            } else {
                String::new()
            },
            mib(n.bytes),
            n.capacity_blocks,
            n.max_transfer_bytes >> 10,
            if n.optimal_io_boundary_blocks > 0 {
                format!(
                    ", optimal I/O boundary {} blocks",
                    n.optimal_io_boundary_blocks
                )
            } else {
                String::new()
            },
            if n.write_zeroes { "yes" } else { "no" },
            if n.deallocate { "yes" } else { "no" },
        );
    }
    let _ = writeln!(o, "\nIdentify Controller (CNS 01h)");
    r.identify_controller.render(&mut o);
    for p in &r.power_states {
        let watts = |w: Option<f64>| w.map_or("-".to_string(), |w| format!("{w:.4}W"));
        let _ = writeln!(
            o,
            "  ps {:>4} : mp:{:.2}W {} enlat:{} exlat:{} rrt:{} rrl:{}\n            rwt:{} rwl:{} idle_power:{} active_power:{} active_power_workload:{}",
            p.index,
            p.max_power_w,
            if p.operational {
                "operational"
            } else {
                "non-operational"
            },
            p.entry_latency_us,
            p.exit_latency_us,
            p.rrt,
            p.rrl,
            p.rwt,
            p.rwl,
            watts(p.idle_power_w),
            watts(p.active_power_w),
            if p.active_power_w.is_some() {
                p.active_power_workload.to_string()
            } else {
                "-".to_string()
            },
        );
    }
    for n in &r.namespaces {
        let _ = writeln!(o, "\nIdentify Namespace {} (CNS 00h)", n.nsid);
        n.identify.render(&mut o);
        for f in &n.lba_formats {
            let _ = writeln!(
                o,
                "  lbaf {:>2} : ms:{:<3} lbads:{:<2} rp:{} ({}){}",
                f.index,
                f.metadata_bytes,
                f.lbads,
                f.relative_performance,
                relative_performance_name(f.relative_performance),
                if f.in_use { " (in use)" } else { "" }
            );
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_fields_keep_numbers_text_and_ids_and_capacities_past_64_bits() {
        let mut p = [0u8; IDENTIFY_LEN];
        p[0] = 0x36;
        p[1] = 0x1b;
        p[4..8].copy_from_slice(b"sn01");
        p[280 + 8] = 1; // TNVMCAP = 2^64
        p[112] = 0xab; // FGUID
        let j = serde_json::to_string(&Fields::new(CONTROLLER_FIELDS, &p)).unwrap();
        assert!(
            j.starts_with(r#"{"vid":6966,"ssvid":0,"sn":"sn01","#),
            "{j}"
        );
        assert!(j.contains(r#""tnvmcap":18446744073709551616,"#), "{j}");
        assert!(
            j.contains(r#""fguid":"ab000000000000000000000000000000""#),
            "{j}"
        );
    }

    #[test]
    fn identify_emu_reports_the_emulated_namespace() {
        let r = identify(&DeviceSpec::Emu(nvme_dio::EmuSpec::ram().lba_size(512))).unwrap();
        assert!(r.emulated);
        assert_eq!(r.namespaces.len(), 1);
        assert_eq!(
            (r.namespaces[0].lba_size_bytes, r.namespaces[0].bytes),
            (512, crate::bench::nvme::EMU_RAM_BYTES)
        );
        assert!(r.max_transfer_bytes > 0 && r.io_queues >= 1);
        let h = human(&r);
        assert!(
            h.contains("EMULATED") && h.contains("namespace 1: 131072 blocks x 512 bytes"),
            "{h}"
        );
        // The whole pages follow the summary, as nvme-cli's id-ctrl / id-ns print them.
        for line in [
            "Identify Controller (CNS 01h)",
            "  vid       : 0x1b36",
            "  ieee      : 0x525400",
            "  oncs      : 0x10c  (Dataset Management, Write Zeroes, Copy)",
            "  subnqn    : nqn.2024-01.invalid.nvme-dio:emu:",
            "  ps    0 : mp:25.00W operational enlat:0 exlat:0 rrt:0 rrl:0",
            "Identify Namespace 1 (CNS 00h)",
            "  nsze     : 131072",
            "  lbaf  0 : ms:0   lbads:9  rp:0 (Best) (in use)",
        ] {
            assert!(h.contains(line), "missing {line:?} in\n{h}");
        }
        assert_eq!(r.identify_controller.show("nn").as_deref(), Some("1024"));
        let j = serde_json::to_value(&r).unwrap();
        assert_eq!(j["identify_controller"]["vid"], 0x1b36);
        assert_eq!(j["identify_controller"]["sqes"], 0x66);
        assert_eq!(j["namespaces"][0]["identify"]["nsze"], 131072);
        assert_eq!(j["namespaces"][0]["lba_formats"][0]["in_use"], true);
        assert_eq!(j["power_states"][0]["max_power_w"], 25.0);
    }
}
