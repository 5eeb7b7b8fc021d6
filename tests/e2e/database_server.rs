//! The DatabaseServer controller against real servers: PostgreSQL and Redis
//! started by `servers.rs`, a real API server, and the real operator binary
//! (with `SERVICEDB_SERVER_REPROBE_SECONDS` short, so that an outage shows
//! within seconds rather than within the production minute).
//!
//! MongoDB is not installed on the test machine: its probe is unit-tested only.

use crate::support::objects::events_for;
use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Event, Secret};
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use servicedb::api::DatabaseServer;
use servicedb::api::database_server::DatabaseServerStatus;

use crate::support::harness::{Env, wait_for};
use crate::support::servers::{Postgres, Redis, random_password};

/// How often the operator under test probes a reachable server.
const REPROBE: Duration = Duration::from_secs(5);

/// The operator under test, re-probing servers every REPROBE seconds so that
/// outages show within the tests' patience.
struct InProcess {
    operator: crate::support::harness::Operator,
}

impl InProcess {
    fn start(env: &mut Env) -> InProcess {
        env.operator.stop();
        let seconds = REPROBE.as_secs().to_string();
        let operator = crate::support::harness::Operator::start_with_env(
            &format!("{}-fast", env.ns),
            &[("SERVICEDB_SERVER_REPROBE_SECONDS", seconds.as_str())],
        );
        InProcess { operator }
    }

    /// Reconciliations of DatabaseServers started so far.
    async fn reconciles(&self) -> f64 {
        self.operator
            .metric("servicedb_reconcile_total{controller=\"databaseserver\"")
            .await
            .unwrap_or(0.0)
    }
}

async fn admin_secret(env: &Env, name: &str, data: &[(&str, &str)]) {
    let data: BTreeMap<&str, &str> = data.iter().copied().collect();
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": name}, "stringData": data,
    }))
    .expect("secret");
    env.api::<Secret>()
        .create(&PostParams::default(), &secret)
        .await
        .expect("creating the admin Secret");
}

async fn server(env: &Env, name: &str, engine: &str, spec: Value) -> DatabaseServer {
    let mut full = json!({"engine": engine});
    if let (Value::Object(a), Value::Object(b)) = (&mut full, spec) {
        a.extend(b);
    }
    let obj: DatabaseServer = serde_json::from_value(json!({
        "apiVersion": "servicedb.dev/v1alpha1", "kind": "DatabaseServer",
        "metadata": {"name": name}, "spec": full,
    }))
    .expect("DatabaseServer");
    env.api::<DatabaseServer>()
        .create(&PostParams::default(), &obj)
        .await
        .expect("creating the DatabaseServer")
}

fn external(port: u16, secret: &str) -> Value {
    json!({"external": {"host": "127.0.0.1", "port": port, "adminSecretRef": {"name": secret}}})
}

