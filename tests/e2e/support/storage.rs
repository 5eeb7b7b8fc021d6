//! Volumes: a StorageClass that may or may not expand, a database on it,
//! the claim as the PVC controller would bind and resize it.

use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use k8s_openapi::api::storage::v1::StorageClass;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use servicedb::api::ServiceDatabase;

use crate::support::harness::{Env, wait_for};
use crate::support::objects::get_when;

pub fn database(name: &str, size: &str, class: &str) -> Value {
    json!({"apiVersion": "servicedb.dev/v1alpha1", "kind": "ServiceDatabase", "metadata": {"name": name},
        "spec": {"engine": "Postgres", "owner": {"podSelector": {"matchLabels": {"app": name}}},
            "storage": {"size": size, "storageClassName": class}}})
}

pub async fn apply(env: &Env, sdb: &Value) -> Result<ServiceDatabase, kube::Error> {
    let name = sdb["metadata"]["name"].as_str().expect("name");
    env.api::<ServiceDatabase>()
        .patch(
            name,
            &PatchParams::apply("servicedb-e2e").force(),
            &Patch::Apply(sdb),
        )
        .await
}

/// One database grown on an expandable class (the chart's RBAC test runs it
/// under the chart's ServiceAccount: it reads the StorageClass).
pub async fn grows(env: &Env, name: &str) {
    storage_class(env, EXPANDABLE, true).await;
    apply(env, &database(name, "1Gi", EXPANDABLE))
        .await
        .expect("applying");
    get_when(&env.api::<StatefulSet>(), &format!("{name}-db")).await;
    bound_claim(env, name, EXPANDABLE).await;
    apply(env, &database(name, "3Gi", EXPANDABLE))
        .await
        .expect("growing");
    wait_storage_condition(env, name, "False", "Resizing").await;
    let claim = env
        .api::<PersistentVolumeClaim>()
        .get(&format!("data-{name}-db-0"))
        .await
        .expect("claim");
    assert_eq!(requested(&claim), "3Gi");
}

pub const EXPANDABLE: &str = "servicedb-e2e-expandable";

/// The claim the StatefulSet controller makes from the claim template,
/// bound with the capacity asked for, as the PV controller would.
pub async fn bound_claim(env: &Env, name: &str, class: &str) {
    let claims: Api<PersistentVolumeClaim> = env.api();
    let claim: PersistentVolumeClaim = serde_json::from_value(json!({
        "metadata": {"name": format!("data-{name}-db-0")},
        "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": class,
            "volumeName": format!("pv-{name}"), "resources": {"requests": {"storage": "1Gi"}}}
    }))
    .expect("claim");
    claims
        .create(&PostParams::default(), &claim)
        .await
        .expect("creating the claim");
    set_capacity(env, name, "1Gi").await;
}

pub fn requested(claim: &PersistentVolumeClaim) -> String {
    claim
        .spec
        .as_ref()
        .and_then(|s| s.resources.as_ref())
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("storage"))
        .map(|q| q.0.clone())
        .unwrap_or_default()
}

pub async fn storage_class(env: &Env, name: &str, expansion: bool) {
    let class: StorageClass = serde_json::from_value(json!({
        "metadata": {"name": name},
        "provisioner": "example.com/none",
        "allowVolumeExpansion": expansion,
    }))
    .expect("storage class");
    match Api::<StorageClass>::all(env.client.clone())
        .create(&PostParams::default(), &class)
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) => panic!("creating StorageClass {name}: {e}"),
    }
}

pub async fn wait_storage_condition(
    env: &Env,
    name: &str,
    status: &str,
    reason: &str,
) -> (String, String) {
    let api: Api<ServiceDatabase> = env.api();
    wait_for(
        &format!("{name} StorageResized={status} ({reason})"),
        Duration::from_secs(60),
        || async {
            let sdb = api.get(name).await.ok()?;
            let c = sdb
                .status?
                .conditions
                .into_iter()
                .find(|c| c.type_ == "StorageResized")?;
            (c.status == status && c.reason == reason).then_some((c.message, c.type_))
        },
    )
    .await
}

pub async fn set_capacity(env: &Env, name: &str, capacity: &str) {
    let status = json!({"status": {"phase": "Bound", "accessModes": ["ReadWriteOnce"],
        "capacity": {"storage": capacity}}});
    env.api::<PersistentVolumeClaim>()
        .patch_status(
            &format!("data-{name}-db-0"),
            &PatchParams::default(),
            &Patch::Merge(&status),
        )
        .await
        .expect("claim status");
}
