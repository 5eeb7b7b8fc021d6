//! The exporters of monitored dedicated instances, as their pods run them:
//! the instance manager (real binary, real PostgreSQL 15 and Redis) makes
//! the monitoring login from the administrator Secret servicedb builds; the
//! exporter (Debian's `prometheus-postgres-exporter` and
//! `prometheus-redis-exporter`) runs with the arguments and environment of
//! the built sidecar, its Secret references resolved from the built Secret;
//! a real Prometheus scrapes it and is asked through its HTTP API, also for
//! a database made as on a shared server (a managed DatabaseServer).
//!
//! The one change to the built container: in a pod the server and the
//! exporter own their ports (5432, 6379, 9187, 9121) on the pod's loopback;
//! here they get free loopback ports instead ([`rebind`]).
//!
//! Needs root (the servers run as their system users) and the Debian
//! packages `hack/prereqs.sh postgres redis prometheus` installs.

mod common;

use common::http_get;
use common::random;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Container, Secret};
use kube::Resource;
use servicedb::api::{DatabaseClass, ServiceDatabase};
use servicedb::build::{Children, Credentials, OperatorFacts};
use servicedb::engine::monitoring;
use servicedb::model::database::validate;

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";
const POSTGRES_EXPORTER: &str = "/usr/bin/prometheus-postgres-exporter";
const REDIS_EXPORTER: &str = "/usr/bin/prometheus-redis-exporter";
const PROMETHEUS: &str = "/usr/bin/prometheus";
const TIMEOUT: Duration = Duration::from_secs(90);

/// A process killed when the test ends, its output kept for failures.
struct Process {
    name: &'static str,
    child: Child,
    log: Arc<Mutex<String>>,
}

impl Process {
    fn spawn(name: &'static str, mut command: Command) -> Process {
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        let log = Arc::new(Mutex::new(String::new()));
        for stream in [
            Box::new(child.stdout.take().expect("stdout")) as Box<dyn Read + Send>,
            Box::new(child.stderr.take().expect("stderr")),
        ] {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { break };
                    let mut log = log.lock().expect("log");
                    log.push_str(&line);
                    log.push('\n');
                }
            });
        }
        Process { name, child, log }
    }

    fn log(&self) -> String {
        self.log.lock().expect("log").clone()
    }

    fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().expect("try_wait") {
            panic!("{} exited ({status}); log:\n{}", self.name, self.log());
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        // The instance managers' servers first: their data directory goes
        // with the test (see common::kill_children).
        common::kill_children(self.child.id());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// The built children of a monitored ServiceDatabase from `fixture`.
fn built(fixture: &str, admin_password: &str, app_password: &str) -> Children {
    let path = format!("{}/tests/fixtures/{fixture}", env!("CARGO_MANIFEST_DIR"));
    let mut sdb: ServiceDatabase =
        serde_yaml::from_str(&std::fs::read_to_string(path).expect("fixture")).expect("yaml");
    sdb.spec.monitoring = Some(servicedb::api::common::MonitoringSpec {
        enabled: Some(true),
    });
    let class: DatabaseClass = serde_yaml::from_str(&format!(
        "metadata: {{name: {0}}}\nspec: {{engine: {1}, default: true}}",
        sdb.spec.engine.as_str(),
        sdb.spec.engine
    ))
    .expect("class");
    let db = validate(&sdb, &class, None).expect("valid");
    let owner = sdb.controller_owner_ref(&()).expect("owner");
    let facts = OperatorFacts {
        image: "example.com/servicedb:test".into(),
        binary_path: "/usr/local/bin/servicedb".into(),
        namespace: "servicedb-system".into(),
        pod_labels: BTreeMap::new(),
        runbook_url: servicedb::build::monitoring::DEFAULT_RUNBOOK_URL.into(),
        scraper: Default::default(),
    };
    let creds = Credentials::single(&db, admin_password, app_password);
    servicedb::build::children(&db, &creds, &facts, &owner, None)
}

fn secret_data(secret: &Secret) -> BTreeMap<String, String> {
    secret
        .data
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, String::from_utf8(v.0).expect("utf-8")))
        .collect()
}

