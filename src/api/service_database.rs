//! `ServiceDatabase`: one service's private database.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{
    BackupDestination, BackupSpec, CredentialsSpec, DeletionPolicy, Disruption, Engine, Isolation,
    MonitoringSpec, ObjectRef, OwnerSpec, PodSettings, Resources, StorageSpec, conditions_schema,
};

/// One service's private database: the engine, how it is isolated from other
/// services, the one service that owns it, its storage, credentials, backups
/// and monitoring. The application receives a Secret with a ready connection
/// URI; nothing but the owner's pods can reach the database.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[kube(
    group = "servicedb.dev",
    version = "v1alpha1",
    kind = "ServiceDatabase",
    namespaced,
    shortname = "sdb",
    category = "servicedb",
    status = "ServiceDatabaseStatus",
    printcolumn(name = "Engine", type_ = "string", json_path = ".spec.engine"),
    printcolumn(name = "Version", type_ = "string", json_path = ".status.version"),
    printcolumn(name = "Isolation", type_ = "string", json_path = ".spec.isolation"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Reason", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].reason"),
    printcolumn(name = "Secret", type_ = "string", json_path = ".status.credentialsSecret"),
    printcolumn(name = "Last Backup", type_ = "date", json_path = ".status.lastBackup.completedAt"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new("size(self.metadata.name) <= 40").message("metadata.name must be at most 40 characters: it names the database, its user, its StatefulSet and its Services"),
)]
#[x_kube(
    validation = Rule::new("self.isolation == 'Dedicated' ? !has(self.serverRef) : has(self.serverRef)").message("serverRef is required when isolation is Database or Schema, and not allowed when it is Dedicated").field_path(".serverRef"),
    validation = Rule::new("self.isolation != 'Schema' || self.engine == 'Postgres'").message("isolation Schema is only available for engine Postgres").field_path(".isolation"),
    validation = Rule::new("self.engine == 'Postgres' || !has(self.credentials) || !has(self.credentials.format) || !('Pgpass' in self.credentials.format)").message("format Pgpass is only available for engine Postgres").field_path(".credentials.format"),
    validation = Rule::new("self.deletionPolicy != 'Snapshot' || !has(self.backup) || !has(self.backup.enabled) || self.backup.enabled").message("deletionPolicy Snapshot needs backup: it cannot be combined with backup.enabled false").field_path(".deletionPolicy"),
    validation = Rule::new("self.engine == 'Redis' || !has(self.redis)").message("redis is only available for engine Redis").field_path(".redis"),
    validation = Rule::new("self.engine == 'Postgres' || !has(self.postgres)").message("postgres is only available for engine Postgres").field_path(".postgres"),
    validation = Rule::new("!has(self.postgres) || !has(self.postgres.parameters) || size(self.postgres.parameters) == 0 || self.isolation == 'Dedicated'").message("postgres.parameters is only available with isolation Dedicated: a shared DatabaseServer's settings are its administrator's").field_path(".postgres.parameters"),
    validation = Rule::new("!has(self.redis) || (!has(self.redis.maxmemory) && !has(self.redis.maxmemoryPolicy)) || self.isolation == 'Dedicated'").message("redis.maxmemory and redis.maxmemoryPolicy are only available with isolation Dedicated: a shared DatabaseServer's memory is its administrator's").field_path(".redis"),
    validation = Rule::new("!has(self.redis) || !has(self.redis.scripting) || !self.redis.scripting || self.isolation == 'Dedicated'").message("redis.scripting is only available with isolation Dedicated: on a shared DatabaseServer, Lua scripts and functions are refused (all services share the server's Lua engine and function libraries)").field_path(".redis.scripting"),
)]
#[serde(rename_all = "camelCase")]
pub struct ServiceDatabaseSpec {
    /// The database engine: `Postgres`, `Redis` or `MongoDB`. Cannot be changed.
    #[x_kube(validation = Rule::new("self == oldSelf").message("engine is immutable"))]
    pub engine: Engine,

    /// Engine major version, such as `"17"` for Postgres. Must be one the
    /// class allows; the class's default version when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 16))]
    pub version: Option<String>,

    /// The `DatabaseClass` that approves and configures this database; the
    /// default class of the engine when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub class_name: Option<String>,

    /// The one service allowed to use this data.
    pub owner: OwnerSpec,

    /// `Dedicated` (an instance of its own, the default), `Database` (own
    /// database, or key prefix on Redis, and login on a shared
    /// `DatabaseServer`) or `Schema` (own schema in the server's shared
    /// database, Postgres only). Cannot be changed.
    #[serde(default)]
    #[x_kube(validation = Rule::new("self == oldSelf").message("isolation is immutable"))]
    pub isolation: Isolation,

