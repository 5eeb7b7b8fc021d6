//! The three engines behind one small interface: connect (and read the
//! server's version), dump into a sink, restore from a source, check what a
//! database holds.

use std::path::PathBuf;

use anyhow::Context;

use tokio::io::{AsyncRead, AsyncWrite};

use super::manifest::Manifest;
use super::mongodb::MongoDB;
use super::postgres::Postgres;
use super::redis::Redis;
use super::secret::Secret;
use crate::engine::tls::{TlsMode, TlsSettings};
use crate::instance::EngineKind;

/// Which database to reach, and how. The password comes from
/// `SERVICEDB_PASSWORD`, never from a flag.
#[derive(clap::Args, Debug, Clone)]
pub struct DatabaseArgs {
    /// Database engine.
    #[arg(long, value_enum, env = "SERVICEDB_ENGINE")]
    pub engine: EngineKind,
    /// Host name or address of the database server.
    #[arg(long, env = "SERVICEDB_HOST")]
    pub host: String,
    /// Port; default: the engine's (5432, 6379, 27017).
    #[arg(long, env = "SERVICEDB_PORT")]
    pub port: Option<u16>,
    /// Database name (PostgreSQL, MongoDB; required) or logical database
    /// number (Redis; default 0).
    #[arg(long, env = "SERVICEDB_DATABASE")]
    pub database: Option<String>,
    /// Login (required for PostgreSQL; Redis: the ACL user, default
    /// `default`; MongoDB: none means no authentication).
    #[arg(long, env = "SERVICEDB_USERNAME")]
    pub username: Option<String>,
    /// PostgreSQL: directory holding `pg_dump` and `pg_restore`; default:
    /// PATH, then the newest /usr/lib/postgresql/*/bin.
    #[arg(long, env = "SERVICEDB_PG_BIN_DIR")]
    pub pg_bin_dir: Option<PathBuf>,
    /// Redis: back up (and restore) only the keys that start with this
    /// prefix, such as `cart:` for a service on a shared server.
    #[arg(long, env = "SERVICEDB_KEY_PREFIX")]
    pub key_prefix: Option<String>,
    /// PostgreSQL: back up (and count) only this schema: a service with
    /// `isolation: Schema` owns one schema of a database it shares.
    #[arg(long, env = "SERVICEDB_SCHEMA")]
    pub schema: Option<String>,
    /// PostgreSQL restore: what is restored is created as (and owned by)
    /// this role (`pg_restore --role`), so that a dedicated instance's
    /// administrator restores the service's data for the service's role.
    #[arg(long, env = "SERVICEDB_RESTORE_ROLE")]
    pub restore_role: Option<String>,
    /// MongoDB: the database the user is defined in; default: --database.
    #[arg(long, env = "SERVICEDB_AUTH_DATABASE")]
    pub auth_database: Option<String>,
    /// TLS to the server: `require` encrypts without checking the
    /// certificate; `verify-full` checks it against --tls-ca-file (or the
    /// system's roots) and the host name. Never a fallback to plain text.
    #[arg(long, value_enum, env = "SERVICEDB_TLS", default_value = "disable")]
    pub tls: TlsArg,
    /// PEM file of the CA that verifies the server's certificate.
    #[arg(long, env = "SERVICEDB_TLS_CA_FILE")]
    pub tls_ca_file: Option<PathBuf>,
}

/// `--tls`: the DatabaseServer's `external.tls.mode`, in libpq's words.
#[derive(clap::ValueEnum, Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum TlsArg {
    #[default]
    Disable,
    Require,
    VerifyFull,
}

impl DatabaseArgs {
    /// The TLS settings, with the CA file read and checked.
    pub fn tls_settings(&self) -> anyhow::Result<TlsSettings> {
        let mode = match self.tls {
            TlsArg::Disable => TlsMode::Disable,
            TlsArg::Require => TlsMode::Require,
            TlsArg::VerifyFull => TlsMode::VerifyFull,
        };
        let ca_pem = match &self.tls_ca_file {
            None => None,
            Some(_) if mode == TlsMode::Disable => {
                anyhow::bail!("--tls-ca-file is given but --tls is disable; use --tls verify-full")
            }
            Some(path) => {
                let pem = std::fs::read_to_string(path)
                    .with_context(|| format!("reading --tls-ca-file {}", path.display()))?;
                crate::engine::tls::ca_certificates(&pem)
                    .map_err(|e| anyhow::anyhow!("--tls-ca-file {}: {e}", path.display()))?;
                Some(pem)
            }
        };
        Ok(TlsSettings { mode, ca_pem })
    }
}

