//! The thin shell around [`decide`](super::decide) shared by election and lock actors.
//!
//! It owns the IO: reads, compare-and-swap writes (each under a timeout), the one timer re-armed
//! from the core's next deadline, and the watch. It never decides anything itself; it feeds
//! results back into the core and tells the actor about term changes through [`LeaseActor`].
//!
//! At most one store call is in flight per lease. Watch events that arrive meanwhile only update
//! the observation (if newer); the next decision is taken when the call completes.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use actix::prelude::*;
use futures::future::BoxFuture;

use super::{Claim, Decision, Input, Observed, StepDownReason, decide, token_of};
use crate::config::Timing;
use crate::store::{
    LeaseKey, LeaseRecord, LeaseStore, StoreError, StoreResult, StoredLease, WatchEvent,
};
use crate::watch::WatchHub;

/// Local monotonic "now", as tokio sees it (so paused-time tests control it).
pub(crate) fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// A store call the shell can have in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Read,
    Create,
    Acquire,
    Renew,
    Release,
}

impl Op {
    pub(crate) fn verb(self) -> &'static str {
        match self {
            Op::Read => "read",
            Op::Create => "create",
            Op::Acquire => "acquire",
            Op::Renew => "renew",
            Op::Release => "release",
        }
    }
}

/// Lease state owned by an actor and driven by this shell.
pub(crate) struct LeaseState {
    pub key: LeaseKey,
    pub watches: Arc<WatchHub>,
    pub identity: String,
    pub timing: Timing,
    pub store: Arc<dyn LeaseStore>,
    pub observed: Option<Observed>,
    pub claim: Option<Claim>,
    pub retry_after: Option<Instant>,
    pub needs_read: bool,
    pub in_flight: Option<Op>,
    pub last_error: Option<String>,
    /// Why the observed record cannot be interpreted, while it cannot (set by `step`).
    pub invalid: Option<String>,
    /// This lease's metrics (records nothing without the `metrics` feature or registry).
    pub metrics: crate::metrics::LeaseMetrics,
    /// Carries lease, identity and the current term's fencing token into every log line.
    pub span: tracing::Span,
    timer: Option<SpawnHandle>,
}

impl LeaseState {
    pub fn new(
        key: LeaseKey,
        identity: String,
        timing: Timing,
        store: Arc<dyn LeaseStore>,
        watches: Arc<WatchHub>,
    ) -> Self {
        let span = tracing::info_span!(
            "lease",
            lease = %key,
            identity = %identity,
            token = tracing::field::Empty
        );
        LeaseState {
            key,
            watches,
            identity,
            timing,
            store,
            observed: None,
            claim: None,
            retry_after: None,
            needs_read: true,
            in_flight: None,
            last_error: None,
            invalid: None,
            metrics: Default::default(),
            span,
            timer: None,
        }
    }

    /// Forgets everything learned (after an actor restart: its futures and timers are gone).
    pub fn reset(&mut self) {
        self.observed = None;
        self.claim = None;
        self.retry_after = None;
        self.needs_read = true;
        self.in_flight = None;
        self.timer = None;
    }

    /// The holder recorded in the latest observation.
    pub fn holder(&self) -> Option<&str> {
        self.observed
            .as_ref()
            .and_then(|o| o.lease.as_ref())
            .and_then(|l| l.record.holder())
    }

    /// When our claim must be renewed by, if we hold one.
    pub fn deadline(&self) -> Option<Instant> {
        self.claim
            .as_ref()
            .map(|c| c.renewed_at + self.timing.renew_deadline())
    }

    /// Timeout for a store call started now: never past our renew deadline, so a hanging call
    /// cannot keep us from stepping down in time.
    fn call_timeout(&self, now: Instant) -> Duration {
        let limit = self.timing.renew_deadline();
        match self.deadline() {
            Some(deadline) => deadline.saturating_duration_since(now).min(limit),
            None => limit,
        }
    }

    fn observe(&mut self, lease: Option<StoredLease>, now: Instant) {
        self.observed = Some(Observed::update(self.observed.as_ref(), lease, now));
    }

