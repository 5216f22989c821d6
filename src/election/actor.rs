//! The election actor: executes the lease core's decisions for one election.

use std::sync::Arc;
use std::time::Duration;

use actix::WeakRecipient;
use actix::prelude::*;
use tokio::sync::{oneshot, watch};
use tokio_util::task::TaskTracker;

use super::{Command, DeposeReason, Deposed, Elected, ElectionStatus, LeaderChanged, TermCallback};
use crate::lease::StepDownReason;
use crate::lease::driver::{self, LeaseActor, LeaseState, Op};
use crate::store::StoreError;
use crate::supervisor::Registry;
use crate::term::{Term, TermId};

/// Recipients held weakly and pruned when they are gone (as in actix's `weak_recipient`
/// example): subscribing must not keep an actor alive.
struct Subscribers<M: Message + Send>(Vec<WeakRecipient<M>>)
where
    M::Result: Send;

impl<M> Subscribers<M>
where
    M: Message<Result = ()> + Send + Clone + 'static,
{
    fn new() -> Self {
        Subscribers(Vec::new())
    }

    fn publish(&mut self, message: &M) {
        self.0.retain(|weak| match weak.upgrade() {
            Some(recipient) => {
                recipient.do_send(message.clone());
                true
            }
            None => false,
        });
    }
}

/// The actor behind an [`Election`](super::Election). Started and restarted by the
/// [`Supervisor`](crate::Supervisor); use the handle rather than messaging it directly.
pub struct ElectionActor {
    st: LeaseState,
    registry: Arc<Registry>,
    status: watch::Sender<ElectionStatus>,
    elected: Subscribers<Elected>,
    deposed: Subscribers<Deposed>,
    leader_changed: Subscribers<LeaderChanged>,
    callbacks: Vec<TermCallback>,
    /// The current term and the tracker of its `when_elected` futures.
    term: Option<(Term, TaskTracker)>,
    /// A finished term whose futures are still running: no new campaign until they return.
    draining: Option<TermId>,
    last_leader: Option<String>,
    stopping: bool,
    stopped: bool,
    stop_waiters: Vec<oneshot::Sender<()>>,
    restarts: u32,
    /// An election for the same lease in this replica that was told to stop and is still
    /// finishing (draining its term, releasing): we campaign only once it is done, so the two
    /// never run terms at once.
    predecessor: Option<super::Election>,
    /// Since when the lease has been observed without a holder (for the metric).
    leaderless_since: Option<std::time::Instant>,
    /// Failures since the last successful store call, for the restart backoff.
    failures: u32,
    watch_handle: Option<SpawnHandle>,
}

impl ElectionActor {
    pub(crate) fn new(
        st: LeaseState,
        registry: Arc<Registry>,
        status: watch::Sender<ElectionStatus>,
        predecessor: Option<super::Election>,
    ) -> Self {
        ElectionActor {
            predecessor,
            leaderless_since: None,
            st,
            registry,
            status,
            elected: Subscribers::new(),
            deposed: Subscribers::new(),
            leader_changed: Subscribers::new(),
            callbacks: Vec::new(),
            term: None,
            draining: None,
            last_leader: None,
            stopping: false,
            stopped: false,
            stop_waiters: Vec::new(),
            restarts: 0,
            failures: 0,
            watch_handle: None,
        }
    }

    /// Backoff before campaigning after a restart: retry period doubling per consecutive
    /// failure, at most the lease duration.
    fn restart_backoff(&self) -> Duration {
        if self.failures == 0 {
            return Duration::ZERO;
        }
        let factor = 1u32 << self.failures.saturating_sub(1).min(16);
        (self.st.timing.retry_period() * factor).min(self.st.timing.lease_duration())
    }

    fn start_term(&mut self, token: i32) {
        let term = Term::new(self.st.key.clone(), self.st.identity.clone(), token);
        let tracker = TaskTracker::new();
        for callback in &self.callbacks {
            run_callback(&tracker, callback, &term);
        }
        self.term = Some((term.clone(), tracker));
        self.st.metrics.leading(true);
        self.publish_status();
        self.elected.publish(&Elected { term });
    }