/// What a database holds, for `verify`.
#[derive(Debug, Clone)]
pub struct Checks {
    /// Tables (Postgres), keys (Redis) or documents (MongoDB): what the
    /// manifest's `items` counts.
    pub items: u64,
    /// Totals, always reported.
    pub summary: serde_json::Value,
    /// Per table or collection, under this key, when there is room.
    pub detail: Option<(&'static str, serde_json::Value)>,
}

impl Checks {
    /// `summary` with `detail` added.
    pub fn to_json(&self, with_detail: bool) -> serde_json::Value {
        let mut value = self.summary.clone();
        if with_detail
            && let (Some((key, detail)), Some(object)) = (&self.detail, value.as_object_mut())
        {
            object.insert((*key).to_owned(), detail.clone());
        }
        value
    }
}

/// The agent's session to the database it backs up or restores into, per
/// engine.
pub enum Connected {
    Postgres(Postgres),
    Redis(Redis),
    MongoDB(MongoDB),
}

/// How long a refused connection is tried again.
pub const REFUSED_PATIENCE: std::time::Duration = std::time::Duration::from_secs(60);

/// Whether nothing listened where the database should be (yet), as opposed
/// to a refused login or a missing database, which fail at once.
fn refused(error: &anyhow::Error) -> bool {
    let text = format!("{error:#}");
    text.contains("Connection refused") || text.contains("No route to host")
}

impl Connected {
    /// Connects and logs in, so that a wrong password, a missing database or
    /// an unreachable server fails before any storage is touched. A refused
    /// connection is tried again for [`REFUSED_PATIENCE`]: a restore starts
    /// as soon as its instance's pod is ready, a moment before the node
    /// routes the instance's Service to it.
    pub async fn connect(args: &DatabaseArgs, password: Secret) -> anyhow::Result<Connected> {
        let deadline = std::time::Instant::now() + REFUSED_PATIENCE;
        loop {
            let attempt = Self::connect_once(args, password.clone()).await;
            match attempt {
                Err(e) if refused(&e) && std::time::Instant::now() < deadline => {
                    tracing::info!(error = %format!("{e:#}"), "the database refused the connection; trying again");
                    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
                }
                other => return other,
            }
        }
    }

    async fn connect_once(args: &DatabaseArgs, password: Secret) -> anyhow::Result<Connected> {
        Ok(match args.engine {
            EngineKind::Postgres => Connected::Postgres(Postgres::connect(args, password).await?),
            EngineKind::Redis => Connected::Redis(Redis::connect(args, password).await?),
            EngineKind::MongoDB => Connected::MongoDB(MongoDB::connect(args, password).await?),
        })
    }

    /// The name the manifest records.
    pub fn name(&self) -> &'static str {
        match self {
            Connected::Postgres(_) => "postgres",
            Connected::Redis(_) => "redis",
            Connected::MongoDB(_) => "mongodb",
        }
    }

    pub fn format(&self) -> &'static str {
        match self {
            Connected::Postgres(_) => super::postgres::FORMAT,
            Connected::Redis(_) => super::redis::FORMAT,
            Connected::MongoDB(_) => super::mongodb::FORMAT,
        }
    }

    pub fn server_version(&self) -> &str {
        match self {
            Connected::Postgres(e) => e.server_version(),
            Connected::Redis(e) => e.server_version(),
            Connected::MongoDB(e) => e.server_version(),
        }
    }

    /// Redis: the key prefix the dump is limited to.
    pub fn key_prefix(&self) -> Option<&str> {
        match self {
            Connected::Redis(e) => e.key_prefix(),
            _ => None,
        }
    }

    /// Writes the dump into `sink`; returns its item count.
    pub async fn dump(
        &mut self,
        sink: &mut (dyn AsyncWrite + Unpin + Send),
    ) -> anyhow::Result<u64> {
        match self {
            Connected::Postgres(e) => e.dump(sink).await,
            Connected::Redis(e) => e.dump(sink).await,
            Connected::MongoDB(e) => e.dump(sink).await,
        }
    }

    /// Refuses, before anything is downloaded, a backup this target cannot
    /// take.
    pub fn accepts(&mut self, manifest: &Manifest) -> anyhow::Result<()> {
        if manifest.engine != self.name() || manifest.format != self.format() {
            anyhow::bail!(
                "the backup is a {} dump ({}); this restore is for {} ({})",
                manifest.engine,
                manifest.format,
                self.name(),
                self.format()
            );
        }
        match self {
            Connected::Redis(e) => e.check_prefix(manifest),
            _ => Ok(()),
        }
    }

    /// Loads a dump.
    pub async fn restore(&mut self, source: impl AsyncRead + Unpin + Send) -> anyhow::Result<()> {
        match self {
            Connected::Postgres(e) => e.restore(source).await,
            Connected::Redis(e) => e.restore(source).await.map(drop),
            Connected::MongoDB(e) => e.restore(source).await.map(drop),
        }
    }

    pub async fn check(&mut self) -> anyhow::Result<Checks> {
        match self {
            Connected::Postgres(e) => e.check().await,
            Connected::Redis(e) => e.check().await,
            Connected::MongoDB(e) => e.check().await,
        }
    }

    /// Empties a verification's scratch target (Redis: the keys under the
    /// prefix in that logical database; MongoDB: the whole database);
    /// returns how many keys or collections went. PostgreSQL's scratch
    /// database is made and dropped by [`super::postgres::scratch`].
    pub async fn empty_scratch(&mut self) -> anyhow::Result<u64> {
        match self {
            Connected::Postgres(_) => Ok(0),
            Connected::Redis(e) => e.empty().await,
            Connected::MongoDB(e) => e.drop_database().await,
        }
    }

    /// What `--database` names, as the manifest records it.
    pub fn database(&self, args: &DatabaseArgs) -> String {
        match self {
            Connected::Redis(e) => e.database(),
            _ => args.database.clone().unwrap_or_default(),
        }
    }

    /// What `items` counts, in words.
    pub fn items_word(&self) -> &'static str {
        match self {
            Connected::Postgres(_) => "tables",
            Connected::Redis(_) => "keys",
            Connected::MongoDB(_) => "documents",
        }
    }
}
