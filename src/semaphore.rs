//! Distributed semaphores: at most `n` holders at a time across every replica.
//!
//! A semaphore of `n` permits is `n` Leases, one per *slot*: `<scope>.semaphore.<name>.<i>` for
//! `i` in `0..n`, in the configured namespace. Each slot is held exactly like a [`Lock`]: by a
//! lease actor with the lock face, so everything about a held slot is the lock's, written once in
//! the lease actor: a [`Permit`] carries the slot's [`Term`] (cancelled if the slot is lost, with
//! the slot's fencing token, renewed while held, ended before the slot's Lease is given up); a
//! crashed holder's slot frees after the lease duration; a dropped permit, or a permit granted to
//! a caller that went away, gives its slot back at once. The semaphore adds only what is its own:
//! asking every slot at once and keeping the first grant.
//!
//! * [`Semaphore::try_acquire`] tries the slots one after the other (each on a fresh read, as
//!   [`Lock::try_lock`]), starting one slot further on each call, and fails with
//!   [`Error::NoFreeSlot`], listing each slot's holder, if none is free.
//! * [`Semaphore::acquire`] first takes a slot that looks free in the replica's view and that
//!   no local caller waits for: one read and **one write** per grant in the common case,
//!   trying the free-looking slots from a random one so that replicas spread over the slots,
//!   moving on only if the slot was taken meanwhile. Only when none is free does it queue on
//!   **every** slot at once and keep the first grant; its
//!   places in the other slots' queues are given up at once, and a grant that came at the same
//!   moment is given back (its Lease released) at once. Every slot's Lease is in the replica's
//!   one shared watch: a released slot is taken as soon as the release is seen, without polling.
//!
//! # Fairness
//!
//! * **Within a replica**, callers of `acquire` (and `with_permit`) are served first come,
//!   first served: each slot's lease actor queues its local callers in order, and every caller
//!   queues on every slot, so whichever slot frees first goes to the longest-waiting caller.
//!   `try_acquire` never takes a slot that local callers are waiting for.
//! * **Across replicas** there is no order: a freed slot goes to whichever replica's
//!   compare-and-swap lands first (every waiting replica sees the release through its watch at
//!   about the same moment), an expired one to whichever sees it expire first. The protocol
//!   favours no replica, but guarantees none a turn: under sustained contention a replica can
//!   lose every race. (As with locks: dsync gives no cross-replica FIFO.)
//!
//! # Changing the number of permits
//!
//! `n` is not stored anywhere: each replica's handle uses the slots `0..n` it was created with.
//! When a deployment changes `n`, replicas of both versions run side by side for a while:
//!
//! * **raising** `n` from 3 to 5 adds slots 3 and 4, used by the new replicas only: until the
//!   old ones are gone, up to 5 callers may hold permits (3 of them in slots the old replicas
//!   also use);
//! * **lowering** `n` from 5 to 3: holders of slots 3 and 4 keep them until they release (or
//!   crash and their lease expires); new acquisitions by the new replicas use slots 0..3 only.
//!   The bound of 3 holds once the old holders are gone.
//!
//! So during a rollout the bound is the larger of the two; roll out a lower `n` (then wait for
//! the old permits to be released) before relying on it. Slot Leases above `n` are left in the
//! store, free (leases are never deleted, so their fencing tokens keep increasing if the slots
//! are used again).

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::StreamExt;
use futures::future::join_all;
use futures::stream::FuturesUnordered;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use crate::lock::{Grant, Lock, LockStatus, Owner, WithLockError};
use crate::metrics::SemaphoreMetrics;
use crate::resource::Resource;
use crate::store::LeaseKey;
use crate::term::Term;

/// The most permits a semaphore may have: each is a Lease and a lease actor that renews it
/// while held and campaigns for it while callers wait.
pub const MAX_PERMITS: usize = 1024;

struct Inner {
    resource: Resource,
    /// `namespace/<scope>.semaphore.<name>`: the slots' common prefix.
    prefix: LeaseKey,
    /// One lock-face lease actor per slot, in slot order.
    slots: Vec<Lock>,
    metrics: SemaphoreMetrics,
    /// Where the next `try_acquire` starts.
    next: AtomicUsize,
}

