//! # nvme-dio-capi: the C ABI of nvme-dio
//!
//! A C program (or any language with a C FFI) embeds the driver through `include/nvme_dio.h`,
//! generated from this file by cbindgen and checked in (a test proves it is current; run
//! `NVME_DIO_BLESS=1 cargo test -p nvme-dio-capi --test header` after changing the ABI).
//! Link `libnvme_dio_capi.a` with `-lpthread -ldl -lm`, or the shared library.
//!
//! ## Model (the same as the Rust API)
//!
//! - `nvd_open` brings a controller up: a PCI address bound to vfio-pci, or `emu` (an
//!   emulated controller with a 64 MiB RAM namespace; `emu:null`, `emu:thread` also exist).
//! - Each thread creates its own queue pair (`nvd_qpair_create`). A queue pair is used by one
//!   thread at a time: a second thread calling into it while it is busy gets
//!   `NVD_ERR_BUSY`, never a data race.
//! - Data moves through DMA buffers (`nvd_buf_alloc`), filled and read with
//!   `nvd_buf_write` / `nvd_buf_read`. No pointer into device memory is handed out: the
//!   device may write it at any time, and a C pointer would outlive the checks that the Rust
//!   side enforces (a buffer in flight is owned by the driver; touching it is
//!   `NVD_ERR_BUSY`).
//! - `nvd_readv` / `nvd_writev` / `nvd_flush` queue a request and return at once; its
//!   callback runs from `nvd_poll` or `nvd_wait` on the queue pair's thread, after the
//!   request's buffers are handed back. A callback may submit more I/O on the same queue
//!   pair. Submissions are batched: the doorbell is written by `nvd_poll` / `nvd_wait`.
//!
//! ## Errors
//!
//! Every function returns `NVD_OK` (0) or a negative `NVD_ERR_*` code; `nvd_last_error()`
//! gives the message of the last failure on the calling thread. Null or invalid arguments
//! are `NVD_ERR_INVALID`. No Rust panic crosses the boundary: one is caught and reported as
//! `NVD_ERR_INTERNAL`.

#![allow(non_camel_case_types)]

mod fio_support;

use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::{CStr, CString, c_char, c_void};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, TryLockError};
use std::time::Duration;

use nvme_dio::{
    Bufs, Completion, CompletionMode, Controller, Device, DeviceSpec, DmaBuf, Error, ErrorKind,
    IoQueuePair, Lba, Namespace, QueuePairOptions, Rejected, Report,
};

pub use fio_support::nvd_area;

// ---- status codes -----------------------------------------------------------------------

/// Success.
pub const NVD_OK: i32 = 0;
/// A null pointer or an invalid argument (see `nvd_last_error`).
pub const NVD_ERR_INVALID: i32 = -1;
/// The object is in use: a buffer in flight, a queue pair used by another thread at the
/// same moment, a controller that still has queue pairs.
pub const NVD_ERR_BUSY: i32 = -2;
/// The queue pair is full: poll for completions, then submit again.
pub const NVD_ERR_QUEUE_FULL: i32 = -3;
/// No such device, it cannot be opened, or it is gone.
pub const NVD_ERR_NO_DEVICE: i32 = -4;
/// DMA memory could not be allocated (reserve hugepages: `nvme-dio setup`).
pub const NVD_ERR_NO_MEMORY: i32 = -5;
/// The device completed the request with an error status.
pub const NVD_ERR_IO: i32 = -6;
/// The request or the wait timed out.
pub const NVD_ERR_TIMEOUT: i32 = -7;
/// The LBA range is past the end of the namespace, or the namespace does not exist.
pub const NVD_ERR_RANGE: i32 = -8;
/// The controller does not support this.
pub const NVD_ERR_UNSUPPORTED: i32 = -9;
/// A bug inside the library (a caught panic), a controller that broke the spec, or the
/// operating system refusing; the message says which.
pub const NVD_ERR_INTERNAL: i32 = -10;
/// The request was in flight when the controller was reset (or the queue pair destroyed):
/// it was not completed; resubmit it. A write may or may not have reached the medium.
pub const NVD_ERR_ABORTED: i32 = -11;

/// `nvd_writev` flag: Force Unit Access (the data is durable when the callback runs).
pub const NVD_WRITE_FUA: u32 = 1;
/// `nvd_qpair_create` flag: interrupt mode (`nvd_wait` sleeps on the MSI-X vector).
pub const NVD_QPAIR_INTERRUPT: u32 = 1;

/// A failure: code and message, recorded as the thread's last error on the way out.
struct Failure {
    code: i32,
    msg: String,
}

fn fail(code: i32, msg: impl Into<String>) -> Failure {
    Failure {
        code,
        msg: msg.into(),
    }
}

fn code_of(e: &Error) -> i32 {
    // The driver maps every error variant to a kind in one exhaustive match; here every kind
    // has its code. A kind added later reads as internal until it is given one.
    match e.kind() {
        ErrorKind::Device => NVD_ERR_IO,
        ErrorKind::Timeout => NVD_ERR_TIMEOUT,
        ErrorKind::InvalidInput => NVD_ERR_INVALID,
        ErrorKind::OutOfRange => NVD_ERR_RANGE,
        ErrorKind::Unsupported => NVD_ERR_UNSUPPORTED,
        ErrorKind::QueueFull => NVD_ERR_QUEUE_FULL,
        ErrorKind::Aborted => NVD_ERR_ABORTED,
        ErrorKind::NoDevice => NVD_ERR_NO_DEVICE,
        ErrorKind::NoMemory => NVD_ERR_NO_MEMORY,
        ErrorKind::System | ErrorKind::Internal => NVD_ERR_INTERNAL,
        _ => NVD_ERR_INTERNAL,
    }
}

impl From<Error> for Failure {
    fn from(e: Error) -> Failure {
        Failure {
            code: code_of(&e),
            msg: e.report(),
        }
    }
}

impl From<Rejected> for Failure {
    fn from(r: Rejected) -> Failure {
        Failure::from(*r.error)
    }
}

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn set_last_error(msg: &str) {
    // Interior NULs cannot be in a C string: replace them.
    let c = CString::new(msg.replace('\0', "\\0")).unwrap_or_default();
    LAST_ERROR.with(|l| *l.borrow_mut() = c);
}

