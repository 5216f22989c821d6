//! Elections on the in-process store, in paused tokio time (no wall-clock sleeps).
//! Timing is client-go's default: lease 15 s, renew deadline 10 s, retry 2 s.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use dsync::{
    Config, DeposeReason, Dsync, Election, Error, LeaseStore, MemoryStore, NameError, StoreError,
    sanitize_name,
};
use support::{Call, FaultyStore, TermLog, monitor_single_leader, settle, within};
use tokio::time::Instant;

const LIMIT: Duration = Duration::from_secs(600);

fn replica(store: impl LeaseStore, name: &str) -> Dsync {
    Dsync::new(store, name).unwrap()
}

async fn leader_of(elections: &[Election]) -> usize {
    within(LIMIT, "someone is elected", async {
        let mut rxs: Vec<_> = elections.iter().map(Election::watch_status).collect();
        loop {
            if let Some(i) = elections.iter().position(Election::is_leader) {
                return i;
            }
            let (changed, _, _) =
                futures::future::select_all(rxs.iter_mut().map(|rx| rx.changed().boxed_local()))
                    .await;
            changed.expect("an election actor went away");
        }
    })
    .await
}

use futures::FutureExt;

#[actix::test]
async fn defaults_namespace_and_scope() {
    tokio::time::pause();
    let store = MemoryStore::new();
    let d = replica(store.clone(), "pod-a");
    let e = d.election("token-manager").unwrap();
    assert_eq!(e.resource().namespace, "default");
    assert_eq!(e.resource().scope, "unscoped");
    assert_eq!(
        e.lease().to_string(),
        "default/unscoped.election.token-manager"
    );
    within(LIMIT, "elected", e.elected()).await.unwrap();
    let stored = store.peek(&e.lease()).unwrap();
    assert_eq!(stored.record.holder(), Some("pod-a"));
    assert_eq!(stored.record.lease_duration_seconds, Some(15));
    d.shutdown().await.unwrap();
}

#[actix::test]
async fn invalid_names_are_rejected_before_any_side_effect() {
    tokio::time::pause();
    let store = MemoryStore::new();
    let d = replica(store.clone(), "pod-a");
    let err = d.election("Bad_Name").unwrap_err();
    assert!(
        matches!(
            &err,
            Error::BadResourceName { resource, source: NameError::InvalidName { name } }
                if resource == "default/unscoped/Bad_Name" && name == "unscoped.election.Bad_Name"
        ),
        "{err:?}"
    );
    assert_eq!(d.running(), (0, 0), "no actor was started");
    settle().await;
    assert_eq!(store.stats().creates, 0, "nothing was written");

    // The seed sanitised silently; here it is the caller's explicit choice.
    let e = d.election(&sanitize_name("Bad_Name")).unwrap();
    assert_eq!(e.lease().name, "unscoped.election.bad-name");
    assert!(matches!(
        d.election(&"x".repeat(250)),
        Err(Error::BadResourceName {
            source: NameError::TooLong { .. },
            ..
        })
    ));
    d.shutdown().await.unwrap();
}

