//! [`LeaderOnly`]: an actor that runs only while this replica leads an election.
//!
//! At the start of every term the factory builds the actor and it is started; when the term
//! ends the actor is stopped (its `stopping` sees [`Term::is_active`] false); if it stops by
//! itself (or panics out of its context) while the term is still live, it is started again
//! after a backoff. The actor's whole life is part of the term's guarded work
//! ([`Election::when_elected`]), so:
//!
//! * the election does not release the lease, nor campaign for a new term, until the actor of
//!   the old term has stopped: two of them never run at once in this replica;
//! * across replicas, a deposed leader's term is cancelled at its renew deadline, which comes
//!   before any other replica may take over (the lease duration after it last saw a renewal).
//!   The actor must stop within `lease_duration - renew_deadline` of its term's cancellation
//!   (5 s with the default timing) for two replicas never to run it at once: keep `stopping`
//!   and `stopped` short.
//!
//! The actor runs on the arbiter that called [`LeaderOnly::start`], not on dsync's lease
//! thread. A stop or shutdown it calls is recognised as coming from its own term's work: it
//! returns at once ([`Error::StopFromWork`](crate::Error::StopFromWork)) and takes effect when
//! the actor has stopped.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::prelude::*;
use tokio::sync::{oneshot, watch};

use crate::election::Election;
use crate::error::Result;
use crate::term::Term;
use crate::work::{self, ActorId};

/// Restart backoff of a [`LeaderOnly`] actor that stops by itself while its term is live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub struct RestartBackoff {
    /// The first delay.
    pub initial: Duration,
    /// The cap: the delay doubles per consecutive failure up to this.
    pub max: Duration,
}

impl Default for RestartBackoff {
    /// 1 s, doubling, at most 30 s.
    fn default() -> Self {
        RestartBackoff {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(30),
        }
    }
}

impl RestartBackoff {
    /// The delay before restart number `n` (1-based): `initial`, doubled per restart after
    /// the first, at most `max` (the crate's one doubling rule, shared with the lease
    /// machine and the observer).
    pub fn delay(&self, n: u32) -> Duration {
        crate::lease::backoff::doubling(self.initial, n, self.max)
    }
}

/// What a [`LeaderOnly`] is doing, for health pages and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeaderOnlyStatus {
    /// The actor is running now.
    pub running: bool,
    /// How many times the actor was started, over all terms.
    pub starts: u64,
    /// How many times it was started again after stopping by itself while leader.
    pub restarts: u64,
    /// The fencing token of the term the actor runs (or last ran) under.
    pub token: Option<i32>,
}

/// An actor of type `A` that runs only while this replica leads an election; see the
/// [module docs](self).
///
/// ```
/// use actix::prelude::*;
/// use dsync::{Dsync, LeaderOnly, MemoryStore, Term};
///
/// /// Rotates the signing keys; only the leader may.
/// struct KeyRotator { term: Term }
/// impl Actor for KeyRotator {
///     type Context = Context<Self>;
///     fn stopping(&mut self, _: &mut Context<Self>) -> Running {
///         assert!(!self.term.is_active()); // stopped because the term ended
///         Running::Stop
///     }
/// }
///
/// # fn main() -> Result<(), dsync::Error> {
/// actix::System::new().block_on(async {
///     let d = Dsync::new(MemoryStore::new(), "pod-a")?;
///     let election = d.election("key-rotation")?;
///     let rotator = LeaderOnly::start(&election, |term| KeyRotator { term })?;
///     election.elected().await?;
///     let mut status = rotator.watch_status();
///     status.wait_for(|s| s.running).await.unwrap();
///     d.shutdown().await?; // stops the actor, then releases the lease
///     assert!(!rotator.status().running);
///     Ok(())
/// })
/// # }
/// ```
pub struct LeaderOnly<A: Actor> {
    addr: Arc<Mutex<Option<Addr<A>>>>,
    status: watch::Receiver<LeaderOnlyStatus>,
}

impl<A: Actor> Clone for LeaderOnly<A> {
    fn clone(&self) -> Self {
        LeaderOnly {
            addr: self.addr.clone(),
            status: self.status.clone(),
        }
    }
}

