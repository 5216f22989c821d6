//! The one lease actor: IO for the [`Machine`] and the term lifecycle, for every face.
//!
//! The actor executes what the machine decides (reads and compare-and-swap writes, each under
//! a timeout; one timer, re-armed from the machine's next deadline; the shared watch) and owns
//! the life of a term, written once for elections, locks and any later face:
//!
//! 1. **granted**: an acquisition succeeded and the face handed the [`Term`] to exactly one
//!    receiver. If nobody takes it, it is released at once (never kept).
//! 2. **serving**: every successful renewal moves the term's own deadline forward.
//! 3. **ending** (stop, unlock, dropped handle, dropped grant, panicked work, step-down): the
//!    term is cancelled *first*; its guarded work drains while renewals go on; then, if we
//!    still hold the lease, one release write, backed off like any write. A stop whose drain
//!    outlasts the drain timeout stops renewing and writes nothing: the lease expires as after
//!    a crash, and the stop says which lease's work did not end.
//! 4. **ended**: stop waiters are answered on every outcome of every call.
//!
//! A release is only ever written in the [`Phase::Vacant`] phase, that is with no live term:
//! no write gives the lease up while a term of ours may still be running.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use actix::prelude::*;
use futures::future::BoxFuture;
use tokio::sync::oneshot;

use super::face::{EndReason, Face, Recovery};
use super::{Alert, Call, Machine, Op, Outcome, Request, Step, StepDownReason, Waiting, Want};
use crate::error::{Error, Result};
use crate::metrics::LeaseMetrics;
use crate::store::{LeaseKey, LeaseStore, StoreError, StoreResult, StoredLease, WatchEvent};
use crate::term::{Term, TermId, now};
use crate::watch::{Inbox, WatchHub};
use crate::work::ActorId;

/// Where the term lifecycle stands.
enum Phase {
    /// No term. If the machine holds a claim anyway (a grant nobody received, a term that has
    /// drained), it is released.
    Vacant,
    /// A term is live.
    Serving(Term),
    /// The term is cancelled; its guarded work has not returned yet. Renewals go on.
    Draining(Term),
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

/// A handoff under way: the term has ended (or is draining); the release that names the
/// successor is next.
struct Handoff {
    to: Arc<str>,
    since: Instant,
    waiters: Vec<oneshot::Sender<HandoffOutcome>>,
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
    /// The lease was lost (a step-down) before the release could be written.
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

enum StopState {
    Running,
    Stopping {
        waiters: Vec<oneshot::Sender<StopOutcome>>,
        since: Instant,
    },
    Stopped(StopOutcome),
}

/// Stops a lease actor: cancel the term, drain its work, release, finish. Answered when done
/// (or at once with [`StopOutcome::Deferred`] when `from_work`).
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Stop {
    pub reply: oneshot::Sender<StopOutcome>,
    /// The caller runs inside this lease's guarded work (waiting would deadlock).
    pub from_work: bool,
}

/// Reports from the term's surroundings to the actor.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub(crate) enum Internal {
    /// Every piece of the term's guarded work has returned.
    Drained(TermId),
    /// A piece of the term's guarded work panicked.
    WorkPanicked(TermId),
    /// A lock grant was dropped before its caller received it.
    GrantDropped(TermId),
}

/// A face's command, delivered to the face.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct FaceCommand<C>(pub C);

/// Where a lease actor says that it is stopping and that it has stopped: the registry of the
/// replica's [`Supervisor`](crate::Supervisor). A trait, so that this layer does not depend
/// on the supervisor above it.
pub(crate) trait Directory: Send + Sync {
    /// A stop has begun: later requests for `key` must start a new actor, not get this one.
    fn retire(&self, key: &LeaseKey, id: ActorId);
    /// The actor has stopped: forget it.
    fn remove(&self, key: &LeaseKey, id: ActorId);
}

/// What every lease actor of one `Dsync` shares.
pub(crate) struct Shared {
    pub identity: Arc<str>,
    /// Our pod's name, written on the Lease with each acquisition (`Config::pod_name`).
    pub holder_pod: Option<Arc<str>>,
    pub timing: crate::timing::Timing,
    pub drain_timeout: Duration,
    pub store: Arc<dyn LeaseStore>,
    pub watches: Arc<WatchHub>,
    pub directory: Arc<dyn Directory>,
    /// The highest fencing token this process has seen per lease, shared by all its actors
    /// (rule `token-never-back`): a lease actor of a new handle, or one restarted, starts from
    /// what the process already knows, across deletes.
    pub floors: TokenFloors,
}

/// The highest fencing token seen per lease by one process (see [`Shared::floors`]).
#[derive(Debug, Default)]
pub(crate) struct TokenFloors(std::sync::Mutex<crate::hash::FastMap<LeaseKey, i32>>);

impl TokenFloors {
    fn map(&self) -> std::sync::MutexGuard<'_, crate::hash::FastMap<LeaseKey, i32>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The highest token seen on `key`, if any.
    pub fn get(&self, key: &LeaseKey) -> Option<i32> {
        self.map().get(key).copied()
    }

