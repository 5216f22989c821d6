//! [`FaultyStore`]: a [`LeaseStore`] in front of another that misbehaves on command.
//!
//! Put one in front of each replica's store (usually one shared [`MemoryStore`](crate::MemoryStore))
//! and play what a bad network, a struggling API server or a crashed process looks like to
//! dsync: partitions, stalled calls, failed calls, lost replies, latency, 409 storms, cut or
//! silent watches, a skewed wall clock, records nobody validated.
//!
//! Faults on calls (`get`, `create`, `replace`, `list`) are chosen with [`Call`]; [`Call::Any`]
//! means any of those four, never the watch, which has faults of its own
//! ([`drop_watches`](FaultyStore::drop_watches), [`silence_watches`](FaultyStore::silence_watches),
//! and [`Call::Watch`] for the `fail_*` methods).

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use futures::future::{BoxFuture, FutureExt};
use futures::stream::{BoxStream, StreamExt};
use tokio::time::Instant;

use crate::store::{
    CandidateRecord, LeaseKey, LeaseRecord, LeaseStore, StoreError, StoreResult, StoredCandidate,
    StoredLease, WatchEvent,
};

/// Which store call a fault applies to, and which calls [`FaultyStore::calls`] counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Call {
    /// [`LeaseStore::get`].
    Get,
    /// [`LeaseStore::create`].
    Create,
    /// [`LeaseStore::replace`].
    Replace,
    /// [`LeaseStore::watch`]: a watch being opened.
    Watch,
    /// [`LeaseStore::list`].
    List,
    /// Any of `get`, `create`, `replace` and `list` (not `watch`, and no `LeaseCandidate`
    /// call).
    Any,
    /// Any call on `LeaseCandidate`s ([`LeaseStore::get_candidate`], `create_candidate`,
    /// `replace_candidate`, `delete_candidate`, `list_candidates`).
    Candidate,
    /// [`LeaseStore::candidate_changes`]: a candidate's change signal being opened.
    CandidateWatch,
}

impl Call {
    /// Whether a fault chosen with `self` applies to a concrete call `call`.
    fn covers(self, call: Call) -> bool {
        self == call || (self == Call::Any && call.index() < 4)
    }

    fn index(self) -> usize {
        match self {
            Call::Get => 0,
            Call::Create => 1,
            Call::Replace => 2,
            Call::List => 3,
            Call::Watch | Call::Any => 4,
            Call::Candidate => 5,
            Call::CandidateWatch => 6,
        }
    }
}

/// Whether an injected failure happens before the call reaches the store, or after it took
/// effect (the reply is lost: the caller cannot know whether its write landed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    /// The call fails without reaching the inner store.
    Before,
    /// The call reaches the inner store and takes effect; its reply is replaced by the error.
    After,
}

/// How far a replica's wall clock is off (see [`FaultyStore::set_clock_skew`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClockSkew {
    /// The replica's clock runs ahead: the times it stamps are in the future.
    Ahead(Duration),
    /// The replica's clock runs behind: the times it stamps are in the past.
    Behind(Duration),
}

impl ClockSkew {
    /// `t` as the skewed clock would have read it (saturating at the ends of `SystemTime`).
    pub fn shift(self, t: SystemTime) -> SystemTime {
        match self {
            ClockSkew::Ahead(d) => t.checked_add(d).unwrap_or(t),
            ClockSkew::Behind(d) => t.checked_sub(d).unwrap_or(SystemTime::UNIX_EPOCH),
        }
    }
}

/// `r` as a replica whose clock is off by `skew` stamps it. `renewTime` is always stamped from
/// the writer's clock; `acquireTime` only when stamped in the same write (then it equals
/// `renewTime`): a renewal copies it from the stored record, which is already skewed.
fn skew_record(skew: Option<ClockSkew>, mut r: LeaseRecord) -> LeaseRecord {
    let Some(skew) = skew else {
        return r;
    };
    if r.acquire_time == r.renew_time {
        r.acquire_time = r.acquire_time.map(|t| skew.shift(t));
    }
    r.renew_time = r.renew_time.map(|t| skew.shift(t));
    r
}

