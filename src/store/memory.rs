//! `MemoryStore`: an in-process lease store with the API server's semantics.
//!
//! Meant for single-process use, examples and fast tests: any number of [`Dsync`](crate::Dsync)
//! instances (replicas) can share one store by cloning it. It behaves like the API server where
//! dsync can tell the difference: a global, increasing `resourceVersion`; `replace` with a stale
//! version fails with `Conflict`; `create` of an existing lease fails with `AlreadyExists`;
//! invalid names and specs are rejected with `Invalid`; watches see every write in order.
//!
//! It behaves like a server with the `CoordinatedLeaderElection` feature gate **on**:
//! `spec.strategy` and `spec.preferredHolder` are kept as written (and validated as the API
//! server does: a known or domain-qualified strategy; a preferred holder only with a strategy).
//! A server with the gate off (the Kubernetes default) drops both fields on every write. The
//! memory store runs no election controller: whoever writes those fields (a test, with
//! [`MemoryStore::put`]) plays its part.

use std::sync::{Arc, Mutex, MutexGuard};

use futures::channel::mpsc;
use futures::future::{self, BoxFuture, FutureExt};
use futures::stream::{BoxStream, StreamExt};

use super::{
    CandidateRecord, LeaseKey, LeaseRecord, LeaseStore, StoreError, StoreResult, StoredCandidate,
    StoredLease, WatchEvent,
};
use crate::hash::FastMap;
use crate::names::{is_dns1123_label, is_dns1123_subdomain};

/// Counts of the calls a [`MemoryStore`] has served, for tests and benchmarks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// `get` calls.
    pub gets: u64,
    /// `create` calls (successful or not).
    pub creates: u64,
    /// `replace` calls (successful or not).
    pub replaces: u64,
    /// `replace` calls rejected for a stale version.
    pub conflicts: u64,
    /// `watch` calls (one per watched namespace per replica, normally).
    pub watches: u64,
    /// `list` calls.
    pub lists: u64,
}

#[derive(Default)]
struct Inner {
    leases: FastMap<LeaseKey, StoredLease>,
    /// The `LeaseCandidate`s (coordinated leader election), kept so that tests and users of
    /// the memory store see them, and can play the API server's election controller from
    /// them. They share the revision counter with the leases, as objects of one etcd do.
    candidates: FastMap<LeaseKey, StoredCandidate>,
    /// Watchers by namespace. Each has its own queue, as the API server keeps per watcher, so
    /// a burst of writes is never lost; closed watchers are dropped on the next write.
    watchers: FastMap<String, Vec<mpsc::UnboundedSender<WatchEvent>>>,
    /// Who waits for changes to a `LeaseCandidate` ([`LeaseStore::candidate_changes`]).
    candidate_watchers: FastMap<LeaseKey, Vec<mpsc::UnboundedSender<Option<String>>>>,
    revision: u64,
    stats: StoreStats,
}

impl Inner {
    /// Tells those waiting for changes to the `LeaseCandidate` `key` its new version (`None`:
    /// deleted); drops the ones gone.
    fn candidate_changed(&mut self, key: &LeaseKey, version: Option<&str>) {
        if let Some(watchers) = self.candidate_watchers.get_mut(key) {
            watchers.retain(|tx| tx.unbounded_send(version.map(str::to_owned)).is_ok());
        }
    }

    /// Writes `record` as the lease's next version, whether it exists or not.
    fn commit(&mut self, key: &LeaseKey, record: LeaseRecord) -> StoredLease {
        let Inner {
            leases,
            watchers,
            revision,
            ..
        } = self;
        match leases.get_mut(key) {
            Some(slot) => write(slot, record, revision, watchers, &key.namespace),
            None => {
                // A new object, a new uid (as the API server gives one per created object).
                let slot = leases.entry(key.clone()).or_insert(StoredLease {
                    name: key.name.clone(),
                    record: LeaseRecord::default(),
                    resource_version: String::new(),
                    uid: Some(uuid::Uuid::new_v4().to_string()),
                });
                write(slot, record, revision, watchers, &key.namespace)
            }
        }
    }
}

