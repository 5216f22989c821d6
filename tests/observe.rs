//! Observe-only followers (`Dsync::observe`, `Dsync::observe_lock`), each test written once and
//! run on both stores (`memory::` in paused time, `kube::` on the real kube-apiserver; see
//! `support::backend`). The observer's replica has a `FaultyStore` of its own, whose counters
//! show that it never writes and makes no request at steady state.
//!
//! Kube-only, at the end: a user bound only to the read-only Role of
//! `deploy/observer-rbac.yaml` observes an election, and is forbidden to campaign.
#![cfg(feature = "testing")]

mod support;

use std::time::Duration;

use actix::prelude::*;
use dsync::observe::Observation;
use dsync::resource::LeaseKind;
use dsync::testing::{Call, settle, within};
use dsync::{Dsync, Error, HolderChanged, Observer, Resource};
use support::backend::Env;
use tokio::sync::mpsc;
use tokio::time::Instant;

crate::on_both_stores!(
    an_observer_follows_an_election_through_stops_and_crashes_and_never_writes,
    an_observer_makes_no_requests_at_steady_state,
    watch_behind_a_quiet_watch_costs_at_most_one_list_per_lease_duration,
    watch_behind_observer_learns_holder_on_a_silent_watch_free_lease,
    watch_behind_observer_learns_holder_on_a_silent_watch_missing_lease,
    an_observer_catches_up_after_a_cut_watch_and_after_a_silent_one,
    an_observer_follows_a_lock_across_replicas,
    an_observer_judges_expiry_by_its_own_observation_and_does_not_poll,
    a_replica_observes_an_election_it_campaigns_for_and_observers_stop,
    invalid_names_are_rejected_before_any_side_effect,
);

/// Receives `HolderChanged` messages into a channel.
struct Collector(mpsc::UnboundedSender<HolderChanged>);

impl Actor for Collector {
    type Context = Context<Self>;
}

impl Handler<HolderChanged> for Collector {
    type Result = ();
    fn handle(&mut self, message: HolderChanged, _: &mut Context<Self>) {
        let _ = self.0.send(message);
    }
}

/// Subscribes a collector to `observer`; keep the address: subscriptions are weak.
fn subscribe(observer: &Observer) -> (Addr<Collector>, mpsc::UnboundedReceiver<HolderChanged>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let addr = Collector(tx).start();
    observer.subscribe(addr.clone().recipient()).unwrap();
    (addr, rx)
}

/// The next `HolderChanged` message's leader.
async fn next_leader(
    env: &Env,
    observer: &Observer,
    rx: &mut mpsc::UnboundedReceiver<HolderChanged>,
) -> Option<String> {
    let message = within(env.limit(), "a HolderChanged message", rx.recv())
        .await
        .expect("the collector is alive");
    assert_eq!(message.lease, observer.lease());
    message.holder
}

/// Waits until `observer` sees `holder` with fencing token `token`.
async fn sees(env: &Env, observer: &Observer, holder: &str, token: i32) -> Observation {
    let mut rx = observer.watch();
    within(
        env.limit(),
        &format!("the observer sees {holder} with token {token}"),
        rx.wait_for(|o| o.holder.as_deref() == Some(holder) && o.fencing_token == Some(token)),
    )
    .await
    .unwrap()
    .clone()
}

/// Waits until `observer` sees nobody holding the lease (which exists).
async fn sees_nobody(env: &Env, observer: &Observer) -> Observation {
    let mut rx = observer.watch();
    within(
        env.limit(),
        "the observer sees nobody",
        rx.wait_for(|o| o.exists && o.holder.is_none()),
    )
    .await
    .unwrap()
    .clone()
}

fn writes(store: &dsync::testing::FaultyStore) -> u64 {
    store.calls(Call::Create) + store.calls(Call::Replace)
}