type MakeError = Box<dyn Fn(&str) -> StoreError + Send + Sync>;
type Tamper = Arc<dyn Fn(StoredLease) -> StoredLease + Send + Sync>;

/// What open watch streams must obey; published to them on every change.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct WatchControl {
    partitioned: bool,
    silent: bool,
    /// Bumped to cut the streams open now.
    generation: u64,
}

#[derive(Default)]
struct Faults {
    partitioned: bool,
    /// Calls of these kinds hang; `Call::Watch` here makes watches silent.
    stalled: Vec<Call>,
    /// Calls of these kinds fail, every time, until `clear`.
    persistent: Vec<(Call, MakeError)>,
    /// One-shot failures, in the order they were queued.
    queued: VecDeque<(Call, When, MakeError)>,
    request_latency: Duration,
    response_latency: Duration,
    skew: Option<ClockSkew>,
    tamper: Option<Tamper>,
    /// Versions are reported this much lower than the inner store's (see `rewind_versions`).
    rewind: u64,
    /// The versions reported since the rewind, and the inner store's versions they stand
    /// for: only these are translated back on a write.
    rewound: std::collections::HashMap<String, String>,
    /// get, create, replace, list, watch.
    calls: [u64; 7],
    watch_generation: u64,
}

impl Faults {
    fn control(&self) -> WatchControl {
        WatchControl {
            partitioned: self.partitioned,
            silent: self.stalled.contains(&Call::Watch),
            generation: self.watch_generation,
        }
    }

    /// Takes the first queued fault for `call`.
    fn take_queued(&mut self, call: Call) -> Option<(When, MakeError)> {
        let pos = self.queued.iter().position(|(c, _, _)| c.covers(call))?;
        self.queued.remove(pos).map(|(_, when, make)| (when, make))
    }
}

/// A [`LeaseStore`] in front of another that injects faults on command and counts calls.
///
/// Cheap to clone; clones share the faults and counters. Every method takes effect for calls
/// made from then on (a call already hanging stays hung; its caller's timeout decides).
/// Without faults it adds no await point: calls behave exactly as the inner store's.
///
/// ```
/// use dsync::MemoryStore;
/// use dsync::testing::{Call, FaultyStore};
/// use dsync::store::{LeaseKey, LeaseRecord, LeaseStore, StoreError};
///
/// # futures::executor::block_on(async {
/// let store = FaultyStore::new(MemoryStore::new());
/// let key = LeaseKey::new("default", "x");
/// store.fail_next(Call::Create, || StoreError::Unavailable { message: "503".into(), source: None });
/// assert!(store.create(&key, LeaseRecord::default()).await.is_err());
/// assert!(store.create(&key, LeaseRecord::default()).await.is_ok());
/// assert_eq!(store.calls(Call::Create), 2);
/// # });
/// ```
#[derive(Clone)]
pub struct FaultyStore {
    inner: Arc<dyn LeaseStore>,
    faults: Arc<Mutex<Faults>>,
    /// Bumped on every call that reaches the wrapper (see [`called`](Self::called)).
    calls_made: Arc<tokio::sync::watch::Sender<u64>>,
    /// What open watch streams obey.
    control: Arc<tokio::sync::watch::Sender<WatchControl>>,
}

impl fmt::Debug for FaultyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let faults = self.lock();
        f.debug_struct("FaultyStore")
            .field("partitioned", &faults.partitioned)
            .field("stalled", &faults.stalled)
            .field("persistent", &faults.persistent.len())
            .field("queued", &faults.queued.len())
            .field("request_latency", &faults.request_latency)
            .field("response_latency", &faults.response_latency)
            .field("skew", &faults.skew)
            .field("tampered", &faults.tamper.is_some())
            .finish_non_exhaustive()
    }
}

