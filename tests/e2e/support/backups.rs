//! Backups as the tests play them: DatabaseBackups, the agent's pod and
//! its termination message, the Job's outcome.

use crate::support::objects::secret_value;
use k8s_openapi::api::core::v1::Secret;
use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use servicedb::api::database_backup::BackupPhase;
use servicedb::api::{DatabaseBackup, ServiceDatabase};

use crate::support::harness::{Env, wait_for};
use crate::support::objects::get_when;

pub const T0: &str = "2026-01-01T02:00:00Z";
pub const T1: &str = "2026-01-01T02:00:09Z";

pub async fn manual_backup(env: &Env, name: &str, database: &str) -> DatabaseBackup {
    let backup: DatabaseBackup = serde_json::from_value(json!({
        "apiVersion": "servicedb.dev/v1alpha1", "kind": "DatabaseBackup",
        "metadata": {"name": name},
        "spec": {"serviceDatabaseRef": {"name": database}}
    }))
    .expect("backup");
    env.api::<DatabaseBackup>()
        .create(&PostParams::default(), &backup)
        .await
        .expect("creating a DatabaseBackup")
}

/// The agent's pod of `job`, terminated with `message`, as the kubelet would
/// report it.
pub async fn agent_pod(env: &Env, job: &str, exit_code: i32, message: &str) {
    let pods: Api<Pod> = env.api();
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": format!("{job}-pod"), "labels": {"batch.kubernetes.io/job-name": job}},
        "spec": {"restartPolicy": "Never", "containers": [{"name": "agent", "image": "postgres:17"}]}
    }))
    .expect("pod");
    pods.create(&PostParams::default(), &pod)
        .await
        .expect("creating the agent's pod");
    let status = json!({"status": {"phase": if exit_code == 0 {"Succeeded"} else {"Failed"},
        "containerStatuses": [{"name": "agent", "image": "postgres:17", "imageID": "", "ready": false,
            "restartCount": 0, "state": {"terminated": {"exitCode": exit_code, "message": message,
                "startedAt": T0, "finishedAt": T1}}}]}});
    pods.patch_status(
        &format!("{job}-pod"),
        &PatchParams::default(),
        &Patch::Merge(&status),
    )
    .await
    .expect("patching the pod's status");
}

/// Job status as the Job controller of 1.34 writes it: a terminal condition
/// is preceded by its interim one (SuccessCriteriaMet, FailureTarget).
pub async fn finish_job(env: &Env, job: &str, succeeded: bool) {
    let jobs: Api<Job> = env.api();
    let running = json!({"status": {"startTime": T0, "active": 1}});
    jobs.patch_status(job, &PatchParams::default(), &Patch::Merge(&running))
        .await
        .expect("Job running");
    let condition = |t: &str, reason: &str| {
        json!({"type": t, "status": "True", "reason": reason, "message": format!("{t} by the test"),
            "lastProbeTime": T1, "lastTransitionTime": T1})
    };
    let done = if succeeded {
        json!({"status": {"startTime": T0, "completionTime": T1, "active": 0, "succeeded": 1, "ready": 0, "terminating": 0,
            "conditions": [condition("SuccessCriteriaMet", "CompletionsReached"), condition("Complete", "CompletionsReached")]}})
    } else {
        json!({"status": {"startTime": T0, "active": 0, "failed": 1, "ready": 0, "terminating": 0,
            "conditions": [condition("FailureTarget", "BackoffLimitExceeded"), condition("Failed", "BackoffLimitExceeded")]}})
    };
    jobs.patch_status(job, &PatchParams::default(), &Patch::Merge(&done))
        .await
        .unwrap_or_else(|e| panic!("finishing Job {job}: {e}"));
}

/// Plays a whole successful run of `job`, the agent reporting `manifest`.
pub async fn succeed(env: &Env, job: &str, manifest: Value) {
    get_when(&env.api::<Job>(), job).await;
    agent_pod(env, job, 0, &manifest.to_string()).await;
    finish_job(env, job, true).await;
}

/// What the agent reports of a backup that just completed.
pub fn manifest(name: &str, size: i64) -> Value {
    let now = k8s_openapi::jiff::Timestamp::now();
    let started = now - k8s_openapi::jiff::SignedDuration::from_secs(9);
    json!({"engine": "postgres", "format": "custom", "serverVersion": "17.2", "database": "orders",
        "startedAt": started.to_string(), "completedAt": now.to_string(), "sizeBytes": size, "rawBytes": size * 3,
        "checksum": format!("sha256:{size:064x}"), "archive": format!("{name}.dump.zst"),
        "location": format!("s3://backups/NS/orders/{name}")})
}

pub async fn wait_backup(env: &Env, name: &str, phase: BackupPhase) -> DatabaseBackup {
    let api: Api<DatabaseBackup> = env.api();
    wait_for(
        &format!("DatabaseBackup {name} {phase:?}"),
        Duration::from_secs(30),
        || async {
            let b = api.get(name).await.ok()?;
            (b.status.as_ref()?.phase == phase).then_some(b)
        },
    )
    .await
}

pub fn condition(sdb: &ServiceDatabase, t: &str) -> Option<(String, String, String)> {
    sdb.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == t)
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

pub async fn wait_condition(
    env: &Env,
    name: &str,
    t: &str,
    status: &str,
    reason: &str,
) -> ServiceDatabase {
    let api: Api<ServiceDatabase> = env.api();
    wait_for(
        &format!("{name} condition {t}={status} ({reason})"),
        Duration::from_secs(30),
        || async {
            let sdb = api.get(name).await.ok()?;
            let (s, r, _) = condition(&sdb, t)?;
            (s == status && r == reason).then_some(sdb)
        },
    )
    .await
}

/// The service's own Redis login, from its credentials Secret.
pub async fn redis_as(port: u16, secret: &Secret) -> redis::aio::MultiplexedConnection {
    crate::support::shared_servers::redis_as(
        port,
        &secret_value(secret, "username"),
        &secret_value(secret, "password"),
    )
    .await
    .expect("the service's login")
}
