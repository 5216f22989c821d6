//! Distributed locks: [`Lock`] handles on a lease actor with the lock face.
//!
//! One replica holds `<scope>.lock.<name>` at a time; inside a process, the lock actor queues its
//! local waiters first come, first served. A held lock is renewed, so it never expires under a
//! live holder; a crashed holder's lock frees after the lease duration. Every acquisition gets a
//! new [`Term`] with a higher fencing token; the term is cancelled if the lock is lost. The term
//! lifecycle (cancel, drain, release, stop) is the one every face shares; see [`crate::lease`].
//!
//! Ownership is per handle: the handle (or a clone of it) that locked is the one that may unlock.
//! When a handle holding the lock is dropped, its term is cancelled and the lease released.
//!
//! A lock actor lives while a handle of it does (or it holds, or a caller waits): when the last
//! handle is gone and nothing is held or awaited, it retires and frees everything it had (rule
//! `idle-actors-retire`; its token floor is kept: rule `token-never-back` holds).
//! Handles never outlive their actor, except after [`Lock::stop`]: asking
//! [`Dsync::lock`](crate::Dsync::lock) again then starts a new one.

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use actix::prelude::*;
use tokio::sync::{oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::task_tracker::TaskTrackerToken;

use crate::error::{Error, Result};
use crate::lease::actor::{FaceCommand, Internal, LeaseActor, Stop, StopOutcome};
use crate::lease::core::HandleClaim;
use crate::resource::{LeaseKind, Resource};
use crate::store::LeaseKey;
use crate::term::Term;
use crate::work::{self, ActorId};

mod face;

pub(crate) use face::LockFace;

/// Starts the lease actor of a lock or a semaphore slot (`kind`; the face's one registration
/// in [`Dsync`](crate::Dsync)): its status channel, its face, and the registry's entry, whose
/// handle is the [`LockShared`].
pub(crate) fn start_actor(
    arbiter: &actix::ArbiterHandle,
    params: crate::lease::actor::LeaseParams,
    kind: LeaseKind,
    config: &crate::config::Config,
) -> crate::supervisor::Entry {
    let key = params.key.clone();
    let handles = params.handles.clone();
    let (tx, rx) = watch::channel(LockStatus {
        lease: key.clone(),
        identity: config.identity.clone(),
        holder: None,
        term: None,
        waiters: 0,
        last_error: None,
        stopped: false,
    });
    let (addr, id) = crate::lease::actor::start(arbiter, params, LockFace::new(tx));
    let stopper = addr.clone().recipient();
    let shared = LockShared {
        kind,
        id,
        addr,
        status: rx,
    };
    crate::supervisor::Entry::new(id, key, kind, stopper, shared, handles)
}

type LockAddr = Addr<LeaseActor<LockFace>>;

fn next_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Who may unlock: one per handle (shared by its clones) and one per `with_lock` call. When the
/// last reference goes, the lock actor is told at once: a lock whose owner is gone can never be
/// unlocked, so its term is ended and the lease given back.
///
/// A handle's own owner also carries the handle's share of the actor's use
/// ([`HandleClaim`]): given back first, so when the actor hears that the owner is gone it
/// knows whether any handle is left, and retires if none is and it is idle (rule
/// `idle-actors-retire`).
pub(crate) struct Owner {
    id: u64,
    addr: LockAddr,
    claim: Option<HandleClaim>,
}

impl Owner {
    pub(crate) fn new(addr: &LockAddr) -> Arc<Self> {
        Arc::new(Owner {
            id: next_id(),
            addr: addr.clone(),
            claim: None,
        })
    }

    /// A handle's owner, keeping its actor in use until it is dropped.
    fn of_handle(addr: &LockAddr, claim: HandleClaim) -> Arc<Self> {
        Arc::new(Owner {
            id: next_id(),
            addr: addr.clone(),
            claim: Some(claim),
        })
    }

    /// What the lock actor knows this owner by.
    pub(crate) fn id(&self) -> u64 {
        self.id
    }
}

impl Drop for Owner {
    fn drop(&mut self) {
        drop(self.claim.take());
        self.addr
            .do_send(FaceCommand(LockCommand::OwnerGone { owner_id: self.id }));
    }
}

/// A granted lock on its way to the caller. If it is dropped before the caller takes it (the
/// caller's future was dropped: a `select!` took another branch, a timeout fired, a client
/// disconnected), the actor is told, and the lease is given back: a grant nobody received is
/// never kept.
pub(crate) struct Grant {
    term: Term,
    work: Option<TaskTrackerToken>,
    notify: Option<Recipient<Internal>>,
}

impl Grant {
    /// The caller has it.
    pub(crate) fn accept(mut self) -> (Term, Option<TaskTrackerToken>) {
        self.notify = None;
        (self.term.clone(), self.work.take())
    }

    /// It was never sent: nobody is to be told.
    fn disarm(mut self) {
        self.notify = None;
    }
}

impl Drop for Grant {
    fn drop(&mut self) {
        if let Some(notify) = self.notify.take() {
            notify.do_send(Internal::GrantDropped(self.term.id()));
        }
    }
}

/// A caller asking for the lock; queued by the lock face until it is answered.
pub(crate) struct Waiter {
    request: u64,
    owner_id: u64,
    owner: Weak<Owner>,
    /// `try_lock`: answered after the next fresh decision instead of waiting.
    try_only: bool,
    /// `with_lock`: the grant carries a work token, so the lease is released only after the
    /// body has returned.
    guarded: bool,
    reply: oneshot::Sender<Result<Grant>>,
}

pub(crate) enum LockCommand {
    Acquire(Waiter),
    /// The caller of `request` stopped waiting (its future was dropped).
    Abandon {
        request: u64,
    },
    Unlock {
        owner_id: u64,
        reply: oneshot::Sender<Result<()>>,
    },
    OwnerGone {
        owner_id: u64,
    },
}

/// Tells the actor when an acquisition's future is dropped before it was answered.
struct Pending<'a> {
    addr: &'a LockAddr,
    request: u64,
    answered: bool,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if !self.answered {
            self.addr.do_send(FaceCommand(LockCommand::Abandon {
                request: self.request,
            }));
        }
    }
}

