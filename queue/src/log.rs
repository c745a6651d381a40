//! Log pages as typed structures (NVMe Base 2.0, 5.16.1): SMART / Health Information
//! (02h), Error Information (01h) and Firmware Slot Information (03h), parsed from the
//! bytes Get Log Page returned, at the spec's offsets; and the features Get Features reads
//! most often, decoded.

use crate::opcode::feature;
use crate::status::Status;

/// A log page that is too short for its layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{page} log page is {got} bytes; its layout needs {need}")]
pub struct LogError {
    /// Which page.
    pub page: &'static str,
    /// Bytes given.
    pub got: usize,
    /// Bytes needed.
    pub need: usize,
}

fn check(page: &'static str, b: &[u8], need: usize) -> Result<(), LogError> {
    if b.len() < need {
        return Err(LogError {
            page,
            got: b.len(),
            need,
        });
    }
    Ok(())
}

fn u16_at(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}

fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"))
}

fn u128_at(b: &[u8], o: usize) -> u128 {
    u128::from_le_bytes(b[o..o + 16].try_into().expect("16 bytes"))
}

/// The Critical Warning byte of the SMART / Health log (Base 2.0, Figure 207, byte 0).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CriticalWarning(pub u8);

impl CriticalWarning {
    /// Bit 0: available spare below the threshold.
    pub fn spare_below_threshold(self) -> bool {
        self.0 & 1 != 0
    }
    /// Bit 1: a temperature is over an over-temperature or under an under-temperature
    /// threshold.
    pub fn temperature(self) -> bool {
        self.0 & 2 != 0
    }
    /// Bit 2: NVM subsystem reliability degraded (media errors, internal errors).
    pub fn reliability_degraded(self) -> bool {
        self.0 & 4 != 0
    }
    /// Bit 3: all media are read only.
    pub fn read_only(self) -> bool {
        self.0 & 8 != 0
    }
    /// Bit 4: the volatile memory backup device failed.
    pub fn volatile_backup_failed(self) -> bool {
        self.0 & 16 != 0
    }
    /// Bit 5: the persistent memory region became read only or unreliable.
    pub fn pmr_read_only(self) -> bool {
        self.0 & 32 != 0
    }
    /// No warning at all.
    pub fn is_clear(self) -> bool {
        self.0 == 0
    }
    /// The names of the bits that are set, for messages.
    pub fn names(self) -> Vec<&'static str> {
        let all = [
            (
                self.spare_below_threshold(),
                "available spare below threshold",
            ),
            (self.temperature(), "temperature threshold"),
            (self.reliability_degraded(), "reliability degraded"),
            (self.read_only(), "media read only"),
            (
                self.volatile_backup_failed(),
                "volatile memory backup failed",
            ),
            (self.pmr_read_only(), "persistent memory region read only"),
        ];
        all.iter().filter(|(on, _)| *on).map(|(_, n)| *n).collect()
    }
}

/// SMART / Health Information log (Log Identifier 02h, 512 bytes; Base 2.0, Figure 207).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SmartLog {
    /// Byte 0.
    pub critical_warning: CriticalWarning,
    /// Bytes 2:1: composite temperature, kelvin.
    pub temperature_kelvin: u16,
    /// Byte 3: available spare, percent.
    pub available_spare: u8,
    /// Byte 4: available spare threshold, percent.
    pub spare_threshold: u8,
    /// Byte 5: percentage of the rated endurance used (may exceed 100).
    pub percentage_used: u8,
    /// Byte 6: Endurance Group Critical Warning Summary.
    pub endurance_group_warning: u8,
    /// Bytes 47:32: data units read, in thousands of 512-byte units.
    pub data_units_read: u128,
    /// Bytes 63:48: data units written, in thousands of 512-byte units.
    pub data_units_written: u128,
    /// Bytes 79:64: read commands completed.
    pub host_read_commands: u128,
    /// Bytes 95:80: write commands completed.
    pub host_write_commands: u128,
    /// Bytes 111:96: minutes the controller was busy with I/O.
    pub controller_busy_minutes: u128,
    /// Bytes 127:112.
    pub power_cycles: u128,
    /// Bytes 143:128.
    pub power_on_hours: u128,
    /// Bytes 159:144.
    pub unsafe_shutdowns: u128,
    /// Bytes 175:160: unrecovered data integrity errors.
    pub media_errors: u128,
    /// Bytes 191:176: Error Information log entries over the controller's life.
    pub error_log_entries: u128,
    /// Bytes 195:192: minutes above the warning composite temperature threshold.
    pub warning_temperature_minutes: u32,
    /// Bytes 199:196: minutes above the critical composite temperature threshold.
    pub critical_temperature_minutes: u32,
    /// Bytes 215:200: temperature sensors 1 to 8, kelvin (0 = not implemented).
    pub temperature_sensors: [u16; 8],
}

