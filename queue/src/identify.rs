//! Identify data structures (NVMe Base 2.0, 5.17.2; Identify Controller is Figure 275,
//! Identify Namespace for the NVM command set is NVM Command Set 1.0 Figure 97).
//!
//! Each page is a 4096-byte newtype over the raw bytes, with accessors that read the spec's
//! byte offsets (little endian) and `set_*` methods that write them, so the emulated
//! controller and the tests build pages with the same offsets the driver parses.

use core::fmt;

use crate::regs::Version;
use crate::types::{Nsid, PageSize};

mod fields;
pub use fields::{
    CONTROLLER_FIELDS, FieldDef, FieldKind, FieldValue, NAMESPACE_FIELDS, PowerState,
    relative_performance_name,
};

/// Size of every Identify data structure.
pub const IDENTIFY_LEN: usize = 4096;

/// A page handed to a parser had the wrong size.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentifyError {
    /// The buffer is not exactly 4096 bytes.
    #[error(
        "identify data is {len} bytes, expected {expected}: pass the whole 4 KiB page the controller wrote"
    )]
    WrongLength {
        /// Length given.
        len: usize,
        /// Length required.
        expected: usize,
    },
}

fn page_from(bytes: &[u8]) -> Result<[u8; IDENTIFY_LEN], IdentifyError> {
    bytes.try_into().map_err(|_| IdentifyError::WrongLength {
        len: bytes.len(),
        expected: IDENTIFY_LEN,
    })
}

macro_rules! le_field {
    ($get:ident, $set:ident, $ty:ty, $off:expr, $doc:literal) => {
        #[doc = $doc]
        #[inline]
        pub fn $get(&self) -> $ty {
            const N: usize = core::mem::size_of::<$ty>();
            let mut b = [0u8; N];
            b.copy_from_slice(&self.0[$off..$off + N]);
            <$ty>::from_le_bytes(b)
        }

        #[doc = concat!("Writes the field read by [`Self::", stringify!($get), "`].")]
        #[inline]
        pub fn $set(&mut self, v: $ty) -> &mut Self {
            const N: usize = core::mem::size_of::<$ty>();
            self.0[$off..$off + N].copy_from_slice(&v.to_le_bytes());
            self
        }
    };
}

/// An ASCII field, right-padded with spaces, trimmed.
fn ascii(b: &[u8]) -> String {
    String::from_utf8_lossy(b)
        .trim_end_matches([' ', '\0'])
        .trim_start()
        .to_string()
}

fn set_ascii(b: &mut [u8], s: &str) {
    b.fill(b' ');
    let n = s.len().min(b.len());
    b[..n].copy_from_slice(&s.as_bytes()[..n]);
}

/// Optional Admin Command Support (OACS), Identify Controller bytes 257:256.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Oacs(pub u16);

impl Oacs {
    /// Bit 8: the controller supports Doorbell Buffer Config (shadow doorbells).
    pub const DOORBELL_BUFFER_CONFIG: u16 = 1 << 8;

    /// Doorbell Buffer Config is supported.
    pub fn doorbell_buffer_config(self) -> bool {
        self.0 & Self::DOORBELL_BUFFER_CONFIG != 0
    }
}

/// Optional NVM Command Support (ONCS), Identify Controller bytes 521:520.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Oncs(pub u16);

impl Oncs {
    /// Bit 2: Dataset Management.
    pub const DATASET_MANAGEMENT: u16 = 1 << 2;
    /// Bit 3: Write Zeroes.
    pub const WRITE_ZEROES: u16 = 1 << 3;
    /// Bit 7: Verify.
    pub const VERIFY: u16 = 1 << 7;
    /// Bit 8: Copy.
    pub const COPY: u16 = 1 << 8;

    /// Verify is supported.
    pub fn verify(self) -> bool {
        self.0 & Self::VERIFY != 0
    }

    /// Copy is supported.
    pub fn copy(self) -> bool {
        self.0 & Self::COPY != 0
    }

    /// Write Zeroes is supported.
    pub fn write_zeroes(self) -> bool {
        self.0 & Self::WRITE_ZEROES != 0
    }

    /// Dataset Management (deallocate / TRIM) is supported.
    pub fn dataset_management(self) -> bool {
        self.0 & Self::DATASET_MANAGEMENT != 0
    }
}

/// Queue entry sizes (SQES / CQES): log2 of bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EntrySizes {
    /// Required (minimum) entry size, log2 (6 for a 64-byte SQE, 4 for a 16-byte CQE).
    pub required: u8,
    /// Maximum entry size, log2.
    pub maximum: u8,
}

impl EntrySizes {
    fn from_raw(b: u8) -> Self {
        EntrySizes {
            required: b & 0xf,
            maximum: b >> 4,
        }
    }

    fn raw(self) -> u8 {
        (self.required & 0xf) | (self.maximum << 4)
    }
}

/// SGL support (SGLS, Identify Controller bytes 539:536, bits 1:0).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SglSupport {
    /// The NVM command set accepts SGLs (SGLS bits 1:0 are 01b or 10b).
    pub supported: bool,
    /// Data blocks must be dword aligned (SGLS bits 1:0 == 10b).
    pub dword_aligned_only: bool,
}

