//! Interop with Go: dsync replicas and client-go `leaderelection` peers (`LeaseLock`,
//! `ReleaseOnCancel`; `benches/peers/clientgo`) compete for the same Lease object,
//! `<scope>.election.<name>`, on the real kube-apiserver. Never two leaders; handover works in
//! both directions, graceful and by crash.
//!
//! Each side's leadership is recorded the way its application sees it: from the moment its
//! work is told it leads (dsync `when_elected`, client-go `OnStartedLeading`) to the moment it
//! is told to stop (the term's cancellation; client-go's cancelled context or
//! `OnStoppedLeading`). Those spans, on the wall clock all processes here share, must not
//! overlap.
//!
//! The seed's own Go module (`github.com/tempcke/dsync@v0.0.5`) is not served by the Go module
//! proxy reachable from this machine (it answers 403 "This module version is not available"),
//! so there is no peer for it.
//!
//! Timing 2/1.5/0.5 s on both sides (lease, renew deadline, retry).
#![cfg(feature = "testing")]

mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use dsync::testing::{FaultyStore, leader_of, within};
use dsync::{Config, Dsync, Election, Term};
use support::apiserver::{Harness, namespace};
use support::backend::{kube_store, kube_timing};
use support::gopeer::{GoPeer, Line, PeerTiming};

const LIMIT: Duration = Duration::from_secs(60);
const SCOPE: &str = "interop";
const NAME: &str = "x";

/// One leadership span: who, from when the work started to when it was told to stop.
type Span = (String, SystemTime, Option<SystemTime>, Option<i32>);

#[derive(Clone, Default)]
struct Spans(Arc<Mutex<Vec<Span>>>);

impl Spans {
    /// Records the terms of a dsync election as its `when_elected` work sees them.
    fn record(&self, who: &str, election: &Election) {
        let (spans, who) = (self.clone(), who.to_owned());
        election
            .when_elected(move |term: Term| {
                let (spans, who) = (spans.clone(), who.clone());
                async move {
                    let i = {
                        let mut s = spans.0.lock().unwrap();
                        s.push((who, SystemTime::now(), None, Some(term.fencing_token())));
                        s.len() - 1
                    };
                    term.cancelled().await;
                    spans.0.lock().unwrap()[i].2 = Some(SystemTime::now());
                }
            })
            .unwrap();
    }

    /// The dsync spans so far.
    fn dsync(&self) -> Vec<Span> {
        self.0.lock().unwrap().clone()
    }
}

/// Asserts that no two spans overlap, and that dsync's fencing tokens increase.
fn assert_never_two_leaders(mut spans: Vec<Span>) {
    spans.sort_by_key(|s| s.1);
    for (i, a) in spans.iter().enumerate() {
        for b in &spans[i + 1..] {
            let a_end = a.2.unwrap_or(SystemTime::now() + Duration::from_secs(3600));
            assert!(
                a_end <= b.1,
                "two leaders at once: {a:?} and {b:?}; all: {spans:#?}"
            );
        }
    }
    let tokens: Vec<i32> = spans.iter().filter_map(|s| s.3).collect();
    assert!(
        tokens.windows(2).all(|w| w[0] < w[1]),
        "dsync fencing tokens must increase: {tokens:?}"
    );
}

fn go_spans(peer: &GoPeer, lease: &str, killed_at: Option<SystemTime>) -> Vec<Span> {
    peer.terms(lease, killed_at)
        .into_iter()
        .map(|(start, end)| (peer.identity.clone(), start, end, None))
        .collect()
}

fn ms(d: Duration) -> u128 {
    d.as_millis()
}

fn since(later: SystemTime, earlier: SystemTime) -> Duration {
    later
        .duration_since(earlier)
        .unwrap_or_else(|e| panic!("{later:?} is {:?} before {earlier:?}", e.duration()))
}

async fn replica(store: impl dsync::LeaseStore, ns: &str, identity: &str) -> Dsync {
    Dsync::with_config(
        store,
        Config::default()
            .with_namespace(ns)
            .with_scope(SCOPE)
            .with_identity(identity)
            .with_timing(kube_timing()),
    )
    .unwrap()
}

