//! The database password: read from the environment only, never printed.

use std::fmt;

/// Environment variable holding the database login's password. A flag would
/// show in `ps` and in the Job's spec; an env var comes from a Secret.
pub const PASSWORD_ENV: &str = "SERVICEDB_PASSWORD";

/// Environment variables a child process (pg_dump, pg_restore) must not
/// inherit: it needs none of them, and a tool that prints its environment
/// on error would leak them.
pub const CHILD_ENV_DENYLIST: &[&str] = &[
    PASSWORD_ENV,
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_ACCESS_KEY_ID",
];

/// A secret value: `Debug` and `Display` print `***`, and `scrub` removes it
/// from text that came from elsewhere (a tool's stderr, a driver's error).
#[derive(Clone, Default)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// `SERVICEDB_PASSWORD`, empty when unset (a server with trust
    /// authentication needs none).
    pub fn from_env() -> anyhow::Result<Secret> {
        match std::env::var(PASSWORD_ENV) {
            Ok(value) => Ok(Secret(value)),
            Err(std::env::VarError::NotPresent) => Ok(Secret::default()),
            Err(std::env::VarError::NotUnicode(_)) => {
                anyhow::bail!("{PASSWORD_ENV} is not valid UTF-8")
            }
        }
    }

    /// The value, for the one place that sends it to the server.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `text` with every occurrence of the secret replaced by `***`.
    pub fn scrub(&self, text: &str) -> String {
        if self.0.is_empty() {
            text.to_owned()
        } else {
            text.replace(&self.0, "***")
        }
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_printed() {
        let secret = Secret::new("hunter2");
        assert_eq!(format!("{secret} {secret:?}"), "*** ***");
    }

    #[test]
    fn scrubbed_from_text() {
        let secret = Secret::new("p@ss'word");
        assert_eq!(
            secret.scrub("login p@ss'word failed for p@ss'word"),
            "login *** failed for ***"
        );
        assert_eq!(Secret::default().scrub("unchanged"), "unchanged");
    }
}
