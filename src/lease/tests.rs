//! Exhaustive tests of the pure lease core: one per rule and branch.

use std::time::{Duration, Instant, SystemTime};

use super::*;
use crate::config::Timing;
use crate::store::{LeaseRecord, StoredLease};

const ME: &str = "me";
const OTHER: &str = "other";

fn s(secs: u64) -> Duration {
    Duration::from_secs(secs)
}

struct World {
    t0: Instant,
    wall: SystemTime,
    timing: Timing,
}

impl World {
    fn new() -> Self {
        World {
            t0: Instant::now(),
            wall: SystemTime::UNIX_EPOCH + s(1_700_000_000),
            timing: Timing::default(), // 15 / 10 / 2
        }
    }

    fn at(&self, secs: f64) -> Instant {
        self.t0 + Duration::from_secs_f64(secs)
    }

    fn decide(
        &self,
        now: f64,
        observed: Option<&Observed>,
        claim: Option<&Claim>,
        want: bool,
        retry_after: Option<f64>,
    ) -> Decision {
        decide(&Input {
            now: self.at(now),
            wall_now: self.wall,
            identity: ME,
            timing: &self.timing,
            observed,
            claim,
            want,
            retry_after: retry_after.map(|t| self.at(t)),
        })
    }

    fn seen(&self, lease: Option<StoredLease>, at: f64) -> Observed {
        Observed {
            lease,
            changed_at: self.at(at),
        }
    }

    fn claim(&self, token: i32, renewed_at: f64) -> Claim {
        Claim {
            token,
            acquired_at: self.t0,
            renewed_at: self.at(renewed_at),
        }
    }
}

fn lease(holder: Option<&str>, duration: Option<i32>, transitions: Option<i32>) -> StoredLease {
    StoredLease {
        name: "s.election.x".into(),
        record: LeaseRecord {
            holder_identity: holder.map(str::to_owned),
            lease_duration_seconds: duration,
            lease_transitions: transitions,
            ..Default::default()
        },
        resource_version: "7".into(),
    }
}

// ---- observation ----------------------------------------------------------------------------

#[test]
fn observation_time_moves_only_when_the_version_changes() {
    let w = World::new();
    let first = Observed::update(None, Some(lease(Some(OTHER), Some(15), Some(0))), w.at(1.0));
    assert_eq!(first.changed_at, w.at(1.0));
    let same = Observed::update(
        Some(&first),
        Some(lease(Some(OTHER), Some(15), Some(0))),
        w.at(9.0),
    );
    assert_eq!(same.changed_at, w.at(1.0), "same version: not a change");
    let mut newer = lease(Some(OTHER), Some(15), Some(0));
    newer.resource_version = "8".into();
    let changed = Observed::update(Some(&same), Some(newer), w.at(10.0));
    assert_eq!(changed.changed_at, w.at(10.0));
    let gone = Observed::update(Some(&changed), None, w.at(11.0));
    assert_eq!(gone.changed_at, w.at(11.0), "deletion is a change");
    let still_gone = Observed::update(Some(&gone), None, w.at(12.0));
    assert_eq!(still_gone.changed_at, w.at(11.0));
}

#[test]
fn remote_renew_time_is_ignored() {
    // The holder's wall clock says it renewed an hour ago (or in the future); only our
    // observation counts.
    let w = World::new();
    for skew in [-3600i64, 3600] {
        let mut l = lease(Some(OTHER), Some(15), Some(3));
        l.record.renew_time = Some(if skew < 0 {
            w.wall - s(3600)
        } else {
            w.wall + s(3600)
        });
        let o = w.seen(Some(l), 0.0);
        assert_eq!(
            w.decide(1.0, Some(&o), None, true, None),
            Decision::Follow {
                holder: OTHER.into(),
                until: w.at(15.0)
            },
            "skew {skew}"
        );
    }
}

// ---- not holding ------------------------------------------------------------------------------

