//! The API server is killed (SIGKILL) and restarted on the same etcd data while replicas
//! campaign: leadership resumes and there are never two leaders. A separate test binary,
//! because the restart would disturb any other test sharing the harness.
#![cfg(feature = "testing")]

mod support;

use std::time::Duration;

use dsync::testing::{SingleLeaderMonitor, TermLog, leader_of};
use dsync::{Config, Dsync, KubeStore, Timing};
use support::apiserver::{Harness, client, namespace};
use tokio::time::Instant;

const LIMIT: Duration = Duration::from_secs(120);

#[actix::test]
async fn an_apiserver_restart_is_survived_without_two_leaders() {
    let ns = namespace().await;
    let admin = Harness::get().ready().admin;
    let timing = Timing::new(
        Duration::from_secs(2),
        Duration::from_millis(1500),
        Duration::from_millis(500),
    )
    .unwrap();
    let mut replicas = Vec::new();
    let mut elections = Vec::new();
    let log = TermLog::default();
    for name in ["pod-a", "pod-b", "pod-c"] {
        let store = KubeStore::new(client(&admin).await).with_call_timeout(Duration::from_secs(1));
        let d = Dsync::with_config(
            store,
            Config::default()
                .with_namespace(&*ns)
                .with_identity(name)
                .with_timing(timing),
        )
        .unwrap();
        let e = d.election("x").unwrap();
        log.record(name, &e).unwrap();
        elections.push(e);
        replicas.push(d);
    }
    let monitor = SingleLeaderMonitor::start(elections.clone());
    let first = leader_of(LIMIT, &elections).await;
    let before = elections[first].term().unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;

    tokio::task::spawn_blocking(|| Harness::get().kill())
        .await
        .unwrap();
    // Down for longer than the lease: the leader must step down on its own by its renew
    // deadline, and nobody can lead while the server is gone.
    tokio::time::sleep(timing.lease_duration() + Duration::from_secs(1)).await;
    assert!(!before.is_active(), "leader stepped down during the outage");
    assert!(elections.iter().all(|e| !e.is_leader()));
    let down_until = Instant::now();
    let ready = tokio::task::spawn_blocking(|| Harness::get().start_again())
        .await
        .unwrap();
    assert_eq!(
        ready.admin, admin,
        "same data dir, same kubeconfigs (and port) after the restart"
    );
    let next = leader_of(LIMIT, &elections).await;
    let term = elections[next].term().unwrap();
    assert!(
        term.fencing_token() > before.fencing_token(),
        "the lease survived in etcd: tokens continue"
    );
    println!(
        "leader again {:?} after the restart began",
        down_until.elapsed()
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(elections.iter().filter(|e| e.is_leader()).count(), 1);
    monitor.assert_single_leader();
    log.assert_safe();
    for d in &replicas {
        d.shutdown().await.unwrap();
    }
}
