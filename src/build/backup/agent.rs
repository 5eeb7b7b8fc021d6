//! The agent's pod, Job and CronJob: its arguments, the connection and
//! destination it is given, and a restricted pod spec.

use super::*;

pub(super) fn backup_args(
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
pub(super) fn connection_args(db: &ValidatedDatabase, database: &str) -> Vec<String> {
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

pub(super) fn s3_args(destination: &BackupDestination) -> Vec<String> {
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

pub(super) fn secret_env(name: &str, secret: &str, key: &str) -> EnvVar {
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

pub(super) fn s3_env(destination: &BackupDestination) -> Vec<EnvVar> {
    match &destination.s3 {
        Some(s3) => ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"]
            .iter()
            .map(|key| secret_env(key, &s3.credentials_secret, key))
            .collect(),
        None => vec![],
    }
}

/// The destination's volume, mounted at [`BACKUP_MOUNT`]; none for S3.
pub(super) fn destination_volume(
    destination: &BackupDestination,
) -> (Vec<Volume>, Vec<VolumeMount>) {
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

pub(super) fn bounded_empty_dir(limit: &str) -> EmptyDirVolumeSource {
    EmptyDirVolumeSource {
        medium: None,
        size_limit: Some(Quantity(limit.into())),
    }
}

pub(super) fn agent_resources() -> ResourceRequirements {
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
pub(super) fn pod_defaults(uid: i64) -> PodSpec {
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
pub(super) fn agent_pod(
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
            ..pod_defaults(super::super::run_as_user(db))
        }),
    };
    super::super::with_pod_settings(db, template)
}

pub(super) fn job(metadata: ObjectMeta, pod: PodTemplateSpec, backoff_limit: i32) -> Job {
    Job {
        metadata,
        spec: Some(job_spec(pod, backoff_limit)),
        ..Default::default()
    }
}

pub(super) fn job_spec(pod: PodTemplateSpec, backoff_limit: i32) -> JobSpec {
    JobSpec {
        backoff_limit: Some(backoff_limit),
        active_deadline_seconds: Some(AGENT_DEADLINE_SECONDS),
        template: pod,
        ..Default::default()
    }
}

pub(super) fn cronjob(
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
