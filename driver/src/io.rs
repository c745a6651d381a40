//! The one typed I/O request, [`Io`]: what [`crate::IoQueuePair::submit`] takes. Each
//! variant carries what its command needs and no more; the builders in `nvme_dio_queue::cmd`
//! carry the opcodes.

use nvme_dio_dma::DmaBuf;
use nvme_dio_queue::{Lba, Sqe};

use crate::completion::Bufs;
use crate::namespace::Namespace;

/// One I/O request. Build it with the constructors, hand it to [`IoQueuePair::submit`].
///
/// ```
/// # use nvme_dio::{Io, Lba, DmaBuf, Namespace};
/// # fn f(ns: &Namespace, buf: DmaBuf) {
/// let io = Io::write(ns, Lba(8), buf).fua(); // durable when it completes
/// # let _ = io;
/// # }
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub enum Io<'a> {
    /// Read into the buffers, in order, starting at `lba`.
    Read {
        /// The namespace.
        ns: &'a Namespace,
        /// First block.
        lba: Lba,
        /// Where the data goes.
        bufs: Bufs,
        /// Force Unit Access.
        fua: bool,
    },
    /// Write the buffers, in order, starting at `lba`.
    Write {
        /// The namespace.
        ns: &'a Namespace,
        /// First block.
        lba: Lba,
        /// The data.
        bufs: Bufs,
        /// Force Unit Access: durable when it completes.
        fua: bool,
    },
    /// Flush the namespace's volatile write cache.
    Flush {
        /// The namespace.
        ns: &'a Namespace,
    },
    /// Write zeroes to `blocks` blocks (no data transfer).
    WriteZeroes {
        /// The namespace.
        ns: &'a Namespace,
        /// First block.
        lba: Lba,
        /// Block count (1 ..= 65 536).
        blocks: u32,
    },
    /// Deallocate (trim) ranges of `(first block, block count)`.
    Deallocate {
        /// The namespace.
        ns: &'a Namespace,
        /// 1 ..= 256 ranges.
        ranges: &'a [(Lba, u32)],
    },
    /// A command as built by the caller (see [`Io::raw`]).
    Raw {
        /// The entry; the queue sets its CID and, with a buffer, its PRPs.
        sqe: Sqe,
        /// Its data buffer, if any.
        buf: Option<DmaBuf>,
    },
}

impl<'a> Io<'a> {
    /// A read of `buf.len()` bytes at `lba`.
    pub fn read(ns: &'a Namespace, lba: Lba, buf: DmaBuf) -> Io<'a> {
        Io::Read {
            ns,
            lba,
            bufs: Bufs::One(buf),
            fua: false,
        }
    }

    /// A read into an iovec set.
    pub fn readv(ns: &'a Namespace, lba: Lba, bufs: Vec<DmaBuf>) -> Io<'a> {
        Io::Read {
            ns,
            lba,
            bufs: Bufs::Many(bufs),
            fua: false,
        }
    }

    /// A write of `buf` at `lba`.
    pub fn write(ns: &'a Namespace, lba: Lba, buf: DmaBuf) -> Io<'a> {
        Io::Write {
            ns,
            lba,
            bufs: Bufs::One(buf),
            fua: false,
        }
    }

    /// A write of an iovec set.
    pub fn writev(ns: &'a Namespace, lba: Lba, bufs: Vec<DmaBuf>) -> Io<'a> {
        Io::Write {
            ns,
            lba,
            bufs: Bufs::Many(bufs),
            fua: false,
        }
    }

    /// Sets Force Unit Access on a read or write (a write is then durable when it
    /// completes; a read comes from the medium, not a cache). No effect on other requests.
    pub fn fua(mut self) -> Io<'a> {
        if let Io::Read { fua, .. } | Io::Write { fua, .. } = &mut self {
            *fua = true;
        }
        self
    }

    /// A flush of the namespace's volatile write cache.
    pub fn flush(ns: &'a Namespace) -> Io<'a> {
        Io::Flush { ns }
    }

    /// Write Zeroes over `blocks` blocks at `lba`.
    pub fn write_zeroes(ns: &'a Namespace, lba: Lba, blocks: u32) -> Io<'a> {
        Io::WriteZeroes { ns, lba, blocks }
    }

    /// Deallocate (trim) `ranges` of `(first block, block count)`.
    pub fn deallocate(ns: &'a Namespace, ranges: &'a [(Lba, u32)]) -> Io<'a> {
        Io::Deallocate { ns, ranges }
    }

    /// An I/O command as built by the caller (a vendor command, or a test that wants the
    /// device, not the driver, to judge a request). The driver checks nothing but the
    /// buffer's origin: it sets the CID and, if `buf` is given, PRP1/PRP2 (with a PRP list in
    /// the slot's own list pages when the buffer spans more than two pages). Device errors
    /// come back in the completion as [`Error::Command`].
    pub fn raw(sqe: Sqe, buf: Option<DmaBuf>) -> Io<'a> {
        Io::Raw { sqe, buf }
    }

    /// The buffers this request carries (handed back when it is refused).
    pub(crate) fn into_bufs(self) -> Bufs {
        match self {
            Io::Read { bufs, .. } | Io::Write { bufs, .. } => bufs,
            Io::Raw { buf, .. } => buf.map_or(Bufs::None, Bufs::One),
            Io::Flush { .. } | Io::WriteZeroes { .. } | Io::Deallocate { .. } => Bufs::None,
        }
    }
}
