//! What a lock call leaves behind does not outlive the call: measured as the live heap (dhat's
//! heap profiler, in testing mode) across thousands of calls whose tokens and timeouts never
//! fire.
//!
//! The old lock actor parked a future per `lock_with_cancel` call (and a timer per
//! `lock_timeout` call) inside itself until the token fired (or the timeout ran out), even
//! when the lock was granted at once: a service taking a lock per request with a shutdown
//! token grew without bound. Waiting is now the caller's own future.
#![cfg(feature = "testing")]

mod support;

use std::time::Duration;

use dsync::{Dsync, MemoryStore};
use tokio_util::sync::CancellationToken;

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

#[actix::test]
async fn granted_lock_calls_leave_nothing_behind_in_the_lock_actor() {
    let _profiler = dhat::Profiler::builder().testing().build();
    tokio::time::pause();
    let d = Dsync::with_config(MemoryStore::new(), dsync::testing::paused_config("pod-a")).unwrap();
    let lock = d.lock("x").unwrap();
    const CALLS: usize = 2_000;
    // The tokens live, uncancelled, for the whole test (made before measuring; each call
    // gets a clone).
    let tokens: Vec<CancellationToken> = (0..CALLS).map(|_| CancellationToken::new()).collect();
    let cycle = async |n: usize| {
        for (i, token) in tokens.iter().take(n).enumerate() {
            let term = if i % 2 == 0 {
                lock.lock_with_cancel(token.clone()).await.unwrap()
            } else {
                lock.lock_timeout(Duration::from_secs(3600)).await.unwrap()
            };
            lock.unlock().await.unwrap();
            assert!(!term.is_active());
        }
    };
    cycle(100).await; // warm up: every lazily grown buffer has its size
    let before = dhat::HeapStats::get().curr_bytes;
    cycle(CALLS).await;
    let after = dhat::HeapStats::get().curr_bytes;
    let growth = after.saturating_sub(before);
    eprintln!("live heap: {before} bytes before {CALLS} granted calls, {after} after");
    dhat::assert!(
        growth < 32 * 1024,
        "{CALLS} granted calls grew the live heap by {growth} bytes"
    );
    d.shutdown().await.unwrap();
}
