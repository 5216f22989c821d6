//! The shared watch: one store watch per replica and namespace, whatever the number of
//! elections and locks, with handoffs still seen at once.
#![cfg(feature = "testing")]

mod support;

use std::time::Duration;

use dsync::testing::{settle, within};
use dsync::{Dsync, MemoryStore};
use tokio::time::Instant;

/// Replicas pod-a and pod-b on one memory store, each through a `FaultyStore` of its own.
fn two_faulty_replicas() -> (MemoryStore, [dsync::testing::FaultyStore; 2], [Dsync; 2]) {
    use dsync::testing::FaultyStore;
    let store = MemoryStore::new();
    let faults = [
        FaultyStore::new(store.clone()),
        FaultyStore::new(store.clone()),
    ];
    let replicas = [
        Dsync::with_config(faults[0].clone(), dsync::testing::paused_config("pod-a")).unwrap(),
        Dsync::with_config(faults[1].clone(), dsync::testing::paused_config("pod-b")).unwrap(),
    ];
    (store, faults, replicas)
}

/// Waits until each election of `elections` (pairs of replicas a, b at 2k, 2k + 1) has a
/// leader, as replica a sees it.
async fn every_pair_has_a_leader(elections: &[dsync::Election]) {
    for pair in elections.chunks(2) {
        let mut rx = pair[0].watch_status();
        within(
            Duration::from_secs(60),
            "leader",
            rx.wait_for(|s| s.holder.is_some()),
        )
        .await
        .unwrap();
    }
}

/// Stops 50 leaders of `elections` (pairs of replicas a, b at 2k, 2k + 1): each partner takes
/// over in the same instant of paused time, told by the shared watch.
async fn assert_handovers_at_once(elections: &[dsync::Election]) {
    let t0 = Instant::now();
    let stopped: Vec<usize> = (0..elections.len())
        .filter(|&i| elections[i].is_leader())
        .take(50)
        .collect();
    for &i in &stopped {
        elections[i].stop().await.unwrap();
    }
    settle().await;
    for &i in &stopped {
        assert!(elections[i ^ 1].is_leader(), "election {i} was taken over");
    }
    assert_eq!(Instant::now(), t0, "without waiting");
}