/// A handle on one distributed semaphore ([`Dsync::semaphore`](crate::Dsync::semaphore)).
/// Cheap to clone. See the [module docs](self) for the storage, fairness, and what changing
/// the number of permits does.
#[derive(Clone)]
#[must_use = "a semaphore handle does nothing until a permit is asked for"]
pub struct Semaphore {
    inner: Arc<Inner>,
}

impl fmt::Debug for Semaphore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Semaphore")
            .field("semaphore", &self.inner.prefix)
            .field("permits", &self.inner.slots.len())
            .field("holders", &self.holders())
            .finish()
    }
}

/// One more caller waiting, for the metrics, while it lives.
struct WaitingGuard<'a>(&'a SemaphoreMetrics);

impl<'a> WaitingGuard<'a> {
    fn new(metrics: &'a SemaphoreMetrics) -> Self {
        metrics.waiting(1);
        WaitingGuard(metrics)
    }
}

impl Drop for WaitingGuard<'_> {
    fn drop(&mut self) {
        self.0.waiting(-1);
    }
}

/// One more permit held, for the metrics, while it lives.
struct HeldGuard(SemaphoreMetrics);

impl HeldGuard {
    fn new(metrics: &SemaphoreMetrics) -> Self {
        metrics.acquired();
        metrics.held(1);
        HeldGuard(metrics.clone())
    }
}

impl Drop for HeldGuard {
    fn drop(&mut self) {
        self.0.held(-1);
    }
}

/// A held permit: one slot of a [`Semaphore`], with the slot's [`Term`].
///
/// Give it back with [`release`](Self::release) (which returns once the release is written);
/// dropping it gives it back too, without waiting: its term is cancelled, then the slot's Lease
/// is released. While held, the slot's Lease is renewed; if it is lost anyway (the store
/// unreachable past the renew deadline), the term is cancelled.
#[must_use = "dropping a permit releases it at once"]
pub struct Permit {
    slot: usize,
    lock: Lock,
    /// Dropping it ends the hold (the lock face's owner of this slot's term).
    owner: Arc<Owner>,
    term: Term,
    _held: HeldGuard,
}

impl fmt::Debug for Permit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permit")
            .field("lease", &self.lock.lease())
            .field("slot", &self.slot)
            .field("term", &self.term)
            .finish()
    }
}

impl Permit {
    /// The permit's term: cancelled when the permit is released or lost.
    pub fn term(&self) -> &Term {
        &self.term
    }

    /// Which slot (`0..n`) the permit holds.
    pub fn slot(&self) -> usize {
        self.slot
    }

    /// The slot's Lease (`<scope>.semaphore.<name>.<slot>`).
    pub fn lease(&self) -> LeaseKey {
        self.lock.lease()
    }

    /// The fencing token of the term: strictly increasing per slot (not across slots; fence
    /// on the pair (slot, token)).
    pub fn fencing_token(&self) -> i32 {
        self.term.fencing_token()
    }

    /// Whether the permit is still held ([`Term::is_active`]).
    pub fn is_active(&self) -> bool {
        self.term.is_active()
    }

    /// Gives the permit back: cancels its term, then writes the release of the slot's Lease,
    /// so a waiter (here or in another replica) takes the slot at once. Returns once the
    /// release is written. If the slot was lost meanwhile: [`Error::NotLockHolder`] (another
    /// holder took it) or [`Error::NotLocked`] (nobody holds it).
    pub async fn release(self) -> Result<()> {
        self.lock.unlock_as(self.owner.id()).await
    }
}

impl Semaphore {
    pub(crate) fn new(
        resource: Resource,
        prefix: LeaseKey,
        slots: Vec<Lock>,
        metrics: SemaphoreMetrics,
    ) -> Self {
        Semaphore {
            inner: Arc::new(Inner {
                resource,
                prefix,
                slots,
                metrics,
                next: AtomicUsize::new(0),
            }),
        }
    }

    /// The resource this semaphore is for.
    pub fn resource(&self) -> &Resource {
        &self.inner.resource
    }

