//! Login roles: least-privilege attributes, SCRAM verifiers, the rotation
//! twin (`<role>_b`) and the group role they share.

use super::*;

/// A least-privilege role that can log in with `password`, or cannot log in
/// at all (`None`; its password is left as it is).
pub(super) async fn ensure_login_role(
    client: &Client,
    role_name: &str,
    password: Option<&str>,
    marker: Option<&Marker>,
) -> Result<Changes, UserError> {
    let mut outcome = Changes::default();
    let role = quote_ident(role_name);
    let attributes = attributes(password.is_some());
    // With a marker, whether to create is decided by the same read that
    // checked the marker: a role that appears in between makes CREATE ROLE
    // fail, never turns into one whose password we change.
    let found = match marker {
        Some(marker) => Some(check_role(client, marker, role_name).await?),
        None => None,
    };
    if let Some(marker) = marker
        && found == Some(Found::Ours { marked: false })
    {
        mark(client, "ROLE", role_name, marker).await?;
        outcome.role_attributes_fixed = true;
    }
    let existing = match found {
        Some(Found::Missing) => None,
        Some(Found::Ours { .. }) => Some(fetch_role(client, role_name).await?.ok_or_else(
            || UserError::RoleMissing {
                role: role_name.to_owned(),
            },
        )?),
        None => fetch_role(client, role_name).await?,
    };
    match existing {
        None => {
            let password = password
                .map(|p| format!(" PASSWORD {}", scram_verifier(p)))
                .unwrap_or_default();
            // One statement string is one transaction: the role exists only
            // with its marker, so it is the claim on the server itself, and
            // a ServiceDatabase racing for the name fails here.
            let comment = marker
                .map(|m| format!("; COMMENT ON ROLE {role} IS {}", quote_literal(&m.text())))
                .unwrap_or_default();
            execute(
                client,
                "create role",
                &format!("CREATE ROLE {role} {attributes}{password}{comment}"),
            )
            .await?;
            outcome.role_created = true;
        }
        Some(existing) => {
            if !existing.is_least_privilege(password.is_some()) {
                execute(
                    client,
                    "restrict role",
                    &format!("ALTER ROLE {role} {attributes}"),
                )
                .await?;
                outcome.role_attributes_fixed = true;
            }
            if let Some(password) = password
                && !existing.password_matches(password)
            {
                alter_password(client, role_name, password).await?;
                outcome.password_changed = true;
            }
        }
    }
    Ok(outcome)
}

/// The twin login: a member of the owner whose sessions run as the owner.
/// Without a password it exists only if it existed, unable to log in.
pub(super) async fn ensure_twin(
    client: &Client,
    owner: &str,
    twin: &str,
    password: Option<&str>,
    marker: Option<&Marker>,
) -> Result<Changes, UserError> {
    if password.is_none() {
        let mut outcome = Changes::default();
        let found = match marker {
            Some(marker) => ours(check_role(client, marker, twin).await)?,
            None => Found::Ours { marked: true },
        };
        if let Some(marker) = marker
            && found == (Found::Ours { marked: false })
        {
            // A predecessor's (or a legacy unmarked) twin is this one's now.
            mark(client, "ROLE", twin, marker).await?;
            outcome.role_attributes_fixed = true;
        }
        let ours = found.is_ours();
        if ours && fetch_role(client, twin).await?.is_some_and(|r| r.login) {
            execute(
                client,
                "disable the previous login",
                &format!("ALTER ROLE {} NOLOGIN", quote_ident(twin)),
            )
            .await?;
            outcome.role_attributes_fixed = true;
        }
        return Ok(outcome);
    }
    let mut outcome = ensure_login_role(client, twin, password, marker).await?;
    let row = client
        .query_one(
            "SELECT pg_has_role($1::name, $2::name, 'MEMBER'), \
                    coalesce((SELECT $3::text = ANY(setconfig) FROM pg_db_role_setting \
                              WHERE setdatabase = 0 AND setrole = (SELECT oid FROM pg_roles WHERE rolname = $1)), false)",
            &[&twin, &owner, &format!("role={owner}")],
        )
        .await
        .map_err(database_error("read twin membership"))?;
    let read = database_error("read twin membership");
    let (member, runs_as_owner): (bool, bool) =
        (row.try_get(0).map_err(read)?, row.try_get(1).map_err(read)?);
    if !member {
        execute(
            client,
            "grant the owner role to the twin",
            &format!("GRANT {} TO {}", quote_ident(owner), quote_ident(twin)),
        )
        .await?;
        outcome.privileges_fixed = true;
    }
    if !runs_as_owner {
        execute(
            client,
            "make the twin act as the owner",
            &format!(
                "ALTER ROLE {} SET role TO {}",
                quote_ident(twin),
                quote_literal(owner)
            ),
        )
        .await?;
        outcome.privileges_fixed = true;
    }
    Ok(outcome)
}

/// Sets a role's password unless its stored verifier already matches.
/// Returns whether it changed. Works on the connected role too (the admin
/// rotating its own password).
pub async fn set_password(client: &Client, role: &str, password: &str) -> Result<bool, UserError> {
    validate_name(NameKind::Role, role)?;
    validate_password(password)?;
    let existing = fetch_role(client, role)
        .await?
        .ok_or_else(|| UserError::RoleMissing {
            role: role.to_owned(),
        })?;
    if existing.password_matches(password) {
        return Ok(false);
    }
    alter_password(client, role, password).await?;
    Ok(true)
}

