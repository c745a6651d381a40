//! Fault injection: what to break, and which command it applies to.
//!
//! ```
//! use nvme_dio_emu::{Action, Fault, Target};
//! use nvme_dio_queue::Status;
//! // The third I/O command from now fails with Internal Error and DNR.
//! let f = Fault::Command {
//!     target: Target::NthIo(2),
//!     action: Action::Status(Status::new(0, 0x06).with_dnr()),
//! };
//! # let _ = f;
//! ```

use std::time::Duration;

use nvme_dio_queue::Status;

/// Which command(s) a command fault applies to. Counting starts when the fault is injected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// The Nth I/O command (any I/O queue, any opcode) processed from now; 0 is the next one.
    /// Fires once.
    NthIo(u64),
    /// The next `count` commands with `opcode`, on the admin queue if `admin`, else on any
    /// I/O queue. Fires `count` times.
    Opcode {
        /// Admin (true) or I/O (false) opcode space.
        admin: bool,
        /// The opcode to match.
        opcode: u8,
        /// How many matching commands to affect.
        count: u32,
    },
}

/// What happens to a targeted command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Do not execute it; complete it with this status (phase is set by the controller; set
    /// DNR yourself with `Status::with_dnr` if wanted).
    Status(Status),
    /// Execute it but never post its completion. Abort still finds it.
    Drop,
    /// Neither execute it nor post its completion: a command the device fetched and lost.
    /// Held like [`Action::Drop`] (an Abort or a queue deletion still finds it);
    /// [`crate::EmuFunction::release_dropped`] answers it with Command Abort Requested,
    /// still unexecuted. An Abort lost so neither aborts its command nor is answered.
    Lose,
    /// Execute it, and post its completion only once this much time has passed (on a later
    /// register access in inline mode, by the thread in thread mode). Abort finds it.
    Delay(Duration),
    /// Execute and complete it, then post an extra CQE whose CID is not outstanding.
    StaleCqe,
    /// Execute it and post its completion twice.
    DuplicateCqe,
    /// Execute it, and post its completion only after this many further 32-bit BAR
    /// accesses by the host (reads or writes of any register, doorbells included; in
    /// [`crate::Mode::Thread`] doorbell writes do not count, as they never take the
    /// controller lock). Deterministic, unlike [`Action::Delay`]. Abort finds it. With
    /// `Target::Opcode { admin: true, opcode: CREATE_IO_CQ, .. }` it is a Create I/O CQ that
    /// completes late: the queue exists as soon as the command runs, the completion comes
    /// after the driver may have given up on it.
    DelayAccesses(u32),
}

/// A fault to inject with [`crate::EmuFunction::inject`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Break a command (see [`Target`], [`Action`]).
    Command {
        /// Which command.
        target: Target,
        /// What happens to it.
        action: Action,
    },
    /// Set CSTS.CFS now; the controller stops processing commands until it is reset
    /// (CC.EN 1 -> 0 -> 1).
    ControllerFatal,
    /// Surprise removal: from now on every BAR read returns all ones and writes are ignored;
    /// each enabled MSI-X eventfd is signalled once so waiters wake up.
    SurpriseRemoval,
    /// The next disable (CC.EN 1 -> 0) never completes: CSTS.RDY stays 1, the queues and
    /// held commands stay, doorbells are still processed, and later CC writes are stored
    /// but change nothing. Only a function-level reset ([`nvme_dio_dma::PciFunction::reset`])
    /// or [`crate::EmuFunction::power_cut`] ends it. DMA was never proven stopped.
    DisableHangs,
    /// A device that keeps writing after a failed disable. At the next disable (CC.EN
    /// 1 -> 0) the controller remembers the first data page of every Read or Write (PRP
    /// data pointer) it holds, that is, has not completed (dropped, delayed); then, on each
    /// of the next `accesses` 32-bit BAR accesses while the disable has not completed
    /// (CSTS.RDY still 1: pair it with [`Fault::DisableHangs`]), it writes `0xde` bytes
    /// into every remembered page, as a DMA engine that was never stopped does. Counted in
    /// [`crate::EmuStats::late_writes`]; clearing bus mastering
    /// ([`nvme_dio_dma::PciFunction::set_bus_master`]) or a function-level reset stops it.
    /// A page the host gave back after the disable counts as a freed write
    /// ([`crate::EmuStats::freed_writes`]) even if it was handed to a new owner since.
    LateWrites {
        /// Register accesses that each write every remembered page once.
        accesses: u32,
    },
    /// The next `reads` BAR reads (32- or 64-bit, any register) return all ones, then reads
    /// are normal again: a transient all-ones read (link retraining, AER/DPC recovery), not
    /// a removal. Writes are unaffected. Counted in [`crate::EmuStats::all_ones_reads`].
    AllOnesReads {
        /// Reads to answer with all ones.
        reads: u32,
    },
    /// The next `times` enables (CC.EN 0 -> 1) fail: CSTS.CFS is set and RDY stays 0, as when
    /// a controller wedges in its reset; after each the host must disable (CC.EN = 0) and
    /// enable again. `times: 1` is a controller that needs two resets.
    EnableFails {
        /// Enables that fail before one works.
        times: u32,
    },
    /// Flip bit `bit` (0..8*lba_size) of the stored data of block `lba` in namespace `nsid`
    /// (RAM namespaces only), so verify-after-read tests can see corruption.
    FlipBit {
        /// Namespace (1-based).
        nsid: u32,
        /// Block.
        lba: u64,
        /// Bit within the block.
        bit: u32,
    },
}

