//! What a backup's life after its run holds: whether a restore of it
//! verified it, and on deletion whether its archive stays or a Job deletes
//! it first.

use super::*;

/// Whether a deleted backup's archive stays, and why.
pub(super) async fn keeps_archive(
    backup: &DatabaseBackup,
    ctx: &Context,
) -> Result<Option<String>, Error> {
    let namespace = backup.namespace().unwrap_or_default();
    let terminating = Api::<k8s_openapi::api::core::v1::Namespace>::all(ctx.client.clone())
        .get_opt(&namespace)
        .await
        .map_err(|source| Error::Read {
            kind: "Namespace",
            source,
        })?
        .is_none_or(|ns| ns.metadata.deletion_timestamp.is_some());
    if terminating {
        return Ok(Some(format!("namespace {namespace} is being deleted")));
    }
    let retain = match backup.spec.retain_archive_on_delete {
        Some(retain) => retain,
        None => match database_of(ctx, backup).await? {
            Ok(source) => source.backup.retain_archives_on_delete,
            Err(_) => true,
        },
    };
    Ok(retain.then(|| "retainArchiveOnDelete is true (the default)".to_string()))
}

/// Deletion: a stored archive goes first, by a `servicedb agent delete` Job,
/// unless it is kept.
pub(super) async fn delete_archive(
    backup: &DatabaseBackup,
    ctx: &Context,
) -> Result<Action, Error> {
    let status = backup.status.clone().unwrap_or_default();
    let (BackupPhase::Completed, Some(location), Some(destination)) =
        (status.phase, status.location, status.destination)
    else {
        // Nothing was stored (or nothing is known about it).
        return Ok(Action::await_change());
    };
    if let Some(why) = keeps_archive(backup, ctx).await? {
        tracing::info!(%location, "archive kept: {why}");
        return Ok(Action::await_change());
    }
    let namespace = backup.namespace().unwrap_or_default();
    let jobs_api: Api<Job> = Api::namespaced(ctx.client.clone(), &namespace);
    let name = delete_job_name(&backup.name_any());
    let existing = jobs_api
        .get_opt(&name)
        .await
        .map_err(|source| Error::Read {
            kind: "Job",
            source,
        })?;
    let Some(job) = existing else {
        let Some(owner) = backup.controller_owner_ref(&()) else {
            return Ok(Action::await_change());
        };
        let archive = Archive {
            name: backup.name_any(),
            location,
            destination,
        };
        let job = delete_job(
            &namespace,
            &backup.spec.service_database_ref.name,
            &archive,
            status.engine,
            &ctx.facts,
            &owner,
        );
        match jobs_api.create(&PostParams::default(), &job).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(source) => return Err(Error::Create { name, source }),
        }
        tracing::info!(job = %name, "deleting the archive");
        return Err(Error::DeletePending(name));
    };
    match jobs::state(&job) {
        JobState::Succeeded { .. } => {
            tracing::info!(job = %name, "archive deleted");
            Ok(Action::await_change())
        }
        JobState::Failed { message, .. } => {
            let report = jobs::termination_message(&ctx.client, &namespace, &name)
                .await
                .map_err(|source| Error::Read {
                    kind: "Pod",
                    source,
                })?
                .map(|m| Report::parse(&m))
                .unwrap_or_default();
            // The next attempt gets a fresh Job; the report (an Event) says
            // why this one failed.
            crate::controller::apply::delete(&jobs_api, &name)
                .await
                .map_err(|source| Error::Read {
                    kind: "Job",
                    source,
                })?;
            Err(Error::DeleteFailed {
                job: name,
                message: report.error.unwrap_or(message),
            })
        }
        JobState::Pending | JobState::Running { .. } => Err(Error::DeletePending(name)),
    }
}

/// Records in `status.verified` how the newest finished verification of this
/// backup ended (`true`: restored into a scratch database and checked). The
/// verify CronJob keeps few Jobs; once they are gone the record stays.
pub(super) async fn record_verification(
    backup: &DatabaseBackup,
    previous: &crate::api::database_backup::DatabaseBackupStatus,
    ctx: &Context,
) -> Result<(), Error> {
    let namespace = backup.namespace().unwrap_or_default();
    let verifications = Api::<Job>::namespaced(ctx.client.clone(), &namespace)
        .list(&kube::api::ListParams::default().labels(&format!(
            "{LABEL_COMPONENT}={},{LABEL_BACKUP}={}",
            component::VERIFY,
            backup.name_any()
        )))
        .await
        .map_err(|source| Error::Read {
            kind: "Job",
            source,
        })?
        .items;
    let verified = match jobs::newest_finished(&verifications) {
        Some((_, JobState::Succeeded { .. })) => true,
        Some((_, JobState::Failed { .. })) => false,
        _ => return Ok(()),
    };
    if previous.verified == Some(verified) {
        return Ok(());
    }
    let status = crate::api::database_backup::DatabaseBackupStatus {
        verified: Some(verified),
        ..previous.clone()
    };
    crate::controller::write_status(&ctx.client, backup, previous, &status)
        .await
        .map_err(Error::Status)?;
    Ok(())
}
