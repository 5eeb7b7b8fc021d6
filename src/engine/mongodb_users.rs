//! MongoDB service users: one SCRAM-SHA-256 user per service, defined on the
//! service's own database (its `authSource`) with `readWrite` on that
//! database and nothing else.
//!
//! Used by the instance manager (dedicated replica sets, over loopback) and,
//! later, by the operator (shared servers), so it knows nothing about
//! Kubernetes. The command documents are plain functions so that their exact
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

use std::time::Duration;

use mongodb::Client;
use mongodb::bson::{Bson, Document, doc};
use mongodb::error::{CommandError, ErrorKind};
use mongodb::options::{AuthMechanism, ClientOptions, Credential, ServerAddress};

use super::logins::Marker;
use super::mongodb::REPLICA_SET;
use scram::StoredKey;

mod scram;

/// The only authentication mechanism servicedb gives its users.
pub const SCRAM_SHA_256: &str = "SCRAM-SHA-256";
/// Where the administrator is defined.
pub const ADMIN_DATABASE: &str = "admin";
/// MongoDB refuses database names of 64 bytes or more.
pub const MAX_DATABASE_NAME_BYTES: usize = 63;
/// Not a MongoDB limit: a bound that keeps names sane in logs and URIs.
pub const MAX_USERNAME_BYTES: usize = 128;
/// Databases that belong to the server: `readWrite` on them would let a
/// service change users, the replica set or sharding metadata.
pub const RESERVED_DATABASES: [&str; 4] = ["admin", "local", "config", "$external"];
/// Characters MongoDB forbids in database names on some platform; refused
/// everywhere so that a dump restores anywhere.
const FORBIDDEN_DATABASE_CHARS: &[char] =
    &['/', '\\', '.', ' ', '"', '$', '*', '<', '>', ':', '|', '?'];

// Server error codes (src/mongo/base/error_codes.yml).
const USER_NOT_FOUND: i32 = 11;
const UNAUTHORIZED: i32 = 13;
const AUTHENTICATION_FAILED: i32 = 18;
const ALREADY_INITIALIZED: i32 = 23;
const COMMAND_NOT_FOUND: i32 = 59;
const NOT_WRITABLE_PRIMARY: i32 = 10107;
const NOT_PRIMARY_NO_SECONDARY_OK: i32 = 13435;
const NOT_PRIMARY_OR_SECONDARY: i32 = 13436;
const PRIMARY_STEPPED_DOWN: i32 = 189;
const NOT_IMPLEMENTED: i32 = 238;
const USER_ALREADY_EXISTS: i32 = 51003;

/// A built-in role on a database, as `createUser` and `usersInfo` spell it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Role {
    pub role: String,
    pub db: String,
}

impl Role {
    /// Read and write every collection of `db`, create and drop its
    /// collections and indexes; nothing on any other database.
    pub fn read_write(db: &str) -> Role {
        Role {
            role: "readWrite".to_owned(),
            db: db.to_owned(),
        }
    }

    /// The superuser role, for the instance's administrator.
    pub fn root() -> Role {
        Role {
            role: "root".to_owned(),
            db: ADMIN_DATABASE.to_owned(),
        }
    }

    fn to_bson(&self) -> Bson {
        Bson::Document(doc! { "role": &self.role, "db": &self.db })
    }
}

/// A user as it should be on the server.
#[derive(Clone, PartialEq, Eq)]
pub struct UserSpec {
    /// The database the user is defined on: its `authSource`.
    pub db: String,
    pub name: String,
    pub password: String,
    pub roles: Vec<Role>,
}

impl std::fmt::Debug for UserSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserSpec")
            .field("db", &self.db)
            .field("name", &self.name)
            .field("password", &"<redacted>")
            .field("roles", &self.roles)
            .finish()
    }
}

impl UserSpec {
    /// A service's user: defined on its own database, `readWrite` there only.
    pub fn service(db: &str, name: &str, password: &str) -> UserSpec {
        UserSpec {
            db: db.to_owned(),
            name: name.to_owned(),
            password: password.to_owned(),
            roles: vec![Role::read_write(db)],
        }
    }

    /// The instance's administrator: `root` on `admin`.
    pub fn root(name: &str, password: &str) -> UserSpec {
        UserSpec {
            db: ADMIN_DATABASE.to_owned(),
            name: name.to_owned(),
            password: password.to_owned(),
            roles: vec![Role::root()],
        }
    }

