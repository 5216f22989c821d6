//! Micro-benchmarks of the pure lease core and the in-process store.
//!
//! `cargo bench --bench core`

use std::hint::black_box;
use std::time::{Duration, Instant, SystemTime};

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use dsync::lease::{Machine, Observed, Request, Step, Waiting, Want};
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
        uid: None,
    }
}

/// A machine that has read `other` holding the lease at `t0`.
fn following(t0: Instant, wall: SystemTime) -> Machine {
    let mut m = Machine::new("me", Timing::default());
    let Step::Call(read) = m.next(t0, wall, Want::Acquire) else {
        unreachable!("a new machine reads first")
    };
    m.on_result(t0, read.seq, Ok(lease("other", "7")));
    m
}

/// A machine that acquired the lease at `t0`.
fn holding(t0: Instant, wall: SystemTime) -> Machine {
    let mut m = Machine::new("me", Timing::default());
    let Step::Call(read) = m.next(t0, wall, Want::Acquire) else {
        unreachable!("a new machine reads first")
    };
    m.on_result(t0, read.seq, Ok(lease("", "7")));
    let Step::Call(call) = m.next(t0, wall, Want::Acquire) else {
        unreachable!("a free lease is acquired")
    };
    let Request::Replace { record, .. } = call.request else {
        unreachable!("by a replace")
    };
    let stored = StoredLease {
        name: "svc.election.bench".into(),
        record,
        resource_version: "8".into(),
        uid: None,
    };
    m.on_result(t0, call.seq, Ok(stored));
    assert!(m.holding());
    m
}

fn core(c: &mut Criterion) {
    let t0 = Instant::now();
    let wall = SystemTime::now();
    let s = Duration::from_secs;
    let (follower, holder) = (following(t0, wall), holding(t0, wall));
    // What each benchmark decides, checked once so the figures are for the right path.
    assert!(matches!(
        follower.clone().next(t0 + s(1), wall, Want::Acquire),
        Step::Wait(Waiting::Following { .. })
    ));
    assert!(matches!(
        follower.clone().next(t0 + s(16), wall, Want::Acquire),
        Step::Call(_)
    ));
    assert!(matches!(
        holder.clone().next(t0 + s(1), wall, Want::Keep),
        Step::Wait(Waiting::Holding { .. })
    ));
    let mut g = c.benchmark_group("machine_next");
    // Decisions that only wait leave the machine as it was: asked again and again.
    let mut waits = |name: &str, m: &Machine, at: Instant, want: Want| {
        let mut m = m.clone();
        g.bench_function(name, |b| {
            b.iter(|| black_box(m.next(black_box(at), wall, want)))
        });
    };
    waits("follow", &follower, t0 + s(1), Want::Acquire);
    waits("hold", &holder, t0 + s(1), Want::Keep);
    // Decisions that start a call change the machine: each is taken on a fresh copy, made
    // (and dropped) outside the timed part.
    let mut calls = |name: &str, m: &Machine, at: Instant, want: Want| {
        g.bench_function(name, |b| {
            b.iter_batched(
                || m.clone(),
                |mut m| {
                    let step = m.next(black_box(at), wall, want);
                    (m, step)
                },
                BatchSize::SmallInput,
            )
        });
    };
    calls("acquire_expired", &follower, t0 + s(16), Want::Acquire);
    calls("renew", &holder, t0 + s(2), Want::Keep);
    calls("release", &holder, t0 + s(1), Want::Release);
    g.finish();
    let theirs = Observed {
        lease: Some(lease("other", "7")),
        changed_at: t0,
    };
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
