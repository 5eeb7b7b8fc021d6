//! The StatefulSet of a dedicated instance. The database container does not
//! use the image's entrypoint: an init container copies the statically linked
//! `servicedb` binary from the operator image, and the container runs
//! `servicedb instance` (the instance manager) as PID 1. A monitored instance
//! has the engine's exporter as a second container.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    StatefulSet, StatefulSetPersistentVolumeClaimRetentionPolicy, StatefulSetSpec,
};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource,
    HTTPGetAction, PersistentVolumeClaim, PersistentVolumeClaimSpec, PodSecurityContext, PodSpec,
    PodTemplateSpec, Probe, ResourceRequirements, SeccompProfile, SecretKeySelector,
    SecretVolumeSource, SecurityContext, Volume, VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{OperatorFacts, labels, object_meta, selector_labels, service};
use crate::api::DeletionPolicy;
use crate::engine::exporter::{self, EnvValue};
use crate::engine::postgres_parameters;
use crate::model::database::{ValidatedDatabase, ValidatedMonitoring};

/// Where the data volume is mounted; the instance manager keeps the engine's
/// files below it.
pub const DATA_DIR: &str = "/var/lib/servicedb";
/// Where the administrator Secret is mounted.
pub const ADMIN_SECRET_DIR: &str = "/etc/servicedb/admin";
/// Where the service's credentials Secret is mounted.
pub const APP_SECRET_DIR: &str = "/etc/servicedb/app";
/// Where the init container puts the `servicedb` binary.
pub const BIN_DIR: &str = "/opt/servicedb";
/// Port of the instance manager's `/healthz` and `/readyz`.
pub const STATUS_PORT: i32 = 8000;
/// Name of the exporter sidecar of a monitored instance.
pub const EXPORTER_CONTAINER: &str = "exporter";
/// Name of the volume claim template (PVCs are `data-<name>-db-0`).
pub const DATA_VOLUME: &str = "data";

