//! Scale: many elections in one process on the memory store; reports RSS and steady CPU.
//!
//! `cargo bench --bench scale` (env: `DSYNC_SCALE_ELECTIONS`, default 10000;
//! `DSYNC_SCALE_REPLICAS`, default 2, each campaigning for every election;
//! `DSYNC_SCALE_SECONDS`, default 20, the steady-state window; `DSYNC_SCALE_THREAD`,
//! `dedicated` (default: each replica's lease actors on a thread of its own, as in production)
//! or `current` (every replica's actors on the main thread, as before dsync had a lease thread
//! of its own)). Timing is the default 15 s / 10 s / 2 s, so every leader renews every 2 s.
//!
//! With `dedicated`, the replicas in this one process are on different threads but share one
//! `MemoryStore`: each write wakes the other replica's thread for its watch event, a cost that
//! replicas in processes of their own (production) do not pay to each other.
//!
//! Besides the totals it reports CPU per renewal (µs) and as a multiple of the bare
//! compare-and-swap (`MemoryStore::replace` in a loop, measured in the same run), heap
//! allocations per renewal (counted by this binary's allocator: the same from run to run,
//! where CPU time on a shared machine is not), and RSS per election: the cost of the actor,
//! timer and watch machinery around the one write a renewal needs.
//!
//! Linux only (reads /proc/self).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use dsync::config::LeaseThread;
use dsync::store::LeaseKey;
use dsync::store::LeaseRecord;
use dsync::{Config, Dsync, LeaseStore, MemoryStore};

/// The system allocator, counting allocations: unlike CPU time on a shared machine, the
/// number of allocations per renewal is the same from run to run.
struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: every call is passed on unchanged to the system allocator; the counter has no
// effect on the memory handed out.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's contract for `alloc`, passed on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract for `dealloc`, passed on.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
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

/// User + system CPU time of this process.
fn cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which is in parentheses): utime is 14th, stime 15th.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
        + fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    // USER_HZ is 100 on Linux.
    Duration::from_millis(ticks * 10)
}

/// CPU time of one bare compare-and-swap on a `MemoryStore` of `leases` leases: the least a
/// renewal can cost in this process.
async fn bare_cas(leases: usize) -> Duration {
    let store = MemoryStore::new();
    let mut versions = Vec::with_capacity(leases);
    for i in 0..leases {
        let key = LeaseKey::new("default", format!("unscoped.election.e{i}"));
        let record = LeaseRecord {
            holder_identity: Some("replica-0".into()),
            lease_duration_seconds: Some(15),
            ..Default::default()
        };
        let stored = store.create(&key, record).await.unwrap();
        versions.push((key, stored));
    }
    let rounds = (200_000 / leases.max(1)).max(1);
    let (cpu0, n) = (cpu(), rounds * leases);
    for _ in 0..rounds {
        for (key, stored) in versions.iter_mut() {
            let mut record = stored.record.clone();
            record.renew_time = Some(std::time::SystemTime::now());
            *stored = store
                .replace(key, record, &stored.resource_version)
                .await
                .unwrap();
        }
    }
    (cpu() - cpu0) / n as u32
}

fn main() {
    // `cargo bench` passes --bench; this is not a criterion bench.
    let elections = env("DSYNC_SCALE_ELECTIONS", 10_000) as usize;
    let replicas = env("DSYNC_SCALE_REPLICAS", 2) as usize;
    let window = Duration::from_secs(env("DSYNC_SCALE_SECONDS", 20));
    let thread = match std::env::var("DSYNC_SCALE_THREAD").as_deref() {
        Ok("current") => LeaseThread::Current,
        Ok("dedicated") | Err(_) => LeaseThread::Dedicated,
        Ok(other) => {
            eprintln!("DSYNC_SCALE_THREAD={other:?}: expected dedicated or current");
            std::process::exit(2);
        }
    };
    let rss_before = rss_kib();
    actix::System::new().block_on(async move {
        let store = MemoryStore::new();
        let dsyncs: Vec<Dsync> = (0..replicas)
            .map(|r| {
                let config = Config::default()
                    .with_identity(format!("replica-{r}"))
                    .with_lease_thread(thread);
                Dsync::with_config(store.clone(), config).unwrap()
            })
            .collect();
        let started = Instant::now();
        let mut handles = Vec::with_capacity(elections * replicas);
        for i in 0..elections {
            for d in &dsyncs {
                handles.push(d.election(&format!("e{i}")).unwrap());
            }
        }
        // Wait until every replica sees a leader in every election (its first read done), so
        // that no start-up read falls into the steady window.
        for handle in &handles {
            let mut rx = handle.watch_status();
            let _ = rx.wait_for(|s| s.holder.is_some()).await;
        }
        let setup = started.elapsed();
        let stats0 = store.stats();
        let (cpu0, t0, allocs0) = (cpu(), Instant::now(), ALLOCATIONS.load(Ordering::Relaxed));
        tokio::time::sleep(window).await;
        let (cpu1, t1, allocs1) = (cpu(), Instant::now(), ALLOCATIONS.load(Ordering::Relaxed));
        let stats1 = store.stats();
        let leaders = handles.iter().filter(|e| e.is_leader()).count();
        let rss = rss_kib();
        let busy = (cpu1 - cpu0).as_secs_f64() / (t1 - t0).as_secs_f64();
        let renewals = stats1.replaces - stats0.replaces;
        let writes = renewals as f64 / (t1 - t0).as_secs_f64();
        let per_renewal = (cpu1 - cpu0).as_secs_f64() / renewals.max(1) as f64;
        println!(
            "elections: {elections}, replicas: {replicas}, actors: {}, lease threads: {thread:?}",
            handles.len()
        );
        println!("leaders: {leaders} (expected {elections})");
        println!("setup until all elected: {:.2} s", setup.as_secs_f64());
        println!(
            "RSS: {:.1} MiB (process start: {:.1} MiB)",
            rss as f64 / 1024.0,
            rss_before as f64 / 1024.0
        );
        println!(
            "steady CPU over {:.0} s: {:.2} % of one core",
            window.as_secs_f64(),
            busy * 100.0
        );
        println!(
            "renewals: {writes:.0}/s ({renewals} in the window); reads in window: {}",
            stats1.gets - stats0.gets
        );
        println!(
            "RSS per election: {:.1} KiB ({} replica(s))",
            (rss.saturating_sub(rss_before)) as f64 / elections as f64,
            replicas
        );
        println!(
            "allocations per renewal: {:.1} (whole process, steady window)",
            (allocs1 - allocs0) as f64 / renewals.max(1) as f64
        );
        let cas = bare_cas(elections.min(10_000)).await.as_secs_f64();
        println!(
            "CPU per renewal: {:.1} µs; bare compare-and-swap: {:.2} µs; ratio {:.0}×",
            per_renewal * 1e6,
            cas * 1e6,
            per_renewal / cas.max(1e-9)
        );
        if leaders != elections {
            println!(
                "NOTE: {} elections had no leader here at the end",
                elections - leaders
            );
        }
        for d in &dsyncs {
            if let Err(error) = d.shutdown().await {
                println!("NOTE: shutdown: {error}");
            }
        }
        // For `benches/instructions.sh`, which divides by the whole run's writes: renewals
        // outside the window vary with timing, and would otherwise count as cost.
        println!(
            "replaces in the whole run: {} (renewals and releases)",
            store.stats().replaces
        );
    });
}