    /// Cancels the current term, tells subscribers, and waits (off the actor) for its futures.
    fn end_term(&mut self, reason: DeposeReason, ctx: &mut Context<Self>) {
        let Some((term, tracker)) = self.term.take() else {
            return;
        };
        term.cancel();
        self.st.metrics.leading(false);
        tracing::info!(lease = %self.st.key, identity = %self.st.identity, term = %term.id(), %reason, "term ended");
        self.deposed.publish(&Deposed {
            lease: self.st.key.clone(),
            term_id: term.id(),
            fencing_token: term.fencing_token(),
            reason,
        });
        tracker.close();
        if tracker.is_empty() {
            self.publish_status();
            return;
        }
        self.draining = Some(term.id());
        self.publish_status();
        // Spawned on the arbiter, not the context, so an actor restart cannot lose it.
        let addr = ctx.address();
        let id = term.id();
        actix::spawn(async move {
            tracker.wait().await;
            addr.do_send(Drained(id));
        });
    }

    fn publish_status(&self) {
        let term = self.term.as_ref().map(|(t, _)| t.clone());
        let valid_until = if term.is_some() {
            self.st.deadline()
        } else {
            None
        };
        let leader = self.st.holder().map(str::to_owned);
        let last_error = self.st.last_error.clone();
        let (restarts, stopped) = (self.restarts, self.stopped);
        let invalid = self.st.invalid.clone();
        let renewed_at = term
            .as_ref()
            .and(self.st.claim.as_ref())
            .map(|c| c.renewed_at);
        self.status.send_modify(|s| {
            s.renewed_at = renewed_at;
            s.invalid = invalid;
            s.term = term;
            s.valid_until = valid_until;
            s.leader = leader;
            s.last_error = last_error;
            s.restarts = restarts;
            s.stopped = stopped;
        });
    }

    fn maybe_finish_stop(&mut self, ctx: &mut Context<Self>) {
        if !self.stopping
            || self.stopped
            || self.draining.is_some()
            || self.st.claim.is_some()
            || self.st.in_flight.is_some()
        {
            return;
        }
        self.stopped = true;
        if let Some(handle) = self.watch_handle.take() {
            ctx.cancel_future(handle);
        }
        self.registry.remove_election(&self.st.key, &ctx.address());
        self.publish_status();
        for waiter in self.stop_waiters.drain(..) {
            let _ = waiter.send(());
        }
        // The actor stays as a tombstone answering `Stopped` until its last handle is dropped
        // (stopping it here would make the actix supervisor restart it).
        tracing::info!(lease = %self.st.key, identity = %self.st.identity, "election stopped");
    }
}

fn run_callback(tracker: &TaskTracker, callback: &TermCallback, term: &Term) {
    let fut = callback(term.clone());
    actix::spawn(tracker.track_future(fut));
}

impl Actor for ElectionActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        if self.stopped {
            return;
        }
        if let Some(predecessor) = self.predecessor.clone() {
            tracing::debug!(lease = %self.st.key, "waiting for the stopping election before campaigning");
            let finished = async move {
                // Idempotent: resolves once the predecessor has stopped (or is gone).
                let _ = predecessor.stop().await;
            };
            ctx.spawn(finished.into_actor(self).map(|(), act, ctx| {
                act.predecessor = None;
                Actor::started(act, ctx);
            }));
            return;
        }
        self.watch_handle = Some(ctx.add_stream(self.st.watches.watch(&self.st.key)));
        let backoff = self.restart_backoff();
        if backoff.is_zero() {
            driver::step(self, ctx);
        } else {
            tracing::info!(lease = %self.st.key, ?backoff, "campaigning again after a restart backoff");
            ctx.run_later(backoff, driver::step);
        }
    }
}

impl Supervised for ElectionActor {
    fn restarting(&mut self, ctx: &mut Self::Context) {
        // Our futures and timers are gone; so is any certainty about the lease. End the term
        // (its work is told through cancellation) and start over with a fresh read.
        self.restarts += 1;
        self.end_term(DeposeReason::Restarted, ctx);
        self.st.reset();
        self.watch_handle = None;
        self.publish_status();
        tracing::warn!(lease = %self.st.key, restarts = self.restarts, "election actor restarted");
    }
}

impl LeaseActor for ElectionActor {
    fn lease(&mut self) -> &mut LeaseState {
        &mut self.st
    }

    fn halted(&self) -> bool {
        self.stopped || self.predecessor.is_some()
    }

    fn want(&self) -> bool {
        if self.stopped {
            return false;
        }
        if self.stopping {
            // Keep the lease (renewing) until the cancelled term's work has returned.
            return self.st.claim.is_some() && self.draining.is_some();
        }
        self.draining.is_none()
    }

