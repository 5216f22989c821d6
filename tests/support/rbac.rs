//! RBAC on the real API server: binding a shipped Role to the harness's user that has no
//! rights otherwise (`dsync-norights`), so a test runs with exactly the Role's rights.

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

/// Creates `role` in `namespace` and binds it (as `binding`) to [`NORIGHTS_USER`].
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
    Api::<RoleBinding>::namespaced(admin, namespace)
        .create(&PostParams::default(), &binding)
        .await
        .unwrap_or_else(|e| panic!("create RoleBinding in {namespace}: {e}"));
}
