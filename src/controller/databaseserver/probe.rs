//! Step 3 of the DatabaseServer pipeline (async): log in as the
//! administrator and ask the server for its version.
//!
//! Nothing the probe returns carries the password: drivers' messages are
//! scrubbed of it, and errors keep only a category and the driver's text.

use std::time::Duration;

use super::validate::Target;
use crate::api::common::Engine;

/// How long one probe may take, connection and query together.
pub const TIMEOUT: Duration = Duration::from_secs(5);
/// The drivers' own limit, shorter so that their more precise error (such as
/// MongoDB's "connection refused" after server selection) wins the race.
const DRIVER_TIMEOUT: Duration = Duration::from_secs(4);

/// Why a server could not be probed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ProbeError {
    /// Stable reason, used as the condition reason: `ConnectionRefused`,
    /// `AuthenticationFailed`, `Timeout`, `HostNotFound`, `NotAcceptingConnections`,
    /// `ConnectionFailed` or `UnexpectedReply`.
    pub reason: &'static str,
    /// What happened, without any secret.
    pub message: String,
}

impl ProbeError {
    fn new(reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            reason,
            message: message.into(),
        }
    }

    fn scrubbed(reason: &'static str, message: &str, target: &Target) -> Self {
        Self::new(reason, scrub(message, &target.password))
    }
}

/// Cuts `secret` out of a driver's message.
pub fn scrub(message: &str, secret: &str) -> String {
    if secret.is_empty() {
        message.to_owned()
    } else {
        message.replace(secret, "<redacted>")
    }
}

/// The server's version, as it reports it.
pub async fn probe(target: &Target) -> Result<String, ProbeError> {
    let probe = async {
        match target.engine {
            Engine::Postgres => postgres(target).await,
            Engine::Redis => redis(target).await,
            Engine::MongoDB => mongodb(target).await,
        }
    };
    // Say where: a managed server's address is made up by servicedb.
    let probe = async {
        probe.await.map_err(|e| ProbeError {
            message: format!("{}:{}: {}", target.host, target.port, e.message),
            ..e
        })
    };
    tokio::time::timeout(TIMEOUT, probe).await.map_err(|_| {
        ProbeError::new(
            "Timeout",
            format!(
                "{}:{} did not answer within {}s",
                target.host,
                target.port,
                TIMEOUT.as_secs()
            ),
        )
    })?
}

/// The reason for an I/O failure found anywhere in an error's chain.
fn io_reason(error: &(dyn std::error::Error + 'static)) -> Option<&'static str> {
    let mut next = Some(error);
    while let Some(e) = next {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return Some(match io.kind() {
                std::io::ErrorKind::ConnectionRefused => "ConnectionRefused",
                std::io::ErrorKind::TimedOut => "Timeout",
                _ if io.to_string().contains("failed to lookup address") => "HostNotFound",
                _ => "ConnectionFailed",
            });
        }
        next = e.source();
    }
    None
}

async fn postgres(target: &Target) -> Result<String, ProbeError> {
    use tokio_postgres::error::SqlState;
    let mut config = tokio_postgres::Config::new();
    config
        .host(&target.host)
        .port(target.port)
        .user(&target.username)
        .password(&target.password)
        .dbname("postgres")
        .application_name("servicedb")
        .connect_timeout(DRIVER_TIMEOUT);
    let classify = |error: tokio_postgres::Error| {
        let reason = match error.code() {
            Some(c) if *c == SqlState::INVALID_PASSWORD => "AuthenticationFailed",
            Some(c) if *c == SqlState::INVALID_AUTHORIZATION_SPECIFICATION => {
                "AuthenticationFailed"
            }
            Some(c) if *c == SqlState::CANNOT_CONNECT_NOW => "NotAcceptingConnections",
            Some(c) if *c == SqlState::ADMIN_SHUTDOWN => "NotAcceptingConnections",
            Some(_) => "ConnectionFailed",
            None => io_reason(&error).unwrap_or("ConnectionFailed"),
        };
        let message = match error.as_db_error() {
            Some(db) => db.message().to_owned(),
            // The cause says why (a refused certificate, a reset).
            None => crate::engine::postgres_users::describe(&error),
        };
        ProbeError::scrubbed(reason, &message, target)
    };
    let client = crate::engine::tls::postgres(&mut config, &target.tls)
        .await
        .map_err(|e| match e {
            crate::engine::tls::PostgresConnectError::Postgres(e) => classify(e),
            crate::engine::tls::PostgresConnectError::Tls(e) => ProbeError::new("TlsFailed", e.0),
            e @ crate::engine::tls::PostgresConnectError::Timeout(_) => {
                ProbeError::new("Timeout", e.to_string())
            }
        })?;
    let rows = client.simple_query("SHOW server_version").await;
    drop(client);
    let version = rows
        .map_err(classify)?
        .into_iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).map(str::to_owned),
            _ => None,
        })
        .ok_or_else(|| ProbeError::new("UnexpectedReply", "SHOW server_version returned no row"))?;
    Ok(postgres_version(&version))
}

/// `15.14 (Debian 15.14-0+deb12u1)` → `15.14`.
pub fn postgres_version(reported: &str) -> String {
    reported
        .split_whitespace()
        .next()
        .unwrap_or(reported)
        .to_owned()
}

