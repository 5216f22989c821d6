//! Tests of the `controller` example (`cargo test --example controller`).
//!
//! * Without a server: what the reconcile writes, when it writes nothing, and that it never
//!   writes under an ended term.
//! * On the real kube-apiserver (the harness of `tests/harness`, with an audit log of its
//!   own): two replicas; the leader reconciles, a handoff moves reconciling to the other one,
//!   the token fence of `deploy/fencing/` admits the leader's writes and refuses the deposed
//!   replica's, and the audit log shows no write of the deposed replica after its term ended.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use dsync::fencing::FENCE_ANNOTATION;
use dsync::{Dsync, MemoryStore, Term};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ObjectMeta};

use super::reconciler::{
    Context, ReconcileError, STATUS_ANNOTATION, Status, digest, reconcile, status_of, status_patch,
};

const LIMIT: Duration = Duration::from_secs(60);

fn config_map(name: &str, data: &[(&str, &str)]) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.into()),
            resource_version: Some("7".into()),
            ..Default::default()
        },
        data: Some(
            data.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        ),
        ..Default::default()
    }
}

/// `map` with the annotations of `patch` (a merge patch of [`status_patch`]) applied.
fn applied(mut map: ConfigMap, patch: &serde_json::Value) -> ConfigMap {
    let annotations = map
        .metadata
        .annotations
        .get_or_insert_with(Default::default);
    for (k, v) in patch["metadata"]["annotations"].as_object().unwrap() {
        annotations.insert(k.clone(), v.as_str().unwrap().to_owned());
    }
    map
}

/// A term of replica `identity`, on an in-process store (with a lease uid, so a fence).
async fn term_of(store: &MemoryStore, identity: &str) -> (Dsync, Term) {
    let dsync = Dsync::new(store.clone(), identity).unwrap();
    let election = dsync.election(super::reconciler::ELECTION).unwrap();
    let term = dsync::testing::within(LIMIT, "elected", election.elected())
        .await
        .unwrap();
    (dsync, term)
}

#[actix::test]
async fn the_status_patch_names_the_leader_its_fence_and_the_data() {
    let store = MemoryStore::new();
    let (a, term) = term_of(&store, "pod-a").await;
    let map = config_map("demo", &[("k", "v"), ("x", "y")]);
    let patch = status_patch(&map, &term, "2026-01-01T00:00:00Z")
        .unwrap()
        .expect("a map without status is reconciled");
    assert_eq!(
        patch["metadata"]["annotations"][FENCE_ANNOTATION],
        term.fence().unwrap()
    );
    assert_eq!(patch["metadata"]["resourceVersion"], "7");
    let status: Status = serde_json::from_str(
        patch["metadata"]["annotations"][STATUS_ANNOTATION]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        status,
        Status {
            reconciled_by: "pod-a".into(),
            fencing_token: term.fencing_token(),
            digest: digest(&map),
            keys: 2,
            reconciled_at: "2026-01-01T00:00:00Z".into(),
        }
    );
    a.shutdown().await.unwrap();
}

