//! [`TermLog`]: every term of any number of replicas and leases, and the safety checks on
//! them (no two terms of a lease active at once, fencing tokens strictly increasing).
//!
//! Terms get into the log two ways, for two views of when a term is active:
//!
//! * **the subscriber's view** ([`TermLog::record`]): a term of an election counts from the
//!   [`Elected`] message to the [`Deposed`] message, as a subscriber of the election sees it;
//! * **the caller's view** ([`TermLog::got`]): any term (an election's, a lock's) counts from
//!   the instant its caller got it until [`Term::is_active`] turned false, as seen by a task
//!   awaiting [`Term::cancelled`] (which honours the term's own deadline), not when an actor
//!   says so. This is the view a fenced write depends on: pass every term your code receives.
//!
//! [`TermLog::check`] then checks, per lease: no two terms overlap in time (touching is
//! allowed: a graceful handoff ends one term and starts the next at the same instant), no
//! fencing token is used twice, and tokens strictly increase in the order terms began.

use std::sync::{Arc, Mutex, MutexGuard};

use actix::prelude::*;
use futures::FutureExt;
use tokio::time::Instant;

use crate::election::DeposeReason;
use crate::store::LeaseKey;
use crate::term::TermId;
use crate::{Deposed, Elected, Election, HolderChanged, Term};

/// One term, in (virtual, when paused) time.
#[derive(Debug, Clone, PartialEq)]
pub struct TermSpan {
    /// The term's lease.
    pub lease: LeaseKey,
    /// The replica (as named when recorded).
    pub replica: String,
    /// The term.
    pub term_id: TermId,
    /// Its fencing token.
    pub token: i32,
    /// When the term began (the earliest, if it was recorded several ways).
    pub start: Instant,
    /// When it ended; `None` while it has not.
    pub end: Option<Instant>,
    /// Why it ended, when a [`Deposed`] message said so.
    pub reason: Option<DeposeReason>,
}

/// What [`TermLog::check`] found wrong.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum TermViolation {
    /// Two terms of one lease were active at once.
    #[error("two terms of {lease} active at once: {first:?} and {second:?}")]
    Overlap {
        /// The lease.
        lease: LeaseKey,
        /// The term that began first.
        first: Box<TermSpan>,
        /// The term that began while the first was active.
        second: Box<TermSpan>,
    },
    /// Two terms of one lease carried the same fencing token.
    #[error("two terms of {lease} with fencing token {token}: {first:?} and {second:?}")]
    TokenReused {
        /// The lease.
        lease: LeaseKey,
        /// The token.
        token: i32,
        /// One term.
        first: Box<TermSpan>,
        /// The other.
        second: Box<TermSpan>,
    },
    /// A term began after another but carried a smaller fencing token.
    #[error("fencing tokens of {lease} must strictly increase: {earlier:?} then {later:?}")]
    TokensOutOfOrder {
        /// The lease.
        lease: LeaseKey,
        /// The term that began first.
        earlier: Box<TermSpan>,
        /// The term that began later, with a token not greater.
        later: Box<TermSpan>,
    },
    /// The messages contradicted each other (a `Deposed` for a term never `Elected`, or twice,
    /// or with another token).
    #[error("inconsistent election messages: {message}")]
    Inconsistent {
        /// What was seen.
        message: String,
    },
}

#[derive(Default)]
struct State {
    spans: Vec<TermSpan>,
    /// The terms got in the caller's view, to tell whether they are active now.
    terms: Vec<Term>,
    leaders: Vec<(String, Option<String>)>,
    inconsistencies: Vec<String>,
    /// Elections hold subscribers weakly: the log keeps its recorders alive.
    recorders: Vec<Addr<Recorder>>,
}

/// A log of terms from any number of replicas and leases, with the safety checks.
///
/// Cheap to clone; clones share the log. See the [module docs](self) for the two ways terms
/// get in.
#[derive(Clone)]
pub struct TermLog {
    state: Arc<Mutex<State>>,
    /// Bumped whenever a term's end is recorded.
    ended: Arc<tokio::sync::watch::Sender<u64>>,
    /// Where the caller's-view watchers run (`None`: the caller's arbiter).
    watchers: Option<ArbiterHandle>,
}

impl Default for TermLog {
    fn default() -> Self {
        TermLog {
            state: Arc::default(),
            ended: Arc::new(tokio::sync::watch::channel(0).0),
            watchers: None,
        }
    }
}