async fn an_observer_follows_an_election_through_stops_and_crashes_and_never_writes(env: Env) {
    let (o, fo) = env.faulty_replica("observer").await;
    let obs = o.observe("x").unwrap();
    assert_eq!(obs.kind(), LeaseKind::Election);
    assert_eq!(obs.lease().name, "unscoped.election.x");
    let (_collector, mut changes) = subscribe(&obs);
    let first = within(env.limit(), "synced", obs.synced()).await.unwrap();
    assert!(!first.exists && first.holder.is_none() && first.fencing_token.is_none());
    assert_eq!(
        next_leader(&env, &obs, &mut changes).await,
        None,
        "nobody yet"
    );

    let (a, _fa) = env.faulty_replica("pod-a").await;
    let (b, fb) = env.faulty_replica("pod-b").await;
    let ea = a.election("x").unwrap();
    let t0 = within(env.limit(), "a leads", ea.elected()).await.unwrap();
    let eb = b.election("x").unwrap();
    sees(&env, &obs, "pod-a", t0.fencing_token()).await;
    assert_eq!(
        next_leader(&env, &obs, &mut changes).await.as_deref(),
        Some("pod-a")
    );

    // A graceful stop: the release, then b at once.
    ea.stop().await.unwrap();
    let t1 = within(env.limit(), "b takes over", eb.elected())
        .await
        .unwrap();
    sees(&env, &obs, "pod-b", t1.fencing_token()).await;
    assert_eq!(
        next_leader(&env, &obs, &mut changes).await,
        None,
        "released"
    );
    assert_eq!(
        next_leader(&env, &obs, &mut changes).await.as_deref(),
        Some("pod-b")
    );

    // b crashes (cut off from the store): a, campaigning again, takes over after the lease
    // duration; no release in between.
    let ea = a.election("x").unwrap();
    env.sees_leader(&ea, "pod-b").await;
    fb.partition();
    let t2 = within(env.limit(), "a takes over", ea.elected())
        .await
        .unwrap();
    let seen = sees(&env, &obs, "pod-a", t2.fencing_token()).await;
    assert!(!seen.expired);
    assert_eq!(
        next_leader(&env, &obs, &mut changes).await.as_deref(),
        Some("pod-a")
    );
    assert!(t0.fencing_token() < t1.fencing_token() && t1.fencing_token() < t2.fencing_token());
    settle().await;
    assert!(
        changes.try_recv().is_err(),
        "one message per change of leader"
    );

    assert_eq!(writes(&fo), 0, "an observer never writes");
    // The first read, and at most one more to confirm that the crashed holder looked expired
    // (it races with a's takeover, which the watch shows).
    assert!(fo.calls(Call::Get) <= 2, "{} reads", fo.calls(Call::Get));
    assert_eq!(fo.calls(Call::Watch), 1, "one shared watch");
    fb.heal();
    for d in [&a, &b, &o] {
        d.shutdown().await.unwrap();
    }
    assert_eq!(writes(&fo), 0);
}

