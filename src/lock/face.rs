//! The lock face: a first-come-first-served queue of local callers and per-handle ownership,
//! on top of the one lease lifecycle.

use std::collections::VecDeque;

use tokio::sync::{oneshot, watch};

use super::{Grant, LockCommand, LockStatus, Waiter};
use crate::error::{Error, Result};
use crate::lease::core::{Core, Reporter};
use crate::lease::face::{EndReason, Face, Recovery, stopped};
use crate::lease::{Op, Waiting};
use crate::store::StoreError;
use crate::term::{Term, now};

impl Waiter {
    /// Whether anyone still waits for the answer.
    fn alive(&self) -> bool {
        !self.reply.is_closed() && self.owner.strong_count() > 0
    }
}

/// The local caller holding the lock's term.
struct Holder {
    owner_id: u64,
    term: Term,
    /// The term has ended (unlock, drop, loss); its release may still be under way.
    ending: bool,
}

/// What a lock adds to the lease lifecycle.
pub(crate) struct LockFace {
    status: watch::Sender<LockStatus>,
    queue: VecDeque<Waiter>,
    holder: Option<Holder>,
    /// Unlocks answered once the lock's term has ended and the release is written (or the
    /// lease lost).
    unlocking: Vec<oneshot::Sender<Result<()>>>,
    /// Unlocks by handles that hold nothing locally, answered from a fresh observation.
    unlock_checks: Vec<oneshot::Sender<Result<()>>>,
}

impl LockFace {
    pub fn new(status: watch::Sender<LockStatus>) -> Self {
        LockFace {
            status,
            queue: VecDeque::new(),
            holder: None,
            unlocking: Vec::new(),
            unlock_checks: Vec::new(),
        }
    }

    fn prune(&mut self) {
        self.queue.retain(Waiter::alive);
    }

    fn already_locked(core: &Core) -> Error {
        Error::AlreadyLocked {
            lock: core.key.to_string(),
            holder: core.machine.holder().unwrap_or(core.identity()).to_owned(),
        }
    }

    /// Answers `try_lock` callers with `error` and drops them from the queue.
    fn fail_tries(&mut self, error: impl Fn() -> Error) {
        let (tries, waits): (VecDeque<_>, VecDeque<_>) =
            self.queue.drain(..).partition(|w| w.try_only);
        self.queue = waits;
        for waiter in tries {
            let _ = waiter.reply.send(Err(error()));
        }
    }

    /// Answers every waiting caller (and pending unlock checks) with `error`.
    fn fail_all(&mut self, error: impl Fn() -> Error) {
        for waiter in self.queue.drain(..) {
            let _ = waiter.reply.send(Err(error()));
        }
        for reply in self.unlock_checks.drain(..) {
            let _ = reply.send(Err(error()));
        }
    }

    fn unlock(&mut self, owner_id: u64, reply: oneshot::Sender<Result<()>>, core: &mut Core) {
        match &mut self.holder {
            Some(holder) if holder.owner_id == owner_id => {
                if !holder.ending {
                    holder.ending = true;
                    core.give_up();
                }
                // A second unlock of the same hold is answered with the first.
                self.unlocking.push(reply);
            }
            Some(_) => {
                let _ = reply.send(Err(Error::NotLockHolder {
                    lock: core.key.to_string(),
                    holder: Some(core.identity().to_owned()),
                    identity: core.identity().to_owned(),
                }));
            }
            None => {
                self.unlock_checks.push(reply);
                core.machine.refresh();
            }
        }
    }

