//! PostgreSQL: `pg_dump --format=custom` out, `pg_restore` in.
//!
//! Why the custom format: it is PostgreSQL's own, complete (schema, data,
//! large objects, sequences' positions), consistent (one snapshot), and
//! `pg_restore` reads it from a pipe. A plain SQL script would restore with
//! `psql` too, but cannot be restored selectively and loses the option to
//! restore in parallel from a file later. pg_dump's own compression is
//! turned off (`--compress=0`): zstd on the raw custom format is faster and
//! smaller than pg_dump's gzip, and compressing twice only costs CPU.
//!
//! `pg_restore --single-transaction` (which implies `--exit-on-error`)
//! makes a restore all or nothing; `--no-owner --no-privileges` because the
//! target's login owns what it restores (the service's database is owned by
//! its role; grants of the source server's roles would not apply).
//!
//! The password reaches the tools only through `PGPASSWORD` in their own
//! environment; connection details go through `PGHOST`, `PGPORT`, `PGUSER`
//! and `PGDATABASE`, so no name needs quoting on a command line.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, BufReader};
use tokio::process::{Child, Command};

use super::engine::{Checks, DatabaseArgs};
use super::secret::{CHILD_ENV_DENYLIST, Secret};
use crate::engine::postgres_users::{describe, quote_ident};
use crate::engine::tls::{TlsMode, TlsSettings};

pub const FORMAT: &str = "pg_dump-custom";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// Versioned installs: Debian's packages and the official image.
const VERSIONED_ROOT: &str = "/usr/lib/postgresql";
/// Bytes moved per read between a tool's pipe and the archive (tokio's
/// `copy` moves 8 KiB at a time).
const COPY_BUFFER: usize = 1 << 20;
/// How much of a tool's stderr an error message carries.
const STDERR_TAIL: usize = 2000;

