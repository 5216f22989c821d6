//! The `LeaseStore` trait: where lease records live.
//!
//! A store has the Kubernetes API server's semantics for one kind of object: `get`, `create`
//! (fails with [`StoreError::AlreadyExists`]), `replace` guarded by `resourceVersion`
//! (fails with [`StoreError::Conflict`] when somebody wrote in between), `list` (every lease of
//! a namespace, one snapshot) and `watch`. Every write
//! dsync makes is such a compare-and-swap; there is no blind update and no delete.
//!
//! Two stores ship: [`MemoryStore`] (in-process, the embedded default) and, with the `kube`
//! feature (on by default), `KubeStore` on `kube::Api<Lease>`.
//!
//! # Implementing a store
//!
//! Everything an implementation names is here: the trait, the records, the errors, and the
//! boxed future and stream types (with [`FutureExt`] and [`StreamExt`] for `.boxed()`), so it
//! needs no direct dependency on `futures`. The `testing` feature's conformance suite checks
//! an implementation against the rules `MemoryStore` and `KubeStore` obey. A store that counts
//! the writes going through it:
//!
//! ```
//! use std::sync::Arc;
//! use std::sync::atomic::{AtomicU64, Ordering};
//!
//! use dsync::store::{
//!     BoxFuture, BoxStream, FutureExt, LeaseKey, LeaseRecord, LeaseStore, StoreResult,
//!     StoredLease, WatchEvent,
//! };
//!
//! struct Counting<S> {
//!     inner: S,
//!     writes: Arc<AtomicU64>,
//! }
//!
//! impl<S: LeaseStore> LeaseStore for Counting<S> {
//!     fn get(&self, key: &LeaseKey) -> BoxFuture<'static, StoreResult<StoredLease>> {
//!         self.inner.get(key)
//!     }
//!     fn create(
//!         &self,
//!         key: &LeaseKey,
//!         record: LeaseRecord,
//!     ) -> BoxFuture<'static, StoreResult<StoredLease>> {
//!         self.writes.fetch_add(1, Ordering::Relaxed);
//!         self.inner.create(key, record)
//!     }
//!     fn replace(
//!         &self,
//!         key: &LeaseKey,
//!         record: LeaseRecord,
//!         resource_version: &str,
//!     ) -> BoxFuture<'static, StoreResult<StoredLease>> {
//!         let writes = self.writes.clone();
//!         let call = self.inner.replace(key, record, resource_version);
//!         async move {
//!             writes.fetch_add(1, Ordering::Relaxed);
//!             call.await
//!         }
//!         .boxed()
//!     }
//!     fn list(&self, namespace: &str) -> BoxFuture<'static, StoreResult<Vec<StoredLease>>> {
//!         self.inner.list(namespace)
//!     }
//!     fn watch(&self, namespace: &str) -> BoxStream<'static, StoreResult<WatchEvent>> {
//!         self.inner.watch(namespace)
//!     }
//! }
//!
//! # fn main() -> dsync::Result<()> {
//! actix::System::new().block_on(async {
//!     let writes = Arc::new(AtomicU64::new(0));
//!     let store = Counting { inner: dsync::MemoryStore::new(), writes: writes.clone() };
//!     let dsync = dsync::Dsync::new(store, "pod-a")?;
//!     let lock = dsync.lock("job")?;
//!     lock.lock().await?;
//!     lock.unlock().await?;
//!     assert_eq!(writes.load(Ordering::Relaxed), 2); // create, then the release
//!     dsync.shutdown().await
//! })
//! # }
//! ```

use std::time::Duration;

pub use futures::future::{BoxFuture, FutureExt};
pub use futures::stream::{BoxStream, StreamExt};

pub use crate::record::{LeaseKey, LeaseRecord, StoredLease, WatchEvent};
pub use candidate::{CandidateRecord, StoredCandidate};

pub mod candidate;
#[cfg(feature = "kube")]
pub mod kube;
#[cfg(feature = "kube")]
mod limit;
pub mod memory;

