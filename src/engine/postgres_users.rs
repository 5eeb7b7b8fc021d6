//! PostgreSQL service users: one least-privilege LOGIN role per service, the
//! service's database owned by it, and nobody else allowed to connect.
//!
//! Used by the instance manager (dedicated instances, over the unix socket)
//! and by the operator (shared servers, over the network), so it knows
//! nothing about Kubernetes. Every function is idempotent and reads before it
//! writes: a repeat on an unchanged server issues no DDL, which keeps the
//! server log quiet and the catalog untouched.
//!
//! On a shared server every role, database and schema made here carries a
//! marker, its comment (`COMMENT ON …`: `servicedb:{"uid":…}`, see
//! [`Marker`]). A role is created together with its comment in one
//! transaction, so the role itself is the claim on the server: of two
//! services racing for a name, the second's CREATE ROLE fails. An object of
//! one of the service's names without its marker, or with another's, is
//! refused before anything is written ([`UserError::NotOurs`]) and never
//! changed or dropped; a database or schema left unmarked but owned by the
//! service's own marked role (CREATE DATABASE cannot share a transaction
//! with its comment) is marked. What servicedb made for an earlier
//! ServiceDatabase of the same namespace and name ([`Mark::Predecessor`]) is
//! marked for this one. Dedicated instances pass no marker.
//!
//! Passwords only ever travel as SCRAM-SHA-256 verifiers, so the cleartext
//! never reaches the server, its logs or `pg_stat_activity`; whether a stored
//! verifier still matches a password is decided client side
//! ([`scram::verifier_matches`]). No password appears in an error or a log.

mod scram;

mod databases;
mod markers;
mod naming;
mod roles;
mod schemas;
mod scratch;
pub use databases::*;
pub use markers::*;
pub use naming::*;
pub use roles::*;
pub use schemas::*;
pub use scratch::*;

use tokio_postgres::Client;
use tokio_postgres::error::SqlState;

use super::logins::{self, Logins, Mark, Marker};

/// One service's login role, its password and its private database.
#[derive(Clone, PartialEq, Eq)]
pub struct ServiceUser {
    pub role: String,
    pub password: String,
    pub database: String,
}

impl std::fmt::Debug for ServiceUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceUser")
            .field("role", &self.role)
            .field("password", &"<redacted>")
            .field("database", &self.database)
            .finish()
    }
}

/// What [`ensure_service_database`] had to change; all `false` when the
/// server was already in the desired state.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Changes {
    pub role_created: bool,
    pub role_attributes_fixed: bool,
    pub password_changed: bool,
    pub database_created: bool,
    pub owner_changed: bool,
    pub privileges_fixed: bool,
}

impl Changes {
    fn merge(&mut self, other: Changes) {
        self.role_created |= other.role_created;
        self.role_attributes_fixed |= other.role_attributes_fixed;
        self.password_changed |= other.password_changed;
        self.database_created |= other.database_created;
        self.owner_changed |= other.owner_changed;
        self.privileges_fixed |= other.privileges_fixed;
    }

    /// Whether anything was written to the server.
    pub fn changed(&self) -> bool {
        *self != Changes::default()
    }
}

/// Which kind of name failed validation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameKind {
    Role,
    Database,
}

impl std::fmt::Display for NameKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            NameKind::Role => "role",
            NameKind::Database => "database",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error("invalid {kind} name {name:?}: {reason}")]
    InvalidName {
        kind: NameKind,
        name: String,
        reason: &'static str,
    },
    #[error("invalid password: {reason}")]
    InvalidPassword { reason: &'static str },
    #[error(
        "role {role:?} is the role this connection is logged in as; it cannot be managed as a service role"
    )]
    OwnRole { role: String },
    #[error("role {role:?} does not exist")]
    RoleMissing { role: String },
    #[error(
        "database {database:?} already exists and belongs to role {owner:?}; it is not taken over"
    )]
    Taken { database: String, owner: String },
    /// An object of one of the service's names that servicedb did not make
    /// for it: never adopted, changed or dropped.
    #[error("{object} exists and was not created by servicedb for {service}{}", held_by(.holder))]
    NotOurs {
        /// `role "x"`, `database "x"`, `schema "x"`.
        object: String,
        /// `namespace/name` of the ServiceDatabase asking.
        service: String,
        /// Whose marker it carries, if another ServiceDatabase's.
        holder: Option<String>,
    },
    #[error("{action} failed: {}", describe(error))]
    Database {
        action: &'static str,
        error: tokio_postgres::Error,
    },
}

