//! The loop that brings the server to what the Secrets say, every
//! `--sync-interval` (every 200 ms while it is still starting): re-read the
//! Secret files, look at the server (an unauthenticated `hello`, then root's
//! login), take the step [`bootstrap::next_step`] picks, and report to the
//! probes. Unchanged Secrets on a ready server cost two `hello`s (one
//! anonymous, one as root on the primary).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use mongodb::Client;
use mongodb::bson::Document;
use tracing::{debug, info};

use super::bootstrap::{self, ReplicaSet, RootLogin, Step};
use crate::engine::logins::Logins;
use crate::engine::mongodb_users::{self as users, Login, UserError, UserSpec};
use crate::engine::monitoring;
use crate::engine::postgres_users::ServiceUser;
use crate::instance::secrets::{self, AdminCredentials, MonitoringCredentials, SecretError};
use crate::instance::status::{Health, SyncState};
use crate::instance::sync::{Progress, Server, SyncFailure, UserSync};

const LOOPBACK: &str = "127.0.0.1";
const TIMEOUT: Duration = Duration::from_secs(3);
/// Even with unchanged Secrets, compare the service's user with the server
/// this often, so that a change made by hand does not stay.
const RECHECK_EVERY: Duration = Duration::from_secs(300);
/// Steps taken in one go (initiate, create root, rotate root, sync users)
/// before pausing; more means something keeps undoing our work.
const MAX_STEPS: usize = 4;

#[derive(Debug, Clone)]
pub(super) struct Settings {
    pub port: u16,
    pub admin_secret_dir: PathBuf,
    pub app_secret_dir: PathBuf,
    /// The service's owner identity; the Secret's `username` when unset.
    pub service_owner: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub(super) enum SyncError {
    #[error(transparent)]
    Secret(#[from] SecretError),
    #[error("mongod does not answer yet: {0}")]
    NotAccepting(UserError),
    #[error(
        "root cannot log in with the Secret's password (nor a previous one) and users exist \
         already, so it cannot be created; put the current password in `previous-password`"
    )]
    AdminRejected,
    #[error("the service username is the admin's ({0:?}); the service needs a user of its own")]
    ServiceIsAdmin(String),
    #[error("logged in as root, mongod says it is not the writable primary")]
    NotPrimary,
    #[error("root: {0}")]
    Root(UserError),
    #[error("service user: {0}")]
    Service(UserError),
    #[error(
        "the monitoring user {0:?} is the admin's or the service's; it needs a name of its own"
    )]
    MonitoringNameTaken(String),
    #[error("monitoring user: {0}")]
    Monitoring(UserError),
}

impl SyncFailure for SyncError {
    fn category(&self) -> &'static str {
        match self {
            SyncError::Secret(error) => error.category(),
            SyncError::NotAccepting(_) => "not_accepting",
            SyncError::AdminRejected => "admin_rejected",
            SyncError::ServiceIsAdmin(_) => "service_is_admin",
            SyncError::NotPrimary => "not_primary",
            SyncError::MonitoringNameTaken(_) => "monitoring_name_taken",
            SyncError::Root(error) | SyncError::Service(error) | SyncError::Monitoring(error) => {
                error.category()
            }
        }
    }

    fn server(&self) -> Server<'_> {
        match self {
            SyncError::NotAccepting(reason) => Server::Silent(reason),
            _ => Server::Unknown,
        }
    }
}

/// A root session, the password it logged in with, and what `hello` as
/// root said this tick.
struct Root {
    client: Client,
    password: String,
    hello: Document,
}

pub(super) struct Syncer {
    settings: Settings,
    /// No credentials: `hello`, and the localhost exception on first start.
    anonymous: Client,
    root: Option<Root>,
    applied_app: Option<(ServiceUser, Logins)>,
    /// The monitoring user last applied (`Some(None)`: none, dropped).
    applied_monitoring: Option<Option<MonitoringCredentials>>,
    checked_at: Instant,
}

