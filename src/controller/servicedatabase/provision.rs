//! Step 4a of the ServiceDatabase pipeline for shared isolation (async): the
//! service's database (Postgres) or key space (Redis) and its least-privilege
//! login on the `DatabaseServer`, made with the server's admin credentials
//! through the same libraries the instance manager uses on dedicated
//! instances.

use std::time::Duration;

use crate::api::Engine;
use crate::api::ServiceDatabase;
use crate::controller::sessions::Sessions;
use crate::engine::logins::{Login, Logins, Marker};
use crate::engine::mongodb_users;
use crate::engine::postgres_users::{self, ServiceUser};
use crate::engine::redis_acl;
use crate::model::database::ValidatedDatabase;
use crate::model::server::ServerFacts;

/// How long a connection to a shared server may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one statement of the administrator's session may run, and wait
/// for a lock, before the server cancels it.
const STATEMENT_TIMEOUT: Duration = Duration::from_secs(20);
const LOCK_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a shared server could not be used. Messages never carry a password.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server does not answer or refuses the admin login.
    #[error("DatabaseServer {server}: {message}")]
    Connect { server: String, message: String },
    /// One of the service's names on the server is held by an object
    /// servicedb did not make for this ServiceDatabase: nothing was changed.
    #[error("DatabaseServer {server}: {message}")]
    Conflict { server: String, message: String },
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
            Error::Conflict { .. } => "name-conflict",
            Error::Provision { category, .. } => category,
        }
    }
}

/// What servicedb writes on every object it makes on `server` for `sdb`
/// (see [`Marker`]). A ServiceDatabase whose status says it was given its
/// logins already got them from a servicedb that did not mark objects yet:
/// its unmarked objects are its own. `provisioning`: what an earlier
/// ServiceDatabase of the same namespace and name left on the server is
/// taken over (never when dropping or suspending). `None` without a uid,
/// which the API server always gives.
pub fn marker(sdb: &ServiceDatabase, server: &ServerFacts, provisioning: bool) -> Option<Marker> {
    use kube::ResourceExt;
    Some(Marker {
        uid: sdb.uid().filter(|uid| !uid.is_empty())?,
        service: format!("{}/{}", sdb.namespace().unwrap_or_default(), sdb.name_any()),
        server: format!("{}/{}", server.namespace, server.name),
        adopt_unmarked: sdb
            .status
            .as_ref()
            .is_some_and(|s| s.credentials_rotated_at.is_some()),
        adopt_predecessor: provisioning,
    })
}

/// What provisioning found on the server.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Provisioned {
    /// The service's login and database were an earlier ServiceDatabase's
    /// of the same namespace and name (deleted with `deletionPolicy:
    /// Retain`), taken over in this pass. Looked up only while a restore is
    /// pending: its data is not restored over.
    pub taken_over: bool,
}

/// Makes sure the service's database exists and exactly the listed logins
/// work (the service's other identity cannot log in). Objects of its names
/// that servicedb did not make for it are refused ([`Error::Conflict`]).
pub async fn ensure(
    db: &ValidatedDatabase,
    server: &ServerFacts,
    marker: &Marker,
    logins: &Logins,
    restoring: bool,
    sessions: &Sessions,
) -> Result<Provisioned, Error> {
    match db.engine {
        Engine::Postgres => {
            let client = pooled_postgres(sessions, server, "postgres").await?;
            let fail = |e: postgres_users::UserError| postgres_error(server, e);
            let taken_over = restoring
                && postgres_users::left_by_predecessor(&client, &db.username, marker)
                    .await
                    .map_err(fail)?;
            let mut kept = None;
            if db.schema.is_some() {
                postgres_users::ensure_schema_database(&client, &db.database)
                    .await
                    .map_err(fail)?;
                let shared = pooled_postgres(sessions, server, &db.database).await?;
                postgres_users::ensure_service_schema(
                    &client,
                    &shared,
                    &db.username,
                    &db.database,
                    logins,
                    Some(marker),
                )
                .await
                .map_err(fail)?;
                kept = Some(shared);
            } else {
                postgres_users::ensure_service_logins(
                    &client,
                    &db.username,
                    &db.database,
                    logins,
                    Some(marker),
                )
                .await
                .map_err(fail)?;
            }
            verify_scratch(&client, db, marker).await.map_err(fail)?;
            // Sessions that did their work serve the next pass; a failed
            // one is dropped above.
            sessions.give_postgres(server, "postgres", client);
            if let Some(shared) = kept {
                sessions.give_postgres(server, &db.database, shared);
            }
            Ok(Provisioned { taken_over })
        }
        Engine::Redis => {
            let mut conn = match sessions.take_redis(server) {
                Some(conn) => conn,
                None => redis(server).await?,
            };
            let prefix = crate::engine::redis::key_prefix(&db.username);
            let taken_over = restoring
                && redis_acl::left_by_predecessor(&mut conn, &db.username, marker)
                    .await
                    .map_err(|e| {
                        sessions.forget_redis(server);
                        conflict_or(server, e.category(), e.to_string())
                    })?;
            redis_acl::ensure_user_logins(
                &mut conn,
                &db.username,
                logins,
                &prefix,
                restoring,
                Some(marker),
            )
            .await
            .map_err(|e| {
                sessions.forget_redis(server);
                conflict_or(server, e.category(), e.to_string())
            })?;
            save_acl(&mut conn).await;
            sessions.give_redis(server, conn);
            Ok(Provisioned { taken_over })
        }
        Engine::MongoDB => {
            let client = mongodb(server)?;
            let taken_over = restoring
                && mongodb_users::check_claim(&client, &db.database, marker)
                    .await
                    .map_err(|e| mongodb_error(server, e))?
                    == mongodb_users::Claim::Predecessor;
            mongodb_users::ensure_service_logins(
                &client,
                &db.database,
                &db.username,
                logins,
                Some(marker),
            )
            .await
            .map_err(|e| mongodb_error(server, e))?;
            Ok(Provisioned { taken_over })
        }
    }
}

