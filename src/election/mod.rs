//! Leader election: [`Election`] handles on a lease actor with the election face.
//!
//! The actor campaigns for `<scope>.election.<name>`, renews while leader, steps down at the
//! renew deadline and campaigns again after any loss: an election never gives up until it is
//! stopped. Subscribers receive [`Elected`], [`Deposed`] and [`HolderChanged`] messages;
//! [`Election::when_elected`] runs a future per term, as the term's guarded work. The term
//! lifecycle (cancel, drain, release, stop) is the one every face shares; see
//! [`crate::lease`].
//!
//! # Handoff
//!
//! [`Election::handoff_to`] moves leadership to a named replica: the term ends as a stop
//! ends it (cancelled, its work drained), then one compare-and-swap release names the
//! successor ([`PREFERRED_HOLDER_ANNOTATION`](crate::record::PREFERRED_HOLDER_ANNOTATION)). The successor
//! takes the free lease at once; other dsync candidates leave it to the successor for one
//! lease duration, so a dead successor delays the election by that much at most. An operator
//! can ask for the same with an annotation on the Lease
//! ([`HANDOFF_REQUEST_ANNOTATION`](crate::record::HANDOFF_REQUEST_ANNOTATION)). client-go
//! peers see a plain release.
//!
//! # Coordinated leader election
//!
//! Kubernetes' coordinated leader election (KEP-4355) lets the API server's election
//! controller pick a lease's holder among the lease's `LeaseCandidate`s: on a Lease with
//! `spec.strategy` (e.g. `OldestEmulationVersion`) the controller writes `holderIdentity`, and
//! sets `spec.preferredHolder` to ask the holder to give the lease up. A replica becomes a
//! candidate with [`Dsync::candidate`](crate::Dsync::candidate) and a [`Candidacy`] (binary
//! and emulation versions, strategy): a `coordination.k8s.io/v1beta1` `LeaseCandidate` named
//! after the replica's identity (the controller names the candidate it picks as the holder),
//! renewed when the controller pings it and every 5 minutes, deleted when the election stops
//! (see [`candidate`]). The candidate follows its object with one watch, so it answers a ping
//! as it comes and makes no request while nothing changes; it reads the object every second
//! only while that watch is down ([`CandidateStatus::watching`]). It runs on dsync's lease
//! thread, where the store's client lives, and [`Dsync::shutdown`](crate::Dsync::shutdown)
//! returns after it was withdrawn. Until the controller has marked the Lease with a strategy, a dsync
//! candidate campaigns as usual (client-go's coordinated mode waits for the controller from
//! the start); the controller then moves the lease to its pick. dsync follows the rules of
//! client-go's coordinated mode (`Coordinated: true`):
//!
//! * a leader whose lease names another preferred holder ends its term: it is cancelled
//!   ([`Deposed`] with [`DeposeReason::PreferredHolder`]), its `when_elected` work drains while
//!   the lease is still renewed, then the lease is released (`holderIdentity` cleared) for the
//!   controller to hand over. client-go stops renewing and lets the lease expire instead
//!   (releasing only with `ReleaseOnCancel`); releasing after the drain is as safe, and faster;
//! * a candidate never acquires a lease with a strategy (free or expired): it never writes its
//!   own identity into `holderIdentity`, it waits for the controller;
//! * a lease the controller assigns to this replica is taken at once, by one compare-and-swap
//!   write on the version seen that starts a term with the next fencing token
//!   (`leaseTransitions + 1`: the controller keeps the count, and tokens must grow). Only a
//!   holder change *to* us on a lease with a strategy counts as an assignment, so a record
//!   written by another process with our identity is still judged by expiry;
//! * `preferredHolder` naming us or absent, and leases without `strategy`, change nothing.
//!
//! The `CoordinatedLeaderElection` feature gate is off by default in Kubernetes: alpha in
//! 1.31–1.32 (`LeaseCandidate` in `v1alpha1`/`v1alpha2`, which dsync does not speak), beta
//! since 1.33 with `coordination.k8s.io/v1beta1`. Turn it on on the kube-apiserver with
//! `--feature-gates=CoordinatedLeaderElection=true` and
//! `--runtime-config=coordination.k8s.io/v1beta1=true`; the controller then serves every
//! namespace. With the gate off the API server drops both fields and elections behave as
//! without them; a candidate cannot register and says so ([`CandidateStatus::error`]).

