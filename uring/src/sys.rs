//! The few process-level system calls `nvme-dio` needs beyond std, behind safe functions
//! (the binary forbids `unsafe`): Ctrl-C as a flag, and the calling thread's CPU time.
//!
//! A library must not install signal handlers (its host owns them); only the `nvme-dio`
//! binary calls [`catch_sigint`].

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::UringError;

static SIGINT: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigint(_: libc::c_int) {
    // Only an atomic store: async-signal-safe.
    SIGINT.store(true, Ordering::SeqCst);
}

/// Turns the first Ctrl-C (SIGINT) into a flag ([`sigint_caught`]) instead of the default
/// termination, so a benchmark can stop, drain and print what it measured. The handler is
/// one-shot (`SA_RESETHAND`): a second Ctrl-C terminates the process as usual. `SA_RESTART`
/// restarts the system calls that can be restarted; threads that sleep in `poll`-like
/// calls should block SIGINT with [`block_sigint_in_this_thread`] so the signal always
/// lands on a thread that expects it.
///
/// # Errors
///
/// [`UringError::Os`] if `sigaction` fails.
pub fn catch_sigint() -> Result<(), UringError> {
    // SAFETY: `sigaction` is a plain C struct; all zeroes is a valid value (no flags, empty
    // mask) that is completed below.
    let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
    sa.sa_sigaction = on_sigint as extern "C" fn(libc::c_int) as libc::sighandler_t;
    sa.sa_flags = libc::SA_RESETHAND | libc::SA_RESTART;
    // SAFETY: `sa.sa_mask` is a valid sigset_t owned by this frame.
    unsafe { libc::sigemptyset(&mut sa.sa_mask) };
    // SAFETY: `sa` is fully initialised and outlives the call; the handler only performs an
    // atomic store, which is async-signal-safe; a null old-action pointer is allowed.
    let r = unsafe { libc::sigaction(libc::SIGINT, &sa, std::ptr::null_mut()) };
    if r != 0 {
        return Err(UringError::Os {
            op: "sigaction(SIGINT)",
            source: io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// True once Ctrl-C arrived after [`catch_sigint`].
pub fn sigint_caught() -> bool {
    SIGINT.load(Ordering::SeqCst)
}

/// Blocks SIGINT in the calling thread (worker threads), so the process's Ctrl-C is
/// delivered to a thread that does not sleep in a system call that would fail with EINTR.
///
/// # Errors
///
/// [`UringError::Os`] if `pthread_sigmask` fails.
pub fn block_sigint_in_this_thread() -> Result<(), UringError> {
    // SAFETY: sigset_t is a plain bit array; it is initialised by sigemptyset right away.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t owned by this frame; SIGINT is a valid signal.
    unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
    }
    // SAFETY: `set` is initialised; a null old-set pointer is allowed.
    let r = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if r != 0 {
        return Err(UringError::Os {
            op: "pthread_sigmask",
            source: io::Error::from_raw_os_error(r),
        });
    }
    Ok(())
}

/// CPU time the calling thread has used (user + system), from the kernel's own accounting
/// (`clock_gettime(CLOCK_THREAD_CPUTIME_ID)`, nanosecond resolution). Unlike wall time it
/// does not grow while the thread sleeps (an interrupt wait, an io_uring_enter that blocks).
///
/// # Errors
///
/// [`UringError::Os`] if the clock cannot be read.
pub fn thread_cpu_time() -> Result<Duration, UringError> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec owned by this frame.
    let r = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if r != 0 {
        return Err(UringError::Os {
            op: "clock_gettime(CLOCK_THREAD_CPUTIME_ID)",
            source: io::Error::last_os_error(),
        });
    }
    Ok(Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thread_cpu_time_grows_with_work_and_not_with_sleep() {
        let a = thread_cpu_time().unwrap();
        std::thread::sleep(Duration::from_millis(50));
        let b = thread_cpu_time().unwrap();
        let mut x = 0u64;
        let t = std::time::Instant::now();
        while t.elapsed() < Duration::from_millis(50) {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        let c = thread_cpu_time().unwrap();
        // Sleeping 50 ms costs far less CPU than spinning 50 ms (no absolute bound).
        assert!(b - a < c - b, "sleep {:?} vs spin {:?}", b - a, c - b);
    }
}
