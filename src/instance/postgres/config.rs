//! The configuration servicedb owns: `servicedb.conf` (included from
//! postgresql.conf, so initdb's file stays as PostgreSQL wrote it) and the
//! whole of `pg_hba.conf`. Pure text, rewritten at every start so that a new
//! servicedb version or new flags take effect on restart.

use std::path::{Path, PathBuf};

use crate::engine::postgres_parameters::quote;

pub(super) const CONF_FILE: &str = "servicedb.conf";
pub(super) const INCLUDE_LINE: &str = "include 'servicedb.conf'";

/// Every connection, local or remote, authenticates with SCRAM-SHA-256;
/// there is no `trust` and no `peer`.
pub(super) const PG_HBA: &str = "\
# Managed by servicedb: rewritten at every start, edits are lost.
# TYPE  DATABASE  USER  ADDRESS    METHOD
local   all       all              scram-sha-256
host    all       all   0.0.0.0/0  scram-sha-256
host    all       all   ::/0       scram-sha-256
";

#[derive(Debug, Clone)]
pub(super) struct Settings {
    pub listen_addresses: String,
    pub port: u16,
    pub socket_dir: PathBuf,
    pub shared_buffers_mib: u64,
    /// `spec.postgres.parameters`, rendered (the admin Secret's key); empty
    /// when there are none.
    pub parameters: String,
}

pub(super) fn servicedb_conf(settings: &Settings) -> String {
    let lines = [
        "# Managed by servicedb: rewritten at every start, edits are lost.".to_owned(),
        format!("listen_addresses = {}", quote(&settings.listen_addresses)),
        format!("port = {}", settings.port),
        format!(
            "unix_socket_directories = {}",
            quote(&settings.socket_dir.to_string_lossy())
        ),
        "password_encryption = 'scram-sha-256'".to_owned(),
        "max_connections = 100".to_owned(),
        format!("shared_buffers = '{}MB'", settings.shared_buffers_mib),
        // The container's log is the server's stderr.
        "logging_collector = off".to_owned(),
        "log_destination = 'stderr'".to_owned(),
        "log_line_prefix = '%m [%p] %q%u@%d '".to_owned(),
        "log_timezone = 'UTC'".to_owned(),
        // The service team's parameters, last: theirs win over defaults above.
        format!(
            "include_if_exists '{}'",
            crate::engine::postgres_parameters::CONF_FILE
        ),
    ];
    let mut text = lines.join("\n");
    text.push('\n');
    text
}

/// postgresql.conf with our include appended, or `None` if it is already there.
pub(super) fn with_include(postgresql_conf: &str) -> Option<String> {
    if postgresql_conf
        .lines()
        .any(|line| line.trim() == INCLUDE_LINE)
    {
        return None;
    }
    let mut text = postgresql_conf.to_owned();
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str("\n# Added by servicedb; its settings override the ones above.\n");
    text.push_str(INCLUDE_LINE);
    text.push('\n');
    Some(text)
}

/// A quarter of the container's memory limit, between 32 MiB and 4 GiB;
/// PostgreSQL's own 128 MiB without a limit.
pub(super) fn shared_buffers_mib(memory_limit_bytes: Option<u64>) -> u64 {
    const MIB: u64 = 1024 * 1024;
    match memory_limit_bytes {
        Some(limit) => (limit / 4 / MIB).clamp(32, 4096),
        None => 128,
    }
}

/// The cgroup (v2, then v1) memory limit of this container, if any.
pub(super) fn memory_limit() -> Option<u64> {
    [
        Path::new("/sys/fs/cgroup/memory.max"),
        Path::new("/sys/fs/cgroup/memory/memory.limit_in_bytes"),
    ]
    .iter()
    .find_map(|path| parse_memory_limit(&std::fs::read_to_string(path).ok()?))
}

fn parse_memory_limit(text: &str) -> Option<u64> {
    // v2 says "max"; v1 says a page-rounded i64::MAX when unlimited.
    text.trim()
        .parse::<u64>()
        .ok()
        .filter(|&limit| limit > 0 && limit < 1 << 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings {
            listen_addresses: "*".into(),
            port: 5433,
            socket_dir: PathBuf::from("/var/lib/servicedb/run"),
            shared_buffers_mib: 128,
            parameters: String::new(),
        }
    }

    #[test]
    fn conf_carries_the_settings() {
        let conf = servicedb_conf(&settings());
        for line in [
            "listen_addresses = '*'",
            "port = 5433",
            "unix_socket_directories = '/var/lib/servicedb/run'",
            "password_encryption = 'scram-sha-256'",
            "max_connections = 100",
            "shared_buffers = '128MB'",
            "log_destination = 'stderr'",
            "logging_collector = off",
        ] {
            assert!(
                conf.lines().any(|l| l == line),
                "missing {line:?} in\n{conf}"
            );
        }
    }

    #[test]
    fn conf_values_are_quoted() {
        let mut s = settings();
        s.socket_dir = PathBuf::from("/odd'dir\\x");
        s.listen_addresses = "127.0.0.1, ::1".into();
        let conf = servicedb_conf(&s);
        assert!(conf.contains("unix_socket_directories = '/odd''dir\\\\x'"));
        assert!(conf.contains("listen_addresses = '127.0.0.1, ::1'"));
    }

    #[test]
    fn hba_never_trusts() {
        let rules: Vec<&str> = PG_HBA
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .collect();
        assert_eq!(rules.len(), 3);
        for rule in rules {
            assert!(rule.ends_with("scram-sha-256"), "{rule}");
        }
        assert!(!PG_HBA.contains("trust") && !PG_HBA.contains("peer") && !PG_HBA.contains("md5"));
    }

    #[test]
    fn include_is_added_once() {
        let original = "max_connections = 100\n#include 'servicedb.conf'";
        let once = with_include(original).expect("added");
        assert!(once.starts_with(original));
        assert!(once.ends_with("\ninclude 'servicedb.conf'\n"));
        assert_eq!(with_include(&once), None);
    }

    #[test]
    fn shared_buffers_follow_the_memory_limit() {
        assert_eq!(shared_buffers_mib(None), 128);
        assert_eq!(shared_buffers_mib(Some(512 * 1024 * 1024)), 128);
        assert_eq!(shared_buffers_mib(Some(2 * 1024 * 1024 * 1024)), 512);
        assert_eq!(shared_buffers_mib(Some(64 * 1024 * 1024)), 32);
        assert_eq!(shared_buffers_mib(Some(1 << 40)), 4096);
        assert_eq!(parse_memory_limit("max\n"), None);
        assert_eq!(parse_memory_limit("9223372036854771712\n"), None);
        assert_eq!(parse_memory_limit("536870912\n"), Some(536870912));
    }
}
