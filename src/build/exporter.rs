//! The exporter of an external DatabaseServer with `external.monitoring`:
//! a Deployment `<server>-exporter` running the engine's upstream exporter
//! (the same image, arguments and environment as a dedicated instance's
//! sidecar, pointed at the server's address and TLS), logging in with the
//! Secret `credentialsSecretRef` names; a Service with its `metrics` port; a
//! NetworkPolicy that lets only the scraper reach it; and, where the cluster
//! serves it, a `PodMonitor` labelling its series `database_server`. The
//! recording rules of the server's databases
//! ([`super::monitoring::record_groups`]) pick their own series out of it.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    KeyToPath, PodSecurityContext, PodSpec, PodTemplateSpec, SeccompProfile, SecretVolumeSource,
    Service, ServicePort, ServiceSpec, Volume, VolumeMount,
};
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicySpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;
use kube::api::DynamicObject;

use super::monitoring::{DATABASE_SERVER_LABEL, POD_MONITOR, api_resource, pod_monitor_spec};
use super::network_policy::scrape_rule;
use super::statefulset::exporter_container_of;
use super::{LABEL_COMPONENT, LABEL_INSTANCE, LABEL_MANAGED_BY, LABEL_NAME, MANAGED_BY, Scraper};
use crate::api::DatabaseServer;
use crate::api::database_server::TlsMode;
use crate::engine::exporter::{self, PORT_NAME, Source};

/// `app.kubernetes.io/component` of the exporter's objects.
pub const COMPONENT: &str = "exporter";
/// Where the server's CA is mounted with `VerifyFull`.
pub const CA_DIR: &str = "/etc/servicedb/ca";
/// The uid the exporter runs as (the upstream postgres_exporter image's
/// `nobody`); the exporters need no file of their own.
pub const RUN_AS: i64 = 65534;
/// The keys of the credentials Secret, as for the administrator's.
pub const USERNAME_KEY: &str = "username";
pub const PASSWORD_KEY: &str = "password";

/// The exporter's objects.
#[derive(Clone, Debug)]
pub struct ServerExporter {
    pub deployment: Deployment,
    pub service: Service,
    pub network_policy: NetworkPolicy,
    pub pod_monitor: DynamicObject,
}

/// `<server>-exporter`: the name of each object and their instance label.
pub fn name(server: &str) -> String {
    format!("{server}-exporter")
}

