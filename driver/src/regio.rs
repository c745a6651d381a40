//! Register access for bring-up and recovery: 32-bit reads that turn all ones into an error,
//! CAP and the admin queue addresses as two 32-bit accesses, enable and disable with their
//! waits, and the admin commands that create queues.

use std::time::{Duration, Instant};

use nvme_dio_dma::Bar0;
use nvme_dio_queue::cmd::{
    CreateIoCq, CreateIoSq, DeleteIoCq, DeleteIoSq, NumberOfQueues, SetFeatures,
};
use nvme_dio_queue::regs::{self, Aqa, Cap, Cc, Crto, Csts};
use nvme_dio_queue::{Iova, PageSize, Qid, QueueSize};

use crate::admin::AdminQueue;
use crate::error::Error;

/// Reads a 32-bit register, turning all ones into [`Error::DeviceGone`] once it is
/// confirmed: a single all-ones read is not a removal (it happens for a moment during link
/// retraining and AER/DPC recovery), so the register is read again, up to
/// [`ALL_ONES_REREADS`] times 1 ms apart, before the device is believed gone.
pub(crate) fn read32<B: Bar0>(bar: &B, reg: usize) -> Result<u32, Error> {
    let v = bar.read32(reg);
    if v != u32::MAX {
        return Ok(v);
    }
    for _ in 0..ALL_ONES_REREADS {
        std::thread::sleep(Duration::from_millis(1));
        let v = bar.read32(reg);
        if v != u32::MAX {
            return Ok(v);
        }
    }
    Err(Error::DeviceGone { register: reg })
}

/// Extra reads of a register that read all ones before the device is declared gone.
pub(crate) const ALL_ONES_REREADS: u32 = 3;

/// CAP as two 32-bit reads, low dword first, as Linux does: a 64-bit MMIO read may be split
/// or refused on some platforms, and the spec only promises 32-bit access. All ones in both
/// halves is a device that is gone.
pub(crate) fn read_cap<B: Bar0>(bar: &B) -> u64 {
    let lo = bar.read32(regs::CAP) as u64;
    let hi = bar.read32(regs::CAP + 4) as u64;
    hi << 32 | lo
}

/// How long to wait for CSTS.RDY to change: CAP.TO, or, where the controller reports
/// Controller Ready Timeouts (NVMe 2.0 CAP.CRMS.CRWMS), CRTO.CRWMT if that is longer (this
/// driver leaves CC.CRIME = 0, so the ready-with-media timeout applies). Never under 500 ms.
pub(crate) fn ready_timeout<B: Bar0>(bar: &B, cap: Cap) -> Duration {
    let mut limit = cap.timeout();
    if cap.crwms()
        && let Ok(v) = read32(bar, regs::CRTO)
    {
        limit = limit.max(Crto(v).ready_with_media());
    }
    limit.max(Duration::from_millis(500))
}

/// How long an orderly shutdown may take: RTD3E (Identify Controller, microseconds) where
/// the controller reports it, else CAP.TO; clamped to 1..=60 s as Linux does.
pub(crate) fn shutdown_timeout(rtd3e_us: u32, cap: Cap) -> Duration {
    let t = if rtd3e_us == 0 {
        cap.timeout()
    } else {
        Duration::from_micros(rtd3e_us as u64)
    };
    t.clamp(Duration::from_secs(1), Duration::from_secs(60))
}

/// A 64-bit address register (ASQ, ACQ) as two 32-bit writes, low dword first.
pub(crate) fn write_addr<B: Bar0>(bar: &B, reg: usize, value: u64) {
    bar.write32(reg, value as u32);
    bar.write32(reg + 4, (value >> 32) as u32);
}

