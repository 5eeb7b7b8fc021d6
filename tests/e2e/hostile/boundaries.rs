//! Claims cannot move between servers, access ends with admission, every
//! derived name fits, children are never shared, and status tells the truth.

use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::{Value, json};
use servicedb::api::database_backup::BackupPhase;
use servicedb::api::{DatabaseBackup, DatabaseServer, Phase, ServiceDatabase};

use crate::support::backups::condition;
use crate::support::backups::manifest;
use crate::support::backups::succeed;
use crate::support::backups::wait_backup;
use crate::support::harness::{Env, ensure_namespace, wait_for};
use crate::support::objects::get_when;
use crate::support::objects::secret_value;
use crate::support::objects::wait_phase;
use crate::support::servers::Postgres;
use crate::support::shared_servers::connect;
use crate::support::shared_servers::server;

/// Applies a ServiceDatabase in `ns`.
async fn apply(
    client: &kube::Client,
    ns: &str,
    sdb: Value,
) -> Result<ServiceDatabase, kube::Error> {
    let name = sdb["metadata"]["name"].as_str().expect("name").to_string();
    Api::<ServiceDatabase>::namespaced(client.clone(), ns)
        .patch(
            &name,
            &PatchParams::apply("servicedb-e2e").force(),
            &Patch::Apply(&sdb),
        )
        .await
}

fn shared(name: &str, server: &str, server_ns: &str) -> Value {
    json!({"apiVersion": "servicedb.dev/v1alpha1", "kind": "ServiceDatabase", "metadata": {"name": name},
        "spec": {"engine": "Postgres", "isolation": "Database",
                 "serverRef": {"name": server, "namespace": server_ns},
                 "owner": {"podSelector": {"matchLabels": {"app": name}}}, "deletionPolicy": "Delete"}})
}

/// A label selector as `kubectl get -l` takes it (the API server evaluates it).
fn selector_string(selector: &LabelSelector) -> String {
    let mut parts: Vec<String> = selector
        .match_labels
        .iter()
        .flatten()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    for e in selector.match_expressions.iter().flatten() {
        let values = e.values.clone().unwrap_or_default().join(",");
        parts.push(match e.operator.as_str() {
            "In" => format!("{} in ({values})", e.key),
            "NotIn" => format!("{} notin ({values})", e.key),
            "Exists" => e.key.clone(),
            _ => format!("!{}", e.key),
        });
    }
    parts.join(",")
}

