//! Shared pieces of the e2e tests: cluster access, CRDs, namespaces, the
//! operator process, manifests and polling.

use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use servicedb::api::{DatabaseClass, ServiceDatabase};

static SERIAL: Mutex<()> = Mutex::new(());

/// Namespace of the operator's Lease in tests.
pub const OPERATOR_NS: &str = "servicedb-system";

/// One test's world: a client, a fresh namespace and a running operator.
pub struct Env {
    pub client: Client,
    pub ns: String,
    pub operator: Operator,
    _serial: MutexGuard<'static, ()>,
}

impl Env {
    // Each #[tokio::test] has its own thread and runtime: the guard serialises
    // whole tests, it never blocks a task of the same runtime.
    #[allow(clippy::await_holding_lock)]
    pub async fn new(test: &str) -> Env {
        let serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let client = client().await;
        install_crds(&client).await;
        ensure_namespace(&client, OPERATOR_NS).await;
        let ns = format!("e2e-{test}-{}", &uuid_suffix());
        ensure_namespace(&client, &ns).await;
        apply_manifest(&client, &ns, &example("00-databaseclasses.yaml")).await;
        let operator = Operator::start(test);
        Env {
            client,
            ns,
            operator,
            _serial: serial,
        }
    }

    pub fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
    {
        Api::namespaced(self.client.clone(), &self.ns)
    }
}

/// A client for KUBECONFIG; the tests need a real API server and say so.
pub async fn client() -> Client {
    let config = kube::Config::infer().await.unwrap_or_else(|e| {
        panic!("e2e tests need a Kubernetes API server: set KUBECONFIG (make e2e starts a local one): {e}")
    });
    Client::try_from(config).expect("building a client")
}

fn uuid_suffix() -> String {
    use std::time::{SystemTime, UNIX_EPOCH};
    let n = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{:x}", (n ^ (std::process::id() as u128) << 20) & 0xffffff)
}

/// Installs (server-side applies) every CRD and waits until each is served.
pub async fn install_crds(client: &Client) {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in servicedb::api::crds() {
        let name = crd.name_any();
        api.patch(
            &name,
            &PatchParams::apply("servicedb-e2e").force(),
            &Patch::Apply(&crd),
        )
        .await
        .expect("applying CRD");
        wait_for(
            &format!("CRD {name} established"),
            Duration::from_secs(30),
            || async {
                let crd = api.get(&name).await.ok()?;
                let established = crd
                    .status?
                    .conditions?
                    .iter()
                    .any(|c| c.type_ == "Established" && c.status == "True");
                established.then_some(())
            },
        )
        .await;
    }
}

pub async fn ensure_namespace(client: &Client, name: &str) {
    let api: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace =
        serde_json::from_value(json!({"metadata": {"name": name}})).expect("namespace");
    match api.create(&PostParams::default(), &ns).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) => panic!("creating namespace {name}: {e}"),
    }
}

/// Path of a file in examples/manifests.
pub fn example(file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("examples/manifests")
        .join(file)
}

/// Path of a file in examples/backup.
pub fn backup_example(file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("examples/backup")
        .join(file)
}

/// Path of a file in tests/fixtures.
pub fn fixture(file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(file)
}

/// Every file of examples/manifests, sorted.
pub fn examples() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> =
        std::fs::read_dir(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/manifests"))
            .expect("examples/manifests")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
            .collect();
    files.sort();
    files
}

/// Server-side applies every document of a YAML file (the servicedb kinds).
pub async fn apply_manifest(client: &Client, ns: &str, path: &PathBuf) -> Vec<ServiceDatabase> {
    let text = std::fs::read_to_string(path).expect("reading manifest");
    let mut created = vec![];
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let value = serde_yaml::Value::deserialize(doc).expect("yaml");
        if value.is_null() {
            continue;
        }
        let json: serde_json::Value = serde_json::to_value(&value).expect("json");
        let kind = json["kind"].as_str().unwrap_or_default().to_string();
        let name = json["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let pp = PatchParams::apply("servicedb-e2e").force();
        match kind.as_str() {
            "DatabaseClass" => {
                Api::<DatabaseClass>::all(client.clone())
                    .patch(&name, &pp, &Patch::Apply(&json))
                    .await
                    .expect("applying class");
            }
            "DatabaseServer" => {
                let server_ns = json["metadata"]["namespace"]
                    .as_str()
                    .unwrap_or(ns)
                    .to_string();
                Api::<servicedb::api::DatabaseServer>::namespaced(client.clone(), &server_ns)
                    .patch(&name, &pp, &Patch::Apply(&json))
                    .await
                    .unwrap_or_else(|e| panic!("applying {}: {e}", path.display()));
            }
            "Deployment" => {
                Api::<k8s_openapi::api::apps::v1::Deployment>::namespaced(client.clone(), ns)
                    .patch(&name, &pp, &Patch::Apply(&json))
                    .await
                    .unwrap_or_else(|e| panic!("applying {}: {e}", path.display()));
            }
            "DatabaseBackup" => {
                Api::<servicedb::api::DatabaseBackup>::namespaced(client.clone(), ns)
                    .patch(&name, &pp, &Patch::Apply(&json))
                    .await
                    .unwrap_or_else(|e| panic!("applying {}: {e}", path.display()));
            }
            "ServiceDatabase" => {
                let sdb = Api::<ServiceDatabase>::namespaced(client.clone(), ns)
                    .patch(&name, &pp, &Patch::Apply(&json))
                    .await
                    .unwrap_or_else(|e| panic!("applying {}: {e}", path.display()));
                created.push(sdb);
            }
            other => panic!(
                "{}: the e2e harness applies servicedb kinds and Deployments only, not {other}",
                path.display()
            ),
        }
    }
    created
}

