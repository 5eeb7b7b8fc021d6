//! What a user on the server is, compared with what it should be: the
//! change to make, if any (the password checked client side).

use super::*;

/// What an `updateUser` has to set.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Change {
    /// The password (and with it the mechanisms).
    pub password: bool,
    pub roles: bool,
}

/// What [`plan`] decided and [`ensure_user`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Planned {
    Created,
    Updated(Change),
    Unchanged,
}

/// A user as `usersInfo` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedUser {
    pub roles: Vec<Role>,
    pub mechanisms: Vec<String>,
    pub(super) scram_sha_256: Option<StoredKey>,
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
pub fn plan(desired: &UserSpec, observed: Option<&ObservedUser>) -> Planned {
    let Some(observed) = observed else {
        return Planned::Created;
    };
    let mechanisms_right = observed.mechanisms == [SCRAM_SHA_256];
    let change = Change {
        password: !mechanisms_right || observed.password_matches(&desired.password) != Some(true),
        roles: sorted(&observed.roles) != sorted(&desired.roles),
    };
    if change == Change::default() {
        Planned::Unchanged
    } else {
        Planned::Updated(change)
    }
}

pub(super) fn sorted(roles: &[Role]) -> Vec<&Role> {
    let mut roles: Vec<&Role> = roles.iter().collect();
    roles.sort();
    roles.dedup();
    roles
}
