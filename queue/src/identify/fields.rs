//! Every field of Identify Controller and Identify Namespace (NVM command set), as tables:
//! the spec's short name (the one nvme-cli prints), byte offset, width, how to show it, and
//! the names of the bits that matter in bit fields. `nvme-dio identify` prints and serialises
//! from these tables, so a field is added in one place.
//!
//! Offsets: Identify Controller, NVMe Base 2.0 Figure 275 (NVMe-MI fields 253..=255 from
//! Base 2.0 as well; reserved ranges are left out); Identify Namespace, NVM Command Set 1.0
//! Figure 97 (KPIOS and NULBAF from NVM Command Set 1.0b). Power state descriptors, Base 2.0
//! Figure 276; LBA formats, NVM Command Set Figure 98.

use super::{IDENTIFY_LEN, IdentifyController, IdentifyNamespace, LbaFormat};

/// How a field is shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldKind {
    /// A count or size: little endian, decimal (up to 16 bytes).
    Num,
    /// A bit field or an identifier number: little endian, hex.
    Hex,
    /// ASCII, space or NUL padded (serial, model, firmware, NQN).
    Ascii,
    /// A byte string shown as hex in byte order (FGUID, NGUID, EUI64).
    Bytes,
}

/// One field of an Identify page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FieldDef {
    /// The spec's short name, lower case (`vid`, `oacs`, `nsze`).
    pub name: &'static str,
    /// First byte.
    pub offset: usize,
    /// Width in bytes.
    pub len: usize,
    /// How to show it.
    pub kind: FieldKind,
    /// The spec's long name.
    pub title: &'static str,
    /// Names of single bits worth naming (bit number, name).
    pub bits: &'static [(u8, &'static str)],
}

/// A field's value read from a page.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FieldValue {
    /// [`FieldKind::Num`] and [`FieldKind::Hex`] fields.
    Int(u128),
    /// [`FieldKind::Ascii`] fields, trimmed.
    Text(String),
    /// [`FieldKind::Bytes`] fields.
    Bytes(Vec<u8>),
}

impl FieldDef {
    /// The value of this field in `page`.
    ///
    /// # Panics
    /// If the field lies outside 4096 bytes (the tables are checked by a test).
    pub fn read(&self, page: &[u8; IDENTIFY_LEN]) -> FieldValue {
        let b = &page[self.offset..self.offset + self.len];
        match self.kind {
            FieldKind::Num | FieldKind::Hex => {
                let mut v = [0u8; 16];
                v[..b.len()].copy_from_slice(b);
                FieldValue::Int(u128::from_le_bytes(v))
            }
            FieldKind::Ascii => FieldValue::Text(super::ascii(b)),
            FieldKind::Bytes => FieldValue::Bytes(b.to_vec()),
        }
    }

    /// The value as nvme-cli prints it: decimal, `0x` hex, text, or hex bytes.
    pub fn show(&self, page: &[u8; IDENTIFY_LEN]) -> String {
        match (self.kind, self.read(page)) {
            (FieldKind::Hex, FieldValue::Int(v)) => format!("{v:#x}"),
            (_, FieldValue::Int(v)) => v.to_string(),
            (_, FieldValue::Text(t)) => t,
            (_, FieldValue::Bytes(b)) => b.iter().map(|x| format!("{x:02x}")).collect(),
        }
    }

    /// The names of the named bits that are set in `page`.
    pub fn set_bits(&self, page: &[u8; IDENTIFY_LEN]) -> Vec<&'static str> {
        match self.read(page) {
            FieldValue::Int(v) => self
                .bits
                .iter()
                .filter(|(b, _)| v >> b & 1 == 1)
                .map(|&(_, n)| n)
                .collect(),
            _ => Vec::new(),
        }
    }
}

const fn f(
    name: &'static str,
    offset: usize,
    len: usize,
    kind: FieldKind,
    title: &'static str,
) -> FieldDef {
    FieldDef {
        name,
        offset,
        len,
        kind,
        title,
        bits: &[],
    }
}

const fn fb(
    name: &'static str,
    offset: usize,
    len: usize,
    title: &'static str,
    bits: &'static [(u8, &'static str)],
) -> FieldDef {
    FieldDef {
        name,
        offset,
        len,
        kind: FieldKind::Hex,
        title,
        bits,
    }
}

use FieldKind::{Ascii, Bytes, Hex, Num};

