//! Elections, each test written once and run on both stores (`memory::` and `kube::`):
//! `MemoryStore` in paused time (timing 15/10/2 s, exact instants) and `KubeStore` against the
//! real kube-apiserver (timing 2/1.5/0.5 s, with slack for round trips). Durations are in units
//! of the timing; see `support::backend`.
//!
//! Memory-only: the two tests at the end (configuration errors need no store), and the
//! `Dsync::new` default-namespace check in `defaults_namespace_and_scope` (on a shared server it
//! would campaign in the real `default` namespace).
#![cfg(feature = "testing")]

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use dsync::election::DeposeReason;
use dsync::resource::NameError;
use dsync::testing::{Call, SingleLeaderMonitor, TermLog, leader_of, settle, within};
use dsync::{Config, Dsync, Election, Error, MemoryStore, StoreError, sanitize_name};
use support::backend::Env;
use tokio::sync::mpsc;
use tokio::time::Instant;

crate::on_both_stores!(
    defaults_namespace_and_scope,
    invalid_names_are_rejected_before_any_side_effect,
    two_replicas_exactly_one_leader_and_both_agree_who,
    when_elected_runs_with_a_live_term_and_stop_cancels_it_and_releases,
    one_replica_two_elections_both_lead_with_separate_terms,
    graceful_stop_hands_over_at_once,
    a_crashed_leader_is_replaced_only_after_the_lease_duration,
    a_deposed_leader_campaigns_again_never_one_shot,
    all_replicas_lose_the_api_server_and_an_election_still_resumes,
    two_candidates_never_overlap_through_stops_and_crashes,
    five_candidates_never_overlap_through_stops_and_crashes,
    subscribers_get_elected_deposed_and_leader_changed,
    terms_of_one_replica_never_run_their_work_concurrently,
    a_failed_election_actor_is_restarted_by_the_supervisor,
    a_leader_renews_on_its_cached_version_without_reading,
    no_leader_until_someone_holds_the_lease,
    an_administrators_edit_of_the_lease_deposes_the_leader,
    stop_finishes_while_a_store_call_hangs,
    asking_again_while_a_stop_is_finishing_gets_a_new_election_that_waits_for_it,
);

async fn defaults_namespace_and_scope(env: Env) {
    let d = Dsync::with_config(
        env.store().await,
        Config::default()
            .with_identity("pod-a")
            .with_namespace(&*env.namespace)
            .with_timing(env.timing())
            .with_lease_thread(env.lease_thread()),
    )
    .unwrap();
    let e = d.election("token-manager").unwrap();
    assert_eq!(e.resource().namespace, env.namespace);
    assert_eq!(e.resource().scope, "unscoped");
    assert_eq!(
        e.lease().to_string(),
        format!("{}/unscoped.election.token-manager", env.namespace)
    );
    within(env.limit(), "elected", e.elected()).await.unwrap();
    let stored = env.peek(&e.lease()).await.unwrap();
    assert_eq!(stored.record.holder(), Some("pod-a"));
    assert_eq!(
        stored.record.lease_duration_seconds,
        Some(env.timing().lease_duration_seconds())
    );
    d.shutdown().await.unwrap();
    if env.is_memory() {
        // Without a configuration, the namespace is "default". Memory only: on the shared
        // apiserver this replica would campaign in the real "default" namespace, outside the
        // test's own.
        let d =
            Dsync::with_config(MemoryStore::new(), dsync::testing::paused_config("pod-a")).unwrap();
        assert_eq!(d.election("x").unwrap().resource().namespace, "default");
        d.shutdown().await.unwrap();
    }
}

async fn invalid_names_are_rejected_before_any_side_effect(env: Env) {
    let (d, store) = env.faulty_replica("pod-a").await;
    let err = d.election("Bad_Name").unwrap_err();
    let expected_resource = format!("{}/unscoped/Bad_Name", env.namespace);
    assert!(
        matches!(
            &err,
            Error::BadResourceName { resource, source: NameError::InvalidName { name } }
                if *resource == expected_resource && name == "unscoped.election.Bad_Name"
        ),
        "{err:?}"
    );
    assert_eq!(support::running(&d), (0, 0), "no actor was started");
    settle().await;
    assert_eq!(
        store.calls(Call::Create) + store.calls(Call::Get),
        0,
        "nothing was read or written"
    );

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
    within(env.limit(), "elected", e.elected()).await.unwrap();
    d.shutdown().await.unwrap();
}

