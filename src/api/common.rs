//! Types shared by several kinds: engines, references, storage, backup and
//! monitoring settings, and the standard condition list.

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A database engine servicedb knows how to run and provision.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum Engine {
    /// PostgreSQL, from the official `postgres` image.
    Postgres,
    /// Redis, from the official `redis` image.
    Redis,
    /// MongoDB, from the official `mongo` image.
    MongoDB,
}

impl Engine {
    /// The lowercase name used in labels, file names and CLI flags.
    pub fn as_str(self) -> &'static str {
        match self {
            Engine::Postgres => "postgres",
            Engine::Redis => "redis",
            Engine::MongoDB => "mongodb",
        }
    }
}

impl std::fmt::Display for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Engine::Postgres => "Postgres",
            Engine::Redis => "Redis",
            Engine::MongoDB => "MongoDB",
        })
    }
}

/// How a service's data is separated from other services' data.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
pub enum Isolation {
    /// The service gets its own database instance (a StatefulSet of its own).
    #[default]
    Dedicated,
    /// The service gets its own database and user on a shared `DatabaseServer`.
    Database,
    /// The service gets its own schema and user in a shared Postgres database
    /// on a `DatabaseServer` (Postgres only).
    Schema,
}

impl std::fmt::Display for Isolation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

/// What happens to the data and the credentials when the resource is deleted.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum DeletionPolicy {
    /// Keep the volume with the data and the credentials Secret; only the
    /// running parts (pods, services, policies) are removed.
    #[default]
    Retain,
    /// Remove everything, data included.
    Delete,
    /// Take a final backup, then remove everything (needs `backup`).
    Snapshot,
}

/// A reference to a namespaced object; the namespace defaults to the
/// referring object's own namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
pub struct ObjectRef {
    /// Name of the object.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Namespace of the object; defaults to the referring object's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub namespace: Option<String>,
}

/// A reference to an object in the same namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct LocalObjectRef {
    /// Name of the object.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// Persistent storage for a database instance.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct StorageSpec {
    /// Size of the data volume, as a Kubernetes quantity (`10Gi`).
    /// Defaults to the class's size, or `1Gi`.
    /// Growing it expands the existing volume when its StorageClass allows
    /// expansion (`allowVolumeExpansion: true`; the condition
    /// `StorageResized` says when it does not); it cannot shrink.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    #[x_kube(
        validation = Rule::new("isQuantity(self) && quantity(self).isGreaterThan(quantity('0'))").message("must be a positive quantity such as 10Gi"),
        validation = Rule::new("!isQuantity(self) || !isQuantity(oldSelf) || !quantity(self).isLessThan(quantity(oldSelf))").message("cannot shrink: a volume can only grow")
    )]
    pub size: Option<String>,
    /// StorageClass of the data volume; the cluster default when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
}

/// Who owns the data: the one service allowed to reach it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OwnerSpec {
    /// Selects the pods of the owning service (in the resource's namespace).
    /// On a dedicated instance only these pods, the operator and this
    /// database's backup, verify and restore Jobs may open connections to
    /// the database.
    pub pod_selector: LabelSelector,
}

