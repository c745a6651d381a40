//! Recovery and teardown: controller resets, the release for removal, queue deletion (and
//! the queue pair's Drop), Abort, and shutdown.

use std::sync::MutexGuard;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use nvme_dio_dma::{Bar0, DmaStopped, PciFunction};
use nvme_dio_queue::cmd::{DeleteIoCq, DeleteIoSq};
use nvme_dio_queue::queue_pair::Teardown;
use nvme_dio_queue::regs::{self, Cc, Csts, shn, shst};
use nvme_dio_queue::{Qid, QueueSize};

use crate::admin::AdminQueue;
use crate::controller::{DEAD, GONE, LIVE, Shared};
use crate::error::{AbortReason, Error, Nonsense, Stage};
use crate::qpair::IoQueuePair;
use crate::regio::{
    CreateFailed, config_shadow_doorbells, create_io_queues, disable, enable, no_longer_held,
    read32, set_coalescing, set_number_of_queues,
};

/// Attempts of a controller reset before it is declared dead.
pub(crate) const RESET_ATTEMPTS: u32 = 3;

pub(crate) fn lock_admin<D: PciFunction>(
    s: &Shared<D>,
) -> Result<MutexGuard<'_, AdminQueue>, Error> {
    // A panic while holding the admin lock leaves the ring in an unknown state; the
    // controller must be reset before it is used again.
    s.admin
        .lock()
        .map_err(|_| Error::Aborted(AbortReason::AdminPoisoned))
}

impl<D: PciFunction> Shared<D> {
    /// Fails fast once the device is gone or a reset failed.
    pub(crate) fn check_live(&self) -> Result<(), Error> {
        match self.state.load(Ordering::Acquire) {
            LIVE => Ok(()),
            GONE => Err(Error::DeviceGone {
                register: regs::CSTS,
            }),
            _ => Err(Error::Aborted(AbortReason::ResetFailed)),
        }
    }

    /// Creates I/O queue pair `q`; returns the reset epoch it was created in (read under
    /// the admin lock, which a reset holds throughout).
    ///
    /// A create that timed out may still complete (the queue exists, the controller is only
    /// late to say so), and `create_io_queues` deletes it again. If that deletion is not
    /// confirmed either, the admin queue has stopped answering: that is what a reset is for
    /// (Linux resets on an admin timeout). After a reset that worked the controller holds no
    /// queue, so the qid and the rings are free again; otherwise `maybe_held` stays set.
    pub(crate) fn create_queues(
        &self,
        q: Qid,
        size: QueueSize,
        iovas: (u64, u64),
        vector: Option<u16>,
    ) -> Result<u64, CreateFailed> {
        let not_held = |error| CreateFailed {
            error,
            maybe_held: false,
        };
        let mut admin = lock_admin(self).map_err(not_held)?;
        self.check_live().map_err(not_held)?;
        let epoch = self.epoch.load(Ordering::Acquire);
        if let Some(sh) = &self.shadow {
            // A qid used before left its last shadow values and EventIdx there; the new
            // queues start from 0. Nothing rings these doorbells while they are created.
            sh.clear_queue(
                regs::sq_tail_doorbell(q, self.dstrd),
                regs::cq_head_doorbell(q, self.dstrd),
            );
        }
        let result = create_io_queues(
            self.dev.bar0(),
            &mut admin,
            q,
            size,
            iovas,
            vector,
            self.admin_timeout,
        );
        drop(admin);
        match result {
            Ok(()) => Ok(epoch),
            Err(f) if f.maybe_held => {
                let held =
                    self.reset(epoch).is_err() || self.epoch.load(Ordering::Acquire) == epoch;
                Err(CreateFailed {
                    error: f.error,
                    maybe_held: held,
                })
            }
            Err(f) => Err(f),
        }
    }

    /// Begins a reset epoch: from now on no doorbell of an older epoch is written, and once
    /// this returns none is in progress (R1 and R2 in `ring.rs`). Called with the admin lock
    /// held, so epochs begin and settle in order.
    fn begin_epoch(&self) -> u64 {
        let e = self.epoch.fetch_add(1, Ordering::SeqCst) + 1;
        self.gate.close();
        e
    }

    /// The reset that began epoch `e` has finished; queue pairs may adopt it.
    fn settle(&self, e: u64) {
        self.settled.store(e, Ordering::Release);
    }

    /// True once the reset that began epoch `e` has finished.
    pub(crate) fn is_settled(&self, e: u64) -> bool {
        self.settled.load(Ordering::Acquire) >= e
    }

