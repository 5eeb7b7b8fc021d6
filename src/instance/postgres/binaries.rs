//! Finding the PostgreSQL server binaries in whatever image we run in.

use std::path::{Path, PathBuf};

use anyhow::bail;

use crate::instance::files::is_executable;

/// Versioned installs: Debian's packages, and the official image (which
/// also puts its bin directory in PATH).
const VERSIONED_ROOT: &str = "/usr/lib/postgresql";

#[derive(Debug, Clone)]
pub(super) struct Binaries {
    pub postgres: PathBuf,
    pub initdb: PathBuf,
}

impl Binaries {
    fn in_dir(dir: &Path) -> Option<Binaries> {
        let binaries = Binaries {
            postgres: dir.join("postgres"),
            initdb: dir.join("initdb"),
        };
        (is_executable(&binaries.postgres) && is_executable(&binaries.initdb)).then_some(binaries)
    }
}

/// `--bin-dir` if given, else the first PATH entry with both binaries, else
/// the newest `/usr/lib/postgresql/<version>/bin`.
pub(super) fn find(bin_dir: Option<&Path>) -> anyhow::Result<Binaries> {
    if let Some(dir) = bin_dir {
        return match Binaries::in_dir(dir) {
            Some(binaries) => Ok(binaries),
            None => bail!(
                "--bin-dir {} does not contain executable `postgres` and `initdb`",
                dir.display()
            ),
        };
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    if let Some(binaries) = std::env::split_paths(&path).find_map(|dir| Binaries::in_dir(&dir)) {
        return Ok(binaries);
    }
    if let Some(binaries) = newest_versioned(Path::new(VERSIONED_ROOT)) {
        return Ok(binaries);
    }
    bail!(
        "no PostgreSQL server binaries (`postgres`, `initdb`) in PATH or {VERSIONED_ROOT}/*/bin; \
         pass --bin-dir"
    )
}

fn newest_versioned(root: &Path) -> Option<Binaries> {
    let mut versions: Vec<(Vec<u32>, PathBuf)> = std::fs::read_dir(root)
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            Some((parse_version(&name)?, entry.path().join("bin")))
        })
        .collect();
    versions.sort();
    versions
        .into_iter()
        .rev()
        .find_map(|(_, dir)| Binaries::in_dir(&dir))
}

/// "15" → [15], "9.6" → [9, 6]; anything else is not a version directory.
fn parse_version(name: &str) -> Option<Vec<u32>> {
    name.split('.').map(|part| part.parse().ok()).collect()
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn fake_install(root: &Path, version: &str) -> PathBuf {
        let bin = root.join(version).join("bin");
        std::fs::create_dir_all(&bin).expect("mkdir");
        for name in ["postgres", "initdb"] {
            let path = bin.join(name);
            std::fs::write(&path, "#!/bin/sh\n").expect("write");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        }
        bin
    }

    #[test]
    fn picks_the_newest_version_numerically() {
        let root = tempfile::tempdir().expect("tempdir");
        fake_install(root.path(), "9.6");
        fake_install(root.path(), "10");
        let newest = fake_install(root.path(), "17");
        std::fs::create_dir_all(root.path().join("not-a-version/bin")).expect("mkdir");
        let found = newest_versioned(root.path()).expect("found");
        assert_eq!(found.postgres, newest.join("postgres"));
    }

    #[test]
    fn skips_incomplete_installs() {
        let root = tempfile::tempdir().expect("tempdir");
        let complete = fake_install(root.path(), "15");
        let incomplete = fake_install(root.path(), "16");
        std::fs::remove_file(incomplete.join("initdb")).expect("rm");
        let found = newest_versioned(root.path()).expect("found");
        assert_eq!(found.initdb, complete.join("initdb"));
    }

    #[test]
    fn explicit_bin_dir_must_be_complete() {
        let root = tempfile::tempdir().expect("tempdir");
        let bin = fake_install(root.path(), "15");
        assert!(find(Some(&bin)).is_ok());
        std::fs::set_permissions(bin.join("postgres"), std::fs::Permissions::from_mode(0o644))
            .expect("chmod");
        assert!(find(Some(&bin)).is_err());
    }

    #[test]
    fn versions() {
        assert_eq!(parse_version("15"), Some(vec![15]));
        assert_eq!(parse_version("9.6"), Some(vec![9, 6]));
        assert_eq!(parse_version("15beta"), None);
        assert!(parse_version("10") > parse_version("9.6"));
    }
}
