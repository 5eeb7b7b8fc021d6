//! Step 5 of the ServiceDatabase pipeline (async): conditions with
//! `observedGeneration`, the phase, and Events on transitions. The status is
//! written only when it changed.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::{Client, Resource};

use super::backups::BackupState;
use super::instance::NotReady;
use super::restore::Restore;
use crate::api::conditions::{Observed, kstatus, merge, types};
use crate::api::service_database::Endpoint;
use crate::api::{Phase, ServiceDatabase, ServiceDatabaseStatus};
use crate::model::database::{Invalid, ValidatedDatabase};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("writing status: {0}")]
    Patch(#[source] kube::Error),
}

/// What the pipeline found, for the status.
pub enum Outcome<'a> {
    /// The spec cannot be realised.
    Invalid(&'a Invalid),
    /// Children are applied; the instance has this many ready replicas.
    Applied {
        db: &'a ValidatedDatabase,
        ready_replicas: i32,
        backups: &'a BackupState,
        restore: &'a Restore,
        /// `CredentialsRolledOut`, when it was looked at.
        rollout: Option<Observed>,
        /// Why the dedicated instance's pod is not ready, when it is not.
        not_ready: Option<&'a NotReady>,
    },
    /// Being deleted with `deletionPolicy: Snapshot`, waiting for the final
    /// backup (`failed`: it failed).
    FinalBackup { message: String, failed: bool },
    /// The shared server could not be reached or refused the provisioning.
    ServerUnavailable {
        db: &'a ValidatedDatabase,
        message: String,
    },
}

