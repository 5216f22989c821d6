//! A test kit for code that uses dsync (feature `testing`).
//!
//! * [`FaultyStore`] ([`fault`]): a [`LeaseStore`](crate::LeaseStore) wrapper that injects
//!   faults on command: partitions, stalled calls, failures before or after a write took effect
//!   (lost replies), latency per leg, 409 storms, cut or silent watches, a skewed wall clock,
//!   records nobody validated; it counts calls and tells when one is on the wire.
//! * [`TermLog`] ([`log`]): every term of any number of replicas and leases (elections and
//!   locks), with the safety checks: no two terms of a lease active at once, fencing tokens
//!   strictly increasing; and [`SingleLeaderMonitor`].
//! * Paused time ([`time`]): [`run_paused`], [`paused_config`], [`within`], [`settle`],
//!   [`leader_of`], [`WallWatchdog`].
//! * [`conformance`]: a suite any [`LeaseStore`](crate::LeaseStore) implementation can run:
//!   the rules dsync relies on, which [`MemoryStore`](crate::MemoryStore) and `KubeStore` obey.
//!
//! # Testing leader-only code in paused time
//!
//! Leases take seconds to expire (15 s by default); a test that waits for real is slow and
//! flaky. Run it in **paused tokio time** instead: the clock stands still while anything can
//! run and jumps to the next timer when everything is idle, so a minute passes in microseconds
//! and every instant is exact.
//!
//! 1. Turn on this crate's `testing` feature for your tests (it turns on tokio's `test-util`,
//!    which paused time needs): `dsync = { version = "…", features = ["testing"] }` under
//!    `[dev-dependencies]`.
//! 2. Run the test in a current-thread actix System with the clock paused: `#[actix::test]`
//!    and `tokio::time::pause()` as its first line, or [`run_paused`].
//! 3. Give each replica [`paused_config`]: its lease actors must run on the test's own thread
//!    ([`LeaseThread::Current`](crate::config::LeaseThread::Current)), because a paused clock belongs
//!    to one runtime; the default runs them on a thread of their own, in real time.
//! 4. Share one [`MemoryStore`](crate::MemoryStore) between the replicas, each behind its own
//!    [`FaultyStore`], and play the faults.
//!
//! # Example: my leader-only worker stops writing when leadership is lost
//!
//! The worker writes a report line every second while its replica leads. When the replica
//! is cut off from the API server, it must stop writing by the renew deadline (10 s by
//! default), before another replica can take over (15 s), and must write nothing after.
//!
//! ```
//! use std::sync::{Arc, Mutex};
//! use std::time::Duration;
//!
//! use dsync::testing::{FaultyStore, TermLog, paused_config, run_paused, within};
//! use dsync::{Dsync, Election, MemoryStore, Term};
//! use tokio::time::Instant;
//!
//! /// What the worker wrote: when, and under which fencing token.
//! type Writes = Arc<Mutex<Vec<(Instant, i32)>>>;
//!
//! /// The code under test: a line per second, only while leader.
//! fn start_report_writer(dsync: &Dsync, writes: Writes) -> dsync::Result<Election> {
//!     let election = dsync.election("report-writer")?;
//!     election.when_elected(move |term: Term| {
//!         let writes = writes.clone();
//!         async move {
//!             let mut tick = tokio::time::interval(Duration::from_secs(1));
//!             loop {
//!                 tokio::select! {
//!                     () = term.cancelled() => break,
//!                     _ = tick.tick() => writes
//!                         .lock()
//!                         .unwrap()
//!                         .push((Instant::now(), term.fencing_token())),
//!                 }
//!             }
//!         }
//!     })?;
//!     Ok(election)
//! }
//!
//! # fn main() -> Result<(), dsync::Error> {
//! run_paused(async {
//!     let shared = dsync::MemoryStore::new();
//!     let link_a = FaultyStore::new(shared.clone());
//!     let a = Dsync::with_config(link_a.clone(), paused_config("pod-a"))?;
//!     let b = Dsync::with_config(FaultyStore::new(shared.clone()), paused_config("pod-b"))?;
//!     let writes = Writes::default();
//!     let election_a = start_report_writer(&a, writes.clone())?;
//!     let term = within(Duration::from_secs(1), "a leads", election_a.elected()).await?;
//!     let election_b = start_report_writer(&b, writes.clone())?;
//!     let log = TermLog::new();
//!     log.got("pod-a", &term);
//!
//!     tokio::time::sleep(Duration::from_secs(30)).await; // 30 s pass at once
//!     assert!(writes.lock().unwrap().len() >= 30, "a writes while it leads");
//!
//!     link_a.partition(); // pod-a loses the API server: it can no longer renew
//!     let cut = Instant::now();
//!     within(Duration::from_secs(60), "a's term ends", term.cancelled()).await;
//!     let ended = Instant::now();
//!     assert!(ended - cut <= Duration::from_secs(10), "a steps down by its renew deadline");
//!
//!     let term_b = within(Duration::from_secs(60), "b takes over", election_b.elected()).await?;
//!     log.got("pod-b", &term_b);
//!     assert!(term_b.fencing_token() > term.fencing_token());
//!     tokio::time::sleep(Duration::from_secs(30)).await;
//!
//!     // Nothing written under a's term after it ended; b writes under its own token.
//!     let writes = writes.lock().unwrap().clone();
//!     assert!(writes.iter().all(|&(at, token)| token != term.fencing_token() || at <= ended));
//!     assert!(writes.iter().any(|&(_, token)| token == term_b.fencing_token()));
//!     log.assert_safe(); // the two terms never overlapped; tokens increase
//!
//!     link_a.heal();
//!     b.shutdown().await
//! })
//! # }
//! ```

pub mod conformance;
pub mod fault;
pub mod log;
pub mod time;

pub use conformance::Suite;
pub use fault::{Call, ClockSkew, FaultyStore, When};
pub use log::{Recorder, SingleLeaderMonitor, TermLog, TermSpan, TermViolation};
pub use time::{WallWatchdog, leader_of, paused_config, run_paused, settle, within};
