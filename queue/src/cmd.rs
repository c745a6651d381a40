//! Typed command builders (NVMe Base 2.0, 5; NVM Command Set 1.0, 3).
//!
//! Required arguments go in `new()` (or a named constructor), optional ones are chained
//! setters, and `build()` destructures the whole builder into an [`Sqe`]. The CID is left 0:
//! the queue sets it when it places the entry in a slot. Block counts are REAL counts
//! (1 ..= 65 536) and are encoded zero-based here, nowhere else; queue sizes are
//! [`QueueSize`] and encoded through [`QueueSize::zero_based`].
//!
//! These builders are the only place outside the emulated controller's decoder that uses
//! the opcodes in [`crate::opcode`].

use crate::entry::{PSDT_SGL, Sqe};
use crate::opcode::{admin, cns, feature, log, nvm};
use crate::pi::{PiTags, Prinfo};
use crate::types::{Cid, Iova, Lba, Nsid, Qid, QueueSize};

/// The data pointer of a command.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Dptr {
    /// No data transfer.
    #[default]
    None,
    /// PRP entries (PSDT 00b): PRP1 is the first byte, PRP2 the second page or a list.
    Prp {
        /// PRP entry 1.
        prp1: u64,
        /// PRP entry 2 (0 when unused).
        prp2: u64,
    },
    /// One SGL descriptor (PSDT 01b) as two little-endian quadwords.
    Sgl([u64; 2]),
}

impl Dptr {
    /// Writes the pointer and PSDT into an entry.
    #[inline]
    pub fn apply(self, sqe: &mut Sqe) {
        match self {
            Dptr::None => {}
            Dptr::Prp { prp1, prp2 } => {
                sqe.prp1 = prp1;
                sqe.prp2 = prp2;
                sqe.flags &= !(0b11 << 6);
            }
            Dptr::Sgl([a, b]) => {
                sqe.prp1 = a;
                sqe.prp2 = b;
                sqe.flags = (sqe.flags & !(0b11 << 6)) | PSDT_SGL;
            }
        }
    }
}

/// Zero-based NLB for CDW12 bits 15:0.
///
/// # Panics
/// If `nlb` is not in 1 ..= 65 536.
#[inline]
fn nlb_zero_based(nlb: u32) -> u32 {
    assert!(
        (1..=65_536).contains(&nlb),
        "block count {nlb} outside 1..=65536"
    );
    nlb - 1
}

const FUA: u32 = 1 << 30;

/// PRINFO sits in CDW12 bits 29:26 of Read, Write, Write Zeroes, Verify (and Copy's write
/// side).
const PRINFO_SHIFT: u32 = 26;

macro_rules! rw_builder {
    ($name:ident, $opc:expr, $what:literal) => {
        #[doc = concat!($what, " (NVM Command Set 1.0, 3.2): CDW10/11 SLBA, CDW12 NLB (zero-based, bits 15:0), PRINFO (bits 29:26) and FUA (bit 30), MPTR the separate metadata, CDW14 (and CDW3 bits 15:0 for 48-bit tags) the initial reference tag, CDW15 the application tag and mask.")]
        #[derive(Clone, Copy, Debug)]
        pub struct $name {
            nsid: Nsid,
            slba: Lba,
            nlb: u32,
            fua: bool,
            mptr: u64,
            prinfo: u8,
            tags: PiTags,
        }

        impl $name {
            #[doc = concat!("A ", $what, " of `nlb` blocks (a real count, 1 ..= 65 536) at `slba`.")]
            #[inline]
            pub fn new(nsid: Nsid, slba: Lba, nlb: u32) -> Self {
                $name {
                    nsid,
                    slba,
                    nlb,
                    fua: false,
                    mptr: 0,
                    prinfo: 0,
                    tags: PiTags {
                        reftag: 0,
                        apptag: 0,
                        appmask: 0,
                    },
                }
            }

            /// Force Unit Access.
            #[inline]
            pub fn fua(mut self, fua: bool) -> Self {
                self.fua = fua;
                self
            }

            /// The separate metadata buffer (MPTR): contiguous, dword aligned, `nlb * ms`
            /// bytes.
            #[inline]
            pub fn metadata(mut self, mptr: Iova) -> Self {
                self.mptr = mptr.0;
                self
            }

            /// Protection information: PRINFO and the tags the controller checks or inserts.
            #[inline]
            pub fn protection(mut self, prinfo: Prinfo, tags: PiTags) -> Self {
                self.prinfo = prinfo.bits();
                self.tags = tags;
                self
            }

            /// The entry.
            ///
            /// # Panics
            /// If the block count is not in 1 ..= 65 536.
            #[inline]
            pub fn build(self, dptr: Dptr) -> Sqe {
                let $name {
                    nsid,
                    slba,
                    nlb,
                    fua,
                    mptr,
                    prinfo,
                    tags,
                } = self;
                let mut sqe = Sqe {
                    opc: $opc,
                    nsid: nsid.0,
                    cdw3: ((tags.reftag >> 32) & 0xffff) as u32,
                    mptr,
                    cdw10: slba.0 as u32,
                    cdw11: (slba.0 >> 32) as u32,
                    cdw12: nlb_zero_based(nlb)
                        | ((prinfo as u32) & 0xf) << PRINFO_SHIFT
                        | if fua { FUA } else { 0 },
                    cdw14: tags.reftag as u32,
                    cdw15: tags.apptag as u32 | (tags.appmask as u32) << 16,
                    ..Sqe::default()
                };
                dptr.apply(&mut sqe);
                sqe
            }
        }
    };
}

