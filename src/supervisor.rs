//! The `Supervisor` actor: one per [`Dsync`](crate::Dsync), owning the registry of lease
//! actors.
//!
//! Every election and lock is a lease actor running under actix's supervision
//! (`actix::Supervisor`), so an actor that fails (for example after a store error that retrying
//! in place cannot fix) is restarted with the same address: handles keep working, the failed
//! term is cancelled and reported as
//! [`DeposeReason::Restarted`](crate::election::DeposeReason::Restarted), and the new incarnation
//! campaigns again after a backoff that grows with every consecutive failure. The registry
//! maps each lease to its one actor, so every handle for the same election or lock shares it;
//! an actor that is stopping is *retired*: asking for its lease again starts a new actor,
//! which waits until the old one has finished. A lock actor (or semaphore slot's) that no
//! handle reaches, with no claim and no waiter, retires by itself and frees everything it had
//! (rule `idle-actors-retire`): the registry counts its handles (`Registry::entry_claimed`)
//! under its lock, so a handle is never given an actor that is retiring. The supervisor also owns the replica's watch
//! hub: one store watch per namespace, fanned out to the actors of each lease, so a thousand
//! elections cost one watch. [`Supervisor`] shuts everything down.
//!
//! The registry also keeps the replica's observers ([`Observer`], observe-only followers),
//! apart from the lease actors: a replica may observe a lease it also campaigns for, and an
//! observer holds nothing to release. A shutdown stops them first; [`ListLeases`] does not
//! list them (they are not lease actors).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use actix::prelude::*;
use futures::future::join_all;
use tokio::sync::oneshot;

use crate::error::Result;
use crate::lease::actor::{Directory, Stop, StopOutcome};
use crate::lease::core::{HandleClaim, Handles};
use crate::observe::Observer;
use crate::resource::LeaseKind;
use crate::store::LeaseKey;
use crate::watch::WatchHub;
use crate::work::ActorId;

/// One lease actor in the registry, whatever its face: what the registry needs (its id, lease,
/// kind and how to stop it) and the face's own handle, which only that face's constructor
/// reads back ([`Entry::handle`]). So the registry knows no face, and a new face needs no
/// change here.
#[derive(Clone)]
pub(crate) struct Entry {
    id: ActorId,
    key: LeaseKey,
    kind: LeaseKind,
    stopper: Recipient<Stop>,
    handle: Arc<dyn std::any::Any + Send + Sync>,
    /// The face's handles that use the actor (a lock's), claimed under the registry's lock.
    handles: Handles,
}

impl Entry {
    /// An entry for the actor `id` of `key`, of `kind`, stopped through `stopper`, carrying the
    /// face's `handle`; `handles` counts the face's handles that keep the actor in use.
    pub fn new<H: std::any::Any + Send + Sync>(
        id: ActorId,
        key: LeaseKey,
        kind: LeaseKind,
        stopper: Recipient<Stop>,
        handle: H,
        handles: Handles,
    ) -> Self {
        Entry {
            id,
            key,
            kind,
            stopper,
            handle: Arc::new(handle),
            handles,
        }
    }

    pub fn id(&self) -> ActorId {
        self.id
    }

    pub fn key(&self) -> LeaseKey {
        self.key.clone()
    }

    fn kind(&self) -> &'static str {
        self.kind.as_str()
    }

    /// What kind of lease the actor runs.
    pub fn lease_kind(&self) -> LeaseKind {
        self.kind
    }

    /// The face's handle, if the entry is of that face.
    pub fn handle<H: std::any::Any + Clone>(&self) -> Option<H> {
        self.handle.downcast_ref::<H>().cloned()
    }

    /// The actor, as a recipient of [`Stop`].
    pub fn stopper(&self) -> Recipient<Stop> {
        self.stopper.clone()
    }

    /// Stops the actor and waits for it (unless `from_work`), as a `Result`.
    pub async fn stop(&self, from_work: bool) -> Result<()> {
        let (reply, rx) = oneshot::channel();
        if self
            .stopper()
            .send(Stop { reply, from_work })
            .await
            .is_err()
        {
            return Ok(()); // gone: nothing left to stop
        }
        // A dropped sender means the actor ended without answering: stopped either way.
        rx.await
            .unwrap_or(StopOutcome::Done)
            .into_result(self.kind(), &self.key())
    }
}

#[derive(Default)]
struct Inner {
    entries: HashMap<LeaseKey, Entry>,
    /// Actors told to stop that are still finishing: no longer handed out (asking for the
    /// lease again starts a new actor), but still waited for by a shutdown and by the new one.
    retiring: Vec<Entry>,
    /// Observe-only followers, by lease. Kept apart from the lease actors: this replica may
    /// observe a lease it also campaigns for, and an observer holds nothing to release.
    observers: HashMap<LeaseKey, Observer>,
    closed: bool,
}