    /// The `DatabaseServer` that hosts the database; required for isolation
    /// `Database` and `Schema`. Cannot be changed: the database, its login
    /// and its data live on that server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self == oldSelf").message("serverRef is immutable: the database and its login live on that server"))]
    pub server_ref: Option<ObjectRef>,

    /// The data volume of a dedicated instance; defaults from the class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<StorageSpec>,

    /// CPU and memory of the database container; defaults from the class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,

    /// The Secret the service reads its connection details from, and rotation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<CredentialsSpec>,

    /// Scheduled backups (a CronJob `<name>-db-backup`; each run is recorded
    /// as a `DatabaseBackup`), retention and verification. Fields left unset
    /// come from the class's `backup`; no backups when neither sets them, or
    /// with `enabled: false`. Backups outlive the database: deleting it
    /// never deletes them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<BackupSpec>,

    /// How a node drain may treat a dedicated instance: `Protect` (the
    /// default: its PodDisruptionBudget has `minAvailable: 1`, a drain waits)
    /// or `Allow` (`maxUnavailable: 1`: a drain evicts the pod, the database
    /// is down until it runs elsewhere). The class's when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disruption: Option<Disruption>,

    /// Scheduling and images of the database's pods and its Jobs' pods:
    /// nodeSelector, tolerations, affinity, topologySpreadConstraints,
    /// priorityClassName, imagePullSecrets, extra labels and annotations,
    /// runAsUser. Each field unset here comes from the class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<PodSettings>,

    /// Prometheus monitoring: the engine's exporter next to the database.
    /// Defaults from the class, which may require it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monitoring: Option<MonitoringSpec>,

    /// What happens to the data when this resource is deleted: `Retain` (the
    /// default: the volume and the credentials Secret stay), `Delete`, or
    /// `Snapshot` (a final `DatabaseBackup` `<name>-final-<uid>`, then delete;
    /// the data stays until that backup completed).
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,

    /// Initial contents of a new database: restored once, by a Job
    /// `<name>-db-restore`, before the database turns Ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bootstrap: Option<BootstrapSpec>,

    /// Redis only: what the service's user may do beyond its own keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis: Option<RedisSpec>,

    /// Postgres only: settings of a dedicated instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postgres: Option<PostgresSpec>,
}

/// Settings of a dedicated PostgreSQL instance.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PostgresSpec {
    /// PostgreSQL parameters, such as `work_mem: 16MB` or
    /// `max_connections: "200"`. Applied by a reload where PostgreSQL
    /// allows it, and by restarting the instance for those it reads only at
    /// start (`shared_buffers`, `max_connections`, …). Settings servicedb
    /// manages (addresses, sockets, authentication, TLS, logging
    /// destination, archiving, preloaded libraries) are refused.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 64))]
    pub parameters: BTreeMap<String, String>,
}

/// What a Redis service user may do besides reading and writing its keys
/// (which it always may, and only under its key prefix), and the memory
/// settings of a dedicated instance.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct RedisSpec {
    /// Lua scripts and functions: EVAL, EVALSHA, EVAL_RO, SCRIPT LOAD,
    /// FCALL, FUNCTION LOAD… (BullMQ, Redlock). Scripts still reach only the
    /// service's own keys. Isolation `Dedicated` only; `false` by default.
    /// Changing it restarts the instance.
    #[serde(default)]
    pub scripting: bool,
    /// Redis `maxmemory`, as a quantity (`256Mi`): the most the dataset
    /// may use before `maxmemoryPolicy` applies. Below the instance's memory
    /// limit. Applied live. Isolation `Dedicated` only; no limit when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new("isQuantity(self) && quantity(self).isGreaterThan(quantity('0'))").message("must be a positive quantity such as 256Mi"))]
    pub maxmemory: Option<String>,
    /// Redis `maxmemory-policy`: what happens at `maxmemory`. `noeviction`
    /// (the default: writes are refused) or an eviction policy for a cache.
    /// Applied live. Isolation `Dedicated` only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maxmemory_policy: Option<MaxmemoryPolicy>,
}

/// Redis's `maxmemory-policy` values.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum MaxmemoryPolicy {
    #[serde(rename = "noeviction")]
    NoEviction,
    #[serde(rename = "allkeys-lru")]
    AllkeysLru,
    #[serde(rename = "allkeys-lfu")]
    AllkeysLfu,
    #[serde(rename = "allkeys-random")]
    AllkeysRandom,
    #[serde(rename = "volatile-lru")]
    VolatileLru,
    #[serde(rename = "volatile-lfu")]
    VolatileLfu,
    #[serde(rename = "volatile-random")]
    VolatileRandom,
    #[serde(rename = "volatile-ttl")]
    VolatileTtl,
}

