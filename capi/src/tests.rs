//! The C ABI driven from Rust the way a C caller drives it: raw pointers, status codes,
//! callbacks with a context pointer, against the emulated controller.

use std::ffi::{CStr, c_void};
use std::ptr;

use nvme_dio::Status;
use nvme_dio_emu::{Action, Fault, Target};

/// Blocks of the `emu:ram` namespace (4 KiB each).
const EMU_RAM_BLOCKS: u64 = nvme_dio::EMU_RAM_BYTES / 4096;

use super::*;

/// What callbacks record: (tag from ctx, status, nvme status).
#[derive(Default)]
struct Log {
    done: Vec<(i32, u16)>,
}

unsafe extern "C" fn record(ctx: *mut c_void, status: i32, nvme_status: u16) {
    // SAFETY: every test passes a live `Log` as ctx and keeps it alive until the queue
    // pair has delivered everything.
    let log = unsafe { &mut *ctx.cast::<Log>() };
    log.done.push((status, nvme_status));
}

fn last_error() -> String {
    // SAFETY: nvd_last_error returns a valid NUL-terminated string owned by this thread.
    unsafe { CStr::from_ptr(nvd_last_error()) }
        .to_string_lossy()
        .into_owned()
}

struct Fixture {
    ctrl: *mut nvd_ctrl,
    qp: *mut nvd_qpair,
}

impl Fixture {
    fn new(device: &CStr, flags: u32) -> Fixture {
        let mut ctrl = ptr::null_mut();
        let mut qp = ptr::null_mut();
        // SAFETY: valid C string and out pointers.
        unsafe {
            assert_eq!(
                nvd_open(device.as_ptr(), &mut ctrl),
                NVD_OK,
                "{}",
                last_error()
            );
            assert_eq!(
                nvd_qpair_create(ctrl, 16, flags, &mut qp),
                NVD_OK,
                "{}",
                last_error()
            );
        }
        Fixture { ctrl, qp }
    }

    fn buf(&self, len: usize) -> *mut nvd_buf {
        let mut b = ptr::null_mut();
        // SAFETY: live controller, valid out pointer.
        let r = unsafe { nvd_buf_alloc(self.ctrl, len, &mut b) };
        assert_eq!(r, NVD_OK, "{}", last_error());
        b
    }

    /// Polls until `log` has `n` entries (a hang is a failure after 10 s). A raw pointer:
    /// the callbacks write the log while this reads it.
    fn drain(&self, log: *const Log, n: usize) {
        let start = std::time::Instant::now();
        // SAFETY: `log` is live; callbacks only run inside nvd_wait, not during this read.
        while unsafe { (*log).done.len() } < n {
            // SAFETY: live queue pair.
            let r = unsafe { nvd_wait(self.qp, 100) };
            assert!(r >= 0, "nvd_wait: {r} {}", last_error());
            assert!(start.elapsed().as_secs() < 10, "callbacks never came");
        }
    }

    fn emu(&self) -> &nvme_dio_emu::EmuFunction {
        // SAFETY: live controller.
        match unsafe { &**(*self.ctrl).ctrl.device() } {
            Device::Emu(f) => f,
            _ => unreachable!("tests open emu"),
        }
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        // SAFETY: live handles, destroyed once, queue pair first.
        unsafe {
            assert_eq!(nvd_qpair_destroy(self.qp), NVD_OK, "{}", last_error());
            assert_eq!(nvd_close(self.ctrl), NVD_OK, "{}", last_error());
        }
    }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect()
}

