//! One stalled server stalls nothing else; one leader at a time; the admin
//! password never reaches a server that cannot prove who it is.

use std::time::{Duration, Instant};

use kube::Api;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use serde_json::json;
use servicedb::api::{Phase, ServiceDatabase};

use crate::support::harness::{Env, wait_for};
use crate::support::servers::Postgres;
use crate::support::shared_servers::server;
use crate::support::shared_servers::server_of;

/// Tenants per server: more than the operator's reconcile slots (the e2e
/// operator runs with `--concurrency 4`), so that a server that holds each
/// slot it gets would hold them all.
const TENANTS: usize = 20;

/// A TCP listener that accepts every connection and never says a word, as a
/// hung server or a black-holing proxy does. Stops when the test ends.
async fn silent_listener() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("address").port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    port
}

async fn place(api: &Api<ServiceDatabase>, name: &str, server: &str) {
    let sdb = json!({"apiVersion": "servicedb.dev/v1alpha1", "kind": "ServiceDatabase", "metadata": {"name": name},
        "spec": {"engine": "Postgres", "isolation": "Database", "serverRef": {"name": server},
                 "owner": {"podSelector": {"matchLabels": {"app": name}}}, "deletionPolicy": "Retain"}});
    api.patch(
        name,
        &PatchParams::apply("servicedb-e2e"),
        &Patch::Apply(&sdb),
    )
    .await
    .expect("service database");
}

/// Deletes the test's ServiceDatabases (`Retain`: nothing to drop) and
/// DatabaseServers while the operator runs, so that the operators of later
/// tests do not reconcile forty tenants of servers that are gone.
async fn remove_all(env: &Env) {
    use servicedb::api::DatabaseServer;
    let (dp, lp) = (DeleteParams::default(), ListParams::default());
    let api: Api<ServiceDatabase> = env.api();
    api.delete_collection(&dp, &lp).await.expect("delete");
    wait_for(
        "the test's ServiceDatabases to go",
        Duration::from_secs(120),
        || async { api.list(&lp).await.ok()?.items.is_empty().then_some(()) },
    )
    .await;
    env.api::<DatabaseServer>()
        .delete_collection(&dp, &lp)
        .await
        .expect("delete");
}

/// Names `{prefix}-0` … of the tenants that are Ready, from one list call.
async fn ready(api: &Api<ServiceDatabase>, prefix: &str) -> usize {
    let Ok(all) = api.list(&ListParams::default()).await else {
        return 0;
    };
    all.items
        .iter()
        .filter(|s| {
            s.metadata
                .name
                .as_deref()
                .is_some_and(|n| n.starts_with(&format!("{prefix}-")))
        })
        .filter(|s| s.status.as_ref().is_some_and(|s| s.phase == Phase::Ready))
        .count()
}

/// Places `TENANTS` tenants `{prefix}-N` on `server` and returns how long it
/// took until all were Ready; panics after `bound`, saying how many were.
async fn all_ready_within(
    api: &Api<ServiceDatabase>,
    prefix: &str,
    server: &str,
    bound: Duration,
) -> Duration {
    let started = Instant::now();
    for i in 0..TENANTS {
        place(api, &format!("{prefix}-{i}"), server).await;
    }
    let deadline = started + bound;
    loop {
        let n = ready(api, prefix).await;
        if n == TENANTS {
            return started.elapsed();
        }
        assert!(
            Instant::now() < deadline,
            "only {n} of {TENANTS} tenants of {server} were Ready after {bound:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A server that accepts connections and never answers, with more tenants
/// than the operator has reconcile slots, does not hold back the tenants of
/// a healthy server: they are Ready about as fast as without it, and the
/// stalled server's tenants say that their server does not answer.
#[tokio::test]
async fn a_stalled_server_does_not_hold_back_a_healthy_ones_tenants() {
    let env = Env::new("stall").await;
    let api: Api<ServiceDatabase> = env.api();
    let pg = Postgres::start_new();
    server(&env, "healthy", &pg, json!({"from": "Same"})).await;

    // Without the stalled server.
    let alone = all_ready_within(&api, "alone", "healthy", Duration::from_secs(120)).await;

    // The stalled server and its tenants first, so that they are ahead in
    // the work queue; then as many tenants on the healthy server.
    let port = silent_listener().await;
    server_of(
        &env,
        "stalled",
        "Postgres",
        port,
        "postgres",
        "never-sent",
        json!({"from": "Same"}),
    )
    .await;
    for i in 0..TENANTS {
        place(&api, &format!("stuck-{i}"), "stalled").await;
    }
    // Generous, for a machine shared with builds: today's operator never
    // gets there (every slot waits on the stalled server for good).
    let bound = alone * 2 + Duration::from_secs(30);
    let next_to_stalled = all_ready_within(&api, "beside", "healthy", bound).await;
    eprintln!(
        "{TENANTS} tenants Ready in {alone:?} alone, {next_to_stalled:?} next to a stalled server"
    );

    // Every tenant of the stalled server says why it is not Ready.
    let server_name = format!("{}/stalled", env.ns);
    for i in 0..TENANTS {
        let name = format!("stuck-{i}");
        let condition = wait_for(
            &format!("{name}: ServerUnavailable"),
            Duration::from_secs(60),
            || async {
                let s = api.get(&name).await.ok()?;
                s.status?
                    .conditions
                    .into_iter()
                    .find(|c| c.type_ == "InstanceReady" && c.reason == "ServerUnavailable")
            },
        )
        .await;
        assert!(
            condition.message.contains(&server_name),
            "{name}: {}",
            condition.message
        );
        assert!(
            !condition.message.contains("never-sent"),
            "{}",
            condition.message
        );
    }
    remove_all(&env).await;
}

/// Connections a [`silent_listener`] accepted so far.
async fn counting_silent_listener() -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("address").port();
    let accepted = std::sync::Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            held.push(socket);
        }
    });
    (port, accepted)
}

