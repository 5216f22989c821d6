//! Server-side fencing on Kubernetes: what the API server itself can refuse to a holder whose
//! term is over.
//!
//! dsync fences in three layers, each useful alone. The first is the term itself: work stops
//! when [`Term::cancelled`] completes, and [`Term::is_active`] turns false at the term's own
//! deadline even if nothing runs to say so. The second is downstream: a system that is written
//! to checks [`Term::fencing_token`] (or [`Term::fence`]). The third, this module's, is in the
//! API server: three ValidatingAdmissionPolicies shipped in `deploy/fencing/` of the
//! repository, tested on a real kube-apiserver (`tests/fencing.rs`).
//!
//! * The **Lease guard** ([`LEASE_GUARD_POLICY`], `lease-guard.yaml`), on every Lease named as
//!   dsync names them: `spec.leaseTransitions` (the fencing token) never decreases; a write
//!   naming a new, non-empty holder raises it (a release keeps it; coordinated Leases are
//!   exempt from this rule); dsync Leases are never deleted.
//! * The **holder fence** ([`HOLDER_FENCE_POLICY`], `holder-fence.yaml`), with a Lease as its
//!   parameter: writes to the objects a [binding] protects are admitted only from the pod
//!   that holds the Lease: the pod named by the request's pod-bound service-account token
//!   ([`POD_NAME_EXTRA`]) must be the Lease's [`HOLDER_POD_ANNOTATION`] (written with each
//!   acquisition when [`Config::pod_name`](crate::Config::pod_name) is set), or without it
//!   its `spec.holderIdentity`.
//! * The **token fence** ([`TOKEN_FENCE_POLICY`], `token-fence.yaml`), with a Lease as its
//!   parameter: creates and updates of the protected objects must carry the
//!   [`FENCE_ANNOTATION`] of the Lease's current term, `<lease uid>/<leaseTransitions>`, as
//!   [`annotate`] or [`merge_patch`] set it from [`Term::fence`].
//!
//! Members of [`BREAK_GLASS_GROUP`] are exempt from all three. Each refusal is an HTTP 403
//! whose message starts with the policy's name and the rule.
//!
//! The API server reads a policy's parameter (the Lease) from its informer cache, so the fences
//! lag a change of holder by a watch delay: a deposed holder's write that follows the change
//! at once may still be admitted. The measured lag is in `BENCHMARKS.md` ("Issue 23:
//! server-side fencing"); self-fencing stays the first line.
//!
//! ```no_run
//! # async fn demo(term: dsync::Term, client: kube::Client) -> Result<(), Box<dyn std::error::Error>> {
//! use k8s_openapi::api::core::v1::ConfigMap;
//! use kube::api::{Api, Patch, PatchParams};
//!
//! // Under the lock: write the report, fenced by the term that holds the lock.
//! let mut patch = dsync::fencing::merge_patch(&term)?;
//! patch["data"] = serde_json::json!({ "report": "..." });
//! Api::<ConfigMap>::namespaced(client, "demo")
//!     .patch("demo-config", &PatchParams::default(), &Patch::Merge(&patch))
//!     .await?;
//! # Ok(())
//! # }
//! ```

#[cfg(feature = "kube")]
use k8s_openapi::api::admissionregistration::v1::ValidatingAdmissionPolicyBinding;
#[cfg(feature = "kube")]
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

pub use crate::record::HOLDER_POD_ANNOTATION;
#[cfg(feature = "kube")]
use crate::record::LeaseKey;
use crate::term::Term;

/// The annotation of a fenced write: `<lease uid>/<fencing token>` ([`Term::fence`]), checked
/// by the token fence against the Lease's current `metadata.uid` and `spec.leaseTransitions`.
pub const FENCE_ANNOTATION: &str = "dsync.io/fence";

/// The group whose members the three policies let through: operators repairing a Lease (a
/// delete, a lower token) or writing a protected object by hand. Grant it sparingly (e.g.
/// `kubectl --as=<you> --as-group=dsync:break-glass`, which needs `impersonate` rights).
pub const BREAK_GLASS_GROUP: &str = "dsync:break-glass";

/// The `userInfo.extra` key in which the API server names the pod a service-account token is
/// bound to (every pod's projected token is): feature `ServiceAccountTokenPodNodeInfo`, on by
/// default since Kubernetes 1.30, GA since 1.32.
pub const POD_NAME_EXTRA: &str = "authentication.kubernetes.io/pod-name";

