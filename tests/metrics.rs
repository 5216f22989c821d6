//! Prometheus metrics (feature `metrics`), on the memory store in paused time.
#![cfg(all(feature = "metrics", feature = "testing"))]

mod support;

use std::time::Duration;

use dsync::metrics::Metrics;
use dsync::testing::{Call, FaultyStore, paused_config, settle, within};
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
    // The first create fails: the election sees the lease without a leader until its
    // jittered backoff (between a tenth of a retry period and one) lets it acquire it.
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
        (retry / 10.0..=retry + 0.001).contains(&leaderless),
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

    // Stopped: every series of the lease is removed with its actor (rule
    // `idle-actors-retire`: nothing kept per name forever).
    e.stop().await.unwrap();
    assert_eq!(
        lease_samples(&scrape(&registry), &lease),
        Vec::<String>::new()
    );
    d.shutdown().await.unwrap();
}

/// The samples of `lease` in `text` (its client-go `name` series too).
fn lease_samples(text: &str, lease: &str) -> Vec<String> {
    let name = lease.split_once('/').map_or(lease, |(_, name)| name);
    let (by_lease, by_name) = (format!("lease=\"{lease}\""), format!("name=\"{name}\""));
    text.lines()
        .filter(|l| !l.starts_with('#') && (l.contains(&by_lease) || l.contains(&by_name)))
        .map(str::to_owned)
        .collect()
}

/// The lines of the metric family `name` in `text` (`# HELP`, `# TYPE` and every sample,
/// counters with their `_total` suffix), joined as they appear.
fn family(text: &str, name: &str) -> String {
    let help = format!("# HELP {name} ");
    let kind = format!("# TYPE {name} ");
    let sample = format!("{name}{{");
    let total = format!("{name}_total{{");
    text.lines()
        .filter(|l| {
            l.starts_with(&help)
                || l.starts_with(&kind)
                || l.starts_with(&sample)
                || l.starts_with(&total)
        })
        .map(|l| format!("{l}\n"))
        .collect()
}

const MASTER_STATUS_HELP: &str = "# HELP leader_election_master_status Gauge of if the \
    reporting system is master of the relevant lease, 0 indicates backup, 1 indicates master. \
    'name' is the string used to identify the lease (client-go compatible; same as \
    dsync_is_leader).\n# TYPE leader_election_master_status gauge\n";

/// The exposition of an election's holder metrics: dsync's and client-go's.
fn election_text(lease: &dsync::store::LeaseKey, leading: u8, transitions: u32) -> String {
    format!(
        "{MASTER_STATUS_HELP}leader_election_master_status{{name=\"{name}\"}} {leading}\n\
         # HELP dsync_is_leader 1 while this replica holds a term of the election.\n\
         # TYPE dsync_is_leader gauge\n\
         dsync_is_leader{{lease=\"{lease}\"}} {leading}\n\
         # HELP dsync_transitions Terms of the election this replica started (acquisitions).\n\
         # TYPE dsync_transitions counter\n\
         dsync_transitions_total{{lease=\"{lease}\"}} {transitions}\n",
        name = lease.name,
    )
}

/// The exposition of a lock's holder metrics.
fn lock_text(lease: &dsync::store::LeaseKey, held: u8, transitions: u32) -> String {
    format!(
        "# HELP dsync_lock_held 1 while this replica holds the lock.\n\
         # TYPE dsync_lock_held gauge\n\
         dsync_lock_held{{lease=\"{lease}\"}} {held}\n\
         # HELP dsync_lock_transitions Times this replica acquired the lock.\n\
         # TYPE dsync_lock_transitions counter\n\
         dsync_lock_transitions_total{{lease=\"{lease}\"}} {transitions}\n"
    )
}

/// The holder families in `registry`'s exposition (empty families print nothing).
fn holder_families(registry: &Registry) -> String {
    let text = scrape(registry);
    [
        "leader_election_master_status",
        "dsync_is_leader",
        "dsync_transitions",
        "dsync_lock_held",
        "dsync_lock_transitions",
    ]
    .iter()
    .map(|name| family(&text, name))
    .collect()
}

/// One replica (one process: its own registry) on a shared store.
fn replica(store: &MemoryStore, identity: &str) -> (Dsync, FaultyStore, Registry) {
    let mut registry = Registry::default();
    let faults = FaultyStore::new(store.clone());
    let d = Dsync::with_config(faults.clone(), paused_config(identity))
        .unwrap()
        .with_metrics(Metrics::register(&mut registry))
        .unwrap();
    (d, faults, registry)
}

