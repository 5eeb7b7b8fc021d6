//! Finding the server binary: `redis-server`, or Valkey's `valkey-server`,
//! which reads the same configuration.

use std::path::{Path, PathBuf};

use anyhow::bail;

use crate::instance::files::is_executable;

const NAMES: [&str; 2] = ["redis-server", "valkey-server"];
/// Debian's and Alpine's packages; the official image also has
/// /usr/local/bin, which is in its PATH.
const FALLBACK_DIR: &str = "/usr/bin";

/// `--bin-dir` if given, else the first PATH entry holding one of the
/// binaries, else /usr/bin. The path is not canonicalised: Debian's
/// `redis-server` is a symlink to `redis-check-rdb`, and the binary picks
/// its role from the name it was started under.
pub(super) fn find(bin_dir: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(dir) = bin_dir {
        return match in_dir(dir) {
            Some(binary) => Ok(binary),
            None => bail!(
                "--bin-dir {} contains no executable `redis-server` or `valkey-server`",
                dir.display()
            ),
        };
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from(FALLBACK_DIR)])
        .find_map(|dir| in_dir(&dir))
        .ok_or_else(|| {
            anyhow::anyhow!(
                "no `redis-server` or `valkey-server` in PATH or {FALLBACK_DIR}; pass --bin-dir"
            )
        })
}

fn in_dir(dir: &Path) -> Option<PathBuf> {
    NAMES
        .iter()
        .map(|name| dir.join(name))
        .find(|path| is_executable(path))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn install(dir: &Path, name: &str, mode: u32) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, "#!/bin/sh\n").expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
        path
    }

    #[test]
    fn prefers_redis_then_valkey() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(in_dir(dir.path()), None);
        let valkey = install(dir.path(), "valkey-server", 0o755);
        assert_eq!(in_dir(dir.path()), Some(valkey));
        let redis = install(dir.path(), "redis-server", 0o755);
        assert_eq!(find(Some(dir.path())).expect("found"), redis);
    }

    #[test]
    fn explicit_bin_dir_must_hold_an_executable() {
        let dir = tempfile::tempdir().expect("tempdir");
        install(dir.path(), "redis-server", 0o644);
        std::fs::create_dir(dir.path().join("valkey-server")).expect("mkdir");
        assert!(find(Some(dir.path())).is_err());
    }
}