/// Identify Controller, in byte order (NVMe Base 2.0 Figure 275). Power state descriptors
/// (bytes 3071:2048) are decoded by [`IdentifyController::power_states`].
#[rustfmt::skip]
pub const CONTROLLER_FIELDS: &[FieldDef] = &[
    f("vid", 0, 2, Hex, "PCI Vendor ID"),
    f("ssvid", 2, 2, Hex, "PCI Subsystem Vendor ID"),
    f("sn", 4, 20, Ascii, "Serial Number"),
    f("mn", 24, 40, Ascii, "Model Number"),
    f("fr", 64, 8, Ascii, "Firmware Revision"),
    f("rab", 72, 1, Num, "Recommended Arbitration Burst (log2 commands)"),
    f("ieee", 73, 3, Hex, "IEEE OUI Identifier"),
    fb("cmic", 76, 1, "Controller Multi-Path I/O and Namespace Sharing Capabilities", &[
        (0, "multiple ports"),
        (1, "multiple controllers"),
        (2, "SR-IOV virtual function"),
        (3, "ANA reporting")]),
    f("mdts", 77, 1, Num, "Maximum Data Transfer Size (log2 of CAP.MPSMIN units, 0 = no limit)"),
    f("cntlid", 78, 2, Hex, "Controller ID"),
    f("ver", 80, 4, Hex, "Version"),
    f("rtd3r", 84, 4, Num, "RTD3 Resume Latency (us)"),
    f("rtd3e", 88, 4, Num, "RTD3 Entry Latency (us)"),
    fb("oaes", 92, 4, "Optional Asynchronous Events Supported", &[
        (8, "Namespace Attribute Notices"),
        (9, "Firmware Activation Notices"),
        (11, "Asymmetric Namespace Access Change Notices"),
        (12, "Predictable Latency Event Aggregate Log Change Notices"),
        (13, "LBA Status Information Notices"),
        (14, "Endurance Group Event Aggregate Log Change Notices")]),
    fb("ctratt", 96, 4, "Controller Attributes", &[
        (0, "128-bit Host Identifier"),
        (1, "Non-Operational Power State Permissive Mode"),
        (2, "NVM Sets"),
        (3, "Read Recovery Levels"),
        (4, "Endurance Groups"),
        (5, "Predictable Latency Mode"),
        (6, "Traffic Based Keep Alive"),
        (7, "Namespace Granularity"),
        (8, "SQ Associations"),
        (9, "UUID List")]),
    f("rrls", 100, 2, Hex, "Read Recovery Levels Supported"),
    f("cntrltype", 111, 1, Num, "Controller Type (1 I/O, 2 discovery, 3 administrative)"),
    f("fguid", 112, 16, Bytes, "FRU Globally Unique Identifier"),
    f("crdt1", 128, 2, Num, "Command Retry Delay Time 1 (100 ms)"),
    f("crdt2", 130, 2, Num, "Command Retry Delay Time 2 (100 ms)"),
    f("crdt3", 132, 2, Num, "Command Retry Delay Time 3 (100 ms)"),
    f("nvmsr", 253, 1, Hex, "NVM Subsystem Report"),
    f("vwci", 254, 1, Hex, "VPD Write Cycle Information"),
    f("mec", 255, 1, Hex, "Management Endpoint Capabilities"),
    fb("oacs", 256, 2, "Optional Admin Command Support", &[
        (0, "Security Send/Receive"),
        (1, "Format NVM"),
        (2, "Firmware Download/Commit"),
        (3, "Namespace Management"),
        (4, "Device Self-test"),
        (5, "Directives"),
        (6, "NVMe-MI Send/Receive"),
        (7, "Virtualization Management"),
        (8, "Doorbell Buffer Config"),
        (9, "Get LBA Status"),
        (10, "Command and Feature Lockdown")]),
    f("acl", 258, 1, Num, "Abort Command Limit (zero-based)"),
    f("aerl", 259, 1, Num, "Asynchronous Event Request Limit (zero-based)"),
    fb("frmw", 260, 1, "Firmware Updates (bits 3:1 = slots)", &[
        (0, "slot 1 read-only"),
        (4, "activation without reset")]),
    fb("lpa", 261, 1, "Log Page Attributes", &[
        (0, "SMART log per namespace"),
        (1, "Commands Supported and Effects log"),
        (2, "extended data for Get Log Page"),
        (3, "Telemetry logs"),
        (4, "Persistent Event log")]),
    f("elpe", 262, 1, Num, "Error Log Page Entries (zero-based)"),
    f("npss", 263, 1, Num, "Number of Power States Support (zero-based)"),
    f("avscc", 264, 1, Hex, "Admin Vendor Specific Command Configuration"),
    f("apsta", 265, 1, Hex, "Autonomous Power State Transition Attributes"),
    f("wctemp", 266, 2, Num, "Warning Composite Temperature Threshold (K)"),
    f("cctemp", 268, 2, Num, "Critical Composite Temperature Threshold (K)"),
    f("mtfa", 270, 2, Num, "Maximum Time for Firmware Activation (100 ms)"),
    f("hmpre", 272, 4, Num, "Host Memory Buffer Preferred Size (4 KiB)"),
    f("hmmin", 276, 4, Num, "Host Memory Buffer Minimum Size (4 KiB)"),
    f("tnvmcap", 280, 16, Num, "Total NVM Capacity (bytes)"),
    f("unvmcap", 296, 16, Num, "Unallocated NVM Capacity (bytes)"),
    f("rpmbs", 312, 4, Hex, "Replay Protected Memory Block Support"),
    f("edstt", 316, 2, Num, "Extended Device Self-test Time (minutes)"),
    f("dsto", 318, 1, Hex, "Device Self-test Options"),
    f("fwug", 319, 1, Num, "Firmware Update Granularity (4 KiB)"),
    f("kas", 320, 2, Num, "Keep Alive Support (100 ms)"),
    f("hctma", 322, 2, Hex, "Host Controlled Thermal Management Attributes"),
    f("mntmt", 324, 2, Num, "Minimum Thermal Management Temperature (K)"),
    f("mxtmt", 326, 2, Num, "Maximum Thermal Management Temperature (K)"),
    fb("sanicap", 328, 4, "Sanitize Capabilities", &[
        (0, "Crypto Erase"),
        (1, "Block Erase"),
        (2, "Overwrite")]),
    f("hmminds", 332, 4, Num, "Host Memory Buffer Minimum Descriptor Entry Size (4 KiB)"),
    f("hmmaxd", 336, 2, Num, "Host Memory Maximum Descriptors Entries"),
    f("nsetidmax", 338, 2, Num, "NVM Set Identifier Maximum"),
    f("endgidmax", 340, 2, Num, "Endurance Group Identifier Maximum"),
    f("anatt", 342, 1, Num, "ANA Transition Time (s)"),
    f("anacap", 343, 1, Hex, "Asymmetric Namespace Access Capabilities"),
    f("anagrpmax", 344, 4, Num, "ANA Group Identifier Maximum"),
    f("nanagrpid", 348, 4, Num, "Number of ANA Group Identifiers"),
    f("pels", 352, 4, Num, "Persistent Event Log Size (64 KiB)"),
    f("domainid", 356, 2, Num, "Domain Identifier"),
    f("megcap", 368, 16, Num, "Max Endurance Group Capacity (bytes)"),
    f("sqes", 512, 1, Hex, "Submission Queue Entry Size (max:min, log2 bytes)"),
    f("cqes", 513, 1, Hex, "Completion Queue Entry Size (max:min, log2 bytes)"),
    f("maxcmd", 514, 2, Num, "Maximum Outstanding Commands"),
    f("nn", 516, 4, Num, "Number of Namespaces"),
    fb("oncs", 520, 2, "Optional NVM Command Support", &[
        (0, "Compare"),
        (1, "Write Uncorrectable"),
        (2, "Dataset Management"),
        (3, "Write Zeroes"),
        (4, "Save/Select in Features"),
        (5, "Reservations"),
        (6, "Timestamp"),
        (7, "Verify"),
        (8, "Copy")]),
    fb("fuses", 522, 2, "Fused Operation Support", &[(0, "Compare and Write")]),
    fb("fna", 524, 1, "Format NVM Attributes", &[
        (0, "format applies to all namespaces"),
        (1, "secure erase applies to all namespaces"),
        (2, "cryptographic erase")]),
    fb("vwc", 525, 1, "Volatile Write Cache (bits 2:1 = broadcast flush behaviour)", &[
        (0, "volatile write cache present")]),
    f("awun", 526, 2, Num, "Atomic Write Unit Normal (blocks, zero-based)"),
    f("awupf", 528, 2, Num, "Atomic Write Unit Power Fail (blocks, zero-based)"),
    f("icsvscc", 530, 1, Hex, "I/O Command Set Vendor Specific Command Configuration"),
    f("nwpc", 531, 1, Hex, "Namespace Write Protection Capabilities"),
    f("acwu", 532, 2, Num, "Atomic Compare & Write Unit (blocks, zero-based)"),
    f("ocfs", 534, 2, Hex, "Copy Descriptor Formats Supported"),
    fb("sgls", 536, 4, "SGL Support (bits 1:0: 1 any alignment, 2 dword aligned)", &[
        (2, "Keyed SGL Data Block"),
        (16, "SGL Bit Bucket"),
        (17, "byte aligned contiguous metadata"),
        (18, "SGL longer than the data"),
        (19, "MPTR to an SGL"),
        (20, "Address as offset"),
        (21, "Transport SGL Data Block")]),
    f("mnan", 540, 4, Num, "Maximum Number of Allowed Namespaces"),
    f("maxdna", 544, 16, Num, "Maximum Domain Namespace Attachments"),
    f("maxcna", 560, 4, Num, "Maximum I/O Controller Namespace Attachments"),
    f("subnqn", 768, 256, Ascii, "NVM Subsystem NVMe Qualified Name"),
    f("ioccsz", 1792, 4, Num, "I/O Queue Command Capsule Supported Size (16 B, fabrics)"),
    f("iorcsz", 1796, 4, Num, "I/O Queue Response Capsule Supported Size (16 B, fabrics)"),
    f("icdoff", 1800, 2, Num, "In Capsule Data Offset (16 B, fabrics)"),
    f("fcatt", 1802, 1, Hex, "Fabrics Controller Attributes"),
    f("msdbd", 1803, 1, Num, "Maximum SGL Data Block Descriptors"),
    f("ofcs", 1804, 2, Hex, "Optional Fabric Commands Support"),
];

