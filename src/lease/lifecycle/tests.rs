//! The term lifecycle's rules, one plain `#[test]` per rule: events in, the effect list out.
//! Test names carry the rule ids of the README's "Safety rules".

use std::time::{Duration, Instant};

use super::*;
use crate::record::LeaseRecord;
use crate::store::LeaseKey;

const DRAIN: Duration = Duration::from_secs(30);

/// One lifecycle and the facts the machine would give it.
struct World {
    l: Lifecycle,
    t0: Instant,
    holding: bool,
    in_flight: bool,
    record: Option<LeaseRecord>,
    next_token: i32,
}

impl World {
    fn new() -> Self {
        World {
            l: Lifecycle::new(DRAIN),
            t0: Instant::now(),
            holding: false,
            in_flight: false,
            record: None,
            next_token: 1,
        }
    }

    fn at(&self, secs: u64) -> Instant {
        self.t0 + Duration::from_secs(secs)
    }

    fn facts(&self) -> Facts<'_> {
        Facts {
            identity: "me",
            holding: self.holding,
            in_flight: self.in_flight,
            record: self.record.as_ref(),
        }
    }

    fn on(&mut self, secs: u64, event: Event) -> Vec<String> {
        let now = self.at(secs);
        let facts = Facts {
            identity: "me",
            holding: self.holding,
            in_flight: self.in_flight,
            record: self.record.as_ref(),
        };
        let mut fx = Vec::new();
        self.l.handle(now, event, &facts, &mut fx);
        describe(&fx)
    }

    fn settle(&mut self, secs: u64) -> Vec<String> {
        let now = self.at(secs);
        let facts = Facts {
            identity: "me",
            holding: self.holding,
            in_flight: self.in_flight,
            record: self.record.as_ref(),
        };
        let mut fx = Vec::new();
        self.l.settle(now, &facts, &mut fx);
        describe(&fx)
    }

    fn want(&self, face_wants: bool) -> Want {
        self.l.want(&self.facts(), face_wants)
    }

    /// The stopped term's work returns and its release is written: the stop is answered.
    fn finish_stop(&mut self, secs: u64, term: &Term) {
        self.on(secs, Event::Drained(term.id()));
        self.holding = false;
        self.on(secs, Event::Released);
        assert_eq!(self.settle(secs), ["deregister", "answer_stop(Done)"]);
    }

    /// Acquires and grants a term (the actor's part done by hand).
    fn serve(&mut self) -> Term {
        self.holding = true;
        assert_eq!(self.on(0, Event::Acquired), ["offer_term"]);
        let token = self.next_token;
        self.next_token += 1;
        let term = Term::new(LeaseKey::new("ns", "l"), "me".into(), token, self.at(3600));
        assert!(self.on(0, Event::Granted(term.clone())).is_empty());
        assert_eq!(self.l.term().map(Term::id), Some(term.id()));
        term
    }
}

/// A compact, comparable spelling of an effect list.
fn describe(effects: &[Effect]) -> Vec<String> {
    effects
        .iter()
        .map(|effect| match effect {
            Effect::Cancel(_) => "cancel".into(),
            Effect::MarkLost(_) => "mark_lost".into(),
            Effect::TellFace(_, reason) => format!("tell_face({reason:?})"),
            Effect::WatchDrain(_) => "watch_drain".into(),
            Effect::OfferTerm => "offer_term".into(),
            Effect::ReplyStop(o) => format!("reply_stop({o:?})"),
            Effect::AwaitStop => "await_stop".into(),
            Effect::AnswerStop(o) => format!("answer_stop({o:?})"),
            Effect::ReplyHandoff(o) => format!("reply_handoff({o:?})"),
            Effect::AwaitHandoff => "await_handoff".into(),
            Effect::AnswerHandoff { to, outcome } => format!("answer_handoff({to}, {outcome:?})"),
            Effect::Retire => "retire".into(),
            Effect::Deregister => "deregister".into(),
            Effect::Abandon => "abandon".into(),
            Effect::Restart => "restart".into(),
        })
        .collect()
}

fn to(name: &str) -> Event {
    Event::HandOff { to: name.into() }
}

fn refusal() -> StoreError {
    StoreError::Invalid {
        lease: "ns/l".into(),
        message: "refused".into(),
    }
}

