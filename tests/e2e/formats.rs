//! `spec.credentials.format` on the real API server with a real shared
//! PostgreSQL and Redis: clients connect with nothing but the Secret's keys
//! (psql with the servicebinding.io entries and the `pgpass` key as its
//! PGPASSFILE, psql on the Spring JDBC URL, redis-cli on the Spring Redis
//! URL), the keys follow a rotation to the new login, and the schema refuses
//! the formats that do not fit.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde::Deserialize;
use serde_json::json;
use servicedb::api::{Phase, ServiceDatabase};
use servicedb::model::rotation::ROTATE_ANNOTATION;

use crate::support::harness::{Env, wait_for};
use crate::support::objects::get_when;
use crate::support::objects::wait_phase;
use crate::support::servers::{Postgres, Redis};
use crate::support::shared_servers::server;
use crate::support::shared_servers::server_of;

/// Every key of a Secret, decoded.
fn decoded(secret: &Secret) -> BTreeMap<String, String> {
    secret
        .data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), String::from_utf8_lossy(&v.0).into_owned()))
        .collect()
}

/// Runs a client with no connection settings of its own (no PG*
/// variables, an empty home without ~/.pgpass): only `args` and `env`.
fn client(program: &str, args: &[&str], env: &[(&str, &str)]) -> Result<String, String> {
    let home = tempfile::tempdir().expect("tempdir");
    let mut command = Command::new(program);
    for (key, _) in std::env::vars() {
        if key.starts_with("PG") || key.starts_with("REDIS") {
            command.env_remove(key);
        }
    }
    let out = command
        .args(args)
        .env("HOME", home.path())
        .envs(env.iter().copied())
        .output()
        .unwrap_or_else(|e| panic!("running {program}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    // redis-cli reports a refused command on stdout with exit status 0.
    if out.status.success() && !stdout.starts_with("ERR") && !stdout.starts_with("NOPERM") {
        Ok(stdout)
    } else {
        Err(format!("{program} {}: {stdout} {stderr}", out.status))
    }
}

/// `select current_user` through psql, with the password from `pgpass`
/// (written as a private file, as libpq requires) and every other setting
/// from the servicebinding.io entries.
fn psql_with_pgpass_and_binding(keys: &BTreeMap<String, String>) -> Result<String, String> {
    let dir = tempfile::tempdir().expect("tempdir");
    let pgpass: PathBuf = dir.path().join("pgpass");
    std::fs::write(&pgpass, &keys["pgpass"]).expect("writing pgpass");
    std::fs::set_permissions(&pgpass, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    client(
        "psql",
        &[
            "-X",
            "-w",
            "-At",
            "-h",
            &keys["host"],
            "-p",
            &keys["port"],
            "-U",
            &keys["username"],
            "-d",
            &keys["database"],
            "-c",
            "select current_user",
        ],
        &[("PGPASSFILE", pgpass.to_str().expect("utf-8 path"))],
    )
}

/// `select current_user` through psql on the Spring keys: the JDBC URL
/// without its `jdbc:` prefix is a libpq URI.
fn psql_with_spring(keys: &BTreeMap<String, String>) -> Result<String, String> {
    let url = keys["SPRING_DATASOURCE_URL"]
        .strip_prefix("jdbc:")
        .expect("a JDBC URL")
        .to_string();
    client(
        "psql",
        &[
            "-X",
            "-w",
            "-At",
            &url,
            "-U",
            &keys["SPRING_DATASOURCE_USERNAME"],
            "-c",
            "select current_user",
        ],
        &[("PGPASSWORD", &keys["SPRING_DATASOURCE_PASSWORD"])],
    )
}

/// The README's example, placed on the test's server instead of the
/// README's `platform-db/shared-pg`.
async fn apply_ledger_example(env: &Env) {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/formats/ledger-spring.yaml");
    let text = std::fs::read_to_string(&path).expect("the example");
    let pp = PatchParams::apply("servicedb-e2e").force();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let mut doc: serde_json::Value =
            serde_json::to_value(serde_yaml::Value::deserialize(doc).expect("yaml")).expect("json");
        let name = doc["metadata"]["name"].as_str().expect("name").to_string();
        match doc["kind"].as_str() {
            Some("ServiceDatabase") => {
                doc["spec"]["serverRef"] = json!({"name": "shared-pg", "namespace": env.ns});
                env.api::<ServiceDatabase>()
                    .patch(&name, &pp, &Patch::Apply(&doc))
                    .await
                    .expect("applying the example's ServiceDatabase");
            }
            Some("Deployment") => {
                env.api::<Deployment>()
                    .patch(&name, &pp, &Patch::Apply(&doc))
                    .await
                    .expect("applying the example's Deployment");
            }
            other => panic!("unexpected kind {other:?} in {}", path.display()),
        }
    }
}

#[tokio::test]
async fn clients_connect_with_only_the_keys_of_each_format() {
    let env = Env::new("formats").await;
    let pg = Postgres::start_new();
    let cache = Redis::start_new();
    server(&env, "shared-pg", &pg, json!({"from": "Same"})).await;
    server_of(
        &env,
        "shared-redis",
        "Redis",
        cache.port,
        &cache.admin_user,
        &cache.admin_password,
        json!({"from": "Same"}),
    )
    .await;
    apply_ledger_example(&env).await;
    let cart = json!({"apiVersion": "servicedb.dev/v1alpha1", "kind": "ServiceDatabase",
        "metadata": {"name": "cart"},
        "spec": {"engine": "Redis", "isolation": "Database",
                 "serverRef": {"name": "shared-redis", "namespace": env.ns},
                 "owner": {"podSelector": {"matchLabels": {"app": "cart"}}},
                 "credentials": {"format": ["Default", "Spring", "ServiceBinding"]}}});
    let sdbs: Api<ServiceDatabase> = env.api();
    sdbs.patch(
        "cart",
        &PatchParams::apply("servicedb-e2e"),
        &Patch::Apply(&cart),
    )
    .await
    .expect("cart");
    wait_phase(&sdbs, "ledger", Phase::Ready).await;
    wait_phase(&sdbs, "cart", Phase::Ready).await;
    let secrets: Api<Secret> = env.api();

    // PostgreSQL: the servicebinding.io entries and the password file.
    let ledger = decoded(&get_when(&secrets, "ledger-db").await);
    assert_eq!(ledger.get("type").map(String::as_str), Some("postgresql"));
    assert_eq!(
        ledger.get("provider").map(String::as_str),
        Some("servicedb")
    );
    let user = ledger["username"].clone();
    assert_eq!(
        psql_with_pgpass_and_binding(&ledger).as_deref(),
        Ok(user.as_str()),
        "psql with PGPASSFILE=<pgpass key> and the binding's host, port, username, database"
    );
    // The Spring keys, and the JDBC URL they carry.
    assert_eq!(ledger["SPRING_DATASOURCE_URL"], ledger["jdbc-url"]);
    assert_eq!(psql_with_spring(&ledger).as_deref(), Ok(user.as_str()));

    // Redis: the Spring URL alone, under the service's key prefix.
    let cart = decoded(&get_when(&secrets, "cart-db").await);
    assert_eq!(cart.get("type").map(String::as_str), Some("redis"));
    let url = cart["SPRING_DATA_REDIS_URL"].clone();
    let key = format!("{}formats", cart["keyPrefix"]);
    client(
        "redis-cli",
        &["--no-auth-warning", "-u", &url, "SET", &key, "spring"],
        &[],
    )
    .expect("redis-cli -u SPRING_DATA_REDIS_URL SET");
    assert_eq!(
        client(
            "redis-cli",
            &["--no-auth-warning", "-u", &url, "GET", &key],
            &[]
        )
        .as_deref(),
        Ok("spring")
    );
    // The servicebinding.io entries name the same login and server.
    assert_eq!(
        client(
            "redis-cli",
            &[
                "--no-auth-warning",
                "-h",
                &cart["host"],
                "-p",
                &cart["port"],
                "--user",
                &cart["username"],
                "--pass",
                &cart["password"],
                "GET",
                &key
            ],
            &[]
        )
        .as_deref(),
        Ok("spring")
    );
    // The same key read by the admin: it really is on the server.
    let admin_url = format!(
        "redis://{}:{}@127.0.0.1:{}/0",
        cache.admin_user, cache.admin_password, cache.port
    );
    assert_eq!(
        client(
            "redis-cli",
            &["--no-auth-warning", "-u", &admin_url, "GET", &key],
            &[]
        )
        .as_deref(),
        Ok("spring")
    );

    // A rotation moves every format to the new login at once; only
    // previous-* keeps the replaced one.
    sdbs.patch(
        "ledger",
        &PatchParams::default(),
        &Patch::Merge(&json!({"metadata": {"annotations": {ROTATE_ANNOTATION: "1"}}})),
    )
    .await
    .expect("annotate");
    let rotated = wait_for(
        "ledger-db to switch to the other login",
        Duration::from_secs(60),
        || async {
            let s = decoded(&secrets.get("ledger-db").await.ok()?);
            (s["username"] != user).then_some(s)
        },
    )
    .await;
    let new_user = rotated["username"].clone();
    assert_eq!(rotated.get("previous-username"), Some(&user));
    assert_eq!(rotated["SPRING_DATASOURCE_USERNAME"], new_user);
    assert_eq!(rotated["SPRING_DATASOURCE_PASSWORD"], rotated["password"]);
    assert!(
        rotated["pgpass"].contains(&format!(":{new_user}:")),
        "the password file names the current login"
    );
    assert_eq!(
        psql_with_pgpass_and_binding(&rotated).as_deref(),
        Ok(user.as_str()),
        "the twin's sessions run as the owner role"
    );
    assert_eq!(psql_with_spring(&rotated).as_deref(), Ok(user.as_str()));
}

#[tokio::test]
async fn the_schema_defaults_the_format_and_refuses_what_does_not_fit() {
    let env = Env::new("formats-schema").await;
    let sdbs: Api<ServiceDatabase> = env.api();
    let body = |name: &str, engine: &str, credentials: serde_json::Value| {
        json!({"apiVersion": "servicedb.dev/v1alpha1", "kind": "ServiceDatabase",
            "metadata": {"name": name},
            "spec": {"engine": engine, "owner": {"podSelector": {"matchLabels": {"app": name}}},
                     "credentials": credentials}})
    };
    let pp = PatchParams::apply("servicedb-e2e");
    // Unset: the API server stores [Default], so a GitOps tool that applied
    // the manifest without the field sees no difference it did not make.
    let stored = sdbs
        .patch(
            "plain",
            &pp,
            &Patch::Apply(&body(
                "plain",
                "Postgres",
                json!({"secretName": "plain-db"}),
            )),
        )
        .await
        .expect("no format");
    let stored = serde_json::to_value(&stored.spec).expect("json");
    assert_eq!(stored["credentials"]["format"], json!(["Default"]));

    for (name, engine, format, message) in [
        (
            "cache",
            "Redis",
            json!(["Default", "Pgpass"]),
            "format Pgpass is only available for engine Postgres",
        ),
        (
            "nodefault",
            "Postgres",
            json!(["Spring"]),
            "must include Default",
        ),
        (
            "twice",
            "Postgres",
            json!(["Default", "Default"]),
            "duplicate entries",
        ),
        (
            "unknown",
            "Postgres",
            json!(["Default", "Jdbc"]),
            "Unsupported value",
        ),
    ] {
        let err = sdbs
            .patch(
                name,
                &pp,
                &Patch::Apply(&body(name, engine, json!({"format": format}))),
            )
            .await
            .expect_err(name);
        let kube::Error::Api(status) = err else {
            panic!("{name}: not refused by the API server: {err}")
        };
        assert!(
            status.message.contains(message) && status.message.contains("credentials.format"),
            "{name}: {}",
            status.message
        );
    }
}
