//! `make bench-provision`: how long the operator takes to provision many
//! services on shared servers, against what the database itself needs.
//!
//! Starts a real PostgreSQL (data on tmpfs, `pg_stat_statements` loaded)
//! and a real Redis on loopback, a `DatabaseServer` for each, then, one
//! engine after the other, creates N ServiceDatabases at once against the
//! API server in KUBECONFIG and measures, per database, the time from its
//! creation to `phase: Ready` (its login made on the server and its Secret
//! written). Per engine it prints total, p50, p99, the operator's reconciles,
//! API requests (the API server's own `apiserver_request_total`, less the
//! benchmark's own requests) and server statements per tenant, and **the
//! floor**: the same statements for N tenants run serially by one plain
//! session against a fresh server on the same storage, with `ratio to floor`.
//!
//! `SERVICEDB_BENCH_DATABASES` (default 300) sets N per engine; the API
//! server's metrics are read with `kubectl` (`KUBECTL`, default `kubectl`).

#[path = "support/process.rs"]
mod process;
use process::{cpu_seconds, rss_kib};
#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/e2e/support/harness.rs"]
#[allow(dead_code)]
mod harness;
#[path = "../tests/e2e/support/servers.rs"]
#[allow(dead_code)]
mod servers;

use std::collections::HashMap;
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::json;
use servicedb::api::{DatabaseServer, Phase, ServiceDatabase};

use harness::Env;
use servers::{Postgres, Redis};

/// Where the PostgreSQL servers keep their data: memory, so that the
/// operator and the floor are measured on the same, steady storage.
const TMPFS: &str = "/dev/shm";

fn main() {
    let n: usize = std::env::var("SERVICEDB_BENCH_DATABASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(run(n));
}

async fn server(env: &Env, name: &str, engine: &str, port: u16, user: &str, password: &str) {
    let secret = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": format!("{name}-admin")},
        "stringData": {"username": user, "password": password}});
    env.api::<Secret>()
        .patch(
            &format!("{name}-admin"),
            &PatchParams::apply("bench"),
            &Patch::Apply(&secret),
        )
        .await
        .expect("admin secret");
    let server = json!({"apiVersion": "servicedb.dev/v1alpha1", "kind": "DatabaseServer", "metadata": {"name": name},
        "spec": {"engine": engine, "external": {"host": "127.0.0.1", "port": port,
                 "adminSecretRef": {"name": format!("{name}-admin")}}}});
    env.api::<DatabaseServer>()
        .patch(name, &PatchParams::apply("bench"), &Patch::Apply(&server))
        .await
        .expect("server");
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Every request the API server counted so far (`apiserver_request_total`).
fn api_requests() -> f64 {
    let kubectl = std::env::var("KUBECTL").unwrap_or_else(|_| "kubectl".into());
    let out = Command::new(kubectl)
        .args(["get", "--raw", "/metrics"])
        .output()
        .expect("kubectl get --raw /metrics");
    assert!(out.status.success(), "kubectl get --raw /metrics failed");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with("apiserver_request_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn pg_admin(pg: &Postgres) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(
        &format!(
            "host=127.0.0.1 port={} user={} password={} dbname=postgres",
            pg.port, pg.admin_user, pg.admin_password
        ),
        tokio_postgres::NoTls,
    )
    .await
    .expect("connecting to PostgreSQL");
    tokio::spawn(conn);
    client
}

/// Statements PostgreSQL ran so far, by everyone (`pg_stat_statements`).
async fn pg_statements(admin: &tokio_postgres::Client) -> f64 {
    let row = admin
        .query_one(
            "SELECT coalesce(sum(calls), 0)::float8 FROM pg_stat_statements",
            &[],
        )
        .await
        .expect("reading pg_stat_statements");
    row.get(0)
}

async fn redis_admin(redis: &Redis) -> redis::aio::MultiplexedConnection {
    redis::Client::open(format!(
        "redis://{}:{}@127.0.0.1:{}",
        redis.admin_user, redis.admin_password, redis.port
    ))
    .expect("redis url")
    .get_multiplexed_async_connection()
    .await
    .expect("connecting to Redis")
}

