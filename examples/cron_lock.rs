//! A periodic job that must not run twice at once across replicas, guarded by
//! `Lock::with_try_lock`, writing to a downstream store that checks the lock's fencing token.
//!
//! Run: `cargo run --example cron_lock`
//!
//! 1. Three replicas run the same "cron" loop on the in-process `MemoryStore`. Each round,
//!    every replica tries the lock: one runs the job, the others skip the round.
//! 2. Why the token matters: replica-3 takes the lock, and while its job is still running it
//!    is cut off from the API server (as a paused or partitioned pod would be). Its term ends
//!    at the renew deadline; replica-1 takes the lock after the lease duration and writes.
//!    Then replica-3's job, which never looked at its term, writes late: the downstream store
//!    rejects the write, because its token is lower than one it has already seen; and
//!    `with_try_lock` reports the lock lost (`WithLockError::Lost`, with the job's output)
//!    instead of handing the output back as a success.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use dsync::lock::WithLockError;
use dsync::testing::FaultyStore;
use dsync::{Config, Dsync, Error, Lock, MemoryStore, Term, Timing};
use tokio::sync::watch;

/// The downstream system the job writes to (a database, a bucket, an API). It keeps the
/// highest fencing token it has seen and refuses writes that carry a lower one.
#[derive(Clone)]
struct FencedStore {
    highest: Arc<watch::Sender<Option<i32>>>,
    rows: Arc<Mutex<Vec<String>>>,
}

/// A write under a token lower than one the store has already seen.
#[derive(Debug, PartialEq, Eq)]
struct StaleToken {
    token: i32,
    highest: i32,
}

impl FencedStore {
    fn new() -> Self {
        FencedStore {
            highest: Arc::new(watch::Sender::new(None)),
            rows: Arc::default(),
        }
    }

    fn write(&self, token: i32, row: String) -> Result<(), StaleToken> {
        let mut stale = None;
        // Checked and recorded in one step.
        self.highest.send_if_modified(|highest| match *highest {
            Some(h) if token < h => {
                stale = Some(StaleToken { token, highest: h });
                false
            }
            Some(h) if token == h => false,
            _ => {
                *highest = Some(token);
                true
            }
        });
        if let Some(stale) = stale {
            return Err(stale);
        }
        self.rows
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(row);
        Ok(())
    }
}

/// The job: one write under the term's fencing token.
fn job(replica: &str, round: u32, term: &Term, downstream: &FencedStore) -> Result<(), StaleToken> {
    let token = term.fencing_token();
    downstream.write(token, format!("round {round} by {replica} (token {token})"))
}

/// One replica's cron loop: every period, run the job if no other replica runs it.
async fn cron(replica: &str, lock: Lock, downstream: FencedStore, rounds: u32) -> u32 {
    let mut ran = 0;
    let mut every = tokio::time::interval(Duration::from_millis(150));
    for round in 1..=rounds {
        every.tick().await;
        let downstream = &downstream;
        match lock
            .with_try_lock(|term| async move { job(replica, round, &term, downstream) })
            .await
        {
            Ok(Ok(())) => {
                println!("{replica}: round {round}: ran the job");
                ran += 1;
            }
            Ok(Err(stale)) => println!("{replica}: round {round}: write rejected: {stale:?}"),
            Err(WithLockError::Lock(Error::AlreadyLocked { holder, .. })) => {
                println!("{replica}: round {round}: skipped, {holder} runs it");
            }
            Err(other) => println!("{replica}: round {round}: {other}"),
        }
    }
    ran
}

#[actix::main]
async fn main() -> Result<(), Error> {
    // Short timings so the demo runs in seconds: lease 1 s, renew deadline 0.75 s, retry 0.25 s.
    let timing = Timing::from_secs_f64(1.0, 0.75, 0.25)?;
    let memory = MemoryStore::new();
    let downstream = FencedStore::new();
    let mut replicas = Vec::new();
    let mut links = Vec::new();
    for name in ["replica-1", "replica-2", "replica-3"] {
        // Each replica reaches the shared store through a link the demo can cut (dsync's
        // test kit: a partitioned replica's calls hang and its watch goes quiet).
        let link = FaultyStore::new(memory.clone());
        let config = Config::default().with_identity(name).with_timing(timing);
        replicas.push((name, Dsync::with_config(link.clone(), config)?));
        links.push(link);
    }

    println!("--- 1. three replicas, one job per round");
    let loops = replicas.iter().map(|(name, dsync)| {
        let lock = dsync.lock("nightly-report").expect("a valid lock name");
        cron(name, lock, downstream.clone(), 4)
    });
    let ran: u32 = futures::future::join_all(loops).await.into_iter().sum();
    assert!(ran >= 1, "some replica ran the job");
    let written = downstream.rows.lock().unwrap().len();
    assert_eq!(written as u32, ran, "every job that ran wrote once");

    println!("--- 2. replica-3 is cut off while its job runs; its late write is fenced off");
    let (name3, dsync3) = &replicas[2];
    let (name1, dsync1) = &replicas[0];
    let (cut_off, is_cut_off) = tokio::sync::oneshot::channel();
    let lock3 = dsync3.lock("nightly-report")?;
    let late = lock3.with_try_lock(|term| {
        let (downstream, link) = (downstream.clone(), links[2].clone());
        async move {
            job(name3, 5, &term, &downstream).expect("holds the lock: accepted");
            println!(
                "{name3}: wrote under token {}; now cut off",
                term.fencing_token()
            );
            link.partition();
            let _ = cut_off.send(());
            // A well-behaved job stops here (`term.cancelled()` fires at the renew
            // deadline); this one carries on as if nothing happened ...
            term.cancelled().await;
            println!("{name3}: term ended, but the job goes on");
            // ... and writes after another replica has taken over.
            let mut highest = downstream.highest.subscribe();
            let mine = term.fencing_token();
            highest
                .wait_for(|h| h.is_some_and(|h| h > mine))
                .await
                .expect("the store lives");
            job(name3, 5, &term, &downstream)
        }
    });
    let takeover = async {
        // Once replica-3 holds the lock and is cut off, replica-1 waits for the lock: free
        // once replica-3's lease has expired.
        let _ = is_cut_off.await;
        let lock = dsync1.lock("nightly-report")?;
        lock.with_lock(|term| {
            let downstream = downstream.clone();
            async move {
                job(name1, 6, &term, &downstream).expect("a new term: accepted");
                println!(
                    "{name1}: took over, wrote under token {}",
                    term.fencing_token()
                );
            }
        })
        .await
    };
    let (late, takeover) = futures::join!(late, takeover);
    takeover?;
    // with_try_lock does not hand the job's result back as a success: the lock was lost while
    // the job ran. Here the downstream store's token check rejected the late write too.
    let rejected = match late {
        Err(WithLockError::Lost {
            fencing_token,
            output,
            ..
        }) => {
            println!("{name3}: with_try_lock reports the lock lost (token {fencing_token})");
            output.expect_err("the late write must be rejected")
        }
        other => panic!("expected the lock to be reported lost, got {other:?}"),
    };
    println!("{name3}: late write rejected: {rejected:?}");
    assert!(rejected.token < rejected.highest);

    links[2].heal();
    for (_, dsync) in &replicas {
        dsync.shutdown().await?;
    }
    println!(
        "done: {} rows written",
        downstream.rows.lock().unwrap().len()
    );
    Ok(())
}
