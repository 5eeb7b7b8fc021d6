//! The service's logins: the rotation plan from what the credentials Secret
//! records, the logins made (or checked) on a shared server, and the switch
//! to a new login once it works. The Secret itself is written with the
//! other children.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::runtime::events::{Event as KubeEvent, EventType};
use kube::{Resource, ResourceExt};

use super::live::Stop;
use super::{Error, provision, restore, trigger};
use crate::api::{Engine, ServiceDatabase};
use crate::controller::Context;
use crate::controller::dereference::Dereferenced;
use crate::controller::server_gate::{Closed, Pass, key};
use crate::model::database::{Invalid, ValidatedDatabase};
use crate::model::rotation;
use crate::model::server::ServerFacts;

/// How long a successful provisioning on a shared server stands for passes
/// with the same inputs: less than [`super::live::SHARED_RESYNC`], so that
/// the periodic re-check always goes to the server.
const PROVISIONED_FRESH: Duration = Duration::from_secs(50);
/// How long one reconcile may work on a shared server, every connection
/// and statement together; each connection has its own shorter deadline.
const SERVER_WORK_DEADLINE: Duration = Duration::from_secs(30);
/// How long a reconcile waits for a place on a busy server before it is
/// turned away (and holds its reconcile slot meanwhile).
const SERVER_BUSY_WAIT: Duration = Duration::from_secs(2);
/// When a reconcile turned away by a busy server tries again.
pub const SERVER_BUSY_RETRY: Duration = Duration::from_secs(1);

/// The logins to write and what the server said while making them.
pub struct Credentialed {
    pub plan: rotation::Plan,
    /// The data on the shared server was taken over from an earlier
    /// ServiceDatabase of the same namespace and name.
    pub taken_over: bool,
}

/// How the service's logins rotate, from the spec and a request annotation.
pub fn policy<'a>(sdb: &'a ServiceDatabase, db: &'a ValidatedDatabase) -> rotation::Policy<'a> {
    rotation::Policy {
        owner: &db.username,
        same_user: db.engine == Engine::Redis,
        rotate_every: db.rotate_every,
        grace: db.grace_period,
        request: sdb
            .annotations()
            .get(rotation::ROTATE_ANNOTATION)
            .map(String::as_str),
    }
}

/// Plans the logins, makes them on a shared server, and switches to a new
/// login once it works.
pub async fn ensure(
    sdb: &ServiceDatabase,
    ctx: &Context,
    db: &ValidatedDatabase,
    found: &Dereferenced,
    policy: &rotation::Policy<'_>,
    now: &Time,
) -> Result<Credentialed, Stop> {
    let mut plan = rotation::plan(
        &found.recorded,
        policy,
        now.0,
        &mut crate::password::generate,
    );
    // Held while this reconcile works on the shared server (login checks
    // included), so that one server's tenants cannot take every slot.
    let mut pass = None;
    let mut taken_over = false;
    if let Some(server) = &db.server {
        let (entered, provisioned) = on_shared_server(sdb, ctx, db, server, &plan).await?;
        pass = entered;
        taken_over = provisioned.taken_over;
    }
    if let Some(next) = &plan.logins.next {
        // On a dedicated instance the instance manager makes the new login
        // from the Secret; switch only once it works.
        let works = tokio::time::timeout(SERVER_WORK_DEADLINE, provision::login_works(db, next));
        if works.await.unwrap_or(false) {
            plan = rotation::promote(plan, policy, now.0);
            announce_rotation(sdb, &plan, ctx).await;
        } else {
            tracing::info!(username = %next.username, "waiting for the new login to work before switching to it");
        }
    } else if plan.deferred {
        tracing::info!("a credential rotation waits for the previous grace period to end");
    }
    drop(pass);
    Ok(Credentialed { plan, taken_over })
}