/// An armed command fault.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Armed {
    pub(crate) target: Target,
    pub(crate) action: Action,
    /// For `NthIo`: I/O commands still to skip.
    pub(crate) skip: u64,
}

/// The armed command faults. Empty on the fast path: one length check per command.
#[derive(Debug, Default)]
pub(crate) struct Faults {
    pub(crate) armed: Vec<Armed>,
}

impl Faults {
    pub(crate) fn arm(&mut self, target: Target, action: Action) {
        let skip = match target {
            Target::NthIo(n) => n,
            Target::Opcode { .. } => 0,
        };
        self.armed.push(Armed {
            target,
            action,
            skip,
        });
    }

    /// Called once per command; returns the action to apply, if any fault fires.
    pub(crate) fn take(&mut self, admin: bool, opcode: u8) -> Option<Action> {
        let mut fired = None;
        let mut i = 0;
        while i < self.armed.len() {
            let a = &mut self.armed[i];
            let mut done = false;
            match &mut a.target {
                Target::NthIo(_) if !admin => {
                    if a.skip == 0 {
                        if fired.is_none() {
                            fired = Some(a.action);
                            done = true;
                        }
                    } else {
                        a.skip -= 1;
                    }
                }
                Target::Opcode {
                    admin: ad,
                    opcode: op,
                    count,
                } if *ad == admin && *op == opcode && fired.is_none() => {
                    fired = Some(a.action);
                    *count = count.saturating_sub(1);
                    done = *count == 0;
                }
                _ => {}
            }
            if done {
                self.armed.remove(i);
            } else {
                i += 1;
            }
        }
        fired
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nth_io_fires_once_on_the_nth_and_opcode_counts_down() {
        let mut f = Faults::default();
        f.arm(Target::NthIo(2), Action::Drop);
        assert_eq!(f.take(false, 2), None);
        assert_eq!(f.take(true, 6), None, "admin commands do not count");
        assert_eq!(f.take(false, 1), None);
        assert_eq!(f.take(false, 2), Some(Action::Drop));
        assert_eq!(f.take(false, 2), None);
        f.arm(
            Target::Opcode {
                admin: false,
                opcode: 1,
                count: 2,
            },
            Action::DuplicateCqe,
        );
        assert_eq!(f.take(false, 2), None);
        assert_eq!(f.take(true, 1), None);
        assert_eq!(f.take(false, 1), Some(Action::DuplicateCqe));
        assert_eq!(f.take(false, 1), Some(Action::DuplicateCqe));
        assert_eq!(f.take(false, 1), None);
        assert!(f.armed.is_empty());
    }
}