#[actix::test]
async fn two_replicas_exactly_one_leader_and_both_agree_who() {
    tokio::time::pause();
    let store = MemoryStore::new();
    let (a, b) = (
        replica(store.clone(), "pod-a"),
        replica(store.clone(), "pod-b"),
    );
    let ea = a.election("x").unwrap();
    let eb = b.election("x").unwrap();
    let elections = vec![ea.clone(), eb.clone()];
    let (violations, _monitor) = monitor_single_leader(elections.clone());
    let i = leader_of(&elections).await;
    let leader = ["pod-a", "pod-b"][i];
    // Let a minute of renewals pass: still exactly one, both agree.
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(
        elections.iter().filter(|e| e.is_leader()).count(),
        1,
        "exactly one leader"
    );
    assert_eq!(ea.leader().as_deref(), Some(leader));
    assert_eq!(eb.leader().as_deref(), Some(leader));
    assert!(violations.lock().unwrap().is_empty(), "{violations:?}");
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

#[actix::test]
async fn when_elected_runs_with_a_live_term_and_stop_cancels_it_and_releases() {
    tokio::time::pause();
    let store = MemoryStore::new();
    let d = replica(store.clone(), "pod-a");
    let e = d.election("x").unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let lease = e.lease();
    let store2 = store.clone();
    e.when_elected(move |term| {
        let s = s.clone();
        let (lease, store) = (lease.clone(), store2.clone());
        async move {
            s.lock()
                .unwrap()
                .push(format!("start active={}", term.is_active()));
            term.cancelled().await;
            // Guarded work still finishing: the lease must not be released yet.
            tokio::time::sleep(Duration::from_secs(1)).await;
            let holder = store
                .peek(&lease)
                .unwrap()
                .record
                .holder()
                .map(str::to_owned);
            s.lock().unwrap().push(format!("done, holder={holder:?}"));
        }
    })
    .unwrap();
    let term = within(LIMIT, "elected", e.elected()).await.unwrap();
    settle().await;
    assert_eq!(*seen.lock().unwrap(), vec!["start active=true"]);
    assert!(e.is_leader());

    let before = Instant::now();
    e.stop().await.unwrap();
    assert!(
        Instant::now() - before >= Duration::from_secs(1),
        "stop waited for the work"
    );
    assert!(!term.is_active());
    assert!(!e.is_leader());
    assert_eq!(
        *seen.lock().unwrap(),
        vec!["start active=true", "done, holder=Some(\"pod-a\")"]
    );
    let stored = store.peek(&e.lease()).unwrap();
    assert_eq!(
        stored.record.holder(),
        None,
        "released after the work finished"
    );
    assert!(matches!(
        e.when_elected(|_| async {}),
        Err(Error::Stopped { .. })
    ));
    e.stop().await.unwrap(); // idempotent
    d.shutdown().await.unwrap();
}

#[actix::test]
async fn one_replica_two_elections_both_lead_with_separate_terms() {
    tokio::time::pause();
    let d = replica(MemoryStore::new(), "pod-a");
    let one = d.election("one").unwrap();
    let two = d.election("two").unwrap();
    let t1 = within(LIMIT, "one", one.elected()).await.unwrap();
    let t2 = within(LIMIT, "two", two.elected()).await.unwrap();
    assert_ne!(t1.id(), t2.id());
    one.stop().await.unwrap();
    assert!(!t1.is_active());
    assert!(
        t2.is_active(),
        "stopping one election leaves the other's term alone"
    );
    assert!(two.is_leader());

    // Two handles for the same election share it.
    let again = d.election("two").unwrap();
    assert!(again.is_leader());
    assert_eq!(again.term().unwrap().id(), t2.id());
    d.shutdown().await.unwrap();
}

#[actix::test]
async fn graceful_stop_hands_over_at_once() {
    tokio::time::pause();
    let store = MemoryStore::new();
    let names = ["pod-a", "pod-b", "pod-c"];
    let replicas: Vec<Dsync> = names.iter().map(|n| replica(store.clone(), n)).collect();
    let log = TermLog::default();
    let elections: Vec<Election> = replicas
        .iter()
        .zip(names)
        .map(|(d, n)| {
            let e = d.election("x").unwrap();
            log.record(n, &e);
            e
        })
        .collect();
    let first = leader_of(&elections).await;
    tokio::time::sleep(Duration::from_secs(30)).await;
    let t0 = Instant::now();
    elections[first].stop().await.unwrap();
    let rest: Vec<Election> = elections
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != first)
        .map(|(_, e)| e.clone())
        .collect();
    leader_of(&rest).await;
    assert_eq!(
        Instant::now() - t0,
        Duration::ZERO,
        "handoff needs no waiting: the release is seen through the watch"
    );
    settle().await;
    log.assert_safe();
    let spans = log.spans();
    assert_eq!(spans.len(), 2);
    assert_eq!(spans[0].reason, Some(DeposeReason::Stopped));
    for d in &replicas {
        d.shutdown().await.unwrap();
    }
}

#[actix::test]
async fn a_crashed_leader_is_replaced_only_after_the_lease_duration() {
    tokio::time::pause();
    let memory = MemoryStore::new();
    let fa = FaultyStore::new(memory.clone());
    let a = replica(fa.clone(), "pod-a");
    let ea = a.election("x").unwrap();
    let term_a = within(LIMIT, "a elected", ea.elected()).await.unwrap();
    let b = replica(memory.clone(), "pod-b");
    let eb = b.election("x").unwrap();
    let log = TermLog::default();
    log.record("pod-a", &ea);
    log.record("pod-b", &eb);
    tokio::time::sleep(Duration::from_secs(7)).await;

    let crash = Instant::now();
    fa.partition();
    let term_b = within(LIMIT, "b takes over", eb.elected()).await.unwrap();
    let waited = Instant::now() - crash;
    // B saw A's last renewal at most one retry period (2 s) before the crash, and takes over
    // exactly one lease duration (15 s) after seeing it.
    assert!(
        waited >= Duration::from_secs(13) && waited <= Duration::from_secs(15),
        "takeover after {waited:?}"
    );
    // A stepped down by itself at its renew deadline, before B could take over.
    assert!(!term_a.is_active());
    assert!(!ea.is_leader());
    assert!(term_b.fencing_token() > term_a.fencing_token());
    settle().await;
    log.assert_safe();
    let spans = log.spans();
    assert_eq!(spans[0].replica, "pod-a");
    assert_eq!(spans[0].reason, Some(DeposeReason::RenewDeadlineExceeded));
    assert!(spans[0].end.unwrap() <= crash + Duration::from_secs(10));
    b.shutdown().await.unwrap();
}

