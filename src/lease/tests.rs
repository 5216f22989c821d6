//! Tests of the pure lease machine: one per rule and branch, then whole scenarios played
//! against a small in-test compare-and-swap store.

use std::time::{Duration, Instant, SystemTime};

use super::*;
use crate::record::is_newer;
use crate::store::{LeaseRecord, StoreError, StoredLease, WatchEvent};
use crate::timing::Timing;

const ME: &str = "me";
const OTHER: &str = "other";

fn s(secs: u64) -> Duration {
    Duration::from_secs(secs)
}

fn lease(holder: Option<&str>, duration: Option<i32>, transitions: Option<i32>) -> StoredLease {
    versioned(holder, duration, transitions, "7")
}

fn versioned(
    holder: Option<&str>,
    duration: Option<i32>,
    transitions: Option<i32>,
    version: &str,
) -> StoredLease {
    StoredLease {
        name: "s.election.x".into(),
        record: LeaseRecord {
            holder_identity: holder.map(str::to_owned),
            lease_duration_seconds: duration,
            lease_transitions: transitions,
            ..Default::default()
        },
        resource_version: version.into(),
        uid: None,
    }
}

fn unavailable() -> StoreError {
    StoreError::Unavailable {
        message: "503".into(),
        source: None,
    }
}

fn forbidden() -> StoreError {
    StoreError::Forbidden {
        verb: "update".into(),
        resource: "leases".into(),
        message: "denied".into(),
    }
}

fn conflict() -> StoreError {
    StoreError::Conflict {
        lease: "ns/x".into(),
    }
}

/// One machine, driven by hand, in seconds after `t0`.
struct Sim {
    m: Machine,
    t0: Instant,
    wall: SystemTime,
    call: Option<Call>,
}

impl Sim {
    fn new() -> Self {
        Sim::with_identity(ME)
    }

    fn with_identity(identity: &str) -> Self {
        Sim {
            m: Machine::new(identity, Timing::default()), // 15 / 10 / 2
            t0: Instant::now(),
            wall: SystemTime::UNIX_EPOCH + s(1_700_000_000),
            call: None,
        }
    }

    fn at(&self, secs: f64) -> Instant {
        self.t0 + Duration::from_secs_f64(secs)
    }

    fn next(&mut self, t: f64, want: Want) -> Step {
        let step = self.m.next(self.at(t), self.wall, want);
        if let Step::Call(call) = &step {
            self.call = Some(call.clone());
        }
        step
    }

    /// Expects a call at `t`.
    fn call(&mut self, t: f64, want: Want) -> Call {
        match self.next(t, want) {
            Step::Call(call) => call,
            other => panic!("expected a call at {t}, got {other:?}"),
        }
    }

    /// Expects to wait at `t`.
    fn wait(&mut self, t: f64, want: Want) -> Waiting {
        match self.next(t, want) {
            Step::Wait(w) => w,
            other => panic!("expected to wait at {t}, got {other:?}"),
        }
    }

    fn answer(&mut self, t: f64, result: Result<StoredLease, StoreError>) -> Outcome {
        let seq = self.call.take().expect("a call in flight").seq;
        self.m
            .on_result(self.at(t), seq, result)
            .expect("the call in flight")
    }

    /// Reads at `t` (expects the read) and answers with `lease` (`None`: not found).
    fn read(&mut self, t: f64, want: Want, lease: Option<StoredLease>) {
        let call = self.call(t, want);
        assert_eq!(call.op, Op::Read, "{call:?}");
        let result = lease.ok_or(StoreError::NotFound {
            lease: "ns/x".into(),
        });
        assert!(matches!(self.answer(t, result), Outcome::Read));
    }

    /// Acquires a free lease at `t` (read, then acquire), ending up holding `token`.
    fn hold(&mut self, t: f64, token: i32) {
        self.read(t, Want::Acquire, Some(lease(None, None, Some(token - 1))));
        let call = self.call(t, Want::Acquire);
        assert_eq!(call.op, Op::Acquire);
        let stored = written(&call, "8");
        assert!(matches!(
            self.answer(t, Ok(stored)),
            Outcome::Acquired { token: got } if got == token
        ));
    }
}

/// What a call writes, as the store would keep it at `version`.
fn written(call: &Call, version: &str) -> StoredLease {
    let record = match &call.request {
        Request::Create(record) | Request::Replace { record, .. } => record.clone(),
        Request::Get => panic!("a read writes nothing"),
    };
    StoredLease {
        name: "s.election.x".into(),
        record,
        resource_version: version.into(),
        uid: None,
    }
}

fn record_of(call: &Call) -> &LeaseRecord {
    match &call.request {
        Request::Create(record) | Request::Replace { record, .. } => record,
        Request::Get => panic!("a read writes nothing"),
    }
}

fn based_on(call: &Call) -> &str {
    match &call.request {
        Request::Replace { version, .. } => version,
        other => panic!("not a replace: {other:?}"),
    }
}

// ---- observation ------------------------------------------------------------------------

#[test]
fn local_expiry_observation_time_moves_only_when_the_version_changes() {
    let w = Sim::new();
    let first = Observed::update(None, Some(lease(Some(OTHER), Some(15), Some(0))), w.at(1.0));
    assert_eq!(first.changed_at, w.at(1.0));
    let same = Observed::update(
        Some(&first),
        Some(lease(Some(OTHER), Some(15), Some(0))),
        w.at(9.0),
    );
    assert_eq!(same.changed_at, w.at(1.0), "same version: not a change");
    let changed = Observed::update(
        Some(&same),
        Some(versioned(Some(OTHER), Some(15), Some(0), "8")),
        w.at(10.0),
    );
    assert_eq!(changed.changed_at, w.at(10.0));
    let gone = Observed::update(Some(&changed), None, w.at(11.0));
    assert_eq!(gone.changed_at, w.at(11.0), "deletion is a change");
    let still_gone = Observed::update(Some(&gone), None, w.at(12.0));
    assert_eq!(still_gone.changed_at, w.at(11.0));
}

#[test]
fn local_expiry_remote_renew_time_is_ignored() {
    // The holder's wall clock says it renewed an hour ago (or in the future); only our
    // observation counts.
    for skew in [-3600i64, 3600] {
        let mut w = Sim::new();
        let mut l = lease(Some(OTHER), Some(15), Some(3));
        l.record.renew_time = Some(if skew < 0 {
            w.wall - s(3600)
        } else {
            w.wall + s(3600)
        });
        w.read(0.0, Want::Acquire, Some(l));
        assert_eq!(
            w.wait(1.0, Want::Acquire),
            Waiting::Following {
                holder: OTHER.into(),
                until: w.at(15.0)
            },
            "skew {skew}"
        );
    }
}

#[test]
fn watch_events_older_than_what_we_know_are_ignored() {
    let mut w = Sim::new();
    w.read(
        0.0,
        Want::Acquire,
        Some(versioned(Some(OTHER), None, Some(0), "9")),
    );
    let old = versioned(Some("older"), None, Some(0), "8");
    assert!(!w.m.on_watch(w.at(1.0), Ok(WatchEvent::Applied(old))));
    assert_eq!(w.m.holder(), Some(OTHER));
    let new = versioned(Some("newer"), None, Some(1), "10");
    assert!(w.m.on_watch(w.at(2.0), Ok(WatchEvent::Applied(new))));
    assert_eq!(w.m.holder(), Some("newer"));
    assert_eq!(w.m.observed().unwrap().changed_at, w.at(2.0));
}

#[test]
fn restore_resync_read_results_never_move_the_observation_backwards() {
    // A read answered with version 8 after the watch has shown version 9: the read raced with
    // a write and lost. The observation keeps version 9 and its time.
    let mut w = Sim::new();
    w.read(
        0.0,
        Want::Acquire,
        Some(versioned(Some(OTHER), None, Some(0), "7")),
    );
    w.m.refresh();
    let call = w.call(1.0, Want::Acquire);
    assert_eq!(call.op, Op::Read);
    let newer = versioned(Some("newer"), None, Some(1), "9");
    assert!(w.m.on_watch(w.at(2.0), Ok(WatchEvent::Applied(newer))));
    let late = versioned(Some(OTHER), None, Some(0), "8");
    assert!(matches!(w.answer(3.0, Ok(late)), Outcome::Read));
    assert_eq!(w.m.holder(), Some("newer"));
    assert_eq!(w.m.observed().unwrap().changed_at, w.at(2.0));
    assert!(
        w.m.is_fresh(),
        "what we know is newer than the read: current"
    );
    assert_eq!(
        w.wait(3.0, Want::Acquire),
        Waiting::Following {
            holder: "newer".into(),
            until: w.at(17.0)
        }
    );
}

#[test]
fn watch_errors_and_deletions_make_the_next_decision_read_first() {
    for event in [
        Err(StoreError::WatchLagged {
            lease: "ns".into(),
            missed: 3,
        }),
        Ok(WatchEvent::Deleted { name: "x".into() }),
    ] {
        let mut w = Sim::new();
        w.read(0.0, Want::Acquire, Some(lease(Some(OTHER), None, Some(0))));
        assert!(w.m.on_watch(w.at(1.0), event));
        assert_eq!(w.call(1.0, Want::Acquire).op, Op::Read);
    }
}

// ---- not holding ------------------------------------------------------------------------

#[test]
fn nothing_observed_means_read_first_but_only_when_something_is_wanted() {
    let mut w = Sim::new();
    assert_eq!(
        w.wait(0.0, Want::Keep),
        Waiting::Idle,
        "an idle lock reads nothing"
    );
    assert_eq!(w.wait(0.0, Want::Release), Waiting::Idle);
    assert_eq!(w.call(0.0, Want::Acquire).op, Op::Read);
}

#[test]
fn a_refresh_reads_once_even_when_idle() {
    let mut w = Sim::new();
    w.m.refresh();
    assert!(!w.m.is_fresh());
    w.read(0.0, Want::Keep, Some(lease(Some(OTHER), None, Some(0))));
    assert!(w.m.is_fresh());
    assert_eq!(w.wait(1.0, Want::Keep), Waiting::Idle, "once");
}

#[test]
fn a_missing_lease_is_created_with_transitions_zero() {
    let mut w = Sim::new();
    w.read(0.0, Want::Acquire, None);
    let call = w.call(0.0, Want::Acquire);
    assert_eq!(call.op, Op::Create);
    let record = record_of(&call);
    assert_eq!(record.holder(), Some(ME));
    assert_eq!(record.lease_transitions, Some(0));
    assert_eq!(record.lease_duration_seconds, Some(15));
    assert_eq!(record.acquire_time, Some(w.wall));
    assert!(matches!(
        w.answer(0.0, Ok(written(&call, "1"))),
        Outcome::Acquired { token: 0 }
    ));
    assert!(w.m.holding());
}

