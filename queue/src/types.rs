//! Newtypes for the numbers that are easy to confuse.

use core::fmt;

/// An I/O virtual address: what the device sees, never a host pointer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Iova(pub u64);

/// A logical block address within a namespace.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lba(pub u64);

/// A command identifier, unique among the outstanding commands of one submission queue.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cid(pub u16);

/// A queue identifier: 0 is the admin queue.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Qid(pub u16);

impl Qid {
    /// The admin queue.
    pub const ADMIN: Qid = Qid(0);
}

/// A namespace identifier (1-based; 0 and 0xffff_ffff are special).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Nsid(pub u32);

impl Nsid {
    /// "All namespaces" in commands that accept it.
    pub const ALL: Nsid = Nsid(0xffff_ffff);
}

impl From<u32> for Nsid {
    fn from(n: u32) -> Nsid {
        Nsid(n)
    }
}

impl fmt::Display for Nsid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The controller memory page size (CC.MPS): a power of two from 4 KiB to 128 MiB.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PageSize {
    shift: u8,
}

impl PageSize {
    /// 4 KiB, the size every controller supports.
    pub const SIZE_4K: PageSize = PageSize { shift: 12 };

    /// A page size of `bytes`, if it is a power of two in 4 KiB ..= 128 MiB.
    pub const fn new(bytes: usize) -> Option<PageSize> {
        if bytes.is_power_of_two() && bytes >= 4096 && bytes <= (128 << 20) {
            Some(PageSize {
                shift: bytes.trailing_zeros() as u8,
            })
        } else {
            None
        }
    }

    /// The page size for the CAP.MPSMIN/MPSMAX or CC.MPS encoding `2^(12 + mps)`.
    pub const fn from_mps(mps: u8) -> Option<PageSize> {
        if mps <= 15 {
            Some(PageSize { shift: 12 + mps })
        } else {
            None
        }
    }

    /// Size in bytes.
    #[inline]
    pub const fn bytes(self) -> usize {
        1 << self.shift
    }

    /// log2 of the size.
    #[inline]
    pub const fn shift(self) -> u32 {
        self.shift as u32
    }

    /// The CC.MPS encoding.
    pub const fn mps(self) -> u8 {
        self.shift - 12
    }

    /// Offset of `addr` within its page.
    #[inline]
    pub const fn offset(self, addr: u64) -> u64 {
        addr & (self.bytes() as u64 - 1)
    }
}

/// The number of entries of a queue: the real count (2 ..= 65 536).
///
/// The spec encodes queue sizes zero-based; [`QueueSize::zero_based`] is the only place that
/// conversion happens.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct QueueSize(u32);

impl QueueSize {
    /// A queue of `entries` slots, if 2 ..= 65 536 (one slot always stays empty).
    pub const fn new(entries: u32) -> Option<QueueSize> {
        if entries >= 2 && entries <= 65_536 {
            Some(QueueSize(entries))
        } else {
            None
        }
    }

    /// The real number of slots.
    #[inline]
    pub const fn entries(self) -> u32 {
        self.0
    }

    /// The zero-based encoding used by AQA, CAP.MQES and Create I/O SQ/CQ.
    pub const fn zero_based(self) -> u16 {
        (self.0 - 1) as u16
    }

    /// From a zero-based encoding (CAP.MQES, AQA).
    pub const fn from_zero_based(v: u16) -> Option<QueueSize> {
        QueueSize::new(v as u32 + 1)
    }
}
