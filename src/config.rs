//! Configuration: where leases live, who we are, and lease timing.
//!
//! [`Config::from_env`] reads the environment variables of the Go package
//! `tempcke/dsync`; an empty value counts as unset.
//!
//! | variable | default |
//! |---|---|
//! | `KUBE_NAMESPACE` | `default` |
//! | `KUBE_LEASE_SCOPE` | `unscoped` |
//! | `KUBE_POD_NAME` | 12 hex characters of a per-process UUID (the identity); no pod name |
//! | `KUBE_CONFIG_PATH` | none: the default kubeconfig (`$KUBECONFIG`, `~/.kube/config`), then the in-cluster service account |

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use crate::error::Error;
use crate::names::is_dns1123_label;
use crate::resource::{DEFAULT_NAMESPACE, DEFAULT_SCOPE};
pub use crate::timing::{Timing, TimingError};

/// Environment variable naming the namespace of the leases.
pub const ENV_NAMESPACE: &str = "KUBE_NAMESPACE";
/// Environment variable naming the scope prefixed to lease names.
pub const ENV_SCOPE: &str = "KUBE_LEASE_SCOPE";
/// Environment variable naming this replica (the lease holder identity).
pub const ENV_POD_NAME: &str = "KUBE_POD_NAME";
/// Environment variable naming a kubeconfig file.
pub const ENV_CONFIG_PATH: &str = "KUBE_CONFIG_PATH";

/// Where a [`Dsync`](crate::Dsync) runs its lease actors.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum LeaseThread {
    /// On an actix arbiter (a thread) of dsync's own, started with the `Dsync` and stopped by
    /// its shutdown. Renewals and step-downs then never wait for application code: work that
    /// blocks the application's threads cannot keep a term alive past its lease. The default.
    #[default]
    Dedicated,
    /// On the arbiter that creates the `Dsync`. For tests in paused tokio time
    /// (`tokio::time::pause`), whose clock belongs to one runtime; work that blocks that
    /// thread then delays renewals too (each [`Term`](crate::Term)'s own deadline still ends
    /// it on time).
    Current,
}

/// The default [`Config::drain_timeout`]: half of Kubernetes' default termination grace
/// period, so a pod that shuts down on SIGTERM finishes before it is killed.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(15);

/// Where leases live, who this replica is, how to reach Kubernetes, and lease timing.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub struct Config {
    /// Namespace of the leases (`KUBE_NAMESPACE`).
    pub namespace: String,
    /// Scope prefixed to lease names (`KUBE_LEASE_SCOPE`).
    pub scope: String,
    /// Holder identity of this replica (`KUBE_POD_NAME`). Must be unique among replicas.
    pub identity: String,
    /// Kubeconfig to use instead of in-cluster / default discovery (`KUBE_CONFIG_PATH`).
    pub kubeconfig_path: Option<PathBuf>,
    /// Lease timing.
    pub timing: Timing,
    /// How long a stop (`stop`, `unlock`, shutdown, a dropped handle) waits for the work a
    /// term guards to return after the term is cancelled. The lease is renewed meanwhile.
    /// When it runs out, renewals stop and nothing is written: the lease expires as after a
    /// crash (never released while the work may still run), and the stop returns
    /// [`Error::DrainTimeout`]. Default [`DEFAULT_DRAIN_TIMEOUT`].
    pub drain_timeout: Duration,
    /// Where the lease actors run.
    pub lease_thread: LeaseThread,
    /// The name of this replica's pod (`KUBE_POD_NAME`, from the downward API), when it is
    /// known. Each acquisition writes it on the Lease as
    /// [`HOLDER_POD_ANNOTATION`](crate::record::HOLDER_POD_ANNOTATION), for the server-side
    /// holder fence ([`crate::fencing`]): it then names the holder's pod even where the
    /// identity is not the pod name (e.g. the `dsync` command's suffixed identities).
    /// `None` (the default without the variable): nothing is written.
    pub pod_name: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            namespace: DEFAULT_NAMESPACE.to_owned(),
            scope: DEFAULT_SCOPE.to_owned(),
            identity: process_identity().to_owned(),
            kubeconfig_path: None,
            timing: Timing::default(),
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            lease_thread: LeaseThread::default(),
            pod_name: None,
        }
    }
}

