//! The alerts of [`super::monitoring`] through the real `promtool` (Debian's
//! `prometheus` package; `hack/prereqs.sh promtool`): every generated rule
//! group passes `promtool check rules`, and `promtool test rules` fires each
//! alert from synthetic series — and does not fire it from healthy ones —
//! with the owner's routing labels and its annotations.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use kube::Resource;
use serde_json::{Value, json};

use super::monitoring::{
    AlertRule, DEFAULT_RUNBOOK_URL, all_groups, build, record_groups, rule_groups, rules_file,
};
use super::*;
use crate::api::{DatabaseClass, Engine, ServiceDatabase};
use crate::model::database::validate;
use crate::model::server::ServerFacts;

use crate::test_support::fixture;

fn facts() -> OperatorFacts {
    OperatorFacts {
        image: "example.com/servicedb:1.0".into(),
        binary_path: "/usr/local/bin/servicedb".into(),
        namespace: "servicedb-system".into(),
        pod_labels: BTreeMap::new(),
        runbook_url: DEFAULT_RUNBOOK_URL.into(),
        scraper: Default::default(),
    }
}

/// `shop/orders` of `engine`, monitored, with backups, verification and
/// rotation, owned by pods `app=orders,team=payments,
/// app.kubernetes.io/part-of=shop`; on a shared server when `shared`.
fn orders(engine: Engine, shared: bool) -> (ValidatedDatabase, ServiceDatabase) {
    let mut class: DatabaseClass = fixture("class-postgres.yaml");
    let versions = match engine {
        Engine::Postgres => json!(["17"]),
        Engine::Redis => json!(["7.4"]),
        Engine::MongoDB => json!(["7.0"]),
    };
    let mut spec = serde_json::to_value(&class.spec).unwrap();
    spec["engine"] = json!(engine);
    spec["defaultVersion"] = versions[0].clone();
    spec["versions"] = versions;
    spec["allowedIsolations"] = Value::Null;
    class.spec = serde_json::from_value(spec).unwrap();

    let mut sdb: ServiceDatabase = fixture("sdb-orders.yaml");
    let mut spec = serde_json::to_value(&sdb.spec).unwrap();
    spec["engine"] = json!(engine);
    spec["version"] = Value::Null;
    spec["owner"] = json!({"podSelector": {"matchLabels": {
        "app": "orders", "team": "payments", "app.kubernetes.io/part-of": "shop"}}});
    spec["monitoring"] = json!({"enabled": true});
    spec["credentials"]["rotateEvery"] = json!("720h");
    spec["backup"] = json!({
        "schedule": "0 2 * * *",
        "destination": {"s3": {"bucket": "backups", "credentialsSecret": "s3"}},
    });
    if verifies(engine, shared) {
        spec["backup"]["verify"] = json!({"schedule": "0 4 * * 0"});
    }
    let server = shared.then(|| {
        spec["isolation"] = json!("Database");
        spec["serverRef"] = json!({"name": "shared", "namespace": "shop"});
        ServerFacts {
            engine,
            ..ServerFacts::example()
        }
    });
    sdb.spec = serde_json::from_value(spec).unwrap();
    let db = validate(&sdb, &class, server.as_ref()).unwrap();
    (db, sdb)
}

/// Verification on a shared server is Postgres only (validate.rs).
fn verifies(engine: Engine, shared: bool) -> bool {
    !shared || engine == Engine::Postgres
}

fn promtool(args: &[&str], dir: &Path) -> String {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "promtool: {e}; install it with `hack/prereqs.sh promtool` (Debian's prometheus)"
            )
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