    /// Proves DMA stopped for a controller about to be declared dead or gone, before any
    /// queue pair retires a request: `disabled` if CC.EN = 0 was confirmed by CSTS.RDY = 0
    /// (read back, not all ones); otherwise clear bus mastering (as Linux does before it
    /// cancels requests), and failing that, a function-level reset. With a proof, the
    /// buffers held so far go back and the requests retired from now on return theirs;
    /// without one, every buffer the device may still write stays held (quarantined).
    fn stop_dma(&self, disabled: bool) {
        let proof = if disabled {
            Some(DmaStopped::ControllerDisabled)
        } else if self.dev.set_bus_master(false).is_ok() {
            Some(DmaStopped::BusMasterCleared)
        } else if self.dev.reset().is_ok() {
            Some(DmaStopped::FunctionReset)
        } else {
            None
        };
        if let Some(p) = proof {
            self.quarantine.proven(p);
        }
    }

    /// The system wants the device back (hot unplug), or its registers keep reading all
    /// ones: stop its DMA (CC.EN = 0, and if that is not confirmed, bus mastering off or a
    /// function reset), declare it gone so every request fails fast, and let the owner drop
    /// it. A disable that fails proves nothing: the buffers of the requests it held are
    /// then held, not handed back (see [`crate::completion::Quarantine`]).
    pub(crate) fn release_for_removal(&self) {
        let Ok(_admin) = lock_admin(self) else { return };
        if self.state.load(Ordering::Acquire) != LIVE {
            return;
        }
        let e = self.begin_epoch();
        let disabled = disable(self.dev.bar0(), self.ready_limit).is_ok();
        self.stop_dma(disabled);
        self.state.store(GONE, Ordering::Release);
        self.settle(e);
    }

    /// Resets the controller unless someone already did since `seen` (the caller's epoch).
    /// Queue pairs do not wait for it: a doorbell is never blocked by it for longer than
    /// another queue pair's one MMIO write, and each queue pair adopts the reset once it has
    /// settled.
    pub(crate) fn reset(&self, seen: u64) -> Result<(), Error> {
        let mut admin = lock_admin(self)?;
        if self.epoch.load(Ordering::Acquire) != seen {
            return self.check_live();
        }
        self.check_live()?;
        let e = self.begin_epoch();
        let bar = self.dev.bar0();
        let mut attempt = || {
            disable(bar, self.ready_limit).map_err(|e| e.at(Stage::Disable))?;
            admin.reset();
            enable(bar, &admin, self.admin_size, self.page, self.ready_limit)
                .map_err(|e| e.at(Stage::Enable))?;
            let granted =
                set_number_of_queues(bar, &mut admin, self.info.io_queues, self.admin_timeout)
                    .map_err(|e| e.at(Stage::SetNumberOfQueues))?;
            if granted < self.info.io_queues {
                return Err(Error::Nonsense(Nonsense::FewerQueuesAfterReset {
                    granted,
                    before: self.info.io_queues,
                })
                .at(Stage::SetNumberOfQueues));
            }
            // The controller forgot its shadow doorbells. No doorbell of the old epoch can
            // still be written (the gate closed before the disable: `ring.rs`), so the pages
            // can be zeroed for the new queues before the controller is told of them again.
            if let Some(sh) = &self.shadow {
                sh.clear();
                config_shadow_doorbells(bar, &mut admin, sh, self.admin_timeout)
                    .map_err(|e| e.at(Stage::DoorbellBufferConfig))?;
            }
            // Features go back to their defaults in a reset: program coalescing again.
            if let Some(c) = self.info.coalescing {
                set_coalescing(bar, &mut admin, c, self.admin_timeout)
                    .map_err(|e| e.at(Stage::InterruptCoalescing))?;
            }
            // The controller forgot its AERs and its event configuration.
            crate::events::arm_events(bar, &mut admin, &self.info.identify, self.admin_timeout);
            Ok(())
        };
        // A controller can wedge in its reset (CSTS.CFS after CC.EN = 1, or RDY never
        // comes) and come back from the next one: try again, from the disable, before it
        // is declared dead. A device that is gone, or a disable that never completes, is
        // not retried (the second wait would only double the time to fail).
        let mut result = attempt();
        for _ in 1..RESET_ATTEMPTS {
            match &result {
                Err(Error::BringUp {
                    stage: Stage::Enable | Stage::SetNumberOfQueues,
                    source,
                }) if !matches!(**source, Error::DeviceGone { .. }) => result = attempt(),
                _ => break,
            }
        }
        if let Err(e) = &result {
            let gone = matches!(e, Error::BringUp { source, .. } if matches!(**source, Error::DeviceGone { .. }));
            // Whatever step failed, the controller may be running again (or never stopped):
            // prove DMA stopped before the state that retires requests is published.
            self.stop_dma(false);
            self.state
                .store(if gone { GONE } else { DEAD }, Ordering::Release);
        } else {
            self.resets.fetch_add(1, Ordering::Relaxed);
        }
        self.settle(e);
        result
    }

