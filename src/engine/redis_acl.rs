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

mod claims;
mod naming;
mod rules;
mod users;
pub use claims::*;
pub use naming::*;
pub use rules::*;
pub use users::*;

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

/// The server's error code and message; the client's own message for
/// anything else. Commands only ever carry password hashes, so the server
/// cannot echo a password back.
pub fn describe(error: &RedisError) -> String {
    match (error.code(), error.detail()) {
        (Some(code), Some(detail)) => format!("{code} {detail}"),
        _ => error.to_string(),
    }
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