/// Identify Controller data structure (NVMe Base 2.0, Figure 275).
#[derive(Clone, PartialEq, Eq)]
#[repr(C)]
pub struct IdentifyController([u8; IDENTIFY_LEN]);

const _: () = assert!(core::mem::size_of::<IdentifyController>() == IDENTIFY_LEN);

impl Default for IdentifyController {
    fn default() -> Self {
        IdentifyController([0; IDENTIFY_LEN])
    }
}

impl IdentifyController {
    /// An all-zero page to fill with the `set_*` methods (emulator, tests).
    pub fn builder() -> Self {
        Self::default()
    }

    /// Parses the page the controller wrote.
    ///
    /// # Errors
    /// [`IdentifyError::WrongLength`] unless `bytes` is exactly 4096 bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, IdentifyError> {
        page_from(bytes).map(IdentifyController)
    }

    /// The raw page.
    pub fn as_bytes(&self) -> &[u8; IDENTIFY_LEN] {
        &self.0
    }

    le_field!(vid, set_vid, u16, 0, "PCI Vendor ID (bytes 1:0).");
    le_field!(
        ssvid,
        set_ssvid,
        u16,
        2,
        "PCI Subsystem Vendor ID (bytes 3:2)."
    );
    le_field!(
        mdts,
        set_mdts,
        u8,
        77,
        "Maximum Data Transfer Size, raw (byte 77): the limit is `MPSMIN << mdts`, 0 = unlimited."
    );
    le_field!(cntlid, set_cntlid, u16, 78, "Controller ID (bytes 79:78).");
    le_field!(
        ver_raw,
        set_ver,
        u32,
        80,
        "Version (bytes 83:80), raw; see [`Self::ver`]."
    );
    le_field!(
        rtd3e,
        set_rtd3e,
        u32,
        88,
        "RTD3 Entry Latency (bytes 91:88): expected time, in microseconds, from CC.SHN = normal to CSTS.SHST = complete; 0 = not reported."
    );
    le_field!(
        oacs_raw,
        set_oacs,
        u16,
        256,
        "OACS (bytes 257:256), raw; see [`Self::oacs`]."
    );
    le_field!(
        acl_raw,
        set_acl_raw,
        u8,
        258,
        "Abort Command Limit, zero-based (byte 258); see [`Self::acl`]."
    );
    le_field!(
        aerl_raw,
        set_aerl_raw,
        u8,
        259,
        "Async Event Request Limit, zero-based (byte 259); see [`Self::aerl`]."
    );
    le_field!(
        oaes,
        set_oaes,
        u32,
        92,
        "Optional Asynchronous Events Supported (bytes 95:92): bit 8 namespace attribute \
         notices, bit 9 firmware activation notices."
    );
    le_field!(
        frmw,
        set_frmw,
        u8,
        260,
        "Firmware Updates (byte 260): bit 0 slot 1 read only, bits 3:1 slots, bit 4 \
         activation without reset."
    );
    le_field!(
        elpe,
        set_elpe,
        u8,
        262,
        "Error Log Page Entries, zero-based (byte 262)."
    );
    le_field!(
        wctemp,
        set_wctemp,
        u16,
        266,
        "Warning Composite Temperature Threshold, kelvin (bytes 267:266); 0 = not reported."
    );
    le_field!(
        cctemp,
        set_cctemp,
        u16,
        268,
        "Critical Composite Temperature Threshold, kelvin (bytes 269:268); 0 = not reported."
    );
    le_field!(
        maxcmd,
        set_maxcmd,
        u16,
        514,
        "Maximum outstanding commands (bytes 515:514), 0 = not reported."
    );
    le_field!(
        nn,
        set_nn,
        u32,
        516,
        "Number of Namespaces: the largest valid NSID (bytes 519:516)."
    );
    le_field!(
        oncs_raw,
        set_oncs,
        u16,
        520,
        "ONCS (bytes 521:520), raw; see [`Self::oncs`]."
    );
    le_field!(
        vwc_raw,
        set_vwc_raw,
        u8,
        525,
        "Volatile Write Cache (byte 525), raw."
    );
    le_field!(
        awun_raw,
        set_awun_raw,
        u16,
        526,
        "Atomic Write Unit Normal, zero-based blocks (bytes 527:526); see [`Self::awun`]."
    );
    le_field!(
        awupf_raw,
        set_awupf_raw,
        u16,
        528,
        "Atomic Write Unit Power Fail, zero-based blocks (bytes 529:528); see [`Self::awupf`]."
    );
    le_field!(
        ocfs,
        set_ocfs,
        u16,
        534,
        "Optional Copy Formats Supported (bytes 535:534): bit n = source range format n."
    );
    le_field!(
        sgls_raw,
        set_sgls,
        u32,
        536,
        "SGL Support (bytes 539:536), raw; see [`Self::sgls`]."
    );

    /// Serial number (bytes 23:4), trimmed.
    pub fn serial(&self) -> String {
        ascii(&self.0[4..24])
    }

    /// Model number (bytes 63:24), trimmed.
    pub fn model(&self) -> String {
        ascii(&self.0[24..64])
    }

    /// Firmware revision (bytes 71:64), trimmed.
    pub fn firmware(&self) -> String {
        ascii(&self.0[64..72])
    }

    /// Writes the serial number, space padded (truncated at 20 bytes).
    pub fn set_serial(&mut self, s: &str) -> &mut Self {
        set_ascii(&mut self.0[4..24], s);
        self
    }

    /// Writes the model number, space padded (truncated at 40 bytes).
    pub fn set_model(&mut self, s: &str) -> &mut Self {
        set_ascii(&mut self.0[24..64], s);
        self
    }

    /// Writes the firmware revision, space padded (truncated at 8 bytes).
    pub fn set_firmware(&mut self, s: &str) -> &mut Self {
        set_ascii(&mut self.0[64..72], s);
        self
    }

    /// Maximum transfer in bytes given CAP.MPSMIN, or `None` when MDTS is 0 (unlimited).
    /// Saturates at `u64::MAX` for absurd MDTS values.
    pub fn max_transfer_bytes(&self, mpsmin: PageSize) -> Option<u64> {
        match self.mdts() {
            0 => None,
            m => {
                let shift = mpsmin.shift() + m as u32;
                Some(if shift >= 64 { u64::MAX } else { 1u64 << shift })
            }
        }
    }

    /// Version the controller implements.
    pub fn ver(&self) -> Version {
        Version(self.ver_raw())
    }

    /// Optional admin commands.
    pub fn oacs(&self) -> Oacs {
        Oacs(self.oacs_raw())
    }

    /// Abort Command Limit: the real number of concurrent Abort commands (ACL + 1).
    pub fn acl(&self) -> u16 {
        self.acl_raw() as u16 + 1
    }

    /// Writes ACL from a real count (1 ..= 256).
    pub fn set_acl(&mut self, count: u16) -> &mut Self {
        self.set_acl_raw(count.clamp(1, 256).wrapping_sub(1) as u8)
    }

    /// Async Event Request Limit: the real number of outstanding AERs (AERL + 1).
    pub fn aerl(&self) -> u16 {
        self.aerl_raw() as u16 + 1
    }

    /// Writes AERL from a real count (1 ..= 256).
    pub fn set_aerl(&mut self, count: u16) -> &mut Self {
        self.set_aerl_raw(count.clamp(1, 256).wrapping_sub(1) as u8)
    }

    /// Submission queue entry sizes (byte 512).
    pub fn sqes(&self) -> EntrySizes {
        EntrySizes::from_raw(self.0[512])
    }

    /// Completion queue entry sizes (byte 513).
    pub fn cqes(&self) -> EntrySizes {
        EntrySizes::from_raw(self.0[513])
    }

    /// Writes SQES.
    pub fn set_sqes(&mut self, s: EntrySizes) -> &mut Self {
        self.0[512] = s.raw();
        self
    }

    /// Writes CQES.
    pub fn set_cqes(&mut self, s: EntrySizes) -> &mut Self {
        self.0[513] = s.raw();
        self
    }

    /// Optional NVM commands.
    pub fn oncs(&self) -> Oncs {
        Oncs(self.oncs_raw())
    }

    /// A volatile write cache is present (VWC bit 0).
    pub fn vwc_present(&self) -> bool {
        self.vwc_raw() & 1 != 0
    }

    /// Writes VWC bit 0.
    pub fn set_vwc_present(&mut self, present: bool) -> &mut Self {
        let v = (self.vwc_raw() & !1) | present as u8;
        self.set_vwc_raw(v)
    }

    /// Atomic Write Unit Normal: blocks a write may carry and still be atomic with respect
    /// to other commands (a real count, AWUN + 1).
    pub fn awun(&self) -> u32 {
        self.awun_raw() as u32 + 1
    }

    /// Atomic Write Unit Power Fail: blocks a write may carry and still be atomic across a
    /// power failure (a real count, AWUPF + 1).
    pub fn awupf(&self) -> u32 {
        self.awupf_raw() as u32 + 1
    }

    /// SGL support for the NVM command set.
    pub fn sgls(&self) -> SglSupport {
        match self.sgls_raw() & 0b11 {
            0b01 => SglSupport {
                supported: true,
                dword_aligned_only: false,
            },
            0b10 => SglSupport {
                supported: true,
                dword_aligned_only: true,
            },
            // 00b: not supported; 11b: reserved, treated as not supported.
            _ => SglSupport::default(),
        }
    }
}

