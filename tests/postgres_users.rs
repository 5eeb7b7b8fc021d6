//! The user library (`servicedb::engine::postgres_users`) against a real
//! PostgreSQL 15 server run by the instance manager: drift repaired, logins
//! rotated through the twin, names claimed by markers, schemas isolated,
//! and what is dropped.
//!
//! Needs root and the postgresql-15 package, like tests/instance_postgres.rs.

mod common;
#[path = "instance_common/postgres.rs"]
mod instance;

use instance::*;

use servicedb::engine::logins::{self, Login, Logins};
use servicedb::engine::postgres_users::{
    Changes, ServiceUser, drop_service_database, drop_service_schema, ensure_schema_database,
    ensure_service_database, ensure_service_logins, ensure_service_schema, set_password,
};
use tokio_postgres::error::SqlState;

/// The user library against the instance's server, as the operator will
/// use it for shared servers: a repeat changes nothing, drift is repaired,
/// hostile names stay names, and deletion converges.
#[tokio::test(flavor = "multi_thread")]
async fn user_library_repairs_drift_and_drops() {
    let fixture = Fixture::new();
    let mut process = fixture.start();
    process.wait_ready(&fixture).await;
    let admin = fixture
        .connect_admin(&fixture.admin_password)
        .await
        .expect("admin logs in");
    let user = ServiceUser {
        role: fixture.service.role.clone(),
        password: fixture.service.password.clone(),
        database: fixture.service.database.clone(),
    };

    let repeat = ensure_service_database(&admin, &user)
        .await
        .expect("ensure");
    assert_eq!(repeat, Changes::default(), "a repeat writes nothing");

    admin
        .batch_execute(
            r#"ALTER ROLE "Orders-svc" SUPERUSER CREATEDB;
               GRANT CONNECT, TEMPORARY ON DATABASE "orders-db" TO PUBLIC;
               CREATE ROLE squatter;
               ALTER DATABASE "orders-db" OWNER TO squatter;"#,
        )
        .await
        .expect("drift");
    let repaired = ensure_service_database(&admin, &user)
        .await
        .expect("repair");
    assert!(repaired.role_attributes_fixed, "{repaired:?}");
    assert!(repaired.owner_changed, "{repaired:?}");
    assert!(repaired.privileges_fixed, "{repaired:?}");
    assert!(!repaired.password_changed && !repaired.role_created && !repaired.database_created);
    let row = admin
        .query_one(
            "SELECT r.rolsuper, r.rolcreatedb, pg_get_userbyid(d.datdba)::text, \
                    has_database_privilege('public', d.datname, 'CONNECT') \
             FROM pg_roles r, pg_database d WHERE r.rolname = $1 AND d.datname = $2",
            &[&user.role, &user.database],
        )
        .await
        .expect("inspect");
    assert!(!row.get::<_, bool>(0) && !row.get::<_, bool>(1));
    assert_eq!(row.get::<_, String>(2), user.role);
    assert!(!row.get::<_, bool>(3), "PUBLIC cannot connect");
    assert_eq!(
        ensure_service_database(&admin, &user)
            .await
            .expect("ensure"),
        Changes::default()
    );

    let hostile = ServiceUser {
        role: r#"evil"; DROP ROLE postgres; --"#.to_owned(),
        password: r#"it's \ "quoted""#.to_owned(),
        database: r#"db" OWNER "postgres"#.to_owned(),
    };
    let created = ensure_service_database(&admin, &hostile)
        .await
        .expect("hostile names");
    assert!(
        created.role_created && created.database_created,
        "{created:?}"
    );
    let owner: String = connect(
        fixture.pg_port,
        &hostile.role,
        &hostile.password,
        &hostile.database,
    )
    .await
    .expect("the hostile role logs in to its database")
    .query_one(
        "SELECT pg_get_userbyid(datdba)::text FROM pg_database WHERE datname = current_database()",
        &[],
    )
    .await
    .expect("owner")
    .get(0);
    assert_eq!(owner, hostile.role);
    assert!(
        set_password(&admin, &hostile.role, "rotated")
            .await
            .expect("rotate")
    );
    assert!(
        !set_password(&admin, &hostile.role, "rotated")
            .await
            .expect("repeat")
    );

    let own = ServiceUser {
        role: fixture.admin_user.clone(),
        password: "x".to_owned(),
        database: "admin-db".to_owned(),
    };
    let refused = ensure_service_database(&admin, &own)
        .await
        .expect_err("the connected admin is not a service role");
    assert_eq!(refused.category(), "own_role");

    drop_service_database(&admin, &user, None)
        .await
        .expect("drop");
    drop_service_database(&admin, &user, None)
        .await
        .expect("drop again converges");
    let gone = admin
        .query_one(
            "SELECT EXISTS (SELECT FROM pg_roles WHERE rolname = $1), \
                    EXISTS (SELECT FROM pg_database WHERE datname = $2)",
            &[&user.role, &user.database],
        )
        .await
        .expect("inspect");
    assert!(!gone.get::<_, bool>(0) && !gone.get::<_, bool>(1));
    assert_eq!(process.terminate().code(), Some(0));
}

