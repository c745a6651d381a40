//! A cheap monotonic clock for deadlines.
//!
//! Queue pairs look at their deadlines from the poll loop, so the clock is read on every
//! poll. `CLOCK_MONOTONIC_COARSE` is read from the vDSO without a TSC read: a few
//! nanoseconds, and no trap in a VM whose TSC is emulated. Its resolution is the kernel's
//! tick (1-4 ms), which is fine for deadlines of milliseconds to seconds.

/// Nanoseconds on `CLOCK_MONOTONIC_COARSE` (any origin; only differences mean anything).
#[inline]
pub fn coarse_nanos() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; clock_gettime only writes it. The clock id
    // is a constant the kernel has supported since 2.6.32, so the call cannot fail (and if it
    // did, `ts` stays zero, which only makes deadlines later, never earlier).
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    #[test]
    fn coarse_clock_moves_forward() {
        let a = super::coarse_nanos();
        std::thread::sleep(std::time::Duration::from_millis(20));
        let b = super::coarse_nanos();
        assert!(b > a, "{a} then {b}");
    }
}
