//! `isolation: Database` on shared `DatabaseServer`s (real PostgreSQL and
//! Redis started by the test): services of two namespaces get their own
//! database or key space and least-privilege login on one server, a namespace
//! the server does not admit is refused, and a server outage shows in the
//! status and heals by itself.

use crate::support::shared_servers::{connect, redis_as, server, server_of};
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams};
use serde_json::json;
use servicedb::api::{Phase, ServiceDatabase};

use crate::support::backups::condition;
use crate::support::harness::{Env, apply_manifest, ensure_namespace, wait_for};
use crate::support::objects::credentials;
use crate::support::objects::get_when;
use crate::support::objects::secret_value;
use crate::support::objects::wait_phase;
use crate::support::servers::{Postgres, Redis};

async fn place(
    client: &kube::Client,
    ns: &str,
    name: &str,
    server: &str,
    server_ns: &str,
    policy: &str,
) {
    place_of(client, ns, name, "Postgres", server, server_ns, policy).await
}

async fn place_of(
    client: &kube::Client,
    ns: &str,
    name: &str,
    engine: &str,
    server: &str,
    server_ns: &str,
    policy: &str,
) {
    let sdb = json!({"apiVersion": "servicedb.dev/v1alpha1", "kind": "ServiceDatabase", "metadata": {"name": name},
        "spec": {"engine": engine, "isolation": "Database", "serverRef": {"name": server, "namespace": server_ns},
                 "owner": {"podSelector": {"matchLabels": {"app": name}}}, "deletionPolicy": policy}});
    Api::<ServiceDatabase>::namespaced(client.clone(), ns)
        .patch(
            name,
            &PatchParams::apply("servicedb-e2e"),
            &Patch::Apply(&sdb),
        )
        .await
        .expect("service database");
}