rw_builder!(Read, nvm::READ, "Read");
rw_builder!(Write, nvm::WRITE, "Write");

/// Verify (NVM Command Set 1.0, 3.2.9): the controller reads the blocks and checks their
/// integrity (and, with PRCHK, their protection information) without transferring data.
/// CDW12 NLB, PRINFO, FUA; CDW14/15 the tags.
#[derive(Clone, Copy, Debug)]
pub struct Verify {
    nsid: Nsid,
    slba: Lba,
    nlb: u32,
    prinfo: u8,
    tags: PiTags,
}

impl Verify {
    /// Verify `nlb` blocks (real count, 1 ..= 65 536) at `slba`.
    pub fn new(nsid: Nsid, slba: Lba, nlb: u32) -> Self {
        Verify {
            nsid,
            slba,
            nlb,
            prinfo: 0,
            tags: PiTags::default(),
        }
    }

    /// Protection information checks (PRACT must be clear for Verify).
    pub fn protection(mut self, prinfo: Prinfo, tags: PiTags) -> Self {
        self.prinfo = prinfo.bits();
        self.tags = tags;
        self
    }

    /// The entry.
    ///
    /// # Panics
    /// If the block count is not in 1 ..= 65 536.
    pub fn build(self) -> Sqe {
        let Verify {
            nsid,
            slba,
            nlb,
            prinfo,
            tags,
        } = self;
        Sqe {
            opc: nvm::VERIFY,
            nsid: nsid.0,
            cdw3: ((tags.reftag >> 32) & 0xffff) as u32,
            cdw10: slba.0 as u32,
            cdw11: (slba.0 >> 32) as u32,
            cdw12: nlb_zero_based(nlb) | ((prinfo as u32) & 0xf) << PRINFO_SHIFT,
            cdw14: tags.reftag as u32,
            cdw15: tags.apptag as u32 | (tags.appmask as u32) << 16,
            ..Sqe::default()
        }
    }
}

/// One source range of a Copy, source range entry format 0 (NVM Command Set 1.0, Figure
/// 47): 32 bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CopyRange {
    /// First source block.
    pub slba: u64,
    /// Blocks: a REAL count here (encoded zero-based).
    pub nlb: u32,
    /// Expected initial reference tag of the source (EILBRT).
    pub reftag: u32,
    /// Expected application tag (ELBAT).
    pub apptag: u16,
    /// Its mask (ELBATM).
    pub appmask: u16,
}

impl CopyRange {
    /// Bytes per source range entry (format 0).
    pub const LEN: usize = 32;

    /// The 32 bytes the controller reads.
    ///
    /// # Panics
    /// If `nlb` is not in 1 ..= 65 536.
    pub fn to_bytes(&self) -> [u8; 32] {
        let mut b = [0u8; 32];
        b[8..16].copy_from_slice(&self.slba.to_le_bytes());
        b[16..18].copy_from_slice(&(nlb_zero_based(self.nlb) as u16).to_le_bytes());
        b[24..28].copy_from_slice(&self.reftag.to_le_bytes());
        b[28..30].copy_from_slice(&self.apptag.to_le_bytes());
        b[30..32].copy_from_slice(&self.appmask.to_le_bytes());
        b
    }
}

/// Copy (NVM Command Set 1.0, 3.2.2), simple copy: CDW10/11 SDLBA, CDW12 NR (zero-based,
/// bits 7:0), descriptor format 0 (bits 11:8), PRINFOR (bits 15:12), PRINFOW (bits 29:26),
/// FUA (bit 30); CDW14/15 the destination's tags. The source ranges
/// ([`CopyRange::to_bytes`]) travel in the data buffer.
#[derive(Clone, Copy, Debug)]
pub struct Copy {
    nsid: Nsid,
    sdlba: Lba,
    ranges: u32,
    fua: bool,
    prinfor: u8,
    prinfow: u8,
    tags: PiTags,
}

impl Copy {
    /// Copy `ranges` source ranges (real count, 1 ..= 256) to `sdlba`, in order.
    pub fn new(nsid: Nsid, sdlba: Lba, ranges: u32) -> Self {
        Copy {
            nsid,
            sdlba,
            ranges,
            fua: false,
            prinfor: 0,
            prinfow: 0,
            tags: PiTags::default(),
        }
    }

    /// Force Unit Access on the destination.
    pub fn fua(mut self, v: bool) -> Self {
        self.fua = v;
        self
    }

    /// PRINFO for reading the sources and for writing the destination (with its tags).
    pub fn protection(mut self, read: Prinfo, write: Prinfo, tags: PiTags) -> Self {
        self.prinfor = read.bits();
        self.prinfow = write.bits();
        self.tags = tags;
        self
    }

