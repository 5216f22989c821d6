//! Shared test support: a fault-injecting store wrapper, a term recorder with an overlap
//! checker, and helpers for paused-time tests.
#![allow(dead_code)] // each test binary uses a different part

pub mod backend;
pub mod kubefault;
#[allow(unused_imports)] // as above: not every test binary uses both
pub use dsync_harness::{apiserver, gopeer};

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

/// A replica's configuration for tests in paused tokio time: the lease actors run on the
/// test's own arbiter, because a paused clock belongs to one runtime.
pub fn paused_config(identity: &str) -> dsync::Config {
    dsync::Config::default()
        .with_identity(identity)
        .with_lease_thread(dsync::LeaseThread::Current)
}

/// Aborts the test process if the test holding it runs for longer than `limit` of wall-clock
/// time. In paused time a test that loops hot never lets the clock advance, so its virtual
/// watchdog never fires; this one does (and says which test), instead of hanging CI.
pub struct WallWatchdog(Option<std::sync::mpsc::Sender<()>>);

impl WallWatchdog {
    pub fn start(name: &'static str, limit: Duration) -> Self {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        std::thread::spawn(move || {
            if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(limit) {
                eprintln!(
                    "{name}: still running after {limit:?} of wall-clock time (a hot loop that \
                     never lets paused time advance?): aborting the test process"
                );
                std::process::abort();
            }
        });
        WallWatchdog(Some(tx))
    }
}

impl Drop for WallWatchdog {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(());
        }
    }
}

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

/// Whether an injected failure happens before the call reaches the store, or after it took
/// effect (the response is lost: the caller cannot know whether its write landed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    Before,
    After,
}

#[derive(Default)]
struct Faults {
    partitioned: bool,
    /// Calls of these kinds hang (never answer) until `heal` or `clear`.
    stalled: Vec<Call>,
    /// Calls of these kinds fail, every time, until `clear`: faults that last.
    persistent: Vec<(Call, MakeError)>,
    /// Added to each leg of every call (request and response) and to every watch event.
    latency: Duration,
    /// Bumped to cut the watches open now (a dropped connection).
    watch_generation: u64,
    queued: VecDeque<(Call, When, MakeError)>,
    calls: HashMap<&'static str, u64>,
}

/// A store in front of another (usually a shared `MemoryStore`) that can be cut off (a crashed or partitioned
/// replica: every call hangs, watches go quiet) or made to fail chosen calls.
#[derive(Clone)]
pub struct FaultyStore {
    inner: Arc<dyn LeaseStore>,
    faults: Arc<Mutex<Faults>>,
    /// Bumped on every call that reaches the wrapper (see [`called`](Self::called)).
    calls_made: Arc<tokio::sync::watch::Sender<u64>>,
}

impl FaultyStore {
    pub fn new(inner: impl LeaseStore) -> Self {
        FaultyStore {
            inner: Arc::new(inner),
            faults: Arc::default(),
            calls_made: Arc::new(tokio::sync::watch::channel(0).0),
        }
    }

    /// From now on every call hangs and watches end: like a crashed process, as far as the
    /// other replicas can tell.
    pub fn partition(&self) {
        self.faults.lock().unwrap().partitioned = true;
    }

    /// Ends a partition and stalled calls (calls that hang now stay hung: their caller's
    /// timeout decides).
    pub fn heal(&self) {
        let mut faults = self.faults.lock().unwrap();
        faults.partitioned = false;
        faults.stalled.clear();
    }

    /// Drops every injected failure: the queued ones that have not happened yet, the
    /// persistent ones and the stalls.
    pub fn clear(&self) {
        let mut faults = self.faults.lock().unwrap();
        faults.queued.clear();
        faults.persistent.clear();
        faults.stalled.clear();
    }

    /// Every `call` from now on fails with `make()` before it reaches the store, until
    /// [`clear`](Self::clear): a fault that lasts (RBAC revoked, an API server answering 503).
    pub fn fail_always(&self, call: Call, make: impl Fn() -> StoreError + Send + 'static) {
        self.faults
            .lock()
            .unwrap()
            .persistent
            .push((call, Box::new(make)));
    }

    /// Every `call` from now on hangs without an answer (a stalled API server, a black-holed
    /// connection), until [`heal`](Self::heal) or [`clear`](Self::clear). Other calls and the
    /// watch go on.
    pub fn stall(&self, call: Call) {
        self.faults.lock().unwrap().stalled.push(call);
    }

    /// The next `call` fails with `make()`.
    pub fn fail_next(&self, call: Call, make: impl Fn() -> StoreError + Send + 'static) {
        self.fail_next_when(call, When::Before, make);
    }

    /// The next `call` fails with `make()`, before or after it reaches the store.
    pub fn fail_next_when(
        &self,
        call: Call,
        when: When,
        make: impl Fn() -> StoreError + Send + 'static,
    ) {
        self.faults
            .lock()
            .unwrap()
            .queued
            .push_back((call, when, Box::new(make)));
    }

