//! Controller bring-up, the admin queue, namespaces and queue pair creation.
//!
//! Bring-up is a sequence of named stages (see [`Stage`]); an error names the stage it
//! happened in. The [`Controller`] handle is cheap to clone and `Sync`: share it across
//! threads and create one [`IoQueuePair`] per thread.

use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use nvme_dio_dma::{Bar0, DmaMemory, PciFunction};
use nvme_dio_queue::cmd::Identify;
use nvme_dio_queue::identify::{
    ActiveNamespaceList, IdentifyController, IdentifyNamespace, IdentifyNvmController,
    IdentifyNvmNamespace,
};
use nvme_dio_queue::regs::{self, Cap, Version};
use nvme_dio_queue::{Nsid, PageSize, Qid, QueueSize, plan};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::poll::{PollContext, WatchingEvents};

use crate::admin::AdminQueue;
use crate::completion::Quarantine;
use crate::error::{BadOption, Error, Nonsense, Stage, Unsupported};
use crate::namespace::{CommandLimits, Namespace};
pub use crate::options::{ControllerInfo, ControllerOptions};
use crate::qpair::{IoQueuePair, IrqParts, Parts, QueuePairOptions};
use crate::regio::{
    config_shadow_doorbells, disable, enable, read_cap, read32, ready_timeout, set_coalescing,
    set_number_of_queues, shutdown_timeout,
};
use crate::ring::{DoorbellGate, ShadowDoorbells};

pub(crate) struct Shared<D: PciFunction> {
    pub(crate) dev: Arc<D>,
    pub(crate) mem: DmaMemory,
    pub(crate) page: PageSize,
    pub(crate) dstrd: u8,
    pub(crate) info: ControllerInfo,
    /// The active namespaces; replaced by a refresh (Namespace Attribute Changed).
    pub(crate) namespaces: RwLock<Vec<Namespace>>,
    pub(crate) admin: Mutex<AdminQueue>,
    pub(crate) admin_timeout: Duration,
    pub(crate) prp_list_pages: usize,
    /// For namespace refreshes: see [`NsContext`].
    pub(crate) command_limits: CommandLimits,
    pub(crate) verify_logged: bool,
    pub(crate) free_qids: Mutex<Vec<u16>>,
    pub(crate) vectors: Vec<Arc<EventFd>>,
    /// [`LIVE`], [`GONE`] (a register read returned all ones) or [`DEAD`] (a reset failed):
    /// once not live, every request fails fast.
    pub(crate) state: AtomicU8,
    /// Bumped when a controller reset (or the release for removal) begins, under the admin
    /// lock. A queue pair whose epoch is older has lost its queues: once the reset has
    /// settled it retires what it had in flight and re-creates them.
    pub(crate) epoch: AtomicU64,
    /// The newest epoch whose reset has finished (successfully or not): the controller was
    /// disabled, or declared gone or dead, and the admin queue is usable again.
    pub(crate) settled: AtomicU64,
    /// One "in doorbell" flag per queue pair: see `ring.rs` for why no doorbell from before a
    /// reset reaches the controller after it, without a lock on the doorbell path.
    pub(crate) gate: DoorbellGate,
    /// Shadow doorbell and EventIdx pages, when in use (`ring.rs`): configured at bring-up
    /// and again after every reset.
    pub(crate) shadow: Option<ShadowDoorbells>,
    /// The quarantine rule (`completion.rs`): buffers the device may still write are held
    /// until DMA is proven stopped.
    pub(crate) quarantine: Quarantine,
    pub(crate) resets: AtomicU64,
    pub(crate) admin_size: QueueSize,
    pub(crate) ready_limit: Duration,
}

/// What turning Identify Namespace into a [`Namespace`] needs from the controller.
pub(crate) struct NsContext<'a> {
    pub(crate) id: &'a IdentifyController,
    pub(crate) mpsmin: PageSize,
    pub(crate) page: PageSize,
    pub(crate) list_pages: usize,
    pub(crate) sgl: bool,
    /// The NVM command set's limits (Identify CNS 06h; none if refused).
    pub(crate) command_limits: CommandLimits,
    /// Verify is listed in the Commands Supported and Effects log (QEMU 7.2 lists it only
    /// there, not in ONCS).
    pub(crate) verify_logged: bool,
}