    /// Checks the names and the password before anything is sent.
    pub fn validate(&self) -> Result<(), UserError> {
        validate_database_name(&self.db)?;
        validate_username(&self.name)?;
        validate_password(&self.password)
    }

    /// `createUser`, to be run on [`UserSpec::db`].
    pub fn create_command(&self) -> Document {
        doc! {
            "createUser": &self.name,
            "pwd": &self.password,
            "roles": roles_bson(&self.roles),
            "mechanisms": [SCRAM_SHA_256],
        }
    }

    /// `updateUser` setting what `change` names, to be run on
    /// [`UserSpec::db`]. A new password always comes with the mechanisms,
    /// so that a user made with SCRAM-SHA-1 loses it.
    pub fn update_command(&self, change: Change) -> Document {
        let mut command = doc! { "updateUser": &self.name };
        if change.password {
            command.insert("pwd", &self.password);
            command.insert("mechanisms", vec![SCRAM_SHA_256]);
        }
        if change.roles {
            command.insert("roles", roles_bson(&self.roles));
        }
        command
    }
}

fn roles_bson(roles: &[Role]) -> Vec<Bson> {
    roles.iter().map(Role::to_bson).collect()
}

/// `createUser` for a service user on `db` (run it on `db`):
/// `{createUser, pwd, roles: [{role: "readWrite", db}], mechanisms: ["SCRAM-SHA-256"]}`.
pub fn create_user_command(user: &str, password: &str, db: &str) -> Document {
    UserSpec::service(db, user, password).create_command()
}

/// `updateUser` bringing a service user on `db` wholly to its desired
/// state: password, mechanisms and roles (run it on `db`).
pub fn update_user_command(user: &str, password: &str, db: &str) -> Document {
    UserSpec::service(db, user, password).update_command(Change {
        password: true,
        roles: true,
    })
}

/// `dropUser` (run it on the user's database).
pub fn drop_user_command(user: &str) -> Document {
    doc! { "dropUser": user }
}

/// `usersInfo` for one user of the database it is run on, with the stored
/// SCRAM keys (needs `viewUser` on that database; `root` has it).
pub fn users_info_command(user: &str) -> Document {
    doc! { "usersInfo": user, "showCredentials": true }
}

/// `replSetInitiate` for a one-member replica set named
/// [`REPLICA_SET`] whose member is `host` (`host:port`, as the member reaches
/// itself). Run on `admin`.
pub fn repl_set_initiate_command(host: &str) -> Document {
    doc! {
        "replSetInitiate": {
            "_id": REPLICA_SET,
            "version": 1,
            "members": [ { "_id": 0, "host": host } ],
        }
    }
}

/// What an `updateUser` has to set.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Change {
    /// The password (and with it the mechanisms).
    pub password: bool,
    pub roles: bool,
}

/// What [`plan`] decided and [`ensure_user`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Created,
    Updated(Change),
    Unchanged,
}

/// A user as `usersInfo` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedUser {
    pub roles: Vec<Role>,
    pub mechanisms: Vec<String>,
    scram_sha_256: Option<StoredKey>,
}

impl ObservedUser {
    /// Reads one entry of `usersInfo`'s `users` array.
    pub fn from_document(user: &Document) -> Result<ObservedUser, String> {
        let roles = match user.get("roles") {
            None => Vec::new(),
            Some(Bson::Array(roles)) => roles
                .iter()
                .map(|role| {
                    let role = role.as_document().ok_or("a role is not a document")?;
                    Ok(Role {
                        role: role.get_str("role").map_err(|e| e.to_string())?.to_owned(),
                        db: role.get_str("db").map_err(|e| e.to_string())?.to_owned(),
                    })
                })
                .collect::<Result<_, String>>()?,
            Some(_) => return Err("roles is not an array".to_owned()),
        };
        let mechanisms = match user.get("mechanisms") {
            None => Vec::new(),
            Some(Bson::Array(mechanisms)) => mechanisms
                .iter()
                .map(|m| {
                    m.as_str()
                        .map(str::to_owned)
                        .ok_or("a mechanism is not a string")
                })
                .collect::<Result<_, _>>()?,
            Some(_) => return Err("mechanisms is not an array".to_owned()),
        };
        let scram_sha_256 = user
            .get_document("credentials")
            .ok()
            .and_then(|credentials| credentials.get_document(SCRAM_SHA_256).ok())
            .and_then(StoredKey::from_document);
        Ok(ObservedUser {
            roles,
            mechanisms,
            scram_sha_256,
        })
    }

