//! `WatchHub`: one store watch per namespace, fanned out to the lease actors.
//!
//! Followers and lock waiters learn of changes from watch events, not by polling. Without a hub,
//! every actor would hold its own watch: a thousand elections would cost the API server a
//! thousand watches. The hub, owned by a replica's [`Supervisor`](crate::Supervisor), opens one
//! watch per namespace on first use and routes each event to the actors of that lease.
//!
//! Failure handling stays with the actors: a store error is passed to every actor of the
//! namespace (each re-reads its lease), and when the store's stream ends, every actor's stream
//! ends too (each re-subscribes after a retry period, which opens a new watch).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use futures::StreamExt;
use futures::channel::mpsc;
use futures::stream::BoxStream;

use crate::store::{LeaseKey, LeaseStore, StoreResult, WatchEvent};

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
}

impl WatchHub {
    pub fn new(store: Arc<dyn LeaseStore>) -> Arc<Self> {
        Arc::new(WatchHub {
            store,
            namespaces: Mutex::default(),
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
        while let Some(item) = stream.next().await {
            let mut namespaces = self.lock();
            let Some(ns) = namespaces.get_mut(&namespace) else {
                return;
            };
            match &item {
                Ok(WatchEvent::Applied(lease)) => deliver(ns, &lease.name, &item),
                Ok(WatchEvent::Deleted { name }) => deliver(ns, name, &item),
                Err(error) => {
                    for routes in ns.routes.values_mut() {
                        routes.retain(|tx| tx.unbounded_send(Err(error.duplicate())).is_ok());
                    }
                    ns.routes.retain(|_, routes| !routes.is_empty());
                }
            }
            if ns.routes.is_empty() {
                // Nobody left to tell: close the watch. The next subscriber opens a new one.
                namespaces.remove(&namespace);
                return;
            }
        }
        // The store ended the watch: dropping the routes ends every subscriber's stream, and
        // each re-subscribes (opening a new watch) after its retry period.
        self.lock().remove(&namespace);
    }
}

fn deliver(ns: &mut Namespace, name: &str, item: &StoreResult<WatchEvent>) {
    let Some(routes) = ns.routes.get_mut(name) else {
        return;
    };
    let event = match item {
        Ok(event) => event,
        Err(_) => return,
    };
    routes.retain(|tx| tx.unbounded_send(Ok(event.clone())).is_ok());
    if routes.is_empty() {
        ns.routes.remove(name);
    }
}
