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

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::StreamExt;
use futures::channel::mpsc;
use futures::stream::BoxStream;

use crate::store::{LeaseKey, LeaseStore, StoreError, StoreResult, WatchEvent};

type Route = mpsc::UnboundedSender<StoreResult<WatchEvent>>;

#[derive(Default)]
struct Namespace {
    /// Subscribers by lease name.
    routes: HashMap<String, Vec<Route>>,
}

/// Shares one watch per namespace among all of a replica's lease actors.
pub(crate) struct WatchHub {
    store: Arc<dyn LeaseStore>,
    namespaces: Mutex<HashMap<String, Namespace>>,
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

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Namespace>> {
        // Every mutation is a single map operation: a poisoned lock is still consistent.
        self.namespaces.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Changes to one lease. Opens the namespace's watch if nobody watches it yet; the pump runs
    /// on the calling arbiter.
    pub fn watch(self: &Arc<Self>, key: &LeaseKey) -> BoxStream<'static, StoreResult<WatchEvent>> {
        let (tx, rx) = mpsc::unbounded();
        let start = {
            let mut namespaces = self.lock();
            let start = !namespaces.contains_key(&key.namespace);
            namespaces
                .entry(key.namespace.clone())
                .or_default()
                .routes
                .entry(key.name.clone())
                .or_default()
                .push(tx);
            start
        };
        if start {
            let stream = self.store.watch(&key.namespace);
            actix::spawn(Arc::clone(self).pump(key.namespace.clone(), stream));
        }
        rx.boxed()
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
                    match &event {
                        WatchEvent::Applied(lease) => deliver(ns, &lease.name, &event),
                        WatchEvent::Deleted { name } => deliver(ns, name, &event),
                    }
                    if ns.routes.is_empty() {
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
                let mut listed: HashMap<&str, _> =
                    leases.iter().map(|l| (l.name.as_str(), l)).collect();
                for (name, routes) in ns.routes.iter_mut() {
                    let event = match listed.remove(name.as_str()) {
                        Some(lease) => WatchEvent::Applied(lease.clone()),
                        None => WatchEvent::Deleted { name: name.clone() },
                    };
                    routes.retain(|tx| tx.unbounded_send(Ok(event.clone())).is_ok());
                }
            }
            failed => {
                let error = match failed {
                    Ok(Err(list_error)) => list_error,
                    _ => error,
                };
                tracing::debug!(%namespace, %error, "re-sync by list failed; every actor re-reads");
                for routes in ns.routes.values_mut() {
                    routes.retain(|tx| tx.unbounded_send(Err(error.duplicate())).is_ok());
                }
            }
        }
        ns.routes.retain(|_, routes| !routes.is_empty());
        if ns.routes.is_empty() {
            namespaces.remove(namespace);
            return false;
        }
        true
    }
}

fn deliver(ns: &mut Namespace, name: &str, event: &WatchEvent) {
    let Some(routes) = ns.routes.get_mut(name) else {
        return;
    };
    routes.retain(|tx| tx.unbounded_send(Ok(event.clone())).is_ok());
    if routes.is_empty() {
        ns.routes.remove(name);
    }
}
