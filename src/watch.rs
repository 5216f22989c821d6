//! `WatchHub`: one store watch per namespace, fanned out to the lease actors.
//!
//! Followers and lock waiters learn of changes from watch events, not by polling. Without a hub,
//! every actor would hold its own watch: a thousand elections would cost the API server a
//! thousand watches. The hub, owned by a replica's [`Supervisor`](crate::Supervisor), opens one
//! watch per namespace on first use and routes each event to the actors of that lease.
//!
//! A watch that fails or ends is re-synced by the hub, once per namespace, not by every
//! actor: with ten thousand leases, ten thousand GETs per replica at the moment an API server
//! comes back would be the load spike that keeps it down. When the store's stream yields an
//! error or ends, the hub lists the namespace ([`LeaseStore::list`]) and hands each actor its
//! lease as listed (an actor already at that version ignores it; a lease missing from the list
//! comes as `Deleted`, after which that actor reads it). A list that fails for a reason that
//! may pass (the server is down, restarting, slow) is retried, soon at first and then a
//! retry period apart, until it succeeds: while the server is down, every call fails alike.
//! Only if the list is refused for good (forbidden, not supported, for a renew deadline: an API
//! server that has just started refuses everything until its authorizer has loaded the RBAC
//! rules) are the actors told of the error, and each re-reads its own lease. A store whose watch replays every lease by itself
//! after an error ([`LeaseStore::watch_replays_state`]) needs no list of ours. An ended stream
//! is reopened after a retry period.
//!
//! From the moment the hub sees the watch fail until the list has been delivered, the
//! namespace is *behind* ([`Inbox::watch_current`]): a lease that looks unchanged to an actor
//! may have changed unseen. An actor that would take a lease because it looks expired (or
//! free, or missing) waits for the list instead, and reads the lease itself only if no list
//! comes within a lease duration (see `Machine::watch_behind`). Without that, a follower whose
//! lease expired by its own observation during an API server outage would try to take it the
//! moment the server is back, racing the leader's first renewal: a write and a re-read per
//! lease. Watches only make dsync faster: correctness never depends on them (every write is a
//! compare-and-swap).
//!
//! # A watch that falls silent (rule `watch-behind`)
//!
//! A watch can also die without a word: the connection hangs, the stream stays open and
//! delivers nothing (kube's client notices only at its read timeout, minutes later). A lease
//! actor following a held lease would see its holder look expired and read it; but an observer
//! of a free or missing lease, or a lock waiter, would wait for news that never comes. So the
//! hub notices silence itself. What proves a watch alive is that it brings something: every
//! held lease is renewed every retry period, and on a namespace where anything is held the
//! watch is never quiet for long. On Kubernetes the watch asks for bookmarks (kube's watcher
//! sets `allowWatchBookmarks`), but the watcher keeps them to itself (it only moves the
//! version it resumes from), and the API server sends them about once a minute: they could not
//! prove a watch alive within a lease duration anyway.
//!
//! When the namespace's watch has brought nothing at all (no event, no error) for a lease
//! duration, the hub lists the namespace once ([`WatchHub`]'s *check*), and hands each
//! subscriber what the watch has not brought, as if the watch had (a renewal is parked, a new
//! holder delivered; a lease the hub had seen that is no longer listed comes as `Deleted`);
//! what the watch did bring is not sent again. A lease the hub knew nothing of yet is handed
//! over too (those who have seen its version skip it). If the list showed changes the watch had
//! missed and the watch still brings nothing for another lease duration, the watch is dead: the
//! hub opens a new one and re-syncs the namespace as after a failed watch (the namespace is
//! behind until the list is in). So a live watch costs nothing while anything in its namespace
//! is held; a quiet namespace (every lease free, missing or abandoned) costs one list per lease
//! duration; and what a silently dead watch hides is known within a lease duration of the
//! change (the list comes at most a lease duration after the last news).

//! # Renewals are parked, not delivered
//!
//! Most events are renewals: the holder every actor of the lease already knows wrote a new
//! `renewTime`, nothing else. No lease actor acts on one when it arrives: a follower needs it
//! only by the time it would otherwise judge the lease expired, and the holder knows its own
//! write. Waking each for every renewal would cost more than the renewal's compare-and-swap.
//! So for a lease actor's subscription ([`WatchHub::watch_lease`]) the hub parks such an event
//! in the actor's [`Inbox`] with the instant it arrived, and wakes nobody; any other event (a
//! new holder, a release, a new term under the same name, a handoff request, any field but
//! `renewTime`; a deletion, an error, a re-sync) is delivered at once; a change drops what
//! was parked before it, a deletion or an error does not (the actor takes the parked renewal
//! before it: a deleted lease that was held expires a lease duration after its last renewal).
//! When the store goes back in time, what was parked is dropped (its version now names
//! another record). The actor takes the parked renewal at the start of its every step
//! ([`Inbox::take`]) and observes it *as of its arrival*: expiry is judged from the local
//! instant a version was first seen, so it is judged exactly as if the event had been
//! delivered. A follower's timer wakes it at the expiry of what it saw, it takes the parked
//! renewal, finds the lease renewed, and waits again; it takes over no later than before.
//!
//! A version the actor has already observed ([`Inbox::set_seen`]) is neither delivered nor
//! parked: the actor would drop it after a wake-up. The common case is the holder's own renewal
//! coming back through the watch after the write's answer told it of the new version.
//! Observers ([`WatchHub::watch`]) get every event.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::channel::mpsc;
use futures::stream::BoxStream;

use crate::hash::FastMap;
use crate::record::LeaseRecord;
use crate::store::{LeaseKey, LeaseStore, StoreError, StoreResult, StoredLease, WatchEvent};
use crate::term::now;

/// What the hub holds for one lease actor: the version the actor has seen, and the newest
/// renewal parked for it.
#[derive(Debug, Default)]
pub(crate) struct Inbox {
    /// The numeric resource version the actor holds (0: none, or not a number).
    seen: AtomicU64,
    parked: Mutex<Option<Parked>>,
    /// Whether `parked` may hold something: the actor looks at every step, and most steps
    /// find nothing, so they need not take the lock to see that.
    full: AtomicBool,
    /// Whether the namespace's watch is whole (see [`Inbox::watch_current`]).
    sync: Arc<Sync>,
}

/// Whether a namespace's watch has missed nothing: counts of the losses the hub has seen and
/// of those it has caught up (a list delivered to every subscriber). Shared by the namespace's
/// inboxes, read at every step of each actor, written once per loss.
#[derive(Debug, Default)]
struct Sync {
    lost: AtomicU64,
    caught_up: AtomicU64,
}

