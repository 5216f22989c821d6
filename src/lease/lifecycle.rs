//! The term lifecycle: a pure state machine beside the lease [`Machine`](super::Machine).
//!
//! The lease machine decides what to write; this one decides what happens to a *term*: when it
//! starts, how it ends, when its work has drained, when a stop or a handoff is answered and
//! with what. It does no IO, reads no clock (`now` is an argument) and holds no channel: it
//! takes [`Event`]s and returns [`Effect`]s, a list the lease actor performs in order (as
//! openraft's engine returns commands). Every rule below is a plain `#[test]` on the effect
//! list (`lifecycle::tests`).
//!
//! # Rules
//!
//! * **Cancel first** (`holder-steps-down-first`): a term is cancelled (and, if its claim may
//!   be gone, marked lost) before anything else is done about its end; no release is ever
//!   wanted while a term is serving or draining ([`Lifecycle::want`]).
//! * **Release after the work** (`drain-then-release`): an ended term's guarded work drains
//!   while renewals go on; the lease is released once it has returned. A drain bounded by a
//!   stop or a handoff that outlasts the drain timeout is abandoned: the term is marked lost,
//!   nothing is written, the lease expires on its own, and no new term starts in this replica
//!   while that work still runs.
//! * **A handoff ends with its term** (`handoff-ends-with-its-term`): a handoff belongs to the
//!   one term it ended. It is answered on every outcome (the release written, the release
//!   refused, the lease lost during the drain, the drain timeout, a refusal, a restart) and
//!   forgotten then; a later stop is a plain stop. When the claim ended without an answer (a
//!   lost reply), the outcome is what the store shows: a record released to the successor,
//!   or held by it, is a handoff done.
//! * **A refusal during a drain** (`refusal-during-drain`): a call refused for good restarts
//!   the actor, which drops its claim. The draining term is marked lost first (it is already
//!   cancelled), so its work knows it may have run without the lease; the replica starts no
//!   new term until that work has returned.
//! * **Idle actors retire** (`idle-actors-retire`): an actor nobody uses may retire only when
//!   nothing of a term is left (none serving, draining, or abandoned with its work running),
//!   no claim is held and no call is in flight ([`Lifecycle::may_retire`]); it then stops as
//!   any stop does.
//! * **Every stop is answered** (`never-give-up`): once no term is live, nothing is held and
//!   no call is in flight, a stop is answered: done, not released (with the store's error), or
//!   drain timeout.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::machine::{StepDownReason, Want};
use crate::error::{Error, Result};
use crate::record::LeaseRecord;
use crate::store::{LeaseKey, StoreError};
use crate::term::{Term, TermId};

/// Why a term ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum EndReason {
    /// The claim was lost without a release (deadline, superseded, deleted).
    Lost(StepDownReason),
    /// The term's own deadline passed before a renewal came back.
    Expired,
    /// The lease is being stopped (`stop`, shutdown).
    Stopped,
    /// The actor failed and is being restarted.
    Restarted,
    /// Its holder gave it up: `unlock`, a dropped handle, a grant nobody received.
    GivenUp,
    /// A piece of its guarded work panicked.
    WorkPanicked,
    /// The lease is being handed to another replica.
    HandedOff {
        /// The successor's identity.
        to: String,
    },
    /// The lease is coordinated and the API server's election controller prefers another
    /// holder: the term ends, its work drains, then the lease is released.
    PreferredHolder {
        /// The preferred holder.
        holder: String,
    },
}

impl EndReason {
    /// Whether the claim may be gone: the term's work may have run without the lease.
    fn loses_claim(&self) -> bool {
        matches!(
            self,
            EndReason::Lost(_) | EndReason::Expired | EndReason::Restarted
        )
    }
}

/// How a stop ended, as told to whoever waited for it.
#[derive(Debug)]
pub(crate) enum StopOutcome {
    /// Stopped; the lease was released (or was not ours).
    Done,
    /// The stop was called from the lease's own guarded work: it has begun and completes when
    /// that work returns; not waited for.
    Deferred,
    /// The term's work did not return within the drain timeout: the lease was not released
    /// and expires on its own.
    DrainTimeout {
        /// The drain timeout.
        after: Duration,
    },
    /// The release could not be written; the lease expires on its own.
    NotReleased(StoreError),
}

