//! Which ServiceDatabase holds a login name on a shared server.
//!
//! On a `DatabaseServer` the service's login, database, schema and Redis key
//! prefix are all named after [`shared_identifier`] of its namespace and
//! name, which is not one-to-one: `shop-a/b` and `shop/a-b` both give
//! `shop_a_b`. Two such ServiceDatabases on one server would share a login
//! and each other's data, so only one may hold the name: the one already
//! given its login there (its status says when), else the oldest, else the
//! first by namespace and name, so that every replica of the operator
//! decides alike. The other one is refused until the holder is gone, and its
//! deletion never drops or backs up the holder's data.
//!
//! One server is one `host:port`: two DatabaseServers that name the same
//! PostgreSQL are one server, so claims compare the addresses the
//! DatabaseServers resolve to, never the objects, and no DatabaseServer
//! gives priority over another. `spec.serverRef` is immutable (a CEL rule),
//! so a claim never moves to another server.
//!
//! The decision reads the operator's cache of ServiceDatabases. Two that are
//! created within the same instant may both be seen alone once; the later
//! reconcile still refuses the younger one, and the holder's next reconcile
//! sets its own password back, so the younger one's Secret stops working.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{Api, ResourceExt};

use crate::api::{DatabaseServer, Isolation, ServiceDatabase};
use crate::model::naming::shared_identifier;
use crate::model::server::server_identity;

/// Step 3 of a live pass: never touch a login or data that another
/// ServiceDatabase holds on the same shared server; retried with backoff,
/// and at once when the holder changes.
pub async fn check(
    sdb: &ServiceDatabase,
    ctx: &crate::controller::Context,
    db: &crate::model::database::ValidatedDatabase,
) -> Result<(), super::live::Stop> {
    let Some(server) = &db.server else {
        return Ok(());
    };
    let Some(holder) = holder(sdb, ctx).await else {
        return Ok(());
    };
    Err(super::live::Stop::Waiting(
        crate::model::database::Invalid {
            field: "metadata.name",
            reason: "NameConflict",
            message: format!(
                "on DatabaseServer {}/{} the login, database and key prefix {:?} made from this namespace and name are held by ServiceDatabase {holder}; rename this ServiceDatabase or place it on another server",
                server.namespace, server.name, db.username
            ),
        },
    ))
}

/// Who else holds `sdb`'s login name on its shared server, from the
/// controller's cache once it is complete; `None` before the controller
/// started. A holder the cache still has is looked up on the API server
/// first: its deletion is what wakes the others, and the cache may not have
/// seen it go yet.
pub async fn holder(sdb: &ServiceDatabase, ctx: &crate::controller::Context) -> Option<String> {
    let store = ctx.service_databases.get()?;
    store.wait_until_ready().await.ok()?;
    let all = store.state();
    let seniors = seniors(sdb, all.iter().map(AsRef::as_ref));
    if seniors.is_empty() {
        return None;
    }
    let mine = server_of(&ctx.client, sdb).await;
    for other in seniors {
        let theirs = server_of(&ctx.client, other).await;
        if !same_server(&mine, &theirs) {
            continue;
        }
        let (namespace, name) = (other.namespace().unwrap_or_default(), other.name_any());
        let api: Api<ServiceDatabase> = Api::namespaced(ctx.client.clone(), &namespace);
        match api.get_opt(&name).await {
            Ok(None) => continue,
            // Gone or not, an error keeps the claim where it was: safe.
            Ok(Some(_)) | Err(_) => return Some(format!("{namespace}/{name}")),
        }
    }
    None
}

/// The server a shared ServiceDatabase is placed on, as far as it can be
/// known: two DatabaseServers naming the same `host:port` are one server.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Server {
    /// `host:port` of the DatabaseServer the reference names.
    At(String),
    /// The DatabaseServer (namespace, name) could not be read.
    Unknown(String, String),
}

async fn server_of(client: &kube::Client, sdb: &ServiceDatabase) -> Server {
    let (namespace, name) = server_ref(sdb).unwrap_or_default();
    let api: Api<DatabaseServer> = Api::namespaced(client.clone(), &namespace);
    match api.get_opt(&name).await {
        Ok(Some(server)) => match server_identity(&server) {
            Some(at) => Server::At(at),
            None => Server::Unknown(namespace, name),
        },
        _ => Server::Unknown(namespace, name),
    }
}

