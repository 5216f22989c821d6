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
//! error or ends, the hub lists the namespace once ([`LeaseStore::list`]) and hands each actor
//! its lease as listed (an actor already at that version ignores it; a lease missing from the
//! list comes as `Deleted`, after which that actor reads it). A store whose watch replays every
//! lease by itself after an error ([`LeaseStore::watch_replays_state`]: `KubeStore`, whose
//! watcher re-lists) needs no list of ours. An ended stream is reopened after a retry period.
//! Only if the list fails are the actors told of the error, and each re-reads its own lease:
//! watches only make dsync faster, correctness never depends on them.
//!
//! # Renewals are parked, not delivered
//!
//! Most events are renewals: the holder every actor of the lease already knows wrote a new
//! `renewTime`, nothing else. No lease actor acts on one when it arrives: a follower needs it
//! only by the time it would otherwise judge the lease expired, and the holder knows its own
//! write. Waking each for every renewal would cost more than the renewal's compare-and-swap.
//! So for a lease actor's subscription ([`WatchHub::watch_lease`]) the hub parks such an event
//! in the actor's [`Inbox`] with the instant it arrived, and wakes nobody; any other event (a
//! new holder, a release, a new term under the same name, a handoff request, any field but
//! `renewTime`; a deletion, an error, a re-sync) is delivered at once and drops what was
//! parked before it. The actor takes the parked renewal at the start of its every step
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
    tx: mpsc::UnboundedSender<Routed>,
    /// `None`: an observer, which gets every event.
    inbox: Option<Arc<Inbox>>,
}

/// The subscribers of one lease, and what the watch last brought for it.
#[derive(Default)]
struct Lease {
    routes: Vec<Route>,
    last: Option<Last>,
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
}

/// Shares one watch per namespace among all of a replica's lease actors.
pub(crate) struct WatchHub {
    store: Arc<dyn LeaseStore>,
    namespaces: Mutex<FastMap<String, Namespace>>,
    /// How long to wait before reopening a watch the store ended (the retry period).
    reopen_after: Duration,
    /// The limit of a re-sync's list (the renew deadline, as every lease call).
    list_timeout: Duration,
}

impl WatchHub {
    pub fn new(
        store: Arc<dyn LeaseStore>,
        reopen_after: Duration,
        list_timeout: Duration,
    ) -> Arc<Self> {
        Arc::new(WatchHub {
            store,
            namespaces: Mutex::default(),
            reopen_after,
            list_timeout,
        })
    }

