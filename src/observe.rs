//! Observe-only followers: [`Observer`] handles on a small actor that follows one lease
//! without ever writing it.
//!
//! [`Dsync::observe`](crate::Dsync::observe) (an election) and
//! [`Dsync::observe_lock`](crate::Dsync::observe_lock) (a lock) give the lease's current
//! holder, its fencing token and when this replica last saw the lease change, as an
//! [`Observation`] (a snapshot, or a [`watch::Receiver`]), and send [`HolderChanged`] to
//! subscribed actors.
//!
//! ```
//! use dsync::{Dsync, MemoryStore};
//!
//! # fn main() -> dsync::Result<()> {
//! actix::System::new().block_on(async {
//!     let store = MemoryStore::new();
//!     let a = Dsync::new(store.clone(), "pod-a")?;
//!     let dashboard = Dsync::new(store.clone(), "dashboard")?; // never campaigns
//!
//!     let observer = dashboard.observe("token-manager")?;
//!     let mut changes = observer.watch();
//!     let term = a.election("token-manager")?.elected().await?;
//!     let seen = changes
//!         .wait_for(|o| o.holder.as_deref() == Some("pod-a"))
//!         .await
//!         .expect("the observer runs")
//!         .clone();
//!     assert_eq!(seen.fencing_token, Some(term.fencing_token()));
//!     assert!(!seen.expired);
//!
//!     a.shutdown().await?;
//!     dashboard.shutdown().await?;
//!     assert!(observer.is_stopped());
//!     Ok(())
//! })
//! # }
//! ```
//!
//! # What it costs
//!
//! An observer rides the replica's shared watch (one watch per namespace, shared with the
//! replica's elections and locks): it reads the lease once when it starts and then learns of
//! every change from the watch. **At steady state it makes no request at all.** A watch that
//! goes silent (open, delivering nothing) is caught by the replica's watch hub whatever the
//! lease's state (rule `watch-behind`): when the namespace's watch has brought nothing for a
//! lease duration, the hub lists the namespace once and hands the observer what the watch
//! missed, so an observer of a free or missing lease learns a new holder within a lease
//! duration of the takeover (a namespace where something is held is never that quiet: its
//! renewals show the watch alive). It reads the lease again only when it has reason to doubt
//! what it knows:
//!
//! * the watch failed or ended (an outage): it re-reads once and watches again after a retry
//!   period, as the lease actors do;
//! * the holder *looks expired by this observer's own observation* (the record has not
//!   changed for its `leaseDurationSeconds` since this replica saw it change; a live holder
//!   renews well before): one read confirms it (a watch that silently lost events shows up
//!   here), and the observation says [`expired`](Observation::expired);
//! * a read failed: it is retried after a backoff (the retry period, doubled per failure up
//!   to the lease duration).
//!
//! It calls only `get` and `watch` on the store (the Kubernetes watch lists first), so on
//! Kubernetes it needs only the `get`, `list` and `watch` verbs on `leases` (see
//! `deploy/observer-rbac.yaml`); it never calls `create` or `replace`.
//!
//! Changes that happen and are undone while the watch is down are not seen: after an outage
//! the observer knows the lease as it is, not every holder it had meanwhile.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::WeakRecipient;
use actix::prelude::*;
use tokio::sync::watch;

use crate::election::HolderChanged;
use crate::error::{Error, Result};
use crate::lease::Observed;
use crate::lease::actor::Shared;
use crate::lease::backoff::{Failure, Pace, Streak};
use crate::record::is_newer;
use crate::resource::{LeaseKind, Resource};
use crate::store::{LeaseKey, StoreError, StoreResult, StoredLease, WatchEvent};
use crate::term::now;

/// What an [`Observer`] knows of its lease, published by its actor.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Observation {
    /// The observed lease.
    pub lease: LeaseKey,
    /// Whether it is an election's or a lock's lease.
    pub kind: LeaseKind,
    /// The lease has been read at least once: until then the other fields say nothing.
    pub synced: bool,
    /// The Lease object exists (as last observed).
    pub exists: bool,
    /// The holder recorded in the lease; `None`: nobody (never held, released, or missing).
    pub holder: Option<String>,
    /// The holder's fencing token (`leaseTransitions`), while somebody holds the lease.
    pub fencing_token: Option<i32>,
    /// The lease's `resourceVersion` as last observed.
    pub resource_version: Option<String>,
    /// When this replica first saw the current version of the lease (local monotonic time).
    pub changed_at: Option<Instant>,
    /// The holder's lease duration (`leaseDurationSeconds`), while somebody holds the lease.
    pub lease_duration: Option<Duration>,
    /// The holder looks expired *by this observer's own observation*: the lease has not changed
    /// for its lease duration since this replica saw it change, and a read confirmed it (or
    /// could not be made). Another replica may take the lease over at any moment. Never judged
    /// from another machine's clock.
    pub expired: bool,
    /// The latest store or watch error, cleared by the next successful read.
    pub last_error: Option<String>,
    /// The observer has been stopped: nothing is updated any more.
    pub stopped: bool,
}