use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::WeakRecipient;
use actix::prelude::*;
use futures::FutureExt;
use futures::future::LocalBoxFuture;
use tokio::sync::{oneshot, watch};

pub use candidate::{Candidacy, Candidate, CandidateStatus};

use crate::config::validate_identity;
use crate::error::{Error, Result};
use crate::lease::StepDownReason;
use crate::lease::actor::{FaceCommand, HandoffOutcome, LeaseActor, Stop, StopOutcome};
use crate::resource::{LeaseKind, Resource};
use crate::store::LeaseKey;
use crate::term::{Term, TermId, now};
use crate::work::{self, ActorId};

pub mod candidate;
mod face;

pub(crate) use face::ElectionFace;

/// Starts the lease actor of an election (the face's one registration in
/// [`Dsync`](crate::Dsync)): its status channel, its face, and the registry's entry, whose
/// handle is the [`Election`].
pub(crate) fn start_actor(
    arbiter: &actix::ArbiterHandle,
    params: crate::lease::actor::LeaseParams,
    resource: Resource,
    config: &crate::config::Config,
) -> crate::supervisor::Entry {
    let key = params.key.clone();
    let handles = params.handles.clone();
    let (tx, rx) = watch::channel(ElectionStatus {
        lease: key.clone(),
        identity: config.identity.clone(),
        holder: None,
        term: None,
        valid_until: None,
        renewed_at: None,
        lease_duration: config.timing.lease_duration(),
        restarts: 0,
        last_error: None,
        invalid: None,
        stopped: false,
    });
    let (addr, id) = crate::lease::actor::start(arbiter, params, ElectionFace::new(tx));
    let stopper = addr.clone().recipient();
    let election = Election::new(resource, id, addr, rx);
    crate::supervisor::Entry::new(id, key, LeaseKind::Election, stopper, election, handles)
}

/// Sent to subscribers when this replica becomes leader.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct Elected {
    /// The new term; cancelled when it ends.
    pub term: Term,
}

/// Sent to subscribers when a term of this replica ends.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct Deposed {
    /// The election's lease.
    pub lease: LeaseKey,
    /// Which term ended (matches [`Term::id`] of the `Elected` message).
    pub term_id: TermId,
    /// The ended term's fencing token.
    pub fencing_token: i32,
    /// Why it ended.
    pub reason: DeposeReason,
}

/// Sent to subscribers when the lease's recorded holder changes (including to or from us).
#[derive(Debug, Clone, PartialEq, Eq, Message)]
#[rtype(result = "()")]
pub struct HolderChanged {
    /// The election's lease.
    pub lease: LeaseKey,
    /// The new holder; `None`: nobody.
    pub holder: Option<String>,
}

/// A message an [`Election`] sends its subscribers ([`Election::subscribe`]): [`Elected`],
/// [`Deposed`] or [`HolderChanged`]. Sealed: these three are all there is.
pub trait ElectionEvent: Message<Result = ()> + Send + sealed::Sealed + 'static {}

mod sealed {
    pub trait Sealed {}
    impl Sealed for super::Elected {}
    impl Sealed for super::Deposed {}
    impl Sealed for super::HolderChanged {}
}

impl ElectionEvent for Elected {}
impl ElectionEvent for Deposed {}
impl ElectionEvent for HolderChanged {}

impl ElectionCommand {
    /// The subscription of `recipient` to the list of its message type (one of the three
    /// [`ElectionEvent`]s, so one of the downcasts succeeds).
    fn subscribe<M: ElectionEvent>(recipient: WeakRecipient<M>) -> Self {
        let any: Box<dyn std::any::Any> = Box::new(recipient);
        let any = match any.downcast::<WeakRecipient<Elected>>() {
            Ok(r) => return ElectionCommand::SubscribeElected(*r),
            Err(any) => any,
        };
        match any.downcast::<WeakRecipient<Deposed>>() {
            Ok(r) => ElectionCommand::SubscribeDeposed(*r),
            Err(any) => ElectionCommand::SubscribeHolderChanged(
                *any.downcast::<WeakRecipient<HolderChanged>>()
                    .unwrap_or_else(|_| unreachable!("ElectionEvent is sealed to three types")),
            ),
        }
    }
}

