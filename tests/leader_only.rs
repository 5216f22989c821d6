//! `LeaderOnly`: an actor that runs only while its replica leads, on both stores.
#![cfg(feature = "testing")]

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::prelude::*;
use dsync::leader_only::RestartBackoff;
use dsync::testing::{leader_of, within};
use dsync::{LeaderOnly, Term};
use support::backend::Env;
use tokio::time::Instant;

crate::on_both_stores!(
    runs_while_leader_and_stops_with_the_term_before_the_release,
    restarts_with_backoff_when_it_dies_while_leader,
    never_runs_in_two_replicas_at_once_through_crashes_and_stops,
);

/// One actor life: which replica, its term's token, when it started and stopped, and whether
/// its term was still active when it stopped.
#[derive(Debug, Clone)]
struct Life {
    replica: String,
    token: i32,
    started: Instant,
    stopped: Option<Instant>,
    term_active_at_stop: Option<bool>,
}

#[derive(Clone, Default)]
struct Lives(Arc<Mutex<Vec<Life>>>);

impl Lives {
    fn all(&self) -> Vec<Life> {
        self.0.lock().unwrap().clone()
    }

    fn assert_never_two_at_once(&self) {
        let mut lives = self.all();
        lives.sort_by_key(|l| l.started);
        for pair in lives.windows(2) {
            let end = pair[0].stopped.expect("an earlier life has ended");
            assert!(end <= pair[1].started, "two at once: {pair:#?}");
        }
    }
}

/// A background worker that records its life. With `die_after`, it stops by itself.
struct Worker {
    replica: String,
    term: Term,
    lives: Lives,
    index: usize,
    die_after: Option<Duration>,
}

impl Actor for Worker {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let mut lives = self.lives.0.lock().unwrap();
        self.index = lives.len();
        lives.push(Life {
            replica: self.replica.clone(),
            token: self.term.fencing_token(),
            started: Instant::now(),
            stopped: None,
            term_active_at_stop: None,
        });
        if let Some(d) = self.die_after {
            ctx.run_later(d, |_, ctx| ctx.stop());
        }
    }

    fn stopping(&mut self, _: &mut Context<Self>) -> Running {
        let mut lives = self.lives.0.lock().unwrap();
        lives[self.index].term_active_at_stop = Some(self.term.is_active());
        lives[self.index].stopped = Some(Instant::now());
        Running::Stop
    }
}

fn worker(
    replica: &str,
    lives: &Lives,
    die_after: Option<Duration>,
) -> impl Fn(Term) -> Worker + Send + Sync + 'static {
    let (replica, lives) = (replica.to_owned(), lives.clone());
    move |term| Worker {
        replica: replica.clone(),
        term,
        lives: lives.clone(),
        index: 0,
        die_after,
    }
}

async fn runs_while_leader_and_stops_with_the_term_before_the_release(env: Env) {
    let a = env.replica("pod-a").await;
    let e = a.election("x").unwrap();
    let lives = Lives::default();
    let only = LeaderOnly::start(&e, worker("pod-a", &lives, None)).unwrap();
    let term = within(env.limit(), "elected", e.elected()).await.unwrap();
    let mut status = only.watch_status();
    within(env.limit(), "running", status.wait_for(|s| s.running))
        .await
        .unwrap();
    assert!(only.addr().is_some_and(|a| a.connected()));
    assert_eq!(only.status().token, Some(term.fencing_token()));
    tokio::time::sleep(env.leases(2)).await;
    assert_eq!(lives.all().len(), 1, "one actor for one term");

    e.stop().await.unwrap();
    // The stop waited for the actor; it saw its term over; the lease is released after.
    let life = lives.all()[0].clone();
    assert_eq!(life.term_active_at_stop, Some(false), "{life:?}");
    assert!(life.stopped.is_some());
    assert!(!only.status().running);
    assert!(only.addr().is_none());
    assert_eq!(
        env.holder(&e.lease()).await,
        None,
        "released after the actor stopped"
    );
    a.shutdown().await.unwrap();
}

