//! Metadata formats and end-to-end protection information (NVM Command Set 1.0, 5.2 and
//! 5.3; Base 2.0 for the 64-bit guard format), pure: the format a namespace is formatted
//! with, the PRINFO bits of a command, the guard CRCs, and host-side generation and checking
//! of the PI tuples.
//!
//! A block's metadata is `ms` bytes. Where the namespace has protection information, a PI
//! tuple sits in the first or the last bytes of it (DPS bit 3):
//!
//! ```text
//! 16-bit guard (8 bytes):  guard BE16 | application tag BE16 | reference tag BE32
//! 64-bit guard (16 bytes): guard BE64 | application tag BE16 | storage + reference tag BE48
//! ```
//!
//! The guard is a CRC over the block's data and, when the tuple is in the LAST bytes, the
//! metadata bytes before it: CRC-16 T10-DIF (polynomial 0x8BB7, initial 0, not reflected) or
//! the NVMe CRC-64 (Rocksoft: reflected polynomial 0x9A6C9329AC4BC9B5, initial and final
//! XOR all ones). Reference tags, type by type (NVM Command Set 1.0, 5.3.1.2):
//!
//! - Type 1: the first block's tag is the low 32 (or 48) bits of its LBA; the command's
//!   ILBRT must equal it; it increments per block.
//! - Type 2: the first block's tag is whatever the command's ILBRT says (the host chooses;
//!   nvme-dio uses the LBA unless told otherwise); it increments per block.
//! - Type 3: not a counter and never checked (PRCHK reference tag is invalid).
//!
//! An application tag of FFFFh (and for type 3 also a reference tag of all ones) turns
//! checking off for that block: that is how unwritten and deallocated blocks read back.

use core::fmt;

/// The protection information type (DPS bits 2:0).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PiType {
    /// Type 1: reference tag = LBA, checked.
    Type1,
    /// Type 2: reference tag chosen by the host per command, incremented per block.
    Type2,
    /// Type 3: no reference tag semantics.
    Type3,
}

impl PiType {
    /// From DPS bits 2:0 (0 = no protection information, 4..7 reserved).
    pub fn from_dps(dps: u8) -> Option<PiType> {
        match dps & 0b111 {
            1 => Some(PiType::Type1),
            2 => Some(PiType::Type2),
            3 => Some(PiType::Type3),
            _ => None,
        }
    }

    /// The DPS bits 2:0 value.
    pub fn dps(self) -> u8 {
        match self {
            PiType::Type1 => 1,
            PiType::Type2 => 2,
            PiType::Type3 => 3,
        }
    }

    /// True if the reference tag counts up block by block (types 1 and 2).
    pub fn increments(self) -> bool {
        self != PiType::Type3
    }
}

/// The guard format of the PI tuple (the extended LBA format's PIF, I/O command set
/// specific Identify Namespace).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PiFormat {
    /// 16-bit CRC-16 T10-DIF guard, 32-bit reference tag: 8-byte tuple (PIF 00b).
    Guard16,
    /// 32-bit guard (PIF 01b): recognised, not generated or checked by the host helpers.
    Guard32,
    /// 64-bit NVMe CRC-64 guard, 48-bit reference tag: 16-byte tuple (PIF 10b).
    Guard64,
}

impl PiFormat {
    /// From the PIF field (ELBAF bits 8:7).
    pub fn from_pif(pif: u8) -> Option<PiFormat> {
        match pif {
            0 => Some(PiFormat::Guard16),
            1 => Some(PiFormat::Guard32),
            2 => Some(PiFormat::Guard64),
            _ => None,
        }
    }

    /// Bytes of one PI tuple.
    pub fn tuple_size(self) -> u16 {
        match self {
            PiFormat::Guard16 => 8,
            PiFormat::Guard32 | PiFormat::Guard64 => 16,
        }
    }

    /// Mask of the reference tag bits (32 or 48).
    pub fn ref_mask(self) -> u64 {
        match self {
            PiFormat::Guard16 => 0xffff_ffff,
            PiFormat::Guard32 => 0xffff_ffff,
            PiFormat::Guard64 => 0xffff_ffff_ffff,
        }
    }
}