    /// Delays each leg of every call and every watch event by `latency` from now on.
    pub fn set_latency(&self, latency: Duration) {
        self.faults.lock().unwrap().latency = latency;
    }

    /// Ends the watches open now, as a dropped connection would (they end at their next event).
    pub fn drop_watches(&self) {
        self.faults.lock().unwrap().watch_generation += 1;
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

    /// Resolves once `n` calls of a kind ("get", "create", "replace", "watch") have reached
    /// this wrapper: the moment a request is on the wire.
    pub async fn called(&self, kind: &str, n: u64) {
        let mut rx = self.calls_made.subscribe();
        while self.calls(kind) < n {
            rx.changed()
                .await
                .expect("the store is alive while borrowed");
        }
    }

    fn count(&self, faults: &mut Faults, name: &'static str) {
        *faults.calls.entry(name).or_default() += 1;
        self.calls_made.send_modify(|n| *n += 1);
    }

    fn intercept(
        &self,
        call: Call,
        name: &'static str,
        forward: impl FnOnce() -> BoxFuture<'static, Result<StoredLease, StoreError>> + Send + 'static,
    ) -> BoxFuture<'static, Result<StoredLease, StoreError>> {
        let mut faults = self.faults.lock().unwrap();
        self.count(&mut faults, name);
        let applies = |c: &Call| *c == call || *c == Call::Any;
        if faults.partitioned || faults.stalled.iter().any(applies) {
            return futures::future::pending().boxed();
        }
        if let Some((_, make)) = faults.persistent.iter().find(|(c, _)| applies(c)) {
            let error = make();
            return futures::future::ready(Err(error)).boxed();
        }
        let latency = faults.latency;
        let injected = faults
            .queued
            .iter()
            .position(|(c, _, _)| *c == call || *c == Call::Any)
            .map(|pos| faults.queued.remove(pos).unwrap());
        drop(faults);
        if latency.is_zero() {
            // No extra await points: the call behaves exactly like the inner store's.
            return match injected {
                Some((_, When::Before, make)) => futures::future::ready(Err(make())).boxed(),
                Some((_, When::After, make)) => {
                    let call = forward();
                    async move {
                        let _ = call.await;
                        Err(make())
                    }
                    .boxed()
                }
                None => forward(),
            };
        }
        // The request leg, then the store, then the response leg. The store call starts only
        // after the request leg, so a write lands `latency` after it was sent.
        async move {
            tokio::time::sleep(latency).await;
            let result = match injected {
                Some((_, When::Before, make)) => Err(make()),
                Some((_, When::After, make)) => {
                    let _ = forward().await;
                    Err(make())
                }
                None => forward().await,
            };
            tokio::time::sleep(latency).await;
            result
        }
        .boxed()
    }
}

impl LeaseStore for FaultyStore {
    fn get(&self, key: &LeaseKey) -> BoxFuture<'static, Result<StoredLease, StoreError>> {
        let inner = self.inner.clone();
        let key = key.clone();
        self.intercept(Call::Get, "get", move || inner.get(&key))
    }

    fn create(
        &self,
        key: &LeaseKey,
        record: LeaseRecord,
    ) -> BoxFuture<'static, Result<StoredLease, StoreError>> {
        let inner = self.inner.clone();
        let key = key.clone();
        self.intercept(Call::Create, "create", move || inner.create(&key, record))
    }

    fn replace(
        &self,
        key: &LeaseKey,
        record: LeaseRecord,
        resource_version: &str,
    ) -> BoxFuture<'static, Result<StoredLease, StoreError>> {
        let inner = self.inner.clone();
        let key = key.clone();
        let version = resource_version.to_owned();
        self.intercept(Call::Replace, "replace", move || {
            inner.replace(&key, record, &version)
        })
    }

    fn watch(&self, namespace: &str) -> BoxStream<'static, Result<WatchEvent, StoreError>> {
        let faults = self.faults.clone();
        let generation = {
            let mut f = faults.lock().unwrap();
            self.count(&mut f, "watch");
            if f.partitioned {
                return futures::stream::pending().boxed();
            }
            f.watch_generation
        };
        // Events are stamped when the store emits them and delivered `latency` later, in order.
        let (tx, rx) = futures::channel::mpsc::unbounded();
        let mut inner = self.inner.watch(namespace);
        let stamp = faults.clone();
        tokio::spawn(async move {
            while let Some(event) = inner.next().await {
                let due = Instant::now() + stamp.lock().unwrap().latency;
                if tx.unbounded_send((due, event)).is_err() {
                    return;
                }
            }
        });
        // A partition or a dropped connection ends the watch at its next event: the replica
        // hears nothing more on it.
        rx.then(|(due, event)| async move {
            if due > Instant::now() {
                tokio::time::sleep_until(due).await;
            }
            event
        })
        .take_while(move |_| {
            let f = faults.lock().unwrap();
            futures::future::ready(!f.partitioned && f.watch_generation == generation)
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
