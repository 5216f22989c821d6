//! The one retry policy: how long to wait after consecutive failures (rule `write-backoff`).
//!
//! Written once for the three callers that retry: the lease [`Machine`](super::Machine) (every
//! store call, writes and reads), the observer's reads ([`crate::observe`]) and the restarts
//! of a [`LeaderOnly`](crate::LeaderOnly) actor (through [`doubling`]). Each caller keeps a
//! [`Streak`] (or, for `LeaderOnly`, a count) and asks it how long to wait; none computes a
//! wait of its own, so a change of policy (jitter, a server's `Retry-After`) is made here
//! once, in [`Streak::after_failure`] and [`doubling`].

use std::time::Duration;

use crate::timing::Timing;

/// The wait after the `n`th consecutive failure (1-based; 0 counts as 1): `base`, doubled
/// per failure after the first, at most `cap`. Saturates instead of overflowing, so any
/// count is safe.
pub(crate) fn doubling(base: Duration, n: u32, cap: Duration) -> Duration {
    let factor = 2u32.saturating_pow(n.saturating_sub(1));
    base.saturating_mul(factor).min(cap)
}

/// What a failed call was, as far as the policy cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Failure {
    /// It was a write (a failed write's streak is not ended by a successful read).
    pub write: bool,
    /// Retrying may fix it (timeout, unavailable), as opposed to a definite refusal
    /// (forbidden, invalid) that asking again soon would only repeat.
    pub transient: bool,
}

/// Who is waiting, which decides how the wait grows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pace {
    /// A lease's holder: retries every `retry` period, as client-go does. Its renew deadline
    /// bounds the attempts, and waiting longer would only make it step down sooner.
    Holder {
        /// The retry period.
        retry: Duration,
    },
    /// Anyone else calling for a lease: a transient failure is retried after `retry`; a
    /// definite refusal doubles the wait per consecutive refusal, up to `cap`, since asking
    /// again soon would get the same answer.
    Candidate {
        /// The retry period.
        retry: Duration,
        /// The longest wait.
        cap: Duration,
    },
    /// A reader nothing waits on (an observer): every failure, transient or not, doubles the
    /// wait up to `cap`, so that an outage is not met with a read every retry period.
    Reader {
        /// The first wait.
        retry: Duration,
        /// The longest wait.
        cap: Duration,
    },
}

impl Pace {
    /// The pace of a lease's caller with `timing`: a holder's, or a candidate's capped at the
    /// lease duration (never below one retry period).
    pub(crate) fn lease(timing: &Timing, holder: bool) -> Pace {
        let retry = timing.retry_period();
        if holder {
            Pace::Holder { retry }
        } else {
            Pace::Candidate {
                retry,
                cap: timing.lease_duration().max(retry),
            }
        }
    }

    /// The pace of a reader with `timing`: doubling from the retry period up to the lease
    /// duration (never below one retry period).
    pub(crate) fn reader(timing: &Timing) -> Pace {
        let retry = timing.retry_period();
        Pace::Reader {
            retry,
            cap: timing.lease_duration().max(retry),
        }
    }
}

/// A streak of consecutive failed calls, and the wait it earns.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Streak {
    /// Consecutive failed calls.
    failures: u32,
    /// Consecutive definite refusals among them (what a candidate's wait doubles on).
    refusals: u32,
    /// The failures of the latest streak were all reads: then a successful read ends it. Set
    /// when a streak starts and cleared by its first failed write; left as it is when a streak
    /// ends, so it describes the latest streak until the next one starts.
    reads_only: bool,
}

impl Streak {
    /// Records a failed call and returns how long to wait before the next one, at `pace`.
    pub(crate) fn after_failure(&mut self, failure: Failure, pace: Pace) -> Duration {
        if self.failures == 0 {
            self.reads_only = true;
        }
        self.failures = self.failures.saturating_add(1);
        if failure.write {
            self.reads_only = false;
        }
        if !failure.transient {
            self.refusals = self.refusals.saturating_add(1);
        }
        // (Jitter, or a server's Retry-After, would be applied here, once for every caller.)
        match pace {
            Pace::Holder { retry } => retry,
            Pace::Candidate { retry, .. } if failure.transient => retry,
            Pace::Candidate { retry, cap } => doubling(retry, self.refusals, cap),
            Pace::Reader { retry, cap } => doubling(retry, self.failures, cap),
        }
    }