/// Identify Namespace for the NVM command set, in byte order (NVM Command Set 1.0 Figure 97).
/// The LBA format table (bytes 383:128) is decoded by [`IdentifyNamespace::lba_formats`].
#[rustfmt::skip]
pub const NAMESPACE_FIELDS: &[FieldDef] = &[
    f("nsze", 0, 8, Num, "Namespace Size (blocks)"),
    f("ncap", 8, 8, Num, "Namespace Capacity (blocks)"),
    f("nuse", 16, 8, Num, "Namespace Utilization (blocks)"),
    fb("nsfeat", 24, 1, "Namespace Features", &[
        (0, "thin provisioning"),
        (1, "namespace atomic parameters (NAWUN, NAWUPF, NACWU)"),
        (2, "deallocated or unwritten block error"),
        (3, "NGUID/EUI64 never reused"),
        (4, "optimal I/O fields (NPWG, NPWA, NPDG, NPDA, NOWS)")]),
    f("nlbaf", 25, 1, Num, "Number of LBA Formats (zero-based)"),
    fb("flbas", 26, 1, "Formatted LBA Size (bits 3:0, 6:5 = format index)", &[
        (4, "metadata at the end of the data (extended LBA)")]),
    fb("mc", 27, 1, "Metadata Capabilities", &[
        (0, "metadata in an extended LBA"),
        (1, "metadata in a separate buffer")]),
    fb("dpc", 28, 1, "End-to-end Data Protection Capabilities", &[
        (0, "PI Type 1"),
        (1, "PI Type 2"),
        (2, "PI Type 3"),
        (3, "PI in the first bytes of metadata"),
        (4, "PI in the last bytes of metadata")]),
    f("dps", 29, 1, Hex, "End-to-end Data Protection Type Settings (bits 2:0 = PI type)"),
    fb("nmic", 30, 1, "Namespace Multi-path I/O and Namespace Sharing Capabilities", &[
        (0, "shared namespace")]),
    fb("rescap", 31, 1, "Reservation Capabilities", &[
        (0, "persist through power loss"),
        (1, "Write Exclusive"),
        (2, "Exclusive Access"),
        (3, "Write Exclusive - Registrants Only"),
        (4, "Exclusive Access - Registrants Only"),
        (5, "Write Exclusive - All Registrants"),
        (6, "Exclusive Access - All Registrants"),
        (7, "Ignore Existing Key")]),
    f("fpi", 32, 1, Hex, "Format Progress Indicator"),
    fb("dlfeat", 33, 1, "Deallocate Logical Block Features (bits 2:0: 1 reads zeroes, 2 reads ones)", &[
        (3, "Deallocate bit in Write Zeroes"),
        (4, "guard field of deallocated blocks is the CRC")]),
    f("nawun", 34, 2, Num, "Namespace Atomic Write Unit Normal (blocks, zero-based)"),
    f("nawupf", 36, 2, Num, "Namespace Atomic Write Unit Power Fail (blocks, zero-based)"),
    f("nacwu", 38, 2, Num, "Namespace Atomic Compare & Write Unit (blocks, zero-based)"),
    f("nabsn", 40, 2, Num, "Namespace Atomic Boundary Size Normal (blocks, zero-based)"),
    f("nabo", 42, 2, Num, "Namespace Atomic Boundary Offset (blocks)"),
    f("nabspf", 44, 2, Num, "Namespace Atomic Boundary Size Power Fail (blocks, zero-based)"),
    f("noiob", 46, 2, Num, "Namespace Optimal I/O Boundary (blocks)"),
    f("nvmcap", 48, 16, Num, "NVM Capacity (bytes)"),
    f("npwg", 64, 2, Num, "Namespace Preferred Write Granularity (blocks, zero-based)"),
    f("npwa", 66, 2, Num, "Namespace Preferred Write Alignment (blocks, zero-based)"),
    f("npdg", 68, 2, Num, "Namespace Preferred Deallocate Granularity (blocks, zero-based)"),
    f("npda", 70, 2, Num, "Namespace Preferred Deallocate Alignment (blocks, zero-based)"),
    f("nows", 72, 2, Num, "Namespace Optimal Write Size (blocks, zero-based)"),
    f("mssrl", 74, 2, Num, "Maximum Single Source Range Length (blocks)"),
    f("mcl", 76, 4, Num, "Maximum Copy Length (blocks)"),
    f("msrc", 80, 1, Num, "Maximum Source Range Count (zero-based)"),
    f("kpios", 81, 1, Hex, "Key Per I/O Status"),
    f("nulbaf", 82, 1, Num, "Number of Unique Attribute LBA Formats"),
    f("anagrpid", 92, 4, Num, "ANA Group Identifier"),
    fb("nsattr", 99, 1, "Namespace Attributes", &[(0, "write protected")]),
    f("nvmsetid", 100, 2, Num, "NVM Set Identifier"),
    f("endgid", 102, 2, Num, "Endurance Group Identifier"),
    f("nguid", 104, 16, Bytes, "Namespace Globally Unique Identifier"),
    f("eui64", 120, 8, Bytes, "IEEE Extended Unique Identifier"),
];

