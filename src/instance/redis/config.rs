//! The files servicedb owns under the volume: `redis/redis.conf` and
//! `redis/users.acl`, both rewritten at every start from the flags and the
//! Secrets, so that a new servicedb version, new flags or a Secret changed
//! while the instance was down take effect on restart. Redis itself keeps
//! its AOF and RDB files beside them.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use crate::engine::redis_acl::{self, AclUser};
use crate::instance::files::{self, write_file};

/// RDB snapshots beside the AOF: after an hour if anything changed, after
/// five minutes if 100 keys did, after a minute if 10000 did.
const SAVE_POINTS: &str = "3600 1 300 100 60 10000";

#[derive(Debug, Clone)]
pub(super) struct Layout {
    /// Redis's `dir`: configuration, ACL file, AOF and RDB.
    pub redis_dir: PathBuf,
    pub config: PathBuf,
    pub acl_file: PathBuf,
    /// Holds the unix socket the instance manager administers through.
    pub run_dir: PathBuf,
    pub socket: PathBuf,
}

impl Layout {
    pub(super) fn new(data_dir: &Path) -> anyhow::Result<Layout> {
        let redis_dir = data_dir.join("redis");
        let run_dir = data_dir.join("run");
        let layout = Layout {
            config: redis_dir.join("redis.conf"),
            acl_file: redis_dir.join("users.acl"),
            socket: run_dir.join("redis.sock"),
            redis_dir,
            run_dir,
        };
        files::check_socket_path(&layout.socket)?;
        for path in [&layout.redis_dir, &layout.socket] {
            let text = path
                .to_str()
                .with_context(|| format!("{} is not UTF-8", path.display()))?;
            if text.chars().any(char::is_control) {
                bail!("--data-dir must not contain control characters");
            }
        }
        Ok(layout)
    }

    /// Creates the directories (private to the server's user: the volume's
    /// fsGroup may have made them group-accessible) and writes our files.
    pub(super) fn prepare(&self, settings: &Settings, users: &[AclUser]) -> anyhow::Result<()> {
        files::create_private_dir(&self.redis_dir)?;
        files::create_private_dir(&self.run_dir)?;
        // A socket left by a killed server would make Redis fail to bind.
        files::remove_leftover(&self.socket)?;
        write_file(&self.acl_file, &redis_acl::render_acl_file(users)?)?;
        write_file(&self.config, &redis_conf(self, settings))
    }
}

#[derive(Debug, Clone)]
pub(super) struct Settings {
    /// Words of the `bind` directive.
    pub bind: Vec<String>,
    pub port: u16,
}

/// `--listen-address` as Redis's `bind`: `*` is every IPv4 and, where the
/// host has it, IPv6 address; otherwise addresses separated by commas or
/// spaces. Only address characters pass, so nothing else reaches the file.
pub(super) fn bind_addresses(listen_address: &str) -> anyhow::Result<Vec<String>> {
    let addresses: Vec<&str> = listen_address
        .split(|c: char| c == ',' || c.is_ascii_whitespace())
        .filter(|word| !word.is_empty())
        .collect();
    if addresses.is_empty() {
        bail!("--listen-address is empty");
    }
    if addresses == ["*"] {
        // `-` makes the IPv6 wildcard optional.
        return Ok(vec!["*".to_owned(), "-::*".to_owned()]);
    }
    for address in &addresses {
        if !address
            .chars()
            .all(|c| c.is_ascii_hexdigit() || matches!(c, '.' | ':' | '%' | '-'))
            || address.starts_with('-')
        {
            bail!("--listen-address: {address:?} is not an IP address (or use `*`)");
        }
    }
    Ok(addresses.into_iter().map(str::to_owned).collect())
}

pub(super) fn redis_conf(layout: &Layout, settings: &Settings) -> String {
    let lines = [
        "# Managed by servicedb: rewritten at every start, edits are lost.".to_owned(),
        format!("bind {}", settings.bind.join(" ")),
        format!("port {}", settings.port),
        // Refuses outside clients only while `default` needs no password;
        // ours is off, so this is a second lock, not the first.
        "protected-mode yes".to_owned(),
        format!("unixsocket {}", quote(&layout.socket)),
        "unixsocketperm 700".to_owned(),
        format!("aclfile {}", quote(&layout.acl_file)),
        format!("dir {}", quote(&layout.redis_dir)),
        // In the foreground, as our child, logging to the container's stdout.
        "daemonize no".to_owned(),
        "supervised no".to_owned(),
        "logfile \"\"".to_owned(),
        "loglevel notice".to_owned(),
        "always-show-logo no".to_owned(),
        // A database, not a cache: every write in the AOF (at most one
        // second lost on a crash), plus RDB snapshots for fast restarts and
        // `redis-cli --rdb` backups.
        "appendonly yes".to_owned(),
        "appendfsync everysec".to_owned(),
        format!("save {SAVE_POINTS}"),
        "dbfilename dump.rdb".to_owned(),
        "stop-writes-on-bgsave-error yes".to_owned(),
        // Nobody, not even the administrator, may point `dir` or
        // `dbfilename` elsewhere at runtime (the classic way to make Redis
        // write a file of one's choosing), load modules, or run DEBUG.
        "enable-protected-configs no".to_owned(),
        "enable-debug-command no".to_owned(),
        "enable-module-command no".to_owned(),
    ];
    let mut text = lines.join("\n");
    text.push('\n');
    text
}

