//! Micro-benchmarks of the pure lease core and the in-process store.
//!
//! `cargo bench --bench core`

use std::hint::black_box;
use std::time::{Duration, Instant, SystemTime};

use criterion::{Criterion, criterion_group, criterion_main};
use dsync::lease::{Claim, Input, Observed, decide};
use dsync::store::{LeaseKey, LeaseRecord, LeaseStore, StoredLease};
use dsync::{MemoryStore, Timing};

fn lease(holder: &str, version: &str) -> StoredLease {
    StoredLease {
        name: "svc.election.bench".into(),
        record: LeaseRecord {
            holder_identity: Some(holder.into()),
            lease_duration_seconds: Some(15),
            lease_transitions: Some(3),
            ..Default::default()
        },
        resource_version: version.into(),
    }
}

fn core(c: &mut Criterion) {
    let timing = Timing::default();
    let t0 = Instant::now();
    let wall = SystemTime::now();
    let theirs = Observed {
        lease: Some(lease("other", "7")),
        changed_at: t0,
    };
    let ours = Observed {
        lease: Some(lease("me", "7")),
        changed_at: t0,
    };
    let claim = Claim {
        token: 3,
        acquired_at: t0,
        renewed_at: t0,
    };
    let input = |observed, claim, now| Input {
        now,
        wall_now: wall,
        identity: "me",
        timing: &timing,
        observed,
        claim,
        want: true,
        retry_after: None,
    };
    let mut g = c.benchmark_group("decide");
    g.bench_function("follow", |b| {
        b.iter(|| {
            decide(black_box(&input(
                Some(&theirs),
                None,
                t0 + Duration::from_secs(1),
            )))
        })
    });
    g.bench_function("acquire_expired", |b| {
        b.iter(|| {
            decide(black_box(&input(
                Some(&theirs),
                None,
                t0 + Duration::from_secs(16),
            )))
        })
    });
    g.bench_function("renew", |b| {
        b.iter(|| {
            decide(black_box(&input(
                Some(&ours),
                Some(&claim),
                t0 + Duration::from_secs(2),
            )))
        })
    });
    g.bench_function("hold", |b| {
        b.iter(|| {
            decide(black_box(&input(
                Some(&ours),
                Some(&claim),
                t0 + Duration::from_secs(1),
            )))
        })
    });
    g.finish();
    c.bench_function("observed_update_same_version", |b| {
        b.iter(|| Observed::update(black_box(Some(&theirs)), Some(lease("other", "7")), t0))
    });
}

fn memory_store(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let store = MemoryStore::new();
    let key = LeaseKey::new("default", "svc.election.bench");
    let mut current = rt
        .block_on(store.create(&key, lease("me", "0").record))
        .unwrap();
    let mut g = c.benchmark_group("memory_store");
    g.bench_function("get", |b| {
        b.iter(|| rt.block_on(store.get(black_box(&key))).unwrap())
    });
    let mut n = 0u64;
    g.bench_function("replace_cas", |b| {
        b.iter(|| {
            n += 1;
            let mut record = current.record.clone();
            record.renew_time = Some(SystemTime::UNIX_EPOCH + Duration::from_secs(n));
            current = rt
                .block_on(store.replace(&key, record, &current.resource_version))
                .unwrap();
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1));
    targets = core, memory_store
}
criterion_main!(benches);
