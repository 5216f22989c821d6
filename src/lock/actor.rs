//! The lock actor: executes the lease core's decisions for one lock and serves local callers
//! first come, first served.

use std::collections::VecDeque;
use std::sync::{Arc, Weak};

use actix::prelude::*;
use tokio::sync::{oneshot, watch};

use super::{LockCommand, LockStatus, Owner, Wait};
use crate::error::{Error, Result};
use crate::lease::driver::{self, LeaseActor, LeaseState, Op, now};
use crate::lease::{Claim, StepDownReason, token_of};
use crate::store::StoreError;
use crate::supervisor::Registry;
use crate::term::Term;

struct Waiter {
    request: u64,
    owner_id: u64,
    owner: Weak<Owner>,
    /// `try_lock`: answered after the next fresh decision instead of waiting.
    try_only: bool,
    reply: oneshot::Sender<Result<Term>>,
}

struct Holder {
    owner_id: u64,
    owner: Weak<Owner>,
    term: Term,
}

/// The actor behind a [`Lock`](super::Lock). Started and restarted by the
/// [`Supervisor`](crate::Supervisor); use the handle rather than messaging it directly.
pub struct LockActor {
    st: LeaseState,
    registry: Arc<Registry>,
    status: watch::Sender<LockStatus>,
    queue: VecDeque<Waiter>,
    holder: Option<Holder>,
    /// We hold the claim but want to give it back (unlock, dropped handle, lost grant).
    releasing: bool,
    /// Unlocks waiting for the release to be written.
    unlocking: Vec<oneshot::Sender<Result<()>>>,
    /// Unlocks by handles that hold nothing locally, waiting for a fresh read to answer.
    unlock_checks: Vec<(u64, oneshot::Sender<Result<()>>)>,
    next_request: u64,
    stopping: bool,
    stopped: bool,
    stop_waiters: Vec<oneshot::Sender<()>>,
    watch_handle: Option<SpawnHandle>,
}

impl LockActor {
    pub(crate) fn new(
        st: LeaseState,
        registry: Arc<Registry>,
        status: watch::Sender<LockStatus>,
    ) -> Self {
        LockActor {
            st,
            registry,
            status,
            queue: VecDeque::new(),
            holder: None,
            releasing: false,
            unlocking: Vec::new(),
            unlock_checks: Vec::new(),
            next_request: 0,
            stopping: false,
            stopped: false,
            stop_waiters: Vec::new(),
            watch_handle: None,
        }
    }

    fn lock_name(&self) -> String {
        self.st.key.to_string()
    }

    fn publish_status(&self) {
        let holder = self.st.holder().map(str::to_owned);
        let term = self.holder.as_ref().map(|h| h.term.clone());
        let waiters = self.queue.len();
        let last_error = self.st.last_error.clone();
        let stopped = self.stopped;
        self.status.send_modify(|s| {
            s.holder = holder;
            s.term = term;
            s.waiters = waiters;
            s.last_error = last_error;
            s.stopped = stopped;
        });
    }

    fn already_locked(&self) -> Error {
        Error::AlreadyLocked {
            lock: self.lock_name(),
            holder: self
                .st
                .holder()
                .unwrap_or(self.st.identity.as_str())
                .to_owned(),
        }
    }

    /// Answers `try_lock` callers with `error(...)` and drops them from the queue.
    fn fail_tries(&mut self, error: impl Fn(&Self) -> Error) {
        let (tries, waits): (VecDeque<_>, VecDeque<_>) =
            self.queue.drain(..).partition(|w| w.try_only);
        self.queue = waits;
        for waiter in tries {
            let _ = waiter.reply.send(Err(error(self)));
        }
    }

    /// Answers every caller (waiters and pending unlock checks) with `error(...)`.
    fn fail_all(&mut self, error: impl Fn(&Self) -> Error) {
        for waiter in std::mem::take(&mut self.queue) {
            let _ = waiter.reply.send(Err(error(self)));
        }
        for (_, reply) in std::mem::take(&mut self.unlock_checks) {
            let _ = reply.send(Err(error(self)));
        }
    }

