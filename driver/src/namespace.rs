//! Namespaces: geometry, limits and supported commands, from Identify Namespace.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use nvme_dio_queue::identify::{IdentifyController, IdentifyNamespace};
use nvme_dio_queue::plan::Limits;
use nvme_dio_queue::{Nsid, PageSize};

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
    nsid: Nsid,
    blocks: u64,
    capacity: u64,
    lba_size: u32,
    metadata_size: u16,
    noiob: u32,
    limits: Limits,
    write_zeroes: bool,
    deallocate: bool,
    volatile_write_cache: bool,
    /// The whole Identify Namespace page, for tools (`nvme-dio identify`).
    identify: std::sync::Arc<IdentifyNamespace>,
    /// Shared by every clone: set when a refresh found the namespace gone.
    removed: Arc<AtomicBool>,
}

impl Namespace {
    pub(crate) fn from_identify(
        nsid: Nsid,
        ns: &IdentifyNamespace,
        ctrl: &IdentifyController,
        (mpsmin, page): (PageSize, PageSize),
        list_pages: usize,
        sgl: bool,
    ) -> Namespace {
        let fmt = ns.current_lba_format();
        let limits = Limits::from_identify(ctrl, ns, mpsmin, page, list_pages, sgl);
        Namespace {
            nsid,
            blocks: ns.nsze(),
            capacity: ns.ncap(),
            lba_size: fmt.data_size,
            metadata_size: fmt.metadata_size,
            noiob: ns.noiob() as u32,
            limits,
            write_zeroes: ctrl.oncs().write_zeroes(),
            deallocate: ctrl.oncs().dataset_management(),
            volatile_write_cache: ctrl.vwc_present(),
            identify: std::sync::Arc::new(ns.clone()),
            removed: Arc::new(AtomicBool::new(false)),
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

    /// Size in bytes.
    pub fn bytes(&self) -> u64 {
        self.blocks * self.lba_size as u64
    }

    /// Logical block size in bytes.
    pub fn lba_size(&self) -> u32 {
        self.lba_size
    }

    /// Metadata bytes per block of the current format (0 if none).
    pub fn metadata_size(&self) -> u16 {
        self.metadata_size
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
}