/// The labels every alert of shop/orders carries: routing to its owner.
fn routing(engine: &str, severity: &str) -> BTreeMap<String, String> {
    [
        ("namespace", "shop"),
        ("service_database", "orders"),
        ("engine", engine),
        ("severity", severity),
        ("owner_app", "orders"),
        ("owner_team", "payments"),
        ("owner_app_kubernetes_io_part_of", "shop"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// How one alert is made to fire, and how it stays quiet.
struct Case {
    alert: &'static str,
    severity: &'static str,
    interval: &'static str,
    eval_time: &'static str,
    firing: Vec<(String, &'static str)>,
    healthy: Vec<(String, &'static str)>,
    /// Labels of the firing series that the alert keeps besides `routing`.
    kept: Vec<(&'static str, &'static str)>,
}

const OWN: &str = r#"namespace="shop",name="orders",engine="ENGINE""#;
const SCRAPED: &str = r#"namespace="shop",service_database="orders",pod="orders-db-0""#;

fn cases(engine: Engine, shared: bool) -> Vec<Case> {
    let own = OWN.replace("ENGINE", engine.as_str());
    let s = |metric: &str, extra: &str| format!("{metric}{{{SCRAPED}{extra}}}");
    let o = |metric: &str, extra: &str| format!("{metric}{{{own}{extra}}}");
    let mut cases = Vec::new();
    if shared {
        cases.push(Case {
            alert: "ServiceDatabaseInstanceDown",
            severity: "critical",
            interval: "1m",
            eval_time: "10m",
            firing: vec![(
                o("servicedb_database_phase", r#",phase="Degraded""#),
                "1x20",
            )],
            healthy: vec![(o("servicedb_database_phase", r#",phase="Ready""#), "1x20")],
            kept: vec![("name", "orders"), ("phase", "Degraded")],
        });
    } else {
        let up = match engine {
            Engine::Postgres => "pg_up",
            Engine::Redis => "redis_up",
            Engine::MongoDB => "mongodb_up",
        };
        cases.push(Case {
            alert: "ServiceDatabaseInstanceDown",
            severity: "critical",
            interval: "1m",
            eval_time: "10m",
            firing: vec![(s(up, ""), "0x20")],
            healthy: vec![(s(up, ""), "1x20"), (s("up", ""), "1x20")],
            kept: vec![("pod", "orders-db-0")],
        });
        let (firing, healthy) = match engine {
            Engine::Postgres => (
                vec![
                    (
                        s("pg_stat_database_numbackends", r#",datname="orders""#),
                        "70x30",
                    ),
                    (
                        s("pg_stat_database_numbackends", r#",datname="postgres""#),
                        "20x30",
                    ),
                    (s("pg_settings_max_connections", ""), "100x30"),
                ],
                vec![
                    (
                        s("pg_stat_database_numbackends", r#",datname="orders""#),
                        "50x30",
                    ),
                    (s("pg_settings_max_connections", ""), "100x30"),
                ],
            ),
            Engine::Redis => (
                vec![
                    (s("redis_connected_clients", ""), "9000x30"),
                    (s("redis_max_clients", ""), "10000x30"),
                ],
                vec![
                    (s("redis_connected_clients", ""), "10x30"),
                    (s("redis_config_maxclients", ""), "10000x30"),
                ],
            ),
            Engine::MongoDB => (
                vec![
                    (
                        s("mongodb_ss_connections", r#",conn_type="current""#),
                        "900x30",
                    ),
                    (
                        s("mongodb_ss_connections", r#",conn_type="available""#),
                        "100x30",
                    ),
                ],
                vec![
                    (
                        s("mongodb_ss_connections", r#",conn_type="current""#),
                        "10x30",
                    ),
                    (
                        s("mongodb_ss_connections", r#",conn_type="available""#),
                        "990x30",
                    ),
                ],
            ),
        };
        cases.push(Case {
            alert: "ServiceDatabaseConnectionsNearLimit",
            severity: "warning",
            interval: "1m",
            eval_time: "15m",
            firing,
            healthy,
            kept: vec![],
        });
        let claim = |metric: &str, pvc: &str| {
            format!(r#"{metric}{{namespace="shop",persistentvolumeclaim="{pvc}",node="n1"}}"#)
        };
        cases.push(Case {
            alert: "ServiceDatabaseStorageNearFull",
            severity: "warning",
            interval: "1m",
            eval_time: "20m",
            firing: vec![
                (
                    claim("kubelet_volume_stats_used_bytes", "data-orders-db-0"),
                    "90x30",
                ),
                (
                    claim("kubelet_volume_stats_capacity_bytes", "data-orders-db-0"),
                    "100x30",
                ),
            ],
            // Another service's full volume is not this one's alert.
            healthy: vec![
                (
                    claim("kubelet_volume_stats_used_bytes", "data-orders-db-0"),
                    "50x30",
                ),
                (
                    claim("kubelet_volume_stats_capacity_bytes", "data-orders-db-0"),
                    "100x30",
                ),
                (
                    claim(
                        "kubelet_volume_stats_used_bytes",
                        "data-orders-archive-db-0",
                    ),
                    "99x30",
                ),
                (
                    claim(
                        "kubelet_volume_stats_capacity_bytes",
                        "data-orders-archive-db-0",
                    ),
                    "100x30",
                ),
            ],
            kept: vec![],
        });
    }
    // Backups daily at 02:00: overdue after 25h. The test's clock starts
    // at 0, so a timestamp of 0 is a backup at the start. Samples every 4m:
    // within Prometheus' 5m look-back, so `for: 5m` holds.
    cases.push(Case {
        alert: "ServiceDatabaseBackupOverdue",
        severity: "warning",
        interval: "4m",
        eval_time: "26h",
        firing: vec![(
            o("servicedb_database_last_backup_timestamp_seconds", ""),
            "0x400",
        )],
        // The next day's backup at 24h (4-minute steps: 360 a day).
        healthy: vec![(
            o("servicedb_database_last_backup_timestamp_seconds", ""),
            "0x359 86400x100",
        )],
        kept: vec![("name", "orders")],
    });
    if verifies(engine, shared) {
        cases.push(Case {
            alert: "ServiceDatabaseVerificationFailed",
            severity: "warning",
            interval: "1m",
            eval_time: "5m",
            firing: vec![(o("servicedb_database_verification_failed", ""), "1x10")],
            healthy: vec![(o("servicedb_database_verification_failed", ""), "0x10")],
            kept: vec![("name", "orders")],
        });
        // Weekly verification: overdue after 7d1h.
        cases.push(Case {
            alert: "ServiceDatabaseVerificationOverdue",
            severity: "warning",
            interval: "4m",
            eval_time: "170h",
            firing: vec![(
                o("servicedb_database_last_verification_timestamp_seconds", ""),
                "0x2600",
            )],
            healthy: vec![(
                o("servicedb_database_last_verification_timestamp_seconds", ""),
                "0x2519 604800x100",
            )],
            kept: vec![("name", "orders")],
        });
    }
    // rotateEvery 720h: overdue after 721h.
    cases.push(Case {
        alert: "ServiceDatabaseCredentialRotationOverdue",
        severity: "warning",
        interval: "4m",
        eval_time: "730h",
        firing: vec![(
            o(
                "servicedb_database_credentials_issued_timestamp_seconds",
                "",
            ),
            "0x11000",
        )],
        healthy: vec![(
            o(
                "servicedb_database_credentials_issued_timestamp_seconds",
                "",
            ),
            "0x10499 2520000x600",
        )],
        kept: vec![("name", "orders")],
    });
    cases
}

fn series(list: &[(String, &str)]) -> Value {
    list.iter()
        .map(|(series, values)| json!({"series": series, "values": values}))
        .collect()
}

/// `promtool test rules` files: per case, the alert fires from the firing
/// series with exactly these labels and annotations, and not from the
/// healthy ones. Cases of days (overdue backups, rotations) are evaluated
/// every 10 minutes, the others every minute: the same `for`, far fewer
/// evaluations.
fn unit_tests(engine: Engine, rules: &[AlertRule], cases: &[Case]) -> [Value; 2] {
    let (long, short): (Vec<&Case>, Vec<&Case>) =
        cases.iter().partition(|c| c.eval_time.ends_with('h'));
    [
        unit_test_file(engine, rules, &short, "1m"),
        unit_test_file(engine, rules, &long, "10m"),
    ]
}

fn unit_test_file(engine: Engine, rules: &[AlertRule], cases: &[&Case], every: &str) -> Value {
    let mut tests = Vec::new();
    for case in cases {
        let rule = rules
            .iter()
            .find(|r| r.alert == case.alert)
            .unwrap_or_else(|| panic!("{} is not generated", case.alert));
        let mut labels = routing(engine.as_str(), case.severity);
        labels.extend(
            case.kept
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string())),
        );
        assert_eq!(
            rule.annotations["runbook_url"],
            format!("{DEFAULT_RUNBOOK_URL}#{}", case.alert.to_lowercase())
        );
        assert!(
            rule.annotations["summary"].contains("shop/orders"),
            "{:?}",
            rule.annotations
        );
        tests.push(json!({
            "interval": case.interval,
            "input_series": series(&case.firing),
            "alert_rule_test": [{
                "eval_time": case.eval_time,
                "alertname": case.alert,
                "exp_alerts": [{"exp_labels": labels, "exp_annotations": rule.annotations}],
            }],
        }));
        tests.push(json!({
            "interval": case.interval,
            "input_series": series(&case.healthy),
            "alert_rule_test": [{
                "eval_time": case.eval_time,
                "alertname": case.alert,
                "exp_alerts": [],
            }],
        }));
    }
    json!({"rule_files": ["rules.yaml"], "evaluation_interval": every, "tests": tests})
}

#[test]
fn every_generated_rule_group_passes_promtool_and_each_alert_fires_with_its_routing() {
    for engine in [Engine::Postgres, Engine::Redis, Engine::MongoDB] {
        for shared in [false, true] {
            let (db, _) = orders(engine, shared);
            let groups = rule_groups(&db, DEFAULT_RUNBOOK_URL);
            let rules = &groups[0].rules;
            let cases = cases(engine, shared);
            let names: Vec<&str> = rules.iter().map(|r| r.alert.as_str()).collect();
            let tested: Vec<&str> = cases.iter().map(|c| c.alert).collect();
            assert_eq!(
                names, tested,
                "every alert of {engine:?} (shared: {shared}) is tested"
            );

            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join("rules.yaml"), rules_file(&groups)).unwrap();
            let checked = promtool(&["check", "rules", "rules.yaml"], dir.path());
            assert!(
                checked.contains(&format!("SUCCESS: {} rules found", rules.len())),
                "{checked}"
            );
            let [short, long] = unit_tests(engine, rules, &cases);
            for (file, tests) in [("short.yaml", short), ("long.yaml", long)] {
                std::fs::write(
                    dir.path().join(file),
                    serde_yaml::to_string(&tests).unwrap(),
                )
                .unwrap();
            }
            let tested = promtool(&["test", "rules", "short.yaml", "long.yaml"], dir.path());
            assert_eq!(tested.matches("SUCCESS").count(), 2, "{tested}");
        }
    }
}

#[test]
fn the_prometheus_rule_holds_the_same_groups_and_is_owned_by_the_database() {
    let (db, sdb) = orders(Engine::Postgres, false);
    let owner = sdb.controller_owner_ref(&()).unwrap();
    let built = build(&db, &facts(), &owner).expect("monitoring on");
    let rule = built.rule.as_ref().expect("a ServiceDatabase has alerts");
    assert_eq!(
        rule.types
            .as_ref()
            .map(|t| (t.api_version.as_str(), t.kind.as_str())),
        Some(("monitoring.coreos.com/v1", "PrometheusRule"))
    );
    assert_eq!(rule.metadata.name.as_deref(), Some("orders-db"));
    assert_eq!(rule.metadata.namespace.as_deref(), Some("shop"));
    assert_eq!(rule.metadata.owner_references, Some(vec![owner.clone()]));
    assert_eq!(
        rule.data["spec"]["groups"],
        serde_json::to_value(all_groups(&db, DEFAULT_RUNBOOK_URL)).unwrap()
    );
    let monitor = built.pod_monitor.expect("a dedicated instance is scraped");
    assert_eq!(
        monitor.data["spec"]["selector"]["matchLabels"],
        serde_json::to_value(selector_labels(&db)).unwrap()
    );
    let endpoint = &monitor.data["spec"]["podMetricsEndpoints"][0];
    assert_eq!(endpoint["port"], "metrics");
    assert_eq!(
        endpoint["relabelings"][0]["targetLabel"],
        "service_database"
    );
    assert_eq!(endpoint["relabelings"][0]["replacement"], "orders");

    let (shared, _) = orders(Engine::Postgres, true);
    let built = build(&shared, &facts(), &owner).expect("monitoring on");
    assert!(
        built.pod_monitor.is_none(),
        "a shared server is scraped through its DatabaseServer"
    );

    let mut off = db.clone();
    off.monitoring = None;
    assert!(build(&off, &facts(), &owner).is_none());
}

#[test]
fn every_alert_has_a_section_in_docs_runbooks() {
    let text = std::fs::read_to_string(format!("{}/docs/runbooks.md", env!("CARGO_MANIFEST_DIR")))
        .expect("docs/runbooks.md");
    // GitHub's anchor of a `## Heading` without spaces or punctuation.
    let anchors: Vec<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("## "))
        .map(|h| h.trim().to_lowercase())
        .collect();
    for engine in [Engine::Postgres, Engine::Redis, Engine::MongoDB] {
        let (db, _) = orders(engine, false);
        for rule in &rule_groups(&db, DEFAULT_RUNBOOK_URL)[0].rules {
            let url = &rule.annotations["runbook_url"];
            let anchor = url.rsplit_once('#').map(|(_, a)| a).unwrap_or_default();
            assert!(
                anchors.iter().any(|a| a == anchor),
                "{url}: no section in docs/runbooks.md"
            );
        }
    }
}

#[test]
fn a_managed_servers_instance_gets_a_pod_monitor_labelled_by_its_server_and_no_alerts() {
    let (db, _) = orders(Engine::Postgres, false);
    let owner = k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
        api_version: "servicedb.dev/v1alpha1".into(),
        kind: "DatabaseServer".into(),
        name: "shared-pg".into(),
        uid: "uid-server".into(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    };
    let built = build(&db, &facts(), &owner).expect("monitoring on");
    assert!(
        built.rule.is_none(),
        "the server's databases carry the alerts"
    );
    let monitor = built.pod_monitor.expect("its exporter is scraped");
    let relabel = &monitor.data["spec"]["podMetricsEndpoints"][0]["relabelings"][0];
    assert_eq!(relabel["targetLabel"], "database_server");
    assert_eq!(relabel["replacement"], "shared-pg");
    assert_eq!(monitor.metadata.owner_references, Some(vec![owner]));
}

/// The labels of an exporter series of database `datname` as each placement
/// is scraped: a dedicated instance's by its PodMonitor, a managed
/// DatabaseServer's by the server's.
fn exporter_labels(shared: bool, datname: &str) -> String {
    if shared {
        format!(r#"namespace="shop",database_server="shared",datname="{datname}""#)
    } else {
        format!(r#"namespace="shop",service_database="orders",datname="{datname}""#)
    }
}

#[test]
fn a_postgres_databases_series_are_recorded_with_its_owners_labels_whatever_its_placement() {
    for shared in [false, true] {
        let (db, _) = orders(Engine::Postgres, shared);
        let groups = record_groups(&db);
        let rules = &groups[0].rules;
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("rules.yaml"), rules_file(&groups)).unwrap();
        let checked = promtool(&["check", "rules", "rules.yaml"], dir.path());
        assert!(checked.contains("SUCCESS: 5 rules found"), "{checked}");

        // The database's own series, and decoys: another database on the
        // same server, the same database name on another server.
        let own = exporter_labels(shared, &db.database);
        let other_db = exporter_labels(shared, "shop_payments");
        let other_server = format!(
            r#"namespace="elsewhere",database_server="shared",service_database="orders",datname="{}""#,
            db.database
        );
        let mut input = vec![];
        for (labels, size, commits) in [
            (&own, "1000+0x10", "0+60x10"),
            (&other_db, "5000+0x10", "0+600x10"),
            (&other_server, "9000+0x10", "0+6000x10"),
        ] {
            input.extend([
                json!({"series": format!("pg_database_size_bytes{{{labels}}}"), "values": size}),
                json!({"series": format!("pg_stat_database_numbackends{{{labels}}}"), "values": "3+0x10"}),
                json!({"series": format!("pg_stat_database_xact_commit{{{labels}}}"), "values": commits}),
                json!({"series": format!("pg_stat_database_xact_rollback{{{labels}}}"), "values": "0+0x10"}),
                json!({"series": format!("pg_stat_database_deadlocks{{{labels}}}"), "values": "0+6x10"}),
            ]);
        }
        let owner: Vec<String> = rules[0]
            .labels
            .iter()
            .map(|(k, v)| format!(r#"{k}="{v}""#))
            .collect();
        let owner = owner.join(",");
        assert!(
            owner.contains(r#"namespace="shop""#)
                && owner.contains(r#"service_database="orders""#)
                && owner.contains(r#"owner_team="payments""#),
            "{owner}"
        );
        let expect = |metric: &str, value: f64| {
            json!({
                "expr": format!("servicedb_database:{metric}"),
                "eval_time": "10m",
                "exp_samples": [{"labels": format!("servicedb_database:{metric}{{{owner}}}"), "value": value}],
            })
        };
        let tests = json!({
            "rule_files": ["rules.yaml"],
            "evaluation_interval": "1m",
            "tests": [{
                "interval": "1m",
                "input_series": input,
                "promql_expr_test": [
                    expect("pg_database_size_bytes", 1000.0),
                    expect("pg_stat_database_numbackends", 3.0),
                    expect("pg_stat_database_xact_commit:rate5m", 1.0),
                    expect("pg_stat_database_xact_rollback:rate5m", 0.0),
                    expect("pg_stat_database_deadlocks:rate5m", 0.1),
                ],
            }],
        });
        std::fs::write(
            dir.path().join("records.yaml"),
            serde_yaml::to_string(&tests).unwrap(),
        )
        .unwrap();
        let tested = promtool(&["test", "rules", "records.yaml"], dir.path());
        assert!(tested.contains("SUCCESS"), "shared: {shared}\n{tested}");
    }
    for (engine, shared) in [(Engine::Redis, false), (Engine::MongoDB, true)] {
        assert!(
            record_groups(&orders(engine, shared).0).is_empty(),
            "{engine:?}: its exporter reports per server"
        );
    }
}
