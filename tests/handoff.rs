//! Leadership handoff to a named replica (issue 13): `Election::handoff_to`,
//! `Dsync::handoff`, and a handoff asked for on the lease itself (the
//! `dsync.io/handoff-to` annotation).
//!
//! Guarantees under test: the old term ends before the new one begins, the fencing token
//! strictly increases, the successor is elected within one round trip of the release when it
//! is alive and campaigning, and an absent or dead successor blocks leadership for one lease
//! duration at most. Every body runs on `MemoryStore` in paused time (exact instants) and on
//! the real kube-apiserver.
//!
//! Issue 24 (found by random fault schedules), two rules:
//!
//! * `handoff-ends-with-its-term`: a handoff ends with the term it hands off, on every
//!   outcome. A release that could not be written (calls cut off) leaves no successor behind
//!   (a later stop is a plain stop, freeing the lease at once, and handoff requests on the
//!   lease are honoured again); a release whose reply was lost is reported as the store shows
//!   it; a lease lost while the work drains ends the handoff with an error saying so, and the
//!   replica's next term and its stop know nothing of it.
//! * `refusal-during-drain`: a renewal refused (403, 422) while a handed-off term's work
//!   drains marks that term lost before the claim is dropped: whoever is elected while the work
//!   still runs is elected over a term that says it may have lost the lease.
#![cfg(feature = "testing")]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use dsync::election::DeposeReason;
use dsync::record::HANDOFF_REQUEST_ANNOTATION;
use dsync::store::StoreError;
use dsync::testing::{Call, FaultyStore, TermLog, leader_of, settle, within};
use dsync::{Dsync, Election, Error, Term};
use support::backend::Env;
use tokio::sync::oneshot;
use tokio::time::{Instant, sleep};

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
    handoff_ends_with_its_term_failed_release_leaves_no_successor,
    handoff_ends_with_its_term_failed_release_leaves_requests_honoured,
    handoff_ends_with_its_term_lost_reply_is_read_back,
    handoff_ends_with_its_term_lost_reply_to_an_absent_successor_then_a_plain_stop,
    handoff_ends_with_its_term_lease_lost_while_draining,
    refusal_during_drain_403_of_a_handoff_marks_the_draining_term_lost,
    refusal_during_drain_422_of_a_handoff_marks_the_draining_term_lost,
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
        status.wait_for(|s| s.holder.is_some()),
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
    // Bad input is a typed error, before anything happens.
    assert!(matches!(
        ea.handoff_to("").await,
        Err(Error::InvalidConfig { .. })
    ));
    assert!(ea.is_leader());
    ea.handoff_to("pod-b").await.unwrap();
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

// ------------------------------------------------------------------------------------------
// Issue 24: `handoff-ends-with-its-term`, `refusal-during-drain`
// ------------------------------------------------------------------------------------------

/// What a regression test found wrong, reported together at the end (so one run shows every
/// symptom of a defect, not only the first).
#[derive(Default)]
struct Wrong(Vec<String>);

impl Wrong {
    fn check(&mut self, ok: bool, what: impl Into<String>) {
        if !ok {
            self.0.push(what.into());
        }
    }

    fn assert_none(self) {
        assert!(
            self.0.is_empty(),
            "{} things went wrong:\n- {}",
            self.0.len(),
            self.0.join("\n- ")
        );
    }
}

/// pod-a leads `x` alone; a handoff to `pod-gone` is attempted while every call of pod-a's
/// hangs (cut off from the store; its watch goes on), so the release is never written and the
/// handoff fails with the lease lost. Then the calls heal, and pod-a (still campaigning, alone)
/// takes the lease again once it has expired. Returns pod-a, its election and both terms.
async fn leader_again_after_a_failed_handoff(
    env: &Env,
    wrong: &mut Wrong,
) -> (Dsync, FaultyStore, Election, Term, Term) {
    let (a, fa) = env.faulty_replica("pod-a").await;
    let ea = a.election("x").unwrap();
    let first = within(env.limit(), "a leads", ea.elected()).await.unwrap();
    fa.stall(Call::Any);
    let result = within(env.limit(), "the handoff", ea.handoff_to("pod-gone")).await;
    wrong.check(
        result.is_err(),
        format!("a handoff whose release was never written: {result:?}, expected an error"),
    );
    assert!(!first.is_active(), "the handed-off term ended");
    fa.heal();
    let second = within(env.limit(), "a leads again", ea.elected())
        .await
        .unwrap();
    assert_eq!(second.fencing_token(), first.fencing_token() + 1);
    (a, fa, ea, first, second)
}

