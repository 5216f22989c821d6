//! Lease [`Timing`] (lease duration, renew deadline, retry period) and its validation. A bottom
//! layer of the crate: it depends on no other module.

use std::time::Duration;

/// Why a [`Timing`] was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TimingError {
    /// A duration is zero.
    #[error("{field} must be greater than zero")]
    Zero {
        /// `lease_duration`, `renew_deadline` or `retry_period`.
        field: &'static str,
    },
    /// A duration given in seconds is negative, not a number, or out of range.
    #[error("{field} must be a finite, non-negative number of seconds, got {value}")]
    BadSeconds {
        /// `lease_duration`, `renew_deadline` or `retry_period`.
        field: &'static str,
        /// The rejected value, as given.
        value: String,
    },
    /// Leases are stored in whole seconds (`leaseDurationSeconds`).
    #[error("lease_duration must be a whole number of seconds (up to {max}), got {got:?}", max = i32::MAX)]
    LeaseNotWholeSeconds {
        /// The rejected duration.
        got: Duration,
    },
    /// The holder must give up before others may take over.
    #[error("lease_duration ({lease:?}) must be greater than renew_deadline ({renew:?})")]
    LeaseNotAboveRenewDeadline {
        /// The lease duration.
        lease: Duration,
        /// The renew deadline.
        renew: Duration,
    },
    /// At least one retry must fit before the renew deadline, with jitter.
    #[error("renew_deadline ({renew:?}) must be greater than 1.2 × retry_period ({retry:?})")]
    RenewDeadlineTooShort {
        /// The renew deadline.
        renew: Duration,
        /// The retry period.
        retry: Duration,
    },
}

/// Lease timing, as in client-go's leader election.
///
/// * `lease_duration`: how long others wait, after they last saw the lease change, before they
///   may take it over.
/// * `renew_deadline`: how long the holder keeps trying to renew before it gives up (its term is
///   cancelled). Being shorter than `lease_duration` is what keeps two holders apart.
/// * `retry_period`: how often the holder renews, and how soon failed calls are retried.
///
/// Validated on construction: `lease_duration > renew_deadline > 1.2 × retry_period > 0`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    lease_duration: Duration,
    renew_deadline: Duration,
    retry_period: Duration,
}

impl Default for Timing {
    /// client-go's defaults: 15 s / 10 s / 2 s.
    fn default() -> Self {
        Timing {
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

impl Timing {
    /// Validated timing.
    pub fn new(
        lease_duration: Duration,
        renew_deadline: Duration,
        retry_period: Duration,
    ) -> Result<Self, TimingError> {
        for (field, d) in [
            ("lease_duration", lease_duration),
            ("renew_deadline", renew_deadline),
            ("retry_period", retry_period),
        ] {
            if d.is_zero() {
                return Err(TimingError::Zero { field });
            }
        }
        if lease_duration.subsec_nanos() != 0 || lease_duration.as_secs() > i32::MAX as u64 {
            return Err(TimingError::LeaseNotWholeSeconds {
                got: lease_duration,
            });
        }
        if lease_duration <= renew_deadline {
            return Err(TimingError::LeaseNotAboveRenewDeadline {
                lease: lease_duration,
                renew: renew_deadline,
            });
        }
        // renew > 1.2 * retry, compared exactly in nanoseconds: 5 * renew > 6 * retry.
        if renew_deadline.as_nanos() * 5 <= retry_period.as_nanos() * 6 {
            return Err(TimingError::RenewDeadlineTooShort {
                renew: renew_deadline,
                retry: retry_period,
            });
        }
        Ok(Timing {
            lease_duration,
            renew_deadline,
            retry_period,
        })
    }

    /// Validated timing from seconds, as configuration files and flags give it: negative,
    /// NaN and infinite values are [`TimingError::BadSeconds`], then as [`Timing::new`].
    ///
    /// ```
    /// use dsync::Timing;
    /// use dsync::timing::TimingError;
    /// let t = Timing::from_secs_f64(15.0, 10.0, 2.0).unwrap();
    /// assert_eq!(t, Timing::default());
    /// assert!(matches!(
    ///     Timing::from_secs_f64(15.0, -1.0, 2.0),
    ///     Err(TimingError::BadSeconds { field: "renew_deadline", .. })
    /// ));
    /// ```
    pub fn from_secs_f64(
        lease_duration: f64,
        renew_deadline: f64,
        retry_period: f64,
    ) -> Result<Self, TimingError> {
        let seconds = |field: &'static str, v: f64| {
            if v < 0.0 {
                return Err(TimingError::BadSeconds {
                    field,
                    value: v.to_string(),
                });
            }
            Duration::try_from_secs_f64(v).map_err(|_| TimingError::BadSeconds {
                field,
                value: v.to_string(),
            })
        };
        Timing::new(
            seconds("lease_duration", lease_duration)?,
            seconds("renew_deadline", renew_deadline)?,
            seconds("retry_period", retry_period)?,
        )
    }

    /// How long others wait after the last observed change before taking over.
    pub fn lease_duration(&self) -> Duration {
        self.lease_duration
    }

    /// How long a holder keeps trying to renew before it steps down.
    pub fn renew_deadline(&self) -> Duration {
        self.renew_deadline
    }

    /// How often the holder renews and failed calls are retried.
    pub fn retry_period(&self) -> Duration {
        self.retry_period
    }

    /// `lease_duration` in whole seconds, as written to `leaseDurationSeconds`.
    pub fn lease_duration_seconds(&self) -> i32 {
        // Checked in `new`: whole seconds that fit in an i32.
        self.lease_duration.as_secs() as i32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_timing_is_client_go_s() {
        let t = Timing::default();
        assert_eq!(t.lease_duration(), Duration::from_secs(15));
        assert_eq!(t.renew_deadline(), Duration::from_secs(10));
        assert_eq!(t.retry_period(), Duration::from_secs(2));
        assert_eq!(
            Timing::new(t.lease_duration(), t.renew_deadline(), t.retry_period()),
            Ok(t)
        );
    }

    #[test]
    fn timing_validation() {
        let s = Duration::from_secs;
        let ms = Duration::from_millis;
        assert_eq!(
            Timing::new(s(0), s(10), s(2)),
            Err(TimingError::Zero {
                field: "lease_duration"
            })
        );
        assert_eq!(
            Timing::new(s(15), s(0), s(2)),
            Err(TimingError::Zero {
                field: "renew_deadline"
            })
        );
        assert_eq!(
            Timing::new(s(15), s(10), s(0)),
            Err(TimingError::Zero {
                field: "retry_period"
            })
        );
        assert_eq!(
            Timing::new(s(10), s(10), s(2)),
            Err(TimingError::LeaseNotAboveRenewDeadline {
                lease: s(10),
                renew: s(10)
            })
        );
        // renew == 1.2 * retry exactly is rejected; just above is accepted.
        assert_eq!(
            Timing::new(s(15), ms(2400), s(2)),
            Err(TimingError::RenewDeadlineTooShort {
                renew: ms(2400),
                retry: s(2)
            })
        );
        assert!(Timing::new(s(15), ms(2401), s(2)).is_ok());
        assert_eq!(
            Timing::new(ms(1500), s(1), ms(100)),
            Err(TimingError::LeaseNotWholeSeconds { got: ms(1500) })
        );
        assert!(Timing::new(s(1), ms(500), ms(100)).is_ok());
    }
}
