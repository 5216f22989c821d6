//! Prometheus metrics (feature `metrics`, with `prometheus-client`).
//!
//! [`Metrics::register`] adds dsync's own metrics to a registry, labelled with `lease`
//! (`namespace/name` of the Lease object), and the metric that client-go's leader election
//! exports, under client-go's name and label, so that dashboards and alerts written for
//! Kubernetes controllers (`sum(leader_election_master_status) by (name) == 0`) work unchanged.
//!
//! | metric | type | labels | meaning |
//! |---|---|---|---|
//! | `dsync_is_leader` | gauge | `lease` | elections: 1 while this replica holds a term, 0 otherwise |
//! | `dsync_transitions_total` | counter | `lease` | elections: times this replica acquired the lease (terms started) |
//! | `dsync_lock_held` | gauge | `lease` | locks: 1 while this replica holds the lock, 0 otherwise |
//! | `dsync_lock_transitions_total` | counter | `lease` | locks: times this replica acquired the lock |
//! | `dsync_renew_duration_seconds` | histogram | `lease` | latency of each successful renewal write (elections and locks) |
//! | `dsync_conflicts_total` | counter | `lease` | writes that lost a compare-and-swap (409; elections and locks) |
//! | `dsync_handoffs_total` | counter | `lease` | handoffs this replica completed (its release naming the successor was written) |
//! | `dsync_identity_twins_total` | counter | `lease` | times this replica saw a record naming its identity change (taken at a step of its lease actor, not per renewal) while it held no claim on it: another live process carries the same identity (rule `one-identity`) |
//! | `dsync_versions_went_back_total` | counter | `lease` | reads that answered with a version older than one already seen (an etcd restore; rule `restore-resync`) |
//! | `dsync_leaderless_seconds_total` | counter | `lease` | time an election was observed without a leader |
//! | `dsync_semaphore_permits_held` | gauge | `semaphore` | semaphores: permits this replica's callers hold now (`semaphore` is `namespace/<scope>.semaphore.<name>`; each slot's Lease also has the `dsync_lock_*` series) |
//! | `dsync_semaphore_waiters` | gauge | `semaphore` | semaphores: this replica's callers waiting in `acquire` now |
//! | `dsync_semaphore_acquisitions_total` | counter | `semaphore` | semaphores: permits this replica's callers got |
//! | `leader_election_master_status` | gauge | `name` | client-go's name for `dsync_is_leader`: 1 while this replica leads, 0 otherwise; `name` is the Lease object's name |
//!
//! Side by side with client-go (`k8s.io/component-base/metrics/prometheus/clientgo/leaderelection`):
//!
//! | client-go | dsync | notes |
//! |---|---|---|
//! | `leader_election_master_status{name}` | `dsync_is_leader{lease}` | both exported; same values; `name` is the Lease name without its namespace |
//! | `leader_election_slowpath_total{name}` | `dsync_conflicts_total{lease}` | not exported under client-go's name: dsync never takes client-go's slow path (a renewal is one compare-and-swap; a conflict is counted here instead) |
//!
//! A lease's series are created (at 0) when its election or lock starts, so a follower
//! reports 0 rather than nothing, and `sum(...) == 0` alerts see a missing leader. They are
//! removed when its lease actor stops (a stopped election, a lock or semaphore slot whose
//! handles are gone and that retired): a service that uses ever new names does not grow its
//! metrics without bound. A semaphore's own series go when its last handle and permit do.
//! The counters of a lease used again start from 0 (Prometheus takes that for a counter
//! reset).
//!
//! Hand the metrics to a replica with [`Dsync::with_metrics`](crate::Dsync::with_metrics).
//! Without the feature the same calls exist and record nothing.
//!
//! ```
//! # #[cfg(feature = "metrics")]
//! # fn main() -> Result<(), dsync::Error> {
//! use dsync::{Dsync, MemoryStore, metrics::Metrics};
//! use prometheus_client::{encoding::text::encode, registry::Registry};
//!
//! actix::System::new().block_on(async {
//!     let mut registry = Registry::default();
//!     let d = Dsync::new(MemoryStore::new(), "pod-a")?
//!         .with_metrics(Metrics::register(&mut registry))?;
//!     let election = d.election("reports")?;
//!     election.elected().await?;
//!     let mut text = String::new();
//!     encode(&mut text, &registry).unwrap();
//!     assert!(text.contains("leader_election_master_status{name=\"unscoped.election.reports\"} 1"));
//!     d.shutdown().await
//! })
//! # }
//! # #[cfg(not(feature = "metrics"))]
//! # fn main() {}
//! ```

#[cfg(feature = "metrics")]
mod enabled {
    use std::sync::Arc;
    use std::time::Duration;