/// Lease actors by lease. Shared by the `Dsync` handle (which registers) and the actors (which
/// retire and deregister themselves).
#[derive(Default)]
pub(crate) struct Registry {
    inner: Mutex<Inner>,
    /// Tasks that extend an election on the lease thread (its `LeaseCandidate`): each ends
    /// with its election and then withdraws what it wrote, so a shutdown waits for them
    /// after the lease actors have stopped and before the lease thread ends.
    pub(crate) companions: tokio_util::task::TaskTracker,
}

impl Registry {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every mutation is a single map operation: a poisoned lock is still consistent.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// The actor for `key`, started by `start` if there is none. `start` is given the actor
    /// for the same lease that is still stopping, if any, to wait for. `None` once closed.
    pub fn entry(
        &self,
        key: &LeaseKey,
        start: impl FnOnce(Option<Recipient<Stop>>) -> Entry,
    ) -> Option<Entry> {
        let mut inner = self.lock();
        if inner.closed {
            return None;
        }
        if let Some(entry) = inner.entries.get(key) {
            return Some(entry.clone());
        }
        let predecessor = inner
            .retiring
            .iter()
            .rev()
            .find(|e| e.key() == *key)
            .map(Entry::stopper);
        let entry = start(predecessor);
        inner.entries.insert(key.clone(), entry.clone());
        Some(entry)
    }

    /// Like [`entry`](Self::entry), taking a share of the actor's [`Handles`] under the
    /// registry's lock: the actor cannot retire as unused until the claim is dropped (rule
    /// `idle-actors-retire`).
    pub fn entry_claimed(
        &self,
        key: &LeaseKey,
        start: impl FnOnce(Option<Recipient<Stop>>) -> Entry,
    ) -> Option<(Entry, HandleClaim)> {
        let mut inner = self.lock();
        if inner.closed {
            return None;
        }
        let entry = match inner.entries.get(key) {
            Some(entry) => entry.clone(),
            None => {
                let predecessor = inner
                    .retiring
                    .iter()
                    .rev()
                    .find(|e| e.key() == *key)
                    .map(Entry::stopper);
                let entry = start(predecessor);
                inner.entries.insert(key.clone(), entry.clone());
                entry
            }
        };
        let claim = entry.handles.claim();
        Some((entry, claim))
    }

    /// The observer of `key`, started by `start` if there is none (or it was stopped). `None`
    /// once closed.
    pub fn observer(&self, key: &LeaseKey, start: impl FnOnce() -> Observer) -> Option<Observer> {
        let mut inner = self.lock();
        if inner.closed {
            return None;
        }
        if let Some(observer) = inner.observers.get(key).filter(|o| !o.is_stopped()) {
            return Some(observer.clone());
        }
        // Stopped observers of other leases go now: observing ever new names keeps nothing of
        // the old ones (only a new observer pays for the sweep).
        inner.observers.retain(|_, o| !o.is_stopped());
        let observer = start();
        inner.observers.insert(key.clone(), observer.clone());
        Some(observer)
    }

    /// Takes every observer out of the registry (for a shutdown, after [`close`](Self::close)).
    fn take_observers(&self) -> Vec<Observer> {
        self.lock().observers.drain().map(|(_, o)| o).collect()
    }

    /// Closes the registry and returns everything in it.
    fn close(&self) -> Vec<Entry> {
        let mut inner = self.lock();
        inner.closed = true;
        inner
            .entries
            .values()
            .chain(&inner.retiring)
            .cloned()
            .collect()
    }

    /// What is registered now, live and stopping, ordered by lease.
    pub(crate) fn list(&self) -> Vec<LeaseEntry> {
        let inner = self.lock();
        let live = inner.entries.values().map(|e| (e, false));
        let stopping = inner.retiring.iter().map(|e| (e, true));
        let mut list: Vec<LeaseEntry> = live
            .chain(stopping)
            .map(|(e, stopping)| LeaseEntry {
                lease: e.key(),
                kind: e.lease_kind(),
                stopping,
            })
            .collect();
        list.sort_by(|a, b| (&a.lease, a.stopping).cmp(&(&b.lease, b.stopping)));
        list
    }
}

impl Directory for Registry {
    fn retire(&self, key: &LeaseKey, id: ActorId) {
        let mut inner = self.lock();
        if inner.entries.get(key).is_some_and(|e| e.id() == id)
            && let Some(entry) = inner.entries.remove(key)
        {
            inner.retiring.push(entry);
        }
    }

