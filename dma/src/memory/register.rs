//! Memory the caller owns, registered for DMA: a database's own buffer pool (an anonymous or
//! hugetlbfs mapping, a memfd), mapped into the IOMMU once, so I/O goes to and from it
//! without a copy (SPDK's `spdk_mem_register`).
//!
//! A registration is a region like the library's own, except for who owns the memory: its
//! buffers are ordinary [`DmaBuf`]s that keep the region (and so the mapping and the IOMMU
//! entry) alive while they exist, in flight or held by the quarantine included. So
//! [`Registration::unregister`] succeeds only once no buffer of it is left, and then the
//! device has lost access before the memory goes back to the caller.

use memmap2::MmapMut;

use super::*;

/// The granularity of registration: the IOMMU maps 4 KiB pages.
const GRANULE: usize = 4096;

/// What keeps registered memory alive.
pub(super) enum CallerMapping {
    /// A mapping handed over by value; [`Registration::unregister`] gives it back.
    Mmap(MmapMut),
    /// Memory the caller keeps alive itself ([`DmaMemory::register_raw`]'s contract).
    Raw,
}

/// Caller memory registered for DMA (see the module docs). Buffers carved from it with
/// [`Registration::buf`] or [`Registration::alloc`] go to the device like any [`DmaBuf`].
pub struct Registration {
    region: Arc<Region>,
}

impl fmt::Debug for Registration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registration")
            .field("addr", &self.region.host)
            .field("len", &self.region.len)
            .field("iova", &format_args!("{:#x}", self.region.iova))
            .field("buffers", &self.buffers())
            .finish()
    }
}

impl DmaMemory {
    /// Registers a mapping the caller made (anonymous, hugetlbfs, a memfd or any file
    /// mapping), whole 4 KiB pages, and takes it over until
    /// [`Registration::unregister`] gives it back. Its bytes are not touched: buffers of
    /// it carry the caller's data as it is.
    ///
    /// ```
    /// # fn demo(mem: &nvme_dio_dma::DmaMemory) -> Result<(), Box<dyn std::error::Error>> {
    /// let pool = memmap2::MmapMut::map_anon(1 << 20)?; // the database's buffer pool
    /// let reg = mem.register(pool).map_err(|(_, e)| e)?;
    /// let page = reg.buf(8192, 4096)?; // bytes 8192..12288 of the pool, for I/O
    /// // ... read or write `page` through a queue pair; its completion gives it back ...
    /// drop(page);
    /// let pool = reg.unregister().map_err(|(_, e)| e)?.expect("given back");
    /// # let _ = pool;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// The mapping comes back with [`Error::RegisterUnaligned`], [`Error::RegisterOverlaps`]
    /// (already registered), [`Error::OutOfIova`], or the IOMMU's refusal
    /// ([`Error::MemlockTooLow`], [`Error::TooManyMappings`]).
    pub fn register(&self, map: MmapMut) -> Result<Registration, (MmapMut, Error)> {
        let (host, len) = (map.as_ptr() as *mut u8, map.len());
        self.register_inner(host, len, CallerMapping::Mmap(map))
            .map_err(|(owner, e)| match owner {
                CallerMapping::Mmap(m) => (m, e),
                CallerMapping::Raw => unreachable!("given a mapping, returns it"),
            })
    }

    /// Registers `len` bytes at `addr` that the caller keeps alive itself (the C ABI's
    /// `nvd_mem_register`).
    ///
    /// # Safety
    ///
    /// `addr..addr+len` must be memory of this process that stays mapped, and is not
    /// reused for anything the device must not see, until [`Registration::unregister`]
    /// returns `Ok` (dropping the `Registration` instead unmaps it only once its last
    /// buffer is gone, which the caller cannot observe: use `unregister`). While a request
    /// with a buffer of it is in flight, the device reads or writes those bytes at any time.
    ///
    /// # Errors
    ///
    /// As [`DmaMemory::register`].
    pub unsafe fn register_raw(&self, addr: *mut u8, len: usize) -> Result<Registration, Error> {
        self.register_inner(addr, len, CallerMapping::Raw)
            .map_err(|(_, e)| e)
    }

    fn register_inner(
        &self,
        host: *mut u8,
        len: usize,
        owner: CallerMapping,
    ) -> Result<Registration, (CallerMapping, Error)> {
        let addr = host as usize;
        if len == 0 || addr % GRANULE != 0 || len % GRANULE != 0 {
            return Err((owner, Error::RegisterUnaligned { addr, len }));
        }
        let mut registered = lock(&self.inner.registered);
        if let Some(&(other_addr, other_len)) = registered
            .iter()
            .find(|&&(a, l)| addr < a + l && a < addr + len)
        {
            let e = Error::RegisterOverlaps {
                addr,
                len,
                other_addr,
                other_len,
            };
            return Err((owner, e));
        }
        // 2 MiB-aligned IOVAs for 2 MiB-aligned memory, so the IOMMU can use large pages.
        let align = if addr % (2 << 20) == 0 && len >= 2 << 20 {
            2 << 20
        } else {
            GRANULE
        };
        let iova = {
            let mut a = lock(&self.inner.iova);
            match a.alloc(len as u64, align as u64) {
                Some(iova) => iova,
                None => {
                    let e = Error::OutOfIova {
                        len: len as u64,
                        align: align as u64,
                        ranges: format!("{:x?}", a.ranges()),
                    };
                    return Err((owner, e));
                }
            }
        };
        // SAFETY: `host..host+len` stays mapped until the region is unmapped: a mapping
        // handed over by value is owned by the region; raw memory is kept alive by the
        // caller (register_raw's contract). The region never makes a reference to it.
        if let Err(e) = unsafe { self.inner.mapper.map(iova, host, len) } {
            lock(&self.inner.iova)
                .free(iova, len as u64)
                .expect("just allocated");
            return Err((owner, e));
        }
        let track = self.inner.mapper.tracks_allocations();
        if track {
            self.inner.mapper.range_freed(iova, len);
        }
        registered.push((addr, len));
        let region = Region {
            owner: Owner::Caller(owner),
            host,
            len,
            iova,
            huge: false,
            heap: Mutex::new(RangeAllocator::new(std::iter::once(0..len as u64))),
            mapper: self.inner.mapper.clone(),
            iova_alloc: self.inner.iova.clone(),
            track,
            budget: None,
            registered: Some(Arc::clone(&self.inner.registered)),
            unmapped: false,
        };
        Ok(Registration {
            region: Arc::new(region),
        })
    }
}

