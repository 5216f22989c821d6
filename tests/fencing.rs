//! Server-side fencing (`deploy/fencing/`, `dsync::fencing`) on the real kube-apiserver of
//! tests/apiserver (Kubernetes 1.36, ValidatingAdmissionPolicy GA).
//!
//! The manifests are applied as shipped. Every test of this binary shares one API server, on
//! which the Lease guard is installed for every namespace but the system's; each test binds
//! the fences to objects of its own namespace. The writers that the holder fence tells apart
//! are "pods": Pod objects created by the test (never scheduled: no node runs here), whose
//! ServiceAccount tokens are requested bound to them, as the kubelet's projected tokens are.
//!
//! Policies, bindings and RBAC take effect a moment after they are created (the API server
//! learns of them from its own informers): each test waits for the effect it needs, probing
//! with dry-run requests, which run admission but write nothing.
//!
//! `fencing_measures_the_lag_and_the_admission_overhead` prints the figures of
//! BENCHMARKS.md (it never asserts on timing): `DSYNC_FENCING_ROUNDS=<n>` for more rounds.
#![cfg(feature = "testing")]

mod support;

use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dsync::fencing::{
    self, BREAK_GLASS_GROUP, FENCE_ANNOTATION, Fence, HOLDER_FENCE_POLICY, LEASE_GUARD_POLICY,
    POD_NAME_EXTRA, Protected, TOKEN_FENCE_POLICY,
};
use dsync::store::{
    BoxFuture, BoxStream, FutureExt, LeaseKey, LeaseRecord, LeaseStore, StoreError, StoreResult,
    StoredLease, WatchEvent,
};
use dsync::testing::within;
use dsync::{Config, Dsync, KubeStore, Term};
use k8s_openapi::api::admissionregistration::v1::ValidatingAdmissionPolicyBinding;
use k8s_openapi::api::authentication::v1::{
    BoundObjectReference, SelfSubjectReview, TokenRequest, TokenRequestSpec,
};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, PodSpec, ServiceAccount};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use kube::api::{Api, DeleteParams, ObjectMeta, Patch, PatchParams, PostParams};
use support::apiserver::{Harness, client, namespace, namespace_on};
use support::backend::{KUBE_CALL_TIMEOUT, kube_timing};
use support::fencing::{
    PROPAGATION, create_or_keep, install, lease_guard, manifest, poll, refusal,
};

const LIMIT: Duration = Duration::from_secs(60);
/// The ServiceAccount of the test's pods.
const SERVICE_ACCOUNT: &str = "worker";
/// The ConfigMap the fences protect.
const PROTECTED: &str = "demo-config";

// ---------------------------------------------------------------------------------------------
// Setup: manifests, pods with pod-bound tokens, RBAC.

async fn admin() -> kube::Client {
    logs();
    client(&Harness::get().ready().admin).await
}

/// RUST_LOG=dsync=debug shows what the replicas do.
fn logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// The admin as a member of the break-glass group (impersonated; the admin may).
async fn break_glass() -> kube::Client {
    let mut config = kube_config().await;
    config.auth_info.impersonate = Some("operator".into());
    config.auth_info.impersonate_groups =
        Some(vec!["system:masters".into(), BREAK_GLASS_GROUP.into()]);
    kube::Client::try_from(config).unwrap()
}

async fn kube_config() -> kube::Config {
    let path = Harness::get().ready().admin;
    let kubeconfig = kube::config::Kubeconfig::read_from(&path).unwrap();
    kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap()
}

/// Asserts that `result` is a 403 whose message names `policy` and `rule`.
fn assert_refused<T: Debug>(result: Result<T, kube::Error>, policy: &str, rule: &str) {
    match result {
        Err(e) => {
            let message =
                refusal(&e).unwrap_or_else(|| panic!("expected a 403 by {policy}, got {e}"));
            assert!(
                message.contains(policy) && message.contains(rule),
                "a 403, but not by {policy} ({rule}): {message}"
            );
        }
        Ok(answer) => panic!("expected a 403 by {policy} ({rule}), got {answer:?}"),
    }
}

/// A test namespace with pods whose ServiceAccount may run dsync and write ConfigMaps.
struct Pods {
    ns: String,
    admin: kube::Client,
}

impl Pods {
    /// The namespace `ns`, its ServiceAccount and the Role and RoleBinding it needs.
    async fn new(ns: &str) -> Pods {
        let admin = admin().await;
        let sa = ServiceAccount {
            metadata: ObjectMeta {
                name: Some(SERVICE_ACCOUNT.into()),
                ..Default::default()
            },
            ..Default::default()
        };
        create_or_keep(&Api::namespaced(admin.clone(), ns), &sa).await;
        let rule = |group: &str, resource: &str, verbs: &[&str]| PolicyRule {
            api_groups: Some(vec![group.into()]),
            resources: Some(vec![resource.into()]),
            verbs: verbs.iter().map(|v| v.to_string()).collect(),
            ..Default::default()
        };
        let role = Role {
            metadata: ObjectMeta {
                name: Some("worker".into()),
                ..Default::default()
            },
            rules: Some(vec![
                rule(
                    "",
                    "configmaps",
                    &["get", "list", "create", "update", "patch", "delete"],
                ),
                rule(
                    "coordination.k8s.io",
                    "leases",
                    &["get", "list", "watch", "create", "update"],
                ),
            ]),
        };
        create_or_keep(&Api::namespaced(admin.clone(), ns), &role).await;
        let binding = RoleBinding {
            metadata: ObjectMeta {
                name: Some("worker".into()),
                ..Default::default()
            },
            role_ref: RoleRef {
                api_group: Some("rbac.authorization.k8s.io".into()),
                kind: "Role".into(),
                name: "worker".into(),
            },
            subjects: Some(vec![Subject {
                kind: "ServiceAccount".into(),
                name: SERVICE_ACCOUNT.into(),
                namespace: Some(ns.into()),
                ..Default::default()
            }]),
        };
        create_or_keep(&Api::namespaced(admin.clone(), ns), &binding).await;
        Pods {
            ns: ns.into(),
            admin,
        }
    }

