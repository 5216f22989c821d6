//! `Dsync`: the entry point. One per replica (process), created once in `main`.

use std::fmt;
use std::sync::Arc;

use actix::prelude::*;
use tokio::sync::{oneshot, watch};

use crate::config::{Config, validate_identity};
use crate::election::{Election, ElectionActor, ElectionStatus};
use crate::error::{Error, Result};
use crate::lease::driver::LeaseState;
use crate::lock::{Lock, LockActor, LockStatus};
use crate::resource::{LeaseKind, NameError, Resource};
use crate::store::{LeaseKey, LeaseStore};
use crate::supervisor::{Registry, Shutdown, Supervisor};
use crate::watch::WatchHub;

struct Inner {
    config: Config,
    store: Arc<dyn LeaseStore>,
    watches: Arc<WatchHub>,
    registry: Arc<Registry>,
    supervisor: Addr<Supervisor>,
    arbiter: ArbiterHandle,
    #[cfg(feature = "metrics")]
    metrics: std::sync::OnceLock<crate::metrics::Metrics>,
}

/// One replica's access to elections and locks on a [`LeaseStore`].
///
/// Create it once (in `main`, not in an `HttpServer::new` factory, which runs per worker) and
/// clone it freely. All its actors run on the actix arbiter it was created on.
/// Call [`shutdown`](Self::shutdown) before exiting so leases are released, not left to expire.
#[derive(Clone)]
pub struct Dsync {
    inner: Arc<Inner>,
}

impl fmt::Debug for Dsync {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dsync")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl Dsync {
    /// A replica named `identity` on `store`, with default namespace, scope and timing.
    /// Needs a running actix System (`#[actix_web::main]`, `#[actix::main]`, `#[actix::test]`).
    pub fn new(store: impl LeaseStore, identity: impl Into<String>) -> Result<Self> {
        Self::with_config(store, Config::default().with_identity(identity))
    }

    /// A replica on Kubernetes configured from the environment ([`Config::from_env`]): leases in
    /// `KUBE_NAMESPACE`, holder `KUBE_POD_NAME`, client from `KUBE_CONFIG_PATH`, in-cluster
    /// config or the default kubeconfig.
    #[cfg(feature = "kube")]
    pub async fn from_env() -> Result<Self> {
        let config = Config::from_env()?;
        let store = crate::store::KubeStore::from_config(&config).await?;
        Self::with_config(store, config)
    }

    /// A replica configured by `config` (see [`Config::from_env`]).
    pub fn with_config(store: impl LeaseStore, config: Config) -> Result<Self> {
        Self::with_shared_store(Arc::new(store), config)
    }

    /// Like [`with_config`](Self::with_config) for a store already behind an `Arc`.
    pub fn with_shared_store(store: Arc<dyn LeaseStore>, config: Config) -> Result<Self> {
        validate_identity(&config.identity)?;
        config.validate()?;
        if System::try_current().is_none() {
            return Err(Error::NoActixSystem);
        }
        let registry = Arc::new(Registry::default());
        let watches = WatchHub::new(store.clone());
        let supervisor = Supervisor::new(registry.clone(), watches.clone()).start();
        Ok(Dsync {
            inner: Arc::new(Inner {
                config,
                store,
                watches,
                registry,
                supervisor,
                arbiter: Arbiter::current(),
                #[cfg(feature = "metrics")]
                metrics: std::sync::OnceLock::new(),
            }),
        })
    }