#[tokio::test]
async fn the_longest_name_gets_scheduled_backups_whose_every_job_the_api_server_accepts() {
    let env = Env::new("bounds-names").await;
    // 40 characters, the most the CRD admits.
    let name = "payments-reconciliation-ledger-export-v2";
    assert_eq!(name.len(), 40);
    let too_long = format!("{name}x");
    let sdb = |name: &str| {
        json!({"apiVersion": "servicedb.dev/v1alpha1", "kind": "ServiceDatabase", "metadata": {"name": name},
            "spec": {"engine": "Postgres", "owner": {"podSelector": {"matchLabels": {"app": "payments"}}},
                "backup": {"schedule": "0 2 * * *", "retainArchivesOnDelete": false, "destination": {"s3": {"bucket": "backups",
                    "endpoint": "http://minio.storage:9000", "region": "eu-1", "credentialsSecret": "s3-creds"}}}}})
    };
    let refused = apply(&env.client, &env.ns, sdb(&too_long))
        .await
        .expect_err("41 characters are refused up front");
    assert!(refused.to_string().contains("40"), "{refused}");
    apply(&env.client, &env.ns, sdb(name))
        .await
        .expect("40 characters are accepted");

    let cron_name = format!("{name}-db-backup");
    let cron = get_when(&env.api::<CronJob>(), &cron_name).await;
    assert!(
        cron_name.len() <= 52,
        "a CronJob name leaves room for its Jobs"
    );
    // The CronJob controller names its Jobs `<cronjob>-<scheduled minute>`.
    let run = format!("{cron_name}-29450000");
    let template = cron.spec.clone().expect("spec").job_template;
    let job: Job = serde_json::from_value(json!({
        "metadata": {"name": run, "labels": template.metadata.as_ref().and_then(|m| m.labels.clone()),
            "ownerReferences": [{"apiVersion": "batch/v1", "kind": "CronJob", "name": cron_name,
                "uid": cron.uid(), "controller": true}]},
        "spec": template.spec,
    }))
    .expect("job");
    env.api::<Job>()
        .create(&PostParams::default(), &job)
        .await
        .expect("the scheduled Job is accepted");
    wait_backup(&env, &run, BackupPhase::Pending).await;
    succeed(&env, &run, manifest(&run, 4096)).await;
    wait_backup(&env, &run, BackupPhase::Completed).await;

    let backups: Api<DatabaseBackup> = env.api();
    // Deleting the scheduled backup (retainArchivesOnDelete: false) deletes
    // its archive first, by a Job the API server accepts.
    backups
        .delete(&run, &DeleteParams::default())
        .await
        .expect("delete the scheduled backup");
    let delete = wait_for(
        "the archive deletion Job",
        Duration::from_secs(30),
        || async {
            let jobs = env
                .api::<Job>()
                .list(&ListParams::default().labels(&format!(
                    "servicedb.dev/backup={run},app.kubernetes.io/component=backup-delete"
                )))
                .await
                .ok()?;
            jobs.items.into_iter().next()
        },
    )
    .await;
    assert!(delete.name_any().len() <= 63, "{}", delete.name_any());
    assert!(
        delete.name_any().starts_with(&run[..40]),
        "a readable start: {}",
        delete.name_any()
    );
    succeed(&env, &delete.name_any(), json!({})).await;
    wait_for("the backup to be gone", Duration::from_secs(30), || async {
        backups.get_opt(&run).await.ok()?.is_none().then_some(())
    })
    .await;
    // A DatabaseBackup by hand with the longest name a backup may have.
    let manual = "m".repeat(63);
    let backup = |n: &str| -> DatabaseBackup {
        serde_json::from_value(
            json!({"apiVersion": "servicedb.dev/v1alpha1", "kind": "DatabaseBackup",
            "metadata": {"name": n}, "spec": {"serviceDatabaseRef": {"name": name}}}),
        )
        .expect("backup")
    };
    let err = backups
        .create(&PostParams::default(), &backup(&format!("{manual}m")))
        .await
        .expect_err("a backup name of 64 characters is refused up front");
    assert!(err.to_string().contains("63"), "{err}");
    backups
        .create(&PostParams::default(), &backup(&manual))
        .await
        .expect("63 characters are accepted");
    let manual_job = wait_for(
        "the manual backup's Job",
        Duration::from_secs(30),
        || async {
            let jobs = env
                .api::<Job>()
                .list(&ListParams::default().labels(&format!("servicedb.dev/backup={manual}")))
                .await
                .ok()?;
            jobs.items.into_iter().next()
        },
    )
    .await;
    assert!(manual_job.name_any().len() <= 63);
}

