//! DMA memory: hugepage regions mapped into the IOMMU once, and buffers carved out of them.
//!
//! * A **region** is one anonymous `MAP_HUGETLB | MAP_POPULATE` mapping (2 MiB pages by
//!   default, 1 GiB on request), given an IOVA by the container's [`IovaAllocator`] and mapped
//!   through the [`DmaMapper`] exactly once. It is unmapped (IOMMU first, then `munmap`) when
//!   the last buffer in it and the [`DmaMemory`] are gone.
//! * [`DmaMemory::alloc`] sub-allocates from the regions (first fit), growing by a new region
//!   of [`MemoryOptions::region_bytes`] when they are full. An allocation larger than that gets
//!   a dedicated region, released as soon as the buffer is dropped.
//! * [`DmaPool`] carves one allocation into fixed-size blocks with a lock-free free list
//!   (crossbeam `ArrayQueue`), for the hot path (PRP list pages, bounce buffers).
//! * If no hugepages are free, [`DmaMemory::new`]/[`DmaMemory::alloc`] fail with
//!   [`Error::NoHugepages`] (how many are needed, and the command that reserves them), unless
//!   [`MemoryOptions::allow_fallback`] is set: then ordinary pages are used (populated, and
//!   mlocked if the limit allows), and [`DmaMemory::is_fallback`] says so.
//!
//! The device-memory rules of the crate apply: this module never creates a reference into a
//! region; buffers offer volatile word accessors and bounds-checked copies only.

use std::cell::Cell;
use std::fmt;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use crossbeam_queue::ArrayQueue;
use memmap2::{MmapOptions, MmapRaw};

use crate::Error;
use crate::device::DmaMapper;
use crate::iova::{IovaAllocator, RangeAllocator};

mod register;
pub use register::Registration;

/// Hugepage size for DMA regions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum PageKind {
    /// 2 MiB pages (`/proc/sys/vm/nr_hugepages`).
    #[default]
    Huge2M,
    /// 1 GiB pages (reserved through sysfs, best at boot: `hugepagesz=1G hugepages=N`).
    Huge1G,
}

impl PageKind {
    /// Page size in bytes.
    pub const fn size(self) -> usize {
        match self {
            PageKind::Huge2M => 2 << 20,
            PageKind::Huge1G => 1 << 30,
        }
    }

    /// log2 of the page size (the `MAP_HUGE_*` shift).
    const fn shift(self) -> u8 {
        match self {
            PageKind::Huge2M => 21,
            PageKind::Huge1G => 30,
        }
    }

    /// The sysfs directory describing this page size's pool.
    pub fn sysfs_dir(self) -> &'static str {
        match self {
            PageKind::Huge2M => "/sys/kernel/mm/hugepages/hugepages-2048kB",
            PageKind::Huge1G => "/sys/kernel/mm/hugepages/hugepages-1048576kB",
        }
    }

    /// The file whose value is the number of reserved pages of this size.
    pub fn nr_hugepages_path(self) -> &'static str {
        match self {
            PageKind::Huge2M => "/proc/sys/vm/nr_hugepages",
            PageKind::Huge1G => "/sys/kernel/mm/hugepages/hugepages-1048576kB/nr_hugepages",
        }
    }

    /// The shell command that reserves `total` pages of this size.
    pub fn reserve_command(self, total: u64) -> String {
        format!("echo {total} > {}", self.nr_hugepages_path())
    }

    /// Free pages of this size right now (`None` if the kernel has no such pool).
    pub fn free_pages(self) -> Option<u64> {
        read_u64_file(&format!("{}/free_hugepages", self.sysfs_dir()))
    }

    /// Reserved pages of this size right now (`None` if the kernel has no such pool).
    pub fn total_pages(self) -> Option<u64> {
        read_u64_file(&format!("{}/nr_hugepages", self.sysfs_dir()))
    }
}

impl fmt::Display for PageKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PageKind::Huge2M => "2 MiB",
            PageKind::Huge1G => "1 GiB",
        })
    }
}

fn read_u64_file(path: &str) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// How [`DmaMemory`] gets its regions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct MemoryOptions {
    /// Hugepage size of each region.
    pub page: PageKind,
    /// Growth chunk: bytes per region (rounded up to whole pages). Default 32 MiB.
    pub region_bytes: usize,
    /// Use ordinary (populated, mlocked if possible) pages when no hugepages are free.
    /// [`DmaMemory::is_fallback`] reports when that happened.
    pub allow_fallback: bool,
    /// The most bytes this library maps itself (regions of its own; memory the caller
    /// registers does not count). `None` (the default): no cap.
    pub budget: Option<usize>,
}

impl MemoryOptions {
    /// 2 MiB hugepages where there are free ones, ordinary pages otherwise, in regions of
    /// `region_bytes`: what tests, examples and the emulated controller want.
    pub fn any_pages(region_bytes: usize) -> MemoryOptions {
        MemoryOptions::default()
            .region_bytes(region_bytes)
            .allow_fallback(true)
    }

    /// The page kind to map.
    pub fn page(mut self, page: PageKind) -> MemoryOptions {
        self.page = page;
        self
    }

    /// Bytes per region (each mapped into the IOMMU once).
    pub fn region_bytes(mut self, bytes: usize) -> MemoryOptions {
        self.region_bytes = bytes;
        self
    }

    /// Fall back to ordinary pages when no hugepages are free (reported, never silent).
    pub fn allow_fallback(mut self, on: bool) -> MemoryOptions {
        self.allow_fallback = on;
        self
    }

    /// Caps the bytes this library maps itself (whole regions count; registered caller
    /// memory does not). An allocation that needs a region past it fails with
    /// [`Error::BudgetExceeded`].
    pub fn budget(mut self, bytes: usize) -> MemoryOptions {
        self.budget = Some(bytes);
        self
    }
}

impl Default for MemoryOptions {
    fn default() -> Self {
        Self {
            page: PageKind::Huge2M,
            region_bytes: 32 << 20,
            allow_fallback: false,
            budget: None,
        }
    }
}

/// Host ranges (start, len) of caller memory registered and still mapped, shared by a
/// memory and its caller regions.
type Registered = Arc<Mutex<Vec<(usize, usize)>>>;

/// Who owns a region's host memory.
enum Owner {
    /// A mapping this library made (hugepages or the ordinary-page fallback), held for its
    /// Drop (munmap).
    Ours { _map: MmapRaw },
    /// Memory the caller registered ([`DmaMemory::register`]): kept alive, and given back
    /// by [`Registration::unregister`] once no buffer of it exists.
    Caller(register::CallerMapping),
    /// Nothing to release (the unmap failed: the memory stays mapped for good).
    Leaked,
}