impl Sync {
    /// Notes a loss; the namespace is behind until [`caught_up`](Self::caught_up).
    fn lose(&self) -> u64 {
        self.lost.fetch_add(1, Ordering::AcqRel) + 1
    }

    fn catch_up(&self, loss: u64) {
        self.caught_up.fetch_max(loss, Ordering::AcqRel);
    }

    fn current(&self) -> bool {
        self.caught_up.load(Ordering::Acquire) >= self.lost.load(Ordering::Acquire)
    }
}

/// A renewal the hub did not wake the actor for.
#[derive(Debug)]
pub(crate) struct Parked {
    /// The lease as renewed.
    pub lease: Arc<StoredLease>,
    /// Its numeric resource version.
    version: u64,
    /// When it arrived: the actor observes it as of then.
    pub at: Instant,
}

impl Inbox {
    /// Notes the version the actor now holds (`None`: the lease is missing or unknown). Set
    /// after every observation, it only lags behind the actor (then an event the actor drops
    /// is passed on, as before), never runs ahead of it.
    pub fn set_seen(&self, version: Option<&str>) {
        let version = version.and_then(|v| v.parse().ok()).unwrap_or(0);
        self.seen.store(version, Ordering::Relaxed);
    }

    /// Whether the actor already holds `version` or a later one: it would drop the event.
    fn has_seen(&self, version: u64) -> bool {
        version <= self.seen.load(Ordering::Relaxed)
    }

    /// Whether the namespace's watch has missed nothing since it was opened or last caught up.
    /// `false` from the moment the hub sees the watch fail until its list has brought every
    /// lease again: meanwhile a change to the lease may have gone unseen, so a lease that looks
    /// unchanged may not be. (An actor that is not woken learns it at its next step.)
    pub fn watch_current(&self) -> bool {
        self.sync.current()
    }

    /// Takes the parked renewal, if any.
    pub fn take(&self) -> Option<Parked> {
        if !self.full.load(Ordering::Acquire) {
            return None;
        }
        let mut slot = self.slot();
        self.full.store(false, Ordering::Relaxed);
        slot.take()
    }

    fn slot(&self) -> MutexGuard<'_, Option<Parked>> {
        // Every use is a single take or replace: a poisoned lock is still consistent.
        self.parked.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn park(&self, lease: &Arc<StoredLease>, version: u64, at: Instant) {
        let mut slot = self.slot();
        // A replay of an older version must not replace a newer one.
        if slot.as_ref().is_none_or(|held| held.version < version) {
            *slot = Some(Parked {
                lease: Arc::clone(lease),
                version,
                at,
            });
            // Set under the lock, after the slot: whoever sees it set finds the slot filled
            // once it has the lock.
            self.full.store(true, Ordering::Release);
        }
    }

    /// Drops what was parked at or below `version` (a delivered event supersedes it); `None`:
    /// the lease is gone, drop it anyway.
    fn clear_up_to(&self, version: Option<u64>) {
        let mut slot = self.slot();
        if slot
            .as_ref()
            .is_some_and(|held| version.is_none_or(|v| held.version <= v))
        {
            *slot = None;
            self.full.store(false, Ordering::Relaxed);
        }
    }
}

/// What a route's channel carries: the event, boxed. An unbounded channel's queue keeps a
/// node the size of its item even when empty, one per lease actor: a record's worth (over
/// 200 bytes) each at 100,000 leases is 20 MiB, a box's is not. Events are seldom delivered
/// (renewals are parked), so the box costs little.
type Routed = Box<StoreResult<WatchEvent>>;

/// One subscriber of a lease.
struct Route {
    id: u64,
    tx: mpsc::UnboundedSender<Routed>,
    /// `None`: an observer, which gets every event.
    inbox: Option<Arc<Inbox>>,
}

/// The subscribers of one lease, and what the watch last brought for it.
#[derive(Default)]
struct Lease {
    routes: Vec<Route>,
    last: Option<Last>,
    /// The highest numeric version the watch or a list has brought for this lease (0: none).
    /// One object's versions never go back, unless the store itself did (an etcd restore).
    top: u64,
    /// Whether the lease exists as the watch or a list last said (`None`: nothing said yet).
    present: Option<bool>,
}

impl Lease {
    /// Notes `version` as brought for this lease; `true` if it is older than one already
    /// brought: the store went back in time (rule `restore-resync`), and the actors, whose
    /// observations are all newer than anything it says now, must read what it says.
    fn went_back(&mut self, version: Option<u64>) -> bool {
        let Some(version) = version else {
            return false;
        };
        let back = version < self.top;
        self.top = version;
        self.present = Some(true);
        back
    }
}

/// The store went back in time: every lease of the namespace did.
fn restore(ns: &mut Namespace) {
    for (name, lease) in ns.leases.iter_mut() {
        went_back(lease, name);
    }
}

/// Tells every subscriber of a lease whose versions went back: an error, so each reads the
/// lease and takes the answer as the truth (see `Machine`'s rule `restore-resync`). What was
/// parked goes first: a renewal from before the restore carries a version that now names
/// another record (a write on it could land on a record its writer never saw).
fn went_back(lease: &mut Lease, name: &str) {
    lease.last = None;
    // Its history starts again from the store's new past.
    lease.top = 0;
    lease.present = None;
    for route in &lease.routes {
        if let Some(inbox) = &route.inbox {
            inbox.clear_up_to(None);
        }
    }
    let error = StoreError::Unavailable {
        message: format!(
            "the versions of lease {name} went back (an etcd restore?): re-reading it"
        ),
        source: None,
    };
    send_all(&mut lease.routes, Err(error), true);
}

/// Unsubscribes a route from the hub when the subscriber's stream is dropped.
struct Unsubscribe {
    hub: std::sync::Weak<WatchHub>,
    key: LeaseKey,
    id: u64,
}

impl Drop for Unsubscribe {
    fn drop(&mut self) {
        if let Some(hub) = self.hub.upgrade() {
            hub.unsubscribe(&self.key, self.id);
        }
    }
}

/// What the hub keeps of a lease's last version to tell a renewal from a change: the version
/// and a digest of every field but `renewTime`, not the record (at 100,000 leases a copy each
/// would cost tens of MiB). Should two different records ever share a digest, the change is
/// parked like a renewal and seen at the actor's next step instead of at once: slower, never
/// wrong (the parked event is the record itself; no decision needs the watch to be prompt).
#[derive(Clone, Copy)]
struct Last {
    version: u64,
    digest: u64,
}

#[derive(Default)]
struct Namespace {
    /// Subscribers by lease name.
    leases: FastMap<String, Lease>,
    /// Whether the watch is whole, shared with every inbox of the namespace.
    sync: Arc<Sync>,
    /// Cancelled when the last subscriber goes: the pump closes the store's watch at once.
    closed: tokio_util::sync::CancellationToken,
}

