//! Which database names, usernames and passwords are accepted.

use super::*;

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
