//! Real database servers for the e2e tests: Debian's PostgreSQL 15 and
//! redis-server, each in its own temporary directory on a free loopback
//! port, with an administrator and a random password. They run as the
//! engines' system users (the tests run as root, which PostgreSQL refuses).
//! Dropping a server stops it; `stop()` and `start()` take it down and bring
//! it back on the same port with the same data.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::{Pid, User};
use rand::distr::{Alphanumeric, SampleString};

use crate::common::{owned_tempdir, system_user};
use crate::harness::free_port;

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";
const REDIS_SERVER: &str = "/usr/bin/redis-server";
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// A random alphanumeric password.
pub fn random_password() -> String {
    Alphanumeric.sample_string(&mut rand::rng(), 24)
}

fn write_owned(path: &Path, content: &str, user: &User) {
    let mut f = File::create(path).expect("create file");
    f.write_all(content.as_bytes()).expect("write file");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    std::os::unix::fs::chown(path, Some(user.uid.as_raw()), Some(user.gid.as_raw()))
        .expect("chown");
}

fn as_user(command: &mut Command, user: &User) {
    command
        .uid(user.uid.as_raw())
        .gid(user.gid.as_raw())
        .env("HOME", "/tmp")
        .current_dir("/tmp");
}

/// Stops a child we started: `signal`, then SIGKILL after 20 s.
fn terminate(child: &mut Child, signal: Signal) {
    let _ = kill(Pid::from_raw(child.id() as i32), signal);
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

fn wait_until(what: &str, log: &Path, child: &mut Child, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if ready() {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "{what} exited with {status}; log:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        if Instant::now() > deadline {
            panic!(
                "{what} not ready after {READY_TIMEOUT:?}; log:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A PostgreSQL 15 server with SCRAM-SHA-256 authentication.
pub struct Postgres {
    dir: tempfile::TempDir,
    user: User,
    child: Option<Child>,
    pub port: u16,
    pub admin_user: String,
    pub admin_password: String,
    /// What the server reports as `server_version`'s first word, such as `15.18`.
    pub version: String,
}

impl Postgres {
    pub fn start_new() -> Postgres {
        assert!(
            Path::new(PG_BIN).join("postgres").exists(),
            "PostgreSQL 15 binaries not found in {PG_BIN}; install postgresql-15"
        );
        let user = system_user("postgres", "postgresql-15");
        let dir = owned_tempdir("sdbpg", &user);
        let admin_user = "admin".to_owned();
        let admin_password = random_password();
        let pwfile = dir.path().join("pwfile");
        write_owned(&pwfile, &format!("{admin_password}\n"), &user);
        let mut initdb = Command::new(Path::new(PG_BIN).join("initdb"));
        initdb
            .arg("-D")
            .arg(dir.path().join("data"))
            .args(["-U", &admin_user, "--auth=scram-sha-256", "--no-sync"])
            .arg(format!("--pwfile={}", pwfile.display()))
            .stdin(Stdio::null());
        as_user(&mut initdb, &user);
        let out = initdb.output().expect("running initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let _ = std::fs::remove_file(&pwfile);
        let out = Command::new(Path::new(PG_BIN).join("postgres"))
            .arg("--version")
            .output()
            .expect("postgres --version");
        // "postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)"
        let version = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .nth(2)
            .expect("a version in postgres --version")
            .to_owned();
        let mut pg = Postgres {
            dir,
            user,
            child: None,
            port: free_port(),
            admin_user,
            admin_password,
            version,
        };
        pg.start();
        pg
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    /// Starts the server (again) and waits until it accepts connections.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "PostgreSQL is already running");
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.log())
            .expect("log file");
        let err = log.try_clone().expect("log file");
        let mut command = Command::new(Path::new(PG_BIN).join("postgres"));
        command
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-p", &self.port.to_string()])
            .args(["-c", "listen_addresses=127.0.0.1"])
            .arg("-c")
            .arg(format!(
                "unix_socket_directories={}",
                self.dir.path().display()
            ))
            .args(["-c", "fsync=off"])
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err);
        as_user(&mut command, &self.user);
        let mut child = command.spawn().expect("starting postgres");
        let port = self.port.to_string();
        wait_until("postgres", &self.log(), &mut child, || {
            Command::new(Path::new(PG_BIN).join("pg_isready"))
                .args(["-h", "127.0.0.1", "-p", &port, "-t", "1"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        });
        self.child = Some(child);
    }

    /// Stops the server (fast shutdown) and waits until it has exited.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            terminate(&mut child, Signal::SIGINT);
        }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A redis-server whose only user is an administrator (`default` is off).
pub struct Redis {
    dir: tempfile::TempDir,
    user: User,
    child: Option<Child>,
    pub port: u16,
    pub admin_user: String,
    pub admin_password: String,
    /// What `INFO server` reports as `redis_version`, such as `7.0.15`.
    pub version: String,
}

impl Redis {
    pub fn start_new() -> Redis {
        assert!(
            Path::new(REDIS_SERVER).exists(),
            "{REDIS_SERVER} not found; install redis-server"
        );
        let user = system_user("redis", "redis-server");
        let dir = owned_tempdir("sdbredis", &user);
        let out = Command::new(REDIS_SERVER)
            .arg("--version")
            .output()
            .expect("redis-server --version");
        // "Redis server v=7.0.15 sha=…"
        let version = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .find_map(|w| w.strip_prefix("v="))
            .expect("a version in redis-server --version")
            .to_owned();
        let mut redis = Redis {
            dir,
            user,
            child: None,
            port: free_port(),
            admin_user: "admin".to_owned(),
            admin_password: random_password(),
            version,
        };
        let config = format!(
            "port {port}\nbind 127.0.0.1\ndir {dir}\nsave \"\"\nappendonly no\n\
             daemonize no\nlogfile \"\"\nuser default off\n\
             user {admin} on >{password} ~* &* +@all\n",
            port = redis.port,
            dir = redis.dir.path().display(),
            admin = redis.admin_user,
            password = redis.admin_password,
        );
        write_owned(&redis.dir.path().join("redis.conf"), &config, &redis.user);
        redis.start();
        redis
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }

    /// Starts the server (again) and waits until it answers.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "redis-server is already running");
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.log())
            .expect("log file");
        let err = log.try_clone().expect("log file");
        let mut command = Command::new(REDIS_SERVER);
        command
            .arg(self.dir.path().join("redis.conf"))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err);
        as_user(&mut command, &self.user);
        let mut child = command.spawn().expect("starting redis-server");
        let port = self.port;
        wait_until("redis-server", &self.log(), &mut child, || answers(port));
        self.child = Some(child);
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            terminate(&mut child, Signal::SIGTERM);
        }
    }
}

/// Whether something on the port answers a RESP `PING` (with anything: the
/// `default` user is off, so the answer is `-NOAUTH`).
fn answers(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    if s.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).is_ok_and(|n| n > 0)
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}