/// Rotation through the library, as the operator does it on a shared
/// server: the twin login acts as the owner, both logins work during the
/// grace period, the retired one cannot log in afterwards, and dropping the
/// database drops both.
#[tokio::test(flavor = "multi_thread")]
async fn logins_rotate_through_the_owner_and_its_twin() {
    let fixture = Fixture::new();
    let mut process = fixture.start();
    process.wait_ready(&fixture).await;
    let admin = fixture
        .connect_admin(&fixture.admin_password)
        .await
        .expect("admin logs in");
    let (owner, db) = ("svc_rot", "svc_rot");
    let twin = logins::twin(owner);
    let step0 = Logins::single(Login::new(owner, "first password"));
    ensure_service_logins(&admin, owner, db, &step0, None)
        .await
        .expect("create");
    let a = connect(fixture.pg_port, owner, "first password", db)
        .await
        .expect("owner");
    a.batch_execute("CREATE TABLE t (id int); INSERT INTO t VALUES (1)")
        .await
        .expect("write");

    // Steps 1 and 2: the twin is made, then both work.
    let step2 = Logins {
        current: Login::new(&twin, "second password"),
        next: None,
        previous: Some(Login::new(owner, "first password")),
    };
    let made = ensure_service_logins(&admin, owner, db, &step2, None)
        .await
        .expect("rotate");
    assert!(made.role_created, "{made:?}");
    assert_eq!(
        ensure_service_logins(&admin, owner, db, &step2, None)
            .await
            .expect("repeat"),
        Changes::default(),
        "a repeat writes nothing"
    );
    let b = connect(fixture.pg_port, &twin, "second password", db)
        .await
        .expect("twin");
    b.batch_execute("INSERT INTO t VALUES (2); CREATE TABLE u (id int)")
        .await
        .expect("twin writes");
    let row = b
        .query_one("SELECT current_user::text, (SELECT tableowner::text FROM pg_tables WHERE tablename = 'u'), \
                    (SELECT rolsuper FROM pg_roles WHERE rolname = session_user)", &[])
        .await
        .expect("who");
    assert_eq!(
        row.get::<_, String>(0),
        owner,
        "the twin's sessions run as the owner"
    );
    assert_eq!(
        row.get::<_, String>(1),
        owner,
        "its tables belong to the owner"
    );
    assert!(!row.get::<_, bool>(2), "the twin is no superuser");
    connect(fixture.pg_port, owner, "first password", db)
        .await
        .expect("old still works");

    // Step 3: the owner login is retired; open sessions carry on.
    let step3 = Logins::single(Login::new(&twin, "second password"));
    ensure_service_logins(&admin, owner, db, &step3, None)
        .await
        .expect("retire");
    let refused = connect(fixture.pg_port, owner, "first password", db)
        .await
        .expect_err("retired");
    assert!(
        db_message(&refused).contains("not permitted to log in"),
        "{refused:?}"
    );
    a.query_one("SELECT count(*) FROM t", &[])
        .await
        .expect("open session lives on");
    // The next rotation goes back to the owner with a fresh password.
    let step4 = Logins {
        current: Login::new(owner, "third password"),
        next: None,
        previous: Some(Login::new(&twin, "second password")),
    };
    ensure_service_logins(&admin, owner, db, &step4, None)
        .await
        .expect("again");
    connect(fixture.pg_port, owner, "third password", db)
        .await
        .expect("owner is back");
    // A twin someone made a superuser by hand is repaired.
    admin
        .batch_execute(&format!("ALTER ROLE \"{twin}\" SUPERUSER"))
        .await
        .expect("drift");
    let fixed = ensure_service_logins(&admin, owner, db, &step4, None)
        .await
        .expect("repair");
    assert!(fixed.role_attributes_fixed, "{fixed:?}");

    let user = ServiceUser {
        role: owner.into(),
        password: String::new(),
        database: db.into(),
    };
    drop(a);
    drop(b);
    drop_service_database(&admin, &user, None)
        .await
        .expect("drop");
    let left: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_roles WHERE rolname IN ($1, $2)",
            &[&owner, &twin],
        )
        .await
        .expect("roles")
        .get(0);
    assert_eq!(left, 0, "both logins are gone");
    assert_eq!(process.terminate().code(), Some(0));
}

