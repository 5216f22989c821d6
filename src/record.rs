//! The records dsync keeps in a store: [`LeaseKey`], [`LeaseRecord`], [`StoredLease`] and
//! [`WatchEvent`]. The bottom layer of the crate: plain data, no IO, no other module of the
//! crate.

use std::fmt;
use std::time::{Duration, SystemTime};

/// Namespace and name of one Lease object.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LeaseKey {
    /// Kubernetes namespace.
    pub namespace: String,
    /// Lease object name.
    pub name: String,
}

impl LeaseKey {
    /// A key from namespace and name.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        LeaseKey {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for LeaseKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// The fields of a `coordination.k8s.io/v1` `LeaseSpec` that leader election uses.
///
/// Times are wall-clock times as written by the holder. dsync writes them for people and peers
/// to read but never judges expiry from them: expiry is judged from when *this* process saw the
/// record change (see [`crate::lease`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeaseRecord {
    /// Who holds the lease; `None` or empty: nobody.
    pub holder_identity: Option<String>,
    /// How long others must wait after the last change before taking over.
    pub lease_duration_seconds: Option<i32>,
    /// When the current holder acquired it.
    pub acquire_time: Option<SystemTime>,
    /// When the current holder last renewed it.
    pub renew_time: Option<SystemTime>,
    /// How many times the holder changed; dsync's fencing token.
    pub lease_transitions: Option<i32>,
    /// `spec.strategy` (coordinated leader election); kept as found.
    pub strategy: Option<String>,
    /// `spec.preferredHolder` (coordinated leader election); kept as found.
    pub preferred_holder: Option<String>,
    /// The successor a leader handed the lease to ([`PREFERRED_HOLDER_ANNOTATION`]): written with the
    /// release of a handoff; other dsync candidates leave the free lease to it for one lease
    /// duration. Cleared by the next acquisition.
    pub successor: Option<String>,
    /// A handoff asked for from outside the leader ([`HANDOFF_REQUEST_ANNOTATION`], e.g. with
    /// `kubectl annotate`): the dsync leader hands the lease to this identity, then clears it.
    pub handoff_request: Option<String>,
    /// The pod of the holder ([`HOLDER_POD_ANNOTATION`]), for the server-side holder fence
    /// (see [`crate::fencing`]) where the holder identity is not the pod name. Written with
    /// each acquisition by a replica that knows its pod
    /// ([`Config::pod_name`](crate::Config::pod_name)), kept by renewals, cleared by a release.
    pub holder_pod: Option<String>,
}

/// The annotation a handoff's release writes on the Lease: the identity the lease was handed
/// to. Other dsync candidates do not contend for the free lease for one lease duration (the
/// grace in which the successor takes it); client-go peers do not know it and simply contend.
/// dsync's own annotation, read into [`LeaseRecord::successor`]; not the `spec.preferredHolder`
/// of coordinated leader election ([`LeaseRecord::preferred_holder`]).
pub const PREFERRED_HOLDER_ANNOTATION: &str = "dsync.io/preferred-holder";

/// The annotation that asks the current dsync leader to hand its lease to the identity it
/// names: `kubectl annotate lease <name> dsync.io/handoff-to=<pod>`. The leader carries it
/// out (ends its term, drains, then releases to that identity) and clears it.
pub const HANDOFF_REQUEST_ANNOTATION: &str = "dsync.io/handoff-to";

/// The annotation naming the pod of the Lease's holder, written with each acquisition by a
/// replica that knows its pod name, and removed by a release. The holder fence of
/// `deploy/fencing/` admits writes to protected objects only from this pod (or, without the
/// annotation, from the pod named by `spec.holderIdentity`).
pub const HOLDER_POD_ANNOTATION: &str = "dsync.io/holder-pod";

impl LeaseRecord {
    /// The holder, treating an empty string as nobody (client-go writes `""` on release).
    pub fn holder(&self) -> Option<&str> {
        self.holder_identity.as_deref().filter(|h| !h.is_empty())
    }

    /// The successor of a handoff, if the lease is free and was handed to someone.
    pub fn handed_to(&self) -> Option<&str> {
        if self.holder().is_some() {
            return None;
        }
        self.successor.as_deref().filter(|s| !s.is_empty())
    }

    /// A pending request to hand the lease to someone (see [`HANDOFF_REQUEST_ANNOTATION`]).
    pub fn requested_handoff(&self) -> Option<&str> {
        self.handoff_request.as_deref().filter(|s| !s.is_empty())
    }