/// A namespace's protection information settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Protection {
    /// Type 1, 2 or 3.
    pub kind: PiType,
    /// The tuple is in the first bytes of the metadata (DPS bit 3); else in the last.
    pub first: bool,
    /// Guard format.
    pub format: PiFormat,
}

/// How a namespace's current format carries metadata.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MetadataFormat {
    /// Metadata bytes per block (LBAF MS), at least 1.
    pub size: u16,
    /// Extended LBA (FLBAS bit 4): the metadata travels at the end of each block's data in
    /// the data buffer. Else it travels in a separate buffer (MPTR).
    pub extended: bool,
    /// Protection information, if the namespace is formatted with it.
    pub pi: Option<Protection>,
}

impl MetadataFormat {
    /// Offset of the PI tuple within a block's metadata.
    pub fn pi_offset(&self) -> Option<usize> {
        self.pi.map(|p| {
            if p.first {
                0
            } else {
                (self.size - p.format.tuple_size()) as usize
            }
        })
    }

    /// True if, with PRACT, no metadata moves between host and controller: the metadata is
    /// exactly one PI tuple, which the controller inserts on writes and strips on reads.
    pub fn pract_strips(&self) -> bool {
        self.pi.is_some_and(|p| p.format.tuple_size() == self.size)
    }
}

/// The PRINFO field of a read, write, verify or copy (CDW12 bits 29:26 for read/write):
/// PRACT and the three PRCHK checks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Prinfo {
    /// Protection Information Action: the controller generates PI on writes and (when the
    /// metadata is only the tuple) strips it on reads.
    pub pract: bool,
    /// Check the guard.
    pub guard: bool,
    /// Check the application tag (under the mask).
    pub app_tag: bool,
    /// Check the reference tag.
    pub ref_tag: bool,
}

impl Prinfo {
    /// All three checks, no PRACT.
    pub const CHECK_ALL: Prinfo = Prinfo {
        pract: false,
        guard: true,
        app_tag: true,
        ref_tag: true,
    };

    /// The four bits: PRACT 3, guard 2, application tag 1, reference tag 0.
    pub fn bits(self) -> u8 {
        (self.pract as u8) << 3
            | (self.guard as u8) << 2
            | (self.app_tag as u8) << 1
            | self.ref_tag as u8
    }

    /// From the four bits.
    pub fn from_bits(b: u8) -> Prinfo {
        Prinfo {
            pract: b & 8 != 0,
            guard: b & 4 != 0,
            app_tag: b & 2 != 0,
            ref_tag: b & 1 != 0,
        }
    }

    /// True if anything is set.
    pub fn any(self) -> bool {
        self.bits() != 0
    }
}

/// What a command asks of the protection information, beyond PRINFO: its tags.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PiTags {
    /// The initial reference tag (ILBRT / EILBRT), for the command's first block.
    pub reftag: u64,
    /// The application tag (LBAT).
    pub apptag: u16,
    /// The application tag mask (LBATM): which bits are checked.
    pub appmask: u16,
}

// ---- guards ----------------------------------------------------------------------------

const fn crc16_table() -> [u16; 256] {
    let mut t = [0u16; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = (i as u16) << 8;
        let mut k = 0;
        while k < 8 {
            c = if c & 0x8000 != 0 {
                (c << 1) ^ 0x8bb7
            } else {
                c << 1
            };
            k += 1;
        }
        t[i] = c;
        i += 1;
    }
    t
}

const fn crc64_table() -> [u64; 256] {
    let mut t = [0u64; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u64;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                (c >> 1) ^ 0x9a6c_9329_ac4b_c9b5
            } else {
                c >> 1
            };
            k += 1;
        }
        t[i] = c;
        i += 1;
    }
    t
}

static CRC16: [u16; 256] = crc16_table();
static CRC64: [u64; 256] = crc64_table();

/// Continues a CRC-16 T10-DIF over `data` (start with 0).
pub fn crc16_t10dif(mut crc: u16, data: &[u8]) -> u16 {
    for &b in data {
        crc = (crc << 8) ^ CRC16[((crc >> 8) as u8 ^ b) as usize];
    }
    crc
}

