//! Files and directories the engines write under the volume.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use anyhow::{Context, bail};

/// Linux's sun_path is 108 bytes including the NUL.
const MAX_SOCKET_PATH: usize = 107;

/// Writes through a temporary file and a rename, so that a crash never
/// leaves the server a half-written configuration.
pub(super) fn write_file(path: &Path, contents: &str) -> anyhow::Result<()> {
    let temporary = path.with_extension("servicedb-tmp");
    let result = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&temporary)?;
        file.write_all(contents.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&temporary, path)
    })();
    result.with_context(|| format!("cannot write {}", path.display()))
}

pub(super) fn set_mode(path: &Path, mode: u32) -> anyhow::Result<()> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).with_context(|| {
        format!(
            "cannot set the permissions of {} to {mode:o}",
            path.display()
        )
    })
}

/// Creates `dir` if need be and makes it private to the server's user: the
/// volume's fsGroup may have made it group-accessible.
pub(super) fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    set_mode(dir, 0o700)
}

/// Removes a file left behind by a killed start, if there is one.
pub(super) fn remove_leftover(path: &Path) -> anyhow::Result<()> {
    match std::fs::remove_file(path) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
            Err(error).with_context(|| format!("cannot remove {}", path.display()))
        }
        _ => Ok(()),
    }
}

pub(super) fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path)
        .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}

/// A unix socket's path must fit in sun_path, or the server cannot bind it.
pub(super) fn check_socket_path(socket: &Path) -> anyhow::Result<()> {
    if socket.as_os_str().len() > MAX_SOCKET_PATH {
        bail!(
            "socket path {} is longer than {MAX_SOCKET_PATH} bytes; use a shorter --data-dir",
            socket.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_privately_and_replaces() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("a.conf");
        write_file(&path, "one").expect("first");
        write_file(&path, "two").expect("second");
        assert_eq!(std::fs::read_to_string(&path).expect("read"), "two");
        let mode = std::fs::metadata(&path).expect("file").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(!dir.path().join("a.servicedb-tmp").exists());
        remove_leftover(&path).expect("removed");
        remove_leftover(&path).expect("already gone");
        assert!(!path.exists());
    }

    #[test]
    fn socket_paths_must_fit() {
        assert!(check_socket_path(Path::new("/var/lib/servicedb/run/redis.sock")).is_ok());
        assert!(check_socket_path(&Path::new("/").join("d".repeat(107))).is_err());
    }
}
