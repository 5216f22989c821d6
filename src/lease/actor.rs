//! The one lease actor: IO for the lease [`Machine`](super::Machine) and the term
//! [`Lifecycle`](super::lifecycle::Lifecycle), for every face.
//!
//! The actor decides nothing. It performs the calls the machine asks for (reads and
//! compare-and-swap writes, each under a timeout; one timer, re-armed from the machine's next
//! deadline or the lifecycle's drain deadline; the shared watch), feeds their results back, and
//! performs the effects the lifecycle returns that need the face or the actor's context:
//! telling the face that a term ended, watching a drain, offering a new term, retiring and
//! deregistering, restarting. Everything else (cancel first, mark lost, answer stops and
//! handoffs) is done by [`Core`] as the lifecycle says.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use actix::prelude::*;
use futures::future::BoxFuture;
use tokio::sync::oneshot;

pub(crate) use super::core::{Core, Directory, Internal, Reporter, Shared};
use super::face::{Face, Recovery};
use super::lifecycle::{Effect, Event};
pub(crate) use super::lifecycle::{HandoffOutcome, StopOutcome};
use super::{Call, Op, Outcome, Request, Step, StepDownReason, Waiting};
use crate::metrics::LeaseMetrics;
use crate::store::{LeaseKey, StoreError, StoreResult, StoredLease, WatchEvent};
use crate::term::{Term, now};
use crate::work::ActorId;

/// Stops a lease actor: cancel the term, drain its work, release, finish. Answered when done
/// (or at once with [`StopOutcome::Deferred`] when `from_work`).
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Stop {
    pub reply: oneshot::Sender<StopOutcome>,
    /// The caller runs inside this lease's guarded work (waiting would deadlock).
    pub from_work: bool,
}

/// A face's command, delivered to the face.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct FaceCommand<C>(pub C);

/// Everything a lease actor is made from.
pub(crate) struct LeaseParams {
    pub key: LeaseKey,
    pub shared: Arc<Shared>,
    pub metrics: LeaseMetrics,
    /// A stopping actor of the same lease in this replica: we start once it has finished.
    pub predecessor: Option<Recipient<Stop>>,
    /// The face's handles that keep the actor in use (counted by the registry).
    pub handles: super::core::Handles,
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
    timer: Option<(SpawnHandle, Instant)>,
    watch_handle: Option<SpawnHandle>,
    predecessor: Option<Recipient<Stop>>,
    /// The lifecycle asked for a restart: performed once the current handler returns.
    restart: bool,
}

impl<F: Face> LeaseActor<F> {
    pub fn new(params: LeaseParams, face: F) -> Self {
        let blocked = params.predecessor.is_some();
        let mut core = Core::new(
            params.key,
            params.shared,
            params.metrics,
            blocked,
            params.handles,
        );
        core.metrics.face(F::KIND);
        LeaseActor {
            core,
            face,
            timer: None,
            watch_handle: None,
            predecessor: params.predecessor,
            restart: false,
        }
    }

    /// The actor's id (for work scopes).
    pub fn id(&self) -> ActorId {
        self.core.id
    }

