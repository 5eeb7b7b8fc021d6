//! Argo CD's health and Flux's kstatus of servicedb's four kinds, over the
//! objects as the API server returns them while the operator drives them
//! through their states: a DatabaseClass; DatabaseServers reachable,
//! unreachable, invalid, and lost after it answered (real PostgreSQL);
//! ServiceDatabases Ready on it, provisioning, with a spec not yet observed,
//! invalid, Ready with failing backups, and with a failed restore;
//! DatabaseBackups running, completed and failed. With
//! `SERVICEDB_UPDATE_FIXTURES=1` each object is saved under
//! tests/fixtures/gitops/ for the fast test (tests/gitops_health.rs).

use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::batch::v1::Job;
use kube::api::{Patch, PatchParams};
use kube::core::DynamicObject;
use kube::discovery::ApiResource;
use kube::{Api, Resource};
use serde_json::{Value, json};
use servicedb::api::database_backup::BackupPhase;
use servicedb::api::{DatabaseBackup, DatabaseClass, DatabaseServer, Phase, ServiceDatabase};

use crate::gitops_common::{argocd_health, expected, fixtures_dir, kstatus, trimmed};
use crate::support::backups::agent_pod;
use crate::support::backups::finish_job;
use crate::support::backups::manifest;
use crate::support::backups::manual_backup;
use crate::support::backups::succeed;
use crate::support::backups::wait_backup;
use crate::support::harness::{Env, free_port, wait_for};
use crate::support::objects::get_when;
use crate::support::objects::set_ready_replicas;
use crate::support::objects::wait_phase;
use crate::support::servers::Postgres;
use crate::support::shared_servers::server;
use crate::support::shared_servers::server_of;

/// The object as JSON, straight from the API server.
async fn fetch<K>(env: &Env, name: &str) -> Value
where
    K: Resource<DynamicType = ()>,
{
    let ar = ApiResource::erase::<K>(&());
    let api: Api<DynamicObject> = if K::kind(&()) == "DatabaseClass" {
        Api::all_with(env.client.clone(), &ar)
    } else {
        Api::namespaced_with(env.client.clone(), &env.ns, &ar)
    };
    let obj = api.get(name).await.expect("fetching the object");
    trimmed(serde_json::to_value(obj).expect("json"))
}

