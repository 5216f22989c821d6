//! The bad-input matrix: every kind of invalid input gets a typed error, never a panic, and
//! causes no side effect (no actor started, nothing read or written). Run on both stores
//! (`memory::` and `kube::`, see `support::backend`).
//!
//! Covered elsewhere against the real apiserver: RBAC denied (`tests/kube.rs`,
//! `a_user_without_rights_gets_forbidden`), a missing namespace and names the server rejects
//! (`names_and_namespaces_the_server_rejects_give_clear_errors`).
#![cfg(feature = "testing")]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use dsync::resource::NameError;
use dsync::store::{LeaseRecord, LeaseStore};
use dsync::testing::{Call, FaultyStore, settle, within};
use dsync::timing::TimingError;
use dsync::{Config, Dsync, Error, MemoryStore, Resource, StoreError, Timing};
use support::backend::Env;

crate::on_both_stores!(
    invalid_names_get_a_typed_error_and_touch_nothing,
    an_invalid_namespace_gets_a_typed_error_and_touches_nothing,
    a_garbage_edit_is_refused_by_the_store_and_disturbs_nothing,
    a_lease_with_no_spec_is_a_free_lease,
);

/// Uppercase, `_`, leading or trailing `.` or `-`, empty, longer than 253 characters.
const BAD_NAMES: &[&str] = &["Leader", "a_b", ".x", "x.", "-x", "x-", "", "a..b"];

fn expect_bad_name(what: &str, got: dsync::Result<impl std::fmt::Debug>) -> NameError {
    match got {
        Err(Error::BadResourceName { source, .. }) => source,
        other => panic!("{what}: expected BadResourceName, got {other:?}"),
    }
}

async fn invalid_names_get_a_typed_error_and_touch_nothing(env: Env) {
    let (d, store) = env.faulty_replica("pod-a").await;
    let long = "x".repeat(254);
    for name in BAD_NAMES.iter().copied().chain([long.as_str()]) {
        let e = expect_bad_name(name, d.election(name));
        let l = expect_bad_name(name, d.lock(name));
        assert_eq!(std::mem::discriminant(&e), std::mem::discriminant(&l));
        if name.len() > 253 {
            assert!(matches!(e, NameError::TooLong { .. }), "{name}: {e:?}");
        } else {
            assert!(
                matches!(
                    e,
                    NameError::InvalidName { .. } | NameError::EmptyName { .. }
                ),
                "{name:?}: {e:?}"
            );
        }
    }
    // A scope is checked the same way, inside the lease name.
    let e = expect_bad_name("scope", d.election_for(Resource::new("", "Bad_Scope", "x")));
    assert!(matches!(e, NameError::InvalidName { .. }), "{e:?}");
    assert_eq!(support::running(&d), (0, 0), "no actor was started");
    settle().await;
    for call in [Call::Get, Call::Create, Call::Replace] {
        assert_eq!(
            store.calls(call),
            0,
            "nothing was read or written ({call:?})"
        );
    }
    d.shutdown().await.unwrap();
}

async fn an_invalid_namespace_gets_a_typed_error_and_touches_nothing(env: Env) {
    // In the configuration: refused when the replica is built.
    for ns in ["Bad_NS", "-ns", "ns-", "a.b", &"n".repeat(64)] {
        let err = Dsync::with_config(MemoryStore::new(), env.config("pod-a").with_namespace(ns))
            .map(|_| ())
            .unwrap_err();
        assert!(
            matches!(&err, Error::InvalidConfig { key, .. } if *key == "KUBE_NAMESPACE"),
            "{ns:?}: {err:?}"
        );
    }
    // Per election or lock.
    let (d, store) = env.faulty_replica("pod-a").await;
    for ns in ["Bad_NS", "-ns", &"n".repeat(64)] {
        let e = expect_bad_name(ns, d.election_for(Resource::new(ns, "s", "x")));
        assert!(
            matches!(e, NameError::InvalidNamespace { .. }),
            "{ns}: {e:?}"
        );
        let l = expect_bad_name(ns, d.lock_for(Resource::new(ns, "s", "x")));
        assert!(
            matches!(l, NameError::InvalidNamespace { .. }),
            "{ns}: {l:?}"
        );
    }
    assert_eq!(support::running(&d), (0, 0));
    settle().await;
    assert_eq!(store.calls(Call::Get) + store.calls(Call::Create), 0);
    d.shutdown().await.unwrap();
}

