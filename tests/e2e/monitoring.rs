//! Monitoring on the API side: the operator's per-ServiceDatabase gauges on
//! its /metrics, and the Prometheus Operator objects of a monitored database
//! with the Prometheus Operator's CRDs installed (the pinned copy in
//! tests/fixtures/prometheus-operator-crds) and without them.

use crate::support::monitoring::dynamic;
use crate::support::monitoring::install_monitoring_crds;
use crate::support::monitoring::monitored;
use crate::support::monitoring::orders;
use crate::support::monitoring::remove_monitoring_crds;
use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use kube::api::{DeleteParams, Patch, PatchParams};
use serde_json::{Value, json};
use servicedb::api::database_backup::BackupPhase;
use servicedb::api::{Phase, ServiceDatabase};

use crate::support::backups::condition;
use crate::support::backups::manifest;
use crate::support::backups::manual_backup;
use crate::support::backups::succeed;
use crate::support::backups::wait_backup;
use crate::support::harness::{Env, http_get, wait_for};
use crate::support::objects::get_when;
use crate::support::objects::set_ready_replicas;
use crate::support::objects::wait_phase;

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
    let password = crate::support::objects::secret_value(&secret, "password");
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

async fn apply_sdb(env: &Env, sdb: &Value) {
    env.api::<ServiceDatabase>()
        .patch(
            "orders",
            &PatchParams::apply("servicedb-e2e").force(),
            &Patch::Apply(sdb),
        )
        .await
        .expect("applying orders");
}

async fn wait_condition(env: &Env, status: &str, reason: &str) -> (String, String, String) {
    let sdbs = env.api::<ServiceDatabase>();
    wait_for(
        &format!("MonitoringConfigured {status} {reason}"),
        Duration::from_secs(30),
        || async {
            let sdb = sdbs.get("orders").await.ok()?;
            let c = condition(&sdb, "MonitoringConfigured")?;
            (c.0 == status && c.1 == reason).then_some(c)
        },
    )
    .await
}

#[tokio::test]
async fn without_the_prometheus_operator_a_monitored_database_is_ready_and_says_its_monitoring_objects_were_skipped()
 {
    let env = Env::new("mon-absent").await;
    remove_monitoring_crds(&env.client).await;
    apply_sdb(&env, &monitored()).await;
    let (_, _, message) = wait_condition(&env, "False", "PrometheusOperatorAbsent").await;
    assert!(
        message.contains("PrometheusRule") && message.contains("PodMonitor"),
        "{message}"
    );
    let statefulsets = env.api::<StatefulSet>();
    get_when(&statefulsets, "orders-db").await;
    set_ready_replicas(&statefulsets, "orders-db", 1).await;
    let sdb = wait_phase(&env.api::<ServiceDatabase>(), "orders", Phase::Ready).await;
    assert_eq!(
        condition(&sdb, "MonitoringConfigured").map(|c| c.1),
        Some("PrometheusOperatorAbsent".to_string()),
        "still skipped once Ready"
    );
    // Discovery, applying and pruning fail as `apply`.
    let errors = env
        .operator
        .metric(
            r#"servicedb_reconcile_errors_total{controller="servicedatabase",category="apply"}"#,
        )
        .await
        .unwrap_or(0.0);
    assert_eq!(errors, 0.0, "no reconcile failed for lack of the CRDs");
}