    /// The entry; `dptr` points at `ranges * 32` bytes of [`CopyRange`]s.
    ///
    /// # Panics
    /// If `ranges` is not in 1 ..= 256.
    pub fn build(self, dptr: Dptr) -> Sqe {
        let Copy {
            nsid,
            sdlba,
            ranges,
            fua,
            prinfor,
            prinfow,
            tags,
        } = self;
        assert!(
            (1..=256).contains(&ranges),
            "copy range count {ranges} outside 1..=256"
        );
        let mut sqe = Sqe {
            opc: nvm::COPY,
            nsid: nsid.0,
            cdw3: ((tags.reftag >> 32) & 0xffff) as u32,
            cdw10: sdlba.0 as u32,
            cdw11: (sdlba.0 >> 32) as u32,
            cdw12: (ranges - 1)
                | ((prinfor as u32) & 0xf) << 12
                | ((prinfow as u32) & 0xf) << PRINFO_SHIFT
                | if fua { FUA } else { 0 },
            cdw14: tags.reftag as u32,
            cdw15: tags.apptag as u32 | (tags.appmask as u32) << 16,
            ..Sqe::default()
        };
        dptr.apply(&mut sqe);
        sqe
    }
}

/// Flush (NVM Command Set 1.0, 3.3 / Base 2.0, 7.1).
#[derive(Clone, Copy, Debug)]
pub struct Flush {
    nsid: Nsid,
}

impl Flush {
    /// Flush the volatile write cache for `nsid` ([`Nsid::ALL`] for all namespaces).
    pub fn new(nsid: Nsid) -> Self {
        Flush { nsid }
    }

    /// The entry.
    pub fn build(self) -> Sqe {
        let Flush { nsid } = self;
        Sqe {
            opc: nvm::FLUSH,
            nsid: nsid.0,
            ..Sqe::default()
        }
    }
}

/// Write Zeroes (NVM Command Set 1.0, 3.2.8): CDW12 NLB, DEAC (bit 25), FUA (bit 30).
#[derive(Clone, Copy, Debug)]
pub struct WriteZeroes {
    nsid: Nsid,
    slba: Lba,
    nlb: u32,
    deallocate: bool,
    fua: bool,
}

impl WriteZeroes {
    /// Zero `nlb` blocks (real count, 1 ..= 65 536) at `slba`.
    pub fn new(nsid: Nsid, slba: Lba, nlb: u32) -> Self {
        WriteZeroes {
            nsid,
            slba,
            nlb,
            deallocate: false,
            fua: false,
        }
    }

    /// Deallocate the blocks if the controller can (DEAC).
    pub fn deallocate(mut self, v: bool) -> Self {
        self.deallocate = v;
        self
    }

    /// Force Unit Access.
    pub fn fua(mut self, v: bool) -> Self {
        self.fua = v;
        self
    }

    /// The entry.
    ///
    /// # Panics
    /// If the block count is not in 1 ..= 65 536.
    pub fn build(self) -> Sqe {
        let WriteZeroes {
            nsid,
            slba,
            nlb,
            deallocate,
            fua,
        } = self;
        Sqe {
            opc: nvm::WRITE_ZEROES,
            nsid: nsid.0,
            cdw10: slba.0 as u32,
            cdw11: (slba.0 >> 32) as u32,
            cdw12: nlb_zero_based(nlb)
                | if deallocate { 1 << 25 } else { 0 }
                | if fua { FUA } else { 0 },
            ..Sqe::default()
        }
    }
}

/// One Dataset Management range (NVM Command Set 1.0, Figure 40): 16 bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DsmRange {
    /// Context attributes.
    pub context: u32,
    /// Length in blocks: a REAL count (this field is not zero-based in the spec).
    pub nlb: u32,
    /// Starting LBA.
    pub slba: u64,
}

impl DsmRange {
    /// The 16 bytes the controller reads from the data buffer.
    pub fn to_bytes(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[0..4].copy_from_slice(&self.context.to_le_bytes());
        b[4..8].copy_from_slice(&self.nlb.to_le_bytes());
        b[8..16].copy_from_slice(&self.slba.to_le_bytes());
        b
    }
}

/// Dataset Management (NVM Command Set 1.0, 3.2.3): CDW10 NR (zero-based, bits 7:0),
/// CDW11 AD (bit 2). The ranges ([`DsmRange::to_bytes`]) travel in the data buffer.
#[derive(Clone, Copy, Debug)]
pub struct DatasetManagement {
    nsid: Nsid,
    ranges: u32,
}

impl DatasetManagement {
    /// Deallocate (TRIM) `ranges` ranges (real count, 1 ..= 256).
    pub fn deallocate(nsid: Nsid, ranges: u32) -> Self {
        DatasetManagement { nsid, ranges }
    }

    /// The entry; `dptr` points at `ranges * 16` bytes of [`DsmRange`]s.
    ///
    /// # Panics
    /// If `ranges` is not in 1 ..= 256.
    pub fn build(self, dptr: Dptr) -> Sqe {
        let DatasetManagement { nsid, ranges } = self;
        assert!(
            (1..=256).contains(&ranges),
            "DSM range count {ranges} outside 1..=256"
        );
        let mut sqe = Sqe {
            opc: nvm::DATASET_MANAGEMENT,
            nsid: nsid.0,
            cdw10: ranges - 1,
            cdw11: 1 << 2,
            ..Sqe::default()
        };
        dptr.apply(&mut sqe);
        sqe
    }
}

/// Identify (Base 2.0, 5.17): CDW10 CNS (bits 7:0). Returns 4096 bytes.
#[derive(Clone, Copy, Debug)]
pub struct Identify {
    cns: u8,
    nsid: Nsid,
}

