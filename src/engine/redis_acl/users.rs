//! ACL users: made, changed or removed only when they are ours; the
//! default user disabled; the ACL saved to its file.

use super::*;

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

pub(super) async fn refuse_own_user(
    conn: &mut impl ConnectionLike,
    username: &str,
) -> Result<(), AclError> {
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