    /// A Pod named `name` (never scheduled) and a client authenticated by a token of the
    /// ServiceAccount bound to it, once RBAC lets that client read ConfigMaps.
    async fn pod(&self, name: &str) -> kube::Client {
        let pod = Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            spec: Some(PodSpec {
                service_account_name: Some(SERVICE_ACCOUNT.into()),
                containers: vec![Container {
                    name: "app".into(),
                    image: Some("registry.k8s.io/pause:3.10".into()),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        };
        let pod = Api::<Pod>::namespaced(self.admin.clone(), &self.ns)
            .create(&PostParams::default(), &pod)
            .await
            .unwrap_or_else(|e| panic!("create pod {name}: {e}"));
        let request = TokenRequest {
            spec: Some(TokenRequestSpec {
                audiences: None, // the API server's own
                bound_object_ref: Some(BoundObjectReference {
                    api_version: Some("v1".into()),
                    kind: Some("Pod".into()),
                    name: Some(name.into()),
                    uid: pod.metadata.uid.clone(),
                }),
                expiration_seconds: Some(3600),
                ..Default::default()
            }),
            ..Default::default()
        };
        let token = Api::<ServiceAccount>::namespaced(self.admin.clone(), &self.ns)
            .create_token_request(SERVICE_ACCOUNT, &PostParams::default(), &request)
            .await
            .unwrap_or_else(|e| panic!("token request for pod {name}: {e}"))
            .status
            .and_then(|status| status.token)
            .expect("a token");
        let mut config = kube_config().await;
        config.auth_info = Default::default();
        config.auth_info.token = Some(token.into());
        let client = kube::Client::try_from(config).unwrap();
        let maps: Api<ConfigMap> = Api::namespaced(client.clone(), &self.ns);
        poll(PROPAGATION, "RBAC lets the pod read ConfigMaps", || {
            let maps = maps.clone();
            async move { maps.list(&Default::default()).await.ok().map(drop) }
        })
        .await;
        client
    }

    /// A ConfigMap `name` with one key, created by the admin.
    async fn config_map(&self, name: &str) {
        let map = ConfigMap {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            data: Some([("report".to_owned(), "none".to_owned())].into()),
            ..Default::default()
        };
        Api::<ConfigMap>::namespaced(self.admin.clone(), &self.ns)
            .create(&PostParams::default(), &map)
            .await
            .unwrap();
    }

    /// Binds `fence` (installed first) with `lease` as its parameter to ConfigMap `map`, and
    /// waits until it refuses the admin's dry-run write: with the Lease's current fence for
    /// the holder fence (so that a token fence bound before lets it through), without one
    /// for the token fence (bind it first: a holder fence would refuse that write first).
    async fn bind(&self, fence: Fence, lease: &LeaseKey, map: &str) {
        install(
            &self.admin,
            match fence {
                Fence::Holder => "holder-fence.yaml",
                _ => "token-fence.yaml",
            },
        )
        .await;
        let name = format!("{}.{}.{map}", fence.policy(), self.ns);
        let binding = fencing::binding(
            &name,
            fence,
            lease,
            &Protected::config_maps(&*self.ns).named(map),
        );
        Api::<ValidatingAdmissionPolicyBinding>::all(self.admin.clone())
            .create(&PostParams::default(), &binding)
            .await
            .unwrap_or_else(|e| panic!("create binding {name}: {e}"));
        let maps: Api<ConfigMap> = Api::namespaced(self.admin.clone(), &self.ns);
        let current = admin_store().await.get(lease).await.unwrap();
        let probe_fence = match fence {
            Fence::Holder => Some(format!(
                "{}/{}",
                current.uid.unwrap(),
                current.record.lease_transitions.unwrap_or(0)
            )),
            _ => None,
        };
        poll(PROPAGATION, &format!("{name} in effect"), || {
            let maps = maps.clone();
            let patch = serde_json::json!({
                "metadata": {"annotations": {FENCE_ANNOTATION: probe_fence}},
                "data": {"report": "probe"},
            });
            async move {
                let dry_run = PatchParams {
                    dry_run: true,
                    ..Default::default()
                };
                let write = maps.patch(map, &dry_run, &Patch::Merge(&patch)).await;
                write
                    .err()
                    .and_then(|e| refusal(&e))
                    .filter(|m| m.contains(fence.policy()))
                    .map(drop)
            }
        })
        .await;
    }

    /// A replica in a pod: identity `identity`, pod `pod`, its own pod-bound client.
    async fn replica(&self, pod: &kube::Client, identity: &str, pod_name: &str) -> Dsync {
        let store = KubeStore::new(pod.clone()).with_call_timeout(KUBE_CALL_TIMEOUT);
        replica(store, &self.ns, identity, Some(pod_name))
    }
}

fn replica(store: impl LeaseStore, ns: &str, identity: &str, pod: Option<&str>) -> Dsync {
    let mut config = Config::default()
        .with_namespace(ns)
        .with_identity(identity)
        .with_timing(kube_timing());
    if let Some(pod) = pod {
        config = config.with_pod_name(pod);
    }
    Dsync::with_config(store, config).unwrap()
}

/// Writes `value` into ConfigMap `map` as a merge patch, with `fence` as its
/// `dsync.io/fence` annotation if given; `dry_run`: admission runs, nothing is stored.
async fn write(
    maps: &Api<ConfigMap>,
    map: &str,
    value: &str,
    fence: Option<&Term>,
    dry_run: bool,
) -> Result<ConfigMap, kube::Error> {
    let patch = report(value, fence);
    let params = PatchParams {
        dry_run,
        ..Default::default()
    };
    maps.patch(map, &params, &Patch::Merge(&patch)).await
}

async fn admin_store() -> KubeStore {
    logs();
    support::backend::kube_store(&Harness::get().ready().admin).await
}

// ---------------------------------------------------------------------------------------------
// What the fences rely on.

/// The holder fence reads the pod's name from `userInfo.extra`: check that Kubernetes 1.36
/// puts it there for a token bound to a pod (ServiceAccountTokenPodNodeInfo).
#[actix::test]
async fn fencing_pod_bound_tokens_name_their_pod_in_user_info_extra() {
    let ns = namespace().await;
    let pods = Pods::new(&ns).await;
    let pod = pods.pod("pod-a").await;
    let review = Api::<SelfSubjectReview>::all(pod)
        .create(&PostParams::default(), &SelfSubjectReview::default())
        .await
        .unwrap();
    let user = review.status.unwrap().user_info.unwrap();
    assert_eq!(
        user.username.as_deref(),
        Some(&*format!("system:serviceaccount:{ns}:{SERVICE_ACCOUNT}"))
    );
    let extra = user.extra.unwrap_or_default();
    assert_eq!(
        extra.get(POD_NAME_EXTRA),
        Some(&vec!["pod-a".to_owned()]),
        "{extra:?}"
    );
}

/// Acquisitions write the pod name (`dsync.io/holder-pod`) where the identity is not the pod
/// name; renewals keep it; a release removes it.
#[actix::test]
async fn fencing_acquisitions_write_the_holder_pod_and_releases_remove_it() {
    let ns = namespace().await;
    let a = replica(admin_store().await, &ns, "pod-a.lock-7f3a", Some("pod-a"));
    let lock = a.lock("report").unwrap();
    let term = within(LIMIT, "a locks", lock.lock()).await.unwrap();
    let store = admin_store().await;
    let held = store.get(&lock.lease()).await.unwrap();
    assert_eq!(held.record.holder(), Some("pod-a.lock-7f3a"));
    assert_eq!(held.record.holder_pod.as_deref(), Some("pod-a"));
    assert_eq!(
        term.fence(),
        Some(format!("{}/{}", held.uid.unwrap(), term.fencing_token()))
    );
    // Renewals keep it.
    let renewed = poll(LIMIT, "a renews", || {
        let store = store.clone();
        let key = lock.lease();
        let before = held.resource_version.clone();
        async move {
            let now = store.get(&key).await.unwrap();
            (now.resource_version != before).then_some(now)
        }
    })
    .await;
    assert_eq!(renewed.record.holder_pod.as_deref(), Some("pod-a"));
    lock.unlock().await.unwrap();
    let released = store.get(&lock.lease()).await.unwrap();
    assert_eq!(released.record.holder(), None);
    assert_eq!(released.record.holder_pod, None, "removed by the release");
    a.shutdown().await.unwrap();
}

/// The `dsync` command suffixes its identities, which are then not pod names: it writes the
/// pod name, from `KUBE_POD_NAME`, as the holder pod.
#[cfg(feature = "cli")]
#[actix::test]
async fn fencing_the_command_line_tool_names_its_pod_not_its_identity() {
    let cli = support::cli::Cli::admin().await;
    let mut lock = cli.command(&["lock", "report", "--", "sleep", "60"]);
    let _running = lock.env("KUBE_POD_NAME", "web-7d9f").spawn().unwrap();
    let store = cli.store().await;
    let key = LeaseKey::new(&cli.ns, "unscoped.lock.report");
    let held = poll(LIMIT, "the command holds the lock", || {
        let store = store.clone();
        let key = key.clone();
        async move {
            let lease = store.get(&key).await.ok()?;
            lease.record.holder().is_some().then_some(lease)
        }
    })
    .await;
    let holder = held.record.holder().unwrap();
    assert!(holder.starts_with("web-7d9f-"), "{holder}");
    assert_eq!(held.record.holder_pod.as_deref(), Some("web-7d9f"));
}

// ---------------------------------------------------------------------------------------------
// The Lease guard.

#[actix::test]
async fn fencing_lease_guard_refuses_delete_except_to_break_glass() {
    let ns = namespace().await;
    let admin = admin().await;
    lease_guard(&admin, &ns).await;
    let store = admin_store().await;
    for name in ["s.election.x", "s.lock.x", "a.b.semaphore.pool.3"] {
        let key = LeaseKey::new(&ns, name);
        store.create(&key, held_by("a", 3)).await.unwrap();
        let leases: Api<Lease> = Api::namespaced(admin.clone(), &ns);
        assert_refused(
            leases.delete(name, &DeleteParams::default()).await,
            LEASE_GUARD_POLICY,
            "rule no-delete",
        );
        Api::<Lease>::namespaced(break_glass().await, &ns)
            .delete(name, &DeleteParams::default())
            .await
            .unwrap_or_else(|e| panic!("break-glass delete of {name}: {e}"));
    }
    // Not one of dsync's names: not guarded.
    let other = LeaseKey::new(&ns, "kube-scheduler");
    store.create(&other, held_by("a", 3)).await.unwrap();
    Api::<Lease>::namespaced(admin, &ns)
        .delete("kube-scheduler", &DeleteParams::default())
        .await
        .unwrap();
}

#[actix::test]
async fn fencing_lease_guard_refuses_a_decrease_of_transitions() {
    let (store, key, v1) = guarded_lease("s.lock.x").await;
    let lower = store
        .replace(&key, held_by("a", 2), &v1.resource_version)
        .await;
    assert_forbidden(lower, "rule transitions-never-decrease");
    // A release that drops the field is a decrease too.
    let dropped = LeaseRecord {
        lease_transitions: None,
        ..held_by("", 3)
    };
    let dropped = store.replace(&key, dropped, &v1.resource_version).await;
    assert_forbidden(dropped, "rule transitions-never-decrease");
    // The break-glass group may (an operator repairing a Lease).
    let glass = KubeStore::new(break_glass().await);
    let v1 = glass.get(&key).await.unwrap();
    glass
        .replace(&key, held_by("a", 2), &v1.resource_version)
        .await
        .unwrap();
}

#[actix::test]
async fn fencing_lease_guard_refuses_a_holder_change_without_a_raise() {
    let (store, key, v1) = guarded_lease("s.semaphore.pool.0").await;
    assert_forbidden(
        store
            .replace(&key, held_by("b", 3), &v1.resource_version)
            .await,
        "rule holder-change-raises",
    );
    // A renewal keeps holder and token; a release clears the holder and keeps the token.
    let mut renewal = held_by("a", 3);
    renewal.lease_duration_seconds = Some(5);
    let v2 = store
        .replace(&key, renewal, &v1.resource_version)
        .await
        .unwrap();
    let v3 = store
        .replace(&key, held_by("", 3), &v2.resource_version)
        .await
        .unwrap();
    // Taking a free lease is a change of holder too.
    assert_forbidden(
        store
            .replace(&key, held_by("a", 3), &v3.resource_version)
            .await,
        "rule holder-change-raises",
    );
    store
        .replace(&key, held_by("b", 4), &v3.resource_version)
        .await
        .unwrap();
}

/// A Lease `name` held by `a` with token 3, in a fresh namespace where the Lease guard is in
/// effect; the admin's store.
async fn guarded_lease(name: &str) -> (KubeStore, LeaseKey, StoredLease) {
    let ns = namespace().await;
    lease_guard(&admin().await, &ns).await;
    let store = admin_store().await;
    let key = LeaseKey::new(&ns, name);
    let created = store.create(&key, held_by("a", 3)).await.unwrap();
    (store, key, created)
}

/// Coordinated Leases (`spec.strategy` set) get their holder from the API server's election
/// controller, which does not raise the token: exempt from `holder-change-raises`, not from
/// the other rules. On an API server of its own with the feature gate on (without it the
/// server drops `spec.strategy`).
#[actix::test]
async fn fencing_lease_guard_exempts_coordinated_leases_from_the_holder_change_rule() {
    let ready = Harness::coordinated().ready();
    let ns = namespace_on(&ready).await;
    lease_guard(&client(&ready.admin).await, &ns).await;
    let store = KubeStore::new(client(&ready.admin).await).with_call_timeout(KUBE_CALL_TIMEOUT);
    let coordinated = |holder: &str, transitions| LeaseRecord {
        strategy: Some("OldestEmulationVersion".into()),
        ..held_by(holder, transitions)
    };
    let key = LeaseKey::new(&ns, "s.election.x");
    let v1 = store.create(&key, coordinated("a", 3)).await.unwrap();
    assert!(v1.record.coordinated(), "the gate is on: {:?}", v1.record);
    let v2 = store
        .replace(&key, coordinated("b", 3), &v1.resource_version)
        .await
        .expect("the election controller's kind of write");
    assert_forbidden(
        store
            .replace(&key, coordinated("b", 2), &v2.resource_version)
            .await,
        "rule transitions-never-decrease",
    );
}

/// `deploy/fencing/example-binding.yaml` is what `dsync::fencing::binding` builds.
#[test]
fn fencing_example_binding_is_what_the_crate_builds() {
    let lease = LeaseKey::new("demo", "unscoped.lock.report");
    let protected = Protected::config_maps("demo").named(PROTECTED);
    let docs = manifest("example-binding.yaml");
    assert_eq!(docs.len(), 2);
    for (doc, fence) in docs.into_iter().zip([Fence::Holder, Fence::Token]) {
        let shipped: ValidatingAdmissionPolicyBinding = serde_yaml::from_value(doc).unwrap();
        let name = shipped.metadata.name.clone().unwrap();
        let built = fencing::binding(&name, fence, &lease, &protected);
        assert_eq!(
            serde_json::to_value(&shipped).unwrap(),
            serde_json::to_value(&built).unwrap(),
            "{name}"
        );
    }
}

fn held_by(holder: &str, transitions: i32) -> LeaseRecord {
    LeaseRecord {
        holder_identity: Some(holder.into()),
        lease_duration_seconds: Some(2),
        lease_transitions: Some(transitions),
        ..Default::default()
    }
}

fn assert_forbidden<T: Debug>(result: StoreResult<T>, rule: &str) {
    match result {
        Err(StoreError::Forbidden { message, .. }) => assert!(
            message.contains(LEASE_GUARD_POLICY) && message.contains(rule),
            "a 403, but not by {LEASE_GUARD_POLICY} ({rule}): {message}"
        ),
        other => panic!("expected a 403 by {LEASE_GUARD_POLICY} ({rule}), got {other:?}"),
    }
}

/// A store that remembers every refusal (403) it was answered.
#[derive(Clone)]
struct Refusals {
    inner: KubeStore,
    seen: Arc<Mutex<Vec<String>>>,
}

impl Refusals {
    fn note<T: Send + 'static>(
        &self,
        call: BoxFuture<'static, StoreResult<T>>,
    ) -> BoxFuture<'static, StoreResult<T>> {
        let seen = self.seen.clone();
        async move {
            let answer = call.await;
            if let Err(e @ StoreError::Forbidden { .. }) = &answer {
                seen.lock().unwrap().push(e.to_string());
            }
            answer
        }
        .boxed()
    }
}

impl LeaseStore for Refusals {
    fn get(&self, key: &LeaseKey) -> BoxFuture<'static, StoreResult<StoredLease>> {
        self.note(self.inner.get(key))
    }
    fn create(
        &self,
        key: &LeaseKey,
        record: LeaseRecord,
    ) -> BoxFuture<'static, StoreResult<StoredLease>> {
        self.note(self.inner.create(key, record))
    }
    fn replace(
        &self,
        key: &LeaseKey,
        record: LeaseRecord,
        resource_version: &str,
    ) -> BoxFuture<'static, StoreResult<StoredLease>> {
        self.note(self.inner.replace(key, record, resource_version))
    }
    fn list(&self, namespace: &str) -> BoxFuture<'static, StoreResult<Vec<StoredLease>>> {
        self.note(self.inner.list(namespace))
    }
    fn watch(&self, namespace: &str) -> BoxStream<'static, StoreResult<WatchEvent>> {
        self.inner.watch(namespace)
    }

    fn forget(&self, key: &LeaseKey) {
        self.inner.forget(key);
    }
}

