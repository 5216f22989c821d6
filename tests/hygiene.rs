//! Nothing kept per name forever (rule `idle-actors-retire`), on both stores: after distinct
//! locks, semaphores and elections are used and let go, the replica is back to its baseline:
//! no lease actor in the supervisor's registry, no metric series of a lease, no watched
//! namespace, and (on Kubernetes) no Lease in `KubeStore`'s cache. Tokens still never go back
//! across a retired actor and a deleted Lease (rule `token-never-back`).
#![cfg(all(feature = "metrics", feature = "testing", feature = "kube"))]

mod support;

use std::sync::Arc;

use dsync::Dsync;
use dsync::metrics::Metrics;
use dsync::resource::LeaseKind;
use dsync::store::LeaseStore;
use prometheus_client::encoding::text::encode;
use prometheus_client::registry::Registry;
use support::backend::{Backend, Env, kube_store};

/// A replica with metrics, and its KubeStore on kube (to read its cache).
async fn replica(env: &Env) -> (Dsync, Registry, Option<Arc<dsync::KubeStore>>) {
    let (store, kube): (Arc<dyn LeaseStore>, _) = match &env.backend {
        Backend::Memory(m) => (Arc::new(m.clone()), None),
        Backend::Kube { admin, .. } => {
            let store = Arc::new(kube_store(admin).await);
            (store.clone(), Some(store))
        }
    };
    let mut registry = Registry::default();
    let metrics = Metrics::register(&mut registry);
    let d = Dsync::with_config(store, env.config("pod-a"))
        .unwrap()
        .with_metrics(metrics)
        .unwrap();
    (d, registry, kube)
}

/// What the replica keeps per name.
#[derive(Debug, PartialEq, Eq)]
struct Kept {
    running: (usize, usize),
    leases: usize,
    /// Metric samples labelled with a lease or a semaphore.
    series: usize,
    watched_namespaces: usize,
    cached_leases: usize,
}

async fn kept(d: &Dsync, registry: &Registry, kube: &Option<Arc<dsync::KubeStore>>) -> Kept {
    let mut text = String::new();
    encode(&mut text, registry).unwrap();
    let series = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.contains("lease=\"") || l.contains("semaphore=\"") || l.contains("name=\""))
        .count();
    Kept {
        running: support::running(d),
        leases: d.leases().len(),
        series,
        watched_namespaces: d.watched_namespaces(),
        cached_leases: kube.as_ref().map_or(0, |k| k.cached_leases()),
    }
}

const NAMES: usize = 6;

on_both_stores!(
    locks_let_go_leave_nothing_behind,
    semaphores_let_go_leave_nothing_behind,
    stopped_elections_leave_nothing_behind,
    idle_actors_retire_and_tokens_never_go_back,
);

async fn locks_let_go_leave_nothing_behind(env: Env) {
    let (d, registry, kube) = replica(&env).await;
    let baseline = kept(&d, &registry, &kube).await;
    assert_eq!(baseline.running, (0, 0));
    for i in 0..NAMES {
        let lock = d.lock(&format!("job-{i}")).unwrap();
        let term = lock.lock().await.unwrap();
        assert!(term.is_active());
        let during = kept(&d, &registry, &kube).await;
        assert_eq!(
            during.running,
            (0, 1),
            "one lock actor while the handle lives"
        );
        assert!(
            during.series > baseline.series,
            "its series exist meanwhile"
        );
        assert_eq!(during.watched_namespaces, 1);
        if kube.is_some() {
            assert_eq!(during.cached_leases, 1);
        }
        lock.unlock().await.unwrap();
        let mut status = lock.watch_status();
        drop(lock);
        // The actor says it has stopped once it has freed everything (a signal, not a wait).
        status.wait_for(|s| s.stopped).await.unwrap();
        assert_eq!(kept(&d, &registry, &kube).await, baseline, "after lock {i}");
    }
    // A handle dropped while it holds the lock: the lease is released, then the actor retires.
    let lock = d.lock("held").unwrap();
    lock.lock().await.unwrap();
    let mut status = lock.watch_status();
    drop(lock);
    status.wait_for(|s| s.stopped).await.unwrap();
    assert_eq!(kept(&d, &registry, &kube).await, baseline);
    // A handle kept elsewhere keeps the actor: only the last one lets it go.
    let a = d.lock("shared").unwrap();
    let b = d.lock("shared").unwrap();
    a.lock().await.unwrap();
    a.unlock().await.unwrap();
    drop(a);
    b.try_lock().await.unwrap();
    b.unlock().await.unwrap();
    assert_eq!(support::running(&d), (0, 1));
    let mut status = b.watch_status();
    drop(b);
    status.wait_for(|s| s.stopped).await.unwrap();
    assert_eq!(kept(&d, &registry, &kube).await, baseline);
    d.shutdown().await.unwrap();
}

async fn semaphores_let_go_leave_nothing_behind(env: Env) {
    let (d, registry, kube) = replica(&env).await;
    let baseline = kept(&d, &registry, &kube).await;
    for i in 0..NAMES / 2 {
        let pool = d.semaphore(&format!("pool-{i}"), 2).unwrap();
        let permit = pool.acquire().await.unwrap();
        assert_eq!(support::running(&d), (0, 2));
        permit.release().await.unwrap();
        let mut slots: Vec<_> = (0..2).map(|s| pool.watch_slot(s).unwrap()).collect();
        drop(pool);
        for slot in &mut slots {
            slot.wait_for(|s| s.stopped).await.unwrap();
        }
        assert_eq!(
            kept(&d, &registry, &kube).await,
            baseline,
            "after semaphore {i}"
        );
    }
    d.shutdown().await.unwrap();
}

async fn stopped_elections_leave_nothing_behind(env: Env) {
    let (d, registry, kube) = replica(&env).await;
    let baseline = kept(&d, &registry, &kube).await;
    for i in 0..NAMES {
        let election = d.election(&format!("leader-{i}")).unwrap();
        election.elected().await.unwrap();
        assert_eq!(support::running(&d), (1, 0));
        election.stop().await.unwrap();
        assert_eq!(
            kept(&d, &registry, &kube).await,
            baseline,
            "after election {i}"
        );
    }
    d.shutdown().await.unwrap();
}

async fn idle_actors_retire_and_tokens_never_go_back(env: Env) {
    let (d, _registry, _kube) = replica(&env).await;
    let lock = d.lock("x").unwrap();
    let key = lock.lease();
    let mut last = 0;
    for _ in 0..3 {
        last = lock.lock().await.unwrap().fencing_token();
        lock.unlock().await.unwrap();
    }
    let mut status = lock.watch_status();
    drop(lock);
    status.wait_for(|s| s.stopped).await.unwrap();
    assert_eq!(support::running(&d), (0, 0), "the actor retired");
    // The Lease is deleted (an operator, a restore): created again from 0 by the store, but
    // this process still knows the floor of "x".
    env.delete(&key).await;
    assert_eq!(d.fencing_floor(&key), Some(last));
    let lock = d.lock("x").unwrap();
    let token = lock.lock().await.unwrap().fencing_token();
    assert!(token > last, "token {token} after {last}");
    lock.unlock().await.unwrap();
    assert_eq!(d.leases().len(), 1);
    assert_eq!(d.leases()[0].kind, LeaseKind::Lock);
    d.shutdown().await.unwrap();
}