/// The NVMe CRC-64 (Rocksoft) state after `data`, from `state` (start with `!0`); the
/// guard is the final state XOR all ones ([`crc64_nvme`]).
pub fn crc64_nvme_update(mut state: u64, data: &[u8]) -> u64 {
    for &b in data {
        state = (state >> 8) ^ CRC64[((state as u8) ^ b) as usize];
    }
    state
}

/// The NVMe CRC-64 of `data`.
pub fn crc64_nvme(data: &[u8]) -> u64 {
    !crc64_nvme_update(!0, data)
}

/// The guard of one block: its data and, when the tuple is last, the metadata before it.
fn guard(p: Protection, data: &[u8], meta_before: &[u8]) -> u64 {
    match p.format {
        PiFormat::Guard16 | PiFormat::Guard32 => {
            crc16_t10dif(crc16_t10dif(0, data), meta_before) as u64
        }
        PiFormat::Guard64 => !crc64_nvme_update(crc64_nvme_update(!0, data), meta_before),
    }
}

/// One PI tuple, decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Tuple {
    /// Guard (16 or 64 bits).
    pub guard: u64,
    /// Application tag.
    pub apptag: u16,
    /// Reference tag (32 or 48 bits).
    pub reftag: u64,
}

impl Tuple {
    /// Decodes the tuple at the start of `b` (8 or 16 bytes).
    pub fn read(format: PiFormat, b: &[u8]) -> Tuple {
        match format {
            PiFormat::Guard16 | PiFormat::Guard32 => Tuple {
                guard: u16::from_be_bytes([b[0], b[1]]) as u64,
                apptag: u16::from_be_bytes([b[2], b[3]]),
                reftag: u32::from_be_bytes([b[4], b[5], b[6], b[7]]) as u64,
            },
            PiFormat::Guard64 => Tuple {
                guard: u64::from_be_bytes(b[0..8].try_into().expect("8 bytes")),
                apptag: u16::from_be_bytes([b[8], b[9]]),
                reftag: b[10..16].iter().fold(0u64, |a, &x| a << 8 | x as u64),
            },
        }
    }

    /// Encodes into the start of `b`.
    pub fn write(&self, format: PiFormat, b: &mut [u8]) {
        match format {
            PiFormat::Guard16 | PiFormat::Guard32 => {
                b[0..2].copy_from_slice(&(self.guard as u16).to_be_bytes());
                b[2..4].copy_from_slice(&self.apptag.to_be_bytes());
                b[4..8].copy_from_slice(&(self.reftag as u32).to_be_bytes());
            }
            PiFormat::Guard64 => {
                b[0..8].copy_from_slice(&self.guard.to_be_bytes());
                b[8..10].copy_from_slice(&self.apptag.to_be_bytes());
                b[10..16].copy_from_slice(&self.reftag.to_be_bytes()[2..8]);
            }
        }
    }
}

/// Which check failed, and at which block of the transfer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PiError {
    /// The guard does not match the data.
    #[error("guard check failed at block {block}: tuple says {found:#x}, data gives {want:#x}")]
    Guard {
        /// Block index within the transfer.
        block: u64,
        /// The guard in the tuple.
        found: u64,
        /// The guard the data gives.
        want: u64,
    },
    /// The application tag does not match under the mask.
    #[error("application tag check failed at block {block}: {found:#06x}, expected {want:#06x}")]
    AppTag {
        /// Block index.
        block: u64,
        /// Tag in the tuple.
        found: u16,
        /// Tag expected.
        want: u16,
    },
    /// The reference tag is not the expected one.
    #[error("reference tag check failed at block {block}: {found:#x}, expected {want:#x}")]
    RefTag {
        /// Block index.
        block: u64,
        /// Tag in the tuple.
        found: u64,
        /// Tag expected.
        want: u64,
    },
    /// The buffers do not hold whole blocks of data and metadata, or the format has no PI
    /// the helpers handle (32-bit guard).
    #[error(
        "PI helper given {data} data bytes and {meta} metadata bytes: not whole blocks of this format (or a 32-bit guard format)"
    )]
    Shape {
        /// Data bytes.
        data: usize,
        /// Metadata bytes.
        meta: usize,
    },
}

