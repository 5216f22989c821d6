//! The election face: subscribers and `when_elected` work on top of the one lease lifecycle.
//!
//! An election always wants the lease (it campaigns until stopped), gives every term to its
//! subscribers and callbacks, and restarts its actor after a store error that retrying in
//! place cannot fix.

use std::panic::AssertUnwindSafe;
use std::sync::{Arc, PoisonError};
use std::time::Instant;

use actix::WeakRecipient;
use actix::prelude::*;
use futures::FutureExt;
use tokio::sync::watch;

use super::{
    Callback, DeposeReason, Deposed, Elected, ElectionCommand, ElectionStatus, HolderChanged,
};
use crate::lease::core::{Core, Internal, Reporter};
use crate::lease::face::{EndReason, Face, Recovery};
use crate::lease::lifecycle::HandoffOutcome;
use crate::lease::{Op, Waiting};
use crate::store::StoreError;
use crate::term::{Term, now};
use crate::work;

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

/// What an election adds to the lease lifecycle.
pub(crate) struct ElectionFace {
    status: watch::Sender<ElectionStatus>,
    elected: Subscribers<Elected>,
    deposed: Subscribers<Deposed>,
    holder_changed: Subscribers<HolderChanged>,
    callbacks: Vec<Arc<Callback>>,
    last_leader: Option<String>,
    /// Since when the lease has been observed without a holder (for the metric).
    leaderless_since: Option<Instant>,
}

impl ElectionFace {
    pub fn new(status: watch::Sender<ElectionStatus>) -> Self {
        ElectionFace {
            status,
            elected: Subscribers::new(),
            deposed: Subscribers::new(),
            holder_changed: Subscribers::new(),
            callbacks: Vec::new(),
            last_leader: None,
            leaderless_since: None,
        }
    }

    /// Publishes the status if anything in it changed (a follower's status stays put while
    /// the leader renews; its watchers are not woken for nothing).
    fn publish_status(&self, core: &Core) {
        let term = core.term();
        let claim = term.and(core.machine.claim());
        let valid_until = claim.and(core.machine.deadline());
        let renewed_at = claim.map(|c| c.renewed_at);
        let leader = core.machine.holder();
        let invalid = core.machine.invalid();
        let stopped = core.is_stopped();
        self.status.send_if_modified(|s| {
            let same = s.term.as_ref().map(Term::id) == term.map(Term::id)
                && s.valid_until == valid_until
                && s.renewed_at == renewed_at
                && s.holder.as_deref() == leader
                && s.invalid.as_deref() == invalid
                && s.last_error == core.last_error
                && s.restarts == core.restarts
                && s.stopped == stopped;
            if same {
                return false;
            }
            // Only what changed is copied: a leader's renewal changes `renewed_at` and
            // `valid_until`, nothing that needs an allocation.
            if s.term.as_ref().map(Term::id) != term.map(Term::id) {
                s.term = term.cloned();
            }
            s.valid_until = valid_until;
            s.renewed_at = renewed_at;
            if s.holder.as_deref() != leader {
                s.holder = leader.map(str::to_owned);
            }
            if s.invalid.as_deref() != invalid {
                s.invalid = invalid.map(str::to_owned);
            }
            s.last_error.clone_from(&core.last_error);
            s.restarts = core.restarts;
            s.stopped = stopped;
            true
        });
    }
}

/// Runs one `when_elected` callback for `term` as the term's guarded work, on the callback's
/// own arbiter: the work is registered with the term before anything can end it, runs in the
/// lease's work scope (so a stop from inside it is recognised), and a panic ends the term.
fn spawn_work(callback: &Arc<Callback>, term: &Term, core: &Core, reporter: &Reporter) {
    let token = term.work_token();
    let notify = reporter.recipient();
    let (term, actor, cb) = (term.clone(), core.id, callback.clone());
    let run = move || {
        let id = term.id();
        let fut = {
            let f = cb.f.lock().unwrap_or_else(PoisonError::into_inner);
            std::panic::catch_unwind(AssertUnwindSafe(|| f(term)))
        };
        actix::spawn(async move {
            let _token = token;
            let panicked = match fut {
                Ok(fut) => AssertUnwindSafe(work::scope(actor, fut))
                    .catch_unwind()
                    .await
                    .is_err(),
                Err(_) => true,
            };
            if panicked {
                notify.do_send(Internal::WorkPanicked(id));
            }
        });
    };
    if std::thread::current().id() == callback.thread {
        run();
    } else if !callback.arbiter.spawn_fn(run) {
        tracing::warn!(lease = %core.key, "a when_elected callback's arbiter has stopped; its work cannot run");
    }
}

