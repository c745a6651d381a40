//! Zero-copy I/O for engines that own their buffer layout (the fio ioengine in `fio/`).
//!
//! fio allocates one buffer area per job through its engine (`iomem_alloc`) and points each
//! I/O into it (`io_u->xfer_buf`); many I/Os are in flight at once, each on its own part of
//! the area. [`nvd_area`] is that area in DMA memory: [`nvd_area_ptr`] hands out its host
//! address, and [`nvd_area_read`] / [`nvd_area_write`] move `offset..offset+len` of it to or
//! from the device with no copy.
//!
//! This is the one place the C ABI hands out a pointer into device-visible memory. The
//! contract, which the library cannot check for the caller:
//! - the pointer is valid until `nvd_area_free` (which refuses, `NVD_ERR_BUSY`, while any
//!   request on the area is in flight);
//! - the caller touches the bytes of a request only after its callback ran;
//! - two requests in flight at once never share bytes of the area.
//!
//! The library counts the requests in flight on each area, so freeing one under the device
//! is refused rather than done.

use std::ffi::c_void;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use nvme_dio::{DmaBuf, Error, Lba, Rejected};

use crate::{
    Failure, NVD_ERR_BUSY, NVD_ERR_INVALID, NVD_OK, NVD_WRITE_FUA, Pending, arg, enter, fail,
    guard, lock, namespace, nvd_callback, nvd_ctrl, nvd_qpair, owner_id,
};

/// A DMA buffer area whose memory the caller reads and writes in place, and whose parts go
/// to the device as separate requests (opaque). See `nvd_area_ptr` for the contract.
#[derive(Debug)]
pub struct nvd_area {
    /// The controller it belongs to (its IOVA means nothing to another one).
    owner: usize,
    len: usize,
    ptr: *mut u8,
    /// Requests in flight on parts of this area: `nvd_area_free` refuses while non-zero.
    inflight: AtomicUsize,
    /// The allocation; parts of it go to requests as aliases (`DmaBuf::alias`).
    buf: Mutex<DmaBuf>,
}

// SAFETY: `ptr` is only handed out, never dereferenced here; the DmaBuf is behind a Mutex.
unsafe impl Send for nvd_area {}
// SAFETY: as above: every shared access goes through the Mutex or an atomic.
unsafe impl Sync for nvd_area {}

/// What runs when a request on an area finishes: the area's count goes down, then the
/// caller's callback runs.
struct AreaReq {
    area: *const nvd_area,
    cb: nvd_callback,
    ctx: *mut c_void,
}

unsafe extern "C" fn area_done(ctx: *mut c_void, status: i32, nvme_status: u16) {
    // SAFETY: `ctx` is the Box<AreaReq> leaked by `submit_area` for this request, delivered
    // exactly once.
    let req = unsafe { Box::from_raw(ctx.cast::<AreaReq>()) };
    // SAFETY: the area cannot be freed while this request counts in `inflight`.
    unsafe { &*req.area }
        .inflight
        .fetch_sub(1, Ordering::AcqRel);
    if let Some(cb) = req.cb {
        // SAFETY: the C caller registered this function for this context.
        unsafe { cb(req.ctx, status, nvme_status) };
    }
}

/// Allocates a zeroed DMA area of `len` bytes (page aligned) for in-place use (see
/// `nvd_area_ptr`).
///
/// # Safety
///
/// `ctrl` is null or a live controller; `out` is null or valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvd_area_alloc(
    ctrl: *const nvd_ctrl,
    len: usize,
    out: *mut *mut nvd_area,
) -> i32 {
    guard(|| {
        // SAFETY: null or live, by the caller's promise.
        let c = unsafe { arg(ctrl, "ctrl") }?;
        if out.is_null() {
            return Err(fail(NVD_ERR_INVALID, "out is NULL"));
        }
        if len == 0 {
            return Err(fail(NVD_ERR_INVALID, "nvd_area_alloc: len is 0"));
        }
        let page = c.ctrl.info().page_size.bytes();
        let buf = c.ctrl.memory().alloc(len, page).map_err(Error::from)?;
        let handle = Box::new(nvd_area {
            owner: owner_id(&c.ctrl),
            len,
            ptr: buf.as_ptr(),
            inflight: AtomicUsize::new(0),
            buf: Mutex::new(buf),
        });
        // SAFETY: non-null and valid for a write by the caller's promise.
        unsafe { out.write(Box::into_raw(handle)) };
        Ok(NVD_OK)
    })
}