/// Name of the Lease guard's ValidatingAdmissionPolicy (and of its binding).
pub const LEASE_GUARD_POLICY: &str = "dsync-lease-guard";

/// Name of the holder fence's ValidatingAdmissionPolicy.
pub const HOLDER_FENCE_POLICY: &str = "dsync-holder-fence";

/// Name of the token fence's ValidatingAdmissionPolicy.
pub const TOKEN_FENCE_POLICY: &str = "dsync-token-fence";

/// Why a write could not be fenced.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FenceError {
    /// The term has no fence: its store gave no Lease uid (`KubeStore` and `MemoryStore`
    /// always do; a store of your own may not).
    #[error("the term of lease {lease} has no fence: its store gave no lease uid")]
    NoLeaseUid {
        /// `namespace/name` of the lease.
        lease: String,
    },
}

/// The term's fence ([`Term::fence`]), or why there is none.
pub fn fence(term: &Term) -> Result<String, FenceError> {
    term.fence().ok_or_else(|| FenceError::NoLeaseUid {
        lease: term.lease().to_string(),
    })
}

/// Sets [`FENCE_ANNOTATION`] on an object about to be created or replaced, to the term's
/// fence. Other annotations are left alone.
#[cfg(feature = "kube")]
pub fn annotate(term: &Term, metadata: &mut ObjectMeta) -> Result<(), FenceError> {
    let fence = fence(term)?;
    metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert(FENCE_ANNOTATION.to_owned(), fence);
    Ok(())
}

/// A JSON merge patch (or the start of one: add the fields to change) that sets
/// [`FENCE_ANNOTATION`] to the term's fence: `{"metadata":{"annotations":{"dsync.io/fence":
/// "<uid>/<token>"}}}`. Also a valid server-side apply fragment.
#[cfg(feature = "kube")]
pub fn merge_patch(term: &Term) -> Result<serde_json::Value, FenceError> {
    let fence = fence(term)?;
    Ok(serde_json::json!({ "metadata": { "annotations": { FENCE_ANNOTATION: fence } } }))
}

/// One of the two fences that take a Lease as their parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Fence {
    /// Only the holder's pod may write ([`HOLDER_FENCE_POLICY`]).
    Holder,
    /// Only writes carrying the current term's fence ([`TOKEN_FENCE_POLICY`]).
    Token,
}

impl Fence {
    /// The name of its ValidatingAdmissionPolicy.
    #[must_use]
    pub fn policy(self) -> &'static str {
        match self {
            Fence::Holder => HOLDER_FENCE_POLICY,
            Fence::Token => TOKEN_FENCE_POLICY,
        }
    }

    /// The operations it checks: the token fence cannot check a delete (it carries no object).
    #[must_use]
    pub fn operations(self) -> &'static [&'static str] {
        match self {
            Fence::Holder => &["CREATE", "UPDATE", "DELETE"],
            Fence::Token => &["CREATE", "UPDATE"],
        }
    }
}

/// The objects a binding protects: some resource of one API group in one namespace, all of
/// them or those named.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub struct Protected {
    /// The API group (`""` for the core group, e.g. ConfigMaps).
    pub group: String,
    /// The resource, plural (`"configmaps"`, `"reports"`; `"reports/status"` for a
    /// subresource).
    pub resource: String,
    /// The namespace of the objects.
    pub namespace: String,
    /// Their names; empty: every object of the resource in the namespace.
    pub names: Vec<String>,
}

impl Protected {
    /// Every object of `resource` in API group `group` (`""`: the core group) in `namespace`.
    pub fn new(
        group: impl Into<String>,
        resource: impl Into<String>,
        namespace: impl Into<String>,
    ) -> Self {
        Protected {
            group: group.into(),
            resource: resource.into(),
            namespace: namespace.into(),
            names: Vec::new(),
        }
    }

    /// ConfigMaps of `namespace`.
    pub fn config_maps(namespace: impl Into<String>) -> Self {
        Protected::new("", "configmaps", namespace)
    }

    /// Only the object named `name` (may be given more than once).
    pub fn named(mut self, name: impl Into<String>) -> Self {
        self.names.push(name.into());
        self
    }
}

