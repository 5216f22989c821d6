//! `KubeStore`: leases as `coordination.k8s.io/v1` `Lease` objects through `kube::Api<Lease>`.
//!
//! * Writes are compare-and-swap: `replace` is a PUT that carries `metadata.resourceVersion`,
//!   which the API server treats as a precondition (409 if the object changed). As client-go's
//!   `LeaseLock` does, the PUT is built on the last object seen at that version, so labels,
//!   annotations and owner references survive.
//! * Status codes map to [`StoreError`]: 409 → `Conflict` (or `AlreadyExists` on create),
//!   404 → `NotFound`, 403 → `Forbidden` naming the verb and resource, 422 → `Invalid` with the
//!   server's message; anything else is `Unavailable` and retried.
//! * Every call runs under a timeout (default 5 s, below the default renew deadline of 10 s).
//! * At most [`DEFAULT_MAX_IN_FLIGHT`] calls are in flight per store, so a process with many
//!   leases never bursts past the apiserver's in-flight limits (HTTP 429). Renewals and releases
//!   have a lane of their own and go before the acquisitions, reads and lists waiting for a
//!   place (rule `renewals-first`): a slow server does not cost a holder its term because
//!   campaigns filled the queue.
//! * All conversions between `SystemTime` and the API's `MicroTime` live in this file.
//!
//! RBAC: `get`, `create`, `update`, `list` and `watch` on `leases` in `coordination.k8s.io`
//! (`list` and `watch` for the watch, and `list` for [`LeaseStore::list`]). No `delete` or
//! `patch`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use futures::future::{BoxFuture, FutureExt};
use futures::stream::{BoxStream, StreamExt};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, ListParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};

use super::limit::{Lane, Limiter};
use super::{
    CandidateRecord, LeaseKey, LeaseRecord, LeaseStore, StoreError, StoreResult, StoredCandidate,
    StoredLease, WatchEvent,
};
use crate::record::{
    HANDOFF_REQUEST_ANNOTATION, HOLDER_POD_ANNOTATION, PREFERRED_HOLDER_ANNOTATION,
};

/// Default limit for one API call.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// Default limit of concurrent API calls per [`KubeStore`].
///
/// Leases acquired together renew together: a process with a thousand elections sends a
/// thousand PUTs in the same millisecond every retry period. Unlimited, such a burst exceeds the
/// apiserver's default `--max-mutating-requests-inflight` (200) and comes back as HTTP 429,
/// which then has to be retried (measured: 17 % of renewals at 1,000 elections). Queued behind
/// this limit the burst takes a few tens of milliseconds and nothing is rejected.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 32;

/// A [`LeaseStore`] on a Kubernetes API server.
#[derive(Clone)]
pub struct KubeStore {
    client: kube::Client,
    call_timeout: Duration,
    /// Bounds the calls in flight (see [`DEFAULT_MAX_IN_FLIGHT`]), renewals and releases first.
    in_flight: Arc<Limiter>,
    /// The last object seen per lease, the base of the next PUT: only for leases this
    /// process calls `get`, `create` or `replace` on (a list or the watch updates an entry,
    /// never adds one: other controllers' Leases are not kept). A deleted lease keeps its
    /// entry, empty (its actor may write it again, on what the watch brings), until its actor
    /// stops ([`LeaseStore::forget`]).
    seen: Arc<Mutex<HashMap<LeaseKey, Option<Lease>>>>,
}

impl std::fmt::Debug for KubeStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeStore")
            .field("call_timeout", &self.call_timeout)
            .field("max_in_flight", &self.in_flight.limit())
            .finish_non_exhaustive()
    }
}

impl KubeStore {
    /// A store using `client`. A kube `Client` belongs to the runtime that created it: create
    /// it inside the actix System that runs dsync.
    pub fn new(client: kube::Client) -> Self {
        KubeStore {
            client,
            call_timeout: DEFAULT_CALL_TIMEOUT,
            in_flight: Limiter::new(DEFAULT_MAX_IN_FLIGHT),
            seen: Arc::default(),
        }
    }

    /// Sets how many API calls (get, create, update, list) may be in flight at once; more wait their
    /// turn (renewals and releases first), and the wait counts towards the call's timeout. The
    /// watch is not counted.
    #[must_use]
    pub fn with_max_in_flight(mut self, limit: std::num::NonZeroUsize) -> Self {
        self.in_flight = Limiter::new(limit.get());
        self
    }

