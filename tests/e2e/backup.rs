//! Backups on the API side: the backup CronJob, DatabaseBackups that follow
//! their Jobs, retention, the final backup of `deletionPolicy: Snapshot` and
//! the restore of `spec.bootstrap.fromBackup`. No kubelet runs: the tests
//! play the Job controller and the agent — they create the Job's pod, give it
//! the agent's termination message, and set the Job's conditions.

use crate::support::backups::{
    agent_pod, condition, finish_job, manifest, manual_backup, succeed, wait_backup, wait_condition,
};
use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{Event, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::{Value, json};
use servicedb::api::database_backup::BackupPhase;
use servicedb::api::{DatabaseBackup, Phase, ServiceDatabase};

use crate::support::harness::{Env, apply_manifest, backup_example, wait_for};
use crate::support::objects::get_when;
use crate::support::objects::set_ready_replicas;
use crate::support::objects::wait_phase;
use crate::support::servers::Redis;
use crate::support::shared_servers::server_of;

fn orders(extra: Value) -> Value {
    let mut sdb = json!({
        "apiVersion": "servicedb.dev/v1alpha1", "kind": "ServiceDatabase",
        "metadata": {"name": "orders"},
        "spec": {
            "engine": "Postgres",
            "owner": {"podSelector": {"matchLabels": {"app": "orders"}}},
            "backup": {
                "schedule": "0 2 * * *",
                "destination": {"s3": {"bucket": "backups", "endpoint": "http://minio.storage:9000",
                    "region": "eu-1", "credentialsSecret": "s3-creds"}},
                "verify": {"schedule": "0 4 * * 0"}
            }
        }
    });
    if let (Some(spec), Some(extra)) = (sdb["spec"].as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            spec.insert(k.clone(), v.clone());
        }
    }
    sdb
}

async fn apply(env: &Env, sdb: &Value) -> ServiceDatabase {
    let name = sdb["metadata"]["name"].as_str().expect("name");
    env.api::<ServiceDatabase>()
        .patch(
            name,
            &PatchParams::apply("servicedb-e2e").force(),
            &Patch::Apply(sdb),
        )
        .await
        .expect("applying the ServiceDatabase")
}

fn args(pod: &k8s_openapi::api::core::v1::PodSpec) -> Vec<String> {
    pod.containers[0].args.clone().unwrap_or_default()
}

fn arg_after(args: &[String], flag: &str) -> Option<String> {
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1).cloned())
}

fn env_secret(pod: &k8s_openapi::api::core::v1::PodSpec, var: &str) -> Option<(String, String)> {
    pod.containers[0]
        .env
        .iter()
        .flatten()
        .find(|e| e.name == var)
        .and_then(|e| e.value_from.as_ref()?.secret_key_ref.as_ref())
        .map(|s| (s.name.clone(), s.key.clone()))
}