impl FaultyStore {
    /// A wrapper around `inner` with no faults.
    pub fn new(inner: impl LeaseStore) -> Self {
        FaultyStore {
            inner: Arc::new(inner),
            faults: Arc::default(),
            calls_made: Arc::new(tokio::sync::watch::channel(0).0),
            control: Arc::new(tokio::sync::watch::channel(WatchControl::default()).0),
        }
    }

    /// A wrapper whose replica's wall clock is off by `skew` (see
    /// [`set_clock_skew`](Self::set_clock_skew)).
    #[must_use]
    pub fn with_clock_skew(self, skew: ClockSkew) -> Self {
        self.set_clock_skew(Some(skew));
        self
    }

    fn lock(&self) -> MutexGuard<'_, Faults> {
        // Every mutation is a single step: a poisoned lock is still consistent.
        self.faults.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies `change` and tells the open watches.
    fn change(&self, change: impl FnOnce(&mut Faults)) {
        let mut faults = self.lock();
        change(&mut faults);
        let control = faults.control();
        self.control.send_if_modified(|c| {
            let modified = *c != control;
            *c = control;
            modified
        });
    }

    /// Cuts this replica off, as a crash or a network partition would look to the others:
    /// from now on every call hangs, the open watches end and new ones never deliver, until
    /// [`heal`](Self::heal).
    pub fn partition(&self) {
        self.change(|f| f.partitioned = true);
    }

    /// Ends a partition, the stalls and silent watches. Calls that hang now stay hung (their
    /// caller's timeout decides); later calls go through.
    pub fn heal(&self) {
        self.change(|f| {
            f.partitioned = false;
            f.stalled.clear();
        });
    }

    /// Drops every injected fault: the queued ones that have not happened yet, the persistent
    /// ones, the stalls, silent watches and the read-side tamper hook. A partition, latency and
    /// clock skew stay (see [`heal`](Self::heal), [`set_latency`](Self::set_latency),
    /// [`set_clock_skew`](Self::set_clock_skew)).
    pub fn clear(&self) {
        self.change(|f| {
            f.queued.clear();
            f.persistent.clear();
            f.stalled.clear();
            f.tamper = None;
        });
    }

    /// Every `call` from now on hangs without an answer (a stalled API server, a black-holed
    /// connection), until [`heal`](Self::heal) or [`clear`](Self::clear). Other calls go on.
    /// `stall(Call::Watch)` is [`silence_watches`](Self::silence_watches).
    pub fn stall(&self, call: Call) {
        self.change(|f| f.stalled.push(call));
    }

    /// The next `call` fails with `make()` before it reaches the store. With [`Call::Watch`]
    /// (or [`Call::CandidateWatch`]), the next watch opened yields the error and ends.
    pub fn fail_next(&self, call: Call, make: impl Fn() -> StoreError + Send + Sync + 'static) {
        self.fail_next_when(call, When::Before, make);
    }

    /// The next `call` fails with `make()`, before it reaches the store or after it took
    /// effect ([`When::After`]: the reply is lost). A watch always fails before.
    pub fn fail_next_when(
        &self,
        call: Call,
        when: When,
        make: impl Fn() -> StoreError + Send + Sync + 'static,
    ) {
        self.change(|f| {
            f.queued
                .push_back((call, when, Box::new(move |_: &str| make())))
        });
    }

    /// The next write of kind `call` (`Create`, `Replace` or `Any`) takes effect, but its reply
    /// is lost: the caller gets [`StoreError::Unavailable`] ("connection reset") and cannot know
    /// whether the write landed.
    pub fn lose_next_reply(&self, call: Call) {
        self.change(|f| {
            f.queued.push_back((
                call,
                When::After,
                Box::new(|lease: &str| StoreError::Unavailable {
                    message: format!(
                        "injected: the connection to {lease} dropped after the request was sent"
                    ),
                    source: None,
                }),
            ))
        });
    }