/// The active namespaces, identified one by one (at bring-up, and when a Namespace
/// Attribute Changed event asks for a refresh). `idbuf` is a 4 KiB DMA buffer.
pub(crate) fn identify_namespaces<B: Bar0>(
    bar: &B,
    admin: &mut AdminQueue,
    idbuf: &nvme_dio_dma::DmaBuf,
    t: Duration,
    cx: &NsContext<'_>,
) -> Result<Vec<Namespace>, Error> {
    let mut raw = vec![0u8; 4096];
    let mut namespaces = Vec::new();
    idbuf.fill(0);
    admin.execute_with_buf(
        bar,
        |d| Identify::active_namespaces(Nsid(0)).build(d),
        idbuf,
        t,
    )?;
    idbuf.copy_to_slice(0, &mut raw)?;
    let nsids =
        ActiveNamespaceList::parse(&raw).map_err(|e| Error::Nonsense(Nonsense::Identify(e)))?;
    for nsid in nsids {
        idbuf.fill(0);
        admin.execute_with_buf(bar, |d| Identify::namespace(nsid).build(d), idbuf, t)?;
        idbuf.copy_to_slice(0, &mut raw)?;
        let ns = IdentifyNamespace::from_bytes(&raw)
            .map_err(|e| Error::Nonsense(Nonsense::Identify(e)))?;
        if ns.nsze() == 0 {
            continue; // allocated but inactive
        }
        if ns.flbas_index() >= ns.nlbaf() {
            return Err(Error::Nonsense(Nonsense::LbaFormatIndex {
                nsid,
                index: ns.flbas_index(),
                count: ns.nlbaf(),
            }));
        }
        let fmt = ns.current_lba_format();
        if !(512..=65536).contains(&fmt.data_size) || !fmt.data_size.is_power_of_two() {
            return Err(Error::Nonsense(Nonsense::LbaSize {
                nsid,
                size: fmt.data_size,
            }));
        }
        // The guard format (16- or 64-bit) is only in the NVM command set's namespace page
        // (CNS 05h); ask for it only where there is protection information, and take the
        // 16-bit guard where the controller does not have the page.
        let nvm_ns = if ns.dps() & 0b111 != 0 {
            idbuf.fill(0);
            match admin.execute_with_buf(bar, |d| Identify::nvm_namespace(nsid).build(d), idbuf, t)
            {
                Ok(_) => {
                    let mut page = vec![0u8; 4096];
                    idbuf.copy_to_slice(0, &mut page)?;
                    Some(
                        IdentifyNvmNamespace::from_bytes(&page)
                            .map_err(|e| Error::Nonsense(Nonsense::Identify(e)))?,
                    )
                }
                Err(Error::Command { .. }) => None,
                Err(e) => return Err(e),
            }
        } else {
            None
        };
        namespaces.push(Namespace::from_identify(
            nsid,
            &ns,
            nvm_ns.as_ref(),
            cx.id,
            cx.command_limits,
            cx.verify_logged,
            (cx.mpsmin, cx.page),
            cx.list_pages,
            cx.sgl,
        ));
    }
    Ok(namespaces)
}

/// The controller works.
pub(crate) const LIVE: u8 = 0;
/// The device is gone (all-ones reads, confirmed, or the system asked for it back). Whether
/// it can still touch memory is what the quarantine's proof says.
pub(crate) const GONE: u8 = 1;
/// A reset failed: the controller may still be able to write memory, so in-flight buffers
/// are held (quarantined) unless clearing bus mastering or a function reset proved DMA
/// stopped.
pub(crate) const DEAD: u8 = 2;

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

