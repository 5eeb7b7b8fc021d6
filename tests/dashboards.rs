//! The Grafana dashboards of charts/servicedb/dashboards: each is a complete
//! dashboard (the fields Grafana needs to import it), there is one fleet
//! view and one per engine, and every PromQL expression — panel queries and
//! template variables — parses: they are written as recording rules and
//! checked by the real `promtool check rules` (`hack/prereqs.sh promtool`).

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;

use serde_json::{Value, json};

fn dashboards() -> Vec<(String, Value)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("charts/servicedb/dashboards");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("charts/servicedb/dashboards")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            let text = std::fs::read_to_string(&p).expect("dashboard");
            let value =
                serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name} is not JSON: {e}"));
            (name, value)
        })
        .collect()
}

/// Grafana's variables replaced by values, so what is left is PromQL.
fn promql(expr: &str) -> String {
    let mut out = expr
        .replace("$__rate_interval", "5m")
        .replace("$__interval", "1m")
        .replace("$__range", "1h");
    for var in ["namespace", "service_database", "datasource"] {
        out = out
            .replace(&format!("${{{var}}}"), "x")
            .replace(&format!("${var}"), "x");
    }
    assert!(!out.contains('$'), "an unknown variable in {expr}");
    out
}

#[test]
fn every_dashboard_is_complete_and_every_expression_parses() {
    let dashboards = dashboards();
    let names: Vec<&str> = dashboards.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "servicedb-fleet.json",
            "servicedb-mongodb.json",
            "servicedb-postgres.json",
            "servicedb-redis.json"
        ],
        "a fleet view and one per engine"
    );
    let mut uids = BTreeSet::new();
    let mut exprs: Vec<(String, String)> = Vec::new();
    for (name, d) in &dashboards {
        for field in ["uid", "title", "description"] {
            assert!(
                d[field].as_str().is_some_and(|s| !s.is_empty()),
                "{name}: {field}"
            );
        }
        assert!(
            uids.insert(d["uid"].as_str().unwrap().to_string()),
            "{name}: uid is unique"
        );
        assert!(
            d["schemaVersion"].as_u64().is_some_and(|v| v >= 30),
            "{name}: schemaVersion"
        );
        assert!(
            d["time"]["from"].is_string() && d["time"]["to"].is_string(),
            "{name}: time"
        );
        assert!(
            d["tags"]
                .as_array()
                .is_some_and(|t| t.contains(&json!("servicedb"))),
            "{name}: tagged servicedb"
        );
        let variables = d["templating"]["list"].as_array().expect("templating.list");
        assert!(
            variables.iter().any(|v| v["name"] == "datasource"
                && v["type"] == "datasource"
                && v["query"] == "prometheus"),
            "{name}: a Prometheus data source variable"
        );
        for v in variables.iter().filter(|v| v["type"] == "query") {
            let query = v["query"]["query"].as_str().expect("variable query");
            let inner = query
                .strip_prefix("label_values(")
                .and_then(|q| q.rsplit_once(','))
                .map(|(selector, _)| selector.trim())
                .unwrap_or_else(|| panic!("{name}: variable {} is label_values(...)", v["name"]));
            exprs.push((format!("{name} variable {}", v["name"]), promql(inner)));
        }
        let panels = d["panels"].as_array().expect("panels");
        assert!(!panels.is_empty(), "{name}: panels");
        let mut ids = BTreeSet::new();
        for p in panels {
            let title = p["title"].as_str().expect("panel title");
            assert!(
                ids.insert(p["id"].as_u64().expect("panel id")),
                "{name}: panel ids unique"
            );
            assert!(p["type"].is_string(), "{name}/{title}: type");
            assert_eq!(
                p["datasource"]["uid"], "${datasource}",
                "{name}/{title}: data source"
            );
            let grid = &p["gridPos"];
            for k in ["x", "y", "w", "h"] {
                assert!(grid[k].is_u64(), "{name}/{title}: gridPos.{k}");
            }
            assert!(
                grid["x"].as_u64().unwrap() + grid["w"].as_u64().unwrap() <= 24,
                "{name}/{title}: fits 24 columns"
            );
            let targets = p["targets"].as_array().expect("targets");
            assert!(!targets.is_empty(), "{name}/{title}: targets");
            for t in targets {
                assert!(t["refId"].is_string(), "{name}/{title}: refId");
                let expr = t["expr"].as_str().expect("expr");
                exprs.push((format!("{name}/{title}/{}", t["refId"]), promql(expr)));
            }
        }
    }

    // The fleet view shows every ServiceDatabase: owner, engine, phase, last
    // backup, last verification, credential age.
    let fleet = &dashboards[0].1;
    let table = fleet["panels"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["type"] == "table")
        .expect("the fleet table");
    let queries: String = table["targets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["expr"].as_str().unwrap())
        .collect::<Vec<_>>()
        .join("\n");
    for metric in [
        "servicedb_database_info",
        "servicedb_database_phase",
        "servicedb_database_last_backup_timestamp_seconds",
        "servicedb_database_last_verification_timestamp_seconds",
        "servicedb_database_credentials_issued_timestamp_seconds",
    ] {
        assert!(queries.contains(metric), "the fleet table reads {metric}");
    }
    let renamed = &table["transformations"][1]["options"]["renameByName"];
    for column in ["owner", "engine", "phase"] {
        assert!(
            renamed[column].is_string(),
            "the fleet table shows {column}"
        );
    }

    // The PostgreSQL dashboard's per-database panels read the recording
    // rules' series, which a database on a shared server has too, and it
    // lists every PostgreSQL ServiceDatabase, not only the monitored
    // dedicated ones.
    let postgres = &dashboards[2].1.to_string();
    for series in [
        "servicedb_database:pg_database_size_bytes",
        "servicedb_database:pg_stat_database_numbackends",
        "servicedb_database:pg_stat_database_xact_commit:rate5m",
        "servicedb_database:pg_stat_database_xact_rollback:rate5m",
        "servicedb_database:pg_stat_database_deadlocks:rate5m",
    ] {
        assert!(
            postgres.contains(series),
            "the PostgreSQL dashboard reads {series}"
        );
    }
    assert!(
        postgres.contains(r#"label_values(servicedb_database_info{engine=\"postgres\",namespace=~\"$namespace\"}, name)"#),
        "the ServiceDatabase variable lists every PostgreSQL ServiceDatabase"
    );

    // Every expression through promtool, as recording rules.
    let rules: Vec<Value> = exprs
        .iter()
        .enumerate()
        .map(|(i, (_, expr))| json!({"record": format!("servicedb:dashboard_check:{i}"), "expr": expr}))
        .collect();
    let file = json!({"groups": [{"name": "dashboards", "rules": rules}]});
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("dashboards.yaml");
    std::fs::write(&path, serde_yaml::to_string(&file).expect("yaml")).expect("write");
    let out = Command::new("promtool")
        .args(["check", "rules"])
        .arg(&path)
        .output()
        .unwrap_or_else(|e| panic!("promtool: {e}; install it with `hack/prereqs.sh promtool`"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "promtool refuses a dashboard expression:\n{text}\n{}",
        exprs
            .iter()
            .enumerate()
            .map(|(i, (w, e))| format!("{i}: {w}: {e}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        text.contains(&format!("SUCCESS: {} rules found", exprs.len())),
        "{text}"
    );
}

#[test]
fn a_broken_expression_is_caught() {
    // The check above can fail: promtool refuses what Grafana would too.
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("broken.yaml");
    let file = json!({"groups": [{"name": "g", "rules": [{"record": "r", "expr": promql("sum by (service_database (pg_up{namespace=~\"$namespace\"})")}]}]});
    std::fs::write(&path, serde_yaml::to_string(&file).unwrap()).unwrap();
    let out = Command::new("promtool")
        .args(["check", "rules"])
        .arg(&path)
        .output()
        .expect("promtool");
    assert!(!out.status.success());
}
