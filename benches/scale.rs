//! `make bench-scale`: many dedicated ServiceDatabases on the API server
//! alone (no kubelet: their pods never run, which changes nothing of what
//! is measured). Prints
//!
//! - **applied**: the time from the first creation until every child of
//!   every database (StatefulSet, two Services, PodDisruptionBudget,
//!   NetworkPolicy, two Secrets) exists;
//! - **the floor**: a plain server-side apply of the same objects (read
//!   back from the API server, without their owner references) into another
//!   namespace, 16 at a time, and `ratio to floor`;
//! - the operator's peak RSS (`VmHWM`) and CPU seconds;
//! - **resync writes**: a fresh operator started over the unchanged
//!   databases reconciles each once; the API server's own count of write
//!   requests (`apiserver_request_total`, verbs POST, PUT, PATCH, DELETE) in
//!   that time, by resource, less the Lease of leader election.
//!
//! `SERVICEDB_BENCH_SCALE` (default 1000) sets the number of databases; the
//! API server's metrics are read with `kubectl` (`KUBECTL`).

#[path = "support/process.rs"]
mod process;
use process::{cpu_seconds, rss_kib};
#[path = "../tests/common/mod.rs"]
#[allow(dead_code)]
mod common;
#[path = "../tests/e2e/support/harness.rs"]
#[allow(dead_code)]
mod harness;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;
use servicedb::api::ServiceDatabase;

use harness::{Env, Operator};

/// Children of one dedicated database: StatefulSet, two Services, PDB,
/// NetworkPolicy, credentials and admin Secrets.
const CHILDREN: usize = 7;
/// How many creations and floor applies are in flight at once.
const IN_FLIGHT: usize = 16;
const SELECTOR: &str = "app.kubernetes.io/managed-by=servicedb";

fn main() {
    let n: usize = std::env::var("SERVICEDB_BENCH_SCALE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(run(n));
}

/// The API server's count of write requests so far, by resource.
fn writes() -> BTreeMap<String, f64> {
    let kubectl = std::env::var("KUBECTL").unwrap_or_else(|_| "kubectl".into());
    let out = Command::new(kubectl)
        .args(["get", "--raw", "/metrics"])
        .output()
        .expect("kubectl get --raw /metrics");
    assert!(out.status.success(), "kubectl get --raw /metrics failed");
    let mut by_resource = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(labels) = line.strip_prefix("apiserver_request_total{") else {
            continue;
        };
        let label = |name: &str| {
            labels
                .split(&format!("{name}=\""))
                .nth(1)
                .and_then(|rest| rest.split('"').next())
                .unwrap_or_default()
                .to_string()
        };
        if !["POST", "PUT", "PATCH", "DELETE"].contains(&label("verb").as_str()) {
            continue;
        }
        let subresource = label("subresource");
        let resource = if subresource.is_empty() {
            label("resource")
        } else {
            format!("{}/{subresource}", label("resource"))
        };
        let value: f64 = line
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        *by_resource.entry(resource).or_insert(0.0) += value;
    }
    by_resource
}

async fn count<K>(client: &Client, ns: &str) -> usize
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + DeserializeOwned,
{
    Api::<K>::namespaced(client.clone(), ns)
        .list_metadata(&ListParams::default().labels(SELECTOR))
        .await
        .map(|l| l.items.len())
        .unwrap_or(0)
}

async fn children(client: &Client, ns: &str) -> usize {
    count::<StatefulSet>(client, ns).await
        + count::<Service>(client, ns).await
        + count::<PodDisruptionBudget>(client, ns).await
        + count::<NetworkPolicy>(client, ns).await
        + count::<Secret>(client, ns).await
}

/// Every object of kind `K` servicedb made in `from`, as a plain client
/// would apply it: name, labels, annotations and the spec or data.
async fn copies<K>(client: &Client, from: &str) -> Vec<serde_json::Value>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + DeserializeOwned
        + Serialize,
{
    Api::<K>::namespaced(client.clone(), from)
        .list(&ListParams::default().labels(SELECTOR))
        .await
        .expect("list")
        .items
        .into_iter()
        .map(|object| {
            let mut value = serde_json::to_value(&object).expect("json");
            let meta = &object.meta();
            value["metadata"] = json!({
                "name": meta.name, "labels": meta.labels, "annotations": meta.annotations,
            });
            if let Some(map) = value.as_object_mut() {
                map.remove("status");
                map.insert("apiVersion".into(), K::api_version(&()).into());
                map.insert("kind".into(), K::kind(&()).into());
            }
            if let Some(spec) = value.get_mut("spec").and_then(|s| s.as_object_mut()) {
                // Allocated by the API server.
                spec.remove("clusterIP");
                spec.remove("clusterIPs");
            }
            value
        })
        .collect()
}