    /// Deletes an I/O queue pair's SQ then CQ and gives its qid back. Returns true if the
    /// controller confirmed both deletions (or is dead or gone and DMA was proven stopped).
    pub(crate) fn delete_qpair(&self, q: Qid) -> bool {
        let state = self.state.load(Ordering::Acquire);
        let mut deleted = state != LIVE && self.quarantine.proof().is_some();
        if state == LIVE
            && let Ok(mut admin) = lock_admin(self)
        {
            let bar = self.dev.bar0();
            // "No such queue" counts as deleted: a queue pair whose queues could not be
            // re-created after a reset has none there.
            let sq = admin.execute(bar, DeleteIoSq::new(q).build(), self.admin_timeout);
            let cq = admin.execute(bar, DeleteIoCq::new(q).build(), self.admin_timeout);
            deleted = no_longer_held(&sq) && no_longer_held(&cq);
        }
        if deleted && let Ok(mut f) = self.free_qids.lock() {
            // A queue the controller may still hold is never handed out again.
            f.push(q.0);
        }
        deleted
    }

    /// Returns a qid whose queues the controller no longer has (a reset dropped them).
    pub(crate) fn give_back_qid(&self, q: Qid) {
        if let Ok(mut f) = self.free_qids.lock() {
            f.push(q.0);
        }
    }

    /// Sends an Abort for `cid` on `sqid` and returns at once: true if it was sent. The I/O
    /// thread that calls this never waits on the admin queue: if another thread holds it
    /// (a reset, a queue creation waiting for its answer), the Abort is not sent, and the
    /// command's grace period runs out into a reset as if the controller had declined.
    pub(crate) fn send_abort(&self, sqid: Qid, cid: u16) -> bool {
        let Ok(mut admin) = self.admin.try_lock() else {
            return false;
        };
        admin.send(
            self.dev.bar0(),
            nvme_dio_queue::cmd::Abort::new(sqid, nvme_dio_queue::Cid(cid)).build(),
        )
    }

    /// Orderly shutdown: CC.SHN = normal, wait for CSTS.SHST = complete (bounded).
    fn shutdown(&self) {
        if self.state.load(Ordering::Acquire) != LIVE {
            return;
        }
        let bar = self.dev.bar0();
        let Ok(cc) = read32(bar, regs::CC) else {
            return;
        };
        bar.write32(regs::CC, Cc(cc).with_shn(shn::NORMAL).0);
        let start = Instant::now();
        while start.elapsed() < self.info.shutdown_timeout {
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
        if self.state.load(Ordering::Acquire) != LIVE && self.quarantine.proof().is_none() {
            // A dead or gone controller whose DMA was never proven stopped may still write
            // its admin rings: they are never freed.
            self.admin
                .get_mut()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .leak();
        }
    }
}

impl<D: PciFunction> Drop for IoQueuePair<D> {
    fn drop(&mut self) {
        // Deleting the SQ makes the controller abort whatever it still holds; only then may
        // the rings, list pages and in-flight buffers be freed. If the controller does not
        // confirm the deletion it may still write them: every buffer of every request in
        // flight (split parents' too: the core retires a split parent with its buffers) is
        // held in the quarantine, and the rings and list pages are never freed.
        // Requests still in flight are not delivered (there is no one left to deliver them
        // to); completions already delivered and not taken are dropped normally.
        while self.core.next_delivery().is_some() {}
        let s = &*self.shared;
        let e = s.epoch.load(Ordering::Acquire);
        while !s.is_settled(e) {
            std::thread::sleep(Duration::from_micros(100));
        }
        let state = s.state.load(Ordering::Acquire);
        let stopped = state == LIVE || s.quarantine.proof().is_some();
        let deleted = if e != self.core.epoch() && stopped {
            // A reset (or the release for removal) disabled the controller since these
            // queues were created, and DMA was proven stopped: they no longer exist there,
            // and nothing of ours can be written any more.
            s.give_back_qid(self.core.qid());
            true
        } else {
            s.delete_qpair(self.core.qid())
        };
        self.core.on_teardown(Teardown::Deleted, self.core.epoch());
        while let Some(mut d) = self.core.next_delivery() {
            if !deleted && self.quarantine.hold(&mut d.bufs) {
                self.counters.held += 1;
            }
        }
        if !deleted {
            self.lists.leak();
            self.sq.leak();
            self.cq.leak();
        }
    }
}