impl std::fmt::Debug for TermLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TermLog")
            .field("spans", &self.lock().spans)
            .finish_non_exhaustive()
    }
}

impl TermLog {
    /// An empty log.
    pub fn new() -> Self {
        Self::default()
    }

    /// A log whose caller's-view watchers ([`got`](Self::got)) run on `arbiter` instead of
    /// the caller's: in real time, give them a thread the test never blocks, so a term's end is
    /// seen when it happens. In paused time keep the default (one thread, exact instants).
    #[must_use]
    pub fn with_watchers(mut self, arbiter: ArbiterHandle) -> Self {
        self.watchers = Some(arbiter);
        self
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Subscribes a recorder for `replica` to `election`: its terms go into the log from
    /// [`Elected`] to [`Deposed`] (with the reason), and its [`HolderChanged`] messages into
    /// [`leader_changes`](Self::leader_changes). Must be called inside an actix System.
    pub fn record(&self, replica: &str, election: &Election) -> crate::Result<Addr<Recorder>> {
        let addr = Recorder {
            replica: replica.to_owned(),
            log: self.clone(),
        }
        .start();
        election.subscribe(addr.clone().recipient::<Elected>())?;
        election.subscribe(addr.clone().recipient::<Deposed>())?;
        election.subscribe(addr.clone().recipient::<HolderChanged>())?;
        self.lock().recorders.push(addr.clone());
        Ok(addr)
    }

    /// `replica`'s caller got `term` now (an `Elected` message, a `when_elected` future
    /// starting, `elected()` or `lock()` returning): it counts from now until
    /// [`Term::is_active`] turns false. A term already inactive is recorded as ended when it
    /// stopped being active (its deadline, if that has passed). Recording a term again keeps
    /// the earliest start. Must be called inside a tokio runtime (a task awaits the term).
    pub fn got(&self, replica: &str, term: &Term) {
        let now = Instant::now();
        let ended = (!term.is_active()).then(|| inactive_by(term, now));
        {
            let mut state = self.lock();
            if let Some(span) = state.spans.iter_mut().find(|s| s.term_id == term.id()) {
                span.start = span.start.min(now);
                if !state.terms.iter().any(|t| t.id() == term.id()) {
                    state.terms.push(term.clone());
                } else {
                    return;
                }
            } else {
                state.spans.push(TermSpan {
                    lease: term.lease().clone(),
                    replica: replica.to_owned(),
                    term_id: term.id(),
                    token: term.fencing_token(),
                    start: now,
                    end: ended,
                    reason: None,
                });
                state.terms.push(term.clone());
            }
        }
        if let Some(end) = ended {
            self.end(term.id(), end, None);
            return;
        }
        let (log, term) = (self.clone(), term.clone());
        // The end is when `cancelled` completes: dsync's own word on when the term stopped
        // being active (at its cancellation, or at its deadline without anybody's help).
        let watch = async move {
            term.cancelled().await;
            // dsync's own record of the instant, not when this task got to run.
            let end = term.ended_at().map_or_else(Instant::now, Instant::from_std);
            log.end(term.id(), end, None);
        };
        match &self.watchers {
            Some(arbiter) => {
                arbiter.spawn(watch);
            }
            None => {
                tokio::spawn(watch);
            }
        }
    }

    /// Records that the term `id` ended at `at` (keeping an earlier end).
    fn end(&self, id: TermId, at: Instant, reason: Option<DeposeReason>) {
        {
            let mut state = self.lock();
            if let Some(span) = state.spans.iter_mut().find(|s| s.term_id == id) {
                span.end = Some(span.end.map_or(at, |e| e.min(at)));
                if reason.is_some() {
                    span.reason = reason;
                }
            }
        }
        self.ended.send_modify(|n| *n += 1);
    }

    /// Every term recorded, in the order they were first recorded.
    pub fn spans(&self) -> Vec<TermSpan> {
        self.lock().spans.clone()
    }

    /// The leaders each recorded replica was told of ([`HolderChanged`]), in order.
    pub fn leader_changes(&self) -> Vec<(String, Option<String>)> {
        self.lock().leaders.clone()
    }

    /// When the term `id` stopped being active, if it has: as recorded, or (for a term got in
    /// the caller's view whose watcher has not run yet) the latest instant it can have.
    pub fn end_of(&self, id: TermId) -> Option<Instant> {
        let state = self.lock();
        let span = state.spans.iter().find(|s| s.term_id == id)?;
        let now = Instant::now();
        span.end.or_else(|| {
            state
                .terms
                .iter()
                .find(|t| t.id() == id)
                .filter(|t| !t.is_active())
                .map(|t| inactive_by(t, now))
        })
    }

    /// The terms got (caller's view) by `replica` by the instant `before` that are active now,
    /// of `lease` or of any lease.
    pub fn active_terms(
        &self,
        replica: &str,
        lease: Option<&LeaseKey>,
        before: Instant,
    ) -> Vec<TermSpan> {
        let state = self.lock();
        state
            .spans
            .iter()
            .filter(|s| s.replica == replica && lease.is_none_or(|l| s.lease == *l))
            .filter(|s| s.start <= before)
            .filter(|s| {
                state
                    .terms
                    .iter()
                    .any(|t| t.id() == s.term_id && t.is_active())
            })
            .cloned()
            .collect()
    }

    /// Resolves once every recorded term has ended.
    pub async fn all_ended(&self) {
        let mut rx = self.ended.subscribe();
        let state = self.state.clone();
        let _ = rx
            .wait_for(|_| {
                let state = state.lock().unwrap_or_else(|p| p.into_inner());
                state.spans.iter().all(|s| s.end.is_some())
            })
            .await;
    }

    /// The safety checks, per lease (see the [module docs](self)); returns how many terms were
    /// checked. A term still running counts as active until the end of time; a term its caller
    /// got only after it had ended was never active for anyone and is checked for its token
    /// only.
    pub fn check(&self) -> Result<usize, TermViolation> {
        let state = self.lock();
        if let Some(message) = state.inconsistencies.first() {
            return Err(TermViolation::Inconsistent {
                message: message.clone(),
            });
        }
        let mut leases: Vec<&LeaseKey> = state.spans.iter().map(|s| &s.lease).collect();
        leases.sort();
        leases.dedup();
        for lease in leases {
            let spans: Vec<&TermSpan> = state.spans.iter().filter(|s| s.lease == *lease).collect();
            let mut by_token = spans.clone();
            by_token.sort_by_key(|s| s.token);
            if let Some(pair) = by_token.windows(2).find(|p| p[0].token == p[1].token) {
                return Err(TermViolation::TokenReused {
                    lease: lease.clone(),
                    token: pair[0].token,
                    first: Box::new(pair[0].clone()),
                    second: Box::new(pair[1].clone()),
                });
            }
            let mut live: Vec<&TermSpan> = spans
                .into_iter()
                .filter(|s| s.end.is_none_or(|end| end >= s.start))
                .collect();
            // Terms that began at one instant: the one that ended first began first (a
            // handoff in paused time can end one term and start the next at one instant).
            live.sort_by_key(|s| (s.start, s.end.is_none(), s.end, s.token));
            // The term with the latest end so far (`None` end: still running).
            let mut latest: Option<&TermSpan> = None;
            for s in &live {
                if let Some(p) = latest
                    && p.end.is_none_or(|end| end > s.start)
                {
                    return Err(TermViolation::Overlap {
                        lease: lease.clone(),
                        first: Box::new(p.clone()),
                        second: Box::new((*s).clone()),
                    });
                }
                let later = match (latest.map(|p| p.end), s.end) {
                    (None, _) => true,
                    (Some(_), None) => true,
                    (Some(None), Some(_)) => false,
                    (Some(Some(p)), Some(e)) => e > p,
                };
                if later {
                    latest = Some(s);
                }
            }
            if let Some(pair) = live.windows(2).find(|p| p[0].token >= p[1].token) {
                return Err(TermViolation::TokensOutOfOrder {
                    lease: lease.clone(),
                    earlier: Box::new(pair[0].clone()),
                    later: Box::new(pair[1].clone()),
                });
            }
        }
        Ok(state.spans.len())
    }

    /// The most terms of the leases `leases` selects that were active at one instant (touching
    /// terms do not overlap; a term still running counts until the end of time): for a
    /// semaphore, select its slots' leases and compare with its number of permits (with
    /// [`check`](Self::check) for each slot).
    pub fn max_concurrent(&self, leases: impl Fn(&LeaseKey) -> bool) -> usize {
        let state = self.lock();
        // (instant, +1 start / -1 end); an end sorts before a start at one instant.
        let mut events: Vec<(Instant, i32)> = Vec::new();
        for s in state.spans.iter().filter(|s| leases(&s.lease)) {
            if s.end.is_some_and(|end| end < s.start) {
                continue; // got only after it had ended: never active for anyone
            }
            events.push((s.start, 1));
            if let Some(end) = s.end {
                events.push((end, -1));
            }
        }
        events.sort();
        let (mut now, mut max) = (0i32, 0i32);
        for (_, delta) in events {
            now += delta;
            max = max.max(now);
        }
        usize::try_from(max).unwrap_or(0)
    }

    /// [`check`](Self::check), as an assertion.
    ///
    /// # Panics
    ///
    /// On any [`TermViolation`], with every recorded term in the message.
    pub fn assert_safe(&self) {
        if let Err(violation) = self.check() {
            panic!("{violation}\nall terms: {:#?}", self.spans());
        }
    }
}

/// For a term found inactive at `now`: the latest instant it can have stopped being active
/// (its deadline, if that has passed).
fn inactive_by(term: &Term, now: Instant) -> Instant {
    term.ended_at()
        .map_or(now, Instant::from_std)
        .min(now)
        .min(Instant::from_std(term.valid_until()))
}

/// An actor that records an election's messages into a [`TermLog`] (see
/// [`TermLog::record`]).
#[derive(Debug)]
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
        let now = Instant::now();
        let mut state = self.log.lock();
        if let Some(span) = state.spans.iter_mut().find(|s| s.term_id == msg.term.id()) {
            span.start = span.start.min(now);
            return;
        }
        state.spans.push(TermSpan {
            lease: msg.term.lease().clone(),
            replica: self.replica.clone(),
            term_id: msg.term.id(),
            token: msg.term.fencing_token(),
            start: now,
            end: None,
            reason: None,
        });
    }
}

