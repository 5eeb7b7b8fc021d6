//! Credential rotation without an outage and `isolation: Schema`, on shared
//! servers (real PostgreSQL and Redis started by the test), and a search of
//! everything the operator wrote (its log, Events, statuses) for the
//! passwords it handled.

use crate::support::rotations::{place, reconciled_in, request_rotation, secret_when};
use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Event, Secret};
use kube::Api;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use serde_json::json;
use servicedb::api::{DatabaseServer, Phase, ServiceDatabase};

use crate::support::harness::{Env, ensure_namespace, wait_for};
use crate::support::objects::secret_value;
use crate::support::objects::wait_phase;
use crate::support::servers::{Postgres, Redis};
use crate::support::shared_servers::connect;
use crate::support::shared_servers::redis_as;
use crate::support::shared_servers::server;
use crate::support::shared_servers::server_of;

use servicedb::model::rotation::ISSUED_AT;

/// How many reconciles of `name` in the test's namespace ended well, from
/// the operator's JSON log (the e2e operator logs `reconciled` at debug).
fn reconciled(env: &Env, name: &str) -> usize {
    reconciled_in(env, &env.ns, name)
}

/// When the Secret's current password was issued, from its annotation.
fn issued_at(secret: &Secret) -> k8s_openapi::jiff::Timestamp {
    secret
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ISSUED_AT))
        .and_then(|t| t.parse().ok())
        .expect("the Secret records when its password was issued")
}

fn has(secret: &Secret, key: &str) -> bool {
    secret.data.as_ref().is_some_and(|d| d.contains_key(key))
}

/// Every password value a Secret holds.
fn passwords(secret: &Secret) -> Vec<String> {
    ["password", "next-password", "previous-password"]
        .into_iter()
        .filter(|k| has(secret, k))
        .map(|k| secret_value(secret, k))
        .collect()
}

