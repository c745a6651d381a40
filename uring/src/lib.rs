//! # nvme-dio-uring: the kernel path `nvme-dio bench` compares against
//!
//! `nvme-dio bench --engine io_uring` runs the same workload as the userspace driver
//! through the kernel (O_DIRECT, io_uring, registered buffers and file, optionally IOPOLL
//! and SQPOLL), so the two figures can be put side by side, as storage engineers do with
//! fio's `t/io_uring`. This crate is that engine's only contact with `unsafe`: the `nvme-dio`
//! binary forbids it, and pushing an SQE that points at memory is `unsafe` in the io-uring
//! crate because the kernel writes that memory later.
//!
//! ## Model
//!
//! A [`Uring`] owns everything the kernel may touch: the ring, the file, and one arena of
//! `slots` equally sized, 4 KiB aligned I/O buffers (plus each slot's iovec array). A slot is
//! either *idle* (the caller may read and write its bytes through [`Uring::slot`] /
//! [`Uring::slot_mut`]) or *in flight* (only the kernel touches it). [`Uring::push`] moves an
//! idle slot in flight; [`Uring::reap`] hands it back with the kernel's result. Every rule
//! the kernel needs is checked at run time, so the API is safe:
//!
//! - a slot in flight cannot be borrowed or pushed again ([`UringError::SlotBusy`]);
//! - the arena and iovecs are freed only after every slot came back: `Drop` waits for the
//!   kernel, and leaks the memory if waiting fails rather than free memory the kernel may
//!   still write.
//!
//! [`pin_current_thread`] (sched_setaffinity) lives here for the same reason: it is the one
//! other libc call the benchmark needs, and so do the binary's Ctrl-C flag and thread CPU
//! clock ([`sys`]).

use std::alloc::Layout;
use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;

use io_uring::{IoUring, opcode, squeue, types};

pub mod sys;
pub use sys::{
    CpuTimes, block_sigint_in_this_thread, catch_sigint, process_rusage, sigint_caught,
    thread_cpu_time, thread_rusage,
};

/// Buffer alignment: a page, which satisfies every O_DIRECT alignment rule in practice.
pub const ALIGN: usize = 4096;

/// Errors, each saying what to try.
#[derive(Debug, thiserror::Error)]
pub enum UringError {
    /// The file or device could not be opened.
    #[error("cannot open {path} with O_DIRECT: {hint}")]
    Open {
        /// The path.
        path: PathBuf,
        /// What to check, from the OS error.
        hint: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Its size could not be found, or it is empty.
    #[error(
        "{path} is {size} bytes: the benchmark needs at least one I/O's worth ({need} bytes); create it larger"
    )]
    TooSmall {
        /// The path.
        path: PathBuf,
        /// Its size.
        size: u64,
        /// Bytes needed.
        need: u64,
    },
    /// A system call failed.
    #[error("{op} failed")]
    Os {
        /// What was attempted.
        op: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// io_uring_setup failed.
    #[error(
        "io_uring setup failed{}: io_uring may be disabled (/proc/sys/kernel/io_uring_disabled) or the kernel too old",
        if *.sqpoll { " with SQPOLL" } else { "" }
    )]
    Setup {
        /// SQPOLL was asked for.
        sqpoll: bool,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Bad arguments.
    #[error("{0}")]
    BadArgument(String),
    /// The slot is in flight.
    #[error("slot {slot} is in flight: wait for its completion before touching it")]
    SlotBusy {
        /// The slot.
        slot: usize,
    },
    /// The submission queue is full.
    #[error("the submission queue is full: submit and reap before pushing more")]
    QueueFull,
}

/// How to set the ring up.
#[derive(Clone, Copy, Debug)]
pub struct UringOptions {
    /// Submission queue entries (at least the queue depth).
    pub entries: u32,
    /// IORING_SETUP_IOPOLL: the kernel polls the device for completions (needs a block
    /// device with poll queues, e.g. `nvme.poll_queues=N`).
    pub iopoll: bool,
    /// IORING_SETUP_SQPOLL with this idle time in milliseconds: a kernel thread submits.
    pub sqpoll: Option<u32>,
    /// Register the buffer arena (READ_FIXED / WRITE_FIXED: no per-I/O page pinning).
    pub register_buffers: bool,
    /// Register the file (no per-I/O fget/fput).
    pub register_file: bool,
    /// Open read-write (needed for writes); read-only otherwise.
    pub write: bool,
}

