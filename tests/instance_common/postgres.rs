//! The PostgreSQL instance both test crates run: the real instance manager
//! binary as the `postgres` system user against Debian's PostgreSQL 15, with
//! its Secrets laid out as the kubelet does, and the helpers to talk to it.
#![allow(dead_code)] // each test crate uses a subset of these helpers

use crate::common::{http_get, random};
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
use servicedb::engine::logins::Marker;
use tokio_postgres::{Client, NoTls};

pub const PG_BIN: &str = "/usr/lib/postgresql/15/bin";
pub const READY_TIMEOUT: Duration = Duration::from_secs(90);

#[derive(Clone)]
pub struct Service {
    pub role: String,
    pub password: String,
    pub database: String,
}

/// Directories, ports and credentials of one instance; they outlive the
/// process so that a restart finds the same volume.
pub struct Fixture {
    pub root: tempfile::TempDir,
    pub user: User,
    pub pg_port: u16,
    pub status_port: u16,
    pub admin_user: String,
    pub admin_password: String,
    pub service: Service,
    pub secret_versions: AtomicU32,
}

impl Fixture {
    pub fn new() -> Fixture {
        assert!(
            Path::new(PG_BIN).join("postgres").exists(),
            "PostgreSQL 15 binaries not found in {PG_BIN}; install postgresql-15"
        );
        let user = crate::common::system_user("postgres", "postgresql-15");
        let root = crate::common::owned_tempdir("sdb", &user);
        let fixture = Fixture {
            root,
            user,
            pg_port: crate::common::free_port(),
            status_port: crate::common::free_port(),
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

    pub fn data_dir(&self) -> PathBuf {
        self.root.path().join("data")
    }
    pub fn pgdata(&self) -> PathBuf {
        self.data_dir().join("pgdata")
    }
    pub fn admin_dir(&self) -> PathBuf {
        self.root.path().join("admin")
    }
    pub fn app_dir(&self) -> PathBuf {
        self.root.path().join("app")
    }

    pub fn write_admin_secret(&self, password: &str) {
        self.write_secret(
            &self.admin_dir(),
            &[("username", &self.admin_user), ("password", password)],
        );
    }

    pub fn write_admin_secret_with_previous(&self, password: &str, previous: &str) {
        self.write_secret(
            &self.admin_dir(),
            &[
                ("username", &self.admin_user),
                ("password", password),
                ("previous-password", previous),
            ],
        );
    }

    pub fn write_app_secret_entries(&self, entries: &[(&str, &str)]) {
        self.write_secret(&self.app_dir(), entries);
    }

    pub fn write_app_secret(&self, password: &str) {
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
    pub fn write_secret(&self, dir: &Path, entries: &[(&str, &str)]) {
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

    pub fn start(&self) -> Process {
        let mut command = Command::new(crate::common::servicedb_binary());
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

    pub async fn connect_service(&self, password: &str) -> Result<Client, tokio_postgres::Error> {
        connect(
            self.pg_port,
            &self.service.role,
            password,
            &self.service.database,
        )
        .await
    }

    pub async fn connect_admin(&self, password: &str) -> Result<Client, tokio_postgres::Error> {
        connect(self.pg_port, &self.admin_user, password, "postgres").await
    }

    pub async fn connect_admin_to(
        &self,
        password: &str,
        database: &str,
    ) -> Result<Client, tokio_postgres::Error> {
        connect(self.pg_port, &self.admin_user, password, database).await
    }

    pub fn postmaster_pid(&self) -> Option<i32> {
        let text = std::fs::read_to_string(self.pgdata().join("postmaster.pid")).ok()?;
        text.lines().next()?.trim().parse().ok()
    }

    pub fn readyz(&self) -> Option<(u16, String)> {
        http_get(self.status_port, "/readyz")
    }
}

/// The instance manager's process; killed (with its server) if a test
/// fails before stopping it.
pub struct Process {
    pub child: Child,
    pub log: Arc<Mutex<String>>,
    pub pgdata: PathBuf,
}

impl Process {
    pub fn spawn(mut command: Command, pgdata: PathBuf) -> Process {
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

    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    pub fn log(&self) -> String {
        self.log.lock().expect("log lock").clone()
    }

    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("try_wait")
    }

    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
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
    pub async fn wait_ready(&mut self, fixture: &Fixture) -> Vec<(u16, String)> {
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

    pub fn terminate(&mut self) -> ExitStatus {
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

pub fn collect(stream: impl Read + Send + 'static, log: Arc<Mutex<String>>) {
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

pub async fn connect(
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

pub fn db_message(error: &tokio_postgres::Error) -> String {
    error
        .as_db_error()
        .map(|db| db.message().to_owned())
        .unwrap_or_else(|| error.to_string())
}

/// Retries `attempt` until it returns `Some` (the sync interval is 1 s).
pub async fn eventually<T, F, Fut>(what: &str, process: &Process, mut attempt: F) -> T
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

/// The stored SCRAM verifiers: a fresh random salt on every password change
/// makes any rewrite visible.
pub async fn verifiers(fixture: &Fixture) -> Vec<(String, String)> {
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

pub fn marker(uid: &str, service: &str, adopt_unmarked: bool) -> Marker {
    Marker {
        uid: uid.into(),
        service: service.into(),
        server: "infra/pg".into(),
        adopt_unmarked,
        adopt_predecessor: false,
    }
}

pub async fn comment_of_role(admin: &Client, role: &str) -> Option<String> {
    admin
        .query_one(
            "SELECT shobj_description(oid, 'pg_authid') FROM pg_roles WHERE rolname = $1",
            &[&role],
        )
        .await
        .expect("role")
        .get(0)
}