impl fmt::Debug for IdentifyController {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdentifyController")
            .field("vid", &format_args!("{:#06x}", self.vid()))
            .field("serial", &self.serial())
            .field("model", &self.model())
            .field("firmware", &self.firmware())
            .field("mdts", &self.mdts())
            .field("cntlid", &self.cntlid())
            .field("nn", &self.nn())
            .field("sgls", &self.sgls())
            .finish_non_exhaustive()
    }
}

/// One LBA format (NVM Command Set 1.0, Figure 98).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LbaFormat {
    /// Bytes per block: `2^LBADS`; 0 when LBADS is 0 (format not available) or out of range.
    pub data_size: u32,
    /// Metadata bytes per block (MS).
    pub metadata_size: u16,
    /// Relative Performance (RP, bits 25:24): 0 best .. 3 degraded.
    pub relative_performance: u8,
}

impl LbaFormat {
    fn from_raw(v: u32) -> Self {
        let lbads = (v >> 16) & 0xff;
        LbaFormat {
            data_size: if (1..32).contains(&lbads) {
                1 << lbads
            } else {
                0
            },
            metadata_size: v as u16,
            relative_performance: ((v >> 24) & 0b11) as u8,
        }
    }

    fn raw(self) -> u32 {
        let lbads = if self.data_size == 0 {
            0
        } else {
            self.data_size.trailing_zeros()
        };
        self.metadata_size as u32 | lbads << 16 | ((self.relative_performance as u32) & 0b11) << 24
    }
}

