//! One test body, two stores. `Env` hides whether a test runs on
//!
//! * the in-process `MemoryStore` in paused tokio time with client-go's default timing
//!   (15 s / 10 s / 2 s), where instants are exact: `slack()` is zero; or on
//! * `KubeStore` against the real kube-apiserver (tests/apiserver) in real time with the short
//!   timing 2 s / 1.5 s / 0.5 s, one fresh namespace per test and one client per replica, where
//!   `slack()` allows for API round trips and scheduling.
//!
//! Test bodies express every duration in units of the timing (`lease()`, `renew()`, `retry()`,
//! `leases(n)`) and every bound through `assert_between` / `assert_timer`, so the same bound is
//! exact on memory and tolerant on kube.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use dsync::config::LeaseThread;
use dsync::store::{LeaseKey, LeaseRecord, LeaseStore, StoreError, StoredLease};
use dsync::{Config, Dsync, KubeStore, MemoryStore, Timing};

use super::apiserver::{Harness, client, namespace_on};
use dsync::testing::FaultyStore;

/// Generates a memory and a kube `#[actix::test]` for each listed `async fn name(env: Env)`,
/// in modules `memory` and `kube`.
#[macro_export]
macro_rules! on_both_stores {
    // The kube variant on the default harness.
    ($($name:ident),* $(,)?) => {
        $crate::on_both_stores!(
            harness = $crate::support::apiserver::Harness::get();
            $($name),*
        );
    };
    // The kube variant on a harness of the caller's choosing (e.g. one with a feature gate on).
    (harness = $harness:expr; $($name:ident),* $(,)?) => {
        mod memory {
            $(
                #[actix::test]
                async fn $name() {
                    let _wall = ::dsync::testing::WallWatchdog::start(
                        concat!("memory::", stringify!($name)),
                        ::std::time::Duration::from_secs(300),
                    );
                    let env = $crate::support::backend::Env::memory().await;
                    let watchdog = env.watchdog();
                    ::dsync::testing::within(watchdog, stringify!($name), super::$name(env)).await
                }
            )*
        }
        mod kube {
            $(
                #[actix::test]
                async fn $name() {
                    let env = $crate::support::backend::Env::kube_on($harness).await;
                    let watchdog = env.watchdog();
                    ::dsync::testing::within(watchdog, stringify!($name), super::$name(env)).await
                }
            )*
        }
    };
}

/// The timing of the kube variant (and of tests/kube.rs): lease 2 s, renew deadline 1.5 s,
/// retry 0.5 s.
/// A renewal refused for good with 403 (an RBAC role revoked), as the store reports it.
pub fn refused_403() -> StoreError {
    StoreError::Forbidden {
        verb: "update".into(),
        resource: "leases.coordination.k8s.io".into(),
        message: "injected: the role was revoked".into(),
    }
}

/// A renewal refused for good with 422 (rejected as invalid), as the store reports it.
pub fn refused_422() -> StoreError {
    StoreError::Invalid {
        lease: "x".into(),
        message: "injected: rejected as invalid".into(),
    }
}

pub fn kube_timing() -> Timing {
    Timing::new(
        Duration::from_secs(2),
        Duration::from_millis(1500),
        Duration::from_millis(500),
    )
    .unwrap()
}

/// A replica on `store` in namespace `ns` with the kube variant's timing ([`kube_timing`]).
pub fn kube_replica(store: impl LeaseStore, ns: &str, identity: &str) -> Dsync {
    Dsync::with_config(
        store,
        Config::default()
            .with_namespace(ns)
            .with_identity(identity)
            .with_timing(kube_timing()),
    )
    .unwrap()
}

/// Per-call timeout of the kube variant's stores (below the renew deadline).
pub const KUBE_CALL_TIMEOUT: Duration = Duration::from_secs(1);

/// A `KubeStore` with its own client for the harness user `kubeconfig`.
pub async fn kube_store(kubeconfig: &std::path::Path) -> KubeStore {
    KubeStore::new(client(kubeconfig).await).with_call_timeout(KUBE_CALL_TIMEOUT)
}

pub enum Backend {
    /// One store shared by every replica.
    Memory(MemoryStore),
    /// The admin kubeconfig (each replica gets its own client from it) and the test's own
    /// store for reading and editing leases.
    Kube { admin: PathBuf, store: KubeStore },
}

pub struct Env {
    pub backend: Backend,
    pub namespace: String,
}

impl Env {
    /// `MemoryStore`, paused time.
    pub async fn memory() -> Env {
        // RUST_LOG=dsync=debug shows what the actors do.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        tokio::time::pause();
        Env {
            backend: Backend::Memory(MemoryStore::new()),
            namespace: "default".into(),
        }
    }

    /// `KubeStore` on the real harness, a fresh namespace, real time.
    pub async fn kube() -> Env {
        Env::kube_on(Harness::get()).await
    }

