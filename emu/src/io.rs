//! NVM command set I/O commands (NVM Command Set 1.0, 3) and the data pointer walkers:
//! PRPs (Base 2.0, 4.1.1) and SGLs (Base 2.0, 4.1.2).
//!
//! Every command's data pointer is walked twice when data moves (RAM backing): once to
//! validate every entry and translation, then to copy, so a failed command moves no data.
//! A null namespace walks once (validation only) and copies nothing.

use nvme_dio_queue::opcode::nvm;
use nvme_dio_queue::status::sc;
use nvme_dio_queue::{Sqe, Status};

use crate::ctrl::{Outcome, State, generic};
use crate::mem::Table;

/// CDW12 bit 30: Force Unit Access (NVM Command Set 1.0, 3.2.6).
const FUA: u32 = 1 << 30;

/// Most mappings (PRP entries or SGL data blocks) one command may use, like QEMU (IOV_MAX);
/// beyond it QEMU fails with Internal Error, and so do we.
pub(crate) const MAX_MAPPINGS: u32 = 1024;

/// Walks the PRPs of a `len`-byte transfer, calling `f(iova, n)` per piece, in order.
///
/// Rules (Base 2.0, 4.1.1), each a DNR failure:
/// - PRP1 must be dword aligned: Invalid PRP Offset (0/0x13). QEMU does not check this;
///   we do, because a real controller may silently mask the low bits.
/// - PRP2 used as a data pointer must be page aligned: 0/0x13 (QEMU too).
/// - PRP2 used as a list pointer may carry an offset but must be quadword aligned (it
///   addresses 8-byte entries): 0/0x13 (QEMU does not check).
/// - Every list entry and chain pointer must be page aligned: 0/0x13 (QEMU too).
/// - A list that cannot be read: Data Transfer Error (0/0x04).
/// - More than [`MAX_MAPPINGS`] entries: Internal Error (0/0x06).
///
/// PRPs carry no lengths: the transfer length comes from the command (NLB), and a mismatch
/// shows as the walk consuming list entries the host never wrote (usually unmapped or
/// misaligned, hence 0/0x04 or 0/0x13) or leaving written ones unused (undetectable, as on
/// real hardware). SGLs carry lengths, and any mismatch is Data SGL Length Invalid.
#[inline]
pub(crate) fn walk_prp(
    table: &Table,
    page: u64,
    prp1: u64,
    prp2: u64,
    len: u64,
    list_hint: &mut usize,
    mut f: impl FnMut(u64, u64) -> Result<(), Status>,
) -> Result<(), Status> {
    if prp1 & 3 != 0 {
        return Err(generic(sc::INVALID_PRP_OFFSET));
    }
    let mask = page - 1;
    let first = len.min(page - (prp1 & mask));
    f(prp1, first)?;
    let mut rem = len - first;
    if rem == 0 {
        return Ok(());
    }
    if rem <= page {
        if prp2 & mask != 0 {
            return Err(generic(sc::INVALID_PRP_OFFSET));
        }
        return f(prp2, rem);
    }
    walk_prp_list(table, page, prp2, &mut rem, list_hint, f)
}

#[inline(never)]
fn walk_prp_list(
    table: &Table,
    page: u64,
    prp2: u64,
    rem: &mut u64,
    list_hint: &mut usize,
    mut f: impl FnMut(u64, u64) -> Result<(), Status>,
) -> Result<(), Status> {
    let mask = page - 1;
    if prp2 & 7 != 0 {
        return Err(generic(sc::INVALID_PRP_OFFSET));
    }
    let mut maps = 1u32;
    let mut list = prp2;
    loop {
        let entries = (page - (list & mask)) / 8;
        let mut next = None;
        for i in 0..entries {
            let Some(e) = table.read_u64(list + i * 8, list_hint) else {
                return Err(generic(sc::DATA_TRANSFER_ERROR));
            };
            if e & mask != 0 {
                return Err(generic(sc::INVALID_PRP_OFFSET));
            }
            if i == entries - 1 && *rem > page {
                next = Some(e); // chain pointer to the next list page
                break;
            }
            maps += 1;
            if maps > MAX_MAPPINGS {
                return Err(generic(sc::INTERNAL_ERROR));
            }
            let n = (*rem).min(page);
            f(e, n)?;
            *rem -= n;
            if *rem == 0 {
                return Ok(());
            }
        }
        match next {
            Some(e) => list = e,
            None => return Err(generic(sc::INTERNAL_ERROR)), // unreachable: rem > 0 ends a page only via a chain
        }
    }
}