    /// Takes the next steps: whatever the machine and the lifecycle decide, then whatever the
    /// face can answer.
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
            self.core.settle(now);
            if F::HONOURS_HANDOFF_REQUESTS {
                self.handoff_if_requested();
            }
            let mut answers = self.perform(ctx);
            if self.restart {
                return;
            }
            // Once stopped (deregistered just now), no call may start: its answer would come
            // to nobody, and the store would cache the lease again (`LeaseStore::forget`).
            let waiting = if self.core.blocked || self.core.is_stopped() {
                Waiting::Idle
            } else {
                self.step(now, ctx)
            };
            self.arm(ctx, timer_for(&waiting), now);
            self.core.settle(now);
            answers.extend(self.perform(ctx));
            if self.restart {
                return;
            }
            let again = self.face.settle(&mut self.core, &waiting);
            // Answered after the face has published its final status, so a caller that
            // returns from `stop` sees it.
            for outcome in answers {
                for waiter in self.core.take_stop_waiters() {
                    let _ = waiter.send(outcome.clone());
                }
            }
            if !again || self.core.is_stopped() {
                break;
            }
        }
        self.retire_if_unused(ctx);
    }

    /// Retires an actor that nobody uses any more (rule `idle-actors-retire`): no handle
    /// reaches it, its face serves nobody, and the lifecycle has nothing of a term left. The
    /// registry hands it out no more (checked under its lock, so a handle taken meanwhile
    /// keeps it), and it stops as any stop does: with nothing to end, it deregisters at once.
    /// Asking for the lease again starts a new actor.
    fn retire_if_unused(&mut self, ctx: &mut Context<Self>) {
        if self.core.is_stopping()
            || self.core.handles.count() > 0
            || !self.face.unused()
            || !self.core.may_retire()
            || !self
                .core
                .shared
                .directory
                .retire_unused(&self.core.key, self.core.id)
        {
            return;
        }
        tracing::debug!(lease = %self.core.key, "{} unused: retiring", F::KIND);
        let (reply, _) = oneshot::channel();
        self.core.begin_stop(reply, false);
        self.drive(ctx);
    }

    /// Performs the lifecycle's queued effects that need the face or the actor; returns the
    /// stop outcomes to answer once the face has settled.
    fn perform(&mut self, ctx: &mut Context<Self>) -> Vec<StopOutcome> {
        let mut answers = Vec::new();
        if !self.core.has_effects() {
            return answers; // a renewal's usual case
        }
        while let Some(effect) = self.core.take_effect() {
            match effect {
                Effect::TellFace(term, reason) => {
                    self.core.metrics.holding(false);
                    tracing::info!(lease = %self.core.key, identity = %self.core.identity(), term = %term.id(), ?reason, "term ended");
                    self.face.term_ended(&term, &reason, &self.core);
                }
                Effect::WatchDrain(term) => self.watch_drain(&term, ctx),
                Effect::OfferTerm => self.grant(ctx),
                // Already out of the registry (`Core::apply`): asking for this lease starts a
                // new actor, which waits for us.
                Effect::Retire => self.face.stopping(&self.core),
                Effect::Deregister => {
                    if let Some((handle, _)) = self.timer.take() {
                        ctx.cancel_future(handle);
                    }
                    if let Some(handle) = self.watch_handle.take() {
                        ctx.cancel_future(handle);
                    }
                    self.core
                        .shared
                        .directory
                        .remove(&self.core.key, self.core.id);
                    self.free();
                    // The actor stays as a tombstone answering `Stopped` until its last handle
                    // is dropped (stopping it here would make the actix supervisor restart it).
                    tracing::info!(lease = %self.core.key, identity = %self.core.identity(), "{} stopped", F::KIND);
                }
                Effect::AnswerStop(outcome) => answers.push(outcome),
                Effect::Restart => {
                    // Retrying in place would repeat the same answer: fail, and let the
                    // supervisor restart us after the machine's backoff.
                    self.restart = true;
                    ctx.stop();
                }
                other => unreachable!("performed by the core: {other:?}"),
            }
        }
        answers
    }

    /// Frees what the stopped actor kept for its lease beyond itself: its metric series, its
    /// place in the watch hub and the store's cache, its token floor by name (kept for a while,
    /// then folded into the process's mark), the face's subscribers. A long-running service
    /// that uses ever new names keeps nothing of the old ones (rule `idle-actors-retire`).
    fn free(&mut self) {
        let core = &mut self.core;
        core.report(); // the last floor, published before it is retired
        core.metrics.remove();
        core.shared.watches.forget(&core.key, &core.inbox);
        core.shared.store.forget(&core.key);
        core.shared.floors.retire(&core.key);
        self.face.stopped();
    }

    /// Reports the drain of `term` once its guarded work has returned (at once if it has
    /// none).
    fn watch_drain(&mut self, term: &Term, ctx: &mut Context<Self>) {
        if !term.has_work() {
            self.core.feed(Event::Drained(term.id()));
            return;
        }
        // Spawned on the arbiter, not the context, so an actor restart cannot lose it.
        let (notify, drained, id) = (ctx.address(), term.drained(), term.id());
        actix::spawn(async move {
            drained.await;
            notify.do_send(Internal::Drained(id));
        });
    }

    /// Carries out a handoff asked for on the lease itself (an annotation), if there is one.
    fn handoff_if_requested(&mut self) {
        if self.core.lifecycle.handing_off() || self.core.term().is_none() {
            return;
        }
        let Some(to) = self.core.machine.handoff_requested() else {
            return;
        };
        let to: Arc<str> = to.into();
        tracing::info!(lease = %self.core.key, %to, "a handoff was requested on the lease");
        let (reply, _) = oneshot::channel();
        self.core.begin_handoff(to, reply);
    }

    /// Subscribes to the lease's changes through the watch hub.
    fn watch(&mut self, ctx: &mut Context<Self>) {
        let (stream, inbox) = self.core.shared.watches.watch_lease(&self.core.key);
        self.core.inbox = inbox;
        self.core.note_seen();
        self.watch_handle = Some(ctx.add_stream(stream));
    }

    fn step(&mut self, now: Instant, ctx: &mut Context<Self>) -> Waiting {
        loop {
            let want = self.core.want(self.face.wants(&self.core));
            // The machine writes the successor of the handoff under way, and nobody else.
            self.core
                .machine
                .hand_off_to(self.core.lifecycle.successor().cloned());
            match self.core.machine.next(now, SystemTime::now(), want) {
                Step::StepDown(reason) => {
                    self.log_step_down(&reason);
                    self.core.feed(Event::StepDown(reason));
                    // Tell the face before deciding again.
                    let answers = self.perform(ctx);
                    debug_assert!(answers.is_empty(), "a step-down answers no stop");
                }
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

    fn log_step_down(&self, reason: &StepDownReason) {
        let core = &self.core;
        match reason {
            StepDownReason::PreferredHolder { holder } => {
                tracing::info!(lease = %core.key, preferred = %holder, "the election controller prefers another holder; ending the term, then releasing");
            }
            StepDownReason::Superseded { holder: Some(h) } if h == core.identity() => {
                // Most often our own write whose answer was lost (it landed after we gave up
                // on it); a live twin is reported apart, by the machine (`Alert::Twin`).
                tracing::warn!(
                    lease = %core.key,
                    identity = %h,
                    "the lease names us under a version we did not see written (a write whose \
                     answer was lost, or another process with our identity); stepping down and \
                     judging it by expiry (rule one-identity)"
                );
            }
            _ => tracing::info!(lease = %core.key, ?reason, "stepping down"),
        }
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
        if let Some((handle, at)) = self.timer {
            match until {
                Some(until) if at > until => {
                    ctx.cancel_future(handle);
                    self.timer = None;
                }
                // Fires no later than needed, or nothing is due: a wake-up that finds nothing
                // to do is cheaper than cancelling a timer.
                _ => return,
            }
        }
        if let Some(at) = until {
            let handle = ctx.run_later(at.saturating_duration_since(now), |act, ctx| {
                act.timer = None;
                act.drive(ctx);
            });
            self.timer = Some((handle, at));
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
                self.core.span.record("token", token);
                tracing::info!(lease = %self.core.key, identity = %self.core.identity(), token, "acquired");
                self.core.feed(Event::Acquired);
            }
            Outcome::Renewed => {
                self.core.last_error = None;
                let claim = self.core.machine.claim().expect("renewed a claim");
                // The claim counts from the instant the write was started.
                self.core
                    .metrics
                    .renewed(now.saturating_duration_since(claim.renewed_at));
                let until = self.core.machine.deadline().expect("renewed a claim");
                self.core.renewed(until);
            }
            Outcome::Unchanged => {
                tracing::warn!(lease = %self.core.key, "a renewal was answered without a new version; not counting it");
            }
            Outcome::Released => {
                self.core.last_error = None;
                tracing::info!(lease = %self.core.key, identity = %self.core.identity(), "released");
                self.core.feed(Event::Released);
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
                    self.core.feed(Event::ReleaseFailed {
                        error: error.duplicate(),
                        transient,
                    });
                }
                if self.face.call_failed(op, &error, transient, &self.core) == Recovery::Restart {
                    self.core.feed(Event::Refused { error });
                }
            }
        }
        self.drive(ctx);
    }

    /// We just acquired the lease and the lifecycle lets a term start: hand it to the face,
    /// or give the lease back.
    fn grant(&mut self, ctx: &mut Context<Self>) {
        let core = &mut self.core;
        let (Some(claim), Some(deadline)) = (core.machine.claim(), core.machine.deadline()) else {
            return; // the claim is gone already: no term
        };
        let uid = core.machine.lease().and_then(|lease| lease.uid.clone());
        let term = Term::new(
            core.key.clone(),
            core.identity().to_owned(),
            claim.token,
            deadline,
        )
        .with_lease_uid(uid);
        // Recorded before the face hands the term out, so whoever receives it sees it counted.
        core.metrics.holding(true);
        let reporter = Reporter(ctx.address().recipient());
        if self.face.grant(&term, &self.core, &reporter) {
            self.core.feed(Event::Granted(term));
        } else {
            // Nobody took it: the term never started, and the lease goes back at once.
            self.core.metrics.holding(false);
            self.core.feed(Event::NotTaken(term));
        }
    }
}