impl Observation {
    fn new(lease: LeaseKey, kind: LeaseKind) -> Self {
        Observation {
            lease,
            kind,
            synced: false,
            exists: false,
            holder: None,
            fencing_token: None,
            resource_version: None,
            changed_at: None,
            lease_duration: None,
            expired: false,
            last_error: None,
            stopped: false,
        }
    }
}

/// A handle on an observe-only follower of one election or lock (see the [module
/// docs](self)). Cheap to clone; every handle for the same lease from the same
/// [`Dsync`](crate::Dsync) shares one actor, until it is stopped.
#[derive(Clone)]
pub struct Observer {
    resource: Resource,
    addr: Addr<ObserverActor>,
    status: watch::Receiver<Observation>,
}

impl fmt::Debug for Observer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Observer")
            .field("resource", &self.resource)
            .field("observation", &*self.status.borrow())
            .finish()
    }
}

impl Observer {
    /// The observed resource.
    pub fn resource(&self) -> &Resource {
        &self.resource
    }

    /// Whether an election's or a lock's lease is observed.
    pub fn kind(&self) -> LeaseKind {
        self.status.borrow().kind
    }

    /// The observed lease.
    pub fn lease(&self) -> LeaseKey {
        self.status.borrow().lease.clone()
    }

    /// The holder recorded in the lease as last observed (`None`: nobody, or not read yet).
    pub fn holder(&self) -> Option<String> {
        self.status.borrow().holder.clone()
    }

    /// The holder's fencing token as last observed (`None` while nobody holds the lease).
    pub fn fencing_token(&self) -> Option<i32> {
        self.status.borrow().fencing_token
    }

    /// A snapshot of what the observer knows.
    pub fn observation(&self) -> Observation {
        self.status.borrow().clone()
    }

    /// A receiver of observations from now on: `borrow()` is the current one, `changed()`
    /// waits for the next change of holder, fencing token, existence, expiry, error or state.
    /// A holder's renewals update [`changed_at`](Observation::changed_at) and
    /// [`resource_version`](Observation::resource_version) without waking it.
    pub fn watch(&self) -> watch::Receiver<Observation> {
        let mut rx = self.status.clone();
        rx.mark_unchanged();
        rx
    }

    /// Waits until the lease has been read once and returns that observation.
    /// [`Error::Stopped`] if the observer is (or gets) stopped first.
    pub async fn synced(&self) -> Result<Observation> {
        let mut rx = self.status.clone();
        let observation = rx
            .wait_for(|o| o.synced || o.stopped)
            .await
            .map_err(|_| self.stopped_error())?
            .clone();
        if observation.stopped {
            return Err(self.stopped_error());
        }
        Ok(observation)
    }

    /// Subscribes a recipient to [`HolderChanged`]: it receives the current holder once the
    /// lease has been read (at once if it has been), then every change of holder the observer
    /// sees, in order (a re-acquisition by the same holder is a new fencing token, not a new
    /// leader: see [`watch`](Self::watch)). The observer keeps only a weak reference: a
    /// stopped subscriber is dropped from the list. [`Error::Stopped`] once stopped.
    pub fn subscribe(&self, recipient: Recipient<HolderChanged>) -> Result<()> {
        if self.is_stopped() {
            return Err(self.stopped_error());
        }
        // `do_send` ignores the mailbox capacity: subscriptions are few and must not be lost.
        self.addr.do_send(Subscribe(recipient.downgrade()));
        Ok(())
    }

    /// Whether the observer has been stopped (by [`stop`](Self::stop) or a shutdown of its
    /// [`Dsync`](crate::Dsync)).
    pub fn is_stopped(&self) -> bool {
        self.status.borrow().stopped || !self.addr.connected()
    }

