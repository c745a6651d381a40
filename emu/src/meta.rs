//! Reads and writes on namespaces with metadata (NVM Command Set 1.0, 5.2) and end-to-end
//! protection information (5.3), checked as QEMU 7.2 checks them (`hw/nvme/ctrl.c`
//! `nvme_read`/`nvme_do_write`, `hw/nvme/dif.c`):
//!
//! - The mapped length is the data plus, for an extended LBA format, each block's metadata;
//!   except with PRACT when the metadata is exactly one PI tuple: then no metadata moves at
//!   all (the controller inserts it on writes and strips it on reads). MDTS applies to the
//!   mapped length.
//! - Separate metadata moves through MPTR: one contiguous, dword-aligned buffer (QEMU does
//!   not check the alignment; we do, Invalid Field, and an unmapped MPTR is a Data Transfer
//!   Error, where QEMU would skip a zero MPTR on a namespace without PI).
//! - PRINFO on a namespace without PI is ignored (as QEMU). With PI: type 1 with the
//!   reference tag check needs ILBRT == the LBA's low bits, else Invalid Protection
//!   Information (1/0x81, DNR); type 3 with the reference tag check is Invalid Protection
//!   Information without DNR.
//! - A write with PRACT gets fresh tuples; without, the host's tuples are checked per PRCHK
//!   and a failure stores nothing: End-to-end Guard / Application Tag / Reference Tag Check
//!   Error (2/0x82, 0x83, 0x84; QEMU sets no DNR on them).
//! - A read is checked per PRCHK before any data moves. Blocks never written, zeroed or
//!   deallocated read with an all-ones tuple, so their checks are skipped (QEMU gets there
//!   through the block layer's zero status).
//!
//! This path bounces through host vectors; namespaces without metadata keep the direct path
//! in `io.rs`.

use nvme_dio_queue::pi::{self, MetadataFormat, PiError, PiTags, Prinfo};
use nvme_dio_queue::status::{sc, sct};
use nvme_dio_queue::{Sqe, Status};

use crate::ctrl::{State, generic};
use crate::io::Dir;

/// Invalid Protection Information (command specific 0x81).
pub(crate) const INVALID_PROT_INFO: u8 = 0x81;

/// The status a failed PI check completes with (no DNR, as QEMU).
pub(crate) fn pi_status(e: PiError) -> Status {
    let code = match e {
        PiError::Guard { .. } => 0x82,
        PiError::AppTag { .. } => 0x83,
        PiError::RefTag { .. } => 0x84,
        PiError::Shape { .. } => return generic(sc::INTERNAL_ERROR),
    };
    Status::new(sct::MEDIA, code)
}

impl crate::ctrl::Namespace {
    /// The metadata format (only for namespaces with metadata).
    pub(crate) fn format(&self) -> MetadataFormat {
        MetadataFormat {
            size: self.ms,
            extended: self.cfg.extended,
            pi: self.cfg.pi,
        }
    }

    /// Gives blocks `slba..slba+nlb` the all-ones tuple that turns checking off (unwritten,
    /// zeroed, deallocated blocks), when the namespace has PI.
    pub(crate) fn escape_pi(&mut self, slba: u64, nlb: u64) {
        let f = self.format();
        let (Some(off), Some(p)) = (f.pi_offset(), f.pi) else {
            return;
        };
        if self.meta.is_empty() {
            return;
        }
        let ms = self.ms as usize;
        let t = p.format.tuple_size() as usize;
        for b in slba as usize..(slba + nlb) as usize {
            self.meta[b * ms + off..b * ms + off + t].fill(0xff);
        }
    }
}

/// The PI fields of a read/write/verify: PRINFO (CDW12 bits 29:26) and the tags (CDW14 with
/// CDW3 bits 15:0 above it; CDW15).
pub(crate) fn pi_fields(s: &Sqe, prinfo_shift: u32) -> (Prinfo, PiTags) {
    (
        Prinfo::from_bits(((s.cdw12 >> prinfo_shift) & 0xf) as u8),
        PiTags {
            reftag: s.cdw14 as u64 | ((s.cdw3 & 0xffff) as u64) << 32,
            apptag: s.cdw15 as u16,
            appmask: (s.cdw15 >> 16) as u16,
        },
    )
}

