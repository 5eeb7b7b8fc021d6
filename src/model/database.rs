//! A ServiceDatabase checked against its class (step 2 of the
//! ServiceDatabase pipeline, pure): one validated value that every builder
//! reads, or an error naming the field. Managed servers' instances are
//! validated here too.

mod backup;
mod monitoring;
pub use backup::*;
pub use monitoring::*;

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use super::naming::{instance_name, shared_identifier};
use super::server::ServerFacts;
use crate::api::common::{BackupDestination, Disruption, StorageSpec};
use crate::api::{DatabaseClass, DeletionPolicy, Engine, Isolation, ServiceDatabase};
use crate::engine::{EngineSpec, for_engine};

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
    /// The service's login (its owner identity).
    pub username: String,
    /// Isolation `Schema`: the service's schema in the shared `database`,
    /// named after (and owned by) its owner role.
    pub schema: Option<String>,
    pub deletion_policy: DeletionPolicy,
    /// `spec.disruption`, or the class's: the PodDisruptionBudget's policy.
    pub disruption: Disruption,
    /// The shared server hosting the database; `None` for a dedicated instance.
    pub server: Option<ServerFacts>,
    /// Scheduled rotation of the service's password.
    pub rotate_every: Option<std::time::Duration>,
    /// How long a replaced login keeps working.
    pub grace_period: std::time::Duration,
    /// `spec.credentials.restartOwners`.
    pub restart_owners: bool,
    /// `spec.credentials.format`: the key sets of the credentials Secret.
    pub credential_formats: Vec<crate::api::common::CredentialFormat>,
    /// Scheduled backups; `None` when `spec.backup` is unset.
    pub backup: Option<ValidatedBackup>,
    /// What `spec.bootstrap` restores into a new database.
    pub restore_from: Option<RestoreSource>,
    /// `spec.pod` over the class's `pod`, field by field.
    pub pod: crate::api::common::PodSettings,
    /// `spec.redis.scripting`: the service user of a dedicated Redis may run
    /// Lua scripts and functions.
    pub redis_scripting: bool,
    /// `spec.postgres.parameters` (checked: none that servicedb manages).
    pub postgres_parameters: std::collections::BTreeMap<String, String>,
    /// `spec.redis.maxmemory` in bytes (below the memory limit).
    pub redis_maxmemory: Option<u64>,
    /// `spec.redis.maxmemoryPolicy`.
    pub redis_maxmemory_policy: Option<crate::api::service_database::MaxmemoryPolicy>,
    /// The engine's exporter; `None` when monitoring is off.
    pub monitoring: Option<ValidatedMonitoring>,
}

/// The agent's URL of a destination: S3 keys below the prefix (by default
/// `<namespace>/<name>`), or a directory below the volume's mount.
/// Whether a dedicated instance running `running` may move to `wanted`: a
/// downgrade never (data files are not read by older versions); a
/// PostgreSQL or MongoDB major version change not yet (PostgreSQL needs
/// `pg_upgrade` or a dump and restore, MongoDB one major at a time with its
/// featureCompatibilityVersion), so the instance keeps running its version
/// rather than crash-looping on a data directory it cannot read. Redis
/// reads older data files: its upgrades roll.
fn version_change(engine: Engine, running: &str, wanted: &str) -> Result<(), Invalid> {
    let parts = |v: &str| -> Vec<u64> { v.split('.').map(|p| p.parse().unwrap_or(0)).collect() };
    let (from, to) = (parts(running), parts(wanted));
    let source = "spec.version";
    let keep = format!("set spec.version: {running:?} to keep it");
    if to < from {
        return Err(Invalid::new(
            "spec.version",
            "VersionDowngradeRefused",
            format!(
                "{source} asks for {engine} {wanted}, older than the {running} that runs: a downgrade cannot read the data; {keep}"
            ),
        ));
    }
    let major_changes = from.first() != to.first();
    if major_changes && matches!(engine, Engine::Postgres | Engine::MongoDB) {
        return Err(Invalid::new(
            "spec.version",
            "MajorUpgradeUnsupported",
            format!(
                "{source} asks for {engine} {wanted}, a major version change from the {running} that runs, which servicedb does not perform yet; {keep}, or back up and restore into a new ServiceDatabase of version {wanted} (spec.bootstrap)"
            ),
        ));
    }
    Ok(())
}

/// The ServiceDatabase's pod settings over its class's, field by field.
fn pod_settings(
    own: Option<&crate::api::common::PodSettings>,
    class: Option<&crate::api::common::PodSettings>,
) -> crate::api::common::PodSettings {
    let (own, class) = (
        own.cloned().unwrap_or_default(),
        class.cloned().unwrap_or_default(),
    );
    crate::api::common::PodSettings {
        node_selector: own.node_selector.or(class.node_selector),
        tolerations: own.tolerations.or(class.tolerations),
        affinity: own.affinity.or(class.affinity),
        topology_spread_constraints: own
            .topology_spread_constraints
            .or(class.topology_spread_constraints),
        priority_class_name: own.priority_class_name.or(class.priority_class_name),
        image_pull_secrets: own.image_pull_secrets.or(class.image_pull_secrets),
        labels: own.labels.or(class.labels),
        annotations: own.annotations.or(class.annotations),
        run_as_user: own.run_as_user.or(class.run_as_user),
    }
}

