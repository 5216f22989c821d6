//! The test kit's own tests (`dsync::testing`): every fault of `FaultyStore`, the term log's
//! checks (they pass on real handoffs and catch overlaps, reused and decreasing tokens), the
//! single-leader monitor, and the conformance suite catching stores that break its rules.
//! Memory store, paused time.
#![cfg(feature = "testing")]

use std::time::{Duration, SystemTime};

use dsync::store::{LeaseKey, LeaseRecord, LeaseStore, StoreError, WatchEvent};
use dsync::testing::conformance::{Rule, Suite};
use dsync::testing::{
    Call, ClockSkew, FaultyStore, SingleLeaderMonitor, TermLog, TermViolation, When, leader_of,
    paused_config, settle, within,
};
use dsync::{Dsync, MemoryStore};
use futures::{FutureExt, StreamExt};
use tokio::time::Instant;

const LIMIT: Duration = Duration::from_secs(600);

fn key() -> LeaseKey {
    LeaseKey::new("default", "x")
}

fn held_by(holder: &str) -> LeaseRecord {
    LeaseRecord {
        holder_identity: Some(holder.into()),
        lease_duration_seconds: Some(15),
        lease_transitions: Some(0),
        ..Default::default()
    }
}

fn unavailable() -> StoreError {
    StoreError::Unavailable {
        message: "injected".into(),
        source: None,
    }
}

/// Whether `fut` is still pending after every ready task ran and `wait` of paused time passed.
async fn hangs<T>(fut: impl std::future::Future<Output = T>, wait: Duration) -> bool {
    tokio::time::timeout(wait, fut).await.is_err()
}

#[actix::test]
async fn a_partition_hangs_calls_and_ends_watches_until_healed() {
    tokio::time::pause();
    let memory = MemoryStore::new();
    let store = FaultyStore::new(memory.clone());
    let mut watch = store.watch("default");
    store.partition();
    assert!(hangs(store.get(&key()), LIMIT).await);
    assert!(hangs(store.create(&key(), held_by("a")), LIMIT).await);
    assert!(memory.peek(&key()).is_none(), "nothing reached the store");
    assert!(
        within(LIMIT, "the watch ends", watch.next())
            .await
            .is_none(),
        "the open watch ended at once"
    );
    let mut during = store.watch("default");
    memory.put(&key(), held_by("z")).unwrap();
    assert!(
        hangs(during.next(), LIMIT).await,
        "a watch opened now hears nothing"
    );
    store.heal();
    assert_eq!(store.get(&key()).await.unwrap().record.holder(), Some("z"));
    assert_eq!(store.calls(Call::Get), 2);
    assert_eq!(store.calls(Call::Create), 1);
    assert_eq!(store.calls(Call::Watch), 2);
    assert_eq!(store.calls(Call::Any), 3);
}

#[actix::test]
async fn list_goes_through_the_same_faults_as_every_call() {
    tokio::time::pause();
    let memory = MemoryStore::new();
    let store = FaultyStore::new(memory.clone());
    memory.put(&key(), held_by("a")).unwrap();
    assert_eq!(store.list("default").await.unwrap().len(), 1);
    store.partition();
    assert!(hangs(store.list("default"), LIMIT).await);
    store.heal();
    store.stall(Call::List);
    assert!(hangs(store.list("default"), LIMIT).await);
    assert!(store.get(&key()).await.is_ok(), "other calls go on");
    store.heal();
    store.fail_next(Call::List, unavailable);
    assert!(matches!(
        store.list("default").await,
        Err(StoreError::Unavailable { .. })
    ));
    store.fail_always(Call::Any, unavailable);
    assert!(store.list("default").await.is_err(), "Any covers list");
    store.clear();
    store.tamper_reads(|mut lease| {
        lease.record.lease_duration_seconds = Some(-5);
        lease
    });
    let listed = store.list("default").await.unwrap();
    assert_eq!(listed[0].record.lease_duration_seconds, Some(-5));
    store.clear();
    assert_eq!(store.calls(Call::List), 6);
    assert_eq!(store.calls(Call::Get), 1);
    assert_eq!(store.calls(Call::Any), 7);
    assert_eq!(
        memory.stats().lists,
        2,
        "only the calls that reached the store"
    );
}

