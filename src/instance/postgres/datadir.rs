//! The data directory: created by initdb on first start, configured at
//! every start. initdb works in a scratch directory that is renamed into
//! place only when complete, so an interrupted first start (SIGTERM, OOM
//! kill, node loss) never leaves a half-made PGDATA behind.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{Context, bail};
use tracing::{info, warn};

use super::binaries::Binaries;
use super::config::{self, Settings};
use crate::instance::files::{self, set_mode, write_file};
use crate::instance::secrets::AdminCredentials;

#[derive(Debug, Clone)]
pub(super) struct Layout {
    pub data_dir: PathBuf,
    pub pgdata: PathBuf,
    pub socket_dir: PathBuf,
    scratch: PathBuf,
}

impl Layout {
    pub(super) fn new(data_dir: &Path) -> Layout {
        Layout {
            data_dir: data_dir.to_owned(),
            pgdata: data_dir.join("pgdata"),
            socket_dir: data_dir.join("run"),
            scratch: data_dir.join("pgdata.initdb"),
        }
    }

    fn socket_path(&self, port: u16) -> PathBuf {
        self.socket_dir.join(format!(".s.PGSQL.{port}"))
    }
}

/// Makes `layout.pgdata` a configured data directory, running initdb if it
/// holds none yet. An existing one keeps its data and its passwords.
pub(super) async fn prepare(
    binaries: &Binaries,
    layout: &Layout,
    admin: &AdminCredentials,
    settings: &Settings,
) -> anyhow::Result<()> {
    files::check_socket_path(&layout.socket_path(settings.port))?;
    std::fs::create_dir_all(&layout.data_dir)
        .with_context(|| format!("cannot create {}", layout.data_dir.display()))?;
    files::create_private_dir(&layout.socket_dir)?;

    match std::fs::read_to_string(layout.pgdata.join("PG_VERSION")) {
        Ok(version) => info!(
            pgdata = %layout.pgdata.display(),
            version = version.trim(),
            "found an existing data directory; keeping its data and passwords"
        ),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            initialise(binaries, layout, admin).await?;
        }
        Err(error) => {
            return Err(error)
                .with_context(|| format!("cannot read {}/PG_VERSION", layout.pgdata.display()));
        }
    }
    // PostgreSQL refuses a group-writable data directory; a volume's fsGroup
    // ownership change can make it one.
    set_mode(&layout.pgdata, 0o700)?;
    configure(&layout.pgdata, settings)?;
    check_parameters(binaries, &layout.pgdata).await
}

/// The server would refuse to start on a parameter it does not accept (an
/// unknown name, a bad value): `postgres -C` reads the configuration as a
/// start would. Then the instance starts without the service's parameters,
/// saying why, rather than crash looping.
async fn check_parameters(binaries: &Binaries, pgdata: &Path) -> anyhow::Result<()> {
    let file = pgdata.join(crate::engine::postgres_parameters::CONF_FILE);
    if std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0) == 0 {
        return Ok(());
    }
    let out = tokio::process::Command::new(&binaries.postgres)
        .arg("-D")
        .arg(pgdata)
        .args(["-C", "server_version"])
        .output()
        .await
        .with_context(|| format!("cannot run {}", binaries.postgres.display()))?;
    if !out.status.success() {
        tracing::error!(
            refused = %String::from_utf8_lossy(&out.stderr).trim(),
            "PostgreSQL refuses spec.postgres.parameters; starting without them"
        );
        write_file(&file, "")?;
    }
    Ok(())
}

/// Writes the service's parameters for the server to read; `true` when the
/// file changed.
pub(super) fn write_parameters(pgdata: &Path, parameters: &str) -> anyhow::Result<bool> {
    let file = pgdata.join(crate::engine::postgres_parameters::CONF_FILE);
    if std::fs::read_to_string(&file).is_ok_and(|current| current == parameters) {
        return Ok(false);
    }
    write_file(&file, parameters)?;
    Ok(true)
}