fn condition(status: &DatabaseServerStatus, type_: &str) -> Option<(String, String, String)> {
    status
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

/// Waits until condition `type_` has `status` (and `reason`, if given).
async fn wait_condition(
    env: &Env,
    name: &str,
    type_: &str,
    status: &str,
    reason: Option<&str>,
    timeout: Duration,
) -> DatabaseServer {
    let api = env.api::<DatabaseServer>();
    wait_for(
        &format!("DatabaseServer {name}: {type_}={status} {reason:?}"),
        timeout,
        || async {
            let s = api.get(name).await.ok()?;
            let (st, re, _) = condition(s.status.as_ref()?, type_)?;
            (st == status && reason.is_none_or(|r| r == re)).then_some(s)
        },
    )
    .await
}

/// Everything a user can read about the namespace's servers: their status
/// and the Events on them.
async fn visible_text(env: &Env) -> String {
    let servers = env
        .api::<DatabaseServer>()
        .list(&ListParams::default())
        .await
        .expect("listing servers");
    let events = env
        .api::<Event>()
        .list(&ListParams::default())
        .await
        .expect("listing events");
    let mut text = String::new();
    for s in servers.items {
        text += &serde_json::to_string(&s.status).unwrap_or_default();
    }
    for e in events.items {
        text += &format!(
            "{} {}\n",
            e.reason.unwrap_or_default(),
            e.message.unwrap_or_default()
        );
    }
    text
}

#[tokio::test]
async fn postgres_and_redis_servers_become_reachable_with_their_version() {
    let mut env = Env::new("dbs-reach").await;
    let pg = Postgres::start_new();
    let redis = Redis::start_new();
    let controller = InProcess::start(&mut env);
    admin_secret(
        &env,
        "pg-admin",
        &[
            ("username", &pg.admin_user),
            ("password", &pg.admin_password),
        ],
    )
    .await;
    admin_secret(
        &env,
        "redis-admin",
        &[
            ("username", &redis.admin_user),
            ("password", &redis.admin_password),
        ],
    )
    .await;
    server(&env, "pg", "Postgres", external(pg.port, "pg-admin")).await;
    server(&env, "cache", "Redis", external(redis.port, "redis-admin")).await;

    let timeout = Duration::from_secs(30);
    let pg_server =
        wait_condition(&env, "pg", "Reachable", "True", Some("Reachable"), timeout).await;
    let status = pg_server.status.clone().expect("status");
    assert_eq!(status.server_version.as_deref(), Some(pg.version.as_str()));
    assert_eq!(
        condition(&status, "Ready").map(|c| c.0).as_deref(),
        Some("True")
    );
    assert_eq!(status.observed_generation, pg_server.metadata.generation);
    assert_eq!(status.databases, Some(0));
    let cache = wait_condition(
        &env,
        "cache",
        "Reachable",
        "True",
        Some("Reachable"),
        timeout,
    )
    .await;
    assert_eq!(
        cache
            .status
            .as_ref()
            .and_then(|s| s.server_version.as_deref()),
        Some(redis.version.as_str())
    );

    // A ServiceDatabase placed on the server is counted.
    let sdb = json!({
        "apiVersion": "servicedb.dev/v1alpha1", "kind": "ServiceDatabase",
        "metadata": {"name": "orders"},
        "spec": {"engine": "Postgres", "owner": {"podSelector": {"matchLabels": {"app": "orders"}}},
                 "isolation": "Database", "serverRef": {"name": "pg"}},
    });
    env.api::<servicedb::api::ServiceDatabase>()
        .create(
            &PostParams::default(),
            &serde_json::from_value(sdb).expect("sdb"),
        )
        .await
        .expect("creating a ServiceDatabase on the server");
    let api = env.api::<DatabaseServer>();
    wait_for("status.databases = 1", timeout, || async {
        (api.get("pg").await.ok()?.status?.databases == Some(1)).then_some(())
    })
    .await;
    let events = events_for(&env, "pg").await;
    assert!(
        events.iter().any(|(t, r, _)| t == "Normal" && r == "Ready"),
        "a Ready Event on pg: {events:?}"
    );

    // A forced reconcile of an unchanged server writes nothing.
    let before = controller.reconciles().await;
    let annotated = api
        .patch(
            "pg",
            &PatchParams::apply("servicedb-e2e-poke"),
            &Patch::Apply(json!({
                "apiVersion": "servicedb.dev/v1alpha1", "kind": "DatabaseServer",
                "metadata": {"annotations": {"e2e/poke": "1"}},
            })),
        )
        .await
        .expect("annotating the server");
    let version = annotated.metadata.resource_version.clone();
    wait_for("a reconcile after the annotation", timeout, || async {
        (controller.reconciles().await > before).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = api.get("pg").await.expect("server");
    assert_eq!(
        after.metadata.resource_version, version,
        "a resync must write nothing"
    );

    let text = visible_text(&env).await;
    for password in [&pg.admin_password, &redis.admin_password] {
        assert!(
            !text.contains(password.as_str()),
            "a password is visible: {text}"
        );
    }
}

#[tokio::test]
async fn a_wrong_password_is_authentication_failed() {
    let mut env = Env::new("dbs-auth").await;
    let pg = Postgres::start_new();
    let redis = Redis::start_new();
    let _controller = InProcess::start(&mut env);
    let wrong = random_password();
    admin_secret(
        &env,
        "pg-admin",
        &[("username", &pg.admin_user), ("password", &wrong)],
    )
    .await;
    admin_secret(
        &env,
        "redis-admin",
        &[("username", &redis.admin_user), ("password", &wrong)],
    )
    .await;
    server(&env, "pg", "Postgres", external(pg.port, "pg-admin")).await;
    server(&env, "cache", "Redis", external(redis.port, "redis-admin")).await;

    let timeout = Duration::from_secs(30);
    for name in ["pg", "cache"] {
        let s = wait_condition(
            &env,
            name,
            "Reachable",
            "False",
            Some("AuthenticationFailed"),
            timeout,
        )
        .await;
        let status = s.status.expect("status");
        assert_eq!(
            condition(&status, "Ready").map(|c| (c.0, c.1)),
            Some(("False".into(), "AuthenticationFailed".into()))
        );
        assert_eq!(status.server_version, None);
    }
    wait_for("a Warning Event on pg", timeout, || async {
        let events = events_for(&env, "pg").await;
        events
            .iter()
            .any(|(t, r, _)| t == "Warning" && r == "AuthenticationFailed")
            .then_some(())
    })
    .await;
    let text = visible_text(&env).await;
    for password in [&wrong, &pg.admin_password, &redis.admin_password] {
        assert!(
            !text.contains(password.as_str()),
            "a password is visible: {text}"
        );
    }
}

#[tokio::test]
async fn a_stopped_server_turns_unreachable_and_recovers_by_itself() {
    let mut env = Env::new("dbs-outage").await;
    let mut pg = Postgres::start_new();
    let _controller = InProcess::start(&mut env);
    admin_secret(
        &env,
        "pg-admin",
        &[
            ("username", &pg.admin_user),
            ("password", &pg.admin_password),
        ],
    )
    .await;
    server(&env, "pg", "Postgres", external(pg.port, "pg-admin")).await;
    wait_condition(
        &env,
        "pg",
        "Reachable",
        "True",
        None,
        Duration::from_secs(30),
    )
    .await;

    pg.stop();
    let down = wait_condition(
        &env,
        "pg",
        "Reachable",
        "False",
        None,
        Duration::from_secs(20),
    )
    .await;
    let (_, reason, _) =
        condition(down.status.as_ref().expect("status"), "Reachable").expect("Reachable");
    assert!(
        ["ConnectionRefused", "NotAcceptingConnections"].contains(&reason.as_str()),
        "reason {reason}"
    );
    // Down for a while: the backoff grows, but stays bounded by the re-probe interval.
    tokio::time::sleep(Duration::from_secs(8)).await;
    pg.start();
    let up = wait_condition(
        &env,
        "pg",
        "Reachable",
        "True",
        None,
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(
        up.status.and_then(|s| s.server_version),
        Some(pg.version.clone())
    );
    let events = events_for(&env, "pg").await;
    assert!(
        events.iter().any(|(t, _, _)| t == "Warning"),
        "a Warning Event when the server went down: {events:?}"
    );
}

#[tokio::test]
async fn a_missing_admin_secret_names_the_field() {
    let mut env = Env::new("dbs-secret").await;
    let _controller = InProcess::start(&mut env);
    // Secrets are not watched: one created after its server is seen on the
    // next slow re-check, so this one comes first.
    admin_secret(&env, "half-admin", &[("username", "admin")]).await;
    server(&env, "pg", "Postgres", external(5432, "nowhere")).await;
    server(&env, "half", "Postgres", external(5432, "half-admin")).await;

    let timeout = Duration::from_secs(30);
    let s = wait_condition(
        &env,
        "pg",
        "Ready",
        "False",
        Some("SecretNotFound"),
        timeout,
    )
    .await;
    let status = s.status.expect("status");
    let (_, _, message) = condition(&status, "Ready").expect("Ready");
    assert!(
        message.contains("spec.external.adminSecretRef"),
        "{message}"
    );
    assert!(message.contains("nowhere"), "{message}");
    assert_eq!(
        condition(&status, "Reachable").map(|c| (c.0, c.1)),
        Some(("False".into(), "NotProbed".into()))
    );
    let s = wait_condition(
        &env,
        "half",
        "Ready",
        "False",
        Some("SecretKeyMissing"),
        timeout,
    )
    .await;
    let (_, _, message) = condition(s.status.as_ref().expect("status"), "Ready").expect("Ready");
    assert!(
        message.contains("spec.external.adminSecretRef") && message.contains("password"),
        "{message}"
    );
    // One Warning Event per change, not one per retry.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let events = events_for(&env, "pg").await;
    let warnings: Vec<_> = events
        .iter()
        .filter(|(t, r, _)| t == "Warning" && r == "SecretNotFound")
        .collect();
    assert_eq!(warnings.len(), 1, "{events:?}");
    assert!(
        warnings[0].2.contains("spec.external.adminSecretRef"),
        "{events:?}"
    );
    // Nor one Event repeated as a series by the recorder.
    let repeated: Vec<Event> = env
        .api::<Event>()
        .list(&ListParams::default())
        .await
        .expect("listing events")
        .items
        .into_iter()
        .filter(|e| e.involved_object.name.as_deref() == Some("pg"))
        .filter(|e| e.series.is_some() || e.count.unwrap_or(0) > 1)
        .collect();
    assert!(repeated.is_empty(), "{repeated:?}");
}

/// `managed`: servicedb builds the server as a dedicated instance of its own
/// (what a kubelet would then run), opens it to the admitted namespaces,
/// and probes it at its Service; `managed.monitoring` gives it the engine's
/// exporter, which reports every database it hosts. Without a kubelet no
/// pod answers there:
/// the status says where it looked, and a database placed on it waits.
#[tokio::test]
async fn a_managed_server_is_built_as_an_instance_of_its_own() {
    use k8s_openapi::api::apps::v1::StatefulSet;
    use k8s_openapi::api::core::v1::Service;
    use k8s_openapi::api::networking::v1::NetworkPolicy;
    use servicedb::api::ServiceDatabase;

    use crate::support::objects::get_when;
    use crate::support::objects::secret_value;

    let env = Env::new("managed").await;
    server(
        &env,
        "pg",
        "Postgres",
        json!({"managed": {"storage": {"size": "5Gi"}, "monitoring": {"enabled": true}},
               "allowedNamespaces": {"from": "All"}}),
    )
    .await;
    let sts = get_when(&env.api::<StatefulSet>(), "pg-server-db").await;
    let owner = &sts.metadata.owner_references.as_ref().expect("owned")[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str()),
        ("DatabaseServer", "pg")
    );
    let pod = sts
        .spec
        .as_ref()
        .expect("spec")
        .template
        .spec
        .as_ref()
        .expect("pod");
    let args = pod.containers[0].args.clone().unwrap_or_default();
    let names: Vec<&str> = pod.containers.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["database", "exporter"], "monitored");
    assert!(
        args.starts_with(&["instance".to_string(), "--engine".into(), "postgres".into()]),
        "{args:?}"
    );
    let claim = &sts
        .spec
        .as_ref()
        .expect("spec")
        .volume_claim_templates
        .as_ref()
        .expect("claims")[0];
    assert_eq!(
        claim
            .spec
            .as_ref()
            .and_then(|s| s.resources.as_ref())
            .and_then(|r| r.requests.as_ref())
            .and_then(|r| r.get("storage"))
            .map(|q| q.0.as_str()),
        Some("5Gi")
    );
    get_when(&env.api::<Service>(), "pg-server-db").await;
    let admin = get_when(&env.api::<Secret>(), "pg-server-db-admin").await;
    assert!(secret_value(&admin, "password").len() >= 16);
    assert_eq!(
        secret_value(&admin, "monitoring-username"),
        "servicedb-monitor"
    );
    let policy = get_when(&env.api::<NetworkPolicy>(), "pg-server-db").await;
    let rules = policy.spec.expect("spec").ingress.expect("ingress");
    assert_eq!(rules.len(), 2, "the tenants' rule and Prometheus'");
    let from = rules[0].from.clone().expect("from");
    assert_eq!(
        from[0].namespace_selector,
        Some(Default::default()),
        "allowedNamespaces All: every namespace's pods may connect"
    );

    let down = wait_condition(
        &env,
        "pg",
        "Reachable",
        "False",
        None,
        Duration::from_secs(60),
    )
    .await;
    let (_, _, message) =
        condition(down.status.as_ref().expect("status"), "Reachable").expect("Reachable");
    assert!(
        message.contains(&format!("pg-server-db.{}.svc", env.ns)),
        "{message}"
    );

    let sdb = json!({"apiVersion": "servicedb.dev/v1alpha1", "kind": "ServiceDatabase", "metadata": {"name": "orders"},
        "spec": {"engine": "Postgres", "isolation": "Database", "serverRef": {"name": "pg"},
                 "owner": {"podSelector": {"matchLabels": {"app": "orders"}}}}});
    let sdbs = env.api::<ServiceDatabase>();
    sdbs.patch(
        "orders",
        &PatchParams::apply("servicedb-e2e"),
        &Patch::Apply(&sdb),
    )
    .await
    .expect("sdb");
    wait_for(
        "orders to wait for the managed server",
        Duration::from_secs(60),
        || async {
            let s = sdbs.get("orders").await.ok()?;
            let c = s
                .status?
                .conditions
                .into_iter()
                .find(|c| c.type_ == "InstanceReady")?;
            (c.reason == "ServerUnavailable" && c.message.contains("pg-server-db")).then_some(())
        },
    )
    .await;
    assert!(
        env.api::<Secret>()
            .get_opt("orders-db")
            .await
            .expect("get")
            .is_none(),
        "no Secret before the login exists"
    );
}

/// A session of the server's administrator.
async fn pg_admin(pg: &Postgres) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (admin, connection) = tokio_postgres::Config::new()
        .host("127.0.0.1")
        .port(pg.port)
        .user(&pg.admin_user)
        .password(&pg.admin_password)
        .dbname("postgres")
        .connect(tokio_postgres::NoTls)
        .await?;
    tokio::spawn(connection);
    Ok(admin)
}

/// An external server with `external.monitoring`: until the login's Secret
/// exists the condition names the field (the server stays Ready); then the
/// exporter runs as a Deployment whose container, run here as written
/// (Debian's postgres_exporter, its Secret references read from the API),
/// reads the real server with the DBA's `pg_monitor` login and reports the
/// database of a ServiceDatabase placed on it; only the scraper may reach
/// its port; a Deployment of that name servicedb did not make is never
/// replaced; turning monitoring off removes every object and the condition.
#[tokio::test]
async fn an_external_servers_exporter_reads_it_with_the_dbas_login_until_monitoring_is_off() {
    const EXPORTER: &str = "/usr/bin/prometheus-postgres-exporter";
    let mut env = Env::new("dbs-exporter").await;
    let pg = Postgres::start_new();
    let _controller = InProcess::start(&mut env);
    admin_secret(
        &env,
        "pg-admin",
        &[
            ("username", &pg.admin_user),
            ("password", &pg.admin_password),
        ],
    )
    .await;
    // The DBA's statistics-only login.
    let monitor_password = random_password();
    {
        pg_admin(&pg)
            .await
            .expect("admin login")
            .batch_execute(&format!(
                "CREATE ROLE platform_monitor LOGIN PASSWORD '{monitor_password}' IN ROLE pg_monitor"
            ))
            .await
            .expect("the monitoring login");
    }
    let mut spec = external(pg.port, "pg-admin");
    spec["external"]["monitoring"] =
        json!({"enabled": true, "credentialsSecretRef": {"name": "pg-monitor"}});
    server(&env, "pg", "Postgres", spec.clone()).await;

    let timeout = Duration::from_secs(30);
    let waiting = wait_condition(
        &env,
        "pg",
        "MonitoringConfigured",
        "False",
        Some("SecretNotFound"),
        timeout,
    )
    .await;
    let status = waiting.status.expect("status");
    let (_, _, message) = condition(&status, "MonitoringConfigured").expect("condition");
    assert!(
        message.contains("spec.external.monitoring.credentialsSecretRef"),
        "{message}"
    );
    assert_eq!(
        condition(&status, "Ready").map(|c| c.0).as_deref(),
        Some("True"),
        "a server whose exporter cannot run still takes databases"
    );
    let deployments = env.api::<k8s_openapi::api::apps::v1::Deployment>();
    assert!(
        deployments
            .get_opt("pg-exporter")
            .await
            .expect("get")
            .is_none()
    );

    admin_secret(
        &env,
        "pg-monitor",
        &[
            ("username", "platform_monitor"),
            ("password", &monitor_password),
        ],
    )
    .await;
    // No Prometheus Operator here: the exporter runs, the PodMonitor is skipped.
    let ready = wait_condition(
        &env,
        "pg",
        "MonitoringConfigured",
        "False",
        Some("PrometheusOperatorAbsent"),
        timeout,
    )
    .await;
    let (_, _, message) = condition(
        ready.status.as_ref().expect("status"),
        "MonitoringConfigured",
    )
    .expect("condition");
    assert!(
        message.contains("Deployment pg-exporter runs the exporter"),
        "{message}"
    );
    assert!(!visible_text(&env).await.contains(&monitor_password));

    // A ServiceDatabase placed on the server: its database has a size series.
    let sdb = json!({
        "apiVersion": "servicedb.dev/v1alpha1", "kind": "ServiceDatabase",
        "metadata": {"name": "orders"},
        "spec": {"engine": "Postgres", "owner": {"podSelector": {"matchLabels": {"app": "orders"}}},
                 "isolation": "Database", "serverRef": {"name": "pg"}},
    });
    env.api::<servicedb::api::ServiceDatabase>()
        .patch(
            "orders",
            &PatchParams::apply("servicedb-e2e").force(),
            &Patch::Apply(&sdb),
        )
        .await
        .expect("applying orders");
    let datname = servicedb::model::naming::shared_identifier(&env.ns, "orders");
    let database_made = format!("database {datname} on the server");
    wait_for(&database_made, Duration::from_secs(60), || async {
        pg_admin(&pg)
            .await
            .ok()?
            .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&datname])
            .await
            .ok()?
            .map(|_| ())
    })
    .await;

    // The Deployment's container, run as written.
    let deployment = deployments.get("pg-exporter").await.expect("Deployment");
    let pod = deployment
        .spec
        .and_then(|s| s.template.spec)
        .expect("pod template");
    assert_eq!(pod.automount_service_account_token, Some(false));
    let container = pod.containers.first().expect("container").clone();
    let secret = env
        .api::<Secret>()
        .get("pg-monitor")
        .await
        .expect("the monitoring Secret");
    let listen = crate::common::free_port();
    let mut command = std::process::Command::new(EXPORTER);
    command.env_clear();
    for arg in container.args.clone().unwrap_or_default() {
        assert!(
            !arg.contains(&monitor_password),
            "no password in the arguments"
        );
        command.arg(arg.replace(
            "--web.listen-address=:9187",
            &format!("--web.listen-address=127.0.0.1:{listen}"),
        ));
    }
    for var in container.env.clone().unwrap_or_default() {
        let value = match (var.value, var.value_from.and_then(|f| f.secret_key_ref)) {
            (Some(value), None) => value,
            (None, Some(reference)) => {
                assert_eq!(reference.name, "pg-monitor");
                let bytes = &secret.data.as_ref().expect("data")[&reference.key].0;
                String::from_utf8(bytes.clone()).expect("utf-8")
            }
            other => panic!("{}: {other:?}", var.name),
        };
        command.env(&var.name, value);
    }
    let log = tempfile::NamedTempFile::new().expect("exporter log");
    let mut exporter = command
        .stdout(std::process::Stdio::null())
        .stderr(log.reopen().expect("log"))
        .spawn()
        .expect("starting postgres_exporter");
    // Debian's 0.11 adds a label `server`; the pinned one does not.
    let size = format!("pg_database_size_bytes{{datname=\"{datname}\"");
    let deadline = std::time::Instant::now() + timeout;
    let scraped = loop {
        let body = crate::common::http_get(listen, "/metrics")
            .filter(|(code, _)| *code == 200)
            .map(|(_, body)| body)
            .unwrap_or_default();
        if body.lines().any(|l| l == "pg_up 1") && body.contains(&size) {
            break body;
        }
        if std::time::Instant::now() > deadline {
            let _ = exporter.kill();
            let seen: Vec<&str> = body
                .lines()
                .filter(|l| l.starts_with("pg_up") || l.starts_with("pg_database_size"))
                .collect();
            panic!(
                "the exporter did not report pg_up 1 and {size}: {seen:?}\nits log:\n{}",
                std::fs::read_to_string(log.path()).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let _ = exporter.kill();
    let _ = exporter.wait();
    assert!(!scraped.contains(&monitor_password));

    // Only the scraper reaches the metrics port.
    let policy = env
        .api::<k8s_openapi::api::networking::v1::NetworkPolicy>()
        .get("pg-exporter")
        .await
        .expect("NetworkPolicy");
    let rules = policy.spec.and_then(|s| s.ingress).unwrap_or_default();
    assert_eq!(rules.len(), 1, "{rules:?}");
    let from = rules[0].from.clone().unwrap_or_default();
    assert_eq!(
        from[0]
            .pod_selector
            .as_ref()
            .and_then(|s| s.match_labels.clone()),
        Some(BTreeMap::from([(
            "app.kubernetes.io/name".to_string(),
            "prometheus".to_string()
        )]))
    );
    let service = env
        .api::<k8s_openapi::api::core::v1::Service>()
        .get("pg-exporter")
        .await
        .expect("Service");
    let ports = service.spec.and_then(|s| s.ports).unwrap_or_default();
    assert_eq!(ports[0].name.as_deref(), Some("metrics"));

    // Monitoring off: everything of it goes, the condition too.
    spec["external"]["monitoring"]["enabled"] = json!(false);
    env.api::<DatabaseServer>()
        .patch(
            "pg",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": spec})),
        )
        .await
        .expect("turning monitoring off");
    wait_for(
        "the exporter's objects and condition gone",
        timeout,
        || async {
            let server = env.api::<DatabaseServer>().get("pg").await.ok()?;
            let gone = condition(server.status.as_ref()?, "MonitoringConfigured").is_none()
                && deployments.get_opt("pg-exporter").await.ok()?.is_none()
                && env
                    .api::<k8s_openapi::api::core::v1::Service>()
                    .get_opt("pg-exporter")
                    .await
                    .ok()?
                    .is_none()
                && env
                    .api::<k8s_openapi::api::networking::v1::NetworkPolicy>()
                    .get_opt("pg-exporter")
                    .await
                    .ok()?
                    .is_none();
            gone.then_some(())
        },
    )
    .await;

    // Someone else's Deployment of that name is never replaced.
    let theirs: k8s_openapi::api::apps::v1::Deployment = serde_json::from_value(json!({
        "metadata": {"name": "pg-exporter", "labels": {"app": "theirs"}},
        "spec": {"selector": {"matchLabels": {"app": "theirs"}},
                 "template": {"metadata": {"labels": {"app": "theirs"}},
                              "spec": {"containers": [{"name": "c", "image": "theirs:1"}]}}}
    }))
    .expect("their Deployment");
    deployments
        .create(&PostParams::default(), &theirs)
        .await
        .expect("creating their Deployment");
    spec["external"]["monitoring"]["enabled"] = json!(true);
    env.api::<DatabaseServer>()
        .patch(
            "pg",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": spec})),
        )
        .await
        .expect("turning monitoring on");
    let refused = wait_condition(
        &env,
        "pg",
        "MonitoringConfigured",
        "False",
        Some("NameTaken"),
        timeout,
    )
    .await;
    assert_eq!(
        condition(refused.status.as_ref().expect("status"), "Ready")
            .map(|c| c.0)
            .as_deref(),
        Some("True")
    );
    let still = deployments.get("pg-exporter").await.expect("theirs");
    assert_eq!(
        still
            .spec
            .and_then(|s| s.template.spec)
            .map(|p| p.containers[0].image.clone()),
        Some(Some("theirs:1".to_string())),
        "their Deployment is untouched"
    );
}
