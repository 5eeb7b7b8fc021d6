//! Growing `spec.storage.size`: the live claim is expanded when its
//! StorageClass allows it (the API server's PersistentVolumeClaimResize
//! admission decides the same), a condition says so when it does not, and
//! the CRD refuses shrinking. No PV controller runs: the test binds the
//! claims and reports their capacity as the storage driver would.

use crate::support::storage::EXPANDABLE;
use crate::support::storage::bound_claim;
use crate::support::storage::requested;
use crate::support::storage::set_capacity;
use crate::support::storage::storage_class;
use crate::support::storage::wait_storage_condition;
use crate::support::storage::{apply, database};
use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kube::api::{Patch, PatchParams};
use kube::{Api, ResourceExt};
use serde_json::json;

use crate::support::harness::{Env, wait_for};
use crate::support::objects::get_when;

const FIXED: &str = "servicedb-e2e-fixed";

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
