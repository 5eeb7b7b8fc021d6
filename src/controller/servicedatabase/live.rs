//! The pipeline for a live ServiceDatabase, one named step after another.
//! Each step reads what the earlier ones found; the first that cannot go on
//! returns a [`Stop`], whose status [`Stop::end`] writes. Otherwise the
//! status is computed and written once, at the end.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, OwnerReference, Time};
use kube::Resource;
use kube::runtime::controller::Action;

use super::instance::NotReady;
use super::{
    Error, backups, claim, credentials, instance, provision, restore, rollout, status, storage,
};
use crate::api::ServiceDatabase;
use crate::api::conditions::merge;
use crate::build::Credentials;
use crate::controller::dereference::{self, Dereferenced};
use crate::controller::{Context, apply, monitoring};
use crate::model::database::{self as validate, Invalid, ValidatedDatabase};

/// Periodic re-check of a healthy resource, to repair drift of children the
/// controller does not watch (PVCs) and to catch up on missed events.
pub const RESYNC: Duration = Duration::from_secs(600);
/// Re-check of a database on a shared server, where people with admin
/// rights may change logins by hand.
pub const SHARED_RESYNC: Duration = Duration::from_secs(60);
/// Re-check of a database with backups, so that an overdue backup shows.
const BACKUP_RESYNC: Duration = Duration::from_secs(300);
/// The pass after the one that saw a restore complete.
const RESTORE_DONE_RECHECK: Duration = Duration::from_millis(100);
/// Re-check of a dedicated instance that is not ready: its pod's trouble
/// (an image pull, a crash loop) changes nothing servicedb watches.
const INSTANCE_RECHECK: Duration = Duration::from_secs(30);

/// Why a pass ends early.
pub enum Stop {
    /// The spec cannot be realised: the status says which field to change;
    /// the pass waits for a change.
    Invalid(Invalid),
    /// Something this resource does not own is missing or taken (the
    /// server, its credentials, a name on it): the status says so; retried
    /// with backoff.
    Waiting(Invalid),
    /// The shared server no longer admits the namespace: access ends.
    NotAdmitted(Invalid),
    /// The shared server did not answer or refused the provisioning.
    ServerUnavailable {
        db: Box<ValidatedDatabase>,
        error: provision::Error,
    },
    /// A failure nothing is said about in the status (a read or write of
    /// the API server); retried with backoff.
    Failed(Error),
}

impl<E: Into<Error>> From<E> for Stop {
    fn from(error: E) -> Self {
        Stop::Failed(error.into())
    }
}

impl Stop {
    /// Says why in the status (when the status can say it) and hands the
    /// error to the error policy.
    pub async fn end(
        self,
        sdb: &ServiceDatabase,
        ctx: &Context,
        now: &Time,
    ) -> Result<Action, Error> {
        let (status, invalid, error) = match self {
            Stop::Failed(error) => return Err(error),
            Stop::NotAdmitted(e) => return super::access::end(sdb, ctx, e, now).await,
            Stop::Invalid(e) => {
                let status = status::compute(sdb, &status::Outcome::Invalid(&e), now);
                (status, Some(e.clone()), Error::Invalid(e))
            }
            Stop::Waiting(e) => {
                let status = status::compute(sdb, &status::Outcome::Invalid(&e), now);
                (status, Some(e.clone()), Error::Waiting(e))
            }
            Stop::ServerUnavailable { db, error } => {
                let outcome = status::Outcome::ServerUnavailable {
                    db: &db,
                    message: error.to_string(),
                };
                (
                    status::compute(sdb, &outcome, now),
                    None,
                    Error::Provision(error),
                )
            }
        };
        status::update(&ctx.client, &ctx.recorder, sdb, status, invalid.as_ref()).await?;
        Err(error)
    }
}

/// The pipeline for a live resource.
pub async fn apply_spec(sdb: &ServiceDatabase, ctx: &Context) -> Result<Action, Error> {
    let now = &Time(super::jiff_now());
    match pass(sdb, ctx, now).await {
        Ok(action) => Ok(action),
        Err(stop) => stop.end(sdb, ctx, now).await,
    }
}

