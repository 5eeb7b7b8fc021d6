//! Claims: the marker that makes an ACL user this ServiceDatabase's, a
//! predecessor's, or someone else's (never touched).

use super::*;

/// The uid a user's marker names, from the words of `ACL GETUSER`.
pub(super) fn marked_uid(getuser: &redis::Value) -> Option<String> {
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
pub(super) enum Found {
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
pub(super) async fn check_user(
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

/// The key that records which ServiceDatabase holds a username.
pub fn claim_key(username: &str) -> String {
    format!("servicedb-claim:{username}")
}

/// Claims `username` for the service, once (`SET … NX`): a name another
/// service claimed first is refused, naming its uid.
pub(super) async fn claim(
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
pub(super) async fn take_over_claim(
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
pub(super) async fn claim_of(
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
pub(super) fn claim_uid(claim: &str) -> String {
    crate::engine::logins::marked_uid(claim).unwrap_or_else(|| claim.to_owned())
}
