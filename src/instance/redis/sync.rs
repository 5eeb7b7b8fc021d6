//! Keeps the server's users in step with the mounted Secrets and tells the
//! probes whether the server answers. Every interval: re-read the Secret
//! files, PING as the administrator, read `ACL LIST`; if the Secrets
//! changed, or the ACL differs from what we left (someone changed it by
//! hand), apply the whole ACL again live (`ACL SETUSER … reset …`, atomic per
//! user), then `ACL SAVE` so that the ACL file matches. Unchanged Secrets
//! and ACL cost one PING and one ACL LIST.

use std::path::PathBuf;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, ConnectionAddr, ErrorKind, IntoConnectionInfo, RedisError};
use redis::{RedisConnectionInfo, ServerErrorKind};
use tracing::{debug, info, warn};

use super::users::{self, AppCredentials, UsersError};
use crate::engine::monitoring;
use crate::engine::redis_acl::{self, AclError, AclUser, Scripting};
use crate::instance::secrets::{self, AdminCredentials, MonitoringCredentials, SecretError};
use crate::instance::status::Health;
use crate::instance::sync::{Progress, Server, SyncFailure, UserSync};

/// Bounds every connect and command: a server that does not answer within
/// this is not ready.
const TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, Clone)]
pub(super) struct Settings {
    pub socket: PathBuf,
    pub admin_secret_dir: PathBuf,
    pub app_secret_dir: PathBuf,
    pub scripting: Scripting,
}

