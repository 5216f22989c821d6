//! Mass handoff (issue 16): a replica that leads many elections is shut down (as on SIGTERM in
//! a rolling update); it releases every lease, and the surviving replica, which sees each
//! release through its one shared watch, takes every lease over at once: one write per lease,
//! no read, no lease left behind. On the real API server the calls go through `KubeStore`'s
//! in-flight limit (32 by default), so neither side bursts more than that at the server.
//!
//! `DSYNC_MASS_LEASES=n cargo test --all-features --test mass -- --nocapture` tries another
//! count. (At this test's timing, a 0.5 s retry period, 1,000 leases' renewals alone are
//! ~2,000 writes/s through 32 in-flight calls on a 2-core machine: releases then queue past
//! their claim's deadline and time out, leaving those leases to expire. Mass handoff at 1,000
//! leases is for the production timing, 15 s / 10 s / 2 s.)
#![cfg(feature = "testing")]

mod support;

use std::time::Duration;

use dsync::testing::{Call, settle, within};
use support::backend::Env;
use tokio::time::Instant;

crate::on_both_stores!(a_stopped_replica_hands_every_lease_to_the_survivor_at_once);

async fn a_stopped_replica_hands_every_lease_to_the_survivor_at_once(env: Env) {
    // `DSYNC_MASS_LEASES` measures more on the API server (the printed times are the figure;
    // the bound below only says "before any lease expired").
    let n = match std::env::var("DSYNC_MASS_LEASES")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        Some(n) => n,
        None if env.is_memory() => 1000,
        None => 200,
    };
    let (a, fa) = env.faulty_replica("pod-a").await;
    let led: Vec<_> = (0..n)
        .map(|i| a.election(&format!("m{i}")).unwrap())
        .collect();
    for e in &led {
        within(env.limit(), "pod-a leads", e.elected())
            .await
            .unwrap();
    }
    let (b, fb) = env.faulty_replica("pod-b").await;
    let following: Vec<_> = (0..n)
        .map(|i| b.election(&format!("m{i}")).unwrap())
        .collect();
    for e in &following {
        let mut rx = e.watch_status();
        within(
            env.limit(),
            "pod-b follows",
            rx.wait_for(|s| s.leader.as_deref() == Some("pod-a")),
        )
        .await
        .unwrap();
    }
    settle().await;
    let writes = |f: &dsync::testing::FaultyStore| f.calls(Call::Replace) + f.calls(Call::Create);
    let (a_writes, b_writes, b_reads) = (writes(&fa), writes(&fb), fb.calls(Call::Get));

    let t0 = Instant::now();
    a.shutdown().await.unwrap();
    let released = t0.elapsed();
    for e in &following {
        within(env.limit(), "pod-b takes over", e.elected())
            .await
            .unwrap();
    }
    let all_taken = t0.elapsed();
    println!(
        "{}: {n} leases released in {released:?}, all taken over {all_taken:?} after the stop began",
        if env.is_memory() { "memory" } else { "kube" }
    );
    // One release per lease by the stopped replica (plus renewals that were due meanwhile),
    // one acquisition per lease by the survivor, and no read: the watch told it everything.
    assert!(
        writes(&fa) - a_writes >= n as u64,
        "every lease was released"
    );
    assert_eq!(
        writes(&fb) - b_writes,
        n as u64,
        "one acquisition per lease"
    );
    assert_eq!(fb.calls(Call::Get), b_reads, "no read by the survivor");
    assert!(following.iter().all(|e| e.is_leader()));
    if env.is_memory() {
        assert_eq!(
            all_taken,
            Duration::ZERO,
            "at once, not after a lease duration"
        );
    } else {
        env.assert_timer(
            all_taken,
            Duration::ZERO,
            env.lease(),
            "before any lease expired",
        );
    }
    b.shutdown().await.unwrap();
}
