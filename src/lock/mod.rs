//! Distributed locks: [`Lock`] handles on a [`LockActor`].
//!
//! One replica holds `<scope>.lock.<name>` at a time; inside a process, the lock actor queues its
//! local waiters first come, first served. A held lock is renewed, so it never expires under a
//! live holder; a crashed holder's lock frees after the lease duration. Every acquisition gets a
//! new [`Term`] with a higher fencing token; the term is cancelled if the lock is lost.
//!
//! Ownership is per handle: the handle (or a clone of it) that locked is the one that may unlock.
//! A lock whose handle is dropped is released at the next renewal.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use actix::prelude::*;
use tokio::sync::{oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use crate::resource::Resource;
use crate::store::LeaseKey;
use crate::term::Term;

mod actor;

pub use actor::LockActor;

/// Who may unlock: one per handle (shared by its clones) and one per `with_lock` call.
#[derive(Debug)]
pub(crate) struct Owner {
    id: u64,
}

impl Owner {
    fn new() -> Arc<Self> {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        Arc::new(Owner {
            id: NEXT.fetch_add(1, Ordering::Relaxed),
        })
    }
}

/// How long an acquisition may wait.
pub(crate) enum Wait {
    /// Fail at once with [`Error::AlreadyLocked`] if held.
    No,
    /// Wait in line, up to an optional timeout, until an optional token is cancelled.
    Yes {
        timeout: Option<Duration>,
        cancel: Option<CancellationToken>,
    },
}

#[derive(Message)]
#[rtype(result = "()")]
pub(crate) enum LockCommand {
    Acquire {
        owner_id: u64,
        owner: std::sync::Weak<Owner>,
        wait: Wait,
        reply: oneshot::Sender<Result<Term>>,
    },
    Unlock {
        owner_id: u64,
        reply: oneshot::Sender<Result<()>>,
    },
    Stop(oneshot::Sender<()>),
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

/// A handle on one distributed lock. Cheap to clone; a clone is the same handle (it may unlock
/// what the original locked). Separate handles from [`Dsync::lock`](crate::Dsync::lock) exclude
/// each other like handles in different replicas.
#[derive(Clone)]
pub struct Lock {
    resource: Resource,
    addr: Addr<LockActor>,
    owner: Arc<Owner>,
    status: watch::Receiver<LockStatus>,
}

impl fmt::Debug for Lock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lock")
            .field("resource", &self.resource)
            .field("status", &*self.status.borrow())
            .finish()
    }
}

impl Lock {
    pub(crate) fn new(
        resource: Resource,
        addr: Addr<LockActor>,
        status: watch::Receiver<LockStatus>,
    ) -> Self {
        Lock {
            resource,
            addr,
            owner: Owner::new(),
            status,
        }
    }

    /// The resource this lock is for.
    pub fn resource(&self) -> &Resource {
        &self.resource
    }

    /// The lock's lease.
    pub fn lease(&self) -> LeaseKey {
        self.status.borrow().lease.clone()
    }

    /// The holder recorded in the lease when last observed.
    pub fn holder(&self) -> Option<String> {
        self.status.borrow().holder.clone()
    }

    /// A snapshot of the lock's state.
    pub fn status(&self) -> LockStatus {
        self.status.borrow().clone()
    }

    /// A receiver of status changes from now on (`changed()` waits for the next one).
    pub fn watch_status(&self) -> watch::Receiver<LockStatus> {
        let mut rx = self.status.clone();
        rx.mark_unchanged();
        rx
    }

    /// Takes the lock if it is free now; [`Error::AlreadyLocked`] if anyone holds it (this
    /// handle included: locks are not reentrant) or local callers are already waiting for it.
    /// Reads the lease fresh from the store before deciding.
    pub async fn try_lock(&self) -> Result<Term> {
        self.acquire(&self.owner, Wait::No).await
    }

    /// Waits in line for the lock. Other replicas' holds are waited out: released at once,
    /// crashed holders after the lease duration.
    pub async fn lock(&self) -> Result<Term> {
        self.acquire(
            &self.owner,
            Wait::Yes {
                timeout: None,
                cancel: None,
            },
        )
        .await
    }

