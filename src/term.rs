//! `Term`: one continuous period of leadership or lock ownership.
//!
//! A term carries the lease's fencing token, a cancellation token and a **validity deadline** of
//! its own. It ends the moment this replica can no longer be sure it holds the lease (renewal
//! failed until the renew deadline, someone else took over, `stop`/`unlock`/shutdown), so work
//! guarded by a term should stop when [`Term::cancelled`] completes, and writes to external
//! systems should carry [`Term::fencing_token`] so that a stale holder's late writes can be
//! rejected there.
//!
//! The deadline is why a term cannot outlive its lease even when nothing runs to cancel it: it
//! is the renew deadline of the last successful renewal (`renewed_at + renew_deadline`), moved
//! forward by each renewal, and [`Term::is_active`] and [`Term::cancelled`] honour it on their
//! own. A thread that was blocked for longer than the lease therefore reads `false` when it
//! wakes up, even if the lease actor never got to run.

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tokio_util::task::task_tracker::TaskTrackerToken;

use crate::store::LeaseKey;

/// Local monotonic "now", as tokio sees it (so paused-time tests control it; outside a runtime
/// it is the system's monotonic clock).
pub(crate) fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// Process-unique id of a term, to match [`Deposed`](crate::Deposed) with
/// [`Elected`](crate::Elected).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TermId(u64);

impl TermId {
    fn next() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        TermId(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

impl fmt::Display for TermId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

struct Inner {
    id: TermId,
    lease: LeaseKey,
    holder: String,
    fencing_token: i32,
    /// The Lease object's `metadata.uid` when the term was granted (see [`Term::fence`]).
    lease_uid: OnceLock<String>,
    started: SystemTime,
    cancel: CancellationToken,
    /// `valid_until` is stored as nanoseconds after this instant, so it fits an atomic.
    base: Instant,
    valid_until: AtomicU64,
    /// Set when the lease may have been lost during the term (see [`Term::lost`]).
    lost: AtomicBool,
    /// When the term stopped being active (see [`Term::ended_at`]); set before `cancel` fires.
    ended_at: OnceLock<Instant>,
    /// The work the term guards (`when_elected` futures, `with_lock` bodies): the lease is
    /// released only once all of it has returned.
    work: TaskTracker,
}

/// A leadership or lock term. Cheap to clone; all clones share one cancellation and one
/// deadline.
#[derive(Clone)]
pub struct Term {
    inner: Arc<Inner>,
}

impl fmt::Debug for Term {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Term")
            .field("id", &self.inner.id)
            .field("lease", &self.inner.lease.to_string())
            .field("holder", &self.inner.holder)
            .field("fencing_token", &self.inner.fencing_token)
            .field("active", &self.is_active())
            .finish()
    }
}

impl Term {
    /// A new, active term valid until `valid_until`.
    pub(crate) fn new(
        lease: LeaseKey,
        holder: String,
        fencing_token: i32,
        valid_until: Instant,
    ) -> Self {
        let base = now();
        let term = Term {
            inner: Arc::new(Inner {
                id: TermId::next(),
                lease,
                holder,
                fencing_token,
                lease_uid: OnceLock::new(),
                started: SystemTime::now(),
                cancel: CancellationToken::new(),
                base,
                valid_until: AtomicU64::new(0),
                lost: AtomicBool::new(false),
                ended_at: OnceLock::new(),
                work: TaskTracker::new(),
            }),
        };
        term.store_deadline(valid_until);
        term
    }

    /// This term, of the Lease object with `uid` (from the store's answer to the write that
    /// granted it; `None` from a store without uids).
    pub(crate) fn with_lease_uid(self, uid: Option<String>) -> Self {
        if let Some(uid) = uid {
            let _ = self.inner.lease_uid.set(uid);
        }
        self
    }

