//! Leadership handoff to a named replica (issue 13): `Election::handoff_to`,
//! `Dsync::handoff`, and a handoff asked for on the lease itself (the
//! `dsync.io/handoff-to` annotation).
//!
//! Guarantees under test: the old term ends before the new one begins, the fencing token
//! strictly increases, the successor is elected within one round trip of the release when it
//! is alive and campaigning, and an absent or dead successor blocks leadership for one lease
//! duration at most. Every body runs on `MemoryStore` in paused time (exact instants) and on
//! the real kube-apiserver.
#![cfg(feature = "testing")]

mod support;

use std::time::Duration;

use dsync::record::HANDOFF_REQUEST_ANNOTATION;
use dsync::testing::{TermLog, leader_of, within};
use dsync::{DeposeReason, Error};
use support::backend::Env;
use tokio::sync::oneshot;
use tokio::time::Instant;

const ZERO: Duration = Duration::ZERO;

crate::on_both_stores!(
    a_handoff_to_a_live_successor_elects_it_at_once_with_the_next_token,
    a_handoff_to_an_absent_successor_falls_back_after_one_lease_duration,
    a_handoff_to_ourselves_is_a_no_op,
    only_the_leader_can_hand_off,
    a_handoff_waits_for_the_work_and_its_drain_is_bounded,
    concurrent_handoffs_join_or_are_refused,
    a_handoff_asked_for_on_the_lease_is_carried_out_and_cleared,
    a_handoff_racing_a_crash_of_the_leader_never_gives_two_leaders,
    a_handoff_from_inside_the_work_returns_at_once_and_still_happens,
);

async fn a_handoff_to_a_live_successor_elects_it_at_once_with_the_next_token(env: Env) {
    let (a, b, c) = (
        env.replica("pod-a").await,
        env.replica("pod-b").await,
        env.replica("pod-c").await,
    );
    let log = TermLog::default();
    let ea = a.election("x").unwrap();
    log.record("pod-a", &ea).unwrap();
    let first = within(env.limit(), "a leads", ea.elected()).await.unwrap();
    let (eb, ec) = (b.election("x").unwrap(), c.election("x").unwrap());
    log.record("pod-b", &eb).unwrap();
    log.record("pod-c", &ec).unwrap();
    // Both candidates follow pod-a before the handoff.
    for e in [&eb, &ec] {
        env.sees_leader(e, "pod-a").await;
    }
    let start = Instant::now();
    within(env.limit(), "handoff", ea.handoff_to("pod-c"))
        .await
        .unwrap();
    assert!(!first.is_active(), "the old term ended before the release");
    let next = within(env.limit(), "pod-c elected", ec.elected())
        .await
        .unwrap();
    env.assert_between(start.elapsed(), ZERO, ZERO, "pod-c elected at once");
    assert_eq!(next.fencing_token(), first.fencing_token() + 1);
    assert!(!eb.is_leader(), "pod-b left it to the successor");
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
    c.shutdown().await.unwrap();
    log.assert_safe();
    let ended = log
        .spans()
        .into_iter()
        .find(|s| s.term_id == first.id())
        .unwrap();
    assert_eq!(
        ended.reason,
        Some(DeposeReason::HandedOff { to: "pod-c".into() })
    );
}