impl Default for UringOptions {
    fn default() -> Self {
        UringOptions {
            entries: 128,
            iopoll: false,
            sqpoll: None,
            register_buffers: true,
            register_file: true,
            write: false,
        }
    }
}

/// Direction of one I/O.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dir {
    /// Device to memory.
    Read,
    /// Memory to device.
    Write,
}

/// `RWF_DSYNC` for [`Uring::push_with`]: the write is durable when it completes (FUA).
pub const RWF_DSYNC: i32 = libc::RWF_DSYNC;

/// What setup actually got (registration may be refused, e.g. by RLIMIT_MEMLOCK).
#[derive(Clone, Debug, Default)]
pub struct UringInfo {
    /// Buffers are registered.
    pub buffers_registered: bool,
    /// The file is registered.
    pub file_registered: bool,
    /// Why a registration was skipped, if one was.
    pub notes: Vec<String>,
}

/// A page-aligned heap allocation the kernel may DMA into. Never referenced as a whole
/// (`&[u8]` of all of it) while any part is in flight: only per-slot slices are made.
struct Arena {
    ptr: NonNull<u8>,
    layout: Layout,
}

// SAFETY: the arena is plain heap memory; the raw pointer is only dereferenced by `Uring`
// methods that take `&self`/`&mut self`, so moving it to another thread is fine.
unsafe impl Send for Arena {}

/// A ring, a file and a buffer arena. See the crate docs for the slot rules.
pub struct Uring {
    ring: IoUring,
    file: File,
    size: u64,
    arena: Arena,
    slot_bytes: usize,
    busy: Vec<bool>,
    in_flight: usize,
    /// Per slot, its iovec list (empty: one contiguous buffer, the whole slot).
    iovecs: Vec<Vec<libc::iovec>>,
    info: UringInfo,
    /// Completions naming no slot in flight (should be zero).
    pub unknown_completions: u64,
}

impl std::fmt::Debug for Uring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Uring")
            .field("size", &self.size)
            .field("slots", &self.busy.len())
            .field("slot_bytes", &self.slot_bytes)
            .field("in_flight", &self.in_flight)
            .field("info", &self.info)
            .finish()
    }
}

impl Uring {
    /// Opens `path` with O_DIRECT and sets up a ring and `slots` buffers of `slot_bytes`
    /// (rounded up to [`ALIGN`]) each.
    ///
    /// # Errors
    ///
    /// [`UringError::Open`], [`UringError::Setup`], [`UringError::BadArgument`] for zero
    /// slots or sizes, [`UringError::TooSmall`] for an empty file.
    pub fn open(
        path: &Path,
        slots: usize,
        slot_bytes: usize,
        opts: &UringOptions,
    ) -> Result<Uring, UringError> {
        if slots == 0 || slot_bytes == 0 || slots > u16::MAX as usize {
            return Err(UringError::BadArgument(format!(
                "{slots} slots of {slot_bytes} bytes: need 1..=65535 slots of at least one byte"
            )));
        }
        let mut file = OpenOptions::new()
            .read(true)
            .write(opts.write)
            .custom_flags(libc::O_DIRECT)
            .open(path)
            .map_err(|source| UringError::Open {
                path: path.to_owned(),
                hint: open_hint(&source),
                source,
            })?;
        // Seeking to the end gives the size of regular files and block devices alike.
        let size = file
            .seek(SeekFrom::End(0))
            .map_err(|source| UringError::Os {
                op: "lseek",
                source,
            })?;
        if size < slot_bytes as u64 {
            return Err(UringError::TooSmall {
                path: path.to_owned(),
                size,
                need: slot_bytes as u64,
            });
        }
        let slot_bytes = slot_bytes.div_ceil(ALIGN) * ALIGN;
        let mut builder = IoUring::builder();
        if opts.iopoll {
            builder.setup_iopoll();
        }
        if let Some(idle) = opts.sqpoll {
            builder.setup_sqpoll(idle);
        }
        let ring = builder
            .build(opts.entries.max(slots as u32).next_power_of_two())
            .map_err(|source| UringError::Setup {
                sqpoll: opts.sqpoll.is_some(),
                source,
            })?;

        let total = slot_bytes
            .checked_mul(slots)
            .ok_or_else(|| UringError::BadArgument("arena too large".into()))?;
        let layout = Layout::from_size_align(total, ALIGN)
            .map_err(|e| UringError::BadArgument(e.to_string()))?;
        // SAFETY: the layout has a non-zero size (slots >= 1, slot_bytes >= ALIGN).
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        let Some(ptr) = NonNull::new(ptr) else {
            std::alloc::handle_alloc_error(layout)
        };
        let arena = Arena { ptr, layout };

        let mut info = UringInfo::default();
        if opts.register_buffers {
            let iov = [libc::iovec {
                iov_base: arena.ptr.as_ptr().cast(),
                iov_len: total,
            }];
            // SAFETY: the arena stays allocated until after the ring is dropped (it is
            // leaked if the ring cannot be drained, see Drop), so the registered range is
            // valid for as long as the kernel may use it.
            match unsafe { ring.submitter().register_buffers(&iov) } {
                Ok(()) => info.buffers_registered = true,
                Err(e) => info.notes.push(format!(
                    "buffers not registered ({e}); raise RLIMIT_MEMLOCK (ulimit -l) to register them"
                )),
            }
        }
        if opts.register_file {
            match ring.submitter().register_files(&[file.as_raw_fd()]) {
                Ok(()) => info.file_registered = true,
                Err(e) => info.notes.push(format!("file not registered ({e})")),
            }
        }
        Ok(Uring {
            ring,
            file,
            size,
            arena,
            slot_bytes,
            busy: vec![false; slots],
            in_flight: 0,
            iovecs: vec![Vec::new(); slots],
            info,
            unknown_completions: 0,
        })
    }