    fn store_deadline(&self, until: Instant) {
        let nanos = until
            .saturating_duration_since(self.inner.base)
            .as_nanos()
            .min(u64::MAX as u128) as u64;
        self.inner.valid_until.store(nanos, Ordering::Release);
    }

    /// Process-unique id of this term.
    pub fn id(&self) -> TermId {
        self.inner.id
    }

    /// The lease this term holds.
    pub fn lease(&self) -> &LeaseKey {
        &self.inner.lease
    }

    /// The holder identity (this replica).
    pub fn holder(&self) -> &str {
        &self.inner.holder
    }

    /// The lease's `leaseTransitions` when this term began. Strictly greater than the token of
    /// every earlier term of the same lease, so external systems can reject stale writers.
    pub fn fencing_token(&self) -> i32 {
        self.inner.fencing_token
    }

    /// The Lease object's `metadata.uid` as of this term's grant, if the store has uids
    /// (`KubeStore` and `MemoryStore` do). A Lease deleted and created again is another
    /// object with another uid, whose `leaseTransitions` start again.
    pub fn lease_uid(&self) -> Option<&str> {
        self.inner.lease_uid.get().map(String::as_str)
    }

    /// The term's fence: `<lease uid>/<fencing token>`, the value of the
    /// [`dsync.io/fence`](crate::fencing::FENCE_ANNOTATION) annotation that the token fence of
    /// `deploy/fencing/` compares with the Lease's current `metadata.uid` and
    /// `spec.leaseTransitions` (see [`crate::fencing`]). Unlike the fencing token alone it
    /// also tells a Lease that was deleted and created again (whose tokens start again) from
    /// the one the term held. `None` if the store gave no uid.
    #[must_use]
    pub fn fence(&self) -> Option<String> {
        self.lease_uid()
            .map(|uid| format!("{uid}/{}", self.inner.fencing_token))
    }

    /// Wall-clock time the term began (for display only).
    pub fn started(&self) -> SystemTime {
        self.inner.started
    }

    /// The instant (local monotonic time) after which the term is over even if nobody cancels
    /// it: the renew deadline of its last successful renewal. Each renewal moves it forward.
    pub fn valid_until(&self) -> Instant {
        self.inner.base + Duration::from_nanos(self.inner.valid_until.load(Ordering::Acquire))
    }

    /// Whether the term is still running: not cancelled, and its
    /// [deadline](Self::valid_until) has not passed. Once false, it stays false.
    pub fn is_active(&self) -> bool {
        if self.inner.cancel.is_cancelled() {
            return false;
        }
        if now() >= self.valid_until() {
            // Latch: a term past its deadline is over for good, even if a renewal that was
            // still in flight succeeds afterwards. Its claim ran out: the lease may be gone.
            self.inner.lost.store(true, Ordering::Release);
            self.inner.ended_at.get_or_init(|| self.valid_until());
            self.inner.cancel.cancel();
            return false;
        }
        true
    }

    /// Completes when the term ends: when it is cancelled, or at its
    /// [deadline](Self::valid_until) unless a renewal moved the deadline first. Needs a tokio
    /// runtime (any actix System has one) for the deadline's timer.
    pub async fn cancelled(&self) {
        while self.is_active() {
            let until = tokio::time::Instant::from_std(self.valid_until());
            tokio::select! {
                _ = self.inner.cancel.cancelled() => return,
                _ = tokio::time::sleep_until(until) => {}
            }
        }
    }

    /// Like [`cancelled`](Self::cancelled), owning a clone of the term (for `'static` futures).
    pub fn cancelled_owned(&self) -> impl Future<Output = ()> + Send + 'static {
        let term = self.clone();
        async move { term.cancelled().await }
    }

    /// A token that is cancelled when dsync ends the term (and can be cancelled on its own
    /// without ending the term), for APIs that take a [`CancellationToken`]. dsync cancels
    /// terms from the lease actor's own thread, at the deadline at the latest; prefer
    /// [`is_active`](Self::is_active) and [`cancelled`](Self::cancelled), which also honour
    /// the deadline by themselves.
    pub fn child_token(&self) -> CancellationToken {
        self.inner.cancel.child_token()
    }