    fn current_version(&self) -> Option<&str> {
        self.observed
            .as_ref()
            .and_then(|o| o.lease.as_ref())
            .map(|l| l.resource_version.as_str())
    }
}

/// What an actor driven by the shell provides.
pub(crate) trait LeaseActor: Actor<Context = Context<Self>> {
    fn lease(&mut self) -> &mut LeaseState;
    /// Whether the actor is finished with the lease for good (stopped): no more calls.
    fn halted(&self) -> bool {
        false
    }
    /// Whether a stale observation matters now (an idle lock does not read at all).
    fn wants_reads(&self) -> bool {
        true
    }
    /// Whether we want to hold the lease now.
    fn want(&self) -> bool;
    /// A write made us holder with this fencing token.
    fn on_acquired(&mut self, token: i32, ctx: &mut Context<Self>);
    /// Our claim is gone without a release.
    fn on_step_down(&mut self, reason: StepDownReason, ctx: &mut Context<Self>);
    /// Our release was written.
    fn on_released(&mut self, ctx: &mut Context<Self>);
    /// The observation changed (new holder, new version).
    fn on_observed(&mut self, ctx: &mut Context<Self>);
    /// The latest decision: someone else holds the lease.
    fn on_follow(&mut self, _holder: &str, _ctx: &mut Context<Self>) {}
    /// The lease record cannot be interpreted.
    fn on_invalid(&mut self, _reason: &str, _ctx: &mut Context<Self>) {}
    /// The lease record can be interpreted again (repaired or deleted).
    fn on_repaired(&mut self, _ctx: &mut Context<Self>) {}
    /// A store call failed with an error retrying will not fix (forbidden, invalid, ...).
    fn on_fatal(&mut self, op: Op, error: StoreError, ctx: &mut Context<Self>);
    /// A read failed transiently (it will be retried after a backoff).
    fn on_read_failed(&mut self, _error: &StoreError, _ctx: &mut Context<Self>) {}
    /// A write lost a compare-and-swap (someone else wrote first): the lease is re-read if
    /// [`wants_reads`](Self::wants_reads) says a fresh observation still matters.
    fn on_conflict(&mut self, _op: Op, _ctx: &mut Context<Self>) {}
    /// A write failed transiently (it will be retried after a backoff).
    fn on_write_failed(&mut self, _op: Op, _error: &StoreError, _ctx: &mut Context<Self>) {}
}

/// Takes the next step: decide, then start a call or arm the timer.
pub(crate) fn step<A: LeaseActor>(act: &mut A, ctx: &mut Context<A>) {
    if act.halted() || act.lease().in_flight.is_some() {
        return;
    }
    let _span = act.lease().span.clone().entered();
    if let Some(timer) = act.lease().timer.take() {
        ctx.cancel_future(timer);
    }
    let want = act.want();
    let now = now();
    let st = act.lease();
    let decision = decide(&Input {
        now,
        wall_now: SystemTime::now(),
        identity: &st.identity,
        timing: &st.timing,
        observed: st.observed.as_ref(),
        claim: st.claim.as_ref(),
        want,
        retry_after: st.retry_after,
    });
    let invalid = match &decision {
        Decision::Invalid { reason } => Some(reason.clone()),
        _ => None,
    };
    let repaired = st.invalid.is_some() && invalid.is_none();
    st.invalid = invalid;
    if repaired {
        act.on_repaired(ctx);
    }
    let st = act.lease();
    // Stepping down is safe on any observation, however stale; everything else needs a
    // current one.
    if let Decision::StepDown(reason) = decision {
        st.claim = None;
        tracing::info!(lease = %st.key, identity = %st.identity, ?reason, "stepping down");
        act.on_step_down(reason, ctx);
        return step(act, ctx);
    }
    if st.needs_read {
        if let Some(retry_after) = st.retry_after
            && now < retry_after
        {
            // After a failure, reads wait for the backoff too (a holder still wakes for its
            // deadline).
            let wake = st.deadline().map_or(retry_after, |d| d.min(retry_after));
            return arm(act, ctx, wake, now);
        }
        if act.wants_reads() {
            return start(act, ctx, Op::Read, None, now);
        }
        return;
    }
    match decision {
        Decision::Read => start(act, ctx, Op::Read, None, now),
        Decision::Create { record } => start(act, ctx, Op::Create, Some((record, None)), now),
        Decision::Acquire { record, version } => {
            start(act, ctx, Op::Acquire, Some((record, Some(version))), now)
        }
        Decision::Renew { record, version } => {
            start(act, ctx, Op::Renew, Some((record, Some(version))), now)
        }
        Decision::Release { record, version } => {
            start(act, ctx, Op::Release, Some((record, Some(version))), now)
        }
        Decision::Hold { until } | Decision::Backoff { until } => arm(act, ctx, until, now),
        Decision::Follow { holder, until } => {
            act.on_follow(&holder, ctx);
            arm(act, ctx, until, now);
        }
        Decision::Idle { .. } => {}
        Decision::Invalid { reason } => {
            let st = act.lease();
            tracing::warn!(lease = %st.key, %reason, "lease record is invalid; not touching it");
            st.last_error = Some(format!("lease {} is invalid: {reason}", st.key));
            // Look again later, in case someone repairs it (a watch event also wakes us).
            st.needs_read = true;
            let retry = now + st.timing.retry_period();
            act.on_invalid(&reason, ctx);
            arm(act, ctx, retry, now);
        }
        Decision::StepDown(_) => unreachable!("handled above"),
    }
}

