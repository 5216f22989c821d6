//! Coordinated leader election (KEP-4355): on a Lease with `spec.strategy` the API server's
//! election controller picks the holder among the lease's `LeaseCandidate`s, and sets
//! `spec.preferredHolder` to ask the holder to give the lease up.
//!
//! The first tests run on a real kube-apiserver started with
//! `--feature-gates=CoordinatedLeaderElection=true --runtime-config=coordination.k8s.io/v1beta1=true`
//! (`Harness::coordinated`, its own server): dsync replicas register candidates
//! ([`Dsync::candidate`]) and the server's controller elects among them; no test writes the
//! holder. The edge cases after them (a drain while preferred away, refusals during the
//! drain, assignment of a long-expired lease) need a controller that acts at a chosen moment:
//! they run on `MemoryStore` in paused time, where the test plays the controller
//! (`Env::edit`). The last test runs on the default server, where the gate is off (as in
//! Kubernetes by default): the server drops both fields and dsync behaves as without them.
#![cfg(feature = "testing")]

mod support;

use std::time::Duration;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use dsync::election::DeposeReason;
use dsync::election::{Candidacy, Candidate};
use dsync::resource::LeaseKind;
use dsync::store::{LeaseKey, LeaseRecord, LeaseStore, StoreError};
use dsync::testing::{Call, TermLog, settle, within};
use dsync::{Dsync, Election, Term};
use support::apiserver::Harness;
use support::backend::Env;
use tokio::sync::oneshot;
use tokio::time::Instant;

const STRATEGY: &str = "OldestEmulationVersion";

/// Tests where the test plays the election controller: on `MemoryStore` only, in paused time.
macro_rules! on_memory {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(
                #[actix::test]
                async fn $name() {
                    let env = crate::support::backend::Env::memory().await;
                    let watchdog = env.watchdog();
                    ::dsync::testing::within(watchdog, stringify!($name), super::$name(env)).await
                }
            )*
        }
    };
}

on_memory!(
    a_leader_preferred_away_is_deposed_drains_then_releases,
    candidates_never_acquire_a_coordinated_lease_and_take_it_when_assigned,
    a_try_lock_on_a_coordinated_lease_is_refused,
    refusal_during_drain_403_of_a_preferred_holder_marks_the_draining_term_lost,
    refusal_during_drain_422_of_a_preferred_holder_marks_the_draining_term_lost,
);

/// The election's lease key, without starting the election.
fn election_key(d: &Dsync, name: &str) -> LeaseKey {
    d.resource(name).lease_key(LeaseKind::Election)
}

/// Waits until `election` has observed `leader` as the lease's holder.
async fn sees_leader(env: &Env, election: &Election, leader: Option<&str>) {
    let mut rx = election.watch_status();
    within(env.limit(), "the leader is observed", async {
        rx.wait_for(|s| s.holder.as_deref() == leader)
            .await
            .expect("the election is running");
    })
    .await;
}

