//! The ServiceDatabase controller. A live pass ([`live`]) is a list of
//! named steps:
//!
//! 1. [`dereference`](crate::controller::dereference) — class, existing
//!    Secrets, StatefulSet readiness, the shared server (fetches only);
//! 2. [`validate`](crate::model::database::validate) — spec + class → one
//!    [`ValidatedDatabase`](crate::model::database::ValidatedDatabase)
//!    (pure, checks only); on a shared server [`claim`] — no other
//!    ServiceDatabase holds its login name;
//! 3. [`credentials`] — the rotation plan; on a shared server the logins
//!    and database made by the engine's [`provision::Provisioner`];
//! 4. [`backups`] — scheduled runs recorded, retention, backup health; then
//!    [`restore`] — the one restore of `spec.bootstrap.fromBackup`;
//! 5. build — [`crate::build::children`] (pure); [`apply`](crate::controller::apply)
//!    — server-side apply of what changed, prune what is gone;
//! 6. [`instance`] — why a dedicated instance's pod is not ready;
//!    [`storage`] — volume growth; [`rollout`] — workloads on old passwords;
//! 7. [`status`] — conditions, phase, Events: written once, at the end, or
//!    by the early stop ([`live::Stop`]) that ended the pass.
//!
//! Errors are routed by their [`Kind`]. Deletion runs through a finalizer
//! that honours `deletionPolicy` ([`cleanup`]); `Snapshot` waits for a final
//! `DatabaseBackup` ([`final_backup`]). The watches are in [`watch`].

pub mod access;
pub mod backups;
pub mod claim;
pub mod cleanup;
pub mod credentials;
pub mod final_backup;
pub mod instance;
pub mod live;
pub mod provision;
pub mod restore;
pub mod rollout;
pub mod status;
pub mod storage;
pub mod trigger;

mod watch;
pub use watch::*;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{Namespace, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{PredicateConfig, WatchStreamExt, reflector, watcher};
use kube::{Api, Resource, ResourceExt};
use tracing::{Instrument, info_span};

use super::Context;
use crate::api::{DatabaseBackup, DatabaseClass, DatabaseServer, ServiceDatabase};
use crate::build::{LABEL_COMPONENT, LABEL_MANAGED_BY, MANAGED_BY};
use crate::controller::{apply, cache, dereference};
use crate::model::database::Invalid;
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

/// What kind of failure an error is: it decides the Event reason, whether
/// the status already said it, and how soon the pass is retried.
#[derive(Clone, Copy, Debug, PartialEq, Eq, strum::IntoStaticStr)]
#[strum(serialize_all = "kebab-case")]
pub enum Kind {
    /// Reading the API server failed.
    Read,
    /// The spec cannot be realised: the user must change it.
    InvalidSpec,
    /// Something the resource does not own is not there (yet).
    Waiting,
    Apply,
    /// The shared server did not answer or refused the administrator.
    ServerUnreachable,
    /// As many reconciles as allowed work on the shared server.
    ServerBusy,
    /// A name on the shared server is held by an object servicedb did not
    /// make for this resource.
    NameConflict,
    /// The shared server answered but the database or login could not be
    /// made.
    Provision,
    Status,
    Backups,
    Restore,
    FinalBackup,
    /// Deletion waits for the final backup.
    FinalBackupPending,
    Storage,
    Finalizer,
}

impl Kind {
    /// The Event reason of an error of this kind.
    pub fn reason(self) -> &'static str {
        match self {
            Kind::InvalidSpec => "InvalidSpec",
            Kind::Read => "ReadFailed",
            Kind::Apply => "ApplyFailed",
            Kind::ServerUnreachable => "ServerUnreachable",
            Kind::ServerBusy => "ServerBusy",
            Kind::NameConflict => "NameConflict",
            Kind::Provision => "ProvisionFailed",
            Kind::Waiting => "Waiting",
            Kind::Status => "StatusFailed",
            Kind::Backups => "BackupsFailed",
            Kind::Restore => "RestoreFailed",
            Kind::FinalBackup | Kind::FinalBackupPending => "FinalBackupPending",
            Kind::Storage => "StorageFailed",
            Kind::Finalizer => "FinalizerFailed",
        }
    }
}

impl super::ReconcileError for Error {
    fn category(&self) -> &'static str {
        Error::category(self)
    }
    fn reason(&self) -> &'static str {
        self.kind().reason()
    }
    fn is_reported(&self) -> bool {
        // An invalid spec, a missing object and the wait for a final
        // backup are a condition and an Event already.
        matches!(
            self.kind(),
            Kind::InvalidSpec | Kind::Waiting | Kind::FinalBackupPending | Kind::ServerBusy
        )
    }
}

