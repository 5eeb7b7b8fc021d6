//! What the backup agent tests share: a real S3 server (versitygw, built by
//! hack/s3/build.sh), FerretDB for MongoDB, and a runner for
//! `servicedb agent …` that checks every run's output for secrets.
//!
//! The PostgreSQL and Redis servers are the e2e tests' (tests/e2e/support/servers.rs).

use std::io::Write;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};

use crate::common;

/// versitygw, shared with the e2e tests.
pub mod s3;
#[path = "../e2e/support/servers.rs"]
#[allow(dead_code)] // shared with the e2e tests, which use all of it
pub mod servers;

/// FerretDB, shared with the e2e tests.
pub mod ferretdb;
#[allow(unused_imports)] // each test crate uses a subset of these helpers
pub use ferretdb::FerretDb;
#[allow(unused_imports)] // each test crate uses a subset of these helpers
pub use s3::{S3, random};

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