async fn a_leader_preferred_away_is_deposed_drains_then_releases(env: Env) {
    let a = env.replica("pod-a").await;
    let b = env.replica("pod-b").await;
    let key = election_key(&a, "x");
    let ea = a.election("x").unwrap();
    let log = TermLog::default();
    log.record("pod-a", &ea).unwrap();
    // pod-a's term work: returns only when the test says so, after its term was cancelled.
    let (finish_tx, finish_rx) = oneshot::channel::<()>();
    let finish = std::sync::Mutex::new(Some(finish_rx));
    ea.when_elected(move |term: Term| {
        let finish = finish.lock().unwrap().take();
        async move {
            term.cancelled().await;
            if let Some(finish) = finish {
                let _ = finish.await;
            }
        }
    })
    .unwrap();
    let term_a = within(env.limit(), "pod-a elected", ea.elected())
        .await
        .unwrap();
    let eb = b.election("x").unwrap();
    log.record("pod-b", &eb).unwrap();
    sees_leader(&env, &eb, Some("pod-a")).await;

    // The controller (with pod-b as the better candidate) marks the end of pod-a's term.
    let marked = env
        .edit(&key, |r| {
            r.strategy = Some(STRATEGY.into());
            r.preferred_holder = Some("pod-b".into());
        })
        .await;
    assert_eq!(marked.record.preferred(), Some("pod-b"), "the gate is on");
    let t0 = Instant::now();
    within(env.limit(), "pod-a's term cancelled", term_a.cancelled()).await;
    env.assert_between(t0.elapsed(), Duration::ZERO, Duration::ZERO, "deposed");
    assert!(!ea.is_leader());

    // Its work has not returned: the lease stays pod-a's, renewed, for longer than a lease
    // duration. Nobody else takes it.
    let before = env.peek(&key).await.unwrap();
    tokio::time::sleep(env.lease() + env.retry()).await;
    let during = env.peek(&key).await.unwrap();
    assert_eq!(
        during.record.holder(),
        Some("pod-a"),
        "not released while work runs"
    );
    assert_ne!(
        during.resource_version, before.resource_version,
        "renewed while the work drains"
    );
    assert!(!eb.is_leader());

    // The work returns: the lease is released, keeping strategy and preferred holder.
    finish_tx.send(()).unwrap();
    sees_leader(&env, &ea, None).await;
    let released = env.peek(&key).await.unwrap();
    assert_eq!(released.record.holder(), None);
    assert_eq!(released.record.strategy.as_deref(), Some(STRATEGY));
    assert_eq!(released.record.preferred(), Some("pod-b"));
    assert_eq!(
        released.record.lease_transitions,
        Some(term_a.fencing_token())
    );

    // pod-b (and pod-a, campaigning again) wait for the controller: nobody writes.
    tokio::time::sleep(env.leases(2)).await;
    let still = env.peek(&key).await.unwrap();
    assert_eq!(
        still.resource_version, released.resource_version,
        "nobody wrote"
    );
    assert!(!ea.is_leader() && !eb.is_leader());

    // The controller hands the lease to pod-b: it takes it at once, as a new term.
    let t0 = Instant::now();
    env.edit(&key, |r| {
        r.holder_identity = Some("pod-b".into());
        r.preferred_holder = None;
        r.lease_duration_seconds = Some(5);
        r.acquire_time = None;
    })
    .await;
    let term_b = within(env.limit(), "pod-b elected", eb.elected())
        .await
        .unwrap();
    env.assert_between(t0.elapsed(), Duration::ZERO, Duration::ZERO, "adopted");
    assert!(term_b.fencing_token() > term_a.fencing_token());
    let held = env.peek(&key).await.unwrap();
    assert_eq!(held.record.holder(), Some("pod-b"));
    assert_eq!(held.record.strategy.as_deref(), Some(STRATEGY), "kept");
    assert!(!ea.is_leader());

    settle().await;
    log.assert_safe();
    let spans = log.spans();
    assert_eq!(spans[0].replica, "pod-a");
    assert_eq!(
        spans[0].reason,
        Some(DeposeReason::PreferredHolder {
            holder: "pod-b".into()
        })
    );
    assert_eq!(spans[1].replica, "pod-b");
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

async fn candidates_never_acquire_a_coordinated_lease_and_take_it_when_assigned(env: Env) {
    let b = env.replica("pod-b").await;
    let key = election_key(&b, "x");
    // The controller created the lease for a candidate that has since died.
    let store = env.store().await;
    let created = store
        .create(
            &key,
            LeaseRecord {
                holder_identity: Some("pod-gone".into()),
                lease_duration_seconds: Some(1),
                lease_transitions: Some(3),
                strategy: Some(STRATEGY.into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        created.record.strategy.as_deref(),
        Some(STRATEGY),
        "the gate is on"
    );
    let eb = b.election("x").unwrap();
    sees_leader(&env, &eb, Some("pod-gone")).await;
    // Long expired: still not taken. The controller picks the holder.
    tokio::time::sleep(env.leases(3)).await;
    assert!(!eb.is_leader());
    assert_eq!(env.peek(&key).await.unwrap(), created, "nobody wrote");

    // Free: not taken either.
    let free = env
        .edit(&key, |r| {
            r.holder_identity = None;
        })
        .await;
    sees_leader(&env, &eb, None).await;
    tokio::time::sleep(env.leases(2)).await;
    assert!(!eb.is_leader());
    assert_eq!(env.peek(&key).await.unwrap(), free, "nobody wrote");

    // Assigned to pod-b: taken at once, with the next fencing token.
    let t0 = Instant::now();
    env.edit(&key, |r| {
        r.holder_identity = Some("pod-b".into());
        r.lease_duration_seconds = Some(5);
    })
    .await;
    let term = within(env.limit(), "pod-b elected", eb.elected())
        .await
        .unwrap();
    env.assert_between(t0.elapsed(), Duration::ZERO, Duration::ZERO, "adopted");
    assert_eq!(term.fencing_token(), 4);
    let held = env.peek(&key).await.unwrap();
    assert_eq!(held.record.holder(), Some("pod-b"));
    assert_eq!(held.record.strategy.as_deref(), Some(STRATEGY));
    // And renewed from then on.
    tokio::time::sleep(env.leases(2)).await;
    assert!(eb.is_leader());
    assert_eq!(term.fencing_token(), eb.term().unwrap().fencing_token());
    b.shutdown().await.unwrap();
}

async fn a_try_lock_on_a_coordinated_lease_is_refused(env: Env) {
    let d = env.replica("pod-a").await;
    let key = d.resource("report").lease_key(LeaseKind::Lock);
    let store = env.store().await;
    let record = LeaseRecord {
        lease_duration_seconds: Some(5),
        strategy: Some(STRATEGY.into()),
        ..Default::default()
    };
    store.create(&key, record).await.unwrap();
    let lock = d.lock("report").unwrap();
    let err = within(env.limit(), "try_lock answers", lock.try_lock())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, dsync::Error::InvalidState { reason, .. } if reason.contains("strategy")),
        "{err:?}"
    );
    env.edit(&key, |r| r.holder_identity = Some("pod-z".into()))
        .await;
    let err = within(env.limit(), "try_lock answers", lock.try_lock())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, dsync::Error::AlreadyLocked { holder, .. } if holder == "pod-z"),
        "{err:?}"
    );
    d.shutdown().await.unwrap();
}