pub struct Postgres {
    host: String,
    port: u16,
    database: String,
    username: String,
    password: Secret,
    bin_dir: Option<PathBuf>,
    /// `--schema`: the one schema this service owns in a shared database.
    schema: Option<String>,
    /// `--restore-role`: the role a restore creates objects as.
    restore_role: Option<String>,
    /// libpq's TLS settings for pg_dump and pg_restore.
    ssl_env: Vec<(&'static str, String)>,
    client: tokio_postgres::Client,
    server_version: String,
}

/// Where and as whom to connect, from the flags.
struct Login {
    host: String,
    port: u16,
    database: String,
    username: String,
    config: tokio_postgres::Config,
    tls: TlsSettings,
}

impl Login {
    /// `dbname` overrides the database to connect to (the maintenance
    /// database, to create or drop `--database`).
    fn new(args: &DatabaseArgs, password: &Secret, dbname: Option<&str>) -> anyhow::Result<Login> {
        let host = args.host.clone();
        let port = args.port.unwrap_or(5432);
        let database = args
            .database
            .clone()
            .context("--database is required for PostgreSQL")?;
        let username = args
            .username
            .clone()
            .context("--username is required for PostgreSQL")?;
        let mut config = tokio_postgres::Config::new();
        config
            .host(&host)
            .port(port)
            .dbname(dbname.unwrap_or(&database))
            .user(&username)
            .application_name("servicedb-agent")
            .connect_timeout(CONNECT_TIMEOUT);
        if !password.is_empty() {
            config.password(password.expose());
        }
        Ok(Login {
            host,
            port,
            database,
            username,
            config,
            tls: args.tls_settings()?,
        })
    }
}

/// A verification's scratch database, emptied before the restore and after
/// the check, so that an earlier run's restore never makes the next one
/// fail. A login that may create databases (a dedicated instance's
/// administrator) drops it and, before the restore (`create`), makes it
/// afresh. A login that may not (a service's own, on a shared server) finds
/// the one the operator keeps for it, owned by the service, and drops
/// everything the service owns inside it.
pub async fn scratch(args: &DatabaseArgs, password: &Secret, create: bool) -> anyhow::Result<()> {
    if empty_owned_scratch(args, password).await? {
        return Ok(());
    }
    let Login {
        host,
        port,
        database,
        mut config,
        tls,
        ..
    } = Login::new(args, password, Some("postgres"))?;
    let client = crate::engine::tls::postgres(&mut config, &tls)
        .await
        .map_err(|error| {
            anyhow::anyhow!(
                "connecting to PostgreSQL at {host}:{port} to prepare the scratch database: {}",
                password.scrub(&error.to_string())
            )
        })?;
    let quoted = format!("\"{}\"", database.replace('"', "\"\""));
    client
        .simple_query(&format!("DROP DATABASE IF EXISTS {quoted} WITH (FORCE)"))
        .await
        .map_err(|e| anyhow::anyhow!("dropping scratch database {database:?}: {}", describe(&e)))?;
    if create {
        client
            .simple_query(&format!("CREATE DATABASE {quoted}"))
            .await
            .map_err(|e| {
                anyhow::anyhow!("creating scratch database {database:?}: {}", describe(&e))
            })?;
    }
    Ok(())
}

/// Empties the scratch database in place when the login may not create
/// databases; `false` when it may (or the database is not there yet), and
/// the scratch database is to be dropped and made instead.
async fn empty_owned_scratch(args: &DatabaseArgs, password: &Secret) -> anyhow::Result<bool> {
    let Login {
        database,
        mut config,
        tls,
        ..
    } = Login::new(args, password, None)?;
    // Not reachable as this login: either it does not exist yet (made below
    // by a login that may) or the login may not enter it, which the
    // drop-and-create path then reports.
    let Ok(client) = crate::engine::tls::postgres(&mut config, &tls).await else {
        return Ok(false);
    };
    let row = client
        .query_one(
            "SELECT rolsuper OR rolcreatedb FROM pg_roles WHERE rolname = session_user",
            &[],
        )
        .await
        .map_err(|e| anyhow::anyhow!("reading the login's attributes: {}", describe(&e)))?;
    let may_create: bool = row.try_get(0).context("reading the login's attributes")?;
    if may_create {
        return Ok(false);
    }
    // The service's logins act as its owner role, which owns everything a
    // restore made here, and nothing outside this database is touched:
    // DROP OWNED drops objects of the current database only, and the
    // privileges it would revoke on shared objects (the CONNECT on a shared
    // database that isolation Schema grants) were granted by the server's
    // administrator, which a service's login cannot revoke: PostgreSQL only
    // warns "no privileges could be revoked". The real-Jobs e2e test reads
    // the Schema service's table after its verification.
    client
        .simple_query("DROP OWNED BY CURRENT_USER")
        .await
        .map_err(|e| anyhow::anyhow!("emptying scratch database {database:?}: {}", describe(&e)))?;
    Ok(true)
}

impl Postgres {
    /// Logs in (so that a wrong password or a missing database fails before
    /// anything else starts) and reads the server's version.
    pub async fn connect(args: &DatabaseArgs, password: Secret) -> anyhow::Result<Postgres> {
        let Login {
            host,
            port,
            database,
            username,
            mut config,
            tls,
        } = Login::new(args, &password, None)?;
        let client = crate::engine::tls::postgres(&mut config, &tls)
            .await
            .map_err(|error| {
                anyhow::anyhow!(
                    "connecting to PostgreSQL at {host}:{port}, database {database:?}, as {username:?}: {}",
                    password.scrub(&error.to_string())
                )
            })?;
        // The same for the tools: libpq checks the host name with
        // verify-full, and without a CA file trusts the system's roots
        // (`sslrootcert=system`, libpq 16 and later).
        let ssl_env = match tls.mode {
            TlsMode::Disable => vec![("PGSSLMODE", "disable".to_owned())],
            TlsMode::Require => vec![("PGSSLMODE", "require".to_owned())],
            TlsMode::VerifyFull => vec![
                ("PGSSLMODE", "verify-full".to_owned()),
                (
                    "PGSSLROOTCERT",
                    args.tls_ca_file
                        .as_ref()
                        .map_or_else(|| "system".to_owned(), |p| p.display().to_string()),
                ),
            ],
        };
        let row = client
            .query_one("SHOW server_version", &[])
            .await
            .map_err(|e| anyhow::anyhow!("reading server_version: {}", describe(&e)))?;
        let version: String = row.try_get(0).context("reading server_version")?;
        // "15.14 (Debian 15.14-0+deb12u1)" → "15.14"
        let server_version = version
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_owned();
        Ok(Postgres {
            host,
            port,
            database,
            username,
            password,
            bin_dir: args.pg_bin_dir.clone(),
            schema: args.schema.clone().filter(|s| !s.is_empty()),
            restore_role: args.restore_role.clone().filter(|r| !r.is_empty()),
            ssl_env,
            client,
            server_version,
        })
    }

    pub fn server_version(&self) -> &str {
        &self.server_version
    }