    /// `Some(true)` if the stored SCRAM-SHA-256 key was made from
    /// `password`; `None` when that cannot be told here (no key shown, or a
    /// password SASLprep might change), which callers treat as "set it".
    pub fn password_matches(&self, password: &str) -> Option<bool> {
        self.scram_sha_256.as_ref()?.matches(password)
    }
}

/// Decides what brings the server's user to `desired`: pure, so that every
/// case is unit-tested without a server.
pub fn plan(desired: &UserSpec, observed: Option<&ObservedUser>) -> Outcome {
    let Some(observed) = observed else {
        return Outcome::Created;
    };
    let mechanisms_right = observed.mechanisms == [SCRAM_SHA_256];
    let change = Change {
        password: !mechanisms_right || observed.password_matches(&desired.password) != Some(true),
        roles: sorted(&observed.roles) != sorted(&desired.roles),
    };
    if change == Change::default() {
        Outcome::Unchanged
    } else {
        Outcome::Updated(change)
    }
}

fn sorted(roles: &[Role]) -> Vec<&Role> {
    let mut roles: Vec<&Role> = roles.iter().collect();
    roles.sort();
    roles.dedup();
    roles
}

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

/// Database names: what MongoDB accepts on every platform, and no
/// server-owned database for a service.
pub fn validate_database_name(name: &str) -> Result<(), UserError> {
    let invalid = |reason| UserError::InvalidName {
        of: NameOf::Database,
        name: name.to_owned(),
        reason,
    };
    if name.is_empty() {
        return Err(invalid("must not be empty"));
    }
    if name.len() > MAX_DATABASE_NAME_BYTES {
        return Err(invalid("must be at most 63 bytes"));
    }
    if name.contains(FORBIDDEN_DATABASE_CHARS) || name.contains(char::is_control) {
        return Err(invalid(
            "must not contain control characters or any of / \\ . space \" $ * < > : | ?",
        ));
    }
    Ok(())
}

/// A service's database: a valid name that is not one of the server's own.
pub fn validate_service_database(name: &str) -> Result<(), UserError> {
    if RESERVED_DATABASES.contains(&name) {
        return Err(UserError::InvalidName {
            of: NameOf::Database,
            name: name.to_owned(),
            reason: "is reserved for the server (admin, local, config, $external)",
        });
    }
    validate_database_name(name)
}

pub fn validate_username(name: &str) -> Result<(), UserError> {
    let invalid = |reason| UserError::InvalidName {
        of: NameOf::User,
        name: name.to_owned(),
        reason,
    };
    if name.is_empty() {
        return Err(invalid("must not be empty"));
    }
    if name.len() > MAX_USERNAME_BYTES {
        return Err(invalid("must be at most 128 bytes"));
    }
    if name.contains(char::is_control) {
        return Err(invalid("must not contain control characters"));
    }
    Ok(())
}

/// SASLprep prohibits control characters; refusing them here gives a clear
/// message instead of the server's "U_STRINGPREP_PROHIBITED_ERROR".
pub fn validate_password(password: &str) -> Result<(), UserError> {
    if password.is_empty() {
        return Err(UserError::InvalidPassword {
            reason: "must not be empty",
        });
    }
    if password.contains(char::is_control) {
        return Err(UserError::InvalidPassword {
            reason: "must not contain control characters (such as a newline)",
        });
    }
    Ok(())
}

/// Whom to log in as: a user and the database it is defined on.
#[derive(Clone, Copy)]
pub struct Login<'a> {
    pub source: &'a str,
    pub user: &'a str,
    pub password: &'a str,
}

/// A client for one server, connected to directly (no replica set
/// discovery), logging in with SCRAM-SHA-256 if `login` is given. Connects
/// lazily: the first command tells whether the server and the login work.
pub fn direct_client(
    host: &str,
    port: u16,
    login: Option<Login<'_>>,
    timeout: Duration,
) -> Result<Client, UserError> {
    direct_client_tls(host, port, login, timeout, None)
}

/// [`direct_client`] with the driver's TLS options (external servers).
pub fn direct_client_tls(
    host: &str,
    port: u16,
    login: Option<Login<'_>>,
    timeout: Duration,
    tls: Option<mongodb::options::Tls>,
) -> Result<Client, UserError> {
    let credential = login.map(|login| {
        Credential::builder()
            .username(login.user.to_owned())
            .password(login.password.to_owned())
            .source(login.source.to_owned())
            .mechanism(AuthMechanism::ScramSha256)
            .build()
    });
    let options = ClientOptions::builder()
        .hosts(vec![ServerAddress::Tcp {
            host: host.to_owned(),
            port: Some(port),
        }])
        .direct_connection(true)
        .credential(credential)
        .connect_timeout(timeout)
        .server_selection_timeout(timeout)
        .app_name("servicedb".to_owned())
        .tls(tls)
        .build();
    let secret = login.map_or("", |login| login.password);
    Client::with_options(options).map_err(|error| UserError::from_driver("connect", &error, secret))
}

