//! `kubectl servicedb`, the plugin, as a user runs it: the real binary
//! linked as `kubectl-servicedb` (and found by the real kubectl on PATH),
//! against the real API server with the operator running and a real
//! PostgreSQL behind a shared DatabaseServer. Backup and restore Jobs are
//! played as in backup.rs; no kubelet runs, so `connect` is checked up to
//! its pod (spec, admission under the restricted profile, clean-up).

use crate::support::cli::{kubectl, kubectl_plugin, plugin_dir, run, text};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams};
use serde_json::json;
use servicedb::api::{DatabaseBackup, Phase, ServiceDatabase};

use crate::support::backups::manifest;
use crate::support::backups::succeed;
use crate::support::harness::{Env, wait_for};
use crate::support::objects::get_when;
use crate::support::objects::secret_value;
use crate::support::objects::set_ready_replicas;
use crate::support::objects::wait_phase;
use crate::support::servers::Postgres;
use crate::support::shared_servers::connect;
use crate::support::shared_servers::server;

const COMMANDS: [&str; 7] = [
    "list",
    "status",
    "backup",
    "rotate",
    "restore",
    "connect",
    "inventory",
];

fn plugin(dir: &Path) -> Command {
    Command::new(dir.join("kubectl-servicedb"))
}

/// Starts `kubectl servicedb ARGS -n NS`, its output captured.
fn start(dir: &Path, ns: &str, args: &[&str]) -> std::process::Child {
    kubectl_plugin(dir)
        .args(args)
        .args(["-n", ns])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting kubectl servicedb")
}