impl std::fmt::Debug for ValidatedDatabase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ValidatedDatabase")
            .field("name", &self.name)
            .field("namespace", &self.namespace)
            .field("engine", &self.engine)
            .field("version", &self.version)
            .field("image", &self.image)
            .finish_non_exhaustive()
    }
}

impl ValidatedDatabase {
    /// Base name of the instance's children (`orders` → `orders-db`).
    pub fn instance_name(&self) -> String {
        instance_name(&self.name)
    }
    /// The address clients use: the instance's Service, or the shared server.
    pub fn host(&self) -> String {
        match &self.server {
            Some(server) => server.host.clone(),
            None => format!("{}.{}.svc", self.instance_name(), self.namespace),
        }
    }
    /// The port clients use.
    pub fn port(&self) -> i32 {
        self.server
            .as_ref()
            .map_or_else(|| self.engine_spec.port(), |s| s.port)
    }
}

/// Validates a ServiceDatabase against its class.
pub fn validate(
    sdb: &ServiceDatabase,
    class: &DatabaseClass,
    server: Option<&ServerFacts>,
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
    let engine_spec = for_engine(spec.engine);
    let (allowed, default_version) = crate::engine::class_versions(&class.spec);
    let running_version = (spec.isolation == Isolation::Dedicated)
        .then(|| sdb.status.as_ref().and_then(|s| s.version.as_deref()))
        .flatten();
    let version = match &spec.version {
        Some(v) if allowed.contains(v) => v.clone(),
        Some(v) => {
            return Err(Invalid::new(
                "spec.version",
                "VersionNotAllowed",
                format!(
                    "version {v:?} is not allowed by DatabaseClass {class_name}; allowed: {}",
                    allowed.join(", ")
                ),
            ));
        }
        // A dedicated instance keeps the version it was made with when its
        // class's default moves on: only its own spec.version changes it.
        None => match running_version {
            Some(running) => running.to_owned(),
            None => default_version.ok_or_else(|| {
                Invalid::new(
                    "spec.version",
                    "NoVersion",
                    format!("DatabaseClass {class_name} allows no version"),
                )
            })?,
        },
    };
    if let Some(running) = running_version {
        version_change(spec.engine, running, &version)?;
    }
    // Shared placement: a database (Postgres, MongoDB), a key space (Redis)
    // or a Postgres schema on a DatabaseServer.
    let shared = match (spec.isolation, server) {
        (Isolation::Dedicated, _) => None,
        (Isolation::Database, Some(server)) => Some(server.clone()),
        (Isolation::Schema, Some(server)) if spec.engine == Engine::Postgres => {
            Some(server.clone())
        }
        (isolation, _) => {
            return Err(Invalid::new(
                "spec.isolation",
                "Unsupported",
                format!("isolation {isolation} is not available for {}", spec.engine),
            ));
        }
    };
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
    if spec.isolation == Isolation::Schema
        && spec
            .bootstrap
            .as_ref()
            .is_some_and(|b| b.from_backup.is_some() || b.from_archive.is_some())
    {
        return Err(Invalid::new(
            "spec.bootstrap",
            "Unsupported",
            "a backup cannot be restored into isolation Schema: pg_restore recreates a schema under the name it was dumped with, not this service's; restore into isolation Database or a Dedicated instance",
        ));
    }
    let backup = match effective_backup(spec.backup.as_ref(), class, &class_name)? {
        Some(backup) => {
            let schedule = backup.schedule;
            check_cron("spec.backup.schedule", &schedule)?;
            if let Some(verify) = &backup.verify {
                check_cron("spec.backup.verify.schedule", &verify.schedule)?;
            }
            // What the agent cannot do on a shared server, said plainly
            // instead of failing every run.
            if shared.is_some() && backup.verify.is_some() && spec.engine != Engine::Postgres {
                return Err(Invalid::new(
                    "spec.backup.verify",
                    "Unsupported",
                    format!(
                        "verification of a {:?} database on a shared server is not supported yet (it needs a scratch key space or database the service's login may restore into); use a dedicated instance or remove spec.backup.verify",
                        spec.engine
                    ),
                ));
            }
            let retention = backup.retention.clone().unwrap_or_default();
            let max_age = match &retention.max_age {
                Some(text) => Some(parse_duration(text).ok_or_else(|| {
                    Invalid::new(
                        "spec.backup.retention.maxAge",
                        "InvalidDuration",
                        format!("{text:?} is not a duration such as 720h"),
                    )
                })?),
                None => None,
            };
            Some(ValidatedBackup {
                schedule,
                url: destination_url(&backup.destination, &namespace, &name),
                destination: backup.destination,
                keep_last: retention
                    .keep_last
                    .and_then(|n| usize::try_from(n).ok())
                    .filter(|n| *n > 0),
                max_age,
                verify_schedule: backup.verify.as_ref().map(|v| v.schedule.clone()),
                retain_archives_on_delete: backup.retain_archives_on_delete,
            })
        }
        None => None,
    };
    if spec.deletion_policy == DeletionPolicy::Snapshot && backup.is_none() {
        return Err(Invalid::new(
            "spec.deletionPolicy",
            "SnapshotNeedsBackup",
            format!(
                "deletionPolicy Snapshot needs backups: set spec.backup.schedule and spec.backup.destination (DatabaseClass {class_name} provides none)"
            ),
        ));
    }

    let duration = |field: &'static str, text: Option<&String>| match text {
        None => Ok(None),
        Some(text) => parse_duration(text).map(Some).ok_or_else(|| {
            Invalid::new(
                field,
                "InvalidDuration",
                format!("{text:?} is not a duration such as 720h"),
            )
        }),
    };
    let credentials = spec.credentials.clone().unwrap_or_default();
    let rotate_every = duration(
        "spec.credentials.rotateEvery",
        credentials.rotate_every.as_ref(),
    )?;
    let grace_period = duration(
        "spec.credentials.gracePeriod",
        credentials.grace_period.as_ref(),
    )?
    .unwrap_or(super::rotation::DEFAULT_GRACE);
    let monitoring = effective_monitoring(spec.monitoring.as_ref(), class, &class_name)?;
    // The CRD's rules refuse both; this holds should the CRD be older.
    let redis_scripting = spec.redis.as_ref().is_some_and(|r| r.scripting);
    if spec.redis.is_some() && spec.engine != Engine::Redis {
        return Err(Invalid::new(
            "spec.redis",
            "Unsupported",
            format!(
                "spec.redis is only available for engine Redis, not {}",
                spec.engine
            ),
        ));
    }
    if redis_scripting && shared.is_some() {
        return Err(Invalid::new(
            "spec.redis.scripting",
            "ScriptingNotAllowed",
            "spec.redis.scripting is only available with isolation Dedicated: on a shared DatabaseServer, Lua scripts and functions are refused",
        ));
    }
    let resources = with_memory_limit(
        spec.resources
            .clone()
            .or_else(|| class.spec.resources.clone())
            .unwrap_or_else(|| engine_spec.default_resources()),
    );
    let memory_limit = resources
        .limits
        .as_ref()
        .and_then(|l| l.get("memory"))
        .and_then(|q| super::quantity::bytes(&q.0));
    let (redis_maxmemory, redis_maxmemory_policy) = redis_memory(spec, memory_limit)?;
    let postgres_parameters = spec
        .postgres
        .as_ref()
        .map(|p| p.parameters.clone())
        .unwrap_or_default();
    if spec.postgres.is_some() && spec.engine != Engine::Postgres {
        return Err(Invalid::new(
            "spec.postgres",
            "Unsupported",
            format!(
                "spec.postgres is only available for engine Postgres, not {}",
                spec.engine
            ),
        ));
    }
    if !postgres_parameters.is_empty() && shared.is_some() {
        return Err(Invalid::new(
            "spec.postgres.parameters",
            "ParametersNotAllowed",
            "spec.postgres.parameters is only available with isolation Dedicated: a shared DatabaseServer's settings are its administrator's",
        ));
    }
    crate::engine::postgres_parameters::check(&postgres_parameters).map_err(|refused| {
        Invalid::new(
            "spec.postgres.parameters",
            "ParameterRefused",
            format!("spec.postgres.parameters: {refused}"),
        )
    })?;

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
        .unwrap_or_else(|| engine_spec.default_storage().to_string());
    let image_repo = class
        .spec
        .image
        .clone()
        .unwrap_or_else(|| engine_spec.default_image().to_string());
    let identifier = match &shared {
        None => name.replace('-', "_"),
        // A shared server hosts many namespaces: qualify the name.
        Some(_) => shared_identifier(&namespace, &name),
    };

    Ok(ValidatedDatabase {
        engine: spec.engine,
        engine_spec,
        image: format!("{image_repo}:{version}"),
        version,
        class_name,
        storage_size: Quantity(storage_size),
        storage_class_name: storage_class_name.or_else(|| class.spec.storage_class_name.clone()),
        resources,
        owner: spec.owner.pod_selector.clone(),
        secret_name,
        admin_secret_name,
        database: match (&shared, spec.isolation) {
            (Some(server), Isolation::Schema) => server.schema_database.clone(),
            _ => engine_spec.database_name(&identifier),
        },
        schema: (spec.isolation == Isolation::Schema).then(|| identifier.clone()),
        username: identifier,
        deletion_policy: spec.deletion_policy,
        disruption: spec
            .disruption
            .or(class.spec.disruption)
            .unwrap_or_default(),
        server: shared,
        rotate_every,
        grace_period,
        restart_owners: credentials.restart_owners,
        credential_formats: credentials.format.clone(),
        backup,
        restore_from: restore_source(spec.bootstrap.as_ref(), &namespace, &name),
        pod: pod_settings(spec.pod.as_ref(), class.spec.pod.as_ref()),
        redis_scripting,
        postgres_parameters,
        redis_maxmemory,
        redis_maxmemory_policy,
        monitoring,
        name,
        namespace,
    })
}