/// `hello` on `admin`: allowed without logging in, so it tells whether the
/// server is up and what its replica set state is.
pub async fn hello(client: &Client) -> Result<Document, UserError> {
    run(client, ADMIN_DATABASE, "hello", doc! { "hello": 1 }, "").await
}

async fn run(
    client: &Client,
    db: &str,
    action: &'static str,
    command: Document,
    secret: &str,
) -> Result<Document, UserError> {
    client
        .database(db)
        .run_command(command)
        .await
        .map_err(|error| UserError::from_driver(action, &error, secret))
}

/// Reads `name` on `db` (with its stored keys); `None` if it does not exist.
pub async fn observe_user(
    client: &Client,
    db: &str,
    name: &str,
) -> Result<Option<ObservedUser>, UserError> {
    const ACTION: &str = "usersInfo";
    let reply = run(client, db, ACTION, users_info_command(name), "").await?;
    let users = reply
        .get_array("users")
        .map_err(|error| UserError::UnexpectedReply {
            action: ACTION,
            reason: error.to_string(),
        })?;
    let found = users.iter().filter_map(Bson::as_document).find(|user| {
        user.get_str("user") == Ok(name) && user.get_str("db").is_ok_and(|found| found == db)
    });
    found
        .map(ObservedUser::from_document)
        .transpose()
        .map_err(|reason| UserError::UnexpectedReply {
            action: ACTION,
            reason,
        })
}

/// Brings `desired` about on the server: `createUser` if it is missing,
/// `updateUser` with only what differs, nothing if it is right.
pub async fn ensure_user(client: &Client, desired: &UserSpec) -> Result<Outcome, UserError> {
    desired.validate()?;
    let observed = observe_user(client, &desired.db, &desired.name).await?;
    let mut outcome = plan(desired, observed.as_ref());
    if outcome == Outcome::Created {
        match create_user(client, desired).await {
            Ok(()) => return Ok(Outcome::Created),
            // Made in between by someone else: bring it wholly in line.
            Err(error) if error.code() == Some(USER_ALREADY_EXISTS) => {
                outcome = Outcome::Updated(Change {
                    password: true,
                    roles: true,
                });
            }
            Err(error) => return Err(error),
        }
    }
    if let Outcome::Updated(change) = outcome {
        run(
            client,
            &desired.db,
            "updateUser",
            desired.update_command(change),
            &desired.password,
        )
        .await?;
    }
    Ok(outcome)
}

/// A service's user on its own database with `readWrite` there only.
pub async fn ensure_service_user(
    client: &Client,
    db: &str,
    user: &str,
    password: &str,
) -> Result<Outcome, UserError> {
    validate_service_database(db)?;
    ensure_user(client, &UserSpec::service(db, user, password)).await
}

/// The service's two identities on its database (see
/// [`crate::engine::logins`]): each one `logins` lists exists with its
/// password and `readWrite` on `db`; the other is dropped (MongoDB users
/// cannot be disabled; open sessions stay until they close). A twin of the
/// old name (`logins::legacy_twin`) is a user of `db` like the others, so
/// it is another service's login never: it is kept while a Secret names it.
pub async fn ensure_service_logins(
    client: &Client,
    db: &str,
    owner: &str,
    logins: &crate::engine::logins::Logins,
    marker: Option<&Marker>,
) -> Result<(), UserError> {
    validate_service_database(db)?;
    if let Some(marker) = marker {
        claim_database(client, db, marker).await?;
    }
    let twin = crate::engine::logins::twin(owner);
    let legacy = crate::engine::logins::legacy_twin(owner);
    for identity in [owner, twin.as_str(), legacy.as_str()] {
        match logins.password_of(identity) {
            Some(password) => {
                ensure_user(client, &UserSpec::service(db, identity, password)).await?;
            }
            None => {
                drop_user(client, db, identity).await?;
            }
        }
    }
    Ok(())
}

/// servicedb's own database on a shared MongoDB server, and the collection
/// of claims in it. No service database is named so: theirs are
/// `<namespace>_<name>`.
pub const CLAIMS_DATABASE: &str = "servicedb";
const CLAIMS: &str = "claims";
const DUPLICATE_KEY: i32 = 11000;

