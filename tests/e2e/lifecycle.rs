//! What happens over time: deleted children come back, spec edits roll
//! through, an unchanged resource costs no write (not even across an operator
//! restart), passwords stay, and `deletionPolicy` does what it says.

use crate::support::objects::{child_versions, reconciles};
use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Event, PersistentVolumeClaim, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::json;
use servicedb::api::{Phase, ServiceDatabase};

use crate::support::harness::{Env, apply_manifest, example, fixture, wait_for};
use crate::support::objects::get_when;
use crate::support::objects::secret_value;
use crate::support::objects::set_ready_replicas;
use crate::support::objects::wait_phase;

#[tokio::test]
async fn a_resync_writes_nothing_and_credentials_survive_an_operator_restart() {
    let mut env = Env::new("resync").await;
    apply_manifest(&env.client, &env.ns, &fixture("sdb-payments-delete.yaml")).await;
    let sts: Api<StatefulSet> = env.api();
    let secrets: Api<Secret> = env.api();
    let sdbs: Api<ServiceDatabase> = env.api();
    get_when(&sts, "payments-db").await;
    set_ready_replicas(&sts, "payments-db", 1).await;
    wait_phase(&sdbs, "payments", Phase::Ready).await;
    // Let the reconciles triggered by our own writes settle: the versions
    // are taken once two reads 2 s apart agree.
    let before = wait_for(
        "the children to settle",
        Duration::from_secs(30),
        || async {
            let first = child_versions(&env, "payments").await;
            tokio::time::sleep(Duration::from_secs(2)).await;
            let second = child_versions(&env, "payments").await;
            (first == second).then_some(second)
        },
    )
    .await;
    let password = secret_value(
        &secrets.get("payments-db").await.expect("secret"),
        "password",
    );
    let admin_password = secret_value(
        &secrets.get("payments-db-admin").await.expect("secret"),
        "password",
    );

    env.operator.restart();
    // The new process reconciles every ServiceDatabase once on start.
    wait_for(
        "a full resync after the restart",
        Duration::from_secs(40),
        || async { (reconciles(&env).await >= 1.0).then_some(()) },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = child_versions(&env, "payments").await;
    assert_eq!(
        before, after,
        "an unchanged resource costs no write on resync"
    );
    assert_eq!(
        secret_value(
            &secrets.get("payments-db").await.expect("secret"),
            "password"
        ),
        password
    );
    assert_eq!(
        secret_value(
            &secrets.get("payments-db-admin").await.expect("secret"),
            "password"
        ),
        admin_password
    );

    // No generated password ever reaches a log line, an Event or the status.
    let logs = env.operator.logs();
    assert!(logs.contains("reconcile"), "the operator logged its work");
    let events: Api<Event> = env.api();
    let events = serde_json::to_string(
        &events
            .list(&ListParams::default())
            .await
            .expect("events")
            .items,
    )
    .expect("json");
    let status =
        serde_json::to_string(&sdbs.get("payments").await.expect("sdb").status).expect("json");
    for secret in [&password, &admin_password] {
        assert!(
            !logs.contains(secret.as_str()),
            "a password appears in the operator's log"
        );
        assert!(
            !events.contains(secret.as_str()),
            "a password appears in an Event"
        );
        assert!(
            !status.contains(secret.as_str()),
            "a password appears in the status"
        );
    }
    env.operator.stop();
}

#[tokio::test]
async fn deleted_children_come_back_and_spec_edits_roll_through() {
    let env = Env::new("repair").await;
    apply_manifest(&env.client, &env.ns, &example("10-orders.yaml")).await;
    let sts: Api<StatefulSet> = env.api();
    let svc: Api<Service> = env.api();
    let np: Api<NetworkPolicy> = env.api();
    let secrets: Api<Secret> = env.api();
    // The StatefulSet is applied last: once it exists, every child does.
    get_when(&sts, "orders-db").await;
    let first = get_when(&svc, "orders-db").await;
    let password = secret_value(&get_when(&secrets, "orders-db").await, "password");

    // Deleted by hand: recreated.
    svc.delete("orders-db", &DeleteParams::default())
        .await
        .expect("delete service");
    np.delete("orders-db", &DeleteParams::default())
        .await
        .expect("delete np");
    secrets
        .delete("orders-db", &DeleteParams::default())
        .await
        .expect("delete secret");
    wait_for(
        "the Service to come back",
        Duration::from_secs(30),
        || async {
            let s = svc.get_opt("orders-db").await.ok()??;
            (s.uid() != first.uid()).then_some(())
        },
    )
    .await;
    get_when(&np, "orders-db").await;
    let recreated = get_when(&secrets, "orders-db").await;
    assert_eq!(secret_value(&recreated, "database"), "orders");
    // The admin Secret still exists, the service's one was lost: a new
    // password is issued (the instance manager applies it).
    assert!(!secret_value(&recreated, "password").is_empty());
    let _ = password;

    // Edited by hand: put back.
    let drift = json!({"spec": {"replicas": 3}});
    sts.patch("orders-db", &PatchParams::default(), &Patch::Merge(&drift))
        .await
        .expect("drift");
    wait_for("replicas back to 1", Duration::from_secs(30), || async {
        (sts.get("orders-db").await.ok()?.spec?.replicas == Some(1)).then_some(())
    })
    .await;

    // A spec edit rolls through to the StatefulSet.
    let sdbs: Api<ServiceDatabase> = env.api();
    let edit = json!({"spec": {"resources": {"requests": {"cpu": "250m", "memory": "300Mi"}, "limits": {"memory": "600Mi"}}}});
    sdbs.patch("orders", &PatchParams::default(), &Patch::Merge(&edit))
        .await
        .expect("edit");
    wait_for(
        "the new resources on the database container",
        Duration::from_secs(30),
        || async {
            let s = sts.get("orders-db").await.ok()?;
            let c = s
                .spec?
                .template
                .spec?
                .containers
                .into_iter()
                .find(|c| c.name == "database")?;
            let r = c.resources?;
            (r.requests?.get("memory")?.0 == "300Mi" && r.limits?.get("memory")?.0 == "600Mi")
                .then_some(())
        },
    )
    .await;
    let sdb = wait_for(
        "status of the new generation",
        Duration::from_secs(30),
        || async {
            let s = sdbs.get("orders").await.ok()?;
            (s.status.as_ref()?.observed_generation == s.metadata.generation).then_some(s)
        },
    )
    .await;
    assert_eq!(sdb.metadata.generation, Some(2));
}

pub async fn make_pvc(env: &Env, name: &str) {
    // What the StatefulSet controller would create from the claim template.
    let pvc: PersistentVolumeClaim = serde_json::from_value(json!({
        "metadata": {"name": format!("data-{name}-db-0"), "labels": {
            "servicedb.dev/instance": name, "app.kubernetes.io/managed-by": "servicedb",
            "app.kubernetes.io/component": "database", "app.kubernetes.io/name": "postgres"}},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}
    }))
    .expect("pvc");
    env.api::<PersistentVolumeClaim>()
        .create(&PostParams::default(), &pvc)
        .await
        .expect("create pvc");
}