    /// Sets the per-call timeout. Keep it below the renew deadline.
    #[must_use]
    pub fn with_call_timeout(mut self, timeout: Duration) -> Self {
        self.call_timeout = timeout;
        self
    }

    fn api(&self, key: &LeaseKey) -> Api<Lease> {
        Api::namespaced(self.client.clone(), &key.namespace)
    }

    fn candidates(&self, namespace: &str) -> Api<DynamicObject> {
        Api::namespaced_with(self.client.clone(), namespace, &lease_candidate_resource())
    }

    /// Runs one API call under the in-flight limit (waiting in `lane`) and the call timeout,
    /// mapping its errors.
    fn call<T, F>(
        &self,
        target: Target,
        verb: &'static str,
        lane: Lane,
        fut: F,
    ) -> BoxFuture<'static, StoreResult<T>>
    where
        T: Send + 'static,
        F: Future<Output = Result<T, kube::Error>> + Send + 'static,
    {
        let limit = self.call_timeout;
        let enter = self.in_flight.enter(lane);
        let fut = async move {
            let _place = enter.await;
            fut.await
        };
        async move {
            match tokio::time::timeout(limit, fut).await {
                Ok(Ok(answer)) => Ok(answer),
                Ok(Err(error)) => Err(map_error(&target, verb, error)),
                Err(_) => Err(StoreError::Timeout {
                    operation: format!("{verb} {target}"),
                    after: limit,
                }),
            }
        }
        .boxed()
    }

    /// [`call`](Self::call) for one lease: the answer is remembered and converted.
    fn call_one<F>(
        &self,
        key: &LeaseKey,
        verb: &'static str,
        lane: Lane,
        fut: F,
    ) -> BoxFuture<'static, StoreResult<StoredLease>>
    where
        F: Future<Output = Result<Lease, kube::Error>> + Send + 'static,
    {
        let key = key.clone();
        let seen = self.seen.clone();
        self.call(Target::Lease(key.clone()), verb, lane, fut)
            .map(move |answer| answer.map(|lease| remember(&seen, &key, lease, Cache::Add)))
            .boxed()
    }

    /// How many leases the store keeps an entry for, as the base of a PUT (for tests of what a
    /// long-running process keeps).
    #[doc(hidden)]
    pub fn cached_leases(&self) -> usize {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

/// What an API call is about: one lease, or the leases of a namespace (a list).
#[derive(Debug, Clone)]
enum Target {
    Lease(LeaseKey),
    Namespace(String),
    /// A `LeaseCandidate` (coordinated leader election).
    Candidate(LeaseKey),
    /// The `LeaseCandidate`s of a namespace.
    Candidates(String),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Lease(key) => write!(f, "lease {key}"),
            Target::Namespace(namespace) => write!(f, "leases in namespace {namespace}"),
            Target::Candidate(key) => write!(f, "leasecandidate {key}"),
            Target::Candidates(namespace) => {
                write!(f, "leasecandidates in namespace {namespace}")
            }
        }
    }
}

