//! Hybrid completion for one queue pair ([`crate::CompletionMode::Hybrid`]): spin on the CQ
//! for a while before arming the interrupt, so a completion that comes soon costs no
//! interrupt round trip (wakeup, eventfd read, context switch), and one that comes late
//! costs no burnt core.
//!
//! How long to spin adapts, in polls (no clock: a poll of an empty CQ is a few loads, so a
//! poll count is a time with the same unit cost on a given machine). Each wait that finds
//! its completion while spinning records how many polls that took; the budget follows twice
//! the moving average of those counts, between [`MIN_BUDGET`] and the queue pair's cap.
//! A wait that spends its whole budget and sleeps halves it: completions are coming later
//! than spinning pays for. After [`PROBE_EVERY`] sleeps in a row the full cap is tried once
//! again, so a device that got faster is noticed.

/// The smallest spin worth doing (a few hundred nanoseconds).
pub(crate) const MIN_BUDGET: u32 = 16;

/// Sleeps in a row after which one wait spins the full cap again.
pub(crate) const PROBE_EVERY: u32 = 32;

/// The spin state of one queue pair.
#[derive(Clone, Debug)]
pub(crate) struct Spin {
    /// The most polls one wait spins.
    cap: u32,
    /// Polls the next wait spins.
    budget: u32,
    /// Moving average of the polls a completion took when it was found spinning, times 8.
    avg8: u32,
    /// Sleeps since the last completion found spinning.
    sleeps_in_a_row: u32,
}

impl Spin {
    /// Spins of at most `cap` polls; the first wait spins all of them.
    pub(crate) fn new(cap: u32) -> Spin {
        Spin {
            cap,
            budget: cap,
            avg8: cap.saturating_mul(4),
            sleeps_in_a_row: 0,
        }
    }

    /// Polls the next wait spins before it arms the interrupt.
    pub(crate) fn budget(&self) -> u32 {
        self.budget
    }

    /// A completion was found after `polls` polls of spinning.
    pub(crate) fn found(&mut self, polls: u32) {
        self.sleeps_in_a_row = 0;
        // avg = 7/8 avg + 1/8 polls, in eighths.
        self.avg8 = self.avg8 - self.avg8 / 8 + polls.min(self.cap);
        self.budget = (self.avg8 / 4).clamp(MIN_BUDGET.min(self.cap), self.cap);
    }

    /// The whole budget went by without a completion: the wait sleeps.
    pub(crate) fn slept(&mut self) {
        self.sleeps_in_a_row += 1;
        self.budget = if self.sleeps_in_a_row % PROBE_EVERY == 0 {
            self.cap
        } else {
            (self.budget / 2).max(MIN_BUDGET.min(self.cap))
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_follows_twice_the_average_and_stays_in_bounds() {
        let mut s = Spin::new(4096);
        assert_eq!(s.budget(), 4096, "the first wait spins the cap");
        for _ in 0..64 {
            s.found(100);
        }
        // The average converges on 100 polls: the budget on 200.
        assert!((190..=210).contains(&s.budget()), "{}", s.budget());
        for _ in 0..64 {
            s.found(1);
        }
        assert_eq!(s.budget(), MIN_BUDGET, "never below the floor");
        for _ in 0..64 {
            s.found(1_000_000);
        }
        assert_eq!(s.budget(), 4096, "never above the cap");
    }

    #[test]
    fn sleeping_halves_the_budget_and_every_32nd_sleep_probes_the_cap() {
        let mut s = Spin::new(1024);
        s.slept();
        assert_eq!(s.budget(), 512);
        for _ in 1..PROBE_EVERY - 1 {
            s.slept();
        }
        assert_eq!(s.budget(), MIN_BUDGET);
        s.slept();
        assert_eq!(s.budget(), 1024, "the 32nd sleep in a row probes the cap");
        s.found(10);
        assert!(
            s.budget() < 1024,
            "a find resets the count and the budget adapts"
        );
    }

    #[test]
    fn a_cap_below_the_floor_is_the_budget() {
        let mut s = Spin::new(4);
        s.found(0);
        assert_eq!(s.budget(), 4);
        s.slept();
        assert_eq!(s.budget(), 4);
        let mut off = Spin::new(0);
        off.found(0);
        off.slept();
        assert_eq!(off.budget(), 0, "cap 0: interrupt mode");
    }
}
