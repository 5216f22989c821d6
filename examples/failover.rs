//! Three replicas of a service share one in-process `MemoryStore` and elect a leader.
//! The leader is stopped gracefully (the next one takes over at once), then the next leader
//! "crashes" (its store goes silent, as a dead pod's would) and the last replica takes over
//! after the lease duration. Finally two replicas contend for a lock.
//!
//! Run: `cargo run --example failover`

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::prelude::*;
use dsync::store::{LeaseKey, LeaseRecord, LeaseStore, StoreResult, StoredLease, WatchEvent};
use dsync::{Config, Deposed, Dsync, Elected, Election, LeaderChanged, MemoryStore, Timing};
use futures::future::{BoxFuture, FutureExt};
use futures::stream::{BoxStream, StreamExt};
use tokio::time::Instant;

/// Short timings so the demo runs in seconds: lease 2 s, renew deadline 1.5 s, retry 0.5 s.
fn timing() -> Timing {
    Timing::new(
        Duration::from_secs(2),
        Duration::from_millis(1500),
        Duration::from_millis(500),
    )
    .expect("valid timing")
}

/// A store that can "crash": from then on every call hangs and watches go quiet, which is all
/// the other replicas can see of a dead process.
#[derive(Clone)]
struct Crashable {
    inner: MemoryStore,
    crashed: Arc<AtomicBool>,
}

impl LeaseStore for Crashable {
    fn get(&self, key: &LeaseKey) -> BoxFuture<'static, StoreResult<StoredLease>> {
        if self.crashed.load(Ordering::SeqCst) {
            return futures::future::pending().boxed();
        }
        self.inner.get(key)
    }
    fn create(
        &self,
        key: &LeaseKey,
        r: LeaseRecord,
    ) -> BoxFuture<'static, StoreResult<StoredLease>> {
        if self.crashed.load(Ordering::SeqCst) {
            return futures::future::pending().boxed();
        }
        self.inner.create(key, r)
    }
    fn replace(
        &self,
        key: &LeaseKey,
        r: LeaseRecord,
        version: &str,
    ) -> BoxFuture<'static, StoreResult<StoredLease>> {
        if self.crashed.load(Ordering::SeqCst) {
            return futures::future::pending().boxed();
        }
        self.inner.replace(key, r, version)
    }
    fn watch(&self, namespace: &str) -> BoxStream<'static, StoreResult<WatchEvent>> {
        let crashed = self.crashed.clone();
        self.inner
            .watch(namespace)
            .take_while(move |_| futures::future::ready(!crashed.load(Ordering::SeqCst)))
            .boxed()
    }
}

fn stamp(start: Instant) -> String {
    format!("[{:6.2}s]", start.elapsed().as_secs_f64())
}

/// Prints a replica's election events as they arrive.
struct Printer {
    replica: String,
    start: Instant,
    terms: Arc<Mutex<Vec<(String, i32)>>>,
}

impl Actor for Printer {
    type Context = Context<Self>;
}

impl Handler<Elected> for Printer {
    type Result = ();
    fn handle(&mut self, msg: Elected, _: &mut Context<Self>) {
        let token = msg.term.fencing_token();
        println!(
            "{} {} elected (term {}, fencing token {token})",
            stamp(self.start),
            self.replica,
            msg.term.id()
        );
        self.terms
            .lock()
            .unwrap()
            .push((self.replica.clone(), token));
    }
}

impl Handler<Deposed> for Printer {
    type Result = ();
    fn handle(&mut self, msg: Deposed, _: &mut Context<Self>) {
        println!(
            "{} {} deposed (term {}): {}",
            stamp(self.start),
            self.replica,
            msg.term_id,
            msg.reason
        );
    }
}

impl Handler<LeaderChanged> for Printer {
    type Result = ();
    fn handle(&mut self, msg: LeaderChanged, _: &mut Context<Self>) {
        if msg.leader.as_deref() != Some(self.replica.as_str()) {
            let leader = msg.leader.as_deref().unwrap_or("nobody");
            println!(
                "{} {} sees leader: {leader}",
                stamp(self.start),
                self.replica
            );
        }
    }
}

