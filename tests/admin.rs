//! Operator actions (`Dsync::stored_leases`, `Dsync::force_release`,
//! `Dsync::request_handoff`): an operator's replica, which takes part in no election, lists
//! the leases, ends a live holder's term, and asks a leader to hand its election over. Every
//! body runs on `MemoryStore` in paused time and on the real kube-apiserver.
#![cfg(feature = "testing")]

mod support;

use dsync::admin::ATTEMPTS;
use dsync::resource::LeaseKind;
use dsync::resource::LeaseName;
use dsync::store::LeaseKey;
use dsync::testing::{Call, within};
use dsync::{Error, StoreError};
use support::backend::Env;

crate::on_both_stores!(
    stored_leases_lists_the_namespace_sorted_and_parseable,
    force_release_of_a_held_lock_ends_the_holders_term_and_lets_another_in_with_a_higher_token,
    force_release_of_a_free_lease_writes_nothing,
    force_release_of_a_missing_lease_is_not_found,
    force_release_reads_again_on_conflicts_and_gives_up_after_bounded_attempts,
    request_handoff_moves_leadership_to_the_named_replica,
    request_handoff_to_the_leader_itself_writes_nothing,
    request_handoff_without_a_leader_is_no_leader,
    request_handoff_checks_the_name_before_any_call,
    operator_actions_after_shutdown_are_stopped,
);

async fn stored_leases_lists_the_namespace_sorted_and_parseable(env: Env) {
    let (a, op) = (env.replica("pod-a").await, env.replica("operator").await);
    assert_eq!(op.stored_leases().await.unwrap(), vec![], "nothing yet");
    let election = a.election("x").unwrap();
    within(env.limit(), "a leads", election.elected())
        .await
        .unwrap();
    let lock = a.lock("job").unwrap();
    let term = within(env.limit(), "a locks", lock.lock()).await.unwrap();
    let semaphore = a.semaphore("pool", 2).unwrap();
    let _permit = within(env.limit(), "a acquires", semaphore.acquire())
        .await
        .unwrap();
    let leases = op.stored_leases().await.unwrap();
    let names: Vec<&str> = leases.iter().map(|l| l.name.as_str()).collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted, "sorted by name");
    assert!(names.contains(&"unscoped.election.x"), "{names:?}");
    assert!(names.contains(&"unscoped.lock.job"), "{names:?}");
    let job = leases
        .iter()
        .find(|l| l.name == "unscoped.lock.job")
        .unwrap();
    assert_eq!(job.record.holder(), Some("pod-a"));
    assert_eq!(job.record.lease_transitions, Some(term.fencing_token()));
    let kinds: Vec<(LeaseKind, String, Option<usize>)> = leases
        .iter()
        .map(|l| {
            let parsed = LeaseName::parse(&l.name).unwrap();
            assert_eq!(parsed.scope, "unscoped");
            (parsed.kind, parsed.name, parsed.slot)
        })
        .collect();
    assert!(kinds.contains(&(LeaseKind::Election, "x".into(), None)));
    assert!(kinds.contains(&(LeaseKind::Lock, "job".into(), None)));
    assert!(
        kinds
            .iter()
            .any(|(kind, name, slot)| *kind == LeaseKind::Semaphore
                && name == "pool"
                && slot.is_some()),
        "{kinds:?}"
    );
    a.shutdown().await.unwrap();
    op.shutdown().await.unwrap();
}

async fn force_release_of_a_held_lock_ends_the_holders_term_and_lets_another_in_with_a_higher_token(
    env: Env,
) {
    let (a, b, op) = (
        env.replica("pod-a").await,
        env.replica("pod-b").await,
        env.replica("operator").await,
    );
    let la = a.lock("job").unwrap();
    let first = within(env.limit(), "a locks", la.lock()).await.unwrap();
    let lb = b.lock("job").unwrap();
    let waiting = actix::spawn(async move {
        let term = lb.lock().await;
        (lb, term)
    });
    // b follows pod-a before the operator steps in.
    let mut status = b.lock("job").unwrap().watch_status();
    within(
        env.limit(),
        "b sees pod-a",
        status.wait_for(|s| s.holder.as_deref() == Some("pod-a")),
    )
    .await
    .unwrap();
    let released = within(env.limit(), "force release", op.force_release(&la.lease()))
        .await
        .unwrap();
    assert_eq!(released.lease, la.lease());
    assert_eq!(released.previous_holder.as_deref(), Some("pod-a"));
    assert_eq!(released.fencing_token, first.fencing_token());
    within(env.limit(), "a's term ends", first.cancelled()).await;
    assert!(!first.is_active());
    let (lb, next) = within(env.limit(), "b locks", waiting).await.unwrap();
    let next = next.unwrap();
    assert!(
        next.fencing_token() > first.fencing_token(),
        "{} after {}",
        next.fencing_token(),
        first.fencing_token()
    );
    assert_eq!(env.holder(&la.lease()).await.as_deref(), Some("pod-b"));
    lb.unlock().await.unwrap();
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
    op.shutdown().await.unwrap();
}