/// The scratch database of `spec.backup.verify` exists, owned by the
/// service's owner role, exactly while the spec asks for verification: the
/// verify Job restores into it as the service's own login, which may not
/// create databases.
async fn verify_scratch(
    client: &tokio_postgres::Client,
    db: &ValidatedDatabase,
    marker: &Marker,
) -> Result<(), postgres_users::UserError> {
    let scratch = postgres_users::scratch_name(&db.username);
    let verify = db
        .backup
        .as_ref()
        .is_some_and(|b| b.verify_schedule.is_some());
    if verify {
        postgres_users::ensure_scratch_database(client, &db.username, &scratch, Some(marker))
            .await?;
    } else {
        postgres_users::drop_scratch_database(client, &db.username, &scratch, Some(marker)).await?;
    }
    Ok(())
}

/// Whether the service can log in with `login` where its clients connect:
/// the shared server, or the dedicated instance's Service. A rotation
/// publishes a login only after this says yes.
pub async fn login_works(db: &ValidatedDatabase, login: &Login) -> bool {
    let host = db.host();
    let port = db.port();
    // A dedicated instance is reached inside the cluster, in plain TCP.
    let tls = db
        .server
        .as_ref()
        .map(|s| s.tls.clone())
        .unwrap_or_default();
    let result = match db.engine {
        Engine::Postgres => {
            let mut config = tokio_postgres::Config::new();
            config
                .host(&host)
                .port(u16::try_from(port).unwrap_or(5432))
                .user(&login.username)
                .password(&login.password)
                .dbname(&db.database)
                .application_name("servicedb")
                .connect_timeout(CONNECT_TIMEOUT);
            match crate::engine::tls::postgres(&mut config, &tls).await {
                Ok(client) => client
                    .simple_query("SELECT 1")
                    .await
                    .map(drop)
                    .map_err(|e| postgres_users::describe(&e)),
                Err(e) => Err(e.to_string()),
            }
        }
        Engine::Redis => {
            let port = u16::try_from(port).unwrap_or(6379);
            match crate::engine::tls::redis(
                &host,
                port,
                &login.username,
                &login.password,
                &tls,
                CONNECT_TIMEOUT,
            )
            .await
            {
                Ok(mut conn) => redis::cmd("PING")
                    .query_async::<String>(&mut conn)
                    .await
                    .map(drop)
                    .map_err(|e| redis_acl::describe(&e)),
                Err(e) => Err(redis_acl::describe(&e)),
            }
        }
        Engine::MongoDB => {
            let login = mongodb_users::Login {
                source: &db.database,
                user: &login.username,
                password: &login.password,
            };
            let port = u16::try_from(port).unwrap_or(27017);
            let client = crate::engine::tls::mongodb(&tls)
                .map_err(|e| e.0)
                .and_then(|tls| {
                    mongodb_users::direct_client_tls(&host, port, Some(login), CONNECT_TIMEOUT, tls)
                        .map_err(|e| e.to_string())
                });
            match client {
                Ok(client) => client
                    .database(&db.database)
                    .run_command(mongodb::bson::doc! { "ping": 1 })
                    .await
                    .map(drop)
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e),
            }
        }
    };
    match result {
        Ok(()) => true,
        Err(message) => {
            tracing::debug!(
                username = %login.username,
                error = %scrub(&message, &login.password),
                "the new login does not work yet"
            );
            false
        }
    }
}