impl UserSync for Syncer {
    type Error = SyncError;

    async fn tick(&mut self, health: &Health) -> Result<Progress, SyncError> {
        let result = self.steps(health).await;
        if let Err(SyncError::NotAccepting(_)) = result {
            // Ready again only after a whole tick has succeeded.
            health.set_sync(SyncState::Pending);
        }
        result
    }
}

impl Syncer {
    pub(super) fn new(settings: Settings) -> Result<Syncer, UserError> {
        Ok(Syncer {
            anonymous: users::direct_client(LOOPBACK, settings.port, None, TIMEOUT)?,
            settings,
            root: None,
            applied_app: None,
            applied_monitoring: None,
            checked_at: Instant::now(),
        })
    }

    /// The member as it names itself in the replica set config. Loopback
    /// is always this member, whatever the pod is called or wherever the
    /// volume is attached next; clients connect with `directConnection=true`
    /// (the Secret's URI), so they never dial the configured host.
    fn member_host(&self) -> String {
        format!("{LOOPBACK}:{}", self.settings.port)
    }

    /// Takes the steps [`bootstrap::next_step`] picks until one has to
    /// wait or the users are in step.
    async fn steps(&mut self, health: &Health) -> Result<Progress, SyncError> {
        let admin = secrets::read_admin(&self.settings.admin_secret_dir).await?;
        let app = secrets::read_app(&self.settings.app_secret_dir).await?;
        if app.role == admin.username {
            return Err(SyncError::ServiceIsAdmin(app.role));
        }
        for _ in 0..MAX_STEPS {
            let hello = users::hello(&self.anonymous)
                .await
                .map_err(SyncError::NotAccepting)?;
            if !health.set_accepting(true) {
                info!("mongod answers");
            }
            let replica = ReplicaSet::from_hello(&hello);
            let login = self.log_in(&admin).await?;
            let step = bootstrap::next_step(replica, login);
            debug!(?replica, ?login, ?step, "next step");
            match step {
                Step::InitiateReplicaSet { as_root } => {
                    let client = match (&self.root, as_root) {
                        (Some(root), true) => &root.client,
                        _ => &self.anonymous,
                    };
                    let host = self.member_host();
                    if users::initiate_replica_set(client, &host)
                        .await
                        .map_err(SyncError::Root)?
                    {
                        info!(%host, "replica set initiated");
                    }
                }
                Step::WaitForPrimary => return Ok(Progress::Starting),
                Step::CreateRoot => {
                    let root = UserSpec::root(&admin.username, &admin.password);
                    match users::create_user(&self.anonymous, &root).await {
                        Ok(()) => info!(user = %admin.username, "root created"),
                        Err(error) if error.is_unauthorized() => {
                            return Err(SyncError::AdminRejected);
                        }
                        Err(error) => return Err(SyncError::Root(error)),
                    }
                }
                Step::RotateRootPassword => {
                    let Some(root) = self.root.take() else {
                        return Ok(Progress::Starting);
                    };
                    users::set_password(
                        &root.client,
                        users::ADMIN_DATABASE,
                        &admin.username,
                        &admin.password,
                    )
                    .await
                    .map_err(SyncError::Root)?;
                    info!(user = %admin.username, "root's password changed to the Secret's");
                }
                Step::SyncUsers => {
                    self.sync_service_user(&app).await?;
                    return Ok(Progress::Ready);
                }
            }
        }
        Ok(Progress::Starting)
    }