/// QEMU's `nvme_check_prinfo`.
pub(crate) fn check_prinfo(
    f: &MetadataFormat,
    prinfo: Prinfo,
    slba: u64,
    reftag: u64,
) -> Result<(), Status> {
    let Some(p) = f.pi else { return Ok(()) };
    match p.kind {
        pi::PiType::Type1 if prinfo.ref_tag && (slba & p.format.ref_mask()) != reftag => {
            Err(Status::new(sct::COMMAND_SPECIFIC, INVALID_PROT_INFO).with_dnr())
        }
        pi::PiType::Type3 if prinfo.ref_tag => {
            Err(Status::new(sct::COMMAND_SPECIFIC, INVALID_PROT_INFO))
        }
        _ => Ok(()),
    }
}

impl State {
    /// Read or Write on namespace `i`, which has metadata. See the module docs.
    pub(crate) fn rw_meta(
        &mut self,
        s: &Sqe,
        dir: Dir,
        i: usize,
        slba: u64,
        nlb: u64,
    ) -> Result<(), Status> {
        let ns = &self.ns[i];
        let f = ns.format();
        let lbasz = 1usize << ns.lba_shift;
        let ms = ns.ms as usize;
        let (prinfo, tags) = if f.pi.is_some() {
            pi_fields(s, 26)
        } else {
            (Prinfo::default(), PiTags::default())
        };
        let strips = f.pi.is_some() && prinfo.pract && f.pract_strips();
        let inband = f.extended && !strips;
        let data_len = nlb as usize * lbasz;
        let md_len = nlb as usize * ms;
        let mapped = data_len + if inband { md_len } else { 0 };
        if self.mdts_bytes != 0 && mapped as u64 > self.mdts_bytes {
            return Err(generic(sc::INVALID_FIELD));
        }
        self.check_range(i, slba, nlb)?;
        check_prinfo(&f, prinfo, slba, tags.reftag)?;
        let separate = !f.extended && !strips;
        if separate {
            if s.mptr & 3 != 0 {
                return Err(generic(sc::INVALID_FIELD));
            }
            let mut h = self.data_hint;
            if !self.table.check(s.mptr, md_len as u64, &mut h) {
                return Err(generic(sc::DATA_TRANSFER_ERROR));
            }
        }
        let mut stream = vec![0u8; mapped];
        match dir {
            Dir::FromHost => {
                self.transfer(s, self.cfg.sgl, Dir::FromHost, &mut stream)?;
                let (data, mut meta) = if inband {
                    deinterleave(&stream, lbasz, ms)
                } else {
                    (stream, vec![0u8; md_len])
                };
                if separate {
                    let mut h = self.data_hint;
                    // Checked above, under the same lock.
                    let _ = self.table.read(s.mptr, &mut meta, &mut h);
                }
                if f.pi.is_some() {
                    if prinfo.pract {
                        pi::generate(&f, lbasz, &data, &mut meta, tags).map_err(pi_status)?;
                    } else {
                        pi::verify(&f, lbasz, &data, &meta, prinfo, tags).map_err(pi_status)?;
                    }
                }
                let ns = &mut self.ns[i];
                if ns.ram {
                    let a = slba as usize * lbasz;
                    ns.data[a..a + data_len].copy_from_slice(&data);
                    let m = slba as usize * ms;
                    ns.meta[m..m + md_len].copy_from_slice(&meta);
                }
                self.bytes_written += data_len as u64;
                self.cached(i, slba, nlb, s.cdw12 & (1 << 30) != 0);
            }
            Dir::ToHost => {
                // Validate the data pointer before anything moves.
                self.check_dptr(s, mapped as u64)?;
                let ns = &self.ns[i];
                if ns.ram {
                    let a = slba as usize * lbasz;
                    let data = &ns.data[a..a + data_len];
                    let m = slba as usize * ms;
                    let meta = &ns.meta[m..m + md_len];
                    if f.pi.is_some() {
                        pi::verify(&f, lbasz, data, meta, prinfo, tags).map_err(pi_status)?;
                    }
                    if inband {
                        interleave(&mut stream, data, meta, lbasz, ms);
                    } else {
                        stream.copy_from_slice(data);
                    }
                    let meta = meta.to_vec();
                    self.transfer(s, self.cfg.sgl, Dir::ToHost, &mut stream)?;
                    if separate {
                        let mut h = self.data_hint;
                        let _ = self.table.write(s.mptr, &meta, &mut h);
                    }
                }
                self.bytes_read += data_len as u64;
            }
        }
        Ok(())
    }
}