impl LeaseStore for KubeStore {
    fn get(&self, key: &LeaseKey) -> BoxFuture<'static, StoreResult<StoredLease>> {
        let api = self.api(key);
        let name = key.name.clone();
        self.call_one(
            key,
            "get",
            Lane::Normal,
            async move { api.get(&name).await },
        )
    }

    fn create(
        &self,
        key: &LeaseKey,
        record: LeaseRecord,
    ) -> BoxFuture<'static, StoreResult<StoredLease>> {
        let api = self.api(key);
        let lease = to_lease(key, &record, None);
        self.call_one(key, "create", Lane::Normal, async move {
            api.create(&PostParams::default(), &lease).await
        })
    }

    fn replace(
        &self,
        key: &LeaseKey,
        record: LeaseRecord,
        resource_version: &str,
    ) -> BoxFuture<'static, StoreResult<StoredLease>> {
        let api = self.api(key);
        let name = key.name.clone();
        let base = self
            .seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .and_then(Option::as_ref)
            .filter(|l| l.metadata.resource_version.as_deref() == Some(resource_version))
            .cloned();
        let lane = lane_of(&record, base.as_ref());
        let mut lease = to_lease(key, &record, Some(resource_version.to_owned()));
        if let Some(base) = base {
            // Keep what others put on the object (labels, annotations, owners); dsync's own
            // annotations are the record's.
            let mut metadata = ObjectMeta {
                resource_version: Some(resource_version.to_owned()),
                ..base.metadata
            };
            set_annotations(&mut metadata, &record);
            lease.metadata = metadata;
        }
        self.call_one(key, "update", lane, async move {
            api.replace(&name, &PostParams::default(), &lease).await
        })
    }

    fn list(&self, namespace: &str) -> BoxFuture<'static, StoreResult<Vec<StoredLease>>> {
        let api: Api<Lease> = Api::namespaced(self.client.clone(), namespace);
        let seen = self.seen.clone();
        let owned = namespace.to_owned();
        // No limit: one response, one snapshot (a paginated list could span compactions).
        self.call(
            Target::Namespace(namespace.to_owned()),
            "list",
            Lane::Normal,
            async move { api.list(&ListParams::default()).await },
        )
        .map(move |answer| {
            answer.map(|list| {
                let mut leases: Vec<StoredLease> = list
                    .items
                    .into_iter()
                    .map(|lease| {
                        let key =
                            LeaseKey::new(&*owned, lease.metadata.name.clone().unwrap_or_default());
                        remember(&seen, &key, lease, Cache::UpdateOnly)
                    })
                    .collect();
                leases.sort_by(|a, b| a.name.cmp(&b.name));
                leases
            })
        })
        .boxed()
    }

    fn forget(&self, key: &LeaseKey) {
        self.seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
    }

    fn watch(&self, namespace: &str) -> BoxStream<'static, StoreResult<WatchEvent>> {
        let api: Api<Lease> = Api::namespaced(self.client.clone(), namespace);
        let seen = self.seen.clone();
        let namespace = namespace.to_owned();
        watcher(api, watcher::Config::default())
            .backoff(WatchBackoff::default())
            .filter_map(move |event| {
                let item = match event {
                    Ok(watcher::Event::Apply(lease) | watcher::Event::InitApply(lease)) => {
                        let key = LeaseKey::new(
                            &*namespace,
                            lease.metadata.name.clone().unwrap_or_default(),
                        );
                        Some(Ok(WatchEvent::Applied(remember(
                            &seen,
                            &key,
                            lease,
                            Cache::UpdateOnly,
                        ))))
                    }
                    Ok(watcher::Event::Delete(lease)) => {
                        let name = lease.metadata.name.unwrap_or_default();
                        // Gone: no PUT can be based on it (a lease created again is read
                        // again first).
                        if let Some(entry) = seen
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .get_mut(&LeaseKey::new(&*namespace, name.clone()))
                        {
                            *entry = None;
                        }
                        Some(Ok(WatchEvent::Deleted { name }))
                    }
                    Ok(watcher::Event::Init | watcher::Event::InitDone) => None,
                    Err(error) => Some(Err(StoreError::Unavailable {
                        message: format!("watch on leases in namespace {namespace} failed"),
                        source: Some(Box::new(error)),
                    })),
                };
                futures::future::ready(item)
            })
            .boxed()
    }

    fn get_candidate(&self, key: &LeaseKey) -> BoxFuture<'static, StoreResult<StoredCandidate>> {
        let api = self.candidates(&key.namespace);
        let (name, owned) = (key.name.clone(), key.clone());
        let call = self.call(
            Target::Candidate(key.clone()),
            "get",
            Lane::Normal,
            async move { api.get(&name).await },
        );
        async move { from_candidate(&owned, call.await?) }.boxed()
    }

    fn create_candidate(
        &self,
        key: &LeaseKey,
        record: CandidateRecord,
    ) -> BoxFuture<'static, StoreResult<StoredCandidate>> {
        let api = self.candidates(&key.namespace);
        let object = to_candidate(key, &record, None);
        let owned = key.clone();
        let call = self.call(
            Target::Candidate(key.clone()),
            "create",
            Lane::Normal,
            async move { api.create(&PostParams::default(), &object).await },
        );
        async move { from_candidate(&owned, call.await?) }.boxed()
    }

    fn replace_candidate(
        &self,
        key: &LeaseKey,
        record: CandidateRecord,
        resource_version: &str,
    ) -> BoxFuture<'static, StoreResult<StoredCandidate>> {
        let api = self.candidates(&key.namespace);
        let object = to_candidate(key, &record, Some(resource_version.to_owned()));
        let (name, owned) = (key.name.clone(), key.clone());
        let call = self.call(
            Target::Candidate(key.clone()),
            "update",
            Lane::Normal,
            async move { api.replace(&name, &PostParams::default(), &object).await },
        );
        async move { from_candidate(&owned, call.await?) }.boxed()
    }

    fn delete_candidate(&self, key: &LeaseKey) -> BoxFuture<'static, StoreResult<()>> {
        let api = self.candidates(&key.namespace);
        let name = key.name.clone();
        self.call(
            Target::Candidate(key.clone()),
            "delete",
            Lane::Normal,
            async move {
                api.delete(&name, &DeleteParams::default())
                    .await
                    .map(|_| ())
            },
        )
    }

    fn list_candidates(
        &self,
        namespace: &str,
    ) -> BoxFuture<'static, StoreResult<Vec<StoredCandidate>>> {
        let api = self.candidates(namespace);
        let owned = namespace.to_owned();
        let call = self.call(
            Target::Candidates(namespace.to_owned()),
            "list",
            Lane::Normal,
            async move { api.list(&ListParams::default()).await },
        );
        async move {
            let list = call.await?;
            let mut found = list
                .items
                .into_iter()
                .map(|o| {
                    let key =
                        LeaseKey::new(owned.clone(), o.metadata.name.clone().unwrap_or_default());
                    from_candidate(&key, o)
                })
                .collect::<StoreResult<Vec<_>>>()?;
            found.sort_by(|a, b| a.key.name.cmp(&b.key.name));
            Ok(found)
        }
        .boxed()
    }

    /// One watch on the one object (a `metadata.name` field selector), as client-go's
    /// candidate keeps an informer on it: pings are seen as they come, for one request.
    fn candidate_changes(&self, key: &LeaseKey) -> BoxStream<'static, StoreResult<Option<String>>> {
        let api = self.candidates(&key.namespace);
        let config = watcher::Config::default().fields(&format!("metadata.name={}", key.name));
        let key = key.clone();
        watcher(api, config)
            .backoff(WatchBackoff::default())
            .filter_map(move |event| {
                let item = match event {
                    // The first list's objects are summed up by its end.
                    Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => None,
                    Ok(watcher::Event::InitDone | watcher::Event::Delete(_)) => Some(Ok(None)),
                    Ok(watcher::Event::Apply(object)) => Some(Ok(object.metadata.resource_version)),
                    Err(error) => Some(Err(StoreError::Unavailable {
                        message: format!("watch on leasecandidate {key} failed"),
                        source: Some(Box::new(error)),
                    })),
                };
                futures::future::ready(item)
            })
            .boxed()
    }
}

