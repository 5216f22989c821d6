//! The lease core: two pure machines that decide, and one actor that executes.
//!
//! [`Machine`] holds every decision about one lease: when to read, when to create, acquire,
//! renew or release, when to step down, how long to back off after a failure, which answers to
//! believe. The term lifecycle (`lifecycle.rs`) holds every decision about a term: when it
//! starts, how it ends (cancelled first), when its work has drained, when a stop or a handoff
//! is answered and with what. Neither does IO or reads a clock, so every rule below is tested
//! with plain `#[test]`s. The lease actor (one for every face: elections, locks) only performs
//! the calls the machine asks for and the effects the lifecycle returns, and feeds the results
//! back; that split (as in openraft's `engine` or kube-runtime's `watcher`) is what keeps the
//! faces from drifting apart.
//!
//! # Layout
//!
//! Each file uses only the ones above it (checked by `tests/layering.rs`):
//!
//! * `backoff.rs`: the one retry policy (rule `write-backoff`), for the machine, the observer
//!   and [`LeaderOnly`](crate::LeaderOnly)'s restarts.
//! * `follow.rs`: [`Observed`], the one follower of a lease by local observation (rule
//!   `local-expiry`), for the machine, the observer and the CLI.
//! * `machine.rs`: [`Machine`], every decision about one lease, pure (its rules as plain
//!   `#[test]`s in `tests.rs`).
//! * `lifecycle.rs`: the term lifecycle, pure: events in, effects out (rules
//!   `holder-steps-down-first`, `drain-then-release`, `handoff-ends-with-its-term`,
//!   `refusal-during-drain`, `never-give-up`).
//! * `core.rs`: the state a face is lent (the machine, the lifecycle, metrics), which performs
//!   the effects that need neither the face nor the actor (cancel, mark lost, answer callers),
//!   and the `Reporter` through which a face's work reports back.
//! * `face.rs`: the `Face` trait: what a face adds.
//! * `actor.rs`: the one lease actor: store calls, the timer, the watch, and the effects that
//!   need the face or the actor's context. IO only.
//!
//! # Adding a face
//!
//! A face (elections and locks are the two; semaphores are made of locks) lives in its own
//! folder, `src/<face>/`:
//!
//! 1. `face.rs`: a type implementing `Face` (its commands, whom a term is granted to, what it
//!    publishes), using only `lease::core`, `lease::face` and `lease::lifecycle`; it ends a term
//!    only through `Core::give_up` or `Core::begin_handoff`, so the lifecycle's rules hold for
//!    it by construction.
//! 2. `mod.rs`: its public handle, which sends `FaceCommand`s and `Stop` to
//!    `Addr<LeaseActor<YourFace>>`, and `start_actor`, which starts the actor with
//!    `actor::start` and returns the registry's `Entry` (face-agnostic: it carries the handle,
//!    which only the face reads back with `Entry::handle`). See `election::start_actor`.
//! 3. One registration: a constructor on [`Dsync`](crate::Dsync) that calls
//!    `Registry::entry` with that `start_actor` (and, if its Leases are named apart, a
//!    `LeaseKind`). Nothing in `lease/` or the supervisor changes.
//!
//! # Rules
//!
//! * **Expiry by local observation** (`local-expiry`). A lease held by someone else may be taken over once its
//!   record has not changed for its `leaseDurationSeconds`, measured from when *we* first saw the
//!   current version ([`Observed::changed_at`]). The holder's `renewTime` is another machine's
//!   wall clock and is never used, so clock skew between replicas cannot cause two leaders.
//! * **Compare-and-swap on every write** (`cas-writes`). Every write names the version it is based on; a
//!   conflict means "re-read and decide again".
//! * **Holders step down first** (`holder-steps-down-first`). A holder renews every `retry_period`. If it has not completed a
//!   renewal within `renew_deadline` of the start of its last successful one, it steps down.
//!   Others wait at least `lease_duration > renew_deadline` from a moment *after* that write
//!   started, so the old term has ended before a new one can begin. A renewal answered without
//!   a new version wrote nothing, so it does not extend the claim.
//! * **Every write waits its backoff** (`write-backoff`), releases included: a holder retries every retry period
//!   until its deadline; anyone else doubles the wait per consecutive failure up to the lease
//!   duration (a successful read does not end a streak of failed writes).
//! * **Nothing is taken on news the watch may have missed** (`watch-behind`). While the owner's shared watch is
//!   behind ([`Machine::watch_behind`] until [`Machine::watch_current`]), a lease that looks
//!   expired, free or missing is not taken: the holder may have renewed unseen. The machine
//!   waits for the watch, and if it is still behind a lease duration after the lease was
//!   first wanted, reads the lease (a read sent after the expiry confirms it). A read that fails then is not retried every
//!   retry period: it waits for the watch again. Holders renew regardless.
//! * **Observations never move backwards** (`restore-resync`). A read or write answer older
//!   than what a watch event already showed is not taken, unless the read was *sent* after
//!   we saw the newer version: then the store itself went back in time (an etcd restore),
//!   and the read is the truth ([`Alert::VersionsWentBack`]). The watch hub does the same for
//!   events and lists older than what it brought before: it sends the lease's actors to read.
//! * **One identity, one holder** (`one-identity`). A record naming us that we hold no claim
//!   on is taken only once we have seen it unchanged for a renew deadline (a live holder
//!   would have renewed or stepped down by then), and never after our own claim on it ended
//!   (a step-down, an actor restart, an abandoned drain): then it is judged by expiry like
//!   anyone else's. One that keeps changing under a token not ours is a twin
//!   ([`Alert::Twin`]), never taken while it is renewed.
//! * **Fencing** (`fencing-tokens`, `token-never-back`). Every acquisition increments
//!   `leaseTransitions`; the new value is the term's fencing token, so tokens of successive
//!   terms strictly increase. The machine remembers the highest token it has seen
//!   ([`Machine::token_floor`], seeded with what the process's other actors saw) and writes
//!   above it, whatever the record says after a delete, an edit or a restore.
//! * **A deleted Lease that was held waits** (`deleted-held-waits`): it may be created again
//!   only a lease duration after the delete was seen, as its holder may still be live and may
//!   have renewed, unseen, just before the delete. (A replica's own deleted claim, whose last
//!   renewal it knows, waits until that renewal's lease duration is over.)
//! * **Operator releases leave a grace** (`operator-release-grace`): a free record declaring
//!   more than one second was cleared by someone other than its holder (a force release, an
//!   edit) and is left for that duration, as if it still named the holder. A handoff's
//!   release is such a record too, except for its successor.
//! * **A lost acquisition reply is found out** (`lost-reply-recognised`). A create or
//!   acquire that failed without an answer may have landed: the machine reads before
//!   anything else, even if nothing is wanted, and a Lease showing that very write (our
//!   identity, token and `acquireTime`) is ours from when the write was sent: a term
//!   ([`Outcome::Acquired`]) within its renew deadline, else a claim that is only released.
//! * **Term lifecycle** (`drain-then-release`, `handoff-ends-with-its-term`,
//!   `refusal-during-drain`): see `lifecycle.rs`; a term is cancelled before any write that
//!   gives its lease up, released only after its work returned, a handoff ends with its term on
//!   every outcome, and a refusal during a drain marks the draining term lost before the claim
//!   is dropped.
//! * **Coordinated leases** (`spec.strategy` set; see
//!   [Coordinated leader election](crate::election#coordinated-leader-election)): the API
//!   server's election controller picks the holder. Such a lease is never acquired unless it
//!   already names us; a holder change to us is the controller's assignment and is taken at
//!   once (a new term, token + 1). A holder whose lease prefers another holder
//!   (`spec.preferredHolder`) ends its term ([`StepDownReason::PreferredHolder`]) but keeps
//!   its claim, renewed while the work drains, then releases it.

pub(crate) mod actor;
pub(crate) mod backoff;
pub(crate) mod core;
pub(crate) mod face;
mod follow;
pub(crate) mod lifecycle;
mod machine;

pub use follow::{Observed, Versioned};
pub use machine::{
    Alert, Call, Claim, Machine, Op, Outcome, Request, Step, StepDownReason, Waiting, Want,
    token_of,
};
pub(crate) use machine::{force_released, released, with_handoff_request};

#[cfg(test)]
mod tests;