async fn wait_for_leader(elections: &[Election]) -> usize {
    let mut rxs: Vec<_> = elections.iter().map(Election::watch_status).collect();
    loop {
        if let Some(i) = elections.iter().position(Election::is_leader) {
            return i;
        }
        let changes = rxs.iter_mut().map(|rx| Box::pin(rx.changed()));
        let (changed, _, _) = futures::future::select_all(changes).await;
        changed.expect("election actor alive");
    }
}

#[actix::main]
async fn main() -> Result<(), dsync::Error> {
    let start = Instant::now();
    let memory = MemoryStore::new();
    let terms = Arc::new(Mutex::new(Vec::new()));
    let names = ["replica-1", "replica-2", "replica-3"];
    let mut replicas = Vec::new();
    let mut crash_switches = Vec::new();
    let mut elections = Vec::new();
    let mut printers = Vec::new();
    for name in names {
        let crashed = Arc::new(AtomicBool::new(false));
        let store = Crashable {
            inner: memory.clone(),
            crashed: crashed.clone(),
        };
        let dsync = Dsync::with_config(
            store,
            Config::default().with_identity(name).with_timing(timing()),
        )?;
        let election = dsync.election("demo")?;
        let printer = Printer {
            replica: name.to_owned(),
            start,
            terms: terms.clone(),
        }
        .start();
        election.subscribe(&printer)?;
        // Leader-only work: runs while this replica leads, stops when its term is cancelled.
        election.when_elected(move |term| async move {
            let mut tick = tokio::time::interval(Duration::from_millis(700));
            loop {
                tokio::select! {
                    _ = term.cancelled() => break,
                    _ = tick.tick() => println!(
                        "{} {name} working under fencing token {}",
                        stamp(start),
                        term.fencing_token()
                    ),
                }
            }
        })?;
        replicas.push(dsync);
        crash_switches.push(crashed);
        elections.push(election);
        printers.push(printer); // subscriptions are weak: keep the printers alive
    }

    let first = wait_for_leader(&elections).await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    println!("{} --- stopping {} gracefully", stamp(start), names[first]);
    elections[first].stop().await?;
    let rest: Vec<usize> = (0..3).filter(|&i| i != first).collect();
    let live: Vec<Election> = rest.iter().map(|&i| elections[i].clone()).collect();
    let second = rest[wait_for_leader(&live).await];
    tokio::time::sleep(Duration::from_secs(1)).await;

    println!(
        "{} --- {} crashes (its store goes silent)",
        stamp(start),
        names[second]
    );
    crash_switches[second].store(true, Ordering::SeqCst);
    let third = rest
        .iter()
        .copied()
        .find(|&i| i != second)
        .expect("one left");
    elections[third].elected().await?;
    println!(
        "{} --- {} took over after the lease duration",
        stamp(start),
        names[third]
    );
    tokio::time::sleep(Duration::from_secs(1)).await;

    println!("{} --- two replicas contend for a lock", stamp(start));
    let lock_a = replicas[third].lock("nightly-report")?;
    let lock_b = replicas[first].lock("nightly-report")?;
    let (a, b) = futures::join!(
        lock_a.with_lock(|term| async move {
            println!(
                "{} {} holds the lock (token {})",
                stamp(start),
                names[third],
                term.fencing_token()
            );
            tokio::time::sleep(Duration::from_millis(800)).await;
        }),
        lock_b.with_lock(|term| async move {
            println!(
                "{} {} holds the lock (token {})",
                stamp(start),
                names[first],
                term.fencing_token()
            );
            tokio::time::sleep(Duration::from_millis(800)).await;
        }),
    );
    a?;
    b?;

    let terms = terms.lock().unwrap().clone();
    println!("\nterms: {terms:?}");
    let increasing = terms.windows(2).all(|w| w[0].1 < w[1].1);
    println!("fencing tokens strictly increase: {increasing}");
    for (i, dsync) in replicas.iter().enumerate() {
        if i != second {
            dsync.shutdown().await?;
        }
    }
    assert!(increasing, "fencing tokens must strictly increase");
    println!("{} done", stamp(start));
    Ok(())
}
