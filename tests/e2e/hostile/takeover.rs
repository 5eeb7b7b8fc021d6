//! Logins, twins, scratch databases and ACL users of two ServiceDatabases
//! never meet, and servicedb never adopts or drops what it did not create.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Event, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams};
use mongodb::bson::{Document, doc};
use serde_json::json;
use servicedb::api::{Phase, ServiceDatabase};
use servicedb::engine::mongodb_users::{self, CLAIMS_DATABASE, Login, UserSpec};

use crate::ferretdb::FerretDb;
use crate::support::harness::{Env, ensure_namespace, wait_for};
use crate::support::objects::credentials;
use crate::support::objects::get_when;
use crate::support::objects::secret_value;
use crate::support::objects::wait_phase;
use crate::support::rotations::place;
use crate::support::rotations::reconciled_in;
use crate::support::rotations::request_rotation;
use crate::support::rotations::secret_when;
use crate::support::servers::{Postgres, Redis};
use crate::support::shared_servers::connect;
use crate::support::shared_servers::redis_as;
use crate::support::shared_servers::server;
use crate::support::shared_servers::server_of;

/// The login name servicedb gives `namespace/name` on a shared server.
fn login_of(namespace: &str, name: &str) -> String {
    format!("{namespace}_{name}").replace('-', "_")
}

fn shared_spec(server: &str, server_ns: &str) -> serde_json::Value {
    json!({"engine": "Postgres", "isolation": "Database", "deletionPolicy": "Delete",
           "serverRef": {"name": server, "namespace": server_ns}})
}

/// Ready or refused: the phase the operator settled on.
async fn settled(api: &Api<ServiceDatabase>, name: &str) -> ServiceDatabase {
    wait_for(
        &format!("ServiceDatabase {name} to be Ready or Failed"),
        Duration::from_secs(60),
        || async {
            let sdb = api.get(name).await.ok()?;
            let phase = sdb.status.as_ref()?.phase;
            matches!(phase, Phase::Ready | Phase::Failed).then_some(sdb)
        },
    )
    .await
}

/// A change of an annotation makes the operator reconcile the object.
async fn poke(api: &Api<ServiceDatabase>, name: &str, value: usize) {
    api.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(
            &json!({"metadata": {"annotations": {"e2e.servicedb.dev/poke": value.to_string()}}}),
        ),
    )
    .await
    .expect("annotate");
}

/// The SpecValid condition of a refused ServiceDatabase.
fn spec_valid(sdb: &ServiceDatabase) -> Condition {
    sdb.status
        .as_ref()
        .expect("status")
        .conditions
        .iter()
        .find(|c| c.type_ == "SpecValid")
        .cloned()
        .expect("SpecValid")
}

/// Whether `user` can read `table` in `database`.
async fn reads(port: u16, user: &str, password: &str, database: &str, table: &str) -> bool {
    match connect(port, user, password, database).await {
        Ok(client) => client
            .query_one(&format!("SELECT count(*) FROM {table}"), &[])
            .await
            .is_ok(),
        Err(_) => false,
    }
}