    fn command(&self, tool: &str) -> anyhow::Result<Command> {
        let program = find_tool(tool, self.bin_dir.as_deref())?;
        let mut command = Command::new(program);
        for name in CHILD_ENV_DENYLIST {
            command.env_remove(name);
        }
        command
            .env("PGHOST", &self.host)
            .env("PGPORT", self.port.to_string())
            .env("PGUSER", &self.username)
            .env("PGDATABASE", &self.database)
            .env("PGAPPNAME", "servicedb-agent")
            .env("PGCONNECT_TIMEOUT", CONNECT_TIMEOUT.as_secs().to_string())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        command.envs(self.ssl_env.iter().map(|(k, v)| (k, v)));
        if self.password.is_empty() {
            command.env_remove("PGPASSWORD");
        } else {
            command.env("PGPASSWORD", self.password.expose());
        }
        Ok(command)
    }

    /// Streams `pg_dump` into `sink`; returns the number of tables it held
    /// when the dump started.
    pub async fn dump(&self, sink: &mut (dyn AsyncWrite + Unpin + Send)) -> anyhow::Result<u64> {
        let tables = self.tables().await?.len() as u64;
        let mut command = self.command("pg_dump")?;
        command.args(["--format=custom", "--compress=0", "--no-password"]);
        if let Some(schema) = &self.schema {
            // Quoted: an exact name, not a pattern.
            command.arg(format!("--schema=\"{}\"", schema.replace('"', "\"\"")));
        }
        command.stdin(Stdio::null()).stdout(Stdio::piped());
        let mut child = command.spawn().context("starting pg_dump")?;
        let stderr = collect_stderr(&mut child);
        let stdout = child.stdout.take().context("pg_dump's stdout")?;
        let copied =
            tokio::io::copy_buf(&mut BufReader::with_capacity(COPY_BUFFER, stdout), sink).await;
        if copied.is_err() {
            // The archive could not take more: stop the dump.
            let _ = child.start_kill();
        }
        let status = child.wait().await.context("waiting for pg_dump")?;
        let stderr = stderr.await.unwrap_or_default();
        if !status.success() {
            bail!(
                "pg_dump failed ({status}): {}",
                self.password.scrub(&tail(&stderr))
            );
        }
        copied.context("storing pg_dump's output")?;
        Ok(tables)
    }

    /// Feeds a custom-format dump to `pg_restore` in one transaction.
    pub async fn restore(&self, mut source: impl AsyncRead + Unpin + Send) -> anyhow::Result<()> {
        let mut command = self.command("pg_restore")?;
        command
            .args([
                "--no-owner",
                "--no-privileges",
                "--exit-on-error",
                "--single-transaction",
                "--no-password",
            ])
            .args(
                self.restore_role
                    .iter()
                    .map(|role| format!("--role={role}")),
            )
            // pg_restore without --dbname writes a script instead of
            // restoring; a conninfo string keeps any database name literal.
            .arg(format!(
                "--dbname=dbname={}",
                conninfo_quote(&self.database)
            ))
            .stdin(Stdio::piped())
            .stdout(Stdio::null());
        let mut child = command.spawn().context("starting pg_restore")?;
        let stderr = collect_stderr(&mut child);
        let mut stdin = child.stdin.take().context("pg_restore's stdin")?;
        let copied = tokio::io::copy_buf(
            &mut BufReader::with_capacity(COPY_BUFFER, &mut source),
            &mut stdin,
        )
        .await;
        if let Err(error) = copied {
            // Killed before its input ends, pg_restore never commits: the
            // database is left as it was. (If it had already exited, its own
            // error explains the broken pipe.)
            if child.try_wait().ok().flatten().is_none() {
                let _ = child.start_kill();
                let _ = child.wait().await;
                return Err(error).context("reading the archive (nothing was restored)");
            }
        }
        drop(stdin);
        let status = child.wait().await.context("waiting for pg_restore")?;
        let stderr = stderr.await.unwrap_or_default();
        if !status.success() {
            bail!(
                "pg_restore failed ({status}), nothing was restored: {}",
                self.password.scrub(&tail(&stderr))
            );
        }
        Ok(())
    }

    /// User tables, as `schema.table`.
    async fn tables(&self) -> anyhow::Result<Vec<(String, String)>> {
        let rows = self
            .client
            .query(
                "SELECT n.nspname::text, c.relname::text FROM pg_class c \
                 JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE c.relkind = 'r' \
                   AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
                   AND n.nspname NOT LIKE 'pg\\_toast%' \
                   AND n.nspname NOT LIKE 'pg\\_temp%' \
                 AND ($1::text IS NULL OR n.nspname = $1) \
                 ORDER BY 1, 2",
                &[&self.schema],
            )
            .await
            .map_err(|e| anyhow::anyhow!("listing tables: {}", describe(&e)))?;
        rows.iter()
            .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
            .collect::<Result<_, tokio_postgres::Error>>()
            .context("reading the list of tables")
    }

