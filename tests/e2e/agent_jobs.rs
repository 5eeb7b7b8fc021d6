//! The operator's backup, verify and restore Jobs run for real: no kubelet runs
//! here, so the test plays it for one Job at a time. It runs the Job's agent
//! container on this machine (the `servicedb` binary this build made, in
//! place of the image's copy) with the environment the pod would get —
//! values, Secret keys, the Job-name label — and its Secret volumes written
//! to a directory, then reports the exit code and termination message in a
//! pod's status as a kubelet would, and the Job's conditions as the Job
//! controller would. The databases are real (PostgreSQL and Redis on shared
//! DatabaseServers), and so is the object storage (versitygw).
//!
//! Only databases on shared servers can be reached this way: a dedicated
//! instance's Service name does not resolve outside a cluster.

use crate::support::backups::redis_as;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{Container, EnvVar, PodSpec, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use servicedb::api::database_backup::BackupPhase;
use servicedb::api::{Phase, ServiceDatabase};

use crate::s3::S3;
use crate::support::backups::agent_pod;
use crate::support::backups::finish_job;
use crate::support::backups::manual_backup;
use crate::support::backups::wait_backup;
use crate::support::harness::{Env, wait_for};
use crate::support::objects::credentials;
use crate::support::objects::get_when;
use crate::support::objects::secret_value;
use crate::support::objects::wait_phase;
use crate::support::servers::{Postgres, Redis};
use crate::support::shared_servers::connect;
use crate::support::shared_servers::server;
use crate::support::shared_servers::server_of;

/// Where the pod would have its termination message.
const TERMINATION_LOG: &str = "/dev/termination-log";

/// Runs Job `name`'s agent as its pod would, and reports the outcome on the
/// API server. Returns the exit code and the termination message.
async fn run_job(env: &Env, name: &str) -> (i32, String) {
    let job = get_when(&env.api::<Job>(), name).await;
    let pod: PodSpec = job
        .spec
        .and_then(|s| s.template.spec)
        .expect("a pod template");
    let container: &Container = &pod.containers[0];
    let dir = tempfile::tempdir().expect("pod dir");

    // Volumes: Secret volumes hold their keys (or the listed items), empty
    // directories are empty. Each mount path maps to a local directory.
    let secrets: Api<Secret> = env.api();
    let mut mounts: Vec<(String, PathBuf)> = vec![];
    for mount in container.volume_mounts.iter().flatten() {
        let volume = pod
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == mount.name)
            .unwrap_or_else(|| panic!("volume {} of {name}", mount.name));
        let local = dir.path().join(&mount.name);
        std::fs::create_dir_all(&local).expect("volume dir");
        if let Some(source) = &volume.secret {
            let secret_name = source.secret_name.as_deref().expect("secretName");
            let data = pod_secret(&secrets, secret_name, name)
                .await
                .data
                .unwrap_or_default();
            let items: Vec<(String, String)> = match &source.items {
                Some(items) => items
                    .iter()
                    .map(|i| (i.key.clone(), i.path.clone()))
                    .collect(),
                None => data.keys().map(|k| (k.clone(), k.clone())).collect(),
            };
            for (key, path) in items {
                let value = data
                    .get(&key)
                    .unwrap_or_else(|| panic!("key {key} of Secret {secret_name}"));
                std::fs::write(local.join(path), &value.0).expect("secret file");
            }
        } else {
            assert!(
                volume.empty_dir.is_some(),
                "volume {} of {name}: only Secret and emptyDir volumes can be played here",
                mount.name
            );
        }
        mounts.push((mount.mount_path.clone(), local));
    }
    // The longest mount path first, so that nested mounts win.
    mounts.sort_by_key(|(path, _)| std::cmp::Reverse(path.len()));
    let termination_log = dir.path().join("termination-log");
    let local_path = |arg: &str| -> String {
        if arg == TERMINATION_LOG {
            return termination_log.display().to_string();
        }
        for (path, local) in &mounts {
            if let Some(rest) = arg.strip_prefix(path.as_str())
                && (rest.is_empty() || rest.starts_with('/'))
            {
                return format!("{}{rest}", local.display());
            }
        }
        arg.to_owned()
    };

    let pod_env = resolve_env(&secrets, name, container.env.iter().flatten()).await;
    // `$(VAR)` in arguments is expanded from the container's environment.
    let args: Vec<String> = container
        .args
        .iter()
        .flatten()
        .map(|arg| {
            let expanded = pod_env
                .iter()
                .fold(arg.clone(), |a, (k, v)| a.replace(&format!("$({k})"), v));
            local_path(&expanded)
        })
        .collect();
    let tmp = mounts
        .iter()
        .find(|(path, _)| path == "/tmp")
        .map_or_else(|| dir.path().to_path_buf(), |(_, local)| local.clone());
    let output = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::new(env!("CARGO_BIN_EXE_servicedb"))
            .args(&args)
            .env_clear()
            .envs(&pod_env)
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("TMPDIR", &tmp)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap_or_else(|_| panic!("{name}'s agent did not finish in 120 s"))
    .expect("running the agent");
    let code = output.status.code().unwrap_or(-1);
    let message = std::fs::read_to_string(&termination_log).unwrap_or_default();
    if code != 0 {
        eprintln!(
            "{name}: agent exited {code}: {message}\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    agent_pod(env, name, code, &message).await;
    finish_job(env, name, code == 0).await;
    (code, message)
}

/// A Secret the pod refers to. Like the kubelet, which retries a container
/// whose Secret is not there yet, this waits for it: the operator may create
/// a Job in the same pass as (and just before) the Secret its pod reads.
async fn pod_secret(secrets: &Api<Secret>, secret: &str, job: &str) -> Secret {
    wait_for(
        &format!("Secret {secret} of {job}"),
        Duration::from_secs(30),
        || async { secrets.get_opt(secret).await.ok().flatten() },
    )
    .await
}

/// The container's environment as the kubelet would set it.
async fn resolve_env<'a>(
    secrets: &Api<Secret>,
    job: &str,
    vars: impl Iterator<Item = &'a EnvVar>,
) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for var in vars {
        let value = if let Some(value) = &var.value {
            value.clone()
        } else {
            let from = var.value_from.as_ref().expect("value or valueFrom");
            if let Some(key) = &from.secret_key_ref {
                let secret = pod_secret(secrets, &key.name, job).await;
                secret_value(&secret, &key.key)
            } else {
                let field = from.field_ref.as_ref().expect("a field reference");
                assert_eq!(
                    field.field_path, "metadata.labels['batch.kubernetes.io/job-name']",
                    "only the Job-name label can be played here"
                );
                job.to_owned()
            }
        };
        out.insert(var.name.clone(), value);
    }
    out
}