#[actix::test]
async fn a_stall_hangs_only_its_kind_of_call() {
    tokio::time::pause();
    let store = FaultyStore::new(MemoryStore::new());
    store.stall(Call::Get);
    assert!(hangs(store.get(&key()), LIMIT).await);
    let created = store.create(&key(), held_by("a")).await.unwrap();
    store
        .replace(&key(), held_by("b"), &created.resource_version)
        .await
        .unwrap();
    store.heal();
    assert_eq!(store.get(&key()).await.unwrap().record.holder(), Some("b"));
}

#[actix::test]
async fn failures_before_and_after_the_write_and_faults_that_last() {
    tokio::time::pause();
    let memory = MemoryStore::new();
    let store = FaultyStore::new(memory.clone());
    // Before: nothing is written.
    store.fail_next(Call::Create, unavailable);
    assert!(matches!(
        store.create(&key(), held_by("a")).await,
        Err(StoreError::Unavailable { .. })
    ));
    assert!(memory.peek(&key()).is_none());
    // After (a lost reply): written, but the caller hears a failure.
    store.lose_next_reply(Call::Create);
    let err = store.create(&key(), held_by("a")).await.unwrap_err();
    assert!(err.to_string().contains("default/x"), "{err}");
    let v1 = memory.peek(&key()).expect("the write landed");
    store.fail_next_when(Call::Any, When::After, unavailable);
    assert!(
        store
            .replace(&key(), held_by("b"), &v1.resource_version)
            .await
            .is_err()
    );
    assert_eq!(memory.peek(&key()).unwrap().record.holder(), Some("b"));
    // A fault that lasts: every get fails until cleared; other calls go on.
    store.fail_always(Call::Get, unavailable);
    for _ in 0..3 {
        assert!(store.get(&key()).await.is_err());
    }
    store.clear();
    assert!(store.get(&key()).await.is_ok());
}

#[actix::test]
async fn a_409_storm_answers_conflict_n_times_then_lets_writes_through() {
    tokio::time::pause();
    let store = FaultyStore::new(MemoryStore::new());
    let v1 = store.create(&key(), held_by("a")).await.unwrap();
    store.conflict_storm(3);
    for _ in 0..3 {
        assert!(matches!(
            store
                .replace(&key(), held_by("b"), &v1.resource_version)
                .await,
            Err(StoreError::Conflict { lease }) if lease == "default/x"
        ));
    }
    store
        .replace(&key(), held_by("b"), &v1.resource_version)
        .await
        .unwrap();
}

#[actix::test]
async fn latency_delays_each_leg_and_the_watch() {
    tokio::time::pause();
    let memory = MemoryStore::new();
    let store = FaultyStore::new(memory.clone());
    let mut watch = store.watch("default");
    store.set_leg_latency(Duration::from_secs(1), Duration::from_secs(2));
    let start = Instant::now();
    let create = actix::spawn(store.create(&key(), held_by("a")));
    tokio::time::sleep(Duration::from_millis(999)).await;
    assert!(memory.peek(&key()).is_none(), "still on its way");
    tokio::time::sleep(Duration::from_millis(1)).await;
    settle().await;
    assert!(
        memory.peek(&key()).is_some(),
        "landed after the request leg"
    );
    create.await.unwrap().unwrap();
    // Paused-time timers fire on whole milliseconds, rounded up: a millisecond per sleep.
    let tick = Duration::from_millis(1);
    let both = start.elapsed();
    assert!(
        both >= Duration::from_secs(3) && both <= Duration::from_secs(3) + tick * 3,
        "both legs: {both:?}"
    );
    // The watch event was emitted at 1 s and is delivered 2 s later.
    let event = watch.next().await.unwrap().unwrap();
    assert!(matches!(event, WatchEvent::Applied(_)));
    let delivered = start.elapsed();
    assert!(
        delivered >= Duration::from_secs(3) && delivered <= Duration::from_secs(3) + tick * 3,
        "{delivered:?}"
    );
}

#[actix::test]
async fn dropped_watches_end_at_once_and_new_ones_work() {
    tokio::time::pause();
    let memory = MemoryStore::new();
    let store = FaultyStore::new(memory.clone());
    let mut old = store.watch("default");
    store.drop_watches();
    assert!(
        within(LIMIT, "ends", old.next()).await.is_none(),
        "ended without another event"
    );
    let mut new = store.watch("default");
    memory.put(&key(), held_by("a")).unwrap();
    assert!(matches!(
        within(LIMIT, "delivers", new.next()).await,
        Some(Ok(WatchEvent::Applied(_)))
    ));
}

