//! `spec.postgres.parameters`: carried to the instance manager in the admin
//! Secret; those PostgreSQL reads at start only roll the pod.

use super::*;
use crate::engine::postgres_parameters::{RESTART_ANNOTATION, SECRET_KEY};

fn with_parameters(parameters: &[(&str, &str)]) -> Result<Flat, crate::model::database::Invalid> {
    let mut sdb: ServiceDatabase = fixture("sdb-orders.yaml");
    sdb.spec.postgres = Some(crate::api::PostgresSpec {
        parameters: parameters
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    });
    let db = validate(&sdb, &bare_class(sdb.spec.engine), None)?;
    let owner = sdb.controller_owner_ref(&()).unwrap();
    let creds = Credentials::single(&db, "admin-pw", "app-pw");
    Ok(flat(children(&db, &creds, &facts(), &owner, None)))
}

fn restart_annotation(c: &Flat) -> Option<String> {
    c.statefulset
        .spec
        .clone()
        .unwrap()
        .template
        .metadata
        .unwrap()
        .annotations
        .unwrap_or_default()
        .get(RESTART_ANNOTATION)
        .cloned()
}

fn rendered(c: &Flat) -> Option<String> {
    c.admin_secret
        .data
        .clone()
        .unwrap_or_default()
        .get(SECRET_KEY)
        .map(|v| String::from_utf8(v.0.clone()).unwrap())
}

#[test]
fn parameters_ride_in_the_admin_secret_and_only_restart_ones_roll_the_pod() {
    let none = with_parameters(&[]).unwrap();
    assert_eq!(rendered(&none), None);
    assert_eq!(restart_annotation(&none), None, "no parameters, no change");

    let reloadable = with_parameters(&[("work_mem", "16MB")]).unwrap();
    assert!(
        rendered(&reloadable)
            .unwrap()
            .contains("work_mem = '16MB'\n")
    );
    assert_eq!(
        restart_annotation(&reloadable),
        None,
        "work_mem is reloaded: the pod template stays as it was"
    );
    assert_eq!(
        reloadable.statefulset.spec, none.statefulset.spec,
        "a reloadable parameter leaves the StatefulSet alone"
    );

    let first = with_parameters(&[("work_mem", "16MB"), ("max_connections", "200")]).unwrap();
    let other_reload =
        with_parameters(&[("work_mem", "32MB"), ("max_connections", "200")]).unwrap();
    let other_restart =
        with_parameters(&[("work_mem", "16MB"), ("max_connections", "300")]).unwrap();
    assert!(restart_annotation(&first).is_some());
    assert_eq!(
        restart_annotation(&first),
        restart_annotation(&other_reload)
    );
    assert_ne!(
        restart_annotation(&first),
        restart_annotation(&other_restart)
    );
}

#[test]
fn a_parameter_servicedb_manages_is_refused_naming_the_field() {
    let Err(invalid) = with_parameters(&[("listen_addresses", "*")]) else {
        panic!("listen_addresses must be refused");
    };
    assert_eq!(invalid.field, "spec.postgres.parameters");
    assert_eq!(invalid.reason, "ParameterRefused");
    assert!(
        invalid.message.contains("listen_addresses"),
        "{}",
        invalid.message
    );
}

fn redis_with(
    memory: serde_json::Value,
    resources: Option<serde_json::Value>,
) -> Result<Flat, crate::model::database::Invalid> {
    let mut sdb: ServiceDatabase = fixture("sdb-cart-redis.yaml");
    sdb.spec.redis = Some(serde_json::from_value(memory).unwrap());
    sdb.spec.resources = resources.map(|r| serde_json::from_value(r).unwrap());
    let db = validate(&sdb, &bare_class(sdb.spec.engine), None)?;
    let owner = sdb.controller_owner_ref(&()).unwrap();
    let creds = Credentials::single(&db, "admin-pw", "app-pw");
    Ok(flat(children(&db, &creds, &facts(), &owner, None)))
}

fn admin_key(c: &Flat, key: &str) -> Option<String> {
    c.admin_secret
        .data
        .clone()
        .unwrap_or_default()
        .get(key)
        .map(|v| String::from_utf8(v.0.clone()).unwrap())
}

#[test]
fn redis_memory_settings_ride_in_the_admin_secret_below_the_memory_limit() {
    use crate::engine::redis::{MAXMEMORY_KEY, MAXMEMORY_POLICY_KEY};
    let limited = Some(serde_json::json!({"limits": {"memory": "512Mi"}}));
    let set = redis_with(
        serde_json::json!({"maxmemory": "256Mi", "maxmemoryPolicy": "allkeys-lru"}),
        limited.clone(),
    )
    .unwrap();
    assert_eq!(admin_key(&set, MAXMEMORY_KEY).as_deref(), Some("268435456"));
    assert_eq!(
        admin_key(&set, MAXMEMORY_POLICY_KEY).as_deref(),
        Some("allkeys-lru")
    );
    let unset = redis_with(serde_json::json!({}), limited.clone()).unwrap();
    assert_eq!(admin_key(&unset, MAXMEMORY_KEY), None);
    assert_eq!(admin_key(&unset, MAXMEMORY_POLICY_KEY), None);
    assert_eq!(
        set.statefulset.spec, unset.statefulset.spec,
        "applied live: the pod template does not change"
    );

    let Err(invalid) = redis_with(serde_json::json!({"maxmemory": "1Gi"}), limited) else {
        panic!("a maxmemory above the memory limit must be refused");
    };
    assert_eq!(invalid.field, "spec.redis.maxmemory");
    assert_eq!(invalid.reason, "MaxmemoryAboveLimit");
    assert!(invalid.message.contains("1Gi"), "{}", invalid.message);
}