async fn apply(env: &Env, name: &str, spec: Value) {
    let body = json!({"apiVersion": "servicedb.dev/v1alpha1", "kind": "ServiceDatabase",
        "metadata": {"name": name}, "spec": spec});
    env.api::<ServiceDatabase>()
        .patch(
            name,
            &PatchParams::apply("servicedb-e2e"),
            &Patch::Apply(&body),
        )
        .await
        .expect("ServiceDatabase");
}

/// Run `job` of CronJob `cron`, made from its template as the CronJob
/// controller would.
async fn run_of_cronjob(env: &Env, cron: &str, job: &str) {
    let cronjob = get_when(&env.api::<CronJob>(), cron).await;
    let template = cronjob.spec.expect("CronJob spec").job_template;
    let run = Job {
        metadata: ObjectMeta {
            name: Some(job.to_owned()),
            labels: template.metadata.and_then(|m| m.labels),
            ..Default::default()
        },
        spec: template.spec,
        ..Default::default()
    };
    env.api::<Job>()
        .create(&PostParams::default(), &run)
        .await
        .unwrap_or_else(|e| panic!("Job {job} of CronJob {cron}: {e}"));
}

#[tokio::test]
async fn shared_databases_are_backed_up_and_restored_by_their_jobs_run_for_real() {
    let env = Env::new("agent-jobs").await;
    let pg = Postgres::start_new();
    let cache = Redis::start_new();
    let s3 = S3::start();
    s3.create_bucket("backups");
    let same = json!({"from": "Same"});
    server(&env, "pg", &pg, same.clone()).await;
    server_of(
        &env,
        "cache",
        "Redis",
        cache.port,
        &cache.admin_user,
        &cache.admin_password,
        same,
    )
    .await;
    let creds = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s3-creds"},
        "stringData": {"AWS_ACCESS_KEY_ID": s3.access_key, "AWS_SECRET_ACCESS_KEY": s3.secret_key}});
    env.api::<Secret>()
        .patch(
            "s3-creds",
            &PatchParams::apply("servicedb-e2e"),
            &Patch::Apply(&creds),
        )
        .await
        .expect("S3 credentials");
    let backup = json!({"schedule": "@daily", "destination": {"s3": {"bucket": "backups",
        "endpoint": s3.endpoint, "region": "us-east-1", "credentialsSecret": "s3-creds"}}});
    let on = |engine: &str, server: &str, app: &str| {
        json!({"engine": engine, "isolation": "Database", "serverRef": {"name": server},
            "owner": {"podSelector": {"matchLabels": {"app": app}}}, "deletionPolicy": "Delete"})
    };
    let verified = |mut backup: Value| {
        backup["verify"] = json!({"schedule": "@weekly"});
        backup
    };
    let mut orders = on("Postgres", "pg", "orders");
    orders["backup"] = verified(backup.clone());
    let mut cart = on("Redis", "cache", "cart");
    cart["backup"] = backup.clone();
    // A schema of its own in the server's shared database: its backup holds
    // that schema only (the other services' schemas are closed to it).
    let mut invoices = on("Postgres", "pg", "invoices");
    invoices["isolation"] = "Schema".into();
    invoices["backup"] = verified(backup);
    apply(&env, "orders", orders).await;
    apply(&env, "cart", cart).await;
    apply(&env, "invoices", invoices).await;
    let mut payments = on("Postgres", "pg", "payments");
    payments["isolation"] = "Schema".into();
    apply(&env, "payments", payments).await;
    let sdbs: Api<ServiceDatabase> = env.api();
    for database in ["orders", "cart", "invoices", "payments"] {
        wait_phase(&sdbs, database, Phase::Ready).await;
    }
    let secrets: Api<Secret> = env.api();

    // Data, written with the services' own logins.
    let orders_secret = secrets.get("orders-db").await.expect("orders-db");
    let pg_as = |secret: &Secret| {
        let (user, password, database) = (
            secret_value(secret, "username"),
            secret_value(secret, "password"),
            secret_value(secret, "database"),
        );
        let port = pg.port;
        async move {
            connect(port, &user, &password, &database)
                .await
                .expect("the service's login")
        }
    };
    pg_as(&orders_secret)
        .await
        .batch_execute(
            "CREATE TABLE orders (id int PRIMARY KEY, item text);
             INSERT INTO orders SELECT i, 'item ' || i FROM generate_series(1, 500) i;",
        )
        .await
        .expect("orders data");
    let invoices_secret = secrets.get("invoices-db").await.expect("invoices-db");
    pg_as(&invoices_secret)
        .await
        .batch_execute(
            "CREATE TABLE invoices (id int PRIMARY KEY, total numeric);
             INSERT INTO invoices SELECT i, i * 1.5 FROM generate_series(1, 30) i;",
        )
        .await
        .expect("invoices data");
    let payments_secret = secrets.get("payments-db").await.expect("payments-db");
    pg_as(&payments_secret)
        .await
        .batch_execute("CREATE TABLE cards (number text); INSERT INTO cards VALUES ('4111');")
        .await
        .expect("payments data");
    let cart_secret = secrets.get("cart-db").await.expect("cart-db");
    let cart_prefix = secret_value(&cart_secret, "keyPrefix");
    let mut cart_conn = redis_as(cache.port, &cart_secret).await;
    for i in 0..50 {
        let _: () = redis::cmd("SET")
            .arg(format!("{cart_prefix}line:{i}"))
            .arg(format!("sku-{i}"))
            .query_async(&mut cart_conn)
            .await
            .expect("cart data");
    }

    // Backups by hand: the operator makes each Job; the agent runs it.
    for database in ["orders", "cart", "invoices"] {
        let backup = format!("{database}-1");
        manual_backup(&env, &backup, database).await;
        let (code, message) = run_job(&env, &format!("{backup}-backup")).await;
        assert_eq!(code, 0, "{backup}: {message}");
        let done = wait_backup(&env, &backup, BackupPhase::Completed).await;
        let status = done.status.expect("status");
        assert!(status.size_bytes.unwrap_or_default() > 0, "{status:?}");
        assert!(
            status
                .checksum
                .as_deref()
                .is_some_and(|c| c.starts_with("sha256:")),
            "{status:?}"
        );
        let location = status.location.expect("location");
        let stored = location
            .strip_prefix("s3://backups/")
            .expect("an S3 location");
        assert!(
            s3.bucket_dir("backups")
                .join(stored)
                .join("manifest.json")
                .is_file(),
            "the archive and its manifest are in the bucket at {location}"
        );
    }

    // Verification, as each service's own login: once a backup completed,
    // the verify CronJob restores it into the service's scratch database on
    // the shared server. A run is made as the CronJob controller would.
    let admin = connect(pg.port, &pg.admin_user, &pg.admin_password, "postgres")
        .await
        .expect("admin");
    for (database, secret, rows) in [
        ("orders", &orders_secret, 500),
        ("invoices", &invoices_secret, 30),
    ] {
        // Two scheduled runs: the second finds the scratch database as the
        // first left it.
        for run in 1..=2 {
            let job = format!("{database}-db-verify-{run}");
            run_of_cronjob(&env, &format!("{database}-db-verify"), &job).await;
            let (code, message) = run_job(&env, &job).await;
            assert_eq!(code, 0, "{job}: {message}");
            let result: Value = serde_json::from_str(&message).expect("the verification's result");
            assert_eq!(result["checks"]["rows"], rows, "{result}");
        }
        let status = wait_for(
            "status.lastVerifiedBackup",
            Duration::from_secs(30),
            || async {
                let status = sdbs.get(database).await.ok()?.status?;
                status
                    .last_verified_backup
                    .as_ref()
                    .is_some_and(|v| v.name == format!("{database}-1"))
                    .then_some(status)
            },
        )
        .await;
        let last = status.last_verified_backup.expect("lastVerifiedBackup");
        assert!(last.restore_seconds.is_some_and(|s| s > 0.0), "{last:?}");
        let healthy = status
            .conditions
            .iter()
            .find(|c| c.type_ == "BackupHealthy")
            .expect("BackupHealthy");
        assert_eq!(healthy.status, "True", "{healthy:?}");
        wait_for(
            "DatabaseBackup.status.verified",
            Duration::from_secs(30),
            || async {
                let backup = env
                    .api::<servicedb::api::DatabaseBackup>()
                    .get(&format!("{database}-1"))
                    .await
                    .ok()?;
                (backup.status?.verified == Some(true)).then_some(())
            },
        )
        .await;
        // The scratch database stays, empty, and belongs to the service.
        let scratch = format!("{}-verify", secret_value(secret, "username"));
        let owner: String = admin
            .query_one(
                "SELECT pg_get_userbyid(datdba)::text FROM pg_database WHERE datname = $1",
                &[&scratch],
            )
            .await
            .unwrap_or_else(|e| panic!("the scratch database {scratch}: {e}"))
            .get(0);
        assert_eq!(owner, secret_value(secret, "username"));
        let tables: i64 = connect(pg.port, &pg.admin_user, &pg.admin_password, &scratch)
            .await
            .expect("scratch")
            .query_one(
                "SELECT count(*) FROM pg_tables WHERE schemaname NOT IN ('pg_catalog', 'information_schema')",
                &[],
            )
            .await
            .expect("count")
            .get(0);
        assert_eq!(tables, 0, "{scratch} is emptied after the check");
        // The service itself is untouched: its login still enters its
        // database (for Schema, the shared one) and reads its rows.
        let table = if database == "orders" {
            "orders"
        } else {
            "invoices"
        };
        let n: i64 = pg_as(secret)
            .await
            .query_one(&format!("SELECT count(*) FROM {table}"), &[])
            .await
            .expect("the service reads its own table after verification")
            .get(0);
        assert_eq!(n, rows);
    }

    // The schema's backup holds its own schema only: restored by the
    // agent into an empty database, it brings back the invoices and no other
    // service's table.
    admin
        .batch_execute("CREATE DATABASE invoices_check")
        .await
        .expect("scratch database");
    let location = wait_backup(&env, "invoices-1", BackupPhase::Completed)
        .await
        .status
        .and_then(|s| s.location)
        .expect("location");
    let mut agent_env = vec![
        ("AWS_ACCESS_KEY_ID".to_owned(), s3.access_key.clone()),
        ("AWS_SECRET_ACCESS_KEY".to_owned(), s3.secret_key.clone()),
        ("SERVICEDB_PASSWORD".to_owned(), pg.admin_password.clone()),
    ];
    agent_env.push(("PATH".to_owned(), std::env::var("PATH").unwrap_or_default()));
    let restored = tokio::process::Command::new(env!("CARGO_BIN_EXE_servicedb"))
        .args([
            "agent",
            "restore",
            "--engine",
            "postgres",
            "--host",
            "127.0.0.1",
            "--port",
            &pg.port.to_string(),
            "--username",
            &pg.admin_user,
            "--database",
            "invoices_check",
            "--from",
            &location,
            "--s3-endpoint",
            &s3.endpoint,
        ])
        .env_clear()
        .envs(agent_env)
        .output()
        .await
        .expect("agent restore");
    assert!(
        restored.status.success(),
        "{}",
        String::from_utf8_lossy(&restored.stderr)
    );
    let check = connect(
        pg.port,
        &pg.admin_user,
        &pg.admin_password,
        "invoices_check",
    )
    .await
    .expect("check database");
    let tables: Vec<String> = check
        .query(
            "SELECT schemaname || '.' || tablename FROM pg_tables \
             WHERE schemaname NOT IN ('pg_catalog', 'information_schema')",
            &[],
        )
        .await
        .expect("tables")
        .iter()
        .map(|r| r.get(0))
        .collect();
    let schema = secret_value(&invoices_secret, "schema");
    assert_eq!(tables, [format!("{schema}.invoices")]);
    let n: i64 = check
        .query_one(&format!("SELECT count(*) FROM \"{schema}\".invoices"), &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(n, 30);

    // New databases from those backups, on the same servers.
    let mut orders_copy = on("Postgres", "pg", "orders");
    orders_copy["bootstrap"] = json!({"fromBackup": {"name": "orders-1"}});
    let mut cart_copy = on("Redis", "cache", "cart");
    cart_copy["bootstrap"] = json!({"fromBackup": {"name": "cart-1"}});
    apply(&env, "orders-copy", orders_copy).await;
    apply(&env, "cart-copy", cart_copy).await;
    for database in ["orders-copy", "cart-copy"] {
        let (code, message) = run_job(&env, &format!("{database}-db-restore")).await;
        assert_eq!(code, 0, "{database}: {message}");
        wait_phase(&sdbs, database, Phase::Ready).await;
    }

    let copy = secrets.get("orders-copy-db").await.expect("orders-copy-db");
    let rows: Vec<(i32, String)> = pg_as(&copy)
        .await
        .query("SELECT id, item FROM orders ORDER BY id", &[])
        .await
        .expect("the restored table, read by the new service")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(rows.len(), 500);
    assert_eq!(rows[41], (42, "item 42".to_owned()));

    let copy = secrets.get("cart-copy-db").await.expect("cart-copy-db");
    let copy_prefix = secret_value(&copy, "keyPrefix");
    assert_ne!(copy_prefix, cart_prefix);
    let mut copy_conn = redis_as(cache.port, &copy).await;
    for i in [0, 49] {
        let value: Option<String> = redis::cmd("GET")
            .arg(format!("{copy_prefix}line:{i}"))
            .query_async(&mut copy_conn)
            .await
            .expect("GET");
        assert_eq!(value.as_deref(), Some(format!("sku-{i}").as_str()));
    }
    // The restore's RESTORE permission is gone once it completed.
    wait_for(
        "RESTORE to be withdrawn",
        Duration::from_secs(30),
        || async {
            let mut conn = redis_as(cache.port, &copy).await;
            let refused: redis::RedisResult<()> = redis::cmd("RESTORE")
                .arg(format!("{copy_prefix}x"))
                .arg(0)
                .arg("not a payload")
                .query_async(&mut conn)
                .await;
            refused
                .err()
                .filter(|e| e.to_string().contains("no permissions"))
                .map(drop)
        },
    )
    .await;

    // The scratch database goes when verification leaves the spec, and with
    // the service on Delete (before its role, which could not be dropped
    // while it owned a database).
    let scratch_of = |secret: &Secret| format!("{}-verify", secret_value(secret, "username"));
    let exists = |name: String| {
        let admin = &admin;
        async move {
            admin
                .query_one(
                    "SELECT count(*) FROM pg_database WHERE datname = $1",
                    &[&name],
                )
                .await
                .expect("count")
                .get::<_, i64>(0)
                == 1
        }
    };
    let mut invoices = on("Postgres", "pg", "invoices");
    invoices["isolation"] = "Schema".into();
    invoices["backup"] = json!({"schedule": "@daily", "destination": {"s3": {"bucket": "backups",
        "endpoint": s3.endpoint, "region": "us-east-1", "credentialsSecret": "s3-creds"}}});
    apply(&env, "invoices", invoices).await;
    let scratch = scratch_of(&invoices_secret);
    wait_for(
        "the scratch database to go with spec.backup.verify",
        Duration::from_secs(30),
        || async { (!exists(scratch.clone()).await).then_some(()) },
    )
    .await;
    let scratch = scratch_of(&orders_secret);
    assert!(exists(scratch.clone()).await);
    sdbs.delete("orders", &Default::default())
        .await
        .expect("delete orders");
    wait_for("orders to be gone", Duration::from_secs(30), || async {
        sdbs.get_opt("orders").await.ok()?.is_none().then_some(())
    })
    .await;
    assert!(
        !exists(scratch).await,
        "the scratch database is dropped with the service"
    );
}

