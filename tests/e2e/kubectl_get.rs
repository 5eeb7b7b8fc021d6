//! `kubectl get` as on-call runs it, against the real API server: the short
//! names `dbs`, `dbb` and `sdb`, and columns that answer "is it up, what
//! runs, when was the last backup, how big" without `-o yaml`.

use crate::support::cli::{kubectl, table};
use std::process::Command;
use std::time::Duration;

use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::json;
use servicedb::api::database_backup::BackupPhase;
use servicedb::api::{DatabaseClass, DatabaseServer, Phase, ServiceDatabase};

use crate::support::backups::manifest;
use crate::support::backups::manual_backup;
use crate::support::backups::succeed;
use crate::support::backups::wait_backup;
use crate::support::harness::{Env, wait_for};
use crate::support::objects::wait_phase;
use crate::support::servers::Postgres;
use crate::support::shared_servers::server;

/// The table `kubectl get <what>` prints, as rows of (header, cell); cells
/// are cut at the headers' columns, since headers may hold spaces.
fn get(ns: &str, what: &str) -> Vec<Vec<(String, String)>> {
    let out = Command::new(kubectl())
        .args(["get", what, "-n", ns])
        .output()
        .expect("running kubectl");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "kubectl get {what}: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    table(&text)
}

fn headers(table: &[Vec<(String, String)>]) -> Vec<&str> {
    table[0].iter().map(|(h, _)| h.as_str()).collect()
}

fn cell<'a>(row: &'a [(String, String)], header: &str) -> &'a str {
    row.iter()
        .find(|(h, _)| h == header)
        .map(|(_, c)| c.as_str())
        .unwrap_or_else(|| panic!("no column {header} in {row:?}"))
}

/// kubectl's age of something that happened within the test: `12s`, `1m5s`.
fn is_recent_age(age: &str) -> bool {
    let age = age.trim_end_matches('s');
    !age.is_empty()
        && age
            .split('m')
            .all(|p| p.chars().all(|c| c.is_ascii_digit()))
}

#[tokio::test]
async fn kubectl_get_shows_servers_backups_and_databases_at_a_glance() {
    let env = Env::new("kubectl-get").await;
    let pg = Postgres::start_new();
    server(&env, "shared-pg", &pg, json!({"from": "Same"})).await;
    let orders = json!({"apiVersion": "servicedb.dev/v1alpha1", "kind": "ServiceDatabase",
        "metadata": {"name": "orders"},
        "spec": {"engine": "Postgres", "isolation": "Database",
                 "serverRef": {"name": "shared-pg", "namespace": env.ns},
                 "owner": {"podSelector": {"matchLabels": {"app": "orders"}}},
                 "backup": {"schedule": "0 2 * * *",
                    "destination": {"s3": {"bucket": "backups", "endpoint": "http://minio.storage:9000",
                        "region": "eu-1", "credentialsSecret": "s3-creds"}}}}});
    let sdbs: Api<ServiceDatabase> = env.api();
    sdbs.patch(
        "orders",
        &PatchParams::apply("servicedb-e2e"),
        &Patch::Apply(&orders),
    )
    .await
    .expect("orders");
    wait_phase(&sdbs, "orders", Phase::Ready).await;

    // A backup taken by hand, run to completion as the kubelet would report it.
    manual_backup(&env, "before-upgrade", "orders").await;
    succeed(
        &env,
        "before-upgrade-backup",
        manifest("before-upgrade", 5_767_168),
    )
    .await;
    wait_backup(&env, "before-upgrade", BackupPhase::Completed).await;
    let ready = wait_for("orders' lastBackup", Duration::from_secs(30), || async {
        let sdb = sdbs.get("orders").await.ok()?;
        sdb.status.as_ref()?.last_backup.as_ref()?;
        Some(sdb)
    })
    .await;
    let reason = ready
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
        .map(|c| c.reason.clone())
        .expect("a Ready condition");

    // The server's status is its own controller's (counts are debounced):
    // not necessarily written by the time its tenant is Ready.
    let servers_api: Api<DatabaseServer> = env.api();
    wait_for("the server's status", Duration::from_secs(30), || async {
        let status = servers_api.get("shared-pg").await.ok()?.status?;
        (status.mode.is_some() && status.databases == Some(1)).then_some(())
    })
    .await;
    let servers = get(&env.ns, "dbs");
    assert_eq!(
        headers(&servers),
        [
            "NAME",
            "MODE",
            "ENGINE",
            "VERSION",
            "READY",
            "DATABASES",
            "AGE"
        ]
    );
    let row = &servers[0];
    assert_eq!(cell(row, "NAME"), "shared-pg");
    assert_eq!(cell(row, "MODE"), "External");
    assert_eq!(cell(row, "ENGINE"), "Postgres");
    assert_eq!(cell(row, "VERSION"), pg.version);
    assert_eq!(cell(row, "READY"), "True");
    assert_eq!(cell(row, "DATABASES"), "1");

    let backups = get(&env.ns, "dbb");
    assert_eq!(
        headers(&backups),
        [
            "NAME",
            "DATABASE",
            "TRIGGER",
            "PHASE",
            "SIZE",
            "VERIFIED",
            "COMPLETED",
            "AGE"
        ]
    );
    let row = &backups[0];
    assert_eq!(cell(row, "NAME"), "before-upgrade");
    assert_eq!(cell(row, "DATABASE"), "orders");
    assert_eq!(cell(row, "TRIGGER"), "Manual");
    assert_eq!(cell(row, "PHASE"), "Completed");
    assert_eq!(cell(row, "SIZE"), "5.5 MiB");
    assert!(is_recent_age(cell(row, "COMPLETED")), "{row:?}");

    let databases = get(&env.ns, "sdb");
    assert_eq!(
        headers(&databases),
        [
            "NAME",
            "ENGINE",
            "VERSION",
            "ISOLATION",
            "PHASE",
            "REASON",
            "SECRET",
            "LAST BACKUP",
            "AGE"
        ]
    );
    let row = &databases[0];
    assert_eq!(cell(row, "NAME"), "orders");
    assert_eq!(cell(row, "PHASE"), "Ready");
    assert_eq!(cell(row, "REASON"), reason);
    assert!(!reason.is_empty());
    assert_eq!(cell(row, "SECRET"), "orders-db");
    assert!(is_recent_age(cell(row, "LAST BACKUP")), "{row:?}");
}