impl SmartLog {
    /// Bytes of the page.
    pub const LEN: usize = 512;

    /// Parses the page.
    ///
    /// # Errors
    ///
    /// [`LogError`] if `b` is shorter than 512 bytes.
    pub fn from_bytes(b: &[u8]) -> Result<SmartLog, LogError> {
        check("SMART / Health", b, Self::LEN)?;
        let mut sensors = [0u16; 8];
        for (i, s) in sensors.iter_mut().enumerate() {
            *s = u16_at(b, 200 + 2 * i);
        }
        Ok(SmartLog {
            critical_warning: CriticalWarning(b[0]),
            temperature_kelvin: u16_at(b, 1),
            available_spare: b[3],
            spare_threshold: b[4],
            percentage_used: b[5],
            endurance_group_warning: b[6],
            data_units_read: u128_at(b, 32),
            data_units_written: u128_at(b, 48),
            host_read_commands: u128_at(b, 64),
            host_write_commands: u128_at(b, 80),
            controller_busy_minutes: u128_at(b, 96),
            power_cycles: u128_at(b, 112),
            power_on_hours: u128_at(b, 128),
            unsafe_shutdowns: u128_at(b, 144),
            media_errors: u128_at(b, 160),
            error_log_entries: u128_at(b, 176),
            warning_temperature_minutes: u32_at(b, 192),
            critical_temperature_minutes: u32_at(b, 196),
            temperature_sensors: sensors,
        })
    }

    /// The composite temperature in degrees Celsius.
    pub fn temperature_celsius(&self) -> i32 {
        self.temperature_kelvin as i32 - 273
    }

    /// Bytes read: data units are thousands of 512-byte units.
    pub fn bytes_read(&self) -> u128 {
        self.data_units_read * 512_000
    }

    /// Bytes written.
    pub fn bytes_written(&self) -> u128 {
        self.data_units_written * 512_000
    }
}

/// One Error Information log entry (Log Identifier 01h, 64 bytes each; Base 2.0, Figure
/// 205).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ErrorLogEntry {
    /// Bytes 7:0: a unique, increasing count; 0 means the entry is empty.
    pub error_count: u64,
    /// Bytes 9:8: the submission queue of the command (FFFFh: none).
    pub sqid: u16,
    /// Bytes 11:10: its command identifier (FFFFh: none).
    pub cid: u16,
    /// Bytes 13:12: the status it completed with (bits 15:1; the phase bit is dropped).
    pub status: Status,
    /// Bytes 15:14: byte (bits 7:0) and bit (bits 10:8) of the command in error (FFFFh:
    /// none).
    pub parameter_location: u16,
    /// Bytes 23:16: the first LBA in error.
    pub lba: u64,
    /// Bytes 27:24: the namespace.
    pub nsid: u32,
    /// Byte 28: vendor specific log page available.
    pub vendor_specific: u8,
    /// Byte 29: transport type.
    pub transport_type: u8,
    /// Bytes 39:32: command specific information.
    pub command_specific: u64,
}

impl ErrorLogEntry {
    /// Bytes of one entry.
    pub const LEN: usize = 64;

    /// Parses one entry.
    ///
    /// # Errors
    ///
    /// [`LogError`] if `b` is shorter than 64 bytes.
    pub fn from_bytes(b: &[u8]) -> Result<ErrorLogEntry, LogError> {
        check("Error Information entry", b, Self::LEN)?;
        Ok(ErrorLogEntry {
            error_count: u64_at(b, 0),
            sqid: u16_at(b, 8),
            cid: u16_at(b, 10),
            status: Status::from_raw(u16_at(b, 12) & !1),
            parameter_location: u16_at(b, 14),
            lba: u64_at(b, 16),
            nsid: u32_at(b, 24),
            vendor_specific: b[28],
            transport_type: b[29],
            command_specific: u64_at(b, 32),
        })
    }

