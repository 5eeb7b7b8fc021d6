//! The logins of one service and how they rotate without an outage.
//!
//! A service has two login identities: its owner name (`shop_orders`) and a
//! twin (`shop_orders-b`). On Postgres the twin is a member of the owner role
//! whose sessions run as the owner, so objects stay owned by one role; on
//! MongoDB both are users with `readWrite` on the service's database. Redis
//! has the equivalent built in: one ACL user may hold several passwords, so
//! both "identities" are the same user with two passwords.
//!
//! A rotation moves through the credentials Secret in three steps, each one
//! applied by whoever owns the server (the operator on a shared server, the
//! instance manager on a dedicated one) before the next is published:
//!
//! 1. `next-username`/`next-password` appear beside the current login: the
//!    new login is made; the application still uses the current one;
//! 2. once the new login works, it becomes `username`/`password` and the old
//!    one moves to `previous-username`/`previous-password`: both work for
//!    the grace period, so pods that have not re-read the Secret carry on;
//! 3. after the grace period the previous keys disappear and that login is
//!    disabled (Postgres `NOLOGIN`, Redis password removed, MongoDB user
//!    dropped); sessions already open are not cut.

/// One username and its password.
#[derive(Clone, PartialEq, Eq)]
pub struct Login {
    pub username: String,
    pub password: String,
}

impl Login {
    pub fn new(username: impl Into<String>, password: impl Into<String>) -> Login {
        Login {
            username: username.into(),
            password: password.into(),
        }
    }
}

impl std::fmt::Debug for Login {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Login")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// The logins that must work right now, as the credentials Secret lists them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Logins {
    /// What the application uses (`username`/`password`).
    pub current: Login,
    /// Made ahead of a switch (`next-username`/`next-password`).
    pub next: Option<Login>,
    /// Still accepted during the grace period (`previous-…`).
    pub previous: Option<Login>,
}

impl Logins {
    /// Just one login, no rotation under way.
    pub fn single(current: Login) -> Logins {
        Logins {
            current,
            next: None,
            previous: None,
        }
    }

    /// Every login that must work, current first.
    pub fn all(&self) -> impl Iterator<Item = &Login> {
        std::iter::once(&self.current)
            .chain(self.next.as_ref())
            .chain(self.previous.as_ref())
    }

    /// The password that must work for `username`, if that identity is in use.
    /// When several logins share the username (Redis), the current one wins.
    pub fn password_of(&self, username: &str) -> Option<&str> {
        self.all()
            .find(|login| login.username == username)
            .map(|login| login.password.as_str())
    }

    /// Every password that must work for `username`, current first, no repeats.
    pub fn passwords_of<'a>(&'a self, username: &'a str) -> Vec<&'a str> {
        let mut passwords: Vec<&str> = Vec::new();
        for login in self.all().filter(|login| login.username == username) {
            if !passwords.contains(&login.password.as_str()) {
                passwords.push(&login.password);
            }
        }
        passwords
    }
}

/// The twin identity of a service whose owner login is `owner`. On a shared
/// server owner logins are made of `[a-z0-9_]` only (see
/// `validate::shared_identifier`), so a twin, with its `-`, can never be
/// another service's owner login, and two owners never share a twin.
pub fn twin(owner: &str) -> String {
    format!("{owner}-b")
}

/// The twin name servicedb used before twins had a `-`: `shop_orders_b`,
/// which is also the owner login of `shop/orders-b` and `shop-orders/b`.
/// A Secret made then may still name it; it keeps working until the next
/// rotation switches back to the owner, and is never made anew.
pub fn legacy_twin(owner: &str) -> String {
    format!("{owner}_b")
}

/// The twin the service's logins use: the one the Secret names besides the
/// owner (a [`legacy_twin`] until rotated away), else [`twin`].
pub fn twin_in_use(owner: &str, logins: &Logins) -> String {
    logins
        .all()
        .map(|login| login.username.as_str())
        .find(|username| *username != owner)
        .map_or_else(|| twin(owner), str::to_string)
}

