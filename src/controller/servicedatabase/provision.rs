//! Step 4a of the ServiceDatabase pipeline for shared isolation (async): the
//! service's database (Postgres) or key space (Redis) and its least-privilege
//! login on the `DatabaseServer`, made with the server's admin credentials
//! through the same libraries the instance manager uses on dedicated
//! instances.

use std::time::Duration;

use super::dereference::ServerFacts;
use super::validate::ValidatedDatabase;
use crate::api::Engine;
use crate::engine::postgres_users::{self, ServiceUser};
use crate::engine::redis_acl;

/// How long a connection to a shared server may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a shared server could not be used. Messages never carry a password.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server does not answer or refuses the admin login.
    #[error("DatabaseServer {server}: {message}")]
    Connect { server: String, message: String },
    /// The server answered but the database or login could not be made.
    #[error("DatabaseServer {server}: {message}")]
    Provision {
        server: String,
        category: &'static str,
        message: String,
    },
}

impl Error {
    pub fn category(&self) -> &'static str {
        match self {
            Error::Connect { .. } => "server-unreachable",
            Error::Provision { category, .. } => category,
        }
    }
}

/// Makes sure the service's database and login exist with this password.
pub async fn ensure(
    db: &ValidatedDatabase,
    server: &ServerFacts,
    password: &str,
) -> Result<(), Error> {
    match db.engine {
        Engine::Postgres => {
            let client = postgres(server).await?;
            let user = ServiceUser {
                role: db.username.clone(),
                password: password.to_string(),
                database: db.database.clone(),
            };
            postgres_users::ensure_service_database(&client, &user)
                .await
                .map(|_| ())
                .map_err(|e| provision(server, e.category(), e.to_string()))
        }
        Engine::Redis => {
            let mut conn = redis(server).await?;
            let prefix = crate::engine::redis::key_prefix(&db.username);
            redis_acl::ensure_user(&mut conn, &db.username, password, &prefix)
                .await
                .map_err(|e| provision(server, e.category(), e.to_string()))
        }
        Engine::MongoDB => Err(provision(
            server,
            "unsupported",
            "MongoDB on shared servers is not available yet".into(),
        )),
    }
}

/// Removes the service's login and data (`deletionPolicy: Delete`).
pub async fn remove(db: &ValidatedDatabase, server: &ServerFacts) -> Result<(), Error> {
    match db.engine {
        Engine::Postgres => {
            let client = postgres(server).await?;
            let user = ServiceUser {
                role: db.username.clone(),
                password: String::new(),
                database: db.database.clone(),
            };
            postgres_users::drop_service_database(&client, &user)
                .await
                .map_err(|e| provision(server, e.category(), e.to_string()))
        }
        Engine::Redis => {
            let mut conn = redis(server).await?;
            redis_acl::remove_user(&mut conn, &db.username)
                .await
                .map_err(|e| provision(server, e.category(), e.to_string()))?;
            let prefix = crate::engine::redis::key_prefix(&db.username);
            delete_keys(&mut conn, &prefix)
                .await
                .map_err(|e| provision(server, "delete-keys", redis_acl::describe(&e)))
        }
        Engine::MongoDB => Ok(()),
    }
}

/// Deletes every key under a prefix, a batch at a time (SCAN, never KEYS).
async fn delete_keys(
    conn: &mut redis::aio::MultiplexedConnection,
    prefix: &str,
) -> Result<(), redis::RedisError> {
    let pattern = format!("{}*", glob_escape(prefix));
    let mut cursor: u64 = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(500)
            .query_async(conn)
            .await?;
        if !keys.is_empty() {
            redis::cmd("UNLINK")
                .arg(&keys)
                .query_async::<()>(conn)
                .await?;
        }
        if next == 0 {
            return Ok(());
        }
        cursor = next;
    }
}

/// Escapes Redis glob characters so a prefix matches only itself.
fn glob_escape(s: &str) -> String {
    s.chars().fold(String::new(), |mut out, c| {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
        out
    })
}

async fn postgres(server: &ServerFacts) -> Result<tokio_postgres::Client, Error> {
    let mut config = tokio_postgres::Config::new();
    config
        .host(&server.host)
        .port(u16::try_from(server.port).unwrap_or(5432))
        .user(&server.admin_username)
        .password(&server.admin_password)
        .dbname("postgres")
        .application_name("servicedb")
        .connect_timeout(CONNECT_TIMEOUT);
    let (client, connection) = config
        .connect(tokio_postgres::NoTls)
        .await
        .map_err(|e| connect_error(server, &e.to_string()))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "connection to the DatabaseServer closed");
        }
    });
    Ok(client)
}

async fn redis(server: &ServerFacts) -> Result<redis::aio::MultiplexedConnection, Error> {
    use redis::{AsyncConnectionConfig, ConnectionAddr, IntoConnectionInfo, RedisConnectionInfo};
    let fail = |e: redis::RedisError| connect_error(server, &redis_acl::describe(&e));
    let port = u16::try_from(server.port).unwrap_or(6379);
    let info = ConnectionAddr::Tcp(server.host.clone(), port)
        .into_connection_info()
        .map_err(fail)?
        .set_redis_settings(
            RedisConnectionInfo::default()
                .set_username(server.admin_username.as_str())
                .set_password(server.admin_password.as_str()),
        );
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(CONNECT_TIMEOUT));
    redis::Client::open(info)
        .map_err(fail)?
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .map_err(fail)
}

fn connect_error(server: &ServerFacts, message: &str) -> Error {
    Error::Connect {
        server: display(server),
        message: scrub(message, &server.admin_password),
    }
}

fn provision(server: &ServerFacts, category: &'static str, message: String) -> Error {
    Error::Provision {
        server: display(server),
        category,
        message: scrub(&message, &server.admin_password),
    }
}

/// Driver messages should never echo a password; make sure of it.
fn scrub(message: &str, secret: &str) -> String {
    if secret.is_empty() {
        message.to_string()
    } else {
        message.replace(secret, "<redacted>")
    }
}

fn display(server: &ServerFacts) -> String {
    format!("{}/{}", server.namespace, server.name)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_prefix_matches_only_itself() {
        assert_eq!(super::glob_escape("shop_cart:"), "shop_cart:");
        assert_eq!(super::glob_escape("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\");
    }

    #[test]
    fn messages_never_carry_the_password() {
        assert_eq!(
            super::scrub("auth failed for s3cret", "s3cret"),
            "auth failed for <redacted>"
        );
    }
}