    /// `namespace/<scope>.semaphore.<name>`: the common prefix of the slots' Leases (not a
    /// Lease itself).
    pub fn name(&self) -> &LeaseKey {
        &self.inner.prefix
    }

    /// The number of permits (slots) this handle uses.
    pub fn permits(&self) -> usize {
        self.inner.slots.len()
    }

    /// The slots' Leases, in slot order.
    pub fn slots(&self) -> Vec<LeaseKey> {
        self.inner.slots.iter().map(Lock::lease).collect()
    }

    /// Each slot's holder as last observed (`None`: free), in slot order. Read from the slot
    /// actors' published state; no request.
    pub fn holders(&self) -> Vec<Option<String>> {
        self.inner.slots.iter().map(Lock::holder).collect()
    }

    /// A snapshot of slot `slot`'s lease actor (holder, local waiters, the local term), or
    /// `None` if `slot >= permits()`.
    pub fn slot_status(&self, slot: usize) -> Option<LockStatus> {
        self.inner.slots.get(slot).map(Lock::status)
    }

    /// A receiver of slot `slot`'s status changes from now on, or `None` if
    /// `slot >= permits()`.
    pub fn watch_slot(&self, slot: usize) -> Option<watch::Receiver<LockStatus>> {
        self.inner.slots.get(slot).map(Lock::watch_status)
    }

    /// Takes a free slot now, or fails with [`Error::NoFreeSlot`] listing each slot's holder.
    /// Tries the slots one after the other, each on a fresh read of its Lease (as
    /// [`Lock::try_lock`]), starting one slot further on each call. A slot that this replica's
    /// callers are waiting for is not free: `try_acquire` does not jump the local line.
    pub async fn try_acquire(&self) -> Result<Permit> {
        let (slot, owner, grant) = self.try_any(false).await?;
        Ok(self.permit(slot, owner, grant))
    }

    /// Waits for a permit. A slot that looks free (and that no local caller waits for) is
    /// taken with one write, trying the free-looking slots from a random one; if none is free,
    /// it queues on every slot at once and keeps the first slot granted.
    /// Other replicas' permits are waited out: released ones at once, crashed holders' after
    /// the lease duration. This replica's callers are served first come, first served.
    ///
    /// Dropping the returned future gives up every place in line; a slot granted to a future
    /// that is dropped before it returns is released at once.
    pub async fn acquire(&self) -> Result<Permit> {
        let (slot, owner, grant) = self.wait_any(false).await?;
        Ok(self.permit(slot, owner, grant))
    }

    /// Like [`acquire`](Self::acquire), giving up with [`Error::Timeout`] after `timeout`.
    pub async fn acquire_timeout(&self, timeout: Duration) -> Result<Permit> {
        match tokio::time::timeout(timeout, self.acquire()).await {
            Ok(result) => result,
            Err(_) => Err(Error::Timeout {
                operation: format!("acquire semaphore {}", self.inner.prefix),
                after: timeout,
            }),
        }
    }

    /// Like [`acquire`](Self::acquire), giving up with [`Error::Cancelled`] when `cancel` is
    /// cancelled. Cancelling after the permit was granted does not release it.
    pub async fn acquire_with_cancel(&self, cancel: CancellationToken) -> Result<Permit> {
        tokio::select! {
            biased;
            result = self.acquire() => result,
            () = cancel.cancelled() => Err(Error::Cancelled {
                operation: format!("acquire semaphore {}", self.inner.prefix),
            }),
        }
    }

    /// Waits for a permit, runs `f` with its term, then releases the permit: the semaphore's
    /// [`Lock::with_lock`], with the same guarantees. `f` is the term's guarded work (a stop
    /// or shutdown cancels the term and waits for `f` before releasing the slot; the slot is
    /// renewed meanwhile). If the slot may have been lost while `f` ran, `f`'s output comes
    /// back in [`WithLockError::Lost`] (naming the slot's Lease) instead of `Ok`.
    pub async fn with_permit<F, Fut, T>(&self, f: F) -> Result<T, WithLockError<T>>
    where
        F: FnOnce(Term) -> Fut,
        Fut: Future<Output = T>,
    {
        let (slot, owner, grant) = self.wait_any(true).await?;
        let _held = HeldGuard::new(&self.inner.metrics);
        self.inner.slots[slot]
            .run_then_unlock(&owner, grant, f)
            .await
    }