#[test]
fn holder_steps_down_first_a_step_down_cancels_and_marks_lost_before_anything_else() {
    let mut w = World::new();
    let term = w.serve();
    let fx = w.on(1, Event::StepDown(StepDownReason::RenewDeadlineExceeded));
    assert_eq!(
        fx,
        [
            "cancel",
            "mark_lost",
            "tell_face(Lost(RenewDeadlineExceeded))",
            "watch_drain"
        ]
    );
    assert!(w.l.term().is_none());
    assert_eq!(w.l.current().map(Term::id), Some(term.id()), "draining");
    // While its work drains, nothing is released and nothing acquired.
    w.holding = false;
    assert_eq!(w.want(true), Want::Keep);
    assert!(w.on(2, Event::Drained(term.id())).is_empty());
    assert_eq!(w.want(true), Want::Acquire);
}

#[test]
fn drain_then_release_a_stop_cancels_drains_and_only_then_releases() {
    let mut w = World::new();
    let term = w.serve();
    let fx = w.on(1, Event::Stop { from_work: false });
    assert_eq!(
        fx,
        [
            "await_stop",
            "retire",
            "cancel",
            "tell_face(Stopped)",
            "watch_drain"
        ]
    );
    assert_eq!(
        w.want(false),
        Want::Keep,
        "no release while the work drains"
    );
    assert!(w.settle(2).is_empty(), "not finished while held");
    w.on(3, Event::Drained(term.id()));
    assert_eq!(w.want(false), Want::Release);
    w.in_flight = true;
    assert!(w.settle(3).is_empty(), "the release is in flight");
    w.in_flight = false;
    w.holding = false;
    assert!(w.on(4, Event::Released).is_empty());
    assert_eq!(w.settle(4), ["deregister", "answer_stop(Done)"]);
    assert!(w.l.is_stopped());
    // A later stop gets the same answer at once.
    assert_eq!(
        w.on(5, Event::Stop { from_work: false }),
        ["reply_stop(Done)"]
    );
}

#[test]
fn never_give_up_a_stop_from_the_work_is_deferred_and_still_completes() {
    let mut w = World::new();
    let term = w.serve();
    let fx = w.on(1, Event::Stop { from_work: true });
    assert_eq!(fx[0], "reply_stop(Deferred)");
    assert_eq!(
        w.on(1, Event::Stop { from_work: true }),
        ["reply_stop(Deferred)"]
    );
    assert_eq!(w.on(1, Event::Stop { from_work: false }), ["await_stop"]);
    w.finish_stop(2, &term);
}

#[test]
fn never_give_up_a_stop_whose_release_failed_says_why() {
    let mut w = World::new();
    let term = w.serve();
    w.on(1, Event::Stop { from_work: false });
    w.on(1, Event::Drained(term.id()));
    assert_eq!(
        w.on(
            2,
            Event::ReleaseFailed {
                error: refusal(),
                transient: false
            }
        ),
        ["abandon"]
    );
    w.holding = false;
    let fx = w.settle(2);
    assert_eq!(fx.len(), 2);
    assert!(fx[1].starts_with("answer_stop(NotReleased("), "{fx:?}");
}

#[test]
fn drain_then_release_a_stop_whose_drain_times_out_writes_nothing_and_says_so() {
    let mut w = World::new();
    let term = w.serve();
    w.on(10, Event::Stop { from_work: false });
    assert_eq!(w.l.drain_deadline(), Some(w.at(10) + DRAIN));
    assert!(w.settle(39).is_empty());
    assert_eq!(w.settle(40), ["mark_lost", "abandon"]);
    w.holding = false;
    assert_eq!(
        w.settle(40),
        ["deregister", "answer_stop(DrainTimeout { after: 30s })"]
    );
    // The abandoned work returning later changes nothing.
    assert!(w.on(50, Event::Drained(term.id())).is_empty());
}

#[test]
fn drain_then_release_no_new_term_while_abandoned_work_runs() {
    let mut w = World::new();
    let term = w.serve();
    w.on(0, to("pod-b"));
    assert_eq!(
        w.settle(30),
        [
            "mark_lost",
            "abandon",
            "answer_handoff(pod-b, DrainTimeout(30s))"
        ]
    );
    w.holding = false;
    assert_eq!(w.want(true), Want::Keep, "its work still runs");
    w.on(31, Event::Drained(term.id()));
    assert_eq!(w.want(true), Want::Acquire);
    // And a later stop is a plain stop: nothing of the old handoff or drain is left.
    let term = w.serve();
    w.on(100, Event::Stop { from_work: false });
    assert_eq!(w.l.drain_deadline(), Some(w.at(100) + DRAIN));
    w.finish_stop(101, &term);
}