/// As on a shared server: what the library makes carries the service's
/// marker; what it did not make (unmarked, or another service's) is refused
/// unchanged and never dropped; two services racing for one name cannot
/// both get it.
#[tokio::test(flavor = "multi_thread")]
async fn markers_claim_names_on_the_server() {
    let fixture = Fixture::new();
    let mut process = fixture.start();
    process.wait_ready(&fixture).await;
    let admin = fixture
        .connect_admin(&fixture.admin_password)
        .await
        .expect("admin logs in");
    let ours = marker("uid-a", "shop/orders", false);
    let theirs = marker("uid-b", "shop-x/orders", false);
    let logins = Logins::single(Login::new("m_orders", "password a"));

    let made = ensure_service_logins(&admin, "m_orders", "m_orders", &logins, Some(&ours))
        .await
        .expect("made");
    assert!(made.role_created && made.database_created, "{made:?}");
    assert_eq!(
        ensure_service_logins(&admin, "m_orders", "m_orders", &logins, Some(&ours))
            .await
            .expect("repeat"),
        Changes::default(),
        "a repeat writes nothing"
    );
    let text = comment_of_role(&admin, "m_orders").await.expect("marked");
    assert!(
        text.contains("uid-a") && text.contains("shop/orders"),
        "{text}"
    );

    // Another service with the same names is refused and drops nothing.
    let other = Logins::single(Login::new("m_orders", "password b"));
    let refused = ensure_service_logins(&admin, "m_orders", "m_orders", &other, Some(&theirs))
        .await
        .expect_err("refused");
    assert_eq!(refused.category(), "name_conflict");
    let message = refused.to_string();
    assert!(
        message.contains("role m_orders") && message.contains("shop/orders"),
        "{message}"
    );
    let user = ServiceUser {
        role: "m_orders".into(),
        password: String::new(),
        database: "m_orders".into(),
    };
    drop_service_database(&admin, &user, Some(&theirs))
        .await
        .expect("drops nothing");
    connect(fixture.pg_port, "m_orders", "password a", "m_orders")
        .await
        .expect("the owner's login and database are untouched");

    // A database left unmarked between CREATE DATABASE and its comment is
    // owned by our own role: marked again, not refused.
    admin
        .batch_execute("COMMENT ON DATABASE m_orders IS NULL")
        .await
        .expect("unmark");
    let remarked = ensure_service_logins(&admin, "m_orders", "m_orders", &logins, Some(&ours))
        .await
        .expect("remarked");
    assert!(remarked.owner_changed, "{remarked:?}");

    // A role the DBA made is refused, its password kept; a service given
    // its logins before markers existed adopts its own unmarked role.
    admin
        .batch_execute("CREATE ROLE m_theirs LOGIN PASSWORD 'their password'")
        .await
        .expect("pre-create");
    let mine = Logins::single(Login::new("m_theirs", "my password"));
    let refused = ensure_service_logins(&admin, "m_theirs", "m_theirs", &mine, Some(&ours))
        .await
        .expect_err("refused");
    assert_eq!(refused.category(), "name_conflict", "{refused}");
    connect(fixture.pg_port, "m_theirs", "their password", "postgres")
        .await
        .expect("the password is not changed");
    let legacy = marker("uid-c", "shop/legacy", true);
    ensure_service_logins(&admin, "m_theirs", "m_theirs", &mine, Some(&legacy))
        .await
        .expect("adopted");
    assert!(
        comment_of_role(&admin, "m_theirs")
            .await
            .is_some_and(|c| c.contains("uid-c"))
    );

    // Two services racing for one fresh name: one gets it.
    let second = fixture
        .connect_admin(&fixture.admin_password)
        .await
        .expect("second admin session");
    let race_logins = Logins::single(Login::new("m_race", "password"));
    let (a, b) = tokio::join!(
        ensure_service_logins(&admin, "m_race", "m_race", &race_logins, Some(&ours)),
        ensure_service_logins(&second, "m_race", "m_race", &race_logins, Some(&theirs)),
    );
    assert!(
        a.is_ok() != b.is_ok(),
        "exactly one of two racing services gets the name: {a:?} / {b:?}"
    );
    let loser = a.err().or(b.err()).expect("one lost");
    assert_eq!(loser.category(), "name_conflict", "{loser}");

    // Deletion drops what carries the marker.
    drop_service_database(&admin, &user, Some(&ours))
        .await
        .expect("drop");
    let left: i64 = admin
        .query_one(
            "SELECT (SELECT count(*) FROM pg_roles WHERE rolname = 'm_orders') \
                  + (SELECT count(*) FROM pg_database WHERE datname = 'm_orders')",
            &[],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(left, 0, "the service's own role and database are gone");
    assert_eq!(process.terminate().code(), Some(0));
}

/// `isolation: Schema`: one shared database, a schema per service owned by
/// its role, nothing else reachable.
#[tokio::test(flavor = "multi_thread")]
async fn schemas_isolate_services_in_one_database() {
    let fixture = Fixture::new();
    let mut process = fixture.start();
    process.wait_ready(&fixture).await;
    let admin = fixture
        .connect_admin(&fixture.admin_password)
        .await
        .expect("admin logs in");
    let shared_db = "services";
    assert!(ensure_schema_database(&admin, shared_db).await.expect("db"));
    assert!(
        !ensure_schema_database(&admin, shared_db)
            .await
            .expect("again")
    );
    let shared = fixture
        .connect_admin_to(&fixture.admin_password, shared_db)
        .await
        .expect("admin in shared db");
    for (svc, pw) in [("svc_a", "password a"), ("svc_b", "password b")] {
        ensure_service_schema(
            &admin,
            &shared,
            svc,
            shared_db,
            &Logins::single(Login::new(svc, pw)),
            None,
        )
        .await
        .expect("schema");
    }
    assert_eq!(
        ensure_service_schema(
            &admin,
            &shared,
            "svc_a",
            shared_db,
            &Logins::single(Login::new("svc_a", "password a")),
            None,
        )
        .await
        .expect("repeat"),
        Changes::default()
    );
    let a = connect(fixture.pg_port, "svc_a", "password a", shared_db)
        .await
        .expect("a");
    let b = connect(fixture.pg_port, "svc_b", "password b", shared_db)
        .await
        .expect("b");
    a.batch_execute("CREATE TABLE orders (id int); INSERT INTO orders VALUES (1)")
        .await
        .expect("a writes");
    b.batch_execute("CREATE TABLE invoices (id int)")
        .await
        .expect("b writes");
    for (client, sql) in [
        (&b, "SELECT * FROM svc_a.orders"),
        (&a, "SELECT * FROM svc_b.invoices"),
        (&a, "CREATE TABLE public.x (id int)"),
        (&a, "CREATE TABLE svc_b.x (id int)"),
        (&a, "CREATE SCHEMA mine"),
    ] {
        let err = client.batch_execute(sql).await.expect_err(sql);
        assert_eq!(
            err.code(),
            Some(&SqlState::INSUFFICIENT_PRIVILEGE),
            "{sql}: {err:?}"
        );
    }
    drop(b);
    drop_service_schema(&admin, &shared, "svc_b", None)
        .await
        .expect("drop");
    drop_service_schema(&admin, &shared, "svc_b", None)
        .await
        .expect("drop again converges");
    let (schemas, roles): (i64, i64) = {
        let row = shared
            .query_one(
                "SELECT (SELECT count(*) FROM pg_namespace WHERE nspname = 'svc_b'), \
                               (SELECT count(*) FROM pg_roles WHERE rolname LIKE 'svc_b%')",
                &[],
            )
            .await
            .expect("inspect");
        (row.get(0), row.get(1))
    };
    assert_eq!((schemas, roles), (0, 0));
    let n: i64 = a
        .query_one("SELECT count(*) FROM orders", &[])
        .await
        .expect("a reads")
        .get(0);
    assert_eq!(n, 1, "the other service is untouched");
    assert_eq!(process.terminate().code(), Some(0));
}