    /// Parses a whole page and keeps the entries in use (error count not 0), newest
    /// first as the controller returns them.
    ///
    /// # Errors
    ///
    /// [`LogError`] if the page is not a whole number of entries.
    pub fn parse_page(b: &[u8]) -> Result<Vec<ErrorLogEntry>, LogError> {
        if b.len() % Self::LEN != 0 {
            return Err(LogError {
                page: "Error Information",
                got: b.len(),
                need: b.len().div_ceil(Self::LEN) * Self::LEN,
            });
        }
        let mut out = Vec::new();
        for chunk in b.chunks_exact(Self::LEN) {
            let e = Self::from_bytes(chunk)?;
            if e.error_count != 0 {
                out.push(e);
            }
        }
        Ok(out)
    }
}

/// Firmware Slot Information log (Log Identifier 03h, 512 bytes; Base 2.0, Figure 209).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct FirmwareSlotLog {
    /// AFI bits 2:0: the slot the running firmware came from (1..=7).
    pub active_slot: u8,
    /// AFI bits 6:4: the slot that will be activated at the next reset (0 = none chosen).
    pub next_slot: u8,
    /// FRS1..FRS7 (bytes 15:8 .. 63:56): the revision in each slot, trimmed; `None` where
    /// a slot is empty (all zero bytes).
    pub slots: [Option<String>; 7],
}

impl FirmwareSlotLog {
    /// Bytes of the page.
    pub const LEN: usize = 512;

    /// Parses the page.
    ///
    /// # Errors
    ///
    /// [`LogError`] if `b` is shorter than 512 bytes.
    pub fn from_bytes(b: &[u8]) -> Result<FirmwareSlotLog, LogError> {
        check("Firmware Slot Information", b, Self::LEN)?;
        let mut slots: [Option<String>; 7] = Default::default();
        for (i, s) in slots.iter_mut().enumerate() {
            let raw = &b[8 + 8 * i..16 + 8 * i];
            if raw.iter().any(|&c| c != 0) {
                let t: String = raw
                    .iter()
                    .map(|&c| {
                        if c.is_ascii_graphic() || c == b' ' {
                            c as char
                        } else {
                            '?'
                        }
                    })
                    .collect();
                *s = Some(t.trim().to_string());
            }
        }
        Ok(FirmwareSlotLog {
            active_slot: b[0] & 7,
            next_slot: (b[0] >> 4) & 7,
            slots,
        })
    }
}

/// The features `nvme-dio get-feature` and [`decode_feature`] know (FID, name).
pub const COMMON_FEATURES: [(u8, &str); 9] = [
    (feature::ARBITRATION, "Arbitration"),
    (feature::POWER_MANAGEMENT, "Power Management"),
    (feature::TEMPERATURE_THRESHOLD, "Temperature Threshold"),
    (feature::ERROR_RECOVERY, "Error Recovery"),
    (feature::VOLATILE_WRITE_CACHE, "Volatile Write Cache"),
    (feature::NUMBER_OF_QUEUES, "Number of Queues"),
    (feature::INTERRUPT_COALESCING, "Interrupt Coalescing"),
    (feature::WRITE_ATOMICITY, "Write Atomicity Normal"),
    (
        feature::ASYNC_EVENT_CONFIG,
        "Asynchronous Event Configuration",
    ),
];

/// A feature's name, if it is one of [`COMMON_FEATURES`] (or Interrupt Vector
/// Configuration).
pub fn feature_name(fid: u8) -> Option<&'static str> {
    if fid == feature::INTERRUPT_VECTOR_CONFIG {
        return Some("Interrupt Vector Configuration");
    }
    COMMON_FEATURES
        .iter()
        .find(|(f, _)| *f == fid)
        .map(|(_, n)| *n)
}