#[test]
fn a_free_lease_is_acquired_at_once_with_transitions_plus_one() {
    // (A free *coordinated* lease is not: see the coordinated tests below.)
    let mut w = Sim::new();
    w.read(0.0, Want::Acquire, Some(lease(Some(""), Some(1), Some(4))));
    let call = w.call(0.0, Want::Acquire);
    assert_eq!(call.op, Op::Acquire);
    assert_eq!(based_on(&call), "7");
    let record = record_of(&call);
    assert_eq!(record.holder(), Some(ME));
    assert_eq!(record.lease_transitions, Some(5));
}

/// The holder fence of `deploy/fencing/` goes by the pod an acquisition names: written with
/// each acquisition (the identity need not be the pod name), kept by renewals, cleared by
/// the release.
#[test]
fn acquisitions_name_our_pod_renewals_keep_it_releases_clear_it() {
    let mut w = Sim::with_identity("pod-a.lock-1");
    w.m = Machine::new("pod-a.lock-1", Timing::default()).with_holder_pod(Some("pod-a".into()));
    w.hold(0.0, 3);
    let acquisition = w.m.lease().unwrap().record.clone();
    assert_eq!(acquisition.holder_pod.as_deref(), Some("pod-a"));
    let renewal = w.call(2.0, Want::Acquire);
    assert_eq!(renewal.op, Op::Renew);
    assert_eq!(record_of(&renewal).holder_pod.as_deref(), Some("pod-a"));
    let stored = written(&renewal, "9");
    w.answer(2.0, Ok(stored));
    let release = w.call(3.0, Want::Release);
    assert_eq!(release.op, Op::Release);
    assert_eq!(record_of(&release).holder_pod, None);
    // Without a pod name, nothing is written.
    let mut w = Sim::new();
    w.hold(0.0, 3);
    assert_eq!(w.m.lease().unwrap().record.holder_pod, None);
}

#[test]
fn missing_transitions_count_as_zero() {
    let mut w = Sim::new();
    w.read(0.0, Want::Acquire, Some(lease(None, None, None)));
    assert_eq!(
        record_of(&w.call(0.0, Want::Acquire)).lease_transitions,
        Some(1)
    );
    assert_eq!(token_of(&lease(None, None, None).record), 0);
}

#[test]
fn local_expiry_a_held_lease_is_followed_until_its_duration_after_our_observation() {
    let mut w = Sim::new();
    w.read(
        3.0,
        Want::Acquire,
        Some(lease(Some(OTHER), Some(15), Some(2))),
    );
    let following = Waiting::Following {
        holder: OTHER.into(),
        until: w.at(18.0),
    };
    assert_eq!(w.wait(3.0, Want::Acquire), following);
    assert_eq!(w.wait(17.999, Want::Acquire), following);
    let call = w.call(18.0, Want::Acquire);
    assert_eq!(call.op, Op::Acquire, "expired by our observation");
    assert_eq!(record_of(&call).lease_transitions, Some(3));
}

/// A machine that read at 0 a lease `OTHER` holds for 15 s, and learnt at `behind` that the
/// watch is behind.
fn behind_follower(behind: f64) -> Sim {
    let mut w = Sim::new();
    w.read(
        0.0,
        Want::Acquire,
        Some(lease(Some(OTHER), Some(15), Some(2))),
    );
    w.m.watch_behind(w.at(behind));
    w
}

/// Following `OTHER` until `until`.
fn following(w: &Sim, until: f64) -> Waiting {
    Waiting::Following {
        holder: OTHER.into(),
        until: w.at(until),
    }
}

/// The shared watch failed and has not caught up: a lease that looks expired may have been
/// renewed unseen (an API server outage, a leader renewing the moment it is back). It is not
/// taken on that strength: the machine waits for the watch (`watch_current`), and then takes
/// it, on the news the watch brought.
#[test]
fn watch_behind_a_lease_that_looks_expired_while_the_watch_is_behind_waits_for_the_watch() {
    let mut w = behind_follower(5.0);
    assert_eq!(w.wait(5.0, Want::Acquire), following(&w, 15.0));
    // Expired by our observation, but we may have missed a renewal: wait for the watch, up to
    // a lease duration after we would have taken it.
    assert_eq!(w.wait(15.0, Want::Acquire), following(&w, 30.0));
    assert_eq!(w.wait(19.0, Want::Acquire), following(&w, 30.0));
    // The watch catches up, bringing nothing newer: the lease did expire; take it.
    w.m.watch_current();
    let call = w.call(19.0, Want::Acquire);
    assert_eq!(call.op, Op::Acquire);

    // The same, but the watch brings the holder's renewal: follow it, write nothing.
    let mut w = behind_follower(5.0);
    assert_eq!(w.wait(16.0, Want::Acquire), following(&w, 31.0));
    let renewed = versioned(Some(OTHER), Some(15), Some(2), "8");
    assert!(w.m.on_watch(w.at(17.0), Ok(WatchEvent::Applied(renewed))));
    w.m.watch_current();
    assert_eq!(w.wait(17.0, Want::Acquire), following(&w, 32.0));
}

/// A watch that stays behind for a lease duration after the lease expired: the machine reads
/// the lease itself (the hub may never catch up, say its list is too slow), and takes it if
/// the read confirms the expiry. A read that fails (the server is still down) is not retried
/// every retry period: the machine waits for the watch another lease duration.
#[test]
fn watch_behind_a_watch_behind_for_a_lease_duration_is_replaced_by_one_read() {
    let mut w = behind_follower(1.0);
    assert_eq!(w.wait(16.0, Want::Acquire), following(&w, 31.0));
    let call = w.call(31.0, Want::Acquire);
    assert_eq!(call.op, Op::Read, "a lease duration blocked: read");
    assert!(matches!(
        w.answer(31.5, Err(unavailable())),
        Outcome::Retry { .. }
    ));
    assert_eq!(
        w.wait(33.5, Want::Acquire),
        following(&w, 46.5),
        "no read every retry period while the server is down"
    );
    let call = w.call(46.5, Want::Acquire);
    assert_eq!(call.op, Op::Read);
    assert!(matches!(
        w.answer(46.5, Ok(lease(Some(OTHER), Some(15), Some(2)))),
        Outcome::Read
    ));
    // The read confirmed the expiry; the server was down for 15 s, so the takeover waits a
    // random part of a retry period (rule `write-backoff`).
    let call = w.call(48.5, Want::Acquire);
    assert_eq!(call.op, Op::Acquire, "the read confirmed the expiry");
    assert!(w.m.is_behind(), "the watch itself is still behind");

    // A read that shows a renewal is followed; at the next expiry the wait starts again.
    let mut w = behind_follower(1.0);
    assert_eq!(w.wait(16.0, Want::Acquire), following(&w, 31.0));
    assert_eq!(w.call(31.0, Want::Acquire).op, Op::Read);
    let renewed = versioned(Some(OTHER), Some(15), Some(2), "8");
    assert!(matches!(w.answer(31.0, Ok(renewed)), Outcome::Read));
    assert_eq!(w.wait(31.0, Want::Acquire), following(&w, 46.0));
    assert_eq!(
        w.wait(46.0, Want::Acquire),
        following(&w, 61.0),
        "expired again, unconfirmed: wait for the watch again"
    );
    assert_eq!(w.call(61.0, Want::Acquire).op, Op::Read);
}

/// A holder renews whatever the watch says: its compare-and-swap is the check.
#[test]
fn watch_behind_a_holder_renews_while_the_watch_is_behind() {
    let mut w = Sim::new();
    w.hold(0.0, 3);
    w.m.watch_behind(w.at(0.5));
    let call = w.call(2.0, Want::Acquire);
    assert_eq!(call.op, Op::Renew);
}

#[test]
fn local_expiry_the_holders_declared_duration_is_used_not_ours() {
    for (declared, expires) in [(Some(60), 60.0), (Some(5), 5.0), (None, 15.0)] {
        let mut w = Sim::new();
        w.read(
            0.0,
            Want::Acquire,
            Some(lease(Some(OTHER), declared, Some(0))),
        );
        assert_eq!(
            w.wait(0.0, Want::Acquire),
            Waiting::Following {
                holder: OTHER.into(),
                until: w.at(expires)
            },
            "{declared:?}"
        );
    }
}

#[test]
fn one_identity_a_fresh_machine_takes_a_lease_naming_it_once_unchanged_for_a_renew_deadline() {
    // This identity restarted, or a twin with our identity is live: the record names us. Not
    // at once (a live twin would hold it with us), but once nobody has renewed it for a renew
    // deadline, by which a live holder would have renewed or stepped down. A new term, a new
    // token.
    let mut w = Sim::new();
    w.read(0.0, Want::Acquire, Some(lease(Some(ME), Some(15), Some(6))));
    assert_eq!(
        w.wait(0.0, Want::Acquire),
        Waiting::Following {
            holder: ME.into(),
            until: w.at(10.0)
        }
    );
    let call = w.call(10.0, Want::Acquire);
    assert_eq!(call.op, Op::Acquire);
    assert_eq!(record_of(&call).lease_transitions, Some(7));
}

#[test]
fn one_identity_a_holder_that_stepped_down_does_not_take_its_record_back_early() {
    // Our renewals failed until the renew deadline: we stepped down. The record still names
    // us (our last renewal). It is judged by expiry, a lease duration after it last changed,
    // not a renew deadline: never right after we stepped down ourselves.
    let mut w = Sim::new();
    w.hold(0.0, 1);
    assert_eq!(
        w.next(10.0, Want::Acquire),
        Step::StepDown(StepDownReason::RenewDeadlineExceeded)
    );
    assert_eq!(
        w.wait(10.0, Want::Acquire),
        Waiting::Following {
            holder: ME.into(),
            until: w.at(15.0)
        }
    );
    let call = w.call(15.0, Want::Acquire);
    assert_eq!(record_of(&call).lease_transitions, Some(2));
}

