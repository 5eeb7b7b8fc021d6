//! Key prefixes, usernames and passwords: what is accepted, and the
//! SHA-256 form a password is stored in.

use super::*;

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

pub(super) fn is_name_char(c: char) -> bool {
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