/// A plain concurrent server-side apply of `objects` into `ns`.
async fn floor(client: &Client, ns: &str, objects: Vec<serde_json::Value>) -> Duration {
    let start = Instant::now();
    futures::stream::iter(objects)
        .map(|object| {
            let client = client.clone();
            async move {
                let kind = object["kind"].as_str().unwrap_or_default().to_string();
                let name = object["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                let pp = PatchParams::apply("bench-floor").force();
                let patch = Patch::Apply(&object);
                let result = match kind.as_str() {
                    "StatefulSet" => Api::<StatefulSet>::namespaced(client, ns)
                        .patch(&name, &pp, &patch)
                        .await
                        .map(|_| ()),
                    "Service" => Api::<Service>::namespaced(client, ns)
                        .patch(&name, &pp, &patch)
                        .await
                        .map(|_| ()),
                    "PodDisruptionBudget" => Api::<PodDisruptionBudget>::namespaced(client, ns)
                        .patch(&name, &pp, &patch)
                        .await
                        .map(|_| ()),
                    "NetworkPolicy" => Api::<NetworkPolicy>::namespaced(client, ns)
                        .patch(&name, &pp, &patch)
                        .await
                        .map(|_| ()),
                    _ => Api::<Secret>::namespaced(client, ns)
                        .patch(&name, &pp, &patch)
                        .await
                        .map(|_| ()),
                };
                result.map_err(|e| format!("{kind} {name}: {e}"))
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .try_collect::<Vec<()>>()
        .await
        .expect("floor apply");
    start.elapsed()
}

async fn run(n: usize) {
    let mut env = Env::new("scale").await;
    let api: Api<ServiceDatabase> = env.api();
    let pid = env.operator.pid().expect("operator pid");
    let cpu_before = cpu_seconds(pid);
    println!(
        "bench-scale: {n} dedicated PostgreSQL ServiceDatabases in {}",
        env.ns
    );

    let start = Instant::now();
    futures::stream::iter(0..n)
        .map(|i| {
            let api = api.clone();
            async move {
                let name = format!("db-{i:04}");
                let sdb: ServiceDatabase = serde_json::from_value(json!({
                    "apiVersion": "servicedb.dev/v1alpha1", "kind": "ServiceDatabase",
                    "metadata": {"name": name},
                    "spec": {"engine": "Postgres", "owner": {"podSelector": {"matchLabels": {"app": name}}},
                             "deletionPolicy": "Delete"}}))
                .expect("sdb");
                api.create(&PostParams::default(), &sdb).await.map(|_| ())
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .try_collect::<Vec<()>>()
        .await
        .expect("creating the ServiceDatabases");
    let created = start.elapsed();
    let last_created = Instant::now();
    let want = n * CHILDREN;
    let deadline = Instant::now() + Duration::from_secs(3600);
    loop {
        let have = children(&env.client, &env.ns).await;
        if have >= want {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {have} of {want} children after an hour"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let applied = start.elapsed();
    let after_last = last_created.elapsed();
    let rss = rss_kib(pid);
    let cpu = cpu_seconds(pid)
        .zip(cpu_before)
        .map(|(after, before)| after - before);

    // The floor: the same objects, applied plainly into another namespace.
    let floor_ns = format!("{}-floor", env.ns);
    harness::ensure_namespace(&env.client, &floor_ns).await;
    let mut objects = copies::<Secret>(&env.client, &env.ns).await;
    objects.extend(copies::<Service>(&env.client, &env.ns).await);
    objects.extend(copies::<NetworkPolicy>(&env.client, &env.ns).await);
    objects.extend(copies::<PodDisruptionBudget>(&env.client, &env.ns).await);
    objects.extend(copies::<StatefulSet>(&env.client, &env.ns).await);
    assert_eq!(objects.len(), want, "the operator's children, read back");
    let floor_time = floor(&env.client, &floor_ns, objects).await;

    // A full resync: a fresh operator over the unchanged databases.
    env.operator.stop();
    let before = writes();
    let mut fresh = Operator::start("scale-resync");
    let metric = "servicedb_reconcile_total{controller=\"servicedatabase\"}";
    let resync_start = Instant::now();
    loop {
        let reconciles = fresh.metric(metric).await.unwrap_or(0.0);
        if reconciles >= n as f64 {
            break;
        }
        assert!(
            resync_start.elapsed() < Duration::from_secs(1800),
            "the fresh operator reconciled {reconciles} of {n}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let resynced = resync_start.elapsed();
    // Writes its passes may still cause arrive within a few seconds.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let after = writes();
    let fresh_rss = fresh.pid().and_then(rss_kib);
    fresh.stop();
    let mut resync_writes: BTreeMap<&str, f64> = BTreeMap::new();
    for (resource, value) in &after {
        let delta = value - before.get(resource).copied().unwrap_or(0.0);
        if delta > 0.0 && resource != "leases" {
            resync_writes.insert(resource, delta);
        }
    }

    let mib =
        |kib: Option<u64>| kib.map_or("?".into(), |k| format!("{:.1} MiB", k as f64 / 1024.0));
    println!(
        "created            {:.1} s ({IN_FLIGHT} at a time)",
        created.as_secs_f64()
    );
    println!(
        "applied            {:.1} s from the first creation, {:.1} s from the last ({want} children of {n} databases)",
        applied.as_secs_f64(),
        after_last.as_secs_f64()
    );
    println!(
        "floor              {:.1} s (the same objects, plain server-side apply, {IN_FLIGHT} at a time)",
        floor_time.as_secs_f64()
    );
    println!(
        "ratio to floor     {:.2}×",
        applied.as_secs_f64() / floor_time.as_secs_f64()
    );
    println!(
        "operator peak RSS  {} (provisioning), {} (resync)",
        mib(rss),
        mib(fresh_rss)
    );
    println!(
        "operator CPU       {}",
        cpu.map_or("?".into(), |c| format!("{c:.1} s"))
    );
    println!(
        "resync             {:.1} s for {n} reconciles by a fresh operator",
        resynced.as_secs_f64()
    );
    let total = resync_writes.values().sum::<f64>() + 0.0;
    println!("resync writes      {total} (less the Lease) {resync_writes:?}");
}