    /// Whether the lease is coordinated (KEP-4355): `spec.strategy` is set (and not empty), so
    /// the API server's election controller picks its holder.
    pub fn coordinated(&self) -> bool {
        self.strategy.as_deref().is_some_and(|s| !s.is_empty())
    }

    /// `spec.preferredHolder`, treating an empty string as unset: whom the election controller
    /// wants the current holder to give the lease up to.
    pub fn preferred(&self) -> Option<&str> {
        self.preferred_holder.as_deref().filter(|h| !h.is_empty())
    }

    /// The fencing token the record carries: `leaseTransitions`, 0 when unset.
    pub fn token(&self) -> i32 {
        self.lease_transitions.unwrap_or(0)
    }

    /// The lease duration the record declares (`leaseDurationSeconds`), if it is positive.
    /// `None` when unset or not positive (no API server accepts that).
    pub fn declared_duration(&self) -> Option<Duration> {
        self.lease_duration_seconds
            .filter(|secs| *secs > 0)
            .map(|secs| Duration::from_secs(secs.unsigned_abs().into()))
    }

    /// How long the record's holder may go without a change before others may take over: its
    /// declared duration, or `ours` when it declares none (a holder that declares nothing is
    /// judged like a peer with our timing). `None` when it declares a duration that is not
    /// positive: such a record is never judged expired.
    pub fn lease_duration(&self, ours: Duration) -> Option<Duration> {
        match self.lease_duration_seconds {
            None => Some(ours),
            Some(_) => self.declared_duration(),
        }
    }
}

/// A lease record as stored, with the version that guards the next write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredLease {
    /// Lease object name.
    pub name: String,
    /// The record.
    pub record: LeaseRecord,
    /// Opaque version (`metadata.resourceVersion`); changes on every write.
    pub resource_version: String,
    /// The object's unique id (`metadata.uid`): one per created object, a new one after a
    /// delete and create. `None` from a store that has no such id. A [`Term`](crate::Term)
    /// carries it in its [fence](crate::Term::fence).
    pub uid: Option<String>,
}

/// A change seen by [`LeaseStore::watch`](crate::store::LeaseStore::watch).
#[derive(Debug, Clone, PartialEq, Eq)]
// Nearly every event is `Applied` (deletions are rare): boxing the lease would cost an
// allocation per event on the renewal path to save bytes on the rare one.
#[allow(clippy::large_enum_variant)]
pub enum WatchEvent {
    /// The lease was created or replaced.
    Applied(StoredLease),
    /// The lease was deleted.
    Deleted {
        /// Lease object name.
        name: String,
    },
}

/// Whether a watched version is newer than the one we hold. Kubernetes resource versions are
/// etcd revisions: integers that grow with every write. Versions that are not integers are only
/// compared for equality (then anything different counts as newer).
pub fn is_newer(candidate: &str, current: Option<&str>) -> bool {
    let Some(current) = current else {
        return true;
    };
    match (digits(candidate), digits(current)) {
        // Without leading zeros, the longer number is the larger; of two as long, the one
        // that sorts later. (No parsing: this runs several times per renewal, and it orders
        // numbers of any length.)
        (Some(a), Some(b)) => (a.len(), a) > (b.len(), b),
        _ => candidate != current,
    }
}

/// The digits of a non-negative decimal integer without its leading zeros, or `None`.
fn digits(s: &str) -> Option<&[u8]> {
    let bytes = s.as_bytes();
    if bytes.is_empty() || !bytes.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let first = bytes.iter().position(|&b| b != b'0').unwrap_or(bytes.len());
    Some(&bytes[first..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_is_the_transitions_or_zero() {
        let mut record = LeaseRecord::default();
        assert_eq!(record.token(), 0);
        record.lease_transitions = Some(7);
        assert_eq!(record.token(), 7);
    }

    #[test]
    fn a_record_without_a_positive_duration_declares_none_and_never_expires() {
        let ours = Duration::from_secs(15);
        let with = |secs| LeaseRecord {
            lease_duration_seconds: secs,
            ..LeaseRecord::default()
        };
        assert_eq!(with(None).declared_duration(), None);
        assert_eq!(with(None).lease_duration(ours), Some(ours));
        assert_eq!(
            with(Some(3)).declared_duration(),
            Some(Duration::from_secs(3))
        );
        assert_eq!(
            with(Some(3)).lease_duration(ours),
            Some(Duration::from_secs(3))
        );
        assert_eq!(with(Some(0)).declared_duration(), None);
        assert_eq!(with(Some(0)).lease_duration(ours), None);
        assert_eq!(with(Some(-5)).lease_duration(ours), None);
    }
}
