//! Randomized fault schedules on the memory store, in paused time: never two leaders, never two
//! lock holders, fencing tokens strictly increasing, and a leader again once the faults heal.
//!
//! Each seed builds 2–4 replicas (each behind its own [`FaultyStore`], each with its own wall
//! clock skewed by up to ±10 minutes) that run two elections and compete for one lock, then
//! plays a random schedule of faults: partitions and heals, latency up to 3 s per leg, 409
//! storms, failures before and after a write lands (the response is lost), dropped watches, and
//! graceful stops. Every term is recorded against tokio's (shared, paused) clock and checked
//! with zero allowed overlap: dsync's documented bound between replicas whose clocks run at the
//! same rate.
//!
//! `DSYNC_SAFETY_SEEDS=N` runs N seeds per test (default 250 per test, 1,000 in all);
//! `DSYNC_SAFETY_SEED=S` replays one seed. A failure prints its seed.

mod support;

use std::cell::Cell;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use dsync::store::{LeaseKey, LeaseRecord, LeaseStore, StoreError, StoredLease, WatchEvent};
use dsync::{Config, Dsync, Election, Error, KubeStore, LeaseThread, MemoryStore, Timing};
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use support::apiserver::{Harness, namespace};
use support::backend::{KUBE_CALL_TIMEOUT, kube_timing};
use support::kubefault::{Fault, KubeFaults};
use support::{Call, FaultyStore, TermLog, When};
use tokio::time::Instant;

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

/// A replica whose wall clock is off by `skew`: every time it writes into a lease
/// (`acquireTime`, `renewTime`) is shifted, as a skewed node's would be. dsync reads the wall
/// clock only to fill these fields, so this is all a skew can change.
#[derive(Clone)]
struct Skewed {
    inner: Arc<dyn LeaseStore>,
    skew: Duration,
    ahead: bool,
}

impl Skewed {
    fn shift(&self, t: Option<SystemTime>) -> Option<SystemTime> {
        t.map(|t| {
            if self.ahead {
                t + self.skew
            } else {
                t - self.skew
            }
        })
    }

    /// Shifts the times the writer stamped from its clock. `renewTime` always is; `acquireTime`
    /// only when stamped in the same write (then it equals `renewTime`): a renewal copies it
    /// from the stored record, which is already skewed.
    fn skew_record(&self, mut r: LeaseRecord) -> LeaseRecord {
        if r.acquire_time == r.renew_time {
            r.acquire_time = self.shift(r.acquire_time);
        }
        r.renew_time = self.shift(r.renew_time);
        r
    }
}

impl LeaseStore for Skewed {
    fn get(&self, key: &LeaseKey) -> BoxFuture<'static, Result<StoredLease, StoreError>> {
        self.inner.get(key)
    }
    fn create(
        &self,
        key: &LeaseKey,
        record: LeaseRecord,
    ) -> BoxFuture<'static, Result<StoredLease, StoreError>> {
        self.inner.create(key, self.skew_record(record))
    }
    fn replace(
        &self,
        key: &LeaseKey,
        record: LeaseRecord,
        resource_version: &str,
    ) -> BoxFuture<'static, Result<StoredLease, StoreError>> {
        self.inner
            .replace(key, self.skew_record(record), resource_version)
    }
    fn watch(&self, namespace: &str) -> BoxStream<'static, Result<WatchEvent, StoreError>> {
        self.inner.watch(namespace)
    }
}

/// What a schedule does to one replica's link to the store: `FaultyStore` on the memory
/// store, the kube fault layer (`KubeFaults`) on the real apiserver.
trait Chaos {
    fn partition(&self);
    fn heal(&self);
    fn set_latency(&self, latency: Duration);
    /// The next `n` updates fail with 409 Conflict.
    fn conflict_storm(&self, n: u64);
    /// The next write (`call`) takes effect, but its response is lost.
    fn lose_next_response(&self, call: Call);
    /// The next call fails with 503.
    fn fail_next_503(&self);
    fn drop_watches(&self);
    /// Drops the injected failures that have not happened yet.
    fn clear(&self);
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
        for _ in 0..n {
            self.fail_next(Call::Replace, || StoreError::Conflict {
                lease: "storm".into(),
            });
        }
    }
    fn lose_next_response(&self, call: Call) {
        self.fail_next_when(call, When::After, || StoreError::Unavailable {
            message: "connection reset after the request was sent".into(),
            source: None,
        });
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
    fn clear(&self) {
        FaultyStore::clear(self);
    }
}