/// Why a term ended.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DeposeReason {
    /// No renewal succeeded within the renew deadline (API server unreachable, too slow, ...).
    RenewDeadlineExceeded,
    /// Someone else wrote the lease.
    Superseded {
        /// The new holder, if any.
        holder: Option<String>,
    },
    /// The lease object was deleted.
    LeaseDeleted,
    /// The election was stopped (or its `Dsync` shut down).
    Stopped,
    /// The election actor failed and was restarted by its supervisor.
    Restarted,
    /// A `when_elected` future (or a [`LeaderOnly`](crate::LeaderOnly) actor's term) panicked.
    WorkPanicked,
    /// Leadership was handed to another replica ([`Election::handoff_to`], or a handoff asked
    /// for on the lease).
    HandedOff {
        /// The successor's identity.
        to: String,
    },
    /// The lease is coordinated (`spec.strategy`, Kubernetes' coordinated leader election) and
    /// the API server's election controller prefers another holder (`spec.preferredHolder`).
    /// The term's work drained, then the lease was released so that the controller can hand
    /// it over. See [Coordinated leader election](crate::election#coordinated-leader-election).
    PreferredHolder {
        /// The preferred holder.
        holder: String,
    },
}

impl From<StepDownReason> for DeposeReason {
    fn from(reason: StepDownReason) -> Self {
        match reason {
            StepDownReason::RenewDeadlineExceeded => DeposeReason::RenewDeadlineExceeded,
            StepDownReason::Superseded { holder } => DeposeReason::Superseded { holder },
            StepDownReason::LeaseDeleted => DeposeReason::LeaseDeleted,
            StepDownReason::PreferredHolder { holder } => DeposeReason::PreferredHolder { holder },
        }
    }
}

impl fmt::Display for DeposeReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeposeReason::RenewDeadlineExceeded => f.write_str("renew deadline exceeded"),
            DeposeReason::Superseded { holder: Some(h) } => write!(f, "superseded by {h}"),
            DeposeReason::Superseded { holder: None } => f.write_str("lease cleared by another"),
            DeposeReason::LeaseDeleted => f.write_str("lease deleted"),
            DeposeReason::Stopped => f.write_str("stopped"),
            DeposeReason::Restarted => f.write_str("election actor restarted"),
            DeposeReason::WorkPanicked => f.write_str("the term's work panicked"),
            DeposeReason::HandedOff { to } => write!(f, "handed off to {to}"),
            DeposeReason::PreferredHolder { holder } => {
                write!(f, "the election controller prefers {holder}")
            }
        }
    }
}

/// A snapshot of an election, published by its actor.
#[derive(Debug, Clone)]
pub struct ElectionStatus {
    /// The election's lease.
    pub lease: LeaseKey,
    /// This replica's identity.
    pub identity: String,
    /// The holder recorded in the lease when last observed.
    pub holder: Option<String>,
    /// Our current term, while leader.
    pub term: Option<Term>,
    /// Until when our term is certainly valid (the renew deadline of the last renewal).
    pub valid_until: Option<Instant>,
    /// When our lease was last renewed (or acquired), while leader.
    pub renewed_at: Option<Instant>,
    /// The election's lease duration.
    pub lease_duration: Duration,
    /// How often the supervisor has restarted the election actor.
    pub restarts: u32,
    /// The latest store error, cleared by the next success.
    pub last_error: Option<String>,
    /// Why the lease record cannot be interpreted (edited into something no peer writes, like
    /// a negative `leaseDurationSeconds`): the election does not touch it and has no leader
    /// until it is repaired or deleted. `None` while the record is valid.
    pub invalid: Option<String>,
    /// The election has been stopped.
    pub stopped: bool,
}