/// Power state descriptor (NVMe Base 2.0 Figure 276), 32 bytes at `2048 + 32 * i`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PowerState {
    /// MP: maximum power, in units of [`Self::max_power_watts`]'s scale (bytes 1:0).
    pub mp: u16,
    /// MXPS (byte 3 bit 0): MP is in 0.0001 W units instead of 0.01 W.
    pub mxps: bool,
    /// NOPS (byte 3 bit 1): a non-operational state (no I/O is processed in it).
    pub non_operational: bool,
    /// ENLAT: entry latency, microseconds (bytes 7:4).
    pub enlat_us: u32,
    /// EXLAT: exit latency, microseconds (bytes 11:8).
    pub exlat_us: u32,
    /// RRT: relative read throughput, 0 best (byte 12 bits 4:0).
    pub rrt: u8,
    /// RRL: relative read latency (byte 13 bits 4:0).
    pub rrl: u8,
    /// RWT: relative write throughput (byte 14 bits 4:0).
    pub rwt: u8,
    /// RWL: relative write latency (byte 15 bits 4:0).
    pub rwl: u8,
    /// IDLP: idle power (bytes 17:16), scaled by IPS.
    pub idlp: u16,
    /// IPS: idle power scale (byte 18 bits 7:6): 0 not reported, 1 = 0.0001 W, 2 = 0.01 W.
    pub ips: u8,
    /// ACTP: active power (bytes 21:20), scaled by APS.
    pub actp: u16,
    /// APW: active power workload (byte 22 bits 2:0).
    pub apw: u8,
    /// APS: active power scale (byte 22 bits 7:6), as IPS.
    pub aps: u8,
}