/// Writes `record` into `slot` as the store's next revision and tells the namespace's
/// watchers. In place: the record is moved in and the version's buffer reused, so a renewal
/// costs the store one copy for its caller and one per watcher.
fn write(
    slot: &mut StoredLease,
    record: LeaseRecord,
    revision: &mut u64,
    watchers: &mut FastMap<String, Vec<mpsc::UnboundedSender<WatchEvent>>>,
    namespace: &str,
) -> StoredLease {
    use std::fmt::Write as _;
    *revision += 1;
    slot.record = record;
    slot.resource_version.clear();
    let _ = write!(slot.resource_version, "{revision}");
    if let Some(watchers) = watchers.get_mut(namespace) {
        watchers.retain(|tx| tx.unbounded_send(WatchEvent::Applied(slot.clone())).is_ok());
    }
    slot.clone()
}

/// A copy of a [`MemoryStore`]'s leases and revision ([`MemoryStore::snapshot`]), to put back
/// with [`MemoryStore::restore`]: an etcd snapshot and restore, in which versions go back.
#[derive(Clone)]
pub struct MemorySnapshot {
    leases: FastMap<LeaseKey, StoredLease>,
    revision: u64,
}

impl std::fmt::Debug for MemorySnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemorySnapshot")
            .field("leases", &self.leases.len())
            .field("revision", &self.revision)
            .finish()
    }
}

