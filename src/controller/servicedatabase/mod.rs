//! The ServiceDatabase controller, a fixed pipeline:
//!
//! 1. [`dereference`] — class, existing Secrets, StatefulSet readiness;
//! 2. [`validate`] — spec + class → [`validate::ValidatedDatabase`] (pure);
//!    on a shared server, [`claim`] — no other ServiceDatabase holds its
//!    login name; then [`backups`] — scheduled runs recorded, retention,
//!    backup health;
//! 3. build — [`crate::build::children`] (pure);
//! 4. [`apply`] — server-side apply of what changed, prune what is gone;
//!    then [`restore`] — the one restore of `spec.bootstrap.fromBackup`;
//! 5. [`status`] — conditions, phase, Events.
//!
//! Deletion runs through a finalizer that honours `deletionPolicy`;
//! `Snapshot` waits for a final `DatabaseBackup` ([`final_backup`]).

pub mod access;
pub mod apply;
pub mod backups;
pub mod cache;
pub mod claim;
pub mod dereference;
pub mod final_backup;
pub mod instance;
pub mod monitoring;
pub mod provision;
pub mod restore;
pub mod rollout;
pub mod status;
pub mod storage;
pub mod trigger;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{Namespace, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::events::{Event as KubeEvent, EventType};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{PredicateConfig, WatchStreamExt, reflector, watcher};
use kube::{Api, Resource, ResourceExt};
use tracing::{Instrument, info_span};

use super::Context;
use crate::api::{
    DatabaseBackup, DatabaseClass, DatabaseServer, DeletionPolicy, Engine, ServiceDatabase,
};
use crate::build::{Credentials, LABEL_COMPONENT, LABEL_MANAGED_BY, MANAGED_BY};
use crate::model::database::{self as validate, Invalid};
use crate::model::naming::instance_name;
use crate::model::rotation;

/// Name of the controller in metrics and logs.
pub const CONTROLLER: &str = "servicedatabase";
/// Finalizer that runs the deletion policy.
pub const FINALIZER: &str = "servicedb.dev/cleanup";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Dereference(#[from] dereference::Error),
    #[error("invalid spec: {0}")]
    Invalid(Invalid),
    #[error("waiting: {0}")]
    Waiting(Invalid),
    #[error(transparent)]
    Apply(#[from] apply::Error),
    #[error(transparent)]
    Provision(#[from] provision::Error),
    #[error(transparent)]
    Status(#[from] status::Error),
    #[error(transparent)]
    Backups(#[from] backups::Error),
    #[error(transparent)]
    Restore(restore::Error),
    #[error(transparent)]
    FinalBackup(#[from] final_backup::Error),
    #[error(transparent)]
    Storage(#[from] storage::Error),
    /// Deletion waits for the final backup; the status says why.
    #[error("waiting for the final backup: {0}")]
    FinalBackupPending(String),
    /// As many reconciles as allowed work on the shared server; tried again
    /// in a moment.
    #[error("the shared server is busy with other databases; trying again shortly")]
    ServerBusy,
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
}

impl super::ReconcileError for Error {
    fn category(&self) -> &'static str {
        Error::category(self)
    }
    fn reason(&self) -> &'static str {
        Error::reason(self)
    }
    fn is_reported(&self) -> bool {
        // An invalid spec, a missing object and the wait for a final
        // backup are a condition and an Event already.
        self.is_invalid_input()
            || matches!(
                self,
                Error::Waiting(_) | Error::FinalBackupPending(_) | Error::ServerBusy
            )
    }
}

impl Error {
    /// Stable category for metrics and Event reasons.
    pub fn category(&self) -> &'static str {
        use kube::runtime::finalizer::Error as F;
        match self {
            Error::Dereference(dereference::Error::Read { .. }) => "read",
            Error::Dereference(dereference::Error::Invalid(_)) | Error::Invalid(_) => {
                "invalid-spec"
            }
            Error::Apply(_) => "apply",
            Error::Waiting(_) => "waiting",
            Error::Provision(e) => e.category(),
            Error::Status(_) => "status",
            Error::Backups(_) => "backups",
            Error::Restore(restore::Error::Invalid(_)) => "invalid-spec",
            Error::Restore(_) => "restore",
            Error::FinalBackup(_) => "final-backup",
            Error::Storage(_) => "storage",
            Error::FinalBackupPending(_) => "final-backup-pending",
            Error::ServerBusy => "server-busy",
            Error::Finalizer(f) => match f.as_ref() {
                F::ApplyFailed(e) | F::CleanupFailed(e) => e.category(),
                F::AddFinalizer(_) | F::RemoveFinalizer(_) => "finalizer",
                _ => "finalizer",
            },
        }
    }

    /// Bad input waits for the user; everything else is bad luck and retried.
    pub fn is_invalid_input(&self) -> bool {
        self.category() == "invalid-spec"
    }

    /// A message safe for an Event: error texts never carry secret values.
    pub fn reason(&self) -> &'static str {
        match self.category() {
            "invalid-spec" => "InvalidSpec",
            "read" => "ReadFailed",
            "apply" => "ApplyFailed",
            "server-unreachable" => "ServerUnreachable",
            "server-busy" => "ServerBusy",
            "waiting" => "Waiting",
            "status" => "StatusFailed",
            "backups" => "BackupsFailed",
            "restore" => "RestoreFailed",
            "final-backup" | "final-backup-pending" => "FinalBackupPending",
            "storage" => "StorageFailed",
            _ => "FinalizerFailed",
        }
    }
}

/// Per-object exponential backoff for transient failures: 1s, 2s, 4s … 5 min,
/// reset by a successful reconcile.
#[derive(Default)]
pub struct Backoff(Mutex<HashMap<ObjectRef<ServiceDatabase>, u32>>);

impl Backoff {
    const MAX: Duration = Duration::from_secs(300);

    fn next(&self, obj: &ObjectRef<ServiceDatabase>) -> Duration {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(obj.clone()).or_insert(0);
        *n = n.saturating_add(1);
        Duration::from_secs(1u64 << (*n - 1).min(9)).min(Self::MAX)
    }

    fn reset(&self, obj: &ObjectRef<ServiceDatabase>) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).remove(obj);
    }
}

/// Periodic re-check of a healthy resource, to repair drift of children the
/// controller does not watch (PVCs) and to catch up on missed events.
const RESYNC: Duration = Duration::from_secs(600);
/// Re-check of a database on a shared server, where people with admin
/// rights may change logins by hand.
const SHARED_RESYNC: Duration = Duration::from_secs(60);
/// How long a successful provisioning on a shared server stands for passes
/// with the same inputs: less than [`SHARED_RESYNC`], so that the periodic
/// re-check always goes to the server.
const PROVISIONED_FRESH: Duration = Duration::from_secs(50);
/// Re-check of a database with backups, so that an overdue backup shows.
const BACKUP_RESYNC: Duration = Duration::from_secs(300);
/// The pass after the one that saw a restore complete.
const RESTORE_DONE_RECHECK: Duration = Duration::from_millis(100);
/// Re-check of a dedicated instance that is not ready: its pod's trouble
/// (an image pull, a crash loop) changes nothing servicedb watches.
const INSTANCE_RECHECK: Duration = Duration::from_secs(30);
/// Re-check while deletion waits for the final backup.
const FINAL_BACKUP_RECHECK: Duration = Duration::from_secs(10);

async fn reconcile(sdb: Arc<ServiceDatabase>, ctx: Arc<Context>) -> Result<Action, Error> {
    let span = info_span!("reconcile", namespace = %sdb.namespace().unwrap_or_default(), object = %sdb.name_any());
    async move {
        let _timer = ctx.metrics.reconcile_started(CONTROLLER);
        let api: Api<ServiceDatabase> =
            Api::namespaced(ctx.client.clone(), &sdb.namespace().unwrap_or_default());
        let sdb = with_finalizer(&api, sdb).await?;
        if sdb.meta().deletion_timestamp.is_some() {
            ctx.provisioned.forget(&sdb.uid().unwrap_or_default());
        }
        let result = finalizer(&api, FINALIZER, sdb.clone(), |event| async {
            match event {
                Finalizer::Apply(sdb) => apply_spec(&sdb, &ctx).await,
                Finalizer::Cleanup(sdb) => cleanup(&sdb, &ctx).await,
            }
        })
        .await
        .map_err(|e| match e {
            kube::runtime::finalizer::Error::ApplyFailed(inner)
            | kube::runtime::finalizer::Error::CleanupFailed(inner) => inner,
            other => Error::Finalizer(Box::new(other)),
        });
        if result.is_ok() {
            ctx.backoff.reset(&ObjectRef::from_obj(sdb.as_ref()));
        }
        result
    }
    .instrument(span)
    .await
}

/// Adds the finalizer to a live resource that lacks it and goes on with
/// the same pass: the provisioning does not wait for the watch to bring the
/// patched object back (the trigger filter does not pass it on anyway).
/// The resource version makes the patch fail rather than overwrite a list
/// of finalizers that changed meanwhile; the retry sees the new list.
async fn with_finalizer(
    api: &Api<ServiceDatabase>,
    sdb: Arc<ServiceDatabase>,
) -> Result<Arc<ServiceDatabase>, Error> {
    if sdb.meta().deletion_timestamp.is_some() || sdb.finalizers().iter().any(|f| f == FINALIZER) {
        return Ok(sdb);
    }
    let mut finalizers = sdb.finalizers().to_vec();
    finalizers.push(FINALIZER.to_string());
    let patch = serde_json::json!({"metadata": {
        "finalizers": finalizers,
        "resourceVersion": sdb.resource_version(),
    }});
    let patched = api
        .patch(
            &sdb.name_any(),
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&patch),
        )
        .await
        .map_err(|e| {
            Error::Finalizer(Box::new(kube::runtime::finalizer::Error::AddFinalizer(e)))
        })?;
    // The status the pass compares against is the one it read: a patch of
    // metadata leaves it as it was.
    Ok(Arc::new(patched))
}

