//! The face-independent state of a lease actor, lent to its face: the lease [`Machine`], the
//! term [`Lifecycle`], and the executor of the lifecycle's effects that need no actor (cancel a
//! term, answer a caller). Effects that need the face or the actor's context are queued for
//! the actor ([`Core::take_effects`]).
//!
//! Faces see this module, the lifecycle and the machine, never the actor: they report back
//! through a [`Reporter`], so the lease layer has no import circle (checked by
//! `tests/layering.rs`).

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use actix::prelude::*;
use tokio::sync::oneshot;

use super::lifecycle::{Effect, Event, Facts, HandoffOutcome, Lifecycle, StopOutcome};
use super::{Alert, Machine, Want};
use crate::metrics::LeaseMetrics;
use crate::store::{LeaseKey, LeaseStore, StoreError, WatchEvent};
use crate::term::{Term, TermId, now};
use crate::watch::{Inbox, WatchHub};
use crate::work::ActorId;

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

/// How a face's term and work report back to their lease actor (work panicked, a grant
/// dropped), without knowing the actor's type.
#[derive(Clone)]
pub(crate) struct Reporter(pub(crate) Recipient<Internal>);

impl Reporter {
    /// The recipient to give to work and grants that report later.
    pub fn recipient(&self) -> Recipient<Internal> {
        self.0.clone()
    }
}

/// Where a lease actor says that it is stopping and that it has stopped: the registry of the
/// replica's [`Supervisor`](crate::Supervisor). A trait, so that this layer does not depend
/// on the supervisor above it.
pub(crate) trait Directory: Send + Sync {
    /// A stop has begun: later requests for `key` must start a new actor, not get this one.
    fn retire(&self, key: &LeaseKey, id: ActorId);
    /// The actor has stopped: forget it.
    fn remove(&self, key: &LeaseKey, id: ActorId);
    /// Retires the actor `id` of `key` if no handle uses it (its [`Handles`] count is zero),
    /// atomically with the handing out of handles: `true` if it is retired now, and must stop.
    fn retire_unused(&self, key: &LeaseKey, id: ActorId) -> bool;
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

/// How many floors of leases whose actor retired are kept by name ([`TokenFloors::retire`]);
/// older ones are folded into the process-wide mark.
pub(crate) const RETIRED_FLOORS_KEPT: usize = 4096;

/// The highest fencing token seen per lease by one process (see [`Shared::floors`]), bounded
/// (rule `idle-actors-retire`).
///
/// The floor of a lease with a live actor is kept by name. When its actor retires, the floor
/// stays by name until [`RETIRED_FLOORS_KEPT`] later retirements have passed; then it is
/// folded into one process-wide *mark*, the highest token of every lease forgotten. A lease
/// with no floor by name starts above the mark ([`TokenFloors::mark`]), so tokens still never
/// go back (rule `token-never-back`), but a service that locks a hundred thousand names keeps
/// a few thousand floors, not a hundred thousand. The price, for forgotten names only: their
/// tokens start above the mark rather than at the Lease's own count, and a forgotten name's
/// Lease found missing is created at once (the process no longer knows it had seen it held;
/// rule `deleted-held-waits` holds for the names it still knows).
#[derive(Debug)]
pub(crate) struct TokenFloors(std::sync::Mutex<Floors>);

#[derive(Debug)]
struct Floors {
    by_name: crate::hash::FastMap<LeaseKey, i32>,
    /// Leases whose actor retired, oldest first (a name may be here twice: it then goes at
    /// its first turn, which is early, never unsafe).
    retired: VecDeque<LeaseKey>,
    /// The highest floor folded out of `by_name`.
    mark: Option<i32>,
    keep: usize,
}

impl Default for TokenFloors {
    fn default() -> Self {
        TokenFloors::keeping(RETIRED_FLOORS_KEPT)
    }
}

impl TokenFloors {
    /// Floors keeping `keep` retired leases by name.
    pub fn keeping(keep: usize) -> Self {
        TokenFloors(std::sync::Mutex::new(Floors {
            by_name: Default::default(),
            retired: VecDeque::new(),
            mark: None,
            keep,
        }))
    }

    fn floors(&self) -> std::sync::MutexGuard<'_, Floors> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The highest token seen on `key`, if this process still knows it by name.
    pub fn get(&self, key: &LeaseKey) -> Option<i32> {
        self.floors().by_name.get(key).copied()
    }

    /// The highest token of every lease forgotten by name: the floor of any lease without one.
    pub fn mark(&self) -> Option<i32> {
        self.floors().mark
    }

    /// Notes `token` as seen on `key`.
    pub fn raise(&self, key: &LeaseKey, token: i32) {
        let mut floors = self.floors();
        match floors.by_name.get_mut(key) {
            Some(floor) => *floor = (*floor).max(token),
            None => {
                floors.by_name.insert(key.clone(), token);
            }
        }
    }

