//! The Prometheus exporter each engine is watched with: the upstream
//! project's image at a pinned version, and the port it serves metrics on.

use crate::api::Engine;
use crate::api::database_server::TlsMode;

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

/// Where the exporter finds its server and its login.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source<'a> {
    pub host: &'a str,
    pub port: i32,
    pub tls: TlsMode,
    /// The CA file (PEM) that verifies the server, in the exporter's
    /// container, with `VerifyFull`.
    pub ca_file: Option<&'a str>,
    /// Keys of the Secret the login is read from.
    pub username_key: &'static str,
    pub password_key: &'static str,
}

impl Source<'_> {
    /// `host:port`, an IPv6 address in brackets.
    fn address(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// How the exporter runs next to a server listening on `server_port` of
/// the same pod: its arguments and environment. The login comes from the
/// Secret keys of [`crate::engine::monitoring`], as environment variables,
/// never on the command line.
pub fn command(engine: Engine, server_port: i32) -> (Vec<String>, Vec<(&'static str, EnvValue)>) {
    use super::monitoring::{PASSWORD_KEY, USERNAME_KEY};
    command_for(
        engine,
        &Source {
            host: "127.0.0.1",
            port: server_port,
            tls: TlsMode::Disable,
            ca_file: None,
            username_key: USERNAME_KEY,
            password_key: PASSWORD_KEY,
        },
    )
}

/// How the exporter runs against `source`: its arguments and environment,
/// the login as environment variables from the Secret, never on the command
/// line. Only flags and variables that the pinned versions and Debian's
/// packages (postgres_exporter 0.11, redis_exporter 1.45) both accept.
pub fn command_for(
    engine: Engine,
    source: &Source<'_>,
) -> (Vec<String>, Vec<(&'static str, EnvValue)>) {
    use EnvValue::{Literal, SecretKey};
    let exporter = exporter(engine);
    let mut args = vec![format!("--web.listen-address=:{}", exporter.port)];
    let address = source.address();
    let user = SecretKey(source.username_key);
    let password = SecretKey(source.password_key);
    let env = match engine {
        // The maintenance database: every database's size and statistics
        // are readable from there with pg_monitor.
        Engine::Postgres => {
            let mut uri = format!(
                "{address}/postgres?sslmode={}",
                match source.tls {
                    TlsMode::Disable => "disable",
                    TlsMode::Require => "require",
                    TlsMode::VerifyFull => "verify-full",
                }
            );
            if let (TlsMode::VerifyFull, Some(ca)) = (source.tls, source.ca_file) {
                uri.push_str(&format!("&sslrootcert={ca}"));
            }
            vec![
                ("DATA_SOURCE_URI", Literal(uri)),
                ("DATA_SOURCE_USER", user),
                ("DATA_SOURCE_PASS", password),
            ]
        }
        Engine::Redis => {
            let scheme = match source.tls {
                TlsMode::Disable => "redis",
                TlsMode::Require | TlsMode::VerifyFull => "rediss",
            };
            match (source.tls, source.ca_file) {
                (TlsMode::Require, _) => args.push("--skip-tls-verification".into()),
                (TlsMode::VerifyFull, Some(ca)) => args.push(format!("--tls-ca-cert-file={ca}")),
                _ => {}
            }
            vec![
                ("REDIS_ADDR", Literal(format!("{scheme}://{address}"))),
                ("REDIS_USER", user),
                ("REDIS_PASSWORD", password),
            ]
        }
        Engine::MongoDB => {
            args.push("--collector.dbstats".into());
            let tls = match (source.tls, source.ca_file) {
                (TlsMode::Disable, _) => String::new(),
                (TlsMode::Require, _) => "&tls=true&tlsInsecure=true".into(),
                (TlsMode::VerifyFull, Some(ca)) => format!("&tls=true&tlsCAFile={ca}"),
                (TlsMode::VerifyFull, None) => "&tls=true".into(),
            };
            vec![
                (
                    "MONGODB_URI",
                    Literal(format!(
                        "mongodb://{address}/admin?directConnection=true{tls}"
                    )),
                ),
                ("MONGODB_USER", user),
                ("MONGODB_PASSWORD", password),
            ]
        }
    };
    (args, env)
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

    fn external(tls: TlsMode, ca_file: Option<&str>) -> Source<'_> {
        Source {
            host: "pg.platform.example",
            port: 6000,
            tls,
            ca_file,
            username_key: "username",
            password_key: "password",
        }
    }

    fn literal(env: &[(&'static str, EnvValue)], name: &str) -> String {
        env.iter()
            .find_map(|(n, v)| match v {
                EnvValue::Literal(l) if *n == name => Some(l.clone()),
                _ => None,
            })
            .unwrap_or_default()
    }

    #[test]
    fn an_external_server_is_read_at_its_address_with_its_tls_and_the_given_keys() {
        let ca = Some("/etc/servicedb/ca/ca.crt");
        let (_, env) = command_for(Engine::Postgres, &external(TlsMode::VerifyFull, ca));
        assert_eq!(
            literal(&env, "DATA_SOURCE_URI"),
            "pg.platform.example:6000/postgres?sslmode=verify-full&sslrootcert=/etc/servicedb/ca/ca.crt"
        );
        assert!(env.contains(&("DATA_SOURCE_PASS", EnvValue::SecretKey("password"))));
        let (_, env) = command_for(Engine::Postgres, &external(TlsMode::Disable, None));
        assert_eq!(
            literal(&env, "DATA_SOURCE_URI"),
            "pg.platform.example:6000/postgres?sslmode=disable"
        );
        let (args, env) = command_for(Engine::Redis, &external(TlsMode::VerifyFull, ca));
        assert_eq!(
            literal(&env, "REDIS_ADDR"),
            "rediss://pg.platform.example:6000"
        );
        assert!(args.contains(&"--tls-ca-cert-file=/etc/servicedb/ca/ca.crt".to_string()));
        let (args, _) = command_for(Engine::Redis, &external(TlsMode::Require, None));
        assert!(args.contains(&"--skip-tls-verification".to_string()));
        let (_, env) = command_for(Engine::MongoDB, &external(TlsMode::Require, None));
        assert!(literal(&env, "MONGODB_URI").ends_with("&tls=true&tlsInsecure=true"));
        let mut v6 = external(TlsMode::Disable, None);
        v6.host = "fd00::5";
        let (_, env) = command_for(Engine::Redis, &v6);
        assert_eq!(literal(&env, "REDIS_ADDR"), "redis://[fd00::5]:6000");
    }
}