    /// Notes `token` as seen on `key`.
    pub fn raise(&self, key: &LeaseKey, token: i32) {
        let mut map = self.map();
        match map.get_mut(key) {
            Some(floor) => *floor = (*floor).max(token),
            None => {
                map.insert(key.clone(), token);
            }
        }
    }
}

/// Everything a lease actor is made from.
pub(crate) struct LeaseParams {
    pub key: LeaseKey,
    pub shared: Arc<Shared>,
    pub metrics: LeaseMetrics,
    /// A stopping actor of the same lease in this replica: we start once it has finished.
    pub predecessor: Option<Recipient<Stop>>,
}

/// The face-independent state of a lease actor, lent to its face.
pub(crate) struct Core {
    pub id: ActorId,
    pub key: LeaseKey,
    pub machine: Machine,
    pub metrics: LeaseMetrics,
    pub restarts: u32,
    /// The latest store error, cleared by the next success.
    pub last_error: Option<String>,
    shared: Arc<Shared>,
    span: tracing::Span,
    phase: Phase,
    stop: StopState,
    /// Terms that ended since the face was last told.
    ended: Vec<(Term, EndReason)>,
    /// Why the last attempt to release failed; reported to stop and unlock callers.
    release_error: Option<Box<StoreError>>,
    /// A term that was abandoned when its drain timed out (its work may still run).
    abandoned: Option<Term>,
    /// The draining term whose drain is being watched.
    watched: Option<TermId>,
    timer: Option<(SpawnHandle, Instant)>,
    watch_handle: Option<SpawnHandle>,
    /// Where the watch hub notes what we have seen and parks the renewals it did not wake
    /// us for (taken at every step).
    inbox: Arc<Inbox>,
    predecessor: Option<Recipient<Stop>>,
    /// Waiting for the predecessor to finish: no store calls yet.
    blocked: bool,
    /// A handoff to another replica, from its start until its release is written.
    handoff: Option<Handoff>,
    /// The token floor last published to [`Shared::floors`].
    published_floor: Option<i32>,
}

impl Core {
    /// Enters the lease's span for one wake-up, if any subscriber records it. Without one the
    /// span is disabled, and entering it would only pass "enter"/"exit" lines on to the `log`
    /// crate (tracing's `log` feature, which a dependency turns on) on every renewal.
    fn enter_span(&self) -> Option<tracing::span::EnteredSpan> {
        (!self.span.is_disabled()).then(|| self.span.clone().entered())
    }

    /// Publishes a raised token floor to the process's other actors, and reports what the
    /// machine noticed (a twin, versions going backwards).
    fn report(&mut self) {
        let floor = self.machine.token_floor();
        if floor > self.published_floor {
            self.published_floor = floor;
            if let Some(floor) = floor {
                self.shared.floors.raise(&self.key, floor);
            }
        }
        for alert in self.machine.take_alerts() {
            match alert {
                Alert::Twin { token } => {
                    self.metrics.twin();
                    tracing::error!(
                        lease = %self.key,
                        identity = %self.identity(),
                        token,
                        "another live process holds this lease under our identity (rule \
                         one-identity); identities must be unique per process. Not taking it \
                         while it is renewed"
                    );
                }
                Alert::VersionsWentBack { seen, now } => {
                    self.metrics.went_back();
                    tracing::warn!(
                        lease = %self.key,
                        seen = %seen,
                        now = %now,
                        "the store's versions went back (an etcd restore?); re-synced from a \
                         read, fencing tokens keep rising (rule restore-resync)"
                    );
                }
            }
        }
    }

    /// Tells the watch hub which version we hold now.
    fn note_seen(&self) {
        let version = self.machine.lease().map(|l| l.resource_version.as_str());
        self.inbox.set_seen(version);
    }

    /// Observes the renewal the hub parked for us, if any, as of the instant it arrived: expiry
    /// is judged as if it had been delivered then.
    fn take_parked(&mut self) {
        let Some(parked) = self.inbox.take() else {
            return;
        };
        let lease = Arc::unwrap_or_clone(parked.lease);
        if self
            .machine
            .on_watch(parked.at, Ok(WatchEvent::Applied(lease)))
        {
            self.note_seen();
        }
    }