/// Asserts what Argo CD and kstatus make of the object, and saves it as the
/// fixture `fixture` when asked to.
async fn check<K>(env: &Env, name: &str, fixture: &str)
where
    K: Resource<DynamicType = ()>,
{
    let obj = fetch::<K>(env, name).await;
    let (health, kstatus_want) = expected(fixture);
    let (status, message) = argocd_health(&obj);
    assert_eq!(
        status, health,
        "Argo CD health of {fixture}: {message}\n{obj:#}"
    );
    assert_eq!(kstatus(&obj), kstatus_want, "kstatus of {fixture}\n{obj:#}");
    if std::env::var("SERVICEDB_UPDATE_FIXTURES").as_deref() == Ok("1") {
        let path = fixtures_dir().join(format!("{fixture}.json"));
        let text = serde_json::to_string_pretty(&obj).expect("json") + "\n";
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
}

async fn condition_is(api: &Api<DynamicObject>, name: &str, t: &str, status: &str) -> Option<()> {
    let obj = serde_json::to_value(api.get(name).await.ok()?).ok()?;
    obj["status"]["conditions"]
        .as_array()?
        .iter()
        .any(|c| c["type"] == t && c["status"] == status)
        .then_some(())
}

async fn wait_server_ready(env: &Env, name: &str, status: &str) {
    let api: Api<DynamicObject> = Api::namespaced_with(
        env.client.clone(),
        &env.ns,
        &ApiResource::erase::<DatabaseServer>(&()),
    );
    wait_for(
        &format!("DatabaseServer {name} Ready={status}"),
        Duration::from_secs(60),
        || condition_is(&api, name, "Ready", status),
    )
    .await;
}

async fn apply_sdb(env: &Env, sdb: Value) {
    let name = sdb["metadata"]["name"].as_str().expect("name").to_string();
    env.api::<ServiceDatabase>()
        .patch(
            &name,
            &PatchParams::apply("servicedb-e2e").force(),
            &Patch::Apply(&sdb),
        )
        .await
        .expect("applying the ServiceDatabase");
}

fn sdb(name: &str, spec: Value) -> Value {
    let mut spec = spec;
    spec["owner"] = json!({"podSelector": {"matchLabels": {"app": name}}});
    json!({"apiVersion": "servicedb.dev/v1alpha1", "kind": "ServiceDatabase",
        "metadata": {"name": name}, "spec": spec})
}

#[tokio::test]
async fn argocd_health_and_kstatus_follow_every_kind_through_its_states() {
    let mut env = Env::new("gitops-health").await;

    let classes: Api<DatabaseClass> = Api::all(env.client.clone());
    let class = classes
        .list(&Default::default())
        .await
        .expect("classes")
        .items
        .into_iter()
        .next()
        .expect("the example classes");
    check::<DatabaseClass>(
        &env,
        &class.metadata.name.clone().unwrap_or_default(),
        "databaseclass",
    )
    .await;

    // Servers: a real PostgreSQL, a port nobody listens on, a missing Secret.
    let mut pg = Postgres::start_new();
    server(&env, "shared-pg", &pg, json!({"from": "Same"})).await;
    wait_server_ready(&env, "shared-pg", "True").await;
    check::<DatabaseServer>(&env, "shared-pg", "databaseserver-ready").await;
    server_of(
        &env,
        "nowhere",
        "Postgres",
        free_port(),
        "postgres",
        "unused",
        json!({"from": "Same"}),
    )
    .await;
    wait_server_ready(&env, "nowhere", "False").await;
    check::<DatabaseServer>(&env, "nowhere", "databaseserver-unreachable").await;
    let invalid_server = json!({"apiVersion": "servicedb.dev/v1alpha1", "kind": "DatabaseServer",
        "metadata": {"name": "no-secret"},
        "spec": {"engine": "Postgres", "external": {"host": "127.0.0.1", "port": pg.port,
            "adminSecretRef": {"name": "no-such-secret"}}}});
    env.api::<DatabaseServer>()
        .patch(
            "no-secret",
            &PatchParams::apply("servicedb-e2e"),
            &Patch::Apply(&invalid_server),
        )
        .await
        .expect("server");
    wait_server_ready(&env, "no-secret", "False").await;
    check::<DatabaseServer>(&env, "no-secret", "databaseserver-invalid").await;

    // ServiceDatabases.
    let sdbs: Api<ServiceDatabase> = env.api();
    apply_sdb(
        &env,
        sdb(
            "orders",
            json!({"engine": "Postgres", "isolation": "Database",
        "serverRef": {"name": "shared-pg", "namespace": env.ns}}),
        ),
    )
    .await;
    wait_phase(&sdbs, "orders", Phase::Ready).await;
    check::<ServiceDatabase>(&env, "orders", "servicedatabase-shared-ready").await;

    apply_sdb(
        &env,
        sdb(
            "wrong",
            json!({"engine": "Postgres", "className": "no-such-class"}),
        ),
    )
    .await;
    wait_phase(&sdbs, "wrong", Phase::Failed).await;
    check::<ServiceDatabase>(&env, "wrong", "servicedatabase-invalid").await;

    let sts: Api<StatefulSet> = env.api();
    apply_sdb(&env, sdb("cart", json!({"engine": "Postgres"}))).await;
    get_when(&sts, "cart-db").await;
    wait_phase(&sdbs, "cart", Phase::Provisioning).await;
    check::<ServiceDatabase>(&env, "cart", "servicedatabase-provisioning").await;
    // A spec edit the operator has not seen yet.
    env.operator.stop();
    apply_sdb(
        &env,
        sdb(
            "cart",
            json!({"engine": "Postgres", "storage": {"size": "3Gi"}}),
        ),
    )
    .await;
    check::<ServiceDatabase>(&env, "cart", "servicedatabase-spec-not-observed").await;
    env.operator.restart();

    // Backups of a dedicated database: running, completed, failed; the
    // database Ready with failing backups.
    apply_sdb(
        &env,
        sdb(
            "ledger",
            json!({"engine": "Postgres", "backup": {"schedule": "0 2 * * *",
        "destination": {"s3": {"bucket": "backups", "endpoint": "http://minio.storage:9000",
            "region": "eu-1", "credentialsSecret": "s3-creds"}}}}),
        ),
    )
    .await;
    get_when(&sts, "ledger-db").await;
    set_ready_replicas(&sts, "ledger-db", 1).await;
    wait_phase(&sdbs, "ledger", Phase::Ready).await;
    // A failed run first: the database, Ready, has unhealthy backups (the
    // played Job reports a start in the past, so a run that failed after a
    // success would count as older than it).
    manual_backup(&env, "broken", "ledger").await;
    get_when(&env.api::<Job>(), "broken-backup").await;
    agent_pod(
        &env,
        "broken-backup",
        1,
        r#"{"error":"pg_dump: too many connections"}"#,
    )
    .await;
    finish_job(&env, "broken-backup", false).await;
    wait_backup(&env, "broken", BackupPhase::Failed).await;
    check::<DatabaseBackup>(&env, "broken", "databasebackup-failed").await;
    let api: Api<DynamicObject> = Api::namespaced_with(
        env.client.clone(),
        &env.ns,
        &ApiResource::erase::<ServiceDatabase>(&()),
    );
    wait_for(
        "ledger's backups unhealthy",
        Duration::from_secs(30),
        || condition_is(&api, "ledger", "BackupHealthy", "False"),
    )
    .await;
    check::<ServiceDatabase>(&env, "ledger", "servicedatabase-backups-failing").await;

    manual_backup(&env, "nightly", "ledger").await;
    get_when(&env.api::<Job>(), "nightly-backup").await;
    env.api::<Job>()
        .patch_status(
            "nightly-backup",
            &PatchParams::default(),
            &Patch::Merge(&json!({"status": {"startTime": "2026-01-01T02:00:00Z", "active": 1}})),
        )
        .await
        .expect("Job running");
    wait_backup(&env, "nightly", BackupPhase::Running).await;
    check::<DatabaseBackup>(&env, "nightly", "databasebackup-running").await;
    succeed(&env, "nightly-backup", manifest("nightly", 4096)).await;
    wait_backup(&env, "nightly", BackupPhase::Completed).await;
    check::<DatabaseBackup>(&env, "nightly", "databasebackup-completed").await;

    // A restore of that backup that failed waits for its Job to be deleted.
    apply_sdb(
        &env,
        sdb(
            "ledger-copy",
            json!({"engine": "Postgres", "bootstrap": {"fromBackup": {"name": "nightly"}}}),
        ),
    )
    .await;
    get_when(&sts, "ledger-copy-db").await;
    set_ready_replicas(&sts, "ledger-copy-db", 1).await;
    get_when(&env.api::<Job>(), "ledger-copy-db-restore").await;
    agent_pod(
        &env,
        "ledger-copy-db-restore",
        1,
        r#"{"error":"pg_restore: the archive is corrupt"}"#,
    )
    .await;
    finish_job(&env, "ledger-copy-db-restore", false).await;
    wait_for("ledger-copy stalled", Duration::from_secs(30), || {
        condition_is(&api, "ledger-copy", "Stalled", "True")
    })
    .await;
    check::<ServiceDatabase>(&env, "ledger-copy", "servicedatabase-restore-failed").await;

    // A server that answered before and does not now.
    pg.stop();
    tokio::time::sleep(Duration::from_secs(3)).await;
    env.api::<DatabaseServer>()
        .patch(
            "shared-pg",
            &PatchParams::default(),
            &Patch::Merge(&json!({"metadata": {"annotations": {"e2e/poke": "1"}}})),
        )
        .await
        .expect("poke the server");
    wait_server_ready(&env, "shared-pg", "False").await;
    check::<DatabaseServer>(&env, "shared-pg", "databaseserver-lost").await;
}