/// A redis.conf string: double quotes, with `\` and `"` escaped. The paths
/// were checked for control characters by [`Layout::new`].
fn quote(path: &Path) -> String {
    let text = path.to_string_lossy();
    format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings {
            bind: vec!["127.0.0.1".into()],
            port: 6380,
        }
    }

    #[test]
    fn conf_persists_listens_and_locks_down() {
        let layout = Layout::new(Path::new("/var/lib/servicedb")).expect("layout");
        let conf = redis_conf(&layout, &settings());
        for line in [
            "bind 127.0.0.1",
            "port 6380",
            "protected-mode yes",
            "unixsocket \"/var/lib/servicedb/run/redis.sock\"",
            "unixsocketperm 700",
            "aclfile \"/var/lib/servicedb/redis/users.acl\"",
            "dir \"/var/lib/servicedb/redis\"",
            "daemonize no",
            "supervised no",
            "logfile \"\"",
            "appendonly yes",
            "appendfsync everysec",
            "save 3600 1 300 100 60 10000",
            "enable-protected-configs no",
            "enable-debug-command no",
            "enable-module-command no",
        ] {
            assert!(
                conf.lines().any(|l| l == line),
                "missing {line:?} in\n{conf}"
            );
        }
        // Nothing renamed or disabled by configuration: that is the ACL's job.
        assert!(!conf.contains("rename-command"));
        assert!(!conf.contains("requirepass"));
    }

    #[test]
    fn paths_are_quoted() {
        let layout = Layout::new(Path::new("/odd \"dir\\")).expect("layout");
        let conf = redis_conf(&layout, &settings());
        assert!(conf.contains("dir \"/odd \\\"dir\\\\/redis\"\n"), "{conf}");
        assert!(Layout::new(Path::new("/bad\ndir")).is_err());
        assert!(Layout::new(&PathBuf::from(format!("/{}", "d".repeat(100)))).is_err());
    }

    #[test]
    fn listen_addresses_become_bind_words() {
        assert_eq!(bind_addresses("*").expect("star"), ["*", "-::*"]);
        assert_eq!(
            bind_addresses("127.0.0.1, ::1").expect("two"),
            ["127.0.0.1", "::1"]
        );
        assert_eq!(bind_addresses("0.0.0.0").expect("any"), ["0.0.0.0"]);
        for bad in [
            "",
            " , ",
            "localhost",
            "1.2.3.4\nrequirepass x",
            "-::*",
            "* 1.2.3.4",
        ] {
            assert!(bind_addresses(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn prepare_writes_private_files_and_clears_a_stale_socket() {
        use std::os::unix::fs::PermissionsExt;
        let root = tempfile::tempdir().expect("tempdir");
        let layout = Layout::new(root.path()).expect("layout");
        std::fs::create_dir_all(&layout.run_dir).expect("mkdir");
        std::fs::write(&layout.socket, "").expect("stale socket");
        let users = [
            AclUser::disabled_default(),
            AclUser::admin("admin", "pw").expect("admin"),
        ];
        layout.prepare(&settings(), &users).expect("prepared");
        layout.prepare(&settings(), &users).expect("prepared twice");
        assert!(!layout.socket.exists());
        for dir in [&layout.redis_dir, &layout.run_dir] {
            let mode = std::fs::metadata(dir).expect("dir").permissions().mode();
            assert_eq!(mode & 0o777, 0o700, "{}", dir.display());
        }
        let acl = std::fs::read_to_string(&layout.acl_file).expect("acl");
        assert!(acl.starts_with("user default reset\nuser admin reset on #"));
        assert!(!acl.contains(" >"), "no cleartext passwords: {acl}");
        let conf = std::fs::read_to_string(&layout.config).expect("conf");
        assert!(conf.contains("port 6380"));
    }
}