#[actix::test]
async fn an_empty_or_blank_identity_is_rejected() {
    for identity in ["", " ", "\t"] {
        let err = Dsync::new(MemoryStore::new(), identity)
            .map(|_| ())
            .unwrap_err();
        assert!(
            matches!(err, Error::InvalidConfig { .. }),
            "{identity:?}: {err:?}"
        );
        let err = Dsync::with_config(
            MemoryStore::new(),
            Config::default().with_identity(identity),
        )
        .map(|_| ())
        .unwrap_err();
        assert!(
            matches!(err, Error::InvalidConfig { .. }),
            "{identity:?}: {err:?}"
        );
    }
}

#[test]
fn zero_timings_are_rejected() {
    let s = Duration::from_secs;
    for (t, field) in [
        (Timing::new(s(0), s(10), s(2)), "lease_duration"),
        (Timing::new(s(15), s(0), s(2)), "renew_deadline"),
        (Timing::new(s(15), s(10), s(0)), "retry_period"),
        (Timing::from_secs_f64(0.0, 10.0, 2.0), "lease_duration"),
    ] {
        assert_eq!(t, Err(TimingError::Zero { field }));
    }
}

#[test]
fn negative_and_non_finite_timings_are_rejected() {
    for ((lease, renew, retry), field) in [
        ((-15.0, 10.0, 2.0), "lease_duration"),
        ((15.0, -10.0, 2.0), "renew_deadline"),
        ((15.0, 10.0, -2.0), "retry_period"),
        ((f64::NAN, 10.0, 2.0), "lease_duration"),
        ((15.0, f64::INFINITY, 2.0), "renew_deadline"),
        ((15.0, 10.0, 1e30), "retry_period"),
    ] {
        match Timing::from_secs_f64(lease, renew, retry) {
            Err(TimingError::BadSeconds { field: f, .. }) => assert_eq!(f, field),
            other => panic!("({lease}, {renew}, {retry}): {other:?}"),
        }
    }
}

#[test]
fn inconsistent_timings_are_rejected() {
    let s = Duration::from_secs;
    let ms = Duration::from_millis;
    assert!(matches!(
        Timing::new(s(10), s(10), s(2)),
        Err(TimingError::LeaseNotAboveRenewDeadline { .. })
    ));
    assert!(matches!(
        Timing::new(s(5), s(10), s(2)),
        Err(TimingError::LeaseNotAboveRenewDeadline { .. })
    ));
    // renew must exceed 1.2 × retry: 12 s is exactly 1.2 × 10 s.
    assert!(matches!(
        Timing::new(s(15), s(12), s(10)),
        Err(TimingError::RenewDeadlineTooShort { .. })
    ));
    assert!(matches!(
        Timing::new(s(15), s(2), s(10)),
        Err(TimingError::RenewDeadlineTooShort { .. })
    ));
    // leaseDurationSeconds is whole seconds.
    assert!(matches!(
        Timing::new(ms(15_500), s(10), s(2)),
        Err(TimingError::LeaseNotWholeSeconds { .. })
    ));
    // The boundary that is fine.
    assert!(Timing::new(s(15), ms(12_001), s(10)).is_ok());
}

/// A lease edited by hand into something no peer writes (a negative duration, negative
/// transitions). The API server refuses such an edit, typed, and so does `MemoryStore`; the
/// leader is undisturbed.
async fn a_garbage_edit_is_refused_by_the_store_and_disturbs_nothing(env: Env) {
    let d = env.replica("pod-a").await;
    let e = d.election("x").unwrap();
    let term = within(env.limit(), "elected", e.elected()).await.unwrap();
    let before = env.peek(&e.lease()).await.unwrap();
    let store = env.store().await;
    for record in garbage() {
        let err = store
            .replace(&e.lease(), record, &before.resource_version)
            .await
            .unwrap_err();
        assert!(
            matches!(&err, StoreError::Invalid { message, .. } if message.contains("spec.")),
            "the store refuses a garbage lease: {err:?}"
        );
    }
    tokio::time::sleep(env.leases(2)).await;
    assert!(term.is_active(), "the leader is undisturbed");
    d.shutdown().await.unwrap();
}