#[tokio::test]
async fn retain_keeps_data_and_credentials_and_delete_removes_everything() {
    let env = Env::new("deletion").await;
    apply_manifest(&env.client, &env.ns, &example("10-orders.yaml")).await;
    apply_manifest(&env.client, &env.ns, &fixture("sdb-payments-delete.yaml")).await;
    let sts: Api<StatefulSet> = env.api();
    let svc: Api<Service> = env.api();
    let secrets: Api<Secret> = env.api();
    let pvcs: Api<PersistentVolumeClaim> = env.api();
    let sdbs: Api<ServiceDatabase> = env.api();
    get_when(&sts, "orders-db").await;
    get_when(&sts, "payments-db").await;
    make_pvc(&env, "orders").await;
    make_pvc(&env, "payments").await;
    let orders_password = secret_value(&get_when(&secrets, "orders-db").await, "password");
    get_when(&secrets, "payments-db").await;

    sdbs.delete("orders", &DeleteParams::default())
        .await
        .expect("delete orders");
    sdbs.delete("payments", &DeleteParams::default())
        .await
        .expect("delete payments");
    for name in ["orders", "payments"] {
        wait_for(
            &format!("ServiceDatabase {name} to be gone"),
            Duration::from_secs(30),
            || async { sdbs.get_opt(name).await.ok()?.is_none().then_some(()) },
        )
        .await;
    }
    let gone = |o: Option<Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>>| match o {
        None => true,
        Some(deletion) => deletion.is_some(),
    };

    // Retain: the running parts are gone; the volume and Secrets stay, unowned.
    assert!(sts.get_opt("orders-db").await.expect("get").is_none());
    assert!(svc.get_opt("orders-db").await.expect("get").is_none());
    for name in ["orders-db", "orders-db-admin"] {
        let s = secrets
            .get(name)
            .await
            .unwrap_or_else(|e| panic!("Retain keeps Secret {name}: {e}"));
        assert!(
            s.owner_references().is_empty(),
            "a retained Secret has no owner left to be collected with"
        );
    }
    let pvc = pvcs
        .get("data-orders-db-0")
        .await
        .expect("Retain keeps the data volume");
    assert!(pvc.metadata.deletion_timestamp.is_none());

    // Delete: everything goes, the data volume included.
    assert!(sts.get_opt("payments-db").await.expect("get").is_none());
    for name in ["payments-db", "payments-db-admin"] {
        assert!(
            secrets.get_opt(name).await.expect("get").is_none(),
            "Delete removes Secret {name}"
        );
    }
    // (A PVC stays Terminating under its protection finalizer until the
    // controller manager, absent here, sees no pod uses it.)
    assert!(
        gone(
            pvcs.get_opt("data-payments-db-0")
                .await
                .expect("get")
                .map(|p| p.metadata.deletion_timestamp)
        ),
        "Delete removes the PVC"
    );

    // Recreating a retained database adopts its data and credentials.
    apply_manifest(&env.client, &env.ns, &example("10-orders.yaml")).await;
    get_when(&sts, "orders-db").await;
    let adopted = wait_for(
        "the retained Secret to be adopted",
        Duration::from_secs(30),
        || async {
            let s = secrets.get("orders-db").await.ok()?;
            (!s.owner_references().is_empty()).then_some(s)
        },
    )
    .await;
    assert_eq!(
        secret_value(&adopted, "password"),
        orders_password,
        "the service keeps its password"
    );
}

