//! The PCIe function: BAR0 decoding, the DMA mapper, MSI-X eventfds, the background thread.

use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nvme_dio_dma::{Bar0, DmaMapper, PciFunction};
use nvme_dio_queue::regs;
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use crate::EmuError;
use crate::config::{EmuConfig, Mode};
use crate::ctrl::{EmuStats, State};
use crate::fault::Fault;
use crate::mem::{IOVA_RANGE, Mapping, TableError};

/// What the BAR, the mapper and the thread share.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) state: Mutex<State>,
    pub(crate) removed: AtomicBool,
    /// `Fault::AllOnesReads`: BAR reads still to answer with all ones.
    all_ones: AtomicU32,
    mode: Mode,
    cap: u64,
    stride_shift: u32,
    bar_len: usize,
    /// Thread mode: the last value written to each doorbell, and a dirty bit per doorbell.
    db_values: Box<[AtomicU32]>,
    db_dirty: Box<[AtomicU64]>,
    stop: AtomicBool,
    thread: OnceLock<std::thread::Thread>,
}

impl Shared {
    /// Locks the state; a panic in another holder does not make the emulator unusable.
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// True if this read is one of `Fault::AllOnesReads` (counted).
    #[inline]
    fn all_ones_read(&self) -> bool {
        if self.all_ones.load(Ordering::Relaxed) == 0 {
            return false;
        }
        let took = self
            .all_ones
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok();
        if took {
            self.lock().stats.all_ones_reads += 1;
        }
        took
    }

    fn unpark(&self) {
        if let Some(t) = self.thread.get() {
            t.unpark();
        }
    }
}

/// BAR0 of the emulated controller. Register accesses take the controller lock; in inline
/// mode a doorbell write processes the queue before it returns.
#[derive(Debug, Clone)]
pub struct EmuBar {
    shared: Arc<Shared>,
}

impl EmuBar {
    fn doorbell_index(&self, offset: usize) -> Option<usize> {
        let rel = offset - regs::DOORBELL_BASE;
        if rel & ((1 << self.shared.stride_shift) - 1) != 0 {
            return None;
        }
        Some(rel >> self.shared.stride_shift)
    }
}

impl Bar0 for EmuBar {
    fn read32(&self, offset: usize) -> u32 {
        let sh = &*self.shared;
        if sh.removed.load(Ordering::Acquire) || sh.all_ones_read() {
            return u32::MAX;
        }
        let mut s = sh.lock();
        s.on_access();
        s.poll_delayed();
        if offset % 4 != 0 || offset + 4 > sh.bar_len {
            s.ub(format!(
                "32-bit read at misaligned or out-of-range offset {offset:#x}"
            ));
            return 0;
        }
        match offset {
            regs::CAP => sh.cap as u32,
            0x04 => (sh.cap >> 32) as u32,
            regs::VS => 0x0001_0400,
            regs::INTMS | regs::INTMC => {
                if !s.msix.is_empty() {
                    s.ub(format!(
                        "INTMS/INTMC read at {offset:#x} with MSI-X enabled"
                    ));
                }
                s.intms
            }
            regs::CC => s.cc,
            regs::CSTS => s.csts(),
            regs::NSSR => 0,
            regs::AQA => s.aqa,
            regs::ASQ => s.asq as u32,
            0x2c => (s.asq >> 32) as u32,
            regs::ACQ => s.acq as u32,
            0x34 => (s.acq >> 32) as u32,
            o if o < regs::DOORBELL_BASE => 0, // optional registers not implemented (CMB, PMR...)
            o => {
                s.ub(format!("read of write-only doorbell offset {o:#x}"));
                0
            }
        }
    }