async fn pass(sdb: &ServiceDatabase, ctx: &Context, now: &Time) -> Result<Action, Stop> {
    let found = dereference(sdb, ctx).await?;
    let db = validate::validate(sdb, &found.class, found.server.as_ref()).map_err(Stop::Invalid)?;
    claim::check(sdb, ctx, &db).await?;
    let owner = owner_reference(sdb)?;
    let policy = credentials::policy(sdb, &db);
    let credentialed = credentials::ensure(sdb, ctx, &db, &found, &policy, now).await?;
    let plan = credentialed.plan;
    let backups = backups::observe(&ctx.client, sdb, &db, now).await?;
    // On a shared server the database exists once provisioned.
    let ready_replicas = if db.server.is_some() {
        1
    } else {
        found.ready_replicas
    };
    let restore = restore::ensure(
        &ctx.client,
        sdb,
        &db,
        ready_replicas > 0,
        credentialed.taken_over,
        &ctx.facts,
        &owner,
    )
    .await
    .map_err(|e| match e {
        restore::Error::Invalid(e) => Stop::Invalid(e),
        e => Stop::Failed(Error::Restore(e)),
    })?;
    let credentials = Credentials {
        admin_password: found.admin_password.clone(),
        logins: plan.logins.clone(),
        annotations: plan.annotations(),
    };
    let children = crate::build::children(
        &db,
        &credentials,
        &ctx.facts,
        &owner,
        backups.latest.as_ref(),
    );
    let applied = apply_children(sdb, ctx, &db, children).await?;
    let pod = look_at_pod(ctx, &db, ready_replicas).await;
    let storage = storage::grow(&ctx.client, &db).await?;
    let rollout = rollout::ensure(sdb, &db, &plan, ctx, now.0).await;
    let behind = rollout.as_ref().is_some_and(|c| !c.status);

    let mut status = status::compute(
        sdb,
        &status::Outcome::Applied {
            db: &db,
            ready_replicas,
            backups: &backups,
            restore: &restore,
            rollout,
            not_ready: pod.not_ready.as_ref(),
        },
        now,
    );
    status.credentials_rotated_at = Some(Time(plan.issued_at));
    status.conditions = monitoring::condition(
        &status.conditions,
        applied.monitoring.as_ref(),
        sdb.metadata.generation,
        now,
    );
    if let Some(storage) = &storage {
        status.conditions = merge(
            &status.conditions,
            std::slice::from_ref(&storage.condition),
            sdb.metadata.generation,
            now,
        );
    }
    status.conditions = parameters_condition(&status.conditions, &db, sdb, now);
    status::update(&ctx.client, &ctx.recorder, sdb, status, None).await?;

    let restore_completed =
        !restore::restored(sdb) && matches!(restore, restore::Restore::Completed { .. });
    let due = Due {
        shared: db.server.is_some(),
        backups: db.backup.is_some(),
        rotation: plan.next_event(&policy, now.0),
        rollout_behind: behind,
        pod_to_watch: pod.not_ready.is_some() && pod.seen,
        resizing: storage.as_ref().is_some_and(|v| v.resizing),
        rollout_warning: rollout::until_warning(&plan, db.grace_period, now.0),
        restore_completed,
    };
    Ok(Action::requeue(due.next()))
}

/// `Parameters`: which of `spec.postgres.parameters` reload and which
/// restart the instance; gone when there are none.
fn parameters_condition(
    conditions: &[Condition],
    db: &ValidatedDatabase,
    sdb: &ServiceDatabase,
    now: &Time,
) -> Vec<Condition> {
    use crate::api::conditions::{Observed, types::PARAMETERS};
    match crate::engine::postgres_parameters::how_applied(&db.postgres_parameters) {
        Some((restarts, message)) => merge(
            conditions,
            &[Observed::new(
                PARAMETERS,
                true,
                if restarts {
                    "RestartOnChange"
                } else {
                    "Reload"
                },
                message,
            )],
            sdb.metadata.generation,
            now,
        ),
        None => conditions
            .iter()
            .filter(|c| c.type_ != PARAMETERS)
            .cloned()
            .collect(),
    }
}

/// Step 1: what the resource depends on. What it does not own and is not
/// told about by a watch (the server, its credentials or CA) is waited for.
async fn dereference(sdb: &ServiceDatabase, ctx: &Context) -> Result<Dereferenced, Stop> {
    match dereference::dereference_cached(&ctx.client, &ctx.cache, sdb).await {
        Ok(found) => Ok(found),
        Err(dereference::Error::Unavailable(e)) => Err(Stop::Waiting(e)),
        Err(dereference::Error::NotAdmitted(e)) => Err(Stop::NotAdmitted(e)),
        Err(dereference::Error::Invalid(e)) => Err(Stop::Invalid(e)),
        Err(e) => Err(e.into()),
    }
}