impl<F: Face> Drop for LeaseActor<F> {
    fn drop(&mut self) {
        // The actor is gone (stopped, its arbiter or System stopped, or it panicked): no term
        // of it may look alive.
        if let Some(term) = self.core.live_term() {
            term.cancel();
        }
        if self.core.term().is_some() {
            self.core.metrics.holding(false);
        }
    }
}

impl<F: Face> Actor for LeaseActor<F> {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.restart = false;
        if self.core.is_stopped() {
            return;
        }
        if let Some(predecessor) = self.predecessor.take() {
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
                // The predecessor removed the lease's series as it stopped: ours again.
                act.core.metrics.face(F::KIND);
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
        // (its work is told through cancellation and still drains before anything new
        // starts; a draining term is marked lost: rule refusal-during-drain) and start over
        // with a fresh read, after the machine's backoff.
        let core = &mut self.core;
        core.restarts += 1;
        core.feed(Event::Restarting);
        core.machine.reset();
        self.timer = None;
        self.watch_handle = None;
        self.face.restarting(&self.core);
        tracing::warn!(lease = %self.core.key, restarts = self.core.restarts, "{} actor restarted", F::KIND);
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
        self.core.begin_stop(reply, from_work);
        self.drive(ctx);
    }
}

impl<F: Face> Handler<Internal> for LeaseActor<F> {
    type Result = ();

