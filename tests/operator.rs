//! What operators and the platform do to a Lease, as faults like any other (issue 23): an
//! administrator's delete or edit, a force release, a twin process with the same identity,
//! versions going back (an etcd restore). Each test is named after the rule it protects (see
//! README "Safety rules") and runs on `MemoryStore` in paused time and on the real
//! kube-apiserver (a real DELETE there). The oracle is the callers' view (`TermLog`): no two
//! terms of a lease overlap, and fencing tokens strictly increase.
#![cfg(feature = "testing")]

mod support;

use dsync::store::{LeaseStore, StoredLease};
use dsync::testing::{FaultyStore, TermLog, within};
use dsync::{Dsync, Election, MemoryStore};
use support::backend::{Backend, Env};

crate::on_both_stores!(
    token_never_back_and_deleted_held_waits_when_a_held_lease_is_deleted,
    token_never_back_when_an_edit_resets_transitions_and_clears_the_holder,
    operator_release_grace_force_release_of_a_cut_off_leader_never_makes_two_leaders,
    operator_release_grace_force_release_now_frees_the_lease_at_once,
    one_identity_an_edit_naming_another_live_replica_never_makes_two_holders,
    restore_resync_leaders_are_reestablished_when_versions_go_back,
);

/// Waits until `election` leads; returns its token.
async fn leads(env: &Env, what: &str, election: &Election) -> i32 {
    within(env.limit(), what, election.elected())
        .await
        .unwrap()
        .fencing_token()
}

/// Waits until one of `a` and `b` leads; returns its token.
async fn next_leader(env: &Env, a: &Election, b: &Election) -> i32 {
    within(env.limit(), "a leader", async {
        tokio::select! {
            t = a.elected() => t.unwrap().fencing_token(),
            t = b.elected() => t.unwrap().fencing_token(),
        }
    })
    .await
}

/// pod-a leads election `x` (with token `first`), pod-b follows it, then pod-a is cut off
/// from the store: it still believes it leads until its renew deadline.
struct CutOff {
    a: Dsync,
    fa: FaultyStore,
    b: Dsync,
    ea: Election,
    eb: Election,
    log: TermLog,
    first: i32,
}

async fn cut_off_leader(env: &Env) -> CutOff {
    let (a, fa) = env.faulty_replica("pod-a").await;
    let b = env.replica("pod-b").await;
    let log = TermLog::default();
    let ea = a.election("x").unwrap();
    log.record("pod-a", &ea).unwrap();
    let first = leads(env, "a leads", &ea).await;
    let eb = b.election("x").unwrap();
    log.record("pod-b", &eb).unwrap();
    env.sees_leader(&eb, "pod-a").await;
    fa.partition();
    CutOff {
        a,
        fa,
        b,
        ea,
        eb,
        log,
        first,
    }
}