impl<D: PciFunction> Controller<D> {
    /// Brings the controller behind `dev` up from whatever state it is in.
    ///
    /// # Errors
    ///
    /// [`Error::BringUp`] naming the stage that failed, wrapping the cause.
    pub fn new(dev: Arc<D>, opts: ControllerOptions) -> Result<Controller<D>, Error> {
        let bar = dev.bar0();

        // Stage: capabilities.
        let cap_raw = read_cap(bar);
        if cap_raw == u64::MAX {
            return Err(Error::DeviceGone {
                register: regs::CAP,
            }
            .at(Stage::Capabilities));
        }
        let cap = Cap(cap_raw);
        let version = Version(read32(bar, regs::VS).map_err(|e| e.at(Stage::Capabilities))?);
        if !cap.css_nvm() {
            return Err(Error::Unsupported(Unsupported::NoNvmCommandSet).at(Stage::Capabilities));
        }
        if cap.mqes_raw() == 0 {
            return Err(Error::Nonsense(Nonsense::MqesZero).at(Stage::Capabilities));
        }
        let (Some(mpsmin), Some(mpsmax)) = (cap.mpsmin(), cap.mpsmax()) else {
            return Err(
                Error::Nonsense(Nonsense::PageSizes { cap: cap_raw }).at(Stage::Capabilities)
            );
        };
        if mpsmin > mpsmax {
            return Err(Error::Nonsense(Nonsense::PageSizeOrder {
                min: mpsmin.bytes(),
                max: mpsmax.bytes(),
            })
            .at(Stage::Capabilities));
        }
        if mpsmin.bytes() > 64 << 10 {
            return Err(Error::Unsupported(Unsupported::PageTooLarge {
                bytes: mpsmin.bytes(),
            })
            .at(Stage::Capabilities));
        }
        // The host page size when the controller allows it, so that a DMA buffer's pages
        // are the controller's pages; otherwise the controller's minimum.
        let page = if mpsmin <= PageSize::SIZE_4K && PageSize::SIZE_4K <= mpsmax {
            PageSize::SIZE_4K
        } else {
            mpsmin
        };
        let limit = ready_timeout(bar, cap);
        let dstrd = cap.dstrd();

        // Stage: disable.
        disable(bar, limit).map_err(|e| e.at(Stage::Disable))?;

        // Stage: admin queue.
        let mem = DmaMemory::new(dev.dma_mapper(), opts.memory)
            .map_err(|e| Error::from(e).at(Stage::AdminQueue))?;
        let admin_size = QueueSize::new(opts.admin_entries.min(cap.mqes().entries()).min(4096))
            .ok_or_else(|| {
                Error::BadOption(BadOption::AdminEntries {
                    given: opts.admin_entries,
                })
                .at(Stage::AdminQueue)
            })?;
        let mut admin = AdminQueue::new(&mem, admin_size, page.bytes(), dstrd)
            .map_err(|e| e.at(Stage::AdminQueue))?;

        // Stage: enable.
        enable(bar, &admin, admin_size, page, limit).map_err(|e| e.at(Stage::Enable))?;

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
            .map_err(|e| Error::Nonsense(Nonsense::Identify(e)).at(Stage::IdentifyController))?;
        let sq_min = id.sqes().required;
        let cq_min = id.cqes().required;
        if sq_min > 6 || cq_min > 4 {
            return Err(Error::Unsupported(Unsupported::EntrySizes {
                sq: 1u32 << sq_min,
                cq: 1u32 << cq_min,
            })
            .at(Stage::IdentifyController));
        }
        let mdts_bytes = id.max_transfer_bytes(mpsmin);
        let max_transfer = plan::max_transfer(mdts_bytes, page, opts.prp_list_pages.max(1));
        let sgl = opts.use_sgl && id.sgls().supported;

        // The NVM command set's own controller page (CNS 06h): Verify, Write Zeroes and
        // Dataset Management limits. A controller that refuses it (an error status) simply
        // has none; anything else (a timeout) fails bring-up as any admin command does.
        idbuf.fill(0);
        let nvm_ctrl =
            match admin.execute_with_buf(bar, |d| Identify::nvm_controller().build(d), &idbuf, t) {
                Ok(_) => {
                    idbuf
                        .copy_to_slice(0, &mut raw)
                        .map_err(|e| Error::from(e).at(Stage::IdentifyController))?;
                    Some(IdentifyNvmController::from_bytes(&raw).map_err(|e| {
                        Error::Nonsense(Nonsense::Identify(e)).at(Stage::IdentifyController)
                    })?)
                }
                Err(Error::Command { .. }) => None,
                Err(e) => return Err(e.at(Stage::IdentifyController)),
            };
        let command_limits = CommandLimits::from_identify(nvm_ctrl.as_ref(), mpsmin);
        // Commands Supported and Effects: QEMU 7.2 implements Verify and lists it only here,
        // not in ONCS. A controller without the log page simply has ONCS.
        let verify_logged = {
            let log = nvme_dio_queue::cmd::GetLogPage::commands_supported();
            idbuf.fill(0);
            match admin.execute_with_buf(bar, |d| log.build(d), &idbuf, t) {
                Ok(_) => {
                    idbuf
                        .copy_to_slice(0, &mut raw)
                        .map_err(|e| Error::from(e).at(Stage::IdentifyController))?;
                    nvme_dio_queue::cmd::commands_supported_io(
                        &raw,
                        nvme_dio_queue::opcode::nvm::VERIFY,
                    )
                }
                Err(Error::Command { .. }) => false,
                Err(e) => return Err(e.at(Stage::IdentifyController)),
            }
        };

        // Stage: namespaces.
        let cx = NsContext {
            id: &id,
            mpsmin,
            page,
            list_pages: opts.prp_list_pages.max(1),
            sgl,
            command_limits,
            verify_logged,
        };
        let namespaces = identify_namespaces(bar, &mut admin, &idbuf, t, &cx)
            .map_err(|e| e.at(Stage::IdentifyNamespaces))?;

        // Stage: number of queues.
        let granted = set_number_of_queues(bar, &mut admin, opts.io_queues.max(1), t)
            .map_err(|e| e.at(Stage::SetNumberOfQueues))?;
        if granted == 0 {
            return Err(Error::Nonsense(Nonsense::ZeroQueues).at(Stage::SetNumberOfQueues));
        }

        // Stage: Doorbell Buffer Config, before any I/O queue exists.
        let shadow = if opts.shadow_doorbells && id.oacs().doorbell_buffer_config() {
            let pages = (|| {
                let p = page.bytes();
                Ok::<_, Error>(ShadowDoorbells::new(mem.alloc(p, p)?, mem.alloc(p, p)?))
            })()
            .map_err(|e| e.at(Stage::DoorbellBufferConfig))?;
            config_shadow_doorbells(bar, &mut admin, &pages, t)
                .map_err(|e| e.at(Stage::DoorbellBufferConfig))?;
            Some(pages)
        } else {
            None
        };

        // Stage: interrupts. Vector 0 is the admin queue's; I/O queue `qid` uses vector `qid`.
        let mut vectors = Vec::new();
        if opts.interrupts && dev.msix_vectors() > 1 {
            let n = dev.msix_vectors().min(granted as u32 + 1);
            vectors = dev
                .enable_msix(n)
                .map_err(|e| Error::from(e).at(Stage::Interrupts))?;
        }

        // Stage: interrupt coalescing (the admin queue is never coalesced).
        if let Some(c) = opts.coalescing {
            set_coalescing(bar, &mut admin, c, t).map_err(|e| e.at(Stage::InterruptCoalescing))?;
        }

        // Asynchronous events: enabled, and AERs kept outstanding (`events.rs`).
        crate::events::arm_events(bar, &mut admin, &id, t);

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
            shadow_doorbells: shadow.is_some(),
            max_namespaces: id.nn(),
            ready_timeout: limit,
            shutdown_timeout: shutdown_timeout(id.rtd3e(), cap),
            coalescing: opts.coalescing,
            identify: Arc::new(id),
        };
        let quarantine = Quarantine {
            mem: mem.clone(),
            proof: Arc::new(AtomicU8::new(0)),
        };
        let shared = Shared {
            dev: Arc::clone(&dev),
            mem,
            page,
            dstrd,
            info,
            namespaces: RwLock::new(namespaces),
            admin: Mutex::new(admin),
            admin_timeout: t,
            prp_list_pages: opts.prp_list_pages.max(1),
            command_limits,
            verify_logged,
            free_qids: Mutex::new((1..=granted).rev().collect()),
            vectors,
            state: AtomicU8::new(LIVE),
            epoch: AtomicU64::new(0),
            settled: AtomicU64::new(0),
            gate: DoorbellGate::new(granted),
            shadow,
            quarantine,
            resets: AtomicU64::new(0),
            admin_size,
            ready_limit: limit,
        };
        Ok(Controller {
            shared: Arc::new(shared),
        })
    }

    pub(crate) fn shared(&self) -> &Shared<D> {
        &self.shared
    }

    /// What the controller reported about itself.
    pub fn info(&self) -> &ControllerInfo {
        &self.shared.info
    }

    /// The active namespaces (a copy of the current list: it changes when a Namespace
    /// Attribute Changed event is handled, see [`Controller::poll_events`]).
    pub fn namespaces(&self) -> Vec<Namespace> {
        self.shared
            .namespaces
            .read()
            .expect("namespace list poisoned")
            .clone()
    }

    /// The namespace `nsid`, as the controller last described it.
    ///
    /// # Errors
    ///
    /// [`Error::NoSuchNamespace`] if it is not active on this controller.
    pub fn namespace(&self, nsid: impl Into<Nsid>) -> Result<Namespace, Error> {
        let nsid = nsid.into();
        let list = self
            .shared
            .namespaces
            .read()
            .expect("namespace list poisoned");
        list.iter()
            .find(|n| n.id() == nsid)
            .cloned()
            .ok_or_else(|| Error::NoSuchNamespace {
                nsid,
                active: list.iter().map(|n| n.id().0).collect(),
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
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use nvme_dio::{CompletionMode, Controller, QueuePairOptions};
    /// let ctrl = Controller::open("emu:ram", |_| {})?;
    /// // One per thread; 1 024 entries per ring, interrupt completion.
    /// let qp = ctrl.create_io_qpair(
    ///     QueuePairOptions::with_entries(1024).mode(CompletionMode::Interrupt),
    /// )?;
    /// assert_eq!(qp.capacity(), 1023); // one slot stays empty
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::NoFreeQueue`] when every granted queue is in use, [`Error::BadOption`] for
    /// options the controller cannot take, [`Error::Command`] if the controller refuses.
    pub fn create_io_qpair(&self, opts: QueuePairOptions) -> Result<IoQueuePair<D>, Error> {
        let s = &self.shared;
        s.check_live()?;
        let entries = opts.entries.min(s.info.cap.mqes().entries());
        let size = QueueSize::new(entries).ok_or(Error::BadOption(BadOption::QueueEntries {
            given: opts.entries,
            max: s.info.cap.mqes().entries(),
        }))?;
        let vector = match opts.mode {
            crate::qpair::CompletionMode::Poll => None,
            crate::qpair::CompletionMode::Interrupt | crate::qpair::CompletionMode::Hybrid => {
                Some(())
            }
        };
        let qid =
            s.free_qids
                .lock()
                .expect("qid list poisoned")
                .pop()
                .ok_or(Error::NoFreeQueue {
                    granted: s.info.io_queues,
                })?;
        // A controller whose BAR is shorter than its doorbells (a bad DSTRD, a BAR the
        // platform cut short) would make the first doorbell write fault: refuse the queue
        // with a clear error instead. The qid is not handed out again.
        let bar_len = s.dev.bar0().len();
        let db_end = regs::cq_head_doorbell(Qid(qid), s.dstrd) + 4;
        if db_end > bar_len {
            return Err(Error::Nonsense(Nonsense::DoorbellPastBar {
                qid,
                offset: db_end - 4,
                bar_len,
            }));
        }
        // Vector 0 is the admin queue's; I/O queue `qid` gets vector `qid` while there are
        // enough, and beyond that the I/O vectors are shared round-robin, as Linux does
        // (`msix_qsize` smaller than the queue pairs).
        let io_vectors = s.vectors.len().saturating_sub(1);
        let irq = match vector {
            None => None,
            Some(()) if io_vectors == 0 => {
                self.release_qid(qid);
                return Err(Error::BadOption(BadOption::NoVector {
                    vector: qid,
                    enabled: s.vectors.len(),
                }));
            }
            Some(()) => {
                let v = 1 + (qid as usize - 1) % io_vectors;
                // Shared when more queue pairs can exist than there are I/O vectors.
                let shared = s.info.io_queues as usize > io_vectors;
                Some((v as u16, Arc::clone(&s.vectors[v]), shared))
            }
        };
        let page = s.page.bytes();
        let slots = size.entries() as usize - 1;
        // Everything the queue pair needs is allocated before its queues are created, so
        // nothing can fail once the controller holds them.
        let parts = (|| {
            let sq = s.mem.alloc(size.entries() as usize * 64, page)?;
            let cq = s.mem.alloc(size.entries() as usize * 16, page)?;
            // All list pages in one allocation, sliced per tracker, mapped once.
            let lists = s.mem.alloc(slots * s.prp_list_pages * page, page)?;
            let vector = irq.as_ref().map(|(v, _, _)| *v);
            let irq = match irq {
                None => None,
                Some((_, fd, shared)) => {
                    let poll = PollContext::new().map_err(|e| Error::Wait(e.into()))?;
                    if shared {
                        // A shared eventfd is never read (reset) by a sharer, which would
                        // steal the wakeup of the others: each sharer's epoll is edge
                        // triggered and sees every interrupt as its own edge.
                        let events = WatchingEvents::new((libc::EPOLLIN | libc::EPOLLET) as u32);
                        poll.add_fd_with_events(fd.as_ref(), events, 0u32)
                    } else {
                        poll.add(fd.as_ref(), 0u32)
                    }
                    .map_err(|e| Error::Wait(e.into()))?;
                    Some(IrqParts { fd, poll, shared })
                }
            };
            Ok::<_, Error>(Parts {
                qid: Qid(qid),
                size,
                sq,
                cq,
                lists,
                irq,
                vector,
            })
        })();
        let parts = match parts {
            Ok(p) => p,
            Err(e) => {
                self.release_qid(qid);
                return Err(e);
            }
        };
        let iovas = (parts.sq.iova(), parts.cq.iova());
        let epoch = match s.create_queues(parts.qid, size, iovas, parts.vector) {
            Ok(epoch) => epoch,
            Err(f) if f.maybe_held => {
                // The controller may hold these queues: the qid is never handed out again
                // and the rings it may write are held, not freed.
                let _ = s.mem.quarantine_all([parts.sq, parts.cq]);
                return Err(f.error);
            }
            Err(f) => {
                self.release_qid(qid);
                return Err(f.error);
            }
        };
        Ok(IoQueuePair::new(
            Arc::clone(&self.shared),
            parts,
            epoch,
            &opts,
        ))
    }

    /// Resets the controller (CC.EN 1 -> 0 -> 1) and brings it back up. Every queue pair
    /// fails the requests it had in flight with [`Error::Aborted`] and re-creates its
    /// queues before its next I/O; the handles stay valid.
    ///
    /// # Errors
    ///
    /// [`Error::BringUp`] if the controller does not come back (an enable that fails is
    /// tried again, up to 3 attempts); it is then unusable, and DMA is stopped (bus
    /// mastering cleared, or a function reset) before any request is failed.
    pub fn reset(&self) -> Result<(), Error> {
        let seen = self.shared.epoch.load(Ordering::Acquire);
        self.shared.reset(seen)
    }

    /// True once the device is gone (removed, or asked back by the system: then drop every
    /// handle so the kernel can release it) or a reset failed. Checks the removal request,
    /// so an idle owner can call it now and then.
    pub fn is_gone(&self) -> bool {
        let s = &self.shared;
        // A CSTS that keeps reading all ones (read again before it is believed) is a device
        // that went without a removal request: released as for one.
        if s.state.load(Ordering::Acquire) == LIVE
            && (s.dev.removal_requested()
                || crate::regio::read32(s.dev.bar0(), nvme_dio_queue::regs::CSTS).is_err())
        {
            s.release_for_removal();
        }
        self.shared.state.load(Ordering::Acquire) != LIVE
    }

    /// The DMA memory's quarantine: buffers held because the device may still write them
    /// (requests failed with [`Error::BuffersHeld`], rings of queue pairs whose deletion was
    /// not confirmed). `held_buffers` falls back to 0 once DMA is proven stopped.
    pub fn quarantine(&self) -> nvme_dio_dma::QuarantineStats {
        self.shared.mem.quarantine_stats()
    }

    /// How DMA was proven stopped after the controller died or went, if it was (then
    /// nothing is held any more).
    pub fn dma_stopped(&self) -> Option<nvme_dio_dma::DmaStopped> {
        self.shared.quarantine.proof()
    }

    /// Controller resets since bring-up.
    pub fn resets(&self) -> u64 {
        self.shared.resets.load(Ordering::Relaxed)
    }

    fn release_qid(&self, qid: u16) {
        self.shared
            .free_qids
            .lock()
            .expect("qid list poisoned")
            .push(qid);
    }
}