impl Registration {
    /// A buffer over exactly bytes `offset..offset + len` of the registered memory, with
    /// whatever they hold (nothing is zeroed).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] if the bytes are outside the registration, empty, or
    /// (partly) in another live buffer of it.
    pub fn buf(&self, offset: usize, len: usize) -> Result<DmaBuf, Error> {
        let inside = offset
            .checked_add(len)
            .is_some_and(|end| len > 0 && end <= self.region.len);
        if !inside || !lock(&self.region.heap).claim(offset as u64, len as u64) {
            return Err(Error::InvalidArgument {
                what: format!(
                    "bytes {offset}..{} of registered memory ({} bytes): outside it, empty, or already in a live buffer of it",
                    offset.saturating_add(len),
                    self.region.len
                ),
            });
        }
        self.region.note_allocated(offset, len);
        Ok(DmaBuf::new(
            Arc::clone(&self.region),
            offset,
            len,
            Origin::Heap,
        ))
    }

    /// A buffer of `len` bytes anywhere free in the registered memory, its IOVA aligned to
    /// `align` (a power of two), with whatever the bytes hold.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] for a zero length or bad alignment, or when no free range
    /// fits.
    pub fn alloc(&self, len: usize, align: usize) -> Result<DmaBuf, Error> {
        let off = (len > 0 && align.is_power_of_two())
            .then(|| lock(&self.region.heap).alloc(len as u64, align as u64))
            .flatten()
            .ok_or_else(|| Error::InvalidArgument {
                what: format!(
                    "{len} bytes aligned to {align} in registered memory of {} bytes: bad size or alignment, or no free range fits",
                    self.region.len
                ),
            })? as usize;
        self.region.note_allocated(off, len);
        Ok(DmaBuf::new(
            Arc::clone(&self.region),
            off,
            len,
            Origin::Heap,
        ))
    }

    /// Start of the registered memory in this process (for the caller's own access; the
    /// device sees it at [`Registration::iova`]).
    pub fn as_ptr(&self) -> *mut u8 {
        self.region.host
    }

    /// Its length in bytes.
    pub fn len(&self) -> usize {
        self.region.len
    }

    /// Always false (an empty registration is refused).
    pub fn is_empty(&self) -> bool {
        self.region.len == 0
    }

    /// The IOVA of its first byte.
    pub fn iova(&self) -> u64 {
        self.region.iova
    }

    /// Buffers of it alive now (with the caller, in flight, or held by the quarantine).
    pub fn buffers(&self) -> usize {
        Arc::strong_count(&self.region) - 1
    }

    /// Removes the memory from the IOMMU and gives it back: the mapping handed to
    /// [`DmaMemory::register`] (`Some`), or nothing for [`DmaMemory::register_raw`] (the
    /// caller may free it once this returns `Ok`).
    ///
    /// # Errors
    ///
    /// The registration comes back, unchanged, with [`Error::RegistrationBusy`] while any
    /// buffer of it is alive, or with the IOMMU's error if the unmap fails (the memory
    /// stays mapped; do not free it).
    #[allow(clippy::result_large_err)]
    pub fn unregister(self) -> Result<Option<MmapMut>, (Registration, Error)> {
        let addr = self.region.host as usize;
        let buffers = self.buffers();
        if buffers > 0 {
            return Err((self, Error::RegistrationBusy { addr, buffers }));
        }
        let mut region = Arc::try_unwrap(self.region).unwrap_or_else(|_| {
            unreachable!("no buffer holds the region, and the Registration is not Clone")
        });
        if let Err(e) = region.mapper.unmap(region.iova, region.len) {
            return Err((
                Registration {
                    region: Arc::new(region),
                },
                e,
            ));
        }
        region.unmapped = true;
        lock(&region.iova_alloc)
            .free(region.iova, region.len as u64)
            .expect("region IOVA was allocated by this allocator");
        if let Some(r) = &region.registered {
            lock(r).retain(|&(h, _)| h != addr);
        }
        match std::mem::replace(&mut region.owner, Owner::Leaked) {
            Owner::Caller(CallerMapping::Mmap(m)) => Ok(Some(m)),
            _ => Ok(None),
        }
    }
}
