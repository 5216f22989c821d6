//! Running dsync in paused tokio time, and waiting in it.
//!
//! In paused time (tokio's `test-util`, turned on by the `testing` feature) the clock stands
//! still while any task can run and jumps to the next timer when all are idle: a test that
//! waits out a 15 s lease duration takes microseconds, and every instant is exact. A paused
//! clock belongs to one current-thread runtime, so the replicas' lease actors must run on the
//! test's own arbiter ([`paused_config`]); `#[actix::test]` and [`run_paused`] give a
//! current-thread actix System.

use std::future::Future;
use std::time::Duration;

use futures::FutureExt;

use crate::config::LeaseThread;
use crate::{Config, Election};

/// A replica's configuration for tests in paused time: identity `identity`, the default
/// timing (15 s / 10 s / 2 s), and the lease actors on the caller's arbiter
/// ([`LeaseThread::Current`]), because a paused clock belongs to one runtime.
pub fn paused_config(identity: &str) -> Config {
    Config::default()
        .with_identity(identity)
        .with_lease_thread(LeaseThread::Current)
}

/// Runs `fut` to completion in a new actix System with tokio's clock paused, and returns its
/// output: what `#[actix::test]` plus `tokio::time::pause()` does, for doctests, `main`s and
/// tests that build their System by hand.
///
/// # Panics
///
/// If called from inside a running actix System or tokio runtime (a thread runs one System
/// at a time).
pub fn run_paused<F: Future>(fut: F) -> F::Output {
    actix::System::new().block_on(async move {
        tokio::time::pause();
        fut.await
    })
}

/// Awaits `fut`, failing the test (instead of hanging) if it does not finish within `limit`
/// (of virtual time, when paused).
///
/// # Panics
///
/// When `limit` passes first, naming `what`.
pub async fn within<T>(limit: Duration, what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(limit, fut).await {
        Ok(v) => v,
        Err(_) => panic!("{what}: not done within {limit:?}"),
    }
}

/// Lets every ready task run (50 yields) without advancing paused time: after it, messages
/// sent and work started "now" have been handled.
pub async fn settle() {
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
}

/// Waits until one of `elections` leads and returns its index.
///
/// # Panics
///
/// If nobody leads within `limit`, or an election's actor is gone.
pub async fn leader_of(limit: Duration, elections: &[Election]) -> usize {
    within(limit, "someone is elected", async {
        let mut rxs: Vec<_> = elections.iter().map(Election::watch_status).collect();
        loop {
            if let Some(i) = elections.iter().position(Election::is_leader) {
                return i;
            }
            let changes = rxs.iter_mut().map(|rx| rx.changed().boxed());
            let (changed, _, _) = futures::future::select_all(changes).await;
            changed.expect("an election actor went away");
        }
    })
    .await
}

/// Aborts the test process if the test holding it runs for longer than its limit of
/// wall-clock time.
///
/// In paused time a test that loops hot never lets the clock advance, so a virtual timeout
/// ([`within`]) never fires and the test hangs; this watchdog runs on a thread of its own and
/// names the test before aborting, instead of hanging CI. Dropping it disarms it.
#[derive(Debug)]
pub struct WallWatchdog(Option<std::sync::mpsc::Sender<()>>);

impl WallWatchdog {
    /// Arms a watchdog for the test `name` with a limit of `limit` of wall-clock time.
    #[must_use = "the watchdog is disarmed when dropped"]
    pub fn start(name: &'static str, limit: Duration) -> Self {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        std::thread::spawn(move || {
            if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(limit) {
                eprintln!(
                    "{name}: still running after {limit:?} of wall-clock time (a hot loop that \
                     never lets paused time advance?): aborting the test process"
                );
                std::process::abort();
            }
        });
        WallWatchdog(Some(tx))
    }
}

impl Drop for WallWatchdog {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(());
        }
    }
}