    fn handle(&mut self, message: Internal, ctx: &mut Self::Context) {
        let core = &mut self.core;
        match message {
            Internal::Drained(id) => core.feed(Event::Drained(id)),
            Internal::WorkPanicked(id) => {
                if core.term().is_some_and(|t| t.id() == id) {
                    tracing::error!(lease = %core.key, term = %id, "guarded work panicked; ending the term");
                }
                core.feed(Event::WorkPanicked(id));
            }
            Internal::GrantDropped(id) => {
                if core.term().is_some_and(|t| t.id() == id) {
                    tracing::info!(lease = %core.key, term = %id, "nobody received the grant; giving the lease back");
                }
                core.feed(Event::GrantDropped(id));
            }
        }
        self.drive(ctx);
    }
}

impl<F: Face> Handler<FaceCommand<F::Command>> for LeaseActor<F> {
    type Result = ();

    fn handle(&mut self, FaceCommand(command): FaceCommand<F::Command>, ctx: &mut Self::Context) {
        let reporter = Reporter(ctx.address().recipient());
        self.face.command(command, &mut self.core, &reporter);
        if !self.core.is_stopped() {
            self.drive(ctx);
        } else {
            // A tombstone: the face answers with `Stopped`.
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
) -> (Addr<LeaseActor<F>>, ActorId) {
    let actor = LeaseActor::new(params, face);
    let id = actor.id();
    let addr = actix::Supervisor::start_in_arbiter(arbiter, move |_| actor);
    (addr, id)
}
