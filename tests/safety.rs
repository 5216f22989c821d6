//! Randomized fault schedules: never two leaders, never two lock holders, fencing tokens
//! strictly increasing, and a leader (and the lock) again once the faults heal.
//!
//! Each seed builds 2–4 replicas (each behind its own fault layer, each with its own wall clock
//! skewed by up to ±10 minutes and its own drain timeout) that run two elections and compete for
//! one lock, then plays a random schedule of faults:
//!
//! * the network: partitions and heals, latency up to 3 s per leg, 409 storms, failures before
//!   and after a write lands (the response is lost), 503s, dropped watches;
//! * faults that last: every call of a kind failing with 503, or with 403 Forbidden (a revoked
//!   role), for a while; calls of a kind that hang (a stalled API server);
//! * stops: an election stopped and started again, the lock's actor stopped, a replica shut
//!   down (and later started again as a new process), all while `when_elected` futures and
//!   `with_lock` bodies run, some of which ignore their cancellation for a while (longer than
//!   the drain timeout, sometimes);
//! * handoffs (`Election::handoff_to`, `Dsync::handoff`, and `Dsync::request_handoff` on the
//!   lease) to a live replica, to the caller itself or to an identity nobody has, alone or
//!   under a fault of their own: the next write's reply lost (at once, or later: a renewal
//!   during the drain, or the release after it), a partition, every write refused with 403 or
//!   422, or failing with 503 so that the lease is lost while the handed-off term's work
//!   drains (that work then takes up to 30 s longer to return; with the other replicas cut off
//!   for longer still, sometimes, so that the replica handing off may take its record back);
//! * a blocked executor: on the real API server, the test's own thread (where the terms' work,
//!   the lock callers and replica 0's lease actors run; the other replicas' run on dsync's own
//!   threads) blocked for one to one and a half lease durations. In paused time nothing can
//!   block without stopping the clock, so there the starved holder is modelled by work that
//!   ignores its cancellation, checked with the same caller's-view oracle.
//!
//! The terms' own work is part of the schedule. `when_elected` futures serve until cancelled,
//! or ignore the cancellation for a while, or stop their own election or shut their replica
//! down from inside (which must answer `StopFromWork` at once, or as soon as the other leases
//! are stopped, never hang). The lock workers take the lock every way there is: `lock_timeout`
//! then `unlock`, `try_lock`, `lock_with_cancel` with tokens cancelled at random times,
//! `with_lock` bodies (which may stop the lock or shut the replica down from inside, and may be
//! dropped while they run), a temporary handle dropped while its term is kept, a handle dropped
//! instead of unlocking, and `lock()` futures abandoned after one poll, on a short timer, or
//! right after their grant was sent.
//!
//! **The oracle** takes the caller's view: a term counts from the instant its caller got it
//! (`Elected` delivered, a `when_elected` future started, `lock()` returned) until the instant
//! [`Term::is_active`] turned false, as seen by a watcher awaiting `Term::cancelled` (which
//! honours the term's own deadline), not until the lease actor says so. On the real API server
//! the watchers run on a thread of their own, which the schedule never blocks.
//! For every lease, no two terms overlap (touching is allowed: a graceful handoff) and fencing
//! tokens strictly increase in the order terms began (and are never reused). Also checked: a
//! replica starts a term's guarded work only after the previous term's work has returned (or
//! outlived the drain timeout), stops and shutdowns answer within their bound with the
//! documented errors and end every term they stop, a dropped handle's or a dropped grant's term
//! ends at once, and no lock grant is ever kept by a caller that did not receive it.
//!
//! Issue 24 added (rules `handoff-ends-with-its-term`, `refusal-during-drain`): every handoff
//! call returns within the bound of a stop (and a handoff request within its attempts' bound);
//! in paused time, a term whose work still runs after it ended is marked lost
//! (`Term::lost`) whenever another replica's term of that lease starts its work; and after
//! every replica has shut down, no lease names a replica whose shutdowns all answered `Ok`,
//! and no election's lease is left released naming a successor (the last writes were plain
//! stops).
//!
//! `DSYNC_SAFETY_SEEDS=N` runs N memory seeds per test (default 250 per test, 1,000 in all);
//! `DSYNC_SAFETY_SEED=S` replays one seed; `DSYNC_SAFETY_TRACE=1` prints the schedule (with
//! `RUST_LOG=dsync=debug`, dsync's own log too). A failure prints its seed. Each test ends with
//! one summary line (shown with `-- --nocapture`, or on failure): seeds run, terms checked, and
//! how often each path was taken.
#![cfg(feature = "testing")]

mod support;

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::{Duration, SystemTime};

use actix::prelude::*;
use dsync::config::DEFAULT_DRAIN_TIMEOUT;
use dsync::config::LeaseThread;
use dsync::store::{LeaseKey, LeaseRecord, LeaseStore, StoreError};
use dsync::term::TermId;
use dsync::testing::{Call, ClockSkew, FaultyStore, TermLog, within};
use dsync::{Config, Dsync, Elected, Election, Error, KubeStore, Lock, MemoryStore, Term, Timing};
use support::apiserver::{Harness, namespace};
use support::backend::{KUBE_CALL_TIMEOUT, kube_store, kube_timing};
use support::kubefault::{Fault, KubeFaults};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep};
use tokio_util::sync::CancellationToken;

/// splitmix64: small, fast, and the same sequence everywhere for a seed.
#[derive(Clone)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn millis(&mut self, max: u64) -> Duration {
        Duration::from_millis(self.below(max + 1))
    }
}

/// What a schedule does to one replica's link to the store: `FaultyStore` on the memory
/// store; on the real apiserver, the kube fault layer (`KubeFaults`) in the client's HTTP
/// stack plus a `FaultyStore` around the `KubeStore` for the faults that last.
trait Chaos {
    fn partition(&self);
    /// Ends a partition and stalled calls.
    fn heal(&self);
    fn set_latency(&self, latency: Duration);
    /// The next `n` updates fail with 409 Conflict.
    fn conflict_storm(&self, n: u64);
    /// The next write (`call`) takes effect, but its response is lost.
    fn lose_next_response(&self, call: Call);
    /// The next call fails with 503.
    fn fail_next_503(&self);
    fn drop_watches(&self);
    /// Every `call` fails from now on, with 503, with 403 Forbidden (a revoked role) or with
    /// 422 Invalid (an admission policy refusing the write), until `clear`.
    fn fail_always(&self, call: Call, kind: Refusal);
    /// Every `call` hangs from now on, until `heal` or `clear`.
    fn stall(&self, call: Call);
    /// Versions go back by `by` from now on (an etcd restore; `FaultyStore::rewind_versions`).
    fn rewind_versions(&self, by: u64);
    /// Drops every injected failure: queued, persistent and stalls.
    fn clear(&self);
}

/// How calls fail for a while (`Chaos::fail_always`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// 503: transient, retried.
    Unavailable,
    /// 403: a definite refusal (a revoked role).
    Forbidden,
    /// 422: a definite refusal (an admission policy rejecting the record).
    Invalid,
}

fn persistent_error(kind: Refusal) -> impl Fn() -> StoreError + Send + Sync + 'static {
    move || match kind {
        Refusal::Forbidden => StoreError::Forbidden {
            verb: "update".into(),
            resource: "leases.coordination.k8s.io".into(),
            message: "injected: the role was revoked".into(),
        },
        Refusal::Invalid => StoreError::Invalid {
            lease: "injected".into(),
            message: "injected: rejected by an admission policy, for a while".into(),
        },
        Refusal::Unavailable => StoreError::Unavailable {
            message: "injected: 503, for a while".into(),
            source: None,
        },
    }
}

impl Chaos for FaultyStore {
    fn partition(&self) {
        FaultyStore::partition(self);
    }
    fn heal(&self) {
        FaultyStore::heal(self);
    }
    fn set_latency(&self, latency: Duration) {
        FaultyStore::set_latency(self, latency);
    }
    fn conflict_storm(&self, n: u64) {
        FaultyStore::conflict_storm(self, n as usize);
    }
    fn lose_next_response(&self, call: Call) {
        self.lose_next_reply(call);
    }
    fn fail_next_503(&self) {
        self.fail_next(Call::Any, || StoreError::Unavailable {
            message: "503".into(),
            source: None,
        });
    }
    fn drop_watches(&self) {
        FaultyStore::drop_watches(self);
    }
    fn fail_always(&self, call: Call, kind: Refusal) {
        FaultyStore::fail_always(self, call, persistent_error(kind));
    }
    fn stall(&self, call: Call) {
        FaultyStore::stall(self, call);
    }
    fn rewind_versions(&self, by: u64) {
        FaultyStore::rewind_versions(self, by);
    }
    fn clear(&self) {
        FaultyStore::clear(self);
    }
}

/// The real apiserver's faults: the HTTP layer for the network, the store wrapper for the
/// faults that last (the layer has no persistent failures or stalls).
struct KubeChaos {
    http: KubeFaults,
    store: FaultyStore,
}

impl Chaos for KubeChaos {
    fn partition(&self) {
        self.http.partition();
    }
    fn heal(&self) {
        self.http.heal();
        self.store.heal();
    }
    fn set_latency(&self, latency: Duration) {
        self.http.set_latency(latency);
    }
    fn conflict_storm(&self, n: u64) {
        for _ in 0..n {
            self.http.inject(Fault::Conflict);
        }
    }
    fn lose_next_response(&self, _call: Call) {
        // Any write: the layer sees HTTP methods, not store calls.
        self.http.inject(Fault::ResetAfterWrite);
    }
    fn fail_next_503(&self) {
        self.http.inject(Fault::Unavailable);
    }
    fn drop_watches(&self) {
        self.http.drop_watches();
    }
    fn fail_always(&self, call: Call, kind: Refusal) {
        self.store.fail_always(call, persistent_error(kind));
    }
    fn stall(&self, call: Call) {
        self.store.stall(call);
    }
    fn rewind_versions(&self, by: u64) {
        self.store.rewind_versions(by);
    }
    fn clear(&self) {
        self.http.clear();
        self.store.clear();
    }
}

/// Where a seed runs.
#[derive(Clone)]
enum Backend {
    /// A fresh `MemoryStore`, paused time, timing 15/10/2 s.
    Memory,
    /// The real apiserver harness (a fresh namespace), real time, timing 2/1.5/0.5 s.
    Kube {
        /// The harness's admin kubeconfig.
        admin: PathBuf,
        /// Where the oracle's watchers run: never blocked by the schedule.
        watchers: ArbiterHandle,
    },
}

impl Backend {
    fn timing(&self) -> Timing {
        match self {
            Backend::Memory => Timing::default(), // 15 s / 10 s / 2 s
            Backend::Kube { .. } => kube_timing(),
        }
    }

    fn is_kube(&self) -> bool {
        matches!(self, Backend::Kube { .. })
    }
}

/// The elections `e0`, `e1` and the lock `shared`, by index.
const ELECTIONS: usize = 2;
const LOCK: usize = ELECTIONS;
const LEASES: usize = ELECTIONS + 1;

fn lease_label(lease: usize) -> String {
    if lease == LOCK {
        "lock shared".into()
    } else {
        format!("election e{lease}")
    }
}

thread_local! {
    static SEED: Cell<Option<u64>> = const { Cell::new(None) };
}

/// Prints the seed of a failing run (from any panic on this thread) so it can be replayed.
fn install_seed_reporter() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(install_seed_hook);
}

fn install_seed_hook() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if let Some(seed) = SEED.with(Cell::get) {
            eprintln!(
                "\n*** safety: seed {seed} failed; replay with \
                 DSYNC_SAFETY_SEED={seed} (memory) or DSYNC_SAFETY_KUBE_SEED={seed} (kube) \
                 cargo test --all-features --test safety ***\n"
            );
        }
        default(info);
    }));
}

/// `DSYNC_SAFETY_TRACE=1` prints the schedule as it plays (to debug a replayed seed).
fn trace(what: std::fmt::Arguments<'_>) {
    if std::env::var_os("DSYNC_SAFETY_TRACE").is_some() {
        eprintln!("[{:?}] {what}", Instant::now());
    }
}

// ------------------------------------------------------------------------------------------
// The oracle
// ------------------------------------------------------------------------------------------

/// One term as its caller saw it.
#[derive(Debug, Clone)]
struct Span {
    lease: usize,
    replica: String,
    id: TermId,
    token: i32,
    /// When the caller got it (the earliest, if it got it several ways).
    start: Instant,
    /// When `Term::is_active` turned false; `None` while it has not.
    end: Option<Instant>,
}

