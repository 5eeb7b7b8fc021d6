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

use crate::common::free_port;
use crate::common::{owned_tempdir, owned_tempdir_in, system_user};

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
    /// Serves TLS only (`hostssl`), with a certificate from this CA.
    pub tls: Option<TestCa>,
    /// Extra `-c name=value` settings of every start.
    settings: Vec<String>,
}

/// A throw-away CA and a server certificate for 127.0.0.1/localhost, made
/// with the openssl command line.
pub struct TestCa {
    pub ca_pem: String,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

impl TestCa {
    /// A CA whose files belong to the user running the test (a client's
    /// view of a CA, or a server the test runs as itself).
    #[allow(dead_code)] // each test crate uses a subset of these helpers
    pub fn owned_by_me(dir: &Path) -> TestCa {
        let me = User::from_uid(nix::unistd::getuid())
            .ok()
            .flatten()
            .expect("the current user");
        TestCa::new(dir, &me)
    }

    pub fn new(dir: &Path, user: &User) -> TestCa {
        let run = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(dir)
                .output()
                .expect("openssl (Debian package openssl)");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        std::fs::write(
            dir.join("san.ext"),
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
        )
        .expect("ext");
        run(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "2",
            "-subj",
            "/CN=servicedb-test-ca",
        ]);
        run(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
        ]);
        run(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "2",
            "-extfile",
            "san.ext",
        ]);
        for file in ["server.key", "server.crt", "ca.crt"] {
            let path = dir.join(file);
            std::os::unix::fs::chown(&path, Some(user.uid.as_raw()), Some(user.gid.as_raw()))
                .expect("chown");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        }
        TestCa {
            ca_pem: std::fs::read_to_string(dir.join("ca.crt")).expect("ca.crt"),
            cert: dir.join("server.crt"),
            key: dir.join("server.key"),
            ca: dir.join("ca.crt"),
        }
    }
}

impl Postgres {
    /// A server that accepts TLS connections only.
    pub fn start_new_tls() -> Postgres {
        let mut pg = Postgres::start_new();
        pg.stop();
        let ca = TestCa::new(pg.dir.path(), &pg.user);
        write_owned(
            &pg.dir.path().join("data/pg_hba.conf"),
            "local all all scram-sha-256\nhostssl all all 127.0.0.1/32 scram-sha-256\n",
            &pg.user,
        );
        pg.tls = Some(ca);
        pg.start();
        pg
    }

    pub fn start_new() -> Postgres {
        Postgres::start_new_with("/tmp", &[])
    }

    /// A server with its data under `base` (the benchmark puts it on tmpfs)
    /// and extra `name=value` settings.
    pub fn start_new_with(base: &str, settings: &[&str]) -> Postgres {
        assert!(
            Path::new(PG_BIN).join("postgres").exists(),
            "PostgreSQL 15 binaries not found in {PG_BIN}; install postgresql-15"
        );
        let user = system_user("postgres", "postgresql-15");
        let dir = owned_tempdir_in(base, "sdbpg", &user);
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
            tls: None,
            settings: settings.iter().map(|s| s.to_string()).collect(),
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
            .args(self.settings.iter().flat_map(|s| ["-c", s.as_str()]))
            .args(self.tls.iter().flat_map(|ca| {
                [
                    "-c".to_string(),
                    "ssl=on".to_string(),
                    "-c".to_string(),
                    format!("ssl_cert_file={}", ca.cert.display()),
                    "-c".to_string(),
                    format!("ssl_key_file={}", ca.key.display()),
                ]
            }))
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
    /// The TLS port beside the plain one, when started with TLS.
    pub tls_port: Option<u16>,
    pub tls: Option<TestCa>,
}

impl Redis {
    /// A server that also serves TLS on `tls_port` (no client certificates).
    pub fn start_new_tls() -> Redis {
        let mut redis = Redis::start_new();
        redis.stop();
        let ca = TestCa::new(redis.dir.path(), &redis.user);
        let port = free_port();
        let conf = redis.dir.path().join("redis.conf");
        let mut config = std::fs::read_to_string(&conf).expect("redis.conf");
        config.push_str(&format!(
            "tls-port {port}\ntls-cert-file {}\ntls-key-file {}\ntls-ca-cert-file {}\ntls-auth-clients no\n",
            ca.cert.display(),
            ca.key.display(),
            ca.ca.display()
        ));
        write_owned(&conf, &config, &redis.user);
        redis.tls_port = Some(port);
        redis.tls = Some(ca);
        redis.start();
        redis
    }

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
            tls_port: None,
            tls: None,
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