/// `shop/orders` rotated to its twin, next to `shop/orders-b` and
/// `shop-orders/b` (whose main login was the old twin's name): neither
/// newcomer reaches the victim's data, and the victim keeps its login over
/// the newcomers' reconciles. Creating `shop/pay` beside an existing
/// `shop/pay-b` leaves `shop/pay-b`'s login alone.
#[tokio::test]
async fn a_twin_is_never_another_services_login() {
    let env = Env::new("takeover-twin").await;
    let pg = Postgres::start_new();
    server(&env, "pg", &pg, json!({"from": "All"})).await;
    let other_ns = format!("{}-orders", env.ns);
    ensure_namespace(&env.client, &other_ns).await;
    let here: Api<ServiceDatabase> = env.api();
    let there: Api<ServiceDatabase> = Api::namespaced(env.client.clone(), &other_ns);
    let secrets: Api<Secret> = env.api();

    // The victim, rotated once: its twin is the login in use.
    place(&env.client, &env.ns, "orders", shared_spec("pg", &env.ns)).await;
    wait_phase(&here, "orders", Phase::Ready).await;
    let s0 = get_when(&secrets, "orders-db").await;
    let (owner, pw0, database) = credentials(&s0);
    connect(pg.port, &owner, &pw0, &database)
        .await
        .expect("the victim logs in")
        .batch_execute("CREATE TABLE orders (id int); INSERT INTO orders VALUES (1)")
        .await
        .expect("writes");
    request_rotation(&here, "orders", "1").await;
    let s1 = secret_when(
        &secrets,
        "orders-db",
        "the victim's Secret to switch to its twin",
        Duration::from_secs(60),
        |s| secret_value(s, "username") != owner,
    )
    .await;
    let (twin, pw1, _) = credentials(&s1);
    assert!(reads(pg.port, &twin, &pw1, &database, "orders").await);

    // The newcomers whose main login used to be the victim's twin.
    place(&env.client, &env.ns, "orders-b", shared_spec("pg", &env.ns)).await;
    place(&env.client, &other_ns, "b", shared_spec("pg", &env.ns)).await;
    let newcomers = [
        (&here, env.ns.as_str(), "orders-b"),
        (&there, other_ns.as_str(), "b"),
    ];
    for (api, _, name) in newcomers {
        settled(api, name).await;
    }
    for round in 1..=3 {
        for (api, ns, name) in newcomers {
            let before = reconciled_in(&env, ns, name);
            poke(api, name, round).await;
            let secret = Api::<Secret>::namespaced(env.client.clone(), ns)
                .get_opt(&format!("{name}-db"))
                .await
                .expect("get");
            let Some(secret) = secret else { continue };
            wait_for(
                &format!("{ns}/{name} to reconcile again"),
                Duration::from_secs(30),
                || async { (reconciled_in(&env, ns, name) > before).then_some(()) },
            )
            .await;
            let (user, password, own_db) = credentials(&secret);
            assert_ne!(user, twin, "{ns}/{name} got the victim's twin as its login");
            assert!(
                !reads(pg.port, &user, &password, &database, "orders").await,
                "{ns}/{name} (login {user}) reads the victim's table"
            );
            let client = connect(pg.port, &user, &password, &own_db)
                .await
                .expect("the newcomer logs in to its own database");
            let member: bool = client
                .query_one(
                    "SELECT pg_has_role(current_user, $1::name, 'MEMBER')",
                    &[&owner],
                )
                .await
                .expect("membership")
                .get(0);
            assert!(
                !member,
                "{ns}/{name} is a member of the victim's owner role"
            );
        }
        assert!(
            reads(pg.port, &twin, &pw1, &database, "orders").await,
            "round {round}: the victim's own login no longer works"
        );
    }

    // A victim created next to an existing `pay-b` leaves its login alone.
    place(&env.client, &env.ns, "pay-b", shared_spec("pg", &env.ns)).await;
    wait_phase(&here, "pay-b", Phase::Ready).await;
    let (pay_b, pay_b_pw, pay_b_db) = credentials(&get_when(&secrets, "pay-b-db").await);
    place(&env.client, &env.ns, "pay", shared_spec("pg", &env.ns)).await;
    wait_phase(&here, "pay", Phase::Ready).await;
    let before = reconciled_in(&env, &env.ns, "pay");
    poke(&here, "pay", 1).await;
    wait_for(
        "pay to reconcile again",
        Duration::from_secs(30),
        || async { (reconciled_in(&env, &env.ns, "pay") > before).then_some(()) },
    )
    .await;
    connect(pg.port, &pay_b, &pay_b_pw, &pay_b_db)
        .await
        .expect("pay-b still logs in after pay was created");
}

/// Refused: the NameConflict condition names `object`, a Warning Event says
/// so, and no Secret was written.
async fn assert_refused(env: &Env, name: &str, object: &str) {
    let here: Api<ServiceDatabase> = env.api();
    let refused = wait_phase(&here, name, Phase::Failed).await;
    let cond = spec_valid(&refused);
    assert_eq!(cond.status, "False");
    assert_eq!(cond.reason, "NameConflict", "{}", cond.message);
    assert!(cond.message.contains(object), "{}", cond.message);
    wait_for(
        "a Warning Event naming the conflict",
        Duration::from_secs(30),
        || async {
            let events = env.api::<Event>().list(&Default::default()).await.ok()?;
            events
                .items
                .into_iter()
                .any(|e| {
                    e.reason.as_deref() == Some("NameConflict")
                        && e.type_.as_deref() == Some("Warning")
                        && e.message.as_deref().is_some_and(|n| n.contains(object))
                })
                .then_some(())
        },
    )
    .await;
    assert!(
        env.api::<Secret>()
            .get_opt(&format!("{name}-db"))
            .await
            .expect("get")
            .is_none(),
        "a refused ServiceDatabase got a Secret"
    );
}

