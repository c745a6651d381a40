//! The emulator's IOMMU: a translation table from IOVA ranges to host memory, and the only
//! code that touches host memory. Every access is through raw pointers
//! (`copy_nonoverlapping`, volatile loads and stores); no reference into host memory is ever
//! created, because the host may be using the neighbouring bytes at the same time.
//!
//! The table lives inside the controller state, behind the same lock as the queues, so a
//! mapping cannot disappear while a command is using it: `unmap` waits for the command.

use std::cell::{Cell, RefCell};
use std::ops::Range;

use nvme_dio_dma::RangeSet;

/// One mapping: `len` bytes at `iova` are the host bytes at `host`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Mapping {
    pub(crate) iova: u64,
    pub(crate) len: u64,
    /// Host address (kept as an integer so the state stays `Send`).
    pub(crate) host: usize,
}

/// IOVA space the emulator accepts: [0x1000, 1 << 39), like QEMU's 39-bit vIOMMU.
pub(crate) const IOVA_RANGE: Range<u64> = 0x1000..1 << 39;

/// Sorted, non-overlapping mappings.
#[derive(Debug, Default)]
pub(crate) struct Table {
    maps: Vec<Mapping>,
    /// Mapped bytes the host's DMA memory reported free (given back, or never handed out):
    /// the freed-write checker. Empty unless the host's memory tracks allocations.
    pub(crate) free: RangeSet,
    /// Device writes that hit `free`. Cells: the writers hold `&Table` (next to a mutable
    /// namespace borrow); the whole table is behind the controller lock.
    freed_writes: Cell<u64>,
    freed_write_events: RefCell<Vec<String>>,
}

/// At most this many freed-write descriptions are kept (all are counted).
const MAX_FREED_WRITE_EVENTS: usize = 256;

/// Why a map or unmap was refused.
#[derive(Debug)]
pub(crate) enum TableError {
    OutOfRange,
    Overlap,
    NotMapped,
}

impl Table {
    pub(crate) fn insert(&mut self, m: Mapping) -> Result<(), TableError> {
        let end = m.iova.checked_add(m.len).ok_or(TableError::OutOfRange)?;
        if m.len == 0 || m.iova < IOVA_RANGE.start || end > IOVA_RANGE.end {
            return Err(TableError::OutOfRange);
        }
        let pos = self.maps.partition_point(|x| x.iova < m.iova);
        if pos > 0 && self.maps[pos - 1].iova + self.maps[pos - 1].len > m.iova {
            return Err(TableError::Overlap);
        }
        if pos < self.maps.len() && self.maps[pos].iova < end {
            return Err(TableError::Overlap);
        }
        self.maps.insert(pos, m);
        Ok(())
    }

    pub(crate) fn remove(&mut self, iova: u64, len: u64) -> Result<(), TableError> {
        match self
            .maps
            .iter()
            .position(|x| x.iova == iova && x.len == len)
        {
            Some(i) => {
                self.maps.remove(i);
                // Unmapped bytes are neither free nor in use: a write there is an IOMMU fault.
                self.free.remove(iova, len);
                Ok(())
            }
            None => Err(TableError::NotMapped),
        }
    }

    /// Host address of `iova`, if `iova..iova+len` lies inside one mapping. `hint` is the
    /// index of the last mapping hit by this user (a queue, the data path); it is checked,
    /// never trusted, so a stale hint after map/unmap only costs a search.
    #[inline]
    pub(crate) fn translate(&self, iova: u64, len: u64, hint: &mut usize) -> Option<usize> {
        if let Some(m) = self.maps.get(*hint) {
            if iova >= m.iova && iova.wrapping_sub(m.iova).checked_add(len)? <= m.len {
                return Some(m.host + (iova - m.iova) as usize);
            }
        }
        self.translate_slow(iova, len, hint)
    }

    #[cold]
    fn translate_slow(&self, iova: u64, len: u64, hint: &mut usize) -> Option<usize> {
        let pos = self.maps.partition_point(|x| x.iova <= iova);
        if pos == 0 {
            return None;
        }
        let m = &self.maps[pos - 1];
        if (iova - m.iova).checked_add(len)? <= m.len {
            *hint = pos - 1;
            Some(m.host + (iova - m.iova) as usize)
        } else {
            None
        }
    }

    /// Calls `f(host, offset, n)` for consecutive pieces of `iova..iova+len`, each inside one
    /// mapping (a range may span adjacent mappings). Returns false, having called `f` for
    /// nothing, if any byte is unmapped: callers check before they copy.
    pub(crate) fn check(&self, iova: u64, len: u64, hint: &mut usize) -> bool {
        if self.translate(iova, len, hint).is_some() {
            return true;
        }
        let mut done = 0;
        while done < len {
            let at = iova + done;
            let pos = self.maps.partition_point(|x| x.iova <= at);
            if pos == 0 {
                return false;
            }
            let m = &self.maps[pos - 1];
            if at >= m.iova + m.len {
                return false;
            }
            done += (m.iova + m.len - at).min(len - done);
        }
        true
    }