/// Who servicedb made a server object for: the ServiceDatabase's UID (what
/// is compared), its `namespace/name` and its server's (for people). Every
/// role, database, schema and ACL user servicedb makes on a shared server
/// carries it (PostgreSQL `COMMENT ON`, a Redis ACL key pattern); an object
/// of one of the service's names without it, or with another UID, is never
/// adopted, changed or dropped, with one exception: what servicedb made for
/// an earlier ServiceDatabase of the same namespace and name
/// ([`Mark::Predecessor`]), which a GitOps re-apply after a deletion with
/// `deletionPolicy: Retain` takes over.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Marker {
    pub uid: String,
    /// `namespace/name` of the ServiceDatabase.
    pub service: String,
    /// `namespace/name` of the DatabaseServer.
    pub server: String,
    /// The ServiceDatabase was given its logins before servicedb marked what
    /// it made: its unmarked objects are its own (they are marked now).
    pub adopt_unmarked: bool,
    /// What servicedb made for an earlier ServiceDatabase of the same
    /// `namespace/name` is this one's to take over ([`Mark::Predecessor`]).
    /// Two objects of one namespace and name never exist at once, so the
    /// earlier one is gone and left its data behind (`deletionPolicy:
    /// Retain`). Set when provisioning; never when dropping, so deleting a
    /// ServiceDatabase that never took its predecessor's data over leaves
    /// that data as it is.
    pub adopt_predecessor: bool,
}

/// What a marker read back from the server says about an object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mark {
    /// Made by servicedb for this ServiceDatabase.
    Ours,
    /// No servicedb marker.
    Unmarked,
    /// Made by servicedb for another ServiceDatabase (`namespace/name`).
    Foreign(String),
    /// Made by servicedb for an earlier ServiceDatabase of this one's
    /// namespace and name (only with [`Marker::adopt_predecessor`]): this
    /// one's own, to be marked anew.
    Predecessor,
}

/// The prefix of the marker text, what the parser looks for.
const MARKER_PREFIX: &str = "servicedb:";

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct MarkerText {
    uid: String,
    #[serde(default)]
    service_database: String,
    #[serde(default)]
    server: String,
}

impl Marker {
    /// The marker as text: `servicedb:{"uid":…,"serviceDatabase":…,"server":…}`.
    pub fn text(&self) -> String {
        let text = MarkerText {
            uid: self.uid.clone(),
            service_database: self.service.clone(),
            server: self.server.clone(),
        };
        // Serializing three strings cannot fail.
        let json = serde_json::to_string(&text).unwrap_or_default();
        format!("{MARKER_PREFIX}{json}")
    }

    /// What the text found on an object (its comment) says.
    pub fn read(&self, found: Option<&str>) -> Mark {
        let parsed = found
            .and_then(|text| text.trim().strip_prefix(MARKER_PREFIX))
            .and_then(|json| serde_json::from_str::<MarkerText>(json).ok());
        match parsed {
            None => Mark::Unmarked,
            Some(text) if text.uid == self.uid => Mark::Ours,
            Some(text) if self.adopt_predecessor && text.service_database == self.service => {
                Mark::Predecessor
            }
            Some(text) if text.service_database.is_empty() => {
                Mark::Foreign(format!("uid {}", text.uid))
            }
            Some(text) => Mark::Foreign(text.service_database),
        }
    }
}

/// The uid a marker text names (`None` for any other text).
pub fn marked_uid(text: &str) -> Option<String> {
    let json = text.trim().strip_prefix(MARKER_PREFIX)?;
    serde_json::from_str::<MarkerText>(json)
        .ok()
        .map(|text| text.uid)
}