    /// Records a successful call. A successful write ends the streak; a successful read ends
    /// it only if the streak's failures were all reads (a read that works says nothing of the
    /// writes that failed). `true` if the streak (and so its wait) ended.
    pub(crate) fn after_success(&mut self, write: bool) -> bool {
        if write || self.reads_only {
            self.failures = 0;
            self.refusals = 0;
            return true;
        }
        false
    }

    /// Consecutive failed calls.
    pub(crate) fn failures(&self) -> u32 {
        self.failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    const READ: Failure = Failure {
        write: false,
        transient: true,
    };
    const TIMEOUT: Failure = Failure {
        write: true,
        transient: true,
    };
    const FORBIDDEN: Failure = Failure {
        write: true,
        transient: false,
    };

    fn timing() -> Timing {
        Timing::new(secs(15), secs(10), secs(2)).unwrap()
    }

    #[test]
    fn doubling_starts_at_base_and_stops_at_the_cap() {
        assert_eq!(doubling(secs(1), 0, secs(30)), secs(1));
        assert_eq!(doubling(secs(1), 1, secs(30)), secs(1));
        assert_eq!(doubling(secs(1), 2, secs(30)), secs(2));
        assert_eq!(doubling(secs(1), 5, secs(30)), secs(16));
        assert_eq!(doubling(secs(1), 6, secs(30)), secs(30));
        // Any count is safe: it saturates rather than overflows.
        assert_eq!(doubling(secs(1), u32::MAX, secs(30)), secs(30));
        assert_eq!(doubling(secs(3), 1, secs(2)), secs(2), "the cap wins");
    }

    #[test]
    fn a_holder_retries_every_retry_period_whatever_the_failure() {
        let mut streak = Streak::default();
        for _ in 0..10 {
            let wait = streak.after_failure(FORBIDDEN, Pace::lease(&timing(), true));
            assert_eq!(wait, secs(2));
        }
        assert_eq!(streak.failures(), 10);
    }

    #[test]
    fn a_candidate_doubles_per_refusal_up_to_the_lease_duration() {
        let mut streak = Streak::default();
        let pace = Pace::lease(&timing(), false);
        let waits: Vec<_> = (0..5)
            .map(|_| streak.after_failure(FORBIDDEN, pace))
            .collect();
        assert_eq!(waits, [secs(2), secs(4), secs(8), secs(15), secs(15)]);
        // A transient failure is retried after a retry period, and does not double.
        assert_eq!(streak.after_failure(TIMEOUT, pace), secs(2));
        assert_eq!(streak.after_failure(FORBIDDEN, pace), secs(15));
    }

    #[test]
    fn a_reader_doubles_per_failure_of_any_kind() {
        let mut streak = Streak::default();
        let pace = Pace::reader(&timing());
        let waits: Vec<_> = (0..5).map(|_| streak.after_failure(READ, pace)).collect();
        assert_eq!(waits, [secs(2), secs(4), secs(8), secs(15), secs(15)]);
    }

    #[test]
    fn the_cap_is_never_below_a_retry_period() {
        // A retry period longer than the lease duration would otherwise shrink the wait.
        let pace = Pace::lease(&Timing::new(secs(3), secs(2), secs(1)).unwrap(), false);
        assert_eq!(
            pace,
            Pace::Candidate {
                retry: secs(1),
                cap: secs(3)
            }
        );
        let Pace::Reader { cap, .. } = Pace::reader(&timing()) else {
            unreachable!()
        };
        assert_eq!(cap, secs(15));
    }

    #[test]
    fn a_successful_read_does_not_end_a_streak_of_failed_writes() {
        let mut streak = Streak::default();
        let pace = Pace::lease(&timing(), false);
        streak.after_failure(READ, pace);
        streak.after_failure(FORBIDDEN, pace);
        assert!(
            !streak.after_success(false),
            "a read says nothing of the writes"
        );
        assert_eq!(streak.failures(), 2);
        assert_eq!(
            streak.after_failure(FORBIDDEN, pace),
            secs(4),
            "still doubling"
        );
        assert!(streak.after_success(true), "a write that works ends it");
        assert_eq!(streak.failures(), 0);
        assert_eq!(
            streak.after_failure(FORBIDDEN, pace),
            secs(2),
            "a new streak"
        );
    }

    #[test]
    fn a_successful_read_ends_a_streak_of_failed_reads() {
        let mut streak = Streak::default();
        let pace = Pace::reader(&timing());
        streak.after_failure(READ, pace);
        streak.after_failure(READ, pace);
        assert!(streak.after_success(false));
        assert_eq!(streak.failures(), 0);
        assert_eq!(streak.after_failure(READ, pace), secs(2));
    }
}