#[test]
fn open_info_write_read_flush_verify() {
    let f = Fixture::new(c"emu:ram", 0);
    let mut info = nvd_ctrl_info {
        size: std::mem::size_of::<nvd_ctrl_info>() as u32,
        model: [0; 41],
        serial: [0; 21],
        firmware: [0; 9],
        vendor_id: 0,
        io_queues: 0,
        max_transfer: 0,
        namespaces: 0,
    };
    let mut ns = nvd_ns_info {
        size: std::mem::size_of::<nvd_ns_info>() as u32,
        ..nvd_ns_info::default()
    };
    // SAFETY: live handles and out pointers throughout.
    unsafe {
        assert_eq!(nvd_ctrl_info_get(f.ctrl, &mut info), NVD_OK);
        assert_eq!(
            CStr::from_ptr(info.model.as_ptr()).to_str().unwrap(),
            "nvme-dio emulated controller"
        );
        assert_eq!(nvd_ns_count(f.ctrl), 1);
        assert_eq!(nvd_ns_info_get(f.ctrl, 0, &mut ns), NVD_OK);
    }
    assert_eq!(
        (ns.nsid, ns.block_size, ns.blocks),
        (1, 4096, EMU_RAM_BLOCKS)
    );
    assert_eq!(ns.volatile_write_cache, 1);

    // Write three buffers as one iovec (FUA), flush, read them back as one 12 KiB buffer.
    let data = pattern(3 * 4096, 7);
    let w: Vec<*mut nvd_buf> = (0..3).map(|_| f.buf(4096)).collect();
    let r = f.buf(3 * 4096);
    let mut log = Log::default();
    let ctx = (&raw mut log).cast::<c_void>();
    // SAFETY: live handles; data outlives the copies; ctx is a live Log.
    unsafe {
        for (i, &b) in w.iter().enumerate() {
            let chunk = &data[i * 4096..(i + 1) * 4096];
            assert_eq!(nvd_buf_write(b, 0, chunk.as_ptr().cast(), 4096), NVD_OK);
        }
        let list: Vec<*const nvd_buf> = w.iter().map(|&b| b.cast_const()).collect();
        assert_eq!(
            nvd_writev(
                f.qp,
                1,
                10,
                list.as_ptr(),
                3,
                NVD_WRITE_FUA,
                Some(record),
                ctx
            ),
            NVD_OK
        );
        assert_eq!(nvd_qpair_outstanding(f.qp), 1);
        // In flight: the buffer is the request's.
        assert_eq!(nvd_buf_fill(w[0], 0), NVD_ERR_BUSY);
        assert_eq!(nvd_buf_free(w[0]), NVD_ERR_BUSY);
        f.drain(&raw const log, 1);
        assert_eq!(nvd_flush(f.qp, 1, Some(record), ctx), NVD_OK);
        f.drain(&raw const log, 2);
        let rl = [r.cast_const()];
        assert_eq!(
            nvd_readv(f.qp, 1, 10, rl.as_ptr(), 1, Some(record), ctx),
            NVD_OK
        );
        f.drain(&raw const log, 3);
        assert_eq!(log.done, vec![(NVD_OK, 0); 3]);
        let mut got = vec![0u8; 3 * 4096];
        assert_eq!(
            nvd_buf_read(r, 0, got.as_mut_ptr().cast(), got.len()),
            NVD_OK
        );
        assert_eq!(got, data);
        assert_eq!(nvd_buf_len(r), 3 * 4096);
        for b in w {
            assert_eq!(nvd_buf_free(b), NVD_OK, "back in the caller's hands");
        }
        assert_eq!(nvd_buf_free(r), NVD_OK);
        // Closing with a queue pair open is refused.
        assert_eq!(nvd_close(f.ctrl), NVD_ERR_BUSY);
        assert!(last_error().contains("destroy them first"));
    }
    let mut stored = vec![0u8; 3 * 4096];
    f.emu().read_blocks(1, 10, &mut stored).unwrap();
    assert_eq!(stored, data);
}