#[cfg(feature = "kube")]
pub use self::kube::KubeStore;
pub use memory::{MemorySnapshot, MemoryStore};

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

    /// How long the server asked the caller to wait before trying again, if it said: a
    /// [`RetryAfter`] source (what a store of your own, or the test kit, sets), or, from
    /// `KubeStore`, the Status's `details.retryAfterSeconds`, and 1 s for an HTTP 429 without
    /// it. (kube-apiserver's overload answers carry their wait in the `Retry-After` header,
    /// which kube's `Error::Api` does not expose; they always ask for 1 s.) Every caller waits
    /// at least this long before its next call (rule `write-backoff`).
    pub fn retry_after(&self) -> Option<Duration> {
        let StoreError::Unavailable {
            source: Some(source),
            ..
        } = self
        else {
            return None;
        };
        if let Some(RetryAfter(after)) = source.downcast_ref::<RetryAfter>() {
            return Some(*after);
        }
        #[cfg(feature = "kube")]
        if let Some(::kube::Error::Api(status)) = source.downcast_ref::<::kube::Error>() {
            let hinted = status
                .details
                .as_ref()
                .map(|d| d.retry_after_seconds)
                .filter(|s| *s > 0);
            return match hinted {
                Some(seconds) => Some(Duration::from_secs(u64::from(seconds))),
                None if status.code == 429 => Some(Duration::from_secs(1)),
                None => None,
            };
        }
        None
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

/// A server's request to wait before the next call (HTTP `Retry-After`), as the source of a
/// [`StoreError::Unavailable`]: see [`StoreError::retry_after`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the server asked to retry after {0:?}")]
pub struct RetryAfter(pub Duration);

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
    /// otherwise. When the lease does not exist, a store either answers
    /// [`StoreError::NotFound`] and writes nothing (`MemoryStore`) or creates it with exactly
    /// `record` (the Kubernetes API server allows a PUT to create a Lease, even with a
    /// `resourceVersion` precondition, so `KubeStore` does). dsync copes with both: it only
    /// replaces leases it has read, and a lease deleted meanwhile is read again either way.
    fn replace(
        &self,
        key: &LeaseKey,
        record: LeaseRecord,
        resource_version: &str,
    ) -> BoxFuture<'static, StoreResult<StoredLease>>;

    /// Every lease of `namespace`, sorted by name: one consistent snapshot, as the API
    /// server's `list` gives it (each lease at the version it had at one moment), with the
    /// versions that guard the next write of each. An empty (or missing) namespace gives an
    /// empty list. dsync's lease actors never list; operators' tools do
    /// ([`Dsync::stored_leases`](crate::Dsync::stored_leases)).
    fn list(&self, namespace: &str) -> BoxFuture<'static, StoreResult<Vec<StoredLease>>>;

    /// Changes to every lease of `namespace` from now on. A replica opens one such watch per
    /// namespace and shares it among its elections and locks. The stream may end or yield an
    /// error at any time (for example [`StoreError::WatchLagged`]); watchers then re-read with
    /// [`get`](Self::get) and watch again. Watches only make dsync faster: correctness never
    /// depends on them.
    fn watch(&self, namespace: &str) -> BoxStream<'static, StoreResult<WatchEvent>>;

    /// Whether this store's watch, after it yields an error, brings every lease of the
    /// namespace again by itself (as an `Applied` event each), so a watcher needs no
    /// [`list`](Self::list) to catch up. `false` (the default): after an error, dsync lists the
    /// namespace once, and until the list is in, dsync's lease actors take no lease that
    /// merely looks expired (it may have been renewed unseen). Say `true` only if the stream
    /// itself, after every error, brings every lease before anything newer. `KubeStore` says
    /// `false`: kube's watcher resumes from the last version it saw, which replays what
    /// changed but never says when it has caught up.
    fn watch_replays_state(&self) -> bool {
        false
    }

    /// This process's lease actor of `key` has stopped: drop whatever the store keeps for
    /// that lease on dsync's behalf (`KubeStore` keeps the last object seen, as the base of
    /// the next PUT). A long-running service that uses ever new lease names must not keep
    /// something per name forever. The default keeps nothing and does nothing; a store that
    /// wraps another passes it on.
    fn forget(&self, key: &LeaseKey) {
        let _ = key;
    }

    /// Reads the `LeaseCandidate` `key` (coordinated leader election, see
    /// [`candidate`]). [`StoreError::NotFound`] when it does not exist. The default answers
    /// that the store keeps no candidates ([`StoreError::Unavailable`]): a store that cannot
    /// keep them says so, it never pretends to.
    fn get_candidate(&self, key: &LeaseKey) -> BoxFuture<'static, StoreResult<StoredCandidate>> {
        futures::future::ready(Err(no_candidates(key))).boxed()
    }

    /// Creates the `LeaseCandidate` `key`. [`StoreError::AlreadyExists`] when it exists.
    fn create_candidate(
        &self,
        key: &LeaseKey,
        record: CandidateRecord,
    ) -> BoxFuture<'static, StoreResult<StoredCandidate>> {
        let _ = record;
        futures::future::ready(Err(no_candidates(key))).boxed()
    }

    /// Replaces the `LeaseCandidate` `key` if its version is still `resource_version`;
    /// [`StoreError::Conflict`] otherwise.
    fn replace_candidate(
        &self,
        key: &LeaseKey,
        record: CandidateRecord,
        resource_version: &str,
    ) -> BoxFuture<'static, StoreResult<StoredCandidate>> {
        let _ = (record, resource_version);
        futures::future::ready(Err(no_candidates(key))).boxed()
    }

    /// Deletes the `LeaseCandidate` `key`. [`StoreError::NotFound`] when it does not exist.
    fn delete_candidate(&self, key: &LeaseKey) -> BoxFuture<'static, StoreResult<()>> {
        futures::future::ready(Err(no_candidates(key))).boxed()
    }

    /// Every `LeaseCandidate` of `namespace`, sorted by name.
    fn list_candidates(
        &self,
        namespace: &str,
    ) -> BoxFuture<'static, StoreResult<Vec<StoredCandidate>>> {
        futures::future::ready(Err(no_candidates(&LeaseKey::new(namespace, "*")))).boxed()
    }

    /// A signal for each change to the `LeaseCandidate` `key` (created, written or deleted,
    /// by anyone): `Ok(Some(version))` when it was written and now has `resourceVersion`
    /// `version`, `Ok(None)` when it was deleted or may have changed in any way (a watch's
    /// first list). It lets a candidate answer the election controller's pings as they come
    /// instead of reading its object every second, and skip reading back its own writes.
    ///
    /// An `Err` says the signal is not to be trusted until the next `Ok` (a watch that
    /// failed, and may come back); the end of the stream says there will be no more. The
    /// candidate reads its object on a timer for as long as either lasts. The default ends at
    /// once after saying that this store keeps no candidates.
    fn candidate_changes(&self, key: &LeaseKey) -> BoxStream<'static, StoreResult<Option<String>>> {
        futures::stream::once(futures::future::ready(Err(no_candidates(key)))).boxed()
    }
}