/// How soon the watch is reopened after it failed: 250 ms, doubling up to 2 s (the default
/// retry period), each less up to a quarter at random so that replicas cut off together do not
/// come back in step; from the start again once an event arrives.
///
/// kube's default grows to 30 s: after an API server outage of 20 s the watch would come back
/// up to 25 s after the server, long after followers would have judged their leases expired
/// for want of news. A watch is one request per replica and namespace, so asking every 2 s
/// while the server is down costs it nothing. (The watcher resumes from the last version it
/// saw, so nothing is lost while it is away; dsync's hub also lists the namespace once.)
#[derive(Debug)]
struct WatchBackoff {
    next: Duration,
}

impl WatchBackoff {
    const FIRST: Duration = Duration::from_millis(250);
    const MAX: Duration = Duration::from_secs(2);
}

impl Default for WatchBackoff {
    fn default() -> Self {
        WatchBackoff { next: Self::FIRST }
    }
}

impl Iterator for WatchBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let delay = self.next;
        self.next = (delay * 2).min(Self::MAX);
        // Up to a quarter off, at random (a v4 UUID is 122 random bits).
        let random = (uuid::Uuid::new_v4().as_u128() & 0xffff) as u32;
        Some(delay - delay / 4 * random / 0xffff)
    }
}

impl kube::runtime::utils::Backoff for WatchBackoff {
    fn reset(&mut self) {
        self.next = Self::FIRST;
    }
}