/// Runs `f`, turning its failure or panic into a status code and the thread's last error.
fn guard(f: impl FnOnce() -> Result<i32, Failure>) -> i32 {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => {
            set_last_error(&e.msg);
            e.code
        }
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            set_last_error(&format!("internal error (a bug in nvme-dio): {what}"));
            NVD_ERR_INTERNAL
        }
    }
}

/// Turns a C pointer into a shared reference, or fails with `NVD_ERR_INVALID`.
///
/// # Safety
///
/// `p` is null or points to a live `T` that nobody mutates for `'a`.
unsafe fn arg<'a, T>(p: *const T, name: &str) -> Result<&'a T, Failure> {
    // SAFETY: the caller promises `p` is null or valid for 'a; null is checked by `as_ref`.
    unsafe { p.as_ref() }.ok_or_else(|| fail(NVD_ERR_INVALID, format!("{name} is NULL")))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic inside a guarded call may poison a lock; the state under it is still
    // consistent (every update is a single move), so carry on.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

// ---- handles ----------------------------------------------------------------------------

/// A controller that has been brought up (opaque).
#[derive(Debug)]
pub struct nvd_ctrl {
    ctrl: Controller<Device>,
    namespaces: Vec<Namespace>,
    /// Queue pairs alive: `nvd_close` refuses while any exist.
    qpairs: Arc<AtomicUsize>,
}

/// An I/O queue pair (opaque). One thread at a time.
#[derive(Debug)]
pub struct nvd_qpair {
    ctrl: Controller<Device>,
    namespaces: Vec<Namespace>,
    qpairs: Arc<AtomicUsize>,
    inner: Mutex<QpInner>,
    /// How many delivery loops are running callbacks (a callback may call `nvd_poll`, which
    /// runs its own loop inside the outer one): while it is not 0 the queue pair cannot be
    /// destroyed, from a callback or otherwise. Raised while the queue pair is locked, so
    /// `nvd_qpair_destroy`, which checks it under the same lock, sees every loop.
    delivering: AtomicUsize,
}

#[derive(Debug)]
struct QpInner {
    qp: IoQueuePair<Device>,
    next_tag: u64,
    pending: HashMap<u64, Pending>,
    /// Reused between polls.
    done: Vec<Delivery>,
}

/// A request in flight: whom to call, and which handles get its buffers back.
#[derive(Debug)]
struct Pending {
    cb: nvd_callback,
    ctx: *mut c_void,
    bufs: Vec<*const nvd_buf>,
}

#[derive(Debug)]
struct Delivery {
    cb: nvd_callback,
    ctx: *mut c_void,
    status: i32,
    nvme_status: u16,
    msg: Option<String>,
}

/// A DMA buffer (opaque): device-visible memory, filled and read by copy.
#[derive(Debug)]
pub struct nvd_buf {
    /// The controller it belongs to (its IOVA means nothing to another one).
    owner: usize,
    len: usize,
    /// `None` while a request owns it.
    buf: Mutex<Option<DmaBuf>>,
}

/// Called once per finished request, from `nvd_poll` / `nvd_wait`, on the thread that
/// called them.
///
/// `status` is `NVD_OK` or a negative `NVD_ERR_*` (`nvd_last_error()` has the message);
/// `nvme_status` is the NVMe status field (`SCT << 8 | SC`) for `NVD_ERR_IO`, else 0. The
/// request's buffers are back in the caller's hands when it runs.
pub type nvd_callback =
    Option<unsafe extern "C" fn(ctx: *mut c_void, status: i32, nvme_status: u16)>;

/// One namespace's geometry.
///
/// Set `size` to `sizeof(nvd_ns_info)` before `nvd_ns_info_get`: later versions add fields
/// at the end and fill only the `size` bytes the caller knows of (the call sets `size` to
/// the bytes it filled).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct nvd_ns_info {
    /// The size of this struct as the caller knows it (`sizeof(nvd_ns_info)`).
    pub size: u32,
    /// Namespace identifier (the `nsid` argument of the I/O functions).
    pub nsid: u32,
    /// Logical block size in bytes.
    pub block_size: u32,
    /// Size in logical blocks.
    pub blocks: u64,
    /// The largest transfer one command carries, bytes (larger requests are split).
    pub max_transfer: u32,
    /// 1 if the controller has a volatile write cache (flush, or FUA writes, for durability).
    pub volatile_write_cache: u32,
}

/// What the controller says about itself.
///
/// Set `size` to `sizeof(nvd_ctrl_info)` before `nvd_ctrl_info_get` (see [`nvd_ns_info`]).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct nvd_ctrl_info {
    /// The size of this struct as the caller knows it (`sizeof(nvd_ctrl_info)`).
    pub size: u32,
    /// Model number, NUL-terminated.
    pub model: [c_char; 41],
    /// Serial number, NUL-terminated.
    pub serial: [c_char; 21],
    /// Firmware revision, NUL-terminated.
    pub firmware: [c_char; 9],
    /// PCI vendor id.
    pub vendor_id: u16,
    /// I/O queue pairs the controller granted.
    pub io_queues: u16,
    /// Largest transfer per command, bytes.
    pub max_transfer: u32,
    /// Active namespaces.
    pub namespaces: u32,
}

/// A struct whose first field is the size the caller knows of.
trait Sized32: Copy {
    /// The smallest size any caller can have (the first version's).
    const FIRST: usize;
    fn set_size(&mut self, size: u32);
}

impl Sized32 for nvd_ns_info {
    const FIRST: usize = std::mem::size_of::<nvd_ns_info>();
    fn set_size(&mut self, size: u32) {
        self.size = size;
    }
}

impl Sized32 for nvd_ctrl_info {
    const FIRST: usize = std::mem::size_of::<nvd_ctrl_info>();
    fn set_size(&mut self, size: u32) {
        self.size = size;
    }
}

