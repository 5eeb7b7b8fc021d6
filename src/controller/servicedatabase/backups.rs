//! Between validate and build (async): the backups of a ServiceDatabase.
//! Each Job the backup CronJob made is recorded as a `DatabaseBackup`
//! (trigger `Scheduled`) named after the Job; retention deletes old
//! completed backups (their finalizer deletes the archives); the newest
//! completed backup feeds the verify CronJob; the last backup and the last
//! verification make the `BackupHealthy` condition.

use std::time::Duration;

use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};

use crate::api::ServiceDatabase;
use crate::api::common::LocalObjectRef;
use crate::api::conditions::{Observed, types};
use crate::api::database_backup::{BackupPhase, BackupTrigger, DatabaseBackup, DatabaseBackupSpec};
use crate::api::service_database::{LastBackup, LastVerifiedBackup};
use crate::build::backup::{Archive, LABEL_BACKUP, component};
use crate::build::{
    LABEL_COMPONENT, LABEL_INSTANCE, LABEL_MANAGED_BY, MANAGED_BY, instance_selectors,
};
use crate::controller::jobs::{self, JobState, Report};
use crate::model::database::{ValidatedBackup, ValidatedDatabase};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading {kind}: {source}")]
    Read {
        kind: &'static str,
        #[source]
        source: kube::Error,
    },
    #[error("recording DatabaseBackup {name}: {source}")]
    Record {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("deleting expired DatabaseBackup {name}: {source}")]
    Expire {
        name: String,
        #[source]
        source: kube::Error,
    },
}

/// What the status and the builders need to know about backups.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BackupState {
    /// The newest completed backup, restored by verification runs.
    pub latest: Option<Archive>,
    pub last_backup: Option<LastBackup>,
    /// `BackupHealthy`; `None` without `spec.backup`.
    pub health: Option<Observed>,
    pub last_verified: Option<LastVerifiedBackup>,
}

/// The instance's Jobs that match `extra`, by the instance label of now and
/// of earlier versions (the Jobs an earlier version's CronJob made).
async fn instance_jobs(jobs: &Api<Job>, instance: &str, extra: &str) -> Result<Vec<Job>, Error> {
    let mut found = Vec::new();
    for selector in instance_selectors(instance, extra) {
        found.extend(
            jobs.list(&ListParams::default().labels(&selector))
                .await
                .map_err(|source| Error::Read {
                    kind: "Job",
                    source,
                })?
                .items,
        );
    }
    Ok(found)
}