async fn refusal_during_drain_403_of_a_preferred_holder_marks_the_draining_term_lost(env: Env) {
    refusal_during_the_drain_of_a_preferred_holder(env, support::backend::refused_403).await;
}

async fn refusal_during_drain_422_of_a_preferred_holder_marks_the_draining_term_lost(env: Env) {
    refusal_during_the_drain_of_a_preferred_holder(env, support::backend::refused_422).await;
}

/// Rule `refusal-during-drain` (issue 24): pod-a is preferred away; its term's work keeps
/// running (until the test lets it return) while the lease stays pod-a's, renewed; then every
/// renewal of pod-a's is refused (`refusal`). Once the lease has gone unrenewed for a lease
/// duration, the controller (played by the test) assigns it to pod-b. pod-b may be elected
/// while pod-a's work still runs only over a term that is marked lost.
async fn refusal_during_the_drain_of_a_preferred_holder(
    env: Env,
    refusal: impl Fn() -> StoreError + Send + Sync + 'static,
) {
    let (a, fa) = env
        .faulty_replica_with("pod-a", |c| c.with_drain_timeout(env.leases(4)))
        .await;
    let b = env.replica("pod-b").await;
    let key = election_key(&a, "x");
    let ea = a.election("x").unwrap();
    let log = TermLog::default();
    log.record("pod-a", &ea).unwrap();
    let (finish_tx, finish_rx) = oneshot::channel::<()>();
    let running = Arc::new(AtomicBool::new(false));
    let first_work = std::sync::Mutex::new(Some((finish_rx, running.clone())));
    ea.when_elected(move |term: Term| {
        let first = first_work.lock().unwrap().take();
        async move {
            term.cancelled().await;
            if let Some((finish, running)) = first {
                running.store(true, Ordering::SeqCst);
                let _ = finish.await;
                running.store(false, Ordering::SeqCst);
            }
        }
    })
    .unwrap();
    let term_a = within(env.limit(), "pod-a elected", ea.elected())
        .await
        .unwrap();
    let eb = b.election("x").unwrap();
    log.record("pod-b", &eb).unwrap();
    sees_leader(&env, &eb, Some("pod-a")).await;
    let marked = env
        .edit(&key, |r| {
            r.strategy = Some(STRATEGY.into());
            r.preferred_holder = Some("pod-b".into());
        })
        .await;
    assert_eq!(marked.record.preferred(), Some("pod-b"), "the gate is on");
    within(env.limit(), "pod-a's term cancelled", term_a.cancelled()).await;
    settle().await;
    assert!(running.load(Ordering::SeqCst), "the work drains");
    let writes = fa.calls(Call::Replace);
    fa.fail_always(Call::Replace, refusal);
    within(
        env.limit(),
        "a renewal is refused",
        fa.called(Call::Replace, writes + 1),
    )
    .await;
    // The controller waits until the lease has not been renewed for a lease duration.
    let before = env.peek(&key).await.unwrap();
    tokio::time::sleep(env.lease() + env.retry()).await;
    let after = env.peek(&key).await.unwrap();
    assert_eq!(
        after.resource_version, before.resource_version,
        "nothing was written"
    );
    assert_eq!(after.record.holder(), Some("pod-a"));
    env.edit(&key, |r| {
        r.holder_identity = Some("pod-b".into());
        r.preferred_holder = None;
        r.lease_duration_seconds = Some(5);
        r.acquire_time = None;
    })
    .await;
    let term_b = within(env.limit(), "pod-b elected", eb.elected())
        .await
        .unwrap();
    log.got("pod-b", &term_b);
    assert!(term_b.fencing_token() > term_a.fencing_token());
    let still_running = running.load(Ordering::SeqCst);
    let lost = term_a.lost();
    fa.clear();
    let _ = finish_tx.send(());
    assert!(
        !still_running || lost,
        "pod-b was elected (token {}) while pod-a's preferred-away term's work still runs, but \
         that term (token {}) is not marked lost",
        term_b.fencing_token(),
        term_a.fencing_token()
    );
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
    log.assert_safe();
}