impl UserError {
    /// Stable label for metrics and Event reasons.
    pub fn category(&self) -> &'static str {
        match self {
            UserError::InvalidName { .. } => "invalid_name",
            UserError::InvalidPassword { .. } => "invalid_password",
            UserError::OwnRole { .. } => "own_role",
            UserError::RoleMissing { .. } => "role_missing",
            UserError::Taken { .. } => "name_taken",
            UserError::NotOurs { .. } => "name_conflict",
            UserError::Database { error, .. } => match error.code() {
                // Another ServiceDatabase made the object in the same instant.
                Some(code)
                    if *code == SqlState::DUPLICATE_OBJECT
                        || *code == SqlState::DUPLICATE_DATABASE
                        || *code == SqlState::DUPLICATE_SCHEMA
                        || *code == SqlState::UNIQUE_VIOLATION =>
                {
                    "name_conflict"
                }
                Some(code) if *code == SqlState::INSUFFICIENT_PRIVILEGE => "permission_denied",
                Some(code) if *code == SqlState::DEPENDENT_OBJECTS_STILL_EXIST => {
                    "dependent_objects"
                }
                Some(code) if *code == SqlState::OBJECT_IN_USE => "object_in_use",
                Some(_) => "database",
                None => "connection",
            },
        }
    }

    /// Whether retrying with the same input cannot help.
    pub fn is_invalid_input(&self) -> bool {
        matches!(
            self,
            UserError::InvalidName { .. }
                | UserError::InvalidPassword { .. }
                | UserError::OwnRole { .. }
        )
    }
}

fn held_by(holder: &Option<String>) -> String {
    holder
        .as_ref()
        .map(|h| format!(" (it is marked for ServiceDatabase {h})"))
        .unwrap_or_default()
}

fn database_error(action: &'static str) -> impl Fn(tokio_postgres::Error) -> UserError + Copy {
    move |error| UserError::Database { action, error }
}

/// One line for a driver error. `tokio_postgres::Error`'s own Display says
/// only "db error"; the server's message is what an operator needs. Server
/// messages quote names, never statement text, so no verifier leaks here.
pub fn describe(error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => format!(
            "{}: {} (SQLSTATE {})",
            db.severity(),
            db.message(),
            db.code().code()
        ),
        None => match std::error::Error::source(error) {
            Some(cause) => format!("{error}: {cause}"),
            None => error.to_string(),
        },
    }
}