/// Waits until `election`'s replica sees `leader` lead.
async fn sees_leader(election: &dsync::Election, leader: &str) {
    let mut status = election.watch_status();
    let seen = status.wait_for(|s| s.holder.as_deref() == Some(leader));
    within(LIMIT, &format!("{leader} seen leading"), seen)
        .await
        .map(drop)
        .unwrap();
}

/// Everything dsync writes passes the Lease guard: elections with handoffs (asked by the
/// leader and by an operator), stops and re-elections, locks (lock, unlock, `with_lock`,
/// `try_lock`), a force release, semaphore permits, and the releases of a shutdown.
#[actix::test]
async fn fencing_lease_guard_admits_every_write_dsync_makes() {
    let ns = namespace().await;
    lease_guard(&admin().await, &ns).await;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let store = |inner| Refusals {
        inner,
        seen: seen.clone(),
    };
    let a = replica(store(admin_store().await), &ns, "pod-a", Some("pod-a"));
    let b = replica(store(admin_store().await), &ns, "pod-b.x1", Some("pod-b"));
    let op = replica(store(admin_store().await), &ns, "operator", None);

    // Elections: a leads; hands off to b; b stops, a leads again; an operator asks for a
    // handoff back to b; an operator force-releases b's term, and a takes over.
    let ea = a.election("e").unwrap();
    let first = within(LIMIT, "a leads", ea.elected()).await.unwrap();
    let eb = b.election("e").unwrap();
    sees_leader(&eb, "pod-a").await;
    within(LIMIT, "a hands off", ea.handoff_to("pod-b.x1"))
        .await
        .unwrap();
    let second = within(LIMIT, "b leads", eb.elected()).await.unwrap();
    assert!(second.fencing_token() > first.fencing_token());
    within(LIMIT, "b stops", eb.stop()).await.unwrap();
    let third = within(LIMIT, "a leads again", ea.elected()).await.unwrap();
    let eb = b.election("e").unwrap();
    sees_leader(&eb, "pod-a").await;
    within(
        LIMIT,
        "an operator asks",
        op.request_handoff("e", "pod-b.x1"),
    )
    .await
    .unwrap();
    let fourth = within(LIMIT, "b leads", eb.elected()).await.unwrap();
    assert!(fourth.fencing_token() > third.fencing_token());
    within(LIMIT, "force release", op.force_release(&eb.lease()))
        .await
        .unwrap();
    within(LIMIT, "b's term ends", fourth.cancelled()).await;
    let fifth = poll(LIMIT, "someone leads again", || {
        let (ea, eb) = (ea.clone(), eb.clone());
        async move { ea.term().or_else(|| eb.term()) }
    })
    .await;
    assert!(fifth.fencing_token() > fourth.fencing_token());

    // Locks.
    let (la, lb) = (a.lock("job").unwrap(), b.lock("job").unwrap());
    within(LIMIT, "a locks", la.lock()).await.unwrap();
    assert!(lb.try_lock().await.is_err(), "held by a");
    within(LIMIT, "a unlocks", la.unlock()).await.unwrap();
    within(LIMIT, "b locks", lb.with_lock(|_| async {}))
        .await
        .unwrap();

    // Semaphore permits.
    let (sa, sb) = (
        a.semaphore("pool", 2).unwrap(),
        b.semaphore("pool", 2).unwrap(),
    );
    let pa = within(LIMIT, "a acquires", sa.acquire()).await.unwrap();
    let pb = within(LIMIT, "b acquires", sb.acquire()).await.unwrap();
    pa.release().await.unwrap();
    drop(pb);

    for replica in [a, b, op] {
        within(LIMIT, "shutdown", replica.shutdown()).await.unwrap();
    }
    let seen = seen.lock().unwrap();
    assert!(seen.is_empty(), "dsync's writes were refused: {seen:#?}");
}

