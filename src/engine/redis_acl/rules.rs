//! ACL rules: the service user's (its key prefix, denied categories, the
//! read-only server commands clients need), the administrator's, and the
//! ACL file they are written to.

use super::*;

/// The channel pattern that marks a user as made for the ServiceDatabase
/// with this uid.
pub fn owner_rule(uid: &str) -> String {
    format!("&{OWNER_CHANNEL}{uid}")
}

pub(super) const OWNER_CHANNEL: &str = "servicedb-owner:";

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
    pub(super) name: String,
    pub(super) rules: Vec<String>,
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
