//! Redis ACL users: the `default` user switched off, one administrator with
//! every permission, and one least-privilege user per service, confined to
//! the keys and channels under its prefix.
//!
//! Used by the instance manager (dedicated instances: it renders the ACL
//! file before the server starts and applies changes live) and by the
//! operator (shared servers, over the network), so it knows nothing about
//! Kubernetes. Passwords only ever travel and rest as SHA-256 hashes
//! (`#<hex>` rules): the cleartext never reaches the server, its ACL file,
//! `ACL LIST`, the slow log or `MONITOR`. No password appears in an error.
//!
//! What a service user may do, and why ([`service_user_rules`]):
//!
//! - `~<prefix>*` and `&<prefix>*`: read and write its own keys, publish and
//!   subscribe on its own channels. Redis checks these patterns against key
//!   and channel *arguments* only, so a prefix must end in its one `:` (see
//!   [`KeyPrefix`]): `cart:*` can then never match `cart_items:1`.
//! - `+@all -@admin -@dangerous`: every data command (strings, hashes,
//!   lists, sets, sorted sets, streams, MULTI/EXEC, SCAN, EXPIRE, pub/sub)
//!   and the connection commands clients send on connect (HELLO, PING,
//!   ECHO, SELECT, COMMAND and COMMAND DOCS/INFO, CLIENT SETNAME/GETNAME/
//!   ID/INFO and, from Redis 7.2, CLIENT SETINFO: none of them is in either
//!   category), but none of the server's controls: FLUSHALL, FLUSHDB,
//!   CONFIG, DEBUG, SHUTDOWN, ACL, MONITOR, CLIENT LIST/KILL/PAUSE/NO-EVICT,
//!   SAVE, REPLICAOF, MODULE, MIGRATE, RESTORE, SWAPDB, SLOWLOG, ROLE.
//!   `@dangerous` also removes KEYS and SORT: KEYS walks the whole keyspace
//!   whatever its pattern (SCAN with MATCH is the supported way to list
//!   keys) and SORT's BY/GET read keys named by patterns. Both categories
//!   are named although Redis 7 makes `@admin` a subset of `@dangerous`:
//!   other versions and Valkey may not.
//! - `+info` ([`READ_ONLY_SERVER_COMMANDS`]): INFO is `@dangerous`, yet
//!   clients need it: ioredis' ready check and BullMQ's version and
//!   eviction-policy checks send it on every connect. It reads and changes
//!   nothing of anyone's data, but on a shared server it shows server-wide
//!   figures: the version, memory and CPU use, the number of clients and of
//!   keys per database, and per-command call counts, so a service sees how
//!   busy its neighbours are in aggregate (never a key, value, user name or
//!   password). DBSIZE already told the key count; that trade is taken so
//!   that stock clients work on shared servers too.
//! - Scripting ([`Scripting`]): without it, `-@scripting` (no EVAL, FCALL,
//!   FUNCTION or SCRIPT). Scripts do not escape key permissions (a
//!   `redis.call` on another service's key fails as the command would), but
//!   every recent critical Redis vulnerability (CVE-2025-49844 and its
//!   siblings: use-after-free and sandbox escapes in the Lua engine) needs
//!   nothing more than an authenticated user allowed to run Lua, and
//!   FUNCTION LOAD/FLUSH change a library namespace that all users of a
//!   server share. So shared servers never allow it; a dedicated instance,
//!   whose server and library namespace are its one service's, allows it
//!   when asked (`spec.redis.scripting`, for BullMQ or Redlock-style unlock
//!   scripts): all of `@scripting`, FUNCTION LOAD/DELETE/FLUSH included,
//!   except `-script|debug` (the Lua debugger, whose SYNC mode blocks the
//!   server: a developer's tool, not a client's).
//!
//! - `+restore`, only while the operator restores a backup into the prefix
//!   (`spec.bootstrap.fromBackup` on a shared server, where the restore Job
//!   logs in as the service): RESTORE is `@dangerous`, but its key argument
//!   is still held to `~<prefix>*`. The operator withdraws it once the
//!   restore completed ([`ensure_user_logins`]'s `restoring`).
//!
//! - `&servicedb-owner:<uid>` on a shared server: the marker naming the
//!   ServiceDatabase the user was made for ([`owner_rule`]), read back with
//!   `ACL GETUSER`. A pub/sub channel holds nothing and nobody listens on
//!   it, so the marker grants nothing of use. A user of the service's name
//!   without it is never changed or deleted. Before a new user is made, the
//!   name is claimed with `SET servicedb-claim:<user> <marker> NX`
//!   ([`claim`], the marker text naming uid and `namespace/name`; a bare uid
//!   in claims made before): of two services racing for one name only one
//!   can set it. No service's key pattern reaches it (prefixes hold no `-`).
//!   A user an earlier ServiceDatabase of the same namespace and name made
//!   (its claim says so) passes to the new one, claim and marker.
//!
//! Known limits, inherent to Redis ACLs: SCAN, RANDOMKEY, DBSIZE, PUBSUB
//! CHANNELS and broadcast-mode CLIENT TRACKING reveal the *names* (never the
//! values) of other keys and channels on the same server. On a dedicated
//! instance there are none; on a shared server key names must not be secret.