fn ok(out: Output, what: &str) -> String {
    assert!(out.status.success(), "{what}: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// A kubectl-style table as rows of header → cell.
fn table(text: &str) -> Vec<BTreeMap<String, String>> {
    crate::support::cli::table(text)
        .into_iter()
        .map(|row| row.into_iter().collect())
        .collect()
}

fn is_recent_age(age: &str) -> bool {
    age.strip_suffix('s')
        .is_some_and(|n| n.parse::<u64>().is_ok_and(|n| n < 120))
}

/// `--help` of the plugin and of each command: every command listed with
/// its one-line description, and every flag described.
#[test]
fn help_lists_every_command_and_describes_every_flag() {
    let dir = plugin_dir();
    let top = ok(
        plugin(dir.path()).arg("--help").output().expect("help"),
        "--help",
    );
    assert!(top.contains("Usage: kubectl servicedb"), "{top}");
    for cmd in COMMANDS {
        let line = top
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{cmd} ")))
            .unwrap_or_else(|| panic!("{cmd} is not listed: {top}"));
        let description = line.trim_start()[cmd.len()..].trim();
        assert!(description.len() > 20, "{cmd} has no description: {line}");
    }
    // The same plugin as a servicedb subcommand.
    let sub = ok(
        Command::new(env!("CARGO_BIN_EXE_servicedb"))
            .args(["kubectl", "--help"])
            .output()
            .expect("servicedb kubectl --help"),
        "servicedb kubectl --help",
    );
    for cmd in COMMANDS {
        assert!(sub.contains(&format!("  {cmd} ")), "{sub}");
    }

    let flags: [(&str, &[&str]); 7] = [
        ("list", &["-A, --all-namespaces"]),
        ("status", &["<NAME>"]),
        (
            "backup",
            &["<NAME>", "--backup-name", "--wait", "--timeout"],
        ),
        ("rotate", &["<NAME>", "--wait", "--timeout", "gracePeriod"]),
        (
            "restore",
            &[
                "<NAME>",
                "--from",
                "--owner",
                "--dry-run",
                "--wait",
                "new database only",
            ],
        ),
        (
            "connect",
            &[
                "<NAME>",
                "--image",
                "--pod-timeout",
                "--dry-run",
                "restricted",
            ],
        ),
        (
            "inventory",
            &["-A, --all-namespaces", "-o, --output", "csv", "json"],
        ),
    ];
    for (cmd, wanted) in flags {
        let help = ok(
            plugin(dir.path())
                .args([cmd, "--help"])
                .output()
                .expect("help"),
            cmd,
        );
        assert!(
            help.contains(&format!("Usage: kubectl servicedb {cmd}")),
            "{help}"
        );
        for w in wanted
            .iter()
            .chain(&["--kubeconfig", "--context", "-n, --namespace"])
        {
            assert!(
                help.contains(w),
                "{cmd} --help does not mention {w}: {help}"
            );
        }
        // Every option carries a description, on its line or the next
        // (clap's long help), "- value:" lines of a value list aside.
        let lines: Vec<&str> = help.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let t = line.trim_start();
            let is_flag = t.starts_with("--")
                || (t.starts_with('-')
                    && t.chars().nth(1).is_some_and(|c| c.is_ascii_alphabetic()));
            if !is_flag {
                continue;
            }
            let same_line = t
                .split_once("  ")
                .is_some_and(|(_, d)| !d.trim().is_empty());
            let next_line = lines
                .get(i + 1)
                .map(|n| n.trim())
                .is_some_and(|n| !n.is_empty() && !n.starts_with('-'));
            assert!(
                same_line || next_line,
                "{cmd}: flag without a description: {line}"
            );
        }
    }
}

/// The Secret `orders-db`'s current username and password.
async fn login(env: &Env) -> (String, String) {
    let secret = env.api::<Secret>().get("orders-db").await.expect("secret");
    (
        secret_value(&secret, "username"),
        secret_value(&secret, "password"),
    )
}

#[tokio::test]
async fn the_plugin_lists_describes_inventories_rotates_backs_up_and_restores() {
    let env = Env::new("cli").await;
    let pg = Postgres::start_new();
    server(&env, "shared-pg", &pg, json!({"from": "Same"})).await;
    let orders = json!({"apiVersion": "servicedb.dev/v1alpha1", "kind": "ServiceDatabase",
        "metadata": {"name": "orders"},
        "spec": {"engine": "Postgres", "isolation": "Database",
                 "serverRef": {"name": "shared-pg", "namespace": env.ns},
                 "owner": {"podSelector": {"matchLabels": {"app": "orders"}}},
                 "credentials": {"gracePeriod": "1h"},
                 "backup": {"schedule": "0 2 * * *",
                    "destination": {"s3": {"bucket": "backups", "endpoint": "http://minio.storage:9000",
                        "region": "eu-1", "credentialsSecret": "s3-creds"}}}}});
    let sdbs: Api<ServiceDatabase> = env.api();
    sdbs.patch(
        "orders",
        &PatchParams::apply("servicedb-e2e"),
        &Patch::Apply(&orders),
    )
    .await
    .expect("orders");
    wait_phase(&sdbs, "orders", Phase::Ready).await;
    let dir = plugin_dir();
    let d = dir.path();
    let (user, password) = login(&env).await;
    let mut outputs = String::new();

    // list, through the real kubectl finding the plugin on PATH (README).
    let listed = ok(run(d, &env.ns, &["list"]), "kubectl servicedb list");
    outputs.push_str(&listed);
    let rows = table(&listed);
    assert_eq!(rows.len(), 1, "{listed}");
    let row = &rows[0];
    assert_eq!(
        row.keys()
            .map(String::as_str)
            .collect::<std::collections::BTreeSet<_>>(),
        [
            "AGE",
            "CREDENTIALS",
            "ENGINE",
            "ISOLATION",
            "LAST BACKUP",
            "LAST VERIFIED",
            "NAME",
            "OWNER",
            "PHASE"
        ]
        .into_iter()
        .collect()
    );
    assert_eq!(row["NAME"], "orders");
    assert_eq!(row["OWNER"], "app=orders");
    assert_eq!(row["ENGINE"], "Postgres");
    assert_eq!(row["ISOLATION"], "Database");
    assert_eq!(row["PHASE"], "Ready");
    assert_eq!(row["LAST BACKUP"], "<none>");
    assert_eq!(row["LAST VERIFIED"], "<none>");
    assert!(is_recent_age(&row["CREDENTIALS"]), "{row:?}");

    // -A adds the namespace; the default namespace comes from the kubeconfig
    // context (no -n), which is not this test's.
    let all = ok(
        kubectl_plugin(d)
            .args(["list", "-A"])
            .output()
            .expect("list -A"),
        "list -A",
    );
    outputs.push_str(&all);
    assert!(
        table(&all)
            .iter()
            .any(|r| r["NAMESPACE"] == env.ns && r["NAME"] == "orders"),
        "{all}"
    );

    // kubectl's cluster flags: --kubeconfig and --context instead of
    // KUBECONFIG, the context's namespace when -n is not given, and a
    // context that does not exist named in the error.
    let kubeconfig = kube::config::Kubeconfig::read().expect("the kubeconfig");
    let context = kubeconfig
        .current_context
        .clone()
        .expect("a current context");
    let default_ns = kubeconfig
        .contexts
        .iter()
        .find(|c| c.name == context)
        .and_then(|c| c.context.as_ref()?.namespace.clone())
        .unwrap_or_else(|| "default".into());
    if let Ok(path) = std::env::var("KUBECONFIG").map(std::path::PathBuf::from)
        && path.is_file()
    {
        let out = plugin(d)
            .env_remove("KUBECONFIG")
            .env("HOME", d)
            .arg("--kubeconfig")
            .arg(&path)
            .args(["--context", &context, "list", "-n", &env.ns])
            .output()
            .expect("list --kubeconfig --context");
        assert_eq!(
            table(&ok(out, "list --kubeconfig --context"))[0]["NAME"],
            "orders"
        );
    }
    let out = plugin(d)
        .args(["--context", "no-such-context", "list"])
        .output()
        .expect("list");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("no-such-context"), "{}", text(&out));
    if default_ns != env.ns {
        let out = plugin(d).arg("list").output().expect("list");
        assert!(
            text(&out).contains(&format!("in {default_ns} namespace")),
            "{}",
            text(&out)
        );
    }

    // status: where it runs, the credentials, conditions and Events.
    let status = ok(run(d, &env.ns, &["status", "orders"]), "status");
    outputs.push_str(&status);
    assert!(
        status.contains(&format!(
            "Server:        DatabaseServer {}/shared-pg",
            env.ns
        )),
        "{status}"
    );
    assert!(status.contains("Phase:         Ready"), "{status}");
    assert!(
        status.contains("Credentials:   Secret orders-db, issued"),
        "{status}"
    );
    let conditions = status
        .split("Conditions:\n")
        .nth(1)
        .and_then(|s| s.split("Backups:\n").next())
        .expect("a Conditions section");
    let ready = table(
        &conditions
            .lines()
            .map(str::trim_start)
            .collect::<Vec<_>>()
            .join("\n"),
    );
    assert!(
        ready
            .iter()
            .any(|r| r["TYPE"] == "Ready" && r["STATUS"] == "True"),
        "{status}"
    );
    assert!(status.contains("Events:\n"), "{status}");

    // inventory as JSON and CSV: names from the Secret, never its password.
    let inv = ok(
        run(d, &env.ns, &["inventory", "-o", "json"]),
        "inventory json",
    );
    outputs.push_str(&inv);
    let rows: serde_json::Value = serde_json::from_str(&inv).expect("inventory JSON");
    let r = &rows[0];
    assert_eq!(rows.as_array().map(Vec::len), Some(1), "{inv}");
    assert_eq!(r["namespace"], env.ns.as_str());
    assert_eq!(r["name"], "orders");
    assert_eq!(r["owner"], "app=orders");
    assert_eq!(r["engine"], "Postgres");
    assert_eq!(r["isolation"], "Database");
    assert_eq!(r["server"], format!("{}/shared-pg", env.ns).as_str());
    assert_eq!(r["endpoint"], format!("127.0.0.1:{}", pg.port).as_str());
    assert_eq!(r["login"], user.as_str());
    let secret = env.api::<Secret>().get("orders-db").await.expect("secret");
    assert_eq!(r["database"], secret_value(&secret, "database").as_str());
    assert!(!r["database"].as_str().unwrap_or_default().is_empty());
    assert_eq!(r["secret"], "orders-db");
    assert_eq!(r["backupSchedule"], "0 2 * * *");
    assert_eq!(r["phase"], "Ready");
    let csv = ok(
        kubectl_plugin(d)
            .args(["inventory", "-A", "-o", "csv"])
            .output()
            .expect("inventory"),
        "inventory -A -o csv",
    );
    outputs.push_str(&csv);
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().expect("header").split(',').collect();
    let mine: Vec<&str> = lines
        .filter(|l| l.starts_with(&format!("{},", env.ns)))
        .collect();
    assert_eq!(mine.len(), 1, "{csv}");
    let values: Vec<&str> = mine[0].split(',').collect();
    assert_eq!(header.len(), values.len(), "{csv}");
    let csv_row: BTreeMap<&str, &str> = header.into_iter().zip(values).collect();
    for (k, v) in r.as_object().expect("object") {
        assert_eq!(csv_row.get(k.as_str()).copied(), v.as_str(), "{k} in {csv}");
    }

    // rotate: the Secret moves to a new login and password; the replaced
    // login still works during the grace period.
    let rotated = ok(run(d, &env.ns, &["rotate", "orders"]), "rotate");
    outputs.push_str(&rotated);
    assert!(rotated.contains("Credentials rotated at"), "{rotated}");
    assert!(
        rotated.contains("replaced login keeps working for 1h"),
        "{rotated}"
    );
    let (new_user, new_password) = login(&env).await;
    assert!(new_password != password, "the password changed");
    let database = secret_value(&secret, "database");
    connect(pg.port, &new_user, &new_password, &database)
        .await
        .expect("the new login works");
    connect(pg.port, &user, &password, &database)
        .await
        .expect("the replaced login works during the grace period");

    // backup: a Manual DatabaseBackup now; the plugin waits and reports
    // the outcome the operator records (the test plays the Job).
    let backup = start(d, &env.ns, &["backup", "orders"]);
    let backups: Api<DatabaseBackup> = env.api();
    let created = wait_for(
        "the plugin's DatabaseBackup",
        Duration::from_secs(30),
        || async {
            backups
                .list(&ListParams::default())
                .await
                .ok()?
                .items
                .into_iter()
                .next()
        },
    )
    .await;
    let now = created.metadata.name.clone().expect("name");
    assert!(now.starts_with("orders-2"), "NAME-YYYYMMDD-HHMMSS: {now}");
    assert_eq!(created.spec.service_database_ref.name, "orders");
    assert_eq!(
        created.spec.trigger,
        servicedb::api::database_backup::BackupTrigger::Manual
    );
    succeed(&env, &format!("{now}-backup"), manifest(&now, 5_767_168)).await;
    let out = backup.wait_with_output().expect("backup output");
    let reported = ok(out, "backup");
    outputs.push_str(&reported);
    assert!(reported.contains("Phase:      Completed"), "{reported}");
    assert!(reported.contains("Size:       5.5 MiB"), "{reported}");
    assert!(
        reported.contains(&format!("s3://backups/NS/orders/{now}")),
        "{reported}"
    );
    // A second one with the default name and --wait=false returns at once.
    let quick = ok(
        run(
            d,
            &env.ns,
            &[
                "backup",
                "orders",
                "--backup-name",
                "orders-quick",
                "--wait=false",
            ],
        ),
        "backup --wait=false",
    );
    assert!(
        quick.starts_with("databasebackup.servicedb.dev/orders-quick created"),
        "{quick}"
    );
    // A failed backup exits 1 with the agent's error.
    let failing = start(
        d,
        &env.ns,
        &[
            "backup",
            "orders",
            "--backup-name",
            "orders-bad",
            "--timeout",
            "90s",
        ],
    );
    get_when(
        &env.api::<k8s_openapi::api::batch::v1::Job>(),
        "orders-bad-backup",
    )
    .await;
    crate::support::backups::agent_pod(
        &env,
        "orders-bad-backup",
        1,
        r#"{"error":"pg_dump: connection refused"}"#,
    )
    .await;
    crate::support::backups::finish_job(&env, "orders-bad-backup", false).await;
    let out = failing.wait_with_output().expect("backup output");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("pg_dump: connection refused"),
        "{}",
        text(&out)
    );

    // status lists the backups.
    let status = ok(run(d, &env.ns, &["status", "orders"]), "status");
    assert!(status.contains(&now), "{status}");

    // restore: a new database from the backup; into an existing one is refused.
    let refused = run(d, &env.ns, &["restore", "orders", "--from", &now]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        text(&refused).contains("restores into a new database only"),
        "{}",
        text(&refused)
    );
    let failed = run(
        d,
        &env.ns,
        &["restore", "orders-copy", "--from", "orders-bad"],
    );
    assert_eq!(failed.status.code(), Some(1));
    assert!(
        text(&failed).contains(
            "DatabaseBackup orders-bad is Failed; only a Completed backup can be restored"
        ),
        "{}",
        text(&failed)
    );
    let dry = ok(
        run(
            d,
            &env.ns,
            &[
                "restore",
                "orders-copy",
                "--from",
                &now,
                "--owner",
                "app=orders-copy",
                "--dry-run",
            ],
        ),
        "restore --dry-run",
    );
    let planned: ServiceDatabase = serde_yaml::from_str(&dry).expect("a ServiceDatabase");
    assert_eq!(
        serde_json::to_value(&planned.spec.owner).expect("owner")["podSelector"],
        json!({"matchLabels": {"app": "orders-copy"}})
    );
    assert!(
        sdbs.get_opt("orders-copy").await.expect("get").is_none(),
        "--dry-run creates nothing"
    );
    let restore = start(d, &env.ns, &["restore", "orders-copy", "--from", &now]);
    let copy = get_when(&sdbs, "orders-copy").await;
    assert_eq!(
        copy.spec
            .bootstrap
            .and_then(|b| b.from_backup)
            .map(|b| b.name)
            .as_deref(),
        Some(now.as_str())
    );
    assert_eq!(copy.spec.server_ref, orders_server(&env));
    succeed(&env, "orders-copy-db-restore", json!({})).await;
    let out = restore.wait_with_output().expect("restore output");
    let restored = ok(out, "restore");
    assert!(
        restored.contains(&format!("orders-copy restored from {now} and Ready")),
        "{restored}"
    );

    // Nothing the plugin printed holds a password.
    for p in [&password, &new_password] {
        assert!(!outputs.contains(p.as_str()), "a password was printed");
    }
}

