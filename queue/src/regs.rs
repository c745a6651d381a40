//! Controller registers in BAR0 (NVMe Base 2.0, 3.1.4): offsets and bit-field newtypes.

use core::time::Duration;

use crate::types::{PageSize, Qid, QueueSize};

/// Controller Capabilities (64 bit).
pub const CAP: usize = 0x00;
/// Version (32 bit).
pub const VS: usize = 0x08;
/// Interrupt Mask Set (32 bit).
pub const INTMS: usize = 0x0c;
/// Interrupt Mask Clear (32 bit).
pub const INTMC: usize = 0x10;
/// Controller Configuration (32 bit).
pub const CC: usize = 0x14;
/// Controller Status (32 bit).
pub const CSTS: usize = 0x1c;
/// NVM Subsystem Reset (32 bit).
pub const NSSR: usize = 0x20;
/// Admin Queue Attributes (32 bit).
pub const AQA: usize = 0x24;
/// Admin Submission Queue Base Address (64 bit).
pub const ASQ: usize = 0x28;
/// Admin Completion Queue Base Address (64 bit).
pub const ACQ: usize = 0x30;
/// First doorbell (SQ 0 tail).
pub const DOORBELL_BASE: usize = 0x1000;
/// CRTO: Controller Ready Timeouts (NVMe 2.0, 3.1.4.22), present when CAP.CRMS is not 0.
pub const CRTO: usize = 0x68;

/// Offset of the SQ `qid` tail doorbell for doorbell stride `dstrd` (CAP.DSTRD).
#[inline]
pub const fn sq_tail_doorbell(qid: Qid, dstrd: u8) -> usize {
    DOORBELL_BASE + (2 * qid.0 as usize) * (4 << dstrd)
}

/// Offset of the CQ `qid` head doorbell for doorbell stride `dstrd` (CAP.DSTRD).
#[inline]
pub const fn cq_head_doorbell(qid: Qid, dstrd: u8) -> usize {
    DOORBELL_BASE + (2 * qid.0 as usize + 1) * (4 << dstrd)
}

/// CAP: Controller Capabilities (3.1.4.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cap(pub u64);

impl Cap {
    /// Maximum Queue Entries Supported, as a real count.
    pub fn mqes(self) -> QueueSize {
        // MQES is zero-based and at least 1 by the spec; a controller reporting 0 gets the
        // minimum so the driver can report it instead of underflowing.
        QueueSize::from_zero_based((self.0 & 0xffff) as u16)
            .unwrap_or(QueueSize::new(2).expect("2 is a valid queue size"))
    }
    /// Raw MQES field (zero-based), for diagnostics.
    pub fn mqes_raw(self) -> u16 {
        (self.0 & 0xffff) as u16
    }
    /// Contiguous Queues Required.
    pub fn cqr(self) -> bool {
        self.0 >> 16 & 1 != 0
    }
    /// Timeout: worst-case time to wait for CSTS.RDY to change (TO is in 500 ms units).
    pub fn timeout(self) -> Duration {
        Duration::from_millis(((self.0 >> 24) & 0xff) * 500)
    }
    /// Doorbell Stride (the stride is `4 << dstrd` bytes).
    pub fn dstrd(self) -> u8 {
        ((self.0 >> 32) & 0xf) as u8
    }
    /// NVM Subsystem Reset Supported.
    pub fn nssrs(self) -> bool {
        self.0 >> 36 & 1 != 0
    }
    /// Command Sets Supported includes the NVM command set (CSS bit 0).
    pub fn css_nvm(self) -> bool {
        self.0 >> 37 & 1 != 0
    }
    /// Command Sets Supported: "no I/O command set" (CSS bit 7).
    pub fn css_admin_only(self) -> bool {
        self.0 >> 44 & 1 != 0
    }
    /// Memory Page Size Minimum.
    pub fn mpsmin(self) -> Option<PageSize> {
        PageSize::from_mps(((self.0 >> 48) & 0xf) as u8)
    }
    /// Memory Page Size Maximum.
    pub fn mpsmax(self) -> Option<PageSize> {
        PageSize::from_mps(((self.0 >> 52) & 0xf) as u8)
    }
    /// Controller Memory Buffer Supported.
    pub fn cmbs(self) -> bool {
        self.0 >> 57 & 1 != 0
    }
    /// Controller Ready With Media Support (CAP.CRMS.CRWMS, bit 59, NVMe 2.0): the CRTO
    /// register is there, and its CRWMT is the time to wait for CSTS.RDY (with CC.CRIME = 0,
    /// as this driver leaves it) instead of CAP.TO.
    pub fn crwms(self) -> bool {
        self.0 >> 59 & 1 != 0
    }
    /// Controller Ready Independent of Media Support (CAP.CRMS.CRIMS, bit 60).
    pub fn crims(self) -> bool {
        self.0 >> 60 & 1 != 0
    }
}