/// The host address of the area's first byte (NULL for a null area).
///
/// The caller may read and write the area through it, with three rules the library cannot
/// check: the pointer is valid until `nvd_area_free`; the bytes of a request in flight
/// (`nvd_area_read` / `nvd_area_write`) are the device's until its callback runs; two
/// requests in flight at once never share bytes.
///
/// # Safety
///
/// `area` is null or a live area.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvd_area_ptr(area: *const nvd_area) -> *mut c_void {
    // SAFETY: null or live, by the caller's promise.
    unsafe { area.as_ref() }.map_or(std::ptr::null_mut(), |a| a.ptr.cast())
}

/// The area's length in bytes (0 for a null area).
///
/// # Safety
///
/// `area` is null or a live area.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvd_area_len(area: *const nvd_area) -> usize {
    // SAFETY: null or live, by the caller's promise.
    unsafe { area.as_ref() }.map_or(0, |a| a.len)
}

/// Frees an area. `NVD_ERR_BUSY` (and nothing freed) while a request on it is in flight
/// (also forever after its queue pair was destroyed with that request in flight: the device
/// may still write it). Null is a no-op.
///
/// # Safety
///
/// `area` is null or a live area, not used (nor its pointer) after this returns `NVD_OK`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvd_area_free(area: *mut nvd_area) -> i32 {
    guard(|| {
        if area.is_null() {
            return Ok(NVD_OK);
        }
        // SAFETY: non-null and live by the caller's promise.
        let a = unsafe { &*area };
        let n = a.inflight.load(Ordering::Acquire);
        if n > 0 {
            return Err(fail(
                NVD_ERR_BUSY,
                format!("nvd_area_free: {n} request(s) in flight on the area; wait for them"),
            ));
        }
        // SAFETY: it came from Box::into_raw in nvd_area_alloc; nothing is in flight on it
        // (so no alias of its memory exists), and the caller gives it up.
        drop(unsafe { Box::from_raw(area) });
        Ok(NVD_OK)
    })
}

#[derive(Clone, Copy)]
enum Op {
    Read,
    Write { fua: bool },
}

/// The common path of nvd_area_read / nvd_area_write.
///
/// # Safety
///
/// As `nvd_area_read`.
#[allow(clippy::too_many_arguments)]
unsafe fn submit_area(
    qp: *mut nvd_qpair,
    nsid: u32,
    lba: u64,
    area: *const nvd_area,
    offset: usize,
    len: usize,
    op: Op,
    cb: nvd_callback,
    ctx: *mut c_void,
) -> Result<i32, Failure> {
    // SAFETY: null or live, by the caller's promise.
    let q = unsafe { arg(qp.cast_const(), "qp") }?;
    // SAFETY: null or live, by the caller's promise.
    let a = unsafe { arg(area, "area") }?;
    if cb.is_none() {
        return Err(fail(NVD_ERR_INVALID, "cb is NULL"));
    }
    if a.owner != owner_id(&q.ctrl) {
        return Err(fail(
            NVD_ERR_INVALID,
            "the area belongs to another controller",
        ));
    }
    let ns = namespace(q, nsid)?;
    // SAFETY: the area outlives the alias: it cannot be freed while `inflight` counts this
    // request (incremented below before the request can complete, decremented by
    // area_done). Disjointness of requests in flight is the caller's promise.
    let part = unsafe { lock(&a.buf).alias(offset, len) }
        .map_err(|e| fail(NVD_ERR_INVALID, format!("area range: {e}")))?;
    let mut inner = enter(q)?;
    let tag = inner.next_tag;
    let r = match op {
        Op::Read => inner.qp.read(ns, Lba(lba), part, tag),
        Op::Write { fua: false } => inner.qp.write(ns, Lba(lba), part, tag),
        Op::Write { fua: true } => inner.qp.write_fua(ns, Lba(lba), part, tag),
    };
    match r {
        Ok(()) => {
            a.inflight.fetch_add(1, Ordering::AcqRel);
            let req = Box::new(AreaReq { area, cb, ctx });
            inner.next_tag += 1;
            inner.pending.insert(
                tag,
                Pending {
                    cb: Some(area_done),
                    ctx: Box::into_raw(req).cast(),
                    // The alias comes back in the completion and is dropped there (it frees
                    // nothing): no handle to give it back to.
                    bufs: Vec::new(),
                },
            );
            Ok(NVD_OK)
        }
        Err(Rejected { error, .. }) => Err(Failure::from(*error)),
    }
}

