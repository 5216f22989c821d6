//! The `LeaseStore` trait: where lease records live.
//!
//! A store has the Kubernetes API server's semantics for one kind of object: `get`, `create`
//! (fails with [`StoreError::AlreadyExists`]), `replace` guarded by `resourceVersion`
//! (fails with [`StoreError::Conflict`] when somebody wrote in between) and `watch`. Every write
//! dsync makes is such a compare-and-swap; there is no blind update and no delete.
//!
//! Two stores ship: [`MemoryStore`] (in-process, the embedded default) and, with the `kube`
//! feature (on by default), `KubeStore` on `kube::Api<Lease>`.

use std::fmt;
use std::time::{Duration, SystemTime};

use futures::future::BoxFuture;
use futures::stream::BoxStream;

#[cfg(feature = "kube")]
pub mod kube;
pub mod memory;

#[cfg(feature = "kube")]
pub use self::kube::KubeStore;
pub use memory::MemoryStore;

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
}

impl LeaseRecord {
    /// The holder, treating an empty string as nobody (client-go writes `""` on release).
    pub fn holder(&self) -> Option<&str> {
        self.holder_identity.as_deref().filter(|h| !h.is_empty())
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
}

/// A change seen by [`LeaseStore::watch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    /// The lease was created or replaced.
    Applied(StoredLease),
    /// The lease was deleted.
    Deleted {
        /// Lease object name.
        name: String,
    },
}

/// What a store operation failed with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The lease was changed since the version the write was based on (HTTP 409 on update).
    #[error("lease {lease} was modified concurrently (resourceVersion conflict)")]
    Conflict {
        /// `namespace/name`.
        lease: String,
    },
    /// `create` of a lease that exists (HTTP 409 on create).
    #[error("lease {lease} already exists")]
    AlreadyExists {
        /// `namespace/name`.
        lease: String,
    },
    /// The lease (or its namespace) does not exist (HTTP 404).
    #[error("lease {lease} not found")]
    NotFound {
        /// `namespace/name`.
        lease: String,
    },
    /// Permission denied (HTTP 403).
    #[error("forbidden to {verb} {resource}: {message}")]
    Forbidden {
        /// The API verb.
        verb: String,
        /// The resource, e.g. `leases.coordination.k8s.io "ns/name"`.
        resource: String,
        /// The server's message.
        message: String,
    },
    /// The store rejected the record (HTTP 422).
    #[error("lease {lease} rejected as invalid: {message}")]
    Invalid {
        /// `namespace/name`.
        lease: String,
        /// The server's message.
        message: String,
    },
    /// The call did not finish in time.
    #[error("{operation} timed out after {after:?}")]
    Timeout {
        /// What timed out.
        operation: String,
        /// The limit.
        after: Duration,
    },
    /// A watch fell behind and lost events; the watcher must re-read.
    #[error("watch on {lease} fell behind by {missed} events")]
    WatchLagged {
        /// What was watched (a namespace, or `namespace/name`).
        lease: String,
        /// How many events were lost.
        missed: u64,
    },
    /// Any other failure (network, server error); usually worth retrying.
    #[error("store unavailable: {message}")]
    Unavailable {
        /// What happened.
        message: String,
        /// The underlying error, when there is one.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
}

impl StoreError {
    /// A copy to hand to several callers (the source of `Unavailable` is kept as text).
    pub(crate) fn duplicate(&self) -> StoreError {
        match self {
            StoreError::Conflict { lease } => StoreError::Conflict {
                lease: lease.clone(),
            },
            StoreError::AlreadyExists { lease } => StoreError::AlreadyExists {
                lease: lease.clone(),
            },
            StoreError::NotFound { lease } => StoreError::NotFound {
                lease: lease.clone(),
            },
            StoreError::Forbidden {
                verb,
                resource,
                message,
            } => StoreError::Forbidden {
                verb: verb.clone(),
                resource: resource.clone(),
                message: message.clone(),
            },
            StoreError::Invalid { lease, message } => StoreError::Invalid {
                lease: lease.clone(),
                message: message.clone(),
            },
            StoreError::Timeout { operation, after } => StoreError::Timeout {
                operation: operation.clone(),
                after: *after,
            },
            StoreError::WatchLagged { lease, missed } => StoreError::WatchLagged {
                lease: lease.clone(),
                missed: *missed,
            },
            StoreError::Unavailable { message, source } => StoreError::Unavailable {
                message: match source {
                    Some(source) => format!("{message}: {source}"),
                    None => message.clone(),
                },
                source: None,
            },
        }
    }

    /// Whether retrying the same call later may succeed (as opposed to a definite answer such as
    /// `Forbidden` or `Invalid`). Conflicts are not transient: they call for a re-read.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            StoreError::Timeout { .. }
                | StoreError::Unavailable { .. }
                | StoreError::WatchLagged { .. }
        )
    }
}

/// Result of a store call.
pub type StoreResult<T> = Result<T, StoreError>;

/// A backend holding lease records with compare-and-swap semantics.
///
/// Futures and streams are `'static` so actors can run them without borrowing the store.
/// Implementations must be cheap to clone behind an `Arc` and safe to share between threads.
pub trait LeaseStore: Send + Sync + 'static {
    /// Reads a lease. [`StoreError::NotFound`] when it does not exist.
    fn get(&self, key: &LeaseKey) -> BoxFuture<'static, StoreResult<StoredLease>>;

    /// Creates a lease. [`StoreError::AlreadyExists`] when it exists.
    fn create(
        &self,
        key: &LeaseKey,
        record: LeaseRecord,
    ) -> BoxFuture<'static, StoreResult<StoredLease>>;

    /// Replaces a lease if its version is still `resource_version`; [`StoreError::Conflict`]
    /// otherwise, [`StoreError::NotFound`] when it no longer exists.
    fn replace(
        &self,
        key: &LeaseKey,
        record: LeaseRecord,
        resource_version: &str,
    ) -> BoxFuture<'static, StoreResult<StoredLease>>;

    /// Changes to every lease of `namespace` from now on. A replica opens one such watch per
    /// namespace and shares it among its elections and locks. The stream may end or yield an
    /// error at any time (for example [`StoreError::WatchLagged`]); watchers then re-read with
    /// [`get`](Self::get) and watch again. Watches only make dsync faster: correctness never
    /// depends on them.
    fn watch(&self, namespace: &str) -> BoxStream<'static, StoreResult<WatchEvent>>;
}

/// A shared store is a store: `Arc<MemoryStore>`, `Arc<dyn LeaseStore>`, ...
impl<S: LeaseStore + ?Sized> LeaseStore for std::sync::Arc<S> {
    fn get(&self, key: &LeaseKey) -> BoxFuture<'static, StoreResult<StoredLease>> {
        (**self).get(key)
    }

    fn create(
        &self,
        key: &LeaseKey,
        record: LeaseRecord,
    ) -> BoxFuture<'static, StoreResult<StoredLease>> {
        (**self).create(key, record)
    }

    fn replace(
        &self,
        key: &LeaseKey,
        record: LeaseRecord,
        resource_version: &str,
    ) -> BoxFuture<'static, StoreResult<StoredLease>> {
        (**self).replace(key, record, resource_version)
    }

    fn watch(&self, namespace: &str) -> BoxStream<'static, StoreResult<WatchEvent>> {
        (**self).watch(namespace)
    }
}
