//! `servicedb instance --engine postgres` as the kubelet runs it: the real
//! binary, as an unprivileged user, against Debian's PostgreSQL 15, with
//! Secrets laid out and updated the way the kubelet does it.
//!
//! Needs root (to run the instance manager as the `postgres` system user)
//! and the postgresql-15 package.

mod common;

use common::http_get;
use common::random;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::{Pid, User};
use servicedb::engine::logins::{self, Login, Logins, Marker};
use servicedb::engine::postgres_users::{
    Changes, ServiceUser, drop_service_database, drop_service_schema, ensure_schema_database,
    ensure_service_database, ensure_service_logins, ensure_service_schema, set_password,
};
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, NoTls};

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";
const READY_TIMEOUT: Duration = Duration::from_secs(90);

#[derive(Clone)]
struct Service {
    role: String,
    password: String,
    database: String,
}

/// Directories, ports and credentials of one instance; they outlive the
/// process so that a restart finds the same volume.
struct Fixture {
    root: tempfile::TempDir,
    user: User,
    pg_port: u16,
    status_port: u16,
    admin_user: String,
    admin_password: String,
    service: Service,
    secret_versions: AtomicU32,
}

impl Fixture {
    fn new() -> Fixture {
        assert!(
            Path::new(PG_BIN).join("postgres").exists(),
            "PostgreSQL 15 binaries not found in {PG_BIN}; install postgresql-15"
        );
        let user = common::system_user("postgres", "postgresql-15");
        let root = common::owned_tempdir("sdb", &user);
        let fixture = Fixture {
            root,
            user,
            pg_port: common::free_port(),
            status_port: common::free_port(),
            admin_user: "postgres".to_owned(),
            admin_password: random(24),
            service: Service {
                role: "Orders-svc".to_owned(),
                // Quotes, a backslash and a space: must survive intact.
                password: format!("{}'\"\\ ;$1", random(20)),
                database: "orders-db".to_owned(),
            },
            secret_versions: AtomicU32::new(0),
        };
        fixture.write_admin_secret(&fixture.admin_password.clone());
        fixture.write_app_secret(&fixture.service.password.clone());
        fixture
    }

    fn data_dir(&self) -> PathBuf {
        self.root.path().join("data")
    }
    fn pgdata(&self) -> PathBuf {
        self.data_dir().join("pgdata")
    }
    fn admin_dir(&self) -> PathBuf {
        self.root.path().join("admin")
    }
    fn app_dir(&self) -> PathBuf {
        self.root.path().join("app")
    }

    fn write_admin_secret(&self, password: &str) {
        self.write_secret(
            &self.admin_dir(),
            &[("username", &self.admin_user), ("password", password)],
        );
    }

    fn write_admin_secret_with_previous(&self, password: &str, previous: &str) {
        self.write_secret(
            &self.admin_dir(),
            &[
                ("username", &self.admin_user),
                ("password", password),
                ("previous-password", previous),
            ],
        );
    }

    fn write_app_secret_entries(&self, entries: &[(&str, &str)]) {
        self.write_secret(&self.app_dir(), entries);
    }

    fn write_app_secret(&self, password: &str) {
        let s = &self.service;
        self.write_secret(
            &self.app_dir(),
            &[
                ("username", &s.role),
                ("password", password),
                ("database", &s.database),
                ("uri", "postgresql://ignored"),
            ],
        );
    }

    /// The kubelet's layout: `..<version>/` holds the files, `..data` links to
    /// the current version, each key links into `..data`; an update writes a
    /// new version and swaps `..data` atomically.
    fn write_secret(&self, dir: &Path, entries: &[(&str, &str)]) {
        std::fs::create_dir_all(dir).expect("mkdir secret dir");
        let n = self.secret_versions.fetch_add(1, Ordering::SeqCst);
        let version = format!("..v{n}");
        let version_dir = dir.join(&version);
        std::fs::create_dir(&version_dir).expect("mkdir version");
        for (key, value) in entries {
            // A trailing newline, as `kubectl create secret --from-file` often has.
            std::fs::write(version_dir.join(key), format!("{value}\n")).expect("write secret");
            std::fs::set_permissions(
                version_dir.join(key),
                std::fs::Permissions::from_mode(0o644),
            )
            .expect("chmod secret");
        }
        let previous = std::fs::read_link(dir.join("..data")).ok();
        std::os::unix::fs::symlink(&version, dir.join("..data_tmp")).expect("symlink");
        std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).expect("swap ..data");
        for (key, _) in entries {
            let link = dir.join(key);
            if link.symlink_metadata().is_err() {
                std::os::unix::fs::symlink(format!("..data/{key}"), link).expect("symlink key");
            }
        }
        if let Some(previous) = previous {
            std::fs::remove_dir_all(dir.join(previous)).expect("remove old version");
        }
    }

    fn start(&self) -> Process {
        let mut command = Command::new(common::servicedb_binary());
        command
            .args(["instance", "--engine", "postgres"])
            .arg("--data-dir")
            .arg(self.data_dir())
            .arg("--admin-secret-dir")
            .arg(self.admin_dir())
            .arg("--app-secret-dir")
            .arg(self.app_dir())
            .args(["--port", &self.pg_port.to_string()])
            .args(["--service-owner", &self.service.role])
            .args(["--listen-address", "127.0.0.1"])
            .args(["--status-port", &self.status_port.to_string()])
            .args(["--bin-dir", PG_BIN])
            .args(["--sync-interval", "1s"])
            .env("RUST_LOG", "info")
            .uid(self.user.uid.as_raw())
            .gid(self.user.gid.as_raw())
            .current_dir(self.root.path());
        Process::spawn(command, self.pgdata())
    }

    async fn connect_service(&self, password: &str) -> Result<Client, tokio_postgres::Error> {
        connect(
            self.pg_port,
            &self.service.role,
            password,
            &self.service.database,
        )
        .await
    }

    async fn connect_admin(&self, password: &str) -> Result<Client, tokio_postgres::Error> {
        connect(self.pg_port, &self.admin_user, password, "postgres").await
    }

    async fn connect_admin_to(
        &self,
        password: &str,
        database: &str,
    ) -> Result<Client, tokio_postgres::Error> {
        connect(self.pg_port, &self.admin_user, password, database).await
    }

    fn postmaster_pid(&self) -> Option<i32> {
        let text = std::fs::read_to_string(self.pgdata().join("postmaster.pid")).ok()?;
        text.lines().next()?.trim().parse().ok()
    }

    fn readyz(&self) -> Option<(u16, String)> {
        http_get(self.status_port, "/readyz")
    }
}

