//! MongoDB over the wire, against FerretDB v1.24.2 (the MongoDB wire protocol
//! and SCRAM users over SQLite, built by `hack/ferretdb/build.sh`), because
//! no real mongod can be installed on the test machines.
//!
//! What FerretDB can prove: SCRAM-SHA-256 users created, read back with
//! their stored keys, updated and dropped by `servicedb::engine::mongodb_users`;
//! logins with the Secret's URI form; a wrong password or SCRAM-SHA-1
//! refused; and the instance manager's process behaviour with FerretDB
//! standing in for mongod (argv, keyfile, probes, root's password rotation,
//! SIGTERM, death of the server, refusing root).
//!
//! What it cannot: FerretDB v1 refuses any non-empty `roles` (NotImplemented),
//! has no replica set commands (`replSetInitiate`), no localhost exception
//! and no authorization (every logged-in user may use every database). So
//! the `readWrite`-only grant, the replica set initiation and root's
//! creation through the localhost exception are proven by unit tests of the
//! exact documents and of the bootstrap state machine only.

mod common;

use common::random;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use futures::TryStreamExt;
use mongodb::Client;
use mongodb::bson::{Document, doc};
use nix::sys::signal::{Signal, kill};
use nix::unistd::{Pid, User};
use servicedb::api::Engine;
use servicedb::engine::logins::Marker;
use servicedb::engine::mongodb_users::{
    self as users, Change, Login, Planned, UserSpec, create_user_command,
};
use servicedb::engine::{Connection, for_engine};
use sha2::{Digest, Sha256};

const FERRETDB_VERSION: &str = "v1.24.2";
const TIMEOUT: Duration = Duration::from_secs(5);
const SHA_256: &str = "SCRAM-SHA-256";
const SHA_1: &str = "SCRAM-SHA-1";

/// The binary `hack/ferretdb/build.sh` leaves in the cache, hard-linked (or
/// copied) where an unprivileged user can run it.
fn ferretdb() -> PathBuf {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        let cache = std::env::var_os("SERVICEDB_CACHE")
            .map(PathBuf::from)
            .or_else(|| {
                std::env::var_os("HOME").map(|home| Path::new(&home).join(".cache/servicedb"))
            })
            .expect("HOME or SERVICEDB_CACHE must be set");
        let built = cache.join(format!("ferretdb-{FERRETDB_VERSION}/bin/ferretdb"));
        assert!(
            built.is_file(),
            "FerretDB {FERRETDB_VERSION} is not built ({} is missing): run hack/ferretdb/build.sh \
             (needs Go and the Go module proxy); these tests do not skip without it",
            built.display()
        );
        let dir = std::env::temp_dir().join("servicedb-test-ferretdb");
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let target = dir.join("ferretdb");
        let _ = std::fs::remove_file(&target);
        if std::fs::hard_link(&built, &target).is_err() {
            std::fs::copy(&built, &target).expect("copy ferretdb");
        }
        target
    })
    .clone()
}

fn wait_for_port(port: u16, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            child.try_wait().expect("try_wait").is_none(),
            "ferretdb exited before listening"
        );
        assert!(
            Instant::now() < deadline,
            "ferretdb did not listen on {port}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// FerretDB with a `root` user made by its `--setup-*` flags: it has no
/// localhost exception, so the first user cannot be made over the wire.
struct FerretDb {
    child: Child,
    port: u16,
    root_password: String,
    dir: tempfile::TempDir,
}

impl FerretDb {
    fn start() -> FerretDb {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = common::free_port();
        let root_password = random(24);
        let log = std::fs::File::create(dir.path().join("ferretdb.log")).expect("log file");
        let mut child = Command::new(ferretdb())
            .args(ferretdb_flags(port, dir.path(), "rs0", &root_password))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("start ferretdb");
        wait_for_port(port, &mut child);
        FerretDb {
            child,
            port,
            root_password,
            dir,
        }
    }

    fn root(&self) -> Client {
        self.client(Some(Login {
            source: "admin",
            user: "root",
            password: &self.root_password,
        }))
    }

    fn client(&self, login: Option<Login<'_>>) -> Client {
        users::direct_client("127.0.0.1", self.port, login, TIMEOUT).expect("client")
    }

    /// The connection string exactly as the credentials Secret carries it,
    /// with the mechanism swapped when a test asks for another one. The
    /// Secret names SCRAM-SHA-256 because, left to negotiate, the Rust driver
    /// (mongodb 3.9) relies on speculative authentication, which FerretDB 1.24
    /// answers only over legacy OP_QUERY, and its fallback asks
    /// `saslSupportedMechs` for `admin.<user>` whatever the authSource.
    fn service_uri(&self, database: &str, user: &str, password: &str, mechanism: &str) -> String {
        let uri = for_engine(Engine::MongoDB).uri(&Connection {
            host: "127.0.0.1",
            port: i32::from(self.port),
            database,
            username: user,
            password,
            tls: Default::default(),
        });
        let suffix = format!(
            "/{database}?authSource={database}&authMechanism=SCRAM-SHA-256&directConnection=true"
        );
        assert!(uri.ends_with(&suffix), "{uri}");
        uri.replace(
            "authMechanism=SCRAM-SHA-256",
            &format!("authMechanism={mechanism}"),
        )
    }
}

impl Drop for FerretDb {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(self.dir.path().join("ferretdb.log"));
            eprintln!("FerretDB's log:\n{}", log.unwrap_or_default());
        }
    }
}

