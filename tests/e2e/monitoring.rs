//! Monitoring on the API side: the operator's per-ServiceDatabase gauges on
//! its /metrics.

use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use kube::api::{DeleteParams, Patch, PatchParams};
use serde_json::{Value, json};
use servicedb::api::database_backup::BackupPhase;
use servicedb::api::{Phase, ServiceDatabase};

use crate::backup::{manifest, manual_backup, succeed, wait_backup};
use crate::dedicated::{get_when, set_ready_replicas, wait_phase};
use crate::harness::{Env, http_get, wait_for};

fn orders() -> Value {
    json!({
        "apiVersion": "servicedb.dev/v1alpha1", "kind": "ServiceDatabase",
        "metadata": {"name": "orders"},
        "spec": {
            "engine": "Postgres",
            "owner": {"podSelector": {"matchLabels": {"app": "orders", "team": "payments"}}},
            "deletionPolicy": "Delete",
            "backup": {
                "schedule": "0 2 * * *",
                "destination": {"s3": {"bucket": "backups", "endpoint": "http://minio.storage:9000",
                    "region": "eu-1", "credentialsSecret": "s3-creds"}}
            }
        }
    })
}

/// The value of the operator's sample `series` (name and labels exactly as
/// exported), `None` while it has no such series.
async fn sample(env: &Env, series: &str) -> Option<f64> {
    let body = http_get(env.operator.http, "/metrics").await?;
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.parse().ok())
}

/// Every exported line that names this test's ServiceDatabase `name`.
async fn lines_of(env: &Env, name: &str) -> Vec<String> {
    let needle = format!(r#"namespace="{}",name="{name}""#, env.ns);
    http_get(env.operator.http, "/metrics")
        .await
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(&needle))
        .map(str::to_owned)
        .collect()
}

async fn wait_sample(env: &Env, series: &str, want: f64) {
    wait_for(
        &format!("{series} = {want}"),
        Duration::from_secs(30),
        || async { (sample(env, series).await == Some(want)).then_some(()) },
    )
    .await;
}

#[tokio::test]
async fn the_operator_exports_each_databases_phase_backup_and_credentials_until_it_is_deleted() {
    let env = Env::new("db-metrics").await;
    let sdbs = env.api::<ServiceDatabase>();
    sdbs.patch(
        "orders",
        &PatchParams::apply("servicedb-e2e").force(),
        &Patch::Apply(&orders()),
    )
    .await
    .expect("applying orders");
    let labels = format!(r#"namespace="{}",name="orders",engine="postgres""#, env.ns);

    // Provisioning, then Ready: one phase series at a time.
    let provisioning = wait_phase(&sdbs, "orders", Phase::Provisioning).await;
    wait_sample(
        &env,
        &format!(r#"servicedb_database_phase{{{labels},phase="Provisioning"}}"#),
        1.0,
    )
    .await;
    wait_sample(
        &env,
        &format!(
            r#"servicedb_database_info{{{labels},isolation="Dedicated",owner="app=orders,team=payments"}}"#
        ),
        1.0,
    )
    .await;
    let issued = provisioning
        .status
        .as_ref()
        .and_then(|s| s.credentials_rotated_at.clone())
        .expect("credentialsRotatedAt");
    wait_sample(
        &env,
        &format!("servicedb_database_credentials_issued_timestamp_seconds{{{labels}}}"),
        issued.0.as_second() as f64,
    )
    .await;
    assert_eq!(
        sample(
            &env,
            &format!("servicedb_database_last_backup_timestamp_seconds{{{labels}}}")
        )
        .await,
        None,
        "no backup yet, no backup timestamp"
    );

    let statefulsets = env.api::<StatefulSet>();
    get_when(&statefulsets, "orders-db").await;
    set_ready_replicas(&statefulsets, "orders-db", 1).await;
    wait_phase(&sdbs, "orders", Phase::Ready).await;
    wait_sample(
        &env,
        &format!(r#"servicedb_database_phase{{{labels},phase="Ready"}}"#),
        1.0,
    )
    .await;
    let phases: Vec<String> = lines_of(&env, "orders")
        .await
        .into_iter()
        .filter(|l| l.starts_with("servicedb_database_phase{"))
        .collect();
    assert_eq!(phases.len(), 1, "one phase series: {phases:?}");

    // A completed backup sets the timestamp of status.lastBackup.
    manual_backup(&env, "first", "orders").await;
    succeed(&env, "first-backup", manifest("first", 2048)).await;
    wait_backup(&env, "first", BackupPhase::Completed).await;
    let sdb = wait_for("lastBackup", Duration::from_secs(30), || async {
        let sdb = sdbs.get("orders").await.ok()?;
        sdb.status
            .as_ref()?
            .last_backup
            .as_ref()?
            .completed_at
            .as_ref()?;
        Some(sdb)
    })
    .await;
    let completed = sdb
        .status
        .and_then(|s| s.last_backup)
        .and_then(|b| b.completed_at)
        .expect("completedAt");
    wait_sample(
        &env,
        &format!("servicedb_database_last_backup_timestamp_seconds{{{labels}}}"),
        completed.0.as_second() as f64,
    )
    .await;
    assert_eq!(
        sample(
            &env,
            &format!("servicedb_database_verification_failed{{{labels}}}")
        )
        .await,
        Some(0.0)
    );

    // No secret value in any of its series.
    let secret = get_when(
        &env.api::<k8s_openapi::api::core::v1::Secret>(),
        "orders-db",
    )
    .await;
    let password = crate::dedicated::secret_value(&secret, "password");
    let body = http_get(env.operator.http, "/metrics")
        .await
        .unwrap_or_default();
    assert!(
        !password.is_empty() && !body.contains(&password),
        "a password in /metrics"
    );

    sdbs.delete("orders", &DeleteParams::default())
        .await
        .expect("deleting orders");
    wait_for(
        "orders gone from the API",
        Duration::from_secs(30),
        || async { sdbs.get_opt("orders").await.ok()?.is_none().then_some(()) },
    )
    .await;
    let left = wait_for("orders' series gone", Duration::from_secs(30), || async {
        let left = lines_of(&env, "orders").await;
        left.is_empty().then_some(left)
    })
    .await;
    assert!(left.is_empty(), "{left:?}");
}