/// The service's login credentials.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct CredentialsSpec {
    /// Name of the Secret that receives the connection details (keys
    /// `engine`, `host`, `port`, `database`, `username`, `password`, `uri`
    /// and the engine's customary variable such as `DATABASE_URL`).
    /// Defaults to `<name>-db`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub secret_name: Option<String>,
    /// The key sets the Secret holds, for the clients that read it:
    ///
    /// - `Default` (always included): the keys above; on Postgres also
    ///   `jdbc-url` (`jdbc:postgresql://host:5432/orders`, no credentials in
    ///   it: JDBC takes `username` and `password` separately).
    /// - `Spring`: Spring Boot's environment variables. Postgres:
    ///   `SPRING_DATASOURCE_URL` (the JDBC URL), `SPRING_DATASOURCE_USERNAME`,
    ///   `SPRING_DATASOURCE_PASSWORD`; Redis: `SPRING_DATA_REDIS_URL`;
    ///   MongoDB: `SPRING_DATA_MONGODB_URI`.
    /// - `ServiceBinding`: the servicebinding.io well-known entries: `type`
    ///   (`postgresql`, `redis` or `mongodb`) and `provider` (`servicedb`)
    ///   next to `host`, `port`, `database`, `username`, `password` and
    ///   `uri`; over TLS also `sslmode` (Postgres) or `ssl` (Redis). Mount
    ///   the Secret under `$SERVICE_BINDING_ROOT/<name>`.
    /// - `Pgpass` (Postgres only): `pgpass`, one line
    ///   `host:port:database:username:password` for libpq's `PGPASSFILE`
    ///   (the file must be private to its reader: mode 0600 or less).
    ///
    /// Every format follows the current login: a rotation moves them all at
    /// once, and only `previous-*` and `next-*` name the other login.
    #[serde(default = "default_formats")]
    #[schemars(length(min = 1, max = 4), extend("x-kubernetes-list-type" = "set"))]
    #[x_kube(validation = Rule::new("'Default' in self").message("must include Default: the backup agent and rotation read its keys"))]
    pub format: Vec<CredentialFormat>,
    /// Rotate the password this often (a Go duration such as `720h`, at
    /// least `1h`). No scheduled rotation when unset; the annotation
    /// `servicedb.dev/rotate-credentials` (any new value) rotates on demand.
    /// A rotation switches the Secret to the service's other login with a
    /// fresh password; the replaced login keeps working for `gracePeriod`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new("self.matches('^([0-9]+(ns|us|ms|s|m|h))+$') && duration(self) >= duration('1h')").message("must be a duration such as 720h, at least 1h"))]
    pub rotate_every: Option<String>,
    /// How long the replaced login keeps working after a rotation, so that
    /// pods re-read the Secret (mounted Secrets are refreshed within about a
    /// minute; pods that read it through `env` need a rollout). A Go duration
    /// between `1s` and `168h`; `1h` when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new("self.matches('^([0-9]+(ns|us|ms|s|m|h))+$') && duration(self) >= duration('1s') && duration(self) <= duration('168h')").message("must be a duration between 1s and 168h, such as 1h"))]
    pub grace_period: Option<String>,
    /// After a rotation, restart the owner's Deployments and StatefulSets
    /// (those whose pod template matches `owner.podSelector`) that still run
    /// pods started with the previous password, by setting the annotation
    /// `servicedb.dev/password-issued-at` on their pod template (as
    /// `kubectl rollout restart` does). Without it, the condition
    /// `CredentialsRolledOut` and, near the end of the grace period, a
    /// Warning Event name the workloads that still need a restart.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub restart_owners: bool,
}

fn default_formats() -> Vec<CredentialFormat> {
    vec![CredentialFormat::Default]
}

/// A key set of the credentials Secret; see `credentials.format`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum CredentialFormat {
    /// `engine`, `host`, `port`, `database`, `username`, `password`, `uri`,
    /// the engine's variable, and `jdbc-url` on Postgres.
    Default,
    /// Spring Boot's `SPRING_DATASOURCE_*`, `SPRING_DATA_REDIS_URL` or
    /// `SPRING_DATA_MONGODB_URI`.
    Spring,
    /// servicebinding.io's `type` and `provider`.
    ServiceBinding,
    /// A libpq password file line under `pgpass` (Postgres only).
    Pgpass,
}

/// Monitoring of the database.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct MonitoringSpec {
    /// Run the engine's standard Prometheus exporter next to the database.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
}

/// How many backups to keep. Older completed backups (scheduled or manual,
/// never the final backup of `deletionPolicy: Snapshot`) are deleted with
/// their archives; the newest completed backup is always kept.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetentionSpec {
    /// Keep this many most recent successful backups.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub keep_last: Option<i32>,
    /// Delete successful backups older than this (a Go duration such as
    /// `720h`, at least `1h`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new("self.matches('^([0-9]+(ns|us|ms|s|m|h))+$') && duration(self) >= duration('1h')").message("must be a duration such as 720h, at least 1h"))]
    pub max_age: Option<String>,
}

/// An S3-compatible bucket.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct S3Destination {
    /// Bucket name.
    #[schemars(length(min = 3, max = 63))]
    pub bucket: String,
    /// Endpoint URL; AWS S3 when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Region of the bucket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Key prefix under which this service's backups are written;
    /// defaults to `<namespace>/<name>/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// Secret (same namespace) with `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY`.
    pub credentials_secret: String,
}

/// A volume to write backups to.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VolumeDestination {
    /// PersistentVolumeClaim (same namespace) that holds the backups.
    pub claim_name: String,
}

/// Where backups go: exactly one of `s3` or `volume`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[x_kube(validation = Rule::new("has(self.s3) != has(self.volume)").message("set exactly one of s3 or volume"))]
pub struct BackupDestination {
    /// An S3-compatible bucket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3: Option<S3Destination>,
    /// A PersistentVolumeClaim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume: Option<VolumeDestination>,
}

