//! `servicedb agent`: backup, restore, verify and delete, run inside a
//! Kubernetes Job (the same binary as the operator, copied into the
//! engine's image as the instance manager is).
//!
//! Every run is one pipeline and ends in one JSON line (see [`report`]):
//!
//! - **backup**: log in to the database (a wrong password or a missing
//!   database fails here) → check the destination (a missing bucket or
//!   directory, bad credentials or an unreachable endpoint fail here, before
//!   the dump starts) → stream the dump through zstd and SHA-256 into a
//!   multipart upload of `<destination>/<name>/archive.zst` ([`archive`]) →
//!   only if the dump exited cleanly and the upload completed, write
//!   `<destination>/<name>/manifest.json` ([`manifest`]) last. Any failure
//!   aborts the upload, so a backup exists exactly when its manifest does.
//! - **restore**: read the manifest → download the archive to a temporary
//!   file, checking size and SHA-256 against it; refuse a truncated or
//!   corrupted one before touching the database → decompress into the
//!   engine.
//! - **verify**: restore into an empty scratch database, then count what
//!   arrived (tables and rows, keys, collections and documents); fail if
//!   the restore fails or the result is empty while the backup was not.
//! - **delete**: remove the manifest first (the backup stops existing),
//!   then the archive and anything else under the backup's directory.
//!
//! Formats, one per engine, and why: see [`postgres`] (`pg_dump` custom
//! format), [`redis`] (per-key `DUMP` records, so that one service's prefix
//! on a shared server can be backed up and restored alone) and [`mongodb`]
//! (raw BSON through the driver, since the MongoDB tools are not in the
//! engine images). Storage: [`location`].
//!
//! Secrets: the database password only from `SERVICEDB_PASSWORD`, S3
//! credentials only from the `AWS_*` environment; both are scrubbed from
//! every message the agent prints, and child processes get only what they
//! need.

mod archive;
mod engine;
mod frame;
mod location;
mod manifest;
mod mongodb;
mod postgres;
mod redis;
mod report;
mod secret;

mod commands;
use commands::*;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, bail};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde_json::json;
use tracing::{info, warn};

pub use engine::{DatabaseArgs, TlsArg};
pub use location::StoreArgs;
pub use manifest::Manifest;
pub use report::ReportArgs;

use archive::ArchiveWriter;
use engine::Connected;
use location::BackupUrl;
use report::{Reporter, TERMINATION_LOG_LIMIT};
use secret::Secret;

/// `servicedb agent`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// Dump a database to `<destination>/<name>/` (archive.zst, then manifest.json).
    Backup(BackupArgs),
    /// Load a backup into a database.
    Restore(RestoreArgs),
    /// Restore a backup into an empty scratch database and check what arrived.
    Verify(RestoreArgs),
    /// Remove a backup (success if it does not exist).
    Delete(DeleteArgs),
    /// List the completed backups in a directory of backups, oldest first:
    /// one JSON line each, its `name` and manifest.
    List(ListArgs),
}

#[derive(clap::Args, Debug)]
pub struct ListArgs {
    /// The directory of backups: `<destination>/<namespace>/<name>`, such
    /// as `s3://backups/shop/orders`.
    #[arg(long, env = "SERVICEDB_FROM")]
    pub from: String,
    #[command(flatten)]
    pub store: StoreArgs,
}

#[derive(clap::Args, Debug)]
pub struct BackupArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// Where backups go: `s3://bucket/prefix` or `file:///absolute/dir`.
    #[arg(long, env = "SERVICEDB_DESTINATION")]
    pub destination: String,
    /// The backup's name: its directory under the destination.
    #[arg(long, env = "SERVICEDB_BACKUP_NAME")]
    pub name: String,
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub report: ReportArgs,
}