impl Chaos for KubeFaults {
    fn partition(&self) {
        KubeFaults::partition(self);
    }
    fn heal(&self) {
        KubeFaults::heal(self);
    }
    fn set_latency(&self, latency: Duration) {
        KubeFaults::set_latency(self, latency);
    }
    fn conflict_storm(&self, n: u64) {
        for _ in 0..n {
            self.inject(Fault::Conflict);
        }
    }
    fn lose_next_response(&self, _call: Call) {
        // Any write: the layer sees HTTP methods, not store calls.
        self.inject(Fault::ResetAfterWrite);
    }
    fn fail_next_503(&self) {
        self.inject(Fault::Unavailable);
    }
    fn drop_watches(&self) {
        KubeFaults::drop_watches(self);
    }
    fn clear(&self) {
        KubeFaults::clear(self);
    }
}

/// Where a seed runs.
#[derive(Clone)]
enum Backend {
    /// A fresh `MemoryStore`, paused time, timing 15/10/2 s.
    Memory,
    /// The real apiserver harness (a fresh namespace), real time, timing 2/1.5/0.5 s.
    Kube,
}

impl Backend {
    fn timing(&self) -> Timing {
        match self {
            Backend::Memory => timing(),
            Backend::Kube => kube_timing(),
        }
    }
}

struct Replica {
    faults: Box<dyn Chaos>,
    dsync: Dsync,
    elections: Vec<Option<Election>>,
}

const ELECTIONS: usize = 2;

fn timing() -> Timing {
    Timing::default() // 15 s / 10 s / 2 s
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
                 cargo test --test safety ***\n"
            );
        }
        default(info);
    }));
}

/// One lock term as the holder saw it.
#[derive(Debug, Clone)]
struct LockSpan {
    #[allow(dead_code)] // shown in failure messages
    replica: usize,
    token: i32,
    start: Instant,
    end: Instant,
}

/// A replica's lock loop: lock (with a timeout), hold for a while or until the term is lost,
/// unlock, pause. Records every term.
async fn lock_worker(
    replica: usize,
    dsync: Dsync,
    mut rng: Rng,
    scale: f64,
    spans: Arc<Mutex<Vec<LockSpan>>>,
) {
    let lock = dsync.lock("shared").expect("valid lock name");
    loop {
        match lock.lock_timeout(rng.millis(20_000).mul_f64(scale)).await {
            Ok(term) => {
                let start = Instant::now();
                let hold = rng.millis(8_000).mul_f64(scale);
                tokio::select! {
                    _ = tokio::time::sleep(hold) => {}
                    _ = term.cancelled() => {}
                }
                let end = Instant::now();
                spans.lock().unwrap().push(LockSpan {
                    replica,
                    token: term.fencing_token(),
                    start,
                    end,
                });
                let _ = lock.unlock().await;
            }
            Err(Error::Stopped { .. }) => return,
            Err(_) => {}
        }
        tokio::time::sleep(rng.millis(3_000).mul_f64(scale)).await;
    }
}

fn check_locks(spans: &[LockSpan]) {
    let mut spans = spans.to_vec();
    spans.sort_by_key(|s| s.start);
    for pair in spans.windows(2) {
        assert!(
            pair[0].end <= pair[1].start,
            "two lock holders at once: {pair:#?}"
        );
        assert!(
            pair[0].token < pair[1].token,
            "lock fencing tokens must strictly increase: {pair:#?}"
        );
    }
}

