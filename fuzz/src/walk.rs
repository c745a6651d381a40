//! Reference walkers: how a controller reads a command's data pointer.
//!
//! Written from QEMU's `hw/nvme/ctrl.c` (`nvme_map_prp`, `nvme_map_sgl`,
//! `nvme_map_sgl_data`), independently of `nvme_dio_queue`'s own test walkers, plus the PRP1
//! dword rule QEMU skips. List pages live in [`ListMem`], a `PrpListPages` over a map that
//! records every entry the builder writes; reading an entry that was never written is an
//! error, so a builder that leaves a hole is caught even if QEMU would read garbage there.

use std::collections::HashMap;

use nvme_dio_queue::prp::PrpListPages;
use nvme_dio_queue::sgl::desc_type;
use nvme_dio_queue::{Iova, PageSize};

/// Where the list pages sit in the fuzzed address space (page aligned for every page size
/// up to 64 KiB, far above the data the fuzzer usually picks).
pub const LIST_BASE: u64 = 0x7fff_0000_0000;

/// PRP list / SGL descriptor pages handed to a builder: page `n` at
/// `LIST_BASE + n * page`, at most `limit` of them.
#[derive(Debug)]
pub struct ListMem {
    page: u64,
    limit: usize,
    entries: HashMap<(usize, usize), u64>,
    /// Pages handed out.
    pub pages_used: usize,
}

impl ListMem {
    /// `limit` list pages of `page` bytes.
    pub fn new(page: PageSize, limit: usize) -> ListMem {
        ListMem {
            page: page.bytes() as u64,
            limit,
            entries: HashMap::new(),
            pages_used: 0,
        }
    }

    /// Qword `i` after address `addr` (which must lie in a handed-out list page), as a
    /// controller's memory read would see it.
    pub fn read(&self, addr: u64, i: usize) -> Result<u64, String> {
        let rel = addr
            .checked_sub(LIST_BASE)
            .ok_or_else(|| format!("list pointer {addr:#x} is not list memory"))?;
        let n = (rel / self.page) as usize;
        if n >= self.pages_used {
            return Err(format!(
                "list pointer {addr:#x} is past the {} list pages handed out",
                self.pages_used
            ));
        }
        if rel % 8 != 0 {
            return Err(format!("list pointer {addr:#x} not qword aligned"));
        }
        let slot = (rel % self.page / 8) as usize + i;
        if slot as u64 >= self.page / 8 {
            return Err(format!("list read at {addr:#x}[{i}] runs off its page"));
        }
        self.entries
            .get(&(n, slot))
            .copied()
            .ok_or_else(|| format!("list page {n} slot {slot} was never written"))
    }
}

impl PrpListPages for ListMem {
    fn page(&mut self, n: usize) -> Option<Iova> {
        if n >= self.limit {
            return None;
        }
        self.pages_used = self.pages_used.max(n + 1);
        Some(Iova(LIST_BASE + n as u64 * self.page))
    }

    fn set(&mut self, n: usize, i: usize, entry: u64) {
        assert!(
            n < self.pages_used,
            "builder wrote list page {n} it was not given"
        );
        assert!(
            (i as u64) < self.page / 8,
            "builder wrote slot {i} past the end of a {}-byte list page",
            self.page
        );
        let old = self.entries.insert((n, i), entry);
        assert!(old.is_none(), "builder wrote list page {n} slot {i} twice");
    }
}