    /// Stops the observer: no more reads, events or messages. Nothing is written, so nothing
    /// can fail; idempotent. Observing the lease again starts a new observer.
    pub async fn stop(&self) {
        let _ = self.addr.send(StopObserver).await;
    }

    fn stopped_error(&self) -> Error {
        Error::Stopped {
            what: format!("observer of {}", self.status.borrow().lease),
        }
    }
}

/// Starts an observer of `key` on `arbiter`.
pub(crate) fn start(
    arbiter: &ArbiterHandle,
    resource: Resource,
    kind: LeaseKind,
    key: LeaseKey,
    shared: Arc<Shared>,
) -> Observer {
    let (tx, rx) = watch::channel(Observation::new(key.clone(), kind));
    let actor = ObserverActor {
        key,
        shared,
        status: tx,
        observed: None,
        subscribers: Vec::new(),
        published: None,
        reading: false,
        read_again: false,
        events: 0,
        streak: Streak::default(),
        retry_at: None,
        timer: None,
        watch_handle: None,
        expired: false,
        last_error: None,
        stopped: false,
    };
    let addr = ObserverActor::start_in_arbiter(arbiter, move |_| actor);
    Observer {
        resource,
        addr,
        status: rx,
    }
}

#[derive(Message)]
#[rtype(result = "()")]
struct Subscribe(WeakRecipient<HolderChanged>);

#[derive(Message)]
#[rtype(result = "()")]
struct StopObserver;

/// Follows one lease: one read at start, then the shared watch. Never writes.
pub(crate) struct ObserverActor {
    key: LeaseKey,
    shared: Arc<Shared>,
    status: watch::Sender<Observation>,
    /// The lease as last observed, and since when it has looked like this.
    observed: Option<Observed>,
    subscribers: Vec<WeakRecipient<HolderChanged>>,
    /// The holder last sent to subscribers (`None`: nothing sent yet).
    published: Option<Option<String>>,
    /// A read is in flight.
    reading: bool,
    /// Another read was asked for while one was in flight.
    read_again: bool,
    /// Watch events taken so far (a read that saw no lease must not undo a newer event).
    events: u64,
    /// Consecutive failed reads, and the backoff they earn.
    streak: Streak,
    /// When to retry a failed read.
    retry_at: Option<Instant>,
    timer: Option<SpawnHandle>,
    watch_handle: Option<SpawnHandle>,
    /// The holder looks expired by our observation, confirmed by a read.
    expired: bool,
    last_error: Option<String>,
    stopped: bool,
}

impl ObserverActor {
    fn version(&self) -> Option<&str> {
        self.observed.as_ref()?.version()
    }

    /// Takes what a read or an event showed, unless it is older than what we know.
    fn take(&mut self, lease: Option<StoredLease>, now: Instant) {
        if let (Some(new), Some(observed)) = (&lease, &self.observed)
            && observed.is_older(&new.resource_version)
        {
            return; // an answer a watch event has already overtaken
        }
        self.observed = Some(Observed::update(self.observed.as_ref(), lease, now));
    }

    /// When the holder looks expired by our observation; `None` without a holder (or with a
    /// duration no API server accepts: such a record is never judged expired).
    fn deadline(&self) -> Option<Instant> {
        let ours = self.shared.timing.lease_duration();
        self.observed.as_ref()?.expiry(Some(ours))
    }

    fn read(&mut self, ctx: &mut Context<Self>) {
        if self.stopped {
            return;
        }
        if self.reading {
            self.read_again = true;
            return;
        }
        self.reading = true;
        self.read_again = false;
        self.retry_at = None;
        if let Some(timer) = self.timer.take() {
            ctx.cancel_future(timer);
        }
        let call = self.shared.store.get(&self.key);
        let timeout = self.shared.timing.renew_deadline();
        let operation = format!("read lease {}", self.key);
        let events = self.events;
        let fut = async move {
            match tokio::time::timeout(timeout, call).await {
                Ok(result) => result,
                Err(_) => Err(StoreError::Timeout {
                    operation,
                    after: timeout,
                }),
            }
        };
        ctx.spawn(fut.into_actor(self).map(move |result, act, ctx| {
            act.read_done(result, events, ctx);
        }));
    }