impl Error {
    /// The kind of failure, from the variant (and the source's variant).
    pub fn kind(&self) -> Kind {
        use kube::runtime::finalizer::Error as F;
        match self {
            Error::Dereference(dereference::Error::Read { .. }) => Kind::Read,
            Error::Dereference(
                dereference::Error::Invalid(_)
                | dereference::Error::Unavailable(_)
                | dereference::Error::NotAdmitted(_),
            )
            | Error::Invalid(_)
            | Error::Restore(restore::Error::Invalid(_)) => Kind::InvalidSpec,
            Error::Apply(_) => Kind::Apply,
            Error::Waiting(_) => Kind::Waiting,
            Error::Provision(provision::Error::Connect { .. }) => Kind::ServerUnreachable,
            Error::Provision(provision::Error::Conflict { .. }) => Kind::NameConflict,
            Error::Provision(provision::Error::Provision { .. }) => Kind::Provision,
            Error::Status(_) => Kind::Status,
            Error::Backups(_) => Kind::Backups,
            Error::Restore(_) => Kind::Restore,
            Error::FinalBackup(_) => Kind::FinalBackup,
            Error::Storage(_) => Kind::Storage,
            Error::FinalBackupPending(_) => Kind::FinalBackupPending,
            Error::ServerBusy => Kind::ServerBusy,
            Error::Finalizer(f) => match f.as_ref() {
                F::ApplyFailed(e) | F::CleanupFailed(e) => e.kind(),
                _ => Kind::Finalizer,
            },
        }
    }

    /// The `category` label of `servicedb_reconcile_errors_total`: the kind,
    /// or for a failed provisioning the engine's own category of it (such as
    /// `invalid_name` or `permission_denied`).
    pub fn category(&self) -> &'static str {
        match self {
            Error::Provision(provision::Error::Provision { category, .. }) => category,
            Error::Finalizer(f) => match f.as_ref() {
                kube::runtime::finalizer::Error::ApplyFailed(e)
                | kube::runtime::finalizer::Error::CleanupFailed(e) => e.category(),
                _ => self.kind().into(),
            },
            _ => self.kind().into(),
        }
    }

    /// Bad input waits for the user; everything else is bad luck and retried.
    pub fn is_invalid_input(&self) -> bool {
        self.kind() == Kind::InvalidSpec
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
                Finalizer::Apply(sdb) => live::apply_spec(&sdb, &ctx).await,
                Finalizer::Cleanup(sdb) => cleanup::cleanup(&sdb, &ctx).await,
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

fn error_policy(sdb: Arc<ServiceDatabase>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.reconcile_failed(CONTROLLER, error.category());
    if error.kind() == Kind::ServerBusy {
        // Not a failure of this database: no backoff, a moment's wait.
        let jitter = credentials::SERVER_BUSY_RETRY.mul_f64(rand::random_range(0.0..1.0));
        return Action::requeue(credentials::SERVER_BUSY_RETRY + jitter);
    }
    if error.kind() == Kind::FinalBackupPending {
        // The DatabaseBackup watch brings the change; this guards a miss.
        return Action::requeue(FINAL_BACKUP_RECHECK);
    }
    if error.kind() == Kind::ServerUnreachable {
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
        Action::requeue(live::RESYNC)
    } else {
        Action::requeue(ctx.backoff.next(&ObjectRef::from_obj(sdb.as_ref())))
    }
}

fn jiff_now() -> k8s_openapi::jiff::Timestamp {
    k8s_openapi::jiff::Timestamp::now()
}

#[cfg(test)]
mod reconcile_tests;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::ReconcileError;

    fn invalid(reason: &'static str) -> Invalid {
        Invalid {
            field: "spec.serverRef",
            reason,
            message: "m".into(),
        }
    }

    fn provision_failed(category: &'static str) -> Error {
        Error::Provision(provision::Error::Provision {
            server: "s".into(),
            category,
            message: "m".into(),
        })
    }

    /// The kind comes from the variant: the metric label, the Event reason,
    /// whether the status already said it, and bad input vs bad luck.
    #[test]
    fn each_error_has_its_kind_label_and_reason() {
        let cases: Vec<(Error, &str, &str, bool)> = vec![
            (
                Error::Invalid(invalid("X")),
                "invalid-spec",
                "InvalidSpec",
                true,
            ),
            (
                Error::Dereference(dereference::Error::Unavailable(invalid("ServerNotFound"))),
                "invalid-spec",
                "InvalidSpec",
                true,
            ),
            (
                Error::Waiting(invalid("NameConflict")),
                "waiting",
                "Waiting",
                true,
            ),
            (
                Error::Provision(provision::Error::Connect {
                    server: "s".into(),
                    message: "m".into(),
                }),
                "server-unreachable",
                "ServerUnreachable",
                false,
            ),
            (
                Error::Provision(provision::Error::Conflict {
                    server: "s".into(),
                    message: "m".into(),
                }),
                "name-conflict",
                "NameConflict",
                false,
            ),
            (
                provision_failed("permission_denied"),
                "permission_denied",
                "ProvisionFailed",
                false,
            ),
            (Error::ServerBusy, "server-busy", "ServerBusy", true),
            (
                Error::FinalBackupPending("m".into()),
                "final-backup-pending",
                "FinalBackupPending",
                true,
            ),
            (
                Error::Finalizer(Box::new(kube::runtime::finalizer::Error::ApplyFailed(
                    provision_failed("invalid_name"),
                ))),
                "invalid_name",
                "ProvisionFailed",
                false,
            ),
        ];
        for (error, category, reason, reported) in cases {
            assert_eq!(
                (
                    ReconcileError::category(&error),
                    ReconcileError::reason(&error),
                    error.is_reported()
                ),
                (category, reason, reported),
                "{error:?}"
            );
        }
        assert!(Error::Invalid(invalid("X")).is_invalid_input());
        assert!(!Error::Waiting(invalid("X")).is_invalid_input());
    }
}
