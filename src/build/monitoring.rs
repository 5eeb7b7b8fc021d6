//! Prometheus Operator objects of a monitored ServiceDatabase: a
//! `PrometheusRule` with its alerts, and for a dedicated instance a
//! `PodMonitor` that scrapes the exporter sidecar's `metrics` port.
//!
//! Every alert carries `namespace`, `service_database`, `engine`,
//! `severity` and the owner's labels (`owner.podSelector.matchLabels`, each
//! key made a Prometheus label name and prefixed `owner_`), so that
//! Alertmanager can route it to the owning team, and a `runbook_url` into
//! `docs/runbooks.md`. The rule groups are plain values ([`rule_groups`]):
//! the tests hand the same groups to `promtool`.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use serde::Serialize;

use super::{OperatorFacts, object_meta, selector_labels};
use crate::api::Engine;
use crate::model::database::ValidatedDatabase;

/// API group and version of the Prometheus Operator's kinds.
pub const GROUP: &str = "monitoring.coreos.com";
pub const VERSION: &str = "v1";
/// Kinds servicedb makes.
pub const PROMETHEUS_RULE: &str = "PrometheusRule";
pub const POD_MONITOR: &str = "PodMonitor";
/// The `app.kubernetes.io/component` of these objects.
pub const COMPONENT: &str = "monitoring";
/// The label every scraped series of a ServiceDatabase gets, and every
/// alert carries.
pub const SERVICE_DATABASE_LABEL: &str = "service_database";

/// Where alerts' `runbook_url` point when the operator is not told
/// otherwise (`--runbook-url`).
pub const DEFAULT_RUNBOOK_URL: &str =
    "https://github.com/servicedb/servicedb/blob/main/docs/runbooks.md";

/// Share of connections, or of the volume, that is "near the limit".
const CONNECTIONS_NEAR: f64 = 0.8;
const STORAGE_NEAR: f64 = 0.85;
/// Slack over a schedule's interval before a backup, a verification or a
/// rotation counts as overdue: a run takes time.
const OVERDUE_SLACK: Duration = Duration::from_secs(3600);

/// The `ApiResource` of a Prometheus Operator kind.
pub fn api_resource(kind: &str) -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk(GROUP, VERSION, kind))
}

/// The objects of one monitored ServiceDatabase, or of a managed
/// DatabaseServer's instance.
#[derive(Clone, Debug)]
pub struct Monitoring {
    /// The ServiceDatabase's alerts; none for a DatabaseServer's instance
    /// (its databases' rules carry their own alerts).
    pub rule: Option<DynamicObject>,
    /// Dedicated instances and managed servers: a database on a shared
    /// server is scraped through its DatabaseServer's exporter.
    pub pod_monitor: Option<DynamicObject>,
}

/// The label a DatabaseServer's exporter series get (managed or external) instead of
/// [`SERVICE_DATABASE_LABEL`].
pub const DATABASE_SERVER_LABEL: &str = "database_server";

/// The Prometheus Operator objects of `db`; `None` when monitoring is off.
/// When `owner` is a DatabaseServer (the instance of a managed server),
/// only its PodMonitor, its series labelled `database_server`.
pub fn build(
    db: &ValidatedDatabase,
    facts: &OperatorFacts,
    owner: &OwnerReference,
) -> Option<Monitoring> {
    db.monitoring.as_ref()?;
    if owner.kind == "DatabaseServer" {
        return Some(Monitoring {
            rule: None,
            pod_monitor: Some(pod_monitor(db, owner, DATABASE_SERVER_LABEL, &owner.name)),
        });
    }
    Some(Monitoring {
        rule: Some(prometheus_rule(db, &facts.runbook_url, owner)),
        pod_monitor: db
            .server
            .is_none()
            .then(|| pod_monitor(db, owner, SERVICE_DATABASE_LABEL, &db.name)),
    })
}

