//! `Term`: one continuous period of leadership or lock ownership.
//!
//! A term carries the lease's fencing token and a cancellation token. It is cancelled the moment
//! this replica can no longer be sure it holds the lease (renewal failed until the renew deadline,
//! someone else took over, `stop`/`unlock`/shutdown), so work guarded by a term should stop when
//! [`Term::cancelled`] completes, and writes to external systems should carry
//! [`Term::fencing_token`] so that a stale holder's late writes can be rejected there.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

use crate::store::LeaseKey;

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
    started: SystemTime,
    cancel: CancellationToken,
}

/// A leadership or lock term. Cheap to clone; all clones share one cancellation.
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
    pub(crate) fn new(lease: LeaseKey, holder: String, fencing_token: i32) -> Self {
        Term {
            inner: Arc::new(Inner {
                id: TermId::next(),
                lease,
                holder,
                fencing_token,
                started: SystemTime::now(),
                cancel: CancellationToken::new(),
            }),
        }
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

    /// Wall-clock time the term began (for display only).
    pub fn started(&self) -> SystemTime {
        self.inner.started
    }

    /// Whether the term is still running.
    pub fn is_active(&self) -> bool {
        !self.inner.cancel.is_cancelled()
    }

    /// Completes when the term ends.
    pub fn cancelled(&self) -> WaitForCancellationFuture<'_> {
        self.inner.cancel.cancelled()
    }

    /// A token that is cancelled when the term ends (and can be cancelled on its own without
    /// ending the term), for APIs that take a [`CancellationToken`].
    pub fn child_token(&self) -> CancellationToken {
        self.inner.cancel.child_token()
    }

    /// Ends the term. Idempotent. Only dsync ends terms; users end theirs by stopping the
    /// election or unlocking the lock.
    pub(crate) fn cancel(&self) {
        self.inner.cancel.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn cancel_is_seen_by_clones_and_children_and_is_idempotent() {
        let t = Term::new(LeaseKey::new("ns", "l"), "me".into(), 4);
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
    fn cancelling_a_child_does_not_end_the_term() {
        let t = Term::new(LeaseKey::new("ns", "l"), "me".into(), 0);
        t.child_token().cancel();
        assert!(t.is_active());
    }

    #[test]
    fn ids_are_unique() {
        let a = Term::new(LeaseKey::new("ns", "l"), "me".into(), 0);
        let b = Term::new(LeaseKey::new("ns", "l"), "me".into(), 0);
        assert_ne!(a.id(), b.id());
    }
}