#[actix::test]
async fn an_up_to_date_map_is_left_alone_and_anything_else_is_rewritten() {
    let store = MemoryStore::new();
    let (a, term_a) = term_of(&store, "pod-a").await;
    let map = config_map("demo", &[("k", "v")]);
    let patch = status_patch(&map, &term_a, "t0").unwrap().unwrap();
    let reconciled = applied(map, &patch);
    assert_eq!(
        status_of(&reconciled).map(|s| s.reconciled_by),
        Some("pod-a".into())
    );
    assert_eq!(
        status_patch(&reconciled, &term_a, "t1").unwrap(),
        None,
        "up to date: no write (else every write would trigger the next)"
    );

    // Changed data: rewritten.
    let mut changed = reconciled.clone();
    changed
        .data
        .as_mut()
        .unwrap()
        .insert("k".into(), "w".into());
    assert_ne!(digest(&changed), digest(&reconciled));
    assert!(status_patch(&changed, &term_a, "t1").unwrap().is_some());
    // A digest tells the keys and values apart.
    assert_ne!(
        digest(&config_map("m", &[("ab", "c")])),
        digest(&config_map("m", &[("a", "bc")]))
    );

    // A garbled status, or a missing fence: rewritten.
    let mut garbled = reconciled.clone();
    garbled
        .metadata
        .annotations
        .as_mut()
        .unwrap()
        .insert(STATUS_ANNOTATION.into(), "{".into());
    assert!(status_patch(&garbled, &term_a, "t1").unwrap().is_some());
    let mut unfenced = reconciled.clone();
    unfenced
        .metadata
        .annotations
        .as_mut()
        .unwrap()
        .remove(FENCE_ANNOTATION);
    assert!(status_patch(&unfenced, &term_a, "t1").unwrap().is_some());

    // The next leader takes it over with its own, higher fence.
    let b = Dsync::new(store.clone(), "pod-b").unwrap();
    let election_b = b.election(super::reconciler::ELECTION).unwrap();
    a.shutdown().await.unwrap();
    let term_b = dsync::testing::within(LIMIT, "b elected", election_b.elected())
        .await
        .unwrap();
    assert!(term_b.fencing_token() > term_a.fencing_token());
    let patch = status_patch(&reconciled, &term_b, "t2").unwrap().unwrap();
    assert_eq!(
        patch["metadata"]["annotations"][FENCE_ANNOTATION],
        term_b.fence().unwrap()
    );
    b.shutdown().await.unwrap();
}

/// A client whose every request fails, counting them: the reconcile must make none.
fn counting_client(calls: Arc<AtomicUsize>) -> kube::Client {
    let service = tower::service_fn(move |_: http::Request<kube::client::Body>| {
        calls.fetch_add(1, Ordering::SeqCst);
        async {
            Err::<http::Response<kube::client::Body>, _>(std::io::Error::other(
                "no request expected",
            ))
        }
    });
    kube::Client::new(service, "default")
}

#[actix::test]
async fn a_reconcile_under_an_ended_term_writes_nothing() {
    let store = MemoryStore::new();
    let (a, term) = term_of(&store, "pod-a").await;
    a.shutdown().await.unwrap();
    assert!(!term.is_active());
    let calls = Arc::new(AtomicUsize::new(0));
    let ctx = Arc::new(Context {
        api: Api::namespaced(counting_client(calls.clone()), "default"),
        term: term.clone(),
    });
    let result = reconcile(Arc::new(config_map("demo", &[("k", "v")])), ctx).await;
    assert!(
        matches!(
            &result,
            Err(ReconcileError::TermEnded { name, token })
                if name == "demo" && *token == term.fencing_token()
        ),
        "{result:?}"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 0, "no request");
}

/// On the real kube-apiserver.
mod apiserver {
    use std::collections::{BTreeMap, BTreeSet};
    use std::path::{Path, PathBuf};
    use std::pin::pin;

    use dsync::fencing::{self, Fence, Protected, TOKEN_FENCE_POLICY};
    use dsync::testing::within;
    use dsync::{Config, Election, Timing};
    use dsync_harness::apiserver::{Harness, Ready, client, namespace_on};
    use futures::TryStreamExt;
    use k8s_openapi::api::admissionregistration::v1::ValidatingAdmissionPolicy;
    use k8s_openapi::jiff::Timestamp;
    use kube::api::{Patch, PatchParams, PostParams};
    use kube::runtime::{WatchStreamExt, watcher};
    use serde::Deserialize;

    use super::super::reconciler::{ELECTION, SELECTOR, field_manager, start, write_status};
    use super::*;

    /// The ConfigMaps the controller reconciles.
    const LABELLED: [&str; 3] = ["alpha", "beta", "gamma"];
    /// One it must leave alone (no label).
    const UNLABELLED: &str = "ignored";

    /// Writes (and the Leases' requests) at level `Request`, so each write's body (its fence,
    /// its holder) is in the log; nothing else.
    const AUDIT_POLICY: &str = "apiVersion: audit.k8s.io/v1\nkind: Policy\n\
        omitStages: [RequestReceived]\nrules:\n\
        - level: Request\n  verbs: [create, update, patch]\n  resources:\n  \
          - group: \"\"\n    resources: [configmaps]\n  \
          - group: coordination.k8s.io\n    resources: [leases]\n\
        - level: None\n";

