//! Three replicas of a service share one in-process `MemoryStore` and elect a leader.
//! The leader is stopped gracefully (the next one takes over at once), then the next leader
//! "crashes" (its store goes silent, as a dead pod's would) and the last replica takes over
//! after the lease duration. Finally two replicas contend for a lock.
//!
//! Each replica reaches the shared store through a `FaultyStore` from dsync's test kit
//! (feature `testing`), which plays the crash: from then on every call hangs and its watch
//! ends, which is all the other replicas can see of a dead process. A `TermLog` checks, at the
//! end, that no two terms overlapped and that fencing tokens strictly increased.
//!
//! Run: `cargo run --example failover --features testing`

use std::time::Duration;

use actix::prelude::*;
use dsync::testing::{FaultyStore, TermLog, leader_of};
use dsync::{Config, Deposed, Dsync, Elected, HolderChanged, MemoryStore, Timing};
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

fn stamp(start: Instant) -> String {
    format!("[{:6.2}s]", start.elapsed().as_secs_f64())
}

/// Prints a replica's election events as they arrive.
struct Printer {
    replica: String,
    start: Instant,
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

impl Handler<HolderChanged> for Printer {
    type Result = ();
    fn handle(&mut self, msg: HolderChanged, _: &mut Context<Self>) {
        if msg.holder.as_deref() != Some(self.replica.as_str()) {
            let leader = msg.holder.as_deref().unwrap_or("nobody");
            println!(
                "{} {} sees leader: {leader}",
                stamp(self.start),
                self.replica
            );
        }
    }
}

#[actix::main]
async fn main() -> Result<(), dsync::Error> {
    let start = Instant::now();
    let memory = MemoryStore::new();
    // Every term, for the checks at the end.
    let log = TermLog::new();
    let names = ["replica-1", "replica-2", "replica-3"];
    let mut replicas = Vec::new();
    let mut links = Vec::new();
    let mut elections = Vec::new();
    let mut printers = Vec::new();
    for name in names {
        // The replica's link to the store: a crash is a partition that never heals.
        let link = FaultyStore::new(memory.clone());
        let dsync = Dsync::with_config(
            link.clone(),
            Config::default().with_identity(name).with_timing(timing()),
        )?;
        let election = dsync.election("demo")?;
        let printer = Printer {
            replica: name.to_owned(),
            start,
        }
        .start();
        // One recipient per message type the printer handles.
        election.subscribe(printer.clone().recipient::<Elected>())?;
        election.subscribe(printer.clone().recipient::<Deposed>())?;
        election.subscribe(printer.clone().recipient::<HolderChanged>())?;
        log.record(name, &election)?;
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
        links.push(link);
        elections.push(election);
        printers.push(printer); // subscriptions are weak: keep the printers alive
    }

    let limit = Duration::from_secs(30);
    let first = leader_of(limit, &elections).await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    println!("{} --- stopping {} gracefully", stamp(start), names[first]);
    elections[first].stop().await?;
    let rest: Vec<usize> = (0..3).filter(|&i| i != first).collect();
    let live: Vec<_> = rest.iter().map(|&i| elections[i].clone()).collect();
    let second = rest[leader_of(limit, &live).await];
    tokio::time::sleep(Duration::from_secs(1)).await;

    println!(
        "{} --- {} crashes (its store goes silent)",
        stamp(start),
        names[second]
    );
    links[second].partition();
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
    let (log_a, log_b) = (log.clone(), log.clone());
    let (a, b) = futures::join!(
        lock_a.with_lock(|term| async move {
            log_a.got(names[third], &term);
            println!(
                "{} {} holds the lock (token {})",
                stamp(start),
                names[third],
                term.fencing_token()
            );
            tokio::time::sleep(Duration::from_millis(800)).await;
        }),
        lock_b.with_lock(|term| async move {
            log_b.got(names[first], &term);
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

    for (i, dsync) in replicas.iter().enumerate() {
        if i != second {
            dsync.shutdown().await?;
        }
    }
    println!();
    for span in log.spans() {
        println!(
            "term of {} on {}: fencing token {}",
            span.lease.name, span.replica, span.token
        );
    }
    // Per lease: no two terms active at once, fencing tokens strictly increasing.
    match log.check() {
        Ok(n) => println!("{n} terms: never two at once, fencing tokens strictly increase"),
        Err(violation) => panic!("{violation}"),
    }
    println!("{} done", stamp(start));
    Ok(())
}