    /// Root's session, kept while it works with the Secret's password. A
    /// new one tries the passwords of [`AdminCredentials::passwords_to_try`],
    /// the one in use until now among them.
    async fn log_in(&mut self, admin: &AdminCredentials) -> Result<RootLogin, SyncError> {
        if let Some(root) = &mut self.root
            && root.password == admin.password
        {
            match users::hello(&root.client).await {
                Ok(hello) => {
                    root.hello = hello;
                    return Ok(RootLogin::Current);
                }
                Err(error) if error.is_login_refused() => {}
                Err(error) => return Err(SyncError::NotAccepting(error)),
            }
        }
        let in_use = self.root.take().map(|root| root.password);
        let candidates = admin.passwords_to_try(in_use.as_deref());
        for (attempt, password) in candidates.into_iter().enumerate() {
            let login = Login {
                source: users::ADMIN_DATABASE,
                user: &admin.username,
                password,
            };
            let client = users::direct_client(LOOPBACK, self.settings.port, Some(login), TIMEOUT)
                .map_err(SyncError::Root)?;
            match users::hello(&client).await {
                Ok(hello) => {
                    self.root = Some(Root {
                        client,
                        password: password.to_owned(),
                        hello,
                    });
                    return Ok(if attempt == 0 {
                        RootLogin::Current
                    } else {
                        RootLogin::Outdated
                    });
                }
                Err(error) if error.is_login_refused() => continue,
                Err(error) => return Err(SyncError::NotAccepting(error)),
            }
        }
        Ok(RootLogin::Rejected)
    }

    /// Readiness needs `hello` as root (sent by [`Syncer::log_in`] this
    /// tick) to say PRIMARY; then the service's user is brought in step if
    /// the Secret changed (or a recheck is due).
    async fn sync_service_user(&mut self, app: &ServiceUser) -> Result<(), SyncError> {
        let logins = secrets::read_logins(&self.settings.app_secret_dir).await?;
        let app = &(app.clone(), logins);
        let Some(root) = &self.root else {
            return Err(SyncError::NotPrimary);
        };
        if ReplicaSet::from_hello(&root.hello) != ReplicaSet::Primary {
            return Err(SyncError::NotPrimary);
        }
        if self.checked_at.elapsed() >= RECHECK_EVERY {
            self.applied_app = None;
            self.applied_monitoring = None;
        }
        let monitoring = secrets::read_monitoring(&self.settings.admin_secret_dir).await?;
        if self.applied_monitoring.as_ref() != Some(&monitoring) {
            sync_monitoring_user(&root.client, &app.1, monitoring.as_ref()).await?;
            self.applied_monitoring = Some(monitoring);
        }
        if self.applied_app.as_ref() == Some(app) {
            return Ok(());
        }
        let (user, logins) = app;
        // The Secret's login is the owner or its rotation twin.
        let owner = self.settings.service_owner.as_deref().unwrap_or(&user.role);
        users::ensure_service_logins(&root.client, &user.database, owner, logins, None)
            .await
            .map_err(SyncError::Service)?;
        debug!(user = %logins.current.username, database = %user.database, "service logins in step");
        self.applied_app = Some(app.clone());
        self.checked_at = Instant::now();
        Ok(())
    }
}

/// The exporter's user on `admin` (`engine::monitoring::mongodb_roles`), or
/// none when the Secret has no monitoring login.
async fn sync_monitoring_user(
    client: &Client,
    logins: &Logins,
    login: Option<&MonitoringCredentials>,
) -> Result<(), SyncError> {
    let Some(login) = login else {
        if users::drop_user(client, users::ADMIN_DATABASE, monitoring::USERNAME)
            .await
            .map_err(SyncError::Monitoring)?
        {
            info!("monitoring is off; its user is removed");
        }
        return Ok(());
    };
    if logins.all().any(|l| l.username == login.username) {
        return Err(SyncError::MonitoringNameTaken(login.username.clone()));
    }
    let spec = UserSpec {
        db: users::ADMIN_DATABASE.to_owned(),
        name: login.username.clone(),
        password: login.password.clone(),
        roles: monitoring::mongodb_roles()
            .into_iter()
            .map(|(role, db)| users::Role {
                role: role.to_owned(),
                db: db.to_owned(),
            })
            .collect(),
    };
    let outcome = users::ensure_user(client, &spec)
        .await
        .map_err(SyncError::Monitoring)?;
    debug!(user = %login.username, ?outcome, "monitoring user in step");
    Ok(())
}
