//! The `shop` example — orders in Postgres, the cart in Redis, the catalog in
//! MongoDB — becomes three private instances: the expected children, owned and
//! labelled, complete credentials Secrets, NetworkPolicies that admit only the
//! owner, and statuses that turn Ready with their StatefulSets.

use crate::support::objects::{get_when, secret_value, set_ready_replicas, wait_phase};
use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{Event, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, Resource, ResourceExt};
use serde_json::json;
use servicedb::api::{Phase, ServiceDatabase};

use crate::support::harness::{Env, apply_manifest, examples, wait_for};

/// Keys every credentials Secret has, whatever the engine.
const COMMON_KEYS: [&str; 7] = [
    "engine", "host", "port", "database", "username", "password", "uri",
];

/// What a user expects of each engine.
struct Expect {
    name_label: &'static str,
    image: &'static str,
    port: i32,
    variable: &'static str,
    admin: &'static str,
    scheme: &'static str,
    extra_keys: &'static [&'static str],
}

fn expect(engine: servicedb::api::Engine) -> Expect {
    use servicedb::api::Engine::*;
    match engine {
        Postgres => Expect {
            name_label: "postgres",
            image: "docker.io/library/postgres",
            port: 5432,
            variable: "DATABASE_URL",
            admin: "postgres",
            scheme: "postgresql://",
            extra_keys: &[],
        },
        Redis => Expect {
            name_label: "redis",
            image: "docker.io/library/redis",
            port: 6379,
            variable: "REDIS_URL",
            admin: "admin",
            scheme: "redis://",
            extra_keys: &["keyPrefix"],
        },
        MongoDB => Expect {
            name_label: "mongodb",
            image: "docker.io/library/mongo",
            port: 27017,
            variable: "MONGODB_URI",
            admin: "root",
            scheme: "mongodb://",
            extra_keys: &[],
        },
    }
}

