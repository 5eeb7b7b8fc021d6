//! The mounted Secrets. The kubelet updates them by swapping a symlink, so
//! they are simply read again, whole, on every sync: no inotify, no caching.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::engine::logins::{Login, Logins};
use crate::engine::postgres_users::ServiceUser;

/// The administrator's credentials.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct AdminCredentials {
    pub username: String,
    pub password: String,
    /// Tried when `password` is rejected: lets a rotation that happened while
    /// the instance was down be applied at the next start.
    pub previous_password: Option<String>,
}

impl AdminCredentials {
    /// The passwords to log in with, in order and without repeats: the
    /// Secret's, then `applied` (what the server was last given: the Secret
    /// changed and the server still has the old one), then
    /// `previous-password`. Shared by the engines' sync loops.
    pub(crate) fn passwords_to_try<'a>(&'a self, applied: Option<&'a str>) -> Vec<&'a str> {
        let mut passwords = vec![self.password.as_str()];
        for password in applied.into_iter().chain(self.previous_password.as_deref()) {
            if !passwords.contains(&password) {
                passwords.push(password);
            }
        }
        passwords
    }
}

impl fmt::Debug for AdminCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminCredentials")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// The exporter's login, from the administrator Secret of a monitored
/// instance (see `engine::monitoring`).
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct MonitoringCredentials {
    pub username: String,
    pub password: String,
}

impl fmt::Debug for MonitoringCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MonitoringCredentials")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// The rendered `spec.postgres.parameters` of the admin Secret, if any.
pub(crate) async fn read_parameters(dir: &Path) -> Result<Option<String>, SecretError> {
    read_optional_key(dir, crate::engine::postgres_parameters::SECRET_KEY).await
}

/// `maxmemory` and `maxmemory-policy` from the admin Secret of a Redis
/// instance; Redis's defaults (`0`: no limit, `noeviction`) without them.
pub(crate) async fn read_redis_memory(dir: &Path) -> Result<(String, String), SecretError> {
    use crate::engine::redis::{MAXMEMORY_KEY, MAXMEMORY_POLICY_KEY};
    Ok((
        read_optional_key(dir, MAXMEMORY_KEY)
            .await?
            .unwrap_or_else(|| "0".to_owned()),
        read_optional_key(dir, MAXMEMORY_POLICY_KEY)
            .await?
            .unwrap_or_else(|| "noeviction".to_owned()),
    ))
}

/// The monitoring login, or `None` when the instance is not monitored (the
/// Secret has neither key); one key without the other is an error.
pub(crate) async fn read_monitoring(
    dir: &Path,
) -> Result<Option<MonitoringCredentials>, SecretError> {
    use crate::engine::monitoring::{PASSWORD_KEY, USERNAME_KEY};
    let username = read_optional_key(dir, USERNAME_KEY).await?;
    let password = read_optional_key(dir, PASSWORD_KEY).await?;
    match (username, password) {
        (Some(username), Some(password)) => Ok(Some(MonitoringCredentials { username, password })),
        (None, None) => Ok(None),
        (None, Some(_)) => Err(SecretError::Missing {
            path: dir.join(USERNAME_KEY),
        }),
        (Some(_), None) => Err(SecretError::Missing {
            path: dir.join(PASSWORD_KEY),
        }),
    }
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum SecretError {
    #[error("secret file {path} is missing")]
    Missing { path: PathBuf },
    #[error("cannot read secret file {path}: {source}")]
    Unreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("secret file {path} is not UTF-8 text")]
    NotText { path: PathBuf },
    #[error("secret file {path} is empty")]
    Empty { path: PathBuf },
}

impl SecretError {
    pub(crate) fn category(&self) -> &'static str {
        match self {
            SecretError::Missing { .. } => "secret_missing",
            SecretError::Unreadable { .. } => "secret_unreadable",
            SecretError::NotText { .. } => "secret_invalid",
            SecretError::Empty { .. } => "secret_empty",
        }
    }
}

pub(crate) async fn read_admin(dir: &Path) -> Result<AdminCredentials, SecretError> {
    Ok(AdminCredentials {
        username: read_key(dir, "username").await?,
        password: read_key(dir, "password").await?,
        previous_password: read_optional_key(dir, "previous-password").await?,
    })
}

pub(crate) async fn read_app(dir: &Path) -> Result<ServiceUser, SecretError> {
    Ok(ServiceUser {
        role: read_key(dir, "username").await?,
        password: read_key(dir, "password").await?,
        database: read_key(dir, "database").await?,
    })
}

