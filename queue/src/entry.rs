//! Submission and completion queue entries (NVMe Base 2.0, 4.2 and 4.6).

use crate::status::Status;
use crate::types::Cid;

/// Submission queue entry (NVMe Base 2.0, 4.2, Figure 88).
///
/// Built by the command builders in [`crate::cmd`]; the queue sets `cid` when it places the
/// entry in a slot.
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
#[repr(C, align(64))]
pub struct Sqe {
    /// Opcode (CDW0 bits 7:0).
    pub opc: u8,
    /// Fused operation and PSDT (CDW0 bits 15:8): PSDT 00b PRPs, 01b SGL.
    pub flags: u8,
    /// Command identifier (CDW0 bits 31:16).
    pub cid: u16,
    /// Namespace identifier.
    pub nsid: u32,
    /// Command dword 2.
    pub cdw2: u32,
    /// Command dword 3.
    pub cdw3: u32,
    /// Metadata pointer.
    pub mptr: u64,
    /// Data pointer: PRP entry 1, or the first 8 bytes of the SGL descriptor.
    pub prp1: u64,
    /// Data pointer: PRP entry 2, or the last 8 bytes of the SGL descriptor.
    pub prp2: u64,
    /// Command dword 10.
    pub cdw10: u32,
    /// Command dword 11.
    pub cdw11: u32,
    /// Command dword 12.
    pub cdw12: u32,
    /// Command dword 13.
    pub cdw13: u32,
    /// Command dword 14.
    pub cdw14: u32,
    /// Command dword 15.
    pub cdw15: u32,
}

const _: () = assert!(core::mem::size_of::<Sqe>() == 64);
const _: () = assert!(core::mem::offset_of!(Sqe, nsid) == 4);
const _: () = assert!(core::mem::offset_of!(Sqe, mptr) == 16);
const _: () = assert!(core::mem::offset_of!(Sqe, prp1) == 24);
const _: () = assert!(core::mem::offset_of!(Sqe, prp2) == 32);
const _: () = assert!(core::mem::offset_of!(Sqe, cdw10) == 40);
const _: () = assert!(core::mem::offset_of!(Sqe, cdw15) == 60);

/// PSDT value in `Sqe::flags` (bits 7:6) for an SGL data pointer.
pub const PSDT_SGL: u8 = 0b01 << 6;

impl Sqe {
    /// The entry as eight little-endian quadwords, the form a ring slot is written in
    /// (one volatile store each; the device never sees a half-built slot because the
    /// doorbell is written only after all eight).
    #[inline]
    pub fn to_qwords(&self) -> [u64; 8] {
        let dw0 = self.opc as u32 | (self.flags as u32) << 8 | (self.cid as u32) << 16;
        [
            dw0 as u64 | (self.nsid as u64) << 32,
            self.cdw2 as u64 | (self.cdw3 as u64) << 32,
            self.mptr,
            self.prp1,
            self.prp2,
            self.cdw10 as u64 | (self.cdw11 as u64) << 32,
            self.cdw12 as u64 | (self.cdw13 as u64) << 32,
            self.cdw14 as u64 | (self.cdw15 as u64) << 32,
        ]
    }

    /// The inverse of [`Sqe::to_qwords`] (used by the emulated controller and by tests).
    pub fn from_qwords(q: [u64; 8]) -> Sqe {
        let dw0 = q[0] as u32;
        Sqe {
            opc: dw0 as u8,
            flags: (dw0 >> 8) as u8,
            cid: (dw0 >> 16) as u16,
            nsid: (q[0] >> 32) as u32,
            cdw2: q[1] as u32,
            cdw3: (q[1] >> 32) as u32,
            mptr: q[2],
            prp1: q[3],
            prp2: q[4],
            cdw10: q[5] as u32,
            cdw11: (q[5] >> 32) as u32,
            cdw12: q[6] as u32,
            cdw13: (q[6] >> 32) as u32,
            cdw14: q[7] as u32,
            cdw15: (q[7] >> 32) as u32,
        }
    }