    /// The freed-write checker: called for every device write about to happen. A write
    /// into bytes the host's memory reported free is a driver bug (the device may write
    /// memory that was given back, and that someone else may own now); it is counted and
    /// described, and the write goes ahead, as it would on hardware.
    #[inline]
    fn check_freed(&self, iova: u64, len: u64) {
        if self.free.is_empty() {
            return;
        }
        if let Some(hit) = self.free.overlap(iova, len) {
            self.flag_freed(iova, len, hit);
        }
    }

    #[cold]
    fn flag_freed(&self, iova: u64, len: u64, hit: Range<u64>) {
        self.freed_writes.set(self.freed_writes.get() + 1);
        let mut ev = self.freed_write_events.borrow_mut();
        if ev.len() < MAX_FREED_WRITE_EVENTS {
            ev.push(format!(
                "device write of {len} bytes at IOVA {iova:#x} hits {:#x}..{:#x}, memory the driver has given back",
                hit.start, hit.end
            ));
        }
    }

    /// A device write into `iova..iova+len`, which the host gave back after the device took
    /// it (a late write of a held command) and may have handed to a new owner since: flagged
    /// unless the bytes are free now (then the write itself is flagged).
    pub(crate) fn flag_reused(&self, iova: u64, len: u64) {
        if self.free.overlap(iova, len).is_none() {
            self.flag_freed(iova, len, iova..iova + len);
        }
    }

    /// Device writes into freed memory so far.
    pub(crate) fn freed_writes(&self) -> u64 {
        self.freed_writes.get()
    }

    /// Their descriptions, oldest first (at most [`MAX_FREED_WRITE_EVENTS`]).
    pub(crate) fn freed_write_events(&self) -> Vec<String> {
        self.freed_write_events.borrow().clone()
    }

    /// Copies `src` to the device-visible bytes at `iova` (device-to-host DMA).
    /// Returns false (copying nothing) if any byte is unmapped.
    pub(crate) fn write(&self, iova: u64, src: &[u8], hint: &mut usize) -> bool {
        // Only a write that happens counts: an unmapped byte means nothing is copied.
        if !self.free.is_empty() && self.check(iova, src.len() as u64, hint) {
            self.check_freed(iova, src.len() as u64);
        }
        self.copy(iova, src.len() as u64, hint, |host, off, n| {
            // SAFETY: `host..host+n` lies inside a live mapping (the table is only changed
            // under the same lock the caller holds, and `DmaMapper::map`'s contract keeps the
            // memory allocated until unmap); `src[off..off+n]` is in bounds; the regions do
            // not overlap because the host buffer is not our slice.
            unsafe { std::ptr::copy_nonoverlapping(src.as_ptr().add(off), host as *mut u8, n) };
        })
    }

    /// Copies the device-visible bytes at `iova` into `dst` (host-to-device DMA).
    /// Returns false (copying nothing) if any byte is unmapped.
    pub(crate) fn read(&self, iova: u64, dst: &mut [u8], hint: &mut usize) -> bool {
        let len = dst.len() as u64;
        let dst_ptr = dst.as_mut_ptr();
        self.copy(iova, len, hint, |host, off, n| {
            // SAFETY: as in `write`; `dst_ptr + off .. + n` is inside `dst`.
            unsafe { std::ptr::copy_nonoverlapping(host as *const u8, dst_ptr.add(off), n) };
        })
    }

    /// Splits `iova..iova+len` into per-mapping pieces, after checking the whole range.
    fn copy(
        &self,
        iova: u64,
        len: u64,
        hint: &mut usize,
        mut f: impl FnMut(usize, usize, usize),
    ) -> bool {
        if let Some(host) = self.translate(iova, len, hint) {
            f(host, 0, len as usize);
            return true;
        }
        if !self.check(iova, len, hint) {
            return false;
        }
        let mut done = 0u64;
        while done < len {
            let at = iova + done;
            let pos = self.maps.partition_point(|x| x.iova <= at);
            let m = &self.maps[pos - 1];
            let n = (m.iova + m.len - at).min(len - done);
            f(m.host + (at - m.iova) as usize, done as usize, n as usize);
            done += n;
        }
        true
    }

    /// Reads one little-endian u64 (a PRP entry) at `iova`.
    #[inline]
    pub(crate) fn read_u64(&self, iova: u64, hint: &mut usize) -> Option<u64> {
        let mut b = [0u8; 8];
        if self.read(iova, &mut b, hint) {
            Some(u64::from_le_bytes(b))
        } else {
            None
        }
    }