    /// This replica's holder identity.
    pub fn identity(&self) -> &str {
        &self.inner.config.identity
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// The supervisor actor.
    pub fn supervisor(&self) -> &Addr<Supervisor> {
        &self.inner.supervisor
    }

    /// The resource `name` in the configured namespace and scope.
    pub fn resource(&self, name: &str) -> Resource {
        Resource::new(
            &*self.inner.config.namespace,
            &*self.inner.config.scope,
            name,
        )
    }

    /// The election `name` in the configured namespace and scope, campaigning from now on.
    /// [`Error::BadResourceName`] (before anything is started) if the name is not valid; see
    /// [`sanitize_name`](crate::sanitize_name). Asking twice gives handles on one election.
    pub fn election(&self, name: &str) -> Result<Election> {
        self.check_name(name, "election")?;
        self.election_for(self.resource(name))
    }

    /// The election for an explicit resource (an empty namespace means the configured one).
    pub fn election_for(&self, resource: Resource) -> Result<Election> {
        let (resource, key) = self.prepare(resource, LeaseKind::Election)?;
        let inner = &self.inner;
        let start = |predecessor| {
            let (tx, rx) = watch::channel(ElectionStatus {
                lease: key.clone(),
                identity: inner.config.identity.clone(),
                leader: None,
                term: None,
                valid_until: None,
                renewed_at: None,
                lease_duration: inner.config.timing.lease_duration(),
                restarts: 0,
                last_error: None,
                invalid: None,
                stopped: false,
            });
            let st = self.lease_state(&key);
            let registry = inner.registry.clone();
            let addr = actix::Supervisor::start_in_arbiter(&inner.arbiter, move |_| {
                ElectionActor::new(st, registry, tx, predecessor)
            });
            Election::new(resource.clone(), addr, rx)
        };
        inner
            .registry
            .election(&key, start)
            .ok_or_else(|| self.stopped())
    }

    /// A new handle on the lock `name` in the configured namespace and scope.
    /// [`Error::BadResourceName`] if the name is not valid. Handles exclude each other, within
    /// this replica as across replicas.
    pub fn lock(&self, name: &str) -> Result<Lock> {
        self.check_name(name, "lock")?;
        self.lock_for(self.resource(name))
    }

    /// A lock handle for an explicit resource (an empty namespace means the configured one).
    pub fn lock_for(&self, resource: Resource) -> Result<Lock> {
        let (resource, key) = self.prepare(resource, LeaseKind::Lock)?;
        let inner = &self.inner;
        let start = || {
            let (tx, rx) = watch::channel(LockStatus {
                lease: key.clone(),
                identity: inner.config.identity.clone(),
                holder: None,
                term: None,
                waiters: 0,
                last_error: None,
                stopped: false,
            });
            let st = self.lease_state(&key);
            let registry = inner.registry.clone();
            let addr = actix::Supervisor::start_in_arbiter(&inner.arbiter, move |_| {
                LockActor::new(st, registry, tx)
            });
            (addr, rx)
        };
        let (addr, rx) = inner
            .registry
            .lock_actor(&key, start)
            .ok_or_else(|| self.stopped())?;
        Ok(Lock::new(resource, addr, rx))
    }

    /// Stops every election and lock of this replica: terms are cancelled, guarded work is
    /// awaited, leases are released. Later calls to `election`/`lock` fail with
    /// [`Error::Stopped`]. Idempotent.
    pub async fn shutdown(&self) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        if self.inner.supervisor.send(Shutdown(tx)).await.is_ok() {
            let _ = rx.await;
        }
        Ok(())
    }

    /// Number of running elections and locks.
    pub fn running(&self) -> (usize, usize) {
        self.inner.registry.len()
    }

    /// An empty name is a mistake here, not the seed's default (see [`NameError::EmptyName`]).
    fn check_name(&self, name: &str, kind: &'static str) -> Result<()> {
        if name.is_empty() {
            return Err(Error::BadResourceName {
                resource: self.resource(name).to_string(),
                source: NameError::EmptyName { kind },
            });
        }
        Ok(())
    }

    fn prepare(&self, mut resource: Resource, kind: LeaseKind) -> Result<(Resource, LeaseKey)> {
        if resource.namespace.is_empty() {
            resource.namespace = self.inner.config.namespace.clone();
        }
        resource.validate()?;
        if self.inner.registry.is_closed() {
            return Err(self.stopped());
        }
        let key = resource.lease_key(kind);
        Ok((resource, key))
    }

    fn lease_state(&self, key: &LeaseKey) -> LeaseState {
        #[allow(unused_mut)] // set only with the metrics feature
        let mut st = LeaseState::new(
            key.clone(),
            self.inner.config.identity.clone(),
            self.inner.config.timing,
            self.inner.store.clone(),
            self.inner.watches.clone(),
        );
        #[cfg(feature = "metrics")]
        if let Some(metrics) = self.inner.metrics.get() {
            st.metrics = metrics.lease(key);
        }
        st
    }

    /// Records this replica's [`metrics`](crate::metrics) from now on (elections and locks
    /// created later). [`Error::InvalidConfig`] if metrics were set already.
    #[cfg(feature = "metrics")]
    pub fn with_metrics(self, metrics: crate::metrics::Metrics) -> Result<Self> {
        self.inner
            .metrics
            .set(metrics)
            .map_err(|_| Error::InvalidConfig {
                key: "metrics",
                reason: "metrics were already set for this replica".into(),
            })?;
        Ok(self)
    }

    /// How many namespaces this replica watches (one watch each, shared by all its elections
    /// and locks there).
    pub fn watched_namespaces(&self) -> usize {
        self.inner.watches.watched_namespaces()
    }

    fn stopped(&self) -> Error {
        Error::Stopped {
            what: format!("dsync {}", self.inner.config.identity),
        }
    }
}