#[actix::test]
async fn dsync_and_client_go_share_a_lease_never_two_leaders_and_hand_over_both_ways() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let ready = Harness::get().ready();
    let ns = namespace().await;
    let t = kube_timing();
    let go_t = PeerTiming::new(t.lease_duration(), t.renew_deadline(), t.retry_period());
    let lease = format!("{SCOPE}.election.{NAME}");
    let spans = Spans::default();

    // client-go leads first.
    let mut g1 = GoPeer::client_go(&ready.leaseuser, &ns, "go-1", &[&lease], go_t).await;
    g1.expect(LIMIT, "go-1 elected", |l| matches!(l, Line::Elected { .. }))
        .await;

    // Two dsync replicas join and follow: the Go leader renews, so they never take over.
    let d1 = replica(kube_store(&ready.leaseuser).await, &ns, "dsync-1").await;
    let d2 = replica(kube_store(&ready.leaseuser).await, &ns, "dsync-2").await;
    let (e1, e2) = (d1.election(NAME).unwrap(), d2.election(NAME).unwrap());
    assert_eq!(e1.lease().to_string(), format!("{ns}/{lease}"));
    spans.record("dsync-1", &e1);
    spans.record("dsync-2", &e2);
    within(LIMIT, "dsync sees the Go leader", async {
        let mut status = e1.watch_status();
        status
            .wait_for(|s| s.holder.as_deref() == Some("go-1"))
            .await
            .unwrap();
    })
    .await;
    // An observation window of three lease durations, not a synchronisation.
    tokio::time::sleep(t.lease_duration() * 3).await;
    assert!(
        spans.dsync().is_empty(),
        "dsync took over from a live Go leader"
    );
    g1.drain();
    assert!(
        !g1.history.iter().any(|l| matches!(l, Line::Lost { .. })),
        "the Go leader lost its lease: {:?}",
        g1.history
    );

    // Go → dsync, graceful: client-go releases on cancel, a dsync replica takes over at once.
    g1.send(&format!("stop {lease}"));
    let Line::Stopping { at: stopped, .. } = g1
        .expect(LIMIT, "go-1 stopping", |l| {
            matches!(l, Line::Stopping { .. })
        })
        .await
    else {
        unreachable!()
    };
    let both = [e1.clone(), e2.clone()];
    let i = leader_of(LIMIT, &both).await;
    let (leader, other) = (both[i].clone(), both[1 - i].clone());
    let term = leader.term().expect("leads");
    let handoff = since(term.started(), stopped);
    eprintln!(
        "interop: client-go -> dsync graceful handoff {} ms",
        ms(handoff)
    );
    assert!(
        handoff < t.lease_duration(),
        "dsync took over {handoff:?} after the Go release: it waited for expiry"
    );
    g1.expect(LIMIT, "go-1 released", |l| {
        matches!(l, Line::Released { .. })
    })
    .await;

    // dsync → Go, graceful: a Go follower sees dsync lead; both dsync elections stop (the
    // follower first, so the Go peer is the only candidate left) and the Go peer takes over.
    let mut g2 = GoPeer::client_go(&ready.leaseuser, &ns, "go-2", &[&lease], go_t).await;
    let leader_id = ["dsync-1", "dsync-2"][i];
    g2.expect(
        LIMIT,
        "go-2 sees the dsync leader",
        |l| matches!(l, Line::Leader { id, .. } if id == leader_id),
    )
    .await;
    other.stop().await.unwrap();
    let stop_at = SystemTime::now();
    leader.stop().await.unwrap();
    let Line::Elected { at: elected, .. } = g2
        .expect(LIMIT, "go-2 elected", |l| matches!(l, Line::Elected { .. }))
        .await
    else {
        unreachable!()
    };
    let handoff = since(elected, stop_at);
    eprintln!(
        "interop: dsync -> client-go graceful handoff {} ms",
        ms(handoff)
    );
    // client-go polls every retry period (with jitter up to 1.2×): it sees the release then.
    assert!(
        handoff < t.lease_duration(),
        "client-go took over {handoff:?} after dsync's release: it waited for expiry"
    );

    // Go crashes → dsync takes over after the lease duration, not before.
    let (d3, f3) = {
        let faulty = FaultyStore::new(kube_store(&ready.leaseuser).await);
        (replica(faulty.clone(), &ns, "dsync-3").await, faulty)
    };
    let e3 = d3.election(NAME).unwrap();
    spans.record("dsync-3", &e3);
    within(LIMIT, "dsync-3 sees go-2 lead", async {
        let mut status = e3.watch_status();
        status
            .wait_for(|s| s.holder.as_deref() == Some("go-2"))
            .await
            .unwrap();
    })
    .await;
    let killed = g2.kill();
    within(LIMIT, "dsync-3 elected", e3.elected())
        .await
        .unwrap();
    let term = e3.term().expect("leads");
    let failover = since(term.started(), killed);
    eprintln!(
        "interop: client-go crash -> dsync failover {} ms",
        ms(failover)
    );
    assert!(
        failover <= t.lease_duration() + t.retry_period() * 2,
        "dsync took {failover:?} to replace a crashed Go leader"
    );

    // dsync is cut off → it stops leading at its renew deadline, and a Go follower takes
    // over only after the lease duration it observed: never while dsync still leads.
    let mut g3 = GoPeer::client_go(&ready.leaseuser, &ns, "go-3", &[&lease], go_t).await;
    g3.expect(
        LIMIT,
        "go-3 sees dsync-3 lead",
        |l| matches!(l, Line::Leader { id, .. } if id == "dsync-3"),
    )
    .await;
    f3.partition();
    within(LIMIT, "dsync-3 deposed", term.cancelled()).await;
    let Line::Elected { at: elected, .. } = g3
        .expect(LIMIT, "go-3 elected", |l| matches!(l, Line::Elected { .. }))
        .await
    else {
        unreachable!()
    };
    let dsync_end = spans
        .dsync()
        .last()
        .and_then(|s| s.2)
        .expect("dsync-3's term ended");
    eprintln!(
        "interop: dsync cut off -> client-go took over {} ms after dsync stepped down",
        ms(since(elected, dsync_end))
    );

    // Never two leaders, across every span of every process.
    g3.send("stopall");
    g3.expect(LIMIT, "go-3 released", |l| {
        matches!(l, Line::Released { .. })
    })
    .await;
    f3.heal();
    for d in [&d1, &d2, &d3] {
        d.shutdown().await.unwrap();
    }
    let mut all = spans.dsync();
    assert_eq!(
        all.len(),
        2,
        "one term each for the two dsync leaders: {all:?}"
    );
    all.extend(go_spans(&g1, &lease, None));
    all.extend(go_spans(&g2, &lease, Some(killed)));
    all.extend(go_spans(&g3, &lease, None));
    assert_eq!(all.len(), 5, "{all:#?}");
    assert_never_two_leaders(all);
}