impl MaxmemoryPolicy {
    /// The value Redis reads.
    pub fn as_str(self) -> &'static str {
        match self {
            MaxmemoryPolicy::NoEviction => "noeviction",
            MaxmemoryPolicy::AllkeysLru => "allkeys-lru",
            MaxmemoryPolicy::AllkeysLfu => "allkeys-lfu",
            MaxmemoryPolicy::AllkeysRandom => "allkeys-random",
            MaxmemoryPolicy::VolatileLru => "volatile-lru",
            MaxmemoryPolicy::VolatileLfu => "volatile-lfu",
            MaxmemoryPolicy::VolatileRandom => "volatile-random",
            MaxmemoryPolicy::VolatileTtl => "volatile-ttl",
        }
    }
}

/// Where a new database's initial contents come from: one of
/// `fromBackup` or `fromArchive`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!(has(self.fromBackup) && has(self.fromArchive))").message("set one of fromBackup or fromArchive"))]
pub struct BootstrapSpec {
    /// Restore this `DatabaseBackup` (same namespace, phase `Completed`) into
    /// the new database.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_backup: Option<super::common::LocalObjectRef>,
    /// Restore an archive found in object storage or on a volume, without a
    /// `DatabaseBackup` object: disaster recovery after the namespace or the
    /// cluster was lost.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_archive: Option<ArchiveSource>,
}

/// Backups written to a destination by an earlier ServiceDatabase
/// (`<destination>/<namespace>/<name>/<backup>/`), read from the store alone.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!(has(self.backup) && has(self.before))").message("set backup or before, not both"))]
pub struct ArchiveSource {
    /// Where the backups were written, as `spec.backup.destination` named
    /// it (an S3 `prefix`, if it had one, included).
    pub destination: BackupDestination,
    /// `namespace/name` of the ServiceDatabase whose backups these are;
    /// this one's own when unset. Ignored when the S3 destination has a
    /// `prefix` (backups were then written right under it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 317))]
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?/[a-z0-9]([-a-z0-9]*[a-z0-9])?$')").message("must be namespace/name"))]
    pub source: Option<String>,
    /// The backup to restore (its directory's name, such as
    /// `orders-db-backup-29012345`); the latest completed one when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new("self.matches('^[A-Za-z0-9._-]+$') && self != '.' && self != '..'").message("must be a backup's directory name"))]
    pub backup: Option<String>,
    /// With no `backup`: the latest backup completed before this time
    /// (RFC 3339, such as `2026-12-01T00:00:00Z`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}([.][0-9]+)?(Z|[+-][0-9]{2}:[0-9]{2})$')").message("must be an RFC 3339 time such as 2026-12-01T00:00:00Z"))]
    #[schemars(length(max = 64))]
    pub before: Option<String>,
}

/// Lifecycle phase, a summary of the conditions for humans.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum Phase {
    /// Accepted, nothing created yet.
    #[default]
    Pending,
    /// Children exist, the database is not ready yet.
    Provisioning,
    /// The database accepts the service's connections.
    Ready,
    /// It was ready and now is not (fully).
    Degraded,
    /// The spec cannot be realised; see the conditions.
    Failed,
    /// Being deleted.
    Deleting,
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

/// Where clients connect.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct Endpoint {
    /// DNS name of the client Service.
    pub host: String,
    /// TCP port.
    pub port: i32,
}

/// The last successful backup.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LastBackup {
    /// Name of the `DatabaseBackup`.
    pub name: String,
    /// When it completed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<Time>,
    /// Size of the stored archive in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<i64>,
}

/// Observed state of a `ServiceDatabase`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceDatabaseStatus {
    /// Summary of the conditions.
    #[serde(default)]
    pub phase: Phase,
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `InstanceReady`, `CredentialsReady`, `NetworkIsolated`,
    /// `BackupHealthy`, `StorageResized`; `Reconciling` and `Stalled` for
    /// kstatus readers such as Flux.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
    /// The class that was applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class_name: Option<String>,
    /// The engine version that runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Where the service connects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<Endpoint>,
    /// Name of the Secret with the connection details.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret: Option<String>,
    /// When the credentials were last rotated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_rotated_at: Option<Time>,
    /// The last successful backup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_backup: Option<LastBackup>,
    /// The last backup a verification run restored and checked successfully.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_verified_backup: Option<LastVerifiedBackup>,
}

/// The last successful verification of a backup.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LastVerifiedBackup {
    /// Name of the verified `DatabaseBackup`.
    pub name: String,
    /// When the verification finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verified_at: Option<Time>,
    /// How long the restore into the scratch database took.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_seconds: Option<f64>,
}