/// A snapshot of a lock, published by its actor.
#[derive(Debug, Clone)]
pub struct LockStatus {
    /// The lock's lease.
    pub lease: LeaseKey,
    /// This replica's identity.
    pub identity: String,
    /// The holder recorded in the lease when last observed.
    pub holder: Option<String>,
    /// The term of the local holder, while this replica holds the lock.
    pub term: Option<Term>,
    /// Local callers waiting for the lock.
    pub waiters: usize,
    /// The latest store error, cleared by the next success.
    pub last_error: Option<String>,
    /// The lock actor has been stopped.
    pub stopped: bool,
}

/// What the registry keeps of a lock actor; every [`Lock`] handle is made from it.
#[derive(Clone)]
pub(crate) struct LockShared {
    /// A lock's, or a semaphore slot's (the same face on another lease name).
    pub kind: LeaseKind,
    pub id: ActorId,
    pub addr: LockAddr,
    pub status: watch::Receiver<LockStatus>,
}

/// What [`Lock::with_lock`] and [`Lock::with_try_lock`] fail with.
///
/// `?` turns it into a [`dsync::Error`](crate::Error) (a loss becomes [`Error::LockLost`],
/// dropping the output); match on it to keep the output of work that ran without the lock.
#[derive(Debug, thiserror::Error)]
pub enum WithLockError<T> {
    /// The lock could not be taken or given back (`f` may not have run).
    #[error(transparent)]
    Lock(#[from] Error),
    /// `f` ran to the end, but the lock may have been lost while it ran ([`Term::lost`]):
    /// another replica may have held it meanwhile, so `output` was computed without it.
    #[error("lock {lock} was lost while the guarded work ran (fencing token {fencing_token})")]
    Lost {
        /// `namespace/name` of the lock's lease.
        lock: String,
        /// The fencing token of the lost term: a store that checks tokens rejects `output`
        /// if a newer holder has written since.
        fencing_token: i32,
        /// What `f` returned.
        output: T,
    },
}

impl<T> WithLockError<T> {
    /// The output of work that ran to the end without the lock, if that is what happened.
    pub fn into_lost_output(self) -> Option<T> {
        match self {
            WithLockError::Lost { output, .. } => Some(output),
            WithLockError::Lock(_) => None,
        }
    }
}

impl<T> From<WithLockError<T>> for Error {
    fn from(err: WithLockError<T>) -> Self {
        match err {
            WithLockError::Lock(err) => err,
            WithLockError::Lost {
                lock,
                fencing_token,
                ..
            } => Error::LockLost {
                lock,
                fencing_token,
            },
        }
    }
}

/// A handle on one distributed lock. Cheap to clone; a clone is the same handle (it may unlock
/// what the original locked). Separate handles from [`Dsync::lock`](crate::Dsync::lock) exclude
/// each other like handles in different replicas.
///
/// A handle owns what it locks: when its last clone is dropped while it holds the lock, the
/// lock's term is cancelled and then the lease is released (keep the handle for as long as
/// you use the term).
#[derive(Clone)]
pub struct Lock {
    resource: Resource,
    shared: LockShared,
    owner: Arc<Owner>,
}

impl fmt::Debug for Lock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lock")
            .field("resource", &self.resource)
            .field("status", &*self.shared.status.borrow())
            .finish()
    }
}

