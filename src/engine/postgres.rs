//! PostgreSQL: the official `postgres` image, run by the instance manager.

use super::tls::TlsMode;
use super::{Connection, EngineSpec, encode_userinfo};

/// PostgreSQL.
pub struct Postgres;

impl EngineSpec for Postgres {
    fn default_image(&self) -> &'static str {
        "docker.io/library/postgres"
    }
    fn port(&self) -> i32 {
        5432
    }
    fn port_name(&self) -> &'static str {
        "postgres"
    }
    fn admin_username(&self) -> &'static str {
        "postgres"
    }
    fn run_as_user(&self) -> i64 {
        // The uid and gid of the `postgres` user in the official image.
        999
    }
    fn customary_variable(&self) -> &'static str {
        "DATABASE_URL"
    }
    fn uri(&self, c: &Connection<'_>) -> String {
        // libpq's names for the two modes; `verify-full` finds the CA at
        // PGSSLROOTCERT (the Secret's `ca.crt`, mounted by the client).
        let sslmode = match c.tls {
            TlsMode::Disable => "",
            TlsMode::Require => "?sslmode=require",
            TlsMode::VerifyFull => "?sslmode=verify-full",
        };
        format!(
            "postgresql://{}:{}@{}:{}/{}{sslmode}",
            encode_userinfo(c.username),
            encode_userinfo(c.password),
            c.host,
            c.port,
            encode_userinfo(c.database)
        )
    }
    fn versions(&self) -> &'static [&'static str] {
        &["15", "16", "17", "18"]
    }
    fn default_version(&self) -> &'static str {
        "17"
    }
    fn default_resources(&self) -> k8s_openapi::api::core::v1::ResourceRequirements {
        super::resources("100m", "256Mi", "512Mi")
    }
    fn dedicated_supported(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uri_encodes_credentials() {
        let c = Connection {
            host: "orders-db.shop.svc",
            port: 5432,
            database: "orders",
            username: "orders",
            password: "a/b@c",
            tls: TlsMode::Disable,
        };
        assert_eq!(
            Postgres.uri(&c),
            "postgresql://orders:a%2Fb%40c@orders-db.shop.svc:5432/orders"
        );
        for (tls, sslmode) in [
            (TlsMode::Require, "require"),
            (TlsMode::VerifyFull, "verify-full"),
        ] {
            assert_eq!(
                Postgres.uri(&Connection { tls, ..c }),
                format!(
                    "postgresql://orders:a%2Fb%40c@orders-db.shop.svc:5432/orders?sslmode={sslmode}"
                )
            );
        }
    }
}