/// Whether two placements may be on one server. What cannot be known
/// counts as the same server: refusing a newcomer is safe, handing it a
/// login that may be another's is not.
fn same_server(a: &Server, b: &Server) -> bool {
    match (a, b) {
        (Server::At(a), Server::At(b)) => a == b,
        _ => true,
    }
}

/// The others with `sdb`'s engine and login name on a shared server that
/// come before it, the holder first. Whether they are on the same server is
/// decided by [`holder`], which reads the DatabaseServers.
fn seniors<'a>(
    sdb: &ServiceDatabase,
    all: impl IntoIterator<Item = &'a ServiceDatabase>,
) -> Vec<&'a ServiceDatabase> {
    let Some(mine) = Placement::of(sdb) else {
        return Vec::new();
    };
    let mut seniors: Vec<&ServiceDatabase> = all
        .into_iter()
        .filter(|other| !same_object(other, sdb))
        .filter(|other| Placement::of(other).as_ref() == Some(&mine))
        .filter(|other| seniority(other) < seniority(sdb))
        .collect();
    seniors.sort_by_key(|other| seniority(other));
    seniors
}

/// The ServiceDatabases whose claim may change when `changed` appears,
/// changes or goes: the others with the same engine and login name on any
/// shared server (whether it is the same server is decided when they run).
pub fn rivals<'a>(
    changed: &ServiceDatabase,
    all: impl IntoIterator<Item = &'a ServiceDatabase>,
) -> Vec<&'a ServiceDatabase> {
    let Some(placement) = Placement::of(changed) else {
        return Vec::new();
    };
    all.into_iter()
        .filter(|other| !same_object(other, changed))
        .filter(|other| Placement::of(other).as_ref() == Some(&placement))
        .collect()
}

/// The name a shared ServiceDatabase takes on its server. The server is
/// not part of it: which DatabaseServer object was named does not matter,
/// only which server it reaches ([`Server`]).
#[derive(Debug, PartialEq, Eq)]
struct Placement {
    engine: crate::api::Engine,
    identifier: String,
}

impl Placement {
    fn of(sdb: &ServiceDatabase) -> Option<Placement> {
        if sdb.spec.isolation == Isolation::Dedicated {
            return None;
        }
        sdb.spec.server_ref.as_ref()?;
        let namespace = sdb.namespace()?;
        Some(Placement {
            engine: sdb.spec.engine,
            identifier: shared_identifier(&namespace, &sdb.name_any()),
        })
    }
}

/// (namespace, name) of the DatabaseServer `spec.serverRef` names.
fn server_ref(sdb: &ServiceDatabase) -> Option<(String, String)> {
    let server = sdb.spec.server_ref.as_ref()?;
    let namespace = server.namespace.clone().or_else(|| sdb.namespace())?;
    Some((namespace, server.name.clone()))
}

fn same_object(a: &ServiceDatabase, b: &ServiceDatabase) -> bool {
    a.namespace() == b.namespace() && a.name_any() == b.name_any()
}