/// One mapping, mapped into the IOMMU once.
struct Region {
    /// Owns the mapping. Never dereferenced: only `host` (a raw pointer) is used.
    owner: Owner,
    /// Start of the mapping.
    host: *mut u8,
    /// Length in bytes (whole pages).
    len: usize,
    /// IOVA of `host`.
    iova: u64,
    /// Backed by hugepages (false: the ordinary-page fallback).
    huge: bool,
    /// Offsets inside the region not handed out.
    heap: Mutex<RangeAllocator>,
    mapper: Arc<dyn DmaMapper>,
    iova_alloc: Arc<Mutex<IovaAllocator>>,
    /// `mapper.tracks_allocations()`, asked once: report allocations and frees to it.
    track: bool,
    /// Bytes this library has mapped itself, for [`MemoryOptions::budget`] (our regions only).
    budget: Option<Arc<std::sync::atomic::AtomicUsize>>,
    /// A registration's entry in its memory's list of registered host ranges (caller
    /// regions only), removed once the region is unmapped.
    registered: Option<Registered>,
    /// Already unmapped (by [`Registration::unregister`]): Drop has nothing left to do.
    unmapped: bool,
}

impl Region {
    /// Tells a tracking mapper that `off..off+len` was handed out (after the allocator did).
    #[inline]
    fn note_allocated(&self, off: usize, len: usize) {
        if self.track {
            self.mapper.range_allocated(self.iova + off as u64, len);
        }
    }

    /// Tells a tracking mapper that `off..off+len` is free (before the allocator can hand
    /// it out again, so a new owner's `note_allocated` always comes after).
    #[inline]
    fn note_freed(&self, off: usize, len: usize) {
        if self.track {
            self.mapper.range_freed(self.iova + off as u64, len);
        }
    }
}

// SAFETY: `host` points into the mapping `map` owns for the region's whole life; the region
// itself never reads or writes through it (buffers do, with their own rules), and the
// allocator state is behind a Mutex. So sharing and sending a Region is sound.
unsafe impl Send for Region {}
// SAFETY: see the `Send` impl: all mutable state is behind a Mutex.
unsafe impl Sync for Region {}

impl Drop for Region {
    fn drop(&mut self) {
        if self.unmapped {
            return;
        }
        match self.mapper.unmap(self.iova, self.len) {
            Ok(()) => {
                lock(&self.iova_alloc)
                    .free(self.iova, self.len as u64)
                    .expect("region IOVA was allocated by this allocator");
                if let Some(b) = &self.budget {
                    b.fetch_sub(self.len, Ordering::Relaxed);
                }
                if let Some(r) = &self.registered {
                    lock(r).retain(|&(h, _)| h != self.host as usize);
                }
                // The owner drops here: munmap (or the caller's mapping back to the caller,
                // see `Registration::unregister`) after the device lost access.
            }
            Err(e) => {
                // The device may still reach this memory: never give it back to the OS.
                // Leaking is the only safe choice; Drop cannot return the error.
                eprintln!(
                    "nvme-dio-dma: unmapping IOVA {:#x}+{:#x} failed ({e}); leaking the region so the device cannot DMA into reused memory",
                    self.iova, self.len
                );
                std::mem::forget(std::mem::replace(&mut self.owner, Owner::Leaked));
            }
        }
    }
}

impl fmt::Debug for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Region")
            .field("host", &self.host)
            .field("len", &self.len)
            .field("iova", &format_args!("{:#x}", self.iova))
            .field("huge", &self.huge)
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves consistent state (every update is a
    // single call), so poisoning is ignored.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

struct MemInner {
    mapper: Arc<dyn DmaMapper>,
    opts: MemoryOptions,
    iova: Arc<Mutex<IovaAllocator>>,
    /// Shared regions (dedicated ones are owned by their buffer only).
    regions: Mutex<Vec<Arc<Region>>>,
    fallback: AtomicBool,
    /// Buffers the device may still write, held until DMA is proven stopped.
    quarantine: Mutex<Quarantine>,
    /// Bytes of our own regions mapped now (against `opts.budget`).
    mapped: Arc<std::sync::atomic::AtomicUsize>,
    /// Host ranges of caller memory registered and still mapped.
    registered: Registered,
}

#[derive(Default)]
struct Quarantine {
    held: Vec<DmaBuf>,
    bytes: usize,
    released_buffers: u64,
    released_bytes: u64,
    releases: u64,
}

impl Drop for MemInner {
    fn drop(&mut self) {
        // Never proven stopped: the held buffers stay allocated and mapped for good.
        let q = self.quarantine.get_mut().unwrap_or_else(|e| e.into_inner());
        for mut b in q.held.drain(..) {
            b.leak_on_drop();
        }
    }
}

/// Why the device can no longer write host memory: the proof [`DmaMemory::release_quarantine`]
/// asks for. Obtain it from the hardware, never assume it (see the crate's quarantine rule).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DmaStopped {
    /// CC.EN was cleared and CSTS.RDY then read 0 (not all ones: a dead link proves
    /// nothing): the controller is disabled, its queues are gone.
    ControllerDisabled,
    /// Bus Master Enable was cleared in the function's PCI command register (and read back
    /// clear): the function can issue no memory requests.
    BusMasterCleared,
    /// A function-level reset completed.
    FunctionReset,
    /// The IOMMU mappings of this memory were removed: the device can reach none of it.
    MappingRemoved,
}

impl fmt::Display for DmaStopped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DmaStopped::ControllerDisabled => "controller disabled (CSTS.RDY = 0)",
            DmaStopped::BusMasterCleared => "bus mastering cleared",
            DmaStopped::FunctionReset => "function reset",
            DmaStopped::MappingRemoved => "IOMMU mapping removed",
        })
    }
}

/// Counters of a [`DmaMemory`]'s quarantine, from [`DmaMemory::quarantine_stats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QuarantineStats {
    /// Buffers held now.
    pub held_buffers: usize,
    /// Bytes held now (whole allocations, views ignored).
    pub held_bytes: usize,
    /// Buffers given back by [`DmaMemory::release_quarantine`] so far.
    pub released_buffers: u64,
    /// Bytes given back so far.
    pub released_bytes: u64,
    /// Calls of [`DmaMemory::release_quarantine`] so far (with or without held buffers).
    pub releases: u64,
}