#[test]
fn nothing_observed_means_read_first() {
    let w = World::new();
    assert_eq!(w.decide(0.0, None, None, true, None), Decision::Read);
    assert_eq!(w.decide(0.0, None, None, false, None), Decision::Read);
}

#[test]
fn a_missing_lease_is_created_with_transitions_zero() {
    let w = World::new();
    let o = w.seen(None, 0.0);
    match w.decide(0.0, Some(&o), None, true, None) {
        Decision::Create { record } => {
            assert_eq!(record.holder(), Some(ME));
            assert_eq!(record.lease_duration_seconds, Some(15));
            assert_eq!(record.lease_transitions, Some(0));
            assert_eq!(record.acquire_time, Some(w.wall));
            assert_eq!(record.renew_time, Some(w.wall));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_free_lease_is_acquired_at_once_with_transitions_plus_one() {
    let w = World::new();
    for holder in [None, Some("")] {
        let mut l = lease(holder, Some(1), Some(4));
        l.record.strategy = Some("OldestEmulationVersion".into());
        let o = w.seen(Some(l), 0.0);
        match w.decide(0.0, Some(&o), None, true, None) {
            Decision::Acquire { record, version } => {
                assert_eq!(version, "7");
                assert_eq!(record.holder(), Some(ME));
                assert_eq!(record.lease_transitions, Some(5));
                assert_eq!(record.lease_duration_seconds, Some(15));
                assert_eq!(record.acquire_time, Some(w.wall));
                assert_eq!(
                    record.strategy.as_deref(),
                    Some("OldestEmulationVersion"),
                    "fields we do not manage are kept"
                );
            }
            other => panic!("holder {holder:?}: {other:?}"),
        }
    }
}

#[test]
fn missing_transitions_count_as_zero() {
    let w = World::new();
    let o = w.seen(Some(lease(None, None, None)), 0.0);
    match w.decide(0.0, Some(&o), None, true, None) {
        Decision::Acquire { record, .. } => assert_eq!(record.lease_transitions, Some(1)),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_held_lease_is_followed_until_its_duration_after_our_observation() {
    let w = World::new();
    let o = w.seen(Some(lease(Some(OTHER), Some(15), Some(2))), 3.0);
    let follow = Decision::Follow {
        holder: OTHER.into(),
        until: w.at(18.0),
    };
    assert_eq!(w.decide(3.0, Some(&o), None, true, None), follow);
    assert_eq!(w.decide(17.999, Some(&o), None, true, None), follow);
    match w.decide(18.0, Some(&o), None, true, None) {
        Decision::Acquire { record, version } => {
            assert_eq!(version, "7", "CAS on the version seen expiring");
            assert_eq!(record.lease_transitions, Some(3));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_holders_declared_duration_is_used_not_ours() {
    let w = World::new();
    // A Go seed peer declares 60 s.
    let o = w.seen(Some(lease(Some(OTHER), Some(60), Some(0))), 0.0);
    assert_eq!(
        w.decide(30.0, Some(&o), None, true, None),
        Decision::Follow {
            holder: OTHER.into(),
            until: w.at(60.0)
        }
    );
    // No declared duration: ours.
    let o = w.seen(Some(lease(Some(OTHER), None, Some(0))), 0.0);
    assert_eq!(
        w.decide(1.0, Some(&o), None, true, None),
        Decision::Follow {
            holder: OTHER.into(),
            until: w.at(15.0)
        }
    );
}

#[test]
fn a_lease_naming_us_without_a_claim_is_taken_as_a_new_term() {
    // This identity restarted: take it at once, with a new fencing token.
    let w = World::new();
    let o = w.seen(Some(lease(Some(ME), Some(15), Some(9))), 0.0);
    match w.decide(0.5, Some(&o), None, true, None) {
        Decision::Acquire { record, .. } => assert_eq!(record.lease_transitions, Some(10)),
        other => panic!("{other:?}"),
    }
}

#[test]
fn not_wanting_the_lease_is_idle_and_reports_the_holder() {
    let w = World::new();
    let o = w.seen(Some(lease(Some(OTHER), Some(15), Some(0))), 2.0);
    assert_eq!(
        w.decide(30.0, Some(&o), None, false, None),
        Decision::Idle {
            holder: Some(OTHER.into()),
            expires: Some(w.at(17.0))
        },
        "even expired: no write without intent"
    );
    let o = w.seen(None, 0.0);
    assert_eq!(
        w.decide(0.0, Some(&o), None, false, None),
        Decision::Idle {
            holder: None,
            expires: None
        }
    );
}

#[test]
fn after_a_failed_write_the_next_one_waits() {
    let w = World::new();
    let free = w.seen(Some(lease(None, Some(1), Some(0))), 0.0);
    assert_eq!(
        w.decide(1.0, Some(&free), None, true, Some(2.0)),
        Decision::Backoff { until: w.at(2.0) }
    );
    assert!(matches!(
        w.decide(2.0, Some(&free), None, true, Some(2.0)),
        Decision::Acquire { .. }
    ));
    let missing = w.seen(None, 0.0);
    assert_eq!(
        w.decide(1.0, Some(&missing), None, true, Some(2.0)),
        Decision::Backoff { until: w.at(2.0) }
    );
    // Held by another: wait for whichever is later, the backoff or the expiry.
    let held = w.seen(Some(lease(Some(OTHER), Some(15), Some(0))), 0.0);
    assert_eq!(
        w.decide(1.0, Some(&held), None, true, Some(2.0)),
        Decision::Follow {
            holder: OTHER.into(),
            until: w.at(15.0)
        }
    );
    assert_eq!(
        w.decide(14.0, Some(&held), None, true, Some(16.0)),
        Decision::Follow {
            holder: OTHER.into(),
            until: w.at(16.0)
        }
    );
}

#[test]
fn garbage_records_are_invalid_and_never_written() {
    let w = World::new();
    for (l, what) in [
        (lease(Some(OTHER), Some(0), Some(0)), "leaseDurationSeconds"),
        (
            lease(Some(OTHER), Some(-5), Some(0)),
            "leaseDurationSeconds",
        ),
        (lease(None, Some(15), Some(-1)), "leaseTransitions"),
    ] {
        let o = w.seen(Some(l), 0.0);
        for want in [true, false] {
            match w.decide(100.0, Some(&o), None, want, None) {
                Decision::Invalid { reason } => assert!(reason.contains(what), "{reason}"),
                other => panic!("{what}: {other:?}"),
            }
        }
    }
}

// ---- holding ----------------------------------------------------------------------------------

fn ours(transitions: i32) -> StoredLease {
    lease(Some(ME), Some(15), Some(transitions))
}

#[test]
fn a_holder_waits_a_retry_period_then_renews_on_the_cached_version() {
    let w = World::new();
    let o = w.seen(Some(ours(3)), 0.0);
    let c = w.claim(3, 0.0);
    assert_eq!(
        w.decide(0.5, Some(&o), Some(&c), true, None),
        Decision::Hold { until: w.at(2.0) }
    );
    match w.decide(2.0, Some(&o), Some(&c), true, None) {
        Decision::Renew { record, version } => {
            assert_eq!(version, "7");
            assert_eq!(record.holder(), Some(ME));
            assert_eq!(record.lease_transitions, Some(3), "renewal keeps the token");
            assert_eq!(record.renew_time, Some(w.wall));
            assert_eq!(record.lease_duration_seconds, Some(15));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn renewal_keeps_the_acquire_time() {
    let w = World::new();
    let mut l = ours(1);
    let acquired = w.wall - s(100);
    l.record.acquire_time = Some(acquired);
    let o = w.seen(Some(l), 0.0);
    match w.decide(2.0, Some(&o), Some(&w.claim(1, 0.0)), true, None) {
        Decision::Renew { record, .. } => assert_eq!(record.acquire_time, Some(acquired)),
        other => panic!("{other:?}"),
    }
}

#[test]
fn failed_renewals_are_retried_each_retry_period_until_the_deadline() {
    let w = World::new();
    let o = w.seen(Some(ours(0)), 0.0);
    let c = w.claim(0, 0.0);
    // Renewal at 2 s failed; next try at 4 s.
    assert_eq!(
        w.decide(2.1, Some(&o), Some(&c), true, Some(4.0)),
        Decision::Hold { until: w.at(4.0) }
    );
    assert!(matches!(
        w.decide(4.0, Some(&o), Some(&c), true, Some(4.0)),
        Decision::Renew { .. }
    ));
    // A retry scheduled past the deadline still wakes us at the deadline.
    assert_eq!(
        w.decide(8.5, Some(&o), Some(&c), true, Some(10.5)),
        Decision::Hold { until: w.at(10.0) }
    );
}

#[test]
fn a_holder_steps_down_at_the_renew_deadline() {
    let w = World::new();
    let o = w.seen(Some(ours(0)), 0.0);
    let c = w.claim(0, 1.0);
    assert!(matches!(
        w.decide(10.999, Some(&o), Some(&c), true, None),
        Decision::Renew { .. }
    ));
    for want in [true, false] {
        assert_eq!(
            w.decide(11.0, Some(&o), Some(&c), want, None),
            Decision::StepDown(StepDownReason::RenewDeadlineExceeded),
            "want {want}: too late even to release"
        );
    }
}

#[test]
fn the_deadline_is_always_before_anyone_else_may_take_over() {
    // For every timing the validation accepts, a holder whose last successful write started at
    // `w` steps down at `w + renew_deadline`, while a follower that saw that write at `o >= w`
    // may acquire only at `o + lease_duration`.
    for (lease, renew, retry) in [(15, 10_000, 2_000), (2, 1_900, 1_500), (60, 15_000, 5_000)] {
        let timing = Timing::new(
            s(lease),
            Duration::from_millis(renew),
            Duration::from_millis(retry),
        )
        .unwrap();
        let t0 = Instant::now();
        let holder_stops = t0 + timing.renew_deadline();
        let follower_may_acquire = t0 + timing.lease_duration();
        assert!(holder_stops < follower_may_acquire);
    }
}

#[test]
fn a_holder_that_sees_another_holder_steps_down() {
    let w = World::new();
    let o = w.seen(Some(lease(Some(OTHER), Some(15), Some(4))), 1.0);
    assert_eq!(
        w.decide(1.0, Some(&o), Some(&w.claim(3, 0.0)), true, None),
        Decision::StepDown(StepDownReason::Superseded {
            holder: Some(OTHER.into())
        })
    );
    let o = w.seen(Some(lease(None, Some(1), Some(3))), 1.0);
    assert_eq!(
        w.decide(1.0, Some(&o), Some(&w.claim(3, 0.0)), true, None),
        Decision::StepDown(StepDownReason::Superseded { holder: None }),
        "released by someone else (kubectl)"
    );
}

#[test]
fn a_holder_that_sees_a_newer_term_of_its_own_identity_steps_down() {
    let w = World::new();
    let o = w.seen(Some(ours(4)), 1.0);
    assert_eq!(
        w.decide(1.0, Some(&o), Some(&w.claim(3, 0.0)), true, None),
        Decision::StepDown(StepDownReason::Superseded {
            holder: Some(ME.into())
        })
    );
}

#[test]
fn a_new_version_of_our_own_term_is_still_ours() {
    // Our renewal's response was lost, but it was applied: same identity, same token.
    let w = World::new();
    let mut l = ours(3);
    l.resource_version = "99".into();
    let o = w.seen(Some(l), 1.0);
    match w.decide(2.0, Some(&o), Some(&w.claim(3, 0.0)), true, None) {
        Decision::Renew { version, .. } => assert_eq!(version, "99"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_deleted_lease_ends_the_term() {
    let w = World::new();
    let o = w.seen(None, 1.0);
    assert_eq!(
        w.decide(1.0, Some(&o), Some(&w.claim(0, 0.0)), true, None),
        Decision::StepDown(StepDownReason::LeaseDeleted)
    );
}

#[test]
fn a_holder_that_no_longer_wants_the_lease_releases_it() {
    let w = World::new();
    let mut l = ours(6);
    l.record.preferred_holder = Some("p".into());
    let o = w.seen(Some(l), 0.0);
    match w.decide(0.5, Some(&o), Some(&w.claim(6, 0.0)), false, None) {
        Decision::Release { record, version } => {
            assert_eq!(version, "7");
            assert_eq!(record.holder(), None);
            assert_eq!(record.holder_identity, None);
            assert_eq!(
                record.lease_transitions,
                Some(6),
                "kept: the next token is higher"
            );
            assert_eq!(record.lease_duration_seconds, Some(1));
            assert_eq!(record.preferred_holder.as_deref(), Some("p"));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn release_is_not_delayed_by_a_backoff() {
    let w = World::new();
    let o = w.seen(Some(ours(0)), 0.0);
    assert!(matches!(
        w.decide(0.5, Some(&o), Some(&w.claim(0, 0.0)), false, Some(5.0)),
        Decision::Release { .. }
    ));
}

#[test]
fn the_token_of_a_record_is_its_transitions() {
    assert_eq!(token_of(&ours(12).record), 12);
    assert_eq!(token_of(&lease(None, None, None).record), 0);
}

#[test]
fn successive_acquisitions_have_strictly_increasing_tokens() {
    // Create, then alternate release and acquire between two identities.
    let w = World::new();
    let timing = Timing::default();
    let mut record = match w.decide(0.0, Some(&w.seen(None, 0.0)), None, true, None) {
        Decision::Create { record } => record,
        other => panic!("{other:?}"),
    };
    let mut tokens = vec![token_of(&record)];
    for round in 0..6 {
        let me = if round % 2 == 0 { ME } else { OTHER };
        let stored = StoredLease {
            name: "x".into(),
            record: record.clone(),
            resource_version: round.to_string(),
        };
        let o = w.seen(Some(stored.clone()), 0.0);
        let claim = Claim {
            token: token_of(&record),
            acquired_at: w.t0,
            renewed_at: w.t0,
        };
        let release = decide(&Input {
            now: w.t0,
            wall_now: w.wall,
            identity: me,
            timing: &timing,
            observed: Some(&o),
            claim: Some(&claim),
            want: false,
            retry_after: None,
        });
        let Decision::Release { record: freed, .. } = release else {
            panic!("{release:?}")
        };
        let next = if me == ME { OTHER } else { ME };
        let o = w.seen(
            Some(StoredLease {
                record: freed,
                ..stored
            }),
            0.0,
        );
        let acquire = decide(&Input {
            now: w.t0,
            wall_now: w.wall,
            identity: next,
            timing: &timing,
            observed: Some(&o),
            claim: None,
            want: true,
            retry_after: None,
        });
        let Decision::Acquire { record: taken, .. } = acquire else {
            panic!("{acquire:?}")
        };
        assert_eq!(taken.holder(), Some(next));
        tokens.push(token_of(&taken));
        record = taken;
    }
    assert!(
        tokens.windows(2).all(|p| p[0] < p[1]),
        "tokens {tokens:?} strictly increase"
    );
}

#[test]
fn watched_versions_are_ordered_numerically() {
    assert!(is_newer("10", Some("9")));
    assert!(
        !is_newer("9", Some("10")),
        "a late event must not roll us back"
    );
    assert!(!is_newer("10", Some("10")));
    assert!(is_newer("1", None));
    assert!(
        is_newer("abc", Some("abd")),
        "opaque versions: different counts as newer"
    );
    assert!(!is_newer("abc", Some("abc")));
}
