//! Semaphores, each test written once and run on both stores (`memory::` and `kube::`):
//! `MemoryStore` in paused time (timing 15/10/2 s, exact instants) and `KubeStore` against the
//! real kube-apiserver (timing 2/1.5/0.5 s, with slack for round trips). Durations are in units
//! of the timing; see `support::backend`.
#![cfg(feature = "testing")]

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use dsync::resource::LeaseKind;
use dsync::resource::NameError;
use dsync::testing::{TermLog, settle, within};
use dsync::{Error, Permit, Semaphore};
use futures::FutureExt;
use support::backend::Env;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

crate::on_both_stores!(
    one_permit_behaves_like_a_lock,
    bad_permit_counts_and_names_are_rejected_before_anything_starts,
    three_permits_ten_contenders_three_replicas_never_more_than_three,
    a_crashed_holders_slot_frees_after_the_lease_duration_and_not_before,
    release_hands_the_slot_to_a_waiter_at_once,
    dropped_permits_and_abandoned_acquires_leave_no_slot_held,
    a_granted_acquire_dropped_before_it_returns_gives_the_slot_back,
    local_waiters_are_served_first_come_first_served,
    timeout_cancel_and_with_permit,
    shutdown_releases_permits_and_fails_waiters,
    a_grant_is_one_write_and_burns_no_token,
    acquire_waits_out_a_failed_try_and_fails_on_a_definite_answer,
);

fn no_free_slot(err: &Error) -> &[(usize, String)] {
    match err {
        Error::NoFreeSlot { holders, .. } => holders,
        other => panic!("expected NoFreeSlot, got {other:?}"),
    }
}

/// A permit of `sem` by `try_acquire`, tried again on every change of a slot this replica
/// sees while none is free. (Another replica's `acquire` queues on every slot at once and
/// keeps the first granted; a second grant whose write was already under way is given back
/// at once, so for a moment a slot that is about to be free can look held.)
async fn free_slot(sem: &Semaphore) -> Permit {
    loop {
        let mut changes: Vec<_> = (0..sem.permits())
            .map(|i| sem.watch_slot(i).unwrap())
            .collect();
        match sem.try_acquire().await {
            Ok(permit) => return permit,
            Err(error) => {
                no_free_slot(&error);
                let changed = changes.iter_mut().map(|rx| Box::pin(rx.changed()));
                futures::future::select_all(changed).await.0.unwrap();
            }
        }
    }
}

/// Waits until nobody holds any slot of `sem` in the store.
async fn all_free(env: &Env, sem: &Semaphore) {
    within(env.limit(), "all slots free", async {
        loop {
            let mut free = true;
            for key in sem.slots() {
                free &= env.holder(&key).await.is_none();
            }
            if free {
                return;
            }
            tokio::time::sleep(env.retry() / 4).await;
        }
    })
    .await;
}

