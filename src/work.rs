//! Which lease's guarded work is running on this task.
//!
//! A stop waits for the work its term guards. Work that stops its own lease (a `when_elected`
//! future calling `election.stop()`, a `with_lock` body calling `dsync.shutdown()`) would then
//! wait for itself. To tell that case apart, dsync runs every piece of guarded work inside a
//! task-local scope naming the lease actors it belongs to, and a stop called inside that scope
//! is carried out without being waited for.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};

/// Process-unique id of one lease actor (one incarnation of an election or lock).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct ActorId(u64);

impl ActorId {
    pub fn next() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        ActorId(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

tokio::task_local! {
    static WORK: Vec<ActorId>;
}

/// Runs `fut` as guarded work of `actor` (nested inside any work it already belongs to).
pub(crate) fn scope<F: Future>(actor: ActorId, fut: F) -> impl Future<Output = F::Output> {
    let mut ids = current();
    ids.push(actor);
    WORK.scope(ids, fut)
}

/// The actors whose guarded work the current task is running.
pub(crate) fn current() -> Vec<ActorId> {
    WORK.try_with(Clone::clone).unwrap_or_default()
}

/// Whether the current task is running guarded work of `actor`.
pub(crate) fn inside(actor: ActorId) -> bool {
    WORK.try_with(|ids| ids.contains(&actor)).unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn scopes_nest_and_end() {
        let (a, b) = (ActorId::next(), ActorId::next());
        assert!(!inside(a));
        scope(a, async {
            assert!(inside(a) && !inside(b));
            scope(b, async { assert!(inside(a) && inside(b)) }).await;
            assert!(!inside(b));
        })
        .await;
        assert!(current().is_empty());
    }
}
