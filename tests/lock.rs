//! Locks, each test written once and run on both stores (`memory::` and `kube::`):
//! `MemoryStore` in paused time (timing 15/10/2 s, exact instants) and `KubeStore` against the
//! real kube-apiserver (timing 2/1.5/0.5 s, with slack for round trips). Durations are in units
//! of the timing; see `support::backend`. Every test here runs on both stores.
#![cfg(feature = "testing")]

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use dsync::testing::{Call, settle, within};
use dsync::{Error, StoreError};
use support::backend::Env;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

crate::on_both_stores!(
    unlock_of_a_fresh_lock_is_not_locked,
    try_lock_then_again_then_unlock_then_unlock_again,
    two_replicas_alternate,
    a_blocking_lock_completes_as_soon_as_the_holder_unlocks,
    lock_with_cancel_gives_up_when_cancelled,
    cancelling_the_token_after_locking_does_not_release,
    lock_timeout_times_out,
    with_lock_excludes_others_while_f_runs_and_unlocks_after,
    with_try_lock_fails_fast_when_held,
    two_handles_in_one_replica_exclude_each_other,
    local_waiters_are_served_first_come_first_served,
    a_crashed_holders_lock_frees_after_the_lease_duration,
    with_lock_is_told_through_the_term_and_reports_the_loss_with_the_output,
    with_lock_stopped_while_its_body_runs_is_not_a_loss,
    try_lock_and_unlock_fail_in_bounded_time_when_the_store_is_unreachable,
    a_dropped_handle_releases_its_lock,
    a_lock_left_by_an_earlier_incarnation_can_be_unlocked,
    store_errors_reach_the_caller_typed,
    a_held_lock_is_renewed_and_never_expires,
    shutdown_releases_held_locks_and_fails_waiters,
    shutdown_finishes_while_a_store_call_hangs,
    shutdown_finishes_when_the_last_write_loses_its_compare_and_swap,
);

fn holder_of(err: &Error) -> &str {
    match err {
        Error::AlreadyLocked { holder, .. } => holder,
        other => panic!("expected AlreadyLocked, got {other:?}"),
    }
}

async fn holder_in_store(env: &Env, lock: &dsync::Lock) -> Option<String> {
    env.holder(&lock.lease()).await
}

async fn unlock_of_a_fresh_lock_is_not_locked(env: Env) {
    let d = env.replica("pod-a").await;
    let l = d.lock("x").unwrap();
    let expected = format!("{}/unscoped.lock.x", env.namespace);
    assert_eq!(l.lease().to_string(), expected);
    let err = l.unlock().await.unwrap_err();
    assert!(
        matches!(&err, Error::NotLocked { lock } if *lock == expected),
        "{err:?}"
    );
    d.shutdown().await.unwrap();
}

async fn try_lock_then_again_then_unlock_then_unlock_again(env: Env) {
    let d = env.replica("pod-a").await;
    let l = d.lock("x").unwrap();
    let term = l.try_lock().await.unwrap();
    assert!(term.is_active());
    assert_eq!(holder_in_store(&env, &l).await.as_deref(), Some("pod-a"));
    // Not reentrant, even for the same handle.
    assert_eq!(holder_of(&l.try_lock().await.unwrap_err()), "pod-a");
    l.unlock().await.unwrap();
    assert!(!term.is_active(), "unlock ends the term");
    assert_eq!(holder_in_store(&env, &l).await, None, "released");
    assert!(matches!(l.unlock().await, Err(Error::NotLocked { .. })));
    // Lock / TryLock / Unlock / Unlock (the seed's sequence).
    l.lock().await.unwrap();
    assert!(matches!(
        l.try_lock().await,
        Err(Error::AlreadyLocked { .. })
    ));
    l.unlock().await.unwrap();
    assert!(matches!(l.unlock().await, Err(Error::NotLocked { .. })));
    d.shutdown().await.unwrap();
}

