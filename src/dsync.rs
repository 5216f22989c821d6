//! `Dsync`: the entry point. One per replica (process), created once in `main`.

use std::fmt;
use std::sync::Arc;

use actix::prelude::*;
use tokio::sync::oneshot;

use crate::admin::{Admin, ForceReleased, HandoffRequested};
use crate::config::{Config, LeaseThread, validate_identity};
use crate::election::Election;
use crate::error::{Error, Result};
use crate::lease::actor::{LeaseParams, Shared, Stop};
use crate::lease::core::HandleClaim;
use crate::lock::{Lock, LockShared};
use crate::observe::{self, Observer};
use crate::resource::{LeaseKind, NameError, Resource};
use crate::semaphore::{MAX_PERMITS, Semaphore};
use crate::store::{LeaseKey, LeaseStore, StoredLease};
use crate::supervisor::{Entry, LeaseEntry, ListLeases, Registry, Shutdown, Supervisor};
use crate::watch::WatchHub;
use crate::work;

struct Inner {
    config: Config,
    /// The lease actors of this replica, by lease (the supervisor's registry).
    registry: Arc<Registry>,
    /// What every lease actor of this replica shares (store, watches, registry, settings).
    shared: Arc<Shared>,
    supervisor: Addr<Supervisor>,
    /// Where the lease actors run (see [`LeaseThread`]).
    arbiter: ArbiterHandle,
    #[cfg(feature = "metrics")]
    metrics: std::sync::OnceLock<crate::metrics::Metrics>,
}

