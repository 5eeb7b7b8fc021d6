//! Access ends when admission ends. A ServiceDatabase whose DatabaseServer
//! no longer admits its namespace (`spec.allowedNamespaces` changed, or the
//! namespace lost a label) keeps its data there, but its logins are
//! disabled ([`crate::engine::suspend`]) and its status says so, naming the
//! server. Admitting the namespace again lets the normal provisioning switch
//! them back on; deleting the ServiceDatabase with `deletionPolicy: Delete`
//! still drops what it owns there, with the server's credentials.
//!
//! Only logins made from this ServiceDatabase's own name are touched: its
//! login, and its rotation twin when its credentials Secret lists it (never
//! any other name a namespace could write into that Secret), nothing while
//! another ServiceDatabase holds the name ([`super::claim`]), and nothing
//! unless it was given its login there (its status says when): a
//! ServiceDatabase refused from the start never reaches the server, neither
//! to disable nor, on deletion, to drop.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::runtime::controller::Action;

use super::{Error, claim, provision, status};
use crate::api::ServiceDatabase;
use crate::controller::Context;
use crate::controller::dereference;
use crate::model::database as validate;
use crate::model::database::Invalid;

/// Disables the service's logins on a server that no longer admits its
/// namespace, and reports `not_admitted` with what was done.
pub async fn end(
    sdb: &ServiceDatabase,
    ctx: &Context,
    not_admitted: Invalid,
    now: &Time,
) -> Result<Action, Error> {
    let outcome = suspend(sdb, ctx).await;
    let message = match &outcome {
        Ok(logins) if logins.is_empty() => {
            format!("{}; it has no login there", not_admitted.message)
        }
        Ok(logins) => format!(
            "{}; its logins there ({}) are disabled until the namespace is admitted again; its data stays",
            not_admitted.message,
            logins.join(", ")
        ),
        Err(e) => format!(
            "{}; disabling its logins there failed, retried: {e}",
            not_admitted.message
        ),
    };
    let invalid = Invalid {
        message,
        ..not_admitted
    };
    let status = status::compute(sdb, &status::Outcome::Invalid(&invalid), now);
    status::update(&ctx.client, &ctx.recorder, sdb, status, Some(&invalid)).await?;
    match outcome {
        // Admission changes on the DatabaseServer or the Namespace, which
        // do not wake this resource: looked at again with backoff, as a
        // server that does not exist yet is.
        Ok(_) => Err(Error::Waiting(invalid)),
        // Retried with backoff until the logins are off.
        Err(e) => Err(e),
    }
}

/// The logins disabled (those that exist on the server).
async fn suspend(sdb: &ServiceDatabase, ctx: &Context) -> Result<Vec<String>, Error> {
    if !was_placed(sdb) || claim::holder(sdb, ctx).await.is_some() {
        // The name is another ServiceDatabase's: this one has nothing there.
        return Ok(Vec::new());
    }
    let found = dereference::dereference_ignoring_admission(&ctx.client, sdb).await?;
    let db =
        validate::validate(sdb, &found.class, found.server.as_ref()).map_err(Error::Invalid)?;
    let Some(server) = &db.server else {
        return Ok(Vec::new());
    };
    let Some(marker) = provision::marker(sdb, server, false) else {
        return Ok(Vec::new());
    };
    // The own login, and the twin (of the old or the new form) while the
    // Secret lists it. Other names a Secret may have been edited to list
    // are not the service's and are never touched.
    use crate::engine::logins::{legacy_twin, twin};
    let recorded = &found.recorded;
    let own = [twin(&db.username), legacy_twin(&db.username)];
    let mut logins = vec![db.username.clone()];
    for login in [&recorded.current, &recorded.next, &recorded.previous]
        .into_iter()
        .flatten()
    {
        if own.contains(&login.username) && !logins.contains(&login.username) {
            logins.push(login.username.clone());
        }
    }
    Ok(provision::suspend(&db, server, &marker, &logins).await?)
}

/// What deletion reads: a ServiceDatabase that was given its login on the
/// server drops what it owns there whether or not its namespace is still
/// admitted; one that never was reaches the server only while admitted.
pub async fn dereference_for_deletion(
    client: &kube::Client,
    sdb: &ServiceDatabase,
) -> Result<dereference::Dereferenced, dereference::Error> {
    if was_placed(sdb) {
        dereference::dereference_ignoring_admission(client, sdb).await
    } else {
        dereference::dereference(client, sdb).await
    }
}

/// Whether the ServiceDatabase was given its login on its server.
fn was_placed(sdb: &ServiceDatabase) -> bool {
    sdb.status
        .as_ref()
        .is_some_and(|s| s.credentials_rotated_at.is_some())
}
