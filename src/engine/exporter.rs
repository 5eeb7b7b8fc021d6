//! The Prometheus exporter each engine is watched with: the upstream
//! project's image at a pinned version, and the port it serves metrics on.

use crate::api::Engine;

/// An engine's exporter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exporter {
    /// Upstream image repository, without tag.
    pub default_image: &'static str,
    /// The pinned version: the image tag.
    pub tag: &'static str,
    /// The port `/metrics` is served on.
    pub port: i32,
}

/// Name of the metrics port on containers and Services.
pub const PORT_NAME: &str = "metrics";

/// The exporter of `engine`.
pub fn exporter(engine: Engine) -> &'static Exporter {
    match engine {
        Engine::Postgres => &POSTGRES,
        Engine::Redis => &REDIS,
        Engine::MongoDB => &MONGODB,
    }
}

/// prometheus-community/postgres_exporter.
const POSTGRES: Exporter = Exporter {
    default_image: "quay.io/prometheuscommunity/postgres-exporter",
    tag: "v0.17.1",
    port: 9187,
};

/// oliver006/redis_exporter.
const REDIS: Exporter = Exporter {
    default_image: "docker.io/oliver006/redis_exporter",
    tag: "v1.74.0",
    port: 9121,
};

/// percona/mongodb_exporter.
const MONGODB: Exporter = Exporter {
    default_image: "docker.io/percona/mongodb_exporter",
    tag: "0.43.1",
    port: 9216,
};

impl Exporter {
    /// `repository:tag`, from the class's repository or the upstream one.
    pub fn image(&self, repository: Option<&str>) -> String {
        format!("{}:{}", repository.unwrap_or(self.default_image), self.tag)
    }
}

/// Where an environment variable of the exporter takes its value from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnvValue {
    Literal(String),
    /// A key of the administrator Secret (never a password in the object).
    SecretKey(&'static str),
}

/// How the exporter runs next to a server listening on `server_port` of
/// the same pod: its arguments and environment. The login comes from the
/// Secret keys of [`crate::engine::monitoring`], as environment variables,
/// never on the command line. Only flags and variables that the pinned
/// versions and Debian's packages (postgres_exporter 0.11, redis_exporter
/// 1.45) both accept.
pub fn command(engine: Engine, server_port: i32) -> (Vec<String>, Vec<(&'static str, EnvValue)>) {
    use super::monitoring::{PASSWORD_KEY, USERNAME_KEY};
    use EnvValue::{Literal, SecretKey};
    let exporter = exporter(engine);
    let listen = format!("--web.listen-address=:{}", exporter.port);
    match engine {
        // The maintenance database: every database's size and statistics
        // are readable from there with pg_monitor.
        Engine::Postgres => (
            vec![listen],
            vec![
                (
                    "DATA_SOURCE_URI",
                    Literal(format!("127.0.0.1:{server_port}/postgres?sslmode=disable")),
                ),
                ("DATA_SOURCE_USER", SecretKey(USERNAME_KEY)),
                ("DATA_SOURCE_PASS", SecretKey(PASSWORD_KEY)),
            ],
        ),
        Engine::Redis => (
            vec![listen],
            vec![
                (
                    "REDIS_ADDR",
                    Literal(format!("redis://127.0.0.1:{server_port}")),
                ),
                ("REDIS_USER", SecretKey(USERNAME_KEY)),
                ("REDIS_PASSWORD", SecretKey(PASSWORD_KEY)),
            ],
        ),
        Engine::MongoDB => (
            vec![listen, "--collector.dbstats".into()],
            vec![
                (
                    "MONGODB_URI",
                    Literal(format!(
                        "mongodb://127.0.0.1:{server_port}/admin?directConnection=true"
                    )),
                ),
                ("MONGODB_USER", SecretKey(USERNAME_KEY)),
                ("MONGODB_PASSWORD", SecretKey(PASSWORD_KEY)),
            ],
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_password_is_ever_an_argument_or_a_literal() {
        for engine in [Engine::Postgres, Engine::Redis, Engine::MongoDB] {
            let (args, env) = command(engine, 1234);
            assert!(
                args.iter().all(|a| !a.contains("pass")),
                "{engine}: {args:?}"
            );
            let secret: Vec<_> = env
                .iter()
                .filter(|(_, v)| matches!(v, EnvValue::SecretKey(_)))
                .collect();
            assert_eq!(
                secret.len(),
                2,
                "{engine}: user and password from the Secret"
            );
            assert!(
                env.iter().any(
                    |(_, v)| matches!(v, EnvValue::Literal(l) if l.contains("127.0.0.1:1234"))
                ),
                "{engine}: the server on the pod's loopback"
            );
        }
    }
}