/// QEMU `nvme_map_prp` for `len` bytes (plus: PRP1 must be dword aligned): the
/// `(address, bytes)` runs the controller transfers, or why it fails the command.
pub fn prp(
    prp1: u64,
    prp2: u64,
    len: u64,
    page: PageSize,
    mem: &ListMem,
) -> Result<Vec<(u64, u64)>, String> {
    let ps = page.bytes() as u64;
    let max_prp_ents = (ps / 8) as usize;
    if prp1 & 3 != 0 {
        return Err(format!("PRP1 {prp1:#x} not dword aligned"));
    }
    let mut out = Vec::new();
    let first = (ps - (prp1 & (ps - 1))).min(len);
    map_addr(&mut out, prp1, first)?;
    let mut len = len - first;
    if len == 0 {
        return Ok(out);
    }
    if len > ps {
        // PRP2 is a list; its first page may start at an offset (QEMU allows it).
        let mut nents = ((ps - (prp2 & (ps - 1))) >> 3) as usize;
        let mut list = prp2;
        let mut i = 0usize;
        while len != 0 {
            let mut ent = mem.read(list, i)?;
            if i == nents - 1 && len > ps {
                if ent & (ps - 1) != 0 {
                    return Err(format!("PRP chain pointer {ent:#x} not page aligned"));
                }
                i = 0;
                nents = (len.div_ceil(ps) as usize).min(max_prp_ents);
                list = ent;
                ent = mem.read(list, i)?;
            }
            if ent & (ps - 1) != 0 {
                return Err(format!("PRP list entry {ent:#x} not page aligned"));
            }
            let t = len.min(ps);
            map_addr(&mut out, ent, t)?;
            len -= t;
            i += 1;
        }
    } else {
        if prp2 & (ps - 1) != 0 {
            return Err(format!("PRP2 {prp2:#x} not page aligned"));
        }
        map_addr(&mut out, prp2, len)?;
    }
    Ok(out)
}

fn map_addr(out: &mut Vec<(u64, u64)>, addr: u64, len: u64) -> Result<(), String> {
    if addr.checked_add(len).is_none() {
        return Err(format!("{len} bytes at {addr:#x} wrap the address space"));
    }
    out.push((addr, len));
    Ok(())
}

fn sgl_type(d: [u64; 2]) -> u8 {
    (d[1] >> 60) as u8
}

fn sgl_len(d: [u64; 2]) -> u64 {
    d[1] & 0xffff_ffff
}

/// QEMU `nvme_map_sgl` for `len` bytes with SGLS bit "excess length" clear (an SGL that
/// describes more than the transfer is an error), and descriptor subtypes and reserved bytes
/// checked: the runs transferred, or why the command fails.
pub fn sgl(dptr: [u64; 2], len: u64, mem: &ListMem) -> Result<Vec<(u64, u64)>, String> {
    let mut out = Vec::new();
    let mut left = len;
    if sgl_type(dptr) == desc_type::DATA_BLOCK >> 4 {
        map_sgl_data(&[dptr], &mut left, &mut out)?;
    } else {
        let mut seg = dptr;
        let mut addr = dptr[0];
        // Every list page can be visited once; more means the chain loops.
        for _ in 0..=mem.pages_used {
            let ty = sgl_type(seg);
            if ty != desc_type::SEGMENT >> 4 && ty != desc_type::LAST_SEGMENT >> 4 {
                return Err(format!("segment descriptor type {ty:#x} invalid"));
            }
            check_subtype_and_reserved(seg)?;
            let seg_len = sgl_len(seg);
            if seg_len == 0 || seg_len & 0xf != 0 {
                return Err(format!("segment descriptor length {seg_len} invalid"));
            }
            if u64::MAX - addr < seg_len {
                return Err("segment wraps the address space".to_string());
            }
            let n = (seg_len / 16) as usize;
            let mut descs = Vec::with_capacity(n);
            for k in 0..n {
                descs.push([mem.read(addr, 2 * k)?, mem.read(addr, 2 * k + 1)?]);
            }
            let last = descs[n - 1];
            if sgl_type(last) == desc_type::DATA_BLOCK >> 4 {
                map_sgl_data(&descs, &mut left, &mut out)?;
                return finish(left, out);
            }
            if ty == desc_type::LAST_SEGMENT >> 4 {
                return Err("a Last Segment ends in a segment descriptor".to_string());
            }
            seg = last;
            addr = seg[0];
            map_sgl_data(&descs[..n - 1], &mut left, &mut out)?;
        }
        return Err("the SGL segment chain loops".to_string());
    }
    finish(left, out)
}

fn finish(left: u64, out: Vec<(u64, u64)>) -> Result<Vec<(u64, u64)>, String> {
    if left != 0 {
        return Err(format!("SGL {left} bytes shorter than the transfer"));
    }
    Ok(out)
}