fn shape(
    fmt: &MetadataFormat,
    lba_size: usize,
    data: usize,
    meta: usize,
) -> Result<(Protection, u64), PiError> {
    let bad = PiError::Shape { data, meta };
    let p = fmt.pi.ok_or(bad)?;
    if p.format == PiFormat::Guard32 || lba_size == 0 || data % lba_size != 0 {
        return Err(bad);
    }
    let blocks = (data / lba_size) as u64;
    if meta as u64 != blocks * fmt.size as u64 {
        return Err(bad);
    }
    Ok((p, blocks))
}

/// Writes valid PI tuples into `meta` (separate metadata: `blocks * ms` bytes) for the data
/// blocks in `data` (`blocks * lba_size` bytes): the guard over each block, `tags.apptag`,
/// and reference tags from `tags.reftag`, counting up for types 1 and 2. Bytes of the
/// metadata outside the tuple are left as they are (they are covered by the guard when the
/// tuple is last, so write them first).
///
/// # Errors
/// [`PiError::Shape`] if the sizes are not whole blocks or the format has no PI.
pub fn generate(
    fmt: &MetadataFormat,
    lba_size: usize,
    data: &[u8],
    meta: &mut [u8],
    tags: PiTags,
) -> Result<(), PiError> {
    let (p, blocks) = shape(fmt, lba_size, data.len(), meta.len())?;
    let ms = fmt.size as usize;
    let off = fmt.pi_offset().expect("pi");
    let mut reftag = tags.reftag;
    for b in 0..blocks as usize {
        let d = &data[b * lba_size..(b + 1) * lba_size];
        let m = &mut meta[b * ms..(b + 1) * ms];
        let before = if p.first { &[][..] } else { &m[..off] };
        let g = guard(p, d, before);
        Tuple {
            guard: g,
            apptag: tags.apptag,
            reftag: reftag & p.format.ref_mask(),
        }
        .write(p.format, &mut m[off..]);
        if p.kind.increments() {
            reftag = reftag.wrapping_add(1);
        }
    }
    Ok(())
}

/// Checks the PI tuples in `meta` against `data`, as a controller does with PRCHK `checks`
/// (PRACT is ignored), including the escapes: an application tag of FFFFh (types 1 and 2)
/// or an application tag of FFFFh with a reference tag of all ones (type 3) skips the block.
///
/// # Errors
/// The first failing check, or [`PiError::Shape`].
pub fn verify(
    fmt: &MetadataFormat,
    lba_size: usize,
    data: &[u8],
    meta: &[u8],
    checks: Prinfo,
    tags: PiTags,
) -> Result<(), PiError> {
    let (p, blocks) = shape(fmt, lba_size, data.len(), meta.len())?;
    let ms = fmt.size as usize;
    let off = fmt.pi_offset().expect("pi");
    let mut reftag = tags.reftag & p.format.ref_mask();
    for b in 0..blocks {
        let bi = b as usize;
        let d = &data[bi * lba_size..(bi + 1) * lba_size];
        let m = &meta[bi * ms..(bi + 1) * ms];
        let t = Tuple::read(p.format, &m[off..]);
        check_tuple(
            p,
            t,
            d,
            if p.first { &[] } else { &m[..off] },
            checks,
            tags,
            reftag,
        )
        .map_err(|e| e.at(b))?;
        if p.kind.increments() {
            reftag = reftag.wrapping_add(1) & p.format.ref_mask();
        }
    }
    Ok(())
}

impl PiError {
    fn at(self, block: u64) -> PiError {
        match self {
            PiError::Guard { found, want, .. } => PiError::Guard { block, found, want },
            PiError::AppTag { found, want, .. } => PiError::AppTag { block, found, want },
            PiError::RefTag { found, want, .. } => PiError::RefTag { block, found, want },
            e => e,
        }
    }
}