fn object(
    kind: &str,
    db: &ValidatedDatabase,
    owner: &OwnerReference,
    spec: serde_json::Value,
) -> DynamicObject {
    let mut object = DynamicObject::new(&db.instance_name(), &api_resource(kind));
    object.metadata = object_meta(db, db.instance_name(), COMPONENT, owner);
    object.data = serde_json::json!({ "spec": spec });
    object
}

/// A `PrometheusRule` `<name>-db` with [`rule_groups`].
pub fn prometheus_rule(
    db: &ValidatedDatabase,
    runbook_url: &str,
    owner: &OwnerReference,
) -> DynamicObject {
    let groups = serde_json::to_value(all_groups(db, runbook_url)).unwrap_or_default();
    object(
        PROMETHEUS_RULE,
        db,
        owner,
        serde_json::json!({ "groups": groups }),
    )
}

/// A `PodMonitor` `<name>-db` for the instance's pods: the exporter's
/// `metrics` port, every series labelled `label="value"`.
pub fn pod_monitor(
    db: &ValidatedDatabase,
    owner: &OwnerReference,
    label: &str,
    value: &str,
) -> DynamicObject {
    object(
        POD_MONITOR,
        db,
        owner,
        pod_monitor_spec(&selector_labels(db), label, value),
    )
}

/// A `PodMonitor`'s spec: the `metrics` port of the pods `selector`
/// matches, every series labelled `label="value"`.
pub fn pod_monitor_spec(
    selector: &BTreeMap<String, String>,
    label: &str,
    value: &str,
) -> serde_json::Value {
    serde_json::json!({
        "selector": {"matchLabels": selector},
        "podMetricsEndpoints": [{
            "port": crate::engine::exporter::PORT_NAME,
            "path": "/metrics",
            "relabelings": [{
                "action": "replace",
                "targetLabel": label,
                "replacement": value,
            }],
        }],
    })
}

/// A Prometheus rule group, as `promtool` and the `PrometheusRule` read it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RuleGroup {
    pub name: String,
    pub rules: Vec<AlertRule>,
}

/// One alerting rule.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AlertRule {
    pub alert: String,
    pub expr: String,
    #[serde(rename = "for")]
    pub for_: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
}

/// One recording rule.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RecordingRule {
    pub record: String,
    pub expr: String,
    pub labels: BTreeMap<String, String>,
}

/// A group of recording rules.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RecordGroup {
    pub name: String,
    pub rules: Vec<RecordingRule>,
}

