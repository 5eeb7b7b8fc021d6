//! `DatabaseClass`: a platform team's pre-approved engine configuration.

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{
    BackupDestination, CRON_MESSAGE, CRON_RULE, Disruption, Engine, Isolation, Resources,
    RetentionSpec, VerifySpec,
};

/// A pre-approved database engine with its allowed versions and the defaults
/// every `ServiceDatabase` of this class gets, like a StorageClass. Exactly
/// one class per engine should be marked `default`.
// Each `printcolumn(...)` repeats `type_`; that is kube's syntax, not a mistake.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[kube(
    group = "servicedb.dev",
    version = "v1alpha1",
    kind = "DatabaseClass",
    shortname = "dbc",
    category = "servicedb",
    printcolumn(name = "Engine", type_ = "string", json_path = ".spec.engine"),
    printcolumn(name = "Default", type_ = "boolean", json_path = ".spec.default"),
    status = "DatabaseClassStatus",
    printcolumn(name = "Versions", type_ = "string", json_path = ".status.versions"),
    printcolumn(
        name = "Default Version",
        type_ = "string",
        json_path = ".status.defaultVersion"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(
    validation = Rule::new("!has(self.defaultVersion) || !has(self.versions) || self.defaultVersion in self.versions").message("defaultVersion must be one of versions").field_path(".defaultVersion"),
)]
#[serde(rename_all = "camelCase")]
pub struct DatabaseClassSpec {
    /// The engine this class approves. Cannot be changed.
    #[x_kube(validation = Rule::new("self == oldSelf").message("engine is immutable"))]
    pub engine: Engine,

    /// This is the class used by `ServiceDatabase`s of this engine that name
    /// no class.
    #[serde(default)]
    pub default: bool,

    /// Major versions a `ServiceDatabase` may ask for, such as `["16", "17"]`;
    /// every version servicedb supports for the engine when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(length(min = 1, max = 16)))]
    pub versions: Vec<String>,

    /// The version used when a `ServiceDatabase` names none; the engine's
    /// default when it is allowed, else the last entry of `versions`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16))]
    pub default_version: Option<String>,

    /// Container image repository for the engine, without tag (the tag is the
    /// version); the engine's official image when unset. Use it for a mirror.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,

    /// Isolations a `ServiceDatabase` of this class may use; all when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_isolations: Option<Vec<Isolation>>,

    /// Data volume size when the `ServiceDatabase` names none (the engine's
    /// default when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new("isQuantity(self)").message("must be a quantity such as 10Gi"))]
    pub storage_size: Option<String>,

    /// StorageClass for data volumes when the `ServiceDatabase` names none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,

    /// Default resources of the database container (the engine's defaults
    /// when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,

    /// Backup settings every `ServiceDatabase` of this class gets, field by
    /// field, unless it sets that field in its own `spec.backup`; and
    /// whether backups are required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<ClassBackupSpec>,

    /// Monitoring every `ServiceDatabase` of this class gets unless it sets
    /// `spec.monitoring.enabled` itself; whether monitoring is required; and
    /// the exporter image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monitoring: Option<ClassMonitoringSpec>,

    /// Default `disruption` of the class's dedicated instances (`Protect`
    /// when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disruption: Option<Disruption>,

    /// Default `pod` settings of the class's databases, field by field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<super::common::PodSettings>,
}

/// A class's backup defaults.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClassBackupSpec {
    /// A `ServiceDatabase` of this class must have backups: one with
    /// `backup.enabled: false`, or with no schedule or destination of its
    /// own or from this class, is refused naming this class.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub required: bool,
    /// Default cron schedule of the backups, in UTC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 128))]
    #[x_kube(validation = Rule::new(CRON_RULE).message(CRON_MESSAGE))]
    pub schedule: Option<String>,
    /// Default retention.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<RetentionSpec>,
    /// Default destination. An S3 `credentialsSecret` is looked up in each
    /// `ServiceDatabase`'s namespace; the default prefix
    /// `<namespace>/<name>/` keeps databases apart in a shared bucket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<BackupDestination>,
    /// Default verification runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify: Option<VerifySpec>,
    /// Default `backup.retainArchivesOnDelete` (`true` when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retain_archives_on_delete: Option<bool>,
}

/// A class's monitoring defaults.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!self.required || !has(self.enabled) || self.enabled").message("a class that requires monitoring cannot turn it off by default").field_path(".enabled"))]
pub struct ClassMonitoringSpec {
    /// Default of `spec.monitoring.enabled` (off when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Every `ServiceDatabase` of this class is monitored: one with
    /// `monitoring.enabled: false` is refused (reason `MonitoringRequired`),
    /// naming this class.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub required: bool,
    /// Container image repository of the engine's exporter, without tag
    /// (the tag is the exporter version servicedb pins); the upstream
    /// exporter image when unset. Use it for a mirror.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub exporter_image: Option<String>,
}

/// What the class allows in effect, for `kubectl get databaseclasses`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DatabaseClassStatus {
    /// The allowed versions, joined: `15, 16, 17` (every supported version
    /// when `spec.versions` is empty).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub versions: Option<String>,
    /// The version a ServiceDatabase that names none gets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_version: Option<String>,
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}