use std::fmt::Write as _;

use crate::engine::logins::{Login, Logins, Mark, Marker};
use redis::aio::ConnectionLike;
use redis::{ErrorKind, RedisError, ServerErrorKind};
use sha2::{Digest, Sha256};

/// The user every unauthenticated connection is; kept switched off.
pub const DEFAULT_USER: &str = "default";
/// Longest username and key prefix accepted.
pub const MAX_NAME_BYTES: usize = 128;
/// The separator a key prefix ends with (and contains nowhere else).
pub const PREFIX_SEPARATOR: char = ':';

/// Categories a service user never gets; see the module documentation.
const DENIED_CATEGORIES: [&str; 2] = ["admin", "dangerous"];

/// Commands of the denied categories given back: they read server-wide
/// figures and change nothing, and common clients fail without them.
pub const READ_ONLY_SERVER_COMMANDS: [&str; 1] = ["info"];

/// Whether a service user may run Lua scripts and functions: only on a
/// dedicated instance, and only when the ServiceDatabase asks for it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Scripting {
    /// `-@scripting`: no EVAL, FCALL, FUNCTION or SCRIPT.
    #[default]
    Refused,
    /// Every `@scripting` command but the Lua debugger.
    Allowed,
}

#[derive(Debug, thiserror::Error)]
pub enum AclError {
    #[error("invalid username {name:?}: {reason}")]
    InvalidUsername { name: String, reason: &'static str },
    #[error("invalid key prefix {prefix:?}: {reason}")]
    InvalidKeyPrefix {
        prefix: String,
        reason: &'static str,
    },
    #[error("invalid password: {reason}")]
    InvalidPassword { reason: &'static str },
    #[error("user {name:?} cannot be managed as a service user: {reason}")]
    ReservedUser { name: String, reason: &'static str },
    #[error("user {name:?} appears more than once")]
    DuplicateUser { name: String },
    /// A user of the service's name that servicedb did not make for it.
    #[error("ACL user {name} exists and was not created by servicedb for {service}{}", held_by(.holder))]
    NotOurs {
        name: String,
        service: String,
        holder: Option<String>,
    },
    #[error("{action} failed: {}", describe(source))]
    Server {
        action: &'static str,
        source: RedisError,
    },
}

impl AclError {
    /// Stable label for metrics and Event reasons.
    pub fn category(&self) -> &'static str {
        match self {
            AclError::InvalidUsername { .. } => "invalid_username",
            AclError::InvalidKeyPrefix { .. } => "invalid_key_prefix",
            AclError::InvalidPassword { .. } => "invalid_password",
            AclError::ReservedUser { .. } => "reserved_user",
            AclError::DuplicateUser { .. } => "duplicate_user",
            AclError::NotOurs { .. } => "name_conflict",
            AclError::Server { source, .. } => match source.kind() {
                ErrorKind::Server(ServerErrorKind::NoPerm) => "permission_denied",
                ErrorKind::AuthenticationFailed => "authentication_failed",
                ErrorKind::Server(ServerErrorKind::BusyLoading) => "server_loading",
                ErrorKind::Io => "connection",
                _ if source.detail().is_some_and(|d| d.contains("ACL file")) => "no_acl_file",
                _ => "server",
            },
        }
    }

    /// Whether retrying with the same input cannot help.
    pub fn is_invalid_input(&self) -> bool {
        !matches!(self, AclError::Server { .. })
    }
}

fn held_by(holder: &Option<String>) -> String {
    holder
        .as_ref()
        .map(|h| format!(" (it is marked for the ServiceDatabase with uid {h})"))
        .unwrap_or_default()
}

/// The channel pattern that marks a user as made for the ServiceDatabase
/// with this uid.
pub fn owner_rule(uid: &str) -> String {
    format!("&{OWNER_CHANNEL}{uid}")
}

const OWNER_CHANNEL: &str = "servicedb-owner:";

/// The uid a user's marker names, from the words of `ACL GETUSER`.
fn marked_uid(getuser: &redis::Value) -> Option<String> {
    fn words(value: &redis::Value, out: &mut Vec<String>) {
        match value {
            redis::Value::BulkString(bytes) => out.extend(
                String::from_utf8_lossy(bytes)
                    .split_whitespace()
                    .map(str::to_owned),
            ),
            redis::Value::SimpleString(text) => {
                out.extend(text.split_whitespace().map(str::to_owned))
            }
            redis::Value::Array(items) | redis::Value::Set(items) => {
                items.iter().for_each(|item| words(item, out))
            }
            redis::Value::Map(pairs) => pairs.iter().for_each(|(k, v)| {
                words(k, out);
                words(v, out);
            }),
            _ => {}
        }
    }
    let mut all = Vec::new();
    words(getuser, &mut all);
    all.iter().find_map(|word| {
        word.trim_start_matches('&')
            .strip_prefix(OWNER_CHANNEL)
            .map(str::to_owned)
    })
}

/// Whether `username` exists and is this service's: what may be switched
/// off for it. A foreign or unmarked user is simply not the service's.
pub async fn user_is_ours(
    conn: &mut impl ConnectionLike,
    username: &str,
    marker: &Marker,
) -> Result<bool, AclError> {
    match check_user(conn, username, marker).await {
        Ok(found) => Ok(found != Found::Missing),
        Err(AclError::NotOurs { .. }) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Whose a user of the service's name is, when it may be the service's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Found {
    Missing,
    /// Marked for this ServiceDatabase (or a legacy unmarked one it may
    /// adopt).
    Ours,
    /// Made for an earlier ServiceDatabase of the same namespace and name,
    /// as its claim says: this one takes the claim and the marker over.
    Predecessor,
}

/// Whether `username` is this service's; an error when it exists without
/// the service's marker (and the service was not given its logins before
/// markers existed) and is not its predecessor's.
async fn check_user(
    conn: &mut impl ConnectionLike,
    username: &str,
    marker: &Marker,
) -> Result<Found, AclError> {
    let found: redis::Value = redis::cmd("ACL")
        .arg("GETUSER")
        .arg(username)
        .query_async(conn)
        .await
        .map_err(server_error("ACL GETUSER"))?;
    if matches!(found, redis::Value::Nil) {
        return Ok(Found::Missing);
    }
    let holder = marked_uid(&found);
    match &holder {
        Some(uid) if *uid == marker.uid => return Ok(Found::Ours),
        None if marker.adopt_unmarked => return Ok(Found::Ours),
        // The user's marker holds only a uid; the claim names whose it is.
        Some(uid) if marker.adopt_predecessor => {
            let claim = claim_of(conn, username).await?;
            if let Some(claim) = claim
                && claim_uid(&claim) == *uid
                && marker.read(Some(&claim)) == Mark::Predecessor
            {
                return Ok(Found::Predecessor);
            }
        }
        _ => {}
    }
    Err(AclError::NotOurs {
        name: username.to_owned(),
        service: marker.service.clone(),
        holder,
    })
}

/// The server's error code and message; the client's own message for
/// anything else. Commands only ever carry password hashes, so the server
/// cannot echo a password back.
pub fn describe(error: &RedisError) -> String {
    match (error.code(), error.detail()) {
        (Some(code), Some(detail)) => format!("{code} {detail}"),
        _ => error.to_string(),
    }
}

/// A service's key prefix, such as `cart:`: a name of letters, digits, `_`,
/// `-` and `.`, then one `:`. With the separator only at the end, no
/// service's prefix can be the start of another's, so `~cart:*` never
/// matches a key of `cart_items:` or `cart:items:`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPrefix(String);

impl KeyPrefix {
    pub fn new(prefix: &str) -> Result<KeyPrefix, AclError> {
        let invalid = |reason| AclError::InvalidKeyPrefix {
            prefix: prefix.to_owned(),
            reason,
        };
        let Some(name) = prefix.strip_suffix(PREFIX_SEPARATOR) else {
            return Err(invalid("must end with ':'"));
        };
        if name.is_empty() {
            return Err(invalid("must have a name before the ':'"));
        }
        if prefix.len() > MAX_NAME_BYTES {
            return Err(invalid("longer than 128 bytes"));
        }
        if !name.chars().all(is_name_char) {
            return Err(invalid(
                "only letters, digits, '_', '-' and '.' may precede the final ':' \
                 (no glob characters, spaces or other separators)",
            ));
        }
        Ok(KeyPrefix(prefix.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')
}

/// Usernames become words of the ACL file, so they are limited to letters,
/// digits, `_`, `-`, `.` and `@`.
pub fn validate_username(name: &str) -> Result<(), AclError> {
    let invalid = |reason| AclError::InvalidUsername {
        name: name.to_owned(),
        reason,
    };
    if name.is_empty() {
        return Err(invalid("must not be empty"));
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(invalid("longer than 128 bytes"));
    }
    if !name.chars().all(|c| is_name_char(c) || c == '@') {
        return Err(invalid(
            "only letters, digits, '_', '-', '.' and '@' are allowed",
        ));
    }
    Ok(())
}

/// Any non-empty password: only its hash is ever written anywhere.
pub fn validate_password(password: &str) -> Result<(), AclError> {
    if password.is_empty() {
        return Err(AclError::InvalidPassword {
            reason: "must not be empty",
        });
    }
    Ok(())
}

/// The lowercase hex SHA-256 of a password, as Redis's `#<hash>` rule wants it.
pub fn password_hash(password: &str) -> String {
    Sha256::digest(password.as_bytes())
        .iter()
        .fold(String::with_capacity(64), |mut hex, byte| {
            let _ = write!(hex, "{byte:02x}");
            hex
        })
}

/// A service user's permissions (everything but its password): its keys
/// and channels, every command except the denied categories, the read-only
/// server commands clients need, and scripting if allowed.
pub fn service_user_rules(prefix: &KeyPrefix, scripting: Scripting) -> Vec<String> {
    let mut rules = vec![
        format!("~{}*", prefix.as_str()),
        format!("&{}*", prefix.as_str()),
        "+@all".to_owned(),
    ];
    rules.extend(
        DENIED_CATEGORIES
            .iter()
            .map(|category| format!("-@{category}")),
    );
    rules.extend(
        READ_ONLY_SERVER_COMMANDS
            .iter()
            .map(|command| format!("+{command}")),
    );
    rules.push(
        match scripting {
            Scripting::Refused => "-@scripting",
            Scripting::Allowed => "-script|debug",
        }
        .to_owned(),
    );
    rules
}

/// Added to a service user's rules while a backup is restored into its prefix.
pub const RESTORE_RULE: &str = "+restore";

/// The administrator's permissions: every key, channel and command.
pub fn admin_rules() -> Vec<String> {
    ["~*", "&*", "+@all"].map(str::to_owned).to_vec()
}

/// A user and its complete ACL: one line of an ACL file, or the arguments
/// of one `ACL SETUSER`. Every ACL starts with `reset`, so applying it
/// replaces whatever the user had (extra passwords, keys, selectors, `nopass`)
/// rather than adding to it.
#[derive(Clone, PartialEq, Eq)]
pub struct AclUser {
    name: String,
    rules: Vec<String>,
}

impl std::fmt::Debug for AclUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AclUser")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl AclUser {
    /// `default` switched off, with no password, key, channel or command.
    pub fn disabled_default() -> AclUser {
        AclUser {
            name: DEFAULT_USER.to_owned(),
            rules: vec!["reset".to_owned()],
        }
    }

    pub fn admin(name: &str, password: &str) -> Result<AclUser, AclError> {
        AclUser::admin_one(name, password)
    }

    pub fn service(
        name: &str,
        password: &str,
        prefix: &KeyPrefix,
        scripting: Scripting,
    ) -> Result<AclUser, AclError> {
        AclUser::enabled(name, &[password], service_user_rules(prefix, scripting))
    }

    /// A service user that accepts each of `passwords` (a rotation's grace
    /// period: the new password and the one it replaces).
    pub fn service_with_passwords(
        name: &str,
        passwords: &[&str],
        prefix: &KeyPrefix,
        scripting: Scripting,
    ) -> Result<AclUser, AclError> {
        AclUser::enabled(name, passwords, service_user_rules(prefix, scripting))
    }

    /// A user with one password and exactly `permissions` (see
    /// `engine::monitoring` for the exporter's).
    pub fn with_rules(
        name: &str,
        password: &str,
        permissions: Vec<String>,
    ) -> Result<AclUser, AclError> {
        AclUser::enabled(name, &[password], permissions)
    }

    fn admin_one(name: &str, password: &str) -> Result<AclUser, AclError> {
        AclUser::enabled(name, &[password], admin_rules())
    }

    fn enabled(
        name: &str,
        passwords: &[&str],
        permissions: Vec<String>,
    ) -> Result<AclUser, AclError> {
        validate_username(name)?;
        if name == DEFAULT_USER {
            return Err(AclError::ReservedUser {
                name: name.to_owned(),
                reason: "the default user stays switched off",
            });
        }
        if passwords.is_empty() {
            return Err(AclError::InvalidPassword {
                reason: "a user needs at least one password",
            });
        }
        let mut rules = vec!["reset".to_owned(), "on".to_owned()];
        for password in passwords {
            validate_password(password)?;
            rules.push(format!("#{}", password_hash(password)));
        }
        rules.extend(permissions);
        Ok(AclUser {
            name: name.to_owned(),
            rules,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn rules(&self) -> &[String] {
        &self.rules
    }

    /// `ACL SETUSER` with this user's complete ACL (atomic: on a bad rule
    /// Redis changes nothing).
    pub async fn apply(&self, conn: &mut impl ConnectionLike) -> Result<(), AclError> {
        redis::cmd("ACL")
            .arg("SETUSER")
            .arg(&self.name)
            .arg(&self.rules)
            .query_async::<()>(conn)
            .await
            .map_err(server_error("ACL SETUSER"))
    }
}

/// An ACL file (`aclfile` in redis.conf) holding exactly these users. Redis
/// allows no comments in it; `ACL SAVE` rewrites it in its own words.
pub fn render_acl_file(users: &[AclUser]) -> Result<String, AclError> {
    let mut text = String::new();
    for (index, user) in users.iter().enumerate() {
        if users[..index].iter().any(|other| other.name == user.name) {
            return Err(AclError::DuplicateUser {
                name: user.name.clone(),
            });
        }
        text.push_str("user ");
        text.push_str(&user.name);
        for rule in &user.rules {
            text.push(' ');
            text.push_str(rule);
        }
        text.push('\n');
    }
    Ok(text)
}

/// Creates or updates a service user so that it has exactly this password
/// and the permissions of [`service_user_rules`]. Refuses `default` and the
/// user `conn` is logged in as (it would lock the caller out).
pub async fn ensure_user(
    conn: &mut impl ConnectionLike,
    username: &str,
    password: &str,
    prefix: &str,
) -> Result<(), AclError> {
    let logins = Logins::single(Login::new(username, password));
    ensure_user_logins(conn, username, &logins, prefix, false, None).await
}

/// Like [`ensure_user`], with every password the service's logins list
/// (one user; a rotation adds a password, its grace period's end removes one)
/// and, while `restoring`, RESTORE on its own keys.
///
/// With a `marker` (shared servers) the user carries it ([`owner_rule`]),
/// and an existing user without it is refused unchanged
/// ([`AclError::NotOurs`]). Users made here never get scripting: this is
/// the shared servers' path.
pub async fn ensure_user_logins(
    conn: &mut impl ConnectionLike,
    username: &str,
    logins: &Logins,
    prefix: &str,
    restoring: bool,
    marker: Option<&Marker>,
) -> Result<(), AclError> {
    let prefix = KeyPrefix::new(prefix)?;
    let mut user = AclUser::service_with_passwords(
        username,
        &logins.passwords_of(username),
        &prefix,
        Scripting::Refused,
    )?;
    if restoring {
        user.rules.push(RESTORE_RULE.to_owned());
    }
    refuse_own_user(conn, username).await?;
    if let Some(marker) = marker {
        match check_user(conn, username, marker).await? {
            Found::Missing => claim(conn, username, marker).await?,
            Found::Predecessor => take_over_claim(conn, username, marker).await?,
            Found::Ours => {}
        }
        // `reset` first: a predecessor's marker goes, this one's is set.
        user.rules.push(owner_rule(&marker.uid));
    }
    user.apply(conn).await
}

/// The key that records which ServiceDatabase holds a username.
pub fn claim_key(username: &str) -> String {
    format!("servicedb-claim:{username}")
}

/// Claims `username` for the service, once (`SET … NX`): a name another
/// service claimed first is refused, naming its uid.
async fn claim(
    conn: &mut impl ConnectionLike,
    username: &str,
    marker: &Marker,
) -> Result<(), AclError> {
    let _: Option<String> = redis::cmd("SET")
        .arg(claim_key(username))
        .arg(marker.text())
        .arg("NX")
        .query_async(conn)
        .await
        .map_err(server_error("SET claim"))?;
    match claim_of(conn, username).await? {
        Some(claim) if claim_uid(&claim) == marker.uid => Ok(()),
        holder => Err(AclError::NotOurs {
            name: username.to_owned(),
            service: marker.service.clone(),
            holder: holder.map(|claim| claim_uid(&claim)),
        }),
    }
}

/// Whether the user `username` was made for an earlier ServiceDatabase of
/// the same namespace and name (and is not yet taken over): its keys were
/// kept, not made new.
pub async fn left_by_predecessor(
    conn: &mut impl ConnectionLike,
    username: &str,
    marker: &Marker,
) -> Result<bool, AclError> {
    match check_user(conn, username, marker).await {
        Ok(found) => Ok(found == Found::Predecessor),
        // Refused by the provisioning that follows, naming the holder.
        Err(AclError::NotOurs { .. }) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Passes a predecessor's claim on `username` to the service. Only one
/// ServiceDatabase of a namespace and name exists at a time, so nobody
/// else can be taking it over.
async fn take_over_claim(
    conn: &mut impl ConnectionLike,
    username: &str,
    marker: &Marker,
) -> Result<(), AclError> {
    tracing::info!(user = %username, service = %marker.service, "taking over the ACL user an earlier ServiceDatabase of this namespace and name left");
    redis::cmd("SET")
        .arg(claim_key(username))
        .arg(marker.text())
        .arg("XX")
        .query_async::<Option<String>>(conn)
        .await
        .map(drop)
        .map_err(server_error("SET claim"))
}

/// The claim on `username`, as stored.
async fn claim_of(
    conn: &mut impl ConnectionLike,
    username: &str,
) -> Result<Option<String>, AclError> {
    redis::cmd("GET")
        .arg(claim_key(username))
        .query_async(conn)
        .await
        .map_err(server_error("GET claim"))
}

/// The uid a claim names: a marker's, or the bare uid of older claims.
fn claim_uid(claim: &str) -> String {
    crate::engine::logins::marked_uid(claim).unwrap_or_else(|| claim.to_owned())
}

/// Deletes the service's user if it is the service's (marked for it); a
/// user of that name made by anyone else stays as it is. `Ok(true)` when
/// the name is free of it now (deleted, or there was none), so the keys
/// under the service's prefix are its own to delete.
pub async fn remove_marked_user(
    conn: &mut impl ConnectionLike,
    username: &str,
    marker: &Marker,
) -> Result<bool, AclError> {
    validate_username(username)?;
    let key = claim_key(username);
    let holder = claim_of(conn, username)
        .await?
        .map(|claim| claim_uid(&claim));
    let released = match check_user(conn, username, marker).await {
        Ok(Found::Ours | Found::Predecessor) => remove_user(conn, username).await.map(|_| true),
        // No user: the name is ours to clean up unless another claimed it.
        Ok(Found::Missing) => Ok(holder.as_ref().is_none_or(|uid| *uid == marker.uid)),
        Err(AclError::NotOurs { holder, .. }) => {
            tracing::info!(user = %username, holder = ?holder, "ACL user not servicedb's for this service; left as it is");
            Ok(false)
        }
        Err(e) => Err(e),
    }?;
    if released {
        // Our claim goes with our user; another's stays.
        if holder.as_deref() == Some(marker.uid.as_str()) {
            redis::cmd("DEL")
                .arg(&key)
                .query_async::<()>(conn)
                .await
                .map_err(server_error("DEL claim"))?;
        }
    }
    Ok(released)
}

/// Sets the administrator's password and full permissions.
pub async fn ensure_admin(
    conn: &mut impl ConnectionLike,
    username: &str,
    password: &str,
) -> Result<(), AclError> {
    AclUser::admin(username, password)?.apply(conn).await
}

/// Switches `default` off and takes away all it had, so that a connection
/// must authenticate before it can do anything.
pub async fn disable_default_user(conn: &mut impl ConnectionLike) -> Result<(), AclError> {
    AclUser::disabled_default().apply(conn).await
}

/// Deletes a service user; Redis disconnects its clients. `Ok(false)` if it
/// did not exist.
pub async fn remove_user(conn: &mut impl ConnectionLike, username: &str) -> Result<bool, AclError> {
    validate_username(username)?;
    if username == DEFAULT_USER {
        return Err(AclError::ReservedUser {
            name: username.to_owned(),
            reason: "the default user cannot be deleted",
        });
    }
    refuse_own_user(conn, username).await?;
    let deleted: u64 = redis::cmd("ACL")
        .arg("DELUSER")
        .arg(username)
        .query_async(conn)
        .await
        .map_err(server_error("ACL DELUSER"))?;
    Ok(deleted > 0)
}

/// `ACL SAVE`: writes the server's users to its ACL file, so that what was
/// applied live survives a restart. Fails (`no_acl_file`) on a server
/// started without `aclfile`.
pub async fn save_acl_file(conn: &mut impl ConnectionLike) -> Result<(), AclError> {
    redis::cmd("ACL")
        .arg("SAVE")
        .query_async::<()>(conn)
        .await
        .map_err(server_error("ACL SAVE"))
}

async fn refuse_own_user(conn: &mut impl ConnectionLike, username: &str) -> Result<(), AclError> {
    let current: String = redis::cmd("ACL")
        .arg("WHOAMI")
        .query_async(conn)
        .await
        .map_err(server_error("ACL WHOAMI"))?;
    if current == username {
        return Err(AclError::ReservedUser {
            name: username.to_owned(),
            reason: "it is the user this connection is logged in as",
        });
    }
    Ok(())
}

fn server_error(action: &'static str) -> impl FnOnce(RedisError) -> AclError {
    move |source| AclError::Server { action, source }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prefix(text: &str) -> KeyPrefix {
        KeyPrefix::new(text).expect("valid prefix")
    }

    #[test]
    fn the_owner_marker_is_read_back_from_getuser() {
        use redis::Value;
        let text = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        // Redis 7: channels are one string of patterns.
        let getuser = Value::Array(vec![
            text("flags"),
            Value::Array(vec![text("on")]),
            text("keys"),
            text("~cart:*"),
            text("channels"),
            text("&cart:* &servicedb-owner:3f2a-9c"),
        ]);
        assert_eq!(marked_uid(&getuser).as_deref(), Some("3f2a-9c"));
        assert_eq!(owner_rule("3f2a-9c"), "&servicedb-owner:3f2a-9c");
        let unmarked = Value::Array(vec![text("channels"), text("&theirs:*")]);
        assert_eq!(marked_uid(&unmarked), None);
    }

    #[test]
    fn hashes_are_lowercase_sha256_hex() {
        assert_eq!(
            password_hash("pw"),
            "30c952fab122c3f9759f02a6d95c3758b246b4fee239957b2d4fee46e26170c4"
        );
        assert_eq!(
            password_hash(""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn service_rules_confine_keys_and_channels_and_deny_server_controls() {
        assert_eq!(
            service_user_rules(&prefix("cart:"), Scripting::Refused),
            [
                "~cart:*",
                "&cart:*",
                "+@all",
                "-@admin",
                "-@dangerous",
                "+info",
                "-@scripting"
            ]
        );
        // Scripting adds no key or channel: scripts stay inside the prefix.
        assert_eq!(
            service_user_rules(&prefix("cart:"), Scripting::Allowed),
            [
                "~cart:*",
                "&cart:*",
                "+@all",
                "-@admin",
                "-@dangerous",
                "+info",
                "-script|debug"
            ]
        );
        assert_eq!(Scripting::default(), Scripting::Refused);
    }

    #[test]
    fn prefixes_cannot_overlap_or_glob() {
        for good in ["cart:", "cart_items:", "a:", "v1.orders-eu:"] {
            assert_eq!(prefix(good).as_str(), good);
        }
        for (bad, reason) in [
            ("", "must end with ':'"),
            ("cart", "must end with ':'"),
            (":", "must have a name before the ':'"),
            ("cart:items:", "only letters"),
            ("c*:", "only letters"),
            ("c?:", "only letters"),
            ("c[a]:", "only letters"),
            ("c\\:", "only letters"),
            ("c d:", "only letters"),
            ("c\n:", "only letters"),
            ("c\":", "only letters"),
            ("ü:", "only letters"),
        ] {
            match KeyPrefix::new(bad) {
                Err(AclError::InvalidKeyPrefix { reason: got, .. }) => {
                    assert!(got.starts_with(reason), "{bad:?}: {got}");
                }
                other => panic!("{bad:?} accepted: {other:?}"),
            }
        }
        let long = format!("{}:", "a".repeat(MAX_NAME_BYTES));
        assert_eq!(
            KeyPrefix::new(&long).map_err(|e| e.category()).err(),
            Some("invalid_key_prefix")
        );
    }

    #[test]
    fn usernames_are_single_acl_words() {
        for good in ["admin", "cart_items", "svc-1.eu", "a@b"] {
            assert!(validate_username(good).is_ok(), "{good}");
        }
        for bad in ["", "a b", "a\nuser evil on nopass", "\"a\"", "a:b", "a*"] {
            assert_eq!(
                validate_username(bad).map_err(|e| e.category()),
                Err("invalid_username"),
                "{bad:?}"
            );
        }
        assert!(validate_username(&"a".repeat(MAX_NAME_BYTES + 1)).is_err());
    }

    #[test]
    fn users_reset_then_carry_only_a_hash() {
        let service = AclUser::service("cart", "s3cret pw", &prefix("cart:"), Scripting::Refused)
            .expect("user");
        assert_eq!(service.name(), "cart");
        assert_eq!(
            &service.rules()[..3],
            ["reset", "on", &format!("#{}", password_hash("s3cret pw"))]
        );
        assert_eq!(
            &service.rules()[3..],
            service_user_rules(&prefix("cart:"), Scripting::Refused)
        );
        let admin = AclUser::admin("admin", "adm").expect("admin");
        assert_eq!(&admin.rules()[3..], ["~*", "&*", "+@all"]);
        assert_eq!(AclUser::disabled_default().rules(), ["reset"]);

        let refused = AclUser::service("default", "pw", &prefix("cart:"), Scripting::Allowed)
            .expect_err("default");
        assert_eq!(refused.category(), "reserved_user");
        let refused = AclUser::admin("admin", "").expect_err("empty password");
        assert_eq!(refused.category(), "invalid_password");
        assert!(refused.is_invalid_input());
    }

    #[test]
    fn acl_file_lists_each_user_once_without_cleartext() {
        let users = [
            AclUser::disabled_default(),
            AclUser::admin("admin", "admin-secret").expect("admin"),
            AclUser::service("cart", "cart-secret", &prefix("cart:"), Scripting::Refused)
                .expect("service"),
        ];
        let file = render_acl_file(&users).expect("rendered");
        let lines: Vec<&str> = file.lines().collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0], "user default reset");
        assert_eq!(
            lines[1],
            format!(
                "user admin reset on #{} ~* &* +@all",
                password_hash("admin-secret")
            )
        );
        assert_eq!(
            lines[2],
            format!(
                "user cart reset on #{} ~cart:* &cart:* +@all -@admin -@dangerous +info -@scripting",
                password_hash("cart-secret")
            )
        );
        assert!(file.ends_with('\n'));
        assert!(!file.contains("secret"), "{file}");
        assert!(!file.contains('>'), "no cleartext password rule");

        let twice = [users[1].clone(), users[1].clone()];
        assert_eq!(
            render_acl_file(&twice).map_err(|e| e.category()),
            Err("duplicate_user")
        );
        assert_eq!(render_acl_file(&[]).expect("empty"), "");
    }

    #[test]
    fn debug_hides_hashes() {
        let user = AclUser::admin("admin", "pw").expect("admin");
        let shown = format!("{user:?}");
        assert!(shown.contains("admin"));
        assert!(!shown.contains(&password_hash("pw")));
    }
}
