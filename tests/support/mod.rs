//! Shared test support: a fault-injecting store wrapper, a term recorder with an overlap
//! checker, and helpers for paused-time tests.
#![allow(dead_code)] // each test binary uses a different part

pub mod apiserver;
pub mod backend;

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::prelude::*;
use dsync::store::{LeaseKey, LeaseRecord, LeaseStore, StoreError, StoredLease, WatchEvent};
use dsync::{DeposeReason, Deposed, Elected, Election, LeaderChanged, TermId};
use futures::future::{BoxFuture, FutureExt};
use futures::stream::{BoxStream, StreamExt};
use tokio::time::Instant;

/// Fails the test (instead of hanging) if `fut` does not finish within `limit` of virtual time.
pub async fn within<T>(limit: Duration, what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(limit, fut).await {
        Ok(v) => v,
        Err(_) => panic!("{what}: not done within {limit:?}"),
    }
}

/// Waits until one of `elections` leads and returns its index (fails after `limit`).
pub async fn leader_of(limit: Duration, elections: &[Election]) -> usize {
    within(limit, "someone is elected", async {
        let mut rxs: Vec<_> = elections.iter().map(Election::watch_status).collect();
        loop {
            if let Some(i) = elections.iter().position(Election::is_leader) {
                return i;
            }
            let changes = rxs.iter_mut().map(|rx| rx.changed().boxed());
            let (changed, _, _) = futures::future::select_all(changes).await;
            changed.expect("an election actor went away");
        }
    })
    .await
}

/// Lets every ready task run without advancing (paused) time.
pub async fn settle() {
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
}

/// Which store call a fault applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    Get,
    Create,
    Replace,
    Any,
}

type MakeError = Box<dyn Fn() -> StoreError + Send>;

#[derive(Default)]
struct Faults {
    partitioned: bool,
    queued: VecDeque<(Call, MakeError)>,
    calls: HashMap<&'static str, u64>,
}

/// A store in front of another (usually a shared `MemoryStore`) that can be cut off (a crashed or partitioned
/// replica: every call hangs, watches go quiet) or made to fail chosen calls.
#[derive(Clone)]
pub struct FaultyStore {
    inner: Arc<dyn LeaseStore>,
    faults: Arc<Mutex<Faults>>,
}

impl FaultyStore {
    pub fn new(inner: impl LeaseStore) -> Self {
        FaultyStore {
            inner: Arc::new(inner),
            faults: Arc::default(),
        }
    }

    /// From now on every call hangs and watches end: like a crashed process, as far as the
    /// other replicas can tell.
    pub fn partition(&self) {
        self.faults.lock().unwrap().partitioned = true;
    }

    pub fn heal(&self) {
        self.faults.lock().unwrap().partitioned = false;
    }

    /// The next `call` fails with `make()`.
    pub fn fail_next(&self, call: Call, make: impl Fn() -> StoreError + Send + 'static) {
        self.faults
            .lock()
            .unwrap()
            .queued
            .push_back((call, Box::new(make)));
    }

    /// How many calls of a kind reached this wrapper ("get", "create", "replace", "watch").
    pub fn calls(&self, kind: &str) -> u64 {
        self.faults
            .lock()
            .unwrap()
            .calls
            .get(kind)
            .copied()
            .unwrap_or(0)
    }

    fn intercept(
        &self,
        call: Call,
        name: &'static str,
    ) -> Option<BoxFuture<'static, Result<StoredLease, StoreError>>> {
        let mut faults = self.faults.lock().unwrap();
        *faults.calls.entry(name).or_default() += 1;
        if faults.partitioned {
            return Some(futures::future::pending().boxed());
        }
        let pos = faults
            .queued
            .iter()
            .position(|(c, _)| *c == call || *c == Call::Any)?;
        let (_, make) = faults.queued.remove(pos).unwrap();
        let err = make();
        Some(futures::future::ready(Err(err)).boxed())
    }
}

impl LeaseStore for FaultyStore {
    fn get(&self, key: &LeaseKey) -> BoxFuture<'static, Result<StoredLease, StoreError>> {
        self.intercept(Call::Get, "get")
            .unwrap_or_else(|| self.inner.get(key))
    }

    fn create(
        &self,
        key: &LeaseKey,
        record: LeaseRecord,
    ) -> BoxFuture<'static, Result<StoredLease, StoreError>> {
        self.intercept(Call::Create, "create")
            .unwrap_or_else(|| self.inner.create(key, record))
    }

    fn replace(
        &self,
        key: &LeaseKey,
        record: LeaseRecord,
        resource_version: &str,
    ) -> BoxFuture<'static, Result<StoredLease, StoreError>> {
        self.intercept(Call::Replace, "replace")
            .unwrap_or_else(|| self.inner.replace(key, record, resource_version))
    }

    fn watch(&self, namespace: &str) -> BoxStream<'static, Result<WatchEvent, StoreError>> {
        let faults = self.faults.clone();
        {
            let mut f = faults.lock().unwrap();
            *f.calls.entry("watch").or_default() += 1;
            if f.partitioned {
                return futures::stream::pending().boxed();
            }
        }
        // A partition ends the watch at its next event: the replica hears nothing more.
        self.inner
            .watch(namespace)
            .take_while(move |_| {
                let cut = faults.lock().unwrap().partitioned;
                futures::future::ready(!cut)
            })
            .boxed()
    }
}