#[tokio::test]
async fn a_standby_operator_waits_and_takes_over_when_the_leader_stops() {
    let mut env = Env::new("ha").await;
    apply_manifest(&env.client, &env.ns, &example("10-orders.yaml")).await;
    let svc: Api<Service> = env.api();
    get_when(&env.api::<StatefulSet>(), "orders-db").await;

    // A second replica: ready (it answers probes) but not reconciling.
    let standby = crate::support::harness::Operator::start("ha-standby");
    wait_for(
        "the standby to be ready",
        Duration::from_secs(30),
        || async { crate::support::harness::http_get(standby.http, "/readyz").await },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        standby.metric("servicedb_leader").await,
        Some(0.0),
        "the standby does not lead"
    );
    let standby_reconciles = standby
        .metric("servicedb_reconcile_total")
        .await
        .unwrap_or(0.0);
    assert_eq!(standby_reconciles, 0.0, "the standby does not reconcile");

    // The leader stops gracefully: the standby takes over at once and repairs.
    env.operator.stop();
    wait_for("the standby to lead", Duration::from_secs(20), || async {
        (standby.metric("servicedb_leader").await == Some(1.0)).then_some(())
    })
    .await;
    svc.delete("orders-db", &DeleteParams::default())
        .await
        .expect("delete service");
    wait_for(
        "the new leader to recreate the Service",
        Duration::from_secs(30),
        || async { svc.get_opt("orders-db").await.ok()?.map(|_| ()) },
    )
    .await;
    let mut standby = standby;
    standby.stop();
}