struct Recorded {
    span: Span,
    term: Term,
}

/// Every term of a seed, from the caller's view (see the module docs).
#[derive(Clone)]
struct Oracle {
    terms: Arc<Mutex<Vec<Recorded>>>,
    /// Where the watchers run: `None` for the caller's arbiter (paused time: one thread, exact
    /// instants); on the real apiserver an arbiter of their own, which the schedule never
    /// blocks, so a term's end is seen when it happens.
    watchers: Option<ArbiterHandle>,
    /// Bumped whenever a term's end is recorded.
    ended: Arc<tokio::sync::watch::Sender<u64>>,
}

/// For a term found inactive at `now`: the latest instant it can have stopped being active
/// (its deadline, if that has passed).
fn inactive_by(term: &Term, now: Instant) -> Instant {
    term.ended_at()
        .map_or(now, Instant::from_std)
        .min(now)
        .min(Instant::from_std(term.valid_until()))
}

impl Oracle {
    fn new(watchers: Option<ArbiterHandle>) -> Self {
        Oracle {
            terms: Arc::default(),
            watchers,
            ended: Arc::new(tokio::sync::watch::channel(0).0),
        }
    }

    /// `replica`'s caller got `term` of `lease` now.
    fn got(&self, lease: usize, replica: &str, term: &Term) {
        let now = Instant::now();
        let ended = (!term.is_active()).then(|| inactive_by(term, now));
        {
            let mut terms = self.terms.lock().unwrap();
            if let Some(r) = terms.iter_mut().find(|r| r.span.id == term.id()) {
                r.span.start = r.span.start.min(now);
                return;
            }
            terms.push(Recorded {
                span: Span {
                    lease,
                    replica: replica.to_owned(),
                    id: term.id(),
                    token: term.fencing_token(),
                    start: now,
                    end: ended,
                },
                term: term.clone(),
            });
        }
        if ended.is_some() {
            self.ended.send_modify(|n| *n += 1);
            return;
        }
        let (oracle, term) = (self.clone(), term.clone());
        // The end is when `cancelled` completes: dsync's own word on when the term stopped
        // being active (at its cancellation, or at its deadline without anybody's help).
        let watch = async move {
            term.cancelled().await;
            // dsync's own record of the instant, not when this watcher got to run (on a
            // loaded machine that can be milliseconds later).
            let end = term.ended_at().map_or_else(Instant::now, Instant::from_std);
            if let Some(r) = oracle
                .terms
                .lock()
                .unwrap()
                .iter_mut()
                .find(|r| r.span.id == term.id())
            {
                r.span.end = Some(end);
            }
            oracle.ended.send_modify(|n| *n += 1);
        };
        match &self.watchers {
            Some(arbiter) => {
                arbiter.spawn(watch);
            }
            None => {
                actix::spawn(watch);
            }
        }
    }

    /// When the term stopped being active, if it has: as its watcher recorded, or (its watcher
    /// has not run yet) the latest instant it can have.
    fn end_of(&self, id: TermId) -> Option<Instant> {
        let terms = self.terms.lock().unwrap();
        let r = terms.iter().find(|r| r.span.id == id)?;
        let now = Instant::now();
        r.span
            .end
            .or_else(|| (!r.term.is_active()).then(|| inactive_by(&r.term, now)))
    }

    /// Terms of `replica` (of `lease`, or of any) got by `before` that are still active.
    fn active_terms(&self, replica: &str, lease: Option<usize>, before: Instant) -> Vec<Span> {
        self.terms
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.span.replica == replica && lease.is_none_or(|l| r.span.lease == l))
            .filter(|r| r.span.start <= before && r.term.is_active())
            .map(|r| r.span.clone())
            .collect()
    }

    /// Resolves once every recorded term's end is recorded.
    async fn all_ended(&self) {
        let mut rx = self.ended.subscribe();
        let terms = self.terms.clone();
        let _ = rx
            .wait_for(|_| terms.lock().unwrap().iter().all(|r| r.span.end.is_some()))
            .await;
    }

    /// The safety checks, per lease: no two terms overlap, fencing tokens strictly increase in
    /// the order terms began, and no token is used twice. Returns how many terms each lease had.
    fn check(&self) -> [usize; LEASES] {
        let terms = self.terms.lock().unwrap();
        let mut counts = [0; LEASES];
        for (lease, count) in counts.iter_mut().enumerate() {
            let spans: Vec<&Span> = terms
                .iter()
                .map(|r| &r.span)
                .filter(|s| s.lease == lease)
                .collect();
            *count = spans.len();
            let mut tokens: Vec<i32> = spans.iter().map(|s| s.token).collect();
            tokens.sort_unstable();
            for pair in tokens.windows(2) {
                assert!(
                    pair[0] != pair[1],
                    "{}: two terms with fencing token {}: {spans:#?}",
                    lease_label(lease),
                    pair[0]
                );
            }
            // A term its caller got only after it had ended was never active for anyone.
            let mut live: Vec<&Span> = spans
                .iter()
                .copied()
                .filter(|s| s.end.expect("every term has ended") >= s.start)
                .collect();
            live.sort_by_key(|s| (s.start, s.token));
            let mut latest: Option<&Span> = None;
            for s in &live {
                if let Some(p) = latest {
                    assert!(
                        p.end.unwrap() <= s.start,
                        "{}: two terms active at once: {p:#?} and {s:#?}",
                        lease_label(lease)
                    );
                }
                if latest.is_none_or(|p| s.end > p.end) {
                    latest = Some(s);
                }
            }
            for pair in live.windows(2) {
                assert!(
                    pair[0].token < pair[1].token,
                    "{}: fencing tokens must strictly increase: {pair:#?}",
                    lease_label(lease)
                );
            }
        }
        counts
    }
}

/// Delivers `Elected` to the oracle: one way an election's caller gets a term.
struct Witness {
    oracle: Oracle,
    lease: usize,
    replica: String,
}

impl Actor for Witness {
    type Context = Context<Self>;
}

impl Handler<Elected> for Witness {
    type Result = ();
    fn handle(&mut self, msg: Elected, _: &mut Self::Context) {
        self.oracle.got(self.lease, &self.replica, &msg.term);
    }
}

/// One piece of guarded work running now: its key, replica, lease and term.
type Running = (u64, String, usize, Term);

/// The guarded work running now (`when_elected` futures, `with_lock` bodies), to check that a
/// replica starts a term's work only after the previous term's work of that lease returned.
#[derive(Clone)]
struct Works {
    running: Arc<Mutex<Vec<Running>>>,
    next: Arc<AtomicU64>,
    count: Arc<tokio::sync::watch::Sender<usize>>,
}

struct WorkGuard {
    works: Works,
    key: u64,
}

impl Drop for WorkGuard {
    fn drop(&mut self) {
        let mut running = self.works.running.lock().unwrap();
        running.retain(|(k, ..)| *k != self.key);
        let n = running.len();
        self.works.count.send_replace(n);
    }
}

impl Works {
    fn new() -> Self {
        Works {
            running: Arc::default(),
            next: Arc::default(),
            count: Arc::new(tokio::sync::watch::channel(0).0),
        }
    }

    /// `replica` starts work guarded by `term` of `lease`.
    fn start(
        &self,
        ctx: &Ctx,
        replica: &str,
        lease: usize,
        term: &Term,
        drain: Duration,
    ) -> WorkGuard {
        let now = Instant::now();
        let mut running = self.running.lock().unwrap();
        for (_, r, l, other) in running.iter() {
            // Another replica's term begins while the work of an ended term still runs: that
            // term must say it may have lost the lease (rule `refusal-during-drain`: whatever
            // dropped its claim, a refusal too, marked it lost first). In paused time only:
            // on the real API server a blocked thread may hold back the actor that marks it.
            if r != replica
                && *l == lease
                && ctx.slack.is_zero()
                && !other.is_active()
                && !other.lost()
            {
                ctx.fail(format!(
                    "{replica}: work of {} term {} (token {}) starts while {r}'s work of term \
                     {} (token {}) still runs, and that term has ended but is not marked lost",
                    lease_label(lease),
                    term.id(),
                    term.fencing_token(),
                    other.id(),
                    other.fencing_token()
                ));
            }
            if r != replica || *l != lease || other.id() == term.id() {
                continue;
            }
            if other.is_active() {
                ctx.fail(format!(
                    "{replica}: work of {} term {} starts while term {} is active",
                    lease_label(lease),
                    term.id(),
                    other.id()
                ));
            } else if let Some(ended) = ctx.oracle.end_of(other.id())
                && now.duration_since(ended) < drain
            {
                ctx.fail(format!(
                    "{replica}: work of {} term {} starts while the work of term {} (ended {:?} \
                     ago, less than the drain timeout {drain:?}) still runs",
                    lease_label(lease),
                    term.id(),
                    other.id(),
                    now.duration_since(ended)
                ));
            }
        }
        let key = self.next.fetch_add(1, Ordering::Relaxed);
        running.push((key, replica.to_owned(), lease, term.clone()));
        self.count.send_replace(running.len());
        WorkGuard {
            works: self.clone(),
            key,
        }
    }

    /// Resolves once no guarded work runs.
    async fn idle(&self) {
        let _ = self.count.subscribe().wait_for(|n| *n == 0).await;
    }
}

// ------------------------------------------------------------------------------------------
// What a seed shares with its callers and its terms' work
// ------------------------------------------------------------------------------------------

#[derive(Clone)]
struct Ctx {
    oracle: Oracle,
    works: Works,
    /// What went wrong inside work and spawned checks (a panic there would be caught by dsync
    /// as a panicking `when_elected` future, or lost with the task).
    failures: Arc<Mutex<Vec<String>>>,
    stats: Arc<Mutex<BTreeMap<&'static str, u64>>>,
    timing: Timing,
    /// The schedule is written for a 15 s lease; other timings scale it.
    scale: f64,
    /// How long "at once" may take: zero in paused time, a little in real time.
    prompt: Duration,
    /// Added to bounds in real time (calls hung by a partition time out, watches come back).
    slack: Duration,
    /// The longest the schedule blocks the test's thread (real apiserver only): added to the
    /// bounds of what may be waiting across such a block.
    max_block: Duration,
    /// The faults have healed: work no longer stops its lease or its replica.
    calm: Arc<AtomicBool>,
    /// Stops and shutdowns called from inside work that have not answered yet.
    stopping_from_work: Arc<tokio::sync::watch::Sender<usize>>,
    /// How long the schedule has blocked the test's thread in all (nanoseconds): not counted
    /// against what must happen "at once" there.
    blocked: Arc<AtomicU64>,
    /// Every shutdown of a process: its identity, and whether it answered `Ok` (then it
    /// released whatever it held). One called from inside work counts as not `Ok`.
    shutdowns: Arc<Mutex<Vec<(String, bool)>>>,
}

/// Counts a stop from inside work until it answers (or its work is dropped).
struct StopFromWorkGuard(Arc<tokio::sync::watch::Sender<usize>>);

impl Drop for StopFromWorkGuard {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n -= 1);
    }
}

/// `dsync.shutdown()`, its outcome noted in `ctx.shutdowns`.
fn ctx_shutdown(ctx: &Ctx, dsync: Dsync) -> impl Future<Output = dsync::Result<()>> + 'static {
    let ctx = ctx.clone();
    async move {
        let result = dsync.shutdown().await;
        ctx.note_shutdown(dsync.identity(), result.is_ok());
        result
    }
}

impl Ctx {
    fn note_shutdown(&self, identity: &str, ok: bool) {
        self.shutdowns
            .lock()
            .unwrap()
            .push((identity.to_owned(), ok));
    }

    fn fail(&self, what: String) {
        trace(format_args!("FAILURE: {what}"));
        self.failures.lock().unwrap().push(what);
    }

    fn bump(&self, what: &'static str) {
        *self.stats.lock().unwrap().entry(what).or_default() += 1;
    }

    /// A random duration of up to `ms` in the schedule's units.
    fn scaled(&self, rng: &mut Rng, ms: u64) -> Duration {
        rng.millis(ms).mul_f64(self.scale)
    }

    fn calm(&self) -> bool {
        self.calm.load(Ordering::Relaxed)
    }

    fn blocked(&self) -> Duration {
        Duration::from_nanos(self.blocked.load(Ordering::Relaxed))
    }