/// Every login must work (and a retired one must not) before the Secret
/// says so. A pass with the inputs that succeeded a moment ago (another
/// trigger than the user's) leaves the server alone; the periodic re-check,
/// later than that, repairs what was changed there by hand.
async fn on_shared_server(
    sdb: &ServiceDatabase,
    ctx: &Context,
    db: &ValidatedDatabase,
    server: &ServerFacts,
    plan: &rotation::Plan,
) -> Result<(Option<Pass>, provision::Provisioned), Stop> {
    // Until a requested restore completed, the login the restore Job uses
    // may load its keys (Redis: RESTORE).
    let restoring = db.restore_from.is_some() && !restore::restored(sdb);
    let Some(marker) = provision::marker(sdb, server, true) else {
        return Err(Stop::Failed(Error::Invalid(Invalid {
            field: "metadata",
            reason: "NoUid",
            message: "object has no uid".into(),
        })));
    };
    let inputs =
        trigger::provision_inputs(sdb, server, &plan.logins, restoring, marker.adopt_unmarked);
    // Never skipped while a restore is pending: whether the data was taken
    // over from a predecessor is learnt on the server.
    if !restoring
        && ctx
            .provisioned
            .is_current(&marker.uid, inputs, PROVISIONED_FRESH)
    {
        return Ok((None, provision::Provisioned::default()));
    }
    let mut pass = None;
    let provisioned = match enter_server(server, ctx).await {
        Ok(entered) => {
            pass = Some(entered);
            on_server(
                server,
                ctx,
                provision::ensure(db, server, &marker, &plan.logins, restoring, &ctx.sessions),
            )
            .await
        }
        Err(e) => Err(e),
    };
    match &provisioned {
        Ok(_) => ctx.provisioned.done(&marker.uid, inputs),
        Err(_) => ctx.provisioned.forget(&marker.uid),
    }
    match provisioned {
        Ok(provisioned) => Ok((pass, provisioned)),
        // A role, database, schema or ACL user of this service's names that
        // servicedb did not make for it: never adopted. Nothing was changed
        // and no Secret is written; retried with backoff.
        Err(Error::Provision(conflict @ provision::Error::Conflict { .. })) => {
            Err(Stop::Waiting(Invalid {
                field: "metadata.name",
                reason: "NameConflict",
                message: conflict.to_string(),
            }))
        }
        Err(Error::Provision(error)) => Err(Stop::ServerUnavailable {
            db: Box::new(db.clone()),
            error,
        }),
        Err(e) => Err(Stop::Failed(e)),
    }
}

/// A Normal Event when the Secret switched to a new login.
async fn announce_rotation(sdb: &ServiceDatabase, plan: &rotation::Plan, ctx: &Context) {
    let until = plan
        .previous_valid_until
        .map(|t| t.to_string())
        .unwrap_or_default();
    tracing::info!(username = %plan.logins.current.username, previous_valid_until = %until, "credentials rotated");
    let event = KubeEvent {
        type_: EventType::Normal,
        reason: "CredentialsRotated".into(),
        note: Some(format!(
            "the Secret now holds login {}; the previous login works until {until}",
            plan.logins.current.username
        )),
        action: "Rotate".into(),
        secondary: None,
    };
    crate::controller::publish(&ctx.recorder, &event, &sdb.object_ref(&())).await;
}

/// The gate's pass to work on `server`: refused while the server is known
/// not to answer (the status says so) or while as many reconciles as the
/// limit allows work on it (tried again in a moment).
pub async fn enter_server(server: &ServerFacts, ctx: &Context) -> Result<Pass, Error> {
    match ctx
        .servers
        .enter_within(
            &key(&server.host, server.port),
            &server_via(server),
            SERVER_BUSY_WAIT,
        )
        .await
    {
        Ok(pass) => Ok(pass),
        Err(Closed::Busy) => Err(Error::ServerBusy),
        Err(Closed::Down(message)) => Err(Error::Provision(provision::Error::Connect {
            server: server_display(server),
            message: format!("not tried again yet, the server failed a moment ago: {message}"),
        })),
    }
}

/// Runs `work` on `server` within [`SERVER_WORK_DEADLINE`] and tells the
/// gate whether the server answered.
pub async fn on_server<T>(
    server: &ServerFacts,
    ctx: &Context,
    work: impl std::future::Future<Output = Result<T, provision::Error>>,
) -> Result<T, Error> {
    let via = server_via(server);
    let result = tokio::time::timeout(SERVER_WORK_DEADLINE, work)
        .await
        .unwrap_or_else(|_| {
            Err(provision::Error::Connect {
                server: server_display(server),
                message: format!(
                    "the server did not finish within {}s",
                    SERVER_WORK_DEADLINE.as_secs()
                ),
            })
        });
    match &result {
        Err(provision::Error::Connect { message, .. }) => ctx.servers.down(&via, message),
        _ => ctx.servers.up(&via),
    }
    Ok(result?)
}

/// The DatabaseServer's `namespace/name`: what the gate knows down.
fn server_via(server: &ServerFacts) -> String {
    format!("{}/{}", server.namespace, server.name)
}

/// `namespace/name (host:port)`, as provisioning errors name a server.
fn server_display(server: &ServerFacts) -> String {
    format!(
        "{}/{} ({}:{})",
        server.namespace, server.name, server.host, server.port
    )
}