#[tokio::test]
async fn a_shared_placement_does_not_claim_network_isolation_and_app_pods_cannot_pose_as_agents() {
    let env = Env::new("bounds-truth").await;
    let pg = Postgres::start_new();
    server(&env, "pg", &pg, json!({"from": "Same"})).await;
    apply(&env.client, &env.ns, shared("orders", "pg", &env.ns))
        .await
        .expect("apply");
    let sdbs: Api<ServiceDatabase> = env.api();
    let ready = wait_phase(&sdbs, "orders", Phase::Ready).await;
    let (status, reason, message) = condition(&ready, "NetworkIsolated").expect("NetworkIsolated");
    assert_eq!(status, "Unknown", "{reason}: {message}");
    assert!(message.contains("NetworkPolicy"), "{message}");

    // A dedicated database with backups: its NetworkPolicy admits the
    // agent pods of its Jobs, not an app pod that copies a label.
    apply(
        &env.client,
        &env.ns,
        json!({"apiVersion": "servicedb.dev/v1alpha1", "kind": "ServiceDatabase", "metadata": {"name": "ledger"},
            "spec": {"engine": "Postgres", "owner": {"podSelector": {"matchLabels": {"app": "ledger"}}},
                "backup": {"schedule": "0 2 * * *", "destination": {"volume": {"claimName": "backups"}}}}}),
    )
    .await
    .expect("apply ledger");
    let policy = get_when(&env.api::<NetworkPolicy>(), "ledger-db").await;
    let cron = get_when(&env.api::<CronJob>(), "ledger-db-backup").await;
    let template = cron.spec.clone().expect("spec").job_template;
    let job: Job = serde_json::from_value(json!({
        "metadata": {"name": "ledger-db-backup-29450000",
            "labels": template.metadata.as_ref().and_then(|m| m.labels.clone()),
            "ownerReferences": [{"apiVersion": "batch/v1", "kind": "CronJob", "name": "ledger-db-backup",
                "uid": cron.uid(), "controller": true}]},
        "spec": template.spec,
    }))
    .expect("job");
    let job = env
        .api::<Job>()
        .create(&PostParams::default(), &job)
        .await
        .expect("the scheduled Job");
    // The agent's pod as the Job controller makes it (from the template the
    // API server completed), and an app pod that copies the label today's
    // policy admits.
    let agent_labels = job
        .spec
        .as_ref()
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .expect("pod labels");
    let pods: Api<Pod> = env.api();
    for (pod_name, labels) in [
        ("agent", json!(agent_labels)),
        (
            "app",
            json!({"app": "reporting", "servicedb.dev/client-of": "ledger"}),
        ),
    ] {
        let pod: Pod =
            serde_json::from_value(json!({"metadata": {"name": pod_name, "labels": labels},
            "spec": {"containers": [{"name": "c", "image": "busybox"}]}}))
            .expect("pod");
        pods.create(&PostParams::default(), &pod)
            .await
            .expect("pod");
    }
    let mut admitted = Vec::new();
    let from = policy.spec.expect("spec").ingress.expect("ingress")[0]
        .from
        .clone()
        .expect("from");
    for peer in from.iter().filter(|p| p.namespace_selector.is_none()) {
        let selector = selector_string(peer.pod_selector.as_ref().expect("pod selector"));
        for pod in pods
            .list(&ListParams::default().labels(&selector))
            .await
            .expect("list")
        {
            admitted.push(pod.name_any());
        }
    }
    assert!(admitted.contains(&"agent".to_string()), "{admitted:?}");
    assert!(!admitted.contains(&"app".to_string()), "{admitted:?}");
}

#[tokio::test]
async fn two_database_servers_naming_one_postgres_are_one_server_for_claims() {
    let env = Env::new("bounds-identity").await;
    let pg = Postgres::start_new();
    server(&env, "pg-one", &pg, json!({"from": "All"})).await;
    server(&env, "pg-two", &pg, json!({"from": "All"})).await;
    let (ns_a, ns_b) = (format!("{}-a-b", env.ns), format!("{}-a", env.ns));
    ensure_namespace(&env.client, &ns_a).await;
    ensure_namespace(&env.client, &ns_b).await;
    // `<ns>-a-b/c` and `<ns>-a/b-c` give the same login name.
    apply(&env.client, &ns_a, shared("c", "pg-one", &env.ns))
        .await
        .expect("first");
    let first: Api<ServiceDatabase> = Api::namespaced(env.client.clone(), &ns_a);
    wait_phase(&first, "c", Phase::Ready).await;
    let secret = get_when(
        &Api::<Secret>::namespaced(env.client.clone(), &ns_a),
        "c-db",
    )
    .await;
    let (user, password, database) = (
        secret_value(&secret, "username"),
        secret_value(&secret, "password"),
        secret_value(&secret, "database"),
    );
    connect(pg.port, &user, &password, &database)
        .await
        .expect("the first logs in")
        .batch_execute("CREATE TABLE secrets (v text); INSERT INTO secrets VALUES ('mine')")
        .await
        .expect("writes");

    apply(&env.client, &ns_b, shared("b-c", "pg-two", &env.ns))
        .await
        .expect("second");
    let second: Api<ServiceDatabase> = Api::namespaced(env.client.clone(), &ns_b);
    let refused = wait_phase(&second, "b-c", Phase::Failed).await;
    let (_, reason, message) = condition(&refused, "SpecValid").expect("SpecValid");
    assert_eq!(reason, "NameConflict", "{message}");
    assert!(message.contains(&format!("{ns_a}/c")), "{message}");
    assert!(
        Api::<Secret>::namespaced(env.client.clone(), &ns_b)
            .get_opt("b-c-db")
            .await
            .expect("get")
            .is_none(),
        "the second gets no credentials"
    );
    // Still refused a while later (no reconcile takes the login over), and
    // the first keeps its data and its password.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let refused = second.get("b-c").await.expect("get");
    assert_eq!(refused.status.expect("status").phase, Phase::Failed);
    let v: String = connect(pg.port, &user, &password, &database)
        .await
        .expect("the first still logs in with its password")
        .query_one("SELECT v FROM secrets", &[])
        .await
        .expect("its table")
        .get(0);
    assert_eq!(v, "mine");

    // serverRef cannot move a claim.
    let mut moved = shared("c", "pg-two", &env.ns);
    moved["spec"]["serverRef"]["name"] = json!("pg-two");
    let err = apply(&env.client, &ns_a, moved)
        .await
        .expect_err("serverRef is immutable");
    assert!(err.to_string().contains("serverRef is immutable"), "{err}");
}

