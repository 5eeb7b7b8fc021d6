//! Markers: whether a role, database or schema of the service's names is
//! this ServiceDatabase's, a predecessor's, or someone else's (never
//! touched), and marking what servicedb made.

use super::*;

/// What servicedb found under one of the service's names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Found {
    Missing,
    /// The service's own: marked for it, or one it may adopt and mark.
    Ours {
        marked: bool,
    },
}

impl Found {
    pub(super) fn is_ours(self) -> bool {
        matches!(self, Found::Ours { .. })
    }
}

/// For deletion: someone else's object counts as missing.
pub(super) fn ours(found: Result<Found, UserError>) -> Result<Found, UserError> {
    match found {
        Err(UserError::NotOurs { object, holder, .. }) => {
            tracing::info!(%object, holder = ?holder, "not servicedb's for this service; left as it is");
            Ok(Found::Missing)
        }
        other => other,
    }
}

/// Whether the service's owner role `role` was made for an earlier
/// ServiceDatabase of the same namespace and name (and is not yet taken
/// over): what it holds was kept, not made new.
pub async fn left_by_predecessor(
    client: &Client,
    role: &str,
    marker: &Marker,
) -> Result<bool, UserError> {
    let comment = role_comment(client, role).await?.flatten();
    Ok(marker.read(comment.as_deref()) == Mark::Predecessor)
}

/// Whether `role` exists and is this service's (marked for it, or a legacy
/// one it may adopt): what may be switched off for it. A foreign or
/// unmarked role is not an error here: it is simply not the service's.
pub async fn role_is_ours(client: &Client, marker: &Marker, role: &str) -> Result<bool, UserError> {
    match check_role(client, marker, role).await {
        Ok(found) => Ok(matches!(found, Found::Ours { .. })),
        Err(UserError::NotOurs { .. }) => Ok(false),
        Err(e) => Err(e),
    }
}

pub(super) fn not_ours(kind: &str, name: &str, marker: &Marker, mark: Mark) -> UserError {
    UserError::NotOurs {
        object: format!("{kind} {name}"),
        service: marker.service.clone(),
        holder: match mark {
            Mark::Foreign(holder) => Some(holder),
            Mark::Ours | Mark::Unmarked | Mark::Predecessor => None,
        },
    }
}

/// A role is the service's when it carries its marker, or (a service given
/// its logins before markers existed) carries none.
pub(super) async fn check_role(
    client: &Client,
    marker: &Marker,
    role: &str,
) -> Result<Found, UserError> {
    let Some(comment) = role_comment(client, role).await? else {
        return Ok(Found::Missing);
    };
    match marker.read(comment.as_deref()) {
        Mark::Ours => Ok(Found::Ours { marked: true }),
        // Marked anew by the caller: this ServiceDatabase's from now on.
        Mark::Predecessor => Ok(Found::Ours { marked: false }),
        Mark::Unmarked if marker.adopt_unmarked => Ok(Found::Ours { marked: false }),
        mark => Err(not_ours("role", role, marker, mark)),
    }
}

/// A database is the service's when it carries its marker, or carries none
/// and is owned by the service's own role (`owner`, found as `owner_found`):
/// only that role, or servicedb between CREATE DATABASE and its comment,
/// could have made it so.
pub(super) async fn check_database(
    client: &Client,
    marker: &Marker,
    database: &str,
    owner: &str,
    owner_found: Found,
) -> Result<Found, UserError> {
    const QUERY: &str = "SELECT shobj_description(oid, 'pg_database'), pg_get_userbyid(datdba)::text \
                         FROM pg_database WHERE datname = $1";
    let object = Object {
        kind: "database",
        query: QUERY,
        look_up: "look up database",
        read: "read database",
    };
    check_owned(client, marker, &object, database, owner, owner_found).await
}

/// [`check_database`] for the service's schema in the shared database.
pub(super) async fn check_schema(
    shared: &Client,
    marker: &Marker,
    owner: &str,
    owner_found: Found,
) -> Result<Found, UserError> {
    const QUERY: &str = "SELECT obj_description(oid, 'pg_namespace'), pg_get_userbyid(nspowner)::text \
                         FROM pg_namespace WHERE nspname = $1";
    let object = Object {
        kind: "schema",
        query: QUERY,
        look_up: "look up schema",
        read: "read schema",
    };
    check_owned(shared, marker, &object, owner, owner, owner_found).await
}

/// A kind of object that carries a marker and an owner: how to read both.
pub(super) struct Object {
    kind: &'static str,
    /// Returns the comment and the owner's name of the object named `$1`.
    query: &'static str,
    look_up: &'static str,
    read: &'static str,
}

/// Reads the comment and the owner of the `object` named `name`, and says
/// whether it is the service's ([`owned`]).
pub(super) async fn check_owned(
    client: &Client,
    marker: &Marker,
    object: &Object,
    name: &str,
    owner: &str,
    owner_found: Found,
) -> Result<Found, UserError> {
    let row = client
        .query_opt(object.query, &[&name])
        .await
        .map_err(database_error(object.look_up))?;
    let Some(row) = row else {
        return Ok(Found::Missing);
    };
    let read = database_error(object.read);
    let comment: Option<String> = row.try_get(0).map_err(read)?;
    let found_owner: String = row.try_get(1).map_err(read)?;
    owned(
        marker,
        object.kind,
        name,
        comment,
        &found_owner,
        owner,
        owner_found,
    )
}

pub(super) fn owned(
    marker: &Marker,
    kind: &str,
    name: &str,
    comment: Option<String>,
    found_owner: &str,
    owner: &str,
    owner_found: Found,
) -> Result<Found, UserError> {
    match marker.read(comment.as_deref()) {
        Mark::Ours => Ok(Found::Ours { marked: true }),
        Mark::Unmarked | Mark::Predecessor if owner_found.is_ours() && found_owner == owner => {
            Ok(Found::Ours { marked: false })
        }
        mark => Err(not_ours(kind, name, marker, mark)),
    }
}

/// Writes the marker on an object (`kind`: ROLE, DATABASE, SCHEMA).
pub(super) async fn mark(
    client: &Client,
    kind: &str,
    name: &str,
    marker: &Marker,
) -> Result<(), UserError> {
    execute(
        client,
        "mark",
        &format!(
            "COMMENT ON {kind} {} IS {}",
            quote_ident(name),
            quote_literal(&marker.text())
        ),
    )
    .await
}