#[test]
fn null_and_invalid_arguments_are_error_codes() {
    let f = Fixture::new(c"emu:ram", 0);
    let b = f.buf(4096);
    let mut log = Log::default();
    let ctx = (&raw mut log).cast::<c_void>();
    let mut out = ptr::null_mut();
    let one = [b.cast_const()];
    // SAFETY: every pointer is null or live; that is the point of the test.
    unsafe {
        assert_eq!(nvd_open(ptr::null(), &mut out), NVD_ERR_INVALID);
        assert_eq!(nvd_open(c"emu:disk".as_ptr(), &mut out), NVD_ERR_INVALID);
        assert!(last_error().contains("emu:ram"), "{}", last_error());
        assert_eq!(nvd_open(c"zz:00.0".as_ptr(), &mut out), NVD_ERR_INVALID);
        assert_eq!(
            nvd_open(c"emu:ram".as_ptr(), ptr::null_mut()),
            NVD_ERR_INVALID
        );
        assert_eq!(nvd_ns_count(ptr::null()), NVD_ERR_INVALID);
        let mut ns = nvd_ns_info {
            size: std::mem::size_of::<nvd_ns_info>() as u32,
            ..nvd_ns_info::default()
        };
        assert_eq!(nvd_ns_info_get(f.ctrl, 5, &mut ns), NVD_ERR_RANGE);
        // A caller that did not say how big its struct is gets a clear refusal.
        assert_eq!(
            nvd_ns_info_get(f.ctrl, 0, &mut nvd_ns_info::default()),
            NVD_ERR_INVALID
        );
        assert!(
            last_error().contains("set it to sizeof(nvd_ns_info)"),
            "{}",
            last_error()
        );
        // One that knows more than this version (a later header) gets what exists, and is
        // told how much that was.
        let mut bigger = [0u64; 8];
        bigger[0] = 64;
        assert_eq!(
            nvd_ns_info_get(f.ctrl, 0, bigger.as_mut_ptr().cast::<nvd_ns_info>()),
            NVD_OK
        );
        assert_eq!(bigger[0] as u32, std::mem::size_of::<nvd_ns_info>() as u32);
        assert_eq!(bigger[7], 0, "nothing written past this version's struct");
        assert_eq!(
            nvd_buf_alloc(f.ctrl, 0, &mut ptr::null_mut()),
            NVD_ERR_INVALID
        );
        assert_eq!(nvd_buf_len(ptr::null()), 0);
        assert_eq!(
            nvd_buf_write(b, 4090, [0u8; 8].as_ptr().cast(), 8),
            NVD_ERR_INVALID,
            "past the end"
        );
        assert_eq!(nvd_buf_read(b, 0, ptr::null_mut(), 8), NVD_ERR_INVALID);
        assert_eq!(
            nvd_qpair_create(f.ctrl, 16, 0x80, &mut ptr::null_mut()),
            NVD_ERR_INVALID
        );
        assert_eq!(
            nvd_readv(f.qp, 1, 0, one.as_ptr(), 1, None, ctx),
            NVD_ERR_INVALID,
            "no callback"
        );
        assert_eq!(
            nvd_readv(f.qp, 9, 0, one.as_ptr(), 1, Some(record), ctx),
            NVD_ERR_RANGE
        );
        assert_eq!(
            nvd_readv(f.qp, 1, 0, ptr::null(), 1, Some(record), ctx),
            NVD_ERR_INVALID
        );
        assert_eq!(
            nvd_readv(f.qp, 1, 0, [ptr::null()].as_ptr(), 1, Some(record), ctx),
            NVD_ERR_INVALID
        );
        assert_eq!(
            nvd_writev(f.qp, 1, 0, one.as_ptr(), 1, 0x10, Some(record), ctx),
            NVD_ERR_INVALID
        );
        assert_eq!(
            nvd_readv(f.qp, 1, EMU_RAM_BLOCKS, one.as_ptr(), 1, Some(record), ctx),
            NVD_ERR_RANGE
        );
        assert!(last_error().contains("past"), "{}", last_error());
        // A refused request hands its buffer back: usable at once.
        assert_eq!(nvd_buf_fill(b, 1), NVD_OK);
        // The same buffer twice in one iovec: the first is given back.
        let twice = [b.cast_const(), b.cast_const()];
        assert_eq!(
            nvd_writev(f.qp, 1, 0, twice.as_ptr(), 2, 0, Some(record), ctx),
            NVD_ERR_BUSY
        );
        assert_eq!(nvd_buf_fill(b, 2), NVD_OK);
        // A buffer of another controller.
        let g = Fixture::new(c"emu:ram", 0);
        let other = [g.buf(4096).cast_const()];
        assert_eq!(
            nvd_readv(f.qp, 1, 0, other.as_ptr(), 1, Some(record), ctx),
            NVD_ERR_INVALID
        );
        assert!(last_error().contains("another controller"));
        assert_eq!(nvd_buf_free(other[0].cast_mut()), NVD_OK);
        assert_eq!(nvd_poll(ptr::null_mut()), NVD_ERR_INVALID);
        assert_eq!(nvd_qpair_outstanding(f.qp), 0, "nothing was queued");
        assert_eq!(nvd_buf_free(b), NVD_OK);
        // Null frees and closes are no-ops, like free(NULL).
        assert_eq!(nvd_buf_free(ptr::null_mut()), NVD_OK);
        assert_eq!(nvd_close(ptr::null_mut()), NVD_OK);
        assert_eq!(nvd_qpair_destroy(ptr::null_mut()), NVD_OK);
        assert!(
            !CStr::from_ptr(nvd_strerror(NVD_ERR_QUEUE_FULL))
                .to_bytes()
                .is_empty()
        );
    }
    assert!(log.done.is_empty(), "no callback for a refused request");
}

