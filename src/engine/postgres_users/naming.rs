//! Names and quoting: what PostgreSQL accepts as a role or database name,
//! identifiers and literals quoted so that no name can inject SQL.

use super::*;

/// Role and database names longer than this are truncated by PostgreSQL
/// (NAMEDATALEN - 1); we reject them instead of letting two names collide.
pub const MAX_NAME_BYTES: usize = 63;

/// Quotes an SQL identifier: always double-quoted, embedded quotes doubled.
/// Always quoting keeps the name's case and makes keywords harmless.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Quotes an SQL string literal (standard_conforming_strings is on in every
/// supported PostgreSQL; a backslash switches to the `E''` form anyway).
pub(super) fn quote_literal(value: &str) -> String {
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

pub(super) fn validate_name(kind: NameKind, name: &str) -> Result<(), UserError> {
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

/// The scratch database a shared server's service verifies its backups in:
/// `<role>-verify`. Service roles on shared servers never hold a `-`, so no
/// service's own database can have this name; a role too long for the
/// suffix keeps a readable start and a hash of the whole.
pub fn scratch_name(role: &str) -> String {
    const SUFFIX: &str = "-verify";
    let role = crate::engine::fit_name(role, MAX_NAME_BYTES - SUFFIX.len());
    format!("{role}{SUFFIX}")
}
