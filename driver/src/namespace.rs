//! Namespaces: geometry, limits, metadata format and supported commands, from Identify
//! Namespace (and the I/O command set specific Identify pages where the controller has them).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use nvme_dio_queue::identify::{
    IdentifyController, IdentifyNamespace, IdentifyNvmController, IdentifyNvmNamespace,
};
use nvme_dio_queue::pi::{MetadataFormat, PiFormat};
use nvme_dio_queue::plan::Limits;
use nvme_dio_queue::{Nsid, PageSize};

/// Atomic write units of a namespace (NVM Command Set 1.0, 2.1.4), in blocks.
///
/// What the controller promises: a write of at most `power_fail` blocks that does not
/// cross a power-fail boundary is, after a power loss, either entirely on the medium or not
/// at all (never torn); `normal` and its boundary say the same for concurrent commands
/// (another command sees all of it or none). nvme-dio sends a write marked atomic
/// ([`crate::Io::atomic`]) as exactly one command, and refuses it before queuing when it
/// would break these limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AtomicLimits {
    /// Atomic Write Unit Normal: NAWUN when the namespace reports it (NSFEAT bit 1), else
    /// the controller's AWUN. Real blocks.
    pub normal: u32,
    /// Atomic Write Unit Power Fail: NAWUPF, else AWUPF. Real blocks.
    pub power_fail: u32,
    /// Atomic Boundary Size Normal (NABSN + 1), 0 = no boundary.
    pub boundary_normal: u32,
    /// Atomic Boundary Size Power Fail (NABSPF + 1), 0 = no boundary.
    pub boundary_power_fail: u32,
    /// Atomic Boundary Offset (NABO): the first boundary's LBA.
    pub boundary_offset: u32,
    /// The namespace reported its own values (NSFEAT bit 1).
    pub namespace_specific: bool,
}

impl AtomicLimits {
    /// True if `blocks` blocks at `slba` cross a power-fail atomic boundary.
    pub fn crosses_power_fail_boundary(&self, slba: u64, blocks: u64) -> bool {
        let b = self.boundary_power_fail as u64;
        if b == 0 || blocks == 0 {
            return false;
        }
        let off = self.boundary_offset as u64 % b;
        let shift = |lba: u64| (lba + b - off) / b;
        shift(slba) != shift(slba + blocks - 1)
    }
}

/// The namespace's preferred sizes (NSFEAT bit 4), real block counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PreferredSizes {
    /// Preferred Write Granularity (NPWG + 1).
    pub write_granularity: u32,
    /// Preferred Write Alignment (NPWA + 1).
    pub write_alignment: u32,
    /// Preferred Deallocate Granularity (NPDG + 1).
    pub deallocate_granularity: u32,
    /// Preferred Deallocate Alignment (NPDA + 1).
    pub deallocate_alignment: u32,
    /// Optimal Write Size (NOWS + 1).
    pub optimal_write: u32,
}

/// Copy (simple copy) limits, when the controller supports Copy with format 0 ranges.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CopyLimits {
    /// Blocks per source range (MSSRL; 0 = not reported, then 65 536).
    pub max_range_blocks: u32,
    /// Blocks per command (MCL; 0 = not reported, then unlimited).
    pub max_blocks: u32,
    /// Source ranges per command (MSRC + 1).
    pub max_ranges: u16,
}

/// Limits of the commands without data from the CNS 06h page (all `None` when the
/// controller does not have the page: QEMU 7.2 may refuse it).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CommandLimits {
    /// Blocks one Verify may cover (VSL), `None` = only the 65 536 of NLB.
    pub verify_blocks: Option<u64>,
    /// Blocks one Write Zeroes may cover (WZSL).
    pub write_zeroes_blocks: Option<u64>,
    /// Ranges one Dataset Management may carry (DMRL), `None` = 256.
    pub dsm_ranges: Option<u32>,
    /// Blocks one range may cover (DMRSL).
    pub dsm_range_blocks: Option<u32>,
    /// Blocks one Dataset Management may cover in total (DMSL).
    pub dsm_blocks: Option<u64>,
}

impl CommandLimits {
    pub(crate) fn from_identify(p: Option<&IdentifyNvmController>, mpsmin: PageSize) -> Self {
        let Some(p) = p else {
            return CommandLimits::default();
        };
        let bytes = |n: u8| (n != 0).then(|| (mpsmin.bytes() as u64).checked_shl(n as u32));
        CommandLimits {
            verify_blocks: bytes(p.vsl()).map(|b| b.unwrap_or(u64::MAX)),
            write_zeroes_blocks: bytes(p.wzsl()).map(|b| b.unwrap_or(u64::MAX)),
            dsm_ranges: (p.dmrl() != 0).then_some(p.dmrl() as u32),
            dsm_range_blocks: (p.dmrsl() != 0).then_some(p.dmrsl()),
            dsm_blocks: (p.dmsl() != 0).then_some(p.dmsl()),
        }
    }
}

