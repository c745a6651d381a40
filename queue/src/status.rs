//! The completion status field (NVMe Base 2.0, 4.6.1).

use core::fmt;

/// Status field of a completion, including the phase tag in bit 0 as it sits in DW3.
///
/// Layout: P (0), SC (8:1), SCT (11:9), CRD (13:12), M (14), DNR (15).
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
#[repr(transparent)]
pub struct Status(u16);

/// Status code types (SCT).
pub mod sct {
    /// Generic command status.
    pub const GENERIC: u8 = 0;
    /// Command specific status.
    pub const COMMAND_SPECIFIC: u8 = 1;
    /// Media and data integrity errors.
    pub const MEDIA: u8 = 2;
    /// Path related status.
    pub const PATH: u8 = 3;
    /// Vendor specific.
    pub const VENDOR: u8 = 7;
}

/// Generic status codes (SCT 0) the driver acts on by name.
pub mod sc {
    /// Successful Completion.
    pub const SUCCESS: u8 = 0x00;
    /// Invalid Command Opcode.
    pub const INVALID_OPCODE: u8 = 0x01;
    /// Invalid Field in Command.
    pub const INVALID_FIELD: u8 = 0x02;
    /// Data Transfer Error.
    pub const DATA_TRANSFER_ERROR: u8 = 0x04;
    /// Internal Error.
    pub const INTERNAL_ERROR: u8 = 0x06;
    /// Command Abort Requested.
    pub const ABORT_REQUESTED: u8 = 0x07;
    /// Command Aborted due to SQ Deletion.
    pub const ABORTED_SQ_DELETION: u8 = 0x08;
    /// Invalid Namespace or Format.
    pub const INVALID_NAMESPACE: u8 = 0x0b;
    /// Invalid PRP Offset.
    pub const INVALID_PRP_OFFSET: u8 = 0x13;
    /// Data SGL Length Invalid.
    pub const SGL_LENGTH_INVALID: u8 = 0x0f;
    /// SGL Descriptor Type Invalid.
    pub const SGL_DESCRIPTOR_TYPE_INVALID: u8 = 0x11;
    /// LBA Out of Range.
    pub const LBA_OUT_OF_RANGE: u8 = 0x80;
    /// Capacity Exceeded.
    pub const CAPACITY_EXCEEDED: u8 = 0x81;
    /// Namespace Not Ready.
    pub const NAMESPACE_NOT_READY: u8 = 0x82;
}

/// Command specific status codes (SCT 1).
pub mod csc {
    /// Completion Queue Invalid.
    pub const CQ_INVALID: u8 = 0x00;
    /// Invalid Queue Identifier.
    pub const INVALID_QID: u8 = 0x01;
    /// Invalid Queue Size.
    pub const INVALID_QUEUE_SIZE: u8 = 0x02;
    /// Abort Command Limit Exceeded.
    pub const ABORT_LIMIT: u8 = 0x03;
    /// Invalid Interrupt Vector.
    pub const INVALID_VECTOR: u8 = 0x08;
}

impl Status {
    /// Successful completion, phase 0.
    pub const SUCCESS: Status = Status(0);

    /// From the raw 16 bits of DW3 31:16.
    #[inline]
    pub const fn from_raw(raw: u16) -> Status {
        Status(raw)
    }

    /// A status with the given type and code (phase 0, no flags).
    pub const fn new(sct: u8, sc: u8) -> Status {
        Status(((sct as u16 & 0x7) << 9) | ((sc as u16) << 1))
    }

    /// The same status with Do Not Retry set.
    pub const fn with_dnr(self) -> Status {
        Status(self.0 | 1 << 15)
    }

    /// The same status with the given phase tag.
    #[inline]
    pub const fn with_phase(self, phase: bool) -> Status {
        Status((self.0 & !1) | phase as u16)
    }

    /// The raw 16 bits.
    #[inline]
    pub const fn raw(self) -> u16 {
        self.0
    }

    /// Phase tag.
    #[inline]
    pub const fn phase(self) -> bool {
        self.0 & 1 != 0
    }

    /// Status code.
    #[inline]
    pub const fn sc(self) -> u8 {
        (self.0 >> 1) as u8
    }

    /// Status code type.
    #[inline]
    pub const fn sct(self) -> u8 {
        ((self.0 >> 9) & 0x7) as u8
    }

    /// Command retry delay index.
    pub const fn crd(self) -> u8 {
        ((self.0 >> 12) & 0x3) as u8
    }

    /// More status information in the Error Information log.
    pub const fn more(self) -> bool {
        self.0 & (1 << 14) != 0
    }

    /// Do Not Retry.
    pub const fn dnr(self) -> bool {
        self.0 & (1 << 15) != 0
    }

    /// True for Successful Completion (phase ignored).
    #[inline]
    pub const fn is_success(self) -> bool {
        self.0 & 0xfffe == 0
    }