/// DMA memory for one device (container): regions, their IOVAs and the buffers in them.
///
/// Cheap to clone (an `Arc` inside); `Send + Sync`.
#[derive(Clone)]
pub struct DmaMemory {
    inner: Arc<MemInner>,
}

impl fmt::Debug for DmaMemory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DmaMemory")
            .field("opts", &self.inner.opts)
            .field("regions", &lock(&self.inner.regions).len())
            .field("fallback", &self.is_fallback())
            .finish()
    }
}

/// Where a buffer goes back to.
enum Origin {
    Heap,
    Pool {
        pool: Arc<PoolInner>,
        index: u32,
    },
    /// Never freed: the device may still write it (see [`DmaBuf::leak_on_drop`]).
    Leaked,
    /// A second handle on part of another buffer ([`DmaBuf::alias`]): the other buffer owns
    /// the bytes, so dropping this one frees nothing.
    Alias,
}

impl DmaMemory {
    /// Sets up DMA memory over `mapper` and maps the first region.
    ///
    /// IOVAs come from `mapper.iova_ranges()` (never below 1 MiB).
    ///
    /// # Errors
    ///
    /// [`Error::NoHugepages`] (with the command to reserve them) if the first region cannot
    /// be backed by hugepages and `opts.allow_fallback` is false; [`Error::InvalidArgument`]
    /// for a zero `region_bytes`; the mapper's error if mapping fails.
    pub fn new(mapper: Arc<dyn DmaMapper>, opts: MemoryOptions) -> Result<DmaMemory, Error> {
        if opts.region_bytes == 0 {
            return Err(Error::InvalidArgument {
                what: "MemoryOptions::region_bytes is 0".into(),
            });
        }
        let iova = iova_allocator_for(&mapper);
        let mem = DmaMemory {
            inner: Arc::new(MemInner {
                mapper,
                opts,
                iova,
                regions: Mutex::new(Vec::new()),
                fallback: AtomicBool::new(false),
                quarantine: Mutex::new(Quarantine::default()),
                mapped: Arc::default(),
                registered: Arc::default(),
            }),
        };
        let first = mem.new_region(opts.region_bytes)?;
        lock(&mem.inner.regions).push(first);
        Ok(mem)
    }

    /// An opaque identity of the device address space this memory is mapped into (its
    /// mapper). A buffer is usable by a device only if [`DmaBuf::domain`] matches.
    pub fn domain(&self) -> usize {
        Arc::as_ptr(&self.inner.mapper) as *const () as usize
    }

    /// The options this memory was created with.
    pub fn options(&self) -> MemoryOptions {
        self.inner.opts
    }

    /// True if any region uses ordinary pages because hugepages ran out (only possible with
    /// [`MemoryOptions::allow_fallback`]). Print it: performance differs.
    pub fn is_fallback(&self) -> bool {
        self.inner.fallback.load(Ordering::Relaxed)
    }

    /// The mapper regions are mapped through.
    pub fn mapper(&self) -> &Arc<dyn DmaMapper> {
        &self.inner.mapper
    }

    /// Number of regions currently held (dedicated ones not included).
    pub fn region_count(&self) -> usize {
        lock(&self.inner.regions).len()
    }

    /// Holds `buf`, which the device may still write (its command never completed, its
    /// queue was never confirmed deleted), until DMA is proven stopped: it is not freed, and
    /// its bytes are not handed to anyone, until [`DmaMemory::release_quarantine`]. If this
    /// memory is dropped first, held buffers are leaked (kept allocated and mapped).
    ///
    /// Pool blocks may be held too; they go back to their pool on release.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] if `buf` belongs to another device's memory
    /// ([`DmaBuf::domain`] differs): a proof about this device says nothing about that one,
    /// so the buffer is leaked instead (never freed) and the error says so.
    pub fn quarantine(&self, mut buf: DmaBuf) -> Result<(), Error> {
        if buf.domain() != self.domain() {
            let what = format!(
                "quarantine of {buf:?} from another device's DMA memory (leaked instead: hold it in its own DmaMemory)"
            );
            buf.leak_on_drop();
            return Err(Error::InvalidArgument { what });
        }
        let mut q = lock(&self.inner.quarantine);
        q.bytes += buf.cap;
        q.held.push(buf);
        Ok(())
    }

    /// Holds every buffer of `bufs` (see [`DmaMemory::quarantine`]).
    ///
    /// # Errors
    ///
    /// As [`DmaMemory::quarantine`], for the first foreign buffer; every other buffer is
    /// held (or, if foreign, leaked) all the same.
    pub fn quarantine_all(&self, bufs: impl IntoIterator<Item = DmaBuf>) -> Result<(), Error> {
        let mut first = Ok(());
        for b in bufs {
            if let Err(e) = self.quarantine(b) {
                if first.is_ok() {
                    first = Err(e);
                }
            }
        }
        first
    }

    /// Gives every held buffer back to its allocator (region heap or pool), now that the
    /// device provably cannot write them (`proof`). Returns what was released.
    ///
    /// Call it after obtaining the proof and before the device can do DMA again (before
    /// CC.EN = 1, before bus mastering is re-enabled): a buffer held in between may belong
    /// to a command the restarted device is running.
    pub fn release_quarantine(&self, proof: DmaStopped) -> QuarantineStats {
        let _ = proof; // the type is the point: callers must name how DMA was stopped
        let held = {
            let mut q = lock(&self.inner.quarantine);
            q.releases += 1;
            q.released_buffers += q.held.len() as u64;
            q.released_bytes += q.bytes as u64;
            q.bytes = 0;
            std::mem::take(&mut q.held)
        };
        let out = QuarantineStats {
            held_buffers: held.len(),
            held_bytes: held.iter().map(|b| b.cap).sum(),
            ..QuarantineStats::default()
        };
        drop(held); // outside the lock: each drop may take a region or pool lock
        out
    }

    /// Bytes held in quarantine now (whole allocations).
    pub fn held_bytes(&self) -> usize {
        lock(&self.inner.quarantine).bytes
    }

    /// Buffers held in quarantine now.
    pub fn held_buffers(&self) -> usize {
        lock(&self.inner.quarantine).held.len()
    }

    /// The quarantine's counters (a snapshot).
    pub fn quarantine_stats(&self) -> QuarantineStats {
        let q = lock(&self.inner.quarantine);
        QuarantineStats {
            held_buffers: q.held.len(),
            held_bytes: q.bytes,
            released_buffers: q.released_buffers,
            released_bytes: q.released_bytes,
            releases: q.releases,
        }
    }