/// On the default server (gate off) the fields are dropped on every write: a leader whose
/// lease is "marked" keeps leading, and a lease "created with a strategy" is a plain one.
#[actix::test]
async fn with_the_gate_off_the_server_drops_the_fields_and_nothing_changes() {
    let env = Env::kube_on(Harness::get()).await;
    let watchdog = env.watchdog();
    within(watchdog, "gate off", async {
        let a = env.replica("pod-a").await;
        let key = election_key(&a, "x");
        let ea = a.election("x").unwrap();
        let term = within(env.limit(), "pod-a elected", ea.elected())
            .await
            .unwrap();
        let stored = env
            .edit(&key, |r| {
                r.strategy = Some(STRATEGY.into());
                r.preferred_holder = Some("pod-b".into());
            })
            .await;
        assert_eq!(stored.record.strategy, None, "dropped by the server");
        assert_eq!(
            stored.record.preferred_holder, None,
            "dropped by the server"
        );
        tokio::time::sleep(env.leases(2)).await;
        assert!(term.is_active(), "not deposed");
        assert_eq!(ea.term().unwrap().id(), term.id());

        let b = env.replica("pod-b").await;
        let key = election_key(&b, "y");
        let store = env.store().await;
        let created = store
            .create(
                &key,
                LeaseRecord {
                    lease_duration_seconds: Some(5),
                    strategy: Some(STRATEGY.into()),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(created.record.strategy, None, "dropped by the server");
        let t0 = Instant::now();
        let eb = b.election("y").unwrap();
        within(env.limit(), "pod-b elected", eb.elected())
            .await
            .unwrap();
        env.assert_between(t0.elapsed(), Duration::ZERO, Duration::ZERO, "a free lease");
        a.shutdown().await.unwrap();
        b.shutdown().await.unwrap();
    })
    .await;
}

/// A handoff of a coordinated lease is refused: the API server's election controller picks
/// its holder, and dsync candidates never acquire it on their own.
#[actix::test]
async fn a_handoff_of_a_coordinated_lease_is_refused() {
    let env = Env::memory().await;
    let a = env.replica("pod-a").await;
    let ea = a.election("x").unwrap();
    let term = within(env.limit(), "a leads", ea.elected()).await.unwrap();
    let key = ea.lease();
    let mut stored = env.peek(&key).await.unwrap();
    stored.record.strategy = Some("OldestEmulationVersion".into());
    env.put(&key, stored.record).await;
    dsync::testing::settle().await;
    let result = ea.handoff_to("pod-b").await;
    assert!(
        matches!(result, Err(dsync::Error::HandoffFailed { .. })),
        "{result:?}"
    );
    assert!(term.is_active(), "refused before anything ended");
    a.shutdown().await.unwrap();
}

// ---- the API server's election controller picks among dsync candidates ----------------------

/// How long the real controller may take: it re-runs an election every 5 s, and waits up to
/// 5 s for candidates to answer its pings.
const CONTROLLER: Duration = Duration::from_secs(60);

/// `identity`'s election `x` and its candidacy with `emulation` as emulation version.
async fn candidate(d: &Dsync, emulation: &str) -> (Election, Candidate) {
    let election = d.election("x").unwrap();
    let candidate = d
        .candidate(&election, Candidacy::new("1.36.0", emulation))
        .unwrap();
    within(
        CONTROLLER,
        "the candidate registers",
        candidate.registered(),
    )
    .await
    .unwrap();
    (election, candidate)
}

/// Waits until `election` leads.
async fn leads(election: &Election, what: &str) -> Term {
    within(CONTROLLER, what, election.elected()).await.unwrap()
}

/// The names of the `LeaseCandidate`s of the namespace.
async fn candidates_of(env: &Env, d: &Dsync) -> Vec<String> {
    let namespace = election_key(d, "x").namespace;
    env.store()
        .await
        .list_candidates(&namespace)
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.key.name)
        .collect()
}

/// Three dsync replicas with different emulation versions: the API server's controller makes
/// the one with the oldest emulation version the leader, and it stays leader.
#[actix::test]
async fn the_controller_elects_the_candidate_with_the_oldest_emulation_version() {
    let env = Env::kube_on(Harness::coordinated()).await;
    within(env.watchdog(), "oldest emulation version", async {
        let log = TermLog::default();
        let mut replicas = Vec::new();
        for (identity, emulation) in [
            ("pod-a", "1.36.0"),
            ("pod-b", "1.34.0"),
            ("pod-c", "1.35.0"),
        ] {
            let d = env.replica(identity).await;
            let (e, c) = candidate(&d, emulation).await;
            log.record(identity, &e).unwrap();
            replicas.push((d, e, c));
        }
        let (_, eb, cb) = &replicas[1];
        leads(eb, "pod-b (1.34.0) leads").await;
        let key = eb.lease();
        let store = env.store().await;
        let stored = store.get(&key).await.unwrap();
        assert_eq!(stored.record.holder(), Some("pod-b"));
        assert_eq!(
            stored.record.strategy.as_deref(),
            Some(STRATEGY),
            "the controller's"
        );
        let mut names = candidates_of(&env, &replicas[0].0).await;
        names.sort();
        assert_eq!(names, ["pod-a", "pod-b", "pod-c"]);
        assert_eq!(cb.status().error, None);

        // Several controller rounds (every 5 s) later, pod-b still leads, in one term.
        let term = eb.term().unwrap();
        let rounds = store.get(&key).await.unwrap();
        let mut rx = eb.watch_status();
        let moved =
            tokio::time::timeout(Duration::from_secs(12), rx.wait_for(|s| !s.is_leader())).await;
        assert!(moved.is_err(), "pod-b lost the lease: {:?}", eb.status());
        assert_eq!(eb.term().unwrap().id(), term.id());
        assert!(
            store
                .get(&key)
                .await
                .unwrap()
                .record
                .preferred()
                .is_none_or(|p| p == "pod-b"),
            "{rounds:?}"
        );
        assert!(!replicas[0].1.is_leader() && !replicas[2].1.is_leader());
        for (d, _, _) in &replicas {
            d.shutdown().await.unwrap();
        }
        settle().await;
        log.assert_safe();
    })
    .await;
}

/// pod-a leads; pod-b, with an older emulation version, registers: the controller sets
/// `preferredHolder`, pod-a hands over (deposed, released), the controller assigns pod-b.
/// When pod-b stops, its candidate is deleted and the controller gives the lease back to pod-a.
#[actix::test]
async fn a_better_candidate_takes_over_and_a_stopped_one_withdraws() {
    let env = Env::kube_on(Harness::coordinated()).await;
    within(env.watchdog(), "handover", async {
        let log = TermLog::default();
        let a = env.replica("pod-a").await;
        let (ea, _ca) = candidate(&a, "1.36.0").await;
        log.record("pod-a", &ea).unwrap();
        let term_a = leads(&ea, "pod-a leads").await;

        let b = env.replica("pod-b").await;
        let (eb, cb) = candidate(&b, "1.35.0").await;
        log.record("pod-b", &eb).unwrap();
        let term_b = leads(&eb, "pod-b takes over").await;
        assert!(!term_a.is_active(), "pod-a's term ended first");
        assert!(term_b.fencing_token() > term_a.fencing_token());
        assert!(!ea.is_leader());
        let held = env.store().await.get(&eb.lease()).await.unwrap();
        assert_eq!(held.record.holder(), Some("pod-b"));
        assert_eq!(held.record.strategy.as_deref(), Some(STRATEGY));

        // pod-b stops: its candidate is deleted, the lease released, and the controller
        // assigns the lease to the only candidate left.
        b.shutdown().await.unwrap();
        let mut rx = cb.watch_status();
        within(CONTROLLER, "pod-b withdrawn", rx.wait_for(|s| s.withdrawn))
            .await
            .unwrap();
        assert_eq!(candidates_of(&env, &a).await, ["pod-a"]);
        let again = leads(&ea, "pod-a leads again").await;
        assert!(again.fencing_token() > term_b.fencing_token());
        a.shutdown().await.unwrap();
        settle().await;
        log.assert_safe();
        let spans = log.spans();
        assert_eq!(spans[0].replica, "pod-a");
        assert_eq!(
            spans[0].reason,
            Some(DeposeReason::PreferredHolder {
                holder: "pod-b".into()
            })
        );
        assert_eq!(spans[1].replica, "pod-b");
        assert_eq!(spans[2].replica, "pod-a");
    })
    .await;
}

/// On `MemoryStore` the candidate is kept where tests (and users) can see it, and answers a
/// ping (here the test plays the controller) by renewing; it is deleted when the election
/// stops. An invalid candidacy is refused before anything is written.
#[actix::test]
async fn a_memory_candidate_is_kept_answers_pings_and_is_deleted_on_stop() {
    let env = Env::memory().await;
    let d = env.replica("pod-a").await;
    let election = d.election("x").unwrap();
    let err = d
        .candidate(&election, Candidacy::new("1.36", "1.35.0"))
        .unwrap_err();
    assert!(
        matches!(
            &err,
            dsync::Error::InvalidConfig {
                key: "candidacy.binary_version",
                ..
            }
        ),
        "{err:?}"
    );
    let candidate = d
        .candidate(&election, Candidacy::new("1.36.0", "1.35.0"))
        .unwrap();
    within(env.limit(), "registered", candidate.registered())
        .await
        .unwrap();
    let store = env.store().await;
    let key = candidate.key().clone();
    assert_eq!(key.name, "pod-a");
    let stored = store.get_candidate(&key).await.unwrap();
    assert_eq!(stored.record.lease_name, election.lease().name);
    assert_eq!(stored.record.emulation_version, "1.35.0");
    assert_eq!(stored.record.strategy, STRATEGY);
    assert!(!stored.record.pinged());

    // The controller pings.
    let mut pinged = stored.record.clone();
    pinged.ping_time = Some(std::time::SystemTime::now());
    store
        .replace_candidate(&key, pinged, &stored.resource_version)
        .await
        .unwrap();
    let mut rx = candidate.watch_status();
    within(
        env.limit(),
        "the ping is answered",
        rx.wait_for(|s| s.pings_answered == 1),
    )
    .await
    .unwrap();
    let answered = store.get_candidate(&key).await.unwrap();
    assert!(
        !answered.record.pinged(),
        "renewed after the ping: {answered:?}"
    );

    // A shutdown that returned has withdrawn the candidate.
    d.shutdown().await.unwrap();
    assert!(rx.borrow().withdrawn, "{:?}", candidate.status());
    assert!(matches!(
        store.get_candidate(&key).await,
        Err(StoreError::NotFound { .. })
    ));
}

/// A store call that hangs (a black-holed connection) is bounded by the renew deadline: a
/// candidate cut off from its store neither blocks the shutdown for ever nor hides it; it
/// reports the timeout. (`LeaseThread::Current`, paused time.)
#[actix::test]
async fn a_shutdown_is_not_held_by_a_candidate_whose_store_hangs() {
    let env = Env::memory().await;
    let (d, faults) = env.faulty_replica("pod-a").await;
    let election = d.election("x").unwrap();
    let candidate = d
        .candidate(&election, Candidacy::new("1.36.0", "1.35.0"))
        .unwrap();
    within(env.limit(), "registered", candidate.registered())
        .await
        .unwrap();
    faults.stall(Call::Candidate);
    let started = Instant::now();
    within(env.limit(), "shutdown", d.shutdown()).await.unwrap();
    let status = candidate.status();
    assert!(status.withdrawn, "{status:?}");
    assert!(
        status.error.as_deref().unwrap_or("").contains("timed out"),
        "the hung delete is reported: {status:?}"
    );
    env.assert_timer(
        started.elapsed(),
        env.renew(),
        env.renew(),
        "the hung delete, bounded by the renew deadline",
    );
}

/// Pings are answered as they come and nothing is read while nothing changes: the candidate
/// follows its `LeaseCandidate` through the store's change signal
/// (`LeaseStore::candidate_changes`), not by reading it every poll interval. (Paused time:
/// an answer after zero elapsed time is an answer that waited for no timer.)
#[actix::test]
async fn a_candidate_answers_a_ping_at_once_and_reads_nothing_while_idle() {
    let env = Env::memory().await;
    let (d, faults, candidate) = settled_candidate(&env, |_| {}).await;
    let before = faults.calls(Call::Candidate);
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(
        faults.calls(Call::Candidate),
        before,
        "no LeaseCandidate call in a minute in which nothing changed"
    );
    assert_eq!(faults.calls(Call::CandidateWatch), 1, "one change signal");
    assert!(candidate.status().watching);

    assert_eq!(
        time_to_answer(&env, &candidate).await,
        Duration::ZERO,
        "answered without waiting for a {POLL:?} poll"
    );

    // Renewed every 5 minutes without a ping, as client-go's candidate is.
    let (answered_at, writes) = (Instant::now(), candidate.status().writes);
    let mut rx = candidate.watch_status();
    within(
        Duration::from_secs(6 * 60),
        "renewed unpinged",
        rx.wait_for(|s| s.writes == writes + 1),
    )
    .await
    .unwrap();
    env.assert_timer(
        answered_at.elapsed(),
        Duration::from_secs(5 * 60),
        Duration::from_secs(5 * 60),
        "renewal 5 minutes after the last write",
    );
    d.shutdown().await.unwrap();
}

/// A store whose change signal fails (or that has none) still gets its pings answered: the
/// candidate reads its object every poll interval instead.
#[actix::test]
async fn without_a_change_signal_a_candidate_reads_every_poll_interval() {
    let env = Env::memory().await;
    let (d, faults, candidate) = settled_candidate(&env, |faults| {
        faults.fail_always(Call::CandidateWatch, || StoreError::Forbidden {
            verb: "watch".into(),
            resource: "leasecandidates".into(),
            message: "injected: no watch rights".into(),
        })
    })
    .await;
    let before = faults.calls(Call::Candidate);
    tokio::time::sleep(Duration::from_secs(18)).await;
    let reads = faults.calls(Call::Candidate) - before;
    assert_eq!(reads, 4, "one read per {POLL:?} in 18 s");
    assert!(!candidate.status().watching);

    let answer = time_to_answer(&env, &candidate).await;
    assert!(answer <= POLL, "answered at the next poll: {answer:?}");
    d.shutdown().await.unwrap();
}

/// The poll interval of [`settled_candidate`]: long, so that a read it causes stands out.
const POLL: Duration = Duration::from_secs(4);

/// `pod-a`'s candidacy in election `x` on a `FaultyStore` that `prepare` set up first: once it
/// registered and handled the signal of its own write.
async fn settled_candidate(
    env: &Env,
    prepare: impl FnOnce(&dsync::testing::FaultyStore),
) -> (Dsync, dsync::testing::FaultyStore, Candidate) {
    let (d, faults) = env.faulty_replica("pod-a").await;
    prepare(&faults);
    let election = d.election("x").unwrap();
    let candidate = d
        .candidate(
            &election,
            Candidacy::new("1.36.0", "1.35.0").with_poll_interval(POLL),
        )
        .unwrap();
    within(env.limit(), "registered", candidate.registered())
        .await
        .unwrap();
    settle().await;
    (d, faults, candidate)
}

/// Pings `candidate` as the election controller does: how long it took to answer.
async fn time_to_answer(env: &Env, candidate: &Candidate) -> Duration {
    let store = env.store().await;
    let key = candidate.key();
    let answered = candidate.status().pings_answered;
    let mut rx = candidate.watch_status();
    let pinged_at = Instant::now();
    let stored = store.get_candidate(key).await.unwrap();
    let mut pinged = stored.record.clone();
    pinged.ping_time = Some(std::time::SystemTime::now());
    store
        .replace_candidate(key, pinged, &stored.resource_version)
        .await
        .unwrap();
    within(
        env.limit(),
        "the ping is answered",
        rx.wait_for(|s| s.pings_answered == answered + 1),
    )
    .await
    .unwrap();
    pinged_at.elapsed()
}

/// On the real API server the candidate follows its object with one watch: while nothing
/// happens it makes no request, and a ping of the controller costs it a read and a write (its
/// own write coming back on the watch is not read again). Reading its object every second,
/// it made five requests in 5 s.
#[actix::test]
async fn on_the_api_server_a_candidate_watches_its_object_instead_of_polling() {
    let env = Env::kube_on(Harness::coordinated()).await;
    within(env.watchdog(), "a watch, not a poll", async {
        let (d, faults) = env.faulty_replica("pod-a").await;
        let (e, c) = candidate(&d, "1.36.0").await;
        leads(&e, "pod-a leads").await;
        // Once the watch's first list has been read.
        let mut rx = c.watch_status();
        within(env.limit(), "watching", rx.wait_for(|s| s.watching))
            .await
            .unwrap();
        let (pings, calls) = (c.status().pings_answered, faults.calls(Call::Candidate));
        tokio::time::sleep(Duration::from_secs(5)).await;
        let pings = c.status().pings_answered - pings;
        let calls = faults.calls(Call::Candidate) - calls;
        assert!(
            calls <= 2 * pings,
            "{calls} LeaseCandidate calls in 5 s for {pings} pings answered"
        );
        assert_eq!(faults.calls(Call::CandidateWatch), 1, "one watch");
        d.shutdown().await.unwrap();
        assert!(c.status().withdrawn);
    })
    .await;
}

/// One election, one dsync and one client-go candidate (client-go's coordinated mode,
/// `Coordinated: true` with `leaderelection.NewCandidate`): the API server's controller picks
/// between them and the other side follows. dsync leads first (the only candidate); client-go
/// joins with an older emulation version, the controller prefers it, dsync hands over; when
/// client-go stops, the controller gives the lease back to dsync. Never two leaders.
#[actix::test]
async fn the_controller_picks_between_a_dsync_and_a_client_go_candidate() {
    use support::gopeer::{GoPeer, Line, PeerTiming};
    let env = Env::kube_on(Harness::coordinated()).await;
    within(env.watchdog(), "dsync and client-go", async {
        let log = TermLog::default();
        let d = env.replica("dsync-1").await;
        let (e, _c) = candidate(&d, "1.36.0").await;
        log.record("dsync-1", &e).unwrap();
        let first = leads(&e, "dsync-1 leads").await;
        let key = e.lease();

        let t = env.timing();
        let timing = PeerTiming::new(t.lease_duration(), t.renew_deadline(), t.retry_period());
        let admin = &Harness::coordinated().ready().admin;
        let mut go = GoPeer::client_go_coordinated(
            admin,
            &key.namespace,
            "go-1",
            &key.name,
            timing,
            "1.36.0",
            "1.35.0",
        )
        .await;
        go.expect(CONTROLLER, "go-1 elected", |l| {
            matches!(l, Line::Elected { .. })
        })
        .await;
        // client-go leads only once the controller assigned it the lease, which it does only
        // after dsync released it: dsync's term is over.
        assert!(
            !first.is_active(),
            "dsync's term ended before client-go's began"
        );
        assert!(!e.is_leader());
        let held = env.store().await.get(&key).await.unwrap();
        assert_eq!(held.record.holder(), Some("go-1"));
        assert_eq!(held.record.strategy.as_deref(), Some(STRATEGY));
        assert!(held.record.lease_transitions.unwrap_or(0) >= first.fencing_token());

        // client-go stops (and releases): the controller gives the lease back to dsync, once
        // client-go's stale candidate no longer answers its pings.
        assert!(!e.is_leader(), "no two leaders");
        go.send(&format!("stop {}", key.name));
        go.expect(CONTROLLER, "go-1 released", |l| {
            matches!(l, Line::Released { .. })
        })
        .await;
        let again = leads(&e, "dsync-1 leads again").await;
        assert!(again.fencing_token() > first.fencing_token());
        let go_terms = go.terms(&key.name, None);
        assert_eq!(go_terms.len(), 1, "{:?}", go.history);
        assert!(go_terms[0].1.is_some(), "client-go's term ended");
        d.shutdown().await.unwrap();
        settle().await;
        log.assert_safe();
        // Preferred away, as a rule; but the controller (its own clock, 2 s leases here)
        // reassigns a lease it deems expired directly, which dsync sees as being superseded
        // (seen once on a loaded machine).
        let reason = log.spans()[0].reason.clone();
        assert!(
            matches!(
                &reason,
                Some(DeposeReason::PreferredHolder { holder })
                    | Some(DeposeReason::Superseded { holder: Some(holder) }) if holder == "go-1"
            ),
            "{reason:?}"
        );
    })
    .await;
}

/// A candidate that cannot register says so: on the default server (gate off) the
/// `leasecandidates` resource is not served; the candidate reports the error in its status
/// (and logs it), and the election runs on as a plain one.
#[actix::test]
async fn a_candidate_that_cannot_register_reports_it() {
    let env = Env::kube_on(Harness::get()).await;
    within(env.watchdog(), "gate off", async {
        let d = env.replica("pod-a").await;
        let e = d.election("x").unwrap();
        let c = d.candidate(&e, Candidacy::new("1.36.0", "1.36.0")).unwrap();
        let mut rx = c.watch_status();
        let status = within(
            env.limit(),
            "the error is reported",
            rx.wait_for(|s| s.error.is_some()),
        )
        .await
        .unwrap()
        .clone();
        assert!(!status.registered, "{status:?}");
        assert!(
            status.error.as_deref().unwrap().contains("leasecandidate"),
            "{status:?}"
        );
        within(env.limit(), "elected as a plain lease", e.elected())
            .await
            .unwrap();
        assert!(!c.status().registered);
        d.shutdown().await.unwrap();
    })
    .await;
}

/// The Role shipped in `deploy/rbac.yaml` is enough for a candidate: a user bound only to it
/// registers, is elected by the controller, and withdraws.
#[actix::test]
async fn the_shipped_role_lets_a_candidate_register_and_withdraw() {
    let env = Env::kube_on(Harness::coordinated()).await;
    within(env.watchdog(), "shipped role", async {
        let ready = Harness::coordinated().ready();
        let namespace = election_key(&env.replica("probe").await, "x").namespace;
        let admin = support::apiserver::client(&ready.admin).await;
        let role = support::rbac::shipped_role("rbac.yaml");
        support::rbac::bind_to_norights(admin, &namespace, &role, "test-candidate").await;
        let store = support::backend::kube_store(&ready.norights).await;
        let d = Dsync::with_config(store, env.config("pod-a")).unwrap();
        let (e, c) = candidate(&d, "1.36.0").await;
        leads(&e, "pod-a leads").await;
        d.shutdown().await.unwrap();
        let status = c.status();
        assert!(
            status.withdrawn,
            "withdrawn when the shutdown returns: {status:?}"
        );
        assert_eq!(status.error, None, "deleted with the Role's rights");
        assert!(
            candidates_of(&env, &env.replica("probe").await)
                .await
                .is_empty()
        );
    })
    .await;
}