async fn initialise(
    binaries: &Binaries,
    layout: &Layout,
    admin: &AdminCredentials,
) -> anyhow::Result<()> {
    if layout.pgdata.exists() {
        let empty = std::fs::read_dir(&layout.pgdata)
            .with_context(|| format!("cannot read {}", layout.pgdata.display()))?
            .next()
            .is_none();
        if !empty {
            bail!(
                "{} is not empty but has no PG_VERSION: not a PostgreSQL data directory; \
                 refusing to initialise over it",
                layout.pgdata.display()
            );
        }
        std::fs::remove_dir(&layout.pgdata)
            .with_context(|| format!("cannot remove empty {}", layout.pgdata.display()))?;
    }
    if layout.scratch.exists() {
        warn!(scratch = %layout.scratch.display(), "removing the leftovers of an interrupted initdb");
        std::fs::remove_dir_all(&layout.scratch)
            .with_context(|| format!("cannot remove {}", layout.scratch.display()))?;
    }
    if admin.password.contains(['\n', '\r']) {
        bail!("the admin password must be a single line (initdb reads one line)");
    }

    info!(pgdata = %layout.pgdata.display(), admin = %admin.username, "initialising a new data directory");
    let password_file =
        PasswordFile::create(&layout.socket_dir.join("initdb.pwfile"), &admin.password)?;
    let status = tokio::process::Command::new(&binaries.initdb)
        .arg("--pgdata")
        .arg(&layout.scratch)
        .arg("--username")
        .arg(&admin.username)
        .arg("--pwfile")
        .arg(&password_file.path)
        .args([
            "--auth-local=scram-sha-256",
            "--auth-host=scram-sha-256",
            "--encoding=UTF8",
            "--data-checksums",
            // Its "now start the server with pg_ctl -D <scratch>" would mislead.
            "--no-instructions",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        // Dropped when a signal interrupts the start: don't leave it running.
        .kill_on_drop(true)
        .status()
        .await
        .with_context(|| format!("cannot run {}", binaries.initdb.display()))?;
    drop(password_file);
    if !status.success() {
        bail!("initdb failed ({status})");
    }
    std::fs::rename(&layout.scratch, &layout.pgdata).with_context(|| {
        format!(
            "cannot move {} to {}",
            layout.scratch.display(),
            layout.pgdata.display()
        )
    })?;
    info!(pgdata = %layout.pgdata.display(), "data directory initialised");
    Ok(())
}

fn configure(pgdata: &Path, settings: &Settings) -> anyhow::Result<()> {
    write_file(
        &pgdata.join(config::CONF_FILE),
        &config::servicedb_conf(settings),
    )?;
    write_file(&pgdata.join("pg_hba.conf"), config::PG_HBA)?;
    write_parameters(pgdata, &settings.parameters)?;
    let main_conf = pgdata.join("postgresql.conf");
    let current = std::fs::read_to_string(&main_conf)
        .with_context(|| format!("cannot read {}", main_conf.display()))?;
    if let Some(updated) = config::with_include(&current) {
        write_file(&main_conf, &updated)?;
    }
    Ok(())
}

/// initdb's `--pwfile`: readable by us only, removed as soon as initdb is
/// done (and on every early return).
struct PasswordFile {
    path: PathBuf,
}

impl PasswordFile {
    fn create(path: &Path, password: &str) -> anyhow::Result<PasswordFile> {
        // A leftover from a killed start holds the same kind of secret; replace it.
        files::remove_leftover(path)?;
        let guard = PasswordFile {
            path: path.to_owned(),
        };
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        writeln!(file, "{password}").with_context(|| format!("cannot write {}", path.display()))?;
        Ok(guard)
    }
}

impl Drop for PasswordFile {
    fn drop(&mut self) {
        if let Err(error) = std::fs::remove_file(&self.path) {
            warn!(path = %self.path.display(), %error, "cannot remove initdb's password file");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn password_file_is_private_and_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("pw");
        std::fs::write(&path, "stale").expect("write");
        {
            let file = PasswordFile::create(&path, "s3cret").expect("created");
            let meta = std::fs::metadata(&file.path).expect("exists");
            assert_eq!(meta.permissions().mode() & 0o777, 0o600);
            assert_eq!(std::fs::read_to_string(&path).expect("read"), "s3cret\n");
        }
        assert!(!path.exists());
    }

    #[test]
    fn configure_writes_our_files_and_keeps_initdb_settings() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("postgresql.conf"), "work_mem = 8MB\n").expect("write");
        std::fs::write(dir.path().join("pg_hba.conf"), "local all all trust\n").expect("write");
        let settings = Settings {
            listen_addresses: "*".into(),
            port: 5432,
            socket_dir: PathBuf::from("/x/run"),
            shared_buffers_mib: 128,
            parameters: String::new(),
        };
        configure(dir.path(), &settings).expect("configured");
        configure(dir.path(), &settings).expect("configured twice");
        let main = std::fs::read_to_string(dir.path().join("postgresql.conf")).expect("read");
        assert!(main.starts_with("work_mem = 8MB\n"));
        assert_eq!(main.matches(config::INCLUDE_LINE).count(), 1);
        let hba = std::fs::read_to_string(dir.path().join("pg_hba.conf")).expect("read");
        assert!(!hba.contains("trust"));
        let ours = std::fs::read_to_string(dir.path().join(config::CONF_FILE)).expect("read");
        assert!(ours.contains("port = 5432"));
        assert!(!dir.path().join("pg_hba.servicedb-tmp").exists());
    }
}