/// The lane of a PUT of `record` on `base` (the object it replaces, if this store saw it): a
/// release (no holder) or a renewal (the holder of `base` writes again) is
/// [`Lane::Urgent`]; a takeover, or a write on an object this store has not seen, is not.
///
/// Told from the records rather than by the caller so that the [`LeaseStore`] trait stays what
/// the API server offers: the store knows what it replaces.
fn lane_of(record: &LeaseRecord, base: Option<&Lease>) -> Lane {
    let Some(holder) = record.holder() else {
        return Lane::Urgent;
    };
    let base_holder = base
        .and_then(|b| b.spec.as_ref())
        .and_then(|spec| spec.holder_identity.as_deref());
    if base_holder == Some(holder) {
        Lane::Urgent
    } else {
        Lane::Normal
    }
}

/// Whether an answer may add a lease to the cache of PUT bases.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Cache {
    /// An answer to a call for this lease: this process uses it.
    Add,
    /// A list or the watch, which bring every Lease of the namespace: only a lease already
    /// cached is brought up to date.
    UpdateOnly,
}

/// Caches `lease` as the base of the next PUT (as `cache` allows) and converts it.
fn remember(
    seen: &Mutex<HashMap<LeaseKey, Option<Lease>>>,
    key: &LeaseKey,
    lease: Lease,
    cache: Cache,
) -> StoredLease {
    let stored = from_lease(key, lease.clone());
    let mut seen = seen.lock().unwrap_or_else(|p| p.into_inner());
    let newer = match seen.get(key) {
        Some(Some(old)) => crate::record::is_newer(
            &stored.resource_version,
            old.metadata.resource_version.as_deref(),
        ),
        // Used by this process, deleted since.
        Some(None) => true,
        None => cache == Cache::Add,
    };
    if newer {
        seen.insert(key.clone(), Some(lease));
    }
    stored
}

fn to_micro(t: Option<SystemTime>) -> Option<MicroTime> {
    t.and_then(|t| Timestamp::try_from(t).ok()).map(MicroTime)
}

fn from_micro(t: Option<MicroTime>) -> Option<SystemTime> {
    t.map(|MicroTime(ts)| SystemTime::from(ts))
}

/// The object to create or (with `resource_version`) to replace. A released lease names
/// holder `""` as client-go does.
fn to_lease(key: &LeaseKey, record: &LeaseRecord, resource_version: Option<String>) -> Lease {
    let mut metadata = ObjectMeta {
        name: Some(key.name.clone()),
        namespace: Some(key.namespace.clone()),
        resource_version,
        ..Default::default()
    };
    set_annotations(&mut metadata, record);
    Lease {
        metadata,
        spec: Some(LeaseSpec {
            holder_identity: Some(record.holder_identity.clone().unwrap_or_default()),
            lease_duration_seconds: record.lease_duration_seconds,
            acquire_time: to_micro(record.acquire_time),
            renew_time: to_micro(record.renew_time),
            lease_transitions: record.lease_transitions,
            // Coordinated-leader-election fields, kept as read.
            strategy: record.strategy.clone(),
            preferred_holder: record.preferred_holder.clone(),
        }),
    }
}

/// Writes the record's annotations ([`PREFERRED_HOLDER_ANNOTATION`], [`HANDOFF_REQUEST_ANNOTATION`],
/// [`HOLDER_POD_ANNOTATION`]) into `metadata`, removing those it does not carry.
fn set_annotations(metadata: &mut ObjectMeta, record: &LeaseRecord) {
    for (key, value) in [
        (PREFERRED_HOLDER_ANNOTATION, &record.successor),
        (HANDOFF_REQUEST_ANNOTATION, &record.handoff_request),
        (HOLDER_POD_ANNOTATION, &record.holder_pod),
    ] {
        match value {
            Some(value) => {
                metadata
                    .annotations
                    .get_or_insert_with(Default::default)
                    .insert(key.to_owned(), value.clone());
            }
            None => {
                if let Some(annotations) = &mut metadata.annotations {
                    annotations.remove(key);
                }
            }
        }
    }
    if metadata.annotations.as_ref().is_some_and(|a| a.is_empty()) {
        metadata.annotations = None;
    }
}

