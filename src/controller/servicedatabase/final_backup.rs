//! `deletionPolicy: Snapshot`: before anything is removed, a final
//! `DatabaseBackup` `<name>-final-<uid>` (trigger `Final`) must complete. It
//! has no owner, so it outlives the ServiceDatabase, and retention never
//! deletes it. If it fails, deletion keeps waiting (and says so); deleting
//! the failed backup makes a new attempt. In a namespace being deleted no
//! final backup is taken (none could be created) and nothing waits.

use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client, ResourceExt};

use crate::api::ServiceDatabase;
use crate::api::common::LocalObjectRef;
use crate::api::conditions::types;
use crate::api::database_backup::{BackupPhase, BackupTrigger, DatabaseBackup, DatabaseBackupSpec};
use crate::build::{LABEL_INSTANCE, LABEL_MANAGED_BY, MANAGED_BY};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading the final DatabaseBackup {name}: {source}")]
    Read {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("creating the final DatabaseBackup {name}: {source}")]
    Create {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("reading {kind} for the final backup: {source}")]
    Dereference {
        kind: &'static str,
        #[source]
        source: kube::Error,
    },
}

/// Where the final backup is.
pub enum Final {
    /// Stored: deletion may go on.
    Completed(String),
    /// Not yet (or failed); the message says which and why.
    Waiting { message: String, failed: bool },
    /// No final backup can be taken (no `spec.backup`).
    Unavailable(String),
}

pub async fn ensure(client: &Client, sdb: &ServiceDatabase) -> Result<Final, Error> {
    // The backups it gets, its class's defaults included.
    let backup =
        match crate::controller::dereference::dereference_ignoring_admission(client, sdb).await {
            Ok(found) => crate::model::database::validate(sdb, &found.class, found.server.as_ref())
                .ok()
                .and_then(|db| db.backup),
            Err(crate::controller::dereference::Error::Read { kind, source }) => {
                return Err(Error::Dereference { kind, source });
            }
            Err(_) => None,
        };
    let Some(backup) = backup else {
        return Ok(Final::Unavailable(
            "deletionPolicy Snapshot needs backups (spec.backup or the class's); no final backup can be taken".into(),
        ));
    };
    let namespace = sdb.namespace().unwrap_or_default();
    let name = crate::model::naming::final_backup_name(sdb);
    let api: Api<DatabaseBackup> = Api::namespaced(client.clone(), &namespace);
    let existing = api.get_opt(&name).await.map_err(|source| Error::Read {
        name: name.clone(),
        source,
    })?;
    let Some(backup) = existing else {
        // Nothing can be created in a namespace being deleted: waiting for
        // a final backup there would hold the namespace up for ever.
        let terminating = Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone())
            .get_opt(&namespace)
            .await
            .map_err(|source| Error::Dereference {
                kind: "Namespace",
                source,
            })?
            .is_none_or(|ns| ns.metadata.deletion_timestamp.is_some());
        if terminating {
            return Ok(Final::Unavailable(format!(
                "namespace {namespace} is being deleted: no final backup can be created there"
            )));
        }
        let backup = DatabaseBackup {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(namespace),
                labels: Some(
                    [
                        (LABEL_INSTANCE.to_string(), sdb.name_any()),
                        (LABEL_MANAGED_BY.to_string(), MANAGED_BY.to_string()),
                    ]
                    .into(),
                ),
                ..Default::default()
            },
            spec: DatabaseBackupSpec {
                service_database_ref: LocalObjectRef {
                    name: sdb.name_any(),
                },
                trigger: BackupTrigger::Final,
                // Copied now: the ServiceDatabase will be gone when this
                // backup is deleted.
                retain_archive_on_delete: Some(backup.retain_archives_on_delete),
            },
            status: None,
        };
        match api.create(&PostParams::default(), &backup).await {
            Ok(_) => tracing::info!(backup = %name, "final backup requested"),
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(source) => return Err(Error::Create { name, source }),
        }
        return Ok(Final::Waiting {
            message: format!(
                "DatabaseBackup {name} takes the final backup; the data is deleted once it completed"
            ),
            failed: false,
        });
    };
    let status = backup.status.clone().unwrap_or_default();
    Ok(match status.phase {
        BackupPhase::Completed => Final::Completed(name),
        BackupPhase::Failed => {
            let why = status
                .conditions
                .iter()
                .find(|c| c.type_ == types::COMPLETED)
                .map(|c| c.message.clone())
                .unwrap_or_default();
            Final::Waiting {
                message: format!(
                    "the final DatabaseBackup {name} failed: {why}; the data is kept. Delete DatabaseBackup {name} to try again, or set deletionPolicy Retain"
                ),
                failed: true,
            }
        }
        phase => Final::Waiting {
            message: format!(
                "DatabaseBackup {name} ({phase:?}) takes the final backup; the data is deleted once it completed"
            ),
            failed: false,
        },
    })
}