async fn force_release_of_a_free_lease_writes_nothing(env: Env) {
    let a = env.replica("pod-a").await;
    let (op, faulty) = env.faulty_replica("operator").await;
    let lock = a.lock("job").unwrap();
    let term = within(env.limit(), "a locks", lock.lock()).await.unwrap();
    lock.unlock().await.unwrap();
    let before = env.peek(&lock.lease()).await.unwrap();
    assert_eq!(before.record.holder(), None);
    let released = op.force_release(&lock.lease()).await.unwrap();
    assert_eq!(released.previous_holder, None);
    assert_eq!(released.fencing_token, term.fencing_token());
    assert_eq!(faulty.calls(Call::Replace), 0, "nothing written");
    assert_eq!(env.peek(&lock.lease()).await.unwrap(), before);
    a.shutdown().await.unwrap();
    op.shutdown().await.unwrap();
}

async fn force_release_of_a_missing_lease_is_not_found(env: Env) {
    let op = env.replica("operator").await;
    let key = LeaseKey::new(&*env.namespace, "unscoped.lock.never");
    match op.force_release(&key).await {
        Err(Error::NotFound { lease }) => assert_eq!(lease, key.to_string()),
        other => panic!("{other:?}"),
    }
    op.shutdown().await.unwrap();
}

async fn force_release_reads_again_on_conflicts_and_gives_up_after_bounded_attempts(env: Env) {
    let a = env.replica("pod-a").await;
    let (op, faulty) = env.faulty_replica("operator").await;
    let job = a.lock("job").unwrap();
    let first = within(env.limit(), "a locks", job.lock()).await.unwrap();
    // Two writes meet a concurrent one: the third attempt, on a fresh read, lands.
    faulty.conflict_storm(2);
    let released = op.force_release(&job.lease()).await.unwrap();
    assert_eq!(released.previous_holder.as_deref(), Some("pod-a"));
    let (gets, replaces) = (faulty.calls(Call::Get), faulty.calls(Call::Replace));
    if env.is_memory() {
        assert_eq!((gets, replaces), (3, 3), "a read before every write");
    } else {
        // The holder renewing in between may add a real conflict.
        assert!(
            gets >= 3 && gets == replaces,
            "{gets} reads, {replaces} writes"
        );
    }
    within(env.limit(), "a's term ends", first.cancelled()).await;

    // Every attempt meets one: the call gives up and says so, having written nothing.
    let other = a.lock("other").unwrap();
    let held = within(env.limit(), "a locks", other.lock()).await.unwrap();
    faulty.conflict_storm(ATTEMPTS);
    let before = faulty.calls(Call::Replace);
    match op.force_release(&other.lease()).await {
        Err(Error::Store {
            operation,
            source: StoreError::Conflict { lease },
        }) => {
            assert_eq!(lease, other.lease().to_string());
            assert!(
                operation.contains(&format!("{ATTEMPTS} attempts")),
                "{operation}"
            );
        }
        result => panic!("{result:?}"),
    }
    assert_eq!(faulty.calls(Call::Replace) - before, ATTEMPTS as u64);
    assert!(held.is_active(), "a still holds it");
    assert_eq!(env.holder(&other.lease()).await.as_deref(), Some("pod-a"));
    a.shutdown().await.unwrap();
    op.shutdown().await.unwrap();
}

async fn request_handoff_moves_leadership_to_the_named_replica(env: Env) {
    let (a, b) = (env.replica("pod-a").await, env.replica("pod-b").await);
    let op = env.replica("operator").await;
    let ea = a.election("x").unwrap();
    let first = within(env.limit(), "a leads", ea.elected()).await.unwrap();
    let eb = b.election("x").unwrap();
    let requested = within(env.limit(), "request", op.request_handoff("x", "pod-b"))
        .await
        .unwrap();
    assert_eq!(requested.lease, ea.lease());
    assert_eq!(requested.holder, "pod-a");
    assert_eq!(requested.to, "pod-b");
    let next = within(env.limit(), "b elected", eb.elected())
        .await
        .unwrap();
    assert!(!first.is_active(), "a's term ended first");
    assert_eq!(next.fencing_token(), first.fencing_token() + 1);
    let record = env.peek(&ea.lease()).await.unwrap().record;
    assert_eq!(record.holder(), Some("pod-b"));
    assert_eq!(record.handoff_request, None, "carried out and cleared");
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
    op.shutdown().await.unwrap();
}

async fn request_handoff_to_the_leader_itself_writes_nothing(env: Env) {
    let a = env.replica("pod-a").await;
    let (op, faulty) = env.faulty_replica("operator").await;
    let ea = a.election("x").unwrap();
    let term = within(env.limit(), "a leads", ea.elected()).await.unwrap();
    let requested = op.request_handoff("x", "pod-a").await.unwrap();
    assert_eq!(
        (requested.holder.as_str(), requested.to.as_str()),
        ("pod-a", "pod-a")
    );
    assert_eq!(faulty.calls(Call::Replace), 0);
    assert!(term.is_active());
    a.shutdown().await.unwrap();
    op.shutdown().await.unwrap();
}

