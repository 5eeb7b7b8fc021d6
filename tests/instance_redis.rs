//! `servicedb instance --engine redis` as the kubelet runs it: the real
//! binary, as the unprivileged `redis` system user, against Debian's
//! redis-server, with Secrets laid out and swapped the way the kubelet does.
//! Every check is made with a Redis client, as an application would.
//!
//! Needs root (to switch to the `redis` user) and the redis-server package.

mod common;

use common::http_get;
use common::random;
use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use nix::sys::signal::{Signal, kill};
use nix::unistd::{Pid, User};
use redis::aio::MultiplexedConnection;
use redis::{
    AsyncConnectionConfig, ConnectionAddr, ErrorKind, IntoConnectionInfo, RedisConnectionInfo,
    RedisError, RedisResult, Value,
};
use servicedb::engine::redis_acl;
use tokio::io::{AsyncBufReadExt, BufReader};

const REDIS_BIN_DIR: &str = "/usr/bin";
const READY_TIMEOUT: Duration = Duration::from_secs(60);
const ADMIN: &str = "admin";
const SERVICE: &str = "cart";
const PREFIX: &str = "cart:";

/// A volume, two mounted Secrets and two ports; they outlive each
/// instance manager process so that a restart finds the same data.
struct Fixture {
    root: tempfile::TempDir,
    redis_user: User,
    port: u16,
    status_port: u16,
    secret_version: AtomicU32,
}

impl Fixture {
    fn new(admin_password: &str, app_password: &str) -> Fixture {
        assert!(
            Path::new(REDIS_BIN_DIR).join("redis-server").exists(),
            "redis-server not found in {REDIS_BIN_DIR}; install the redis-server package"
        );
        let redis_user = common::system_user("redis", "redis-server");
        let root = common::owned_tempdir("sdbr", &redis_user);
        let fixture = Fixture {
            root,
            redis_user,
            port: common::free_port(),
            status_port: common::free_port(),
            secret_version: AtomicU32::new(0),
        };
        fixture.set_admin_password(admin_password);
        fixture.set_app_password(app_password);
        fixture
    }

    fn data_dir(&self) -> PathBuf {
        self.root.path().join("data")
    }

    fn redis_dir(&self) -> PathBuf {
        self.data_dir().join("redis")
    }

    fn acl_file(&self) -> String {
        std::fs::read_to_string(self.redis_dir().join("users.acl")).expect("users.acl")
    }

    fn set_admin_password(&self, password: &str) {
        self.publish_secret("admin", &[("username", ADMIN), ("password", password)]);
    }

    fn set_app_password(&self, password: &str) {
        self.publish_secret(
            "app",
            &[
                ("username", SERVICE),
                ("password", password),
                ("keyPrefix", PREFIX),
                ("engine", "Redis"),
                ("uri", "redis://ignored"),
            ],
        );
    }

    /// As the kubelet updates a Secret volume: the files go into a fresh
    /// `..<version>` directory, the `..data` symlink is swapped to it in one
    /// rename, and each key is a symlink through `..data`.
    fn publish_secret(&self, name: &str, entries: &[(&str, &str)]) {
        let dir = self.root.path().join(name);
        std::fs::create_dir_all(&dir).expect("secret dir");
        let version = format!("..v{}", self.secret_version.fetch_add(1, Ordering::SeqCst));
        std::fs::create_dir(dir.join(&version)).expect("version dir");
        for (key, value) in entries {
            let file = dir.join(&version).join(key);
            // `kubectl create secret --from-file` often keeps a newline.
            std::fs::write(&file, format!("{value}\n")).expect("secret file");
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        }
        let old = std::fs::read_link(dir.join("..data")).ok();
        std::os::unix::fs::symlink(&version, dir.join("..data.new")).expect("symlink");
        std::fs::rename(dir.join("..data.new"), dir.join("..data")).expect("swap ..data");
        for (key, _) in entries {
            let _ = std::os::unix::fs::symlink(Path::new("..data").join(key), dir.join(key));
        }
        if let Some(old) = old {
            std::fs::remove_dir_all(dir.join(old)).expect("drop the old version");
        }
    }

    fn start(&self) -> Manager {
        self.start_from(Path::new(REDIS_BIN_DIR))
    }

    /// As the StatefulSet of a ServiceDatabase with `redis.scripting: true`.
    fn start_with_scripting(&self) -> Manager {
        let mut command = self.command(Path::new(REDIS_BIN_DIR));
        command.arg("--redis-scripting");
        Manager::spawn(command)
    }

    fn start_from(&self, bin_dir: &Path) -> Manager {
        Manager::spawn(self.command(bin_dir))
    }

    fn command(&self, bin_dir: &Path) -> tokio::process::Command {
        let mut command = tokio::process::Command::new(common::servicedb_binary());
        command
            .args(["instance", "--engine", "redis"])
            .arg("--data-dir")
            .arg(self.data_dir())
            .arg("--admin-secret-dir")
            .arg(self.root.path().join("admin"))
            .arg("--app-secret-dir")
            .arg(self.root.path().join("app"))
            .args(["--port", &self.port.to_string()])
            .args(["--listen-address", "127.0.0.1"])
            .args(["--status-port", &self.status_port.to_string()])
            .arg("--bin-dir")
            .arg(bin_dir)
            .args(["--sync-interval", "1s"])
            .env("RUST_LOG", "info")
            .uid(self.redis_user.uid.as_raw())
            .gid(self.redis_user.gid.as_raw())
            .current_dir(self.root.path());
        command
    }

    async fn login(&self, user: &str, password: &str) -> RedisResult<MultiplexedConnection> {
        let settings = RedisConnectionInfo::default()
            .set_username(user)
            .set_password(password);
        self.open(settings).await
    }

    /// A client that does not authenticate: it is the `default` user.
    async fn anonymous(&self) -> RedisResult<MultiplexedConnection> {
        self.open(RedisConnectionInfo::default()).await
    }

    async fn open(&self, settings: RedisConnectionInfo) -> RedisResult<MultiplexedConnection> {
        let info = ConnectionAddr::Tcp("127.0.0.1".into(), self.port)
            .into_connection_info()?
            .set_redis_settings(settings);
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(5)))
            .set_response_timeout(Some(Duration::from_secs(5)));
        redis::Client::open(info)?
            .get_multiplexed_async_connection_with_config(&config)
            .await
    }

    async fn readyz(&self) -> Option<(u16, String)> {
        http_get(self.status_port, "/readyz")
    }

    async fn healthz(&self) -> Option<u16> {
        http_get(self.status_port, "/healthz").map(|(code, _)| code)
    }
}

