//! Configuration of the emulated controller. Defaults mirror QEMU 7.2's `-device nvme`
//! (as read through VFIO in a QEMU 7.2 guest, and its `hw/nvme` defaults): CAP 0x004018200f0107ff, VS 1.4.0, MDTS 7, 64 I/O queue pairs,
//! 65 MSI-X vectors.

use std::time::Duration;

use crate::EmuError;

pub use nvme_dio_queue::pi::{PiFormat, PiType, Protection};

/// Namespace atomic write parameters (Identify Namespace NAWUN .. NABSPF, reported with
/// NSFEAT bit 1). Counts are real block counts; a boundary size of 0 means no boundary.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NsAtomic {
    /// Namespace Atomic Write Unit Normal, blocks (1 ..= 65 536).
    pub nawun: u32,
    /// Namespace Atomic Write Unit Power Fail, blocks.
    pub nawupf: u32,
    /// Atomic Boundary Size Normal, blocks (0 = none).
    pub nabsn: u32,
    /// Atomic Boundary Offset, blocks.
    pub nabo: u16,
    /// Atomic Boundary Size Power Fail, blocks (0 = none).
    pub nabspf: u32,
}

/// Preferred sizes (Identify Namespace NPWG .. NOWS, reported with NSFEAT bit 4), real
/// block counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NsOptimal {
    /// Preferred Write Granularity.
    pub npwg: u32,
    /// Preferred Write Alignment.
    pub npwa: u32,
    /// Preferred Deallocate Granularity.
    pub npdg: u32,
    /// Preferred Deallocate Alignment.
    pub npda: u32,
    /// Optimal Write Size.
    pub nows: u32,
}

/// Copy limits of a namespace (Identify Namespace MSSRL, MCL, MSRC), as QEMU's `nvme-ns`
/// properties `mssrl`, `mcl`, `msrc`: real counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CopyLimits {
    /// Blocks per source range.
    pub mssrl: u16,
    /// Blocks per Copy command.
    pub mcl: u32,
    /// Source ranges per Copy command (1 ..= 256).
    pub msrc: u16,
}

impl Default for CopyLimits {
    /// QEMU 7.2's defaults: `mssrl=128`, `mcl=128`, `msrc=127` (zero-based: 128 ranges).
    fn default() -> CopyLimits {
        CopyLimits {
            mssrl: 128,
            mcl: 128,
            msrc: 128,
        }
    }
}

/// The I/O command set specific Identify Controller (CNS 06h) limits. Byte-valued limits are
/// the spec's shifts (`MPSMIN << n` bytes, 0 = none); the others real counts (0 = none).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NvmLimits {
    /// Verify Size Limit (QEMU's `vsl`, default 7).
    pub vsl: u8,
    /// Write Zeroes Size Limit.
    pub wzsl: u8,
    /// Dataset Management Ranges Limit.
    pub dmrl: u8,
    /// Dataset Management Range Size Limit, blocks.
    pub dmrsl: u32,
    /// Dataset Management Size Limit, blocks.
    pub dmsl: u64,
}

/// Where a namespace keeps its data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backing {
    /// Data is stored in host RAM (`blocks * lba_size` bytes, zero-filled lazily by the
    /// allocator), so writes can be read back and verified.
    Ram,
    /// Nothing is stored: reads leave the host buffer untouched (like QEMU's null-co without
    /// `read-zeroes`), writes are discarded. Every PRP/SGL is still validated and every list
    /// walked, so driver bugs show on a null namespace too.
    Null,
}

/// One namespace (NSIDs are assigned 1, 2, ... in order).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NsConfig {
    /// Size in logical blocks.
    pub blocks: u64,
    /// Logical block size in bytes: 512 or 4096.
    pub lba_size: u32,
    /// Separate (MPTR) metadata bytes per block; 0 for none.
    pub metadata_size: u16,
    /// RAM or null.
    pub backing: Backing,
    /// Namespace Optimal I/O Boundary in blocks (0 = not reported).
    pub noiob: u16,
    /// Extended LBA (QEMU's `mset=1`): the metadata travels interleaved with the data, at
    /// the end of each block. Else in a separate buffer (MPTR).
    pub extended: bool,
    /// Protection information (QEMU's `pi`, `pil`, `pif`); needs `metadata_size` of at least
    /// the tuple (8 or 16 bytes).
    pub pi: Option<Protection>,
    /// Atomic write parameters, reported with NSFEAT bit 1 (None: not reported, the
    /// controller's AWUN/AWUPF apply).
    pub atomic: Option<NsAtomic>,
    /// Preferred sizes, reported with NSFEAT bit 4.
    pub optimal: Option<NsOptimal>,
    /// Copy limits.
    pub copy: CopyLimits,
}