fn orders_server(env: &Env) -> Option<servicedb::api::common::ObjectRef> {
    Some(servicedb::api::common::ObjectRef {
        name: "shared-pg".into(),
        namespace: Some(env.ns.clone()),
    })
}

#[tokio::test]
async fn connect_runs_a_restricted_pod_of_the_owner_with_the_login_from_the_secret() {
    let env = Env::new("cli-connect").await;
    // The namespace enforces the restricted profile: a pod that breaks it
    // is refused by the API server's admission.
    Api::<Namespace>::all(env.client.clone())
        .patch(
            &env.ns,
            &PatchParams::default(),
            &Patch::Merge(&json!({"metadata": {"labels": {"pod-security.kubernetes.io/enforce": "restricted"}}})),
        )
        .await
        .expect("labelling the namespace");
    let cart = json!({"apiVersion": "servicedb.dev/v1alpha1", "kind": "ServiceDatabase",
        "metadata": {"name": "cart"},
        "spec": {"engine": "Redis", "version": "8.0",
                 "owner": {"podSelector": {"matchLabels": {"app": "cart", "tier": "api"}}}}});
    let sdbs: Api<ServiceDatabase> = env.api();
    sdbs.patch(
        "cart",
        &PatchParams::apply("servicedb-e2e"),
        &Patch::Apply(&cart),
    )
    .await
    .expect("cart");
    get_when(&env.api::<StatefulSet>(), "cart-db").await;
    set_ready_replicas(&env.api(), "cart-db", 1).await;
    wait_phase(&sdbs, "cart", Phase::Ready).await;
    let dir = plugin_dir();

    let session = start(
        dir.path(),
        &env.ns,
        &["connect", "cart", "--pod-timeout", "8s"],
    );
    let pods: Api<Pod> = env.api();
    let pod = wait_for("the session pod", Duration::from_secs(10), || async {
        pods.list(&ListParams::default().labels("servicedb.dev/connect=cart"))
            .await
            .ok()?
            .items
            .into_iter()
            .next()
    })
    .await;
    let spec = pod.spec.clone().expect("spec");
    let c = &spec.containers[0];
    assert_eq!(c.image.as_deref(), Some("docker.io/library/redis:8.0"));
    assert_eq!(c.command.as_ref().map(|c| c[0].as_str()), Some("redis-cli"));
    assert_eq!((c.stdin, c.tty), (Some(true), Some(true)));
    let env_vars: BTreeMap<String, (String, String)> = c
        .env
        .iter()
        .flatten()
        .filter_map(|e| {
            let r = e.value_from.as_ref()?.secret_key_ref.as_ref()?;
            Some((e.name.clone(), (r.name.clone(), r.key.clone())))
        })
        .collect();
    let secret = |key: &str| ("cart-db".to_string(), key.to_string());
    assert_eq!(env_vars.get("REDISCLI_AUTH"), Some(&secret("password")));
    assert_eq!(env_vars.get("REDIS_USER"), Some(&secret("username")));
    assert_eq!(env_vars.get("REDIS_HOST"), Some(&secret("host")));
    assert!(
        c.env
            .iter()
            .flatten()
            .all(|e| e.value.is_none() || e.name == "HOME"),
        "only HOME has a literal value"
    );
    let sc = spec.security_context.expect("pod security context");
    assert_eq!(sc.run_as_non_root, Some(true));
    assert_eq!(spec.automount_service_account_token, Some(false));
    // The NetworkPolicy of the instance admits the pod, as one of the owner's.
    let np = get_when(&env.api::<NetworkPolicy>(), "cart-db").await;
    let labels = pod.metadata.labels.clone().unwrap_or_default();
    let admitted = np.spec.expect("np spec").ingress.expect("ingress")[0]
        .from
        .iter()
        .flatten()
        .filter(|peer| peer.namespace_selector.is_none())
        .filter_map(|peer| peer.pod_selector.as_ref()?.match_labels.clone())
        .any(|sel| sel.iter().all(|(k, v)| labels.get(k) == Some(v)));
    assert!(admitted, "{labels:?} not admitted by the NetworkPolicy");

    // No kubelet runs here: the pod never starts, the plugin says so and
    // deletes it.
    let out = session.wait_with_output().expect("connect output");
    let said = text(&out);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(said.contains("did not start within 8s"), "{said}");
    assert!(said.contains("deleted"), "{said}");
    let name = pod.metadata.name.clone().expect("name");
    wait_for("the session pod gone", Duration::from_secs(10), || async {
        pods.get_opt(&name).await.ok()?.is_none().then_some(())
    })
    .await;

    // Once the pod runs (the test plays the kubelet), the plugin attaches
    // with the real kubectl; with no kubelet to attach to, kubectl fails,
    // the plugin exits with its status and still deletes the pod.
    let session = kubectl_plugin(dir.path())
        .args(["connect", "cart", "--pod-timeout", "30s", "-n", &env.ns])
        .env("KUBECTL", kubectl())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("connect");
    let pod = wait_for(
        "the second session pod",
        Duration::from_secs(10),
        || async {
            pods.list(&ListParams::default().labels("servicedb.dev/connect=cart"))
                .await
                .ok()?
                .items
                .into_iter()
                .next()
        },
    )
    .await;
    let name = pod.metadata.name.clone().expect("name");
    pods.patch_status(
        &name,
        &PatchParams::default(),
        &Patch::Merge(
            &json!({"status": {"phase": "Running", "containerStatuses": [{
            "name": "client", "image": "docker.io/library/redis:8.0", "imageID": "", "ready": true,
            "restartCount": 0, "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}}}]}}),
        ),
    )
    .await
    .expect("the pod runs");
    let out = session.wait_with_output().expect("connect output");
    let said = text(&out);
    assert_ne!(out.status.code(), Some(0), "{said}");
    assert!(!said.contains("did not start"), "{said}");
    // kubectl attach's own error names the session pod.
    assert!(said.contains(&format!("pod {name} ")), "{said}");
    assert!(said.contains(&format!("pod/{name} deleted")), "{said}");
    wait_for(
        "the second session pod gone",
        Duration::from_secs(10),
        || async { pods.get_opt(&name).await.ok()?.is_none().then_some(()) },
    )
    .await;

    // --dry-run prints the pod and creates nothing.
    let dry = ok(
        run(dir.path(), &env.ns, &["connect", "cart", "--dry-run"]),
        "connect --dry-run",
    );
    assert!(dry.contains("secretKeyRef"), "{dry}");
    assert!(dry.contains("generateName: cart-connect-"), "{dry}");
    let left = pods
        .list(&ListParams::default().labels("servicedb.dev/connect=cart"))
        .await
        .expect("pods");
    assert!(left.items.is_empty(), "{:?}", left.items);
}

/// On a shared server reached over TLS, the session follows the server's
/// TLS settings: redis-cli with --tls and the CA the credentials Secret
/// carries, mounted from that Secret.
#[tokio::test]
async fn connect_follows_the_tls_settings_of_a_shared_server() {
    let env = Env::new("cli-tls").await;
    let redis = crate::support::servers::Redis::start_new_tls();
    let ca = redis.tls.as_ref().expect("tls").ca_pem.clone();
    let secrets: Api<Secret> = env.api();
    for (name, data) in [
        (
            "redis-admin",
            json!({"username": redis.admin_user, "password": redis.admin_password}),
        ),
        ("redis-ca", json!({"ca.crt": ca})),
    ] {
        let body = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "stringData": data});
        secrets
            .patch(
                name,
                &PatchParams::apply("servicedb-e2e"),
                &Patch::Apply(&body),
            )
            .await
            .expect("secret");
    }
    let server = json!({"apiVersion": "servicedb.dev/v1alpha1", "kind": "DatabaseServer", "metadata": {"name": "shared-redis"},
        "spec": {"engine": "Redis", "external": {"host": "127.0.0.1", "port": redis.tls_port.expect("the TLS port"),
                 "adminSecretRef": {"name": "redis-admin"},
                 "tls": {"mode": "VerifyFull", "caSecretRef": {"name": "redis-ca"}}}}});
    env.api::<servicedb::api::DatabaseServer>()
        .patch(
            "shared-redis",
            &PatchParams::apply("servicedb-e2e"),
            &Patch::Apply(&server),
        )
        .await
        .expect("server");
    let cart = json!({"apiVersion": "servicedb.dev/v1alpha1", "kind": "ServiceDatabase",
        "metadata": {"name": "cart"},
        "spec": {"engine": "Redis", "isolation": "Database",
                 "serverRef": {"name": "shared-redis", "namespace": env.ns},
                 "owner": {"podSelector": {"matchLabels": {"app": "cart"}}}}});
    let sdbs: Api<ServiceDatabase> = env.api();
    sdbs.patch(
        "cart",
        &PatchParams::apply("servicedb-e2e"),
        &Patch::Apply(&cart),
    )
    .await
    .expect("cart");
    wait_phase(&sdbs, "cart", Phase::Ready).await;
    let creds = secrets.get("cart-db").await.expect("cart-db");
    assert_eq!(
        secret_value(&creds, "ca.crt"),
        ca,
        "the Secret carries the CA"
    );

    let dir = plugin_dir();
    let dry = ok(
        run(dir.path(), &env.ns, &["connect", "cart", "--dry-run"]),
        "connect --dry-run",
    );
    let pod: Pod = serde_yaml::from_str(&dry).expect("a Pod");
    let spec = pod.spec.expect("spec");
    let command = spec.containers[0].command.clone().expect("command");
    assert!(
        command.ends_with(&[
            "--tls".into(),
            "--cacert".into(),
            "/etc/servicedb-tls/ca.crt".into()
        ]),
        "{command:?}"
    );
    let ca_volume = spec
        .volumes
        .iter()
        .flatten()
        .find_map(|v| v.secret.clone())
        .expect("the CA volume");
    assert_eq!(ca_volume.secret_name.as_deref(), Some("cart-db"));
    assert_eq!(ca_volume.items.expect("items")[0].key, "ca.crt");
}