/// Writes the first `(*out).size` bytes of `value` (all of it if the caller knows more),
/// with `size` set to the bytes written.
///
/// # Safety
///
/// `out` is non-null and valid for reads of its first 4 bytes and for writes of the size
/// it declares there.
unsafe fn write_sized<T: Sized32>(out: *mut T, mut value: T, name: &str) -> Result<(), Failure> {
    // SAFETY: the caller's promise: the first field (u32, at offset 0) is readable.
    let declared = unsafe { out.cast::<u32>().read_unaligned() } as usize;
    if declared < T::FIRST {
        return Err(fail(
            NVD_ERR_INVALID,
            format!(
                "{name}.size is {declared}: set it to sizeof({name}) ({} bytes) before the call",
                T::FIRST
            ),
        ));
    }
    let n = declared.min(std::mem::size_of::<T>());
    value.set_size(n as u32);
    // SAFETY: `out` is valid for `declared >= n` bytes of writes by the caller's promise;
    // `value` is a plain repr(C) struct of at least `n` bytes; the two do not overlap.
    unsafe {
        std::ptr::copy_nonoverlapping((&raw const value).cast::<u8>(), out.cast::<u8>(), n);
    }
    Ok(())
}

fn copy_cstr<const N: usize>(dst: &mut [c_char; N], s: &str) {
    let bytes = s.as_bytes();
    let n = bytes.len().min(N - 1);
    for (d, &b) in dst.iter_mut().zip(&bytes[..n]) {
        *d = b as c_char;
    }
    dst[n] = 0;
}

// ---- errors -------------------------------------------------------------------------------

/// The message of the last failure on the calling thread ("" if none yet).
///
/// The string stays valid until the next failing call on this thread; copy it to keep it.
#[unsafe(no_mangle)]
pub extern "C" fn nvd_last_error() -> *const c_char {
    LAST_ERROR.with(|l| l.borrow().as_ptr())
}

/// A static description of a status code.
#[unsafe(no_mangle)]
pub extern "C" fn nvd_strerror(code: i32) -> *const c_char {
    let s: &'static CStr = match code {
        NVD_OK => c"success",
        NVD_ERR_INVALID => c"invalid argument",
        NVD_ERR_BUSY => c"busy: in use (buffer in flight, queue pair used by another thread, queue pairs still open)",
        NVD_ERR_QUEUE_FULL => c"queue full: poll for completions, then resubmit",
        NVD_ERR_NO_DEVICE => c"no device, or the device is gone",
        NVD_ERR_NO_MEMORY => c"DMA memory allocation failed (reserve hugepages)",
        NVD_ERR_IO => c"the device reported an I/O error",
        NVD_ERR_TIMEOUT => c"timed out",
        NVD_ERR_RANGE => c"LBA range or namespace out of range",
        NVD_ERR_UNSUPPORTED => c"not supported by this controller",
        NVD_ERR_INTERNAL => c"internal error (a bug in nvme-dio, a controller breaking the spec, or the OS refusing)",
        NVD_ERR_ABORTED => c"aborted by a controller reset: resubmit",
        _ => c"unknown status code",
    };
    s.as_ptr()
}

// ---- controller ---------------------------------------------------------------------------

/// Opens and brings up a controller.
///
/// `device` is a PCI address bound to vfio-pci (`"0000:01:00.0"`), or an emulated
/// controller, named as everywhere in nvme-dio: `"emu"` (a null namespace that keeps no
/// data), `"emu:ram"` (one 64 MiB RAM namespace of 4 KiB blocks), either followed by
/// `":thread"` (completions from the emulator's own thread, like hardware) and/or `":512"`
/// (512-byte blocks).
/// On success `*out` holds the controller; close it with `nvd_close`.
///
/// # Safety
///
/// `device` is null or a NUL-terminated string; `out` is null or valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvd_open(device: *const c_char, out: *mut *mut nvd_ctrl) -> i32 {
    guard(|| {
        if device.is_null() || out.is_null() {
            return Err(fail(
                NVD_ERR_INVALID,
                "nvd_open: device and out must not be NULL",
            ));
        }
        // SAFETY: non-null, and the caller promises a NUL-terminated string.
        let device = unsafe { CStr::from_ptr(device) }
            .to_str()
            .map_err(|_| fail(NVD_ERR_INVALID, "device is not UTF-8"))?;
        let spec: DeviceSpec = device
            .parse()
            .map_err(|e: nvme_dio::DeviceSpecError| fail(NVD_ERR_INVALID, e.to_string()))?;
        let dev = Device::open(&spec, None)
            .map_err(|e| fail(NVD_ERR_NO_DEVICE, Report(&e).to_string()))?;
        let opts = dev.default_options();
        let ctrl = Controller::new(Arc::new(dev), opts)?;
        let namespaces = ctrl.namespaces().to_vec();
        let handle = Box::new(nvd_ctrl {
            ctrl,
            namespaces,
            qpairs: Arc::new(AtomicUsize::new(0)),
        });
        // SAFETY: `out` is non-null and the caller promises it is valid for a write.
        unsafe { out.write(Box::into_raw(handle)) };
        Ok(NVD_OK)
    })
}

/// Shuts the controller down and frees it. Destroy its queue pairs first (else
/// `NVD_ERR_BUSY`, and nothing is closed). Buffers may outlive it (free them as usual). A
/// null `ctrl` is a no-op.
///
/// # Safety
///
/// `ctrl` is null or a live controller from `nvd_open`, not used after this returns
/// `NVD_OK`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvd_close(ctrl: *mut nvd_ctrl) -> i32 {
    guard(|| {
        if ctrl.is_null() {
            return Ok(NVD_OK);
        }
        // SAFETY: non-null and live by the caller's promise.
        let c = unsafe { &*ctrl };
        let open = c.qpairs.load(Ordering::Acquire);
        if open > 0 {
            return Err(fail(
                NVD_ERR_BUSY,
                format!("nvd_close: {open} queue pair(s) still open; destroy them first"),
            ));
        }
        // SAFETY: it came from Box::into_raw in nvd_open, and the caller gives it up.
        drop(unsafe { Box::from_raw(ctrl) });
        Ok(NVD_OK)
    })
}