/// The answer of a store that keeps no `LeaseCandidate`s.
fn no_candidates(key: &LeaseKey) -> StoreError {
    StoreError::Unavailable {
        message: format!("this store keeps no LeaseCandidates (asked for {key})"),
        source: None,
    }
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

    fn list(&self, namespace: &str) -> BoxFuture<'static, StoreResult<Vec<StoredLease>>> {
        (**self).list(namespace)
    }

    fn watch(&self, namespace: &str) -> BoxStream<'static, StoreResult<WatchEvent>> {
        (**self).watch(namespace)
    }

    fn watch_replays_state(&self) -> bool {
        (**self).watch_replays_state()
    }

    fn forget(&self, key: &LeaseKey) {
        (**self).forget(key);
    }

    fn get_candidate(&self, key: &LeaseKey) -> BoxFuture<'static, StoreResult<StoredCandidate>> {
        (**self).get_candidate(key)
    }

    fn create_candidate(
        &self,
        key: &LeaseKey,
        record: CandidateRecord,
    ) -> BoxFuture<'static, StoreResult<StoredCandidate>> {
        (**self).create_candidate(key, record)
    }

    fn replace_candidate(
        &self,
        key: &LeaseKey,
        record: CandidateRecord,
        resource_version: &str,
    ) -> BoxFuture<'static, StoreResult<StoredCandidate>> {
        (**self).replace_candidate(key, record, resource_version)
    }

    fn delete_candidate(&self, key: &LeaseKey) -> BoxFuture<'static, StoreResult<()>> {
        (**self).delete_candidate(key)
    }

    fn list_candidates(
        &self,
        namespace: &str,
    ) -> BoxFuture<'static, StoreResult<Vec<StoredCandidate>>> {
        (**self).list_candidates(namespace)
    }

    fn candidate_changes(&self, key: &LeaseKey) -> BoxStream<'static, StoreResult<Option<String>>> {
        (**self).candidate_changes(key)
    }
}
