//! Backup, verify, restore and archive-deletion Jobs and the CronJobs that
//! schedule them. Every run is `servicedb agent …`: an init container copies
//! the binary from the operator image (as for the database pods) and the
//! agent runs in the ENGINE image, which carries `pg_dump`, `redis-cli` or
//! `mongodump`. On success the agent writes its manifest as the container's
//! termination message, which the controllers read back.

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

fn backup_args(
    db: &ValidatedDatabase,
    url: &str,
    destination: &BackupDestination,
    name: &str,
) -> Vec<String> {
    let mut args = vec!["agent".into(), "backup".into()];
    args.extend(connection_args(db, &db.database));
    args.extend([
        "--destination".into(),
        url.into(),
        "--name".into(),
        name.into(),
    ]);
    args.extend(s3_args(destination));
    args.extend(["--termination-log".into(), TERMINATION_LOG.into()]);
    args
}

/// How the agent reaches the database. A dedicated instance is reached as
/// its administrator (a restore must be able to recreate everything); a
/// database on a shared server as the service's own login.
/// On a shared server the login comes from the credentials Secret
/// (`SERVICEDB_USERNAME` beside `SERVICEDB_PASSWORD`): a rotation switches
/// both at once, and a pod reads them from one version of the Secret.
fn connection_args(db: &ValidatedDatabase, database: &str) -> Vec<String> {
    let mut args = vec![
        "--engine".into(),
        db.engine.as_str().into(),
        "--host".into(),
        db.host(),
        "--port".into(),
        db.port().to_string(),
        "--database".into(),
        database.into(),
    ];
    if db.server.is_none() {
        args.extend([
            "--username".into(),
            db.engine_spec.admin_username().to_string(),
        ]);
        if db.engine == crate::api::Engine::MongoDB {
            // The administrator is defined on `admin`.
            args.extend(["--auth-database".into(), "admin".into()]);
        }
    }
    if let Some(schema) = &db.schema {
        // The service's one schema of the shared database: the others are
        // closed to its login.
        args.extend(["--schema".into(), schema.clone()]);
    }
    if let Some(tls) = db.server.as_ref().map(|s| &s.tls).filter(|t| t.enabled()) {
        let mode = match tls.mode {
            TlsMode::VerifyFull => "verify-full",
            _ => "require",
        };
        args.extend(["--tls".into(), mode.into()]);
        if tls.ca_pem.is_some() {
            args.extend(["--tls-ca-file".into(), format!("{CA_DIR}/{CA_KEY}")]);
        }
    }
    if db.engine == crate::api::Engine::Redis {
        // Only the service's keys, also on a dedicated instance.
        args.extend([
            "--key-prefix".into(),
            crate::engine::redis::key_prefix(&db.username),
        ]);
    }
    args
}

fn s3_args(destination: &BackupDestination) -> Vec<String> {
    let mut args = vec![];
    if let Some(s3) = &destination.s3 {
        if let Some(endpoint) = &s3.endpoint {
            args.extend(["--s3-endpoint".into(), endpoint.clone()]);
        }
        if let Some(region) = &s3.region {
            args.extend(["--s3-region".into(), region.clone()]);
        }
    }
    if destination.volume.is_some() {
        // The service's directory on a new volume is made by its first backup.
        args.extend(["--volume-root".into(), BACKUP_MOUNT.into()]);
    }
    args
}

fn secret_env(name: &str, secret: &str, key: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret.into(),
                key: key.into(),
                optional: Some(false),
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn s3_env(destination: &BackupDestination) -> Vec<EnvVar> {
    match &destination.s3 {
        Some(s3) => ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"]
            .iter()
            .map(|key| secret_env(key, &s3.credentials_secret, key))
            .collect(),
        None => vec![],
    }
}

/// The destination's volume, mounted at [`BACKUP_MOUNT`]; none for S3.
fn destination_volume(destination: &BackupDestination) -> (Vec<Volume>, Vec<VolumeMount>) {
    let mut volumes = vec![Volume {
        name: "tmp".into(),
        empty_dir: Some(bounded_empty_dir(AGENT_SCRATCH_LIMIT)),
        ..Default::default()
    }];
    let mut mounts = vec![mount("tmp", "/tmp", false)];
    if let Some(volume) = &destination.volume {
        volumes.push(Volume {
            name: "backup".into(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: volume.claim_name.clone(),
                read_only: None,
            }),
            ..Default::default()
        });
        mounts.push(mount("backup", BACKUP_MOUNT, false));
    }
    (volumes, mounts)
}

fn bounded_empty_dir(limit: &str) -> EmptyDirVolumeSource {
    EmptyDirVolumeSource {
        medium: None,
        size_limit: Some(Quantity(limit.into())),
    }
}