/// The pipeline for a live resource.
async fn apply_spec(sdb: &ServiceDatabase, ctx: &Context) -> Result<Action, Error> {
    let now = &Time(jiff_now());
    let invalid = |invalid: Invalid| async move {
        let status = status::compute(sdb, &status::Outcome::Invalid(&invalid), now);
        status::update(&ctx.client, &ctx.recorder, sdb, status, Some(&invalid)).await?;
        Err(Error::Invalid(invalid))
    };

    let found = match dereference::dereference_cached(&ctx.client, &ctx.cache, sdb).await {
        Ok(found) => found,
        // Objects this resource does not own and is not told about by a
        // watch: said in the status, retried with backoff until they appear.
        Err(dereference::Error::Invalid(e))
            if matches!(
                e.reason,
                "ServerCredentialsMissing" | "ServerTlsInvalid" | "ServerNotFound"
            ) =>
        {
            let status = status::compute(sdb, &status::Outcome::Invalid(&e), now);
            status::update(&ctx.client, &ctx.recorder, sdb, status, Some(&e)).await?;
            return Err(Error::Waiting(e));
        }
        Err(dereference::Error::Invalid(e)) if e.reason == dereference::NOT_ADMITTED => {
            return access::end(sdb, ctx, e, now).await;
        }
        Err(dereference::Error::Invalid(e)) => return invalid(e).await,
        Err(e) => return Err(e.into()),
    };
    let db = match validate::validate(sdb, &found.class, found.server.as_ref()) {
        Ok(db) => db,
        Err(e) => return invalid(e).await,
    };
    if let Some(server) = &db.server
        && let Some(holder) = claim::holder(sdb, ctx).await
    {
        // Never touch a login or data that another ServiceDatabase holds;
        // retried with backoff, and at once when the holder changes.
        let e = Invalid {
            field: "metadata.name",
            reason: "NameConflict",
            message: format!(
                "on DatabaseServer {}/{} the login, database and key prefix {:?} made from this namespace and name are held by ServiceDatabase {holder}; rename this ServiceDatabase or place it on another server",
                server.namespace, server.name, db.username
            ),
        };
        let status = status::compute(sdb, &status::Outcome::Invalid(&e), now);
        status::update(&ctx.client, &ctx.recorder, sdb, status, Some(&e)).await?;
        return Err(Error::Waiting(e));
    }
    let Some(owner) = sdb.controller_owner_ref(&()) else {
        // Only an object without a name or uid has no owner reference; the
        // API server never hands one out.
        return Err(Error::Invalid(Invalid {
            field: "metadata",
            reason: "NoUid",
            message: "object has no uid".into(),
        }));
    };
    let policy = rotation::Policy {
        owner: &db.username,
        same_user: db.engine == Engine::Redis,
        rotate_every: db.rotate_every,
        grace: db.grace_period,
        request: sdb
            .annotations()
            .get(rotation::ROTATE_ANNOTATION)
            .map(String::as_str),
    };
    let mut plan = rotation::plan(
        &found.recorded,
        &policy,
        now.0,
        &mut crate::password::generate,
    );
    // Held while this reconcile works on the shared server (login checks
    // included), so that one server's tenants cannot take every slot.
    let mut pass = None;
    let mut taken_over = false;
    if let Some(server) = &db.server {
        // Every login must work (and a retired one must not) before the
        // Secret says so. Until a requested restore completed, the login
        // the restore Job uses may load its keys (Redis: RESTORE).
        let restoring = db.restore_from.is_some() && !restore::restored(sdb);
        let Some(marker) = provision::marker(sdb, server, true) else {
            return Err(Error::Invalid(Invalid {
                field: "metadata",
                reason: "NoUid",
                message: "object has no uid".into(),
            }));
        };
        // A pass with the inputs that succeeded a moment ago (another
        // trigger than the user's) leaves the server alone; the periodic
        // re-check, later than that, repairs what was changed there by hand.
        let inputs =
            trigger::provision_inputs(sdb, server, &plan.logins, restoring, marker.adopt_unmarked);
        // Never skipped while a restore is pending: whether the data was
        // taken over from a predecessor is learnt on the server.
        let provisioned = if !restoring
            && ctx
                .provisioned
                .is_current(&marker.uid, inputs, PROVISIONED_FRESH)
        {
            Ok(provision::Provisioned::default())
        } else {
            let provisioned = match enter_server(server, ctx).await {
                Ok(entered) => {
                    pass = Some(entered);
                    on_server(
                        server,
                        ctx,
                        provision::ensure(
                            &db,
                            server,
                            &marker,
                            &plan.logins,
                            restoring,
                            &ctx.sessions,
                        ),
                    )
                    .await
                }
                Err(e) => Err(e),
            };
            match &provisioned {
                Ok(_) => ctx.provisioned.done(&marker.uid, inputs),
                Err(_) => ctx.provisioned.forget(&marker.uid),
            }
            provisioned
        };
        if let Err(Error::Provision(conflict @ provision::Error::Conflict { .. })) = &provisioned {
            // A role, database, schema or ACL user of this service's names
            // that servicedb did not make for it: never adopted. Nothing was
            // changed and no Secret is written; retried with backoff.
            let e = Invalid {
                field: "metadata.name",
                reason: "NameConflict",
                message: conflict.to_string(),
            };
            let status = status::compute(sdb, &status::Outcome::Invalid(&e), now);
            status::update(&ctx.client, &ctx.recorder, sdb, status, Some(&e)).await?;
            return Err(Error::Waiting(e));
        }
        match provisioned {
            Ok(provisioned) => taken_over = provisioned.taken_over,
            Err(e) => {
                let Error::Provision(e) = e else {
                    return Err(e);
                };
                let outcome = status::Outcome::ServerUnavailable {
                    db: &db,
                    message: e.to_string(),
                };
                let status = status::compute(sdb, &outcome, now);
                status::update(&ctx.client, &ctx.recorder, sdb, status, None).await?;
                return Err(e.into());
            }
        }
    }
    if let Some(next) = &plan.logins.next {
        // On a dedicated instance the instance manager makes the new login
        // from the Secret; switch only once it works.
        let works = tokio::time::timeout(SERVER_WORK_DEADLINE, provision::login_works(&db, next));
        if works.await.unwrap_or(false) {
            plan = rotation::promote(plan, &policy, now.0);
            announce_rotation(sdb, &plan, ctx).await;
        } else {
            tracing::info!(username = %next.username, "waiting for the new login to work before switching to it");
        }
    } else if plan.deferred {
        tracing::info!("a credential rotation waits for the previous grace period to end");
    }
    drop(pass);
    let credentials = Credentials {
        admin_password: found.admin_password.clone(),
        logins: plan.logins.clone(),
        annotations: plan.annotations(),
    };
    let backups = backups::observe(&ctx.client, sdb, &db, now).await?;
    // On a shared server the database exists once provisioned.
    let ready_replicas = if db.server.is_some() {
        1
    } else {
        found.ready_replicas
    };
    let restore = match restore::ensure(
        &ctx.client,
        sdb,
        &db,
        ready_replicas > 0,
        taken_over,
        &ctx.facts,
        &owner,
    )
    .await
    {
        Ok(restore) => restore,
        Err(restore::Error::Invalid(e)) => return invalid(e).await,
        Err(e) => return Err(Error::Restore(e)),
    };

    let restore_completed =
        !restore::restored(sdb) && matches!(restore, restore::Restore::Completed { .. });
    let children = crate::build::children(
        &db,
        &credentials,
        &ctx.facts,
        &owner,
        backups.latest.as_ref(),
    );
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
    // A dedicated instance that is not ready: its pod tells why.
    let mut pod_seen = false;
    let not_ready = if db.server.is_none() && ready_replicas == 0 {
        let pod = instance::pod(&ctx.client, &db.namespace, &db.instance_name())
            .await
            .unwrap_or_else(|e| {
                tracing::warn!(error = %e, "reading the instance's pod");
                None
            });
        pod_seen = pod.is_some();
        Some(instance::diagnose(&db.instance_name(), pod.as_ref()))
    } else {
        None
    };
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
            not_ready: not_ready.as_ref(),
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
        let generation = sdb.metadata.generation;
        status.conditions = crate::api::conditions::merge(
            &status.conditions,
            std::slice::from_ref(&storage.condition),
            generation,
            now,
        );
    }
    status::update(&ctx.client, &ctx.recorder, sdb, status, None).await?;
    // A shared server is re-checked often: a login changed or dropped by
    // hand there is repaired within a minute.
    // Backup health ages without any event: look again when it would turn.
    let resync = match (db.server.is_some(), db.backup.is_some()) {
        (true, _) => SHARED_RESYNC,
        (false, true) => BACKUP_RESYNC,
        (false, false) => RESYNC,
    };
    let mut due = plan
        .next_event(&policy, now.0)
        .map_or(resync, |due| due.min(resync));
    if behind {
        due = due.min(rollout::RECHECK);
    }
    if not_ready.is_some() && pod_seen {
        // Nothing announces a pod's image pull or crash loop here: look
        // again. Without a pod there is nothing to read until the
        // StatefulSet (watched) makes one.
        due = due.min(INSTANCE_RECHECK);
    }
    if storage.as_ref().is_some_and(|v| v.resizing) {
        due = due.min(storage::RECHECK);
    }
    if let Some(wait) = rollout::until_warning(&plan, db.grace_period, now.0) {
        due = due.min(wait);
    }
    if restore_completed {
        // What this pass gave the server still let the restore's login in;
        // the next reads the completed restore from the status just
        // written (which starts no pass by itself) and withdraws that.
        due = due.min(RESTORE_DONE_RECHECK);
    }
    Ok(Action::requeue(due))
}