#[actix::test]
async fn an_election_exposes_leadership_under_dsync_and_client_go_names() {
    tokio::time::pause();
    let t = Timing::default();
    let store = MemoryStore::new();
    let (a, _, reg_a) = replica(&store, "pod-a");
    let (b, faults_b, reg_b) = replica(&store, "pod-b");

    let ea = a.election("x").unwrap();
    let lease = ea.lease();
    within(t.lease_duration(), "a elected", ea.elected())
        .await
        .unwrap();
    let eb = b.election("x").unwrap();
    settle().await;
    // The leader reports 1, the follower 0 (a series, not nothing: `== 0` alerts see it).
    let expected = election_text(&lease, 1, 1);
    assert_eq!(holder_families(&reg_a), expected);
    assert_eq!(holder_families(&reg_b), election_text(&lease, 0, 0));

    // Stopped: the series are gone with the actor; the other replica takes over.
    ea.stop().await.unwrap();
    assert_eq!(
        lease_samples(&scrape(&reg_a), &lease.to_string()),
        Vec::<String>::new()
    );
    within(t.lease_duration(), "b elected", eb.elected())
        .await
        .unwrap();
    assert_eq!(holder_families(&reg_b), election_text(&lease, 1, 1));

    // Lost: b is cut off from the store; its term ends at the renew deadline.
    faults_b.partition();
    let mut status = eb.watch_status();
    within(
        t.lease_duration(),
        "b deposed",
        status.wait_for(|s| !s.is_leader()),
    )
    .await
    .unwrap();
    assert_eq!(holder_families(&reg_b), election_text(&lease, 0, 1));

    // Healed: nobody else campaigns, so b leads again: a second transition.
    faults_b.heal();
    within(t.lease_duration() * 2, "b elected again", eb.elected())
        .await
        .unwrap();
    assert_eq!(holder_families(&reg_b), election_text(&lease, 1, 2));

    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
    assert_eq!(
        lease_samples(&scrape(&reg_b), &lease.to_string()),
        Vec::<String>::new()
    );
}

