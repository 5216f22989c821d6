//! `Dsync`: the entry point. One per replica (process), created once in `main`.

use std::fmt;
use std::sync::Arc;

use actix::prelude::*;
use tokio::sync::oneshot;

use crate::admin::{Admin, ForceReleased, HandoffRequested};
use crate::config::{Config, LeaseThread, validate_identity};
use crate::error::{Error, Result};
use crate::lease::actor::{LeaseParams, Shared, Stop};
use crate::resource::{LeaseKind, NameError, Resource};
use crate::store::{LeaseKey, LeaseStore, StoredLease};
use crate::supervisor::{Entry, LeaseEntry, Registry, Shutdown, Supervisor};
use crate::watch::WatchHub;
use crate::work;

pub(crate) struct Inner {
    pub(crate) config: Config,
    /// The lease actors of this replica, by lease (the supervisor's registry).
    pub(crate) registry: Arc<Registry>,
    /// What every lease actor of this replica shares (store, watches, registry, settings).
    pub(crate) shared: Arc<Shared>,
    pub(crate) supervisor: Addr<Supervisor>,
    /// Where the lease actors run (see [`LeaseThread`]).
    pub(crate) arbiter: ArbiterHandle,
    #[cfg(feature = "metrics")]
    pub(crate) metrics: std::sync::OnceLock<crate::metrics::Metrics>,
}

/// One replica's access to elections and locks on a [`LeaseStore`].
///
/// Create it once (in `main`, not in an `HttpServer::new` factory, which runs per worker) and
/// clone it freely. Its lease actors run on an actix arbiter (thread) of its own by default
/// ([`LeaseThread`]), so application code that blocks a thread cannot delay renewals.
/// Call [`shutdown`](Self::shutdown) before exiting so leases are released, not left to expire.
#[derive(Clone)]
pub struct Dsync {
    pub(crate) inner: Arc<Inner>,
}

impl fmt::Debug for Dsync {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dsync")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

/// The arbiter dsync runs its lease actors on, and the private actix System around it when
/// dsync started it (`LeaseThread::Dedicated`).
struct LeaseArbiter {
    handle: ArbiterHandle,
    owned: Option<System>,
}

impl LeaseArbiter {
    fn new(config: &Config) -> Result<Self> {
        validate_identity(&config.identity)?;
        config.validate()?;
        if System::try_current().is_none() {
            return Err(Error::NoActixSystem);
        }
        let current = Arbiter::try_current().ok_or(Error::NoActixSystem)?;
        Ok(match config.lease_thread {
            LeaseThread::Dedicated => {
                let (handle, system) = start_lease_thread()?;
                LeaseArbiter {
                    handle,
                    owned: Some(system),
                }
            }
            LeaseThread::Current => LeaseArbiter {
                handle: current,
                owned: None,
            },
        })
    }
}

/// Starts dsync's lease thread: an actix System of its own, so that the application's System
/// stopping (actix-web stops it on SIGTERM) does not take the lease actors down before
/// `Dsync::shutdown` has released their leases. It ends when the supervisor has shut down.
fn start_lease_thread() -> Result<(ArbiterHandle, System)> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    std::thread::Builder::new()
        .name("dsync-leases".into())
        .spawn(move || {
            let runner = System::new();
            let _ = tx.send((Arbiter::current(), System::current()));
            if let Err(error) = runner.run() {
                tracing::error!(%error, "dsync's lease thread failed");
            }
        })
        .map_err(|source| Error::LeaseThread { source })?;
    rx.recv().map_err(|_| Error::LeaseThread {
        source: std::io::Error::other("the lease thread exited while starting"),
    })
}

/// Lives on the arbiter that created the `Dsync`. When that arbiter's runtime ends (the
/// application's System is gone, a test is over), it shuts dsync down: every term is
/// cancelled and what can be released is, and dsync's own thread ends.
struct ShutdownWhenGone(Addr<Supervisor>);