    /// A 409 storm: the next `n` replaces fail with [`StoreError::Conflict`] without reaching
    /// the store, as if somebody else wrote the lease each time.
    pub fn conflict_storm(&self, n: usize) {
        self.change(|f| {
            for _ in 0..n {
                f.queued.push_back((
                    Call::Replace,
                    When::Before,
                    Box::new(|lease: &str| StoreError::Conflict {
                        lease: lease.to_owned(),
                    }),
                ));
            }
        });
    }

    /// Every `call` from now on fails with `make()` before it reaches the store, until
    /// [`clear`](Self::clear): a fault that lasts (RBAC revoked, an API server answering 503).
    /// With [`Call::Watch`] (or [`Call::CandidateWatch`]), every watch opened yields the error
    /// and ends.
    pub fn fail_always(&self, call: Call, make: impl Fn() -> StoreError + Send + Sync + 'static) {
        self.change(|f| f.persistent.push((call, Box::new(move |_: &str| make()))));
    }

    /// Delays each leg of every call (the request and the reply) and every watch event by
    /// `latency` from now on. A write lands one leg after it was sent.
    pub fn set_latency(&self, latency: Duration) {
        self.set_leg_latency(latency, latency);
    }

    /// Delays the request leg of every call by `request`, and the reply leg and every watch
    /// event by `response`, from now on.
    pub fn set_leg_latency(&self, request: Duration, response: Duration) {
        self.change(|f| {
            f.request_latency = request;
            f.response_latency = response;
        });
    }

    /// Cuts the watches open now, as a dropped connection would: they end at once. Watches
    /// opened later work.
    pub fn drop_watches(&self) {
        self.change(|f| f.watch_generation += 1);
    }

    /// Makes every watch, open or opened later, silent: the stream stays open but delivers
    /// nothing (the events are lost) until [`heal`](Self::heal) or [`clear`](Self::clear);
    /// then events flow again. The calls go on.
    pub fn silence_watches(&self) {
        self.stall(Call::Watch);
    }

    /// Sets (or with `None` removes) how far this replica's wall clock is off: the times it
    /// stamps into the records it writes (`renewTime`, and `acquireTime` when stamped in the
    /// same write) are shifted, as a skewed node's would be. dsync reads the wall clock only
    /// to fill these fields, so this is all a skew can change.
    pub fn set_clock_skew(&self, skew: Option<ClockSkew>) {
        self.change(|f| f.skew = skew);
    }

    /// An administrator's edit of `key` (`kubectl edit`/`apply`), straight on the inner store,
    /// past every fault of this wrapper: `edit` is applied to the record as it is now and
    /// written on its version, again on a conflict (the holder may renew in between). The
    /// operator actions dsync must survive (rules `token-never-back`,
    /// `operator-release-grace`, `one-identity`) are edits such as [`reset_transitions`],
    /// [`clear_holder`] and [`replace_holder`].
    ///
    /// [`reset_transitions`]: Self::reset_transitions
    /// [`clear_holder`]: Self::clear_holder
    /// [`replace_holder`]: Self::replace_holder
    pub async fn edit(
        &self,
        key: &LeaseKey,
        edit: impl Fn(&mut LeaseRecord),
    ) -> StoreResult<StoredLease> {
        loop {
            let current = self.inner.get(key).await?;
            let mut record = current.record.clone();
            edit(&mut record);
            match self
                .inner
                .replace(key, record, &current.resource_version)
                .await
            {
                Err(StoreError::Conflict { .. }) => continue,
                other => return other,
            }
        }
    }

    /// An edit that sets `leaseTransitions` to 0 (a stale manifest applied again): the next
    /// fencing token must still be above every one handed out.
    pub async fn reset_transitions(&self, key: &LeaseKey) -> StoreResult<StoredLease> {
        self.edit(key, |r| r.lease_transitions = Some(0)).await
    }

    /// An edit that removes the holder and keeps everything else (the lease duration and
    /// times): the holder may not know yet, so candidates leave the lease alone for its
    /// duration.
    pub async fn clear_holder(&self, key: &LeaseKey) -> StoreResult<StoredLease> {
        self.edit(key, |r| r.holder_identity = None).await
    }