pub fn build(db: &ValidatedDatabase, facts: &OperatorFacts, owner: &OwnerReference) -> StatefulSet {
    let uid = super::run_as_user(db);
    let binary = format!("{BIN_DIR}/servicedb");
    let pod_labels = labels(db, "database");

    let install = install_container(facts);

    let database = Container {
        name: "database".into(),
        image: Some(db.image.clone()),
        command: Some(vec![binary]),
        args: Some(instance_args(db)),
        ports: Some(vec![
            ContainerPort {
                name: Some(db.engine_spec.port_name().into()),
                container_port: db.engine_spec.port(),
                protocol: Some("TCP".into()),
                ..Default::default()
            },
            ContainerPort {
                name: Some("status".into()),
                container_port: STATUS_PORT,
                protocol: Some("TCP".into()),
                ..Default::default()
            },
        ]),
        resources: Some(db.resources.clone()),
        // Readiness: the server accepts connections and users are in step.
        readiness_probe: Some(probe("/readyz", 5, 3)),
        // Liveness: the supervised server process is running.
        liveness_probe: Some(probe("/healthz", 10, 6)),
        // First start runs initdb; give it up to five minutes.
        startup_probe: Some(probe("/healthz", 5, 60)),
        volume_mounts: Some(vec![
            mount(DATA_VOLUME, DATA_DIR, false),
            mount("admin-secret", ADMIN_SECRET_DIR, true),
            mount("app-secret", APP_SECRET_DIR, true),
            mount("servicedb-bin", BIN_DIR, true),
            mount("tmp", "/tmp", false),
        ]),
        security_context: Some(restricted_container()),
        ..Default::default()
    };

    let exporter = db.monitoring.as_ref().map(|m| exporter_container(db, m));
    let pod = PodSpec {
        init_containers: Some(vec![install]),
        containers: std::iter::once(database).chain(exporter).collect(),
        automount_service_account_token: Some(false),
        enable_service_links: Some(false),
        termination_grace_period_seconds: Some(60),
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(uid),
            run_as_group: Some(uid),
            fs_group: Some(uid),
            fs_group_change_policy: Some("OnRootMismatch".into()),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        volumes: Some(vec![
            Volume {
                name: "servicedb-bin".into(),
                empty_dir: Some(EmptyDirVolumeSource::default()),
                ..Default::default()
            },
            Volume {
                name: "tmp".into(),
                empty_dir: Some(EmptyDirVolumeSource::default()),
                ..Default::default()
            },
            secret_volume("admin-secret", &db.admin_secret_name),
            secret_volume("app-secret", &db.secret_name),
        ]),
        ..Default::default()
    };

    let when_deleted = match db.deletion_policy {
        DeletionPolicy::Retain => "Retain",
        DeletionPolicy::Delete | DeletionPolicy::Snapshot => "Delete",
    };

    StatefulSet {
        metadata: object_meta(db, db.instance_name(), "database", owner),
        spec: Some(StatefulSetSpec {
            replicas: Some(1),
            service_name: Some(service::headless_name(db)),
            selector: LabelSelector {
                match_labels: Some(selector_labels(db)),
                ..Default::default()
            },
            template: super::with_pod_settings(
                db,
                PodTemplateSpec {
                    metadata: Some(ObjectMeta {
                        labels: Some(pod_labels.clone()),
                        // Parameters PostgreSQL reads at start only: a change rolls the pod.
                        annotations: postgres_parameters::restart_hash(&db.postgres_parameters)
                            .map(|hash| {
                                BTreeMap::from([(
                                    postgres_parameters::RESTART_ANNOTATION.to_string(),
                                    hash,
                                )])
                            }),
                        ..Default::default()
                    }),
                    spec: Some(pod),
                },
            ),
            volume_claim_templates: Some(vec![PersistentVolumeClaim {
                metadata: ObjectMeta {
                    name: Some(DATA_VOLUME.into()),
                    labels: Some(pod_labels),
                    ..Default::default()
                },
                spec: Some(PersistentVolumeClaimSpec {
                    access_modes: Some(vec!["ReadWriteOnce".into()]),
                    storage_class_name: db.storage_class_name.clone(),
                    resources: Some(VolumeResourceRequirements {
                        requests: Some(BTreeMap::from([(
                            "storage".into(),
                            db.storage_size.clone(),
                        )])),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }]),
            persistent_volume_claim_retention_policy: Some(
                StatefulSetPersistentVolumeClaimRetentionPolicy {
                    when_deleted: Some(when_deleted.into()),
                    when_scaled: Some("Retain".into()),
                },
            ),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The engine's Prometheus exporter, reading the server over the pod's
/// loopback with the monitoring login of the administrator Secret (as
/// environment variables from the Secret: no password in the object).
pub fn exporter_container(db: &ValidatedDatabase, monitoring: &ValidatedMonitoring) -> Container {
    exporter_container_of(
        db.engine,
        monitoring.exporter_image.clone(),
        exporter::command(db.engine, db.engine_spec.port()),
        &db.admin_secret_name,
    )
}

/// The exporter container of `engine`: `image` running `command`, whose
/// Secret references read the Secret `secret`; its `metrics` port, small
/// requests and the restricted security context. Also an external
/// server's exporter ([`super::exporter`]).
pub fn exporter_container_of(
    engine: crate::api::Engine,
    image: String,
    (args, env): (Vec<String>, Vec<(&'static str, EnvValue)>),
    secret: &str,
) -> Container {
    let env = env
        .into_iter()
        .map(|(name, value)| match value {
            EnvValue::Literal(value) => EnvVar {
                name: name.into(),
                value: Some(value),
                ..Default::default()
            },
            EnvValue::SecretKey(key) => EnvVar {
                name: name.into(),
                value_from: Some(EnvVarSource {
                    secret_key_ref: Some(SecretKeySelector {
                        name: secret.to_string(),
                        key: key.into(),
                        optional: None,
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            },
        })
        .collect();
    Container {
        name: EXPORTER_CONTAINER.into(),
        image: Some(image),
        args: Some(args),
        env: Some(env),
        ports: Some(vec![ContainerPort {
            name: Some(exporter::PORT_NAME.into()),
            container_port: exporter::exporter(engine).port,
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
        resources: Some(ResourceRequirements {
            requests: Some(BTreeMap::from([
                ("cpu".into(), Quantity("10m".into())),
                ("memory".into(), Quantity("32Mi".into())),
            ])),
            limits: Some(BTreeMap::from([(
                "memory".into(),
                Quantity("128Mi".into()),
            )])),
            ..Default::default()
        }),
        security_context: Some(restricted_container()),
        ..Default::default()
    }
}

/// The init container that copies the statically linked `servicedb` binary
/// from the operator image into the `servicedb-bin` volume at [`BIN_DIR`].
pub fn install_container(facts: &OperatorFacts) -> Container {
    Container {
        name: "install-servicedb".into(),
        image: Some(facts.image.clone()),
        command: Some(vec![
            facts.binary_path.clone(),
            "copy-binary".into(),
            format!("{BIN_DIR}/servicedb"),
        ]),
        volume_mounts: Some(vec![mount("servicedb-bin", BIN_DIR, false)]),
        security_context: Some(restricted_container()),
        resources: Some(ResourceRequirements {
            requests: Some(BTreeMap::from([
                ("cpu".into(), Quantity("10m".into())),
                ("memory".into(), Quantity("16Mi".into())),
            ])),
            limits: Some(BTreeMap::from([("memory".into(), Quantity("64Mi".into()))])),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The `restricted` Pod Security Standard for a container.
pub fn restricted_container() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            ..Default::default()
        }),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The instance manager's command line. `--redis-scripting` only when asked
/// for, so that the StatefulSets of everyone else stay as they were.
fn instance_args(db: &ValidatedDatabase) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "instance".into(),
        "--engine".into(),
        db.engine.as_str().into(),
        "--data-dir".into(),
        DATA_DIR.into(),
        "--admin-secret-dir".into(),
        ADMIN_SECRET_DIR.into(),
        "--app-secret-dir".into(),
        APP_SECRET_DIR.into(),
        "--port".into(),
        db.engine_spec.port().to_string(),
        "--service-owner".into(),
        db.username.clone(),
        "--status-port".into(),
        STATUS_PORT.to_string(),
    ];
    if db.redis_scripting {
        args.push("--redis-scripting".into());
    }
    args
}

fn probe(path: &str, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String("status".into()),
            ..Default::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        timeout_seconds: Some(3),
        ..Default::default()
    }
}

pub fn mount(name: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: read_only.then_some(true),
        ..Default::default()
    }
}

pub fn secret_volume(name: &str, secret: &str) -> Volume {
    Volume {
        name: name.into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret.into()),
            default_mode: Some(0o440),
            ..Default::default()
        }),
        ..Default::default()
    }
}