impl Config {
    /// Reads the process environment (see the module docs) and validates the result.
    pub fn from_env() -> Result<Self, Error> {
        Self::from_lookup(|key| std::env::var(key).ok())
    }

    /// Like [`from_env`](Self::from_env), reading variables through `lookup` (a map in tests,
    /// another configuration system in applications). Empty values count as unset.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, Error> {
        let get = |key: &str| lookup(key).filter(|v| !v.is_empty());
        let mut config = Config::default();
        if let Some(ns) = get(ENV_NAMESPACE) {
            config.namespace = ns;
        }
        if let Some(scope) = get(ENV_SCOPE) {
            config.scope = scope;
        }
        if let Some(id) = get(ENV_POD_NAME) {
            config.pod_name = Some(id.clone());
            config.identity = id;
        }
        config.kubeconfig_path = get(ENV_CONFIG_PATH).map(PathBuf::from);
        config.validate()?;
        Ok(config)
    }

    /// Sets the namespace.
    pub fn with_namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = namespace.into();
        self
    }

    /// Sets the scope.
    pub fn with_scope(mut self, scope: impl Into<String>) -> Self {
        self.scope = scope.into();
        self
    }

    /// Sets the holder identity.
    pub fn with_identity(mut self, identity: impl Into<String>) -> Self {
        self.identity = identity.into();
        self
    }

    /// Sets the kubeconfig path.
    pub fn with_kubeconfig_path(mut self, path: impl Into<PathBuf>) -> Self {
        self.kubeconfig_path = Some(path.into());
        self
    }

    /// Sets the lease timing.
    pub fn with_timing(mut self, timing: Timing) -> Self {
        self.timing = timing;
        self
    }

    /// Sets the drain timeout (see [`Config::drain_timeout`]).
    pub fn with_drain_timeout(mut self, timeout: Duration) -> Self {
        self.drain_timeout = timeout;
        self
    }

    /// Sets the name of this replica's pod (see [`Config::pod_name`]); unlike
    /// [`with_identity`](Self::with_identity), it does not change the identity.
    pub fn with_pod_name(mut self, pod: impl Into<String>) -> Self {
        self.pod_name = Some(pod.into());
        self
    }

    /// Sets where the lease actors run (see [`LeaseThread`]).
    pub fn with_lease_thread(mut self, thread: LeaseThread) -> Self {
        self.lease_thread = thread;
        self
    }

    /// Checks the namespace, scope, identity, pod name and drain timeout.
    pub fn validate(&self) -> Result<(), Error> {
        if self.drain_timeout.is_zero() {
            return Err(Error::InvalidConfig {
                key: "drain_timeout",
                reason: "the drain timeout must be greater than zero (a stop must let the \
                         term's work see the cancellation)"
                    .into(),
            });
        }
        if !is_dns1123_label(&self.namespace) {
            return Err(Error::InvalidConfig {
                key: ENV_NAMESPACE,
                reason: format!(
                    "namespace {:?} is not a DNS-1123 label (lowercase a-z, 0-9 and '-', at most 63)",
                    self.namespace
                ),
            });
        }
        // The scope prefixes lease names: check it inside a real one.
        crate::Resource::new(&*self.namespace, &*self.scope, "x")
            .validate()
            .map_err(|err| Error::InvalidConfig {
                key: ENV_SCOPE,
                reason: format!("scope {:?}: {err}", self.scope),
            })?;
        validate_identity(&self.identity)?;
        match &self.pod_name {
            Some(pod) => validate_identity(pod),
            None => Ok(()),
        }
    }
}

/// Identities are written to `holderIdentity`: non-empty, no surrounding whitespace, no control
/// characters, at most 253 bytes (so they also fit a label value or an object name).
pub(crate) fn validate_identity(identity: &str) -> Result<(), Error> {
    let reason = if identity.is_empty() {
        "identity must not be empty".to_owned()
    } else if identity.trim() != identity {
        format!("identity {identity:?} has leading or trailing whitespace")
    } else if identity.chars().any(char::is_control) {
        format!("identity {identity:?} contains control characters")
    } else if identity.len() > 253 {
        format!("identity is {} bytes long; at most 253", identity.len())
    } else {
        return Ok(());
    };
    Err(Error::InvalidConfig {
        key: ENV_POD_NAME,
        reason,
    })
}

