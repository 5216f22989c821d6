//! Kubernetes-only behaviour of `KubeStore` against a real kube-apiserver (built from source,
//! see tests/apiserver): real 409s, RBAC, names the server rejects. The election and lock
//! suites run on this server too (tests/election.rs, tests/lock.rs, `kube::` tests).
//!
//! Real time with short timings: lease 2 s, renew deadline 1.5 s, retry 0.5 s. Each test has
//! its own namespace and its own kube clients.
#![cfg(feature = "testing")]

mod support;

use std::time::Duration;

use dsync::store::{LeaseKey, LeaseRecord, WatchEvent};
use dsync::testing::within;
use dsync::{Config, Dsync, Error, KubeStore, LeaseStore, StoreError, Timing};
use futures::StreamExt;
use support::apiserver::{Harness, namespace};
use support::backend::{KUBE_CALL_TIMEOUT, kube_store as store, kube_timing};
use support::kubefault::{Fault, KubeFaults};

const LIMIT: Duration = Duration::from_secs(60);

/// The same timing as the `kube::` variants of the election and lock suites.
fn timing() -> Timing {
    kube_timing()
}

async fn admin_store() -> KubeStore {
    store(&Harness::get().ready().admin).await
}

fn replica(store: impl LeaseStore, ns: &str, name: &str) -> Dsync {
    support::backend::kube_replica(store, ns, name)
}

fn held_by(id: &str) -> LeaseRecord {
    LeaseRecord {
        holder_identity: Some(id.into()),
        lease_duration_seconds: Some(2),
        lease_transitions: Some(0),
        ..Default::default()
    }
}

#[actix::test]
async fn a_concurrent_write_is_a_real_409_conflict() {
    let ns = namespace().await;
    let (s1, s2) = (admin_store().await, admin_store().await);
    let key = LeaseKey::new(&ns, "s.lock.cas");
    let v1 = s1.create(&key, held_by("a")).await.unwrap();
    assert!(matches!(
        s2.create(&key, held_by("b")).await,
        Err(StoreError::AlreadyExists { .. })
    ));
    // (An update that changes nothing keeps the version, so change something.)
    let v2 = s1
        .replace(&key, held_by("a2"), &v1.resource_version)
        .await
        .unwrap();
    assert_ne!(v1.resource_version, v2.resource_version);
    // The second writer still holds v1.
    let err = s2
        .replace(&key, held_by("b"), &v1.resource_version)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict { .. }), "{err:?}");
    assert_eq!(s2.get(&key).await.unwrap().record.holder(), Some("a2"));
}

#[actix::test]
async fn concurrent_acquisitions_are_decided_by_409s_and_handled() {
    // Ten replicas race for one free lock at the same moment: the server's conflicts pick one.
    let ns = namespace().await;
    let mut replicas = Vec::new();
    for i in 0..10 {
        replicas.push(replica(admin_store().await, &ns, &format!("pod-{i}")));
    }
    let locks: Vec<_> = replicas.iter().map(|d| d.lock("race").unwrap()).collect();
    let results = futures::future::join_all(locks.iter().map(|l| l.try_lock())).await;
    let winners = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(winners, 1, "{results:?}");
    for r in &results {
        if let Err(e) = r {
            assert!(matches!(e, Error::AlreadyLocked { .. }), "{e:?}");
        }
    }
    for d in &replicas {
        d.shutdown().await.unwrap();
    }
}

#[actix::test]
async fn a_user_with_only_the_lease_role_can_run_elections_and_locks() {
    let ns = namespace().await;
    let ready = Harness::get().ready();
    let a = replica(store(&ready.leaseuser).await, &ns, "pod-a");
    let e = a.election("x").unwrap();
    within(LIMIT, "elected", e.elected()).await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await; // renewals
    assert!(e.is_leader());
    let l = a.lock("y").unwrap();
    l.try_lock().await.unwrap();
    l.unlock().await.unwrap();
    a.shutdown().await.unwrap();
}

#[actix::test]
async fn a_user_without_rights_gets_forbidden() {
    let ns = namespace().await;
    let ready = Harness::get().ready();
    let a = replica(store(&ready.norights).await, &ns, "pod-a");
    let err = a.lock("y").unwrap().try_lock().await.unwrap_err();
    match &err {
        Error::Forbidden {
            verb,
            resource,
            message,
        } => {
            assert_eq!(verb, "get");
            assert!(resource.contains(&ns), "{resource}");
            assert!(message.contains("forbidden"), "{message}");
        }
        other => panic!("expected Forbidden, got {other:?}"),
    }
    // An election keeps trying, and says why in its status.
    let e = a.election("x").unwrap();
    let mut status = e.watch_status();
    let s = within(
        LIMIT,
        "error reported",
        status.wait_for(|s| {
            s.last_error
                .as_deref()
                .is_some_and(|m| m.contains("forbidden"))
        }),
    )
    .await
    .unwrap()
    .clone();
    assert!(!e.is_leader(), "{s:?}");
    a.shutdown().await.unwrap();
}