async fn handoff_ends_with_its_term_failed_release_leaves_no_successor(env: Env) {
    let mut wrong = Wrong::default();
    let (a, _fa, ea, _first, second) = leader_again_after_a_failed_handoff(&env, &mut wrong).await;
    let key = ea.lease();
    let b = env.replica("pod-b").await;
    let eb = b.election("x").unwrap();
    env.sees_leader(&eb, "pod-a").await;
    // A plain stop of pod-a's new term: a plain release, which pod-b takes at once.
    let start = Instant::now();
    let stopped = within(env.limit(), "the stop", ea.stop()).await;
    wrong.check(stopped.is_ok(), format!("the stop: {stopped:?}"));
    assert!(!second.is_active());
    let record = env.peek(&key).await.unwrap().record;
    wrong.check(
        record.handed_to().is_none(),
        format!(
            "a plain stop wrote a release naming {:?} as the successor (the failed handoff's), \
             with a lease duration of {:?} s",
            record.handed_to(),
            record.lease_duration_seconds
        ),
    );
    within(env.limit(), "b elected", eb.elected())
        .await
        .unwrap();
    let elected = start.elapsed();
    wrong.check(
        elected <= env.slack(),
        format!("pod-b was elected {elected:?} after the stop, not at once"),
    );
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
    wrong.assert_none();
}

async fn handoff_ends_with_its_term_failed_release_leaves_requests_honoured(env: Env) {
    let mut wrong = Wrong::default();
    let (a, _fa, ea, _first, second) = leader_again_after_a_failed_handoff(&env, &mut wrong).await;
    let key = ea.lease();
    let b = env.replica("pod-b").await;
    let eb = b.election("x").unwrap();
    env.sees_leader(&eb, "pod-a").await;
    // An operator asks for a handoff to pod-b on the lease: pod-a carries it out.
    let requested = b.request_handoff("x", "pod-b").await.unwrap();
    assert_eq!(requested.holder, "pod-a");
    let elected = tokio::time::timeout(env.leases(2), eb.elected()).await;
    match elected {
        Ok(term) => {
            let term = term.unwrap();
            assert!(!second.is_active());
            assert_eq!(term.fencing_token(), second.fencing_token() + 1);
            let record = env.peek(&key).await.unwrap().record;
            assert_eq!(record.holder(), Some("pod-b"));
            assert_eq!(record.handoff_request, None);
        }
        Err(_) => wrong.check(
            false,
            format!(
                "the handoff requested on the lease was ignored for {:?}: pod-a still leads \
                 (active: {}), the lease still asks for pod-b ({:?})",
                env.leases(2),
                second.is_active(),
                env.peek(&key).await.unwrap().record.requested_handoff()
            ),
        ),
    }
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
    wrong.assert_none();
}

async fn handoff_ends_with_its_term_lost_reply_is_read_back(env: Env) {
    // The release naming pod-b lands, but its reply is lost: the handoff did happen, and is
    // reported as the store shows it.
    let mut wrong = Wrong::default();
    let (a, fa) = env.faulty_replica("pod-a").await;
    let b = env.replica("pod-b").await;
    let log = TermLog::default();
    let ea = a.election("x").unwrap();
    log.record("pod-a", &ea).unwrap();
    let first = within(env.limit(), "a leads", ea.elected()).await.unwrap();
    let eb = b.election("x").unwrap();
    log.record("pod-b", &eb).unwrap();
    env.sees_leader(&eb, "pod-a").await;
    fa.lose_next_reply(Call::Replace);
    let result = within(env.limit(), "the handoff", ea.handoff_to("pod-b")).await;
    wrong.check(
        result.is_ok(),
        format!("the release naming pod-b landed (its reply was lost), but: {result:?}"),
    );
    assert!(!first.is_active());
    let next = within(env.limit(), "b elected", eb.elected())
        .await
        .unwrap();
    assert_eq!(next.fencing_token(), first.fencing_token() + 1);
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
    log.assert_safe();
    wrong.assert_none();
}

