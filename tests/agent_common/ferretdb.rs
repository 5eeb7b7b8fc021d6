//! FerretDB (the MongoDB wire protocol over SQLite, built by
//! hack/ferretdb/build.sh) with a `root` user on `admin`, on a free loopback
//! port: the MongoDB server of the agent tests and of the e2e tests (which
//! include this file as their `ferretdb` module; `super` is the module that
//! also holds `s3` and `servers` in both).

use std::process::{Child, Command, Stdio};

use super::s3::{cache_dir, random, wait_for_port};
use super::servers;
use crate::common;

const FERRETDB_VERSION: &str = "v1.24.2";

/// FerretDB (the MongoDB wire protocol over SQLite, hack/ferretdb/build.sh)
/// with a `root` user on `admin`.
#[allow(dead_code)] // each test crate uses a subset of these helpers
pub struct FerretDb {
    child: Child,
    dir: tempfile::TempDir,
    pub port: u16,
    pub root_password: String,
    /// A TLS listener beside the plain one, with a certificate from `tls`.
    pub tls_port: Option<u16>,
    pub tls: Option<servers::TestCa>,
}

impl FerretDb {
    #[allow(dead_code)] // each test crate uses a subset of these helpers
    pub fn start() -> FerretDb {
        FerretDb::start_with(false)
    }

    /// Also listens for TLS (no client certificates) on `tls_port`.
    #[allow(dead_code)] // each test crate uses a subset of these helpers
    pub fn start_tls() -> FerretDb {
        FerretDb::start_with(true)
    }

    fn start_with(tls: bool) -> FerretDb {
        let binary = cache_dir().join(format!("ferretdb-{FERRETDB_VERSION}/bin/ferretdb"));
        assert!(
            binary.is_file(),
            "FerretDB {FERRETDB_VERSION} is not built ({} is missing): run hack/ferretdb/build.sh \
             (needs Go and the Go module proxy); these tests do not skip without it",
            binary.display()
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let port = common::free_port();
        let root_password = random(24);
        let log_path = dir.path().join("ferretdb.log");
        let log = std::fs::File::create(&log_path).expect("log file");
        let mut tls_args = vec![];
        let (tls_port, tls) = if tls {
            let ca = servers::TestCa::owned_by_me(dir.path());
            let port = common::free_port();
            tls_args = vec![
                format!("--listen-tls=127.0.0.1:{port}"),
                format!("--listen-tls-cert-file={}", ca.cert.display()),
                format!("--listen-tls-key-file={}", ca.key.display()),
            ];
            (Some(port), Some(ca))
        } else {
            (None, None)
        };
        let mut child = Command::new(binary)
            .args(tls_args)
            .args([
                format!("--listen-addr=127.0.0.1:{port}"),
                "--handler=sqlite".to_owned(),
                format!("--sqlite-url=file:{}/", dir.path().display()),
                format!("--state-dir={}", dir.path().display()),
                "--test-enable-new-auth".to_owned(),
                "--telemetry=disable".to_owned(),
                "--debug-addr=-".to_owned(),
                "--setup-database=admin".to_owned(),
                "--setup-username=root".to_owned(),
                format!("--setup-password={root_password}"),
                "--log-level=warn".to_owned(),
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("start ferretdb");
        wait_for_port("ferretdb", port, &mut child, &log_path);
        if let Some(tls_port) = tls_port {
            wait_for_port("ferretdb (TLS)", tls_port, &mut child, &log_path);
        }
        FerretDb {
            child,
            dir,
            port,
            root_password,
            tls_port,
            tls,
        }
    }
}

impl Drop for FerretDb {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "FerretDB's log:\n{}",
                std::fs::read_to_string(self.dir.path().join("ferretdb.log")).unwrap_or_default()
            );
        }
    }
}