#[actix::test]
async fn a_deposed_leader_campaigns_again_never_one_shot() {
    tokio::time::pause();
    let memory = MemoryStore::new();
    let fa = FaultyStore::new(memory.clone());
    let a = replica(fa.clone(), "pod-a");
    let b = replica(memory.clone(), "pod-b");
    let ea = a.election("x").unwrap();
    within(LIMIT, "a", ea.elected()).await.unwrap();
    let eb = b.election("x").unwrap();
    // A loses the API server long enough to be deposed, then it comes back.
    fa.partition();
    within(LIMIT, "b", eb.elected()).await.unwrap();
    fa.heal();
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert!(!ea.is_leader());
    assert_eq!(ea.leader().as_deref(), Some("pod-b"), "A follows again");
    // When B goes away, A must win again: elections never give up.
    eb.stop().await.unwrap();
    within(LIMIT, "a again", ea.elected()).await.unwrap();
    // ... and every replica can lose and regain it again and again.
    b.shutdown().await.unwrap();
    a.shutdown().await.unwrap();
}

#[actix::test]
async fn all_replicas_lose_the_api_server_and_an_election_still_resumes() {
    // The seed's one-shot bug: if every pod lost the API server, nobody ever led again.
    tokio::time::pause();
    let memory = MemoryStore::new();
    let stores: Vec<FaultyStore> = (0..3).map(|_| FaultyStore::new(memory.clone())).collect();
    let replicas: Vec<Dsync> = stores
        .iter()
        .enumerate()
        .map(|(i, s)| replica(s.clone(), &format!("pod-{i}")))
        .collect();
    let elections: Vec<Election> = replicas.iter().map(|d| d.election("x").unwrap()).collect();
    leader_of(&elections).await;
    for s in &stores {
        s.partition();
    }
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert!(elections.iter().all(|e| !e.is_leader()));
    for s in &stores {
        s.heal();
    }
    leader_of(&elections).await;
    for d in &replicas {
        d.shutdown().await.unwrap();
    }
}

async fn churn(n: usize) {
    tokio::time::pause();
    let memory = MemoryStore::new();
    let stores: Vec<FaultyStore> = (0..n).map(|_| FaultyStore::new(memory.clone())).collect();
    let replicas: Vec<Dsync> = stores
        .iter()
        .enumerate()
        .map(|(i, s)| replica(s.clone(), &format!("pod-{i}")))
        .collect();
    let log = TermLog::default();
    let elections: Vec<Election> = replicas
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let e = d.election("x").unwrap();
            log.record(&format!("pod-{i}"), &e);
            e
        })
        .collect();
    let (violations, _monitor) = monitor_single_leader(elections.clone());
    let mut alive: Vec<usize> = (0..n).collect();
    let mut round = 0;
    while alive.len() > 1 {
        let current: Vec<Election> = alive.iter().map(|&i| elections[i].clone()).collect();
        let l = alive[leader_of(&current).await];
        tokio::time::sleep(Duration::from_secs(5)).await;
        // Alternate graceful stops and crashes.
        if round % 2 == 0 {
            elections[l].stop().await.unwrap();
        } else {
            stores[l].partition();
        }
        alive.retain(|&i| i != l);
        round += 1;
    }
    let last: Vec<Election> = alive.iter().map(|&i| elections[i].clone()).collect();
    leader_of(&last).await;
    settle().await;
    assert!(violations.lock().unwrap().is_empty(), "{violations:?}");
    log.assert_safe();
    assert_eq!(log.spans().len(), n, "one term per replica");
    for (i, d) in replicas.iter().enumerate() {
        if alive.contains(&i) || round == 0 {
            d.shutdown().await.unwrap();
        }
    }
}