#[test]
fn device_errors_reach_the_callback_with_the_nvme_status() {
    let f = Fixture::new(c"emu:ram", NVD_QPAIR_INTERRUPT);
    let b = f.buf(4096);
    f.emu()
        .inject(Fault::Command {
            target: Target::NthIo(0),
            action: Action::Status(Status::new(0, 0x06).with_dnr()),
        })
        .unwrap();
    let mut log = Log::default();
    let one = [b.cast_const()];
    // SAFETY: live handles; log outlives the request.
    unsafe {
        assert_eq!(
            nvd_readv(
                f.qp,
                1,
                0,
                one.as_ptr(),
                1,
                Some(record),
                (&raw mut log).cast()
            ),
            NVD_OK
        );
        f.drain(&raw const log, 1);
        assert_eq!(log.done, vec![(NVD_ERR_IO, 0x06)]);
        assert!(last_error().contains("Read failed"), "{}", last_error());
        assert_eq!(
            nvd_buf_free(b),
            NVD_OK,
            "the buffer came back with the error"
        );
    }
}

/// A callback that resubmits on its own queue pair until `left` reaches zero.
struct Chain {
    qp: *mut nvd_qpair,
    buf: *const nvd_buf,
    left: u32,
    done: u32,
    statuses: Vec<i32>,
}

unsafe extern "C" fn chain(ctx: *mut c_void, status: i32, _nvme: u16) {
    // SAFETY: the test passes a live Chain.
    let c = unsafe { &mut *ctx.cast::<Chain>() };
    c.statuses.push(status);
    c.done += 1;
    if c.left > 0 {
        c.left -= 1;
        let one = [c.buf];
        // SAFETY: live queue pair and buffer (handed back before this callback ran).
        let r = unsafe { nvd_writev(c.qp, 1, c.left as u64, one.as_ptr(), 1, 0, Some(chain), ctx) };
        c.statuses.push(r);
        // Destroying the queue pair from its own callback is refused.
        // SAFETY: live queue pair.
        assert_eq!(unsafe { nvd_qpair_destroy(c.qp) }, NVD_ERR_BUSY);
    }
}