/// Disaster recovery from the bucket alone: the service, its
/// `DatabaseBackup`s and its database on the server are gone; a new
/// ServiceDatabase with `bootstrap.fromArchive` finds the backups in the
/// bucket by its namespace and name, and the agent restores the latest one
/// completed before a time, or the latest of all. (The API server here has
/// no namespace controller, so the namespace itself is kept and emptied.)
#[tokio::test]
async fn a_database_is_recovered_from_the_bucket_alone() {
    let env = Env::new("agent-dr").await;
    let pg = Postgres::start_new();
    let s3 = S3::start();
    s3.create_bucket("backups");
    server(&env, "pg", &pg, json!({"from": "Same"})).await;
    let creds = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s3-creds"},
        "stringData": {"AWS_ACCESS_KEY_ID": s3.access_key, "AWS_SECRET_ACCESS_KEY": s3.secret_key}});
    env.api::<Secret>()
        .patch(
            "s3-creds",
            &PatchParams::apply("servicedb-e2e"),
            &Patch::Apply(&creds),
        )
        .await
        .expect("S3 credentials");
    let destination = json!({"s3": {"bucket": "backups", "endpoint": s3.endpoint,
        "region": "us-east-1", "credentialsSecret": "s3-creds"}});
    let on_pg = |app: &str| {
        json!({"engine": "Postgres", "isolation": "Database", "serverRef": {"name": "pg"},
            "owner": {"podSelector": {"matchLabels": {"app": app}}}, "deletionPolicy": "Delete"})
    };
    let mut orders = on_pg("orders");
    orders["backup"] = json!({"schedule": "@daily", "destination": destination});
    apply(&env, "orders", orders).await;
    let sdbs: Api<ServiceDatabase> = env.api();
    wait_phase(&sdbs, "orders", Phase::Ready).await;
    let secrets: Api<Secret> = env.api();
    let count_as = async |secret: &Secret| -> i64 {
        let (user, password, database) = credentials(secret);
        connect(pg.port, &user, &password, &database)
            .await
            .expect("the service's login")
            .query_one("SELECT count(*) FROM orders", &[])
            .await
            .expect("count")
            .get(0)
    };
    let secret = secrets.get("orders-db").await.expect("orders-db");
    let (user, password, database) = credentials(&secret);
    let session = connect(pg.port, &user, &password, &database)
        .await
        .expect("the service's login");

    // Two backups: 500 rows, then 600.
    let mut between = String::new();
    for (backup, sql) in [
        (
            "orders-1",
            "CREATE TABLE orders (id int PRIMARY KEY); INSERT INTO orders SELECT generate_series(1, 500);",
        ),
        (
            "orders-2",
            "INSERT INTO orders SELECT generate_series(501, 600);",
        ),
    ] {
        session.batch_execute(sql).await.expect("data");
        manual_backup(&env, backup, "orders").await;
        let (code, message) = run_job(&env, &format!("{backup}-backup")).await;
        assert_eq!(code, 0, "{backup}: {message}");
        wait_backup(&env, backup, BackupPhase::Completed).await;
        if between.is_empty() {
            // Manifests record whole seconds.
            tokio::time::sleep(Duration::from_millis(1100)).await;
            between = k8s_openapi::jiff::Timestamp::now()
                .strftime("%Y-%m-%dT%H:%M:%SZ")
                .to_string();
            tokio::time::sleep(Duration::from_millis(1100)).await;
        }
    }
    drop(session);

    // `servicedb agent list` reads them from the bucket, oldest first.
    let dir = format!("s3://backups/{}/orders", env.ns);
    let listed = tokio::process::Command::new(env!("CARGO_BIN_EXE_servicedb"))
        .args([
            "agent",
            "list",
            "--from",
            &dir,
            "--s3-endpoint",
            &s3.endpoint,
        ])
        .env("AWS_ACCESS_KEY_ID", &s3.access_key)
        .env("AWS_SECRET_ACCESS_KEY", &s3.secret_key)
        .env("AWS_REGION", "us-east-1")
        .output()
        .await
        .expect("servicedb agent list");
    assert!(
        listed.status.success(),
        "{}",
        String::from_utf8_lossy(&listed.stderr)
    );
    let lines: Vec<Value> = String::from_utf8_lossy(&listed.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON line"))
        .collect();
    let names: Vec<&str> = lines.iter().filter_map(|l| l["name"].as_str()).collect();
    assert_eq!(names, ["orders-1", "orders-2"], "{lines:?}");
    assert!(lines.iter().all(|l| l["engine"] == "postgres"), "{lines:?}");

    // Everything in the cluster and on the server goes: the backups'
    // records (their archives are kept), the service and its database.
    let backups: Api<servicedb::api::DatabaseBackup> = env.api();
    for backup in ["orders-1", "orders-2"] {
        backups
            .delete(backup, &Default::default())
            .await
            .expect("delete the record");
    }
    sdbs.delete("orders", &Default::default())
        .await
        .expect("delete the service");
    wait_for("everything gone", Duration::from_secs(60), || async {
        let left = backups.list(&Default::default()).await.ok()?.items.len()
            + sdbs.list(&Default::default()).await.ok()?.items.len();
        (left == 0).then_some(())
    })
    .await;
    let admin = connect(pg.port, &pg.admin_user, &pg.admin_password, "postgres")
        .await
        .expect("admin");
    let left: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_database WHERE datname = $1",
            &[&database],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(left, 0, "the database is dropped");

    // Recovered by the same namespace and name, as of `between`: 500 rows.
    let mut recovered = on_pg("orders");
    recovered["bootstrap"] =
        json!({"fromArchive": {"destination": destination, "before": between}});
    apply(&env, "orders", recovered).await;
    let (code, message) = run_job(&env, "orders-db-restore").await;
    assert_eq!(code, 0, "{message}");
    let restored: Value = serde_json::from_str(&message).expect("the restore's result");
    assert!(
        restored["restored"]["location"]
            .as_str()
            .is_some_and(|l| l.ends_with("/orders-1")),
        "{restored}"
    );
    let ready = wait_phase(&sdbs, "orders", Phase::Ready).await;
    let cond = ready
        .status
        .expect("status")
        .conditions
        .into_iter()
        .find(|c| c.type_ == "Restored")
        .expect("Restored");
    assert_eq!(cond.reason, "Restored", "{}", cond.message);
    assert!(
        cond.message.contains(&dir) && cond.message.contains(&between),
        "{}",
        cond.message
    );
    let secret = get_when(&secrets, "orders-db").await;
    assert_eq!(count_as(&secret).await, 500);

    // Another one from the latest of that service's backups: 600 rows.
    let mut latest = on_pg("orders-copy");
    latest["bootstrap"] = json!({"fromArchive": {"destination": destination,
        "source": format!("{}/orders", env.ns)}});
    apply(&env, "orders-copy", latest).await;
    let (code, message) = run_job(&env, "orders-copy-db-restore").await;
    assert_eq!(code, 0, "{message}");
    wait_phase(&sdbs, "orders-copy", Phase::Ready).await;
    let secret = get_when(&secrets, "orders-copy-db").await;
    assert_eq!(count_as(&secret).await, 600);

    // Nothing before the first backup: the Job fails and says so.
    let mut too_early = on_pg("orders-early");
    too_early["bootstrap"] = json!({"fromArchive": {"destination": destination,
        "source": format!("{}/orders", env.ns), "before": "2020-01-01T00:00:00Z"}});
    apply(&env, "orders-early", too_early).await;
    let (code, message) = run_job(&env, "orders-early-db-restore").await;
    assert_ne!(code, 0);
    assert!(
        message.contains("no backup under") && message.contains("2020-01-01"),
        "{message}"
    );
}
