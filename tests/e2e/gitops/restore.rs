//! A ServiceDatabase restored from a backup, deleted with `deletionPolicy:
//! Retain` and applied again from Git once its backup aged out, runs on its
//! retained data: no second restore over it, and no failure for the missing
//! backup. A new database asking for that backup still fails on it.

use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::{Value, json};
use servicedb::api::database_backup::BackupPhase;
use servicedb::api::{DatabaseBackup, Phase, ServiceDatabase};

use crate::support::backups::condition;
use crate::support::backups::manifest;
use crate::support::backups::manual_backup;
use crate::support::backups::succeed;
use crate::support::backups::wait_backup;
use crate::support::backups::wait_condition;
use crate::support::harness::{Env, wait_for};
use crate::support::objects::get_when;
use crate::support::objects::set_ready_replicas;
use crate::support::objects::wait_phase;

async fn apply(env: &Env, sdb: &Value) {
    let name = sdb["metadata"]["name"].as_str().expect("name");
    env.api::<ServiceDatabase>()
        .patch(
            name,
            &PatchParams::apply("servicedb-e2e").force(),
            &Patch::Apply(sdb),
        )
        .await
        .expect("applying the ServiceDatabase");
}

fn restored_from(name: &str, backup: &str) -> Value {
    json!({
        "apiVersion": "servicedb.dev/v1alpha1", "kind": "ServiceDatabase",
        "metadata": {"name": name},
        "spec": {"engine": "Postgres", "owner": {"podSelector": {"matchLabels": {"app": "orders"}}},
            "deletionPolicy": "Retain", "bootstrap": {"fromBackup": {"name": backup}}}
    })
}

#[tokio::test]
async fn a_restored_database_recreated_from_git_keeps_its_data_after_its_backup_aged_out() {
    let env = Env::new("gitops-restore").await;
    let source = json!({
        "apiVersion": "servicedb.dev/v1alpha1", "kind": "ServiceDatabase",
        "metadata": {"name": "orders"},
        "spec": {"engine": "Postgres", "owner": {"podSelector": {"matchLabels": {"app": "orders"}}},
            "backup": {"schedule": "0 2 * * *", "destination": {"s3": {"bucket": "backups",
                "endpoint": "http://minio.storage:9000", "region": "eu-1", "credentialsSecret": "s3-creds"}}}}
    });
    apply(&env, &source).await;
    manual_backup(&env, "golden", "orders").await;
    succeed(&env, "golden-backup", manifest("golden", 77)).await;
    wait_backup(&env, "golden", BackupPhase::Completed).await;

    // The first life: restored once, then Ready.
    let sdbs: Api<ServiceDatabase> = env.api();
    let sts: Api<StatefulSet> = env.api();
    let jobs: Api<Job> = env.api();
    let pvcs: Api<PersistentVolumeClaim> = env.api();
    let manifest_in_git = restored_from("orders-copy", "golden");
    apply(&env, &manifest_in_git).await;
    get_when(&sts, "orders-copy-db").await;
    // The volume the StatefulSet controller makes from the claim template.
    let pvc: PersistentVolumeClaim = serde_json::from_value(json!({
        "metadata": {"name": "data-orders-copy-db-0", "labels": {
            "servicedb.dev/instance": "orders-copy", "app.kubernetes.io/managed-by": "servicedb",
            "app.kubernetes.io/component": "database", "app.kubernetes.io/name": "postgres"}},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}
    }))
    .expect("pvc");
    let pvc = pvcs
        .create(&PostParams::default(), &pvc)
        .await
        .expect("create pvc");
    set_ready_replicas(&sts, "orders-copy-db", 1).await;
    succeed(&env, "orders-copy-db-restore", json!({})).await;
    wait_phase(&sdbs, "orders-copy", Phase::Ready).await;
    wait_condition(&env, "orders-copy", "Restored", "True", "Restored").await;
    let first_uid = sdbs.get("orders-copy").await.expect("sdb").uid();

    // Deleted (the volume is retained), and the backup ages out.
    sdbs.delete("orders-copy", &DeleteParams::default())
        .await
        .expect("delete");
    wait_for(
        "orders-copy to be gone",
        Duration::from_secs(30),
        || async {
            sdbs.get_opt("orders-copy")
                .await
                .ok()?
                .is_none()
                .then_some(())
        },
    )
    .await;
    let backups: Api<DatabaseBackup> = env.api();
    backups
        .delete("golden", &DeleteParams::default())
        .await
        .expect("delete the backup");
    // Deleted by hand, its archive is kept (retainArchivesOnDelete): the
    // record goes at once, without a deletion Job.
    wait_for("golden to be gone", Duration::from_secs(30), || async {
        backups
            .get_opt("golden")
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await;
    assert!(
        jobs.get_opt("orders-copy-db-restore")
            .await
            .expect("get")
            .is_none(),
        "the first restore Job went with its ServiceDatabase"
    );

    // Recreated from the same manifest: a new object on the retained data.
    apply(&env, &manifest_in_git).await;
    get_when(&sts, "orders-copy-db").await;
    let recreated = wait_condition(&env, "orders-copy", "Restored", "True", "DataRetained").await;
    assert_ne!(recreated.uid(), first_uid, "a new ServiceDatabase");
    let (_, _, message) = condition(&recreated, "Restored").expect("Restored");
    assert!(
        message.contains("data-orders-copy-db-0") && message.contains("golden"),
        "{message}"
    );
    assert_eq!(
        condition(&recreated, "SpecValid").map(|c| (c.0, c.1)),
        Some(("True".into(), "Valid".into())),
        "the missing backup is not an error"
    );
    set_ready_replicas(&sts, "orders-copy-db", 1).await;
    wait_phase(&sdbs, "orders-copy", Phase::Ready).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        jobs.get_opt("orders-copy-db-restore")
            .await
            .expect("get")
            .is_none(),
        "nothing is restored over the retained data"
    );
    assert_eq!(
        pvcs.get("data-orders-copy-db-0").await.expect("pvc").uid(),
        pvc.uid(),
        "the same volume"
    );

    // A new database asking for the aged-out backup still says it is missing.
    apply(&env, &restored_from("orders-fresh", "golden")).await;
    let fresh = wait_condition(&env, "orders-fresh", "SpecValid", "False", "BackupNotFound").await;
    assert_eq!(
        condition(&fresh, "Stalled").map(|c| c.0),
        Some("True".into()),
        "kstatus readers see it stalled"
    );
}