/// One active namespace of a controller.
///
/// A plain value: cheap to clone, and it carries the planner limits so that submitting an
/// I/O needs no lookup.
///
/// It is a snapshot of Identify Namespace: when the namespace changes while the controller
/// runs (a Namespace Attribute Changed event, [`crate::Controller::poll_events`]), take the
/// new value from [`crate::Controller::namespace`]. One thing every clone learns at once:
/// that the namespace was removed; I/O submitted on it then fails with
/// [`crate::Error::NamespaceRemoved`].
#[derive(Clone, Debug)]
pub struct Namespace {
    // Hot: read on every I/O.
    nsid: Nsid,
    limits: Limits,
    metadata: Option<MetadataFormat>,
    /// The planner limits for a transfer that carries each block's metadata in the data
    /// buffer (extended LBA formats): blocks of `lba_size + ms` bytes.
    ext_limits: Option<Limits>,
    // Cold.
    blocks: u64,
    capacity: u64,
    lba_size: u32,
    noiob: u32,
    write_zeroes: bool,
    deallocate: bool,
    volatile_write_cache: bool,
    /// The whole Identify Namespace page, for tools (`nvme-dio identify`).
    identify: std::sync::Arc<IdentifyNamespace>,
    /// Shared by every clone: set when a refresh found the namespace gone.
    removed: Arc<AtomicBool>,
    verify: bool,
    copy: Option<CopyLimits>,
    atomic: AtomicLimits,
    preferred: Option<PreferredSizes>,
    command_limits: CommandLimits,
}

impl Namespace {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn from_identify(
        nsid: Nsid,
        ns: &IdentifyNamespace,
        nvm_ns: Option<&IdentifyNvmNamespace>,
        ctrl: &IdentifyController,
        command_limits: CommandLimits,
        verify_logged: bool,
        (mpsmin, page): (PageSize, PageSize),
        list_pages: usize,
        sgl: bool,
    ) -> Namespace {
        let fmt = ns.current_lba_format();
        let limits = Limits::from_identify(ctrl, ns, mpsmin, page, list_pages, sgl);
        let pif = nvm_ns.map_or(PiFormat::Guard16, |p| p.pif(ns.flbas_index() as usize));
        let metadata = ns.metadata_format(pif);
        let ext_limits = metadata.filter(|m| m.extended).map(|m| Limits {
            lba_size: fmt.data_size + m.size as u32,
            ..limits
        });
        let zb = |v: u16| v as u32 + 1;
        let nonzero_zb = |v: u16| if v == 0 { 0 } else { zb(v) };
        let atomic = if ns.atomics_valid() {
            AtomicLimits {
                normal: zb(ns.nawun()),
                power_fail: zb(ns.nawupf()),
                boundary_normal: nonzero_zb(ns.nabsn()),
                boundary_power_fail: nonzero_zb(ns.nabspf()),
                boundary_offset: ns.nabo() as u32,
                namespace_specific: true,
            }
        } else {
            AtomicLimits {
                normal: ctrl.awun(),
                power_fail: ctrl.awupf(),
                boundary_normal: 0,
                boundary_power_fail: 0,
                boundary_offset: 0,
                namespace_specific: false,
            }
        };
        let preferred = ns.optimal_perf_valid().then(|| PreferredSizes {
            write_granularity: zb(ns.npwg()),
            write_alignment: zb(ns.npwa()),
            deallocate_granularity: zb(ns.npdg()),
            deallocate_alignment: zb(ns.npda()),
            optimal_write: zb(ns.nows()),
        });
        let copy = (ctrl.oncs().copy() && ctrl.ocfs() & 1 != 0).then(|| CopyLimits {
            max_range_blocks: ns.mssrl() as u32,
            max_blocks: ns.mcl(),
            max_ranges: ns.msrc(),
        });
        Namespace {
            nsid,
            blocks: ns.nsze(),
            capacity: ns.ncap(),
            lba_size: fmt.data_size,
            metadata,
            ext_limits,
            noiob: ns.noiob() as u32,
            limits,
            write_zeroes: ctrl.oncs().write_zeroes(),
            deallocate: ctrl.oncs().dataset_management(),
            volatile_write_cache: ctrl.vwc_present(),
            identify: std::sync::Arc::new(ns.clone()),
            removed: Arc::new(AtomicBool::new(false)),
            verify: ctrl.oncs().verify() || verify_logged,
            copy,
            atomic,
            preferred,
            command_limits,
        }
    }