impl Drop for ShutdownWhenGone {
    fn drop(&mut self) {
        let (reply, _) = oneshot::channel();
        self.0.do_send(Shutdown {
            reply,
            inside: Vec::new(),
        });
    }
}

impl Dsync {
    /// A replica named `identity` on `store`, with default namespace, scope and timing.
    /// Needs a running actix System (`#[actix_web::main]`, `#[actix::main]`, `#[actix::test]`).
    pub fn new(store: impl LeaseStore, identity: impl Into<String>) -> Result<Self> {
        Self::with_config(store, Config::default().with_identity(identity))
    }

    /// A replica on Kubernetes configured from the environment ([`Config::from_env`]): leases in
    /// `KUBE_NAMESPACE`, holder `KUBE_POD_NAME`, client from `KUBE_CONFIG_PATH`, else the
    /// default kubeconfig, else the in-cluster service account.
    #[cfg(feature = "kube")]
    pub async fn from_env() -> Result<Self> {
        Self::connect(Config::from_env()?).await
    }

    /// A replica on Kubernetes configured by `config` (see
    /// [`KubeStore::from_config`](crate::KubeStore::from_config)). With the default
    /// [`LeaseThread::Dedicated`], the Kubernetes client is created on dsync's own thread, so
    /// its connections are served there too.
    #[cfg(feature = "kube")]
    pub async fn connect(config: Config) -> Result<Self> {
        let client_config = crate::store::KubeStore::client_config(&config).await?;
        Self::connect_with(config, client_config).await
    }

    /// Like [`connect`](Self::connect), with a kube client configuration of your own (custom
    /// headers, proxies, TLS settings); `config.kubeconfig_path` is not read. The client is
    /// created on dsync's own lease thread (with [`LeaseThread::Dedicated`]).
    #[cfg(feature = "kube")]
    pub async fn connect_with(config: Config, client_config: kube::Config) -> Result<Self> {
        use crate::store::KubeStore;
        let arbiter = LeaseArbiter::new(&config)?;
        let path = config.kubeconfig_path.clone();
        let store = match &arbiter.owned {
            None => KubeStore::from_kube_config(client_config, path)?,
            Some(_) => {
                let (tx, rx) = oneshot::channel();
                arbiter.handle.spawn(async move {
                    let _ = tx.send(KubeStore::from_kube_config(client_config, path));
                });
                rx.await.map_err(|_| Error::Stopped {
                    what: "dsync's lease thread".into(),
                })??
            }
        };
        Ok(Self::build(Arc::new(store), config, arbiter))
    }

    /// A replica configured by `config` (see [`Config::from_env`]). A store shared with other
    /// code can be passed as an `Arc` (`Arc<S>` and `Arc<dyn LeaseStore>` are stores).
    pub fn with_config(store: impl LeaseStore, config: Config) -> Result<Self> {
        let arbiter = LeaseArbiter::new(&config)?;
        Ok(Self::build(Arc::new(store), config, arbiter))
    }

