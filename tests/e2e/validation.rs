//! Bad input is refused with a message naming the field: by the API server
//! (schema and CEL) before it is stored, or by the controller (against the
//! class) as a condition and an Event.

use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Event;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::core::DynamicObject;
use kube::discovery::ApiResource;
use kube::{Api, Resource};
use serde_json::{Value, json};
use servicedb::api::{Phase, ServiceDatabase};

use crate::support::harness::{Env, wait_for};
use crate::support::objects::get_when;
use crate::support::objects::wait_phase;

fn sdb(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "servicedb.dev/v1alpha1", "kind": "ServiceDatabase", "metadata": {"name": name}, "spec": spec})
}

fn base() -> Value {
    json!({"engine": "Postgres", "owner": {"podSelector": {"matchLabels": {"app": "x"}}}})
}

fn with(mut v: Value, patch: Value) -> Value {
    if let (Value::Object(a), Value::Object(b)) = (&mut v, patch) {
        a.extend(b);
    }
    v
}

/// The `SpecValid` condition of `name`, once it is `Failed`.
async fn spec_valid_of_failed(
    api: &Api<ServiceDatabase>,
    name: &str,
) -> k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
    let failed = wait_phase(api, name, Phase::Failed).await;
    failed
        .status
        .expect("status")
        .conditions
        .into_iter()
        .find(|c| c.type_ == "SpecValid")
        .expect("the SpecValid condition")
}

async fn create_error(api: &Api<DynamicObject>, obj: Value) -> String {
    let obj: DynamicObject = serde_json::from_value(obj).expect("object");
    match api.create(&PostParams::default(), &obj).await {
        Ok(_) => panic!(
            "the API server accepted an invalid ServiceDatabase {}",
            obj.metadata.name.unwrap_or_default()
        ),
        Err(kube::Error::Api(e)) => {
            assert_eq!(e.code, 422, "rejected as invalid: {e:?}");
            e.message
        }
        Err(e) => panic!("unexpected error: {e}"),
    }
}