/// SGL descriptor types (Base 2.0, 4.1.2, Figure 92).
const SGL_DATA_BLOCK: u8 = 0x0;
const SGL_SEGMENT: u8 = 0x2;
const SGL_LAST_SEGMENT: u8 = 0x3;

/// Walks an SGL for a `len`-byte transfer, calling `f(iova, n)` per data block, in order.
///
/// Supported: Data Block (0), Segment (2), Last Segment (3), address subtype 0 only.
/// Failures (all DNR): an unknown type or subtype -> SGL Descriptor Type Invalid (0/0x11);
/// a segment whose length is 0 or not a multiple of 16, a Segment descriptor not last in
/// its segment, or a Segment inside a Last Segment -> Invalid SGL Segment Descriptor
/// (0/0x0d); data blocks adding up to more or less than the transfer -> Data SGL Length
/// Invalid (0/0x0f); an unreadable segment -> Data Transfer Error (0/0x04); more than
/// [`MAX_MAPPINGS`] descriptors -> Internal Error (0/0x06).
pub(crate) fn walk_sgl(
    table: &Table,
    d0: (u64, u64),
    len: u64,
    list_hint: &mut usize,
    mut f: impl FnMut(u64, u64) -> Result<(), Status>,
) -> Result<(), Status> {
    let decode = |lo: u64, hi: u64| (lo, hi as u32 as u64, (hi >> 56) as u8);
    let (addr, dlen, tb) = decode(d0.0, d0.1);
    let mut done = 0u64;
    let mut maps = 0u32;
    let mut data = |addr: u64, n: u64, done: &mut u64, maps: &mut u32| {
        *maps += 1;
        if *maps > MAX_MAPPINGS {
            return Err(generic(sc::INTERNAL_ERROR));
        }
        if *done + n > len {
            return Err(generic(sc::SGL_LENGTH_INVALID));
        }
        if n > 0 {
            f(addr, n)?;
        }
        *done += n;
        Ok(())
    };
    if tb & 0xf != 0 {
        return Err(generic(sc::SGL_DESCRIPTOR_TYPE_INVALID));
    }
    let (mut seg, mut seg_len, mut last) = match tb >> 4 {
        SGL_DATA_BLOCK => {
            data(addr, dlen, &mut done, &mut maps)?;
            return if done == len {
                Ok(())
            } else {
                Err(generic(sc::SGL_LENGTH_INVALID))
            };
        }
        SGL_SEGMENT => (addr, dlen, false),
        SGL_LAST_SEGMENT => (addr, dlen, true),
        _ => return Err(generic(sc::SGL_DESCRIPTOR_TYPE_INVALID)),
    };
    loop {
        if seg_len == 0 || seg_len % 16 != 0 {
            return Err(generic(0x0d));
        }
        let n = seg_len / 16;
        let mut next = None;
        for i in 0..n {
            let mut b = [0u8; 16];
            if !table.read(seg + i * 16, &mut b, list_hint) {
                return Err(generic(sc::DATA_TRANSFER_ERROR));
            }
            let lo = u64::from_le_bytes(b[..8].try_into().expect("8 bytes"));
            let hi = u64::from_le_bytes(b[8..].try_into().expect("8 bytes"));
            let (a, l, t) = decode(lo, hi);
            if t & 0xf != 0 {
                return Err(generic(sc::SGL_DESCRIPTOR_TYPE_INVALID));
            }
            match t >> 4 {
                SGL_DATA_BLOCK => data(a, l, &mut done, &mut maps)?,
                SGL_SEGMENT | SGL_LAST_SEGMENT => {
                    if last || i != n - 1 {
                        return Err(generic(0x0d));
                    }
                    maps += 1;
                    if maps > MAX_MAPPINGS {
                        return Err(generic(sc::INTERNAL_ERROR));
                    }
                    next = Some((a, l, t >> 4 == SGL_LAST_SEGMENT));
                }
                _ => return Err(generic(sc::SGL_DESCRIPTOR_TYPE_INVALID)),
            }
        }
        match next {
            Some((a, l, is_last)) => {
                seg = a;
                seg_len = l;
                last = is_last;
            }
            None => break,
        }
    }
    if done == len {
        Ok(())
    } else {
        Err(generic(sc::SGL_LENGTH_INVALID))
    }
}