impl ElectionStatus {
    /// The health check of a leader, like client-go's `HealthzAdaptor`: an error if this
    /// replica holds a term but has not renewed its lease for longer than the lease duration
    /// plus `tolerance` (its election actor is stuck: others may already have taken over). A
    /// follower, or a replica without a term, is healthy.
    pub fn check_health(&self, now: Instant, tolerance: Duration) -> Result<()> {
        let Some(renewed_at) = self.renewed_at.filter(|_| self.term.is_some()) else {
            return Ok(());
        };
        let since = now.saturating_duration_since(renewed_at);
        let limit = self.lease_duration + tolerance;
        if since > limit {
            return Err(Error::LeaderNotRenewing {
                lease: self.lease.to_string(),
                since,
                limit,
            });
        }
        Ok(())
    }

    /// Whether we lead right now: a live term whose renew deadline has not passed (so this is
    /// false at the deadline even if the actor is busy).
    pub fn is_leader(&self) -> bool {
        let live = self.term.as_ref().is_some_and(Term::is_active);
        live && self.valid_until.is_some_and(|until| now() < until)
    }
}

/// A `when_elected` function, and where its futures run: on the arbiter (thread) that
/// registered it, never on dsync's own lease thread, so that work blocking its thread cannot
/// delay renewals.
pub(crate) struct Callback {
    f: Mutex<Box<dyn Fn(Term) -> LocalBoxFuture<'static, ()> + Send>>,
    arbiter: ArbiterHandle,
    thread: std::thread::ThreadId,
}

pub(crate) enum ElectionCommand {
    SubscribeElected(WeakRecipient<Elected>),
    SubscribeDeposed(WeakRecipient<Deposed>),
    SubscribeHolderChanged(WeakRecipient<HolderChanged>),
    WhenElected(Arc<Callback>),
    HandOff {
        to: Arc<str>,
        reply: oneshot::Sender<HandoffOutcome>,
        /// Asked from this election's own guarded work: not waited for.
        from_work: bool,
    },
}

/// A handle on one election. Cheap to clone; clones and other handles for the same election
/// from the same [`Dsync`](crate::Dsync) share one actor.
#[derive(Clone)]
pub struct Election {
    resource: Resource,
    id: ActorId,
    addr: Addr<LeaseActor<ElectionFace>>,
    status: watch::Receiver<ElectionStatus>,
}

impl fmt::Debug for Election {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Election")
            .field("resource", &self.resource)
            .field("status", &*self.status.borrow())
            .finish()
    }
}

impl Election {
    pub(crate) fn new(
        resource: Resource,
        id: ActorId,
        addr: Addr<LeaseActor<ElectionFace>>,
        status: watch::Receiver<ElectionStatus>,
    ) -> Self {
        Election {
            resource,
            id,
            addr,
            status,
        }
    }

    /// The id of the election's actor (work scopes name it).
    pub(crate) fn actor_id(&self) -> ActorId {
        self.id
    }

    /// The resource this election is for.
    pub fn resource(&self) -> &Resource {
        &self.resource
    }

    /// The election's lease.
    pub fn lease(&self) -> LeaseKey {
        self.status.borrow().lease.clone()
    }

    /// Whether this replica leads right now. See [`ElectionStatus::is_leader`].
    pub fn is_leader(&self) -> bool {
        self.status.borrow().is_leader()
    }

    /// The holder the lease names when last observed: the leader's identity, `None` when it
    /// names nobody (followers learn of changes from the watch, so this is current up to the
    /// watch's delay).
    pub fn holder(&self) -> Option<String> {
        self.status.borrow().holder.clone()
    }

    /// [`holder`](Self::holder) as a `Result` (the Go package's `CurrentLeader`): the current
    /// leader as last observed, or [`Error::NoLeader`] when the lease names nobody
    /// (never held, released, or not read yet).
    /// [`Error::InvalidState`] when the lease record cannot be interpreted (see
    /// [`ElectionStatus::invalid`]).
    pub fn current_leader(&self) -> Result<String> {
        let status = self.status.borrow();
        if let Some(reason) = &status.invalid {
            return Err(Error::InvalidState {
                lease: status.lease.to_string(),
                reason: reason.clone(),
            });
        }
        status.holder.clone().ok_or_else(|| Error::NoLeader {
            lease: status.lease.to_string(),
        })
    }