    /// The actor of `key` retired: its floor may be folded into the mark once enough later
    /// leases have retired.
    pub fn retire(&self, key: &LeaseKey) {
        let mut floors = self.floors();
        if !floors.by_name.contains_key(key) {
            return;
        }
        floors.retired.push_back(key.clone());
        while floors.retired.len() > floors.keep {
            let Some(oldest) = floors.retired.pop_front() else {
                break;
            };
            if let Some(floor) = floors.by_name.remove(&oldest) {
                floors.mark = floors.mark.max(Some(floor));
            }
        }
    }

    /// How many leases have a floor by name.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.floors().by_name.len()
    }
}

/// The handles that keep a lease actor in use (a lock's [`Lock`](crate::Lock) handles),
/// counted so that an actor nobody can reach any more retires (rule `idle-actors-retire`).
/// Taken only under the registry's lock ([`Directory::retire_unused`] checks it there), so
/// a handle is never given an actor that is retiring.
#[derive(Clone, Default, Debug)]
pub(crate) struct Handles(Arc<AtomicUsize>);

impl Handles {
    /// How many handles are alive.
    pub fn count(&self) -> usize {
        self.0.load(Ordering::Acquire)
    }

    /// One more handle, until the returned claim is dropped.
    pub fn claim(&self) -> HandleClaim {
        self.0.fetch_add(1, Ordering::AcqRel);
        HandleClaim(self.0.clone())
    }
}

/// One handle's share of [`Handles`]; dropping it gives the share back.
#[derive(Debug)]
pub(crate) struct HandleClaim(Arc<AtomicUsize>);

impl Drop for HandleClaim {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
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
    pub(super) shared: Arc<Shared>,
    pub(super) span: tracing::Span,
    pub(super) lifecycle: Lifecycle,
    /// Effects for the actor to perform (they need the face or the actor's context).
    queue: VecDeque<Effect>,
    stop_waiters: Vec<oneshot::Sender<StopOutcome>>,
    handoff_waiters: Vec<oneshot::Sender<HandoffOutcome>>,
    /// Where the watch hub notes what we have seen and parks the renewals it did not wake
    /// us for (taken at every step).
    pub(super) inbox: Arc<Inbox>,
    /// Waiting for the predecessor to finish: no store calls yet.
    pub(super) blocked: bool,
    /// The face's handles in use (a lock's); an actor with none that is idle retires.
    pub(super) handles: Handles,
    /// The token floor last published to [`Shared::floors`].
    published_floor: Option<i32>,
}

impl Core {
    pub(super) fn new(
        key: LeaseKey,
        shared: Arc<Shared>,
        metrics: LeaseMetrics,
        blocked: bool,
        handles: Handles,
    ) -> Self {
        let span = tracing::info_span!(
            "lease",
            lease = %key,
            identity = %shared.identity,
            token = tracing::field::Empty
        );
        let mut machine = Machine::new(shared.identity.clone(), shared.timing)
            .with_jitter_for(&key.to_string())
            .with_holder_pod(shared.holder_pod.clone());
        let published_floor = shared.floors.get(&key);
        if let Some(floor) = published_floor {
            machine.raise_floor(floor);
        } else if let Some(mark) = shared.floors.mark() {
            // Forgotten by name (or never seen): above every token forgotten.
            machine.raise_base(mark);
        }
        Core {
            id: ActorId::next(),
            machine,
            published_floor,
            lifecycle: Lifecycle::new(shared.drain_timeout),
            key,
            metrics,
            restarts: 0,
            last_error: None,
            shared,
            span,
            queue: VecDeque::new(),
            stop_waiters: Vec::new(),
            handoff_waiters: Vec::new(),
            inbox: Arc::default(),
            blocked,
            handles,
        }
    }

    /// This replica's identity.
    pub fn identity(&self) -> &str {
        self.machine.identity()
    }

    /// The live term, if any.
    pub fn term(&self) -> Option<&Term> {
        self.lifecycle.term()
    }

    /// No term, and nothing held: whatever was ending has ended.
    pub fn settled(&self) -> bool {
        self.lifecycle.vacant() && !self.machine.holding()
    }

    /// Whether the lifecycle lets this actor retire now, if nobody uses it
    /// ([`Lifecycle::may_retire`]).
    pub(super) fn may_retire(&self) -> bool {
        !self.blocked && self.lifecycle.may_retire(&facts_of(&self.machine))
    }

    /// A stop has begun (or finished).
    pub fn is_stopping(&self) -> bool {
        self.lifecycle.is_stopping()
    }

