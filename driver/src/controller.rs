//! Controller bring-up, the admin queue, namespaces and queue pair creation.
//!
//! Bring-up is a sequence of named stages (see [`Stage`]); an error names the stage it
//! happened in. The [`Controller`] handle is cheap to clone and `Sync`: share it across
//! threads and create one [`IoQueuePair`] per thread.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use nvme_dio_dma::{Bar0, DmaMemory, MemoryOptions, PageKind, PciFunction};
use nvme_dio_queue::cmd::{
    CreateIoCq, CreateIoSq, DeleteIoCq, DeleteIoSq, Identify, NumberOfQueues, SetFeatures,
};
use nvme_dio_queue::identify::{ActiveNamespaceList, IdentifyController, IdentifyNamespace};
use nvme_dio_queue::regs::{self, Aqa, Cap, Cc, Csts, Version, shn, shst};
use nvme_dio_queue::{Iova, Nsid, PageSize, Qid, QueueSize, plan};
use vmm_sys_util::eventfd::EventFd;

use crate::admin::AdminQueue;
use crate::error::{Error, Stage};
use crate::namespace::Namespace;
use crate::qpair::{IoQueuePair, QueuePairOptions};

/// How to bring a controller up.
#[derive(Clone, Debug)]
pub struct ControllerOptions {
    /// I/O queue pairs to ask the controller for (Set Features, Number of Queues).
    pub io_queues: u16,
    /// Admin queue entries.
    pub admin_entries: u32,
    /// Deadline for each admin command.
    pub admin_timeout: Duration,
    /// PRP list pages each I/O slot owns. One page holds `page / 8` entries; more pages
    /// allow transfers past 2 MiB (at 4 KiB pages) where MDTS allows, chaining the lists.
    pub prp_list_pages: usize,
    /// Use SGLs where the controller supports them and they save commands.
    pub use_sgl: bool,
    /// DMA memory settings (hugepage size, fallback to ordinary pages).
    pub memory: MemoryOptions,
    /// Enable MSI-X at bring-up so queue pairs can run in interrupt mode.
    pub interrupts: bool,
}

impl Default for ControllerOptions {
    fn default() -> Self {
        ControllerOptions {
            io_queues: 16,
            admin_entries: 32,
            admin_timeout: Duration::from_secs(10),
            prp_list_pages: 1,
            use_sgl: true,
            memory: MemoryOptions {
                page: PageKind::Huge2M,
                region_bytes: 32 << 20,
                allow_fallback: false,
            },
            interrupts: true,
        }
    }
}

/// What Identify Controller and the registers said, for users and tools.
#[derive(Clone, Debug)]
pub struct ControllerInfo {
    /// PCI vendor id.
    pub vid: u16,
    /// Serial number.
    pub serial: String,
    /// Model number.
    pub model: String,
    /// Firmware revision.
    pub firmware: String,
    /// NVMe version (VS register).
    pub version: Version,
    /// CAP register.
    pub cap: Cap,
    /// MDTS as reported (0 = no limit).
    pub mdts: u8,
    /// Max transfer the driver uses per command, bytes.
    pub max_transfer: u32,
    /// Controller page size in use (CC.MPS).
    pub page_size: PageSize,
    /// I/O queue pairs granted.
    pub io_queues: u16,
    /// MSI-X vectors enabled.
    pub msix_vectors: u32,
    /// SGL support.
    pub sgl: bool,
    /// Namespaces the controller supports at most (NN).
    pub max_namespaces: u32,
    /// The full Identify Controller page.
    pub identify: Arc<IdentifyController>,
}

pub(crate) struct Shared<D: PciFunction> {
    pub(crate) dev: Arc<D>,
    pub(crate) mem: DmaMemory,
    pub(crate) page: PageSize,
    pub(crate) dstrd: u8,
    pub(crate) info: ControllerInfo,
    pub(crate) namespaces: Vec<Namespace>,
    pub(crate) admin: Mutex<AdminQueue>,
    pub(crate) admin_timeout: Duration,
    pub(crate) prp_list_pages: usize,
    free_qids: Mutex<Vec<u16>>,
    pub(crate) vectors: Vec<Arc<EventFd>>,
    /// Set once a register read returned all ones: every request fails fast from then on.
    pub(crate) gone: AtomicBool,
}