    use prometheus_client::encoding::EncodeLabelSet;
    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::metrics::family::Family;
    use prometheus_client::metrics::gauge::Gauge;
    use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
    use prometheus_client::registry::Registry;

    use crate::store::LeaseKey;

    #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
    struct Labels {
        lease: String,
    }

    /// A semaphore's label set: `namespace/<scope>.semaphore.<name>`.
    #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
    struct SemaphoreLabels {
        semaphore: String,
    }

    /// client-go's label set: the Lease name.
    #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
    struct ClientGoLabels {
        name: String,
    }

    fn new_histogram() -> Histogram {
        // 1 ms to ~16 s.
        Histogram::new(exponential_buckets(0.001, 2.0, 15))
    }

    struct Inner {
        is_leader: Family<Labels, Gauge>,
        transitions: Family<Labels, Counter>,
        lock_held: Family<Labels, Gauge>,
        lock_transitions: Family<Labels, Counter>,
        renew: Family<Labels, Histogram, fn() -> Histogram>,
        conflicts: Family<Labels, Counter>,
        handoffs: Family<Labels, Counter>,
        twins: Family<Labels, Counter>,
        went_back: Family<Labels, Counter>,
        leaderless: Family<Labels, Counter<f64, std::sync::atomic::AtomicU64>>,
        master_status: Family<ClientGoLabels, Gauge>,
        semaphore_held: Family<SemaphoreLabels, Gauge>,
        semaphore_waiters: Family<SemaphoreLabels, Gauge>,
        semaphore_acquisitions: Family<SemaphoreLabels, Counter>,
        /// How many semaphore handles (and their permits) use each semaphore's series: they
        /// are removed when the last goes.
        semaphore_users: std::sync::Mutex<crate::hash::FastMap<String, usize>>,
    }

    /// dsync's metrics; see the [module docs](crate::metrics). Cheap to clone.
    #[derive(Clone)]
    pub struct Metrics {
        inner: Arc<Inner>,
    }