/// Removes the service's login and data (`deletionPolicy: Delete`): only
/// what servicedb made for this ServiceDatabase (its marker says so).
pub async fn remove(
    db: &ValidatedDatabase,
    server: &ServerFacts,
    marker: &Marker,
) -> Result<(), Error> {
    match db.engine {
        Engine::Postgres if db.schema.is_some() => {
            let client = postgres(server, "postgres").await?;
            drop_scratch(&client, db, server, marker).await?;
            let shared = postgres(server, &db.database).await?;
            postgres_users::drop_service_schema(&client, &shared, &db.username, Some(marker))
                .await
                .map_err(|e| provision(server, e.category(), e.to_string()))
        }
        Engine::Postgres => {
            let client = postgres(server, "postgres").await?;
            // Before the role: DROP ROLE fails while it owns a database.
            drop_scratch(&client, db, server, marker).await?;
            let user = ServiceUser {
                role: db.username.clone(),
                password: String::new(),
                database: db.database.clone(),
            };
            postgres_users::drop_service_database(&client, &user, Some(marker))
                .await
                .map_err(|e| provision(server, e.category(), e.to_string()))
        }
        Engine::Redis => {
            let mut conn = redis(server).await?;
            let ours = redis_acl::remove_marked_user(&mut conn, &db.username, marker)
                .await
                .map_err(|e| provision(server, e.category(), e.to_string()))?;
            if !ours {
                // The user, and so the keys under its prefix, are someone
                // else's.
                return Ok(());
            }
            save_acl(&mut conn).await;
            let prefix = crate::engine::redis::key_prefix(&db.username);
            delete_keys(&mut conn, &prefix)
                .await
                .map_err(|e| provision(server, "delete-keys", redis_acl::describe(&e)))
        }
        Engine::MongoDB => {
            let client = mongodb(server)?;
            match mongodb_users::check_claim(&client, &db.database, marker).await {
                Ok(_) => {}
                Err(e) if e.category() == "name_conflict" => {
                    tracing::info!(database = %db.database, "not servicedb's for this service; left as it is");
                    return Ok(());
                }
                Err(e) => return Err(mongodb_error(server, e)),
            }
            let twin = crate::engine::logins::twin(&db.username);
            let legacy = crate::engine::logins::legacy_twin(&db.username);
            for user in [db.username.as_str(), twin.as_str(), legacy.as_str()] {
                mongodb_users::drop_user(&client, &db.database, user)
                    .await
                    .map_err(|e| mongodb_error(server, e))?;
            }
            client
                .database(&db.database)
                .drop()
                .await
                .map_err(|e| provision(server, "drop-database", e.to_string()))?;
            mongodb_users::release_claim(&client, &db.database, marker)
                .await
                .map_err(|e| mongodb_error(server, e))
        }
    }
}

/// Disables `logins` of the service on the server (its namespace is no
/// longer admitted): see [`crate::engine::suspend`]. Returns the ones that
/// exist there.
pub async fn suspend(
    db: &ValidatedDatabase,
    server: &ServerFacts,
    marker: &Marker,
    logins: &[String],
) -> Result<Vec<String>, Error> {
    use crate::engine::suspend;
    let fail = |e: suspend::Error| provision(server, "suspend", e.to_string());
    let mut found = Vec::new();
    // Only what servicedb made for this ServiceDatabase is switched off: a
    // login of the same name that is not its own is left as it is.
    match db.engine {
        Engine::Postgres => {
            let client = postgres(server, "postgres").await?;
            for login in logins {
                let ours = postgres_users::role_is_ours(&client, marker, login)
                    .await
                    .map_err(|e| provision(server, "suspend", e.to_string()))?;
                if ours && suspend::postgres(&client, login).await.map_err(fail)? {
                    found.push(login.clone());
                }
            }
        }
        Engine::Redis => {
            let mut conn = redis(server).await?;
            for login in logins {
                let ours = redis_acl::user_is_ours(&mut conn, login, marker)
                    .await
                    .map_err(|e| provision(server, "suspend", e.to_string()))?;
                if ours && suspend::redis(&mut conn, login).await.map_err(fail)? {
                    found.push(login.clone());
                }
            }
            save_acl(&mut conn).await;
        }
        Engine::MongoDB => {
            let client = mongodb(server)?;
            let claim = mongodb_users::check_claim(&client, &db.database, marker).await;
            if !matches!(claim, Ok(mongodb_users::Claim::Ours)) {
                return Ok(found);
            }
            for login in logins {
                if suspend::mongodb(&client, &db.database, login)
                    .await
                    .map_err(fail)?
                {
                    found.push(login.clone());
                }
            }
        }
    }
    Ok(found)
}