async fn token_never_back_and_deleted_held_waits_when_a_held_lease_is_deleted(env: Env) {
    // The leader is cut off from the API server and still believes it leads (until its renew
    // deadline) when an administrator deletes its Lease. Before: the follower created the
    // Lease at once with token 0: two live terms, and the stale one held the higher token.
    let CutOff {
        a,
        fa,
        b,
        ea,
        eb,
        log,
        first,
    } = cut_off_leader(&env).await;
    env.delete(&ea.lease()).await;
    let second = leads(&env, "b leads", &eb).await;
    assert!(second > first, "token {second} after {first}");
    let stored = env.peek(&eb.lease()).await.unwrap();
    assert_eq!(stored.record.lease_transitions, Some(second));
    log.check().unwrap();
    fa.heal();
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

async fn token_never_back_when_an_edit_resets_transitions_and_clears_the_holder(env: Env) {
    // A few terms first, so that the token is above what a reset writes.
    let (a, b) = (env.replica("pod-a").await, env.replica("pod-b").await);
    let log = TermLog::default();
    let ea = a.election("x").unwrap();
    log.record("pod-a", &ea).unwrap();
    leads(&env, "a leads", &ea).await;
    let eb = b.election("x").unwrap();
    log.record("pod-b", &eb).unwrap();
    env.sees_leader(&eb, "pod-a").await;
    ea.stop().await.unwrap();
    leads(&env, "b leads", &eb).await;
    let ea = a.election("x").unwrap();
    log.record("pod-a", &ea).unwrap();
    env.sees_leader(&ea, "pod-b").await;
    eb.stop().await.unwrap();
    let before = leads(&env, "a leads again", &ea).await;
    assert!(before >= 2);
    let eb = b.election("x").unwrap();
    log.record("pod-b", &eb).unwrap();
    env.sees_leader(&eb, "pod-a").await;
    let term = ea.elected().await.unwrap();
    // `kubectl apply` of a stale manifest: no holder, transitions 0, the lease duration kept.
    env.edit(&ea.lease(), |r| {
        r.holder_identity = None;
        r.lease_transitions = Some(0);
    })
    .await;
    within(env.limit(), "a's term ends", term.cancelled()).await;
    // Someone leads again, with a token above every earlier one.
    let after = next_leader(&env, &ea, &eb).await;
    assert!(after > before, "token {after} after {before}");
    log.check().unwrap();
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

async fn operator_release_grace_force_release_of_a_cut_off_leader_never_makes_two_leaders(
    env: Env,
) {
    // Before: the force release wrote a 1 s record and the follower took it at once, while the
    // cut-off leader's term lasted until its renew deadline.
    let op = env.replica("operator").await;
    let CutOff {
        a,
        fa,
        b,
        ea,
        eb,
        log,
        first,
    } = cut_off_leader(&env).await;
    let released = op.force_release(&ea.lease()).await.unwrap();
    assert_eq!(released.previous_holder.as_deref(), Some("pod-a"));
    let stored = env.peek(&ea.lease()).await.unwrap();
    assert_eq!(stored.record.holder(), None);
    assert_eq!(
        stored.record.lease_duration_seconds,
        Some(env.timing().lease_duration_seconds()),
        "a grace record: the holder's full lease duration"
    );
    let second = leads(&env, "b leads", &eb).await;
    assert!(second > first);
    log.check().unwrap();
    fa.heal();
    for d in [a, b, op] {
        d.shutdown().await.unwrap();
    }
}

async fn operator_release_grace_force_release_now_frees_the_lease_at_once(env: Env) {
    // For a holder known dead: the next candidate takes the lease at once.
    let (a, fa) = env.faulty_replica("pod-a").await;
    let (b, op) = (env.replica("pod-b").await, env.replica("operator").await);
    let ea = a.election("x").unwrap();
    let first = leads(&env, "a leads", &ea).await;
    let eb = b.election("x").unwrap();
    env.sees_leader(&eb, "pod-a").await;
    fa.partition();
    drop(ea);
    let start = tokio::time::Instant::now();
    op.force_release_now(&eb.lease()).await.unwrap();
    let second = leads(&env, "b leads", &eb).await;
    assert!(second > first);
    env.assert_between(
        start.elapsed(),
        std::time::Duration::ZERO,
        env.retry(),
        "taken at once",
    );
    fa.heal();
    for d in [a, b, op] {
        d.shutdown().await.unwrap();
    }
}

async fn one_identity_an_edit_naming_another_live_replica_never_makes_two_holders(env: Env) {
    // An administrator writes pod-b as the holder while pod-a, cut off, still leads. pod-b
    // did not write that record: it takes it only once it has not changed for a renew
    // deadline, by which pod-a's term is over. Before: pod-b took it at once.
    let CutOff {
        a,
        fa,
        b,
        ea,
        eb,
        log,
        first,
    } = cut_off_leader(&env).await;
    env.edit(&ea.lease(), |r| r.holder_identity = Some("pod-b".into()))
        .await;
    let second = leads(&env, "b leads", &eb).await;
    assert!(second > first);
    log.check().unwrap();
    fa.heal();
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

async fn restore_resync_leaders_are_reestablished_when_versions_go_back(env: Env) {
    // Every replica's view of the store goes back in time (an etcd restore: versions lower
    // than any seen). Before: every read and event looked older than what was seen and was
    // ignored; the leader stepped down and nobody could take the lease again.
    let (a, fa) = env.faulty_replica("pod-a").await;
    let (b, fb) = env.faulty_replica("pod-b").await;
    let log = TermLog::default();
    let ea = a.election("x").unwrap();
    log.record("pod-a", &ea).unwrap();
    let first = leads(&env, "a leads", &ea).await;
    let eb = b.election("x").unwrap();
    log.record("pod-b", &eb).unwrap();
    env.sees_leader(&eb, "pod-a").await;
    // A few renewals first, so that the versions go back to versions that existed.
    tokio::time::sleep(env.retry() * 3).await;
    let version: u64 = env
        .peek(&ea.lease())
        .await
        .unwrap()
        .resource_version
        .parse()
        .unwrap();
    let by = version / 2;
    assert!(by >= 1, "version {version}");
    fa.rewind_versions(by);
    fb.rewind_versions(by);
    // Within two lease durations there is a leader again that both agree on, and it renews.
    tokio::time::sleep(env.leases(2)).await;
    let leader = within(env.limit(), "a leader", async {
        tokio::select! {
            t = ea.elected() => { t.unwrap(); "pod-a" }
            t = eb.elected() => { t.unwrap(); "pod-b" }
        }
    })
    .await;
    let (me, other) = if leader == "pod-a" {
        (&ea, &eb)
    } else {
        (&eb, &ea)
    };
    env.sees_leader(other, leader).await;
    let term = me.elected().await.unwrap();
    assert!(term.fencing_token() >= first);
    tokio::time::sleep(env.leases(1)).await;
    assert!(term.is_active(), "renewed on the rewound versions");
    log.check().unwrap();
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

/// An etcd restore of the memory store (data and versions both go back): the restored
/// record names an older term; the leader steps down, and within two lease durations there
/// is a leader again whose token is above every token handed out before the restore.
#[actix::test]
async fn restore_resync_a_restored_memory_store_gets_a_leader_with_a_higher_token() {
    let env = Env::memory().await;
    let Backend::Memory(store) = &env.backend else {
        unreachable!("memory")
    };
    let store: MemoryStore = store.clone();
    let (a, b) = (env.replica("pod-a").await, env.replica("pod-b").await);
    let log = TermLog::default();
    let ea = a.election("x").unwrap();
    log.record("pod-a", &ea).unwrap();
    leads(&env, "a leads", &ea).await;
    let snapshot = store.snapshot();
    let eb = b.election("x").unwrap();
    log.record("pod-b", &eb).unwrap();
    env.sees_leader(&eb, "pod-a").await;
    ea.stop().await.unwrap();
    let before = leads(&env, "b leads", &eb).await;
    let ea = a.election("x").unwrap();
    log.record("pod-a", &ea).unwrap();
    env.sees_leader(&ea, "pod-b").await;
    // etcd restored to the snapshot: pod-a holds the lease with token 0, at an old version.
    store.restore(&snapshot);
    let restored: StoredLease = store.get(&ea.lease()).await.unwrap();
    assert_eq!(restored.record.holder(), Some("pod-a"));
    tokio::time::sleep(env.leases(2)).await;
    let after = next_leader(&env, &ea, &eb).await;
    assert!(after > before, "token {after} after {before}");
    log.check().unwrap();
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}
