//! Step 2 of the ServiceDatabase pipeline (pure): spec + class → one
//! validated value that every builder reads, or an error naming the field.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use crate::api::common::StorageSpec;
use crate::api::{DatabaseClass, DeletionPolicy, Engine, Isolation, ServiceDatabase};
use crate::engine::{EngineSpec, for_engine};

/// Data volume size when neither the resource nor its class names one.
pub const DEFAULT_STORAGE_SIZE: &str = "1Gi";

/// A spec that cannot be realised, and which field to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct Invalid {
    /// The path of the offending field, such as `spec.version`.
    pub field: &'static str,
    /// What is wrong and what would be accepted.
    pub message: String,
    /// Stable reason for the condition and the Event.
    pub reason: &'static str,
}

impl Invalid {
    fn new(field: &'static str, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            field,
            reason,
            message: message.into(),
        }
    }
}

/// Everything the builders need, decided once.
#[derive(Clone)]
pub struct ValidatedDatabase {
    pub name: String,
    pub namespace: String,
    pub engine: Engine,
    pub engine_spec: &'static dyn EngineSpec,
    pub class_name: String,
    pub version: String,
    pub image: String,
    pub storage_size: Quantity,
    pub storage_class_name: Option<String>,
    pub resources: ResourceRequirements,
    pub owner: LabelSelector,
    /// Secret the service reads; kept by the operator.
    pub secret_name: String,
    /// Secret with the instance's administrator password; kept by the operator.
    pub admin_secret_name: String,
    /// Name of the service's database inside the engine.
    pub database: String,
    /// The service's login.
    pub username: String,
    pub deletion_policy: DeletionPolicy,
}

impl ValidatedDatabase {
    /// Base name of the instance's children (`orders` → `orders-db`).
    pub fn instance_name(&self) -> String {
        instance_name(&self.name)
    }
    /// The DNS name clients use.
    pub fn host(&self) -> String {
        format!("{}.{}.svc", self.instance_name(), self.namespace)
    }
}

/// `orders` → `orders-db`: children are suffixed so they never clash with the
/// service's own Deployment and Service, which usually share its name.
pub fn instance_name(name: &str) -> String {
    format!("{name}-db")
}