    /// Allocates a zeroed buffer of `len` bytes whose IOVA is aligned to `align` (a power of
    /// two; values below 4 mean 4; at most the page size).
    ///
    /// Grows by a new region when the existing ones are full; `len` larger than
    /// `region_bytes` gets a dedicated region, released when the buffer is dropped.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] for `len == 0` or a bad `align`; [`Error::NoHugepages`],
    /// [`Error::OutOfIova`] or the mapper's error when a new region is needed and cannot be
    /// made.
    pub fn alloc(&self, len: usize, align: usize) -> Result<DmaBuf, Error> {
        let (region, offset, fresh) = self.alloc_raw(len, align)?;
        region.note_allocated(offset, len);
        let buf = DmaBuf::new(region, offset, len, Origin::Heap);
        if !fresh {
            buf.fill(0);
        }
        Ok(buf)
    }

    /// Allocates a pool of `count` blocks of `block_size` bytes, each IOVA-aligned to
    /// `align`, from one allocation. Blocks are zeroed when the pool is made; a reused block
    /// holds what its last user left.
    ///
    /// # Errors
    ///
    /// As [`DmaMemory::alloc`]; [`Error::InvalidArgument`] for a zero size or count.
    pub fn pool(&self, block_size: usize, count: usize, align: usize) -> Result<DmaPool, Error> {
        if block_size == 0 || count == 0 || count > u32::MAX as usize {
            return Err(Error::InvalidArgument {
                what: format!("pool of {count} blocks of {block_size} bytes"),
            });
        }
        let align = check_align(align, self.inner.opts.page)?;
        let stride =
            block_size
                .checked_next_multiple_of(align)
                .ok_or_else(|| Error::InvalidArgument {
                    what: format!("block size {block_size} overflows"),
                })?;
        let total = stride
            .checked_mul(count)
            .ok_or_else(|| Error::InvalidArgument {
                what: format!("pool of {count} x {stride} bytes overflows"),
            })?;
        // The pool's range is not reported allocated to a tracking mapper: a block is in
        // use only between `DmaPool::alloc` and its drop, and free blocks are free memory.
        let (region, offset, fresh) = self.alloc_raw(total, align)?;
        let free = ArrayQueue::new(count);
        for i in 0..count as u32 {
            free.push(i).expect("queue has room for every block");
        }
        let inner = Arc::new(PoolInner {
            region,
            offset,
            total,
            stride,
            block_size,
            free,
        });
        if !fresh {
            // SAFETY: offset..offset+total lies inside the region (the heap allocator handed
            // it out) and nobody else uses it yet; a raw write creates no reference.
            unsafe { inner.region.host.add(offset).write_bytes(0, total) };
        }
        Ok(DmaPool { inner })
    }

    /// Finds `len` bytes; returns the region, the offset in it and whether the bytes are
    /// fresh from the kernel (already zero).
    fn alloc_raw(&self, len: usize, align: usize) -> Result<(Arc<Region>, usize, bool), Error> {
        if len == 0 {
            return Err(Error::InvalidArgument {
                what: "DMA allocation of 0 bytes".into(),
            });
        }
        let align = check_align(align, self.inner.opts.page)?;
        let page = self.inner.opts.page.size();
        let region_bytes = self.inner.opts.region_bytes.next_multiple_of(page);
        if len > region_bytes {
            let region = self.new_region(len)?;
            let off = lock(&region.heap)
                .alloc(len as u64, align as u64)
                .expect("fits");
            return Ok((region, off as usize, true));
        }
        let mut regions = lock(&self.inner.regions);
        for r in regions.iter() {
            if let Some(off) = lock(&r.heap).alloc(len as u64, align as u64) {
                return Ok((r.clone(), off as usize, false));
            }
        }
        let region = self.new_region(region_bytes)?;
        let off = lock(&region.heap)
            .alloc(len as u64, align as u64)
            .expect("fits");
        regions.push(region.clone());
        Ok((region, off as usize, true))
    }

    /// Maps a new region of at least `len` bytes (rounded up to whole pages).
    fn new_region(&self, len: usize) -> Result<Arc<Region>, Error> {
        let opts = self.inner.opts;
        let page = opts.page;
        let len =
            len.checked_next_multiple_of(page.size())
                .ok_or_else(|| Error::InvalidArgument {
                    what: format!("{len} bytes overflow a page multiple"),
                })?;
        if let Some(budget) = opts.budget {
            let mapped = self.inner.mapped.load(Ordering::Relaxed);
            if mapped.saturating_add(len) > budget {
                return Err(Error::BudgetExceeded {
                    budget,
                    mapped,
                    needed: len,
                });
            }
        }
        let (map, huge) = match map_hugepages(page, len) {
            Ok(m) => (m, true),
            Err(e) if opts.allow_fallback && matches!(e, Error::NoHugepages { .. }) => {
                let m = map_ordinary(len)?;
                self.inner.fallback.store(true, Ordering::Relaxed);
                (m, false)
            }
            Err(e) => return Err(e),
        };
        let host = map.as_mut_ptr();
        let iova = {
            let mut a = lock(&self.inner.iova);
            a.alloc(len as u64, page.size() as u64)
                .ok_or_else(|| Error::OutOfIova {
                    len: len as u64,
                    align: page.size() as u64,
                    ranges: format!("{:x?}", a.ranges()),
                })?
        };
        // SAFETY: `host..host+len` is a mapping this region owns until Region::drop, which
        // unmaps the IOVA before the mapping is released (and leaks the mapping if the unmap
        // fails). No reference to it exists, and none is ever made.
        if let Err(e) = unsafe { self.inner.mapper.map(iova, host, len) } {
            lock(&self.inner.iova)
                .free(iova, len as u64)
                .expect("just allocated");
            return Err(e);
        }
        let track = self.inner.mapper.tracks_allocations();
        if track {
            self.inner.mapper.range_freed(iova, len);
        }
        self.inner.mapped.fetch_add(len, Ordering::Relaxed);
        Ok(Arc::new(Region {
            owner: Owner::Ours { _map: map },
            host,
            len,
            iova,
            huge,
            heap: Mutex::new(RangeAllocator::new(std::iter::once(0..len as u64))),
            mapper: self.inner.mapper.clone(),
            iova_alloc: self.inner.iova.clone(),
            track,
            budget: Some(Arc::clone(&self.inner.mapped)),
            registered: None,
            unmapped: false,
        }))
    }
}

