//! After apply (async): `spec.bootstrap.fromBackup`. The named backup must
//! be Completed; once the instance is up, a Job `<name>-db-restore` runs
//! `servicedb agent restore` — once. The database is not Ready until it
//! completed. The Job is never re-applied (a Job's template is immutable)
//! and never recreated after it ran; deleting a failed one retries.
//!
//! A bootstrap fills a *new* database. A ServiceDatabase recreated from Git
//! over the data volume an earlier one of the same name retained
//! (`deletionPolicy: Retain`) is not new: nothing is restored over that data,
//! and the source backup is not looked up (it may have aged out). The volume
//! counts when it is the one the StatefulSet mounts (`data-<name>-db-0`),
//! carries servicedb's labels for this instance, and is older than this
//! ServiceDatabase (a volume the StatefulSet made for this one is younger).
//! On a shared server the same holds for the database an earlier one of the
//! same namespace and name left there, which this one took over
//! (`taken_over`, once; the status keeps it: `Restored=True, DataRetained`).

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::PostParams;
use kube::{Api, Client, ResourceExt};

use crate::api::ServiceDatabase;
use crate::api::conditions::{is_true, types};
use crate::api::database_backup::{BackupPhase, DatabaseBackup};
use crate::build::backup::{Archive, Pick, restore_job, restore_job_name};
use crate::build::statefulset::DATA_VOLUME;
use crate::build::{LABEL_MANAGED_BY, MANAGED_BY, OperatorFacts, instance_label};
use crate::controller::jobs::{self, JobState, Report};
use crate::model::database::{Invalid, RestoreSource, ValidatedDatabase};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading {kind}: {source}")]
    Read {
        kind: &'static str,
        #[source]
        source: kube::Error,
    },
    #[error("creating the restore Job: {0}")]
    Create(#[source] kube::Error),
    #[error(transparent)]
    Invalid(Invalid),
}

/// Where the restore is.
#[derive(Clone, Debug, PartialEq)]
pub enum Restore {
    /// No `spec.bootstrap.fromBackup`.
    NotRequested,
    /// The backup is fine; the instance is not up yet.
    WaitingForInstance { backup: String },
    /// The restore Job runs.
    Running { backup: String },
    /// Restored.
    Completed { backup: String },
    /// The restore Job failed.
    Failed { backup: String, message: String },
    /// Not restored: the instance runs on the data an earlier
    /// ServiceDatabase of this name retained, `kept` (the data volume, or
    /// the database on its shared server).
    Retained { backup: String, kept: String },
}

/// Whether the status records the restore as done (`Restored=True`).
pub fn restored(sdb: &ServiceDatabase) -> bool {
    let conditions = sdb
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    is_true(conditions, types::RESTORED) == Some(true)
}

/// Whether the status records that nothing was restored over retained data.
fn retained(sdb: &ServiceDatabase) -> bool {
    sdb.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == types::RESTORED && c.status == "True" && c.reason == DATA_RETAINED)
    })
}

/// The `Restored` reason of [`Restore::Retained`].
pub const DATA_RETAINED: &str = "DataRetained";