async fn two_replicas_alternate(env: Env) {
    let (a, b) = (env.replica("pod-a").await, env.replica("pod-b").await);
    let (la, lb) = (a.lock("x").unwrap(), b.lock("x").unwrap());
    let mut tokens = Vec::new();
    for round in 0..4 {
        let (mine, theirs, me) = if round % 2 == 0 {
            (&la, &lb, "pod-a")
        } else {
            (&lb, &la, "pod-b")
        };
        tokens.push(mine.try_lock().await.unwrap().fencing_token());
        assert_eq!(holder_of(&theirs.try_lock().await.unwrap_err()), me);
        let err = theirs.unlock().await.unwrap_err();
        assert!(
            matches!(&err, Error::NotLockHolder { holder: Some(h), .. } if h == me),
            "{err:?}"
        );
        mine.unlock().await.unwrap();
    }
    assert!(tokens.windows(2).all(|w| w[0] < w[1]), "{tokens:?}");
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

async fn a_blocking_lock_completes_as_soon_as_the_holder_unlocks(env: Env) {
    let (a, b) = (env.replica("pod-a").await, env.replica("pod-b").await);
    let (la, lb) = (a.lock("x").unwrap(), b.lock("x").unwrap());
    let ta = la.lock().await.unwrap();
    let waiter = actix::spawn(async move { (lb.lock().await, Instant::now()) });
    // Eight lease durations of renewals (120 s on memory).
    tokio::time::sleep(env.leases(8)).await;
    assert!(!waiter.is_finished(), "A renews: B must keep waiting");
    assert!(ta.is_active());
    let unlocked = Instant::now();
    la.unlock().await.unwrap();
    let (tb, got) = within(env.limit(), "b locks", waiter).await.unwrap();
    let tb = tb.unwrap();
    env.assert_between(
        got - unlocked,
        Duration::ZERO,
        Duration::ZERO,
        "handoff through the watch",
    );
    assert!(tb.fencing_token() > ta.fencing_token());
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

async fn lock_with_cancel_gives_up_when_cancelled(env: Env) {
    let (a, b) = (env.replica("pod-a").await, env.replica("pod-b").await);
    let (la, lb) = (a.lock("x").unwrap(), b.lock("x").unwrap());
    la.lock().await.unwrap();
    let cancel = CancellationToken::new();
    let c = cancel.clone();
    let waiter = actix::spawn(async move { lb.lock_with_cancel(c).await });
    tokio::time::sleep(env.retry() * 3 / 2).await;
    cancel.cancel();
    let err = within(env.limit(), "cancelled", waiter)
        .await
        .unwrap()
        .unwrap_err();
    assert!(matches!(err, Error::Cancelled { .. }), "{err:?}");
    // The cancelled waiter is gone: after A unlocks, nobody takes the lock.
    la.unlock().await.unwrap();
    tokio::time::sleep(env.leases(2)).await;
    assert_eq!(holder_in_store(&env, &la).await, None);
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

async fn cancelling_the_token_after_locking_does_not_release(env: Env) {
    let (a, b) = (env.replica("pod-a").await, env.replica("pod-b").await);
    let (la, lb) = (a.lock("x").unwrap(), b.lock("x").unwrap());
    let cancel = CancellationToken::new();
    let term = la.lock_with_cancel(cancel.clone()).await.unwrap();
    cancel.cancel();
    tokio::time::sleep(env.leases(2)).await;
    assert!(term.is_active());
    assert_eq!(holder_of(&lb.try_lock().await.unwrap_err()), "pod-a");
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

async fn lock_timeout_times_out(env: Env) {
    let (a, b) = (env.replica("pod-a").await, env.replica("pod-b").await);
    let (la, lb) = (a.lock("x").unwrap(), b.lock("x").unwrap());
    la.lock().await.unwrap();
    let start = Instant::now();
    let limit = env.retry() * 5 / 2; // 5 s on memory
    let err = lb.lock_timeout(limit).await.unwrap_err();
    assert!(
        matches!(&err, Error::Timeout { after, .. } if *after == limit),
        "{err:?}"
    );
    env.assert_timer(start.elapsed(), limit, limit, "timed out");
    la.unlock().await.unwrap();
    // Free now: a timeout on a free lock succeeds at once.
    lb.lock_timeout(limit).await.unwrap();
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

async fn with_lock_excludes_others_while_f_runs_and_unlocks_after(env: Env) {
    let (a, b) = (env.replica("pod-a").await, env.replica("pod-b").await);
    let (la, lb) = (a.lock("x").unwrap(), b.lock("x").unwrap());
    let lb2 = lb.clone();
    let hold = env.leases(3); // several leases: renewed meanwhile
    let out = la
        .with_lock(|term| async move {
            assert!(term.is_active());
            tokio::time::sleep(hold).await; // renewed meanwhile
            let err = lb2.try_lock().await.unwrap_err();
            (term.fencing_token(), err.to_string())
        })
        .await
        .unwrap();
    assert!(out.1.contains("already locked"), "{}", out.1);
    assert_eq!(holder_in_store(&env, &la).await, None);
    let t = lb.try_lock().await.unwrap();
    assert!(t.fencing_token() > out.0);
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

async fn with_try_lock_fails_fast_when_held(env: Env) {
    let (a, b) = (env.replica("pod-a").await, env.replica("pod-b").await);
    let (la, lb) = (a.lock("x").unwrap(), b.lock("x").unwrap());
    la.lock().await.unwrap();
    let err = lb
        .with_try_lock(|_| async { unreachable!() })
        .await
        .map_err(dsync::Error::from)
        .unwrap_err();
    assert_eq!(holder_of(&err), "pod-a");
    la.unlock().await.unwrap();
    assert_eq!(lb.with_try_lock(|_| async { 7 }).await.unwrap(), 7);
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

async fn two_handles_in_one_replica_exclude_each_other(env: Env) {
    let d = env.replica("pod-a").await;
    let (h1, h2) = (d.lock("x").unwrap(), d.lock("x").unwrap());
    h1.lock().await.unwrap();
    assert_eq!(holder_of(&h2.try_lock().await.unwrap_err()), "pod-a");
    let err = h2.unlock().await.unwrap_err();
    assert!(matches!(err, Error::NotLockHolder { .. }), "{err:?}");
    // A clone is the same handle.
    h1.clone().unlock().await.unwrap();
    h2.try_lock().await.unwrap();
    d.shutdown().await.unwrap();
}

async fn local_waiters_are_served_first_come_first_served(env: Env) {
    let d = env.replica("pod-a").await;
    let first = d.lock("x").unwrap();
    first.lock().await.unwrap();
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut waiters = Vec::new();
    let hold = env.retry() / 2;
    for i in 0..4 {
        let l = d.lock("x").unwrap();
        let order = order.clone();
        waiters.push(actix::spawn(async move {
            l.lock().await.unwrap();
            order.lock().unwrap().push(i);
            tokio::time::sleep(hold).await;
            l.unlock().await.unwrap();
        }));
        // Queue them in a known order.
        settle().await;
        let mut status = first.watch_status();
        within(
            env.limit(),
            "queued",
            status.wait_for(|s| s.waiters == i + 1),
        )
        .await
        .unwrap();
    }
    first.unlock().await.unwrap();
    for w in waiters {
        within(env.limit(), "waiter", w).await.unwrap();
    }
    assert_eq!(*order.lock().unwrap(), vec![0, 1, 2, 3]);
    d.shutdown().await.unwrap();
}

async fn a_crashed_holders_lock_frees_after_the_lease_duration(env: Env) {
    let (a, fa) = env.faulty_replica("pod-a").await;
    let b = env.replica("pod-b").await;
    let (la, lb) = (a.lock("x").unwrap(), b.lock("x").unwrap());
    let ta = la.lock().await.unwrap();
    // Mid-way between two renewals (5 s on memory).
    tokio::time::sleep(env.retry() * 5 / 2).await;
    let mut status = lb.watch_status();
    // The task hands the handle back: a dropped handle would give the lock up at once.
    let waiter = actix::spawn(async move {
        let got = lb.lock().await.map(|t| (t, Instant::now()));
        (lb, got)
    });
    // B is waiting (it has read the lease) before A crashes.
    within(
        env.limit(),
        "b waits",
        status.wait_for(|s| s.waiters == 1 && s.holder.is_some()),
    )
    .await
    .unwrap();
    let crash = Instant::now();
    fa.partition();
    let (_lb, got) = within(env.limit(), "b locks", waiter).await.unwrap();
    let (tb, got) = got.unwrap();
    // B saw A's last renewal at most one retry period before the crash, and takes over one
    // lease duration after seeing it: 13..=15 s on memory.
    env.assert_between(
        got - crash,
        env.lease() - env.retry(),
        env.lease(),
        "takeover",
    );
    assert!(!ta.is_active(), "A's term ended at its renew deadline");
    assert!(tb.fencing_token() > ta.fencing_token());
    // A comes back and finds the lock taken.
    fa.heal();
    let err = la.unlock().await.unwrap_err();
    assert!(
        matches!(&err, Error::NotLockHolder { holder: Some(h), .. } if h == "pod-b"),
        "{err:?}"
    );
    b.shutdown().await.unwrap();
    a.shutdown().await.unwrap();
}

async fn with_lock_is_told_through_the_term_and_reports_the_loss_with_the_output(env: Env) {
    // The body is told through its term, and its output, computed partly without the lock,
    // is not handed back as a success: it comes back in `WithLockError::Lost`.
    let (a, fa) = env.faulty_replica("pod-a").await;
    let la = a.lock("x").unwrap();
    let fa2 = fa.clone();
    let err = la
        .with_lock(|term| async move {
            let start = Instant::now();
            fa2.partition();
            term.cancelled().await;
            assert!(
                term.lost(),
                "the renew deadline passed: the lease may be gone"
            );
            (start.elapsed(), "stopped cleanly", term.fencing_token())
        })
        .await
        .unwrap_err();
    let dsync::lock::WithLockError::Lost {
        lock,
        fencing_token,
        output: (lost_after, text, token),
    } = err
    else {
        panic!("expected WithLockError::Lost, got {err:?}");
    };
    assert_eq!(lock, la.lease().to_string());
    assert_eq!((text, fencing_token), ("stopped cleanly", token));
    env.assert_timer(
        lost_after,
        Duration::ZERO,
        env.renew(),
        "cancelled by the renew deadline",
    );
    fa.heal();
    // Through `?`, a loss is a typed error naming the lock.
    let lost: dsync::Result<()> = async {
        la.with_lock(|_| async {
            fa.partition();
            tokio::time::sleep(env.lease()).await;
        })
        .await?;
        Ok(())
    }
    .await;
    assert!(
        matches!(lost, Err(dsync::Error::LockLost { .. })),
        "{lost:?}"
    );
    a.shutdown().await.unwrap();
}

async fn with_lock_stopped_while_its_body_runs_is_not_a_loss(env: Env) {
    // A stop cancels the term but keeps renewing until the body returns: the output was
    // computed under the lock, so it is Ok, and the term does not count as lost.
    let a = env.replica("pod-a").await;
    let la = a.lock("x").unwrap();
    let (started_tx, started) = tokio::sync::oneshot::channel();
    let body = {
        let la = la.clone();
        actix::spawn(async move {
            la.with_lock(|term| async move {
                started_tx.send(()).unwrap();
                term.cancelled().await;
                (term.lost(), 42)
            })
            .await
        })
    };
    within(env.limit(), "body started", started).await.unwrap();
    la.stop().await.unwrap();
    let (lost, output) = within(env.limit(), "with_lock", body)
        .await
        .unwrap()
        .unwrap();
    assert!(!lost);
    assert_eq!(output, 42);
    a.shutdown().await.unwrap();
}

async fn try_lock_and_unlock_fail_in_bounded_time_when_the_store_is_unreachable(env: Env) {
    let (a, fa) = env.faulty_replica("pod-a").await;
    let l = a.lock("x").unwrap();
    fa.partition();
    let start = Instant::now();
    let err = within(env.limit(), "try_lock", l.try_lock())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err:?}");
    let err = within(env.limit(), "unlock", l.unlock()).await.unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err:?}");
    env.assert_between(
        start.elapsed(),
        Duration::ZERO,
        env.leases(2),
        "both failed in bounded time",
    );
    fa.heal();
    l.try_lock().await.unwrap();
    a.shutdown().await.unwrap();
}

async fn a_dropped_handle_releases_its_lock(env: Env) {
    let (a, b) = (env.replica("pod-a").await, env.replica("pod-b").await);
    let la = a.lock("x").unwrap();
    let term = la.lock().await.unwrap();
    drop(la);
    let lb = b.lock("x").unwrap();
    let start = Instant::now();
    lb.lock().await.unwrap();
    assert!(!term.is_active());
    env.assert_timer(
        start.elapsed(),
        Duration::ZERO,
        env.retry(),
        "released at the next renewal",
    );
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

async fn a_lock_left_by_an_earlier_incarnation_can_be_unlocked(env: Env) {
    // The seed's Unlock cleared any lease held under this pod's name; so does ours when this
    // replica holds nothing locally (e.g. after a restart with the same identity), once the
    // record has not changed for a renew deadline: before that it may be a live twin's (rule
    // `one-identity`).
    let (old, fa) = env.faulty_replica("pod-a").await;
    old.lock("x").unwrap().lock().await.unwrap();
    fa.partition(); // the old process dies holding it
    let new = env.replica("pod-a").await;
    let l = new.lock("x").unwrap();
    let err = l.unlock().await.unwrap_err();
    assert!(
        matches!(&err, Error::InvalidState { reason, .. } if reason.contains("renew deadline")),
        "{err:?}"
    );
    tokio::time::sleep(env.renew()).await;
    l.unlock().await.unwrap();
    assert_eq!(holder_in_store(&env, &l).await, None);
    new.shutdown().await.unwrap();
}

async fn store_errors_reach_the_caller_typed(env: Env) {
    let (a, fa) = env.faulty_replica("pod-a").await;
    let l = a.lock("x").unwrap();
    fa.fail_next(Call::Get, || StoreError::Forbidden {
        verb: "get".into(),
        resource: "leases.coordination.k8s.io \"ns/unscoped.lock.x\"".into(),
        message: "denied".into(),
    });
    let err = l.try_lock().await.unwrap_err();
    assert!(
        matches!(&err, Error::Forbidden { verb, .. } if verb == "get"),
        "{err:?}"
    );
    // The next call works again.
    l.try_lock().await.unwrap();
    l.unlock().await.unwrap();
    fa.fail_next(Call::Create, || StoreError::Unavailable {
        message: "connection reset".into(),
        source: None,
    });
    let other = a.lock("y").unwrap();
    let err = other.try_lock().await.unwrap_err();
    assert!(matches!(err, Error::Store { .. }), "{err:?}");
    assert!(
        env.peek(&other.lease()).await.is_none(),
        "nothing was written"
    );
    a.shutdown().await.unwrap();
}

async fn a_held_lock_is_renewed_and_never_expires(env: Env) {
    let (a, b) = (env.replica("pod-a").await, env.replica("pod-b").await);
    let (la, lb) = (a.lock("x").unwrap(), b.lock("x").unwrap());
    let term = la.lock().await.unwrap();
    // Ten rounds of four lease durations on memory (10 × 60 s); fewer rounds on kube.
    for _ in 0..env.rounds(10) {
        tokio::time::sleep(env.leases(4)).await;
        assert!(term.is_active());
        assert_eq!(holder_of(&lb.try_lock().await.unwrap_err()), "pod-a");
    }
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

async fn shutdown_releases_held_locks_and_fails_waiters(env: Env) {
    let a = env.replica("pod-a").await;
    let held = a.lock("x").unwrap();
    let term = held.lock().await.unwrap();
    let waiter_handle = a.lock("x").unwrap();
    let mut status = held.watch_status();
    let waiter = actix::spawn(async move { waiter_handle.lock().await });
    within(env.limit(), "queued", status.wait_for(|s| s.waiters == 1))
        .await
        .unwrap();
    a.shutdown().await.unwrap();
    assert!(!term.is_active());
    assert_eq!(holder_in_store(&env, &held).await, None);
    let err = within(env.limit(), "waiter answered", waiter)
        .await
        .unwrap()
        .unwrap_err();
    assert!(matches!(err, Error::Stopped { .. }), "{err:?}");
    assert!(matches!(held.try_lock().await, Err(Error::Stopped { .. })));
    assert!(matches!(a.lock("z"), Err(Error::Stopped { .. })));
    assert!(matches!(a.election("z"), Err(Error::Stopped { .. })));
}

async fn shutdown_finishes_while_a_store_call_hangs(env: Env) {
    let (a, fa) = env.faulty_replica("pod-a").await;
    let l = a.lock("x").unwrap();
    fa.partition();
    let waiter = actix::spawn(async move { l.lock().await });
    within(env.limit(), "read sent", fa.called(Call::Get, 1)).await;
    settle().await;
    assert_eq!(
        fa.calls(Call::Get),
        1,
        "the read for the lock is in flight, hanging"
    );
    let start = Instant::now();
    within(env.limit(), "shutdown", a.shutdown()).await.unwrap();
    env.assert_timer(start.elapsed(), Duration::ZERO, env.renew(), "shut down");
    let err = within(env.limit(), "waiter", waiter)
        .await
        .unwrap()
        .unwrap_err();
    assert!(matches!(err, Error::Stopped { .. }), "{err:?}");
}

/// Regression (found by `tests/safety.rs`, seed 4): a stopping lock whose last call in flight
/// was an acquire that lost its compare-and-swap never answered the shutdown.
async fn shutdown_finishes_when_the_last_write_loses_its_compare_and_swap(env: Env) {
    let (a, fa) = env.faulty_replica("pod-a").await;
    let l = a.lock("x").unwrap();
    let lease = l.lease();
    // Each leg of a call takes a retry period: the stop arrives while the create is in flight.
    fa.set_latency(env.retry());
    fa.fail_next(Call::Create, move || StoreError::AlreadyExists {
        lease: lease.to_string(),
    });
    let waiter = actix::spawn(async move { l.lock().await });
    within(env.limit(), "create sent", fa.called(Call::Create, 1)).await;
    within(env.limit(), "shutdown", a.shutdown()).await.unwrap();
    let err = within(env.limit(), "waiter", waiter)
        .await
        .unwrap()
        .unwrap_err();
    assert!(matches!(err, Error::Stopped { .. }), "{err:?}");
}
