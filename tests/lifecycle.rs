//! One lease lifecycle for every face (elections and locks): regression tests, each named
//! after the rule it protects (issue 11).
//!
//! The rules: a term is cancelled before any write that gives its lease up; the lease is
//! released only after the work the term guards has returned (drain bounded); a grant nobody
//! received is given back; every outcome of every store call lets a pending stop finish; a stop
//! from inside the work takes effect without waiting for itself; every write waits its
//! backoff; a term ends on its own deadline even when nothing runs to end it.
//!
//! The tests in `on_both_stores!` run on `MemoryStore` in paused time (exact instants) and on
//! the real kube-apiserver; the ones about threads and Systems run in real time on memory,
//! because blocking a thread is wall-clock by nature.
#![cfg(feature = "testing")]

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::prelude::*;
use dsync::config::LeaseThread;
use dsync::election::DeposeReason;
use dsync::store::{LeaseKey, LeaseRecord, LeaseStore, StoreError, WatchEvent};
use dsync::testing::{Call, TermLog, settle, within};
use dsync::{Config, Dsync, Election, Error, LeaderOnly, MemoryStore, Term};
use futures::StreamExt;
use support::backend::{Env, kube_timing};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

const ZERO: Duration = Duration::ZERO;

crate::on_both_stores!(
    a_term_is_cancelled_before_the_write_that_gives_its_lease_up,
    a_lock_is_released_only_after_its_with_lock_body_returned,
    an_election_is_released_only_after_its_work_returned,
    a_stop_while_a_lost_term_drains_still_waits_for_its_work,
    a_grant_nobody_received_is_given_back,
    every_outcome_of_a_store_call_lets_a_pending_stop_finish,
    a_stop_from_inside_the_work_takes_effect_without_waiting_for_itself,
    a_leader_only_actor_can_stop_its_own_election,
    work_that_never_returns_is_abandoned_after_the_drain_timeout_and_its_lease_expires,
    every_write_waits_its_backoff_releases_included,
    a_panicking_when_elected_future_ends_its_term,
    one_identity_a_twin_never_holds_with_the_live_holder,
    restart_backoff_grows_under_a_persistent_refusal,
    lock_on_a_handle_that_holds_the_lock_is_an_error_not_a_wait,
    try_lock_is_not_refused_because_of_abandoned_waiters,
    cancelled_and_timed_out_waiters_leave_the_queue_at_once,
    the_supervisor_lists_every_lease_actor_live_and_stopping,
);

/// Resolves, with the instant, when `term` stops being active as its holder sees it.
fn ended_at(term: &Term) -> tokio::task::JoinHandle<Instant> {
    let term = term.clone();
    actix::spawn(async move {
        term.cancelled().await;
        Instant::now()
    })
}

fn unavailable() -> StoreError {
    StoreError::Unavailable {
        message: "503 Service Unavailable (injected)".into(),
        source: None,
    }
}

fn forbidden() -> StoreError {
    StoreError::Forbidden {
        verb: "update".into(),
        resource: "leases.coordination.k8s.io".into(),
        message: "RBAC: access denied (injected)".into(),
    }
}

fn missing() -> StoreError {
    StoreError::NotFound {
        lease: "missing-namespace/x (injected)".into(),
    }
}

fn invalid() -> StoreError {
    StoreError::Invalid {
        lease: "ns/x".into(),
        message: "spec: Invalid value (injected)".into(),
    }
}

// ---- a term is cancelled before any write that gives its lease up -----------------------

