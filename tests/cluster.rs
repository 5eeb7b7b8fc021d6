//! The real-cluster tier: servicedb on a Kubernetes whose kubelet runs the
//! pods (`hack/cluster`, `make cluster-e2e`). Nothing here plays a
//! controller: the database pods start from the operator's StatefulSet, are
//! `Ready` by their own readiness probes, and the NetworkPolicy is enforced
//! by kube-router: a pod without the owner's label, or with it in another
//! namespace, is refused even with the password.
//!
//! The tests need `SERVICEDB_CLUSTER_KUBECONFIG`, the admin kubeconfig of
//! such a cluster with the images of `hack/cluster/images.sh` imported
//! (`postgres:17`, `redis:8.0` and the operator image the database pods copy
//! the instance manager from). The operator itself runs from the host (this
//! build's binary), as `make run` does against a cluster.

#[path = "common/mod.rs"]
#[allow(dead_code)] // shared with the other test crates
mod common;
#[path = "e2e/support/harness.rs"]
#[allow(dead_code)] // shared with tests/e2e, which uses all of it
mod harness;
#[path = "agent_common/s3.rs"]
#[allow(dead_code)] // shared with the agent tests, which use all of it
mod s3;

use std::collections::BTreeMap;
use std::time::Duration;

use harness::{
    OPERATOR_NS, Operator, apply_manifest, ensure_namespace, example, install_crds, wait_for,
};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret};
use kube::api::{DeleteParams, LogParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client};
use serde_json::json;
use servicedb::api::ServiceDatabase;

const KUBECONFIG_VAR: &str = "SERVICEDB_CLUSTER_KUBECONFIG";

fn kubeconfig_path() -> String {
    std::env::var(KUBECONFIG_VAR).unwrap_or_else(|_| {
        panic!(
            "the real-cluster tests need {KUBECONFIG_VAR}: the kubeconfig of a cluster that runs pods \
             (make cluster-e2e brings one up with hack/cluster/up.sh)"
        )
    })
}

async fn client() -> Client {
    let path = kubeconfig_path();
    let kubeconfig = Kubeconfig::read_from(&path).unwrap_or_else(|e| panic!("reading {path}: {e}"));
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .unwrap_or_else(|e| panic!("{path}: {e}"));
    Client::try_from(config).expect("building a client")
}

/// One operator at a time: each test starts its own.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// One test's namespace (Pod Security `restricted` enforced) and operator.
struct World {
    client: Client,
    ns: String,
    /// Other namespaces the test made (deleted with `ns`).
    others: Vec<String>,
    /// The operator on this machine, or none when the chart runs it in the
    /// cluster ([`World::in_cluster`]).
    operator: Option<Operator>,
    _serial: std::sync::MutexGuard<'static, ()>,
}

impl World {
    // Each #[tokio::test] has its own runtime: the guard serialises whole tests.
    #[allow(clippy::await_holding_lock)]
    async fn new(test: &str) -> World {
        let mut world = World::without_operator(test).await;
        world.operator = Some(Operator::start_with_env(
            test,
            &[("KUBECONFIG", &kubeconfig_path())],
        ));
        world
    }

    /// servicedb installed by its Helm chart, as `make run` installs it: two
    /// replicas in the cluster, leader election, the chart's RBAC; the image
    /// is the one `hack/cluster/images.sh` imported. A rotation needs this:
    /// the operator checks the new login through the instance's Service
    /// name, which only the cluster's DNS resolves.
    async fn in_cluster(test: &str) -> World {
        let world = World::without_operator(test).await;
        let archive = std::env::var("SERVICEDB_OPERATOR_IMAGE_ARCHIVE")
            .expect("SERVICEDB_OPERATOR_IMAGE_ARCHIVE (make cluster-e2e)");
        let helm = sh("hack/helm.sh");
        let out = std::process::Command::new(helm.trim())
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env("KUBECONFIG", kubeconfig_path())
            .args([
                "upgrade",
                "--install",
                "servicedb",
                "charts/servicedb",
                "-n",
                OPERATOR_NS,
                "--set",
                "operator.logFormat=text",
                "--set-string",
                &format!(
                    "podAnnotations.servicedb\\.dev/image-archive={}",
                    archive_tag(&archive)
                ),
                "--wait",
                "--timeout",
                "5m",
            ])
            .output()
            .expect("running helm");
        assert!(
            out.status.success(),
            "helm install: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        world
    }

    #[allow(clippy::await_holding_lock)]
    async fn without_operator(test: &str) -> World {
        let serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let client = client().await;
        install_crds(&client).await;
        ensure_namespace(&client, OPERATOR_NS).await;
        let suffix = format!("{:x}", std::process::id() ^ (clock_bits() & 0xffff));
        let ns = format!("cluster-{test}-{suffix}");
        create_restricted_namespace(&client, &ns).await;
        apply_manifest(&client, &ns, &example("00-databaseclasses.yaml")).await;
        World {
            client,
            ns,
            others: vec![],
            operator: None,
            _serial: serial,
        }
    }

    fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
    {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    /// Another namespace holding a copy of the Secret `secret`: a neighbour
    /// that knows the password.
    async fn neighbour_with_secret(&mut self, secret: &str) -> String {
        let other = format!("{}-neighbour", self.ns);
        create_restricted_namespace(&self.client, &other).await;
        let data = self
            .api::<Secret>()
            .get(secret)
            .await
            .expect("reading the credentials Secret")
            .data;
        let copy = Secret {
            metadata: kube::api::ObjectMeta {
                name: Some(secret.to_string()),
                ..Default::default()
            },
            data,
            ..Default::default()
        };
        Api::<Secret>::namespaced(self.client.clone(), &other)
            .create(&PostParams::default(), &copy)
            .await
            .expect("copying the Secret to the neighbour");
        self.others.push(other.clone());
        other
    }

    /// Stops the operator and deletes the namespaces (not waiting for it).
    async fn finish(mut self) {
        match self.operator.as_mut() {
            Some(operator) => operator.stop(),
            None => {
                let helm = sh("hack/helm.sh");
                let _ = std::process::Command::new(helm.trim())
                    .env("KUBECONFIG", kubeconfig_path())
                    .args(["uninstall", "servicedb", "-n", OPERATOR_NS, "--wait"])
                    .output();
            }
        }
        for ns in std::iter::once(&self.ns).chain(&self.others) {
            let _ = Api::<Namespace>::all(self.client.clone())
                .delete(ns, &DeleteParams::default())
                .await;
        }
    }
}

async fn create_restricted_namespace(client: &Client, ns: &str) {
    let namespace: Namespace = serde_json::from_value(json!({
        "metadata": {
            "name": ns,
            "labels": {"pod-security.kubernetes.io/enforce": "restricted"}
        }
    }))
    .expect("namespace");
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &namespace)
        .await
        .unwrap_or_else(|e| panic!("creating namespace {ns}: {e}"));
}

fn clock_bits() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() ^ d.as_secs() as u32)
        .unwrap_or(0)
}