    /// An edit that names `holder` as the holder (a live replica that did not write it, or
    /// nobody): it takes such a record only once it has not changed for a renew deadline.
    pub async fn replace_holder(&self, key: &LeaseKey, holder: &str) -> StoreResult<StoredLease> {
        self.edit(key, |r| r.holder_identity = Some(holder.to_owned()))
            .await
    }

    /// Passes every lease this store returns (from `get`, `create`, `replace`, `list` and watch
    /// events) through `tamper` from now on, until [`clear`](Self::clear): a store that
    /// serves records nobody validated (a third-party store, an edit behind the API server's
    /// back). The inner store keeps what was written.
    pub fn tamper_reads(
        &self,
        tamper: impl Fn(StoredLease) -> StoredLease + Send + Sync + 'static,
    ) {
        let tamper: Tamper = Arc::new(tamper);
        self.change(|f| f.tamper = Some(tamper));
    }

    /// From now on, every version this store reports (answers, lists, watch events) is `by`
    /// lower than the inner store's, and a write on a version it reported since is made on
    /// the inner version again, so compare-and-swap still works: to its replica the store
    /// has gone back in time, as after an etcd restore to an older snapshot (versions go
    /// back; the records stay as they are). A write on a version from before conflicts, as
    /// on a restored store that no longer knows it. (On a store restored without bumping
    /// its revisions, such an old version can match a *new* object's version, and a write
    /// lands on a record its writer never saw: compare-and-swap cannot see it; the
    /// server-side Lease guard refuses the token it would take back.) Open watches are cut
    /// (a restore breaks them), so the replica re-syncs. Cumulative; not undone by
    /// [`clear`](Self::clear) (a restore is not undone either). Versions must be decimal
    /// numbers; they are reported with a leading zero (`042`: still the number 42, but not
    /// the string of a version from before), and one at or below the rewind as `00`.
    pub fn rewind_versions(&self, by: u64) {
        self.change(|f| {
            f.rewind += by;
            f.watch_generation += 1;
        });
    }

    /// How many calls of a kind reached this wrapper (including failed and hanging ones).
    /// [`Call::Any`] counts `get`, `create`, `replace` and `list` together.
    pub fn calls(&self, call: Call) -> u64 {
        let faults = self.lock();
        match call {
            Call::Any => faults.calls[..4].iter().sum(),
            other => faults.calls[other.index()],
        }
    }