async fn restarts_with_backoff_when_it_dies_while_leader(env: Env) {
    let a = env.replica("pod-a").await;
    let e = a.election("x").unwrap();
    let lives = Lives::default();
    let live_for = env.retry();
    let backoff = RestartBackoff {
        initial: env.retry(),
        max: env.retry() * 3,
    };
    let only =
        LeaderOnly::start_with(&e, backoff, worker("pod-a", &lives, Some(live_for))).unwrap();
    let term = within(env.limit(), "elected", e.elected()).await.unwrap();
    let mut status = only.watch_status();
    within(
        env.limit(),
        "four starts",
        status.wait_for(|s| s.starts >= 4),
    )
    .await
    .unwrap();
    let all = lives.all();
    // Delays between a death and the next start: 1, 2, then capped at 3 retry periods.
    for (i, expected) in [1u32, 2, 3].into_iter().enumerate() {
        let gap = all[i + 1].started - all[i].stopped.unwrap();
        env.assert_timer(
            gap,
            env.retry() * expected,
            env.retry() * expected,
            "backoff",
        );
        assert_eq!(
            all[i].term_active_at_stop,
            Some(true),
            "it died while leader"
        );
        assert_eq!(all[i].token, term.fencing_token(), "same term");
    }
    assert!(only.status().restarts >= 3);
    assert!(term.is_active(), "an actor dying does not end the term");
    a.shutdown().await.unwrap();
    lives.assert_never_two_at_once();
}

async fn never_runs_in_two_replicas_at_once_through_crashes_and_stops(env: Env) {
    let lives = Lives::default();
    let mut replicas = Vec::new();
    for name in ["pod-a", "pod-b", "pod-c"] {
        let (d, faults) = env.faulty_replica(name).await;
        let e = d.election("x").unwrap();
        let only = LeaderOnly::start(&e, worker(name, &lives, None)).unwrap();
        replicas.push((d, faults, e, only));
    }
    // Crash the leader twice (cut off from the store), then stop the third gracefully.
    for round in 0..2 {
        let elections: Vec<_> = replicas.iter().map(|r| r.2.clone()).collect();
        let i = leader_of(env.limit(), &elections).await;
        let mut status = replicas[i].3.watch_status();
        within(env.limit(), "running", status.wait_for(|s| s.running))
            .await
            .unwrap();
        replicas[i].1.partition();
        let others: Vec<usize> = (0..replicas.len()).filter(|j| *j != i).collect();
        let running: Vec<_> = others.iter().map(|j| replicas[*j].2.clone()).collect();
        let next = others[leader_of(env.limit(), &running).await];
        let mut status = replicas[next].3.watch_status();
        within(
            env.limit(),
            "running on the new leader",
            status.wait_for(|s| s.running),
        )
        .await
        .unwrap();
        assert!(
            !replicas[i].3.status().running,
            "round {round}: stopped on the old one"
        );
        // Take the crashed replica out of the race for good.
        let (d, faults, _, _) = replicas.remove(i);
        faults.heal();
        d.shutdown().await.unwrap();
    }
    let (d, _, e, only) = replicas.pop().unwrap();
    assert!(e.is_leader());
    d.shutdown().await.unwrap();
    assert!(!only.status().running);
    let all = lives.all();
    assert_eq!(all.len(), 3, "{all:#?}");
    assert!(
        all.iter().all(|l| l.term_active_at_stop == Some(false)),
        "{all:#?}"
    );
    let replicas: Vec<&str> = all.iter().map(|l| l.replica.as_str()).collect();
    assert_eq!(
        replicas
            .iter()
            .collect::<std::collections::HashSet<_>>()
            .len(),
        3,
        "each replica ran it once: {replicas:?}"
    );
    let tokens: Vec<i32> = all.iter().map(|l| l.token).collect();
    assert!(tokens.windows(2).all(|w| w[0] < w[1]), "{tokens:?}");
    lives.assert_never_two_at_once();
}