#[test]
fn one_identity_a_record_naming_us_that_keeps_changing_is_a_twin_never_taken() {
    let mut w = Sim::new();
    w.read(
        0.0,
        Want::Acquire,
        Some(versioned(Some(ME), Some(15), Some(6), "7")),
    );
    assert!(w.m.take_alerts().is_empty(), "a first look proves nothing");
    // The twin renews every 2 s: the record never stays unchanged for a renew deadline.
    for (i, t) in [2.0, 4.0, 6.0, 8.0, 10.0, 12.0].into_iter().enumerate() {
        let renewed = versioned(Some(ME), Some(15), Some(6), &(8 + i).to_string());
        assert!(w.m.on_watch(w.at(t), Ok(WatchEvent::Applied(renewed))));
        assert!(matches!(
            w.next(t, Want::Acquire),
            Step::Wait(Waiting::Following { .. })
        ));
    }
    let alerts = w.m.take_alerts();
    assert_eq!(alerts.len(), 6, "{alerts:?}");
    assert!(alerts.iter().all(|a| *a == Alert::Twin { token: 6 }));
    assert!(!w.m.holding());
}

#[test]
fn superseded_under_our_own_identity_we_wait_for_expiry_instead_of_taking_it_back() {
    // Another live process has our identity and took the lease (a new term: token + 1).
    let mut w = Sim::new();
    w.hold(0.0, 1);
    let theirs = versioned(Some(ME), Some(15), Some(2), "9");
    assert!(w.m.on_watch(w.at(1.0), Ok(WatchEvent::Applied(theirs))));
    assert_eq!(
        w.next(1.0, Want::Acquire),
        Step::StepDown(StepDownReason::Superseded {
            holder: Some(ME.into())
        })
    );
    // Not back at once (that would flip the lease between the two in a hot loop): it expires
    // a lease duration after we saw it change, like anyone else's.
    assert_eq!(
        w.wait(1.0, Want::Acquire),
        Waiting::Following {
            holder: ME.into(),
            until: w.at(16.0)
        }
    );
    assert_eq!(w.call(16.0, Want::Acquire).op, Op::Acquire);
}

#[test]
fn not_wanting_the_lease_is_idle() {
    let mut w = Sim::new();
    w.read(
        0.0,
        Want::Acquire,
        Some(lease(Some(OTHER), Some(15), Some(2))),
    );
    assert_eq!(w.wait(1.0, Want::Keep), Waiting::Idle);
    assert_eq!(w.wait(99.0, Want::Release), Waiting::Idle, "nothing held");
    assert_eq!(w.m.holder(), Some(OTHER));
}

#[test]
fn garbage_records_are_invalid_never_written_and_read_again_later() {
    for (garbage, what) in [
        (lease(Some(OTHER), Some(0), Some(1)), "leaseDurationSeconds"),
        (
            lease(Some(OTHER), Some(-5), Some(1)),
            "leaseDurationSeconds",
        ),
        (lease(None, Some(15), Some(-1)), "leaseTransitions"),
    ] {
        let mut w = Sim::new();
        w.read(0.0, Want::Acquire, Some(garbage));
        match w.wait(0.0, Want::Acquire) {
            Waiting::Invalid { reason, until } => {
                assert!(reason.contains(what), "{reason}");
                assert_eq!(until, w.at(2.0));
            }
            other => panic!("expected Invalid, got {other:?}"),
        }
        assert!(w.m.invalid().is_some());
        assert!(matches!(
            w.next(1.9, Want::Acquire),
            Step::Wait(Waiting::Invalid { .. })
        ));
        // A retry period later it is read again (someone may have repaired it).
        w.read(2.0, Want::Acquire, Some(lease(None, Some(1), Some(1))));
        assert_eq!(w.call(2.0, Want::Acquire).op, Op::Acquire, "repaired");
        assert_eq!(w.m.invalid(), None);
    }
}

// ---- holding ----------------------------------------------------------------------------

#[test]
fn cas_writes_a_holder_waits_a_retry_period_then_renews_on_the_cached_version() {
    let mut w = Sim::new();
    w.hold(0.0, 1);
    assert_eq!(w.m.deadline(), Some(w.at(10.0)));
    assert_eq!(
        w.wait(1.0, Want::Keep),
        Waiting::Holding { until: w.at(2.0) }
    );
    let call = w.call(2.0, Want::Acquire);
    assert_eq!(call.op, Op::Renew);
    assert_eq!(based_on(&call), "8", "no read before renewing");
    assert_eq!(call.timeout, s(8), "never past the deadline");
    let record = record_of(&call);
    assert_eq!(record.holder(), Some(ME));
    assert_eq!(record.lease_transitions, Some(1), "the same term");
    assert!(matches!(
        w.answer(2.5, Ok(written(&call, "9"))),
        Outcome::Renewed
    ));
    assert_eq!(
        w.m.deadline(),
        Some(w.at(12.0)),
        "from the start of the write"
    );
}

#[test]
fn renewal_keeps_the_acquire_time() {
    let mut w = Sim::new();
    w.hold(0.0, 1);
    let acquired = w.m.lease().unwrap().record.acquire_time;
    w.wall += s(2);
    let call = w.call(2.0, Want::Keep);
    assert_eq!(record_of(&call).acquire_time, acquired);
    assert_eq!(record_of(&call).renew_time, Some(w.wall));
}

#[test]
fn write_backoff_failed_renewals_are_retried_each_retry_period_until_the_deadline() {
    let mut w = Sim::new();
    w.hold(0.0, 1);
    let mut renewals = Vec::new();
    let mut t = 2.0;
    loop {
        match w.next(t, Want::Keep) {
            Step::Call(call) => {
                assert_eq!(call.op, Op::Renew);
                renewals.push(t);
                assert!(matches!(
                    w.answer(t, Err(unavailable())),
                    Outcome::Retry { .. }
                ));
            }
            Step::Wait(waiting) => t = waiting.until().unwrap().duration_since(w.t0).as_secs_f64(),
            Step::StepDown(reason) => {
                assert_eq!(reason, StepDownReason::RenewDeadlineExceeded);
                assert_eq!(t, 10.0, "exactly at the deadline");
                break;
            }
        }
    }
    assert_eq!(renewals, [2.0, 4.0, 6.0, 8.0]);
    assert!(!w.m.holding());
}

#[test]
fn holder_steps_down_first_at_the_deadline_even_with_a_call_in_flight() {
    let mut w = Sim::new();
    w.hold(0.0, 1);
    let call = w.call(2.0, Want::Keep);
    assert_eq!(
        w.wait(3.0, Want::Keep),
        Waiting::InFlight {
            until: Some(w.at(10.0))
        }
    );
    assert_eq!(
        w.next(10.0, Want::Keep),
        Step::StepDown(StepDownReason::RenewDeadlineExceeded)
    );
    // The late answer only updates the observation: no claim comes back.
    assert!(matches!(
        w.answer(10.5, Ok(written(&call, "9"))),
        Outcome::Read
    ));
    assert!(!w.m.holding());
}

#[test]
fn holder_steps_down_first_the_deadline_is_always_before_anyone_else_may_take_over() {
    // Whenever we hold, another replica can only take over lease_duration after it saw our
    // latest successful write, which started no earlier than our renewed_at: our deadline
    // (renewed_at + renew_deadline) comes first.
    let t = Timing::default();
    assert!(t.renew_deadline() < t.lease_duration());
    let mut me = Sim::new();
    me.hold(0.0, 1);
    let mut other = Sim::with_identity(OTHER);
    other.read(0.0, Want::Acquire, me.m.lease().cloned());
    let takeover = other.wait(0.0, Want::Acquire).until().unwrap();
    assert!(me.m.deadline().unwrap() < takeover);
}

#[test]
fn a_holder_that_sees_another_holder_or_term_or_a_deletion_steps_down() {
    for (event, reason) in [
        (
            Ok(WatchEvent::Applied(versioned(
                Some(OTHER),
                Some(15),
                Some(2),
                "9",
            ))),
            StepDownReason::Superseded {
                holder: Some(OTHER.into()),
            },
        ),
        (
            Ok(WatchEvent::Applied(versioned(None, Some(1), Some(1), "9"))),
            StepDownReason::Superseded { holder: None },
        ),
    ] {
        let mut w = Sim::new();
        w.hold(0.0, 1);
        assert!(w.m.on_watch(w.at(1.0), event));
        assert_eq!(w.next(1.0, Want::Keep), Step::StepDown(reason));
    }
    let mut w = Sim::new();
    w.hold(0.0, 1);
    w.call(2.0, Want::Keep);
    let gone = Err(StoreError::NotFound {
        lease: "ns/x".into(),
    });
    assert!(matches!(w.answer(2.0, gone), Outcome::Read));
    assert_eq!(
        w.next(2.0, Want::Keep),
        Step::StepDown(StepDownReason::LeaseDeleted)
    );
}

#[test]
fn a_new_version_of_our_own_term_is_still_ours() {
    // A write of ours whose response was lost shows up as a new version of the same term.
    let mut w = Sim::new();
    w.hold(0.0, 1);
    let ours = versioned(Some(ME), Some(15), Some(1), "12");
    assert!(w.m.on_watch(w.at(1.0), Ok(WatchEvent::Applied(ours))));
    assert_eq!(
        w.wait(1.0, Want::Keep),
        Waiting::Holding { until: w.at(2.0) }
    );
    assert_eq!(based_on(&w.call(2.0, Want::Keep)), "12");
}

#[test]
fn holder_steps_down_first_a_renewal_answered_without_a_new_version_does_not_extend_the_claim() {
    // Nothing was written, so nobody saw a renewal: counting it would let us outlive what
    // the others observe.
    let mut w = Sim::new();
    w.hold(0.0, 1);
    let call = w.call(2.0, Want::Keep);
    let unchanged = w.m.lease().cloned().unwrap();
    assert!(matches!(w.answer(2.0, Ok(unchanged)), Outcome::Unchanged));
    assert_eq!(w.m.deadline(), Some(w.at(10.0)), "still the acquisition's");
    assert_eq!(
        w.wait(2.0, Want::Keep),
        Waiting::Holding { until: w.at(4.0) },
        "retried a retry period later, not at once"
    );
    drop(call);
}

// ---- releasing --------------------------------------------------------------------------

#[test]
fn a_holder_that_wants_to_release_writes_the_release() {
    let mut w = Sim::new();
    w.hold(0.0, 4);
    let call = w.call(1.0, Want::Release);
    assert_eq!(call.op, Op::Release);
    let record = record_of(&call);
    assert_eq!(record.holder(), None);
    assert_eq!(
        record.lease_duration_seconds,
        Some(1),
        "as client-go writes"
    );
    assert_eq!(
        record.lease_transitions,
        Some(4),
        "kept: the next token is higher"
    );
    assert!(matches!(
        w.answer(1.0, Ok(written(&call, "9"))),
        Outcome::Released
    ));
    assert!(!w.m.holding());
}