/// Which way data moves.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Dir {
    /// Controller to host (Read, Identify, Get Log Page).
    ToHost,
    /// Host to controller (Write, DSM ranges).
    FromHost,
}

impl State {
    /// Walks the data pointer of `s` for `len` bytes (PRPs or, if enabled, SGLs).
    #[inline]
    fn walk_dptr(
        table: &Table,
        page: u64,
        sgl_ok: bool,
        s: &Sqe,
        len: u64,
        list_hint: &mut usize,
        f: impl FnMut(u64, u64) -> Result<(), Status>,
    ) -> Result<(), Status> {
        match s.flags >> 6 {
            0 => walk_prp(table, page, s.prp1, s.prp2, len, list_hint, f),
            1 if sgl_ok => walk_sgl(table, (s.prp1, s.prp2), len, list_hint, f),
            _ => Err(generic(sc::INVALID_FIELD)),
        }
    }

    /// Validates the data pointer of `s` for `len` bytes and, if `buf` is given, moves the
    /// data between it and host memory. Used by admin commands and DSM (small buffers).
    pub(crate) fn transfer(
        &mut self,
        s: &Sqe,
        sgl_ok: bool,
        dir: Dir,
        buf: &mut [u8],
    ) -> Result<(), Status> {
        let len = buf.len() as u64;
        let table = &self.table;
        let mut dh = self.data_hint;
        let mut lh = self.list_hint;
        let r = (|| {
            State::walk_dptr(table, self.page, sgl_ok, s, len, &mut lh, |iova, n| {
                if table.check(iova, n, &mut dh) {
                    Ok(())
                } else {
                    Err(generic(sc::DATA_TRANSFER_ERROR))
                }
            })?;
            let mut off = 0usize;
            State::walk_dptr(table, self.page, sgl_ok, s, len, &mut lh, |iova, n| {
                let n = n as usize;
                let ok = match dir {
                    Dir::ToHost => table.write(iova, &buf[off..off + n], &mut dh),
                    Dir::FromHost => table.read(iova, &mut buf[off..off + n], &mut dh),
                };
                off += n;
                if ok {
                    Ok(())
                } else {
                    Err(generic(sc::DATA_TRANSFER_ERROR))
                }
            })
        })();
        self.data_hint = dh;
        self.list_hint = lh;
        r
    }

    /// Validates the data pointer of `s` for `len` bytes without moving data.
    pub(crate) fn check_dptr(&mut self, s: &Sqe, len: u64) -> Result<(), Status> {
        let table = &self.table;
        let mut dh = self.data_hint;
        let mut lh = self.list_hint;
        let r = State::walk_dptr(
            table,
            self.page,
            self.cfg.sgl,
            s,
            len,
            &mut lh,
            |iova, n| {
                if table.check(iova, n, &mut dh) {
                    Ok(())
                } else {
                    Err(generic(sc::DATA_TRANSFER_ERROR))
                }
            },
        );
        self.data_hint = dh;
        self.list_hint = lh;
        r
    }

    /// The namespace index for `nsid`, or Invalid Namespace or Format (0/0x0b DNR).
    #[inline]
    pub(crate) fn ns_index(&self, nsid: u32) -> Result<usize, Status> {
        if nsid == 0 || nsid as usize > self.ns.len() || !self.ns[nsid as usize - 1].active {
            Err(generic(sc::INVALID_NAMESPACE))
        } else {
            Ok(nsid as usize - 1)
        }
    }

    /// Executes an I/O command.
    #[inline]
    pub(crate) fn io(&mut self, s: &Sqe) -> Outcome {
        let r = match s.opc {
            nvm::READ => self.rw(s, Dir::ToHost),
            nvm::WRITE => self.rw(s, Dir::FromHost),
            _ => self.io_other(s),
        };
        match r {
            Ok(()) => Outcome::Done(0, Status::SUCCESS),
            Err(st) => Outcome::Done(0, st),
        }
    }