/// One IOVA allocator per mapper (per container): two [`DmaMemory`] over the same mapper
/// must never hand out the same IOVA. Keyed by the mapper's address; entries whose mapper
/// is gone are dropped on the way.
fn iova_allocator_for(mapper: &Arc<dyn DmaMapper>) -> Arc<Mutex<IovaAllocator>> {
    type Entry = (Weak<dyn DmaMapper>, Arc<Mutex<IovaAllocator>>);
    static ALLOCATORS: Mutex<Vec<Entry>> = Mutex::new(Vec::new());
    let mut all = lock(&ALLOCATORS);
    all.retain(|(w, _)| w.strong_count() > 0);
    let key = Arc::as_ptr(mapper) as *const ();
    if let Some((_, a)) = all.iter().find(|(w, _)| w.as_ptr() as *const () == key) {
        return a.clone();
    }
    let a = Arc::new(Mutex::new(IovaAllocator::new(&mapper.iova_ranges())));
    all.push((Arc::downgrade(mapper), a.clone()));
    a
}

fn check_align(align: usize, page: PageKind) -> Result<usize, Error> {
    if align != 0 && !align.is_power_of_two() {
        return Err(Error::InvalidArgument {
            what: format!("alignment {align} (must be a power of two, at most {page})"),
        });
    }
    let align = align.max(4);
    if align > page.size() {
        return Err(Error::InvalidArgument {
            what: format!("alignment {align} (must be a power of two, at most {page})"),
        });
    }
    Ok(align)
}

/// `MAP_HUGETLB | MAP_POPULATE` of `len` bytes (a multiple of the page size).
fn map_hugepages(page: PageKind, len: usize) -> Result<MmapRaw, Error> {
    let res = MmapOptions::new()
        .len(len)
        .huge(Some(page.shift()))
        .populate()
        .map_anon();
    match res {
        Ok(m) => Ok(MmapRaw::from(m)),
        // The hugetlb reservation is made at mmap time: ENOMEM means too few free pages
        // (EINVAL: no pool of that size at all, e.g. 1 GiB pages unsupported).
        Err(source)
            if matches!(
                source.raw_os_error(),
                Some(libc::ENOMEM) | Some(libc::EINVAL)
            ) =>
        {
            let needed = (len / page.size()) as u64;
            let free = page.free_pages().unwrap_or(0);
            let total = page.total_pages().unwrap_or(0);
            let suggest = total + needed.saturating_sub(free);
            Err(Error::NoHugepages {
                page,
                needed,
                free,
                total,
                suggest,
                source,
            })
        }
        Err(source) => Err(Error::Mmap { len, source }),
    }
}

/// The fallback: ordinary anonymous pages, populated, mlocked if the limit allows (VFIO pins
/// them anyway when mapping).
fn map_ordinary(len: usize) -> Result<MmapRaw, Error> {
    let m = MmapOptions::new()
        .len(len)
        .populate()
        .map_anon()
        .map_err(|source| Error::Mmap { len, source })?;
    let m = MmapRaw::from(m);
    // Best effort by design: mlock keeps the pages resident without VFIO; the VFIO map pins
    // them regardless, so a failure here (RLIMIT_MEMLOCK) is not an error.
    let _ = m.lock();
    Ok(m)
}

/// A DMA buffer that several threads use at once, as 32-bit words only, each load and store
/// an atomic (relaxed) operation: memory the host and the device both touch word by word,
/// from several host threads (the shadow doorbell and EventIdx pages). Ordering between
/// words is the caller's (fences, or its own synchronisation).
#[derive(Debug)]
pub struct SharedWords {
    buf: DmaBuf,
}

// SAFETY: `DmaBuf` is not `Sync` because its accessors are plain volatile accesses, which
// race if two threads use one buffer. `SharedWords` only ever touches the memory through
// `AtomicU32` operations on aligned words (`load`, `store`, `zero`), which do not race with
// each other; the `DmaBuf` inside is never handed out, and dropping it needs `&mut self`.
unsafe impl Sync for SharedWords {}

impl SharedWords {
    /// Takes over `buf`; its length must be a multiple of 4.
    pub fn new(buf: DmaBuf) -> SharedWords {
        assert!(
            buf.len() % 4 == 0,
            "SharedWords: {} bytes is not whole words",
            buf.len()
        );
        SharedWords { buf }
    }

    /// The bus address of the first byte.
    pub fn iova(&self) -> u64 {
        self.buf.iova()
    }

    /// Bytes.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// True if empty.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    fn word(&self, off: usize, what: &str) -> &AtomicU32 {
        let p = self.buf.word_ptr(off, 4, 4, what) as *mut u32;
        // SAFETY: in bounds and 4-byte aligned (checked by word_ptr); the region stays mapped
        // while `self.buf` lives, which outlives the returned reference. An `AtomicU32` is an
        // `UnsafeCell`: a shared reference to it allows the concurrent writes (the device's,
        // other threads' atomics) that a reference to plain memory would not.
        unsafe { AtomicU32::from_ptr(p) }
    }

    /// Atomic (relaxed) load of the word at byte offset `off`.
    #[inline]
    pub fn load(&self, off: usize) -> u32 {
        self.word(off, "load").load(Ordering::Relaxed)
    }

    /// Atomic (relaxed) store of the word at byte offset `off`.
    #[inline]
    pub fn store(&self, off: usize, v: u32) {
        self.word(off, "store").store(v, Ordering::Relaxed);
    }

    /// Stores 0 in every word.
    pub fn zero(&self) {
        for off in (0..self.len()).step_by(4) {
            self.store(off, 0);
        }
    }
}

/// A DMA buffer: `len` bytes at a fixed IOVA, accessed only through volatile word accessors
/// and bounds-checked copies (the device may write it at any time).
///
/// A *view* narrows the visible window inside the allocation ([`DmaBuf::set_view`]);
/// [`DmaBuf::iova`], [`DmaBuf::len`] and every offset follow the view.
///
/// `Send`, not `Sync`: one thread uses a buffer at a time. Dropping it gives the bytes back
/// (to the region or its pool).
pub struct DmaBuf {
    region: Arc<Region>,
    /// Offset of the allocation inside the region.
    offset: usize,
    /// Allocation length.
    cap: usize,
    view_off: usize,
    view_len: usize,
    origin: Origin,
    _not_sync: PhantomData<Cell<()>>,
}

impl fmt::Debug for DmaBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DmaBuf")
            .field("iova", &format_args!("{:#x}", self.iova()))
            .field("len", &self.view_len)
            .field("capacity", &self.cap)
            .field("huge", &self.region.huge)
            .finish()
    }
}

