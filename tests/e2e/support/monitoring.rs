//! Running the operator under the chart's RBAC.

use std::time::Duration;

use kube::api::{DeleteParams, Patch, PatchParams};
use serde_json::{Value, json};
use servicedb::api::ServiceDatabase;

use crate::support::harness::{Env, fixture, wait_for};
use crate::support::objects::get_when;

/// What the operator does with the Prometheus Operator's objects, for the
/// chart's RBAC test: apply, prune when monitoring is off, remove on
/// deletion, with the CRDs installed (and removed again after).
pub async fn under_chart_rbac(env: &Env) {
    install_monitoring_crds(&env.client).await;
    let mut sdb = monitored();
    sdb["metadata"]["name"] = json!("metered");
    let apply = |sdb: Value| async move {
        env.api::<ServiceDatabase>()
            .patch(
                "metered",
                &PatchParams::apply("servicedb-e2e").force(),
                &Patch::Apply(&sdb),
            )
            .await
            .expect("applying metered");
    };
    apply(sdb.clone()).await;
    get_when(&dynamic(env, "PrometheusRule"), "metered-db").await;
    get_when(&dynamic(env, "PodMonitor"), "metered-db").await;
    sdb["spec"]["monitoring"] = json!({"enabled": false});
    apply(sdb).await;
    wait_for(
        "metered's monitoring objects pruned",
        Duration::from_secs(30),
        || async {
            let rule = dynamic(env, "PrometheusRule")
                .get_opt("metered-db")
                .await
                .ok()?;
            let monitor = dynamic(env, "PodMonitor")
                .get_opt("metered-db")
                .await
                .ok()?;
            (rule.is_none() && monitor.is_none()).then_some(())
        },
    )
    .await;
    env.api::<ServiceDatabase>()
        .delete("metered", &DeleteParams::default())
        .await
        .expect("deleting metered");
    wait_for("metered gone", Duration::from_secs(30), || async {
        env.api::<ServiceDatabase>()
            .get_opt("metered")
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await;
    external_exporter(env).await;
    remove_monitoring_crds(&env.client).await;
}

/// An external server's exporter (Deployment, Service, NetworkPolicy,
/// PodMonitor): applied, then pruned once monitoring is off. The server
/// need not answer: its exporter does not wait for it.
async fn external_exporter(env: &Env) {
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::core::v1::{Secret, Service};
    use k8s_openapi::api::networking::v1::NetworkPolicy;
    use servicedb::api::DatabaseServer;
    for name in ["metered-admin", "metered-monitor"] {
        let secret: Secret = serde_json::from_value(json!({
            "metadata": {"name": name},
            "stringData": {"username": "someone", "password": crate::common::random(20)},
        }))
        .expect("secret");
        env.api::<Secret>()
            .patch(
                name,
                &PatchParams::apply("servicedb-e2e").force(),
                &Patch::Apply(&secret),
            )
            .await
            .expect("applying a Secret");
    }
    let server = |enabled: bool| {
        json!({
            "apiVersion": "servicedb.dev/v1alpha1", "kind": "DatabaseServer",
            "metadata": {"name": "metered"},
            "spec": {"engine": "Postgres", "external": {
                "host": "127.0.0.1", "port": 1, "adminSecretRef": {"name": "metered-admin"},
                "monitoring": {"enabled": enabled, "credentialsSecretRef": {"name": "metered-monitor"}}}},
        })
    };
    let servers = env.api::<DatabaseServer>();
    let apply = |enabled: bool| {
        let servers = servers.clone();
        async move {
            servers
                .patch(
                    "metered",
                    &PatchParams::apply("servicedb-e2e").force(),
                    &Patch::Apply(&server(enabled)),
                )
                .await
                .expect("applying the DatabaseServer metered");
        }
    };
    apply(true).await;
    let name = "metered-exporter";
    get_when(&env.api::<Deployment>(), name).await;
    get_when(&env.api::<Service>(), name).await;
    get_when(&env.api::<NetworkPolicy>(), name).await;
    get_when(&dynamic(env, "PodMonitor"), name).await;
    apply(false).await;
    wait_for(
        "the external server's exporter pruned",
        Duration::from_secs(30),
        || async {
            let gone = env.api::<Deployment>().get_opt(name).await.ok()?.is_none()
                && env.api::<Service>().get_opt(name).await.ok()?.is_none()
                && env
                    .api::<NetworkPolicy>()
                    .get_opt(name)
                    .await
                    .ok()?
                    .is_none()
                && dynamic(env, "PodMonitor")
                    .get_opt(name)
                    .await
                    .ok()?
                    .is_none();
            gone.then_some(())
        },
    )
    .await;
    servers
        .delete("metered", &DeleteParams::default())
        .await
        .expect("deleting the DatabaseServer metered");
}

pub fn dynamic(env: &Env, kind: &str) -> kube::Api<kube::api::DynamicObject> {
    kube::Api::namespaced_with(
        env.client.clone(),
        &env.ns,
        &servicedb::build::monitoring::api_resource(kind),
    )
}

/// Installs the Prometheus Operator's CRDs from the pinned copy.
pub async fn install_monitoring_crds(client: &kube::Client) {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let api: kube::Api<CustomResourceDefinition> = kube::Api::all(client.clone());
    for name in MONITORING_CRDS {
        let plural = name.split('.').next().unwrap_or_default();
        let path = fixture(&format!(
            "prometheus-operator-crds/monitoring.coreos.com_{plural}.yaml"
        ));
        let text = std::fs::read_to_string(&path).expect("CRD fixture");
        let crd: CustomResourceDefinition = serde_yaml::from_str(&text).expect("a CRD");
        api.patch(
            name,
            &PatchParams::apply("servicedb-e2e").force(),
            &Patch::Apply(&crd),
        )
        .await
        .unwrap_or_else(|e| panic!("installing {name}: {e}"));
    }
    wait_for(
        "monitoring.coreos.com/v1 served",
        Duration::from_secs(60),
        || async { served(client).await.then_some(()) },
    )
    .await;
}

pub fn monitored() -> Value {
    let mut sdb = orders();
    sdb["spec"]["monitoring"] = json!({"enabled": true});
    sdb["spec"]["credentials"] = json!({"rotateEvery": "720h"});
    sdb["spec"]["backup"]["verify"] = json!({"schedule": "0 4 * * 0"});
    sdb
}

/// Removes them, and waits until discovery no longer lists the group.
pub async fn remove_monitoring_crds(client: &kube::Client) {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let api: kube::Api<CustomResourceDefinition> = kube::Api::all(client.clone());
    for name in MONITORING_CRDS {
        match api.delete(name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => panic!("removing {name}: {e}"),
        }
    }
    wait_for(
        "monitoring.coreos.com CRDs gone",
        Duration::from_secs(60),
        || async {
            for name in MONITORING_CRDS {
                if api.get_opt(name).await.ok()?.is_some() {
                    return None;
                }
            }
            (!served(client).await).then_some(())
        },
    )
    .await;
}

pub const MONITORING_CRDS: [&str; 3] = [
    "podmonitors.monitoring.coreos.com",
    "prometheusrules.monitoring.coreos.com",
    "servicemonitors.monitoring.coreos.com",
];

/// Whether the API server serves monitoring.coreos.com/v1 (what the
/// operator's discovery asks).
pub async fn served(client: &kube::Client) -> bool {
    client
        .list_api_group_resources("monitoring.coreos.com/v1")
        .await
        .is_ok_and(|l| l.resources.iter().any(|r| r.kind == "PrometheusRule"))
}

pub fn orders() -> Value {
    json!({
        "apiVersion": "servicedb.dev/v1alpha1", "kind": "ServiceDatabase",
        "metadata": {"name": "orders"},
        "spec": {
            "engine": "Postgres",
            "owner": {"podSelector": {"matchLabels": {"app": "orders", "team": "payments"}}},
            "deletionPolicy": "Delete",
            "backup": {
                "schedule": "0 2 * * *",
                "destination": {"s3": {"bucket": "backups", "endpoint": "http://minio.storage:9000",
                    "region": "eu-1", "credentialsSecret": "s3-creds"}}
            }
        }
    })
}