fn arm<A: LeaseActor>(act: &mut A, ctx: &mut Context<A>, until: Instant, now: Instant) {
    let handle = ctx.run_later(until.saturating_duration_since(now), |act, ctx| {
        act.lease().timer = None;
        step(act, ctx);
    });
    act.lease().timer = Some(handle);
}

fn start<A: LeaseActor>(
    act: &mut A,
    ctx: &mut Context<A>,
    op: Op,
    write: Option<(LeaseRecord, Option<String>)>,
    now: Instant,
) {
    let st = act.lease();
    st.in_flight = Some(op);
    if op == Op::Read {
        st.needs_read = false;
    }
    let timeout = st.call_timeout(now);
    let key = st.key.clone();
    tracing::trace!(lease = %key, identity = %st.identity, op = op.verb(), ?write, "calling the store");
    let call: BoxFuture<'static, StoreResult<StoredLease>> = match write {
        None => st.store.get(&key),
        Some((record, None)) => st.store.create(&key, record),
        Some((record, Some(version))) => st.store.replace(&key, record, &version),
    };
    let operation = format!("{} lease {key}", op.verb());
    let fut = async move {
        match tokio::time::timeout(timeout, call).await {
            Ok(result) => result,
            Err(_) => Err(StoreError::Timeout {
                operation,
                after: timeout,
            }),
        }
    };
    ctx.spawn(
        fut.into_actor(act)
            .map(move |result, act, ctx| complete(act, ctx, op, now, result)),
    );
}

