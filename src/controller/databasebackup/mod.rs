//! The DatabaseBackup controller: one backup run, a fixed pipeline:
//!
//! 1. dereference — the Job of the run, the ServiceDatabase (for a new Job
//!    and the destination), the agent's report from the Job's pod;
//! 2. build — the Job of a manual or final backup
//!    ([`crate::build::backup::backup_job`]; scheduled runs come with
//!    the CronJob's Job, named like the backup);
//! 3. [`status`] — phase, times, location, size, checksum (pure), Events.
//!
//! Deletion runs through a finalizer. The archive is kept unless
//! `retainArchiveOnDelete` (or the ServiceDatabase's
//! `backup.retainArchivesOnDelete`) is `false`: then a `servicedb agent
//! delete` Job deletes it first, and the DatabaseBackup goes once that Job
//! completed. While the namespace is being deleted the archive is always
//! kept and nothing waits: no Job can be created there any more.

pub mod status;

mod deletion;
use deletion::*;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::PostParams;
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::events::{Event as KubeEvent, EventType};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Api, Resource, ResourceExt};
use tracing::{Instrument, info_span};

use super::Context;
use super::jobs::{self, JobState, Report};
use crate::api::ServiceDatabase;
use crate::api::database_backup::{BackupPhase, BackupTrigger, DatabaseBackup};
use crate::build::backup::{
    Archive, LABEL_BACKUP, backup_job, backup_job_name, component, delete_job, delete_job_name,
};
use crate::build::{LABEL_COMPONENT, LABEL_MANAGED_BY, MANAGED_BY};
use crate::controller::dereference;
use crate::model::database as validate;

/// Name of the controller in metrics and logs.
pub const CONTROLLER: &str = "databasebackup";
/// Finalizer that deletes the stored archive first.
pub const FINALIZER: &str = "servicedb.dev/archive";

/// How often a backup is looked at while its Job runs (Job events bring
/// changes; this guards against a missed one).
const RUNNING_RECHECK: Duration = Duration::from_secs(60);
/// How often an archive deletion is looked at again.
const DELETE_RECHECK: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading {kind}: {source}")]
    Read {
        kind: &'static str,
        #[source]
        source: kube::Error,
    },
    #[error("creating Job {name}: {source}")]
    Create {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("writing status: {0}")]
    Status(#[source] kube::Error),
    /// The archive deletion Job has not completed yet.
    #[error("waiting for Job {0} to delete the archive")]
    DeletePending(String),
    #[error("deleting the archive failed ({job}): {message}")]
    DeleteFailed { job: String, message: String },
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
}

impl super::ReconcileError for Error {
    fn category(&self) -> &'static str {
        match self {
            Error::Read { .. } => "read",
            Error::Create { .. } => "apply",
            Error::Status(_) => "status",
            Error::DeletePending(_) => "delete-pending",
            Error::DeleteFailed { .. } => "delete-failed",
            Error::Finalizer(_) => "finalizer",
        }
    }
    fn reason(&self) -> &'static str {
        match self {
            Error::Read { .. } => "ReadFailed",
            Error::Create { .. } => "ApplyFailed",
            Error::Status(_) => "StatusFailed",
            Error::DeletePending(_) => "DeletingArchive",
            Error::DeleteFailed { .. } => "ArchiveDeleteFailed",
            Error::Finalizer(_) => "FinalizerFailed",
        }
    }
    fn is_reported(&self) -> bool {
        matches!(self, Error::DeletePending(_))
    }
}

/// The Job of a backup: a scheduled run's Job has the backup's name.
pub fn job_name(backup: &DatabaseBackup) -> String {
    match backup.spec.trigger {
        BackupTrigger::Scheduled => backup.name_any(),
        BackupTrigger::Manual | BackupTrigger::Final => backup_job_name(&backup.name_any()),
    }
}

async fn reconcile(backup: Arc<DatabaseBackup>, ctx: Arc<Context>) -> Result<Action, Error> {
    let span = info_span!("reconcile", controller = CONTROLLER, namespace = %backup.namespace().unwrap_or_default(), object = %backup.name_any());
    async move {
        let _timer = ctx.metrics.reconcile_started(CONTROLLER);
        let api: Api<DatabaseBackup> =
            Api::namespaced(ctx.client.clone(), &backup.namespace().unwrap_or_default());
        finalizer(&api, FINALIZER, backup, |event| async {
            match event {
                Finalizer::Apply(backup) => run(&backup, &ctx).await,
                Finalizer::Cleanup(backup) => delete_archive(&backup, &ctx).await,
            }
        })
        .await
        .map_err(|e| match e {
            kube::runtime::finalizer::Error::ApplyFailed(inner)
            | kube::runtime::finalizer::Error::CleanupFailed(inner) => inner,
            other => Error::Finalizer(Box::new(other)),
        })
    }
    .instrument(span)
    .await
}