impl Drop for DmaBuf {
    fn drop(&mut self) {
        match &self.origin {
            Origin::Heap => {
                self.region.note_freed(self.offset, self.cap);
                let r = lock(&self.region.heap).free(self.offset as u64, self.cap as u64);
                debug_assert!(r.is_ok(), "DmaBuf freed twice: {r:?}");
            }
            Origin::Pool { pool, index } => {
                self.region.note_freed(self.offset, self.cap);
                let r = pool.free.push(*index);
                debug_assert!(r.is_ok(), "pool block {index} freed twice");
            }
            Origin::Leaked => {
                // Keep the region (and its IOMMU mapping) alive for the life of the process.
                std::mem::forget(Arc::clone(&self.region));
            }
            Origin::Alias => {}
        }
    }
}

impl DmaBuf {
    /// Makes dropping this buffer keep its memory allocated and mapped forever.
    ///
    /// For memory a device may still write after the driver gave up on it (a queue the
    /// controller never confirmed deleting, a command it never completed): leaking it is the
    /// only way to be sure no later owner sees the device's writes.
    ///
    /// A pool block keeps its whole pool allocated too: the pool's range (which holds the
    /// block) never goes back to the region heap, so no later allocation, from the pool or
    /// from [`DmaMemory::alloc`], can overlap the leaked bytes.
    pub fn leak_on_drop(&mut self) {
        if let Origin::Pool { pool, .. } = std::mem::replace(&mut self.origin, Origin::Leaked) {
            // The block's index is never pushed back, and this reference is never dropped:
            // `PoolInner::drop` (which frees the pool's range to the heap) never runs.
            std::mem::forget(pool);
        }
    }

    fn new(region: Arc<Region>, offset: usize, cap: usize, origin: Origin) -> Self {
        debug_assert!(offset + cap <= region.len);
        DmaBuf {
            region,
            offset,
            cap,
            view_off: 0,
            view_len: cap,
            origin,
            _not_sync: PhantomData,
        }
    }

    /// The identity of the device address space this buffer is mapped into; compare with
    /// [`DmaMemory::domain`]. Two devices' IOVAs overlap, so a buffer from one device's
    /// memory must never be given to another.
    #[inline]
    pub fn domain(&self) -> usize {
        Arc::as_ptr(&self.region.mapper) as *const () as usize
    }

    /// IOVA of the first visible byte (what goes into a PRP entry).
    #[inline]
    pub fn iova(&self) -> u64 {
        self.region.iova + (self.offset + self.view_off) as u64
    }

    /// Visible bytes.
    #[inline]
    pub fn len(&self) -> usize {
        self.view_len
    }