impl Clone for StopOutcome {
    fn clone(&self) -> Self {
        match self {
            StopOutcome::Done => StopOutcome::Done,
            StopOutcome::Deferred => StopOutcome::Deferred,
            StopOutcome::DrainTimeout { after } => StopOutcome::DrainTimeout { after: *after },
            StopOutcome::NotReleased(e) => StopOutcome::NotReleased(e.duplicate()),
        }
    }
}

impl PartialEq for StopOutcome {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (StopOutcome::NotReleased(a), StopOutcome::NotReleased(b)) => {
                a.to_string() == b.to_string()
            }
            (StopOutcome::DrainTimeout { after: a }, StopOutcome::DrainTimeout { after: b }) => {
                a == b
            }
            (a, b) => std::mem::discriminant(a) == std::mem::discriminant(b),
        }
    }
}

impl StopOutcome {
    /// The result a `stop` of `kind` `key` returns.
    pub fn into_result(self, kind: &str, key: &LeaseKey) -> Result<()> {
        match self {
            StopOutcome::Done => Ok(()),
            StopOutcome::Deferred => Err(Error::StopFromWork {
                lease: key.to_string(),
            }),
            StopOutcome::DrainTimeout { after } => Err(Error::DrainTimeout {
                lease: key.to_string(),
                after,
            }),
            StopOutcome::NotReleased(error) => {
                Err(Error::from_store(format!("release {kind} {key}"), error))
            }
        }
    }
}

/// How a handoff ended, as told to whoever asked for it.
#[derive(Debug)]
pub(crate) enum HandoffOutcome {
    /// The release naming the successor is written (or the successor is us already).
    Done,
    /// We hold no live term to hand off.
    NotLeader,
    /// Another handoff, to someone else, is under way.
    InProgress(Arc<str>),
    /// The lease is stopping or stopped.
    Stopped,
    /// The term's work did not return within the drain timeout: nothing was written, and the
    /// lease expires on its own.
    DrainTimeout(Duration),
    /// The release could not be written; the lease expires on its own.
    NotReleased(StoreError),
    /// The lease was lost (a step-down, a restart) before the release could be written.
    Lost,
    /// Asked for from the term's own work: begun, not waited for.
    Deferred,
    /// The lease is coordinated: the API server's election controller picks its holder.
    Coordinated,
}

impl Clone for HandoffOutcome {
    fn clone(&self) -> Self {
        match self {
            HandoffOutcome::Done => HandoffOutcome::Done,
            HandoffOutcome::NotLeader => HandoffOutcome::NotLeader,
            HandoffOutcome::InProgress(to) => HandoffOutcome::InProgress(to.clone()),
            HandoffOutcome::Stopped => HandoffOutcome::Stopped,
            HandoffOutcome::DrainTimeout(after) => HandoffOutcome::DrainTimeout(*after),
            HandoffOutcome::NotReleased(e) => HandoffOutcome::NotReleased(e.duplicate()),
            HandoffOutcome::Lost => HandoffOutcome::Lost,
            HandoffOutcome::Deferred => HandoffOutcome::Deferred,
            HandoffOutcome::Coordinated => HandoffOutcome::Coordinated,
        }
    }
}

impl PartialEq for HandoffOutcome {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (HandoffOutcome::NotReleased(a), HandoffOutcome::NotReleased(b)) => {
                a.to_string() == b.to_string()
            }
            (HandoffOutcome::InProgress(a), HandoffOutcome::InProgress(b)) => a == b,
            (HandoffOutcome::DrainTimeout(a), HandoffOutcome::DrainTimeout(b)) => a == b,
            (a, b) => std::mem::discriminant(a) == std::mem::discriminant(b),
        }
    }
}