/// Maximum number of LBA formats (NLBAF is zero-based, at most 63).
pub const MAX_LBA_FORMATS: usize = 64;

/// Identify Namespace data structure, NVM command set (NVM Command Set 1.0, Figure 97).
#[derive(Clone, PartialEq, Eq)]
#[repr(C)]
pub struct IdentifyNamespace([u8; IDENTIFY_LEN]);

const _: () = assert!(core::mem::size_of::<IdentifyNamespace>() == IDENTIFY_LEN);

impl Default for IdentifyNamespace {
    fn default() -> Self {
        IdentifyNamespace([0; IDENTIFY_LEN])
    }
}

impl IdentifyNamespace {
    const LBAF_OFFSET: usize = 128;

    /// An all-zero page to fill with the `set_*` methods (emulator, tests).
    pub fn builder() -> Self {
        Self::default()
    }

    /// Parses the page the controller wrote.
    ///
    /// # Errors
    /// [`IdentifyError::WrongLength`] unless `bytes` is exactly 4096 bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, IdentifyError> {
        page_from(bytes).map(IdentifyNamespace)
    }

    /// The raw page.
    pub fn as_bytes(&self) -> &[u8; IDENTIFY_LEN] {
        &self.0
    }

    le_field!(
        nsze,
        set_nsze,
        u64,
        0,
        "Namespace Size in blocks (bytes 7:0)."
    );
    le_field!(
        ncap,
        set_ncap,
        u64,
        8,
        "Namespace Capacity in blocks (bytes 15:8)."
    );
    le_field!(
        nuse,
        set_nuse,
        u64,
        16,
        "Namespace Utilization in blocks (bytes 23:16)."
    );
    le_field!(
        nsfeat,
        set_nsfeat,
        u8,
        24,
        "Namespace Features (byte 24); bit 4 OPTPERF says NPWG/NOWS are valid."
    );
    le_field!(
        nlbaf_raw,
        set_nlbaf_raw,
        u8,
        25,
        "NLBAF, zero-based (byte 25); see [`Self::nlbaf`]."
    );
    le_field!(
        flbas,
        set_flbas,
        u8,
        26,
        "Formatted LBA Size (byte 26), raw; see [`Self::flbas_index`]."
    );
    le_field!(
        mc,
        set_mc,
        u8,
        27,
        "Metadata Capabilities (byte 27): bit 0 extended LBA supported, bit 1 separate buffer supported."
    );
    le_field!(
        dpc,
        set_dpc,
        u8,
        28,
        "End-to-end Data Protection Capabilities (byte 28)."
    );
    le_field!(
        dps,
        set_dps,
        u8,
        29,
        "End-to-end Data Protection Type Settings (byte 29): bits 2:0 the PI type, bit 3 PI in the first bytes of the metadata."
    );
    le_field!(
        dlfeat,
        set_dlfeat,
        u8,
        33,
        "Deallocate Logical Block Features (byte 33)."
    );
    le_field!(
        nawun,
        set_nawun,
        u16,
        34,
        "Namespace Atomic Write Unit Normal, zero-based blocks (bytes 35:34); valid when NSFEAT bit 1."
    );
    le_field!(
        nawupf,
        set_nawupf,
        u16,
        36,
        "Namespace Atomic Write Unit Power Fail, zero-based (bytes 37:36); valid when NSFEAT bit 1."
    );
    le_field!(
        nabsn,
        set_nabsn,
        u16,
        40,
        "Namespace Atomic Boundary Size Normal, zero-based (bytes 41:40); 0 = no boundary."
    );
    le_field!(
        nabo,
        set_nabo,
        u16,
        42,
        "Namespace Atomic Boundary Offset in blocks (bytes 43:42)."
    );
    le_field!(
        nabspf,
        set_nabspf,
        u16,
        44,
        "Namespace Atomic Boundary Size Power Fail, zero-based (bytes 45:44); 0 = no boundary."
    );
    le_field!(
        npwg,
        set_npwg,
        u16,
        64,
        "Namespace Preferred Write Granularity, zero-based (bytes 65:64); valid when NSFEAT bit 4."
    );
    le_field!(
        npwa,
        set_npwa,
        u16,
        66,
        "Namespace Preferred Write Alignment, zero-based (bytes 67:66); valid when NSFEAT bit 4."
    );
    le_field!(
        npdg,
        set_npdg,
        u16,
        68,
        "Namespace Preferred Deallocate Granularity, zero-based (bytes 69:68); valid when NSFEAT bit 4."
    );
    le_field!(
        npda,
        set_npda,
        u16,
        70,
        "Namespace Preferred Deallocate Alignment, zero-based (bytes 71:70); valid when NSFEAT bit 4."
    );
    le_field!(
        nows,
        set_nows,
        u16,
        72,
        "Namespace Optimal Write Size, zero-based (bytes 73:72); valid when NSFEAT bit 4."
    );
    le_field!(
        mssrl,
        set_mssrl,
        u16,
        74,
        "Maximum Single Source Range Length of a Copy, blocks (bytes 75:74); 0 = none reported."
    );
    le_field!(
        mcl,
        set_mcl,
        u32,
        76,
        "Maximum Copy Length, blocks (bytes 79:76); 0 = none reported."
    );
    le_field!(
        msrc_raw,
        set_msrc_raw,
        u8,
        80,
        "Maximum Source Range Count, zero-based (byte 80)."
    );
    le_field!(
        noiob,
        set_noiob,
        u16,
        46,
        "Namespace Optimal I/O Boundary in blocks (bytes 47:46), 0 = none."
    );

    /// The real number of LBA formats (NLBAF + 1), 1 ..= 64.
    pub fn nlbaf(&self) -> u8 {
        (self.nlbaf_raw() & 63) + 1
    }

    /// Writes NLBAF from a real count (1 ..= 64).
    pub fn set_nlbaf(&mut self, count: u8) -> &mut Self {
        self.set_nlbaf_raw(count.clamp(1, 64) - 1)
    }

    /// Index of the format in use: FLBAS bits 3:0, plus bits 6:5 as the upper two bits
    /// when more than 16 formats exist (NVMe 2.0).
    pub fn flbas_index(&self) -> u8 {
        let f = self.flbas();
        let low = f & 0xf;
        if self.nlbaf() > 16 {
            low | ((f >> 5) & 0b11) << 4
        } else {
            low
        }
    }

    /// Writes the FLBAS index (both bit groups), keeping bit 4 (extended metadata).
    pub fn set_flbas_index(&mut self, i: u8) -> &mut Self {
        let f = (self.flbas() & 0b1_0000) | (i & 0xf) | ((i >> 4) & 0b11) << 5;
        self.set_flbas(f)
    }

    /// LBA format `i` (bytes 128 + 4i).
    ///
    /// # Panics
    /// If `i >= 64`.
    pub fn lbaf(&self, i: usize) -> LbaFormat {
        assert!(i < MAX_LBA_FORMATS, "LBA format index {i} >= 64");
        let o = Self::LBAF_OFFSET + 4 * i;
        LbaFormat::from_raw(u32::from_le_bytes(self.0[o..o + 4].try_into().unwrap()))
    }

    /// Writes LBA format `i`.
    ///
    /// # Panics
    /// If `i >= 64`.
    pub fn set_lbaf(&mut self, i: usize, f: LbaFormat) -> &mut Self {
        assert!(i < MAX_LBA_FORMATS, "LBA format index {i} >= 64");
        let o = Self::LBAF_OFFSET + 4 * i;
        self.0[o..o + 4].copy_from_slice(&f.raw().to_le_bytes());
        self
    }

    /// The LBA format the namespace is formatted with.
    pub fn current_lba_format(&self) -> LbaFormat {
        self.lbaf(self.flbas_index() as usize)
    }

    /// FLBAS bit 4: metadata is transferred at the end of each block's data (extended LBA).
    pub fn extended_lba(&self) -> bool {
        self.flbas() & 0b1_0000 != 0
    }

    /// Writes FLBAS bit 4.
    pub fn set_extended_lba(&mut self, on: bool) -> &mut Self {
        let f = (self.flbas() & !0b1_0000) | (on as u8) << 4;
        self.set_flbas(f)
    }

    /// NSFEAT bit 1 (NSABP): NAWUN, NAWUPF, NACWU and the atomic boundaries are valid.
    pub fn atomics_valid(&self) -> bool {
        self.nsfeat() & 0b10 != 0
    }

    /// NSFEAT bit 4 (OPTPERF): NPWG, NPWA, NPDG, NPDA and NOWS are valid.
    pub fn optimal_perf_valid(&self) -> bool {
        self.nsfeat() & 0b1_0000 != 0
    }

    /// Maximum Source Range Count of a Copy: a real count (MSRC + 1).
    pub fn msrc(&self) -> u16 {
        self.msrc_raw() as u16 + 1
    }

    /// The metadata format of the current LBA format, with its protection information, or
    /// `None` without metadata. `pif` is the guard format of the current format (from the I/O
    /// command set specific Identify Namespace, [`IdentifyNvmNamespace::pif`]); 16-bit when
    /// the controller does not report it.
    pub fn metadata_format(&self, pif: crate::pi::PiFormat) -> Option<crate::pi::MetadataFormat> {
        let ms = self.current_lba_format().metadata_size;
        if ms == 0 {
            return None;
        }
        let pi = crate::pi::PiType::from_dps(self.dps()).map(|kind| crate::pi::Protection {
            kind,
            first: self.dps() & 0b1000 != 0,
            format: pif,
        });
        Some(crate::pi::MetadataFormat {
            size: ms,
            extended: self.extended_lba(),
            pi,
        })
    }
}

