//! A rotation reaching running pods (`spec.credentials.restartOwners`), on a
//! shared PostgreSQL server started by the test. Without a kubelet or
//! controller manager the test plays their part: it creates the pods a
//! Deployment would have, and replaces them once the Deployment is rolled.

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::Api;
use kube::api::{DeleteParams, PostParams};
use serde_json::json;
use servicedb::api::{Phase, ServiceDatabase};
use servicedb::model::rotation::ISSUED_AT;

use crate::support::backups::condition;
use crate::support::harness::{Env, wait_for};
use crate::support::objects::events_for;
use crate::support::objects::wait_phase;
use crate::support::rotations::place;
use crate::support::rotations::request_rotation;
use crate::support::rotations::secret_when;
use crate::support::servers::Postgres;
use crate::support::shared_servers::server;

const CONDITION: &str = "CredentialsRolledOut";

/// A Deployment whose pods carry `app: <app>` (what the owner selects).
async fn deployment(env: &Env, name: &str, app: &str) {
    let body: Deployment = serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"selector": {"matchLabels": {"app": app, "part": name}},
            "template": {"metadata": {"labels": {"app": app, "part": name}},
                "spec": {"containers": [{"name": "app", "image": "registry.invalid/app:1"}]}}}
    }))
    .expect("deployment");
    env.api::<Deployment>()
        .create(&PostParams::default(), &body)
        .await
        .expect("create deployment");
}

/// A pod of Deployment `name`, as its ReplicaSet would make it; `generation`
/// is the annotation a rolled pod template carries.
async fn pod(env: &Env, name: &str, app: &str, generation: Option<&str>) {
    let mut body = json!({
        "metadata": {"name": name, "labels": {"app": app, "part": name.rsplit_once('-').unwrap().0}},
        "spec": {"containers": [{"name": "app", "image": "registry.invalid/app:1"}]}
    });
    if let Some(g) = generation {
        body["metadata"]["annotations"] = json!({ISSUED_AT: g});
    }
    let body: Pod = serde_json::from_value(body).expect("pod");
    env.api::<Pod>()
        .create(&PostParams::default(), &body)
        .await
        .expect("create pod");
}

fn template_generation(d: &Deployment) -> Option<String> {
    d.spec
        .as_ref()?
        .template
        .metadata
        .as_ref()?
        .annotations
        .as_ref()?
        .get(ISSUED_AT)
        .cloned()
}

async fn condition_when(
    api: &Api<ServiceDatabase>,
    name: &str,
    what: &str,
    check: impl Fn(&(String, String, String)) -> bool,
) -> (String, String, String) {
    wait_for(what, Duration::from_secs(60), || async {
        let sdb = api.get(name).await.ok()?;
        condition(&sdb, CONDITION).filter(|c| check(c))
    })
    .await
}

