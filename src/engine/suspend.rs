//! Access that ends when admission ends: when a DatabaseServer stops
//! admitting a namespace, the logins of that namespace's services on the
//! server stop working (and their open sessions end), while their data
//! stays. Nothing here removes anything: `deletionPolicy: Delete` still
//! drops what the service owns, and admitting the namespace again lets the
//! normal provisioning, which always sets a login's full state, switch them
//! back on.
//!
//! - PostgreSQL: `ALTER ROLE … NOLOGIN`, then its sessions are terminated.
//! - Redis: `ACL SETUSER … off`, then its connections are killed.
//! - MongoDB: the user's roles are taken away (`updateUser` with no roles):
//!   it may still authenticate, but reads and writes nothing.
//!
//! Each function says whether the login existed; a missing one is no error.

use mongodb::bson::{Document, doc};
use redis::aio::ConnectionLike;

use super::postgres_users::{quote_ident, validate_role_name};

/// Why a login could not be disabled. Messages never carry a password
/// (none is sent).
#[derive(Debug, thiserror::Error)]
#[error("disabling login {login:?}: {message}")]
pub struct Error {
    pub login: String,
    pub message: String,
}

fn error(login: &str, message: impl std::fmt::Display) -> Error {
    Error {
        login: login.to_owned(),
        message: message.to_string(),
    }
}

/// PostgreSQL: the role may no longer log in, and its open sessions end.
pub async fn postgres(client: &tokio_postgres::Client, role: &str) -> Result<bool, Error> {
    validate_role_name(role).map_err(|e| error(role, e))?;
    let fail = |e: tokio_postgres::Error| error(role, super::postgres_users::describe(&e));
    let Some(row) = client
        .query_opt(
            "SELECT rolcanlogin FROM pg_catalog.pg_roles WHERE rolname = $1",
            &[&role],
        )
        .await
        .map_err(fail)?
    else {
        return Ok(false);
    };
    if row.get::<_, bool>(0) {
        client
            .batch_execute(&format!("ALTER ROLE {} NOLOGIN", quote_ident(role)))
            .await
            .map_err(fail)?;
    }
    client
        .execute(
            "SELECT pg_catalog.pg_terminate_backend(pid) FROM pg_catalog.pg_stat_activity \
             WHERE usename = $1 AND pid <> pg_catalog.pg_backend_pid()",
            &[&role],
        )
        .await
        .map_err(fail)?;
    Ok(true)
}

/// Redis: the ACL user is switched off, and its open connections end.
pub async fn redis(conn: &mut impl ConnectionLike, user: &str) -> Result<bool, Error> {
    super::redis_acl::validate_username(user).map_err(|e| error(user, e))?;
    let fail = |e: redis::RedisError| error(user, super::redis_acl::describe(&e));
    let found: redis::Value = redis::cmd("ACL")
        .arg("GETUSER")
        .arg(user)
        .query_async(conn)
        .await
        .map_err(fail)?;
    if matches!(found, redis::Value::Nil) {
        return Ok(false);
    }
    redis::cmd("ACL")
        .arg("SETUSER")
        .arg(user)
        .arg("off")
        .query_async::<()>(conn)
        .await
        .map_err(fail)?;
    redis::cmd("CLIENT")
        .arg("KILL")
        .arg("USER")
        .arg(user)
        .query_async::<redis::Value>(conn)
        .await
        .map_err(fail)?;
    Ok(true)
}

/// MongoDB: the user (defined on `database`) loses every role.
pub async fn mongodb(client: &mongodb::Client, database: &str, user: &str) -> Result<bool, Error> {
    super::mongodb_users::validate_username(user).map_err(|e| error(user, e))?;
    let db = client.database(database);
    let info = db
        .run_command(doc! {"usersInfo": user})
        .await
        .map_err(|e| error(user, e))?;
    let Some(roles) = info
        .get_array("users")
        .ok()
        .and_then(|users| users.first())
        .and_then(|u| u.as_document())
        .map(|u| u.get_array("roles").map(Vec::len).unwrap_or(0))
    else {
        return Ok(false);
    };
    if roles > 0 {
        let no_roles: Vec<Document> = Vec::new();
        db.run_command(doc! {"updateUser": user, "roles": no_roles})
            .await
            .map_err(|e| error(user, e))?;
    }
    Ok(true)
}