/// I/O Command Set specific Identify Controller for the NVM command set (CNS 06h, CSI 00h;
/// NVM Command Set 1.0, Figure 99). QEMU 7.2 may refuse it: then none of its limits apply.
#[derive(Clone, PartialEq, Eq)]
pub struct IdentifyNvmController([u8; IDENTIFY_LEN]);

impl Default for IdentifyNvmController {
    fn default() -> Self {
        IdentifyNvmController([0; IDENTIFY_LEN])
    }
}

impl fmt::Debug for IdentifyNvmController {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdentifyNvmController")
            .field("vsl", &self.vsl())
            .field("wzsl", &self.wzsl())
            .field("dmrl", &self.dmrl())
            .field("dmrsl", &self.dmrsl())
            .field("dmsl", &self.dmsl())
            .finish()
    }
}

impl IdentifyNvmController {
    /// An all-zero page (no limits) to fill with the `set_*` methods.
    pub fn builder() -> Self {
        Self::default()
    }

    /// Parses the page.
    ///
    /// # Errors
    /// [`IdentifyError::WrongLength`] unless `bytes` is exactly 4096 bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, IdentifyError> {
        page_from(bytes).map(IdentifyNvmController)
    }

    /// The raw page.
    pub fn as_bytes(&self) -> &[u8; IDENTIFY_LEN] {
        &self.0
    }

    le_field!(
        vsl,
        set_vsl,
        u8,
        0,
        "Verify Size Limit (byte 0): `MPSMIN << vsl` bytes, 0 = none."
    );
    le_field!(
        wzsl,
        set_wzsl,
        u8,
        1,
        "Write Zeroes Size Limit (byte 1): `MPSMIN << wzsl` bytes, 0 = none."
    );
    le_field!(
        dmrl,
        set_dmrl,
        u8,
        3,
        "Dataset Management Ranges Limit (byte 3): ranges per command, 0 = none (256)."
    );
    le_field!(
        dmrsl,
        set_dmrsl,
        u32,
        4,
        "Dataset Management Range Size Limit (bytes 7:4): blocks per range, 0 = none."
    );
    le_field!(
        dmsl,
        set_dmsl,
        u64,
        8,
        "Dataset Management Size Limit (bytes 15:8): blocks per command, 0 = none."
    );
}