impl Handler<Deposed> for Recorder {
    type Result = ();
    fn handle(&mut self, msg: Deposed, _: &mut Self::Context) {
        let problem = {
            let mut state = self.log.lock();
            let problem = match state.spans.iter().find(|s| s.term_id == msg.term_id) {
                None => Some(format!("Deposed for a term never Elected: {msg:?}")),
                Some(span) if span.reason.is_some() => Some(format!("Deposed twice: {msg:?}")),
                Some(span) if span.token != msg.fencing_token => Some(format!(
                    "Deposed with token {} for a term elected with {}: {msg:?}",
                    msg.fencing_token, span.token
                )),
                Some(_) => None,
            };
            if let Some(problem) = &problem {
                state.inconsistencies.push(problem.clone());
            }
            problem
        };
        if problem.is_none() {
            self.log.end(msg.term_id, Instant::now(), Some(msg.reason));
        }
    }
}

impl Handler<HolderChanged> for Recorder {
    type Result = ();
    fn handle(&mut self, msg: HolderChanged, _: &mut Self::Context) {
        self.log
            .lock()
            .leaders
            .push((self.replica.clone(), msg.holder));
    }
}

/// Watches the status of elections of one lease (on different replicas) and records each
/// instant at which more than one reported `is_leader()`. Runs until dropped.
#[derive(Debug)]
pub struct SingleLeaderMonitor {
    violations: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl SingleLeaderMonitor {
    /// Starts watching `elections` (on the caller's arbiter).
    pub fn start(elections: Vec<Election>) -> Self {
        let violations = Arc::new(Mutex::new(Vec::new()));
        let v = violations.clone();
        let task = actix::spawn(async move {
            let mut rxs: Vec<_> = elections.iter().map(|e| e.watch_status()).collect();
            loop {
                let leaders: Vec<String> = elections
                    .iter()
                    .filter(|e| e.is_leader())
                    .map(|e| e.status().identity)
                    .collect();
                if leaders.len() > 1 {
                    v.lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(format!("{:?}: {leaders:?}", Instant::now()));
                }
                let changed =
                    futures::future::select_all(rxs.iter_mut().map(|rx| rx.changed().boxed()));
                if changed.await.0.is_err() {
                    return;
                }
            }
        });
        SingleLeaderMonitor { violations, task }
    }

    /// The instants (and leaders) at which more than one election led.
    pub fn violations(&self) -> Vec<String> {
        self.violations
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Asserts that no two elections have led at once.
    ///
    /// # Panics
    ///
    /// If more than one election led at any instant seen so far.
    pub fn assert_single_leader(&self) {
        let violations = self.violations();
        assert!(
            violations.is_empty(),
            "more than one leader at once: {violations:#?}"
        );
    }
}

impl Drop for SingleLeaderMonitor {
    fn drop(&mut self) {
        self.task.abort();
    }
}
