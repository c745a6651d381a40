//! Memory ordering between the CPU and the device, in one place.
//!
//! Two orderings matter to an NVMe driver:
//!
//! * [`wmb`]: the SQ entry (ordinary write-back memory) must be visible to the device before
//!   the doorbell store (MMIO) that tells the device to fetch it:
//!   `sq.write(slot, sqe); wmb(); doorbell.write32(tail)`.
//! * [`rmb`]: after seeing a new phase bit in a CQ slot, the rest of the CQ entry (and the data
//!   the command transferred) must be read after the phase bit, not before:
//!   `if phase matches { rmb(); read the whole entry }`.
//!
//! ## Why compiler fences suffice on x86_64
//!
//! x86_64 is TSO: stores become visible in program order and loads are not reordered with
//! other loads. BAR0 is mapped uncached (UC, not write-combining), and UC stores are not
//! reordered with earlier write-back stores. We never use non-temporal stores on device
//! memory, which is the only case that needs `sfence`. So the CPU already gives the order we
//! need, and only the compiler must be kept from moving the accesses: a compiler fence does
//! that. (Linux's `dma_wmb()`/`dma_rmb()` are likewise plain compiler barriers on x86.)
//!
//! ## Other architectures
//!
//! Weakly ordered CPUs reorder stores and loads, so a full [`fence`](std::sync::atomic::fence) is used there. Note that
//! on aarch64 a Rust `fence(SeqCst)` is a `dmb ish`; ordering against a device strictly needs
//! the outer-shareable domain (`dmb osh`) — nvme-dio is only tested on x86_64.

#[cfg(not(target_arch = "x86_64"))]
use std::sync::atomic::fence;
#[cfg(target_arch = "x86_64")]
use std::sync::atomic::{Ordering, compiler_fence};

/// Write barrier: device-visible memory writes before this call are visible to the device
/// before any MMIO write (doorbell) after it.
#[inline(always)]
pub fn wmb() {
    #[cfg(target_arch = "x86_64")]
    compiler_fence(Ordering::SeqCst);
    #[cfg(not(target_arch = "x86_64"))]
    fence(std::sync::atomic::Ordering::SeqCst);
}

/// Read barrier: reads of device-written memory after this call are not satisfied before
/// the read (of a CQ phase bit) that preceded it.
#[inline(always)]
pub fn rmb() {
    #[cfg(target_arch = "x86_64")]
    compiler_fence(Ordering::SeqCst);
    #[cfg(not(target_arch = "x86_64"))]
    fence(std::sync::atomic::Ordering::SeqCst);
}

/// Full barrier: memory writes before this call are visible (to the device too) before any
/// memory read after it is satisfied. Shadow doorbells need it: the host writes its shadow
/// doorbell, then reads the controller's EventIdx, while the controller writes EventIdx, then
/// reads the shadow doorbell (Linux's `mb()` in `nvme_dbbuf_update_and_check_event`). A store
/// followed by a load is the one reordering x86's TSO allows, so this is a real `mfence`.
#[inline(always)]
pub fn mb() {
    std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
}