/// I/O Command Set specific Identify Namespace for the NVM command set (CNS 05h, CSI 00h;
/// NVM Command Set 1.0b / 2.0, Figure 100): the extended LBA formats with their guard
/// format.
#[derive(Clone, PartialEq, Eq)]
pub struct IdentifyNvmNamespace([u8; IDENTIFY_LEN]);

impl Default for IdentifyNvmNamespace {
    fn default() -> Self {
        IdentifyNvmNamespace([0; IDENTIFY_LEN])
    }
}

impl fmt::Debug for IdentifyNvmNamespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdentifyNvmNamespace")
            .field("elbaf0", &self.elbaf(0))
            .finish_non_exhaustive()
    }
}

impl IdentifyNvmNamespace {
    /// An all-zero page to fill with the `set_*` methods.
    pub fn builder() -> Self {
        Self::default()
    }

    /// Parses the page.
    ///
    /// # Errors
    /// [`IdentifyError::WrongLength`] unless `bytes` is exactly 4096 bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, IdentifyError> {
        page_from(bytes).map(IdentifyNvmNamespace)
    }

    /// The raw page.
    pub fn as_bytes(&self) -> &[u8; IDENTIFY_LEN] {
        &self.0
    }

    /// Extended LBA format `i` (bytes 12 + 4i), raw.
    ///
    /// # Panics
    /// If `i >= 64`.
    pub fn elbaf(&self, i: usize) -> u32 {
        assert!(i < MAX_LBA_FORMATS, "LBA format index {i} >= 64");
        let o = 12 + 4 * i;
        u32::from_le_bytes(self.0[o..o + 4].try_into().expect("4 bytes"))
    }

    /// Writes extended LBA format `i`.
    pub fn set_elbaf(&mut self, i: usize, v: u32) -> &mut Self {
        assert!(i < MAX_LBA_FORMATS, "LBA format index {i} >= 64");
        let o = 12 + 4 * i;
        self.0[o..o + 4].copy_from_slice(&v.to_le_bytes());
        self
    }

    /// The guard format of LBA format `i` (PIF, bits 8:7); 16-bit for a reserved value.
    pub fn pif(&self, i: usize) -> crate::pi::PiFormat {
        crate::pi::PiFormat::from_pif(((self.elbaf(i) >> 7) & 0b11) as u8)
            .unwrap_or(crate::pi::PiFormat::Guard16)
    }
}