/// The instance manager's process; killed (with its server) if a test
/// fails before stopping it.
struct Process {
    child: Child,
    log: Arc<Mutex<String>>,
    pgdata: PathBuf,
}

impl Process {
    fn spawn(mut command: Command, pgdata: PathBuf) -> Process {
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("spawn servicedb instance");
        let log = Arc::new(Mutex::new(String::new()));
        let stdout = child.stdout.take().expect("stdout piped");
        let stderr = child.stderr.take().expect("stderr piped");
        collect(stdout, log.clone());
        collect(stderr, log.clone());
        Process { child, log, pgdata }
    }

    fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    fn log(&self) -> String {
        self.log.lock().expect("log lock").clone()
    }

    fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("try_wait")
    }

    fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exited() {
                // Let the log readers drain the pipes.
                std::thread::sleep(Duration::from_millis(200));
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "instance manager did not exit within {timeout:?}; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Polls /readyz until 200; returns every status seen before it.
    async fn wait_ready(&mut self, fixture: &Fixture) -> Vec<(u16, String)> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut seen = Vec::new();
        loop {
            if let Some(status) = self.exited() {
                panic!(
                    "instance manager exited early ({status}); log:\n{}",
                    self.log()
                );
            }
            if let Some((code, body)) = fixture.readyz() {
                if code == 200 {
                    return seen;
                }
                seen.push((code, body));
            }
            assert!(
                Instant::now() < deadline,
                "not ready within {READY_TIMEOUT:?}; last answers {:?}; log:\n{}",
                seen.last(),
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    fn terminate(&mut self) -> ExitStatus {
        kill(self.pid(), Signal::SIGTERM).expect("SIGTERM");
        self.wait_exit(Duration::from_secs(60))
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if self.exited().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        // The server dies with its parent (parent-death signal); make sure.
        if let Some(pid) = std::fs::read_to_string(self.pgdata.join("postmaster.pid"))
            .ok()
            .and_then(|text| text.lines().next()?.trim().parse::<i32>().ok())
        {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            if comm.trim() == "postgres" {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
    }
}

fn collect(stream: impl Read + Send + 'static, log: Arc<Mutex<String>>) {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            eprintln!("[instance] {line}");
            let mut log = log.lock().expect("log lock");
            log.push_str(&line);
            log.push('\n');
        }
    });
}

async fn connect(
    port: u16,
    user: &str,
    password: &str,
    database: &str,
) -> Result<Client, tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::Config::new()
        .host("127.0.0.1")
        .port(port)
        .user(user)
        .password(password)
        .dbname(database)
        .connect_timeout(Duration::from_secs(5))
        .connect(NoTls)
        .await?;
    tokio::spawn(connection);
    Ok(client)
}

fn db_message(error: &tokio_postgres::Error) -> String {
    error
        .as_db_error()
        .map(|db| db.message().to_owned())
        .unwrap_or_else(|| error.to_string())
}

/// Retries `attempt` until it returns `Some` (the sync interval is 1 s).
async fn eventually<T, F, Fut>(what: &str, process: &Process, mut attempt: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(value) = attempt().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for: {what}; log:\n{}",
            process.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

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

/// The stored SCRAM verifiers: a fresh random salt on every password change
/// makes any rewrite visible.
async fn verifiers(fixture: &Fixture) -> Vec<(String, String)> {
    let admin = fixture
        .connect_admin(&fixture.admin_password)
        .await
        .expect("admin logs in");
    admin
        .query(
            "SELECT rolname::text, rolpassword FROM pg_authid WHERE rolname IN ($1, $2) ORDER BY 1",
            &[&fixture.service.role, &fixture.admin_user],
        )
        .await
        .expect("read verifiers")
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect()
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

fn marker(uid: &str, service: &str, adopt_unmarked: bool) -> Marker {
    Marker {
        uid: uid.into(),
        service: service.into(),
        server: "infra/pg".into(),
        adopt_unmarked,
        adopt_predecessor: false,
    }
}

async fn comment_of_role(admin: &Client, role: &str) -> Option<String> {
    admin
        .query_one(
            "SELECT shobj_description(oid, 'pg_authid') FROM pg_roles WHERE rolname = $1",
            &[&role],
        )
        .await
        .expect("role")
        .get(0)
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