/// One `servicedb instance` process and everything it printed. Dropping it
/// kills the process and its server.
struct Manager {
    child: tokio::process::Child,
    log: Arc<Mutex<String>>,
}

impl Manager {
    fn spawn(mut command: tokio::process::Command) -> Manager {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn servicedb instance");
        let log = Arc::new(Mutex::new(String::new()));
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        for stream in [
            Box::new(stdout) as Box<dyn tokio::io::AsyncRead + Send + Unpin>,
            Box::new(stderr),
        ] {
            let log = log.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(stream).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    eprintln!("[instance] {line}");
                    let mut log = log.lock().expect("log");
                    log.push_str(&line);
                    log.push('\n');
                }
            });
        }
        Manager { child, log }
    }

    fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id().expect("still running") as i32)
    }

    fn log(&self) -> String {
        self.log.lock().expect("log").clone()
    }

    fn has_exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("try_wait")
    }

    /// The supervised redis-server: the manager's child of that name.
    fn server_pid(&self) -> Option<Pid> {
        let parent = self.child.id()?;
        std::fs::read_dir("/proc").ok()?.find_map(|entry| {
            let pid: i32 = entry.ok()?.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // "pid (comm) state ppid ..."; comm may hold spaces, not ')'.
            let (name, rest) = stat.split_once(" (")?.1.rsplit_once(") ")?;
            let ppid: u32 = rest.split_whitespace().nth(1)?.parse().ok()?;
            (ppid == parent && name.starts_with("redis-server")).then(|| Pid::from_raw(pid))
        })
    }

    async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        match tokio::time::timeout(timeout, self.child.wait()).await {
            Ok(status) => {
                // Let the log readers drain the pipes.
                tokio::time::sleep(Duration::from_millis(200)).await;
                status.expect("wait")
            }
            Err(_) => panic!(
                "the instance manager did not exit within {timeout:?}; log:\n{}",
                self.log()
            ),
        }
    }

    async fn terminate(&mut self) -> ExitStatus {
        kill(self.pid(), Signal::SIGTERM).expect("SIGTERM");
        self.wait_exit(Duration::from_secs(60)).await
    }

    /// Polls /readyz until it answers 200; returns the answers before.
    async fn wait_ready(&mut self, fixture: &Fixture) -> Vec<(u16, String)> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut before = Vec::new();
        loop {
            if let Some(status) = self.has_exited() {
                panic!(
                    "the instance manager exited ({status}); log:\n{}",
                    self.log()
                );
            }
            match fixture.readyz().await {
                Some((200, _)) => return before,
                Some(answer) => before.push(answer),
                None => {}
            }
            assert!(
                Instant::now() < deadline,
                "not ready within {READY_TIMEOUT:?}; last answer {:?}; log:\n{}",
                before.last(),
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Retries `probe` until it returns `Some` (the sync interval is 1 s).
    async fn eventually<T, F, Fut>(&mut self, what: &str, mut probe: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Option<T>>,
    {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(value) = probe().await {
                return value;
            }
            if let Some(status) = self.has_exited() {
                panic!(
                    "exited ({status}) while waiting for {what}; log:\n{}",
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn assert_log_free_of(&self, secrets: &[&str]) {
        let log = self.log();
        for secret in secrets {
            assert!(!log.contains(secret), "a password leaked into the log");
        }
    }
}

impl Drop for Manager {
    fn drop(&mut self) {
        // The server has a parent-death signal, but a failed test must not
        // leave it running for even a moment longer.
        let server = self.server_pid();
        let _ = self.child.start_kill();
        if let Some(pid) = server {
            let _ = kill(pid, Signal::SIGKILL);
        }
    }
}

async fn run(conn: &mut MultiplexedConnection, words: &[&str]) -> RedisResult<Value> {
    redis::cmd(words[0])
        .arg(&words[1..])
        .query_async(conn)
        .await
}

/// The command fails with NOPERM: the ACL, not anything else, refused it.
async fn assert_noperm(conn: &mut MultiplexedConnection, words: &[&str]) {
    match run(conn, words).await {
        Err(error) => assert_eq!(error.code(), Some("NOPERM"), "{words:?}: {error}"),
        Ok(value) => panic!("{words:?} was allowed: {value:?}"),
    }
}

fn assert_wrong_password(result: RedisResult<MultiplexedConnection>, what: &str) {
    match result {
        Err(error) => assert_eq!(
            error.kind(),
            ErrorKind::AuthenticationFailed,
            "{what}: {error}"
        ),
        Ok(_) => panic!("{what}: logged in"),
    }
}

async fn server_run_id(conn: &mut MultiplexedConnection) -> String {
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query_async(conn)
        .await
        .expect("INFO as admin");
    info.lines()
        .find_map(|line| line.strip_prefix("run_id:"))
        .expect("run_id")
        .trim()
        .to_owned()
}

/// What stock clients send when they connect, as `user`: ioredis (AUTH,
/// CLIENT SETNAME, then INFO as its ready check, which waits for
/// `loading:0`), node-redis, go-redis and redis-rs (HELLO 3 with AUTH,
/// CLIENT SETINFO), and what they use to learn the server (PING, ECHO,
/// COMMAND DOCS/INFO, CLIENT ID/INFO/GETNAME, SELECT 0). The server's
/// controls stay closed to it.
async fn assert_clients_connect(fixture: &Fixture, user: &str, password: &str) {
    let mut conn = fixture.login(user, password).await.expect("AUTH");
    run(&mut conn, &["CLIENT", "SETNAME", "checkout-7f9c"])
        .await
        .expect("CLIENT SETNAME");
    let name: String = redis::cmd("CLIENT")
        .arg("GETNAME")
        .query_async(&mut conn)
        .await
        .expect("CLIENT GETNAME");
    assert_eq!(name, "checkout-7f9c");
    // ioredis' ready check: INFO without a section, then `loading:0`.
    let info: String = redis::cmd("INFO")
        .query_async(&mut conn)
        .await
        .expect("INFO, the ready check");
    assert!(info.lines().any(|l| l.trim() == "loading:0"), "{info}");
    assert!(info.contains("redis_version:"), "{info}");
    // BullMQ reads the eviction policy from INFO.
    let memory: String = redis::cmd("INFO")
        .arg("memory")
        .query_async(&mut conn)
        .await
        .expect("INFO memory");
    assert!(memory.contains("maxmemory_policy:"), "{memory}");
    let pong: String = redis::cmd("PING")
        .query_async(&mut conn)
        .await
        .expect("PING");
    assert_eq!(pong, "PONG");
    let echo: String = redis::cmd("ECHO")
        .arg("hi")
        .query_async(&mut conn)
        .await
        .expect("ECHO");
    assert_eq!(echo, "hi");
    for words in [
        &["COMMAND", "DOCS", "GET"][..],
        &["COMMAND", "INFO", "GET"],
        &["COMMAND", "COUNT"],
        &["CLIENT", "ID"],
        &["SELECT", "0"],
    ] {
        let answer = run(&mut conn, words).await;
        assert!(
            matches!(&answer, Ok(v) if *v != Value::Nil),
            "{words:?}: {answer:?}"
        );
    }
    let client: String = redis::cmd("CLIENT")
        .arg("INFO")
        .query_async(&mut conn)
        .await
        .expect("CLIENT INFO");
    assert!(client.contains(&format!("user={user} ")), "{client}");
    // Redis 7.2 and later know CLIENT SETINFO; 7.0 does not. Never an ACL refusal.
    if let Err(error) = run(&mut conn, &["CLIENT", "SETINFO", "LIB-NAME", "ioredis"]).await {
        assert_ne!(error.code(), Some("NOPERM"), "{error}");
    }
    for words in [
        &["CLIENT", "LIST"][..],
        &["CLIENT", "KILL", "ID", "1"],
        &["CLIENT", "NO-EVICT", "on"],
        &["CLIENT", "PAUSE", "10"],
        &["CONFIG", "GET", "maxmemory-policy"],
        &["FLUSHALL"],
        &["KEYS", "*"],
        &["MONITOR"],
        &["SLOWLOG", "GET"],
        &["ROLE"],
    ] {
        assert_noperm(&mut conn, words).await;
    }

    // RESP3: the client opens with HELLO 3 AUTH <user> <password>.
    let mut resp3 = fixture
        .open(
            RedisConnectionInfo::default()
                .set_username(user)
                .set_password(password)
                .set_protocol(redis::ProtocolVersion::RESP3),
        )
        .await
        .expect("HELLO 3 AUTH");
    let hello = run(&mut resp3, &["HELLO", "3"]).await.expect("HELLO 3");
    assert!(format!("{hello:?}").contains("proto"), "{hello:?}");
    let info: String = redis::cmd("INFO")
        .query_async(&mut resp3)
        .await
        .expect("INFO over RESP3");
    assert!(info.contains("loading:0"));
}

const LUA_SET: &str = "return redis.call('SET', KEYS[1], ARGV[1])";
/// Redlock's unlock: delete the lock only if it still holds our token.
const LUA_UNLOCK: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end";
const LUA_LIBRARY: &str = "#!lua name=cartlib\nredis.register_function('cart_incr', function(keys, args) return redis.call('INCR', keys[1]) end)\nredis.register_function{function_name='cart_get', callback=function(keys, args) return redis.call('GET', keys[1]) end, flags={'no-writes'}}";

/// No EVAL, FCALL, FUNCTION or SCRIPT at all.
async fn assert_scripting_refused(conn: &mut MultiplexedConnection) {
    for words in [
        &["EVAL", LUA_SET, "1", "cart:lua", "x"][..],
        &["EVAL_RO", "return 1", "0"],
        &["EVALSHA", ANY_SHA, "1", "cart:lua", "x"],
        &["SCRIPT", "LOAD", LUA_SET],
        &["SCRIPT", "EXISTS", ANY_SHA],
        &["FUNCTION", "LOAD", LUA_LIBRARY],
        &["FUNCTION", "LIST"],
        &["FUNCTION", "FLUSH"],
        &["FCALL", "cart_incr", "1", "cart:n"],
        &["FCALL_RO", "cart_get", "1", "cart:n"],
    ] {
        assert_noperm(conn, words).await;
    }
}

/// A script digest; the ACL refuses before the script is looked up.
const ANY_SHA: &str = "e0e1f9fabfc9d4800c877a703b823ac0578ff8db";

/// Every key of the service's that SCAN MATCH finds.
async fn scan_own_keys(conn: &mut MultiplexedConnection) -> Vec<String> {
    let mut cursor = 0u64;
    let mut keys = Vec::new();
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{PREFIX}*"))
            .arg("COUNT")
            .arg(100)
            .query_async(conn)
            .await
            .expect("SCAN");
        keys.extend(batch);
        if next == 0 {
            keys.sort();
            return keys;
        }
        cursor = next;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_service_user_owns_its_prefix_and_nothing_else() {
    let (admin_pw, app_pw) = (random(24), format!("{} with spaces \"'\\", random(20)));
    let fixture = Fixture::new(&admin_pw, &app_pw);
    let mut manager = fixture.start();
    manager.wait_ready(&fixture).await;
    let mut admin = fixture
        .login(ADMIN, &admin_pw)
        .await
        .expect("admin logs in");
    run(&mut admin, &["SET", "orders:1", "secret order"])
        .await
        .expect("the admin may write anywhere");
    let mut cart = fixture
        .login(SERVICE, &app_pw)
        .await
        .expect("the service logs in");

    // Its own keys: strings, hashes, lists, expiry, SCAN, MULTI/EXEC.
    run(&mut cart, &["SET", "cart:1", "one"])
        .await
        .expect("SET");
    let value: Option<String> = redis::cmd("GET")
        .arg("cart:1")
        .query_async(&mut cart)
        .await
        .expect("GET");
    assert_eq!(value.as_deref(), Some("one"));
    run(&mut cart, &["HSET", "cart:h", "sku", "42"])
        .await
        .expect("HSET");
    run(&mut cart, &["LPUSH", "cart:l", "a", "b"])
        .await
        .expect("LPUSH");
    let set: i64 = redis::cmd("EXPIRE")
        .arg("cart:1")
        .arg(300)
        .query_async(&mut cart)
        .await
        .expect("EXPIRE");
    assert_eq!(set, 1);
    let ttl: i64 = redis::cmd("TTL")
        .arg("cart:1")
        .query_async(&mut cart)
        .await
        .expect("TTL");
    assert!((1..=300).contains(&ttl), "{ttl}");
    assert_eq!(
        scan_own_keys(&mut cart).await,
        ["cart:1", "cart:h", "cart:l"]
    );
    let counted: (i64, i64) = redis::pipe()
        .atomic()
        .incr("cart:n", 1)
        .incr("cart:n", 1)
        .query_async(&mut cart)
        .await
        .expect("MULTI/EXEC");
    assert_eq!(counted, (1, 2));
    let aborted: RedisResult<Value> = redis::pipe()
        .atomic()
        .incr("cart:n", 1)
        .set("orders:1", "stolen")
        .query_async(&mut cart)
        .await;
    assert!(aborted.is_err(), "a transaction touching orders:1 fails");

    // Its own channels.
    let mut subscriber = redis::Client::open(
        ConnectionAddr::Tcp("127.0.0.1".into(), fixture.port)
            .into_connection_info()
            .expect("info")
            .set_redis_settings(
                RedisConnectionInfo::default()
                    .set_username(SERVICE)
                    .set_password(&app_pw),
            ),
    )
    .expect("client")
    .get_async_pubsub()
    .await
    .expect("pub/sub connection");
    subscriber
        .subscribe("cart:events")
        .await
        .expect("SUBSCRIBE cart:events");
    let receivers: i64 = redis::cmd("PUBLISH")
        .arg("cart:events")
        .arg("added")
        .query_async(&mut cart)
        .await
        .expect("PUBLISH cart:events");
    assert_eq!(receivers, 1);
    let message = tokio::time::timeout(Duration::from_secs(5), subscriber.on_message().next())
        .await
        .expect("a message within 5 s")
        .expect("a message");
    assert_eq!(message.get_channel_name(), "cart:events");
    assert_eq!(message.get_payload::<String>().expect("payload"), "added");
    let foreign = subscriber.subscribe("orders:events").await;
    assert_eq!(
        foreign.as_ref().err().and_then(RedisError::code),
        Some("NOPERM"),
        "{foreign:?}"
    );

    // Nothing else: other keys and channels, and the server's controls.
    for words in [
        &["GET", "orders:1"][..],
        &["SET", "orders:2", "x"],
        &["DEL", "orders:1"],
        &["RENAME", "cart:1", "orders:1"],
        &["PUBLISH", "orders:events", "x"],
        &["FLUSHALL"],
        &["FLUSHDB"],
        &["CONFIG", "GET", "dir"],
        &["CONFIG", "SET", "appendonly", "no"],
        &["ACL", "LIST"],
        &["ACL", "SETUSER", "cart", "~*"],
        &["KEYS", "*"],
        &["KEYS", "cart:*"],
        &["SHUTDOWN", "NOSAVE"],
        &["MONITOR"],
        &["CLIENT", "LIST"],
        &["CLIENT", "KILL", "ID", "1"],
        &["SAVE"],
        &["REPLICAOF", "127.0.0.1", "1"],
        &["SORT", "cart:l", "ALPHA"],
    ] {
        assert_noperm(&mut cart, words).await;
    }
    assert_clients_connect(&fixture, SERVICE, &app_pw).await;
    assert_scripting_refused(&mut cart).await;
    // DEBUG is switched off for everyone (enable-debug-command no), which
    // Redis checks before the ACL; the ACL denies it as well.
    assert!(run(&mut cart, &["DEBUG", "SLEEP", "0"]).await.is_err());
    let verdict: String = redis::cmd("ACL")
        .arg("DRYRUN")
        .arg(SERVICE)
        .arg("DEBUG")
        .arg("SLEEP")
        .arg("0")
        .query_async(&mut admin)
        .await
        .expect("ACL DRYRUN");
    assert!(verdict.contains("no permissions"), "{verdict}");
    let untouched: String = redis::cmd("GET")
        .arg("orders:1")
        .query_async(&mut admin)
        .await
        .expect("GET as admin");
    assert_eq!(untouched, "secret order");

    // The default user is off: no command without logging in, no empty password.
    let mut anonymous = fixture.anonymous().await.expect("connects");
    let refused = run(&mut anonymous, &["GET", "orders:1"])
        .await
        .expect_err("not authenticated");
    assert_eq!(refused.code(), Some("NOAUTH"), "{refused}");
    let refused = run(&mut anonymous, &["AUTH", "default", ""])
        .await
        .expect_err("default has no password");
    assert_eq!(refused.code(), Some("WRONGPASS"), "{refused}");
    assert_wrong_password(
        fixture.login("default", "").await,
        "default, empty password",
    );
    assert_wrong_password(fixture.login(SERVICE, "wrong").await, "a wrong password");

    // Only hashes on disk; no password in the log.
    let acl = fixture.acl_file();
    assert!(
        acl.lines()
            .any(|line| line.starts_with("user default off ") && line.ends_with(" -@all")),
        "{acl}"
    );
    assert!(acl.contains(&redis_acl::password_hash(&app_pw)), "{acl}");
    assert!(!acl.contains(&app_pw) && !acl.contains(&admin_pw));
    let conf = std::fs::read_to_string(fixture.redis_dir().join("redis.conf")).expect("conf");
    assert!(!conf.contains(&admin_pw) && !conf.contains(&app_pw));
    manager.assert_log_free_of(&[&admin_pw, &app_pw]);
    assert_eq!(manager.terminate().await.code(), Some(0));
}

/// `--redis-scripting`, as the StatefulSet of a ServiceDatabase with
/// `spec.redis.scripting: true` runs it: the service runs Lua scripts and
/// functions as BullMQ (EVALSHA, NOSCRIPT, EVAL; SCRIPT LOAD in pipelines)
/// and Redlock (its unlock script) do, on its own keys only, and a script
/// reaches no server control. A user made the shared servers' way on the
/// same server gets no scripting, and a restart without the flag takes it
/// away again.
#[tokio::test(flavor = "multi_thread")]
async fn with_scripting_the_service_runs_lua_and_functions_on_its_own_keys_only() {
    let (admin_pw, app_pw) = (random(24), random(24));
    let fixture = Fixture::new(&admin_pw, &app_pw);
    let mut manager = fixture.start_with_scripting();
    manager.wait_ready(&fixture).await;
    let mut admin = fixture.login(ADMIN, &admin_pw).await.expect("admin");
    run(&mut admin, &["SET", "orders:1", "secret order"])
        .await
        .expect("SET");
    let mut cart = fixture.login(SERVICE, &app_pw).await.expect("service");
    assert_clients_connect(&fixture, SERVICE, &app_pw).await;

    // ioredis' defineCommand: EVALSHA first and, on NOSCRIPT, EVAL.
    let sha: String = redis::cmd("EVAL")
        .arg("return redis.sha1hex(ARGV[1])")
        .arg(0)
        .arg(LUA_SET)
        .query_async(&mut cart)
        .await
        .expect("EVAL");
    let missing = run(&mut cart, &["EVALSHA", &sha, "1", "cart:lua", "one"])
        .await
        .expect_err("not cached yet");
    assert_eq!(missing.code(), Some("NOSCRIPT"), "{missing}");
    run(&mut cart, &["EVAL", LUA_SET, "1", "cart:lua", "one"])
        .await
        .expect("EVAL on its own key");
    run(&mut cart, &["EVALSHA", &sha, "1", "cart:lua", "two"])
        .await
        .expect("EVALSHA once cached");
    let read: String = redis::cmd("EVAL_RO")
        .arg("return redis.call('GET', KEYS[1])")
        .arg(1)
        .arg("cart:lua")
        .query_async(&mut cart)
        .await
        .expect("EVAL_RO");
    assert_eq!(read, "two");

    // Redlock: SET NX PX, then the unlock script, loaded as a pipeline would.
    let unlock: String = redis::cmd("SCRIPT")
        .arg("LOAD")
        .arg(LUA_UNLOCK)
        .query_async(&mut cart)
        .await
        .expect("SCRIPT LOAD");
    let exists: Vec<i64> = redis::cmd("SCRIPT")
        .arg("EXISTS")
        .arg(&unlock)
        .arg(&sha)
        .arg(ANY_SHA)
        .query_async(&mut cart)
        .await
        .expect("SCRIPT EXISTS");
    assert_eq!(exists, [1, 1, 0]);
    run(
        &mut cart,
        &["SET", "cart:lock", "token-1", "NX", "PX", "30000"],
    )
    .await
    .expect("lock");
    for (token, deleted) in [("token-2", 0), ("token-1", 1)] {
        let got: i64 = redis::cmd("EVALSHA")
            .arg(&unlock)
            .arg(1)
            .arg("cart:lock")
            .arg(token)
            .query_async(&mut cart)
            .await
            .expect("unlock");
        assert_eq!(got, deleted, "unlock with {token}");
    }

    // Functions: the library namespace is this instance's, the service's alone.
    let library: String = redis::cmd("FUNCTION")
        .arg("LOAD")
        .arg(LUA_LIBRARY)
        .query_async(&mut cart)
        .await
        .expect("FUNCTION LOAD");
    assert_eq!(library, "cartlib");
    let counted: i64 = redis::cmd("FCALL")
        .arg("cart_incr")
        .arg(1)
        .arg("cart:n")
        .query_async(&mut cart)
        .await
        .expect("FCALL");
    assert_eq!(counted, 1);
    let read: String = redis::cmd("FCALL_RO")
        .arg("cart_get")
        .arg(1)
        .arg("cart:n")
        .query_async(&mut cart)
        .await
        .expect("FCALL_RO");
    assert_eq!(read, "1");
    run(&mut cart, &["FUNCTION", "LIST"])
        .await
        .expect("FUNCTION LIST");

    // Its own keys only, named as arguments or not; no control from a script.
    for (words, what) in [
        (
            &["EVAL", LUA_SET, "1", "orders:1", "stolen"][..],
            "another's key as argument",
        ),
        (
            &["EVAL", "return redis.call('GET', 'orders:1')", "0"],
            "another's key inside the script",
        ),
        (
            &["EVAL", "return redis.call('SET', 'orders:2', 'x')", "0"],
            "a write outside the prefix",
        ),
        (
            &["EVAL", "return redis.call('FLUSHALL')", "0"],
            "FLUSHALL from Lua",
        ),
        (
            &["EVAL", "return redis.call('FLUSHDB')", "0"],
            "FLUSHDB from Lua",
        ),
        (
            &["EVAL", "return redis.call('KEYS', '*')", "0"],
            "KEYS from Lua",
        ),
        (
            &["EVAL", "return redis.call('SWAPDB', '0', '1')", "0"],
            "SWAPDB from Lua",
        ),
        (
            &["FCALL", "cart_incr", "1", "orders:n"],
            "a function on another's key",
        ),
        (
            &["FCALL_RO", "cart_get", "1", "orders:1"],
            "a read-only function on another's key",
        ),
    ] {
        let error = run(&mut cart, words).await.expect_err(what);
        let text = error.to_string();
        assert!(
            error.code() == Some("NOPERM")
                || text.contains("can't access")
                || text.contains("can't run"),
            "{what}: {text}"
        );
    }
    assert_noperm(&mut cart, &["SCRIPT", "DEBUG", "YES"]).await;
    let untouched: String = redis::cmd("GET")
        .arg("orders:1")
        .query_async(&mut admin)
        .await
        .expect("GET as admin");
    assert_eq!(untouched, "secret order");
    let absent: i64 = redis::cmd("EXISTS")
        .arg("orders:2")
        .arg("orders:n")
        .query_async(&mut admin)
        .await
        .expect("EXISTS as admin");
    assert_eq!(absent, 0);

    // A shared server's user never gets scripting, even on this server.
    redis_acl::ensure_user(&mut admin, "orders", "orders-pw", "orders:")
        .await
        .expect("a user the shared servers' way");
    let mut orders = fixture.login("orders", "orders-pw").await.expect("orders");
    assert_clients_connect(&fixture, "orders", "orders-pw").await;
    assert_scripting_refused(&mut orders).await;

    // Without the flag, no scripting again; the data stays.
    assert_eq!(manager.terminate().await.code(), Some(0));
    let mut restarted = fixture.start();
    restarted.wait_ready(&fixture).await;
    let mut cart = fixture.login(SERVICE, &app_pw).await.expect("service");
    assert_scripting_refused(&mut cart).await;
    let kept: String = redis::cmd("GET")
        .arg("cart:lua")
        .query_async(&mut cart)
        .await
        .expect("GET");
    assert_eq!(kept, "two");
    restarted.assert_log_free_of(&[&admin_pw, &app_pw]);
    assert_eq!(restarted.terminate().await.code(), Some(0));
}

/// A redis-server that takes two seconds to start, as a big AOF would.
fn slow_redis_server(dir: &Path) -> PathBuf {
    let bin = dir.join("slowbin");
    std::fs::create_dir(&bin).expect("mkdir");
    let script = bin.join("redis-server");
    std::fs::write(
        &script,
        format!("#!/bin/sh\nsleep 2\nexec {REDIS_BIN_DIR}/redis-server \"$@\"\n"),
    )
    .expect("write");
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    bin
}

#[tokio::test(flavor = "multi_thread")]
async fn readiness_follows_the_server() {
    let (admin_pw, app_pw) = (random(24), random(24));
    let fixture = Fixture::new(&admin_pw, &app_pw);
    let bin = slow_redis_server(fixture.root.path());
    let mut manager = fixture.start_from(&bin);
    let before = manager.wait_ready(&fixture).await;
    assert!(
        before
            .iter()
            .any(|(code, body)| *code == 503 && body.contains("not accepting")),
        "503 while redis-server did not answer: {before:?}"
    );
    assert_eq!(fixture.healthz().await, Some(200));
    fixture
        .login(SERVICE, &app_pw)
        .await
        .expect("ready means the service can log in");

    // A frozen server answers nothing: not ready, though still alive.
    let server = manager
        .server_pid()
        .expect("redis-server is the manager's child");
    kill(server, Signal::SIGSTOP).expect("SIGSTOP");
    let (_, reason) = manager
        .eventually("/readyz to fail while redis-server is stopped", || async {
            fixture.readyz().await.filter(|(code, _)| *code == 503)
        })
        .await;
    assert!(reason.contains("not accepting"), "{reason}");
    assert_eq!(fixture.healthz().await, Some(200), "stopped is not dead");
    kill(server, Signal::SIGCONT).expect("SIGCONT");
    manager
        .eventually("/readyz to recover", || async {
            fixture.readyz().await.filter(|(code, _)| *code == 200)
        })
        .await;
    assert_eq!(manager.server_pid(), Some(server));
    assert_eq!(manager.terminate().await.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread")]
async fn applies_changed_passwords_without_restarting_redis() {
    let (admin_pw, app_pw) = (random(24), random(24));
    let fixture = Fixture::new(&admin_pw, &app_pw);
    let mut manager = fixture.start();
    manager.wait_ready(&fixture).await;
    let server = manager.server_pid().expect("redis-server");
    let run_id = server_run_id(&mut fixture.login(ADMIN, &admin_pw).await.expect("admin")).await;

    let new_app_pw = format!("{}-rotated", random(20));
    fixture.set_app_password(&new_app_pw);
    manager
        .eventually("the new service password", || async {
            fixture.login(SERVICE, &new_app_pw).await.ok()
        })
        .await;
    assert_wrong_password(
        fixture.login(SERVICE, &app_pw).await,
        "the old service password",
    );
    // ACL SAVE wrote the change through to the ACL file.
    let acl = fixture.acl_file();
    assert!(
        acl.contains(&redis_acl::password_hash(&new_app_pw)),
        "{acl}"
    );
    assert!(!acl.contains(&redis_acl::password_hash(&app_pw)), "{acl}");

    let new_admin_pw = random(24);
    fixture.set_admin_password(&new_admin_pw);
    let mut admin = manager
        .eventually("the new admin password", || async {
            fixture.login(ADMIN, &new_admin_pw).await.ok()
        })
        .await;
    assert_wrong_password(
        fixture.login(ADMIN, &admin_pw).await,
        "the old admin password",
    );
    assert!(
        fixture
            .acl_file()
            .contains(&redis_acl::password_hash(&new_admin_pw))
    );

    assert_eq!(
        manager.server_pid(),
        Some(server),
        "same redis-server process"
    );
    assert_eq!(server_run_id(&mut admin).await, run_id, "not restarted");
    assert_eq!(fixture.readyz().await.map(|(code, _)| code), Some(200));
    manager.assert_log_free_of(&[&admin_pw, &app_pw, &new_admin_pw, &new_app_pw]);
    assert_eq!(manager.terminate().await.code(), Some(0));
}

/// A rotation in the app Secret: during the grace period the user accepts
/// the previous password too (one ACL user, two passwords, saved to the ACL
/// file); once `previous-password` leaves the Secret it is refused.
#[tokio::test(flavor = "multi_thread")]
async fn a_rotation_keeps_the_previous_password_for_the_grace_period() {
    let (admin_pw, app_pw) = (random(24), random(24));
    let fixture = Fixture::new(&admin_pw, &app_pw);
    let mut manager = fixture.start();
    manager.wait_ready(&fixture).await;
    let new_pw = random(24);
    fixture.publish_secret(
        "app",
        &[
            ("username", SERVICE),
            ("password", &new_pw),
            ("previous-username", SERVICE),
            ("previous-password", &app_pw),
            ("keyPrefix", PREFIX),
        ],
    );
    let mut conn = manager
        .eventually("the new password", || async {
            fixture.login(SERVICE, &new_pw).await.ok()
        })
        .await;
    fixture
        .login(SERVICE, &app_pw)
        .await
        .expect("the previous password works during the grace period");
    assert_noperm(&mut conn, &["SET", "other:k", "v"]).await;
    let acl = fixture.acl_file();
    assert!(acl.contains(&redis_acl::password_hash(&new_pw)), "{acl}");
    assert!(acl.contains(&redis_acl::password_hash(&app_pw)), "{acl}");

    fixture.set_app_password(&new_pw);
    manager
        .eventually("the previous password to be refused", || async {
            fixture.login(SERVICE, &app_pw).await.err()
        })
        .await;
    fixture
        .login(SERVICE, &new_pw)
        .await
        .expect("the new password");
    assert!(
        !fixture
            .acl_file()
            .contains(&redis_acl::password_hash(&app_pw))
    );
    manager.assert_log_free_of(&[&admin_pw, &app_pw, &new_pw]);
    assert_eq!(manager.terminate().await.code(), Some(0));
}

/// The admin's session is gone when its Secret changes: the instance
/// manager must log in with the password it applied last, then apply the
/// new one.
#[tokio::test(flavor = "multi_thread")]
async fn falls_back_to_the_applied_admin_password_after_losing_its_session() {
    let (admin_pw, app_pw) = (random(24), random(24));
    let fixture = Fixture::new(&admin_pw, &app_pw);
    let mut manager = fixture.start();
    manager.wait_ready(&fixture).await;

    // Frozen, the instance manager cannot apply the new password before its
    // session is cut.
    kill(manager.pid(), Signal::SIGSTOP).expect("SIGSTOP the instance manager");
    let new_admin_pw = random(24);
    fixture.set_admin_password(&new_admin_pw);
    let mut admin = fixture.login(ADMIN, &admin_pw).await.expect("admin");
    let _ = run(&mut admin, &["CLIENT", "KILL", "USER", ADMIN]).await;
    kill(manager.pid(), Signal::SIGCONT).expect("SIGCONT");

    manager
        .eventually("the new admin password", || async {
            fixture.login(ADMIN, &new_admin_pw).await.ok()
        })
        .await;
    assert_wrong_password(
        fixture.login(ADMIN, &admin_pw).await,
        "the old admin password",
    );
    let log = manager.log();
    assert!(
        log.contains("connected with the admin's previous password"),
        "log:\n{log}"
    );
    manager
        .eventually("ready again", || async {
            fixture.readyz().await.filter(|(code, _)| *code == 200)
        })
        .await;
    manager.assert_log_free_of(&[&admin_pw, &new_admin_pw]);
    assert_eq!(manager.terminate().await.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_saves_and_a_restart_keeps_keys_and_passwords() {
    let (admin_pw, app_pw) = (random(24), random(24));
    let fixture = Fixture::new(&admin_pw, &app_pw);
    let mut manager = fixture.start();
    manager.wait_ready(&fixture).await;
    let mut cart = fixture.login(SERVICE, &app_pw).await.expect("service");
    run(&mut cart, &["SET", "cart:kept", "42"])
        .await
        .expect("SET");
    run(&mut cart, &["RPUSH", "cart:items", "a", "b", "c"])
        .await
        .expect("RPUSH");
    drop(cart);
    // The passwords that must work after the restart are the current ones.
    let new_app_pw = random(24);
    fixture.set_app_password(&new_app_pw);
    manager
        .eventually("the rotated service password", || async {
            fixture.login(SERVICE, &new_app_pw).await.ok()
        })
        .await;
    let server = manager.server_pid().expect("redis-server");

    let status = manager.terminate().await;
    assert_eq!(status.code(), Some(0), "log:\n{}", manager.log());
    assert_eq!(
        kill(server, None),
        Err(nix::errno::Errno::ESRCH),
        "redis-server is gone"
    );
    let log = manager.log();
    assert!(
        log.contains("DB saved on disk"),
        "a final RDB snapshot; log:\n{log}"
    );
    assert!(fixture.redis_dir().join("dump.rdb").exists());
    assert!(
        fixture.redis_dir().join("appendonlydir").is_dir(),
        "AOF is on"
    );

    let mut restarted = fixture.start();
    restarted.wait_ready(&fixture).await;
    let mut cart = fixture
        .login(SERVICE, &new_app_pw)
        .await
        .expect("the current service password works after a restart");
    assert_wrong_password(
        fixture.login(SERVICE, &app_pw).await,
        "the old one does not",
    );
    let kept: String = redis::cmd("GET")
        .arg("cart:kept")
        .query_async(&mut cart)
        .await
        .expect("GET");
    assert_eq!(kept, "42");
    let items: Vec<String> = redis::cmd("LRANGE")
        .arg("cart:items")
        .arg(0)
        .arg(-1)
        .query_async(&mut cart)
        .await
        .expect("LRANGE");
    assert_eq!(items, ["a", "b", "c"]);
    fixture
        .login(ADMIN, &admin_pw)
        .await
        .expect("the admin password works after a restart");
    assert_eq!(restarted.terminate().await.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread")]
async fn exits_non_zero_when_redis_dies_and_the_aof_keeps_writes() {
    let (admin_pw, app_pw) = (random(24), random(24));
    let fixture = Fixture::new(&admin_pw, &app_pw);
    let mut manager = fixture.start();
    manager.wait_ready(&fixture).await;
    let mut cart = fixture.login(SERVICE, &app_pw).await.expect("service");
    run(&mut cart, &["SET", "cart:acknowledged", "yes"])
        .await
        .expect("SET");
    // appendfsync everysec: on disk within a second.
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let server = manager.server_pid().expect("redis-server");
    kill(server, Signal::SIGKILL).expect("kill redis-server");
    let status = manager.wait_exit(Duration::from_secs(30)).await;
    assert!(
        !status.success(),
        "non-zero, so that the kubelet restarts it"
    );
    assert!(
        manager.log().contains("redis-server exited unexpectedly"),
        "log:\n{}",
        manager.log()
    );
    assert!(
        !fixture.redis_dir().join("dump.rdb").exists(),
        "no snapshot was taken: what survives, survives in the AOF"
    );

    let mut restarted = fixture.start();
    restarted.wait_ready(&fixture).await;
    let mut cart = fixture.login(SERVICE, &app_pw).await.expect("service");
    let value: Option<String> = redis::cmd("GET")
        .arg("cart:acknowledged")
        .query_async(&mut cart)
        .await
        .expect("GET");
    assert_eq!(value.as_deref(), Some("yes"));
    assert_eq!(restarted.terminate().await.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread")]
async fn restores_an_acl_changed_by_hand() {
    let (admin_pw, app_pw) = (random(24), random(24));
    let fixture = Fixture::new(&admin_pw, &app_pw);
    let mut manager = fixture.start();
    manager.wait_ready(&fixture).await;
    let mut admin = fixture.login(ADMIN, &admin_pw).await.expect("admin");
    run(&mut admin, &["SET", "orders:1", "x"])
        .await
        .expect("SET");
    run(&mut admin, &["ACL", "SETUSER", SERVICE, "allkeys", "+@all"])
        .await
        .expect("widen the service user");
    run(
        &mut admin,
        &[
            "ACL", "SETUSER", "default", "on", "nopass", "allkeys", "+@all",
        ],
    )
    .await
    .expect("open the default user");
    let mut cart = fixture.login(SERVICE, &app_pw).await.expect("service");
    manager
        .eventually("the service user confined again", || async {
            run(&mut cart.clone(), &["GET", "orders:1"])
                .await
                .err()
                .filter(|error| error.code() == Some("NOPERM"))
        })
        .await;
    let anonymous = fixture.anonymous().await.expect("connects");
    manager
        .eventually("the default user off again", || async {
            run(&mut anonymous.clone(), &["PING"])
                .await
                .err()
                .filter(|error| error.code() == Some("NOAUTH"))
        })
        .await;
    assert_noperm(&mut cart, &["FLUSHALL"]).await;
    assert!(
        manager.log().contains("changed outside servicedb"),
        "log:\n{}",
        manager.log()
    );
    assert_eq!(manager.terminate().await.code(), Some(0));
}

/// The ACL library as the operator will use it on shared servers, against
/// the instance's server.
#[tokio::test(flavor = "multi_thread")]
async fn acl_library_manages_users_on_a_live_server() {
    let (admin_pw, app_pw) = (random(24), random(24));
    let fixture = Fixture::new(&admin_pw, &app_pw);
    let mut manager = fixture.start();
    manager.wait_ready(&fixture).await;
    let mut admin = fixture.login(ADMIN, &admin_pw).await.expect("admin");
    run(&mut admin, &["SET", "cart:1", "cart's"])
        .await
        .expect("SET");

    redis_acl::ensure_user(&mut admin, "orders", "first", "orders:")
        .await
        .expect("create orders");
    let mut orders = fixture
        .login("orders", "first")
        .await
        .expect("orders logs in");
    run(&mut orders, &["SET", "orders:1", "x"])
        .await
        .expect("own key");
    assert_noperm(&mut orders, &["GET", "cart:1"]).await;
    assert_noperm(&mut orders, &["FLUSHALL"]).await;

    redis_acl::ensure_user(&mut admin, "orders", "second", "orders:")
        .await
        .expect("new password");
    assert_wrong_password(
        fixture.login("orders", "first").await,
        "replaced, not added",
    );
    fixture
        .login("orders", "second")
        .await
        .expect("the new one works");

    for (username, prefix, category) in [
        (ADMIN, "admin:", "reserved_user"),
        ("default", "x:", "reserved_user"),
        ("orders", "orders*", "invalid_key_prefix"),
        ("orders", "", "invalid_key_prefix"),
        ("bad name", "x:", "invalid_username"),
    ] {
        let error = redis_acl::ensure_user(&mut admin, username, "pw", prefix)
            .await
            .expect_err("refused");
        assert_eq!(error.category(), category, "{username} {prefix}: {error}");
    }
    let mut cart = fixture.login(SERVICE, &app_pw).await.expect("service");
    let error = redis_acl::ensure_user(&mut cart, "mine", "hunter2-secret", "mine:")
        .await
        .expect_err("a service user cannot make users");
    assert_eq!(error.category(), "permission_denied", "{error}");
    assert!(!error.to_string().contains("hunter2"), "{error}");

    assert!(
        redis_acl::remove_user(&mut admin, "orders")
            .await
            .expect("remove")
    );
    assert!(
        run(&mut orders, &["PING"]).await.is_err(),
        "its open connections are closed"
    );
    assert_wrong_password(fixture.login("orders", "second").await, "removed user");
    assert!(
        !redis_acl::remove_user(&mut admin, "orders")
            .await
            .expect("again")
    );
    let error = redis_acl::remove_user(&mut admin, "default")
        .await
        .expect_err("default stays");
    assert_eq!(error.category(), "reserved_user");
    // The instance manager's own users are untouched by all this.
    fixture
        .login(SERVICE, &app_pw)
        .await
        .expect("service still logs in");
    assert_eq!(manager.terminate().await.code(), Some(0));
}

#[test]
fn refuses_to_run_as_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this suite must run as root (it switches to the redis user)"
    );
    let root = tempfile::tempdir().expect("tempdir");
    let output = std::process::Command::new(common::servicedb_binary())
        .args(["instance", "--engine", "redis", "--port", "0"])
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

#[test]
fn redis_scripting_is_refused_for_another_engine() {
    let root = tempfile::tempdir().expect("tempdir");
    let output = std::process::Command::new(common::servicedb_binary())
        .args(["instance", "--engine", "postgres", "--redis-scripting"])
        .arg("--data-dir")
        .arg(root.path().join("data"))
        .args(["--status-port", &common::free_port().to_string()])
        .output()
        .expect("run servicedb instance");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--redis-scripting is for --engine redis only"),
        "stderr: {stderr}"
    );
    assert!(!root.path().join("data").exists(), "nothing was created");
}

/// `CONFIG GET name` as the administrator.
async fn config_get(fixture: &Fixture, admin_pw: &str, name: &str) -> String {
    let mut admin = fixture.login(ADMIN, admin_pw).await.expect("admin logs in");
    let value: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg(name)
        .query_async(&mut admin)
        .await
        .expect("CONFIG GET");
    value.get(1).cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn memory_settings_from_the_admin_secret_apply_live() {
    use servicedb::engine::redis::{MAXMEMORY_KEY, MAXMEMORY_POLICY_KEY};
    let (admin_pw, app_pw) = (random(24), random(24));
    let fixture = Fixture::new(&admin_pw, &app_pw);
    let admin_secret = |memory: &[(&str, &str)]| {
        let mut entries = vec![("username", ADMIN), ("password", admin_pw.as_str())];
        entries.extend_from_slice(memory);
        fixture.publish_secret("admin", &entries);
    };
    admin_secret(&[
        (MAXMEMORY_KEY, "10485760"),
        (MAXMEMORY_POLICY_KEY, "allkeys-lru"),
    ]);
    let mut manager = fixture.start();
    manager.wait_ready(&fixture).await;
    let server = manager.server_pid();
    manager
        .eventually("maxmemory set", || async {
            (config_get(&fixture, &admin_pw, "maxmemory").await == "10485760").then_some(())
        })
        .await;
    assert_eq!(
        config_get(&fixture, &admin_pw, "maxmemory-policy").await,
        "allkeys-lru"
    );

    admin_secret(&[
        (MAXMEMORY_KEY, "20971520"),
        (MAXMEMORY_POLICY_KEY, "volatile-ttl"),
    ]);
    manager
        .eventually("the new maxmemory and policy", || async {
            (config_get(&fixture, &admin_pw, "maxmemory").await == "20971520"
                && config_get(&fixture, &admin_pw, "maxmemory-policy").await == "volatile-ttl")
                .then_some(())
        })
        .await;

    // Without the keys, Redis's defaults again: no limit, no eviction.
    admin_secret(&[]);
    manager
        .eventually("Redis's defaults", || async {
            (config_get(&fixture, &admin_pw, "maxmemory").await == "0"
                && config_get(&fixture, &admin_pw, "maxmemory-policy").await == "noeviction")
                .then_some(())
        })
        .await;
    assert_eq!(manager.server_pid(), server, "no restart");
    assert!(manager.log().contains("memory settings applied"));
    manager.assert_log_free_of(&[&admin_pw, &app_pw]);
}