    /// Reads a 64-byte submission queue entry as eight volatile quadword loads.
    #[inline]
    pub(crate) fn read_sqe(&self, iova: u64, hint: &mut usize) -> Option<[u64; 8]> {
        let host = self.translate(iova, 64, hint)?;
        let mut q = [0u64; 8];
        if host % 8 == 0 {
            for (i, w) in q.iter_mut().enumerate() {
                // SAFETY: `host..host+64` is inside a live mapping (see `write`) and 8-aligned.
                *w = u64::from_le(unsafe { std::ptr::read_volatile((host as *const u64).add(i)) });
            }
        } else {
            let mut b = [0u8; 64];
            // SAFETY: `host..host+64` is inside a live mapping; `b` is ours.
            unsafe { std::ptr::copy_nonoverlapping(host as *const u8, b.as_mut_ptr(), 64) };
            for (i, w) in q.iter_mut().enumerate() {
                *w = u64::from_le_bytes(b[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
            }
        }
        Some(q)
    }

    /// Writes a 16-byte completion queue entry: DW0..DW2 first, then a release fence, then
    /// DW3 (CID, status, phase), so a host that sees the new phase sees the whole entry.
    #[inline]
    pub(crate) fn write_cqe(&self, iova: u64, d: [u32; 4], hint: &mut usize) -> bool {
        let Some(host) = self.translate(iova, 16, hint) else {
            return false;
        };
        if host % 4 != 0 {
            // A CQ base is page aligned (checked at creation), so this cannot happen unless
            // the host mapped unaligned memory; refuse rather than tear.
            return false;
        }
        self.check_freed(iova, 16);
        let p = host as *mut u32;
        for (i, v) in d.iter().enumerate().take(3) {
            // SAFETY: `host..host+16` is inside a live mapping and 4-aligned.
            unsafe { std::ptr::write_volatile(p.add(i), v.to_le()) };
        }
        std::sync::atomic::fence(std::sync::atomic::Ordering::Release);
        // SAFETY: as above.
        unsafe { std::ptr::write_volatile(p.add(3), d[3].to_le()) };
        true
    }

    /// Reads one little-endian u32 (a shadow doorbell) at `iova`.
    pub(crate) fn read_u32(&self, iova: u64, hint: &mut usize) -> Option<u32> {
        let host = self.translate(iova, 4, hint)?;
        if host % 4 != 0 {
            return None;
        }
        // SAFETY: inside a live mapping, 4-aligned.
        Some(u32::from_le(unsafe {
            std::ptr::read_volatile(host as *const u32)
        }))
    }

    /// Writes one little-endian u32 (an EventIdx entry) at `iova`.
    pub(crate) fn write_u32(&self, iova: u64, v: u32, hint: &mut usize) -> bool {
        let Some(host) = self.translate(iova, 4, hint) else {
            return false;
        };
        if host % 4 != 0 {
            return false;
        }
        self.check_freed(iova, 4);
        // SAFETY: inside a live mapping, 4-aligned.
        unsafe { std::ptr::write_volatile(host as *mut u32, v.to_le()) };
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_rejects_overlap_and_out_of_range_and_translate_uses_hint() {
        let mut t = Table::default();
        let mut a = vec![0u8; 0x3000];
        let host = a.as_mut_ptr() as usize;
        t.insert(Mapping {
            iova: 0x10000,
            len: 0x2000,
            host,
        })
        .unwrap();
        t.insert(Mapping {
            iova: 0x12000,
            len: 0x1000,
            host: host + 0x2000,
        })
        .unwrap();
        assert!(matches!(
            t.insert(Mapping {
                iova: 0x11000,
                len: 0x1000,
                host
            }),
            Err(TableError::Overlap)
        ));
        assert!(matches!(
            t.insert(Mapping {
                iova: 0,
                len: 0x1000,
                host
            }),
            Err(TableError::OutOfRange)
        ));
        assert!(matches!(
            t.insert(Mapping {
                iova: (1 << 39) - 0x1000,
                len: 0x2000,
                host
            }),
            Err(TableError::OutOfRange)
        ));
        let mut hint = 7;
        assert_eq!(t.translate(0x10010, 16, &mut hint), Some(host + 0x10));
        assert_eq!(hint, 0);
        assert_eq!(
            t.translate(0x11ff0, 0x20, &mut hint),
            None,
            "spans two mappings"
        );
        // ... but a copy across adjacent mappings works.
        assert!(t.write(0x11ff0, &[7u8; 0x20], &mut hint));
        assert_eq!(a[0x1ff0..0x2010], [7u8; 0x20]);
        assert!(
            !t.check(0x12f00, 0x200, &mut hint),
            "runs past the last mapping"
        );
        t.remove(0x10000, 0x2000).unwrap();
        assert!(matches!(
            t.remove(0x10000, 0x2000),
            Err(TableError::NotMapped)
        ));
        assert_eq!(t.translate(0x10010, 16, &mut hint), None);
        drop(a);
    }
}