/// The same on a shared server: the ServiceDatabase re-applied after a
/// `Retain` deletion takes over the database its predecessor left there
/// (real PostgreSQL), and restores nothing over it, though its backup aged
/// out.
#[tokio::test]
async fn a_restored_shared_database_recreated_from_git_keeps_its_data() {
    use crate::support::shared_servers::connect;
    use crate::support::shared_servers::server;
    let env = Env::new("gitops-restore-shared").await;
    let pg = crate::support::servers::Postgres::start_new();
    server(&env, "pg", &pg, json!({"from": "Same"})).await;
    let source = json!({
        "apiVersion": "servicedb.dev/v1alpha1", "kind": "ServiceDatabase",
        "metadata": {"name": "orders"},
        "spec": {"engine": "Postgres", "owner": {"podSelector": {"matchLabels": {"app": "orders"}}},
            "backup": {"schedule": "0 2 * * *", "destination": {"s3": {"bucket": "backups",
                "endpoint": "http://minio.storage:9000", "region": "eu-1", "credentialsSecret": "s3-creds"}}}}
    });
    apply(&env, &source).await;
    manual_backup(&env, "golden", "orders").await;
    succeed(&env, "golden-backup", manifest("golden", 77)).await;
    wait_backup(&env, "golden", BackupPhase::Completed).await;

    let mut manifest_in_git = restored_from("orders-copy", "golden");
    manifest_in_git["spec"]["isolation"] = json!("Database");
    manifest_in_git["spec"]["serverRef"] = json!({"name": "pg"});
    let sdbs: Api<ServiceDatabase> = env.api();
    let jobs: Api<Job> = env.api();
    apply(&env, &manifest_in_git).await;
    get_when(&jobs, "orders-copy-db-restore").await;
    succeed(&env, "orders-copy-db-restore", json!({})).await;
    wait_phase(&sdbs, "orders-copy", Phase::Ready).await;
    wait_condition(&env, "orders-copy", "Restored", "True", "Restored").await;
    let first_uid = sdbs.get("orders-copy").await.expect("sdb").uid();
    let (user, password, database) =
        crate::support::objects::credentials(&get_when(&env.api(), "orders-copy-db").await);
    connect(pg.port, &user, &password, &database)
        .await
        .expect("logs in")
        .batch_execute("CREATE TABLE restored (id int); INSERT INTO restored VALUES (7)")
        .await
        .expect("writes");

    sdbs.delete("orders-copy", &DeleteParams::default())
        .await
        .expect("delete");
    wait_for(
        "orders-copy to be gone",
        Duration::from_secs(30),
        || async {
            sdbs.get_opt("orders-copy")
                .await
                .ok()?
                .is_none()
                .then_some(())
        },
    )
    .await;
    let backups: Api<DatabaseBackup> = env.api();
    backups
        .delete("golden", &DeleteParams::default())
        .await
        .expect("delete the backup");
    wait_for("golden to be gone", Duration::from_secs(30), || async {
        backups
            .get_opt("golden")
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await;

    apply(&env, &manifest_in_git).await;
    let recreated = wait_condition(&env, "orders-copy", "Restored", "True", "DataRetained").await;
    assert_ne!(recreated.uid(), first_uid, "a new ServiceDatabase");
    let (_, _, message) = condition(&recreated, "Restored").expect("Restored");
    assert!(
        message.contains(&format!("database {database}")) && message.contains("golden"),
        "{message}"
    );
    wait_phase(&sdbs, "orders-copy", Phase::Ready).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        jobs.get_opt("orders-copy-db-restore")
            .await
            .expect("get")
            .is_none(),
        "nothing is restored over the retained data"
    );
    let n: i64 = connect(pg.port, &user, &password, &database)
        .await
        .expect("the same login and password work")
        .query_one("SELECT id FROM restored", &[])
        .await
        .expect("the data of the first life is there")
        .get::<_, i32>(0)
        .into();
    assert_eq!(n, 7);
    // Still so on later passes: the status keeps it.
    let again = sdbs.get("orders-copy").await.expect("sdb");
    assert_eq!(
        condition(&again, "Restored").map(|c| c.1),
        Some("DataRetained".into())
    );
}
