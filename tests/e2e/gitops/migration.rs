//! Children made by an earlier version carry `app.kubernetes.io/instance`
//! (Argo CD's tracking label) and their StatefulSet selects its pods by it,
//! immutably. After an upgrade they carry `servicedb.dev/instance` instead,
//! without the StatefulSet or the data volume being recreated, and one that
//! is no longer built is still found, by the old label, and removed.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::batch::v1::CronJob;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use servicedb::api::{Phase, ServiceDatabase};

use crate::support::harness::{Env, apply_manifest, example, wait_for};
use crate::support::objects::child_versions;
use crate::support::objects::get_when;
use crate::support::objects::reconciles;
use crate::support::objects::set_ready_replicas;
use crate::support::objects::wait_phase;

const NEW: &str = "servicedb.dev/instance";
const OLD: &str = "app.kubernetes.io/instance";

/// Every map key `from` in `value` renamed to `to`: labels, selectors and
/// templates alike, as the earlier version built them.
fn rename_key(value: &mut Value, from: &str, to: &str) {
    match value {
        Value::Object(map) => {
            if let Some(v) = map.remove(from) {
                map.insert(to.to_string(), v);
            }
            map.values_mut().for_each(|v| rename_key(v, from, to));
        }
        Value::Array(items) => items.iter_mut().for_each(|v| rename_key(v, from, to)),
        _ => {}
    }
}

/// The object as the earlier version applied it: its spec and metadata with
/// the old label, applied by servicedb's field manager (so that servicedb
/// owns the old label, as it did).
fn old_shape<K: Serialize>(obj: &K) -> Value {
    let mut v = serde_json::to_value(obj).expect("json");
    rename_key(&mut v, NEW, OLD);
    let map = v.as_object_mut().expect("object");
    map.remove("status");
    let meta = map["metadata"].as_object_mut().expect("metadata");
    for generated in [
        "uid",
        "resourceVersion",
        "creationTimestamp",
        "managedFields",
        "generation",
    ] {
        meta.remove(generated);
    }
    v
}

async fn rewrite<K>(api: &Api<K>, name: &str)
where
    K: Resource<DynamicType = ()> + Clone + std::fmt::Debug + Serialize + DeserializeOwned,
{
    let mut body = old_shape(&api.get(name).await.expect("get child"));
    body["apiVersion"] = K::api_version(&()).into();
    body["kind"] = K::kind(&()).into();
    api.patch(
        name,
        &PatchParams::apply("servicedb").force(),
        &Patch::Apply(body),
    )
    .await
    .unwrap_or_else(|e| panic!("rewriting {name} in the old shape: {e}"));
}

fn labels<K: Resource>(obj: &K) -> BTreeMap<String, String> {
    obj.meta().labels.clone().unwrap_or_default()
}