#[test]
fn handoff_ends_with_its_term_success_names_the_successor_then_forgets_it() {
    let mut w = World::new();
    let term = w.serve();
    assert_eq!(
        w.on(1, to("pod-b")),
        [
            "await_handoff",
            "cancel",
            "tell_face(HandedOff { to: \"pod-b\" })",
            "watch_drain"
        ]
    );
    assert_eq!(w.l.successor().map(|s| &**s), Some("pod-b"));
    assert_eq!(w.on(1, to("pod-b")), ["await_handoff"], "joins");
    assert_eq!(
        w.on(1, to("pod-c")),
        ["reply_handoff(InProgress(\"pod-b\"))"]
    );
    w.on(2, Event::Drained(term.id()));
    assert_eq!(w.want(true), Want::Release);
    w.holding = false;
    assert_eq!(w.on(3, Event::Released), ["answer_handoff(pod-b, Done)"]);
    assert_eq!(w.l.successor(), None);
}

#[test]
fn handoff_ends_with_its_term_a_failed_release_leaves_no_successor() {
    let mut w = World::new();
    let term = w.serve();
    w.on(1, to("pod-b"));
    w.on(1, Event::Drained(term.id()));
    let fx = w.on(
        2,
        Event::ReleaseFailed {
            error: refusal(),
            transient: false,
        },
    );
    assert_eq!(fx[0], "abandon");
    assert!(
        fx[1].starts_with("answer_handoff(pod-b, NotReleased("),
        "{fx:?}"
    );
    assert_eq!(w.l.successor(), None, "a later release names nobody");
    w.holding = false;
    // The next term's stop is a plain stop, and handoffs are taken again.
    let term = w.serve();
    assert_eq!(w.l.successor(), None);
    assert_eq!(w.on(10, to("pod-c"))[0], "await_handoff");
    assert_eq!(w.l.successor().map(|s| &**s), Some("pod-c"));
    let _ = term;
}

#[test]
fn handoff_ends_with_its_term_a_lost_reply_is_judged_by_the_store() {
    let mut w = World::new();
    let term = w.serve();
    w.on(1, to("pod-b"));
    w.on(1, Event::Drained(term.id()));
    // The release timed out (landed or not); the retry conflicted; the re-read shows the
    // release naming the successor under our token: the handoff happened.
    w.on(
        2,
        Event::ReleaseFailed {
            error: StoreError::Timeout {
                operation: "release".into(),
                after: Duration::from_secs(1),
            },
            transient: true,
        },
    );
    w.in_flight = true;
    assert!(w.settle(3).is_empty(), "a read is on its way");
    w.in_flight = false;
    w.holding = false;
    w.record = Some(LeaseRecord {
        holder_identity: None,
        successor: Some("pod-b".into()),
        lease_transitions: Some(term.fencing_token()),
        ..LeaseRecord::default()
    });
    assert_eq!(w.settle(3), ["answer_handoff(pod-b, Done)"]);
}

#[test]
fn handoff_ends_with_its_term_the_successor_already_holding_is_done() {
    let mut w = World::new();
    let term = w.serve();
    w.on(1, to("pod-b"));
    w.on(1, Event::Drained(term.id()));
    w.holding = false;
    w.record = Some(LeaseRecord {
        holder_identity: Some("pod-b".into()),
        lease_transitions: Some(term.fencing_token() + 1),
        ..LeaseRecord::default()
    });
    let fx = w.on(
        2,
        Event::StepDown(StepDownReason::Superseded {
            holder: Some("pod-b".into()),
        }),
    );
    assert_eq!(fx, ["answer_handoff(pod-b, Done)"]);
}

