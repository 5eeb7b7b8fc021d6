//! The exporter's own login on a dedicated instance: a fixed name no service
//! can have, a password derived from the administrator's (so the operator
//! keeps no extra state and a rotated admin password rotates it too), and
//! only the privileges the engine's exporter reads with: PostgreSQL's
//! `pg_monitor`, a Redis ACL user limited to server statistics, MongoDB's
//! `clusterMonitor`. The instance manager creates it from the keys below
//! of the administrator Secret, and removes it when they are gone.

use sha2::{Digest, Sha256};
use tokio_postgres::Client;

use super::postgres_users::{self, UserError, quote_ident};
use super::redis_acl::{AclError, AclUser};

/// The monitoring login of every engine. Service logins of dedicated
/// instances are made from Kubernetes names with `-` turned into `_`, so
/// none can be called this.
pub const USERNAME: &str = "servicedb-monitor";
/// Keys of the administrator Secret holding the monitoring login; the
/// exporter reads them as environment variables.
pub const USERNAME_KEY: &str = "monitoring-username";
pub const PASSWORD_KEY: &str = "monitoring-password";

/// Versioned, so that a future derivation can never collide with this one.
const LABEL: &[u8] = b"servicedb monitoring password v1\0";

/// hex(SHA-256(label ‖ admin password)): stable for one admin password,
/// and telling nothing about it.
pub fn derive_password(admin_password: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(LABEL);
    hasher.update(admin_password.as_bytes());
    hasher
        .finalize()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// What the PostgreSQL login may do besides `pg_monitor`: nothing, and
/// at most a few sessions at once.
const POSTGRES_ATTRIBUTES: &str =
    "LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS CONNECTION LIMIT 3";

/// Creates or repairs the PostgreSQL monitoring login: the attributes
/// above, member of `pg_monitor` (statistics of every database, sizes
/// included; no table data), this password. Returns whether the password
/// changed.
pub async fn ensure_postgres(
    client: &Client,
    username: &str,
    password: &str,
) -> Result<bool, UserError> {
    postgres_users::validate_role_name(username)?;
    postgres_users::validate_password(password)?;
    let exists = client
        .query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[&username])
        .await
        .map_err(|error| UserError::Database {
            action: "look up the monitoring role",
            error,
        })?
        .is_some();
    let role = quote_ident(username);
    let verb = if exists { "ALTER" } else { "CREATE" };
    for (action, sql) in [
        (
            "create the monitoring role",
            format!("{verb} ROLE {role} {POSTGRES_ATTRIBUTES}"),
        ),
        ("grant pg_monitor", format!("GRANT pg_monitor TO {role}")),
    ] {
        client
            .simple_query(&sql)
            .await
            .map_err(|error| UserError::Database { action, error })?;
    }
    postgres_users::set_password(client, username, password).await
}

/// Drops the PostgreSQL monitoring login if there is one (it owns nothing).
pub async fn drop_postgres(client: &Client, username: &str) -> Result<(), UserError> {
    postgres_users::validate_role_name(username)?;
    client
        .simple_query(&format!("DROP ROLE IF EXISTS {}", quote_ident(username)))
        .await
        .map_err(|error| UserError::Database {
            action: "drop the monitoring role",
            error,
        })?;
    Ok(())
}

/// What redis_exporter runs on a scrape, and nothing more: `INFO` (every
/// statistic it exports), `CLIENT SETNAME`, `SLOWLOG LEN`, `LATENCY LATEST`
/// and `LATENCY HISTOGRAM` (Redis 7.0 and later; servicedb runs 7.2 and
/// later). No key, no channel, and not `CONFIG GET` (it would reveal the
/// server's configuration, replication passwords included; the exporter
/// then assumes 16 databases and exports no `redis_config_*` series) nor
/// `SLOWLOG GET` (a slow command's arguments are the service's data; the
/// exporter then omits the last slow command's id and duration).
pub const REDIS_RULES: [&str; 7] = [
    "resetkeys",
    "resetchannels",
    "+info",
    "+client|setname",
    "+slowlog|len",
    "+latency|latest",
    "+latency|histogram",
];

/// The Redis monitoring user with [`REDIS_RULES`].
pub fn redis_user(username: &str, password: &str) -> Result<AclUser, AclError> {
    AclUser::with_rules(
        username,
        password,
        REDIS_RULES.iter().map(|rule| (*rule).to_owned()).collect(),
    )
}

/// MongoDB: `clusterMonitor` on `admin` (serverStatus, dbStats, replica set
/// status; no documents), and `read` on `local` for the oplog's window.
pub fn mongodb_roles() -> [(&'static str, &'static str); 2] {
    [("clusterMonitor", "admin"), ("read", "local")]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_is_stable_long_and_tells_nothing_of_the_admins() {
        let one = derive_password("admin-secret");
        assert_eq!(one, derive_password("admin-secret"));
        assert_ne!(one, derive_password("admin-secret2"));
        assert_eq!(one.len(), 64);
        assert!(one.chars().all(|c| c.is_ascii_hexdigit()));
        assert!(!one.contains("admin-secret"));
    }

    #[test]
    fn no_dedicated_service_login_can_take_the_monitoring_name() {
        // Dedicated identifiers are the Kubernetes name with '-' as '_'.
        assert!(USERNAME.contains('-'));
        assert!(crate::engine::redis_acl::validate_username(USERNAME).is_ok());
        assert!(postgres_users::validate_role_name(USERNAME).is_ok());
    }

    #[test]
    fn the_redis_user_reads_statistics_only() {
        let user = redis_user(USERNAME, "pw").expect("user");
        let rules = user.rules();
        assert_eq!(rules[0], "reset", "replaces whatever the user had");
        assert!(rules.contains(&"+info".to_owned()));
        for forbidden in [
            "~*",
            "%R~*",
            "&*",
            "+@all",
            "+config|get",
            "+slowlog|get",
            "+client|list",
            "+keys",
            "+get",
        ] {
            assert!(!rules.contains(&forbidden.to_owned()), "{forbidden}");
        }
        assert!(
            rules.iter().all(|r| !r.contains("pw")),
            "only the password's hash"
        );
    }
}