#[tokio::test]
async fn children_of_an_earlier_version_are_relabelled_without_recreation() {
    let mut env = Env::new("gitops-migrate").await;
    apply_manifest(&env.client, &env.ns, &example("10-orders.yaml")).await;
    let sts: Api<StatefulSet> = env.api();
    let svc: Api<Service> = env.api();
    let pdb: Api<PodDisruptionBudget> = env.api();
    let np: Api<NetworkPolicy> = env.api();
    let secrets: Api<Secret> = env.api();
    let pvcs: Api<PersistentVolumeClaim> = env.api();
    let sdbs: Api<ServiceDatabase> = env.api();
    get_when(&sts, "orders-db").await;
    get_when(&secrets, "orders-db-admin").await;
    get_when(&np, "orders-db").await;
    get_when(&pdb, "orders-db").await;

    // The earlier version's world: stop the operator, rewrite every child
    // with the old label, and recreate the StatefulSet with the old
    // selector (no pods run here, and no garbage collector would honour an
    // orphaning delete).
    env.operator.stop();
    for name in ["orders-db", "orders-db-admin"] {
        rewrite(&secrets, name).await;
    }
    for name in ["orders-db", "orders-db-hl"] {
        rewrite(&svc, name).await;
    }
    rewrite(&pdb, "orders-db").await;
    rewrite(&np, "orders-db").await;
    let old_sts = old_shape(&sts.get("orders-db").await.expect("sts"));
    sts.delete("orders-db", &DeleteParams::background())
        .await
        .expect("delete the StatefulSet");
    wait_for("the StatefulSet to go", Duration::from_secs(30), || async {
        sts.get_opt("orders-db").await.ok()?.is_none().then_some(())
    })
    .await;
    let mut body = old_sts;
    body["apiVersion"] = "apps/v1".into();
    body["kind"] = "StatefulSet".into();
    sts.patch(
        "orders-db",
        &PatchParams::apply("servicedb").force(),
        &Patch::Apply(body),
    )
    .await
    .expect("the old-shaped StatefulSet");
    // The data volume, as the StatefulSet controller made it from the old
    // template and selector.
    let pvc: PersistentVolumeClaim = serde_json::from_value(json!({
        "metadata": {"name": "data-orders-db-0", "labels": {
            OLD: "orders", "app.kubernetes.io/managed-by": "servicedb",
            "app.kubernetes.io/component": "database", "app.kubernetes.io/name": "postgres"}},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "2Gi"}}}
    }))
    .expect("pvc");
    let pvc = pvcs
        .create(&PostParams::default(), &pvc)
        .await
        .expect("create pvc");
    // A child the earlier version built and this spec no longer asks for
    // (backups switched off): found by the old label, it is removed.
    let owner = sdbs.get("orders").await.expect("sdb");
    let cronjob: CronJob = serde_json::from_value(json!({
        "metadata": {"name": "orders-db-backup", "labels": {
            OLD: "orders", "app.kubernetes.io/managed-by": "servicedb",
            "app.kubernetes.io/component": "backup"},
            "ownerReferences": [{"apiVersion": "servicedb.dev/v1alpha1", "kind": "ServiceDatabase",
                "name": "orders", "uid": owner.uid(), "controller": true}]},
        "spec": {"schedule": "0 2 * * *", "jobTemplate": {"spec": {"template": {"spec": {
            "restartPolicy": "Never", "containers": [{"name": "agent", "image": "postgres:17"}]}}}}}
    }))
    .expect("cronjob");
    let cronjobs: Api<CronJob> = env.api();
    cronjobs
        .create(&PostParams::default(), &cronjob)
        .await
        .expect("the old-labelled CronJob");

    let old = sts.get("orders-db").await.expect("sts");
    let selector = old
        .spec
        .as_ref()
        .and_then(|s| s.selector.match_labels.clone())
        .unwrap_or_default();
    assert_eq!(
        selector.get(OLD).map(String::as_str),
        Some("orders"),
        "the StatefulSet selects by the old label, as the earlier version made it"
    );
    assert!(!labels(&old).contains_key(NEW));
    assert!(!labels(&secrets.get("orders-db").await.expect("secret")).contains_key(NEW));

    // The upgrade.
    env.operator.restart();
    wait_for(
        "every child's metadata to carry servicedb.dev/instance and not app.kubernetes.io/instance",
        Duration::from_secs(40),
        || async {
            let migrated = |l: BTreeMap<String, String>| {
                l.get(NEW).map(String::as_str) == Some("orders") && !l.contains_key(OLD)
            };
            let all = [
                labels(&sts.get("orders-db").await.ok()?),
                labels(&svc.get("orders-db").await.ok()?),
                labels(&svc.get("orders-db-hl").await.ok()?),
                labels(&pdb.get("orders-db").await.ok()?),
                labels(&np.get("orders-db").await.ok()?),
                labels(&secrets.get("orders-db").await.ok()?),
                labels(&secrets.get("orders-db-admin").await.ok()?),
                labels(&pvcs.get("data-orders-db-0").await.ok()?),
            ];
            all.into_iter().all(migrated).then_some(())
        },
    )
    .await;

    wait_for(
        "the old-labelled CronJob that is no longer built to be removed",
        Duration::from_secs(30),
        || async {
            cronjobs
                .get_opt("orders-db-backup")
                .await
                .ok()?
                .is_none()
                .then_some(())
        },
    )
    .await;

    // Not recreated: same StatefulSet and volume, the selector unchanged, and
    // the pod template carries both the old selector's labels and the new.
    let now = sts.get("orders-db").await.expect("sts");
    assert_eq!(now.uid(), old.uid(), "the StatefulSet is not recreated");
    assert_eq!(
        pvcs.get("data-orders-db-0").await.expect("pvc").uid(),
        pvc.uid(),
        "the data volume is the same"
    );
    let spec = now.spec.clone().expect("spec");
    assert_eq!(spec.selector.match_labels.as_ref(), Some(&selector));
    let template = spec
        .template
        .metadata
        .and_then(|m| m.labels)
        .unwrap_or_default();
    assert_eq!(template.get(OLD).map(String::as_str), Some("orders"));
    assert_eq!(template.get(NEW).map(String::as_str), Some("orders"));
    // Whatever selects the pods selects them by the selector they have: the
    // pods stay served and fenced.
    let matched = |s: Option<BTreeMap<String, String>>| s == Some(selector.clone());
    for name in ["orders-db", "orders-db-hl"] {
        let service = svc.get(name).await.expect("svc");
        assert!(matched(service.spec.and_then(|s| s.selector)), "{name}");
    }
    let policy = np.get("orders-db").await.expect("np");
    assert!(matched(
        policy
            .spec
            .and_then(|s| s.pod_selector)
            .and_then(|s| s.match_labels)
    ));
    let budget = pdb.get("orders-db").await.expect("pdb");
    assert!(matched(
        budget
            .spec
            .and_then(|s| s.selector)
            .and_then(|s| s.match_labels)
    ));

    // The controller does not fight itself: the database turns Ready, and a
    // resync afterwards writes nothing.
    set_ready_replicas(&sts, "orders-db", 1).await;
    wait_phase(&sdbs, "orders", Phase::Ready).await;
    let before = wait_for(
        "the children to settle",
        Duration::from_secs(30),
        || async {
            let first = child_versions(&env, "orders").await;
            tokio::time::sleep(Duration::from_secs(2)).await;
            let second = child_versions(&env, "orders").await;
            (first == second).then_some(second)
        },
    )
    .await;
    let logged = env.operator.logs().lines().count();
    env.operator.restart();
    wait_for("a full resync", Duration::from_secs(40), || async {
        (reconciles(&env).await >= 1.0).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        before,
        child_versions(&env, "orders").await,
        "a resync of a migrated instance writes nothing"
    );
    let failed = format!(r#""namespace":"{}""#, env.ns);
    let failures: Vec<String> = env
        .operator
        .logs()
        .lines()
        .skip(logged)
        .filter(|l| l.contains("reconcile failed") && l.contains(&failed))
        .map(String::from)
        .collect();
    assert!(
        failures.is_empty(),
        "no reconcile of this namespace failed (an apply of another selector would be refused): {failures:?}"
    );
}