    /// Time since `t0` (when `blocked_then` had been blocked) that the thread was not blocked.
    fn unblocked_since(&self, t0: Instant, blocked_then: Duration) -> Duration {
        t0.elapsed().saturating_sub(self.blocked() - blocked_then)
    }

    /// The longest a stop or shutdown of a replica with drain timeout `drain` may take: the
    /// drain, then a release retried until the renew deadline (doubled, to catch hangs only).
    fn stop_bound(&self, drain: Duration) -> Duration {
        drain + self.timing.lease_duration() * 2 + self.slack + self.max_block
    }

    /// Resolves once no stop called from inside work is waiting for its answer.
    async fn stops_from_work_done(&self) {
        let _ = self
            .stopping_from_work
            .subscribe()
            .wait_for(|n| *n == 0)
            .await;
    }

    /// Checks that `fut` (a term ending) completes at once.
    async fn promptly(&self, what: &str, fut: impl Future<Output = ()>) {
        let (t0, blocked) = (Instant::now(), self.blocked());
        let limit = self.timing.lease_duration() + self.slack + self.max_block;
        match tokio::time::timeout(limit, fut).await {
            Ok(()) if self.unblocked_since(t0, blocked) <= self.prompt => {}
            Ok(()) => self.fail(format!("{what}: took {:?}, not at once", t0.elapsed())),
            Err(_) => self.fail(format!("{what}: not within {limit:?}")),
        }
    }

    /// Checks a stop (`Election::stop`, `Lock::stop`) or a `Dsync::shutdown` called from inside
    /// the work of `term` (of the lease named `lease`): answered with `StopFromWork` (at once
    /// for a stop; once the other leases have stopped for a shutdown, whose first error may
    /// also be another lease's), and in effect: the term is over.
    async fn stop_from_work(
        &self,
        shutdown: bool,
        lease: String,
        term: &Term,
        drain: Duration,
        call: impl Future<Output = dsync::Result<()>>,
    ) {
        let what = if shutdown {
            "Dsync::shutdown"
        } else {
            "a stop"
        };
        self.stopping_from_work.send_modify(|n| *n += 1);
        let _counted = StopFromWorkGuard(self.stopping_from_work.clone());
        let (t0, blocked) = (Instant::now(), self.blocked());
        let limit = self.stop_bound(drain);
        let Ok(result) = tokio::time::timeout(limit, call).await else {
            self.fail(format!(
                "{what} from inside the work of {lease} term {}: no answer within {limit:?}",
                term.id()
            ));
            return;
        };
        let waited = self.unblocked_since(t0, blocked);
        // The work may have outlived its drain: then the stop is over already.
        let outlived = self
            .oracle
            .end_of(term.id())
            .is_some_and(|ended| Instant::now().duration_since(ended) >= drain);
        let expected = match &result {
            Err(Error::StopFromWork { lease: l }) => *l == lease,
            Err(Error::DrainTimeout { .. }) | Ok(()) if outlived => true,
            Err(
                Error::DrainTimeout { .. }
                | Error::Timeout { .. }
                | Error::Store { .. }
                | Error::Forbidden { .. },
            ) => shutdown,
            _ => false,
        };
        if !expected {
            self.fail(format!(
                "{what} from inside the work of {lease} term {}: {result:?}",
                term.id()
            ));
        }
        if !shutdown && waited > self.prompt {
            self.fail(format!(
                "{what} from inside the work of {lease}: answered after {waited:?}, not at once"
            ));
        }
        if term.is_active() {
            self.fail(format!(
                "{what} from inside the work of {lease} returned {result:?}, but term {} is \
                 still active",
                term.id()
            ));
        }
        match (&result, shutdown) {
            (Err(Error::StopFromWork { .. }), false) => self.bump("stop from work: StopFromWork"),
            (Err(Error::StopFromWork { .. }), true) => {
                self.bump("shutdown from work: StopFromWork")
            }
            (_, false) => self.bump("stop from work: after its drain timed out"),
            (_, true) => self.bump("shutdown from work: another lease's error"),
        }
    }
}

/// How a `when_elected` future or a `with_lock` body spends its term.
struct WorkPlan {
    /// Serve for this long (or until cancelled, unless it ignores cancellation).
    serve: Duration,
    /// Ignores the cancellation while serving.
    ignores: bool,
    /// Keeps running this long after it is done serving, whatever the term does.
    linger: Duration,
    /// Stops its own lease (`Some(false)`) or shuts its replica down (`Some(true)`) from
    /// inside, after serving.
    from_work: Option<bool>,
}

impl WorkPlan {
    fn draw(rng: &mut Rng, ctx: &Ctx, stop_one_in: u64) -> Self {
        let serve = ctx.scaled(rng, 15_000);
        let ignores = rng.below(4) == 0;
        let linger = match rng.below(10) {
            0..=3 => Duration::ZERO,
            4..=7 => ctx.scaled(rng, 3_000),
            // Longer than the renew deadline or the drain timeout, sometimes: the lease may be
            // lost while it drains.
            _ => ctx.scaled(rng, 20_000),
        };
        let from_work = match rng.below(stop_one_in) {
            0 | 1 => Some(false),
            2 => Some(true),
            _ => None,
        };
        WorkPlan {
            serve,
            ignores,
            linger,
            from_work,
        }
    }

    /// Serves `term` as planned (not the stop from inside, nor the linger).
    async fn serve(&self, term: &Term) {
        if self.ignores {
            sleep(self.serve).await;
        } else {
            tokio::select! {
                _ = sleep(self.serve) => {}
                _ = term.cancelled() => {}
            }
        }
    }
}

/// The most a term's work lingers, and the longest drain timeout.
const MAX_LINGER_MS: u64 = 20_000;

// ------------------------------------------------------------------------------------------
// Replicas
// ------------------------------------------------------------------------------------------

/// One process of a replica (a restart is a new process with a new identity).
struct Process {
    id: String,
    dsync: Dsync,
    chaos: Arc<dyn Chaos>,
    drain: Duration,
    /// Set when a shutdown was asked for (by the schedule or from inside work).
    shut: Arc<AtomicBool>,
    /// The `Dsync` as the terms' work sees it; emptied at the end (breaks the cycle through
    /// the `when_elected` callbacks).
    dsync_slot: Arc<Mutex<Option<Dsync>>>,
    elections: Vec<Option<ElectionRun>>,
    worker: Option<JoinHandle<()>>,
    /// The kube client's thread (real apiserver only).
    client_thread: Option<Arbiter>,
}

impl Process {
    fn is_shut(&self) -> bool {
        self.shut.load(Ordering::Relaxed)
    }
}

/// One election actor of a process.
struct ElectionRun {
    election: Election,
    /// Set when a stop was asked for (by the schedule or from inside its work).
    stopping: Arc<AtomicBool>,
    /// Set when that stop has answered: it has taken effect, so asking for the election again
    /// starts a new actor.
    stopped: Arc<AtomicBool>,
    /// The election as its work sees it; emptied at the end.
    slot: Arc<Mutex<Option<Election>>>,
    _witness: Addr<Witness>,
    /// How much longer (ms) the work of the current term takes to return once its term has
    /// ended: set by a handoff under fault, taken by that work.
    slow_drain: Arc<AtomicU64>,
}

impl ElectionRun {
    fn running(&self) -> bool {
        !self.stopping.load(Ordering::Relaxed)
    }

    fn stop_took_effect(&self) -> bool {
        self.stopped.load(Ordering::Relaxed)
    }
}

/// Starts election `e` in `process`, with its witness and its `when_elected` work.
fn start_election(ctx: &Ctx, process: &Process, e: usize, rng: Rng) -> Option<ElectionRun> {
    let election = process.dsync.election(&format!("e{e}")).ok()?;
    let witness = Witness {
        oracle: ctx.oracle.clone(),
        lease: e,
        replica: process.id.clone(),
    }
    .start();
    election.subscribe(witness.clone().recipient()).ok()?;
    let (stopping, stopped) = (Arc::<AtomicBool>::default(), Arc::<AtomicBool>::default());
    let slot = Arc::new(Mutex::new(Some(election.clone())));
    let rng = Arc::new(Mutex::new(rng));
    let (ctx, id, drain) = (ctx.clone(), process.id.clone(), process.drain);
    let (dsync_slot, shut) = (process.dsync_slot.clone(), process.shut.clone());
    let (stop_flags, election_slot) = ((stopping.clone(), stopped.clone()), slot.clone());
    let slow_drain = Arc::<AtomicU64>::default();
    let slow = slow_drain.clone();
    let lease_name = election.lease().to_string();
    election
        .when_elected(move |term| {
            let plan = WorkPlan::draw(&mut rng.lock().unwrap(), &ctx, 40);
            let (ctx, id, lease_name) = (ctx.clone(), id.clone(), lease_name.clone());
            let (dsync_slot, shut) = (dsync_slot.clone(), shut.clone());
            let (stop_flags, election_slot) = (stop_flags.clone(), election_slot.clone());
            let slow = slow.clone();
            async move {
                ctx.oracle.got(e, &id, &term);
                let _work = ctx.works.start(&ctx, &id, e, &term, drain);
                plan.serve(&term).await;
                match plan.from_work {
                    Some(_) if ctx.calm() => {}
                    Some(false) => {
                        let election = election_slot.lock().unwrap().clone();
                        if let Some(election) = election {
                            trace(format_args!("{id}: e{e}'s work stops its election"));
                            stop_flags.0.store(true, Ordering::Relaxed);
                            ctx.stop_from_work(false, lease_name, &term, drain, election.stop())
                                .await;
                            stop_flags.1.store(true, Ordering::Relaxed);
                        }
                    }
                    Some(true) => {
                        let dsync = dsync_slot.lock().unwrap().clone();
                        if let Some(dsync) = dsync {
                            trace(format_args!("{id}: e{e}'s work shuts its replica down"));
                            shut.store(true, Ordering::Relaxed);
                            ctx.note_shutdown(dsync.identity(), false);
                            ctx.stop_from_work(true, lease_name, &term, drain, dsync.shutdown())
                                .await;
                        }
                    }
                    None => {}
                }
                if !plan.ignores && plan.from_work.is_none() {
                    term.cancelled().await;
                }
                // Wrapping up, whatever the term does.
                sleep(plan.linger).await;
                if !term.is_active() {
                    let extra = slow.swap(0, Ordering::Relaxed);
                    if extra > 0 {
                        sleep(Duration::from_millis(extra)).await;
                        ctx.bump("when_elected drained slowly after a handoff");
                    }
                }
                if !plan.linger.is_zero() {
                    ctx.bump("when_elected lingered");
                }
            }
        })
        .ok()?;
    Some(ElectionRun {
        election,
        stopping,
        stopped,
        slot,
        _witness: witness,
        slow_drain,
    })
}

// ------------------------------------------------------------------------------------------
// Lock workers
// ------------------------------------------------------------------------------------------

/// What a lock worker knows of its process.
#[derive(Clone)]
struct WorkerEnv {
    ctx: Ctx,
    id: String,
    dsync: Dsync,
    shut: Arc<AtomicBool>,
    drain: Duration,
}

/// A replica's lock loop: takes the lock one way or another, holds it for a while or until its
/// term ends, lets it go one way or another, pauses. Errors are part of the schedule; a
/// `Stopped` lock gets a new handle, a shut-down replica ends the loop.
async fn lock_worker(env: WorkerEnv, mut rng: Rng) {
    let Ok(mut lock) = env.dsync.lock("shared") else {
        return;
    };
    loop {
        let mode = rng.below(10);
        let result = match mode {
            0 | 1 => {
                let wait = env.ctx.scaled(&mut rng, 20_000);
                match lock.lock_timeout(wait).await {
                    Ok(term) => held(&env, &mut lock, &mut rng, term).await,
                    Err(e) => Err(e),
                }
            }
            2 => match lock.try_lock().await {
                Ok(term) => held(&env, &mut lock, &mut rng, term).await,
                Err(e) => Err(e),
            },
            3 => with_cancel(&env, &mut lock, &mut rng).await,
            4..=6 => with_lock(&env, &lock, &mut rng).await,
            7 => temporary_handle(&env, &mut rng).await,
            _ => abandon(&env, &mut lock, &mut rng).await,
        };
        match result {
            Err(Error::Stopped { .. }) => match env.dsync.lock("shared") {
                Ok(fresh) => lock = fresh,
                Err(_) => return, // shut down
            },
            // Only `try_lock` may find the lock taken; any other way means this handle holds
            // a lock it never received.
            Err(e @ Error::AlreadyLocked { .. }) if mode != 2 => env.ctx.fail(format!(
                "{}: a lock() of a handle that holds nothing: {e:?}",
                env.id
            )),
            _ => {}
        }
        sleep(env.ctx.scaled(&mut rng, 3_000)).await;
    }
}

