//! RBAC on the real API server: binding a shipped Role to the harness's user that has no
//! rights otherwise (`dsync-norights`), so a test runs with exactly the Role's rights.

use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding, RoleRef, Subject};
use kube::api::{Api, ObjectMeta, PostParams};

/// The Role in a manifest of `deploy/` (e.g. `"rbac.yaml"`, `"observer-rbac.yaml"`), as
/// shipped.
pub fn shipped_role(file: &str) -> Role {
    use serde::Deserialize;
    let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(file);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let value = serde_yaml::Value::deserialize(doc).unwrap();
        if value["kind"] == "Role" {
            return serde_yaml::from_value(value).unwrap();
        }
    }
    panic!("no Role in {}", path.display());
}

/// The harness's user with no rights of its own.
pub const NORIGHTS_USER: &str = "dsync-norights";

/// Creates `role` in `namespace` and binds it (as `binding`) to [`NORIGHTS_USER`]; returns
/// once the API server's authorizer grants what the role's first rule allows (the RBAC
/// authorizer learns of new bindings from its own informer, a moment after the create).
pub async fn bind_to_norights(admin: kube::Client, namespace: &str, role: &Role, binding: &str) {
    Api::<Role>::namespaced(admin.clone(), namespace)
        .create(&PostParams::default(), role)
        .await
        .unwrap_or_else(|e| panic!("create Role in {namespace}: {e}"));
    let binding = RoleBinding {
        metadata: ObjectMeta {
            name: Some(binding.into()),
            ..Default::default()
        },
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: "Role".into(),
            name: role.metadata.name.clone().expect("the Role has a name"),
        },
        subjects: Some(vec![Subject {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: "User".into(),
            name: NORIGHTS_USER.into(),
            ..Default::default()
        }]),
    };
    Api::<RoleBinding>::namespaced(admin.clone(), namespace)
        .create(&PostParams::default(), &binding)
        .await
        .unwrap_or_else(|e| panic!("create RoleBinding in {namespace}: {e}"));
    effective(admin, namespace, role).await;
}

/// Waits until [`NORIGHTS_USER`] is allowed the first verb of `role`'s first rule in
/// `namespace`, asking the authorizer itself (a SubjectAccessReview). There is nothing to
/// watch for this, so it asks every 50 ms, for at most 30 s.
async fn effective(admin: kube::Client, namespace: &str, role: &Role) {
    let rule = role
        .rules
        .as_ref()
        .and_then(|r| r.first())
        .expect("the Role has a rule");
    let review = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(NORIGHTS_USER.into()),
            resource_attributes: Some(ResourceAttributes {
                namespace: Some(namespace.into()),
                verb: rule.verbs.first().cloned(),
                group: rule.api_groups.as_ref().and_then(|g| g.first().cloned()),
                resource: rule.resources.as_ref().and_then(|r| r.first().cloned()),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let reviews = Api::<SubjectAccessReview>::all(admin);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let answer = reviews
            .create(&PostParams::default(), &review)
            .await
            .unwrap_or_else(|e| panic!("SubjectAccessReview in {namespace}: {e}"));
        if answer.status.is_some_and(|s| s.allowed) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the RoleBinding in {namespace} did not take effect within 30 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
