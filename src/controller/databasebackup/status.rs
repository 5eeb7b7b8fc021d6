//! The status of a backup run from its Job and the agent's report (pure).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::api::Engine;
use crate::api::common::BackupDestination;
use crate::api::conditions::{Observed as Condition, kstatus, merge, types};
use crate::api::database_backup::{BackupPhase, DatabaseBackup, DatabaseBackupStatus};
use crate::controller::jobs::{JobState, Report, parse_time};

/// What was found of the run.
pub enum Observed {
    /// The Job, in this state.
    Job(JobState),
    /// No Job, and none can be made: why.
    Gone(String),
}

/// Where the archive goes, from the ServiceDatabase.
pub struct Target {
    pub engine: Engine,
    pub destination: BackupDestination,
    /// The destination's URL; the archive is `<url>/<backup name>`.
    pub url: String,
}

pub struct Input<'a> {
    pub job_name: Option<String>,
    pub observed: &'a Observed,
    pub report: Option<&'a Report>,
    pub target: Option<&'a Target>,
}

pub fn compute(backup: &DatabaseBackup, input: &Input<'_>, now: &Time) -> DatabaseBackupStatus {
    let previous = backup.status.clone().unwrap_or_default();
    let name = backup.metadata.name.clone().unwrap_or_default();
    let mut status = DatabaseBackupStatus {
        engine: previous.engine.or(input.target.map(|t| t.engine)),
        destination: previous
            .destination
            .clone()
            .or(input.target.map(|t| t.destination.clone())),
        job_name: input.job_name.clone().or(previous.job_name.clone()),
        ..previous.clone()
    };
    let report = input.report.cloned().unwrap_or_default();
    let (phase, condition) = match input.observed {
        Observed::Gone(why) => (
            BackupPhase::Failed,
            Condition::new(types::COMPLETED, false, "Failed", why.clone()),
        ),
        Observed::Job(JobState::Pending) => (
            BackupPhase::Pending,
            Condition::new(
                types::COMPLETED,
                false,
                "Pending",
                format!(
                    "Job {} waits to run",
                    status.job_name.clone().unwrap_or_default()
                ),
            ),
        ),
        Observed::Job(JobState::Running { started }) => {
            status.started_at = status.started_at.clone().or(started.clone());
            (
                BackupPhase::Running,
                Condition::new(
                    types::COMPLETED,
                    false,
                    "Running",
                    format!(
                        "Job {} takes the backup",
                        status.job_name.clone().unwrap_or_default()
                    ),
                ),
            )
        }
        Observed::Job(JobState::Succeeded { started, finished }) => {
            status.started_at = report
                .started_at
                .as_deref()
                .and_then(parse_time)
                .or(started.clone())
                .or(status.started_at.clone());
            status.completed_at = report
                .completed_at
                .as_deref()
                .and_then(parse_time)
                .or(finished.clone())
                .or_else(|| Some(now.clone()));
            status.location = report
                .location
                .clone()
                .or_else(|| input.target.map(|t| format!("{}/{name}", t.url)))
                .or(status.location.clone());
            status.size_bytes = report.size_bytes;
            status.size = report
                .size_bytes
                .map(crate::api::database_backup::human_size);
            status.checksum = report.checksum.clone();
            let message = match (&status.location, report.size_bytes) {
                (Some(location), Some(size)) => format!("{size} bytes stored at {location}"),
                (Some(location), None) => format!("stored at {location}"),
                _ => "stored".to_string(),
            };
            (
                BackupPhase::Completed,
                Condition::new(types::COMPLETED, true, "Completed", message),
            )
        }
        Observed::Job(JobState::Failed { message, .. }) => {
            status.completed_at = None;
            (
                BackupPhase::Failed,
                Condition::new(
                    types::COMPLETED,
                    false,
                    "Failed",
                    report
                        .error
                        .clone()
                        .unwrap_or_else(|| message.clone())
                        .chars()
                        .take(1000)
                        .collect::<String>(),
                ),
            )
        }
    };
    status.phase = phase;
    // kstatus: a run in progress is Reconciling, a failed one Stalled (it is
    // not retried); a completed one is neither.
    let [reconciling, stalled] = kstatus(&condition, phase == BackupPhase::Failed);
    status.conditions = merge(
        &previous.conditions,
        &[condition, reconciling, stalled],
        backup.metadata.generation,
        now,
    );
    status
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backup() -> DatabaseBackup {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "servicedb.dev/v1alpha1", "kind": "DatabaseBackup",
            "metadata": {"name": "b1", "namespace": "shop"},
            "spec": {"serviceDatabaseRef": {"name": "orders"}}
        }))
        .unwrap()
    }

    fn target() -> Target {
        Target {
            engine: Engine::Postgres,
            destination: serde_json::from_value(
                serde_json::json!({"volume": {"claimName": "backups"}}),
            )
            .unwrap(),
            url: "file:///backup/shop/orders".into(),
        }
    }

    #[test]
    fn a_completed_run_records_the_agents_manifest() {
        let now = Time("2026-01-01T00:10:00Z".parse().unwrap());
        let report = Report::parse(
            r#"{"location":"file:///backup/shop/orders/b1","sizeBytes":1234,"checksum":"sha256:00ff","startedAt":"2026-01-01T00:00:00Z","completedAt":"2026-01-01T00:00:09Z"}"#,
        );
        let t = target();
        let s = compute(
            &backup(),
            &Input {
                job_name: Some("b1-backup".into()),
                observed: &Observed::Job(JobState::Succeeded {
                    started: None,
                    finished: None,
                }),
                report: Some(&report),
                target: Some(&t),
            },
            &now,
        );
        assert_eq!(s.phase, BackupPhase::Completed);
        assert_eq!(s.size_bytes, Some(1234));
        assert_eq!(s.checksum.as_deref(), Some("sha256:00ff"));
        assert_eq!(s.location.as_deref(), Some("file:///backup/shop/orders/b1"));
        assert_eq!(
            s.completed_at,
            Some(Time("2026-01-01T00:00:09Z".parse().unwrap()))
        );
        assert_eq!(s.engine, Some(Engine::Postgres));
        assert!(s.destination.is_some());
    }

    #[test]
    fn a_failed_run_says_why() {
        let now = Time("2026-01-01T00:10:00Z".parse().unwrap());
        let report = Report::parse(r#"{"error":"pg_dump: connection refused"}"#);
        let s = compute(
            &backup(),
            &Input {
                job_name: Some("b1-backup".into()),
                observed: &Observed::Job(JobState::Failed {
                    finished: None,
                    message: "BackoffLimitExceeded".into(),
                }),
                report: Some(&report),
                target: None,
            },
            &now,
        );
        assert_eq!(s.phase, BackupPhase::Failed);
        assert_eq!(s.conditions[0].message, "pg_dump: connection refused");
        assert_eq!(s.conditions[0].status, "False");
    }
}