async fn an_observer_makes_no_requests_at_steady_state(env: Env) {
    let a = env.replica("pod-a").await;
    let ea = a.election("x").unwrap();
    let term = within(env.limit(), "a leads", ea.elected()).await.unwrap();
    let (o, fo) = env.faulty_replica("observer").await;
    let obs = o.observe("x").unwrap();
    let (_collector, mut changes) = subscribe(&obs);
    // An election follower, on a replica of its own: its watch is as alive as the observer's.
    let (f, ff) = env.faulty_replica("pod-f").await;
    let ef = f.election("x").unwrap();
    env.sees_leader(&ef, "pod-a").await;
    sees(&env, &obs, "pod-a", term.fencing_token()).await;
    assert_eq!(
        next_leader(&env, &obs, &mut changes).await.as_deref(),
        Some("pod-a")
    );
    settle().await;
    let before = obs.observation();
    let rx = obs.watch();
    assert_eq!(
        (fo.calls(Call::Any), fo.calls(Call::Watch)),
        (1, 1),
        "one read and one watch to start"
    );
    let follower = ff.calls(Call::Any);

    // Four lease durations: the leader renews every retry period, which shows both watches
    // alive (rule `watch-behind`: no list to check them).
    tokio::time::sleep(env.leases(4)).await;
    assert_eq!(fo.calls(Call::Any), 1, "no request at steady state");
    assert_eq!(fo.calls(Call::Watch), 1, "the one watch stays open");
    assert_eq!(
        (ff.calls(Call::Any), ff.calls(Call::Watch)),
        (follower, 1),
        "the follower makes no request either"
    );
    assert!(!ef.is_leader());
    f.shutdown().await.unwrap();
    let now = obs.observation();
    assert_eq!(now.holder.as_deref(), Some("pod-a"));
    assert_eq!(now.fencing_token, Some(term.fencing_token()));
    assert!(!now.expired && now.last_error.is_none());
    assert!(
        now.changed_at > before.changed_at && now.resource_version != before.resource_version,
        "the renewals came on the watch: {before:?} then {now:?}"
    );
    assert!(
        !rx.has_changed().unwrap(),
        "renewals do not wake the observation's watchers"
    );
    assert!(changes.try_recv().is_err(), "no HolderChanged for renewals");
    assert_eq!(writes(&fo), 0);
    a.shutdown().await.unwrap();
    o.shutdown().await.unwrap();
}

/// Rule `watch-behind` (issue 24): a namespace whose watch brings nothing at all for a lease
/// duration (here: one free lease, nothing happening) costs the replica one list per lease
/// duration, which proves the watch has missed nothing; no read, no new watch.
async fn watch_behind_a_quiet_watch_costs_at_most_one_list_per_lease_duration(env: Env) {
    let a = env.replica("pod-a").await;
    let ea = a.election("x").unwrap();
    within(env.limit(), "a leads", ea.elected()).await.unwrap();
    ea.stop().await.unwrap();
    let (o, fo) = env.faulty_replica("observer").await;
    let obs = o.observe("x").unwrap();
    sees_nobody(&env, &obs).await;
    settle().await;
    let (gets, lists) = (fo.calls(Call::Get), fo.calls(Call::List));
    assert_eq!(
        (gets, lists, fo.calls(Call::Watch)),
        (1, 0, 1),
        "one read and one watch to start"
    );
    let rx = obs.watch();

    tokio::time::sleep(env.leases(4)).await;
    let probes = fo.calls(Call::List) - lists;
    assert!(
        (3..=4).contains(&probes),
        "one list per lease duration of silence: {probes} in four"
    );
    assert_eq!(fo.calls(Call::Get), gets, "no read");
    assert_eq!(fo.calls(Call::Watch), 1, "the live watch is kept");
    assert!(!rx.has_changed().unwrap(), "nothing to tell the observer");
    assert_eq!(writes(&fo), 0);
    a.shutdown().await.unwrap();
    o.shutdown().await.unwrap();
}

/// Rule `watch-behind` (issue 24, defect 4): the observer's shared watch goes silent (open,
/// delivering nothing: a hung connection) while `lease` is free or missing, and another
/// replica takes it. The replica's hub, having heard nothing for a lease duration, lists the
/// namespace: the observer learns the new holder within a lease duration of the takeover,
/// without a read of its own.
async fn a_silent_watch_hides_no_new_holder(env: Env, name: &str) {
    let (o, fo) = env.faulty_replica("observer").await;
    let obs = o.observe(name).unwrap();
    within(env.limit(), "synced", obs.synced()).await.unwrap();
    settle().await;
    fo.silence_watches();
    let gets = fo.calls(Call::Get);

    let b = env.replica("pod-b").await;
    let eb = b.election(name).unwrap();
    let term = within(env.limit(), "b leads", eb.elected()).await.unwrap();
    let taken = Instant::now();
    let seen = sees(&env, &obs, "pod-b", term.fencing_token()).await;
    env.assert_timer(
        taken.elapsed(),
        Duration::ZERO,
        env.lease(),
        "learned within a lease duration of the takeover",
    );
    assert!(!seen.expired);
    assert_eq!(fo.calls(Call::Get), gets, "told by the hub's list; no read");
    assert_eq!(writes(&fo), 0);
    fo.heal();
    b.shutdown().await.unwrap();
    o.shutdown().await.unwrap();
}