    impl std::fmt::Debug for Metrics {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("Metrics").finish_non_exhaustive()
        }
    }

    impl Metrics {
        /// Creates the metrics and registers them in `registry`: dsync's own with the prefix
        /// `dsync`, and client-go's `leader_election_master_status` at the top level.
        pub fn register(registry: &mut Registry) -> Self {
            let inner = Inner {
                is_leader: Family::default(),
                transitions: Family::default(),
                lock_held: Family::default(),
                lock_transitions: Family::default(),
                renew: Family::new_with_constructor(new_histogram),
                conflicts: Family::default(),
                handoffs: Family::default(),
                twins: Family::default(),
                went_back: Family::default(),
                leaderless: Family::default(),
                master_status: Family::default(),
                semaphore_held: Family::default(),
                semaphore_waiters: Family::default(),
                semaphore_acquisitions: Family::default(),
                semaphore_users: Default::default(),
            };
            registry.register(
                "leader_election_master_status",
                "Gauge of if the reporting system is master of the relevant lease, 0 indicates \
                 backup, 1 indicates master. 'name' is the string used to identify the lease \
                 (client-go compatible; same as dsync_is_leader)",
                inner.master_status.clone(),
            );
            let r = registry.sub_registry_with_prefix("dsync");
            r.register(
                "is_leader",
                "1 while this replica holds a term of the election",
                inner.is_leader.clone(),
            );
            r.register(
                "transitions",
                "Terms of the election this replica started (acquisitions)",
                inner.transitions.clone(),
            );
            r.register(
                "lock_held",
                "1 while this replica holds the lock",
                inner.lock_held.clone(),
            );
            r.register(
                "lock_transitions",
                "Times this replica acquired the lock",
                inner.lock_transitions.clone(),
            );
            r.register(
                "renew_duration_seconds",
                "Latency of successful renewal writes",
                inner.renew.clone(),
            );
            r.register(
                "conflicts",
                "Writes that lost a compare-and-swap (HTTP 409)",
                inner.conflicts.clone(),
            );
            r.register(
                "handoffs",
                "Handoffs this replica completed (its release naming the successor was written)",
                inner.handoffs.clone(),
            );
            r.register(
                "identity_twins",
                "Times a record naming this replica changed while it held no claim: another live process with the same identity",
                inner.twins.clone(),
            );
            r.register(
                "versions_went_back",
                "Reads answered with a version older than one already seen (an etcd restore)",
                inner.went_back.clone(),
            );
            r.register(
                "leaderless_seconds",
                "Time an election was observed without a leader",
                inner.leaderless.clone(),
            );
            r.register(
                "semaphore_permits_held",
                "Permits of the semaphore this replica's callers hold",
                inner.semaphore_held.clone(),
            );
            r.register(
                "semaphore_waiters",
                "This replica's callers waiting for a permit of the semaphore",
                inner.semaphore_waiters.clone(),
            );
            r.register(
                "semaphore_acquisitions",
                "Permits of the semaphore this replica's callers got",
                inner.semaphore_acquisitions.clone(),
            );
            Metrics {
                inner: Arc::new(inner),
            }
        }

        /// The metrics of the semaphore whose slots' common prefix is `prefix` (its series
        /// start at 0).
        pub(crate) fn semaphore(&self, prefix: &LeaseKey) -> SemaphoreMetrics {
            let labels = SemaphoreLabels {
                semaphore: prefix.to_string(),
            };
            let m = &self.inner;
            let mut users = m.semaphore_users.lock().unwrap_or_else(|p| p.into_inner());
            let count = users.entry(labels.semaphore.clone()).or_insert(0);
            if *count == 0 {
                m.semaphore_held.get_or_create(&labels).set(0);
                m.semaphore_waiters.get_or_create(&labels).set(0);
                let _ = m.semaphore_acquisitions.get_or_create(&labels);
            }
            *count += 1;
            SemaphoreMetrics {
                metrics: Some(Arc::new(SemaphoreSeries {
                    metrics: self.clone(),
                    labels,
                })),
            }
        }

        pub(crate) fn lease(&self, key: &LeaseKey) -> LeaseMetrics {
            LeaseMetrics {
                metrics: Some(Resolved {
                    metrics: self.clone(),
                    labels: Labels {
                        lease: key.to_string(),
                    },
                    client_go: ClientGoLabels {
                        name: key.name.clone(),
                    },
                    face: HolderFace::None,
                }),
            }
        }
    }

    /// Which holder metrics a lease records.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum HolderFace {
        /// Not known yet, or a face without holder metrics.
        None,
        Election,
        Lock,
    }

    /// One semaphore handle's use of the semaphore's series.
    struct SemaphoreSeries {
        metrics: Metrics,
        labels: SemaphoreLabels,
    }

    impl Drop for SemaphoreSeries {
        fn drop(&mut self) {
            // The last handle (and permit) of the semaphore is gone, so are its slot actors
            // (or they are retiring): its series go too.
            let m = &self.metrics.inner;
            let mut users = m.semaphore_users.lock().unwrap_or_else(|p| p.into_inner());
            let Some(count) = users.get_mut(&self.labels.semaphore) else {
                return;
            };
            *count -= 1;
            if *count == 0 {
                users.remove(&self.labels.semaphore);
                m.semaphore_held.remove(&self.labels);
                m.semaphore_waiters.remove(&self.labels);
                m.semaphore_acquisitions.remove(&self.labels);
            }
        }
    }

    /// The metrics of one semaphore (labels resolved once), while a handle or a permit of it
    /// lives.
    #[derive(Clone, Default)]
    pub(crate) struct SemaphoreMetrics {
        metrics: Option<Arc<SemaphoreSeries>>,
    }

    impl SemaphoreMetrics {
        /// One more (`+1`) or one fewer (`-1`) permit held.
        pub fn held(&self, delta: i64) {
            if let Some(s) = &self.metrics {
                let (m, l) = (&s.metrics, &s.labels);
                m.inner.semaphore_held.get_or_create(l).inc_by(delta);
            }
        }

        /// One more (`+1`) or one fewer (`-1`) caller waiting.
        pub fn waiting(&self, delta: i64) {
            if let Some(s) = &self.metrics {
                let (m, l) = (&s.metrics, &s.labels);
                m.inner.semaphore_waiters.get_or_create(l).inc_by(delta);
            }
        }

        /// A caller got a permit.
        pub fn acquired(&self) {
            if let Some(s) = &self.metrics {
                let (m, l) = (&s.metrics, &s.labels);
                m.inner.semaphore_acquisitions.get_or_create(l).inc();
            }
        }
    }

    #[derive(Clone)]
    struct Resolved {
        metrics: Metrics,
        labels: Labels,
        client_go: ClientGoLabels,
        face: HolderFace,
    }

    /// The metrics of one lease (labels resolved once).
    #[derive(Clone, Default)]
    pub(crate) struct LeaseMetrics {
        metrics: Option<Resolved>,
    }

    impl LeaseMetrics {
        /// The lease is an election's or a lock's (`kind` is the face's `KIND`): from now on
        /// holding it is recorded in that face's metrics, whose series start at 0.
        pub fn face(&mut self, kind: &str) {
            let Some(r) = &mut self.metrics else { return };
            r.face = match kind {
                "election" => HolderFace::Election,
                "lock" => HolderFace::Lock,
                _ => HolderFace::None,
            };
            let (m, l) = (&r.metrics.inner, &r.labels);
            match r.face {
                HolderFace::Election => {
                    m.is_leader.get_or_create(l).set(0);
                    let _ = m.transitions.get_or_create(l);
                    m.master_status.get_or_create(&r.client_go).set(0);
                }
                HolderFace::Lock => {
                    m.lock_held.get_or_create(l).set(0);
                    let _ = m.lock_transitions.get_or_create(l);
                }
                HolderFace::None => {}
            }
        }

        /// The lease's actor has stopped: its series are removed (every face's), and nothing
        /// more is recorded through this handle (a late call would create them again). A new
        /// actor of the lease creates them again, at 0.
        pub fn remove(&mut self) {
            let Some(r) = self.metrics.take() else { return };
            let (m, l) = (&r.metrics.inner, &r.labels);
            m.is_leader.remove(l);
            m.transitions.remove(l);
            m.lock_held.remove(l);
            m.lock_transitions.remove(l);
            m.renew.remove(l);
            m.conflicts.remove(l);
            m.handoffs.remove(l);
            m.twins.remove(l);
            m.went_back.remove(l);
            m.leaderless.remove(l);
            if r.face == HolderFace::Election {
                m.master_status.remove(&r.client_go);
            }
        }

        /// This replica holds the lease (a new term: counted) or no longer does.
        pub fn holding(&self, holding: bool) {
            let Some(r) = &self.metrics else { return };
            let (m, l) = (&r.metrics.inner, &r.labels);
            match r.face {
                HolderFace::Election => {
                    m.is_leader.get_or_create(l).set(i64::from(holding));
                    m.master_status
                        .get_or_create(&r.client_go)
                        .set(i64::from(holding));
                    if holding {
                        m.transitions.get_or_create(l).inc();
                    }
                }
                HolderFace::Lock => {
                    m.lock_held.get_or_create(l).set(i64::from(holding));
                    if holding {
                        m.lock_transitions.get_or_create(l).inc();
                    }
                }
                HolderFace::None => {}
            }
        }

        pub fn renewed(&self, took: Duration) {
            if let Some(r) = &self.metrics {
                r.metrics
                    .inner
                    .renew
                    .get_or_create(&r.labels)
                    .observe(took.as_secs_f64());
            }
        }

        pub fn conflict(&self) {
            if let Some(r) = &self.metrics {
                r.metrics.inner.conflicts.get_or_create(&r.labels).inc();
            }
        }

        pub fn handed_off(&self) {
            if let Some(r) = &self.metrics {
                r.metrics.inner.handoffs.get_or_create(&r.labels).inc();
            }
        }

        pub fn twin(&self) {
            if let Some(r) = &self.metrics {
                r.metrics.inner.twins.get_or_create(&r.labels).inc();
            }
        }

        pub fn went_back(&self) {
            if let Some(r) = &self.metrics {
                r.metrics.inner.went_back.get_or_create(&r.labels).inc();
            }
        }

        pub fn leaderless(&self, for_: Duration) {
            if let Some(r) = &self.metrics {
                r.metrics
                    .inner
                    .leaderless
                    .get_or_create(&r.labels)
                    .inc_by(for_.as_secs_f64());
            }
        }
    }
}

