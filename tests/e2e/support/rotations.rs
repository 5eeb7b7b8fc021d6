//! Credential rotation: placing a database, requesting a rotation,
//! waiting for the Secret.

use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::json;
use servicedb::api::ServiceDatabase;
use servicedb::model::rotation::ROTATE_ANNOTATION as ROTATE;

use crate::support::harness::{Env, wait_for};

pub async fn place(
    client: &kube::Client,
    ns: &str,
    name: &str,
    spec: serde_json::Value,
) -> Api<ServiceDatabase> {
    let mut body = json!({"apiVersion": "servicedb.dev/v1alpha1", "kind": "ServiceDatabase",
        "metadata": {"name": name},
        "spec": {"owner": {"podSelector": {"matchLabels": {"app": name}}}}});
    for (k, v) in spec.as_object().expect("spec object") {
        body["spec"][k] = v.clone();
    }
    let api = Api::<ServiceDatabase>::namespaced(client.clone(), ns);
    api.patch(
        name,
        &PatchParams::apply("servicedb-e2e"),
        &Patch::Apply(&body),
    )
    .await
    .expect("service database");
    api
}

pub async fn request_rotation(api: &Api<ServiceDatabase>, name: &str, value: &str) {
    api.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(&json!({"metadata": {"annotations": {ROTATE: value}}})),
    )
    .await
    .expect("annotate");
}

/// [`reconciled`] for `name` in `namespace`.
pub fn reconciled_in(env: &Env, namespace: &str, name: &str) -> usize {
    env.operator
        .logs()
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|entry| {
            entry["message"] == "reconciled"
                && entry["controller"] == "servicedatabase"
                && entry["namespace"] == namespace
                && entry["object"] == name
        })
        .count()
}

/// The Secret once `check` holds for it.
pub async fn secret_when(
    api: &Api<Secret>,
    name: &str,
    what: &str,
    timeout: Duration,
    check: impl Fn(&Secret) -> bool,
) -> Secret {
    wait_for(what, timeout, || async {
        let s = api.get_opt(name).await.ok()??;
        check(&s).then_some(s)
    })
    .await
}
