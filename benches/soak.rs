//! Soak: a day of churn, then a look at what is left. Reports, never asserts: a leak is a
//! figure to print ("back to baseline: no"), not a panic.
//!
//! ```text
//! cargo bench --bench soak --features testing,metrics              # 24 virtual hours
//! DSYNC_SOAK_REAL=600 cargo bench --bench soak --features testing,metrics   # 10 real minutes
//! ```
//!
//! **Virtual day** (default): two replicas on one shared `MemoryStore`, each through a
//! `FaultyStore` (to cut its watch), with tokio's clock paused and advanced one retry period
//! (2 s) at a time, so that every renewal and expiry really happens. Over 24 virtual hours
//! (`DSYNC_SOAK_HOURS`): `DSYNC_SOAK_LOCKS` (100,000) distinct lock names, each locked,
//! unlocked and its handle dropped, alternating replicas; `DSYNC_SOAK_ELECTIONS` (1,000)
//! elections started on both replicas, held about half an hour, then stopped (about twenty live
//! at any time); `DSYNC_SOAK_GRANTS` (50,000) permits of one 16-permit semaphore per replica,
//! each taken and dropped; every hour, one replica's watch is cut. After the churn and five quiet
//! virtual minutes it prints, against a baseline taken after one warm-up round: live heap bytes
//! of the replicas and of the shared store apart (the store keeps every lease ever written, as
//! etcd does; its share is measured as what a deep copy of it costs) and live allocations
//! (this binary's counting allocator; these include the store's), lease actors (`Dsync::running`),
//! supervisor entries (`Dsync::leases`), metric series (sample lines of the Prometheus text
//! encoding), watched namespaces; and the same per virtual hour.
//!
//! **Real time** (`DSYNC_SOAK_REAL=<seconds>`): the same kinds of churn at a real pace (default
//! `Config`, each replica's lease thread of its own), sampling the process's RSS every second;
//! prints min / median / max RSS per minute and the change from the first minute to the last.
//!
//! Linux only (reads /proc/self).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant as StdInstant};

use dsync::metrics::Metrics;
use dsync::testing::FaultyStore;
use dsync::{Config, Dsync, LeaseStore, MemoryStore};
use prometheus_client::encoding::text::encode;
use prometheus_client::registry::Registry;

/// The system allocator, counting live bytes and live allocations.
struct Counting;

static LIVE_BYTES: AtomicI64 = AtomicI64::new(0);
static LIVE_ALLOCATIONS: AtomicI64 = AtomicI64::new(0);

// SAFETY: every call is passed on unchanged to the system allocator; the counters have no
// effect on the memory handed out.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(layout.size() as i64, Ordering::Relaxed);
        LIVE_ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's contract for `alloc`, passed on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE_BYTES.fetch_sub(layout.size() as i64, Ordering::Relaxed);
        LIVE_ALLOCATIONS.fetch_sub(1, Ordering::Relaxed);
        // SAFETY: the caller's contract for `dealloc`, passed on.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE_BYTES.fetch_add(new_size as i64 - layout.size() as i64, Ordering::Relaxed);
        // SAFETY: the caller's contract for `realloc`, passed on.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// The two replicas of a run and what they are measured by.
struct Replicas {
    a: Dsync,
    b: Dsync,
    faults: [FaultyStore; 2],
    registry: Registry,
    /// The shared store: the API server's part, measured apart (it keeps every lease ever
    /// written, as etcd does; the process is what must not grow).
    store: MemoryStore,
}

impl Replicas {
    fn new(config: impl Fn(&str) -> Config) -> Replicas {
        let store = MemoryStore::new();
        let mut registry = Registry::default();
        let metrics = Metrics::register(&mut registry);
        let faults = [
            FaultyStore::new(store.clone()),
            FaultyStore::new(store.clone()),
        ];
        let replica = |faults: &FaultyStore, id: &str| {
            let shared: Arc<dyn LeaseStore> = Arc::new(faults.clone());
            Dsync::with_config(shared, config(id))
                .and_then(|d| d.with_metrics(metrics.clone()))
                .expect("a replica")
        };
        Replicas {
            a: replica(&faults[0], "pod-a"),
            b: replica(&faults[1], "pod-b"),
            faults,
            registry,
            store,
        }
    }