#[tokio::test]
async fn the_api_server_rejects_invalid_manifests_naming_the_field() {
    let env = Env::new("invalid").await;
    let ar = ApiResource::erase::<ServiceDatabase>(&());
    let api: Api<DynamicObject> = Api::namespaced_with(env.client.clone(), &env.ns, &ar);
    let cases: Vec<(&str, Value, &[&str])> = vec![
        (
            "no-server",
            with(base(), json!({"isolation": "Database"})),
            &["serverRef", "required when isolation is Database or Schema"],
        ),
        (
            "schema-redis",
            with(
                base(),
                json!({"engine": "Redis", "isolation": "Schema", "serverRef": {"name": "shared"}}),
            ),
            &["spec.isolation", "only available for engine Postgres"],
        ),
        (
            "bad-size",
            with(base(), json!({"storage": {"size": "lots"}})),
            &["spec.storage.size", "quantity"],
        ),
        (
            "bad-cron",
            with(
                base(),
                json!({"backup": {"schedule": "every night", "destination": {"volume": {"claimName": "b"}}}}),
            ),
            &["spec.backup.schedule", "cron"],
        ),
        (
            "bad-max-age",
            with(
                base(),
                json!({"backup": {"schedule": "@daily", "retention": {"maxAge": "30d"}, "destination": {"volume": {"claimName": "b"}}}}),
            ),
            &["spec.backup.retention.maxAge", "at least 1h"],
        ),
        (
            "bad-rotation",
            with(base(), json!({"credentials": {"rotateEvery": "5m"}})),
            &["spec.credentials.rotateEvery", "at least 1h"],
        ),
        (
            "bad-engine",
            with(base(), json!({"engine": "MySQL"})),
            &["spec.engine", "Unsupported value"],
        ),
        (
            "no-owner",
            json!({"engine": "Postgres"}),
            &["spec.owner", "Required value"],
        ),
        (
            "two-bootstraps",
            with(
                base(),
                json!({"bootstrap": {"fromBackup": {"name": "b"}, "fromArchive": {"destination": {"volume": {"claimName": "b"}}}}}),
            ),
            &["spec.bootstrap", "one of fromBackup or fromArchive"],
        ),
        (
            "archive-backup-and-before",
            with(
                base(),
                json!({"bootstrap": {"fromArchive": {"destination": {"volume": {"claimName": "b"}}, "backup": "b1", "before": "2026-12-01T00:00:00Z"}}}),
            ),
            &["spec.bootstrap.fromArchive", "backup or before, not both"],
        ),
        (
            "archive-bad-before",
            with(
                base(),
                json!({"bootstrap": {"fromArchive": {"destination": {"volume": {"claimName": "b"}}, "before": "yesterday"}}}),
            ),
            &["spec.bootstrap.fromArchive.before", "RFC 3339"],
        ),
        (
            "archive-bad-source",
            with(
                base(),
                json!({"bootstrap": {"fromArchive": {"destination": {"volume": {"claimName": "b"}}, "source": "orders"}}}),
            ),
            &["spec.bootstrap.fromArchive.source", "namespace/name"],
        ),
        (
            "two-destinations",
            with(
                base(),
                json!({"backup": {"schedule": "@daily", "destination": {"volume": {"claimName": "b"}, "s3": {"bucket": "bkt", "credentialsSecret": "s"}}}}),
            ),
            &["spec.backup.destination", "exactly one of s3 or volume"],
        ),
        (
            "snapshot-with-backups-off",
            with(
                base(),
                json!({"deletionPolicy": "Snapshot", "backup": {"enabled": false}}),
            ),
            &["spec.deletionPolicy", "needs backup"],
        ),
        (
            "a-name-that-is-far-too-long-for-a-database-x",
            base(),
            &["metadata.name", "at most 40 characters"],
        ),
        (
            "postgres-on-redis",
            with(
                base(),
                json!({"engine": "Redis", "postgres": {"parameters": {"work_mem": "8MB"}}}),
            ),
            &["spec.postgres", "only available for engine Postgres"],
        ),
        (
            "maxmemory-on-shared",
            with(
                base(),
                json!({"engine": "Redis", "isolation": "Database", "serverRef": {"name": "shared"}, "redis": {"maxmemory": "64Mi"}}),
            ),
            &["spec.redis", "only available with isolation Dedicated"],
        ),
        (
            "bad-maxmemory",
            with(
                base(),
                json!({"engine": "Redis", "redis": {"maxmemory": "lots"}}),
            ),
            &["spec.redis.maxmemory", "positive quantity"],
        ),
        (
            "bad-policy",
            with(
                base(),
                json!({"engine": "Redis", "redis": {"maxmemoryPolicy": "evict-everything"}}),
            ),
            &["spec.redis.maxmemoryPolicy", "Unsupported value"],
        ),
        (
            "parameters-on-shared",
            with(
                base(),
                json!({"isolation": "Database", "serverRef": {"name": "shared"}, "postgres": {"parameters": {"work_mem": "8MB"}}}),
            ),
            &[
                "spec.postgres.parameters",
                "only available with isolation Dedicated",
            ],
        ),
    ];
    for (name, spec, expected) in cases {
        let message = create_error(&api, sdb(name, spec)).await;
        for e in expected {
            assert!(
                message.contains(e),
                "{name}: the API server's message {message:?} names {e:?}"
            );
        }
    }

    // Immutable fields.
    let ok: DynamicObject = serde_json::from_value(sdb("fixed", base())).expect("object");
    api.create(&PostParams::default(), &ok)
        .await
        .expect("a valid ServiceDatabase is accepted");
    for (patch, expected) in [
        (json!({"spec": {"engine": "Redis"}}), "engine is immutable"),
        (
            json!({"spec": {"isolation": "Database", "serverRef": {"name": "shared"}}}),
            "isolation is immutable",
        ),
    ] {
        match api
            .patch("fixed", &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => panic!("the API server accepted {patch}"),
            Err(kube::Error::Api(e)) => assert!(
                e.message.contains(expected),
                "{:?} names {expected:?}",
                e.message
            ),
            Err(e) => panic!("unexpected error: {e}"),
        }
    }
}

#[tokio::test]
async fn a_class_violation_is_a_condition_and_an_event_naming_the_field() {
    let env = Env::new("class").await;
    let api: Api<ServiceDatabase> = env.api();
    let obj = sdb("legacy", with(base(), json!({"version": "13"})));
    api.patch(
        "legacy",
        &PatchParams::apply("servicedb-e2e"),
        &Patch::Apply(&obj),
    )
    .await
    .expect("accepted by the API server");

    let failed = wait_phase(&api, "legacy", Phase::Failed).await;
    let status = failed.status.expect("status");
    let spec_valid = status
        .conditions
        .iter()
        .find(|c| c.type_ == "SpecValid")
        .expect("SpecValid condition");
    assert_eq!(spec_valid.status, "False");
    assert_eq!(spec_valid.reason, "VersionNotAllowed");
    assert!(
        spec_valid.message.contains("spec.version"),
        "{}",
        spec_valid.message
    );
    assert!(
        spec_valid.message.contains("16, 17"),
        "the allowed versions are listed: {}",
        spec_valid.message
    );
    assert_eq!(status.observed_generation, failed.metadata.generation);

    let events: Api<Event> = env.api();
    let event = wait_for(
        "a VersionNotAllowed Event",
        Duration::from_secs(15),
        || async {
            let list = events.list(&ListParams::default()).await.ok()?;
            list.items.into_iter().find(|e| {
                e.involved_object.name.as_deref() == Some("legacy")
                    && e.reason.as_deref() == Some("VersionNotAllowed")
            })
        },
    )
    .await;
    assert_eq!(event.type_.as_deref(), Some("Warning"));
    assert!(event.message.unwrap_or_default().contains("spec.version"));
    let sts: Api<StatefulSet> = env.api();
    assert!(
        sts.get_opt("legacy-db").await.expect("get").is_none(),
        "nothing is created for an invalid spec"
    );

    // A class that does not exist is named as well.
    let missing = sdb("orphan", with(base(), json!({"className": "gold"})));
    api.patch(
        "orphan",
        &PatchParams::apply("servicedb-e2e"),
        &Patch::Apply(&missing),
    )
    .await
    .expect("accepted");
    let cond = spec_valid_of_failed(&api, "orphan").await;
    assert_eq!(cond.reason, "ClassNotFound");
    assert!(
        cond.message.contains("spec.className") && cond.message.contains("gold"),
        "{}",
        cond.message
    );

    // Fixing the spec recovers without any other nudge.
    let fixed = sdb("legacy", with(base(), json!({"version": "16"})));
    api.patch(
        "legacy",
        &PatchParams::apply("servicedb-e2e"),
        &Patch::Apply(&fixed),
    )
    .await
    .expect("fix");
    let sts_obj = get_when(&sts, "legacy-db").await;
    let image = sts_obj
        .spec
        .and_then(|s| s.template.spec)
        .map(|p| p.containers[0].image.clone().unwrap_or_default());
    assert_eq!(image.as_deref(), Some("docker.io/library/postgres:16"));
    let live = wait_phase(&api, "legacy", Phase::Provisioning).await;
    assert!(live.meta().generation.is_some());
}

