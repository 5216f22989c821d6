//! The one follower of a lease by local observation (rule `local-expiry`): [`Observed`].
//!
//! Whoever judges whether a lease's holder is still live (the lease [`Machine`](super::Machine),
//! the observer of [`crate::observe`], the CLI's `status --watch`) remembers the version it
//! last saw and the local instant it first saw that version, and says the holder has expired
//! once that instant is a lease duration behind. The holder's `renewTime` is another machine's
//! wall clock and is never used, so clock skew between replicas cannot make two leaders, nor an
//! observer report a live holder as expired.

use std::time::{Duration, Instant};

use crate::record::{LeaseRecord, StoredLease, is_newer};

/// Something followed by version: a stored lease, or what a caller keeps of one (the CLI's
/// rows). [`Observed`] needs only its version and its record.
pub trait Versioned {
    /// Its version (`metadata.resourceVersion`): any change to the lease changes it.
    fn version(&self) -> &str;
    /// The record it carries.
    fn record(&self) -> &LeaseRecord;
}

impl Versioned for StoredLease {
    fn version(&self) -> &str {
        &self.resource_version
    }

    fn record(&self) -> &LeaseRecord {
        &self.record
    }
}

/// What we last saw of the lease, and since when (local time) it has looked like this.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed<L = StoredLease> {
    /// The lease as read or watched; `None`: it does not exist.
    pub lease: Option<L>,
    /// When this process first saw the current version (local monotonic time).
    pub changed_at: Instant,
}

impl<L: Versioned> Observed<L> {
    /// Folds a fresh read into the previous observation: `changed_at` moves only when the
    /// version (or existence) differs from what was seen before.
    pub fn update(previous: Option<&Observed<L>>, lease: Option<L>, now: Instant) -> Self {
        let same = previous.is_some_and(|p| p.version() == lease.as_ref().map(L::version));
        let changed_at = match previous {
            Some(previous) if same => previous.changed_at,
            _ => now,
        };
        Observed { lease, changed_at }
    }

    /// The observed version; `None` when the lease does not exist.
    pub fn version(&self) -> Option<&str> {
        self.lease.as_ref().map(L::version)
    }

    /// The observed record; `None` when the lease does not exist.
    pub fn record(&self) -> Option<&LeaseRecord> {
        self.lease.as_ref().map(L::record)
    }

    /// The observed holder; `None` when the lease is free or does not exist.
    pub fn holder(&self) -> Option<&str> {
        self.record()?.holder()
    }

    /// Whether `version` is older than the observed one: an answer that a newer observation
    /// (a watch event) has already overtaken, which must not move the observation backwards.
    /// Versions are compared as [`is_newer`] does; nothing is older than a missing lease.
    pub fn is_older(&self, version: &str) -> bool {
        match self.version() {
            Some(current) => version != current && !is_newer(version, Some(current)),
            None => false,
        }
    }

    /// The instant the observed version has gone unchanged for `duration`: the expiry of a
    /// lease of that duration, by local observation.
    pub fn expires_at(&self, duration: Duration) -> Instant {
        self.changed_at + duration
    }

    /// When the observed holder expires by local observation: its declared lease duration
    /// after we first saw the current version. `ours`: the duration assumed for a record that
    /// declares none (`None`: such a record is never judged expired, for a bystander with no
    /// timing of its own). `None` without a holder, or with a declared duration that is not
    /// positive (no API server accepts that: never judged expired).
    pub fn expiry(&self, ours: Option<Duration>) -> Option<Instant> {
        let record = self.record()?;
        record.holder()?;
        let duration = match ours {
            Some(ours) => record.lease_duration(ours)?,
            None => record.declared_duration()?,
        };
        Some(self.expires_at(duration))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(version: &str, holder: Option<&str>, seconds: Option<i32>) -> StoredLease {
        StoredLease {
            name: "l".into(),
            record: LeaseRecord {
                holder_identity: holder.map(str::to_owned),
                lease_duration_seconds: seconds,
                ..LeaseRecord::default()
            },
            resource_version: version.into(),
            uid: None,
        }
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn the_clock_restarts_only_when_the_version_changes() {
        let t0 = Instant::now();
        let first = Observed::update(None, Some(lease("1", Some("a"), Some(15))), t0);
        assert_eq!(first.changed_at, t0);
        let same = Observed::update(
            Some(&first),
            Some(lease("1", Some("a"), Some(15))),
            t0 + secs(5),
        );
        assert_eq!(same.changed_at, t0, "the same version is no change");
        let renewed = Observed::update(
            Some(&same),
            Some(lease("2", Some("a"), Some(15))),
            t0 + secs(6),
        );
        assert_eq!(renewed.changed_at, t0 + secs(6));
        let gone = Observed::update(Some(&renewed), None, t0 + secs(7));
        assert_eq!(gone.changed_at, t0 + secs(7), "a deletion is a change");
        let still_gone = Observed::update(Some(&gone), None, t0 + secs(8));
        assert_eq!(still_gone.changed_at, t0 + secs(7));
    }

    #[test]
    fn a_holder_expires_a_lease_duration_after_we_saw_it_change() {
        let t0 = Instant::now();
        let held = Observed::update(None, Some(lease("1", Some("a"), Some(15))), t0);
        assert_eq!(
            held.expiry(Some(secs(40))),
            Some(t0 + secs(15)),
            "its own duration"
        );
        assert_eq!(held.expiry(None), Some(t0 + secs(15)));
        let silent = Observed::update(None, Some(lease("1", Some("a"), None)), t0);
        assert_eq!(silent.expiry(Some(secs(40))), Some(t0 + secs(40)), "ours");
        assert_eq!(silent.expiry(None), None, "no timing, no judgement");
        let invalid = Observed::update(None, Some(lease("1", Some("a"), Some(0))), t0);
        assert_eq!(invalid.expiry(Some(secs(40))), None, "never expires");
        let free = Observed::update(None, Some(lease("1", None, Some(15))), t0);
        assert_eq!(free.expiry(Some(secs(40))), None, "nobody to expire");
        let missing = Observed::<StoredLease>::update(None, None, t0);
        assert_eq!(missing.expiry(Some(secs(40))), None);
    }

    #[test]
    fn only_an_overtaken_version_is_older() {
        let t0 = Instant::now();
        let seen = Observed::update(None, Some(lease("7", None, None)), t0);
        assert!(seen.is_older("6"));
        assert!(!seen.is_older("7"), "the same version is not older");
        assert!(!seen.is_older("8"));
        let missing = Observed::<StoredLease>::update(None, None, t0);
        assert!(
            !missing.is_older("1"),
            "nothing is older than a missing lease"
        );
    }
}