    /// Tells the machine whether the shared watch is behind (it failed and the hub has not
    /// caught it up yet): a lease that looks expired then may have been renewed unseen.
    fn check_watch(&mut self) {
        if self.inbox.watch_current() {
            self.machine.watch_current();
        } else {
            self.machine.watch_behind(now());
        }
    }

    fn new(p: LeaseParams) -> Self {
        let span = tracing::info_span!(
            "lease",
            lease = %p.key,
            identity = %p.shared.identity,
            token = tracing::field::Empty
        );
        let mut machine = Machine::new(p.shared.identity.clone(), p.shared.timing)
            .with_holder_pod(p.shared.holder_pod.clone());
        let published_floor = p.shared.floors.get(&p.key);
        if let Some(floor) = published_floor {
            machine.raise_floor(floor);
        }
        Core {
            id: ActorId::next(),
            machine,
            published_floor,
            key: p.key,
            metrics: p.metrics,
            restarts: 0,
            last_error: None,
            shared: p.shared,
            span,
            phase: Phase::Vacant,
            stop: StopState::Running,
            ended: Vec::new(),
            release_error: None,
            abandoned: None,
            watched: None,
            timer: None,
            watch_handle: None,
            inbox: Arc::default(),
            blocked: p.predecessor.is_some(),
            predecessor: p.predecessor,
            handoff: None,
        }
    }

    /// This replica's identity.
    pub fn identity(&self) -> &str {
        self.machine.identity()
    }

    /// The live term, if any.
    pub fn term(&self) -> Option<&Term> {
        match &self.phase {
            Phase::Serving(term) => Some(term),
            _ => None,
        }
    }

    /// No term, and nothing held: whatever was ending has ended.
    pub fn settled(&self) -> bool {
        matches!(self.phase, Phase::Vacant) && !self.machine.holding()
    }

    /// A stop has begun (or finished).
    pub fn is_stopping(&self) -> bool {
        !matches!(self.stop, StopState::Running)
    }

    /// The actor has stopped for good.
    pub fn is_stopped(&self) -> bool {
        matches!(self.stop, StopState::Stopped(_))
    }

    /// Why the last release could not be written, if it could not.
    pub fn release_error(&self) -> Option<&StoreError> {
        self.release_error.as_deref()
    }

    /// Ends the live term: cancels it *first*, then lets its work drain; the lease is released
    /// once the work has returned (if we still hold it then). No-op without a live term.
    pub fn end_term(&mut self, reason: EndReason) {
        if !matches!(self.phase, Phase::Serving(_)) {
            return; // no live term (one that is draining keeps draining)
        }
        let Phase::Serving(term) = std::mem::replace(&mut self.phase, Phase::Vacant) else {
            unreachable!("checked above");
        };
        term.cancel();
        if matches!(
            reason,
            EndReason::Lost(_) | EndReason::Expired | EndReason::Restarted
        ) {
            term.mark_lost();
        }
        self.metrics.holding(false);
        // A new ending: what an earlier release failed with is no longer news.
        self.release_error = None;
        tracing::info!(lease = %self.key, identity = %self.identity(), term = %term.id(), ?reason, "term ended");
        if term.has_work() {
            // The actor watches the drain from its next step.
            self.phase = Phase::Draining(term.clone());
        }
        self.ended.push((term, reason));
    }

    fn want<F: Face>(&self, face: &F) -> Want {
        match &self.phase {
            Phase::Serving(_) | Phase::Draining(_) => Want::Keep,
            // A handoff's release is a release naming the successor (the machine knows whom).
            Phase::Vacant if self.machine.holding() || self.is_stopping() => Want::Release,
            // The work of a term abandoned at its drain timeout still runs: no new term until
            // it has returned (its lease expires meanwhile; others take over).
            Phase::Vacant if self.abandoned.as_ref().is_some_and(Term::has_work) => Want::Keep,
            Phase::Vacant if face.wants(self) => Want::Acquire,
            Phase::Vacant => Want::Keep,
        }
    }

    fn drain_deadline(&self) -> Option<Instant> {
        if !matches!(self.phase, Phase::Draining(_)) {
            return None;
        }
        // A stop and a handoff both bound the drain; the earlier start counts.
        let stopping = match &self.stop {
            StopState::Stopping { since, .. } => Some(*since),
            _ => None,
        };
        let handing_off = self.handoff.as_ref().map(|h| h.since);
        let since = stopping.into_iter().chain(handing_off).min()?;
        Some(since + self.shared.drain_timeout)
    }