    /// Resolves once `n` calls of a kind have reached this wrapper (see
    /// [`calls`](Self::calls)): the moment a request is on the wire.
    pub fn called(&self, call: Call, n: u64) -> impl Future<Output = ()> + Send + 'static {
        let this = self.clone();
        let mut rx = self.calls_made.subscribe();
        async move {
            while this.calls(call) < n {
                // The sender lives in `this`: it cannot be dropped while we wait.
                if rx.changed().await.is_err() {
                    return;
                }
            }
        }
    }

    fn count(&self, faults: &mut Faults, call: Call) {
        faults.calls[call.index()] += 1;
        self.calls_made.send_modify(|n| *n += 1);
    }

    /// Every call but the watch goes through here: counted, then partitioned, stalled, failed,
    /// delayed or tampered with as the faults say. `target` names what the call is about in
    /// injected errors (`namespace/name`, or the namespace of a list).
    fn intercept<T, F>(
        &self,
        call: Call,
        target: String,
        forward: F,
    ) -> BoxFuture<'static, StoreResult<T>>
    where
        T: Reply,
        F: FnOnce(Option<ClockSkew>) -> BoxFuture<'static, StoreResult<T>> + Send + 'static,
    {
        let lease = target;
        let mut faults = self.lock();
        self.count(&mut faults, call);
        if faults.partitioned || faults.stalled.iter().any(|c| c.covers(call)) {
            return futures::future::pending().boxed();
        }
        if let Some((_, make)) = faults.persistent.iter().find(|(c, _)| c.covers(call)) {
            return futures::future::ready(Err(make(&lease))).boxed();
        }
        let injected = faults.take_queued(call);
        let (request, response) = (faults.request_latency, faults.response_latency);
        let (skew, tamper, rewind) = (faults.skew, faults.tamper.clone(), faults.rewind);
        drop(faults);
        let faults = self.faults.clone();
        let (error, before) = match injected {
            Some((when, make)) => (Some(make(&lease)), when == When::Before),
            None => (None, false),
        };
        // The inner call is made now, unless the request leg delays it (then a write lands
        // `request` after it was sent) or the call fails before reaching the store.
        let (now, later) = if before {
            (None, None)
        } else if request.is_zero() {
            (Some(forward(skew)), None)
        } else {
            (None, Some(forward))
        };
        if response.is_zero() && tamper.is_none() && rewind == 0 && later.is_none() {
            // No extra await points: the call behaves exactly like the inner store's.
            return match (error, now) {
                (Some(error), None) => futures::future::ready(Err(error)).boxed(),
                (Some(error), Some(call)) => async move {
                    let _ = call.await;
                    Err(error)
                }
                .boxed(),
                (None, Some(call)) => call,
                (None, None) => futures::future::ready(Err(no_call(&lease))).boxed(),
            };
        }
        async move {
            if !request.is_zero() {
                tokio::time::sleep(request).await;
            }
            let call = now.or_else(|| later.map(|forward| forward(skew)));
            let result = match (error, call) {
                (Some(error), Some(call)) => {
                    let _ = call.await;
                    Err(error)
                }
                (Some(error), None) => Err(error),
                (None, Some(call)) => call.await,
                (None, None) => Err(no_call(&lease)),
            };
            if !response.is_zero() {
                tokio::time::sleep(response).await;
            }
            let result = match tamper {
                Some(tamper) => result.map(|reply| reply.tampered(&tamper)),
                None => result,
            };
            match rewind {
                0 => result,
                by => result.map(|reply| {
                    let faults = faults.clone();
                    reply.tampered(&(Arc::new(move |l| rewound(&faults, l, by)) as Tamper))
                }),
            }
        }
        .boxed()
    }
}

/// What a call answers, as [`FaultyStore::tamper_reads`] changes it.
trait Reply: Send + 'static {
    fn tampered(self, tamper: &Tamper) -> Self;
}

impl Reply for StoredLease {
    fn tampered(self, tamper: &Tamper) -> Self {
        tamper(self)
    }
}

impl Reply for Vec<StoredLease> {
    fn tampered(self, tamper: &Tamper) -> Self {
        self.into_iter().map(|lease| tamper(lease)).collect()
    }
}

/// `LeaseCandidate` answers are not tampered with (the tampering is of lease records).
impl Reply for StoredCandidate {
    fn tampered(self, _: &Tamper) -> Self {
        self
    }
}

impl Reply for Vec<StoredCandidate> {
    fn tampered(self, _: &Tamper) -> Self {
        self
    }
}

impl Reply for () {
    fn tampered(self, _: &Tamper) -> Self {}
}

/// `lease` with its version `by` lower, noted in `faults` (see
/// [`FaultyStore::rewind_versions`]).
fn rewound(faults: &Mutex<Faults>, mut lease: StoredLease, by: u64) -> StoredLease {
    if let Ok(v) = lease.resource_version.parse::<u64>() {
        // Written with a leading zero: the same number as a version from before the rewind
        // (which a replica may still hold) but not the same string, so that a write on that
        // older version conflicts instead of landing on this record.
        let reported = format!("0{}", v.saturating_sub(by));
        let inner = std::mem::replace(&mut lease.resource_version, reported.clone());
        let mut faults = faults.lock().unwrap_or_else(|p| p.into_inner());
        faults.rewound.insert(reported, inner);
    }
    lease
}

/// A version given to the wrapper, as the inner store knows it: one reported since the
/// rewind stands for its inner version; one from before stands for nothing the store knows
/// (see [`FaultyStore::rewind_versions`]).
fn unwound(faults: &Faults, version: &str) -> String {
    if faults.rewind == 0 {
        return version.to_owned();
    }
    match faults.rewound.get(version) {
        Some(inner) => inner.clone(),
        None => format!("{version}-from-before-the-restore"),
    }
}