// ---------------------------------------------------------------------------------------------
// The holder fence and the token fence.

/// Writes `patch` (a dry run) until refused by `policy` for `rule`, for at most
/// [`PROPAGATION`]: a deposed holder's late write, which the fence refuses once the API
/// server's cache has the Lease's change. Returns how long that took, and whether the first
/// attempt still got through.
async fn until_refused(
    maps: &Api<ConfigMap>,
    patch: &serde_json::Value,
    policy: &str,
    rule: &str,
) -> (Duration, bool) {
    let start = Instant::now();
    let dry_run = PatchParams {
        dry_run: true,
        ..Default::default()
    };
    for attempt in 0.. {
        let write = maps.patch(PROTECTED, &dry_run, &Patch::Merge(patch)).await;
        if write.is_err() {
            assert_refused(write, policy, rule);
            return (start.elapsed(), attempt > 0);
        }
        assert!(
            start.elapsed() < PROPAGATION,
            "the deposed holder's writes were still admitted after {PROPAGATION:?}"
        );
    }
    unreachable!()
}

/// Deposes the holder of `term`: `lock` (b's handle) waits for the lock, an operator
/// force-releases it, the term ends, b gets the lock; returns b's term.
async fn depose(operator: &Dsync, term: &Term, lock: &dsync::Lock) -> Term {
    let next = lock.clone();
    let waiting = actix::spawn(async move { next.lock().await });
    within(LIMIT, "force release", operator.force_release(term.lease()))
        .await
        .unwrap();
    within(LIMIT, "the holder's term ends", term.cancelled()).await;
    within(LIMIT, "the next holder locks", waiting)
        .await
        .unwrap()
        .unwrap()
}