    /// Answers unlocks by handles that hold nothing locally, once the observation is fresh.
    /// `true` if one of them adopted a record left by an earlier process of ours (to release).
    fn check_unlocks(&mut self, core: &mut Core) -> bool {
        if self.unlock_checks.is_empty() || !core.machine.is_fresh() {
            return false;
        }
        let lock = core.key.to_string();
        let identity = core.identity().to_owned();
        let holder = core.machine.holder().map(str::to_owned);
        let mut adopted = false;
        for reply in std::mem::take(&mut self.unlock_checks) {
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
                // Held under our identity with no local holder: left by an earlier process
                // of this replica (or a grant being given back). Release it, as the Go
                // package's Unlock would.
                Some(_) if core.machine.holding() || core.machine.adopt(now()) => {
                    adopted = true;
                    self.unlocking.push(reply);
                }
                Some(_) => {
                    // Named us, but changed within a renew deadline: it may be the record of a
                    // live process with our identity (rule `one-identity`).
                    let _ = reply.send(Err(Error::InvalidState {
                        lease: lock.clone(),
                        reason: format!(
                            "held under this replica's identity {identity:?} by no handle of \
                             this process; it is released by `unlock` only once it has not \
                             changed for a renew deadline (another live process may share \
                             the identity)"
                        ),
                    }));
                }
            }
        }
        adopted
    }

    /// Publishes the status if anything in it changed.
    fn publish_status(&self, core: &Core) {
        let holder = core.machine.holder();
        let term = self.holder.as_ref().filter(|h| !h.ending).map(|h| &h.term);
        let waiters = self.queue.len();
        let stopped = core.is_stopped();
        self.status.send_if_modified(|s| {
            let same = s.holder.as_deref() == holder
                && s.term.as_ref().map(Term::id) == term.map(Term::id)
                && s.waiters == waiters
                && s.last_error == core.last_error
                && s.stopped == stopped;
            if same {
                return false;
            }
            s.holder = holder.map(str::to_owned);
            s.term = term.cloned();
            s.waiters = waiters;
            s.last_error.clone_from(&core.last_error);
            s.stopped = stopped;
            true
        });
    }
}

impl Face for LockFace {
    type Command = LockCommand;
    const KIND: &'static str = "lock";

    fn command(&mut self, command: LockCommand, core: &mut Core, _reporter: &Reporter) {
        match command {
            LockCommand::Acquire(waiter) => {
                if core.is_stopping() {
                    let _ = waiter.reply.send(Err(stopped(Self::KIND, core)));
                    return;
                }
                self.prune();
                if let Some(holder) = &self.holder
                    && holder.owner_id == waiter.owner_id
                    && !holder.ending
                {
                    // This handle holds it: waiting would be waiting for itself.
                    let _ = waiter.reply.send(Err(Error::AlreadyLocked {
                        lock: core.key.to_string(),
                        holder: core.identity().to_owned(),
                    }));
                    return;
                }
                if waiter.try_only && (self.holder.is_some() || !self.queue.is_empty()) {
                    let _ = waiter.reply.send(Err(Self::already_locked(core)));
                    return;
                }
                if waiter.try_only {
                    // try_lock decides on a fresh read.
                    core.machine.refresh();
                }
                self.queue.push_back(waiter);
            }
            LockCommand::Abandon { request } => self.queue.retain(|w| w.request != request),
            LockCommand::Unlock { owner_id, reply } => {
                if core.is_stopped() {
                    let _ = reply.send(Err(stopped(Self::KIND, core)));
                    return;
                }
                self.unlock(owner_id, reply, core);
            }
            LockCommand::OwnerGone { owner_id } => {
                self.queue.retain(|w| w.owner_id != owner_id);
                if let Some(holder) = &mut self.holder
                    && holder.owner_id == owner_id
                    && !holder.ending
                {
                    // Nobody can unlock it any more: end the term, then give the lease back.
                    holder.ending = true;
                    core.give_up();
                }
            }
        }
    }

    fn wants(&self, _core: &Core) -> bool {
        self.queue.iter().any(Waiter::alive)
    }

    fn unused(&self) -> bool {
        self.queue.is_empty()
            && self.holder.is_none()
            && self.unlocking.is_empty()
            && self.unlock_checks.is_empty()
    }