fn agent_resources() -> ResourceRequirements {
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".into(), Quantity("100m".into())),
            ("memory".into(), Quantity("128Mi".into())),
        ])),
        limits: Some(BTreeMap::from([("memory".into(), Quantity("1Gi".into()))])),
        ..Default::default()
    }
}

/// The restricted pod level settings every agent pod shares.
fn pod_defaults(uid: i64) -> PodSpec {
    PodSpec {
        restart_policy: Some("Never".into()),
        automount_service_account_token: Some(false),
        enable_service_links: Some(false),
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(uid),
            run_as_group: Some(uid),
            fs_group: Some(uid),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A pod that runs `servicedb agent <args>` in the engine's image.
fn agent_pod(
    db: &ValidatedDatabase,
    facts: &OperatorFacts,
    component: &str,
    args: Vec<String>,
    mut env: Vec<EnvVar>,
    destination: &BackupDestination,
) -> PodTemplateSpec {
    // A dedicated instance: its administrator; a shared server: the
    // service's own login.
    let password_secret = match db.server {
        Some(_) => &db.secret_name,
        None => &db.admin_secret_name,
    };
    env.push(secret_env(
        "SERVICEDB_PASSWORD",
        password_secret,
        "password",
    ));
    if db.server.is_some() {
        env.push(secret_env(
            "SERVICEDB_USERNAME",
            &db.secret_name,
            "username",
        ));
    }
    env.extend(s3_env(destination));
    let (mut volumes, mut mounts) = destination_volume(destination);
    volumes.push(Volume {
        name: "servicedb-bin".into(),
        empty_dir: Some(bounded_empty_dir(AGENT_BIN_LIMIT)),
        ..Default::default()
    });
    mounts.push(mount("servicedb-bin", BIN_DIR, true));
    if db.server.as_ref().is_some_and(|s| s.tls.ca_pem.is_some()) {
        // The server's CA, as the operator copied it into the credentials
        // Secret (the CA Secret lives in the DatabaseServer's namespace).
        volumes.push(Volume {
            name: "server-ca".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(db.secret_name.clone()),
                items: Some(vec![KeyToPath {
                    key: CA_KEY.into(),
                    path: CA_KEY.into(),
                    mode: None,
                }]),
                ..Default::default()
            }),
            ..Default::default()
        });
        mounts.push(mount("server-ca", CA_DIR, true));
    }
    let container = Container {
        name: "agent".into(),
        image: Some(db.image.clone()),
        command: Some(vec![format!("{BIN_DIR}/servicedb")]),
        args: Some(args),
        env: Some(env),
        volume_mounts: Some(mounts),
        security_context: Some(restricted_container()),
        resources: Some(agent_resources()),
        termination_message_path: Some(TERMINATION_LOG.into()),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        ..Default::default()
    };
    let template = PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(labels(db, component)),
            ..Default::default()
        }),
        spec: Some(PodSpec {
            init_containers: Some(vec![install_container(facts)]),
            containers: vec![container],
            volumes: Some(volumes),
            ..pod_defaults(super::run_as_user(db))
        }),
    };
    super::with_pod_settings(db, template)
}

fn job(metadata: ObjectMeta, pod: PodTemplateSpec, backoff_limit: i32) -> Job {
    Job {
        metadata,
        spec: Some(job_spec(pod, backoff_limit)),
        ..Default::default()
    }
}

fn job_spec(pod: PodTemplateSpec, backoff_limit: i32) -> JobSpec {
    JobSpec {
        backoff_limit: Some(backoff_limit),
        active_deadline_seconds: Some(AGENT_DEADLINE_SECONDS),
        template: pod,
        ..Default::default()
    }
}

fn cronjob(
    db: &ValidatedDatabase,
    name: String,
    component: &str,
    schedule: &str,
    pod: PodTemplateSpec,
    owner: &OwnerReference,
) -> CronJob {
    CronJob {
        metadata: object_meta(db, name, component, owner),
        spec: Some(CronJobSpec {
            schedule: schedule.into(),
            time_zone: Some("UTC".into()),
            concurrency_policy: Some("Forbid".into()),
            // A run that could not start within the hour is skipped, not
            // run late on top of the next one.
            starting_deadline_seconds: Some(3600),
            successful_jobs_history_limit: Some(3),
            failed_jobs_history_limit: Some(3),
            suspend: Some(false),
            job_template: JobTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels(db, component)),
                    ..Default::default()
                }),
                // No retry: a failed run is recorded, the next one runs on
                // schedule.
                spec: Some(job_spec(pod, 0)),
            },
        }),
        ..Default::default()
    }
}
