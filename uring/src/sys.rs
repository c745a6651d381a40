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

/// User and system CPU time, from `getrusage`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuTimes {
    /// Time spent in user mode.
    pub user: Duration,
    /// Time spent in the kernel on the caller's behalf (system calls, page faults).
    pub system: Duration,
}

fn rusage(who: libc::c_int, op: &'static str) -> Result<CpuTimes, UringError> {
    // SAFETY: `rusage` is a plain C struct of integers; all zeroes is a valid value, and
    // getrusage fills it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is a valid, writable rusage owned by this frame; `who` is
    // RUSAGE_THREAD or RUSAGE_SELF.
    let r = unsafe { libc::getrusage(who, &mut ru) };
    if r != 0 {
        return Err(UringError::Os {
            op,
            source: io::Error::last_os_error(),
        });
    }
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    Ok(CpuTimes {
        user: tv(ru.ru_utime),
        system: tv(ru.ru_stime),
    })
}

/// The calling thread's user and system CPU time so far (`getrusage(RUSAGE_THREAD)`,
/// microsecond resolution): the kernel's split of [`thread_cpu_time`].
///
/// # Errors
///
/// [`UringError::Os`] if getrusage fails.
pub fn thread_rusage() -> Result<CpuTimes, UringError> {
    rusage(libc::RUSAGE_THREAD, "getrusage(RUSAGE_THREAD)")
}

/// The whole process's user and system CPU time so far, every thread together, the ones
/// that ended included (`getrusage(RUSAGE_SELF)`).
///
/// # Errors
///
/// [`UringError::Os`] if getrusage fails.
pub fn process_rusage() -> Result<CpuTimes, UringError> {
    rusage(libc::RUSAGE_SELF, "getrusage(RUSAGE_SELF)")
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

    #[test]
    fn rusage_splits_user_and_system_time_and_the_process_holds_the_thread() {
        let a = thread_rusage().unwrap();
        let t = std::time::Instant::now();
        let mut x = 0u64;
        while t.elapsed() < Duration::from_millis(30) {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        let b = thread_rusage().unwrap();
        assert!(b.user > a.user, "spinning is user time: {a:?} -> {b:?}");
        let p = process_rusage().unwrap();
        assert!(p.user + p.system >= b.user + b.system, "{p:?} vs {b:?}");
    }
}
