//! The `identify_parse` target: arbitrary bytes as Identify Controller, Identify Namespace
//! and Active Namespace List pages, every accessor, then the limits the driver derives
//! from them (`Limits::from_identify`, `plan::max_transfer`) and, for a block size the
//! driver accepts (a power of two in 512 ..= 64 KiB, as `Controller::new` checks), a plan.
//! Nothing may panic; wrong lengths must be refused; what the setters write the getters read.

use nvme_dio_queue::identify::{
    ActiveNamespaceList, IDENTIFY_LEN, IdentifyController, IdentifyError, IdentifyNamespace,
    MAX_LBA_FORMATS,
};
use nvme_dio_queue::plan::{self, Limits};
use nvme_dio_queue::prp::Segment;
use nvme_dio_queue::{Lba, Nsid, PageSize};

/// The whole input, decoded from raw bytes by [`IdentifyInput::from_bytes`] so that real
/// Identify pages can seed the corpus ([`IdentifyInput::to_bytes`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentifyInput {
    /// Pass the bytes as they are (any length) instead of padded/truncated to 4096.
    pub raw_length: bool,
    /// Ask for SGLs.
    pub want_sgl: bool,
    /// CAP.MPSMIN encoding (`% 16`).
    pub mpsmin: u8,
    /// CC.MPS encoding (`% 16`).
    pub mps: u8,
    /// List pages per command.
    pub list_pages: u16,
    /// Controller page bytes.
    pub ctrl: Vec<u8>,
    /// Namespace page bytes.
    pub ns: Vec<u8>,
}

/// Header bytes before the pages.
const HEADER: usize = 7;

impl IdentifyInput {
    /// Byte 0: bit 0 raw length, bit 1 want SGL; byte 1 MPSMIN; byte 2 MPS; bytes 3..5 list
    /// pages (LE); bytes 5..7 (LE) where the controller bytes end when `raw_length`, else
    /// the controller page is the next 4096 bytes and the namespace page the 4096 after.
    pub fn from_bytes(data: &[u8]) -> IdentifyInput {
        let mut h = [0u8; HEADER];
        let n = data.len().min(HEADER);
        h[..n].copy_from_slice(&data[..n]);
        let rest = &data[n..];
        let raw_length = h[0] & 1 != 0;
        let split = if raw_length {
            (u16::from_le_bytes([h[5], h[6]]) as usize).min(rest.len())
        } else {
            rest.len().min(IDENTIFY_LEN)
        };
        let (ctrl, ns) = rest.split_at(split);
        IdentifyInput {
            raw_length,
            want_sgl: h[0] & 2 != 0,
            mpsmin: h[1],
            mps: h[2],
            list_pages: u16::from_le_bytes([h[3], h[4]]),
            ctrl: ctrl.to_vec(),
            ns: ns.to_vec(),
        }
    }

    /// The bytes [`IdentifyInput::from_bytes`] decodes back to `self` (with 4096-byte pages
    /// unless `raw_length`).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = vec![
            self.raw_length as u8 | (self.want_sgl as u8) << 1,
            self.mpsmin,
            self.mps,
        ];
        v.extend_from_slice(&self.list_pages.to_le_bytes());
        v.extend_from_slice(&(self.ctrl.len() as u16).to_le_bytes());
        v.extend_from_slice(&page(&self.ctrl, self.raw_length));
        v.extend_from_slice(&page(&self.ns, self.raw_length));
        v
    }
}

fn page(bytes: &[u8], raw: bool) -> Vec<u8> {
    if raw {
        return bytes.to_vec();
    }
    let mut v = bytes.to_vec();
    v.resize(IDENTIFY_LEN, 0);
    v
}