/// Validates a ServiceDatabase against its class.
pub fn validate(
    sdb: &ServiceDatabase,
    class: &DatabaseClass,
) -> Result<ValidatedDatabase, Invalid> {
    let spec = &sdb.spec;
    let name = sdb.metadata.name.clone().unwrap_or_default();
    let namespace = sdb.metadata.namespace.clone().unwrap_or_default();
    let class_name = class.metadata.name.clone().unwrap_or_default();

    if class.spec.engine != spec.engine {
        return Err(Invalid::new(
            "spec.className",
            "ClassEngineMismatch",
            format!(
                "DatabaseClass {class_name} is for engine {}, not {}",
                class.spec.engine, spec.engine
            ),
        ));
    }
    if let Some(allowed) = &class.spec.allowed_isolations
        && !allowed.contains(&spec.isolation)
    {
        return Err(Invalid::new(
            "spec.isolation",
            "IsolationNotAllowed",
            format!(
                "isolation {} is not allowed by DatabaseClass {class_name}; allowed: {}",
                spec.isolation,
                join(allowed.iter().map(|i| i.to_string()))
            ),
        ));
    }
    let version = match &spec.version {
        Some(v) if class.spec.versions.contains(v) => v.clone(),
        Some(v) => {
            return Err(Invalid::new(
                "spec.version",
                "VersionNotAllowed",
                format!(
                    "version {v:?} is not allowed by DatabaseClass {class_name}; allowed: {}",
                    join(class.spec.versions.iter().cloned())
                ),
            ));
        }
        None => class
            .spec
            .default_version
            .clone()
            .or_else(|| class.spec.versions.last().cloned())
            .ok_or_else(|| {
                Invalid::new(
                    "spec.version",
                    "NoVersion",
                    format!("DatabaseClass {class_name} allows no version"),
                )
            })?,
    };
    if spec.isolation != Isolation::Dedicated {
        return Err(Invalid::new(
            "spec.isolation",
            "Unsupported",
            format!(
                "isolation {} (placement on a DatabaseServer) is not available in this servicedb release yet; use Dedicated",
                spec.isolation
            ),
        ));
    }
    let engine_spec = for_engine(spec.engine);
    if !engine_spec.dedicated_supported() {
        return Err(Invalid::new(
            "spec.engine",
            "Unsupported",
            format!(
                "dedicated {} instances are not available in this servicedb release yet",
                spec.engine
            ),
        ));
    }
    if let Some(backup) = &spec.backup {
        check_cron("spec.backup.schedule", &backup.schedule)?;
        if let Some(verify) = &backup.verify {
            check_cron("spec.backup.verify.schedule", &verify.schedule)?;
        }
    }

    let not_yet = |field: &'static str, what: &str| {
        Err(Invalid::new(field, "Unsupported", format!("{what} is not available in this servicedb release yet; remove {field}")))
    };
    if spec.backup.is_some() {
        return not_yet("spec.backup", "backup");
    }
    if spec.bootstrap.is_some() {
        return not_yet("spec.bootstrap", "bootstrapping from a backup");
    }
    if spec.credentials.as_ref().is_some_and(|c| c.rotate_every.is_some()) {
        return not_yet("spec.credentials.rotateEvery", "credential rotation");
    }
    if spec.monitoring.as_ref().and_then(|m| m.enabled) == Some(true) {
        return not_yet("spec.monitoring", "monitoring");
    }

    let secret_name = spec
        .credentials
        .as_ref()
        .and_then(|c| c.secret_name.clone())
        .unwrap_or_else(|| instance_name(&name));
    let admin_secret_name = format!("{}-admin", instance_name(&name));
    if secret_name == admin_secret_name {
        return Err(Invalid::new(
            "spec.credentials.secretName",
            "SecretNameReserved",
            format!("{admin_secret_name} is reserved for the instance's administrator credentials"),
        ));
    }

    let storage = spec.storage.clone().unwrap_or_default();
    let StorageSpec {
        size,
        storage_class_name,
    } = storage;
    let storage_size = size
        .or_else(|| class.spec.storage_size.clone())
        .unwrap_or_else(|| DEFAULT_STORAGE_SIZE.to_string());
    let image_repo = class
        .spec
        .image
        .clone()
        .unwrap_or_else(|| engine_spec.default_image().to_string());
    let identifier = name.replace('-', "_");

    Ok(ValidatedDatabase {
        engine: spec.engine,
        engine_spec,
        image: format!("{image_repo}:{version}"),
        version,
        class_name,
        storage_size: Quantity(storage_size),
        storage_class_name: storage_class_name.or_else(|| class.spec.storage_class_name.clone()),
        resources: spec
            .resources
            .clone()
            .or_else(|| class.spec.resources.clone())
            .unwrap_or_else(default_resources),
        owner: spec.owner.pod_selector.clone(),
        secret_name,
        admin_secret_name,
        database: identifier.clone(),
        username: identifier,
        deletion_policy: spec.deletion_policy,
        name,
        namespace,
    })
}

fn check_cron(field: &'static str, schedule: &str) -> Result<(), Invalid> {
    croner::parser::CronParser::new()
        .parse(schedule)
        .map(|_| ())
        .map_err(|e| {
            Invalid::new(
                field,
                "InvalidSchedule",
                format!("{schedule:?} is not a valid cron schedule: {e}"),
            )
        })
}

fn default_resources() -> ResourceRequirements {
    let q = |s: &str| Quantity(s.to_string());
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".into(), q("100m")),
            ("memory".into(), q("256Mi")),
        ])),
        limits: Some(BTreeMap::from([("memory".into(), q("512Mi"))])),
        ..Default::default()
    }
}

fn join(items: impl Iterator<Item = String>) -> String {
    items.collect::<Vec<_>>().join(", ")
}