/// Checks one block's tuple `t` (QEMU's `nvme_dif_prchk`: the escapes first, then guard,
/// application tag, reference tag). `reftag` is this block's expected reference tag.
#[allow(clippy::too_many_arguments)]
pub fn check_tuple(
    p: Protection,
    t: Tuple,
    data: &[u8],
    meta_before: &[u8],
    checks: Prinfo,
    tags: PiTags,
    reftag: u64,
) -> Result<(), PiError> {
    let all_ones_ref = t.reftag == p.format.ref_mask();
    let escaped = match p.kind {
        PiType::Type3 => t.apptag == 0xffff && all_ones_ref,
        PiType::Type1 | PiType::Type2 => t.apptag == 0xffff,
    };
    if escaped {
        return Ok(());
    }
    if checks.guard {
        let want = guard(p, data, meta_before);
        if t.guard != want {
            return Err(PiError::Guard {
                block: 0,
                found: t.guard,
                want,
            });
        }
    }
    if checks.app_tag && (t.apptag & tags.appmask) != (tags.apptag & tags.appmask) {
        return Err(PiError::AppTag {
            block: 0,
            found: t.apptag,
            want: tags.apptag,
        });
    }
    if checks.ref_tag && t.reftag != reftag {
        return Err(PiError::RefTag {
            block: 0,
            found: t.reftag,
            want: reftag,
        });
    }
    Ok(())
}