/// The caller holds `term` from `lock`: hold it for a while or until it ends, then unlock, or
/// drop the handle instead (its term then ends at once).
async fn held(env: &WorkerEnv, lock: &mut Lock, rng: &mut Rng, term: Term) -> dsync::Result<()> {
    let ctx = &env.ctx;
    ctx.oracle.got(LOCK, &env.id, &term);
    tokio::select! {
        _ = sleep(ctx.scaled(rng, 8_000)) => {}
        _ = term.cancelled() => {}
    }
    if rng.below(4) == 0 {
        ctx.bump("lock: handle dropped while holding");
        let fresh = env.dsync.lock("shared");
        let old = match fresh {
            Ok(fresh) => std::mem::replace(lock, fresh),
            Err(_) => lock.clone(), // shut down: the term ends with the shutdown
        };
        drop(old);
        ctx.promptly(
            &format!("{}: the term of a dropped lock handle ends", env.id),
            term.cancelled(),
        )
        .await;
        return Ok(());
    }
    let result = lock.unlock().await;
    if term.is_active() {
        ctx.fail(format!(
            "{}: unlock returned {result:?} but its term {} is active",
            env.id,
            term.id()
        ));
    }
    result
}

/// `lock_with_cancel` with a token cancelled at a random time (before or after the grant).
async fn with_cancel(env: &WorkerEnv, lock: &mut Lock, rng: &mut Rng) -> dsync::Result<()> {
    let token = CancellationToken::new();
    let (cancel, after) = (token.clone(), env.ctx.scaled(rng, 20_000));
    actix::spawn(async move {
        sleep(after).await;
        cancel.cancel();
    });
    match lock.lock_with_cancel(token).await {
        Ok(term) => held(env, lock, rng, term).await,
        Err(Error::Cancelled { .. }) => {
            env.ctx.bump("lock: lock_with_cancel cancelled");
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// `with_lock`, sometimes dropped (a timeout) while waiting or while the body runs. The body
/// serves, may ignore its cancellation or linger after it, and may stop the lock or shut the
/// replica down from inside.
async fn with_lock(env: &WorkerEnv, lock: &Lock, rng: &mut Rng) -> dsync::Result<()> {
    let ctx = &env.ctx;
    let plan = WorkPlan::draw(rng, ctx, 20);
    let give_up = ctx.scaled(rng, 20_000) + ctx.scaled(rng, 15_000);
    let got: Rc<RefCell<Option<Term>>> = Rc::default();
    let (slot, handle, lease_name) = (got.clone(), lock.clone(), lock.lease().to_string());
    let body = move |term: Term| async move {
        *slot.borrow_mut() = Some(term.clone());
        ctx.oracle.got(LOCK, &env.id, &term);
        let _work = ctx.works.start(ctx, &env.id, LOCK, &term, env.drain);
        plan.serve(&term).await;
        match plan.from_work {
            Some(_) if ctx.calm() => {}
            Some(false) => {
                trace(format_args!("{}: a with_lock body stops its lock", env.id));
                ctx.stop_from_work(false, lease_name, &term, env.drain, handle.stop())
                    .await;
            }
            Some(true) => {
                trace(format_args!(
                    "{}: a with_lock body shuts its replica down",
                    env.id
                ));
                env.shut.store(true, Ordering::Relaxed);
                ctx.note_shutdown(env.dsync.identity(), false);
                ctx.stop_from_work(true, lease_name, &term, env.drain, env.dsync.shutdown())
                    .await;
            }
            None => {}
        }
        sleep(plan.linger).await;
        if !plan.linger.is_zero() {
            ctx.bump("with_lock body lingered");
        }
    };
    let result = tokio::time::timeout(give_up, lock.with_lock(body)).await;
    let term = got.borrow_mut().take();
    match result {
        Ok(result) => {
            if let Some(term) = term {
                if term.is_active() {
                    ctx.fail(format!(
                        "{}: with_lock returned {result:?} but its term {} is active",
                        env.id,
                        term.id()
                    ));
                }
                // An output handed back as a success must have been computed under the lock.
                if result.is_ok() && term.lost() {
                    ctx.fail(format!(
                        "{}: with_lock returned Ok but its term {} was lost",
                        env.id,
                        term.id()
                    ));
                }
            }
            if matches!(result, Err(dsync::lock::WithLockError::Lost { .. })) {
                ctx.bump("lock: with_lock reported its lock lost");
            }
            result.map_err(Error::from)
        }
        Err(_) => {
            if let Some(term) = term {
                ctx.bump("lock: with_lock dropped while its body ran");
                ctx.promptly(
                    &format!("{}: the term of a dropped with_lock ends", env.id),
                    term.cancelled(),
                )
                .await;
            }
            Ok(())
        }
    }
}

/// `dsync.lock("shared")?.lock()` keeping the term but not the handle: the term ends at once.
async fn temporary_handle(env: &WorkerEnv, rng: &mut Rng) -> dsync::Result<()> {
    let wait = env.ctx.scaled(rng, 20_000);
    let dsync = env.dsync.clone();
    let got = tokio::time::timeout(wait, async move { dsync.lock("shared")?.lock().await }).await;
    match got {
        Ok(Ok(term)) => {
            env.ctx.oracle.got(LOCK, &env.id, &term);
            env.ctx.bump("lock: temporary handle dropped");
            env.ctx
                .promptly(
                    &format!("{}: the term of a temporary lock handle ends", env.id),
                    term.cancelled(),
                )
                .await;
            Ok(())
        }
        Ok(Err(e)) => Err(e),
        Err(_) => Ok(()),
    }
}

/// A `lock()` future dropped before it returned: after one poll, on a short timer, or right
/// after its grant was sent (a grant nobody received is given back at once).
async fn abandon(env: &WorkerEnv, lock: &mut Lock, rng: &mut Rng) -> dsync::Result<()> {
    let ctx = &env.ctx;
    match rng.below(3) {
        0 => {
            let first = {
                let fut = lock.lock();
                tokio::pin!(fut);
                futures::poll!(fut.as_mut())
            };
            match first {
                Poll::Ready(Ok(term)) => held(env, lock, rng, term).await,
                Poll::Ready(Err(e)) => Err(e),
                Poll::Pending => {
                    ctx.bump("lock: abandoned after one poll");
                    Ok(())
                }
            }
        }
        1 => {
            let short = ctx.scaled(rng, 2_000);
            let got = tokio::select! {
                biased;
                _ = sleep(short) => None,
                r = lock.lock() => Some(r),
            };
            match got {
                Some(Ok(term)) => held(env, lock, rng, term).await,
                Some(Err(e)) => Err(e),
                None => {
                    ctx.bump("lock: abandoned on a timer");
                    Ok(())
                }
            }
        }
        _ => {
            let wait = ctx.scaled(rng, 20_000);
            let mut status = lock.watch_status();
            let got = {
                let fut = lock.lock();
                tokio::pin!(fut);
                let raced = async {
                    tokio::select! {
                        // Granted (the grant is on its way to `fut`, which is not polled
                        // again): drop it unreceived.
                        biased;
                        s = status.wait_for(|s| s.term.is_some()) => {
                            Err(s.ok().and_then(|s| s.term.clone()))
                        }
                        r = &mut fut => Ok(r),
                    }
                };
                tokio::time::timeout(wait, raced).await
            };
            match got {
                Ok(Ok(Ok(term))) => held(env, lock, rng, term).await,
                Ok(Ok(Err(e))) => Err(e),
                Ok(Err(Some(term))) => {
                    ctx.bump("lock: grant dropped unreceived");
                    ctx.promptly(
                        &format!("{}: a grant dropped before it was received ends", env.id),
                        term.cancelled(),
                    )
                    .await;
                    Ok(())
                }
                Ok(Err(None)) | Err(_) => Ok(()),
            }
        }
    }
}

// ------------------------------------------------------------------------------------------
// One seed
// ------------------------------------------------------------------------------------------

/// What a seed found.
#[derive(Default)]
struct Totals {
    seeds: u64,
    election_terms: u64,
    lock_terms: u64,
    stats: BTreeMap<&'static str, u64>,
}

/// A new process's link to the store: the store it uses, the faults the schedule plays on it,
/// and (real apiserver) the thread its kube client runs on.
async fn link(
    backend: &Backend,
    memory: &MemoryStore,
) -> (Arc<dyn Chaos>, FaultyStore, Option<Arbiter>) {
    let Backend::Kube { admin, .. } = backend else {
        let faults = FaultyStore::new(memory.clone());
        return (Arc::new(faults.clone()), faults, None);
    };
    // The client (and its connection tasks) lives on a thread of its own, so blocking the
    // test's thread blocks only what runs there.
    let http = KubeFaults::default();
    let thread = Arbiter::new();
    let (tx, rx) = oneshot::channel();
    let (h, admin) = (http.clone(), admin.clone());
    thread.spawn(async move {
        let _ = tx.send(h.client(&admin).await);
    });
    let client = rx.await.expect("a kube client");
    let store = FaultyStore::new(KubeStore::new(client).with_call_timeout(KUBE_CALL_TIMEOUT));
    let chaos = KubeChaos {
        http,
        store: store.clone(),
    };
    (Arc::new(chaos), store, Some(thread))
}

struct Seed {
    ctx: Ctx,
    backend: Backend,
    rng: Rng,
    store: MemoryStore,
    namespace: String,
    processes: Vec<Process>,
    retired: Vec<Process>,
    generations: Vec<u32>,
    chaos: Vec<Arc<dyn Chaos>>,
    /// Spawned checks (stops and shutdowns from the schedule), awaited at the end.
    checks: Vec<JoinHandle<()>>,
    /// Spawned fault timers (clearing faults that last), aborted at the end.
    timers: Vec<JoinHandle<()>>,
    election_slots: Vec<Arc<Mutex<Option<Election>>>>,
    /// Live processes sharing the identity of another (twins), shut down before the heal.
    twins: Vec<Process>,
    /// A lease an administrator deleted or reset, and the token it had: until the lease
    /// carries a higher one again, no new process starts (one that never saw the lease could
    /// not know its token: the documented limit of rule `token-never-back`).
    fragile: Option<(LeaseKey, i32)>,
    /// Whether the versions went back already (once per seed).
    rewound: bool,
}

impl Seed {
    /// Starts a new process of replica `index` (with its lock worker, unless `worker` is
    /// false).
    async fn start_process(&mut self, index: usize, worker: bool) -> Process {
        self.start_process_as(index, worker, None).await
    }

    /// Like `start_process`; with `twin_of`, the process carries that identity (a second live
    /// process with one identity) and is known to the oracle as `<identity>~twin<n>`.
    async fn start_process_as(
        &mut self,
        index: usize,
        worker: bool,
        twin_of: Option<String>,
    ) -> Process {
        let generation = self.generations[index];
        self.generations[index] += 1;
        let (id, identity) = match twin_of {
            Some(identity) => (format!("{identity}~twin{generation}"), identity),
            None => {
                let id = format!("r{index}g{generation}");
                (id.clone(), id)
            }
        };
        let (chaos, store, client_thread) = link(&self.backend, &self.store).await;
        self.chaos.push(chaos.clone());
        // Each process's wall clock is off by up to ten minutes, either way.
        let skew = self.rng.millis(600_000);
        store.set_clock_skew(Some(if self.rng.below(2) == 0 {
            ClockSkew::Ahead(skew)
        } else {
            ClockSkew::Behind(skew)
        }));
        let drain = if self.rng.below(2) == 0 {
            DEFAULT_DRAIN_TIMEOUT
        } else {
            Duration::from_millis(1_000 + self.rng.below(14_001))
        }
        .mul_f64(self.ctx.scale);
        let thread = match self.backend {
            // Real apiserver: replica 0's lease actors run on the test's own thread (which the
            // schedule blocks now and then), the others' on dsync's own threads.
            Backend::Kube { .. } if index > 0 => LeaseThread::Dedicated,
            _ => LeaseThread::Current,
        };
        let dsync = Dsync::with_config(
            store,
            Config::default()
                .with_namespace(&*self.namespace)
                .with_identity(&*identity)
                .with_timing(self.ctx.timing)
                .with_drain_timeout(drain)
                .with_lease_thread(thread),
        )
        .unwrap();
        let mut process = Process {
            id,
            dsync_slot: Arc::new(Mutex::new(Some(dsync.clone()))),
            dsync,
            chaos,
            drain,
            shut: Arc::default(),
            elections: Vec::new(),
            worker: None,
            client_thread,
        };
        for e in 0..ELECTIONS {
            let run = start_election(&self.ctx, &process, e, Rng(self.rng.next()));
            if let Some(run) = &run {
                self.election_slots.push(run.slot.clone());
            }
            process.elections.push(run);
        }
        if worker {
            let env = WorkerEnv {
                ctx: self.ctx.clone(),
                id: process.id.clone(),
                dsync: process.dsync.clone(),
                shut: process.shut.clone(),
                drain,
            };
            process.worker = Some(actix::spawn(lock_worker(env, Rng(self.rng.next()))));
        }
        process
    }

    /// Runs `call` (a stop or shutdown of `replica`'s `lease`, or of all its leases) in the
    /// background, and checks that it answers within its bound, without `StopFromWork`, and
    /// that every term it stops has ended by then.
    fn check_stop(
        &mut self,
        what: String,
        replica: String,
        lease: Option<usize>,
        drain: Duration,
        call: impl Future<Output = dsync::Result<()>> + 'static,
    ) {
        let ctx = self.ctx.clone();
        let limit = ctx.stop_bound(drain);
        self.checks.push(actix::spawn(async move {
            let t0 = Instant::now();
            match tokio::time::timeout(limit, call).await {
                Err(_) => ctx.fail(format!("{what}: no answer within {limit:?}")),
                Ok(Err(e @ Error::StopFromWork { .. })) => {
                    ctx.fail(format!("{what}, not from any work: {e:?}"));
                }
                Ok(result) => {
                    trace(format_args!("{what}: {result:?}"));
                    if let Err(Error::DrainTimeout { .. }) = result {
                        ctx.bump("stop or shutdown: drain timed out");
                    }
                    for span in ctx.oracle.active_terms(&replica, lease, t0) {
                        ctx.fail(format!(
                            "{what} returned {result:?} while a term it stops is active: \
                             {span:?}"
                        ));
                    }
                }
            }
        }));
    }

    /// Stops a running election of replica `r` (in the background), or starts a stopped one
    /// again once its stop has taken effect.
    fn stop_or_start_election(&mut self, r: usize) {
        let e = self.rng.below(ELECTIONS as u64) as usize;
        let process = &self.processes[r];
        if process.is_shut() {
            return;
        }
        match &process.elections[e] {
            Some(run) if run.running() => {
                trace(format_args!("stopping {}'s e{e}", process.id));
                run.stopping.store(true, Ordering::Relaxed);
                let (id, drain) = (process.id.clone(), process.drain);
                let (election, stopped) = (run.election.clone(), run.stopped.clone());
                self.check_stop(
                    format!("the stop of {id}'s e{e}"),
                    id,
                    Some(e),
                    drain,
                    async move {
                        let result = election.stop().await;
                        stopped.store(true, Ordering::Relaxed);
                        result
                    },
                );
            }
            Some(run) if !run.stop_took_effect() => {} // asking now would get the old actor
            _ => {
                trace(format_args!("starting {}'s e{e} again", process.id));
                self.start_election_again(r, e);
            }
        }
    }

    /// Hands a running election of replica `r` to another replica (or to an identity nobody
    /// has), in the background, whether or not `r` leads it. A handoff that succeeded (or ran
    /// out of drain time) must have ended the term it hands off; a handoff is never refused
    /// for being called from work it is not called from.
    fn hand_off(&mut self, r: usize) {
        let e = self.rng.below(ELECTIONS as u64) as usize;
        self.hand_off_election(r, e);
    }

    /// [`hand_off`](Self::hand_off) of election `e`.
    fn hand_off_election(&mut self, r: usize, e: usize) {
        let n = self.processes.len();
        let to = match self.rng.below(n as u64 + 1) as usize {
            i if i < n => self.processes[i].id.clone(),
            _ => "pod-gone".to_owned(),
        };
        let process = &self.processes[r];
        let Some(run) = process.elections[e].as_ref().filter(|run| run.running()) else {
            return;
        };
        if process.is_shut() {
            return;
        }
        let (id, election) = (process.id.clone(), run.election.clone());
        let ctx = self.ctx.clone();
        let limit = ctx.stop_bound(process.drain);
        trace(format_args!("{id} hands e{e} to {to}"));
        self.checks.push(actix::spawn(async move {
            let t0 = Instant::now();
            let what = format!("{id}'s handoff of e{e} to {to}");
            let call = election.handoff_to(&to);
            // Every handoff returns, whatever happened to its term (rule
            // `handoff-ends-with-its-term`): within the drain timeout and a release retried
            // until its renew deadline, as a stop.
            match tokio::time::timeout(limit, call).await {
                Err(_) => ctx.fail(format!("{what}: no answer within {limit:?}")),
                Ok(Err(e @ Error::HandoffFromWork { .. })) => {
                    ctx.fail(format!("{what}, not from any work: {e:?}"));
                }
                Ok(result) => {
                    trace(format_args!("{what}: {result:?}"));
                    ctx.bump(match &result {
                        Ok(()) => "handoff: done",
                        Err(Error::NotLeader { .. }) => "handoff: not the leader",
                        Err(Error::HandoffInProgress { .. }) => "handoff: another in progress",
                        Err(Error::DrainTimeout { .. }) => "handoff: drain timed out",
                        Err(_) => "handoff: failed",
                    });
                    if matches!(result, Ok(()) | Err(Error::DrainTimeout { .. })) && to != id {
                        for span in ctx.oracle.active_terms(&id, Some(e), t0) {
                            ctx.fail(format!(
                                "{what} returned {result:?} while the term it hands off is \
                                 active: {span:?}"
                            ));
                        }
                    }
                }
            }
        }));
    }

    /// A handoff (see [`hand_off`](Self::hand_off)) while replica `r`'s link misbehaves: the
    /// next write's reply is lost (before the handoff, so it may be the release, or later, so
    /// it may be a renewal during the drain or the release after it); or, a little after the
    /// handoff began (while its term's work may still drain, some of it for longer than the
    /// renew deadline), a partition, every write refused with 403 or 422, or every write
    /// failing with 503 (the lease is lost during the drain), for a while; that last one also
    /// with every other replica cut off for longer, so that the replica handing off may be
    /// the one to take the lease again after its drain.
    fn hand_off_under_fault(&mut self, r: usize) {
        let chaos = self.processes[r].chaos.clone();
        let others: Vec<Arc<dyn Chaos>> = (0..self.processes.len())
            .filter(|&i| i != r)
            .map(|i| self.processes[i].chaos.clone())
            .collect();
        let fault = self.rng.below(7);
        let e = self.rng.below(ELECTIONS as u64) as usize;
        let scale = self.ctx.scale;
        let ms = |ms: u64| Duration::from_millis(ms).mul_f64(scale);
        let inject_after = self.ctx.scaled(&mut self.rng, 4_000);
        let mut clear_after = self.ctx.scaled(&mut self.rng, 25_000);
        // The handed-off term's work takes this much longer to return once cancelled: often
        // past the renew deadline, so the lease may be lost while it drains.
        let mut slow = self.ctx.scaled(&mut self.rng, 30_000);
        let mut others_for = self.ctx.scaled(&mut self.rng, 20_000);
        if fault == 6 {
            // Writes fail past the renew deadline; the work returns after they heal; the
            // others come back later still.
            clear_after = ms(12_000) + self.ctx.scaled(&mut self.rng, 8_000);
            slow = inject_after + clear_after + ms(3_000) + self.ctx.scaled(&mut self.rng, 5_000);
            others_for = slow - inject_after - clear_after
                + ms(5_000)
                + self.ctx.scaled(&mut self.rng, 10_000);
        }
        if let Some(run) = &self.processes[r].elections[e]
            && run.election.is_leader()
        {
            run.slow_drain
                .store(slow.as_millis() as u64, Ordering::Relaxed);
        }
        if fault == 0 {
            chaos.lose_next_response(Call::Replace);
        }
        self.hand_off_election(r, e);
        self.ctx.bump(match fault {
            0 => "handoff under fault: reply lost at once",
            1 => "handoff under fault: reply lost later",
            2 => "handoff under fault: partition",
            3 => "handoff under fault: writes refused (403)",
            4 => "handoff under fault: writes refused (422)",
            5 => "handoff under fault: writes fail (503), lease lost",
            _ => "handoff under fault: writes fail (503), lease lost, others cut off",
        });
        if fault == 0 {
            return;
        }
        trace(format_args!(
            "handoff fault {fault} in {inject_after:?} for {clear_after:?}"
        ));
        self.timers.push(actix::spawn(async move {
            sleep(inject_after).await;
            match fault {
                1 => {
                    chaos.lose_next_response(Call::Replace);
                    return;
                }
                2 => chaos.partition(),
                3 => chaos.fail_always(Call::Replace, Refusal::Forbidden),
                4 => chaos.fail_always(Call::Replace, Refusal::Invalid),
                _ => chaos.fail_always(Call::Replace, Refusal::Unavailable),
            }
            if fault == 6 {
                for other in &others {
                    other.partition();
                }
            }
            sleep(clear_after).await;
            chaos.heal();
            chaos.clear();
            if fault == 6 {
                sleep(others_for).await;
                for other in &others {
                    other.heal();
                }
            }
        }));
    }

    /// Replica `r` asks, on the lease, for a handoff of a random election to a live replica
    /// or to an identity nobody has (`Dsync::request_handoff`, what
    /// `kubectl annotate lease` does). Whatever it answers, it answers within its bound.
    fn request_handoff(&mut self, r: usize) {
        let e = self.rng.below(ELECTIONS as u64) as usize;
        let n = self.processes.len();
        let to = match self.rng.below(n as u64 + 1) as usize {
            i if i < n => self.processes[i].id.clone(),
            _ => "pod-gone".to_owned(),
        };
        let process = &self.processes[r];
        if process.is_shut() {
            return;
        }
        let (id, dsync, ctx) = (process.id.clone(), process.dsync.clone(), self.ctx.clone());
        // A read and a write per attempt, each bounded by the renew deadline.
        let attempts = dsync::admin::ATTEMPTS as u32;
        let limit = ctx.timing.renew_deadline() * 2 * attempts + ctx.slack + ctx.max_block;
        trace(format_args!(
            "{id} asks on the lease for a handoff of e{e} to {to}"
        ));
        self.checks.push(actix::spawn(async move {
            let name = format!("e{e}");
            let call = dsync.request_handoff(&name, &to);
            match tokio::time::timeout(limit, call).await {
                Err(_) => ctx.fail(format!(
                    "{id}'s request for a handoff of e{e} to {to}: no answer within {limit:?}"
                )),
                Ok(result) => {
                    trace(format_args!(
                        "{id}'s request for a handoff of e{e} to {to}: {result:?}"
                    ));
                    ctx.bump(match result {
                        Ok(_) => "handoff requested on the lease",
                        Err(_) => "handoff request: refused or failed",
                    });
                }
            }
        }));
    }

    /// Starts election `e` of replica `r` (anew: the old actor, if any, has stopped or is
    /// stopping).
    fn start_election_again(&mut self, r: usize, e: usize) {
        let rng = Rng(self.rng.next());
        let run = start_election(&self.ctx, &self.processes[r], e, rng);
        if let Some(run) = &run {
            self.election_slots.push(run.slot.clone());
        }
        self.processes[r].elections[e] = run;
    }

    /// Stops replica `r`'s lock actor (for every handle) in the background.
    fn stop_lock(&mut self, r: usize) {
        let process = &self.processes[r];
        if process.is_shut() {
            return;
        }
        let Ok(lock) = process.dsync.lock("shared") else {
            return;
        };
        trace(format_args!("stopping {}'s lock", process.id));
        let (id, drain) = (process.id.clone(), process.drain);
        self.check_stop(
            format!("the stop of {id}'s lock"),
            id,
            Some(LOCK),
            drain,
            async move { lock.stop().await },
        );
    }

    /// Shuts replica `r` down (in the background), or starts it again as a new process if it
    /// is down.
    async fn shut_down_or_restart(&mut self, r: usize) {
        if self.processes[r].is_shut() {
            if self.is_fragile().await {
                return;
            }
            self.restart(r, true).await;
            return;
        }
        let process = &self.processes[r];
        trace(format_args!("shutting {} down", process.id));
        process.shut.store(true, Ordering::Relaxed);
        let (id, drain, dsync) = (process.id.clone(), process.drain, process.dsync.clone());
        self.check_stop(
            format!("the shutdown of {id}"),
            id,
            None,
            drain,
            ctx_shutdown(&self.ctx, dsync),
        );
    }

    /// The admin's view of the store (not behind any replica's faults).
    async fn admin_store(&self) -> Arc<dyn LeaseStore> {
        match &self.backend {
            Backend::Memory => Arc::new(self.store.clone()),
            Backend::Kube { admin, .. } => Arc::new(kube_store(admin).await),
        }
    }

    fn lease_key(&self, lease: usize) -> LeaseKey {
        let name = if lease == LOCK {
            "unscoped.lock.shared".to_owned()
        } else {
            format!("unscoped.election.e{lease}")
        };
        LeaseKey::new(&*self.namespace, name)
    }

    /// Whether a lease an administrator deleted or reset still carries no token above the
    /// one it had: then no new process may start (see `fragile`).
    async fn is_fragile(&mut self) -> bool {
        let Some((key, token)) = self.fragile.clone() else {
            return false;
        };
        match self.admin_store().await.get(&key).await {
            Ok(lease) if lease.record.lease_transitions.unwrap_or(0) > token => {
                self.fragile = None;
                false
            }
            _ => true,
        }
    }

    /// Every live process (twins too).
    fn live(&self) -> impl Iterator<Item = &Process> {
        self.processes
            .iter()
            .chain(self.twins.iter())
            .filter(|p| !p.is_shut())
    }

    /// An operator's or the platform's action on a random lease: a delete, an edit (reset
    /// the transitions and clear the holder, or name another holder), a force release, a twin
    /// process with the identity of replica `r`, or the versions going back (an etcd
    /// restore). A delete or reset is made only when every live process has seen the lease's
    /// token (a process that never saw it cannot know it: the documented limit of rule
    /// `token-never-back`, which the server-side Lease guard closes).
    async fn operate(&mut self, r: usize) {
        let lease = self.rng.below(LEASES as u64) as usize;
        let key = self.lease_key(lease);
        // Deletes and resets only of elections: the lock is taken again only at the end, by
        // any process, maybe a new one.
        let election = lease < ELECTIONS;
        let store = self.admin_store().await;
        let current = match store.get(&key).await {
            Ok(current) => current,
            Err(_) => return, // not created yet (or just deleted)
        };
        let token = current.record.lease_transitions.unwrap_or(0);
        let all_saw = self
            .live()
            .all(|p| p.dsync.fencing_floor(&key).is_some_and(|f| f >= token));
        let action = self.rng.below(6);
        trace(format_args!("operator action {action} on {}", key.name));
        match action {
            0 if election && all_saw && self.fragile.is_none() => {
                let deleted = match &self.backend {
                    Backend::Memory => self.store.delete(&key).is_ok(),
                    Backend::Kube { admin, .. } => {
                        use k8s_openapi::api::coordination::v1::Lease;
                        let api: kube::Api<Lease> = kube::Api::namespaced(
                            support::apiserver::client(admin).await,
                            &key.namespace,
                        );
                        api.delete(&key.name, &Default::default()).await.is_ok()
                    }
                };
                if deleted {
                    self.fragile = Some((key, token));
                    self.ctx.bump("operator: lease deleted");
                }
            }
            1 if election && all_saw && self.fragile.is_none() => {
                let mut record = current.record.clone();
                record.holder_identity = None;
                record.lease_transitions = Some(0);
                if store
                    .replace(&key, record, &current.resource_version)
                    .await
                    .is_ok()
                {
                    self.fragile = Some((key, token));
                    self.ctx.bump("operator: transitions reset, holder cleared");
                }
            }
            2 => {
                // Another replica's identity (maybe live), or one nobody has.
                let n = self.processes.len();
                let holder = match self.rng.below(n as u64 + 1) as usize {
                    i if i < n => self.processes[i].id.clone(),
                    _ => "pod-ghost".to_owned(),
                };
                let mut record = current.record.clone();
                record.holder_identity = Some(holder);
                if store
                    .replace(&key, record, &current.resource_version)
                    .await
                    .is_ok()
                {
                    self.ctx.bump("operator: holder replaced");
                }
            }
            3 => {
                let process = &self.processes[r];
                if !process.is_shut()
                    && matches!(
                        process.dsync.force_release(&key).await,
                        Ok(dsync::admin::ForceReleased {
                            previous_holder: Some(_),
                            ..
                        })
                    )
                {
                    self.ctx.bump("operator: force release");
                }
            }
            4 if !self.processes[r].is_shut() && !self.is_fragile().await => {
                let identity = self.processes[r].id.clone();
                let twin = self.start_process_as(r, false, Some(identity)).await;
                trace(format_args!(
                    "a twin of {} starts as {}",
                    self.processes[r].id, twin.id
                ));
                self.twins.push(twin);
                self.ctx.bump("operator: twin process started");
            }
            5 if !self.rewound => {
                // Every live process sees the versions go back by the same amount, less than
                // any version the namespace has.
                let Ok(leases) = store.list(&self.namespace).await else {
                    return;
                };
                let min = leases
                    .iter()
                    .filter_map(|l| l.resource_version.parse::<u64>().ok())
                    .min()
                    .unwrap_or(0);
                let by = min.saturating_sub(1) / 2;
                if by == 0 {
                    return;
                }
                for process in self.processes.iter().chain(self.twins.iter()) {
                    process.chaos.rewind_versions(by);
                }
                self.rewound = true;
                self.ctx.bump("operator: versions went back");
            }
            _ => {}
        }
    }

    async fn restart(&mut self, r: usize, worker: bool) {
        let fresh = self.start_process(r, worker).await;
        trace(format_args!(
            "{} starts as {}",
            self.processes[r].id, fresh.id
        ));
        self.ctx.bump("replica restarted");
        let old = std::mem::replace(&mut self.processes[r], fresh);
        self.retired.push(old);
    }

    async fn play(&mut self) {
        let n = self.processes.len() as u64;
        // In real time, fewer and denser steps keep a seed short (the blocks add to it).
        let (steps, pauses) = if self.backend.is_kube() {
            (8 + self.rng.below(9), 8_000)
        } else {
            (10 + self.rng.below(15), 12_000)
        };
        for _ in 0..steps {
            let pause = self.ctx.scaled(&mut self.rng, pauses);
            sleep(pause).await;
            let r = self.rng.below(n) as usize;
            let action = self.rng.below(25);
            let chaos = self.processes[r].chaos.clone();
            trace(format_args!(
                "step: {} action {action}",
                self.processes[r].id
            ));
            let call =
                [Call::Get, Call::Create, Call::Replace, Call::Any][self.rng.below(4) as usize];
            match action {
                0 | 1 => chaos.partition(),
                2 | 3 => chaos.heal(),
                4 => chaos.set_latency(self.ctx.scaled(&mut self.rng, 3_000)),
                // A 409 storm: the next several writes conflict.
                5 => chaos.conflict_storm(1 + self.rng.below(8)),
                // The write lands but its response is lost.
                6 => chaos.lose_next_response(
                    [Call::Replace, Call::Create, Call::Any][self.rng.below(3) as usize],
                ),
                7 => chaos.fail_next_503(),
                8 => chaos.drop_watches(),
                // Faults that last for a while: 503s, a revoked role, calls that hang.
                9..=11 => {
                    match action {
                        9 => chaos.fail_always(call, Refusal::Unavailable),
                        10 if self.rng.below(2) == 0 => chaos.fail_always(call, Refusal::Invalid),
                        10 => chaos.fail_always(call, Refusal::Forbidden),
                        _ => chaos.stall(call),
                    }
                    self.ctx.bump(match action {
                        9 => "fault: persistent 503s",
                        10 => "fault: persistent Forbidden or Invalid",
                        _ => "fault: stalled calls",
                    });
                    let after = self.ctx.scaled(&mut self.rng, 30_000);
                    self.timers.push(actix::spawn(async move {
                        sleep(after).await;
                        chaos.clear();
                    }));
                }
                12 => chaos.clear(),
                13 | 14 => self.stop_or_start_election(r),
                15 => self.stop_lock(r),
                16 => self.shut_down_or_restart(r).await,
                17 => self.hand_off(r),
                // What operators and the platform do to a Lease.
                18 | 19 => self.operate(r).await,
                // Handoffs while the store misbehaves: replies lost, partitions, refusals and
                // leases lost while the handed-off term's work drains (rule
                // `handoff-ends-with-its-term`, `refusal-during-drain`).
                21..=23 => self.hand_off_under_fault(r),
                24 => self.request_handoff(r),
                _ if self.backend.is_kube() => {
                    // The test's thread (the terms' work, the lock callers, replica 0's lease
                    // actors) stops for 1 to 1.5 lease durations: replica 0 cannot renew, the
                    // others take over, and nobody runs to tell replica 0's callers.
                    let blocked = Duration::from_millis(15_000 + self.rng.below(7_501))
                        .mul_f64(self.ctx.scale);
                    trace(format_args!("blocking the test thread for {blocked:?}"));
                    std::thread::sleep(blocked);
                    let nanos = blocked.as_nanos() as u64;
                    self.ctx.blocked.fetch_add(nanos, Ordering::Relaxed);
                    self.ctx.bump("test thread blocked");
                }
                _ => self.stop_or_start_election(r),
            }
        }
    }

    /// Heals everything, restarts what is down, and checks that every election has a leader and
    /// the lock a holder again within the bound; then shuts everything down and checks.
    async fn heal_and_check(&mut self) -> [usize; LEASES] {
        let ctx = self.ctx.clone();
        let t = ctx.timing;
        // Whatever was stopping drains (up to the drain timeout, or the linger of work whose
        // term was lost), then the lease expires; then a leader within a lease duration and a
        // few retries. On the real apiserver, plus a lease duration for calls hung by a
        // partition to time out and watches to come back.
        let linger = Duration::from_millis(MAX_LINGER_MS).mul_f64(ctx.scale);
        let bound = linger + t.lease_duration() * 2 + t.retry_period() * 4 + ctx.slack;
        trace(format_args!("healing"));
        ctx.calm.store(true, Ordering::Relaxed);
        for process in self.processes.iter_mut().chain(self.retired.iter_mut()) {
            if let Some(worker) = process.worker.take() {
                worker.abort();
            }
        }
        for timer in self.timers.drain(..) {
            timer.abort();
        }
        // (A 409 storm queued behind a partition would otherwise still be pending, and each
        // conflict after the first is backed off by a retry period.)
        for chaos in &self.chaos {
            chaos.heal();
            chaos.clear();
            chaos.set_latency(Duration::ZERO);
        }
        // Twins end first (the survivors' elections are checked for a leader below).
        for twin in std::mem::take(&mut self.twins) {
            twin.shut.store(true, Ordering::Relaxed);
            let (id, drain, dsync) = (twin.id.clone(), twin.drain, twin.dsync.clone());
            self.check_stop(
                format!("the shutdown of twin {id}"),
                id,
                None,
                drain,
                ctx_shutdown(&self.ctx, dsync),
            );
            self.retired.push(twin);
        }
        // Stops under way (from the schedule, from inside work) take effect first.
        within(
            bound,
            "the stops called from inside work answer",
            ctx.stops_from_work_done(),
        )
        .await;
        for check in std::mem::take(&mut self.checks) {
            join_check(check).await;
        }
        // No handoff asked for on a lease is left for the end: the shutdowns below are plain
        // stops, and what they leave is checked.
        self.clear_handoff_requests().await;
        // Every stopped election starts again: first in the live processes, and (if a lease
        // was deleted or reset) once one of them has taken it again with a higher token, in
        // the processes that were shut down and start again now (a new process cannot know
        // the token of a lease it never saw: the limit of rule `token-never-back`).
        for pass in [false, true] {
            if pass
                && self.is_fragile().await
                && let Some((key, token)) = self.fragile.clone()
                && self.live().next().is_none()
            {
                // Nobody who saw the lease is left to take it again: the operator puts it
                // back as it was before (free, its token), as one restores a deleted object.
                // (`is_fragile`: the lease is missing, or its token is at most `token`.)
                let record = LeaseRecord {
                    lease_transitions: Some(token),
                    lease_duration_seconds: Some(1),
                    ..LeaseRecord::default()
                };
                let store = self.admin_store().await;
                match store.get(&key).await {
                    Ok(current) => {
                        store
                            .replace(&key, record, &current.resource_version)
                            .await
                            .unwrap();
                    }
                    Err(_) => {
                        store.create(&key, record).await.unwrap();
                    }
                }
                self.fragile = None;
                ctx.bump("operator: lease put back");
            }
            if pass && self.fragile.is_some() {
                let deadline = Instant::now() + bound;
                while self.is_fragile().await {
                    assert!(
                        Instant::now() < deadline,
                        "the lease deleted or reset was not taken again within {bound:?}"
                    );
                    sleep(t.retry_period()).await;
                }
            }
            for r in 0..self.processes.len() {
                if self.processes[r].is_shut() != pass {
                    continue;
                }
                if pass {
                    self.restart(r, false).await;
                }
                for e in 0..ELECTIONS {
                    let run = self.processes[r].elections[e].as_ref();
                    if run.is_none_or(|run| !run.running()) {
                        assert!(
                            run.is_none_or(ElectionRun::stop_took_effect),
                            "a stop of {}'s e{e} has not answered",
                            self.processes[r].id
                        );
                        self.start_election_again(r, e);
                    }
                }
            }
        }
        for e in 0..ELECTIONS {
            let running: Vec<Election> = self
                .processes
                .iter()
                .filter_map(|p| p.elections[e].as_ref().map(|run| run.election.clone()))
                .collect();
            trace(format_args!("e{e}: {} replicas running", running.len()));
            dsync::testing::leader_of(bound, &running).await;
        }
        // Calls left hanging from before the heal (stalls, partitions) end by their timeout,
        // within a renew deadline; a leader whose renewal hung steps down then, and another is
        // elected. From then on every leader's calls go through, so a shutdown that answers Ok
        // has released what it held (checked at the end).
        sleep(t.renew_deadline()).await;
        for e in 0..ELECTIONS {
            let running: Vec<Election> = self
                .processes
                .iter()
                .filter_map(|p| p.elections[e].as_ref().map(|run| run.election.clone()))
                .collect();
            dsync::testing::leader_of(bound, &running).await;
        }
        // The lock: nothing keeps it (a grant nobody received, a dropped handle's term).
        let r = self.rng.below(self.processes.len() as u64) as usize;
        let process = &self.processes[r];
        let taken = async {
            loop {
                // A stop sent by an aborted worker may still reach the actor: then ask again.
                let lock = process.dsync.lock("shared").unwrap();
                match lock.lock().await {
                    Ok(term) => return (lock, term),
                    Err(Error::Stopped { .. }) => continue,
                    Err(e) => panic!("the lock after the heal: {e:?}"),
                }
            }
        };
        let (lock, term) = within(bound, "the lock is taken again after the heal", taken).await;
        ctx.oracle.got(LOCK, &process.id, &term);
        lock.unlock().await.unwrap();
        drop(lock);
        trace(format_args!("leaders and the lock found"));

        for r in 0..self.processes.len() {
            let process = &self.processes[r];
            process.shut.store(true, Ordering::Relaxed);
            let (id, drain, dsync) = (process.id.clone(), process.drain, process.dsync.clone());
            self.check_stop(
                format!("the final shutdown of {id}"),
                id,
                None,
                drain,
                ctx_shutdown(&self.ctx, dsync),
            );
        }
        for check in std::mem::take(&mut self.checks) {
            join_check(check).await;
        }
        trace(format_args!("shut down"));
        within(bound, "every term's work returns", ctx.works.idle()).await;
        within(bound, "every term ends", ctx.oracle.all_ended()).await;
        self.check_released().await;
        let counts = ctx.oracle.check();
        let failures = ctx.failures.lock().unwrap().clone();
        assert!(
            failures.is_empty(),
            "{} failures:\n{}",
            failures.len(),
            failures.join("\n")
        );
        counts
    }

    /// An operator removes every handoff request left on the elections' leases.
    async fn clear_handoff_requests(&self) {
        let store = self.admin_store().await;
        for e in 0..ELECTIONS {
            let key = self.lease_key(e);
            loop {
                let Ok(current) = store.get(&key).await else {
                    break;
                };
                if current.record.handoff_request.is_none() {
                    break;
                }
                let mut record = current.record.clone();
                record.handoff_request = None;
                match store.replace(&key, record, &current.resource_version).await {
                    Err(StoreError::Conflict { .. }) => continue,
                    _ => break,
                }
            }
        }
    }

    /// After every process has shut down: no lease names a process whose shutdowns all
    /// answered `Ok` (each released what it held; a drain that timed out or a release that
    /// failed says so), and no election's lease was left released naming a successor (the last
    /// writes were plain stops: a handoff that failed or was lost left nothing behind, rule
    /// `handoff-ends-with-its-term`).
    async fn check_released(&self) {
        let mut clean: BTreeMap<String, bool> = BTreeMap::new();
        for (identity, ok) in self.ctx.shutdowns.lock().unwrap().iter() {
            *clean.entry(identity.clone()).or_insert(true) &= *ok;
        }
        let store = self.admin_store().await;
        for lease in 0..LEASES {
            let key = self.lease_key(lease);
            let Ok(stored) = store.get(&key).await else {
                continue;
            };
            let record = &stored.record;
            match record.holder() {
                Some(holder) if clean.get(holder) == Some(&true) => self.ctx.fail(format!(
                    "after every replica shut down, {} still names {holder}, whose shutdown \
                     returned Ok: {record:?}",
                    lease_label(lease)
                )),
                None if lease < ELECTIONS && record.successor.is_some() => self.ctx.fail(format!(
                    "after every replica shut down (plain shutdowns), {} is released naming \
                         the successor {:?}: {record:?}",
                    lease_label(lease),
                    record.successor
                )),
                _ => {}
            }
        }
    }

    /// Breaks the cycles through the `when_elected` callbacks and ends the kube client threads.
    fn clean_up(&mut self) {
        for slot in &self.election_slots {
            slot.lock().unwrap().take();
        }
        let twins = std::mem::take(&mut self.twins);
        for process in self
            .processes
            .drain(..)
            .chain(self.retired.drain(..))
            .chain(twins)
        {
            process.dsync_slot.lock().unwrap().take();
            if let Some(worker) = process.worker {
                worker.abort();
            }
            if let Some(thread) = process.client_thread {
                thread.stop();
            }
        }
    }
}

/// Awaits a spawned check, passing its panic on.
async fn join_check(check: JoinHandle<()>) {
    if let Err(e) = check.await
        && e.is_panic()
    {
        std::panic::resume_unwind(e.into_panic());
    }
}

async fn run_seed(seed: u64, backend: &Backend, totals: &mut Totals) {
    let mut rng = Rng(seed);
    let timing = backend.timing();
    let scale = timing.lease_duration().as_secs_f64() / 15.0;
    let namespace = match backend {
        Backend::Memory => "default".to_owned(),
        Backend::Kube { .. } => namespace().await,
    };
    let (watchers, prompt, slack) = match backend {
        Backend::Memory => (None, Duration::ZERO, Duration::ZERO),
        Backend::Kube { watchers, .. } => (
            Some(watchers.clone()),
            timing.retry_period(),
            timing.lease_duration(),
        ),
    };
    let ctx = Ctx {
        oracle: Oracle::new(watchers),
        works: Works::new(),
        failures: Arc::default(),
        stats: Arc::default(),
        timing,
        scale,
        prompt,
        slack,
        max_block: match backend {
            Backend::Memory => Duration::ZERO,
            Backend::Kube { .. } => timing.lease_duration() * 3 / 2,
        },
        calm: Arc::default(),
        stopping_from_work: Arc::new(tokio::sync::watch::channel(0).0),
        blocked: Arc::default(),
        shutdowns: Arc::default(),
    };
    let n = 2 + rng.below(3) as usize;
    let mut s = Seed {
        ctx: ctx.clone(),
        backend: backend.clone(),
        rng,
        store: MemoryStore::new(),
        namespace,
        processes: Vec::new(),
        retired: Vec::new(),
        generations: vec![0; n],
        chaos: Vec::new(),
        checks: Vec::new(),
        timers: Vec::new(),
        election_slots: Vec::new(),
        twins: Vec::new(),
        fragile: None,
        rewound: false,
    };
    for r in 0..n {
        let process = s.start_process(r, true).await;
        s.processes.push(process);
    }
    s.play().await;
    let counts = s.heal_and_check().await;
    s.clean_up();
    let elections: usize = counts[..ELECTIONS].iter().sum();
    trace(format_args!(
        "{n} replicas: {elections} election terms and {} lock terms checked",
        counts[LOCK]
    ));
    // The checker saw work: every election led at least once (it has a leader at the end),
    // and the lock was taken at the end.
    assert!(
        elections >= ELECTIONS,
        "only {elections} election terms recorded"
    );
    assert!(counts[LOCK] >= 1, "no lock term recorded");
    totals.seeds += 1;
    totals.election_terms += elections as u64;
    totals.lock_terms += counts[LOCK] as u64;
    for (what, count) in ctx.stats.lock().unwrap().iter() {
        *totals.stats.entry(what).or_default() += count;
    }
}

fn seeds(part: u64, parts: u64) -> Vec<u64> {
    if let Ok(seed) = std::env::var("DSYNC_SAFETY_SEED") {
        let seed: u64 = seed.parse().expect("DSYNC_SAFETY_SEED is a number");
        return if part == 0 { vec![seed] } else { vec![] };
    }
    let per_part: u64 = std::env::var("DSYNC_SAFETY_SEEDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(250);
    (0..per_part).map(|i| i * parts + part).collect()
}

async fn run_seeds(part: u64) {
    let seeds = seeds(part, 4);
    // A hot loop never lets paused time advance, so no virtual timeout would fire.
    let limit = Duration::from_secs(60) + Duration::from_millis(500) * seeds.len() as u32;
    let _watchdog =
        dsync::testing::WallWatchdog::start("tests/safety.rs randomized_faults_part", limit);
    run_seeds_on(&format!("memory part {part}"), seeds, Backend::Memory).await;
}

async fn run_seeds_on(label: &str, seeds: Vec<u64>, backend: Backend) {
    install_seed_reporter();
    if std::env::var_os("DSYNC_SAFETY_TRACE").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
    if let Backend::Memory = backend {
        tokio::time::pause();
    }
    let started = std::time::Instant::now();
    let mut totals = Totals::default();
    for seed in seeds {
        SEED.with(|s| s.set(Some(seed)));
        trace(format_args!("seed {seed}"));
        run_seed(seed, &backend, &mut totals).await;
    }
    SEED.with(|s| s.set(None));
    let stats: Vec<String> = totals
        .stats
        .iter()
        .map(|(what, n)| format!("{what}: {n}"))
        .collect();
    eprintln!(
        "safety {label}: {} seeds, {} election terms and {} lock terms checked in {:.1?} ({})",
        totals.seeds,
        totals.election_terms,
        totals.lock_terms,
        started.elapsed(),
        stats.join(", ")
    );
}

// Four tests so that the test harness spreads the seeds over the cores.
#[actix::test]
async fn randomized_faults_part_0() {
    run_seeds(0).await;
}

#[actix::test]
async fn randomized_faults_part_1() {
    run_seeds(1).await;
}

#[actix::test]
async fn randomized_faults_part_2() {
    run_seeds(2).await;
}

#[actix::test]
async fn randomized_faults_part_3() {
    run_seeds(3).await;
}

/// The same schedules against the real apiserver, in real time at 2/1.5/0.5 s: the network
/// faults through the kube fault layer, the faults that last through a `FaultyStore` around
/// the `KubeStore`, and the test's thread really blocked. A bounded number of seeds
/// (`DSYNC_SAFETY_KUBE_SEEDS`, default 3; `DSYNC_SAFETY_KUBE_SEED=S` replays one). A failure
/// prints its seed. `DSYNC_SAFETY_KUBE_GUARD=1` installs the Lease guard of
/// `deploy/fencing/` first.
#[actix::test]
async fn randomized_faults_on_the_real_apiserver() {
    // Only when asked: the subscriber is global, and the memory tests' injected faults (a
    // revoked role) are logged as errors by design.
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
    let seeds = match std::env::var("DSYNC_SAFETY_KUBE_SEED") {
        Ok(seed) => vec![seed.parse().expect("DSYNC_SAFETY_KUBE_SEED is a number")],
        Err(_) => {
            let n: u64 = std::env::var("DSYNC_SAFETY_KUBE_SEEDS")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(3);
            (0..n).collect()
        }
    };
    // With DSYNC_SAFETY_KUBE_GUARD, the Lease guard of deploy/fencing/ is in effect for every
    // schedule: the same checks hold with it in place, and it refuses none of dsync's writes
    // (counted by the API server's own metric, which its probe shows counting).
    let guard = match std::env::var_os("DSYNC_SAFETY_KUBE_GUARD") {
        Some(_) => {
            let admin = support::apiserver::client(&Harness::get().ready().admin).await;
            support::fencing::lease_guard(&admin, &namespace().await).await;
            let probed = support::fencing::lease_guard_denials(&admin).await;
            assert!(probed > 0, "the guard's refusal of its probe is counted");
            Some((admin, probed))
        }
        None => None,
    };
    let watchers = Arbiter::new();
    let backend = Backend::Kube {
        admin: Harness::get().ready().admin,
        watchers: watchers.handle(),
    };
    run_seeds_on("real apiserver", seeds, backend).await;
    watchers.stop();
    if let Some((admin, probed)) = guard {
        let denials = support::fencing::lease_guard_denials(&admin).await;
        assert_eq!(
            denials, probed,
            "the Lease guard refused some of dsync's writes"
        );
    }
}

/// Clock skew, on its own: two replicas whose wall clocks are ten minutes apart (each way).
/// The records the leader writes look ten minutes stale, or ten minutes into the future, to
/// the follower; it judges expiry only from when it saw the record change, so it neither
/// takes over from a live leader nor waits ten minutes after a dead one.
#[actix::test]
async fn replicas_minutes_apart_never_overlap_and_take_over_after_one_lease_duration() {
    tokio::time::pause();
    let t = Timing::default();
    for leader_ahead in [true, false] {
        let store = MemoryStore::new();
        let replica = |name: &str, ahead: bool| {
            let skew = Duration::from_secs(600);
            let faults = FaultyStore::new(store.clone()).with_clock_skew(if ahead {
                ClockSkew::Ahead(skew)
            } else {
                ClockSkew::Behind(skew)
            });
            let dsync = Dsync::with_config(
                faults.clone(),
                dsync::testing::paused_config(name).with_timing(t),
            )
            .unwrap();
            (dsync, faults)
        };
        let (a, fa) = replica("a", leader_ahead);
        let (b, _fb) = replica("b", !leader_ahead);
        let log = TermLog::default();
        let ea = a.election("x").unwrap();
        log.record("a", &ea).unwrap();
        dsync::testing::within(t.lease_duration(), "a elected", ea.elected())
            .await
            .unwrap();
        let eb = b.election("x").unwrap();
        log.record("b", &eb).unwrap();
        // The leader's records are ten minutes off for b, for many lease durations.
        tokio::time::sleep(t.lease_duration() * 5).await;
        assert!(ea.is_leader(), "a keeps leading (ahead: {leader_ahead})");
        assert!(!eb.is_leader(), "b never takes over from a live leader");
        let stored = store.get(&ea.lease()).await.unwrap();
        let renewed = stored.record.renew_time.unwrap();
        let off = match renewed.duration_since(SystemTime::now()) {
            Ok(ahead) => ahead,
            Err(behind) => behind.duration(),
        };
        assert!(
            off >= Duration::from_secs(590),
            "the stored renewTime is minutes off: {off:?}"
        );

        // a dies: b takes over one lease duration after it last saw a renew, not ten minutes
        // later and not at once.
        fa.partition();
        let crashed = Instant::now();
        dsync::testing::within(t.lease_duration() * 2, "b elected", eb.elected())
            .await
            .unwrap();
        let waited = crashed.elapsed();
        assert!(
            waited >= t.lease_duration() - t.retry_period() && waited <= t.lease_duration(),
            "b took over {waited:?} after the crash (ahead: {leader_ahead})"
        );
        log.assert_safe();
        fa.heal();
        a.shutdown().await.unwrap();
        b.shutdown().await.unwrap();
        log.assert_safe();
    }
}

// ---------------------------------------------------------------------------------------------
// Semaphores: randomized schedules on memory, paused time.
//
// Each seed: a semaphore of 1–3 permits, 2–3 replicas (each behind its own fault layer), 2–4
// contenders per replica taking permits every way there is (`acquire_timeout` then `release`
// or a drop, `try_acquire`, `acquire_with_cancel` with tokens cancelled at random times,
// `with_permit` bodies, `acquire()` futures abandoned after one poll or on a short timer), while
// the schedule partitions replicas, adds latency, storms of 409s, lost responses, failed
// reads and dropped watches. The oracle takes the caller's view of every permit's term
// (`TermLog::got`): per slot, no two terms overlap and fencing tokens strictly increase; over
// the semaphore, at most N terms are active at once. After the faults heal, every replica gets
// a permit again.
// ---------------------------------------------------------------------------------------------

async fn semaphore_contender(
    sem: dsync::Semaphore,
    replica: String,
    log: TermLog,
    stop: CancellationToken,
    mut rng: Rng,
    counts: Arc<Mutex<BTreeMap<&'static str, u64>>>,
) {
    let count = |what: &'static str| *counts.lock().unwrap().entry(what).or_default() += 1;
    while !stop.is_cancelled() {
        let hold = rng.millis(6_000);
        match rng.below(6) {
            0 | 1 => {
                if let Ok(permit) = sem.acquire_timeout(rng.millis(30_000)).await {
                    log.got(&replica, permit.term());
                    count("acquire");
                    sleep(hold).await;
                    if rng.below(2) == 0 {
                        let _ = permit.release().await;
                    } else {
                        drop(permit);
                    }
                }
            }
            2 => match sem.try_acquire().await {
                Ok(permit) => {
                    log.got(&replica, permit.term());
                    count("try_acquire");
                    sleep(hold).await;
                    drop(permit);
                }
                Err(Error::NoFreeSlot { holders, .. }) => {
                    assert_eq!(holders.len(), sem.permits(), "every slot listed");
                    count("no free slot");
                }
                Err(_) => count("try_acquire error"),
            },
            3 => {
                let cancel = CancellationToken::new();
                let c = cancel.clone();
                let after = rng.millis(20_000);
                actix::spawn(async move {
                    sleep(after).await;
                    c.cancel();
                });
                if let Ok(permit) = sem.acquire_with_cancel(cancel).await {
                    log.got(&replica, permit.term());
                    count("acquire_with_cancel");
                    sleep(hold).await;
                    let _ = permit.release().await;
                }
            }
            4 => {
                let (log, replica) = (log.clone(), replica.clone());
                let body = sem.with_permit(|term| async move {
                    log.got(&replica, &term);
                    sleep(hold).await;
                });
                match tokio::time::timeout(Duration::from_secs(40), body).await {
                    Ok(Ok(())) => count("with_permit"),
                    Ok(Err(_)) => count("with_permit error or loss"),
                    Err(_) => count("with_permit dropped"),
                }
            }
            _ => {
                // An acquire() future abandoned after one poll, or on a short timer: its
                // places in line are given up, a grant that reached it is given back.
                let mut fut = Box::pin(sem.acquire());
                let polled = futures::poll!(&mut fut);
                if let Poll::Ready(Ok(permit)) = polled {
                    // Received, so it counts (and is dropped at once).
                    log.got(&replica, permit.term());
                } else if rng.below(2) == 0 {
                    let _ = tokio::time::timeout(rng.millis(3_000), &mut fut)
                        .await
                        .map(|r| {
                            if let Ok(permit) = r {
                                log.got(&replica, permit.term());
                            }
                        });
                }
                count("abandoned acquire");
            }
        }
        sleep(rng.millis(2_000)).await;
    }
}

async fn run_semaphore_seed(seed: u64, counts: &Arc<Mutex<BTreeMap<&'static str, u64>>>) -> usize {
    let mut rng = Rng(seed ^ 0x5e6a_9f0e);
    let store = MemoryStore::new();
    let permits = 1 + rng.below(3) as usize;
    let replicas = 2 + rng.below(2) as usize;
    let log = TermLog::new();
    let stop = CancellationToken::new();
    let mut nodes = Vec::new();
    let mut tasks = Vec::new();
    for r in 0..replicas {
        let faulty = FaultyStore::new(store.clone());
        let identity = format!("pod-{r}");
        let d =
            Dsync::with_config(faulty.clone(), dsync::testing::paused_config(&identity)).unwrap();
        let sem = d.semaphore("pool", permits).unwrap();
        for _ in 0..2 + rng.below(3) {
            tasks.push(actix::spawn(semaphore_contender(
                sem.clone(),
                identity.clone(),
                log.clone(),
                stop.clone(),
                Rng(rng.next()),
                counts.clone(),
            )));
        }
        nodes.push((d, faulty, sem));
    }
    // The schedule: ten minutes of faults, in steps of up to one lease duration.
    let end = Instant::now() + Duration::from_secs(600);
    while Instant::now() < end {
        let (_, faulty, _) = &nodes[rng.below(replicas as u64) as usize];
        match rng.below(8) {
            0 => faulty.partition(),
            1 => faulty.heal(),
            2 => faulty.set_latency(rng.millis(3_000)),
            3 => faulty.conflict_storm(rng.below(5) as usize),
            4 => faulty.lose_next_reply(Call::Replace),
            5 => faulty.fail_next(Call::Get, || StoreError::Unavailable {
                message: "503 from the schedule".into(),
                source: None,
            }),
            6 => faulty.drop_watches(),
            _ => {}
        }
        sleep(rng.millis(15_000)).await;
    }
    for (_, faulty, _) in &nodes {
        faulty.clear();
        faulty.heal();
        faulty.set_latency(Duration::ZERO);
    }
    stop.cancel();
    for task in tasks {
        within(Duration::from_secs(600), "contender ends", task)
            .await
            .unwrap();
    }
    // Healed: every replica gets a permit again (one at a time if N = 1).
    for (d, _, sem) in &nodes {
        let permit = within(
            Duration::from_secs(600),
            "permit after healing",
            sem.acquire(),
        )
        .await
        .unwrap_or_else(|e| panic!("seed {seed}: {} got no permit: {e}", d.identity()));
        log.got(d.identity(), permit.term());
        permit.release().await.unwrap();
    }
    for (d, _, _) in &nodes {
        d.shutdown().await.unwrap();
    }
    within(Duration::from_secs(600), "all terms end", log.all_ended()).await;
    let checked = log
        .check()
        .unwrap_or_else(|v| panic!("seed {seed}: {v}\nall terms: {:#?}", log.spans()));
    let slots = nodes[0].2.slots();
    let max = log.max_concurrent(|l| slots.contains(l));
    assert!(
        max <= permits,
        "seed {seed}: {max} permits active at once, at most {permits} allowed"
    );
    checked
}

#[actix::test]
async fn randomized_semaphore_schedules() {
    let seeds: Vec<u64> = match std::env::var("DSYNC_SAFETY_SEED") {
        Ok(seed) => vec![seed.parse().expect("DSYNC_SAFETY_SEED is a number")],
        Err(_) => {
            let n = std::env::var("DSYNC_SAFETY_SEEDS")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(200u64);
            (0..n).collect()
        }
    };
    let _watchdog = dsync::testing::WallWatchdog::start(
        "tests/safety.rs randomized_semaphore_schedules",
        Duration::from_secs(60) + Duration::from_secs(2) * seeds.len() as u32,
    );
    tokio::time::pause();
    let counts = Arc::new(Mutex::new(BTreeMap::new()));
    let started = std::time::Instant::now();
    let mut permits_checked = 0;
    for &seed in &seeds {
        permits_checked += run_semaphore_seed(seed, &counts).await;
    }
    let stats: Vec<String> = counts
        .lock()
        .unwrap()
        .iter()
        .map(|(what, n)| format!("{what}: {n}"))
        .collect();
    eprintln!(
        "safety semaphores: {} seeds, {permits_checked} permit terms checked in {:.1?} ({})",
        seeds.len(),
        started.elapsed(),
        stats.join(", ")
    );
    assert!(
        permits_checked > seeds.len() * 10,
        "the schedules took permits"
    );
}
