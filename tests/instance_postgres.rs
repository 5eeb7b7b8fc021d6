//! `servicedb instance --engine postgres` as the kubelet runs it: the real
//! binary, as an unprivileged user, against Debian's PostgreSQL 15, with
//! Secrets laid out and updated the way the kubelet does it.
//!
//! Needs root (to run the instance manager as the `postgres` system user)
//! and the postgresql-15 package.

mod common;
#[path = "instance_common/postgres.rs"]
mod instance;

use instance::*;

use common::http_get;
use common::random;
use std::process::Command;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use servicedb::engine::logins::{self};
use tokio_postgres::error::SqlState;

#[tokio::test(flavor = "multi_thread")]
async fn provisions_a_private_least_privilege_database() {
    let fixture = Fixture::new();
    let mut process = fixture.start();

    let before = process.wait_ready(&fixture).await;
    assert!(
        before.first().is_some_and(|(code, _)| *code == 503),
        "/readyz must answer 503 until the server accepts connections; saw {before:?}"
    );
    assert!(
        before
            .iter()
            .any(|(_, body)| body.contains("not running") || body.contains("not accepting")),
        "503 answers say why: {before:?}"
    );
    assert_eq!(
        http_get(fixture.status_port, "/healthz").map(|(code, _)| code),
        Some(200)
    );

    // The service logs in over TCP with the generated password.
    let service = fixture
        .connect_service(&fixture.service.password)
        .await
        .expect("the service logs in with its password");
    let row = service
        .query_one(
            "SELECT current_user::text, current_database()::text, \
                    pg_get_userbyid(d.datdba)::text, r.rolsuper, r.rolcreaterole, r.rolcreatedb \
             FROM pg_database d, pg_roles r \
             WHERE d.datname = current_database() AND r.rolname = current_user",
            &[],
        )
        .await
        .expect("query");
    assert_eq!(row.get::<_, String>(0), fixture.service.role);
    assert_eq!(row.get::<_, String>(1), fixture.service.database);
    assert_eq!(
        row.get::<_, String>(2),
        fixture.service.role,
        "owns its database"
    );
    assert!(!row.get::<_, bool>(3), "not a superuser");
    assert!(!row.get::<_, bool>(4), "no CREATEROLE");
    assert!(!row.get::<_, bool>(5), "no CREATEDB");
    service
        .batch_execute("CREATE TABLE orders (id int PRIMARY KEY); INSERT INTO orders VALUES (1)")
        .await
        .expect("the owner can use its database");
    let denied = service
        .batch_execute("CREATE ROLE sneaky LOGIN")
        .await
        .expect_err("the service cannot create roles");
    assert_eq!(
        denied.code(),
        Some(&SqlState::INSUFFICIENT_PRIVILEGE),
        "{denied:?}"
    );

    let wrong = fixture
        .connect_service("not-the-password")
        .await
        .expect_err("a wrong password is rejected");
    assert_eq!(wrong.code(), Some(&SqlState::INVALID_PASSWORD));

    // Another role can log in to the server but not into the service's database.
    let admin = fixture
        .connect_admin(&fixture.admin_password)
        .await
        .expect("the admin logs in over TCP");
    admin
        .batch_execute("CREATE ROLE intruder LOGIN PASSWORD 'intruder-pw'")
        .await
        .expect("create another role");
    connect(fixture.pg_port, "intruder", "intruder-pw", "postgres")
        .await
        .expect("the other role can log in to its own database");
    let refused = connect(
        fixture.pg_port,
        "intruder",
        "intruder-pw",
        &fixture.service.database,
    )
    .await
    .expect_err("the other role cannot connect to the service's database");
    assert!(
        db_message(&refused).contains("permission denied for database"),
        "{refused:?}"
    );

    let hba = std::fs::read_to_string(fixture.pgdata().join("pg_hba.conf")).expect("pg_hba.conf");
    assert!(!hba.contains("trust"), "pg_hba.conf:\n{hba}");
    let log = process.log();
    assert!(
        !log.contains(&fixture.service.password),
        "the service password leaked into the log"
    );
    assert!(
        !log.contains(&fixture.admin_password),
        "the admin password leaked into the log"
    );
    assert!(
        !fixture.data_dir().join("run/initdb.pwfile").exists(),
        "initdb's password file is removed"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn applies_changed_passwords_without_restarting_the_server() {
    let fixture = Fixture::new();
    let mut process = fixture.start();
    process.wait_ready(&fixture).await;
    let postmaster = fixture.postmaster_pid().expect("postmaster.pid");
    let old = fixture.service.password.clone();
    fixture
        .connect_service(&old)
        .await
        .expect("old password works");

    let new = format!("{}-rotated'\\", random(20));
    fixture.write_app_secret(&new);
    eventually("the new service password works", &process, || async {
        fixture.connect_service(&new).await.ok()
    })
    .await;
    let rejected = fixture
        .connect_service(&old)
        .await
        .expect_err("the old service password is rejected");
    assert_eq!(rejected.code(), Some(&SqlState::INVALID_PASSWORD));

    let new_admin = random(24);
    fixture.write_admin_secret(&new_admin);
    eventually("the new admin password works", &process, || async {
        fixture.connect_admin(&new_admin).await.ok()
    })
    .await;
    let rejected = fixture
        .connect_admin(&fixture.admin_password)
        .await
        .expect_err("the old admin password is rejected");
    assert_eq!(rejected.code(), Some(&SqlState::INVALID_PASSWORD));

    assert_eq!(
        fixture.postmaster_pid(),
        Some(postmaster),
        "postgres was not restarted"
    );
    assert!(process.exited().is_none());
    assert_eq!(fixture.readyz().map(|(code, _)| code), Some(200));
    let log = process.log();
    assert!(
        !log.contains(&new),
        "the new service password leaked into the log"
    );
    assert!(
        !log.contains(&new_admin),
        "the new admin password leaked into the log"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn stops_cleanly_on_sigterm_and_restarts_with_its_data() {
    let fixture = Fixture::new();
    let mut process = fixture.start();
    process.wait_ready(&fixture).await;
    let service = fixture
        .connect_service(&fixture.service.password)
        .await
        .expect("service logs in");
    service
        .batch_execute("CREATE TABLE kept (n int); INSERT INTO kept SELECT generate_series(1, 3)")
        .await
        .expect("write data");
    drop(service);
    let before = verifiers(&fixture).await;
    assert_eq!(before.len(), 2);
    let postmaster = fixture.postmaster_pid().expect("postmaster.pid");

    let status = process.terminate();
    assert_eq!(
        status.code(),
        Some(0),
        "exit status; log:\n{}",
        process.log()
    );
    assert!(
        !fixture.pgdata().join("postmaster.pid").exists(),
        "postmaster.pid removed by a clean shutdown"
    );
    assert!(
        process.log().contains("database system is shut down"),
        "log:\n{}",
        process.log()
    );
    assert_eq!(
        kill(Pid::from_raw(postmaster), None),
        Err(nix::errno::Errno::ESRCH),
        "the postmaster is gone"
    );

    let mut restarted = fixture.start();
    restarted.wait_ready(&fixture).await;
    assert!(
        restarted.log().contains("found an existing data directory"),
        "log:\n{}",
        restarted.log()
    );
    let service = fixture
        .connect_service(&fixture.service.password)
        .await
        .expect("the same service password works after a restart");
    let count: i64 = service
        .query_one("SELECT count(*) FROM kept", &[])
        .await
        .expect("the table survived")
        .get(0);
    assert_eq!(count, 3);
    let after = verifiers(&fixture).await;
    assert_eq!(before, after, "a restart changes no password");
    assert_eq!(restarted.terminate().code(), Some(0));
}

#[tokio::test(flavor = "multi_thread")]
async fn applies_an_admin_password_rotated_while_stopped() {
    let fixture = Fixture::new();
    let mut process = fixture.start();
    process.wait_ready(&fixture).await;
    assert_eq!(process.terminate().code(), Some(0));

    // The Secret changed while the instance was down: the server still has
    // the old password, which the Secret no longer mentions.
    let new_admin = random(24);
    fixture.write_admin_secret(&new_admin);
    let mut process = fixture.start();
    let reason = eventually("/readyz reports the rejected admin", &process, || async {
        fixture
            .readyz()
            .filter(|(code, body)| *code == 503 && body.contains("admin_rejected"))
    })
    .await;
    assert_eq!(reason.1, "user sync failed: admin_rejected");
    assert!(process.exited().is_none(), "it keeps serving while unready");

    // With the old password as `previous-password` it connects and applies the new one.
    fixture.write_admin_secret_with_previous(&new_admin, &fixture.admin_password);
    process.wait_ready(&fixture).await;
    fixture
        .connect_admin(&new_admin)
        .await
        .expect("the new admin password works");
    let rejected = fixture
        .connect_admin(&fixture.admin_password)
        .await
        .expect_err("the old admin password is rejected");
    assert_eq!(rejected.code(), Some(&SqlState::INVALID_PASSWORD));
    assert_eq!(process.terminate().code(), Some(0));
}

#[tokio::test(flavor = "multi_thread")]
async fn exits_non_zero_when_the_server_dies() {
    let fixture = Fixture::new();
    let mut process = fixture.start();
    process.wait_ready(&fixture).await;
    let postmaster = fixture.postmaster_pid().expect("postmaster.pid");
    kill(Pid::from_raw(postmaster), Signal::SIGKILL).expect("kill the postmaster");
    let status = process.wait_exit(Duration::from_secs(30));
    assert!(
        !status.success(),
        "must exit non-zero so the kubelet restarts it"
    );
    assert!(
        process.log().contains("postgres exited unexpectedly"),
        "log:\n{}",
        process.log()
    );
}

/// The instance manager applies a rotation written into the app Secret:
/// the next login is made before the switch, the previous one is retired
/// once it leaves the Secret.
#[tokio::test(flavor = "multi_thread")]
async fn the_instance_manager_applies_a_rotation_from_the_secret() {
    let fixture = Fixture::new();
    let mut process = fixture.start();
    process.wait_ready(&fixture).await;
    let s = &fixture.service;
    let twin = logins::twin(&s.role);
    fixture.write_app_secret_entries(&[
        ("username", &s.role),
        ("password", &s.password),
        ("next-username", &twin),
        ("next-password", "the next one"),
        ("database", &s.database),
    ]);
    eventually("the next login to work", &process, || async {
        connect(fixture.pg_port, &twin, "the next one", &s.database)
            .await
            .ok()
    })
    .await;
    connect(fixture.pg_port, &s.role, &s.password, &s.database)
        .await
        .expect("current still works");
    fixture.write_app_secret_entries(&[
        ("username", &twin),
        ("password", "the next one"),
        ("database", &s.database),
    ]);
    eventually("the previous login to be retired", &process, || async {
        connect(fixture.pg_port, &s.role, &s.password, &s.database)
            .await
            .err()
    })
    .await;
    connect(fixture.pg_port, &twin, "the next one", &s.database)
        .await
        .expect("the new login");
    assert_eq!(process.terminate().code(), Some(0));
}

#[test]
fn refuses_to_run_as_root() {
    if !nix::unistd::geteuid().is_root() {
        panic!("this test suite must run as root (it switches to the postgres user)");
    }
    let root = tempfile::tempdir().expect("tempdir");
    let output = Command::new(common::servicedb_binary())
        .args(["instance", "--engine", "postgres", "--bin-dir", PG_BIN])
        .arg("--data-dir")
        .arg(root.path().join("data"))
        .args(["--status-port", &common::free_port().to_string()])
        .output()
        .expect("run servicedb instance");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("refusing to run as root"),
        "stderr: {stderr}"
    );
    assert!(!root.path().join("data").exists(), "nothing was created");
}

/// The admin Secret with `spec.postgres.parameters` rendered as the
/// operator renders them.
fn write_parameters(fixture: &Fixture, parameters: &[(&str, &str)]) {
    use servicedb::engine::postgres_parameters::{SECRET_KEY, render};
    let parameters = parameters
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    fixture.write_secret(
        &fixture.admin_dir(),
        &[
            ("username", &fixture.admin_user),
            ("password", &fixture.admin_password),
            (SECRET_KEY, &render(&parameters)),
        ],
    );
}

async fn show(fixture: &Fixture, parameter: &str) -> String {
    let admin = fixture
        .connect_admin(&fixture.admin_password)
        .await
        .expect("admin logs in");
    admin
        .query_one(&format!("SHOW {parameter}"), &[])
        .await
        .expect("SHOW")
        .get(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn applies_parameters_live_and_starts_without_ones_postgres_refuses() {
    let fixture = Fixture::new();
    write_parameters(&fixture, &[("work_mem", "12MB"), ("max_connections", "42")]);
    let mut process = fixture.start();
    process.wait_ready(&fixture).await;
    assert_eq!(show(&fixture, "work_mem").await, "12MB");
    assert_eq!(
        show(&fixture, "max_connections").await,
        "42",
        "the service's parameters win over servicedb's defaults"
    );
    let postmaster = fixture.postmaster_pid().expect("postmaster.pid");

    // A reloadable parameter changes in the running server.
    write_parameters(&fixture, &[("work_mem", "24MB"), ("max_connections", "42")]);
    eventually("work_mem reloaded", &process, || async {
        (show(&fixture, "work_mem").await == "24MB").then_some(())
    })
    .await;
    assert_eq!(fixture.postmaster_pid(), Some(postmaster), "no restart");
    assert!(process.log().contains("parameters reloaded"));

    // Every parameter this server reads only at start is one servicedb
    // either manages or rolls the pod for.
    let admin = fixture
        .connect_admin(&fixture.admin_password)
        .await
        .expect("admin logs in");
    let postmaster_only: Vec<String> = admin
        .query(
            "SELECT name FROM pg_settings WHERE context = 'postmaster'",
            &[],
        )
        .await
        .expect("pg_settings")
        .iter()
        .map(|row| row.get(0))
        .collect();
    use servicedb::engine::postgres_parameters::{is_managed, needs_restart};
    let unknown: Vec<&String> = postmaster_only
        .iter()
        .filter(|name| !is_managed(name) && !needs_restart(name))
        .collect();
    assert!(
        unknown.is_empty(),
        "read at start only, yet reloaded: {unknown:?}"
    );
    assert!(needs_restart("shared_buffers") && !needs_restart("work_mem"));

    // A value PostgreSQL refuses: the reload keeps the running value and
    // says so; a start with it begins without the parameters, not a crash loop.
    write_parameters(&fixture, &[("work_mem", "banana")]);
    eventually("the refusal logged", &process, || async {
        process
            .log()
            .contains("PostgreSQL refuses a parameter")
            .then_some(())
    })
    .await;
    assert_eq!(show(&fixture, "work_mem").await, "24MB");
    assert_eq!(process.terminate().code(), Some(0));
    let mut restarted = fixture.start();
    restarted.wait_ready(&fixture).await;
    assert!(
        restarted
            .log()
            .contains("PostgreSQL refuses spec.postgres.parameters; starting without them"),
        "log:\n{}",
        restarted.log()
    );
    assert_eq!(
        show(&fixture, "work_mem").await,
        "4MB",
        "PostgreSQL's default"
    );
    assert_eq!(restarted.terminate().code(), Some(0));
}