/// Runs every parser and accessor on the input.
pub fn check(inp: &IdentifyInput) {
    let cbytes = page(&inp.ctrl, inp.raw_length);
    let nbytes = page(&inp.ns, inp.raw_length);
    let wrong = |len: usize| IdentifyError::WrongLength {
        len,
        expected: IDENTIFY_LEN,
    };

    let ctrl = IdentifyController::from_bytes(&cbytes);
    let ns = IdentifyNamespace::from_bytes(&nbytes);
    let list = ActiveNamespaceList::parse(&cbytes);
    if cbytes.len() != IDENTIFY_LEN {
        assert_eq!(ctrl, Err(wrong(cbytes.len())));
        assert_eq!(list.as_ref().unwrap_err(), &wrong(cbytes.len()));
    }
    if nbytes.len() != IDENTIFY_LEN {
        assert_eq!(ns, Err(wrong(nbytes.len())));
    }
    if let Ok(nsids) = list {
        assert!(nsids.len() <= IDENTIFY_LEN / 4);
        assert!(
            nsids.iter().all(|n| n.0 != 0),
            "the list ends at the first zero"
        );
        let again = ActiveNamespaceList::parse(&ActiveNamespaceList::encode(&nsids)).unwrap();
        assert_eq!(again, nsids, "encode/parse round trip");
        let _ = ActiveNamespaceList::encode(&[Nsid(1); 2000]);
    }
    let (Ok(ctrl), Ok(ns)) = (ctrl, ns) else {
        return;
    };
    controller_accessors(&ctrl);
    namespace_accessors(&ns);

    let mpsmin = PageSize::from_mps(inp.mpsmin % 16).unwrap();
    let page = PageSize::from_mps(inp.mps % 16).unwrap();
    let list_pages = inp.list_pages as usize;
    let limits = Limits::from_identify(&ctrl, &ns, mpsmin, page, list_pages, inp.want_sgl);
    let mt = plan::max_transfer(ctrl.max_transfer_bytes(mpsmin), page, list_pages);
    assert_eq!(limits.max_transfer, mt);
    // At least a page unless MDTS (in MPSMIN units) says less.
    assert!(
        mt as u64 >= page.bytes() as u64
            || ctrl
                .max_transfer_bytes(mpsmin)
                .is_some_and(|m| m == mt as u64),
        "max transfer {mt} below a page without MDTS saying so"
    );
    if let Some(m) = ctrl.max_transfer_bytes(mpsmin) {
        assert!(mt as u64 <= m, "max transfer {mt} above MDTS {m}");
    }
    assert_eq!(limits.sgl.is_some(), inp.want_sgl && ctrl.sgls().supported);
    if let Some(s) = limits.sgl {
        assert!((1..=1024).contains(&s.max_descriptors), "{s:?}");
    }
    assert_eq!(limits.ns_blocks, ns.nsze());
    assert_eq!(limits.noiob, ns.noiob() as u32);

    // The driver refuses other block sizes at bring-up; for the ones it accepts, a plan of
    // one block at the namespace's last LBA and one just past it must not panic.
    let lba = limits.lba_size;
    if lba.is_power_of_two() && (512..=65536).contains(&lba) {
        let seg = [Segment::new(0x10_0000, lba)];
        let last = limits.ns_blocks.saturating_sub(1);
        let _ = plan::plan(&seg, Lba(last), &limits);
        let _ = plan::plan(&seg, Lba(limits.ns_blocks), &limits);
        let big = [Segment::new(0x10_0000, !(lba - 1))];
        let _ = plan::plan(&big, Lba(0), &limits);
    }
}