#[actix::test]
async fn a_lock_exposes_its_holder_status_and_transitions() {
    tokio::time::pause();
    let t = Timing::default();
    let store = MemoryStore::new();
    let (a, faults_a, reg_a) = replica(&store, "pod-a");
    let (b, _, reg_b) = replica(&store, "pod-b");
    let la = a.lock("nightly").unwrap();
    let lb = b.lock("nightly").unwrap();
    let lease = la.lease();
    settle().await;
    assert_eq!(holder_families(&reg_a), lock_text(&lease, 0, 0));

    // Held: 1 as soon as the caller has the term.
    let term = la.try_lock().await.unwrap();
    assert_eq!(holder_families(&reg_a), lock_text(&lease, 1, 1));
    assert!(matches!(
        lb.try_lock().await,
        Err(dsync::Error::AlreadyLocked { .. })
    ));
    assert_eq!(holder_families(&reg_b), lock_text(&lease, 0, 0));

    // Unlocked: 0; the other replica's holds count there.
    la.unlock().await.unwrap();
    assert!(!term.is_active());
    assert_eq!(holder_families(&reg_a), lock_text(&lease, 0, 1));
    lb.with_lock(|_| async {}).await.unwrap();
    assert_eq!(holder_families(&reg_b), lock_text(&lease, 0, 1));

    // Lost: a holds it again, then is cut off; its term ends at the renew deadline.
    let term = within(t.lease_duration(), "a locks", la.lock())
        .await
        .unwrap();
    assert_eq!(holder_families(&reg_a), lock_text(&lease, 1, 2));
    faults_a.partition();
    within(t.lease_duration(), "a's term ends", term.cancelled()).await;
    settle().await;
    assert_eq!(holder_families(&reg_a), lock_text(&lease, 0, 2));

    faults_a.heal();
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

#[actix::test]
async fn handoffs_are_counted_by_the_replica_that_hands_off() {
    tokio::time::pause();
    let t = Timing::default();
    let store = MemoryStore::new();
    let (a, _, reg_a) = replica(&store, "pod-a");
    let (b, _, reg_b) = replica(&store, "pod-b");
    let ea = a.election("x").unwrap();
    let lease = ea.lease();
    within(t.lease_duration(), "a elected", ea.elected())
        .await
        .unwrap();
    let eb = b.election("x").unwrap();
    settle().await;
    ea.handoff_to("pod-b").await.unwrap();
    within(t.lease_duration(), "b elected", eb.elected())
        .await
        .unwrap();
    let samples = |registry: &Registry| -> Vec<String> {
        let mut text = String::new();
        encode(&mut text, registry).unwrap();
        text.lines()
            .filter(|l| l.starts_with("dsync_handoffs_total{"))
            .map(str::to_owned)
            .collect()
    };
    assert_eq!(
        samples(&reg_a),
        vec![format!("dsync_handoffs_total{{lease=\"{lease}\"}} 1")]
    );
    assert_eq!(
        samples(&reg_b),
        Vec::<String>::new(),
        "b handed nothing off"
    );
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

/// The value of the sample `name{semaphore="..."}` in `text`.
fn semaphore_sample(text: &str, name: &str, semaphore: &str) -> f64 {
    let prefix = format!("{name}{{semaphore=\"{semaphore}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {prefix:?} in\n{text}"))
        .trim()
        .parse()
        .unwrap()
}

#[actix::test]
async fn semaphore_permits_held_waiters_and_acquisitions_are_recorded() {
    tokio::time::pause();
    let mut registry = Registry::default();
    let d = Dsync::with_config(MemoryStore::new(), paused_config("pod-a"))
        .unwrap()
        .with_metrics(Metrics::register(&mut registry))
        .unwrap();
    let sem = d.semaphore("pool", 2).unwrap();
    let name = sem.name().to_string();
    let read = |what: &str| semaphore_sample(&scrape(&registry), what, &name);
    // The series start at 0.
    assert_eq!(read("dsync_semaphore_permits_held"), 0.0);
    assert_eq!(read("dsync_semaphore_waiters"), 0.0);
    assert_eq!(read("dsync_semaphore_acquisitions_total"), 0.0);
    let p0 = sem.acquire().await.unwrap();
    let p1 = sem.try_acquire().await.unwrap();
    assert_eq!(read("dsync_semaphore_permits_held"), 2.0);
    let sem2 = sem.clone();
    let waiter = actix::spawn(async move { sem2.acquire().await });
    within(
        Duration::from_secs(60),
        "queued",
        sem.watch_slot(0).unwrap().wait_for(|s| s.waiters == 1),
    )
    .await
    .unwrap();
    assert_eq!(read("dsync_semaphore_waiters"), 1.0);
    // Each slot's Lease has the lock series too.
    let text = scrape(&registry);
    assert!(
        text.contains(&format!("dsync_lock_held{{lease=\"{}\"}} 1", p0.lease())),
        "{text}"
    );
    p0.release().await.unwrap();
    let p2 = within(Duration::from_secs(60), "waiter", waiter)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(read("dsync_semaphore_waiters"), 0.0);
    assert_eq!(read("dsync_semaphore_acquisitions_total"), 3.0);
    assert_eq!(read("dsync_semaphore_permits_held"), 2.0);
    drop((p1, p2));
    assert_eq!(read("dsync_semaphore_permits_held"), 0.0);
    sem.with_permit(|_| async {}).await.unwrap();
    assert_eq!(read("dsync_semaphore_acquisitions_total"), 4.0);
    assert_eq!(read("dsync_semaphore_permits_held"), 0.0);
    // The last handle goes: the semaphore's series go, and its slots' once their actors
    // have retired (rule `idle-actors-retire`).
    let mut slots: Vec<_> = (0..2).map(|s| sem.watch_slot(s).unwrap()).collect();
    drop(sem);
    for slot in &mut slots {
        slot.wait_for(|s| s.stopped).await.unwrap();
    }
    let text = scrape(&registry);
    assert!(
        !text
            .lines()
            .any(|l| !l.starts_with('#') && (l.contains("semaphore=") || l.contains("lease="))),
        "{text}"
    );
    d.shutdown().await.unwrap();
}

/// Rule `one-identity`: a twin (another live process with this replica's identity, renewing
/// the lease) is counted, and never taken over while it renews. Rule `restore-resync`: a read
/// answered with a version older than one already seen is counted.
#[actix::test]
async fn twins_and_versions_going_back_are_counted() {
    tokio::time::pause();
    let t = Timing::default();
    let store = MemoryStore::new();
    let live = Dsync::with_config(store.clone(), paused_config("twin")).unwrap();
    let e1 = live.election("x").unwrap();
    within(t.lease_duration(), "elected", e1.elected())
        .await
        .unwrap();
    let mut registry = Registry::default();
    let metrics = Metrics::register(&mut registry);
    let faults = FaultyStore::new(store.clone());
    let twin = Dsync::with_config(faults.clone(), paused_config("twin"))
        .unwrap()
        .with_metrics(metrics)
        .unwrap();
    let e2 = twin.election("x").unwrap();
    let lease = e2.lease().to_string();
    tokio::time::sleep(t.lease_duration() * 2).await;
    settle().await;
    assert!(
        !e2.is_leader(),
        "the twin never takes the live holder's lease"
    );
    let twins = sample(&scrape(&registry), "dsync_identity_twins_total", &lease);
    // (Counted each time the twin's actor takes a change of the record, not per renewal:
    // renewals are parked for it and taken at its next step.)
    assert!(twins >= 1.0, "{twins}");
    // The store goes back in time: the twin's next read answers an older version.
    let version: u64 = store
        .peek(&e2.lease())
        .unwrap()
        .resource_version
        .parse()
        .unwrap();
    faults.rewind_versions(version - 1);
    tokio::time::sleep(t.lease_duration()).await;
    settle().await;
    let back = sample(&scrape(&registry), "dsync_versions_went_back_total", &lease);
    assert!(back >= 1.0, "{back}");
    live.shutdown().await.unwrap();
    twin.shutdown().await.unwrap();
}
