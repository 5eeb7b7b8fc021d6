//! `DatabaseServer`: a server that hosts many services' databases.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{
    Engine, LocalObjectRef, MonitoringSpec, Resources, StorageSpec, conditions_schema,
};

/// A database server that hosts the databases of many services (isolation
/// `Database` or `Schema`): either an existing server servicedb reaches over
/// the network (`external`) or one servicedb runs (`managed`).
// Each `printcolumn(...)` repeats `type_`; that is kube's syntax, not a mistake.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[kube(
    group = "servicedb.dev",
    version = "v1alpha1",
    kind = "DatabaseServer",
    namespaced,
    shortname = "dbs",
    category = "servicedb",
    status = "DatabaseServerStatus",
    printcolumn(name = "Mode", type_ = "string", json_path = ".status.mode"),
    printcolumn(name = "Engine", type_ = "string", json_path = ".spec.engine"),
    printcolumn(
        name = "Version",
        type_ = "string",
        json_path = ".status.serverVersion"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(name = "Databases", type_ = "integer", json_path = ".status.databases"),
    printcolumn(
        name = "Reachable",
        type_ = "string",
        priority = 1,
        json_path = ".status.conditions[?(@.type==\"Reachable\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    validation = Rule::new("!has(self.spec.managed) || size(self.metadata.name) <= 42").message("a managed DatabaseServer's metadata.name must be at most 42 characters: its instance is the StatefulSet <name>-server-db")
)]
#[x_kube(
    validation = Rule::new("has(self.external) != has(self.managed)").message("set exactly one of external or managed"),
)]
#[serde(rename_all = "camelCase")]
pub struct DatabaseServerSpec {
    /// The engine of the server. Cannot be changed.
    #[x_kube(validation = Rule::new("self == oldSelf").message("engine is immutable"))]
    pub engine: Engine,
    /// An existing server reached over the network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external: Option<ExternalServer>,
    /// A server servicedb runs in this namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed: Option<ManagedServer>,
    /// Which namespaces may place databases on this server.
    #[serde(default)]
    pub allowed_namespaces: AllowedNamespaces,
    /// Postgres: the database in which isolation `Schema` gives every service
    /// a schema of its own (created when missing); `servicedb` when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub schema_database: Option<String>,
}

/// An existing server.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExternalServer {
    /// Host name or IP address.
    #[schemars(length(min = 1, max = 253))]
    pub host: String,
    /// TCP port.
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// Secret (same namespace) with `username` and `password` of an
    /// administrator allowed to create users and databases.
    pub admin_secret_ref: LocalObjectRef,
    /// TLS towards the server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSpec>,
    /// Prometheus monitoring of the server: the engine's exporter as a
    /// Deployment `<name>-exporter` in this namespace, reporting every
    /// database the server hosts (PostgreSQL: per-database series labelled
    /// `datname`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monitoring: Option<ExternalMonitoring>,
}

/// The exporter of an external server. servicedb makes no login on a server
/// it does not run beyond the services' own: the exporter logs in as a
/// statistics-only login the server's administrators made (PostgreSQL: a
/// member of `pg_monitor`; Redis: an ACL user allowed `INFO` and the like;
/// MongoDB: `clusterMonitor`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[x_kube(validation = Rule::new("self.enabled != true || has(self.credentialsSecretRef)").message("monitoring.credentialsSecretRef is required when monitoring is enabled"))]
#[serde(rename_all = "camelCase")]
pub struct ExternalMonitoring {
    /// Run the exporter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Secret (same namespace) with `username` and `password` of the
    /// exporter's login. The operator only checks that both keys are there;
    /// their values never reach its log, status or Events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret_ref: Option<LocalObjectRef>,
    /// Image repository of the exporter (a mirror of the upstream one); the
    /// pinned tag stays.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 255))]
    pub exporter_image: Option<String>,
}

impl ExternalServer {
    /// The exporter's settings when monitoring is on.
    pub fn monitored(&self) -> Option<&ExternalMonitoring> {
        self.monitoring.as_ref().filter(|m| m.enabled == Some(true))
    }
}

/// TLS settings towards a server.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TlsSpec {
    /// `Disable`, `Require` or `VerifyFull`. Unset: `VerifyFull` when
    /// `caSecretRef` is given, else `Disable`. `Require` encrypts but does
    /// not authenticate the server: whoever can intercept the connection can
    /// pose as the server with any certificate. PostgreSQL logins then
    /// still require SCRAM with channel binding, so an impostor gets no
    /// password; a Redis impostor receives the administrator's password
    /// (AUTH); a MongoDB impostor gets a SCRAM proof it can try to guess
    /// offline. Use `VerifyFull` with the server's CA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<TlsMode>,
    /// Secret (same namespace) whose `ca.crt` verifies the server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_ref: Option<LocalObjectRef>,
}

// TLS mode. (No doc comment: the CRD would show it instead of the
// field's, which says what each mode protects.)
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum TlsMode {
    /// Plain TCP.
    #[default]
    Disable,
    /// Encrypted, but the server is not authenticated: the certificate is
    /// not verified, so it protects against eavesdroppers, not against an
    /// impostor on the path.
    Require,
    /// Encrypted and verified against the CA and the host name.
    VerifyFull,
}

/// A server servicedb runs.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ManagedServer {
    /// Engine major version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The `DatabaseClass` that approves it; the engine's default when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class_name: Option<String>,
    /// Data volume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<StorageSpec>,
    /// CPU and memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,
    /// Prometheus monitoring of the server: the engine's exporter next to
    /// it, as on a monitored dedicated instance, reporting every database
    /// it hosts (PostgreSQL: per-database series labelled `datname`). The
    /// class's `monitoring.exporterImage` applies; its other monitoring
    /// settings are the services'.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monitoring: Option<MonitoringSpec>,
}

/// Which namespaces may use a server, as Gateway API listeners say it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[x_kube(validation = Rule::new("self.from == 'Selector' ? has(self.selector) : !has(self.selector)").message("selector is required exactly when from is Selector"))]
pub struct AllowedNamespaces {
    /// `Same` (the server's own namespace, the default), `All`, or `Selector`.
    #[serde(default)]
    pub from: NamespacesFrom,
    /// Namespaces whose labels match, when `from` is `Selector`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
}

/// See `AllowedNamespaces`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum NamespacesFrom {
    /// Only the server's own namespace.
    #[default]
    Same,
    /// Every namespace.
    All,
    /// Namespaces matching `selector`.
    Selector,
}

/// Observed state of a `DatabaseServer`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DatabaseServerStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `Reachable`; `Reconciling` and `Stalled` for kstatus
    /// readers such as Flux.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
    /// Version the server reports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_version: Option<String>,
    /// Number of `ServiceDatabase`s placed on this server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub databases: Option<i32>,
    /// `External` or `Managed`, as the spec says (for `kubectl get`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<ServerMode>,
}

/// Whether servicedb reaches a server or runs it.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum ServerMode {
    /// `spec.external`: an existing server reached over the network.
    External,
    /// `spec.managed`: a server servicedb runs.
    Managed,
}

impl ServerMode {
    /// The mode a spec asks for.
    pub fn of(spec: &DatabaseServerSpec) -> ServerMode {
        if spec.managed.is_some() {
            ServerMode::Managed
        } else {
            ServerMode::External
        }
    }
}