    /// The actor has stopped for good.
    pub fn is_stopped(&self) -> bool {
        self.lifecycle.is_stopped()
    }

    /// Why the last release could not be written, if it could not.
    pub fn release_error(&self) -> Option<&StoreError> {
        self.lifecycle.release_error()
    }

    /// The face gives the live term up (unlock, a dropped handle): it is cancelled first, its
    /// work drains, then the lease is released. No-op without a live term.
    pub fn give_up(&mut self) {
        self.feed(Event::GiveUp);
    }

    /// Hands the lease to `to`: the term ends now (cancelled first, its work drained as a
    /// stop drains it, renewals going on meanwhile), then one compare-and-swap release names
    /// `to` as the successor. `reply` is answered once that release is written, or with why
    /// it could not be (rule `handoff-ends-with-its-term`).
    pub fn begin_handoff(&mut self, to: Arc<str>, reply: oneshot::Sender<HandoffOutcome>) {
        if !self.lifecycle.handing_off() && self.term().is_some() && *to != *self.identity() {
            tracing::info!(lease = %self.key, identity = %self.identity(), %to, "handing off");
        }
        let effects = self.decide(Event::HandOff { to });
        let mut reply = Some(reply);
        for effect in effects {
            match effect {
                Effect::ReplyHandoff(outcome) => {
                    if let Some(reply) = reply.take() {
                        let _ = reply.send(outcome);
                    }
                }
                Effect::AwaitHandoff => self.handoff_waiters.extend(reply.take()),
                other => self.apply(other),
            }
        }
    }

    /// Begins a stop (or joins the one under way); `reply` is answered when it is done, or at
    /// once with [`StopOutcome::Deferred`] when `from_work`.
    pub(super) fn begin_stop(&mut self, reply: oneshot::Sender<StopOutcome>, from_work: bool) {
        let effects = self.decide(Event::Stop { from_work });
        let mut reply = Some(reply);
        for effect in effects {
            match effect {
                Effect::ReplyStop(outcome) => {
                    if let Some(reply) = reply.take() {
                        let _ = reply.send(outcome);
                    }
                }
                Effect::AwaitStop => self.stop_waiters.extend(reply.take()),
                other => self.apply(other),
            }
        }
    }

    /// What the lease machine should aim for.
    pub(super) fn want(&self, face_wants: bool) -> Want {
        self.lifecycle.want(&facts_of(&self.machine), face_wants)
    }

    /// When the drain under way must have ended, if bounded.
    pub(super) fn drain_deadline(&self) -> Option<Instant> {
        self.lifecycle.drain_deadline()
    }

    fn decide(&mut self, event: Event) -> Vec<Effect> {
        // A fresh list each time: events other than renewals (which take
        // `Lifecycle::renewed`) are rare, and a kept buffer would cost every idle actor its
        // capacity.
        let mut fx = Vec::new();
        self.lifecycle
            .handle(now(), event, &facts_of(&self.machine), &mut fx);
        fx
    }

    /// Performs `fx` in order.
    fn apply_all(&mut self, fx: Vec<Effect>) {
        for effect in fx {
            self.apply(effect);
        }
    }

    /// Feeds an event to the lifecycle and performs (or queues) its effects.
    pub(super) fn feed(&mut self, event: Event) {
        let fx = self.decide(event);
        self.apply_all(fx);
    }

    /// A renewal was written: the serving term's deadline moves to `until`
    /// ([`Lifecycle::renewed`]: no effect list per renewal).
    pub(super) fn renewed(&mut self, until: Instant) {
        let expired = match self.lifecycle.renewed() {
            Some(term) if !term.extend(until) => term.id(),
            _ => return,
        };
        // The term's own deadline passed before this renewal came back: it is over, and
        // terms never come back. We still hold the lease: released.
        self.feed(Event::Expired(expired));
    }

    /// Lets the lifecycle decide what it can decide now (a drain past its deadline, a handoff
    /// the store has settled, a finished stop), and performs it.
    pub(super) fn settle(&mut self, now: Instant) {
        if !self.lifecycle.unsettled() {
            return;
        }
        let mut fx = Vec::new();
        self.lifecycle
            .settle(now, &facts_of(&self.machine), &mut fx);
        self.apply_all(fx);
    }

    /// Whether effects wait for the actor.
    pub(super) fn has_effects(&self) -> bool {
        !self.queue.is_empty()
    }

    /// The effects that need the face or the actor, in order.
    pub(super) fn take_effect(&mut self) -> Option<Effect> {
        let effect = self.queue.pop_front();
        if effect.is_none() && self.queue.capacity() > 0 {
            // Twenty thousand idle actors should not each keep a queue's capacity.
            self.queue = VecDeque::new();
        }
        effect
    }