pub async fn ensure(
    client: &Client,
    sdb: &ServiceDatabase,
    db: &ValidatedDatabase,
    instance_ready: bool,
    taken_over: bool,
    facts: &OperatorFacts,
    owner: &OwnerReference,
) -> Result<Restore, Error> {
    let Some(source) = db.restore_from.clone() else {
        return Ok(Restore::NotRequested);
    };
    let backup = source.describe();
    if let Some(server) = &db.server {
        if taken_over || retained(sdb) {
            let kept = format!(
                "database {} on DatabaseServer {}/{}",
                db.database, server.namespace, server.name
            );
            return Ok(Restore::Retained { backup, kept });
        }
    } else if let Some(volume) = retained_volume(client, sdb, db).await? {
        let kept = format!("data volume {volume}");
        return Ok(Restore::Retained { backup, kept });
    }
    if restored(sdb) {
        return Ok(Restore::Completed { backup });
    }
    let jobs: Api<Job> = Api::namespaced(client.clone(), &db.namespace);
    let name = restore_job_name(&db.name);
    if let Some(job) = jobs.get_opt(&name).await.map_err(|source| Error::Read {
        kind: "Job",
        source,
    })? {
        return Ok(match jobs::state(&job) {
            JobState::Pending | JobState::Running { .. } => Restore::Running { backup },
            JobState::Succeeded { .. } => Restore::Completed { backup },
            JobState::Failed { message, .. } => {
                let report = jobs::termination_message(client, &db.namespace, &name)
                    .await
                    .map_err(|source| Error::Read {
                        kind: "Pod",
                        source,
                    })?
                    .map(|m| Report::parse(&m))
                    .unwrap_or_default();
                Restore::Failed {
                    backup,
                    message: format!(
                        "{}; delete Job {name} to try again",
                        report.error.unwrap_or(message)
                    ),
                }
            }
        });
    }

    let archive = match source {
        RestoreSource::Backup(name) => (completed_backup(client, db, &name).await?, Pick::This),
        RestoreSource::Archive {
            destination,
            dir,
            backup: one,
            before,
        } => {
            let (location, name, pick) = match one {
                Some(one) => (format!("{dir}/{one}"), one, Pick::This),
                None => (dir, "latest".to_owned(), Pick::Latest { before }),
            };
            let archive = Archive {
                name,
                location,
                destination,
            };
            (archive, pick)
        }
    };
    if !instance_ready {
        return Ok(Restore::WaitingForInstance { backup });
    }
    let (archive, pick) = archive;
    let job = restore_job(db, &archive, &pick, facts, owner);
    match jobs.create(&PostParams::default(), &job).await {
        Ok(_) => tracing::info!(backup = %backup, job = %name, "restore started"),
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) => return Err(Error::Create(e)),
    }
    Ok(Restore::Running { backup })
}

/// The archive of the Completed `DatabaseBackup` `backup` of this
/// namespace; an error naming `spec.bootstrap.fromBackup.name` otherwise.
async fn completed_backup(
    client: &Client,
    db: &ValidatedDatabase,
    backup: &str,
) -> Result<Archive, Error> {
    let field = "spec.bootstrap.fromBackup.name";
    let found = Api::<DatabaseBackup>::namespaced(client.clone(), &db.namespace)
        .get_opt(backup)
        .await
        .map_err(|source| Error::Read {
            kind: "DatabaseBackup",
            source,
        })?
        .ok_or_else(|| {
            Error::Invalid(Invalid {
                field,
                reason: "BackupNotFound",
                message: format!("DatabaseBackup {backup} does not exist in this namespace"),
            })
        })?;
    let status = found.status.clone().unwrap_or_default();
    if status.phase != BackupPhase::Completed {
        return Err(Error::Invalid(Invalid {
            field,
            reason: "BackupNotCompleted",
            message: format!(
                "DatabaseBackup {backup} is {:?}; only a Completed backup can be restored",
                status.phase
            ),
        }));
    }
    if status.engine.is_some_and(|e| e != db.engine) {
        return Err(Error::Invalid(Invalid {
            field,
            reason: "BackupEngineMismatch",
            message: format!("DatabaseBackup {backup} is a backup of another engine"),
        }));
    }
    let (Some(location), Some(destination)) = (status.location, status.destination) else {
        return Err(Error::Invalid(Invalid {
            field,
            reason: "BackupLocationUnknown",
            message: format!("DatabaseBackup {backup} does not record where its archive is"),
        }));
    };
    Ok(Archive {
        name: backup.to_owned(),
        location,
        destination,
    })
}

/// The dedicated instance's data volume, if an earlier ServiceDatabase of this
/// name left it (see the module comment).
async fn retained_volume(
    client: &Client,
    sdb: &ServiceDatabase,
    db: &ValidatedDatabase,
) -> Result<Option<String>, Error> {
    let name = format!("{DATA_VOLUME}-{}-0", db.instance_name());
    let api: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &db.namespace);
    let Some(volume) = api.get_opt(&name).await.map_err(|source| Error::Read {
        kind: "PersistentVolumeClaim",
        source,
    })?
    else {
        return Ok(None);
    };
    let labels = volume.labels();
    let ours = labels.get(LABEL_MANAGED_BY).map(String::as_str) == Some(MANAGED_BY)
        && instance_label(labels) == Some(&db.name);
    let older = match (
        volume.metadata.creation_timestamp.as_ref(),
        sdb.metadata.creation_timestamp.as_ref(),
    ) {
        (Some(volume), Some(sdb)) => volume.0 < sdb.0,
        _ => false,
    };
    Ok((ours && older && volume.metadata.deletion_timestamp.is_none()).then_some(name))
}