fn garbage() -> [LeaseRecord; 2] {
    [
        LeaseRecord {
            holder_identity: Some("someone".into()),
            lease_duration_seconds: Some(-5),
            ..Default::default()
        },
        LeaseRecord {
            holder_identity: Some("someone".into()),
            lease_duration_seconds: Some(15),
            lease_transitions: Some(-1),
            ..Default::default()
        },
    ]
}

/// If garbage does reach dsync anyway: elections report it typed (`current_leader` is
/// `InvalidState`, the status says why) and keep their hands off until it is repaired; lock
/// calls fail typed. Memory store in paused time.
#[actix::test]
async fn garbage_that_reaches_dsync_is_reported_typed_and_left_alone() {
    tokio::time::pause();
    let memory = MemoryStore::new();
    let which = Arc::new(AtomicUsize::new(0));
    // A store that does not validate what it serves (a third-party `LeaseStore`, or an edit
    // made behind the API server's back): records naming the holder "garbage" are served
    // with the spec of `garbage()[which]`.
    let store = FaultyStore::new(memory.clone());
    let w = which.clone();
    store.tamper_reads(move |mut lease| {
        if lease.record.holder() == Some("garbage") {
            let mut record = garbage()[w.load(Ordering::SeqCst)].clone();
            record.holder_identity = Some("garbage".into());
            lease.record = record;
        }
        lease
    });
    let t = Timing::default();
    let d = Dsync::with_config(store, dsync::testing::paused_config("pod-a")).unwrap();
    let limit = t.lease_duration() * 4;
    for (i, _) in garbage().iter().enumerate() {
        which.store(i, Ordering::SeqCst);
        let (e, l) = (d.election("x").unwrap(), d.lock("y").unwrap());
        for key in [e.lease(), l.lease()] {
            memory
                .put(
                    &key,
                    LeaseRecord {
                        holder_identity: Some("garbage".into()),
                        lease_duration_seconds: Some(15),
                        ..Default::default()
                    },
                )
                .unwrap();
        }
        let mut status = e.watch_status();
        let reason = within(
            limit,
            "reported invalid",
            status.wait_for(|s| s.invalid.is_some()),
        )
        .await
        .unwrap()
        .invalid
        .clone()
        .unwrap();
        assert!(reason.contains("spec."), "{reason}");
        match e.current_leader() {
            Err(Error::InvalidState { lease, reason: r }) => {
                assert_eq!(lease, e.lease().to_string());
                assert_eq!(r, reason);
            }
            other => panic!("expected InvalidState, got {other:?}"),
        }
        let err = l.try_lock().await.unwrap_err();
        assert!(matches!(err, Error::InvalidState { .. }), "{err:?}");
        // Left alone for many lease durations: no write, no leader.
        let before = memory.peek(&e.lease()).unwrap();
        tokio::time::sleep(t.lease_duration() * 4).await;
        let after = memory.peek(&e.lease()).unwrap();
        assert_eq!(
            before.resource_version, after.resource_version,
            "not touched"
        );
        assert!(!e.is_leader());
        // Repaired by hand: the election proceeds at once.
        memory.put(&e.lease(), LeaseRecord::default()).unwrap();
        within(limit, "elected after the repair", e.elected())
            .await
            .unwrap();
        assert_eq!(e.status().invalid, None);
        assert!(e.current_leader().is_ok());
        e.stop().await.unwrap();
    }
    d.shutdown().await.unwrap();
}

/// A Lease with no spec at all (what `kubectl create` of a bare Lease gives, or an edit that
/// removed it) names no holder: it is a free lease, taken over at once, not an error.
async fn a_lease_with_no_spec_is_a_free_lease(env: Env) {
    let d = env.replica("pod-a").await;
    let e = d.election("x").unwrap();
    within(env.limit(), "elected", e.elected()).await.unwrap();
    e.stop().await.unwrap();
    env.put(&e.lease(), LeaseRecord::default()).await;
    let e = d.election("x").unwrap();
    let term = within(env.limit(), "elected", e.elected()).await.unwrap();
    assert!(term.is_active());
    assert_eq!(e.status().invalid, None);
    d.shutdown().await.unwrap();
}