impl NsConfig {
    /// A RAM namespace of `blocks` blocks of `lba_size` bytes.
    pub fn ram(blocks: u64, lba_size: u32) -> NsConfig {
        NsConfig {
            blocks,
            lba_size,
            metadata_size: 0,
            backing: Backing::Ram,
            noiob: 0,
            extended: false,
            pi: None,
            atomic: None,
            optimal: None,
            copy: CopyLimits::default(),
        }
    }

    /// A null namespace of `blocks` blocks of `lba_size` bytes.
    pub fn null(blocks: u64, lba_size: u32) -> NsConfig {
        NsConfig {
            backing: Backing::Null,
            ..NsConfig::ram(blocks, lba_size)
        }
    }
}

impl Default for NsConfig {
    /// 64 MiB of RAM in 512-byte blocks (QEMU's default block size).
    fn default() -> NsConfig {
        NsConfig::ram(128 * 1024, 512)
    }
}

/// How the controller does its work.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Mode {
    /// Deterministic: all work happens synchronously inside the BAR write that causes it
    /// (a doorbell or CC write). No threads.
    #[default]
    Inline,
    /// A background thread polls the doorbells like hardware; it stops when the
    /// [`crate::EmuFunction`] is dropped.
    Thread,
}

/// Everything the emulated controller can be configured with. Start from `Default` and set
/// the fields you need.
#[derive(Clone, Debug)]
pub struct EmuConfig {
    /// CAP.MQES as a real count of entries (2..=65536).
    pub mqes: u32,
    /// CAP.DSTRD: doorbell stride is `4 << dstrd` bytes.
    pub dstrd: u8,
    /// CAP.TO in 500 ms units.
    pub timeout_500ms: u8,
    /// CAP.MPSMIN (page size `4096 << mpsmin`).
    pub mpsmin: u8,
    /// CAP.MPSMAX.
    pub mpsmax: u8,
    /// Time CSTS.RDY takes to follow CC.EN, in both directions. A driver that does not wait
    /// for RDY is caught: its doorbells before RDY=1 are ignored and recorded as ub events.
    pub ready_delay: Duration,
    /// Identify Controller MDTS (log2 of units of the minimum page size; 0 = unlimited).
    pub mdts: u8,
    /// Advertise and accept SGLs for I/O commands.
    pub sgl: bool,
    /// Maximum I/O queue pairs (Number of Queues grants at most this).
    pub max_ioqpairs: u16,
    /// MSI-X vectors of the function.
    pub msix_vectors: u32,
    /// Advertise Doorbell Buffer Config (shadow doorbells) in OACS.
    pub dbbuf: bool,
    /// Serial number (at most 20 ASCII bytes).
    pub serial: String,
    /// Model number (at most 40 ASCII bytes).
    pub model: String,
    /// Firmware revision (at most 8 ASCII bytes).
    pub firmware: String,
    /// A volatile write cache is present (Identify VWC bit 0) and on at power-up. RAM
    /// namespaces then model it: a write reaches stable storage only when a Flush covers
    /// it, or when it was written with FUA (or while the cache was turned off with Set
    /// Features); [`crate::EmuFunction::power_cut`] loses every other write. Reads always
    /// see the latest data.
    pub vwc: bool,
    /// Namespaces, NSID 1 first.
    pub namespaces: Vec<NsConfig>,
    /// Atomic Write Unit Normal (Identify Controller AWUN), real blocks: 1 like QEMU.
    pub awun: u16,
    /// Atomic Write Unit Power Fail (AWUPF), real blocks: 1 like QEMU.
    pub awupf: u16,
    /// The CNS 06h page, or `None` to refuse CNS 06h with Invalid Field (an older
    /// controller): the driver must then fall back to no limits.
    pub nvm_limits: Option<NvmLimits>,
    /// Advertise and implement Copy (ONCS bit 8) and Verify (ONCS bit 7), like QEMU 7.2.
    pub copy_verify: bool,
    /// Inline or background thread.
    pub mode: Mode,
    /// The freed-write checker: the mapper asks the host's `DmaMemory` to report which
    /// mapped bytes are free ([`nvme_dio_dma::DmaMapper::tracks_allocations`]), and every
    /// device write into free bytes (memory the driver has given back) is counted in
    /// [`crate::EmuStats::freed_writes`] and described in
    /// [`crate::EmuFunction::freed_write_events`]. On by default; off spares the host a
    /// controller-lock round trip per buffer allocation and free (benchmarks).
    pub check_freed_writes: bool,
}