/// Regular verification of backups: the latest completed backup is restored
/// into a scratch database (`<database>_verify`) and checked.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
pub struct VerifySpec {
    /// Cron schedule of the verification runs (five fields, or `@daily`…).
    #[schemars(length(max = 128))]
    #[x_kube(validation = Rule::new(CRON_RULE).message(CRON_MESSAGE))]
    pub schedule: String,
}

/// Backups of the service's data. Each field the `ServiceDatabase` leaves
/// unset comes from its class's `backup`; `enabled: false` turns backups off
/// (refused when the class has `backup.required`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupSpec {
    /// `false` turns backups off, class defaults included. On when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Cron schedule of the backups (five fields such as `0 2 * * *`, or
    /// `@daily`), in UTC; the class's when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 128))]
    #[x_kube(validation = Rule::new(CRON_RULE).message(CRON_MESSAGE))]
    pub schedule: Option<String>,
    /// How many backups to keep; the class's when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<RetentionSpec>,
    /// Where the backups are written; the class's when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<BackupDestination>,
    /// Restore-and-check runs of the latest backup; the class's when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify: Option<VerifySpec>,
    /// Whether deleting a `DatabaseBackup` by hand keeps its archive in the
    /// destination (`true`, the default: only the record goes) or deletes it
    /// too (`false`). Retention always deletes the archives it prunes, and a
    /// namespace being deleted never deletes archives. The class's when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retain_archives_on_delete: Option<bool>,
}

/// How a node drain may treat a dedicated instance (its
/// PodDisruptionBudget).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum Disruption {
    /// `minAvailable: 1`: a drain waits until the pod is deleted by hand (or
    /// the policy is changed), so the database never goes down unannounced.
    #[default]
    Protect,
    /// `maxUnavailable: 1`: a drain evicts the pod and the database is down
    /// until it runs again on another node.
    Allow,
}

/// A cron schedule as the API server can check it: a macro, or five fields
/// made of digits, names, `*`, `,`, `-`, `/` and `?`. The controller parses it
/// fully and reports anything subtler as a condition.
pub const CRON_RULE: &str = r"self.matches('^(@(yearly|annually|monthly|weekly|daily|midnight|hourly)|[0-9A-Za-z*?,/-]+( +[0-9A-Za-z*?,/-]+){4})$')";
pub const CRON_MESSAGE: &str =
    "must be a cron schedule with five fields such as '0 2 * * *', or a macro such as @daily";

/// Resource requests and limits of the database container.
pub type Resources = ResourceRequirements;

/// The standard `Condition` list schema: a map keyed by `type`, so that
/// server-side apply from several managers merges instead of replacing.
pub fn conditions_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let mut schema =
        generator.subschema_for::<Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>>();
    schema.insert("x-kubernetes-list-type".into(), "map".into());
    schema.insert(
        "x-kubernetes-list-map-keys".into(),
        serde_json::json!(["type"]),
    );
    schema
}

/// Where and how the database's pods run, and the pods of its backup,
/// verify and restore Jobs. Each field the ServiceDatabase leaves unset comes
/// from its class's `pod`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodSettings {
    /// Nodes the pods may run on, by label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<std::collections::BTreeMap<String, String>>,
    /// Taints the pods tolerate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerations: Option<Vec<k8s_openapi::api::core::v1::Toleration>>,
    /// Node and pod (anti-)affinity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<k8s_openapi::api::core::v1::Affinity>,
    /// How the pods spread over zones and nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topology_spread_constraints:
        Option<Vec<k8s_openapi::api::core::v1::TopologySpreadConstraint>>,
    /// The pods' PriorityClass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub priority_class_name: Option<String>,
    /// Secrets (this namespace) to pull the images with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_secrets: Option<Vec<k8s_openapi::api::core::v1::LocalObjectReference>>,
    /// Extra labels on the pods; servicedb's own (`servicedb.dev/*`,
    /// `app.kubernetes.io/*`) cannot be set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.all(k, !k.startsWith('servicedb.dev/') && !k.startsWith('app.kubernetes.io/'))").message("servicedb.dev/ and app.kubernetes.io/ labels are servicedb's own"))]
    pub labels: Option<std::collections::BTreeMap<String, String>>,
    /// Extra annotations on the pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<std::collections::BTreeMap<String, String>>,
    /// The uid the engine runs as, its group and the volume's group: the
    /// image's own (999 for Debian's postgres and redis) when unset. Set it
    /// for images built with another user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 2147483647))]
    pub run_as_user: Option<i64>,
}