    fn grant(&mut self, term: &Term, _core: &Core, reporter: &Reporter) -> bool {
        while let Some(waiter) = self.queue.pop_front() {
            if !waiter.alive() {
                continue;
            }
            let grant = Grant {
                term: term.clone(),
                work: waiter.guarded.then(|| term.work_token()),
                notify: Some(reporter.recipient()),
            };
            match waiter.reply.send(Ok(grant)) {
                Ok(()) => {
                    self.holder = Some(Holder {
                        owner_id: waiter.owner_id,
                        term: term.clone(),
                        ending: false,
                    });
                    return true;
                }
                // The caller went away between the check and the send: never delivered, so
                // the next caller in line may have it.
                Err(Ok(grant)) => grant.disarm(),
                Err(Err(_)) => unreachable!("we sent a grant"),
            }
        }
        false
    }

    fn term_ended(&mut self, term: &Term, _reason: &EndReason, _core: &Core) {
        if let Some(holder) = &mut self.holder
            && holder.term.id() == term.id()
        {
            holder.ending = true;
        }
    }

    fn call_failed(
        &mut self,
        op: Op,
        error: &StoreError,
        transient: bool,
        core: &Core,
    ) -> Recovery {
        let operation = format!("{} lock {}", op.verb(), core.key);
        let typed = || Error::from_store(operation.clone(), error.duplicate());
        match op {
            // Callers that needed this read get the error instead of waiting indefinitely.
            Op::Read => {
                self.fail_tries(typed);
                for reply in self.unlock_checks.drain(..) {
                    let _ = reply.send(Err(typed()));
                }
            }
            Op::Create | Op::Acquire => self.fail_tries(typed),
            Op::Renew | Op::Release => {}
        }
        if !transient {
            // Callers get the typed error (e.g. Forbidden); a new call tries again.
            self.fail_all(typed);
        }
        Recovery::Continue
    }

    fn stopping(&mut self, core: &Core) {
        self.fail_all(|| stopped(Self::KIND, core));
    }

    fn restarting(&mut self, core: &Core) {
        self.fail_all(|| Error::InvalidState {
            lease: core.key.to_string(),
            reason: "the lock actor was restarted".into(),
        });
    }

    fn settle(&mut self, core: &mut Core, waiting: &Waiting) -> bool {
        self.prune();
        match waiting {
            Waiting::Following { holder, .. } => {
                let lock = core.key.to_string();
                self.fail_tries(|| Error::AlreadyLocked {
                    lock: lock.clone(),
                    holder: holder.clone(),
                });
            }
            Waiting::Coordinated { holder, .. } => {
                // Only the API server's election controller can give us this lease.
                let lock = core.key.to_string();
                self.fail_tries(|| match holder {
                    Some(holder) => Error::AlreadyLocked {
                        lock: lock.clone(),
                        holder: holder.clone(),
                    },
                    None => Error::InvalidState {
                        lease: lock.clone(),
                        reason: "spec.strategy is set: the API server's election controller \
                                 assigns this lease, and has not assigned it to us"
                            .into(),
                    },
                });
            }
            Waiting::Invalid { reason, .. } => {
                let lease = core.key.to_string();
                self.fail_all(|| Error::InvalidState {
                    lease: lease.clone(),
                    reason: reason.clone(),
                });
            }
            _ => {}
        }
        if core.is_stopped() {
            let error = || stopped(Self::KIND, core);
            self.fail_all(error);
        }
        let again = self.check_unlocks(core);
        // The holder's term has ended and nothing is held any more: the release is written
        // (or could not be, or the lease was lost). Unlocks are answered now.
        if core.settled() && self.holder.as_ref().is_none_or(|h| h.ending) {
            self.holder = None;
            if !self.unlocking.is_empty() {
                let lock = format!("release lock {}", core.key);
                for reply in self.unlocking.drain(..) {
                    let result = match core.release_error() {
                        Some(error) => Err(Error::from_store(lock.clone(), error.duplicate())),
                        None => Ok(()),
                    };
                    let _ = reply.send(result);
                }
            }
        }
        self.publish_status(core);
        again
    }
}