    fn write32(&self, offset: usize, value: u32) {
        let sh = &*self.shared;
        if sh.removed.load(Ordering::Acquire) {
            return;
        }
        if offset >= regs::DOORBELL_BASE && offset + 4 <= sh.bar_len && offset % 4 == 0 {
            let idx = self.doorbell_index(offset);
            if sh.mode == Mode::Thread {
                if let Some(i) = idx.filter(|&i| i < sh.db_values.len()) {
                    sh.db_values[i].store(value, Ordering::Relaxed);
                    sh.db_dirty[i / 64].fetch_or(1 << (i % 64), Ordering::Release);
                    sh.unpark();
                    return;
                }
            }
            let mut s = sh.lock();
            s.on_access();
            match idx {
                Some(i) if i < 2 * s.sqs.len() => s.doorbell(i, value),
                Some(i) => s.ub(format!(
                    "doorbell write {value} at {offset:#x} (queue {}) beyond the supported queues",
                    i / 2
                )),
                None => s.ub(format!(
                    "doorbell write at {offset:#x} not on the doorbell stride"
                )),
            }
            return;
        }
        let mut s = sh.lock();
        s.on_access();
        s.poll_delayed();
        if offset % 4 != 0 || offset + 4 > sh.bar_len {
            s.ub(format!(
                "32-bit write {value:#x} at misaligned or out-of-range offset {offset:#x}"
            ));
            return;
        }
        match offset {
            regs::INTMS | regs::INTMC => {
                if !s.msix.is_empty() {
                    s.ub(format!(
                        "INTMS/INTMC written at {offset:#x} with MSI-X enabled"
                    ));
                    return;
                }
                if offset == regs::INTMS {
                    s.intms |= value;
                } else {
                    s.intms &= !value;
                }
            }
            regs::CC => {
                if s.cc & 1 != 0 && value & 1 == 0 {
                    // Reset: doorbells written before it must not reach the new queues
                    // (the thread takes the dirty bits under this same lock).
                    for d in sh.db_dirty.iter() {
                        d.store(0, Ordering::Relaxed);
                    }
                }
                s.write_cc(value);
                if !s.irq_list.is_empty() {
                    s.flush_irqs();
                }
            }
            regs::AQA => {
                if s.cc & 1 != 0 {
                    s.ub("AQA written while CC.EN=1".to_string());
                }
                s.aqa = value & 0x0fff_0fff;
            }
            regs::ASQ | 0x2c | regs::ACQ | 0x34 => {
                if s.cc & 1 != 0 {
                    s.ub(format!("ASQ/ACQ written at {offset:#x} while CC.EN=1"));
                }
                let (reg, hi) = match offset {
                    regs::ASQ => (&mut s.asq, false),
                    0x2c => (&mut s.asq, true),
                    regs::ACQ => (&mut s.acq, false),
                    _ => (&mut s.acq, true),
                };
                *reg = if hi {
                    (*reg & 0xffff_ffff) | (value as u64) << 32
                } else {
                    (*reg & !0xffff_ffff) | value as u64
                };
            }
            regs::NSSR => s.ub(format!("NSSR written ({value:#x}) but CAP.NSSRS = 0")),
            o => s.ub(format!(
                "32-bit write {value:#x} to read-only or reserved register {o:#x}"
            )),
        }
    }

    fn read64(&self, offset: usize) -> u64 {
        if self.shared.removed.load(Ordering::Acquire) || self.shared.all_ones_read() {
            return u64::MAX;
        }
        match offset {
            regs::CAP => self.shared.cap,
            regs::ASQ => self.shared.lock().asq,
            regs::ACQ => self.shared.lock().acq,
            _ => {
                self.shared
                    .lock()
                    .ub(format!("64-bit read at {offset:#x}: not a 64-bit register"));
                0
            }
        }
    }

    fn write64(&self, offset: usize, value: u64) {
        if self.shared.removed.load(Ordering::Acquire) {
            return;
        }
        match offset {
            regs::ASQ | regs::ACQ => {
                self.write32(offset, value as u32);
                self.write32(offset + 4, (value >> 32) as u32);
            }
            _ => self.shared.lock().ub(format!(
                "64-bit write {value:#x} at {offset:#x}: not a writable 64-bit register"
            )),
        }
    }

    fn len(&self) -> usize {
        self.shared.bar_len
    }
}

/// The emulator's IOMMU. Mapping and unmapping take the controller lock, so an unmap waits
/// for the command that is using the memory.
#[derive(Debug)]
pub struct EmuMapper {
    shared: Arc<Shared>,
}

impl DmaMapper for EmuMapper {
    unsafe fn map(&self, iova: u64, host: *mut u8, len: usize) -> Result<(), nvme_dio_dma::Error> {
        let m = Mapping {
            iova,
            len: len as u64,
            host: host as usize,
        };
        self.shared
            .lock()
            .table
            .insert(m)
            .map_err(|e| map_error("map", iova, len, e))
    }