impl HandoffOutcome {
    /// The result a handoff of `kind` `key` to `to` returns.
    pub fn into_result(self, kind: &str, key: &LeaseKey, to: &str) -> Result<()> {
        let lease = key.to_string();
        match self {
            HandoffOutcome::Done => Ok(()),
            HandoffOutcome::NotLeader => Err(Error::NotLeader { lease }),
            HandoffOutcome::InProgress(to) => Err(Error::HandoffInProgress {
                lease,
                to: to.to_string(),
            }),
            HandoffOutcome::Stopped => Err(Error::Stopped {
                what: format!("{kind} {lease}"),
            }),
            HandoffOutcome::DrainTimeout(after) => Err(Error::DrainTimeout { lease, after }),
            HandoffOutcome::NotReleased(error) => {
                Err(Error::from_store(format!("hand off {kind} {lease}"), error))
            }
            HandoffOutcome::Coordinated => Err(Error::HandoffFailed {
                lease,
                to: to.to_owned(),
                reason: "the lease is coordinated (spec.strategy): the API server's election \
                         controller picks its holder"
                    .into(),
            }),
            HandoffOutcome::Deferred => Err(Error::HandoffFromWork {
                lease,
                to: to.to_owned(),
            }),
            HandoffOutcome::Lost => Err(Error::HandoffFailed {
                lease,
                to: to.to_owned(),
                reason: "the lease was lost before it could be handed off".into(),
            }),
        }
    }
}

/// What happened, as fed to [`Lifecycle::handle`].
#[derive(Debug)]
pub(crate) enum Event {
    /// An acquisition was written: a term may start.
    Acquired,
    /// The face handed the offered term to its receiver.
    Granted(Term),
    /// Nobody took the offered term.
    NotTaken(Term),
    /// The serving term's own deadline had passed when its renewal came back (see
    /// [`Lifecycle::renewed`]).
    Expired(TermId),
    /// The lease machine stepped down.
    StepDown(StepDownReason),
    /// Every piece of the term's guarded work has returned.
    Drained(TermId),
    /// A piece of the term's guarded work panicked.
    WorkPanicked(TermId),
    /// A lock grant was dropped before its caller received it.
    GrantDropped(TermId),
    /// The face gives the live term up (unlock, a dropped handle).
    GiveUp,
    /// A stop was asked for (`from_work`: by the lease's own guarded work, which cannot wait).
    Stop {
        /// Asked from inside the term's work.
        from_work: bool,
    },
    /// A handoff to `to` was asked for.
    HandOff {
        /// The successor.
        to: Arc<str>,
    },
    /// A release was written.
    Released,
    /// A release failed (`transient`: it is retried after its backoff).
    ReleaseFailed {
        /// What the store said.
        error: StoreError,
        /// Retried (`true`) or final.
        transient: bool,
    },
    /// A call was refused for good: the actor restarts (unless it is stopping).
    Refused {
        /// What the store said.
        error: StoreError,
    },
    /// The actor is being restarted (its claim is dropped next).
    Restarting,
}

/// What the actor must do, in order.
#[derive(Debug)]
pub(crate) enum Effect {
    /// End the term for its holders: cancel its token.
    Cancel(Term),
    /// The term's claim may be gone: say so on the term ([`Term::lost`]).
    MarkLost(Term),
    /// Tell the face that the term ended (it is cancelled already).
    TellFace(Term, EndReason),
    /// Report [`Event::Drained`] once the term's guarded work has returned (at once if none).
    WatchDrain(Term),
    /// Build a term for the acquisition just written and offer it to the face; report
    /// [`Event::Granted`] or [`Event::NotTaken`].
    OfferTerm,
    /// Answer the caller of this stop only.
    ReplyStop(StopOutcome),
    /// The caller of this stop waits for its end.
    AwaitStop,
    /// Answer everyone waiting for the stop.
    AnswerStop(StopOutcome),
    /// Answer the caller of this handoff only.
    ReplyHandoff(HandoffOutcome),
    /// The caller of this handoff waits for its end.
    AwaitHandoff,
    /// Answer everyone waiting for the handoff to `to`.
    AnswerHandoff {
        /// The successor it was for.
        to: Arc<str>,
        /// How it ended.
        outcome: HandoffOutcome,
    },
    /// A stop has begun: later requests for the lease must start a new actor; the face
    /// answers what it can no longer serve. Emitted before the term is cancelled, and
    /// performed in that order: whoever sees the term end and asks for the lease again gets
    /// a new actor, never the stopping one.
    Retire,
    /// The stop is complete: forget the actor, stop its timer and watch.
    Deregister,
    /// Drop the claim without writing: the lease expires on its own.
    Abandon,
    /// Restart the actor (its claim is dropped; the supervisor starts it over).
    Restart,
}