    fn on_acquired(&mut self, token: i32, ctx: &mut Context<Self>) {
        self.failures = 0;
        if self.stopping {
            // A campaign write that raced with stop: give it straight back.
            driver::step(self, ctx);
            return;
        }
        self.start_term(token);
    }

    fn on_step_down(&mut self, reason: StepDownReason, ctx: &mut Context<Self>) {
        self.end_term(reason.into(), ctx);
        self.maybe_finish_stop(ctx);
    }

    fn on_released(&mut self, ctx: &mut Context<Self>) {
        self.end_term(DeposeReason::Stopped, ctx);
        self.maybe_finish_stop(ctx);
    }

    fn on_observed(&mut self, ctx: &mut Context<Self>) {
        self.failures = 0;
        let now = driver::now();
        match (self.st.holder(), self.leaderless_since) {
            (None, None) => self.leaderless_since = Some(now),
            (Some(_), Some(since)) => {
                self.st
                    .metrics
                    .leaderless(now.saturating_duration_since(since));
                self.leaderless_since = None;
            }
            _ => {}
        }
        self.maybe_finish_stop(ctx);
        let leader = self.st.holder().map(str::to_owned);
        if leader != self.last_leader {
            self.last_leader = leader.clone();
            self.leader_changed.publish(&LeaderChanged {
                lease: self.st.key.clone(),
                leader,
            });
        }
        self.publish_status();
    }

    fn on_invalid(&mut self, _reason: &str, _ctx: &mut Context<Self>) {
        self.publish_status();
    }

    fn on_repaired(&mut self, _ctx: &mut Context<Self>) {
        self.publish_status();
    }

    fn on_fatal(&mut self, op: Op, error: StoreError, ctx: &mut Context<Self>) {
        self.publish_status();
        if self.stopping {
            // Give up on the release; the lease expires on its own.
            tracing::warn!(lease = %self.st.key, ?op, %error, "could not release while stopping");
            self.st.claim = None;
            self.end_term(DeposeReason::Stopped, ctx);
            self.maybe_finish_stop(ctx);
            return;
        }
        // Retrying in place would repeat the same answer: fail, and let the supervisor
        // restart us with a backoff.
        self.failures += 1;
        ctx.stop();
    }

    fn on_write_failed(&mut self, _op: Op, _error: &StoreError, ctx: &mut Context<Self>) {
        self.publish_status();
        // A stop that waited for this call can finish now.
        self.maybe_finish_stop(ctx);
    }

    fn on_read_failed(&mut self, _error: &StoreError, ctx: &mut Context<Self>) {
        self.publish_status();
        self.maybe_finish_stop(ctx);
    }
}

driver::impl_watch_handler!(ElectionActor);

impl Handler<Command> for ElectionActor {
    type Result = ();

    fn handle(&mut self, command: Command, ctx: &mut Self::Context) {
        match command {
            Command::SubscribeElected(weak) => {
                if let (Some((term, _)), Some(recipient)) = (&self.term, weak.upgrade()) {
                    recipient.do_send(Elected { term: term.clone() });
                }
                self.elected.0.push(weak);
            }
            Command::SubscribeDeposed(weak) => self.deposed.0.push(weak),
            Command::SubscribeLeaderChanged(weak) => self.leader_changed.0.push(weak),
            Command::WhenElected(callback) => {
                if let Some((term, tracker)) = &self.term {
                    run_callback(tracker, &callback, term);
                }
                self.callbacks.push(callback);
            }
            Command::Stop(reply) => {
                if self.stopped {
                    let _ = reply.send(());
                    return;
                }
                self.stop_waiters.push(reply);
                if !self.stopping {
                    self.stopping = true;
                    // From now on `Dsync::election` starts a new election for this lease
                    // instead of handing out this one, which is going away.
                    self.registry.retire_election(&self.st.key, &ctx.address());
                    self.end_term(DeposeReason::Stopped, ctx);
                    driver::step(self, ctx);
                }
                self.maybe_finish_stop(ctx);
            }
        }
    }
}

/// Every future of a finished term has returned.
#[derive(Message)]
#[rtype(result = "()")]
struct Drained(TermId);

impl Handler<Drained> for ElectionActor {
    type Result = ();

    fn handle(&mut self, Drained(id): Drained, ctx: &mut Self::Context) {
        if self.draining == Some(id) {
            self.draining = None;
            self.publish_status();
            driver::step(self, ctx);
            self.maybe_finish_stop(ctx);
        }
    }
}