async fn watch_behind_observer_learns_holder_on_a_silent_watch_free_lease(env: Env) {
    // Held and released: the lease exists, and nobody holds it.
    let a = env.replica("pod-a").await;
    let ea = a.election("x").unwrap();
    within(env.limit(), "a leads", ea.elected()).await.unwrap();
    ea.stop().await.unwrap();
    a.shutdown().await.unwrap();
    a_silent_watch_hides_no_new_holder(env, "x").await;
}

async fn watch_behind_observer_learns_holder_on_a_silent_watch_missing_lease(env: Env) {
    a_silent_watch_hides_no_new_holder(env, "never-created").await;
}

async fn an_observer_catches_up_after_a_cut_watch_and_after_a_silent_one(env: Env) {
    let (o, fo) = env.faulty_replica("observer").await;
    let obs = o.observe("x").unwrap();
    within(env.limit(), "synced", obs.synced()).await.unwrap();
    let a = env.replica("pod-a").await;
    let b = env.replica("pod-b").await;
    let ea = a.election("x").unwrap();
    let t0 = within(env.limit(), "a leads", ea.elected()).await.unwrap();
    let eb = b.election("x").unwrap();
    env.sees_leader(&eb, "pod-a").await;
    sees(&env, &obs, "pod-a", t0.fencing_token()).await;
    settle().await;

    // 1. The watch is cut while the leader changes: the replica watches again after a retry
    //    period and catches up without a read of the observer's own: by one list of the
    //    namespace (on both stores: kube's watcher would replay what changed, but never says
    //    when it has caught up, which the lease actors need to know).
    let gets = fo.calls(Call::Get);
    let lists = fo.calls(Call::List);
    let watches = fo.calls(Call::Watch);
    fo.drop_watches();
    let cut = Instant::now();
    ea.stop().await.unwrap();
    let t1 = within(env.limit(), "b takes over", eb.elected())
        .await
        .unwrap();
    sees(&env, &obs, "pod-b", t1.fencing_token()).await;
    env.assert_timer(
        cut.elapsed(),
        Duration::ZERO,
        env.retry(),
        "caught up after a cut",
    );
    assert_eq!(fo.calls(Call::Get), gets, "no re-read");
    assert_eq!(fo.calls(Call::List), lists + 1, "one list");
    assert_eq!(fo.calls(Call::Watch), watches + 1, "one new watch");

    // 2. The watch goes silent (events are lost) while the leader changes, and is healed: the
    //    observer catches up with the next event, the new leader's renewal.
    let ea = a.election("x").unwrap();
    env.sees_leader(&ea, "pod-b").await;
    settle().await;
    let gets = fo.calls(Call::Get);
    fo.silence_watches();
    eb.stop().await.unwrap();
    let t2 = within(env.limit(), "a takes over", ea.elected())
        .await
        .unwrap();
    tokio::time::sleep(env.retry()).await;
    let stale = obs.observation();
    assert_eq!(
        (stale.holder.as_deref(), stale.fencing_token),
        (Some("pod-b"), Some(t1.fencing_token())),
        "a silent watch tells nothing"
    );
    fo.heal();
    let healed = Instant::now();
    sees(&env, &obs, "pod-a", t2.fencing_token()).await;
    env.assert_timer(
        healed.elapsed(),
        Duration::ZERO,
        env.retry(),
        "caught up after healing",
    );
    if env.is_memory() {
        assert_eq!(fo.calls(Call::Get), gets, "the watch told it; no read");
    } else {
        // On a loaded machine the silence can outlast the lease duration (2 s): then one read
        // confirms the expiry first.
        assert!(fo.calls(Call::Get) <= gets + 1, "at most one read");
    }

    // 3. Silent again, and never healed: the observer catches up when the holder it knows
    //    looks expired by its own observation (one read confirms, and finds the new leader),
    //    or, at the same instant, by the hub's check of a watch that brought nothing for a
    //    lease duration (one list: rule `watch-behind`), whichever comes first.
    let eb = b.election("x").unwrap();
    env.sees_leader(&eb, "pod-a").await;
    settle().await;
    let gets = fo.calls(Call::Get);
    let lists = fo.calls(Call::List);
    fo.silence_watches();
    let last_seen = obs.observation().changed_at.unwrap();
    ea.stop().await.unwrap();
    let t3 = within(env.limit(), "b takes over", eb.elected())
        .await
        .unwrap();
    let seen = sees(&env, &obs, "pod-b", t3.fencing_token()).await;
    let after = tokio::time::Instant::now().into_std() - last_seen;
    env.assert_timer(
        after,
        env.lease(),
        env.lease(),
        "caught up at the expiry read",
    );
    assert!(!seen.expired, "the read or the list showed a new holder");
    let (read, listed) = (fo.calls(Call::Get) - gets, fo.calls(Call::List) - lists);
    assert!(
        read <= 1 && listed <= 1 && read + listed >= 1,
        "one read or one list (or both, racing): {read} read(s), {listed} list(s)"
    );
    fo.heal();

    assert_eq!(writes(&fo), 0);
    for d in [&a, &b, &o] {
        d.shutdown().await.unwrap();
    }
}