async fn request_handoff_without_a_leader_is_no_leader(env: Env) {
    let a = env.replica("pod-a").await;
    let (op, faulty) = env.faulty_replica("operator").await;
    let ea = a.election("x").unwrap();
    within(env.limit(), "a leads", ea.elected()).await.unwrap();
    ea.stop().await.unwrap();
    match op.request_handoff("x", "pod-b").await {
        Err(Error::NoLeader { lease }) => assert_eq!(lease, ea.lease().to_string()),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        op.request_handoff("never", "pod-b").await,
        Err(Error::NotFound { .. })
    ));
    assert_eq!(faulty.calls(Call::Replace), 0);
    a.shutdown().await.unwrap();
    op.shutdown().await.unwrap();
}

async fn request_handoff_checks_the_name_before_any_call(env: Env) {
    let (op, faulty) = env.faulty_replica("operator").await;
    for name in ["Bad_Name", "", "-x"] {
        let result = op.request_handoff(name, "pod-b").await;
        assert!(
            matches!(result, Err(Error::BadResourceName { .. })),
            "{name:?}: {result:?}"
        );
    }
    assert!(matches!(
        op.request_handoff("x", " pod-b").await,
        Err(Error::InvalidConfig { .. })
    ));
    assert_eq!(faulty.calls(Call::Any), 0, "no store call");
    op.shutdown().await.unwrap();
}

async fn operator_actions_after_shutdown_are_stopped(env: Env) {
    let op = env.replica("operator").await;
    op.shutdown().await.unwrap();
    let key = LeaseKey::new(&*env.namespace, "unscoped.lock.job");
    assert!(matches!(
        op.stored_leases().await,
        Err(Error::Stopped { .. })
    ));
    assert!(matches!(
        op.force_release(&key).await,
        Err(Error::Stopped { .. })
    ));
    assert!(matches!(
        op.request_handoff("x", "pod-b").await,
        Err(Error::Stopped { .. })
    ));
}

/// Rights on the real API server: each action names the verb it lacked.
mod rbac {
    use dsync::{Dsync, Error, LeaseStore};
    use k8s_openapi::api::rbac::v1::{PolicyRule, Role};
    use kube::api::ObjectMeta;

    use crate::support::apiserver::{Harness, client, namespace};
    use crate::support::backend::kube_store;
    use dsync::testing::within;
    use std::time::Duration;

    const LIMIT: Duration = Duration::from_secs(60);

    fn replica(store: impl LeaseStore, ns: &str, name: &str) -> Dsync {
        crate::support::backend::kube_replica(store, ns, name)
    }

    fn forbidden_verb<T: std::fmt::Debug>(result: dsync::Result<T>) -> String {
        match result {
            Err(Error::Forbidden { verb, .. }) => verb,
            other => panic!("expected Forbidden, got {other:?}"),
        }
    }

    #[actix::test]
    async fn each_action_is_forbidden_naming_the_verb_it_lacks() {
        let ready = Harness::get().ready();
        let ns = namespace().await;
        let a = replica(kube_store(&ready.admin).await, &ns, "pod-a");
        let lock = a.lock("job").unwrap();
        within(LIMIT, "a locks", lock.lock()).await.unwrap();
        let election = a.election("x").unwrap();
        within(LIMIT, "a leads", election.elected()).await.unwrap();

        let op = replica(kube_store(&ready.norights).await, &ns, "operator");
        assert_eq!(forbidden_verb(op.stored_leases().await), "list");
        assert_eq!(forbidden_verb(op.force_release(&lock.lease()).await), "get");
        assert_eq!(
            forbidden_verb(op.request_handoff("x", "pod-b").await),
            "get"
        );

        // Read-only: it lists and reads, and is refused the write.
        let role = Role {
            metadata: ObjectMeta {
                name: Some("lease-reader".into()),
                ..Default::default()
            },
            rules: Some(vec![PolicyRule {
                api_groups: Some(vec!["coordination.k8s.io".into()]),
                resources: Some(vec!["leases".into()]),
                verbs: vec!["get".into(), "list".into()],
                ..Default::default()
            }]),
        };
        let admin = client(&ready.admin).await;
        crate::support::rbac::bind_to_norights(admin, &ns, &role, "test-lease-reader").await;
        let listed = op.stored_leases().await.unwrap();
        assert_eq!(listed.len(), 2, "{listed:?}");
        assert_eq!(
            forbidden_verb(op.force_release(&lock.lease()).await),
            "update"
        );
        assert_eq!(
            forbidden_verb(op.request_handoff("x", "pod-b").await),
            "update"
        );
        assert!(lock.status().term.is_some(), "a still holds the lock");
        a.shutdown().await.unwrap();
        op.shutdown().await.unwrap();
    }
}
