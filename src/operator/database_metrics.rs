//! Per-ServiceDatabase gauges, read at scrape time from the ServiceDatabase
//! controller's cache, so a database's series appear with it, follow its
//! status and are gone from the next scrape after it is deleted.
//!
//! | metric | labels |
//! | --- | --- |
//! | `servicedb_database_info` | `namespace`, `name`, `engine`, `isolation`, `owner` |
//! | `servicedb_database_phase` | `namespace`, `name`, `engine`, `phase` (the current one, value 1) |
//! | `servicedb_database_last_backup_timestamp_seconds` | `namespace`, `name`, `engine` |
//! | `servicedb_database_last_verification_timestamp_seconds` | `namespace`, `name`, `engine` |
//! | `servicedb_database_verification_failed` | `namespace`, `name`, `engine` |
//! | `servicedb_database_credentials_issued_timestamp_seconds` | `namespace`, `name`, `engine` |
//!
//! One series of each per ServiceDatabase (a timestamp only once there is
//! one); every value comes from `status`, which never holds a secret. Only
//! the leader has the cache: a standby exports none of them.

use std::sync::{Arc, OnceLock};

use kube::ResourceExt;
use kube::runtime::reflector::Store;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::gauge::ConstGauge;

use crate::api::ServiceDatabase;