    fn lock(&self) -> MutexGuard<'_, FastMap<String, Namespace>> {
        // Every mutation is a single map operation: a poisoned lock is still consistent.
        self.namespaces.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every change to one lease (for observers). Opens the namespace's watch if nobody
    /// watches it yet; the pump runs on the calling arbiter.
    pub fn watch(self: &Arc<Self>, key: &LeaseKey) -> BoxStream<'static, StoreResult<WatchEvent>> {
        self.subscribe(key, None)
    }

    /// Changes to one lease, for its lease actor: renewals by the holder it already knows are
    /// parked in the returned [`Inbox`] instead of being delivered, and versions it has seen
    /// are dropped (see the module docs).
    pub fn watch_lease(
        self: &Arc<Self>,
        key: &LeaseKey,
    ) -> (BoxStream<'static, StoreResult<WatchEvent>>, Arc<Inbox>) {
        let inbox = Arc::new(Inbox::default());
        (self.subscribe(key, Some(Arc::clone(&inbox))), inbox)
    }

    fn subscribe(
        self: &Arc<Self>,
        key: &LeaseKey,
        inbox: Option<Arc<Inbox>>,
    ) -> BoxStream<'static, StoreResult<WatchEvent>> {
        let (tx, rx) = mpsc::unbounded();
        let start = {
            let mut namespaces = self.lock();
            let start = !namespaces.contains_key(&key.namespace);
            let lease = namespaces
                .entry(key.namespace.clone())
                .or_default()
                .leases
                .entry(key.name.clone())
                .or_default();
            lease.routes.retain(|route| !route.tx.is_closed());
            lease.routes.push(Route { tx, inbox });
            start
        };
        if start {
            let stream = self.store.watch(&key.namespace);
            actix::spawn(Arc::clone(self).pump(key.namespace.clone(), stream));
        }
        rx.map(|routed| *routed).boxed()
    }

    /// How many namespaces are watched right now.
    pub fn watched_namespaces(&self) -> usize {
        self.lock().len()
    }

    async fn pump(
        self: Arc<Self>,
        namespace: String,
        mut stream: BoxStream<'static, StoreResult<WatchEvent>>,
    ) {
        loop {
            let resync = match stream.next().await {
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
        }
    }

    fn is_watched(&self, namespace: &str) -> bool {
        self.lock().contains_key(namespace)
    }

    /// Brings every actor of `namespace` up to date after the watch missed events (`error`
    /// says why): by one list, or by the store's own replay, or, when the list fails, by
    /// telling each actor, which then reads its own lease. Whether anyone still listens.
    async fn resync(&self, namespace: &str, error: StoreError) -> bool {
        if self.store.watch_replays_state() {
            // The stream itself brings every lease again.
            return self.is_watched(namespace);
        }
        let listed = tokio::time::timeout(self.list_timeout, self.store.list(namespace)).await;
        let mut namespaces = self.lock();
        let Some(ns) = namespaces.get_mut(namespace) else {
            return false;
        };
        match listed {
            Ok(Ok(leases)) => {
                // Every subscriber gets its lease as listed, delivered (not parked): after a
                // gap, what changed is unknown.
                let mut listed: HashMap<&str, _> =
                    leases.iter().map(|l| (l.name.as_str(), l)).collect();
                for (name, lease) in ns.leases.iter_mut() {
                    let event = match listed.remove(name.as_str()) {
                        Some(stored) => {
                            lease.last = Last::of(stored);
                            WatchEvent::Applied(stored.clone())
                        }
                        None => {
                            lease.last = None;
                            WatchEvent::Deleted { name: name.clone() }
                        }
                    };
                    send_all(&mut lease.routes, Ok(event));
                }
            }
            failed => {
                let error = match failed {
                    Ok(Err(list_error)) => list_error,
                    _ => error,
                };
                tracing::debug!(%namespace, %error, "re-sync by list failed; every actor re-reads");
                for lease in ns.leases.values_mut() {
                    lease.last = None;
                    send_all(&mut lease.routes, Err(error.duplicate()));
                }
            }
        }
        ns.leases.retain(|_, lease| !lease.routes.is_empty());
        if ns.leases.is_empty() {
            namespaces.remove(namespace);
            return false;
        }
        true
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
        _ => send_all(&mut lease.routes, Ok(WatchEvent::Applied(stored))),
    }
}

fn deleted(ns: &mut Namespace, name: String) {
    let Some(lease) = ns.leases.get_mut(name.as_str()) else {
        return;
    };
    lease.last = None;
    send_all(
        &mut lease.routes,
        Ok(WatchEvent::Deleted { name: name.clone() }),
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

/// Sends `item` to every route that has not seen it (dropping what was parked before it),
/// then drops the routes whose receiver is gone. Each route but the last gets a copy and the
/// last the item itself: a lease has one actor per replica, so the usual event is passed on
/// without a copy.
fn send_all(routes: &mut Vec<Route>, item: StoreResult<WatchEvent>) {
    let version = match &item {
        Ok(WatchEvent::Applied(lease)) => Some(lease.resource_version.parse::<u64>().ok()),
        // Whatever was parked is superseded: the lease is gone.
        Ok(WatchEvent::Deleted { .. }) => Some(None),
        // What was parked was still seen; the actor re-reads anyway.
        Err(_) => None,
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
                    continue;
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
