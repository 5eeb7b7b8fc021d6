//! The logins of one service and how they rotate without an outage.
//!
//! A service has two login identities: its owner name (`shop_orders`) and a
//! twin (`shop_orders_b`). On Postgres the twin is a member of the owner role
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

/// The twin identity of a service whose owner login is `owner`.
pub fn twin(owner: &str) -> String {
    format!("{owner}_b")
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
        assert_eq!(twin("shop_orders"), "shop_orders_b");
        assert_eq!(
            other_identity("shop_orders", "shop_orders", false),
            "shop_orders_b"
        );
        assert_eq!(
            other_identity("shop_orders", "shop_orders_b", false),
            "shop_orders"
        );
        assert_eq!(other_identity("shop_cart", "shop_cart", true), "shop_cart");
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