    /// A stop whose drain took too long: stop renewing, write nothing, report the lease.
    fn check_drain_timeout(&mut self, now: Instant) {
        if self.drain_deadline().is_none_or(|d| now < d) {
            return;
        }
        if !matches!(self.phase, Phase::Draining(_)) {
            return;
        }
        let Phase::Draining(term) = std::mem::replace(&mut self.phase, Phase::Vacant) else {
            unreachable!("checked above");
        };
        tracing::error!(
            lease = %self.key,
            term = %term.id(),
            after = ?self.shared.drain_timeout,
            "the term's work did not return within the drain timeout: not releasing the lease \
             while it may still run; it expires after the lease duration"
        );
        term.mark_lost();
        self.machine.abandon();
        self.finish_handoff(HandoffOutcome::DrainTimeout(self.shared.drain_timeout));
        // Kept while its work runs: a stop reports it, and no new term starts meanwhile
        // (work of two terms never overlaps within one replica).
        self.abandoned = Some(term);
    }

    /// Hands the lease to `to`: the term ends now (cancelled first, its work drained as a
    /// stop drains it, renewals going on meanwhile), then one compare-and-swap release names
    /// `to` as the successor. `reply` is answered once that release is written, or with why
    /// it could not be.
    pub fn begin_handoff(&mut self, to: Arc<str>, reply: oneshot::Sender<HandoffOutcome>) {
        if let Some(handoff) = &mut self.handoff {
            if handoff.to == to {
                handoff.waiters.push(reply);
            } else {
                let _ = reply.send(HandoffOutcome::InProgress(handoff.to.clone()));
            }
            return;
        }
        if self.is_stopping() || self.is_stopped() {
            let _ = reply.send(HandoffOutcome::Stopped);
            return;
        }
        if !matches!(self.phase, Phase::Serving(_)) {
            let _ = reply.send(HandoffOutcome::NotLeader);
            return;
        }
        if *to == *self.identity() {
            let _ = reply.send(HandoffOutcome::Done); // already there
            return;
        }
        if self.machine.lease().is_some_and(|l| l.record.coordinated()) {
            let _ = reply.send(HandoffOutcome::Coordinated);
            return;
        }
        tracing::info!(lease = %self.key, identity = %self.identity(), %to, "handing off");
        self.machine.hand_off_to(to.clone());
        self.handoff = Some(Handoff {
            to: to.clone(),
            since: now(),
            waiters: vec![reply],
        });
        self.end_term(EndReason::HandedOff { to: to.to_string() });
    }

    /// Carries out a handoff asked for on the lease itself (an annotation), if there is one.
    fn handoff_if_requested(&mut self) {
        let Some(to) = self.machine.handoff_requested() else {
            return;
        };
        if self.handoff.is_some() || !matches!(self.phase, Phase::Serving(_)) {
            return;
        }
        let to: Arc<str> = to.into();
        tracing::info!(lease = %self.key, %to, "a handoff was requested on the lease");
        let (reply, _) = oneshot::channel();
        self.begin_handoff(to, reply);
    }

    /// Answers a handoff's callers; the handoff is over either way.
    fn finish_handoff(&mut self, outcome: HandoffOutcome) {
        let Some(handoff) = self.handoff.take() else {
            return;
        };
        match &outcome {
            HandoffOutcome::Done => {
                self.metrics.handed_off();
                tracing::info!(lease = %self.key, to = %handoff.to, "handed off");
            }
            other => tracing::warn!(lease = %self.key, to = %handoff.to, ?other, "handoff failed"),
        }
        for waiter in handoff.waiters {
            let _ = waiter.send(outcome.clone());
        }
    }

    /// A handoff whose lease was lost before its release (a step-down while the work drained,
    /// an abandoned claim) cannot complete.
    fn check_handoff(&mut self) {
        if self.handoff.is_some()
            && matches!(self.phase, Phase::Vacant)
            && !self.machine.holding()
            && !self.machine.in_flight()
        {
            self.finish_handoff(HandoffOutcome::Lost);
        }
    }
}

/// When the actor's timer must fire for `waiting`. Not while a call is in flight: the call's
/// own timeout never runs past the claim's renew deadline (`Call::timeout`), so its answer, or
/// its timeout, wakes the actor by then, and a renewal costs one timer, not three.
fn timer_for(waiting: &Waiting) -> Option<Instant> {
    match waiting {
        Waiting::InFlight { .. } => None,
        waiting => waiting.until(),
    }
}

/// The actor behind every election and lock: one lease, one [`Face`].
pub(crate) struct LeaseActor<F: Face> {
    core: Core,
    face: F,
}

impl<F: Face> LeaseActor<F> {
    pub fn new(params: LeaseParams, face: F) -> Self {
        let mut core = Core::new(params);
        core.metrics.face(F::KIND);
        LeaseActor { core, face }
    }

    /// The actor's id (for work scopes).
    pub fn id(&self) -> ActorId {
        self.core.id
    }