/// Writes what the controller reported about itself into `*out`.
///
/// # Safety
///
/// `ctrl` is null or a live controller; `out` is null or points to an `nvd_ctrl_info` whose
/// `size` is set (the bytes it declares are written).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvd_ctrl_info_get(ctrl: *const nvd_ctrl, out: *mut nvd_ctrl_info) -> i32 {
    guard(|| {
        // SAFETY: null or live, by the caller's promise.
        let c = unsafe { arg(ctrl, "ctrl") }?;
        if out.is_null() {
            return Err(fail(NVD_ERR_INVALID, "out is NULL"));
        }
        let i = c.ctrl.info();
        let mut info = nvd_ctrl_info {
            size: 0,
            model: [0; 41],
            serial: [0; 21],
            firmware: [0; 9],
            vendor_id: i.vid,
            io_queues: i.io_queues,
            max_transfer: i.max_transfer,
            namespaces: c.namespaces.len() as u32,
        };
        copy_cstr(&mut info.model, i.model.trim());
        copy_cstr(&mut info.serial, i.serial.trim());
        copy_cstr(&mut info.firmware, i.firmware.trim());
        // SAFETY: non-null, its size field readable and the declared size writable, by the
        // caller's promise.
        unsafe { write_sized(out, info, "nvd_ctrl_info") }?;
        Ok(NVD_OK)
    })
}

/// The number of active namespaces (>= 0), or a negative error.
///
/// # Safety
///
/// `ctrl` is null or a live controller.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvd_ns_count(ctrl: *const nvd_ctrl) -> i32 {
    guard(|| {
        // SAFETY: null or live, by the caller's promise.
        let c = unsafe { arg(ctrl, "ctrl") }?;
        Ok(c.namespaces.len() as i32)
    })
}

/// Writes the geometry of the `index`-th active namespace (0-based, in NSID order) into
/// `*out`.
///
/// # Safety
///
/// `ctrl` is null or a live controller; `out` is null or points to an `nvd_ns_info` whose
/// `size` is set (the bytes it declares are written).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvd_ns_info_get(
    ctrl: *const nvd_ctrl,
    index: u32,
    out: *mut nvd_ns_info,
) -> i32 {
    guard(|| {
        // SAFETY: null or live, by the caller's promise.
        let c = unsafe { arg(ctrl, "ctrl") }?;
        if out.is_null() {
            return Err(fail(NVD_ERR_INVALID, "out is NULL"));
        }
        let ns = c.namespaces.get(index as usize).ok_or_else(|| {
            fail(
                NVD_ERR_RANGE,
                format!(
                    "namespace index {index}: the controller has {}",
                    c.namespaces.len()
                ),
            )
        })?;
        let info = nvd_ns_info {
            size: 0,
            nsid: ns.id().0,
            block_size: ns.lba_size(),
            blocks: ns.blocks(),
            max_transfer: ns.max_transfer(),
            volatile_write_cache: ns.has_volatile_write_cache() as u32,
        };
        // SAFETY: non-null, its size field readable and the declared size writable, by the
        // caller's promise.
        unsafe { write_sized(out, info, "nvd_ns_info") }?;
        Ok(NVD_OK)
    })
}

// ---- buffers ------------------------------------------------------------------------------

fn owner_id(ctrl: &Controller<Device>) -> usize {
    Arc::as_ptr(ctrl.device()) as usize
}

/// Allocates a zeroed DMA buffer of `len` bytes (page aligned) from the controller's memory.
///
/// # Safety
///
/// `ctrl` is null or a live controller; `out` is null or valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvd_buf_alloc(
    ctrl: *const nvd_ctrl,
    len: usize,
    out: *mut *mut nvd_buf,
) -> i32 {
    guard(|| {
        // SAFETY: null or live, by the caller's promise.
        let c = unsafe { arg(ctrl, "ctrl") }?;
        if out.is_null() {
            return Err(fail(NVD_ERR_INVALID, "out is NULL"));
        }
        if len == 0 {
            return Err(fail(NVD_ERR_INVALID, "nvd_buf_alloc: len is 0"));
        }
        let page = c.ctrl.info().page_size.bytes();
        let buf = c.ctrl.memory().alloc(len, page).map_err(Error::from)?;
        let handle = Box::new(nvd_buf {
            owner: owner_id(&c.ctrl),
            len,
            buf: Mutex::new(Some(buf)),
        });
        // SAFETY: non-null and valid for a write by the caller's promise.
        unsafe { out.write(Box::into_raw(handle)) };
        Ok(NVD_OK)
    })
}

/// Frees a buffer. `NVD_ERR_BUSY` (and nothing freed) while a request owns it. Null is a
/// no-op.
///
/// # Safety
///
/// `buf` is null or a live buffer from `nvd_buf_alloc`, not used after this returns `NVD_OK`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvd_buf_free(buf: *mut nvd_buf) -> i32 {
    guard(|| {
        if buf.is_null() {
            return Ok(NVD_OK);
        }
        // SAFETY: non-null and live by the caller's promise.
        let b = unsafe { &*buf };
        if lock(&b.buf).is_none() {
            return Err(fail(
                NVD_ERR_BUSY,
                "nvd_buf_free: the buffer is in flight (wait for its callback), or its callback \
                 said it is held because the device may still write it: then it is never \
                 freed",
            ));
        }
        // SAFETY: it came from Box::into_raw in nvd_buf_alloc; no request holds it (checked
        // above), and the caller gives it up.
        drop(unsafe { Box::from_raw(buf) });
        Ok(NVD_OK)
    })
}

/// Memory the caller owns, registered for DMA with `nvd_mem_register` (opaque).
#[derive(Debug)]
pub struct nvd_mem {
    /// The controller it is mapped for (buffers of it are that controller's).
    owner: usize,
    /// `None` once unregistered (the handle is freed then).
    reg: Mutex<Option<nvme_dio::Registration>>,
}

