//! Deleting a DatabaseBackup keeps its archive unless
//! `retainArchivesOnDelete: false` says otherwise, and a namespace being
//! deleted never waits for (nor gets) an archive deletion Job. Retention
//! deleting archives is `backup::retention_deletes_the_oldest_backup_after_its_archive`.

use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::{Api, ResourceExt};
use serde_json::{Value, json};
use servicedb::api::database_backup::BackupPhase;
use servicedb::api::{DatabaseBackup, ServiceDatabase};

use crate::support::backups::manifest;
use crate::support::backups::manual_backup;
use crate::support::backups::succeed;
use crate::support::backups::wait_backup;
use crate::support::harness::{Env, wait_for};
use crate::support::objects::get_when;

fn orders(backup_extra: Value) -> Value {
    let mut backup = json!({"schedule": "0 2 * * *",
        "destination": {"s3": {"bucket": "backups", "endpoint": "http://minio.storage:9000",
            "region": "eu-1", "credentialsSecret": "s3-creds"}}});
    if let (Some(b), Some(extra)) = (backup.as_object_mut(), backup_extra.as_object()) {
        b.extend(extra.clone());
    }
    json!({"apiVersion": "servicedb.dev/v1alpha1", "kind": "ServiceDatabase", "metadata": {"name": "orders"},
        "spec": {"engine": "Postgres", "owner": {"podSelector": {"matchLabels": {"app": "orders"}}},
            "backup": backup}})
}

async fn apply(env: &Env, sdb: &Value) {
    env.api::<ServiceDatabase>()
        .patch(
            "orders",
            &PatchParams::apply("servicedb-e2e").force(),
            &Patch::Apply(sdb),
        )
        .await
        .expect("applying orders");
}

async fn completed_backup(env: &Env, name: &str) {
    manual_backup(env, name, "orders").await;
    succeed(env, &format!("{name}-backup"), manifest(name, 10)).await;
    wait_backup(env, name, BackupPhase::Completed).await;
}

async fn wait_gone(api: &Api<DatabaseBackup>, name: &str) {
    wait_for(
        &format!("DatabaseBackup {name} to be gone"),
        Duration::from_secs(30),
        || async { api.get_opt(name).await.ok()?.is_none().then_some(()) },
    )
    .await;
}

#[tokio::test]
async fn deleting_a_backup_keeps_its_archive_unless_asked_and_a_namespace_deletion_never_waits() {
    let env = Env::new("archives").await;
    let backups: Api<DatabaseBackup> = env.api();
    let jobs: Api<Job> = env.api();
    apply(&env, &orders(json!({}))).await;

    // The default: the record goes, the archive stays, no Job.
    completed_backup(&env, "kept").await;
    backups
        .delete("kept", &DeleteParams::default())
        .await
        .expect("delete");
    wait_gone(&backups, "kept").await;
    assert!(
        jobs.get_opt("kept-delete").await.expect("get").is_none(),
        "no archive deletion Job by default"
    );

    // retainArchivesOnDelete: false deletes the archive first, by a Job.
    apply(&env, &orders(json!({"retainArchivesOnDelete": false}))).await;
    completed_backup(&env, "dropped").await;
    backups
        .delete("dropped", &DeleteParams::default())
        .await
        .expect("delete");
    let job = get_when(&jobs, "dropped-delete").await;
    let args = job
        .spec
        .and_then(|s| s.template.spec)
        .and_then(|p| p.containers[0].args.clone())
        .unwrap_or_default();
    assert_eq!(args[..2], ["agent", "delete"]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        backups.get_opt("dropped").await.expect("get").is_some(),
        "kept until its archive is gone"
    );
    succeed(&env, "dropped-delete", json!({})).await;
    wait_gone(&backups, "dropped").await;

    // The backup's own setting wins over the database's.
    let own: DatabaseBackup = serde_json::from_value(json!({
        "apiVersion": "servicedb.dev/v1alpha1", "kind": "DatabaseBackup",
        "metadata": {"name": "own-choice"},
        "spec": {"serviceDatabaseRef": {"name": "orders"}, "retainArchiveOnDelete": true}
    }))
    .expect("backup");
    backups
        .create(&Default::default(), &own)
        .await
        .expect("create");
    succeed(&env, "own-choice-backup", manifest("own-choice", 10)).await;
    wait_backup(&env, "own-choice", BackupPhase::Completed).await;
    backups
        .delete("own-choice", &DeleteParams::default())
        .await
        .expect("delete");
    wait_gone(&backups, "own-choice").await;
    assert!(
        jobs.get_opt("own-choice-delete")
            .await
            .expect("get")
            .is_none()
    );

    // A namespace being deleted: even with retainArchivesOnDelete: false no
    // Job is made (none could be) and nothing waits. testenv runs no
    // namespace controller, so the test deletes the backup itself, as that
    // controller would.
    completed_backup(&env, "last").await;
    let mut ledger = orders(json!({}));
    ledger["metadata"]["name"] = json!("ledger");
    ledger["spec"]["deletionPolicy"] = json!("Snapshot");
    env.api::<ServiceDatabase>()
        .patch(
            "ledger",
            &PatchParams::apply("servicedb-e2e").force(),
            &Patch::Apply(&ledger),
        )
        .await
        .expect("applying ledger");
    let sdbs: Api<ServiceDatabase> = env.api();
    wait_for("ledger's finalizer", Duration::from_secs(30), || async {
        let sdb = sdbs.get("ledger").await.ok()?;
        (!sdb.finalizers().is_empty()).then_some(())
    })
    .await;
    Api::<Namespace>::all(env.client.clone())
        .delete(&env.ns, &DeleteParams::default())
        .await
        .expect("deleting the namespace");
    let ns = Api::<Namespace>::all(env.client.clone())
        .get(&env.ns)
        .await
        .expect("the namespace is Terminating");
    assert!(
        ns.metadata.deletion_timestamp.is_some(),
        "{}",
        ns.name_any()
    );
    backups
        .delete("last", &DeleteParams::default())
        .await
        .expect("delete");
    wait_gone(&backups, "last").await;
    assert!(
        jobs.get_opt("last-delete").await.expect("get").is_none(),
        "no archive deletion Job in a namespace being deleted"
    );
    // A Snapshot database takes no final backup there and does not wait.
    sdbs.delete("ledger", &DeleteParams::default())
        .await
        .expect("delete ledger");
    wait_for("ledger to be gone", Duration::from_secs(30), || async {
        sdbs.get_opt("ledger").await.ok()?.is_none().then_some(())
    })
    .await;
    assert!(
        backups
            .list(&Default::default())
            .await
            .expect("list")
            .items
            .iter()
            .all(|b| !b.name_any().starts_with("ledger-final")),
        "no final backup in a namespace being deleted"
    );
    let logs = env.operator.logs();
    assert!(
        logs.contains("is being deleted"),
        "the operator says why the archive stays"
    );
}