#[tokio::test]
async fn a_service_database_named_like_a_managed_servers_instance_touches_none_of_its_objects() {
    let env = Env::new("bounds-children").await;
    let server: DatabaseServer = serde_json::from_value(json!({
        "apiVersion": "servicedb.dev/v1alpha1", "kind": "DatabaseServer", "metadata": {"name": "x"},
        "spec": {"engine": "Postgres", "managed": {}, "allowedNamespaces": {"from": "Same"}}}))
    .expect("server");
    let server = env
        .api::<DatabaseServer>()
        .create(&PostParams::default(), &server)
        .await
        .expect("the managed server");
    let server_uid = server.uid().expect("uid");
    let statefulsets: Api<StatefulSet> = env.api();
    let secrets: Api<Secret> = env.api();
    get_when(&statefulsets, "x-server-db").await;
    let admin = get_when(&secrets, "x-server-db-admin").await;
    let admin_password = secret_value(&admin, "password");

    // A ServiceDatabase `x-server` would build the same children.
    apply(
        &env.client,
        &env.ns,
        json!({"apiVersion": "servicedb.dev/v1alpha1", "kind": "ServiceDatabase", "metadata": {"name": "x-server"},
            "spec": {"engine": "Postgres", "owner": {"podSelector": {"matchLabels": {"app": "x"}}},
                     "deletionPolicy": "Delete"}}),
    )
    .await
    .expect("apply");
    let sdbs: Api<ServiceDatabase> = env.api();
    let refused = wait_for(
        "x-server refused, naming the object",
        Duration::from_secs(30),
        || async {
            let sdb = sdbs.get("x-server").await.ok()?;
            let (status, reason, message) = condition(&sdb, "Ready")?;
            (status == "False" && reason == "ChildConflict").then_some(message)
        },
    )
    .await;
    assert!(refused.contains("x-server-db"), "{refused}");

    let controller_of = |meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| {
        meta.owner_references
            .iter()
            .flatten()
            .filter(|o| o.controller == Some(true))
            .map(|o| o.uid.clone())
            .collect::<Vec<_>>()
    };
    let sts = statefulsets.get("x-server-db").await.expect("still there");
    assert_eq!(controller_of(&sts.metadata), vec![server_uid.clone()]);
    let admin = secrets.get("x-server-db-admin").await.expect("still there");
    assert_eq!(secret_value(&admin, "password"), admin_password);

    // Deleting it (deletionPolicy Delete) removes none of the server's objects.
    sdbs.delete("x-server", &DeleteParams::default())
        .await
        .expect("delete");
    wait_for("x-server to be gone", Duration::from_secs(30), || async {
        sdbs.get_opt("x-server").await.ok()?.is_none().then_some(())
    })
    .await;
    let sts = statefulsets.get_opt("x-server-db").await.expect("get");
    assert!(sts.is_some(), "the server's StatefulSet is still there");
    let admin = secrets
        .get_opt("x-server-db-admin")
        .await
        .expect("get")
        .expect("the server's admin Secret is still there");
    assert_eq!(secret_value(&admin, "password"), admin_password);
}