    /// [`ElectionStatus::check_health`] now: for a `/healthz` endpoint.
    pub fn check_health(&self, tolerance: Duration) -> Result<()> {
        self.status.borrow().check_health(now(), tolerance)
    }

    /// Our current term, while leader.
    pub fn term(&self) -> Option<Term> {
        let status = self.status.borrow();
        if status.is_leader() {
            status.term.clone()
        } else {
            None
        }
    }

    /// A snapshot of the election's state.
    pub fn status(&self) -> ElectionStatus {
        self.status.borrow().clone()
    }

    /// A receiver of status changes from now on (`changed()` waits for the next one), for
    /// waiting on conditions without polling.
    pub fn watch_status(&self) -> watch::Receiver<ElectionStatus> {
        let mut rx = self.status.clone();
        rx.mark_unchanged();
        rx
    }

    /// Waits until this replica is leader and returns the term. [`Error::Stopped`] if the
    /// election is (or gets) stopped first.
    pub async fn elected(&self) -> Result<Term> {
        let mut rx = self.status.clone();
        let status = rx
            .wait_for(|s| s.stopped || s.term.as_ref().is_some_and(Term::is_active))
            .await
            .map_err(|_| self.stopped_error())?;
        match &status.term {
            Some(term) if !status.stopped => Ok(term.clone()),
            _ => Err(self.stopped_error()),
        }
    }

    /// Subscribes `recipient` to one kind of message: [`Elected`], [`Deposed`] or
    /// [`HolderChanged`] (whichever `M` is). An actor that handles all three subscribes three
    /// recipients (`addr.clone().recipient::<Elected>()`, ...).
    ///
    /// The election keeps only weak references: a stopped subscriber is dropped from the list.
    /// A subscriber to `Elected` joining during our term receives `Elected` for it at once.
    ///
    /// ```
    /// use actix::prelude::*;
    /// use dsync::{Dsync, Elected, MemoryStore};
    ///
    /// /// Only wants to know when this replica becomes leader.
    /// struct OnElected(tokio::sync::mpsc::UnboundedSender<i32>);
    /// impl Actor for OnElected {
    ///     type Context = Context<Self>;
    /// }
    /// impl Handler<Elected> for OnElected {
    ///     type Result = ();
    ///     fn handle(&mut self, msg: Elected, _: &mut Context<Self>) {
    ///         let _ = self.0.send(msg.term.fencing_token());
    ///     }
    /// }
    ///
    /// # fn main() -> dsync::Result<()> {
    /// actix::System::new().block_on(async {
    ///     let dsync = Dsync::new(MemoryStore::new(), "pod-a")?;
    ///     let election = dsync.election(dsync::MASTER)?;
    ///     let (tx, mut tokens) = tokio::sync::mpsc::unbounded_channel();
    ///     let addr = OnElected(tx).start();
    ///     // The election keeps a weak reference: keep `addr` for as long as it should listen.
    ///     election.subscribe(addr.clone().recipient())?;
    ///     assert_eq!(tokens.recv().await, Some(0));
    ///     drop(addr);
    ///     dsync.shutdown().await
    /// })
    /// # }
    /// ```
    pub fn subscribe<M: ElectionEvent>(&self, recipient: Recipient<M>) -> Result<()> {
        self.command(ElectionCommand::subscribe(recipient.downgrade()))
    }

    /// Runs `f(term)` at the start of every term of this replica (at once if it leads now).
    ///
    /// The futures run on the actix arbiter (thread) that calls `when_elected`, not on dsync's
    /// own lease thread, and should return soon after [`Term::cancelled`] completes. They are
    /// the term's *guarded work*: a new term's futures start only after every future of the
    /// previous term has returned, and [`stop`](Self::stop) releases the lease only after they
    /// have (bounded by [`Config::drain_timeout`](crate::Config::drain_timeout)). A future that
    /// panics ends its term (reported as [`DeposeReason::WorkPanicked`]); the election then
    /// campaigns again. [`Error::NoActixSystem`] when called outside an actix arbiter.
    pub fn when_elected<F, Fut>(&self, f: F) -> Result<()>
    where
        F: Fn(Term) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + 'static,
    {
        let arbiter = Arbiter::try_current().ok_or(Error::NoActixSystem)?;
        let callback = Callback {
            f: Mutex::new(Box::new(move |term| f(term).boxed_local())),
            arbiter,
            thread: std::thread::current().id(),
        };
        self.command(ElectionCommand::WhenElected(Arc::new(callback)))
    }