impl Lock {
    /// A new handle on the actor of `shared`, keeping it in use by `claim` (taken from the
    /// registry) while the handle or a clone of it lives.
    pub(crate) fn new(resource: Resource, shared: LockShared, claim: HandleClaim) -> Self {
        let owner = Owner::of_handle(&shared.addr, claim);
        Lock {
            resource,
            shared,
            owner,
        }
    }

    /// The lock actor's address (a semaphore makes owners for its slots with it).
    pub(crate) fn addr(&self) -> &LockAddr {
        &self.shared.addr
    }

    /// The resource this lock is for.
    pub fn resource(&self) -> &Resource {
        &self.resource
    }

    /// The lock's lease.
    pub fn lease(&self) -> LeaseKey {
        self.shared.status.borrow().lease.clone()
    }

    /// The holder recorded in the lease when last observed.
    pub fn holder(&self) -> Option<String> {
        self.shared.status.borrow().holder.clone()
    }

    /// A snapshot of the lock's state.
    pub fn status(&self) -> LockStatus {
        self.shared.status.borrow().clone()
    }

    /// A receiver of status changes from now on (`changed()` waits for the next one).
    pub fn watch_status(&self) -> watch::Receiver<LockStatus> {
        let mut rx = self.shared.status.clone();
        rx.mark_unchanged();
        rx
    }

    /// Takes the lock if it is free now; [`Error::AlreadyLocked`] if anyone holds it (this
    /// handle included: locks are not reentrant) or local callers are already waiting for it.
    /// Reads the lease fresh from the store before deciding.
    pub async fn try_lock(&self) -> Result<Term> {
        let grant = self.acquire(&self.owner, true, false).await?;
        Ok(grant.accept().0)
    }

    /// Waits in line for the lock. Other replicas' holds are waited out: released at once,
    /// crashed holders after the lease duration. [`Error::AlreadyLocked`] if this handle holds
    /// it already (waiting for itself would never end).
    ///
    /// Dropping the returned future gives up the place in line; a lock granted to a future
    /// that is dropped before it returns (a `select!` that took another branch) is released.
    pub async fn lock(&self) -> Result<Term> {
        let grant = self.acquire(&self.owner, false, false).await?;
        Ok(grant.accept().0)
    }

    /// Like [`lock`](Self::lock), giving up with [`Error::Timeout`] after `timeout`.
    pub async fn lock_timeout(&self, timeout: Duration) -> Result<Term> {
        match tokio::time::timeout(timeout, self.lock()).await {
            Ok(result) => result,
            Err(_) => Err(Error::Timeout {
                operation: format!("lock {}", self.lease()),
                after: timeout,
            }),
        }
    }

