//! What a face adds to the one lease lifecycle.
//!
//! The lease actor (with the [`Core`] it lends to faces) owns everything elections and locks
//! share: the machine, the term and its cancellation, the drain of its work, the release, stop and its
//! waiters, the watch, restarts. A face owns only what is its own: who receives a term
//! (election subscribers and `when_elected` callbacks; a lock's queue of local callers), its
//! commands, and its status. Faces never write to the store and never end a term by any other
//! way than [`Core::give_up`] or [`Core::begin_handoff`], so the lifecycle rules hold for every
//! face by construction. A face sees the [`Core`] and reports back through a [`Reporter`],
//! never the actor: the lease layer has no import circle.

use super::{Op, Waiting};
use crate::error::Error;
use crate::store::StoreError;
use crate::term::Term;

pub(crate) use super::core::{Core, Reporter};
pub(crate) use super::lifecycle::EndReason;

/// What the actor does after a failed store call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Recovery {
    /// Back off and carry on.
    Continue,
    /// Fail, so that the supervisor restarts the actor after the backoff.
    Restart,
}

/// The part of a lease actor that differs between elections, locks and other faces.
pub(crate) trait Face: Sized + Unpin + Send + 'static {
    /// The face's own commands (subscribe, acquire, unlock, ...).
    type Command: Send + 'static;

    /// What it is, for messages: `election` or `lock`.
    const KIND: &'static str;

    /// Whether a handoff asked for on the lease (an annotation) is carried out by this face.
    /// Elections: yes. Locks: no (a lock's holder is a caller in a critical section; moving
    /// it to another replica is not a lock's semantics).
    const HONOURS_HANDOFF_REQUESTS: bool = false;

    /// Handles a command. State changes take effect in the step that follows.
    fn command(&mut self, command: Self::Command, core: &mut Core, reporter: &Reporter);

    /// Whether the face wants to hold the lease now (campaigning; a caller waiting).
    fn wants(&self, core: &Core) -> bool;

    /// The lease was acquired: hand `term` to its receiver. `false` if nobody takes it; then
    /// the lease is released at once. (`reporter` is for work and grants that report back:
    /// panicked, dropped.)
    fn grant(&mut self, term: &Term, core: &Core, reporter: &Reporter) -> bool;

    /// The term ended (it is already cancelled); its work may still be draining.
    fn term_ended(&mut self, term: &Term, reason: &EndReason, core: &Core);

    /// A store call failed. The machine has already scheduled its retry.
    fn call_failed(&mut self, op: Op, error: &StoreError, transient: bool, core: &Core)
    -> Recovery;

    /// A stop has begun: answer callers that can no longer be served.
    fn stopping(&mut self, core: &Core);

    /// The actor is being restarted: answer callers that cannot be served by the new
    /// incarnation.
    fn restarting(&mut self, core: &Core);

    /// Whether the face serves nobody now: no caller waits, no local holder, nothing to
    /// answer. An actor whose face is unused and that no handle reaches retires (rule
    /// `idle-actors-retire`). Faces whose handles the registry keeps (elections) never are.
    fn unused(&self) -> bool {
        false
    }

    /// The actor has stopped for good: drop what the face keeps for others (subscribers).
    fn stopped(&mut self) {}

    /// After every step: answer what can be answered now, publish status. `true` if the face
    /// changed something the lifecycle must act on (then the actor steps again).
    fn settle(&mut self, core: &mut Core, waiting: &Waiting) -> bool;
}

/// `Error::Stopped` for a face's lease.
pub(crate) fn stopped(kind: &str, core: &Core) -> Error {
    Error::Stopped {
        what: format!("{kind} {}", core.key),
    }
}
