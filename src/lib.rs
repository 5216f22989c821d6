//! # dsync
//!
//! Leader elections and distributed locks for the replicas of a service, on
//! `coordination.k8s.io/v1` Leases, built as [actix] actors.
//!
//! * An [`Election`] campaigns for a lease, renews it while leader, steps down at the renew
//!   deadline and campaigns again after any loss. Subscribers get [`Elected`] / [`Deposed`] /
//!   [`HolderChanged`] messages; [`Election::when_elected`] runs a future per [`Term`].
//! * A [`Lock`] is held by one replica at a time, renewed while held, freed by `unlock` at once
//!   or by the lease duration if its holder crashed. Local waiters are served in order.
//! * A [`Semaphore`] ([`Dsync::semaphore`]) lets at most `n` holders in at once, one Lease per
//!   permit, each held like a lock; a [`Permit`] carries its slot's [`Term`]. Local waiters are
//!   served in order.
//! * An [`Observer`] ([`Dsync::observe`], [`Dsync::observe_lock`]) follows an election or
//!   lock without ever writing it: holder, fencing token, [`HolderChanged`] messages, from the
//!   replica's shared watch (no request at steady state).
//! * Every term carries a **fencing token** (the lease's `leaseTransitions`, incremented on every
//!   acquisition) and a cancellation token that fires when the term ends.
//! * Expiry is judged by when *this* process saw the lease change, never by another machine's
//!   clock; every write is a compare-and-swap on `resourceVersion`.
//!
//! Lease names are `<scope>.election.<name>` and `<scope>.lock.<name>`, as in the Go package
//! `tempcke/dsync` that this crate ports, so replicas of both (and client-go peers) can share a
//! lease. A semaphore of `n` permits uses `<scope>.semaphore.<name>.<i>`, `i` in `0..n`.
//!
//! # Example
//!
//! Two replicas sharing the in-process [`MemoryStore`]: exactly one leads; when it stops, the
//! other takes over.
//!
//! ```
//! use dsync::{Dsync, MemoryStore};
//!
//! # fn main() -> Result<(), dsync::Error> {
//! actix::System::new().block_on(async {
//!     let store = MemoryStore::new();
//!     let a = Dsync::new(store.clone(), "pod-a")?;
//!     let b = Dsync::new(store.clone(), "pod-b")?;
//!
//!     let ea = a.election("token-manager")?;
//!     let term = ea.elected().await?; // the lease is free: pod-a wins at once
//!     let eb = b.election("token-manager")?;
//!     ea.when_elected(|term| async move {
//!         // leader-only work: runs until the term is cancelled
//!         term.cancelled().await;
//!     })?;
//!
//!     ea.stop().await?; // cancels the term, waits for the work, releases the lease
//!     assert!(!term.is_active());
//!     let next = eb.elected().await?; // pod-b takes over as soon as it sees the release
//!     assert!(next.fencing_token() > term.fencing_token());
//!
//!     let lock = a.lock("nightly-report")?;
//!     let report = lock.with_lock(|term| async move {
//!         format!("written under token {}", term.fencing_token())
//!     }).await?;
//!     assert_eq!(report, "written under token 0");
//!
//!     a.shutdown().await?;
//!     b.shutdown().await
//! })
//! # }
//! ```
//!
//! # The root API
//!
//! The crate root has what most programs name; everything else lives in its module
//! ([`election::DeposeReason`], [`lock::LockStatus`], [`store::LeaseKey`], ...).
//!
//! | name | use it when |
//! |---|---|
//! | [`Dsync`] | always: one per process, created in `main`; the factory of every election, lock, semaphore and observer, and the operator actions |
//! | [`Config`] | the identity, namespace, scope or timing is not the default (or comes from the environment: [`Config::from_env`]) |
//! | [`Timing`] | lease duration, renew deadline and retry period differ from client-go's 15/10/2 s |
//! | [`Election`] | one replica at a time should lead (run a controller, a scheduler, a singleton worker) |
//! | [`Elected`], [`Deposed`], [`HolderChanged`] | an actor should be told when this replica gains or loses leadership, or who leads ([`Election::subscribe`]) |
//! | [`Term`] | the work runs while a term lasts: wait for [`Term::cancelled`], pass [`Term::fencing_token`] to writes |
//! | [`LeaderOnly`] | an actix actor should run only on the leader, restarted by the supervisor if it stops |
//! | [`Lock`] | one replica at a time should run a piece of work (a report, a migration) |
//! | [`Semaphore`], [`Permit`] | at most `n` replicas at a time should run it |
//! | [`Observer`] | a replica should know who holds an election or lock without campaigning |
//! | [`Supervisor`] | you need the actor that owns this replica's lease actors ([`Dsync::supervisor`]) |
//! | [`Resource`] | the lease lives in another namespace or scope than the configured one (`Dsync::election_for`, ...) |
//! | [`MASTER`] | the Go package's default election name, to share its lease |
//! | [`sanitize_name`] | a name comes from user input and may not be a valid lease name |
//! | [`MemoryStore`] | single process, examples and tests (the embedded default) |
//! | [`KubeStore`] | production on Kubernetes (feature `kube`; usually built by [`Dsync::connect`]) |
//! | [`LeaseStore`], [`StoreError`] | you write (or wrap) a backend |
//! | [`Error`], [`Result`] | every fallible call |
//!
//! # Feature flags
//!
//! | feature | default | what it adds |
//! |---|---|---|
//! | `kube` | yes | [`KubeStore`]: leases as `coordination.k8s.io/v1` objects through `kube`. The crate enables no Kubernetes version of `k8s-openapi`: your binary picks one (e.g. `k8s-openapi = { features = ["latest"] }`). |
//! | `metrics` | no | [`metrics`]: Prometheus metrics with `prometheus-client`. |
//! | `testing` | no | `testing`: a fault-injecting store, a term log with overlap and fencing-token checks, paused-time helpers and a conformance suite for `LeaseStore` implementations. |
//!
//! # Layout
//!
//! Modules form layers; none imports from a layer above it.
//!
//! * Leaves: [`record`] (the lease records a store keeps: [`LeaseKey`](store::LeaseKey),
//!   [`LeaseRecord`](store::LeaseRecord), [`StoredLease`](store::StoredLease), version order), [`timing`] ([`Timing`] and its validation), `names`
//!   (DNS-1123 checks, [`sanitize_name`]) and `hash` (the cheap hasher of the maps a renewal
//!   looks up).
//! * [`resource`]: `Resource { namespace, scope, name }` and the lease names of each kind.
//! * [`store`]: the [`LeaseStore`] trait and its errors, [`MemoryStore`] and `KubeStore`.
//! * [`Error`]: the crate's error type (it does not depend on the configuration).
//! * [`config`]: [`Config`] (from the environment), the drain timeout and where the lease
//!   actors run ([`LeaseThread`](config::LeaseThread)). (`connect` builds a `KubeStore` from it.)
//! * [`lease`]: the pure [`Machine`](lease::Machine), which makes every decision about a lease
//!   (when to read, create, acquire, renew, release or step down, how long to back off, which
//!   answers to believe) with no IO and no clock of its own; and the one lease actor that
//!   executes those decisions and runs the term lifecycle for every face.
//! * [`election`], [`lock`], [`semaphore`] and [`observe`] are the faces; each plugs into the
//!   face-agnostic entry point [`Dsync`] with its own factories (`Dsync::election`, ...),
//!   written in its own module.
//! * [`election`] and [`lock`]: the two faces of the lease actor and their handles. An
//!   election adds subscribers and `when_elected` work; a lock adds a queue of local callers
//!   and per-handle ownership.
//! * [`semaphore`]: [`Semaphore`] and [`Permit`]: `n` slot Leases, each a lease actor with the
//!   lock face; the semaphore adds only asking every slot at once and keeping the first grant.
//! * [`observe`]: [`Observer`], an observe-only follower of an election or lock: holder,
//!   fencing token and [`HolderChanged`] from the shared watch, never a write.
//! * [`leader_only`]: [`LeaderOnly`], an actor that runs only while this replica leads.
//! * [`admin`]: the operator actions on [`Dsync`] ([`Dsync::stored_leases`],
//!   [`Dsync::force_release`], [`Dsync::request_handoff`]): a read and a compare-and-swap
//!   write of records built by the lease machine's rules, no lease actor.
//! * [`fencing`]: server-side fencing on Kubernetes: the annotations, names and bindings of
//!   the ValidatingAdmissionPolicies in `deploy/fencing/` (Lease guard, holder fence, token
//!   fence).
//! * [`metrics`]: Prometheus metrics (feature `metrics`).
//! * [`supervisor`]: the [`Supervisor`] actor and the registry of a [`Dsync`]'s lease actors,
//!   one entry type for every face.
//! * [`term`]: [`Term`], cancellable, with the fencing token and a deadline of its own.
//! * `testing` (feature `testing`): the test kit for code that uses dsync: a fault-injecting
//!   store, a term log with the overlap and fencing-token checks, paused-time helpers and a
//!   conformance suite for any [`LeaseStore`].
//! * `watch`: one store watch per namespace, shared by a replica's actors.
//! * `work`: which lease's guarded work a task is running, so that a stop called from inside
//!   it is not waited for.
//!
//! The `dsync` command-line tool (feature `cli`, `src/bin/dsync`) is built on the public API
//! only: `lock`, `run`, `status`, `release`, `handoff`, `observe`.
//!
//! # One term lifecycle
//!
//! Shutdown is a main path, not an afterthought. Whatever ends a term ([`Election::stop`],
//! [`Lock::unlock`], [`Dsync::shutdown`], a dropped [`Lock`] handle, a lock grant whose caller
//! went away, panicking work), the lease actor does the same steps, written once for every
//! face: it cancels the term *first*; it waits for the work the term guards (`when_elected`
//! futures, `with_lock` bodies) while it keeps renewing; then it releases the lease, so another
//! replica takes over at once instead of after the lease duration. A drain is bounded
//! ([`Config::drain_timeout`]): work that does not return in time is reported
//! ([`Error::DrainTimeout`]) and its lease is left to expire, never released under it. A stop
//! called from inside the work it would wait for returns at once ([`Error::StopFromWork`])
//! and still takes effect.
//!
//! # Threads
//!
//! By default a [`Dsync`] runs its lease actors on a thread of its own ([`LeaseThread`](config::LeaseThread)), so
//! application code that blocks a thread cannot delay renewals; `when_elected` work and
//! [`LeaderOnly`] actors run on the arbiter that registered them. Every [`Term`] also ends at its
//! own deadline (the renew deadline of its last renewal) even if nothing runs to cancel it.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod admin;
pub mod config;
#[cfg(feature = "kube")]
mod connect;
mod dsync;
pub mod election;
mod error;
pub mod fencing;
mod hash;
pub mod leader_only;
pub mod lease;
pub mod lock;
pub mod metrics;
mod names;
pub mod observe;
pub mod record;
pub mod resource;
pub mod semaphore;
pub mod store;
pub mod supervisor;
pub mod term;
#[cfg(feature = "testing")]
pub mod testing;
pub mod timing;
mod watch;
mod work;

pub use config::Config;
pub use dsync::Dsync;
pub use election::{Deposed, Elected, Election, HolderChanged};
pub use error::{Error, Result};
pub use leader_only::LeaderOnly;
pub use lock::Lock;
pub use observe::Observer;
pub use resource::{MASTER, Resource, sanitize_name};
pub use semaphore::{Permit, Semaphore};
#[cfg(feature = "kube")]
pub use store::KubeStore;
pub use store::{LeaseStore, MemoryStore, StoreError};
pub use supervisor::Supervisor;
pub use term::Term;
pub use timing::Timing;