/// Shares one watch per namespace among all of a replica's lease actors.
pub(crate) struct WatchHub {
    store: Arc<dyn LeaseStore>,
    namespaces: Mutex<FastMap<String, Namespace>>,
    /// How long to wait before reopening a watch the store ended (the retry period).
    reopen_after: Duration,
    /// The limit of a re-sync's list (the renew deadline, as every lease call).
    list_timeout: Duration,
    /// How long a watch may bring nothing at all before the hub checks it by a list (the
    /// lease duration; rule `watch-behind`).
    silent_after: Duration,
}

impl WatchHub {
    /// A hub over `store`: an ended watch is reopened after `reopen_after`, a list may take
    /// `list_timeout`, and a watch that brings nothing for `silent_after` is checked by a list.
    pub fn new(
        store: Arc<dyn LeaseStore>,
        reopen_after: Duration,
        list_timeout: Duration,
        silent_after: Duration,
    ) -> Arc<Self> {
        Arc::new(WatchHub {
            store,
            namespaces: Mutex::default(),
            reopen_after,
            list_timeout,
            silent_after,
        })
    }

    fn lock(&self) -> MutexGuard<'_, FastMap<String, Namespace>> {
        // Every mutation is a single map operation: a poisoned lock is still consistent.
        self.namespaces.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every change to one lease (for observers). Opens the namespace's watch if nobody
    /// watches it yet; the pump runs on the calling arbiter.
    pub fn watch(self: &Arc<Self>, key: &LeaseKey) -> BoxStream<'static, StoreResult<WatchEvent>> {
        self.subscribe(key, false).0
    }

    /// Changes to one lease, for its lease actor: renewals by the holder it already knows are
    /// parked in the returned [`Inbox`] instead of being delivered, and versions it has seen
    /// are dropped (see the module docs).
    pub fn watch_lease(
        self: &Arc<Self>,
        key: &LeaseKey,
    ) -> (BoxStream<'static, StoreResult<WatchEvent>>, Arc<Inbox>) {
        let (stream, inbox) = self.subscribe(key, true);
        (stream, inbox.expect("asked for"))
    }

    fn subscribe(
        self: &Arc<Self>,
        key: &LeaseKey,
        with_inbox: bool,
    ) -> (
        BoxStream<'static, StoreResult<WatchEvent>>,
        Option<Arc<Inbox>>,
    ) {
        let (tx, rx) = mpsc::unbounded();
        static NEXT_ROUTE: AtomicU64 = AtomicU64::new(1);
        let id = NEXT_ROUTE.fetch_add(1, Ordering::Relaxed);
        let (start, inbox, closed) = {
            let mut namespaces = self.lock();
            let start = !namespaces.contains_key(&key.namespace);
            let ns = namespaces.entry(key.namespace.clone()).or_default();
            let inbox = with_inbox.then(|| {
                Arc::new(Inbox {
                    sync: Arc::clone(&ns.sync),
                    ..Inbox::default()
                })
            });
            let lease = ns.leases.entry(key.name.clone()).or_default();
            lease.routes.retain(|route| !route.tx.is_closed());
            lease.routes.push(Route {
                id,
                tx,
                inbox: inbox.clone(),
            });
            (start, inbox, ns.closed.clone())
        };
        if start {
            let stream = self.store.watch(&key.namespace);
            actix::spawn(Arc::clone(self).pump(key.namespace.clone(), stream, closed));
        }
        // The subscription ends with the stream: whoever drops it (a stopped actor or
        // observer) frees its place, and the namespace's watch closes with its last one.
        let guard = Unsubscribe {
            hub: Arc::downgrade(self),
            key: key.clone(),
            id,
        };
        let stream = rx.map(move |routed| {
            let _ = &guard;
            *routed
        });
        (stream.boxed(), inbox)
    }

    /// Removes the subscription `id` of `key` (and any whose receiver is gone); closes the
    /// namespace's watch if nobody is left. The stopped lease actor calls it at once; the
    /// stream's drop calls it again, idempotently.
    pub fn unsubscribe(&self, key: &LeaseKey, id: u64) {
        let mut namespaces = self.lock();
        let Some(ns) = namespaces.get_mut(&key.namespace) else {
            return;
        };
        if let Some(lease) = ns.leases.get_mut(key.name.as_str()) {
            lease
                .routes
                .retain(|route| route.id != id && !route.tx.is_closed());
            if lease.routes.is_empty() {
                ns.leases.remove(key.name.as_str());
            }
        }
        if ns.leases.is_empty()
            && let Some(ns) = namespaces.remove(&key.namespace)
        {
            ns.closed.cancel();
        }
    }

    /// The lease actor of `key` has stopped: its subscription (the one with `inbox`) is
    /// removed now, not when actix gets round to dropping its stream.
    pub fn forget(&self, key: &LeaseKey, inbox: &Arc<Inbox>) {
        let id = {
            let namespaces = self.lock();
            namespaces
                .get(&key.namespace)
                .and_then(|ns| ns.leases.get(key.name.as_str()))
                .and_then(|lease| {
                    lease.routes.iter().find(|route| {
                        route
                            .inbox
                            .as_ref()
                            .is_some_and(|mine| Arc::ptr_eq(mine, inbox))
                    })
                })
                .map(|route| route.id)
        };
        if let Some(id) = id {
            self.unsubscribe(key, id);
        }
    }

    /// How many namespaces are watched right now.
    pub fn watched_namespaces(&self) -> usize {
        self.lock().len()
    }

    async fn pump(
        self: Arc<Self>,
        namespace: String,
        mut stream: BoxStream<'static, StoreResult<WatchEvent>>,
        closed: tokio_util::sync::CancellationToken,
    ) {
        // The last subscriber went: the store's watch is dropped with this future, now.
        let closed = closed.cancelled_owned();
        tokio::pin!(closed);
        // When the watch last brought anything, or the hub last listed the namespace.
        // When the watch last brought anything, or the hub last listed the namespace.
        let mut heard = tokio::time::Instant::now();
        // The last check found changes the watch had not brought, and it has brought nothing
        // since.
        let mut missed = false;
        // One timer for the whole watch, re-armed lazily when it fires after events came: a
        // timer per event would cost a timer-wheel insert and removal per renewal seen.
        let silence = tokio::time::sleep_until(heard + self.silent_after);
        tokio::pin!(silence);
        // Whether the timer has been polled since it was last armed (a timer registers the
        // task's waker when polled; after that, checking that it has elapsed is enough).
        let mut registered = false;
        loop {
            let next = std::future::poll_fn(|cx| {
                if closed.as_mut().poll(cx).is_ready() {
                    return std::task::Poll::Ready(Err(true));
                }
                if let std::task::Poll::Ready(item) = stream.poll_next_unpin(cx) {
                    return std::task::Poll::Ready(Ok(item));
                }
                let elapsed = if registered {
                    silence.is_elapsed()
                } else {
                    registered = true;
                    silence.as_mut().poll(cx).is_ready()
                };
                if elapsed {
                    std::task::Poll::Ready(Err(false))
                } else {
                    std::task::Poll::Pending
                }
            })
            .await;
            let next = match next {
                Ok(next) => next,
                Err(true) => {
                    tracing::debug!(%namespace, "nobody watches the namespace any more: closing its watch");
                    return;
                }
                Err(false) => {
                    registered = false;
                    let due = heard + self.silent_after;
                    if tokio::time::Instant::now() < due {
                        // Something arrived since the timer was armed: not silent yet.
                        silence.as_mut().reset(due);
                        continue;
                    }
                    // Nothing at all for a silence period (rule `watch-behind`).
                    if missed {
                        tracing::warn!(%namespace, "the watch brought nothing for a lease duration after missing changes: opening a new one");
                        missed = false;
                        stream = self.store.watch(&namespace);
                        let error = StoreError::Unavailable {
                            message: format!("the watch on namespace {namespace} went silent"),
                            source: None,
                        };
                        if !self.resync(&namespace, error).await {
                            return;
                        }
                    } else {
                        match self.check(&namespace).await {
                            Some(found) => missed = found,
                            None => return,
                        }
                    }
                    heard = tokio::time::Instant::now();
                    silence.as_mut().reset(heard + self.silent_after);
                    continue;
                }
            };
            heard = tokio::time::Instant::now();
            missed = false;
            let resync = match next {
                Some(Ok(event)) => {
                    let mut namespaces = self.lock();
                    let Some(ns) = namespaces.get_mut(&namespace) else {
                        return;
                    };
                    match event {
                        WatchEvent::Applied(lease) => applied(ns, lease),
                        WatchEvent::Deleted { name } => deleted(ns, name),
                    }
                    if ns.leases.is_empty() {
                        // Nobody left to tell: close the watch. The next subscriber opens a new one.
                        namespaces.remove(&namespace);
                        return;
                    }
                    continue;
                }
                Some(Err(error)) => {
                    tracing::debug!(%namespace, %error, "watch error; re-syncing the namespace");
                    error
                }
                None => {
                    // The store ended the watch: open a new one (after a pause, so a store that
                    // ends every watch at once is not hammered), then re-sync what it missed.
                    // Behind from now on, not only once the pause is over.
                    if let Some(ns) = self.lock().get(&namespace) {
                        ns.sync.lose();
                    }
                    tokio::time::sleep(self.reopen_after).await;
                    if !self.is_watched(&namespace) {
                        return;
                    }
                    stream = self.store.watch(&namespace);
                    StoreError::Unavailable {
                        message: format!("the watch on namespace {namespace} ended"),
                        source: None,
                    }
                }
            };
            if !self.resync(&namespace, resync).await {
                return;
            }
            heard = tokio::time::Instant::now();
        }
    }

    /// The watch of `namespace` has brought nothing for a lease duration: lists the
    /// namespace and hands each subscriber what the watch has not brought, as the watch would
    /// have (see the module docs). `Some(true)` if the watch had missed changes to leases the
    /// hub knew, `Some(false)` if not (or the list failed: the next check is a lease duration
    /// away); `None` if nobody listens any more.
    async fn check(&self, namespace: &str) -> Option<bool> {
        if !self.listening(namespace) {
            return None;
        }
        let listed = tokio::time::timeout(self.list_timeout, self.store.list(namespace)).await;
        let leases = match listed {
            Ok(Ok(leases)) => leases,
            Ok(Err(error)) => {
                tracing::debug!(%namespace, %error, "checking a silent watch: the list failed");
                return self.listening(namespace).then_some(false);
            }
            Err(_) => {
                tracing::debug!(%namespace, "checking a silent watch: the list timed out");
                return self.listening(namespace).then_some(false);
            }
        };
        let missed = {
            let mut namespaces = self.lock();
            let ns = namespaces.get_mut(namespace)?;
            caught_by_list(ns, leases)
        };
        if missed {
            tracing::debug!(%namespace, "a list found changes the silent watch had not brought");
        }
        self.listening(namespace).then_some(missed)
    }

    fn is_watched(&self, namespace: &str) -> bool {
        self.lock().contains_key(namespace)
    }

    /// Whether anyone still listens to `namespace`; forgets it if nobody does.
    fn listening(&self, namespace: &str) -> bool {
        let mut namespaces = self.lock();
        let Some(ns) = namespaces.get_mut(namespace) else {
            return false;
        };
        ns.leases.retain(|_, lease| {
            lease.routes.retain(|route| !route.tx.is_closed());
            !lease.routes.is_empty()
        });
        if ns.leases.is_empty() {
            namespaces.remove(namespace);
            return false;
        }
        true
    }

    /// Brings every actor of `namespace` up to date after the watch missed events (`error`
    /// says why), and tells them through their inboxes that the watch is whole again. By one
    /// list, retried while it fails for a reason that may pass (the API server is down or
    /// restarting: every call fails alike, so nobody gains by asking on their own, and a
    /// thousand actors asking at once the moment it is back is the burst to avoid); meanwhile
    /// the actors know the watch is behind ([`Inbox::watch_current`]) and take nothing they
    /// only believe expired. Or by the store's own replay. If the list is refused for good
    /// (forbidden, not supported, for as long as the list's own time limit: a refusal may be
    /// a restarted API server's authorizer that has not loaded its rules yet), each actor is
    /// told of the error and reads its own lease.
    /// Whether anyone still listens.
    async fn resync(&self, namespace: &str, error: StoreError) -> bool {
        let Some(loss) = self.lock().get(namespace).map(|ns| ns.sync.lose()) else {
            return false;
        };
        if self.store.watch_replays_state() {
            // The stream itself brings every lease again, in order.
            if let Some(ns) = self.lock().get(namespace) {
                ns.sync.catch_up(loss);
            }
            return self.is_watched(namespace);
        }
        // The first retries come soon (a dropped connection is back at once), later ones a
        // retry period apart: one list per replica and namespace costs the server little.
        let mut pause = self.reopen_after / 8;
        let mut refused_since = None;
        loop {
            let listed = tokio::time::timeout(self.list_timeout, self.store.list(namespace)).await;
            match listed {
                Ok(Ok(leases)) => return self.deliver_list(namespace, loss, &leases),
                // An API server that has just started refuses (403) until its authorizer has
                // loaded the RBAC rules: a refusal is final only once it has lasted.
                Ok(Err(refused)) if !refused.is_transient() => {
                    let at = now();
                    let since = *refused_since.get_or_insert_with(|| {
                        // The server answers again, if only to refuse: ask again soon.
                        pause = self.reopen_after / 8;
                        at
                    });
                    if at.saturating_duration_since(since) >= self.list_timeout {
                        return self.give_up(namespace, loss, &error, refused);
                    }
                    tracing::debug!(%namespace, %refused, "re-sync by list refused; retrying");
                }
                Ok(Err(list_error)) => {
                    tracing::debug!(%namespace, %list_error, "re-sync by list failed; retrying");
                }
                Err(_) => {
                    tracing::debug!(%namespace, %error, "re-sync by list timed out; retrying");
                }
            }
            if !self.listening(namespace) {
                return false;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(self.reopen_after);
        }
    }

    /// The list is refused for good: every actor is told, and reads its own lease; the
    /// namespace counts as caught up (the hub no longer holds the actors back). Whether
    /// anyone still listens.
    fn give_up(&self, namespace: &str, loss: u64, error: &StoreError, refused: StoreError) -> bool {
        tracing::debug!(%namespace, %error, %refused, "re-sync by list refused; every actor re-reads");
        {
            let mut namespaces = self.lock();
            let Some(ns) = namespaces.get_mut(namespace) else {
                return false;
            };
            ns.sync.catch_up(loss);
            for lease in ns.leases.values_mut() {
                lease.last = None;
                send_all(&mut lease.routes, Err(refused.duplicate()), false);
            }
        }
        self.listening(namespace)
    }

    /// Hands every subscriber of `namespace` its lease as `leases` lists it (`Deleted` if it
    /// is not there), delivered, not parked (after a gap, what changed is unknown), and to
    /// every actor, even one that has seen that version: it learns that the watch is whole.
    fn deliver_list(&self, namespace: &str, loss: u64, leases: &[StoredLease]) -> bool {
        let mut namespaces = self.lock();
        let Some(ns) = namespaces.get_mut(namespace) else {
            return false;
        };
        // Marked before the events go out: an actor woken by one finds the watch whole.
        ns.sync.catch_up(loss);
        let mut listed: HashMap<&str, &StoredLease> =
            leases.iter().map(|l| (l.name.as_str(), l)).collect();
        // One lease listed older than the watch brought it means the store went back: every
        // lease of the namespace did (some without an event to show it).
        let mut restored = false;
        for (name, lease) in ns.leases.iter_mut() {
            if let Some(stored) = listed.get(name.as_str()) {
                restored |= lease.went_back(stored.resource_version.parse().ok());
            }
        }
        if restored {
            tracing::warn!(%namespace, "the list brought older versions than the watch: the store went back in time");
            restore(ns);
            drop(namespaces);
            return self.listening(namespace);
        }
        for (name, lease) in ns.leases.iter_mut() {
            let event = match listed.remove(name.as_str()) {
                Some(stored) => {
                    // What the watch brought meanwhile may be newer than the list.
                    let this = Last::of(stored);
                    if lease
                        .last
                        .is_none_or(|last| this.is_none_or(|this| this.version > last.version))
                    {
                        lease.last = this;
                    }
                    WatchEvent::Applied(stored.clone())
                }
                None => {
                    lease.last = None;
                    lease.present = Some(false);
                    WatchEvent::Deleted { name: name.clone() }
                }
            };
            send_all(&mut lease.routes, Ok(event), true);
        }
        drop(namespaces);
        self.listening(namespace)
    }
}

