//! One test body, two stores: `Env` hides whether a test runs on the in-process `MemoryStore`
//! in paused time (timing 15 s / 10 s / 2 s, exact instants) or on `KubeStore` against the real
//! kube-apiserver in real time (the same timing scaled by 1/5: 3 s / 2 s / 0.4 s, with slack for
//! API round trips). Durations in tests are written in default-timing seconds and scaled with
//! [`Env::d`].

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use dsync::store::{LeaseKey, LeaseRecord, LeaseStore, StoreError, StoredLease};
use dsync::{Config, Dsync, KubeStore, MemoryStore, Timing};

use super::FaultyStore;
use super::apiserver::{Harness, client, namespace};

/// Generates a memory and a kube `#[actix::test]` for each listed `async fn name(env: Env)`.
#[macro_export]
macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(
                #[actix::test]
                async fn $name() {
                    let env = $crate::support::backend::Env::memory().await;
                    let watchdog = env.watchdog();
                    $crate::support::within(watchdog, stringify!($name), super::$name(env)).await
                }
            )*
        }
        mod kube {
            $(
                #[actix::test]
                async fn $name() {
                    let env = $crate::support::backend::Env::kube().await;
                    let watchdog = env.watchdog();
                    $crate::support::within(watchdog, stringify!($name), super::$name(env)).await
                }
            )*
        }
    };
}

pub enum Backend {
    Memory(MemoryStore),
    Kube { admin: PathBuf, store: KubeStore },
}

pub struct Env {
    pub backend: Backend,
    pub namespace: String,
}

impl Env {
    /// `MemoryStore`, paused time.
    pub async fn memory() -> Env {
        tokio::time::pause();
        Env {
            backend: Backend::Memory(MemoryStore::new()),
            namespace: "default".into(),
        }
    }

    /// `KubeStore` on the real harness, a fresh namespace, real time.
    pub async fn kube() -> Env {
        // RUST_LOG=dsync=debug shows what the actors do.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let admin = Harness::get().ready().admin;
        let namespace = namespace().await;
        let store = kube_store(&admin).await;
        Env {
            backend: Backend::Kube { admin, store },
            namespace,
        }
    }

    pub fn is_memory(&self) -> bool {
        matches!(self.backend, Backend::Memory(_))
    }

    fn scale(&self) -> f64 {
        if self.is_memory() { 1.0 } else { 0.2 }
    }

    /// `secs` of default timing, scaled to this backend.
    pub fn d(&self, secs: f64) -> Duration {
        Duration::from_secs_f64(secs * self.scale())
    }

    /// Tolerance for instants: timer resolution in paused time, API round trips on kube.
    pub fn slack(&self) -> Duration {
        if self.is_memory() {
            Duration::from_millis(5)
        } else {
            Duration::from_millis(700)
        }
    }

    /// Asserts `lo - slack <= got <= hi + slack`, bounds in default-timing seconds.
    pub fn assert_between(&self, got: Duration, lo: f64, hi: f64, what: &str) {
        let lo = self.d(lo).saturating_sub(self.slack());
        let hi = self.d(hi) + self.slack();
        assert!(
            got >= lo && got <= hi,
            "{what}: {got:?} not in [{lo:?}, {hi:?}]"
        );
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

    pub fn timing(&self) -> Timing {
        if self.is_memory() {
            Timing::default()
        } else {
            Timing::new(
                Duration::from_secs(3),
                Duration::from_secs(2),
                Duration::from_millis(400),
            )
            .unwrap()
        }
    }

    pub fn config(&self, identity: &str) -> Config {
        Config::default()
            .with_namespace(&*self.namespace)
            .with_identity(identity)
            .with_timing(self.timing())
    }

    /// A store for one replica: the shared memory store, or a KubeStore with its own client.
    pub async fn store(&self) -> Arc<dyn LeaseStore> {
        match &self.backend {
            Backend::Memory(m) => Arc::new(m.clone()),
            Backend::Kube { admin, .. } => Arc::new(kube_store(admin).await),
        }
    }

    pub async fn replica(&self, identity: &str) -> Dsync {
        Dsync::with_shared_store(self.store().await, self.config(identity)).unwrap()
    }

    /// A replica whose store can be cut off or made to fail.
    pub async fn faulty_replica(&self, identity: &str) -> (Dsync, FaultyStore) {
        let faulty = FaultyStore::new(self.store().await);
        let dsync = Dsync::with_config(faulty.clone(), self.config(identity)).unwrap();
        (dsync, faulty)
    }

    /// The lease as stored now.
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

    /// An administrator's edit (kubectl edit): writes `record` over whatever is there.
    pub async fn put(&self, key: &LeaseKey, record: LeaseRecord) {
        match &self.backend {
            Backend::Memory(m) => {
                m.put(key, record).unwrap();
            }
            Backend::Kube { store, .. } => {
                let current = store.get(key).await.unwrap();
                store
                    .replace(key, record, &current.resource_version)
                    .await
                    .unwrap();
            }
        }
    }
}

async fn kube_store(kubeconfig: &std::path::Path) -> KubeStore {
    KubeStore::new(client(kubeconfig).await).with_call_timeout(Duration::from_secs(1))
}