    /// The callers of the stop, once it has finished.
    pub(super) fn take_stop_waiters(&mut self) -> Vec<oneshot::Sender<StopOutcome>> {
        std::mem::take(&mut self.stop_waiters)
    }

    /// Performs what needs neither the face nor the actor's context; queues the rest.
    fn apply(&mut self, effect: Effect) {
        match effect {
            Effect::Cancel(term) => term.cancel(),
            Effect::Retire => {
                // Out of the registry now, before the term's cancellation (the next effect)
                // wakes anyone: a caller that sees the term end and asks for the lease again
                // must get a new actor, not this stopping one. The face's part waits for the
                // actor.
                self.shared.directory.retire(&self.key, self.id);
                self.queue.push_back(Effect::Retire);
            }
            Effect::MarkLost(term) => term.mark_lost(),
            Effect::Abandon => self.machine.abandon(),
            Effect::AnswerHandoff { to, outcome } => {
                match &outcome {
                    HandoffOutcome::Done => {
                        self.metrics.handed_off();
                        tracing::info!(lease = %self.key, %to, "handed off");
                    }
                    other => {
                        tracing::warn!(lease = %self.key, %to, ?other, "handoff failed");
                    }
                }
                for waiter in std::mem::take(&mut self.handoff_waiters) {
                    let _ = waiter.send(outcome.clone());
                }
            }
            // No caller here (a stop or handoff fed as a plain event): nobody to answer.
            Effect::ReplyStop(_)
            | Effect::AwaitStop
            | Effect::ReplyHandoff(_)
            | Effect::AwaitHandoff => {}
            other => self.queue.push_back(other),
        }
    }

    /// Enters the lease's span for one wake-up, if any subscriber records it. Without one the
    /// span is disabled, and entering it would only pass "enter"/"exit" lines on to the `log`
    /// crate (tracing's `log` feature, which a dependency turns on) on every renewal.
    pub(super) fn enter_span(&self) -> Option<tracing::span::EnteredSpan> {
        (!self.span.is_disabled()).then(|| self.span.clone().entered())
    }

    /// Publishes a raised token floor to the process's other actors, and reports what the
    /// machine noticed (a twin, versions going backwards).
    pub(super) fn report(&mut self) {
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
    pub(super) fn note_seen(&self) {
        let version = self.machine.lease().map(|l| l.resource_version.as_str());
        self.inbox.set_seen(version);
    }

    /// Observes the renewal the hub parked for us, if any, as of the instant it arrived: expiry
    /// is judged as if it had been delivered then.
    pub(super) fn take_parked(&mut self) {
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
    pub(super) fn check_watch(&mut self) {
        if self.inbox.watch_current() {
            self.machine.watch_current();
        } else {
            self.machine.watch_behind(now());
        }
    }

    /// The terms this actor may still have running (serving or draining), for its last rites.
    pub(super) fn live_term(&self) -> Option<&Term> {
        self.lifecycle.current()
    }
}

/// What the lifecycle needs to know of `machine`.
fn facts_of(machine: &Machine) -> Facts<'_> {
    Facts {
        identity: machine.identity(),
        holding: machine.holding(),
        in_flight: machine.in_flight(),
        record: machine.lease().map(|lease| &lease.record),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: usize) -> LeaseKey {
        LeaseKey::new("ns", format!("l{i}"))
    }

    #[test]
    fn idle_actors_retire_floors_are_bounded_and_tokens_never_go_back() {
        let floors = TokenFloors::keeping(2);
        for i in 0..5 {
            floors.raise(&key(i), 10 + i as i32);
        }
        floors.raise(&key(9), 100); // a live actor's: never folded while it lives
        for i in 0..5 {
            floors.retire(&key(i));
        }
        assert_eq!(
            floors.len(),
            3,
            "two retired leases kept by name, and the live one"
        );
        assert_eq!(
            floors.get(&key(0)),
            None,
            "the oldest retired are forgotten by name"
        );
        assert_eq!(floors.get(&key(4)), Some(14), "the latest are kept by name");
        assert_eq!(floors.get(&key(9)), Some(100));
        // Forgotten names (and new ones) start above every token forgotten.
        assert_eq!(floors.mark(), Some(12));
        floors.retire(&key(9));
        floors.retire(&key(4));
        // l4 retired twice: forgotten at its first turn (early, never unsafe: the mark covers it).
        assert_eq!(floors.mark(), Some(14));
        assert_eq!(floors.get(&key(9)), Some(100));
        assert_eq!(floors.len(), 1);
        // A lease never seen by name is not counted as seen (no deleted-held wait), only based.
        let mut machine = super::super::Machine::new("me", crate::timing::Timing::default());
        machine.raise_base(floors.mark().unwrap());
        assert_eq!(machine.token_floor(), None);
    }
}