fn labels_match(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

#[tokio::test]
async fn the_shop_example_becomes_three_private_instances() {
    let env = Env::new("examples").await;
    let mut sdbs = vec![];
    for file in examples() {
        sdbs.extend(apply_manifest(&env.client, &env.ns, &file).await);
    }
    let engines: Vec<_> = sdbs.iter().map(|s| s.spec.engine).collect();
    use servicedb::api::Engine::*;
    assert_eq!(
        engines,
        [Postgres, Redis, MongoDB],
        "the shop: orders, cart, catalog"
    );
    let statefulsets: Api<StatefulSet> = env.api();
    let services: Api<Service> = env.api();
    let secrets: Api<Secret> = env.api();
    let pdbs: Api<PodDisruptionBudget> = env.api();
    let policies: Api<NetworkPolicy> = env.api();
    let deployments: Api<Deployment> = env.api();
    let sdb_api: Api<ServiceDatabase> = env.api();

    for sdb in &sdbs {
        let name = sdb.name_any();
        let want = expect(sdb.spec.engine);
        let inst = format!("{name}-db");
        let sts = get_when(&statefulsets, &inst).await;
        let headless = get_when(&services, &format!("{inst}-hl")).await;
        let client_svc = get_when(&services, &inst).await;
        let pdb = get_when(&pdbs, &inst).await;
        let np = get_when(&policies, &inst).await;
        let secret_name = sdb
            .spec
            .credentials
            .as_ref()
            .and_then(|c| c.secret_name.clone())
            .unwrap_or_else(|| inst.clone());
        let creds = get_when(&secrets, &secret_name).await;
        let admin = get_when(&secrets, &format!("{inst}-admin")).await;
        let live = sdb_api.get(&name).await.expect("sdb");
        let uid = live.uid().expect("uid");

        // Owner references and standard labels on every child.
        for (what, meta) in [
            ("StatefulSet", sts.meta()),
            ("headless Service", headless.meta()),
            ("client Service", client_svc.meta()),
            ("PodDisruptionBudget", pdb.meta()),
            ("NetworkPolicy", np.meta()),
            ("credentials Secret", creds.meta()),
            ("admin Secret", admin.meta()),
        ] {
            let owners = meta.owner_references.clone().unwrap_or_default();
            assert!(
                owners.iter().any(|o| o.uid == uid
                    && o.kind == "ServiceDatabase"
                    && o.controller == Some(true)),
                "{what} of {name} is controlled by its ServiceDatabase: {owners:?}"
            );
            let labels = meta.labels.clone().unwrap_or_default();
            assert_eq!(
                labels.get("app.kubernetes.io/name").map(String::as_str),
                Some(want.name_label),
                "{what} labels"
            );
            assert_eq!(
                labels.get("servicedb.dev/instance"),
                Some(&name),
                "{what} labels"
            );
            assert_eq!(
                labels.get("app.kubernetes.io/instance"),
                None,
                "{what} labels: Argo CD's tracking label is left to Argo CD"
            );
            assert_eq!(
                labels
                    .get("app.kubernetes.io/managed-by")
                    .map(String::as_str),
                Some("servicedb"),
                "{what} labels"
            );
            assert!(
                labels.contains_key("app.kubernetes.io/component"),
                "{what} labels"
            );
        }

        // The StatefulSet runs the instance manager on the official image.
        let spec = sts.spec.clone().expect("sts spec");
        let pod = spec.template.spec.clone().expect("pod spec");
        let db = pod
            .containers
            .iter()
            .find(|c| c.name == "database")
            .expect("database container");
        let version = live
            .status
            .as_ref()
            .and_then(|s| s.version.clone())
            .or(sdb.spec.version.clone());
        let version = wait_for(
            "the resolved version in the status",
            Duration::from_secs(15),
            || {
                let v = version.clone();
                let api = sdb_api.clone();
                let name = name.clone();
                async move { v.or(api.get(&name).await.ok()?.status?.version) }
            },
        )
        .await;
        assert_eq!(
            db.image.as_deref(),
            Some(format!("{}:{version}", want.image).as_str())
        );
        let args = db.args.clone().unwrap_or_default().join(" ");
        assert!(
            args.starts_with(&format!("instance --engine {}", want.name_label)),
            "database container runs the instance manager: {args}"
        );
        assert_eq!(
            db.command.clone().unwrap_or_default(),
            vec!["/opt/servicedb/servicedb".to_string()]
        );
        let init = pod.init_containers.clone().unwrap_or_default();
        assert!(
            init.iter().any(|c| c
                .command
                .clone()
                .unwrap_or_default()
                .contains(&"copy-binary".to_string())),
            "an init container copies the binary"
        );
        let psc = pod.security_context.clone().expect("pod security context");
        assert_eq!(psc.run_as_non_root, Some(true));
        assert_eq!(
            psc.seccomp_profile.map(|s| s.type_),
            Some("RuntimeDefault".into())
        );
        let csc = db
            .security_context
            .clone()
            .expect("container security context");
        assert_eq!(csc.allow_privilege_escalation, Some(false));
        assert_eq!(
            csc.capabilities.and_then(|c| c.drop),
            Some(vec!["ALL".to_string()])
        );
        assert_eq!(
            db.readiness_probe
                .as_ref()
                .and_then(|p| p.http_get.as_ref())
                .and_then(|h| h.path.clone())
                .as_deref(),
            Some("/readyz")
        );
        let class_size = if sdb.spec.engine == MongoDB {
            "5Gi"
        } else {
            "1Gi"
        };
        let want_size = sdb
            .spec
            .storage
            .as_ref()
            .and_then(|s| s.size.clone())
            .unwrap_or_else(|| class_size.into());
        let pvc = &spec.volume_claim_templates.clone().expect("claim template")[0];
        let size = pvc
            .spec
            .as_ref()
            .and_then(|s| s.resources.as_ref())
            .and_then(|r| r.requests.as_ref())
            .and_then(|r| r.get("storage"))
            .map(|q| q.0.clone());
        assert_eq!(size, Some(want_size));
        let when_deleted = spec
            .persistent_volume_claim_retention_policy
            .and_then(|p| p.when_deleted);
        let want_policy = match sdb.spec.deletion_policy {
            servicedb::api::DeletionPolicy::Retain => "Retain",
            _ => "Delete",
        };
        assert_eq!(
            when_deleted.as_deref(),
            Some(want_policy),
            "PVC retention follows deletionPolicy"
        );

        // Services.
        assert_eq!(
            headless
                .spec
                .as_ref()
                .and_then(|s| s.cluster_ip.clone())
                .as_deref(),
            Some("None")
        );
        assert_eq!(
            client_svc
                .spec
                .as_ref()
                .and_then(|s| s.ports.clone())
                .map(|p| p[0].port),
            Some(want.port)
        );

        // The credentials Secret: the common keys plus the engine's own.
        for key in COMMON_KEYS
            .iter()
            .chain([want.variable].iter())
            .chain(want.extra_keys.iter())
        {
            assert!(
                !secret_value(&creds, key).is_empty(),
                "Secret {secret_name} has key {key}"
            );
        }
        let host = format!("{inst}.{}.svc", env.ns);
        assert_eq!(secret_value(&creds, "host"), host);
        assert_eq!(secret_value(&creds, "port"), want.port.to_string());
        assert_eq!(secret_value(&creds, "engine"), want.name_label);
        let password = secret_value(&creds, "password");
        assert!(password.len() >= 32, "a long generated password");
        let uri = secret_value(&creds, "uri");
        assert!(
            uri.starts_with(&format!(
                "{}{}:{password}@{host}:{}/",
                want.scheme,
                secret_value(&creds, "username"),
                want.port
            )),
            "{uri}"
        );
        assert_eq!(secret_value(&creds, want.variable), uri);
        assert_ne!(
            secret_value(&admin, "password"),
            password,
            "the admin and the service have different passwords"
        );
        assert_eq!(secret_value(&admin, "username"), want.admin);

        // The NetworkPolicy selects the database pods and admits the owner's pods.
        let np_spec = np.spec.clone().expect("np spec");
        let pod_labels = spec
            .template
            .metadata
            .as_ref()
            .and_then(|m| m.labels.clone())
            .unwrap_or_default();
        let np_selector = np_spec
            .pod_selector
            .clone()
            .and_then(|s| s.match_labels)
            .unwrap_or_default();
        assert!(
            labels_match(&np_selector, &pod_labels),
            "NetworkPolicy selects the database pods"
        );
        assert_eq!(np_spec.policy_types, Some(vec!["Ingress".to_string()]));
        let peers = np_spec
            .ingress
            .clone()
            .unwrap_or_default()
            .into_iter()
            .flat_map(|r| r.from.unwrap_or_default())
            .collect::<Vec<_>>();
        assert!(
            peers.iter().all(|p| p.pod_selector.is_some()),
            "no peer admits every pod of a namespace"
        );

        // The example's Deployment reads this Secret, and its pods are admitted.
        let app = deployments
            .get(&name)
            .await
            .expect("the example's Deployment");
        let template = app.spec.expect("spec").template;
        let env_from = template.spec.expect("pod").containers[0]
            .env_from
            .clone()
            .unwrap_or_default();
        assert_eq!(
            env_from[0].secret_ref.as_ref().map(|s| s.name.clone()),
            Some(secret_name.clone())
        );
        let app_labels = template.metadata.and_then(|m| m.labels).unwrap_or_default();
        assert!(
            peers.iter().any(|p| p.namespace_selector.is_none()
                && p.pod_selector
                    .clone()
                    .and_then(|s| s.match_labels)
                    .is_some_and(|m| labels_match(&m, &app_labels))),
            "the {name} pods are admitted by the NetworkPolicy: {peers:?}"
        );
        for other in sdbs.iter().filter(|o| o.name_any() != name) {
            let other_labels = other
                .spec
                .owner
                .pod_selector
                .match_labels
                .clone()
                .unwrap_or_default();
            assert!(
                !peers.iter().any(|p| p.namespace_selector.is_none()
                    && p.pod_selector
                        .clone()
                        .and_then(|s| s.match_labels)
                        .is_some_and(|m| labels_match(&m, &other_labels))),
                "{}'s pods are not admitted to {name}'s database",
                other.name_any()
            );
        }

        // Status while the instance starts.
        let live = wait_phase(&sdb_api, &name, Phase::Provisioning).await;
        let status = live.status.clone().expect("status");
        assert_eq!(status.observed_generation, live.metadata.generation);
        assert_eq!(
            status.credentials_secret.as_deref(),
            Some(secret_name.as_str())
        );
        assert_eq!(
            status.endpoint.as_ref().map(|e| e.host.clone()),
            Some(host.clone())
        );
        let cond = |t: &str| {
            status
                .conditions
                .iter()
                .find(|c| c.type_ == t)
                .map(|c| c.status.clone())
        };
        assert_eq!(cond("InstanceReady").as_deref(), Some("False"));
        assert_eq!(cond("CredentialsReady").as_deref(), Some("True"));
        assert_eq!(cond("NetworkIsolated").as_deref(), Some("True"));
        assert_eq!(cond("Ready").as_deref(), Some("False"));

        // The StatefulSet reports a ready replica: the database is Ready.
        set_ready_replicas(&statefulsets, &inst, 1).await;
        let ready = wait_phase(&sdb_api, &name, Phase::Ready).await;
        let conds = ready.status.expect("status").conditions;
        for t in [
            "Ready",
            "InstanceReady",
            "CredentialsReady",
            "NetworkIsolated",
        ] {
            assert_eq!(
                conds
                    .iter()
                    .find(|c| c.type_ == t)
                    .map(|c| c.status.as_str()),
                Some("True"),
                "{t} is True"
            );
            assert!(
                conds
                    .iter()
                    .filter(|c| c.type_ == t)
                    .all(|c| c.observed_generation == live.metadata.generation)
            );
        }
        let events: Api<Event> = env.api();
        wait_for(
            &format!("a Ready Event on {name}"),
            Duration::from_secs(15),
            || async {
                let list = events.list(&ListParams::default()).await.ok()?;
                list.items
                    .iter()
                    .any(|e| {
                        e.involved_object.name.as_deref() == Some(name.as_str())
                            && e.reason.as_deref() == Some("Ready")
                    })
                    .then_some(())
            },
        )
        .await;

        // The pod stops being ready: the database is Degraded, not Provisioning.
        set_ready_replicas(&statefulsets, &inst, 0).await;
        wait_phase(&sdb_api, &name, Phase::Degraded).await;
    }
}

/// The InstanceReady condition of a ServiceDatabase: (status, reason, message).
fn instance_condition(sdb: &ServiceDatabase, type_: &str) -> Option<(String, String, String)> {
    sdb.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

/// A dedicated instance whose pod cannot start says why, in its status and a
/// Warning Event, as on-call would otherwise read it from `kubectl describe
/// pod`: here the image cannot be pulled. The test plays the StatefulSet
/// controller and the kubelet (the real-cluster tier sees a real one).
#[tokio::test]
async fn an_instance_that_cannot_start_says_why() {
    use k8s_openapi::api::core::v1::Pod;
    use kube::api::PostParams;
    let env = Env::new("stuck").await;
    let body = json!({"apiVersion": "servicedb.dev/v1alpha1", "kind": "ServiceDatabase",
        "metadata": {"name": "catalog"},
        "spec": {"engine": "MongoDB", "owner": {"podSelector": {"matchLabels": {"app": "catalog"}}}}});
    let sdbs: Api<ServiceDatabase> = env.api();
    sdbs.patch(
        "catalog",
        &PatchParams::apply("servicedb-e2e"),
        &Patch::Apply(&body),
    )
    .await
    .expect("apply");
    let statefulsets: Api<StatefulSet> = env.api();
    let sts = get_when(&statefulsets, "catalog-db").await;
    let template = sts.spec.expect("spec").template;
    let container = &template.spec.as_ref().expect("pod spec").containers[0];
    let image = container.image.clone().expect("image");
    assert!(image.starts_with("docker.io/library/mongo:"), "{image}");

    // The StatefulSet's pod, whose image cannot be pulled.
    let pods: Api<Pod> = env.api();
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "catalog-db-0", "labels": template.metadata.and_then(|m| m.labels)},
        "spec": {"containers": [{"name": container.name, "image": image}]}}))
    .expect("pod");
    pods.create(&PostParams::default(), &pod)
        .await
        .expect("create the pod");
    let pulling = json!({"status": {"phase": "Pending", "containerStatuses": [{
        "name": container.name, "image": image, "imageID": "", "ready": false, "restartCount": 0,
        "state": {"waiting": {"reason": "ImagePullBackOff",
            "message": format!("Back-off pulling image \"{image}\"")}}}]}});
    pods.patch_status(
        "catalog-db-0",
        &PatchParams::default(),
        &Patch::Merge(&pulling),
    )
    .await
    .expect("pod status");
    // The StatefulSet controller records the pod it made (none ready yet);
    // that is the change the operator is woken by.
    set_ready_replicas(&statefulsets, "catalog-db", 0).await;
    let stuck = wait_for(
        "InstanceReady names the image",
        Duration::from_secs(60),
        || async {
            let sdb = sdbs.get("catalog").await.ok()?;
            let (status, reason, message) = instance_condition(&sdb, "InstanceReady")?;
            (status == "False" && reason == "ImagePullFailed").then_some((sdb, message))
        },
    )
    .await;
    let (sdb, message) = stuck;
    assert!(
        message.contains(&format!("cannot pull image {image}")) && message.contains("catalog-db-0"),
        "{message}"
    );
    let (_, ready_reason, ready_message) = instance_condition(&sdb, "Ready").expect("Ready");
    assert_eq!(ready_reason, "ImagePullFailed", "{ready_message}");
    assert_eq!(
        sdb.status.as_ref().map(|s| s.phase),
        Some(Phase::Provisioning)
    );
    let events = crate::support::objects::events_for(&env, "catalog").await;
    assert!(
        events
            .iter()
            .any(|(t, r, m)| t == "Warning" && r == "ImagePullFailed" && m.contains(&image)),
        "{events:?}"
    );

    // Once the pod runs and is ready, the status says so.
    set_ready_replicas(&statefulsets, "catalog-db", 1).await;
    let ready = wait_phase(&sdbs, "catalog", Phase::Ready).await;
    let (status, reason, _) = instance_condition(&ready, "InstanceReady").expect("InstanceReady");
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("True", "InstanceReady")
    );
}