/// The per-database series of PostgreSQL's exporter, recorded for `db`
/// under one name whatever its placement, with the labels its alerts carry
/// (`namespace`, `service_database`, `engine`, `owner_*`):
/// `servicedb_database:pg_database_size_bytes`,
/// `servicedb_database:pg_stat_database_numbackends`, and the per-second
/// rates over 5 minutes `servicedb_database:pg_stat_database_xact_commit:rate5m`,
/// `…xact_rollback:rate5m` and `…deadlocks:rate5m`.
///
/// A dedicated instance's series are its own (`service_database`); a
/// database on a monitored DatabaseServer (managed or external) is picked out of the server's
/// series (`database_server`, the server's `namespace`) by its database
/// name, which is how a shared server's series reach the owning team. None
/// for isolation `Schema` (the exporter reports databases, not schemas)
/// and for Redis and MongoDB, whose exporters report per server.
pub fn record_groups(db: &ValidatedDatabase) -> Vec<RecordGroup> {
    if db.engine != Engine::Postgres || db.schema.is_some() {
        return vec![];
    }
    let (ns, name, datname) = (&db.namespace, &db.name, &db.database);
    let selector = match &db.server {
        None => {
            format!(r#"namespace="{ns}",{SERVICE_DATABASE_LABEL}="{name}",datname="{datname}""#)
        }
        Some(server) => format!(
            r#"namespace="{}",{DATABASE_SERVER_LABEL}="{}",datname="{datname}""#,
            server.namespace, server.name
        ),
    };
    let mut labels = owner_labels(db);
    labels.insert("namespace".into(), ns.clone());
    labels.insert(SERVICE_DATABASE_LABEL.into(), name.clone());
    labels.insert("engine".into(), db.engine.as_str().into());
    let record = |metric: &str, expr: String| RecordingRule {
        record: format!("servicedb_database:{metric}"),
        expr,
        labels: labels.clone(),
    };
    let gauge = |metric: &str| record(metric, format!("max({metric}{{{selector}}})"));
    let rate = |metric: &str| {
        record(
            &format!("{metric}:rate5m"),
            format!("max(rate({metric}{{{selector}}}[5m]))"),
        )
    };
    let rules = vec![
        gauge("pg_database_size_bytes"),
        gauge("pg_stat_database_numbackends"),
        rate("pg_stat_database_xact_commit"),
        rate("pg_stat_database_xact_rollback"),
        rate("pg_stat_database_deadlocks"),
    ];
    vec![RecordGroup {
        name: format!("servicedb.{ns}.{name}.records"),
        rules,
    }]
}

/// The alerts of `db`, in one group `servicedb.<namespace>.<name>`:
///
/// - dedicated instances: `ServiceDatabaseInstanceDown` (the exporter's
///   `*_up`, its scrape, or the phase `Degraded`/`Failed`),
///   `ServiceDatabaseConnectionsNearLimit`, `ServiceDatabaseStorageNearFull`
///   (kubelet volume stats of the data volume);
/// - shared servers: `ServiceDatabaseInstanceDown` from the phase only;
/// - with backups: `ServiceDatabaseBackupOverdue`; with verification also
///   `ServiceDatabaseVerificationFailed` and
///   `ServiceDatabaseVerificationOverdue`;
/// - with `credentials.rotateEvery`: `ServiceDatabaseCredentialRotationOverdue`.
pub fn rule_groups(db: &ValidatedDatabase, runbook_url: &str) -> Vec<RuleGroup> {
    let ns = &db.namespace;
    let name = &db.name;
    // Series of the operator, and series scraped from the instance.
    let own = format!(r#"namespace="{ns}",name="{name}""#);
    let scraped = format!(r#"namespace="{ns}",{SERVICE_DATABASE_LABEL}="{name}""#);
    let mut labels = owner_labels(db);
    labels.insert("namespace".into(), ns.clone());
    labels.insert(SERVICE_DATABASE_LABEL.into(), name.clone());
    labels.insert("engine".into(), db.engine.as_str().into());
    let alert = |alert: &str,
                 severity: &str,
                 expr: String,
                 for_: &str,
                 summary: String,
                 description: String| {
        let mut labels = labels.clone();
        labels.insert("severity".into(), severity.into());
        AlertRule {
            alert: alert.into(),
            expr,
            for_: for_.into(),
            labels,
            annotations: BTreeMap::from([
                ("summary".to_string(), summary),
                ("description".to_string(), description),
                (
                    "runbook_url".to_string(),
                    format!("{runbook_url}#{}", alert.to_lowercase()),
                ),
            ]),
        }
    };
    let who = format!("ServiceDatabase {ns}/{name}");
    let mut rules = Vec::new();

    let phase_down = format!(r#"servicedb_database_phase{{{own},phase=~"Degraded|Failed"}} == 1"#);
    if db.server.is_none() {
        let up = up_metric(db.engine);
        rules.push(alert(
            "ServiceDatabaseInstanceDown",
            "critical",
            format!("({up}{{{scraped}}} == 0) or (up{{{scraped}}} == 0) or ({phase_down})"),
            "5m",
            format!("{who} is down"),
            format!("The {} instance of {who} does not answer its exporter or the operator for 5 minutes.", db.engine.as_str()),
        ));
        rules.push(alert(
            "ServiceDatabaseConnectionsNearLimit",
            "warning",
            format!("{} > {CONNECTIONS_NEAR}", connections_ratio(db.engine, &scraped)),
            "10m",
            format!("{who} uses more than 80% of its connections"),
            format!("{who} has used more than 80% of its maximum connections for 10 minutes; new connections will soon be refused."),
        ));
        let claims = format!(
            r#"namespace="{ns}",persistentvolumeclaim=~"{}-{}-[0-9]+""#,
            regex_escape(super::statefulset::DATA_VOLUME),
            regex_escape(&db.instance_name())
        );
        rules.push(alert(
            "ServiceDatabaseStorageNearFull",
            "warning",
            format!("max(kubelet_volume_stats_used_bytes{{{claims}}} / kubelet_volume_stats_capacity_bytes{{{claims}}}) > {STORAGE_NEAR}"),
            "15m",
            format!("The data volume of {who} is more than 85% full"),
            format!("The data volume of {who} has been more than 85% full for 15 minutes; grow spec.storage.size before it fills."),
        ));
    } else {
        rules.push(alert(
            "ServiceDatabaseInstanceDown",
            "critical",
            phase_down,
            "5m",
            format!("{who} is down"),
            format!(
                "{who} on its shared DatabaseServer has been Degraded or Failed for 5 minutes."
            ),
        ));
    }

    if let Some(backup) = &db.backup {
        let limit = longest_gap(&backup.schedule) + OVERDUE_SLACK;
        rules.push(alert(
            "ServiceDatabaseBackupOverdue",
            "warning",
            format!("time() - servicedb_database_last_backup_timestamp_seconds{{{own}}} > {}", limit.as_secs()),
            "5m",
            format!("{who} has no recent backup"),
            format!("The last successful backup of {who} is older than {} (its schedule {:?} plus one hour).", human(limit), backup.schedule),
        ));
        if let Some(verify) = &backup.verify_schedule {
            rules.push(alert(
                "ServiceDatabaseVerificationFailed",
                "warning",
                format!("servicedb_database_verification_failed{{{own}}} == 1"),
                "0m",
                format!("The last backup verification of {who} failed"),
                format!("Restoring the newest backup of {who} into a scratch instance failed: the backup may not be restorable."),
            ));
            let limit = longest_gap(verify) + OVERDUE_SLACK;
            rules.push(alert(
                "ServiceDatabaseVerificationOverdue",
                "warning",
                format!("time() - servicedb_database_last_verification_timestamp_seconds{{{own}}} > {}", limit.as_secs()),
                "5m",
                format!("{who} has no recent backup verification"),
                format!("The last successful verification of {who} is older than {} (its schedule {verify:?} plus one hour).", human(limit)),
            ));
        }
    }

    if let Some(every) = db.rotate_every {
        let limit = every + OVERDUE_SLACK;
        rules.push(alert(
            "ServiceDatabaseCredentialRotationOverdue",
            "warning",
            format!("time() - servicedb_database_credentials_issued_timestamp_seconds{{{own}}} > {}", limit.as_secs()),
            "5m",
            format!("The credentials of {who} were not rotated in time"),
            format!("The password of {who} is older than {} (rotateEvery plus one hour): the new login may not work yet.", human(limit)),
        ));
    }

    vec![RuleGroup {
        name: format!("servicedb.{ns}.{name}"),
        rules,
    }]
}

/// Alerting and recording groups, as a `PrometheusRule`'s `groups`.
#[derive(Serialize)]
#[serde(untagged)]
pub enum Group {
    Alerts(RuleGroup),
    Records(RecordGroup),
}

/// The `groups` of `db`'s `PrometheusRule`: its alerts, then its records.
pub fn all_groups(db: &ValidatedDatabase, runbook_url: &str) -> Vec<Group> {
    rule_groups(db, runbook_url)
        .into_iter()
        .map(Group::Alerts)
        .chain(record_groups(db).into_iter().map(Group::Records))
        .collect()
}

/// Groups as a Prometheus rules file (`groups:`), for `promtool`.
pub fn rules_file<G: Serialize>(groups: &[G]) -> String {
    #[derive(Serialize)]
    struct File<'a, G> {
        groups: &'a [G],
    }
    serde_yaml::to_string(&File { groups }).unwrap_or_default()
}

/// The exporter's "the engine answers" gauge.
fn up_metric(engine: Engine) -> &'static str {
    match engine {
        Engine::Postgres => "pg_up",
        Engine::Redis => "redis_up",
        Engine::MongoDB => "mongodb_up",
    }
}

/// Connections in use over the most the engine accepts, from its exporter.
fn connections_ratio(engine: Engine, s: &str) -> String {
    match engine {
        Engine::Postgres => format!(
            "sum(pg_stat_database_numbackends{{{s}}}) / max(pg_settings_max_connections{{{s}}})"
        ),
        // `maxclients` of INFO (Redis 7+); CONFIG GET, which the
        // monitoring login may not run, only where it can.
        Engine::Redis => format!(
            "max(redis_connected_clients{{{s}}}) / max(redis_max_clients{{{s}}} or redis_config_maxclients{{{s}}})"
        ),
        Engine::MongoDB => format!(
            r#"max(mongodb_ss_connections{{{s},conn_type="current"}}) / (max(mongodb_ss_connections{{{s},conn_type="current"}}) + max(mongodb_ss_connections{{{s},conn_type="available"}}))"#
        ),
    }
}

/// `owner_<key>` = value for each of `owner.podSelector.matchLabels`.
fn owner_labels(db: &ValidatedDatabase) -> BTreeMap<String, String> {
    db.owner
        .match_labels
        .iter()
        .flatten()
        .map(|(k, v)| (format!("owner_{}", label_name(k)), v.clone()))
        .collect()
}

/// A Kubernetes label key as a Prometheus label name: every character
/// outside `[a-zA-Z0-9_]` becomes `_` (as kube-state-metrics does).
pub fn label_name(key: &str) -> String {
    key.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// `s` as a literal inside a PromQL regex string (`.` is the only
/// metacharacter Kubernetes names have).
fn regex_escape(s: &str) -> String {
    s.replace('.', r"\\.")
}

/// The longest time between two runs of a cron schedule, over its next 100
/// runs from a fixed instant (so the rule does not change from one
/// reconcile to the next); a day when it does not parse.
fn longest_gap(schedule: &str) -> Duration {
    const DAY: Duration = Duration::from_secs(86_400);
    let Ok(cron) = croner::parser::CronParser::new().parse(schedule) else {
        return DAY;
    };
    let Some(mut at) = chrono::DateTime::from_timestamp(1_767_225_600, 0) else {
        return DAY;
    };
    let mut longest = Duration::ZERO;
    let mut previous: Option<chrono::DateTime<chrono::Utc>> = None;
    for _ in 0..100 {
        let Ok(next) = cron.find_next_occurrence(&at, false) else {
            break;
        };
        if let Some(previous) = previous
            && let Ok(gap) = (next - previous).to_std()
        {
            longest = longest.max(gap);
        }
        previous = Some(next);
        at = next;
    }
    if longest.is_zero() { DAY } else { longest }
}

/// `25h`, `7d1h`, `90m`.
fn human(d: Duration) -> String {
    let (days, hours, minutes) = (
        d.as_secs() / 86_400,
        d.as_secs() % 86_400 / 3600,
        d.as_secs() % 3600 / 60,
    );
    let mut out = String::new();
    if days > 0 {
        out.push_str(&format!("{days}d"));
    }
    if hours > 0 {
        out.push_str(&format!("{hours}h"));
    }
    if minutes > 0 || out.is_empty() {
        out.push_str(&format!("{minutes}m"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaps_come_from_the_schedule() {
        assert_eq!(longest_gap("0 2 * * *"), Duration::from_secs(86_400));
        assert_eq!(longest_gap("0 4 * * 0"), Duration::from_secs(7 * 86_400));
        assert_eq!(longest_gap("*/15 * * * *"), Duration::from_secs(900));
        assert_eq!(longest_gap("not a schedule"), Duration::from_secs(86_400));
        assert_eq!(human(Duration::from_secs(25 * 3600)), "1d1h");
        assert_eq!(human(Duration::from_secs(4500)), "1h15m");
    }

    #[test]
    fn label_keys_become_prometheus_label_names() {
        assert_eq!(
            label_name("app.kubernetes.io/name"),
            "app_kubernetes_io_name"
        );
        assert_eq!(label_name("team"), "team");
    }
}