    fn unmap(&self, iova: u64, len: usize) -> Result<(), nvme_dio_dma::Error> {
        self.shared
            .lock()
            .table
            .remove(iova, len as u64)
            .map_err(|e| map_error("unmap", iova, len, e))
    }

    fn iova_ranges(&self) -> Vec<Range<u64>> {
        vec![IOVA_RANGE]
    }

    fn tracks_allocations(&self) -> bool {
        self.shared.lock().cfg.check_freed_writes
    }

    fn range_allocated(&self, iova: u64, len: usize) {
        self.shared.lock().table.free.remove(iova, len as u64);
    }

    fn range_freed(&self, iova: u64, len: usize) {
        self.shared.lock().range_freed(iova, len as u64);
    }
}

fn map_error(op: &'static str, iova: u64, len: usize, e: TableError) -> nvme_dio_dma::Error {
    let reason = match e {
        TableError::OutOfRange => format!(
            "zero length or outside the emulated IOMMU's range {:#x}..{:#x}",
            IOVA_RANGE.start, IOVA_RANGE.end
        ),
        TableError::Overlap => "overlaps an existing mapping".to_string(),
        TableError::NotMapped => "no mapping with exactly this IOVA and length".to_string(),
    };
    nvme_dio_dma::Error::Mapping {
        op,
        iova,
        len,
        reason,
    }
}

/// The emulated NVMe controller as a PCIe function (see the crate documentation).
#[derive(Debug)]
pub struct EmuFunction {
    pub(crate) shared: Arc<Shared>,
    bar: EmuBar,
    mapper: Arc<EmuMapper>,
    thread: Option<JoinHandle<()>>,
}

impl EmuFunction {
    /// Builds a controller (power-on state: CC.EN = 0, no queues, MSI-X disabled).
    ///
    /// # Errors
    ///
    /// [`EmuError::InvalidConfig`] if a field is out of range; [`EmuError::Thread`] if the
    /// thread of [`Mode::Thread`] cannot be spawned.
    pub fn new(cfg: EmuConfig) -> Result<EmuFunction, EmuError> {
        cfg.validate()?;
        let stride_shift = 2 + cfg.dstrd as u32;
        let ndb = 2 * (cfg.max_ioqpairs as usize + 1);
        let bar_len = (regs::DOORBELL_BASE + (ndb << stride_shift))
            .max(0x4000)
            .next_power_of_two();
        let shared = Arc::new(Shared {
            cap: cfg.cap(),
            mode: cfg.mode,
            stride_shift,
            bar_len,
            db_values: (0..ndb).map(|_| AtomicU32::new(0)).collect(),
            db_dirty: (0..ndb.div_ceil(64)).map(|_| AtomicU64::new(0)).collect(),
            stop: AtomicBool::new(false),
            thread: OnceLock::new(),
            removed: AtomicBool::new(false),
            all_ones: AtomicU32::new(0),
            state: Mutex::new(State::new(cfg.clone())),
        });
        let thread = if cfg.mode == Mode::Thread {
            let sh = shared.clone();
            let h = std::thread::Builder::new()
                .name("nvme-emu".to_string())
                .spawn(move || run_thread(&sh))
                .map_err(|e| EmuError::Thread {
                    source: Arc::new(e),
                })?;
            let _ = shared.thread.set(h.thread().clone());
            Some(h)
        } else {
            None
        };
        Ok(EmuFunction {
            bar: EmuBar {
                shared: shared.clone(),
            },
            mapper: Arc::new(EmuMapper {
                shared: shared.clone(),
            }),
            shared,
            thread,
        })
    }

    /// The configuration the controller was built with.
    pub fn config(&self) -> EmuConfig {
        self.shared.lock().cfg.clone()
    }

