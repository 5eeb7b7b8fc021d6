//! Isolation `Schema`: one schema per service in a shared database, owned
//! by the service's role, with nobody else's rights.

use super::*;

/// Isolation `Schema`, step one, on a connection to any database: the
/// shared database exists and only roles granted CONNECT may enter it.
pub async fn ensure_schema_database(client: &Client, database: &str) -> Result<bool, UserError> {
    validate_database_name(database)?;
    let exists = client
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&database])
        .await
        .map_err(database_error("look up database"))?
        .is_some();
    let quoted = quote_ident(database);
    if !exists {
        execute(
            client,
            "create database",
            &format!("CREATE DATABASE {quoted}"),
        )
        .await?;
    }
    let public: bool = client
        .query_one(
            "SELECT has_database_privilege('public'::name, $1::text, 'CONNECT') \
                 OR has_database_privilege('public'::name, $1::text, 'TEMPORARY')",
            &[&database],
        )
        .await
        .map_err(database_error("read database privileges"))?
        .try_get(0)
        .map_err(database_error("read database privileges"))?;
    if public {
        execute(
            client,
            "revoke public access",
            &format!("REVOKE CONNECT, TEMPORARY ON DATABASE {quoted} FROM PUBLIC"),
        )
        .await?;
    }
    Ok(!exists)
}

/// Isolation `Schema`, step two: the service's owner role and twin (on
/// `admin`, any database), CONNECT on the shared database, and in it
/// (`shared`, a connection to that database) the schema named after the
/// owner and owned by it. The `public` schema is closed to everyone, so a
/// service can use its own schema only: other schemas belong to other roles
/// and grant nothing. The default `search_path` (`"$user", public`) finds
/// the schema for the owner and its twin (whose sessions run as the owner).
pub async fn ensure_service_schema(
    admin: &Client,
    shared: &Client,
    owner: &str,
    database: &str,
    logins: &Logins,
    marker: Option<&Marker>,
) -> Result<Changes, UserError> {
    validate_role_name(owner)?;
    validate_database_name(database)?;
    for login in logins.all() {
        validate_password(&login.password)?;
    }
    refuse_own_role(admin, owner).await?;
    let twin = logins::twin_in_use(owner, logins);
    validate_role_name(&twin)?;
    if let Some(marker) = marker {
        let owner_found = check_role(admin, marker, owner).await?;
        check_schema(shared, marker, owner, owner_found).await?;
        check_role(admin, marker, &twin).await?;
    }
    let mut outcome = ensure_login_role(admin, owner, logins.password_of(owner), marker).await?;
    outcome.merge(ensure_twin(admin, owner, &twin, logins.password_of(&twin), marker).await?);
    outcome.merge(retire_legacy_twin(admin, owner, &twin, marker).await?);
    let role = quote_ident(owner);
    let can_connect: bool = admin
        .query_one(
            "SELECT has_database_privilege($1::name, $2::text, 'CONNECT')",
            &[&owner, &database],
        )
        .await
        .map_err(database_error("read database privileges"))?
        .try_get(0)
        .map_err(database_error("read database privileges"))?;
    if !can_connect {
        execute(
            admin,
            "grant connect",
            &format!(
                "GRANT CONNECT ON DATABASE {} TO {role}",
                quote_ident(database)
            ),
        )
        .await?;
        outcome.privileges_fixed = true;
    }
    let public_open: bool = shared
        .query_one(
            "SELECT has_schema_privilege('public'::name, 'public', 'USAGE') \
                 OR has_schema_privilege('public'::name, 'public', 'CREATE')",
            &[],
        )
        .await
        .map_err(database_error("read schema privileges"))?
        .try_get(0)
        .map_err(database_error("read schema privileges"))?;
    if public_open {
        execute(
            shared,
            "close the public schema",
            "REVOKE ALL ON SCHEMA public FROM PUBLIC",
        )
        .await?;
        outcome.privileges_fixed = true;
    }
    if let Some(marker) = marker {
        match check_schema(shared, marker, owner, Found::Ours { marked: true }).await? {
            Found::Missing => {
                execute(
                    shared,
                    "create schema",
                    &format!(
                        "CREATE SCHEMA {role} AUTHORIZATION {role}; COMMENT ON SCHEMA {role} IS {}",
                        quote_literal(&marker.text())
                    ),
                )
                .await?;
                outcome.database_created = true;
            }
            Found::Ours { marked: false } => {
                mark(shared, "SCHEMA", owner, marker).await?;
                outcome.owner_changed = true;
            }
            Found::Ours { marked: true } => {}
        }
        return Ok(outcome);
    }
    let schema_owner: Option<String> = shared
        .query_opt(
            "SELECT pg_get_userbyid(nspowner)::text FROM pg_namespace WHERE nspname = $1",
            &[&owner],
        )
        .await
        .map_err(database_error("look up schema"))?
        .map(|row| row.try_get(0))
        .transpose()
        .map_err(database_error("read schema owner"))?;
    match schema_owner {
        None => {
            execute(
                shared,
                "create schema",
                &format!("CREATE SCHEMA {role} AUTHORIZATION {role}"),
            )
            .await?;
            outcome.database_created = true;
        }
        Some(found) if found != owner => {
            execute(
                shared,
                "change schema owner",
                &format!("ALTER SCHEMA {role} OWNER TO {role}"),
            )
            .await?;
            outcome.owner_changed = true;
        }
        Some(_) => {}
    }
    Ok(outcome)
}

/// Drops a service's schema with everything in it, and its roles; with a
/// `marker`, only those that carry it.
pub async fn drop_service_schema(
    admin: &Client,
    shared: &Client,
    owner: &str,
    marker: Option<&Marker>,
) -> Result<(), UserError> {
    validate_role_name(owner)?;
    refuse_own_role(admin, owner).await?;
    let role = quote_ident(owner);
    let owner_found = match marker {
        Some(marker) => ours(check_role(admin, marker, owner).await)?,
        None => Found::Ours { marked: true },
    };
    let schema_ours = match marker {
        Some(marker) => ours(check_schema(shared, marker, owner, owner_found).await)?.is_ours(),
        None => true,
    };
    if schema_ours {
        execute(
            shared,
            "drop schema",
            &format!("DROP SCHEMA IF EXISTS {role} CASCADE"),
        )
        .await?;
    }
    for name in roles_to_drop(admin, owner, owner_found, marker).await? {
        if fetch_role(admin, &name).await?.is_some() {
            let quoted = quote_ident(&name);
            execute(shared, "drop owned", &format!("DROP OWNED BY {quoted}")).await?;
            execute(admin, "drop owned", &format!("DROP OWNED BY {quoted}")).await?;
            execute(admin, "drop role", &format!("DROP ROLE {quoted}")).await?;
        }
    }
    Ok(())
}