#[test]
fn write_backoff_a_failing_release_waits_its_backoff_and_gives_up_at_the_deadline() {
    // Answered at once with 503 (or 429, or connection refused): the old machine retried
    // back to back, thousands of calls while the API server struggled.
    let mut w = Sim::new();
    w.hold(0.0, 1);
    let mut releases = Vec::new();
    let mut t = 0.5;
    loop {
        match w.next(t, Want::Release) {
            Step::Call(call) => {
                assert_eq!(call.op, Op::Release);
                releases.push(t);
                w.answer(t, Err(unavailable()));
            }
            Step::Wait(waiting) => t = waiting.until().unwrap().duration_since(w.t0).as_secs_f64(),
            Step::StepDown(reason) => {
                assert_eq!(reason, StepDownReason::RenewDeadlineExceeded);
                break;
            }
        }
    }
    assert_eq!(releases, [0.5, 2.5, 4.5, 6.5, 8.5], "one per retry period");
    assert_eq!(t, 10.0);
}

// ---- failures and backoff ---------------------------------------------------------------

#[test]
fn write_backoff_transient_failures_back_off_exponentially_with_jitter() {
    // A candidate meeting 503s waits a random time between a tenth of a retry period and
    // 2 s · 2^(n-1) (at most the lease duration), not one retry period every time.
    let mut w = Sim::new();
    let mut t = 0.0;
    for i in 0..6u32 {
        assert_eq!(w.call(t, Want::Acquire).op, Op::Read);
        assert!(matches!(
            w.answer(t, Err(unavailable())),
            Outcome::Retry { .. }
        ));
        let until = match w.wait(t, Want::Acquire) {
            Waiting::Backoff { until } => until,
            other => panic!("{other:?}"),
        };
        let waited = until.duration_since(w.at(t)).as_secs_f64();
        let high = (2.0 * f64::from(1u32 << i)).min(15.0);
        assert!(
            (0.2..=high).contains(&waited),
            "failure {}: waited {waited} s, bound {high} s",
            i + 1
        );
        t = until.duration_since(w.t0).as_secs_f64();
    }
    assert_eq!(w.m.failures(), 6);
}