async fn run_seed(seed: u64, backend: &Backend) {
    let mut rng = Rng(seed);
    let t = backend.timing();
    // The schedule is written for a 15 s lease; other timings scale it.
    let scale = t.lease_duration().as_secs_f64() / 15.0;
    let store = MemoryStore::new();
    let namespace = match backend {
        Backend::Memory => "default".to_owned(),
        Backend::Kube => namespace().await,
    };
    let n = 2 + rng.below(3) as usize;
    let logs: Vec<TermLog> = (0..ELECTIONS).map(|_| TermLog::default()).collect();
    let lock_spans = Arc::new(Mutex::new(Vec::new()));
    let mut replicas = Vec::new();
    let mut workers = Vec::new();
    for r in 0..n {
        let (faults, inner): (Box<dyn Chaos>, Arc<dyn LeaseStore>) = match backend {
            Backend::Memory => {
                let faults = FaultyStore::new(store.clone());
                (Box::new(faults.clone()), Arc::new(faults))
            }
            Backend::Kube => {
                let faults = KubeFaults::default();
                let client = faults.client(&Harness::get().ready().admin).await;
                let store = KubeStore::new(client).with_call_timeout(KUBE_CALL_TIMEOUT);
                (Box::new(faults), Arc::new(store))
            }
        };
        let skewed = Skewed {
            inner,
            skew: rng.millis(600_000),
            ahead: rng.below(2) == 0,
        };
        let dsync = Dsync::with_config(
            skewed,
            Config::default()
                .with_namespace(&*namespace)
                .with_identity(format!("r{r}"))
                .with_timing(t)
                .with_lease_thread(match backend {
                    Backend::Memory => LeaseThread::Current,
                    Backend::Kube => LeaseThread::Dedicated,
                }),
        )
        .unwrap();
        let elections = (0..ELECTIONS)
            .map(|e| {
                let election = dsync.election(&format!("e{e}")).unwrap();
                logs[e].record(&format!("r{r}"), &election);
                Some(election)
            })
            .collect();
        workers.push(actix::spawn(lock_worker(
            r,
            dsync.clone(),
            Rng(rng.next()),
            scale,
            lock_spans.clone(),
        )));
        replicas.push(Replica {
            faults,
            dsync,
            elections,
        });
    }

    let steps = 10 + rng.below(15);
    for _ in 0..steps {
        tokio::time::sleep(rng.millis(12_000).mul_f64(scale)).await;
        let r = rng.below(n as u64) as usize;
        let replica = &mut replicas[r];
        let action = rng.below(10);
        trace(format_args!("step: replica {r} action {action}"));
        match action {
            0 | 1 => replica.faults.partition(),
            2 | 3 => replica.faults.heal(),
            4 => replica.faults.set_latency(rng.millis(3_000).mul_f64(scale)),
            // A 409 storm: the next several writes conflict.
            5 => replica.faults.conflict_storm(1 + rng.below(8)),
            6 => {
                // The write lands but its response is lost.
                let call = [Call::Replace, Call::Create, Call::Any][rng.below(3) as usize];
                replica.faults.lose_next_response(call);
            }
            7 => replica.faults.fail_next_503(),
            8 => replica.faults.drop_watches(),
            _ => {
                // Stop one election gracefully, or start it again if stopped.
                let e = rng.below(ELECTIONS as u64) as usize;
                match replica.elections[e].take() {
                    Some(election) => {
                        trace(format_args!("stopping r{r}'s e{e}"));
                        // A stop can wait on a hung call (partition); don't block the schedule.
                        actix::spawn(async move {
                            let _ = election.stop().await;
                        });
                    }
                    None => {
                        trace(format_args!("starting r{r}'s e{e} again"));
                        if let Ok(election) = replica.dsync.election(&format!("e{e}")) {
                            logs[e].record(&format!("r{r}"), &election);
                            replica.elections[e] = Some(election);
                        }
                    }
                }
            }
        }
    }

    trace(format_args!("healing"));
    // Heal everything; within a lease duration plus a few retries every election has a leader.
    // (A 409 storm queued behind a partition would otherwise still be pending, and each
    // conflict after the first is backed off by a retry period.)
    for replica in &replicas {
        replica.faults.heal();
        replica.faults.clear();
        replica.faults.set_latency(Duration::ZERO);
    }
    // Memory: exact. Kube: plus a lease duration for calls hung by the partition to time out
    // and watches to come back.
    let slack = match backend {
        Backend::Memory => Duration::ZERO,
        Backend::Kube => t.lease_duration(),
    };
    for (e, log) in logs.iter().enumerate() {
        let running: Vec<Election> = replicas
            .iter()
            .filter_map(|r| r.elections[e].clone())
            .collect();
        trace(format_args!("e{e}: {} replicas running", running.len()));
        if running.is_empty() {
            continue;
        }
        support::leader_of(
            t.lease_duration() * 2 + t.retry_period() * 4 + slack,
            &running,
        )
        .await;
        log.assert_safe();
    }
    trace(format_args!("leaders found"));
    for w in &workers {
        w.abort();
    }
    for (r, replica) in replicas.iter().enumerate() {
        trace(format_args!("shutting down replica {r}"));
        let _ = replica.dsync.shutdown().await;
    }
    trace(format_args!("shut down"));
    for log in &logs {
        log.assert_safe();
    }
    let lock_spans = lock_spans.lock().unwrap();
    check_locks(&lock_spans);
    let terms: usize = logs.iter().map(|l| l.spans().len()).sum();
    trace(format_args!(
        "{n} replicas, {steps} faults: {terms} election terms and {} lock terms checked",
        lock_spans.len()
    ));
    // The checker saw work: every election led at least once (it has a leader at the end).
    assert!(terms >= ELECTIONS, "only {terms} terms recorded");
}