/// A feature's current value (Get Features DW0), decoded into named fields (Base 2.0,
/// 5.27.1): `[("field", value)]`, in the spec's order. Unknown features give `[]`.
pub fn decode_feature(fid: u8, dw0: u32) -> Vec<(&'static str, u64)> {
    let b = |lo: u32, bits: u32| ((dw0 >> lo) & ((1u64 << bits) as u32).wrapping_sub(1)) as u64;
    match fid {
        feature::ARBITRATION => vec![
            ("arbitration burst (log2)", b(0, 3)),
            ("low priority weight", b(8, 8) + 1),
            ("medium priority weight", b(16, 8) + 1),
            ("high priority weight", b(24, 8) + 1),
        ],
        feature::POWER_MANAGEMENT => vec![("power state", b(0, 5)), ("workload hint", b(5, 3))],
        feature::TEMPERATURE_THRESHOLD => vec![
            ("threshold (kelvin)", b(0, 16)),
            ("sensor", b(16, 4)),
            ("under threshold", b(20, 2)),
        ],
        feature::ERROR_RECOVERY => vec![
            ("time limited error recovery (100 ms)", b(0, 16)),
            ("deallocated or unwritten error", b(16, 1)),
        ],
        feature::VOLATILE_WRITE_CACHE => vec![("enabled", b(0, 1))],
        feature::NUMBER_OF_QUEUES => vec![
            ("submission queues", b(0, 16) + 1),
            ("completion queues", b(16, 16) + 1),
        ],
        feature::INTERRUPT_COALESCING => vec![
            ("aggregation threshold", b(0, 8) + 1),
            ("aggregation time (100 us)", b(8, 8)),
        ],
        feature::INTERRUPT_VECTOR_CONFIG => {
            vec![("vector", b(0, 16)), ("coalescing disabled", b(16, 1))]
        }
        feature::WRITE_ATOMICITY => vec![("disable normal", b(0, 1))],
        feature::ASYNC_EVENT_CONFIG => vec![
            ("SMART / health critical warnings", b(0, 8)),
            ("namespace attribute notices", b(8, 1)),
            ("firmware activation notices", b(9, 1)),
            ("telemetry log notices", b(10, 1)),
        ],
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smart_log_fields_sit_at_the_spec_offsets() {
        let mut p = vec![0u8; 512];
        p[0] = 0b0000_0110;
        p[1..3].copy_from_slice(&(273u16 + 45).to_le_bytes());
        p[3] = 97;
        p[4] = 10;
        p[5] = 3;
        p[32..48].copy_from_slice(&7u128.to_le_bytes());
        p[48..64].copy_from_slice(&9u128.to_le_bytes());
        p[64..80].copy_from_slice(&1000u128.to_le_bytes());
        p[80..96].copy_from_slice(&2000u128.to_le_bytes());
        p[112..128].copy_from_slice(&5u128.to_le_bytes());
        p[128..144].copy_from_slice(&(1u128 << 70).to_le_bytes());
        p[144..160].copy_from_slice(&2u128.to_le_bytes());
        p[160..176].copy_from_slice(&11u128.to_le_bytes());
        p[176..192].copy_from_slice(&13u128.to_le_bytes());
        p[192..196].copy_from_slice(&17u32.to_le_bytes());
        p[196..200].copy_from_slice(&19u32.to_le_bytes());
        p[200..202].copy_from_slice(&300u16.to_le_bytes());
        p[214..216].copy_from_slice(&310u16.to_le_bytes());
        let s = SmartLog::from_bytes(&p).unwrap();
        assert!(s.critical_warning.temperature() && s.critical_warning.reliability_degraded());
        assert!(!s.critical_warning.spare_below_threshold());
        assert_eq!(
            s.critical_warning.names(),
            ["temperature threshold", "reliability degraded"]
        );
        assert_eq!((s.temperature_kelvin, s.temperature_celsius()), (318, 45));
        assert_eq!(
            (s.available_spare, s.spare_threshold, s.percentage_used),
            (97, 10, 3)
        );
        assert_eq!((s.data_units_read, s.bytes_read()), (7, 7 * 512_000));
        assert_eq!(s.data_units_written, 9);
        assert_eq!((s.host_read_commands, s.host_write_commands), (1000, 2000));
        assert_eq!(s.power_cycles, 5);
        assert_eq!(s.power_on_hours, 1 << 70, "128-bit counters");
        assert_eq!(
            (s.unsafe_shutdowns, s.media_errors, s.error_log_entries),
            (2, 11, 13)
        );
        assert_eq!(
            (
                s.warning_temperature_minutes,
                s.critical_temperature_minutes
            ),
            (17, 19)
        );
        assert_eq!(s.temperature_sensors, [300, 0, 0, 0, 0, 0, 0, 310]);
        assert!(SmartLog::from_bytes(&p[..511]).is_err());
    }

    #[test]
    fn error_log_entries_and_empty_ones() {
        let mut p = vec![0u8; 3 * 64];
        // Entry 0: count 5, SQ 1, CID 0x42, LBA Out of Range (0/0x80) with DNR and phase 1.
        let st = Status::new(0, 0x80).with_dnr().with_phase(true).raw();
        p[0..8].copy_from_slice(&5u64.to_le_bytes());
        p[8..10].copy_from_slice(&1u16.to_le_bytes());
        p[10..12].copy_from_slice(&0x42u16.to_le_bytes());
        p[12..14].copy_from_slice(&st.to_le_bytes());
        p[14..16].copy_from_slice(&0xffffu16.to_le_bytes());
        p[16..24].copy_from_slice(&0x1234u64.to_le_bytes());
        p[24..28].copy_from_slice(&1u32.to_le_bytes());
        p[29] = 3;
        p[32..40].copy_from_slice(&9u64.to_le_bytes());
        // Entry 1 empty, entry 2: count 4.
        p[128..136].copy_from_slice(&4u64.to_le_bytes());
        let v = ErrorLogEntry::parse_page(&p).unwrap();
        assert_eq!(v.len(), 2, "the empty entry is skipped");
        let e = v[0];
        assert_eq!((e.error_count, e.sqid, e.cid), (5, 1, 0x42));
        assert_eq!(e.status, Status::new(0, 0x80).with_dnr(), "phase dropped");
        assert!(e.status.dnr());
        assert_eq!((e.parameter_location, e.lba, e.nsid), (0xffff, 0x1234, 1));
        assert_eq!((e.transport_type, e.command_specific), (3, 9));
        assert_eq!(v[1].error_count, 4);
        assert!(ErrorLogEntry::parse_page(&p[..100]).is_err());
    }

    #[test]
    fn firmware_slot_log() {
        let mut p = vec![0u8; 512];
        p[0] = 0x21; // active slot 1, next slot 2
        p[8..16].copy_from_slice(b"1.0     ");
        p[16..24].copy_from_slice(b"2.1b    ");
        let f = FirmwareSlotLog::from_bytes(&p).unwrap();
        assert_eq!((f.active_slot, f.next_slot), (1, 2));
        assert_eq!(f.slots[0].as_deref(), Some("1.0"));
        assert_eq!(f.slots[1].as_deref(), Some("2.1b"));
        assert!(f.slots[2..].iter().all(Option::is_none));
    }

    #[test]
    fn features_decode_by_the_spec() {
        assert_eq!(
            decode_feature(feature::NUMBER_OF_QUEUES, 63 | 31 << 16),
            [("submission queues", 64), ("completion queues", 32)]
        );
        assert_eq!(
            decode_feature(feature::INTERRUPT_COALESCING, 7 | 3 << 8),
            [
                ("aggregation threshold", 8),
                ("aggregation time (100 us)", 3)
            ]
        );
        assert_eq!(
            decode_feature(feature::TEMPERATURE_THRESHOLD, 343 | 1 << 20),
            [
                ("threshold (kelvin)", 343),
                ("sensor", 0),
                ("under threshold", 1)
            ]
        );
        assert_eq!(
            decode_feature(feature::ASYNC_EVENT_CONFIG, 0x3ff)[..3],
            [
                ("SMART / health critical warnings", 0xff),
                ("namespace attribute notices", 1),
                ("firmware activation notices", 1)
            ]
        );
        assert_eq!(
            decode_feature(feature::VOLATILE_WRITE_CACHE, 1),
            [("enabled", 1)]
        );
        assert_eq!(feature_name(0x0b), Some("Asynchronous Event Configuration"));
        assert!(decode_feature(0x7f, 1).is_empty());
    }
}