    /// We just acquired the lease: give it to the first caller still waiting.
    fn grant(&mut self, token: i32) {
        while let Some(waiter) = self.queue.pop_front() {
            if waiter.reply.is_closed() {
                continue;
            }
            let term = Term::new(self.st.key.clone(), self.st.identity.clone(), token);
            if waiter.reply.send(Ok(term.clone())).is_err() {
                // The caller went away between the check and the send: this acquisition is
                // spoiled (its token was never used); give it back and start over.
                term.cancel();
                self.releasing = true;
                return;
            }
            self.holder = Some(Holder {
                owner_id: waiter.owner_id,
                owner: waiter.owner,
                term,
            });
            return;
        }
        // Everyone who wanted it has gone.
        self.releasing = true;
    }

    /// The holder's term is over (released or lost).
    fn end_holder(&mut self) {
        if let Some(holder) = self.holder.take() {
            holder.term.cancel();
        }
    }

    fn answer_unlocks(&mut self, result: impl Fn() -> Result<()>) {
        for reply in self.unlocking.drain(..) {
            let _ = reply.send(result());
        }
    }

    /// Answers unlocks from handles that hold nothing locally, from a fresh observation.
    fn check_unlocks(&mut self) {
        if self.unlock_checks.is_empty() || self.st.needs_read || self.st.in_flight.is_some() {
            return;
        }
        let lock = self.lock_name();
        let identity = self.st.identity.clone();
        let holder = self.st.holder().map(str::to_owned);
        for (_, reply) in std::mem::take(&mut self.unlock_checks) {
            match &holder {
                None => {
                    let _ = reply.send(Err(Error::NotLocked { lock: lock.clone() }));
                }
                Some(h) if *h != identity || self.holder.is_some() => {
                    let _ = reply.send(Err(Error::NotLockHolder {
                        lock: lock.clone(),
                        holder: Some(h.clone()),
                        identity: identity.clone(),
                    }));
                }
                Some(_) => {
                    // Held under our identity with no local holder: left by an earlier
                    // incarnation of this replica. Release it, as the seed's Unlock would.
                    if self.st.claim.is_none()
                        && let Some(lease) =
                            self.st.observed.as_ref().and_then(|o| o.lease.as_ref())
                    {
                        let now = now();
                        self.st.claim = Some(Claim {
                            token: token_of(&lease.record),
                            acquired_at: now,
                            renewed_at: now,
                        });
                    }
                    self.releasing = true;
                    self.unlocking.push(reply);
                }
            }
        }
    }

    fn maybe_finish_stop(&mut self, ctx: &mut Context<Self>) {
        if !self.stopping || self.stopped || self.st.claim.is_some() || self.st.in_flight.is_some()
        {
            return;
        }
        self.stopped = true;
        if let Some(handle) = self.watch_handle.take() {
            ctx.cancel_future(handle);
        }
        self.registry.remove_lock(&self.st.key, &ctx.address());
        self.answer_unlocks(|| Ok(()));
        self.publish_status();
        for waiter in self.stop_waiters.drain(..) {
            let _ = waiter.send(());
        }
    }

    fn acquire(
        &mut self,
        owner_id: u64,
        owner: Weak<Owner>,
        wait: Wait,
        reply: oneshot::Sender<Result<Term>>,
        ctx: &mut Context<Self>,
    ) {
        if self.stopping {
            let _ = reply.send(Err(Error::Stopped {
                what: format!("lock {}", self.lock_name()),
            }));
            return;
        }
        let try_only = matches!(wait, Wait::No);
        if try_only && (self.holder.is_some() || !self.queue.is_empty()) {
            let _ = reply.send(Err(self.already_locked()));
            return;
        }
        self.next_request += 1;
        let request = self.next_request;
        self.queue.push_back(Waiter {
            request,
            owner_id,
            owner,
            try_only,
            reply,
        });
        if let Wait::Yes { timeout, cancel } = wait {
            if let Some(timeout) = timeout {
                ctx.run_later(timeout, move |act, _| {
                    act.give_up(request, |act| Error::Timeout {
                        operation: format!("lock {}", act.lock_name()),
                        after: timeout,
                    });
                });
            }
            if let Some(cancel) = cancel {
                let fut = async move { cancel.cancelled_owned().await };
                ctx.spawn(fut.into_actor(self).map(move |(), act, _| {
                    act.give_up(request, |act| Error::Cancelled {
                        operation: format!("lock {}", act.lock_name()),
                    });
                }));
            }
        } else {
            // try_lock decides on a fresh read.
            self.st.needs_read = true;
        }
        self.publish_status();
        driver::step(self, ctx);
    }