    /// Like [`lock`](Self::lock), giving up with [`Error::Timeout`] after `timeout`.
    pub async fn lock_timeout(&self, timeout: Duration) -> Result<Term> {
        self.acquire(
            &self.owner,
            Wait::Yes {
                timeout: Some(timeout),
                cancel: None,
            },
        )
        .await
    }

    /// Like [`lock`](Self::lock), giving up with [`Error::Cancelled`] when `cancel` is
    /// cancelled. Cancelling after the lock was granted does not release it.
    pub async fn lock_with_cancel(&self, cancel: CancellationToken) -> Result<Term> {
        self.acquire(
            &self.owner,
            Wait::Yes {
                timeout: None,
                cancel: Some(cancel),
            },
        )
        .await
    }

    /// Releases the lock held by this handle. [`Error::NotLocked`] if nobody holds it,
    /// [`Error::NotLockHolder`] if someone else (another replica or handle) does. Returns once
    /// the release is written, so another replica can take the lock at once.
    pub async fn unlock(&self) -> Result<()> {
        self.unlock_as(self.owner.id).await
    }

    /// Waits for the lock, runs `f` with the term, then unlocks. The term is cancelled if the
    /// lock is lost while `f` runs (`f` should then stop what it is doing); `f`'s output is
    /// returned either way. If this future is dropped while `f` runs, the lock is released at
    /// the next renewal.
    pub async fn with_lock<F, Fut, T>(&self, f: F) -> Result<T>
    where
        F: FnOnce(Term) -> Fut,
        Fut: Future<Output = T>,
    {
        let owner = Owner::new();
        let term = self
            .acquire(
                &owner,
                Wait::Yes {
                    timeout: None,
                    cancel: None,
                },
            )
            .await?;
        self.run_then_unlock(&owner, term, f).await
    }

    /// Like [`with_lock`](Self::with_lock) but fails with [`Error::AlreadyLocked`] instead of
    /// waiting (the seed's `DoWithTryLock`).
    pub async fn with_try_lock<F, Fut, T>(&self, f: F) -> Result<T>
    where
        F: FnOnce(Term) -> Fut,
        Fut: Future<Output = T>,
    {
        let owner = Owner::new();
        let term = self.acquire(&owner, Wait::No).await?;
        self.run_then_unlock(&owner, term, f).await
    }

    async fn run_then_unlock<F, Fut, T>(&self, owner: &Arc<Owner>, term: Term, f: F) -> Result<T>
    where
        F: FnOnce(Term) -> Fut,
        Fut: Future<Output = T>,
    {
        let output = f(term.clone()).await;
        if !term.is_active() {
            // The lock was lost (or stopped) while `f` ran, and `f` was told through the
            // term: there is nothing left to unlock.
            return Ok(output);
        }
        match self.unlock_as(owner.id).await {
            Ok(()) => Ok(output),
            // The lock was lost while `f` ran; `f` was told through the term.
            Err(Error::NotLocked { .. } | Error::NotLockHolder { .. }) if !term.is_active() => {
                Ok(output)
            }
            Err(err) => Err(err),
        }
    }

    async fn acquire(&self, owner: &Arc<Owner>, wait: Wait) -> Result<Term> {
        let (reply, rx) = oneshot::channel();
        self.send(LockCommand::Acquire {
            owner_id: owner.id,
            owner: Arc::downgrade(owner),
            wait,
            reply,
        })?;
        rx.await.map_err(|_| self.stopped_error())?
    }

    async fn unlock_as(&self, owner_id: u64) -> Result<()> {
        let (reply, rx) = oneshot::channel();
        self.send(LockCommand::Unlock { owner_id, reply })?;
        rx.await.map_err(|_| self.stopped_error())?
    }

    /// Stops the lock actor for every handle: cancels the holder's term, fails waiters with
    /// [`Error::Stopped`], releases the lease. Idempotent.
    pub async fn stop(&self) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        if self.addr.send(LockCommand::Stop(tx)).await.is_err() {
            return Ok(());
        }
        let _ = rx.await;
        Ok(())
    }

    fn send(&self, command: LockCommand) -> Result<()> {
        if self.status.borrow().stopped || !self.addr.connected() {
            return Err(self.stopped_error());
        }
        self.addr.do_send(command);
        Ok(())
    }

    fn stopped_error(&self) -> Error {
        Error::Stopped {
            what: format!("lock {}", self.status.borrow().lease),
        }
    }
}