    /// Tables and their exact row counts.
    pub async fn check(&self) -> anyhow::Result<Checks> {
        let tables = self.tables().await?;
        let mut per_table = serde_json::Map::new();
        let mut rows_total: u64 = 0;
        for (schema, table) in &tables {
            let name = format!("{}.{}", quote_ident(schema), quote_ident(table));
            let row = self
                .client
                .query_one(&format!("SELECT count(*) FROM {name}"), &[])
                .await
                .map_err(|e| anyhow::anyhow!("counting the rows of {name}: {}", describe(&e)))?;
            let count: i64 = row.try_get(0).context("reading a row count")?;
            let count = u64::try_from(count).unwrap_or_default();
            rows_total += count;
            per_table.insert(format!("{schema}.{table}"), json!(count));
        }
        Ok(Checks {
            items: tables.len() as u64,
            summary: json!({ "tables": tables.len(), "rows": rows_total }),
            detail: Some(("rowsPerTable", serde_json::Value::Object(per_table))),
        })
    }
}

/// Reads a child's stderr to the end in the background (a tool blocked on
/// a full stderr pipe would never exit).
fn collect_stderr(child: &mut Child) -> tokio::task::JoinHandle<String> {
    let stderr = child.stderr.take();
    tokio::spawn(async move {
        let mut text = Vec::new();
        if let Some(mut stderr) = stderr {
            let _ = stderr.read_to_end(&mut text).await;
        }
        String::from_utf8_lossy(&text).into_owned()
    })
}

/// The end of a tool's stderr, on one line.
fn tail(stderr: &str) -> String {
    let one_line = stderr.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.is_empty() {
        return "(no message)".to_owned();
    }
    let start = one_line.len().saturating_sub(STDERR_TAIL);
    let start = (start..one_line.len())
        .find(|&i| one_line.is_char_boundary(i))
        .unwrap_or(0);
    one_line[start..].to_owned()
}

/// A value in a libpq connection string: single-quoted, `\` and `'` escaped.
fn conninfo_quote(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// `--pg-bin-dir` if given, else the first PATH entry that has the tool,
/// else the newest `/usr/lib/postgresql/<version>/bin` (pg_dump must be at
/// least as new as the server).
fn find_tool(tool: &str, bin_dir: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(dir) = bin_dir {
        let path = dir.join(tool);
        if is_executable(&path) {
            return Ok(path);
        }
        bail!("--pg-bin-dir {} has no executable `{tool}`", dir.display());
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    if let Some(found) = std::env::split_paths(&path)
        .map(|dir| dir.join(tool))
        .find(|p| is_executable(p))
    {
        return Ok(found);
    }
    let mut versions: Vec<(Vec<u32>, PathBuf)> = std::fs::read_dir(VERSIONED_ROOT)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            let version = name
                .split('.')
                .map(|part| part.parse().ok())
                .collect::<Option<Vec<u32>>>()?;
            Some((version, entry.path().join("bin").join(tool)))
        })
        .collect();
    versions.sort();
    if let Some((_, found)) = versions.into_iter().rev().find(|(_, p)| is_executable(p)) {
        return Ok(found);
    }
    bail!("`{tool}` not found in PATH or {VERSIONED_ROOT}/*/bin; pass --pg-bin-dir")
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conninfo_values_stay_literal() {
        assert_eq!(conninfo_quote("orders"), "'orders'");
        assert_eq!(conninfo_quote(r"a'b\c d=e"), r"'a\'b\\c d=e'");
    }

    #[test]
    fn stderr_tail_is_one_bounded_line() {
        assert_eq!(
            tail("pg_dump: error:\n  connection failed\n"),
            "pg_dump: error: connection failed"
        );
        assert_eq!(tail(""), "(no message)");
        let long = "é".repeat(STDERR_TAIL);
        assert!(tail(&long).len() <= STDERR_TAIL);
    }

    #[test]
    fn bin_dir_must_hold_the_tool() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(find_tool("pg_dump", Some(dir.path())).is_err());
        let tool = dir.path().join("pg_dump");
        std::fs::write(&tool, "#!/bin/sh\n").expect("write");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        assert_eq!(find_tool("pg_dump", Some(dir.path())).expect("found"), tool);
    }
}