impl Identify {
    /// Identify Controller (CNS 01h).
    pub fn controller() -> Self {
        Identify {
            cns: cns::CONTROLLER,
            nsid: Nsid(0),
        }
    }

    /// Identify Namespace (CNS 00h).
    pub fn namespace(nsid: Nsid) -> Self {
        Identify {
            cns: cns::NAMESPACE,
            nsid,
        }
    }

    /// I/O Command Set specific Identify Namespace for the NVM command set (CNS 05h, CSI
    /// 00h): the guard format of each LBA format.
    pub fn nvm_namespace(nsid: Nsid) -> Self {
        Identify {
            cns: cns::NVM_NAMESPACE,
            nsid,
        }
    }

    /// I/O Command Set specific Identify Controller for the NVM command set (CNS 06h, CSI
    /// 00h): the Verify, Write Zeroes and Dataset Management limits.
    pub fn nvm_controller() -> Self {
        Identify {
            cns: cns::NVM_CONTROLLER,
            nsid: Nsid(0),
        }
    }

    /// Active Namespace ID list (CNS 02h): active NSIDs greater than `after` (Nsid(0) for
    /// the first page).
    pub fn active_namespaces(after: Nsid) -> Self {
        Identify {
            cns: cns::ACTIVE_NAMESPACES,
            nsid: after,
        }
    }

    /// The entry; `dptr` points at a 4096-byte buffer.
    pub fn build(self, dptr: Dptr) -> Sqe {
        let Identify { cns, nsid } = self;
        let mut sqe = Sqe {
            opc: admin::IDENTIFY,
            nsid: nsid.0,
            cdw10: cns as u32,
            ..Sqe::default()
        };
        dptr.apply(&mut sqe);
        sqe
    }
}

/// Create I/O Completion Queue (Base 2.0, 5.4): PRP1 base, CDW10 QID/QSIZE, CDW11 PC (bit 0),
/// IEN (bit 1), IV (bits 31:16).
#[derive(Clone, Copy, Debug)]
pub struct CreateIoCq {
    qid: Qid,
    size: QueueSize,
    base: Iova,
    vector: Option<u16>,
}

impl CreateIoCq {
    /// A physically contiguous CQ of `size` entries at `base` (page aligned), polled.
    pub fn new(qid: Qid, size: QueueSize, base: Iova) -> Self {
        CreateIoCq {
            qid,
            size,
            base,
            vector: None,
        }
    }

    /// Interrupts on MSI-X vector `v`, or none (polled).
    pub fn interrupt_vector(mut self, v: Option<u16>) -> Self {
        self.vector = v;
        self
    }

    /// The entry.
    pub fn build(self) -> Sqe {
        let CreateIoCq {
            qid,
            size,
            base,
            vector,
        } = self;
        let cdw11 = match vector {
            Some(iv) => 0b11 | (iv as u32) << 16,
            None => 0b01,
        };
        Sqe {
            opc: admin::CREATE_IO_CQ,
            prp1: base.0,
            cdw10: qid.0 as u32 | (size.zero_based() as u32) << 16,
            cdw11,
            ..Sqe::default()
        }
    }
}

/// Create I/O Submission Queue (Base 2.0, 5.5): PRP1 base, CDW10 QID/QSIZE, CDW11 PC (bit 0),
/// QPRIO (bits 2:1), CQID (bits 31:16).
#[derive(Clone, Copy, Debug)]
pub struct CreateIoSq {
    qid: Qid,
    size: QueueSize,
    base: Iova,
    cqid: Qid,
    priority: u8,
}

impl CreateIoSq {
    /// A physically contiguous SQ of `size` entries at `base` (page aligned), completing on `cqid`.
    pub fn new(qid: Qid, size: QueueSize, base: Iova, cqid: Qid) -> Self {
        CreateIoSq {
            qid,
            size,
            base,
            cqid,
            priority: 0,
        }
    }

    /// Queue priority for weighted round robin (0 urgent .. 3 low); ignored under round robin.
    pub fn priority(mut self, p: u8) -> Self {
        self.priority = p & 0b11;
        self
    }

    /// The entry.
    pub fn build(self) -> Sqe {
        let CreateIoSq {
            qid,
            size,
            base,
            cqid,
            priority,
        } = self;
        Sqe {
            opc: admin::CREATE_IO_SQ,
            prp1: base.0,
            cdw10: qid.0 as u32 | (size.zero_based() as u32) << 16,
            cdw11: 1 | ((priority & 0b11) as u32) << 1 | (cqid.0 as u32) << 16,
            ..Sqe::default()
        }
    }
}

macro_rules! delete_builder {
    ($name:ident, $opc:expr, $doc:literal) => {
        #[doc = $doc]
        #[derive(Clone, Copy, Debug)]
        pub struct $name {
            qid: Qid,
        }

        impl $name {
            /// Delete queue `qid`.
            pub fn new(qid: Qid) -> Self {
                $name { qid }
            }

            /// The entry.
            pub fn build(self) -> Sqe {
                let $name { qid } = self;
                Sqe {
                    opc: $opc,
                    cdw10: qid.0 as u32,
                    ..Sqe::default()
                }
            }
        }
    };
}