#[tokio::test]
async fn postgres_and_redis_logins_rotate_without_an_outage() {
    let env = Env::new("rotation").await;
    let pg = Postgres::start_new();
    let redis = Redis::start_new();
    server(&env, "pg", &pg, json!({"from": "Same"})).await;
    server_of(
        &env,
        "kv",
        "Redis",
        redis.port,
        &redis.admin_user,
        &redis.admin_password,
        json!({"from": "Same"}),
    )
    .await;
    let grace = json!({"gracePeriod": "6s"});
    let sdbs = place(
        &env.client,
        &env.ns,
        "orders",
        json!({"engine": "Postgres", "isolation": "Database",
        "serverRef": {"name": "pg"}, "credentials": grace, "deletionPolicy": "Delete"}),
    )
    .await;
    place(
        &env.client,
        &env.ns,
        "cart",
        json!({"engine": "Redis", "isolation": "Database",
        "serverRef": {"name": "kv"}, "credentials": grace, "deletionPolicy": "Delete"}),
    )
    .await;
    let before = wait_phase(&sdbs, "orders", Phase::Ready).await;
    wait_phase(&sdbs, "cart", Phase::Ready).await;
    let secrets: Api<Secret> = env.api();
    let mut seen: BTreeSet<String> = BTreeSet::new();

    // --- Postgres: the owner login, then its twin.
    let s0 = secrets.get("orders-db").await.expect("secret");
    seen.extend(passwords(&s0));
    let (owner, pw0, db) = (
        secret_value(&s0, "username"),
        secret_value(&s0, "password"),
        secret_value(&s0, "database"),
    );
    let old = connect(pg.port, &owner, &pw0, &db)
        .await
        .expect("owner login");
    old.batch_execute("CREATE TABLE orders (id int); INSERT INTO orders VALUES (1)")
        .await
        .expect("writes");
    let rotated_at_0 = before.status.and_then(|s| s.credentials_rotated_at);
    assert!(
        rotated_at_0.is_some(),
        "status says when the password was issued"
    );

    request_rotation(&sdbs, "orders", "1").await;
    let s1 = secret_when(
        &secrets,
        "orders-db",
        "the Secret to switch logins",
        Duration::from_secs(60),
        |s| secret_value(s, "username") != owner,
    )
    .await;
    seen.extend(passwords(&s1));
    let (twin, pw1) = (secret_value(&s1, "username"), secret_value(&s1, "password"));
    assert_eq!(twin, format!("{owner}-b"));
    assert_ne!(pw1, pw0);
    assert_eq!(secret_value(&s1, "previous-username"), owner);
    assert!(
        secret_value(&s1, "uri").contains(&twin),
        "the URI follows the new login"
    );
    // Both logins work during the grace period, on the same data.
    let new = connect(pg.port, &twin, &pw1, &db)
        .await
        .expect("the new login works");
    let n: i64 = new
        .query_one("SELECT count(*) FROM orders", &[])
        .await
        .expect("reads the owner's table")
        .get(0);
    assert_eq!(n, 1);
    new.batch_execute("CREATE TABLE lines (id int)")
        .await
        .expect("creates tables");
    let table_owner: String = new
        .query_one(
            "SELECT tableowner::text FROM pg_tables WHERE tablename = 'lines'",
            &[],
        )
        .await
        .expect("owner")
        .get(0);
    assert_eq!(
        table_owner, owner,
        "objects stay owned by the service's owner role"
    );
    connect(pg.port, &owner, &pw0, &db)
        .await
        .expect("the old login still works during the grace period");
    old.query_one("SELECT 1", &[])
        .await
        .expect("an open session is not cut");
    // The status says when the password in use was issued. It is written
    // after the Secret, and a metav1.Time holds whole seconds, so a rotation
    // within the second of the first issue may show the same value: compare
    // with the Secret's own record instead of with the earlier status.
    let (issued_0, issued_1) = (issued_at(&s0), issued_at(&s1));
    assert!(
        issued_1 > issued_0,
        "the new password has its own issue time"
    );
    wait_for(
        "status.credentialsRotatedAt to show the rotation",
        Duration::from_secs(30),
        || async {
            let at = sdbs
                .get("orders")
                .await
                .ok()?
                .status?
                .credentials_rotated_at?;
            (at.0.as_second() == issued_1.as_second()).then_some(())
        },
    )
    .await;

    // After the grace period only the new login works.
    secret_when(
        &secrets,
        "orders-db",
        "the previous login to leave the Secret",
        Duration::from_secs(60),
        |s| !has(s, "previous-username"),
    )
    .await;
    let refused = connect(pg.port, &owner, &pw0, &db)
        .await
        .expect_err("the old login is disabled after the grace period");
    assert!(
        format!("{refused:?}").contains("not permitted to log in"),
        "{refused:?}"
    );
    connect(pg.port, &twin, &pw1, &db)
        .await
        .expect("the new login works");
    // The same request is not carried out twice; a new one goes back to the owner.
    let before_poke = reconciled(&env, "orders");
    sdbs.patch(
        "orders",
        &PatchParams::default(),
        &Patch::Merge(&json!({"metadata": {"annotations": {"e2e/poke": "1"}}})),
    )
    .await
    .expect("poke");
    wait_for(
        "the reconcile after the poke",
        Duration::from_secs(30),
        || async { (reconciled(&env, "orders") > before_poke).then_some(()) },
    )
    .await;
    assert_eq!(
        secret_value(&secrets.get("orders-db").await.expect("secret"), "username"),
        twin
    );
    request_rotation(&sdbs, "orders", "2").await;
    let s2 = secret_when(
        &secrets,
        "orders-db",
        "the second rotation",
        Duration::from_secs(60),
        |s| secret_value(s, "username") == owner,
    )
    .await;
    seen.extend(passwords(&s2));
    connect(pg.port, &owner, &secret_value(&s2, "password"), &db)
        .await
        .expect("the owner login is back with a fresh password");

    // A password changed by hand on the server is repaired.
    let admin = connect(pg.port, &pg.admin_user, &pg.admin_password, "postgres")
        .await
        .expect("admin");
    admin
        .batch_execute(&format!(
            "ALTER ROLE \"{owner}\" PASSWORD 'changed-by-hand'"
        ))
        .await
        .expect("drift");
    wait_for(
        "the drifted password to be repaired",
        Duration::from_secs(120),
        || async {
            connect(pg.port, &owner, &secret_value(&s2, "password"), &db)
                .await
                .ok()
                .map(drop)
        },
    )
    .await;

    // --- Redis: one user, a second password during the grace period.
    let c0 = secrets.get("cart-db").await.expect("secret");
    seen.extend(passwords(&c0));
    let (user, rpw0) = (secret_value(&c0, "username"), secret_value(&c0, "password"));
    redis_as(redis.port, &user, &rpw0).await.expect("login");
    request_rotation(&sdbs, "cart", "1").await;
    let c1 = secret_when(
        &secrets,
        "cart-db",
        "the Redis password to change",
        Duration::from_secs(60),
        |s| secret_value(s, "password") != rpw0,
    )
    .await;
    seen.extend(passwords(&c1));
    assert_eq!(secret_value(&c1, "username"), user, "the same ACL user");
    let rpw1 = secret_value(&c1, "password");
    let mut conn = redis_as(redis.port, &user, &rpw1)
        .await
        .expect("new password");
    let _: () = redis::cmd("SET")
        .arg(format!("{}k", secret_value(&c1, "keyPrefix")))
        .arg("v")
        .query_async(&mut conn)
        .await
        .expect("writes under its prefix");
    redis_as(redis.port, &user, &rpw0)
        .await
        .expect("the old password still works during the grace period");
    secret_when(
        &secrets,
        "cart-db",
        "the previous password to leave the Secret",
        Duration::from_secs(60),
        |s| !has(s, "previous-password"),
    )
    .await;
    assert!(
        redis_as(redis.port, &user, &rpw0).await.is_err(),
        "the old password is refused after the grace period"
    );
    redis_as(redis.port, &user, &rpw1)
        .await
        .expect("new password");

    // Events say what happened, without a password.
    let events: Api<Event> = env.api();
    let listed = events.list(&ListParams::default()).await.expect("events");
    assert!(
        listed
            .items
            .iter()
            .any(|e| e.reason.as_deref() == Some("CredentialsRotated")),
        "a CredentialsRotated Event"
    );
    for name in ["orders", "cart"] {
        sdbs.delete(name, &DeleteParams::default())
            .await
            .expect("delete");
    }
    wait_for(
        "both resources to be gone",
        Duration::from_secs(60),
        || async {
            let left = sdbs.list(&ListParams::default()).await.ok()?.items.len();
            (left == 0).then_some(())
        },
    )
    .await;
    assert!(
        connect(pg.port, &twin, &pw1, &db).await.is_err(),
        "Delete drops the twin login too"
    );

    seen.insert(pg.admin_password.clone());
    seen.insert(redis.admin_password.clone());
    assert_no_secret_leaks(&env, &seen).await;
}