/// A database without a memory limit can take a node's memory from its
/// neighbours; when none is given, the limit is the request (guaranteed memory).
/// `spec.redis.maxmemory` in bytes, refused when it is not below the
/// instance's memory limit (Redis would be killed before it evicts), and
/// the policy. The CRD refuses both on shared servers and other engines.
#[allow(clippy::type_complexity)]
fn redis_memory(
    spec: &crate::api::ServiceDatabaseSpec,
    limit: Option<f64>,
) -> Result<
    (
        Option<u64>,
        Option<crate::api::service_database::MaxmemoryPolicy>,
    ),
    Invalid,
> {
    let Some(redis) = &spec.redis else {
        return Ok((None, None));
    };
    let Some(quantity) = &redis.maxmemory else {
        return Ok((None, redis.maxmemory_policy));
    };
    let Some(wanted) = super::quantity::bytes(quantity).filter(|b| *b >= 1.0) else {
        return Err(Invalid::new(
            "spec.redis.maxmemory",
            "InvalidMaxmemory",
            format!("spec.redis.maxmemory {quantity:?} is not a positive quantity such as 256Mi"),
        ));
    };
    if let Some(limit) = limit.filter(|limit| wanted >= *limit) {
        return Err(Invalid::new(
            "spec.redis.maxmemory",
            "MaxmemoryAboveLimit",
            format!(
                "spec.redis.maxmemory {quantity} is not below the instance's memory limit ({} bytes): Redis would be killed before it evicts or refuses writes; lower it or raise spec.resources",
                limit as u64
            ),
        ));
    }
    Ok((Some(wanted as u64), redis.maxmemory_policy))
}