/// `value` for the protected ConfigMap's `report`, with `term`'s fence if given.
fn report(value: &str, term: Option<&Term>) -> serde_json::Value {
    let mut patch = match term {
        Some(term) => fencing::merge_patch(term).unwrap(),
        None => serde_json::json!({}),
    };
    patch["data"] = serde_json::json!({ "report": value });
    patch
}

#[actix::test]
async fn fencing_holder_fence_admits_only_the_pod_holding_the_lease() {
    let ns = namespace().await;
    let pods = Pods::new(&ns).await;
    let (pod_a, pod_b) = (pods.pod("pod-a").await, pods.pod("pod-b").await);
    // Identities that are not the pod names (as the `dsync` command's are): the fence goes by
    // the holder-pod annotation.
    let a = pods.replica(&pod_a, "pod-a.lock-1", "pod-a").await;
    let b = pods.replica(&pod_b, "pod-b.lock-1", "pod-b").await;
    let op = replica(admin_store().await, &ns, "operator", None);
    let (la, lb) = (a.lock("report").unwrap(), b.lock("report").unwrap());
    let term_a = within(LIMIT, "a locks", la.lock()).await.unwrap();
    pods.config_map(PROTECTED).await;
    pods.bind(Fence::Holder, &la.lease(), PROTECTED).await;
    let (maps_a, maps_b) = (
        Api::<ConfigMap>::namespaced(pod_a, &ns),
        Api::<ConfigMap>::namespaced(pod_b, &ns),
    );

    write(&maps_a, PROTECTED, "by a", None, false)
        .await
        .expect("the holder's pod writes");
    let rule = "rule holder-pod-only";
    assert_refused(
        write(&maps_b, PROTECTED, "by b", None, false).await,
        HOLDER_FENCE_POLICY,
        rule,
    );
    let admin: Api<ConfigMap> = Api::namespaced(pods.admin.clone(), &ns);
    assert_refused(
        write(&admin, PROTECTED, "by admin", None, false).await,
        HOLDER_FENCE_POLICY,
        rule,
    );
    Api::<ConfigMap>::namespaced(break_glass().await, &ns)
        .patch(
            PROTECTED,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"data": {"note": "break glass"}})),
        )
        .await
        .expect("the break-glass group writes");

    // a is deposed: an operator force-releases its lock, b takes it.
    let _term_b = depose(&op, &term_a, &lb).await;
    let (lag, admitted) =
        until_refused(&maps_a, &report("late", None), HOLDER_FENCE_POLICY, rule).await;
    println!(
        "holder fence: refused {lag:?} after b's grant (a write admitted before that: {admitted})"
    );
    assert_refused(
        write(&maps_a, PROTECTED, "late", None, false).await,
        HOLDER_FENCE_POLICY,
        rule,
    );
    write(&maps_b, PROTECTED, "by b", None, false)
        .await
        .expect("the new holder's pod writes");
    let stored = admin.get(PROTECTED).await.unwrap();
    assert_eq!(stored.data.unwrap()["report"], "by b");

    // Released: nobody may write.
    within(LIMIT, "b unlocks", lb.unlock()).await.unwrap();
    poll(PROPAGATION, "a free lease admits nobody", || {
        let maps_b = maps_b.clone();
        async move {
            let write = write(&maps_b, PROTECTED, "after", None, true).await;
            write.err().and_then(|e| refusal(&e)).map(drop)
        }
    })
    .await;
    for replica in [a, b, op] {
        replica.shutdown().await.unwrap();
    }
}