/// Creates a ServiceDatabase owned by the pods labelled `app: <owner>`.
/// `spec` with the fields of `extra` added or replaced.
fn with_fields(mut spec: serde_json::Value, extra: serde_json::Value) -> serde_json::Value {
    if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
        spec.extend(extra.clone());
    }
    spec
}

/// The spec of a dedicated PostgreSQL 17 `orders` owned by `app: orders`
/// (1Gi, deleted with its data), with `extra` fields.
fn orders_postgres(extra: serde_json::Value) -> serde_json::Value {
    with_fields(
        json!({
            "engine": "Postgres",
            "version": "17",
            "owner": {"podSelector": {"matchLabels": {"app": "orders"}}},
            "storage": {"size": "1Gi"},
            "deletionPolicy": "Delete"
        }),
        extra,
    )
}

/// The spec of a dedicated Redis 8.0 `cart` owned by `app: cart` (deleted
/// with its data), with `extra` fields.
fn cart_redis(extra: serde_json::Value) -> serde_json::Value {
    with_fields(
        json!({
            "engine": "Redis",
            "version": "8.0",
            "owner": {"podSelector": {"matchLabels": {"app": "cart"}}},
            "deletionPolicy": "Delete"
        }),
        extra,
    )
}

async fn create_database(world: &World, name: &str, spec: serde_json::Value) {
    let sdb: ServiceDatabase = serde_json::from_value(json!({
        "apiVersion": "servicedb.dev/v1alpha1",
        "kind": "ServiceDatabase",
        "metadata": {"name": name},
        "spec": spec,
    }))
    .expect("ServiceDatabase");
    world
        .api::<ServiceDatabase>()
        .create(&PostParams::default(), &sdb)
        .await
        .unwrap_or_else(|e| panic!("creating ServiceDatabase {name}: {e}"));
}

fn condition(sdb: &ServiceDatabase, type_: &str) -> Option<(String, String, String)> {
    sdb.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

/// Waits until the ServiceDatabase is `Ready`; on time-out, says what its
/// status and its database pod last showed.
async fn wait_ready(world: &World, name: &str) -> ServiceDatabase {
    let api = world.api::<ServiceDatabase>();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(240);
    loop {
        let sdb = api.get(name).await.expect("reading the ServiceDatabase");
        if condition(&sdb, "Ready").is_some_and(|(status, _, _)| status == "True") {
            return sdb;
        }
        if tokio::time::Instant::now() > deadline {
            let pods = world.api::<Pod>().list(&Default::default()).await.ok();
            let pod_states: Vec<String> = pods
                .map(|l| l.items)
                .unwrap_or_default()
                .iter()
                .map(|p| {
                    format!(
                        "{}: {:?}",
                        p.metadata.name.clone().unwrap_or_default(),
                        p.status
                    )
                })
                .collect();
            panic!(
                "ServiceDatabase {name} not Ready after 240s; status: {:?}\npods: {pod_states:#?}\noperator log: {}",
                sdb.status,
                world.operator.as_ref().map_or(
                    "kubectl logs -n servicedb-system -l app.kubernetes.io/name=servicedb".into(),
                    |o| o.log.display().to_string()
                )
            );
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// The database pod is really running and ready: the kubelet's probes say so.
async fn assert_pod_ready(world: &World, sdb_name: &str) {
    let sts: Vec<StatefulSet> = world
        .api::<StatefulSet>()
        .list(&Default::default())
        .await
        .expect("listing StatefulSets")
        .items;
    assert_eq!(sts.len(), 1, "one StatefulSet for {sdb_name}");
    let sts_name = sts[0].metadata.name.clone().unwrap_or_default();
    let pod = world
        .api::<Pod>()
        .get(&format!("{sts_name}-0"))
        .await
        .expect("the database pod");
    let status = pod.status.unwrap_or_default();
    assert_eq!(
        status.phase.as_deref(),
        Some("Running"),
        "database pod phase"
    );
    let database = status
        .container_statuses
        .unwrap_or_default()
        .into_iter()
        .find(|c| c.name == "database")
        .expect("the database container's status");
    assert!(database.ready, "the database container is ready");
    assert!(
        database.state.and_then(|s| s.running).is_some(),
        "the database container runs"
    );
}

/// Waits for pod `name` to be a new one (not `old`) whose database
/// container is ready.
async fn wait_replaced(world: &World, name: &str, old: &Pod) {
    let pods = world.api::<Pod>();
    wait_for(
        "a new, ready database pod",
        Duration::from_secs(240),
        || async {
            let pod = pods.get(name).await.ok()?;
            let ready = pod
                .status
                .as_ref()?
                .container_statuses
                .as_ref()?
                .iter()
                .any(|c| c.name == "database" && c.ready);
            (pod.metadata.uid != old.metadata.uid && ready).then_some(())
        },
    )
    .await;
}

/// A client pod: `image` runs `script` (sh) with the Secret `secret` as its
/// environment and nothing else, under the `restricted` Pod Security
/// Standard. Returns its exit code and log once it has ended.
async fn run_client(
    world: &World,
    ns: &str,
    name: &str,
    labels: BTreeMap<&str, &str>,
    image: &str,
    secret: &str,
    script: &str,
) -> (i32, String) {
    run_pod(world, ns, name, labels, image, Some(secret), script).await
}

/// [`run_client`], with the Secret `secret` as environment if any.
async fn run_pod(
    world: &World,
    ns: &str,
    name: &str,
    labels: BTreeMap<&str, &str>,
    image: &str,
    secret: Option<&str>,
    script: &str,
) -> (i32, String) {
    let env_from = secret.map_or(json!([]), |s| json!([{"secretRef": {"name": s}}]));
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": false,
            "securityContext": {
                "runAsNonRoot": true, "runAsUser": 999, "runAsGroup": 999,
                "seccompProfile": {"type": "RuntimeDefault"}
            },
            "containers": [{
                "name": "client",
                "image": image,
                "imagePullPolicy": "IfNotPresent",
                "command": ["sh", "-c", script],
                "envFrom": env_from,
                "env": [{"name": "HOME", "value": "/tmp"}],
                "securityContext": {
                    "allowPrivilegeEscalation": false,
                    "capabilities": {"drop": ["ALL"]},
                    "readOnlyRootFilesystem": true
                },
                "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}]
            }],
            "volumes": [{"name": "tmp", "emptyDir": {}}]
        }
    }))
    .expect("client pod");
    let pods: Api<Pod> = Api::namespaced(world.client.clone(), ns);
    pods.create(&PostParams::default(), &pod)
        .await
        .unwrap_or_else(|e| panic!("creating pod {name}: {e}"));
    let ended = wait_for(
        &format!("client pod {name} to end"),
        Duration::from_secs(300),
        || async {
            let pod = pods.get(name).await.ok()?;
            let status = pod.status?;
            let terminated = status
                .container_statuses?
                .into_iter()
                .find(|c| c.name == "client")?
                .state?
                .terminated?;
            matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")).then_some(terminated)
        },
    )
    .await;
    let log = pods
        .logs(name, &LogParams::default())
        .await
        .unwrap_or_else(|e| panic!("reading the log of pod {name}: {e}"));
    (ended.exit_code, log)
}