#[actix::test]
async fn silent_watches_stay_open_deliver_nothing_and_resume_when_healed() {
    tokio::time::pause();
    let memory = MemoryStore::new();
    let store = FaultyStore::new(memory.clone());
    let mut watch = store.watch("default");
    store.silence_watches();
    memory.put(&key(), held_by("lost")).unwrap();
    assert!(hangs(watch.next(), LIMIT).await, "silent, not ended");
    store.heal();
    let later = memory.put(&key(), held_by("later")).unwrap();
    assert_eq!(
        within(LIMIT, "delivers again", watch.next())
            .await
            .unwrap()
            .unwrap(),
        WatchEvent::Applied(later),
        "the event written while silent is lost; later ones flow"
    );
}

#[actix::test]
async fn a_failed_watch_yields_its_error_and_ends() {
    tokio::time::pause();
    let store = FaultyStore::new(MemoryStore::new());
    store.fail_next(Call::Watch, unavailable);
    let events: Vec<_> = store.watch("default").collect().await;
    assert!(matches!(events[..], [Err(StoreError::Unavailable { .. })]));
    // Call::Any is about calls, not watches.
    store.fail_next(Call::Any, unavailable);
    let mut watch = store.watch("default");
    assert!(store.get(&key()).await.is_err());
    assert!(
        hangs(watch.next(), LIMIT).await,
        "the watch is open and quiet"
    );
}

#[actix::test]
async fn a_skewed_clock_shifts_the_times_the_replica_stamps() {
    tokio::time::pause();
    let memory = MemoryStore::new();
    let ten = Duration::from_secs(600);
    let store = FaultyStore::new(memory.clone()).with_clock_skew(ClockSkew::Behind(ten));
    let now = SystemTime::now();
    let stamped = LeaseRecord {
        acquire_time: Some(now),
        renew_time: Some(now),
        ..held_by("a")
    };
    let v1 = store.create(&key(), stamped).await.unwrap();
    assert_eq!(
        v1.record.acquire_time,
        Some(now - ten),
        "stamped in this write"
    );
    assert_eq!(v1.record.renew_time, Some(now - ten));
    // A renewal copies acquireTime from the stored (already skewed) record.
    store.set_clock_skew(Some(ClockSkew::Ahead(ten)));
    let later = now + Duration::from_secs(2);
    let renewal = LeaseRecord {
        renew_time: Some(later),
        ..v1.record.clone()
    };
    let v2 = store
        .replace(&key(), renewal, &v1.resource_version)
        .await
        .unwrap();
    assert_eq!(v2.record.acquire_time, Some(now - ten));
    assert_eq!(v2.record.renew_time, Some(later + ten));
    assert_eq!(memory.peek(&key()).unwrap(), v2);
}

#[actix::test]
async fn tampered_reads_change_what_is_served_not_what_is_stored() {
    tokio::time::pause();
    let memory = MemoryStore::new();
    let store = FaultyStore::new(memory.clone());
    let mut watch = store.watch("default");
    store.tamper_reads(|mut lease| {
        lease.record.lease_duration_seconds = Some(-5);
        lease
    });
    let created = store.create(&key(), held_by("a")).await.unwrap();
    assert_eq!(created.record.lease_duration_seconds, Some(-5));
    assert_eq!(
        store
            .get(&key())
            .await
            .unwrap()
            .record
            .lease_duration_seconds,
        Some(-5)
    );
    match watch.next().await.unwrap().unwrap() {
        WatchEvent::Applied(l) => assert_eq!(l.record.lease_duration_seconds, Some(-5)),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        memory.peek(&key()).unwrap().record.lease_duration_seconds,
        Some(15)
    );
    store.clear();
    assert_eq!(
        store
            .get(&key())
            .await
            .unwrap()
            .record
            .lease_duration_seconds,
        Some(15)
    );
}

#[actix::test]
async fn called_resolves_when_the_request_is_on_the_wire() {
    tokio::time::pause();
    let store = FaultyStore::new(MemoryStore::new());
    store.stall(Call::Get);
    let mut sent = store.called(Call::Get, 2).boxed();
    assert!(futures::poll!(&mut sent).is_pending());
    let _first = actix::spawn(store.get(&key()));
    settle().await;
    assert!(futures::poll!(&mut sent).is_pending(), "one of two");
    let _second = actix::spawn(store.get(&key()));
    within(LIMIT, "two gets sent", sent).await;
    assert_eq!(store.calls(Call::Get), 2);
}