delete_builder!(
    DeleteIoSq,
    admin::DELETE_IO_SQ,
    "Delete I/O Submission Queue (Base 2.0, 5.7): CDW10 QID."
);
delete_builder!(
    DeleteIoCq,
    admin::DELETE_IO_CQ,
    "Delete I/O Completion Queue (Base 2.0, 5.6): CDW10 QID. Delete its SQs first."
);

/// Set Features (Base 2.0, 5.27): CDW10 FID (bits 7:0), CDW11 the value.
#[derive(Clone, Copy, Debug)]
pub struct SetFeatures {
    fid: u8,
    cdw11: u32,
}

impl SetFeatures {
    /// Number of Queues (FID 07h): request `nsq` SQs and `ncq` CQs (real counts, 1 ..= 65 535),
    /// encoded zero-based. The grant comes back in the completion: [`NumberOfQueues::from_result`].
    ///
    /// # Panics
    /// If a count is 0.
    pub fn number_of_queues(nsq: u16, ncq: u16) -> Self {
        assert!(nsq >= 1 && ncq >= 1, "queue counts are real counts, >= 1");
        SetFeatures {
            fid: feature::NUMBER_OF_QUEUES,
            cdw11: (nsq - 1) as u32 | ((ncq - 1) as u32) << 16,
        }
    }

    /// Interrupt Coalescing (FID 08h): `threshold` completions (real count, 1 ..= 256; 0 is
    /// treated as 1) or `time_100us` hundreds of microseconds, whichever comes first.
    pub fn interrupt_coalescing(threshold: u8, time_100us: u8) -> Self {
        SetFeatures {
            fid: feature::INTERRUPT_COALESCING,
            cdw11: threshold.saturating_sub(1) as u32 | (time_100us as u32) << 8,
        }
    }

    /// Asynchronous Event Configuration (FID 0Bh): which events the controller reports
    /// through Asynchronous Event Requests. `smart` is the SMART / Health critical warning
    /// mask (bits 7:0, the bits of the SMART log's Critical Warning byte), `namespace`
    /// Namespace Attribute Notices (bit 8), `firmware` Firmware Activation Notices (bit 9).
    pub fn async_event_config(smart: u8, namespace: bool, firmware: bool) -> Self {
        SetFeatures {
            fid: feature::ASYNC_EVENT_CONFIG,
            cdw11: smart as u32 | (namespace as u32) << 8 | (firmware as u32) << 9,
        }
    }

    /// Any feature without a data buffer: identifier `fid` (see
    /// [`crate::opcode::feature`]), value `cdw11` as the spec lays it out.
    pub fn raw(fid: u8, cdw11: u32) -> Self {
        SetFeatures { fid, cdw11 }
    }

    /// Volatile Write Cache (FID 06h): WCE (bit 0).
    pub fn volatile_write_cache(enable: bool) -> Self {
        SetFeatures {
            fid: feature::VOLATILE_WRITE_CACHE,
            cdw11: enable as u32,
        }
    }

    /// The entry.
    pub fn build(self) -> Sqe {
        let SetFeatures { fid, cdw11 } = self;
        Sqe {
            opc: admin::SET_FEATURES,
            cdw10: fid as u32,
            cdw11,
            ..Sqe::default()
        }
    }
}

/// Get Features (Base 2.0, 5.15): CDW10 FID (bits 7:0), SEL 000b (current). The value is in
/// the completion's result.
#[derive(Clone, Copy, Debug)]
pub struct GetFeatures {
    fid: u8,
}

impl GetFeatures {
    /// Number of Queues (FID 07h); decode with [`NumberOfQueues::from_result`].
    pub fn number_of_queues() -> Self {
        GetFeatures {
            fid: feature::NUMBER_OF_QUEUES,
        }
    }

    /// Volatile Write Cache (FID 06h); result bit 0 is WCE.
    pub fn volatile_write_cache() -> Self {
        GetFeatures {
            fid: feature::VOLATILE_WRITE_CACHE,
        }
    }

    /// Any feature without a data buffer, by identifier (see [`crate::opcode::feature`]):
    /// the current value comes back in the completion's DW0.
    pub fn fid(fid: u8) -> Self {
        GetFeatures { fid }
    }

    /// The entry.
    pub fn build(self) -> Sqe {
        let GetFeatures { fid } = self;
        Sqe {
            opc: admin::GET_FEATURES,
            cdw10: fid as u32,
            ..Sqe::default()
        }
    }
}

/// Decoding of the Number of Queues feature's completion result.
#[derive(Clone, Copy, Debug)]
pub struct NumberOfQueues;

impl NumberOfQueues {
    /// `(submission queues, completion queues)` granted, as real counts (NSQA/NCQA + 1).
    pub fn from_result(dw0: u32) -> (u16, u16) {
        let nsq = (dw0 & 0xffff) as u16;
        let ncq = (dw0 >> 16) as u16;
        (nsq.saturating_add(1), ncq.saturating_add(1))
    }
}

/// Abort (Base 2.0, 5.1): CDW10 SQID (bits 15:0), CID (bits 31:16).
#[derive(Clone, Copy, Debug)]
pub struct Abort {
    sqid: Qid,
    cid: Cid,
}

impl Abort {
    /// Abort command `cid` of submission queue `sqid`.
    pub fn new(sqid: Qid, cid: Cid) -> Self {
        Abort { sqid, cid }
    }