fn check_subtype_and_reserved(d: [u64; 2]) -> Result<(), String> {
    if (d[1] >> 56) & 0xf != 0 {
        return Err(format!(
            "descriptor subtype {} is not Address",
            (d[1] >> 56) & 0xf
        ));
    }
    if d[1] & 0x00ff_ffff_0000_0000 != 0 {
        return Err("descriptor reserved bytes set".to_string());
    }
    Ok(())
}

/// QEMU `nvme_map_sgl_data`.
fn map_sgl_data(
    descs: &[[u64; 2]],
    left: &mut u64,
    out: &mut Vec<(u64, u64)>,
) -> Result<(), String> {
    for &d in descs {
        match sgl_type(d) << 4 {
            desc_type::DATA_BLOCK => {}
            desc_type::SEGMENT | desc_type::LAST_SEGMENT => {
                return Err("segment descriptor among data descriptors".to_string());
            }
            t => return Err(format!("descriptor type {t:#x} invalid")),
        }
        check_subtype_and_reserved(d)?;
        let dlen = sgl_len(d);
        if dlen == 0 {
            continue;
        }
        if *left == 0 {
            return Err(format!(
                "SGL excess length: {dlen} more bytes after the transfer"
            ));
        }
        let t = (*left).min(dlen);
        if u64::MAX - d[0] < dlen {
            return Err("data block wraps the address space".to_string());
        }
        out.push((d[0], t));
        *left -= t;
    }
    Ok(())
}

/// Merges adjacent runs so two descriptions of the same bytes compare equal.
pub fn coalesce(runs: impl IntoIterator<Item = (u64, u64)>) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for (a, l) in runs {
        if l == 0 {
            continue;
        }
        match out.last_mut() {
            Some((pa, pl)) if *pa as u128 + *pl as u128 == a as u128 => *pl += l,
            _ => out.push((a, l)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use nvme_dio_queue::Dptr;
    use nvme_dio_queue::prp::Segment;

    const P4K: PageSize = PageSize::SIZE_4K;

    #[test]
    fn prp_walk_follows_a_chained_list() {
        // 3 MiB from mid-page: 769 entries after PRP1 need two 4 KiB list pages.
        let segs = [Segment::new(0x1_0000_0200, 3 << 20)];
        let mut mem = ListMem::new(P4K, 2);
        let Dptr::Prp { prp1, prp2 } = nvme_dio_queue::prp::build(&segs, P4K, &mut mem).unwrap()
        else {
            panic!("not PRP")
        };
        let runs = prp(prp1, prp2, 3 << 20, P4K, &mem).unwrap();
        assert_eq!(runs.len(), 769);
        assert_eq!(coalesce(runs), vec![(0x1_0000_0200, 3 << 20)]);
    }

    #[test]
    fn prp_walk_rejects_what_qemu_rejects() {
        let mem = ListMem::new(P4K, 0);
        assert!(prp(0x1002, 0, 8, P4K, &mem).unwrap_err().contains("dword"));
        assert!(
            prp(0x1800, 0x2008, 0x1000, P4K, &mem)
                .unwrap_err()
                .contains("PRP2")
        );
        assert!(
            prp(0x1000, 0x2000, 0x3000, P4K, &mem)
                .unwrap_err()
                .contains("not list memory")
        );
    }

    #[test]
    fn sgl_walk_follows_segments_and_rejects_excess() {
        let segs: Vec<Segment> = (0..300)
            .map(|k| Segment::new(0x10_0000 + k * 0x1000, 0x200))
            .collect();
        let mut mem = ListMem::new(P4K, 2);
        let Dptr::Sgl(d) = nvme_dio_queue::sgl::build(&segs, P4K, &mut mem).unwrap() else {
            panic!("not SGL")
        };
        assert_eq!(sgl(d, 300 * 0x200, &mem).unwrap().len(), 300);
        assert!(sgl(d, 299 * 0x200, &mem).unwrap_err().contains("excess"));
        assert!(
            sgl(d, 300 * 0x200 + 4, &mem)
                .unwrap_err()
                .contains("shorter")
        );
        assert!(
            sgl([0x1000, 0x10 | 0x30 << 56], 4, &mem)
                .unwrap_err()
                .contains("list memory")
        );
    }
}