/// What the lifecycle needs to know of the lease machine, at the moment of a decision.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Facts<'a> {
    /// This replica's identity.
    pub identity: &'a str,
    /// The machine holds a claim on the lease.
    pub holding: bool,
    /// A store call is in flight.
    pub in_flight: bool,
    /// The latest record observed, if any.
    pub record: Option<&'a LeaseRecord>,
}

/// Where the lifecycle stands.
#[derive(Debug)]
enum Phase {
    /// No term. If the machine holds a claim anyway (a grant nobody received, a term that has
    /// drained), it is released.
    Vacant,
    /// A term is live.
    Serving(Term),
    /// The term is cancelled; its guarded work has not returned yet. Renewals go on.
    Draining(Term),
}

/// A handoff under way. It belongs to the one term it ended.
#[derive(Debug)]
struct Handoff {
    to: Arc<str>,
    since: Instant,
    term: TermId,
    token: i32,
}

#[derive(Debug)]
enum StopState {
    Running,
    Stopping {
        since: Instant,
        /// This stop's drain timed out (and the lease was left to expire).
        abandoned: bool,
    },
    Stopped(StopOutcome),
}

/// The term lifecycle of one lease actor (see the module docs).
#[derive(Debug)]
pub(crate) struct Lifecycle {
    drain_timeout: Duration,
    phase: Phase,
    stop: StopState,
    handoff: Option<Handoff>,
    /// A term whose drain timed out, while its work still runs: no new term until it returns.
    abandoned: Option<Term>,
    /// Why the last release failed; reported to stop callers. Cleared by every new ending.
    release_error: Option<StoreError>,
}

impl Lifecycle {
    /// A lifecycle with no term, whose drains (of stops and handoffs) are bounded by
    /// `drain_timeout`.
    pub fn new(drain_timeout: Duration) -> Self {
        Lifecycle {
            drain_timeout,
            phase: Phase::Vacant,
            stop: StopState::Running,
            handoff: None,
            abandoned: None,
            release_error: None,
        }
    }

    /// The live term, if any.
    pub fn term(&self) -> Option<&Term> {
        match &self.phase {
            Phase::Serving(term) => Some(term),
            _ => None,
        }
    }

    /// The term serving or draining, if any.
    pub fn current(&self) -> Option<&Term> {
        match &self.phase {
            Phase::Serving(term) | Phase::Draining(term) => Some(term),
            Phase::Vacant => None,
        }
    }

    /// No term serving or draining.
    pub fn vacant(&self) -> bool {
        matches!(self.phase, Phase::Vacant)
    }

    /// Whether an actor nobody uses any more may retire now (rule `idle-actors-retire`): only
    /// when nothing of a term is left, neither serving, draining, nor abandoned while its work
    /// still runs (a new actor could otherwise start a term beside it); no claim is held, no
    /// call is in flight (its answer may be a claim), no handoff or stop is under way. The
    /// retirement itself is a plain stop ([`Event::Stop`]), which has nothing to end.
    pub fn may_retire(&self, facts: &Facts<'_>) -> bool {
        matches!(self.stop, StopState::Running)
            && self.vacant()
            && self.abandoned.is_none()
            && self.handoff.is_none()
            && !facts.holding
            && !facts.in_flight
    }

    /// A stop has begun (or finished).
    pub fn is_stopping(&self) -> bool {
        !matches!(self.stop, StopState::Running)
    }

    /// The stop has finished.
    pub fn is_stopped(&self) -> bool {
        matches!(self.stop, StopState::Stopped(_))
    }

    /// Why the last release could not be written, if it could not.
    pub fn release_error(&self) -> Option<&StoreError> {
        self.release_error.as_ref()
    }

    /// Whom a release now hands the lease to: the successor of the handoff under way.
    pub fn successor(&self) -> Option<&Arc<str>> {
        self.handoff.as_ref().map(|h| &h.to)
    }

    /// Whether a handoff is under way.
    pub fn handing_off(&self) -> bool {
        self.handoff.is_some()
    }