#[tokio::test]
async fn services_of_two_namespaces_share_a_server_each_with_a_private_database() {
    let env = Env::new("shared").await;
    let mut pg = Postgres::start_new();
    server(&env, "shared-pg", &pg, json!({"from": "All"})).await;
    server(&env, "team-only", &pg, json!({"from": "Same"})).await;
    let other_ns = format!("{}-b", env.ns);
    ensure_namespace(&env.client, &other_ns).await;
    place(
        &env.client,
        &env.ns,
        "orders",
        "shared-pg",
        &env.ns,
        "Retain",
    )
    .await;
    place(
        &env.client,
        &other_ns,
        "orders",
        "shared-pg",
        &env.ns,
        "Delete",
    )
    .await;

    let here: Api<ServiceDatabase> = env.api();
    let there: Api<ServiceDatabase> = Api::namespaced(env.client.clone(), &other_ns);
    let ready_here = wait_phase(&here, "orders", Phase::Ready).await;
    wait_phase(&there, "orders", Phase::Ready).await;
    let status = ready_here.status.expect("status");
    assert_eq!(
        status.endpoint.map(|e| (e.host, e.port)),
        Some(("127.0.0.1".into(), i32::from(pg.port)))
    );

    // Each namespace has its own Secret, with its own login and database.
    let secret_here = get_when(&env.api::<Secret>(), "orders-db").await;
    let secret_there = get_when(
        &Api::<Secret>::namespaced(env.client.clone(), &other_ns),
        "orders-db",
    )
    .await;
    let (user_a, pw_a, db_a) = (
        secret_value(&secret_here, "username"),
        secret_value(&secret_here, "password"),
        secret_value(&secret_here, "database"),
    );
    let (user_b, pw_b, db_b) = (
        secret_value(&secret_there, "username"),
        secret_value(&secret_there, "password"),
        secret_value(&secret_there, "database"),
    );
    assert_ne!(
        db_a, db_b,
        "same service name, different namespaces, different databases"
    );
    assert_eq!(secret_value(&secret_here, "host"), "127.0.0.1");
    assert_eq!(secret_value(&secret_here, "port"), pg.port.to_string());

    // The service connects with its Secret, owns its data, and nothing more.
    let a = connect(pg.port, &user_a, &pw_a, &db_a)
        .await
        .expect("the service logs in with its Secret");
    a.batch_execute("CREATE TABLE orders (id int primary key); INSERT INTO orders VALUES (1)")
        .await
        .expect("creates its tables");
    let superuser: bool = a
        .query_one(
            "SELECT rolsuper FROM pg_roles WHERE rolname = current_user",
            &[],
        )
        .await
        .expect("query")
        .get(0);
    assert!(!superuser, "the service's login is not a superuser");
    let Err(refused) = connect(pg.port, &user_a, &pw_a, &db_b).await else {
        panic!("another service's database is open to it");
    };
    assert!(
        refused.to_string().contains("permission denied")
            || format!("{refused:?}").contains("permission denied"),
        "{refused:?}"
    );
    connect(pg.port, &user_b, &pw_b, &db_b)
        .await
        .expect("the other service logs in to its own");

    // A namespace the server does not admit is refused, naming the field.
    place(
        &env.client,
        &other_ns,
        "intruder",
        "team-only",
        &env.ns,
        "Delete",
    )
    .await;
    let refused = wait_phase(&there, "intruder", Phase::Failed).await;
    let cond = refused
        .status
        .expect("status")
        .conditions
        .into_iter()
        .find(|c| c.type_ == "SpecValid")
        .expect("SpecValid");
    assert_eq!(cond.reason, "NamespaceNotAllowed");
    assert!(
        cond.message.contains("spec.serverRef") && cond.message.contains("allowedNamespaces"),
        "{}",
        cond.message
    );

    // The server goes down: the status says so; it comes back: healed, no nudge.
    pg.stop();
    here.patch(
        "orders",
        &PatchParams::default(),
        &Patch::Merge(&json!({"metadata": {"annotations": {"e2e/poke": "1"}}})),
    )
    .await
    .expect("poke");
    let down = wait_phase(&here, "orders", Phase::Degraded).await;
    let cond = down
        .status
        .expect("status")
        .conditions
        .into_iter()
        .find(|c| c.type_ == "InstanceReady")
        .expect("InstanceReady");
    assert_eq!(cond.reason, "ServerUnavailable");
    pg.start();
    wait_for(
        "recovery after the server returns",
        Duration::from_secs(90),
        || async {
            let s = here.get("orders").await.ok()?;
            (s.status?.phase == Phase::Ready).then_some(())
        },
    )
    .await;

    // Delete drops the database and its login on the server; Retain keeps them.
    there
        .delete("orders", &DeleteParams::default())
        .await
        .expect("delete");
    wait_for(
        "the Delete database to be gone",
        Duration::from_secs(30),
        || async { there.get_opt("orders").await.ok()?.is_none().then_some(()) },
    )
    .await;
    let admin = connect(pg.port, &pg.admin_user, &pg.admin_password, "postgres")
        .await
        .expect("admin");
    let dbs: Vec<String> = admin
        .query("SELECT datname FROM pg_database", &[])
        .await
        .expect("list")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(!dbs.contains(&db_b), "Delete dropped {db_b}: {dbs:?}");
    assert!(
        dbs.contains(&db_a),
        "the other service's database is untouched"
    );
    here.delete("orders", &DeleteParams::default())
        .await
        .expect("delete");
    wait_for(
        "the Retain database's resource to be gone",
        Duration::from_secs(30),
        || async { here.get_opt("orders").await.ok()?.is_none().then_some(()) },
    )
    .await;
    let kept = connect(pg.port, &user_a, &pw_a, &db_a)
        .await
        .expect("Retain keeps the login");
    let n: i64 = kept
        .query_one("SELECT count(*) FROM orders", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(n, 1, "Retain keeps the data");

    // No generated or admin password in the operator's log.
    let logs = env.operator.logs();
    for secret in [&pw_a, &pw_b, &pg.admin_password] {
        assert!(
            !logs.contains(secret.as_str()),
            "a password appears in the operator's log"
        );
    }
}

/// `<ns>-x/orders` and `<ns>/x-orders` both give the login and database
/// `<ns>_x_orders`: the second must never get the first one's login, and
/// deleting it must not drop the first one's data.
#[tokio::test]
async fn a_service_whose_name_meets_another_on_the_server_gets_nothing_of_it() {
    let env = Env::new("claim").await;
    let pg = Postgres::start_new();
    server(&env, "pg", &pg, json!({"from": "All"})).await;
    let other_ns = format!("{}-x", env.ns);
    ensure_namespace(&env.client, &other_ns).await;
    let first: Api<ServiceDatabase> = Api::namespaced(env.client.clone(), &other_ns);
    let here: Api<ServiceDatabase> = env.api();

    place(&env.client, &other_ns, "orders", "pg", &env.ns, "Delete").await;
    wait_phase(&first, "orders", Phase::Ready).await;
    let secret = get_when(
        &Api::<Secret>::namespaced(env.client.clone(), &other_ns),
        "orders-db",
    )
    .await;
    let (user, password, database) = (
        secret_value(&secret, "username"),
        secret_value(&secret, "password"),
        secret_value(&secret, "database"),
    );
    connect(pg.port, &user, &password, &database)
        .await
        .expect("the holder logs in")
        .batch_execute("CREATE TABLE orders (id int); INSERT INTO orders VALUES (1)")
        .await
        .expect("writes");

    // The newcomer is refused, naming the holder; it gets no Secret, and
    // the holder's password is not changed.
    place(&env.client, &env.ns, "x-orders", "pg", &env.ns, "Delete").await;
    let refused = wait_phase(&here, "x-orders", Phase::Failed).await;
    let cond = refused
        .status
        .expect("status")
        .conditions
        .into_iter()
        .find(|c| c.type_ == "SpecValid")
        .expect("SpecValid");
    assert_eq!(cond.reason, "NameConflict", "{}", cond.message);
    assert!(
        cond.message.contains(&format!("{other_ns}/orders")) && cond.message.contains(&user),
        "{}",
        cond.message
    );
    assert!(get_opt_secret(&env, "x-orders-db").await.is_none());
    wait_for(
        "a Warning Event naming the conflict",
        Duration::from_secs(30),
        || async {
            let events = env
                .api::<k8s_openapi::api::core::v1::Event>()
                .list(&Default::default())
                .await
                .ok()?;
            events
                .items
                .into_iter()
                .any(|e| {
                    e.reason.as_deref() == Some("NameConflict")
                        && e.type_.as_deref() == Some("Warning")
                })
                .then_some(())
        },
    )
    .await;

    // Deleting the newcomer (deletionPolicy Delete) drops nothing of the holder.
    here.delete("x-orders", &DeleteParams::default())
        .await
        .expect("delete");
    wait_for(
        "the newcomer to be gone",
        Duration::from_secs(30),
        || async { here.get_opt("x-orders").await.ok()?.is_none().then_some(()) },
    )
    .await;
    let n: i64 = connect(pg.port, &user, &password, &database)
        .await
        .expect("the holder still logs in with its password")
        .query_one("SELECT count(*) FROM orders", &[])
        .await
        .expect("the holder's table is still there")
        .get(0);
    assert_eq!(n, 1);

    // Once the holder is gone, a waiting newcomer takes the name by itself,
    // with a fresh database and its own password.
    place(&env.client, &env.ns, "x-orders", "pg", &env.ns, "Delete").await;
    wait_phase(&here, "x-orders", Phase::Failed).await;
    first
        .delete("orders", &DeleteParams::default())
        .await
        .expect("delete the holder");
    wait_phase(&here, "x-orders", Phase::Ready).await;
    let secret = get_when(&env.api::<Secret>(), "x-orders-db").await;
    let (user_2, password_2) = (
        secret_value(&secret, "username"),
        secret_value(&secret, "password"),
    );
    assert_eq!(user_2, user, "the same name, now the newcomer's");
    assert_ne!(password_2, password);
    let fresh = connect(pg.port, &user_2, &password_2, &database)
        .await
        .expect("the newcomer logs in");
    let left: i64 = fresh
        .query_one(
            "SELECT count(*) FROM pg_tables WHERE tablename = 'orders'",
            &[],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(left, 0, "the holder's data went with the holder");
    assert!(
        connect(pg.port, &user, &password, &database).await.is_err(),
        "the holder's old password no longer works"
    );
}

/// GitOps re-applies a ServiceDatabase that was deleted with
/// `deletionPolicy: Retain`: the new one (another UID, the same namespace
/// and name) takes over the login, database and data left on the server,
/// with the password its retained Secret holds. What was left is never
/// another name's: `<ns>/x-orders` (the same login name) is still refused,
/// and its deletion drops nothing.
#[tokio::test]
async fn a_retained_database_passes_to_the_same_namespace_and_name_only() {
    let env = Env::new("retake").await;
    let pg = Postgres::start_new();
    server(&env, "pg", &pg, json!({"from": "All"})).await;
    let other_ns = format!("{}-x", env.ns);
    ensure_namespace(&env.client, &other_ns).await;
    let first: Api<ServiceDatabase> = Api::namespaced(env.client.clone(), &other_ns);
    let here: Api<ServiceDatabase> = env.api();
    let secrets = Api::<Secret>::namespaced(env.client.clone(), &other_ns);

    place(&env.client, &other_ns, "orders", "pg", &env.ns, "Retain").await;
    let before = wait_phase(&first, "orders", Phase::Ready).await;
    let (user, password, database) = credentials(&get_when(&secrets, "orders-db").await);
    connect(pg.port, &user, &password, &database)
        .await
        .expect("logs in")
        .batch_execute("CREATE TABLE orders (id int); INSERT INTO orders VALUES (1)")
        .await
        .expect("writes");
    first
        .delete("orders", &DeleteParams::default())
        .await
        .expect("delete");
    wait_for("orders to be gone", Duration::from_secs(30), || async {
        first.get_opt("orders").await.ok()?.is_none().then_some(())
    })
    .await;

    // Another ServiceDatabase of the same login name gets nothing of it.
    place(&env.client, &env.ns, "x-orders", "pg", &env.ns, "Delete").await;
    let refused = wait_phase(&here, "x-orders", Phase::Failed).await;
    let (_, reason, message) = condition(&refused, "SpecValid").expect("SpecValid");
    assert_eq!(reason, "NameConflict", "{message}");
    assert!(message.contains(&format!("{other_ns}/orders")), "{message}");
    here.delete("x-orders", &DeleteParams::default())
        .await
        .expect("delete");
    wait_for("x-orders to be gone", Duration::from_secs(30), || async {
        here.get_opt("x-orders").await.ok()?.is_none().then_some(())
    })
    .await;

    // Re-applied from Git: Ready on the data it left, with the same password.
    place(&env.client, &other_ns, "orders", "pg", &env.ns, "Retain").await;
    let after = wait_phase(&first, "orders", Phase::Ready).await;
    assert_ne!(after.metadata.uid, before.metadata.uid, "a new object");
    let secret = get_when(&secrets, "orders-db").await;
    assert_eq!(secret_value(&secret, "username"), user);
    assert_eq!(secret_value(&secret, "password"), password);
    let n: i64 = connect(pg.port, &user, &password, &database)
        .await
        .expect("the same login and password work")
        .query_one("SELECT count(*) FROM orders", &[])
        .await
        .expect("the data is there")
        .get(0);
    assert_eq!(n, 1);
    let admin = connect(pg.port, &pg.admin_user, &pg.admin_password, "postgres")
        .await
        .expect("admin");
    let uid = after.metadata.uid.expect("uid");
    for (what, query) in [
        (
            "role",
            "SELECT shobj_description(oid, 'pg_authid') FROM pg_roles WHERE rolname = $1",
        ),
        (
            "database",
            "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = $1",
        ),
    ] {
        let name = if what == "role" { &user } else { &database };
        let comment: Option<String> = admin
            .query_one(query, &[name])
            .await
            .expect("comment")
            .get(0);
        assert!(
            comment.as_deref().is_some_and(|c| c.contains(&uid)),
            "the {what} is marked for the new ServiceDatabase: {comment:?}"
        );
    }
}

#[tokio::test]
async fn redis_services_share_a_server_each_confined_to_its_key_prefix() {
    let env = Env::new("shared-redis").await;
    let cache = Redis::start_new();
    // Only namespaces labelled for it may use this server.
    let selector = json!({"from": "Selector", "selector": {"matchLabels": {"e2e.servicedb.dev/cache": "yes"}}});
    server_of(
        &env,
        "shared-redis",
        "Redis",
        cache.port,
        &cache.admin_user,
        &cache.admin_password,
        selector,
    )
    .await;
    let labelled = format!("{}-b", env.ns);
    let unlabelled = format!("{}-c", env.ns);
    ensure_namespace(&env.client, &labelled).await;
    ensure_namespace(&env.client, &unlabelled).await;
    for ns in [&env.ns, &labelled] {
        Api::<k8s_openapi::api::core::v1::Namespace>::all(env.client.clone())
            .patch(
                ns,
                &PatchParams::default(),
                &Patch::Merge(&json!({"metadata": {"labels": {"e2e.servicedb.dev/cache": "yes"}}})),
            )
            .await
            .expect("label namespace");
    }
    place_of(
        &env.client,
        &env.ns,
        "cart",
        "Redis",
        "shared-redis",
        &env.ns,
        "Retain",
    )
    .await;
    place_of(
        &env.client,
        &labelled,
        "cart",
        "Redis",
        "shared-redis",
        &env.ns,
        "Delete",
    )
    .await;
    place_of(
        &env.client,
        &unlabelled,
        "cart",
        "Redis",
        "shared-redis",
        &env.ns,
        "Delete",
    )
    .await;

    let here: Api<ServiceDatabase> = env.api();
    let there: Api<ServiceDatabase> = Api::namespaced(env.client.clone(), &labelled);
    let outside: Api<ServiceDatabase> = Api::namespaced(env.client.clone(), &unlabelled);
    wait_phase(&here, "cart", Phase::Ready).await;
    wait_phase(&there, "cart", Phase::Ready).await;
    let refused = wait_phase(&outside, "cart", Phase::Failed).await;
    let cond = refused
        .status
        .expect("status")
        .conditions
        .into_iter()
        .find(|c| c.type_ == "SpecValid")
        .expect("SpecValid");
    assert_eq!(cond.reason, "NamespaceNotAllowed", "{}", cond.message);

    let mine = get_when(&env.api::<Secret>(), "cart-db").await;
    let theirs = get_when(
        &Api::<Secret>::namespaced(env.client.clone(), &labelled),
        "cart-db",
    )
    .await;
    let (user, password, prefix) = (
        secret_value(&mine, "username"),
        secret_value(&mine, "password"),
        secret_value(&mine, "keyPrefix"),
    );
    let (their_user, their_password, their_prefix) = (
        secret_value(&theirs, "username"),
        secret_value(&theirs, "password"),
        secret_value(&theirs, "keyPrefix"),
    );
    assert_ne!(prefix, their_prefix);
    assert!(secret_value(&mine, "REDIS_URL").starts_with(&format!("redis://{user}:")));

    let mut conn = redis_as(cache.port, &user, &password)
        .await
        .expect("the service logs in with its Secret");
    let _: () = redis::cmd("SET")
        .arg(format!("{prefix}1"))
        .arg("apples")
        .query_async(&mut conn)
        .await
        .expect("writes its keys");
    let got: String = redis::cmd("GET")
        .arg(format!("{prefix}1"))
        .query_async(&mut conn)
        .await
        .expect("reads its keys");
    assert_eq!(got, "apples");
    let mut theirs_conn = redis_as(cache.port, &their_user, &their_password)
        .await
        .expect("the other service logs in");
    let _: () = redis::cmd("SET")
        .arg(format!("{their_prefix}1"))
        .arg("pears")
        .query_async(&mut theirs_conn)
        .await
        .expect("its own keys");
    for (what, cmd) in [
        (
            "another service's key",
            redis::cmd("GET").arg(format!("{their_prefix}1")).clone(),
        ),
        ("FLUSHALL", redis::cmd("FLUSHALL").clone()),
        ("CONFIG", redis::cmd("CONFIG").arg("GET").arg("*").clone()),
        ("KEYS", redis::cmd("KEYS").arg("*").clone()),
    ] {
        let err = cmd
            .query_async::<redis::Value>(&mut conn)
            .await
            .expect_err(what);
        assert_eq!(err.code(), Some("NOPERM"), "{what}: {err}");
    }

    // Delete removes the login and the keys; Retain keeps them.
    there
        .delete("cart", &DeleteParams::default())
        .await
        .expect("delete");
    wait_for(
        "the Delete cart to be gone",
        Duration::from_secs(30),
        || async { there.get_opt("cart").await.ok()?.is_none().then_some(()) },
    )
    .await;
    assert!(
        redis_as(cache.port, &their_user, &their_password)
            .await
            .is_err(),
        "the deleted service's login is gone"
    );
    let mut admin = redis_as(cache.port, &cache.admin_user, &cache.admin_password)
        .await
        .expect("admin");
    let left: Option<String> = redis::cmd("GET")
        .arg(format!("{their_prefix}1"))
        .query_async(&mut admin)
        .await
        .expect("get");
    assert_eq!(left, None, "its keys are gone");
    let kept: Option<String> = redis::cmd("GET")
        .arg(format!("{prefix}1"))
        .query_async(&mut admin)
        .await
        .expect("get");
    assert_eq!(
        kept.as_deref(),
        Some("apples"),
        "the other service's keys are untouched"
    );

    // Retain keeps the user and its keys; the ServiceDatabase re-applied
    // (a new UID) takes them over, claim and marker, with the same password.
    let before = here
        .get("cart")
        .await
        .expect("get")
        .metadata
        .uid
        .expect("uid");
    here.delete("cart", &DeleteParams::default())
        .await
        .expect("delete");
    wait_for(
        "the Retain cart to be gone",
        Duration::from_secs(30),
        || async { here.get_opt("cart").await.ok()?.is_none().then_some(()) },
    )
    .await;
    place_of(
        &env.client,
        &env.ns,
        "cart",
        "Redis",
        "shared-redis",
        &env.ns,
        "Retain",
    )
    .await;
    let after = wait_phase(&here, "cart", Phase::Ready).await;
    let uid = after.metadata.uid.expect("uid");
    assert_ne!(uid, before, "a new object");
    let again = get_when(&env.api::<Secret>(), "cart-db").await;
    assert_eq!(secret_value(&again, "password"), password);
    let mut conn = redis_as(cache.port, &user, &password)
        .await
        .expect("the same login and password work");
    let got: String = redis::cmd("GET")
        .arg(format!("{prefix}1"))
        .query_async(&mut conn)
        .await
        .expect("reads its keys");
    assert_eq!(got, "apples", "the keys are there");
    let claim: String = redis::cmd("GET")
        .arg(format!("servicedb-claim:{user}"))
        .query_async(&mut admin)
        .await
        .expect("claim");
    assert!(claim.contains(&uid), "{claim}");
    let acl: Vec<String> = redis::cmd("ACL")
        .arg("LIST")
        .query_async(&mut admin)
        .await
        .expect("ACL LIST");
    let rules = acl
        .iter()
        .find(|line| line.starts_with(&format!("user {user} ")))
        .expect("the user");
    assert!(
        rules.contains(&format!("&servicedb-owner:{uid}")) && !rules.contains(&before),
        "marked for the new ServiceDatabase only: {rules}"
    );

    let logs = env.operator.logs();
    for secret in [&password, &their_password, &cache.admin_password] {
        assert!(
            !logs.contains(secret.as_str()),
            "a password appears in the operator's log"
        );
    }
}

#[tokio::test]
async fn the_shared_server_examples_are_accepted_and_explain_what_is_missing() {
    let env = Env::new("shared-examples").await;
    ensure_namespace(&env.client, "platform-db").await;
    // platform-db is a fixed name: start from no admin Secret even on a
    // control plane an earlier run used.
    let _ = Api::<Secret>::namespaced(env.client.clone(), "platform-db")
        .delete("shared-pg-admin", &DeleteParams::default())
        .await;
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/shared");
    apply_manifest(&env.client, &env.ns, &dir.join("database-server.yaml")).await;
    apply_manifest(
        &env.client,
        &env.ns,
        &dir.join("invoices-on-shared-server.yaml"),
    )
    .await;
    let sdbs: Api<ServiceDatabase> = env.api();

    // No admin Secret yet: the condition names the field and the Secret.
    let failed = wait_phase(&sdbs, "invoices", Phase::Failed).await;
    let cond = failed
        .status
        .expect("status")
        .conditions
        .into_iter()
        .find(|c| c.type_ == "SpecValid")
        .expect("SpecValid");
    assert_eq!(cond.reason, "ServerCredentialsMissing");
    assert!(
        cond.message.contains("spec.serverRef") && cond.message.contains("shared-pg-admin"),
        "{}",
        cond.message
    );

    // With the Secret, the (here unresolvable) server is what is missing.
    let admin = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "shared-pg-admin"},
        "stringData": {"username": "admin", "password": "not-a-real-password"}});
    Api::<Secret>::namespaced(env.client.clone(), "platform-db")
        .patch(
            "shared-pg-admin",
            &PatchParams::apply("servicedb-e2e"),
            &Patch::Apply(&admin),
        )
        .await
        .expect("admin secret");
    sdbs.patch(
        "invoices",
        &PatchParams::default(),
        &Patch::Merge(&json!({"metadata": {"annotations": {"e2e/poke": "1"}}})),
    )
    .await
    .expect("poke");
    let waiting = wait_for("ServerUnavailable", Duration::from_secs(60), || async {
        let s = sdbs.get("invoices").await.ok()?;
        let c = s
            .status?
            .conditions
            .into_iter()
            .find(|c| c.type_ == "InstanceReady")?;
        (c.reason == "ServerUnavailable").then_some(c)
    })
    .await;
    assert!(
        waiting.message.contains("platform-db/shared-pg"),
        "{}",
        waiting.message
    );
    assert!(!waiting.message.contains("not-a-real-password"));
    assert!(
        get_opt_secret(&env, "invoices-db").await.is_none(),
        "no Secret before the login exists"
    );

    // The managed server example becomes an instance of its own, open to
    // the namespaces its selector names.
    apply_manifest(&env.client, &env.ns, &dir.join("managed-redis.yaml")).await;
    let platform = |kind: &str| format!("{kind} in platform-db");
    let sts = wait_for(
        &platform("StatefulSet shared-redis-server-db"),
        Duration::from_secs(60),
        || async {
            Api::<k8s_openapi::api::apps::v1::StatefulSet>::namespaced(
                env.client.clone(),
                "platform-db",
            )
            .get_opt("shared-redis-server-db")
            .await
            .ok()?
        },
    )
    .await;
    let image = sts
        .spec
        .expect("spec")
        .template
        .spec
        .expect("pod")
        .containers[0]
        .image
        .clone();
    assert!(
        image.as_deref().is_some_and(|i| i.ends_with("redis:7.4")),
        "{image:?}"
    );
    let policy = wait_for(
        &platform("NetworkPolicy"),
        Duration::from_secs(30),
        || async {
            Api::<k8s_openapi::api::networking::v1::NetworkPolicy>::namespaced(
                env.client.clone(),
                "platform-db",
            )
            .get_opt("shared-redis-server-db")
            .await
            .ok()?
        },
    )
    .await;
    let from = policy.spec.expect("spec").ingress.expect("ingress")[0]
        .from
        .clone()
        .expect("from");
    let selector = from[0].namespace_selector.clone().expect("namespaces");
    assert_eq!(
        selector
            .match_labels
            .unwrap_or_default()
            .get("team")
            .map(String::as_str),
        Some("shop")
    );
}

async fn get_opt_secret(env: &Env, name: &str) -> Option<Secret> {
    env.api::<Secret>().get_opt(name).await.expect("get")
}