fn scaled(v: u16, scale: u8) -> Option<f64> {
    match scale {
        1 => Some(v as f64 * 0.0001),
        2 => Some(v as f64 * 0.01),
        _ => None,
    }
}

impl PowerState {
    /// Offset of descriptor 0 in Identify Controller.
    pub const OFFSET: usize = 2048;
    /// Bytes per descriptor.
    pub const LEN: usize = 32;

    fn parse(b: &[u8]) -> PowerState {
        let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
        let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        PowerState {
            mp: u16_at(0),
            mxps: b[3] & 1 != 0,
            non_operational: b[3] & 2 != 0,
            enlat_us: u32_at(4),
            exlat_us: u32_at(8),
            rrt: b[12] & 0x1f,
            rrl: b[13] & 0x1f,
            rwt: b[14] & 0x1f,
            rwl: b[15] & 0x1f,
            idlp: u16_at(16),
            ips: b[18] >> 6,
            actp: u16_at(20),
            apw: b[22] & 0b111,
            aps: b[22] >> 6,
        }
    }

    fn encode(&self) -> [u8; 32] {
        let mut b = [0u8; 32];
        b[0..2].copy_from_slice(&self.mp.to_le_bytes());
        b[3] = self.mxps as u8 | (self.non_operational as u8) << 1;
        b[4..8].copy_from_slice(&self.enlat_us.to_le_bytes());
        b[8..12].copy_from_slice(&self.exlat_us.to_le_bytes());
        b[12] = self.rrt & 0x1f;
        b[13] = self.rrl & 0x1f;
        b[14] = self.rwt & 0x1f;
        b[15] = self.rwl & 0x1f;
        b[16..18].copy_from_slice(&self.idlp.to_le_bytes());
        b[18] = self.ips << 6;
        b[20..22].copy_from_slice(&self.actp.to_le_bytes());
        b[22] = (self.apw & 0b111) | self.aps << 6;
        b
    }

    /// Maximum power in watts (MP at 0.01 W, or 0.0001 W when MXPS is set).
    pub fn max_power_watts(&self) -> f64 {
        self.mp as f64 * if self.mxps { 0.0001 } else { 0.01 }
    }

    /// Idle power in watts, if reported.
    pub fn idle_power_watts(&self) -> Option<f64> {
        scaled(self.idlp, self.ips)
    }

    /// Active power in watts, if reported.
    pub fn active_power_watts(&self) -> Option<f64> {
        scaled(self.actp, self.aps)
    }
}

impl IdentifyController {
    /// The power state descriptors the controller supports (NPSS + 1 of them, at most 32).
    pub fn power_states(&self) -> Vec<PowerState> {
        let n = (self.as_bytes()[263] as usize + 1).min(32);
        (0..n)
            .map(|i| {
                let o = PowerState::OFFSET + PowerState::LEN * i;
                PowerState::parse(&self.as_bytes()[o..o + PowerState::LEN])
            })
            .collect()
    }