    /// What the lease machine should aim for. `face_wants`: the face wants to hold the lease.
    pub fn want(&self, facts: &Facts<'_>, face_wants: bool) -> Want {
        match &self.phase {
            // Never a release while a term is live or its work drains.
            Phase::Serving(_) | Phase::Draining(_) => Want::Keep,
            Phase::Vacant if facts.holding || self.is_stopping() => Want::Release,
            // A handoff not yet answered (its claim ended without an answer): nothing new
            // until the store has shown how it ended.
            Phase::Vacant if self.handoff.is_some() => Want::Keep,
            // The work of a term abandoned at its drain timeout still runs: no new term until
            // it has returned (its lease expires meanwhile; others take over).
            Phase::Vacant if self.abandoned.is_some() => Want::Keep,
            Phase::Vacant if face_wants => Want::Acquire,
            Phase::Vacant => Want::Keep,
        }
    }

    /// When the drain under way must have ended, if one is bounded (by a stop or by the
    /// handoff of the draining term).
    pub fn drain_deadline(&self) -> Option<Instant> {
        let Phase::Draining(term) = &self.phase else {
            return None;
        };
        let stopping = match &self.stop {
            StopState::Stopping { since, .. } => Some(*since),
            _ => None,
        };
        let handing_off = self
            .handoff
            .as_ref()
            .filter(|h| h.term == term.id())
            .map(|h| h.since);
        let since = stopping.into_iter().chain(handing_off).min()?;
        Some(since + self.drain_timeout)
    }

    /// Feeds one event; appends what to do to `fx` (a buffer the caller reuses: a renewal
    /// should not cost an allocation).
    pub fn handle(&mut self, now: Instant, event: Event, facts: &Facts<'_>, fx: &mut Vec<Effect>) {
        match event {
            Event::Acquired => {
                if let Some(handoff) = self.handoff.take() {
                    // Cannot happen while `want` holds acquisitions back; if it does, the
                    // handoff is over: we hold the lease again.
                    fx.push(answer(handoff, HandoffOutcome::Lost));
                }
                self.release_error = None;
                if !self.is_stopping() && self.vacant() && self.abandoned.is_none() {
                    fx.push(Effect::OfferTerm);
                }
                // Otherwise nobody gets a term: vacant and holding, the lease is released.
            }
            Event::Granted(term) => {
                if self.vacant() && !self.is_stopping() {
                    self.phase = Phase::Serving(term);
                } else {
                    fx.push(Effect::Cancel(term));
                }
            }
            Event::NotTaken(term) => fx.push(Effect::Cancel(term)),
            Event::Expired(id) => {
                if self.term().is_some_and(|t| t.id() == id) {
                    // Over by its own deadline; we still hold the lease: it is released.
                    self.end_term(EndReason::Expired, fx);
                }
            }
            Event::StepDown(StepDownReason::PreferredHolder { holder }) => {
                // Not a loss: we still hold the lease. The term ends, its work drains while
                // renewals go on, then the lease is released for the controller.
                self.end_term(EndReason::PreferredHolder { holder }, fx);
            }
            Event::StepDown(reason) => {
                if let Phase::Draining(term) = &self.phase {
                    // The claim is gone while the work still drains: it ran without the lease.
                    fx.push(Effect::MarkLost(term.clone()));
                }
                self.end_term(EndReason::Lost(reason), fx);
                // A handoff whose claim is gone is over; the store says how.
                self.settle_lost_handoff(facts, fx);
            }
            Event::Drained(id) => {
                if matches!(&self.phase, Phase::Draining(t) if t.id() == id) {
                    self.phase = Phase::Vacant;
                }
                if self.abandoned.as_ref().is_some_and(|t| t.id() == id) {
                    self.abandoned = None;
                }
            }
            Event::WorkPanicked(id) => {
                if self.term().is_some_and(|t| t.id() == id) {
                    self.end_term(EndReason::WorkPanicked, fx);
                }
            }
            Event::GrantDropped(id) => {
                if self.term().is_some_and(|t| t.id() == id) {
                    self.end_term(EndReason::GivenUp, fx);
                }
            }
            Event::GiveUp => self.end_term(EndReason::GivenUp, fx),
            Event::Stop { from_work } => self.stop(now, from_work, fx),
            Event::HandOff { to } => self.hand_off(now, to, facts, fx),
            Event::Released => {
                self.release_error = None;
                if let Some(handoff) = self.handoff.take() {
                    fx.push(answer(handoff, HandoffOutcome::Done));
                }
            }
            Event::ReleaseFailed { error, transient } => {
                if !transient {
                    // Retrying will not change the answer: leave the lease to expire.
                    fx.push(Effect::Abandon);
                    if let Some(handoff) = self.handoff.take() {
                        fx.push(answer(
                            handoff,
                            HandoffOutcome::NotReleased(error.duplicate()),
                        ));
                    }
                }
                self.release_error = Some(error);
            }
            Event::Refused { error } => {
                if self.is_stopping() {
                    // A stop retries nothing it cannot do: the machine has backed off, and the
                    // stop is answered with what the store said.
                    return;
                }
                self.lose_everything(HandoffOutcome::NotReleased(error), fx);
                fx.push(Effect::Restart);
            }
            Event::Restarting => self.lose_everything(HandoffOutcome::Lost, fx),
        }
    }