/// `DSYNC_SAFETY_TRACE=1` prints the schedule as it plays (to debug a replayed seed).
fn trace(what: std::fmt::Arguments<'_>) {
    if std::env::var_os("DSYNC_SAFETY_TRACE").is_some() {
        eprintln!("[{:?}] {what}", Instant::now());
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
    run_seeds_on(seeds(part, 4), Backend::Memory).await;
}

async fn run_seeds_on(seeds: Vec<u64>, backend: Backend) {
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
    for seed in seeds {
        SEED.with(|s| s.set(Some(seed)));
        run_seed(seed, &backend).await;
    }
    SEED.with(|s| s.set(None));
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

/// The same schedules through the kube fault layer against the real apiserver, in real time
/// at 2/1.5/0.5 s: a bounded number of seeds (`DSYNC_SAFETY_KUBE_SEEDS`, default 3, about 30 s
/// each; `DSYNC_SAFETY_KUBE_SEED=S` replays one). A failure prints its seed.
#[actix::test]
async fn randomized_faults_on_the_real_apiserver() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
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
    run_seeds_on(seeds, Backend::Kube).await;
}

/// Clock skew, on its own: two replicas whose wall clocks are ten minutes apart (each way).
/// The records the leader writes look ten minutes stale, or ten minutes into the future, to
/// the follower; it judges expiry only from when it saw the record change, so it neither
/// takes over from a live leader nor waits ten minutes after a dead one.
#[actix::test]
async fn replicas_minutes_apart_never_overlap_and_take_over_after_one_lease_duration() {
    tokio::time::pause();
    let t = timing();
    for leader_ahead in [true, false] {
        let store = MemoryStore::new();
        let replica = |name: &str, ahead: bool| {
            let faults = FaultyStore::new(store.clone());
            let skewed = Skewed {
                inner: Arc::new(faults.clone()),
                skew: Duration::from_secs(600),
                ahead,
            };
            let dsync =
                Dsync::with_config(skewed, support::paused_config(name).with_timing(t)).unwrap();
            (dsync, faults)
        };
        let (a, fa) = replica("a", leader_ahead);
        let (b, _fb) = replica("b", !leader_ahead);
        let log = TermLog::default();
        let ea = a.election("x").unwrap();
        log.record("a", &ea);
        support::within(t.lease_duration(), "a elected", ea.elected())
            .await
            .unwrap();
        let eb = b.election("x").unwrap();
        log.record("b", &eb);
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
        support::within(t.lease_duration() * 2, "b elected", eb.elected())
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