async fn an_observer_follows_a_lock_across_replicas(env: Env) {
    let (o, fo) = env.faulty_replica("observer").await;
    let obs = o.observe_lock("job").unwrap();
    assert_eq!(obs.kind(), LeaseKind::Lock);
    assert_eq!(obs.lease().name, "unscoped.lock.job");
    let (_collector, mut changes) = subscribe(&obs);
    within(env.limit(), "synced", obs.synced()).await.unwrap();
    assert_eq!(next_leader(&env, &obs, &mut changes).await, None);

    let a = env.replica("pod-a").await;
    let b = env.replica("pod-b").await;
    let (la, lb) = (a.lock("job").unwrap(), b.lock("job").unwrap());
    let ta = la.try_lock().await.unwrap();
    sees(&env, &obs, "pod-a", ta.fencing_token()).await;
    assert_eq!(
        next_leader(&env, &obs, &mut changes).await.as_deref(),
        Some("pod-a")
    );
    let waiting = {
        let lb = lb.clone();
        actix::spawn(async move { lb.lock().await })
    };
    settle().await;
    la.unlock().await.unwrap();
    let tb = within(env.limit(), "b gets the lock", waiting)
        .await
        .unwrap()
        .unwrap();
    assert!(tb.fencing_token() > ta.fencing_token());
    sees(&env, &obs, "pod-b", tb.fencing_token()).await;
    assert_eq!(next_leader(&env, &obs, &mut changes).await, None);
    assert_eq!(
        next_leader(&env, &obs, &mut changes).await.as_deref(),
        Some("pod-b")
    );
    lb.unlock().await.unwrap();
    let free = sees_nobody(&env, &obs).await;
    assert_eq!(free.fencing_token, None, "no token while nobody holds it");
    assert_eq!(next_leader(&env, &obs, &mut changes).await, None);

    assert_eq!(writes(&fo), 0, "an observer never writes");
    for d in [&a, &b, &o] {
        d.shutdown().await.unwrap();
    }
}