/// Whose the service's database `db` is, as far as servicedb can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// This service's claim is recorded.
    Ours,
    /// No claim, and neither data nor users (or unmarked, and the service
    /// was given its logins before claims existed): free to claim.
    Free,
    /// Claimed for an earlier ServiceDatabase of the same namespace and
    /// name (only with [`Marker::adopt_predecessor`]): this one takes the
    /// claim, the database and its users over.
    Predecessor,
}

/// Reads the claim on `db`: an error ([`UserError::NotOurs`]) when another
/// service claimed it, or when it exists or has users without a claim.
pub async fn check_claim(client: &Client, db: &str, marker: &Marker) -> Result<Claim, UserError> {
    validate_database_name(db)?;
    let refused = |holder: Option<String>| UserError::NotOurs {
        database: db.to_owned(),
        service: marker.service.clone(),
        holder,
    };
    let found = run(
        client,
        CLAIMS_DATABASE,
        "read the claim",
        doc! { "find": CLAIMS, "filter": { "_id": db }, "limit": 1 },
        "",
    )
    .await?;
    let claim = found
        .get_document("cursor")
        .and_then(|cursor| cursor.get_array("firstBatch"))
        .map_err(|error| UserError::UnexpectedReply {
            action: "read the claim",
            reason: error.to_string(),
        })?
        .iter()
        .filter_map(Bson::as_document)
        .next()
        .map(|claim| {
            let field = |name| claim.get_str(name).unwrap_or_default().to_owned();
            (field("uid"), field("serviceDatabase"))
        });
    match claim {
        Some((uid, _)) if uid == marker.uid => return Ok(Claim::Ours),
        Some((_, service)) if marker.adopt_predecessor && service == marker.service => {
            return Ok(Claim::Predecessor);
        }
        Some((other, _)) => return Err(refused(Some(other))),
        None if marker.adopt_unmarked => return Ok(Claim::Free),
        None => {}
    }
    let users = run(client, db, "usersInfo", doc! { "usersInfo": 1 }, "").await?;
    let has_users = users
        .get_array("users")
        .map_err(|error| UserError::UnexpectedReply {
            action: "usersInfo",
            reason: error.to_string(),
        })?
        .iter()
        .filter_map(Bson::as_document)
        .any(|user| user.get_str("db") == Ok(db));
    let listed = run(
        client,
        ADMIN_DATABASE,
        "listDatabases",
        doc! { "listDatabases": 1, "nameOnly": true },
        "",
    )
    .await?;
    let exists = listed
        .get_array("databases")
        .map_err(|error| UserError::UnexpectedReply {
            action: "listDatabases",
            reason: error.to_string(),
        })?
        .iter()
        .filter_map(Bson::as_document)
        .any(|found| found.get_str("name") == Ok(db));
    if exists || has_users {
        return Err(refused(None));
    }
    Ok(Claim::Free)
}

/// Claims `db` for the service, once: of two services claiming it in the
/// same instant, the second insert fails on the unique `_id`.
pub async fn claim_database(client: &Client, db: &str, marker: &Marker) -> Result<(), UserError> {
    match check_claim(client, db, marker).await? {
        Claim::Ours => return Ok(()),
        Claim::Predecessor => return take_over_claim(client, db, marker).await,
        Claim::Free => {}
    }
    let claim = doc! {
        "_id": db,
        "uid": &marker.uid,
        "serviceDatabase": &marker.service,
        "server": &marker.server,
    };
    let reply = run(
        client,
        CLAIMS_DATABASE,
        "record the claim",
        doc! { "insert": CLAIMS, "documents": [claim] },
        "",
    )
    .await?;
    let write_error = reply
        .get_array("writeErrors")
        .ok()
        .and_then(|errors| errors.iter().filter_map(Bson::as_document).next())
        .map(|error| {
            (
                error.get_i32("code").unwrap_or_default(),
                error.get_str("errmsg").unwrap_or_default().to_owned(),
            )
        });
    match write_error {
        None => Ok(()),
        // Claimed by another in between: say whose.
        Some((DUPLICATE_KEY, _)) => check_claim(client, db, marker).await.map(drop),
        Some((code, message)) => Err(UserError::Refused {
            action: "record the claim",
            code,
            code_name: String::new(),
            message,
        }),
    }
}