/// `psql` lines run by an owner's pod, once its first connection works.
fn owner_psql(commands: &str) -> String {
    format!(
        r#"export PGCONNECT_TIMEOUT=3
for i in $(seq {OWNER_RETRIES}); do
  psql "$DATABASE_URL" -c 'select 1' >/dev/null 2>&1 && break
  sleep 1
done
{commands}"#
    )
}

/// The first connection of a new owner pod is retried for a while:
/// kube-router admits a pod's address a second or two after it starts.
const OWNER_RETRIES: u32 = 20;
/// A pod that is not the owner tries for longer than that, so that a policy
/// that let it in would be seen.
const INTRUDER_TRIES: u32 = 12;

#[tokio::test]
async fn dedicated_postgres_runs_and_admits_only_its_owner() {
    let mut world = World::new("postgres").await;
    create_database(&world, "orders", orders_postgres(json!({}))).await;
    let sdb = wait_ready(&world, "orders").await;
    assert_eq!(
        sdb.status.as_ref().and_then(|s| s.version.as_deref()),
        Some("17")
    );
    assert_pod_ready(&world, "orders").await;
    let secret = sdb
        .status
        .and_then(|s| s.credentials_secret)
        .expect("the status names the credentials Secret");

    // The owner: psql with the Secret's DATABASE_URL only.
    let owner_script = owner_psql(
        r#"psql "$DATABASE_URL" -v ON_ERROR_STOP=1 -At \
  -c "create table orders (id int primary key, item text)" \
  -c "insert into orders values (1, 'written by the owner')" \
  -c "select item from orders where id = 1""#,
    );
    let (code, log) = run_client(
        &world,
        &world.ns,
        "owner",
        BTreeMap::from([("app", "orders")]),
        "docker.io/library/postgres:17",
        &secret,
        &owner_script,
    )
    .await;
    assert_eq!(code, 0, "the owner's pod wrote and read; its log:\n{log}");
    assert!(
        log.lines().any(|l| l == "written by the owner"),
        "the owner read its row back; its log:\n{log}"
    );

    // Same namespace, same Secret, another label: refused by the network.
    let intruder_script = format!(
        r#"export PGCONNECT_TIMEOUT=3
getent hosts "$host" >/dev/null || {{ echo "no DNS for $host"; exit 2; }}
for i in $(seq {INTRUDER_TRIES}); do
  if psql "$DATABASE_URL" -At -c 'select 1' >/dev/null 2>&1; then echo CONNECTED; exit 0; fi
  sleep 1
done
echo REFUSED; exit 3"#
    );
    let (code, log) = run_client(
        &world,
        &world.ns,
        "intruder",
        BTreeMap::from([("app", "not-orders")]),
        "docker.io/library/postgres:17",
        &secret,
        &intruder_script,
    )
    .await;
    assert_eq!(
        (code, log.trim()),
        (3, "REFUSED"),
        "a pod without the owner label must not reach the database"
    );

    // Another namespace, the owner's label and the password: refused too.
    let neighbour = world.neighbour_with_secret(&secret).await;
    let (code, log) = run_client(
        &world,
        &neighbour,
        "intruder",
        BTreeMap::from([("app", "orders")]),
        "docker.io/library/postgres:17",
        &secret,
        &intruder_script,
    )
    .await;
    assert_eq!(
        (code, log.trim()),
        (3, "REFUSED"),
        "a pod in another namespace must not reach the database, whatever its labels"
    );
    // The database pod is deleted: the instance manager stops PostgreSQL
    // cleanly on SIGTERM, a new pod starts on the same volume, and the data
    // and the password are what they were.
    let secrets = world.api::<Secret>();
    let password_before = secrets.get(&secret).await.expect("the Secret").data;
    let pods = world.api::<Pod>();
    let old = pods.get("orders-db-0").await.expect("the database pod");
    let params = LogParams {
        follow: true,
        container: Some("database".into()),
        ..Default::default()
    };
    let mut stream = Box::pin(
        pods.log_stream("orders-db-0", &params)
            .await
            .expect("following the database container's log"),
    );
    pods.delete("orders-db-0", &DeleteParams::default())
        .await
        .expect("deleting the database pod");
    let mut last_words = String::new();
    tokio::time::timeout(
        Duration::from_secs(90),
        futures::AsyncReadExt::read_to_string(&mut stream, &mut last_words),
    )
    .await
    .expect("the database container ends within its grace period")
    .expect("reading its log");
    assert!(
        last_words.contains("shutting down")
            && last_words.contains("stopped")
            && !last_words.contains("did not stop cleanly"),
        "SIGTERM stops the server cleanly; the container's last log:\n{last_words}"
    );
    wait_replaced(&world, "orders-db-0", &old).await;
    let read_script = owner_psql(
        r#"psql "$DATABASE_URL" -v ON_ERROR_STOP=1 -At -c "select item from orders where id = 1""#,
    );
    let (code, log) = run_client(
        &world,
        &world.ns,
        "owner-again",
        BTreeMap::from([("app", "orders")]),
        "docker.io/library/postgres:17",
        &secret,
        &read_script,
    )
    .await;
    assert_eq!(
        (code, log.trim()),
        (0, "written by the owner"),
        "the row survives the pod, read with the same Secret"
    );
    assert!(
        secrets.get(&secret).await.expect("the Secret").data == password_before,
        "the credentials did not change"
    );
    world.finish().await;
}

#[tokio::test]
async fn dedicated_redis_runs_and_admits_only_its_owner() {
    let mut world = World::new("redis").await;
    create_database(&world, "cart", cart_redis(json!({}))).await;
    let sdb = wait_ready(&world, "cart").await;
    assert_eq!(
        sdb.status.as_ref().and_then(|s| s.version.as_deref()),
        Some("8.0")
    );
    assert_pod_ready(&world, "cart").await;
    let secret = sdb
        .status
        .and_then(|s| s.credentials_secret)
        .expect("the status names the credentials Secret");

    // The owner: redis-cli with the Secret's REDIS_URL and keyPrefix only.
    let owner_script = format!(
        r#"cli() {{ timeout 5 redis-cli --no-auth-warning -u "$REDIS_URL" "$@"; }}
for i in $(seq {OWNER_RETRIES}); do
  [ "$(cli PING 2>/dev/null)" = PONG ] && break
  sleep 1
done
cli SET "${{keyPrefix}}basket" 'written by the owner'
cli GET "${{keyPrefix}}basket""#
    );
    let (code, log) = run_client(
        &world,
        &world.ns,
        "owner",
        BTreeMap::from([("app", "cart")]),
        "docker.io/library/redis:8.0",
        &secret,
        &owner_script,
    )
    .await;
    assert_eq!(code, 0, "the owner's pod ran; its log:\n{log}");
    assert_eq!(
        log.lines().collect::<Vec<_>>(),
        ["OK", "written by the owner"],
        "the owner wrote and read its key; its log:\n{log}"
    );

    let intruder_script = format!(
        r#"getent hosts "$host" >/dev/null || {{ echo "no DNS for $host"; exit 2; }}
for i in $(seq {INTRUDER_TRIES}); do
  if [ "$(timeout 3 redis-cli --no-auth-warning -u "$REDIS_URL" PING 2>/dev/null)" = PONG ]; then echo CONNECTED; exit 0; fi
  sleep 1
done
echo REFUSED; exit 3"#
    );
    let (code, log) = run_client(
        &world,
        &world.ns,
        "intruder",
        BTreeMap::from([("app", "not-cart")]),
        "docker.io/library/redis:8.0",
        &secret,
        &intruder_script,
    )
    .await;
    assert_eq!(
        (code, log.trim()),
        (3, "REFUSED"),
        "a pod without the owner label must not reach the database"
    );

    // Another namespace, the owner's label and the password: refused too.
    let neighbour = world.neighbour_with_secret(&secret).await;
    let (code, log) = run_client(
        &world,
        &neighbour,
        "intruder",
        BTreeMap::from([("app", "cart")]),
        "docker.io/library/redis:8.0",
        &secret,
        &intruder_script,
    )
    .await;
    assert_eq!(
        (code, log.trim()),
        (3, "REFUSED"),
        "a pod in another namespace must not reach the database, whatever its labels"
    );
    world.finish().await;
}