async fn an_observer_judges_expiry_by_its_own_observation_and_does_not_poll(env: Env) {
    let (a, fa) = env.faulty_replica("pod-a").await;
    let ea = a.election("x").unwrap();
    let t0 = within(env.limit(), "a leads", ea.elected()).await.unwrap();
    let (o, fo) = env.faulty_replica("observer").await;
    let obs = o.observe("x").unwrap();
    sees(&env, &obs, "pod-a", t0.fencing_token()).await;
    settle().await;
    let gets = fo.calls(Call::Get);

    // a crashes: its lease stops changing. Nobody else campaigns.
    fa.partition();
    let last_seen = obs.observation().changed_at.unwrap();
    let mut rx = obs.watch();
    let expired = within(env.limit(), "expired", rx.wait_for(|o| o.expired))
        .await
        .unwrap()
        .clone();
    let after = tokio::time::Instant::now().into_std() - last_seen;
    env.assert_timer(
        after,
        env.lease(),
        env.lease(),
        "expired after the lease duration",
    );
    assert_eq!(
        (expired.holder.as_deref(), expired.fencing_token),
        (Some("pod-a"), Some(t0.fencing_token())),
        "the record still names a: an observer decides nothing"
    );
    assert_eq!(expired.lease_duration, Some(env.lease()));
    assert_eq!(fo.calls(Call::Get), gets + 1, "one read confirmed it");
    tokio::time::sleep(env.leases(3)).await;
    assert_eq!(
        fo.calls(Call::Get),
        gets + 1,
        "no polling while it stays expired"
    );
    assert!(obs.observation().expired);

    // a comes back and campaigns again: a new term, seen on the watch.
    fa.heal();
    let t1 = within(env.limit(), "a leads again", ea.elected())
        .await
        .unwrap();
    assert!(t1.fencing_token() > t0.fencing_token());
    let seen = sees(&env, &obs, "pod-a", t1.fencing_token()).await;
    assert!(!seen.expired);
    assert_eq!(writes(&fo), 0);
    a.shutdown().await.unwrap();
    o.shutdown().await.unwrap();
}

async fn a_replica_observes_an_election_it_campaigns_for_and_observers_stop(env: Env) {
    let a = env.replica("pod-a").await;
    let ea = a.election("x").unwrap();
    let obs = a.observe("x").unwrap();
    let term = within(env.limit(), "a leads", ea.elected()).await.unwrap();
    sees(&env, &obs, "pod-a", term.fencing_token()).await;
    assert_eq!(
        support::running(&a),
        (1, 0),
        "an observer is not a lease actor"
    );
    assert_eq!(a.watched_namespaces(), 1, "one watch, shared");
    let again = a.observe("x").unwrap();
    assert_eq!(
        again.holder().as_deref(),
        Some("pod-a"),
        "the same observer"
    );

    ea.stop().await.unwrap();
    sees_nobody(&env, &obs).await;

    obs.stop().await;
    assert!(
        obs.is_stopped() && again.is_stopped(),
        "one observer, stopped"
    );
    assert!(obs.observation().stopped);
    let (tx, _rx) = mpsc::unbounded_channel();
    let collector = Collector(tx).start();
    assert!(matches!(
        obs.subscribe(collector.recipient()),
        Err(Error::Stopped { .. })
    ));
    assert!(matches!(obs.synced().await, Err(Error::Stopped { .. })));
    obs.stop().await; // idempotent

    // Observing again starts a new observer; a shutdown stops it.
    let fresh = a.observe("x").unwrap();
    let synced = within(env.limit(), "synced", fresh.synced()).await.unwrap();
    assert!(synced.exists && synced.holder.is_none());
    a.shutdown().await.unwrap();
    assert!(fresh.is_stopped());
    assert!(matches!(a.observe("x"), Err(Error::Stopped { .. })));
}