fn from_lease(key: &LeaseKey, lease: Lease) -> StoredLease {
    let annotation = |key: &str| {
        lease
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(key))
            .filter(|v| !v.is_empty())
            .cloned()
    };
    let (successor, handoff_request, holder_pod) = (
        annotation(PREFERRED_HOLDER_ANNOTATION),
        annotation(HANDOFF_REQUEST_ANNOTATION),
        annotation(HOLDER_POD_ANNOTATION),
    );
    let spec = lease.spec.unwrap_or_default();
    StoredLease {
        name: lease.metadata.name.unwrap_or_else(|| key.name.clone()),
        record: LeaseRecord {
            holder_identity: spec.holder_identity,
            lease_duration_seconds: spec.lease_duration_seconds,
            acquire_time: from_micro(spec.acquire_time),
            renew_time: from_micro(spec.renew_time),
            lease_transitions: spec.lease_transitions,
            strategy: spec.strategy,
            preferred_holder: spec.preferred_holder,
            successor,
            handoff_request,
            holder_pod,
        },
        resource_version: lease.metadata.resource_version.unwrap_or_default(),
        uid: lease.metadata.uid,
    }
}

/// `coordination.k8s.io/v1beta1` `LeaseCandidate`, the version the API server's election
/// controller reads in Kubernetes 1.33 to 1.36. A dynamic object, so that the library needs
/// no k8s-openapi version feature (the typed `LeaseCandidate` exists only behind one).
fn lease_candidate_resource() -> ApiResource {
    ApiResource {
        group: "coordination.k8s.io".into(),
        version: "v1beta1".into(),
        api_version: "coordination.k8s.io/v1beta1".into(),
        kind: "LeaseCandidate".into(),
        plural: "leasecandidates".into(),
    }
}

fn micro_json(t: Option<SystemTime>) -> serde_json::Value {
    to_micro(t)
        .and_then(|m| serde_json::to_value(m).ok())
        .unwrap_or(serde_json::Value::Null)
}

fn micro_from_json(v: Option<&serde_json::Value>) -> Option<SystemTime> {
    let v = v.filter(|v| !v.is_null())?;
    from_micro(serde_json::from_value::<MicroTime>(v.clone()).ok())
}

/// The object to create or (with `resource_version`) to replace.
fn to_candidate(
    key: &LeaseKey,
    record: &CandidateRecord,
    resource_version: Option<String>,
) -> DynamicObject {
    let mut object =
        DynamicObject::new(&key.name, &lease_candidate_resource()).within(&key.namespace);
    object.metadata.resource_version = resource_version;
    let mut spec = serde_json::json!({
        "leaseName": record.lease_name,
        "binaryVersion": record.binary_version,
        "emulationVersion": record.emulation_version,
        "strategy": record.strategy,
    });
    for (field, t) in [
        ("renewTime", record.renew_time),
        ("pingTime", record.ping_time),
    ] {
        let value = micro_json(t);
        if !value.is_null() {
            spec[field] = value;
        }
    }
    object.data = serde_json::json!({ "spec": spec });
    object
}

