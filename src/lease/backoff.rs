//! The one retry policy: how long to wait after consecutive failures (rule `write-backoff`).
//!
//! Written once for the three callers that retry: the lease [`Machine`](super::Machine) (every
//! store call, writes and reads), the observer's reads ([`crate::observe`]) and the restarts
//! of a [`LeaderOnly`](crate::LeaderOnly) actor (through [`doubling`]). Each caller keeps a
//! [`Streak`] (or, for `LeaderOnly`, a count) and asks it how long to wait; none computes a
//! wait of its own, so the policy is made here once, in [`Streak::after_failure`] and
//! [`doubling`]:
//!
//! * a **holder** retries every retry period until its renew deadline (as client-go does):
//!   waiting longer would only make it step down sooner;
//! * a **candidate** meeting transient failures (timeouts, 5xx, 429) waits with exponential
//!   backoff and *full jitter*: uniformly at random between a tenth of a retry period and
//!   `retry · 2^(n−1)` (at most the lease duration), so that an outage is not met with a write
//!   per lease per retry period, and replicas cut off together do not come back in step;
//!   definite refusals (403, 422) double without jitter;
//! * a **reader** doubles per failure;
//! * a server that says how long to wait (`Retry-After`, [`StoreError::retry_after`]) is
//!   obeyed by everyone: the wait is never shorter than what it asked (a holder's machine still
//!   steps down at its deadline).
//!
//! The randomness is a small generator seeded per machine ([`Streak::seeded`]), so the lease
//! machine stays a pure function of its inputs and its seed.
//!
//! [`StoreError::retry_after`]: crate::store::StoreError::retry_after

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
    /// How long the server asked us to wait, if it said (`Retry-After`).
    pub retry_after: Option<Duration>,
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
    /// The jitter's generator state (splitmix64).
    rng: u64,
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
    /// A streak whose jitter draws from `seed` (replicas and leases with different seeds do
    /// not retry in step).
    pub(crate) fn seeded(seed: u64) -> Streak {
        Streak {
            rng: seed,
            ..Streak::default()
        }
    }

    /// A uniform draw from `[low, high]` (`low` if `high <= low`).
    pub(crate) fn uniform(&mut self, low: Duration, high: Duration) -> Duration {
        // splitmix64: tiny, and good enough to spread retries.
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        let span = high.saturating_sub(low).as_nanos() as u64;
        if span == 0 {
            return low;
        }
        low + Duration::from_nanos(z % (span + 1))
    }

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
        let wait = match pace {
            Pace::Holder { retry } => retry,
            // Full jitter, with a floor so that a retry is never immediate: a tenth of a retry
            // period keeps a candidate's worst case at ten calls per period per lease, where
            // no floor would let a run of small draws hammer a server that is struggling.
            Pace::Candidate { retry, cap } if failure.transient => {
                let transient = self.failures.saturating_sub(self.refusals);
                let high = doubling(retry, transient, cap);
                self.uniform(retry / 10, high)
            }
            Pace::Candidate { retry, cap } => doubling(retry, self.refusals, cap),
            Pace::Reader { retry, cap } => doubling(retry, self.failures, cap),
        };
        wait.max(failure.retry_after.unwrap_or_default())
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
        retry_after: None,
    };
    const TIMEOUT: Failure = Failure {
        write: true,
        transient: true,
        retry_after: None,
    };
    const FORBIDDEN: Failure = Failure {
        write: true,
        transient: false,
        retry_after: None,
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
    fn write_backoff_a_holder_retries_every_retry_period_whatever_the_failure() {
        let mut streak = Streak::default();
        for _ in 0..10 {
            let wait = streak.after_failure(FORBIDDEN, Pace::lease(&timing(), true));
            assert_eq!(wait, secs(2));
            // Transient failures too: no growth, no jitter, the renewal keeps its schedule.
            let wait = streak.after_failure(TIMEOUT, Pace::lease(&timing(), true));
            assert_eq!(wait, secs(2));
        }
        assert_eq!(streak.failures(), 20);
    }

    #[test]
    fn a_candidate_doubles_per_refusal_up_to_the_lease_duration() {
        let mut streak = Streak::default();
        let pace = Pace::lease(&timing(), false);
        let waits: Vec<_> = (0..5)
            .map(|_| streak.after_failure(FORBIDDEN, pace))
            .collect();
        assert_eq!(waits, [secs(2), secs(4), secs(8), secs(15), secs(15)]);
        // A transient failure is jittered (the first of its kind within one retry period),
        // and does not reset the refusals' doubling.
        let wait = streak.after_failure(TIMEOUT, pace);
        assert!(wait >= secs(2) / 10 && wait <= secs(2), "{wait:?}");
        assert_eq!(streak.after_failure(FORBIDDEN, pace), secs(15));
    }

    #[test]
    fn write_backoff_a_candidate_backs_off_exponentially_with_full_jitter() {
        let pace = Pace::lease(&timing(), false);
        let (floor, cap) = (secs(2) / 10, secs(15));
        // Over many streaks, the n-th wait stays within [floor, min(cap, 2 s · 2^(n-1))], and
        // the draws spread over that range (full jitter: not bunched at either end).
        for n in 1..=6u32 {
            let high = doubling(secs(2), n, cap);
            let waits: Vec<Duration> = (0..400u64)
                .map(|seed| {
                    let mut streak = Streak::seeded(seed);
                    (1..n).for_each(|_| {
                        streak.after_failure(TIMEOUT, pace);
                    });
                    streak.after_failure(TIMEOUT, pace)
                })
                .collect();
            assert!(
                waits.iter().all(|w| *w >= floor && *w <= high),
                "n={n}: {waits:?}"
            );
            let below_half = waits.iter().filter(|w| **w < (floor + high) / 2).count();
            assert!(
                (100..=300).contains(&below_half),
                "n={n}: {below_half} of 400 draws below the middle"
            );
        }
        // The bound grows, up to the lease duration.
        let mut streak = Streak::seeded(7);
        let late: Vec<Duration> = (0..12)
            .map(|_| streak.after_failure(TIMEOUT, pace))
            .collect();
        assert!(late.iter().all(|w| *w <= cap));
        assert!(late[6..].iter().any(|w| *w > secs(4)), "{late:?}");
    }

    #[test]
    fn write_backoff_replicas_with_different_seeds_do_not_retry_in_step() {
        let pace = Pace::lease(&timing(), false);
        let waits = |seed| {
            let mut streak = Streak::seeded(seed);
            (0..5)
                .map(|_| streak.after_failure(TIMEOUT, pace))
                .collect::<Vec<_>>()
        };
        assert_ne!(waits(1), waits(2));
        assert_eq!(waits(3), waits(3), "a pure function of the seed");
    }

    #[test]
    fn write_backoff_a_servers_retry_after_is_obeyed_by_everyone() {
        let asked = |after| Failure {
            retry_after: Some(after),
            ..TIMEOUT
        };
        let candidate = Pace::lease(&timing(), false);
        let holder = Pace::lease(&timing(), true);
        // Longer than the policy's wait: honoured, by a candidate, a holder and a reader.
        assert_eq!(
            Streak::seeded(1).after_failure(asked(secs(9)), candidate),
            secs(9)
        );
        assert_eq!(
            Streak::default().after_failure(asked(secs(3)), holder),
            secs(3)
        );
        assert_eq!(
            Streak::default().after_failure(asked(secs(9)), Pace::reader(&timing())),
            secs(9)
        );
        // Shorter: it does not shorten the policy's wait.
        assert_eq!(
            Streak::default().after_failure(asked(secs(1)), holder),
            secs(2)
        );
        let wait = Streak::seeded(5).after_failure(asked(Duration::from_millis(1)), candidate);
        assert!(wait >= secs(2) / 10, "{wait:?}");
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
