//! `spec.postgres.parameters`: the PostgreSQL settings a service team may
//! choose, how they reach the server and which of them need a restart.
//!
//! The operator puts them, rendered as a configuration file, under
//! [`SECRET_KEY`] of the instance's administrator Secret, which the instance
//! manager already re-reads on every sync: it writes the file [`CONF_FILE`]
//! (included after servicedb's own settings) and reloads the server. Those
//! that PostgreSQL reads only at start ([`needs_restart`]) also go into a
//! hash on the pod template, so changing one rolls the pod.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

/// The administrator Secret's key holding the rendered file.
pub const SECRET_KEY: &str = "postgresql-parameters.conf";
/// The file, in the data directory, that servicedb.conf includes.
pub const CONF_FILE: &str = "servicedb-parameters.conf";
/// The pod template annotation with the hash of the parameters that need a
/// restart.
pub const RESTART_ANNOTATION: &str = "servicedb.dev/restart-parameters";

/// Settings servicedb sets itself, or whose change would break it:
/// addresses and sockets, authentication and TLS files, the log (the
/// container's stderr), WAL archiving (servicedb's backups are logical),
/// libraries the image may not have, file locations, and developer options
/// that risk the data.
const DENIED: &[&str] = &[
    "listen_addresses",
    "port",
    "unix_socket_directories",
    "unix_socket_group",
    "unix_socket_permissions",
    "data_directory",
    "config_file",
    "hba_file",
    "ident_file",
    "external_pid_file",
    "password_encryption",
    "ssl",
    "ssl_cert_file",
    "ssl_key_file",
    "ssl_ca_file",
    "ssl_crl_file",
    "ssl_crl_dir",
    "ssl_passphrase_command",
    "logging_collector",
    "log_destination",
    "log_directory",
    "log_filename",
    "archive_mode",
    "archive_command",
    "archive_library",
    "restore_command",
    "primary_conninfo",
    "shared_preload_libraries",
    "local_preload_libraries",
    "session_preload_libraries",
    "dynamic_library_path",
    // Developer options that risk the data.
    "ignore_invalid_pages",
    "debug_io_direct",
    "zero_damaged_pages",
    "allow_system_table_mods",
];

/// Settings of context `postmaster` (read at server start only) in
/// PostgreSQL 15 to 17 that are not [`DENIED`]. The engine test checks this
/// list against a real server's `pg_settings`.
const RESTART: &[&str] = &[
    "autovacuum_freeze_max_age",
    "autovacuum_max_workers",
    "autovacuum_multixact_freeze_max_age",
    "bonjour",
    "bonjour_name",
    "commit_timestamp_buffers",
    "cluster_name",
    "data_sync_retry",
    "event_source",
    "hot_standby",
    "huge_pages",
    "huge_page_size",
    "io_combine_limit",
    "jit_provider",
    "max_connections",
    "max_files_per_process",
    "max_locks_per_transaction",
    "max_logical_replication_workers",
    "max_notify_queue_pages",
    "max_pred_locks_per_transaction",
    "max_prepared_transactions",
    "max_replication_slots",
    "max_wal_senders",
    "max_worker_processes",
    "min_dynamic_shared_memory",
    "multixact_member_buffers",
    "multixact_offset_buffers",
    "notify_buffers",
    "old_snapshot_threshold",
    "recovery_target",
    "recovery_target_action",
    "recovery_target_inclusive",
    "recovery_target_lsn",
    "recovery_target_name",
    "recovery_target_time",
    "recovery_target_timeline",
    "recovery_target_xid",
    "serializable_buffers",
    "shared_buffers",
    "shared_memory_type",
    "subtransaction_buffers",
    "superuser_reserved_connections",
    "reserved_connections",
    "track_activity_query_size",
    "track_commit_timestamp",
    "transaction_buffers",
    "wal_buffers",
    "wal_decode_buffer_size",
    "wal_level",
    "wal_log_hints",
    "dynamic_shared_memory_type",
];

/// Why a parameter is refused, naming it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("{0:?} is not a PostgreSQL parameter name (lowercase letters, digits, `_` and `.`)")]
    Name(String),
    #[error("{0:?} is set by servicedb and cannot be changed")]
    Managed(String),
    #[error("the value of {0:?} has a control character (such as a newline)")]
    Value(String),
}

/// Checks every parameter: a plain name (`work_mem`, `pg_stat_statements.max`),
/// not one servicedb manages, a value without control characters.
pub fn check(parameters: &BTreeMap<String, String>) -> Result<(), Refused> {
    for (name, value) in parameters {
        let plain = name.starts_with(|c: char| c.is_ascii_lowercase())
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '.');
        if !plain || name.len() > 63 {
            return Err(Refused::Name(name.clone()));
        }
        if is_managed(name) {
            return Err(Refused::Managed(name.clone()));
        }
        if value.chars().any(char::is_control) {
            return Err(Refused::Value(name.clone()));
        }
    }
    Ok(())
}