/// Without `dsync.io/holder-pod` (a replica that does not know its pod, a client-go peer),
/// the holder fence compares the pod with `spec.holderIdentity`.
#[actix::test]
async fn fencing_holder_fence_goes_by_the_holder_identity_without_the_annotation() {
    let ns = namespace().await;
    let pods = Pods::new(&ns).await;
    let maps = Api::<ConfigMap>::namespaced(pods.pod("pod-a").await, &ns);
    let store = admin_store().await;
    let key = LeaseKey::new(&ns, "unscoped.lock.report");
    let held = store.create(&key, held_by("pod-a", 1)).await.unwrap();
    assert_eq!(held.record.holder_pod, None);
    pods.config_map(PROTECTED).await;
    pods.bind(Fence::Holder, &key, PROTECTED).await;
    write(&maps, PROTECTED, "by a", None, false)
        .await
        .expect("the pod named by holderIdentity writes");
    store
        .replace(&key, held_by("pod-b", 2), &held.resource_version)
        .await
        .unwrap();
    until_refused(
        &maps,
        &report("late", None),
        HOLDER_FENCE_POLICY,
        "rule holder-pod-only",
    )
    .await;
}

#[actix::test]
async fn fencing_token_fence_admits_only_the_current_terms_fence() {
    let ns = namespace().await;
    let pods = Pods::new(&ns).await;
    let a = replica(admin_store().await, &ns, "pod-a", None);
    let b = replica(admin_store().await, &ns, "pod-b", None);
    let op = replica(admin_store().await, &ns, "operator", None);
    let (la, lb) = (a.lock("report").unwrap(), b.lock("report").unwrap());
    let term_a = within(LIMIT, "a locks", la.lock()).await.unwrap();
    pods.config_map(PROTECTED).await;
    pods.bind(Fence::Token, &la.lease(), PROTECTED).await;
    let maps: Api<ConfigMap> = Api::namespaced(pods.admin.clone(), &ns);
    let rule = "rule current-term-only";

    let written = write(&maps, PROTECTED, "by a", Some(&term_a), false)
        .await
        .expect("a write with the current fence");
    assert_eq!(
        written.metadata.annotations.unwrap()[FENCE_ANNOTATION],
        term_a.fence().unwrap()
    );
    // A replace that drops the fence is refused.
    let mut bare = maps.get(PROTECTED).await.unwrap();
    bare.metadata.annotations = None;
    assert_refused(
        maps.replace(PROTECTED, &PostParams::default(), &bare).await,
        TOKEN_FENCE_POLICY,
        rule,
    );

    // a is deposed: b's token is higher, a's fence is refused.
    let term_b = depose(&op, &term_a, &lb).await;
    let (lag, admitted) = until_refused(
        &maps,
        &report("late", Some(&term_a)),
        TOKEN_FENCE_POLICY,
        rule,
    )
    .await;
    println!(
        "token fence: refused {lag:?} after b's grant (a write admitted before that: {admitted})"
    );
    assert_refused(
        write(&maps, PROTECTED, "late", Some(&term_a), false).await,
        TOKEN_FENCE_POLICY,
        rule,
    );
    write(&maps, PROTECTED, "by b", Some(&term_b), false)
        .await
        .expect("b's fence");
    within(LIMIT, "b unlocks", lb.unlock()).await.unwrap();
    for replica in [a, b, op] {
        replica.shutdown().await.unwrap();
    }

    // The Lease deleted (break glass) and created again with b's token: another object, so
    // b's fence, same token, is refused; the new object's fence is admitted.
    let store = admin_store().await;
    let key = LeaseKey::new(&ns, "unscoped.lock.report");
    Api::<Lease>::namespaced(break_glass().await, &ns)
        .delete(&key.name, &DeleteParams::default())
        .await
        .unwrap();
    let again = store
        .create(&key, held_by("pod-b", term_b.fencing_token()))
        .await
        .unwrap();
    let stale = term_b.fence().unwrap();
    let current = format!("{}/{}", again.uid.unwrap(), term_b.fencing_token());
    assert_ne!(stale, current);
    let with_fence =
        |fence: String| serde_json::json!({"metadata": {"annotations": {FENCE_ANNOTATION: fence}}});
    poll(PROPAGATION, "the old object's fence is refused", || {
        let maps = maps.clone();
        let patch = with_fence(stale.clone());
        async move {
            let params = PatchParams {
                dry_run: true,
                ..Default::default()
            };
            let write = maps.patch(PROTECTED, &params, &Patch::Merge(&patch)).await;
            write.err().and_then(|e| refusal(&e)).map(drop)
        }
    })
    .await;
    maps.patch(
        PROTECTED,
        &PatchParams::default(),
        &Patch::Merge(with_fence(current)),
    )
    .await
    .expect("the new object's fence");
}

