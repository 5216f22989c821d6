//! The pure lease core: given what we know, decide what to do next.
//!
//! Nothing here does IO or reads a clock. [`decide`] takes the current instant, the latest
//! observation of the lease, our own claim on it (if any) and our intent, and returns a
//! [`Decision`]. Election and lock actors execute decisions and feed results back in; that
//! split (as in openraft's `engine` or kube-runtime's `watcher`) is what lets every rule below be
//! tested with plain `#[test]`s.
//!
//! # Rules
//!
//! * **Expiry by local observation.** A lease held by someone else may be taken over once its
//!   record has not changed for its `leaseDurationSeconds`, measured from when *we* first saw the
//!   current version ([`Observed::changed_at`]). The holder's `renewTime` is another machine's
//!   wall clock and is never used, so clock skew between replicas cannot cause two leaders.
//! * **Compare-and-swap on every write.** Every write names the version it is based on; a
//!   conflict means "re-read and decide again".
//! * **Holders step down first.** A holder renews every `retry_period`. If it has not completed a
//!   renewal within `renew_deadline` of the start of its last successful one, it steps down.
//!   Others wait at least `lease_duration > renew_deadline` from a moment *after* that write
//!   started, so the old term has ended before a new one can begin.
//! * **Fencing.** Every acquisition increments `leaseTransitions`; the new value is the term's
//!   fencing token, so tokens of successive terms strictly increase.

use std::time::{Instant, SystemTime};

pub(crate) mod driver;

use crate::config::Timing;
use crate::store::{LeaseRecord, StoredLease};

/// What we last saw of the lease, and since when (local time) it has looked like this.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    /// The lease as read or watched; `None`: it does not exist.
    pub lease: Option<StoredLease>,
    /// When this process first saw the current version (local monotonic time).
    pub changed_at: Instant,
}

impl Observed {
    /// Folds a fresh read into the previous observation: `changed_at` moves only when the
    /// version (or existence) differs from what was seen before.
    pub fn update(previous: Option<&Observed>, lease: Option<StoredLease>, now: Instant) -> Self {
        let version = |l: &Option<StoredLease>| l.as_ref().map(|l| l.resource_version.clone());
        match previous {
            Some(prev) if version(&prev.lease) == version(&lease) => Observed {
                lease,
                changed_at: prev.changed_at,
            },
            _ => Observed {
                lease,
                changed_at: now,
            },
        }
    }
}

/// Our own claim on the lease while we hold it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// Fencing token of this term (`leaseTransitions` written when acquiring).
    pub token: i32,
    /// When the write that acquired the lease was started.
    pub acquired_at: Instant,
    /// When the last *successful* write (acquire or renew) was started. Measured from the
    /// start, not the end, so a slow response can only make us step down earlier.
    pub renewed_at: Instant,
}

/// Why a term ended.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum StepDownReason {
    /// No renewal succeeded within `renew_deadline`.
    RenewDeadlineExceeded,
    /// Someone else wrote the lease: it names another holder or another term.
    Superseded {
        /// The new holder, if any.
        holder: Option<String>,
    },
    /// The lease object disappeared.
    LeaseDeleted,
}

/// What to do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Nothing observed yet: read the lease.
    Read,
    /// The lease does not exist: create it, held by us.
    Create {
        /// The record to create.
        record: LeaseRecord,
    },
    /// The lease is free or expired: take it over if still at `version`.
    Acquire {
        /// The record to write (holder = us, transitions + 1).
        record: LeaseRecord,
        /// The observed version the write is based on.
        version: String,
    },
    /// We hold it and it is time to renew.
    Renew {
        /// The record to write (renew time now).
        record: LeaseRecord,
        /// The version the write is based on.
        version: String,
    },
    /// We hold it; nothing to do before `until`.
    Hold {
        /// When to decide again.
        until: Instant,
    },
    /// Someone else holds it; it cannot be taken before `until` unless it changes.
    Follow {
        /// The current holder.
        holder: String,
        /// When it expires by our observation (or when a failed write may be retried).
        until: Instant,
    },
    /// We hold it and no longer want it: write it free if still at `version`.
    Release {
        /// The record to write (holder cleared).
        record: LeaseRecord,
        /// The version the write is based on.
        version: String,
    },
    /// Our term is over; cancel it before doing anything else.
    StepDown(StepDownReason),
    /// We neither hold nor want it: wait for a change or a new intent.
    Idle {
        /// The current holder, if any.
        holder: Option<String>,
        /// When a held lease expires by our observation, for callers that track expiry.
        expires: Option<Instant>,
    },
    /// Wait before retrying a failed write.
    Backoff {
        /// When to decide again.
        until: Instant,
    },
    /// The record cannot be interpreted; nothing is written.
    Invalid {
        /// What is wrong.
        reason: String,
    },
}