    /// The entry.
    pub fn build(self) -> Sqe {
        let Abort { sqid, cid } = self;
        Sqe {
            opc: admin::ABORT,
            cdw10: sqid.0 as u32 | (cid.0 as u32) << 16,
            ..Sqe::default()
        }
    }
}

/// Get Log Page (Base 2.0, 5.16): CDW10 LID (bits 7:0), NUMDL (bits 31:16); CDW11 NUMDU
/// (bits 15:0). NUMD is the zero-based dword count, computed from the byte length.
#[derive(Clone, Copy, Debug)]
pub struct GetLogPage {
    lid: u8,
    nsid: Nsid,
    len: u32,
}

impl GetLogPage {
    /// Bytes in one Error Information log entry.
    pub const ERROR_ENTRY_LEN: u32 = 64;
    /// Bytes in the SMART / Health Information log.
    pub const SMART_LEN: u32 = 512;
    /// Bytes in the Firmware Slot Information log.
    pub const FIRMWARE_SLOT_LEN: u32 = 512;
    /// Bytes in the Changed Namespace List log.
    pub const CHANGED_NAMESPACES_LEN: u32 = 4096;

    /// The first `entries` entries (1 ..) of the Error Information log (64 bytes each).
    pub fn error_information(entries: u32) -> Self {
        GetLogPage {
            lid: log::ERROR_INFORMATION,
            nsid: Nsid(0),
            len: entries.max(1).saturating_mul(Self::ERROR_ENTRY_LEN),
        }
    }

    /// Bytes of the Commands Supported and Effects log.
    pub const COMMANDS_SUPPORTED_LEN: u32 = 4096;

    /// The Commands Supported and Effects log (Base 2.0, 5.16.1.6; 4096 bytes): one dword
    /// per admin opcode (bytes 1023:0) and per I/O opcode (bytes 2047:1024), bit 0 CSUPP.
    /// Decode with [`commands_supported_io`]. QEMU 7.2 lists Verify here but not in ONCS.
    pub fn commands_supported() -> Self {
        GetLogPage {
            lid: log::COMMANDS_SUPPORTED,
            nsid: Nsid(0),
            len: Self::COMMANDS_SUPPORTED_LEN,
        }
    }

    /// The controller-wide SMART / Health Information log (512 bytes, NSID FFFFFFFFh).
    pub fn smart_health() -> Self {
        GetLogPage {
            lid: log::SMART_HEALTH,
            nsid: Nsid::ALL,
            len: Self::SMART_LEN,
        }
    }

    /// The Firmware Slot Information log (512 bytes, controller wide).
    pub fn firmware_slot() -> Self {
        GetLogPage {
            lid: log::FIRMWARE_SLOT,
            nsid: Nsid::ALL,
            len: Self::FIRMWARE_SLOT_LEN,
        }
    }

    /// The Changed Namespace List log (4 KiB: up to 1 024 NSIDs). Reading it clears it
    /// and re-enables Namespace Attribute Changed events.
    pub fn changed_namespaces() -> Self {
        GetLogPage {
            lid: log::CHANGED_NAMESPACES,
            nsid: Nsid(0),
            len: Self::CHANGED_NAMESPACES_LEN,
        }
    }

    /// Any log page `lid` of `len` bytes (at least 4), for namespace `nsid`
    /// ([`Nsid::ALL`] or 0 for controller-wide pages).
    pub fn new(lid: u8, nsid: Nsid, len: u32) -> Self {
        GetLogPage {
            lid,
            nsid,
            len: len.max(4),
        }
    }

    /// Bytes the data buffer must hold.
    pub fn len_bytes(&self) -> u32 {
        self.len
    }

    /// The entry; `dptr` points at [`Self::len_bytes`] bytes.
    pub fn build(self, dptr: Dptr) -> Sqe {
        let GetLogPage { lid, nsid, len } = self;
        let numd = len.div_ceil(4) - 1;
        let mut sqe = Sqe {
            opc: admin::GET_LOG_PAGE,
            nsid: nsid.0,
            cdw10: lid as u32 | (numd & 0xffff) << 16,
            cdw11: numd >> 16,
            ..Sqe::default()
        };
        dptr.apply(&mut sqe);
        sqe
    }
}

/// True if the Commands Supported and Effects log page `page` marks I/O opcode `opc` as
/// supported (CSUPP, bit 0 of the opcode's dword at byte 1024 + 4 * opc).
pub fn commands_supported_io(page: &[u8], opc: u8) -> bool {
    page.get(1024 + 4 * opc as usize)
        .is_some_and(|b| b & 1 != 0)
}

/// Asynchronous Event Request (Base 2.0, 5.2): no fields; completes when an event occurs.
/// Keep at most `IdentifyController::aerl()` outstanding.
#[derive(Clone, Copy, Debug, Default)]
pub struct AsyncEventRequest;

impl AsyncEventRequest {
    /// An AER.
    pub fn new() -> Self {
        AsyncEventRequest
    }

    /// The entry.
    pub fn build(self) -> Sqe {
        Sqe {
            opc: admin::ASYNC_EVENT_REQUEST,
            ..Sqe::default()
        }
    }
}

/// Doorbell Buffer Config (Base 2.0, 5.8): PRP1 the shadow doorbell page, PRP2 the EventIdx
/// page (both page aligned). Only if `IdentifyController::oacs().doorbell_buffer_config()`.
#[derive(Clone, Copy, Debug)]
pub struct DoorbellBufferConfig {
    shadow: Iova,
    eventidx: Iova,
}