async fn one_permit_behaves_like_a_lock(env: Env) {
    let (a, b) = (env.replica("pod-a").await, env.replica("pod-b").await);
    let (sa, sb) = (a.semaphore("x", 1).unwrap(), b.semaphore("x", 1).unwrap());
    assert_eq!(sa.permits(), 1);
    let slot = format!("{}/unscoped.semaphore.x.0", env.namespace);
    assert_eq!(
        sa.slots()
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        std::slice::from_ref(&slot)
    );
    assert_eq!(
        sa.name().to_string(),
        format!("{}/unscoped.semaphore.x", env.namespace)
    );
    let p = sa.try_acquire().await.unwrap();
    assert_eq!((p.slot(), p.lease().to_string()), (0, slot.clone()));
    assert!(p.is_active());
    assert_eq!(env.holder(&p.lease()).await.as_deref(), Some("pod-a"));
    // Not reentrant: the same handle, and the other replica, find no free slot.
    assert_eq!(
        no_free_slot(&sa.try_acquire().await.unwrap_err()),
        [(0, "pod-a".into())]
    );
    let err = sb.try_acquire().await.unwrap_err();
    assert_eq!(no_free_slot(&err), [(0, "pod-a".into())]);
    assert!(err.to_string().contains("slot 0: pod-a"), "{err}");
    // B waits; A's release hands the slot over through the watch.
    let waiter = actix::spawn(async move { (sb.acquire().await, Instant::now()) });
    tokio::time::sleep(env.leases(3)).await;
    assert!(!waiter.is_finished(), "A renews: B keeps waiting");
    let term = p.term().clone();
    let released = Instant::now();
    p.release().await.unwrap();
    assert!(!term.is_active(), "release ends the term first");
    let (pb, got) = within(env.limit(), "b acquires", waiter).await.unwrap();
    let pb = pb.unwrap();
    env.assert_between(got - released, Duration::ZERO, Duration::ZERO, "handoff");
    assert!(pb.fencing_token() > term.fencing_token());
    drop(pb);
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

async fn bad_permit_counts_and_names_are_rejected_before_anything_starts(env: Env) {
    let d = env.replica("pod-a").await;
    for permits in [0, dsync::semaphore::MAX_PERMITS + 1] {
        let err = d.semaphore("x", permits).unwrap_err();
        assert!(
            matches!(&err, Error::BadPermitCount { permits: p, max, .. }
                if *p == permits && *max == dsync::semaphore::MAX_PERMITS),
            "{err:?}"
        );
    }
    // "unscoped.semaphore." is 19 characters, ".9" two more: ten slots fit, eleven do not.
    let name = "a".repeat(253 - 21);
    let sem = d.semaphore(&name, 10).unwrap();
    assert_eq!(sem.slots()[9].name.len(), 253);
    let err = d.semaphore(&name, 11).unwrap_err();
    assert!(
        matches!(
            &err,
            Error::BadResourceName {
                source: NameError::TooLong { len: 254, .. },
                ..
            }
        ),
        "{err:?}"
    );
    assert!(matches!(
        d.semaphore("Bad_Name", 2),
        Err(Error::BadResourceName {
            source: NameError::InvalidName { .. },
            ..
        })
    ));
    assert!(matches!(
        d.semaphore("", 2),
        Err(Error::BadResourceName {
            source: NameError::EmptyName { kind: "semaphore" },
            ..
        })
    ));
    assert!(matches!(
        d.observe_for(d.resource("x"), LeaseKind::Semaphore),
        Err(Error::InvalidState { .. })
    ));
    // Only the ten valid slots were started.
    assert_eq!(support::running(&d), (0, 10));
    let leases = d.leases();
    assert!(
        leases.iter().all(|l| l.kind == LeaseKind::Semaphore),
        "{leases:?}"
    );
    d.shutdown().await.unwrap();
}

async fn three_permits_ten_contenders_three_replicas_never_more_than_three(env: Env) {
    let replicas = [
        env.replica("pod-a").await,
        env.replica("pod-b").await,
        env.replica("pod-c").await,
    ];
    let log = TermLog::new();
    let got = Arc::new(Mutex::new(Vec::new()));
    let rounds = env.rounds(3);
    let mut contenders = Vec::new();
    for c in 0..10 {
        let d = replicas[c % 3].clone();
        let sem = d.semaphore("pool", 3).unwrap();
        let (log, got) = (log.clone(), got.clone());
        let hold = env.retry() * (1 + (c as u32 % 3)) / 2;
        contenders.push(actix::spawn(async move {
            for _ in 0..rounds {
                let permit = sem.acquire().await.unwrap();
                log.got(d.identity(), permit.term());
                got.lock().unwrap().push(c);
                tokio::time::sleep(hold).await;
                assert!(permit.is_active(), "held and renewed");
                if c % 2 == 0 {
                    permit.release().await.unwrap();
                } else {
                    drop(permit); // given back without waiting
                }
            }
        }));
    }
    for c in contenders {
        within(env.limit(), "contender", c).await.unwrap();
    }
    let sem = replicas[0].semaphore("pool", 3).unwrap();
    all_free(&env, &sem).await;
    within(env.limit(), "every term ended", log.all_ended()).await;
    let checked = log.check().unwrap_or_else(|v| panic!("{v}"));
    assert_eq!(
        checked,
        10 * rounds,
        "every contender got a permit each round"
    );
    let slots = sem.slots();
    let max = log.max_concurrent(|l| slots.contains(l));
    assert!(max <= 3, "{max} permits at once");
    assert!(max >= 2, "the permits were used side by side ({max})");
    let mut who = got.lock().unwrap().clone();
    who.sort_unstable();
    who.dedup();
    assert_eq!(who, (0..10).collect::<Vec<_>>());
    for d in replicas {
        d.shutdown().await.unwrap();
    }
}

async fn a_crashed_holders_slot_frees_after_the_lease_duration_and_not_before(env: Env) {
    let (a, fa) = env.faulty_replica("pod-a").await;
    let (b, c) = (env.replica("pod-b").await, env.replica("pod-c").await);
    let (sa, sb, sc) = (
        a.semaphore("x", 2).unwrap(),
        b.semaphore("x", 2).unwrap(),
        c.semaphore("x", 2).unwrap(),
    );
    let pa = sa.acquire().await.unwrap();
    let pb = sb.acquire().await.unwrap();
    assert_ne!(pa.slot(), pb.slot());
    // Mid-way between two renewals.
    tokio::time::sleep(env.retry() * 5 / 2).await;
    let mut status = sc.watch_slot(pa.slot()).unwrap();
    let (sc2, slot_a) = (sc.clone(), pa.slot());
    let waiter = actix::spawn(async move { (sc2.acquire().await, Instant::now()) });
    within(
        env.limit(),
        "c waits",
        status.wait_for(|s| s.waiters == 1 && s.holder.is_some()),
    )
    .await
    .unwrap();
    let crash = Instant::now();
    fa.partition();
    let (pc, got) = within(env.limit(), "c acquires", waiter).await.unwrap();
    let pc = pc.unwrap();
    assert_eq!(pc.slot(), slot_a, "B's slot is still held");
    // C saw A's last renewal at most one retry period before the crash, and takes the slot
    // one lease duration after seeing it: not before.
    env.assert_between(
        got - crash,
        env.lease() - env.retry(),
        env.lease(),
        "takeover",
    );
    assert!(!pa.is_active(), "A's term ended at its renew deadline");
    assert!(pc.fencing_token() > pa.fencing_token());
    assert!(pb.is_active());
    fa.heal();
    assert!(matches!(
        pa.release().await,
        Err(Error::NotLockHolder { .. })
    ));
    drop((pb, pc));
    for d in [a, b, c] {
        d.shutdown().await.unwrap();
    }
}

async fn release_hands_the_slot_to_a_waiter_at_once(env: Env) {
    let (a, b) = (env.replica("pod-a").await, env.replica("pod-b").await);
    let (sa, sb) = (a.semaphore("x", 2).unwrap(), b.semaphore("x", 2).unwrap());
    let p0 = sa.acquire().await.unwrap();
    let p1 = sa.acquire().await.unwrap();
    assert_eq!(no_free_slot(&sb.try_acquire().await.unwrap_err()).len(), 2);
    let sb2 = sb.clone();
    let waiter = actix::spawn(async move { (sb2.acquire().await, Instant::now()) });
    let mut status = sb.watch_slot(p1.slot()).unwrap();
    within(env.limit(), "b waits", status.wait_for(|s| s.waiters == 1))
        .await
        .unwrap();
    tokio::time::sleep(env.leases(2)).await;
    let slot = p1.slot();
    let released = Instant::now();
    p1.release().await.unwrap();
    let (pb, got) = within(env.limit(), "b acquires", waiter).await.unwrap();
    let pb = pb.unwrap();
    assert_eq!(pb.slot(), slot);
    env.assert_between(got - released, Duration::ZERO, Duration::ZERO, "handoff");
    assert!(p0.is_active());
    drop((p0, pb));
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

async fn dropped_permits_and_abandoned_acquires_leave_no_slot_held(env: Env) {
    let (a, b) = (env.replica("pod-a").await, env.replica("pod-b").await);
    let (sa, sb) = (a.semaphore("x", 3).unwrap(), b.semaphore("x", 3).unwrap());
    // A dropped permit gives its slot back at once.
    let p = sa.acquire().await.unwrap();
    let term = p.term().clone();
    drop(p);
    within(env.limit(), "term ends", term.cancelled()).await;
    all_free(&env, &sa).await;
    // B holds every slot; A's acquires give up (timeout, cancel, a future dropped after a
    // poll) while queued on every slot.
    let held: Vec<Permit> = vec![
        sb.acquire().await.unwrap(),
        sb.acquire().await.unwrap(),
        sb.acquire().await.unwrap(),
    ];
    let err = sa.acquire_timeout(env.retry()).await.unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err:?}");
    let cancel = CancellationToken::new();
    let c = cancel.clone();
    let cancelled = actix::spawn({
        let sa = sa.clone();
        async move { sa.acquire_with_cancel(c).await }
    });
    settle().await;
    cancel.cancel();
    assert!(matches!(
        within(env.limit(), "cancelled", cancelled).await.unwrap(),
        Err(Error::Cancelled { .. })
    ));
    let mut fut = Box::pin(sa.acquire());
    assert!((&mut fut).now_or_never().is_none());
    drop(fut);
    settle().await;
    for slot in 0..3 {
        within(
            env.limit(),
            "a's waiters gone",
            sa.watch_slot(slot).unwrap().wait_for(|s| s.waiters == 0),
        )
        .await
        .unwrap();
    }
    drop(held);
    all_free(&env, &sa).await;
    // Nobody of A's took a slot meanwhile.
    tokio::time::sleep(env.leases(2)).await;
    for key in sa.slots() {
        assert_eq!(env.holder(&key).await, None, "{key}");
    }
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

async fn a_granted_acquire_dropped_before_it_returns_gives_the_slot_back(env: Env) {
    let (a, b) = (env.replica("pod-a").await, env.replica("pod-b").await);
    let (sa, sb) = (a.semaphore("x", 1).unwrap(), b.semaphore("x", 1).unwrap());
    let first = sa.acquire().await.unwrap();
    let first_term = first.term().clone();
    // Queued behind `first` in the slot's line, polled once and then never again.
    let mut fut = Box::pin(sa.acquire());
    assert!((&mut fut).now_or_never().is_none());
    let mut status = sa.watch_slot(0).unwrap();
    within(env.limit(), "queued", status.wait_for(|s| s.waiters == 1))
        .await
        .unwrap();
    drop(first);
    // The slot is granted to the future (its term is the slot's local term now) ...
    let granted = within(
        env.limit(),
        "granted",
        status.wait_for(|s| s.term.as_ref().is_some_and(|t| t.id() != first_term.id())),
    )
    .await
    .unwrap()
    .term
    .clone()
    .unwrap();
    // ... which is dropped before it returns: the grant is given back at once.
    drop(fut);
    within(env.limit(), "grant's term ends", granted.cancelled()).await;
    let pb = within(env.limit(), "b acquires", sb.acquire())
        .await
        .unwrap();
    assert!(pb.fencing_token() > granted.fencing_token());
    drop(pb);
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

async fn local_waiters_are_served_first_come_first_served(env: Env) {
    let d = env.replica("pod-a").await;
    let sem = d.semaphore("x", 2).unwrap();
    let held = [sem.acquire().await.unwrap(), sem.acquire().await.unwrap()];
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut waiters = Vec::new();
    let hold = env.retry() / 2;
    for i in 0..5 {
        let (sem2, order) = (sem.clone(), order.clone());
        waiters.push(actix::spawn(async move {
            let permit = sem2.acquire().await.unwrap();
            order.lock().unwrap().push(i);
            tokio::time::sleep(hold).await;
            permit.release().await.unwrap();
        }));
        // Queue them in a known order (each queues on both slots).
        let mut status = sem.watch_slot(1).unwrap();
        within(
            env.limit(),
            "queued",
            status.wait_for(|s| s.waiters == i + 1),
        )
        .await
        .unwrap();
    }
    // One slot at a time: the line moves through slot 0 while slot 1 stays held.
    let [p0, p1] = held;
    p0.release().await.unwrap();
    for w in waiters {
        within(env.limit(), "waiter", w).await.unwrap();
    }
    assert_eq!(*order.lock().unwrap(), vec![0, 1, 2, 3, 4]);
    assert!(p1.is_active());
    drop(p1);
    d.shutdown().await.unwrap();
}

async fn timeout_cancel_and_with_permit(env: Env) {
    let (a, b) = (env.replica("pod-a").await, env.replica("pod-b").await);
    let (sa, sb) = (a.semaphore("x", 2).unwrap(), b.semaphore("x", 2).unwrap());
    let hold = env.leases(2);
    let limit = env.limit();
    let sb2 = sb.clone();
    let out = sa
        .with_permit(|term| async move {
            assert!(term.is_active());
            // The other slot is free; with it taken too, there is none.
            let other = within(limit, "pod-b takes the other slot", free_slot(&sb2)).await;
            let err = sb2.try_acquire().await.unwrap_err();
            assert!(
                no_free_slot(&err).iter().any(|(_, h)| h == "pod-a"),
                "{err:?}"
            );
            tokio::time::sleep(hold).await; // renewed meanwhile
            assert!(term.is_active());
            drop(other);
            term.fencing_token()
        })
        .await
        .unwrap();
    assert!(out >= 0);
    all_free(&env, &sa).await;
    // with_try_permit fails fast when every slot is held.
    let held = [sb.acquire().await.unwrap(), sb.acquire().await.unwrap()];
    let err = sa.with_try_permit(|_| async {}).await.unwrap_err();
    assert!(
        matches!(
            &err,
            dsync::lock::WithLockError::Lock(Error::NoFreeSlot { .. })
        ),
        "{err:?}"
    );
    let start = Instant::now();
    let limit = env.retry() * 5 / 2;
    let err = sa.acquire_timeout(limit).await.unwrap_err();
    assert!(
        matches!(&err, Error::Timeout { after, .. } if *after == limit),
        "{err:?}"
    );
    env.assert_timer(start.elapsed(), limit, limit, "timed out");
    drop(held);
    sa.acquire_timeout(env.limit())
        .await
        .unwrap()
        .release()
        .await
        .unwrap();
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

async fn shutdown_releases_permits_and_fails_waiters(env: Env) {
    let (a, b) = (env.replica("pod-a").await, env.replica("pod-b").await);
    let (sa, sb) = (a.semaphore("x", 1).unwrap(), b.semaphore("x", 1).unwrap());
    let p = sa.acquire().await.unwrap();
    let sa2 = sa.clone();
    let waiter = actix::spawn(async move { sa2.acquire().await });
    within(
        env.limit(),
        "queued",
        sa.watch_slot(0).unwrap().wait_for(|s| s.waiters == 1),
    )
    .await
    .unwrap();
    a.shutdown().await.unwrap();
    assert!(!p.is_active(), "shutdown ends the permit's term");
    assert!(matches!(
        within(env.limit(), "waiter", waiter).await.unwrap(),
        Err(Error::Stopped { .. })
    ));
    assert!(matches!(sa.try_acquire().await, Err(Error::Stopped { .. })));
    assert!(matches!(a.semaphore("x", 1), Err(Error::Stopped { .. })));
    // Released, not left to expire.
    let pb = within(env.limit(), "b acquires", sb.acquire())
        .await
        .unwrap();
    drop((p, pb));
    b.shutdown().await.unwrap();
}

/// The common case costs one write: with free slots, `acquire` takes one of them (found in
/// the replica's view, tried on a fresh read), not every free slot then all but one given
/// back; no other slot's fencing token moves.
async fn a_grant_is_one_write_and_burns_no_token(env: Env) {
    use dsync::testing::Call;
    let (b, _) = env.faulty_replica("pod-b").await;
    let sb = b.semaphore("x", 8).unwrap();
    // Another replica holds three of the eight slots.
    let held: Vec<Permit> = futures::future::join_all((0..3).map(|_| free_slot(&sb)))
        .await
        .into_iter()
        .collect();
    let (a, fa) = env.faulty_replica("pod-a").await;
    let sa = a.semaphore("x", 8).unwrap();
    settle().await;
    let token_of = async |slot: usize| {
        env.peek(&sa.slots()[slot])
            .await
            .and_then(|l| l.record.lease_transitions)
    };
    let mut before = Vec::new();
    for slot in 0..8 {
        before.push(token_of(slot).await);
    }
    let writes = |f: &dsync::testing::FaultyStore| f.calls(Call::Create) + f.calls(Call::Replace);
    let mut granted = Vec::new();
    for n in 1..=5u64 {
        let w0 = writes(&fa);
        let permit = within(env.limit(), "a permit", sa.acquire()).await.unwrap();
        assert_eq!(writes(&fa) - w0, 1, "grant {n}: one write");
        assert!(!held.iter().any(|p| p.slot() == permit.slot()));
        granted.push(permit);
    }
    let mut after = Vec::new();
    for slot in 0..8 {
        after.push(token_of(slot).await);
    }
    for slot in 0..8 {
        let taken = granted.iter().any(|p| p.slot() == slot);
        if !taken {
            assert_eq!(after[slot], before[slot], "slot {slot}: no token burnt");
        }
    }
    drop((granted, held));
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

/// `acquire` waits; its first try at a free-looking slot is only one attempt. A try that
/// meets a 503, or whose write landed but whose reply was lost, sends the caller to the
/// queue (the slot actors retry on their backoff and find out what the write did): the
/// caller gets a permit, and no slot is left held for nobody. A definite answer
/// (`Forbidden`) fails the call instead of waiting forever.
async fn acquire_waits_out_a_failed_try_and_fails_on_a_definite_answer(env: Env) {
    use dsync::StoreError;
    use dsync::testing::Call;
    let (a, fa) = env.faulty_replica("pod-a").await;
    let unavailable = || StoreError::Unavailable {
        message: "injected 503".into(),
        source: None,
    };
    // A 503 on the try's read.
    let sa = a.semaphore("flaky", 2).unwrap();
    fa.fail_next(Call::Get, unavailable);
    let permit = within(env.limit(), "a permit after a 503", sa.acquire())
        .await
        .unwrap();
    assert!(fa.calls(Call::Get) >= 1, "the try read the slot");
    drop(permit);
    all_free(&env, &sa).await;
    // The try's write lands, its reply is lost.
    let sb = a.semaphore("lost", 2).unwrap();
    fa.lose_next_reply(Call::Create);
    let permit = within(env.limit(), "a permit after a lost reply", sb.acquire())
        .await
        .unwrap();
    within(env.limit(), "only the granted slot held", async {
        loop {
            let mut held = Vec::new();
            for (slot, key) in sb.slots().iter().enumerate() {
                if env.holder(key).await.as_deref() == Some("pod-a") {
                    held.push(slot);
                }
            }
            if held == [permit.slot()] {
                return;
            }
            tokio::time::sleep(env.retry() / 4).await;
        }
    })
    .await;
    drop(permit);
    all_free(&env, &sb).await;
    // RBAC says no: an answer, not something to wait out.
    let sc = a.semaphore("denied", 2).unwrap();
    fa.fail_always(Call::Get, || StoreError::Forbidden {
        verb: "get".into(),
        resource: "leases".into(),
        message: "injected".into(),
    });
    let denied = within(env.limit(), "a denied acquire", sc.acquire()).await;
    assert!(
        matches!(denied, Err(Error::Forbidden { ref verb, .. }) if verb == "get"),
        "{denied:?}"
    );
    fa.clear();
    a.shutdown().await.unwrap();
}