/// Passes the claim an earlier ServiceDatabase of the same namespace and
/// name left on `db` to the service. Only one ServiceDatabase of a
/// namespace and name exists at a time, so nobody else can be taking it.
async fn take_over_claim(client: &Client, db: &str, marker: &Marker) -> Result<(), UserError> {
    tracing::info!(database = %db, service = %marker.service, "taking over the database an earlier ServiceDatabase of this namespace and name left");
    let update = doc! {
        "q": { "_id": db, "serviceDatabase": &marker.service },
        "u": { "$set": { "uid": &marker.uid, "server": &marker.server } },
    };
    run(
        client,
        CLAIMS_DATABASE,
        "take over the claim",
        doc! { "update": CLAIMS, "updates": [update] },
        "",
    )
    .await?;
    match check_claim(client, db, marker).await? {
        Claim::Ours => Ok(()),
        // Changed in between: refused like any claim that is not ours.
        Claim::Free | Claim::Predecessor => Err(UserError::NotOurs {
            database: db.to_owned(),
            service: marker.service.clone(),
            holder: None,
        }),
    }
}

/// Removes the service's claim on `db` (after its database was dropped).
pub async fn release_claim(client: &Client, db: &str, marker: &Marker) -> Result<(), UserError> {
    run(
        client,
        CLAIMS_DATABASE,
        "remove the claim",
        doc! { "delete": CLAIMS, "deletes": [ { "q": { "_id": db, "uid": &marker.uid }, "limit": 1 } ] },
        "",
    )
    .await
    .map(drop)
}

/// `createUser` as is, without looking first: the one command the
/// localhost exception allows (no user can read `usersInfo` then).
pub async fn create_user(client: &Client, user: &UserSpec) -> Result<(), UserError> {
    user.validate()?;
    run(
        client,
        &user.db,
        "createUser",
        user.create_command(),
        &user.password,
    )
    .await
    .map(drop)
}

/// Sets `user`'s password (and SCRAM-SHA-256 as its only mechanism).
pub async fn set_password(
    client: &Client,
    db: &str,
    user: &str,
    password: &str,
) -> Result<(), UserError> {
    let spec = UserSpec {
        db: db.to_owned(),
        name: user.to_owned(),
        password: password.to_owned(),
        roles: Vec::new(),
    };
    spec.validate()?;
    let command = spec.update_command(Change {
        password: true,
        roles: false,
    });
    run(client, db, "updateUser", command, password)
        .await
        .map(drop)
}

/// Drops a user; `false` if there was none.
pub async fn drop_user(client: &Client, db: &str, user: &str) -> Result<bool, UserError> {
    validate_database_name(db)?;
    validate_username(user)?;
    match run(client, db, "dropUser", drop_user_command(user), "").await {
        Ok(_) => Ok(true),
        Err(error) if error.code() == Some(USER_NOT_FOUND) => Ok(false),
        Err(error) => Err(error),
    }
}

/// `replSetInitiate`; `false` if the replica set was already initiated.
pub async fn initiate_replica_set(client: &Client, host: &str) -> Result<bool, UserError> {
    match run(
        client,
        ADMIN_DATABASE,
        "replSetInitiate",
        repl_set_initiate_command(host),
        "",
    )
    .await
    {
        Ok(_) => Ok(true),
        Err(error) if error.code() == Some(ALREADY_INITIALIZED) => Ok(false),
        Err(error) => Err(error),
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

        assert_eq!(plan(&desired, None), Outcome::Created);
        assert_eq!(
            plan(
                &desired,
                Some(&observe("pw", &[SCRAM_SHA_256], readwrite.clone()))
            ),
            Outcome::Unchanged
        );
        assert_eq!(
            plan(
                &desired,
                Some(&observe("old", &[SCRAM_SHA_256], readwrite.clone()))
            ),
            Outcome::Updated(Change {
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
            Outcome::Updated(Change {
                password: true,
                roles: false
            })
        );
        // A role granted by hand on another database is taken away.
        let mut extra = observe("pw", &[SCRAM_SHA_256], readwrite.clone());
        extra.roles.push(Role::read_write("orders"));
        assert_eq!(
            plan(&desired, Some(&extra)),
            Outcome::Updated(Change {
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
            Outcome::Updated(Change {
                password: true,
                roles: true
            })
        );
        // No credentials shown (not allowed to see them): set the password.
        let mut hidden = observe("pw", &[SCRAM_SHA_256], readwrite);
        hidden.scram_sha_256 = None;
        assert_eq!(
            plan(&desired, Some(&hidden)),
            Outcome::Updated(Change {
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
