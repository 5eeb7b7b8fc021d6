//! The Helm chart (`charts/servicedb`) against a real API server.
//!
//! `helm template` renders it (helm from `hack/helm.sh`) and every object is
//! server-side applied, as `helm install servicedb charts/servicedb -n
//! servicedb-system` would create it. Then the real operator runs as the
//! chart's ServiceAccount — its kubeconfig impersonates
//! `system:serviceaccount:servicedb-system:servicedb` — with the chart's
//! Deployment environment, and must provision, report on and delete
//! databases (deletion policies Retain and Delete) and hold the leader Lease
//! without a single `forbidden`, while what the chart does not grant stays
//! refused.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::time::Duration;

use futures::FutureExt;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{
    ConfigMap, Event, Namespace, PersistentVolumeClaim, Pod, Secret, Service, ServiceAccount,
};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::core::GroupVersionKind;
use kube::discovery::Scope;
use kube::{Api, Client, ResourceExt};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use servicedb::api::{DatabaseClass, Phase, ServiceDatabase};

use crate::support::harness::{
    Env, OPERATOR_NS, Operator, apply_manifest, example, fixture, wait_for,
};
use crate::support::objects::get_when;
use crate::support::objects::set_ready_replicas;
use crate::support::objects::wait_phase;

/// The release name of `helm install servicedb charts/servicedb`.
const RELEASE: &str = "servicedb";
/// Field manager of the test's applies of rendered objects.
const MANAGER: &str = "servicedb-chart-e2e";
/// The Lease the replicas compete for (src/run.rs).
const LEASE: &str = "servicedb-operator";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The helm binary, built once from the Go module proxy by hack/helm.sh.
async fn helm() -> PathBuf {
    let out = tokio::process::Command::new(repo().join("hack/helm.sh"))
        .output()
        .await
        .expect("running hack/helm.sh");
    assert!(
        out.status.success(),
        "hack/helm.sh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// `helm template servicedb charts/servicedb -n servicedb-system ARGS`, every
/// document as JSON.
async fn render(args: &[&str]) -> Vec<Value> {
    let out = tokio::process::Command::new(helm().await)
        .arg("template")
        .arg(RELEASE)
        .arg(repo().join("charts/servicedb"))
        .args(["--namespace", OPERATOR_NS])
        .args(args)
        .output()
        .await
        .expect("running helm template");
    assert!(
        out.status.success(),
        "helm template failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("utf-8 from helm");
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| serde_yaml::Value::deserialize(doc).expect("helm renders YAML"))
        .filter(|doc| !doc.is_null())
        .map(|doc| serde_json::to_value(doc).expect("YAML as JSON"))
        .collect()
}

fn of_kind<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

/// The single rendered object of `kind`, as its k8s-openapi type.
fn one<K: DeserializeOwned>(docs: &[Value], kind: &str) -> K {
    let found = of_kind(docs, kind);
    assert_eq!(found.len(), 1, "the chart renders one {kind}");
    serde_json::from_value(found[0].clone()).unwrap_or_else(|e| panic!("rendered {kind}: {e}"))
}

/// Server-side applies every rendered object, finding each kind's resource
/// by discovery as kubectl does. A Deployment is applied with no replicas:
/// on a cluster with the image, running chart operators would reconcile
/// every other test's databases.
async fn apply_rendered(client: &Client, docs: &[Value]) {
    for doc in docs {
        let mut doc = doc.clone();
        if doc["kind"] == "Deployment" {
            doc["spec"]["replicas"] = json!(0);
        }
        let obj: DynamicObject = serde_json::from_value(doc.clone()).expect("rendered object");
        let types = obj.types.as_ref().expect("apiVersion and kind");
        let gvk = GroupVersionKind::try_from(types).expect("apiVersion");
        let (resource, caps) = kube::discovery::pinned_kind(client, &gvk)
            .await
            .unwrap_or_else(|e| panic!("the API server does not serve {gvk:?}: {e}"));
        let api: Api<DynamicObject> = match caps.scope {
            Scope::Namespaced => {
                let ns = obj.namespace().unwrap_or_else(|| OPERATOR_NS.to_string());
                Api::namespaced_with(client.clone(), &ns, &resource)
            }
            Scope::Cluster => Api::all_with(client.clone(), &resource),
        };
        let name = obj.name_any();
        api.patch(
            &name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&doc),
        )
        .await
        .unwrap_or_else(|e| panic!("the API server refuses {} {name}: {e}", types.kind));
    }
}

fn labels_match(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// The container's literal environment (valueFrom entries left out).
fn literal_env(deploy: &Deployment) -> BTreeMap<String, String> {
    operator_container(deploy)
        .env
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter_map(|e| Some((e.name, e.value?)))
        .collect()
}

fn operator_container(deploy: &Deployment) -> &k8s_openapi::api::core::v1::Container {
    let pod = deploy
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .expect("pod template");
    assert_eq!(pod.containers.len(), 1, "one container");
    &pod.containers[0]
}

fn pod_labels(deploy: &Deployment) -> BTreeMap<String, String> {
    deploy
        .spec
        .as_ref()
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .unwrap_or_default()
}

/// `k=v,k=v` as SERVICEDB_POD_LABELS spells it.
fn parse_labels(s: &str) -> BTreeMap<String, String> {
    s.split(',')
        .filter_map(|p| p.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[tokio::test]
async fn the_chart_installs_into_a_real_api_server() {
    let env = Env::new("chart").await;

    // Every option on: the API server accepts all of it, default classes included.
    let all_on = repo().join("charts/servicedb/ci/all-on-values.yaml");
    let docs = render(&["-f", all_on.to_str().expect("utf-8 path")]).await;
    let mut classes: Vec<&str> = of_kind(&docs, "DatabaseClass")
        .iter()
        .filter_map(|c| c["metadata"]["name"].as_str())
        .collect();
    classes.sort();
    assert_eq!(classes, ["mongodb", "postgres", "redis"]);
    // They are the README's approved engines (examples/manifests).
    let text = std::fs::read_to_string(example("00-databaseclasses.yaml")).expect("example");
    let example_specs: BTreeMap<String, Value> = serde_yaml::Deserializer::from_str(&text)
        .map(|doc| serde_yaml::Value::deserialize(doc).expect("yaml"))
        .map(|doc| serde_json::to_value(doc).expect("json"))
        .map(|doc| (doc["metadata"]["name"].to_string(), doc["spec"].clone()))
        .collect();
    let chart_specs: BTreeMap<String, Value> = of_kind(&docs, "DatabaseClass")
        .iter()
        .map(|doc| (doc["metadata"]["name"].to_string(), doc["spec"].clone()))
        .collect();
    assert_eq!(chart_specs, example_specs);
    apply_rendered(&env.client, &docs).await;
    let class = Api::<DatabaseClass>::all(env.client.clone())
        .get("postgres")
        .await
        .expect("the chart's DatabaseClass");
    assert!(class.spec.default, "postgres is the default Postgres class");

    // The defaults, as `helm install` creates them.
    let docs = render(&["--include-crds"]).await;

    // crds/ holds exactly what `servicedb crd` prints.
    let rendered_crds: Vec<Value> = of_kind(&docs, "CustomResourceDefinition")
        .into_iter()
        .cloned()
        .collect();
    let generated: Vec<Value> = servicedb::api::crds()
        .iter()
        .map(|crd| serde_json::to_value(crd).expect("CRD as JSON"))
        .collect();
    assert!(
        rendered_crds == generated,
        "charts/servicedb/crds/ differs from `servicedb crd`: run `make crds`"
    );
    let docs: Vec<Value> = docs
        .into_iter()
        .filter(|d| d["kind"] != "CustomResourceDefinition")
        .collect();
    let mut kinds: Vec<&str> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
    kinds.sort();
    assert_eq!(
        kinds,
        [
            "ClusterRole",
            "ClusterRoleBinding",
            "Deployment",
            "PodDisruptionBudget",
            "Role",
            "RoleBinding",
            "Service",
            "ServiceAccount"
        ],
        "no DatabaseClass and no ServiceMonitor unless asked for"
    );
    apply_rendered(&env.client, &docs).await;

    let rendered: Deployment = one(&docs, "Deployment");
    assert_eq!(
        rendered.spec.as_ref().and_then(|s| s.replicas),
        Some(2),
        "two replicas, one leads"
    );
    let deploy = Api::<Deployment>::namespaced(env.client.clone(), OPERATOR_NS)
        .get(RELEASE)
        .await
        .expect("the Deployment was accepted");
    let container = operator_container(&deploy);
    let image = container.image.clone().expect("image");
    assert_eq!(
        image,
        format!("ghcr.io/servicedb/servicedb:{}", env!("CARGO_PKG_VERSION")),
        "the chart's appVersion is the crate's version"
    );
    assert_eq!(
        container.command.clone().unwrap_or_default(),
        ["/usr/local/bin/servicedb"]
    );
    assert_eq!(container.args.clone().unwrap_or_default(), ["operator"]);

    // Identity and namespace from the downward API.
    let from_field = |name: &str| {
        container
            .env
            .iter()
            .flatten()
            .find(|e| e.name == name)
            .and_then(|e| e.value_from.as_ref())
            .and_then(|v| v.field_ref.as_ref())
            .map(|f| f.field_path.clone())
    };
    assert_eq!(from_field("POD_NAME").as_deref(), Some("metadata.name"));
    assert_eq!(
        from_field("POD_NAMESPACE").as_deref(),
        Some("metadata.namespace")
    );
    // Database pods copy the binary from the operator's own image, and
    // NetworkPolicies admit the operator by labels its pods carry.
    let vars = literal_env(&deploy);
    assert_eq!(vars.get("SERVICEDB_IMAGE"), Some(&image));
    assert_eq!(
        vars.get("SERVICEDB_LOG_FORMAT").map(String::as_str),
        Some("json")
    );
    let admitted = parse_labels(&vars["SERVICEDB_POD_LABELS"]);
    let labels = pod_labels(&deploy);
    assert!(
        !admitted.is_empty() && labels_match(&admitted, &labels),
        "SERVICEDB_POD_LABELS {admitted:?} are labels of the operator's pods {labels:?}"
    );
    let selector = deploy
        .spec
        .as_ref()
        .and_then(|s| s.selector.match_labels.clone())
        .unwrap_or_default();
    assert_eq!(
        admitted, selector,
        "the admitted labels are the Deployment's stable selector"
    );

    // Probes on the named port.
    let port = container
        .ports
        .iter()
        .flatten()
        .find(|p| p.name.as_deref() == Some("http"))
        .expect("port http");
    assert_eq!(port.container_port, 8080);
    let probe_path = |p: Option<&k8s_openapi::api::core::v1::Probe>| {
        let get = p.and_then(|p| p.http_get.as_ref()).expect("HTTP probe");
        assert_eq!(get.port, IntOrString::String("http".into()));
        get.path.clone()
    };
    assert_eq!(
        probe_path(container.liveness_probe.as_ref()).as_deref(),
        Some("/healthz")
    );
    assert_eq!(
        probe_path(container.readiness_probe.as_ref()).as_deref(),
        Some("/readyz")
    );
    let csc = container.security_context.clone().expect("securityContext");
    assert_eq!(csc.read_only_root_filesystem, Some(true));
    assert_eq!(csc.allow_privilege_escalation, Some(false));
    assert_eq!(
        csc.capabilities.and_then(|c| c.drop),
        Some(vec!["ALL".to_string()])
    );
    assert!(
        container
            .resources
            .as_ref()
            .and_then(|r| r.requests.as_ref())
            .is_some_and(|r| r.contains_key("memory")),
        "resources are set"
    );

    // The metrics Service and the PodDisruptionBudget select the operator.
    let svc = Api::<Service>::namespaced(env.client.clone(), OPERATOR_NS)
        .get(&format!("{RELEASE}-metrics"))
        .await
        .expect("the metrics Service was accepted");
    let svc_spec = svc.spec.expect("spec");
    assert!(labels_match(
        &svc_spec.selector.clone().unwrap_or_default(),
        &labels
    ));
    let svc_port = &svc_spec.ports.expect("ports")[0];
    assert_eq!(svc_port.name.as_deref(), Some("http"));
    assert_eq!(
        svc_port.target_port,
        Some(IntOrString::String("http".into()))
    );
    let pdb = Api::<PodDisruptionBudget>::namespaced(env.client.clone(), OPERATOR_NS)
        .get(RELEASE)
        .await
        .expect("the PodDisruptionBudget was accepted");
    let pdb_spec = pdb.spec.expect("spec");
    assert_eq!(pdb_spec.min_available, Some(IntOrString::Int(1)));
    assert_eq!(
        pdb_spec.selector.and_then(|s| s.match_labels),
        Some(selector)
    );

    // RBAC: the ServiceAccount is bound to the ClusterRole and the Lease Role.
    let sa = Api::<ServiceAccount>::namespaced(env.client.clone(), OPERATOR_NS)
        .get(RELEASE)
        .await
        .expect("the ServiceAccount was accepted");
    let crb = Api::<ClusterRoleBinding>::all(env.client.clone())
        .get(RELEASE)
        .await
        .expect("the ClusterRoleBinding was accepted");
    let role = Api::<ClusterRole>::all(env.client.clone())
        .get(&crb.role_ref.name)
        .await
        .expect("the ClusterRole was accepted");
    assert!(!role.rules.unwrap_or_default().is_empty());
    let rb = Api::<RoleBinding>::namespaced(env.client.clone(), OPERATOR_NS)
        .get(&format!("{RELEASE}-leader-election"))
        .await
        .expect("the RoleBinding was accepted");
    Api::<Role>::namespaced(env.client.clone(), OPERATOR_NS)
        .get(&rb.role_ref.name)
        .await
        .expect("the Role was accepted");
    for subjects in [crb.subjects, rb.subjects] {
        let subject = &subjects.expect("subjects")[0];
        assert_eq!(
            (
                subject.kind.as_str(),
                subject.name.as_str(),
                subject.namespace.as_deref()
            ),
            ("ServiceAccount", sa.name_any().as_str(), Some(OPERATOR_NS))
        );
    }
    assert_eq!(
        deploy
            .spec
            .as_ref()
            .and_then(|s| s.template.spec.as_ref())
            .and_then(|p| p.service_account_name.clone()),
        Some(sa.name_any())
    );

    restricted_pod_security_admits(&env, &deploy).await;
}

/// Pod Security admission at `restricted` admits the operator's pod, and
/// (so that this check can fail) refuses it without its security contexts.
async fn restricted_pod_security_admits(env: &Env, deploy: &Deployment) {
    Api::<Namespace>::all(env.client.clone())
        .patch(
            &env.ns,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(json!({
                "apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": env.ns, "labels": {"pod-security.kubernetes.io/enforce": "restricted"}}
            })),
        )
        .await
        .expect("labelling the namespace");
    let template = deploy.spec.clone().expect("spec").template;
    let mut spec = template.spec.expect("pod spec");
    // The ServiceAccount lives in the release namespace, not in this one.
    spec.service_account_name = None;
    let pod = Pod {
        metadata: ObjectMeta {
            name: Some("operator-pod-security".into()),
            labels: template.metadata.and_then(|m| m.labels),
            ..Default::default()
        },
        spec: Some(spec),
        ..Default::default()
    };
    let pods: Api<Pod> = env.api();
    let dry_run = PostParams {
        dry_run: true,
        ..Default::default()
    };
    if let Err(e) = pods.create(&dry_run, &pod).await {
        panic!("the operator's pod violates the restricted Pod Security Standard: {e}");
    }
    let mut bare = pod.clone();
    if let Some(spec) = bare.spec.as_mut() {
        spec.security_context = None;
        for c in &mut spec.containers {
            c.security_context = None;
        }
    }
    match pods.create(&dry_run, &bare).await {
        Err(kube::Error::Api(e)) if e.code == 403 && e.message.contains("PodSecurity") => {}
        other => panic!(
            "restricted Pod Security is enforced in {}: {other:?}",
            env.ns
        ),
    }
}

/// A copy of KUBECONFIG whose current user impersonates `user`.
fn impersonating_kubeconfig(user: &str) -> (Kubeconfig, PathBuf) {
    let mut kc = Kubeconfig::read().expect("reading KUBECONFIG");
    let current = kc.current_context.clone().expect("a current context");
    let auth = kc
        .contexts
        .iter()
        .find(|c| c.name == current)
        .and_then(|c| c.context.as_ref())
        .and_then(|c| c.user.clone())
        .expect("the current context names a user");
    let info = kc
        .auth_infos
        .iter_mut()
        .find(|a| a.name == auth)
        .and_then(|a| a.auth_info.as_mut())
        .expect("the current user");
    info.impersonate = Some(user.to_string());
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("e2e-chart");
    std::fs::create_dir_all(&dir).expect("kubeconfig dir");
    // Per process: tests on other control planes may write theirs meanwhile.
    let path = dir.join(format!("kubeconfig-{user}-{}", std::process::id()).replace(':', "_"));
    let text = serde_yaml::to_string(&kc).expect("kubeconfig as YAML");
    std::fs::write(&path, text).expect("writing kubeconfig");
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .expect("kubeconfig mode");
    }
    (kc, path)
}

fn assert_forbidden<T: Debug>(result: Result<T, kube::Error>, what: &str) {
    match result {
        Err(kube::Error::Api(e)) if e.code == 403 => {}
        other => panic!("the chart's ServiceAccount must not {what}: {other:?}"),
    }
}

/// What the PVC controller of a StatefulSet would create from its template.
async fn make_pvc(env: &Env, name: &str) {
    let pvc: PersistentVolumeClaim = serde_json::from_value(json!({
        "metadata": {"name": format!("data-{name}-db-0"), "labels": {
            "servicedb.dev/instance": name, "app.kubernetes.io/managed-by": "servicedb",
            "app.kubernetes.io/component": "database"}},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}
    }))
    .expect("pvc");
    env.api::<PersistentVolumeClaim>()
        .create(&PostParams::default(), &pvc)
        .await
        .expect("create pvc");
}

#[tokio::test]
async fn the_operator_needs_no_more_than_the_charts_rbac() {
    let mut env = Env::new("chart-rbac").await;
    // Env::new's operator is an administrator; this test's must make do
    // with the chart's ServiceAccount.
    env.operator.kill();
    let docs = render(&[]).await;
    apply_rendered(&env.client, &docs).await;
    let deploy: Deployment = one(&docs, "Deployment");
    let sa: ServiceAccount = one(&docs, "ServiceAccount");
    let user = format!("system:serviceaccount:{OPERATOR_NS}:{}", sa.name_any());

    // Leader election must create the Lease itself, not find one (the
    // killed operator's would keep it waiting until it expires).
    let leases: Api<Lease> = Api::namespaced(env.client.clone(), OPERATOR_NS);
    match leases.delete(LEASE, &DeleteParams::default()).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 404 => {}
        Err(e) => panic!("deleting the Lease: {e}"),
    }

    let (kc, kubeconfig) = impersonating_kubeconfig(&user);
    let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .expect("impersonating config");
    let sa_client = Client::try_from(config).expect("impersonating client");
    // The kubeconfig really is the ServiceAccount: no ConfigMaps for it.
    assert_forbidden(
        Api::<ConfigMap>::namespaced(sa_client.clone(), &env.ns)
            .list(&ListParams::default())
            .await,
        "list ConfigMaps",
    );

    // The operator as the chart runs it: the Deployment's environment.
    let vars = literal_env(&deploy);
    let mut run_env: Vec<(&str, &str)> =
        vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let kubeconfig = kubeconfig.to_str().expect("utf-8 path");
    run_env.push(("KUBECONFIG", kubeconfig));
    env.operator = Operator::start_with_env("chart-rbac-sa", &run_env);
    let identity = "e2e-chart-rbac-sa-1";

    // A refusal shows up as a timeout; name the refusals (or, failing
    // that, the operator's warnings) instead.
    let outcome = AssertUnwindSafe(operate(&env, &deploy, identity))
        .catch_unwind()
        .await;
    if let Err(panic) = outcome {
        let logs = env.operator.logs();
        let refused = refusals(&logs);
        if !refused.is_empty() {
            panic!(
                "the chart's RBAC refused the operator:\n{}",
                refused.join("\n")
            );
        }
        let what = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        let warnings: BTreeSet<String> = logs
            .lines()
            .filter(|l| l.contains(r#""level":"WARN""#) || l.contains(r#""level":"ERROR""#))
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .map(|l| format!("{} {}", l["message"], l["error"]))
            .collect();
        panic!(
            "{what}\nthe operator's warnings:\n{}",
            warnings.into_iter().collect::<Vec<_>>().join("\n")
        );
    }

    // A graceful stop hands the Lease back.
    env.operator.stop();
    let lease = leases.get(LEASE).await.expect("Lease");
    assert_eq!(
        lease
            .spec
            .and_then(|s| s.holder_identity)
            .filter(|h| !h.is_empty()),
        None,
        "released on SIGTERM"
    );
    let logs = env.operator.logs();
    assert!(
        logs.contains("controllers starting"),
        "the operator ran: {logs}"
    );
    let refused = refusals(&logs);
    assert!(
        refused.is_empty(),
        "the chart's RBAC refused the operator:\n{}",
        refused.join("\n")
    );

    refuses_what_is_not_needed(&sa_client, &env, &sa.name_any()).await;
}

/// Everything the operator does for the shop's orders (Retain) and payments
/// (Delete): provision, report, lead, delete.
async fn operate(env: &Env, deploy: &Deployment, identity: &str) {
    apply_manifest(&env.client, &env.ns, &example("10-orders.yaml")).await;
    apply_manifest(&env.client, &env.ns, &fixture("sdb-payments-delete.yaml")).await;
    let sdbs: Api<ServiceDatabase> = env.api();
    let statefulsets: Api<StatefulSet> = env.api();
    let services: Api<Service> = env.api();
    let secrets: Api<Secret> = env.api();
    let pdbs: Api<PodDisruptionBudget> = env.api();
    let policies: Api<NetworkPolicy> = env.api();
    for name in ["orders", "payments"] {
        wait_phase(&sdbs, name, Phase::Provisioning).await;
        let inst = format!("{name}-db");
        get_when(&statefulsets, &inst).await;
        get_when(&services, &inst).await;
        get_when(&services, &format!("{inst}-hl")).await;
        get_when(&pdbs, &inst).await;
        get_when(&policies, &inst).await;
        get_when(&secrets, &inst).await;
        get_when(&secrets, &format!("{inst}-admin")).await;
    }

    // The chart's settings reach the database pods: the binary comes from
    // the operator's image, and the NetworkPolicy admits the operator's pods.
    let image = operator_container(deploy).image.clone().expect("image");
    let binary = literal_env(deploy)
        .get("SERVICEDB_BINARY_PATH")
        .cloned()
        .expect("SERVICEDB_BINARY_PATH");
    let sts = statefulsets.get("orders-db").await.expect("sts");
    let init = sts
        .spec
        .and_then(|s| s.template.spec)
        .and_then(|p| p.init_containers)
        .unwrap_or_default();
    assert!(
        init.iter()
            .any(|c| c.image.as_deref() == Some(image.as_str())
                && c.command.as_ref().and_then(|c| c.first()) == Some(&binary)),
        "an init container runs {binary} from {image}: {init:?}"
    );
    let np = policies.get("orders-db").await.expect("np");
    let peers: Vec<_> = np
        .spec
        .and_then(|s| s.ingress)
        .unwrap_or_default()
        .into_iter()
        .flat_map(|r| r.from.unwrap_or_default())
        .collect();
    let operator_labels = pod_labels(deploy);
    assert!(
        peers.iter().any(|p| {
            let ns = p
                .namespace_selector
                .as_ref()
                .and_then(|s| s.match_labels.clone())
                .unwrap_or_default();
            let pods = p
                .pod_selector
                .as_ref()
                .and_then(|s| s.match_labels.clone())
                .unwrap_or_default();
            ns.get("kubernetes.io/metadata.name").map(String::as_str) == Some(OPERATOR_NS)
                && !pods.is_empty()
                && labels_match(&pods, &operator_labels)
        }),
        "the NetworkPolicy admits the chart's operator pods {operator_labels:?}: {peers:?}"
    );

    // Status all the way to Ready, and an Event on the way.
    set_ready_replicas(&statefulsets, "orders-db", 1).await;
    wait_phase(&sdbs, "orders", Phase::Ready).await;
    let events: Api<Event> = env.api();
    wait_for(
        "an Event on ServiceDatabase orders",
        Duration::from_secs(30),
        || async {
            events
                .list(&ListParams::default())
                .await
                .ok()?
                .items
                .into_iter()
                .find(|e| e.involved_object.name.as_deref() == Some("orders"))
        },
    )
    .await;

    // Leader election under the chart's Role.
    let leases: Api<Lease> = Api::namespaced(env.client.clone(), OPERATOR_NS);
    let lease = leases
        .get(LEASE)
        .await
        .expect("the operator created its Lease");
    assert_eq!(
        lease.spec.and_then(|s| s.holder_identity).as_deref(),
        Some(identity)
    );
    assert_eq!(env.operator.metric("servicedb_leader").await, Some(1.0));

    backups(env).await;
    crate::support::storage::grows(env, "ledger-store").await;
    crate::support::monitoring::under_chart_rbac(env).await;

    // Deletion: Retain orphans the Secrets, Delete removes them and the volume.
    make_pvc(env, "orders").await;
    make_pvc(env, "payments").await;
    for name in ["orders", "payments"] {
        sdbs.delete(name, &DeleteParams::default())
            .await
            .expect("delete");
    }
    for name in ["orders", "payments"] {
        wait_for(
            &format!("ServiceDatabase {name} to be gone"),
            Duration::from_secs(30),
            || async { sdbs.get_opt(name).await.ok()?.is_none().then_some(()) },
        )
        .await;
    }
    let kept = secrets
        .get("orders-db")
        .await
        .expect("Retain keeps the Secret");
    assert!(kept.owner_references().is_empty(), "and frees it");
    assert!(
        secrets.get_opt("payments-db").await.expect("get").is_none(),
        "Delete removes the Secret"
    );
    let pvc = env
        .api::<PersistentVolumeClaim>()
        .get_opt("data-payments-db-0")
        .await
        .expect("get");
    assert!(
        pvc.is_none_or(|p| p.metadata.deletion_timestamp.is_some()),
        "Delete removes the volume"
    );
}

/// The distinct refusals in the operator's log, such as `cannot list
/// resource "persistentvolumeclaims" in API group ""`.
fn refusals(logs: &str) -> Vec<String> {
    let found: BTreeSet<String> = logs
        .lines()
        .filter(|l| l.to_lowercase().contains("forbidden"))
        .map(|l| {
            let l = l.replace("\\\"", "\"");
            let Some(at) = l.find("cannot ") else {
                return l.chars().take(400).collect();
            };
            let rest = &l[at..];
            let end = [" in the namespace", " at the cluster scope", ": "]
                .iter()
                .filter_map(|m| rest.find(m))
                .min()
                .unwrap_or(rest.len());
            rest[..end].to_string()
        })
        .collect();
    found.into_iter().collect()
}

/// Backups under the chart's RBAC: the CronJob, a backup by hand (its Job,
/// the pod's termination message, the status), the deletion of its archive
/// by a Job, and the final backup of a Snapshot deletion.
async fn backups(env: &Env) {
    use crate::support::backups::manifest;
    use crate::support::backups::manual_backup;
    use crate::support::backups::succeed;
    use crate::support::backups::wait_backup;
    use k8s_openapi::api::batch::v1::CronJob;
    use servicedb::api::DatabaseBackup;
    use servicedb::api::database_backup::BackupPhase;
    let sdbs: Api<ServiceDatabase> = env.api();
    let ledger = json!({
        "apiVersion": "servicedb.dev/v1alpha1", "kind": "ServiceDatabase",
        "metadata": {"name": "ledger"},
        "spec": {"engine": "Postgres", "owner": {"podSelector": {"matchLabels": {"app": "ledger"}}},
            "backup": {"schedule": "@daily", "destination": {"volume": {"claimName": "backups"}},
                "retainArchivesOnDelete": false},
            "deletionPolicy": "Snapshot"}
    });
    let sdb = sdbs
        .patch(
            "ledger",
            &PatchParams::apply("servicedb-e2e").force(),
            &Patch::Apply(&ledger),
        )
        .await
        .expect("applying ledger");
    get_when(&env.api::<CronJob>(), "ledger-db-backup").await;
    manual_backup(env, "ledger-now", "ledger").await;
    succeed(env, "ledger-now-backup", manifest("ledger-now", 1)).await;
    wait_backup(env, "ledger-now", BackupPhase::Completed).await;
    let backups: Api<DatabaseBackup> = env.api();
    backups
        .delete("ledger-now", &DeleteParams::default())
        .await
        .expect("deleting a backup");
    succeed(env, "ledger-now-delete", json!({})).await;
    wait_for("ledger-now to be gone", Duration::from_secs(30), || async {
        backups
            .get_opt("ledger-now")
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await;
    sdbs.delete("ledger", &DeleteParams::default())
        .await
        .expect("delete");
    let uid = sdb.uid().expect("uid").replace('-', "");
    let final_name = format!("ledger-final-{}", &uid[..8]);
    wait_backup(env, &final_name, BackupPhase::Pending).await;
    succeed(
        env,
        &format!("{final_name}-backup"),
        manifest(&final_name, 2),
    )
    .await;
    wait_for("ledger to be gone", Duration::from_secs(30), || async {
        sdbs.get_opt("ledger").await.ok()?.is_none().then_some(())
    })
    .await;
}

/// What the operator does not need, it does not get (dry runs, so that a
/// wrongly granted right changes nothing).
async fn refuses_what_is_not_needed(sa_client: &Client, env: &Env, sa: &str) {
    let dry = PostParams {
        dry_run: true,
        ..Default::default()
    };
    let dry_delete = DeleteParams {
        dry_run: true,
        ..Default::default()
    };
    let sdb: ServiceDatabase = serde_json::from_value(json!({
        "apiVersion": "servicedb.dev/v1alpha1", "kind": "ServiceDatabase",
        "metadata": {"name": "intruder"},
        "spec": {"engine": "Postgres", "owner": {"podSelector": {"matchLabels": {"app": "x"}}}}
    }))
    .expect("sdb");
    assert_forbidden(
        Api::<ServiceDatabase>::namespaced(sa_client.clone(), &env.ns)
            .create(&dry, &sdb)
            .await,
        "create a ServiceDatabase",
    );
    assert_forbidden(
        Api::<DatabaseClass>::all(sa_client.clone())
            .delete("postgres", &dry_delete)
            .await,
        "delete a DatabaseClass",
    );
    // Pods are only read (termination messages of backup Jobs).
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "intruder"},
        "spec": {"containers": [{"name": "c", "image": "busybox"}]}
    }))
    .expect("pod");
    assert_forbidden(
        Api::<Pod>::namespaced(sa_client.clone(), &env.ns)
            .create(&dry, &pod)
            .await,
        "create a pod",
    );
    assert_forbidden(
        Api::<ConfigMap>::namespaced(sa_client.clone(), &env.ns)
            .get("kube-root-ca.crt")
            .await,
        "read a ConfigMap",
    );
    assert_forbidden(
        Api::<Namespace>::all(sa_client.clone())
            .delete(&env.ns, &dry_delete)
            .await,
        "delete a namespace",
    );
    // Deployments: restarts after a rotation and external servers'
    // exporters. No other workload kind it does not build.
    assert_forbidden(
        Api::<k8s_openapi::api::apps::v1::DaemonSet>::namespaced(sa_client.clone(), OPERATOR_NS)
            .list(&ListParams::default())
            .await,
        "list DaemonSets",
    );
    assert_forbidden(
        Api::<Lease>::namespaced(sa_client.clone(), &env.ns)
            .list(&ListParams::default())
            .await,
        "list Leases outside its namespace",
    );
    assert_forbidden(
        Api::<Lease>::namespaced(sa_client.clone(), OPERATOR_NS)
            .get("another-lease")
            .await,
        "read another Lease",
    );
    let crb: ClusterRoleBinding = serde_json::from_value(json!({
        "metadata": {"name": "servicedb-escalation"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
        "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": OPERATOR_NS}]
    }))
    .expect("crb");
    assert_forbidden(
        Api::<ClusterRoleBinding>::all(sa_client.clone())
            .create(&dry, &crb)
            .await,
        "bind itself to cluster-admin",
    );
}