    /// Whether this replica may have lost the lease before the term's guarded work returned:
    /// its claim ran out (renew deadline) or was superseded, the term's own deadline passed,
    /// its actor failed and restarted, or a drain ran past its timeout (the lease was then
    /// left to expire under the work). `false` while the term runs, and for a term ended by a
    /// stop, an unlock or a dropped handle: then the lease stays held and renewed until the
    /// guarded work has returned, and only then is it released. Always `false` while the term
    /// is active.
    ///
    /// Work whose result is only safe to publish under the lock checks this after it is done
    /// ([`Lock::with_lock`](crate::Lock::with_lock) does, and reports
    /// [`WithLockError::Lost`](crate::lock::WithLockError::Lost)).
    pub fn lost(&self) -> bool {
        // `is_active` latches a deadline that passed (with nobody to say so, perhaps: a
        // starved lease thread) as lost, unless the term had been ended on purpose first.
        !self.is_active() && self.inner.lost.load(Ordering::Acquire)
    }

    /// Records that the lease may have been lost during this term (see [`lost`](Self::lost)).
    pub(crate) fn mark_lost(&self) {
        self.inner.lost.store(true, Ordering::Release);
    }

    /// Ends the term. Idempotent. Only dsync ends terms; users end theirs by stopping the
    /// election or unlocking the lock.
    pub(crate) fn cancel(&self) {
        let now = now();
        // Cancelled after its deadline passed unseen: it ended at the deadline.
        self.inner
            .ended_at
            .get_or_init(|| now.min(self.valid_until()));
        self.inner.cancel.cancel();
    }

    /// When the term stopped being active (local monotonic time): the instant dsync cancelled
    /// it, or its [deadline](Self::valid_until) if that came first. `None` while it is active.
    /// Exact, whichever thread asks and however late: for logs and for checking, after the
    /// fact, that terms of one lease never overlapped.
    pub fn ended_at(&self) -> Option<Instant> {
        if self.is_active() {
            return None;
        }
        Some(
            self.inner
                .ended_at
                .get()
                .copied()
                .unwrap_or_else(|| self.valid_until()),
        )
    }

    /// Moves the deadline to `until` after a successful renewal. `false` if the term has
    /// already ended (cancelled, or its old deadline passed): a term never comes back.
    pub(crate) fn extend(&self, until: Instant) -> bool {
        if !self.is_active() {
            return false;
        }
        self.store_deadline(until);
        true
    }

    /// Registers guarded work: the lease is not released while the token lives.
    pub(crate) fn work_token(&self) -> TaskTrackerToken {
        self.inner.work.token()
    }