#[tokio::test]
async fn with_the_prometheus_operator_a_monitored_database_gets_its_rule_and_pod_monitor_until_monitoring_is_off()
 {
    let env = Env::new("mon-present").await;
    install_monitoring_crds(&env.client).await;
    apply_sdb(&env, &monitored()).await;
    let uid = get_when(&env.api::<ServiceDatabase>(), "orders")
        .await
        .metadata
        .uid
        .expect("uid");
    let (_, _, message) = wait_condition(&env, "True", "Applied").await;
    assert!(
        message.contains("PrometheusRule orders-db") && message.contains("PodMonitor orders-db"),
        "{message}"
    );

    // Accepted by the API server against the Prometheus Operator's schemas,
    // owned by the database.
    let rule = dynamic(&env, "PrometheusRule")
        .get("orders-db")
        .await
        .expect("rule");
    let monitor = dynamic(&env, "PodMonitor")
        .get("orders-db")
        .await
        .expect("monitor");
    for object in [&rule, &monitor] {
        let owners = object.metadata.owner_references.clone().unwrap_or_default();
        assert!(
            owners
                .iter()
                .any(|o| o.uid == uid && o.kind == "ServiceDatabase" && o.controller == Some(true)),
            "{owners:?}"
        );
    }
    let rules = rule.data["spec"]["groups"][0]["rules"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let alerts: Vec<&str> = rules.iter().filter_map(|r| r["alert"].as_str()).collect();
    assert_eq!(
        alerts,
        [
            "ServiceDatabaseInstanceDown",
            "ServiceDatabaseConnectionsNearLimit",
            "ServiceDatabaseStorageNearFull",
            "ServiceDatabaseBackupOverdue",
            "ServiceDatabaseVerificationFailed",
            "ServiceDatabaseVerificationOverdue",
            "ServiceDatabaseCredentialRotationOverdue",
        ]
    );
    for r in &rules {
        assert_eq!(r["labels"]["namespace"], env.ns.as_str(), "{r}");
        assert_eq!(r["labels"]["service_database"], "orders", "{r}");
        assert_eq!(r["labels"]["owner_team"], "payments", "{r}");
        assert_eq!(r["labels"]["owner_app"], "orders", "{r}");
        let runbook = r["annotations"]["runbook_url"].as_str().unwrap_or_default();
        assert!(runbook.contains("runbooks.md#servicedatabase"), "{r}");
    }
    // The live object's rules, as Prometheus would load them.
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("rules.yaml");
    std::fs::write(
        &file,
        serde_yaml::to_string(&json!({"groups": rule.data["spec"]["groups"]})).expect("yaml"),
    )
    .expect("writing rules");
    let out = std::process::Command::new("promtool")
        .args(["check", "rules"])
        .arg(&file)
        .output()
        .expect("promtool (hack/prereqs.sh promtool)");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let endpoint = &monitor.data["spec"]["podMetricsEndpoints"][0];
    assert_eq!(endpoint["port"], "metrics");
    assert_eq!(
        monitor.data["spec"]["selector"]["matchLabels"]["servicedb.dev/instance"],
        "orders"
    );

    // Monitoring off: both go, and the condition with them.
    let mut off = monitored();
    off["spec"]["monitoring"] = json!({"enabled": false});
    apply_sdb(&env, &off).await;
    wait_for(
        "monitoring objects removed",
        Duration::from_secs(30),
        || async {
            let rule = dynamic(&env, "PrometheusRule")
                .get_opt("orders-db")
                .await
                .ok()?;
            let monitor = dynamic(&env, "PodMonitor")
                .get_opt("orders-db")
                .await
                .ok()?;
            (rule.is_none() && monitor.is_none()).then_some(())
        },
    )
    .await;
    wait_for(
        "MonitoringConfigured removed",
        Duration::from_secs(30),
        || async {
            let sdb = env.api::<ServiceDatabase>().get("orders").await.ok()?;
            condition(&sdb, "MonitoringConfigured")
                .is_none()
                .then_some(())
        },
    )
    .await;

    // On again, then the database is deleted: they go with it.
    apply_sdb(&env, &monitored()).await;
    get_when(&dynamic(&env, "PrometheusRule"), "orders-db").await;
    env.api::<ServiceDatabase>()
        .delete("orders", &DeleteParams::default())
        .await
        .expect("deleting orders");
    wait_for(
        "monitoring objects deleted with the database",
        Duration::from_secs(30),
        || async {
            let rule = dynamic(&env, "PrometheusRule")
                .get_opt("orders-db")
                .await
                .ok()?;
            let monitor = dynamic(&env, "PodMonitor")
                .get_opt("orders-db")
                .await
                .ok()?;
            (rule.is_none() && monitor.is_none()).then_some(())
        },
    )
    .await;
    remove_monitoring_crds(&env.client).await;
}