impl DoorbellBufferConfig {
    /// Use `shadow` and `eventidx` (one page each, page aligned).
    pub fn new(shadow: Iova, eventidx: Iova) -> Self {
        DoorbellBufferConfig { shadow, eventidx }
    }

    /// The entry.
    pub fn build(self) -> Sqe {
        let DoorbellBufferConfig { shadow, eventidx } = self;
        Sqe {
            opc: admin::DOORBELL_BUFFER_CONFIG,
            prp1: shadow.0,
            prp2: eventidx.0,
            ..Sqe::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PRP: Dptr = Dptr::Prp {
        prp1: 0x1000,
        prp2: 0x2000,
    };

    #[test]
    fn protection_metadata_verify_and_copy_layout() {
        let tags = PiTags {
            reftag: 0x0000_abcd_1234_5678,
            apptag: 0x1111,
            appmask: 0xff00,
        };
        let s = Write::new(Nsid(1), Lba(7), 2)
            .metadata(Iova(0x8000))
            .protection(Prinfo::CHECK_ALL, tags)
            .build(PRP);
        assert_eq!(s.mptr, 0x8000);
        assert_eq!(s.cdw12, 1 | 0b0111 << 26);
        assert_eq!(s.cdw14, 0x1234_5678);
        assert_eq!(s.cdw3, 0xabcd);
        assert_eq!(s.cdw15, 0xff00_1111);
        let r = Read::new(Nsid(1), Lba(7), 1)
            .protection(
                Prinfo {
                    pract: true,
                    ..Prinfo::default()
                },
                PiTags::default(),
            )
            .build(PRP);
        assert_eq!(r.cdw12, 1 << 29);
        let v = Verify::new(Nsid(3), Lba(9), 4)
            .protection(Prinfo::from_bits(0b0100), PiTags::default())
            .build();
        assert_eq!((v.opc, v.nsid, v.cdw10, v.cdw12), (0x0c, 3, 9, 3 | 1 << 28));
        let c = Copy::new(Nsid(1), Lba(0x1_0000_0002), 3)
            .fua(true)
            .build(PRP);
        assert_eq!(
            (c.opc, c.cdw10, c.cdw11, c.cdw12),
            (0x19, 2, 1, 2 | 1 << 30)
        );
        let e = CopyRange {
            slba: 0x55,
            nlb: 8,
            reftag: 0x55,
            apptag: 1,
            appmask: 0xffff,
        }
        .to_bytes();
        assert_eq!(&e[8..16], &0x55u64.to_le_bytes());
        assert_eq!(&e[16..18], &[7, 0]);
        assert_eq!(&e[24..32], &[0x55, 0, 0, 0, 1, 0, 0xff, 0xff]);
        let i = Identify::nvm_controller().build(PRP);
        assert_eq!((i.cdw10, i.nsid), (6, 0));
        assert_eq!(Identify::nvm_namespace(Nsid(2)).build(PRP).cdw10, 5);
    }

    #[test]
    fn read_and_write_layout() {
        let s = Read::new(Nsid(1), Lba(0x1_2345_6789), 8).build(PRP);
        assert_eq!(s.opc, 0x02);
        assert_eq!(s.cid, 0);
        assert_eq!(s.nsid, 1);
        assert_eq!((s.prp1, s.prp2), (0x1000, 0x2000));
        assert_eq!(s.cdw10, 0x2345_6789);
        assert_eq!(s.cdw11, 0x1);
        assert_eq!(s.cdw12, 7);
        assert_eq!(s.flags, 0);
        let w = Write::new(Nsid(2), Lba(5), 65_536)
            .fua(true)
            .build(Dptr::Sgl([0xaa, 0xbb]));
        assert_eq!(w.opc, 0x01);
        assert_eq!(w.cdw12, 0xffff | 1 << 30);
        assert_eq!(w.flags, 0b0100_0000);
        assert!(w.uses_sgl());
        assert_eq!((w.prp1, w.prp2), (0xaa, 0xbb));
    }

    #[test]
    #[should_panic(expected = "outside 1..=65536")]
    fn zero_blocks_panics() {
        let _ = Read::new(Nsid(1), Lba(0), 0).build(Dptr::None);
    }

    #[test]
    fn flush_and_write_zeroes_layout() {
        let f = Flush::new(Nsid::ALL).build();
        assert_eq!((f.opc, f.nsid, f.cdw10), (0x00, 0xffff_ffff, 0));
        let z = WriteZeroes::new(Nsid(1), Lba(1 << 33), 16)
            .deallocate(true)
            .fua(true)
            .build();
        assert_eq!(z.opc, 0x08);
        assert_eq!((z.cdw10, z.cdw11), (0, 2));
        assert_eq!(z.cdw12, 15 | 1 << 25 | 1 << 30);
        assert_eq!(z.prp1, 0);
    }

    #[test]
    fn dsm_layout_and_range_bytes() {
        let s = DatasetManagement::deallocate(Nsid(3), 2).build(PRP);
        assert_eq!(s.opc, 0x09);
        assert_eq!(s.nsid, 3);
        assert_eq!(s.cdw10, 1);
        assert_eq!(s.cdw11, 0b100);
        let r = DsmRange {
            context: 0x0102_0304,
            nlb: 8,
            slba: 0x1122_3344_5566_7788,
        };
        assert_eq!(
            r.to_bytes(),
            [
                4, 3, 2, 1, 8, 0, 0, 0, 0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11
            ]
        );
    }

    #[test]
    fn identify_layout() {
        let c = Identify::controller().build(PRP);
        assert_eq!((c.opc, c.nsid, c.cdw10), (0x06, 0, 1));
        assert_eq!(c.prp1, 0x1000);
        let n = Identify::namespace(Nsid(4)).build(PRP);
        assert_eq!((n.nsid, n.cdw10), (4, 0));
        let l = Identify::active_namespaces(Nsid(0)).build(PRP);
        assert_eq!((l.nsid, l.cdw10), (0, 2));
    }

    #[test]
    fn create_queues_layout() {
        let size = QueueSize::new(1024).unwrap();
        let cq = CreateIoCq::new(Qid(3), size, Iova(0x10_0000)).build();
        assert_eq!(cq.opc, 0x05);
        assert_eq!(cq.prp1, 0x10_0000);
        assert_eq!(cq.cdw10, 3 | 1023 << 16);
        assert_eq!(cq.cdw11, 0b01);
        let cq = CreateIoCq::new(Qid(3), size, Iova(0x10_0000))
            .interrupt_vector(Some(5))
            .build();
        assert_eq!(cq.cdw11, 0b11 | 5 << 16);
        let sq = CreateIoSq::new(Qid(3), size, Iova(0x20_0000), Qid(2))
            .priority(2)
            .build();
        assert_eq!(sq.opc, 0x01);
        assert_eq!(sq.prp1, 0x20_0000);
        assert_eq!(sq.cdw10, 3 | 1023 << 16);
        assert_eq!(sq.cdw11, 1 | 2 << 1 | 2 << 16);
        let d = DeleteIoSq::new(Qid(7)).build();
        assert_eq!((d.opc, d.cdw10), (0x00, 7));
        let d = DeleteIoCq::new(Qid(7)).build();
        assert_eq!((d.opc, d.cdw10), (0x04, 7));
    }

    #[test]
    fn features_layout() {
        let s = SetFeatures::number_of_queues(4, 2).build();
        assert_eq!(s.opc, 0x09);
        assert_eq!(s.cdw10, 0x07);
        assert_eq!(s.cdw11, 3 | 1 << 16);
        let s = SetFeatures::interrupt_coalescing(8, 10).build();
        assert_eq!((s.cdw10, s.cdw11), (0x08, 7 | 10 << 8));
        let s = SetFeatures::volatile_write_cache(true).build();
        assert_eq!((s.cdw10, s.cdw11), (0x06, 1));
        let g = GetFeatures::number_of_queues().build();
        assert_eq!((g.opc, g.cdw10, g.cdw11), (0x0a, 0x07, 0));
        let g = GetFeatures::volatile_write_cache().build();
        assert_eq!(g.cdw10, 0x06);
        assert_eq!(NumberOfQueues::from_result(63 | 31 << 16), (64, 32));
    }

    #[test]
    fn abort_log_dbbuf_layout() {
        let a = Abort::new(Qid(2), Cid(0x1234)).build();
        assert_eq!((a.opc, a.cdw10), (0x08, 2 | 0x1234 << 16));
        let e = GetLogPage::error_information(4);
        assert_eq!(e.len_bytes(), 256);
        let s = e.build(PRP);
        assert_eq!(s.opc, 0x02);
        assert_eq!(s.cdw10, 0x01 | 63 << 16);
        assert_eq!(s.cdw11, 0);
        let s = GetLogPage::error_information(4096).build(PRP); // 256 KiB: NUMD 0xffff
        assert_eq!((s.cdw10 >> 16, s.cdw11), (0xffff, 0));
        let s = GetLogPage::error_information(4097).build(PRP); // NUMD 0x1000f crosses into NUMDU
        assert_eq!((s.cdw10 >> 16, s.cdw11), (0x000f, 1));
        let s = GetLogPage::smart_health().build(PRP);
        assert_eq!((s.nsid, s.cdw10), (0xffff_ffff, 0x02 | 127 << 16));
        let s = GetLogPage::firmware_slot().build(PRP);
        assert_eq!((s.nsid, s.cdw10), (0xffff_ffff, 0x03 | 127 << 16));
        let s = GetLogPage::changed_namespaces().build(PRP);
        assert_eq!((s.nsid, s.cdw10), (0, 0x04 | 1023 << 16));
        let s = SetFeatures::async_event_config(0x1f, true, true).build();
        assert_eq!((s.cdw10, s.cdw11), (0x0b, 0x1f | 1 << 8 | 1 << 9));
        let s = SetFeatures::raw(0x04, 343).build();
        assert_eq!((s.opc, s.cdw10, s.cdw11), (0x09, 0x04, 343));
        let g = GetFeatures::fid(0x04).build();
        assert_eq!((g.opc, g.cdw10), (0x0a, 0x04));
        let a = AsyncEventRequest::new().build();
        assert_eq!((a.opc, a.cdw10, a.prp1), (0x0c, 0, 0));
        let d = DoorbellBufferConfig::new(Iova(0x3000), Iova(0x4000)).build();
        assert_eq!((d.opc, d.prp1, d.prp2), (0x7c, 0x3000, 0x4000));
    }
}