/// Registers `len` bytes at `addr`, memory the caller owns (an anonymous or hugetlbfs
/// mapping, a memfd mapping), for DMA by `ctrl`'s device, so I/O goes to and from it in
/// place: `nvd_mem_buf` makes buffers over parts of it. `addr` and `len` must be multiples
/// of 4096. On success `*out` holds the registration; end it with `nvd_mem_unregister`.
///
/// `NVD_ERR_INVALID` for unaligned or empty memory, or memory overlapping another
/// registration; `NVD_ERR_NO_MEMORY` when the IOMMU refuses (the message names the limit: the
/// locked-memory limit `ulimit -l`, or VFIO's mapping count `dma_entry_limit`).
///
/// # Safety
///
/// `ctrl` is null or a live controller; `out` is null or valid for a write. The memory
/// `addr..addr+len` must stay mapped, and must not be reused for anything the device must
/// not see, until `nvd_mem_unregister` returns `NVD_OK`; while a request with a buffer of
/// it is in flight the device reads or writes those bytes at any time.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvd_mem_register(
    ctrl: *const nvd_ctrl,
    addr: *mut c_void,
    len: usize,
    out: *mut *mut nvd_mem,
) -> i32 {
    guard(|| {
        // SAFETY: null or live, by the caller's promise.
        let c = unsafe { arg(ctrl, "ctrl") }?;
        if out.is_null() || addr.is_null() {
            return Err(fail(
                NVD_ERR_INVALID,
                "nvd_mem_register: addr or out is NULL",
            ));
        }
        // SAFETY: the caller keeps `addr..addr+len` alive and unused by others until
        // nvd_mem_unregister succeeds (this function's contract, which is register_raw's).
        let reg = unsafe { c.ctrl.memory().register_raw(addr.cast(), len) }.map_err(Error::from)?;
        let handle = Box::new(nvd_mem {
            owner: owner_id(&c.ctrl),
            reg: Mutex::new(Some(reg)),
        });
        // SAFETY: non-null and valid for a write by the caller's promise.
        unsafe { out.write(Box::into_raw(handle)) };
        Ok(NVD_OK)
    })
}

/// A buffer over exactly bytes `offset..offset+len` of registered memory, holding what
/// they hold (nothing is copied or zeroed): use it with `nvd_read` / `nvd_write` like any
/// buffer, read and write the bytes in place through your own pointer while no request
/// holds it, and free it with `nvd_buf_free`. `NVD_ERR_INVALID` if the bytes are outside
/// the registration or in another live buffer of it.
///
/// # Safety
///
/// `mem` is null or a live registration; `out` is null or valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvd_mem_buf(
    mem: *const nvd_mem,
    offset: usize,
    len: usize,
    out: *mut *mut nvd_buf,
) -> i32 {
    guard(|| {
        // SAFETY: null or live, by the caller's promise.
        let m = unsafe { arg(mem, "mem") }?;
        if out.is_null() {
            return Err(fail(NVD_ERR_INVALID, "out is NULL"));
        }
        let guard = lock(&m.reg);
        let reg = guard
            .as_ref()
            .ok_or_else(|| fail(NVD_ERR_INVALID, "nvd_mem_buf: unregistered"))?;
        let buf = reg.buf(offset, len).map_err(Error::from)?;
        let handle = Box::new(nvd_buf {
            owner: m.owner,
            len,
            buf: Mutex::new(Some(buf)),
        });
        // SAFETY: non-null and valid for a write by the caller's promise.
        unsafe { out.write(Box::into_raw(handle)) };
        Ok(NVD_OK)
    })
}

/// Ends a registration: the device loses access, then the handle is freed and the memory
/// is the caller's alone again (free or unmap it after this returns `NVD_OK`).
/// `NVD_ERR_BUSY`, and nothing changes, while any buffer of it exists: free them first
/// (a buffer in flight comes back with its callback; one the callback said is held, because
/// the device may still write it, keeps the memory registered for good). Null is a no-op.
///
/// # Safety
///
/// `mem` is null or a live registration, not used after this returns `NVD_OK`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvd_mem_unregister(mem: *mut nvd_mem) -> i32 {
    guard(|| {
        if mem.is_null() {
            return Ok(NVD_OK);
        }
        // SAFETY: non-null and live by the caller's promise.
        let m = unsafe { &*mem };
        let mut slot = lock(&m.reg);
        let Some(reg) = slot.take() else {
            return Err(fail(
                NVD_ERR_INVALID,
                "nvd_mem_unregister: already unregistered",
            ));
        };
        match reg.unregister() {
            Ok(_) => {}
            Err((reg, e)) => {
                *slot = Some(reg);
                let code = if matches!(e, nvme_dio::DmaError::RegistrationBusy { .. }) {
                    NVD_ERR_BUSY
                } else {
                    NVD_ERR_NO_MEMORY
                };
                return Err(fail(code, format!("nvd_mem_unregister: {e}")));
            }
        }
        drop(slot);
        // SAFETY: it came from Box::into_raw in nvd_mem_register; the registration is gone
        // and the caller gives the handle up.
        drop(unsafe { Box::from_raw(mem) });
        Ok(NVD_OK)
    })
}

/// The buffer's length in bytes (0 for a null buffer).
///
/// # Safety
///
/// `buf` is null or a live buffer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvd_buf_len(buf: *const nvd_buf) -> usize {
    // SAFETY: null or live, by the caller's promise.
    unsafe { buf.as_ref() }.map_or(0, |b| b.len)
}

/// Runs `f` on the buffer's memory if no request owns it.
///
/// # Safety
///
/// `buf` is null or a live buffer.
unsafe fn with_buf<R>(
    buf: *const nvd_buf,
    f: impl FnOnce(&DmaBuf) -> Result<R, Failure>,
) -> Result<R, Failure> {
    // SAFETY: null or live, by the caller's promise.
    let b = unsafe { arg(buf, "buf") }?;
    let g = lock(&b.buf);
    let d = g.as_ref().ok_or_else(|| {
        fail(
            NVD_ERR_BUSY,
            "the buffer is in flight; wait for its callback",
        )
    })?;
    f(d)
}