/// Queues a read of the blocks starting at `lba` into `offset..offset+len` of `area` (`len`
/// a multiple of the block size). Returns at once; `cb(ctx, ...)` runs from `nvd_poll` /
/// `nvd_wait` when it is done; until then the bytes are the device's.
///
/// # Safety
///
/// `qp` is null or a live queue pair; `area` is null or a live area of the same
/// controller; no other request in flight uses these bytes; `ctx` is passed through.
#[unsafe(no_mangle)]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn nvd_area_read(
    qp: *mut nvd_qpair,
    nsid: u32,
    lba: u64,
    area: *const nvd_area,
    offset: usize,
    len: usize,
    cb: nvd_callback,
    ctx: *mut c_void,
) -> i32 {
    // SAFETY: the caller's promises are the ones submit_area requires.
    guard(|| unsafe { submit_area(qp, nsid, lba, area, offset, len, Op::Read, cb, ctx) })
}

/// Queues a write of `offset..offset+len` of `area` to the blocks starting at `lba`;
/// `NVD_WRITE_FUA` in `flags` as for `nvd_writev`.
///
/// # Safety
///
/// As `nvd_area_read`.
#[unsafe(no_mangle)]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn nvd_area_write(
    qp: *mut nvd_qpair,
    nsid: u32,
    lba: u64,
    area: *const nvd_area,
    offset: usize,
    len: usize,
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
        let op = Op::Write {
            fua: flags & NVD_WRITE_FUA != 0,
        };
        // SAFETY: the caller's promises are the ones submit_area requires.
        unsafe { submit_area(qp, nsid, lba, area, offset, len, op, cb, ctx) }
    })
}

/// Queues a deallocate (trim, Dataset Management) of `blocks` blocks starting at `lba`.
/// `NVD_ERR_UNSUPPORTED` if the controller has no Dataset Management.
///
/// # Safety
///
/// `qp` is null or a live queue pair; `ctx` is passed through untouched.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvd_deallocate(
    qp: *mut nvd_qpair,
    nsid: u32,
    lba: u64,
    blocks: u32,
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
        inner.qp.deallocate(ns, &[(Lba(lba), blocks)], tag)?;
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

#[cfg(test)]
mod tests {
    use std::ffi::{CStr, c_void};
    use std::ptr;

    use super::*;
    use crate::{
        NVD_ERR_RANGE, nvd_close, nvd_last_error, nvd_open, nvd_qpair_create, nvd_qpair_destroy,
        nvd_wait,
    };

    unsafe extern "C" fn count(ctx: *mut c_void, status: i32, _nvme_status: u16) {
        // SAFETY: every test passes a live Vec<i32> and keeps it until all callbacks ran.
        unsafe { &mut *ctx.cast::<Vec<i32>>() }.push(status);
    }

