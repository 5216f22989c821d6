//! Mass handoff (issue 16): a replica that leads many elections is shut down (as on SIGTERM in
//! a rolling update); it releases every lease, and the surviving replica, which sees each
//! release through its one shared watch, takes every lease over at once: one write per lease,
//! no read, no lease left behind. On the real API server the calls go through `KubeStore`'s
//! in-flight limit (32 by default), so neither side bursts more than that at the server.
//!
//! Both replicas run at ten times the test timing (on the API server lease 20 s, renew
//! deadline 15 s, retry 5 s, near production's 15/10/2): at the 0.5 s retry period a loaded
//! 2-core machine queues the releases of 200 leases past their claims' deadline, where they
//! time out (correctly: no write after a claim ended). Production timing at 1,000 leases is
//! measured in `cargo bench --bench e2e`.
//! `DSYNC_MASS_LEASES=n cargo test --all-features --test mass -- --nocapture` tries another
//! count.
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
    // Both replicas run ten times slower than the test timing (same proportions; on the API
    // server lease 20 s, renew deadline 15 s, retry 5 s, near production's 15/10/2), because
    // that is the timing mass handoff is for: at the 0.5 s retry period, 200 leases' renewals
    // queue behind each other on a loaded 2-core machine, the releases queue past their
    // claims' deadline and time out (correctly: no write after a claim ended), and the
    // survivor renews leases it took early while it still takes the last ones, so its writes
    // in the window are no longer one per lease.
    let t = env.timing();
    let slow = dsync::Timing::new(
        t.lease_duration() * 10,
        t.renew_deadline() * 10,
        t.retry_period() * 10,
    )
    .unwrap();
    // Calls may take up to the (slow) retry period, queueing included: 200 calls through 32
    // in-flight slots on a loaded machine take longer than the test timing's 1 s call timeout,
    // and a timed-out acquisition is retried a retry period later (a second write).
    let replica = async |identity: &str| {
        let store = env.store_with_call_timeout(slow.retry_period()).await;
        env.faulty_replica_on(store, identity, |c| c.with_timing(slow))
    };
    let (a, fa) = replica("pod-a").await;
    let led: Vec<_> = (0..n)
        .map(|i| a.election(&format!("m{i}")).unwrap())
        .collect();
    for e in &led {
        within(env.limit(), "pod-a leads", e.elected())
            .await
            .unwrap();
    }
    let (b, fb) = replica("pod-b").await;
    let following: Vec<_> = (0..n)
        .map(|i| b.election(&format!("m{i}")).unwrap())
        .collect();
    for e in &following {
        env.sees_leader(e, "pod-a").await;
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
            slow.lease_duration(),
            "before any lease expired",
        );
    }
    b.shutdown().await.unwrap();
}