/// One replica's access to elections and locks on a [`LeaseStore`].
///
/// Create it once (in `main`, not in an `HttpServer::new` factory, which runs per worker) and
/// clone it freely. Its lease actors run on an actix arbiter (thread) of its own by default
/// ([`LeaseThread`]), so application code that blocks a thread cannot delay renewals.
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

    /// A replica configured by `config` (see [`Config::from_env`]).
    pub fn with_config(store: impl LeaseStore, config: Config) -> Result<Self> {
        Self::with_shared_store(Arc::new(store), config)
    }

    /// Like [`with_config`](Self::with_config) for a store already behind an `Arc`.
    pub fn with_shared_store(store: Arc<dyn LeaseStore>, config: Config) -> Result<Self> {
        let arbiter = LeaseArbiter::new(&config)?;
        Ok(Self::build(store, config, arbiter))
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

    /// The election `name` in the configured namespace and scope, campaigning from now on.
    /// [`Error::BadResourceName`] (before anything is started) if the name is not valid; see
    /// [`sanitize_name`](crate::sanitize_name). Asking twice gives handles on one election.
    pub fn election(&self, name: &str) -> Result<Election> {
        self.election_for(self.resource(name))
    }

    /// The election for an explicit resource (an empty namespace means the configured one).
    pub fn election_for(&self, resource: Resource) -> Result<Election> {
        let (resource, key) = self.prepare(resource, LeaseKind::Election)?;
        let inner = &self.inner;
        let entry = self.entry(&key, |predecessor| {
            let params = self.params(&key, predecessor);
            crate::election::start_actor(&inner.arbiter, params, resource.clone(), &inner.config)
        })?;
        entry
            .handle::<Election>()
            .ok_or_else(|| self.taken(&key, entry.lease_kind()))
    }

    /// A new handle on the lock `name` in the configured namespace and scope.
    /// [`Error::BadResourceName`] if the name is not valid. Handles exclude each other, within
    /// this replica as across replicas.
    pub fn lock(&self, name: &str) -> Result<Lock> {
        self.lock_for(self.resource(name))
    }

    /// Registers this replica as a candidate of `election` in Kubernetes' coordinated leader
    /// election (KEP-4355): a `LeaseCandidate` named after this replica's identity, in the
    /// election's namespace, for its lease, with `candidacy`'s versions and strategy. It is
    /// renewed (at once when the API server's election controller pings it) and deleted when
    /// the election stops. The controller then picks the lease's holder among the
    /// candidates, and this election follows (see
    /// [Coordinated leader election](crate::election#coordinated-leader-election)).
    ///
    /// [`Error::InvalidConfig`] (before anything is written) if `candidacy` is not valid or
    /// the identity cannot name a `LeaseCandidate`. A candidate that cannot register (no
    /// `coordination.k8s.io/v1beta1` API, no RBAC, a store that keeps no candidates) logs a
    /// warning and says so in its [`status`](crate::election::Candidate::status).
    pub fn candidate(
        &self,
        election: &Election,
        candidacy: crate::election::Candidacy,
    ) -> Result<crate::election::Candidate> {
        crate::election::candidate::start(
            self.inner.shared.store.clone(),
            &self.inner.config,
            election,
            candidacy,
        )
    }

    /// A lock handle for an explicit resource (an empty namespace means the configured one).
    pub fn lock_for(&self, resource: Resource) -> Result<Lock> {
        let (resource, key) = self.prepare(resource, LeaseKind::Lock)?;
        let (shared, claim) = self.lock_actor(&key, LeaseKind::Lock)?;
        Ok(Lock::new(resource, shared, claim))
    }

    /// A handle on the semaphore `name` of `permits` permits, in the configured namespace and
    /// scope: at most `permits` holders at a time across every replica, one Lease per permit
    /// (`<scope>.semaphore.<name>.<i>`, `i` in `0..permits`); see [`semaphore`](crate::semaphore).
    ///
    /// [`Error::BadPermitCount`] if `permits` is 0 or above
    /// [`MAX_PERMITS`](crate::semaphore::MAX_PERMITS), [`Error::BadResourceName`] if a slot's
    /// Lease name would not be a valid object name (too long, bad characters), both before
    /// anything is started. Handles exclude each other within this replica as across replicas;
    /// replicas that ask for different `permits` share the slots they have in common (see
    /// [Changing the number of permits](crate::semaphore#changing-the-number-of-permits)).
    pub fn semaphore(&self, name: &str, permits: usize) -> Result<Semaphore> {
        self.semaphore_for(self.resource(name), permits)
    }

    /// A semaphore handle for an explicit resource (an empty namespace means the configured
    /// one); see [`semaphore`](Self::semaphore).
    pub fn semaphore_for(&self, resource: Resource, permits: usize) -> Result<Semaphore> {
        let resource = self.prepare_with(resource, |r| {
            if permits == 0 || permits > MAX_PERMITS {
                return Err(Error::BadPermitCount {
                    semaphore: r.lease_key(LeaseKind::Semaphore).to_string(),
                    permits,
                    max: MAX_PERMITS,
                });
            }
            r.validate_semaphore(permits).map_err(|e| bad_name(r, e))
        })?;
        let prefix = resource.lease_key(LeaseKind::Semaphore);
        let slots = (0..permits)
            .map(|slot| {
                let key = resource.semaphore_slot_key(slot);
                let (shared, claim) = self.lock_actor(&key, LeaseKind::Semaphore)?;
                Ok(Lock::new(resource.clone(), shared, claim))
            })
            .collect::<Result<Vec<_>>>()?;
        #[cfg(feature = "metrics")]
        let metrics = self
            .inner
            .metrics
            .get()
            .map(|m| m.semaphore(&prefix))
            .unwrap_or_default();
        #[cfg(not(feature = "metrics"))]
        let metrics = crate::metrics::SemaphoreMetrics;
        Ok(Semaphore::new(resource, prefix, slots, metrics))
    }

    /// The lock-face lease actor of `key` (a lock's, or a semaphore slot's), started if there
    /// is none (or it retired), with a share of its use for one handle: it does not retire
    /// while the claim lives (rule `idle-actors-retire`).
    fn lock_actor(&self, key: &LeaseKey, kind: LeaseKind) -> Result<(LockShared, HandleClaim)> {
        let inner = &self.inner;
        let (entry, claim) = inner
            .registry
            .entry_claimed(key, |predecessor| {
                let params = self.params(key, predecessor);
                crate::lock::start_actor(&inner.arbiter, params, kind, &inner.config)
            })
            .ok_or_else(|| self.stopped())?;
        let shared = entry
            .handle::<LockShared>()
            .filter(|shared| shared.kind == kind)
            .ok_or_else(|| self.taken(key, entry.lease_kind()))?;
        Ok((shared, claim))
    }

    /// An observe-only follower of the election `name` in the configured namespace and scope:
    /// its holder, fencing token and [`LeaderChanged`](crate::LeaderChanged) messages, without
    /// ever writing the lease (see [`observe`](crate::observe)). It rides this replica's shared
    /// watch and makes no request at steady state; on Kubernetes it needs only `get`, `list`
    /// and `watch` on `leases`. This replica may also campaign for the same election.
    /// [`Error::BadResourceName`] (before anything is started) if the name is not valid;
    /// [`Error::Stopped`] after [`shutdown`](Self::shutdown). Asking twice gives handles on
    /// one observer.
    pub fn observe(&self, name: &str) -> Result<Observer> {
        self.observe_for(self.resource(name), LeaseKind::Election)
    }

    /// Like [`observe`](Self::observe), for the lock `name`.
    pub fn observe_lock(&self, name: &str) -> Result<Observer> {
        self.observe_for(self.resource(name), LeaseKind::Lock)
    }

    /// An observer of the `kind` lease of an explicit resource (an empty namespace means the
    /// configured one).
    ///
    /// A semaphore is not one Lease but one per slot: [`LeaseKind::Semaphore`] is refused
    /// with [`Error::InvalidState`] (a slot's holder is in its Lease,
    /// [`Semaphore::holders`](crate::Semaphore::holders)).
    pub fn observe_for(&self, resource: Resource, kind: LeaseKind) -> Result<Observer> {
        if kind == LeaseKind::Semaphore {
            return Err(Error::InvalidState {
                lease: resource.lease_key(kind).to_string(),
                reason: "a semaphore has one Lease per slot; there is no one Lease to observe"
                    .into(),
            });
        }
        let (resource, key) = self.prepare(resource, kind)?;
        let inner = &self.inner;
        inner
            .registry
            .observer(&key, || {
                observe::start(
                    &inner.arbiter,
                    resource,
                    kind,
                    key.clone(),
                    inner.shared.clone(),
                )
            })
            .ok_or_else(|| self.stopped())
    }

    /// Stops every election and lock of this replica: terms are cancelled, guarded work is
    /// awaited (up to the drain timeout each), leases are released; observers stop; then
    /// dsync's own lease thread ends. Later calls to `election`/`lock`/`observe` fail with
    /// [`Error::Stopped`]. Idempotent.
    ///
    /// Returns the first error of the stops (see [`Election::stop`]). Called from inside the
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

    /// Hands the election `name` (in the configured namespace and scope) to the replica whose
    /// identity is `to`: [`Election::handoff_to`] on this replica's election. Starts nothing:
    /// [`Error::NotLeader`] if this replica does not run that election (or does not lead it).
    pub async fn handoff(&self, name: &str, to: &str) -> Result<()> {
        let (_, key) = self.prepare(self.resource(name), LeaseKind::Election)?;
        match self.inner.registry.get(&key) {
            Some(entry) if let Some(election) = entry.handle::<Election>() => {
                election.handoff_to(to).await
            }
            _ => Err(Error::NotLeader {
                lease: key.to_string(),
            }),
        }
    }

    /// Every Lease in the configured namespace as the store has it now, sorted by name: one
    /// snapshot ([`LeaseStore::list`]), whoever wrote them (dsync replicas of any scope,
    /// client-go peers, anybody). [`LeaseName::parse`](crate::LeaseName::parse) tells which
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

    /// Every election and lock of this replica, live or still stopping, ordered by lease: the
    /// [`Supervisor`]'s registry ([`ListLeases`]). Empty once shut down.
    pub async fn leases(&self) -> Vec<LeaseEntry> {
        self.inner
            .supervisor
            .send(ListLeases)
            .await
            .unwrap_or_default()
    }

    /// Number of running elections and locks (each semaphore slot counts as a lock).
    pub fn running(&self) -> (usize, usize) {
        self.inner.registry.len()
    }

    fn prepare(&self, resource: Resource, kind: LeaseKind) -> Result<(Resource, LeaseKey)> {
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
    fn prepare_with(
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

    fn entry(
        &self,
        key: &LeaseKey,
        start: impl FnOnce(Option<Recipient<Stop>>) -> Entry,
    ) -> Result<Entry> {
        self.inner
            .registry
            .entry(key, start)
            .ok_or_else(|| self.stopped())
    }

    fn params(&self, key: &LeaseKey, predecessor: Option<Recipient<Stop>>) -> LeaseParams {
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

    fn stopped(&self) -> Error {
        Error::Stopped {
            what: format!("dsync {}", self.inner.config.identity),
        }
    }

    /// Two resources named the same Lease object (a scope or name containing `.lock.` or
    /// `.election.`): one object cannot be both.
    fn taken(&self, key: &LeaseKey, by: LeaseKind) -> Error {
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
fn bad_name(resource: &Resource, source: NameError) -> Error {
    Error::BadResourceName {
        resource: resource.to_string(),
        source,
    }
}
