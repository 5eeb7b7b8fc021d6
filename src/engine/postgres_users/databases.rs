//! The service's database: made, owned by its role, closed to everyone
//! else; dropped with its roles (`deletionPolicy: Delete`).

use super::*;

/// Creates or repairs the service's role and database. See the module
/// comment for what "repairs" covers; returns what had to change.
pub async fn ensure_service_database(
    client: &Client,
    user: &ServiceUser,
) -> Result<Changes, UserError> {
    validate_password(&user.password)?;
    ensure_owner(
        client,
        &user.role,
        Some(&user.password),
        &user.database,
        None,
    )
    .await
}

/// Creates or repairs a service's owner role, its database and its twin
/// login (see [`crate::engine::logins`]): each identity that `logins` lists
/// can log in with its password, the other one cannot. Sessions of the twin
/// run as the owner (`SET role`), so everything stays owned by one role.
///
/// With a `marker` (shared servers) every object is made with it, and an
/// existing object without it is refused before anything is written
/// ([`UserError::NotOurs`]). Without one (a dedicated instance, where
/// servicedb made everything) existing objects are repaired as they are.
pub async fn ensure_service_logins(
    client: &Client,
    owner: &str,
    database: &str,
    logins: &Logins,
    marker: Option<&Marker>,
) -> Result<Changes, UserError> {
    for login in logins.all() {
        validate_password(&login.password)?;
    }
    let twin = logins::twin_in_use(owner, logins);
    validate_role_name(&twin)?;
    validate_role_name(owner)?;
    validate_database_name(database)?;
    if let Some(marker) = marker {
        let owner_found = check_role(client, marker, owner).await?;
        check_database(client, marker, database, owner, owner_found).await?;
        check_role(client, marker, &twin).await?;
    }
    let mut outcome =
        ensure_owner(client, owner, logins.password_of(owner), database, marker).await?;
    let twin_outcome = ensure_twin(client, owner, &twin, logins.password_of(&twin), marker).await?;
    outcome.merge(twin_outcome);
    outcome.merge(retire_legacy_twin(client, owner, &twin, marker).await?);
    Ok(outcome)
}

/// The owner role and its database. `password: None` keeps the role but
/// takes its LOGIN away (the twin is the login in use).
pub(super) async fn ensure_owner(
    client: &Client,
    owner: &str,
    password: Option<&str>,
    database_name: &str,
    marker: Option<&Marker>,
) -> Result<Changes, UserError> {
    validate_role_name(owner)?;
    validate_database_name(database_name)?;
    refuse_own_role(client, owner).await?;
    let user = ServiceUser {
        role: owner.to_string(),
        password: String::new(),
        database: database_name.to_string(),
    };
    let mut outcome = ensure_login_role(client, owner, password, marker).await?;
    let role = quote_ident(&user.role);
    let database = quote_ident(&user.database);
    if let Some(marker) = marker {
        // The role is ours by now: only a database of ours is used.
        match check_database(
            client,
            marker,
            database_name,
            owner,
            Found::Ours { marked: true },
        )
        .await?
        {
            Found::Missing => {
                // CREATE DATABASE cannot share a transaction with the
                // comment; a database left unmarked in between is owned by
                // our own role and is marked on the next pass.
                execute(
                    client,
                    "create database",
                    &format!("CREATE DATABASE {database} OWNER {role}"),
                )
                .await?;
                mark(client, "DATABASE", database_name, marker).await?;
                outcome.database_created = true;
            }
            Found::Ours { marked: false } => {
                mark(client, "DATABASE", database_name, marker).await?;
                outcome.owner_changed = true;
            }
            Found::Ours { marked: true } => {}
        }
        if restrict_database(client, &user.database, &user.role).await? {
            outcome.privileges_fixed = true;
        }
        return Ok(outcome);
    }
    match database_owner(client, &user.database).await? {
        None => {
            execute(
                client,
                "create database",
                &format!("CREATE DATABASE {database} OWNER {role}"),
            )
            .await?;
            outcome.database_created = true;
        }
        Some(owner) if owner != user.role => {
            execute(
                client,
                "change database owner",
                &format!("ALTER DATABASE {database} OWNER TO {role}"),
            )
            .await?;
            outcome.owner_changed = true;
        }
        Some(_) => {}
    }

    if restrict_database(client, &user.database, &user.role).await? {
        outcome.privileges_fixed = true;
    }
    Ok(outcome)
}