/// CRTO: Controller Ready Timeouts (NVMe 2.0, 3.1.4.22), both in 500 ms units.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Crto(pub u32);

impl Crto {
    /// Controller Ready With Media Timeout (bits 15:0): the wait for CSTS.RDY = 1 when
    /// CC.CRIME = 0.
    pub fn ready_with_media(self) -> Duration {
        Duration::from_millis((self.0 & 0xffff) as u64 * 500)
    }
    /// Controller Ready Independent of Media Timeout (bits 31:16).
    pub fn ready_independent_of_media(self) -> Duration {
        Duration::from_millis((self.0 >> 16) as u64 * 500)
    }
}

/// VS: Version (3.1.4.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Version(pub u32);

impl Version {
    /// Major version.
    pub fn major(self) -> u16 {
        (self.0 >> 16) as u16
    }
    /// Minor version.
    pub fn minor(self) -> u8 {
        (self.0 >> 8) as u8
    }
    /// Tertiary version.
    pub fn tertiary(self) -> u8 {
        self.0 as u8
    }
}

impl core::fmt::Display for Version {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{}.{}.{}", self.major(), self.minor(), self.tertiary())
    }
}

/// CC: Controller Configuration (3.1.4.5).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cc(pub u32);

/// CC.SHN values.
pub mod shn {
    /// No notification.
    pub const NONE: u8 = 0;
    /// Normal shutdown.
    pub const NORMAL: u8 = 1;
    /// Abrupt shutdown.
    pub const ABRUPT: u8 = 2;
}

impl Cc {
    /// Enable.
    pub fn en(self) -> bool {
        self.0 & 1 != 0
    }
    /// With Enable set or cleared.
    pub fn with_en(self, en: bool) -> Cc {
        Cc((self.0 & !1) | en as u32)
    }
    /// I/O Command Set Selected (0 = NVM).
    pub fn css(self) -> u8 {
        ((self.0 >> 4) & 0x7) as u8
    }
    /// With I/O Command Set Selected.
    pub fn with_css(self, css: u8) -> Cc {
        Cc((self.0 & !(0x7 << 4)) | (css as u32 & 0x7) << 4)
    }
    /// Memory Page Size.
    pub fn mps(self) -> Option<PageSize> {
        PageSize::from_mps(((self.0 >> 7) & 0xf) as u8)
    }
    /// With Memory Page Size.
    pub fn with_mps(self, page: PageSize) -> Cc {
        Cc((self.0 & !(0xf << 7)) | (page.mps() as u32) << 7)
    }
    /// Arbitration Mechanism Selected (0 = round robin).
    pub fn ams(self) -> u8 {
        ((self.0 >> 11) & 0x7) as u8
    }
    /// Shutdown Notification.
    pub fn shn(self) -> u8 {
        ((self.0 >> 14) & 0x3) as u8
    }
    /// With Shutdown Notification.
    pub fn with_shn(self, shn: u8) -> Cc {
        Cc((self.0 & !(0x3 << 14)) | (shn as u32 & 0x3) << 14)
    }
    /// I/O Submission Queue Entry Size, log2 bytes.
    pub fn iosqes(self) -> u8 {
        ((self.0 >> 16) & 0xf) as u8
    }
    /// With I/O Submission Queue Entry Size (log2; 6 for 64-byte entries).
    pub fn with_iosqes(self, log2: u8) -> Cc {
        Cc((self.0 & !(0xf << 16)) | (log2 as u32 & 0xf) << 16)
    }
    /// I/O Completion Queue Entry Size, log2 bytes.
    pub fn iocqes(self) -> u8 {
        ((self.0 >> 20) & 0xf) as u8
    }
    /// With I/O Completion Queue Entry Size (log2; 4 for 16-byte entries).
    pub fn with_iocqes(self, log2: u8) -> Cc {
        Cc((self.0 & !(0xf << 20)) | (log2 as u32 & 0xf) << 20)
    }
}