fn complete<A: LeaseActor>(
    act: &mut A,
    ctx: &mut Context<A>,
    op: Op,
    started: Instant,
    result: StoreResult<StoredLease>,
) {
    let _span = act.lease().span.clone().entered();
    let now = now();
    let st = act.lease();
    st.in_flight = None;
    match result {
        Ok(stored) => {
            tracing::trace!(lease = %st.key, identity = %st.identity, op = op.verb(), ?stored, "store answered");
            let token = token_of(&stored.record);
            st.observe(Some(stored), now);
            st.last_error = None;
            if op != Op::Read {
                st.retry_after = None;
            }
            match op {
                Op::Read => {}
                Op::Create | Op::Acquire => {
                    st.claim = Some(Claim {
                        token,
                        acquired_at: started,
                        renewed_at: started,
                    });
                    st.span.record("token", token);
                    tracing::info!(lease = %st.key, identity = %st.identity, token, "acquired");
                    act.on_acquired(token, ctx);
                }
                Op::Renew => {
                    if let Some(claim) = st.claim.as_mut() {
                        claim.renewed_at = started;
                    }
                    st.metrics.renewed(now.saturating_duration_since(started));
                }
                Op::Release => {
                    st.claim = None;
                    tracing::info!(lease = %st.key, identity = %st.identity, "released");
                    act.on_released(ctx);
                }
            }
            act.on_observed(ctx);
        }
        Err(StoreError::Conflict { .. } | StoreError::AlreadyExists { .. }) => {
            tracing::debug!(lease = %st.key, identity = %st.identity, op = op.verb(), "conflict; re-reading");
            st.needs_read = true;
            st.metrics.conflict();
            act.on_conflict(op, ctx);
        }
        // A 404 on create means the namespace is missing: a definite answer, handled below.
        Err(StoreError::NotFound { .. }) if op != Op::Create => {
            st.observe(None, now);
            act.on_observed(ctx);
        }
        Err(error) if error.is_transient() => {
            tracing::warn!(lease = %st.key, op = op.verb(), %error, "store call failed; will retry");
            st.last_error = Some(error.to_string());
            let retry = now + st.timing.retry_period();
            if op == Op::Read {
                st.needs_read = true;
                st.retry_after = Some(retry);
                act.on_read_failed(&error, ctx);
                // The read is retried after the backoff; a holder still steps down on time.
                step(act, ctx);
                return;
            }
            st.retry_after = Some(retry);
            act.on_write_failed(op, &error, ctx);
        }
        Err(error) => {
            tracing::error!(lease = %st.key, op = op.verb(), %error, "store call failed");
            st.last_error = Some(error.to_string());
            st.retry_after = Some(now + st.timing.retry_period());
            if op == Op::Read {
                st.needs_read = true;
            }
            act.on_fatal(op, error, ctx);
            return;
        }
    }
    step(act, ctx);
}

/// Starts watching the lease; events arrive through the actor's `StreamHandler`.
pub(crate) fn watch<A>(act: &mut A, ctx: &mut Context<A>)
where
    A: LeaseActor + StreamHandler<StoreResult<WatchEvent>>,
{
    let st = act.lease();
    let stream = st.watches.watch(&st.key);
    ctx.add_stream(stream);
}

/// Handles one watch item: newer records update the observation; anything doubtful makes the
/// next step re-read.
pub(crate) fn on_watch_item<A: LeaseActor>(
    act: &mut A,
    ctx: &mut Context<A>,
    item: StoreResult<WatchEvent>,
) {
    if act.halted() {
        return;
    }
    let now = now();
    let st = act.lease();
    match item {
        Ok(WatchEvent::Applied(stored)) => {
            if !super::is_newer(&stored.resource_version, st.current_version()) {
                return;
            }
            st.observe(Some(stored), now);
            act.on_observed(ctx);
        }
        Ok(WatchEvent::Deleted { .. }) => st.needs_read = true,
        Err(error) => {
            tracing::debug!(lease = %st.key, %error, "watch error; re-reading");
            st.needs_read = true;
        }
    }
    step(act, ctx);
}

/// The watch ended: re-read, and watch again after a retry period.
pub(crate) fn on_watch_finished<A>(act: &mut A, ctx: &mut Context<A>)
where
    A: LeaseActor + StreamHandler<StoreResult<WatchEvent>>,
{
    if act.halted() {
        return;
    }
    let st = act.lease();
    st.needs_read = true;
    ctx.run_later(st.timing.retry_period(), |act, ctx| {
        watch(act, ctx);
        step(act, ctx);
    });
}

/// Implements the watch's `StreamHandler` for a [`LeaseActor`] by delegating to the shell.
macro_rules! impl_watch_handler {
    ($actor:ty) => {
        impl ::actix::StreamHandler<$crate::store::StoreResult<$crate::store::WatchEvent>>
            for $actor
        {
            fn handle(
                &mut self,
                item: $crate::store::StoreResult<$crate::store::WatchEvent>,
                ctx: &mut Self::Context,
            ) {
                $crate::lease::driver::on_watch_item(self, ctx, item);
            }

            fn finished(&mut self, ctx: &mut Self::Context) {
                $crate::lease::driver::on_watch_finished(self, ctx);
            }
        }
    };
}
pub(crate) use impl_watch_handler;