async fn invalid_names_are_rejected_before_any_side_effect(env: Env) {
    let (o, fo) = env.faulty_replica("observer").await;
    let long = "a".repeat(300);
    for name in ["", "Bad_Name", "a/b", long.as_str()] {
        assert!(
            matches!(o.observe(name), Err(Error::BadResourceName { .. })),
            "{name:?}"
        );
        assert!(
            matches!(o.observe_lock(name), Err(Error::BadResourceName { .. })),
            "{name:?}"
        );
    }
    let bad_namespace = Resource::new("Bad Namespace", "s", "x");
    assert!(matches!(
        o.observe_for(bad_namespace, LeaseKind::Lock),
        Err(Error::BadResourceName { .. })
    ));
    settle().await;
    assert_eq!(fo.calls(Call::Any) + fo.calls(Call::Watch), 0);
    assert_eq!(o.watched_namespaces(), 0);
    // A valid explicit resource in the configured namespace.
    let obs = o
        .observe_for(Resource::new("", "s", "x"), LeaseKind::Lock)
        .unwrap();
    assert_eq!(obs.lease().namespace, env.namespace);
    assert_eq!(obs.lease().name, "s.lock.x");
    within(env.limit(), "synced", obs.synced()).await.unwrap();
    o.shutdown().await.unwrap();
}

/// Kube only: what RBAC lets a read-only observer do.
mod read_only {
    use super::*;
    use dsync::LeaseStore;
    use k8s_openapi::api::rbac::v1::Role;
    use support::apiserver::{Harness, client, namespace};
    use support::backend::kube_store;

    const LIMIT: Duration = Duration::from_secs(60);

    fn observer_role() -> Role {
        support::rbac::shipped_role("observer-rbac.yaml")
    }

    fn replica(store: impl LeaseStore, ns: &str, name: &str) -> Dsync {
        support::backend::kube_replica(store, ns, name)
    }

    #[actix::test]
    async fn a_user_with_the_read_only_role_observes_and_cannot_campaign() {
        let ready = Harness::get().ready();
        let ns = namespace().await;
        // Bind the shipped Role, unchanged, to a user that has no rights otherwise.
        let role = observer_role();
        let verbs = &role.rules.as_ref().unwrap()[0].verbs;
        assert_eq!(verbs, &["get", "list", "watch"], "read-only");
        let admin = client(&ready.admin).await;
        support::rbac::bind_to_norights(admin, &ns, &role, "test-observer").await;

        let reader = replica(kube_store(&ready.norights).await, &ns, "observer");
        let obs = reader.observe("x").unwrap();
        let first = within(LIMIT, "synced", obs.synced()).await.unwrap();
        assert!(!first.exists, "{first:?}");
        assert_eq!(first.last_error, None);

        let a = replica(kube_store(&ready.admin).await, &ns, "pod-a");
        let b = replica(kube_store(&ready.admin).await, &ns, "pod-b");
        let ea = a.election("x").unwrap();
        let t0 = within(LIMIT, "a leads", ea.elected()).await.unwrap();
        let eb = b.election("x").unwrap();
        let mut rx = obs.watch();
        within(
            LIMIT,
            "observer sees a",
            rx.wait_for(|o| o.holder.as_deref() == Some("pod-a")),
        )
        .await
        .unwrap();
        assert_eq!(obs.fencing_token(), Some(t0.fencing_token()));
        ea.stop().await.unwrap();
        let t1 = within(LIMIT, "b takes over", eb.elected()).await.unwrap();
        within(
            LIMIT,
            "observer sees b",
            rx.wait_for(|o| o.holder.as_deref() == Some("pod-b")),
        )
        .await
        .unwrap();
        assert_eq!(obs.fencing_token(), Some(t1.fencing_token()));
        assert_eq!(obs.observation().last_error, None);

        // Campaigning needs create and update: a typed Forbidden.
        let lock = reader.lock("y").unwrap();
        match lock.try_lock().await {
            Err(Error::Forbidden { verb, resource, .. }) => {
                assert_eq!(verb, "create");
                assert!(resource.contains(&ns), "{resource}");
            }
            other => panic!("expected Forbidden, got {other:?}"),
        }
        for d in [&a, &b, &reader] {
            d.shutdown().await.unwrap();
        }
    }
}
