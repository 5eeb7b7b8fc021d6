//! Running `kubectl` and the `kubectl servicedb` plugin as a user would,
//! and reading their tables.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// A directory holding `kubectl-servicedb`, a link to the servicedb binary,
/// as the README's install step makes it.
pub fn plugin_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    std::os::unix::fs::symlink(
        env!("CARGO_BIN_EXE_servicedb"),
        dir.path().join("kubectl-servicedb"),
    )
    .expect("linking kubectl-servicedb");
    dir
}

/// Runs `kubectl servicedb ARGS -n NS` to the end.
pub fn run(dir: &Path, ns: &str, args: &[&str]) -> Output {
    kubectl_plugin(dir)
        .args(args)
        .args(["-n", ns])
        .output()
        .expect("running kubectl servicedb")
}

pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// kubectl from the test control plane's bin directory (as
/// `hack/testenv/build.sh` prints it), or `$KUBECTL`.
pub fn kubectl() -> PathBuf {
    if let Ok(path) = std::env::var("KUBECTL") {
        return PathBuf::from(path);
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(root.join("hack/testenv/build.sh"))
        .output()
        .expect("running hack/testenv/build.sh");
    assert!(out.status.success(), "hack/testenv/build.sh failed");
    let dir = String::from_utf8_lossy(&out.stdout).trim().to_string();
    PathBuf::from(dir).join("kubectl")
}

/// A kubectl-style table as rows of (header, cell); cells are cut at the
/// headers' columns, since headers may hold spaces.
pub fn table(text: &str) -> Vec<Vec<(String, String)>> {
    let mut lines = text.lines();
    let header = lines.next().expect("a header line");
    // A column starts where a header word follows two spaces (or the start).
    let mut starts = vec![0];
    let bytes = header.as_bytes();
    for i in 2..bytes.len() {
        if bytes[i] != b' ' && bytes[i - 1] == b' ' && bytes[i - 2] == b' ' {
            starts.push(i);
        }
    }
    let cell = |line: &str, k: usize| {
        let end = starts
            .get(k + 1)
            .copied()
            .unwrap_or(line.len())
            .min(line.len());
        line.get(starts[k]..end)
            .unwrap_or_default()
            .trim()
            .to_string()
    };
    lines
        .map(|line| {
            (0..starts.len())
                .map(|k| (cell(header, k), cell(line, k)))
                .collect()
        })
        .collect()
}

/// `kubectl servicedb`: the real kubectl, finding the plugin on PATH.
pub fn kubectl_plugin(dir: &Path) -> Command {
    static KUBECTL: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    let path = format!(
        "{}:{}",
        dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut cmd = Command::new(KUBECTL.get_or_init(kubectl));
    cmd.arg("servicedb").env("PATH", path).stdin(Stdio::null());
    cmd
}