/// Every object the operator writes, in every namespace (earlier tests'
/// objects are reconciled too), and the Events it records, by kind,
/// namespace and name, with its resourceVersion.
async fn written(client: &kube::Client) -> std::collections::BTreeMap<String, String> {
    use k8s_openapi::api::core::v1::{Event, Secret};
    use kube::ResourceExt;
    use servicedb::api::DatabaseServer;
    async fn versions<K>(
        client: &kube::Client,
        all: &mut std::collections::BTreeMap<String, String>,
    ) where
        K: kube::Resource<DynamicType = ()> + Clone + std::fmt::Debug + serde::de::DeserializeOwned,
    {
        let list = Api::<K>::all(client.clone())
            .list(&ListParams::default())
            .await
            .expect("list");
        for o in list.items {
            all.insert(
                format!(
                    "{}/{}/{}",
                    K::kind(&()),
                    o.namespace().unwrap_or_default(),
                    o.name_any()
                ),
                o.resource_version().unwrap_or_default(),
            );
        }
    }
    let mut all = std::collections::BTreeMap::new();
    versions::<ServiceDatabase>(client, &mut all).await;
    versions::<DatabaseServer>(client, &mut all).await;
    versions::<Secret>(client, &mut all).await;
    versions::<Event>(client, &mut all).await;
    all
}

/// The exit code of a child process that ended, read from its zombie's
/// `/proc/PID/stat` (not reaped: the harness does that, so the pid cannot
/// be reused meanwhile), or None while it runs.
fn exited(pid: u32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses: the state is
    // field 3, the wait status field 52 (proc(5)).
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    if fields.first() != Some(&"Z") {
        return None;
    }
    let status: i32 = fields.get(52 - 3)?.parse().ok()?;
    Some(if status & 0x7f == 0 {
        (status >> 8) & 0xff
    } else {
        128 + (status & 0x7f)
    })
}

/// A leader frozen (SIGSTOP) until a standby took its Lease, with work in
/// flight, exits non-zero as soon as it wakes (SIGCONT) and writes nothing
/// more: the standby is stopped once it took over, so any change after the
/// wake-up could only come from the old leader.
#[tokio::test]
async fn a_frozen_leader_exits_on_waking_without_writing_again() {
    use nix::sys::signal::{Signal, kill};
    use std::sync::atomic::Ordering;
    let mut env = Env::new("leader").await;
    let leader = env.operator.pid().expect("operator runs");
    wait_for(
        "the first operator to lead",
        Duration::from_secs(60),
        || async { (env.operator.metric("servicedb_leader").await == Some(1.0)).then_some(()) },
    )
    .await;
    let mut standby = crate::support::harness::Operator::start("leader-b");

    // Work in flight when the leader freezes: the first probe of a new
    // server that never answers, whose outcome (the first status) the
    // leader writes when the probe's deadline has passed.
    let (port, accepted) = counting_silent_listener().await;
    server_of(
        &env,
        "fresh",
        "Postgres",
        port,
        "postgres",
        "never-sent",
        json!({"from": "Same"}),
    )
    .await;
    wait_for(
        "the leader's probe of the new server",
        Duration::from_secs(10),
        || async { (accepted.load(Ordering::SeqCst) >= 1).then_some(()) },
    )
    .await;
    let pid = nix::unistd::Pid::from_raw(leader as i32);
    kill(pid, Signal::SIGSTOP).expect("SIGSTOP");

    // The standby takes over, then stops too, before its own probe of the
    // server ends (SIGKILL: its Lease stays held), so that nothing else
    // writes.
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(env.client.clone(), crate::support::harness::OPERATOR_NS);
    wait_for(
        "the standby to take the Lease",
        Duration::from_secs(60),
        || async {
            let lease = leases.get("servicedb-operator").await.ok()?;
            (lease.spec?.holder_identity.as_deref() == Some("e2e-leader-b-1")).then_some(())
        },
    )
    .await;
    standby.kill();
    // Whatever the standby had sent has landed.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = written(&env.client).await;
    let log_before = std::fs::read_to_string(&env.operator.log)
        .unwrap_or_default()
        .len();

    let woke = Instant::now();
    kill(pid, Signal::SIGCONT).expect("SIGCONT");
    let status = wait_for(
        "the old leader to exit",
        Duration::from_secs(30),
        || async { exited(leader) },
    )
    .await;
    let took = woke.elapsed();
    let log = std::fs::read_to_string(&env.operator.log).unwrap_or_default();
    let after_wake = log.get(log_before..).unwrap_or_default().to_owned();
    assert_ne!(
        status, 0,
        "the old leader exited successfully; log:\n{after_wake}"
    );
    assert!(
        took < Duration::from_secs(3),
        "the old leader took {took:?} to exit after waking; log:\n{after_wake}"
    );
    assert!(after_wake.contains("leadership lost"), "{after_wake}");
    // Anything it had sent would have landed by now.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = written(&env.client).await;
    let changed: Vec<_> = after
        .iter()
        .filter(|(k, v)| before.get(*k) != Some(*v))
        .collect();
    assert!(
        changed.is_empty(),
        "the old leader wrote after the standby took over: {changed:?}; log:\n{after_wake}"
    );
    // Reaps the exited leader; no operator runs now, and the server has
    // no finalizer.
    env.operator.kill();
    env.api::<servicedb::api::DatabaseServer>()
        .delete("fresh", &DeleteParams::default())
        .await
        .expect("delete");
}