/// What the ServiceDatabase says about where and how to back up.
struct Source {
    db: validate::ValidatedDatabase,
    backup: validate::ValidatedBackup,
}

/// The ServiceDatabase of a backup, validated; or why there is none.
async fn database_of(
    ctx: &Context,
    backup: &DatabaseBackup,
) -> Result<Result<Source, String>, Error> {
    let namespace = backup.namespace().unwrap_or_default();
    let name = &backup.spec.service_database_ref.name;
    let Some(sdb) = Api::<ServiceDatabase>::namespaced(ctx.client.clone(), &namespace)
        .get_opt(name)
        .await
        .map_err(|source| Error::Read {
            kind: "ServiceDatabase",
            source,
        })?
    else {
        return Ok(Err(format!("ServiceDatabase {name} does not exist")));
    };
    let found = match dereference::dereference(&ctx.client, &sdb).await {
        Ok(found) => found,
        Err(
            dereference::Error::Invalid(e)
            | dereference::Error::Unavailable(e)
            | dereference::Error::NotAdmitted(e),
        ) => {
            return Ok(Err(format!("ServiceDatabase {name} is invalid: {e}")));
        }
        Err(dereference::Error::Read { kind, source }) => {
            return Err(Error::Read { kind, source });
        }
    };
    let db = match validate::validate(&sdb, &found.class, found.server.as_ref()) {
        Ok(db) => db,
        Err(e) => return Ok(Err(format!("ServiceDatabase {name} is invalid: {e}"))),
    };
    match db.backup.clone() {
        Some(backup) => Ok(Ok(Source { db, backup })),
        None => Ok(Err(format!(
            "ServiceDatabase {name} has no spec.backup: it says where backups go"
        ))),
    }
}

/// A live backup: start its Job if it has none, follow it.
async fn run(backup: &DatabaseBackup, ctx: &Context) -> Result<Action, Error> {
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let previous = backup.status.clone().unwrap_or_default();
    if matches!(previous.phase, BackupPhase::Completed | BackupPhase::Failed) {
        // A finished run is history; its Job may be gone. What is left to
        // learn is whether a restore of it worked.
        if previous.phase == BackupPhase::Completed {
            record_verification(backup, &previous, ctx).await?;
        }
        return Ok(Action::await_change());
    }
    let namespace = backup.namespace().unwrap_or_default();
    let jobs_api: Api<Job> = Api::namespaced(ctx.client.clone(), &namespace);
    let job_name = job_name(backup);
    let Some(job) = current_job(backup, &jobs_api, &job_name).await? else {
        return Ok(Action::requeue(Duration::from_secs(2)));
    };
    let source = if previous.destination.is_none() || job.is_none() {
        Some(database_of(ctx, backup).await?)
    } else {
        None
    };
    let Some((observed, has_job)) =
        observe(backup, ctx, &jobs_api, &job_name, job, &source).await?
    else {
        return Ok(Action::await_change());
    };
    let report = agent_report(ctx, &namespace, &job_name, &observed).await?;
    let target = source.and_then(|s| s.ok()).map(|s| status::Target {
        engine: s.db.engine,
        destination: s.backup.destination,
        url: s.backup.url,
    });
    let status = status::compute(
        backup,
        &status::Input {
            job_name: has_job.then(|| job_name.clone()),
            observed: &observed,
            report: report.as_ref(),
            target: target.as_ref(),
        },
        &now,
    );
    if crate::controller::write_status(&ctx.client, backup, &previous, &status)
        .await
        .map_err(Error::Status)?
        && status.phase != previous.phase
    {
        announce(backup, ctx, &status).await;
    }
    Ok(match status.phase {
        BackupPhase::Completed | BackupPhase::Failed => Action::await_change(),
        _ => Action::requeue(RUNNING_RECHECK),
    })
}

/// The run's Job, if it exists (`Some(None)`: not yet). A Job of an earlier
/// backup of the same name (deleted and made again, such as a retried final
/// backup) that garbage collection has not removed yet is not this run's:
/// it is removed, and `None` says to look again in a moment.
async fn current_job(
    backup: &DatabaseBackup,
    jobs_api: &Api<Job>,
    job_name: &str,
) -> Result<Option<Option<Job>>, Error> {
    let job = jobs_api
        .get_opt(job_name)
        .await
        .map_err(|source| Error::Read {
            kind: "Job",
            source,
        })?;
    if backup.spec.trigger != BackupTrigger::Scheduled
        && let Some(stale) = job.as_ref().filter(|j| {
            j.owner_references()
                .iter()
                .all(|o| Some(&o.uid) != backup.uid().as_ref())
        })
    {
        tracing::info!(job = %stale.name_any(), "removing the Job of an earlier backup of this name");
        crate::controller::apply::delete(jobs_api, job_name)
            .await
            .map_err(|source| Error::Read {
                kind: "Job",
                source,
            })?;
        return Ok(None);
    }
    Ok(Some(job))
}

