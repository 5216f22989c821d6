//! Locks on the in-process store, in paused tokio time. Timing: 15 s / 10 s / 2 s.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use dsync::{Dsync, Error, LeaseStore, MemoryStore, StoreError};
use support::{Call, FaultyStore, settle, within};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

const LIMIT: Duration = Duration::from_secs(600);

fn replica(store: impl LeaseStore, name: &str) -> Dsync {
    Dsync::new(store, name).unwrap()
}

fn holder_of(err: &Error) -> &str {
    match err {
        Error::AlreadyLocked { holder, .. } => holder,
        other => panic!("expected AlreadyLocked, got {other:?}"),
    }
}

#[actix::test]
async fn unlock_of_a_fresh_lock_is_not_locked() {
    tokio::time::pause();
    let d = replica(MemoryStore::new(), "pod-a");
    let l = d.lock("x").unwrap();
    assert_eq!(l.lease().to_string(), "default/unscoped.lock.x");
    let err = l.unlock().await.unwrap_err();
    assert!(
        matches!(&err, Error::NotLocked { lock } if lock == "default/unscoped.lock.x"),
        "{err:?}"
    );
    d.shutdown().await.unwrap();
}

#[actix::test]
async fn try_lock_then_again_then_unlock_then_unlock_again() {
    tokio::time::pause();
    let store = MemoryStore::new();
    let d = replica(store.clone(), "pod-a");
    let l = d.lock("x").unwrap();
    let term = l.try_lock().await.unwrap();
    assert!(term.is_active());
    assert_eq!(
        store.peek(&l.lease()).unwrap().record.holder(),
        Some("pod-a")
    );
    // Not reentrant, even for the same handle.
    assert_eq!(holder_of(&l.try_lock().await.unwrap_err()), "pod-a");
    l.unlock().await.unwrap();
    assert!(!term.is_active(), "unlock ends the term");
    assert_eq!(
        store.peek(&l.lease()).unwrap().record.holder(),
        None,
        "released"
    );
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

#[actix::test]
async fn two_replicas_alternate() {
    tokio::time::pause();
    let store = MemoryStore::new();
    let (a, b) = (
        replica(store.clone(), "pod-a"),
        replica(store.clone(), "pod-b"),
    );
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

#[actix::test]
async fn a_blocking_lock_completes_as_soon_as_the_holder_unlocks() {
    tokio::time::pause();
    let store = MemoryStore::new();
    let (a, b) = (
        replica(store.clone(), "pod-a"),
        replica(store.clone(), "pod-b"),
    );
    let (la, lb) = (a.lock("x").unwrap(), b.lock("x").unwrap());
    let ta = la.lock().await.unwrap();
    let waiter = actix::spawn(async move { (lb.lock().await, Instant::now()) });
    tokio::time::sleep(Duration::from_secs(120)).await;
    assert!(!waiter.is_finished(), "A renews: B must keep waiting");
    assert!(ta.is_active());
    let unlocked = Instant::now();
    la.unlock().await.unwrap();
    let (tb, got) = within(LIMIT, "b locks", waiter).await.unwrap();
    let tb = tb.unwrap();
    assert_eq!(got, unlocked, "handoff through the watch, no waiting");
    assert!(tb.fencing_token() > ta.fencing_token());
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

#[actix::test]
async fn lock_with_cancel_gives_up_when_cancelled() {
    tokio::time::pause();
    let store = MemoryStore::new();
    let (a, b) = (
        replica(store.clone(), "pod-a"),
        replica(store.clone(), "pod-b"),
    );
    let (la, lb) = (a.lock("x").unwrap(), b.lock("x").unwrap());
    la.lock().await.unwrap();
    let cancel = CancellationToken::new();
    let c = cancel.clone();
    let waiter = actix::spawn(async move { lb.lock_with_cancel(c).await });
    tokio::time::sleep(Duration::from_secs(3)).await;
    cancel.cancel();
    let err = within(LIMIT, "cancelled", waiter)
        .await
        .unwrap()
        .unwrap_err();
    assert!(matches!(err, Error::Cancelled { .. }), "{err:?}");
    // The cancelled waiter is gone: after A unlocks, nobody takes the lock.
    la.unlock().await.unwrap();
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(store.peek(&la.lease()).unwrap().record.holder(), None);
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

#[actix::test]
async fn cancelling_the_token_after_locking_does_not_release() {
    tokio::time::pause();
    let store = MemoryStore::new();
    let (a, b) = (
        replica(store.clone(), "pod-a"),
        replica(store.clone(), "pod-b"),
    );
    let (la, lb) = (a.lock("x").unwrap(), b.lock("x").unwrap());
    let cancel = CancellationToken::new();
    let term = la.lock_with_cancel(cancel.clone()).await.unwrap();
    cancel.cancel();
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert!(term.is_active());
    assert_eq!(holder_of(&lb.try_lock().await.unwrap_err()), "pod-a");
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

#[actix::test]
async fn lock_timeout_times_out_in_virtual_time() {
    tokio::time::pause();
    let store = MemoryStore::new();
    let (a, b) = (
        replica(store.clone(), "pod-a"),
        replica(store.clone(), "pod-b"),
    );
    let (la, lb) = (a.lock("x").unwrap(), b.lock("x").unwrap());
    la.lock().await.unwrap();
    let start = Instant::now();
    let err = lb.lock_timeout(Duration::from_secs(5)).await.unwrap_err();
    assert!(
        matches!(&err, Error::Timeout { after, .. } if *after == Duration::from_secs(5)),
        "{err:?}"
    );
    let waited = Instant::now() - start;
    // Timers have millisecond resolution.
    assert!(
        waited >= Duration::from_secs(5) && waited <= Duration::from_millis(5_002),
        "{waited:?}"
    );
    la.unlock().await.unwrap();
    // Free now: a timeout on a free lock succeeds at once.
    lb.lock_timeout(Duration::from_secs(5)).await.unwrap();
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

#[actix::test]
async fn with_lock_excludes_others_while_f_runs_and_unlocks_after() {
    tokio::time::pause();
    let store = MemoryStore::new();
    let (a, b) = (
        replica(store.clone(), "pod-a"),
        replica(store.clone(), "pod-b"),
    );
    let (la, lb) = (a.lock("x").unwrap(), b.lock("x").unwrap());
    let lb2 = lb.clone();
    let out = la
        .with_lock(|term| async move {
            assert!(term.is_active());
            tokio::time::sleep(Duration::from_secs(40)).await; // renewed meanwhile
            let err = lb2.try_lock().await.unwrap_err();
            (term.fencing_token(), err.to_string())
        })
        .await
        .unwrap();
    assert!(out.1.contains("already locked"), "{}", out.1);
    assert_eq!(store.peek(&la.lease()).unwrap().record.holder(), None);
    let t = lb.try_lock().await.unwrap();
    assert!(t.fencing_token() > out.0);
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

#[actix::test]
async fn with_try_lock_fails_fast_when_held() {
    tokio::time::pause();
    let store = MemoryStore::new();
    let (a, b) = (
        replica(store.clone(), "pod-a"),
        replica(store.clone(), "pod-b"),
    );
    let (la, lb) = (a.lock("x").unwrap(), b.lock("x").unwrap());
    la.lock().await.unwrap();
    let err = lb
        .with_try_lock(|_| async { unreachable!() })
        .await
        .unwrap_err();
    assert_eq!(holder_of(&err), "pod-a");
    la.unlock().await.unwrap();
    assert_eq!(lb.with_try_lock(|_| async { 7 }).await.unwrap(), 7);
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

#[actix::test]
async fn two_handles_in_one_replica_exclude_each_other() {
    tokio::time::pause();
    let d = replica(MemoryStore::new(), "pod-a");
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

#[actix::test]
async fn local_waiters_are_served_first_come_first_served() {
    tokio::time::pause();
    let d = replica(MemoryStore::new(), "pod-a");
    let first = d.lock("x").unwrap();
    first.lock().await.unwrap();
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut waiters = Vec::new();
    for i in 0..4 {
        let l = d.lock("x").unwrap();
        let order = order.clone();
        waiters.push(actix::spawn(async move {
            l.lock().await.unwrap();
            order.lock().unwrap().push(i);
            tokio::time::sleep(Duration::from_secs(1)).await;
            l.unlock().await.unwrap();
        }));
        settle().await; // queue them in a known order
    }
    first.unlock().await.unwrap();
    for w in waiters {
        within(LIMIT, "waiter", w).await.unwrap();
    }
    assert_eq!(*order.lock().unwrap(), vec![0, 1, 2, 3]);
    d.shutdown().await.unwrap();
}

#[actix::test]
async fn a_crashed_holders_lock_frees_after_the_lease_duration() {
    tokio::time::pause();
    let memory = MemoryStore::new();
    let fa = FaultyStore::new(memory.clone());
    let (a, b) = (
        replica(fa.clone(), "pod-a"),
        replica(memory.clone(), "pod-b"),
    );
    let (la, lb) = (a.lock("x").unwrap(), b.lock("x").unwrap());
    let ta = la.lock().await.unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let waiter = actix::spawn(async move { lb.lock().await.map(|t| (t, Instant::now())) });
    settle().await;
    let crash = Instant::now();
    fa.partition();
    let (tb, got) = within(LIMIT, "b locks", waiter).await.unwrap().unwrap();
    let waited = got - crash;
    assert!(
        waited >= Duration::from_secs(13) && waited <= Duration::from_secs(15),
        "takeover after {waited:?}"
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

#[actix::test]
async fn with_lock_is_told_through_the_term_when_the_lock_is_lost() {
    tokio::time::pause();
    let memory = MemoryStore::new();
    let fa = FaultyStore::new(memory.clone());
    let a = replica(fa.clone(), "pod-a");
    let la = a.lock("x").unwrap();
    let fa2 = fa.clone();
    let (lost_after, output) = la
        .with_lock(|term| async move {
            let start = Instant::now();
            fa2.partition();
            term.cancelled().await;
            (Instant::now() - start, "stopped cleanly")
        })
        .await
        .unwrap();
    assert!(
        lost_after <= Duration::from_millis(10_005),
        "cancelled by the renew deadline, not after {lost_after:?}"
    );
    assert_eq!(output, "stopped cleanly");
    a.shutdown().await.unwrap();
}

#[actix::test]
async fn try_lock_and_unlock_fail_in_bounded_time_when_the_store_is_unreachable() {
    tokio::time::pause();
    let memory = MemoryStore::new();
    let fa = FaultyStore::new(memory.clone());
    let a = replica(fa.clone(), "pod-a");
    let l = a.lock("x").unwrap();
    fa.partition();
    let start = Instant::now();
    let err = within(LIMIT, "try_lock", l.try_lock()).await.unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err:?}");
    let err = within(LIMIT, "unlock", l.unlock()).await.unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err:?}");
    assert!(Instant::now() - start <= Duration::from_secs(30));
    fa.heal();
    l.try_lock().await.unwrap();
    a.shutdown().await.unwrap();
}

#[actix::test]
async fn a_dropped_handle_releases_its_lock() {
    tokio::time::pause();
    let store = MemoryStore::new();
    let (a, b) = (
        replica(store.clone(), "pod-a"),
        replica(store.clone(), "pod-b"),
    );
    let la = a.lock("x").unwrap();
    let term = la.lock().await.unwrap();
    drop(la);
    let lb = b.lock("x").unwrap();
    let start = Instant::now();
    lb.lock().await.unwrap();
    assert!(!term.is_active());
    let waited = Instant::now() - start;
    assert!(
        waited <= Duration::from_millis(2_005),
        "released at the next renewal, not after {waited:?}"
    );
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

#[actix::test]
async fn a_lock_left_by_an_earlier_incarnation_can_be_unlocked() {
    // The seed's Unlock cleared any lease held under this pod's name; so does ours when this
    // replica holds nothing locally (e.g. after a restart with the same identity).
    tokio::time::pause();
    let memory = MemoryStore::new();
    let fa = FaultyStore::new(memory.clone());
    let old = replica(fa.clone(), "pod-a");
    old.lock("x").unwrap().lock().await.unwrap();
    fa.partition(); // the old process dies holding it
    let new = replica(memory.clone(), "pod-a");
    let l = new.lock("x").unwrap();
    l.unlock().await.unwrap();
    assert_eq!(memory.peek(&l.lease()).unwrap().record.holder(), None);
    new.shutdown().await.unwrap();
}

#[actix::test]
async fn store_errors_reach_the_caller_typed() {
    tokio::time::pause();
    let memory = MemoryStore::new();
    let fa = FaultyStore::new(memory.clone());
    let a = replica(fa.clone(), "pod-a");
    let l = a.lock("x").unwrap();
    fa.fail_next(Call::Get, || StoreError::Forbidden {
        verb: "get".into(),
        resource: "leases.coordination.k8s.io \"default/unscoped.lock.x\"".into(),
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
    assert!(memory.peek(&other.lease()).is_none(), "nothing was written");
    a.shutdown().await.unwrap();
}

#[actix::test]
async fn a_held_lock_is_renewed_and_never_expires() {
    tokio::time::pause();
    let store = MemoryStore::new();
    let (a, b) = (
        replica(store.clone(), "pod-a"),
        replica(store.clone(), "pod-b"),
    );
    let (la, lb) = (a.lock("x").unwrap(), b.lock("x").unwrap());
    let term = la.lock().await.unwrap();
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(term.is_active());
        assert_eq!(holder_of(&lb.try_lock().await.unwrap_err()), "pod-a");
    }
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

#[actix::test]
async fn shutdown_releases_held_locks_and_fails_waiters() {
    tokio::time::pause();
    let store = MemoryStore::new();
    let a = replica(store.clone(), "pod-a");
    let held = a.lock("x").unwrap();
    let term = held.lock().await.unwrap();
    let waiter_handle = a.lock("x").unwrap();
    let waiter = actix::spawn(async move { waiter_handle.lock().await });
    settle().await;
    a.shutdown().await.unwrap();
    assert!(!term.is_active());
    assert_eq!(store.peek(&held.lease()).unwrap().record.holder(), None);
    let err = within(LIMIT, "waiter answered", waiter)
        .await
        .unwrap()
        .unwrap_err();
    assert!(matches!(err, Error::Stopped { .. }), "{err:?}");
    assert!(matches!(held.try_lock().await, Err(Error::Stopped { .. })));
    assert!(matches!(a.lock("z"), Err(Error::Stopped { .. })));
    assert!(matches!(a.election("z"), Err(Error::Stopped { .. })));
}