/// `SHOW parameter` as the owner, from a pod with the Secret.
async fn owner_shows(world: &World, secret: &str, pod: &str, parameter: &str) -> String {
    let (code, log) = run_client(
        world,
        &world.ns,
        pod,
        BTreeMap::from([("app", "orders")]),
        "docker.io/library/postgres:17",
        secret,
        &owner_psql(&format!(
            r#"psql "$DATABASE_URL" -v ON_ERROR_STOP=1 -At -c "SHOW {parameter}""#
        )),
    )
    .await;
    assert_eq!(code, 0, "SHOW {parameter}: {log}");
    log.trim().to_string()
}

#[tokio::test]
async fn postgres_parameters_reload_in_the_running_pod_and_restart_ones_roll_it() {
    let world = World::new("parameters").await;
    create_database(
        &world,
        "orders",
        orders_postgres(json!({"postgres": {"parameters": {"work_mem": "8MB"}}})),
    )
    .await;
    let sdb = wait_ready(&world, "orders").await;
    let secret = sdb
        .status
        .and_then(|s| s.credentials_secret)
        .expect("the credentials Secret");
    assert_eq!(
        owner_shows(&world, &secret, "show-1", "work_mem").await,
        "8MB"
    );
    let pods = world.api::<Pod>();
    let first = pods.get("orders-db-0").await.expect("the database pod");

    // A reloadable parameter: the kubelet updates the mounted admin Secret,
    // the instance manager reloads, the same pod serves the new value.
    let sdbs = world.api::<ServiceDatabase>();
    let patch = |parameters: serde_json::Value| {
        let sdbs = sdbs.clone();
        async move {
            sdbs.patch(
                "orders",
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(
                    &json!({"spec": {"postgres": {"parameters": parameters}}}),
                ),
            )
            .await
            .expect("patching spec.postgres.parameters");
        }
    };
    patch(json!({"work_mem": "16MB"})).await;
    let mut attempt = 1;
    wait_for(
        "work_mem 16MB in the running server",
        Duration::from_secs(240),
        || {
            attempt += 1;
            let name = format!("show-{attempt}");
            let (world, secret) = (&world, &secret);
            async move { (owner_shows(world, secret, &name, "work_mem").await == "16MB").then_some(()) }
        },
    )
    .await;
    let same = pods.get("orders-db-0").await.expect("the database pod");
    assert_eq!(
        same.metadata.uid, first.metadata.uid,
        "work_mem was reloaded, not restarted"
    );

    // One PostgreSQL reads at start only: the pod is replaced, the new
    // server runs with it.
    patch(json!({"work_mem": "16MB", "max_connections": "60"})).await;
    wait_replaced(&world, "orders-db-0", &first).await;
    assert_eq!(
        owner_shows(&world, &secret, "show-restarted", "max_connections").await,
        "60"
    );
    world.finish().await;
}

/// kubectl of the cluster's build, with the cluster's kubeconfig, run in
/// the repository; returns its stdout.
fn kubectl(args: &str) -> String {
    sh(&format!(
        "cd '{}' && \"$(hack/cluster/build.sh 2>/dev/null)/kubectl\" --kubeconfig '{}' {args}",
        env!("CARGO_MANIFEST_DIR"),
        kubeconfig_path()
    ))
}

/// The value of the first series `query` returns from the Prometheus of
/// examples/monitoring (through the API server's service proxy).
async fn prometheus_value(client: &Client, query: String) -> Option<f64> {
    let encoded: String = query
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'-' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    let request = http::Request::get(format!(
        "/api/v1/namespaces/monitoring/services/prometheus:9090/proxy/api/v1/query?query={encoded}"
    ))
    .body(vec![])
    .expect("a request");
    let text = client.request_text(request).await.ok()?;
    let answer: serde_json::Value = serde_json::from_str(&text).ok()?;
    answer["data"]["result"][0]["value"][1]
        .as_str()?
        .parse()
        .ok()
}