#[cfg(feature = "metrics")]
pub use enabled::Metrics;
#[cfg(feature = "metrics")]
pub(crate) use enabled::{LeaseMetrics, SemaphoreMetrics};

/// Without the `metrics` feature: records nothing.
#[cfg(not(feature = "metrics"))]
#[derive(Clone, Default)]
pub(crate) struct LeaseMetrics;

#[cfg(not(feature = "metrics"))]
impl LeaseMetrics {
    pub fn face(&mut self, _kind: &str) {}
    pub fn remove(&mut self) {}
    pub fn holding(&self, _holding: bool) {}
    pub fn renewed(&self, _took: std::time::Duration) {}
    pub fn conflict(&self) {}
    pub fn handed_off(&self) {}
    pub fn twin(&self) {}
    pub fn went_back(&self) {}
    pub fn leaderless(&self, _for: std::time::Duration) {}
}

/// Without the `metrics` feature: records nothing.
#[cfg(not(feature = "metrics"))]
#[derive(Clone, Default)]
pub(crate) struct SemaphoreMetrics;

#[cfg(not(feature = "metrics"))]
impl SemaphoreMetrics {
    pub fn held(&self, _delta: i64) {}
    pub fn waiting(&self, _delta: i64) {}
    pub fn acquired(&self) {}
}
