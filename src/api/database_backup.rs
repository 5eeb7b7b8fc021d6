//! `DatabaseBackup`: one backup run.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{BackupDestination, Engine, LocalObjectRef, conditions_schema};

/// One backup of a `ServiceDatabase`, taken on schedule or on demand (create
/// one by hand to back up now). Its status says where the archive is, its
/// size and checksum, and whether a restore verified it.
// Each `printcolumn(...)` repeats `type_`; that is kube's syntax, not a mistake.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "servicedb.dev",
    version = "v1alpha1",
    kind = "DatabaseBackup",
    namespaced,
    shortname = "dbb",
    category = "servicedb",
    status = "DatabaseBackupStatus",
    printcolumn(
        name = "Database",
        type_ = "string",
        json_path = ".spec.serviceDatabaseRef.name"
    ),
    printcolumn(name = "Trigger", type_ = "string", json_path = ".spec.trigger"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Size", type_ = "string", json_path = ".status.size"),
    printcolumn(name = "Verified", type_ = "boolean", json_path = ".status.verified"),
    printcolumn(name = "Completed", type_ = "date", json_path = ".status.completedAt"),
    printcolumn(
        name = "Bytes",
        type_ = "integer",
        priority = 1,
        json_path = ".status.sizeBytes"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    validation = Rule::new("size(self.metadata.name) <= 63").message("metadata.name must be at most 63 characters: it labels the backup's Jobs and names its archive")
)]
#[serde(rename_all = "camelCase")]
pub struct DatabaseBackupSpec {
    /// The `ServiceDatabase` (same namespace) to back up.
    pub service_database_ref: LocalObjectRef,
    /// Why this backup exists.
    #[serde(default)]
    pub trigger: BackupTrigger,
    /// Deleting this `DatabaseBackup` keeps its archive (`true`) or deletes
    /// it too (`false`). When unset, the `ServiceDatabase`'s
    /// `backup.retainArchivesOnDelete` decides, and keeps it when that is
    /// unset or the `ServiceDatabase` is gone. Scheduled and final backups
    /// get it from the `ServiceDatabase` when they are recorded; retention
    /// sets it to `false` before it prunes a backup. While the namespace is
    /// being deleted the archive is always kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retain_archive_on_delete: Option<bool>,
}

/// Why a backup was taken.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum BackupTrigger {
    /// Created by hand.
    #[default]
    Manual,
    /// Created by the schedule.
    Scheduled,
    /// The final backup of `deletionPolicy: Snapshot`.
    Final,
}

/// Phase of a backup run.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum BackupPhase {
    /// Waiting to run.
    #[default]
    Pending,
    /// The backup job runs.
    Running,
    /// The archive is stored.
    Completed,
    /// The run failed; see the conditions.
    Failed,
}

/// Observed state of a `DatabaseBackup`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DatabaseBackupStatus {
    /// Phase of the run.
    #[serde(default)]
    pub phase: BackupPhase,
    /// Conditions: `Completed`, `Verified`; `Reconciling` and `Stalled` for
    /// kstatus readers such as Flux.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
    /// When the run started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,
    /// When the archive was complete.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<Time>,
    /// Where the archive is (`s3://bucket/prefix/name` or
    /// `file:///backup/prefix/name` on the destination volume).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    /// Size of the archive in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<i64>,
    /// `sizeBytes` for humans (`5.5 MiB`), for `kubectl get`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<String>,
    /// `sha256:` checksum of the archive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum: Option<String>,
    /// How the newest verification of this archive ended: `true` when it
    /// was restored into a scratch database and checked, `false` when that
    /// failed; unset until `spec.backup.verify` has run on it. The
    /// ServiceDatabase's `status.lastVerifiedBackup` names the last
    /// verified backup and its restore time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verified: Option<bool>,
    /// The engine of the backed-up database.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine: Option<Engine>,
    /// The destination the archive was written to, as the ServiceDatabase
    /// said when the run started: restores and the deletion of the archive
    /// use it, even after the ServiceDatabase is gone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<BackupDestination>,
    /// The Job that takes the backup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_name: Option<String>,
}

/// A byte count in binary units with one decimal: `512 B`, `1.5 KiB`,
/// `5.5 MiB`.
pub fn human_size(bytes: i64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1023.95 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    #[test]
    fn sizes_read_as_a_human_writes_them() {
        for (bytes, text) in [
            (0, "0 B"),
            (1023, "1023 B"),
            (1024, "1.0 KiB"),
            (1536, "1.5 KiB"),
            (5_767_168, "5.5 MiB"),
            (1_048_575, "1.0 MiB"),
            (3 * 1024 * 1024 * 1024, "3.0 GiB"),
            (i64::MAX, "8.0 EiB"),
        ] {
            assert_eq!(super::human_size(bytes), text, "{bytes}");
        }
    }
}
