//! An actix actor whose work runs only on the leader: two replicas of a service in one
//! process, on the in-process `MemoryStore`. The leader's worker ticks under its term's
//! fencing token; the leader is stopped, its worker is told (`Deposed`, with the reason) and
//! stops, and the other replica's worker takes over with a higher token.
//!
//! Run: `cargo run --example leader_only`
//!
//! Two ways to run leader-only work with dsync:
//!
//! * this one: a long-lived actor subscribed to `Elected` / `Deposed`, which starts its work
//!   on `Elected` and stops it on `Deposed`. Messages arrive after the fact, so the work
//!   also checks `term.is_active()` before every side effect;
//! * [`dsync::LeaderOnly`]: dsync creates the actor at the start of every term and stops it
//!   when the term ends, and the election waits for it to stop before it hands over (see
//!   `examples/web`).

use std::time::Duration;

use actix::prelude::*;
use dsync::election::DeposeReason;
use dsync::{Deposed, Dsync, Elected, MemoryStore, Term};
use tokio::sync::mpsc;

/// What the workers report to `main` (which checks the story; a real service would not).
#[derive(Debug)]
enum Event {
    Tick {
        replica: &'static str,
        token: i32,
    },
    Deposed {
        replica: &'static str,
        reason: DeposeReason,
    },
}

/// The leader-only worker of one replica.
struct Worker {
    replica: &'static str,
    /// The term it works under, and its ticking, while this replica leads.
    job: Option<(Term, SpawnHandle)>,
    events: mpsc::UnboundedSender<Event>,
}

impl Actor for Worker {
    type Context = Context<Self>;
}

impl Handler<Elected> for Worker {
    type Result = ();

    /// This replica leads: start the work.
    fn handle(&mut self, Elected { term }: Elected, ctx: &mut Context<Self>) {
        println!(
            "{}: elected, fencing token {}: starting the work",
            self.replica,
            term.fencing_token()
        );
        let handle = ctx.run_interval(Duration::from_millis(100), |worker, _| {
            let Some((term, _)) = &worker.job else { return };
            // `Deposed` may still be on its way: never act under a term that has ended.
            if !term.is_active() {
                return;
            }
            println!(
                "{}: working under token {}",
                worker.replica,
                term.fencing_token()
            );
            let _ = worker.events.send(Event::Tick {
                replica: worker.replica,
                token: term.fencing_token(),
            });
        });
        if let Some((_, old)) = self.job.replace((term, handle)) {
            ctx.cancel_future(old);
        }
    }
}

impl Handler<Deposed> for Worker {
    type Result = ();

    /// This replica's term ended: stop the work, say why.
    fn handle(&mut self, deposed: Deposed, ctx: &mut Context<Self>) {
        match self.job.take() {
            Some((term, handle)) if term.id() == deposed.term_id => {
                ctx.cancel_future(handle);
                println!(
                    "{}: deposed ({}): work stopped",
                    self.replica, deposed.reason
                );
                let _ = self.events.send(Event::Deposed {
                    replica: self.replica,
                    reason: deposed.reason,
                });
            }
            // A late message about an older term: the current work goes on.
            other => self.job = other,
        }
    }
}

/// Starts a replica's worker and subscribes it to the replica's election of `name`.
fn start_worker(
    dsync: &Dsync,
    name: &str,
    replica: &'static str,
    events: &mpsc::UnboundedSender<Event>,
) -> Result<(dsync::Election, Addr<Worker>), dsync::Error> {
    let election = dsync.election(name)?;
    let worker = Worker {
        replica,
        job: None,
        events: events.clone(),
    }
    .start();
    // Subscriptions are weak: keep the worker's address for as long as it should run.
    election.subscribe(worker.clone().recipient::<Elected>())?;
    election.subscribe(worker.clone().recipient::<Deposed>())?;
    Ok((election, worker))
}

#[actix::main]
async fn main() -> Result<(), dsync::Error> {
    let store = MemoryStore::new(); // on Kubernetes: Dsync::connect(Config::from_env()?)
    let a = Dsync::new(store.clone(), "pod-a")?;
    let b = Dsync::new(store.clone(), "pod-b")?;
    let (tx, mut events) = mpsc::unbounded_channel();

    let (election_a, _worker_a) = start_worker(&a, "reconciler", "pod-a", &tx)?;
    election_a.elected().await?; // the lease is free: pod-a leads
    let (_election_b, _worker_b) = start_worker(&b, "reconciler", "pod-b", &tx)?;

    // pod-a works; pod-b waits.
    let mut a_token = None;
    while let Some(event) = events.recv().await {
        match event {
            Event::Tick { replica, token } => {
                assert_eq!(replica, "pod-a", "only the leader works");
                if a_token.replace(token).is_some() {
                    break; // two ticks seen
                }
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    println!("--- stopping pod-a");
    a.shutdown().await?; // ends the term, releases the lease: pod-b takes over at once

    // pod-a's worker is deposed (and stops); pod-b's starts with a higher token.
    let (mut deposed, mut b_ticks) = (false, 0);
    while let Some(event) = events.recv().await {
        match event {
            Event::Deposed { replica, reason } => {
                assert_eq!((replica, reason), ("pod-a", DeposeReason::Stopped));
                deposed = true;
            }
            Event::Tick { replica, token } => {
                assert_eq!(replica, "pod-b", "pod-a's work stopped with its term");
                assert!(Some(token) > a_token, "the new term's token is higher");
                b_ticks += 1;
            }
        }
        if deposed && b_ticks >= 2 {
            break;
        }
    }

    b.shutdown().await?;
    println!("done: pod-a worked, was deposed and stopped; pod-b took over");
    Ok(())
}