impl<A> LeaderOnly<A>
where
    A: Actor<Context = Context<A>>,
{
    /// Runs `factory(term)` as an actor during every term of `election`, with the default
    /// restart [`RestartBackoff`].
    pub fn start<F>(election: &Election, factory: F) -> Result<Self>
    where
        F: Fn(Term) -> A + Send + Sync + 'static,
    {
        Self::start_with(election, RestartBackoff::default(), factory)
    }

    /// Like [`start`](Self::start), with a chosen restart backoff.
    pub fn start_with<F>(election: &Election, backoff: RestartBackoff, factory: F) -> Result<Self>
    where
        F: Fn(Term) -> A + Send + Sync + 'static,
    {
        let (tx, rx) = watch::channel(LeaderOnlyStatus::default());
        let addr: Arc<Mutex<Option<Addr<A>>>> = Arc::default();
        let factory = Arc::new(factory);
        let (slot, tx) = (addr.clone(), Arc::new(tx));
        let lease = election.lease().to_string();
        let actor_id = election.actor_id();
        election.when_elected(move |term| {
            run_term(
                term,
                factory.clone(),
                backoff,
                slot.clone(),
                tx.clone(),
                lease.clone(),
                actor_id,
            )
        })?;
        Ok(LeaderOnly { addr, status: rx })
    }

    /// The running actor, while there is one.
    pub fn addr(&self) -> Option<Addr<A>> {
        lock(&self.addr).clone()
    }

    /// What it is doing now.
    pub fn status(&self) -> LeaderOnlyStatus {
        self.status.borrow().clone()
    }

    /// A receiver of every status change.
    pub fn watch_status(&self) -> watch::Receiver<LeaderOnlyStatus> {
        self.status.clone()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every update is a single assignment: a poisoned lock is still consistent.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One term: start the actor, restart it with a backoff while the term lives, and return only
/// once it has stopped after the term ended (so the election waits for it).
async fn run_term<A, F>(
    term: Term,
    factory: Arc<F>,
    backoff: RestartBackoff,
    slot: Arc<Mutex<Option<Addr<A>>>>,
    status: Arc<watch::Sender<LeaderOnlyStatus>>,
    lease: String,
    election: ActorId,
) where
    A: Actor<Context = Context<A>>,
    F: Fn(Term) -> A + Send + Sync + 'static,
{
    let mut failures = 0u32;
    while term.is_active() {
        let (alive_tx, alive_rx) = oneshot::channel::<()>();
        let actor_term = term.clone();
        let factory = factory.clone();
        // The actor is built by hand (as `Actor::create` would) so that its whole context runs
        // inside the election's work scope: a stop or shutdown it calls is recognised as
        // coming from the term's own work.
        let mut ctx = Context::<A>::new();
        // Held by the actor's context: dropped (and so reported) when the actor is gone.
        ctx.spawn(actix::fut::wrap_future(async move {
            let _alive = alive_tx;
            std::future::pending::<()>().await
        }));
        // The end of the term stops the actor.
        ctx.spawn(
            actix::fut::wrap_future::<_, A>(actor_term.cancelled_owned())
                .map(|(), _, ctx: &mut Context<A>| ctx.stop()),
        );
        let actor = factory(actor_term);
        let fut = ctx.into_future(actor);
        let addr = fut.address();
        actix::spawn(work::scope(election, fut));
        *lock(&slot) = Some(addr);
        status.send_modify(|s| {
            s.running = true;
            s.starts += 1;
            s.token = Some(term.fencing_token());
        });
        tracing::info!(lease = %lease, token = term.fencing_token(), "leader-only actor started");
        let _ = alive_rx.await; // the sender is dropped with the actor's context
        *lock(&slot) = None;
        status.send_modify(|s| s.running = false);
        if !term.is_active() {
            tracing::info!(lease = %lease, token = term.fencing_token(), "leader-only actor stopped with its term");
            break;
        }
        failures += 1;
        let delay = backoff.delay(failures);
        tracing::warn!(lease = %lease, ?delay, failures, "leader-only actor stopped while leader; restarting");
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = term.cancelled() => break,
        }
        status.send_modify(|s| s.restarts += 1);
    }
}