async fn two_replicas_exactly_one_leader_and_both_agree_who(env: Env) {
    let (a, b) = (env.replica("pod-a").await, env.replica("pod-b").await);
    let ea = a.election("x").unwrap();
    let eb = b.election("x").unwrap();
    let elections = vec![ea.clone(), eb.clone()];
    let monitor = SingleLeaderMonitor::start(elections.clone());
    let i = leader_of(env.limit(), &elections).await;
    let leader = ["pod-a", "pod-b"][i];
    // Four lease durations of renewals: still exactly one, both agree.
    tokio::time::sleep(env.leases(4)).await;
    assert_eq!(
        elections.iter().filter(|e| e.is_leader()).count(),
        1,
        "exactly one leader"
    );
    assert!(elections[i].is_leader(), "and still the same one");
    assert_eq!(ea.holder().as_deref(), Some(leader));
    assert_eq!(eb.holder().as_deref(), Some(leader));
    monitor.assert_single_leader();
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

async fn when_elected_runs_with_a_live_term_and_stop_cancels_it_and_releases(env: Env) {
    let d = env.replica("pod-a").await;
    let e = d.election("x").unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (started_tx, mut started) = mpsc::unbounded_channel();
    let env = Arc::new(env);
    let finishing = env.retry() / 2;
    for n in 0..2 {
        let s = seen.clone();
        let lease = e.lease();
        let env = env.clone();
        let started_tx = started_tx.clone();
        e.when_elected(move |term| {
            let (s, lease, env, started_tx) =
                (s.clone(), lease.clone(), env.clone(), started_tx.clone());
            async move {
                s.lock()
                    .unwrap()
                    .push(format!("{n} start active={}", term.is_active()));
                started_tx.send(()).unwrap();
                term.cancelled().await;
                // Guarded work still finishing: the lease must not be released yet.
                tokio::time::sleep(finishing).await;
                let holder = env
                    .peek(&lease)
                    .await
                    .and_then(|l| l.record.holder().map(str::to_owned));
                s.lock()
                    .unwrap()
                    .push(format!("{n} done, holder={holder:?}"));
            }
        })
        .unwrap();
    }
    let term = within(env.limit(), "elected", e.elected()).await.unwrap();
    let elected_at = Instant::now();
    for _ in 0..2 {
        within(env.limit(), "work started", started.recv())
            .await
            .unwrap();
    }
    env.assert_between(
        elected_at.elapsed(),
        Duration::ZERO,
        Duration::ZERO,
        "the work starts with the term",
    );
    let mut started = seen.lock().unwrap().clone();
    started.sort();
    assert_eq!(started, vec!["0 start active=true", "1 start active=true"]);
    assert!(e.is_leader());

    let before = Instant::now();
    e.stop().await.unwrap();
    assert!(before.elapsed() >= finishing, "stop waited for the work");
    assert!(!term.is_active());
    assert!(!e.is_leader());
    let mut all = seen.lock().unwrap().clone();
    all.sort();
    assert_eq!(
        all,
        vec![
            "0 done, holder=Some(\"pod-a\")",
            "0 start active=true",
            "1 done, holder=Some(\"pod-a\")",
            "1 start active=true",
        ]
    );
    let stored = env.peek(&e.lease()).await.unwrap();
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

async fn one_replica_two_elections_both_lead_with_separate_terms(env: Env) {
    let d = env.replica("pod-a").await;
    let one = d.election("one").unwrap();
    let two = d.election("two").unwrap();
    let t1 = within(env.limit(), "one", one.elected()).await.unwrap();
    let t2 = within(env.limit(), "two", two.elected()).await.unwrap();
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
    // A stopped election can be started afresh.
    let fresh = d.election("one").unwrap();
    let t3 = within(env.limit(), "one again", fresh.elected())
        .await
        .unwrap();
    assert!(t3.fencing_token() > t1.fencing_token());
    d.shutdown().await.unwrap();
}

async fn graceful_stop_hands_over_at_once(env: Env) {
    let names = ["pod-a", "pod-b", "pod-c"];
    let mut replicas = Vec::new();
    for n in names {
        replicas.push(env.replica(n).await);
    }
    let log = TermLog::default();
    let elections: Vec<Election> = replicas
        .iter()
        .zip(names)
        .map(|(d, n)| {
            let e = d.election("x").unwrap();
            log.record(n, &e).unwrap();
            e
        })
        .collect();
    let first = leader_of(env.limit(), &elections).await;
    tokio::time::sleep(env.leases(2)).await;
    let t0 = Instant::now();
    elections[first].stop().await.unwrap();
    let rest: Vec<Election> = elections
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != first)
        .map(|(_, e)| e.clone())
        .collect();
    leader_of(env.limit(), &rest).await;
    // No waiting: the release is seen through the watch (exactly 0 in paused time).
    env.assert_between(t0.elapsed(), Duration::ZERO, Duration::ZERO, "handoff");
    settle().await;
    log.assert_safe();
    let spans = log.spans();
    assert_eq!(spans.len(), 2);
    assert_eq!(spans[0].reason, Some(DeposeReason::Stopped));
    for d in &replicas {
        d.shutdown().await.unwrap();
    }
}

async fn a_crashed_leader_is_replaced_only_after_the_lease_duration(env: Env) {
    let (a, fa) = env.faulty_replica("pod-a").await;
    let ea = a.election("x").unwrap();
    let term_a = within(env.limit(), "a elected", ea.elected())
        .await
        .unwrap();
    let b = env.replica("pod-b").await;
    let eb = b.election("x").unwrap();
    let log = TermLog::default();
    log.record("pod-a", &ea).unwrap();
    log.record("pod-b", &eb).unwrap();
    // Mid-way between two renewals (7 s on memory).
    tokio::time::sleep(env.retry() * 7 / 2).await;

    let crash = Instant::now();
    fa.partition();
    let term_b = within(env.limit(), "b takes over", eb.elected())
        .await
        .unwrap();
    // B saw A's last renewal at most one retry period before the crash, and takes over
    // exactly one lease duration after seeing it: 13..=15 s on memory.
    env.assert_between(
        crash.elapsed(),
        env.lease() - env.retry(),
        env.lease(),
        "takeover",
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
    assert!(
        spans[0].end.unwrap() <= crash + env.renew() + env.slack(),
        "A stepped down within its renew deadline: {spans:?}"
    );
    b.shutdown().await.unwrap();
}

async fn a_deposed_leader_campaigns_again_never_one_shot(env: Env) {
    let (a, fa) = env.faulty_replica("pod-a").await;
    let b = env.replica("pod-b").await;
    let ea = a.election("x").unwrap();
    within(env.limit(), "a", ea.elected()).await.unwrap();
    let eb = b.election("x").unwrap();
    // A loses the API server long enough to be deposed, then it comes back.
    fa.partition();
    within(env.limit(), "b", eb.elected()).await.unwrap();
    fa.heal();
    tokio::time::sleep(env.leases(2)).await;
    assert!(!ea.is_leader());
    assert_eq!(ea.holder().as_deref(), Some("pod-b"), "A follows again");
    // When B goes away, A must win again: elections never give up.
    eb.stop().await.unwrap();
    within(env.limit(), "a again", ea.elected()).await.unwrap();
    b.shutdown().await.unwrap();
    a.shutdown().await.unwrap();
}

async fn all_replicas_lose_the_api_server_and_an_election_still_resumes(env: Env) {
    // The seed's one-shot bug: if every pod lost the API server, nobody ever led again.
    let mut replicas = Vec::new();
    let mut stores = Vec::new();
    for i in 0..3 {
        let (d, s) = env.faulty_replica(&format!("pod-{i}")).await;
        replicas.push(d);
        stores.push(s);
    }
    let elections: Vec<Election> = replicas.iter().map(|d| d.election("x").unwrap()).collect();
    leader_of(env.limit(), &elections).await;
    for s in &stores {
        s.partition();
    }
    tokio::time::sleep(env.leases(4)).await;
    assert!(elections.iter().all(|e| !e.is_leader()));
    for s in &stores {
        s.heal();
    }
    leader_of(env.limit(), &elections).await;
    for d in &replicas {
        d.shutdown().await.unwrap();
    }
}

async fn churn(env: Env, n: usize) {
    let mut replicas = Vec::new();
    let mut stores = Vec::new();
    for i in 0..n {
        let (d, s) = env.faulty_replica(&format!("pod-{i}")).await;
        replicas.push(d);
        stores.push(s);
    }
    let log = TermLog::default();
    let elections: Vec<Election> = replicas
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let e = d.election("x").unwrap();
            log.record(&format!("pod-{i}"), &e).unwrap();
            e
        })
        .collect();
    let monitor = SingleLeaderMonitor::start(elections.clone());
    let mut alive: Vec<usize> = (0..n).collect();
    let mut round = 0;
    while alive.len() > 1 {
        let current: Vec<Election> = alive.iter().map(|&i| elections[i].clone()).collect();
        let l = alive[leader_of(env.limit(), &current).await];
        // A few renewals into the term (5 s on memory).
        tokio::time::sleep(env.retry() * 5 / 2).await;
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
    leader_of(env.limit(), &last).await;
    settle().await;
    monitor.assert_single_leader();
    log.assert_safe();
    assert_eq!(log.spans().len(), n, "one term per replica");
    for &i in &alive {
        replicas[i].shutdown().await.unwrap();
    }
}

async fn two_candidates_never_overlap_through_stops_and_crashes(env: Env) {
    churn(env, 2).await;
}

async fn five_candidates_never_overlap_through_stops_and_crashes(env: Env) {
    churn(env, 5).await;
}

async fn subscribers_get_elected_deposed_and_leader_changed(env: Env) {
    let a = env.replica("pod-a").await;
    let b = env.replica("pod-b").await;
    let ea = a.election("x").unwrap();
    let term = within(env.limit(), "a", ea.elected()).await.unwrap();
    // A subscriber joining mid-term hears about the current term at once.
    let log = TermLog::default();
    log.record("pod-a", &ea).unwrap();
    let eb = b.election("x").unwrap();
    log.record("pod-b", &eb).unwrap();
    // B has read the lease (at once on memory, after a round trip on kube).
    env.sees_leader(&eb, "pod-a").await;
    settle().await;
    let spans = log.spans();
    assert_eq!(spans.len(), 1);
    assert_eq!(spans[0].term_id, term.id());
    ea.stop().await.unwrap();
    within(env.limit(), "b", eb.elected()).await.unwrap();
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

async fn terms_of_one_replica_never_run_their_work_concurrently(env: Env) {
    // A term's work that is slow to finish holds back the next term's work (and campaign).
    let (a, fa) = env.faulty_replica("pod-a").await;
    let ea = a.election("x").unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel::<(String, Instant)>();
    // Longer than it takes to campaign again (40 s before; 45 s on memory now).
    let linger = env.leases(3);
    ea.when_elected(move |term| {
        let tx = tx.clone();
        async move {
            let t = term.fencing_token();
            tx.send((format!("start {t}"), Instant::now())).unwrap();
            term.cancelled().await;
            tokio::time::sleep(linger).await; // ignores cancellation for a while
            tx.send((format!("end {t}"), Instant::now())).unwrap();
        }
    })
    .unwrap();
    let first = within(env.limit(), "first term", ea.elected())
        .await
        .unwrap();
    fa.partition();
    within(env.limit(), "deposed", first.cancelled()).await;
    assert!(!ea.is_leader());
    fa.heal();
    let second = within(env.limit(), "second term", ea.elected())
        .await
        .unwrap();
    let mut events = Vec::new();
    for _ in 0..3 {
        events.push(within(env.limit(), "work events", rx.recv()).await.unwrap());
    }
    settle().await;
    assert!(rx.try_recv().is_err(), "nothing else ran");
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    let (t1, t2) = (first.fencing_token(), second.fencing_token());
    assert_eq!(
        names,
        [
            format!("start {t1}"),
            format!("end {t1}"),
            format!("start {t2}")
        ]
    );
    assert!(events[1].1 <= events[2].1);
    // The second term's work ignores its cancellation for `linger` too: a shutdown waits for
    // it up to the drain timeout, and says so when it runs out (45 s > 15 s on memory).
    let result = a.shutdown().await;
    if linger > dsync::config::DEFAULT_DRAIN_TIMEOUT {
        assert!(
            matches!(result, Err(Error::DrainTimeout { .. })),
            "{result:?}"
        );
    } else {
        result.unwrap();
    }
}

async fn a_failed_election_actor_is_restarted_by_the_supervisor(env: Env) {
    let (a, fa) = env.faulty_replica("pod-a").await;
    let ea = a.election("x").unwrap();
    let log = TermLog::default();
    log.record("pod-a", &ea).unwrap();
    let first = within(env.limit(), "first term", ea.elected())
        .await
        .unwrap();
    // RBAC revoked for one renewal: retrying in place cannot help, so the actor fails.
    fa.fail_next(Call::Replace, || StoreError::Forbidden {
        verb: "update".into(),
        resource: "leases.coordination.k8s.io \"ns/unscoped.election.x\"".into(),
        message: "denied".into(),
    });
    let mut status = ea.watch_status();
    within(
        env.limit(),
        "restarted",
        status.wait_for(|s| s.restarts == 1),
    )
    .await
    .unwrap();
    assert!(
        !first.is_active(),
        "the failed incarnation's term is cancelled"
    );
    let second = within(env.limit(), "re-elected", ea.elected())
        .await
        .unwrap();
    assert!(second.fencing_token() > first.fencing_token());
    settle().await;
    let spans = log.spans();
    assert_eq!(spans[0].reason, Some(DeposeReason::Restarted));
    log.assert_safe();
    a.shutdown().await.unwrap();
}

async fn a_leader_renews_on_its_cached_version_without_reading(env: Env) {
    let (a, fa) = env.faulty_replica("pod-a").await;
    let ea = a.election("x").unwrap();
    within(env.limit(), "a", ea.elected()).await.unwrap();
    let (b, fb) = env.faulty_replica("pod-b").await;
    let eb = b.election("x").unwrap();
    let mut rx = eb.watch_status();
    within(
        env.limit(),
        "b follows",
        rx.wait_for(|s| s.holder.is_some()),
    )
    .await
    .unwrap();
    settle().await;
    let (a_gets, b_gets) = (fa.calls(Call::Get), fb.calls(Call::Get));
    let (a_replaces, b_replaces) = (fa.calls(Call::Replace), fb.calls(Call::Replace));
    // 61 s on memory: renewals at 2, 4, ..., 60 s after the acquisition.
    let span = env.leases(4) + env.retry() / 2;
    tokio::time::sleep(span).await;
    assert_eq!(
        fa.calls(Call::Get),
        a_gets,
        "the leader does not GET before renewing"
    );
    let renewals = fa.calls(Call::Replace) - a_replaces;
    // One renewal per retry period: exactly 30 on memory; on kube the phase of the window is
    // not known and timers drift a little.
    let per_retry = |d: Duration| (d.as_nanos() / env.retry().as_nanos()) as u64;
    let (lo, hi) = (
        per_retry(span.saturating_sub(env.slack())),
        per_retry(span + env.slack()),
    );
    assert!(
        (lo..=hi).contains(&renewals),
        "one renewal per retry period: {renewals} not in {lo}..={hi}"
    );
    assert_eq!(
        fb.calls(Call::Get),
        b_gets,
        "a follower learns from the watch, no polling"
    );
    assert_eq!(
        fb.calls(Call::Replace),
        b_replaces,
        "a follower does not write"
    );
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

async fn no_leader_until_someone_holds_the_lease(env: Env) {
    let a = env.replica("pod-a").await;
    let e = a.election("x").unwrap();
    let err = e.current_leader().unwrap_err();
    let expected = format!("{}/unscoped.election.x", env.namespace);
    assert!(
        matches!(&err, Error::NoLeader { lease } if *lease == expected),
        "{err:?}"
    );
    within(env.limit(), "elected", e.elected()).await.unwrap();
    assert_eq!(e.current_leader().unwrap(), "pod-a");
    e.stop().await.unwrap();
    assert!(
        matches!(e.current_leader(), Err(Error::NoLeader { .. })),
        "released"
    );
    a.shutdown().await.unwrap();
}

async fn an_administrators_edit_of_the_lease_deposes_the_leader(env: Env) {
    // The seed's mock had ForceLeader; with a real lease, forcing a leader is an edit of the
    // Lease object (kubectl edit). The leader must notice and step down, and when the forced
    // holder never renews, the election resumes after the lease duration.
    let a = env.replica("pod-a").await;
    let ea = a.election("x").unwrap();
    let log = TermLog::default();
    log.record("pod-a", &ea).unwrap();
    let first = within(env.limit(), "a", ea.elected()).await.unwrap();
    let key = ea.lease();
    let mut record = env.peek(&key).await.unwrap().record;
    record.holder_identity = Some("forced".into());
    record.lease_transitions = Some(record.lease_transitions.unwrap() + 1);
    env.put(&key, record).await;
    let forced_at = Instant::now();
    within(env.limit(), "deposed", first.cancelled()).await;
    env.assert_between(
        forced_at.elapsed(),
        Duration::ZERO,
        Duration::ZERO,
        "deposed at once (watch)",
    );
    // The term is cancelled first; the status follows from the same step on dsync's lease
    // thread, so wait for it rather than race it.
    let mut status = ea.watch_status();
    within(
        env.limit(),
        "status names the forced holder",
        status.wait_for(|s| s.holder.as_deref() == Some("forced")),
    )
    .await
    .unwrap();
    drop(status);
    assert!(!ea.is_leader());
    assert_eq!(ea.holder().as_deref(), Some("forced"));
    let second = within(env.limit(), "a again", ea.elected()).await.unwrap();
    // Exactly one lease duration after it saw the edit.
    env.assert_timer(forced_at.elapsed(), env.lease(), env.lease(), "re-elected");
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

async fn stop_finishes_while_a_store_call_hangs(env: Env) {
    // Stopping must not wait forever for a call that fails (here: times out) instead of
    // succeeding.
    let (a, fa) = env.faulty_replica("pod-a").await;
    fa.partition();
    let e = a.election("x").unwrap();
    within(env.limit(), "read sent", fa.called(Call::Get, 1)).await;
    settle().await;
    assert_eq!(
        fa.calls(Call::Get),
        1,
        "the first read is in flight, hanging"
    );
    let start = Instant::now();
    within(env.limit(), "stop", e.stop()).await.unwrap();
    // Bounded by the call timeout (the renew deadline).
    env.assert_timer(start.elapsed(), Duration::ZERO, env.renew(), "stopped");
    within(env.limit(), "shutdown", a.shutdown()).await.unwrap();
}

// Store-independent: configuration errors are raised before any store is used, so these run
// once, on memory.

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

/// Regression (found by `tests/safety.rs`, seed 109): `election(name)` while the election of
/// that name was still stopping handed out the dying election, which never led again. Now it
/// is a new election, which campaigns once the old one has drained its work and released.
async fn asking_again_while_a_stop_is_finishing_gets_a_new_election_that_waits_for_it(env: Env) {
    let a = env.replica("pod-a").await;
    let old = a.election("x").unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel::<(String, Instant)>();
    let linger = env.retry();
    let work = move |tx: mpsc::UnboundedSender<(String, Instant)>| {
        move |term: dsync::Term| {
            let tx = tx.clone();
            async move {
                let t = term.fencing_token();
                tx.send((format!("start {t}"), Instant::now())).unwrap();
                term.cancelled().await;
                tokio::time::sleep(linger).await; // still finishing after the stop
                tx.send((format!("end {t}"), Instant::now())).unwrap();
            }
        }
    };
    old.when_elected(work(tx.clone())).unwrap();
    let first = within(env.limit(), "first term", old.elected())
        .await
        .unwrap();
    within(env.limit(), "work started", rx.recv())
        .await
        .unwrap();
    let stop_sent = Instant::now();
    let stopping = {
        let old = old.clone();
        actix::spawn(async move { old.stop().await })
    };
    within(env.limit(), "term ended", first.cancelled()).await;
    env.assert_between(
        stop_sent.elapsed(),
        Duration::ZERO,
        Duration::ZERO,
        "the stop ended the term at once",
    );

    let new = a.election("x").unwrap();
    assert!(
        !new.watch_status().borrow().stopped,
        "a new election, not the stopping one"
    );
    new.when_elected(work(tx)).unwrap();
    let second = within(env.limit(), "second term", new.elected())
        .await
        .unwrap();
    within(env.limit(), "old stop", stopping)
        .await
        .unwrap()
        .unwrap();
    assert!(second.fencing_token() > first.fencing_token());
    let mut events = Vec::new();
    for _ in 0..2 {
        events.push(within(env.limit(), "work events", rx.recv()).await.unwrap());
    }
    let (t1, t2) = (first.fencing_token(), second.fencing_token());
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, [format!("end {t1}"), format!("start {t2}")]);
    assert!(
        events[0].1 <= events[1].1,
        "the new term waited for the old work"
    );
    assert!(matches!(old.elected().await, Err(Error::Stopped { .. })));
    assert_eq!(
        support::running(&a),
        (1, 0),
        "only the new election is registered"
    );
    a.shutdown().await.unwrap();
}