use serde::Deserialize;

/// Polls `f` until it returns Some, or panics after `timeout` naming `what`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The `servicedb operator` process under test.
pub struct Operator {
    child: Option<Child>,
    pub http: u16,
    pub log: PathBuf,
    test: String,
    starts: u32,
    env: Vec<(String, String)>,
}

impl Operator {
    pub fn start(test: &str) -> Operator {
        Operator::start_with_env(test, &[])
    }

    /// Like [`Operator::start`], with extra environment variables: another
    /// KUBECONFIG (other rights), or a Deployment's SERVICEDB_* settings.
    pub fn start_with_env(test: &str, env: &[(&str, &str)]) -> Operator {
        let mut op = Operator {
            child: None,
            http: 0,
            log: PathBuf::new(),
            test: test.to_string(),
            starts: 0,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        op.spawn();
        op
    }

    fn spawn(&mut self) {
        self.starts += 1;
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("e2e-logs");
        std::fs::create_dir_all(&dir).expect("log dir");
        self.log = dir.join(format!("{}-{}.log", self.test, self.starts));
        let out = File::create(&self.log).expect("log file");
        let err = out.try_clone().expect("log file");
        self.http = free_port();
        let child = Command::new(env!("CARGO_BIN_EXE_servicedb"))
            .args([
                "operator",
                "--log-format",
                "json",
                "--namespace",
                OPERATOR_NS,
                "--concurrency",
                "4",
            ])
            .arg("--http-addr")
            .arg(format!("127.0.0.1:{}", self.http))
            .arg("--identity")
            .arg(format!("e2e-{}-{}", self.test, self.starts))
            .env("RUST_LOG", "info,servicedb=debug,kube=warn")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("starting servicedb operator");
        self.child = Some(child);
        // Started means listening: a test that stops the operator at once
        // then exercises a graceful stop, not a kill during exec.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", self.http)).is_err() {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!(
                    "operator exited at start with {status}; log: {}",
                    self.log.display()
                );
            }
            assert!(
                std::time::Instant::now() < deadline,
                "operator not listening after 30s; log: {}",
                self.log.display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The operator's process id while it runs (the benchmark reads its memory).
    #[allow(dead_code)]
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// SIGTERM and wait: a graceful stop releases the Lease.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            // The operator bounds its drain at 10 s (see src/run.rs).
            for _ in 0..150 {
                if let Ok(Some(status)) = child.try_wait() {
                    assert!(
                        status.success(),
                        "operator exited with {status} on SIGTERM; log: {}",
                        self.log.display()
                    );
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "operator did not stop within 15s of SIGTERM; log: {}",
                self.log.display()
            );
        }
    }

    /// SIGKILL, as a crash would: the Lease stays held until it expires.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// Everything the operator logged so far, across restarts.
    pub fn logs(&self) -> String {
        let dir = self.log.parent().map(PathBuf::from).unwrap_or_default();
        (1..=self.starts)
            .map(|n| {
                std::fs::read_to_string(dir.join(format!("{}-{n}.log", self.test)))
                    .unwrap_or_default()
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The value of a metric line that starts with `prefix`, summed.
    pub async fn metric(&self, prefix: &str) -> Option<f64> {
        let body = http_get(self.http, "/metrics").await?;
        let values: Vec<f64> = body
            .lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
            .collect();
        (!values.is_empty()).then(|| values.iter().sum())
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub use crate::common::free_port;

/// A minimal HTTP/1.1 GET against 127.0.0.1.
pub async fn http_get(port: u16, path: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.ok()?;
    let (head, body) = buf.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200").then(|| body.to_string())
}