/// Splits an extended-LBA stream (data, metadata, data, metadata ...) in two.
pub(crate) fn deinterleave(stream: &[u8], lbasz: usize, ms: usize) -> (Vec<u8>, Vec<u8>) {
    let n = stream.len() / (lbasz + ms);
    let mut data = Vec::with_capacity(n * lbasz);
    let mut meta = Vec::with_capacity(n * ms);
    for b in stream.chunks_exact(lbasz + ms) {
        data.extend_from_slice(&b[..lbasz]);
        meta.extend_from_slice(&b[lbasz..]);
    }
    (data, meta)
}

/// The inverse of [`deinterleave`].
pub(crate) fn interleave(stream: &mut [u8], data: &[u8], meta: &[u8], lbasz: usize, ms: usize) {
    for (k, b) in stream.chunks_exact_mut(lbasz + ms).enumerate() {
        b[..lbasz].copy_from_slice(&data[k * lbasz..(k + 1) * lbasz]);
        b[lbasz..].copy_from_slice(&meta[k * ms..(k + 1) * ms]);
    }
}

/// Command Size Limit Exceeded (command specific 0x83).
const CMD_SIZE_LIMIT: u8 = 0x83;
/// Invalid Format (command specific 0x0a).
const INVALID_FORMAT: u8 = 0x0a;

impl State {
    /// Verify (NVM Command Set 1.0, 3.2.9), as QEMU 7.2's `nvme_verify`: PRINFO checked as
    /// for a read (PRACT is Invalid Protection Information), VSL, the range, then the PI of
    /// every block per PRCHK. No data moves.
    pub(crate) fn verify(&mut self, s: &Sqe) -> Result<(), Status> {
        let i = self.ns_index(s.nsid)?;
        let slba = s.cdw10 as u64 | (s.cdw11 as u64) << 32;
        let nlb = (s.cdw12 & 0xffff) as u64 + 1;
        let ns = &self.ns[i];
        let f = ns.format();
        let (prinfo, tags) = pi_fields(s, 26);
        if ns.ms != 0 && f.pi.is_some() {
            check_prinfo(&f, prinfo, slba, tags.reftag)?;
            if prinfo.pract {
                return Err(Status::new(sct::COMMAND_SPECIFIC, INVALID_PROT_INFO).with_dnr());
            }
        }
        let vsl = self.cfg.nvm_limits.map_or(7, |l| l.vsl);
        if vsl != 0 && nlb << ns.lba_shift > self.page << vsl {
            return Err(generic(sc::INVALID_FIELD));
        }
        self.check_range(i, slba, nlb)?;
        let ns = &self.ns[i];
        if ns.ram && ns.ms != 0 && f.pi.is_some() {
            let lbasz = 1usize << ns.lba_shift;
            let ms = ns.ms as usize;
            let (a, m) = (slba as usize * lbasz, slba as usize * ms);
            pi::verify(
                &f,
                lbasz,
                &ns.data[a..a + nlb as usize * lbasz],
                &ns.meta[m..m + nlb as usize * ms],
                prinfo,
                tags,
            )
            .map_err(pi_status)?;
        }
        Ok(())
    }