impl fmt::Display for MetadataFormat {
    /// `8 B separate, PI type 1 (16-bit guard, last bytes)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} B {}",
            self.size,
            if self.extended {
                "extended"
            } else {
                "separate"
            }
        )?;
        if let Some(p) = self.pi {
            write!(
                f,
                ", PI type {} ({}-bit guard, {} bytes)",
                p.kind.dps(),
                match p.format {
                    PiFormat::Guard16 => 16,
                    PiFormat::Guard32 => 32,
                    PiFormat::Guard64 => 64,
                },
                if p.first { "first" } else { "last" }
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc16_check_value() {
        // The catalogued check value of CRC-16/T10-DIF.
        assert_eq!(crc16_t10dif(0, b"123456789"), 0xd0db);
        assert_eq!(crc16_t10dif(0, &[0u8; 512]), 0);
        // Continuation equals one pass over the concatenation.
        let a = crc16_t10dif(crc16_t10dif(0, b"12345"), b"6789");
        assert_eq!(a, 0xd0db);
    }

    #[test]
    fn crc64_check_value() {
        // The catalogued check value of CRC-64/NVME.
        assert_eq!(crc64_nvme(b"123456789"), 0xae8b_1486_0a79_9888);
        // QEMU 7.2 writes this guard for a zeroed 4 KiB block (Write Zeroes with PRACT).
        assert_eq!(crc64_nvme(&[0u8; 4096]), 0x6482_d367_eb22_b64e);
    }

    fn fmt16(kind: PiType, first: bool, ms: u16) -> MetadataFormat {
        MetadataFormat {
            size: ms,
            extended: false,
            pi: Some(Protection {
                kind,
                first,
                format: PiFormat::Guard16,
            }),
        }
    }

    #[test]
    fn tuples_round_trip_in_big_endian() {
        let t = Tuple {
            guard: 0x1234,
            apptag: 0xabcd,
            reftag: 0x0102_0304,
        };
        let mut b = [0u8; 8];
        t.write(PiFormat::Guard16, &mut b);
        assert_eq!(b, [0x12, 0x34, 0xab, 0xcd, 1, 2, 3, 4]);
        assert_eq!(Tuple::read(PiFormat::Guard16, &b), t);
        let t = Tuple {
            guard: 0x1122_3344_5566_7788,
            apptag: 0x99aa,
            reftag: 0x0a0b_0c0d_0e0f,
        };
        let mut b = [0u8; 16];
        t.write(PiFormat::Guard64, &mut b);
        assert_eq!(&b[10..], &[0x0a, 0x0b, 0x0c, 0x0d, 0x0e, 0x0f]);
        assert_eq!(Tuple::read(PiFormat::Guard64, &b), t);
    }

    #[test]
    fn generated_pi_verifies_and_each_corruption_names_its_check() {
        for (kind, first, ms) in [
            (PiType::Type1, false, 8),
            (PiType::Type2, true, 16),
            (PiType::Type3, false, 16),
        ] {
            let f = fmt16(kind, first, ms);
            let data: Vec<u8> = (0..4 * 512).map(|i| (i * 7 % 251) as u8).collect();
            let mut meta = vec![0x5au8; 4 * ms as usize];
            let tags = PiTags {
                reftag: 100,
                apptag: 0x4242,
                appmask: 0xffff,
            };
            generate(&f, 512, &data, &mut meta, tags).unwrap();
            let all = Prinfo {
                ref_tag: kind != PiType::Type3,
                ..Prinfo::CHECK_ALL
            };
            verify(&f, 512, &data, &meta, all, tags).unwrap();
            let off = f.pi_offset().unwrap();
            // Guard: flip a data byte of block 2.
            let mut d2 = data.clone();
            d2[2 * 512 + 3] ^= 1;
            assert!(matches!(
                verify(&f, 512, &d2, &meta, all, tags),
                Err(PiError::Guard { block: 2, .. })
            ));
            // Application tag.
            let want_app = PiTags {
                apptag: 0x4243,
                ..tags
            };
            assert!(matches!(
                verify(&f, 512, &data, &meta, all, want_app),
                Err(PiError::AppTag { block: 0, .. })
            ));
            // Masked off: passes.
            let masked = PiTags {
                apptag: 0x4243,
                appmask: 0xff00,
                ..tags
            };
            verify(&f, 512, &data, &meta, all, masked).unwrap();
            if kind != PiType::Type3 {
                let m1 = PiTags {
                    reftag: 101,
                    ..tags
                };
                assert!(matches!(
                    verify(&f, 512, &data, &meta, all, m1),
                    Err(PiError::RefTag { block: 0, .. })
                ));
            } else {
                // Type 3 does not count: every block carries the same tag.
                let t0 = Tuple::read(PiFormat::Guard16, &meta[off..]);
                let t3 = Tuple::read(PiFormat::Guard16, &meta[3 * ms as usize + off..]);
                assert_eq!(t0.reftag, t3.reftag);
            }
            // The escape: application tag FFFFh (and, type 3, reference tag all ones).
            let mut esc = meta.clone();
            esc[off + 2] = 0xff;
            esc[off + 3] = 0xff;
            esc[off + 4..off + 8].fill(0xff);
            verify(&f, 512, &d2[..512], &esc[..ms as usize], all, tags).unwrap();
        }
    }

    #[test]
    fn guard64_generates_and_verifies() {
        let f = MetadataFormat {
            size: 16,
            extended: false,
            pi: Some(Protection {
                kind: PiType::Type1,
                first: false,
                format: PiFormat::Guard64,
            }),
        };
        let data = vec![0u8; 2 * 4096];
        let mut meta = vec![0u8; 32];
        let tags = PiTags {
            reftag: 0x1_0000_0000,
            apptag: 1,
            appmask: 0xffff,
        };
        generate(&f, 4096, &data, &mut meta, tags).unwrap();
        assert_eq!(
            Tuple::read(PiFormat::Guard64, &meta).guard,
            0x6482_d367_eb22_b64e
        );
        assert_eq!(
            Tuple::read(PiFormat::Guard64, &meta[16..]).reftag,
            0x1_0000_0001
        );
        verify(&f, 4096, &data, &meta, Prinfo::CHECK_ALL, tags).unwrap();
    }

    #[test]
    fn shapes_and_bits() {
        let f = fmt16(PiType::Type1, false, 8);
        let mut m = vec![0u8; 7];
        assert!(matches!(
            generate(&f, 512, &[0; 512], &mut m, PiTags::default()),
            Err(PiError::Shape { .. })
        ));
        assert_eq!(Prinfo::CHECK_ALL.bits(), 0b0111);
        assert_eq!(Prinfo::from_bits(0b1010).bits(), 0b1010);
        assert!(f.pract_strips());
        assert!(!fmt16(PiType::Type1, false, 16).pract_strips());
        assert_eq!(fmt16(PiType::Type1, false, 16).pi_offset(), Some(8));
        assert_eq!(
            fmt16(PiType::Type2, true, 16).to_string(),
            "16 B separate, PI type 2 (16-bit guard, first bytes)"
        );
    }
}