impl Face for ElectionFace {
    type Command = ElectionCommand;
    const KIND: &'static str = "election";
    const HONOURS_HANDOFF_REQUESTS: bool = true;

    fn command(&mut self, command: ElectionCommand, core: &mut Core, reporter: &Reporter) {
        match command {
            ElectionCommand::SubscribeElected(weak) => {
                if let (Some(term), Some(recipient)) = (core.term(), weak.upgrade()) {
                    recipient.do_send(Elected { term: term.clone() });
                }
                self.elected.0.push(weak);
            }
            ElectionCommand::SubscribeDeposed(weak) => self.deposed.0.push(weak),
            ElectionCommand::SubscribeHolderChanged(weak) => self.holder_changed.0.push(weak),
            ElectionCommand::HandOff {
                to,
                reply,
                from_work,
            } => {
                if from_work {
                    // Waiting would wait for the very work that asks: begin, answer at once.
                    let (begun, _) = tokio::sync::oneshot::channel();
                    core.begin_handoff(to, begun);
                    let _ = reply.send(HandoffOutcome::Deferred);
                } else {
                    core.begin_handoff(to, reply);
                }
            }
            ElectionCommand::WhenElected(callback) => {
                if core.is_stopped() {
                    return;
                }
                if let Some(term) = core.term() {
                    spawn_work(&callback, term, core, reporter);
                }
                self.callbacks.push(callback);
            }
        }
    }

    fn wants(&self, _core: &Core) -> bool {
        true
    }

    fn grant(&mut self, term: &Term, core: &Core, reporter: &Reporter) -> bool {
        for callback in &self.callbacks {
            spawn_work(callback, term, core, reporter);
        }
        self.elected.publish(&Elected { term: term.clone() });
        true
    }

    fn term_ended(&mut self, term: &Term, reason: &EndReason, core: &Core) {
        self.deposed.publish(&Deposed {
            lease: core.key.clone(),
            term_id: term.id(),
            fencing_token: term.fencing_token(),
            reason: reason.into(),
        });
    }

    fn call_failed(
        &mut self,
        _op: Op,
        _error: &StoreError,
        transient: bool,
        _core: &Core,
    ) -> Recovery {
        if transient {
            Recovery::Continue
        } else {
            Recovery::Restart
        }
    }

    fn stopping(&mut self, _core: &Core) {}

    fn stopped(&mut self) {
        // Nothing more will be published: the subscribers and callbacks (and what they
        // capture) are dropped now, not when the last handle is.
        self.elected.0.clear();
        self.deposed.0.clear();
        self.holder_changed.0.clear();
        self.callbacks.clear();
    }

    fn restarting(&mut self, _core: &Core) {}

    fn settle(&mut self, core: &mut Core, _waiting: &Waiting) -> bool {
        match (core.machine.holder(), self.leaderless_since) {
            (None, None) if core.machine.observed().is_some() => {
                self.leaderless_since = Some(now());
            }
            (Some(_), Some(since)) => {
                core.metrics
                    .leaderless(now().saturating_duration_since(since));
                self.leaderless_since = None;
            }
            _ => {}
        }
        if core.machine.holder() != self.last_leader.as_deref() {
            let leader = core.machine.holder().map(str::to_owned);
            self.last_leader.clone_from(&leader);
            self.holder_changed.publish(&HolderChanged {
                lease: core.key.clone(),
                holder: leader,
            });
        }
        self.publish_status(core);
        false
    }
}

impl From<&EndReason> for DeposeReason {
    fn from(reason: &EndReason) -> Self {
        match reason {
            EndReason::Lost(reason) => reason.clone().into(),
            EndReason::Expired => DeposeReason::RenewDeadlineExceeded,
            EndReason::Stopped | EndReason::GivenUp => DeposeReason::Stopped,
            EndReason::Restarted => DeposeReason::Restarted,
            EndReason::WorkPanicked => DeposeReason::WorkPanicked,
            EndReason::HandedOff { to } => DeposeReason::HandedOff { to: to.clone() },
            EndReason::PreferredHolder { holder } => DeposeReason::PreferredHolder {
                holder: holder.clone(),
            },
        }
    }
}