    fn build(store: Arc<dyn LeaseStore>, config: Config, arbiter: LeaseArbiter) -> Self {
        let registry = Arc::new(Registry::default());
        let watches = WatchHub::new(
            store.clone(),
            config.timing.retry_period(),
            config.timing.renew_deadline(),
            config.timing.lease_duration(),
        );
        let supervisor = Supervisor::new(registry.clone(), watches.clone(), arbiter.owned);
        let owned = supervisor.owns_thread();
        let supervisor = Supervisor::start_in_arbiter(&arbiter.handle, move |_| supervisor);
        if owned && let Some(current) = Arbiter::try_current() {
            let guard = ShutdownWhenGone(supervisor.clone());
            current.spawn(async move {
                let _guard = guard;
                std::future::pending::<()>().await
            });
        }
        let shared = Arc::new(Shared {
            identity: config.identity.as_str().into(),
            holder_pod: config.pod_name.as_deref().map(Arc::from),
            timing: config.timing,
            drain_timeout: config.drain_timeout,
            store,
            watches,
            directory: registry.clone(),
            floors: Default::default(),
        });
        Dsync {
            inner: Arc::new(Inner {
                config,
                registry,
                shared,
                supervisor,
                arbiter: arbiter.handle,
                #[cfg(feature = "metrics")]
                metrics: std::sync::OnceLock::new(),
            }),
        }
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

    /// Stops every election and lock of this replica: terms are cancelled, guarded work is
    /// awaited (up to the drain timeout each), leases are released; observers stop; then
    /// dsync's own lease thread ends. Later calls to `election`/`lock`/`observe` fail with
    /// [`Error::Stopped`]. Idempotent.
    ///
    /// Returns the first error of the stops (see [`Election::stop`](crate::Election::stop)). Called from inside the
    /// guarded work of one of them, it does not wait for that one (it could not finish before
    /// this call returns) and says so with [`Error::StopFromWork`]; it still takes effect.
    pub async fn shutdown(&self) -> Result<()> {
        let (reply, rx) = oneshot::channel();
        let shutdown = Shutdown {
            reply,
            inside: work::current(),
        };
        if self.inner.supervisor.send(shutdown).await.is_err() {
            return Ok(()); // already shut down
        }
        rx.await.unwrap_or(Ok(()))
    }

    /// Every Lease in the configured namespace as the store has it now, sorted by name: one
    /// snapshot ([`LeaseStore::list`]), whoever wrote them (dsync replicas of any scope,
    /// client-go peers, anybody). [`LeaseName::parse`](crate::resource::LeaseName::parse) tells which
    /// are dsync's and what they are. On Kubernetes it needs `list` on `leases`
    /// ([`Error::Forbidden`] names the verb otherwise).
    ///
    /// Like every operator action here ([`force_release`](Self::force_release),
    /// [`request_handoff`](Self::request_handoff)) it starts no lease actor, runs on dsync's
    /// lease thread, bounds each store call by the renew deadline ([`Error::Timeout`]), and
    /// fails with [`Error::Stopped`] after [`shutdown`](Self::shutdown).
    pub async fn stored_leases(&self) -> Result<Vec<StoredLease>> {
        let namespace = self.inner.config.namespace.clone();
        let admin = self.admin()?;
        self.on_lease_thread(async move { admin.list(&namespace).await })
            .await
    }

    /// Ends whatever term holds `lease`, as an operator, **without letting anyone in before
    /// the old term has surely ended** (rule `operator-release-grace`): writes the lease free
    /// (no holder, `leaseTransitions` kept, so the next holder's fencing token is higher) but
    /// declaring the holder's full lease duration, a compare-and-swap on the version just read.
    /// dsync candidates leave such a record alone for that long after they see it, as if it
    /// still named the holder: a holder cut off from the API server, which cannot learn of
    /// the release, has passed its renew deadline (and ended its term) by then. A holder that
    /// can reach the server learns of it from its watch or its next renewal (a conflict) and
    /// is deposed (superseded) at once. client-go peers do not wait: to them it is a free
    /// lease. `lease` may be in any namespace and need not be one of this replica's (or
    /// dsync's: a client-go Lease is released the same way).
    ///
    /// Use it for a holder that is stuck, not as a handoff
    /// ([`request_handoff`](Self::request_handoff) is the orderly way for an election). For a
    /// holder known to be dead (its pod is gone), [`force_release_now`](Self::force_release_now)
    /// frees the lease at once.
    ///
    /// * Nobody holds it: nothing is written; `previous_holder` is `None`.
    /// * A write that meets a concurrent one (the holder renewing) reads again and decides
    ///   again, [`ATTEMPTS`](crate::admin::ATTEMPTS) times; then [`Error::Store`] with a
    ///   [`StoreError::Conflict`](crate::StoreError::Conflict) source, saying so.
    /// * [`Error::NotFound`] if the lease does not exist; [`Error::Forbidden`] (naming the
    ///   verb, `get` or `update`) without the rights; [`Error::Timeout`] for a call that took
    ///   longer than the renew deadline; [`Error::Stopped`] after [`shutdown`](Self::shutdown).
    pub async fn force_release(&self, lease: &LeaseKey) -> Result<ForceReleased> {
        let key = lease.clone();
        let admin = self.admin()?;
        self.on_lease_thread(async move { admin.force_release(&key, false).await })
            .await
    }

    /// The highest fencing token this process has seen on `lease` (held by anyone, through
    /// any handle, across deletes, edits and restores), if it has seen the lease at all. Its
    /// next term on the lease gets a higher token, whatever the Lease then says (rule
    /// `token-never-back`). `None`: no lease actor of this process has seen it, so this
    /// process could not tell if the Lease were deleted and created again from 0 (the limit
    /// the server-side Lease guard in `deploy/fencing/` closes).
    pub fn fencing_floor(&self, lease: &LeaseKey) -> Option<i32> {
        self.inner.shared.floors.get(lease)
    }

    /// Like [`force_release`](Self::force_release), but the lease is free **at once** (the
    /// record a holder's own release writes, declaring one second): the next candidate takes
    /// it at once, while the old holder, if it is alive and cut off from the API server,
    /// still believes it holds the lease until its renew deadline. Only for a holder known
    /// to be dead (its pod and process are gone); otherwise two terms may be live together.
    pub async fn force_release_now(&self, lease: &LeaseKey) -> Result<ForceReleased> {
        let key = lease.clone();
        let admin = self.admin()?;
        self.on_lease_thread(async move { admin.force_release(&key, true).await })
            .await
    }

    /// Asks the leader of the election `name` (in the configured namespace and scope) to hand
    /// it to the replica whose identity is `to`: writes `to` into the lease's
    /// [`HANDOFF_REQUEST_ANNOTATION`](crate::record::HANDOFF_REQUEST_ANNOTATION) (what
    /// `kubectl annotate lease <lease> dsync.io/handoff-to=<to>` does), a compare-and-swap on
    /// the version just read, read again on a conflict as
    /// [`force_release`](Self::force_release) does. This replica need not take part in the
    /// election.
    ///
    /// Returns once the request is written; it does not wait for the handoff. A dsync leader
    /// sees the request (from its watch, or at its next renewal) and carries it out as
    /// [`Election::handoff_to`](crate::Election::handoff_to) does: its term ends, its work
    /// drains, then it releases the lease naming `to`, and `to`, if alive and campaigning,
    /// takes it with the next fencing token. Follow it with [`observe`](Self::observe). A
    /// client-go leader does not know the annotation and ignores it.
    ///
    /// * `to` already leads: nothing is written, `Ok`.
    /// * [`Error::BadResourceName`] (before any call) if `name` is not a valid election name,
    ///   as for [`election`](Self::election); [`Error::InvalidConfig`] if `to` is not a usable
    ///   identity.
    /// * [`Error::NotFound`] if the election's lease does not exist; [`Error::NoLeader`] if
    ///   nobody holds it; [`Error::InvalidState`] if the lease is coordinated (`spec.strategy`
    ///   set: the API server's election controller picks its holder).
    /// * Conflicts, [`Error::Forbidden`], [`Error::Timeout`] and [`Error::Stopped`] as for
    ///   [`force_release`](Self::force_release).
    pub async fn request_handoff(&self, name: &str, to: &str) -> Result<HandoffRequested> {
        validate_identity(to)?;
        let (_, key) = self.prepare(self.resource(name), LeaseKind::Election)?;
        let to = to.to_owned();
        let admin = self.admin()?;
        self.on_lease_thread(async move { admin.request_handoff(&key, &to).await })
            .await
    }

    /// The store logic of the operator actions, with the crate's call limit.
    fn admin(&self) -> Result<Admin> {
        if self.inner.registry.is_closed() {
            return Err(self.stopped());
        }
        Ok(Admin {
            store: self.inner.shared.store.clone(),
            call_timeout: self.inner.config.timing.renew_deadline(),
            lease_duration: self.inner.config.timing.lease_duration(),
        })
    }

    /// Runs `work` on the lease thread, where the store's client lives (a Kubernetes client
    /// belongs to the runtime that created it).
    async fn on_lease_thread<T: Send + 'static>(
        &self,
        work: impl Future<Output = Result<T>> + Send + 'static,
    ) -> Result<T> {
        let (tx, rx) = oneshot::channel();
        let spawned = self.inner.arbiter.spawn(async move {
            let _ = tx.send(work.await);
        });
        if !spawned {
            return Err(self.stopped());
        }
        rx.await.map_err(|_| self.stopped())?
    }