/// CSTS: Controller Status (3.1.4.6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Csts(pub u32);

/// CSTS.SHST values.
pub mod shst {
    /// Normal operation.
    pub const NORMAL: u8 = 0;
    /// Shutdown processing occurring.
    pub const OCCURRING: u8 = 1;
    /// Shutdown processing complete.
    pub const COMPLETE: u8 = 2;
}

impl Csts {
    /// Ready.
    pub fn rdy(self) -> bool {
        self.0 & 1 != 0
    }
    /// Controller Fatal Status.
    pub fn cfs(self) -> bool {
        self.0 >> 1 & 1 != 0
    }
    /// Shutdown Status.
    pub fn shst(self) -> u8 {
        ((self.0 >> 2) & 0x3) as u8
    }
    /// NVM Subsystem Reset Occurred.
    pub fn nssro(self) -> bool {
        self.0 >> 4 & 1 != 0
    }
    /// Processing Paused.
    pub fn pp(self) -> bool {
        self.0 >> 5 & 1 != 0
    }
}

/// AQA: Admin Queue Attributes (3.1.4.8).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Aqa {
    /// Admin Submission Queue Size.
    pub asqs: QueueSize,
    /// Admin Completion Queue Size.
    pub acqs: QueueSize,
}

impl Aqa {
    /// The register value (both sizes zero-based, 12 bits each).
    pub fn to_u32(self) -> u32 {
        (self.asqs.zero_based() as u32 & 0xfff) | (self.acqs.zero_based() as u32 & 0xfff) << 16
    }
    /// Decodes the register (for the emulated controller).
    pub fn from_u32(v: u32) -> Option<Aqa> {
        Some(Aqa {
            asqs: QueueSize::from_zero_based((v & 0xfff) as u16)?,
            acqs: QueueSize::from_zero_based(((v >> 16) & 0xfff) as u16)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_decodes_qemus_value() {
        // QEMU 7.2 reports CAP 0x004018200f0107ff (read through VFIO in the QEMU guest).
        let cap = Cap(0x0040_1820_0f01_07ff);
        assert_eq!(cap.mqes().entries(), 2048);
        assert!(cap.cqr());
        assert_eq!(cap.timeout(), Duration::from_millis(7500));
        assert_eq!(cap.dstrd(), 0);
        assert!(cap.css_nvm());
        assert_eq!(cap.mpsmin(), Some(PageSize::SIZE_4K));
        assert_eq!(cap.mpsmax(), PageSize::new(64 << 10));
    }

    #[test]
    fn cc_fields_encode_where_the_spec_puts_them() {
        let cc = Cc::default()
            .with_en(true)
            .with_mps(PageSize::SIZE_4K)
            .with_iosqes(6)
            .with_iocqes(4);
        assert_eq!(cc.0, 0x0046_0001);
        assert_eq!(cc.with_shn(shn::NORMAL).0, 0x0046_4001);
        assert_eq!((cc.iosqes(), cc.iocqes(), cc.css(), cc.ams()), (6, 4, 0, 0));
    }

    #[test]
    fn csts_and_aqa() {
        let csts = Csts(0b1011);
        assert!(csts.rdy() && csts.cfs());
        assert_eq!(csts.shst(), shst::COMPLETE);
        let aqa = Aqa {
            asqs: QueueSize::new(32).unwrap(),
            acqs: QueueSize::new(64).unwrap(),
        };
        assert_eq!(aqa.to_u32(), 0x003f_001f);
        assert_eq!(Aqa::from_u32(aqa.to_u32()), Some(aqa));
    }

    #[test]
    fn doorbells_follow_the_stride() {
        assert_eq!(sq_tail_doorbell(Qid(0), 0), 0x1000);
        assert_eq!(cq_head_doorbell(Qid(0), 0), 0x1004);
        assert_eq!(sq_tail_doorbell(Qid(3), 0), 0x1018);
        assert_eq!(cq_head_doorbell(Qid(1), 2), 0x1000 + 3 * 16);
    }
}