#[tokio::test]
async fn schema_isolation_gives_each_service_a_private_schema() {
    let env = Env::new("schema").await;
    let pg = Postgres::start_new();
    server(&env, "pg", &pg, json!({"from": "All"})).await;
    let other_ns = format!("{}-b", env.ns);
    ensure_namespace(&env.client, &other_ns).await;
    let spec = |policy: &str| {
        json!({"engine": "Postgres", "isolation": "Schema",
               "serverRef": {"name": "pg", "namespace": env.ns}, "deletionPolicy": policy})
    };
    let here = place(&env.client, &env.ns, "orders", spec("Retain")).await;
    let there = place(&env.client, &other_ns, "billing", spec("Delete")).await;
    wait_phase(&here, "orders", Phase::Ready).await;
    wait_phase(&there, "billing", Phase::Ready).await;
    let a = env.api::<Secret>().get("orders-db").await.expect("secret");
    let b = Api::<Secret>::namespaced(env.client.clone(), &other_ns)
        .get("billing-db")
        .await
        .expect("secret");
    let db = secret_value(&a, "database");
    assert_eq!(db, "servicedb", "one shared database");
    assert_eq!(secret_value(&b, "database"), db);
    let (schema_a, schema_b) = (secret_value(&a, "schema"), secret_value(&b, "schema"));
    assert_ne!(schema_a, schema_b);

    let ca = connect(
        pg.port,
        &secret_value(&a, "username"),
        &secret_value(&a, "password"),
        &db,
    )
    .await
    .expect("A logs in");
    let cb = connect(
        pg.port,
        &secret_value(&b, "username"),
        &secret_value(&b, "password"),
        &db,
    )
    .await
    .expect("B logs in");
    ca.batch_execute("CREATE TABLE orders (id int); INSERT INTO orders VALUES (7)")
        .await
        .expect("unqualified names land in the service's own schema");
    let in_schema: String = ca
        .query_one(
            "SELECT schemaname::text FROM pg_tables WHERE tablename = 'orders'",
            &[],
        )
        .await
        .expect("where")
        .get(0);
    assert_eq!(in_schema, schema_a);
    cb.batch_execute("CREATE TABLE invoices (id int)")
        .await
        .expect("B writes its own");
    for (client, sql) in [
        (&cb, format!("SELECT * FROM \"{schema_a}\".orders")),
        (&ca, format!("SELECT * FROM \"{schema_b}\".invoices")),
        (&ca, "CREATE TABLE public.sneaky (id int)".to_string()),
        (&ca, format!("CREATE TABLE \"{schema_b}\".sneaky (id int)")),
    ] {
        let err = client.batch_execute(&sql).await.expect_err(&sql);
        assert!(
            format!("{err:?}").contains("permission denied"),
            "{sql}: {err:?}"
        );
    }

    // Delete drops B's schema and logins; A (Retain) keeps its data.
    there
        .delete("billing", &DeleteParams::default())
        .await
        .expect("delete");
    wait_for("billing to be gone", Duration::from_secs(60), || async {
        there.get_opt("billing").await.ok()?.is_none().then_some(())
    })
    .await;
    let admin = connect(pg.port, &pg.admin_user, &pg.admin_password, &db)
        .await
        .expect("admin");
    let schemas: Vec<String> = admin
        .query("SELECT nspname::text FROM pg_namespace", &[])
        .await
        .expect("schemas")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(!schemas.contains(&schema_b), "{schemas:?}");
    assert!(schemas.contains(&schema_a), "{schemas:?}");
    let n: i64 = ca
        .query_one("SELECT count(*) FROM orders", &[])
        .await
        .expect("A still reads")
        .get(0);
    assert_eq!(n, 1);

    let mut seen: BTreeSet<String> = passwords(&a).into_iter().chain(passwords(&b)).collect();
    seen.insert(pg.admin_password.clone());
    assert_no_secret_leaks(&env, &seen).await;
}

/// The operator's log, every Event and every status in the cluster are
/// free of each password the test saw.
async fn assert_no_secret_leaks(env: &Env, passwords: &BTreeSet<String>) {
    let mut haystack = env.operator.logs();
    let all_events: Api<Event> = Api::all(env.client.clone());
    for e in all_events
        .list(&ListParams::default())
        .await
        .expect("events")
        .items
    {
        haystack.push_str(&serde_json::to_string(&e).expect("json"));
    }
    let sdbs: Api<ServiceDatabase> = Api::all(env.client.clone());
    for s in sdbs.list(&ListParams::default()).await.expect("sdbs").items {
        haystack.push_str(&serde_json::to_string(&s.status).expect("json"));
    }
    let servers: Api<DatabaseServer> = Api::all(env.client.clone());
    for s in servers
        .list(&ListParams::default())
        .await
        .expect("servers")
        .items
    {
        haystack.push_str(&serde_json::to_string(&s.status).expect("json"));
    }
    assert!(haystack.len() > 1000, "there is something to search");
    for password in passwords {
        assert!(password.len() >= 16, "generated passwords are long");
        assert!(
            !haystack.contains(password.as_str()),
            "a password appears in the operator's log, an Event or a status"
        );
    }
}