    /// True if the data pointer is an SGL descriptor rather than PRPs.
    pub fn uses_sgl(&self) -> bool {
        self.flags >> 6 != 0
    }
}

/// Completion queue entry (NVMe Base 2.0, 4.6, Figure 89).
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
#[repr(C, align(16))]
pub struct Cqe {
    /// Command specific result (DW0).
    pub result: u32,
    /// DW1, reserved for most commands.
    pub rsvd: u32,
    /// Submission queue head pointer as the controller last consumed it.
    pub sqhd: u16,
    /// Submission queue the command came from.
    pub sqid: u16,
    /// Command identifier of the completed command.
    pub cid: u16,
    /// Phase tag (bit 0) and status field (bits 15:1).
    pub status: Status,
}

const _: () = assert!(core::mem::size_of::<Cqe>() == 16);
const _: () = assert!(core::mem::offset_of!(Cqe, sqhd) == 8);
const _: () = assert!(core::mem::offset_of!(Cqe, cid) == 12);
const _: () = assert!(core::mem::offset_of!(Cqe, status) == 14);

impl Cqe {
    /// Byte offset of DW3 (CID, phase, status) within the entry: the dword a poller reads
    /// first to see whether the slot is new.
    pub const DW3_OFFSET: usize = 12;

    /// Decodes an entry read from a ring slot as four little-endian dwords.
    #[inline]
    pub fn from_dwords(d: [u32; 4]) -> Cqe {
        Cqe {
            result: d[0],
            rsvd: d[1],
            sqhd: d[2] as u16,
            sqid: (d[2] >> 16) as u16,
            cid: d[3] as u16,
            status: Status::from_raw((d[3] >> 16) as u16),
        }
    }

    /// The entry as four dwords, the form the (emulated) controller writes.
    pub fn to_dwords(&self) -> [u32; 4] {
        [
            self.result,
            self.rsvd,
            self.sqhd as u32 | (self.sqid as u32) << 16,
            self.cid as u32 | (self.status.raw() as u32) << 16,
        ]
    }

    /// The phase tag of a slot from its DW3 alone.
    #[inline]
    pub fn phase_of_dw3(dw3: u32) -> bool {
        dw3 & (1 << 16) != 0
    }

    /// The command identifier.
    pub fn cid(&self) -> Cid {
        Cid(self.cid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqe_qwords_round_trip_and_layout() {
        let sqe = Sqe {
            opc: 0x02,
            flags: PSDT_SGL,
            cid: 0xbeef,
            nsid: 7,
            cdw2: 2,
            cdw3: 3,
            mptr: 0x1111,
            prp1: 0x2000,
            prp2: 0x3000,
            cdw10: 10,
            cdw11: 11,
            cdw12: 12,
            cdw13: 13,
            cdw14: 14,
            cdw15: 15,
        };
        let q = sqe.to_qwords();
        assert_eq!(q[0], 0x0000_0007_beef_4002);
        assert_eq!(q[3], 0x2000);
        assert_eq!(q[5], 11 << 32 | 10);
        assert_eq!(Sqe::from_qwords(q), sqe);
        assert!(sqe.uses_sgl());
    }

    #[test]
    fn cqe_dwords_round_trip() {
        let d = [0xdead_beef, 0, 5 | 3 << 16, 0x0042 | (0x0027u32 << 16)];
        let c = Cqe::from_dwords(d);
        assert_eq!(c.result, 0xdead_beef);
        assert_eq!(c.sqhd, 5);
        assert_eq!(c.sqid, 3);
        assert_eq!(c.cid(), Cid(0x42));
        assert!(c.status.phase());
        assert_eq!(c.status.sc(), 0x13);
        assert!(Cqe::phase_of_dw3(d[3]));
        assert_eq!(c.to_dwords(), d);
    }
}