/// A Secret's keys as files, the way the kubelet mounts them (the instance
/// manager follows the symlinks).
fn mount_secret(dir: &Path, data: &BTreeMap<String, String>) {
    let version = dir.join("..v1");
    std::fs::create_dir_all(&version).expect("mkdir secret");
    for (key, value) in data {
        std::fs::write(version.join(key), value).expect("write key");
        std::fs::set_permissions(version.join(key), std::fs::Permissions::from_mode(0o644))
            .expect("chmod key");
        std::os::unix::fs::symlink(format!("..data/{key}"), dir.join(key)).expect("link key");
    }
    std::os::unix::fs::symlink("..v1", dir.join("..data")).expect("link ..data");
}

fn exporter_container(children: &Children) -> Container {
    let instance = children.instance.as_ref().expect("a dedicated instance");
    instance
        .statefulset
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .expect("pod")
        .containers
        .iter()
        .find(|c| c.name == "exporter")
        .cloned()
        .expect("an exporter sidecar")
}

/// `:<from>` → `:<to>` in `text`, counting the replacements.
fn rebind(text: &str, from: u16, to: u16, count: &mut usize) -> String {
    let pattern = format!(":{from}");
    *count += text.matches(&pattern).count();
    text.replace(&pattern, &format!(":{to}"))
}

/// The sidecar as a local process: its args and env, Secret references
/// resolved from the built administrator Secret, the pod's ports rebound.
/// Returns the command and the exporter's port.
fn exporter_command(
    binary: &str,
    container: &Container,
    admin_secret: &BTreeMap<String, String>,
    (server_port, local_server_port): (u16, u16),
) -> (Command, u16) {
    let metrics_port = container.ports.as_ref().expect("ports")[0].container_port as u16;
    let local_metrics_port = common::free_port();
    let mut rebound = 0;
    let mut command = Command::new(binary);
    command.env_clear();
    for arg in container.args.clone().unwrap_or_default() {
        let arg = rebind(&arg, metrics_port, local_metrics_port, &mut rebound);
        command.arg(arg.replace("=:", "=127.0.0.1:"));
    }
    assert!(
        container.command.is_none(),
        "the image's entrypoint is the exporter"
    );
    for var in container.env.clone().unwrap_or_default() {
        let value = match (var.value, var.value_from.and_then(|f| f.secret_key_ref)) {
            (Some(value), None) => rebind(&value, server_port, local_server_port, &mut rebound),
            (None, Some(reference)) => admin_secret
                .get(&reference.key)
                .unwrap_or_else(|| panic!("{} is not in the admin Secret", reference.key))
                .clone(),
            other => panic!("{}: {other:?}", var.name),
        };
        command.env(&var.name, value);
    }
    assert_eq!(
        rebound, 2,
        "exactly the listen port and the server's port are rebound"
    );
    (command, local_metrics_port)
}

/// Prometheus' answer to an instant query: the samples as (labels, value).
fn query(prometheus_port: u16, promql: &str) -> Vec<(BTreeMap<String, String>, f64)> {
    let Some((200, body)) = http_get(
        prometheus_port,
        &format!("/api/v1/query?query={}", percent_encode(promql)),
    ) else {
        return Vec::new();
    };
    let answer: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    answer["data"]["result"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .map(|sample| {
            let labels = serde_json::from_value(sample["metric"].clone()).expect("labels");
            let value = sample["value"][1]
                .as_str()
                .and_then(|v| v.parse().ok())
                .expect("value");
            (labels, value)
        })
        .collect()
}

fn wait_ready(status_port: u16, process: &mut Process) {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        process.assert_running();
        if matches!(http_get(status_port, "/readyz"), Some((200, _))) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} not ready; log:\n{}",
            process.name,
            process.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test]