    /// Takes the next steps: whatever the machine decides, then whatever the face can answer.
    fn drive(&mut self, ctx: &mut Context<Self>) {
        if self.core.is_stopped() {
            return;
        }
        let _span = self.core.enter_span();
        self.core.take_parked();
        self.core.check_watch();
        self.core.report();
        for _ in 0..4 {
            let now = now();
            self.core.check_drain_timeout(now);
            if F::HONOURS_HANDOFF_REQUESTS {
                self.core.handoff_if_requested();
            }
            self.tell_face(ctx);
            let waiting = if self.core.blocked {
                Waiting::Idle
            } else {
                self.step(now, ctx)
            };
            self.arm(ctx, timer_for(&waiting), now);
            self.core.check_handoff();
            let finished = self.maybe_finish_stop(ctx);
            self.tell_face(ctx);
            let again = self.face.settle(&mut self.core, &waiting);
            if let Some((waiters, outcome)) = finished {
                // Answered after the face has published its final status, so a caller that
                // returns from `stop` sees it.
                for waiter in waiters {
                    let _ = waiter.send(outcome.clone());
                }
            }
            if !again || self.core.is_stopped() {
                break;
            }
        }
    }

    /// Subscribes to the lease's changes through the watch hub.
    fn watch(&mut self, ctx: &mut Context<Self>) {
        let (stream, inbox) = self.core.shared.watches.watch_lease(&self.core.key);
        self.core.inbox = inbox;
        self.core.note_seen();
        self.core.watch_handle = Some(ctx.add_stream(stream));
    }

    fn step(&mut self, now: Instant, ctx: &mut Context<Self>) -> Waiting {
        loop {
            let want = self.core.want(&self.face);
            match self.core.machine.next(now, SystemTime::now(), want) {
                Step::StepDown(reason) => self.step_down(reason),
                Step::Call(call) => {
                    self.start(call, ctx);
                    return Waiting::InFlight {
                        until: self.core.machine.deadline(),
                    };
                }
                Step::Wait(waiting) => return waiting,
            }
        }
    }

    /// Tells the face which terms ended, and watches the drain of a term that is draining.
    fn tell_face(&mut self, ctx: &mut Context<Self>) {
        for (term, reason) in std::mem::take(&mut self.core.ended) {
            self.face.term_ended(&term, &reason, &self.core);
        }
        if let Phase::Draining(term) = &self.core.phase
            && self.core.watched != Some(term.id())
        {
            self.core.watched = Some(term.id());
            // Spawned on the arbiter, not the context, so an actor restart cannot lose it.
            let (notify, drained, id) = (ctx.address(), term.drained(), term.id());
            actix::spawn(async move {
                drained.await;
                notify.do_send(Internal::Drained(id));
            });
        }
    }

    fn step_down(&mut self, reason: StepDownReason) {
        let core = &mut self.core;
        if let StepDownReason::PreferredHolder { holder } = reason {
            // Not a loss: we still hold the lease. The term ends (cancelled first), its work
            // drains while renewals go on, then the lease is released for the controller to
            // hand to `holder`.
            tracing::info!(lease = %core.key, preferred = %holder, "the election controller prefers another holder; ending the term, then releasing");
            core.end_term(EndReason::PreferredHolder { holder });
            return;
        }
        match &reason {
            StepDownReason::Superseded { holder: Some(h) } if h == core.identity() => {
                tracing::error!(
                    lease = %core.key,
                    identity = %h,
                    "another process holds this lease under our identity; identities must be \
                     unique per replica. Waiting for its lease to expire instead of taking it back"
                );
            }
            _ => tracing::info!(lease = %core.key, ?reason, "stepping down"),
        }
        if let Phase::Draining(term) = &core.phase {
            // The claim is gone while the work still drains: that work ran without the lease.
            term.mark_lost();
        }
        core.end_term(EndReason::Lost(reason));
    }

