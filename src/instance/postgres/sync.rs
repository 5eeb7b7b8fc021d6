//! Keeps the server's users in step with the mounted Secrets: every
//! interval, re-read the Secret files, check the server still answers, and
//! apply whatever changed (the admin's password, the service's role and
//! database, the exporter's login). Unchanged Secrets cost one `SELECT 1`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, NoTls};
use tracing::{debug, info};

use crate::engine::logins::Logins;
use crate::engine::monitoring;
use crate::engine::postgres_users::{self, UserError};
use crate::instance::secrets::{self, AdminCredentials, MonitoringCredentials, SecretError};
use crate::instance::status::Health;
use crate::instance::sync::{Progress, Server, SyncFailure, UserSync};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Even with unchanged Secrets, check the server's side this often, so that
/// a password or privilege changed by hand does not stay changed.
const RECHECK_EVERY: Duration = Duration::from_secs(300);

#[derive(Debug, Clone)]
pub(super) struct Settings {
    pub socket_dir: PathBuf,
    pub port: u16,
    pub admin_secret_dir: PathBuf,
    pub app_secret_dir: PathBuf,
    /// The service's owner identity; the Secret's `username` when unset.
    pub service_owner: Option<String>,
    /// The data directory, where the service's parameters file goes.
    pub pgdata: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub(super) enum SyncError {
    #[error(transparent)]
    Secret(#[from] SecretError),
    #[error("the server does not accept connections yet: {0}")]
    NotAccepting(String),
    #[error("the server rejected the admin credentials")]
    AdminRejected,
    #[error("cannot connect as the admin: {0}")]
    Connect(String),
    #[error(
        "the service username is the admin username {0:?}; the service needs a role of its own"
    )]
    ServiceIsAdmin(String),
    #[error("admin {0}")]
    Admin(UserError),
    #[error("service user: {0}")]
    Service(UserError),
    #[error(
        "the monitoring login {0:?} is the admin's or the service's; it needs a name of its own"
    )]
    MonitoringNameTaken(String),
    #[error("monitoring login: {0}")]
    Monitoring(UserError),
    #[error("parameters: {0}")]
    Parameters(String),
}

impl SyncFailure for SyncError {
    fn category(&self) -> &'static str {
        match self {
            SyncError::Secret(error) => error.category(),
            SyncError::NotAccepting(_) => "not_accepting",
            SyncError::AdminRejected => "admin_rejected",
            SyncError::Connect(_) => "connect",
            SyncError::ServiceIsAdmin(_) => "service_is_admin",
            SyncError::MonitoringNameTaken(_) => "monitoring_name_taken",
            SyncError::Parameters(_) => "parameters",
            SyncError::Admin(error) | SyncError::Service(error) | SyncError::Monitoring(error) => {
                error.category()
            }
        }
    }

    fn server(&self) -> Server<'_> {
        match self {
            SyncError::NotAccepting(reason) => Server::Silent(reason),
            SyncError::AdminRejected | SyncError::Connect(_) => Server::Answered,
            _ => Server::Unknown,
        }
    }
}

pub(super) struct Syncer {
    settings: Settings,
    client: Option<Client>,
    applied_admin: Option<AdminCredentials>,
    applied_app: Option<(String, String, Logins)>,
    /// The monitoring login last applied (`Some(None)`: none, dropped).
    applied_monitoring: Option<Option<MonitoringCredentials>>,
    /// The parameters file the server last reloaded (`None`: not yet).
    applied_parameters: Option<String>,
    last_full_check: Instant,
}

impl UserSync for Syncer {
    type Error = SyncError;

    async fn tick(&mut self, health: &Health) -> Result<Progress, SyncError> {
        let admin = secrets::read_admin(&self.settings.admin_secret_dir).await?;
        let app = secrets::read_app(&self.settings.app_secret_dir).await?;
        let logins = secrets::read_logins(&self.settings.app_secret_dir).await?;
        if let Some(login) = logins.all().find(|l| l.username == admin.username) {
            return Err(SyncError::ServiceIsAdmin(login.username.clone()));
        }
        let monitoring = secrets::read_monitoring(&self.settings.admin_secret_dir).await?;
        if let Some(name) = monitoring
            .as_ref()
            .map(|m| &m.username)
            .filter(|name| **name == admin.username || logins.all().any(|l| l.username == **name))
        {
            return Err(SyncError::MonitoringNameTaken(name.clone()));
        }
        // The Secret's login is the owner or its rotation twin.
        let owner = self
            .settings
            .service_owner
            .clone()
            .unwrap_or_else(|| logins.current.username.clone());
        let app = (owner, app.database, logins);
        self.connect(&admin).await?;
        if !health.set_accepting(true) {
            info!("postgres accepts connections");
        }
        let Some(client) = &self.client else {
            return Err(SyncError::NotAccepting("no connection".to_owned()));
        };
        if self.last_full_check.elapsed() >= RECHECK_EVERY {
            self.applied_admin = None;
            self.applied_app = None;
            self.applied_monitoring = None;
            self.last_full_check = Instant::now();
        }

        if self.applied_admin.as_ref() != Some(&admin) {
            let changed = postgres_users::set_password(client, &admin.username, &admin.password)
                .await
                .map_err(SyncError::Admin)?;
            if changed {
                info!(role = %admin.username, "admin password changed");
            }
            self.applied_admin = Some(admin);
        }
        if self.applied_app.as_ref() != Some(&app) {
            let (owner, database, logins) = &app;
            let outcome =
                postgres_users::ensure_service_logins(client, owner, database, logins, None)
                    .await
                    .map_err(SyncError::Service)?;
            if outcome.changed() {
                info!(role = %logins.current.username, %database, ?outcome, "service logins updated");
            } else {
                debug!(role = %logins.current.username, %database, "service logins up to date");
            }
            self.applied_app = Some(app);
        }
        if self.applied_monitoring.as_ref() != Some(&monitoring) {
            match &monitoring {
                Some(login) => {
                    let changed =
                        monitoring::ensure_postgres(client, &login.username, &login.password)
                            .await
                            .map_err(SyncError::Monitoring)?;
                    if changed {
                        info!(role = %login.username, "monitoring login updated");
                    }
                }
                None => monitoring::drop_postgres(client, monitoring::USERNAME)
                    .await
                    .map_err(SyncError::Monitoring)?,
            }
            self.applied_monitoring = Some(monitoring);
        }
        let parameters = secrets::read_parameters(&self.settings.admin_secret_dir)
            .await?
            .unwrap_or_default();
        if self.applied_parameters.as_ref() != Some(&parameters) {
            reload_parameters(client, &self.settings.pgdata, &parameters).await?;
            self.applied_parameters = Some(parameters);
        }
        Ok(Progress::Ready)
    }
}

