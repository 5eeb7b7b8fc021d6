//! The shared-server part of a pass (async): the service's database
//! (PostgreSQL, MongoDB) or key space (Redis) and its least-privilege logins
//! on the `DatabaseServer`, made with the server's admin credentials through
//! the same libraries the instance manager uses on dedicated instances. One
//! [`Provisioner`] per engine, in its own module.

mod mongodb;
mod postgres;
mod redis;

use std::time::Duration;

use crate::api::Engine;
use crate::api::ServiceDatabase;
use crate::controller::sessions::Sessions;
use crate::engine::logins::{Login, Logins, Marker};
use crate::engine::tls::TlsSettings;
use crate::model::database::ValidatedDatabase;
use crate::model::server::ServerFacts;

/// How long a connection to a shared server may take.
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one statement of the administrator's session may run, and wait
/// for a lock, before the server cancels it.
pub(super) const STATEMENT_TIMEOUT: Duration = Duration::from_secs(20);
pub(super) const LOCK_TIMEOUT: Duration = Duration::from_secs(5);

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

/// What the operator does on a shared server, one implementation per
/// engine (see [`provisioner`]).
#[async_trait::async_trait]
pub trait Provisioner: Send + Sync {
    /// Makes sure the service's database exists and exactly the listed
    /// logins work (the service's other identity cannot log in). Objects of
    /// its names that servicedb did not make for it are refused
    /// ([`Error::Conflict`]).
    async fn ensure(
        &self,
        db: &ValidatedDatabase,
        server: &ServerFacts,
        marker: &Marker,
        logins: &Logins,
        restoring: bool,
        sessions: &Sessions,
    ) -> Result<Provisioned, Error>;

    /// Removes the service's login and data (`deletionPolicy: Delete`):
    /// only what servicedb made for this ServiceDatabase (its marker says
    /// so).
    async fn remove(
        &self,
        db: &ValidatedDatabase,
        server: &ServerFacts,
        marker: &Marker,
    ) -> Result<(), Error>;

    /// Disables `logins` of the service (its namespace is no longer
    /// admitted), only those servicedb made for it; returns the ones that
    /// exist there.
    async fn suspend(
        &self,
        db: &ValidatedDatabase,
        server: &ServerFacts,
        marker: &Marker,
        logins: &[String],
    ) -> Result<Vec<String>, Error>;

    /// Logs in as `login` at `host:port` and runs a trivial command; the
    /// error's text (which may name the password) is scrubbed by the caller.
    async fn check_login(
        &self,
        db: &ValidatedDatabase,
        host: &str,
        port: i32,
        tls: &TlsSettings,
        login: &Login,
    ) -> Result<(), String>;
}

/// The engine's provisioner.
pub fn provisioner(engine: Engine) -> &'static dyn Provisioner {
    match engine {
        Engine::Postgres => &postgres::Postgres,
        Engine::Redis => &redis::Redis,
        Engine::MongoDB => &mongodb::MongoDb,
    }
}

/// See [`Provisioner::ensure`].
pub async fn ensure(
    db: &ValidatedDatabase,
    server: &ServerFacts,
    marker: &Marker,
    logins: &Logins,
    restoring: bool,
    sessions: &Sessions,
) -> Result<Provisioned, Error> {
    provisioner(db.engine)
        .ensure(db, server, marker, logins, restoring, sessions)
        .await
}

/// See [`Provisioner::remove`].
pub async fn remove(
    db: &ValidatedDatabase,
    server: &ServerFacts,
    marker: &Marker,
) -> Result<(), Error> {
    provisioner(db.engine).remove(db, server, marker).await
}

/// See [`Provisioner::suspend`] and [`crate::engine::suspend`].
pub async fn suspend(
    db: &ValidatedDatabase,
    server: &ServerFacts,
    marker: &Marker,
    logins: &[String],
) -> Result<Vec<String>, Error> {
    provisioner(db.engine)
        .suspend(db, server, marker, logins)
        .await
}

/// Whether the service can log in with `login` where its clients connect:
/// the shared server, or the dedicated instance's Service. A rotation
/// publishes a login only after this says yes.
pub async fn login_works(db: &ValidatedDatabase, login: &Login) -> bool {
    // A dedicated instance is reached inside the cluster, in plain TCP.
    let tls = db
        .server
        .as_ref()
        .map(|s| s.tls.clone())
        .unwrap_or_default();
    let result = provisioner(db.engine)
        .check_login(db, &db.host(), db.port(), &tls, login)
        .await;
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

pub(super) fn connect_error(server: &ServerFacts, message: &str) -> Error {
    Error::Connect {
        server: display(server),
        message: scrub(message, &server.admin_password),
    }
}

pub(super) fn conflict_or(server: &ServerFacts, category: &'static str, message: String) -> Error {
    if category == "name_conflict" {
        Error::Conflict {
            server: display(server),
            message: scrub(&message, &server.admin_password),
        }
    } else {
        provision(server, category, message)
    }
}

pub(super) fn provision(server: &ServerFacts, category: &'static str, message: String) -> Error {
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
    fn messages_never_carry_the_password() {
        assert_eq!(
            super::scrub("auth failed for s3cret", "s3cret"),
            "auth failed for <redacted>"
        );
    }
}
