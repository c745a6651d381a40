//! `nvme-dio identify`: bring the controller up and print what it reports.

use std::fmt::Write as _;

use nvme_dio::{Controller, Device};
use nvme_dio_emu::EmuConfig;
use serde::Serialize;

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
    /// Active namespaces.
    pub namespaces: Vec<NamespaceReport>,
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
    let r = identify(&a.device)?;
    if a.json {
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
    o
}

#[cfg(test)]
mod tests {
    use super::*;

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
    }
}
