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
#[allow(dead_code)] // each test crate uses a subset of these helpers
pub fn servicedb_binary() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        use std::os::unix::fs::PermissionsExt;
        // SERVICEDB_TEST_BINARY runs the same tests against another build,
        // such as the statically linked one the images carry (`make engine-static`).
        let built = std::env::var_os("SERVICEDB_TEST_BINARY")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_servicedb")));
        // One fixed place, so stale copies do not pile up. Test processes
        // may run side by side (hack/e2e.sh): each lays its copy down under
        // its own name and renames it into place, which never disturbs a
        // process that is running the previous one.
        let dir = std::env::temp_dir().join("servicedb-test-bin");
        std::fs::create_dir_all(&dir).expect("binary dir");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))
            .expect("chmod binary dir");
        let target = dir.join("servicedb");
        let staged = dir.join(format!("servicedb.{}", std::process::id()));
        let _ = std::fs::remove_file(&staged);
        if std::fs::hard_link(&built, &staged).is_err() {
            std::fs::copy(&built, &staged).expect("copying the servicedb binary");
        }
        std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o755))
            .expect("chmod binary");
        std::fs::rename(&staged, &target).expect("placing the servicedb binary");
        // rename does nothing when both names are links to the same file.
        let _ = std::fs::remove_file(&staged);
        target
    })
    .clone()
}

/// `len` random letters and digits: passwords, names, keys.
#[allow(dead_code)] // each test crate uses a subset of these helpers
pub fn random(len: usize) -> String {
    use rand::distr::{Alphanumeric, SampleString};
    Alphanumeric.sample_string(&mut rand::rng(), len)
}

/// `GET path` on 127.0.0.1:`port`: the status code and the body (trimmed),
/// or `None` when nothing answers within the timeouts.
#[allow(dead_code)] // each test crate uses a subset of these helpers
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    use std::time::Duration;
    let address = ([127, 0, 0, 1], port).into();
    let mut stream = std::net::TcpStream::connect_timeout(&address, Duration::from_secs(1)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    let code = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, body.trim().to_owned()))
}

/// SIGKILLs the direct children of process `parent` (an instance manager's
/// server): a server told to stop by its parent-death signal saves its data
/// first, and when a test has removed the data directory by then, Redis
/// refuses to exit and outlives the test.
#[allow(dead_code)] // each test crate uses a subset of these helpers
pub fn kill_children(parent: u32) {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // "pid (comm) state ppid ..."; comm may hold spaces, not ") ".
        let ppid = stat
            .rsplit_once(") ")
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(parent) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// A free TCP port on the loopback interface.
#[allow(dead_code)] // each test crate uses a subset of these helpers
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("an ephemeral port")
        .port()
}

/// The system user an engine runs as (the instance manager and the servers
/// refuse root), created by the engine's Debian package.
#[allow(dead_code)] // each test crate uses a subset of these helpers
pub fn system_user(name: &str, package: &str) -> nix::unistd::User {
    match nix::unistd::User::from_name(name) {
        Ok(Some(user)) => user,
        other => panic!(
            "the tests run the server as the `{name}` system user, which was not found ({other:?}); install {package}"
        ),
    }
}

/// A directory under /tmp (short: a server's socket path must stay under 108
/// bytes) owned by `user`, removed when dropped.
#[allow(dead_code)] // each test crate uses a subset of these helpers
pub fn owned_tempdir(prefix: &str, user: &nix::unistd::User) -> tempfile::TempDir {
    owned_tempdir_in("/tmp", prefix, user)
}

/// [`owned_tempdir`] under `base`.
#[allow(dead_code)] // each test crate uses a subset of these helpers
pub fn owned_tempdir_in(base: &str, prefix: &str, user: &nix::unistd::User) -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(base)
        .expect("tempdir");
    std::os::unix::fs::chown(dir.path(), Some(user.uid.as_raw()), Some(user.gid.as_raw()))
        .expect("chown the test directory");
    dir
}