    /// Size of the file or device in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// What setup got.
    pub fn info(&self) -> &UringInfo {
        &self.info
    }

    /// Bytes per slot (the requested size rounded up to [`ALIGN`]).
    pub fn slot_bytes(&self) -> usize {
        self.slot_bytes
    }

    /// Slots.
    pub fn slots(&self) -> usize {
        self.busy.len()
    }

    /// Slots in flight.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    fn check_idle(&self, slot: usize) -> Result<(), UringError> {
        match self.busy.get(slot) {
            Some(false) => Ok(()),
            Some(true) => Err(UringError::SlotBusy { slot }),
            None => Err(UringError::BadArgument(format!(
                "slot {slot} of {}",
                self.busy.len()
            ))),
        }
    }

    fn slot_ptr(&self, slot: usize) -> *mut u8 {
        // SAFETY: slot < slots (checked by callers), so the offset stays inside the arena.
        unsafe { self.arena.ptr.as_ptr().add(slot * self.slot_bytes) }
    }

    /// The bytes of an idle slot.
    ///
    /// # Errors
    ///
    /// [`UringError::SlotBusy`] while it is in flight.
    pub fn slot(&self, slot: usize) -> Result<&[u8], UringError> {
        self.check_idle(slot)?;
        // SAFETY: the slot is inside the arena and idle: the kernel does not write it, and
        // `&self` prevents `slot_mut` or `push` from running while this borrow lives.
        Ok(unsafe { std::slice::from_raw_parts(self.slot_ptr(slot), self.slot_bytes) })
    }

    /// The bytes of an idle slot, writable.
    ///
    /// # Errors
    ///
    /// [`UringError::SlotBusy`] while it is in flight.
    pub fn slot_mut(&mut self, slot: usize) -> Result<&mut [u8], UringError> {
        self.check_idle(slot)?;
        // SAFETY: as in `slot`, and `&mut self` makes this the only borrow of the slot.
        Ok(unsafe { std::slice::from_raw_parts_mut(self.slot_ptr(slot), self.slot_bytes) })
    }

    /// Makes the slot's I/O an iovec set of `(offset in slot, length)` segments (readv /
    /// writev); an empty list means the plain contiguous buffer (READ_FIXED / WRITE_FIXED
    /// when buffers are registered).
    ///
    /// # Errors
    ///
    /// [`UringError::SlotBusy`], or [`UringError::BadArgument`] if a segment leaves the slot.
    pub fn set_segments(&mut self, slot: usize, segs: &[(usize, usize)]) -> Result<(), UringError> {
        self.check_idle(slot)?;
        let base = self.slot_ptr(slot);
        let mut v = Vec::with_capacity(segs.len());
        for &(off, len) in segs {
            if off.checked_add(len).is_none_or(|end| end > self.slot_bytes) || len == 0 {
                return Err(UringError::BadArgument(format!(
                    "segment {off}+{len} does not fit a {}-byte slot",
                    self.slot_bytes
                )));
            }
            // SAFETY: off + len <= slot_bytes, so the pointer stays inside the slot.
            let p = unsafe { base.add(off) };
            v.push(libc::iovec {
                iov_base: p.cast(),
                iov_len: len,
            });
        }
        self.iovecs[slot] = v;
        Ok(())
    }

    /// Queues `len` bytes (ignored for an iovec slot: the segments say) of `slot` to or from
    /// the file at `offset`, tagged with the slot number. Call [`Uring::submit`] to send.
    ///
    /// # Errors
    ///
    /// [`UringError::SlotBusy`], [`UringError::QueueFull`], or [`UringError::BadArgument`]
    /// if `len` exceeds the slot.
    pub fn push(
        &mut self,
        slot: usize,
        dir: Dir,
        offset: u64,
        len: usize,
    ) -> Result<(), UringError> {
        self.push_with(slot, dir, offset, len, 0)
    }

    /// [`Uring::push`] with `RWF_*` flags for the read or write (`libc::RWF_DSYNC`: the
    /// write is durable when it completes, which the block layer sends as FUA to a device
    /// with a volatile write cache).
    ///
    /// # Errors
    ///
    /// As [`Uring::push`].
    pub fn push_with(
        &mut self,
        slot: usize,
        dir: Dir,
        offset: u64,
        len: usize,
        rw_flags: i32,
    ) -> Result<(), UringError> {
        self.check_idle(slot)?;
        if len == 0 || len > self.slot_bytes {
            return Err(UringError::BadArgument(format!(
                "length {len} for a {}-byte slot",
                self.slot_bytes
            )));
        }
        let fixed = self.info.file_registered;
        let fd = self.file.as_raw_fd();
        let buf = self.slot_ptr(slot);
        let iov = &self.iovecs[slot];
        let regd = self.info.buffers_registered;
        // The opcode builders take the file as `impl UseFixed` (a sealed trait), so the two
        // file kinds each get the whole match.
        macro_rules! build {
            ($f:expr) => {
                match (dir, iov.is_empty(), regd) {
                    (Dir::Read, true, true) => opcode::ReadFixed::new($f, buf, len as u32, 0)
                        .offset(offset)
                        .rw_flags(rw_flags)
                        .build(),
                    (Dir::Write, true, true) => opcode::WriteFixed::new($f, buf, len as u32, 0)
                        .offset(offset)
                        .rw_flags(rw_flags)
                        .build(),
                    (Dir::Read, true, false) => opcode::Read::new($f, buf, len as u32)
                        .offset(offset)
                        .rw_flags(rw_flags)
                        .build(),
                    (Dir::Write, true, false) => opcode::Write::new($f, buf, len as u32)
                        .offset(offset)
                        .rw_flags(rw_flags)
                        .build(),
                    (Dir::Read, false, _) => opcode::Readv::new($f, iov.as_ptr(), iov.len() as u32)
                        .offset(offset)
                        .rw_flags(rw_flags)
                        .build(),
                    (Dir::Write, false, _) => {
                        opcode::Writev::new($f, iov.as_ptr(), iov.len() as u32)
                            .offset(offset)
                            .rw_flags(rw_flags)
                            .build()
                    }
                }
            };
        }
        let entry: squeue::Entry = if fixed {
            build!(types::Fixed(0))
        } else {
            build!(types::Fd(fd))
        }
        .user_data(slot as u64);
        // SAFETY: the entry points at this slot's bytes (and iovec array), both owned by
        // `self` and not freed or moved before the completion is reaped (Drop drains). The
        // slot is marked busy just below, so no Rust borrow of it can be made until `reap`
        // hands it back; the iovec array is not replaced while busy (set_segments checks).
        let pushed = unsafe { self.ring.submission().push(&entry) };
        if pushed.is_err() {
            return Err(UringError::QueueFull);
        }
        self.busy[slot] = true;
        self.in_flight += 1;
        Ok(())
    }

    /// Queues an fsync of the file (IORING_OP_FSYNC: the kernel flushes the device's volatile
    /// write cache), tagged with `slot`, which is busy until it completes (its result is 0,
    /// or a negative errno). Nothing goes to the kernel until [`Uring::submit`].
    ///
    /// # Errors
    ///
    /// [`UringError::BadArgument`] for a slot that does not exist, [`UringError::SlotBusy`],
    /// [`UringError::QueueFull`].
    pub fn push_fsync(&mut self, slot: usize) -> Result<(), UringError> {
        self.check_idle(slot)?;
        let entry: squeue::Entry = if self.info.file_registered {
            opcode::Fsync::new(types::Fixed(0)).build()
        } else {
            opcode::Fsync::new(types::Fd(self.file.as_raw_fd())).build()
        }
        .user_data(slot as u64);
        // SAFETY: an fsync entry points at no memory; the file (or its registration) lives as
        // long as `self`, and Drop drains the ring before closing it.
        let pushed = unsafe { self.ring.submission().push(&entry) };
        if pushed.is_err() {
            return Err(UringError::QueueFull);
        }
        self.busy[slot] = true;
        self.in_flight += 1;
        Ok(())
    }

    /// Submits what was pushed and waits until at least `want` completions are ready
    /// (0: do not wait). With IOPOLL, waiting is what makes the kernel poll the device.
    ///
    /// # Errors
    ///
    /// [`UringError::Os`] (`io_uring_enter`). EINTR and EBUSY are not errors: retry.
    pub fn submit(&mut self, want: usize) -> Result<usize, UringError> {
        let r = if want == 0 {
            self.ring.submit()
        } else {
            self.ring.submit_and_wait(want)
        };
        match r {
            Ok(n) => Ok(n),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EINTR) | Some(libc::EBUSY) | Some(libc::EAGAIN)
                ) =>
            {
                Ok(0)
            }
            Err(source) => Err(UringError::Os {
                op: "io_uring_enter",
                source,
            }),
        }
    }

    /// Takes every ready completion: calls `f(slot, result)` (`result` is bytes moved, or a
    /// negative errno) after the slot is idle again. Returns how many were taken.
    pub fn reap(&mut self, mut f: impl FnMut(&mut Self, usize, i32)) -> usize {
        let mut n = 0;
        loop {
            let Some(cqe) = self.ring.completion().next() else {
                break;
            };
            let slot = cqe.user_data() as usize;
            if self.busy.get(slot) != Some(&true) {
                self.unknown_completions += 1;
                continue;
            }
            self.busy[slot] = false;
            self.in_flight -= 1;
            n += 1;
            f(self, slot, cqe.result());
        }
        n
    }
}