/// This process's default identity: the first 12 hex characters of a UUID made once per process.
pub fn process_identity() -> &'static str {
    static ID: OnceLock<String> = OnceLock::new();
    ID.get_or_init(|| uuid::Uuid::new_v4().simple().to_string()[..12].to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn lookup(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn defaults_when_nothing_is_set() {
        let c = Config::from_lookup(lookup(&[])).unwrap();
        assert_eq!(c.namespace, "default");
        assert_eq!(c.scope, "unscoped");
        assert_eq!(c.identity, process_identity());
        assert_eq!(c.identity.len(), 12);
        assert!(c.identity.chars().all(|ch| ch.is_ascii_hexdigit()));
        assert_eq!(c.kubeconfig_path, None);
        assert_eq!(c.timing, Timing::default());
    }

    #[test]
    fn process_identity_is_stable_within_the_process() {
        assert_eq!(process_identity(), process_identity());
    }

    #[test]
    fn reads_every_variable() {
        let c = Config::from_lookup(lookup(&[
            ("KUBE_NAMESPACE", "prod"),
            ("KUBE_LEASE_SCOPE", "billing"),
            ("KUBE_POD_NAME", "billing-7d9f-x2"),
            ("KUBE_CONFIG_PATH", "/etc/kube/config"),
        ]))
        .unwrap();
        assert_eq!(c.namespace, "prod");
        assert_eq!(c.scope, "billing");
        assert_eq!(c.identity, "billing-7d9f-x2");
        assert_eq!(c.pod_name.as_deref(), Some("billing-7d9f-x2"));
        assert_eq!(c.kubeconfig_path, Some(PathBuf::from("/etc/kube/config")));
    }

    #[test]
    fn empty_values_count_as_unset() {
        let c = Config::from_lookup(lookup(&[
            ("KUBE_NAMESPACE", ""),
            ("KUBE_LEASE_SCOPE", ""),
            ("KUBE_POD_NAME", ""),
            ("KUBE_CONFIG_PATH", ""),
        ]))
        .unwrap();
        assert_eq!(c, Config::default());
    }

    #[test]
    fn bad_values_are_rejected_naming_the_variable() {
        for (pairs, key) in [
            (&[("KUBE_NAMESPACE", "Prod")][..], ENV_NAMESPACE),
            (&[("KUBE_LEASE_SCOPE", "my_service")][..], ENV_SCOPE),
            (&[("KUBE_POD_NAME", " pod ")][..], ENV_POD_NAME),
            (&[("KUBE_POD_NAME", "a\nb")][..], ENV_POD_NAME),
        ] {
            match Config::from_lookup(lookup(pairs)) {
                Err(Error::InvalidConfig { key: got, .. }) => assert_eq!(got, key, "{pairs:?}"),
                other => panic!("{pairs:?}: expected InvalidConfig, got {other:?}"),
            }
        }
    }

    #[test]
    fn the_pod_name_is_kept_when_the_identity_changes() {
        let c = Config::from_lookup(lookup(&[("KUBE_POD_NAME", "web-1")]))
            .unwrap()
            .with_identity("web-1-lock-7f3a");
        assert_eq!(c.pod_name.as_deref(), Some("web-1"));
        assert_eq!(Config::default().pod_name, None);
        assert!(
            Config::default()
                .with_pod_name(" web-1")
                .validate()
                .is_err()
        );
        let c = Config::default().with_pod_name("web-2");
        assert_eq!(
            (c.pod_name.as_deref(), c.identity.as_str()),
            (Some("web-2"), process_identity())
        );
    }

    #[test]
    fn empty_identity_is_rejected() {
        let err = Config::default().with_identity("").validate().unwrap_err();
        assert!(
            matches!(
                err,
                Error::InvalidConfig {
                    key: ENV_POD_NAME,
                    ..
                }
            ),
            "{err:?}"
        );
    }
}