/// Records scheduled runs, applies retention and reads the outcome of the
/// latest runs.
pub async fn observe(
    client: &Client,
    sdb: &ServiceDatabase,
    db: &ValidatedDatabase,
    now: &Time,
) -> Result<BackupState, Error> {
    let Some(backup) = &db.backup else {
        return Ok(BackupState::default());
    };
    let jobs: Api<Job> = Api::namespaced(client.clone(), &db.namespace);
    let scheduled = instance_jobs(
        &jobs,
        &db.name,
        &format!("{LABEL_COMPONENT}={},!{LABEL_BACKUP}", component::BACKUP),
    )
    .await?;

    let api: Api<DatabaseBackup> = Api::namespaced(client.clone(), &db.namespace);
    let mut backups: Vec<DatabaseBackup> = api
        .list(&ListParams::default())
        .await
        .map_err(|source| Error::Read {
            kind: "DatabaseBackup",
            source,
        })?
        .items
        .into_iter()
        .filter(|b| b.spec.service_database_ref.name == db.name)
        .collect();
    for job in &scheduled {
        let name = job.name_any();
        if !backups.iter().any(|b| b.name_any() == name) {
            backups.push(record(&api, db, &name).await?);
        }
        // Recorded once: a DatabaseBackup deleted later (by retention or by
        // hand) must not come back while the CronJob keeps its Job.
        let label = serde_json::json!({"metadata": {"labels": {LABEL_BACKUP: name}}});
        jobs.patch(&name, &PatchParams::default(), &Patch::Merge(&label))
            .await
            .map_err(|source| Error::Record {
                name: name.clone(),
                source,
            })?;
    }

    for name in expired(&backups, backup, now) {
        // Pruning is what retention is for: the archive goes with the
        // record, whatever retainArchivesOnDelete says about deletions by
        // hand.
        let delete_archive = serde_json::json!({"spec": {"retainArchiveOnDelete": false}});
        match api
            .patch(
                &name,
                &PatchParams::default(),
                &Patch::Merge(&delete_archive),
            )
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => continue,
            Err(source) => {
                return Err(Error::Expire {
                    name: name.clone(),
                    source,
                });
            }
        }
        crate::controller::apply::delete(&api, &name)
            .await
            .map_err(|source| Error::Expire {
                name: name.clone(),
                source,
            })?;
        tracing::info!(backup = %name, "deleted by retention");
    }

    // Backups are due from when the schedule exists, not from when the
    // database was made (backups may be switched on later).
    let scheduled_since = Api::<CronJob>::namespaced(client.clone(), &db.namespace)
        .get_opt(&crate::build::backup::backup_cronjob_name(db))
        .await
        .map_err(|source| Error::Read {
            kind: "CronJob",
            source,
        })?
        .and_then(|c| c.creation_timestamp())
        .or_else(|| Some(now.clone()));
    let mut state = summarize(&backups, backup, scheduled_since, now);
    if backup.verify_schedule.is_some() {
        let verifications = instance_jobs(
            &jobs,
            &db.name,
            &format!("{LABEL_COMPONENT}={}", component::VERIFY),
        )
        .await?;
        state.last_verified = sdb
            .status
            .as_ref()
            .and_then(|s| s.last_verified_backup.clone());
        if let Some((job, outcome)) = jobs::newest_finished(&verifications) {
            let message = jobs::termination_message(client, &db.namespace, &job.name_any())
                .await
                .map_err(|source| Error::Read {
                    kind: "Pod",
                    source,
                })?
                .map(|m| Report::parse(&m))
                .unwrap_or_default();
            let verified = job.labels().get(LABEL_BACKUP).cloned();
            match outcome {
                JobState::Succeeded { finished, .. } => {
                    state.last_verified = Some(LastVerifiedBackup {
                        name: verified.unwrap_or_default(),
                        verified_at: finished,
                        restore_seconds: message.restore_seconds,
                    });
                }
                JobState::Failed {
                    message: fallback, ..
                } => {
                    state.health = Some(Observed::new(
                        types::BACKUP_HEALTHY,
                        false,
                        "VerifyFailed",
                        format!(
                            "verification Job {} of backup {} failed: {}",
                            job.name_any(),
                            verified.unwrap_or_default(),
                            message.error.unwrap_or(fallback)
                        ),
                    ));
                }
                _ => {}
            }
        }
    }
    Ok(state)
}

/// Records a Job of the backup CronJob. The `DatabaseBackup` has no owner:
/// backups outlive their CronJob and their database.
async fn record(
    api: &Api<DatabaseBackup>,
    db: &ValidatedDatabase,
    job: &str,
) -> Result<DatabaseBackup, Error> {
    let backup = DatabaseBackup {
        metadata: ObjectMeta {
            name: Some(job.into()),
            namespace: Some(db.namespace.clone()),
            labels: Some(
                [
                    (LABEL_INSTANCE.to_string(), db.name.clone()),
                    (LABEL_MANAGED_BY.to_string(), MANAGED_BY.to_string()),
                ]
                .into(),
            ),
            ..Default::default()
        },
        spec: DatabaseBackupSpec {
            service_database_ref: LocalObjectRef {
                name: db.name.clone(),
            },
            trigger: BackupTrigger::Scheduled,
            retain_archive_on_delete: db.backup.as_ref().map(|b| b.retain_archives_on_delete),
        },
        status: None,
    };
    match api.create(&PostParams::default(), &backup).await {
        Ok(created) => {
            tracing::info!(backup = job, "recorded a scheduled backup");
            Ok(created)
        }
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(backup),
        Err(source) => Err(Error::Record {
            name: job.into(),
            source,
        }),
    }
}

fn completed_at(b: &DatabaseBackup) -> Option<Time> {
    b.status
        .as_ref()
        .and_then(|s| s.completed_at.clone())
        .or_else(|| b.creation_timestamp())
}

fn phase(b: &DatabaseBackup) -> BackupPhase {
    b.status.as_ref().map(|s| s.phase).unwrap_or_default()
}

/// Completed backups retention applies to (not the final backup of a
/// Snapshot deletion, not one being deleted), newest first.
fn completed(backups: &[DatabaseBackup]) -> Vec<&DatabaseBackup> {
    let mut done: Vec<&DatabaseBackup> = backups
        .iter()
        .filter(|b| phase(b) == BackupPhase::Completed)
        .filter(|b| b.spec.trigger != BackupTrigger::Final)
        .filter(|b| b.metadata.deletion_timestamp.is_none())
        .collect();
    done.sort_by(|a, b| {
        completed_at(b)
            .cmp(&completed_at(a))
            .then_with(|| b.name_any().cmp(&a.name_any()))
    });
    done
}