/// Everything [`decide`] looks at.
#[derive(Debug, Clone, Copy)]
pub struct Input<'a> {
    /// Local monotonic time.
    pub now: Instant,
    /// Wall-clock time, only written into records for people and peers to read.
    pub wall_now: SystemTime,
    /// Our holder identity.
    pub identity: &'a str,
    /// Our timing.
    pub timing: &'a Timing,
    /// The latest observation; `None` before the first read.
    pub observed: Option<&'a Observed>,
    /// Our claim, while we hold the lease.
    pub claim: Option<&'a Claim>,
    /// Whether we want to hold the lease (campaigning, or a lock with waiters).
    pub want: bool,
    /// After a failed write: no new write before this instant.
    pub retry_after: Option<Instant>,
}

/// Decides the next step. Pure: same input, same decision.
pub fn decide(input: &Input<'_>) -> Decision {
    let Some(observed) = input.observed else {
        return Decision::Read;
    };
    match input.claim {
        Some(claim) => decide_holding(input, observed, claim),
        None => decide_not_holding(input, observed),
    }
}

fn decide_holding(input: &Input<'_>, observed: &Observed, claim: &Claim) -> Decision {
    let timing = input.timing;
    let deadline = claim.renewed_at + timing.renew_deadline();
    if input.now >= deadline {
        return Decision::StepDown(StepDownReason::RenewDeadlineExceeded);
    }
    let Some(lease) = &observed.lease else {
        return Decision::StepDown(StepDownReason::LeaseDeleted);
    };
    if !is_our_term(&lease.record, input.identity, claim.token) {
        return Decision::StepDown(StepDownReason::Superseded {
            holder: lease.record.holder().map(str::to_owned),
        });
    }
    if !input.want {
        return Decision::Release {
            record: released(&lease.record, input.wall_now),
            version: lease.resource_version.clone(),
        };
    }
    let mut next = claim.renewed_at + timing.retry_period();
    if let Some(retry_after) = input.retry_after {
        next = next.max(retry_after);
    }
    if input.now >= next {
        Decision::Renew {
            record: renewed(&lease.record, input.identity, timing, input.wall_now),
            version: lease.resource_version.clone(),
        }
    } else {
        // Wake for the renewal, or at the deadline if retries pushed the renewal past it.
        Decision::Hold {
            until: next.min(deadline),
        }
    }
}

fn decide_not_holding(input: &Input<'_>, observed: &Observed) -> Decision {
    let holder_expiry = match &observed.lease {
        Some(lease) => match expiry(input, observed, &lease.record) {
            Ok(e) => e,
            Err(reason) => return Decision::Invalid { reason },
        },
        None => None,
    };
    let holder = observed
        .lease
        .as_ref()
        .and_then(|l| l.record.holder())
        .map(str::to_owned);
    if !input.want {
        return Decision::Idle {
            holder,
            expires: holder_expiry,
        };
    }
    if let Some(retry_after) = input.retry_after
        && input.now < retry_after
    {
        return match holder {
            Some(holder) => Decision::Follow {
                holder,
                until: retry_after.max(holder_expiry.unwrap_or(retry_after)),
            },
            None => Decision::Backoff { until: retry_after },
        };
    }
    let Some(lease) = &observed.lease else {
        return Decision::Create {
            record: acquired(None, input.identity, input.timing, input.wall_now),
        };
    };
    match (holder, holder_expiry) {
        (Some(holder), Some(until)) if input.now < until => Decision::Follow { holder, until },
        // Free, expired, or naming us without a claim (this identity restarted): take it,
        // as a new term with a new fencing token.
        _ => Decision::Acquire {
            record: acquired(
                Some(&lease.record),
                input.identity,
                input.timing,
                input.wall_now,
            ),
            version: lease.resource_version.clone(),
        },
    }
}