    /// Completes once every piece of guarded work has returned (call after cancelling).
    pub(crate) fn drained(&self) -> impl Future<Output = ()> + Send + 'static {
        let work = self.inner.work.clone();
        work.close();
        async move { work.wait().await }
    }

    /// Whether guarded work is still running.
    pub(crate) fn has_work(&self) -> bool {
        !self.inner.work.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn term(valid_for: Duration) -> Term {
        Term::new(LeaseKey::new("ns", "l"), "me".into(), 4, now() + valid_for)
    }

    #[tokio::test]
    async fn cancel_is_seen_by_clones_and_children_and_is_idempotent() {
        let t = term(Duration::from_secs(60));
        let clone = t.clone();
        let child = t.child_token();
        assert!(t.is_active() && clone.is_active() && !child.is_cancelled());
        t.cancel();
        t.cancel();
        clone.cancelled().await;
        assert!(!clone.is_active());
        assert!(child.is_cancelled());
        assert_eq!(clone.fencing_token(), 4);
        assert_eq!(clone.holder(), "me");
    }

    #[test]
    fn the_fence_is_the_lease_uid_and_the_token() {
        assert_eq!(
            term(Duration::from_secs(60)).fence(),
            None,
            "no uid: no fence"
        );
        let t = term(Duration::from_secs(60)).with_lease_uid(Some("9f1c-uid".into()));
        assert_eq!(t.lease_uid(), Some("9f1c-uid"));
        assert_eq!(t.fence().as_deref(), Some("9f1c-uid/4"));
        assert_eq!(t.clone().fence(), t.fence(), "clones share it");
    }

    #[test]
    fn cancelling_a_child_does_not_end_the_term() {
        let t = term(Duration::from_secs(60));
        t.child_token().cancel();
        assert!(t.is_active());
    }

    #[test]
    fn ids_are_unique() {
        let a = term(Duration::from_secs(60));
        let b = term(Duration::from_secs(60));
        assert_ne!(a.id(), b.id());
    }

    #[tokio::test(start_paused = true)]
    async fn a_term_ends_at_its_deadline_without_anyone_cancelling_it() {
        let t = term(Duration::from_secs(10));
        let child = t.child_token();
        tokio::time::sleep(Duration::from_millis(9_999)).await;
        assert!(t.is_active());
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert!(!t.is_active(), "over at the deadline");
        assert!(child.is_cancelled(), "and latched: children see it too");
        assert!(
            !t.extend(now() + Duration::from_secs(10)),
            "it never comes back"
        );
        assert!(!t.is_active());
    }

    #[tokio::test(start_paused = true)]
    async fn a_term_that_reached_its_deadline_counts_as_lost_one_ended_first_does_not() {
        let expired = term(Duration::from_secs(10));
        let stopped = term(Duration::from_secs(10));
        assert!(
            !expired.lost() && !stopped.lost(),
            "never lost while active"
        );
        stopped.cancel(); // a stop: the lease stays held until the work returns
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert!(expired.lost(), "its claim ran out");
        assert!(!stopped.lost(), "ended on purpose before its deadline");
        stopped.mark_lost(); // e.g. its drain timed out, or it stepped down while draining
        assert!(stopped.lost());
    }

    #[tokio::test(start_paused = true)]
    async fn ended_at_is_the_cancellation_or_the_deadline_whichever_came_first() {
        let start = now();
        let cancelled = term(Duration::from_secs(10));
        let expired = term(Duration::from_secs(10));
        let late = term(Duration::from_secs(10));
        assert_eq!(cancelled.ended_at(), None, "active");
        tokio::time::sleep(Duration::from_secs(3)).await;
        cancelled.cancel();
        tokio::time::sleep(Duration::from_secs(9)).await;
        late.cancel(); // cancelled after its deadline passed unseen
        assert_eq!(cancelled.ended_at(), Some(start + Duration::from_secs(3)));
        assert_eq!(expired.ended_at(), Some(start + Duration::from_secs(10)));
        assert_eq!(late.ended_at(), Some(start + Duration::from_secs(10)));
    }

    #[tokio::test(start_paused = true)]
    async fn cancelled_completes_at_the_deadline_and_follows_extensions() {
        let t = term(Duration::from_secs(10));
        let start = tokio::time::Instant::now();
        let waiter = tokio::spawn(t.cancelled_owned());
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(t.extend(now() + Duration::from_secs(10)), "renewed at 5 s");
        waiter.await.unwrap();
        assert_eq!(start.elapsed(), Duration::from_secs(15));
    }

    #[tokio::test(start_paused = true)]
    async fn drained_waits_for_every_work_token() {
        let t = term(Duration::from_secs(10));
        let a = t.work_token();
        let b = t.work_token();
        assert!(t.has_work());
        let drained = tokio::spawn(t.drained());
        drop(a);
        tokio::task::yield_now().await;
        assert!(!drained.is_finished());
        drop(b);
        drained.await.unwrap();
        assert!(!t.has_work());
    }
}
