//! Whole passes against the stand-in API server of
//! [`crate::test_support::ApiServer`]: the early stops, what the error
//! policy makes of each kind of failure, and a deletion policy branch. The
//! real API server tier (tests/e2e) runs the same passes end to end; these
//! pin down what is written and when the next pass comes.

use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use kube::runtime::controller::Action;
use serde_json::{Value, json};

use super::*;
use crate::test_support::{ApiServer, Recorded, fixture};

/// `shop/orders` (PostgreSQL, dedicated) with the finalizer, as a live
/// resource the controller has seen before; `spec` merged over the fixture's.
fn orders(spec: Value) -> ServiceDatabase {
    let mut sdb: ServiceDatabase = fixture("sdb-orders.yaml");
    let mut merged = serde_json::to_value(&sdb.spec).expect("spec");
    for (k, v) in spec.as_object().expect("object") {
        merged[k] = v.clone();
    }
    sdb.spec = serde_json::from_value(merged).expect("spec");
    sdb.metadata.finalizers = Some(vec![FINALIZER.into()]);
    sdb.metadata.resource_version = Some("7".into());
    sdb
}

/// Answers writes to the ServiceDatabase (its status, its finalizers) with
/// the object, as the API server does; the class `postgres` exists; lists
/// are empty; everything else is not found.
fn answers(sdb: &ServiceDatabase) -> crate::test_support::Answer {
    let object = serde_json::to_value(sdb).expect("sdb");
    let class =
        serde_json::to_value(fixture::<DatabaseClass>("class-postgres.yaml")).expect("class");
    Box::new(move |r: &Recorded| {
        if r.path.contains("/servicedatabases/orders") && r.method != "GET" {
            let mut object = object.clone();
            if let Some(status) = r.body.get("status") {
                object["status"] = status.clone();
            }
            return Some((StatusCode::OK, object));
        }
        if r.method == "GET" && r.path.ends_with("/databaseclasses/postgres") {
            return Some((StatusCode::OK, class.clone()));
        }
        if r.method == "GET" && r.path.contains("labelSelector") {
            return Some((
                StatusCode::OK,
                json!({"apiVersion": "v1", "kind": "List", "metadata": {}, "items": []}),
            ));
        }
        None
    })
}

fn condition<'a>(status: &'a Value, type_: &str) -> &'a Value {
    status["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == type_))
        .unwrap_or_else(|| panic!("no {type_} in {status}"))
}

#[tokio::test]
async fn a_missing_class_is_said_in_the_status_once_and_waits_for_a_change() {
    let sdb = orders(json!({"className": "gold"}));
    let (ctx, api) = ApiServer::start(answers(&sdb));
    let error = reconcile(Arc::new(sdb.clone()), ctx.clone())
        .await
        .expect_err("the class does not exist");
    assert_eq!(error.kind(), Kind::InvalidSpec, "{error}");
    // Only the status is written: no child, no finalizer change.
    let writes = api.writes();
    assert_eq!(writes.len(), 1, "{writes:#?}");
    assert!(
        writes[0].path.contains("/servicedatabases/orders/status"),
        "{writes:#?}"
    );
    let status = &writes[0].body["status"];
    let valid = condition(status, "SpecValid");
    assert_eq!(valid["status"], "False");
    assert_eq!(valid["reason"], "ClassNotFound");
    assert!(
        valid["message"]
            .as_str()
            .unwrap_or_default()
            .contains("spec.className"),
        "{valid}"
    );
    assert_eq!(status["phase"], "Failed");
    // The Event says it once; nothing is retried before a change arrives
    // (the DatabaseClass watch brings a new class), but for the slow resync.
    let events: Vec<_> = api
        .requests()
        .into_iter()
        .filter(|r| r.path.contains("/events"))
        .collect();
    assert_eq!(events.len(), 1, "{events:#?}");
    assert_eq!(events[0].body["reason"], "ClassNotFound");
    assert_eq!(events[0].body["type"], "Warning");
    let action = error_policy(Arc::new(sdb), &error, ctx);
    assert_eq!(action, Action::requeue(live::RESYNC));
}

#[tokio::test]
async fn a_server_that_is_not_there_yet_is_waited_for_with_backoff() {
    let sdb = orders(json!({"className": "postgres", "isolation": "Database",
        "serverRef": {"name": "shared"}, "storage": null}));
    let (ctx, api) = ApiServer::start(answers(&sdb));
    let error = reconcile(Arc::new(sdb.clone()), ctx.clone())
        .await
        .expect_err("the server does not exist");
    assert_eq!(error.kind(), Kind::Waiting, "{error}");
    let writes = api.writes();
    assert_eq!(writes.len(), 1, "only the status: {writes:#?}");
    let ready = condition(&writes[0].body["status"], "Ready");
    assert_eq!(ready["reason"], "ServerNotFound");
    // Not the user's mistake to wait on: retried, sooner each time at
    // first, and at once reset by a pass that succeeds.
    let sdb = Arc::new(sdb);
    let first = error_policy(sdb.clone(), &error, ctx.clone());
    let second = error_policy(sdb.clone(), &error, ctx.clone());
    assert_eq!(first, Action::requeue(Duration::from_secs(1)));
    assert_eq!(second, Action::requeue(Duration::from_secs(2)));
}