#[test]
fn a_callback_may_submit_on_its_own_queue_pair() {
    let f = Fixture::new(c"emu:ram", 0);
    let b = f.buf(4096);
    let mut c = Chain {
        qp: f.qp,
        buf: b,
        left: 20,
        done: 0,
        statuses: Vec::new(),
    };
    let one = [b.cast_const()];
    // SAFETY: live handles; `c` outlives every request.
    unsafe {
        assert_eq!(
            nvd_writev(
                f.qp,
                1,
                100,
                one.as_ptr(),
                1,
                0,
                Some(chain),
                (&raw mut c).cast()
            ),
            NVD_OK
        );
        let start = std::time::Instant::now();
        let cp = &raw const c;
        // SAFETY: `c` is live; the callbacks write it only inside nvd_poll. (Read through a
        // pointer with a volatile load: the loop body changes it behind the compiler's back.)
        while std::ptr::read_volatile(&raw const (*cp).done) < 21 {
            assert!(nvd_poll(f.qp) >= 0);
            assert!(
                start.elapsed().as_secs() < 10,
                "chain stalled at {}",
                c.done
            );
        }
        assert_eq!(nvd_buf_free(b), NVD_OK);
    }
    assert!(c.statuses.iter().all(|&s| s == NVD_OK), "{:?}", c.statuses);
}

#[test]
fn a_panic_is_caught_and_reported() {
    let r = guard(|| panic!("boom at the boundary"));
    assert_eq!(r, NVD_ERR_INTERNAL);
    assert!(last_error().contains("boom at the boundary"));
}

#[test]
fn queue_full_is_backpressure_not_loss() {
    let f = Fixture::new(c"emu:ram", 0);
    let bufs: Vec<*mut nvd_buf> = (0..16).map(|_| f.buf(4096)).collect();
    let mut log = Log::default();
    let ctx = (&raw mut log).cast::<c_void>();
    let mut queued = 0;
    // SAFETY: live handles; log outlives every request.
    unsafe {
        for (i, &b) in bufs.iter().enumerate() {
            let one = [b.cast_const()];
            match nvd_readv(f.qp, 1, i as u64, one.as_ptr(), 1, Some(record), ctx) {
                NVD_OK => queued += 1,
                NVD_ERR_QUEUE_FULL => {
                    assert_eq!(nvd_buf_fill(b, 0), NVD_OK, "a refused buffer is usable");
                }
                other => panic!("{other}: {}", last_error()),
            }
        }
        assert_eq!(queued, 15, "16 entries hold 15 requests");
        f.drain(&raw const log, 15);
        for b in bufs {
            assert_eq!(nvd_buf_free(b), NVD_OK);
        }
    }
}

/// The first callback polls the queue pair again (a nested delivery loop); the second tries
/// to destroy it while the outer loop is still running callbacks.
struct Nest {
    qp: *mut nvd_qpair,
    calls: u32,
    nested_poll: i32,
    destroy: i32,
}

unsafe extern "C" fn nest(ctx: *mut c_void, _status: i32, _nvme: u16) {
    // SAFETY: the test passes a live Nest.
    let n = unsafe { &mut *ctx.cast::<Nest>() };
    n.calls += 1;
    // SAFETY: live queue pair.
    unsafe {
        if n.calls == 1 {
            n.nested_poll = nvd_poll(n.qp);
        } else {
            n.destroy = nvd_qpair_destroy(n.qp);
        }
    }
}

#[test]
fn a_nested_poll_does_not_let_a_later_callback_destroy_the_queue_pair() {
    let f = Fixture::new(c"emu:ram", 0);
    let bufs = [f.buf(4096), f.buf(4096)];
    let mut n = Nest {
        qp: f.qp,
        calls: 0,
        nested_poll: -1000,
        destroy: -1000,
    };
    let ctx = (&raw mut n).cast::<c_void>();
    // SAFETY: live handles; `n` outlives every request.
    unsafe {
        for (i, &b) in bufs.iter().enumerate() {
            let one = [b.cast_const()];
            assert_eq!(
                nvd_readv(f.qp, 1, i as u64, one.as_ptr(), 1, Some(nest), ctx),
                NVD_OK
            );
        }
        let mut ran = 0;
        while ran < 2 {
            let r = nvd_poll(f.qp);
            assert!(r >= 0, "{}", last_error());
            ran += r;
        }
        assert_eq!(ran, 2);
    }
    assert_eq!(n.calls, 2);
    assert!(
        n.nested_poll >= 0,
        "the nested poll works: {}",
        n.nested_poll
    );
    assert_eq!(
        n.destroy, NVD_ERR_BUSY,
        "destroyed under the outer delivery loop"
    );
    // SAFETY: live buffers, nothing in flight.
    unsafe {
        for b in bufs {
            assert_eq!(nvd_buf_free(b), NVD_OK);
        }
    }
}