    /// Writes power state descriptor `i` (0 ..= 31); NPSS is left alone.
    ///
    /// # Panics
    /// If `i > 31`.
    pub fn set_power_state(&mut self, i: usize, ps: PowerState) -> &mut Self {
        assert!(i < 32, "power state {i} > 31");
        let o = PowerState::OFFSET + PowerState::LEN * i;
        self.0[o..o + PowerState::LEN].copy_from_slice(&ps.encode());
        self
    }

    /// NPSS as the real count of power states (NPSS + 1).
    pub fn power_state_count(&self) -> u8 {
        self.as_bytes()[263].saturating_add(1)
    }

    /// Writes NPSS from a real count (1 ..= 32).
    pub fn set_power_state_count(&mut self, n: u8) -> &mut Self {
        self.0[263] = n.clamp(1, 32) - 1;
        self
    }
}

/// Relative Performance names of an LBA format (RP), as nvme-cli's `-H` spells them.
pub fn relative_performance_name(rp: u8) -> &'static str {
    match rp & 0b11 {
        0 => "Best",
        1 => "Better",
        2 => "Good",
        _ => "Degraded",
    }
}

impl LbaFormat {
    /// LBADS: log2 of the data size (0 when the format is not available).
    pub fn lbads(&self) -> u8 {
        if self.data_size == 0 {
            0
        } else {
            self.data_size.trailing_zeros() as u8
        }
    }
}