#[tokio::test]
async fn a_namespace_no_longer_admitted_loses_its_logins_and_its_delete_still_drops_its_data() {
    let env = Env::new("bounds-admission").await;
    let pg = Postgres::start_new();
    server(&env, "pg", &pg, json!({"from": "All"})).await;
    let tenant = format!("{}-t", env.ns);
    ensure_namespace(&env.client, &tenant).await;
    let sdbs: Api<ServiceDatabase> = Api::namespaced(env.client.clone(), &tenant);
    apply(&env.client, &tenant, shared("ledger", "pg", &env.ns))
        .await
        .expect("apply");
    wait_phase(&sdbs, "ledger", Phase::Ready).await;
    let secret = get_when(
        &Api::<Secret>::namespaced(env.client.clone(), &tenant),
        "ledger-db",
    )
    .await;
    let (user, password, database) = (
        secret_value(&secret, "username"),
        secret_value(&secret, "password"),
        secret_value(&secret, "database"),
    );
    let session = connect(pg.port, &user, &password, &database)
        .await
        .expect("the service logs in");
    session
        .batch_execute("CREATE TABLE entries (v int); INSERT INTO entries VALUES (7)")
        .await
        .expect("writes");
    let admin = connect(pg.port, &pg.admin_user, &pg.admin_password, "postgres")
        .await
        .expect("admin");

    // The server stops admitting the tenant's namespace.
    admit(&env, "pg", "Same").await;
    let refused = not_admitted(&sdbs, "ledger").await;
    assert!(
        connect(pg.port, &user, &password, &database).await.is_err(),
        "its login no longer works ({refused})"
    );
    assert!(
        session.query_one("SELECT 1", &[]).await.is_err(),
        "its open session was ended"
    );
    assert!(refused.contains(&format!("{}/pg", env.ns)), "{refused}");
    assert!(
        refused.contains(&user) && refused.contains("disabled"),
        "{refused}"
    );
    let kept: i64 = connect(pg.port, &pg.admin_user, &pg.admin_password, &database)
        .await
        .expect("admin in its database")
        .query_one("SELECT count(*) FROM entries", &[])
        .await
        .expect("its data stays")
        .get(0);
    assert_eq!(kept, 1);

    // Admitted again: the same login works again, with its data.
    admit(&env, "pg", "All").await;
    wait_phase(&sdbs, "ledger", Phase::Ready).await;
    let back = wait_for(
        "the login to work again",
        Duration::from_secs(60),
        || async { connect(pg.port, &user, &password, &database).await.ok() },
    )
    .await;
    let v: i32 = back
        .query_one("SELECT v FROM entries", &[])
        .await
        .expect("its data")
        .get(0);
    assert_eq!(v, 7);

    // Not admitted, then deleted with deletionPolicy Delete: what it owns
    // on the server is dropped all the same.
    admit(&env, "pg", "Same").await;
    wait_for(
        "the logins disabled again",
        Duration::from_secs(120),
        || async {
            let sdb = sdbs.get("ledger").await.ok()?;
            let (_, reason, message) = condition(&sdb, "SpecValid")?;
            (reason == "NamespaceNotAllowed" && message.contains("disabled")).then_some(())
        },
    )
    .await;
    sdbs.delete("ledger", &DeleteParams::default())
        .await
        .expect("delete");
    wait_for("ledger to be gone", Duration::from_secs(60), || async {
        sdbs.get_opt("ledger").await.ok()?.is_none().then_some(())
    })
    .await;
    let roles: i64 = admin
        .query_one("SELECT count(*) FROM pg_roles WHERE rolname = $1", &[&user])
        .await
        .expect("roles")
        .get(0);
    let databases: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_database WHERE datname = $1",
            &[&database],
        )
        .await
        .expect("databases")
        .get(0);
    assert_eq!(
        (roles, databases),
        (0, 0),
        "its login and database are dropped"
    );
}