    /// A renewal was written: the term whose deadline moves to the claim's new one (the
    /// serving term; none while a term drains). The one event answered by a query rather than
    /// an effect list: it is most of what a lease actor does, and its one effect (extend the
    /// term, or learn that its own deadline has passed: [`Event::Expired`]) needs nothing else.
    pub fn renewed(&self) -> Option<&Term> {
        self.term()
    }

    /// Whether [`settle`](Self::settle) may have anything to decide: a drain, a handoff or a
    /// stop under way. (A serving term's renewals skip it: they are most of what a lease
    /// actor does.)
    pub fn unsettled(&self) -> bool {
        matches!(self.phase, Phase::Draining(_))
            || self.handoff.is_some()
            || matches!(self.stop, StopState::Stopping { .. })
    }

    /// Decides what can be decided now that nothing new happened: a drain past its deadline,
    /// a handoff the store has settled, a stop that has finished. Call after every step.
    pub fn settle(&mut self, now: Instant, facts: &Facts<'_>, fx: &mut Vec<Effect>) {
        if self.drain_deadline().is_some_and(|d| now >= d) {
            self.abandon_drain(fx);
        }
        self.settle_lost_handoff(facts, fx);
        if matches!(self.stop, StopState::Stopping { .. })
            && self.vacant()
            && !facts.holding
            && !facts.in_flight
        {
            let StopState::Stopping { abandoned, .. } =
                std::mem::replace(&mut self.stop, StopState::Running)
            else {
                unreachable!("checked above");
            };
            let outcome = if abandoned || self.abandoned.is_some() {
                StopOutcome::DrainTimeout {
                    after: self.drain_timeout,
                }
            } else if let Some(error) = self.release_error.take() {
                StopOutcome::NotReleased(error)
            } else {
                StopOutcome::Done
            };
            if let Some(handoff) = self.handoff.take() {
                fx.push(answer(handoff, HandoffOutcome::Stopped));
            }
            self.stop = StopState::Stopped(outcome.clone());
            fx.push(Effect::Deregister);
            fx.push(Effect::AnswerStop(outcome));
        }
    }

    /// Ends the live term: cancels it *first*, marks it lost if its claim may be gone, tells
    /// the face, then lets its work drain. No-op without a live term (one that is draining
    /// keeps draining).
    fn end_term(&mut self, reason: EndReason, fx: &mut Vec<Effect>) {
        if !matches!(self.phase, Phase::Serving(_)) {
            return;
        }
        let Phase::Serving(term) = std::mem::replace(&mut self.phase, Phase::Vacant) else {
            unreachable!("checked above");
        };
        fx.push(Effect::Cancel(term.clone()));
        if reason.loses_claim() {
            fx.push(Effect::MarkLost(term.clone()));
        }
        // A new ending: what an earlier release failed with is no longer news.
        self.release_error = None;
        fx.push(Effect::TellFace(term.clone(), reason));
        fx.push(Effect::WatchDrain(term.clone()));
        self.phase = Phase::Draining(term);
    }

    fn stop(&mut self, now: Instant, from_work: bool, fx: &mut Vec<Effect>) {
        match &mut self.stop {
            StopState::Stopped(outcome) => fx.push(Effect::ReplyStop(outcome.clone())),
            StopState::Stopping { .. } if from_work => {
                fx.push(Effect::ReplyStop(StopOutcome::Deferred));
            }
            StopState::Stopping { .. } => fx.push(Effect::AwaitStop),
            StopState::Running => {
                self.release_error = None;
                // Waiting from inside the work would wait for itself: the stop goes ahead,
                // unwatched.
                fx.push(if from_work {
                    Effect::ReplyStop(StopOutcome::Deferred)
                } else {
                    Effect::AwaitStop
                });
                self.stop = StopState::Stopping {
                    since: now,
                    abandoned: false,
                };
                fx.push(Effect::Retire);
                self.end_term(EndReason::Stopped, fx);
            }
        }
    }