/// Only `role` (its owner) may connect to `database_name` or make temporary
/// tables there; returns whether anything had to change.
pub(super) async fn restrict_database(
    client: &Client,
    database_name: &str,
    role_name: &str,
) -> Result<bool, UserError> {
    let database = quote_ident(database_name);
    let role = quote_ident(role_name);
    let mut changed = false;
    // 'public' is accepted by has_database_privilege as the PUBLIC pseudo-role.
    let row = client
        .query_one(
            "SELECT has_database_privilege('public'::name, $1::text, 'CONNECT'), \
                    has_database_privilege('public'::name, $1::text, 'TEMPORARY'), \
                    has_database_privilege($2::name, $1::text, 'CONNECT')",
            &[&database_name, &role_name],
        )
        .await
        .map_err(database_error("read database privileges"))?;
    let read = database_error("read database privileges");
    let (public_connect, public_temporary, role_connect): (bool, bool, bool) = (
        row.try_get(0).map_err(read)?,
        row.try_get(1).map_err(read)?,
        row.try_get(2).map_err(read)?,
    );
    if public_connect || public_temporary {
        execute(
            client,
            "revoke public access",
            &format!("REVOKE CONNECT, TEMPORARY ON DATABASE {database} FROM PUBLIC"),
        )
        .await?;
        changed = true;
    }
    if !role_connect {
        execute(
            client,
            "grant connect",
            &format!("GRANT CONNECT ON DATABASE {database} TO {role}"),
        )
        .await?;
        changed = true;
    }
    Ok(changed)
}

pub(super) async fn database_owner(
    client: &Client,
    database: &str,
) -> Result<Option<String>, UserError> {
    client
        .query_opt(
            "SELECT pg_get_userbyid(datdba)::text FROM pg_database WHERE datname = $1",
            &[&database],
        )
        .await
        .map_err(database_error("look up database"))?
        .map(|row| row.try_get(0))
        .transpose()
        .map_err(database_error("read database owner"))
}

/// Drops the service's database (disconnecting its sessions) and its roles;
/// with a `marker`, only those that carry it (an object servicedb did not
/// make for this service stays as it is). Missing objects are not an error,
/// so a retried deletion converges.
pub async fn drop_service_database(
    client: &Client,
    user: &ServiceUser,
    marker: Option<&Marker>,
) -> Result<(), UserError> {
    validate_role_name(&user.role)?;
    validate_database_name(&user.database)?;
    refuse_own_role(client, &user.role).await?;
    let owner_found = match marker {
        Some(marker) => ours(check_role(client, marker, &user.role).await)?,
        None => Found::Ours { marked: true },
    };
    let database_ours = match marker {
        Some(marker) => {
            ours(check_database(client, marker, &user.database, &user.role, owner_found).await)?
                .is_ours()
        }
        None => true,
    };
    if database_ours {
        let database = quote_ident(&user.database);
        execute(
            client,
            "drop database",
            &format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)"),
        )
        .await?;
    }
    // Twins first: the owner role is granted to them.
    for name in roles_to_drop(client, &user.role, owner_found, marker).await? {
        if fetch_role(client, &name).await?.is_some() {
            let role = quote_ident(&name);
            // Grants the role holds in the database we are connected to would
            // otherwise block DROP ROLE.
            execute(client, "drop owned", &format!("DROP OWNED BY {role}")).await?;
            execute(client, "drop role", &format!("DROP ROLE {role}")).await?;
        }
    }
    Ok(())
}

/// The service's roles that may be dropped, twins first: with a `marker`,
/// those that carry it (a twin of the old name only when marked, as it may
/// be another service's owner login); without, the ones servicedb names.
pub(super) async fn roles_to_drop(
    client: &Client,
    owner: &str,
    owner_found: Found,
    marker: Option<&Marker>,
) -> Result<Vec<String>, UserError> {
    let mut names = Vec::new();
    for twin in [logins::twin(owner), logins::legacy_twin(owner)] {
        if validate_role_name(&twin).is_err() {
            continue;
        }
        let droppable = match marker {
            None => true,
            Some(marker) if twin == logins::legacy_twin(owner) => {
                let mark = marker.read(role_comment(client, &twin).await?.flatten().as_deref());
                matches!(mark, Mark::Ours | Mark::Predecessor)
            }
            Some(marker) => ours(check_role(client, marker, &twin).await)?.is_ours(),
        };
        if droppable {
            names.push(twin);
        }
    }
    if owner_found.is_ours() {
        names.push(owner.to_string());
    }
    Ok(names)
}