    /// Like [`with_permit`](Self::with_permit) but fails with [`Error::NoFreeSlot`] instead of
    /// waiting.
    pub async fn with_try_permit<F, Fut, T>(&self, f: F) -> Result<T, WithLockError<T>>
    where
        F: FnOnce(Term) -> Fut,
        Fut: Future<Output = T>,
    {
        let (slot, owner, grant) = self.try_any(true).await?;
        let _held = HeldGuard::new(&self.inner.metrics);
        self.inner.slots[slot]
            .run_then_unlock(&owner, grant, f)
            .await
    }

    /// Stops the slots' lease actors for every handle (each as [`Lock::stop`]: waiters fail
    /// with [`Error::Stopped`], held permits' terms are cancelled, `with_permit` bodies are
    /// waited for, then the slots are released). Returns the first error.
    pub async fn stop(&self) -> Result<()> {
        let results = join_all(self.inner.slots.iter().map(Lock::stop)).await;
        results.into_iter().find(Result::is_err).unwrap_or(Ok(()))
    }

    fn permit(&self, slot: usize, owner: Arc<Owner>, grant: Grant) -> Permit {
        let (term, _work) = grant.accept();
        Permit {
            slot,
            lock: self.inner.slots[slot].clone(),
            owner,
            term,
            _held: HeldGuard::new(&self.inner.metrics),
        }
    }

    /// Tries each slot once, in turn; the first free one is taken.
    async fn try_any(&self, guarded: bool) -> Result<(usize, Arc<Owner>, Grant)> {
        let slots = &self.inner.slots;
        let start = self.inner.next.fetch_add(1, Ordering::Relaxed) % slots.len();
        let mut holders = Vec::new();
        for k in 0..slots.len() {
            let slot = (start + k) % slots.len();
            let lock = &slots[slot];
            let owner = Owner::new(lock.addr());
            match lock.acquire(&owner, true, guarded).await {
                Ok(grant) => return Ok((slot, owner, grant)),
                Err(Error::AlreadyLocked { holder, .. }) => holders.push((slot, holder)),
                Err(error) => return Err(error),
            }
        }
        holders.sort();
        Err(Error::NoFreeSlot {
            semaphore: self.inner.prefix.to_string(),
            holders,
        })
    }

    /// The common case, one write: tries the slots that look free in this replica's view (its
    /// shared watch) and that no local caller waits for, one at a time from a random slot (so
    /// that replicas do not all go for slot 0), each on a fresh read, moving on only when it
    /// was taken meanwhile. `None` if none was free: then the caller queues.
    async fn take_a_free_one(&self, guarded: bool) -> Result<Option<(usize, Arc<Owner>, Grant)>> {
        let slots = &self.inner.slots;
        let start = (uuid::Uuid::new_v4().as_u128() % slots.len() as u128) as usize;
        for k in 0..slots.len() {
            let slot = (start + k) % slots.len();
            let lock = &slots[slot];
            let status = lock.status();
            // Local callers in line are served first: a slot they wait for is not ours, and
            // every waiting caller waits for every slot.
            if status.holder.is_some() || status.waiters > 0 || status.stopped {
                continue;
            }
            let owner = Owner::new(lock.addr());
            match lock.acquire(&owner, true, guarded).await {
                Ok(grant) => return Ok(Some((slot, owner, grant))),
                Err(Error::AlreadyLocked { .. }) => continue,
                // A try is one attempt; `acquire` waits. A failure that a later attempt may
                // not meet (a timeout, a 503, a conflict, a reply lost after the write landed)
                // sends the caller to the queue, where each slot's lease actor retries on its
                // own backoff and finds out whether the write took: it must not fail a call
                // that is meant to wait.
                Err(error) if worth_waiting(&error) => return Ok(None),
                Err(error) => return Err(error),
            }
        }
        Ok(None)
    }