/// The owner reference of every child. Only an object without a name or
/// uid has none; the API server never hands one out.
fn owner_reference(sdb: &ServiceDatabase) -> Result<OwnerReference, Stop> {
    sdb.controller_owner_ref(&()).ok_or_else(|| {
        Stop::Failed(Error::Invalid(Invalid {
            field: "metadata",
            reason: "NoUid",
            message: "object has no uid".into(),
        }))
    })
}

async fn apply_children(
    sdb: &ServiceDatabase,
    ctx: &Context,
    db: &ValidatedDatabase,
    children: crate::build::Children,
) -> Result<apply::Applied, Stop> {
    let applied = apply::apply(
        &ctx.client,
        Some(&ctx.cache),
        &db.namespace,
        &db.name,
        children,
        monitoring::recorded(sdb),
    )
    .await?;
    if applied.written > 0 || applied.deleted > 0 {
        tracing::info!(
            written = applied.written,
            deleted = applied.deleted,
            "children updated"
        );
    }
    Ok(applied)
}

/// What the pod of a dedicated instance that is not ready says.
struct PodLook {
    not_ready: Option<NotReady>,
    /// Whether there was a pod to read.
    seen: bool,
}

async fn look_at_pod(ctx: &Context, db: &ValidatedDatabase, ready_replicas: i32) -> PodLook {
    if db.server.is_some() || ready_replicas > 0 {
        return PodLook {
            not_ready: None,
            seen: false,
        };
    }
    let pod = instance::pod(&ctx.client, &db.namespace, &db.instance_name())
        .await
        .unwrap_or_else(|e| {
            tracing::warn!(error = %e, "reading the instance's pod");
            None
        });
    PodLook {
        seen: pod.is_some(),
        not_ready: Some(instance::diagnose(&db.instance_name(), pod.as_ref())),
    }
}

/// When the next pass is due without any event.
struct Due {
    shared: bool,
    backups: bool,
    /// The next rotation or end of a grace period.
    rotation: Option<Duration>,
    rollout_behind: bool,
    /// The instance is not ready and has a pod whose trouble nothing
    /// announces (without a pod there is nothing to read until the watched
    /// StatefulSet makes one).
    pod_to_watch: bool,
    resizing: bool,
    /// When workloads still on the previous password are warned about.
    rollout_warning: Option<Duration>,
    /// What this pass gave the server still let the restore's login in; the
    /// next pass reads the completed restore from the status just written
    /// (which starts no pass by itself) and withdraws that.
    restore_completed: bool,
}

impl Due {
    fn next(&self) -> Duration {
        let resync = match (self.shared, self.backups) {
            (true, _) => SHARED_RESYNC,
            (false, true) => BACKUP_RESYNC,
            (false, false) => RESYNC,
        };
        let mut due = self.rotation.map_or(resync, |due| due.min(resync));
        let sooner = [
            (self.rollout_behind, rollout::RECHECK),
            (self.pod_to_watch, INSTANCE_RECHECK),
            (self.resizing, storage::RECHECK),
            (self.restore_completed, RESTORE_DONE_RECHECK),
        ];
        for (when, recheck) in sooner {
            if when {
                due = due.min(recheck);
            }
        }
        if let Some(wait) = self.rollout_warning {
            due = due.min(wait);
        }
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn due() -> Due {
        Due {
            shared: false,
            backups: false,
            rotation: None,
            rollout_behind: false,
            pod_to_watch: false,
            resizing: false,
            rollout_warning: None,
            restore_completed: false,
        }
    }

    #[test]
    fn the_next_pass_is_the_soonest_reason() {
        assert_eq!(due().next(), RESYNC);
        assert_eq!(
            Due {
                shared: true,
                ..due()
            }
            .next(),
            SHARED_RESYNC
        );
        assert_eq!(
            Due {
                backups: true,
                ..due()
            }
            .next(),
            BACKUP_RESYNC
        );
        let soon = Duration::from_secs(7);
        assert_eq!(
            Due {
                rotation: Some(soon),
                ..due()
            }
            .next(),
            soon
        );
        assert_eq!(
            Due {
                pod_to_watch: true,
                rotation: Some(Duration::from_secs(3600)),
                ..due()
            }
            .next(),
            INSTANCE_RECHECK
        );
        assert_eq!(
            Due {
                restore_completed: true,
                pod_to_watch: true,
                ..due()
            }
            .next(),
            RESTORE_DONE_RECHECK
        );
    }
}