impl fmt::Debug for IdentifyNamespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdentifyNamespace")
            .field("nsze", &self.nsze())
            .field("ncap", &self.ncap())
            .field("nlbaf", &self.nlbaf())
            .field("flbas_index", &self.flbas_index())
            .field("lba_format", &self.current_lba_format())
            .field("noiob", &self.noiob())
            .finish_non_exhaustive()
    }
}

/// Active Namespace ID list (CNS 02h): up to 1024 NSIDs in increasing order, ending at the
/// first zero entry.
#[derive(Debug)]
pub struct ActiveNamespaceList;

impl ActiveNamespaceList {
    /// The NSIDs in the page, up to the first zero.
    ///
    /// # Errors
    /// [`IdentifyError::WrongLength`] unless `bytes` is exactly 4096 bytes.
    pub fn parse(bytes: &[u8]) -> Result<Vec<Nsid>, IdentifyError> {
        let page = page_from(bytes)?;
        Ok(page
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
            .take_while(|&n| n != 0)
            .map(Nsid)
            .collect())
    }

    /// The page a controller returns for `nsids` (at most 1024 are written).
    pub fn encode(nsids: &[Nsid]) -> [u8; IDENTIFY_LEN] {
        let mut page = [0u8; IDENTIFY_LEN];
        for (c, n) in page.chunks_exact_mut(4).zip(nsids) {
            c.copy_from_slice(&n.0.to_le_bytes());
        }
        page
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrong_length_is_an_error() {
        assert_eq!(
            IdentifyController::from_bytes(&[0; 4095]),
            Err(IdentifyError::WrongLength {
                len: 4095,
                expected: 4096
            })
        );
        assert!(IdentifyNamespace::from_bytes(&[0; 4097]).is_err());
        assert!(ActiveNamespaceList::parse(&[0; 16]).is_err());
    }

    #[test]
    fn controller_fields_sit_at_the_spec_offsets() {
        // Literal byte positions from NVMe Base 2.0 Figure 275.
        let mut p = [0u8; 4096];
        p[0] = 0x36;
        p[1] = 0x1b; // VID 0x1b36
        p[4..12].copy_from_slice(b"deadbeef");
        p[12..24].fill(b' ');
        p[24..38].copy_from_slice(b"QEMU NVMe Ctrl");
        p[38..64].fill(b' ');
        p[64..72].copy_from_slice(b"8.0.0   ");
        p[77] = 7; // MDTS
        p[78] = 0x01; // CNTLID
        p[80..84].copy_from_slice(&0x0001_0400u32.to_le_bytes()); // VER 1.4.0
        p[257] = 0x01; // OACS bit 8
        p[258] = 3; // ACL zero-based
        p[259] = 3; // AERL
        p[512] = 0x66; // SQES 6/6
        p[513] = 0x44; // CQES 4/4
        p[514] = 0x00;
        p[515] = 0x01; // MAXCMD 256
        p[516] = 2; // NN
        p[520] = 0b1100; // ONCS: DSM, write zeroes
        p[525] = 1; // VWC
        p[536] = 0b10; // SGLS dword aligned
        let c = IdentifyController::from_bytes(&p).unwrap();
        assert_eq!(c.vid(), 0x1b36);
        assert_eq!(c.serial(), "deadbeef");
        assert_eq!(c.model(), "QEMU NVMe Ctrl");
        assert_eq!(c.firmware(), "8.0.0");
        assert_eq!(c.mdts(), 7);
        assert_eq!(c.max_transfer_bytes(PageSize::SIZE_4K), Some(512 << 10));
        assert_eq!(c.cntlid(), 1);
        assert_eq!(c.ver().major(), 1);
        assert_eq!(c.ver().minor(), 4);
        assert!(c.oacs().doorbell_buffer_config());
        assert_eq!(c.acl(), 4);
        assert_eq!(c.aerl(), 4);
        assert_eq!(
            c.sqes(),
            EntrySizes {
                required: 6,
                maximum: 6
            }
        );
        assert_eq!(c.cqes().required, 4);
        assert_eq!(c.maxcmd(), 256);
        assert_eq!(c.nn(), 2);
        assert!(c.oncs().write_zeroes());
        assert!(c.oncs().dataset_management());
        assert!(c.vwc_present());
        assert_eq!(
            c.sgls(),
            SglSupport {
                supported: true,
                dword_aligned_only: true
            }
        );
        // The builder writes the same page.
        let mut b = IdentifyController::builder();
        b.set_vid(0x1b36)
            .set_serial("deadbeef")
            .set_model("QEMU NVMe Ctrl")
            .set_firmware("8.0.0")
            .set_mdts(7)
            .set_cntlid(1)
            .set_ver(0x0001_0400)
            .set_oacs(Oacs::DOORBELL_BUFFER_CONFIG)
            .set_acl(4)
            .set_aerl(4)
            .set_sqes(EntrySizes {
                required: 6,
                maximum: 6,
            })
            .set_cqes(EntrySizes {
                required: 4,
                maximum: 4,
            })
            .set_maxcmd(256)
            .set_nn(2)
            .set_oncs(Oncs::WRITE_ZEROES | Oncs::DATASET_MANAGEMENT)
            .set_vwc_present(true)
            .set_sgls(0b10);
        assert_eq!(b.as_bytes(), &p);
    }

    #[test]
    fn controller_mdts_zero_is_unlimited_and_sgls_variants() {
        let mut c = IdentifyController::builder();
        assert_eq!(c.max_transfer_bytes(PageSize::SIZE_4K), None);
        assert!(!c.sgls().supported);
        c.set_sgls(0b01).set_mdts(1);
        assert_eq!(
            c.sgls(),
            SglSupport {
                supported: true,
                dword_aligned_only: false
            }
        );
        assert_eq!(
            c.max_transfer_bytes(PageSize::new(65536).unwrap()),
            Some(128 << 10)
        );
        c.set_mdts(255);
        assert_eq!(c.max_transfer_bytes(PageSize::SIZE_4K), Some(u64::MAX));
        c.set_sgls(0b11);
        assert!(!c.sgls().supported);
    }

    #[test]
    fn namespace_fields_sit_at_the_spec_offsets() {
        // Literal byte positions from NVM Command Set 1.0 Figure 97.
        let mut p = [0u8; 4096];
        p[0..8].copy_from_slice(&(1u64 << 21).to_le_bytes()); // NSZE
        p[8..16].copy_from_slice(&(1u64 << 20).to_le_bytes()); // NCAP
        p[16..24].copy_from_slice(&5u64.to_le_bytes()); // NUSE
        p[24] = 0b1_0000; // NSFEAT
        p[25] = 1; // NLBAF: 2 formats
        p[26] = 1; // FLBAS index 1
        p[33] = 0b1001; // DLFEAT
        p[46] = 0x00;
        p[47] = 0x01; // NOIOB 256
        p[128..132].copy_from_slice(&[0, 0, 9, 0]); // LBAF0: 512 B
        p[132..136].copy_from_slice(&[8, 0, 12, 0b10]); // LBAF1: 4 KiB + 8 B md, RP 2
        let ns = IdentifyNamespace::from_bytes(&p).unwrap();
        assert_eq!(ns.nsze(), 1 << 21);
        assert_eq!(ns.ncap(), 1 << 20);
        assert_eq!(ns.nuse(), 5);
        assert_eq!(ns.nsfeat(), 0b1_0000);
        assert_eq!(ns.nlbaf(), 2);
        assert_eq!(ns.flbas_index(), 1);
        assert_eq!(ns.dlfeat(), 0b1001);
        assert_eq!(ns.noiob(), 256);
        assert_eq!(ns.lbaf(0).data_size, 512);
        let f = LbaFormat {
            data_size: 4096,
            metadata_size: 8,
            relative_performance: 2,
        };
        assert_eq!(ns.current_lba_format(), f);

        let mut b = IdentifyNamespace::builder();
        b.set_nsze(1 << 21)
            .set_ncap(1 << 20)
            .set_nuse(5)
            .set_nsfeat(0b1_0000)
            .set_nlbaf(2)
            .set_flbas_index(1)
            .set_dlfeat(0b1001)
            .set_noiob(256)
            .set_lbaf(
                0,
                LbaFormat {
                    data_size: 512,
                    ..LbaFormat::default()
                },
            )
            .set_lbaf(1, f);
        assert_eq!(b.as_bytes(), &p);
        assert_eq!(IdentifyNamespace::from_bytes(b.as_bytes()).unwrap(), ns);
    }

    #[test]
    fn flbas_upper_bits_count_only_beyond_sixteen_formats() {
        let mut ns = IdentifyNamespace::builder();
        ns.set_nlbaf(64).set_flbas_index(37);
        assert_eq!(ns.flbas(), 0b0100_0101);
        assert_eq!(ns.flbas_index(), 37);
        ns.set_lbaf(
            37,
            LbaFormat {
                data_size: 4096,
                metadata_size: 0,
                relative_performance: 0,
            },
        );
        assert_eq!(ns.current_lba_format().data_size, 4096);
        // With <= 16 formats bits 6:5 are reserved and ignored.
        ns.set_nlbaf(16);
        assert_eq!(ns.flbas_index(), 5);
    }

    #[test]
    fn active_namespace_list_ends_at_first_zero() {
        let page = ActiveNamespaceList::encode(&[Nsid(1), Nsid(2), Nsid(7)]);
        assert_eq!(&page[8..12], &[7, 0, 0, 0]);
        assert_eq!(
            ActiveNamespaceList::parse(&page).unwrap(),
            vec![Nsid(1), Nsid(2), Nsid(7)]
        );
        let mut page = page;
        page[20] = 9; // after the terminating zero: ignored
        assert_eq!(ActiveNamespaceList::parse(&page).unwrap().len(), 3);
        assert!(ActiveNamespaceList::parse(&[0; 4096]).unwrap().is_empty());
    }
}
