//! The `Supervisor` actor: one per [`Dsync`](crate::Dsync), owning the registry of election and
//! lock actors.
//!
//! Election and lock actors run under actix's supervision (`actix::Supervisor`), so an actor
//! that fails (for example after a store error that retrying in place cannot fix) is restarted
//! with the same address: handles keep working, the failed term is cancelled and reported as
//! [`DeposeReason::Restarted`](crate::DeposeReason::Restarted), and the new incarnation
//! campaigns again after a backoff. The registry maps each lease to its one actor, so every
//! handle for the same election or lock shares it. The supervisor also owns the replica's
//! watch hub: one store watch per namespace, fanned out to the actors of each lease, so a
//! thousand elections cost one watch. [`Supervisor`] shuts everything down.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use actix::prelude::*;
use futures::future::join_all;
use tokio::sync::{oneshot, watch};

use crate::election::{Election, ElectionActor};
use crate::lock::{LockActor, LockStatus};
use crate::store::LeaseKey;
use crate::watch::WatchHub;

pub(crate) type LockEntry = (Addr<LockActor>, watch::Receiver<LockStatus>);

#[derive(Default)]
struct Inner {
    elections: HashMap<LeaseKey, Election>,
    /// Elections told to stop that are still releasing: no longer handed out (asking for the
    /// election again starts a new one), but still waited for by a shutdown.
    retiring: Vec<Election>,
    locks: HashMap<LeaseKey, LockEntry>,
    closed: bool,
}

/// Election and lock actors by lease. Shared by the `Dsync` handle (which registers) and the
/// actors (which deregister when stopped).
#[derive(Default)]
pub(crate) struct Registry {
    inner: Mutex<Inner>,
}

impl Registry {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every mutation is a single map operation: a poisoned lock is still consistent.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// The election for `key`, started by `start` if there is none. `start` is given the
    /// election for the same lease that is still stopping, if any, to wait for. `None` once
    /// closed.
    pub fn election(
        &self,
        key: &LeaseKey,
        start: impl FnOnce(Option<Election>) -> Election,
    ) -> Option<Election> {
        let mut inner = self.lock();
        if inner.closed {
            return None;
        }
        if let Some(election) = inner.elections.get(key) {
            return Some(election.clone());
        }
        let predecessor = inner
            .retiring
            .iter()
            .rev()
            .find(|e| e.lease() == *key)
            .cloned();
        let election = start(predecessor);
        inner.elections.insert(key.clone(), election.clone());
        Some(election)
    }

    /// The lock actor for `key`, started by `start` if there is none. `None` once closed.
    pub fn lock_actor(
        &self,
        key: &LeaseKey,
        start: impl FnOnce() -> LockEntry,
    ) -> Option<LockEntry> {
        let mut inner = self.lock();
        if inner.closed {
            return None;
        }
        Some(inner.locks.entry(key.clone()).or_insert_with(start).clone())
    }

    /// A stop has begun: later requests for `key` start a new election rather than get this
    /// one, which is on its way out.
    pub fn retire_election(&self, key: &LeaseKey, addr: &Addr<ElectionActor>) {
        let mut inner = self.lock();
        if inner.elections.get(key).is_some_and(|e| e.addr() == addr)
            && let Some(election) = inner.elections.remove(key)
        {
            inner.retiring.push(election);
        }
    }

    /// The election is stopped: forget it.
    pub fn remove_election(&self, key: &LeaseKey, addr: &Addr<ElectionActor>) {
        let mut inner = self.lock();
        if inner.elections.get(key).is_some_and(|e| e.addr() == addr) {
            inner.elections.remove(key);
        }
        inner.retiring.retain(|e| e.addr() != addr);
    }

    pub fn remove_lock(&self, key: &LeaseKey, addr: &Addr<LockActor>) {
        let mut inner = self.lock();
        if inner.locks.get(key).is_some_and(|(a, _)| a == addr) {
            inner.locks.remove(key);
        }
    }

    /// Closes the registry and returns everything in it.
    fn close(&self) -> (Vec<Election>, Vec<Addr<LockActor>>) {
        let mut inner = self.lock();
        inner.closed = true;
        (
            inner
                .elections
                .values()
                .chain(&inner.retiring)
                .cloned()
                .collect(),
            inner.locks.values().map(|(addr, _)| addr.clone()).collect(),
        )
    }

    /// Number of live elections and locks.
    pub fn len(&self) -> (usize, usize) {
        let inner = self.lock();
        (inner.elections.len(), inner.locks.len())
    }
}

/// Supervises one `Dsync`'s election and lock actors (see the module docs).
pub struct Supervisor {
    registry: Arc<Registry>,
    /// The replica's shared watches, one per namespace, fanned out to the actors.
    _watches: Arc<WatchHub>,
}

impl Supervisor {
    pub(crate) fn new(registry: Arc<Registry>, watches: Arc<WatchHub>) -> Self {
        Supervisor {
            registry,
            _watches: watches,
        }
    }
}

impl Actor for Supervisor {
    type Context = Context<Self>;
}

/// Stops every election and lock (each cancels its term, waits for guarded work and releases
/// its lease), then the supervisor itself. Answered when all are done.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Shutdown(pub oneshot::Sender<()>);

impl Handler<Shutdown> for Supervisor {
    type Result = ();

    fn handle(&mut self, Shutdown(reply): Shutdown, ctx: &mut Self::Context) {
        let (elections, locks) = self.registry.close();
        tracing::info!(
            elections = elections.len(),
            locks = locks.len(),
            "shutting down"
        );
        let stops = async move {
            let elections = join_all(elections.iter().map(|e| e.stop()));
            let locks = join_all(locks.into_iter().map(|addr| async move {
                let (tx, rx) = oneshot::channel();
                if addr.send(crate::lock::LockCommand::Stop(tx)).await.is_ok() {
                    let _ = rx.await;
                }
            }));
            futures::join!(elections, locks);
        };
        ctx.spawn(stops.into_actor(self).map(move |_, _, ctx| {
            let _ = reply.send(());
            ctx.stop();
        }));
    }
}