    #[inline(never)]
    fn io_other(&mut self, s: &Sqe) -> Result<(), Status> {
        if s.flags & 0x3 != 0 {
            return Err(generic(sc::INVALID_FIELD)); // fused operations are not supported
        }
        match s.opc {
            nvm::FLUSH => {
                if s.nsid == 0xffff_ffff && self.cfg.vwc {
                    // VWC reports NSID FFFFFFFFh flush support.
                    for i in 0..self.ns.len() {
                        self.flush_cache(i);
                    }
                    return Ok(());
                }
                let i = self.ns_index(s.nsid)?;
                self.flush_cache(i);
                Ok(())
            }
            nvm::VERIFY if self.cfg.copy_verify => self.verify(s),
            nvm::COPY if self.cfg.copy_verify => self.copy(s),
            nvm::WRITE_ZEROES => {
                let i = self.ns_index(s.nsid)?;
                let (slba, nlb) = (
                    s.cdw10 as u64 | (s.cdw11 as u64) << 32,
                    (s.cdw12 & 0xffff) as u64 + 1,
                );
                // WZSL, where the CNS 06h page reports one (stricter than QEMU 7.2, which
                // reports none): Invalid Field.
                if let Some(l) = self.cfg.nvm_limits.filter(|l| l.wzsl != 0) {
                    if nlb << self.ns[i].lba_shift > self.page << l.wzsl {
                        return Err(generic(sc::INVALID_FIELD));
                    }
                }
                self.check_range(i, slba, nlb)?;
                self.zero(i, slba, nlb);
                self.cached(i, slba, nlb, s.cdw12 & FUA != 0);
                Ok(())
            }
            nvm::DATASET_MANAGEMENT => {
                let i = self.ns_index(s.nsid)?;
                let nr = (s.cdw10 & 0xff) as usize + 1;
                let mut ranges = vec![0u8; nr * 16];
                self.transfer(s, self.cfg.sgl, Dir::FromHost, &mut ranges)?;
                let list: Vec<(u64, u64)> = ranges
                    .chunks_exact(16)
                    .map(|r| {
                        let nlb = u32::from_le_bytes(r[4..8].try_into().expect("4 bytes")) as u64;
                        let slba = u64::from_le_bytes(r[8..16].try_into().expect("8 bytes"));
                        (slba, nlb)
                    })
                    .collect();
                for &(slba, nlb) in &list {
                    self.check_range(i, slba, nlb)?;
                }
                // DMRL / DMRSL / DMSL where reported: Invalid Field (QEMU 7.2 skips a range
                // over DMRSL silently; a driver that splits never sends one).
                if let Some(l) = self.cfg.nvm_limits {
                    let total: u64 = list.iter().map(|r| r.1).sum();
                    if l.dmrl != 0 && nr > l.dmrl as usize
                        || l.dmrsl != 0 && list.iter().any(|r| r.1 > l.dmrsl as u64)
                        || l.dmsl != 0 && total > l.dmsl
                    {
                        return Err(generic(sc::INVALID_FIELD));
                    }
                }
                if s.cdw11 & (1 << 2) != 0 {
                    for &(slba, nlb) in &list {
                        self.zero(i, slba, nlb); // deallocated blocks read as zeroes (DLFEAT)
                        self.cached(i, slba, nlb, false);
                    }
                }
                Ok(())
            }
            _ => Err(generic(sc::INVALID_OPCODE)),
        }
    }

    #[inline]
    pub(crate) fn check_range(&self, i: usize, slba: u64, nlb: u64) -> Result<(), Status> {
        match slba.checked_add(nlb) {
            Some(end) if end <= self.ns[i].blocks => Ok(()),
            _ => Err(generic(sc::LBA_OUT_OF_RANGE)),
        }
    }

    fn zero(&mut self, i: usize, slba: u64, nlb: u64) {
        let ns = &mut self.ns[i];
        if ns.ram {
            let (a, b) = (
                (slba << ns.lba_shift) as usize,
                ((slba + nlb) << ns.lba_shift) as usize,
            );
            ns.data[a..b].fill(0);
            let ms = ns.ms as usize;
            ns.meta[slba as usize * ms..(slba + nlb) as usize * ms].fill(0);
            ns.escape_pi(slba, nlb);
        }
    }

