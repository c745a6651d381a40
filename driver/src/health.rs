//! Health and logs: the SMART / Health, Error Information and Firmware Slot log pages as
//! typed structures ([`nvme_dio_queue::log`]), and Get Features. Admin commands, for a
//! monitoring thread or a tool (`nvme-dio smart-log`, `error-log`, `get-feature`); never on
//! the I/O path.

use nvme_dio_dma::PciFunction;
use nvme_dio_queue::Nsid;
use nvme_dio_queue::cmd::{GetFeatures, GetLogPage, SetFeatures};
pub use nvme_dio_queue::log::{
    COMMON_FEATURES, CriticalWarning, ErrorLogEntry, FirmwareSlotLog, LogError, SmartLog,
    decode_feature, feature_name,
};

use crate::controller::Controller;
use crate::error::{Error, Nonsense};
use crate::recovery::lock_admin;

impl<D: PciFunction> Controller<D> {
    /// Reads log page `page` (at most 4 KiB: one data page, no PRP list).
    fn read_log(&self, page: GetLogPage) -> Result<Vec<u8>, Error> {
        let s = self.shared();
        s.check_live()?;
        let len = page.len_bytes() as usize;
        debug_assert!(len <= 4096);
        let buf = s.mem.alloc(4096, s.page.bytes())?;
        let mut admin = lock_admin(s)?;
        admin.execute_with_buf(s.dev.bar0(), |d| page.build(d), &buf, s.admin_timeout)?;
        drop(admin);
        let mut out = vec![0u8; len];
        buf.copy_to_slice(0, &mut out)?;
        Ok(out)
    }

    /// The controller's SMART / Health Information log (controller wide, NSID FFFFFFFFh).
    ///
    /// # Errors
    ///
    /// The controller is not live, or the Get Log Page failed.
    pub fn smart_log(&self) -> Result<SmartLog, Error> {
        let raw = self.read_log(GetLogPage::smart_health())?;
        SmartLog::from_bytes(&raw).map_err(|e| Error::Nonsense(Nonsense::Log(e)))
    }

    /// The Error Information log entries in use, newest first: at most `entries`, and at
    /// most what the controller keeps (ELPE + 1, up to 64 here).
    ///
    /// # Errors
    ///
    /// The controller is not live, or the Get Log Page failed.
    pub fn error_log(&self, entries: u32) -> Result<Vec<ErrorLogEntry>, Error> {
        let kept = self.info().identify.elpe() as u32 + 1;
        let n = entries.clamp(1, kept.min(64));
        let raw = self.read_log(GetLogPage::error_information(n))?;
        ErrorLogEntry::parse_page(&raw).map_err(|e| Error::Nonsense(Nonsense::Log(e)))
    }

    /// The Firmware Slot Information log.
    ///
    /// # Errors
    ///
    /// The controller is not live, or the Get Log Page failed.
    pub fn firmware_slot_log(&self) -> Result<FirmwareSlotLog, Error> {
        let raw = self.read_log(GetLogPage::firmware_slot())?;
        FirmwareSlotLog::from_bytes(&raw).map_err(|e| Error::Nonsense(Nonsense::Log(e)))
    }

    /// A log page by identifier, raw (`len` bytes, at most 4 KiB), for pages without a
    /// typed structure here.
    ///
    /// # Errors
    ///
    /// The controller is not live, or the Get Log Page failed.
    pub fn log_page(&self, lid: u8, nsid: Nsid, len: u32) -> Result<Vec<u8>, Error> {
        self.read_log(GetLogPage::new(lid, nsid, len.min(4096)))
    }

    /// The current value of feature `fid` (Get Features, SEL current): the completion's
    /// DW0; decode it with [`decode_feature`].
    ///
    /// # Errors
    ///
    /// The controller is not live, or it refused (Invalid Field for a feature it does not
    /// have).
    pub fn get_feature(&self, fid: u8) -> Result<u32, Error> {
        let s = self.shared();
        s.check_live()?;
        let mut admin = lock_admin(s)?;
        let cqe = admin.execute(s.dev.bar0(), GetFeatures::fid(fid).build(), s.admin_timeout)?;
        Ok(cqe.result)
    }

    /// Sets feature `fid` to `cdw11` (Set Features, not saved across power cycles) and
    /// returns the completion's DW0. For features without a data buffer (temperature
    /// threshold, power management, arbitration...). The driver programs Number of Queues,
    /// Interrupt Coalescing and the event configuration itself: changing those here is
    /// undone by the next reset.
    ///
    /// # Errors
    ///
    /// The controller is not live, or it refused.
    pub fn set_feature(&self, fid: u8, cdw11: u32) -> Result<u32, Error> {
        let s = self.shared();
        s.check_live()?;
        let mut admin = lock_admin(s)?;
        let sqe = SetFeatures::raw(fid, cdw11).build();
        let cqe = admin.execute(s.dev.bar0(), sqe, s.admin_timeout)?;
        Ok(cqe.result)
    }
}