fn from_candidate(key: &LeaseKey, object: DynamicObject) -> StoreResult<StoredCandidate> {
    let spec = object.data.get("spec").ok_or_else(|| StoreError::Invalid {
        lease: format!("leasecandidate {key}"),
        message: "the object has no spec".into(),
    })?;
    let text = |field: &str| {
        spec.get(field)
            .and_then(serde_json::Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    Ok(StoredCandidate {
        key: key.clone(),
        record: CandidateRecord {
            lease_name: text("leaseName"),
            binary_version: text("binaryVersion"),
            emulation_version: text("emulationVersion"),
            strategy: text("strategy"),
            renew_time: micro_from_json(spec.get("renewTime")),
            ping_time: micro_from_json(spec.get("pingTime")),
        },
        resource_version: object.metadata.resource_version.unwrap_or_default(),
    })
}

fn map_error(target: &Target, verb: &str, error: kube::Error) -> StoreError {
    let (lease, resource) = match target {
        Target::Lease(key) => (
            key.to_string(),
            format!("leases.coordination.k8s.io {:?}", key.to_string()),
        ),
        Target::Namespace(namespace) => (
            namespace.clone(),
            format!("leases.coordination.k8s.io in namespace {namespace:?}"),
        ),
        Target::Candidate(key) => (
            format!("leasecandidate {key}"),
            format!("leasecandidates.coordination.k8s.io {:?}", key.to_string()),
        ),
        Target::Candidates(namespace) => (
            namespace.clone(),
            format!("leasecandidates.coordination.k8s.io in namespace {namespace:?}"),
        ),
    };
    match error {
        kube::Error::Api(status) => match status.code {
            409 if verb == "create" => StoreError::AlreadyExists { lease },
            409 => StoreError::Conflict { lease },
            404 => StoreError::NotFound { lease },
            403 => StoreError::Forbidden {
                verb: verb.to_owned(),
                resource,
                message: status.message.clone(),
            },
            422 => StoreError::Invalid {
                lease,
                message: status.message.clone(),
            },
            _ => StoreError::Unavailable {
                message: format!("{verb} {target}: HTTP {}", status.code),
                source: Some(Box::new(kube::Error::Api(status))),
            },
        },
        other => StoreError::Unavailable {
            message: format!("{verb} {target}"),
            source: Some(Box::new(other)),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_through_lease_objects() {
        let key = LeaseKey::new("ns", "s.election.x");
        let now = SystemTime::UNIX_EPOCH + Duration::from_micros(1_700_000_000_123_456);
        let record = LeaseRecord {
            holder_identity: Some("pod-a".into()),
            lease_duration_seconds: Some(15),
            acquire_time: Some(now),
            renew_time: Some(now + Duration::from_secs(2)),
            lease_transitions: Some(3),
            strategy: None,
            preferred_holder: None,
            successor: None,
            handoff_request: Some("pod-b".into()),
            holder_pod: Some("pod-a-7d9f".into()),
        };
        let mut lease = to_lease(&key, &record, Some("42".into()));
        assert_eq!(
            lease.metadata.annotations.as_ref().unwrap()[HANDOFF_REQUEST_ANNOTATION],
            "pod-b"
        );
        assert_eq!(
            lease.metadata.annotations.as_ref().unwrap()[HOLDER_POD_ANNOTATION],
            "pod-a-7d9f"
        );
        assert_eq!(lease.metadata.resource_version.as_deref(), Some("42"));
        lease.metadata.uid = Some("0b5e-uid".into());
        lease.spec.as_mut().unwrap().strategy = Some("OldestEmulationVersion".into());
        lease.spec.as_mut().unwrap().preferred_holder = Some("pod-b".into());
        let back = from_lease(&key, lease);
        assert_eq!(back.resource_version, "42");
        assert_eq!(back.uid.as_deref(), Some("0b5e-uid"));
        assert_eq!(back.record.holder_pod.as_deref(), Some("pod-a-7d9f"));
        assert_eq!(back.record.holder(), Some("pod-a"));
        assert_eq!(back.record.acquire_time, Some(now), "microseconds survive");
        assert_eq!(back.record.lease_transitions, Some(3));
        assert_eq!(
            back.record.strategy.as_deref(),
            Some("OldestEmulationVersion")
        );
        assert_eq!(back.record.preferred_holder.as_deref(), Some("pod-b"));
        // And written back as read (a PUT keeps them).
        let spec = to_lease(&key, &back.record, None).spec.unwrap();
        assert_eq!(spec.strategy.as_deref(), Some("OldestEmulationVersion"));
        assert_eq!(spec.preferred_holder.as_deref(), Some("pod-b"));
        assert_eq!(back.record.handoff_request.as_deref(), Some("pod-b"));
        assert_eq!(back.record.successor, None);
    }

    #[test]
    fn handoff_annotations_are_set_and_removed_leaving_others_alone() {
        let mut metadata = ObjectMeta {
            annotations: Some(
                [
                    ("team".to_owned(), "payments".to_owned()),
                    (HANDOFF_REQUEST_ANNOTATION.to_owned(), "pod-b".to_owned()),
                ]
                .into(),
            ),
            ..Default::default()
        };
        let handed = LeaseRecord {
            successor: Some("pod-b".into()),
            ..LeaseRecord::default()
        };
        set_annotations(&mut metadata, &handed);
        let annotations = metadata.annotations.as_ref().unwrap();
        assert_eq!(annotations["team"], "payments");
        assert_eq!(annotations[PREFERRED_HOLDER_ANNOTATION], "pod-b");
        assert!(
            !annotations.contains_key(HANDOFF_REQUEST_ANNOTATION),
            "settled"
        );
        set_annotations(&mut metadata, &LeaseRecord::default());
        let annotations = metadata.annotations.as_ref().unwrap();
        assert_eq!(annotations.len(), 1, "only the user's annotation is left");
    }

    #[test]
    fn a_released_record_writes_an_empty_holder_like_client_go() {
        let key = LeaseKey::new("ns", "l");
        let lease = to_lease(&key, &LeaseRecord::default(), None);
        assert_eq!(lease.spec.unwrap().holder_identity.as_deref(), Some(""));
    }

    #[test]
    fn a_lease_without_spec_reads_as_free() {
        let key = LeaseKey::new("ns", "l");
        let stored = from_lease(&key, Lease::default());
        assert_eq!(stored.record.holder(), None);
        assert_eq!(stored.name, "l");
    }

    #[test]
    fn renewals_first_renewals_and_releases_take_the_urgent_lane() {
        let key = LeaseKey::new("ns", "l");
        let held_by = |holder: &str| {
            let record = LeaseRecord {
                holder_identity: Some(holder.into()),
                ..LeaseRecord::default()
            };
            to_lease(&key, &record, Some("7".into()))
        };
        let by_a = LeaseRecord {
            holder_identity: Some("pod-a".into()),
            ..LeaseRecord::default()
        };
        assert_eq!(
            lane_of(&by_a, Some(&held_by("pod-a"))),
            Lane::Urgent,
            "a renewal"
        );
        assert_eq!(
            lane_of(&LeaseRecord::default(), Some(&held_by("pod-a"))),
            Lane::Urgent,
            "a release"
        );
        assert_eq!(
            lane_of(&by_a, Some(&held_by("pod-b"))),
            Lane::Normal,
            "a takeover"
        );
        assert_eq!(
            lane_of(&by_a, Some(&held_by(""))),
            Lane::Normal,
            "an acquisition"
        );
        assert_eq!(
            lane_of(&by_a, None),
            Lane::Normal,
            "a write on an unseen object"
        );
    }

    fn api_error(code: u16, message: &str) -> kube::Error {
        kube::Error::Api(Box::new(kube::core::Status {
            code,
            message: message.into(),
            ..Default::default()
        }))
    }

    #[test]
    fn write_backoff_a_throttled_answer_carries_the_servers_wait() {
        let target = Target::Lease(LeaseKey::new("ns", "l"));
        let e = map_error(&target, "update", api_error(429, "slow down"));
        assert!(e.is_transient());
        assert_eq!(e.retry_after(), Some(Duration::from_secs(1)), "429: 1 s");
        let mut status = kube::core::Status {
            code: 503,
            message: "busy".into(),
            ..Default::default()
        };
        status.details = Some(serde_json::from_str(r#"{"retryAfterSeconds": 7}"#).unwrap());
        let e = map_error(&target, "get", kube::Error::Api(Box::new(status)));
        assert_eq!(e.retry_after(), Some(Duration::from_secs(7)), "the hint");
        let e = map_error(&target, "get", api_error(503, "busy"));
        assert_eq!(e.retry_after(), None, "no hint, no wait of the server's");
    }

    #[test]
    fn status_codes_map_to_store_errors() {
        let target = Target::Lease(LeaseKey::new("ns", "l"));
        assert!(matches!(
            map_error(&target, "create", api_error(409, "exists")),
            StoreError::AlreadyExists { .. }
        ));
        assert!(matches!(
            map_error(&target, "update", api_error(409, "changed")),
            StoreError::Conflict { .. }
        ));
        assert!(matches!(
            map_error(&target, "get", api_error(404, "gone")),
            StoreError::NotFound { .. }
        ));
        match map_error(&target, "update", api_error(403, "no")) {
            StoreError::Forbidden {
                verb,
                resource,
                message,
            } => {
                assert_eq!(verb, "update");
                assert_eq!(resource, "leases.coordination.k8s.io \"ns/l\"");
                assert_eq!(message, "no");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            map_error(&target, "create", api_error(422, "bad")),
            StoreError::Invalid { message, .. } if message == "bad"
        ));
        let e = map_error(&target, "get", api_error(503, "busy"));
        assert!(e.is_transient(), "{e:?}");
        let namespace = Target::Namespace("ns".into());
        match map_error(&namespace, "list", api_error(403, "no")) {
            StoreError::Forbidden { verb, resource, .. } => {
                assert_eq!(verb, "list");
                assert_eq!(resource, "leases.coordination.k8s.io in namespace \"ns\"");
            }
            other => panic!("{other:?}"),
        }
        let e = map_error(&namespace, "list", api_error(500, "oops"));
        assert!(e.to_string().contains("list leases in namespace ns"), "{e}");
    }
}