    /// The lease actors this replica runs now (its elections, locks and semaphore slots, live
    /// or still stopping), ordered by lease: the [`Supervisor`]'s registry. Empty once shut
    /// down. What the *store* holds, whoever wrote it, is [`stored_leases`](Self::stored_leases).
    pub fn leases(&self) -> Vec<LeaseEntry> {
        self.inner.registry.list()
    }

    pub(crate) fn prepare(
        &self,
        resource: Resource,
        kind: LeaseKind,
    ) -> Result<(Resource, LeaseKey)> {
        // Checked as the kind it is used as: the error quotes that kind's lease name, and a
        // lock name is not held to the (longer) election name's limit.
        let resource = self.prepare_with(resource, |r| {
            r.validate_for(kind).map_err(|e| bad_name(r, e))
        })?;
        let key = resource.lease_key(kind);
        Ok((resource, key))
    }

    /// The resource in the configured namespace (if it names none), checked by `check`
    /// before anything is started; [`Error::Stopped`] once shut down.
    pub(crate) fn prepare_with(
        &self,
        mut resource: Resource,
        check: impl FnOnce(&Resource) -> Result<()>,
    ) -> Result<Resource> {
        if resource.namespace.is_empty() {
            resource.namespace = self.inner.config.namespace.clone();
        }
        check(&resource)?;
        if self.inner.registry.is_closed() {
            return Err(self.stopped());
        }
        Ok(resource)
    }

