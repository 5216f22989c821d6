//! RBAC on the real API server: binding a shipped Role to the harness's user that has no
//! rights otherwise (`dsync-norights`), so a test runs with exactly the Role's rights.

use k8s_openapi::api::rbac::v1::{Role, RoleBinding, RoleRef, Subject};
use kube::api::{Api, ObjectMeta, PostParams};

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