fn ferretdb_flags(port: u16, data: &Path, replica_set: &str, root_password: &str) -> Vec<String> {
    vec![
        format!("--listen-addr=127.0.0.1:{port}"),
        "--handler=sqlite".to_owned(),
        format!("--sqlite-url=file:{}/", data.display()),
        format!("--state-dir={}", data.display()),
        "--test-enable-new-auth".to_owned(),
        "--telemetry=disable".to_owned(),
        "--debug-addr=-".to_owned(),
        format!("--repl-set-name={replica_set}"),
        "--setup-database=admin".to_owned(),
        "--setup-username=root".to_owned(),
        format!("--setup-password={root_password}"),
        "--log-level=warn".to_owned(),
    ]
}

/// Logs in with `uri` and counts the documents of `items` (a command that
/// needs the login to have worked).
async fn count_items(uri: &str, database: &str) -> Result<u64, mongodb::error::Error> {
    let client = Client::with_uri_str(uri).await?;
    client
        .database(database)
        .collection::<Document>("items")
        .count_documents(doc! {})
        .await
}

fn is_auth_failure(error: &mongodb::error::Error) -> bool {
    matches!(
        error.kind.as_ref(),
        mongodb::error::ErrorKind::Authentication { .. }
    )
}

/// The documents FerretDB accepts: the service user's, without roles.
fn without_roles(db: &str, user: &str, password: &str) -> UserSpec {
    UserSpec {
        roles: Vec::new(),
        ..UserSpec::service(db, user, password)
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_readwrite_grant_is_sent_and_ferretdb_refuses_only_that() {
    let server = FerretDb::start();
    let root = server.root();
    let error = users::ensure_service_user(&root, "catalog", "catalog", "Pw-12345")
        .await
        .expect_err("FerretDB v1 has no roles");
    assert_eq!(error.category(), "unsupported", "{error}");
    assert_eq!(error.code(), Some(238), "NotImplemented: {error}");
    assert!(error.to_string().contains("roles"), "{error}");
    assert!(!error.to_string().contains("Pw-12345"), "{error}");
    // Refused whole: no user without its grant was left behind.
    assert_eq!(
        users::observe_user(&root, "catalog", "catalog")
            .await
            .expect("usersInfo"),
        None
    );
    // The same document with `roles: []` is accepted: roles are the only
    // thing FerretDB refuses in it.
    let mut accepted = create_user_command("catalog", "Pw-12345", "catalog");
    accepted.insert("roles", Vec::<Document>::new());
    assert_eq!(
        accepted,
        without_roles("catalog", "catalog", "Pw-12345").create_command()
    );
    root.database("catalog")
        .run_command(accepted)
        .await
        .expect("createUser without roles");
}

fn marker(uid: &str, service: &str, adopt_unmarked: bool) -> Marker {
    Marker {
        uid: uid.into(),
        service: service.into(),
        server: "infra/mongo".into(),
        adopt_unmarked,
        adopt_predecessor: false,
    }
}

/// As on a shared server: a service's database is claimed once, in
/// servicedb's own claims collection; a database that exists, or has users,
/// without a claim is refused, naming it, and so is one another service
/// claimed. (FerretDB refuses a non-empty `customData`.)
#[tokio::test(flavor = "multi_thread")]
async fn a_database_is_claimed_once_and_never_adopted() {
    let server = FerretDb::start();
    let root = server.root();
    let ours = marker("uid-a", "shop/orders", false);
    let theirs = marker("uid-b", "shop-x/orders", false);

    assert_eq!(
        users::check_claim(&root, "orders", &ours)
            .await
            .expect("free"),
        users::Claim::Free
    );
    users::claim_database(&root, "orders", &ours)
        .await
        .expect("claim");
    assert_eq!(
        users::check_claim(&root, "orders", &ours)
            .await
            .expect("ours"),
        users::Claim::Ours
    );
    let refused = users::claim_database(&root, "orders", &theirs)
        .await
        .expect_err("another service's");
    assert_eq!(refused.category(), "name_conflict");
    assert!(
        refused.to_string().contains("database orders") && refused.to_string().contains("uid-a"),
        "{refused}"
    );

    // A database with data someone else put there.
    root.database("billing")
        .collection::<Document>("invoices")
        .insert_one(doc! { "n": 1 })
        .await
        .expect("insert");
    let refused = users::claim_database(&root, "billing", &ours)
        .await
        .expect_err("existing data");
    assert_eq!(refused.category(), "name_conflict", "{refused}");
    // A database with only a user someone made.
    root.database("ledger")
        .run_command(without_roles("ledger", "ledger", "Pw-12345").create_command())
        .await
        .expect("createUser");
    let refused = users::claim_database(&root, "ledger", &ours)
        .await
        .expect_err("existing user");
    assert!(refused.to_string().contains("database ledger"), "{refused}");
    // Two services claiming one fresh database at once: one gets it.
    let second = server.root();
    let (first_marker, second_marker) = (
        marker("uid-a", "shop/fresh", false),
        marker("uid-b", "shop-x/fresh", false),
    );
    let (a, b) = tokio::join!(
        users::claim_database(&root, "fresh", &first_marker),
        users::claim_database(&second, "fresh", &second_marker),
    );
    assert!(a.is_ok() != b.is_ok(), "exactly one: {a:?} / {b:?}");
    users::release_claim(&root, "orders", &theirs)
        .await
        .expect("not theirs to release: nothing happens");
    assert_eq!(
        users::check_claim(&root, "orders", &ours)
            .await
            .expect("ours"),
        users::Claim::Ours,
        "another service cannot release the claim"
    );
    // A service given its logins before markers existed claims its own.
    users::claim_database(&root, "ledger", &marker("uid-c", "shop/ledger", true))
        .await
        .expect("adopted");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_scram_sha_256_service_user_logs_in_works_and_follows_its_password() {
    let server = FerretDb::start();
    let root = server.root();
    // URI-hostile characters: the Secret's URI must percent-encode them.
    let first = format!("{}@:/?#%", random(20));
    let spec = without_roles("catalog", "catalog", &first);

    assert_eq!(
        users::ensure_user(&root, &spec).await.expect("create"),
        Planned::Created
    );
    let observed = users::observe_user(&root, "catalog", "catalog")
        .await
        .expect("usersInfo")
        .expect("the user exists");
    assert_eq!(observed.mechanisms, ["SCRAM-SHA-256"]);
    // Our client-side check agrees with the key FerretDB derived itself.
    assert_eq!(observed.password_matches(&first), Some(true));
    assert_eq!(observed.password_matches("other"), Some(false));

    // The service logs in with the Secret's URI and uses its database.
    let uri = server.service_uri("catalog", "catalog", &first, SHA_256);
    let client = Client::with_uri_str(&uri).await.expect("client");
    let items = client.database("catalog").collection::<Document>("items");
    items
        .insert_many(vec![
            doc! { "sku": "a-1", "qty": 3 },
            doc! { "sku": "b-2", "qty": 5 },
        ])
        .await
        .expect("insert as the service user");
    let mut found: Vec<Document> = items
        .find(doc! { "qty": { "$gt": 1 } })
        .await
        .expect("find")
        .try_collect()
        .await
        .expect("read");
    found.sort_by_key(|d| d.get_str("sku").map(str::to_owned).unwrap_or_default());
    let skus: Vec<&str> = found.iter().filter_map(|d| d.get_str("sku").ok()).collect();
    assert_eq!(skus, ["a-1", "b-2"]);

    // A wrong password, or SCRAM-SHA-1, is refused.
    let wrong = server.service_uri("catalog", "catalog", "not-the-password", SHA_256);
    let error = count_items(&wrong, "catalog")
        .await
        .expect_err("wrong password");
    assert!(is_auth_failure(&error), "{error}");
    let sha1 = server.service_uri("catalog", "catalog", &first, SHA_1);
    let error = count_items(&sha1, "catalog")
        .await
        .expect_err("SCRAM-SHA-1");
    assert!(is_auth_failure(&error), "{error}");

    // Unchanged: nothing to write.
    assert_eq!(
        users::ensure_user(&root, &spec).await.expect("repeat"),
        Planned::Unchanged
    );

    // A new password in the Secret: updateUser, the old one stops working.
    let second = random(32);
    let rotated = without_roles("catalog", "catalog", &second);
    assert_eq!(
        users::ensure_user(&root, &rotated).await.expect("update"),
        Planned::Updated(Change {
            password: true,
            roles: false
        })
    );
    let error = count_items(&uri, "catalog")
        .await
        .expect_err("old password");
    assert!(is_auth_failure(&error), "{error}");
    let new_uri = server.service_uri("catalog", "catalog", &second, SHA_256);
    assert_eq!(
        count_items(&new_uri, "catalog")
            .await
            .expect("new password"),
        2
    );
    assert_eq!(
        users::ensure_user(&root, &rotated).await.expect("repeat"),
        Planned::Unchanged
    );

    // Dropped: it cannot log in; dropping again is a no-op.
    assert!(
        users::drop_user(&root, "catalog", "catalog")
            .await
            .expect("drop")
    );
    let error = count_items(&new_uri, "catalog").await.expect_err("dropped");
    assert!(is_auth_failure(&error), "{error}");
    assert!(
        !users::drop_user(&root, "catalog", "catalog")
            .await
            .expect("drop again")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_user_made_by_hand_with_scram_sha_1_is_repaired() {
    let server = FerretDb::start();
    let root = server.root();
    let password = random(24);
    root.database("orders")
        .run_command(doc! {
            "createUser": "orders",
            "pwd": &password,
            "roles": [],
            "mechanisms": ["SCRAM-SHA-1", "SCRAM-SHA-256"],
        })
        .await
        .expect("createUser by hand");
    let sha1 = server.service_uri("orders", "orders", &password, SHA_1);
    count_items(&sha1, "orders")
        .await
        .expect("SHA-1 works before");

    // Same password, but SHA-1 too: set again, SHA-256 only.
    let spec = without_roles("orders", "orders", &password);
    assert_eq!(
        users::ensure_user(&root, &spec).await.expect("repair"),
        Planned::Updated(Change {
            password: true,
            roles: false
        })
    );
    let observed = users::observe_user(&root, "orders", "orders")
        .await
        .expect("usersInfo")
        .expect("exists");
    assert_eq!(observed.mechanisms, ["SCRAM-SHA-256"]);
    let error = count_items(&sha1, "orders").await.expect_err("SHA-1 gone");
    assert!(is_auth_failure(&error), "{error}");
    let uri = server.service_uri("orders", "orders", &password, SHA_256);
    assert_eq!(count_items(&uri, "orders").await.expect("SHA-256 login"), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn login_failures_are_categorised_without_the_password() {
    let server = FerretDb::start();
    let secret = format!("wrong-{}", random(16));
    let client = server.client(Some(Login {
        source: "admin",
        user: "root",
        password: &secret,
    }));
    let error = users::hello(&client)
        .await
        .expect_err("wrong root password");
    assert_eq!(error.category(), "authentication_failed", "{error}");
    assert!(!error.to_string().contains(&secret));
    // Not logged in: hello works, anything else is refused.
    let anonymous = server.client(None);
    let hello = users::hello(&anonymous).await.expect("anonymous hello");
    assert_eq!(hello.get_str("setName"), Ok("rs0"));
    let error = users::observe_user(&anonymous, "catalog", "catalog")
        .await
        .expect_err("usersInfo needs a login");
    assert_eq!(error.category(), "permission_denied", "{error}");
    // Nothing listening at all.
    let closed = users::direct_client(
        "127.0.0.1",
        common::free_port(),
        None,
        Duration::from_millis(500),
    )
    .expect("client");
    let error = users::hello(&closed).await.expect_err("nothing there");
    assert_eq!(error.category(), "connection", "{error}");
}

// ---- The instance manager, with FerretDB standing in for mongod ----------

/// A volume, Secrets and a `mongod` that runs FerretDB, owned by an
/// unprivileged user (the instance manager refuses root).
struct Instance {
    root: tempfile::TempDir,
    user: User,
    port: u16,
    status_port: u16,
    admin_password: String,
}

impl Instance {
    fn new() -> Instance {
        let user = match User::from_name("nobody") {
            Ok(Some(user)) => user,
            other => panic!("the instance manager runs as `nobody` here; not found: {other:?}"),
        };
        let root = tempfile::Builder::new()
            .prefix("sdb-mongo")
            .tempdir_in("/tmp")
            .expect("tempdir");
        let instance = Instance {
            root,
            user,
            port: common::free_port(),
            status_port: common::free_port(),
            admin_password: random(24),
        };
        for dir in ["data", "bin", "admin", "app"] {
            std::fs::create_dir(instance.path(dir)).expect("mkdir");
        }
        instance.write_secret(
            "admin",
            &[("username", "root"), ("password", &instance.admin_password)],
        );
        instance.write_secret(
            "app",
            &[
                ("username", "catalog"),
                ("password", &random(24)),
                ("database", "catalog"),
            ],
        );
        instance.write_mongod_stand_in();
        for dir in [instance.root.path().to_owned(), instance.path("data")] {
            std::os::unix::fs::chown(
                &dir,
                Some(instance.user.uid.as_raw()),
                Some(instance.user.gid.as_raw()),
            )
            .expect("chown to the unprivileged user");
        }
        instance
    }

    fn path(&self, name: &str) -> PathBuf {
        self.root.path().join(name)
    }

    /// Plain files, world-readable, replaced atomically (the symlink dance
    /// of the kubelet is covered by the Postgres tests of the shared reader).
    fn write_secret(&self, dir: &str, entries: &[(&str, &str)]) {
        for (key, value) in entries {
            let path = self.path(dir).join(key);
            let temporary = path.with_extension("new");
            std::fs::write(&temporary, format!("{value}\n")).expect("write secret");
            std::fs::set_permissions(&temporary, std::fs::Permissions::from_mode(0o644))
                .expect("chmod");
            std::fs::rename(&temporary, &path).expect("rename");
        }
    }

    /// `bin/mongod`: records its argv, then execs FerretDB (so signals reach
    /// it directly) with the flags matching mongod's. Root comes from the
    /// `--setup-*` flags, FerretDB having no localhost exception.
    fn write_mongod_stand_in(&self) {
        let script = format!(
            "#!/bin/sh\n\
             printf '%s\\n' \"$@\" > '{argv}'\n\
             while [ $# -gt 0 ]; do\n\
               case \"$1\" in\n\
                 --dbpath) dbpath=$2; shift 2;;\n\
                 --port) port=$2; shift 2;;\n\
                 --replSet) replset=$2; shift 2;;\n\
                 *) shift;;\n\
               esac\n\
             done\n\
             exec '{ferretdb}' --listen-addr=127.0.0.1:$port --handler=sqlite \
             --sqlite-url=file:$dbpath/ --state-dir=$dbpath --test-enable-new-auth \
             --telemetry=disable --debug-addr=- --repl-set-name=$replset \
             --setup-database=admin --setup-username=root \
             --setup-password=\"$(cat '{admin}/password')\" --log-level=warn\n",
            argv = self.path("data").join("mongod.argv").display(),
            ferretdb = ferretdb().display(),
            admin = self.path("admin").display(),
        );
        let path = self.path("bin").join("mongod");
        std::fs::write(&path, script).expect("write mongod");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }

    fn command(&self) -> Command {
        let mut command = Command::new(common::servicedb_binary());
        command
            .args(["instance", "--engine", "mongodb"])
            .arg("--data-dir")
            .arg(self.path("data"))
            .arg("--admin-secret-dir")
            .arg(self.path("admin"))
            .arg("--app-secret-dir")
            .arg(self.path("app"))
            .args(["--port", &self.port.to_string()])
            .args(["--listen-address", "127.0.0.1"])
            .args(["--status-port", &self.status_port.to_string()])
            .arg("--bin-dir")
            .arg(self.path("bin"))
            .args(["--sync-interval", "1s"])
            .env("RUST_LOG", "info")
            .current_dir(self.root.path());
        command
    }

    fn start(&self) -> Running {
        let mut command = self.command();
        command
            .uid(self.user.uid.as_raw())
            .gid(self.user.gid.as_raw());
        Running::spawn(command)
    }

    fn root_client(&self, password: &str) -> Client {
        let login = Login {
            source: "admin",
            user: "root",
            password,
        };
        users::direct_client("127.0.0.1", self.port, Some(login), TIMEOUT).expect("client")
    }

    /// `(status, body)` of `GET /<path>` on the status port; `None` while
    /// nothing answers.
    fn probe(&self, path: &str) -> Option<(u16, String)> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.status_port)).ok()?;
        stream.set_read_timeout(Some(TIMEOUT)).ok()?;
        stream
            .write_all(format!("GET /{path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
            .ok()?;
        let mut reply = String::new();
        stream.read_to_string(&mut reply).ok()?;
        let (head, body) = reply.split_once("\r\n\r\n")?;
        let status = head.split(' ').nth(1)?.parse().ok()?;
        Some((status, body.trim().to_owned()))
    }
}

/// The instance manager's process and its collected output; killed if a
/// test fails before stopping it (FerretDB follows through its
/// parent-death signal).
struct Running {
    child: Child,
    output: Arc<Mutex<String>>,
}

impl Running {
    fn spawn(mut command: Command) -> Running {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn servicedb instance");
        let output = Arc::new(Mutex::new(String::new()));
        for stream in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let output = output.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    eprintln!("[instance] {line}");
                    let mut text = output.lock().unwrap_or_else(|e| e.into_inner());
                    text.push_str(&line);
                    text.push('\n');
                }
            });
        }
        Running { child, output }
    }

    fn output(&self) -> String {
        self.output
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn pid(&self) -> Pid {
        Pid::from_raw(i32::try_from(self.child.id()).expect("pid"))
    }

    /// The exit status, once it comes (at most `within`).
    fn exit_status(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                std::thread::sleep(Duration::from_millis(100)); // drain output
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "still running after {within:?}; output:\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Polls until `check` holds, failing with the output after 30 s.
    async fn until<T>(&mut self, what: &str, mut check: impl AsyncFnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                panic!(
                    "exited ({status}) while waiting for {what}; output:\n{}",
                    self.output()
                );
            }
            if let Some(value) = check().await {
                return value;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; output:\n{}",
                self.output()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The child process the instance manager started (mongod's place).
    fn server_pid(&self) -> Option<Pid> {
        let me = self.child.id().to_string();
        std::fs::read_dir("/proc").ok()?.find_map(|entry| {
            let entry = entry.ok()?;
            let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
            // pid (comm) state ppid ...
            let after_comm = stat.rsplit_once(") ")?.1;
            let ppid = after_comm.split(' ').nth(1)?;
            (ppid == me)
                .then(|| entry.file_name().to_str()?.parse().ok().map(Pid::from_raw))
                .flatten()
        })
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_instance_manager_runs_supervises_and_stops_its_server() {
    let instance = Instance::new();
    let mut running = instance.start();

    running
        .until("/healthz 200", async || {
            instance
                .probe("healthz")
                .filter(|(status, _)| *status == 200)
        })
        .await;

    // mongod's command line, exactly, as argv (no shell between).
    let data = instance.path("data");
    let argv = std::fs::read_to_string(data.join("mongod.argv")).expect("argv recorded");
    let expected = [
        "--dbpath".to_owned(),
        data.join("mongodb").display().to_string(),
        "--port".to_owned(),
        instance.port.to_string(),
        "--bind_ip".to_owned(),
        "127.0.0.1".to_owned(),
        "--replSet".to_owned(),
        "rs0".to_owned(),
        "--keyFile".to_owned(),
        data.join("mongodb-keyfile").display().to_string(),
        "--auth".to_owned(),
        "--nounixsocket".to_owned(),
    ];
    assert_eq!(argv.lines().collect::<Vec<_>>(), expected);

    // The keyfile: derived from the admin password, read-only, owned by the
    // unprivileged user mongod runs as.
    let keyfile = data.join("mongodb-keyfile");
    let meta = std::fs::metadata(&keyfile).expect("keyfile");
    assert_eq!(meta.permissions().mode() & 0o777, 0o400);
    assert_eq!(
        std::os::unix::fs::MetadataExt::uid(&meta),
        instance.user.uid.as_raw()
    );
    let mut label = b"servicedb mongodb keyfile v1\0".to_vec();
    label.extend_from_slice(instance.admin_password.as_bytes());
    assert_eq!(
        std::fs::read_to_string(&keyfile).expect("read keyfile"),
        base64::engine::general_purpose::STANDARD.encode(Sha256::digest(&label))
    );
    let dbpath_mode = std::fs::metadata(data.join("mongodb"))
        .expect("dbpath")
        .permissions()
        .mode();
    assert_eq!(dbpath_mode & 0o777, 0o700);

    // Root logs in and sees a primary; the service user is then created
    // with its readWrite grant, which FerretDB refuses: never ready here.
    let (status, body) = running
        .until("/readyz to report the service user step", async || {
            instance
                .probe("readyz")
                .filter(|(_, body)| body.contains("user sync failed"))
        })
        .await;
    assert_eq!(
        (status, body.as_str()),
        (503, "user sync failed: unsupported")
    );
    assert!(
        running
            .output()
            .contains("createUser refused: NotImplemented")
    );
    assert!(!running.output().contains(&instance.admin_password));

    // The admin Secret rotates (the old password kept as previous-password):
    // root's password on the server follows.
    let new_password = random(24);
    instance.write_secret(
        "admin",
        &[
            ("password", &new_password),
            ("previous-password", &instance.admin_password),
        ],
    );
    running
        .until("root to log in with the new password", async || {
            users::hello(&instance.root_client(&new_password))
                .await
                .ok()
        })
        .await;
    let error = users::hello(&instance.root_client(&instance.admin_password))
        .await
        .expect_err("the old root password stops working");
    assert_eq!(error.category(), "authentication_failed");
    assert!(running.output().contains("root's password changed"));
    assert!(!running.output().contains(&new_password));

    // SIGTERM: the server is stopped, then the instance manager exits 0.
    let server = running.server_pid().expect("the server is a child");
    kill(running.pid(), Signal::SIGTERM).expect("SIGTERM");
    let status = running.exit_status(Duration::from_secs(40));
    assert!(status.success(), "{status}; output:\n{}", running.output());
    assert!(running.output().contains("mongod stopped"));
    assert!(
        kill(server, None).is_err(),
        "the server process {server} is still alive"
    );
    assert!(TcpStream::connect(("127.0.0.1", instance.port)).is_err());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_instance_manager_exits_non_zero_when_its_server_dies() {
    let instance = Instance::new();
    let mut running = instance.start();
    running
        .until("the server to listen", async || {
            TcpStream::connect(("127.0.0.1", instance.port)).ok()
        })
        .await;
    let server = running.server_pid().expect("the server is a child");
    kill(server, Signal::SIGKILL).expect("kill the server");
    let status = running.exit_status(Duration::from_secs(20));
    assert!(!status.success(), "must fail so the kubelet restarts it");
    let output = running.output();
    assert!(output.contains("mongod exited unexpectedly"), "{output}");
    assert!(output.contains("killed by SIGKILL"), "{output}");
}

#[test]
fn the_instance_manager_refuses_to_run_as_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test runs the instance manager as root to see it refuse; run the tests as root"
    );
    let instance = Instance::new();
    let output = instance.command().output().expect("run as root");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("refusing to run as root"), "{stderr}");
    assert!(
        !instance.path("data").join("mongodb").exists(),
        "nothing was created"
    );
}