    /// Stops the election: cancels the current term, waits for its `when_elected` futures,
    /// releases the lease (so another replica takes over at once) and ends the actor.
    /// Idempotent: later calls return the same result, and other calls on this handle
    /// [`Error::Stopped`].
    ///
    /// Errors, each after the stop has taken effect:
    /// * [`Error::DrainTimeout`]: the term's work did not return within the drain timeout; the
    ///   lease was not released while it may still run, and expires after the lease duration.
    /// * [`Error::StopFromWork`]: called from the term's own work (a `when_elected` future, a
    ///   [`LeaderOnly`](crate::LeaderOnly) actor): waiting would wait for itself, so this
    ///   returns at once; the lease is released as soon as that work returns.
    /// * The store's error if the release could not be written (the lease then expires).
    pub async fn stop(&self) -> Result<()> {
        let (reply, rx) = oneshot::channel();
        let stop = Stop {
            reply,
            from_work: work::inside(self.id),
        };
        if self.addr.send(stop).await.is_err() {
            return Ok(()); // the actor is gone: nothing left to stop
        }
        // A dropped sender means the actor ended without answering: stopped either way.
        rx.await
            .unwrap_or(StopOutcome::Done)
            .into_result("election", &self.lease())
    }

    /// Hands leadership to the replica whose identity is `to`, if this replica leads: its term
    /// ends first (cancelled, its `when_elected` work drained as [`stop`](Self::stop) drains
    /// it, renewals going on meanwhile), then one compare-and-swap write releases the lease
    /// naming `to` as the successor. Returns once that write is done.
    ///
    /// * `to`, when alive and campaigning, sees the release through its watch and takes the
    ///   lease at once, with the next fencing token. Other dsync candidates (this one
    ///   included: the election keeps campaigning) leave the free lease to `to` for one lease
    ///   duration; if `to` is absent or dead, normal election resumes after that.
    /// * client-go peers on the same lease do not know the successor annotation: they contend
    ///   for the free lease like any release (a client-go peer may win it).
    /// * `to` = this replica: nothing to do, `Ok`.
    /// * [`Error::NotLeader`] if this replica holds no live term; [`Error::HandoffInProgress`]
    ///   if a handoff to someone else is under way (one to the same successor is joined);
    ///   [`Error::DrainTimeout`] if the work did not return within the drain timeout (nothing
    ///   was written; the lease expires, and this replica does not campaign again until that
    ///   work has returned); [`Error::HandoffFailed`] if the lease was lost
    ///   before the release; the store's error if the release could not be written.
    /// * Called from this election's own `when_elected` work, it does not wait for that work
    ///   and returns [`Error::HandoffFromWork`] at once; the handoff still takes place.
    ///
    /// A handoff can also be asked for from outside the leader, e.g. by an operator:
    /// `kubectl annotate lease <lease> dsync.io/handoff-to=<identity>`
    /// ([`HANDOFF_REQUEST_ANNOTATION`](crate::record::HANDOFF_REQUEST_ANNOTATION)); the
    /// leader carries it out the same way and clears the annotation.
    pub async fn handoff_to(&self, to: &str) -> Result<()> {
        validate_identity(to)?;
        let (reply, rx) = oneshot::channel();
        self.command(ElectionCommand::HandOff {
            to: to.into(),
            reply,
            from_work: work::inside(self.id),
        })?;
        rx.await
            .unwrap_or(HandoffOutcome::Lost)
            .into_result("election", &self.lease(), to)
    }

    fn command(&self, command: ElectionCommand) -> Result<()> {
        if self.status.borrow().stopped || !self.addr.connected() {
            return Err(self.stopped_error());
        }
        // `do_send` ignores the mailbox capacity: commands are few and must not be lost.
        self.addr.do_send(FaceCommand(command));
        Ok(())
    }

    fn stopped_error(&self) -> Error {
        Error::Stopped {
            what: format!("election {}", self.status.borrow().lease),
        }
    }
}