/// How injected errors name a `LeaseCandidate`.
fn candidate(key: &LeaseKey) -> String {
    format!("leasecandidate {key}")
}

/// Unreachable: a call neither forwarded nor failed.
fn no_call(lease: &str) -> StoreError {
    StoreError::Unavailable {
        message: format!("FaultyStore: no call was made for {lease}"),
        source: None,
    }
}

impl LeaseStore for FaultyStore {
    fn get(&self, key: &LeaseKey) -> BoxFuture<'static, StoreResult<StoredLease>> {
        let inner = self.inner.clone();
        let owned = key.clone();
        self.intercept(Call::Get, key.to_string(), move |_| inner.get(&owned))
    }

    fn create(
        &self,
        key: &LeaseKey,
        record: LeaseRecord,
    ) -> BoxFuture<'static, StoreResult<StoredLease>> {
        let inner = self.inner.clone();
        let owned = key.clone();
        self.intercept(Call::Create, key.to_string(), move |skew| {
            inner.create(&owned, skew_record(skew, record))
        })
    }

    fn replace(
        &self,
        key: &LeaseKey,
        record: LeaseRecord,
        resource_version: &str,
    ) -> BoxFuture<'static, StoreResult<StoredLease>> {
        let inner = self.inner.clone();
        let owned = key.clone();
        let version = unwound(&self.lock(), resource_version);
        self.intercept(Call::Replace, key.to_string(), move |skew| {
            inner.replace(&owned, skew_record(skew, record), &version)
        })
    }

    fn watch_replays_state(&self) -> bool {
        self.inner.watch_replays_state()
    }

    fn forget(&self, key: &LeaseKey) {
        self.inner.forget(key);
    }

    // LeaseCandidates pass through: the faults are about leases.
    fn get_candidate(&self, key: &LeaseKey) -> BoxFuture<'static, StoreResult<StoredCandidate>> {
        let inner = self.inner.clone();
        let owned = key.clone();
        self.intercept(Call::Candidate, candidate(key), move |_| {
            inner.get_candidate(&owned)
        })
    }

    fn create_candidate(
        &self,
        key: &LeaseKey,
        record: CandidateRecord,
    ) -> BoxFuture<'static, StoreResult<StoredCandidate>> {
        let inner = self.inner.clone();
        let owned = key.clone();
        self.intercept(Call::Candidate, candidate(key), move |_| {
            inner.create_candidate(&owned, record)
        })
    }

    fn replace_candidate(
        &self,
        key: &LeaseKey,
        record: CandidateRecord,
        resource_version: &str,
    ) -> BoxFuture<'static, StoreResult<StoredCandidate>> {
        let inner = self.inner.clone();
        let (owned, version) = (key.clone(), resource_version.to_owned());
        self.intercept(Call::Candidate, candidate(key), move |_| {
            inner.replace_candidate(&owned, record, &version)
        })
    }

    fn delete_candidate(&self, key: &LeaseKey) -> BoxFuture<'static, StoreResult<()>> {
        let inner = self.inner.clone();
        let owned = key.clone();
        self.intercept(Call::Candidate, candidate(key), move |_| {
            inner.delete_candidate(&owned)
        })
    }

    fn list_candidates(
        &self,
        namespace: &str,
    ) -> BoxFuture<'static, StoreResult<Vec<StoredCandidate>>> {
        let inner = self.inner.clone();
        let owned = namespace.to_owned();
        self.intercept(
            Call::Candidate,
            format!("leasecandidates in {namespace}"),
            move |_| inner.list_candidates(&owned),
        )
    }

    /// Counted; silent if partitioned or stalled, failed (one error, then the end) as a watch
    /// is, when it is opened; passed through otherwise.
    fn candidate_changes(&self, key: &LeaseKey) -> BoxStream<'static, StoreResult<Option<String>>> {
        let mut f = self.lock();
        self.count(&mut f, Call::CandidateWatch);
        if f.partitioned || f.stalled.contains(&Call::CandidateWatch) {
            return futures::stream::pending().boxed();
        }
        let target = candidate(key);
        let failure = match f
            .persistent
            .iter()
            .find(|(c, _)| c.covers(Call::CandidateWatch))
        {
            Some((_, make)) => Some(make(&target)),
            None => f
                .take_queued(Call::CandidateWatch)
                .map(|(_, make)| make(&target)),
        };
        drop(f);
        match failure {
            Some(error) => futures::stream::once(futures::future::ready(Err(error))).boxed(),
            None => self.inner.candidate_changes(key),
        }
    }

    fn list(&self, namespace: &str) -> BoxFuture<'static, StoreResult<Vec<StoredLease>>> {
        let inner = self.inner.clone();
        let owned = namespace.to_owned();
        self.intercept(Call::List, namespace.to_owned(), move |_| {
            inner.list(&owned)
        })
    }

    fn watch(&self, namespace: &str) -> BoxStream<'static, StoreResult<WatchEvent>> {
        let control = {
            let mut f = self.lock();
            self.count(&mut f, Call::Watch);
            if f.partitioned {
                return futures::stream::pending().boxed();
            }
            let failure = match f.persistent.iter().find(|(c, _)| c.covers(Call::Watch)) {
                Some((_, make)) => Some(make(namespace)),
                None => f.take_queued(Call::Watch).map(|(_, make)| make(namespace)),
            };
            if let Some(error) = failure {
                return futures::stream::once(futures::future::ready(Err(error))).boxed();
            }
            f.control()
        };
        let generation = control.generation;
        let cut = move |c: &WatchControl| c.partitioned || c.generation != generation;
        // A forwarder stamps each event with when it is due (`response` latency after the
        // store emitted it), drops it while the watches are silent, and ends when the watches
        // are cut; the stream delivers events in order at their due time.
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let mut inner = self.inner.watch(namespace);
        let mut ctl = self.control.subscribe();
        let faults = self.faults.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    event = inner.next() => {
                        let Some(event) = event else { return };
                        let now = *ctl.borrow_and_update();
                        if cut(&now) {
                            return;
                        }
                        if now.silent {
                            continue;
                        }
                        let (latency, tamper, rewind) = {
                            let f = faults.lock().unwrap_or_else(|p| p.into_inner());
                            (f.response_latency, f.tamper.clone(), f.rewind)
                        };
                        let event = match (tamper, event) {
                            (Some(tamper), Ok(WatchEvent::Applied(lease))) => {
                                Ok(WatchEvent::Applied(tamper(lease)))
                            }
                            (_, other) => other,
                        };
                        let event = match event {
                            Ok(WatchEvent::Applied(lease)) if rewind > 0 => {
                                Ok(WatchEvent::Applied(rewound(&faults, lease, rewind)))
                            }
                            other => other,
                        };
                        if tx.send((Instant::now() + latency, event)).is_err() {
                            return;
                        }
                    }
                    changed = ctl.changed() => {
                        if changed.is_err() || cut(&ctl.borrow_and_update()) {
                            return;
                        }
                    }
                    () = tx.closed() => return,
                }
            }
        });
        let mut ctl = self.control.subscribe();
        tokio_stream_from(rx)
            .then(|(due, event)| async move {
                if due > Instant::now() {
                    tokio::time::sleep_until(due).await;
                }
                event
            })
            .take_while(move |_| futures::future::ready(!cut(&ctl.borrow_and_update())))
            .boxed()
    }
}

/// A stream of what an unbounded tokio receiver yields.
fn tokio_stream_from<T: Send + 'static>(
    rx: tokio::sync::mpsc::UnboundedReceiver<T>,
) -> BoxStream<'static, T> {
    futures::stream::unfold(rx, |mut rx| async move {
        let item = rx.recv().await?;
        Some((item, rx))
    })
    .boxed()
}