    /// Injects a fault (see [`Fault`]).
    ///
    /// # Errors
    ///
    /// [`EmuError::NoSuchBlock`] for a [`Fault::FlipBit`] outside a RAM namespace.
    pub fn inject(&self, fault: Fault) -> Result<(), EmuError> {
        match fault {
            Fault::Command { target, action } => self.shared.lock().faults.arm(target, action),
            Fault::ControllerFatal => {
                let mut s = self.shared.lock();
                s.cfs = true;
                s.stats.faults_fired += 1;
            }
            Fault::SurpriseRemoval => self.remove(),
            Fault::DisableHangs => self.shared.lock().disable_hangs = true,
            Fault::LateWrites { accesses } => self.shared.lock().late_armed = accesses,
            Fault::AllOnesReads { reads } => {
                self.shared.lock().stats.faults_fired += 1;
                self.shared.all_ones.fetch_add(reads, Ordering::AcqRel);
            }
            Fault::EnableFails { times } => self.shared.lock().enable_fails = times,
            Fault::FlipBit { nsid, lba, bit } => {
                let mut s = self.shared.lock();
                let bad = EmuError::NoSuchBlock { nsid, lba };
                let i = s.ns_index(nsid).map_err(|_| bad.clone())?;
                let ns = &mut s.ns[i];
                if !ns.ram || lba >= ns.blocks || bit as u64 >= 8 << ns.lba_shift {
                    return Err(bad);
                }
                let byte = (lba << ns.lba_shift) as usize + bit as usize / 8;
                ns.data[byte] ^= 1 << (bit % 8);
                if !ns.durable.is_empty() {
                    ns.durable[byte] ^= 1 << (bit % 8); // the medium itself is corrupt
                }
                s.stats.faults_fired += 1;
            }
        }
        Ok(())
    }

    /// Removes all armed command faults that have not fired.
    pub fn clear_faults(&self) {
        self.shared.lock().faults.armed.clear();
    }

    /// Surprise removal: every BAR read returns all ones from now on, writes are ignored,
    /// and each enabled MSI-X eventfd is signalled once so waiters wake up.
    pub fn remove(&self) {
        let mut s = self.shared.lock();
        if self.shared.removed.swap(true, Ordering::AcqRel) {
            return;
        }
        s.stats.faults_fired += 1;
        for fd in &s.msix {
            let _ = fd.write(1);
        }
    }

    /// Interrupt Coalescing as the host last set it (Set Features 08h, CDW11 bits 15:0):
    /// `(threshold, time)` in the spec's encoding, the threshold 0's based and the time in
    /// 100 us units; `(0, 0)` after power-on and after every controller reset. Recorded
    /// only: the emulator still interrupts once per completion batch.
    pub fn interrupt_coalescing(&self) -> (u8, u8) {
        let v = self.shared.lock().int_coalescing;
        (v as u8, (v >> 8) as u8)
    }

    /// The counters.
    pub fn stats(&self) -> EmuStats {
        let s = self.shared.lock();
        EmuStats {
            freed_writes: s.table.freed_writes(),
            ..s.stats
        }
    }

    /// Device writes into memory the driver had given back, oldest first (the freed-write
    /// checker, [`EmuConfig::check_freed_writes`]; at most 256 are described, all are
    /// counted in [`EmuStats::freed_writes`]). A driver that keeps the quarantine rule
    /// causes none, whatever the faults: tests assert this is empty.
    pub fn freed_write_events(&self) -> Vec<String> {
        self.shared.lock().table.freed_write_events()
    }

    /// Undefined-behaviour events so far, oldest first (QEMU's `pci_nvme_ub_*` class): every
    /// doorbell for a missing queue or out of range, a doorbell before CSTS.RDY=1, MMIO at a
    /// misaligned/unknown/read-only offset, registers changed while enabled, INTMS/INTMC with
    /// MSI-X on, a CQ head past the posted entries. A correct driver causes none: tests
    /// assert this is empty.
    pub fn ub_events(&self) -> Vec<String> {
        self.shared.lock().ub.clone()
    }

    /// Error events so far, oldest first (QEMU's `pci_nvme_err_*` class, for the
    /// controller-level failures only): a failed enable (bad CC/AQA/ASQ/ACQ) and a fatal error
    /// (queue memory not mapped). Command failures are reported in completions, not here.
    pub fn err_events(&self) -> Vec<String> {
        self.shared.lock().errs.clone()
    }

    /// Reads `buf.len()` bytes of namespace `nsid` starting at block `lba` (RAM backing),
    /// bypassing the queues: for tests that verify what a driver wrote.
    ///
    /// # Errors
    ///
    /// [`EmuError::NoSuchBlock`] if the namespace is not RAM or the range is outside it.
    pub fn read_blocks(&self, nsid: u32, lba: u64, buf: &mut [u8]) -> Result<(), EmuError> {
        let s = self.shared.lock();
        let bad = EmuError::NoSuchBlock { nsid, lba };
        let i = s.ns_index(nsid).map_err(|_| bad.clone())?;
        let ns = &s.ns[i];
        let start = (lba as usize)
            .checked_shl(ns.lba_shift)
            .ok_or(bad.clone())?;
        let src = ns.data.get(start..start + buf.len()).ok_or(bad)?;
        buf.copy_from_slice(src);
        Ok(())
    }