    fn read_done(
        &mut self,
        result: StoreResult<StoredLease>,
        events: u64,
        ctx: &mut Context<Self>,
    ) {
        self.reading = false;
        if self.stopped {
            return;
        }
        let now = now();
        match result {
            Ok(lease) => {
                self.streak.after_success(false);
                self.last_error = None;
                self.take(Some(lease), now);
            }
            Err(StoreError::NotFound { .. }) => {
                self.streak.after_success(false);
                self.last_error = None;
                if events == self.events {
                    self.take(None, now);
                } else {
                    // The watch showed something since the read began: ask again.
                    self.read_again = true;
                }
            }
            Err(error) => {
                tracing::warn!(lease = %self.key, %error, "observer: reading the lease failed; will retry");
                self.last_error = Some(error.to_string());
                let failure = Failure {
                    write: false,
                    transient: error.is_transient(),
                    retry_after: error.retry_after(),
                };
                let wait = self
                    .streak
                    .after_failure(failure, Pace::reader(&self.shared.timing));
                self.retry_at = Some(now + wait);
            }
        }
        if self.read_again {
            self.read(ctx);
        }
        self.settle(ctx);
    }

    /// Decides whether the holder looks expired, arms the one timer, publishes.
    fn settle(&mut self, ctx: &mut Context<Self>) {
        if self.stopped {
            return;
        }
        let now = now();
        if !self.reading {
            // Judged only when no read is in flight: the read that confirms it decides.
            self.expired = self.deadline().is_some_and(|d| now >= d);
        }
        if let Some(timer) = self.timer.take() {
            ctx.cancel_future(timer);
        }
        let at = match (self.reading, self.retry_at) {
            (true, _) => None,
            (false, Some(retry)) => Some(retry),
            (false, None) if !self.expired => self.deadline(),
            (false, None) => None,
        };
        if let Some(at) = at {
            self.timer = Some(
                ctx.run_later(at.saturating_duration_since(now), |act, ctx| {
                    act.timer = None;
                    act.read(ctx);
                    act.settle(ctx);
                }),
            );
        }
        self.publish();
    }

    fn publish(&mut self) {
        let synced = self.observed.is_some();
        let lease = self.observed.as_ref().and_then(|o| o.lease.as_ref());
        let holder = lease.and_then(|l| l.record.holder()).map(str::to_owned);
        let held = lease.filter(|_| holder.is_some());
        let observation = Observation {
            lease: self.key.clone(),
            kind: self.status.borrow().kind,
            synced,
            exists: lease.is_some(),
            holder: holder.clone(),
            fencing_token: held.map(|l| l.record.token()),
            resource_version: lease.map(|l| l.resource_version.clone()),
            changed_at: self.observed.as_ref().map(|o| o.changed_at),
            lease_duration: held
                .and_then(|l| l.record.lease_duration(self.shared.timing.lease_duration())),
            expired: self.expired,
            last_error: self.last_error.clone(),
            stopped: self.stopped,
        };
        self.status.send_if_modified(|current| {
            // Always stored; watchers are woken only when something other than the version
            // moved: a holder's renewals do not wake them.
            let news = current.synced != observation.synced
                || current.exists != observation.exists
                || current.holder != observation.holder
                || current.fencing_token != observation.fencing_token
                || current.lease_duration != observation.lease_duration
                || current.expired != observation.expired
                || current.last_error != observation.last_error
                || current.stopped != observation.stopped;
            *current = observation;
            news
        });
        if synced && self.published.as_ref() != Some(&holder) {
            self.published = Some(holder.clone());
            let message = HolderChanged {
                lease: self.key.clone(),
                holder,
            };
            self.subscribers.retain(|weak| match weak.upgrade() {
                Some(recipient) => {
                    recipient.do_send(message.clone());
                    true
                }
                None => false,
            });
        }
    }

    fn subscribe(&mut self) -> BoxedWatch {
        self.shared.watches.watch(&self.key)
    }
}

type BoxedWatch = futures::stream::BoxStream<'static, StoreResult<WatchEvent>>;

impl Actor for ObserverActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // Watch first, then read: a change after the read's snapshot comes on the watch.
        let stream = self.subscribe();
        self.watch_handle = Some(ctx.add_stream(stream));
        self.read(ctx);
        self.settle(ctx);
    }
}

impl Drop for ObserverActor {
    fn drop(&mut self) {
        // Gone (stopped, or its arbiter ended): say so to every handle.
        self.status
            .send_if_modified(|o| !std::mem::replace(&mut o.stopped, true));
    }
}