/// An in-process [`LeaseStore`], shareable between any number of `Dsync` replicas.
///
/// Cloning is cheap and every clone sees the same leases.
#[derive(Clone, Default)]
pub struct MemoryStore {
    inner: Arc<Mutex<Inner>>,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let inner = self.lock();
        f.debug_struct("MemoryStore")
            .field("leases", &inner.leases.len())
            .field("revision", &inner.revision)
            .finish()
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave a half-written map (every mutation is a
        // single insert), so a poisoned lock is still consistent.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How many calls of each kind the store has served.
    pub fn stats(&self) -> StoreStats {
        self.lock().stats
    }

    /// The current record of a lease, without counting as a `get`.
    pub fn peek(&self, key: &LeaseKey) -> Option<StoredLease> {
        self.lock().leases.get(key).cloned()
    }

    /// Writes `record` unconditionally, as an administrator's `kubectl replace` or `edit`
    /// would: no version check, watchers are notified. Validation still applies.
    pub fn put(&self, key: &LeaseKey, record: LeaseRecord) -> StoreResult<StoredLease> {
        validate(key, &record)?;
        Ok(self.lock().commit(key, record))
    }

    /// Deletes a lease, as an administrator's `kubectl delete lease` would: no version check;
    /// the deletion takes a revision and watchers see [`WatchEvent::Deleted`]. `NotFound` if
    /// it does not exist. (dsync itself never deletes a lease; a deleted lease that was held
    /// is taken only as an expired one would be, and with a higher fencing token: rules
    /// `deleted-held-waits` and `token-never-back`.)
    pub fn delete(&self, key: &LeaseKey) -> StoreResult<()> {
        let mut inner = self.lock();
        if inner.leases.remove(key).is_none() {
            return Err(StoreError::NotFound {
                lease: key.to_string(),
            });
        }
        inner.revision += 1;
        let event = WatchEvent::Deleted {
            name: key.name.clone(),
        };
        if let Some(watchers) = inner.watchers.get_mut(&key.namespace) {
            watchers.retain(|tx| tx.unbounded_send(event.clone()).is_ok());
        }
        Ok(())
    }

    /// Every lease and the revision, as an etcd snapshot keeps them, for
    /// [`restore`](Self::restore).
    pub fn snapshot(&self) -> MemorySnapshot {
        let inner = self.lock();
        MemorySnapshot {
            leases: inner.leases.clone(),
            revision: inner.revision,
        }
    }

    /// Puts the store back to `snapshot`, leases and revision, as an etcd restore does:
    /// versions go back, and later writes reuse version numbers. Watchers see each restored
    /// lease again (with its older version) and a deletion for each lease the snapshot does
    /// not have, as a watch that re-lists after the restore would. dsync re-syncs from this
    /// (rule `restore-resync`); its fencing tokens do not go back (rule `token-never-back`).
    pub fn restore(&self, snapshot: &MemorySnapshot) {
        let mut inner = self.lock();
        let Inner {
            leases,
            watchers,
            revision,
            ..
        } = &mut *inner;
        let gone: Vec<LeaseKey> = leases
            .keys()
            .filter(|key| !snapshot.leases.contains_key(*key))
            .cloned()
            .collect();
        *leases = snapshot.leases.clone();
        *revision = snapshot.revision;
        let mut restored: Vec<(&LeaseKey, &StoredLease)> = leases.iter().collect();
        restored.sort_by(|a, b| a.0.cmp(b.0));
        let events = restored
            .into_iter()
            .map(|(key, lease)| (key, WatchEvent::Applied(lease.clone())))
            .chain(gone.iter().map(|key| {
                let name = key.name.clone();
                (key, WatchEvent::Deleted { name })
            }));
        for (key, event) in events {
            if let Some(watchers) = watchers.get_mut(&key.namespace) {
                watchers.retain(|tx| tx.unbounded_send(event.clone()).is_ok());
            }
        }
    }

    fn get_now(&self, key: &LeaseKey) -> StoreResult<StoredLease> {
        let mut inner = self.lock();
        inner.stats.gets += 1;
        inner
            .leases
            .get(key)
            .cloned()
            .ok_or_else(|| StoreError::NotFound {
                lease: key.to_string(),
            })
    }

    fn list_now(&self, namespace: &str) -> Vec<StoredLease> {
        let mut inner = self.lock();
        inner.stats.lists += 1;
        // Under the one lock: a snapshot, as the API server's list is.
        let mut leases: Vec<StoredLease> = inner
            .leases
            .iter()
            .filter(|(key, _)| key.namespace == namespace)
            .map(|(_, lease)| lease.clone())
            .collect();
        leases.sort_by(|a, b| a.name.cmp(&b.name));
        leases
    }

    fn create_now(&self, key: &LeaseKey, record: LeaseRecord) -> StoreResult<StoredLease> {
        let mut inner = self.lock();
        inner.stats.creates += 1;
        validate(key, &record)?;
        if inner.leases.contains_key(key) {
            return Err(StoreError::AlreadyExists {
                lease: key.to_string(),
            });
        }
        Ok(inner.commit(key, record))
    }

    fn replace_now(
        &self,
        key: &LeaseKey,
        record: LeaseRecord,
        resource_version: &str,
    ) -> StoreResult<StoredLease> {
        let mut inner = self.lock();
        let Inner {
            leases,
            watchers,
            revision,
            stats,
            ..
        } = &mut *inner;
        stats.replaces += 1;
        // One lookup. The name of a lease that exists was checked when it was created.
        let Some(current) = leases.get_mut(key) else {
            validate(key, &record)?;
            return Err(StoreError::NotFound {
                lease: key.to_string(),
            });
        };
        validate_record(key, &record)?;
        if current.resource_version != resource_version {
            stats.conflicts += 1;
            return Err(StoreError::Conflict {
                lease: key.to_string(),
            });
        }
        if current.record == record {
            // Like the API server: an update that changes nothing is not a write (same
            // version, no watch event).
            return Ok(current.clone());
        }
        Ok(write(current, record, revision, watchers, &key.namespace))
    }
}

/// The API server's answer to an invalid Lease.
fn invalid(key: &LeaseKey, message: String) -> StoreResult<()> {
    Err(StoreError::Invalid {
        lease: key.to_string(),
        message,
    })
}

/// The API server's validation of a Lease, as far as dsync's writes can violate it.
fn validate(key: &LeaseKey, record: &LeaseRecord) -> StoreResult<()> {
    let invalid = |message| invalid(key, message);
    if !is_dns1123_label(&key.namespace) {
        return invalid(format!(
            "metadata.namespace: Invalid value: {:?}: must be a DNS-1123 label",
            key.namespace
        ));
    }
    if !is_dns1123_subdomain(&key.name) {
        return invalid(format!(
            "metadata.name: Invalid value: {:?}: must be a DNS-1123 subdomain of at most 253 characters",
            key.name
        ));
    }
    validate_record(key, record)
}

/// The API server's validation of a Lease's spec.
fn validate_record(key: &LeaseKey, record: &LeaseRecord) -> StoreResult<()> {
    let invalid = |message| invalid(key, message);
    if let Some(d) = record.lease_duration_seconds
        && d <= 0
    {
        return invalid(format!(
            "spec.leaseDurationSeconds: Invalid value: {d}: must be greater than 0"
        ));
    }
    if let Some(t) = record.lease_transitions
        && t < 0
    {
        return invalid(format!(
            "spec.leaseTransitions: Invalid value: {t}: must be greater than or equal to 0"
        ));
    }
    if let Some(strategy) = &record.strategy
        && !is_valid_strategy(strategy)
    {
        return invalid(format!(
            "spec.strategy: Unsupported value: {strategy:?}: supported values: \
             \"OldestEmulationVersion\" (or a domain-qualified name)"
        ));
    }
    if record.preferred().is_some() && !record.coordinated() {
        return invalid(
            "spec.preferredHolder: Forbidden: may only be specified if `strategy` is defined"
                .into(),
        );
    }
    Ok(())
}

/// The API server's rule for `spec.strategy`: a Kubernetes-defined name (only
/// `OldestEmulationVersion` today), or a domain-qualified one (`example.com/my-strategy`).
fn is_valid_strategy(strategy: &str) -> bool {
    match strategy.split_once('/') {
        None => strategy == "OldestEmulationVersion",
        Some((prefix, name)) => {
            let name_ok = !name.is_empty()
                && name.len() <= 63
                && name.starts_with(|c: char| c.is_ascii_alphanumeric())
                && name.ends_with(|c: char| c.is_ascii_alphanumeric())
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
            is_dns1123_subdomain(prefix) && name_ok
        }
    }
}

impl LeaseStore for MemoryStore {
    fn get(&self, key: &LeaseKey) -> BoxFuture<'static, StoreResult<StoredLease>> {
        future::ready(self.get_now(key)).boxed()
    }