impl IdentifyNamespace {
    /// Every LBA format the namespace lists: NLBAF + 1 formats, then NULBAF unique-attribute
    /// ones (as nvme-cli counts them), at most 64.
    pub fn lba_formats(&self) -> Vec<LbaFormat> {
        let n = (self.nlbaf() as usize + self.as_bytes()[82] as usize).min(super::MAX_LBA_FORMATS);
        (0..n).map(|i| self.lbaf(i)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_table(t: &[FieldDef], last: usize) {
        let mut end = 0;
        for d in t {
            assert!(d.len > 0 && d.len <= 256, "{}", d.name);
            assert!(
                d.offset >= end,
                "{} at {} overlaps the field before",
                d.name,
                d.offset
            );
            assert!(d.offset + d.len <= last, "{} runs past {last}", d.name);
            assert!(
                d.kind == FieldKind::Ascii || d.kind == FieldKind::Bytes || d.len <= 16,
                "{}",
                d.name
            );
            assert!(
                d.bits.iter().all(|&(b, _)| (b as usize) < 8 * d.len),
                "{}",
                d.name
            );
            end = d.offset + d.len;
        }
        let mut names: Vec<_> = t.iter().map(|d| d.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), t.len(), "a name is used twice");
    }

    #[test]
    fn tables_are_in_byte_order_without_overlap_inside_their_ranges() {
        check_table(CONTROLLER_FIELDS, PowerState::OFFSET);
        check_table(NAMESPACE_FIELDS, 128);
    }

    fn field<'a>(t: &'a [FieldDef], name: &str) -> &'a FieldDef {
        t.iter().find(|d| d.name == name).unwrap()
    }

    #[test]
    fn controller_fields_read_the_spec_offsets() {
        // Literal offsets from NVMe Base 2.0 Figure 275, one distinct value each.
        let mut p = [0u8; IDENTIFY_LEN];
        let cases: &[(&str, usize, &[u8], &str)] = &[
            ("vid", 0, &[0x36, 0x1b], "0x1b36"),
            ("ssvid", 2, &[0xf4, 0x1a], "0x1af4"),
            ("rab", 72, &[6], "6"),
            ("ieee", 73, &[0x00, 0x54, 0x52], "0x525400"),
            ("cmic", 76, &[0b1010], "0xa"),
            ("mdts", 77, &[7], "7"),
            ("cntlid", 78, &[0x34, 0x12], "0x1234"),
            ("ver", 80, &[0, 4, 1, 0], "0x10400"),
            ("rtd3r", 84, &[0x10, 0x27], "10000"),
            ("rtd3e", 88, &[0x20, 0x4e], "20000"),
            ("oaes", 92, &[0, 1], "0x100"),
            ("ctratt", 96, &[0x80, 0x02], "0x280"),
            ("rrls", 100, &[3], "0x3"),
            ("cntrltype", 111, &[1], "1"),
            ("crdt1", 128, &[1], "1"),
            ("crdt2", 130, &[2], "2"),
            ("crdt3", 132, &[3], "3"),
            ("nvmsr", 253, &[1], "0x1"),
            ("oacs", 256, &[0x0a, 0x01], "0x10a"),
            ("acl", 258, &[3], "3"),
            ("aerl", 259, &[7], "7"),
            ("frmw", 260, &[0x02], "0x2"),
            ("lpa", 261, &[0x0f], "0xf"),
            ("elpe", 262, &[63], "63"),
            ("npss", 263, &[1], "1"),
            ("wctemp", 266, &[0x57, 0x01], "343"),
            ("cctemp", 268, &[0x61, 0x01], "353"),
            ("mtfa", 270, &[5], "5"),
            // 16-byte capacities go beyond u64.
            (
                "tnvmcap",
                280,
                &[0, 0, 0, 0, 0, 0, 0, 0, 1],
                "18446744073709551616",
            ),
            ("unvmcap", 296, &[0, 0x10], "4096"),
            ("kas", 320, &[10], "10"),
            ("sanicap", 328, &[0b101], "0x5"),
            ("anagrpmax", 344, &[8], "8"),
            ("megcap", 368, &[1], "1"),
            ("sqes", 512, &[0x66], "0x66"),
            ("cqes", 513, &[0x44], "0x44"),
            ("maxcmd", 514, &[0, 1], "256"),
            ("nn", 516, &[2], "2"),
            ("oncs", 520, &[0b1100], "0xc"),
            ("fuses", 522, &[1], "0x1"),
            ("fna", 524, &[4], "0x4"),
            ("vwc", 525, &[7], "0x7"),
            ("awun", 526, &[0xff], "255"),
            ("awupf", 528, &[1], "1"),
            ("nwpc", 531, &[1], "0x1"),
            ("acwu", 532, &[2], "2"),
            ("sgls", 536, &[0x02, 0, 0x01], "0x10002"),
            ("mnan", 540, &[4], "4"),
            ("maxcna", 560, &[9], "9"),
            ("ioccsz", 1792, &[4], "4"),
            ("iorcsz", 1796, &[1], "1"),
            ("msdbd", 1803, &[1], "1"),
        ];
        for &(_, off, bytes, _) in cases {
            p[off..off + bytes.len()].copy_from_slice(bytes);
        }
        p[4..12].copy_from_slice(b"deadbeef");
        p[12..24].fill(b' ');
        p[24..38].copy_from_slice(b"QEMU NVMe Ctrl");
        p[38..64].fill(b' ');
        p[64..72].copy_from_slice(b"8.0.0   ");
        p[112] = 0xab;
        p[127] = 0xcd;
        p[768..790].copy_from_slice(b"nqn.2019-08.org.qemu:x");
        for &(name, _, _, want) in cases {
            assert_eq!(
                field(CONTROLLER_FIELDS, name).show(&p),
                want,
                "field {name}"
            );
        }
        assert_eq!(field(CONTROLLER_FIELDS, "sn").show(&p), "deadbeef");
        assert_eq!(field(CONTROLLER_FIELDS, "mn").show(&p), "QEMU NVMe Ctrl");
        assert_eq!(field(CONTROLLER_FIELDS, "fr").show(&p), "8.0.0");
        assert_eq!(
            field(CONTROLLER_FIELDS, "subnqn").show(&p),
            "nqn.2019-08.org.qemu:x"
        );
        assert_eq!(
            field(CONTROLLER_FIELDS, "fguid").show(&p),
            "ab0000000000000000000000000000cd"
        );
        assert_eq!(
            field(CONTROLLER_FIELDS, "oacs").set_bits(&p),
            vec![
                "Format NVM",
                "Namespace Management",
                "Doorbell Buffer Config"
            ]
        );
        assert_eq!(
            field(CONTROLLER_FIELDS, "oncs").set_bits(&p),
            vec!["Dataset Management", "Write Zeroes"]
        );
        // The typed accessors agree with the table.
        let c = IdentifyController::from_bytes(&p).unwrap();
        assert_eq!(c.vid(), 0x1b36);
        assert_eq!(c.mdts(), 7);
        assert_eq!(c.nn(), 2);
        assert_eq!(c.power_state_count(), 2);
    }

    #[test]
    fn namespace_fields_read_the_spec_offsets() {
        // Literal offsets from NVM Command Set 1.0 Figure 97.
        let mut p = [0u8; IDENTIFY_LEN];
        let cases: &[(&str, usize, &[u8], &str)] = &[
            ("nsze", 0, &[0, 0, 1], "65536"),
            ("ncap", 8, &[0, 0x80], "32768"),
            ("nuse", 16, &[5], "5"),
            ("nsfeat", 24, &[0x10], "0x10"),
            ("nlbaf", 25, &[1], "1"),
            ("flbas", 26, &[0x11], "0x11"),
            ("mc", 27, &[2], "0x2"),
            ("dpc", 28, &[0x1f], "0x1f"),
            ("dps", 29, &[1], "0x1"),
            ("nmic", 30, &[1], "0x1"),
            ("rescap", 31, &[0xff], "0xff"),
            ("fpi", 32, &[0x80], "0x80"),
            ("dlfeat", 33, &[0x09], "0x9"),
            ("nawun", 34, &[1], "1"),
            ("nawupf", 36, &[2], "2"),
            ("nacwu", 38, &[3], "3"),
            ("nabsn", 40, &[4], "4"),
            ("nabo", 42, &[5], "5"),
            ("nabspf", 44, &[6], "6"),
            ("noiob", 46, &[0, 1], "256"),
            ("nvmcap", 48, &[0, 0, 0, 0x80], "2147483648"),
            ("npwg", 64, &[7], "7"),
            ("npwa", 66, &[8], "8"),
            ("npdg", 68, &[9], "9"),
            ("npda", 70, &[10], "10"),
            ("nows", 72, &[11], "11"),
            ("mssrl", 74, &[12], "12"),
            ("mcl", 76, &[0, 1], "256"),
            ("msrc", 80, &[13], "13"),
            ("kpios", 81, &[1], "0x1"),
            ("nulbaf", 82, &[1], "1"),
            ("anagrpid", 92, &[14], "14"),
            ("nsattr", 99, &[1], "0x1"),
            ("nvmsetid", 100, &[15], "15"),
            ("endgid", 102, &[16], "16"),
        ];
        for &(_, off, bytes, _) in cases {
            p[off..off + bytes.len()].copy_from_slice(bytes);
        }
        p[104] = 0x11;
        p[119] = 0x22;
        p[120] = 0x33;
        p[127] = 0x44;
        p[128..132].copy_from_slice(&[0, 0, 9, 0]); // LBAF0: 512 B
        p[132..136].copy_from_slice(&[8, 0, 12, 0b10]); // LBAF1: 4 KiB + 8 B md, RP 2
        p[136..140].copy_from_slice(&[0, 0, 12, 3]); // LBAF2 (the NULBAF one)
        for &(name, _, _, want) in cases {
            assert_eq!(field(NAMESPACE_FIELDS, name).show(&p), want, "field {name}");
        }
        assert_eq!(
            field(NAMESPACE_FIELDS, "nguid").show(&p),
            "11000000000000000000000000000022"
        );
        assert_eq!(
            field(NAMESPACE_FIELDS, "eui64").show(&p),
            "3300000000000044"
        );
        assert_eq!(
            field(NAMESPACE_FIELDS, "nmic").set_bits(&p),
            vec!["shared namespace"]
        );
        let ns = IdentifyNamespace::from_bytes(&p).unwrap();
        let f = ns.lba_formats();
        assert_eq!(f.len(), 3, "NLBAF 1 (two formats) + NULBAF 1");
        assert_eq!((f[0].lbads(), f[0].metadata_size), (9, 0));
        assert_eq!(
            (f[1].lbads(), f[1].metadata_size, f[1].relative_performance),
            (12, 8, 2)
        );
        assert_eq!(
            relative_performance_name(f[2].relative_performance),
            "Degraded"
        );
        assert_eq!(ns.flbas_index(), 1);
    }

    #[test]
    fn power_states_sit_at_2048_and_follow_npss() {
        let mut p = [0u8; IDENTIFY_LEN];
        p[263] = 1; // NPSS: two states
        // PS0: 25.00 W, enlat 16, exlat 4, idle 0.5 W at 0.01 W scale, active 2.5 W.
        p[2048..2050].copy_from_slice(&2500u16.to_le_bytes());
        p[2052] = 16;
        p[2056] = 4;
        p[2060..2064].copy_from_slice(&[1, 2, 3, 4]);
        p[2064..2066].copy_from_slice(&50u16.to_le_bytes());
        p[2066] = 0b10 << 6;
        p[2068..2070].copy_from_slice(&250u16.to_le_bytes());
        p[2070] = 0b10 << 6 | 0b011;
        // PS1: 0.5 W in 0.0001 W units, non-operational.
        p[2080..2082].copy_from_slice(&5000u16.to_le_bytes());
        p[2083] = 0b11;
        let c = IdentifyController::from_bytes(&p).unwrap();
        let ps = c.power_states();
        assert_eq!(ps.len(), 2);
        assert_eq!(ps[0].max_power_watts(), 25.0);
        assert_eq!((ps[0].enlat_us, ps[0].exlat_us), (16, 4));
        assert_eq!((ps[0].rrt, ps[0].rrl, ps[0].rwt, ps[0].rwl), (1, 2, 3, 4));
        assert_eq!(ps[0].idle_power_watts(), Some(0.5));
        assert_eq!(ps[0].active_power_watts(), Some(2.5));
        assert_eq!(ps[0].apw, 3);
        assert!(!ps[0].non_operational);
        assert!((ps[1].max_power_watts() - 0.5).abs() < 1e-9);
        assert!(ps[1].non_operational && ps[1].mxps);
        assert_eq!(ps[1].idle_power_watts(), None);
        // The builder writes the same bytes.
        let mut b = IdentifyController::builder();
        b.set_power_state_count(2)
            .set_power_state(0, ps[0])
            .set_power_state(1, ps[1]);
        assert_eq!(b.as_bytes(), &p);
    }
}