impl Default for EmuConfig {
    fn default() -> EmuConfig {
        EmuConfig {
            mqes: 2048,
            dstrd: 0,
            timeout_500ms: 15,
            mpsmin: 0,
            mpsmax: 4,
            ready_delay: Duration::ZERO,
            mdts: 7,
            sgl: false,
            max_ioqpairs: 64,
            msix_vectors: 65,
            dbbuf: false,
            serial: "deadbeef".to_string(),
            model: "nvme-dio emulated controller".to_string(),
            firmware: "1.0".to_string(),
            vwc: true,
            namespaces: vec![NsConfig::default()],
            awun: 1,
            awupf: 1,
            nvm_limits: Some(NvmLimits {
                vsl: 7,
                ..NvmLimits::default()
            }),
            copy_verify: true,
            mode: Mode::Inline,
            check_freed_writes: true,
        }
    }
}

impl EmuConfig {
    /// The CAP register this configuration reports (CQR=1, CSS = NVM + I/O command sets +
    /// admin only, like QEMU).
    pub fn cap(&self) -> u64 {
        (self.mqes as u64 - 1) & 0xffff
            | 1 << 16
            | (self.timeout_500ms as u64) << 24
            | (self.dstrd as u64 & 0xf) << 32
            | 1 << 37
            | 1 << 43
            | 1 << 44
            | (self.mpsmin as u64 & 0xf) << 48
            | (self.mpsmax as u64 & 0xf) << 52
    }

    pub(crate) fn validate(&self) -> Result<(), EmuError> {
        let bad = |what: String| Err(EmuError::InvalidConfig { what });
        if !(2..=65536).contains(&self.mqes) {
            return bad(format!("mqes {} must be 2..=65536", self.mqes));
        }
        if self.dstrd > 15 || self.mpsmin > 15 || self.mpsmax > 15 || self.mpsmin > self.mpsmax {
            return bad(format!(
                "dstrd {} / mpsmin {} / mpsmax {} out of range (0..=15, mpsmin <= mpsmax)",
                self.dstrd, self.mpsmin, self.mpsmax
            ));
        }
        if self.max_ioqpairs == 0 || self.max_ioqpairs == u16::MAX {
            return bad(format!(
                "max_ioqpairs {} must be 1..65535",
                self.max_ioqpairs
            ));
        }
        if self.msix_vectors > 2048 {
            return bad(format!("msix_vectors {} exceeds 2048", self.msix_vectors));
        }
        if self.serial.len() > 20 || self.model.len() > 40 || self.firmware.len() > 8 {
            return bad("serial/model/firmware longer than 20/40/8 bytes".to_string());
        }
        if self.namespaces.len() > 1024 {
            return bad("more than 1024 namespaces".to_string());
        }
        for (i, ns) in self.namespaces.iter().enumerate() {
            if ns.lba_size != 512 && ns.lba_size != 4096 {
                return bad(format!(
                    "namespace {}: lba_size {} is not 512 or 4096",
                    i + 1,
                    ns.lba_size
                ));
            }
            if ns.blocks == 0 {
                return bad(format!("namespace {}: zero blocks", i + 1));
            }
            if let Some(p) = ns.pi {
                if p.format == PiFormat::Guard32 {
                    return bad(format!(
                        "namespace {}: the 32-bit guard format is not implemented (QEMU 7.2 neither)",
                        i + 1
                    ));
                }
                if ns.metadata_size < p.format.tuple_size() {
                    return bad(format!(
                        "namespace {}: at least {} bytes of metadata required to enable protection information",
                        i + 1,
                        p.format.tuple_size()
                    ));
                }
            }
            if ns.extended && ns.metadata_size == 0 {
                return bad(format!(
                    "namespace {}: extended LBA without metadata",
                    i + 1
                ));
            }
            if self.awun == 0 || self.awupf == 0 {
                return bad("awun/awupf are real counts, at least 1".to_string());
            }
            if !(1..=256).contains(&ns.copy.msrc) {
                return bad(format!("namespace {}: copy.msrc must be 1..=256", i + 1));
            }
            if ns.backing == Backing::Ram
                && ns
                    .blocks
                    .checked_mul(ns.lba_size as u64 + ns.metadata_size as u64)
                    .is_none_or(|b| b > 1 << 40)
            {
                return bad(format!(
                    "namespace {}: a RAM namespace of {} blocks is too large (use Backing::Null)",
                    i + 1,
                    ns.blocks
                ));
            }
        }
        Ok(())
    }
}