async fn execute(client: &Client, action: &'static str, sql: &str) -> Result<(), UserError> {
    // simple_query: utility statements take no parameters, and CREATE
    // DATABASE must not run inside the implicit transaction of a pipeline.
    client
        .simple_query(sql)
        .await
        .map(drop)
        .map_err(database_error(action))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quote_ident_doubles_quotes_and_always_quotes() {
        assert_eq!(quote_ident("orders"), r#""orders""#);
        assert_eq!(quote_ident("Orders"), r#""Orders""#);
        assert_eq!(quote_ident("select"), r#""select""#);
        assert_eq!(quote_ident(r#"a"b"#), r#""a""b""#);
        assert_eq!(
            quote_ident(r#"x"; DROP ROLE postgres; --"#),
            r#""x""; DROP ROLE postgres; --""#
        );
        assert_eq!(quote_ident(r#"""#), r#""""""#);
        assert_eq!(quote_ident("back\\slash'quote"), "\"back\\slash'quote\"");
        assert_eq!(quote_ident("ünï cødé"), "\"ünï cødé\"");
    }

    #[test]
    fn quoted_hostile_names_stay_one_token() {
        // Whatever the input, the quoted form starts and ends with a quote and
        // every inner quote is doubled, so the lexer sees exactly one identifier.
        for name in [r#"a"b"#, r#""""#, r#"x" OWNER "postgres"#, "\"\n\""] {
            let quoted = quote_ident(name);
            let inner = &quoted[1..quoted.len() - 1];
            assert!(quoted.starts_with('"') && quoted.ends_with('"'));
            assert_eq!(inner.replace("\"\"", ""), name.replace('"', ""));
            assert_eq!(inner.replace("\"\"", "\""), name);
        }
    }

    #[test]
    fn quote_literal_escapes() {
        assert_eq!(quote_literal("abc"), "'abc'");
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(quote_literal(r"a\b"), r" E'a\\b'");
    }

    #[test]
    fn role_names_are_validated() {
        assert!(validate_role_name("orders").is_ok());
        assert!(validate_role_name("Orders-Service_1").is_ok());
        assert!(validate_role_name(r#"we"ird name"#).is_ok());
        assert!(validate_role_name(&"a".repeat(63)).is_ok());
        for bad in [
            String::new(),
            "a".repeat(64),
            "é".repeat(32), // 64 bytes
            "nul\0byte".to_owned(),
            "pg_monitor".to_owned(),
            "public".to_owned(),
            "PUBLIC".to_owned(),
            "current_user".to_owned(),
        ] {
            let err = validate_role_name(&bad).expect_err(&bad);
            assert_eq!(err.category(), "invalid_name");
            assert!(err.is_invalid_input());
        }
    }

    #[test]
    fn scratch_names_fit_and_never_look_like_a_service_database() {
        assert_eq!(scratch_name("shop_orders"), "shop_orders-verify");
        let long = "s".repeat(61);
        let scratch = scratch_name(&long);
        assert_eq!(scratch.len(), MAX_NAME_BYTES);
        assert!(scratch.ends_with("-verify"), "{scratch}");
        assert!(validate_database_name(&scratch).is_ok());
    }

    #[test]
    fn database_names_are_validated() {
        assert!(validate_database_name("orders").is_ok());
        assert!(validate_database_name("orders-db").is_ok());
        for bad in ["", "template0", "template1", "postgres", "a\0b"] {
            assert!(validate_database_name(bad).is_err(), "{bad:?}");
        }
        assert!(validate_database_name(&"d".repeat(64)).is_err());
    }

    #[test]
    fn password_errors_never_contain_the_password() {
        let secret = "s3cr3t\0tail";
        let err = validate_password(secret).expect_err("NUL rejected");
        assert!(!err.to_string().contains("s3cr3t"));
        assert!(validate_password("").is_err());
        assert!(validate_password("fine 'one' \\ with \" quotes").is_ok());
    }

    #[test]
    fn service_user_debug_redacts_the_password() {
        let user = ServiceUser {
            role: "orders".into(),
            password: "hunter2".into(),
            database: "orders".into(),
        };
        let shown = format!("{user:?}");
        assert!(shown.contains("orders"));
        assert!(!shown.contains("hunter2"));
    }

    #[test]
    fn existing_role_checks() {
        let password = "correct horse";
        let mut role = ExistingRole {
            superuser: false,
            create_db: false,
            create_role: false,
            replication: false,
            bypass_rls: false,
            login: true,
            verifier: Some(postgres_protocol::password::scram_sha_256(
                password.as_bytes(),
            )),
        };
        assert!(role.is_least_privilege(true));
        assert!(!role.is_least_privilege(false));
        assert!(role.password_matches(password));
        assert!(!role.password_matches("correct horse "));
        role.superuser = true;
        assert!(!role.is_least_privilege(true));
        role.superuser = false;
        role.login = false;
        assert!(!role.is_least_privilege(true));
        role.verifier = None;
        assert!(!role.password_matches(password));
        role.verifier = Some(postgres_protocol::password::md5(password.as_bytes(), "x"));
        assert!(!role.password_matches(password));
    }
}