    /// True if the view is empty.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.view_len == 0
    }

    /// Bytes of the whole allocation (ignoring the view).
    #[inline]
    pub fn capacity(&self) -> usize {
        self.cap
    }

    /// True if the buffer lives on hugepages (false: the ordinary-page fallback).
    pub fn is_huge(&self) -> bool {
        self.region.huge
    }

    /// Narrows the visible window to `offset..offset+len` of the allocation (offsets are
    /// relative to the allocation, not the current view).
    ///
    /// # Errors
    ///
    /// [`Error::OutOfBounds`] if the window leaves the allocation; the view is unchanged.
    pub fn set_view(&mut self, offset: usize, len: usize) -> Result<(), Error> {
        match offset.checked_add(len) {
            Some(end) if end <= self.cap => {
                self.view_off = offset;
                self.view_len = len;
                Ok(())
            }
            _ => Err(Error::OutOfBounds {
                offset,
                len,
                size: self.cap,
            }),
        }
    }

    /// Makes the whole allocation visible again.
    pub fn reset_view(&mut self) {
        self.view_off = 0;
        self.view_len = self.cap;
    }

    /// Host address of the first visible byte, for a C caller that fills and reads the
    /// buffer in place (the fio engine: fio's own I/O buffers live in DMA memory).
    ///
    /// Getting the pointer is safe; using it is the caller's business: never make a Rust
    /// reference from it (the device may write the memory at any time), and never touch the
    /// bytes while a request that owns them is in flight.
    #[inline]
    pub fn as_ptr(&self) -> *mut u8 {
        self.span(0, 0)
            .expect("an empty span at the view start is in bounds")
    }

    /// A second buffer over `off..off+len` of this one's view: same region, same IOVAs.
    /// Dropping it frees nothing; the bytes stay owned by `self`.
    ///
    /// This lets several requests in flight at once use disjoint parts of one allocation
    /// (fio hands an engine one buffer area and points each I/O into it).
    ///
    /// # Errors
    ///
    /// [`Error::OutOfBounds`] if the range leaves the view.
    ///
    /// # Safety
    ///
    /// `self` must not be dropped (its bytes given back for reuse) while the alias, or a
    /// request that owns it, is alive; and the caller must not give the same bytes to two
    /// requests in flight at once. The allocator cannot check either.
    pub unsafe fn alias(&self, off: usize, len: usize) -> Result<DmaBuf, Error> {
        self.span(off, len)?;
        let mut b = DmaBuf::new(
            Arc::clone(&self.region),
            self.offset + self.view_off + off,
            len,
            Origin::Alias,
        );
        b.view_len = len;
        Ok(b)
    }

    /// Host pointer to `off..off+size` of the view, checked for bounds and for `align`.
    #[inline]
    #[track_caller]
    fn word_ptr(&self, off: usize, size: usize, align: usize, what: &str) -> *mut u8 {
        assert!(
            off.checked_add(size)
                .is_some_and(|end| end <= self.view_len),
            "DmaBuf::{what}: offset {off} + {size} bytes is past the end of the buffer ({} bytes visible)",
            self.view_len
        );
        // SAFETY: offset + view_off + off + size <= offset + cap <= region.len (checked just
        // above and by construction), so the pointer stays inside the region's mapping.
        let p = unsafe { self.region.host.add(self.offset + self.view_off + off) };
        assert!(
            (p as usize) % align == 0,
            "DmaBuf::{what}: offset {off} is not {align}-byte aligned (host address {p:p})"
        );
        p
    }

    /// Volatile 32-bit load at byte offset `off` of the view.
    ///
    /// # Panics
    ///
    /// If `off..off+4` is outside the view or not 4-byte aligned.
    #[inline]
    #[track_caller]
    pub fn read_u32(&self, off: usize) -> u32 {
        let p = self.word_ptr(off, 4, 4, "read_u32") as *const u32;
        // SAFETY: in bounds and aligned (checked); volatile, no reference made.
        unsafe { p.read_volatile() }
    }

    /// Volatile 32-bit store at byte offset `off` of the view.
    ///
    /// # Panics
    ///
    /// If `off..off+4` is outside the view or not 4-byte aligned.
    #[inline]
    #[track_caller]
    pub fn write_u32(&self, off: usize, v: u32) {
        let p = self.word_ptr(off, 4, 4, "write_u32") as *mut u32;
        // SAFETY: in bounds and aligned (checked); volatile, no reference made.
        unsafe { p.write_volatile(v) }
    }

    /// Volatile 64-bit load at byte offset `off` of the view.
    ///
    /// # Panics
    ///
    /// If `off..off+8` is outside the view or not 8-byte aligned.
    #[inline]
    #[track_caller]
    pub fn read_u64(&self, off: usize) -> u64 {
        let p = self.word_ptr(off, 8, 8, "read_u64") as *const u64;
        // SAFETY: in bounds and aligned (checked); volatile, no reference made.
        unsafe { p.read_volatile() }
    }

    /// Volatile 64-bit store at byte offset `off` of the view.
    ///
    /// # Panics
    ///
    /// If `off..off+8` is outside the view or not 8-byte aligned.
    #[inline]
    #[track_caller]
    pub fn write_u64(&self, off: usize, v: u64) {
        let p = self.word_ptr(off, 8, 8, "write_u64") as *mut u64;
        // SAFETY: in bounds and aligned (checked); volatile, no reference made.
        unsafe { p.write_volatile(v) }
    }

    /// Writes a 64-byte SQ slot at `off` as 8 volatile 64-bit stores, in order.
    ///
    /// # Panics
    ///
    /// If `off..off+64` is outside the view or not 8-byte aligned.
    #[inline]
    #[track_caller]
    pub fn write_qwords(&self, off: usize, q: &[u64; 8]) {
        let p = self.word_ptr(off, 64, 8, "write_qwords") as *mut u64;
        for (i, &v) in q.iter().enumerate() {
            // SAFETY: p..p+64 is in bounds and 8-aligned (checked); i < 8.
            unsafe { p.add(i).write_volatile(v) }
        }
    }

    /// Reads a 16-byte CQ slot at `off` as 4 volatile 32-bit loads, in order (dword 3, with
    /// the phase bit, last: check the phase and call `barrier::rmb()` before trusting the
    /// rest).
    ///
    /// # Panics
    ///
    /// If `off..off+16` is outside the view or not 4-byte aligned.
    #[inline]
    #[track_caller]
    pub fn read_dwords(&self, off: usize) -> [u32; 4] {
        let p = self.word_ptr(off, 16, 4, "read_dwords") as *const u32;
        let mut out = [0u32; 4];
        for (i, o) in out.iter_mut().enumerate() {
            // SAFETY: p..p+16 is in bounds and 4-aligned (checked); i < 4.
            *o = unsafe { p.add(i).read_volatile() };
        }
        out
    }

    fn span(&self, off: usize, len: usize) -> Result<*mut u8, Error> {
        match off.checked_add(len) {
            Some(end) if end <= self.view_len => {
                // SAFETY: in bounds of the view, hence of the region's mapping.
                Ok(unsafe { self.region.host.add(self.offset + self.view_off + off) })
            }
            _ => Err(Error::OutOfBounds {
                offset: off,
                len,
                size: self.view_len,
            }),
        }
    }

    /// Copies `src` into the view at `off`.
    ///
    /// # Errors
    ///
    /// [`Error::OutOfBounds`] if `off..off+src.len()` leaves the view; nothing is copied.
    pub fn copy_from_slice(&self, off: usize, src: &[u8]) -> Result<(), Error> {
        let dst = self.span(off, src.len())?;
        // SAFETY: dst..dst+len is inside the mapping (checked by span); `src` is ordinary
        // memory and cannot overlap a DMA region (no reference into a region exists).
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst, src.len()) };
        Ok(())
    }

    /// Copies from the view at `off` into `dst`.
    ///
    /// # Errors
    ///
    /// [`Error::OutOfBounds`] if `off..off+dst.len()` leaves the view; nothing is copied.
    pub fn copy_to_slice(&self, off: usize, dst: &mut [u8]) -> Result<(), Error> {
        let src = self.span(off, dst.len())?;
        // SAFETY: src..src+len is inside the mapping (checked by span); `dst` is ordinary
        // memory, so the two cannot overlap.
        unsafe { std::ptr::copy_nonoverlapping(src, dst.as_mut_ptr(), dst.len()) };
        Ok(())
    }

    /// Sets every visible byte to `byte`.
    pub fn fill(&self, byte: u8) {
        let p = self
            .span(0, self.view_len)
            .expect("the whole view is in bounds");
        // SAFETY: the whole view is inside the mapping; raw write, no reference.
        unsafe { p.write_bytes(byte, self.view_len) };
    }
}

struct PoolInner {
    region: Arc<Region>,
    /// Offset of block 0 in the region.
    offset: usize,
    /// Bytes of the pool's allocation.
    total: usize,
    /// Distance between blocks (block size rounded up to the alignment).
    stride: usize,
    block_size: usize,
    /// Indices of free blocks.
    free: ArrayQueue<u32>,
}

impl Drop for PoolInner {
    fn drop(&mut self) {
        // Every block buffer holds an Arc to us, so none is alive: give the bytes back.
        let r = lock(&self.region.heap).free(self.offset as u64, self.total as u64);
        debug_assert!(r.is_ok(), "pool allocation freed twice: {r:?}");
    }
}

/// Fixed-size DMA blocks with lock-free allocate/free (any thread may allocate; a block goes
/// back when its [`DmaBuf`] is dropped, wherever that happens).
///
/// Cheap to clone (an `Arc` inside); `Send + Sync`. The pool's memory lives until the pool
/// and every block from it are gone.
#[derive(Clone)]
pub struct DmaPool {
    inner: Arc<PoolInner>,
}

impl fmt::Debug for DmaPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DmaPool")
            .field("block_size", &self.inner.block_size)
            .field("capacity", &self.capacity())
            .field("available", &self.available())
            .finish()
    }
}