impl Drop for Uring {
    fn drop(&mut self) {
        // The kernel may write slots until their completions are reaped: drain first.
        let mut tries = 0;
        while self.in_flight > 0 && tries < 10_000 {
            tries += 1;
            if self.submit(1).is_err() {
                break;
            }
            self.reap(|_, _, _| {});
        }
        if self.in_flight > 0 {
            // Cannot prove the kernel is done with the arena: leak it (memory, not safety).
            return;
        }
        // SAFETY: allocated in `open` with this layout; no slot is in flight, so the kernel
        // holds no pointer into it that it may still use (registered buffers are unpinned
        // when the ring fd closes; the kernel does not access them without a request).
        unsafe { std::alloc::dealloc(self.arena.ptr.as_ptr(), self.arena.layout) };
    }
}

fn open_hint(e: &io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::ENOENT) => {
            "no such file; create it first (e.g. `fallocate -l 1G FILE`, then write it for real reads)"
        }
        Some(libc::EINVAL) => {
            "this filesystem does not support O_DIRECT (tmpfs does not); use a file on ext4/xfs or a block device"
        }
        Some(libc::EACCES) | Some(libc::EPERM) => {
            "permission denied; run as a user that may open it (block devices usually need root or the disk group)"
        }
        Some(libc::EISDIR) => "it is a directory; give a file or a block device",
        Some(libc::EBUSY) => "the device is busy (held exclusively by another user)",
        _ => "check the path",
    }
}