/// One term as seen by a subscriber, in virtual time.
#[derive(Debug, Clone)]
pub struct TermSpan {
    pub replica: String,
    pub term_id: TermId,
    pub token: i32,
    pub start: Instant,
    pub end: Option<Instant>,
    pub reason: Option<DeposeReason>,
}

/// Replica and the leader it reported, in order.
type LeaderLog = Arc<Mutex<Vec<(String, Option<String>)>>>;

/// Collects terms from `Elected`/`Deposed` messages of any number of replicas.
#[derive(Clone, Default)]
pub struct TermLog {
    spans: Arc<Mutex<Vec<TermSpan>>>,
    leaders: LeaderLog,
    /// Elections hold subscribers weakly: the log keeps its recorders alive.
    recorders: Arc<Mutex<Vec<Addr<Recorder>>>>,
}

impl TermLog {
    /// Subscribes a recorder for `replica` to `election`.
    pub fn record(&self, replica: &str, election: &Election) -> Addr<Recorder> {
        let addr = Recorder {
            replica: replica.to_owned(),
            log: self.clone(),
        }
        .start();
        election.subscribe(&addr).unwrap();
        self.recorders.lock().unwrap().push(addr.clone());
        addr
    }

    pub fn spans(&self) -> Vec<TermSpan> {
        self.spans.lock().unwrap().clone()
    }

    pub fn leader_changes(&self) -> Vec<(String, Option<String>)> {
        self.leaders.lock().unwrap().clone()
    }

    /// The safety checks: no two terms overlap in time (touching is allowed: a graceful
    /// handoff ends one term and starts the next at the same instant), and fencing tokens
    /// strictly increase in the order terms started.
    pub fn assert_safe(&self) {
        let mut spans = self.spans();
        spans.sort_by_key(|s| (s.start, s.token));
        for (i, a) in spans.iter().enumerate() {
            for b in &spans[i + 1..] {
                let a_end = a
                    .end
                    .unwrap_or(Instant::now() + Duration::from_secs(1 << 30));
                assert!(
                    a_end <= b.start,
                    "terms overlap: {a:?} and {b:?} (all: {spans:#?})"
                );
            }
        }
        for pair in spans.windows(2) {
            assert!(
                pair[0].token < pair[1].token,
                "fencing tokens must strictly increase: {pair:#?}"
            );
        }
    }
}

/// An actor that records election events into a [`TermLog`].
pub struct Recorder {
    replica: String,
    log: TermLog,
}

impl Actor for Recorder {
    type Context = Context<Self>;
}

impl Handler<Elected> for Recorder {
    type Result = ();
    fn handle(&mut self, msg: Elected, _: &mut Self::Context) {
        self.log.spans.lock().unwrap().push(TermSpan {
            replica: self.replica.clone(),
            term_id: msg.term.id(),
            token: msg.term.fencing_token(),
            start: Instant::now(),
            end: None,
            reason: None,
        });
    }
}

impl Handler<Deposed> for Recorder {
    type Result = ();
    fn handle(&mut self, msg: Deposed, _: &mut Self::Context) {
        let mut spans = self.log.spans.lock().unwrap();
        let span = spans
            .iter_mut()
            .find(|s| s.term_id == msg.term_id)
            .unwrap_or_else(|| panic!("Deposed for a term never Elected: {msg:?}"));
        assert!(span.end.is_none(), "Deposed twice: {msg:?}");
        assert_eq!(span.token, msg.fencing_token);
        span.end = Some(Instant::now());
        span.reason = Some(msg.reason);
    }
}

impl Handler<LeaderChanged> for Recorder {
    type Result = ();
    fn handle(&mut self, msg: LeaderChanged, _: &mut Self::Context) {
        self.log
            .leaders
            .lock()
            .unwrap()
            .push((self.replica.clone(), msg.leader));
    }
}

/// Watches the status of every election and records each instant at which more than one
/// replica reported `is_leader()`. Runs until the returned guard is dropped.
pub fn monitor_single_leader(
    elections: Vec<Election>,
) -> (Arc<Mutex<Vec<String>>>, tokio::task::JoinHandle<()>) {
    let violations = Arc::new(Mutex::new(Vec::new()));
    let v = violations.clone();
    let handle = actix::spawn(async move {
        let mut rxs: Vec<_> = elections.iter().map(|e| e.watch_status()).collect();
        loop {
            let leaders: Vec<String> = elections
                .iter()
                .filter(|e| e.is_leader())
                .map(|e| e.status().identity)
                .collect();
            if leaders.len() > 1 {
                v.lock()
                    .unwrap()
                    .push(format!("{:?}: {leaders:?}", Instant::now()));
            }
            let changed =
                futures::future::select_all(rxs.iter_mut().map(|rx| rx.changed().boxed()));
            if changed.await.0.is_err() {
                return;
            }
        }
    });
    (violations, handle)
}