// ---------------------------------------------------------------------------------------------
// Figures for BENCHMARKS.md (printed, never asserted).

/// Concurrent writers of the lag measurement's loaded phase.
const LOAD_WRITERS: usize = 16;

/// Renews a Lease of its own (created first) as fast as the API server answers, until
/// `stop`; returns how many renewals it made.
async fn renew_until(stop: Arc<std::sync::atomic::AtomicBool>, key: LeaseKey) -> usize {
    let store = admin_store().await.with_call_timeout(LIMIT);
    let mut lease = store.create(&key, held_by("load", 0)).await.unwrap();
    let mut renewals = 0;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let mut record = lease.record.clone();
        record.lease_duration_seconds = Some(1 + (renewals % 2) as i32);
        lease = store
            .replace(&key, record, &lease.resource_version)
            .await
            .unwrap();
        renewals += 1;
    }
    renewals
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn summary(mut xs: Vec<Duration>) -> String {
    xs.sort();
    format!(
        "p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms (n = {})",
        percentile(&xs, 0.5).as_secs_f64() * 1e3,
        percentile(&xs, 0.99).as_secs_f64() * 1e3,
        xs.last().unwrap().as_secs_f64() * 1e3,
        xs.len()
    )
}

/// The lag of the fences behind the Lease, and what admission costs a write.
///
/// Lag: each round hands the Lease to the other pod (one compare-and-swap write, as an
/// acquisition is, with the next token and `dsync.io/holder-pod`), then at once the deposed
/// pod writes the ConfigMap with its old fence (a dry run: admission runs, nothing is
/// stored), and again until refused. Overhead: the current holder's ConfigMap patch, fenced
/// by both fences, against the same patch of an unfenced ConfigMap.
#[actix::test]
async fn fencing_measures_the_lag_and_the_admission_overhead() {
    let rounds: usize = std::env::var("DSYNC_FENCING_ROUNDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(40);
    let ns = namespace().await;
    let pods = Pods::new(&ns).await;
    let clients = [pods.pod("pod-a").await, pods.pod("pod-b").await];
    let names = ["pod-a", "pod-b"];
    let store = admin_store().await.with_call_timeout(LIMIT);
    let key = LeaseKey::new(&ns, "unscoped.lock.report");
    let mut lease = store
        .create(
            &key,
            LeaseRecord {
                holder_pod: Some("pod-a".into()),
                ..held_by("pod-a", 0)
            },
        )
        .await
        .unwrap();
    pods.config_map(PROTECTED).await;
    pods.config_map("unfenced").await;
    // The token fence first: `bind` waits for each fence's own refusal of the admin's write,
    // and with the holder fence in place, that one refuses it first.
    pods.bind(Fence::Token, &key, PROTECTED).await;
    pods.bind(Fence::Holder, &key, PROTECTED).await;
    let fence_of = |lease: &StoredLease| {
        format!(
            "{}/{}",
            lease.uid.as_deref().unwrap(),
            lease.record.lease_transitions.unwrap()
        )
    };
    let patch = |fence: &str, value: &str| {
        serde_json::json!({
            "metadata": {"annotations": {FENCE_ANNOTATION: fence}},
            "data": {"report": value},
        })
    };
    // Idle, then with writers loading the API server and the Lease informer the fences read:
    // each of `LOAD_WRITERS` renews a Lease of its own (not one of dsync's names) in a loop.
    for load in [0, LOAD_WRITERS] {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writers: Vec<_> = (0..load)
            .map(|i| {
                actix::spawn(renew_until(
                    stop.clone(),
                    LeaseKey::new(&ns, format!("load-{i}")),
                ))
            })
            .collect();
        let (mut through, mut lags) = (0, Vec::new());
        for round in 0..rounds {
            let (old, new) = (round % 2, (round + 1) % 2);
            let stale = fence_of(&lease);
            let next = LeaseRecord {
                holder_pod: Some(names[new].into()),
                ..held_by(names[new], lease.record.lease_transitions.unwrap() + 1)
            };
            lease = store
                .replace(&key, next, &lease.resource_version)
                .await
                .unwrap();
            let maps = Api::<ConfigMap>::namespaced(clients[old].clone(), &ns);
            // Either fence may refuse it first.
            let (lag, admitted) =
                until_refused(&maps, &patch(&stale, "late"), "dsync-", "rule").await;
            through += usize::from(admitted);
            lags.push(lag);
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut renewals = 0;
        for writer in writers {
            renewals += writer.await.unwrap();
        }
        println!(
            "fencing lag, {load} Lease writers ({renewals} renewals meanwhile): the deposed pod's \
             first write right after the Lease write got through in {through} of {rounds} \
             rounds; refused after {}",
            summary(lags)
        );
    }

    let holder = names
        .iter()
        .position(|&n| Some(n) == lease.record.holder())
        .unwrap();
    let maps = Api::<ConfigMap>::namespaced(clients[holder].clone(), &ns);
    let current = fence_of(&lease);
    let samples = rounds * 5;
    let timed = |map: &'static str| {
        let maps = maps.clone();
        let current = current.clone();
        async move {
            let mut xs = Vec::with_capacity(samples);
            for i in 0..samples {
                let start = Instant::now();
                maps.patch(
                    map,
                    &PatchParams::default(),
                    &Patch::Merge(patch(&current, &i.to_string())),
                )
                .await
                .unwrap_or_else(|e| panic!("patch {map}: {e}"));
                xs.push(start.elapsed());
            }
            xs
        }
    };
    // Interleaved halves, so that a busy moment of the machine does not land on one side.
    let (mut fenced, mut unfenced) = (Vec::new(), Vec::new());
    for _ in 0..2 {
        unfenced.extend(timed("unfenced").await);
        fenced.extend(timed(PROTECTED).await);
    }
    println!("ConfigMap patch, unfenced: {}", summary(unfenced));
    println!(
        "ConfigMap patch, holder and token fences: {}",
        summary(fenced)
    );
}
