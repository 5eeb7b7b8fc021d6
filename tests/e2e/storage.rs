//! Growing `spec.storage.size`: the live claim is expanded when its
//! StorageClass allows it (the API server's PersistentVolumeClaimResize
//! admission decides the same), a condition says so when it does not, and
//! the CRD refuses shrinking. No PV controller runs: the test binds the
//! claims and reports their capacity as the storage driver would.

use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::{Value, json};
use servicedb::api::ServiceDatabase;

use crate::dedicated::get_when;
use crate::harness::{Env, wait_for};

const EXPANDABLE: &str = "servicedb-e2e-expandable";
const FIXED: &str = "servicedb-e2e-fixed";

async fn storage_class(env: &Env, name: &str, expansion: bool) {
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

fn database(name: &str, size: &str, class: &str) -> Value {
    json!({"apiVersion": "servicedb.dev/v1alpha1", "kind": "ServiceDatabase", "metadata": {"name": name},
        "spec": {"engine": "Postgres", "owner": {"podSelector": {"matchLabels": {"app": name}}},
            "storage": {"size": size, "storageClassName": class}}})
}

async fn apply(env: &Env, sdb: &Value) -> Result<ServiceDatabase, kube::Error> {
    let name = sdb["metadata"]["name"].as_str().expect("name");
    env.api::<ServiceDatabase>()
        .patch(
            name,
            &PatchParams::apply("servicedb-e2e").force(),
            &Patch::Apply(sdb),
        )
        .await
}

/// The claim the StatefulSet controller makes from the claim template,
/// bound with the capacity asked for, as the PV controller would.
async fn bound_claim(env: &Env, name: &str, class: &str) {
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

async fn set_capacity(env: &Env, name: &str, capacity: &str) {
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

fn requested(claim: &PersistentVolumeClaim) -> String {
    claim
        .spec
        .as_ref()
        .and_then(|s| s.resources.as_ref())
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("storage"))
        .map(|q| q.0.clone())
        .unwrap_or_default()
}

async fn wait_storage_condition(
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

#[tokio::test]
async fn a_larger_size_expands_the_claim_where_the_storage_class_allows_it_and_never_shrinks() {
    let env = Env::new("storage-grow").await;
    storage_class(&env, EXPANDABLE, true).await;
    storage_class(&env, FIXED, false).await;
    apply(&env, &database("grows", "1Gi", EXPANDABLE))
        .await
        .expect("grows");
    apply(&env, &database("fixed", "1Gi", FIXED))
        .await
        .expect("fixed");
    let statefulsets: Api<StatefulSet> = env.api();
    get_when(&statefulsets, "grows-db").await;
    get_when(&statefulsets, "fixed-db").await;
    bound_claim(&env, "grows", EXPANDABLE).await;
    bound_claim(&env, "fixed", FIXED).await;

    // The API server itself refuses to expand a claim of a class without
    // allowVolumeExpansion: what the condition below reports is real.
    let claims: Api<PersistentVolumeClaim> = env.api();
    let grow = json!({"spec": {"resources": {"requests": {"storage": "2Gi"}}}});
    let refused = claims
        .patch(
            "data-fixed-db-0",
            &PatchParams::default(),
            &Patch::Merge(&grow),
        )
        .await
        .expect_err("PersistentVolumeClaimResize refuses a class without expansion");
    assert!(
        refused
            .to_string()
            .contains("storageclass that provisions the pvc must support resize"),
        "{refused}"
    );

    apply(&env, &database("grows", "2Gi", EXPANDABLE))
        .await
        .expect("growing");
    apply(&env, &database("fixed", "2Gi", FIXED))
        .await
        .expect("growing a fixed volume is accepted, and reported");

    let grown = wait_for(
        "the claim of grows to request 2Gi",
        Duration::from_secs(30),
        || async {
            let c = claims.get("data-grows-db-0").await.ok()?;
            (requested(&c) == "2Gi").then_some(c)
        },
    )
    .await;
    assert_eq!(grown.name_any(), "data-grows-db-0");
    let (message, _) = wait_storage_condition(&env, "grows", "False", "Resizing").await;
    assert!(message.contains("data-grows-db-0"), "{message}");
    // The claim template of the StatefulSet cannot change and is kept.
    let sts = statefulsets.get("grows-db").await.expect("sts");
    let template = &sts.spec.expect("spec").volume_claim_templates.expect("t")[0];
    assert_eq!(requested(template), "1Gi");

    // The driver grew the volume.
    set_capacity(&env, "grows", "2Gi").await;
    wait_storage_condition(&env, "grows", "True", "AsRequested").await;

    let (message, _) =
        wait_storage_condition(&env, "fixed", "False", "ExpansionNotSupported").await;
    assert!(message.contains(FIXED), "names the StorageClass: {message}");
    assert_eq!(
        requested(&claims.get("data-fixed-db-0").await.expect("claim")),
        "1Gi",
        "the claim of a class without expansion is left alone"
    );

    // Shrinking is refused before it is stored.
    let shrink = apply(&env, &database("grows", "1Gi", EXPANDABLE))
        .await
        .expect_err("shrinking is refused");
    assert!(shrink.to_string().contains("cannot shrink"), "{shrink}");
    let smaller_unit = apply(&env, &database("grows", "2000Mi", EXPANDABLE))
        .await
        .expect_err("2000Mi is less than 2Gi");
    assert!(
        smaller_unit.to_string().contains("spec.storage.size"),
        "{smaller_unit}"
    );
    apply(&env, &database("grows", "2048Mi", EXPANDABLE))
        .await
        .expect("the same size in other units is not a shrink");
}