    fn last_error() -> String {
        // SAFETY: a valid NUL-terminated string owned by this thread.
        unsafe { CStr::from_ptr(nvd_last_error()) }
            .to_string_lossy()
            .into_owned()
    }

    struct Emu {
        ctrl: *mut nvd_ctrl,
        qp: *mut nvd_qpair,
        area: *mut nvd_area,
    }

    impl Emu {
        fn new(area_len: usize) -> Emu {
            let (mut ctrl, mut qp, mut area) = (ptr::null_mut(), ptr::null_mut(), ptr::null_mut());
            // SAFETY: valid C string and out pointers; handles used as documented.
            unsafe {
                assert_eq!(
                    nvd_open(c"emu:ram".as_ptr(), &mut ctrl),
                    NVD_OK,
                    "{}",
                    last_error()
                );
                assert_eq!(nvd_qpair_create(ctrl, 16, 0, &mut qp), NVD_OK);
                assert_eq!(nvd_area_alloc(ctrl, area_len, &mut area), NVD_OK);
            }
            Emu { ctrl, qp, area }
        }

        fn wait_for(&self, done: *const Vec<i32>, n: usize) {
            // SAFETY: `done` is live; callbacks only run inside nvd_wait.
            while unsafe { (*done).len() } < n {
                // SAFETY: live queue pair.
                assert!(unsafe { nvd_wait(self.qp, 1000) } >= 0, "{}", last_error());
            }
        }
    }

    impl Drop for Emu {
        fn drop(&mut self) {
            // SAFETY: live handles, nothing in flight at the end of a test.
            unsafe {
                assert_eq!(nvd_area_free(self.area), NVD_OK, "{}", last_error());
                assert_eq!(nvd_qpair_destroy(self.qp), NVD_OK);
                assert_eq!(nvd_close(self.ctrl), NVD_OK);
            }
        }
    }

    /// Several requests in flight at once on disjoint parts of one area, written and read
    /// in place through the pointer: what fio does with its io_u buffers.
    #[test]
    fn parts_of_one_area_in_flight_together() {
        const BS: usize = 4096;
        let e = Emu::new(8 * BS);
        // SAFETY: live area.
        let p = unsafe { nvd_area_ptr(e.area) }.cast::<u8>();
        assert!(!p.is_null());
        // SAFETY: live area of 8 blocks.
        assert_eq!(unsafe { nvd_area_len(e.area) }, 8 * BS);
        for i in 0..4 {
            // SAFETY: inside the area; nothing in flight yet.
            unsafe { p.add(i * BS).write_bytes(0x10 + i as u8, BS) };
        }
        let mut done: Vec<i32> = Vec::new();
        let ctx = (&raw mut done).cast::<c_void>();
        for i in 0..4 {
            // Blocks 4..8 get area parts 0..4; one FUA write among them.
            let flags = if i == 2 { NVD_WRITE_FUA } else { 0 };
            // SAFETY: live handles; the parts are disjoint.
            let r = unsafe {
                nvd_area_write(
                    e.qp,
                    1,
                    4 + i as u64,
                    e.area,
                    i * BS,
                    BS,
                    flags,
                    Some(count),
                    ctx,
                )
            };
            assert_eq!(r, NVD_OK, "{}", last_error());
        }
        // SAFETY: live area with requests in flight: refused.
        assert_eq!(unsafe { nvd_area_free(e.area) }, NVD_ERR_BUSY);
        assert!(last_error().contains("in flight"), "{}", last_error());
        e.wait_for(&raw const done, 4);
        // Read them back, in reverse, into parts 4..8.
        for i in 0..4 {
            // SAFETY: live handles; the parts are disjoint.
            let r = unsafe {
                nvd_area_read(
                    e.qp,
                    1,
                    7 - i as u64,
                    e.area,
                    (4 + i) * BS,
                    BS,
                    Some(count),
                    ctx,
                )
            };
            assert_eq!(r, NVD_OK, "{}", last_error());
        }
        e.wait_for(&raw const done, 8);
        assert_eq!(done, vec![NVD_OK; 8]);
        for i in 0..4 {
            let want = 0x10 + (3 - i) as u8;
            // SAFETY: inside the area; no request in flight.
            let got = unsafe { std::slice::from_raw_parts(p.add((4 + i) * BS), BS) };
            assert!(
                got.iter().all(|&b| b == want),
                "part {} holds {:#x}",
                4 + i,
                got[0]
            );
        }
        // Trim block 4, read it: zeroes (the emulated RAM namespace reports DLFEAT zeroes).
        // SAFETY: live handles.
        unsafe {
            assert_eq!(nvd_deallocate(e.qp, 1, 4, 1, Some(count), ctx), NVD_OK);
            e.wait_for(&raw const done, 9);
            assert_eq!(
                nvd_area_read(e.qp, 1, 4, e.area, 0, BS, Some(count), ctx),
                NVD_OK
            );
            e.wait_for(&raw const done, 10);
            assert_eq!(done, vec![NVD_OK; 10]);
            assert!(std::slice::from_raw_parts(p, BS).iter().all(|&b| b == 0));
        }
    }