/// The service's logins as the credentials Secret lists them: `username`/
/// `password`, and during a rotation `next-…` and `previous-…` (see
/// [`crate::engine::logins`]).
pub(crate) async fn read_logins(dir: &Path) -> Result<Logins, SecretError> {
    let pair = |user: &'static str, password: &'static str| async move {
        match (
            read_optional_key(dir, user).await?,
            read_optional_key(dir, password).await?,
        ) {
            (Some(user), Some(password)) => Ok::<_, SecretError>(Some(Login::new(user, password))),
            _ => Ok(None),
        }
    };
    Ok(Logins {
        current: Login::new(
            read_key(dir, "username").await?,
            read_key(dir, "password").await?,
        ),
        next: pair("next-username", "next-password").await?,
        previous: pair("previous-username", "previous-password").await?,
    })
}

pub(crate) async fn read_key(dir: &Path, key: &str) -> Result<String, SecretError> {
    read_optional_key(dir, key)
        .await?
        .ok_or_else(|| SecretError::Missing {
            path: dir.join(key),
        })
}

async fn read_optional_key(dir: &Path, key: &str) -> Result<Option<String>, SecretError> {
    let path = dir.join(key);
    let bytes = match tokio::fs::read(&path).await {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(SecretError::Unreadable { path, source }),
    };
    let text = String::from_utf8(bytes).map_err(|_| SecretError::NotText { path: path.clone() })?;
    let value = trim_newline(&text);
    if value.is_empty() {
        return Err(SecretError::Empty { path });
    }
    Ok(Some(value.to_owned()))
}

/// Drops one trailing line ending (`echo` and most editors add one); any
/// other whitespace is part of the value.
fn trim_newline(text: &str) -> &str {
    let text = text.strip_suffix('\n').unwrap_or(text);
    text.strip_suffix('\r').unwrap_or(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_one_line_ending() {
        assert_eq!(trim_newline("pw\n"), "pw");
        assert_eq!(trim_newline("pw\r\n"), "pw");
        assert_eq!(trim_newline("pw"), "pw");
        assert_eq!(trim_newline("pw \n\n"), "pw \n");
        assert_eq!(trim_newline(" pw "), " pw ");
    }

    #[tokio::test]
    async fn reads_through_kubelet_style_symlinks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("..2025_01_01");
        std::fs::create_dir(&data).expect("mkdir");
        for (key, value) in [
            ("username", "orders\n"),
            ("password", "s3cret"),
            ("database", "orders-db\n"),
        ] {
            std::fs::write(data.join(key), value).expect("write");
        }
        std::os::unix::fs::symlink("..2025_01_01", dir.path().join("..data")).expect("symlink");
        for key in ["username", "password", "database"] {
            std::os::unix::fs::symlink(format!("..data/{key}"), dir.path().join(key))
                .expect("symlink");
        }
        let app = read_app(dir.path()).await.expect("reads");
        assert_eq!(app.role, "orders");
        assert_eq!(app.password, "s3cret");
        assert_eq!(app.database, "orders-db");

        std::fs::remove_file(data.join("database")).expect("rm");
        let err = read_app(dir.path()).await.expect_err("missing key");
        assert_eq!(err.category(), "secret_missing");
        assert!(read_admin(dir.path()).await.is_ok());
        std::fs::write(data.join("password"), "\n").expect("write");
        let err = read_admin(dir.path()).await.expect_err("empty");
        assert_eq!(err.category(), "secret_empty");
    }

    #[test]
    fn passwords_to_try_come_in_order_without_repeats() {
        let admin = AdminCredentials {
            username: "admin".into(),
            password: "new".into(),
            previous_password: Some("old".into()),
        };
        assert_eq!(admin.passwords_to_try(None), ["new", "old"]);
        assert_eq!(
            admin.passwords_to_try(Some("applied")),
            ["new", "applied", "old"]
        );
        assert_eq!(admin.passwords_to_try(Some("old")), ["new", "old"]);
        assert_eq!(admin.passwords_to_try(Some("new")), ["new", "old"]);
    }

    #[test]
    fn debug_hides_passwords() {
        let admin = AdminCredentials {
            username: "postgres".into(),
            password: "hunter2".into(),
            previous_password: Some("hunter1".into()),
        };
        let shown = format!("{admin:?}");
        assert!(shown.contains("postgres"));
        assert!(!shown.contains("hunter"));
    }
}