async fn a_term_is_cancelled_before_the_write_that_gives_its_lease_up(env: Env) {
    // A `Lock` handle dropped while its term lives on (a temporary handle, or a clone of the
    // term kept). The old lock actor wrote the release first and cancelled the term when the
    // response came back: over a slow link the next holder began while the old term still
    // read as active.
    let (a, fa) = env.faulty_replica("pod-a").await;
    let b = env.replica("pod-b").await;
    let lb = b.lock("job").unwrap();
    let latency = env.retry() / 2;
    fa.set_latency(latency); // each leg of each of A's calls, the release's too
    for round in 0..2 {
        let term = if round == 0 {
            // The handle is a temporary: dropped at the end of the statement.
            a.lock("job").unwrap().lock().await.unwrap()
        } else {
            let la = a.lock("job").unwrap();
            let term = la.lock().await.unwrap();
            let kept = term.clone();
            drop(la);
            kept
        };
        let dropped = Instant::now();
        let a_ended = ended_at(&term);
        let tb = within(env.limit(), "b locks", lb.lock()).await.unwrap();
        let b_began = Instant::now();
        let a_ended = within(env.limit(), "a's term ends", a_ended).await.unwrap();
        assert!(!term.is_active());
        assert!(
            a_ended <= b_began,
            "round {round}: A's term ended at {a_ended:?}, after B's began at {b_began:?}"
        );
        env.assert_between(a_ended - dropped, ZERO, ZERO, "ended with its handle");
        assert!(
            b_began - dropped >= latency,
            "B waited for the release to cross A's slow link"
        );
        assert!(tb.fencing_token() > term.fencing_token());
        lb.unlock().await.unwrap();
    }
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

// ---- the lease is released only after the guarded work has returned ---------------------

async fn a_lock_is_released_only_after_its_with_lock_body_returned(env: Env) {
    // `Lock::stop` and `Dsync::shutdown` cancel a with_lock body's term at once, keep
    // renewing while the body finishes (here for longer than a lease duration, so an
    // unrenewed lease would expire), and release only then. The old lock actor released at
    // once, while the body still ran.
    for how in ["Lock::stop", "Dsync::shutdown"] {
        let body = env.leases(2);
        let (a, _fa) = env
            .faulty_replica_with("pod-a", |c| c.with_drain_timeout(body * 2))
            .await;
        let b = env.replica("pod-b").await;
        let (la, lb) = (a.lock("x").unwrap(), b.lock("x").unwrap());
        let (started_tx, started) = oneshot::channel();
        let work = {
            let la = la.clone();
            actix::spawn(async move {
                la.with_lock(|term| async move {
                    started_tx.send(()).unwrap();
                    term.cancelled().await;
                    let cancelled = Instant::now();
                    tokio::time::sleep(body).await; // finishing up, past its cancellation
                    (cancelled, Instant::now())
                })
                .await
            })
        };
        within(env.limit(), "body started", started).await.unwrap();
        // B waits (its handle comes back with the result: dropping it would unlock).
        let waiter = actix::spawn(async move {
            let term = lb.lock().await;
            (term, Instant::now(), lb)
        });
        let stop_at = Instant::now();
        let stopping = if how == "Lock::stop" {
            let la = la.clone();
            actix::spawn(async move { la.stop().await })
        } else {
            let a = a.clone();
            actix::spawn(async move { a.shutdown().await })
        };
        let (cancelled, body_end) = within(env.limit(), "body", work).await.unwrap().unwrap();
        let (tb, b_began, _lb) = within(env.limit(), "b locks", waiter).await.unwrap();
        tb.unwrap();
        within(env.limit(), "stop", stopping)
            .await
            .unwrap()
            .unwrap();
        env.assert_between(cancelled - stop_at, ZERO, ZERO, "cancelled at once");
        assert!(
            b_began >= body_end,
            "{how}: B began at {b_began:?}, before the body returned at {body_end:?}"
        );
        env.assert_between(b_began - body_end, ZERO, ZERO, "released when it returned");
        a.shutdown().await.unwrap();
        b.shutdown().await.unwrap();
    }
}

async fn an_election_is_released_only_after_its_work_returned(env: Env) {
    // The same rule for an election's when_elected work.
    for how in ["Election::stop", "Dsync::shutdown"] {
        let body = env.leases(2);
        let (a, _fa) = env
            .faulty_replica_with("pod-a", |c| c.with_drain_timeout(body * 2))
            .await;
        let b = env.replica("pod-b").await;
        let ea = a.election("x").unwrap();
        let (tx, mut rx) = mpsc::unbounded_channel();
        ea.when_elected(move |term| {
            let tx = tx.clone();
            async move {
                term.cancelled().await;
                let cancelled = Instant::now();
                tokio::time::sleep(body).await;
                tx.send((cancelled, Instant::now())).unwrap();
            }
        })
        .unwrap();
        within(env.limit(), "a elected", ea.elected())
            .await
            .unwrap();
        let eb = b.election("x").unwrap();
        env.sees_leader(&eb, "pod-a").await;
        let stop_at = Instant::now();
        let stopping = if how == "Election::stop" {
            let ea = ea.clone();
            actix::spawn(async move { ea.stop().await })
        } else {
            let a = a.clone();
            actix::spawn(async move { a.shutdown().await })
        };
        let elected = {
            let eb = eb.clone();
            actix::spawn(async move { eb.elected().await.map(|_| Instant::now()) })
        };
        let (cancelled, body_end) = within(env.limit(), "work", rx.recv()).await.unwrap();
        let b_began = within(env.limit(), "b elected", elected)
            .await
            .unwrap()
            .unwrap();
        within(env.limit(), "stop", stopping)
            .await
            .unwrap()
            .unwrap();
        env.assert_between(cancelled - stop_at, ZERO, ZERO, "cancelled at once");
        assert!(
            b_began >= body_end,
            "{how}: B began at {b_began:?}, before the work returned at {body_end:?}"
        );
        env.assert_between(b_began - body_end, ZERO, ZERO, "released when it returned");
        a.shutdown().await.unwrap();
        b.shutdown().await.unwrap();
    }
}

async fn a_stop_while_a_lost_term_drains_still_waits_for_its_work(env: Env) {
    // The term was lost at its renew deadline (the API server unreachable) and its work is
    // still finishing when the stop comes. The stop must wait for that work too: it used to
    // forget the draining term and answer at once (found by tests/safety.rs, seed 109), and
    // a new election of the same lease then started its work beside the old one.
    let linger = env.leases(1);
    let (a, fa) = env
        .faulty_replica_with("pod-a", |c| c.with_drain_timeout(linger * 2))
        .await;
    let ea = a.election("x").unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    ea.when_elected(move |term| {
        let tx = tx.clone();
        async move {
            tx.send(("start", Instant::now())).unwrap();
            term.cancelled().await;
            tokio::time::sleep(linger).await; // finishing, past its cancellation
            tx.send(("end", Instant::now())).unwrap();
        }
    })
    .unwrap();
    let term = within(env.limit(), "elected", ea.elected()).await.unwrap();
    within(env.limit(), "work started", rx.recv())
        .await
        .unwrap();
    fa.partition();
    within(env.limit(), "lost at the deadline", term.cancelled()).await;
    fa.heal();
    let stopped = {
        let ea = ea.clone();
        actix::spawn(async move {
            let result = ea.stop().await;
            (result, Instant::now())
        })
    };
    let (what, work_end) = within(env.limit(), "work ends", rx.recv()).await.unwrap();
    assert_eq!(what, "end");
    let (result, stop_end) = within(env.limit(), "stop", stopped).await.unwrap();
    result.unwrap();
    assert!(
        stop_end >= work_end,
        "the stop returned at {stop_end:?}, before the lost term's work at {work_end:?}"
    );
    // A new election of the lease starts its work only after the old work has returned.
    let again = a.election("x").unwrap();
    let (tx2, mut rx2) = mpsc::unbounded_channel();
    again
        .when_elected(move |_term| {
            let tx2 = tx2.clone();
            async move {
                tx2.send(Instant::now()).unwrap();
            }
        })
        .unwrap();
    let started = within(env.limit(), "new work", rx2.recv()).await.unwrap();
    assert!(started >= work_end);
    a.shutdown().await.unwrap();
}

// ---- a grant nobody received is given back ----------------------------------------------

async fn a_grant_nobody_received_is_given_back(env: Env) {
    // actix-web drops a handler's future when its client disconnects; a `select!` takes
    // another branch. When that happens after the lock was granted, nobody has the term: the
    // old lock actor kept the lease, renewing it forever, and the handle's next lock() queued
    // behind itself.
    let (a, b) = (env.replica("pod-a").await, env.replica("pod-b").await);
    let (la, lb) = (a.lock("x").unwrap(), b.lock("x").unwrap());
    lb.lock().await.unwrap();
    let mut status = la.watch_status();
    let mut pending = Box::pin(la.lock());
    assert!(
        futures::poll!(pending.as_mut()).is_pending(),
        "queued behind B"
    );
    within(env.limit(), "queued", status.wait_for(|s| s.waiters == 1))
        .await
        .unwrap();
    lb.unlock().await.unwrap();
    // A acquires and grants the lock to the future, which is never polled again.
    let granted = within(
        env.limit(),
        "granted",
        status.wait_for(|s| s.term.is_some()),
    )
    .await
    .unwrap()
    .term
    .clone()
    .unwrap();
    let given_up = Instant::now();
    drop(pending);
    within(env.limit(), "the grant's term ends", granted.cancelled()).await;
    let tb = within(env.limit(), "b locks again", lb.lock())
        .await
        .unwrap();
    env.assert_between(given_up.elapsed(), ZERO, ZERO, "given back at once");
    assert!(tb.fencing_token() > granted.fencing_token());
    lb.unlock().await.unwrap();
    // The handle's next lock() does not wait for itself.
    within(env.limit(), "a locks again", la.lock())
        .await
        .unwrap();
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

// ---- every outcome of every store call lets a pending stop finish -----------------------

async fn every_outcome_of_a_store_call_lets_a_pending_stop_finish(env: Env) {
    // A stop that arrives while a read, create or acquire is in flight, which then fails
    // with a definite answer (403, a missing namespace's 404 on create, 422): the old lock
    // actor never finished the stop, and `Dsync::shutdown` hung.
    type Case = (Call, &'static str, fn() -> StoreError);
    let cases: [Case; 7] = [
        (Call::Get, "get", forbidden),
        (Call::Get, "get", invalid),
        (Call::Create, "create", forbidden),
        (Call::Create, "create", missing),
        (Call::Create, "create", invalid),
        (Call::Replace, "replace", forbidden),
        (Call::Replace, "replace", invalid),
    ];
    let latency = env.retry() / 2;
    for (i, (call, kind, error)) in cases.into_iter().enumerate() {
        for face in ["election", "lock"] {
            let what = format!(
                "{face}: a stop during a {kind} that fails with {:?}",
                error()
            );
            let (a, fa) = env.faulty_replica(&format!("pod-{i}")).await;
            let name = format!("{face}-{i}");
            if call == Call::Replace {
                // The lease exists and is free: taking it is a replace.
                let key = LeaseKey::new(&*env.namespace, format!("unscoped.{face}.{name}"));
                let free = LeaseRecord {
                    lease_duration_seconds: Some(1),
                    lease_transitions: Some(0),
                    ..Default::default()
                };
                env.store().await.create(&key, free).await.unwrap();
            }
            fa.set_latency(latency); // so the stop arrives while the call is in flight
            fa.fail_next(call, error);
            let _keep = match face {
                "election" => (Some(a.election(&name).unwrap()), None),
                _ => {
                    let lock = a.lock(&name).unwrap();
                    let l = lock.clone();
                    (
                        None,
                        Some((lock, actix::spawn(async move { l.lock().await }))),
                    )
                }
            };
            within(env.limit(), "call sent", fa.called(call, 1)).await;
            let start = Instant::now();
            within(env.limit(), &what, a.shutdown())
                .await
                .unwrap_or_else(|e| panic!("{what}: {e:?}"));
            // Its two legs at most (each paused-time timer may round up by a millisecond).
            env.assert_between(start.elapsed(), ZERO, latency * 2 + env.tick() * 2, &what);
        }
    }
}

// ---- a stop from inside the work takes effect without waiting for itself ----------------

async fn a_stop_from_inside_the_work_takes_effect_without_waiting_for_itself(env: Env) {
    // A when_elected future or a with_lock body that stops its own lease, or shuts the replica
    // down, used to wait for itself forever while the lease kept being renewed.
    let linger = env.retry();
    for how in ["Election::stop", "Dsync::shutdown"] {
        let (a, b) = (env.replica("pod-a").await, env.replica("pod-b").await);
        let ea = a.election("x").unwrap();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let (ea2, a2) = (ea.clone(), a.clone());
        ea.when_elected(move |term| {
            let (ea, a, tx) = (ea2.clone(), a2.clone(), tx.clone());
            async move {
                let called = Instant::now();
                let result = match how {
                    "Election::stop" => ea.stop().await,
                    _ => a.shutdown().await,
                };
                tx.send((result, called.elapsed(), term.is_active(), None))
                    .unwrap();
                tokio::time::sleep(linger).await; // wrapping up after asking
                tx.send((Ok(()), ZERO, false, Some(Instant::now())))
                    .unwrap();
            }
        })
        .unwrap();
        let (result, waited, active, _) = within(env.limit(), how, rx.recv()).await.unwrap();
        // B campaigns only now, so A surely led first (on kube the two race otherwise); A's
        // work is still wrapping up, so the lease is A's until it returns.
        let eb = b.election("x").unwrap();
        assert!(
            matches!(&result, Err(Error::StopFromWork { lease }) if *lease == ea.lease().to_string()),
            "{how} from inside the work: {result:?}"
        );
        env.assert_between(waited, ZERO, ZERO, "returned at once");
        assert!(!active, "{how} took effect: the term is over");
        let (_, _, _, work_end) = within(env.limit(), "work ends", rx.recv()).await.unwrap();
        let work_end = work_end.unwrap();
        within(env.limit(), "b elected", eb.elected())
            .await
            .unwrap();
        assert!(Instant::now() >= work_end);
        env.assert_between(work_end.elapsed(), ZERO, ZERO, "released once it returned");
        // From outside, the stop is waited for (and is over).
        ea.stop().await.unwrap();
        a.shutdown().await.unwrap();
        b.shutdown().await.unwrap();
    }
    for how in ["Lock::stop", "Dsync::shutdown"] {
        let (a, b) = (env.replica("pod-a").await, env.replica("pod-b").await);
        let (la, lb) = (a.lock("y").unwrap(), b.lock("y").unwrap());
        let (started_tx, started) = oneshot::channel();
        let (go, go_rx) = oneshot::channel::<()>();
        let body = {
            let (la, la2, a2) = (la.clone(), la.clone(), a.clone());
            actix::spawn(async move {
                la.with_lock(|term| async move {
                    started_tx.send(()).unwrap();
                    go_rx.await.unwrap();
                    let called = Instant::now();
                    let result = match how {
                        "Lock::stop" => la2.stop().await,
                        _ => a2.shutdown().await,
                    };
                    let waited = called.elapsed();
                    tokio::time::sleep(linger).await; // wrapping up after asking
                    (result, waited, term.is_active(), Instant::now())
                })
                .await
            })
        };
        within(env.limit(), "body started", started).await.unwrap();
        // B waits in line while the body runs (its handle comes back with the result).
        let mut status = lb.watch_status();
        let waiter = actix::spawn(async move {
            let term = lb.lock().await;
            (term, Instant::now(), lb)
        });
        within(
            env.limit(),
            "b waits",
            status.wait_for(|s| s.waiters == 1 && s.holder.as_deref() == Some("pod-a")),
        )
        .await
        .unwrap();
        go.send(()).unwrap();
        let (result, waited, active, body_end) =
            within(env.limit(), how, body).await.unwrap().unwrap();
        assert!(
            matches!(&result, Err(Error::StopFromWork { lease }) if *lease == la.lease().to_string()),
            "{how} from inside with_lock: {result:?}"
        );
        env.assert_between(waited, ZERO, ZERO, "returned at once");
        assert!(!active, "{how} took effect: the term is over");
        let (tb, b_began, _lb) = within(env.limit(), "b locks", waiter).await.unwrap();
        tb.unwrap();
        assert!(
            b_began >= body_end,
            "{how}: B began at {b_began:?}, before the body returned at {body_end:?}"
        );
        env.assert_between(b_began - body_end, ZERO, ZERO, "released once it returned");
        a.shutdown().await.unwrap();
        b.shutdown().await.unwrap();
    }
}

/// A leader-only actor that stops its own election as soon as it starts (as a worker might on
/// a fatal error), blocking its own context until the stop answers (`ctx.wait`).
struct Quitter {
    election: Election,
    answer: Arc<Mutex<Option<dsync::Result<()>>>>,
}

impl Actor for Quitter {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let (election, answer) = (self.election.clone(), self.answer.clone());
        ctx.wait(
            async move {
                let result = election.stop().await;
                *answer.lock().unwrap() = Some(result);
            }
            .into_actor(self),
        );
    }
}

async fn a_leader_only_actor_can_stop_its_own_election(env: Env) {
    // Waiting for the stop would wait for the actor's own end (its context is blocked in
    // `ctx.wait`, so it cannot see its term end): the stop answers at once instead, and the
    // lease is released as soon as the actor has stopped.
    let (a, b) = (env.replica("pod-a").await, env.replica("pod-b").await);
    let ea = a.election("x").unwrap();
    let answer = Arc::new(Mutex::new(None));
    let (election, ans) = (ea.clone(), answer.clone());
    let worker = LeaderOnly::start(&ea, move |_term| Quitter {
        election: election.clone(),
        answer: ans.clone(),
    })
    .unwrap();
    // B campaigns only once A's actor has started (on kube the two race otherwise).
    let mut status = worker.watch_status();
    within(
        env.limit(),
        "a's actor started",
        status.wait_for(|s| s.starts == 1),
    )
    .await
    .unwrap();
    let eb = b.election("x").unwrap();
    within(env.limit(), "b elected", eb.elected())
        .await
        .unwrap();
    let result = answer.lock().unwrap().take().expect("the stop answered");
    assert!(
        matches!(result, Err(Error::StopFromWork { .. })),
        "{result:?}"
    );
    assert!(!worker.status().running);
    assert_eq!(worker.status().starts, 1);
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

async fn work_that_never_returns_is_abandoned_after_the_drain_timeout_and_its_lease_expires(
    env: Env,
) {
    // Work that ignores its cancellation forever must not hang a shutdown, and its lease must
    // not be released while it may still run: renewals stop, nothing is written, the lease
    // expires as after a crash, and the shutdown names the lease.
    let drain = env.retry() * 2;
    let (a, fa) = env
        .faulty_replica_with("pod-a", |c| c.with_drain_timeout(drain))
        .await;
    let b = env.replica("pod-b").await;
    let ea = a.election("x").unwrap();
    ea.when_elected(|_term| std::future::pending::<()>())
        .unwrap();
    within(env.limit(), "a elected", ea.elected())
        .await
        .unwrap();
    let eb = b.election("x").unwrap();
    env.sees_leader(&eb, "pod-a").await;
    let start = Instant::now();
    let err = within(env.limit(), "shutdown", a.shutdown())
        .await
        .unwrap_err();
    let lease = ea.lease();
    assert!(
        matches!(&err, Error::DrainTimeout { lease: l, after } if *l == lease.to_string() && *after == drain),
        "{err:?}"
    );
    env.assert_timer(start.elapsed(), drain, drain, "after the drain timeout");
    let abandoned = Instant::now();
    let writes = fa.calls(Call::Replace);
    assert_eq!(
        env.holder(&lease).await.as_deref(),
        Some("pod-a"),
        "not released"
    );
    within(env.limit(), "b elected", eb.elected())
        .await
        .unwrap();
    assert_eq!(
        fa.calls(Call::Replace),
        writes,
        "nothing written after the drain ran out"
    );
    // As after a crash: a lease duration after B last saw A renew (at most a retry period
    // before the renewals stopped).
    env.assert_timer(
        abandoned.elapsed(),
        env.lease() - env.retry(),
        env.lease(),
        "takeover",
    );
    b.shutdown().await.unwrap();
}

// ---- every write waits its backoff ------------------------------------------------------

async fn every_write_waits_its_backoff_releases_included(env: Env) {
    // A release answered at once with 503 (or 429, or connection refused) was retried back to
    // back for the whole renew deadline: 6,000 calls in 10 s for one unlock(), just when the
    // API server struggles. Now one per retry period, then the lease is left to expire.
    let most = (env.renew().as_nanos() / env.retry().as_nanos()) as u64 + 1;
    for face in ["lock", "election"] {
        let (a, fa) = env.faulty_replica("pod-a").await;
        let (lock, election) = match face {
            "lock" => {
                let lock = a.lock("x").unwrap();
                lock.lock().await.unwrap();
                (Some(lock), None)
            }
            _ => {
                let election = a.election("y").unwrap();
                within(env.limit(), "elected", election.elected())
                    .await
                    .unwrap();
                (None, Some(election))
            }
        };
        let before = fa.calls(Call::Replace);
        fa.fail_always(Call::Replace, unavailable);
        let start = Instant::now();
        let result = match (&lock, &election) {
            (Some(lock), _) => within(env.limit(), "unlock", lock.unlock()).await,
            (_, Some(election)) => within(env.limit(), "stop", election.stop()).await,
            _ => unreachable!(),
        };
        let took = start.elapsed();
        let writes = fa.calls(Call::Replace) - before;
        assert!(
            matches!(
                &result,
                Err(Error::Store {
                    source: StoreError::Unavailable { .. },
                    ..
                })
            ),
            "{face}: the release could not be written, and says so: {result:?}"
        );
        assert!(
            (2..=most).contains(&writes),
            "{face}: {writes} writes in {took:?}: at most one per retry period ({most})"
        );
        env.assert_timer(took, ZERO, env.renew(), "given up at the renew deadline");
        fa.clear();
        a.shutdown().await.unwrap();
    }
}

// ---- a term's end does not depend on a timer user work can starve -----------------------

async fn a_panicking_when_elected_future_ends_its_term(env: Env) {
    // The work a term guards panicked: nothing runs for the leader any more, so the term ends
    // (and the election campaigns again, running the work afresh).
    let a = env.replica("pod-a").await;
    let ea = a.election("x").unwrap();
    let log = TermLog::default();
    log.record("pod-a", &ea).unwrap();
    let runs = Arc::new(AtomicUsize::new(0));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let r = runs.clone();
    ea.when_elected(move |term| {
        let n = r.fetch_add(1, Ordering::SeqCst);
        let tx = tx.clone();
        async move {
            tx.send(term.clone()).unwrap();
            if n == 0 {
                panic!("leader work fails (deliberately, in a test)");
            }
            term.cancelled().await;
        }
    })
    .unwrap();
    let first = within(env.limit(), "first term", rx.recv()).await.unwrap();
    let second = within(env.limit(), "second term", rx.recv()).await.unwrap();
    assert!(!first.is_active(), "the panic ended the first term");
    assert!(second.is_active());
    assert!(second.fencing_token() > first.fencing_token());
    settle().await;
    let spans = log.spans();
    assert_eq!(
        spans[0].reason,
        Some(DeposeReason::WorkPanicked),
        "{spans:#?}"
    );
    assert_eq!(runs.load(Ordering::SeqCst), 2);
    a.shutdown().await.unwrap();
}

// ---- also fixed ---------------------------------------------------------------------------

async fn one_identity_a_twin_never_holds_with_the_live_holder(env: Env) {
    // Two live processes configured with one identity (a mistake, a force-deleted StatefulSet
    // pod still running, `kubectl exec` of the CLI): once each took the lease back at once
    // whenever it saw it held under "its" name, flipping it between them in a hot loop (841
    // terms in 3 s); then the fresh one still took it at once, and the two held together
    // until the first one's next renewal. Now a record naming us is taken only once it has
    // not changed for a renew deadline: the live holder keeps renewing, so the twin never
    // holds it (rule `one-identity`).
    let one = env.replica("twin").await;
    let e1 = one.election("x").unwrap();
    let log = TermLog::default();
    log.record("one", &e1).unwrap();
    within(env.limit(), "one elected", e1.elected())
        .await
        .unwrap();
    let two = env.replica("twin").await;
    let e2 = two.election("x").unwrap();
    log.record("two", &e2).unwrap();
    tokio::time::sleep(env.leases(4)).await;
    settle().await;
    let spans = log.spans();
    assert_eq!(spans.len(), 1, "{spans:#?}");
    assert_eq!(spans[0].replica, "one");
    assert!(spans[0].end.is_none(), "the live holder keeps it");
    assert!(!e2.is_leader());
    // When the live one stops, the twin takes over (its release frees the lease).
    one.shutdown().await.unwrap();
    within(env.limit(), "two elected", e2.elected())
        .await
        .unwrap();
    two.shutdown().await.unwrap();
    log.check().unwrap();
}

async fn restart_backoff_grows_under_a_persistent_refusal(env: Env) {
    // RBAC lets the replica read the lease but not update it. Each refused write restarts the
    // election actor; a successful read used to reset the backoff, so it restarted every
    // retry period forever. The wait now doubles (2, 4, 8, 15, 15 s on memory: capped at the
    // lease duration).
    // (A free lease that every acquisition is refused on: a record of our own, after a
    // restart, would be left to expire first; rule `one-identity`.)
    let b = env.replica("pod-b").await;
    let eb = b.election("x").unwrap();
    within(env.limit(), "b elected", eb.elected())
        .await
        .unwrap();
    b.shutdown().await.unwrap();
    let (a, fa) = env.faulty_replica("pod-a").await;
    fa.fail_always(Call::Replace, forbidden);
    let ea = a.election("x").unwrap();
    let mut status = ea.watch_status();
    let mut restarts = Vec::new();
    for n in 1..=6 {
        within(
            env.limit(),
            "restarted",
            status.wait_for(|s| s.restarts == n),
        )
        .await
        .unwrap();
        restarts.push(Instant::now());
    }
    let gaps: Vec<Duration> = restarts.windows(2).map(|w| w[1] - w[0]).collect();
    let r = env.retry();
    let lease = env.lease();
    let expected = [r, r * 2, r * 4, (r * 8).min(lease), (r * 16).min(lease)];
    for (gap, want) in gaps.iter().zip(expected) {
        env.assert_timer(*gap, want, want, &format!("restart gaps {gaps:?}"));
    }
    fa.clear();
    within(env.limit(), "elected again", ea.elected())
        .await
        .unwrap();
    a.shutdown().await.unwrap();
}

async fn lock_on_a_handle_that_holds_the_lock_is_an_error_not_a_wait(env: Env) {
    // It used to wait forever (for itself). try_lock already said AlreadyLocked.
    let a = env.replica("pod-a").await;
    let l = a.lock("x").unwrap();
    l.lock().await.unwrap();
    for err in [
        within(env.limit(), "lock", l.lock()).await.unwrap_err(),
        within(env.limit(), "clone", l.clone().lock())
            .await
            .unwrap_err(),
        within(env.limit(), "timeout", l.lock_timeout(env.lease()))
            .await
            .unwrap_err(),
    ] {
        assert!(
            matches!(&err, Error::AlreadyLocked { holder, .. } if holder == "pod-a"),
            "{err:?}"
        );
    }
    l.unlock().await.unwrap();
    l.lock().await.unwrap();
    a.shutdown().await.unwrap();
}

async fn try_lock_is_not_refused_because_of_abandoned_waiters(env: Env) {
    // Callers that gave up waiting (a dropped future, a timeout) used to stay in the queue,
    // and try_lock answered AlreadyLocked because "someone" was waiting.
    let (a, b) = (env.replica("pod-a").await, env.replica("pod-b").await);
    let lb = b.lock("x").unwrap();
    lb.lock().await.unwrap();
    let (h1, h2) = (a.lock("x").unwrap(), a.lock("x").unwrap());
    let mut status = h1.watch_status();
    {
        let mut dropped = Box::pin(h1.lock());
        assert!(futures::poll!(dropped.as_mut()).is_pending());
        within(env.limit(), "queued", status.wait_for(|s| s.waiters == 1))
            .await
            .unwrap();
    }
    let err = h2.lock_timeout(env.retry()).await.unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err:?}");
    within(
        env.limit(),
        "nobody waits",
        status.wait_for(|s| s.waiters == 0),
    )
    .await
    .unwrap();
    lb.unlock().await.unwrap();
    within(env.limit(), "try_lock", h2.try_lock())
        .await
        .unwrap();
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

async fn cancelled_and_timed_out_waiters_leave_the_queue_at_once(env: Env) {
    // Waiting is the caller's own future: when it gives up (cancelled, timed out) its place in
    // line goes at once, and no stale waiter takes the lock later. (That granted calls leave
    // nothing behind in the lock actor is measured on the heap in tests/leaks.rs.)
    let (a, b) = (env.replica("pod-a").await, env.replica("pod-b").await);
    let (la, lb) = (a.lock("x").unwrap(), b.lock("x").unwrap());
    lb.lock().await.unwrap();
    let tokens: Vec<CancellationToken> = (0..env.rounds(10))
        .map(|_| CancellationToken::new())
        .collect();
    for (i, token) in tokens.iter().enumerate() {
        let err = if i % 2 == 0 {
            let t = token.clone();
            let wait = env.retry() / 2;
            actix::spawn(async move {
                tokio::time::sleep(wait).await;
                t.cancel();
            });
            la.lock_with_cancel(token.clone()).await.unwrap_err()
        } else {
            la.lock_timeout(env.retry() / 2).await.unwrap_err()
        };
        assert!(
            matches!(err, Error::Cancelled { .. } | Error::Timeout { .. }),
            "{err:?}"
        );
    }
    let mut status = la.watch_status();
    within(
        env.limit(),
        "no waiter left",
        status.wait_for(|s| s.waiters == 0),
    )
    .await
    .unwrap();
    lb.unlock().await.unwrap();
    tokio::time::sleep(env.lease()).await;
    assert_eq!(
        env.holder(&la.lease()).await,
        None,
        "no stale waiter took it"
    );
    // Granted calls whose tokens never fire: nothing waits on those tokens afterwards.
    for _ in 0..env.rounds(10) {
        let token = CancellationToken::new();
        let term = la.lock_with_cancel(token.clone()).await.unwrap();
        la.unlock().await.unwrap();
        token.cancel();
        assert!(!term.is_active());
    }
    assert_eq!(la.status().waiters, 0);
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

// ---- threads and Systems (real time, memory) --------------------------------------------

/// A replica on `store` in real time at 2 / 1.5 / 0.5 s.
fn real_time_replica(store: &MemoryStore, identity: &str, thread: LeaseThread) -> Dsync {
    Dsync::with_config(
        store.clone(),
        Config::default()
            .with_identity(identity)
            .with_timing(kube_timing())
            .with_lease_thread(thread),
    )
    .unwrap()
}

const REAL_LIMIT: Duration = Duration::from_secs(30);

#[actix::test]
async fn a_term_ends_on_its_own_deadline_when_its_thread_is_starved() {
    // Work that blocks the thread its lease actor runs on (here: LeaseThread::Current) for
    // longer than the lease: another replica takes over meanwhile. The term used to read as
    // active until the actor ran again; now it ends at its own deadline, before the other
    // replica's term begins.
    let t = kube_timing();
    let store = MemoryStore::new();
    let a = real_time_replica(&store, "a", LeaseThread::Current);
    let b = real_time_replica(&store, "b", LeaseThread::Dedicated);
    let ea = a.election("x").unwrap();
    let term = within(REAL_LIMIT, "a elected", ea.elected()).await.unwrap();
    let eb = b.election("x").unwrap();
    let mut status = eb.watch_status();
    within(
        REAL_LIMIT,
        "b follows",
        status.wait_for(|s| s.holder.as_deref() == Some("a")),
    )
    .await
    .unwrap();
    // B's election is watched from a third thread, which records when it is elected.
    let b_elected = Arc::new(Mutex::new(None));
    let watcher = Arbiter::new();
    {
        let (eb, rec) = (eb.clone(), b_elected.clone());
        watcher.spawn(async move {
            if eb.elected().await.is_ok() {
                *rec.lock().unwrap() = Some(std::time::Instant::now());
            }
        });
    }
    assert!(term.is_active());
    std::thread::sleep(t.lease_duration() * 5 / 2); // the whole thread is starved
    assert!(
        !term.is_active(),
        "a term must not outlive its renew deadline, whether or not its actor ran"
    );
    let b_began = b_elected
        .lock()
        .unwrap()
        .expect("B was elected while A's thread was blocked");
    assert!(
        term.valid_until() <= b_began,
        "A's term was valid until {:?}, after B's began at {b_began:?}",
        term.valid_until()
    );
    watcher.stop();
    let _ = a.shutdown().await;
    b.shutdown().await.unwrap();
}

#[actix::test]
async fn blocking_the_application_thread_does_not_stall_renewals() {
    // With dsync's own lease thread (the default), application code that blocks its thread
    // for longer than the lease does not cost the replica its leadership.
    let t = kube_timing();
    let store = MemoryStore::new();
    let a = real_time_replica(&store, "a", LeaseThread::Dedicated);
    let b = real_time_replica(&store, "b", LeaseThread::Dedicated);
    let ea = a.election("x").unwrap();
    let term = within(REAL_LIMIT, "a elected", ea.elected()).await.unwrap();
    let eb = b.election("x").unwrap();
    let before = store.peek(&ea.lease()).unwrap().resource_version;
    std::thread::sleep(t.lease_duration() * 5 / 2);
    assert!(term.is_active(), "still leading");
    assert!(!eb.is_leader());
    let after = store.peek(&ea.lease()).unwrap();
    assert_eq!(after.record.holder(), Some("a"));
    assert_ne!(after.resource_version, before, "renewed meanwhile");
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

#[test]
fn every_live_term_is_cancelled_when_its_system_ends() {
    // The application's System ends without a shutdown (a test returns, `main` returns).
    // With the lease actors on its own arbiter, they go with it and their Drop cancels the
    // terms; with dsync's own thread, dsync shuts itself down: terms cancelled, leases
    // released.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for thread in [LeaseThread::Current, LeaseThread::Dedicated] {
        let store = MemoryStore::new();
        let mut changes = store.watch("default");
        let (tx, rx) = std::sync::mpsc::channel();
        let s = store.clone();
        std::thread::spawn(move || {
            actix::System::new().block_on(async move {
                let d = real_time_replica(&s, "a", thread);
                let e = d.election("x").unwrap();
                let term = e.elected().await.unwrap();
                tx.send((term, e.lease())).unwrap();
                // The System ends here, without a shutdown.
            });
        })
        .join()
        .unwrap();
        let (term, lease) = rx.recv().unwrap();
        rt.block_on(async {
            within(REAL_LIMIT, "term cancelled", term.cancelled()).await;
            if thread == LeaseThread::Dedicated {
                // ... and the lease released.
                within(REAL_LIMIT, "released", async {
                    while let Some(change) = changes.next().await {
                        if let Ok(WatchEvent::Applied(l)) = change
                            && l.record.holder().is_none()
                        {
                            return;
                        }
                    }
                })
                .await;
                assert_eq!(store.peek(&lease).unwrap().record.holder(), None);
            }
        });
        assert!(!term.is_active(), "{thread:?}");
    }
}

// ---- the supervisor's registry ----------------------------------------------------------

async fn the_supervisor_lists_every_lease_actor_live_and_stopping(env: Env) {
    // One registry entry type for every face; an actor told to stop stays listed (as
    // stopping) until its work has returned and its lease is released.
    let a = env.replica("pod-a").await;
    assert_eq!(a.leases(), vec![]);
    let election = a.election("e").unwrap();
    let lock = a.lock("l").unwrap();
    let listed = a.leases();
    let kinds: Vec<_> = listed
        .iter()
        .map(|l| (l.lease.clone(), l.kind, l.stopping))
        .collect();
    assert_eq!(
        kinds,
        vec![
            (
                election.lease(),
                dsync::resource::LeaseKind::Election,
                false
            ),
            (lock.lease(), dsync::resource::LeaseKind::Lock, false),
        ]
    );
    let (started_tx, started) = oneshot::channel();
    let (cancelled_tx, cancelled) = oneshot::channel();
    let (finish, finish_rx) = oneshot::channel::<()>();
    let body = {
        let lock = lock.clone();
        actix::spawn(async move {
            lock.with_lock(|term| async move {
                started_tx.send(()).unwrap();
                term.cancelled().await;
                cancelled_tx.send(()).unwrap();
                finish_rx.await.unwrap(); // finishing up after its cancellation
            })
            .await
        })
    };
    within(env.limit(), "body started", started).await.unwrap();
    let stopping = {
        let lock = lock.clone();
        actix::spawn(async move { lock.stop().await })
    };
    within(env.limit(), "body cancelled", cancelled)
        .await
        .unwrap();
    let listed = a.leases();
    assert!(
        listed.iter().any(|l| l.lease == lock.lease()
            && l.kind == dsync::resource::LeaseKind::Lock
            && l.stopping),
        "{listed:?}"
    );
    finish.send(()).unwrap();
    within(env.limit(), "body", body).await.unwrap().unwrap();
    within(env.limit(), "stop", stopping)
        .await
        .unwrap()
        .unwrap();
    let listed = a.leases();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].lease, election.lease());
    a.shutdown().await.unwrap();
    assert_eq!(a.leases(), vec![]);
}