    pub(crate) fn entry(
        &self,
        key: &LeaseKey,
        start: impl FnOnce(Option<Recipient<Stop>>) -> Entry,
    ) -> Result<Entry> {
        self.inner
            .registry
            .entry(key, start)
            .ok_or_else(|| self.stopped())
    }

    pub(crate) fn params(
        &self,
        key: &LeaseKey,
        predecessor: Option<Recipient<Stop>>,
    ) -> LeaseParams {
        #[cfg(feature = "metrics")]
        let metrics = self
            .inner
            .metrics
            .get()
            .map(|m| m.lease(key))
            .unwrap_or_default();
        #[cfg(not(feature = "metrics"))]
        let metrics = crate::metrics::LeaseMetrics;
        LeaseParams {
            key: key.clone(),
            shared: self.inner.shared.clone(),
            metrics,
            predecessor,
            handles: Default::default(),
        }
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
        self.inner.shared.watches.watched_namespaces()
    }

    pub(crate) fn stopped(&self) -> Error {
        Error::Stopped {
            what: format!("dsync {}", self.inner.config.identity),
        }
    }

    /// Two resources named the same Lease object (a scope or name containing `.lock.` or
    /// `.election.`): one object cannot be both.
    pub(crate) fn taken(&self, key: &LeaseKey, by: LeaseKind) -> Error {
        let article = if by == LeaseKind::Election { "an" } else { "a" };
        Error::InvalidState {
            lease: key.to_string(),
            reason: format!(
                "this Lease is already used by {article} {} of this replica",
                by.as_str()
            ),
        }
    }
}

/// A name that cannot be used, quoting the resource as given.
pub(crate) fn bad_name(resource: &Resource, source: NameError) -> Error {
    Error::BadResourceName {
        resource: resource.to_string(),
        source,
    }
}