/// What the run's Job says, the Job made first when the run has none yet;
/// and whether it has one. `None` for a backup without a uid (never handed
/// out by the API server).
async fn observe(
    backup: &DatabaseBackup,
    ctx: &Context,
    jobs_api: &Api<Job>,
    job_name: &str,
    job: Option<Job>,
    source: &Option<Result<Source, String>>,
) -> Result<Option<(status::Observed, bool)>, Error> {
    Ok(Some(match (&job, source) {
        (None, _) if backup.spec.trigger == BackupTrigger::Scheduled => (
            status::Observed::Gone(format!("its Job {job_name} no longer exists")),
            false,
        ),
        (None, Some(Err(why))) => (status::Observed::Gone(why.clone()), false),
        (None, Some(Ok(src))) => {
            let Some(owner) = backup.controller_owner_ref(&()) else {
                return Ok(None);
            };
            let new = backup_job(&src.db, &src.backup, &ctx.facts, &backup.name_any(), &owner);
            let created = match jobs_api.create(&PostParams::default(), &new).await {
                Ok(created) => created,
                Err(kube::Error::Api(e)) if e.code == 409 => new,
                Err(source) => {
                    return Err(Error::Create {
                        name: job_name.to_string(),
                        source,
                    });
                }
            };
            tracing::info!(job = %job_name, "backup Job created");
            (status::Observed::Job(jobs::state(&created)), true)
        }
        (None, None) => (status::Observed::Job(JobState::Pending), false),
        (Some(job), _) => (status::Observed::Job(jobs::state(job)), true),
    }))
}

/// The agent's report, from its pod's termination message, once the Job
/// finished.
async fn agent_report(
    ctx: &Context,
    namespace: &str,
    job_name: &str,
    observed: &status::Observed,
) -> Result<Option<Report>, Error> {
    match observed {
        status::Observed::Job(JobState::Succeeded { .. } | JobState::Failed { .. }) => {
            Ok(jobs::termination_message(&ctx.client, namespace, job_name)
                .await
                .map_err(|source| Error::Read {
                    kind: "Pod",
                    source,
                })?
                .map(|m| Report::parse(&m)))
        }
        _ => Ok(None),
    }
}

/// An Event when the run's phase changed: Warning `BackupFailed`, or Normal
/// with the phase.
async fn announce(
    backup: &DatabaseBackup,
    ctx: &Context,
    status: &crate::api::database_backup::DatabaseBackupStatus,
) {
    let failed = status.phase == BackupPhase::Failed;
    let note = status
        .conditions
        .iter()
        .find(|c| c.type_ == crate::api::conditions::types::COMPLETED)
        .map(|c| c.message.clone())
        .unwrap_or_default();
    let event = KubeEvent {
        type_: if failed {
            EventType::Warning
        } else {
            EventType::Normal
        },
        reason: if failed {
            "BackupFailed".into()
        } else {
            format!("{:?}", status.phase)
        },
        note: Some(note.chars().take(1000).collect()),
        action: "Backup".into(),
        secondary: None,
    };
    super::publish(&ctx.recorder, &event, &backup.object_ref(&())).await;
}

fn error_policy(_backup: Arc<DatabaseBackup>, error: &Error, ctx: Arc<Context>) -> Action {
    use super::ReconcileError;
    ctx.metrics.reconcile_failed(CONTROLLER, error.category());
    match error {
        Error::DeletePending(_) => Action::requeue(DELETE_RECHECK),
        Error::DeleteFailed { .. } => Action::requeue(Duration::from_secs(30)),
        _ => Action::requeue(Duration::from_secs(5)),
    }
}

/// Runs the controller until `shutdown` resolves.
pub async fn run_controller(
    ctx: Arc<Context>,
    concurrency: u16,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let client = ctx.client.clone();
    // Backup, archive-deletion and verification Jobs, found by label:
    // scheduled Jobs belong to a CronJob and carry the backup's name as
    // their own (backups) or in a label (verifications).
    let jobs = watcher::Config::default().labels(&format!(
        "{LABEL_MANAGED_BY}={MANAGED_BY},{LABEL_COMPONENT} in ({},{},{})",
        component::BACKUP,
        component::DELETE,
        component::VERIFY
    ));
    Controller::new(
        Api::<DatabaseBackup>::all(client.clone()),
        watcher::Config::default().any_semantic(),
    )
    .watches(Api::<Job>::all(client.clone()), jobs, |job: Job| {
        let namespace = job.namespace()?;
        let name = job
            .labels()
            .get(LABEL_BACKUP)
            .cloned()
            .unwrap_or_else(|| job.name_any());
        Some(ObjectRef::<DatabaseBackup>::new(&name).within(&namespace))
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