async fn redis(target: &Target) -> Result<String, ProbeError> {
    use redis::{ErrorKind, RedisError};
    let classify = |error: RedisError| {
        let reason = if error.kind() == ErrorKind::AuthenticationFailed
            || matches!(error.code(), Some("WRONGPASS" | "NOAUTH" | "NOPERM"))
        {
            "AuthenticationFailed"
        } else if error.is_connection_refusal() {
            "ConnectionRefused"
        } else if error.is_timeout() {
            "Timeout"
        } else if matches!(error.code(), Some("LOADING")) {
            "NotAcceptingConnections"
        } else {
            io_reason(&error).unwrap_or("ConnectionFailed")
        };
        ProbeError::scrubbed(reason, &crate::engine::redis_acl::describe(&error), target)
    };
    let mut conn = crate::engine::tls::redis(
        &target.host,
        target.port,
        &target.username,
        &target.password,
        &target.tls,
        DRIVER_TIMEOUT,
    )
    .await
    .map_err(classify)?;
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query_async(&mut conn)
        .await
        .map_err(classify)?;
    redis_version(&info)
        .ok_or_else(|| ProbeError::new("UnexpectedReply", "INFO server has no redis_version"))
}

/// The `redis_version` field of an `INFO server` reply.
pub fn redis_version(info: &str) -> Option<String> {
    info.lines()
        .find_map(|l| l.trim().strip_prefix("redis_version:"))
        .map(str::to_owned)
        .filter(|v| !v.is_empty())
}

async fn mongodb(target: &Target) -> Result<String, ProbeError> {
    use mongodb::bson::doc;
    use mongodb::error::ErrorKind;
    use mongodb::options::{ClientOptions, Credential, ServerAddress};
    let classify = |error: mongodb::error::Error| {
        let reason = match error.kind.as_ref() {
            ErrorKind::Authentication { .. } => "AuthenticationFailed",
            ErrorKind::Command(c) if c.code == 18 => "AuthenticationFailed",
            _ if error.to_string().contains("Connection refused") => "ConnectionRefused",
            ErrorKind::ServerSelection { .. } => "ConnectionFailed",
            _ => io_reason(&error).unwrap_or("ConnectionFailed"),
        };
        // The kind's own text: the error's Display may dump a whole reply.
        ProbeError::scrubbed(reason, &error.kind.to_string(), target)
    };
    let credential = Credential::builder()
        .username(target.username.clone())
        .password(target.password.clone())
        .source("admin".to_owned())
        .build();
    let options = ClientOptions::builder()
        .hosts(vec![ServerAddress::Tcp {
            host: target.host.clone(),
            port: Some(target.port),
        }])
        .direct_connection(true)
        .credential(credential)
        .connect_timeout(DRIVER_TIMEOUT)
        .server_selection_timeout(DRIVER_TIMEOUT)
        .app_name("servicedb".to_owned())
        .tls(
            crate::engine::tls::mongodb(&target.tls)
                .map_err(|e| ProbeError::new("TlsFailed", e.0))?,
        )
        .build();
    let client = mongodb::Client::with_options(options).map_err(classify)?;
    let reply = client
        .database("admin")
        .run_command(doc! { "buildInfo": 1 })
        .await
        .map_err(classify);
    client.shutdown().immediate(true).await;
    let reply = reply?;
    reply
        .get_str("version")
        .map(str::to_owned)
        .map_err(|_| ProbeError::new("UnexpectedReply", "buildInfo has no version"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_read_from_replies() {
        assert_eq!(postgres_version("15.14 (Debian 15.14-0+deb12u1)"), "15.14");
        assert_eq!(postgres_version("17.2"), "17.2");
        let info = "# Server\r\nredis_version:7.0.15\r\nredis_git_sha1:00000000\r\n";
        assert_eq!(redis_version(info).as_deref(), Some("7.0.15"));
        assert_eq!(redis_version("# Server\r\n"), None);
    }

    #[test]
    fn scrub_removes_the_password() {
        assert_eq!(
            scrub("auth as admin with hunter2 failed", "hunter2"),
            "auth as admin with <redacted> failed"
        );
        assert_eq!(scrub("nothing here", ""), "nothing here");
    }

    fn target(engine: Engine, port: u16) -> Target {
        Target {
            engine,
            host: "127.0.0.1".into(),
            port,
            tls: crate::engine::tls::TlsSettings::default(),
            username: "admin".into(),
            password: "hunter2".into(),
        }
    }

    fn closed_port() -> u16 {
        // Bound then dropped: nothing listens there right after.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    }

    /// MongoDB cannot run on this machine: the probe is only checked against
    /// a closed port, which proves the classification and the scrubbing, not
    /// the `buildInfo` exchange.
    #[tokio::test]
    async fn a_closed_port_is_connection_refused_for_every_engine() {
        for engine in [Engine::Postgres, Engine::Redis, Engine::MongoDB] {
            let e = probe(&target(engine, closed_port())).await.unwrap_err();
            assert_eq!(e.reason, "ConnectionRefused", "{engine}: {e}");
            assert!(!e.message.contains("hunter2"), "{engine}: {e}");
        }
    }

    #[tokio::test]
    async fn a_silent_server_is_a_timeout() {
        // Accepts the TCP connection and never answers.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let _keep = tokio::spawn(async move {
            let mut held = vec![];
            while let Ok((s, _)) = listener.accept().await {
                held.push(s);
            }
        });
        let e = probe(&target(Engine::Postgres, port)).await.unwrap_err();
        assert_eq!(e.reason, "Timeout", "{e}");
    }
}
