//! Prometheus metrics (feature `metrics`), on the memory store in paused time.
#![cfg(all(feature = "metrics", feature = "testing"))]

mod support;

use std::time::Duration;

use dsync::metrics::Metrics;
use dsync::testing::{Call, FaultyStore, within};
use dsync::{Dsync, MemoryStore, StoreError, Timing};
use prometheus_client::encoding::text::encode;
use prometheus_client::registry::Registry;

fn scrape(registry: &Registry) -> String {
    let mut out = String::new();
    encode(&mut out, registry).unwrap();
    out
}

/// The value of the sample `name{lease="..."}` in `text`.
fn sample(text: &str, name: &str, lease: &str) -> f64 {
    let prefix = format!("{name}{{lease=\"{lease}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {prefix:?} in\n{text}"))
        .trim()
        .parse()
        .unwrap()
}

#[actix::test]
async fn leader_transitions_renewals_conflicts_and_leaderless_time_are_recorded() {
    tokio::time::pause();
    let t = Timing::default();
    let mut registry = Registry::default();
    let metrics = Metrics::register(&mut registry);
    let faults = FaultyStore::new(MemoryStore::new());
    let d = Dsync::with_config(faults.clone(), dsync::testing::paused_config("pod-a"))
        .unwrap()
        .with_metrics(metrics.clone())
        .unwrap();
    assert!(matches!(
        d.clone().with_metrics(metrics),
        Err(dsync::Error::InvalidConfig { .. })
    ));
    // The first create fails: the election sees the lease without a leader for one retry
    // period before it acquires it.
    faults.fail_next(Call::Create, || StoreError::Unavailable {
        message: "503".into(),
        source: None,
    });
    let e = d.election("x").unwrap();
    let lease = e.lease().to_string();
    within(t.lease_duration(), "elected", e.elected())
        .await
        .unwrap();
    let text = scrape(&registry);
    assert_eq!(sample(&text, "dsync_is_leader", &lease), 1.0);
    assert_eq!(sample(&text, "dsync_transitions_total", &lease), 1.0);
    // (Paused-time timers fire on whole milliseconds, rounded up: one tick of slack.)
    let leaderless = sample(&text, "dsync_leaderless_seconds_total", &lease);
    let retry = t.retry_period().as_secs_f64();
    assert!(
        (retry..=retry + 0.001).contains(&leaderless),
        "{leaderless}"
    );

    // Ten renewals, one of them conflicting (re-read, then the term is still ours).
    tokio::time::sleep(t.retry_period() * 5).await;
    faults.fail_next(Call::Replace, || StoreError::Conflict { lease: "x".into() });
    tokio::time::sleep(t.retry_period() * 5 + Duration::from_millis(1)).await;
    let text = scrape(&registry);
    assert_eq!(sample(&text, "dsync_conflicts_total", &lease), 1.0);
    let renewals = sample(&text, "dsync_renew_duration_seconds_count", &lease);
    assert!((9.0..=10.0).contains(&renewals), "{renewals}\n{text}");
    // In paused time a renewal takes no time: every one is in the lowest bucket.
    assert_eq!(
        sample(&text, "dsync_renew_duration_seconds_sum", &lease),
        0.0
    );

    e.stop().await.unwrap();
    let text = scrape(&registry);
    assert_eq!(sample(&text, "dsync_is_leader", &lease), 0.0);
    d.shutdown().await.unwrap();
}
