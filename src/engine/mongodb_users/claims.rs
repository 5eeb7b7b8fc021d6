//! Claims: the document in `servicedb.claims` that makes a database this
//! ServiceDatabase's; a database without it is someone else's.

use super::*;

/// servicedb's own database on a shared MongoDB server, and the collection
/// of claims in it. No service database is named so: theirs are
/// `<namespace>_<name>`.
pub const CLAIMS_DATABASE: &str = "servicedb";
pub(super) const CLAIMS: &str = "claims";
pub(super) const DUPLICATE_KEY: i32 = 11000;

/// Whose the service's database `db` is, as far as servicedb can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// This service's claim is recorded.
    Ours,
    /// No claim, and neither data nor users (or unmarked, and the service
    /// was given its logins before claims existed): free to claim.
    Free,
    /// Claimed for an earlier ServiceDatabase of the same namespace and
    /// name (only with [`Marker::adopt_predecessor`]): this one takes the
    /// claim, the database and its users over.
    Predecessor,
}

/// Reads the claim on `db`: an error ([`UserError::NotOurs`]) when another
/// service claimed it, or when it exists or has users without a claim.
pub async fn check_claim(client: &Client, db: &str, marker: &Marker) -> Result<Claim, UserError> {
    validate_database_name(db)?;
    let refused = |holder: Option<String>| UserError::NotOurs {
        database: db.to_owned(),
        service: marker.service.clone(),
        holder,
    };
    let found = run(
        client,
        CLAIMS_DATABASE,
        "read the claim",
        doc! { "find": CLAIMS, "filter": { "_id": db }, "limit": 1 },
        "",
    )
    .await?;
    let claim = found
        .get_document("cursor")
        .and_then(|cursor| cursor.get_array("firstBatch"))
        .map_err(|error| UserError::UnexpectedReply {
            action: "read the claim",
            reason: error.to_string(),
        })?
        .iter()
        .filter_map(Bson::as_document)
        .next()
        .map(|claim| {
            let field = |name| claim.get_str(name).unwrap_or_default().to_owned();
            (field("uid"), field("serviceDatabase"))
        });
    match claim {
        Some((uid, _)) if uid == marker.uid => return Ok(Claim::Ours),
        Some((_, service)) if marker.adopt_predecessor && service == marker.service => {
            return Ok(Claim::Predecessor);
        }
        Some((other, _)) => return Err(refused(Some(other))),
        None if marker.adopt_unmarked => return Ok(Claim::Free),
        None => {}
    }
    let users = run(client, db, "usersInfo", doc! { "usersInfo": 1 }, "").await?;
    let has_users = users
        .get_array("users")
        .map_err(|error| UserError::UnexpectedReply {
            action: "usersInfo",
            reason: error.to_string(),
        })?
        .iter()
        .filter_map(Bson::as_document)
        .any(|user| user.get_str("db") == Ok(db));
    let listed = run(
        client,
        ADMIN_DATABASE,
        "listDatabases",
        doc! { "listDatabases": 1, "nameOnly": true },
        "",
    )
    .await?;
    let exists = listed
        .get_array("databases")
        .map_err(|error| UserError::UnexpectedReply {
            action: "listDatabases",
            reason: error.to_string(),
        })?
        .iter()
        .filter_map(Bson::as_document)
        .any(|found| found.get_str("name") == Ok(db));
    if exists || has_users {
        return Err(refused(None));
    }
    Ok(Claim::Free)
}

/// Claims `db` for the service, once: of two services claiming it in the
/// same instant, the second insert fails on the unique `_id`.
pub async fn claim_database(client: &Client, db: &str, marker: &Marker) -> Result<(), UserError> {
    match check_claim(client, db, marker).await? {
        Claim::Ours => return Ok(()),
        Claim::Predecessor => return take_over_claim(client, db, marker).await,
        Claim::Free => {}
    }
    let claim = doc! {
        "_id": db,
        "uid": &marker.uid,
        "serviceDatabase": &marker.service,
        "server": &marker.server,
    };
    let reply = run(
        client,
        CLAIMS_DATABASE,
        "record the claim",
        doc! { "insert": CLAIMS, "documents": [claim] },
        "",
    )
    .await?;
    let write_error = reply
        .get_array("writeErrors")
        .ok()
        .and_then(|errors| errors.iter().filter_map(Bson::as_document).next())
        .map(|error| {
            (
                error.get_i32("code").unwrap_or_default(),
                error.get_str("errmsg").unwrap_or_default().to_owned(),
            )
        });
    match write_error {
        None => Ok(()),
        // Claimed by another in between: say whose.
        Some((DUPLICATE_KEY, _)) => check_claim(client, db, marker).await.map(drop),
        Some((code, message)) => Err(UserError::Refused {
            action: "record the claim",
            code,
            code_name: String::new(),
            message,
        }),
    }
}

/// Passes the claim an earlier ServiceDatabase of the same namespace and
/// name left on `db` to the service. Only one ServiceDatabase of a
/// namespace and name exists at a time, so nobody else can be taking it.
pub(super) async fn take_over_claim(
    client: &Client,
    db: &str,
    marker: &Marker,
) -> Result<(), UserError> {
    tracing::info!(database = %db, service = %marker.service, "taking over the database an earlier ServiceDatabase of this namespace and name left");
    let update = doc! {
        "q": { "_id": db, "serviceDatabase": &marker.service },
        "u": { "$set": { "uid": &marker.uid, "server": &marker.server } },
    };
    run(
        client,
        CLAIMS_DATABASE,
        "take over the claim",
        doc! { "update": CLAIMS, "updates": [update] },
        "",
    )
    .await?;
    match check_claim(client, db, marker).await? {
        Claim::Ours => Ok(()),
        // Changed in between: refused like any claim that is not ours.
        Claim::Free | Claim::Predecessor => Err(UserError::NotOurs {
            database: db.to_owned(),
            service: marker.service.clone(),
            holder: None,
        }),
    }
}

/// Removes the service's claim on `db` (after its database was dropped).
pub async fn release_claim(client: &Client, db: &str, marker: &Marker) -> Result<(), UserError> {
    run(
        client,
        CLAIMS_DATABASE,
        "remove the claim",
        doc! { "delete": CLAIMS, "deletes": [ { "q": { "_id": db, "uid": &marker.uid }, "limit": 1 } ] },
        "",
    )
    .await
    .map(drop)
}