#[test]
fn write_backoff_takeover_after_a_long_outage_is_spread_over_a_retry_period() {
    // Failing since 0 s; at 16 s (longer than the lease) a read works and shows the lease
    // free: the takeover waits a random part of a retry period.
    let mut w = Sim::new();
    assert_eq!(w.call(0.0, Want::Acquire).op, Op::Read);
    assert!(matches!(
        w.answer(0.0, Err(unavailable())),
        Outcome::Retry { .. }
    ));
    assert_eq!(w.call(16.0, Want::Acquire).op, Op::Read);
    assert!(matches!(
        w.answer(16.0, Ok(lease(None, None, Some(0)))),
        Outcome::Read
    ));
    match w.wait(16.0, Want::Acquire) {
        Waiting::Backoff { until } => {
            assert!(until > w.at(16.0) && until <= w.at(18.0), "{until:?}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(w.call(18.0, Want::Acquire).op, Op::Acquire);

    // A short blip: the takeover is not delayed.
    let mut w = Sim::new();
    assert_eq!(w.call(0.0, Want::Acquire).op, Op::Read);
    assert!(matches!(
        w.answer(0.0, Err(unavailable())),
        Outcome::Retry { .. }
    ));
    assert_eq!(w.call(2.0, Want::Acquire).op, Op::Read);
    assert!(matches!(
        w.answer(2.0, Ok(lease(None, None, Some(0)))),
        Outcome::Read
    ));
    assert_eq!(w.call(2.0, Want::Acquire).op, Op::Acquire, "at once");
}

#[test]
fn write_backoff_a_servers_retry_after_holds_back_the_next_call() {
    let mut w = Sim::new();
    assert_eq!(w.call(0.0, Want::Acquire).op, Op::Read);
    let throttled = StoreError::Unavailable {
        message: "429".into(),
        source: Some(Box::new(crate::store::RetryAfter(Duration::from_secs(12)))),
    };
    assert!(matches!(
        w.answer(0.0, Err(throttled)),
        Outcome::Retry { .. }
    ));
    assert_eq!(
        w.wait(0.0, Want::Acquire),
        Waiting::Backoff { until: w.at(12.0) },
        "the server asked for 12 s"
    );
}

#[test]
fn write_backoff_refusals_back_off_exponentially_and_successful_reads_do_not_reset_them() {
    // Persistent 403 on update with get allowed: reads succeed, every acquisition is refused.
    // The wait grows (2, 4, 8, 15, 15 s) instead of staying at one retry period.
    let mut w = Sim::new();
    let mut t = 0.0;
    let mut waits = Vec::new();
    for _ in 0..5 {
        w.read(t, Want::Acquire, Some(lease(None, None, Some(0))));
        let call = w.call(t, Want::Acquire);
        assert_eq!(call.op, Op::Acquire);
        assert!(matches!(
            w.answer(t, Err(forbidden())),
            Outcome::Failed { .. }
        ));
        // An actor restart forgets the lease but keeps the streak.
        w.m.reset();
        let until = match w.wait(t, Want::Acquire) {
            Waiting::Backoff { until } => until,
            other => panic!("{other:?}"),
        };
        waits.push(until.duration_since(w.at(t)).as_secs());
        t = until.duration_since(w.t0).as_secs_f64();
    }
    assert_eq!(waits, [2, 4, 8, 15, 15]);
    // A success ends the streak.
    w.read(t, Want::Acquire, Some(lease(None, None, Some(0))));
    let call = w.call(t, Want::Acquire);
    w.answer(t, Ok(written(&call, "20")));
    assert_eq!(w.m.failures(), 0);
}

#[test]
fn a_failed_read_ends_its_refresh() {
    // try_lock's read failed and was answered: an idle lock does not keep reading.
    let mut w = Sim::new();
    w.m.refresh();
    assert_eq!(w.call(0.0, Want::Keep).op, Op::Read);
    assert!(matches!(
        w.answer(0.0, Err(unavailable())),
        Outcome::Retry { .. }
    ));
    assert_eq!(w.wait(5.0, Want::Keep), Waiting::Idle);
}

#[test]
fn cas_writes_the_first_conflict_is_retried_at_once_and_the_next_ones_back_off() {
    let mut w = Sim::new();
    w.read(0.0, Want::Acquire, Some(lease(None, None, Some(0))));
    assert_eq!(w.call(0.0, Want::Acquire).op, Op::Acquire);
    assert!(matches!(w.answer(0.0, Err(conflict())), Outcome::Conflict));
    // Re-read at once, and write again at once.
    w.read(0.0, Want::Acquire, Some(lease(None, None, Some(0))));
    assert_eq!(w.call(0.0, Want::Acquire).op, Op::Acquire);
    assert!(matches!(w.answer(0.0, Err(conflict())), Outcome::Conflict));
    // A second one in a row (a 409 storm, a peer writing constantly): a retry period.
    assert_eq!(
        w.wait(0.0, Want::Acquire),
        Waiting::Backoff { until: w.at(2.0) }
    );
    w.read(2.0, Want::Acquire, Some(lease(None, None, Some(0))));
    let call = w.call(2.0, Want::Acquire);
    assert!(matches!(
        w.answer(2.0, Ok(written(&call, "9"))),
        Outcome::Acquired { token: 1 }
    ));
}

#[test]
fn a_definite_failure_on_create_is_reported_and_backed_off() {
    // 404 on create: the namespace is missing.
    let mut w = Sim::new();
    w.read(0.0, Want::Acquire, None);
    assert_eq!(w.call(0.0, Want::Acquire).op, Op::Create);
    let missing = Err(StoreError::NotFound {
        lease: "ns/x".into(),
    });
    assert!(matches!(
        w.answer(0.0, missing),
        Outcome::Failed { op: Op::Create, .. }
    ));
    assert_eq!(
        w.wait(0.0, Want::Acquire),
        Waiting::Backoff { until: w.at(2.0) }
    );
}

// ---- lifecycle hooks --------------------------------------------------------------------

#[test]
fn results_of_calls_from_before_a_reset_are_ignored() {
    let mut w = Sim::new();
    let old = w.call(0.0, Want::Acquire);
    w.m.reset();
    assert!(
        w.m.on_result(w.at(1.0), old.seq, Ok(lease(None, None, None)))
            .is_none()
    );
    let new = w.call(1.0, Want::Acquire);
    assert_ne!(new.seq, old.seq);
}

#[test]
fn abandon_drops_the_claim_without_writing_and_the_record_is_then_judged_by_expiry() {
    let mut w = Sim::new();
    w.hold(0.0, 1);
    w.m.abandon();
    assert!(!w.m.holding());
    assert_eq!(w.wait(1.0, Want::Release), Waiting::Idle, "no release");
    assert_eq!(
        w.wait(1.0, Want::Acquire),
        Waiting::Following {
            holder: ME.into(),
            until: w.at(15.0)
        },
        "our own record, with work that may still run: not taken back at once"
    );
}

#[test]
fn one_identity_adopt_claims_a_record_left_by_an_earlier_process_so_it_can_be_released() {
    let mut w = Sim::new();
    assert!(!w.m.adopt(w.at(0.0)), "nothing observed");
    w.m.refresh();
    w.read(0.0, Want::Keep, Some(lease(Some(ME), Some(15), Some(3))));
    assert!(
        !w.m.adopt(w.at(1.0)),
        "young: a live twin may be renewing it"
    );
    w.m.refresh();
    w.read(10.0, Want::Keep, Some(lease(Some(ME), Some(15), Some(3))));
    assert!(w.m.adopt(w.at(10.0)), "unchanged for a renew deadline");
    assert_eq!(
        w.m.deadline(),
        Some(w.at(20.0)),
        "only released (by compare-and-swap): counts from now"
    );
    assert_eq!(w.call(10.0, Want::Release).op, Op::Release);

    let mut other = Sim::new();
    other.m.refresh();
    other.read(0.0, Want::Keep, Some(lease(Some(OTHER), Some(15), Some(3))));
    assert!(!other.m.adopt(other.at(11.0)), "not ours");
    let mut stepped_down = Sim::new();
    stepped_down.m.forbid_reclaim();
    stepped_down.m.refresh();
    stepped_down.read(0.0, Want::Keep, Some(lease(Some(ME), Some(15), Some(3))));
    stepped_down.m.refresh();
    stepped_down.read(11.0, Want::Keep, Some(lease(Some(ME), Some(15), Some(3))));
    assert!(
        !stepped_down.m.adopt(stepped_down.at(11.0)),
        "not after our own claim on it ended"
    );
}

// ---- coordinated leader election (KEP-4355) ---------------------------------------------

const STRATEGY: &str = "OldestEmulationVersion";

/// A coordinated lease (`spec.strategy` set) as the API server's election controller writes
/// it: holder, preferred holder, its 5 s duration, transitions untouched.
fn coordinated(
    holder: Option<&str>,
    preferred: Option<&str>,
    transitions: i32,
    version: &str,
) -> StoredLease {
    let mut l = versioned(holder, Some(5), Some(transitions), version);
    l.record.strategy = Some(STRATEGY.into());
    l.record.preferred_holder = preferred.map(str::to_owned);
    l
}

/// `sim` holds a coordinated lease that the controller assigned to it (token 4, version 11).
fn hold_assigned(w: &mut Sim, t: f64) {
    w.read(
        t,
        Want::Acquire,
        Some(coordinated(Some(OTHER), None, 3, "10")),
    );
    let assigned = coordinated(Some(ME), None, 3, "11");
    assert!(w.m.on_watch(w.at(t), Ok(WatchEvent::Applied(assigned))));
    let call = w.call(t, Want::Acquire);
    assert_eq!(call.op, Op::Acquire);
    assert!(matches!(
        w.answer(t, Ok(written(&call, "12"))),
        Outcome::Acquired { token: 4 }
    ));
}

#[test]
fn a_holder_preferred_away_ends_its_term_keeps_renewing_then_releases() {
    // (a) The controller names another preferred holder: the term ends (once), the claim is
    // kept and renewed while the work drains, then released, keeping strategy and preference.
    let mut w = Sim::new();
    hold_assigned(&mut w, 0.0);
    let marked = coordinated(Some(ME), Some(OTHER), 4, "13");
    assert!(w.m.on_watch(w.at(1.0), Ok(WatchEvent::Applied(marked))));
    assert_eq!(
        w.next(1.0, Want::Keep),
        Step::StepDown(StepDownReason::PreferredHolder {
            holder: OTHER.into()
        })
    );
    assert!(w.m.holding(), "the claim is kept until the release");
    assert_eq!(
        w.wait(1.0, Want::Keep),
        Waiting::Holding { until: w.at(2.0) },
        "asked once, then renewing while the work drains"
    );
    let renew = w.call(2.0, Want::Keep);
    assert_eq!(renew.op, Op::Renew);
    assert_eq!(based_on(&renew), "13");
    let record = record_of(&renew);
    assert_eq!(record.holder(), Some(ME));
    assert_eq!(record.preferred(), Some(OTHER), "kept as found");
    assert_eq!(record.strategy.as_deref(), Some(STRATEGY));
    assert!(matches!(
        w.answer(2.0, Ok(written(&renew, "14"))),
        Outcome::Renewed
    ));
    // The work has drained: release. The holder is cleared; the controller then names OTHER.
    let release = w.call(2.5, Want::Release);
    assert_eq!(release.op, Op::Release);
    let record = record_of(&release);
    assert_eq!(record.holder(), None);
    assert_eq!(record.lease_transitions, Some(4));
    assert_eq!(record.strategy.as_deref(), Some(STRATEGY));
    assert_eq!(record.preferred(), Some(OTHER));
    assert!(matches!(
        w.answer(2.5, Ok(written(&release, "15"))),
        Outcome::Released
    ));
    // (b) A free coordinated lease is not taken: the controller assigns it.
    assert_eq!(
        w.wait(2.5, Want::Acquire),
        Waiting::Coordinated {
            holder: None,
            until: w.at(17.5)
        }
    );
}

#[test]
fn a_yielding_holder_still_steps_down_at_its_deadline() {
    let mut w = Sim::new();
    hold_assigned(&mut w, 0.0);
    let marked = coordinated(Some(ME), Some(OTHER), 4, "13");
    assert!(w.m.on_watch(w.at(1.0), Ok(WatchEvent::Applied(marked))));
    assert!(matches!(w.next(1.0, Want::Keep), Step::StepDown(_)));
    assert_eq!(
        w.next(10.0, Want::Keep),
        Step::StepDown(StepDownReason::RenewDeadlineExceeded)
    );
    assert!(!w.m.holding());
}

#[test]
fn a_preferred_holder_naming_us_or_nobody_changes_nothing() {
    // (d)
    for preferred in [Some(ME), Some(""), None] {
        let mut w = Sim::new();
        hold_assigned(&mut w, 0.0);
        let l = coordinated(Some(ME), preferred, 4, "13");
        assert!(w.m.on_watch(w.at(1.0), Ok(WatchEvent::Applied(l))));
        assert_eq!(
            w.wait(1.0, Want::Keep),
            Waiting::Holding { until: w.at(2.0) },
            "{preferred:?}"
        );
        assert_eq!(w.call(2.0, Want::Keep).op, Op::Renew);
    }
    // Not holding, a record assigned to us that prefers us is taken too.
    let mut w = Sim::new();
    w.m.forbid_reclaim();
    w.read(0.0, Want::Acquire, Some(coordinated(None, None, 3, "10")));
    let l = coordinated(Some(ME), Some(ME), 3, "11");
    assert!(w.m.on_watch(w.at(1.0), Ok(WatchEvent::Applied(l))));
    assert_eq!(w.call(1.0, Want::Acquire).op, Op::Acquire);
}

#[test]
fn a_coordinated_lease_is_never_acquired_from_nobody_or_another_holder() {
    // (b) Free, held, expired by our observation, or naming us but preferring another: the
    // controller picks the holder, so nothing is written, ever.
    for (l, holder) in [
        (coordinated(None, None, 3, "10"), None),
        (coordinated(Some(""), Some(OTHER), 3, "10"), None),
        (coordinated(Some(OTHER), None, 3, "10"), Some(OTHER)),
        (coordinated(Some(ME), Some(OTHER), 3, "10"), Some(ME)),
    ] {
        let mut w = Sim::new();
        w.read(0.0, Want::Acquire, Some(l.clone()));
        for t in [0.0, 5.0, 15.0, 100.0, 1000.0] {
            match w.wait(t, Want::Acquire) {
                Waiting::Coordinated { holder: h, until } => {
                    assert_eq!(h.as_deref(), holder, "{l:?}");
                    assert!(until > w.at(t), "{until:?} at {t}: never a past instant");
                }
                other => panic!("{l:?} at {t}: {other:?}"),
            }
        }
        assert!(!w.m.holding());
    }
}

#[test]
fn a_lease_the_controller_assigns_to_us_is_taken_at_once_as_a_new_term() {
    // (c) A compare-and-swap write on the version seen; our identity was already there, the
    // token is incremented (the controller keeps leaseTransitions, and tokens must grow).
    let mut w = Sim::new();
    w.read(
        0.0,
        Want::Acquire,
        Some(coordinated(Some(OTHER), None, 3, "10")),
    );
    assert!(matches!(
        w.wait(0.0, Want::Acquire),
        Waiting::Coordinated { .. }
    ));
    let assigned = coordinated(Some(ME), None, 3, "11");
    assert!(w.m.on_watch(w.at(1.0), Ok(WatchEvent::Applied(assigned))));
    let call = w.call(1.0, Want::Acquire);
    assert_eq!(call.op, Op::Acquire);
    assert_eq!(based_on(&call), "11");
    let record = record_of(&call);
    assert_eq!(record.holder(), Some(ME));
    assert_eq!(record.lease_transitions, Some(4));
    assert_eq!(record.strategy.as_deref(), Some(STRATEGY), "kept");
    assert!(matches!(
        w.answer(1.0, Ok(written(&call, "12"))),
        Outcome::Acquired { token: 4 }
    ));
}

#[test]
fn a_controller_assignment_is_taken_even_when_reclaiming_is_off() {
    // After a drain timeout (or an impostor) records naming us are judged by expiry; a holder
    // change to us on a coordinated lease is the controller's assignment all the same.
    let mut w = Sim::new();
    w.m.forbid_reclaim();
    w.read(0.0, Want::Acquire, Some(coordinated(None, None, 3, "10")));
    let assigned = coordinated(Some(ME), None, 3, "11");
    assert!(w.m.on_watch(w.at(1.0), Ok(WatchEvent::Applied(assigned))));
    assert_eq!(w.call(1.0, Want::Acquire).op, Op::Acquire);
}

#[test]
fn a_same_identity_impostor_on_a_coordinated_lease_is_not_adopted() {
    // We hold a coordinated lease; another process with our identity writes a new term. The
    // record named us before and after: no assignment, so it is judged by expiry.
    let mut w = Sim::new();
    hold_assigned(&mut w, 0.0);
    let theirs = coordinated(Some(ME), None, 5, "13");
    assert!(w.m.on_watch(w.at(1.0), Ok(WatchEvent::Applied(theirs))));
    assert_eq!(
        w.next(1.0, Want::Acquire),
        Step::StepDown(StepDownReason::Superseded {
            holder: Some(ME.into())
        })
    );
    assert_eq!(
        w.wait(1.0, Want::Acquire),
        Waiting::Following {
            holder: ME.into(),
            until: w.at(6.0)
        }
    );
    // A renewal of theirs is no assignment either.
    let renewed = coordinated(Some(ME), None, 5, "14");
    assert!(w.m.on_watch(w.at(2.0), Ok(WatchEvent::Applied(renewed))));
    assert_eq!(
        w.wait(2.0, Want::Acquire),
        Waiting::Following {
            holder: ME.into(),
            until: w.at(7.0)
        }
    );
    // A record naming us the first time we look, when we may not reclaim (our predecessor's
    // work may still run): judged by expiry too.
    let mut fresh = Sim::new();
    fresh.m.forbid_reclaim();
    fresh.read(
        0.0,
        Want::Acquire,
        Some(coordinated(Some(ME), None, 3, "10")),
    );
    assert_eq!(
        fresh.wait(0.0, Want::Acquire),
        Waiting::Following {
            holder: ME.into(),
            until: fresh.at(5.0)
        }
    );
    assert_eq!(
        fresh.call(5.0, Want::Acquire).op,
        Op::Acquire,
        "ours, expired"
    );
}

#[test]
fn without_a_strategy_a_holder_change_to_us_is_not_an_assignment() {
    // (e) Only the controller of a coordinated lease assigns; on a plain lease a change to our
    // identity is another process's (or a lost write of ours), judged as before.
    let mut w = Sim::new();
    w.m.forbid_reclaim();
    w.read(
        0.0,
        Want::Acquire,
        Some(lease(Some(OTHER), Some(15), Some(3))),
    );
    let ours = versioned(Some(ME), Some(15), Some(4), "8");
    assert!(w.m.on_watch(w.at(1.0), Ok(WatchEvent::Applied(ours))));
    assert_eq!(
        w.wait(1.0, Want::Acquire),
        Waiting::Following {
            holder: ME.into(),
            until: w.at(16.0)
        }
    );
}

#[test]
fn a_controller_handover_between_two_replicas_keeps_tokens_increasing() {
    // The controller (played here) assigns a, then prefers b: a yields and releases, the
    // controller assigns b, b takes it. One holder at a time, tokens strictly increase.
    let mut store = Cas {
        lease: Some(coordinated(None, None, 0, "1")),
        revision: 1,
        writes: 0,
    };
    let mut a = Sim::with_identity("a");
    let mut b = Sim::with_identity("b");
    let controller = |store: &mut Cas, holder: Option<&str>, preferred: Option<&str>| {
        let mut record = store.lease.clone().unwrap().record;
        record.holder_identity = holder.map(str::to_owned);
        record.preferred_holder = preferred.map(str::to_owned);
        store.revision += 1;
        store.lease = Some(StoredLease {
            name: "s.election.x".into(),
            record,
            resource_version: store.revision.to_string(),
            uid: None,
        });
    };
    let see = |sim: &mut Sim, store: &Cas, t: f64| {
        let current = store.lease.clone().unwrap();
        sim.m.on_watch(sim.at(t), Ok(WatchEvent::Applied(current)));
    };
    for sim in [&mut a, &mut b] {
        let (outcomes, step) = play(sim, &mut store, 0.0, Want::Acquire, 3);
        assert!(matches!(outcomes[..], [Outcome::Read]), "{outcomes:?}");
        assert!(matches!(step, Step::Wait(Waiting::Coordinated { .. })));
    }
    controller(&mut store, Some("a"), None);
    see(&mut a, &store, 1.0);
    see(&mut b, &store, 1.0);
    let (outcomes, _) = play(&mut a, &mut store, 1.0, Want::Acquire, 3);
    assert!(matches!(outcomes[..], [Outcome::Acquired { token: 1 }]));
    let (outcomes, step) = play(&mut b, &mut store, 1.0, Want::Acquire, 3);
    assert!(outcomes.is_empty() && matches!(step, Step::Wait(Waiting::Coordinated { .. })));

    controller(&mut store, Some("a"), Some("b"));
    see(&mut a, &store, 2.0);
    see(&mut b, &store, 2.0);
    assert_eq!(
        a.next(2.0, Want::Keep),
        Step::StepDown(StepDownReason::PreferredHolder { holder: "b".into() })
    );
    let (outcomes, _) = play(&mut a, &mut store, 2.0, Want::Release, 3);
    assert!(matches!(outcomes[..], [Outcome::Released]), "{outcomes:?}");
    let released = store.lease.clone().unwrap();
    assert_eq!(released.record.holder(), None);
    see(&mut b, &store, 2.0);
    let (outcomes, _) = play(&mut b, &mut store, 2.0, Want::Acquire, 3);
    assert!(
        outcomes.is_empty(),
        "b waits for the controller: {outcomes:?}"
    );

    controller(&mut store, Some("b"), None);
    see(&mut a, &store, 3.0);
    see(&mut b, &store, 3.0);
    let (outcomes, _) = play(&mut b, &mut store, 3.0, Want::Acquire, 3);
    assert!(
        matches!(outcomes[..], [Outcome::Acquired { token: 2 }]),
        "{outcomes:?}"
    );
    let (outcomes, step) = play(&mut a, &mut store, 3.0, Want::Acquire, 3);
    assert!(outcomes.is_empty() && matches!(step, Step::Wait(Waiting::Coordinated { .. })));
}

// ---- fencing and versions ---------------------------------------------------------------

#[test]
fn fencing_tokens_successive_acquisitions_have_strictly_increasing_tokens() {
    let mut store = Cas::default();
    let mut a = Sim::with_identity("a");
    let mut b = Sim::with_identity("b");
    let mut tokens = Vec::new();
    let mut t = 0.0;
    for round in 0..6 {
        let (me, _) = if round % 2 == 0 {
            (&mut a, &mut b)
        } else {
            (&mut b, &mut a)
        };
        me.m.refresh();
        let (outcomes, _) = play(me, &mut store, t, Want::Acquire, 4);
        let token = outcomes
            .iter()
            .find_map(|o| match o {
                Outcome::Acquired { token } => Some(*token),
                _ => None,
            })
            .expect("acquired");
        tokens.push(token);
        play(me, &mut store, t, Want::Release, 2);
        t += 1.0;
    }
    assert!(tokens.windows(2).all(|p| p[0] < p[1]), "{tokens:?}");
}

#[test]
fn watched_versions_are_ordered_numerically() {
    assert!(is_newer("10", Some("9")));
    assert!(!is_newer("9", Some("10")));
    assert!(!is_newer("9", Some("9")));
    assert!(is_newer("1", None));
    assert!(is_newer("b", Some("a")), "non-numeric: anything different");
    assert!(!is_newer("a", Some("a")));
    // Numbers of any length, leading zeros, the same number spelled twice.
    assert!(is_newer(
        "100000000000000000000",
        Some("99999999999999999999")
    ));
    assert!(!is_newer(
        "99999999999999999999",
        Some("100000000000000000000")
    ));
    assert!(is_newer("12", Some("011")));
    assert!(!is_newer("011", Some("12")));
    assert!(!is_newer("007", Some("7")));
    assert!(!is_newer("0", Some("0")));
    assert!(is_newer("1", Some("0")));
    assert!(is_newer("21", Some("12")), "same length: by digits");
    assert!(!is_newer("12", Some("21")));
    // A sign or a space is not a number: compared for equality only.
    assert!(is_newer("+5", Some("6")));
    assert!(is_newer("", Some("1")));
}

// ---- scenarios against a compare-and-swap store -----------------------------------------

/// The API server's semantics for one lease, enough for the machine.
#[derive(Default)]
struct Cas {
    lease: Option<StoredLease>,
    revision: u64,
    writes: u64,
}

impl Cas {
    fn apply(&mut self, call: &Call) -> Result<StoredLease, StoreError> {
        let commit = |this: &mut Cas, record: &LeaseRecord| {
            this.revision += 1;
            this.writes += 1;
            let stored = StoredLease {
                name: "s.election.x".into(),
                record: record.clone(),
                resource_version: this.revision.to_string(),
                uid: None,
            };
            this.lease = Some(stored.clone());
            Ok(stored)
        };
        match &call.request {
            Request::Get => self.lease.clone().ok_or(StoreError::NotFound {
                lease: "ns/x".into(),
            }),
            Request::Create(record) => match self.lease {
                Some(_) => Err(StoreError::AlreadyExists {
                    lease: "ns/x".into(),
                }),
                None => commit(self, record),
            },
            Request::Replace { record, version } => match &self.lease {
                Some(current) if current.resource_version == *version => commit(self, record),
                Some(_) => Err(conflict()),
                None => Err(StoreError::NotFound {
                    lease: "ns/x".into(),
                }),
            },
        }
    }
}

/// Drives `sim` against `store` at instant `t` for up to `steps` calls, answering each at
/// once. Returns the outcomes and the step it stopped at.
fn play(sim: &mut Sim, store: &mut Cas, t: f64, want: Want, steps: usize) -> (Vec<Outcome>, Step) {
    let mut outcomes = Vec::new();
    for _ in 0..steps {
        match sim.next(t, want) {
            Step::Call(call) => {
                let result = store.apply(&call);
                outcomes.push(sim.answer(t, result));
            }
            other => return (outcomes, other),
        }
    }
    let last = sim.next(t, want);
    (outcomes, last)
}

#[test]
fn one_identity_two_processes_with_one_identity_never_hold_together() {
    // A misconfiguration (or a force-deleted StatefulSet pod still running): both think the
    // record naming "me" is theirs. The old rule took it back at once and the two flipped it
    // 841 times in 3 s. Now the superseded one waits for expiry: one more term, not hundreds.
    let mut store = Cas::default();
    let mut p1 = Sim::new();
    let mut p2 = Sim::new();
    let mut terms = 0;
    let mut t = 0.0;
    while t < 60.0 {
        for p in [&mut p1, &mut p2] {
            // Each sees every write (a watch), then acts.
            if let Some(current) = store.lease.clone() {
                p.m.on_watch(p.at(t), Ok(WatchEvent::Applied(current)));
            }
            let (outcomes, _) = play(p, &mut store, t, Want::Acquire, 3);
            terms += outcomes
                .iter()
                .filter(|o| matches!(o, Outcome::Acquired { .. }))
                .count();
        }
        t += 0.1;
    }
    // p1 acquires; p2 (fresh) sees its "own" record change every renewal: a twin. It never
    // takes it (rule `one-identity`): one term, and p2 reports the twin.
    assert_eq!(terms, 1, "terms in 60 s");
    assert!(
        p2.m.take_alerts()
            .iter()
            .any(|a| matches!(a, Alert::Twin { .. })),
        "the twin is reported"
    );
    assert!(store.writes < 60, "{} writes: renewals only", store.writes);
}

// ---- handoff ----------------------------------------------------------------------------

#[test]
fn a_handoff_release_names_the_successor_and_keeps_the_token_order() {
    let mut w = Sim::new();
    w.hold(0.0, 4);
    w.m.hand_off_to(Some("pod-b".into()));
    assert_eq!(w.m.successor(), Some("pod-b"));
    let call = w.call(0.5, Want::Release);
    assert_eq!(call.op, Op::Release);
    let record = record_of(&call);
    assert_eq!(record.holder(), None, "a release: no holder");
    assert_eq!(record.handed_to(), Some("pod-b"));
    assert_eq!(
        record.lease_transitions,
        Some(4),
        "the successor's token will be 5"
    );
    assert_eq!(
        record.lease_duration_seconds,
        Some(15),
        "the grace others give the successor: one lease duration"
    );
    let stored = written(&call, "9");
    assert!(matches!(w.answer(0.6, Ok(stored)), Outcome::Released));
    assert_eq!(w.m.successor(), None, "done");
    assert!(!w.m.holding());
}

#[test]
fn a_plain_release_names_no_successor_and_settles_requests() {
    let mut w = Sim::new();
    w.hold(0.0, 1);
    let mut requested = versioned(Some(ME), Some(15), Some(1), "9");
    requested.record.handoff_request = Some(OTHER.into());
    w.m.on_watch(w.at(0.2), Ok(WatchEvent::Applied(requested)));
    let call = w.call(0.5, Want::Release);
    assert_eq!(based_on(&call), "9");
    let record = record_of(&call);
    assert_eq!(record.successor, None);
    assert_eq!(record.handoff_request, None);
    assert_eq!(
        record.lease_duration_seconds,
        Some(1),
        "as client-go releases"
    );
}

#[test]
fn the_successor_takes_a_handed_off_lease_at_once_others_wait_one_lease_duration() {
    let mut handed = lease(None, Some(15), Some(4));
    handed.record.successor = Some("pod-b".into());
    // The successor: free for it, acquired at once with the next token.
    let mut b = Sim::with_identity("pod-b");
    b.read(0.0, Want::Acquire, Some(handed.clone()));
    let call = b.call(0.0, Want::Acquire);
    assert_eq!(call.op, Op::Acquire);
    let record = record_of(&call);
    assert_eq!(record.lease_transitions, Some(5));
    assert_eq!(
        record.successor, None,
        "the acquisition settles the handoff"
    );
    // Anyone else (the old leader included): waits out the grace, then contends.
    let mut c = Sim::with_identity("pod-c");
    c.read(0.0, Want::Acquire, Some(handed));
    assert_eq!(
        c.wait(0.1, Want::Acquire),
        Waiting::Backoff { until: c.at(15.0) }
    );
    assert_eq!(
        c.call(15.0, Want::Acquire).op,
        Op::Acquire,
        "a dead successor blocks nobody longer"
    );
}

#[test]
fn a_handoff_requested_on_the_lease_is_reported_to_its_holder_only() {
    let mut w = Sim::new();
    w.hold(0.0, 1);
    assert_eq!(w.m.handoff_requested(), None);
    let mut requested = versioned(Some(ME), Some(15), Some(1), "9");
    requested.record.handoff_request = Some("pod-b".into());
    assert!(w.m.on_watch(w.at(1.0), Ok(WatchEvent::Applied(requested.clone()))));
    assert_eq!(
        w.m.handoff_requested(),
        Some("pod-b"),
        "still our term: carry it out"
    );
    w.m.hand_off_to(Some("pod-b".into()));
    assert_eq!(w.m.handoff_requested(), None, "under way");
    // A follower does not act on it.
    let mut f = Sim::with_identity(OTHER);
    f.read(0.0, Want::Acquire, Some(requested));
    assert_eq!(f.m.handoff_requested(), None);
}

#[test]
fn a_renewal_clears_a_request_naming_us_and_keeps_one_naming_someone_else() {
    for (request, kept) in [(ME, None), ("pod-b", Some("pod-b"))] {
        let mut w = Sim::new();
        w.hold(0.0, 1);
        let mut l = versioned(Some(ME), Some(15), Some(1), "9");
        l.record.handoff_request = Some(request.into());
        w.m.on_watch(w.at(0.5), Ok(WatchEvent::Applied(l)));
        let call = w.call(2.0, Want::Keep);
        assert_eq!(call.op, Op::Renew);
        assert_eq!(based_on(&call), "9");
        assert_eq!(
            record_of(&call).handoff_request.as_deref(),
            kept,
            "{request}"
        );
    }
}

#[test]
fn abandoning_or_resetting_forgets_the_successor() {
    let mut w = Sim::new();
    w.hold(0.0, 1);
    w.m.hand_off_to(Some("pod-b".into()));
    w.m.abandon();
    assert_eq!(w.m.successor(), None);
    let mut w = Sim::new();
    w.hold(0.0, 1);
    w.m.hand_off_to(Some("pod-b".into()));
    w.m.reset();
    assert_eq!(w.m.successor(), None);
}

#[test]
fn an_operators_records_release_by_the_same_rules_or_only_add_the_request() {
    let now = SystemTime::UNIX_EPOCH + s(1_000);
    let mut held = lease(Some(OTHER), Some(15), Some(4)).record;
    held.handoff_request = Some("someone".into());
    held.strategy = Some("example.com/s".into());
    let free = released(&held, now);
    assert_eq!(free.holder(), None);
    assert_eq!(free.lease_transitions, Some(4), "the next token is higher");
    assert_eq!(free.lease_duration_seconds, Some(1));
    assert_eq!((free.acquire_time, free.renew_time), (Some(now), Some(now)));
    assert_eq!(free.handoff_request, None, "settled");
    assert_eq!(free.strategy, held.strategy, "kept as found");
    let asked = with_handoff_request(&held, "pod-b");
    assert_eq!(asked.requested_handoff(), Some("pod-b"));
    assert_eq!(
        LeaseRecord {
            handoff_request: held.handoff_request.clone(),
            ..asked
        },
        held,
        "nothing else changes"
    );
}

// ---- operator actions: deletes, edits, force releases, restores (issue 23) ---------------

#[test]
fn token_never_back_a_deleted_lease_is_created_above_every_token_seen() {
    // We saw the lease at token 6, free (released): a delete of a free lease frees it at
    // once, but the create carries 7, not 0.
    let mut w = Sim::new();
    w.read(0.0, Want::Acquire, Some(lease(None, Some(1), Some(6))));
    assert!(w.m.on_watch(
        w.at(0.5),
        Ok(WatchEvent::Deleted {
            name: "s.election.x".into()
        })
    ));
    w.read(0.5, Want::Acquire, None);
    let call = w.call(0.5, Want::Acquire);
    assert_eq!(call.op, Op::Create);
    assert_eq!(record_of(&call).lease_transitions, Some(7));
    assert_eq!(w.m.token_floor(), Some(6));
}

#[test]
fn token_never_back_an_edit_that_lowers_transitions_never_lowers_the_next_token() {
    let mut w = Sim::new();
    w.read(
        0.0,
        Want::Acquire,
        Some(versioned(Some(OTHER), Some(15), Some(9), "7")),
    );
    // An administrator's `kubectl apply` resets the transitions (and the holder is gone).
    let edited = versioned(None, Some(1), Some(0), "8");
    assert!(w.m.on_watch(w.at(1.0), Ok(WatchEvent::Applied(edited))));
    let call = w.call(1.0, Want::Acquire);
    assert_eq!(record_of(&call).lease_transitions, Some(10), "above 9");
    let stored = written(&call, "9");
    assert!(matches!(
        w.answer(1.0, Ok(stored)),
        Outcome::Acquired { token: 10 }
    ));
}

#[test]
fn token_never_back_a_new_machine_starts_from_the_floor_its_process_knows() {
    let mut w = Sim::new();
    w.m.raise_floor(41);
    w.m.raise_floor(3);
    assert_eq!(w.m.token_floor(), Some(41), "never lowered");
    w.read(0.0, Want::Acquire, None);
    // (Missing, though the process saw it: it may have been held when it was deleted.)
    assert_eq!(
        w.wait(0.0, Want::Acquire),
        Waiting::Backoff { until: w.at(15.0) }
    );
    let call = w.call(15.0, Want::Acquire);
    assert_eq!(record_of(&call).lease_transitions, Some(42));
    // A lease never seen by anyone of this process starts at 0 (the documented limit: the
    // server-side Lease guard covers a process that never saw the old Lease).
    let mut fresh = Sim::new();
    fresh.read(0.0, Want::Acquire, None);
    let call = fresh.call(0.0, Want::Acquire);
    assert_eq!(record_of(&call).lease_transitions, Some(0));
}

#[test]
fn deleted_held_waits_a_deleted_lease_that_was_held_expires_a_lease_after_the_delete() {
    let mut w = Sim::new();
    w.read(
        0.0,
        Want::Acquire,
        Some(versioned(Some(OTHER), Some(15), Some(6), "7")),
    );
    // Renewed at 4 s; deleted by an administrator at 5 s. The holder may be cut off and
    // still live until its renew deadline, and it may have renewed unseen just before the
    // delete: not free before 5 + 15 = 20 s.
    let renewed = versioned(Some(OTHER), Some(15), Some(6), "8");
    assert!(w.m.on_watch(w.at(4.0), Ok(WatchEvent::Applied(renewed))));
    assert!(w.m.on_watch(
        w.at(5.0),
        Ok(WatchEvent::Deleted {
            name: "s.election.x".into()
        })
    ));
    w.read(5.0, Want::Acquire, None);
    assert_eq!(
        w.wait(5.0, Want::Acquire),
        Waiting::Backoff { until: w.at(20.0) }
    );
    // An actor restart forgets the observation, not the vanished holder.
    w.m.reset();
    w.read(6.0, Want::Acquire, None);
    assert!(matches!(
        w.next(19.9, Want::Acquire),
        Step::Wait(Waiting::Backoff { .. })
    ));
    let call = w.call(20.0, Want::Acquire);
    assert_eq!(call.op, Op::Create);
    assert_eq!(record_of(&call).lease_transitions, Some(7), "not 0");
}

#[test]
fn deleted_held_waits_renewals_unseen_during_a_gap_count_up_to_the_delete() {
    // Seed 406 of tests/safety.rs: a candidate saw the holder's record at 0 s, then its calls
    // stalled while the holder renewed; the Lease was deleted at 100 s and the candidate's
    // next read found it missing. The last change it saw (0 s) says nothing of the
    // renewals it missed: the holder may have renewed at 99 s and be live until its deadline.
    let mut w = Sim::new();
    w.read(
        0.0,
        Want::Acquire,
        Some(versioned(Some(OTHER), Some(15), Some(6), "7")),
    );
    // By our observation it expired at 15 s: our acquisition stalls and times out.
    let call = w.call(15.0, Want::Acquire);
    assert_eq!(call.op, Op::Acquire);
    assert!(matches!(
        w.answer(
            25.0,
            Err(StoreError::Timeout {
                operation: "acquire".into(),
                after: s(10),
            })
        ),
        Outcome::Retry { .. }
    ));
    w.read(100.0, Want::Acquire, None);
    assert_eq!(
        w.wait(100.0, Want::Acquire),
        Waiting::Backoff { until: w.at(115.0) }
    );
    let call = w.call(115.0, Want::Acquire);
    assert_eq!(call.op, Op::Create);
    assert_eq!(record_of(&call).lease_transitions, Some(7));
}

#[test]
fn deleted_held_waits_our_own_deleted_lease_is_not_recreated_at_once() {
    let mut w = Sim::new();
    w.hold(0.0, 3);
    assert!(w.m.on_watch(
        w.at(1.0),
        Ok(WatchEvent::Deleted {
            name: "s.election.x".into()
        })
    ));
    w.read(1.0, Want::Acquire, None);
    assert_eq!(
        w.next(1.0, Want::Acquire),
        Step::StepDown(StepDownReason::LeaseDeleted)
    );
    assert_eq!(
        w.wait(1.0, Want::Acquire),
        Waiting::Backoff { until: w.at(15.0) }
    );
    let call = w.call(15.0, Want::Acquire);
    assert_eq!(record_of(&call).lease_transitions, Some(4));
}

#[test]
fn operator_release_grace_a_force_released_lease_is_left_for_the_declared_duration() {
    let mut w = Sim::new();
    w.read(
        0.0,
        Want::Acquire,
        Some(versioned(Some(OTHER), Some(15), Some(6), "7")),
    );
    let forced = StoredLease {
        record: force_released(&lease(Some(OTHER), Some(15), Some(6)).record, s(15), w.wall),
        ..versioned(None, None, None, "8")
    };
    assert_eq!(forced.record.holder(), None);
    assert_eq!(forced.record.lease_duration_seconds, Some(15));
    assert_eq!(forced.record.lease_transitions, Some(6));
    assert!(w.m.on_watch(w.at(3.0), Ok(WatchEvent::Applied(forced))));
    assert_eq!(
        w.wait(3.0, Want::Acquire),
        Waiting::Backoff { until: w.at(18.0) }
    );
    let call = w.call(18.0, Want::Acquire);
    assert_eq!(record_of(&call).lease_transitions, Some(7));
    // The immediate variant (and any holder's own release) declares one second: free at once.
    let mut now = Sim::new();
    now.read(0.0, Want::Acquire, Some(lease(None, Some(1), Some(6))));
    assert_eq!(now.call(0.0, Want::Acquire).op, Op::Acquire);
    // So does the Go package's unlock, which clears the duration.
    let mut go = Sim::new();
    go.read(0.0, Want::Acquire, Some(lease(None, None, Some(6))));
    assert_eq!(go.call(0.0, Want::Acquire).op, Op::Acquire);
}

#[test]
fn operator_release_grace_an_edit_that_clears_the_holder_is_left_for_its_duration() {
    // `kubectl edit` removing holderIdentity keeps the 15 s duration: the holder may not have
    // noticed yet.
    let mut w = Sim::new();
    w.read(
        0.0,
        Want::Acquire,
        Some(versioned(Some(OTHER), Some(15), Some(2), "7")),
    );
    let mut cleared = versioned(None, Some(15), Some(2), "8");
    cleared.record.renew_time = Some(w.wall);
    assert!(w.m.on_watch(w.at(2.0), Ok(WatchEvent::Applied(cleared))));
    assert_eq!(
        w.wait(2.0, Want::Acquire),
        Waiting::Backoff { until: w.at(17.0) }
    );
    // A Lease created free (never held: no acquire or renew time) is free at once, whatever
    // duration it declares.
    let mut fresh = Sim::new();
    fresh.read(0.0, Want::Acquire, Some(lease(None, Some(5), Some(0))));
    assert_eq!(fresh.call(0.0, Want::Acquire).op, Op::Acquire);
}

#[test]
fn operator_release_grace_the_holder_of_a_force_released_lease_steps_down() {
    let mut w = Sim::new();
    w.hold(0.0, 2);
    let forced = StoredLease {
        record: force_released(&lease(Some(ME), Some(15), Some(2)).record, s(15), w.wall),
        ..versioned(None, None, None, "9")
    };
    assert!(w.m.on_watch(w.at(1.0), Ok(WatchEvent::Applied(forced))));
    assert_eq!(
        w.next(1.0, Want::Acquire),
        Step::StepDown(StepDownReason::Superseded { holder: None })
    );
}

#[test]
fn one_identity_an_edit_naming_a_live_replica_is_not_taken_before_a_renew_deadline() {
    // An administrator writes our name as holder (or a twin did): we did not write it, so it
    // is taken only once unchanged for a renew deadline, by which its real writer's term is
    // over.
    let mut w = Sim::new();
    w.read(
        0.0,
        Want::Acquire,
        Some(versioned(Some(OTHER), Some(15), Some(2), "7")),
    );
    let edited = versioned(Some(ME), Some(15), Some(2), "8");
    assert!(w.m.on_watch(w.at(1.0), Ok(WatchEvent::Applied(edited))));
    assert_eq!(
        w.wait(1.0, Want::Acquire),
        Waiting::Following {
            holder: ME.into(),
            until: w.at(11.0)
        }
    );
    let call = w.call(11.0, Want::Acquire);
    assert_eq!(record_of(&call).lease_transitions, Some(3));
}

#[test]
fn restore_resync_a_read_older_than_what_was_seen_is_taken_as_the_truth() {
    // We hold at version 9 with token 5; etcd is restored to a snapshot where the lease is at
    // version 4, held by OTHER with token 3. Our renewal conflicts; the re-read, sent after we
    // saw version 9, answers version 4: the store went back.
    let mut w = Sim::new();
    w.hold(0.0, 5);
    let call = w.call(2.0, Want::Keep);
    assert_eq!(call.op, Op::Renew);
    assert!(matches!(w.answer(2.1, Err(conflict())), Outcome::Conflict));
    let restored = versioned(Some(OTHER), Some(15), Some(3), "4");
    w.read(2.2, Want::Keep, Some(restored));
    let alerts = w.m.take_alerts();
    assert_eq!(
        alerts,
        vec![Alert::VersionsWentBack {
            seen: "8".into(),
            now: "4".into()
        }]
    );
    assert_eq!(
        w.next(2.2, Want::Acquire),
        Step::StepDown(StepDownReason::Superseded {
            holder: Some(OTHER.into())
        })
    );
    // OTHER's restored record expires a lease duration after we first saw it; then we take
    // it with a token above everything we ever saw (5), not above the restored 3.
    assert!(matches!(
        w.next(17.1, Want::Acquire),
        Step::Wait(Waiting::Following { .. })
    ));
    let call = w.call(17.2, Want::Acquire);
    assert_eq!(record_of(&call).lease_transitions, Some(6));
}

#[test]
fn restore_resync_a_read_that_a_watch_event_overtook_is_still_ignored() {
    // The read was sent before the watch brought version 9: its older answer is no restore.
    let mut w = Sim::new();
    w.read(
        0.0,
        Want::Acquire,
        Some(versioned(Some(OTHER), Some(15), Some(1), "7")),
    );
    w.m.refresh();
    let call = w.call(1.0, Want::Acquire);
    assert_eq!(call.op, Op::Read);
    let newer = versioned(Some(OTHER), Some(15), Some(1), "9");
    assert!(w.m.on_watch(w.at(1.5), Ok(WatchEvent::Applied(newer))));
    assert!(matches!(
        w.answer(2.0, Ok(versioned(Some(OTHER), Some(15), Some(1), "8"))),
        Outcome::Read
    ));
    assert!(w.m.take_alerts().is_empty());
    assert_eq!(w.m.lease().unwrap().resource_version, "9");
}

// ---- a lost acquisition reply (rule `lost-reply-recognised`) ------------------------------

/// A read at `t` (expects it, whatever is wanted) answered with `stored`; the outcome.
fn read_answer(w: &mut Sim, t: f64, want: Want, stored: StoredLease) -> Outcome {
    let call = w.call(t, want);
    assert_eq!(call.op, Op::Read, "{call:?}");
    w.answer(t, Ok(stored))
}

#[test]
fn lost_reply_recognised_an_acquisition_that_landed_is_a_term_from_when_it_was_sent() {
    let mut w = Sim::new();
    w.read(0.0, Want::Acquire, Some(lease(None, None, Some(4))));
    let call = w.call(0.0, Want::Acquire);
    assert_eq!(call.op, Op::Acquire);
    let landed = written(&call, "8");
    assert!(matches!(
        w.answer(0.5, Err(unavailable())),
        Outcome::Retry { .. }
    ));
    assert!(!w.m.holding());
    // The next step is a read (after the backoff), not a second acquisition that would
    // burn a token.
    let Waiting::Backoff { until } = w.wait(0.5, Want::Acquire) else {
        panic!("backs off first");
    };
    let t = until.duration_since(w.t0).as_secs_f64();
    assert!(matches!(
        read_answer(&mut w, t, Want::Acquire, landed),
        Outcome::Acquired { token: 5 }
    ));
    assert!(w.m.holding());
    assert_eq!(
        w.m.deadline(),
        Some(w.at(10.0)),
        "counted from when the write was sent"
    );
}

#[test]
fn lost_reply_recognised_one_nobody_wants_any_more_is_read_and_released() {
    // The caller went away (a dropped `try_lock`, a semaphore that took another slot): the
    // write that landed is released, not left naming us until it expires.
    let mut w = Sim::new();
    w.read(0.0, Want::Acquire, None);
    let call = w.call(0.0, Want::Acquire);
    assert_eq!(call.op, Op::Create);
    let landed = written(&call, "1");
    // It timed out, past the renew deadline: no term can be handed out for it any more.
    assert!(matches!(
        w.answer(
            10.0,
            Err(StoreError::Timeout {
                operation: "create".into(),
                after: s(10),
            })
        ),
        Outcome::Retry { .. }
    ));
    let Waiting::Backoff { until } = w.wait(10.0, Want::Keep) else {
        panic!("reads after the backoff, though nobody wants the lease");
    };
    let t = until.duration_since(w.t0).as_secs_f64();
    assert!(matches!(
        read_answer(&mut w, t, Want::Keep, landed),
        Outcome::Read
    ));
    assert!(w.m.holding(), "a claim, only to release it");
    let release = w.call(t, Want::Release);
    assert_eq!(release.op, Op::Release);
    assert_eq!(based_on(&release), "1");
    assert_eq!(record_of(&release).holder(), None);
}

#[test]
fn lost_reply_recognised_only_our_own_write_not_a_twins_or_anyone_elses() {
    for (what, stored) in [
        (
            "someone else took it",
            versioned(Some(OTHER), Some(15), Some(5), "8"),
        ),
        // A twin with our identity, from the same record: same token, another instant.
        ("a twin took it", {
            let mut twin = versioned(Some(ME), Some(15), Some(5), "8");
            twin.record.acquire_time = Some(SystemTime::UNIX_EPOCH + s(1_600_000_000));
            twin
        }),
        ("it did not land", lease(None, None, Some(4))),
    ] {
        let mut w = Sim::new();
        w.read(0.0, Want::Acquire, Some(lease(None, None, Some(4))));
        let call = w.call(0.0, Want::Acquire);
        assert_eq!(call.op, Op::Acquire);
        w.answer(0.5, Err(unavailable()));
        let Waiting::Backoff { until } = w.wait(0.5, Want::Keep) else {
            panic!("{what}: reads after the backoff");
        };
        let t = until.duration_since(w.t0).as_secs_f64();
        assert!(
            matches!(read_answer(&mut w, t, Want::Keep, stored), Outcome::Read),
            "{what}"
        );
        assert!(!w.m.holding(), "{what}");
        assert_eq!(
            w.wait(t, Want::Keep),
            Waiting::Idle,
            "{what}: settled, idle"
        );
    }
}