    /// Read or Write (NVM Command Set 1.0, 3.2.4 / 3.2.6). QEMU's order of checks: MDTS,
    /// then LBA range, then the data pointer.
    #[inline]
    fn rw(&mut self, s: &Sqe, dir: Dir) -> Result<(), Status> {
        let i = self.ns_index(s.nsid)?;
        if s.flags & 0x3 != 0 {
            return Err(generic(sc::INVALID_FIELD));
        }
        let slba = s.cdw10 as u64 | (s.cdw11 as u64) << 32;
        let nlb = (s.cdw12 & 0xffff) as u64 + 1;
        if self.ns[i].ms != 0 {
            return self.rw_meta(s, dir, i, slba, nlb);
        }
        let shift = self.ns[i].lba_shift;
        let len = nlb << shift;
        if self.mdts_bytes != 0 && len > self.mdts_bytes {
            return Err(generic(sc::INVALID_FIELD));
        }
        self.check_range(i, slba, nlb)?;
        let table = &self.table;
        let sgl_ok = self.cfg.sgl;
        let mut dh = self.data_hint;
        let mut lh = self.list_hint;
        let r = State::walk_dptr(table, self.page, sgl_ok, s, len, &mut lh, |iova, n| {
            if table.check(iova, n, &mut dh) {
                Ok(())
            } else {
                Err(generic(sc::DATA_TRANSFER_ERROR))
            }
        });
        if r.is_ok() && self.ns[i].ram {
            let ns = &mut self.ns[i];
            let mut off = (slba << shift) as usize;
            let data = &mut ns.data;
            // Already validated: the copies cannot fail under the same lock.
            let _ = State::walk_dptr(table, self.page, sgl_ok, s, len, &mut lh, |iova, n| {
                let n = n as usize;
                match dir {
                    Dir::ToHost => table.write(iova, &data[off..off + n], &mut dh),
                    Dir::FromHost => table.read(iova, &mut data[off..off + n], &mut dh),
                };
                off += n;
                Ok(())
            });
        }
        self.data_hint = dh;
        self.list_hint = lh;
        if r.is_ok() {
            match dir {
                Dir::ToHost => self.bytes_read += len,
                Dir::FromHost => {
                    self.bytes_written += len;
                    self.cached(i, slba, nlb, s.cdw12 & FUA != 0);
                }
            }
        }
        r
    }

    // ------------------------------------------------------------ volatile write cache

    /// Blocks `slba..slba+nlb` of namespace `i` were just written (in `data`): with the
    /// cache on they are dirty until a Flush; with FUA, or with the cache off (Set
    /// Features), they reach the medium now. Nothing to do without the cache model.
    #[inline]
    pub(crate) fn cached(&mut self, i: usize, slba: u64, nlb: u64, fua: bool) {
        let ns = &mut self.ns[i];
        if ns.durable.is_empty() {
            return;
        }
        if fua || !self.vwc_enabled {
            let (a, b) = (
                (slba << ns.lba_shift) as usize,
                ((slba + nlb) << ns.lba_shift) as usize,
            );
            ns.durable[a..b].copy_from_slice(&ns.data[a..b]);
            // An older cached write to these blocks is superseded: they are clean now.
            ns.dirty.remove(slba, nlb);
        } else {
            ns.dirty.insert(slba, nlb);
        }
    }

    /// Flush (NVM Command Set 1.0, 3.2.2): every cached block of namespace `i` reaches the
    /// medium.
    pub(crate) fn flush_cache(&mut self, i: usize) {
        let ns = &mut self.ns[i];
        for r in ns.dirty.ranges() {
            let (a, b) = (
                (r.start << ns.lba_shift) as usize,
                (r.end << ns.lba_shift) as usize,
            );
            ns.durable[a..b].copy_from_slice(&ns.data[a..b]);
        }
        ns.dirty = Default::default();
    }

    /// Power lost: cached blocks revert to what the medium holds; the controller returns
    /// to power-on. Returns the blocks reverted.
    pub(crate) fn power_cut(&mut self) -> u64 {
        let mut lost = 0;
        for ns in &mut self.ns {
            for r in ns.dirty.ranges() {
                let (a, b) = (
                    (r.start << ns.lba_shift) as usize,
                    (r.end << ns.lba_shift) as usize,
                );
                ns.data[a..b].copy_from_slice(&ns.durable[a..b]);
                lost += r.end - r.start;
            }
            ns.dirty = Default::default();
        }
        self.stats.lost_blocks += lost;
        self.flr();
        self.bus_master = true;
        lost
    }
}