    /// `KubeStore` on a harness of the test's choosing (e.g. one started with extra flags), a
    /// fresh namespace, real time.
    pub async fn kube_on(harness: &Harness) -> Env {
        // RUST_LOG=dsync=debug shows what the actors do.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let ready = harness.ready();
        let admin = ready.admin.clone();
        let namespace = namespace_on(&ready).await;
        let store = kube_store(&admin).await;
        Env {
            backend: Backend::Kube { admin, store },
            namespace,
        }
    }

    /// Whether time is paused and instants are exact.
    pub fn is_memory(&self) -> bool {
        matches!(self.backend, Backend::Memory(_))
    }

    pub fn timing(&self) -> Timing {
        if self.is_memory() {
            Timing::default()
        } else {
            kube_timing()
        }
    }

    /// How long others wait before taking over a silent holder's lease (15 s / 2 s).
    pub fn lease(&self) -> Duration {
        self.timing().lease_duration()
    }

    /// How long a holder keeps trying to renew before it steps down (10 s / 1.5 s).
    pub fn renew(&self) -> Duration {
        self.timing().renew_deadline()
    }

    /// How often a holder renews (2 s / 0.5 s).
    pub fn retry(&self) -> Duration {
        self.timing().retry_period()
    }

    /// `n` lease durations: the unit of "a long time" (60 s = 4 leases on memory, 8 s on kube).
    pub fn leases(&self, n: u32) -> Duration {
        self.lease() * n
    }

    /// Tolerance for instants: none in paused time; on kube, API round trips (each call is a
    /// few ms, a watch event a few more) and real timers on 2 shared cores.
    pub fn slack(&self) -> Duration {
        if self.is_memory() {
            Duration::ZERO
        } else {
            Duration::from_millis(600)
        }
    }

    /// Extra allowance for an instant that a timer reaches: paused-time timers fire on whole
    /// milliseconds, rounded up (the seed-era tests allowed 2 to 5 ms; 1 ms is enough).
    /// Covered by `slack()` on kube.
    pub fn tick(&self) -> Duration {
        if self.is_memory() {
            Duration::from_millis(1)
        } else {
            Duration::ZERO
        }
    }

    /// Asserts `lo - slack <= got <= hi + slack` (exactly `lo <= got <= hi` on memory).
    pub fn assert_between(&self, got: Duration, lo: Duration, hi: Duration, what: &str) {
        self.check(got, lo, hi + self.slack(), what);
    }

    /// Like `assert_between` for an instant that a timer reaches: `hi` gets `tick()` more.
    pub fn assert_timer(&self, got: Duration, lo: Duration, hi: Duration, what: &str) {
        self.check(got, lo, hi + self.tick() + self.slack(), what);
    }

    fn check(&self, got: Duration, lo: Duration, hi: Duration, what: &str) {
        let lo = lo.saturating_sub(self.slack());
        assert!(
            got >= lo && got <= hi,
            "{what}: {got:?} not in [{lo:?}, {hi:?}]"
        );
    }

    /// How many rounds a soak test runs: `n` in paused time, where waiting costs nothing; at
    /// most 3 in real time, so the kube variant takes seconds, not minutes. Each round is the
    /// same length (in lease durations) on both.
    pub fn rounds(&self, n: usize) -> usize {
        if self.is_memory() { n } else { n.min(3) }
    }

    /// Limit for a whole test: a hang fails the test, naming it.
    pub fn watchdog(&self) -> Duration {
        if self.is_memory() {
            Duration::from_secs(3600)
        } else {
            Duration::from_secs(180)
        }
    }

    /// Limit for waiting on anything.
    pub fn limit(&self) -> Duration {
        if self.is_memory() {
            Duration::from_secs(600)
        } else {
            Duration::from_secs(60)
        }
    }

    /// Waits (up to [`limit`](Self::limit)) until `election`'s replica has seen `leader`
    /// hold the lease.
    pub async fn sees_leader(&self, election: &dsync::Election, leader: &str) {
        let mut status = election.watch_status();
        dsync::testing::within(
            self.limit(),
            "the follower sees the leader",
            status.wait_for(|s| s.holder.as_deref() == Some(leader)),
        )
        .await
        .unwrap();
    }

    /// A replica's configuration.
    pub fn config(&self, identity: &str) -> Config {
        Config::default()
            .with_namespace(&*self.namespace)
            .with_identity(identity)
            .with_timing(self.timing())
            .with_lease_thread(self.lease_thread())
    }

    /// Where replicas run their lease actors: on the test's own arbiter on memory (paused time
    /// belongs to one runtime), on dsync's own thread on kube, as in production.
    pub fn lease_thread(&self) -> LeaseThread {
        if self.is_memory() {
            LeaseThread::Current
        } else {
            LeaseThread::Dedicated
        }
    }