#[actix::test]
async fn names_and_namespaces_the_server_rejects_give_clear_errors() {
    let ns = namespace().await;
    let s = admin_store().await;
    let err = s
        .create(&LeaseKey::new(&ns, "Bad_Name"), held_by("a"))
        .await
        .unwrap_err();
    match &err {
        StoreError::Invalid { message, .. } => {
            assert!(message.contains("Bad_Name"), "{message}")
        }
        other => panic!("expected Invalid, got {other:?}"),
    }
    let mut bad = held_by("a");
    bad.lease_duration_seconds = Some(-1);
    assert!(matches!(
        s.create(&LeaseKey::new(&ns, "neg"), bad).await,
        Err(StoreError::Invalid { message, .. }) if message.contains("leaseDurationSeconds")
    ));
    // A namespace that does not exist.
    let missing = format!("{ns}-missing");
    assert!(matches!(
        s.create(&LeaseKey::new(&missing, "x"), held_by("a")).await,
        Err(StoreError::NotFound { .. })
    ));
    let a = replica(admin_store().await, &missing, "pod-a");
    let err = a.lock("x").unwrap().try_lock().await.unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }), "{err:?}");
    a.shutdown().await.unwrap();
}

#[actix::test]
async fn the_store_is_configured_from_kube_config_path() {
    let ns = namespace().await;
    let ready = Harness::get().ready();
    // What Dsync::from_env() does, with the environment given as a map.
    let env = |key: &str| match key {
        "KUBE_NAMESPACE" => Some(ns.clone()),
        "KUBE_POD_NAME" => Some("pod-env".to_owned()),
        "KUBE_CONFIG_PATH" => Some(ready.leaseuser.display().to_string()),
        _ => None,
    };
    let config = Config::from_lookup(env).unwrap().with_timing(timing());
    assert_eq!(
        config.kubeconfig_path.as_deref(),
        Some(ready.leaseuser.as_path())
    );
    // As `Dsync::from_env` does: the client is created on dsync's own lease thread.
    let d = Dsync::connect(config.clone()).await.unwrap();
    let e = d.election("x").unwrap();
    let term = within(LIMIT, "elected", e.elected()).await.unwrap();
    assert_eq!(term.holder(), "pod-env");
    assert_eq!(term.lease().namespace, ns);
    d.shutdown().await.unwrap();
    // And a store made by hand, on the caller's runtime.
    let store = KubeStore::from_config(&config).await.unwrap();
    let d = Dsync::with_config(store, config).unwrap();
    let e = d.election("x").unwrap();
    let term = within(LIMIT, "elected", e.elected()).await.unwrap();
    assert_eq!(term.holder(), "pod-env");
    d.shutdown().await.unwrap();

    let missing = Config::default().with_kubeconfig_path("/nonexistent/kubeconfig");
    match KubeStore::from_config(&missing).await {
        Err(Error::KubeConfig { path: Some(p), .. }) => {
            assert_eq!(p, std::path::Path::new("/nonexistent/kubeconfig"))
        }
        other => panic!("expected KubeConfig error, got {other:?}"),
    }
}

/// The kube fault layer (tests/support/kubefault.rs) does what the fault schedules of
/// tests/safety.rs rely on.
#[actix::test]
async fn the_fault_layer_injects_what_it_says() {
    let ns = namespace().await;
    let admin = admin_store().await;
    let faults = KubeFaults::default();
    let s = KubeStore::new(faults.client(&Harness::get().ready().admin).await)
        .with_call_timeout(KUBE_CALL_TIMEOUT);
    let key = LeaseKey::new(&ns, "s.lock.faults");
    let v1 = s.create(&key, held_by("a")).await.unwrap();

    // A 409 on the next update, which never reaches the server.
    faults.inject(Fault::Conflict);
    let err = s
        .replace(&key, held_by("b"), &v1.resource_version)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict { .. }), "{err:?}");
    let stored = admin.get(&key).await.unwrap();
    assert_eq!(stored.resource_version, v1.resource_version, "not written");

    // A 503.
    faults.inject(Fault::Unavailable);
    let err = s.get(&key).await.unwrap_err();
    assert!(err.is_transient(), "{err:?}");

    // A write that lands but whose response is lost.
    faults.inject(Fault::ResetAfterWrite);
    let err = s
        .replace(&key, held_by("c"), &v1.resource_version)
        .await
        .unwrap_err();
    assert!(err.is_transient(), "{err:?}");
    let stored = admin.get(&key).await.unwrap();
    assert_eq!(stored.record.holder(), Some("c"), "the write took effect");

    // A partition: calls hang until the call timeout.
    faults.partition();
    let err = s.get(&key).await.unwrap_err();
    assert!(matches!(err, StoreError::Timeout { .. }), "{err:?}");
    faults.heal();
    s.get(&key).await.unwrap();

    // Latency on each leg.
    faults.set_latency(Duration::from_millis(200));
    let start = std::time::Instant::now();
    s.get(&key).await.unwrap();
    assert!(start.elapsed() >= Duration::from_millis(400));
    faults.set_latency(Duration::ZERO);

    // A dropped connection cuts an open watch.
    let mut watch = s.watch(&ns);
    let first = within(LIMIT, "the first watch event", watch.next()).await;
    assert!(matches!(first, Some(Ok(_))), "{first:?}");
    // An event written after the initial list proves the watch request is open.
    let current = admin.get(&key).await.unwrap();
    admin
        .replace(&key, held_by("d"), &current.resource_version)
        .await
        .unwrap();
    loop {
        let event = within(LIMIT, "the change on the watch", watch.next()).await;
        match event {
            Some(Ok(WatchEvent::Applied(l))) if l.record.holder() == Some("d") => break,
            Some(Ok(_)) => continue,
            other => panic!("{other:?}"),
        }
    }
    faults.drop_watches();
    let next = within(LIMIT, "the watch is cut", watch.next()).await;
    assert!(matches!(next, Some(Err(_))), "{next:?}");
}
