//! dsync on `KubeStore` against a real kube-apiserver (built from source, see tests/apiserver).
//!
//! These run in real time (the network cannot be paused) with short timings: lease 2 s, renew
//! deadline 1.5 s, retry 0.5 s. Each test has its own namespace and its own kube clients.

mod support;

use std::time::Duration;

use dsync::store::{LeaseKey, LeaseRecord};
use dsync::{
    Config, DeposeReason, Dsync, Election, Error, KubeStore, LeaseStore, StoreError, Timing,
};
use support::apiserver::{Harness, client, namespace};
use support::{FaultyStore, TermLog, monitor_single_leader, within};
use tokio::time::Instant;

const LIMIT: Duration = Duration::from_secs(60);

fn timing() -> Timing {
    Timing::new(
        Duration::from_secs(2),
        Duration::from_millis(1500),
        Duration::from_millis(500),
    )
    .unwrap()
}

async fn store(kubeconfig: &std::path::Path) -> KubeStore {
    KubeStore::new(client(kubeconfig).await).with_call_timeout(Duration::from_secs(1))
}

async fn admin_store() -> KubeStore {
    store(&Harness::get().ready().admin).await
}

fn replica(store: impl LeaseStore, ns: &str, name: &str) -> Dsync {
    Dsync::with_config(
        store,
        Config::default()
            .with_namespace(ns)
            .with_identity(name)
            .with_timing(timing()),
    )
    .unwrap()
}

async fn leader_of(elections: &[Election]) -> usize {
    within(LIMIT, "someone is elected", async {
        let mut rxs: Vec<_> = elections.iter().map(Election::watch_status).collect();
        loop {
            if let Some(i) = elections.iter().position(Election::is_leader) {
                return i;
            }
            let changes = rxs.iter_mut().map(|rx| Box::pin(rx.changed()));
            let (changed, _, _) = futures::future::select_all(changes).await;
            changed.expect("an election actor went away");
        }
    })
    .await
}

#[actix::test]
async fn two_clients_contend_one_leads_and_a_stop_hands_over_at_once() {
    let ns = namespace().await;
    // Separate kube clients, as separate pods would have.
    let a = replica(admin_store().await, &ns, "pod-a");
    let b = replica(admin_store().await, &ns, "pod-b");
    let log = TermLog::default();
    let ea = a.election("x").unwrap();
    let eb = b.election("x").unwrap();
    log.record("pod-a", &ea);
    log.record("pod-b", &eb);
    let elections = vec![ea.clone(), eb.clone()];
    let (violations, _monitor) = monitor_single_leader(elections.clone());
    let first = leader_of(&elections).await;
    // Several renewal rounds against the real server.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(elections.iter().filter(|e| e.is_leader()).count(), 1);
    let leader = ["pod-a", "pod-b"][first];
    assert_eq!(ea.leader().as_deref(), Some(leader));
    assert_eq!(eb.leader().as_deref(), Some(leader));

    let t0 = Instant::now();
    elections[first].stop().await.unwrap();
    let next = within(LIMIT, "takeover", elections[1 - first].elected())
        .await
        .unwrap();
    let handoff = t0.elapsed();
    assert!(handoff < Duration::from_secs(1), "handoff took {handoff:?}");
    assert!(next.fencing_token() > 0);
    log.assert_safe();
    assert!(violations.lock().unwrap().is_empty(), "{violations:?}");
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
    let stored = admin_store().await.get(&ea.lease()).await.unwrap();
    assert_eq!(stored.record.holder(), None, "released on shutdown");
}

#[actix::test]
async fn a_crashed_leader_is_replaced_after_the_lease_duration() {
    let ns = namespace().await;
    let fa = FaultyStore::new(admin_store().await);
    let a = replica(fa.clone(), &ns, "pod-a");
    let b = replica(admin_store().await, &ns, "pod-b");
    let ea = a.election("x").unwrap();
    let ta = within(LIMIT, "a", ea.elected()).await.unwrap();
    let eb = b.election("x").unwrap();
    let log = TermLog::default();
    log.record("pod-a", &ea);
    log.record("pod-b", &eb);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let crash = Instant::now();
    fa.partition();
    let tb = within(LIMIT, "b", eb.elected()).await.unwrap();
    let waited = crash.elapsed();
    // At most lease duration after the last renewal B saw, plus API round trips.
    assert!(
        waited >= Duration::from_millis(1400) && waited <= Duration::from_millis(2600),
        "takeover after {waited:?}"
    );
    assert!(!ta.is_active());
    assert!(tb.fencing_token() > ta.fencing_token());
    log.assert_safe();
    assert_eq!(
        log.spans()[0].reason,
        Some(DeposeReason::RenewDeadlineExceeded)
    );
    b.shutdown().await.unwrap();
}

#[actix::test]
async fn locks_on_the_real_server() {
    let ns = namespace().await;
    let a = replica(admin_store().await, &ns, "pod-a");
    let b = replica(admin_store().await, &ns, "pod-b");
    let (la, lb) = (a.lock("job").unwrap(), b.lock("job").unwrap());
    assert!(matches!(la.unlock().await, Err(Error::NotLocked { .. })));
    let ta = la.try_lock().await.unwrap();
    assert!(matches!(
        lb.try_lock().await,
        Err(Error::AlreadyLocked { holder, .. }) if holder == "pod-a"
    ));
    assert!(matches!(
        lb.unlock().await,
        Err(Error::NotLockHolder { holder: Some(h), .. }) if h == "pod-a"
    ));
    let waiter = actix::spawn(async move { lb.lock().await.map(|t| (t, Instant::now())) });
    tokio::time::sleep(Duration::from_secs(3)).await; // renewed meanwhile
    assert!(!waiter.is_finished());
    let unlocked = Instant::now();
    la.unlock().await.unwrap();
    let (tb, got) = within(LIMIT, "b", waiter).await.unwrap().unwrap();
    assert!(
        got - unlocked < Duration::from_secs(1),
        "lock handoff took {:?}",
        got - unlocked
    );
    assert!(tb.fencing_token() > ta.fencing_token());
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
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