/// A Normal Event when the Secret switched to a new login.
async fn announce_rotation(sdb: &ServiceDatabase, plan: &rotation::Plan, ctx: &Context) {
    let until = plan
        .previous_valid_until
        .map(|t| t.to_string())
        .unwrap_or_default();
    tracing::info!(username = %plan.logins.current.username, previous_valid_until = %until, "credentials rotated");
    let event = KubeEvent {
        type_: EventType::Normal,
        reason: "CredentialsRotated".into(),
        note: Some(format!(
            "the Secret now holds login {}; the previous login works until {until}",
            plan.logins.current.username
        )),
        action: "Rotate".into(),
        secondary: None,
    };
    crate::controller::publish(&ctx.recorder, &event, &sdb.object_ref(&())).await;
}

/// Deletion, by `deletionPolicy`.
async fn cleanup(sdb: &ServiceDatabase, ctx: &Context) -> Result<Action, Error> {
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
        Err(dereference::Error::Invalid(e)) => {
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

/// How long one reconcile may work on a shared server, every connection
/// and statement together; each connection has its own shorter deadline.
const SERVER_WORK_DEADLINE: Duration = Duration::from_secs(30);
/// How long a reconcile waits for a place on a busy server before it is
/// turned away (and holds its reconcile slot meanwhile).
const SERVER_BUSY_WAIT: Duration = Duration::from_secs(2);
/// When a reconcile turned away by a busy server tries again.
const SERVER_BUSY_RETRY: Duration = Duration::from_secs(1);

/// The gate's pass to work on `server`: refused while the server is known
/// not to answer (the status says so) or while as many reconciles as the
/// limit allows work on it (tried again in a moment).
async fn enter_server(
    server: &crate::model::server::ServerFacts,
    ctx: &Context,
) -> Result<super::server_gate::Pass, Error> {
    use super::server_gate::{Closed, key};
    match ctx
        .servers
        .enter_within(
            &key(&server.host, server.port),
            &server_via(server),
            SERVER_BUSY_WAIT,
        )
        .await
    {
        Ok(pass) => Ok(pass),
        Err(Closed::Busy) => Err(Error::ServerBusy),
        Err(Closed::Down(message)) => Err(Error::Provision(provision::Error::Connect {
            server: server_display(server),
            message: format!("not tried again yet, the server failed a moment ago: {message}"),
        })),
    }
}

/// Runs `work` on `server` within [`SERVER_WORK_DEADLINE`] and tells the
/// gate whether the server answered.
async fn on_server<T>(
    server: &crate::model::server::ServerFacts,
    ctx: &Context,
    work: impl std::future::Future<Output = Result<T, provision::Error>>,
) -> Result<T, Error> {
    let via = server_via(server);
    let result = tokio::time::timeout(SERVER_WORK_DEADLINE, work)
        .await
        .unwrap_or_else(|_| {
            Err(provision::Error::Connect {
                server: server_display(server),
                message: format!(
                    "the server did not finish within {}s",
                    SERVER_WORK_DEADLINE.as_secs()
                ),
            })
        });
    match &result {
        Err(provision::Error::Connect { message, .. }) => ctx.servers.down(&via, message),
        _ => ctx.servers.up(&via),
    }
    Ok(result?)
}

/// The DatabaseServer's `namespace/name`: what the gate knows down.
fn server_via(server: &crate::model::server::ServerFacts) -> String {
    format!("{}/{}", server.namespace, server.name)
}

/// `namespace/name (host:port)`, as provisioning errors name a server.
fn server_display(server: &crate::model::server::ServerFacts) -> String {
    format!(
        "{}/{} ({}:{})",
        server.namespace, server.name, server.host, server.port
    )
}

fn error_policy(sdb: Arc<ServiceDatabase>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.reconcile_failed(CONTROLLER, error.category());
    if matches!(error, Error::ServerBusy) {
        // Not a failure of this database: no backoff, a moment's wait.
        let jitter = SERVER_BUSY_RETRY.mul_f64(rand::random_range(0.0..1.0));
        return Action::requeue(SERVER_BUSY_RETRY + jitter);
    }
    if matches!(error, Error::FinalBackupPending(_)) {
        // The DatabaseBackup watch brings the change; this guards a miss.
        return Action::requeue(FINAL_BACKUP_RECHECK);
    }
    if matches!(error, Error::Provision(provision::Error::Connect { .. })) {
        // The server did not answer (or the gate turned this one away while
        // it is known down): retried with backoff, but never waiting longer
        // than the gate keeps a failed server closed, so its tenants follow
        // within moments once its probe or a connection succeeds.
        let backoff = ctx.backoff.next(&ObjectRef::from_obj(sdb.as_ref()));
        let cap = super::server_gate::DOWN_FOR
            + super::server_gate::DOWN_FOR.mul_f64(rand::random_range(0.0..0.5));
        return Action::requeue(backoff.min(cap));
    }
    if error.is_invalid_input() {
        // The status says what to change; a class created later still
        // arrives through the DatabaseClass watch, so waiting is enough. A
        // slow re-check guards against a missed event.
        Action::requeue(RESYNC)
    } else {
        Action::requeue(ctx.backoff.next(&ObjectRef::from_obj(sdb.as_ref())))
    }
}

/// Runs the controller until `shutdown` resolves.
pub async fn run(
    ctx: Arc<Context>,
    concurrency: u16,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let client = ctx.client.clone();
    let owned = watcher::Config::default().labels(&format!("{LABEL_MANAGED_BY}={MANAGED_BY}"));
    // Only what a user changed starts a pass (see [`trigger`]); requeues,
    // children and the other watches below still do.
    let (reader, writer) = reflector::store();
    let changes = watcher(
        Api::<ServiceDatabase>::all(client.clone()),
        watcher::Config::default().any_semantic(),
    )
    .default_backoff()
    .reflect(writer)
    .applied_objects()
    .predicate_filter(trigger::relevant, PredicateConfig::default());
    let controller = Controller::for_stream(changes, reader);
    let store = controller.store();
    let restoring = controller.store();
    let claims = controller.store();
    ctx.metrics.observe_databases(controller.store());
    if ctx.service_databases.set(controller.store()).is_err() {
        tracing::warn!(
            "the ServiceDatabase controller started twice; name claims use the first cache"
        );
    }
    let agent_jobs = watcher::Config::default().labels(&format!(
        "{LABEL_MANAGED_BY}={MANAGED_BY},{LABEL_COMPONENT} in ({},{},{})",
        crate::build::backup::component::BACKUP,
        crate::build::backup::component::VERIFY,
        crate::build::backup::component::RESTORE,
    ));
    let (statefulsets, statefulset_changes) = owned_changes::<StatefulSet>(&ctx, &owned);
    let (services, service_changes) = owned_changes::<Service>(&ctx, &owned);
    let (secrets, secret_changes) = owned_changes::<Secret>(&ctx, &owned);
    let (network_policies, network_policy_changes) = owned_changes::<NetworkPolicy>(&ctx, &owned);
    let (pdbs, pdb_changes) = owned_changes::<PodDisruptionBudget>(&ctx, &owned);
    let (cronjobs, cronjob_changes) = owned_changes::<CronJob>(&ctx, &owned);
    // Read only: their changes start no pass here.
    let (secret_names, secret_name_changes) = reflected(watcher(
        Api::<PartialObjectMeta<Secret>>::all(client.clone()),
        watcher::Config::default(),
    ));
    let (servers, server_changes) = reflected(watcher(
        Api::<DatabaseServer>::all(client.clone()),
        watcher::Config::default(),
    ));
    let (namespaces, namespace_changes) = reflected(watcher(
        Api::<PartialObjectMeta<Namespace>>::all(client.clone()),
        watcher::Config::default(),
    ));
    let (classes, class_changes) = reflected(watcher(
        Api::<DatabaseClass>::all(client.clone()),
        watcher::Config::default(),
    ));
    ctx.cache.set(cache::Stores {
        secrets,
        secret_names,
        statefulsets,
        services,
        pdbs,
        network_policies,
        cronjobs,
        classes,
        servers,
        namespaces,
    });
    controller
        .watches_stream(statefulset_changes, owner_of)
        .watches_stream(service_changes, owner_of)
        .watches_stream(secret_changes, owner_of)
        .watches_stream(network_policy_changes, owner_of)
        .watches_stream(pdb_changes, owner_of)
        .watches_stream(cronjob_changes, owner_of)
        .watches_stream(secret_name_changes, |_| None)
        .watches_stream(server_changes, |_| None)
        .watches_stream(namespace_changes, |_| None)
        // Scheduled backup Jobs are the CronJob's, not ours: found by label.
        .watches(Api::<Job>::all(client.clone()), agent_jobs, |job: Job| {
            let namespace = job.namespace()?;
            let name = crate::build::instance_label(job.labels())?.clone();
            Some(ObjectRef::<ServiceDatabase>::new(&name).within(&namespace))
        })
        // A backup's progress changes its database's status, and may let a
        // database that restores from it go on.
        .watches(
            Api::<DatabaseBackup>::all(client.clone()),
            watcher::Config::default(),
            move |backup: DatabaseBackup| {
                let namespace = backup.namespace().unwrap_or_default();
                let name = backup.name_any();
                let mut refs = vec![
                    ObjectRef::<ServiceDatabase>::new(&backup.spec.service_database_ref.name)
                        .within(&namespace),
                ];
                refs.extend(
                    restoring
                        .state()
                        .iter()
                        .filter(|s| s.namespace().as_deref() == Some(namespace.as_str()))
                        .filter(|s| {
                            s.spec
                                .bootstrap
                                .as_ref()
                                .and_then(|b| b.from_backup.as_ref())
                                .is_some_and(|b| b.name == name)
                        })
                        .map(|s| ObjectRef::from_obj(s.as_ref())),
                );
                refs
            },
        )
        // A name on a shared server changes hands when its holder goes (or
        // moves): the other claimants look again at once.
        .watches(
            Api::<ServiceDatabase>::all(client.clone()),
            watcher::Config::default().any_semantic(),
            move |changed: ServiceDatabase| {
                let all = claims.state();
                claim::rivals(&changed, all.iter().map(AsRef::as_ref))
                    .into_iter()
                    .map(ObjectRef::from_obj)
                    .collect::<Vec<_>>()
            },
        )
        .watches_stream(class_changes, move |class: DatabaseClass| {
            store
                .state()
                .iter()
                .filter(|s| s.spec.engine == class.spec.engine)
                .map(|s| ObjectRef::from_obj(s.as_ref()))
                .collect::<Vec<_>>()
        })
        .with_config(ControllerConfig::default().concurrency(concurrency))
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx.clone())
        .for_each(|result| {
            let ctx = ctx.clone();
            async move { super::report(CONTROLLER, result, &ctx).await }
        })
        .await;
}

/// A watch kept in a store; the stream must be polled (by the controller)
/// for the store to fill.
fn reflected<K>(
    events: impl futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
) -> (
    reflector::Store<K>,
    impl futures::Stream<Item = Result<K, watcher::Error>> + Send + 'static,
)
where
    K: Resource<DynamicType = ()> + Clone + std::fmt::Debug + Send + Sync + 'static,
{
    let (reader, writer) = reflector::store();
    (
        reader,
        events.default_backoff().reflect(writer).touched_objects(),
    )
}

/// The children of kind `K` in a store, and their changes less the
/// operator's own writes (a deletion is always a change).
fn owned_changes<K>(
    ctx: &Arc<Context>,
    owned: &watcher::Config,
) -> (
    reflector::Store<K>,
    impl futures::Stream<Item = Result<K, watcher::Error>> + Send + 'static,
)
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let (store, changes) = reflected(watcher(Api::<K>::all(ctx.client.clone()), owned.clone()));
    let ctx = ctx.clone();
    (
        store,
        changes.try_filter(move |obj| std::future::ready(!ctx.cache.own_writes.is_own(obj))),
    )
}

/// The ServiceDatabase a child belongs to, by its owner reference.
fn owner_of<K: Resource>(obj: K) -> Option<ObjectRef<ServiceDatabase>> {
    let namespace = obj.meta().namespace.clone()?;
    obj.owner_references()
        .iter()
        .find(|o| {
            o.kind == ServiceDatabase::kind(&())
                && o.api_version == ServiceDatabase::api_version(&())
        })
        .map(|o| ObjectRef::new(&o.name).within(&namespace))
}

fn jiff_now() -> k8s_openapi::jiff::Timestamp {
    k8s_openapi::jiff::Timestamp::now()
}
