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
//! The decision reads the operator's cache of ServiceDatabases. Two that are
//! created within the same instant may both be seen alone once; the later
//! reconcile still refuses the younger one, and the holder's next reconcile
//! sets its own password back, so the younger one's Secret stops working.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{Api, ResourceExt};

use super::validate::shared_identifier;
use crate::api::{Isolation, ServiceDatabase};

/// Who else holds `sdb`'s login name on its shared server, from the
/// controller's cache once it is complete; `None` before the controller
/// started. A holder the cache still has is looked up on the API server
/// first: its deletion is what wakes the others, and the cache may not have
/// seen it go yet.
pub async fn holder(sdb: &ServiceDatabase, ctx: &crate::controller::Context) -> Option<String> {
    let store = ctx.service_databases.get()?;
    store.wait_until_ready().await.ok()?;
    let all = store.state();
    for (namespace, name) in seniors(sdb, all.iter().map(AsRef::as_ref)) {
        let api: Api<ServiceDatabase> = Api::namespaced(ctx.client.clone(), &namespace);
        match api.get_opt(&name).await {
            Ok(None) => continue,
            // Gone or not, an error keeps the claim where it was: safe.
            Ok(Some(_)) | Err(_) => return Some(format!("{namespace}/{name}")),
        }
    }
    None
}

/// The others with `sdb`'s login name on its server that come before it,
/// the holder first, as (namespace, name).
fn seniors<'a>(
    sdb: &ServiceDatabase,
    all: impl IntoIterator<Item = &'a ServiceDatabase>,
) -> Vec<(String, String)> {
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
        .into_iter()
        .map(|other| (other.namespace().unwrap_or_default(), other.name_any()))
        .collect()
}

/// The ServiceDatabases whose claim may change when `changed` appears,
/// changes or goes: the others with the same login name on the same server.
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

/// Where a shared ServiceDatabase lives and under which name.
#[derive(Debug, PartialEq, Eq)]
struct Placement {
    engine: crate::api::Engine,
    server_namespace: String,
    server: String,
    identifier: String,
}

impl Placement {
    fn of(sdb: &ServiceDatabase) -> Option<Placement> {
        if sdb.spec.isolation == Isolation::Dedicated {
            return None;
        }
        let server = sdb.spec.server_ref.as_ref()?;
        let namespace = sdb.namespace()?;
        Some(Placement {
            engine: sdb.spec.engine,
            server_namespace: server.namespace.clone().unwrap_or(namespace.clone()),
            server: server.name.clone(),
            identifier: shared_identifier(&namespace, &sdb.name_any()),
        })
    }
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
        seniors(sdb, all)
            .into_iter()
            .next()
            .map(|(namespace, name)| format!("{namespace}/{name}"))
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
    fn other_servers_engines_and_dedicated_instances_do_not_compete() {
        let me = sdb("shop", "a-b", "2026-01-02T00:00:00Z", SHARED);
        let other_server = sdb(
            "shop-a",
            "b",
            "2026-01-01T00:00:00Z",
            "{engine: Postgres, isolation: Database, serverRef: {name: pg2, namespace: infra}, owner: {podSelector: {}}}",
        );
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
        for other in [other_server, other_engine, dedicated] {
            assert_eq!(held_by(&me, [&other, &me]), None, "{:?}", other.spec);
        }
        assert_eq!(held_by(&me, [&me]), None, "not held against itself");
    }
}