#[test]
fn handoff_ends_with_its_term_a_lease_lost_during_the_drain_ends_the_handoff() {
    let mut w = World::new();
    let term = w.serve();
    w.on(1, to("pod-b"));
    // The renew deadline passes while the work drains.
    w.holding = false;
    let fx = w.on(5, Event::StepDown(StepDownReason::RenewDeadlineExceeded));
    assert_eq!(fx, ["mark_lost", "answer_handoff(pod-b, Lost)"]);
    assert_eq!(w.l.successor(), None);
    assert_eq!(
        w.l.drain_deadline(),
        None,
        "the drain is no longer bounded by it"
    );
    assert_eq!(w.want(true), Want::Keep, "the work still drains");
    w.on(6, Event::Drained(term.id()));
    // The next term is a plain one: its stop is not cut short by the old handoff's start.
    let term = w.serve();
    w.on(100, Event::Stop { from_work: false });
    assert_eq!(w.l.drain_deadline(), Some(w.at(100) + DRAIN));
    assert!(w.settle(101).is_empty());
    w.on(101, Event::Drained(term.id()));
    assert_eq!(w.want(true), Want::Release, "a plain release");
    assert_eq!(w.l.successor(), None);
}

#[test]
fn handoff_ends_with_its_term_refusals_and_bad_requests_are_answered_at_once() {
    let mut w = World::new();
    assert_eq!(w.on(0, to("pod-b")), ["reply_handoff(NotLeader)"]);
    w.serve();
    assert_eq!(w.on(0, to("me")), ["reply_handoff(Done)"]);
    w.record = Some(LeaseRecord {
        holder_identity: Some("me".into()),
        strategy: Some("OldestEmulationVersion".into()),
        ..LeaseRecord::default()
    });
    assert_eq!(w.on(0, to("pod-b")), ["reply_handoff(Coordinated)"]);
    w.record = None;
    w.on(1, Event::Stop { from_work: false });
    assert_eq!(w.on(1, to("pod-b")), ["reply_handoff(Stopped)"]);
}

#[test]
fn handoff_ends_with_its_term_a_stop_finishing_first_answers_it() {
    let mut w = World::new();
    let term = w.serve();
    w.on(1, to("pod-b"));
    w.on(2, Event::Stop { from_work: false });
    w.on(3, Event::Drained(term.id()));
    w.holding = false;
    // The release was lost with its reply, and the store shows nothing: lost, then stopped.
    let fx = w.settle(4);
    assert_eq!(
        fx,
        [
            "answer_handoff(pod-b, Lost)",
            "deregister",
            "answer_stop(Done)"
        ]
    );
}

#[test]
fn refusal_during_drain_marks_the_draining_term_lost_before_the_restart() {
    let mut w = World::new();
    let term = w.serve();
    w.on(1, to("pod-b"));
    let fx = w.on(2, Event::Refused { error: refusal() });
    assert_eq!(fx.len(), 3, "{fx:?}");
    assert_eq!(fx[0], "mark_lost");
    assert!(
        fx[1].starts_with("answer_handoff(pod-b, NotReleased("),
        "{fx:?}"
    );
    assert_eq!(fx[2], "restart");
    // The restart drops the claim; no new term while the work runs.
    assert_eq!(
        w.on(2, Event::Restarting),
        ["mark_lost"],
        "again: idempotent"
    );
    w.holding = false;
    assert_eq!(w.want(true), Want::Keep);
    w.on(3, Event::Drained(term.id()));
    assert_eq!(w.want(true), Want::Acquire);
}

#[test]
fn refusal_during_drain_of_a_preferred_holder_drain_marks_it_lost() {
    let mut w = World::new();
    w.serve();
    let fx = w.on(
        1,
        Event::StepDown(StepDownReason::PreferredHolder {
            holder: "pod-b".into(),
        }),
    );
    assert_eq!(
        fx,
        [
            "cancel",
            "tell_face(PreferredHolder { holder: \"pod-b\" })",
            "watch_drain"
        ],
        "not a loss: the claim is kept while the work drains"
    );
    assert_eq!(
        w.on(2, Event::Refused { error: refusal() }),
        ["mark_lost", "restart"]
    );
}

#[test]
fn refusal_while_serving_ends_the_term_as_lost_first() {
    let mut w = World::new();
    w.serve();
    assert_eq!(
        w.on(1, Event::Refused { error: refusal() }),
        [
            "cancel",
            "mark_lost",
            "tell_face(Restarted)",
            "watch_drain",
            "restart"
        ]
    );
}

#[test]
fn never_give_up_a_refusal_while_stopping_does_not_restart() {
    let mut w = World::new();
    let term = w.serve();
    w.on(1, Event::Stop { from_work: false });
    w.on(1, Event::Drained(term.id()));
    assert!(w.on(2, Event::Refused { error: refusal() }).is_empty());
}