async fn drop_scratch(
    client: &tokio_postgres::Client,
    db: &ValidatedDatabase,
    server: &ServerFacts,
    marker: &Marker,
) -> Result<(), Error> {
    let scratch = postgres_users::scratch_name(&db.username);
    postgres_users::drop_scratch_database(client, &db.username, &scratch, Some(marker))
        .await
        .map(drop)
        .map_err(|e| provision(server, e.category(), e.to_string()))
}

fn mongodb(server: &ServerFacts) -> Result<mongodb::Client, Error> {
    let login = mongodb_users::Login {
        source: "admin",
        user: &server.admin_username,
        password: &server.admin_password,
    };
    let port = u16::try_from(server.port).unwrap_or(27017);
    let tls = crate::engine::tls::mongodb(&server.tls).map_err(|e| connect_error(server, &e.0))?;
    mongodb_users::direct_client_tls(&server.host, port, Some(login), CONNECT_TIMEOUT, tls)
        .map_err(|e| connect_error(server, &e.to_string()))
}

/// A refused login or no answer is the server's state; anything else is
/// about this database.
fn mongodb_error(server: &ServerFacts, error: mongodb_users::UserError) -> Error {
    if error.category() == "name_conflict" {
        conflict_or(server, error.category(), error.to_string())
    } else if error.is_login_refused() || error.category() == "connection" {
        connect_error(server, &error.to_string())
    } else {
        provision(server, error.category(), error.to_string())
    }
}

/// Writes the live ACL to the server's ACL file, so that the logins survive
/// a restart. A server without an ACL file (`aclfile`) keeps them in memory
/// only: said once per reconcile at debug level, not an error.
async fn save_acl(conn: &mut redis::aio::MultiplexedConnection) {
    if let Err(e) = redis_acl::save_acl_file(conn).await {
        tracing::debug!(error = %e, "ACL SAVE failed; the server keeps users in memory only");
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

async fn postgres(server: &ServerFacts, database: &str) -> Result<tokio_postgres::Client, Error> {
    let mut config = tokio_postgres::Config::new();
    config
        .host(&server.host)
        .port(u16::try_from(server.port).unwrap_or(5432))
        .user(&server.admin_username)
        .password(&server.admin_password)
        .dbname(database)
        .application_name("servicedb")
        .connect_timeout(CONNECT_TIMEOUT);
    crate::engine::tls::bound_statements(&mut config, STATEMENT_TIMEOUT, LOCK_TIMEOUT);
    crate::engine::tls::postgres(&mut config, &server.tls)
        .await
        .map_err(|e| connect_error(server, &e.to_string()))
}

/// An idle administrator session of the server's pool, or a new one.
async fn pooled_postgres(
    sessions: &Sessions,
    server: &ServerFacts,
    database: &str,
) -> Result<tokio_postgres::Client, Error> {
    match sessions.take_postgres(server, database) {
        Some(client) => Ok(client),
        None => postgres(server, database).await,
    }
}

async fn redis(server: &ServerFacts) -> Result<redis::aio::MultiplexedConnection, Error> {
    crate::engine::tls::redis(
        &server.host,
        u16::try_from(server.port).unwrap_or(6379),
        &server.admin_username,
        &server.admin_password,
        &server.tls,
        CONNECT_TIMEOUT,
    )
    .await
    .map_err(|e| connect_error(server, &redis_acl::describe(&e)))
}

fn connect_error(server: &ServerFacts, message: &str) -> Error {
    Error::Connect {
        server: display(server),
        message: scrub(message, &server.admin_password),
    }
}

/// A name held by an object that is not ours is a conflict to report, not
/// a failure to retry soon.
fn postgres_error(server: &ServerFacts, error: postgres_users::UserError) -> Error {
    conflict_or(server, error.category(), error.to_string())
}

fn conflict_or(server: &ServerFacts, category: &'static str, message: String) -> Error {
    if category == "name_conflict" {
        Error::Conflict {
            server: display(server),
            message: scrub(&message, &server.admin_password),
        }
    } else {
        provision(server, category, message)
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
    format!(
        "{}/{} ({}:{})",
        server.namespace, server.name, server.host, server.port
    )
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