async fn delete_and_wait(api: &Api<ServiceDatabase>, name: &str) {
    api.delete(name, &DeleteParams::default())
        .await
        .expect("delete");
    wait_for(
        &format!("{name} to be gone"),
        Duration::from_secs(60),
        || async { api.get_opt(name).await.ok()?.is_none().then_some(()) },
    )
    .await;
}

/// A role and a database that a DBA made under the name servicedb would
/// give `platform/admin` are refused, untouched, and untouched again after
/// the ServiceDatabase's `deletionPolicy: Delete`.
#[tokio::test]
async fn an_existing_role_and_database_are_never_adopted_or_dropped() {
    let env = Env::new("takeover-adopt").await;
    let pg = Postgres::start_new();
    server(&env, "pg", &pg, json!({"from": "Same"})).await;
    let name = login_of(&env.ns, "admin");
    let password = "theirs-Pw-1";
    let admin = connect(pg.port, &pg.admin_user, &pg.admin_password, "postgres")
        .await
        .expect("admin");
    for statement in [
        format!("CREATE ROLE \"{name}\" LOGIN PASSWORD '{password}'"),
        format!("CREATE DATABASE \"{name}\" OWNER \"{name}\""),
    ] {
        admin
            .batch_execute(&statement)
            .await
            .expect("pre-create the role and database");
    }
    connect(pg.port, &name, password, &name)
        .await
        .expect("the existing role logs in")
        .batch_execute("CREATE TABLE accounts (id int); INSERT INTO accounts VALUES (1), (2)")
        .await
        .expect("writes");

    place(&env.client, &env.ns, "admin", shared_spec("pg", &env.ns)).await;
    assert_refused(&env, "admin", &format!("role {name}")).await;
    let untouched = async || {
        let n: i64 = connect(pg.port, &name, password, &name)
            .await
            .expect("the existing role still logs in with its own password")
            .query_one("SELECT count(*) FROM accounts", &[])
            .await
            .expect("the existing data is there")
            .get(0);
        assert_eq!(n, 2);
        let owner: String = admin
            .query_one(
                "SELECT pg_get_userbyid(datdba)::text FROM pg_database WHERE datname = $1",
                &[&name],
            )
            .await
            .expect("owner")
            .get(0);
        assert_eq!(owner, name, "the database keeps its owner");
    };
    untouched().await;

    delete_and_wait(&env.api(), "admin").await;
    untouched().await;
}

/// A Redis ACL user that exists under the name servicedb would give
/// `platform/cache` is refused, untouched, and still works after the
/// ServiceDatabase's `deletionPolicy: Delete`.
#[tokio::test]
async fn an_existing_redis_user_is_never_adopted_or_removed() {
    let env = Env::new("takeover-redis").await;
    let redis = Redis::start_new();
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
    let user = login_of(&env.ns, "cache");
    let password = "theirs-Pw-1";
    let mut admin = redis_as(redis.port, &redis.admin_user, &redis.admin_password)
        .await
        .expect("admin");
    redis::cmd("ACL")
        .arg(
            &[
                "SETUSER",
                &user,
                "on",
                &format!(">{password}"),
                "~theirs:*",
                "+@all",
            ][..],
        )
        .query_async::<()>(&mut admin)
        .await
        .expect("pre-create the ACL user");
    let acl_line = async |admin: &mut redis::aio::MultiplexedConnection| -> String {
        let lines: Vec<String> = redis::cmd("ACL")
            .arg("LIST")
            .query_async(admin)
            .await
            .expect("ACL LIST");
        lines
            .into_iter()
            .find(|l| l.starts_with(&format!("user {user} ")))
            .expect("the user is there")
    };
    let before = acl_line(&mut admin).await;
    let mut theirs = redis_as(redis.port, &user, password).await.expect("login");
    redis::cmd("SET")
        .arg(&["theirs:k", "v"][..])
        .query_async::<()>(&mut theirs)
        .await
        .expect("writes");

    place(
        &env.client,
        &env.ns,
        "cache",
        json!({"engine": "Redis", "isolation": "Database", "deletionPolicy": "Delete",
               "serverRef": {"name": "kv"}}),
    )
    .await;
    assert_refused(&env, "cache", &format!("ACL user {user}")).await;
    assert_eq!(acl_line(&mut admin).await, before, "the user was changed");

    delete_and_wait(&env.api(), "cache").await;
    assert_eq!(acl_line(&mut admin).await, before, "the user was changed");
    let mut theirs = redis_as(redis.port, &user, password)
        .await
        .expect("the existing user still logs in with its own password");
    let value: String = redis::cmd("GET")
        .arg("theirs:k")
        .query_async(&mut theirs)
        .await
        .expect("reads");
    assert_eq!(value, "v");
}