#[tokio::test]
async fn a_redis_namespace_no_longer_admitted_loses_its_acl_user_and_keeps_its_keys() {
    use redis::AsyncCommands;

    use crate::support::servers::Redis;
    use crate::support::shared_servers::redis_as;
    use crate::support::shared_servers::server_of;

    let env = Env::new("bounds-admission-redis").await;
    let cache = Redis::start_new();
    server_of(
        &env,
        "cache",
        "Redis",
        cache.port,
        &cache.admin_user,
        &cache.admin_password,
        json!({"from": "All"}),
    )
    .await;
    let tenant = format!("{}-t", env.ns);
    ensure_namespace(&env.client, &tenant).await;
    let sdbs: Api<ServiceDatabase> = Api::namespaced(env.client.clone(), &tenant);
    let mut sdb = shared("sessions", "cache", &env.ns);
    sdb["spec"]["engine"] = json!("Redis");
    apply(&env.client, &tenant, sdb).await.expect("apply");
    wait_phase(&sdbs, "sessions", Phase::Ready).await;
    let secret = get_when(
        &Api::<Secret>::namespaced(env.client.clone(), &tenant),
        "sessions-db",
    )
    .await;
    let (user, password, prefix) = (
        secret_value(&secret, "username"),
        secret_value(&secret, "password"),
        secret_value(&secret, "keyPrefix"),
    );
    let mut open = redis_as(cache.port, &user, &password)
        .await
        .expect("the service logs in");
    let key = format!("{prefix}token");
    open.set::<_, _, ()>(&key, "v1").await.expect("writes");

    admit(&env, "cache", "Same").await;
    let refused = not_admitted(&sdbs, "sessions").await;
    assert!(
        redis_as(cache.port, &user, &password).await.is_err(),
        "its ACL user no longer logs in ({refused})"
    );
    assert!(
        open.get::<_, Option<String>>(&key).await.is_err(),
        "its open connection was closed"
    );
    assert!(refused.contains("disabled"), "{refused}");
    let mut admin = redis_as(cache.port, &cache.admin_user, &cache.admin_password)
        .await
        .expect("admin");
    let kept: Option<String> = admin.get(&key).await.expect("admin reads");
    assert_eq!(kept.as_deref(), Some("v1"), "its keys stay");

    // Deleted while not admitted (deletionPolicy Delete): its user and keys go.
    sdbs.delete("sessions", &DeleteParams::default())
        .await
        .expect("delete");
    wait_for("sessions to be gone", Duration::from_secs(60), || async {
        sdbs.get_opt("sessions").await.ok()?.is_none().then_some(())
    })
    .await;
    let users: Vec<String> = redis::cmd("ACL")
        .arg("USERS")
        .query_async(&mut admin)
        .await
        .expect("ACL USERS");
    assert!(!users.contains(&user), "{users:?}");
    let gone: Option<String> = admin.get(&key).await.expect("admin reads");
    assert_eq!(gone, None, "its keys are deleted");
}

/// Server-side applies `allowedNamespaces.from` of the DatabaseServer
/// `server` in the test's namespace.
async fn admit(env: &Env, server: &str, from: &str) {
    let body = json!({"apiVersion": "servicedb.dev/v1alpha1", "kind": "DatabaseServer",
        "metadata": {"name": server}, "spec": {"allowedNamespaces": {"from": from}}});
    env.api::<DatabaseServer>()
        .patch(
            server,
            &PatchParams::apply("servicedb-e2e-admission").force(),
            &Patch::Apply(&body),
        )
        .await
        .expect("allowedNamespaces");
}

/// Waits until the ServiceDatabase `name` says its namespace is no longer
/// admitted, and returns what it says.
async fn not_admitted(sdbs: &Api<ServiceDatabase>, name: &str) -> String {
    wait_for(
        "the status to say the namespace is no longer admitted",
        Duration::from_secs(120),
        || async {
            let sdb = sdbs.get(name).await.ok()?;
            let (status, reason, message) = condition(&sdb, "SpecValid")?;
            (status == "False" && reason == "NamespaceNotAllowed").then_some(message)
        },
    )
    .await
}