impl Last {
    /// `None` if the version is not a number or nobody holds the lease (no event of a free
    /// lease is a renewal).
    fn of(stored: &StoredLease) -> Option<Last> {
        Some(Last {
            version: stored.resource_version.parse().ok()?,
            digest: digest(&stored.record)?,
        })
    }
}

/// A lease was created or replaced: a renewal by the holder the subscribers know is parked
/// for lease actors, anything else delivered.
fn applied(ns: &mut Namespace, stored: StoredLease) {
    let Some(lease) = ns.leases.get_mut(stored.name.as_str()) else {
        return;
    };
    if lease.routes.iter().all(|route| route.tx.is_closed()) {
        ns.leases.remove(stored.name.as_str());
        return;
    }
    let version = stored.resource_version.parse::<u64>().ok();
    if lease.went_back(version) {
        tracing::warn!(lease = %stored.name, version = %stored.resource_version, "the watch brought an older version than before: the store went back in time");
        restore(ns);
        return;
    }
    let Some(lease) = ns.leases.get_mut(stored.name.as_str()) else {
        return;
    };
    if let Some(version) = version
        && lease.routes.iter().all(|route| {
            route
                .inbox
                .as_ref()
                .is_some_and(|inbox| inbox.has_seen(version))
        })
    {
        // Nobody to tell: the holder's own write coming back to its replica, the common case.
        // What the hub knew of the lease is now behind, and what follows is no renewal of it.
        lease.last = None;
        return;
    }
    let this = version
        .zip(digest(&stored.record))
        .map(|(version, digest)| Last { version, digest });
    let renewal = match (lease.last, this) {
        (Some(last), Some(this)) => this.digest == last.digest && this.version > last.version,
        _ => false,
    };
    // Only a held lease's version counts from here (as `Last::of` would have it).
    let version = this.map(|this| this.version);
    // An older version (a replay) does not replace what is known of a newer one.
    if lease
        .last
        .is_none_or(|last| version.is_none_or(|v| v > last.version))
    {
        lease.last = this;
    }
    match (renewal, version) {
        (true, Some(version)) => park(&mut lease.routes, stored, version),
        _ => send_all(&mut lease.routes, Ok(WatchEvent::Applied(stored)), false),
    }
}