    /// Takes a slot that looks free, with one write (`take_a_free_one`); if none is, queues
    /// on every slot at once and the first grant wins. The other requests are dropped
    /// with the losing futures: their places in line are given up (and their owners' drop
    /// tells the slot actors), and a grant among them that was already sent is given back.
    async fn wait_any(&self, guarded: bool) -> Result<(usize, Arc<Owner>, Grant)> {
        if let Some(taken) = self.take_a_free_one(guarded).await? {
            return Ok(taken);
        }
        let _waiting = WaitingGuard::new(&self.inner.metrics);
        let mut pending: FuturesUnordered<_> = self
            .inner
            .slots
            .iter()
            .enumerate()
            .map(|(slot, lock)| {
                let owner = Owner::new(lock.addr());
                async move {
                    let result = lock.acquire(&owner, false, guarded).await;
                    (slot, owner, result)
                }
            })
            .collect();
        match pending.next().await {
            Some((slot, owner, Ok(grant))) => Ok((slot, owner, grant)),
            // A slot that cannot be waited for (stopped, restarted, forbidden) fails the
            // acquisition, as it would fail a lock: the caller decides whether to ask again.
            Some((_, _, Err(error))) => Err(error),
            None => Err(Error::Stopped {
                what: format!("semaphore {}", self.inner.prefix),
            }),
        }
    }
}

/// Whether a failed try on a slot is worth waiting out (transient, or a race a re-read
/// settles) rather than an answer for the caller (stopped, forbidden, bad configuration).
fn worth_waiting(error: &Error) -> bool {
    match error {
        Error::Timeout { .. } => true,
        Error::Store { source, .. } => {
            source.is_transient() || matches!(source, crate::StoreError::Conflict { .. })
        }
        _ => false,
    }
}

// The semaphore face plugs into the face-agnostic entry point [`Dsync`]: its factories live here, with
// the face, not in `dsync.rs`.
impl crate::Dsync {
    /// A handle on the semaphore `name` of `permits` permits, in the configured namespace and
    /// scope: at most `permits` holders at a time across every replica, one Lease per permit
    /// (`<scope>.semaphore.<name>.<i>`, `i` in `0..permits`); see [`semaphore`](crate::semaphore).
    ///
    /// [`Error::BadPermitCount`] if `permits` is 0 or above
    /// [`MAX_PERMITS`](crate::semaphore::MAX_PERMITS), [`Error::BadResourceName`] if a slot's
    /// Lease name would not be a valid object name (too long, bad characters), both before
    /// anything is started. Handles exclude each other within this replica as across replicas;
    /// replicas that ask for different `permits` share the slots they have in common (see
    /// [Changing the number of permits](crate::semaphore#changing-the-number-of-permits)).
    pub fn semaphore(&self, name: &str, permits: usize) -> Result<Semaphore> {
        self.semaphore_for(self.resource(name), permits)
    }

    /// A semaphore handle for an explicit resource (an empty namespace means the configured
    /// one); see [`semaphore`](Self::semaphore).
    pub fn semaphore_for(&self, resource: Resource, permits: usize) -> Result<Semaphore> {
        let resource = self.prepare_with(resource, |r| {
            if permits == 0 || permits > MAX_PERMITS {
                return Err(Error::BadPermitCount {
                    semaphore: r
                        .lease_key(crate::resource::LeaseKind::Semaphore)
                        .to_string(),
                    permits,
                    max: MAX_PERMITS,
                });
            }
            r.validate_semaphore(permits)
                .map_err(|e| crate::dsync::bad_name(r, e))
        })?;
        let prefix = resource.lease_key(crate::resource::LeaseKind::Semaphore);
        let slots = (0..permits)
            .map(|slot| {
                let key = resource.semaphore_slot_key(slot);
                let (shared, claim) =
                    self.lock_actor(&key, crate::resource::LeaseKind::Semaphore)?;
                Ok(Lock::new(resource.clone(), shared, claim))
            })
            .collect::<Result<Vec<_>>>()?;
        #[cfg(feature = "metrics")]
        let metrics = self
            .inner
            .metrics
            .get()
            .map(|m| m.semaphore(&prefix))
            .unwrap_or_default();
        #[cfg(not(feature = "metrics"))]
        let metrics = crate::metrics::SemaphoreMetrics;
        Ok(Semaphore::new(resource, prefix, slots, metrics))
    }
}