fn controller_accessors(c: &IdentifyController) {
    let _ = format!("{c:?}");
    let _ = (
        c.vid(),
        c.ssvid(),
        c.mdts(),
        c.cntlid(),
        c.ver_raw(),
        c.oacs_raw(),
    );
    let _ = (
        c.acl_raw(),
        c.aerl_raw(),
        c.maxcmd(),
        c.nn(),
        c.oncs_raw(),
        c.vwc_raw(),
        c.sgls_raw(),
    );
    let _ = (c.serial(), c.model(), c.firmware());
    let v = c.ver();
    let _ = (v.major(), v.minor(), v.tertiary());
    let _ = c.oacs().doorbell_buffer_config();
    assert!((1..=256).contains(&c.acl()));
    assert!((1..=256).contains(&c.aerl()));
    let _ = (c.sqes(), c.cqes());
    let _ = (
        c.oncs().write_zeroes(),
        c.oncs().dataset_management(),
        c.vwc_present(),
    );
    let s = c.sgls();
    assert!(!s.dword_aligned_only || s.supported);
    for mps in 0..=15 {
        let p = PageSize::from_mps(mps).unwrap();
        match (c.mdts(), c.max_transfer_bytes(p)) {
            (0, None) => {}
            (m, Some(b)) if m != 0 => {
                let shift = p.shift() + m as u32;
                assert_eq!(b, if shift >= 64 { u64::MAX } else { 1 << shift });
            }
            other => panic!("MDTS {other:?} at MPSMIN {mps}"),
        }
    }
    // What the setters write, the getters read back.
    let mut b = c.clone();
    b.set_serial(&c.serial())
        .set_model(&c.model())
        .set_firmware(&c.firmware());
    // ASCII fields (non-ASCII bytes come back as U+FFFD, which does not fit back).
    if c.serial().is_ascii() {
        assert_eq!(b.serial(), c.serial());
    }
    if c.model().is_ascii() {
        assert_eq!(b.model(), c.model());
    }
    let mut b = IdentifyController::builder();
    b.set_acl(c.acl())
        .set_aerl(c.aerl())
        .set_sqes(c.sqes())
        .set_cqes(c.cqes());
    b.set_vwc_present(c.vwc_present())
        .set_sgls(c.sgls_raw())
        .set_mdts(c.mdts());
    assert_eq!(
        (b.acl(), b.aerl(), b.sqes(), b.cqes()),
        (c.acl(), c.aerl(), c.sqes(), c.cqes())
    );
    assert_eq!((b.vwc_present(), b.sgls()), (c.vwc_present(), c.sgls()));
}

fn namespace_accessors(n: &IdentifyNamespace) {
    let _ = format!("{n:?}");
    let _ = (
        n.nsze(),
        n.ncap(),
        n.nuse(),
        n.nsfeat(),
        n.nlbaf_raw(),
        n.flbas(),
        n.dlfeat(),
        n.noiob(),
    );
    let count = n.nlbaf() as usize;
    assert!((1..=MAX_LBA_FORMATS).contains(&count));
    for i in 0..count {
        let f = n.lbaf(i);
        assert!(f.data_size == 0 || f.data_size.is_power_of_two(), "{f:?}");
        assert!(f.relative_performance <= 3);
    }
    let idx = n.flbas_index() as usize;
    assert!(idx < MAX_LBA_FORMATS, "FLBAS index {idx}");
    let cur = n.current_lba_format();
    assert_eq!(cur, n.lbaf(idx));
    // Round trips through the setters.
    let mut b = n.clone();
    b.set_nlbaf(n.nlbaf());
    assert_eq!(b.nlbaf(), n.nlbaf());
    b.set_flbas_index(n.flbas_index());
    assert_eq!(b.flbas_index(), n.flbas_index());
    for i in 0..count {
        let f = n.lbaf(i);
        b.set_lbaf(i, f);
        assert_eq!(b.lbaf(i), f, "LBA format {i} round trip");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_full_and_short_pages() {
        for (raw, fill, len) in [
            (false, 0u8, 4096),
            (false, 0xff, 4096),
            (true, 0xff, 100),
            (true, 7, 4097),
        ] {
            check(&IdentifyInput {
                raw_length: raw,
                want_sgl: true,
                mpsmin: fill,
                mps: fill,
                list_pages: (fill as u16).wrapping_mul(300),
                ctrl: vec![fill; len],
                ns: vec![fill; len],
            });
        }
    }
}