/// Hands the subscribers of `ns` what `leases` (a list of the namespace) shows that the watch
/// has not brought, as the watch would have: a changed lease as an event (a renewal parked),
/// a lease the hub had seen that is gone as a deletion. Whether the watch had missed changes to
/// leases the hub knew (a lease it knew nothing of is handed over, but proves nothing).
fn caught_by_list(ns: &mut Namespace, leases: Vec<StoredLease>) -> bool {
    let mut listed: HashMap<String, StoredLease> =
        leases.into_iter().map(|l| (l.name.clone(), l)).collect();
    let names: Vec<String> = ns.leases.keys().cloned().collect();
    let mut missed = false;
    for name in names {
        let Some(lease) = ns.leases.get_mut(name.as_str()) else {
            continue; // gone with a restore or a deletion nobody listened to
        };
        let known = lease.present.is_some();
        match listed.remove(name.as_str()) {
            Some(stored) => {
                let brought = lease.present == Some(true)
                    && stored.resource_version.parse::<u64>().ok() == Some(lease.top);
                if !brought {
                    missed |= known;
                    applied(ns, stored);
                }
            }
            None if lease.present == Some(true) => {
                missed = true;
                deleted(ns, name);
            }
            None => lease.present = Some(false),
        }
    }
    missed
}