fn with_memory_limit(mut r: ResourceRequirements) -> ResourceRequirements {
    let request = r.requests.as_ref().and_then(|q| q.get("memory")).cloned();
    let limits = r.limits.get_or_insert_with(BTreeMap::new);
    if let Some(request) = request {
        limits.entry("memory".into()).or_insert(request);
    }
    r
}

fn join(items: impl Iterator<Item = String>) -> String {
    items.collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::test_support::fixture;

    fn edit(sdb: &mut ServiceDatabase, yaml: &str) {
        let mut value = serde_json::to_value(&sdb.spec).unwrap();
        let patch: serde_json::Value = serde_yaml::from_str(yaml).unwrap();
        for (k, v) in patch.as_object().unwrap() {
            value[k] = v.clone();
        }
        sdb.spec = serde_json::from_value(value).unwrap();
    }

    #[test]
    fn the_spec_wins_over_the_class_and_the_class_over_builtin_defaults() {
        let class: DatabaseClass = fixture("class-postgres.yaml");
        let db = validate(&fixture("sdb-orders.yaml"), &class, None).unwrap();
        assert_eq!(db.version, "16");
        assert_eq!(db.image, "docker.io/library/postgres:16");
        assert_eq!(db.storage_size.0, "2Gi");
        assert_eq!(db.storage_class_name.as_deref(), Some("fast"));
        assert_eq!(db.secret_name, "orders-credentials");
        assert_eq!(db.admin_secret_name, "orders-db-admin");
        assert_eq!(db.host(), "orders-db.shop.svc");
        assert_eq!(db.deletion_policy, DeletionPolicy::Delete);

        let minimal = validate(&fixture("sdb-minimal.yaml"), &class, None).unwrap();
        assert_eq!(minimal.version, "17", "the class's default version");
        assert_eq!(minimal.storage_size.0, "5Gi", "the class's size");
        assert_eq!(minimal.secret_name, "cart-items-db");
        assert_eq!(minimal.database, "cart_items", "a valid SQL identifier");
        assert_eq!(minimal.username, "cart_items");
        assert_eq!(minimal.deletion_policy, DeletionPolicy::Retain);
        let requests = minimal.resources.requests.unwrap();
        assert_eq!(requests["cpu"].0, "200m", "the class's resources");
    }

    #[test]
    fn without_class_defaults_builtin_ones_apply() {
        let mut class: DatabaseClass = fixture("class-postgres.yaml");
        class.spec.storage_size = None;
        class.spec.resources = None;
        class.spec.default_version = None;
        let db = validate(&fixture("sdb-minimal.yaml"), &class, None).unwrap();
        assert_eq!(db.version, "17", "the last allowed version");
        assert_eq!(db.storage_size.0, "1Gi", "the engine's default size");
        assert!(
            db.resources.limits.unwrap().contains_key("memory"),
            "a memory limit by default"
        );
    }

    #[test]
    fn a_class_without_versions_allows_the_engines_versions_and_defaults() {
        let mut class: DatabaseClass = fixture("class-postgres.yaml");
        class.spec.versions.clear();
        class.spec.default_version = None;
        let db = validate(&fixture("sdb-minimal.yaml"), &class, None).unwrap();
        assert_eq!(db.version, "17", "the engine's default version");
        let mut sdb: ServiceDatabase = fixture("sdb-minimal.yaml");
        edit(&mut sdb, "version: '18'");
        assert_eq!(validate(&sdb, &class, None).unwrap().version, "18");
        edit(&mut sdb, "version: '9.6'");
        let err = validate(&sdb, &class, None).unwrap_err();
        assert!(err.message.contains("15, 16, 17, 18"), "{}", err.message);
    }

    #[test]
    fn a_version_the_class_does_not_allow_names_the_field_and_the_allowed_values() {
        let class: DatabaseClass = fixture("class-postgres.yaml");
        let mut sdb: ServiceDatabase = fixture("sdb-orders.yaml");
        edit(&mut sdb, "version: '13'");
        let err = validate(&sdb, &class, None).unwrap_err();
        assert_eq!(err.field, "spec.version");
        assert_eq!(err.reason, "VersionNotAllowed");
        assert!(err.message.contains("16, 17"), "{}", err.message);
    }

    #[test]
    fn an_isolation_the_class_does_not_allow_is_refused() {
        let class: DatabaseClass = fixture("class-postgres.yaml");
        let mut sdb: ServiceDatabase = fixture("sdb-orders.yaml");
        edit(&mut sdb, "{isolation: Database, serverRef: {name: shared}}");
        let err = validate(&sdb, &class, None).unwrap_err();
        assert_eq!(
            (err.field, err.reason),
            ("spec.isolation", "IsolationNotAllowed")
        );
        assert!(
            err.message.contains("allowed: Dedicated"),
            "{}",
            err.message
        );
    }

    #[test]
    fn a_class_of_another_engine_is_refused() {
        let mut class: DatabaseClass = fixture("class-postgres.yaml");
        class.spec.engine = Engine::Redis;
        let err = validate(&fixture("sdb-orders.yaml"), &class, None).unwrap_err();
        assert_eq!(
            (err.field, err.reason),
            ("spec.className", "ClassEngineMismatch")
        );
    }

    #[test]
    fn what_is_not_built_yet_is_refused_plainly() {
        let mut class: DatabaseClass = fixture("class-postgres.yaml");
        class.spec.allowed_isolations = None;
        // A shared isolation without a server to place it on.
        let mut sdb: ServiceDatabase = fixture("sdb-orders.yaml");
        edit(&mut sdb, "{isolation: Database, serverRef: {name: shared}}");
        let err = validate(&sdb, &class, None).unwrap_err();
        assert_eq!((err.field, err.reason), ("spec.isolation", "Unsupported"));
    }

    #[test]
    fn what_the_agent_cannot_do_on_a_shared_server_is_refused() {
        use crate::model::server::ServerFacts;
        let mut class: DatabaseClass = fixture("class-postgres.yaml");
        class.spec.allowed_isolations = None;
        let mut server = ServerFacts::example();
        let mut sdb: ServiceDatabase = fixture("sdb-orders.yaml");
        edit(
            &mut sdb,
            "{isolation: Database, serverRef: {name: shared}, backup: {schedule: '@daily', destination: {volume: {claimName: b}}, verify: {schedule: '@weekly'}}}",
        );
        let verified =
            validate(&sdb, &class, Some(&server)).expect("Postgres verifies on a shared server");
        assert_eq!(
            crate::model::naming::scratch_database(&verified),
            "shop_orders-verify",
            "in the scratch database the operator keeps for the service"
        );
        let (mut redis_class, mut redis_server, mut cart) =
            (class.clone(), server.clone(), sdb.clone());
        redis_class.spec.engine = Engine::Redis;
        redis_server.engine = Engine::Redis;
        cart.spec.engine = Engine::Redis;
        cart.spec.version = None;
        let err = validate(&cart, &redis_class, Some(&redis_server)).unwrap_err();
        assert_eq!(
            (err.field, err.reason),
            ("spec.backup.verify", "Unsupported")
        );
        assert!(err.message.contains("Redis"), "{}", err.message);
        edit(
            &mut sdb,
            "{backup: {schedule: '@daily', destination: {volume: {claimName: b}}}}",
        );
        assert!(
            validate(&sdb, &class, Some(&server)).is_ok(),
            "backups without verify work"
        );
        server.tls.mode = crate::engine::tls::TlsMode::Require;
        assert!(
            validate(&sdb, &class, Some(&server)).is_ok(),
            "the agent reaches servers over TLS too"
        );
    }

    #[test]
    fn redis_scripting_is_for_a_dedicated_redis_only() {
        use crate::model::server::ServerFacts;
        let mut class: DatabaseClass = fixture("class-postgres.yaml");
        class.spec.engine = Engine::Redis;
        class.spec.allowed_isolations = None;
        class.spec.versions.clear();
        class.spec.default_version = None;
        let mut cart: ServiceDatabase = fixture("sdb-cart-redis.yaml");
        let db = validate(&cart, &class, None).expect("no redis block");
        assert!(!db.redis_scripting, "off by default");
        edit(&mut cart, "{redis: {scripting: true}}");
        let db = validate(&cart, &class, None).expect("dedicated");
        assert!(db.redis_scripting);

        let mut server = ServerFacts::example();
        server.engine = Engine::Redis;
        edit(
            &mut cart,
            "{isolation: Database, serverRef: {name: shared}, redis: {scripting: true}}",
        );
        let err = validate(&cart, &class, Some(&server)).unwrap_err();
        assert_eq!(
            (err.field, err.reason),
            ("spec.redis.scripting", "ScriptingNotAllowed")
        );
        edit(&mut cart, "{redis: {scripting: false}}");
        let db = validate(&cart, &class, Some(&server)).expect("shared, no scripting");
        assert!(!db.redis_scripting);

        let mut class: DatabaseClass = fixture("class-postgres.yaml");
        class.spec.allowed_isolations = None;
        let mut orders: ServiceDatabase = fixture("sdb-orders.yaml");
        edit(&mut orders, "{redis: {scripting: false}}");
        let err = validate(&orders, &class, None).unwrap_err();
        assert_eq!((err.field, err.reason), ("spec.redis", "Unsupported"));
    }

    #[test]
    fn a_schema_takes_backups_but_no_restore() {
        use crate::model::server::ServerFacts;
        let mut class: DatabaseClass = fixture("class-postgres.yaml");
        class.spec.allowed_isolations = None;
        let server = ServerFacts::example();
        let mut sdb: ServiceDatabase = fixture("sdb-orders.yaml");
        edit(
            &mut sdb,
            "{isolation: Schema, serverRef: {name: shared}, backup: {schedule: '@daily', destination: {volume: {claimName: b}}}}",
        );
        let db = validate(&sdb, &class, Some(&server)).expect("backups of a schema");
        assert!(db.schema.is_some() && db.backup.is_some());
        edit(&mut sdb, "{bootstrap: {fromBackup: {name: b1}}}");
        let err = validate(&sdb, &class, Some(&server)).unwrap_err();
        assert_eq!((err.field, err.reason), ("spec.bootstrap", "Unsupported"));
    }

    #[test]
    fn rotation_settings_are_read() {
        let class: DatabaseClass = fixture("class-postgres.yaml");
        let mut sdb: ServiceDatabase = fixture("sdb-orders.yaml");
        let db = validate(&sdb, &class, None).unwrap();
        assert_eq!(db.rotate_every, None);
        assert_eq!(db.grace_period, crate::model::rotation::DEFAULT_GRACE);
        edit(
            &mut sdb,
            "{credentials: {rotateEvery: 720h, gracePeriod: 90s}}",
        );
        let db = validate(&sdb, &class, None).unwrap();
        assert_eq!(
            db.rotate_every,
            Some(std::time::Duration::from_secs(720 * 3600))
        );
        assert_eq!(db.grace_period, std::time::Duration::from_secs(90));
    }

    #[test]
    fn a_bad_schedule_names_its_field() {
        let class: DatabaseClass = fixture("class-postgres.yaml");
        let mut sdb: ServiceDatabase = fixture("sdb-orders.yaml");
        edit(
            &mut sdb,
            "{backup: {schedule: '99 2 * * *', destination: {volume: {claimName: b}}}}",
        );
        let err = validate(&sdb, &class, None).unwrap_err();
        assert_eq!(
            (err.field, err.reason),
            ("spec.backup.schedule", "InvalidSchedule")
        );
    }

    #[test]
    fn backup_settings_are_checked_once() {
        let class: DatabaseClass = fixture("class-postgres.yaml");
        let mut sdb: ServiceDatabase = fixture("sdb-orders.yaml");
        edit(
            &mut sdb,
            "{backup: {schedule: '@daily', retention: {keepLast: 3, maxAge: 1h30m}, destination: {s3: {bucket: b, credentialsSecret: s3}}, verify: {schedule: '0 4 * * 0'}}, bootstrap: {fromBackup: {name: b1}}}",
        );
        let db = validate(&sdb, &class, None).unwrap();
        let backup = db.backup.unwrap();
        assert_eq!(backup.url, "s3://b/shop/orders");
        assert_eq!(backup.keep_last, Some(3));
        assert_eq!(backup.max_age, Some(std::time::Duration::from_secs(5400)));
        assert_eq!(backup.verify_schedule.as_deref(), Some("0 4 * * 0"));
        assert_eq!(db.restore_from, Some(RestoreSource::Backup("b1".into())));

        edit(
            &mut sdb,
            "{backup: {schedule: '@daily', destination: {volume: {claimName: v}}}}",
        );
        let db = validate(&sdb, &class, None).unwrap();
        assert_eq!(db.backup.unwrap().url, "file:///backup/shop/orders");
    }

    #[test]
    fn durations_parse_as_go_writes_them() {
        assert_eq!(
            parse_duration("720h"),
            Some(std::time::Duration::from_secs(720 * 3600))
        );
        assert_eq!(
            parse_duration("1h30m"),
            Some(std::time::Duration::from_secs(5400))
        );
        assert_eq!(parse_duration("h"), None);
        assert_eq!(parse_duration("10d"), None);
        assert_eq!(parse_duration(""), None);
    }

    #[test]
    fn the_admin_secret_name_cannot_be_taken() {
        let class: DatabaseClass = fixture("class-postgres.yaml");
        let mut sdb: ServiceDatabase = fixture("sdb-orders.yaml");
        edit(&mut sdb, "{credentials: {secretName: orders-db-admin}}");
        let err = validate(&sdb, &class, None).unwrap_err();
        assert_eq!(err.field, "spec.credentials.secretName");
    }

    fn class_with(yaml: &str) -> DatabaseClass {
        let mut class: DatabaseClass = fixture("class-postgres.yaml");
        let mut value = serde_json::to_value(&class.spec).unwrap();
        let patch: serde_json::Value = serde_yaml::from_str(yaml).unwrap();
        for (k, v) in patch.as_object().unwrap() {
            value[k] = v.clone();
        }
        class.spec = serde_json::from_value(value).unwrap();
        class
    }

    #[test]
    fn class_backup_defaults_apply_field_by_field_under_the_databases_own() {
        let class = class_with(
            "{backup: {schedule: '0 3 * * *', destination: {s3: {bucket: platform, credentialsSecret: s3}}, retention: {keepLast: 7}, verify: {schedule: '@weekly'}, retainArchivesOnDelete: false}}",
        );
        let from_class = validate(&fixture("sdb-minimal.yaml"), &class, None)
            .unwrap()
            .backup
            .expect("the class's backups");
        assert_eq!(from_class.schedule, "0 3 * * *");
        assert_eq!(from_class.url, "s3://platform/shop/cart-items");
        assert_eq!(from_class.keep_last, Some(7));
        assert_eq!(from_class.verify_schedule.as_deref(), Some("@weekly"));
        assert!(!from_class.retain_archives_on_delete);

        let mut sdb: ServiceDatabase = fixture("sdb-minimal.yaml");
        edit(
            &mut sdb,
            "{backup: {schedule: '@hourly', retention: {keepLast: 2}, retainArchivesOnDelete: true}}",
        );
        let mixed = validate(&sdb, &class, None).unwrap().backup.unwrap();
        assert_eq!(mixed.schedule, "@hourly", "the database's schedule wins");
        assert_eq!(mixed.keep_last, Some(2), "the database's retention wins");
        assert_eq!(
            mixed.url, "s3://platform/shop/cart-items",
            "the class's destination"
        );
        assert_eq!(mixed.verify_schedule.as_deref(), Some("@weekly"));
        assert!(mixed.retain_archives_on_delete);

        edit(&mut sdb, "{backup: {enabled: false}}");
        assert_eq!(
            validate(&sdb, &class, None).unwrap().backup,
            None,
            "turned off"
        );

        let plain: DatabaseClass = fixture("class-postgres.yaml");
        let none = validate(&fixture("sdb-minimal.yaml"), &plain, None).unwrap();
        assert_eq!(none.backup, None, "neither sets backups");
        edit(&mut sdb, "{backup: {schedule: '@daily'}}");
        let err = validate(&sdb, &plain, None).unwrap_err();
        assert_eq!(
            (err.field, err.reason),
            ("spec.backup.destination", "BackupIncomplete")
        );
        edit(
            &mut sdb,
            "{backup: {schedule: '@daily', destination: {volume: {claimName: b}}}}",
        );
        let own = validate(&sdb, &plain, None).unwrap().backup.unwrap();
        assert!(
            own.retain_archives_on_delete,
            "archives are kept by default"
        );
    }

    #[test]
    fn a_class_that_requires_backups_refuses_a_database_without_them_naming_the_class() {
        let class = class_with(
            "{backup: {required: true, schedule: '@daily', destination: {volume: {claimName: b}}}}",
        );
        let mut sdb: ServiceDatabase = fixture("sdb-minimal.yaml");
        assert!(validate(&sdb, &class, None).unwrap().backup.is_some());
        edit(&mut sdb, "{backup: {enabled: false}}");
        let err = validate(&sdb, &class, None).unwrap_err();
        assert_eq!(
            (err.field, err.reason),
            ("spec.backup.enabled", "BackupRequired")
        );
        assert!(
            err.message.contains("DatabaseClass postgres"),
            "{}",
            err.message
        );

        let bare = class_with("{backup: {required: true}}");
        let err = validate(&fixture("sdb-minimal.yaml"), &bare, None).unwrap_err();
        assert_eq!(
            (err.field, err.reason),
            ("spec.backup.schedule", "BackupRequired")
        );
        assert!(
            err.message.contains("DatabaseClass postgres"),
            "{}",
            err.message
        );
    }

    #[test]
    fn snapshot_needs_backups_from_the_database_or_its_class() {
        let mut sdb: ServiceDatabase = fixture("sdb-minimal.yaml");
        edit(&mut sdb, "{deletionPolicy: Snapshot}");
        let plain: DatabaseClass = fixture("class-postgres.yaml");
        let err = validate(&sdb, &plain, None).unwrap_err();
        assert_eq!(
            (err.field, err.reason),
            ("spec.deletionPolicy", "SnapshotNeedsBackup")
        );
        let class =
            class_with("{backup: {schedule: '@daily', destination: {volume: {claimName: b}}}}");
        assert!(
            validate(&sdb, &class, None).is_ok(),
            "the class's backups do"
        );
    }

    #[test]
    fn monitoring_is_off_unless_the_database_or_its_class_turns_it_on() {
        let class: DatabaseClass = fixture("class-postgres.yaml");
        let mut sdb: ServiceDatabase = fixture("sdb-minimal.yaml");
        assert_eq!(validate(&sdb, &class, None).unwrap().monitoring, None);
        edit(&mut sdb, "{monitoring: {enabled: true}}");
        let monitoring = validate(&sdb, &class, None).unwrap().monitoring.unwrap();
        assert_eq!(
            monitoring.exporter_image, "quay.io/prometheuscommunity/postgres-exporter:v0.17.1",
            "the upstream exporter at its pinned version"
        );

        let class = class_with("{monitoring: {enabled: true}}");
        let mut sdb: ServiceDatabase = fixture("sdb-minimal.yaml");
        assert!(
            validate(&sdb, &class, None).unwrap().monitoring.is_some(),
            "the class's default"
        );
        edit(&mut sdb, "{monitoring: {enabled: false}}");
        assert_eq!(
            validate(&sdb, &class, None).unwrap().monitoring,
            None,
            "the database's own choice wins over the class's default"
        );
    }

    #[test]
    fn a_class_that_requires_monitoring_refuses_turning_it_off() {
        let class =
            class_with("{monitoring: {required: true, exporterImage: mirror.example/pg-exporter}}");
        let mut sdb: ServiceDatabase = fixture("sdb-minimal.yaml");
        let monitoring = validate(&sdb, &class, None).unwrap().monitoring.unwrap();
        assert_eq!(
            monitoring.exporter_image, "mirror.example/pg-exporter:v0.17.1",
            "on without asking, from the class's mirror"
        );
        edit(&mut sdb, "{monitoring: {enabled: false}}");
        let err = validate(&sdb, &class, None).unwrap_err();
        assert_eq!(
            (err.field, err.reason),
            ("spec.monitoring.enabled", "MonitoringRequired")
        );
        assert!(
            err.message.contains("DatabaseClass postgres"),
            "{}",
            err.message
        );
    }
    #[test]
    fn an_archive_source_names_the_directory_the_backups_were_written_to() {
        let class = class_with("{}");
        let mut sdb: ServiceDatabase = fixture("sdb-orders.yaml");
        let namespace = sdb.metadata.namespace.clone().expect("namespace");
        edit(
            &mut sdb,
            "{bootstrap: {fromArchive: {destination: {s3: {bucket: bk, credentialsSecret: s}}, before: '2026-12-01T00:00:00Z'}}}",
        );
        let source = validate(&sdb, &class, None).expect("valid").restore_from;
        let Some(RestoreSource::Archive {
            dir,
            backup,
            before,
            ..
        }) = source
        else {
            panic!("an archive source: {source:?}");
        };
        assert_eq!(dir, format!("s3://bk/{namespace}/orders"));
        assert_eq!(
            (backup, before.as_deref()),
            (None, Some("2026-12-01T00:00:00Z"))
        );
        edit(
            &mut sdb,
            "{bootstrap: {fromArchive: {destination: {s3: {bucket: bk, credentialsSecret: s}}, source: old/billing, backup: b7}}}",
        );
        let source = validate(&sdb, &class, None)
            .expect("valid")
            .restore_from
            .expect("source");
        assert_eq!(source.describe(), "backup b7 under s3://bk/old/billing");
        edit(
            &mut sdb,
            "{bootstrap: {fromArchive: {destination: {s3: {bucket: bk, prefix: flat, credentialsSecret: s}}, source: old/billing}}}",
        );
        let source = validate(&sdb, &class, None)
            .expect("valid")
            .restore_from
            .expect("source");
        assert_eq!(source.describe(), "the latest backup under s3://bk/flat");
    }
    #[test]
    fn a_running_instance_never_moves_to_a_version_it_cannot_read() {
        use Engine::{MongoDB, Postgres, Redis};
        assert!(version_change(Postgres, "17", "17").is_ok());
        let major = version_change(Postgres, "15", "17").unwrap_err();
        assert_eq!(
            (major.field, major.reason),
            ("spec.version", "MajorUpgradeUnsupported")
        );
        assert!(
            major.message.contains("spec.version: \"15\""),
            "{}",
            major.message
        );
        let down = version_change(Postgres, "17", "15").unwrap_err();
        assert_eq!(down.reason, "VersionDowngradeRefused");
        assert!(
            version_change(Redis, "7.2", "8.0").is_ok(),
            "Redis reads older files"
        );
        assert_eq!(
            version_change(Redis, "8.0", "7.4").unwrap_err().reason,
            "VersionDowngradeRefused"
        );
        assert!(version_change(MongoDB, "7.0", "7.0").is_ok());
        assert_eq!(
            version_change(MongoDB, "7.0", "8.0").unwrap_err().reason,
            "MajorUpgradeUnsupported"
        );
    }
}
