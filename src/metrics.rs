//! Prometheus metrics (feature `metrics`, with `prometheus-client`).
//!
//! [`Metrics::register`] adds these to a registry, all labelled with `lease`
//! (`namespace/name`):
//!
//! | metric | type | meaning |
//! |---|---|---|
//! | `dsync_is_leader` | gauge | 1 while this replica holds a term of the election |
//! | `dsync_transitions_total` | counter | election terms this replica started |
//! | `dsync_renew_duration_seconds` | histogram | latency of each successful renewal write (elections and locks) |
//! | `dsync_conflicts_total` | counter | writes that lost a compare-and-swap (409; elections and locks) |
//! | `dsync_leaderless_seconds_total` | counter | time an election was observed without a leader |
//!
//! Hand the metrics to a replica with [`Dsync::with_metrics`](crate::Dsync::with_metrics).
//! Without the feature the same calls exist and record nothing.

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

    fn new_histogram() -> Histogram {
        // 1 ms to ~16 s.
        Histogram::new(exponential_buckets(0.001, 2.0, 15))
    }

    struct Inner {
        is_leader: Family<Labels, Gauge>,
        transitions: Family<Labels, Counter>,
        renew: Family<Labels, Histogram, fn() -> Histogram>,
        conflicts: Family<Labels, Counter>,
        leaderless: Family<Labels, Counter<f64, std::sync::atomic::AtomicU64>>,
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
        /// Creates the metrics and registers them (prefix `dsync`) in `registry`.
        pub fn register(registry: &mut Registry) -> Self {
            let inner = Inner {
                is_leader: Family::default(),
                transitions: Family::default(),
                renew: Family::new_with_constructor(new_histogram),
                conflicts: Family::default(),
                leaderless: Family::default(),
            };
            let r = registry.sub_registry_with_prefix("dsync");
            r.register(
                "is_leader",
                "1 while this replica holds a term of the lease",
                inner.is_leader.clone(),
            );
            r.register(
                "transitions",
                "Terms this replica started (acquisitions)",
                inner.transitions.clone(),
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
                "leaderless_seconds",
                "Time an election was observed without a leader",
                inner.leaderless.clone(),
            );
            Metrics {
                inner: Arc::new(inner),
            }
        }

        pub(crate) fn lease(&self, key: &LeaseKey) -> LeaseMetrics {
            LeaseMetrics {
                metrics: Some((
                    self.clone(),
                    Labels {
                        lease: key.to_string(),
                    },
                )),
            }
        }
    }

    /// The metrics of one lease (labels resolved once).
    #[derive(Clone, Default)]
    pub(crate) struct LeaseMetrics {
        metrics: Option<(Metrics, Labels)>,
    }

    impl LeaseMetrics {
        pub fn leading(&self, leading: bool) {
            if let Some((m, l)) = &self.metrics {
                m.inner.is_leader.get_or_create(l).set(i64::from(leading));
                if leading {
                    m.inner.transitions.get_or_create(l).inc();
                }
            }
        }

        pub fn renewed(&self, took: Duration) {
            if let Some((m, l)) = &self.metrics {
                m.inner.renew.get_or_create(l).observe(took.as_secs_f64());
            }
        }

        pub fn conflict(&self) {
            if let Some((m, l)) = &self.metrics {
                m.inner.conflicts.get_or_create(l).inc();
            }
        }

        pub fn leaderless(&self, for_: Duration) {
            if let Some((m, l)) = &self.metrics {
                m.inner
                    .leaderless
                    .get_or_create(l)
                    .inc_by(for_.as_secs_f64());
            }
        }
    }
}

#[cfg(feature = "metrics")]
pub(crate) use enabled::LeaseMetrics;
#[cfg(feature = "metrics")]
pub use enabled::Metrics;

/// Without the `metrics` feature: records nothing.
#[cfg(not(feature = "metrics"))]
#[derive(Clone, Default)]
pub(crate) struct LeaseMetrics;

#[cfg(not(feature = "metrics"))]
impl LeaseMetrics {
    pub fn leading(&self, _leading: bool) {}
    pub fn renewed(&self, _took: std::time::Duration) {}
    pub fn conflict(&self) {}
    pub fn leaderless(&self, _for: std::time::Duration) {}
}