fn deleted(ns: &mut Namespace, name: String) {
    let Some(lease) = ns.leases.get_mut(name.as_str()) else {
        return;
    };
    lease.last = None;
    lease.present = Some(false);
    send_all(
        &mut lease.routes,
        Ok(WatchEvent::Deleted { name: name.clone() }),
        false,
    );
    if lease.routes.is_empty() {
        ns.leases.remove(name.as_str());
    }
}

/// Parks a renewal for the lease actors that have not seen it, stamped with the instant it
/// arrived, and delivers it to observers.
fn park(routes: &mut Vec<Route>, stored: StoredLease, version: u64) {
    let stored = Arc::new(stored);
    let mut at = None;
    for route in routes.iter() {
        match &route.inbox {
            Some(inbox) if inbox.has_seen(version) => {}
            Some(inbox) => inbox.park(&stored, version, *at.get_or_insert_with(now)),
            None => {
                let _ = route
                    .tx
                    .unbounded_send(Box::new(Ok(WatchEvent::Applied((*stored).clone()))));
            }
        }
    }
    routes.retain(|route| !route.tx.is_closed());
}

/// Sends `item` to every route that has not seen it (with `everyone`, to every route),
/// dropping what was parked before it, then drops the routes whose receiver is gone. Each
/// route but the last gets a copy and the last the item itself: a lease has one actor per
/// replica, so the usual event is passed on without a copy.
fn send_all(routes: &mut Vec<Route>, item: StoreResult<WatchEvent>, everyone: bool) {
    let version = match &item {
        Ok(WatchEvent::Applied(lease)) => Some(lease.resource_version.parse::<u64>().ok()),
        // What was parked stays: the actor takes it before the deletion (when the lease was
        // last renewed is when a deleted lease that was held expires: rule
        // `deleted-held-waits`). Likewise after an error; the actor re-reads anyway.
        Ok(WatchEvent::Deleted { .. }) | Err(_) => None,
    };
    let copy = |item: &StoreResult<WatchEvent>| match item {
        Ok(event) => Ok(event.clone()),
        Err(error) => Err(error.duplicate()),
    };
    let mut held: Option<&Route> = None;
    for route in routes.iter() {
        if let Some(inbox) = &route.inbox {
            match version {
                Some(Some(version)) if inbox.has_seen(version) => {
                    inbox.clear_up_to(Some(version));
                    if !everyone {
                        continue;
                    }
                }
                Some(version) => inbox.clear_up_to(version),
                None => {}
            }
        }
        if let Some(previous) = held.replace(route) {
            let _ = previous.tx.unbounded_send(Box::new(copy(&item)));
        }
    }
    if let Some(last) = held {
        let _ = last.tx.unbounded_send(Box::new(item));
    }
    routes.retain(|route| !route.tx.is_closed());
}