#[tokio::test]
async fn a_server_that_does_not_answer_is_retried_no_later_than_the_gate_reopens() {
    let sdb = Arc::new(orders(json!({})));
    let (ctx, _api) = ApiServer::start(answers(&sdb));
    let down = Error::Provision(provision::Error::Connect {
        server: "platform/shared (pg:5432)".into(),
        message: "connection refused".into(),
    });
    let cap = crate::controller::server_gate::DOWN_FOR.mul_f64(1.5);
    let mut waits = Vec::new();
    for _ in 0..10 {
        waits.push(requeue_of(error_policy(sdb.clone(), &down, ctx.clone())));
    }
    assert!(waits.iter().all(|w| *w <= cap), "{waits:?}");
    assert!(waits.last() > waits.first(), "backs off: {waits:?}");
    // A busy server is no failure of this database: a moment, no backoff.
    let busy = requeue_of(error_policy(sdb.clone(), &Error::ServerBusy, ctx.clone()));
    assert!(busy < Duration::from_secs(3), "{busy:?}");
}

/// The delay of a requeue, read from its Debug form (`Action` keeps it
/// private): `Action { requeue_after: Some(1.5s) }`.
fn requeue_of(action: Action) -> Duration {
    let text = format!("{action:?}");
    let inner = text
        .split_once("Some(")
        .and_then(|(_, rest)| rest.split_once(')'))
        .map(|(inner, _)| inner)
        .unwrap_or_else(|| panic!("no requeue: {text}"));
    let (number, scale) = if let Some(ms) = inner.strip_suffix("ms") {
        (ms, 1e-3)
    } else if let Some(us) = inner.strip_suffix("µs") {
        (us, 1e-6)
    } else {
        (inner.strip_suffix('s').unwrap_or(inner), 1.0)
    };
    Duration::from_secs_f64(number.parse::<f64>().expect("a number") * scale)
}

#[tokio::test]
async fn deleting_with_delete_removes_only_its_own_children_and_then_the_finalizer() {
    let mut sdb = orders(json!({"deletionPolicy": "Delete"}));
    sdb.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        k8s_openapi::jiff::Timestamp::now(),
    ));
    let (ctx, api) = ApiServer::start(answers(&sdb));
    let action = reconcile(Arc::new(sdb), ctx)
        .await
        .expect("nothing left to remove");
    assert_eq!(action, Action::await_change());
    let writes = api.writes();
    // Its children were looked for (by its instance label), none exists:
    // nothing is deleted; the finalizer goes.
    let lists = api
        .requests()
        .into_iter()
        .filter(|r| r.path.contains("labelSelector"))
        .count();
    assert!(
        lists >= 6,
        "every kind of child looked for: {:#?}",
        api.requests()
    );
    assert!(writes.iter().all(|w| w.method != "DELETE"), "{writes:#?}");
    let last = writes.last().expect("the finalizer's removal");
    assert_eq!(last.method, "PATCH");
    assert!(last.path.contains("/servicedatabases/orders"), "{last:?}");
    assert!(last.body.to_string().contains("finalizers"), "{last:?}");
}

#[tokio::test]
async fn deleting_with_retain_orphans_what_stays_and_then_removes_the_finalizer() {
    let mut sdb = orders(json!({"deletionPolicy": "Retain"}));
    sdb.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        k8s_openapi::jiff::Timestamp::now(),
    ));
    let (ctx, api) = ApiServer::start(answers(&sdb));
    let action = reconcile(Arc::new(sdb), ctx)
        .await
        .expect("nothing running to remove");
    assert_eq!(action, Action::await_change());
    let writes = api.writes();
    assert!(writes.iter().all(|w| w.method != "DELETE"), "{writes:#?}");
    assert_eq!(writes.len(), 1, "only the finalizer's removal: {writes:#?}");
    // Its Secrets and volumes were looked for, to be kept.
    let looked: Vec<_> = api.requests().into_iter().map(|r| r.path).collect();
    assert!(
        looked.iter().any(|p| p.contains("/secrets?")),
        "{looked:#?}"
    );
    assert!(
        looked
            .iter()
            .any(|p| p.contains("/persistentvolumeclaims?")),
        "{looked:#?}"
    );
}

#[tokio::test]
async fn deleting_with_snapshot_but_no_backups_keeps_the_data_and_says_why() {
    let mut sdb = orders(json!({"deletionPolicy": "Snapshot", "className": "postgres"}));
    sdb.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        k8s_openapi::jiff::Timestamp::now(),
    ));
    let (ctx, api) = ApiServer::start(answers(&sdb));
    let action = reconcile(Arc::new(sdb), ctx)
        .await
        .expect("retained instead");
    assert_eq!(action, Action::await_change());
    let requests = api.requests();
    let event = requests
        .iter()
        .find(|r| r.path.contains("/events"))
        .expect("an Event");
    assert_eq!(event.body["reason"], "SnapshotUnavailable");
    assert_eq!(event.body["type"], "Warning");
    let note = event.body["note"].as_str().unwrap_or_default();
    assert!(
        note.contains("orders-db") && note.contains("retained"),
        "{note}"
    );
    // No final backup was made and nothing was deleted.
    let writes = api.writes();
    assert!(
        writes
            .iter()
            .all(|w| w.method != "DELETE" && !w.path.contains("/databasebackups")),
        "{writes:#?}"
    );
}