async fn prometheus_scrapes_the_built_exporters_logged_in_with_their_monitoring_login() {
    for binary in [
        POSTGRES_EXPORTER,
        REDIS_EXPORTER,
        PROMETHEUS,
        &format!("{PG_BIN}/postgres"),
    ] {
        assert!(
            Path::new(binary).exists(),
            "{binary} not found; run hack/prereqs.sh postgres redis prometheus"
        );
    }

    // PostgreSQL: the instance manager as the StatefulSet runs it, with the
    // built Secrets mounted.
    let pg = built("sdb-orders.yaml", &random(24), &random(24));
    let pg_instance = pg.instance.as_ref().expect("instance");
    let pg_admin = secret_data(&pg_instance.admin_secret);
    let pg_user = common::system_user("postgres", "postgresql-15");
    let pg_root = common::owned_tempdir("sdbm", &pg_user);
    mount_secret(&pg_root.path().join("admin"), &pg_admin);
    mount_secret(
        &pg_root.path().join("app"),
        &secret_data(&pg.credentials_secret),
    );
    let (pg_port, pg_status) = (common::free_port(), common::free_port());
    let mut command = Command::new(common::servicedb_binary());
    command
        .args(["instance", "--engine", "postgres", "--data-dir"])
        .arg(pg_root.path().join("data"))
        .arg("--admin-secret-dir")
        .arg(pg_root.path().join("admin"))
        .arg("--app-secret-dir")
        .arg(pg_root.path().join("app"))
        .args(["--port", &pg_port.to_string()])
        .args(["--service-owner", "orders"])
        .args(["--listen-address", "127.0.0.1"])
        .args(["--status-port", &pg_status.to_string()])
        .args(["--bin-dir", PG_BIN, "--sync-interval", "1s"])
        .env("RUST_LOG", "info")
        .uid(pg_user.uid.as_raw())
        .gid(pg_user.gid.as_raw())
        .current_dir(pg_root.path());
    let mut pg_manager = Process::spawn("postgres instance manager", command);

    // Redis, the same way.
    let redis = built("sdb-cart-redis.yaml", &random(24), &random(24));
    let redis_instance = redis.instance.as_ref().expect("instance");
    let redis_admin = secret_data(&redis_instance.admin_secret);
    let redis_user = common::system_user("redis", "redis-server");
    let redis_root = common::owned_tempdir("sdbm", &redis_user);
    mount_secret(&redis_root.path().join("admin"), &redis_admin);
    mount_secret(
        &redis_root.path().join("app"),
        &secret_data(&redis.credentials_secret),
    );
    let (redis_port, redis_status) = (common::free_port(), common::free_port());
    let mut command = Command::new(common::servicedb_binary());
    command
        .args(["instance", "--engine", "redis", "--data-dir"])
        .arg(redis_root.path().join("data"))
        .arg("--admin-secret-dir")
        .arg(redis_root.path().join("admin"))
        .arg("--app-secret-dir")
        .arg(redis_root.path().join("app"))
        .args(["--port", &redis_port.to_string()])
        .args(["--listen-address", "127.0.0.1"])
        .args(["--status-port", &redis_status.to_string()])
        .args(["--bin-dir", "/usr/bin", "--sync-interval", "1s"])
        .env("RUST_LOG", "info")
        .uid(redis_user.uid.as_raw())
        .gid(redis_user.gid.as_raw())
        .current_dir(redis_root.path());
    let mut redis_manager = Process::spawn("redis instance manager", command);

    wait_ready(pg_status, &mut pg_manager);
    wait_ready(redis_status, &mut redis_manager);

    // The exporters, as the built sidecars run them.
    let (command, pg_metrics) = exporter_command(
        POSTGRES_EXPORTER,
        &exporter_container(&pg),
        &pg_admin,
        (5432, pg_port),
    );
    let mut pg_exporter = Process::spawn("postgres_exporter", command);
    let (command, redis_metrics) = exporter_command(
        REDIS_EXPORTER,
        &exporter_container(&redis),
        &redis_admin,
        (6379, redis_port),
    );
    let mut redis_exporter = Process::spawn("redis_exporter", command);

    // Prometheus, scraping both every second.
    let prometheus_dir = tempfile::tempdir().expect("tempdir");
    let config = prometheus_dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
             scrape_configs:\n\
             - job_name: postgres\n  static_configs: [{{targets: ['127.0.0.1:{pg_metrics}']}}]\n\
             - job_name: redis\n  static_configs: [{{targets: ['127.0.0.1:{redis_metrics}']}}]\n"
        ),
    )
    .expect("prometheus.yml");
    let prometheus_port = common::free_port();
    let mut command = Command::new(PROMETHEUS);
    command
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            prometheus_dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{prometheus_port}"));
    let mut prometheus = Process::spawn("prometheus", command);

    // A second service's database, made as on a shared server (a managed
    // DatabaseServer is such an instance): the exporter reports it too.
    let shared = servicedb::model::naming::shared_identifier("shop", "orders");
    {
        let (admin, connection) = tokio_postgres::Config::new()
            .host("127.0.0.1")
            .port(pg_port)
            .user(&pg_admin["username"])
            .password(&pg_admin["password"])
            .dbname("postgres")
            .connect(tokio_postgres::NoTls)
            .await
            .expect("admin login");
        tokio::spawn(connection);
        servicedb::engine::postgres_users::ensure_service_database(
            &admin,
            &servicedb::engine::postgres_users::ServiceUser {
                role: shared.clone(),
                password: random(24),
                database: shared.clone(),
            },
        )
        .await
        .expect("a shared-style database");
    }
    let shared_size = format!("pg_database_size_bytes{{datname=\"{shared}\"}} > 0");

    let wanted = [
        ("pg_up == 1", "postgres_exporter logged in"),
        (
            "pg_database_size_bytes{datname=\"orders\"} > 0",
            "the service database's size",
        ),
        (shared_size.as_str(), "a shared-style database's size"),
        ("redis_up == 1", "redis_exporter logged in"),
    ];
    let deadline = Instant::now() + TIMEOUT;
    for (promql, what) in wanted {
        loop {
            for process in [
                &mut pg_exporter,
                &mut redis_exporter,
                &mut prometheus,
                &mut pg_manager,
                &mut redis_manager,
            ] {
                process.assert_running();
            }
            let samples = query(prometheus_port, promql);
            if let Some((labels, _)) = samples.first() {
                if promql.starts_with("pg_database_size_bytes") {
                    assert!(promql.contains(&format!("\"{}\"", labels["datname"])));
                    assert_eq!(labels["job"], "postgres");
                }
                break;
            }
            assert!(
                Instant::now() < deadline,
                "Prometheus has no {promql} ({what}) within {TIMEOUT:?}\n\
                 postgres_exporter:\n{}\nredis_exporter:\n{}\nprometheus:\n{}",
                pg_exporter.log(),
                redis_exporter.log(),
                prometheus.log()
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    // The monitoring logins read statistics, not the services' data.
    let monitor_password = &pg_admin[monitoring::PASSWORD_KEY];
    let (client, connection) = tokio_postgres::Config::new()
        .host("127.0.0.1")
        .port(pg_port)
        .user(monitoring::USERNAME)
        .password(monitor_password)
        .dbname("orders")
        .connect(tokio_postgres::NoTls)
        .await
        .map(|(c, conn)| (Some(c), Some(conn)))
        .unwrap_or((None, None));
    if let Some(connection) = connection {
        tokio::spawn(connection);
    }
    assert!(
        client.is_none(),
        "the monitoring login cannot enter the service's database"
    );
    let redis_monitor = {
        use redis::IntoConnectionInfo;
        let info = redis::ConnectionAddr::Tcp("127.0.0.1".into(), redis_port)
            .into_connection_info()
            .expect("address")
            .set_redis_settings(
                redis::RedisConnectionInfo::default()
                    .set_username(monitoring::USERNAME)
                    .set_password(redis_admin[monitoring::PASSWORD_KEY].as_str()),
            );
        redis::Client::open(info)
            .expect("client")
            .get_multiplexed_async_connection()
            .await
            .expect("the monitoring user logs in")
    };
    for command in [
        redis::cmd("GET").arg("cart:secret").clone(),
        redis::cmd("CONFIG").arg("GET").arg("*").clone(),
        redis::cmd("SLOWLOG").arg("GET").clone(),
        redis::cmd("CLIENT").arg("LIST").clone(),
    ] {
        let refused = command
            .query_async::<redis::Value>(&mut redis_monitor.clone())
            .await;
        assert!(
            refused
                .as_ref()
                .is_err_and(|e| e.to_string().to_lowercase().contains("noperm")),
            "{command:?}: {refused:?}"
        );
    }

    // No password in what the instance managers logged.
    for (manager, admin) in [(&pg_manager, &pg_admin), (&redis_manager, &redis_admin)] {
        let log = manager.log();
        assert!(
            !log.contains(&admin[monitoring::PASSWORD_KEY]),
            "{}",
            manager.name
        );
    }
}