/// Copies `len` bytes from `src` into the buffer at `offset`.
///
/// # Safety
///
/// `buf` is null or a live buffer; `src` is null or valid for reads of `len` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvd_buf_write(
    buf: *mut nvd_buf,
    offset: usize,
    src: *const c_void,
    len: usize,
) -> i32 {
    guard(|| {
        if src.is_null() && len > 0 {
            return Err(fail(NVD_ERR_INVALID, "src is NULL"));
        }
        let src: &[u8] = if len == 0 {
            &[]
        } else {
            // SAFETY: non-null, and the caller promises `len` readable bytes that do not
            // alias device memory (we hand out no pointer into it).
            unsafe { std::slice::from_raw_parts(src.cast::<u8>(), len) }
        };
        // SAFETY: null or live, by the caller's promise.
        unsafe {
            with_buf(buf, |d| {
                d.copy_from_slice(offset, src)
                    .map_err(|e| fail(NVD_ERR_INVALID, e.to_string()))
            })
        }?;
        Ok(NVD_OK)
    })
}

/// Copies `len` bytes of the buffer at `offset` into `dst`.
///
/// # Safety
///
/// `buf` is null or a live buffer; `dst` is null or valid for writes of `len` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvd_buf_read(
    buf: *const nvd_buf,
    offset: usize,
    dst: *mut c_void,
    len: usize,
) -> i32 {
    guard(|| {
        if dst.is_null() && len > 0 {
            return Err(fail(NVD_ERR_INVALID, "dst is NULL"));
        }
        let dst: &mut [u8] = if len == 0 {
            &mut []
        } else {
            // SAFETY: non-null, and the caller promises `len` writable bytes, not aliased
            // during the call.
            unsafe { std::slice::from_raw_parts_mut(dst.cast::<u8>(), len) }
        };
        // SAFETY: null or live, by the caller's promise.
        unsafe {
            with_buf(buf, |d| {
                d.copy_to_slice(offset, dst)
                    .map_err(|e| fail(NVD_ERR_INVALID, e.to_string()))
            })
        }?;
        Ok(NVD_OK)
    })
}

/// Sets every byte of the buffer to `byte`.
///
/// # Safety
///
/// `buf` is null or a live buffer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvd_buf_fill(buf: *mut nvd_buf, byte: u8) -> i32 {
    guard(|| {
        // SAFETY: null or live, by the caller's promise.
        unsafe {
            with_buf(buf, |d| {
                d.fill(byte);
                Ok(())
            })
        }?;
        Ok(NVD_OK)
    })
}

// ---- queue pairs ----------------------------------------------------------------------------

/// Creates an I/O queue pair of `entries` slots (0: the default, 256), in poll mode, or in
/// interrupt mode with `NVD_QPAIR_INTERRUPT` in `flags`.
///
/// # Safety
///
/// `ctrl` is null or a live controller; `out` is null or valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvd_qpair_create(
    ctrl: *const nvd_ctrl,
    entries: u32,
    flags: u32,
    out: *mut *mut nvd_qpair,
) -> i32 {
    guard(|| {
        // SAFETY: null or live, by the caller's promise.
        let c = unsafe { arg(ctrl, "ctrl") }?;
        if out.is_null() {
            return Err(fail(NVD_ERR_INVALID, "out is NULL"));
        }
        if flags & !NVD_QPAIR_INTERRUPT != 0 {
            return Err(fail(
                NVD_ERR_INVALID,
                format!("unknown queue pair flags {flags:#x}"),
            ));
        }
        let mut opts = QueuePairOptions::default();
        if entries != 0 {
            opts.entries = entries;
        }
        if flags & NVD_QPAIR_INTERRUPT != 0 {
            opts.mode = CompletionMode::Interrupt;
        }
        let qp = c.ctrl.create_io_qpair(opts)?;
        c.qpairs.fetch_add(1, Ordering::AcqRel);
        let handle = Box::new(nvd_qpair {
            ctrl: c.ctrl.clone(),
            namespaces: c.namespaces.clone(),
            qpairs: Arc::clone(&c.qpairs),
            inner: Mutex::new(QpInner {
                qp,
                next_tag: 0,
                pending: HashMap::new(),
                done: Vec::new(),
            }),
            delivering: AtomicUsize::new(0),
        });
        // SAFETY: non-null and valid for a write by the caller's promise.
        unsafe { out.write(Box::into_raw(handle)) };
        Ok(NVD_OK)
    })
}

/// Destroys a queue pair. Requests still in flight are abandoned: their callbacks never run
/// and their buffers stay owned by the library (leaked, since the device may still write
/// them) — so wait for every callback first. `NVD_ERR_BUSY` from inside one of its own
/// callbacks, or while another thread uses it. Null is a no-op.
///
/// # Safety
///
/// `qp` is null or a live queue pair, not used after this returns `NVD_OK`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvd_qpair_destroy(qp: *mut nvd_qpair) -> i32 {
    guard(|| {
        if qp.is_null() {
            return Ok(NVD_OK);
        }
        // SAFETY: non-null and live by the caller's promise.
        let q = unsafe { &*qp };
        // Checked while holding the lock: a delivery loop raises `delivering` before it
        // lets the lock go, so no loop can be running callbacks unseen.
        let guard = match q.inner.try_lock() {
            Ok(g) => g,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => {
                return Err(fail(
                    NVD_ERR_BUSY,
                    "the queue pair is in use by another thread",
                ));
            }
        };
        if q.delivering.load(Ordering::Acquire) != 0 {
            return Err(fail(
                NVD_ERR_BUSY,
                "nvd_qpair_destroy while the queue pair's callbacks run (from a callback, or \
                 a callback's nested nvd_poll): destroy it after nvd_poll returns",
            ));
        }
        drop(guard);
        // SAFETY: it came from Box::into_raw in nvd_qpair_create; the caller gives it up.
        let q = unsafe { Box::from_raw(qp) };
        let inner = q.inner.into_inner().unwrap_or_else(|p| p.into_inner());
        // Handles of buffers still in flight stay marked busy: their memory goes down with
        // the queue pair (the driver leaks it if the controller may still write it).
        drop(inner);
        q.qpairs.fetch_sub(1, Ordering::AcqRel);
        Ok(NVD_OK)
    })
}

/// Locks the queue pair for this call, or `NVD_ERR_BUSY` if another thread is in it.
fn enter(q: &nvd_qpair) -> Result<std::sync::MutexGuard<'_, QpInner>, Failure> {
    match q.inner.try_lock() {
        Ok(g) => Ok(g),
        Err(TryLockError::Poisoned(p)) => Ok(p.into_inner()),
        Err(TryLockError::WouldBlock) => Err(fail(
            NVD_ERR_BUSY,
            "the queue pair is in use by another thread (one thread per queue pair)",
        )),
    }
}