/// Whether servicedb sets `name` itself (so a service may not).
pub fn is_managed(name: &str) -> bool {
    DENIED.contains(&name)
}

/// Whether PostgreSQL reads `name` only at start.
pub fn needs_restart(name: &str) -> bool {
    RESTART.contains(&name)
}

/// What the `Parameters` condition says: `None` without parameters; else
/// whether any of them restarts the instance when it changes, and which.
pub fn how_applied(parameters: &BTreeMap<String, String>) -> Option<(bool, String)> {
    if parameters.is_empty() {
        return None;
    }
    let (restart, reload): (Vec<&str>, Vec<&str>) = parameters
        .keys()
        .map(String::as_str)
        .partition(|name| needs_restart(name));
    let mut message = Vec::new();
    if !reload.is_empty() {
        message.push(format!(
            "{} reload in the running server",
            reload.join(", ")
        ));
    }
    if !restart.is_empty() {
        message.push(format!(
            "{} {} read at start only: a change restarts the instance",
            restart.join(", "),
            if restart.len() == 1 { "is" } else { "are" }
        ));
    }
    Some((!restart.is_empty(), message.join("; ")))
}

/// The configuration file: one `name = 'value'` line each, values quoted.
pub fn render(parameters: &BTreeMap<String, String>) -> String {
    let mut text = String::from("# spec.postgres.parameters, kept by servicedb.\n");
    for (name, value) in parameters {
        text.push_str(&format!("{name} = {}\n", quote(value)));
    }
    text
}

/// A hash of the parameters that need a restart; `None` when there are none
/// (so that a StatefulSet without them keeps its pod template as it was).
pub fn restart_hash(parameters: &BTreeMap<String, String>) -> Option<String> {
    let restart: Vec<(&String, &String)> = parameters
        .iter()
        .filter(|(name, _)| needs_restart(name))
        .collect();
    if restart.is_empty() {
        return None;
    }
    let mut hasher = Sha256::new();
    for (name, value) in restart {
        hasher.update(name.as_bytes());
        hasher.update([0]);
        hasher.update(value.as_bytes());
        hasher.update([0]);
    }
    let digest = hasher.finalize();
    Some(digest[..8].iter().map(|b| format!("{b:02x}")).collect())
}

/// A postgresql.conf string value.
pub fn quote(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn managed_odd_and_multiline_parameters_are_refused_by_name() {
        assert_eq!(
            check(&params(&[
                ("work_mem", "8MB"),
                ("pg_stat_statements.max", "500")
            ])),
            Ok(())
        );
        assert_eq!(
            check(&params(&[("listen_addresses", "*")])),
            Err(Refused::Managed("listen_addresses".into()))
        );
        assert_eq!(
            check(&params(&[("Work_Mem", "8MB")])),
            Err(Refused::Name("Work_Mem".into()))
        );
        assert_eq!(
            check(&params(&[("work_mem", "8MB\ninclude '/etc/passwd'")])),
            Err(Refused::Value("work_mem".into()))
        );
    }

    #[test]
    fn values_are_quoted_and_only_restart_parameters_change_the_hash() {
        let p = params(&[("work_mem", "8MB"), ("search_path", "a, 'b'")]);
        assert_eq!(
            render(&p),
            "# spec.postgres.parameters, kept by servicedb.\nsearch_path = 'a, ''b'''\nwork_mem = '8MB'\n"
        );
        assert_eq!(restart_hash(&p), None, "reloadable parameters roll nothing");
        let a = restart_hash(&params(&[("work_mem", "8MB"), ("max_connections", "200")]));
        let b = restart_hash(&params(&[("work_mem", "16MB"), ("max_connections", "200")]));
        let c = restart_hash(&params(&[("work_mem", "8MB"), ("max_connections", "300")]));
        assert!(a.is_some());
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn the_condition_names_what_reloads_and_what_restarts() {
        assert_eq!(how_applied(&params(&[])), None);
        assert_eq!(
            how_applied(&params(&[("work_mem", "8MB")])),
            Some((false, "work_mem reload in the running server".into()))
        );
        assert_eq!(
            how_applied(&params(&[("shared_buffers", "1GB"), ("max_connections", "50")])),
            Some((
                true,
                "max_connections, shared_buffers are read at start only: a change restarts the instance"
                    .into()
            ))
        );
    }

    #[test]
    fn no_parameter_is_both_managed_and_a_restart_one() {
        for name in RESTART {
            assert!(!DENIED.contains(name), "{name}");
        }
    }
}