/// `kubectl explain <kind>` as the API server serves it from the CRDs: the
/// kind's own text written for people, not a generated placeholder, and the
/// short names kubectl knows.
#[tokio::test]
async fn kubectl_explain_describes_every_kind_and_short_names_resolve() {
    let env = Env::new("kubectl-explain").await;
    for (kind, short, words) in [
        ("servicedatabase", "sdb", "private database"),
        ("databaseclass", "dbc", "approved engine"),
        ("databaseserver", "dbs", "many services"),
        ("databasebackup", "dbb", "one backup"),
    ] {
        let text = wait_for(
            &format!("kubectl explain {kind}"),
            Duration::from_secs(30),
            || async {
                let out = Command::new(kubectl())
                    .args(["explain", kind])
                    .output()
                    .ok()?;
                out.status
                    .success()
                    .then(|| String::from_utf8_lossy(&out.stdout).to_string())
            },
        )
        .await;
        assert!(text.contains(words), "kubectl explain {kind}:\n{text}");
        assert!(
            !text.contains("Auto-generated"),
            "kubectl explain {kind}:\n{text}"
        );
        assert!(text.contains(&format!("short name {short}")), "{text}");
        let out = Command::new(kubectl())
            .args(["get", short, "-n", &env.ns])
            .output()
            .expect("kubectl get");
        assert!(
            out.status.success(),
            "kubectl get {short}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // dbc: what a class allows in effect, joined, and its default version.
    let name = format!("{}-pg", env.ns);
    let class: DatabaseClass = serde_json::from_value(json!({
        "apiVersion": "servicedb.dev/v1alpha1", "kind": "DatabaseClass",
        "metadata": {"name": name}, "spec": {"engine": "Postgres", "versions": ["16", "17"]}
    }))
    .expect("class");
    let classes: Api<DatabaseClass> = Api::all(env.client.clone());
    classes
        .patch(
            &name,
            &PatchParams::apply("servicedb-e2e"),
            &Patch::Apply(&class),
        )
        .await
        .expect("class");
    let row = wait_for(
        "dbc shows the versions",
        Duration::from_secs(30),
        || async {
            get(&env.ns, "dbc")
                .into_iter()
                .find(|row| cell(row, "NAME") == name && cell(row, "VERSIONS") == "16, 17")
        },
    )
    .await;
    assert_eq!(cell(&row, "DEFAULT VERSION"), "17");
    assert_eq!(cell(&row, "ENGINE"), "Postgres");
    classes
        .delete(&name, &Default::default())
        .await
        .expect("delete class");
}
