//! `manifest.json`: what a backup is, written next to its archive after the
//! archive is complete. Its presence is what makes a backup exist: a
//! directory without one is an unfinished or failed run.

use serde::{Deserialize, Serialize};

/// File name of the archive inside a backup's directory.
pub const ARCHIVE_NAME: &str = "archive.zst";
/// File name of the manifest inside a backup's directory.
pub const MANIFEST_NAME: &str = "manifest.json";

/// A completed backup. The agent prints it as one JSON line and writes it to
/// the termination log; the controller copies it into the `DatabaseBackup`'s
/// status.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    /// `postgres`, `redis` or `mongodb`.
    pub engine: String,
    /// The dump format inside the zstd stream: `pg_dump-custom`,
    /// `servicedb-redis-dump-v1` or `servicedb-mongodb-bson-v1`.
    pub format: String,
    /// The server's version as it reported it when the dump started.
    pub server_version: String,
    /// The database (Postgres, MongoDB) or logical database number (Redis)
    /// that was dumped.
    pub database: String,
    /// Redis: the key prefix the dump was limited to, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_prefix: Option<String>,
    /// RFC 3339, UTC.
    pub started_at: String,
    /// RFC 3339, UTC: when the archive was completely stored.
    pub completed_at: String,
    /// Size of the stored (compressed) archive.
    pub size_bytes: u64,
    /// Size of the dump before compression.
    pub raw_bytes: u64,
    /// `sha256:<hex>` of the stored archive.
    pub checksum: String,
    /// Key of the archive in the store (relative to the bucket or directory).
    pub archive: String,
    /// URL of the backup's directory: `s3://bucket/prefix/name` or
    /// `file:///dir/name`.
    pub location: String,
    /// What the dump held, counted by the agent: tables (Postgres, counted
    /// when the dump started), keys (Redis) or documents (MongoDB). Verify
    /// uses it to tell an empty restore from an empty database.
    pub items: u64,
}

impl Manifest {
    /// The hex digest of `checksum`, if it has the `sha256:` form.
    pub fn sha256_hex(&self) -> Option<&str> {
        self.checksum.strip_prefix("sha256:")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Manifest {
        Manifest {
            engine: "postgres".to_owned(),
            format: "pg_dump-custom".to_owned(),
            server_version: "15.14".to_owned(),
            database: "orders".to_owned(),
            key_prefix: None,
            started_at: "2026-12-01T02:00:00Z".to_owned(),
            completed_at: "2026-12-01T02:00:07Z".to_owned(),
            size_bytes: 1234,
            raw_bytes: 5678,
            checksum: "sha256:00ff".to_owned(),
            archive: "backups/orders-1/archive.zst".to_owned(),
            location: "s3://bucket/backups/orders-1".to_owned(),
            items: 3,
        }
    }

    #[test]
    fn serialises_with_camel_case_names() {
        let json = serde_json::to_value(sample()).expect("json");
        let mut keys: Vec<&str> = json
            .as_object()
            .expect("object")
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "archive",
                "checksum",
                "completedAt",
                "database",
                "engine",
                "format",
                "items",
                "location",
                "rawBytes",
                "serverVersion",
                "sizeBytes",
                "startedAt",
            ]
        );
    }

    #[test]
    fn round_trips() {
        let mut manifest = sample();
        manifest.key_prefix = Some("cart:".to_owned());
        let text = serde_json::to_string(&manifest).expect("json");
        assert!(text.contains(r#""keyPrefix":"cart:""#), "{text}");
        let back: Manifest = serde_json::from_str(&text).expect("parse");
        assert_eq!(back, manifest);
        assert_eq!(back.sha256_hex(), Some("00ff"));
    }
}
