//! Reading and waiting on the objects a test and the operator make: a
//! resource's phase, its Secret's keys, its children's versions, Events.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Event, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, Resource, ResourceExt};
use serde_json::json;
use servicedb::api::{Phase, ServiceDatabase};

use crate::support::harness::{Env, wait_for};

pub fn secret_value(secret: &Secret, key: &str) -> String {
    let bytes = secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|b| b.0.clone())
        .unwrap_or_default();
    String::from_utf8(bytes).expect("utf-8 secret value")
}

/// Username, password and database of a credentials Secret.
pub fn credentials(secret: &Secret) -> (String, String, String) {
    (
        secret_value(secret, "username"),
        secret_value(secret, "password"),
        secret_value(secret, "database"),
    )
}

pub async fn get_when<K>(api: &Api<K>, name: &str) -> K
where
    K: Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned,
{
    wait_for(
        &format!("{} {name}", std::any::type_name::<K>()),
        Duration::from_secs(30),
        || async { api.get_opt(name).await.ok().flatten() },
    )
    .await
}

/// Reports `ready` ready replicas on a StatefulSet, as its controller would.
pub async fn set_ready_replicas(api: &Api<StatefulSet>, name: &str, ready: i32) {
    let patch = json!({"status": {"replicas": 1, "readyReplicas": ready, "availableReplicas": ready, "currentReplicas": 1, "updatedReplicas": 1}});
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("patching StatefulSet status");
}

pub async fn wait_phase(api: &Api<ServiceDatabase>, name: &str, phase: Phase) -> ServiceDatabase {
    wait_for(
        &format!("ServiceDatabase {name} phase {phase}"),
        Duration::from_secs(30),
        || async {
            let sdb = api.get(name).await.ok()?;
            (sdb.status.as_ref()?.phase == phase).then_some(sdb)
        },
    )
    .await
}

pub async fn events_for(env: &Env, name: &str) -> Vec<(String, String, String)> {
    env.api::<Event>()
        .list(&ListParams::default())
        .await
        .expect("listing events")
        .items
        .into_iter()
        .filter(|e| e.involved_object.name.as_deref() == Some(name))
        .map(|e| {
            (
                e.type_.unwrap_or_default(),
                e.reason.unwrap_or_default(),
                e.message.unwrap_or_default(),
            )
        })
        .collect()
}

/// resourceVersion of every child of `name`, by kind/name.
pub async fn child_versions(env: &Env, name: &str) -> BTreeMap<String, String> {
    let inst = format!("{name}-db");
    let mut out = BTreeMap::new();
    let rv = |k: &str, n: &str, v: Option<String>| (format!("{k}/{n}"), v.unwrap_or_default());
    let sts: Api<StatefulSet> = env.api();
    let svc: Api<Service> = env.api();
    let pdb: Api<PodDisruptionBudget> = env.api();
    let np: Api<NetworkPolicy> = env.api();
    let sec: Api<Secret> = env.api();
    let sdb: Api<ServiceDatabase> = env.api();
    for (k, n, v) in [
        (
            "StatefulSet",
            inst.clone(),
            sts.get(&inst).await.expect("sts").resource_version(),
        ),
        (
            "Service",
            inst.clone(),
            svc.get(&inst).await.expect("svc").resource_version(),
        ),
        (
            "Service",
            format!("{inst}-hl"),
            svc.get(&format!("{inst}-hl"))
                .await
                .expect("svc")
                .resource_version(),
        ),
        (
            "PodDisruptionBudget",
            inst.clone(),
            pdb.get(&inst).await.expect("pdb").resource_version(),
        ),
        (
            "NetworkPolicy",
            inst.clone(),
            np.get(&inst).await.expect("np").resource_version(),
        ),
        (
            "Secret",
            inst.clone(),
            sec.get(&inst).await.expect("secret").resource_version(),
        ),
        (
            "Secret",
            format!("{inst}-admin"),
            sec.get(&format!("{inst}-admin"))
                .await
                .expect("secret")
                .resource_version(),
        ),
        (
            "ServiceDatabase",
            name.to_string(),
            sdb.get(name).await.expect("sdb").resource_version(),
        ),
    ] {
        let (key, value) = rv(k, &n, v);
        out.insert(key, value);
    }
    out
}

pub async fn reconciles(env: &Env) -> f64 {
    env.operator
        .metric("servicedb_reconcile_total{controller=\"servicedatabase\"")
        .await
        .unwrap_or(0.0)
}