impl StreamHandler<StoreResult<WatchEvent>> for ObserverActor {
    fn handle(&mut self, item: StoreResult<WatchEvent>, ctx: &mut Self::Context) {
        if self.stopped {
            return;
        }
        match item {
            Ok(WatchEvent::Applied(lease)) => {
                if self.observed.is_none() || is_newer(&lease.resource_version, self.version()) {
                    self.events += 1;
                    self.take(Some(lease), now());
                }
            }
            // Doubt: read before believing anything.
            Ok(WatchEvent::Deleted { .. }) => {
                self.events += 1;
                self.read(ctx);
            }
            Err(error) => {
                tracing::debug!(lease = %self.key, %error, "observer: watch error; re-reading");
                self.last_error = Some(error.to_string());
                self.read(ctx);
            }
        }
        self.settle(ctx);
    }

    fn finished(&mut self, ctx: &mut Self::Context) {
        if self.stopped {
            return;
        }
        // The watch ended: watch again after a retry period, then re-read once (a change
        // made after that read's snapshot comes on the new watch).
        self.watch_handle = None;
        self.last_error = Some("watch ended".into());
        let retry = self.shared.timing.retry_period();
        ctx.run_later(retry, |act, ctx| {
            if act.stopped {
                return;
            }
            let stream = act.subscribe();
            act.watch_handle = Some(ctx.add_stream(stream));
            act.read(ctx);
            act.settle(ctx);
        });
        self.publish();
    }
}

impl Handler<Subscribe> for ObserverActor {
    type Result = ();

    fn handle(&mut self, Subscribe(weak): Subscribe, _: &mut Self::Context) {
        if self.stopped {
            return;
        }
        if let (Some(leader), Some(recipient)) = (&self.published, weak.upgrade()) {
            recipient.do_send(HolderChanged {
                lease: self.key.clone(),
                holder: leader.clone(),
            });
        }
        self.subscribers.push(weak);
    }
}

impl Handler<StopObserver> for ObserverActor {
    type Result = ();

    fn handle(&mut self, _: StopObserver, ctx: &mut Self::Context) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        self.subscribers.clear();
        if let Some(timer) = self.timer.take() {
            ctx.cancel_future(timer);
        }
        if let Some(watch) = self.watch_handle.take() {
            ctx.cancel_future(watch);
        }
        self.publish();
        tracing::debug!(lease = %self.key, "observer stopped");
        ctx.stop();
    }
}

// The observer face plugs into the face-agnostic entry point [`Dsync`]: its factories live here, with
// the face, not in `dsync.rs`.
impl crate::Dsync {
    /// An observe-only follower of the election `name` in the configured namespace and scope:
    /// its holder, fencing token and [`HolderChanged`](crate::HolderChanged) messages, without
    /// ever writing the lease (see [`observe`](crate::observe)). It rides this replica's shared
    /// watch and makes no request at steady state; on Kubernetes it needs only `get`, `list`
    /// and `watch` on `leases`. This replica may also campaign for the same election.
    /// [`Error::BadResourceName`] (before anything is started) if the name is not valid;
    /// [`Error::Stopped`] after [`shutdown`](Self::shutdown). Asking twice gives handles on
    /// one observer.
    pub fn observe(&self, name: &str) -> Result<Observer> {
        self.observe_for(self.resource(name), LeaseKind::Election)
    }

    /// Like [`observe`](Self::observe), for the lock `name`.
    pub fn observe_lock(&self, name: &str) -> Result<Observer> {
        self.observe_for(self.resource(name), LeaseKind::Lock)
    }

    /// An observer of the `kind` lease of an explicit resource (an empty namespace means the
    /// configured one).
    ///
    /// A semaphore is not one Lease but one per slot: [`LeaseKind::Semaphore`] is refused
    /// with [`Error::InvalidState`] (a slot's holder is in its Lease,
    /// [`Semaphore::holders`](crate::Semaphore::holders)).
    pub fn observe_for(&self, resource: Resource, kind: LeaseKind) -> Result<Observer> {
        if kind == LeaseKind::Semaphore {
            return Err(Error::InvalidState {
                lease: resource.lease_key(kind).to_string(),
                reason: "a semaphore has one Lease per slot; there is no one Lease to observe"
                    .into(),
            });
        }
        let (resource, key) = self.prepare(resource, kind)?;
        let inner = &self.inner;
        inner
            .registry
            .observer(&key, || {
                start(
                    &inner.arbiter,
                    resource,
                    kind,
                    key.clone(),
                    inner.shared.clone(),
                )
            })
            .ok_or_else(|| self.stopped())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_can_go_to_other_threads() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<Observer>();
        send_sync::<Observation>();
    }
}