/// The identity a rotation switches to: the other one of the pair (an
/// engine whose user holds several passwords keeps the same name).
pub fn other_identity(owner: &str, current: &str, same_user: bool) -> String {
    if same_user || current != owner {
        owner.to_string()
    } else {
        twin(owner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_alternate() {
        assert_eq!(twin("shop_orders"), "shop_orders-b");
        assert_eq!(
            other_identity("shop_orders", "shop_orders", false),
            "shop_orders-b"
        );
        assert_eq!(
            other_identity("shop_orders", "shop_orders-b", false),
            "shop_orders"
        );
        // A Secret still on a twin of the old name switches back to the owner.
        assert_eq!(
            other_identity("shop_orders", "shop_orders_b", false),
            "shop_orders"
        );
        assert_eq!(other_identity("shop_cart", "shop_cart", true), "shop_cart");
    }

    #[test]
    fn a_twin_never_meets_an_owner_login() {
        // `shop/orders-b` and `shop-orders/b` have the owner login
        // `shop_orders_b`: no longer `shop/orders`'s twin.
        let victim = "shop_orders";
        let newcomer = "shop_orders_b";
        assert_ne!(twin(victim), newcomer);
        assert_eq!(legacy_twin(victim), newcomer);
        // Owner logins hold no '-'; every twin does.
        assert!(twin(newcomer).contains('-') && !newcomer.contains('-'));
    }

    #[test]
    fn long_names_keep_owner_twin_and_scratch_spaces_apart() {
        use crate::engine::postgres_users::{MAX_NAME_BYTES, scratch_name};
        use crate::model::naming::shared_identifier;
        let namespace = "n".repeat(63);
        for name in ["o".repeat(40), format!("{}-b", "o".repeat(38))] {
            let owner = shared_identifier(&namespace, &name);
            assert!(!owner.contains('-'), "{owner}");
            let twin = twin(&owner);
            assert!(
                twin.len() <= MAX_NAME_BYTES && twin.ends_with("-b"),
                "{twin}"
            );
            let scratch = scratch_name(&owner);
            assert!(scratch.len() <= MAX_NAME_BYTES && scratch.ends_with("-verify"));
        }
    }

    #[test]
    fn the_twin_in_use_is_the_one_the_secret_names() {
        let owner = "shop_orders";
        let only = Logins::single(Login::new(owner, "p"));
        assert_eq!(twin_in_use(owner, &only), "shop_orders-b");
        let legacy = Logins {
            current: Login::new("shop_orders_b", "p1"),
            next: None,
            previous: Some(Login::new(owner, "p0")),
        };
        assert_eq!(twin_in_use(owner, &legacy), "shop_orders_b");
    }

    #[test]
    fn markers_are_read_back() {
        let marker = Marker {
            uid: "3f2a".into(),
            service: "shop/orders".into(),
            server: "infra/pg".into(),
            adopt_unmarked: false,
            adopt_predecessor: false,
        };
        let text = marker.text();
        assert!(
            text.starts_with("servicedb:{") && text.contains("shop/orders"),
            "{text}"
        );
        assert_eq!(marker.read(Some(&text)), Mark::Ours);
        assert_eq!(marker.read(None), Mark::Unmarked);
        assert_eq!(marker.read(Some("made by the DBA")), Mark::Unmarked);
        assert_eq!(marker.read(Some("servicedb:not json")), Mark::Unmarked);
        let other = Marker {
            uid: "9b1c".into(),
            service: "shop/orders-b".into(),
            ..marker.clone()
        };
        assert_eq!(
            marker.read(Some(&other.text())),
            Mark::Foreign("shop/orders-b".into())
        );
    }

    #[test]
    fn only_an_earlier_one_of_the_same_namespace_and_name_is_a_predecessor() {
        let earlier = Marker {
            uid: "3f2a".into(),
            service: "shop/orders".into(),
            server: "infra/pg".into(),
            adopt_unmarked: false,
            adopt_predecessor: false,
        };
        let now = Marker {
            uid: "77e0".into(),
            adopt_predecessor: true,
            ..earlier.clone()
        };
        assert_eq!(now.read(Some(&earlier.text())), Mark::Predecessor);
        // Dropping never takes over what it did not make.
        let dropping = Marker {
            adopt_predecessor: false,
            ..now.clone()
        };
        assert_eq!(
            dropping.read(Some(&earlier.text())),
            Mark::Foreign("shop/orders".into())
        );
        // `shop-orders/x` is another ServiceDatabase, whatever its names.
        let neighbour = Marker {
            service: "shop/orders-x".into(),
            ..earlier.clone()
        };
        assert_eq!(
            now.read(Some(&neighbour.text())),
            Mark::Foreign("shop/orders-x".into())
        );
        // A marker without a namespace and name is never a predecessor.
        let bare = r#"servicedb:{"uid":"3f2a"}"#;
        assert_eq!(now.read(Some(bare)), Mark::Foreign("uid 3f2a".into()));
    }

    #[test]
    fn passwords_by_identity() {
        let logins = Logins {
            current: Login::new("a", "p1"),
            next: None,
            previous: Some(Login::new("a", "p0")),
        };
        assert_eq!(logins.passwords_of("a"), vec!["p1", "p0"]);
        assert_eq!(logins.password_of("a"), Some("p1"));
        assert_eq!(logins.password_of("a_b"), None);
        let shown = format!("{logins:?}");
        assert!(!shown.contains("p1") && !shown.contains("p0"), "{shown}");
    }
}
