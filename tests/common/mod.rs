//! Helpers shared by the engine tests (`mod common;` in each test file).

use std::path::PathBuf;
use std::sync::OnceLock;

/// The `servicedb` binary at a path an unprivileged user can execute.
///
/// The instance manager refuses root, so the engine tests run it as the
/// engine's system user; the build's own path may sit below a directory that
/// user cannot enter (CI builds under `~/.cache`). As in a pod, where an init
/// container copies the binary, the tests place it somewhere readable: a hard
/// link when the filesystem allows, else a copy.
pub fn servicedb_binary() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        use std::os::unix::fs::PermissionsExt;
        // SERVICEDB_TEST_BINARY runs the same tests against another build,
        // such as the statically linked one the images carry (`make engine-static`).
        let built = std::env::var_os("SERVICEDB_TEST_BINARY")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_servicedb")));
        // One fixed place, replaced by each test process (cargo runs test
        // binaries one after another), so stale copies do not pile up.
        let dir = std::env::temp_dir().join("servicedb-test-bin");
        std::fs::create_dir_all(&dir).expect("binary dir");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))
            .expect("chmod binary dir");
        let target = dir.join("servicedb");
        let _ = std::fs::remove_file(&target);
        if std::fs::hard_link(&built, &target).is_err() {
            std::fs::copy(&built, &target).expect("copying the servicedb binary");
        }
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o755))
            .expect("chmod binary");
        target
    })
    .clone()
}