/// The exporter of `server`, reached with `tls`; `None` when the server is
/// not external or monitoring is off.
pub fn build(
    server: &DatabaseServer,
    tls: TlsMode,
    scraper: &Scraper,
    owner: &OwnerReference,
) -> Option<ServerExporter> {
    let external = server.spec.external.as_ref()?;
    let monitoring = external.monitored()?;
    let credentials = monitoring.credentials_secret_ref.as_ref()?;
    let engine = server.spec.engine;
    let name = name(&server.name_any());
    let namespace = server.namespace().unwrap_or_default();
    let ca = external
        .tls
        .as_ref()
        .and_then(|t| t.ca_secret_ref.as_ref())
        .filter(|_| tls == TlsMode::VerifyFull);
    let ca_file = format!("{CA_DIR}/ca.crt");
    let command = exporter::command_for(
        engine,
        &Source {
            host: &external.host,
            port: external.port,
            tls,
            ca_file: ca.map(|_| ca_file.as_str()),
            username_key: USERNAME_KEY,
            password_key: PASSWORD_KEY,
        },
    );
    let port = exporter::exporter(engine).port;
    let selector = selector_labels(&name);
    let labels = labels(&name, &server.name_any(), engine.as_str());
    let meta = || ObjectMeta {
        name: Some(name.clone()),
        namespace: Some(namespace.clone()),
        labels: Some(labels.clone()),
        owner_references: Some(vec![owner.clone()]),
        ..Default::default()
    };
    let mut container = exporter_container_of(
        engine,
        exporter::exporter(engine).image(monitoring.exporter_image.as_deref()),
        command,
        &credentials.name,
    );
    container.volume_mounts = ca.map(|_| {
        vec![VolumeMount {
            name: "ca".into(),
            mount_path: CA_DIR.into(),
            read_only: Some(true),
            ..Default::default()
        }]
    });
    let deployment = Deployment {
        metadata: meta(),
        spec: Some(DeploymentSpec {
            replicas: Some(1),
            selector: LabelSelector {
                match_labels: Some(selector.clone()),
                ..Default::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels.clone()),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    automount_service_account_token: Some(false),
                    enable_service_links: Some(false),
                    security_context: Some(PodSecurityContext {
                        run_as_non_root: Some(true),
                        run_as_user: Some(RUN_AS),
                        run_as_group: Some(RUN_AS),
                        seccomp_profile: Some(SeccompProfile {
                            type_: "RuntimeDefault".into(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                    containers: vec![container],
                    volumes: ca.map(|ca| {
                        vec![Volume {
                            name: "ca".into(),
                            secret: Some(SecretVolumeSource {
                                secret_name: Some(ca.name.clone()),
                                items: Some(vec![KeyToPath {
                                    key: "ca.crt".into(),
                                    path: "ca.crt".into(),
                                    ..Default::default()
                                }]),
                                default_mode: Some(0o444),
                                ..Default::default()
                            }),
                            ..Default::default()
                        }]
                    }),
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        ..Default::default()
    };
    let service = Service {
        metadata: meta(),
        spec: Some(ServiceSpec {
            selector: Some(selector.clone()),
            ports: Some(vec![ServicePort {
                name: Some(PORT_NAME.into()),
                port,
                target_port: Some(IntOrString::String(PORT_NAME.into())),
                protocol: Some("TCP".into()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    };
    let network_policy = NetworkPolicy {
        metadata: meta(),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: Some(selector.clone()),
                ..Default::default()
            }),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(vec![scrape_rule(scraper, port)]),
            ..Default::default()
        }),
    };
    let mut pod_monitor = DynamicObject::new(&name, &api_resource(POD_MONITOR));
    pod_monitor.metadata = meta();
    // Found, and pruned, with the other Prometheus Operator objects.
    if let Some(labels) = pod_monitor.metadata.labels.as_mut() {
        labels.insert(LABEL_COMPONENT.into(), super::monitoring::COMPONENT.into());
    }
    pod_monitor.data = serde_json::json!({
        "spec": pod_monitor_spec(&selector, DATABASE_SERVER_LABEL, &server.name_any()),
    });
    Some(ServerExporter {
        deployment,
        service,
        network_policy,
        pod_monitor,
    })
}

/// The label of the exporter's Service and pods naming its server; the
/// example Prometheus turns it into `database_server`.
pub const LABEL_DATABASE_SERVER: &str = "servicedb.dev/database-server";

fn labels(instance: &str, server: &str, engine: &str) -> BTreeMap<String, String> {
    let mut labels = selector_labels(instance);
    labels.insert(LABEL_NAME.into(), engine.to_lowercase());
    labels.insert(LABEL_DATABASE_SERVER.into(), server.into());
    labels
}

/// Labels that select the exporter's pods.
pub fn selector_labels(instance: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_INSTANCE.to_string(), instance.to_string()),
        (LABEL_MANAGED_BY.to_string(), MANAGED_BY.to_string()),
        (LABEL_COMPONENT.to_string(), COMPONENT.to_string()),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn server(external: serde_json::Value) -> DatabaseServer {
        serde_json::from_value(json!({
            "apiVersion": "servicedb.dev/v1alpha1", "kind": "DatabaseServer",
            "metadata": {"name": "pg", "namespace": "platform", "uid": "u-1"},
            "spec": {"engine": "Postgres", "external": external},
        }))
        .expect("server")
    }

    fn owner() -> OwnerReference {
        OwnerReference {
            api_version: "servicedb.dev/v1alpha1".into(),
            kind: "DatabaseServer".into(),
            name: "pg".into(),
            uid: "u-1".into(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        }
    }

    fn monitored(extra: serde_json::Value) -> DatabaseServer {
        let mut external = json!({"host": "pg.example.com", "port": 5433,
            "adminSecretRef": {"name": "admin"},
            "monitoring": {"enabled": true, "credentialsSecretRef": {"name": "monitor"}}});
        for (k, v) in extra.as_object().cloned().unwrap_or_default() {
            external[k] = v;
        }
        server(external)
    }

    #[test]
    fn nothing_is_built_unless_monitoring_is_enabled() {
        let off = server(
            json!({"host": "h", "port": 5432, "adminSecretRef": {"name": "a"},
            "monitoring": {"enabled": false}}),
        );
        assert!(build(&off, TlsMode::Disable, &Scraper::default(), &owner()).is_none());
        let unset = server(json!({"host": "h", "port": 5432, "adminSecretRef": {"name": "a"}}));
        assert!(build(&unset, TlsMode::Disable, &Scraper::default(), &owner()).is_none());
    }

    #[test]
    fn the_exporter_reads_the_server_with_the_given_login_fenced_to_the_scraper() {
        let built = build(
            &monitored(json!({})),
            TlsMode::Disable,
            &Scraper::default(),
            &owner(),
        )
        .expect("built");
        let d = serde_json::to_value(&built.deployment).unwrap();
        assert_eq!(d["metadata"]["name"], "pg-exporter");
        assert_eq!(d["metadata"]["ownerReferences"][0]["uid"], "u-1");
        let pod = &d["spec"]["template"]["spec"];
        assert_eq!(pod["automountServiceAccountToken"], false);
        assert_eq!(pod["securityContext"]["runAsUser"], RUN_AS);
        let c = &pod["containers"][0];
        assert_eq!(
            c["image"],
            "quay.io/prometheuscommunity/postgres-exporter:v0.17.1"
        );
        assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
        let env: BTreeMap<String, serde_json::Value> = c["env"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| (e["name"].as_str().unwrap().to_string(), e.clone()))
            .collect();
        assert_eq!(
            env["DATA_SOURCE_URI"]["value"],
            "pg.example.com:5433/postgres?sslmode=disable"
        );
        for (var, key) in [
            ("DATA_SOURCE_USER", "username"),
            ("DATA_SOURCE_PASS", "password"),
        ] {
            assert_eq!(
                env[var]["valueFrom"]["secretKeyRef"],
                json!({"name": "monitor", "key": key}),
                "{var}: from the Secret, never a literal"
            );
        }
        assert!(pod.get("volumes").is_none(), "no CA without VerifyFull");
        let selector = &d["spec"]["selector"]["matchLabels"];
        assert_eq!(
            d["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"],
            "exporter"
        );
        let s = serde_json::to_value(&built.service).unwrap();
        assert_eq!(&s["spec"]["selector"], selector);
        assert_eq!(s["spec"]["ports"][0]["name"], "metrics");
        assert_eq!(s["metadata"]["labels"][LABEL_DATABASE_SERVER], "pg");
        let np = serde_json::to_value(&built.network_policy).unwrap();
        assert_eq!(&np["spec"]["podSelector"]["matchLabels"], selector);
        assert_eq!(np["spec"]["policyTypes"], json!(["Ingress"]));
        let rules = np["spec"]["ingress"].as_array().unwrap();
        assert_eq!(rules.len(), 1, "the scraper only");
        assert_eq!(
            rules[0]["ports"],
            json!([{"port": 9187, "protocol": "TCP"}])
        );
        assert_eq!(
            rules[0]["from"][0]["podSelector"]["matchLabels"],
            json!({"app.kubernetes.io/name": "prometheus"})
        );
        let pm = &built.pod_monitor;
        assert_eq!(pm.data["spec"]["selector"]["matchLabels"], *selector);
        assert_eq!(
            pm.data["spec"]["podMetricsEndpoints"][0]["relabelings"][0],
            json!({"action": "replace", "targetLabel": "database_server", "replacement": "pg"})
        );
        assert_eq!(
            pm.metadata.labels.as_ref().unwrap()[LABEL_COMPONENT],
            super::super::monitoring::COMPONENT
        );
    }

    #[test]
    fn verify_full_mounts_the_ca_and_a_mirror_keeps_the_pinned_tag() {
        let server = monitored(json!({
            "tls": {"caSecretRef": {"name": "pg-ca"}},
            "monitoring": {"enabled": true, "credentialsSecretRef": {"name": "monitor"},
                           "exporterImage": "mirror.example/postgres-exporter"},
        }));
        let built =
            build(&server, TlsMode::VerifyFull, &Scraper::default(), &owner()).expect("built");
        let d = serde_json::to_value(&built.deployment).unwrap();
        let pod = &d["spec"]["template"]["spec"];
        assert_eq!(pod["volumes"][0]["secret"]["secretName"], "pg-ca");
        let c = &pod["containers"][0];
        assert_eq!(c["image"], "mirror.example/postgres-exporter:v0.17.1");
        assert_eq!(c["volumeMounts"][0]["mountPath"], CA_DIR);
        let uri = c["env"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == "DATA_SOURCE_URI")
            .unwrap()["value"]
            .clone();
        assert_eq!(
            uri,
            "pg.example.com:5433/postgres?sslmode=verify-full&sslrootcert=/etc/servicedb/ca/ca.crt"
        );
    }
}