/// The status for an outcome, merged with the previous one.
pub fn compute(sdb: &ServiceDatabase, outcome: &Outcome<'_>, now: &Time) -> ServiceDatabaseStatus {
    let previous = sdb.status.clone().unwrap_or_default();
    let generation = sdb.metadata.generation;
    match outcome {
        Outcome::Invalid(invalid) => {
            let message = invalid.to_string();
            let ready = Observed::new(types::READY, false, invalid.reason, message.clone());
            let mut observed = vec![
                Observed::new(types::SPEC_VALID, false, invalid.reason, message),
                ready.clone(),
            ];
            observed.extend(kstatus(&ready, true));
            ServiceDatabaseStatus {
                phase: Phase::Failed,
                observed_generation: generation,
                conditions: merge(&previous.conditions, &observed, generation, now),
                ..previous
            }
        }
        Outcome::ServerUnavailable { db, message } => {
            let observed = [
                Observed::new(
                    types::SPEC_VALID,
                    true,
                    "Valid",
                    format!("accepted by DatabaseClass {}", db.class_name),
                ),
                Observed::new(
                    types::INSTANCE_READY,
                    false,
                    "ServerUnavailable",
                    message.clone(),
                ),
                Observed::new(types::READY, false, "ServerUnavailable", message.clone()),
            ];
            let mut observed = observed.to_vec();
            observed.extend(kstatus(&observed[2], false));
            ServiceDatabaseStatus {
                phase: match previous.phase {
                    Phase::Ready | Phase::Degraded => Phase::Degraded,
                    _ => Phase::Provisioning,
                },
                observed_generation: generation,
                conditions: merge(&previous.conditions, &observed, generation, now),
                ..previous
            }
        }
        Outcome::FinalBackup { message, failed } => {
            let observed = [Observed::new(
                types::FINAL_BACKUP,
                false,
                if *failed {
                    "FinalBackupFailed"
                } else {
                    "FinalBackupRunning"
                },
                message.clone(),
            )];
            ServiceDatabaseStatus {
                phase: Phase::Deleting,
                conditions: merge(&previous.conditions, &observed, generation, now),
                ..previous
            }
        }
        Outcome::Applied {
            db,
            ready_replicas,
            backups,
            restore,
            rollout,
            not_ready,
        } => {
            let instance_ready = *ready_replicas > 0;
            let restored = match restore {
                Restore::NotRequested => None,
                Restore::WaitingForInstance { backup } => Some(Observed::new(
                    types::RESTORED,
                    false,
                    "Restoring",
                    format!("{backup} is restored once the instance is up"),
                )),
                Restore::Running { backup } => Some(Observed::new(
                    types::RESTORED,
                    false,
                    "Restoring",
                    format!(
                        "Job {} restores {backup}",
                        crate::build::backup::restore_job_name(&db.name)
                    ),
                )),
                Restore::Completed { backup } => Some(Observed::new(
                    types::RESTORED,
                    true,
                    "Restored",
                    format!("{backup} was restored"),
                )),
                Restore::Failed { backup, message } => Some(Observed::new(
                    types::RESTORED,
                    false,
                    "RestoreFailed",
                    format!("restoring {backup} failed: {message}"),
                )),
                Restore::Retained { backup, kept } => Some(Observed::new(
                    types::RESTORED,
                    true,
                    super::restore::DATA_RETAINED,
                    format!(
                        "the {kept} was kept from an earlier ServiceDatabase {}; {backup} is not restored over it",
                        db.name
                    ),
                )),
            };
            let restore_done = restored.as_ref().is_none_or(|r| r.status);
            let ready = instance_ready && restore_done;
            let instance = if let Some(server) = &db.server {
                Observed::new(
                    types::INSTANCE_READY,
                    true,
                    "DatabaseProvisioned",
                    format!(
                        "database {} and its login exist on DatabaseServer {}/{}",
                        db.database, server.namespace, server.name
                    ),
                )
            } else if instance_ready {
                Observed::new(
                    types::INSTANCE_READY,
                    true,
                    "InstanceReady",
                    "the database instance accepts connections",
                )
            } else if let Some(not_ready) = not_ready {
                Observed::new(
                    types::INSTANCE_READY,
                    false,
                    not_ready.reason,
                    not_ready.message.clone(),
                )
            } else {
                Observed::new(
                    types::INSTANCE_READY,
                    false,
                    "Starting",
                    format!(
                        "waiting for StatefulSet {} to report a ready replica",
                        db.instance_name()
                    ),
                )
            };
            let observed = [
                Observed::new(
                    types::SPEC_VALID,
                    true,
                    "Valid",
                    format!("accepted by DatabaseClass {}", db.class_name),
                ),
                instance,
                Observed::new(
                    types::CREDENTIALS_READY,
                    true,
                    "SecretReady",
                    format!("Secret {} holds the connection details", db.secret_name),
                ),
                if db.server.is_some() {
                    // A shared server is not a pod of this namespace: no
                    // NetworkPolicy servicedb writes here can fence it (it
                    // may be outside the cluster, and every admitted
                    // namespace reaches it); the service's own login is what
                    // keeps others out of its data.
                    Observed::unknown(
                        types::NETWORK_ISOLATED,
                        "SharedServer",
                        "no NetworkPolicy fences a shared server (it may run outside the cluster, and it serves every admitted namespace); the database is private by its own least-privilege login only",
                    )
                } else {
                    Observed::new(
                        types::NETWORK_ISOLATED,
                        true,
                        "NetworkPolicyApplied",
                        format!(
                            "NetworkPolicy {} admits only the owner's pods",
                            db.instance_name()
                        ),
                    )
                },
                if ready {
                    Observed::new(
                        types::READY,
                        true,
                        "Ready",
                        "the database is ready for the service",
                    )
                } else if let Some(restored) = restored.as_ref().filter(|_| instance_ready) {
                    Observed::new(
                        types::READY,
                        false,
                        restored.reason,
                        restored.message.clone(),
                    )
                } else if let Some(stuck) = not_ready.filter(|n| n.stuck && !instance_ready) {
                    Observed::new(types::READY, false, stuck.reason, stuck.message.clone())
                } else {
                    Observed::new(
                        types::READY,
                        false,
                        "Provisioning",
                        "the database instance is not ready yet",
                    )
                },
            ];
            let mut observed = observed.to_vec();
            // A failed restore waits for its Job to be deleted.
            let stalled = matches!(restore, Restore::Failed { .. });
            if let Some(ready) = observed.iter().find(|o| o.type_ == types::READY) {
                observed.extend(kstatus(&ready.clone(), stalled));
            }
            observed.extend(restored);
            observed.extend(rollout.clone());
            observed.extend(backups.health.clone());
            let mut conditions = merge(&previous.conditions, &observed, generation, now);
            if db.backup.is_none() {
                conditions.retain(|c| c.type_ != types::BACKUP_HEALTHY);
            }
            let phase = match (ready, previous.phase) {
                (true, _) => Phase::Ready,
                (false, Phase::Ready | Phase::Degraded) => Phase::Degraded,
                (false, _) => Phase::Provisioning,
            };
            ServiceDatabaseStatus {
                phase,
                observed_generation: generation,
                conditions,
                last_backup: backups.last_backup.clone().or(previous.last_backup.clone()),
                last_verified_backup: backups
                    .last_verified
                    .clone()
                    .or(previous.last_verified_backup.clone()),
                class_name: Some(db.class_name.clone()),
                version: Some(db.version.clone()),
                endpoint: Some(Endpoint {
                    host: db.host(),
                    port: db.port(),
                }),
                credentials_secret: Some(db.secret_name.clone()),
                ..previous
            }
        }
    }
}