    /// Makes sure the one timer fires by the machine's next instant (or the drain timeout).
    ///
    /// A timer already armed for no later than that instant is kept: firing early only makes
    /// the machine decide again (a pure function of the time: it answers "wait" and the timer
    /// is armed for the later instant then). A follower's expiry moves with every renewal it
    /// observes; moving its timer each time would cost a timer per renewal, where keeping it
    /// costs one wake-up per lease duration.
    fn arm(&mut self, ctx: &mut Context<Self>, until: Option<Instant>, now: Instant) {
        let until = match (until, self.core.drain_deadline()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if let Some((handle, at)) = self.core.timer {
            match until {
                Some(until) if at > until => {
                    ctx.cancel_future(handle);
                    self.core.timer = None;
                }
                // Fires no later than needed, or nothing is due: a wake-up that finds nothing
                // to do is cheaper than cancelling a timer.
                _ => return,
            }
        }
        if let Some(at) = until {
            let handle = ctx.run_later(at.saturating_duration_since(now), |act, ctx| {
                act.core.timer = None;
                act.drive(ctx);
            });
            self.core.timer = Some((handle, at));
        }
    }

    fn start(&mut self, call: Call, ctx: &mut Context<Self>) {
        let Call {
            seq,
            op,
            request,
            timeout,
        } = call;
        let key = &self.core.key;
        tracing::trace!(lease = %key, op = op.verb(), ?request, "calling the store");
        let store = &self.core.shared.store;
        let mut fut: BoxFuture<'static, StoreResult<StoredLease>> = match request {
            Request::Get => store.get(key),
            Request::Create(record) => store.create(key, record),
            Request::Replace { record, version } => store.replace(key, record, &version),
        };
        // A store that answers at once (the memory store) needs no timer: a renewal should not
        // pay for a timeout it cannot hit. (Polled once here; a pending call is polled again,
        // with the actor's waker, under its timeout.)
        if let Some(result) = futures::FutureExt::now_or_never(&mut fut) {
            ctx.spawn(actix::fut::ready(result).map(
                move |result, act: &mut Self, ctx: &mut Context<Self>| {
                    act.complete(seq, op, result, ctx);
                },
            ));
            return;
        }
        let verb = op.verb();
        // The operation's name is only spelled out if the call times out (from the actor's
        // own key, when the answer is handled): a renewal should cost one write, not a copy
        // of the key and a string as well.
        let fut = tokio::time::timeout(timeout, fut);
        ctx.spawn(fut.into_actor(self).map(move |result, act, ctx| {
            let result = result.unwrap_or_else(|_| {
                Err(StoreError::Timeout {
                    operation: format!("{verb} lease {}", act.core.key),
                    after: timeout,
                })
            });
            act.complete(seq, op, result, ctx);
        }));
    }

    fn complete(
        &mut self,
        seq: u64,
        op: Op,
        result: StoreResult<StoredLease>,
        ctx: &mut Context<Self>,
    ) {
        let _span = self.core.enter_span();
        let now = now();
        let Some(outcome) = self.core.machine.on_result(now, seq, result) else {
            return; // a call of an earlier incarnation
        };
        self.core.note_seen();
        tracing::trace!(lease = %self.core.key, op = op.verb(), ?outcome, "store answered");
        match outcome {
            Outcome::Read => self.core.last_error = None,
            Outcome::Conflict => {
                tracing::debug!(lease = %self.core.key, op = op.verb(), "conflict; re-reading");
                self.core.metrics.conflict();
            }
            Outcome::Acquired { token } => {
                self.core.last_error = None;
                self.core.release_error = None;
                self.grant(token, ctx);
            }
            Outcome::Renewed => {
                self.core.last_error = None;
                let claim = self.core.machine.claim().expect("renewed a claim");
                // The claim counts from the instant the write was started.
                self.core
                    .metrics
                    .renewed(now.saturating_duration_since(claim.renewed_at));
                let deadline = self.core.machine.deadline().expect("renewed a claim");
                if let Some(term) = self.core.term()
                    && !term.extend(deadline)
                {
                    // The term's own deadline passed before this renewal came back: it is
                    // over, and terms never come back. We still hold the lease: release it.
                    self.core.end_term(EndReason::Expired);
                }
            }
            Outcome::Unchanged => {
                tracing::warn!(lease = %self.core.key, "a renewal was answered without a new version; not counting it");
            }
            Outcome::Released => {
                self.core.last_error = None;
                self.core.release_error = None;
                tracing::info!(lease = %self.core.key, identity = %self.core.identity(), "released");
                self.core.finish_handoff(HandoffOutcome::Done);
            }
            Outcome::Retry { op, error } | Outcome::Failed { op, error } => {
                let transient = error.is_transient();
                if transient {
                    tracing::warn!(lease = %self.core.key, op = op.verb(), %error, "store call failed; will retry");
                } else {
                    tracing::error!(lease = %self.core.key, op = op.verb(), %error, "store call failed");
                }
                self.core.last_error = Some(error.to_string());
                if op == Op::Release {
                    if !transient {
                        // Retrying will not change the answer: leave the lease to expire.
                        self.core.machine.abandon();
                        self.core
                            .finish_handoff(HandoffOutcome::NotReleased(error.duplicate()));
                    }
                    self.core.release_error = Some(Box::new(error.duplicate()));
                }
                let recovery = self.face.call_failed(op, &error, transient, &self.core);
                if recovery == Recovery::Restart && !self.core.is_stopping() {
                    // Retrying in place would repeat the same answer: fail, and let the
                    // supervisor restart us after the machine's backoff.
                    ctx.stop();
                    return;
                }
            }
        }
        self.drive(ctx);
    }