/// The condition reason that says the newest verification run failed.
const VERIFY_FAILED: &str = "VerifyFailed";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DatabaseLabels {
    namespace: String,
    name: String,
    engine: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InfoLabels {
    namespace: String,
    name: String,
    engine: &'static str,
    isolation: &'static str,
    /// `owner.podSelector.matchLabels` as `k=v,k=v`.
    owner: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabels {
    namespace: String,
    name: String,
    engine: &'static str,
    phase: String,
}

/// What one ServiceDatabase exports (pure: from the object alone).
#[derive(Clone, Debug, PartialEq)]
pub struct DatabaseSample {
    labels: DatabaseLabels,
    isolation: &'static str,
    owner: String,
    phase: String,
    last_backup: Option<i64>,
    last_verification: Option<i64>,
    verification_failed: bool,
    credentials_issued: Option<i64>,
}

impl DatabaseSample {
    pub fn of(sdb: &ServiceDatabase) -> DatabaseSample {
        let status = sdb.status.clone().unwrap_or_default();
        let owner = sdb
            .spec
            .owner
            .pod_selector
            .match_labels
            .as_ref()
            .map(|labels| {
                labels
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_default();
        DatabaseSample {
            labels: DatabaseLabels {
                namespace: sdb.namespace().unwrap_or_default(),
                name: sdb.name_any(),
                engine: sdb.spec.engine.as_str(),
            },
            isolation: isolation(sdb.spec.isolation),
            owner,
            phase: status.phase.to_string(),
            last_backup: status
                .last_backup
                .and_then(|b| b.completed_at)
                .map(|t| t.0.as_second()),
            last_verification: status
                .last_verified_backup
                .and_then(|v| v.verified_at)
                .map(|t| t.0.as_second()),
            verification_failed: status.conditions.iter().any(|c| {
                c.type_ == crate::api::conditions::types::BACKUP_HEALTHY
                    && c.status == "False"
                    && c.reason == VERIFY_FAILED
            }),
            credentials_issued: status.credentials_rotated_at.map(|t| t.0.as_second()),
        }
    }
}

fn isolation(isolation: crate::api::Isolation) -> &'static str {
    use crate::api::Isolation as I;
    match isolation {
        I::Dedicated => "Dedicated",
        I::Database => "Database",
        I::Schema => "Schema",
    }
}

/// The collector; [`Databases::observe`] hands it the controller's cache.
#[derive(Clone, Default)]
pub struct Databases(Arc<OnceLock<Store<ServiceDatabase>>>);

impl std::fmt::Debug for Databases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Databases")
            .field("observing", &self.0.get().is_some())
            .finish()
    }
}

impl Databases {
    /// Exports the ServiceDatabases of `store` from now on; a second store
    /// is ignored (the controller runs once).
    pub fn observe(&self, store: Store<ServiceDatabase>) {
        if self.0.set(store).is_err() {
            tracing::warn!("per-database metrics already read a cache; ignoring a second one");
        }
    }

    fn samples(&self) -> Vec<DatabaseSample> {
        let Some(store) = self.0.get() else {
            return Vec::new();
        };
        let mut samples: Vec<DatabaseSample> = store
            .state()
            .iter()
            .map(|s| DatabaseSample::of(s))
            .collect();
        samples.sort_by(|a, b| {
            (&a.labels.namespace, &a.labels.name).cmp(&(&b.labels.namespace, &b.labels.name))
        });
        samples
    }
}

/// Writes one gauge family: `rows` of (labels, value).
fn family<S: EncodeLabelSet, V>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: impl Iterator<Item = (S, V)>,
) -> Result<(), std::fmt::Error>
where
    ConstGauge<V>: EncodeMetric,
{
    let mut rows = rows.peekable();
    if rows.peek().is_none() {
        return Ok(());
    }
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, value) in rows {
        ConstGauge::new(value).encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

impl Collector for Databases {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let samples = self.samples();
        family(
            &mut encoder,
            "database_info",
            "1 for every ServiceDatabase; its isolation and owner (owner.podSelector.matchLabels)",
            samples.iter().map(|s| {
                let labels = InfoLabels {
                    namespace: s.labels.namespace.clone(),
                    name: s.labels.name.clone(),
                    engine: s.labels.engine,
                    isolation: s.isolation,
                    owner: s.owner.clone(),
                };
                (labels, 1i64)
            }),
        )?;
        family(
            &mut encoder,
            "database_phase",
            "1, labelled with the ServiceDatabase's current status.phase",
            samples.iter().map(|s| {
                let labels = PhaseLabels {
                    namespace: s.labels.namespace.clone(),
                    name: s.labels.name.clone(),
                    engine: s.labels.engine,
                    phase: s.phase.clone(),
                };
                (labels, 1i64)
            }),
        )?;
        family(
            &mut encoder,
            "database_last_backup_timestamp_seconds",
            "When the last successful backup completed (status.lastBackup.completedAt), Unix seconds",
            samples
                .iter()
                .filter_map(|s| Some((s.labels.clone(), s.last_backup?))),
        )?;
        family(
            &mut encoder,
            "database_last_verification_timestamp_seconds",
            "When the last successful verification finished (status.lastVerifiedBackup.verifiedAt), Unix seconds",
            samples
                .iter()
                .filter_map(|s| Some((s.labels.clone(), s.last_verification?))),
        )?;
        family(
            &mut encoder,
            "database_verification_failed",
            "1 while the newest verification run failed (BackupHealthy is False with reason VerifyFailed), else 0",
            samples
                .iter()
                .map(|s| (s.labels.clone(), i64::from(s.verification_failed))),
        )?;
        family(
            &mut encoder,
            "database_credentials_issued_timestamp_seconds",
            "When the password in the credentials Secret was issued (status.credentialsRotatedAt), Unix seconds",
            samples
                .iter()
                .filter_map(|s| Some((s.labels.clone(), s.credentials_issued?))),
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::Metrics;
    use kube::runtime::reflector::{ObjectRef, store};
    use kube::runtime::watcher;

    fn sdb(name: &str, status: serde_json::Value) -> ServiceDatabase {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "servicedb.dev/v1alpha1",
            "kind": "ServiceDatabase",
            "metadata": {"name": name, "namespace": "shop", "uid": format!("uid-{name}")},
            "spec": {
                "engine": "Postgres",
                "owner": {"podSelector": {"matchLabels": {"app": name, "team": "payments"}}}
            },
            "status": status,
        }))
        .expect("a ServiceDatabase")
    }

    #[test]
    fn a_database_exports_its_phase_and_timestamps_and_goes_when_deleted() {
        let metrics = Metrics::default();
        let (reader, mut writer) = store::<ServiceDatabase>();
        metrics.observe_databases(reader);
        let orders = sdb(
            "orders",
            serde_json::json!({
                "phase": "Ready",
                "credentialsRotatedAt": "2026-12-01T10:00:00Z",
                "lastBackup": {"name": "orders-1", "completedAt": "2026-12-05T02:00:00Z"},
                "conditions": [{"type": "BackupHealthy", "status": "False", "reason": "VerifyFailed",
                                "message": "m", "lastTransitionTime": "2026-12-05T02:00:00Z"}]
            }),
        );
        writer.apply_watcher_event(&watcher::Event::Apply(orders.clone()));
        writer.apply_watcher_event(&watcher::Event::Apply(sdb("cart", serde_json::json!({}))));

        let text = metrics.encode();
        let labels = r#"namespace="shop",name="orders",engine="postgres""#;
        for line in [
            format!(r#"servicedb_database_info{{{labels},isolation="Dedicated",owner="app=orders,team=payments"}} 1"#),
            format!(r#"servicedb_database_phase{{{labels},phase="Ready"}} 1"#),
            format!("servicedb_database_last_backup_timestamp_seconds{{{labels}}} 1796436000"),
            format!("servicedb_database_credentials_issued_timestamp_seconds{{{labels}}} 1796119200"),
            format!("servicedb_database_verification_failed{{{labels}}} 1"),
            r#"servicedb_database_phase{namespace="shop",name="cart",engine="postgres",phase="Pending"} 1"#.to_string(),
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
        }
        assert!(
            !text.contains("servicedb_database_last_verification_timestamp_seconds{"),
            "no verification yet, no series:\n{text}"
        );
        assert!(
            !text.contains(r#"last_backup_timestamp_seconds{namespace="shop",name="cart""#),
            "{text}"
        );

        writer.apply_watcher_event(&watcher::Event::Delete(orders.clone()));
        let text = metrics.encode();
        assert!(!text.contains(r#"name="orders""#), "{text}");
        assert!(text.contains(r#"name="cart""#), "{text}");
        assert!(
            writer
                .as_reader()
                .get(&ObjectRef::from_obj(&orders))
                .is_none()
        );
    }

    #[test]
    fn without_a_cache_nothing_is_exported() {
        let text = Metrics::default().encode();
        assert!(!text.contains("servicedb_database_"), "{text}");
    }
}