#[tokio::test]
async fn a_monitored_instance_is_scraped_by_prometheus_alone() {
    let mut world = World::new("monitored").await;
    // The Prometheus of the README's example, as make run applies it: in
    // the namespace `monitoring`, labelled as the operator's default scraper.
    kubectl("apply --server-side --field-manager=cluster-e2e -f examples/monitoring/");
    world.others.push("monitoring".into());
    create_database(
        &world,
        "orders",
        orders_postgres(json!({"monitoring": {"enabled": true}})),
    )
    .await;
    wait_ready(&world, "orders").await;
    assert_pod_ready(&world, "orders").await;
    let pod = world
        .api::<Pod>()
        .get("orders-db-0")
        .await
        .expect("the database pod");
    let exporter = pod
        .status
        .and_then(|s| s.container_statuses)
        .unwrap_or_default()
        .into_iter()
        .find(|c| c.name == "exporter")
        .expect("the exporter sidecar's status");
    assert!(exporter.ready, "the exporter sidecar runs: {exporter:?}");

    // Prometheus finds the instance by its Service's metrics port, logs in
    // through the exporter with the monitoring login, and reads the
    // service's own database.
    let selector = format!(r#"namespace="{}",service_database="orders""#, world.ns);
    let up = wait_for(
        "Prometheus to scrape pg_up of orders",
        Duration::from_secs(180),
        || prometheus_value(&world.client, format!("pg_up{{{selector}}}")),
    )
    .await;
    assert_eq!(up, 1.0, "the exporter reaches PostgreSQL");
    let size = wait_for(
        "Prometheus to scrape the size of the database orders",
        Duration::from_secs(60),
        || {
            prometheus_value(
                &world.client,
                format!(r#"pg_database_size_bytes{{{selector},datname="orders"}}"#),
            )
        },
    )
    .await;
    assert!(size > 0.0, "the database's size is reported: {size}");

    // Anyone else is refused at the metrics port: the owner's own pod, and
    // a pod in the monitoring namespace that is not labelled as Prometheus.
    let service = world
        .api::<k8s_openapi::api::core::v1::Service>()
        .get("orders-db")
        .await
        .expect("the client Service");
    let ip = service
        .spec
        .and_then(|s| s.cluster_ip)
        .expect("the Service's cluster IP");
    // One GET of /metrics over bash's /dev/tcp; the same script from a pod
    // labelled as Prometheus in `monitoring` shows that it works.
    let scrape = format!(
        r#"get() {{ timeout 3 bash -c 'exec 3<>/dev/tcp/{ip}/9187 && printf "GET /metrics HTTP/1.0\r\n\r\n" >&3 && grep -q "^pg_up" <&3' 2>/dev/null; }}
for i in $(seq {INTRUDER_TRIES}); do
  if get; then echo SCRAPED; exit 0; fi
  sleep 1
done
echo REFUSED; exit 3"#
    );
    for (ns, name, labels, expected) in [
        (
            "monitoring".to_string(),
            "prometheus-alike",
            BTreeMap::from([("app.kubernetes.io/name", "prometheus")]),
            (0, "SCRAPED"),
        ),
        (
            world.ns.clone(),
            "owner",
            BTreeMap::from([("app", "orders")]),
            (3, "REFUSED"),
        ),
        (
            "monitoring".to_string(),
            "not-prometheus",
            BTreeMap::from([("app.kubernetes.io/name", "not-prometheus")]),
            (3, "REFUSED"),
        ),
    ] {
        let (code, log) = run_pod(
            &world,
            &ns,
            name,
            labels.clone(),
            "docker.io/library/postgres:17",
            None,
            &scrape,
        )
        .await;
        assert_eq!(
            (code, log.trim()),
            expected,
            "a pod labelled {labels:?} in {ns} at the metrics port"
        );
    }
    // Redis: the pinned redis_exporter image, logged in as the monitoring
    // user (INFO and the like only), scraped the same way.
    create_database(
        &world,
        "cart",
        cart_redis(json!({"storage": {"size": "1Gi"}, "monitoring": {"enabled": true}})),
    )
    .await;
    wait_ready(&world, "cart").await;
    let up = wait_for(
        "Prometheus to scrape redis_up of cart",
        Duration::from_secs(180),
        || {
            prometheus_value(
                &world.client,
                format!(
                    r#"redis_up{{namespace="{}",service_database="cart"}}"#,
                    world.ns
                ),
            )
        },
    )
    .await;
    assert_eq!(
        up, 1.0,
        "the exporter reaches Redis with the monitoring user"
    );
    kubectl(
        "delete --ignore-not-found --wait=false clusterrole/monitoring-prometheus clusterrolebinding/monitoring-prometheus",
    );
    world.finish().await;
}

/// Runs `sh -c script` on the host and returns its stdout.
fn sh(script: &str) -> String {
    let out = std::process::Command::new("sh")
        .args(["-c", script])
        .output()
        .expect("running sh");
    assert!(
        out.status.success(),
        "`{script}` failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

/// The value of the last `INSTRUCTION ...` line of the Dockerfile.
fn dockerfile_last(dockerfile: &str, instruction: &str) -> String {
    dockerfile
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix(&format!("{instruction} ")))
        .unwrap_or_else(|| panic!("the Dockerfile has no {instruction}"))
        .trim()
        .to_string()
}

#[test]
fn the_operator_image_is_what_the_dockerfile_describes() {
    // The archive `hack/cluster/images.sh --operator` built (make cluster-e2e sets it).
    let archive = std::env::var("SERVICEDB_OPERATOR_IMAGE_ARCHIVE").unwrap_or_else(|_| {
        panic!("SERVICEDB_OPERATOR_IMAGE_ARCHIVE: the operator image archive of hack/cluster/images.sh (make cluster-e2e)")
    });
    let dockerfile = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Dockerfile"))
        .expect("reading the Dockerfile");
    let blob = |digest: &str| -> serde_json::Value {
        let digest = digest.trim_start_matches("sha256:");
        serde_json::from_str(&sh(&format!("tar -xOf '{archive}' blobs/sha256/{digest}")))
            .expect("an OCI JSON blob")
    };
    let index: serde_json::Value =
        serde_json::from_str(&sh(&format!("tar -xOf '{archive}' index.json"))).expect("index.json");
    assert_eq!(
        index["manifests"][0]["annotations"]["io.containerd.image.name"],
        "ghcr.io/servicedb/servicedb:0.1.0",
        "the image carries the name the operator's --image defaults to"
    );
    let manifest = blob(
        index["manifests"][0]["digest"]
            .as_str()
            .expect("manifest digest"),
    );
    let config = blob(
        manifest["config"]["digest"]
            .as_str()
            .expect("config digest"),
    );
    let config = &config["config"];

    // USER, ENTRYPOINT and CMD of the Dockerfile's final stage.
    assert_eq!(config["User"], dockerfile_last(&dockerfile, "USER"));
    let entrypoint: serde_json::Value =
        serde_json::from_str(&dockerfile_last(&dockerfile, "ENTRYPOINT")).expect("ENTRYPOINT");
    assert_eq!(config["Entrypoint"], entrypoint);
    let cmd: serde_json::Value =
        serde_json::from_str(&dockerfile_last(&dockerfile, "CMD")).expect("CMD");
    assert_eq!(config["Cmd"], cmd);

    // The binary where the final COPY puts it, with its mode.
    let copy = dockerfile_last(&dockerfile, "COPY");
    let target = copy.split_whitespace().last().expect("COPY target");
    let mode = copy
        .split_whitespace()
        .find_map(|w| w.strip_prefix("--chmod="))
        .expect("COPY --chmod");
    assert_eq!(mode, "0555");
    let layer = manifest["layers"][0]["digest"]
        .as_str()
        .expect("layer digest")
        .trim_start_matches("sha256:");
    let listing = sh(&format!(
        "tar -xOf '{archive}' blobs/sha256/{layer} | tar -tvf - .{target}"
    ));
    assert!(
        listing.starts_with("-r-xr-xr-x "),
        "{target} in the image is mode 0555: {listing}"
    );
    // ENTRYPOINT runs the binary the COPY put there.
    assert_eq!(entrypoint[0], target);
}

/// Waits for the ServiceDatabase's `InstanceReady` to turn False with
/// `reason`; returns its message.
async fn wait_instance_reason(world: &World, name: &str, reason: &str) -> String {
    let api = world.api::<ServiceDatabase>();
    wait_for(
        &format!("{name}: InstanceReady {reason}"),
        Duration::from_secs(180),
        || async {
            let sdb = api.get(name).await.ok()?;
            let (status, found, message) = condition(&sdb, "InstanceReady")?;
            (status == "False" && found == reason).then_some(message)
        },
    )
    .await
}

/// On-call reads why an instance does not start from its status: MongoDB's
/// image cannot be pulled here (no registry, no MongoDB package), and a
/// memory request no node has leaves the pod unscheduled. Both are the
/// kubelet's and the scheduler's own words, not played.
#[tokio::test]
async fn an_instance_that_cannot_start_says_why_in_its_status() {
    let world = World::new("stuck").await;
    create_database(
        &world,
        "catalog",
        json!({
            "engine": "MongoDB",
            "version": "8.0",
            "owner": {"podSelector": {"matchLabels": {"app": "catalog"}}},
            "deletionPolicy": "Delete"
        }),
    )
    .await;
    create_database(
        &world,
        "huge",
        json!({
            "engine": "Postgres",
            "version": "17",
            "owner": {"podSelector": {"matchLabels": {"app": "huge"}}},
            "resources": {"requests": {"memory": "64Ti"}, "limits": {"memory": "64Ti"}},
            "deletionPolicy": "Delete"
        }),
    )
    .await;
    let message = wait_instance_reason(&world, "catalog", "ImagePullFailed").await;
    assert!(
        message.contains("cannot pull image docker.io/library/mongo:8.0"),
        "{message}"
    );
    let message = wait_instance_reason(&world, "huge", "Unschedulable").await;
    assert!(message.contains("Insufficient memory"), "{message}");
    let sdb = world
        .api::<ServiceDatabase>()
        .get("huge")
        .await
        .expect("huge");
    let (_, reason, _) = condition(&sdb, "Ready").expect("Ready");
    assert_eq!(reason, "Unschedulable");
    world.finish().await;
}

/// The node's address (the API server's, in the kubeconfig): where a host
/// process listens for pods to reach it.
fn node_ip() -> String {
    let path = kubeconfig_path();
    let kubeconfig = Kubeconfig::read_from(&path).unwrap_or_else(|e| panic!("reading {path}: {e}"));
    let server = kubeconfig
        .clusters
        .first()
        .and_then(|c| c.cluster.as_ref())
        .and_then(|c| c.server.clone())
        .expect("the kubeconfig names a server");
    server
        .trim_start_matches("https://")
        .split(':')
        .next()
        .expect("a host")
        .to_owned()
}

/// Waits for a DatabaseBackup's phase; on failure, says what it showed.
async fn wait_backup_phase(world: &World, name: &str, phase: &str) -> serde_json::Value {
    let api = world.api::<servicedb::api::DatabaseBackup>();
    wait_for(
        &format!("DatabaseBackup {name} {phase}"),
        Duration::from_secs(240),
        || async {
            let backup = api.get(name).await.ok()?;
            let status = serde_json::to_value(backup.status?).ok()?;
            if status["phase"] == "Failed" && phase != "Failed" {
                panic!("DatabaseBackup {name} failed: {status}");
            }
            (status["phase"] == phase).then_some(status)
        },
    )
    .await
}

/// Backups as real Jobs on the real cluster: the agent's pods (admitted
/// under `restricted`) back a dedicated PostgreSQL up to a real S3 server
/// (versitygw on the node's address), the newest archive is restored into a
/// new ServiceDatabase with the same rows, and a verify Job started from the
/// verify CronJob (as `kubectl create job --from` would) passes.
#[tokio::test]
async fn backups_run_as_jobs_to_s3_and_restore_into_a_new_database() {
    let world = World::new("backup").await;
    let s3 = s3::S3::start_on(&node_ip());
    s3.create_bucket("backups");
    let creds: Secret = serde_json::from_value(json!({
        "metadata": {"name": "s3-creds"},
        "stringData": {"AWS_ACCESS_KEY_ID": s3.access_key, "AWS_SECRET_ACCESS_KEY": s3.secret_key}
    }))
    .expect("Secret");
    world
        .api::<Secret>()
        .create(&PostParams::default(), &creds)
        .await
        .expect("S3 credentials");
    let destination = json!({"s3": {"bucket": "backups", "endpoint": s3.endpoint,
        "region": "us-east-1", "credentialsSecret": "s3-creds"}});
    create_database(
        &world,
        "orders",
        json!({
            "engine": "Postgres",
            "version": "17",
            "owner": {"podSelector": {"matchLabels": {"app": "orders"}}},
            "backup": {"schedule": "0 2 * * *", "destination": destination,
                "verify": {"schedule": "0 4 * * 0"}},
            "deletionPolicy": "Delete"
        }),
    )
    .await;
    wait_ready(&world, "orders").await;

    // The owner writes 1000 rows.
    let write = owner_psql(
        r#"psql "$DATABASE_URL" -v ON_ERROR_STOP=1 -At \
  -c "create table orders (id int primary key, item text)" \
  -c "insert into orders select i, 'item ' || i from generate_series(1, 1000) i" \
  -c "select count(*) from orders""#,
    );
    let (code, log) = run_client(
        &world,
        &world.ns,
        "writer",
        BTreeMap::from([("app", "orders")]),
        "docker.io/library/postgres:17",
        "orders-db",
        &write,
    )
    .await;
    assert_eq!(
        (code, log.trim().lines().last()),
        (0, Some("1000")),
        "the owner wrote its rows: {log}"
    );

    // A backup taken by hand runs as a Job and lands in the bucket.
    let backup: servicedb::api::DatabaseBackup = serde_json::from_value(json!({
        "apiVersion": "servicedb.dev/v1alpha1", "kind": "DatabaseBackup",
        "metadata": {"name": "orders-1"},
        "spec": {"serviceDatabaseRef": {"name": "orders"}}
    }))
    .expect("DatabaseBackup");
    world
        .api::<servicedb::api::DatabaseBackup>()
        .create(&PostParams::default(), &backup)
        .await
        .expect("creating the DatabaseBackup");
    let status = wait_backup_phase(&world, "orders-1", "Completed").await;
    let location = status["location"].as_str().expect("location").to_owned();
    assert!(location.starts_with("s3://backups/"), "{location}");
    let stored: Vec<_> = walk(&s3.bucket_dir("backups"));
    assert!(
        stored
            .iter()
            .any(|p| p.ends_with("orders-1") || p.contains("/orders-1/")),
        "the archive is in the bucket: {stored:?}"
    );
    let job_pod = world
        .api::<Pod>()
        .list(
            &kube::api::ListParams::default()
                .labels("batch.kubernetes.io/job-name=orders-1-backup"),
        )
        .await
        .expect("the backup Job's pods")
        .items;
    assert!(
        job_pod
            .iter()
            .any(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Succeeded")),
        "the backup Job's pod ran to completion on the node"
    );

    // Restored into a new ServiceDatabase: the same rows.
    create_database(
        &world,
        "orders-copy",
        json!({
            "engine": "Postgres",
            "version": "17",
            "owner": {"podSelector": {"matchLabels": {"app": "orders-copy"}}},
            "bootstrap": {"fromBackup": {"name": "orders-1"}},
            "deletionPolicy": "Delete"
        }),
    )
    .await;
    let copy = wait_ready(&world, "orders-copy").await;
    let (_, reason, message) = condition(&copy, "Restored").expect("Restored");
    assert_eq!(reason, "Restored", "{message}");
    let read = owner_psql(
        r#"psql "$DATABASE_URL" -v ON_ERROR_STOP=1 -At -c "select count(*), sum(id), max(item) from orders""#,
    );
    let (code, log) = run_client(
        &world,
        &world.ns,
        "reader",
        BTreeMap::from([("app", "orders-copy")]),
        "docker.io/library/postgres:17",
        "orders-copy-db",
        &read,
    )
    .await;
    assert_eq!(
        (code, log.trim()),
        (0, "1000|500500|item 999"),
        "the copy holds the same rows"
    );

    // The verify CronJob's Job restores the newest archive into a scratch
    // database and checks it: the backup is marked verified.
    let cronjob = world
        .api::<k8s_openapi::api::batch::v1::CronJob>()
        .get("orders-db-verify")
        .await
        .expect("the verify CronJob");
    let template = cronjob.spec.expect("spec").job_template;
    let job: k8s_openapi::api::batch::v1::Job = serde_json::from_value(json!({
        "metadata": {"name": "orders-db-verify-now",
            "labels": template.metadata.as_ref().and_then(|m| m.labels.clone()),
            "annotations": {"cronjob.kubernetes.io/instantiate": "manual"}},
        "spec": template.spec,
    }))
    .expect("Job");
    world
        .api::<k8s_openapi::api::batch::v1::Job>()
        .create(&PostParams::default(), &job)
        .await
        .expect("creating the verify Job");
    let backups = world.api::<servicedb::api::DatabaseBackup>();
    wait_for("orders-1 verified", Duration::from_secs(240), || async {
        let b = backups.get("orders-1").await.ok()?;
        b.status?.verified.filter(|v| *v)
    })
    .await;
    world.finish().await;
}

/// Every file under `dir`, as paths relative to it.
fn walk(dir: &std::path::Path) -> Vec<String> {
    let mut out = vec![];
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if let Ok(rel) = path.strip_prefix(dir) {
                out.push(rel.display().to_string());
            }
        }
    }
    out
}

/// A credential rotation as the live service sees it: the Secret switches to
/// a new password once it works, the new password works at once,
/// the replaced one keeps working through the grace period and is refused
/// after it. The instance manager in the pod makes and retires the logins
/// from the Secret the kubelet refreshes in its volume.
#[tokio::test]
async fn a_rotation_keeps_the_old_password_for_its_grace_period_only() {
    let world = World::in_cluster("rotate").await;
    create_database(
        &world,
        "cart",
        cart_redis(json!({"credentials": {"gracePeriod": "90s"}})),
    )
    .await;
    wait_ready(&world, "cart").await;
    let secrets = world.api::<Secret>();
    let before = secrets.get("cart-db").await.expect("cart-db");
    let value = |s: &Secret, key: &str| {
        s.data
            .as_ref()
            .and_then(|d| d.get(key))
            .map(|v| String::from_utf8_lossy(&v.0).into_owned())
            .unwrap_or_default()
    };
    // The replaced login's keys, as a pod that read the Secret earlier keeps them.
    let old: Secret = serde_json::from_value(json!({
        "metadata": {"name": "cart-db-before"},
        "stringData": {"REDIS_URL": value(&before, "REDIS_URL")}
    }))
    .expect("Secret");
    secrets
        .create(&PostParams::default(), &old)
        .await
        .expect("a copy of the old keys");

    let patch = json!({"metadata": {"annotations": {"servicedb.dev/rotate-credentials": "now"}}});
    world
        .api::<ServiceDatabase>()
        .patch(
            "cart",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&patch),
        )
        .await
        .expect("requesting a rotation");
    let after = wait_for(
        "the Secret switches to a new password",
        Duration::from_secs(240),
        || async {
            let s = secrets.get("cart-db").await.ok()?;
            (value(&s, "password") != value(&before, "password")).then_some(s)
        },
    )
    .await;
    // Redis keeps one ACL user with two passwords during the grace period.
    assert_eq!(value(&after, "username"), value(&before, "username"));

    let ping = |secret: &'static str, name: &'static str| {
        let script = format!(
            r#"for i in $(seq {OWNER_RETRIES}); do
  [ "$(timeout 3 redis-cli --no-auth-warning -u "$REDIS_URL" PING 2>/dev/null)" = PONG ] && {{ echo PONG; exit 0; }}
  sleep 1
done
timeout 3 redis-cli --no-auth-warning -u "$REDIS_URL" PING 2>&1 | tail -1; exit 3"#
        );
        let world = &world;
        async move {
            run_client(
                world,
                &world.ns,
                name,
                BTreeMap::from([("app", "cart")]),
                "docker.io/library/redis:8.0",
                secret,
                &script,
            )
            .await
        }
    };
    let (code, log) = ping("cart-db", "new-login").await;
    assert_eq!(
        (code, log.trim()),
        (0, "PONG"),
        "the new password works at once"
    );
    let (code, log) = ping("cart-db-before", "old-login-in-grace").await;
    assert_eq!(
        (code, log.trim()),
        (0, "PONG"),
        "the replaced password works during the grace period"
    );

    // After the grace period, a client on the old password is refused.
    let refused = r#"for i in $(seq 240); do
  out=$(timeout 3 redis-cli --no-auth-warning -u "$REDIS_URL" PING 2>&1 | tr '\n' ' ')
  case $out in *WRONGPASS*|*NOAUTH*|*invalid*) echo "REFUSED: $out"; exit 0 ;; esac
  sleep 1
done
echo "still accepted"; exit 3"#;
    let (code, log) = run_client(
        &world,
        &world.ns,
        "old-login-after-grace",
        BTreeMap::from([("app", "cart")]),
        "docker.io/library/redis:8.0",
        "cart-db-before",
        refused,
    )
    .await;
    assert_eq!(
        code, 0,
        "the old password is refused after the grace period: {log}"
    );
    assert!(
        log.contains("WRONGPASS") || log.contains("NOAUTH") || log.contains("invalid"),
        "{log}"
    );
    world.finish().await;
}