    /// A waiter's timeout or cancellation: answer it if it is still waiting.
    fn give_up(&mut self, request: u64, error: impl FnOnce(&Self) -> Error) {
        if let Some(pos) = self.queue.iter().position(|w| w.request == request) {
            let waiter = self.queue.remove(pos).expect("position is in range");
            let _ = waiter.reply.send(Err(error(self)));
            self.publish_status();
        }
    }

    fn unlock(
        &mut self,
        owner_id: u64,
        reply: oneshot::Sender<Result<()>>,
        ctx: &mut Context<Self>,
    ) {
        match &self.holder {
            Some(holder) if holder.owner_id == owner_id => {
                if self.releasing {
                    // A second unlock of the same hold: answered with the first.
                    self.unlocking.push(reply);
                    return;
                }
                holder.term.cancel();
                self.releasing = true;
                self.unlocking.push(reply);
            }
            Some(_) => {
                let _ = reply.send(Err(Error::NotLockHolder {
                    lock: self.lock_name(),
                    holder: Some(self.st.identity.clone()),
                    identity: self.st.identity.clone(),
                }));
                return;
            }
            None => {
                self.unlock_checks.push((owner_id, reply));
                self.st.needs_read = true;
            }
        }
        driver::step(self, ctx);
    }
}

impl Actor for LockActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        if self.stopped {
            return;
        }
        self.watch_handle = Some(ctx.add_stream(self.st.watches.watch(&self.st.key)));
        driver::step(self, ctx);
    }
}

impl Supervised for LockActor {
    fn restarting(&mut self, _ctx: &mut Self::Context) {
        // Futures and timers are gone, and so is certainty about the lease: the holder's term
        // ends and callers are told to try again.
        self.end_holder();
        self.fail_all(|act| Error::InvalidState {
            lease: act.lock_name(),
            reason: "the lock actor was restarted".into(),
        });
        self.answer_unlocks(|| Ok(()));
        self.releasing = false;
        self.st.reset();
        self.watch_handle = None;
        self.publish_status();
    }
}

impl LeaseActor for LockActor {
    fn lease(&mut self) -> &mut LeaseState {
        &mut self.st
    }

    fn halted(&self) -> bool {
        self.stopped
    }

    fn wants_reads(&self) -> bool {
        !self.queue.is_empty()
            || self.holder.is_some()
            || self.st.claim.is_some()
            || !self.unlock_checks.is_empty()
    }

    fn want(&self) -> bool {
        if self.stopped || self.releasing {
            return false;
        }
        match &self.holder {
            // A holder whose handle was dropped can never unlock: give the lock back.
            Some(holder) => holder.owner.strong_count() > 0,
            None => !self.stopping && !self.queue.is_empty(),
        }
    }

    fn on_acquired(&mut self, token: i32, _ctx: &mut Context<Self>) {
        self.grant(token);
        self.publish_status();
    }

    fn on_step_down(&mut self, reason: StepDownReason, ctx: &mut Context<Self>) {
        tracing::warn!(lock = %self.st.key, ?reason, "lock lost");
        self.end_holder();
        self.releasing = false;
        // An unlock in progress is done: the lock is no longer ours.
        self.answer_unlocks(|| Ok(()));
        self.publish_status();
        self.maybe_finish_stop(ctx);
    }