#[tokio::test]
async fn scheduled_backups_are_a_restricted_cronjob_and_each_run_is_recorded() {
    let env = Env::new("backup-cron").await;
    apply(&env, &orders(json!({}))).await;
    let cronjobs: Api<CronJob> = env.api();
    let cron = get_when(&cronjobs, "orders-db-backup").await;
    let spec = cron.spec.clone().expect("spec");
    assert_eq!(spec.schedule, "0 2 * * *");
    assert_eq!(spec.time_zone.as_deref(), Some("UTC"));
    assert_eq!(spec.concurrency_policy.as_deref(), Some("Forbid"));
    assert!(spec.successful_jobs_history_limit.unwrap_or(99) <= 5);
    assert!(spec.failed_jobs_history_limit.unwrap_or(99) <= 5);
    let job_spec = spec.job_template.spec.expect("job spec");
    assert!(job_spec.backoff_limit.unwrap_or(6) <= 1);
    let pod = job_spec.template.spec.expect("pod spec");
    assert_eq!(
        cron.owner_references()[0].kind,
        "ServiceDatabase",
        "owned by the database"
    );

    // The agent runs in the engine's image, from the binary the init
    // container copied out of the operator's image.
    let init = &pod.init_containers.as_ref().expect("init containers")[0];
    assert_eq!(
        init.command.as_ref().expect("command")[1..],
        ["copy-binary", "/opt/servicedb/servicedb"]
    );
    let agent = &pod.containers[0];
    assert!(
        agent
            .image
            .as_deref()
            .is_some_and(|i| i.contains("postgres:")),
        "{:?}",
        agent.image
    );
    assert_eq!(
        agent.command.as_deref(),
        Some(&["/opt/servicedb/servicedb".to_string()][..])
    );
    let a = args(&pod);
    assert_eq!(a[..2], ["agent", "backup"]);
    for (flag, value) in [
        ("--engine", "postgres"),
        ("--host", format!("orders-db.{}.svc", env.ns).as_str()),
        ("--port", "5432"),
        ("--database", "orders"),
        ("--username", "postgres"),
        (
            "--destination",
            format!("s3://backups/{}/orders", env.ns).as_str(),
        ),
        ("--name", "$(JOB_NAME)"),
        ("--s3-endpoint", "http://minio.storage:9000"),
        ("--s3-region", "eu-1"),
        ("--termination-log", "/dev/termination-log"),
    ] {
        assert_eq!(
            arg_after(&a, flag).as_deref(),
            Some(value),
            "{flag} in {a:?}"
        );
    }
    assert_eq!(
        env_secret(&pod, "SERVICEDB_PASSWORD"),
        Some(("orders-db-admin".into(), "password".into()))
    );
    for key in ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"] {
        assert_eq!(env_secret(&pod, key), Some(("s3-creds".into(), key.into())));
    }
    // Restricted: non-root, RuntimeDefault seccomp, no capabilities, a
    // read-only root with emptyDirs where it writes.
    let psc = pod.security_context.as_ref().expect("pod security context");
    assert_eq!(psc.run_as_non_root, Some(true));
    assert_eq!(
        psc.seccomp_profile.as_ref().map(|s| s.type_.as_str()),
        Some("RuntimeDefault")
    );
    for c in pod
        .containers
        .iter()
        .chain(pod.init_containers.iter().flatten())
    {
        let sc = c
            .security_context
            .as_ref()
            .expect("container security context");
        assert_eq!(sc.read_only_root_filesystem, Some(true), "{}", c.name);
        assert_eq!(sc.allow_privilege_escalation, Some(false), "{}", c.name);
        assert_eq!(
            sc.capabilities.as_ref().and_then(|c| c.drop.clone()),
            Some(vec!["ALL".to_string()])
        );
    }
    // And the API server's Pod Security admission agrees (in a namespace of
    // its own: the test's fake agent pods below are not restricted).
    let restricted = format!("{}-restricted", env.ns);
    Api::<k8s_openapi::api::core::v1::Namespace>::all(env.client.clone())
        .patch(
            &restricted,
            &PatchParams::apply("servicedb-e2e").force(),
            &Patch::Apply(json!({
                "apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": restricted, "labels": {"pod-security.kubernetes.io/enforce": "restricted"}}
            })),
        )
        .await
        .expect("a restricted namespace");
    let candidate = Pod {
        metadata: kube::api::ObjectMeta {
            name: Some("backup-pod-security".into()),
            labels: Some(spec_labels(&cron)),
            ..Default::default()
        },
        spec: Some(pod.clone()),
        ..Default::default()
    };
    let dry_run = PostParams {
        dry_run: true,
        ..Default::default()
    };
    let restricted_pods: Api<Pod> = Api::namespaced(env.client.clone(), &restricted);
    if let Err(e) = restricted_pods.create(&dry_run, &candidate).await {
        panic!("the backup pod violates the restricted Pod Security Standard: {e}");
    }
    let mut bare = candidate.clone();
    if let Some(spec) = bare.spec.as_mut() {
        spec.security_context = None;
        for c in spec
            .containers
            .iter_mut()
            .chain(spec.init_containers.iter_mut().flatten())
        {
            c.security_context = None;
        }
    }
    assert!(
        restricted_pods.create(&dry_run, &bare).await.is_err(),
        "restricted Pod Security is enforced in {restricted}"
    );
    let volumes = pod.volumes.clone().unwrap_or_default();
    assert!(volumes.iter().all(|v| v.empty_dir.is_some()), "{volumes:?}");
    assert_eq!(pod.restart_policy.as_deref(), Some("Never"));

    // The database's NetworkPolicy admits the backup pods.
    let policy = get_when(&env.api::<NetworkPolicy>(), "orders-db").await;
    let pod_labels = spec_labels(&cron);
    let admitted = policy.spec.expect("spec").ingress.expect("ingress")[0]
        .from
        .clone()
        .expect("from")
        .iter()
        .filter(|p| p.namespace_selector.is_none())
        .filter_map(|p| p.pod_selector.as_ref()?.match_labels.clone())
        .any(|sel| sel.iter().all(|(k, v)| pod_labels.get(k) == Some(v)));
    assert!(admitted, "backup pods {pod_labels:?} are admitted");

    // The CronJob controller makes a Job (the test does, from the template);
    // the operator records it as a DatabaseBackup named after the Job.
    let run = "orders-db-backup-29450000";
    let template = cron.spec.clone().expect("spec").job_template;
    let job: Job = serde_json::from_value(json!({
        "metadata": {"name": run, "labels": template.metadata.as_ref().and_then(|m| m.labels.clone()),
            "ownerReferences": [{"apiVersion": "batch/v1", "kind": "CronJob", "name": "orders-db-backup",
                "uid": cron.uid(), "controller": true}]},
        "spec": template.spec,
    }))
    .expect("job");
    env.api::<Job>()
        .create(&PostParams::default(), &job)
        .await
        .expect("creating the scheduled Job");
    let recorded = wait_backup(&env, run, BackupPhase::Pending).await;
    assert_eq!(
        recorded.spec.trigger,
        servicedb::api::database_backup::BackupTrigger::Scheduled
    );
    assert_eq!(recorded.spec.service_database_ref.name, "orders");
    succeed(&env, run, manifest(run, 4096)).await;
    let done = wait_backup(&env, run, BackupPhase::Completed).await;
    assert_eq!(done.status.expect("status").size_bytes, Some(4096));

    // The verify CronJob appears with the newest completed backup.
    let verify = get_when(&cronjobs, "orders-db-verify").await;
    let pod = verify
        .spec
        .clone()
        .expect("spec")
        .job_template
        .spec
        .expect("job")
        .template
        .spec
        .expect("pod");
    let a = args(&pod);
    assert_eq!(a[..2], ["agent", "verify"]);
    assert_eq!(
        arg_after(&a, "--database").as_deref(),
        Some("orders_verify")
    );
    assert_eq!(
        arg_after(&a, "--from").as_deref(),
        Some(format!("s3://backups/NS/orders/{run}").as_str())
    );

    // A verification run (made from the verify CronJob's template, as the
    // CronJob controller would) is recorded in the database's status.
    let verify_run = |n: u32| {
        let template = verify.spec.clone().expect("spec").job_template;
        serde_json::from_value::<Job>(json!({
            "metadata": {"name": format!("orders-db-verify-{n}"),
                "labels": template.metadata.as_ref().and_then(|m| m.labels.clone())},
            "spec": template.spec,
        }))
        .expect("job")
    };
    let jobs: Api<Job> = env.api();
    jobs.create(&PostParams::default(), &verify_run(1))
        .await
        .expect("creating a verify Job");
    succeed(
        &env,
        "orders-db-verify-1",
        // The agent's own shape: the restored archive's manifest, the
        // restore time and the checks.
        json!({"backup": manifest(run, 10), "restoreSeconds": 3.5,
               "checks": {"tables": 1, "rows": 10}}),
    )
    .await;
    let sdbs: Api<ServiceDatabase> = env.api();
    let verified = wait_for("lastVerifiedBackup", Duration::from_secs(30), || async {
        sdbs.get("orders").await.ok()?.status?.last_verified_backup
    })
    .await;
    assert_eq!(verified.name, run);
    assert_eq!(verified.restore_seconds, Some(3.5));
    assert!(verified.verified_at.is_some());
    wait_condition(&env, "orders", "BackupHealthy", "True", "BackupSucceeded").await;
    let backups: Api<DatabaseBackup> = env.api();
    let verified_backup = |want: bool| {
        let backups = backups.clone();
        async move {
            wait_for(
                &format!("DatabaseBackup {run} verified={want}"),
                Duration::from_secs(30),
                || async {
                    let status = backups.get(run).await.ok()?.status?;
                    (status.verified == Some(want)).then_some(status)
                },
            )
            .await
        }
    };
    let status = verified_backup(true).await;
    assert_eq!(
        status.phase,
        BackupPhase::Completed,
        "the record of the run is kept"
    );
    assert_eq!(status.size_bytes, Some(4096));

    // A failed verification makes the backups unhealthy, with a Warning.
    jobs.create(&PostParams::default(), &verify_run(2))
        .await
        .expect("creating a verify Job");
    get_when(&jobs, "orders-db-verify-2").await;
    agent_pod(
        &env,
        "orders-db-verify-2",
        1,
        r#"{"error":"row count of orders differs: 10 restored, 12 expected"}"#,
    )
    .await;
    finish_job(&env, "orders-db-verify-2", false).await;
    let sdb = wait_condition(&env, "orders", "BackupHealthy", "False", "VerifyFailed").await;
    verified_backup(false).await;
    assert!(
        condition(&sdb, "BackupHealthy")
            .expect("c")
            .2
            .contains("row count")
    );
    let events: Api<Event> = env.api();
    wait_for(
        "a VerifyFailed Warning",
        Duration::from_secs(30),
        || async {
            events
                .list(&ListParams::default())
                .await
                .ok()?
                .items
                .iter()
                .any(|e| {
                    e.type_.as_deref() == Some("Warning")
                        && e.reason.as_deref() == Some("VerifyFailed")
                })
                .then_some(())
        },
    )
    .await;

    // A recorded run deleted by hand stays deleted, though the CronJob still
    // keeps its Job; its archive is kept (retainArchivesOnDelete defaults
    // to true): no deletion Job.
    let backups: Api<DatabaseBackup> = env.api();
    backups
        .delete(run, &DeleteParams::default())
        .await
        .expect("deleting the recorded backup");
    wait_for(
        "the recorded backup to go",
        Duration::from_secs(30),
        || async { backups.get_opt(run).await.ok()?.is_none().then_some(()) },
    )
    .await;
    assert!(
        jobs.get_opt(&format!("{run}-delete"))
            .await
            .expect("get")
            .is_none(),
        "the archive is kept: no deletion Job"
    );
    // Any change to the database makes it look at its Jobs again.
    let mut spec = orders(json!({}));
    spec["spec"]["backup"]["retention"] = json!({"keepLast": 5});
    apply(&env, &spec).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        jobs.get_opt(run).await.expect("get").is_some(),
        "the Job stays"
    );
    assert!(
        backups.get_opt(run).await.expect("get").is_none(),
        "a deleted backup is not recorded again"
    );
}