#[actix::test]
async fn a_thousand_elections_cost_one_watch_per_replica() {
    tokio::time::pause();
    let store = MemoryStore::new();
    let a = Dsync::with_config(store.clone(), dsync::testing::paused_config("pod-a")).unwrap();
    let b = Dsync::with_config(store.clone(), dsync::testing::paused_config("pod-b")).unwrap();
    let mut elections = Vec::new();
    for i in 0..1000 {
        elections.push(a.election(&format!("e{i}")).unwrap());
        elections.push(b.election(&format!("e{i}")).unwrap());
    }
    let locks: Vec<_> = (0..100)
        .map(|i| a.lock(&format!("l{i}")).unwrap())
        .collect();
    for l in &locks {
        l.try_lock().await.unwrap();
    }
    every_pair_has_a_leader(&elections).await;
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(store.stats().watches, 2, "one watch per replica");
    assert_eq!((a.watched_namespaces(), b.watched_namespaces()), (1, 1));
    let gets = store.stats().gets;
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(store.stats().gets, gets, "no polling at steady state");

    // Every election still hands over at once through the shared watch.
    assert_handovers_at_once(&elections).await;
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

#[actix::test]
async fn each_namespace_gets_its_own_watch() {
    tokio::time::pause();
    let store = MemoryStore::new();
    let d = Dsync::with_config(
        store.clone(),
        dsync::testing::paused_config("pod-a").with_namespace("one"),
    )
    .unwrap();
    let e1 = d.election("x").unwrap();
    let e2 = d
        .election_for(dsync::Resource::new("two", "", "x"))
        .unwrap();
    within(Duration::from_secs(60), "e1", e1.elected())
        .await
        .unwrap();
    within(Duration::from_secs(60), "e2", e2.elected())
        .await
        .unwrap();
    assert_eq!(e2.lease().to_string(), "two/unscoped.election.x");
    assert_eq!(d.watched_namespaces(), 2);
    assert_eq!(store.stats().watches, 2);
    d.shutdown().await.unwrap();
}

/// Issue 16: a watch that is lost with a thousand leases is caught up by one list per replica,
/// not by a GET per lease (which, at the moment an API server comes back, is the spike that
/// keeps it down); and the shared watch still hands over at once afterwards.
#[actix::test]
async fn a_lost_watch_is_caught_up_by_one_list_per_replica_not_a_get_per_lease() {
    use dsync::testing::Call;
    tokio::time::pause();
    let (store, faults, replicas) = two_faulty_replicas();
    let mut elections = Vec::new();
    for i in 0..1000 {
        for d in &replicas {
            elections.push(d.election(&format!("e{i}")).unwrap());
        }
    }
    every_pair_has_a_leader(&elections).await;
    tokio::time::sleep(Duration::from_secs(30)).await;
    let before: Vec<(u64, u64)> = faults
        .iter()
        .map(|f| (f.calls(Call::List), f.calls(Call::Get)))
        .collect();

    // The connection drops: every replica's watch ends at once, and renewals go on meanwhile.
    for f in &faults {
        f.drop_watches();
    }
    tokio::time::sleep(Duration::from_secs(30)).await;
    for (i, f) in faults.iter().enumerate() {
        let lists = f.calls(Call::List) - before[i].0;
        let gets = f.calls(Call::Get) - before[i].1;
        println!("replica {i}: {lists} list(s), {gets} GET(s) to catch up 1000 leases");
        assert_eq!((lists, gets), (1, 0), "replica {i}: one list, no GET");
    }
    assert_eq!(
        store.stats().watches,
        4,
        "each replica reopened its one watch"
    );

    // Handovers are still seen at once through the reopened watch.
    assert_handovers_at_once(&elections).await;
    for d in &replicas {
        d.shutdown().await.unwrap();
    }
}

/// The hub does not wake a follower for its leader's renewals (it parks them); the follower
/// still judges expiry from the instant the last renewal *arrived*: it takes over exactly one
/// lease duration after it, not after the renewal before (when it was last woken).
#[actix::test]
async fn a_follower_not_woken_by_renewals_takes_over_one_lease_duration_after_the_last() {
    tokio::time::pause();
    let store = MemoryStore::new();
    let fa = dsync::testing::FaultyStore::new(store.clone());
    let a = Dsync::with_config(fa.clone(), dsync::testing::paused_config("pod-a")).unwrap();
    let b = Dsync::with_config(store.clone(), dsync::testing::paused_config("pod-b")).unwrap();
    let ea = a.election("x").unwrap();
    ea.elected().await.unwrap();
    let eb = b.election("x").unwrap();
    let mut status = eb.watch_status();
    status
        .wait_for(|s| s.holder.as_deref() == Some("pod-a"))
        .await
        .unwrap();
    // Seven renewals (every 2 s), then the leader is cut off mid-way to the next one.
    tokio::time::sleep(Duration::from_secs(15)).await;
    let last_renewal = ea.status().renewed_at.expect("leading");
    let lease = a.config().timing.lease_duration();
    fa.partition();
    eb.elected().await.unwrap();
    // (tokio's timers round up to the millisecond.)
    let taken = Instant::now().into_std() - last_renewal;
    assert!(
        taken >= lease && taken <= lease + Duration::from_millis(1),
        "taken over {taken:?} after the last renewal arrived, not one lease duration ({lease:?})"
    );
    a.shutdown().await.ok();
    b.shutdown().await.unwrap();
}

/// Replica a (`faults[0]`) leads `n` elections and replica b follows them all.
async fn lead_and_follow(
    n: usize,
) -> (
    MemoryStore,
    [dsync::testing::FaultyStore; 2],
    [Dsync; 2],
    Vec<dsync::Election>,
    Vec<dsync::Election>,
) {
    let (store, faults, replicas) = two_faulty_replicas();
    let (led, followed) = lead_then_follow(&replicas[0], &replicas[1], "pod-a", n).await;
    (store, faults, replicas, led, followed)
}

/// Elections e0..e`n`: `a` (identity `leader`) leads them all, then `b` follows them all.
async fn lead_then_follow(
    a: &Dsync,
    b: &Dsync,
    leader: &str,
    n: usize,
) -> (Vec<dsync::Election>, Vec<dsync::Election>) {
    let led: Vec<_> = (0..n)
        .map(|i| a.election(&format!("e{i}")).unwrap())
        .collect();
    for e in &led {
        within(Duration::from_secs(60), "a leads", e.elected())
            .await
            .unwrap();
    }
    let followed: Vec<_> = (0..n)
        .map(|i| b.election(&format!("e{i}")).unwrap())
        .collect();
    for e in &followed {
        let mut rx = e.watch_status();
        within(
            Duration::from_secs(60),
            "b follows",
            rx.wait_for(|s| s.holder.as_deref() == Some(leader)),
        )
        .await
        .unwrap();
    }
    (led, followed)
}

/// The API server goes away as a crash or restart looks to a replica: every call fails at once
/// (connection refused) and the watch drops; watches reopened meanwhile deliver nothing.
fn outage(f: &dsync::testing::FaultyStore) {
    f.fail_always(dsync::testing::Call::Any, || {
        dsync::StoreError::Unavailable {
            message: "connection refused".into(),
            source: None,
        }
    });
    f.silence_watches();
    f.drop_watches();
}

/// Issue 16 (outage): an API server outage shorter than the renew deadline. The leader keeps
/// every lease (same term); when the server is back, each replica catches up with one list;
/// nobody reads a lease on its own, during the outage or after, and the follower writes
/// nothing. (Before, the failed re-sync list told every actor, and each then read its own
/// lease every retry period: a GET per lease per replica the moment the server was back.)
#[actix::test]
async fn an_outage_shorter_than_the_renew_deadline_costs_one_list_per_replica() {
    use dsync::testing::Call;
    tokio::time::pause();
    let n = 200;
    let (_store, faults, replicas, led, followed) = lead_and_follow(n).await;
    tokio::time::sleep(Duration::from_secs(7)).await;
    let tokens: Vec<_> = led
        .iter()
        .map(|e| e.status().term.map(|t| t.fencing_token()))
        .collect();
    let calls = |f: &dsync::testing::FaultyStore| {
        [Call::Get, Call::Create, Call::Replace, Call::List].map(|c| f.calls(c))
    };
    let before = faults.each_ref().map(calls);

    for f in &faults {
        outage(f);
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    let during = faults.each_ref().map(calls);
    for f in &faults {
        f.clear();
    }
    tokio::time::sleep(Duration::from_secs(10)).await;
    let after = faults.each_ref().map(calls);

    for r in 0..2 {
        let gets = after[r][0] - before[r][0];
        let lists = after[r][3] - during[r][3];
        println!("replica {r}: {gets} GET(s), {lists} list(s) after the server came back");
        assert_eq!(gets, 0, "replica {r}: no lease read on its own");
        assert_eq!(lists, 1, "replica {r}: one list once the server is back");
    }
    let follower_writes = (after[1][1] - before[1][1]) + (after[1][2] - before[1][2]);
    assert_eq!(follower_writes, 0, "the follower tried to take nothing");
    for (i, e) in led.iter().enumerate() {
        assert!(e.is_leader(), "a still leads e{i}");
        assert_eq!(
            e.status().term.map(|t| t.fencing_token()),
            tokens[i],
            "e{i}: the same term"
        );
    }
    // The follower sees the leader again and would still take over at once on a handoff.
    for e in &followed {
        assert_eq!(e.status().holder.as_deref(), Some("pod-a"));
    }
    for d in &replicas {
        d.shutdown().await.unwrap();
    }
}

/// A follower whose shared watch is down past the expiry of the lease it follows (the API
/// server is away for longer than a lease duration) takes nothing while the watch is behind:
/// the leader may have renewed unseen. Once the server is back, one list brings the news;
/// here the leader is gone (crashed meanwhile), so the follower takes every lease then, each
/// with one write that succeeds, without a read or a conflict.
#[actix::test]
async fn a_follower_whose_watch_is_down_past_expiry_takes_nothing_until_it_catches_up() {
    use dsync::testing::Call;
    tokio::time::pause();
    let n = 200;
    let (store, faults, replicas, _led, followed) = lead_and_follow(n).await;
    tokio::time::sleep(Duration::from_secs(7)).await;
    let writes = |f: &dsync::testing::FaultyStore| f.calls(Call::Create) + f.calls(Call::Replace);
    let before = (writes(&faults[1]), faults[1].calls(Call::Get));

    // The leader crashes; the follower's API server goes away for longer than a lease
    // duration, so every lease expires by the follower's observation meanwhile.
    faults[0].partition();
    outage(&faults[1]);
    tokio::time::sleep(Duration::from_secs(18)).await;
    assert_eq!(
        (
            writes(&faults[1]) - before.0,
            faults[1].calls(Call::Get) - before.1
        ),
        (0, 0),
        "no write and no read while the watch is behind"
    );
    let conflicts = store.stats().conflicts;
    faults[1].clear();
    for e in &followed {
        within(Duration::from_secs(10), "b takes over", e.elected())
            .await
            .unwrap();
    }
    assert_eq!(faults[1].calls(Call::Get) - before.1, 0, "no lease read");
    assert_eq!(store.stats().conflicts, conflicts, "no write lost a race");
    replicas[1].shutdown().await.unwrap();
}

/// The real API server variant of the lost-watch test, counted by the server (its audit log,
/// by user agent): with 200 elections led by one replica and followed by another, both
/// replicas' watches are cut; each catches up with one list of its own, reads no lease, and
/// opens one new watch. (kube's watcher, opened anew, makes a list of its own first: two
/// lists per replica in all.)
#[actix::test]
async fn on_the_api_server_a_lost_watch_costs_one_list_per_replica_counted_by_its_audit_log() {
    use std::collections::BTreeMap;

    use dsync::testing::{Call, FaultyStore};
    use support::audit::{audit_counts_since, launch_audited};

    let (harness, log) = launch_audited();
    let ready = harness.ready();
    let ns = support::apiserver::namespace_on(&ready).await;
    let replica = |agent: &'static str| {
        let kubeconfig = ready.leaseuser.clone();
        let ns = ns.clone();
        async move {
            let kc = kube::config::Kubeconfig::read_from(&kubeconfig).unwrap();
            let mut config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
                .await
                .unwrap();
            config.headers.push((
                http::header::USER_AGENT,
                http::HeaderValue::from_static(agent),
            ));
            let store = FaultyStore::new(dsync::KubeStore::new(
                kube::Client::try_from(config).unwrap(),
            ));
            let d = Dsync::with_config(
                store.clone(),
                dsync::Config::default()
                    .with_namespace(&*ns)
                    .with_identity(agent),
            )
            .unwrap();
            (store, d)
        }
    };
    let (fa, a) = replica("watch-a").await;
    let (fb, b) = replica("watch-b").await;
    let n = 200;
    let (led, _followed) = lead_then_follow(&a, &b, "watch-a", n).await;

    // The follower knows the leader from the watch before its own first reads return: wait
    // until the server has logged all of them, so that what follows the cut is the cut's.
    let logged_reads = || {
        audit_counts_since(&log, &ns, std::time::UNIX_EPOCH)
            .iter()
            .filter(|((a, v, _), _)| a == "watch-b" && v == "get")
            .map(|(_, n)| *n)
            .sum::<u64>()
    };
    within(Duration::from_secs(30), "b's first reads", async {
        while logged_reads() < n as u64 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    let cut = std::time::SystemTime::now();
    let lists = [fa.calls(Call::List), fb.calls(Call::List)];
    fa.drop_watches();
    fb.drop_watches();
    // Each hub reopens its watch after a retry period and lists the namespace once.
    for (f, before) in [(&fa, lists[0]), (&fb, lists[1])] {
        within(
            Duration::from_secs(30),
            "the re-sync list",
            f.called(Call::List, before + 1),
        )
        .await;
    }
    // Nothing else is to come: watch two more retry periods (renewals go on).
    tokio::time::sleep(Duration::from_secs(4)).await;
    let counts = audit_counts_since(&log, &ns, cut);
    let of = |agent: &str, verb: &str| -> u64 {
        counts
            .iter()
            .filter(|((a, v, _), _)| a == agent && v == verb)
            .map(|(_, n)| *n)
            .sum()
    };
    let seen: BTreeMap<_, _> = counts.iter().collect();
    println!("requests after the cut, as the API server logged them: {seen:?}");
    for agent in ["watch-a", "watch-b"] {
        assert_eq!(
            (of(agent, "list"), of(agent, "get"), of(agent, "watch")),
            (2, 0, 1),
            "{agent}: the hub's list and the new watcher's, no read, one new watch"
        );
    }
    assert_eq!(
        of("watch-b", "update") + of("watch-b", "create"),
        0,
        "the follower wrote nothing"
    );
    for e in &led {
        assert!(e.is_leader());
    }
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}