/// FerretDB's `root`, as the DatabaseServer's admin Secret names it.
fn mongo_root(mongo: &FerretDb) -> mongodb::Client {
    let login = Login {
        source: "admin",
        user: "root",
        password: &mongo.root_password,
    };
    mongodb_users::direct_client("127.0.0.1", mongo.port, Some(login), Duration::from_secs(5))
        .expect("client")
}

/// The documents of `collection` in `database`, read as `user` (a user of
/// `database`, SCRAM-SHA-256 as servicedb's Secrets name it).
async fn mongo_documents(
    port: u16,
    user: &str,
    password: &str,
    database: &str,
    collection: &str,
) -> Result<Vec<Document>, mongodb::error::Error> {
    use futures::TryStreamExt;
    let uri = format!(
        "mongodb://{user}:{password}@127.0.0.1:{port}/{database}?authSource={database}\
         &authMechanism=SCRAM-SHA-256&directConnection=true"
    );
    let client = mongodb::Client::with_uri_str(&uri).await?;
    client
        .database(database)
        .collection::<Document>(collection)
        .find(doc! {})
        .await?
        .try_collect()
        .await
}

/// servicedb's claim on `database`, if any (its own `servicedb.claims`).
async fn mongo_claim(root: &mongodb::Client, database: &str) -> Option<Document> {
    root.database(CLAIMS_DATABASE)
        .collection::<Document>("claims")
        .find_one(doc! {"_id": database})
        .await
        .expect("read the claims")
}

/// A MongoDB database, with a document and a user of its own, that exists
/// under the name servicedb would give `platform/admin` is refused,
/// untouched, and untouched again after the ServiceDatabase's
/// `deletionPolicy: Delete` (FerretDB stands in for mongod).
#[tokio::test]
async fn an_existing_mongodb_database_is_never_adopted_or_dropped() {
    let env = Env::new("takeover-mongo").await;
    let mongo = mongodb_server(&env).await;
    let name = login_of(&env.ns, "admin");
    let password = "theirs-Pw-1";
    let root = mongo_root(&mongo);
    root.database(&name)
        .collection::<Document>("accounts")
        .insert_one(doc! {"_id": 1, "owner": "theirs"})
        .await
        .expect("pre-create the database with a document");
    // FerretDB v1 refuses roles: the user has none (it needs none there).
    let theirs = UserSpec {
        roles: Vec::new(),
        ..UserSpec::service(&name, &name, password)
    };
    root.database(&name)
        .run_command(theirs.create_command())
        .await
        .expect("pre-create the user");

    place(
        &env.client,
        &env.ns,
        "admin",
        json!({"engine": "MongoDB", "isolation": "Database", "deletionPolicy": "Delete",
               "serverRef": {"name": "docs"}}),
    )
    .await;
    assert_refused(&env, "admin", &format!("database {name}")).await;
    let untouched = async || {
        let documents = mongo_documents(mongo.port, &name, password, &name, "accounts")
            .await
            .expect("the existing user still logs in with its own password and reads");
        assert_eq!(documents, [doc! {"_id": 1, "owner": "theirs"}]);
        assert_eq!(
            mongo_claim(&root, &name).await,
            None,
            "servicedb claimed it"
        );
    };
    untouched().await;

    delete_and_wait(&env.api(), "admin").await;
    untouched().await;
}

/// The names of the databases on the server.
async fn mongo_databases(root: &mongodb::Client) -> Vec<String> {
    root.list_database_names().await.expect("listDatabases")
}