#[test]
fn drain_then_release_a_grant_nobody_took_is_cancelled_and_released() {
    let mut w = World::new();
    w.holding = true;
    assert_eq!(w.on(0, Event::Acquired), ["offer_term"]);
    let term = Term::new(LeaseKey::new("ns", "l"), "me".into(), 1, w.at(60));
    assert_eq!(w.on(0, Event::NotTaken(term)), ["cancel"]);
    assert_eq!(w.want(false), Want::Release);
}

#[test]
fn drain_then_release_an_acquisition_racing_a_stop_starts_no_term() {
    let mut w = World::new();
    w.on(0, Event::Stop { from_work: false });
    w.holding = true;
    assert!(w.on(1, Event::Acquired).is_empty());
    assert_eq!(w.want(true), Want::Release);
}

#[test]
fn fencing_tokens_an_expired_term_never_comes_back_and_the_lease_goes() {
    let mut w = World::new();
    let term = w.serve();
    assert_eq!(w.l.renewed().map(Term::id), Some(term.id()));
    let fx = w.on(2, Event::Expired(term.id()));
    assert_eq!(
        fx,
        ["cancel", "mark_lost", "tell_face(Expired)", "watch_drain"]
    );
    w.on(2, Event::Drained(term.id()));
    assert_eq!(w.want(true), Want::Release);
}

#[test]
fn drain_then_release_work_panicked_and_grants_dropped_end_only_their_own_term() {
    let mut w = World::new();
    let old = w.serve();
    w.on(1, Event::GiveUp);
    w.on(1, Event::Drained(old.id()));
    w.holding = false;
    let term = w.serve();
    assert!(
        w.on(2, Event::WorkPanicked(old.id())).is_empty(),
        "an old term"
    );
    assert!(
        w.on(2, Event::GrantDropped(old.id())).is_empty(),
        "an old term"
    );
    assert_eq!(
        w.on(3, Event::WorkPanicked(term.id())),
        ["cancel", "tell_face(WorkPanicked)", "watch_drain"]
    );
}

#[test]
fn holder_steps_down_first_a_renewal_extends_only_the_serving_term() {
    let mut w = World::new();
    assert!(w.l.renewed().is_none(), "no term: nothing to extend");
    let term = w.serve();
    assert_eq!(w.l.renewed().map(Term::id), Some(term.id()));
    w.on(2, Event::Stop { from_work: false });
    assert!(w.l.renewed().is_none(), "a draining term is not extended");
}

#[test]
fn idle_actors_retire_only_when_nothing_of_a_term_is_left() {
    let mut w = World::new();
    assert!(w.l.may_retire(&w.facts()), "a fresh follower holds nothing");
    w.in_flight = true;
    assert!(
        !w.l.may_retire(&w.facts()),
        "a call in flight may bring a claim"
    );
    w.in_flight = false;
    let term = w.serve();
    assert!(!w.l.may_retire(&w.facts()), "never while a term serves");
    w.on(1, Event::GiveUp);
    assert!(!w.l.may_retire(&w.facts()), "never while its work drains");
    w.on(1, Event::Drained(term.id()));
    assert!(!w.l.may_retire(&w.facts()), "never while the claim is held");
    w.holding = false;
    w.on(2, Event::Released);
    assert!(w.l.may_retire(&w.facts()), "released: nothing is left");
    // A drain abandoned while its work still runs keeps the actor (no new actor may start a
    // term beside that work).
    let term = w.serve();
    w.on(3, to("pod-b"));
    assert!(
        !w.l.may_retire(&w.facts()),
        "never while a handoff is under way"
    );
    w.settle(3 + DRAIN.as_secs());
    w.holding = false;
    assert!(!w.l.may_retire(&w.facts()), "abandoned work still runs");
    w.on(40, Event::Drained(term.id()));
    assert!(w.l.may_retire(&w.facts()));
    // Retiring is a plain stop with nothing to end: retire, then deregister at once.
    assert_eq!(
        w.on(41, Event::Stop { from_work: false }),
        ["await_stop", "retire"]
    );
    assert_eq!(w.settle(41), ["deregister", "answer_stop(Done)"]);
    assert!(!w.l.may_retire(&w.facts()), "stopped already");
}