    /// Like [`lock`](Self::lock), giving up with [`Error::Cancelled`] when `cancel` is
    /// cancelled. Cancelling after the lock was granted does not release it.
    pub async fn lock_with_cancel(&self, cancel: CancellationToken) -> Result<Term> {
        tokio::select! {
            biased;
            result = self.lock() => result,
            () = cancel.cancelled() => Err(Error::Cancelled {
                operation: format!("lock {}", self.lease()),
            }),
        }
    }

    /// Releases the lock held by this handle: cancels its term, then writes the release, so
    /// another replica can take the lock at once. Returns once the release is written.
    /// [`Error::NotLocked`] if nobody holds it, [`Error::NotLockHolder`] if someone else
    /// (another replica or handle) does.
    pub async fn unlock(&self) -> Result<()> {
        self.unlock_as(self.owner.id).await
    }

    /// Waits for the lock, runs `f` with the term, then unlocks. The term is cancelled if the
    /// lock is lost while `f` runs (`f` should then stop what it is doing).
    ///
    /// `f`'s output is `Ok` only if the lock was held, without a gap, until `f` returned. If
    /// the lock may have been lost meanwhile ([`Term::lost`]), the output was computed without
    /// it and may be unsafe to publish: it comes back in [`WithLockError::Lost`], for the
    /// caller to discard, or to publish to a store that checks the fencing token. With `?`
    /// into a [`dsync::Error`](crate::Error) a loss becomes [`Error::LockLost`] and the output
    /// is dropped. A stop, unlock or shutdown while `f` runs is not a loss: the lease is
    /// renewed until `f` returns.
    ///
    /// `f` is the term's guarded work: [`Lock::stop`] and [`Dsync::shutdown`](crate::Dsync::shutdown)
    /// cancel the term and wait for `f` to return (up to the drain timeout) before releasing
    /// the lease, and the lease is renewed meanwhile. If this future is dropped while `f` runs,
    /// `f` is dropped with it, and then the lease is released.
    pub async fn with_lock<F, Fut, T>(&self, f: F) -> Result<T, WithLockError<T>>
    where
        F: FnOnce(Term) -> Fut,
        Fut: Future<Output = T>,
    {
        let owner = Owner::new(&self.shared.addr);
        let grant = self.acquire(&owner, false, true).await?;
        self.run_then_unlock(&owner, grant, f).await
    }

    /// Like [`with_lock`](Self::with_lock) but fails with [`Error::AlreadyLocked`] instead of
    /// waiting (the Go package's `DoWithTryLock`).
    pub async fn with_try_lock<F, Fut, T>(&self, f: F) -> Result<T, WithLockError<T>>
    where
        F: FnOnce(Term) -> Fut,
        Fut: Future<Output = T>,
    {
        let owner = Owner::new(&self.shared.addr);
        let grant = self.acquire(&owner, true, true).await?;
        self.run_then_unlock(&owner, grant, f).await
    }

    pub(crate) async fn run_then_unlock<F, Fut, T>(
        &self,
        owner: &Arc<Owner>,
        grant: Grant,
        f: F,
    ) -> Result<T, WithLockError<T>>
    where
        F: FnOnce(Term) -> Fut,
        Fut: Future<Output = T>,
    {
        let (term, work) = grant.accept();
        let output = work::scope(self.shared.id, f(term.clone())).await;
        let lost = term.lost();
        drop(work); // the guarded work has returned
        let result = if !term.is_active() {
            // The lock was lost or stopped while `f` ran, and `f` was told through the term;
            // the lease is given back without us.
            Ok(())
        } else {
            match self.unlock_as(owner.id).await {
                // The lock was lost (or stopped) just after `f` returned.
                Err(
                    Error::NotLocked { .. } | Error::NotLockHolder { .. } | Error::Stopped { .. },
                ) if !term.is_active() => Ok(()),
                other => other,
            }
        };
        if lost {
            return Err(WithLockError::Lost {
                lock: self.lease().to_string(),
                fencing_token: term.fencing_token(),
                output,
            });
        }
        result.map(|()| output).map_err(WithLockError::Lock)
    }