    /// Copy (NVM Command Set 1.0, 3.2.2), simple copy with format 0 source ranges, as QEMU
    /// 7.2's `nvme_copy`: PRACT must agree between PRINFOR and PRINFOW on a PI namespace
    /// (Invalid Field), the format must be supported (OCFS) and match the guard (format 0 for
    /// 16-bit, Invalid Format), NR over MSRC and a range over MSSRL are Command Size Limit
    /// Exceeded, as is the total over MCL (which QEMU 7.2 does not check). Ranges are read
    /// and written in order, data with its metadata; a failing range stops the copy there.
    pub(crate) fn copy(&mut self, s: &Sqe) -> Result<(), Status> {
        let i = self.ns_index(s.nsid)?;
        let nr = (s.cdw12 & 0xff) as usize + 1;
        let format = (s.cdw12 >> 8) & 0xf;
        let prinfor = Prinfo::from_bits(((s.cdw12 >> 12) & 0xf) as u8);
        let prinfow = Prinfo::from_bits(((s.cdw12 >> 26) & 0xf) as u8);
        let f = self.ns[i].format();
        let pi_ns = self.ns[i].ms != 0 && f.pi.is_some();
        if pi_ns && prinfor.pract != prinfow.pract {
            return Err(generic(sc::INVALID_FIELD));
        }
        if format > 1 {
            return Err(generic(sc::INVALID_FIELD));
        }
        let limits = self.ns[i].cfg.copy;
        if nr > limits.msrc as usize {
            return Err(Status::new(sct::COMMAND_SPECIFIC, CMD_SIZE_LIMIT).with_dnr());
        }
        let guard64 = f.pi.is_some_and(|p| p.format == pi::PiFormat::Guard64);
        if pi_ns && guard64 != (format == 1) || !pi_ns && format != 0 {
            return Err(Status::new(sct::COMMAND_SPECIFIC, INVALID_FORMAT).with_dnr());
        }
        if prinfor.any() || prinfow.any() {
            // PI checks on a copy are not modelled: refuse rather than pretend.
            return Err(Status::new(sct::COMMAND_SPECIFIC, INVALID_PROT_INFO).with_dnr());
        }
        let entry = if format == 1 { 40 } else { 32 };
        let mut list = vec![0u8; nr * entry];
        self.transfer(s, self.cfg.sgl, Dir::FromHost, &mut list)?;
        let ranges: Vec<(u64, u64)> = list
            .chunks_exact(entry)
            .map(|r| {
                (
                    u64::from_le_bytes(r[8..16].try_into().expect("8 bytes")),
                    u16::from_le_bytes([r[16], r[17]]) as u64 + 1,
                )
            })
            .collect();
        let total: u64 = ranges.iter().map(|r| r.1).sum();
        if limits.mcl != 0 && total > limits.mcl as u64 {
            return Err(Status::new(sct::COMMAND_SPECIFIC, CMD_SIZE_LIMIT).with_dnr());
        }
        let mut dest = s.cdw10 as u64 | (s.cdw11 as u64) << 32;
        self.check_range(i, dest, total)?;
        for &(slba, nlb) in &ranges {
            if nlb > limits.mssrl as u64 {
                return Err(Status::new(sct::COMMAND_SPECIFIC, CMD_SIZE_LIMIT).with_dnr());
            }
            self.check_range(i, slba, nlb)?;
            let ns = &mut self.ns[i];
            if ns.ram {
                let l = 1usize << ns.lba_shift;
                let ms = ns.ms as usize;
                let n = nlb as usize;
                ns.data.copy_within(
                    slba as usize * l..(slba as usize + n) * l,
                    dest as usize * l,
                );
                ns.meta.copy_within(
                    slba as usize * ms..(slba as usize + n) * ms,
                    dest as usize * ms,
                );
            }
            self.bytes_written += nlb << self.ns[i].lba_shift;
            self.cached(i, dest, nlb, s.cdw12 & (1 << 30) != 0);
            dest += nlb;
        }
        Ok(())
    }
}