/// A digest of every field of `record` but `renewTime`; `None` if nobody holds it. (Every
/// field is named, so a field added to the record is digested until said otherwise.)
fn digest(record: &LeaseRecord) -> Option<u64> {
    use std::hash::{BuildHasher, BuildHasherDefault};
    let LeaseRecord {
        holder_identity,
        lease_duration_seconds,
        acquire_time,
        renew_time: _,
        lease_transitions,
        strategy,
        preferred_holder,
        successor,
        handoff_request,
        holder_pod,
    } = record;
    record.holder()?;
    Some(
        BuildHasherDefault::<crate::hash::FxHasher>::default().hash_one((
            holder_identity,
            lease_duration_seconds,
            acquire_time,
            lease_transitions,
            strategy,
            preferred_holder,
            successor,
            handoff_request,
            holder_pod,
        )),
    )
}
#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use futures::FutureExt;

    use super::*;
    use crate::store::MemoryStore;

    fn key() -> LeaseKey {
        LeaseKey::new("default", "s.election.x")
    }

    fn held_by(id: &str, transitions: i32) -> LeaseRecord {
        LeaseRecord {
            holder_identity: Some(id.into()),
            lease_duration_seconds: Some(15),
            lease_transitions: Some(transitions),
            renew_time: Some(SystemTime::UNIX_EPOCH),
            ..Default::default()
        }
    }

    fn renewed(stored: &StoredLease, secs: u64) -> LeaseRecord {
        LeaseRecord {
            renew_time: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(secs)),
            ..stored.record.clone()
        }
    }

    /// Replaces the lease `after` was read as with `record`.
    async fn write(store: &MemoryStore, after: &StoredLease, record: LeaseRecord) -> StoredLease {
        store
            .replace(&key(), record, &after.resource_version)
            .await
            .unwrap()
    }

    fn handoff_to(stored: &StoredLease, to: &str) -> LeaseRecord {
        LeaseRecord {
            handoff_request: Some(to.into()),
            ..stored.record.clone()
        }
    }

    /// Lets the hub's pump forward what the store sent.
    async fn pump() {
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
    }

    /// The next event a stream has ready, if any.
    fn ready(stream: &mut Events) -> Option<StoredLease> {
        match stream.next().now_or_never() {
            Some(Some(Ok(WatchEvent::Applied(lease)))) => Some(lease),
            Some(other) => panic!("unexpected {other:?}"),
            None => None,
        }
    }

    type Events = BoxStream<'static, StoreResult<WatchEvent>>;

    /// A hub on a memory store with a lease actor's subscription (and an observer's, if
    /// asked for), after the lease's first version (held by "a"), which each of them got.
    struct Fixture {
        store: MemoryStore,
        actor: Events,
        inbox: Arc<Inbox>,
        observer: Option<Events>,
        v1: StoredLease,
    }

    async fn fixture(with_observer: bool) -> Fixture {
        let store = MemoryStore::new();
        let hub = WatchHub::new(
            Arc::new(store.clone()),
            Duration::from_secs(2),
            Duration::from_secs(10),
            Duration::from_secs(15),
        );
        let (mut actor, inbox) = hub.watch_lease(&key());
        let mut observer = with_observer.then(|| hub.watch(&key()));
        // The first version is news to everyone.
        let v1 = store.create(&key(), held_by("a", 0)).await.unwrap();
        pump().await;
        assert_eq!(ready(&mut actor), Some(v1.clone()));
        if let Some(observer) = &mut observer {
            assert_eq!(ready(observer), Some(v1.clone()));
        }
        Fixture {
            store,
            actor,
            inbox,
            observer,
            v1,
        }
    }

    #[actix::test]
    async fn renewals_are_parked_for_lease_actors_and_delivered_to_observers() {
        tokio::time::pause();
        let Fixture {
            store,
            mut actor,
            inbox: parked,
            observer,
            v1,
        } = fixture(true).await;
        let mut observer = observer.expect("asked for");

        // A renewal by the same holder: the observer gets it; the actor is not woken, the
        // renewal waits in its slot with the instant it arrived.
        tokio::time::advance(Duration::from_secs(2)).await;
        let arrived = now();
        let v2 = write(&store, &v1, renewed(&v1, 2)).await;
        pump().await;
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(ready(&mut observer), Some(v2.clone()));
        assert_eq!(ready(&mut actor), None, "not woken by a renewal");
        let held = parked.take().expect("parked");
        assert_eq!((*held.lease).clone(), v2);
        assert_eq!(held.at, arrived, "stamped on arrival, not when taken");
        assert!(parked.take().is_none(), "taken once");

        // Two renewals in a row: only the newer is kept.
        let v3 = write(&store, &v2, renewed(&v2, 3)).await;
        let v4 = write(&store, &v3, renewed(&v3, 4)).await;
        pump().await;
        assert_eq!(ready(&mut actor), None);
        assert_eq!(parked.take().map(|p| (*p.lease).clone()), Some(v4.clone()));

        // Anything but `renewTime` is delivered, and supersedes a parked renewal.
        let v5 = write(&store, &v4, renewed(&v4, 5)).await;
        let v6 = write(&store, &v5, handoff_to(&v5, "b")).await;
        pump().await;
        assert_eq!(ready(&mut actor), Some(v6.clone()), "a handoff request");
        assert!(parked.take().is_none(), "superseded by the delivered event");
        for want in [v3, v4, v5, v6.clone()] {
            assert_eq!(
                ready(&mut observer),
                Some(want),
                "observers get every event"
            );
        }

        // A new holder, a new term under the same holder, and a release are all delivered.
        let v7 = write(&store, &v6, held_by("b", 1)).await;
        let v8 = write(&store, &v7, held_by("b", 2)).await;
        let released = LeaseRecord {
            holder_identity: None,
            ..v8.record.clone()
        };
        let v9 = write(&store, &v8, released).await;
        // A free lease whose `renewTime` changes is not a renewal: nobody holds it.
        let v10 = write(&store, &v9, renewed(&v9, 10)).await;
        pump().await;
        for want in [v7, v8, v9, v10] {
            assert_eq!(ready(&mut actor), Some(want.clone()));
            assert_eq!(ready(&mut observer), Some(want));
        }
        assert!(parked.take().is_none());
    }

    #[actix::test]
    async fn what_the_actor_has_seen_is_neither_delivered_nor_parked() {
        let Fixture {
            store,
            mut actor,
            inbox,
            observer,
            v1,
        } = fixture(true).await;
        let mut observer = observer.expect("asked for");

        // The holder's own writes: it learns each version from the write's answer first.
        let v2 = write(&store, &v1, held_by("a", 1)).await;
        inbox.set_seen(Some(&v2.resource_version));
        let v3 = write(&store, &v2, renewed(&v2, 3)).await;
        inbox.set_seen(Some(&v3.resource_version));
        pump().await;
        assert_eq!(ready(&mut actor), None, "a new term it wrote itself");
        assert!(inbox.take().is_none(), "a renewal it wrote itself");
        for want in [v2, v3.clone()] {
            assert_eq!(
                ready(&mut observer),
                Some(want),
                "observers get every event"
            );
        }

        // Newer versions are news again; after a restart (nothing seen) so is everything.
        let v4 = write(&store, &v3, renewed(&v3, 4)).await;
        pump().await;
        assert_eq!(inbox.take().map(|p| (*p.lease).clone()), Some(v4.clone()));
        inbox.set_seen(None);
        let v5 = write(&store, &v4, held_by("b", 2)).await;
        pump().await;
        assert_eq!(ready(&mut actor), Some(v5));
    }

    #[actix::test]
    async fn after_versions_only_its_actor_has_seen_the_next_event_is_delivered() {
        // No observer: with one, the hub never skips an event.
        let Fixture {
            store,
            mut actor,
            inbox,
            v1,
            ..
        } = fixture(false).await;
        // The holder writes a handoff request it has seen; the hub skips it without learning
        // what changed...
        let v2 = write(&store, &v1, handoff_to(&v1, "b")).await;
        inbox.set_seen(Some(&v2.resource_version));
        pump().await;
        assert_eq!(ready(&mut actor), None);
        // ...so a write that undoes it, though it digests like v1, is delivered at once, not
        // parked as a renewal of v1.
        let v3 = write(&store, &v2, v1.record.clone()).await;
        pump().await;
        assert_eq!(ready(&mut actor), Some(v3.clone()));
        assert!(inbox.take().is_none());
        // Renewals of what was delivered are parked again.
        let v4 = write(&store, &v3, renewed(&v3, 4)).await;
        pump().await;
        assert_eq!(ready(&mut actor), None);
        assert_eq!(inbox.take().map(|p| (*p.lease).clone()), Some(v4));
    }

    #[test]
    fn a_parked_renewal_survives_an_older_replay_and_is_dropped_on_deletion() {
        let inbox = Inbox::default();
        let lease = Arc::new(StoredLease {
            name: "x".into(),
            record: held_by("a", 0),
            resource_version: "7".into(),
            uid: None,
        });
        let at = now();
        inbox.park(&lease, 7, at);
        inbox.park(&lease, 5, at);
        inbox.clear_up_to(Some(6));
        assert_eq!(
            inbox.take().map(|p| p.version),
            Some(7),
            "an older version neither replaces nor clears a newer parked one"
        );
        inbox.park(&lease, 8, at);
        inbox.clear_up_to(Some(8));
        assert!(inbox.take().is_none(), "the same version delivered");
        inbox.park(&lease, 9, at);
        inbox.clear_up_to(None);
        assert!(inbox.take().is_none(), "deleted");
    }
}

/// The re-sync after a watch loss, on a store whose calls fail for a while.
#[cfg(all(test, feature = "testing"))]
mod resync_tests {
    use futures::FutureExt;

    use super::*;
    use crate::record::LeaseRecord;
    use crate::store::MemoryStore;
    use crate::testing::{Call, FaultyStore};

    fn key() -> LeaseKey {
        LeaseKey::new("default", "s.election.x")
    }

    async fn pump() {
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
    }