#[test]
fn io_in_place_from_registered_caller_memory() {
    let f = Fixture::new(c"emu:ram", 0);
    // The caller's own memory: an anonymous mapping, as a database's buffer pool.
    let mut pool = nvme_dio::MmapMut::map_anon(8 * 4096).unwrap();
    pool[..4096].copy_from_slice(&pattern(4096, 3));
    let mut mem = ptr::null_mut();
    let mut log = Log::default();
    let ctx = (&raw mut log).cast::<c_void>();
    // SAFETY: `pool` outlives the registration (unregistered below before it drops); live
    // handles and out pointers; ctx is a live Log.
    unsafe {
        let base = pool.as_mut_ptr().cast::<c_void>();
        assert_eq!(
            nvd_mem_register(f.ctrl, base.byte_add(100), 4096, &mut mem),
            NVD_ERR_INVALID
        );
        assert!(
            last_error().contains("4 KiB page boundary"),
            "{}",
            last_error()
        );
        assert_eq!(
            nvd_mem_register(f.ctrl, base, 8 * 4096, &mut mem),
            NVD_OK,
            "{}",
            last_error()
        );
        let mut again = ptr::null_mut();
        assert_eq!(
            nvd_mem_register(f.ctrl, base, 4096, &mut again),
            NVD_ERR_INVALID
        );
        assert!(last_error().contains("overlaps"), "{}", last_error());
        let (mut w, mut r, mut dup) = (ptr::null_mut(), ptr::null_mut(), ptr::null_mut());
        assert_eq!(nvd_mem_buf(mem, 0, 4096, &mut w), NVD_OK);
        assert_eq!(nvd_mem_buf(mem, 4096, 4096, &mut r), NVD_OK);
        assert_eq!(
            nvd_mem_buf(mem, 0, 8192, &mut dup),
            NVD_ERR_INVALID,
            "overlaps `w`"
        );
        let wl = [w.cast_const()];
        assert_eq!(
            nvd_writev(f.qp, 1, 40, wl.as_ptr(), 1, 0, Some(record), ctx),
            NVD_OK
        );
        // In flight: the memory stays registered.
        assert_eq!(nvd_mem_unregister(mem), NVD_ERR_BUSY);
        assert!(
            last_error().contains("still has 2 buffer"),
            "{}",
            last_error()
        );
        f.drain(&raw const log, 1);
        let rl = [r.cast_const()];
        assert_eq!(
            nvd_readv(f.qp, 1, 40, rl.as_ptr(), 1, Some(record), ctx),
            NVD_OK
        );
        f.drain(&raw const log, 2);
        assert_eq!(log.done, vec![(NVD_OK, 0); 2]);
        assert_eq!(nvd_buf_free(w), NVD_OK);
        assert_eq!(nvd_buf_free(r), NVD_OK);
        assert_eq!(nvd_mem_unregister(mem), NVD_OK, "{}", last_error());
    }
    // The read landed in the caller's memory itself, no copy.
    assert_eq!(&pool[4096..8192], &pattern(4096, 3)[..]);
    let mut stored = vec![0u8; 4096];
    f.emu().read_blocks(1, 40, &mut stored).unwrap();
    assert_eq!(stored, pattern(4096, 3));
}
