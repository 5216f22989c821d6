//! The crate's error type.
//!
//! Variant names follow the Go package `tempcke/dsync` (`ErrBadResourceName`, `ErrAlreadyLocked`, ...) so a port
//! reads naturally, and every variant says *which* lease or lock it is about. Failures of the
//! backing store keep their cause as a `#[source]` ([`StoreError`]).

use std::time::Duration;

use crate::resource::NameError;
use crate::store::StoreError;
use crate::timing::TimingError;

/// Result alias for dsync operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything a dsync operation can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A namespace, scope or name is not a valid Kubernetes object name. Returned before any
    /// side effect (nothing is created, no actor is started).
    #[error("bad resource name {resource:?}")]
    BadResourceName {
        /// The resource as given (`namespace/scope/name`).
        resource: String,
        /// What exactly is wrong with it.
        #[source]
        source: NameError,
    },

    /// A configuration value (identity, environment variable, timing) is unusable.
    #[error("invalid configuration {key}: {reason}")]
    InvalidConfig {
        /// The setting, e.g. `KUBE_POD_NAME` or `identity`.
        key: &'static str,
        /// Why it was rejected.
        reason: String,
    },

    /// Lease timings violate `lease_duration > renew_deadline > 1.2 * retry_period`.
    #[error("invalid lease timing")]
    InvalidTiming(#[from] TimingError),

    /// The lease object exists but holds something dsync cannot interpret (edited by hand,
    /// negative duration, ...). dsync never overwrites such a record blindly.
    #[error("lease {lease} is in an invalid state: {reason}")]
    InvalidState {
        /// `namespace/name` of the lease.
        lease: String,
        /// What is wrong with it.
        reason: String,
    },

    /// The lease does not exist.
    #[error("lease {lease} not found")]
    NotFound {
        /// `namespace/name` of the lease.
        lease: String,
    },

    /// A leader whose lease has not been renewed for longer than the lease duration plus a
    /// tolerance ([`Election::check_health`](crate::Election::check_health)).
    #[error("election {lease} holds a term but last renewed {since:?} ago (limit {limit:?})")]
    LeaderNotRenewing {
        /// `namespace/name` of the lease.
        lease: String,
        /// Time since the last renewal.
        since: std::time::Duration,
        /// Lease duration plus tolerance.
        limit: std::time::Duration,
    },

    /// Nobody holds the election right now.
    #[error("election {lease} has no leader right now")]
    NoLeader {
        /// `namespace/name` of the lease.
        lease: String,
    },

    /// `try_lock` found the lock held (by another replica, or by this one: locks are not
    /// reentrant).
    #[error("lock {lock} is already locked by {holder:?}")]
    AlreadyLocked {
        /// `namespace/name` of the lock's lease.
        lock: String,
        /// The identity holding it.
        holder: String,
    },

    /// `unlock` by someone who does not hold the lock.
    #[error("lock {lock} is held by {holder:?}, not by this handle ({identity:?})")]
    NotLockHolder {
        /// `namespace/name` of the lock's lease.
        lock: String,
        /// Who holds it according to the store (`None`: nobody we could see).
        holder: Option<String>,
        /// This replica's identity.
        identity: String,
    },

    /// `unlock` of a lock that nobody holds.
    #[error("lock {lock} is not locked")]
    NotLocked {
        /// `namespace/name` of the lock's lease.
        lock: String,
    },

    /// `try_acquire` found every slot of the semaphore taken (by other replicas, by this
    /// one's permits, or waited for by this replica's callers already in line): the
    /// semaphore's [`AlreadyLocked`](Self::AlreadyLocked).
    #[error(
        "semaphore {semaphore} has no free slot (holders: {})",
        fmt_holders(holders)
    )]
    NoFreeSlot {
        /// `namespace/<scope>.semaphore.<name>` (the slots' common prefix).
        semaphore: String,
        /// Each slot tried, with the identity holding it (this replica's own when its local
        /// callers hold or wait for it), in slot order.
        holders: Vec<(usize, String)>,
    },

    /// [`Dsync::semaphore`](crate::Dsync::semaphore) was asked for 0 permits, or more than
    /// [`MAX_PERMITS`](crate::semaphore::MAX_PERMITS) (each permit is a Lease and a lease
    /// actor).
    #[error("semaphore {semaphore}: {permits} permits asked for; 1 to {max} are allowed")]
    BadPermitCount {
        /// `namespace/<scope>.semaphore.<name>`.
        semaphore: String,
        /// The number asked for.
        permits: usize,
        /// The most allowed.
        max: usize,
    },

    /// The store refused the operation (Kubernetes RBAC: HTTP 403).
    #[error("forbidden to {verb} {resource}: {message}")]
    Forbidden {
        /// The API verb (`get`, `create`, `update`, `list`, `watch`).
        verb: String,
        /// The resource, e.g. `leases.coordination.k8s.io "ns/name"`.
        resource: String,
        /// The server's message.
        message: String,
    },

    /// No usable Kubernetes client configuration (kubeconfig unreadable, no in-cluster
    /// service account, ...).
    #[error("cannot configure a Kubernetes client{}", path.as_ref().map(|p| format!(" from {}", p.display())).unwrap_or_default())]
    KubeConfig {
        /// The kubeconfig that was read (`KUBE_CONFIG_PATH`), if any.
        path: Option<std::path::PathBuf>,
        /// What went wrong.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// dsync's actors need a running actix System (`#[actix_web::main]`, `#[actix::main]`,
    /// `#[actix::test]`), and there is none on this thread.
    #[error(
        "no actix System is running on this thread; start dsync inside #[actix_web::main], #[actix::main] or #[actix::test]"
    )]
    NoActixSystem,

    /// dsync's own lease thread ([`LeaseThread::Dedicated`](crate::config::LeaseThread::Dedicated))
    /// could not be started.
    #[error("cannot start dsync's lease thread")]
    LeaseThread {
        /// Why.
        #[source]
        source: std::io::Error,
    },

    /// A lock was lost while the work it guarded ran
    /// ([`WithLockError::Lost`](crate::lock::WithLockError::Lost) converted into an `Error`:
    /// the work's output is dropped).
    #[error("lock {lock} was lost while the guarded work ran (fencing token {fencing_token})")]
    LockLost {
        /// `namespace/name` of the lock's lease.
        lock: String,
        /// The fencing token of the term that was lost.
        fencing_token: i32,
    },

    /// A handoff was asked of a replica that holds no live term of the election.
    #[error("election {lease} is not led by this replica: nothing to hand off")]
    NotLeader {
        /// `namespace/name` of the lease.
        lease: String,
    },

    /// A handoff to another successor is already under way.
    #[error("election {lease} is already being handed off to {to:?}")]
    HandoffInProgress {
        /// `namespace/name` of the lease.
        lease: String,
        /// The successor of the handoff under way.
        to: String,
    },

    /// A handoff began (the term ended) but could not be completed.
    #[error("handing election {lease} off to {to:?} failed: {reason}")]
    HandoffFailed {
        /// `namespace/name` of the lease.
        lease: String,
        /// The successor it was meant for.
        to: String,
        /// What happened.
        reason: String,
    },

    /// The election, lock or supervisor has been stopped; the handle can no longer be used.
    #[error("{what} has been stopped")]
    Stopped {
        /// What was stopped, e.g. `election default/unscoped.election.master`.
        what: String,
    },

    /// A stop cancelled a term, but the work it guards (a `when_elected` future, a `with_lock`
    /// body, a [`LeaderOnly`](crate::LeaderOnly) actor) did not return within the drain
    /// timeout ([`Config::drain_timeout`](crate::Config::drain_timeout)). The lease was *not*
    /// released while that work may still run: renewals stopped, and other replicas take over
    /// after the lease duration, as after a crash.
    #[error(
        "the work of {lease}'s term did not return within {after:?} of its cancellation; the lease was not released and expires on its own"
    )]
    DrainTimeout {
        /// `namespace/name` of the lease.
        lease: String,
        /// The drain timeout.
        after: Duration,
    },

    /// A stop (or shutdown) was called from inside the work of the term it stops. Waiting for
    /// that work would wait for itself, so the call returned at once; the stop has taken
    /// effect and the lease is released as soon as the work returns.
    #[error(
        "stop of {lease} was called from its own term's work: not waited for; the lease is released once that work returns"
    )]
    StopFromWork {
        /// `namespace/name` of the lease.
        lease: String,
    },

    /// A handoff was asked for from inside the work of the term it hands off. Waiting for that
    /// work would wait for itself, so the call returned at once; the handoff has begun, and
    /// the lease is handed off as soon as the work returns.
    #[error(
        "handoff of {lease} to {to:?} was called from its own term's work: not waited for; the lease is handed off once that work returns"
    )]
    HandoffFromWork {
        /// `namespace/name` of the lease.
        lease: String,
        /// The successor.
        to: String,
    },

    /// An operation did not complete in time (`lock_timeout`, a store call).
    #[error("{operation} timed out after {after:?}")]
    Timeout {
        /// What timed out.
        operation: String,
        /// The limit that was exceeded.
        after: Duration,
    },

    /// The caller cancelled the operation (e.g. `lock_with_cancel`).
    #[error("{operation} was cancelled")]
    Cancelled {
        /// What was cancelled.
        operation: String,
    },

    /// The backing store failed.
    #[error("lease store failed to {operation}")]
    Store {
        /// What dsync was doing, e.g. `read lease default/x`.
        operation: String,
        /// The store's error.
        #[source]
        source: StoreError,
    },
}

impl Error {
    /// Maps a store error met while doing `operation` (e.g. `read lease ns/name`), lifting the
    /// store's well-known outcomes (`NotFound`, `Forbidden`, `Timeout`) to their own variants;
    /// for callers of a [`LeaseStore`](crate::LeaseStore) who report in dsync's terms.
    pub fn from_store(operation: impl Into<String>, source: StoreError) -> Self {
        match source {
            StoreError::NotFound { lease } => Error::NotFound { lease },
            StoreError::Forbidden {
                verb,
                resource,
                message,
            } => Error::Forbidden {
                verb,
                resource,
                message,
            },
            StoreError::Timeout { operation, after } => Error::Timeout { operation, after },
            source => Error::Store {
                operation: operation.into(),
                source,
            },
        }
    }
}

fn fmt_holders(holders: &[(usize, String)]) -> String {
    let list: Vec<String> = holders
        .iter()
        .map(|(slot, holder)| format!("slot {slot}: {holder}"))
        .collect();
    list.join(", ")
}