/// Condition reasons that are a Warning Event when they appear.
const WARNINGS: [&str; 10] = [
    "BackupFailed",
    "BackupOverdue",
    "VerifyFailed",
    "RestoreFailed",
    "FinalBackupFailed",
    "ImagePullFailed",
    "CrashLooping",
    "Unschedulable",
    "VolumeNotBound",
    "ContainerConfigError",
];

/// Writes the status if it changed, and records an Event when the phase or
/// the reason of an invalid spec changed.
pub async fn update(
    client: &Client,
    recorder: &Recorder,
    sdb: &ServiceDatabase,
    status: ServiceDatabaseStatus,
    invalid: Option<&Invalid>,
) -> Result<(), Error> {
    let previous = sdb.status.clone().unwrap_or_default();
    if !crate::controller::write_status(client, sdb, &previous, &status)
        .await
        .map_err(Error::Patch)?
    {
        return Ok(());
    }

    let reason_changed = |t: &str| {
        let find = |s: &ServiceDatabaseStatus| {
            s.conditions
                .iter()
                .find(|c| c.type_ == t)
                .map(|c| (c.status.clone(), c.reason.clone()))
        };
        find(&previous) != find(&status)
    };
    let event = match invalid {
        Some(invalid) if reason_changed(types::SPEC_VALID) => Some(Event {
            type_: EventType::Warning,
            reason: invalid.reason.into(),
            note: Some(invalid.to_string()),
            action: "Validate".into(),
            secondary: None,
        }),
        _ if previous.phase != status.phase => Some(Event {
            type_: if status.phase == Phase::Degraded {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: status.phase.to_string(),
            note: Some(format!("phase {} → {}", previous.phase, status.phase)),
            action: "Reconcile".into(),
            secondary: None,
        }),
        _ => None,
    };
    if let Some(event) = event {
        crate::controller::publish(recorder, &event, &sdb.object_ref(&())).await;
    }
    // Backup trouble and a stuck instance are a Warning of their own, once
    // per new reason.
    for type_ in [
        types::BACKUP_HEALTHY,
        types::RESTORED,
        types::FINAL_BACKUP,
        types::INSTANCE_READY,
    ] {
        let Some(c) = status.conditions.iter().find(|c| c.type_ == type_) else {
            continue;
        };
        if c.status == "False" && WARNINGS.contains(&c.reason.as_str()) && reason_changed(type_) {
            let event = Event {
                type_: EventType::Warning,
                reason: c.reason.clone(),
                note: Some(c.message.chars().take(1000).collect()),
                action: if type_ == types::INSTANCE_READY {
                    "Observe".into()
                } else {
                    "Backup".into()
                },
                secondary: None,
            };
            crate::controller::publish(recorder, &event, &sdb.object_ref(&())).await;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::DatabaseClass;
    use crate::api::conditions::is_true;

    use crate::test_support::fixture;

    #[test]
    fn a_restoring_database_is_not_ready_until_the_restore_completed() {
        let class: DatabaseClass = fixture("class-postgres.yaml");
        let sdb: ServiceDatabase = fixture("sdb-orders.yaml");
        let db = crate::model::database::validate(&sdb, &class, None).unwrap();
        let now = Time("2026-01-01T00:00:00Z".parse().unwrap());
        let backups = BackupState::default();
        let running = Restore::Running {
            backup: "b1".into(),
        };
        let status = compute(
            &sdb,
            &Outcome::Applied {
                db: &db,
                ready_replicas: 1,
                backups: &backups,
                restore: &running,
                rollout: None,
                not_ready: None,
            },
            &now,
        );
        assert_eq!(status.phase, Phase::Provisioning);
        assert_eq!(is_true(&status.conditions, types::READY), Some(false));
        assert_eq!(
            is_true(&status.conditions, types::INSTANCE_READY),
            Some(true)
        );
        let ready = status
            .conditions
            .iter()
            .find(|c| c.type_ == types::READY)
            .unwrap();
        assert_eq!(ready.reason, "Restoring");

        let done = Restore::Completed {
            backup: "b1".into(),
        };
        let status = compute(
            &sdb,
            &Outcome::Applied {
                db: &db,
                ready_replicas: 1,
                backups: &backups,
                restore: &done,
                rollout: None,
                not_ready: None,
            },
            &now,
        );
        assert_eq!(status.phase, Phase::Ready);
        assert_eq!(is_true(&status.conditions, types::RESTORED), Some(true));
        assert_eq!(
            is_true(&status.conditions, types::BACKUP_HEALTHY),
            None,
            "no backup condition without spec.backup"
        );
    }
}
