//! `make bench`: how long the operator takes to provision many services on
//! shared servers. Starts a real PostgreSQL and a real Redis on loopback,
//! a `DatabaseServer` for each, then creates N ServiceDatabases at once (half
//! on each server) against the API server in KUBECONFIG and measures, per
//! database, the time from its creation to `phase: Ready` (its login made on
//! the server and its Secret written). Prints total, p50, p99, max and the
//! operator's peak memory.
//!
//! `SERVICEDB_BENCH_DATABASES` (default 200) sets N.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/e2e/harness.rs"]
#[allow(dead_code)]
mod harness;
#[path = "../tests/e2e/servers.rs"]
#[allow(dead_code)]
mod servers;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::json;
use servicedb::api::{DatabaseServer, Phase, ServiceDatabase};

use harness::Env;
use servers::{Postgres, Redis};

fn main() {
    let n: usize = std::env::var("SERVICEDB_BENCH_DATABASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
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

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

async fn run(n: usize) {
    let env = Env::new("bench").await;
    let pg = Postgres::start_new();
    let redis = Redis::start_new();
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
    let api: Api<ServiceDatabase> = env.api();

    let start = Instant::now();
    let mut created: HashMap<String, Instant> = HashMap::new();
    for i in 0..n {
        let (engine, server) = if i % 2 == 0 {
            ("Postgres", "pg")
        } else {
            ("Redis", "kv")
        };
        let name = format!("svc-{i:04}");
        let sdb: ServiceDatabase = serde_json::from_value(json!({
            "apiVersion": "servicedb.dev/v1alpha1", "kind": "ServiceDatabase",
            "metadata": {"name": name},
            "spec": {"engine": engine, "isolation": "Database", "serverRef": {"name": server},
                     "owner": {"podSelector": {"matchLabels": {"app": name}}}, "deletionPolicy": "Delete"}}))
        .expect("sdb");
        api.create(&PostParams::default(), &sdb)
            .await
            .expect("create");
        created.insert(name, Instant::now());
    }
    let submitted = start.elapsed();

    let mut ready: HashMap<String, Duration> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(1800);
    while ready.len() < n {
        assert!(
            Instant::now() < deadline,
            "only {} of {n} ready after 30 minutes",
            ready.len()
        );
        for sdb in api.list(&ListParams::default()).await.expect("list").items {
            let name = sdb.name_any();
            if ready.contains_key(&name) {
                continue;
            }
            if sdb.status.as_ref().map(|s| s.phase) == Some(Phase::Ready) {
                ready.insert(name.clone(), created[&name].elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let total = start.elapsed();
    let mut latencies: Vec<Duration> = ready.into_values().collect();
    latencies.sort();
    let peak = env.operator.pid().and_then(rss_kib);

    println!("servicedb provisioning benchmark");
    println!(
        "  databases:          {n} ({} Postgres, {} Redis) on one server each",
        n.div_ceil(2),
        n / 2
    );
    println!("  operator:           --concurrency 4, debug log level");
    println!("  submitted in:       {:.2} s", submitted.as_secs_f64());
    println!(
        "  all ready after:    {:.2} s ({:.1} databases/s)",
        total.as_secs_f64(),
        n as f64 / total.as_secs_f64()
    );
    println!(
        "  per database p50:   {:.0} ms",
        percentile(&latencies, 50.0).as_secs_f64() * 1000.0
    );
    println!(
        "  per database p99:   {:.0} ms",
        percentile(&latencies, 99.0).as_secs_f64() * 1000.0
    );
    println!(
        "  per database max:   {:.0} ms",
        latencies.last().copied().unwrap_or_default().as_secs_f64() * 1000.0
    );
    if let Some(kib) = peak {
        println!("  operator peak RSS:  {:.1} MiB", kib as f64 / 1024.0);
    }

    // Clean up: the server-side logins and databases go with Delete.
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
        "  all deleted after:  {:.2} s",
        gone.elapsed().as_secs_f64()
    );
}