/// The part of an image archive's name that changes with its content
/// (`servicedb-0.1.0-<hash>.tar`): a new one rolls the chart's pods.
fn archive_tag(archive: &str) -> String {
    std::path::Path::new(archive)
        .file_stem()
        .map(|s| {
            s.to_string_lossy()
                .rsplit('-')
                .next()
                .unwrap_or_default()
                .to_owned()
        })
        .unwrap_or_default()
}

/// The chart's two operator replicas: the leader's pod is deleted while
/// three databases are being provisioned; the standby takes the Lease over
/// and finishes them. Nothing is made twice (each StatefulSet and each
/// Secret's password is the one first made), and neither replica's log has a
/// `forbidden`: the chart's RBAC is enough.
#[tokio::test]
async fn the_standby_operator_finishes_what_the_deleted_leader_started() {
    use k8s_openapi::api::coordination::v1::Lease;
    let world = World::in_cluster("failover").await;
    let leases: Api<Lease> = Api::namespaced(world.client.clone(), OPERATOR_NS);
    let holder = || async {
        leases
            .get("servicedb-operator")
            .await
            .ok()?
            .spec?
            .holder_identity
            .filter(|h| !h.is_empty())
    };
    let leader = wait_for("a leader", Duration::from_secs(60), holder).await;
    let names = ["cart-a", "cart-b", "cart-c"];
    for name in names {
        create_database(
            &world,
            name,
            json!({
                "engine": "Redis",
                "version": "8.0",
                "owner": {"podSelector": {"matchLabels": {"app": name}}},
                "deletionPolicy": "Delete"
            }),
        )
        .await;
    }
    // What the leader made first: each StatefulSet and Secret.
    let statefulsets = world.api::<StatefulSet>();
    let secrets = world.api::<Secret>();
    let first = wait_for("the first children", Duration::from_secs(60), || async {
        let mut made = vec![];
        for name in names {
            let sts = statefulsets.get_opt(&format!("{name}-db")).await.ok()??;
            let secret = secrets.get_opt(&format!("{name}-db")).await.ok()??;
            made.push((sts.metadata.uid, secret.data));
        }
        Some(made)
    })
    .await;
    let operator_pods: Api<Pod> = Api::namespaced(world.client.clone(), OPERATOR_NS);
    operator_pods
        .delete(&leader, &DeleteParams::default())
        .await
        .expect("deleting the leader's pod");
    let next = wait_for("another leader", Duration::from_secs(120), || async {
        holder().await.filter(|h| *h != leader)
    })
    .await;
    for name in names {
        wait_ready(&world, name).await;
    }
    let mut last = vec![];
    for name in names {
        let sts = statefulsets
            .get(&format!("{name}-db"))
            .await
            .expect("StatefulSet");
        let secret = secrets.get(&format!("{name}-db")).await.expect("Secret");
        last.push((sts.metadata.uid, secret.data));
    }
    assert!(first == last, "the new leader made nothing anew");
    let pods = operator_pods
        .list(&kube::api::ListParams::default().labels("app.kubernetes.io/name=servicedb"))
        .await
        .expect("the operator's pods")
        .items;
    assert!(
        pods.iter()
            .any(|p| p.metadata.name.as_deref() == Some(next.as_str())),
        "the new leader is one of the chart's pods: {next}"
    );
    for pod in &pods {
        let name = pod.metadata.name.clone().unwrap_or_default();
        let log = operator_pods
            .logs(&name, &LogParams::default())
            .await
            .unwrap_or_default();
        // RBAC's refusals; a write into a namespace an earlier test is
        // deleting is refused as forbidden too, and is no RBAC gap.
        let refused: Vec<&str> = log
            .lines()
            .filter(|l| l.to_lowercase().contains("forbidden"))
            .filter(|l| !l.contains("NamespaceTerminating"))
            .collect();
        assert!(
            refused.is_empty(),
            "{name}'s log has a forbidden:\n{}",
            refused.join("\n")
        );
    }
    world.finish().await;
}