#[derive(clap::Args, Debug)]
pub struct RestoreArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// The backup: `<destination>/<backup-name>`; with `--latest`, the
    /// directory of backups to choose from.
    #[arg(long, env = "SERVICEDB_FROM")]
    pub from: String,
    /// `restore` only: load the latest completed backup in the directory
    /// `--from` (by its manifest's `completedAt`).
    #[arg(long)]
    pub latest: bool,
    /// With `--latest`: the latest completed before this time (RFC 3339).
    #[arg(long, requires = "latest")]
    pub before: Option<String>,
    /// Directory for the downloaded archive (it is checked before loading,
    /// so it is stored whole); default: the system's temporary directory.
    #[arg(long, env = "SERVICEDB_WORK_DIR")]
    pub work_dir: Option<PathBuf>,
    /// `verify` only: the target is a scratch one, emptied before the
    /// restore and after the check, so that scheduled runs repeat (a
    /// PostgreSQL or MongoDB database named `*_verify` or `*-verify`, or a
    /// Redis logical database other than 0).
    #[arg(long)]
    pub scratch: bool,
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub report: ReportArgs,
}

#[derive(clap::Args, Debug)]
pub struct DeleteArgs {
    /// The backup: `<destination>/<backup-name>`.
    #[arg(long, env = "SERVICEDB_FROM")]
    pub from: String,
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub report: ReportArgs,
}

/// Runs one agent command to its end; returns the process's exit code.
pub fn main(args: Args) -> i32 {
    init_logging();
    if let Command::List(list_args) = &args.command {
        return list_main(list_args);
    }
    let report_args = match &args.command {
        Command::Backup(a) => &a.report,
        Command::Restore(a) | Command::Verify(a) => &a.report,
        Command::Delete(a) => &a.report,
        Command::List(_) => unreachable!("handled above"),
    };
    let password = match Secret::from_env() {
        Ok(password) => password,
        Err(error) => {
            Reporter::new(report_args, vec![]).failure(&error);
            return 1;
        }
    };
    let s3_secret = Secret::new(std::env::var("AWS_SECRET_ACCESS_KEY").unwrap_or_default());
    let s3_token = Secret::new(std::env::var("AWS_SESSION_TOKEN").unwrap_or_default());
    let reporter = Reporter::new(report_args, vec![password.clone(), s3_secret, s3_token]);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
    {
        Ok(runtime) => runtime,
        Err(error) => {
            reporter.failure(&error);
            return 1;
        }
    };
    let outcome = runtime.block_on(run(args, password));
    match outcome {
        Ok((full, compact)) => {
            reporter.success(&full, &compact);
            0
        }
        Err(error) => {
            reporter.failure(&error);
            1
        }
    }
}

/// Progress on stderr (stdout carries only the result).
fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn,servicedb=info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_target(false)
        .try_init();
}

/// SIGTERM (the Job deleted, the pod evicted) or SIGINT.
async fn interrupted() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        },
        // Without signal handlers the default action (exit) applies.
        _ => std::future::pending().await,
    }
}

/// The result printed on stdout, and the form written to the termination
/// log (the same unless it would not fit).
type Report = (serde_json::Value, serde_json::Value);

async fn run(args: Args, password: Secret) -> anyhow::Result<Report> {
    match args.command {
        // Handles signals itself: it must abort its upload before exiting.
        Command::Backup(args) => {
            let manifest = backup(&args, password).await?;
            let value = serde_json::to_value(&manifest).context("encoding the manifest")?;
            Ok((value.clone(), value))
        }
        // Dropped on a signal: pg_restore is killed with it (so its
        // transaction rolls back), the temporary archive is removed.
        Command::Restore(args) => {
            until_signal(async {
                let (manifest, seconds) = restore(&args, password).await?;
                let value = json!({ "restored": manifest, "restoreSeconds": seconds });
                Ok((value.clone(), value))
            })
            .await
        }
        Command::Verify(args) => until_signal(verify(&args, password)).await,
        Command::Delete(args) => {
            until_signal(async {
                let value = delete(&args).await?;
                Ok((value.clone(), value))
            })
            .await
        }
        Command::List(_) => unreachable!("handled by list_main"),
    }
}

async fn until_signal<T>(work: impl Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::select! {
        outcome = work => outcome,
        signal = interrupted() => Err(anyhow::anyhow!("stopped by {signal}")),
    }
}

fn rfc3339_now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}