/// One that was given its login on the server first (creation times have
/// whole seconds, and a GitOps sync creates many in one); then older first;
/// then by namespace and name.
fn seniority(sdb: &ServiceDatabase) -> (bool, Option<Time>, String, String) {
    let placed = sdb
        .status
        .as_ref()
        .is_some_and(|s| s.credentials_rotated_at.is_some());
    (
        !placed,
        sdb.creation_timestamp(),
        sdb.namespace().unwrap_or_default(),
        sdb.name_any(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The holder by the cache alone, as `namespace/name`.
    fn held_by<'a>(
        sdb: &ServiceDatabase,
        all: impl IntoIterator<Item = &'a ServiceDatabase>,
    ) -> Option<String> {
        seniors(sdb, all).into_iter().next().map(|other| {
            format!(
                "{}/{}",
                other.namespace().unwrap_or_default(),
                other.name_any()
            )
        })
    }

    fn sdb(namespace: &str, name: &str, created: &str, spec: &str) -> ServiceDatabase {
        let mut sdb: ServiceDatabase = serde_json::from_value(serde_json::json!({
            "apiVersion": "servicedb.dev/v1alpha1",
            "kind": "ServiceDatabase",
            "metadata": {"name": name, "namespace": namespace,
                         "uid": format!("{namespace}-{name}"),
                         "creationTimestamp": created},
            "spec": serde_yaml::from_str::<serde_json::Value>(spec).expect("spec"),
        }))
        .expect("a ServiceDatabase");
        sdb.metadata.namespace = Some(namespace.into());
        sdb
    }

    const SHARED: &str = "{engine: Postgres, isolation: Database, serverRef: {name: pg, namespace: infra}, owner: {podSelector: {}}}";

    #[test]
    fn the_older_of_two_services_with_the_same_login_name_holds_it() {
        let older = sdb("shop-a", "b", "2026-01-01T00:00:00Z", SHARED);
        let younger = sdb("shop", "a-b", "2026-01-02T00:00:00Z", SHARED);
        let all = [older.clone(), younger.clone()];
        assert_eq!(held_by(&older, &all), None);
        assert_eq!(held_by(&younger, &all).as_deref(), Some("shop-a/b"));
        assert_eq!(rivals(&older, &all).len(), 1);
    }

    #[test]
    fn one_already_given_its_login_keeps_it_against_an_older_newcomer() {
        let mut placed = sdb("shop", "a-b", "2026-01-02T00:00:00Z", SHARED);
        placed.status = Some(
            serde_json::from_value(serde_json::json!({
            "credentialsRotatedAt": "2026-01-02T00:00:01Z"}))
            .expect("status"),
        );
        let older = sdb("shop-a", "b", "2026-01-01T00:00:00Z", SHARED);
        let all = [placed.clone(), older.clone()];
        assert_eq!(held_by(&placed, &all), None);
        assert_eq!(held_by(&older, &all).as_deref(), Some("shop/a-b"));
    }

    #[test]
    fn equal_creation_times_are_decided_by_namespace_and_name() {
        let a = sdb("shop", "a-b", "2026-01-01T00:00:00Z", SHARED);
        let b = sdb("shop-a", "b", "2026-01-01T00:00:00Z", SHARED);
        let all = [a.clone(), b.clone()];
        assert_eq!(held_by(&a, &all), None);
        assert_eq!(held_by(&b, &all).as_deref(), Some("shop/a-b"));
    }

    #[test]
    fn other_engines_and_dedicated_instances_do_not_compete() {
        let me = sdb("shop", "a-b", "2026-01-02T00:00:00Z", SHARED);
        let other_engine = sdb(
            "shop-a",
            "b",
            "2026-01-01T00:00:00Z",
            "{engine: Redis, isolation: Database, serverRef: {name: pg, namespace: infra}, owner: {podSelector: {}}}",
        );
        let dedicated = sdb(
            "shop-a",
            "b",
            "2026-01-01T00:00:00Z",
            "{engine: Postgres, owner: {podSelector: {}}}",
        );
        for other in [other_engine, dedicated] {
            assert_eq!(held_by(&me, [&other, &me]), None, "{:?}", other.spec);
        }
        assert_eq!(held_by(&me, [&me]), None, "not held against itself");
    }

    #[test]
    fn a_claim_on_another_database_server_object_still_competes() {
        let me = sdb("shop", "a-b", "2026-01-02T00:00:00Z", SHARED);
        let other_object = sdb(
            "shop-a",
            "b",
            "2026-01-01T00:00:00Z",
            "{engine: Postgres, isolation: Database, serverRef: {name: pg2, namespace: infra}, owner: {podSelector: {}}}",
        );
        assert_eq!(
            held_by(&me, [&other_object, &me]).as_deref(),
            Some("shop-a/b"),
            "whether pg2 is pg's server is decided by their host:port"
        );
        assert_eq!(rivals(&other_object, [&me]).len(), 1);
    }

    #[test]
    fn servers_are_one_by_host_and_port_and_unknown_ones_are_assumed_one() {
        let at = |s: &str| Server::At(s.into());
        assert!(same_server(
            &at("pg.example.com:5432"),
            &at("pg.example.com:5432")
        ));
        assert!(!same_server(
            &at("pg.example.com:5432"),
            &at("pg.example.com:5433")
        ));
        let gone = Server::Unknown("infra".into(), "pg".into());
        assert!(
            same_server(&gone, &at("pg.example.com:5432")),
            "refusing is safe"
        );
    }
}
