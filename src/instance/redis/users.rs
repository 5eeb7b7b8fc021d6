//! The users the server must have, from the mounted Secrets: `default`
//! switched off, the administrator, the service confined to its key
//! prefix, and on a monitored instance the exporter's user.

use std::path::Path;

use crate::engine::logins::Logins;
use crate::engine::monitoring;
use crate::engine::redis_acl::{AclError, AclUser, KeyPrefix, Scripting};
use crate::instance::secrets::{self, AdminCredentials, MonitoringCredentials, SecretError};

/// The service's credentials: `username`, `password` and `keyPrefix` of the
/// app Secret (its other keys, such as `uri`, are for the application).
#[derive(Clone, PartialEq, Eq)]
pub(super) struct AppCredentials {
    pub username: String,
    /// The Secret's logins: during a rotation the same user with a second
    /// password.
    pub logins: Logins,
    pub key_prefix: String,
}

impl std::fmt::Debug for AppCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppCredentials")
            .field("username", &self.username)
            .field("key_prefix", &self.key_prefix)
            .finish_non_exhaustive()
    }
}

pub(super) async fn read_app(dir: &Path) -> Result<AppCredentials, SecretError> {
    let logins = secrets::read_logins(dir).await?;
    Ok(AppCredentials {
        username: logins.current.username.clone(),
        logins,
        key_prefix: secrets::read_key(dir, "keyPrefix").await?,
    })
}

#[derive(Debug, thiserror::Error)]
pub(super) enum UsersError {
    #[error(
        "the service username is the admin username {0:?}; the service needs a user of its own"
    )]
    ServiceIsAdmin(String),
    #[error("admin: {0}")]
    Admin(AclError),
    #[error("service user: {0}")]
    Service(AclError),
    #[error(
        "the monitoring user {0:?} is the admin's or the service's; it needs a name of its own"
    )]
    MonitoringNameTaken(String),
    #[error("monitoring user: {0}")]
    Monitoring(AclError),
}

impl UsersError {
    pub(super) fn category(&self) -> &'static str {
        match self {
            UsersError::ServiceIsAdmin(_) => "service_is_admin",
            UsersError::MonitoringNameTaken(_) => "monitoring_name_taken",
            UsersError::Admin(error)
            | UsersError::Service(error)
            | UsersError::Monitoring(error) => error.category(),
        }
    }
}

pub(super) fn admin_user(admin: &AdminCredentials) -> Result<AclUser, UsersError> {
    AclUser::admin(&admin.username, &admin.password).map_err(UsersError::Admin)
}

pub(super) fn service_user(
    admin: &AdminCredentials,
    app: &AppCredentials,
    scripting: Scripting,
) -> Result<AclUser, UsersError> {
    if app.username == admin.username {
        return Err(UsersError::ServiceIsAdmin(app.username.clone()));
    }
    let prefix = KeyPrefix::new(&app.key_prefix).map_err(UsersError::Service)?;
    AclUser::service_with_passwords(
        &app.username,
        &app.logins.passwords_of(&app.username),
        &prefix,
        scripting,
    )
    .map_err(UsersError::Service)
}

/// The exporter's user: server statistics only (`engine::monitoring`).
pub(super) fn monitoring_user(
    admin: &AdminCredentials,
    app: &AppCredentials,
    login: &MonitoringCredentials,
) -> Result<AclUser, UsersError> {
    if login.username == admin.username || login.username == app.username {
        return Err(UsersError::MonitoringNameTaken(login.username.clone()));
    }
    monitoring::redis_user(&login.username, &login.password).map_err(UsersError::Monitoring)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admin() -> AdminCredentials {
        AdminCredentials {
            username: "admin".into(),
            password: "adm".into(),
            previous_password: None,
        }
    }

    fn app(username: &str, key_prefix: &str) -> AppCredentials {
        AppCredentials {
            username: username.into(),
            logins: Logins::single(crate::engine::logins::Login::new(username, "hunter2")),
            key_prefix: key_prefix.into(),
        }
    }

    #[test]
    fn the_service_gets_its_own_confined_user() {
        let user = service_user(&admin(), &app("cart", "cart:"), Scripting::Refused).expect("user");
        assert_eq!(user.name(), "cart");
        assert!(user.rules().contains(&"~cart:*".to_owned()));
        assert!(user.rules().contains(&"-@scripting".to_owned()));
        let scripted =
            service_user(&admin(), &app("cart", "cart:"), Scripting::Allowed).expect("user");
        assert!(!scripted.rules().contains(&"-@scripting".to_owned()));
        assert!(scripted.rules().contains(&"~cart:*".to_owned()));
        let category = |result: Result<AclUser, UsersError>| result.map_err(|e| e.category()).err();
        assert_eq!(
            category(service_user(
                &admin(),
                &app("admin", "cart:"),
                Scripting::Refused
            )),
            Some("service_is_admin")
        );
        assert_eq!(
            category(service_user(
                &admin(),
                &app("default", "cart:"),
                Scripting::Refused
            )),
            Some("reserved_user")
        );
        assert_eq!(
            category(service_user(
                &admin(),
                &app("cart", "*"),
                Scripting::Refused
            )),
            Some("invalid_key_prefix")
        );
        assert_eq!(category(admin_user(&admin())), None);
    }

    #[tokio::test]
    async fn reads_the_app_secret_and_ignores_other_keys() {
        let dir = tempfile::tempdir().expect("tempdir");
        for (key, value) in [
            ("username", "cart\n"),
            ("password", "s3cret"),
            ("keyPrefix", "cart:\n"),
            ("uri", "redis://ignored"),
        ] {
            std::fs::write(dir.path().join(key), value).expect("write");
        }
        let read = read_app(dir.path()).await.expect("read");
        assert_eq!(read, app("cart", "cart:").with_password("s3cret"));
        assert!(!format!("{read:?}").contains("s3cret"));
        std::fs::remove_file(dir.path().join("keyPrefix")).expect("rm");
        let missing = read_app(dir.path()).await.expect_err("no keyPrefix");
        assert_eq!(missing.category(), "secret_missing");
    }

    impl AppCredentials {
        fn with_password(mut self, password: &str) -> Self {
            self.logins.current.password = password.into();
            self
        }
    }
}