pub(crate) fn wait_ready<B: Bar0>(bar: &B, want: bool, limit: Duration) -> Result<(), Error> {
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

/// Clears CC.EN and waits for CSTS.RDY = 0: the controller drops every queue and stops DMA.
pub(crate) fn disable<B: Bar0>(bar: &B, limit: Duration) -> Result<(), Error> {
    let cc = Cc(read32(bar, regs::CC)?);
    if cc.en() {
        bar.write32(regs::CC, cc.with_en(false).0);
    }
    wait_ready(bar, false, limit)
}

/// Programs the admin queue and sets CC.EN, then waits for CSTS.RDY = 1.
pub(crate) fn enable<B: Bar0>(
    bar: &B,
    admin: &AdminQueue,
    size: QueueSize,
    page: PageSize,
    limit: Duration,
) -> Result<(), Error> {
    bar.write32(
        regs::AQA,
        Aqa {
            asqs: size,
            acqs: size,
        }
        .to_u32(),
    );
    write_addr(bar, regs::ASQ, admin.sq_iova());
    write_addr(bar, regs::ACQ, admin.cq_iova());
    let cc = Cc::default()
        .with_css(0)
        .with_mps(page)
        .with_iosqes(6)
        .with_iocqes(4);
    // The fields first, with EN = 0, then EN: a controller may latch CC's fields at the
    // write that sets EN, and the spec only promises they are taken while EN is 0 (Linux
    // writes them the same way).
    bar.write32(regs::CC, cc.with_en(false).0);
    bar.write32(regs::CC, cc.with_en(true).0);
    wait_ready(bar, true, limit)
}

/// Asks for `want` I/O queue pairs; returns how many the controller granted.
pub(crate) fn set_number_of_queues<B: Bar0>(
    bar: &B,
    admin: &mut AdminQueue,
    want: u16,
    timeout: Duration,
) -> Result<u16, Error> {
    let cqe = admin.execute(
        bar,
        SetFeatures::number_of_queues(want, want).build(),
        timeout,
    )?;
    let (nsq, ncq) = NumberOfQueues::from_result(cqe.result);
    Ok(nsq.min(ncq).min(want))
}

/// Programs interrupt coalescing (Set Features 08h).
pub(crate) fn set_coalescing<B: Bar0>(
    bar: &B,
    admin: &mut AdminQueue,
    c: crate::options::Coalescing,
    timeout: Duration,
) -> Result<(), Error> {
    let sqe = SetFeatures::interrupt_coalescing(c.threshold, c.time_100us).build();
    match admin.execute(bar, sqe, timeout) {
        Ok(_) => Ok(()),
        // The controller answered: it does not do it (QEMU 7.2: Feature Not Changeable).
        Err(Error::Command { status, .. }) => Err(Error::NotSupported(
            crate::error::Feature::InterruptCoalescing { status },
        )),
        Err(e) => Err(e),
    }
}

/// Doorbell Buffer Config: the controller reads I/O queue doorbells from `shadow`'s first
/// page and writes EventIdx to its second (see `ring.rs`).
pub(crate) fn config_shadow_doorbells<B: Bar0>(
    bar: &B,
    admin: &mut AdminQueue,
    shadow: &crate::ring::ShadowDoorbells,
    timeout: Duration,
) -> Result<(), Error> {
    use nvme_dio_queue::Iova;
    use nvme_dio_queue::cmd::DoorbellBufferConfig;
    let sqe =
        DoorbellBufferConfig::new(Iova(shadow.shadow_iova()), Iova(shadow.eventidx_iova())).build();
    admin.execute(bar, sqe, timeout).map(|_| ())
}

/// A queue deletion's result: true if the controller no longer has the queue (deleted, or
/// it says there is no such queue: Invalid Queue Identifier).
pub(crate) fn no_longer_held(r: &Result<nvme_dio_queue::Cqe, Error>) -> bool {
    use nvme_dio_queue::status::{csc, sct};
    match r {
        Ok(_) => true,
        Err(Error::Command { status, .. }) => {
            status.sct() == sct::COMMAND_SPECIFIC && status.sc() == csc::INVALID_QID
        }
        Err(_) => false,
    }
}

/// Why creating I/O queues failed, and whether the controller may still hold them.
#[derive(Debug)]
pub(crate) struct CreateFailed {
    pub(crate) error: Error,
    /// The controller may have created a queue (a create timed out and the cleanup delete
    /// was not confirmed): the qid must not be handed out, and the rings' memory must not
    /// be freed, until a reset has dropped every queue.
    pub(crate) maybe_held: bool,
}

/// Creates I/O CQ `q` then SQ `q`. On failure the queues are deleted again: a create that
/// timed out may still complete (the controller created the queue, late), so a queue ID is
/// only given back once the controller confirmed it no longer holds either queue.
pub(crate) fn create_io_queues<B: Bar0>(
    bar: &B,
    admin: &mut AdminQueue,
    q: Qid,
    size: QueueSize,
    (sq, cq): (u64, u64),
    vector: Option<u16>,
    timeout: Duration,
) -> Result<(), CreateFailed> {
    let cleanup = |admin: &mut AdminQueue, error: Error, sq_too: bool| {
        // A refusal (a status) created nothing; anything else (a timeout) may have.
        let created_maybe = !matches!(error, Error::Command { .. });
        let mut held = false;
        if sq_too && created_maybe {
            held |= !no_longer_held(&admin.execute(bar, DeleteIoSq::new(q).build(), timeout));
        }
        let cq_gone = no_longer_held(&admin.execute(bar, DeleteIoCq::new(q).build(), timeout));
        held |= !cq_gone;
        CreateFailed {
            error,
            maybe_held: held,
        }
    };
    if let Err(e) = admin.execute(
        bar,
        CreateIoCq::new(q, size, Iova(cq))
            .interrupt_vector(vector)
            .build(),
        timeout,
    ) {
        if matches!(e, Error::Command { .. }) {
            return Err(CreateFailed {
                error: e,
                maybe_held: false,
            });
        }
        return Err(cleanup(admin, e, false));
    }
    if let Err(e) = admin.execute(bar, CreateIoSq::new(q, size, Iova(sq), q).build(), timeout) {
        return Err(cleanup(admin, e, true));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shutdown_timeout_is_rtd3e_clamped_else_cap_to() {
        let cap = Cap(10 << 24); // TO = 5 s
        assert_eq!(shutdown_timeout(0, cap), Duration::from_secs(5));
        assert_eq!(shutdown_timeout(8_000_000, cap), Duration::from_secs(8));
        assert_eq!(shutdown_timeout(10, cap), Duration::from_secs(1));
        assert_eq!(shutdown_timeout(u32::MAX, cap), Duration::from_secs(60));
    }
}