/// Two replicas on one store: a real handoff passes the checks in both views, and the
/// caller's view records the instant `is_active` turned false.
#[actix::test]
async fn a_real_handoff_is_safe_in_both_views() {
    tokio::time::pause();
    let memory = MemoryStore::new();
    let a = Dsync::with_config(memory.clone(), paused_config("pod-a")).unwrap();
    let b = Dsync::with_config(memory.clone(), paused_config("pod-b")).unwrap();
    let (ea, eb) = (a.election("x").unwrap(), b.election("x").unwrap());
    let subscribed = TermLog::new();
    subscribed.record("pod-a", &ea).unwrap();
    subscribed.record("pod-b", &eb).unwrap();
    let callers = TermLog::new();
    let first = leader_of(LIMIT, &[ea.clone(), eb.clone()]).await;
    let (leader, follower) = if first == 0 { (&ea, &eb) } else { (&eb, &ea) };
    let term = leader.elected().await.unwrap();
    callers.got("leader", &term);
    tokio::time::sleep(Duration::from_secs(30)).await;
    let stopped = Instant::now();
    leader.stop().await.unwrap();
    let next = within(LIMIT, "handoff", follower.elected()).await.unwrap();
    callers.got("follower", &next);
    within(LIMIT, "the first term's end is recorded", async {
        while callers.end_of(term.id()).is_none() {
            settle().await;
        }
    })
    .await;
    assert_eq!(callers.end_of(term.id()), Some(stopped));
    assert!(
        callers
            .active_terms("leader", None, Instant::now())
            .is_empty()
    );
    assert_eq!(
        callers.active_terms("follower", None, Instant::now()).len(),
        1
    );
    settle().await;
    assert_eq!(subscribed.check().unwrap(), 2);
    assert_eq!(callers.check().unwrap(), 2);
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
    within(LIMIT, "every term ended", callers.all_ended()).await;
    within(LIMIT, "every term ended", subscribed.all_ended()).await;
    subscribed.assert_safe();
}

/// Two "replicas" that do not share a store (a split brain by construction) both lead at
/// once: the log and the monitor must catch it.
#[actix::test]
async fn the_checks_catch_two_leaders_reused_and_decreasing_tokens() {
    tokio::time::pause();
    let (one, two) = (MemoryStore::new(), MemoryStore::new());
    let a = Dsync::with_config(one.clone(), paused_config("pod-a")).unwrap();
    let b = Dsync::with_config(two.clone(), paused_config("pod-b")).unwrap();
    let lease = LeaseKey::new("default", "unscoped.election.x");
    // b's lease was taken over 5 times before: its next term gets token 6.
    two.put(
        &lease,
        LeaseRecord {
            lease_transitions: Some(5),
            lease_duration_seconds: Some(15),
            ..Default::default()
        },
    )
    .unwrap();
    let (ea, eb) = (a.election("x").unwrap(), b.election("x").unwrap());
    let monitor = SingleLeaderMonitor::start(vec![ea.clone(), eb.clone()]);
    let (ta, tb) = (ea.elected().await.unwrap(), eb.elected().await.unwrap());
    assert_eq!((ta.fencing_token(), tb.fencing_token()), (0, 6));
    settle().await;
    assert!(!monitor.violations().is_empty(), "two leaders at once");
    let log = TermLog::new();
    log.got("pod-a", &ta);
    log.got("pod-b", &tb);
    assert!(
        matches!(log.check(), Err(TermViolation::Overlap { .. })),
        "{:?}",
        log.check()
    );
    // Not overlapping, but b's token (6) came before a's next one (1).
    let log = TermLog::new();
    log.got("pod-b", &tb);
    eb.stop().await.unwrap();
    ea.stop().await.unwrap();
    let ea = a.election("x").unwrap();
    let again = ea.elected().await.unwrap();
    assert_eq!(again.fencing_token(), 1);
    log.got("pod-a", &again);
    settle().await;
    assert!(
        matches!(log.check(), Err(TermViolation::TokensOutOfOrder { .. })),
        "{:?}",
        log.check()
    );
    // The same token twice (both stores start at 0).
    let eb = b.election("y").unwrap();
    let ea = a.election("y").unwrap();
    let log = TermLog::new();
    log.got("pod-a", &ea.elected().await.unwrap());
    log.got("pod-b", &eb.elected().await.unwrap());
    assert!(matches!(
        log.check(),
        Err(TermViolation::TokenReused { token: 0, .. })
    ));
    let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| log.assert_safe()));
    assert!(panicked.is_err(), "assert_safe panics on a violation");
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