    /// A store for one replica: the shared memory store, or a KubeStore with its own client.
    pub async fn store(&self) -> Arc<dyn LeaseStore> {
        match &self.backend {
            Backend::Memory(m) => Arc::new(m.clone()),
            Backend::Kube { admin, .. } => Arc::new(kube_store(admin).await),
        }
    }

    /// Like [`store`](Self::store), its calls timing out after `timeout` instead of
    /// [`KUBE_CALL_TIMEOUT`] on kube (for a slower timing, whose renew deadline allows longer
    /// calls; memory calls never wait).
    pub async fn store_with_call_timeout(&self, timeout: Duration) -> Arc<dyn LeaseStore> {
        match &self.backend {
            Backend::Memory(m) => Arc::new(m.clone()),
            Backend::Kube { admin, .. } => {
                Arc::new(kube_store(admin).await.with_call_timeout(timeout))
            }
        }
    }

    pub async fn replica(&self, identity: &str) -> Dsync {
        Dsync::with_config(self.store().await, self.config(identity)).unwrap()
    }

    /// A replica whose store can be cut off (crash, partition) or made to fail chosen calls,
    /// and which counts its calls.
    pub async fn faulty_replica(&self, identity: &str) -> (Dsync, FaultyStore) {
        self.faulty_replica_with(identity, |c| c).await
    }

    /// Like [`faulty_replica`](Self::faulty_replica), its configuration adjusted by `adjust`
    /// (a drain timeout, a lease thread).
    pub async fn faulty_replica_with(
        &self,
        identity: &str,
        adjust: impl FnOnce(Config) -> Config,
    ) -> (Dsync, FaultyStore) {
        self.faulty_replica_on(self.store().await, identity, adjust)
    }

    /// Like [`faulty_replica_with`](Self::faulty_replica_with), on `store`.
    pub fn faulty_replica_on(
        &self,
        store: Arc<dyn LeaseStore>,
        identity: &str,
        adjust: impl FnOnce(Config) -> Config,
    ) -> (Dsync, FaultyStore) {
        let faulty = FaultyStore::new(store);
        let dsync = Dsync::with_config(faulty.clone(), adjust(self.config(identity))).unwrap();
        (dsync, faulty)
    }

    /// The lease as stored now (`MemoryStore::peek`, or a GET on kube).
    pub async fn peek(&self, key: &LeaseKey) -> Option<StoredLease> {
        match &self.backend {
            Backend::Memory(m) => m.peek(key),
            Backend::Kube { store, .. } => match store.get(key).await {
                Ok(lease) => Some(lease),
                Err(StoreError::NotFound { .. }) => None,
                Err(e) => panic!("reading {key}: {e}"),
            },
        }
    }

    /// The holder recorded in the lease now.
    pub async fn holder(&self, key: &LeaseKey) -> Option<String> {
        self.peek(key)
            .await
            .and_then(|l| l.record.holder().map(str::to_owned))
    }

    /// A controller's read-modify-write: `edit` applied to the lease as it is now, written on
    /// its version, again on a conflict (the holder may renew in between). Returns what was
    /// stored (a server may drop fields).
    pub async fn edit(&self, key: &LeaseKey, edit: impl Fn(&mut LeaseRecord)) -> StoredLease {
        let store = self.store().await;
        loop {
            let current = store.get(key).await.unwrap();
            let mut record = current.record.clone();
            edit(&mut record);
            match store.replace(key, record, &current.resource_version).await {
                Ok(stored) => return stored,
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => panic!("editing {key}: {e}"),
            }
        }
    }

    /// An administrator's delete (`kubectl delete lease`): `MemoryStore::delete`, or a real
    /// DELETE on the API server.
    pub async fn delete(&self, key: &LeaseKey) {
        match &self.backend {
            Backend::Memory(m) => m.delete(key).unwrap(),
            Backend::Kube { admin, .. } => {
                use k8s_openapi::api::coordination::v1::Lease;
                let api: kube::Api<Lease> =
                    kube::Api::namespaced(super::apiserver::client(admin).await, &key.namespace);
                api.delete(&key.name, &Default::default())
                    .await
                    .unwrap_or_else(|e| panic!("deleting {key}: {e}"));
            }
        }
    }

    /// An administrator's edit (kubectl edit): writes `record` over whatever is there.
    /// `MemoryStore::put`; on kube a PUT on the current resourceVersion, again on a 409 (the
    /// holder may renew between our read and our write).
    pub async fn put(&self, key: &LeaseKey, record: LeaseRecord) {
        match &self.backend {
            Backend::Memory(m) => {
                m.put(key, record).unwrap();
            }
            Backend::Kube { store, .. } => loop {
                let current = store.get(key).await.unwrap();
                match store
                    .replace(key, record.clone(), &current.resource_version)
                    .await
                {
                    Ok(_) => return,
                    Err(StoreError::Conflict { .. }) => continue,
                    Err(e) => panic!("editing {key}: {e}"),
                }
            },
        }
    }
}