fn spec_labels(cron: &CronJob) -> std::collections::BTreeMap<String, String> {
    cron.spec
        .as_ref()
        .and_then(|s| s.job_template.spec.as_ref())
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .unwrap_or_default()
}

#[tokio::test]
async fn a_manual_backup_runs_a_job_and_records_what_the_agent_reports() {
    let env = Env::new("backup-manual").await;
    apply(&env, &orders(json!({}))).await;
    manual_backup(&env, "before-upgrade", "orders").await;
    let job = get_when(&env.api::<Job>(), "before-upgrade-backup").await;
    assert_eq!(job.owner_references()[0].kind, "DatabaseBackup");
    let a = args(&job.spec.clone().expect("spec").template.spec.expect("pod"));
    assert_eq!(arg_after(&a, "--name").as_deref(), Some("before-upgrade"));
    wait_backup(&env, "before-upgrade", BackupPhase::Pending).await;

    succeed(
        &env,
        "before-upgrade-backup",
        manifest("before-upgrade", 1234),
    )
    .await;
    let done = wait_backup(&env, "before-upgrade", BackupPhase::Completed).await;
    let status = done.status.expect("status");
    assert_eq!(
        status.location.as_deref(),
        Some("s3://backups/NS/orders/before-upgrade")
    );
    assert_eq!(status.size_bytes, Some(1234));
    assert_eq!(status.checksum, Some(format!("sha256:{:064x}", 1234)));
    assert!(status.completed_at.is_some() && status.started_at.is_some());

    let sdbs: Api<ServiceDatabase> = env.api();
    let sdb = wait_for("lastBackup", Duration::from_secs(30), || async {
        let sdb = sdbs.get("orders").await.ok()?;
        (sdb.status.as_ref()?.last_backup.as_ref()?.name == "before-upgrade").then_some(sdb)
    })
    .await;
    assert_eq!(
        sdb.status
            .expect("status")
            .last_backup
            .expect("last")
            .size_bytes,
        Some(1234)
    );

    // A failed run says why, and the database's backups are unhealthy.
    manual_backup(&env, "broken", "orders").await;
    get_when(&env.api::<Job>(), "broken-backup").await;
    agent_pod(
        &env,
        "broken-backup",
        1,
        r#"{"error":"pg_dump: connection to server failed: FATAL: too many connections"}"#,
    )
    .await;
    finish_job(&env, "broken-backup", false).await;
    let failed = wait_backup(&env, "broken", BackupPhase::Failed).await;
    assert!(
        failed.status.expect("status").conditions[0]
            .message
            .contains("too many connections")
    );
    let sdb = wait_condition(&env, "orders", "BackupHealthy", "False", "BackupFailed").await;
    let (_, _, message) = condition(&sdb, "BackupHealthy").expect("condition");
    assert!(message.contains("broken") && message.contains("too many connections"));
    let events: Api<Event> = env.api();
    wait_for(
        "a BackupFailed Warning",
        Duration::from_secs(30),
        || async {
            events
                .list(&ListParams::default())
                .await
                .ok()?
                .items
                .iter()
                .any(|e| {
                    e.type_.as_deref() == Some("Warning")
                        && e.reason.as_deref() == Some("BackupFailed")
                })
                .then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn retention_deletes_the_oldest_backup_after_its_archive() {
    let env = Env::new("backup-retention").await;
    apply(&env, &orders(json!({}))).await;
    let backups: Api<DatabaseBackup> = env.api();
    for name in ["b1", "b2", "b3"] {
        manual_backup(&env, name, "orders").await;
        succeed(&env, &format!("{name}-backup"), manifest(name, 10)).await;
        wait_backup(&env, name, BackupPhase::Completed).await;
        // completedAt has second precision: keep the order clear.
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    // Now keep two: b1 goes, but only after its archive is deleted.
    let mut spec = orders(json!({}));
    spec["spec"]["backup"]["retention"] = json!({"keepLast": 2});
    apply(&env, &spec).await;
    let delete = get_when(&env.api::<Job>(), "b1-delete").await;
    let a = args(
        &delete
            .spec
            .clone()
            .expect("spec")
            .template
            .spec
            .expect("pod"),
    );
    assert_eq!(a[..2], ["agent", "delete"]);
    assert_eq!(
        arg_after(&a, "--from").as_deref(),
        Some("s3://backups/NS/orders/b1")
    );
    let b1 = backups.get("b1").await.expect("b1 still exists");
    assert!(
        b1.metadata.deletion_timestamp.is_some(),
        "b1 is being deleted"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        backups.get_opt("b1").await.expect("get").is_some(),
        "kept until its archive is gone"
    );
    succeed(&env, "b1-delete", json!({})).await;
    wait_for("b1 to be gone", Duration::from_secs(30), || async {
        backups.get_opt("b1").await.ok()?.is_none().then_some(())
    })
    .await;
    for name in ["b2", "b3"] {
        let b = backups.get(name).await.expect("kept");
        assert!(b.metadata.deletion_timestamp.is_none(), "{name} is kept");
    }
}

#[tokio::test]
async fn snapshot_deletion_waits_for_the_final_backup() {
    let env = Env::new("backup-snapshot").await;
    let sdb = apply(&env, &orders(json!({"deletionPolicy": "Snapshot"}))).await;
    let sdbs: Api<ServiceDatabase> = env.api();
    let sts: Api<StatefulSet> = env.api();
    get_when(&sts, "orders-db").await;
    sdbs.delete("orders", &DeleteParams::default())
        .await
        .expect("delete");
    let short: String = sdb.uid().expect("uid").replace('-', "")[..8].to_string();
    let final_name = format!("orders-final-{short}");
    let final_backup = wait_backup(&env, &final_name, BackupPhase::Pending).await;
    assert!(
        final_backup.owner_references().is_empty(),
        "the final backup outlives the database"
    );
    assert_eq!(
        final_backup.spec.trigger,
        servicedb::api::database_backup::BackupTrigger::Final
    );
    let job = format!("{final_name}-backup");
    get_when(&env.api::<Job>(), &job).await;

    // While the final backup fails, nothing is deleted, and the status says why.
    agent_pod(&env, &job, 1, r#"{"error":"s3: access denied"}"#).await;
    finish_job(&env, &job, false).await;
    wait_backup(&env, &final_name, BackupPhase::Failed).await;
    let waiting = wait_condition(&env, "orders", "FinalBackup", "False", "FinalBackupFailed").await;
    assert!(
        condition(&waiting, "FinalBackup")
            .expect("c")
            .2
            .contains("access denied")
    );
    assert!(
        sts.get_opt("orders-db").await.expect("get").is_some(),
        "the data stays"
    );

    // Deleting the failed final backup tries again, with a new Job; a
    // success deletes the database.
    let jobs: Api<Job> = env.api();
    let old = jobs.get(&job).await.expect("job").uid();
    env.api::<DatabaseBackup>()
        .delete(&final_name, &DeleteParams::default())
        .await
        .expect("delete the failed final backup");
    wait_for(
        "a new final backup Job",
        Duration::from_secs(30),
        || async {
            let j = jobs.get_opt(&job).await.ok()??;
            (j.uid() != old).then_some(())
        },
    )
    .await;
    // No garbage collector runs here: the test removes the old pod.
    env.api::<Pod>()
        .delete(&format!("{job}-pod"), &DeleteParams::default())
        .await
        .expect("deleting the old pod");
    wait_for("the old pod to go", Duration::from_secs(30), || async {
        env.api::<Pod>()
            .get_opt(&format!("{job}-pod"))
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await;
    assert!(
        sdbs.get_opt("orders").await.expect("get").is_some(),
        "still waiting"
    );
    succeed(&env, &job, manifest(&final_name, 99)).await;
    wait_for("orders to be deleted", Duration::from_secs(30), || async {
        sdbs.get_opt("orders").await.ok()?.is_none().then_some(())
    })
    .await;
    assert!(sts.get_opt("orders-db").await.expect("get").is_none());
    let kept = wait_backup(&env, &final_name, BackupPhase::Completed).await;
    assert!(
        kept.metadata.deletion_timestamp.is_none(),
        "the final backup stays"
    );
}

#[tokio::test]
async fn a_database_restored_from_a_backup_is_ready_only_after_the_restore() {
    let env = Env::new("backup-restore").await;
    apply(&env, &orders(json!({}))).await;
    manual_backup(&env, "golden", "orders").await;

    // Not completed yet: the condition names the field.
    let restored = json!({
        "apiVersion": "servicedb.dev/v1alpha1", "kind": "ServiceDatabase",
        "metadata": {"name": "orders-copy"},
        "spec": {"engine": "Postgres", "owner": {"podSelector": {"matchLabels": {"app": "orders"}}},
            "bootstrap": {"fromBackup": {"name": "golden"}}}
    });
    apply(&env, &restored).await;
    let sdb = wait_condition(
        &env,
        "orders-copy",
        "SpecValid",
        "False",
        "BackupNotCompleted",
    )
    .await;
    assert!(
        condition(&sdb, "SpecValid")
            .expect("c")
            .2
            .contains("spec.bootstrap.fromBackup.name")
    );

    succeed(&env, "golden-backup", manifest("golden", 77)).await;
    wait_backup(&env, "golden", BackupPhase::Completed).await;
    let sts: Api<StatefulSet> = env.api();
    get_when(&sts, "orders-copy-db").await;
    let jobs: Api<Job> = env.api();
    assert!(
        jobs.get_opt("orders-copy-db-restore")
            .await
            .expect("get")
            .is_none(),
        "the restore waits for the instance"
    );
    set_ready_replicas(&sts, "orders-copy-db", 1).await;
    let job = get_when(&jobs, "orders-copy-db-restore").await;
    let a = args(&job.spec.clone().expect("spec").template.spec.expect("pod"));
    assert_eq!(a[..2], ["agent", "restore"]);
    assert_eq!(
        arg_after(&a, "--from").as_deref(),
        Some("s3://backups/NS/orders/golden")
    );
    assert_eq!(arg_after(&a, "--database").as_deref(), Some("orders_copy"));
    let sdb = wait_condition(&env, "orders-copy", "Restored", "False", "Restoring").await;
    assert_ne!(sdb.status.expect("status").phase, Phase::Ready);

    succeed(&env, "orders-copy-db-restore", json!({})).await;
    wait_phase(&env.api(), "orders-copy", Phase::Ready).await;
    wait_condition(&env, "orders-copy", "Restored", "True", "Restored").await;
}

/// A new ServiceDatabase on a shared Redis, restored from another's backup:
/// its restore Job logs in as the service, whose ACL user may run RESTORE
/// (on its own keys) only until the restore completed.
#[tokio::test]
async fn a_restore_into_a_shared_redis_may_run_restore_only_until_it_completed() {
    let env = Env::new("backup-shared-redis").await;
    let cache = Redis::start_new();
    server_of(
        &env,
        "cache",
        "Redis",
        cache.port,
        &cache.admin_user,
        &cache.admin_password,
        json!({"from": "Same"}),
    )
    .await;
    let on_cache = |name: &str, extra: Value| {
        let mut sdb = json!({
            "apiVersion": "servicedb.dev/v1alpha1", "kind": "ServiceDatabase",
            "metadata": {"name": name},
            "spec": {"engine": "Redis", "isolation": "Database", "serverRef": {"name": "cache"},
                "owner": {"podSelector": {"matchLabels": {"app": "cart"}}}, "deletionPolicy": "Delete"}
        });
        for (k, v) in extra.as_object().expect("object") {
            sdb["spec"][k] = v.clone();
        }
        sdb
    };
    apply(
        &env,
        &on_cache(
            "cart",
            json!({"backup": {"schedule": "@daily", "destination": {"s3": {"bucket": "backups",
                "endpoint": "http://minio.storage:9000", "region": "eu-1", "credentialsSecret": "s3-creds"}}}}),
        ),
    )
    .await;
    wait_phase(&env.api(), "cart", Phase::Ready).await;
    manual_backup(&env, "golden", "cart").await;
    succeed(&env, "golden-backup", manifest("golden", 64)).await;
    wait_backup(&env, "golden", BackupPhase::Completed).await;

    apply(
        &env,
        &on_cache(
            "cart-copy",
            json!({"bootstrap": {"fromBackup": {"name": "golden"}}}),
        ),
    )
    .await;
    let job = get_when(&env.api::<Job>(), "cart-copy-db-restore").await;
    let a = args(&job.spec.clone().expect("spec").template.spec.expect("pod"));
    assert_eq!(a[..2], ["agent", "restore"]);
    let secret = get_when(
        &env.api::<k8s_openapi::api::core::v1::Secret>(),
        "cart-copy-db",
    )
    .await;
    let user = crate::support::objects::secret_value(&secret, "username");
    assert_eq!(
        arg_after(&a, "--key-prefix"),
        Some(crate::support::objects::secret_value(&secret, "keyPrefix")),
        "the keys go to the new service's prefix"
    );
    // What the service's login may do, tried with it: RESTORE of a key
    // under its own prefix.
    let password = crate::support::objects::secret_value(&secret, "password");
    let prefix = crate::support::objects::secret_value(&secret, "keyPrefix");
    let may_restore = || async {
        let mut conn = servicedb::engine::tls::redis(
            "127.0.0.1",
            cache.port,
            &user,
            &password,
            &Default::default(),
            Duration::from_secs(5),
        )
        .await
        .expect("the service's login");
        let key = format!("{prefix}probe");
        let _: () = redis::cmd("SET")
            .arg(&key)
            .arg("v")
            .query_async(&mut conn)
            .await
            .expect("SET");
        let payload: Vec<u8> = redis::cmd("DUMP")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .expect("DUMP");
        let restored: redis::RedisResult<()> = redis::cmd("RESTORE")
            .arg(&key)
            .arg(0)
            .arg(payload)
            .arg("REPLACE")
            .query_async(&mut conn)
            .await;
        let _: () = redis::cmd("DEL")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .expect("DEL");
        match restored {
            Ok(()) => true,
            Err(e) if e.to_string().contains("no permissions") => false,
            Err(e) => panic!("RESTORE: {e}"),
        }
    };
    assert!(
        may_restore().await,
        "the restore Job's login may run RESTORE while the restore is pending"
    );
    // Its status is written after the Secret the login came from: it may
    // not be there yet, and it must not say Ready.
    assert_ne!(
        env.api::<ServiceDatabase>()
            .get("cart-copy")
            .await
            .expect("get")
            .status
            .map(|s| s.phase),
        Some(Phase::Ready)
    );

    succeed(&env, "cart-copy-db-restore", json!({})).await;
    wait_condition(&env, "cart-copy", "Restored", "True", "Restored").await;
    wait_phase(&env.api(), "cart-copy", Phase::Ready).await;
    wait_for(
        "RESTORE to be withdrawn",
        Duration::from_secs(30),
        || async { (!may_restore().await).then_some(()) },
    )
    .await;
}

/// The README's backup walkthrough (examples/backup) as a user runs it.
#[tokio::test]
async fn the_backup_examples_work_as_the_readme_says() {
    let env = Env::new("backup-examples").await;
    apply_manifest(
        &env.client,
        &env.ns,
        &backup_example("orders-with-backups.yaml"),
    )
    .await;
    let cron = get_when(&env.api::<CronJob>(), "orders-db-backup").await;
    assert_eq!(cron.spec.expect("spec").schedule, "0 2 * * *");
    apply_manifest(&env.client, &env.ns, &backup_example("backup-now.yaml")).await;
    apply_manifest(
        &env.client,
        &env.ns,
        &backup_example("orders-restored.yaml"),
    )
    .await;
    wait_condition(
        &env,
        "orders-staging",
        "SpecValid",
        "False",
        "BackupNotCompleted",
    )
    .await;
    succeed(
        &env,
        "orders-before-migration-backup",
        manifest("orders-before-migration", 512),
    )
    .await;
    wait_backup(&env, "orders-before-migration", BackupPhase::Completed).await;
    let sts: Api<StatefulSet> = env.api();
    get_when(&sts, "orders-staging-db").await;
    set_ready_replicas(&sts, "orders-staging-db", 1).await;
    get_when(&env.api::<Job>(), "orders-staging-db-restore").await;
}

/// The README's disaster-recovery example: the restore Job it makes looks
/// for the latest backup before the given time under the database's own
/// directory of the bucket (the agent's choice is tested in agent_jobs).
#[tokio::test]
async fn the_recovery_example_restores_the_latest_backup_before_its_time() {
    let env = Env::new("backup-recovery-example").await;
    apply_manifest(
        &env.client,
        &env.ns,
        &backup_example("orders-recovered.yaml"),
    )
    .await;
    let sts: Api<StatefulSet> = env.api();
    get_when(&sts, "orders-db").await;
    set_ready_replicas(&sts, "orders-db", 1).await;
    let job = get_when(&env.api::<Job>(), "orders-db-restore").await;
    let args = job
        .spec
        .and_then(|s| s.template.spec)
        .map(|p| p.containers[0].args.clone().unwrap_or_default())
        .expect("the restore container");
    let dir = format!("s3://backups/{}/orders", env.ns);
    for want in [dir.as_str(), "--latest", "--before", "2026-12-01T06:00:00Z"] {
        assert!(args.iter().any(|a| a == want), "{want} in {args:?}");
    }
    let (status, reason, message) =
        wait_condition(&env, "orders", "Restored", "False", "Restoring")
            .await
            .status
            .and_then(|s| s.conditions.into_iter().find(|c| c.type_ == "Restored"))
            .map(|c| (c.status, c.reason, c.message))
            .expect("Restored");
    assert_eq!((status.as_str(), reason.as_str()), ("False", "Restoring"));
    assert!(message.contains(&dir), "{message}");
}