#[actix::test]
async fn two_candidates_never_overlap_through_stops_and_crashes() {
    churn(2).await;
}

#[actix::test]
async fn five_candidates_never_overlap_through_stops_and_crashes() {
    churn(5).await;
}

#[actix::test]
async fn subscribers_get_elected_deposed_and_leader_changed() {
    tokio::time::pause();
    let store = MemoryStore::new();
    let a = replica(store.clone(), "pod-a");
    let b = replica(store.clone(), "pod-b");
    let ea = a.election("x").unwrap();
    let term = within(LIMIT, "a", ea.elected()).await.unwrap();
    // A subscriber joining mid-term hears about the current term at once.
    let log = TermLog::default();
    log.record("pod-a", &ea);
    let eb = b.election("x").unwrap();
    log.record("pod-b", &eb);
    settle().await;
    let spans = log.spans();
    assert_eq!(spans.len(), 1);
    assert_eq!(spans[0].term_id, term.id());
    ea.stop().await.unwrap();
    within(LIMIT, "b", eb.elected()).await.unwrap();
    settle().await;
    let spans = log.spans();
    assert_eq!(spans.len(), 2);
    assert_eq!(spans[0].reason, Some(DeposeReason::Stopped));
    assert_eq!(spans[1].replica, "pod-b");
    let changes = log.leader_changes();
    assert!(
        changes.contains(&("pod-b".into(), Some("pod-a".into()))),
        "{changes:?}"
    );
    assert!(
        changes.contains(&("pod-b".into(), Some("pod-b".into()))),
        "{changes:?}"
    );
    b.shutdown().await.unwrap();
}

#[actix::test]
async fn terms_of_one_replica_never_run_their_work_concurrently() {
    // A term's work that is slow to finish holds back the next term's work (and campaign).
    tokio::time::pause();
    let memory = MemoryStore::new();
    let fa = FaultyStore::new(memory.clone());
    let a = replica(fa.clone(), "pod-a");
    let ea = a.election("x").unwrap();
    let events = Arc::new(Mutex::new(Vec::<(String, Instant)>::new()));
    let ev = events.clone();
    ea.when_elected(move |term| {
        let ev = ev.clone();
        async move {
            let t = term.fencing_token();
            ev.lock()
                .unwrap()
                .push((format!("start {t}"), Instant::now()));
            term.cancelled().await;
            tokio::time::sleep(Duration::from_secs(40)).await; // ignores cancellation for a while
            ev.lock()
                .unwrap()
                .push((format!("end {t}"), Instant::now()));
        }
    })
    .unwrap();
    within(LIMIT, "first term", ea.elected()).await.unwrap();
    fa.partition();
    tokio::time::sleep(Duration::from_secs(12)).await; // deposed at the renew deadline
    assert!(!ea.is_leader());
    fa.heal();
    within(LIMIT, "second term", ea.elected()).await.unwrap();
    settle().await;
    let events = events.lock().unwrap().clone();
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["start 0", "end 0", "start 1"]);
    assert!(events[1].1 <= events[2].1);
    a.shutdown().await.unwrap();
}

#[actix::test]
async fn a_failed_election_actor_is_restarted_by_the_supervisor() {
    tokio::time::pause();
    let memory = MemoryStore::new();
    let fa = FaultyStore::new(memory.clone());
    let a = replica(fa.clone(), "pod-a");
    let ea = a.election("x").unwrap();
    let log = TermLog::default();
    log.record("pod-a", &ea);
    let first = within(LIMIT, "first term", ea.elected()).await.unwrap();
    // RBAC revoked for one renewal: retrying in place cannot help, so the actor fails.
    fa.fail_next(Call::Replace, || StoreError::Forbidden {
        verb: "update".into(),
        resource: "leases.coordination.k8s.io \"default/unscoped.election.x\"".into(),
        message: "denied".into(),
    });
    let mut status = ea.watch_status();
    within(LIMIT, "restarted", status.wait_for(|s| s.restarts == 1))
        .await
        .unwrap();
    assert!(
        !first.is_active(),
        "the failed incarnation's term is cancelled"
    );
    let second = within(LIMIT, "re-elected", ea.elected()).await.unwrap();
    assert!(second.fencing_token() > first.fencing_token());
    settle().await;
    let spans = log.spans();
    assert_eq!(spans[0].reason, Some(DeposeReason::Restarted));
    log.assert_safe();
    a.shutdown().await.unwrap();
}