// The election face plugs into the face-agnostic entry point [`Dsync`]: its factories live here, with
// the face, not in `dsync.rs`.
impl crate::Dsync {
    /// Registers this replica as a candidate of `election` in Kubernetes' coordinated leader
    /// election (KEP-4355): a `LeaseCandidate` named after this replica's identity, in the
    /// election's namespace, for its lease, with `candidacy`'s versions and strategy. It is
    /// renewed (at once when the API server's election controller pings it: the candidate
    /// watches its object) and deleted when the election stops; a shutdown waits for that. The controller then picks the lease's holder among the
    /// candidates, and this election follows (see
    /// [Coordinated leader election](crate::election#coordinated-leader-election)).
    ///
    /// [`Error::InvalidConfig`] (before anything is written) if `candidacy` is not valid or
    /// the identity cannot name a `LeaseCandidate`. A candidate that cannot register (no
    /// `coordination.k8s.io/v1beta1` API, no RBAC, a store that keeps no candidates) logs a
    /// warning and says so in its [`status`](crate::election::Candidate::status).
    /// [`Error::Stopped`] after [`shutdown`](Self::shutdown).
    pub fn candidate(&self, election: &Election, candidacy: Candidacy) -> Result<Candidate> {
        candidate::start(
            self.inner.shared.store.clone(),
            &self.inner.config,
            election,
            candidacy,
            &self.inner.arbiter,
            &self.inner.registry.companions,
        )
    }

    /// The election `name` in the configured namespace and scope, campaigning from now on.
    /// [`Error::BadResourceName`] (before anything is started) if the name is not valid; see
    /// [`sanitize_name`](crate::sanitize_name). Asking twice gives handles on one election.
    pub fn election(&self, name: &str) -> Result<Election> {
        self.election_for(self.resource(name))
    }

    /// The election for an explicit resource (an empty namespace means the configured one).
    pub fn election_for(&self, resource: Resource) -> Result<Election> {
        let (resource, key) = self.prepare(resource, LeaseKind::Election)?;
        let inner = &self.inner;
        let entry = self.entry(&key, |predecessor| {
            let params = self.params(&key, predecessor);
            crate::election::start_actor(&inner.arbiter, params, resource.clone(), &inner.config)
        })?;
        entry
            .handle::<Election>()
            .ok_or_else(|| self.taken(&key, entry.lease_kind()))
    }
}

#[cfg(test)]
mod health_tests {
    use super::*;

    fn status(term: bool, renewed_at: Option<Instant>) -> ElectionStatus {
        let lease = LeaseKey::new("ns", "s.election.x");
        ElectionStatus {
            term: term.then(|| {
                Term::new(
                    lease.clone(),
                    "pod-a".into(),
                    1,
                    now() + Duration::from_secs(10),
                )
            }),
            lease,
            identity: "pod-a".into(),
            holder: Some("pod-a".into()),
            valid_until: None,
            renewed_at,
            lease_duration: Duration::from_secs(15),
            restarts: 0,
            last_error: None,
            invalid: None,
            stopped: false,
        }
    }

    #[test]
    fn a_leader_is_healthy_until_lease_plus_tolerance_after_its_last_renewal() {
        let t0 = Instant::now();
        let tolerance = Duration::from_secs(5);
        let s = status(true, Some(t0));
        assert!(s.check_health(t0, tolerance).is_ok());
        assert!(
            s.check_health(t0 + Duration::from_secs(20), tolerance)
                .is_ok()
        );
        let err = s
            .check_health(t0 + Duration::from_secs(21), tolerance)
            .unwrap_err();
        assert!(
            matches!(err, Error::LeaderNotRenewing { since, limit, .. }
                if since == Duration::from_secs(21) && limit == Duration::from_secs(20)),
            "{err:?}"
        );
    }

    #[test]
    fn followers_are_healthy() {
        let t0 = Instant::now();
        let later = t0 + Duration::from_secs(3600);
        assert!(
            status(false, None)
                .check_health(later, Duration::ZERO)
                .is_ok()
        );
        assert!(
            status(false, Some(t0))
                .check_health(later, Duration::ZERO)
                .is_ok()
        );
    }
}