impl<D: PciFunction> std::fmt::Debug for Shared<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Controller")
            .field("device", &self.dev.describe())
            .field("info", &self.info)
            .finish()
    }
}

/// A controller that has been brought up. Clone it to share it across threads.
pub struct Controller<D: PciFunction> {
    shared: Arc<Shared<D>>,
}

impl<D: PciFunction> Clone for Controller<D> {
    fn clone(&self) -> Self {
        Controller {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<D: PciFunction> std::fmt::Debug for Controller<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.shared.fmt(f)
    }
}

/// Reads a 32-bit register, turning all ones into [`Error::DeviceGone`].
pub(crate) fn read32<B: Bar0>(bar: &B, reg: usize) -> Result<u32, Error> {
    match bar.read32(reg) {
        u32::MAX => Err(Error::DeviceGone { register: reg }),
        v => Ok(v),
    }
}

fn wait_ready<B: Bar0>(bar: &B, want: bool, limit: Duration) -> Result<(), Error> {
    let start = Instant::now();
    loop {
        let csts = Csts(read32(bar, regs::CSTS)?);
        if want && csts.cfs() {
            return Err(Error::ControllerFatal { csts: csts.0 });
        }
        if csts.rdy() == want {
            return Ok(());
        }
        let waited = start.elapsed();
        if waited > limit {
            return Err(Error::ReadyTimeout {
                want_ready: want,
                waited,
                limit,
                csts: csts.0,
            });
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

impl<D: PciFunction> Controller<D> {
    /// Brings the controller behind `dev` up from whatever state it is in.
    ///
    /// # Errors
    ///
    /// [`Error::BringUp`] naming the stage that failed, wrapping the cause.
    pub fn new(dev: Arc<D>, opts: ControllerOptions) -> Result<Controller<D>, Error> {
        let bar = dev.bar0();

        // Stage: capabilities.
        let cap_raw = bar.read64(regs::CAP);
        if cap_raw == u64::MAX {
            return Err(Error::DeviceGone {
                register: regs::CAP,
            }
            .at(Stage::Capabilities));
        }
        let cap = Cap(cap_raw);
        let version = Version(read32(bar, regs::VS).map_err(|e| e.at(Stage::Capabilities))?);
        if !cap.css_nvm() {
            return Err(
                Error::Unsupported("CAP.CSS does not include the NVM command set".into())
                    .at(Stage::Capabilities),
            );
        }
        if cap.mqes_raw() == 0 {
            return Err(
                Error::Nonsense("CAP.MQES is 0 (queues of one entry cannot work)".into())
                    .at(Stage::Capabilities),
            );
        }
        let (Some(mpsmin), Some(mpsmax)) = (cap.mpsmin(), cap.mpsmax()) else {
            return Err(
                Error::Nonsense(format!("CAP.MPSMIN/MPSMAX unusable in CAP={cap_raw:#x}"))
                    .at(Stage::Capabilities),
            );
        };
        // The host page size when the controller allows it, so that a DMA buffer's pages
        // are the controller's pages; otherwise the controller's minimum.
        let page = if mpsmin <= PageSize::SIZE_4K && PageSize::SIZE_4K <= mpsmax {
            PageSize::SIZE_4K
        } else {
            mpsmin
        };
        let limit = cap.timeout().max(Duration::from_millis(500));
        let dstrd = cap.dstrd();

        // Stage: disable.
        let cc = Cc(read32(bar, regs::CC).map_err(|e| e.at(Stage::Disable))?);
        if cc.en() {
            bar.write32(regs::CC, cc.with_en(false).0);
        }
        wait_ready(bar, false, limit).map_err(|e| e.at(Stage::Disable))?;

        // Stage: admin queue.
        let mem = DmaMemory::new(dev.dma_mapper(), opts.memory)
            .map_err(|e| Error::from(e).at(Stage::AdminQueue))?;
        let admin_size = QueueSize::new(opts.admin_entries.min(cap.mqes().entries()).min(4096))
            .ok_or_else(|| {
                Error::BadOption(format!("admin_entries {} (2..=4096)", opts.admin_entries))
                    .at(Stage::AdminQueue)
            })?;
        let mut admin = AdminQueue::new(&mem, admin_size, page.bytes(), dstrd)
            .map_err(|e| e.at(Stage::AdminQueue))?;
        bar.write32(
            regs::AQA,
            Aqa {
                asqs: admin_size,
                acqs: admin_size,
            }
            .to_u32(),
        );
        bar.write64(regs::ASQ, admin.sq_iova());
        bar.write64(regs::ACQ, admin.cq_iova());

        // Stage: enable.
        let cc = Cc::default()
            .with_css(0)
            .with_mps(page)
            .with_iosqes(6)
            .with_iocqes(4)
            .with_en(true);
        bar.write32(regs::CC, cc.0);
        wait_ready(bar, true, limit).map_err(|e| e.at(Stage::Enable))?;

        // Stage: Identify Controller.
        let t = opts.admin_timeout;
        let idbuf = mem
            .alloc(4096, page.bytes())
            .map_err(|e| Error::from(e).at(Stage::IdentifyController))?;
        admin
            .execute_with_buf(bar, |d| Identify::controller().build(d), &idbuf, t)
            .map_err(|e| e.at(Stage::IdentifyController))?;
        let mut raw = vec![0u8; 4096];
        idbuf
            .copy_to_slice(0, &mut raw)
            .map_err(|e| Error::from(e).at(Stage::IdentifyController))?;
        let id = IdentifyController::from_bytes(&raw)
            .map_err(|e| Error::Nonsense(e.to_string()).at(Stage::IdentifyController))?;
        let sq_min = id.sqes().required;
        let cq_min = id.cqes().required;
        if sq_min > 6 || cq_min > 4 {
            return Err(Error::Unsupported(format!(
                "SQES/CQES require {}/{}-byte entries; this driver uses 64/16",
                1u32 << sq_min,
                1u32 << cq_min
            ))
            .at(Stage::IdentifyController));
        }
        let mdts_bytes = id.max_transfer_bytes(mpsmin);
        let max_transfer = plan::max_transfer(mdts_bytes, page, opts.prp_list_pages.max(1));
        let sgl = opts.use_sgl && id.sgls().supported;

        // Stage: namespaces.
        let mut namespaces = Vec::new();
        let nsids = {
            admin
                .execute_with_buf(
                    bar,
                    |d| Identify::active_namespaces(Nsid(0)).build(d),
                    &idbuf,
                    t,
                )
                .map_err(|e| e.at(Stage::IdentifyNamespaces))?;
            idbuf
                .copy_to_slice(0, &mut raw)
                .map_err(|e| Error::from(e).at(Stage::IdentifyNamespaces))?;
            ActiveNamespaceList::parse(&raw)
                .map_err(|e| Error::Nonsense(e.to_string()).at(Stage::IdentifyNamespaces))?
        };
        for nsid in nsids {
            idbuf.fill(0);
            admin
                .execute_with_buf(bar, |d| Identify::namespace(nsid).build(d), &idbuf, t)
                .map_err(|e| e.at(Stage::IdentifyNamespaces))?;
            idbuf
                .copy_to_slice(0, &mut raw)
                .map_err(|e| Error::from(e).at(Stage::IdentifyNamespaces))?;
            let ns = IdentifyNamespace::from_bytes(&raw)
                .map_err(|e| Error::Nonsense(e.to_string()).at(Stage::IdentifyNamespaces))?;
            if ns.nsze() == 0 {
                continue; // allocated but inactive
            }
            let fmt = ns.current_lba_format();
            if !(512..=65536).contains(&fmt.data_size) || !fmt.data_size.is_power_of_two() {
                return Err(Error::Nonsense(format!(
                    "namespace {nsid} has LBA size {}",
                    fmt.data_size
                ))
                .at(Stage::IdentifyNamespaces));
            }
            namespaces.push(Namespace::from_identify(
                nsid,
                &ns,
                &id,
                page,
                max_transfer,
                sgl,
            ));
        }

        // Stage: number of queues.
        let want = opts.io_queues.max(1);
        let cqe = admin
            .execute(bar, SetFeatures::number_of_queues(want, want).build(), t)
            .map_err(|e| e.at(Stage::SetNumberOfQueues))?;
        let (nsq, ncq) = NumberOfQueues::from_result(cqe.result);
        let granted = nsq.min(ncq).min(want);
        if granted == 0 {
            return Err(Error::Nonsense("controller granted zero I/O queues".into())
                .at(Stage::SetNumberOfQueues));
        }

        // Stage: interrupts. Vector 0 is the admin queue's; I/O queue `qid` uses vector `qid`.
        let mut vectors = Vec::new();
        if opts.interrupts && dev.msix_vectors() > 1 {
            let n = dev.msix_vectors().min(granted as u32 + 1);
            vectors = dev
                .enable_msix(n)
                .map_err(|e| Error::from(e).at(Stage::Interrupts))?;
        }

        let info = ControllerInfo {
            vid: id.vid(),
            serial: id.serial(),
            model: id.model(),
            firmware: id.firmware(),
            version,
            cap,
            mdts: id.mdts(),
            max_transfer,
            page_size: page,
            io_queues: granted,
            msix_vectors: vectors.len() as u32,
            sgl,
            max_namespaces: id.nn(),
            identify: Arc::new(id),
        };
        let shared = Shared {
            dev: Arc::clone(&dev),
            mem,
            page,
            dstrd,
            info,
            namespaces,
            admin: Mutex::new(admin),
            admin_timeout: t,
            prp_list_pages: opts.prp_list_pages.max(1),
            free_qids: Mutex::new((1..=granted).rev().collect()),
            vectors,
            gone: AtomicBool::new(false),
        };
        Ok(Controller {
            shared: Arc::new(shared),
        })
    }

    /// What the controller reported about itself.
    pub fn info(&self) -> &ControllerInfo {
        &self.shared.info
    }

    /// The active namespaces.
    pub fn namespaces(&self) -> &[Namespace] {
        &self.shared.namespaces
    }

    /// The namespace `nsid`.
    ///
    /// # Errors
    ///
    /// [`Error::NoSuchNamespace`] if it is not active on this controller.
    pub fn namespace(&self, nsid: u32) -> Result<&Namespace, Error> {
        self.shared
            .namespaces
            .iter()
            .find(|n| n.id().0 == nsid)
            .ok_or_else(|| Error::NoSuchNamespace {
                nsid: Nsid(nsid),
                active: self.shared.namespaces.iter().map(|n| n.id().0).collect(),
            })
    }

    /// The DMA memory I/O buffers must come from (allocate with `alloc` or `pool`).
    pub fn memory(&self) -> &DmaMemory {
        &self.shared.mem
    }

    /// The device underneath (for fault injection in tests, or diagnostics).
    pub fn device(&self) -> &Arc<D> {
        &self.shared.dev
    }

    /// Creates an I/O queue pair (one SQ and one CQ) for the calling thread.
    ///
    /// # Errors
    ///
    /// [`Error::NoFreeQueue`] when every granted queue is in use, [`Error::BadOption`] for
    /// options the controller cannot take, [`Error::Command`] if the controller refuses.
    pub fn create_io_qpair(&self, opts: QueuePairOptions) -> Result<IoQueuePair<D>, Error> {
        let s = &self.shared;
        if s.gone.load(Ordering::Relaxed) {
            return Err(Error::DeviceGone {
                register: regs::CSTS,
            });
        }
        let entries = opts.entries.min(s.info.cap.mqes().entries());
        let size = QueueSize::new(entries).ok_or_else(|| {
            Error::BadOption(format!(
                "entries {} (2..={})",
                opts.entries,
                s.info.cap.mqes().entries()
            ))
        })?;
        let vector = match opts.mode {
            crate::qpair::CompletionMode::Poll => None,
            crate::qpair::CompletionMode::Interrupt => Some(()),
        };
        let qid =
            s.free_qids
                .lock()
                .expect("qid list poisoned")
                .pop()
                .ok_or(Error::NoFreeQueue {
                    granted: s.info.io_queues,
                })?;
        let irq = match vector {
            None => None,
            Some(()) => match s.vectors.get(qid as usize) {
                Some(fd) => Some(Arc::clone(fd)),
                None => {
                    self.release_qid(qid);
                    return Err(Error::BadOption(format!(
                        "interrupt mode needs MSI-X vector {qid}, but {} are enabled",
                        s.vectors.len()
                    )));
                }
            },
        };
        let page = s.page.bytes();
        let sq_mem = s.mem.alloc(size.entries() as usize * 64, page);
        let cq_mem = s.mem.alloc(size.entries() as usize * 16, page);
        let (sq_mem, cq_mem) = match (sq_mem, cq_mem) {
            (Ok(a), Ok(b)) => (a, b),
            (Err(e), _) | (_, Err(e)) => {
                self.release_qid(qid);
                return Err(e.into());
            }
        };
        let q = Qid(qid);
        let created = (|| {
            let mut admin = self.admin()?;
            let bar = s.dev.bar0();
            admin.execute(
                bar,
                CreateIoCq::new(q, size, Iova(cq_mem.iova()))
                    .interrupt_vector(irq.as_ref().map(|_| qid))
                    .build(),
                s.admin_timeout,
            )?;
            if let Err(e) = admin.execute(
                bar,
                CreateIoSq::new(q, size, Iova(sq_mem.iova()), q).build(),
                s.admin_timeout,
            ) {
                let _ = admin.execute(bar, DeleteIoCq::new(q).build(), s.admin_timeout);
                return Err(e);
            }
            Ok(())
        })();
        if let Err(e) = created {
            self.release_qid(qid);
            return Err(e);
        }
        IoQueuePair::new(Arc::clone(&self.shared), q, size, sq_mem, cq_mem, irq, opts)
    }

    pub(crate) fn admin(&self) -> Result<MutexGuard<'_, AdminQueue>, Error> {
        lock_admin(&self.shared)
    }

    fn release_qid(&self, qid: u16) {
        self.shared
            .free_qids
            .lock()
            .expect("qid list poisoned")
            .push(qid);
    }
}

pub(crate) fn lock_admin<D: PciFunction>(
    s: &Shared<D>,
) -> Result<MutexGuard<'_, AdminQueue>, Error> {
    // A panic while holding the admin lock leaves the ring in an unknown state; the
    // controller must be reset before it is used again.
    s.admin
        .lock()
        .map_err(|_| Error::Aborted("left in an unknown state by a panic"))
}

impl<D: PciFunction> Shared<D> {
    /// Deletes an I/O queue pair's SQ then CQ and gives its qid back. Returns true if the
    /// controller confirmed both deletions (or is gone and can no longer touch memory).
    pub(crate) fn delete_qpair(&self, q: Qid) -> bool {
        let mut deleted = self.gone.load(Ordering::Relaxed);
        if !deleted && let Ok(mut admin) = lock_admin(self) {
            let bar = self.dev.bar0();
            let sq = admin.execute(bar, DeleteIoSq::new(q).build(), self.admin_timeout);
            let cq = admin.execute(bar, DeleteIoCq::new(q).build(), self.admin_timeout);
            deleted = sq.is_ok() && cq.is_ok();
        }
        if deleted && let Ok(mut f) = self.free_qids.lock() {
            // A queue the controller may still hold is never handed out again.
            f.push(q.0);
        }
        deleted
    }

    /// Sends an Abort for `cid` on `sqid`; returns true if the controller says it aborted it.
    pub(crate) fn abort(&self, sqid: Qid, cid: u16) -> bool {
        let Ok(mut admin) = lock_admin(self) else {
            return false;
        };
        match admin.execute(
            self.dev.bar0(),
            nvme_dio_queue::cmd::Abort::new(sqid, nvme_dio_queue::Cid(cid)).build(),
            self.admin_timeout,
        ) {
            // CQE DW0 bit 0 clear means the command was aborted.
            Ok(cqe) => cqe.result & 1 == 0,
            Err(_) => false,
        }
    }

    /// Orderly shutdown: CC.SHN = normal, wait for CSTS.SHST = complete (bounded).
    fn shutdown(&self) {
        if self.gone.load(Ordering::Relaxed) {
            return;
        }
        let bar = self.dev.bar0();
        let Ok(cc) = read32(bar, regs::CC) else {
            return;
        };
        bar.write32(regs::CC, Cc(cc).with_shn(shn::NORMAL).0);
        let start = Instant::now();
        while start.elapsed() < self.info.cap.timeout().max(Duration::from_secs(1)) {
            match read32(bar, regs::CSTS) {
                Ok(v) if Csts(v).shst() == shst::COMPLETE => break,
                Ok(_) => std::thread::sleep(Duration::from_micros(200)),
                Err(_) => return,
            }
        }
        let _ = self.dev.disable_msix();
    }
}

impl<D: PciFunction> Drop for Shared<D> {
    fn drop(&mut self) {
        self.shutdown();
    }
}