#[actix::test]
async fn a_leader_renews_on_its_cached_version_without_reading() {
    tokio::time::pause();
    let memory = MemoryStore::new();
    let fa = FaultyStore::new(memory.clone());
    let fb = FaultyStore::new(memory.clone());
    let a = replica(fa.clone(), "pod-a");
    let ea = a.election("x").unwrap();
    within(LIMIT, "a", ea.elected()).await.unwrap();
    let b = replica(fb.clone(), "pod-b");
    let _eb = b.election("x").unwrap();
    settle().await;
    let (a_gets, b_gets) = (fa.calls("get"), fb.calls("get"));
    let (a_replaces, b_replaces) = (fa.calls("replace"), fb.calls("replace"));
    tokio::time::sleep(Duration::from_secs(61)).await;
    assert_eq!(
        fa.calls("get"),
        a_gets,
        "the leader does not GET before renewing"
    );
    assert_eq!(
        fa.calls("replace") - a_replaces,
        30,
        "one renewal per retry period"
    );
    assert_eq!(
        fb.calls("get"),
        b_gets,
        "a follower learns from the watch, no polling"
    );
    assert_eq!(fb.calls("replace"), b_replaces, "a follower does not write");
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

#[actix::test]
async fn dsync_needs_a_valid_identity() {
    let err = Dsync::new(MemoryStore::new(), "").unwrap_err();
    assert!(matches!(err, Error::InvalidConfig { .. }), "{err:?}");
    let err = Dsync::with_config(
        MemoryStore::new(),
        Config::default().with_namespace("Bad").with_identity("x"),
    )
    .unwrap_err();
    assert!(matches!(err, Error::InvalidConfig { .. }), "{err:?}");
}

#[test]
fn dsync_outside_an_actix_system_is_an_error_not_a_panic() {
    let err = Dsync::new(MemoryStore::new(), "pod-a").unwrap_err();
    assert!(matches!(err, Error::NoActixSystem), "{err:?}");
}

#[actix::test]
async fn no_leader_until_someone_holds_the_lease() {
    tokio::time::pause();
    let store = MemoryStore::new();
    let a = replica(store.clone(), "pod-a");
    let e = a.election("x").unwrap();
    let err = e.current_leader().unwrap_err();
    assert!(
        matches!(&err, Error::NoLeader { lease } if lease == "default/unscoped.election.x"),
        "{err:?}"
    );
    within(LIMIT, "elected", e.elected()).await.unwrap();
    assert_eq!(e.current_leader().unwrap(), "pod-a");
    e.stop().await.unwrap();
    assert!(
        matches!(e.current_leader(), Err(Error::NoLeader { .. })),
        "released"
    );
    a.shutdown().await.unwrap();
}

#[actix::test]
async fn an_administrators_edit_of_the_lease_deposes_the_leader() {
    // The seed's mock had ForceLeader; with a real lease, forcing a leader is an edit of the
    // Lease object (kubectl edit). The leader must notice and step down, and when the forced
    // holder never renews, the election resumes after the lease duration.
    tokio::time::pause();
    let store = MemoryStore::new();
    let a = replica(store.clone(), "pod-a");
    let ea = a.election("x").unwrap();
    let log = TermLog::default();
    log.record("pod-a", &ea);
    let first = within(LIMIT, "a", ea.elected()).await.unwrap();
    let key = ea.lease();
    let mut record = store.peek(&key).unwrap().record;
    record.holder_identity = Some("forced".into());
    record.lease_transitions = Some(record.lease_transitions.unwrap() + 1);
    store.put(&key, record).unwrap();
    settle().await;
    assert!(!first.is_active(), "deposed at once (watch)");
    assert!(!ea.is_leader());
    assert_eq!(ea.leader().as_deref(), Some("forced"));
    let forced_at = Instant::now();
    let second = within(LIMIT, "a again", ea.elected()).await.unwrap();
    let waited = Instant::now() - forced_at;
    // Exactly one lease duration after it saw the edit (timers have millisecond resolution).
    assert!(
        waited >= Duration::from_secs(15) && waited <= Duration::from_millis(15_005),
        "{waited:?}"
    );
    assert!(second.fencing_token() > first.fencing_token() + 1);
    settle().await;
    let spans = log.spans();
    assert_eq!(
        spans[0].reason,
        Some(DeposeReason::Superseded {
            holder: Some("forced".into())
        })
    );
    log.assert_safe();
    a.shutdown().await.unwrap();
}