    fn on_released(&mut self, ctx: &mut Context<Self>) {
        self.end_holder();
        self.releasing = false;
        self.answer_unlocks(|| Ok(()));
        self.publish_status();
        self.maybe_finish_stop(ctx);
    }

    fn on_observed(&mut self, ctx: &mut Context<Self>) {
        self.check_unlocks();
        self.publish_status();
        self.maybe_finish_stop(ctx);
    }

    fn on_follow(&mut self, holder: &str, _ctx: &mut Context<Self>) {
        let holder = holder.to_owned();
        self.fail_tries(|act| Error::AlreadyLocked {
            lock: act.lock_name(),
            holder: holder.clone(),
        });
        self.publish_status();
    }

    fn on_invalid(&mut self, reason: &str, _ctx: &mut Context<Self>) {
        let reason = reason.to_owned();
        self.fail_all(|act| Error::InvalidState {
            lease: act.lock_name(),
            reason: reason.clone(),
        });
        self.publish_status();
    }

    fn on_fatal(&mut self, op: Op, error: StoreError, ctx: &mut Context<Self>) {
        // Callers get the typed error (e.g. Forbidden); a new call tries again.
        let operation = format!("{} lock {}", op.verb(), self.lock_name());
        self.fail_all(|_| Error::from_store(operation.clone(), error.duplicate()));
        if op == Op::Release {
            // The release cannot be written; the lease expires on its own and our term is
            // over either way.
            for reply in self.unlocking.drain(..) {
                let _ = reply.send(Err(Error::from_store(operation.clone(), error.duplicate())));
            }
            self.st.claim = None;
            self.end_holder();
            self.releasing = false;
            self.maybe_finish_stop(ctx);
        }
        self.publish_status();
        // A holder keeps renewing (after the backoff) until its deadline.
        driver::step(self, ctx);
    }

    fn on_read_failed(&mut self, error: &StoreError, ctx: &mut Context<Self>) {
        // Callers that need this read get the error instead of waiting indefinitely.
        let operation = format!("read lock {}", self.lock_name());
        self.fail_tries(|_| Error::from_store(operation.clone(), error.duplicate()));
        for (_, reply) in std::mem::take(&mut self.unlock_checks) {
            let _ = reply.send(Err(Error::from_store(operation.clone(), error.duplicate())));
        }
        self.publish_status();
        // A stop that waited for this call can finish now.
        self.maybe_finish_stop(ctx);
    }

    fn on_conflict(&mut self, _op: Op, ctx: &mut Context<Self>) {
        // A stopping lock with nobody waiting reads no more: if this write was the last call
        // in flight, the stop is complete now (nothing else would wake it).
        self.maybe_finish_stop(ctx);
    }

    fn on_write_failed(&mut self, op: Op, error: &StoreError, ctx: &mut Context<Self>) {
        if matches!(op, Op::Create | Op::Acquire) {
            let operation = format!("{} lock {}", op.verb(), self.lock_name());
            self.fail_tries(|_| Error::from_store(operation.clone(), error.duplicate()));
        }
        self.publish_status();
        self.maybe_finish_stop(ctx);
    }
}

driver::impl_watch_handler!(LockActor);

impl Handler<LockCommand> for LockActor {
    type Result = ();

    fn handle(&mut self, command: LockCommand, ctx: &mut Self::Context) {
        match command {
            LockCommand::Acquire {
                owner_id,
                owner,
                wait,
                reply,
            } => self.acquire(owner_id, owner, wait, reply, ctx),
            LockCommand::Unlock { owner_id, reply } => self.unlock(owner_id, reply, ctx),
            LockCommand::Stop(reply) => {
                if self.stopped {
                    let _ = reply.send(());
                    return;
                }
                self.stop_waiters.push(reply);
                if !self.stopping {
                    self.stopping = true;
                    let what = format!("lock {}", self.lock_name());
                    self.fail_all(|_| Error::Stopped { what: what.clone() });
                    if let Some(holder) = &self.holder {
                        holder.term.cancel();
                        self.releasing = true;
                    }
                    driver::step(self, ctx);
                }
                self.maybe_finish_stop(ctx);
            }
        }
    }
}
