//! The scratch database a verification restores into on a shared server
//! (`<role>-verify`), owned by the service's role.

use super::*;

/// Creates or repairs the service's scratch database: owned by its owner
/// role (so that its logins may empty it and restore into it) and closed to
/// everyone else. A database of that name owned by another role is never
/// taken over. Returns whether anything changed.
pub async fn ensure_scratch_database(
    client: &Client,
    owner: &str,
    scratch: &str,
    marker: Option<&Marker>,
) -> Result<bool, UserError> {
    validate_role_name(owner)?;
    validate_database_name(scratch)?;
    if let Some(marker) = marker {
        let owner_found = check_role(client, marker, owner).await?;
        let changed = match check_database(client, marker, scratch, owner, owner_found).await? {
            Found::Missing => {
                execute(
                    client,
                    "create scratch database",
                    &format!(
                        "CREATE DATABASE {} OWNER {}",
                        quote_ident(scratch),
                        quote_ident(owner)
                    ),
                )
                .await?;
                mark(client, "DATABASE", scratch, marker).await?;
                true
            }
            Found::Ours { marked: false } => {
                mark(client, "DATABASE", scratch, marker).await?;
                true
            }
            Found::Ours { marked: true } => false,
        };
        return Ok(restrict_database(client, scratch, owner).await? || changed);
    }
    let changed = match database_owner(client, scratch).await? {
        None => {
            execute(
                client,
                "create scratch database",
                &format!(
                    "CREATE DATABASE {} OWNER {}",
                    quote_ident(scratch),
                    quote_ident(owner)
                ),
            )
            .await?;
            true
        }
        Some(found) if found != owner => {
            return Err(UserError::Taken {
                database: scratch.to_string(),
                owner: found,
            });
        }
        Some(_) => false,
    };
    Ok(restrict_database(client, scratch, owner).await? || changed)
}

/// Drops the service's scratch database if it exists and is the owner's;
/// returns whether it dropped one.
pub async fn drop_scratch_database(
    client: &Client,
    owner: &str,
    scratch: &str,
    marker: Option<&Marker>,
) -> Result<bool, UserError> {
    validate_database_name(scratch)?;
    if let Some(marker) = marker {
        let owner_found = ours(check_role(client, marker, owner).await)?;
        if !ours(check_database(client, marker, scratch, owner, owner_found).await)?.is_ours() {
            return Ok(false);
        }
    } else if database_owner(client, scratch).await?.as_deref() != Some(owner) {
        return Ok(false);
    }
    execute(
        client,
        "drop scratch database",
        &format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            quote_ident(scratch)
        ),
    )
    .await?;
    Ok(true)
}