/// Pins the calling thread to CPU `cpu` (sched_setaffinity on thread 0 = self).
///
/// # Errors
///
/// [`UringError::Os`] if the CPU does not exist or is not allowed (cgroup cpuset).
pub fn pin_current_thread(cpu: usize) -> Result<(), UringError> {
    if cpu >= libc::CPU_SETSIZE as usize {
        return Err(UringError::BadArgument(format!(
            "cpu {cpu} is beyond CPU_SETSIZE"
        )));
    }
    // SAFETY: cpu_set_t is a plain bit array; all zeroes is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: cpu < CPU_SETSIZE (checked above), so the bit is inside `set`.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: `set` is a valid, initialised cpu_set_t of the size passed; pid 0 = this thread.
    let r = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if r != 0 {
        return Err(UringError::Os {
            op: "sched_setaffinity",
            source: io::Error::last_os_error(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A file on a filesystem that supports O_DIRECT (the target dir, not a tmpfs /tmp).
    fn temp_file(name: &str, bytes: &[u8]) -> PathBuf {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/uring-test");
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(format!("{name}-{}", std::process::id()));
        let mut f = File::create(&p).unwrap();
        f.write_all(bytes).unwrap();
        f.sync_all().unwrap();
        p
    }

    fn reap_all(u: &mut Uring, want: usize) -> Vec<(usize, i32)> {
        let mut got = Vec::new();
        while got.len() < want {
            u.submit(1).unwrap();
            u.reap(|_, s, r| got.push((s, r)));
        }
        got
    }

    #[test]
    fn reads_writes_and_vectored_io_move_the_right_bytes_and_busy_slots_are_refused() {
        let data: Vec<u8> = (0..64 * 1024u32)
            .map(|i| (i * 7 + i / 4096) as u8)
            .collect();
        let p = temp_file("rw", &data);
        for register in [true, false] {
            let opts = UringOptions {
                entries: 8,
                write: true,
                register_buffers: register,
                register_file: register,
                ..Default::default()
            };
            let mut u = Uring::open(&p, 2, 8192, &opts).unwrap();
            assert_eq!(u.size(), data.len() as u64);
            u.push(0, Dir::Read, 8192, 8192).unwrap();
            assert!(matches!(u.slot(0), Err(UringError::SlotBusy { slot: 0 })));
            assert!(matches!(
                u.push(0, Dir::Read, 0, 4096),
                Err(UringError::SlotBusy { .. })
            ));
            assert_eq!(reap_all(&mut u, 1), vec![(0, 8192)]);
            assert_eq!(u.slot(0).unwrap(), &data[8192..16384]);

            // Vectored: 1 KiB then 3 KiB at odd (512-aligned) offsets in the slot.
            u.set_segments(1, &[(512, 1024), (4096 + 1024, 3072)])
                .unwrap();
            u.push(1, Dir::Read, 4096, 4096).unwrap();
            assert_eq!(reap_all(&mut u, 1), vec![(1, 4096)]);
            let s = u.slot(1).unwrap();
            assert_eq!(&s[512..1536], &data[4096..5120]);
            assert_eq!(&s[5120..8192], &data[5120..8192]);

            // Write slot 0's bytes back at offset 0 and read them with a plain read.
            u.slot_mut(0).unwrap().fill(0xa5);
            u.push(0, Dir::Write, 0, 4096).unwrap();
            assert_eq!(reap_all(&mut u, 1), vec![(0, 4096)]);
            let back = std::fs::read(&p).unwrap();
            assert!(back[..4096].iter().all(|&b| b == 0xa5));
            std::fs::write(&p, &data).unwrap();
        }
        std::fs::remove_file(&p).unwrap();
    }

    #[test]
    fn a_file_smaller_than_one_io_is_refused_with_its_size() {
        let p = temp_file("small", &[0u8; 512]);
        let e = Uring::open(&p, 1, 4096, &UringOptions::default()).unwrap_err();
        assert!(e.to_string().contains("512 bytes"), "{e}");
        std::fs::remove_file(&p).unwrap();
    }
}
