//! Installing the server-side fencing manifests of `deploy/fencing/` on the real API server,
//! as shipped, and waiting until they are in effect (tests/fencing.rs; tests/safety.rs with
//! `DSYNC_SAFETY_KUBE_GUARD=1`).

use std::fmt::Debug;
use std::time::{Duration, Instant};

use dsync::fencing::LEASE_GUARD_POLICY;
use k8s_openapi::api::admissionregistration::v1::{
    ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
};
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, DeleteParams, ObjectMeta, PostParams};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// How long a policy, binding or RBAC change may take to reach admission.
pub const PROPAGATION: Duration = Duration::from_secs(30);

/// Creates `object`, or leaves the one that exists.
pub async fn create_or_keep<K>(api: &Api<K>, object: &K)
where
    K: kube::Resource + Clone + Serialize + DeserializeOwned + Debug,
{
    match api.create(&PostParams::default(), object).await {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if status.code == 409 => {}
        Err(e) => panic!("create {:?}: {e}", object.meta().name),
    }
}

/// The documents of a manifest of `deploy/fencing/`, as shipped.
pub fn manifest(file: &str) -> Vec<serde_yaml::Value> {
    use serde::Deserialize;
    let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("deploy/fencing")
        .join(file);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| serde_yaml::Value::deserialize(doc).unwrap())
        .collect()
}

/// Applies the policies and bindings of a manifest of `deploy/fencing/` (those that exist
/// are kept). Whether they work is for the caller to wait for: a policy takes effect once the
/// API server's informers have it, and one that does not compile refuses every request it
/// matches with an error that names no rule, which the tests' assertions would report.
pub async fn install(admin: &kube::Client, file: &str) {
    let policies: Api<ValidatingAdmissionPolicy> = Api::all(admin.clone());
    let bindings: Api<ValidatingAdmissionPolicyBinding> = Api::all(admin.clone());
    for doc in manifest(file) {
        match doc["kind"].as_str() {
            Some("ValidatingAdmissionPolicy") => {
                create_or_keep(&policies, &serde_yaml::from_value(doc).unwrap()).await;
            }
            Some("ValidatingAdmissionPolicyBinding") => {
                create_or_keep(&bindings, &serde_yaml::from_value(doc).unwrap()).await;
            }
            other => panic!("{file}: unexpected kind {other:?}"),
        }
    }
}

/// Polls `probe` every 20 ms until it gives `Some`, for at most `limit`.
pub async fn poll<T, F, Fut>(limit: Duration, what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(found) = probe().await {
            return found;
        }
        assert!(start.elapsed() < limit, "{what}: not so within {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The Lease guard, installed (once for the API server) and in effect in `ns`.
pub async fn lease_guard(admin: &kube::Client, ns: &str) {
    install(admin, "lease-guard.yaml").await;
    let leases: Api<Lease> = Api::namespaced(admin.clone(), ns);
    let probe = Lease {
        metadata: ObjectMeta {
            name: Some("probe.lock.guard".into()),
            ..Default::default()
        },
        spec: Some(Default::default()),
    };
    create_or_keep(&leases, &probe).await;
    let dry_run = DeleteParams {
        dry_run: true,
        ..Default::default()
    };
    poll(PROPAGATION, "the Lease guard refuses a delete", || {
        let leases = leases.clone();
        let dry_run = dry_run.clone();
        async move {
            match leases.delete("probe.lock.guard", &dry_run).await {
                Err(e) => refusal(&e)
                    .filter(|m| m.contains(LEASE_GUARD_POLICY))
                    .map(drop),
                Ok(_) => None,
            }
        }
    })
    .await;
}

/// The message of a 403, if `error` is one.
pub fn refusal(error: &kube::Error) -> Option<String> {
    match error {
        kube::Error::Api(status) if status.code == 403 => Some(status.message.clone()),
        _ => None,
    }
}

/// How many requests the Lease guard has refused since the API server started (dry runs
/// included), from its `apiserver_validating_admission_policy_check_total` metric.
pub async fn lease_guard_denials(admin: &kube::Client) -> u64 {
    let request = http::Request::get("/metrics").body(Vec::new()).unwrap();
    let metrics = admin
        .request_text(request)
        .await
        .unwrap_or_else(|e| panic!("GET /metrics: {e}"));
    metrics
        .lines()
        .filter(|line| {
            line.starts_with("apiserver_validating_admission_policy_check_total{")
                && line.contains(&format!("policy=\"{LEASE_GUARD_POLICY}\""))
                && line.contains("enforcement_action=\"deny\"")
        })
        .map(|line| {
            let value = line.rsplit(' ').next().unwrap_or_default();
            value
                .parse::<f64>()
                .unwrap_or_else(|e| panic!("{line:?}: {e}")) as u64
        })
        .sum()
}