#[tokio::test]
async fn a_rotation_restarts_the_owners_workloads_or_warns_before_the_old_password_expires() {
    let env = Env::new("rollout").await;
    let pg = Postgres::start_new();
    server(&env, "pg", &pg, json!({"from": "Same"})).await;
    // orders opts in to restarts; ledger does not. Both have a Deployment
    // with a pod started before the rotation; billing is nobody's owner.
    for (name, restart) in [("orders", true), ("ledger", false)] {
        place(
            &env.client,
            &env.ns,
            name,
            json!({"engine": "Postgres", "isolation": "Database", "serverRef": {"name": "pg"},
                "deletionPolicy": "Delete",
                "credentials": {"gracePeriod": "40s", "restartOwners": restart}}),
        )
        .await;
        deployment(&env, &format!("{name}-api"), name).await;
        pod(&env, &format!("{name}-api-1"), name, None).await;
    }
    deployment(&env, "billing-api", "billing").await;
    pod(&env, "billing-api-1", "billing", None).await;
    let sdbs: Api<ServiceDatabase> = env.api();
    for name in ["orders", "ledger"] {
        let ready = wait_phase(&sdbs, name, Phase::Ready).await;
        assert_eq!(
            condition(&ready, CONDITION),
            None,
            "{name}: nothing to roll out before a rotation"
        );
    }
    // Creation times have whole seconds: rotate in a later second than the
    // pods were made.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    request_rotation(&sdbs, "orders", "1").await;
    request_rotation(&sdbs, "ledger", "1").await;

    // --- restartOwners: the owner's Deployment is rolled, once, with the
    // Secret's generation; the other Deployment is left alone.
    let secrets: Api<Secret> = env.api();
    let generation = |s: &Secret| {
        s.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(ISSUED_AT).cloned())
            .unwrap_or_default()
    };
    let orders_secret = secret_when(
        &secrets,
        "orders-db",
        "the orders Secret rotated",
        Duration::from_secs(60),
        |s| {
            s.data
                .as_ref()
                .is_some_and(|d| d.contains_key("previous-password"))
        },
    )
    .await;
    let want = generation(&orders_secret);
    let deployments: Api<Deployment> = env.api();
    let rolled = wait_for("orders-api rolled", Duration::from_secs(60), || async {
        let d = deployments.get("orders-api").await.ok()?;
        (template_generation(&d).as_deref() == Some(want.as_str())).then_some(d)
    })
    .await;
    let (status, reason, message) =
        condition_when(&sdbs, "orders", "orders restarting", |c| c.0 == "False").await;
    assert_eq!(reason, "RestartingWorkloads", "{message}");
    assert!(message.contains("Deployment/orders-api"), "{message}");
    assert_eq!(status, "False");
    assert!(
        events_for(&env, "orders")
            .await
            .iter()
            .any(|(t, r, m)| t == "Normal"
                && r == "WorkloadsRestarted"
                && m.contains("Deployment/orders-api")),
        "a WorkloadsRestarted Event names the Deployment"
    );
    for other in ["billing-api", "ledger-api"] {
        let d = deployments.get(other).await.expect(other);
        assert_eq!(template_generation(&d), None, "{other} is not restarted");
    }

    // --- without restartOwners: the condition names the workload at once,
    // the Warning comes in the last quarter of the grace period.
    let (_, reason, message) =
        condition_when(&sdbs, "ledger", "ledger behind", |c| c.0 == "False").await;
    assert_eq!(reason, "OldPasswordInUse", "{message}");
    assert!(message.contains("Deployment/ledger-api"), "{message}");
    assert!(!message.contains("billing"), "{message}");
    assert!(
        !events_for(&env, "ledger")
            .await
            .iter()
            .any(|(t, _, _)| t == "Warning"),
        "no Warning while most of the grace period is left"
    );
    let warning = wait_for(
        "an OldPasswordInUse Warning",
        Duration::from_secs(45),
        || async {
            events_for(&env, "ledger")
                .await
                .into_iter()
                .find(|(t, r, _)| t == "Warning" && r == "OldPasswordInUse")
        },
    )
    .await;
    assert!(warning.2.contains("Deployment/ledger-api"), "{warning:?}");

    // --- the controller manager's part: the rolled Deployment's new pod
    // replaces the old one; the condition clears.
    let pods: Api<Pod> = env.api();
    pods.delete("orders-api-1", &DeleteParams::default().grace_period(0))
        .await
        .expect("delete old pod");
    pod(&env, "orders-api-2", "orders", Some(&want)).await;
    let (_, reason, _) = condition_when(&sdbs, "orders", "orders current", |c| c.0 == "True").await;
    assert_eq!(reason, "PodsCurrent");
    let after = deployments.get("orders-api").await.expect("orders-api");
    assert_eq!(
        after.metadata.generation, rolled.metadata.generation,
        "the Deployment is patched once per rotation"
    );
    // No secret value in what the operator wrote.
    for key in ["password", "previous-password"] {
        let value = crate::support::objects::secret_value(&orders_secret, key);
        assert!(!env.operator.logs().contains(&value), "{key} in the log");
    }
}