#[derive(Debug, thiserror::Error)]
pub(super) enum SyncError {
    #[error(transparent)]
    Secret(#[from] SecretError),
    #[error(transparent)]
    Users(#[from] UsersError),
    #[error("the server does not answer yet: {0}")]
    NotAccepting(String),
    #[error("the server rejected the admin credentials")]
    AdminRejected,
    #[error("cannot connect as the admin: {0}")]
    Connect(String),
    #[error(transparent)]
    Acl(#[from] AclError),
    #[error("CONFIG SET {0}: {1}")]
    Config(&'static str, String),
}

impl SyncError {
    /// The admin session is gone: the next tick opens a new one.
    fn lost_session(&self) -> bool {
        match self {
            SyncError::NotAccepting(_) => true,
            SyncError::Acl(acl) => acl.category() == "connection",
            _ => false,
        }
    }
}

impl SyncFailure for SyncError {
    fn category(&self) -> &'static str {
        match self {
            SyncError::Secret(error) => error.category(),
            SyncError::Users(error) => error.category(),
            SyncError::NotAccepting(_) => "not_accepting",
            SyncError::AdminRejected => "admin_rejected",
            SyncError::Connect(_) => "connect",
            SyncError::Acl(error) => error.category(),
            SyncError::Config(..) => "config",
        }
    }

    fn server(&self) -> Server<'_> {
        match self {
            SyncError::NotAccepting(reason) => Server::Silent(reason),
            // A lost session is not an answer.
            SyncError::Acl(acl) if acl.category() == "connection" => Server::Unknown,
            // Rejected credentials and refused ACL commands are answers.
            SyncError::AdminRejected | SyncError::Connect(_) | SyncError::Acl(_) => {
                Server::Answered
            }
            _ => Server::Unknown,
        }
    }
}

/// What was last applied, and the server's ACL right after.
struct Applied {
    admin: AdminCredentials,
    app: AppCredentials,
    monitoring: Option<MonitoringCredentials>,
    acl: Vec<String>,
}

pub(super) struct Syncer {
    settings: Settings,
    conn: Option<MultiplexedConnection>,
    applied: Option<Applied>,
    /// `maxmemory` and `maxmemory-policy` last set (`None`: not yet).
    applied_memory: Option<(String, String)>,
}

impl UserSync for Syncer {
    type Error = SyncError;

    async fn tick(&mut self, _: &Health) -> Result<Progress, SyncError> {
        let result = self.apply().await;
        if result.as_ref().is_err_and(SyncError::lost_session) {
            self.conn = None;
        }
        result.map(|()| Progress::Ready)
    }
}

impl Syncer {
    pub(super) fn new(settings: Settings) -> Syncer {
        Syncer {
            settings,
            conn: None,
            applied: None,
            applied_memory: None,
        }
    }

    async fn apply(&mut self) -> Result<(), SyncError> {
        let admin = secrets::read_admin(&self.settings.admin_secret_dir).await?;
        let app = users::read_app(&self.settings.app_secret_dir).await?;
        let admin_user = users::admin_user(&admin)?;
        let service_user = users::service_user(&admin, &app, self.settings.scripting)?;
        let monitoring = secrets::read_monitoring(&self.settings.admin_secret_dir).await?;
        let monitoring_user = monitoring
            .as_ref()
            .map(|login| users::monitoring_user(&admin, &app, login))
            .transpose()?;
        let mut conn = self.connect(&admin).await?;
        let conn = &mut conn;
        let memory = secrets::read_redis_memory(&self.settings.admin_secret_dir).await?;
        if self.applied_memory.as_ref() != Some(&memory) {
            for (name, value) in [("maxmemory", &memory.0), ("maxmemory-policy", &memory.1)] {
                redis::cmd("CONFIG")
                    .arg("SET")
                    .arg(name)
                    .arg(value)
                    .query_async::<()>(conn)
                    .await
                    .map_err(|e| SyncError::Config(name, redis_acl::describe(&e)))?;
            }
            info!(maxmemory = %memory.0, policy = %memory.1, "memory settings applied");
            self.applied_memory = Some(memory);
        }
        let acl = acl_list(conn).await?;

        // `applied` is only replaced once everything succeeded: until then
        // it still names the admin password the server may have and the
        // service user a rename must remove.
        let mut renamed_from = None;
        if let Some(applied) = &self.applied {
            let same_secrets =
                applied.admin == admin && applied.app == app && applied.monitoring == monitoring;
            if same_secrets && applied.acl == acl {
                return Ok(());
            }
            if same_secrets {
                warn!("the ACL was changed outside servicedb; restoring it");
            }
            if applied.app.username != app.username {
                renamed_from = Some(applied.app.username.clone());
            }
        }
        for user in [AclUser::disabled_default(), admin_user, service_user]
            .into_iter()
            .chain(monitoring_user)
        {
            user.apply(conn).await?;
        }
        if monitoring.is_none() && redis_acl::remove_user(conn, monitoring::USERNAME).await? {
            info!("monitoring is off; its user is removed");
        }
        if let Some(old) = renamed_from {
            let removed = redis_acl::remove_user(conn, &old).await?;
            info!(%old, new = %app.username, removed, "service user renamed; the old one is removed");
        }
        redis_acl::save_acl_file(conn).await?;
        info!(admin = %admin.username, service = %app.username, prefix = %app.key_prefix, "users applied and saved to the ACL file");
        let acl = acl_list(conn).await?;
        self.applied = Some(Applied {
            admin,
            app,
            monitoring,
            acl,
        });
        Ok(())
    }

    /// Reuses the open admin session while it answers PING. A new session
    /// (the old one was closed, or the server stopped answering) tries the
    /// passwords of [`AdminCredentials::passwords_to_try`], the one applied
    /// last among them. The username itself only changes with a restart,
    /// which writes the ACL file afresh. Returns a handle on the session (a
    /// clone shares it).
    async fn connect(
        &mut self,
        admin: &AdminCredentials,
    ) -> Result<MultiplexedConnection, SyncError> {
        if let Some(mut conn) = self.conn.take() {
            match ping(&mut conn).await {
                Ok(()) => return Ok(self.conn.insert(conn).clone()),
                Err(error) => debug!(error = %redis_acl::describe(&error), "admin session lost"),
            }
        }
        let applied = self
            .applied
            .as_ref()
            .filter(|applied| applied.admin.username == admin.username)
            .map(|applied| applied.admin.password.as_str());
        let candidates = admin.passwords_to_try(applied);
        for (attempt, password) in candidates.into_iter().enumerate() {
            match self.open(&admin.username, password).await {
                Ok(conn) => {
                    if attempt > 0 {
                        info!("connected with the admin's previous password; applying the new one");
                    }
                    return Ok(self.conn.insert(conn).clone());
                }
                Err(error) if error.kind() == ErrorKind::AuthenticationFailed => continue,
                Err(error) if is_not_answering(&error) => return Err(not_accepting(&error)),
                Err(error) => return Err(SyncError::Connect(redis_acl::describe(&error))),
            }
        }
        Err(SyncError::AdminRejected)
    }

    async fn open(
        &self,
        username: &str,
        password: &str,
    ) -> Result<MultiplexedConnection, RedisError> {
        let info = ConnectionAddr::Unix(self.settings.socket.clone())
            .into_connection_info()?
            .set_redis_settings(
                RedisConnectionInfo::default()
                    .set_username(username)
                    .set_password(password),
            );
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(TIMEOUT))
            .set_response_timeout(Some(TIMEOUT));
        let mut conn = redis::Client::open(info)?
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        ping(&mut conn).await?;
        Ok(conn)
    }
}

async fn ping(conn: &mut MultiplexedConnection) -> Result<(), RedisError> {
    redis::cmd("PING")
        .query_async::<String>(conn)
        .await
        .map(drop)
}

async fn acl_list(conn: &mut MultiplexedConnection) -> Result<Vec<String>, AclError> {
    redis::cmd("ACL")
        .arg("LIST")
        .query_async(conn)
        .await
        .map_err(|source| AclError::Server {
            action: "ACL LIST",
            source,
        })
}

/// No socket yet, a refused or timed-out connection, or a server still
/// loading its data: not an answer.
fn is_not_answering(error: &RedisError) -> bool {
    error.is_connection_refusal()
        || error.is_timeout()
        || error.is_connection_dropped()
        || error.kind() == ErrorKind::Io
        || error.kind() == ErrorKind::Server(ServerErrorKind::BusyLoading)
}

fn not_accepting(error: &RedisError) -> SyncError {
    SyncError::NotAccepting(redis_acl::describe(error))
}