    /// A harness of its own, with the audit log of [`AUDIT_POLICY`]: the log's path.
    fn launch_audited() -> (Harness, PathBuf) {
        let dir = std::env::temp_dir().join(format!(
            "dsync-controller-audit-{}-{}",
            std::process::id(),
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let policy = dir.join("audit-policy.yaml");
        std::fs::write(&policy, AUDIT_POLICY).unwrap();
        let log = dir.join("audit.log");
        let harness = Harness::launch(vec![
            format!("--audit-policy-file={}", policy.display()),
            format!("--audit-log-path={}", log.display()),
        ]);
        (harness, log)
    }

    /// The user agent of a replica's requests: how the audit log tells the replicas apart.
    fn agent(identity: &str) -> String {
        format!("controller-{identity}")
    }

    /// One replica of the example: its dsync, election and controller, all through a client
    /// of its own user agent.
    struct Replica {
        dsync: Dsync,
        election: Election,
        api: Api<ConfigMap>,
    }

    /// A client configuration of the admin whose requests carry the user agent `agent`.
    async fn client_config(ready: &Ready, agent: &str) -> kube::Config {
        let kubeconfig = kube::config::Kubeconfig::read_from(&ready.admin).unwrap();
        let mut config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
            .await
            .unwrap();
        config.headers.push((
            http::header::USER_AGENT,
            http::HeaderValue::from_str(agent).unwrap(),
        ));
        config
    }

    impl Replica {
        async fn new(ready: &Ready, ns: &str, identity: &str) -> Replica {
            let client_config = client_config(ready, &agent(identity)).await;
            let client = kube::Client::try_from(client_config.clone()).unwrap();
            let config = Config::default()
                .with_namespace(ns)
                .with_identity(identity)
                .with_timing(Timing::from_secs_f64(2.0, 1.5, 0.5).unwrap());
            let dsync = Dsync::connect_with(config, client_config).await.unwrap();
            let election = dsync.election(ELECTION).unwrap();
            Replica {
                dsync,
                election,
                api: Api::namespaced(client, ns),
            }
        }

        /// Runs the example's controller for every term of this replica.
        fn start(&self) {
            start(&self.election, self.api.clone()).unwrap();
        }
    }

    async fn create(maps: &Api<ConfigMap>, name: &str, labelled: bool) {
        let mut map = config_map(name, &[("owner", "team-a"), ("name", name)]);
        map.metadata.resource_version = None;
        if labelled {
            map.metadata.labels = Some([("dsync.example/reconcile".into(), "true".into())].into());
        }
        maps.create(&PostParams::default(), &map)
            .await
            .unwrap_or_else(|e| panic!("create {name}: {e}"));
    }

    /// The token fence of `deploy/fencing/`, as shipped, bound to the labelled ConfigMaps
    /// with the election's Lease as its parameter, once it refuses an unfenced write.
    async fn bind_token_fence(admin: &kube::Client, ns: &str, election: &Election) {
        let path = dsync_harness::apiserver::repo().join("deploy/fencing/token-fence.yaml");
        let text = std::fs::read_to_string(&path).unwrap();
        let policy: ValidatingAdmissionPolicy = serde_yaml::from_value(
            serde_yaml::Value::deserialize(
                serde_yaml::Deserializer::from_str(&text).next().unwrap(),
            )
            .unwrap(),
        )
        .unwrap();
        Api::<ValidatingAdmissionPolicy>::all(admin.clone())
            .create(&PostParams::default(), &policy)
            .await
            .unwrap();
        let mut protected = Protected::config_maps(ns);
        for name in LABELLED {
            protected = protected.named(name);
        }
        let binding = fencing::binding("controller", Fence::Token, &election.lease(), &protected);
        Api::all(admin.clone())
            .create(&PostParams::default(), &binding)
            .await
            .unwrap();
        let maps: Api<ConfigMap> = Api::namespaced(admin.clone(), ns);
        within(LIMIT, "the token fence refuses an unfenced write", async {
            loop {
                let dry_run = PatchParams {
                    dry_run: true,
                    ..Default::default()
                };
                let patch = serde_json::json!({"data": {"probe": "x"}});
                match maps
                    .patch(LABELLED[0], &dry_run, &Patch::Merge(&patch))
                    .await
                {
                    Err(kube::Error::Api(s))
                        if s.code == 403 && s.message.contains(TOKEN_FENCE_POLICY) =>
                    {
                        return;
                    }
                    // Not in effect yet: the API server learns of policies from its informers.
                    _ => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        })
        .await;
    }

    /// Waits until every labelled ConfigMap carries a status of `identity` under `token` for
    /// its current data (watched, as the admin sees them).
    async fn until_reconciled_by(maps: &Api<ConfigMap>, identity: &str, token: i32) {
        let stream =
            watcher(maps.clone(), watcher::Config::default().labels(SELECTOR)).applied_objects();
        let mut stream = pin!(stream);
        let mut done = BTreeSet::new();
        while let Some(map) = stream.try_next().await.unwrap() {
            let ok = status_of(&map).is_some_and(|s| {
                s.reconciled_by == identity && s.fencing_token == token && s.digest == digest(&map)
            });
            let name = map.metadata.name.clone().unwrap();
            if ok {
                done.insert(name);
            } else {
                done.remove(&name);
            }
            if done.len() == LABELLED.len() {
                return;
            }
        }
        panic!("the watch ended");
    }

    /// A write (create, update, patch) of the audit log, as the API server saw it.
    #[derive(Debug)]
    struct Write {
        agent: String,
        resource: String,
        name: String,
        code: i64,
        dry_run: bool,
        received: Timestamp,
        completed: Timestamp,
        /// The request's body: the patch, or the object.
        body: serde_json::Value,
    }

    impl Write {
        fn fence(&self) -> Option<&str> {
            self.body["metadata"]["annotations"][FENCE_ANNOTATION].as_str()
        }

        /// A write that changed the object: admitted, not a dry run.
        fn stored(&self) -> bool {
            (200..300).contains(&self.code) && !self.dry_run
        }
    }

    /// The completed writes of namespace `ns` in the audit log, in the order received.
    fn writes(log: &Path, ns: &str) -> Vec<Write> {
        let text = std::fs::read_to_string(log).expect("the audit log");
        let time = |v: &serde_json::Value| v.as_str().unwrap().parse::<Timestamp>().unwrap();
        let mut writes: Vec<Write> = text
            .lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .filter(|ev| ev["objectRef"]["namespace"] == ns && ev["stage"] == "ResponseComplete")
            .map(|ev| Write {
                agent: ev["userAgent"].as_str().unwrap_or("").to_owned(),
                resource: ev["objectRef"]["resource"]
                    .as_str()
                    .unwrap_or("")
                    .to_owned(),
                name: ev["objectRef"]["name"].as_str().unwrap_or("").to_owned(),
                code: ev["responseStatus"]["code"].as_i64().unwrap_or(0),
                dry_run: ev["requestURI"].as_str().unwrap_or("").contains("dryRun="),
                received: time(&ev["requestReceivedTimestamp"]),
                completed: time(&ev["stageTimestamp"]),
                body: ev["requestObject"].clone(),
            })
            .collect();
        writes.sort_by_key(|w| w.received);
        writes
    }

    fn ms(from: Timestamp, to: Timestamp) -> f64 {
        to.duration_since(from).as_secs_f64() * 1e3
    }

    /// Two replicas; the leader reconciles; a handoff moves reconciling to the other within
    /// milliseconds; the deposed replica writes nothing after its term ended, and its late
    /// write is refused by the token fence.
    #[actix::test]
    async fn on_the_api_server_only_the_leader_reconciles_and_a_handoff_moves_it() {
        let (harness, log) = launch_audited();
        let ready = harness.ready();
        let ns = namespace_on(&ready).await;
        let admin = client(&ready.admin).await;
        let maps: Api<ConfigMap> = Api::namespaced(admin.clone(), &ns);
        for name in LABELLED {
            create(&maps, name, true).await;
        }
        create(&maps, UNLABELLED, false).await;

        // a leads; the token fence is bound to its Lease before any controller runs, so that
        // every write of the controllers goes through it.
        let a = Replica::new(&ready, &ns, "pod-a").await;
        let term_a = within(LIMIT, "a leads", a.election.elected())
            .await
            .unwrap();
        bind_token_fence(&admin, &ns, &a.election).await;
        let b = Replica::new(&ready, &ns, "pod-b").await;
        a.start();
        b.start();
        within(
            LIMIT,
            "a reconciles every labelled ConfigMap",
            until_reconciled_by(&maps, "pod-a", term_a.fencing_token()),
        )
        .await;
        assert!(!b.election.is_leader());

        // The handoff: a's term is cancelled, its controller stops, the lease goes to b.
        let cancelled = actix::spawn({
            let term = term_a.clone();
            async move {
                term.cancelled().await;
                SystemTime::now()
            }
        });
        let start = Instant::now();
        within(LIMIT, "a hands off to b", a.election.handoff_to("pod-b"))
            .await
            .unwrap();
        let released = start.elapsed();
        let a_cancelled = Timestamp::try_from(cancelled.await.unwrap()).unwrap();
        let term_b = within(LIMIT, "b leads", b.election.elected())
            .await
            .unwrap();
        assert!(term_b.fencing_token() > term_a.fencing_token());
        within(
            LIMIT,
            "b reconciles every labelled ConfigMap",
            until_reconciled_by(&maps, "pod-b", term_b.fencing_token()),
        )
        .await;
        let moved = start.elapsed();
        println!(
            "handoff: a's lease released {:.1} ms after the call; every ConfigMap reconciled \
             by b {:.1} ms after it (seen by a watch)",
            released.as_secs_f64() * 1e3,
            moved.as_secs_f64() * 1e3
        );

        // b's controller writes as b's field manager.
        let managers: Vec<_> = maps
            .get(LABELLED[0])
            .await
            .unwrap()
            .metadata
            .managed_fields
            .unwrap_or_default()
            .into_iter()
            .filter_map(|f| f.manager)
            .collect();
        assert!(managers.contains(&field_manager("pod-b")), "{managers:?}");

        // A late write of a (as a reconcile paused past its term check would make it): the
        // token fence refuses it once the API server's informer has b's term (probed with dry
        // runs, which run admission and store nothing: the fence lags the Lease by a watch
        // delay, see BENCHMARKS.md), then for real. It goes through a client of its own user
        // agent, so that the audit log tells it from a's controller, which must be silent.
        const LATE: &str = "late-writer-of-pod-a";
        let late_api: Api<ConfigMap> = Api::namespaced(
            kube::Client::try_from(client_config(&ready, LATE).await).unwrap(),
            &ns,
        );
        let current = maps.get(LABELLED[0]).await.unwrap();
        let late = status_patch(&current, &term_a, "late").unwrap().unwrap();
        let refused = |result: Result<ConfigMap, kube::Error>| matches!(result, Err(kube::Error::Api(s)) if s.code == 403 && s.message.contains(TOKEN_FENCE_POLICY));
        within(LIMIT, "the token fence refuses a's late write", async {
            let dry_run = PatchParams {
                dry_run: true,
                ..Default::default()
            };
            while !refused(
                late_api
                    .patch(LABELLED[0], &dry_run, &Patch::Merge(&late))
                    .await,
            ) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        assert!(refused(
            write_status(&late_api, LABELLED[0], "pod-a", &late).await
        ));

        for replica in [&a, &b] {
            within(LIMIT, "shutdown", replica.dsync.shutdown())
                .await
                .unwrap();
        }

        // The audit log. The API server logs an entry once the response is written: wait for
        // the last one, b's release of the lease at its shutdown.
        let released_by_b = |w: &Write| {
            w.agent == agent("pod-b")
                && w.resource == "leases"
                && w.stored()
                && w.body["spec"]["holderIdentity"]
                    .as_str()
                    .unwrap_or("")
                    .is_empty()
        };
        within(LIMIT, "the audit log has b's release", async {
            while !writes(&log, &ns).iter().any(released_by_b) {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
        let all = writes(&log, &ns);
        let of = |identity: &str, resource: &str| -> Vec<&Write> {
            all.iter()
                .filter(|w| w.agent == agent(identity) && w.resource == resource)
                .collect()
        };
        // a's release at the handoff: its first lease write without a holder.
        let release_a = of("pod-a", "leases")
            .into_iter()
            .find(|w| {
                w.stored()
                    && w.body["spec"]["holderIdentity"]
                        .as_str()
                        .unwrap_or("")
                        .is_empty()
            })
            .expect("a's release in the audit log");
        let acquire_b = of("pod-b", "leases")
            .into_iter()
            .find(|w| w.stored() && w.body["spec"]["holderIdentity"] == "pod-b")
            .expect("b's acquisition in the audit log");

        let (maps_a, maps_b) = (of("pod-a", "configmaps"), of("pod-b", "configmaps"));
        let stored_a: Vec<_> = maps_a.iter().filter(|w| w.stored()).collect();
        let stored_b: Vec<_> = maps_b.iter().filter(|w| w.stored()).collect();
        let names = |ws: &[&&Write]| ws.iter().map(|w| w.name.clone()).collect::<BTreeSet<_>>();
        let labelled: BTreeSet<String> = LABELLED.iter().map(|s| s.to_string()).collect();
        assert_eq!(
            names(&stored_a),
            labelled,
            "a reconciled the labelled ConfigMaps only"
        );
        assert_eq!(
            names(&stored_b),
            labelled,
            "b reconciled the labelled ConfigMaps only"
        );
        for w in &stored_a {
            assert_eq!(
                w.fence(),
                term_a.fence().as_deref(),
                "a's writes carry a's fence"
            );
            assert!(
                w.completed <= release_a.received,
                "a's write of {} completed at {}, after a released the lease at {}",
                w.name,
                w.completed,
                release_a.received
            );
            assert!(
                w.received <= a_cancelled,
                "a's write of {} received at {}, after a's term was cancelled at {}",
                w.name,
                w.received,
                a_cancelled
            );
        }
        for w in &stored_b {
            assert_eq!(
                w.fence(),
                term_b.fence().as_deref(),
                "b's writes carry b's fence"
            );
            assert!(
                w.received >= acquire_b.completed,
                "b's write of {} before b's term",
                w.name
            );
        }
        // a's controller made no request at all after its term was cancelled (a quiet
        // moment: every ConfigMap was reconciled, so no reconcile was in flight to finish).
        let after: Vec<_> = maps_a.iter().filter(|w| w.received > a_cancelled).collect();
        assert!(after.is_empty(), "a's controller after its term: {after:?}");
        // The late writer: nothing stored, the real write refused.
        let late: Vec<_> = all.iter().filter(|w| w.agent == LATE).collect();
        assert!(late.iter().all(|w| !w.stored()), "{late:?}");
        assert!(
            late.iter().any(|w| w.code == 403 && !w.dry_run),
            "the refused late write is in the log: {late:?}"
        );
        let unlabelled: Vec<_> = all
            .iter()
            .filter(|w| w.name == UNLABELLED && w.agent.starts_with("controller-"))
            .collect();
        assert!(unlabelled.is_empty(), "{unlabelled:?}");
        let first_b = stored_b.first().unwrap();
        let last_b = stored_b.last().unwrap();
        println!(
            "on the API server's clock: a's release -> b's acquisition {:.1} ms; -> b's first \
             ConfigMap write {:.1} ms; -> all {} reconciled by b {:.1} ms; a's last write \
             completed {:.1} ms before its release",
            ms(release_a.completed, acquire_b.received),
            ms(release_a.completed, first_b.received),
            stored_b.len(),
            ms(release_a.completed, last_b.completed),
            ms(stored_a.last().unwrap().completed, release_a.received),
        );
        let by_agent: BTreeMap<&str, usize> = all.iter().fold(BTreeMap::new(), |mut m, w| {
            *m.entry(w.agent.as_str()).or_default() += 1;
            m
        });
        println!("writes per user agent: {by_agent:?}");
    }
}
