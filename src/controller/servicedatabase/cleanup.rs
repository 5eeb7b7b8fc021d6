//! Deletion, by `deletionPolicy`: `Retain` keeps the volume and the
//! Secrets, `Delete` removes them (and drops the database and login on a
//! shared server), `Snapshot` takes a final backup first and removes
//! nothing until it completed.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::runtime::controller::Action;
use kube::runtime::events::{Event as KubeEvent, EventType};
use kube::{Resource, ResourceExt};

use super::credentials::{enter_server, on_server};
use super::{Error, access, claim, final_backup, jiff_now, provision, status};
use crate::api::{DeletionPolicy, ServiceDatabase};
use crate::controller::{Context, apply, dereference};
use crate::model::database as validate;
use crate::model::naming::instance_name;

/// Deletion, by `deletionPolicy`.
pub async fn cleanup(sdb: &ServiceDatabase, ctx: &Context) -> Result<Action, Error> {
    let namespace = sdb.namespace().unwrap_or_default();
    let name = sdb.name_any();
    let uid = sdb.uid().unwrap_or_default();
    let children = apply::Owner {
        instance: &name,
        uid: &uid,
    };
    if let Some(holder) = claim::holder(sdb, ctx).await {
        // It never held anything on the server: nothing there is dropped or
        // backed up, whatever its deletionPolicy.
        tracing::info!(%holder, "the name on the shared server is another ServiceDatabase's; only this one's own objects go");
        apply::cleanup::delete_all(&ctx.client, &namespace, children).await?;
        return Ok(Action::await_change());
    }
    if sdb.spec.server_ref.is_some() && sdb.spec.deletion_policy == DeletionPolicy::Delete {
        drop_on_server(sdb, ctx).await?;
    }
    match sdb.spec.deletion_policy {
        DeletionPolicy::Delete => {
            apply::cleanup::delete_all(&ctx.client, &namespace, children).await?
        }
        DeletionPolicy::Retain => apply::cleanup::retain(&ctx.client, &namespace, children).await?,
        DeletionPolicy::Snapshot => {
            // Never lose data: nothing is removed before the final backup
            // completed.
            match final_backup::ensure(&ctx.client, sdb).await? {
                final_backup::Final::Completed(backup) => {
                    tracing::info!(backup = %backup, "final backup completed");
                    if sdb.spec.server_ref.is_some() {
                        drop_on_server(sdb, ctx).await?;
                    }
                    apply::cleanup::delete_all(&ctx.client, &namespace, children).await?
                }
                final_backup::Final::Unavailable(message) => {
                    // Without a usable backup spec no final backup can be
                    // taken: the data is retained instead.
                    let event = KubeEvent {
                        type_: EventType::Warning,
                        reason: "SnapshotUnavailable".into(),
                        note: Some(format!(
                            "{message}; the volume of {} and its Secrets are retained",
                            instance_name(&name)
                        )),
                        action: "Delete".into(),
                        secondary: None,
                    };
                    crate::controller::publish(&ctx.recorder, &event, &sdb.object_ref(&())).await;
                    apply::cleanup::retain(&ctx.client, &namespace, children).await?
                }
                final_backup::Final::Waiting { message, failed } => {
                    let now = &Time(jiff_now());
                    let outcome = status::Outcome::FinalBackup {
                        message: message.clone(),
                        failed,
                    };
                    let status = status::compute(sdb, &outcome, now);
                    status::update(&ctx.client, &ctx.recorder, sdb, status, None).await?;
                    return Err(Error::FinalBackupPending(message));
                }
            }
        }
    }
    tracing::info!(policy = ?sdb.spec.deletion_policy, "cleaned up");
    Ok(Action::await_change())
}

/// `Delete` on a shared server: drop the database and its login. A spec that
/// never validated created nothing, so there is nothing to drop.
async fn drop_on_server(sdb: &ServiceDatabase, ctx: &Context) -> Result<(), Error> {
    // What it owns there goes even when its namespace is no longer admitted.
    let found = match access::dereference_for_deletion(&ctx.client, sdb).await {
        Ok(found) => found,
        Err(
            dereference::Error::Invalid(e)
            | dereference::Error::Unavailable(e)
            | dereference::Error::NotAdmitted(e),
        ) => {
            tracing::warn!(
                reason = e.reason,
                "the database's server cannot be used for deletion: {e}; nothing dropped"
            );
            return Ok(());
        }
        Err(e) => return Err(e.into()),
    };
    let Ok(db) = validate::validate(sdb, &found.class, found.server.as_ref()) else {
        return Ok(());
    };
    if let Some(server) = &db.server {
        let Some(marker) = provision::marker(sdb, server, false) else {
            return Ok(());
        };
        let _pass = enter_server(server, ctx).await?;
        on_server(server, ctx, provision::remove(&db, server, &marker)).await?;
        tracing::info!(server = %server.name, database = %db.database, "dropped the database and its login");
    }
    Ok(())
}
