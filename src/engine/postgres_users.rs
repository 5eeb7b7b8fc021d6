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

use tokio_postgres::Client;
use tokio_postgres::error::SqlState;

use super::logins::{self, Logins, Mark, Marker};

/// Role and database names longer than this are truncated by PostgreSQL
/// (NAMEDATALEN - 1); we reject them instead of letting two names collide.
pub const MAX_NAME_BYTES: usize = 63;

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
pub struct Outcome {
    pub role_created: bool,
    pub role_attributes_fixed: bool,
    pub password_changed: bool,
    pub database_created: bool,
    pub owner_changed: bool,
    pub privileges_fixed: bool,
}

impl Outcome {
    fn merge(&mut self, other: Outcome) {
        self.role_created |= other.role_created;
        self.role_attributes_fixed |= other.role_attributes_fixed;
        self.password_changed |= other.password_changed;
        self.database_created |= other.database_created;
        self.owner_changed |= other.owner_changed;
        self.privileges_fixed |= other.privileges_fixed;
    }

    /// Whether anything was written to the server.
    pub fn changed(&self) -> bool {
        *self != Outcome::default()
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

/// Quotes an SQL identifier: always double-quoted, embedded quotes doubled.
/// Always quoting keeps the name's case and makes keywords harmless.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Quotes an SQL string literal (standard_conforming_strings is on in every
/// supported PostgreSQL; a backslash switches to the `E''` form anyway).
fn quote_literal(value: &str) -> String {
    postgres_protocol::escape::escape_literal(value)
}

/// Checks a role name: the rules PostgreSQL enforces, plus the reserved
/// names that would make a service role something it must not be.
pub fn validate_role_name(name: &str) -> Result<(), UserError> {
    validate_name(NameKind::Role, name)?;
    let invalid = |reason| UserError::InvalidName {
        kind: NameKind::Role,
        name: name.to_owned(),
        reason,
    };
    if name.starts_with("pg_") {
        return Err(invalid("the pg_ prefix is reserved for system roles"));
    }
    const RESERVED: [&str; 5] = [
        "public",
        "none",
        "current_user",
        "current_role",
        "session_user",
    ];
    if RESERVED.contains(&name.to_ascii_lowercase().as_str()) {
        return Err(invalid("the name is reserved by PostgreSQL"));
    }
    Ok(())
}

/// Checks a database name; the template and maintenance databases are not
/// for services.
pub fn validate_database_name(name: &str) -> Result<(), UserError> {
    validate_name(NameKind::Database, name)?;
    if ["template0", "template1", "postgres"].contains(&name) {
        return Err(UserError::InvalidName {
            kind: NameKind::Database,
            name: name.to_owned(),
            reason: "the name belongs to a PostgreSQL system database",
        });
    }
    Ok(())
}

fn validate_name(kind: NameKind, name: &str) -> Result<(), UserError> {
    let reason = if name.is_empty() {
        Some("must not be empty")
    } else if name.len() > MAX_NAME_BYTES {
        Some("must be at most 63 bytes")
    } else if name.contains('\0') {
        Some("must not contain a NUL character")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(UserError::InvalidName {
            kind,
            name: name.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

/// Checks a password. Reasons never include the password itself.
pub fn validate_password(password: &str) -> Result<(), UserError> {
    if password.is_empty() {
        return Err(UserError::InvalidPassword {
            reason: "must not be empty",
        });
    }
    if password.contains('\0') {
        return Err(UserError::InvalidPassword {
            reason: "must not contain a NUL character",
        });
    }
    Ok(())
}

/// Creates or repairs the service's role and database. See the module
/// comment for what "repairs" covers; returns what had to change.
pub async fn ensure_service_database(
    client: &Client,
    user: &ServiceUser,
) -> Result<Outcome, UserError> {
    validate_password(&user.password)?;
    ensure_owner(
        client,
        &user.role,
        Some(&user.password),
        &user.database,
        None,
    )
    .await
}

/// Creates or repairs a service's owner role, its database and its twin
/// login (see [`crate::engine::logins`]): each identity that `logins` lists
/// can log in with its password, the other one cannot. Sessions of the twin
/// run as the owner (`SET role`), so everything stays owned by one role.
///
/// With a `marker` (shared servers) every object is made with it, and an
/// existing object without it is refused before anything is written
/// ([`UserError::NotOurs`]). Without one (a dedicated instance, where
/// servicedb made everything) existing objects are repaired as they are.
pub async fn ensure_service_logins(
    client: &Client,
    owner: &str,
    database: &str,
    logins: &Logins,
    marker: Option<&Marker>,
) -> Result<Outcome, UserError> {
    for login in logins.all() {
        validate_password(&login.password)?;
    }
    let twin = logins::twin_in_use(owner, logins);
    validate_role_name(&twin)?;
    validate_role_name(owner)?;
    validate_database_name(database)?;
    if let Some(marker) = marker {
        let owner_found = check_role(client, marker, owner).await?;
        check_database(client, marker, database, owner, owner_found).await?;
        check_role(client, marker, &twin).await?;
    }
    let mut outcome =
        ensure_owner(client, owner, logins.password_of(owner), database, marker).await?;
    let twin_outcome = ensure_twin(client, owner, &twin, logins.password_of(&twin), marker).await?;
    outcome.merge(twin_outcome);
    outcome.merge(retire_legacy_twin(client, owner, &twin, marker).await?);
    Ok(outcome)
}

/// The owner role and its database. `password: None` keeps the role but
/// takes its LOGIN away (the twin is the login in use).
async fn ensure_owner(
    client: &Client,
    owner: &str,
    password: Option<&str>,
    database_name: &str,
    marker: Option<&Marker>,
) -> Result<Outcome, UserError> {
    validate_role_name(owner)?;
    validate_database_name(database_name)?;
    refuse_own_role(client, owner).await?;
    let user = ServiceUser {
        role: owner.to_string(),
        password: String::new(),
        database: database_name.to_string(),
    };
    let mut outcome = ensure_login_role(client, owner, password, marker).await?;
    let role = quote_ident(&user.role);
    let database = quote_ident(&user.database);
    if let Some(marker) = marker {
        // The role is ours by now: only a database of ours is used.
        match check_database(
            client,
            marker,
            database_name,
            owner,
            Found::Ours { marked: true },
        )
        .await?
        {
            Found::Missing => {
                // CREATE DATABASE cannot share a transaction with the
                // comment; a database left unmarked in between is owned by
                // our own role and is marked on the next pass.
                execute(
                    client,
                    "create database",
                    &format!("CREATE DATABASE {database} OWNER {role}"),
                )
                .await?;
                mark(client, "DATABASE", database_name, marker).await?;
                outcome.database_created = true;
            }
            Found::Ours { marked: false } => {
                mark(client, "DATABASE", database_name, marker).await?;
                outcome.owner_changed = true;
            }
            Found::Ours { marked: true } => {}
        }
        if restrict_database(client, &user.database, &user.role).await? {
            outcome.privileges_fixed = true;
        }
        return Ok(outcome);
    }
    match database_owner(client, &user.database).await? {
        None => {
            execute(
                client,
                "create database",
                &format!("CREATE DATABASE {database} OWNER {role}"),
            )
            .await?;
            outcome.database_created = true;
        }
        Some(owner) if owner != user.role => {
            execute(
                client,
                "change database owner",
                &format!("ALTER DATABASE {database} OWNER TO {role}"),
            )
            .await?;
            outcome.owner_changed = true;
        }
        Some(_) => {}
    }

    if restrict_database(client, &user.database, &user.role).await? {
        outcome.privileges_fixed = true;
    }
    Ok(outcome)
}

/// Only `role` (its owner) may connect to `database_name` or make temporary
/// tables there; returns whether anything had to change.
async fn restrict_database(
    client: &Client,
    database_name: &str,
    role_name: &str,
) -> Result<bool, UserError> {
    let database = quote_ident(database_name);
    let role = quote_ident(role_name);
    let mut changed = false;
    // 'public' is accepted by has_database_privilege as the PUBLIC pseudo-role.
    let row = client
        .query_one(
            "SELECT has_database_privilege('public'::name, $1::text, 'CONNECT'), \
                    has_database_privilege('public'::name, $1::text, 'TEMPORARY'), \
                    has_database_privilege($2::name, $1::text, 'CONNECT')",
            &[&database_name, &role_name],
        )
        .await
        .map_err(database_error("read database privileges"))?;
    let read = database_error("read database privileges");
    let (public_connect, public_temporary, role_connect): (bool, bool, bool) = (
        row.try_get(0).map_err(read)?,
        row.try_get(1).map_err(read)?,
        row.try_get(2).map_err(read)?,
    );
    if public_connect || public_temporary {
        execute(
            client,
            "revoke public access",
            &format!("REVOKE CONNECT, TEMPORARY ON DATABASE {database} FROM PUBLIC"),
        )
        .await?;
        changed = true;
    }
    if !role_connect {
        execute(
            client,
            "grant connect",
            &format!("GRANT CONNECT ON DATABASE {database} TO {role}"),
        )
        .await?;
        changed = true;
    }
    Ok(changed)
}

/// The scratch database a shared server's service verifies its backups in:
/// `<role>-verify`. Service roles on shared servers never hold a `-`, so no
/// service's own database can have this name; a role too long for the
/// suffix keeps a readable start and a hash of the whole.
pub fn scratch_name(role: &str) -> String {
    const SUFFIX: &str = "-verify";
    let role = super::fit_name(role, MAX_NAME_BYTES - SUFFIX.len());
    format!("{role}{SUFFIX}")
}

/// Creates or repairs the service's scratch database: owned by its owner
/// role (so that its logins may empty it and restore into it) and closed to
/// everyone else. A database of that name owned by another role is never
/// taken over. Returns whether anything changed.
pub async fn ensure_scratch_database(
    client: &Client,
    owner: &str,
    scratch: &str,
    marker: Option<&Marker>,
) -> Result<bool, UserError> {
    validate_role_name(owner)?;
    validate_database_name(scratch)?;
    if let Some(marker) = marker {
        let owner_found = check_role(client, marker, owner).await?;
        let changed = match check_database(client, marker, scratch, owner, owner_found).await? {
            Found::Missing => {
                execute(
                    client,
                    "create scratch database",
                    &format!(
                        "CREATE DATABASE {} OWNER {}",
                        quote_ident(scratch),
                        quote_ident(owner)
                    ),
                )
                .await?;
                mark(client, "DATABASE", scratch, marker).await?;
                true
            }
            Found::Ours { marked: false } => {
                mark(client, "DATABASE", scratch, marker).await?;
                true
            }
            Found::Ours { marked: true } => false,
        };
        return Ok(restrict_database(client, scratch, owner).await? || changed);
    }
    let changed = match database_owner(client, scratch).await? {
        None => {
            execute(
                client,
                "create scratch database",
                &format!(
                    "CREATE DATABASE {} OWNER {}",
                    quote_ident(scratch),
                    quote_ident(owner)
                ),
            )
            .await?;
            true
        }
        Some(found) if found != owner => {
            return Err(UserError::Taken {
                database: scratch.to_string(),
                owner: found,
            });
        }
        Some(_) => false,
    };
    Ok(restrict_database(client, scratch, owner).await? || changed)
}

/// Drops the service's scratch database if it exists and is the owner's;
/// returns whether it dropped one.
pub async fn drop_scratch_database(
    client: &Client,
    owner: &str,
    scratch: &str,
    marker: Option<&Marker>,
) -> Result<bool, UserError> {
    validate_database_name(scratch)?;
    if let Some(marker) = marker {
        let owner_found = ours(check_role(client, marker, owner).await)?;
        if !ours(check_database(client, marker, scratch, owner, owner_found).await)?.is_ours() {
            return Ok(false);
        }
    } else if database_owner(client, scratch).await?.as_deref() != Some(owner) {
        return Ok(false);
    }
    execute(
        client,
        "drop scratch database",
        &format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            quote_ident(scratch)
        ),
    )
    .await?;
    Ok(true)
}

async fn database_owner(client: &Client, database: &str) -> Result<Option<String>, UserError> {
    client
        .query_opt(
            "SELECT pg_get_userbyid(datdba)::text FROM pg_database WHERE datname = $1",
            &[&database],
        )
        .await
        .map_err(database_error("look up database"))?
        .map(|row| row.try_get(0))
        .transpose()
        .map_err(database_error("read database owner"))
}

/// A least-privilege role that can log in with `password`, or cannot log in
/// at all (`None`; its password is left as it is).
async fn ensure_login_role(
    client: &Client,
    role_name: &str,
    password: Option<&str>,
    marker: Option<&Marker>,
) -> Result<Outcome, UserError> {
    let mut outcome = Outcome::default();
    let role = quote_ident(role_name);
    let attributes = attributes(password.is_some());
    // With a marker, whether to create is decided by the same read that
    // checked the marker: a role that appears in between makes CREATE ROLE
    // fail, never turns into one whose password we change.
    let found = match marker {
        Some(marker) => Some(check_role(client, marker, role_name).await?),
        None => None,
    };
    if let Some(marker) = marker
        && found == Some(Found::Ours { marked: false })
    {
        mark(client, "ROLE", role_name, marker).await?;
        outcome.role_attributes_fixed = true;
    }
    let existing = match found {
        Some(Found::Missing) => None,
        Some(Found::Ours { .. }) => Some(fetch_role(client, role_name).await?.ok_or_else(
            || UserError::RoleMissing {
                role: role_name.to_owned(),
            },
        )?),
        None => fetch_role(client, role_name).await?,
    };
    match existing {
        None => {
            let password = password
                .map(|p| format!(" PASSWORD {}", scram_verifier(p)))
                .unwrap_or_default();
            // One statement string is one transaction: the role exists only
            // with its marker, so it is the claim on the server itself, and
            // a ServiceDatabase racing for the name fails here.
            let comment = marker
                .map(|m| format!("; COMMENT ON ROLE {role} IS {}", quote_literal(&m.text())))
                .unwrap_or_default();
            execute(
                client,
                "create role",
                &format!("CREATE ROLE {role} {attributes}{password}{comment}"),
            )
            .await?;
            outcome.role_created = true;
        }
        Some(existing) => {
            if !existing.is_least_privilege(password.is_some()) {
                execute(
                    client,
                    "restrict role",
                    &format!("ALTER ROLE {role} {attributes}"),
                )
                .await?;
                outcome.role_attributes_fixed = true;
            }
            if let Some(password) = password
                && !existing.password_matches(password)
            {
                alter_password(client, role_name, password).await?;
                outcome.password_changed = true;
            }
        }
    }
    Ok(outcome)
}

/// The twin login: a member of the owner whose sessions run as the owner.
/// Without a password it exists only if it existed, unable to log in.
async fn ensure_twin(
    client: &Client,
    owner: &str,
    twin: &str,
    password: Option<&str>,
    marker: Option<&Marker>,
) -> Result<Outcome, UserError> {
    if password.is_none() {
        let mut outcome = Outcome::default();
        let found = match marker {
            Some(marker) => ours(check_role(client, marker, twin).await)?,
            None => Found::Ours { marked: true },
        };
        if let Some(marker) = marker
            && found == (Found::Ours { marked: false })
        {
            // A predecessor's (or a legacy unmarked) twin is this one's now.
            mark(client, "ROLE", twin, marker).await?;
            outcome.role_attributes_fixed = true;
        }
        let ours = found.is_ours();
        if ours && fetch_role(client, twin).await?.is_some_and(|r| r.login) {
            execute(
                client,
                "disable the previous login",
                &format!("ALTER ROLE {} NOLOGIN", quote_ident(twin)),
            )
            .await?;
            outcome.role_attributes_fixed = true;
        }
        return Ok(outcome);
    }
    let mut outcome = ensure_login_role(client, twin, password, marker).await?;
    let row = client
        .query_one(
            "SELECT pg_has_role($1::name, $2::name, 'MEMBER'), \
                    coalesce((SELECT $3::text = ANY(setconfig) FROM pg_db_role_setting \
                              WHERE setdatabase = 0 AND setrole = (SELECT oid FROM pg_roles WHERE rolname = $1)), false)",
            &[&twin, &owner, &format!("role={owner}")],
        )
        .await
        .map_err(database_error("read twin membership"))?;
    let read = database_error("read twin membership");
    let (member, runs_as_owner): (bool, bool) =
        (row.try_get(0).map_err(read)?, row.try_get(1).map_err(read)?);
    if !member {
        execute(
            client,
            "grant the owner role to the twin",
            &format!("GRANT {} TO {}", quote_ident(owner), quote_ident(twin)),
        )
        .await?;
        outcome.privileges_fixed = true;
    }
    if !runs_as_owner {
        execute(
            client,
            "make the twin act as the owner",
            &format!(
                "ALTER ROLE {} SET role TO {}",
                quote_ident(twin),
                quote_literal(owner)
            ),
        )
        .await?;
        outcome.privileges_fixed = true;
    }
    Ok(outcome)
}

/// Isolation `Schema`, step one, on a connection to any database: the
/// shared database exists and only roles granted CONNECT may enter it.
pub async fn ensure_schema_database(client: &Client, database: &str) -> Result<bool, UserError> {
    validate_database_name(database)?;
    let exists = client
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&database])
        .await
        .map_err(database_error("look up database"))?
        .is_some();
    let quoted = quote_ident(database);
    if !exists {
        execute(
            client,
            "create database",
            &format!("CREATE DATABASE {quoted}"),
        )
        .await?;
    }
    let public: bool = client
        .query_one(
            "SELECT has_database_privilege('public'::name, $1::text, 'CONNECT') \
                 OR has_database_privilege('public'::name, $1::text, 'TEMPORARY')",
            &[&database],
        )
        .await
        .map_err(database_error("read database privileges"))?
        .try_get(0)
        .map_err(database_error("read database privileges"))?;
    if public {
        execute(
            client,
            "revoke public access",
            &format!("REVOKE CONNECT, TEMPORARY ON DATABASE {quoted} FROM PUBLIC"),
        )
        .await?;
    }
    Ok(!exists)
}

/// Isolation `Schema`, step two: the service's owner role and twin (on
/// `admin`, any database), CONNECT on the shared database, and in it
/// (`shared`, a connection to that database) the schema named after the
/// owner and owned by it. The `public` schema is closed to everyone, so a
/// service can use its own schema only: other schemas belong to other roles
/// and grant nothing. The default `search_path` (`"$user", public`) finds
/// the schema for the owner and its twin (whose sessions run as the owner).
pub async fn ensure_service_schema(
    admin: &Client,
    shared: &Client,
    owner: &str,
    database: &str,
    logins: &Logins,
    marker: Option<&Marker>,
) -> Result<Outcome, UserError> {
    validate_role_name(owner)?;
    validate_database_name(database)?;
    for login in logins.all() {
        validate_password(&login.password)?;
    }
    refuse_own_role(admin, owner).await?;
    let twin = logins::twin_in_use(owner, logins);
    validate_role_name(&twin)?;
    if let Some(marker) = marker {
        let owner_found = check_role(admin, marker, owner).await?;
        check_schema(shared, marker, owner, owner_found).await?;
        check_role(admin, marker, &twin).await?;
    }
    let mut outcome = ensure_login_role(admin, owner, logins.password_of(owner), marker).await?;
    outcome.merge(ensure_twin(admin, owner, &twin, logins.password_of(&twin), marker).await?);
    outcome.merge(retire_legacy_twin(admin, owner, &twin, marker).await?);
    let role = quote_ident(owner);
    let can_connect: bool = admin
        .query_one(
            "SELECT has_database_privilege($1::name, $2::text, 'CONNECT')",
            &[&owner, &database],
        )
        .await
        .map_err(database_error("read database privileges"))?
        .try_get(0)
        .map_err(database_error("read database privileges"))?;
    if !can_connect {
        execute(
            admin,
            "grant connect",
            &format!(
                "GRANT CONNECT ON DATABASE {} TO {role}",
                quote_ident(database)
            ),
        )
        .await?;
        outcome.privileges_fixed = true;
    }
    let public_open: bool = shared
        .query_one(
            "SELECT has_schema_privilege('public'::name, 'public', 'USAGE') \
                 OR has_schema_privilege('public'::name, 'public', 'CREATE')",
            &[],
        )
        .await
        .map_err(database_error("read schema privileges"))?
        .try_get(0)
        .map_err(database_error("read schema privileges"))?;
    if public_open {
        execute(
            shared,
            "close the public schema",
            "REVOKE ALL ON SCHEMA public FROM PUBLIC",
        )
        .await?;
        outcome.privileges_fixed = true;
    }
    if let Some(marker) = marker {
        match check_schema(shared, marker, owner, Found::Ours { marked: true }).await? {
            Found::Missing => {
                execute(
                    shared,
                    "create schema",
                    &format!(
                        "CREATE SCHEMA {role} AUTHORIZATION {role}; COMMENT ON SCHEMA {role} IS {}",
                        quote_literal(&marker.text())
                    ),
                )
                .await?;
                outcome.database_created = true;
            }
            Found::Ours { marked: false } => {
                mark(shared, "SCHEMA", owner, marker).await?;
                outcome.owner_changed = true;
            }
            Found::Ours { marked: true } => {}
        }
        return Ok(outcome);
    }
    let schema_owner: Option<String> = shared
        .query_opt(
            "SELECT pg_get_userbyid(nspowner)::text FROM pg_namespace WHERE nspname = $1",
            &[&owner],
        )
        .await
        .map_err(database_error("look up schema"))?
        .map(|row| row.try_get(0))
        .transpose()
        .map_err(database_error("read schema owner"))?;
    match schema_owner {
        None => {
            execute(
                shared,
                "create schema",
                &format!("CREATE SCHEMA {role} AUTHORIZATION {role}"),
            )
            .await?;
            outcome.database_created = true;
        }
        Some(found) if found != owner => {
            execute(
                shared,
                "change schema owner",
                &format!("ALTER SCHEMA {role} OWNER TO {role}"),
            )
            .await?;
            outcome.owner_changed = true;
        }
        Some(_) => {}
    }
    Ok(outcome)
}

/// Drops a service's schema with everything in it, and its roles; with a
/// `marker`, only those that carry it.
pub async fn drop_service_schema(
    admin: &Client,
    shared: &Client,
    owner: &str,
    marker: Option<&Marker>,
) -> Result<(), UserError> {
    validate_role_name(owner)?;
    refuse_own_role(admin, owner).await?;
    let role = quote_ident(owner);
    let owner_found = match marker {
        Some(marker) => ours(check_role(admin, marker, owner).await)?,
        None => Found::Ours { marked: true },
    };
    let schema_ours = match marker {
        Some(marker) => ours(check_schema(shared, marker, owner, owner_found).await)?.is_ours(),
        None => true,
    };
    if schema_ours {
        execute(
            shared,
            "drop schema",
            &format!("DROP SCHEMA IF EXISTS {role} CASCADE"),
        )
        .await?;
    }
    for name in roles_to_drop(admin, owner, owner_found, marker).await? {
        if fetch_role(admin, &name).await?.is_some() {
            let quoted = quote_ident(&name);
            execute(shared, "drop owned", &format!("DROP OWNED BY {quoted}")).await?;
            execute(admin, "drop owned", &format!("DROP OWNED BY {quoted}")).await?;
            execute(admin, "drop role", &format!("DROP ROLE {quoted}")).await?;
        }
    }
    Ok(())
}

/// Sets a role's password unless its stored verifier already matches.
/// Returns whether it changed. Works on the connected role too (the admin
/// rotating its own password).
pub async fn set_password(client: &Client, role: &str, password: &str) -> Result<bool, UserError> {
    validate_name(NameKind::Role, role)?;
    validate_password(password)?;
    let existing = fetch_role(client, role)
        .await?
        .ok_or_else(|| UserError::RoleMissing {
            role: role.to_owned(),
        })?;
    if existing.password_matches(password) {
        return Ok(false);
    }
    alter_password(client, role, password).await?;
    Ok(true)
}

/// Drops the service's database (disconnecting its sessions) and its roles;
/// with a `marker`, only those that carry it (an object servicedb did not
/// make for this service stays as it is). Missing objects are not an error,
/// so a retried deletion converges.
pub async fn drop_service_database(
    client: &Client,
    user: &ServiceUser,
    marker: Option<&Marker>,
) -> Result<(), UserError> {
    validate_role_name(&user.role)?;
    validate_database_name(&user.database)?;
    refuse_own_role(client, &user.role).await?;
    let owner_found = match marker {
        Some(marker) => ours(check_role(client, marker, &user.role).await)?,
        None => Found::Ours { marked: true },
    };
    let database_ours = match marker {
        Some(marker) => {
            ours(check_database(client, marker, &user.database, &user.role, owner_found).await)?
                .is_ours()
        }
        None => true,
    };
    if database_ours {
        let database = quote_ident(&user.database);
        execute(
            client,
            "drop database",
            &format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)"),
        )
        .await?;
    }
    // Twins first: the owner role is granted to them.
    for name in roles_to_drop(client, &user.role, owner_found, marker).await? {
        if fetch_role(client, &name).await?.is_some() {
            let role = quote_ident(&name);
            // Grants the role holds in the database we are connected to would
            // otherwise block DROP ROLE.
            execute(client, "drop owned", &format!("DROP OWNED BY {role}")).await?;
            execute(client, "drop role", &format!("DROP ROLE {role}")).await?;
        }
    }
    Ok(())
}

/// The service's roles that may be dropped, twins first: with a `marker`,
/// those that carry it (a twin of the old name only when marked, as it may
/// be another service's owner login); without, the ones servicedb names.
async fn roles_to_drop(
    client: &Client,
    owner: &str,
    owner_found: Found,
    marker: Option<&Marker>,
) -> Result<Vec<String>, UserError> {
    let mut names = Vec::new();
    for twin in [logins::twin(owner), logins::legacy_twin(owner)] {
        if validate_role_name(&twin).is_err() {
            continue;
        }
        let droppable = match marker {
            None => true,
            Some(marker) if twin == logins::legacy_twin(owner) => {
                let mark = marker.read(role_comment(client, &twin).await?.flatten().as_deref());
                matches!(mark, Mark::Ours | Mark::Predecessor)
            }
            Some(marker) => ours(check_role(client, marker, &twin).await)?.is_ours(),
        };
        if droppable {
            names.push(twin);
        }
    }
    if owner_found.is_ours() {
        names.push(owner.to_string());
    }
    Ok(names)
}

/// A twin of the old name ([`logins::legacy_twin`]) that the logins no longer
/// use cannot log in any more, if it is this service's: marked for it (it
/// was marked while in use), or any on a dedicated instance.
async fn retire_legacy_twin(
    client: &Client,
    owner: &str,
    twin_in_use: &str,
    marker: Option<&Marker>,
) -> Result<Outcome, UserError> {
    let legacy = logins::legacy_twin(owner);
    if legacy == twin_in_use || validate_role_name(&legacy).is_err() {
        return Ok(Outcome::default());
    }
    let Some(comment) = role_comment(client, &legacy).await? else {
        return Ok(Outcome::default());
    };
    if let Some(marker) = marker
        && !matches!(
            marker.read(comment.as_deref()),
            Mark::Ours | Mark::Predecessor
        )
    {
        return Ok(Outcome::default());
    }
    ensure_twin(client, owner, &legacy, None, None).await
}

/// What servicedb found under one of the service's names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Found {
    Missing,
    /// The service's own: marked for it, or one it may adopt and mark.
    Ours {
        marked: bool,
    },
}

impl Found {
    fn is_ours(self) -> bool {
        matches!(self, Found::Ours { .. })
    }
}

/// For deletion: someone else's object counts as missing.
fn ours(found: Result<Found, UserError>) -> Result<Found, UserError> {
    match found {
        Err(UserError::NotOurs { object, holder, .. }) => {
            tracing::info!(%object, holder = ?holder, "not servicedb's for this service; left as it is");
            Ok(Found::Missing)
        }
        other => other,
    }
}

/// Whether the service's owner role `role` was made for an earlier
/// ServiceDatabase of the same namespace and name (and is not yet taken
/// over): what it holds was kept, not made new.
pub async fn left_by_predecessor(
    client: &Client,
    role: &str,
    marker: &Marker,
) -> Result<bool, UserError> {
    let comment = role_comment(client, role).await?.flatten();
    Ok(marker.read(comment.as_deref()) == Mark::Predecessor)
}

/// Whether `role` exists and is this service's (marked for it, or a legacy
/// one it may adopt): what may be switched off for it. A foreign or
/// unmarked role is not an error here: it is simply not the service's.
pub async fn role_is_ours(client: &Client, marker: &Marker, role: &str) -> Result<bool, UserError> {
    match check_role(client, marker, role).await {
        Ok(found) => Ok(matches!(found, Found::Ours { .. })),
        Err(UserError::NotOurs { .. }) => Ok(false),
        Err(e) => Err(e),
    }
}

fn not_ours(kind: &str, name: &str, marker: &Marker, mark: Mark) -> UserError {
    UserError::NotOurs {
        object: format!("{kind} {name}"),
        service: marker.service.clone(),
        holder: match mark {
            Mark::Foreign(holder) => Some(holder),
            Mark::Ours | Mark::Unmarked | Mark::Predecessor => None,
        },
    }
}

/// A role is the service's when it carries its marker, or (a service given
/// its logins before markers existed) carries none.
async fn check_role(client: &Client, marker: &Marker, role: &str) -> Result<Found, UserError> {
    let Some(comment) = role_comment(client, role).await? else {
        return Ok(Found::Missing);
    };
    match marker.read(comment.as_deref()) {
        Mark::Ours => Ok(Found::Ours { marked: true }),
        // Marked anew by the caller: this ServiceDatabase's from now on.
        Mark::Predecessor => Ok(Found::Ours { marked: false }),
        Mark::Unmarked if marker.adopt_unmarked => Ok(Found::Ours { marked: false }),
        mark => Err(not_ours("role", role, marker, mark)),
    }
}

/// A database is the service's when it carries its marker, or carries none
/// and is owned by the service's own role (`owner`, found as `owner_found`):
/// only that role, or servicedb between CREATE DATABASE and its comment,
/// could have made it so.
async fn check_database(
    client: &Client,
    marker: &Marker,
    database: &str,
    owner: &str,
    owner_found: Found,
) -> Result<Found, UserError> {
    const QUERY: &str = "SELECT shobj_description(oid, 'pg_database'), pg_get_userbyid(datdba)::text \
                         FROM pg_database WHERE datname = $1";
    let object = Object {
        kind: "database",
        query: QUERY,
        look_up: "look up database",
        read: "read database",
    };
    check_owned(client, marker, &object, database, owner, owner_found).await
}

/// [`check_database`] for the service's schema in the shared database.
async fn check_schema(
    shared: &Client,
    marker: &Marker,
    owner: &str,
    owner_found: Found,
) -> Result<Found, UserError> {
    const QUERY: &str = "SELECT obj_description(oid, 'pg_namespace'), pg_get_userbyid(nspowner)::text \
                         FROM pg_namespace WHERE nspname = $1";
    let object = Object {
        kind: "schema",
        query: QUERY,
        look_up: "look up schema",
        read: "read schema",
    };
    check_owned(shared, marker, &object, owner, owner, owner_found).await
}

/// A kind of object that carries a marker and an owner: how to read both.
struct Object {
    kind: &'static str,
    /// Returns the comment and the owner's name of the object named `$1`.
    query: &'static str,
    look_up: &'static str,
    read: &'static str,
}

/// Reads the comment and the owner of the `object` named `name`, and says
/// whether it is the service's ([`owned`]).
async fn check_owned(
    client: &Client,
    marker: &Marker,
    object: &Object,
    name: &str,
    owner: &str,
    owner_found: Found,
) -> Result<Found, UserError> {
    let row = client
        .query_opt(object.query, &[&name])
        .await
        .map_err(database_error(object.look_up))?;
    let Some(row) = row else {
        return Ok(Found::Missing);
    };
    let read = database_error(object.read);
    let comment: Option<String> = row.try_get(0).map_err(read)?;
    let found_owner: String = row.try_get(1).map_err(read)?;
    owned(
        marker,
        object.kind,
        name,
        comment,
        &found_owner,
        owner,
        owner_found,
    )
}

fn owned(
    marker: &Marker,
    kind: &str,
    name: &str,
    comment: Option<String>,
    found_owner: &str,
    owner: &str,
    owner_found: Found,
) -> Result<Found, UserError> {
    match marker.read(comment.as_deref()) {
        Mark::Ours => Ok(Found::Ours { marked: true }),
        Mark::Unmarked | Mark::Predecessor if owner_found.is_ours() && found_owner == owner => {
            Ok(Found::Ours { marked: false })
        }
        mark => Err(not_ours(kind, name, marker, mark)),
    }
}

/// A role's comment: `None` when there is no such role.
async fn role_comment(client: &Client, role: &str) -> Result<Option<Option<String>>, UserError> {
    let row = client
        .query_opt(
            "SELECT shobj_description(oid, 'pg_authid') FROM pg_roles WHERE rolname = $1",
            &[&role],
        )
        .await
        .map_err(database_error("look up role"))?;
    row.map(|row| row.try_get(0))
        .transpose()
        .map_err(database_error("read role"))
}

/// Writes the marker on an object (`kind`: ROLE, DATABASE, SCHEMA).
async fn mark(client: &Client, kind: &str, name: &str, marker: &Marker) -> Result<(), UserError> {
    execute(
        client,
        "mark",
        &format!(
            "COMMENT ON {kind} {} IS {}",
            quote_ident(name),
            quote_literal(&marker.text())
        ),
    )
    .await
}

const LEAST_PRIVILEGE: &str =
    "NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS INHERIT";

/// The attributes of a service role that may (or may not) log in.
fn attributes(login: bool) -> String {
    format!(
        "{} {LEAST_PRIVILEGE}",
        if login { "LOGIN" } else { "NOLOGIN" }
    )
}

/// A fresh SCRAM-SHA-256 verifier for the password, as an SQL literal.
fn scram_verifier(password: &str) -> String {
    quote_literal(&postgres_protocol::password::scram_sha_256(
        password.as_bytes(),
    ))
}

async fn alter_password(client: &Client, role: &str, password: &str) -> Result<(), UserError> {
    let verifier = scram_verifier(password);
    execute(
        client,
        "set password",
        &format!("ALTER ROLE {} PASSWORD {verifier}", quote_ident(role)),
    )
    .await
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

/// Managing the role we are logged in as would demote the administrator.
async fn refuse_own_role(client: &Client, role: &str) -> Result<(), UserError> {
    let current: String = client
        .query_one("SELECT current_user::text", &[])
        .await
        .map_err(database_error("read current user"))?
        .try_get(0)
        .map_err(database_error("read current user"))?;
    if current == role {
        return Err(UserError::OwnRole {
            role: role.to_owned(),
        });
    }
    Ok(())
}

struct ExistingRole {
    superuser: bool,
    create_db: bool,
    create_role: bool,
    replication: bool,
    bypass_rls: bool,
    login: bool,
    /// `None` when unknown: no password, or the connected role may not read
    /// pg_authid (a non-superuser administrator on a managed service).
    verifier: Option<String>,
}

impl ExistingRole {
    fn is_least_privilege(&self, login: bool) -> bool {
        self.login == login
            && !self.superuser
            && !self.create_db
            && !self.create_role
            && !self.replication
            && !self.bypass_rls
    }

    fn password_matches(&self, password: &str) -> bool {
        self.verifier
            .as_deref()
            .is_some_and(|verifier| scram::verifier_matches(verifier, password))
    }
}

async fn fetch_role(client: &Client, role: &str) -> Result<Option<ExistingRole>, UserError> {
    const COLUMNS: &str =
        "rolsuper, rolcreatedb, rolcreaterole, rolreplication, rolbypassrls, rolcanlogin";
    let from_authid = client
        .query_opt(
            &format!("SELECT {COLUMNS}, rolpassword FROM pg_authid WHERE rolname = $1"),
            &[&role],
        )
        .await;
    let row = match from_authid {
        Ok(row) => row,
        Err(error) if error.code() == Some(&SqlState::INSUFFICIENT_PRIVILEGE) => client
            .query_opt(
                &format!("SELECT {COLUMNS}, NULL::text FROM pg_roles WHERE rolname = $1"),
                &[&role],
            )
            .await
            .map_err(database_error("look up role"))?,
        Err(error) => return Err(database_error("look up role")(error)),
    };
    let Some(row) = row else { return Ok(None) };
    let read = database_error("read role");
    Ok(Some(ExistingRole {
        superuser: row.try_get(0).map_err(read)?,
        create_db: row.try_get(1).map_err(read)?,
        create_role: row.try_get(2).map_err(read)?,
        replication: row.try_get(3).map_err(read)?,
        bypass_rls: row.try_get(4).map_err(read)?,
        login: row.try_get(5).map_err(read)?,
        verifier: row.try_get(6).map_err(read)?,
    }))
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