impl DmaPool {
    /// Takes a free block, or `None` if all are in use. Lock-free. The block holds what its
    /// last user wrote (zeroes the first time).
    pub fn alloc(&self) -> Option<DmaBuf> {
        let index = self.inner.free.pop()?;
        let offset = self.inner.offset + index as usize * self.inner.stride;
        self.inner
            .region
            .note_allocated(offset, self.inner.block_size);
        Some(DmaBuf::new(
            self.inner.region.clone(),
            offset,
            self.inner.block_size,
            Origin::Pool {
                pool: self.inner.clone(),
                index,
            },
        ))
    }

    /// Bytes per block.
    pub fn block_size(&self) -> usize {
        self.inner.block_size
    }

    /// Blocks free right now (a snapshot).
    pub fn available(&self) -> usize {
        self.inner.free.len()
    }

    /// Blocks in the pool.
    pub fn capacity(&self) -> usize {
        self.inner.free.capacity()
    }
}

#[cfg(test)]
pub(crate) use recording::RecordingMapper;

/// Test code: kept out of the crate's public surface.
#[cfg(test)]
mod recording {
    use std::collections::BTreeMap;
    use std::ops::Range;
    use std::sync::atomic::AtomicUsize;

    use super::*;
    use crate::iova::RangeSet;

    /// A [`DmaMapper`] that translates nothing and records every mapping: for host tests of the
    /// memory code without a device. Refuses overlapping maps, unmaps of unknown ranges and
    /// IOVAs outside its ranges, like an IOMMU would.
    #[derive(Debug)]
    pub struct RecordingMapper {
        ranges: Vec<Range<u64>>,
        maps: Mutex<BTreeMap<u64, (usize, usize)>>,
        map_calls: AtomicUsize,
        unmap_calls: AtomicUsize,
        /// Tracks free bytes ([`RecordingMapper::tracking`]).
        track: bool,
        free: Mutex<RangeSet>,
    }

    impl Default for RecordingMapper {
        fn default() -> Self {
            Self::new()
        }
    }

    impl RecordingMapper {
        /// A mapper accepting IOVAs in `[0, 512 GiB)`, like QEMU's vIOMMU.
        pub fn new() -> Self {
            Self::with_ranges(std::iter::once(0..(512u64 << 30)).collect())
        }

        /// A mapper accepting IOVAs in `ranges` (half-open).
        pub fn with_ranges(ranges: Vec<Range<u64>>) -> Self {
            Self {
                ranges,
                maps: Mutex::new(BTreeMap::new()),
                map_calls: AtomicUsize::new(0),
                unmap_calls: AtomicUsize::new(0),
                track: false,
                free: Mutex::new(RangeSet::default()),
            }
        }

        /// Like [`RecordingMapper::new`], and it tracks which mapped bytes are free
        /// ([`DmaMapper::tracks_allocations`]): see [`RecordingMapper::free_overlap`].
        pub fn tracking() -> Self {
            Self {
                track: true,
                ..Self::new()
            }
        }

        /// With [`RecordingMapper::tracking`]: the first part of `iova..iova+len` that the memory
        /// reported free (given back, or never handed out), if any. What a device write there
        /// would hit.
        pub fn free_overlap(&self, iova: u64, len: usize) -> Option<Range<u64>> {
            lock(&self.free).overlap(iova, len as u64)
        }

        /// Current mappings as `(iova, host address, len)`, sorted by IOVA.
        pub fn mappings(&self) -> Vec<(u64, usize, usize)> {
            lock(&self.maps)
                .iter()
                .map(|(&i, &(h, l))| (i, h, l))
                .collect()
        }

        /// Host pointer for `iova..iova+len` if it lies inside one mapping.
        pub fn translate(&self, iova: u64, len: usize) -> Option<*mut u8> {
            let maps = lock(&self.maps);
            let (&start, &(host, mlen)) = maps.range(..=iova).next_back()?;
            let off = iova - start;
            let end = off.checked_add(len as u64)?;
            (end <= mlen as u64).then(|| (host + off as usize) as *mut u8)
        }

        /// Successful `map` calls so far.
        pub fn map_calls(&self) -> usize {
            self.map_calls.load(Ordering::Relaxed)
        }

        /// Successful `unmap` calls so far.
        pub fn unmap_calls(&self) -> usize {
            self.unmap_calls.load(Ordering::Relaxed)
        }
    }

    impl DmaMapper for RecordingMapper {
        unsafe fn map(&self, iova: u64, host: *mut u8, len: usize) -> Result<(), Error> {
            let refuse = |reason: String| Error::Mapping {
                op: "map",
                iova,
                len,
                reason,
            };
            let end = iova
                .checked_add(len as u64)
                .ok_or_else(|| refuse("overflow".into()))?;
            if len == 0 {
                return Err(refuse("zero length".into()));
            }
            if !self.ranges.iter().any(|r| r.start <= iova && end <= r.end) {
                return Err(refuse(format!(
                    "outside the IOVA ranges {:x?}",
                    self.ranges
                )));
            }
            let mut maps = lock(&self.maps);
            if let Some((&s, &(_, l))) = maps.range(..end).next_back() {
                if s + l as u64 > iova {
                    return Err(refuse(format!("overlaps the mapping at {s:#x}+{l:#x}")));
                }
            }
            maps.insert(iova, (host as usize, len));
            self.map_calls.fetch_add(1, Ordering::Relaxed);
            Ok(())
        }

        fn unmap(&self, iova: u64, len: usize) -> Result<(), Error> {
            let mut maps = lock(&self.maps);
            match maps.get(&iova) {
                Some(&(_, l)) if l == len => {
                    maps.remove(&iova);
                    lock(&self.free).remove(iova, len as u64);
                    self.unmap_calls.fetch_add(1, Ordering::Relaxed);
                    Ok(())
                }
                _ => Err(Error::Mapping {
                    op: "unmap",
                    iova,
                    len,
                    reason: "no such mapping (double unmap?)".into(),
                }),
            }
        }

        fn iova_ranges(&self) -> Vec<Range<u64>> {
            self.ranges.clone()
        }

        fn tracks_allocations(&self) -> bool {
            self.track
        }

        fn range_allocated(&self, iova: u64, len: usize) {
            lock(&self.free).remove(iova, len as u64);
        }

        fn range_freed(&self, iova: u64, len: usize) {
            lock(&self.free).insert(iova, len as u64);
        }
    }
}

// The thread-safety promises of the public types, checked at compile time.
const _: () = {
    const fn send<T: Send>() {}
    const fn sync<T: Sync>() {}
    send::<DmaBuf>();
    send::<DmaPool>();
    sync::<DmaPool>();
    send::<DmaMemory>();
    sync::<DmaMemory>();
};

#[cfg(test)]
mod tests;