/// When a lease held by someone other than us expires by local observation; `None` when it is
/// free or names us. Errors on records no API server would accept.
fn expiry(
    input: &Input<'_>,
    observed: &Observed,
    record: &LeaseRecord,
) -> Result<Option<Instant>, String> {
    if let Some(t) = record.lease_transitions
        && t < 0
    {
        return Err(format!("spec.leaseTransitions is negative ({t})"));
    }
    let Some(holder) = record.holder() else {
        return Ok(None);
    };
    if holder == input.identity {
        return Ok(None);
    }
    let duration = match record.lease_duration_seconds {
        // A holder that declares no duration gets ours, like a peer with our timing.
        None => input.timing.lease_duration(),
        Some(secs) if secs > 0 => std::time::Duration::from_secs(secs as u64),
        Some(secs) => {
            return Err(format!(
                "spec.leaseDurationSeconds is {secs}; it must be greater than 0"
            ));
        }
    };
    Ok(Some(observed.changed_at + duration))
}

/// Whether `record` still describes the term we hold: our identity and our fencing token.
/// (A write of ours whose response was lost shows up as a new version of the same term.)
fn is_our_term(record: &LeaseRecord, identity: &str, token: i32) -> bool {
    record.holder() == Some(identity) && record.lease_transitions.unwrap_or(0) == token
}

/// Whether a watched version is newer than the one we hold. Kubernetes resource versions are
/// etcd revisions: integers that grow with every write. Versions that are not integers are only
/// compared for equality (then anything different counts as newer).
pub fn is_newer(candidate: &str, current: Option<&str>) -> bool {
    let Some(current) = current else {
        return true;
    };
    match (candidate.parse::<u64>(), current.parse::<u64>()) {
        (Ok(a), Ok(b)) => a > b,
        _ => candidate != current,
    }
}

/// The fencing token a record carries.
pub fn token_of(record: &LeaseRecord) -> i32 {
    record.lease_transitions.unwrap_or(0)
}

fn acquired(
    previous: Option<&LeaseRecord>,
    identity: &str,
    timing: &Timing,
    now: SystemTime,
) -> LeaseRecord {
    let transitions = match previous {
        None => 0,
        Some(prev) => prev.lease_transitions.unwrap_or(0).saturating_add(1),
    };
    LeaseRecord {
        holder_identity: Some(identity.to_owned()),
        lease_duration_seconds: Some(timing.lease_duration_seconds()),
        acquire_time: Some(now),
        renew_time: Some(now),
        lease_transitions: Some(transitions),
        strategy: previous.and_then(|p| p.strategy.clone()),
        preferred_holder: previous.and_then(|p| p.preferred_holder.clone()),
    }
}

fn renewed(current: &LeaseRecord, identity: &str, timing: &Timing, now: SystemTime) -> LeaseRecord {
    LeaseRecord {
        holder_identity: Some(identity.to_owned()),
        lease_duration_seconds: Some(timing.lease_duration_seconds()),
        renew_time: Some(now),
        ..current.clone()
    }
}

/// The record written on release: no holder, transitions kept (so the next token is higher), and
/// a one-second duration as client-go writes, so peers that ignore an empty holder still move on.
fn released(current: &LeaseRecord, now: SystemTime) -> LeaseRecord {
    LeaseRecord {
        holder_identity: None,
        lease_duration_seconds: Some(1),
        acquire_time: Some(now),
        renew_time: Some(now),
        ..current.clone()
    }
}

#[cfg(test)]
mod tests;