async fn handoff_ends_with_its_term_lost_reply_to_an_absent_successor_then_a_plain_stop(env: Env) {
    // The release naming pod-gone lands, its reply lost: the handoff is done (Ok). pod-gone
    // never comes; pod-a, campaigning alone, takes the lease again after the grace. Its next
    // stop is a plain stop: pod-b, campaigning by then, is elected at once.
    let mut wrong = Wrong::default();
    let (a, fa) = env.faulty_replica("pod-a").await;
    let ea = a.election("x").unwrap();
    let key = ea.lease();
    let first = within(env.limit(), "a leads", ea.elected()).await.unwrap();
    fa.lose_next_reply(Call::Replace);
    let result = within(env.limit(), "the handoff", ea.handoff_to("pod-gone")).await;
    wrong.check(
        result.is_ok(),
        format!("the release naming pod-gone landed (its reply was lost), but: {result:?}"),
    );
    let record = env.peek(&key).await.unwrap().record;
    assert_eq!(record.handed_to(), Some("pod-gone"), "the release landed");
    let second = within(env.limit(), "a leads again", ea.elected())
        .await
        .unwrap();
    assert_eq!(second.fencing_token(), first.fencing_token() + 1);
    let b = env.replica("pod-b").await;
    let eb = b.election("x").unwrap();
    env.sees_leader(&eb, "pod-a").await;
    let start = Instant::now();
    let stopped = within(env.limit(), "the stop", ea.stop()).await;
    wrong.check(stopped.is_ok(), format!("the stop: {stopped:?}"));
    let record = env.peek(&key).await.unwrap().record;
    wrong.check(
        record.handed_to().is_none(),
        format!(
            "a plain stop wrote a release naming {:?} as the successor",
            record.handed_to()
        ),
    );
    within(env.limit(), "b elected", eb.elected())
        .await
        .unwrap();
    let elected = start.elapsed();
    wrong.check(
        elected <= env.slack(),
        format!("pod-b was elected {elected:?} after the stop, not at once"),
    );
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
    wrong.assert_none();
}

async fn handoff_ends_with_its_term_lease_lost_while_draining(env: Env) {
    // The handed-off term's work returns two lease durations after its cancellation; its
    // renewals fail meanwhile (503), so the lease is lost during the drain (the renew
    // deadline passes). The handoff ends with that term: an error saying the lease was lost,
    // by the time the work returns at the latest. pod-a, campaigning alone, then takes the
    // lease again as a new term, and stopping that term (after the old handoff's drain
    // timeout would have passed) is a plain stop that frees the lease.
    let mut wrong = Wrong::default();
    let linger = env.leases(2);
    let (a, fa) = env
        .faulty_replica_with("pod-a", |c| c.with_drain_timeout(env.leases(3)))
        .await;
    let ea = a.election("x").unwrap();
    let key = ea.lease();
    let (returned_tx, returned) = oneshot::channel();
    let first_work = std::sync::Mutex::new(Some((returned_tx, fa.clone())));
    ea.when_elected(move |term| {
        let first = first_work.lock().unwrap().take();
        async move {
            term.cancelled().await;
            if let Some((returned_tx, fa)) = first {
                sleep(linger).await; // finishing up, long past its cancellation
                fa.clear(); // the store answers again from now on
                let _ = returned_tx.send(Instant::now());
            }
        }
    })
    .unwrap();
    let first = within(env.limit(), "a leads", ea.elected()).await.unwrap();
    fa.fail_always(Call::Replace, || StoreError::Unavailable {
        message: "injected: 503".into(),
        source: None,
    });
    let t0 = Instant::now();
    let handoff = {
        let ea = ea.clone();
        actix::spawn(async move { ea.handoff_to("pod-b").await })
    };
    within(env.limit(), "the work returns", returned)
        .await
        .unwrap();
    assert!(first.lost(), "the lease was lost under the draining work");
    let handed_off = tokio::time::timeout(env.retry() + env.slack(), handoff).await;
    match &handed_off {
        Ok(Ok(Err(e))) if e.to_string().contains("lost") => {}
        Ok(Ok(other)) => wrong.check(
            false,
            format!("the handoff whose lease was lost during its drain returned {other:?}"),
        ),
        Ok(Err(join)) => panic!("{join}"),
        Err(_) => wrong.check(
            false,
            format!(
                "the handoff whose lease was lost during its drain had not returned {:?} after \
                 it began (its work returned {:?} after)",
                t0.elapsed(),
                linger
            ),
        ),
    }
    // pod-a campaigns again (nobody else does): its next term.
    let second = within(env.limit(), "a leads again", ea.elected())
        .await
        .unwrap();
    assert_eq!(second.fencing_token(), first.fencing_token() + 1);
    // It serves past the instant the old handoff's drain timeout would end, then stops.
    sleep(env.leases(2)).await;
    assert!(second.is_active());
    let stopped = within(env.limit(), "the stop", ea.stop()).await;
    wrong.check(
        stopped.is_ok(),
        format!("the stop of the next term: {stopped:?}, expected a plain stop (Ok)"),
    );
    let record = env.peek(&key).await.unwrap().record;
    wrong.check(
        record.holder() != Some("pod-a") && record.handed_to().is_none(),
        format!(
            "after the stop the lease names holder {:?}, successor {:?}",
            record.holder(),
            record.handed_to()
        ),
    );
    a.shutdown().await.unwrap();
    let holder = env.holder(&key).await;
    wrong.check(
        holder.as_deref() != Some("pod-a"),
        "after pod-a's shutdown the lease still names it",
    );
    wrong.assert_none();
}

