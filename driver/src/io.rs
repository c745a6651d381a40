//! The one typed I/O request, [`Io`]: what [`crate::IoQueuePair::submit`] takes. Each
//! variant carries what its command needs and no more; the builders in `nvme_dio_queue::cmd`
//! carry the opcodes.

use nvme_dio_dma::DmaBuf;
use nvme_dio_queue::pi::Prinfo;
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
        /// Where the data goes (and the separate metadata, see [`Io::metadata`]).
        bufs: Bufs,
        /// Force Unit Access.
        fua: bool,
        /// Protection information and atomicity.
        opts: RwOptions,
    },
    /// Write the buffers, in order, starting at `lba`.
    Write {
        /// The namespace.
        ns: &'a Namespace,
        /// First block.
        lba: Lba,
        /// The data (and the separate metadata, see [`Io::metadata`]).
        bufs: Bufs,
        /// Force Unit Access: durable when it completes.
        fua: bool,
        /// Protection information and atomicity.
        opts: RwOptions,
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
    /// Verify `blocks` blocks: the controller reads them and checks their integrity (and,
    /// with PRCHK, their PI) without transferring data. Split at the controller's Verify
    /// Size Limit (VSL) where it reports one.
    Verify {
        /// The namespace.
        ns: &'a Namespace,
        /// First block.
        lba: Lba,
        /// Block count (1 ..= 65 536).
        blocks: u32,
        /// PI checks (no PRACT).
        pi: Option<PiOptions>,
    },
    /// Copy (simple copy): the source ranges `(first block, block count)`, in order, to
    /// consecutive blocks from `dest`, within the namespace. Split into several Copy commands
    /// where the ranges exceed MSSRL (blocks per range), MSRC (ranges per command) or MCL
    /// (blocks per command). The metadata (and PI) is copied as it is.
    Copy {
        /// The namespace.
        ns: &'a Namespace,
        /// 1 ..= 256 source ranges.
        ranges: &'a [(Lba, u32)],
        /// Destination of the first block.
        dest: Lba,
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
            opts: RwOptions::NONE,
        }
    }

    /// A read into an iovec set.
    pub fn readv(ns: &'a Namespace, lba: Lba, bufs: Vec<DmaBuf>) -> Io<'a> {
        Io::Read {
            ns,
            lba,
            bufs: Bufs::Many(bufs),
            fua: false,
            opts: RwOptions::NONE,
        }
    }

    /// A write of `buf` at `lba`.
    pub fn write(ns: &'a Namespace, lba: Lba, buf: DmaBuf) -> Io<'a> {
        Io::Write {
            ns,
            lba,
            bufs: Bufs::One(buf),
            fua: false,
            opts: RwOptions::NONE,
        }
    }

    /// A write of an iovec set.
    pub fn writev(ns: &'a Namespace, lba: Lba, bufs: Vec<DmaBuf>) -> Io<'a> {
        Io::Write {
            ns,
            lba,
            bufs: Bufs::Many(bufs),
            fua: false,
            opts: RwOptions::NONE,
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

    /// Adds the separate metadata buffer (MPTR) to a read or write on a namespace whose
    /// format carries metadata in a separate buffer: `blocks * metadata_size` bytes, one
    /// contiguous buffer, dword aligned. A split moves the pointer with each child. (On an
    /// extended LBA format the metadata travels in the data buffer instead, after each
    /// block's data: no metadata buffer then.) No effect on other requests.
    pub fn metadata(mut self, md: DmaBuf) -> Io<'a> {
        if let Io::Read { bufs, .. } | Io::Write { bufs, .. } = &mut self {
            *bufs = match std::mem::take(bufs) {
                Bufs::None => Bufs::None,
                Bufs::WithMetadata(mut w) => {
                    w.metadata = md;
                    Bufs::WithMetadata(w)
                }
                data => Bufs::WithMetadata(Box::new(crate::completion::WithMetadata {
                    data,
                    metadata: md,
                })),
            };
        }
        self
    }

    /// Sets the protection information options of a read or write: PRACT and PRCHK, the
    /// application tag and mask, and the initial reference tag. Only on a namespace
    /// formatted with PI (else the request is refused before anything is queued).
    pub fn pi(mut self, pi: PiOptions) -> Io<'a> {
        if let Io::Read { opts, .. } | Io::Write { opts, .. } = &mut self {
            opts.pi = Some(pi);
        }
        self
    }

    /// Marks a write atomic: it goes out as exactly one command, or is refused before
    /// anything is queued when it is larger than the namespace's atomic write unit (power
    /// fail), crosses an atomic boundary, or would need a split ([`crate::Namespace::atomic_limits`]
    /// says what is guaranteed). No effect on reads and other requests.
    pub fn atomic(mut self) -> Io<'a> {
        if let Io::Write { opts, .. } = &mut self {
            opts.atomic = true;
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

    /// Verify `blocks` blocks at `lba` (see [`Io::Verify`]).
    pub fn verify(ns: &'a Namespace, lba: Lba, blocks: u32) -> Io<'a> {
        Io::Verify {
            ns,
            lba,
            blocks,
            pi: None,
        }
    }

    /// Verify with PI checks.
    pub fn verify_pi(ns: &'a Namespace, lba: Lba, blocks: u32, pi: PiOptions) -> Io<'a> {
        Io::Verify {
            ns,
            lba,
            blocks,
            pi: Some(pi),
        }
    }

    /// Copy `ranges` to consecutive blocks from `dest` (see [`Io::Copy`]).
    pub fn copy(ns: &'a Namespace, ranges: &'a [(Lba, u32)], dest: Lba) -> Io<'a> {
        Io::Copy { ns, ranges, dest }
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
            Io::Flush { .. }
            | Io::WriteZeroes { .. }
            | Io::Deallocate { .. }
            | Io::Verify { .. }
            | Io::Copy { .. } => Bufs::None,
        }
    }
}

/// The protection information options of one read or write.
///
/// ```
/// # use nvme_dio::{PiOptions, Prinfo};
/// // Let the controller generate PI on a write (and check nothing the host sent):
/// let w = PiOptions::pract();
/// // Check everything on a read, the application tag 0x0042 included:
/// let r = PiOptions::check(Prinfo::CHECK_ALL).app_tag(0x0042, 0xffff);
/// # let _ = (w, r);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PiOptions {
    /// PRACT and the PRCHK checks.
    pub prinfo: Prinfo,
    /// The application tag written (PRACT) or expected (PRCHK application tag).
    pub apptag: u16,
    /// Which application tag bits are checked.
    pub appmask: u16,
    /// The first block's reference tag. `None`: the LBA's low bits (required for type 1;
    /// the default for type 2; unused by type 3).
    pub reftag: Option<u64>,
}

impl PiOptions {
    /// PRACT: the controller inserts PI on writes (and strips it on reads when the metadata
    /// is only the PI tuple).
    pub fn pract() -> PiOptions {
        PiOptions {
            prinfo: Prinfo {
                pract: true,
                ..Prinfo::default()
            },
            ..PiOptions::default()
        }
    }

    /// The controller checks what `checks` names.
    pub fn check(checks: Prinfo) -> PiOptions {
        PiOptions {
            prinfo: checks,
            ..PiOptions::default()
        }
    }

    /// Sets the application tag and its mask.
    pub fn app_tag(mut self, tag: u16, mask: u16) -> PiOptions {
        self.apptag = tag;
        self.appmask = mask;
        self
    }

    /// Sets the first block's reference tag (type 2).
    pub fn ref_tag(mut self, tag: u64) -> PiOptions {
        self.reftag = Some(tag);
        self
    }
}

/// Options of a read or write beyond its data: protection information and atomicity.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RwOptions {
    /// Protection information options; `None` = PRINFO 0 (no checks, no PRACT: the
    /// metadata moves as the host gives it).
    pub pi: Option<PiOptions>,
    /// Atomic write: one command or refused ([`Io::atomic`]).
    pub atomic: bool,
}

impl RwOptions {
    /// No PI options, not atomic.
    pub const NONE: RwOptions = RwOptions {
        pi: None,
        atomic: false,
    };

    /// True when nothing is set.
    #[inline]
    pub fn is_none(&self) -> bool {
        self.pi.is_none() && !self.atomic
    }
}