    /// We just acquired the lease: hand a term to the face, or give the lease back.
    fn grant(&mut self, token: i32, ctx: &mut Context<Self>) {
        let core = &mut self.core;
        core.span.record("token", token);
        tracing::info!(lease = %core.key, identity = %core.identity(), token, "acquired");
        if core.is_stopping() || !matches!(core.phase, Phase::Vacant) {
            return; // a campaign write that raced with a stop: released (nobody has a term)
        }
        let deadline = core.machine.deadline().expect("just acquired");
        let uid = core.machine.lease().and_then(|lease| lease.uid.clone());
        let term = Term::new(
            core.key.clone(),
            core.identity().to_owned(),
            token,
            deadline,
        )
        .with_lease_uid(uid);
        // Recorded before the face hands the term out, so whoever receives it sees it counted.
        core.metrics.holding(true);
        if self.face.grant(&term, core, ctx) {
            core.phase = Phase::Serving(term);
        } else {
            // Nobody took it: the term never started, and the lease goes back at once.
            term.cancel();
            core.metrics.holding(false);
        }
    }

    /// Finishes a stop whose term has ended and whose lease is no longer held; returns the
    /// waiters to answer.
    fn maybe_finish_stop(
        &mut self,
        ctx: &mut Context<Self>,
    ) -> Option<(Vec<oneshot::Sender<StopOutcome>>, StopOutcome)> {
        let core = &mut self.core;
        if !matches!(core.stop, StopState::Stopping { .. })
            || !core.settled()
            || core.machine.in_flight()
        {
            return None;
        }
        let outcome = match (&core.abandoned, core.release_error.take()) {
            (Some(_), _) => StopOutcome::DrainTimeout {
                after: core.shared.drain_timeout,
            },
            (None, Some(error)) => StopOutcome::NotReleased(*error),
            (None, None) => StopOutcome::Done,
        };
        let StopState::Stopping { waiters, .. } =
            std::mem::replace(&mut core.stop, StopState::Stopped(outcome.clone()))
        else {
            unreachable!("checked above");
        };
        if let Some((handle, _)) = core.timer.take() {
            ctx.cancel_future(handle);
        }
        if let Some(handle) = core.watch_handle.take() {
            ctx.cancel_future(handle);
        }
        core.shared.directory.remove(&core.key, core.id);
        // The actor stays as a tombstone answering `Stopped` until its last handle is dropped
        // (stopping it here would make the actix supervisor restart it).
        tracing::info!(lease = %core.key, identity = %core.identity(), ?outcome, "{} stopped", F::KIND);
        Some((waiters, outcome))
    }

    fn begin_stop(&mut self, reply: oneshot::Sender<StopOutcome>, from_work: bool) {
        let core = &mut self.core;
        match &mut core.stop {
            StopState::Stopped(outcome) => {
                let _ = reply.send(outcome.clone());
            }
            StopState::Stopping { waiters, .. } => {
                if from_work {
                    let _ = reply.send(StopOutcome::Deferred);
                } else {
                    waiters.push(reply);
                }
            }
            StopState::Running => {
                core.release_error = None;
                let waiters = if from_work {
                    // Waiting here would wait for ourselves: the stop goes ahead, unwatched.
                    let _ = reply.send(StopOutcome::Deferred);
                    Vec::new()
                } else {
                    vec![reply]
                };
                core.stop = StopState::Stopping {
                    waiters,
                    since: now(),
                };
                // From now on asking for this lease starts a new actor (which waits for us).
                core.shared.directory.retire(&core.key, core.id);
                self.face.stopping(core);
                core.end_term(EndReason::Stopped);
            }
        }
    }
}

impl<F: Face> Drop for LeaseActor<F> {
    fn drop(&mut self) {
        // The actor is gone (stopped, its arbiter or System stopped, or it panicked): no term
        // of it may look alive.
        if let Phase::Serving(term) | Phase::Draining(term) = &self.core.phase {
            term.cancel();
        }
        if let Phase::Serving(_) = &self.core.phase {
            self.core.metrics.holding(false);
        }
    }
}

impl<F: Face> Actor for LeaseActor<F> {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        if self.core.is_stopped() {
            return;
        }
        if let Some(predecessor) = self.core.predecessor.take() {
            tracing::debug!(lease = %self.core.key, "waiting for the stopping {} of this lease", F::KIND);
            let finished = async move {
                let (tx, rx) = oneshot::channel();
                let sent = predecessor.send(Stop {
                    reply: tx,
                    from_work: false,
                });
                if sent.await.is_err() {
                    return None; // gone: nothing to wait for
                }
                rx.await.ok()
            };
            ctx.spawn(finished.into_actor(self).map(|outcome, act, ctx| {
                if let Some(StopOutcome::DrainTimeout { .. }) = outcome {
                    // Its work may still run under our identity: don't take its record back.
                    act.core.machine.forbid_reclaim();
                }
                act.core.blocked = false;
                act.drive(ctx);
            }));
        }
        self.watch(ctx);
        self.drive(ctx);
    }
}

