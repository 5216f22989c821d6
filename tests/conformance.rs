//! The `LeaseStore` conformance suite (`dsync::testing::conformance`) on both stores that ship:
//! `MemoryStore` in paused time, and `KubeStore` against the real kube-apiserver (two fresh
//! namespaces; deletions through the kube API, so the deletion rule is checked there too).
#![cfg(feature = "testing")]

mod support;

use dsync::testing::conformance::{Report, Rule, Suite};
use dsync::{KubeStore, MemoryStore};
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, DeleteParams};
use support::apiserver::{Harness, client, namespace};
use support::backend::kube_store;

#[actix::test]
async fn memory_store_obeys_every_rule_it_can_be_checked_for() {
    tokio::time::pause();
    let report = Suite::new(MemoryStore::new())
        .run()
        .await
        .unwrap_or_else(|violations| panic!("{violations}"));
    // MemoryStore has no delete, so a deletion is never seen; every other rule holds.
    assert_eq!(report.skipped, vec![Rule::WatchSeesDeletions]);
    let mut expected = Rule::ALL.to_vec();
    expected.retain(|r| *r != Rule::WatchSeesDeletions);
    assert_eq!(report.checked, expected);
}

#[actix::test]
async fn kube_store_obeys_every_rule_against_the_real_api_server() {
    let admin = Harness::get().ready().admin;
    let (ns, other) = (namespace().await, namespace().await);
    let store: KubeStore = kube_store(&admin).await;
    let deleter = client(&admin).await;
    let suite = Suite::new(store)
        .with_namespaces(&ns, &other)
        .with_delete(move |key| {
            let api: Api<Lease> = Api::namespaced(deleter.clone(), &key.namespace);
            async move {
                api.delete(&key.name, &DeleteParams::default())
                    .await
                    .map(|_| ())
            }
        });
    let report = suite
        .run()
        .await
        .unwrap_or_else(|violations| panic!("{violations}"));
    assert_eq!(
        report,
        Report {
            checked: Rule::ALL.to_vec(),
            skipped: vec![],
        }
    );
}