    fn hand_off(&mut self, now: Instant, to: Arc<str>, facts: &Facts<'_>, fx: &mut Vec<Effect>) {
        if let Some(handoff) = &self.handoff {
            fx.push(if handoff.to == to {
                Effect::AwaitHandoff
            } else {
                Effect::ReplyHandoff(HandoffOutcome::InProgress(handoff.to.clone()))
            });
            return;
        }
        let reply = if self.is_stopping() {
            HandoffOutcome::Stopped
        } else if self.term().is_none() {
            HandoffOutcome::NotLeader
        } else if *to == *facts.identity {
            HandoffOutcome::Done // already there
        } else if facts.record.is_some_and(LeaseRecord::coordinated) {
            HandoffOutcome::Coordinated
        } else {
            let term = self.term().expect("checked above");
            self.handoff = Some(Handoff {
                to: to.clone(),
                since: now,
                term: term.id(),
                token: term.fencing_token(),
            });
            fx.push(Effect::AwaitHandoff);
            self.end_term(EndReason::HandedOff { to: to.to_string() }, fx);
            return;
        };
        fx.push(Effect::ReplyHandoff(reply));
    }

    /// A drain bounded by a stop or a handoff ran past the drain timeout: stop renewing, write
    /// nothing, keep the term (its work may still run) so no new one starts meanwhile.
    fn abandon_drain(&mut self, fx: &mut Vec<Effect>) {
        let Phase::Draining(term) = std::mem::replace(&mut self.phase, Phase::Vacant) else {
            return;
        };
        fx.push(Effect::MarkLost(term.clone()));
        fx.push(Effect::Abandon);
        if let Some(handoff) = self.handoff.take() {
            fx.push(answer(
                handoff,
                HandoffOutcome::DrainTimeout(self.drain_timeout),
            ));
        }
        if let StopState::Stopping { abandoned, .. } = &mut self.stop {
            *abandoned = true;
        }
        self.abandoned = Some(term);
    }

    /// A handoff whose term has drained and whose claim has ended without a release answer
    /// (the lease lost, a lost reply) is answered as the store shows it.
    fn settle_lost_handoff(&mut self, facts: &Facts<'_>, fx: &mut Vec<Effect>) {
        let Some(handoff) = &self.handoff else {
            return;
        };
        if !self.vacant() && !matches!(&self.phase, Phase::Draining(t) if t.id() == handoff.term) {
            return;
        }
        if facts.holding || facts.in_flight {
            return; // the release may still be written, or its answer is on its way
        }
        let handoff = self.handoff.take().expect("checked above");
        // Retried releases that never landed (a partition) end with the claim: lost.
        let outcome = if handed_to(facts.record, &handoff.to, handoff.token) {
            HandoffOutcome::Done
        } else {
            HandoffOutcome::Lost
        };
        fx.push(answer(handoff, outcome));
    }

    /// The claim is dropped (a refusal, a restart): the serving term ends as lost, a draining
    /// one is marked lost, and the handoff is answered.
    fn lose_everything(&mut self, outcome: HandoffOutcome, fx: &mut Vec<Effect>) {
        if let Phase::Draining(term) = &self.phase {
            fx.push(Effect::MarkLost(term.clone()));
        }
        self.end_term(EndReason::Restarted, fx);
        if let Some(handoff) = self.handoff.take() {
            fx.push(answer(handoff, outcome));
        }
    }
}

fn answer(handoff: Handoff, outcome: HandoffOutcome) -> Effect {
    Effect::AnswerHandoff {
        to: handoff.to,
        outcome,
    }
}

/// Whether `record` shows our term's handoff to `to` done: released naming `to` under our
/// token, or held by `to` with a later one.
fn handed_to(record: Option<&LeaseRecord>, to: &str, token: i32) -> bool {
    let Some(record) = record else {
        return false;
    };
    let record_token = super::token_of(record);
    match record.holder() {
        None => record.successor.as_deref() == Some(to) && record_token == token,
        Some(holder) => holder == to && record_token > token,
    }
}

#[cfg(test)]
mod tests;