    fn remove(&self, key: &LeaseKey, id: ActorId) {
        let mut inner = self.lock();
        if inner.entries.get(key).is_some_and(|e| e.id() == id) {
            inner.entries.remove(key);
        }
        inner.retiring.retain(|e| e.id() != id);
    }

    fn retire_unused(&self, key: &LeaseKey, id: ActorId) -> bool {
        let mut inner = self.lock();
        let unused = inner
            .entries
            .get(key)
            .is_some_and(|e| e.id() == id && e.handles.count() == 0);
        if unused && let Some(entry) = inner.entries.remove(key) {
            inner.retiring.push(entry);
        }
        unused
    }
}

/// Supervises one `Dsync`'s lease actors (see the module docs).
pub struct Supervisor {
    registry: Arc<Registry>,
    /// The replica's shared watches, one per namespace, fanned out to the actors.
    _watches: Arc<WatchHub>,
    /// dsync's own lease thread (its private System), if it has one: ended once everything
    /// has stopped.
    system: Option<System>,
}

impl Supervisor {
    pub(crate) fn new(
        registry: Arc<Registry>,
        watches: Arc<WatchHub>,
        system: Option<System>,
    ) -> Self {
        Supervisor {
            registry,
            _watches: watches,
            system,
        }
    }

    /// Whether it ends a lease thread of dsync's own when done.
    pub(crate) fn owns_thread(&self) -> bool {
        self.system.is_some()
    }
}

impl Actor for Supervisor {
    type Context = Context<Self>;
}

/// One lease actor of the registry, as [`ListLeases`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseEntry {
    /// The lease the actor campaigns for or holds.
    pub lease: LeaseKey,
    /// Election, lock or semaphore slot.
    pub kind: LeaseKind,
    /// Told to stop and still finishing (draining its work or writing its release); asking
    /// for the lease again starts a new actor, which waits for this one.
    pub stopping: bool,
}

/// Asks the [`Supervisor`] which lease actors it runs: every election and lock of the replica,
/// live or still stopping, ordered by lease. [`Dsync::leases`](crate::Dsync::leases) answers the same from any thread.
#[derive(Debug, Clone, Copy, Default, Message)]
#[rtype(result = "Vec<LeaseEntry>")]
pub struct ListLeases;

impl Handler<ListLeases> for Supervisor {
    type Result = MessageResult<ListLeases>;

    fn handle(&mut self, _: ListLeases, _: &mut Self::Context) -> Self::Result {
        MessageResult(self.registry.list())
    }
}

/// Stops every lease actor (each cancels its term, waits for guarded work and releases its
/// lease), then the supervisor itself. Answered when all are done, with the first error.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Shutdown {
    pub reply: oneshot::Sender<Result<()>>,
    /// The actors whose guarded work the caller runs inside: their stops are not waited for.
    pub inside: Vec<ActorId>,
}

impl Handler<Shutdown> for Supervisor {
    type Result = ();

    fn handle(&mut self, Shutdown { reply, inside }: Shutdown, ctx: &mut Self::Context) {
        let entries = self.registry.close();
        let observers = self.registry.take_observers();
        let companions = self.registry.companions.clone();
        tracing::info!(leases = entries.len(), "shutting down");
        let stops = async move {
            // Observers hold nothing: they stop at once.
            join_all(observers.iter().map(Observer::stop)).await;
            let results = join_all(entries.iter().map(|e| e.stop(inside.contains(&e.id())))).await;
            // The elections have stopped, so their candidates are withdrawing: one store call
            // each, bounded by the store's own timeout. Done before the reply, so that a
            // shutdown that returned left no LeaseCandidate behind.
            companions.close();
            companions.wait().await;
            let first_error = results.into_iter().find(Result::is_err).unwrap_or(Ok(()));
            let deferred: Vec<Entry> = entries
                .into_iter()
                .filter(|e| inside.contains(&e.id()))
                .collect();
            (first_error, deferred)
        };
        ctx.spawn(
            stops
                .into_actor(self)
                .map(move |(result, deferred), act, ctx| {
                    let _ = reply.send(result);
                    // Stops called from inside guarded work finish when that work returns:
                    // only then may the lease thread end.
                    let system = act.system.take();
                    let rest = async move {
                        join_all(deferred.iter().map(|e| e.stop(false))).await;
                    };
                    ctx.spawn(rest.into_actor(act).map(move |(), _, ctx| {
                        ctx.stop();
                        if let Some(system) = system {
                            system.stop();
                        }
                    }));
                }),
        );
    }
}
