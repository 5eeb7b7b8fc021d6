//! What the backup agent tests share: a real S3 server (versitygw, built by
//! hack/s3/build.sh), FerretDB for MongoDB, and a runner for
//! `servicedb agent …` that checks every run's output for secrets.
//!
//! The PostgreSQL and Redis servers are the e2e tests' (tests/e2e/servers.rs).

use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};

use crate::common;

/// versitygw, shared with the e2e tests.
pub mod s3;
#[path = "../e2e/servers.rs"]
#[allow(dead_code)] // shared with the e2e tests, which use all of it
pub mod servers;

pub use s3::{S3, random};
use s3::{cache_dir, wait_for_port};

#[allow(dead_code)] // each test crate uses a subset of these helpers
const FERRETDB_VERSION: &str = "v1.24.2";

/// Where the agent reaches a server that also listens for TLS: its TLS
/// port with `--tls verify-full` when it has one, else the plain port.
#[allow(dead_code)] // each test crate uses a subset of these helpers
pub fn agent_endpoint(
    port: u16,
    tls: &Option<servers::TestCa>,
    tls_port: Option<u16>,
) -> (u16, Vec<String>) {
    match (tls, tls_port) {
        (Some(ca), Some(tls_port)) => (tls_port, verify_full(ca)),
        _ => (port, vec![]),
    }
}

/// The agent's flags for a server whose certificate `ca` signed.
#[allow(dead_code)] // each test crate uses a subset of these helpers
pub fn verify_full(ca: &servers::TestCa) -> Vec<String> {
    vec![
        "--tls".to_owned(),
        "verify-full".to_owned(),
        "--tls-ca-file".to_owned(),
        ca.ca.display().to_string(),
    ]
}

/// Every file under `dir`, relative to it, sorted.
pub fn files_under(dir: &Path) -> Vec<String> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(base, &path, out);
            } else {
                out.push(
                    path.strip_prefix(base)
                        .expect("under base")
                        .display()
                        .to_string(),
                );
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// The outcome of one `servicedb agent` run.
#[derive(Debug)]
pub struct Run {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    /// What the agent wrote to its termination log.
    pub termination: String,
}

impl Run {
    /// The one JSON line a successful run prints.
    pub fn json(&self) -> serde_json::Value {
        assert!(self.status.success(), "the agent failed: {self:#?}");
        let lines: Vec<&str> = self.stdout.lines().collect();
        assert_eq!(lines.len(), 1, "one line on stdout: {self:#?}");
        let value: serde_json::Value = serde_json::from_str(lines[0]).expect("JSON on stdout");
        let termination: serde_json::Value =
            serde_json::from_str(&self.termination).expect("JSON in the termination log");
        assert_eq!(value, termination, "stdout and termination log differ");
        value
    }

    /// The reason of a failed run: the `error` of the termination log, also
    /// on stderr.
    pub fn error(&self) -> String {
        assert!(!self.status.success(), "the agent succeeded: {self:#?}");
        assert!(
            self.stdout.is_empty(),
            "a failure printed a result: {self:#?}"
        );
        let termination: serde_json::Value =
            serde_json::from_str(&self.termination).expect("JSON in the termination log");
        let reason = termination["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no error in the termination log: {self:#?}"))
            .to_owned();
        // The termination log may hold a shortened reason, stderr all of it.
        assert!(
            self.stderr
                .contains(&format!("error: {}", reason.trim_end_matches("..."))),
            "the reason is not on stderr: {self:#?}"
        );
        reason
    }
}

/// Runs `servicedb agent <args>` with `env` (and nothing of the test's own
/// AWS_*/SERVICEDB_* environment), then checks that none of `secrets` (and
/// none of the secret values in `env`) appears in anything it wrote.
pub fn agent(args: &[&str], env: &[(String, String)], secrets: &[&str]) -> Run {
    let dir = tempfile::tempdir().expect("tempdir");
    let termination_log = dir.path().join("termination-log");
    let output = agent_command(args, env, &termination_log)
        .output()
        .expect("running servicedb agent");
    let run = Run {
        status: output.status,
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        termination: std::fs::read_to_string(&termination_log).unwrap_or_default(),
    };
    let env_secrets = env
        .iter()
        .filter(|(k, _)| k == "SERVICEDB_PASSWORD" || k == "AWS_SECRET_ACCESS_KEY")
        .map(|(_, v)| v.as_str());
    for secret in secrets.iter().copied().chain(env_secrets) {
        if secret.is_empty() {
            continue;
        }
        for (what, text) in [
            ("stdout", &run.stdout),
            ("stderr", &run.stderr),
            ("termination log", &run.termination),
        ] {
            assert!(
                !text.contains(secret),
                "a secret appears in the agent's {what}: {run:#?}"
            );
        }
    }
    let _ = std::io::stderr().flush();
    run
}

/// `servicedb agent <args>` with `env` only (none of the test's own
/// AWS_*/SERVICEDB_* variables), writing its termination log to `log`.
pub fn agent_command(args: &[&str], env: &[(String, String)], log: &Path) -> Command {
    let mut command = Command::new(common::servicedb_binary());
    command.arg("agent").args(args);
    command.arg("--termination-log").arg(log);
    for (name, _) in std::env::vars() {
        if name.starts_with("AWS_") || name.starts_with("SERVICEDB_") {
            command.env_remove(name);
        }
    }
    command
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null());
    command
}

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