impl<F: Face> Supervised for LeaseActor<F> {
    fn restarting(&mut self, _ctx: &mut Self::Context) {
        // Our calls and timers are gone; so is any certainty about the lease. End the term
        // (its work is told through cancellation and still drains before anything new starts)
        // and start over with a fresh read, after the machine's backoff.
        let core = &mut self.core;
        core.restarts += 1;
        core.end_term(EndReason::Restarted);
        core.machine.reset();
        core.timer = None;
        core.watch_handle = None;
        self.face.restarting(core);
        tracing::warn!(lease = %core.key, restarts = core.restarts, "{} actor restarted", F::KIND);
    }
}

impl<F: Face> StreamHandler<StoreResult<WatchEvent>> for LeaseActor<F> {
    fn handle(&mut self, item: StoreResult<WatchEvent>, ctx: &mut Self::Context) {
        if self.core.is_stopped() {
            return;
        }
        if let Err(error) = &item {
            tracing::debug!(lease = %self.core.key, %error, "watch error; re-reading");
        }
        // A renewal parked before this event is older: observed first, as of its arrival.
        self.core.take_parked();
        if self.core.machine.on_watch(now(), item) {
            self.core.note_seen();
            self.drive(ctx);
        } else if self.core.machine.is_behind() {
            // The hub's list, of a version we have: the watch has caught up, so what we
            // observed is current; decide on it.
            self.drive(ctx);
        }
    }

    fn finished(&mut self, ctx: &mut Self::Context) {
        if self.core.is_stopped() {
            return;
        }
        // The watch ended: doubt what we know, and watch again after a retry period.
        let ended = StoreError::Unavailable {
            message: "watch ended".into(),
            source: None,
        };
        self.core.machine.on_watch(now(), Err(ended));
        let retry = self.core.machine.timing().retry_period();
        ctx.run_later(retry, |act, ctx| {
            if act.core.is_stopped() {
                return;
            }
            act.watch(ctx);
            act.drive(ctx);
        });
        self.drive(ctx);
    }
}

impl<F: Face> Handler<Stop> for LeaseActor<F> {
    type Result = ();

    fn handle(&mut self, Stop { reply, from_work }: Stop, ctx: &mut Self::Context) {
        self.begin_stop(reply, from_work);
        self.drive(ctx);
    }
}

impl<F: Face> Handler<Internal> for LeaseActor<F> {
    type Result = ();

    fn handle(&mut self, message: Internal, ctx: &mut Self::Context) {
        let core = &mut self.core;
        match message {
            Internal::Drained(id) => {
                if matches!(&core.phase, Phase::Draining(t) if t.id() == id) {
                    core.phase = Phase::Vacant;
                }
            }
            Internal::WorkPanicked(id) => {
                if core.term().is_some_and(|t| t.id() == id) {
                    tracing::error!(lease = %core.key, term = %id, "guarded work panicked; ending the term");
                    core.end_term(EndReason::WorkPanicked);
                }
            }
            Internal::GrantDropped(id) => {
                if core.term().is_some_and(|t| t.id() == id) {
                    tracing::info!(lease = %core.key, term = %id, "nobody received the grant; giving the lease back");
                    core.end_term(EndReason::GivenUp);
                }
            }
        }
        self.drive(ctx);
    }
}

impl<F: Face> Handler<FaceCommand<F::Command>> for LeaseActor<F> {
    type Result = ();

    fn handle(&mut self, FaceCommand(command): FaceCommand<F::Command>, ctx: &mut Self::Context) {
        if !self.core.is_stopped() {
            self.face.command(command, &mut self.core, ctx);
            self.drive(ctx);
        } else {
            // A tombstone: the face answers with `Stopped`.
            self.face.command(command, &mut self.core, ctx);
            let waiting = Waiting::Idle;
            self.face.settle(&mut self.core, &waiting);
        }
    }
}

/// Starts a lease actor for `face` under actix supervision on `arbiter`.
pub(crate) fn start<F: Face>(
    arbiter: &actix::ArbiterHandle,
    params: LeaseParams,
    face: F,
) -> (Addr<LeaseActor<F>>, ActorId)
where
{
    let actor = LeaseActor::new(params, face);
    let id = actor.id();
    let addr = actix::Supervisor::start_in_arbiter(arbiter, move |_| actor);
    (addr, id)
}