/// The completed backups beyond `keepLast` or older than `maxAge`; never the
/// newest completed one, never one that runs.
pub fn expired(backups: &[DatabaseBackup], backup: &ValidatedBackup, now: &Time) -> Vec<String> {
    completed(backups)
        .into_iter()
        .enumerate()
        .skip(1)
        .filter(|(i, b)| {
            backup.keep_last.is_some_and(|k| *i >= k)
                || backup
                    .max_age
                    .is_some_and(|max| completed_at(b).is_some_and(|at| age(&at, now) > max))
        })
        .map(|(_, b)| b.name_any())
        .collect()
}

fn age(at: &Time, now: &Time) -> Duration {
    let secs = now.0.as_second() - at.0.as_second();
    Duration::from_secs(secs.max(0) as u64)
}

/// The interval of a schedule around `at`: the time between its two next runs.
pub fn interval(schedule: &str, at: &Time) -> Option<Duration> {
    let cron = croner::parser::CronParser::new().parse(schedule).ok()?;
    let start = chrono::DateTime::from_timestamp(at.0.as_second(), 0)?;
    let first = cron.find_next_occurrence(&start, false).ok()?;
    let second = cron.find_next_occurrence(&first, false).ok()?;
    (second - first).to_std().ok()
}

/// `lastBackup`, the newest completed archive, and `BackupHealthy` (pure);
/// `scheduled_since` is when the schedule began.
pub fn summarize(
    backups: &[DatabaseBackup],
    backup: &ValidatedBackup,
    scheduled_since: Option<Time>,
    now: &Time,
) -> BackupState {
    let done = completed(backups);
    let newest = done.first();
    let last_backup = newest.map(|b| LastBackup {
        name: b.name_any(),
        completed_at: completed_at(b),
        size_bytes: b.status.as_ref().and_then(|s| s.size_bytes),
    });
    let latest = newest.and_then(|b| {
        let status = b.status.as_ref()?;
        Some(Archive {
            name: b.name_any(),
            location: status.location.clone()?,
            destination: status.destination.clone()?,
        })
    });

    // The newest run that concluded decides first: a failure is news even
    // when an older backup succeeded.
    let newest_run = backups
        .iter()
        .filter(|b| b.spec.trigger != BackupTrigger::Final)
        .filter(|b| matches!(phase(b), BackupPhase::Completed | BackupPhase::Failed))
        .max_by(|a, b| {
            a.creation_timestamp()
                .cmp(&b.creation_timestamp())
                .then_with(|| a.name_any().cmp(&b.name_any()))
        });
    let health = if let Some(failed) = newest_run.filter(|b| phase(b) == BackupPhase::Failed) {
        let why = failed
            .status
            .as_ref()
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == types::COMPLETED))
            .map(|c| c.message.clone())
            .unwrap_or_default();
        Observed::new(
            types::BACKUP_HEALTHY,
            false,
            "BackupFailed",
            format!("DatabaseBackup {} failed: {why}", failed.name_any()),
        )
    } else {
        let since = last_backup
            .as_ref()
            .and_then(|l| l.completed_at.clone())
            .or(scheduled_since);
        let overdue = since.as_ref().and_then(|since| {
            let every = interval(&backup.schedule, since)?;
            (age(since, now) > every * 2).then_some(every)
        });
        match (overdue, &last_backup) {
            (Some(every), Some(last)) => Observed::new(
                types::BACKUP_HEALTHY,
                false,
                "BackupOverdue",
                format!(
                    "the last successful backup {} is older than twice the schedule's interval ({}s)",
                    last.name,
                    every.as_secs()
                ),
            ),
            (Some(every), None) => Observed::new(
                types::BACKUP_HEALTHY,
                false,
                "BackupOverdue",
                format!(
                    "no backup succeeded within twice the schedule's interval ({}s)",
                    every.as_secs()
                ),
            ),
            (None, Some(last)) => Observed::new(
                types::BACKUP_HEALTHY,
                true,
                "BackupSucceeded",
                format!("the last backup {} succeeded", last.name),
            ),
            (None, None) => Observed::new(
                types::BACKUP_HEALTHY,
                true,
                "Scheduled",
                format!("the first backup runs on schedule {:?}", backup.schedule),
            ),
        }
    };
    BackupState {
        latest,
        last_backup,
        health: Some(health),
        last_verified: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Time {
        Time(s.parse().unwrap())
    }

    fn backup(name: &str, phase: &str, completed: &str, trigger: &str) -> DatabaseBackup {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "servicedb.dev/v1alpha1", "kind": "DatabaseBackup",
            "metadata": {"name": name, "creationTimestamp": completed},
            "spec": {"serviceDatabaseRef": {"name": "orders"}, "trigger": trigger},
            "status": {"phase": phase, "completedAt": completed, "location": format!("s3://b/{name}"),
                "destination": {"s3": {"bucket": "b", "credentialsSecret": "s"}},
                "conditions": [{"type": "Completed", "status": if phase == "Completed" {"True"} else {"False"},
                    "reason": phase, "message": "pg_dump: connection refused", "lastTransitionTime": completed}]}
        }))
        .unwrap()
    }

    fn settings(keep_last: Option<usize>, max_age: Option<u64>) -> ValidatedBackup {
        ValidatedBackup {
            schedule: "0 2 * * *".into(),
            destination: serde_json::from_value(
                serde_json::json!({"s3": {"bucket": "b", "credentialsSecret": "s"}}),
            )
            .unwrap(),
            url: "s3://b/shop/orders".into(),
            keep_last,
            max_age: max_age.map(|h| Duration::from_secs(h * 3600)),
            verify_schedule: None,
            retain_archives_on_delete: true,
        }
    }

    #[test]
    fn retention_keeps_the_newest_and_never_touches_running_or_final_backups() {
        let backups = vec![
            backup("b1", "Completed", "2026-01-01T02:00:00Z", "Scheduled"),
            backup("b2", "Completed", "2026-01-02T02:00:00Z", "Manual"),
            backup("b3", "Completed", "2026-01-03T02:00:00Z", "Scheduled"),
            backup("b4", "Running", "2026-01-04T02:00:00Z", "Scheduled"),
            backup("f", "Completed", "2025-01-01T02:00:00Z", "Final"),
        ];
        let now = t("2026-01-04T03:00:00Z");
        assert_eq!(expired(&backups, &settings(Some(2), None), &now), ["b1"]);
        assert_eq!(
            expired(&backups, &settings(None, Some(30)), &now),
            ["b2", "b1"]
        );
        // Even far too old, the newest completed backup stays.
        let far = t("2027-01-01T00:00:00Z");
        assert_eq!(
            expired(&backups, &settings(None, Some(1)), &far),
            ["b2", "b1"]
        );
        assert!(expired(&backups, &settings(None, None), &now).is_empty());
    }

    #[test]
    fn health_follows_the_last_run_and_the_schedule() {
        let s = settings(None, None);
        let ok = vec![backup(
            "b1",
            "Completed",
            "2026-01-01T02:00:00Z",
            "Scheduled",
        )];
        let state = summarize(&ok, &s, None, &t("2026-01-02T03:00:00Z"));
        assert!(state.health.as_ref().unwrap().status);
        assert_eq!(state.last_backup.unwrap().name, "b1");
        assert_eq!(state.latest.unwrap().location, "s3://b/b1");

        // Daily schedule, last success three days ago: overdue.
        let state = summarize(&ok, &s, None, &t("2026-01-04T03:00:00Z"));
        let health = state.health.unwrap();
        assert_eq!((health.status, health.reason), (false, "BackupOverdue"));

        let mut failed = ok.clone();
        failed.push(backup("b2", "Failed", "2026-01-02T02:00:00Z", "Scheduled"));
        let health = summarize(&failed, &s, None, &t("2026-01-02T03:00:00Z"))
            .health
            .unwrap();
        assert_eq!((health.status, health.reason), (false, "BackupFailed"));
        assert!(health.message.contains("b2") && health.message.contains("connection refused"));
    }

    #[test]
    fn without_any_backup_the_schedule_start_decides() {
        let s = settings(None, None);
        let since = Some(t("2026-01-01T00:00:00Z"));
        let fresh = summarize(&[], &s, since.clone(), &t("2026-01-02T00:00:00Z"))
            .health
            .unwrap();
        assert_eq!((fresh.status, fresh.reason), (true, "Scheduled"));
        let late = summarize(&[], &s, since, &t("2026-01-05T00:00:00Z"))
            .health
            .unwrap();
        assert_eq!((late.status, late.reason), (false, "BackupOverdue"));
    }

    #[test]
    fn the_interval_comes_from_the_schedule() {
        let at = t("2026-01-01T00:00:00Z");
        assert_eq!(interval("0 2 * * *", &at), Some(Duration::from_secs(86400)));
        assert_eq!(interval("*/5 * * * *", &at), Some(Duration::from_secs(300)));
        assert_eq!(interval("@hourly", &at), Some(Duration::from_secs(3600)));
    }
}
