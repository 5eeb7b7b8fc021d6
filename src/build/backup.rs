//! Backup, verify, restore and archive-deletion Jobs and the CronJobs that
//! schedule them. Every run is `servicedb agent …`: an init container copies
//! the binary from the operator image (as for the database pods) and the
//! agent runs in the ENGINE image, which carries `pg_dump`, `redis-cli` or
//! `mongodump`. On success the agent writes its manifest as the container's
//! termination message, which the controllers read back.

mod agent;
use agent::*;

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::{CronJob, CronJobSpec, Job, JobSpec, JobTemplateSpec};
use k8s_openapi::api::core::v1::{
    Container, EmptyDirVolumeSource, EnvVar, EnvVarSource, KeyToPath, ObjectFieldSelector,
    PersistentVolumeClaimVolumeSource, PodSecurityContext, PodSpec, PodTemplateSpec,
    ResourceRequirements, SeccompProfile, SecretKeySelector, SecretVolumeSource, Volume,
    VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

use super::secret::CA_KEY;
use super::statefulset::{BIN_DIR, install_container, mount, restricted_container};
use super::{LABEL_COMPONENT, LABEL_INSTANCE, LABEL_MANAGED_BY, MANAGED_BY, OperatorFacts};
use super::{labels, object_meta};
use crate::api::Engine;
use crate::api::common::BackupDestination;
use crate::engine::tls::TlsMode;
use crate::model::database::{BACKUP_MOUNT, ValidatedBackup, ValidatedDatabase};

/// On a backup Job: the `DatabaseBackup` it takes. Scheduled Jobs (made by
/// the CronJob) lack it until they are recorded; their `DatabaseBackup` is
/// named after the Job.
pub const LABEL_BACKUP: &str = "servicedb.dev/backup";
/// The label the Job controller puts on a Job's pods.
pub const LABEL_JOB_NAME: &str = "batch.kubernetes.io/job-name";
/// The label the API server gives a Job's pod template (the Job's UID, its
/// selector): the database's NetworkPolicy admits agent pods only with it.
pub const LABEL_JOB_CONTROLLER_UID: &str = "batch.kubernetes.io/controller-uid";
/// Where agent pods find the CA of a server reached over TLS.
pub const CA_DIR: &str = "/etc/servicedb/server-ca";
/// Where the agent writes its manifest (the container's termination message).
pub const TERMINATION_LOG: &str = "/dev/termination-log";

/// How long an agent Job may run before the Job controller stops it and
/// marks it failed (`DeadlineExceeded`): a dump that hangs on a stalled
/// server or bucket ends with a clear failure instead of holding the next
/// run back for ever (the CronJobs forbid concurrent runs).
pub const AGENT_DEADLINE_SECONDS: i64 = 6 * 3600;
/// The same for a Job that only deletes an archive.
pub const DELETE_DEADLINE_SECONDS: i64 = 3600;
/// Size limit of an agent's scratch directory (`/tmp`), where a restore or
/// a verification downloads the archive before loading it: the pod is
/// evicted beyond it instead of filling the node's disk.
pub const AGENT_SCRATCH_LIMIT: &str = "20Gi";
/// Size limit of the directory the `servicedb` binary is copied into.
pub const AGENT_BIN_LIMIT: &str = "256Mi";

/// Components (the `app.kubernetes.io/component` label) of agent Jobs.
pub mod component {
    pub const BACKUP: &str = "backup";
    pub const VERIFY: &str = "verify";
    pub const RESTORE: &str = "restore";
    pub const DELETE: &str = "backup-delete";
}

/// A stored archive: what a restore, a verification or a deletion reads.
#[derive(Clone, Debug, PartialEq)]
pub struct Archive {
    /// Name of the `DatabaseBackup`.
    pub name: String,
    /// `<destination url>/<backup name>`.
    pub location: String,
    pub destination: BackupDestination,
}

pub use crate::model::naming::{
    backup_cronjob_name, backup_job_name, delete_job_name, restore_job_name, scratch_database,
    verify_cronjob_name,
};

/// The scheduled backups: the Jobs it makes are recorded as `DatabaseBackup`s
/// named after the Job, which is also the archive's name.
pub fn backup_cronjob(
    db: &ValidatedDatabase,
    backup: &ValidatedBackup,
    facts: &OperatorFacts,
    owner: &OwnerReference,
) -> CronJob {
    // The agent names the archive after its Job; the Job controller labels
    // the pod with the Job's name.
    let job_name = EnvVar {
        name: "JOB_NAME".into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: format!("metadata.labels['{LABEL_JOB_NAME}']"),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let args = backup_args(db, &backup.url, &backup.destination, "$(JOB_NAME)");
    let pod = agent_pod(
        db,
        facts,
        component::BACKUP,
        args,
        vec![job_name],
        &backup.destination,
    );
    cronjob(
        db,
        backup_cronjob_name(db),
        component::BACKUP,
        &backup.schedule,
        pod,
        owner,
    )
}

/// The Job of one `DatabaseBackup`, owned by it.
pub fn backup_job(
    db: &ValidatedDatabase,
    backup: &ValidatedBackup,
    facts: &OperatorFacts,
    backup_name: &str,
    owner: &OwnerReference,
) -> Job {
    let args = backup_args(db, &backup.url, &backup.destination, backup_name);
    let pod = agent_pod(
        db,
        facts,
        component::BACKUP,
        args,
        vec![],
        &backup.destination,
    );
    let mut meta = object_meta(db, backup_job_name(backup_name), component::BACKUP, owner);
    meta.labels
        .get_or_insert_with(BTreeMap::new)
        .insert(LABEL_BACKUP.into(), backup_name.into());
    job(meta, pod, 0)
}

/// The verification runs: the agent restores `latest` into the scratch
/// database `<database>_verify` and checks it. The controller keeps
/// `latest` current (the newest completed `DatabaseBackup`); there is no
/// verify CronJob before the first backup completed.
pub fn verify_cronjob(
    db: &ValidatedDatabase,
    schedule: &str,
    latest: &Archive,
    facts: &OperatorFacts,
    owner: &OwnerReference,
) -> CronJob {
    let mut args = vec!["agent".into(), "verify".into()];
    args.extend(connection_args(db, &scratch_database(db)));
    // Emptied before and after each run, so that the next one finds it so.
    args.push("--scratch".into());
    args.extend(["--from".into(), latest.location.clone()]);
    args.extend(s3_args(&latest.destination));
    args.extend(["--termination-log".into(), TERMINATION_LOG.into()]);
    let pod = agent_pod(
        db,
        facts,
        component::VERIFY,
        args,
        vec![],
        &latest.destination,
    );
    let mut cron = cronjob(
        db,
        verify_cronjob_name(db),
        component::VERIFY,
        schedule,
        pod,
        owner,
    );
    // Which backup a run verified, for the status.
    if let Some(template) = cron.spec.as_mut().map(|s| &mut s.job_template) {
        template
            .metadata
            .get_or_insert_with(Default::default)
            .labels
            .get_or_insert_with(BTreeMap::new)
            .insert(LABEL_BACKUP.into(), latest.name.clone());
    }
    cron
}

/// The one restore of `spec.bootstrap.fromBackup` into a new database.
/// Which backup a restore loads from its location.
#[derive(Clone, Debug, PartialEq)]
pub enum Pick {
    /// The location is one backup's directory.
    This,
    /// The location holds backups' directories: the latest completed one,
    /// or the latest completed before a time (RFC 3339); chosen by the
    /// agent when it runs.
    Latest { before: Option<String> },
}

pub fn restore_job(
    db: &ValidatedDatabase,
    from: &Archive,
    pick: &Pick,
    facts: &OperatorFacts,
    owner: &OwnerReference,
) -> Job {
    let mut args = vec!["agent".into(), "restore".into()];
    args.extend(connection_args(db, &db.database));
    if db.engine == crate::api::Engine::Postgres && db.server.is_none() {
        // The administrator restores, the service's role owns what it made.
        args.extend(["--restore-role".into(), db.username.clone()]);
    }
    args.extend(["--from".into(), from.location.clone()]);
    if let Pick::Latest { before } = pick {
        args.push("--latest".into());
        if let Some(before) = before {
            args.extend(["--before".into(), before.clone()]);
        }
    }
    args.extend(s3_args(&from.destination));
    args.extend(["--termination-log".into(), TERMINATION_LOG.into()]);
    let pod = agent_pod(
        db,
        facts,
        component::RESTORE,
        args,
        vec![],
        &from.destination,
    );
    let mut meta = object_meta(db, restore_job_name(&db.name), component::RESTORE, owner);
    meta.labels
        .get_or_insert_with(BTreeMap::new)
        .insert(LABEL_BACKUP.into(), from.name.clone());
    job(meta, pod, 0)
}

/// The Job that deletes an archive. It needs no engine tools: it runs the
/// operator image itself, as the engine's user so that it may remove files
/// the backups wrote to a volume.
pub fn delete_job(
    namespace: &str,
    instance: &str,
    archive: &Archive,
    engine: Option<Engine>,
    facts: &OperatorFacts,
    owner: &OwnerReference,
) -> Job {
    let labels = BTreeMap::from([
        (LABEL_INSTANCE.to_string(), instance.to_string()),
        (LABEL_MANAGED_BY.to_string(), MANAGED_BY.to_string()),
        (LABEL_COMPONENT.to_string(), component::DELETE.to_string()),
        (LABEL_BACKUP.to_string(), archive.name.clone()),
    ]);
    let mut args = vec![
        "agent".into(),
        "delete".into(),
        "--from".into(),
        archive.location.clone(),
    ];
    args.extend(s3_args(&archive.destination));
    let uid = engine.map_or(65532, |e| crate::engine::for_engine(e).run_as_user());
    let (volumes, mounts) = destination_volume(&archive.destination);
    let container = Container {
        name: "agent".into(),
        image: Some(facts.image.clone()),
        command: Some(vec![facts.binary_path.clone()]),
        args: Some(args),
        env: Some(s3_env(&archive.destination)),
        volume_mounts: Some(mounts),
        security_context: Some(restricted_container()),
        resources: Some(agent_resources()),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        ..Default::default()
    };
    let pod = PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(labels.clone()),
            ..Default::default()
        }),
        spec: Some(PodSpec {
            containers: vec![container],
            volumes: Some(volumes),
            ..pod_defaults(uid)
        }),
    };
    let meta = ObjectMeta {
        name: Some(delete_job_name(&archive.name)),
        namespace: Some(namespace.into()),
        labels: Some(labels),
        owner_references: Some(vec![owner.clone()]),
        ..Default::default()
    };
    let mut job = job(meta, pod, 2);
    if let Some(spec) = job.spec.as_mut() {
        spec.active_deadline_seconds = Some(DELETE_DEADLINE_SECONDS);
    }
    job
}