/// A dsync handoff is, to client-go, a release like any other: a client-go peer on the lease
/// does not read the successor annotation and may take the lease at once; never two leaders.
#[actix::test]
async fn a_dsync_handoff_is_a_plain_release_to_client_go_peers() {
    let ready = Harness::get().ready();
    let ns = namespace().await;
    let t = kube_timing();
    let go_t = PeerTiming::new(t.lease_duration(), t.renew_deadline(), t.retry_period());
    let lease = format!("{SCOPE}.election.{NAME}");
    let spans = Spans::default();
    let d1 = replica(kube_store(&ready.leaseuser).await, &ns, "dsync-1").await;
    let e1 = d1.election(NAME).unwrap();
    spans.record("dsync-1", &e1);
    within(LIMIT, "dsync-1 leads", e1.elected()).await.unwrap();
    let mut g = GoPeer::client_go(&ready.leaseuser, &ns, "go-1", &[&lease], go_t).await;
    g.expect(
        LIMIT,
        "go-1 sees dsync-1 lead",
        |l| matches!(l, Line::Leader { id, .. } if id == "dsync-1"),
    )
    .await;
    // Handed to a dsync replica that is not running: dsync candidates would wait out the
    // grace; the client-go peer takes the released lease within its retry period.
    let released = SystemTime::now();
    e1.handoff_to("dsync-absent").await.unwrap();
    let Line::Elected { at, .. } = g
        .expect(LIMIT, "go-1 elected", |l| matches!(l, Line::Elected { .. }))
        .await
    else {
        unreachable!()
    };
    let took = since(at, released);
    eprintln!(
        "interop: dsync handoff -> client-go took the lease in {} ms",
        ms(took)
    );
    assert!(
        took < t.lease_duration(),
        "client-go waited {took:?}: it honoured the successor annotation?"
    );
    d1.shutdown().await.unwrap();
    g.kill();
    let mut all = spans.dsync();
    all.extend(go_spans(&g, &lease, None));
    assert_never_two_leaders(all);
}
