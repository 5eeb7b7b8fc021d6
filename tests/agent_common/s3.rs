//! A real S3 server for the tests: versitygw (built by hack/s3/build.sh)
//! with its posix backend, and the helpers it needs. Shared by the backup
//! agent tests (`agent_common::s3`) and the e2e tests.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common;

const VERSITYGW_VERSION: &str = "v1.8.0";

pub use crate::common::random;

/// Where the Go-built test tools live (hack/*/build.sh).
pub fn cache_dir() -> PathBuf {
    std::env::var_os("SERVICEDB_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".cache/servicedb")))
        .expect("HOME or SERVICEDB_CACHE must be set")
}

/// Waits until `child` listens on `port`; panics with its log if it exits.
pub fn wait_for_port(what: &str, port: u16, child: &mut Child, log: &Path) {
    wait_for_address(what, "127.0.0.1", port, child, log)
}

/// Waits until `child` listens on `host`:`port`; panics with its log if it
/// exits.
pub fn wait_for_address(what: &str, host: &str, port: u16, child: &mut Child, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect((host, port)).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "{what} exited ({status}) before listening:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        assert!(Instant::now() < deadline, "{what} did not listen on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// versitygw with its posix backend: an S3 API with SigV4 authentication
/// over a directory, where each subdirectory is a bucket.
pub struct S3 {
    child: Child,
    root: tempfile::TempDir,
    pub endpoint: String,
    pub access_key: String,
    pub secret_key: String,
}

impl S3 {
    pub fn start() -> S3 {
        S3::start_on("127.0.0.1")
    }

    /// versitygw listening on `host` (an address pods reach, for the
    /// real-cluster tier).
    pub fn start_on(host: &str) -> S3 {
        let binary = cache_dir().join(format!("versitygw-{VERSITYGW_VERSION}/bin/versitygw"));
        assert!(
            binary.is_file(),
            "versitygw {VERSITYGW_VERSION} is not built ({} is missing): run hack/s3/build.sh \
             (needs Go and the Go module proxy); these tests do not skip without it",
            binary.display()
        );
        let root = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(root.path().join("gw")).expect("mkdir");
        let port = common::free_port();
        let access_key = format!("AKIA{}", random(16).to_uppercase());
        let secret_key = random(40);
        let log_path = root.path().join("versitygw.log");
        let log = std::fs::File::create(&log_path).expect("log");
        let mut child = Command::new(binary)
            .arg("--port")
            .arg(format!("{host}:{port}"))
            .arg("--quiet")
            .arg("posix")
            .arg(root.path().join("gw"))
            // The root credentials through versitygw's environment, not argv.
            .env("ROOT_ACCESS_KEY_ID", &access_key)
            .env("ROOT_SECRET_ACCESS_KEY", &secret_key)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("starting versitygw");
        wait_for_address("versitygw", host, port, &mut child, &log_path);
        S3 {
            child,
            root,
            endpoint: format!("http://{host}:{port}"),
            access_key,
            secret_key,
        }
    }

    /// A bucket is a directory of the posix backend.
    pub fn create_bucket(&self, name: &str) {
        std::fs::create_dir(self.bucket_dir(name)).expect("create bucket");
    }

    /// Where the backend keeps a bucket's objects, for tests that look at
    /// (or damage) them directly.
    pub fn bucket_dir(&self, name: &str) -> PathBuf {
        self.root.path().join("gw").join(name)
    }

    /// Env of an agent that uses this store.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID".to_owned(), self.access_key.clone()),
            ("AWS_SECRET_ACCESS_KEY".to_owned(), self.secret_key.clone()),
        ]
    }
}

impl Drop for S3 {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "versitygw's log:\n{}",
                std::fs::read_to_string(self.root.path().join("versitygw.log")).unwrap_or_default()
            );
        }
    }
}
