//! MongoDB service users: one SCRAM-SHA-256 user per service, defined on the
//! service's own database (its `authSource`) with `readWrite` on that
//! database and nothing else.
//!
//! Used by the instance manager (dedicated replica sets, over loopback) and
//! by the operator (shared servers), so it knows nothing about Kubernetes. The command documents are plain functions so that their exact
//! shape is unit-tested; [`ensure_user`] reads before it writes (`usersInfo`
//! with credentials, the password checked client side against the stored
//! SCRAM-SHA-256 key), so a repeat on an unchanged server writes nothing and
//! a run interrupted half-way is simply finished by the next one.
//!
//! No password appears in an error, a log or a `Debug` output: server
//! messages are scrubbed of the password that was sent before they are kept.
//!
//! On a shared server the service's database is claimed by a document in
//! servicedb's own database, `servicedb.claims` (`_id`: the database name,
//! `uid`: the ServiceDatabase's), inserted once: a unique `_id` makes the
//! claim atomic, and no service may write there. Not `customData` on the
//! users: FerretDB (the MongoDB wire protocol the tests run against)
//! refuses a non-empty `customData`. A database that exists or has users
//! without our claim is refused ([`UserError::NotOurs`]) and never dropped.

mod claims;
mod client;
mod commands;
mod naming;
mod plan;
mod users;
pub use claims::*;
pub use client::*;
pub use commands::*;
pub use naming::*;
pub use plan::*;
pub use users::*;

use std::time::Duration;

use mongodb::Client;
use mongodb::bson::{Bson, Document, doc};
use mongodb::error::{CommandError, ErrorKind};
use mongodb::options::{AuthMechanism, ClientOptions, Credential, ServerAddress};

use super::logins::Marker;
use super::mongodb::REPLICA_SET;
use scram::StoredKey;

mod scram;

/// Which name failed validation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameOf {
    User,
    Database,
}

impl std::fmt::Display for NameOf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            NameOf::User => "user",
            NameOf::Database => "database",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error("invalid {of} name {name:?}: {reason}")]
    InvalidName {
        of: NameOf,
        name: String,
        reason: &'static str,
    },
    #[error("invalid password: {reason}")]
    InvalidPassword { reason: &'static str },
    /// The server answered the command with an error.
    #[error("{action} refused: {code_name} ({code}): {message}")]
    Refused {
        action: &'static str,
        code: i32,
        code_name: String,
        message: String,
    },
    /// Logging in was refused.
    #[error("{action}: authentication failed: {message}")]
    Authentication {
        action: &'static str,
        message: String,
    },
    /// No answer: the server is down, unreachable or starting.
    #[error("{action} failed: {message}")]
    Connection {
        action: &'static str,
        message: String,
    },
    #[error("{action}: unexpected reply: {reason}")]
    UnexpectedReply {
        action: &'static str,
        reason: String,
    },
    /// The service's database exists, or has users, and servicedb did not
    /// make it for this ServiceDatabase.
    #[error("database {database} exists and was not created by servicedb for {service}{}", held_by(.holder))]
    NotOurs {
        database: String,
        service: String,
        holder: Option<String>,
    },
}

fn held_by(holder: &Option<String>) -> String {
    holder
        .as_ref()
        .map(|h| format!(" (it is marked for the ServiceDatabase with uid {h})"))
        .unwrap_or_default()
}