/// The suite has teeth: stores that break a rule are caught, with the rule named.
#[actix::test]
async fn the_conformance_suite_catches_broken_stores() {
    tokio::time::pause();
    // Every replace conflicts: compare-and-swap is broken (and everything that replaces).
    let store = FaultyStore::new(MemoryStore::new());
    store.fail_always(Call::Replace, || StoreError::Conflict {
        lease: "any".into(),
    });
    let violations = Suite::new(store).run().await.unwrap_err();
    let rules: Vec<Rule> = violations.0.iter().map(|v| v.rule).collect();
    assert!(
        rules.contains(&Rule::ReplaceIsCompareAndSwap),
        "{violations}"
    );
    assert!(!rules.contains(&Rule::GetMissingIsNotFound), "{violations}");
    // Reads that do not return what was written.
    let store = FaultyStore::new(MemoryStore::new());
    store.tamper_reads(|mut lease| {
        lease.record.holder_identity = Some("somebody-else".into());
        lease
    });
    let suite = Suite::new(store);
    let violation = suite.check(Rule::CreateRoundTrips).await.unwrap_err();
    assert_eq!(violation.rule, Rule::CreateRoundTrips);
    assert!(
        violation.to_string().contains("create-round-trips"),
        "{violation}"
    );
    // A watch that loses events.
    let store = FaultyStore::new(MemoryStore::new());
    let suite = Suite::new(store.clone()).with_event_timeout(Duration::from_secs(5));
    store.fail_always(Call::Watch, unavailable);
    assert!(suite.check(Rule::WatchSeesWritesInOrder).await.is_err());
    // Without a way to delete, that rule is skipped by `run` and a violation by `check`.
    assert!(suite.check(Rule::WatchSeesDeletions).await.is_err());
}

/// The operator actions of the kit: edits go past the wrapper's faults (an administrator's
/// `kubectl` is not behind this replica's partition) and keep the fields they do not name;
/// `MemoryStore::delete` is seen by watchers; `rewind_versions` makes versions go back while
/// compare-and-swap still works on what the wrapper reported.
#[actix::test]
async fn operator_edits_deletes_and_rewound_versions() {
    tokio::time::pause();
    let memory = MemoryStore::new();
    let faulty = FaultyStore::new(memory.clone());
    let mut record = held_by("pod-a");
    record.lease_transitions = Some(7);
    faulty.create(&key(), record).await.unwrap();
    faulty.partition();
    let reset = faulty.reset_transitions(&key()).await.unwrap();
    assert_eq!(reset.record.lease_transitions, Some(0));
    assert_eq!(reset.record.holder(), Some("pod-a"), "kept");
    let replaced = faulty.replace_holder(&key(), "pod-b").await.unwrap();
    assert_eq!(replaced.record.holder(), Some("pod-b"));
    let cleared = faulty.clear_holder(&key()).await.unwrap();
    assert_eq!(cleared.record.holder(), None);
    assert_eq!(cleared.record.lease_duration_seconds, Some(15), "kept");
    faulty.heal();

    let before: u64 = memory
        .peek(&key())
        .unwrap()
        .resource_version
        .parse()
        .unwrap();
    faulty.rewind_versions(before - 1);
    let seen = faulty.get(&key()).await.unwrap();
    assert_eq!(
        seen.resource_version.parse::<u64>().unwrap(),
        1,
        "went back"
    );
    let written = faulty
        .replace(&key(), held_by("pod-c"), &seen.resource_version)
        .await
        .unwrap();
    assert_eq!(written.record.holder(), Some("pod-c"));
    // A version from before the rewind no longer stands for anything.
    let stale = faulty
        .replace(&key(), held_by("pod-d"), &before.to_string())
        .await;
    assert!(
        matches!(stale, Err(StoreError::Conflict { .. })),
        "{stale:?}"
    );

    let mut events = memory.watch("default");
    memory.delete(&key()).unwrap();
    assert!(matches!(
        events.next().await,
        Some(Ok(WatchEvent::Deleted { name })) if name == "x"
    ));
    assert!(matches!(
        memory.delete(&key()),
        Err(StoreError::NotFound { .. })
    ));
    assert!(memory.peek(&key()).is_none());
}