    /// Writes `buf` into namespace `nsid` starting at block `lba` (RAM backing), bypassing
    /// the queues: for tests that prepare data for a driver to read.
    ///
    /// # Errors
    ///
    /// [`EmuError::NoSuchBlock`] if the namespace is not RAM or the range is outside it.
    pub fn write_blocks(&self, nsid: u32, lba: u64, buf: &[u8]) -> Result<(), EmuError> {
        let mut s = self.shared.lock();
        let bad = EmuError::NoSuchBlock { nsid, lba };
        let i = s.ns_index(nsid).map_err(|_| bad.clone())?;
        let ns = &mut s.ns[i];
        let start = (lba as usize)
            .checked_shl(ns.lba_shift)
            .ok_or(bad.clone())?;
        let dst = ns.data.get_mut(start..start + buf.len()).ok_or(bad)?;
        dst.copy_from_slice(buf);
        if !ns.durable.is_empty() {
            // Straight to the medium: durable, whatever the cache holds.
            ns.durable[start..start + buf.len()].copy_from_slice(buf);
        }
        Ok(())
    }

    /// A simulated power cut: every write the volatile write cache held (not covered by a
    /// Flush, not written with FUA, not written while the cache was off) is lost, and the
    /// controller comes back in its power-on state (as after a function-level reset: CC.EN
    /// = 0, no queues, held commands and hung disables gone, MSI-X off). Armed command
    /// faults stay armed. Returns the number of blocks that lost data (also added to
    /// [`EmuStats::lost_blocks`]). Without [`EmuConfig::vwc`] nothing is cached, so nothing
    /// is lost.
    pub fn power_cut(&self) -> u64 {
        let mut s = self.shared.lock();
        let lost = s.power_cut();
        for d in self.shared.db_dirty.iter() {
            d.store(0, Ordering::Relaxed);
        }
        lost
    }

    /// Writes an arbitrary completion entry `dwords` into I/O completion queue `qid` at its
    /// tail, with the current phase tag (bit 16 of `dwords[3]` is overwritten), and signals
    /// the queue's MSI-X vector if it has one: the CQE of a broken or hostile controller
    /// (any CID, SQ id, SQ head, status), for fuzzing the driver's completion path. Counted
    /// in [`EmuStats::completions`].
    ///
    /// Returns false, writing nothing, if the queue does not exist or is the admin CQ, if it
    /// is full or holds completions waiting for room (reap and ring the head doorbell, then
    /// retry), or if the controller is not enabled, has failed or was removed.
    pub fn post_raw_cqe(&self, qid: u16, dwords: [u32; 4]) -> bool {
        if self.shared.removed.load(Ordering::Acquire) {
            return false;
        }
        let mut s = self.shared.lock();
        let posted = s.post_raw(qid, dwords);
        if !s.irq_list.is_empty() {
            s.flush_irqs();
        }
        posted
    }

    /// Posts the completions of every command held by [`crate::Action::Drop`] now, as if
    /// the device had only been slow: a test's latch, deterministic where a delay is not
    /// (the command stays unanswered exactly until the test says so). Returns how many.
    pub fn release_dropped(&self) -> usize {
        let mut s = self.shared.lock();
        let n = s.release_dropped();
        if !s.irq_list.is_empty() {
            s.flush_irqs();
        }
        n
    }

    /// Number of commands currently held (dropped or delayed; Asynchronous Event Requests
    /// waiting for an event are counted by [`EmuFunction::outstanding_aers`]).
    pub fn held_commands(&self) -> usize {
        self.shared.lock().held.iter().filter(|h| !h.aer).count()
    }

    /// Asynchronous Event Requests the controller holds, waiting for an event.
    pub fn outstanding_aers(&self) -> usize {
        self.shared.lock().held.iter().filter(|h| h.aer).count()
    }

    /// A one-line summary of the queues (head, tail, phase, held-for-room entries), for
    /// failure messages.
    pub fn describe_queues(&self) -> String {
        self.shared.lock().describe_queues()
    }
}

impl Drop for EmuFunction {
    fn drop(&mut self) {
        if let Some(h) = self.thread.take() {
            self.shared.stop.store(true, Ordering::Release);
            h.thread().unpark();
            let _ = h.join();
        }
    }
}