    /// The spec's name for this status, if it is one we know.
    pub fn name(self) -> &'static str {
        match (self.sct(), self.sc()) {
            (sct::GENERIC, code) => match code {
                0x00 => "Successful Completion",
                0x01 => "Invalid Command Opcode",
                0x02 => "Invalid Field in Command",
                0x03 => "Command ID Conflict",
                0x04 => "Data Transfer Error",
                0x05 => "Commands Aborted due to Power Loss Notification",
                0x06 => "Internal Error",
                0x07 => "Command Abort Requested",
                0x08 => "Command Aborted due to SQ Deletion",
                0x09 => "Command Aborted due to Failed Fused Command",
                0x0a => "Command Aborted due to Missing Fused Command",
                0x0b => "Invalid Namespace or Format",
                0x0c => "Command Sequence Error",
                0x0d => "Invalid SGL Segment Descriptor",
                0x0e => "Invalid Number of SGL Descriptors",
                0x0f => "Data SGL Length Invalid",
                0x10 => "Metadata SGL Length Invalid",
                0x11 => "SGL Descriptor Type Invalid",
                0x12 => "Invalid Use of Controller Memory Buffer",
                0x13 => "Invalid PRP Offset",
                0x14 => "Atomic Write Unit Exceeded",
                0x15 => "Operation Denied",
                0x16 => "SGL Offset Invalid",
                0x18 => "Host Identifier Inconsistent Format",
                0x19 => "Keep Alive Timer Expired",
                0x1a => "Keep Alive Timeout Invalid",
                0x1b => "Command Aborted due to Preempt and Abort",
                0x1c => "Sanitize Failed",
                0x1d => "Sanitize In Progress",
                0x1e => "SGL Data Block Granularity Invalid",
                0x1f => "Command Not Supported for Queue in CMB",
                0x20 => "Namespace is Write Protected",
                0x21 => "Command Interrupted",
                0x22 => "Transient Transport Error",
                0x80 => "LBA Out of Range",
                0x81 => "Capacity Exceeded",
                0x82 => "Namespace Not Ready",
                0x83 => "Reservation Conflict",
                0x84 => "Format In Progress",
                _ => "unknown generic status",
            },
            (sct::COMMAND_SPECIFIC, code) => match code {
                0x00 => "Completion Queue Invalid",
                0x01 => "Invalid Queue Identifier",
                0x02 => "Invalid Queue Size",
                0x03 => "Abort Command Limit Exceeded",
                0x05 => "Asynchronous Event Request Limit Exceeded",
                0x06 => "Invalid Firmware Slot",
                0x07 => "Invalid Firmware Image",
                0x08 => "Invalid Interrupt Vector",
                0x09 => "Invalid Log Page",
                0x0a => "Invalid Format",
                0x0c => "Invalid Queue Deletion",
                0x0d => "Feature Identifier Not Saveable",
                0x0e => "Feature Not Changeable",
                0x0f => "Feature Not Namespace Specific",
                0x80 => "Conflicting Attributes",
                0x81 => "Invalid Protection Information",
                0x82 => "Attempted Write to Read Only Range",
                _ => "unknown command specific status",
            },
            (sct::MEDIA, code) => match code {
                0x80 => "Write Fault",
                0x81 => "Unrecovered Read Error",
                0x82 => "End-to-end Guard Check Error",
                0x83 => "End-to-end Application Tag Check Error",
                0x84 => "End-to-end Reference Tag Check Error",
                0x85 => "Compare Failure",
                0x86 => "Access Denied",
                0x87 => "Deallocated or Unwritten Logical Block",
                _ => "unknown media error",
            },
            (sct::PATH, _) => "path related status",
            (sct::VENDOR, _) => "vendor specific status",
            _ => "reserved status code type",
        }
    }
}

impl fmt::Display for Status {
    /// `Invalid PRP Offset (sct 0, sc 0x13, DNR)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (sct {}, sc {:#04x}",
            self.name(),
            self.sct(),
            self.sc()
        )?;
        if self.more() {
            f.write_str(", More")?;
        }
        if self.dnr() {
            f.write_str(", DNR")?;
        }
        f.write_str(")")
    }
}

impl fmt::Debug for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Status({self}, phase {})", self.phase() as u8)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_decode_from_the_spec_layout() {
        // DNR | More | CRD=2 | SCT=2 | SC=0x81 | P
        let s = Status::from_raw(1 << 15 | 1 << 14 | 2 << 12 | 2 << 9 | 0x81 << 1 | 1);
        assert!(s.dnr() && s.more() && s.phase());
        assert_eq!((s.sct(), s.sc(), s.crd()), (2, 0x81, 2));
        assert!(!s.is_success());
        assert_eq!(s.name(), "Unrecovered Read Error");
        assert!(Status::SUCCESS.with_phase(true).is_success());
    }

    #[test]
    fn display_names_the_status() {
        let s = Status::new(sct::GENERIC, sc::INVALID_PRP_OFFSET).with_dnr();
        assert_eq!(s.to_string(), "Invalid PRP Offset (sct 0, sc 0x13, DNR)");
        let q = Status::new(sct::COMMAND_SPECIFIC, csc::INVALID_QUEUE_SIZE);
        assert_eq!(q.to_string(), "Invalid Queue Size (sct 1, sc 0x02)");
        assert_eq!(
            Status::new(0, sc::LBA_OUT_OF_RANGE).name(),
            "LBA Out of Range"
        );
    }
}
