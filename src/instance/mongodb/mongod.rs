//! The `mongod` program and its command line (a pure function, so it is
//! unit-tested).

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use crate::engine::mongodb::REPLICA_SET;
use crate::instance::files::is_executable;

/// What mongod is started with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Settings {
    pub dbpath: PathBuf,
    pub keyfile: PathBuf,
    pub port: u16,
    /// `--listen-address`: `*`, or a comma-separated list of addresses.
    pub listen_address: String,
}

/// `mongod`'s argv after the program name. No shell is involved, so no
/// value needs quoting.
pub(super) fn argv(settings: &Settings) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec![
        "--dbpath".into(),
        settings.dbpath.clone().into(),
        "--port".into(),
        settings.port.to_string().into(),
    ];
    args.extend(
        bind_args(&settings.listen_address)
            .into_iter()
            .map(OsString::from),
    );
    args.extend(["--replSet", REPLICA_SET, "--keyFile"].map(OsString::from));
    args.push(settings.keyfile.clone().into());
    // --auth is implied by --keyFile; said anyway so nobody has to know that.
    args.push("--auth".into());
    // Everything, the instance manager included, connects over TCP; the
    // default socket in /tmp breaks under a read-only root filesystem.
    args.push("--nounixsocket".into());
    args
}

/// `*` binds every interface; a list is bound as given, plus 127.0.0.1:
/// the instance manager talks to mongod there, and the localhost exception
/// (creating the first user) only holds for loopback connections.
fn bind_args(listen_address: &str) -> Vec<String> {
    let mut addresses: Vec<&str> = listen_address
        .split(',')
        .map(str::trim)
        .filter(|address| !address.is_empty())
        .collect();
    if addresses.is_empty() || addresses.contains(&"*") {
        return vec!["--bind_ip_all".to_owned()];
    }
    if !addresses
        .iter()
        .any(|a| *a == "127.0.0.1" || *a == "localhost")
    {
        addresses.push("127.0.0.1");
    }
    let mut args = vec!["--bind_ip".to_owned(), addresses.join(",")];
    if addresses.iter().any(|address| address.contains(':')) {
        args.push("--ipv6".to_owned());
    }
    args
}

/// `--bin-dir/mongod` if given, else the first `mongod` in PATH (the
/// official image has it in /usr/bin).
pub(super) fn find(bin_dir: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(dir) = bin_dir {
        let path = dir.join("mongod");
        if is_executable(&path) {
            return Ok(path);
        }
        bail!("--bin-dir {} has no executable `mongod`", dir.display());
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join("mongod"))
        .find(|candidate| is_executable(candidate))
        .context("no `mongod` in PATH; pass --bin-dir")
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn settings(listen_address: &str) -> Settings {
        Settings {
            dbpath: PathBuf::from("/var/lib/servicedb/mongodb"),
            keyfile: PathBuf::from("/var/lib/servicedb/mongodb.keyfile"),
            port: 27017,
            listen_address: listen_address.to_owned(),
        }
    }

    fn strings(args: Vec<OsString>) -> Vec<String> {
        args.into_iter()
            .map(|arg| arg.into_string().expect("utf-8"))
            .collect()
    }

    #[test]
    fn argv_for_the_pod() {
        assert_eq!(
            strings(argv(&settings("*"))),
            [
                "--dbpath",
                "/var/lib/servicedb/mongodb",
                "--port",
                "27017",
                "--bind_ip_all",
                "--replSet",
                "rs0",
                "--keyFile",
                "/var/lib/servicedb/mongodb.keyfile",
                "--auth",
                "--nounixsocket",
            ]
        );
    }

    #[test]
    fn argv_with_listed_addresses_keeps_loopback() {
        let args = strings(argv(&settings("10.1.2.3")));
        let bind = args
            .iter()
            .position(|a| a == "--bind_ip")
            .expect("--bind_ip");
        assert_eq!(args[bind + 1], "10.1.2.3,127.0.0.1");
        assert!(!args.contains(&"--ipv6".to_owned()));
        assert!(!args.contains(&"--bind_ip_all".to_owned()));

        assert_eq!(bind_args("127.0.0.1"), ["--bind_ip", "127.0.0.1"]);
        assert_eq!(bind_args("localhost"), ["--bind_ip", "localhost"]);
        assert_eq!(
            bind_args("10.0.0.1, ::1"),
            ["--bind_ip", "10.0.0.1,::1,127.0.0.1", "--ipv6"]
        );
        assert_eq!(bind_args("10.0.0.1,*"), ["--bind_ip_all"]);
        assert_eq!(bind_args(" , "), ["--bind_ip_all"]);
    }

    #[test]
    fn argv_keeps_odd_paths_as_single_arguments() {
        let mut odd = settings("*");
        odd.dbpath = PathBuf::from("/data dir/it's \"here\"");
        let args = strings(argv(&odd));
        assert_eq!(args[1], "/data dir/it's \"here\"");
        assert_eq!(args.len(), 11);
    }

    #[test]
    fn finds_mongod_in_bin_dir_only_if_executable() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(find(Some(dir.path())).is_err());
        let mongod = dir.path().join("mongod");
        std::fs::write(&mongod, "#!/bin/sh\n").expect("write");
        std::fs::set_permissions(&mongod, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        assert!(find(Some(dir.path())).is_err());
        std::fs::set_permissions(&mongod, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        assert_eq!(find(Some(dir.path())).expect("found"), mongod);
    }
}