/// A fresh MongoDB service claims its database in `servicedb.claims` under
/// its UID, and its `deletionPolicy: Delete` drops that database, with what
/// was written in it, and releases the claim. FerretDB refuses the
/// `readWrite` grant servicedb gives the service's user (v1 has no roles),
/// so the service is never Ready here: its Secret's URI is checked against
/// FerretDB by the engine tests (tests/instance_mongodb.rs) only.
#[tokio::test]
async fn a_mongodb_claim_is_recorded_and_released_with_the_database() {
    let env = Env::new("takeover-mongo-claim").await;
    let mongo = mongodb_server(&env).await;
    let name = login_of(&env.ns, "fresh");
    let root = mongo_root(&mongo);
    place(
        &env.client,
        &env.ns,
        "fresh",
        json!({"engine": "MongoDB", "isolation": "Database", "deletionPolicy": "Delete",
               "serverRef": {"name": "docs"}}),
    )
    .await;
    let api: Api<ServiceDatabase> = env.api();
    let uid = api
        .get("fresh")
        .await
        .expect("get")
        .metadata
        .uid
        .expect("uid");
    let claim = wait_for(
        "the service's claim on its database",
        Duration::from_secs(60),
        || async { mongo_claim(&root, &name).await },
    )
    .await;
    assert_eq!(claim.get_str("uid"), Ok(uid.as_str()), "{claim}");
    assert_eq!(
        claim.get_str("serviceDatabase"),
        Ok(format!("{}/fresh", env.ns).as_str()),
        "{claim}"
    );
    // The service's data (written by root: FerretDB gives the service no
    // user).
    root.database(&name)
        .collection::<Document>("items")
        .insert_one(doc! {"n": 1})
        .await
        .expect("insert");
    assert!(mongo_databases(&root).await.contains(&name));

    delete_and_wait(&api, "fresh").await;
    assert!(
        !mongo_databases(&root).await.contains(&name),
        "the service's database was not dropped"
    );
    assert_eq!(
        mongo_claim(&root, &name).await,
        None,
        "the claim was not released"
    );
}

/// `deletionPolicy: Retain` leaves the database and its claim; the
/// ServiceDatabase re-applied (a new UID, the same namespace and name)
/// takes the claim over, and the data is still there. (FerretDB: the
/// service is never Ready here, see above; the claim is what decides.)
#[tokio::test]
async fn a_retained_mongodb_database_passes_to_the_same_namespace_and_name() {
    let env = Env::new("takeover-mongo-retain").await;
    let mongo = mongodb_server(&env).await;
    let name = login_of(&env.ns, "kept");
    let root = mongo_root(&mongo);
    let spec = json!({"engine": "MongoDB", "isolation": "Database", "deletionPolicy": "Retain",
                      "serverRef": {"name": "docs"}});
    let api: Api<ServiceDatabase> = env.api();
    let uid_of = async |api: &Api<ServiceDatabase>| {
        api.get("kept")
            .await
            .expect("get")
            .metadata
            .uid
            .expect("uid")
    };
    let claimed_by = async |uid: String| {
        wait_for(
            "the claim to name the ServiceDatabase",
            Duration::from_secs(60),
            || async {
                let claim = mongo_claim(&root, &name).await?;
                (claim.get_str("uid") == Ok(uid.as_str())).then_some(claim)
            },
        )
        .await
    };
    place(&env.client, &env.ns, "kept", spec.clone()).await;
    let first = uid_of(&api).await;
    claimed_by(first.clone()).await;
    root.database(&name)
        .collection::<Document>("items")
        .insert_one(doc! {"n": 1})
        .await
        .expect("insert");
    delete_and_wait(&api, "kept").await;
    assert!(
        mongo_databases(&root).await.contains(&name),
        "Retain keeps it"
    );

    place(&env.client, &env.ns, "kept", spec).await;
    let second = uid_of(&api).await;
    assert_ne!(first, second);
    let claim = claimed_by(second).await;
    assert_eq!(
        claim.get_str("serviceDatabase"),
        Ok(format!("{}/kept", env.ns).as_str()),
        "{claim}"
    );
    let items = root
        .database(&name)
        .collection::<Document>("items")
        .count_documents(doc! {})
        .await
        .expect("count");
    assert_eq!(items, 1, "the data is still there");
}

/// FerretDB as the DatabaseServer `docs`, open to the test's namespace.
async fn mongodb_server(env: &Env) -> FerretDb {
    let mongo = FerretDb::start();
    server_of(
        env,
        "docs",
        "MongoDB",
        mongo.port,
        "root",
        &mongo.root_password,
        json!({"from": "Same"}),
    )
    .await;
    mongo
}