/// Commands Redis ran so far (`total_commands_processed`).
async fn redis_commands(admin: &mut redis::aio::MultiplexedConnection) -> f64 {
    let info: String = redis::cmd("INFO")
        .arg("stats")
        .query_async(admin)
        .await
        .expect("INFO stats");
    info.lines()
        .find_map(|l| l.strip_prefix("total_commands_processed:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("total_commands_processed")
}

/// What servicedb's provisioning of one tenant amounts to on PostgreSQL
/// (isolation `Database`), as one plain script would say it.
fn pg_floor_script(n: usize) -> String {
    let mut sql = String::new();
    for i in 0..n {
        let role = format!("floor_{i:04}");
        sql.push_str(&format!(
            "CREATE ROLE {role} NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS INHERIT LOGIN PASSWORD 'p{i:04}xxxxxxxxxxxxxxxxxxxx';\n\
             COMMENT ON ROLE {role} IS 'servicedb:{{\"uid\":\"{i}\"}}';\n\
             CREATE DATABASE {role} OWNER {role};\n\
             COMMENT ON DATABASE {role} IS 'servicedb:{{\"uid\":\"{i}\"}}';\n\
             REVOKE CONNECT, TEMPORARY ON DATABASE {role} FROM PUBLIC;\n\
             GRANT CONNECT ON DATABASE {role} TO {role};\n"
        ));
    }
    sql
}

/// The floor for PostgreSQL: a fresh server on the same storage, one psql
/// session running [`pg_floor_script`] serially.
fn pg_floor(n: usize) -> Duration {
    let pg = Postgres::start_new_with(TMPFS, &[]);
    let script = std::env::temp_dir().join(format!("servicedb-floor-{}.sql", std::process::id()));
    std::fs::write(&script, pg_floor_script(n)).expect("floor script");
    let start = Instant::now();
    let out = Command::new("/usr/lib/postgresql/15/bin/psql")
        .args(["-h", "127.0.0.1", "-p", &pg.port.to_string(), "-U"])
        .arg(&pg.admin_user)
        .args(["-d", "postgres", "-q", "-v", "ON_ERROR_STOP=1", "-f"])
        .arg(&script)
        .env("PGPASSWORD", &pg.admin_password)
        .output()
        .expect("psql");
    let took = start.elapsed();
    let _ = std::fs::remove_file(&script);
    assert!(
        out.status.success(),
        "the floor script failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    took
}

/// The floor for Redis: a fresh server, one connection setting each
/// tenant's ACL user serially.
async fn redis_floor(n: usize) -> Duration {
    let redis = Redis::start_new();
    let mut conn = redis_admin(&redis).await;
    let start = Instant::now();
    for i in 0..n {
        let prefix = format!("floor-{i:04}");
        let _: () = redis::cmd("ACL")
            .arg("SETUSER")
            .arg(&prefix)
            .arg("reset")
            .arg("on")
            .arg(format!(">p{i:04}xxxxxxxxxxxxxxxxxxxx"))
            .arg(format!("~{prefix}:*"))
            .arg(format!("&{prefix}:*"))
            .arg("+@all")
            .arg("-@admin")
            .arg("-@dangerous")
            .query_async(&mut conn)
            .await
            .expect("ACL SETUSER");
    }
    start.elapsed()
}

/// One engine's round: N ServiceDatabases on `server`, created at once.
struct Round {
    engine: &'static str,
    server: &'static str,
    n: usize,
}

struct Figures {
    total: Duration,
    p50: Duration,
    p99: Duration,
    reconciles: f64,
    api_requests: f64,
    statements: f64,
    cpu: Option<f64>,
}

async fn provision(env: &Env, round: &Round, statements: impl AsyncFn() -> f64) -> Figures {
    let api: Api<ServiceDatabase> = env.api();
    let reconcile_metric = "servicedb_reconcile_total{controller=\"servicedatabase\"}";
    let reconciles_before = env.operator.metric(reconcile_metric).await.unwrap_or(0.0);
    let statements_before = statements().await;
    let cpu_before = env.operator.pid().and_then(cpu_seconds);
    let requests_before = api_requests();
    // The benchmark's own requests, taken off the API server's count.
    let mut own_requests = 0.0;

    let start = Instant::now();
    let mut created: HashMap<String, Instant> = HashMap::new();
    for i in 0..round.n {
        let name = format!("{}-{i:04}", round.server);
        let sdb: ServiceDatabase = serde_json::from_value(json!({
            "apiVersion": "servicedb.dev/v1alpha1", "kind": "ServiceDatabase",
            "metadata": {"name": name},
            "spec": {"engine": round.engine, "isolation": "Database", "serverRef": {"name": round.server},
                     "owner": {"podSelector": {"matchLabels": {"app": name}}}, "deletionPolicy": "Delete"}}))
        .expect("sdb");
        api.create(&PostParams::default(), &sdb)
            .await
            .expect("create");
        own_requests += 1.0;
        created.insert(name, Instant::now());
    }

    let mut ready: HashMap<String, Duration> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(1800);
    while ready.len() < round.n {
        assert!(
            Instant::now() < deadline,
            "only {} of {} ready after 30 minutes",
            ready.len(),
            round.n
        );
        for sdb in api.list(&ListParams::default()).await.expect("list").items {
            let name = sdb.name_any();
            if ready.contains_key(&name) || !created.contains_key(&name) {
                continue;
            }
            if sdb.status.as_ref().map(|s| s.phase) == Some(Phase::Ready) {
                ready.insert(name.clone(), created[&name].elapsed());
            }
        }
        own_requests += 1.0;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let total = start.elapsed();
    // What the operator does after Ready (passes its own writes trigger)
    // belongs to the provisioning too.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let requests = api_requests() - requests_before - own_requests;
    let reconciles = env.operator.metric(reconcile_metric).await.unwrap_or(0.0) - reconciles_before;
    // The reading query itself is one statement.
    let statements = statements().await - statements_before - 1.0;
    let cpu = env
        .operator
        .pid()
        .and_then(cpu_seconds)
        .zip(cpu_before)
        .map(|(after, before)| after - before);
    let mut latencies: Vec<Duration> = ready.into_values().collect();
    latencies.sort();
    Figures {
        total,
        p50: percentile(&latencies, 50.0),
        p99: percentile(&latencies, 99.0),
        reconciles,
        api_requests: requests,
        statements,
        cpu,
    }
}

fn print(round: &Round, f: &Figures, floor: Duration, unit: &str) {
    let n = round.n as f64;
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "{} — {} tenants on one server (isolation Database)",
        round.engine, round.n
    );
    println!(
        "  all ready after:      {:.2} s ({:.1} databases/s)",
        f.total.as_secs_f64(),
        n / f.total.as_secs_f64()
    );
    println!("  per database p50:     {:.0} ms", ms(f.p50));
    println!("  per database p99:     {:.0} ms", ms(f.p99));
    println!("  reconciles/tenant:    {:.2}", f.reconciles / n);
    println!("  API requests/tenant:  {:.1}", f.api_requests / n);
    println!("  {unit}/tenant: {:.1}", f.statements / n);
    if let Some(cpu) = f.cpu {
        println!("  operator CPU:         {cpu:.2} s");
    }
    println!(
        "  floor (serial, 1 session): {:.2} s ({:.1} ms/tenant)",
        floor.as_secs_f64(),
        ms(floor) / n
    );
    println!(
        "  ratio to floor:       total {:.2}x, p99 {:.2}x",
        f.total.as_secs_f64() / floor.as_secs_f64(),
        f.p99.as_secs_f64() / floor.as_secs_f64()
    );
}

async fn run(n: usize) {
    let env = Env::new("bench").await;
    let pg = Postgres::start_new_with(
        TMPFS,
        &[
            "shared_preload_libraries=pg_stat_statements",
            "pg_stat_statements.track=all",
            "pg_stat_statements.max=10000",
        ],
    );
    let pg_client = pg_admin(&pg).await;
    pg_client
        .batch_execute("CREATE EXTENSION pg_stat_statements")
        .await
        .expect("CREATE EXTENSION pg_stat_statements");
    let redis = Redis::start_new();
    let redis_conn = redis_admin(&redis).await;
    server(
        &env,
        "pg",
        "Postgres",
        pg.port,
        &pg.admin_user,
        &pg.admin_password,
    )
    .await;
    server(
        &env,
        "kv",
        "Redis",
        redis.port,
        &redis.admin_user,
        &redis.admin_password,
    )
    .await;

    println!("servicedb provisioning benchmark");
    println!(
        "  operator: --concurrency 4, {} per server, debug log level; PostgreSQL data on tmpfs",
        std::env::var("SERVICEDB_PER_SERVER_CONCURRENCY").unwrap_or_else(|_| "2".into())
    );
    let round = Round {
        engine: "Postgres",
        server: "pg",
        n,
    };
    let figures = provision(&env, &round, async || pg_statements(&pg_client).await).await;
    let floor = pg_floor(n);
    print(&round, &figures, floor, "SQL statements  ");

    let round = Round {
        engine: "Redis",
        server: "kv",
        n,
    };
    let figures = provision(&env, &round, async || {
        // The INFO that reads the count is one command.
        redis_commands(&mut redis_conn.clone()).await
    })
    .await;
    let floor = redis_floor(n).await;
    print(&round, &figures, floor, "Redis commands  ");
    if let Some(kib) = env.operator.pid().and_then(rss_kib) {
        println!("operator peak RSS: {:.1} MiB", kib as f64 / 1024.0);
    }

    // Clean up: the server-side logins and databases go with Delete.
    let api: Api<ServiceDatabase> = env.api();
    api.delete_collection(&Default::default(), &ListParams::default())
        .await
        .expect("delete all");
    let gone = Instant::now();
    while !api
        .list(&ListParams::default())
        .await
        .expect("list")
        .items
        .is_empty()
    {
        assert!(
            gone.elapsed() < Duration::from_secs(600),
            "deletion stalled"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!(
        "all {} deleted after: {:.2} s",
        2 * n,
        gone.elapsed().as_secs_f64()
    );
}