    #[test]
    fn bad_requests_are_refused_and_nothing_is_in_flight() {
        let e = Emu::new(8192);
        let mut done: Vec<i32> = Vec::new();
        let ctx = (&raw mut done).cast::<c_void>();
        // SAFETY: live handles (or null where the test says so).
        unsafe {
            // Past the end of the area.
            let r = nvd_area_read(e.qp, 1, 0, e.area, 4096, 8192, Some(count), ctx);
            assert_eq!(r, NVD_ERR_INVALID);
            assert!(last_error().contains("area range"), "{}", last_error());
            // Offset overflow.
            let r = nvd_area_read(e.qp, 1, 0, e.area, usize::MAX, 2, Some(count), ctx);
            assert_eq!(r, NVD_ERR_INVALID);
            // No such namespace.
            let r = nvd_area_read(e.qp, 9, 0, e.area, 0, 4096, Some(count), ctx);
            assert_eq!(r, NVD_ERR_RANGE);
            // Unknown flag, null callback, null area.
            let r = nvd_area_write(e.qp, 1, 0, e.area, 0, 4096, 0x80, Some(count), ctx);
            assert_eq!(r, NVD_ERR_INVALID);
            let r = nvd_area_write(e.qp, 1, 0, e.area, 0, 4096, 0, None, ctx);
            assert_eq!(r, NVD_ERR_INVALID);
            let r = nvd_area_read(e.qp, 1, 0, ptr::null(), 0, 4096, Some(count), ctx);
            assert_eq!(r, NVD_ERR_INVALID);
            assert!(nvd_area_ptr(ptr::null()).is_null());
            // Past the end of the namespace: refused at submit, nothing counted in flight.
            let r = nvd_area_read(e.qp, 1, u64::MAX / 2, e.area, 0, 4096, Some(count), ctx);
            assert_eq!(r, NVD_ERR_RANGE, "{}", last_error());
            assert_eq!(e.area.as_ref().unwrap().inflight.load(Ordering::Relaxed), 0);
        }
        assert!(done.is_empty());
    }

    #[test]
    fn an_area_of_another_controller_is_refused() {
        let a = Emu::new(4096);
        let b = Emu::new(4096);
        let mut done: Vec<i32> = Vec::new();
        // SAFETY: live handles of two controllers.
        let r = unsafe {
            nvd_area_read(
                a.qp,
                1,
                0,
                b.area,
                0,
                4096,
                Some(count),
                (&raw mut done).cast(),
            )
        };
        assert_eq!(r, NVD_ERR_INVALID);
        assert!(
            last_error().contains("another controller"),
            "{}",
            last_error()
        );
    }
}