/// Writes the parameters file when it changed and has the server reload
/// it, then logs each parameter the server refused (it keeps the value it
/// had). Those it reads at start only wait for the pod the operator rolls.
async fn reload_parameters(
    client: &Client,
    pgdata: &std::path::Path,
    parameters: &str,
) -> Result<(), SyncError> {
    let changed = super::datadir::write_parameters(pgdata, parameters)
        .map_err(|e| SyncError::Parameters(format!("{e:#}")))?;
    if !changed {
        return Ok(());
    }
    client
        .simple_query("SELECT pg_reload_conf()")
        .await
        .map_err(|e| SyncError::Parameters(postgres_users::describe(&e)))?;
    info!("parameters reloaded");
    let file = crate::engine::postgres_parameters::CONF_FILE;
    let refused = client
        .query(
            "SELECT name, error FROM pg_file_settings \
             WHERE error IS NOT NULL AND sourcefile LIKE '%/' || $1::text",
            &[&file],
        )
        .await
        .map_err(|e| SyncError::Parameters(postgres_users::describe(&e)))?;
    for row in refused {
        let (name, error): (Option<String>, String) = (row.get(0), row.get(1));
        tracing::warn!(parameter = name.as_deref().unwrap_or("?"), %error, "PostgreSQL refuses a parameter");
    }
    Ok(())
}

impl Syncer {
    pub(super) fn new(settings: Settings) -> Syncer {
        Syncer {
            settings,
            client: None,
            applied_admin: None,
            applied_app: None,
            applied_monitoring: None,
            applied_parameters: None,
            last_full_check: Instant::now(),
        }
    }

    /// Reuses the open admin session while it works. A new one tries the
    /// passwords of [`AdminCredentials::passwords_to_try`], the one applied
    /// last among them.
    async fn connect(&mut self, admin: &AdminCredentials) -> Result<(), SyncError> {
        if let Some(client) = &self.client {
            match client.simple_query("SELECT 1").await {
                Ok(_) => return Ok(()),
                Err(error) => {
                    debug!(error = %postgres_users::describe(&error), "admin session lost");
                    self.client = None;
                }
            }
        }
        let applied = self
            .applied_admin
            .as_ref()
            .filter(|applied| applied.username == admin.username)
            .map(|applied| applied.password.as_str());
        for (attempt, password) in admin.passwords_to_try(applied).into_iter().enumerate() {
            match self.connect_with(&admin.username, password).await {
                Ok(client) => {
                    if attempt > 0 {
                        info!("connected with the admin's previous password; applying the new one");
                        // Make sure the new password gets applied.
                        self.applied_admin = None;
                    }
                    self.client = Some(client);
                    return Ok(());
                }
                Err(error) if error.code() == Some(&SqlState::INVALID_PASSWORD) => continue,
                Err(error) => return Err(classify_connect_error(&error)),
            }
        }
        Err(SyncError::AdminRejected)
    }

    async fn connect_with(
        &self,
        user: &str,
        password: &str,
    ) -> Result<Client, tokio_postgres::Error> {
        let mut config = tokio_postgres::Config::new();
        config
            .host_path(&self.settings.socket_dir)
            .port(self.settings.port)
            .user(user)
            .password(password)
            .dbname("postgres")
            .application_name("servicedb-instance")
            .connect_timeout(CONNECT_TIMEOUT);
        let (client, connection) = config.connect(NoTls).await?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                debug!(error = %postgres_users::describe(&error), "admin connection closed");
            }
        });
        Ok(client)
    }
}

/// A server that is starting, stopping or recovering either has no socket
/// yet or answers "cannot connect now"; anything else it says means it is up.
fn classify_connect_error(error: &tokio_postgres::Error) -> SyncError {
    let described = postgres_users::describe(error);
    match error.code() {
        None => SyncError::NotAccepting(described),
        Some(code) if *code == SqlState::CANNOT_CONNECT_NOW => SyncError::NotAccepting(described),
        Some(_) => SyncError::Connect(described),
    }
}