/// A ValidatingAdmissionPolicyBinding named `name` of `fence` with the Lease `lease` as its
/// parameter (refusing every write it matches while that Lease does not exist) for the
/// `protected` objects, as `deploy/fencing/example-binding.yaml` shows it. The policy itself
/// (`holder-fence.yaml`, `token-fence.yaml`) must be installed.
#[cfg(feature = "kube")]
#[must_use]
pub fn binding(
    name: &str,
    fence: Fence,
    lease: &LeaseKey,
    protected: &Protected,
) -> ValidatingAdmissionPolicyBinding {
    let mut rule = serde_json::json!({
        "apiGroups": [protected.group],
        "apiVersions": ["*"],
        "resources": [protected.resource],
        "operations": fence.operations(),
    });
    if !protected.names.is_empty() {
        rule["resourceNames"] = serde_json::json!(protected.names);
    }
    // Built from JSON: the Rust shape of the spec differs between the Kubernetes versions
    // k8s-openapi compiles for (an `Option` up to 1.35), the JSON does not.
    let binding = serde_json::json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": { "name": name },
        "spec": {
            "policyName": fence.policy(),
            "validationActions": ["Deny"],
            "paramRef": {
                "name": lease.name,
                "namespace": lease.namespace,
                "parameterNotFoundAction": "Deny",
            },
            "matchResources": {
                "namespaceSelector": {
                    "matchLabels": { "kubernetes.io/metadata.name": protected.namespace },
                },
                "resourceRules": [rule],
            },
        },
    });
    serde_json::from_value(binding).expect("a well-formed ValidatingAdmissionPolicyBinding")
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::record::LeaseKey;

    fn term(uid: Option<&str>) -> Term {
        Term::new(
            LeaseKey::new("demo", "unscoped.lock.report"),
            "pod-a".into(),
            7,
            crate::term::now() + Duration::from_secs(60),
        )
        .with_lease_uid(uid.map(str::to_owned))
    }

    #[test]
    fn a_term_without_a_lease_uid_cannot_be_fenced() {
        assert_eq!(
            fence(&term(None)),
            Err(FenceError::NoLeaseUid {
                lease: "demo/unscoped.lock.report".into()
            })
        );
        assert_eq!(fence(&term(Some("u-1"))).as_deref(), Ok("u-1/7"));
    }

    #[cfg(feature = "kube")]
    #[test]
    fn annotate_and_merge_patch_carry_the_fence() {
        let t = term(Some("u-1"));
        let mut metadata = ObjectMeta {
            annotations: Some([("team".to_owned(), "payments".to_owned())].into()),
            ..Default::default()
        };
        annotate(&t, &mut metadata).unwrap();
        let annotations = metadata.annotations.unwrap();
        assert_eq!(annotations[FENCE_ANNOTATION], "u-1/7");
        assert_eq!(annotations["team"], "payments");
        assert_eq!(
            merge_patch(&t).unwrap(),
            serde_json::json!({"metadata": {"annotations": {"dsync.io/fence": "u-1/7"}}})
        );
        assert!(merge_patch(&term(None)).is_err());
    }

    #[cfg(feature = "kube")]
    #[test]
    fn a_binding_names_the_lease_and_the_protected_objects() {
        let lease = LeaseKey::new("leases", "unscoped.lock.report");
        let b = binding(
            "fence-report",
            Fence::Token,
            &lease,
            &Protected::config_maps("demo").named("demo-config"),
        );
        let b = serde_json::to_value(b).unwrap();
        assert_eq!(b["metadata"]["name"], "fence-report");
        let spec = &b["spec"];
        assert_eq!(spec["policyName"], TOKEN_FENCE_POLICY);
        assert_eq!(spec["validationActions"], serde_json::json!(["Deny"]));
        assert_eq!(
            spec["paramRef"],
            serde_json::json!({
                "name": "unscoped.lock.report",
                "namespace": "leases",
                "parameterNotFoundAction": "Deny",
            })
        );
        let resources = &spec["matchResources"];
        assert_eq!(
            resources["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
            "demo"
        );
        assert_eq!(
            resources["resourceRules"],
            serde_json::json!([{
                "apiGroups": [""],
                "apiVersions": ["*"],
                "resources": ["configmaps"],
                "resourceNames": ["demo-config"],
                "operations": ["CREATE", "UPDATE"],
            }])
        );
        let all = binding(
            "fence-all",
            Fence::Holder,
            &lease,
            &Protected::new("example.com", "reports", "demo"),
        );
        let rule =
            &serde_json::to_value(all).unwrap()["spec"]["matchResources"]["resourceRules"][0];
        assert_eq!(rule.get("resourceNames"), None, "every report");
        assert_eq!(
            rule["operations"],
            serde_json::json!(["CREATE", "UPDATE", "DELETE"])
        );
    }
}