fn namespace(q: &nvd_qpair, nsid: u32) -> Result<&Namespace, Failure> {
    q.namespaces
        .iter()
        .find(|n| n.id().0 == nsid)
        .ok_or_else(|| {
            let active: Vec<u32> = q.namespaces.iter().map(|n| n.id().0).collect();
            fail(
                NVD_ERR_RANGE,
                format!("namespace {nsid} does not exist (active: {active:?})"),
            )
        })
}

/// Takes the DMA buffers out of the handles for a request; on failure puts back what was
/// taken.
///
/// # Safety
///
/// `bufs` is valid for reads of `count` pointers, each null or a live buffer.
unsafe fn take_bufs(
    owner: usize,
    bufs: *const *const nvd_buf,
    count: usize,
) -> Result<(Vec<*const nvd_buf>, Vec<DmaBuf>), Failure> {
    if bufs.is_null() || count == 0 {
        return Err(fail(NVD_ERR_INVALID, "bufs is NULL or count is 0"));
    }
    // SAFETY: non-null; the caller promises `count` readable pointers.
    let handles = unsafe { std::slice::from_raw_parts(bufs, count) }.to_vec();
    let mut taken: Vec<DmaBuf> = Vec::with_capacity(count);
    let mut error = None;
    for (i, &h) in handles.iter().enumerate() {
        // SAFETY: each is null or live, by the caller's promise.
        let Some(b) = (unsafe { h.as_ref() }) else {
            error = Some(fail(NVD_ERR_INVALID, format!("bufs[{i}] is NULL")));
            break;
        };
        if b.owner != owner {
            error = Some(fail(
                NVD_ERR_INVALID,
                format!("bufs[{i}] belongs to another controller"),
            ));
            break;
        }
        match lock(&b.buf).take() {
            Some(d) => taken.push(d),
            None => {
                error = Some(fail(
                    NVD_ERR_BUSY,
                    format!("bufs[{i}] is in flight (or listed twice); wait for its callback"),
                ));
                break;
            }
        }
    }
    if let Some(e) = error {
        // SAFETY: the first `taken.len()` handles were checked live above.
        unsafe { give_back(&handles[..taken.len()], taken) };
        return Err(e);
    }
    Ok((handles, taken))
}

/// Puts buffers back into their handles, in order.
///
/// # Safety
///
/// Every handle is live (a handle cannot be freed while its buffer is out).
unsafe fn give_back(handles: &[*const nvd_buf], bufs: Vec<DmaBuf>) {
    for (&h, d) in handles.iter().zip(bufs) {
        // SAFETY: live by the caller's promise.
        let b = unsafe { &*h };
        *lock(&b.buf) = Some(d);
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Rw {
    Read,
    Write,
    WriteFua,
}

/// The common path of readv/writev.
///
/// # Safety
///
/// As `nvd_readv`.
#[allow(clippy::too_many_arguments)]
unsafe fn submit_rw(
    qp: *mut nvd_qpair,
    nsid: u32,
    lba: u64,
    bufs: *const *const nvd_buf,
    count: usize,
    op: Rw,
    cb: nvd_callback,
    ctx: *mut c_void,
) -> Result<i32, Failure> {
    // SAFETY: null or live, by the caller's promise.
    let q = unsafe { arg(qp.cast_const(), "qp") }?;
    if cb.is_none() {
        return Err(fail(NVD_ERR_INVALID, "cb is NULL"));
    }
    let ns = namespace(q, nsid)?;
    let mut inner = enter(q)?;
    // SAFETY: `bufs` per the caller's promise.
    let (handles, taken) = unsafe { take_bufs(owner_id(&q.ctrl), bufs, count) }?;
    let tag = inner.next_tag;
    let inner = &mut *inner;
    let r = match (op, taken.len()) {
        (Rw::Read, 1) => inner
            .qp
            .read(ns, Lba(lba), taken.into_iter().next().expect("one"), tag),
        (Rw::Read, _) => inner.qp.readv(ns, Lba(lba), taken, tag),
        (Rw::Write, 1) => inner
            .qp
            .write(ns, Lba(lba), taken.into_iter().next().expect("one"), tag),
        (Rw::Write, _) => inner.qp.writev(ns, Lba(lba), taken, tag),
        (Rw::WriteFua, 1) => {
            inner
                .qp
                .write_fua(ns, Lba(lba), taken.into_iter().next().expect("one"), tag)
        }
        (Rw::WriteFua, _) => inner.qp.writev_fua(ns, Lba(lba), taken, tag),
    };
    match r {
        Ok(()) => {
            inner.next_tag += 1;
            inner.pending.insert(
                tag,
                Pending {
                    cb,
                    ctx,
                    bufs: handles,
                },
            );
            Ok(NVD_OK)
        }
        Err(rej) => {
            let Rejected { error, bufs } = rej;
            // SAFETY: the handles were checked live by take_bufs.
            unsafe { give_back(&handles, bufs.into_vec()) };
            Err(Failure::from(*error))
        }
    }
}

/// Queues a read of the blocks starting at `lba` into `count` buffers, in order (their
/// total length a multiple of the block size). Returns at once; `cb(ctx, ...)` runs from
/// `nvd_poll` / `nvd_wait` when it is done. The buffers belong to the request until then.
///
/// # Safety
///
/// `qp` is null or a live queue pair; `bufs` is null or valid for reads of `count` pointers,
/// each null or a live buffer; `ctx` is passed through untouched.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvd_readv(
    qp: *mut nvd_qpair,
    nsid: u32,
    lba: u64,
    bufs: *const *const nvd_buf,
    count: usize,
    cb: nvd_callback,
    ctx: *mut c_void,
) -> i32 {
    // SAFETY: the caller's promises are nvd_readv's, which submit_rw requires.
    guard(|| unsafe { submit_rw(qp, nsid, lba, bufs, count, Rw::Read, cb, ctx) })
}

/// Queues a write of `count` buffers, in order, to the blocks starting at `lba`. With
/// `NVD_WRITE_FUA` in `flags` the data is durable when the callback runs; without it, call
/// `nvd_flush` for durability (if the namespace has a volatile write cache).
///
/// # Safety
///
/// As `nvd_readv`.
#[unsafe(no_mangle)]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn nvd_writev(
    qp: *mut nvd_qpair,
    nsid: u32,
    lba: u64,
    bufs: *const *const nvd_buf,
    count: usize,
    flags: u32,
    cb: nvd_callback,
    ctx: *mut c_void,
) -> i32 {
    guard(|| {
        if flags & !NVD_WRITE_FUA != 0 {
            return Err(fail(
                NVD_ERR_INVALID,
                format!("unknown write flags {flags:#x}"),
            ));
        }
        let op = if flags & NVD_WRITE_FUA != 0 {
            Rw::WriteFua
        } else {
            Rw::Write
        };
        // SAFETY: the caller's promises are nvd_writev's, which submit_rw requires.
        unsafe { submit_rw(qp, nsid, lba, bufs, count, op, cb, ctx) }
    })
}