impl UserError {
    /// Stable label for metrics, Event reasons and the readiness probe.
    pub fn category(&self) -> &'static str {
        match self {
            UserError::InvalidName { .. } => "invalid_name",
            UserError::InvalidPassword { .. } => "invalid_password",
            UserError::Refused { code, .. } => match *code {
                UNAUTHORIZED => "permission_denied",
                AUTHENTICATION_FAILED => "authentication_failed",
                USER_NOT_FOUND => "user_missing",
                USER_ALREADY_EXISTS => "user_exists",
                COMMAND_NOT_FOUND | NOT_IMPLEMENTED => "unsupported",
                NOT_WRITABLE_PRIMARY
                | NOT_PRIMARY_NO_SECONDARY_OK
                | NOT_PRIMARY_OR_SECONDARY
                | PRIMARY_STEPPED_DOWN => "not_primary",
                _ => "refused",
            },
            UserError::Authentication { .. } => "authentication_failed",
            UserError::Connection { .. } => "connection",
            UserError::UnexpectedReply { .. } => "unexpected_reply",
            UserError::NotOurs { .. } => "name_conflict",
        }
    }

    /// Whether retrying with the same input cannot help.
    pub fn is_invalid_input(&self) -> bool {
        matches!(
            self,
            UserError::InvalidName { .. } | UserError::InvalidPassword { .. }
        )
    }

    /// The server (or the driver's SCRAM exchange) refused the login.
    pub fn is_login_refused(&self) -> bool {
        matches!(self, UserError::Authentication { .. })
            || self.code() == Some(AUTHENTICATION_FAILED)
    }

    /// Not allowed: not logged in, or without the privilege (and, for an
    /// unauthenticated `createUser`, the localhost exception is closed).
    pub fn is_unauthorized(&self) -> bool {
        self.code() == Some(UNAUTHORIZED)
    }

    /// The server's error code, if it answered with one.
    pub fn code(&self) -> Option<i32> {
        match self {
            UserError::Refused { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// Classifies a driver error; `secret` (the password the command
    /// carried, if any) is cut out of whatever text is kept.
    pub fn from_driver(action: &'static str, error: &mongodb::error::Error, secret: &str) -> Self {
        let scrub = |text: &str| {
            if secret.is_empty() {
                text.to_owned()
            } else {
                text.replace(secret, "<redacted>")
            }
        };
        match error.kind.as_ref() {
            ErrorKind::Command(CommandError {
                code,
                code_name,
                message,
                ..
            }) => UserError::Refused {
                action,
                code: *code,
                code_name: code_name.clone(),
                message: scrub(message),
            },
            ErrorKind::Authentication { message, .. } => UserError::Authentication {
                action,
                message: scrub(message),
            },
            // The kind's own text: the whole error's Display also dumps the
            // raw server response.
            kind => UserError::Connection {
                action,
                message: scrub(&kind.to_string()),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn users_info_entry(password: &str, mechanisms: &[&str], roles: Document) -> Document {
        doc! {
            "_id": "catalog.catalog",
            "user": "catalog",
            "db": "catalog",
            "roles": [roles],
            "mechanisms": mechanisms.iter().map(|m| Bson::from(*m)).collect::<Vec<_>>(),
            "credentials": { SCRAM_SHA_256: scram::credential(password, b"0123456789abcdef", 15_000) },
        }
    }

    #[test]
    fn create_user_command_is_exact() {
        let command = create_user_command("catalog", "pw", "catalog");
        assert_eq!(
            command,
            doc! {
                "createUser": "catalog",
                "pwd": "pw",
                "roles": [ { "role": "readWrite", "db": "catalog" } ],
                "mechanisms": ["SCRAM-SHA-256"],
            }
        );
        // The command name must come first in a command document.
        assert_eq!(
            command.keys().next().map(String::as_str),
            Some("createUser")
        );
    }

    #[test]
    fn update_user_command_is_exact() {
        assert_eq!(
            update_user_command("catalog", "pw2", "catalog"),
            doc! {
                "updateUser": "catalog",
                "pwd": "pw2",
                "mechanisms": ["SCRAM-SHA-256"],
                "roles": [ { "role": "readWrite", "db": "catalog" } ],
            }
        );
        let spec = UserSpec::service("catalog", "catalog", "pw2");
        assert_eq!(
            spec.update_command(Change {
                password: true,
                roles: false
            }),
            doc! { "updateUser": "catalog", "pwd": "pw2", "mechanisms": ["SCRAM-SHA-256"] }
        );
        assert_eq!(
            spec.update_command(Change {
                password: false,
                roles: true
            }),
            doc! { "updateUser": "catalog", "roles": [ { "role": "readWrite", "db": "catalog" } ] }
        );
    }

    #[test]
    fn root_and_drop_and_users_info_commands_are_exact() {
        assert_eq!(
            UserSpec::root("root", "pw").create_command(),
            doc! {
                "createUser": "root",
                "pwd": "pw",
                "roles": [ { "role": "root", "db": "admin" } ],
                "mechanisms": ["SCRAM-SHA-256"],
            }
        );
        assert_eq!(UserSpec::root("root", "pw").db, "admin");
        assert_eq!(drop_user_command("catalog"), doc! { "dropUser": "catalog" });
        assert_eq!(
            users_info_command("catalog"),
            doc! { "usersInfo": "catalog", "showCredentials": true }
        );
    }

    #[test]
    fn repl_set_initiate_command_is_exact() {
        assert_eq!(
            repl_set_initiate_command("127.0.0.1:27017"),
            doc! {
                "replSetInitiate": {
                    "_id": "rs0",
                    "version": 1,
                    "members": [ { "_id": 0, "host": "127.0.0.1:27017" } ],
                }
            }
        );
    }

    #[test]
    fn stored_key_check_matches_only_the_right_password() {
        let user = ObservedUser::from_document(&users_info_entry(
            "s3cret pw!",
            &[SCRAM_SHA_256],
            doc! { "role": "readWrite", "db": "catalog" },
        ))
        .expect("parses");
        assert_eq!(user.password_matches("s3cret pw!"), Some(true));
        assert_eq!(user.password_matches("s3cret pw?"), Some(false));
        assert_eq!(user.password_matches(""), Some(false));
        // Not printable ASCII: SASLprep could change it, so "unknown".
        assert_eq!(user.password_matches("pässword"), None);
        assert_eq!(user.password_matches("tab\there"), None);
    }

    #[test]
    fn plan_creates_updates_or_leaves_alone() {
        let desired = UserSpec::service("catalog", "catalog", "pw");
        let readwrite = doc! { "role": "readWrite", "db": "catalog" };
        let observe = |password: &str, mechanisms: &[&str], roles: Document| {
            ObservedUser::from_document(&users_info_entry(password, mechanisms, roles))
                .expect("parses")
        };

        assert_eq!(plan(&desired, None), Planned::Created);
        assert_eq!(
            plan(
                &desired,
                Some(&observe("pw", &[SCRAM_SHA_256], readwrite.clone()))
            ),
            Planned::Unchanged
        );
        assert_eq!(
            plan(
                &desired,
                Some(&observe("old", &[SCRAM_SHA_256], readwrite.clone()))
            ),
            Planned::Updated(Change {
                password: true,
                roles: false
            })
        );
        // SCRAM-SHA-1 as well: the password is set again with SHA-256 only.
        assert_eq!(
            plan(
                &desired,
                Some(&observe(
                    "pw",
                    &["SCRAM-SHA-1", SCRAM_SHA_256],
                    readwrite.clone()
                ))
            ),
            Planned::Updated(Change {
                password: true,
                roles: false
            })
        );
        // A role granted by hand on another database is taken away.
        let mut extra = observe("pw", &[SCRAM_SHA_256], readwrite.clone());
        extra.roles.push(Role::read_write("orders"));
        assert_eq!(
            plan(&desired, Some(&extra)),
            Planned::Updated(Change {
                password: false,
                roles: true
            })
        );
        let weaker = observe(
            "old",
            &[SCRAM_SHA_256],
            doc! { "role": "read", "db": "catalog" },
        );
        assert_eq!(
            plan(&desired, Some(&weaker)),
            Planned::Updated(Change {
                password: true,
                roles: true
            })
        );
        // No credentials shown (not allowed to see them): set the password.
        let mut hidden = observe("pw", &[SCRAM_SHA_256], readwrite);
        hidden.scram_sha_256 = None;
        assert_eq!(
            plan(&desired, Some(&hidden)),
            Planned::Updated(Change {
                password: true,
                roles: false
            })
        );
    }

    #[test]
    fn observed_users_parse_strictly() {
        let mut entry = users_info_entry("pw", &[SCRAM_SHA_256], doc! {"role": "r", "db": "d"});
        assert_eq!(
            ObservedUser::from_document(&entry).expect("parses").roles,
            vec![Role {
                role: "r".into(),
                db: "d".into()
            }]
        );
        entry.insert("roles", "readWrite");
        assert!(ObservedUser::from_document(&entry).is_err());
        entry.insert("roles", vec![Bson::from("readWrite")]);
        assert!(ObservedUser::from_document(&entry).is_err());
        entry.insert("roles", Vec::<Bson>::new());
        entry.insert("mechanisms", vec![Bson::from(1)]);
        assert!(ObservedUser::from_document(&entry).is_err());
    }

    #[test]
    fn names_are_validated() {
        assert!(validate_database_name("catalog-db_2").is_ok());
        assert!(validate_service_database("catalog").is_ok());
        for bad in [
            "",
            "a.b",
            "a b",
            "a/b",
            "a$b",
            "a\"b",
            "a\0b",
            &"x".repeat(64),
        ] {
            let error = validate_database_name(bad).expect_err(bad);
            assert_eq!(error.category(), "invalid_name");
            assert!(error.is_invalid_input());
        }
        assert!(validate_database_name(&"x".repeat(63)).is_ok());
        for reserved in RESERVED_DATABASES {
            let error = validate_service_database(reserved).expect_err(reserved);
            assert!(error.to_string().contains("reserved"), "{error}");
        }
        assert!(validate_username("Catalog.svc@x").is_ok());
        assert!(validate_username("").is_err());
        assert!(validate_username("a\nb").is_err());
        assert!(validate_username(&"u".repeat(129)).is_err());
        assert!(validate_password("p w'\"$").is_ok());
        assert!(validate_password("").is_err());
        assert!(validate_password("line\n").is_err());
    }

    #[test]
    fn debug_and_errors_hide_passwords() {
        let spec = UserSpec::service("catalog", "catalog", "hunter2");
        assert!(!format!("{spec:?}").contains("hunter2"));
        let error = mongodb::error::Error::from(std::io::Error::other("echoed hunter2 back"));
        let described = UserError::from_driver("createUser", &error, "hunter2");
        assert_eq!(described.category(), "connection");
        let shown = described.to_string();
        assert!(
            !shown.contains("hunter2") && shown.contains("echoed <redacted> back"),
            "{shown}"
        );
        let refused = UserError::Refused {
            action: "createUser",
            code: 2,
            code_name: "BadValue".into(),
            message: "bad".into(),
        };
        assert_eq!(refused.category(), "refused");
    }

    #[test]
    fn categories_follow_server_codes() {
        let refused = |code| UserError::Refused {
            action: "x",
            code,
            code_name: String::new(),
            message: String::new(),
        };
        assert_eq!(refused(13).category(), "permission_denied");
        assert_eq!(refused(18).category(), "authentication_failed");
        assert_eq!(refused(11).category(), "user_missing");
        assert_eq!(refused(51003).category(), "user_exists");
        assert_eq!(refused(238).category(), "unsupported");
        assert_eq!(refused(59).category(), "unsupported");
        assert_eq!(refused(10107).category(), "not_primary");
        assert_eq!(refused(13435).category(), "not_primary");
        assert!(!refused(13).is_invalid_input());
        assert!(refused(13).is_unauthorized() && !refused(18).is_unauthorized());
        assert!(refused(18).is_login_refused() && !refused(13).is_login_refused());
    }
}
