//! Service users: read, then created or changed only when they differ;
//! the rotation twin; dropped with the service.

use super::*;

/// Reads `name` on `db` (with its stored keys); `None` if it does not exist.
pub async fn observe_user(
    client: &Client,
    db: &str,
    name: &str,
) -> Result<Option<ObservedUser>, UserError> {
    const ACTION: &str = "usersInfo";
    let reply = run(client, db, ACTION, users_info_command(name), "").await?;
    let users = reply
        .get_array("users")
        .map_err(|error| UserError::UnexpectedReply {
            action: ACTION,
            reason: error.to_string(),
        })?;
    let found = users.iter().filter_map(Bson::as_document).find(|user| {
        user.get_str("user") == Ok(name) && user.get_str("db").is_ok_and(|found| found == db)
    });
    found
        .map(ObservedUser::from_document)
        .transpose()
        .map_err(|reason| UserError::UnexpectedReply {
            action: ACTION,
            reason,
        })
}

/// Brings `desired` about on the server: `createUser` if it is missing,
/// `updateUser` with only what differs, nothing if it is right.
pub async fn ensure_user(client: &Client, desired: &UserSpec) -> Result<Planned, UserError> {
    desired.validate()?;
    let observed = observe_user(client, &desired.db, &desired.name).await?;
    let mut outcome = plan(desired, observed.as_ref());
    if outcome == Planned::Created {
        match create_user(client, desired).await {
            Ok(()) => return Ok(Planned::Created),
            // Made in between by someone else: bring it wholly in line.
            Err(error) if error.code() == Some(USER_ALREADY_EXISTS) => {
                outcome = Planned::Updated(Change {
                    password: true,
                    roles: true,
                });
            }
            Err(error) => return Err(error),
        }
    }
    if let Planned::Updated(change) = outcome {
        run(
            client,
            &desired.db,
            "updateUser",
            desired.update_command(change),
            &desired.password,
        )
        .await?;
    }
    Ok(outcome)
}

/// A service's user on its own database with `readWrite` there only.
pub async fn ensure_service_user(
    client: &Client,
    db: &str,
    user: &str,
    password: &str,
) -> Result<Planned, UserError> {
    validate_service_database(db)?;
    ensure_user(client, &UserSpec::service(db, user, password)).await
}

/// The service's two identities on its database (see
/// [`crate::engine::logins`]): each one `logins` lists exists with its
/// password and `readWrite` on `db`; the other is dropped (MongoDB users
/// cannot be disabled; open sessions stay until they close). A twin of the
/// old name (`logins::legacy_twin`) is a user of `db` like the others, so
/// it is another service's login never: it is kept while a Secret names it.
pub async fn ensure_service_logins(
    client: &Client,
    db: &str,
    owner: &str,
    logins: &crate::engine::logins::Logins,
    marker: Option<&Marker>,
) -> Result<(), UserError> {
    validate_service_database(db)?;
    if let Some(marker) = marker {
        claim_database(client, db, marker).await?;
    }
    let twin = crate::engine::logins::twin(owner);
    let legacy = crate::engine::logins::legacy_twin(owner);
    for identity in [owner, twin.as_str(), legacy.as_str()] {
        match logins.password_of(identity) {
            Some(password) => {
                ensure_user(client, &UserSpec::service(db, identity, password)).await?;
            }
            None => {
                drop_user(client, db, identity).await?;
            }
        }
    }
    Ok(())
}

/// `createUser` as is, without looking first: the one command the
/// localhost exception allows (no user can read `usersInfo` then).
pub async fn create_user(client: &Client, user: &UserSpec) -> Result<(), UserError> {
    user.validate()?;
    run(
        client,
        &user.db,
        "createUser",
        user.create_command(),
        &user.password,
    )
    .await
    .map(drop)
}

/// Sets `user`'s password (and SCRAM-SHA-256 as its only mechanism).
pub async fn set_password(
    client: &Client,
    db: &str,
    user: &str,
    password: &str,
) -> Result<(), UserError> {
    let spec = UserSpec {
        db: db.to_owned(),
        name: user.to_owned(),
        password: password.to_owned(),
        roles: Vec::new(),
    };
    spec.validate()?;
    let command = spec.update_command(Change {
        password: true,
        roles: false,
    });
    run(client, db, "updateUser", command, password)
        .await
        .map(drop)
}

/// Drops a user; `false` if there was none.
pub async fn drop_user(client: &Client, db: &str, user: &str) -> Result<bool, UserError> {
    validate_database_name(db)?;
    validate_username(user)?;
    match run(client, db, "dropUser", drop_user_command(user), "").await {
        Ok(_) => Ok(true),
        Err(error) if error.code() == Some(USER_NOT_FOUND) => Ok(false),
        Err(error) => Err(error),
    }
}