/// Queues a flush of the namespace's volatile write cache: writes completed before it are
/// durable when its callback runs.
///
/// # Safety
///
/// `qp` is null or a live queue pair; `ctx` is passed through untouched.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvd_flush(
    qp: *mut nvd_qpair,
    nsid: u32,
    cb: nvd_callback,
    ctx: *mut c_void,
) -> i32 {
    guard(|| {
        // SAFETY: null or live, by the caller's promise.
        let q = unsafe { arg(qp.cast_const(), "qp") }?;
        if cb.is_none() {
            return Err(fail(NVD_ERR_INVALID, "cb is NULL"));
        }
        let ns = namespace(q, nsid)?;
        let mut inner = enter(q)?;
        let tag = inner.next_tag;
        inner.qp.flush(ns, tag)?;
        inner.next_tag += 1;
        inner.pending.insert(
            tag,
            Pending {
                cb,
                ctx,
                bufs: Vec::new(),
            },
        );
        Ok(NVD_OK)
    })
}

/// Hands a completion's buffers back and turns it into a callback to run.
fn settle(inner: &mut QpInner, c: Completion) {
    let Some(p) = inner.pending.remove(&c.tag) else {
        return;
    };
    let bufs = match c.bufs {
        Bufs::None => Vec::new(),
        b => b.into_vec(),
    };
    // SAFETY: a handle cannot be freed while its buffer is out (nvd_buf_free refuses), so
    // every handle of a pending request is live.
    unsafe { give_back(&p.bufs, bufs) };
    let (status, nvme_status, msg) = match &c.result {
        Ok(()) => (NVD_OK, 0, None),
        Err(e) => {
            let st = e
                .status()
                .map_or(0, |s| ((s.sct() as u16) << 8) | s.sc() as u16);
            (code_of(e), st, Some(e.report()))
        }
    };
    inner.done.push(Delivery {
        cb: p.cb,
        ctx: p.ctx,
        status,
        nvme_status,
        msg,
    });
}

/// Lowers a delivery depth counter when dropped.
struct Lower<'a>(&'a AtomicUsize);

impl Drop for Lower<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Reaps with the queue pair locked, then runs the callbacks unlocked (a callback may submit
/// on the same queue pair).
fn deliver(q: &nvd_qpair, wait: Option<Duration>) -> Result<i32, Failure> {
    let mut done = {
        let mut inner = enter(q)?;
        match wait {
            Some(t) => {
                inner.qp.wait(t)?;
            }
            None => {
                inner.qp.poll();
            }
        }
        while let Some(c) = inner.qp.next_completion() {
            settle(&mut inner, c);
        }
        // Raised before the lock goes (see `nvd_qpair::delivering`).
        q.delivering.fetch_add(1, Ordering::AcqRel);
        std::mem::take(&mut inner.done)
    };
    let n = done.len() as i32;
    // Lowered when the loop ends, also if a callback panics (caught at the boundary).
    let lower = Lower(&q.delivering);
    for d in done.drain(..) {
        if let Some(m) = &d.msg {
            set_last_error(m);
        }
        if let Some(cb) = d.cb {
            // SAFETY: the C caller registered this function for this context.
            unsafe { cb(d.ctx, d.status, d.nvme_status) };
        }
    }
    drop(lower);
    // Give the (now empty) vector back for reuse, if nobody is in the queue pair.
    if let Ok(mut inner) = q.inner.try_lock()
        && inner.done.capacity() < done.capacity()
    {
        inner.done = done;
    }
    Ok(n)
}

/// Writes the doorbell for everything queued, reaps finished requests and runs their
/// callbacks. Returns how many callbacks ran (>= 0), or a negative error.
///
/// # Safety
///
/// `qp` is null or a live queue pair.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvd_poll(qp: *mut nvd_qpair) -> i32 {
    guard(|| {
        // SAFETY: null or live, by the caller's promise.
        let q = unsafe { arg(qp.cast_const(), "qp") }?;
        deliver(q, None)
    })
}

/// Like `nvd_poll`, but first waits up to `timeout_ms` for at least one request to finish
/// (sleeping on the interrupt in interrupt mode, spinning in poll mode). Returns how many
/// callbacks ran; 0 means the timeout passed with nothing finished.
///
/// # Safety
///
/// `qp` is null or a live queue pair.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvd_wait(qp: *mut nvd_qpair, timeout_ms: u32) -> i32 {
    guard(|| {
        // SAFETY: null or live, by the caller's promise.
        let q = unsafe { arg(qp.cast_const(), "qp") }?;
        deliver(q, Some(Duration::from_millis(timeout_ms as u64)))
    })
}

/// Requests submitted and not yet delivered to a callback (>= 0), or a negative error.
///
/// # Safety
///
/// `qp` is null or a live queue pair.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvd_qpair_outstanding(qp: *const nvd_qpair) -> i32 {
    guard(|| {
        // SAFETY: null or live, by the caller's promise.
        let q = unsafe { arg(qp, "qp") }?;
        let inner = enter(q)?;
        Ok(inner.pending.len() as i32)
    })
}

#[cfg(test)]
mod tests;