    fn create(
        &self,
        key: &LeaseKey,
        record: LeaseRecord,
    ) -> BoxFuture<'static, StoreResult<StoredLease>> {
        future::ready(self.create_now(key, record)).boxed()
    }

    fn replace(
        &self,
        key: &LeaseKey,
        record: LeaseRecord,
        resource_version: &str,
    ) -> BoxFuture<'static, StoreResult<StoredLease>> {
        future::ready(self.replace_now(key, record, resource_version)).boxed()
    }

    fn list(&self, namespace: &str) -> BoxFuture<'static, StoreResult<Vec<StoredLease>>> {
        future::ready(Ok(self.list_now(namespace))).boxed()
    }

    fn watch(&self, namespace: &str) -> BoxStream<'static, StoreResult<WatchEvent>> {
        let (tx, rx) = mpsc::unbounded();
        let mut inner = self.lock();
        inner.stats.watches += 1;
        inner
            .watchers
            .entry(namespace.to_owned())
            .or_default()
            .push(tx);
        rx.map(Ok).boxed()
    }

    fn get_candidate(&self, key: &LeaseKey) -> BoxFuture<'static, StoreResult<StoredCandidate>> {
        let found = self.lock().candidates.get(key).cloned();
        future::ready(found.ok_or_else(|| StoreError::NotFound {
            lease: format!("leasecandidate {key}"),
        }))
        .boxed()
    }

    fn create_candidate(
        &self,
        key: &LeaseKey,
        record: CandidateRecord,
    ) -> BoxFuture<'static, StoreResult<StoredCandidate>> {
        let mut inner = self.lock();
        let answer = if inner.candidates.contains_key(key) {
            Err(StoreError::AlreadyExists {
                lease: format!("leasecandidate {key}"),
            })
        } else {
            inner.revision += 1;
            let stored = StoredCandidate {
                key: key.clone(),
                record,
                resource_version: inner.revision.to_string(),
            };
            inner.candidates.insert(key.clone(), stored.clone());
            inner.candidate_changed(key, Some(&stored.resource_version));
            Ok(stored)
        };
        future::ready(answer).boxed()
    }

    fn replace_candidate(
        &self,
        key: &LeaseKey,
        record: CandidateRecord,
        resource_version: &str,
    ) -> BoxFuture<'static, StoreResult<StoredCandidate>> {
        let mut inner = self.lock();
        let current = inner
            .candidates
            .get(key)
            .map(|c| c.resource_version.clone());
        let answer = match current {
            None => Err(StoreError::NotFound {
                lease: format!("leasecandidate {key}"),
            }),
            Some(v) if v != resource_version => Err(StoreError::Conflict {
                lease: format!("leasecandidate {key}"),
            }),
            Some(_) => {
                inner.revision += 1;
                let stored = StoredCandidate {
                    key: key.clone(),
                    record,
                    resource_version: inner.revision.to_string(),
                };
                inner.candidates.insert(key.clone(), stored.clone());
                inner.candidate_changed(key, Some(&stored.resource_version));
                Ok(stored)
            }
        };
        future::ready(answer).boxed()
    }

    fn delete_candidate(&self, key: &LeaseKey) -> BoxFuture<'static, StoreResult<()>> {
        let mut inner = self.lock();
        let answer = match inner.candidates.remove(key) {
            Some(_) => {
                inner.revision += 1;
                inner.candidate_changed(key, None);
                Ok(())
            }
            None => Err(StoreError::NotFound {
                lease: format!("leasecandidate {key}"),
            }),
        };
        future::ready(answer).boxed()
    }

    fn list_candidates(
        &self,
        namespace: &str,
    ) -> BoxFuture<'static, StoreResult<Vec<StoredCandidate>>> {
        let mut found: Vec<StoredCandidate> = self
            .lock()
            .candidates
            .values()
            .filter(|c| c.key.namespace == namespace)
            .cloned()
            .collect();
        found.sort_by(|a, b| a.key.name.cmp(&b.key.name));
        future::ready(Ok(found)).boxed()
    }

    fn candidate_changes(&self, key: &LeaseKey) -> BoxStream<'static, StoreResult<Option<String>>> {
        let (tx, rx) = mpsc::unbounded();
        self.lock()
            .candidate_watchers
            .entry(key.clone())
            .or_default()
            .push(tx);
        rx.map(Ok).boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    fn key() -> LeaseKey {
        LeaseKey::new("default", "s.election.x")
    }

    fn held_by(id: &str) -> LeaseRecord {
        LeaseRecord {
            holder_identity: Some(id.into()),
            lease_duration_seconds: Some(15),
            lease_transitions: Some(0),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn get_of_a_missing_lease_is_not_found() {
        let s = MemoryStore::new();
        assert!(matches!(
            s.get(&key()).await,
            Err(StoreError::NotFound { lease }) if lease == "default/s.election.x"
        ));
    }

    #[tokio::test]
    async fn create_then_create_again_is_already_exists() {
        let s = MemoryStore::new();
        let created = s.create(&key(), held_by("a")).await.unwrap();
        assert_eq!(created.record.holder(), Some("a"));
        assert_eq!(s.get(&key()).await.unwrap(), created);
        assert!(matches!(
            s.create(&key(), held_by("b")).await,
            Err(StoreError::AlreadyExists { .. })
        ));
        assert_eq!(s.get(&key()).await.unwrap().record.holder(), Some("a"));
    }

    #[tokio::test]
    async fn each_created_object_has_a_uid_of_its_own_kept_by_replaces() {
        let s = MemoryStore::new();
        let v1 = s.create(&key(), held_by("a")).await.unwrap();
        let uid = v1.uid.clone().expect("a uid");
        let v2 = s
            .replace(&key(), held_by("b"), &v1.resource_version)
            .await
            .unwrap();
        assert_eq!(v2.uid.as_deref(), Some(&*uid), "the same object");
        let other = s
            .create(&LeaseKey::new("default", "s.lock.y"), held_by("a"))
            .await
            .unwrap();
        assert_ne!(other.uid.as_deref(), Some(&*uid));
    }

    #[tokio::test]
    async fn replace_is_compare_and_swap_on_the_version() {
        let s = MemoryStore::new();
        let v1 = s.create(&key(), held_by("a")).await.unwrap();
        let v2 = s
            .replace(&key(), held_by("b"), &v1.resource_version)
            .await
            .unwrap();
        assert_ne!(v1.resource_version, v2.resource_version);
        // A writer still holding v1 loses.
        assert!(matches!(
            s.replace(&key(), held_by("c"), &v1.resource_version).await,
            Err(StoreError::Conflict { .. })
        ));
        assert_eq!(s.get(&key()).await.unwrap().record.holder(), Some("b"));
        assert_eq!(s.stats().conflicts, 1);
    }

    #[tokio::test]
    async fn a_replace_that_changes_nothing_keeps_the_version() {
        let s = MemoryStore::new();
        let mut w = s.watch("default");
        let v1 = s.create(&key(), held_by("a")).await.unwrap();
        let same = s
            .replace(&key(), held_by("a"), &v1.resource_version)
            .await
            .unwrap();
        assert_eq!(same, v1);
        let v2 = s
            .replace(&key(), held_by("b"), &v1.resource_version)
            .await
            .unwrap();
        assert_eq!(w.next().await.unwrap().unwrap(), WatchEvent::Applied(v1));
        assert_eq!(w.next().await.unwrap().unwrap(), WatchEvent::Applied(v2));
    }

    #[tokio::test]
    async fn replace_of_a_missing_lease_is_not_found() {
        let s = MemoryStore::new();
        assert!(matches!(
            s.replace(&key(), held_by("a"), "1").await,
            Err(StoreError::NotFound { .. })
        ));
    }

    #[tokio::test]
    async fn versions_increase_across_leases() {
        let s = MemoryStore::new();
        let a = s.create(&key(), held_by("a")).await.unwrap();
        let b = s
            .create(&LeaseKey::new("default", "other"), held_by("a"))
            .await
            .unwrap();
        let n = |l: &StoredLease| l.resource_version.parse::<u64>().unwrap();
        assert!(n(&b) > n(&a));
    }

    #[tokio::test]
    async fn invalid_specs_and_names_are_rejected_like_the_api_server() {
        let s = MemoryStore::new();
        let mut bad = held_by("a");
        bad.lease_duration_seconds = Some(0);
        assert!(matches!(
            s.create(&key(), bad).await,
            Err(StoreError::Invalid { message, .. }) if message.contains("leaseDurationSeconds")
        ));
        let mut bad = held_by("a");
        bad.lease_transitions = Some(-1);
        assert!(matches!(
            s.create(&key(), bad).await,
            Err(StoreError::Invalid { message, .. }) if message.contains("leaseTransitions")
        ));
        assert!(matches!(
            s.create(&LeaseKey::new("default", "Bad_Name"), held_by("a"))
                .await,
            Err(StoreError::Invalid { message, .. }) if message.contains("metadata.name")
        ));
        assert!(matches!(
            s.create(&LeaseKey::new("No", "x"), held_by("a")).await,
            Err(StoreError::Invalid { message, .. }) if message.contains("metadata.namespace")
        ));
        assert!(s.peek(&key()).is_none(), "nothing was written");
    }

    #[tokio::test]
    async fn candidate_changes_carry_each_version_and_a_delete() {
        use crate::store::CandidateRecord;
        let s = MemoryStore::new();
        let mine = LeaseKey::new("default", "pod-a");
        let mut changes = s.candidate_changes(&mine);
        let created = s
            .create_candidate(&mine, CandidateRecord::default())
            .await
            .unwrap();
        let other = LeaseKey::new("default", "pod-b");
        s.create_candidate(&other, CandidateRecord::default())
            .await
            .unwrap();
        let replaced = s
            .replace_candidate(&mine, CandidateRecord::default(), &created.resource_version)
            .await
            .unwrap();
        s.delete_candidate(&mine).await.unwrap();
        drop(s);
        let seen: Vec<Option<String>> = changes.by_ref().map(Result::unwrap).collect().await;
        assert_eq!(
            seen,
            vec![
                Some(created.resource_version),
                Some(replaced.resource_version),
                None
            ],
            "only pod-a's changes, in order, the delete as None"
        );
    }

    #[tokio::test]
    async fn watch_sees_every_write_in_order() {
        let s = MemoryStore::new();
        let mut w = s.watch("default");
        let v1 = s.create(&key(), held_by("a")).await.unwrap();
        let _ = s
            .create(&LeaseKey::new("elsewhere", "unrelated"), held_by("z"))
            .await;
        let v2 = s
            .replace(&key(), held_by("b"), &v1.resource_version)
            .await
            .unwrap();
        let other = s
            .create(&LeaseKey::new("default", "other"), held_by("z"))
            .await
            .unwrap();
        assert_eq!(w.next().await.unwrap().unwrap(), WatchEvent::Applied(v1));
        assert_eq!(w.next().await.unwrap().unwrap(), WatchEvent::Applied(v2));
        assert_eq!(
            w.next().await.unwrap().unwrap(),
            WatchEvent::Applied(other),
            "every lease of the namespace, and only those"
        );
    }

    #[tokio::test]
    async fn a_burst_of_writes_reaches_a_watcher_in_full() {
        let s = MemoryStore::new();
        let mut w = s.watch("default");
        let mut v = s.create(&key(), held_by("a")).await.unwrap();
        for i in 0..5000 {
            v = s
                .replace(&key(), held_by(&format!("p{i}")), &v.resource_version)
                .await
                .unwrap();
        }
        let events: Vec<_> = w.by_ref().take(5001).collect().await;
        assert_eq!(events.len(), 5001);
        assert_eq!(
            events.last().unwrap().as_ref().unwrap(),
            &WatchEvent::Applied(v)
        );
    }

    #[tokio::test]
    async fn a_dropped_watcher_is_forgotten() {
        let s = MemoryStore::new();
        drop(s.watch("default"));
        s.create(&key(), held_by("a")).await.unwrap();
        assert!(s.lock().watchers["default"].is_empty());
    }

    #[tokio::test]
    async fn list_is_the_namespace_sorted_by_name() {
        let s = MemoryStore::new();
        assert_eq!(s.list("default").await.unwrap(), vec![]);
        let b = s
            .create(&LeaseKey::new("default", "b"), held_by("x"))
            .await
            .unwrap();
        let a = s
            .create(&LeaseKey::new("default", "a"), held_by("y"))
            .await
            .unwrap();
        s.create(&LeaseKey::new("elsewhere", "a"), held_by("z"))
            .await
            .unwrap();
        assert_eq!(s.list("default").await.unwrap(), vec![a, b]);
        assert_eq!(s.stats().lists, 2);
    }

    #[tokio::test]
    async fn clones_share_state() {
        let s = MemoryStore::new();
        let t = s.clone();
        s.create(&key(), held_by("a")).await.unwrap();
        assert_eq!(t.get(&key()).await.unwrap().record.holder(), Some("a"));
    }
    #[tokio::test]
    async fn coordinated_fields_are_kept_and_validated_like_a_server_with_the_gate_on() {
        let s = MemoryStore::new();
        let coordinated = LeaseRecord {
            strategy: Some("OldestEmulationVersion".into()),
            preferred_holder: Some("b".into()),
            ..held_by("a")
        };
        let v = s.create(&key(), coordinated.clone()).await.unwrap();
        assert_eq!(s.get(&key()).await.unwrap().record, coordinated, "kept");
        let custom = LeaseRecord {
            strategy: Some("example.com/my-strategy".into()),
            ..held_by("a")
        };
        s.replace(&key(), custom, &v.resource_version)
            .await
            .unwrap();
        for (record, what) in [
            (
                LeaseRecord {
                    strategy: Some("Newest".into()),
                    ..held_by("a")
                },
                "spec.strategy",
            ),
            (
                LeaseRecord {
                    strategy: Some(String::new()),
                    ..held_by("a")
                },
                "spec.strategy",
            ),
            (
                LeaseRecord {
                    preferred_holder: Some("b".into()),
                    ..held_by("a")
                },
                "spec.preferredHolder",
            ),
        ] {
            match s.put(&key(), record) {
                Err(StoreError::Invalid { message, .. }) => {
                    assert!(message.contains(what), "{message}")
                }
                other => panic!("{what}: {other:?}"),
            }
        }
        // An empty preferred holder is no preferred holder.
        s.put(
            &key(),
            LeaseRecord {
                preferred_holder: Some(String::new()),
                ..held_by("a")
            },
        )
        .unwrap();
    }
}