impl PciFunction for EmuFunction {
    type Bar = EmuBar;

    fn bar0(&self) -> &EmuBar {
        &self.bar
    }

    fn dma_mapper(&self) -> Arc<dyn DmaMapper> {
        self.mapper.clone()
    }

    fn msix_vectors(&self) -> u32 {
        self.shared.lock().cfg.msix_vectors
    }

    fn enable_msix(&self, count: u32) -> Result<Vec<Arc<EventFd>>, nvme_dio_dma::Error> {
        let mut s = self.shared.lock();
        if count > s.cfg.msix_vectors {
            return Err(nvme_dio_dma::Error::MsixVectors {
                bdf: "emu".to_string(),
                requested: count,
                available: s.cfg.msix_vectors,
            });
        }
        let fds = (0..count)
            .map(|_| EventFd::new(EFD_NONBLOCK).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| nvme_dio_dma::Error::Os {
                op: "eventfd",
                source: e,
            })?;
        s.msix = fds.clone();
        Ok(fds)
    }

    fn disable_msix(&self) -> Result<(), nvme_dio_dma::Error> {
        self.shared.lock().msix.clear();
        Ok(())
    }

    fn set_bus_master(&self, enable: bool) -> Result<(), nvme_dio_dma::Error> {
        if self.shared.removed.load(Ordering::Acquire) {
            return Err(nvme_dio_dma::Error::DeviceGone {
                bdf: "emu".to_string(),
            });
        }
        self.shared.lock().bus_master = enable;
        Ok(())
    }

    fn reset(&self) -> Result<(), nvme_dio_dma::Error> {
        let mut s = self.shared.lock();
        s.flr();
        // As VfioFunction::reset: the reset clears the command register, and the function
        // turns memory space and bus mastering back on.
        s.bus_master = true;
        // Under the lock: the thread takes dirty bits only while holding it.
        for d in self.shared.db_dirty.iter() {
            d.store(0, Ordering::Relaxed);
        }
        Ok(())
    }

    fn describe(&self) -> String {
        let s = self.shared.lock();
        format!("emu ({:?} mode, {} namespace(s))", s.cfg.mode, s.ns.len())
    }
}

/// Thread mode: poll doorbells (and shadow doorbells) like hardware; park when idle.
fn run_thread(sh: &Shared) {
    let mut idle = 0u32;
    while !sh.stop.load(Ordering::Acquire) {
        if sh.removed.load(Ordering::Acquire) {
            std::thread::park_timeout(Duration::from_millis(10));
            continue;
        }
        let mut work = false;
        let mut dirty = false;
        for w in sh.db_dirty.iter() {
            if w.load(Ordering::Relaxed) != 0 {
                dirty = true;
                break;
            }
        }
        let mut next_deadline = None;
        {
            let need_lock = dirty || {
                // Cheap peek without blocking the host: delayed completions or shadow doorbells.
                match sh.state.try_lock() {
                    Ok(s) => s.delayed > 0 || s.dbbuf.is_some(),
                    Err(_) => false,
                }
            };
            if need_lock {
                let mut s = sh.lock();
                for (wi, w) in sh.db_dirty.iter().enumerate() {
                    let mut bits = w.swap(0, Ordering::Acquire);
                    while bits != 0 {
                        let b = bits.trailing_zeros() as usize;
                        bits &= bits - 1;
                        let i = wi * 64 + b;
                        let v = sh.db_values[i].load(Ordering::Relaxed);
                        s.doorbell(i, v);
                        work = true;
                    }
                }
                if s.enabled && s.rdy && !s.cfs {
                    let before = s.stats.completions;
                    s.poll_shadow();
                    s.poll_delayed();
                    if s.stats.completions != before {
                        work = true;
                    }
                    if !s.irq_list.is_empty() {
                        s.flush_irqs();
                    }
                }
                next_deadline = s.next_deadline();
            }
        }
        if work {
            idle = 0;
            continue;
        }
        idle += 1;
        if idle < 64 {
            std::hint::spin_loop();
            std::thread::yield_now();
        } else {
            let mut wait = Duration::from_millis(1);
            if let Some(d) = next_deadline {
                wait = wait.min(d.saturating_duration_since(Instant::now()));
            }
            std::thread::park_timeout(wait);
        }
    }
}