async fn a_handoff_to_an_absent_successor_falls_back_after_one_lease_duration(env: Env) {
    let (a, b) = (env.replica("pod-a").await, env.replica("pod-b").await);
    let ea = a.election("x").unwrap();
    let first = within(env.limit(), "a leads", ea.elected()).await.unwrap();
    let eb = b.election("x").unwrap();
    let mut status = eb.watch_status();
    within(
        env.limit(),
        "b follows",
        status.wait_for(|s| s.leader.is_some()),
    )
    .await
    .unwrap();
    drop(status);
    let released = Instant::now();
    within(env.limit(), "handoff", ea.handoff_to("pod-gone"))
        .await
        .unwrap();
    let key = ea.lease();
    let record = env.peek(&key).await.unwrap().record;
    assert_eq!(record.handed_to(), Some("pod-gone"));
    // Nobody contends during the grace: one lease duration from the release.
    let leader = leader_of(env.limit(), &[ea.clone(), eb.clone()]).await;
    let elected = released.elapsed();
    env.assert_timer(elected, env.lease(), env.lease(), "normal election resumed");
    let term = [&ea, &eb][leader].elected().await.unwrap();
    assert_eq!(term.fencing_token(), first.fencing_token() + 1);
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

async fn a_handoff_to_ourselves_is_a_no_op(env: Env) {
    let a = env.replica("pod-a").await;
    let ea = a.election("x").unwrap();
    let term = within(env.limit(), "a leads", ea.elected()).await.unwrap();
    ea.handoff_to("pod-a").await.unwrap();
    assert!(term.is_active(), "the same term goes on");
    assert!(ea.is_leader());
    a.shutdown().await.unwrap();
}

async fn only_the_leader_can_hand_off(env: Env) {
    let (a, b) = (env.replica("pod-a").await, env.replica("pod-b").await);
    let ea = a.election("x").unwrap();
    within(env.limit(), "a leads", ea.elected()).await.unwrap();
    let eb = b.election("x").unwrap();
    assert!(matches!(
        eb.handoff_to("pod-a").await,
        Err(Error::NotLeader { .. })
    ));
    // Dsync::handoff starts nothing: an election this replica does not run is not led here.
    assert!(matches!(
        b.handoff("other", "pod-a").await,
        Err(Error::NotLeader { .. })
    ));
    assert_eq!(b.running(), (1, 0), "no election was started by asking");
    // Bad input is a typed error, before anything happens.
    assert!(matches!(
        ea.handoff_to("").await,
        Err(Error::InvalidConfig { .. })
    ));
    assert!(ea.is_leader());
    a.handoff("x", "pod-b").await.unwrap();
    within(env.limit(), "b elected", eb.elected())
        .await
        .unwrap();
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

async fn a_handoff_waits_for_the_work_and_its_drain_is_bounded(env: Env) {
    // Work that finishes after its cancellation: the release waits for it (renewing
    // meanwhile). Work that ignores its cancellation: after the drain timeout the handoff
    // fails, nothing is written, and the lease expires as after a crash.
    let body = env.leases(2);
    let (a, _fa) = env
        .faulty_replica_with("pod-a", |c| c.with_drain_timeout(body * 2))
        .await;
    let b = env.replica("pod-b").await;
    let ea = a.election("x").unwrap();
    let (returned_tx, returned) = oneshot::channel();
    let returned_tx = std::sync::Mutex::new(Some(returned_tx));
    ea.when_elected(move |term| {
        let tx = returned_tx.lock().unwrap().take();
        async move {
            term.cancelled().await;
            tokio::time::sleep(body).await; // finishing up, past its cancellation
            if let Some(tx) = tx {
                let _ = tx.send(Instant::now());
            }
        }
    })
    .unwrap();
    within(env.limit(), "a leads", ea.elected()).await.unwrap();
    let eb = b.election("x").unwrap();
    let start = Instant::now();
    within(env.limit(), "handoff", ea.handoff_to("pod-b"))
        .await
        .unwrap();
    let work_returned = returned.await.unwrap();
    assert!(
        Instant::now() >= work_returned,
        "released after the work returned"
    );
    env.assert_timer(
        start.elapsed(),
        body,
        body,
        "the handoff took the work's time",
    );
    within(env.limit(), "b elected", eb.elected())
        .await
        .unwrap();
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();

    // Work that never returns.
    let (a, _fa) = env
        .faulty_replica_with("pod-a2", |c| c.with_drain_timeout(env.lease()))
        .await;
    let b = env.replica("pod-b2").await;
    let ea = a.election("y").unwrap();
    ea.when_elected(|_term| std::future::pending::<()>())
        .unwrap();
    within(env.limit(), "a leads", ea.elected()).await.unwrap();
    let eb = b.election("y").unwrap();
    let start = Instant::now();
    let result = within(env.limit(), "handoff", ea.handoff_to("pod-b2")).await;
    assert!(
        matches!(result, Err(Error::DrainTimeout { .. })),
        "{result:?}"
    );
    env.assert_timer(
        start.elapsed(),
        env.lease(),
        env.lease(),
        "after the drain timeout",
    );
    let abandoned = Instant::now();
    within(env.limit() + env.leases(2), "b elected", eb.elected())
        .await
        .unwrap();
    env.assert_timer(
        abandoned.elapsed(),
        env.lease() - env.renew(),
        env.lease(),
        "the unreleased lease expired",
    );
    // The stuck work still runs on pod-a2: it does not campaign meanwhile (no second term
    // whose work would overlap the first's).
    tokio::time::sleep(env.leases(2)).await;
    assert!(!ea.is_leader());
    assert!(eb.is_leader());
    drop(a); // its work never returns: not shut down (that would wait for the drain again)
    b.shutdown().await.unwrap();
}

async fn concurrent_handoffs_join_or_are_refused(env: Env) {
    let body = env.retry();
    let a = env.replica("pod-a").await;
    let (b, c) = (env.replica("pod-b").await, env.replica("pod-c").await);
    let ea = a.election("x").unwrap();
    // Work that takes a little while to finish, so the handoffs overlap.
    ea.when_elected(move |term| async move {
        term.cancelled().await;
        tokio::time::sleep(body).await;
    })
    .unwrap();
    within(env.limit(), "a leads", ea.elected()).await.unwrap();
    let (eb, ec) = (b.election("x").unwrap(), c.election("x").unwrap());
    let first = {
        let ea = ea.clone();
        actix::spawn(async move { ea.handoff_to("pod-b").await })
    };
    let same = {
        let ea = ea.clone();
        actix::spawn(async move { ea.handoff_to("pod-b").await })
    };
    dsync::testing::settle().await;
    let other = ea.handoff_to("pod-c").await;
    assert!(
        matches!(&other, Err(Error::HandoffInProgress { to, .. }) if to == "pod-b"),
        "{other:?}"
    );
    within(env.limit(), "first", first).await.unwrap().unwrap();
    within(env.limit(), "joined", same).await.unwrap().unwrap();
    within(env.limit(), "b elected", eb.elected())
        .await
        .unwrap();
    assert!(!ec.is_leader());
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
    c.shutdown().await.unwrap();
}

async fn a_handoff_asked_for_on_the_lease_is_carried_out_and_cleared(env: Env) {
    // What `kubectl annotate lease <name> dsync.io/handoff-to=pod-b` does.
    let (a, b) = (env.replica("pod-a").await, env.replica("pod-b").await);
    let ea = a.election("x").unwrap();
    let first = within(env.limit(), "a leads", ea.elected()).await.unwrap();
    let eb = b.election("x").unwrap();
    let key = ea.lease();
    let mut stored = env.peek(&key).await.unwrap();
    stored.record.handoff_request = Some("pod-b".into());
    env.put(&key, stored.record).await;
    let next = within(env.limit(), "b elected", eb.elected())
        .await
        .unwrap();
    assert!(!first.is_active());
    assert_eq!(next.fencing_token(), first.fencing_token() + 1);
    let record = env.peek(&key).await.unwrap().record;
    assert_eq!(record.holder(), Some("pod-b"));
    assert_eq!(
        record.handoff_request, None,
        "{HANDOFF_REQUEST_ANNOTATION} cleared"
    );
    assert_eq!(record.successor, None, "settled by the acquisition");
    // A request naming the leader itself is cleared by its next renewal, and changes nothing.
    let mut stored = env.peek(&key).await.unwrap();
    stored.record.handoff_request = Some("pod-b".into());
    env.put(&key, stored.record).await;
    tokio::time::sleep(env.retry() * 2).await;
    let record = env.peek(&key).await.unwrap().record;
    assert_eq!(record.handoff_request, None);
    assert!(next.is_active(), "the leader's term goes on");
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

async fn a_handoff_racing_a_crash_of_the_leader_never_gives_two_leaders(env: Env) {
    // The leader is cut off as it hands off: its release never lands. The handoff reports the
    // lost lease, and the successor takes over only once the old lease has expired.
    let (a, fa) = env.faulty_replica("pod-a").await;
    let b = env.replica("pod-b").await;
    let log = TermLog::default();
    let ea = a.election("x").unwrap();
    log.record("pod-a", &ea).unwrap();
    let first = within(env.limit(), "a leads", ea.elected()).await.unwrap();
    log.got("pod-a", &first);
    let eb = b.election("x").unwrap();
    log.record("pod-b", &eb).unwrap();
    fa.partition();
    let cut = Instant::now();
    let result = within(env.limit(), "handoff", ea.handoff_to("pod-b")).await;
    assert!(
        matches!(result, Err(Error::HandoffFailed { .. })),
        "{result:?}"
    );
    assert!(!first.is_active());
    let next = within(env.limit(), "b elected", eb.elected())
        .await
        .unwrap();
    log.got("pod-b", &next);
    env.assert_timer(cut.elapsed(), env.lease(), env.lease(), "after expiry");
    fa.heal();
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
    log.assert_safe();
}

async fn a_handoff_from_inside_the_work_returns_at_once_and_still_happens(env: Env) {
    let (a, b) = (env.replica("pod-a").await, env.replica("pod-b").await);
    let ea = a.election("x").unwrap();
    let (result_tx, result) = oneshot::channel();
    let result_tx = std::sync::Mutex::new(Some(result_tx));
    let inner = ea.clone();
    ea.when_elected(move |term| {
        let (tx, inner) = (result_tx.lock().unwrap().take(), inner.clone());
        async move {
            if let Some(tx) = tx {
                let _ = tx.send(inner.handoff_to("pod-b").await);
            }
            term.cancelled().await;
        }
    })
    .unwrap();
    let result = within(env.limit(), "the work's handoff", result)
        .await
        .unwrap();
    assert!(
        matches!(result, Err(Error::HandoffFromWork { .. })),
        "{result:?}"
    );
    // pod-b starts campaigning only now: the lease is handed to it, so it takes it at once.
    let eb = b.election("x").unwrap();
    let start = Instant::now();
    within(env.limit(), "b elected", eb.elected())
        .await
        .unwrap();
    env.assert_between(start.elapsed(), ZERO, ZERO, "at once");
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}