    fn replica(&self, i: u64) -> &Dsync {
        if i % 2 == 0 { &self.a } else { &self.b }
    }

    async fn sample(&self) -> Sample {
        let mut text = String::new();
        encode(&mut text, &self.registry).expect("encodes");
        let series = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .count();
        // The store's share of the heap: what a deep copy of it costs.
        let before = LIVE_BYTES.load(Ordering::Relaxed);
        let snapshot = self.store.snapshot();
        let store = LIVE_BYTES.load(Ordering::Relaxed) - before;
        drop(snapshot);
        let live = |d: &Dsync| d.leases().iter().filter(|e| !e.stopping).count();
        Sample {
            store,
            heap: LIVE_BYTES.load(Ordering::Relaxed) - store,
            allocations: LIVE_ALLOCATIONS.load(Ordering::Relaxed),
            actors: live(&self.a) + live(&self.b),
            entries: self.a.leases().len() + self.b.leases().len(),
            series,
            namespaces: self.a.watched_namespaces() + self.b.watched_namespaces(),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    /// Live heap bytes of the shared memory store (the API server's part).
    store: i64,
    /// Live heap bytes of everything else: the two replicas.
    heap: i64,
    allocations: i64,
    actors: usize,
    entries: usize,
    series: usize,
    namespaces: usize,
}

impl Sample {
    fn row(&self, label: &str) -> String {
        format!(
            "| {label} | {:.1} | {:.1} | {} | {} | {} | {} | {} |",
            self.heap as f64 / 1024.0,
            self.store as f64 / 1024.0,
            self.allocations,
            self.actors,
            self.entries,
            self.series,
            self.namespaces
        )
    }
}

const HEADER: &str = "| when | live heap, replicas (KiB) | the store's (KiB) | live allocations | lease actors | supervisor entries | metric series | watched namespaces |\n|---|---|---|---|---|---|---|---|";

/// The churn of one step: lock names `locks`, semaphore grants `grants`, alternating replicas.
async fn churn(
    r: &Replicas,
    sems: &[dsync::Semaphore; 2],
    locks: std::ops::Range<u64>,
    grants: std::ops::Range<u64>,
) -> u64 {
    let mut failures = 0;
    let lock_calls = locks.map(|i| async move {
        let d = r.replica(i);
        let Ok(lock) = d.lock(&format!("soak-{i}")) else {
            return 1;
        };
        let Ok(term) = lock.lock().await else {
            return 1;
        };
        let ok = lock.unlock().await.is_ok();
        drop(term);
        drop(lock);
        u64::from(!ok)
    });
    failures += futures::future::join_all(lock_calls)
        .await
        .iter()
        .sum::<u64>();
    let grant_calls = grants.map(|i| {
        let sem = &sems[(i % 2) as usize];
        async move {
            match sem.acquire().await {
                Ok(permit) => u64::from(permit.release().await.is_err()),
                Err(_) => 1,
            }
        }
    });
    failures += futures::future::join_all(grant_calls)
        .await
        .iter()
        .sum::<u64>();
    failures
}

fn virtual_day() {
    let hours = env("DSYNC_SOAK_HOURS", 24);
    let locks = env("DSYNC_SOAK_LOCKS", 100_000);
    let elections = env("DSYNC_SOAK_ELECTIONS", 1_000);
    let grants = env("DSYNC_SOAK_GRANTS", 50_000);
    let wall = StdInstant::now();
    dsync::testing::run_paused(async move {
        let r = Replicas::new(dsync::testing::paused_config);
        let timing = r.a.config().timing;
        let step = timing.retry_period();
        let steps_per_hour = (3600 / step.as_secs().max(1)).max(1);
        let total_steps = steps_per_hour * hours;
        let sems = [
            r.a.semaphore("soak-sem", 16).expect("semaphore"),
            r.b.semaphore("soak-sem", 16).expect("semaphore"),
        ];
        // Warm-up: one of each, then quiet, so that every lazily grown buffer has its size.
        let mut failures = churn(&r, &sems, 0..10, 0..10).await;
        let warm = [
            r.a.election("soak-e-warm").unwrap(),
            r.b.election("soak-e-warm").unwrap(),
        ];
        dsync::testing::leader_of(Duration::from_secs(60), &warm).await;
        for e in &warm {
            let _ = e.stop().await;
        }
        drop(warm);
        quiet(&timing, Duration::from_secs(300)).await;
        let baseline = r.sample().await;
        println!("{HEADER}");
        println!("{}", baseline.row("baseline"));

        // Elections: each is held `hold` steps; a new one starts every `every` steps.
        let every = (total_steps / elections.max(1)).max(1);
        let hold = steps_per_hour / 2;
        let mut live: std::collections::VecDeque<(u64, [dsync::Election; 2])> = Default::default();
        let (mut started, mut next_lock, mut next_grant) = (0u64, 10u64, 10u64);
        let mut peak = baseline;
        for s in 0..total_steps {
            // Spread the day's locks and grants evenly over the steps.
            let lock_to = locks * (s + 1) / total_steps + 10;
            let grant_to = grants * (s + 1) / total_steps + 10;
            failures += churn(&r, &sems, next_lock..lock_to, next_grant..grant_to).await;
            (next_lock, next_grant) = (lock_to, grant_to);
            if s % every == 0 && started < elections {
                let name = format!("soak-e-{started}");
                let pair = [r.a.election(&name).unwrap(), r.b.election(&name).unwrap()];
                live.push_back((s, pair));
                started += 1;
            }
            while live.front().is_some_and(|(at, _)| s >= at + hold) {
                let (_, pair) = live.pop_front().expect("checked");
                for e in &pair {
                    if e.stop().await.is_err() {
                        failures += 1;
                    }
                }
            }
            if s % steps_per_hour == steps_per_hour / 3 {
                // A watch cut, on each replica in turn.
                r.faults[((s / steps_per_hour) % 2) as usize].drop_watches();
            }
            tokio::time::advance(step).await;
            dsync::testing::settle().await;
            if (s + 1) % steps_per_hour == 0 {
                let now = r.sample().await;
                if now.heap > peak.heap {
                    peak = now;
                }
                println!("{}", now.row(&format!("hour {}", (s + 1) / steps_per_hour)));
            }
        }
        for (_, pair) in live.drain(..) {
            for e in &pair {
                let _ = e.stop().await;
            }
        }
        quiet(&timing, Duration::from_secs(300)).await;
        let after = r.sample().await;
        println!("{}", after.row("after 5 quiet minutes"));
        println!();
        println!(
            "churn: {hours} virtual hours, {next_lock} lock names, {started} elections, {next_grant} semaphore grants, {hours} watch cuts, {failures} failed calls; wall time {:.1} s",
            wall.elapsed().as_secs_f64()
        );
        let heap_growth = after.heap - baseline.heap;
        let allocations_growth = after.allocations - baseline.allocations;
        println!(
            "growth after the day: replicas' live heap {heap_growth:+} bytes ({:+.1} bytes per lock name; the store's {:+} bytes), live allocations {allocations_growth:+}, lease actors {:+}, supervisor entries {:+}, metric series {:+}, watched namespaces {:+}",
            heap_growth as f64 / locks.max(1) as f64,
            after.store - baseline.store,
            after.actors as i64 - baseline.actors as i64,
            after.entries as i64 - baseline.entries as i64,
            after.series as i64 - baseline.series as i64,
            after.namespaces as i64 - baseline.namespaces as i64,
        );
        // "Back to baseline": counts exactly, the heap within 64 KiB (buffers that grew to the
        // day's peak concurrency may keep their capacity).
        let back = after.actors <= baseline.actors
            && after.entries <= baseline.entries
            && after.series <= baseline.series
            && after.namespaces <= baseline.namespaces
            && heap_growth < 64 * 1024;
        println!("back to baseline: {}", if back { "yes" } else { "no" });
        drop(sems);
        let _ = r.a.shutdown().await;
        let _ = r.b.shutdown().await;
    });
}

/// Lets `span` of virtual time pass one retry period at a time (renewals keep their schedule).
async fn quiet(timing: &dsync::Timing, span: Duration) {
    let step = timing.retry_period();
    let mut passed = Duration::ZERO;
    while passed < span {
        tokio::time::advance(step).await;
        dsync::testing::settle().await;
        passed += step;
    }
}

fn real_time(seconds: u64) {
    let system = actix::System::new();
    system.block_on(async move {
        let r = Replicas::new(|id| Config::default().with_identity(id));
        let sems = [
            r.a.semaphore("soak-sem", 16).expect("semaphore"),
            r.b.semaphore("soak-sem", 16).expect("semaphore"),
        ];
        let start = StdInstant::now();
        let mut samples: Vec<u64> = Vec::new();
        let (mut next_lock, mut next_grant, mut failures) = (0u64, 0u64, 0u64);
        let mut live: std::collections::VecDeque<(u64, [dsync::Election; 2])> = Default::default();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        for s in 0..seconds {
            tick.tick().await;
            // About 70 lock names and 35 grants a second (the virtual day's rate, 60× faster).
            failures += churn(&r, &sems, next_lock..next_lock + 70, next_grant..next_grant + 35).await;
            next_lock += 70;
            next_grant += 35;
            if s % 10 == 0 {
                let name = format!("soak-e-{s}");
                live.push_back((s, [r.a.election(&name).unwrap(), r.b.election(&name).unwrap()]));
            }
            while live.front().is_some_and(|(at, _)| s >= at + 60) {
                let (_, pair) = live.pop_front().expect("checked");
                for e in &pair {
                    let _ = e.stop().await;
                }
            }
            if s % 60 == 30 {
                r.faults[((s / 60) % 2) as usize].drop_watches();
            }
            samples.push(rss_kib());
        }
        println!("| minute | RSS min / median / max (MiB) |\n|---|---|");
        let mut medians = Vec::new();
        for (m, minute) in samples.chunks(60).enumerate() {
            let mut sorted = minute.to_vec();
            sorted.sort_unstable();
            let mib = |k: u64| k as f64 / 1024.0;
            let median = sorted[sorted.len() / 2];
            medians.push(median);
            println!(
                "| {} | {:.1} / {:.1} / {:.1} |",
                m + 1,
                mib(sorted[0]),
                mib(median),
                mib(*sorted.last().unwrap())
            );
        }
        if let (Some(first), Some(last)) = (medians.first(), medians.last()) {
            println!(
                "RSS median, first minute to last: {:.1} -> {:.1} MiB ({:+.1} MiB); {next_lock} lock names, {next_grant} grants, {failures} failed calls in {:.0} s",
                *first as f64 / 1024.0,
                *last as f64 / 1024.0,
                (*last as f64 - *first as f64) / 1024.0,
                start.elapsed().as_secs_f64()
            );
        }
        drop(sems);
        for (_, pair) in live.drain(..) {
            for e in &pair {
                let _ = e.stop().await;
            }
        }
        let _ = r.a.shutdown().await;
        let _ = r.b.shutdown().await;
    });
}

fn main() {
    match std::env::var("DSYNC_SOAK_REAL")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        Some(seconds) => real_time(seconds),
        None => virtual_day(),
    }
}