fn pod_annotation(sts: &StatefulSet, key: &str) -> Option<String> {
    sts.spec
        .as_ref()?
        .template
        .metadata
        .as_ref()?
        .annotations
        .as_ref()?
        .get(key)
        .cloned()
}

#[tokio::test]
async fn postgres_parameters_are_checked_then_reloaded_or_rolled() {
    use servicedb::engine::postgres_parameters::{RESTART_ANNOTATION, SECRET_KEY};
    let env = Env::new("parameters").await;
    let api: Api<ServiceDatabase> = env.api();
    let apply = |parameters: Value| {
        let obj = sdb(
            "tuned",
            with(base(), json!({"postgres": {"parameters": parameters}})),
        );
        let api = api.clone();
        async move {
            api.patch(
                "tuned",
                &PatchParams::apply("servicedb-e2e"),
                &Patch::Apply(&obj),
            )
            .await
            .expect("accepted by the API server");
        }
    };

    // A setting servicedb manages: refused by the controller, named.
    apply(json!({"listen_addresses": "*"})).await;
    let cond = spec_valid_of_failed(&api, "tuned").await;
    assert_eq!(cond.reason, "ParameterRefused");
    assert!(
        cond.message.contains("spec.postgres.parameters")
            && cond.message.contains("listen_addresses"),
        "{}",
        cond.message
    );

    // Fixed: the parameters reach the admin Secret; a reloadable one leaves
    // the pod template alone.
    apply(json!({"work_mem": "16MB"})).await;
    let sts: Api<StatefulSet> = env.api();
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = env.api();
    let rendered = || async {
        let secret = secrets.get_opt("tuned-db-admin").await.ok()??;
        let value = secret.data?.get(SECRET_KEY)?.0.clone();
        String::from_utf8(value).ok()
    };
    wait_for(
        "work_mem in the admin Secret",
        Duration::from_secs(30),
        || async { rendered().await.filter(|r| r.contains("work_mem = '16MB'")) },
    )
    .await;
    let before = get_when(&sts, "tuned-db").await;
    assert_eq!(pod_annotation(&before, RESTART_ANNOTATION), None);
    apply(json!({"work_mem": "32MB"})).await;
    wait_for(
        "the new work_mem in the admin Secret",
        Duration::from_secs(30),
        || async { rendered().await.filter(|r| r.contains("work_mem = '32MB'")) },
    )
    .await;
    let after = sts.get("tuned-db").await.expect("StatefulSet");
    assert_eq!(
        after.spec.as_ref().map(|s| &s.template),
        before.spec.as_ref().map(|s| &s.template),
        "a reloaded parameter does not roll the pod"
    );

    let condition = |reason: &'static str| {
        let api = api.clone();
        async move {
            let sdb = api.get("tuned").await.ok()?;
            sdb.status?
                .conditions
                .into_iter()
                .find(|c| c.type_ == "Parameters" && c.reason == reason)
                .map(|c| c.message)
        }
    };
    let message = wait_for("Parameters: Reload", Duration::from_secs(30), || {
        condition("Reload")
    })
    .await;
    assert_eq!(message, "work_mem reload in the running server");

    // One PostgreSQL reads at start only: the pod template changes, and
    // the condition says which restarts the instance.
    apply(json!({"work_mem": "32MB", "max_connections": "200"})).await;
    wait_for(
        "the restart annotation",
        Duration::from_secs(30),
        || async {
            let sts = sts.get("tuned-db").await.ok()?;
            pod_annotation(&sts, RESTART_ANNOTATION)
        },
    )
    .await;
    let message = wait_for(
        "Parameters: RestartOnChange",
        Duration::from_secs(30),
        || condition("RestartOnChange"),
    )
    .await;
    assert_eq!(
        message,
        "work_mem reload in the running server; max_connections is read at start only: a change restarts the instance"
    );
}