async fn refusal_during_drain_403_of_a_handoff_marks_the_draining_term_lost(env: Env) {
    refusal_during_the_drain_of_a_handoff(env, support::backend::refused_403).await;
}

async fn refusal_during_drain_422_of_a_handoff_marks_the_draining_term_lost(env: Env) {
    refusal_during_the_drain_of_a_handoff(env, support::backend::refused_422).await;
}

/// pod-a hands `x` to pod-b; the handed-off term's work keeps running (until the test lets
/// it return); every renewal of pod-a's is refused (`refusal`) meanwhile. pod-b may be
/// elected while that work runs only over a term that is marked lost.
async fn refusal_during_the_drain_of_a_handoff(
    env: Env,
    refusal: impl Fn() -> StoreError + Send + Sync + 'static,
) {
    let mut wrong = Wrong::default();
    let (a, fa) = env
        .faulty_replica_with("pod-a", |c| c.with_drain_timeout(env.leases(4)))
        .await;
    let b = env.replica("pod-b").await;
    let log = TermLog::default();
    let ea = a.election("x").unwrap();
    log.record("pod-a", &ea).unwrap();
    let (finish_tx, finish_rx) = oneshot::channel::<()>();
    let running = Arc::new(AtomicBool::new(false));
    let first_work = std::sync::Mutex::new(Some((finish_rx, running.clone())));
    ea.when_elected(move |term| {
        let first = first_work.lock().unwrap().take();
        async move {
            term.cancelled().await;
            if let Some((finish, running)) = first {
                running.store(true, Ordering::SeqCst);
                let _ = finish.await;
                running.store(false, Ordering::SeqCst);
            }
        }
    })
    .unwrap();
    let first = within(env.limit(), "a leads", ea.elected()).await.unwrap();
    let eb = b.election("x").unwrap();
    log.record("pod-b", &eb).unwrap();
    env.sees_leader(&eb, "pod-a").await;
    let handoff = {
        let ea = ea.clone();
        actix::spawn(async move { ea.handoff_to("pod-b").await })
    };
    within(env.limit(), "the term is cancelled", first.cancelled()).await;
    settle().await;
    assert!(running.load(Ordering::SeqCst), "the work drains");
    let writes = fa.calls(Call::Replace);
    fa.fail_always(Call::Replace, refusal);
    within(
        env.limit(),
        "a renewal is refused",
        fa.called(Call::Replace, writes + 1),
    )
    .await;
    settle().await;
    // Nobody elected within two lease durations (while the work runs) is safe too.
    if let Ok(next) = tokio::time::timeout(env.leases(2), eb.elected()).await {
        let next = next.unwrap();
        log.got("pod-b", &next);
        if running.load(Ordering::SeqCst) {
            wrong.check(
                first.lost(),
                format!(
                    "pod-b was elected (token {}) while pod-a's handed-off term's work still \
                         runs, but that term (token {}) is not marked lost",
                    next.fencing_token(),
                    first.fencing_token()
                ),
            );
        }
        assert!(next.fencing_token() > first.fencing_token());
    }
    fa.clear();
    let _ = finish_tx.send(());
    let result = within(env.limit(), "the handoff returns", handoff)
        .await
        .unwrap();
    wrong.check(
        !first.is_active(),
        format!("the handoff returned {result:?} while its term is active"),
    );
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
    log.assert_safe();
    wrong.assert_none();
}