/// A twin of the old name ([`logins::legacy_twin`]) that the logins no longer
/// use cannot log in any more, if it is this service's: marked for it (it
/// was marked while in use), or any on a dedicated instance.
pub(super) async fn retire_legacy_twin(
    client: &Client,
    owner: &str,
    twin_in_use: &str,
    marker: Option<&Marker>,
) -> Result<Changes, UserError> {
    let legacy = logins::legacy_twin(owner);
    if legacy == twin_in_use || validate_role_name(&legacy).is_err() {
        return Ok(Changes::default());
    }
    let Some(comment) = role_comment(client, &legacy).await? else {
        return Ok(Changes::default());
    };
    if let Some(marker) = marker
        && !matches!(
            marker.read(comment.as_deref()),
            Mark::Ours | Mark::Predecessor
        )
    {
        return Ok(Changes::default());
    }
    ensure_twin(client, owner, &legacy, None, None).await
}

/// A role's comment: `None` when there is no such role.
pub(super) async fn role_comment(
    client: &Client,
    role: &str,
) -> Result<Option<Option<String>>, UserError> {
    let row = client
        .query_opt(
            "SELECT shobj_description(oid, 'pg_authid') FROM pg_roles WHERE rolname = $1",
            &[&role],
        )
        .await
        .map_err(database_error("look up role"))?;
    row.map(|row| row.try_get(0))
        .transpose()
        .map_err(database_error("read role"))
}

pub(super) const LEAST_PRIVILEGE: &str =
    "NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS INHERIT";

/// The attributes of a service role that may (or may not) log in.
pub(super) fn attributes(login: bool) -> String {
    format!(
        "{} {LEAST_PRIVILEGE}",
        if login { "LOGIN" } else { "NOLOGIN" }
    )
}

/// A fresh SCRAM-SHA-256 verifier for the password, as an SQL literal.
pub(super) fn scram_verifier(password: &str) -> String {
    quote_literal(&postgres_protocol::password::scram_sha_256(
        password.as_bytes(),
    ))
}

pub(super) async fn alter_password(
    client: &Client,
    role: &str,
    password: &str,
) -> Result<(), UserError> {
    let verifier = scram_verifier(password);
    execute(
        client,
        "set password",
        &format!("ALTER ROLE {} PASSWORD {verifier}", quote_ident(role)),
    )
    .await
}

/// Managing the role we are logged in as would demote the administrator.
pub(super) async fn refuse_own_role(client: &Client, role: &str) -> Result<(), UserError> {
    let current: String = client
        .query_one("SELECT current_user::text", &[])
        .await
        .map_err(database_error("read current user"))?
        .try_get(0)
        .map_err(database_error("read current user"))?;
    if current == role {
        return Err(UserError::OwnRole {
            role: role.to_owned(),
        });
    }
    Ok(())
}

pub(super) struct ExistingRole {
    pub(super) superuser: bool,
    pub(super) create_db: bool,
    pub(super) create_role: bool,
    pub(super) replication: bool,
    pub(super) bypass_rls: bool,
    pub(super) login: bool,
    /// `None` when unknown: no password, or the connected role may not read
    /// pg_authid (a non-superuser administrator on a managed service).
    pub(super) verifier: Option<String>,
}

impl ExistingRole {
    pub(super) fn is_least_privilege(&self, login: bool) -> bool {
        self.login == login
            && !self.superuser
            && !self.create_db
            && !self.create_role
            && !self.replication
            && !self.bypass_rls
    }

    pub(super) fn password_matches(&self, password: &str) -> bool {
        self.verifier
            .as_deref()
            .is_some_and(|verifier| scram::verifier_matches(verifier, password))
    }
}

pub(super) async fn fetch_role(
    client: &Client,
    role: &str,
) -> Result<Option<ExistingRole>, UserError> {
    const COLUMNS: &str =
        "rolsuper, rolcreatedb, rolcreaterole, rolreplication, rolbypassrls, rolcanlogin";
    let from_authid = client
        .query_opt(
            &format!("SELECT {COLUMNS}, rolpassword FROM pg_authid WHERE rolname = $1"),
            &[&role],
        )
        .await;
    let row = match from_authid {
        Ok(row) => row,
        Err(error) if error.code() == Some(&SqlState::INSUFFICIENT_PRIVILEGE) => client
            .query_opt(
                &format!("SELECT {COLUMNS}, NULL::text FROM pg_roles WHERE rolname = $1"),
                &[&role],
            )
            .await
            .map_err(database_error("look up role"))?,
        Err(error) => return Err(database_error("look up role")(error)),
    };
    let Some(row) = row else { return Ok(None) };
    let read = database_error("read role");
    Ok(Some(ExistingRole {
        superuser: row.try_get(0).map_err(read)?,
        create_db: row.try_get(1).map_err(read)?,
        create_role: row.try_get(2).map_err(read)?,
        replication: row.try_get(3).map_err(read)?,
        bypass_rls: row.try_get(4).map_err(read)?,
        login: row.try_get(5).map_err(read)?,
        verifier: row.try_get(6).map_err(read)?,
    }))
}