    /// The whole Identify Namespace page the controller returned (at bring-up, or at the
    /// last refresh).
    pub fn identify(&self) -> &IdentifyNamespace {
        &self.identify
    }

    /// True once the controller no longer has this namespace (found by a refresh).
    pub fn is_removed(&self) -> bool {
        self.removed.load(Ordering::Relaxed)
    }

    pub(crate) fn mark_removed(&self) {
        self.removed.store(true, Ordering::Relaxed);
    }

    /// Refuses a namespace that was removed.
    #[inline]
    pub(crate) fn check_present(&self) -> Result<(), crate::Error> {
        if self.is_removed() {
            return Err(crate::Error::NamespaceRemoved { nsid: self.nsid });
        }
        Ok(())
    }

    /// The same namespace with new Identify data: the removal flag stays shared.
    pub(crate) fn updated(&self, mut new: Namespace) -> Namespace {
        new.removed = Arc::clone(&self.removed);
        new
    }

    /// The namespace identifier.
    pub fn id(&self) -> Nsid {
        self.nsid
    }

    /// Size in logical blocks (NSZE).
    pub fn blocks(&self) -> u64 {
        self.blocks
    }

    /// Capacity in logical blocks (NCAP).
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Size in bytes (data only, without metadata).
    pub fn bytes(&self) -> u64 {
        self.blocks * self.lba_size as u64
    }

    /// Logical block size in bytes (data only: metadata comes on top).
    pub fn lba_size(&self) -> u32 {
        self.lba_size
    }

    /// Metadata bytes per block of the current format (0 if none).
    pub fn metadata_size(&self) -> u16 {
        self.metadata.map_or(0, |m| m.size)
    }

    /// The metadata format: size, extended or separate, protection information (type,
    /// position, guard format). `None` when the format has no metadata.
    #[inline]
    pub fn metadata_format(&self) -> Option<MetadataFormat> {
        self.metadata
    }

    /// Bytes of the data buffer per block: the block size, plus the metadata for extended
    /// LBA formats (the metadata then travels after each block's data).
    pub fn buffer_block_size(&self) -> u32 {
        match self.metadata {
            Some(m) if m.extended => self.lba_size + m.size as u32,
            _ => self.lba_size,
        }
    }

    /// The largest transfer one command may carry, in bytes (MDTS and the PRP list capacity).
    pub fn max_transfer(&self) -> u32 {
        self.limits.max_transfer
    }

    /// Namespace Optimal I/O Boundary in blocks (0 if the namespace reports none).
    pub fn optimal_io_boundary(&self) -> u32 {
        self.noiob
    }

    /// True if Write Zeroes is supported.
    pub fn supports_write_zeroes(&self) -> bool {
        self.write_zeroes
    }

    /// True if Dataset Management (deallocate) is supported.
    pub fn supports_deallocate(&self) -> bool {
        self.deallocate
    }

    /// True if Verify is supported (ONCS bit 7, or the Commands Supported and Effects log:
    /// QEMU 7.2 lists it only there).
    pub fn supports_verify(&self) -> bool {
        self.verify
    }

    /// Copy limits, if Copy with format 0 source ranges is supported (ONCS bit 8, OCFS bit 0).
    pub fn copy_limits(&self) -> Option<CopyLimits> {
        self.copy
    }

    /// The atomic write units.
    pub fn atomic_limits(&self) -> AtomicLimits {
        self.atomic
    }

    /// The preferred write and deallocate sizes, when the namespace reports them.
    pub fn preferred_sizes(&self) -> Option<PreferredSizes> {
        self.preferred
    }

    /// Verify / Write Zeroes / Dataset Management limits (CNS 06h).
    pub fn command_limits(&self) -> CommandLimits {
        self.command_limits
    }

    /// True if the controller has a volatile write cache (so Flush matters).
    pub fn has_volatile_write_cache(&self) -> bool {
        self.volatile_write_cache
    }

    /// True if the controller accepts SGL data pointers for this namespace's I/O.
    pub fn supports_sgl(&self) -> bool {
        self.limits.sgl.is_some()
    }

    /// The planner limits for this namespace.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The planner limits for a transfer with the metadata interleaved (extended formats).
    pub(crate) fn ext_limits(&self) -> Option<&Limits> {
        self.ext_limits.as_ref()
    }
}