    pub(crate) async fn acquire(
        &self,
        owner: &Arc<Owner>,
        try_only: bool,
        guarded: bool,
    ) -> Result<Grant> {
        let (reply, rx) = oneshot::channel();
        let request = next_id();
        self.send(LockCommand::Acquire(Waiter {
            request,
            owner_id: owner.id,
            owner: Arc::downgrade(owner),
            try_only,
            guarded,
            reply,
        }))?;
        let mut pending = Pending {
            addr: &self.shared.addr,
            request,
            answered: false,
        };
        let result = rx.await;
        pending.answered = true;
        result.map_err(|_| self.stopped_error())?
    }

    pub(crate) async fn unlock_as(&self, owner_id: u64) -> Result<()> {
        let (reply, rx) = oneshot::channel();
        self.send(LockCommand::Unlock { owner_id, reply })?;
        rx.await.map_err(|_| self.stopped_error())?
    }

    /// Stops the lock actor for every handle: fails waiters with [`Error::Stopped`], cancels
    /// the holder's term, waits for its `with_lock` body (up to the drain timeout; the lease is
    /// renewed meanwhile), then releases the lease. Idempotent. Errors as
    /// [`Election::stop`](crate::Election::stop).
    pub async fn stop(&self) -> Result<()> {
        let (reply, rx) = oneshot::channel();
        let stop = Stop {
            reply,
            from_work: work::inside(self.shared.id),
        };
        if self.shared.addr.send(stop).await.is_err() {
            return Ok(());
        }
        rx.await
            .unwrap_or(StopOutcome::Done)
            .into_result("lock", &self.lease())
    }

    fn send(&self, command: LockCommand) -> Result<()> {
        if self.shared.status.borrow().stopped || !self.shared.addr.connected() {
            return Err(self.stopped_error());
        }
        self.shared.addr.do_send(FaceCommand(command));
        Ok(())
    }

    fn stopped_error(&self) -> Error {
        Error::Stopped {
            what: format!("lock {}", self.shared.status.borrow().lease),
        }
    }
}

// The lock face plugs into the face-agnostic entry point [`Dsync`]: its factories live here, with
// the face, not in `dsync.rs`.
impl crate::Dsync {
    /// A new handle on the lock `name` in the configured namespace and scope.
    /// [`Error::BadResourceName`] if the name is not valid. Handles exclude each other, within
    /// this replica as across replicas.
    pub fn lock(&self, name: &str) -> Result<Lock> {
        self.lock_for(self.resource(name))
    }

    /// A lock handle for an explicit resource (an empty namespace means the configured one).
    pub fn lock_for(&self, resource: Resource) -> Result<Lock> {
        let (resource, key) = self.prepare(resource, LeaseKind::Lock)?;
        let (shared, claim) = self.lock_actor(&key, LeaseKind::Lock)?;
        Ok(Lock::new(resource, shared, claim))
    }

    /// The lock-face lease actor of `key` (a lock's, or a semaphore slot's), started if there
    /// is none (or it retired), with a share of its use for one handle: it does not retire
    /// while the claim lives (rule `idle-actors-retire`).
    pub(crate) fn lock_actor(
        &self,
        key: &LeaseKey,
        kind: LeaseKind,
    ) -> Result<(LockShared, HandleClaim)> {
        let inner = &self.inner;
        let (entry, claim) = inner
            .registry
            .entry_claimed(key, |predecessor| {
                let params = self.params(key, predecessor);
                crate::lock::start_actor(&inner.arbiter, params, kind, &inner.config)
            })
            .ok_or_else(|| self.stopped())?;
        let shared = entry
            .handle::<LockShared>()
            .filter(|shared| shared.kind == kind)
            .ok_or_else(|| self.taken(key, entry.lease_kind()))?;
        Ok((shared, claim))
    }
}