    /// A hub over `faults`, a lease actor's subscription that has seen the lease's first
    /// version, and that version.
    async fn subscribed(
        faults: &FaultyStore,
        store: &MemoryStore,
    ) -> (
        Arc<WatchHub>,
        BoxStream<'static, StoreResult<WatchEvent>>,
        Arc<Inbox>,
        StoredLease,
    ) {
        let hub = WatchHub::new(
            Arc::new(faults.clone()),
            Duration::from_secs(2),
            Duration::from_secs(10),
            Duration::from_secs(15),
        );
        let (mut actor, inbox) = hub.watch_lease(&key());
        let record = LeaseRecord {
            holder_identity: Some("a".into()),
            lease_duration_seconds: Some(15),
            ..Default::default()
        };
        let v1 = store.create(&key(), record).await.unwrap();
        pump().await;
        assert!(matches!(
            actor.next().now_or_never(),
            Some(Some(Ok(WatchEvent::Applied(_))))
        ));
        inbox.set_seen(Some(&v1.resource_version));
        assert!(inbox.watch_current());
        (hub, actor, inbox, v1)
    }

    /// While the list fails for a reason that may pass, the hub retries it and tells the
    /// actors nothing (each would read its own lease: the burst when the server is back); the
    /// inbox says the watch is behind. The list that succeeds goes to every actor, even one
    /// that has seen that version (it learns the watch is whole), and only then is the watch
    /// current again.
    #[actix::test]
    async fn a_failing_list_is_retried_and_the_one_that_succeeds_reaches_every_actor() {
        tokio::time::pause();
        let store = MemoryStore::new();
        let faults = FaultyStore::new(store.clone());
        let (_hub, mut actor, inbox, v1) = subscribed(&faults, &store).await;

        faults.fail_always(Call::List, || StoreError::Unavailable {
            message: "connection refused".into(),
            source: None,
        });
        faults.drop_watches();
        pump().await;
        assert!(!inbox.watch_current(), "behind from the moment it is lost");
        tokio::time::sleep(Duration::from_secs(30)).await;
        let lists = faults.calls(Call::List);
        assert!(
            (15..=20).contains(&lists),
            "retried soon, then every retry period: {lists} lists in 28 s"
        );
        assert!(
            actor.next().now_or_never().is_none(),
            "the actors are told nothing while the list fails"
        );
        assert!(!inbox.watch_current());

        faults.clear();
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(
            faults.calls(Call::List),
            lists + 1,
            "one list once it works"
        );
        assert!(inbox.watch_current());
        match actor.next().now_or_never() {
            Some(Some(Ok(WatchEvent::Applied(listed)))) => assert_eq!(listed, v1),
            other => panic!("expected the listed lease, got {other:?}"),
        }
    }

    /// Rule `watch-behind`: a watch that brings nothing for a lease duration is checked by one
    /// list, which hands over what the watch missed, as the watch would have; one that stays
    /// silent for another lease duration after missing changes is replaced by a new watch and
    /// a re-sync.
    #[actix::test]
    async fn a_silent_watch_is_checked_by_a_list_and_replaced_once_it_has_missed_changes() {
        tokio::time::pause();
        let store = MemoryStore::new();
        let faults = FaultyStore::new(store.clone());
        let (hub, mut actor, inbox, v1) = subscribed(&faults, &store).await;
        let mut observer = hub.watch(&key());

        // Quiet (nobody renews): a list every lease duration, which finds nothing new.
        tokio::time::sleep(Duration::from_secs(31)).await;
        assert_eq!(faults.calls(Call::List), 2, "one list per lease duration");
        assert!(
            actor.next().now_or_never().is_none(),
            "nothing to hand over"
        );
        assert!(observer.next().now_or_never().is_none());
        assert_eq!(faults.calls(Call::Watch), 1, "the watch is kept");

        // Silent, while the lease gets a new holder: the next check hands it over.
        faults.silence_watches();
        let record = LeaseRecord {
            holder_identity: Some("b".into()),
            lease_duration_seconds: Some(15),
            lease_transitions: Some(1),
            ..Default::default()
        };
        let v2 = store
            .replace(&key(), record, &v1.resource_version)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_secs(13)).await;
        assert!(
            observer.next().now_or_never().is_none(),
            "not before the check"
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(faults.calls(Call::List), 3);
        for events in [&mut actor, &mut observer] {
            match events.next().now_or_never() {
                Some(Some(Ok(WatchEvent::Applied(listed)))) => assert_eq!(listed, v2),
                other => panic!("expected the new holder, got {other:?}"),
            }
        }
        inbox.set_seen(Some(&v2.resource_version));
        assert_eq!(
            faults.calls(Call::Watch),
            1,
            "a missed change alone proves little"
        );

        // Still nothing for another lease duration: the watch is dead. A new one, and a
        // re-sync that reaches everyone.
        tokio::time::sleep(Duration::from_secs(15)).await;
        assert_eq!(faults.calls(Call::Watch), 2, "a new watch");
        assert_eq!(faults.calls(Call::List), 4, "and a re-sync");
        assert!(inbox.watch_current());
        assert!(matches!(
            actor.next().now_or_never(),
            Some(Some(Ok(WatchEvent::Applied(_))))
        ));
        assert_eq!(faults.calls(Call::Get), 0, "no read");
    }

    /// A list refused (forbidden) is retried for the list's time limit (an API server that has
    /// just started refuses until its authorizer has loaded the RBAC rules), then taken as
    /// final: every actor is told of the error, and reads its own lease; the hub no longer
    /// holds the actors back.
    #[actix::test]
    async fn a_list_refused_for_a_renew_deadline_sends_every_actor_to_read_its_own_lease() {
        tokio::time::pause();
        let store = MemoryStore::new();
        let faults = FaultyStore::new(store.clone());
        let (_hub, mut actor, inbox, _v1) = subscribed(&faults, &store).await;

        faults.fail_always(Call::List, || StoreError::Forbidden {
            verb: "list".into(),
            resource: "leases".into(),
            message: "denied".into(),
        });
        faults.drop_watches();
        tokio::time::sleep(Duration::from_secs(4)).await;
        assert!(faults.calls(Call::List) > 1, "retried at first");
        assert!(actor.next().now_or_never().is_none(), "nobody told yet");
        assert!(!inbox.watch_current());
        tokio::time::sleep(Duration::from_secs(10)).await;
        let lists = faults.calls(Call::List);
        assert!(matches!(
            actor.next().now_or_never(),
            Some(Some(Err(StoreError::Forbidden { .. })))
        ));
        assert!(inbox.watch_current(), "the actors are on their own");
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(faults.calls(Call::List), lists, "then no longer retried");
    }
}