/// A backup schedule fires from its CronJob on the real cluster: the
/// CronJob controller starts the Job at the next minute, the agent stores
/// the archive on a PersistentVolumeClaim (local-path), the operator
/// records the run as a DatabaseBackup, and a new ServiceDatabase restored
/// from it holds the key the owner wrote.
#[tokio::test]
async fn a_scheduled_backup_lands_on_a_volume_and_restores() {
    let world = World::new("schedule").await;
    let claim: k8s_openapi::api::core::v1::PersistentVolumeClaim = serde_json::from_value(json!({
        "metadata": {"name": "backups"},
        "spec": {"accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": "1Gi"}}}
    }))
    .expect("PVC");
    world
        .api::<k8s_openapi::api::core::v1::PersistentVolumeClaim>()
        .create(&PostParams::default(), &claim)
        .await
        .expect("the backups' volume claim");
    create_database(
        &world,
        "cart",
        json!({
            "engine": "Redis",
            "version": "8.0",
            "owner": {"podSelector": {"matchLabels": {"app": "cart"}}},
            "backup": {"schedule": "* * * * *",
                "destination": {"volume": {"claimName": "backups"}}},
            "deletionPolicy": "Delete"
        }),
    )
    .await;
    wait_ready(&world, "cart").await;
    let write = format!(
        r#"cli() {{ timeout 5 redis-cli --no-auth-warning -u "$REDIS_URL" "$@"; }}
for i in $(seq {OWNER_RETRIES}); do
  [ "$(cli PING 2>/dev/null)" = PONG ] && break
  sleep 1
done
cli SET "${{keyPrefix}}basket" 'kept by the schedule'"#
    );
    let (code, log) = run_client(
        &world,
        &world.ns,
        "owner",
        BTreeMap::from([("app", "cart")]),
        "docker.io/library/redis:8.0",
        "cart-db",
        &write,
    )
    .await;
    assert_eq!((code, log.trim()), (0, "OK"), "the owner wrote its key");
    let written = std::time::SystemTime::now();

    // The first run that started after the key was written.
    let backups = world.api::<servicedb::api::DatabaseBackup>();
    let scheduled = wait_for(
        "a completed scheduled backup",
        Duration::from_secs(180),
        || async {
            backups
                .list(&Default::default())
                .await
                .ok()?
                .items
                .into_iter()
                .find(|b| {
                    let status = b.status.as_ref();
                    status.is_some_and(|s| {
                        s.phase == servicedb::api::database_backup::BackupPhase::Completed
                            && s.started_at
                                .as_ref()
                                .is_some_and(|t| std::time::SystemTime::from(t.0) > written)
                    })
                })
        },
    )
    .await;
    let name = scheduled.metadata.name.clone().expect("name");
    let location = scheduled
        .status
        .as_ref()
        .and_then(|s| s.location.clone())
        .unwrap_or_default();
    assert!(
        !location.starts_with("s3://"),
        "{name} is stored on the volume: {location}"
    );

    create_database(
        &world,
        "cart-copy",
        json!({
            "engine": "Redis",
            "version": "8.0",
            "owner": {"podSelector": {"matchLabels": {"app": "cart-copy"}}},
            "bootstrap": {"fromBackup": {"name": name}},
            "deletionPolicy": "Delete"
        }),
    )
    .await;
    wait_ready(&world, "cart-copy").await;
    let read = format!(
        r#"cli() {{ timeout 5 redis-cli --no-auth-warning -u "$REDIS_URL" "$@"; }}
for i in $(seq {OWNER_RETRIES}); do
  [ "$(cli PING 2>/dev/null)" = PONG ] && break
  sleep 1
done
cli GET "${{keyPrefix}}basket""#
    );
    let (code, log) = run_client(
        &world,
        &world.ns,
        "reader",
        BTreeMap::from([("app", "cart-copy")]),
        "docker.io/library/redis:8.0",
        "cart-copy-db",
        &read,
    )
    .await;
    assert_eq!(
        (code, log.trim()),
        (0, "kept by the schedule"),
        "the copy holds the key"
    );
    world.finish().await;
}
