//! `kubectl servicedb backup NAME`: a `DatabaseBackup` now (trigger
//! `Manual`, as one written by hand), then its outcome as the operator
//! records it in the backup's status.

use std::time::Duration;

use anyhow::Context as _;
use kube::Api;
use kube::api::PostParams;

use super::{Kube, WaitArgs, get_database, poll};
use crate::api::DatabaseBackup;
use crate::api::database_backup::{BackupPhase, DatabaseBackupStatus};

/// How long `backup` waits when `--timeout` is not given (a backup Job may
/// run for up to 6 hours; most take minutes).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3600);

#[derive(clap::Args, Debug)]
#[command(
    after_help = "Exit status: 0 when the backup completed (or was created, with --wait=false), \
1 when it failed or the wait timed out. The ServiceDatabase needs spec.backup: it says where backups go."
)]
pub struct Args {
    /// The ServiceDatabase to back up.
    pub name: String,
    /// Name of the DatabaseBackup (default: NAME-YYYYMMDD-HHMMSS, UTC).
    #[arg(long = "backup-name", value_name = "NAME")]
    pub backup_name: Option<String>,
    #[command(flatten)]
    pub wait: WaitArgs,
}

/// Whether the database has backups, its class's included. A class that
/// cannot be read (the user may not read DatabaseClasses) leaves the
/// answer to the operator.
async fn has_backups(kube: &Kube, sdb: &crate::api::ServiceDatabase) -> bool {
    match &sdb.spec.backup {
        Some(b) if b.enabled == Some(false) => false,
        Some(_) => true,
        None => {
            let Some(class) = sdb
                .status
                .as_ref()
                .and_then(|s| s.class_name.clone())
                .or_else(|| sdb.spec.class_name.clone())
            else {
                return true;
            };
            match Api::<crate::api::DatabaseClass>::all(kube.client.clone())
                .get(&class)
                .await
            {
                Ok(class) => class
                    .spec
                    .backup
                    .is_some_and(|b| b.destination.is_some() && b.schedule.is_some()),
                Err(_) => true,
            }
        }
    }
}

pub async fn run(kube: &Kube, args: Args) -> anyhow::Result<i32> {
    let sdb = get_database(kube, &args.name).await?;
    if !has_backups(kube, &sdb).await {
        anyhow::bail!(
            "ServiceDatabase {} has no backups (no spec.backup, none from its class, or backup.enabled false): set spec.backup.destination (where backups go) first",
            args.name
        );
    }
    let name = args.backup_name.clone().unwrap_or_else(|| {
        format!(
            "{}-{}",
            args.name,
            chrono::Utc::now().format("%Y%m%d-%H%M%S")
        )
    });
    let backup: DatabaseBackup = serde_json::from_value(serde_json::json!({
        "apiVersion": "servicedb.dev/v1alpha1", "kind": "DatabaseBackup",
        "metadata": {"name": name, "namespace": kube.namespace},
        "spec": {"serviceDatabaseRef": {"name": args.name}, "trigger": "Manual"}
    }))
    .context("building the DatabaseBackup")?;
    let api: Api<DatabaseBackup> = Api::namespaced(kube.client.clone(), &kube.namespace);
    api.create(&PostParams::default(), &backup)
        .await
        .with_context(|| format!("creating DatabaseBackup {name}"))?;
    println!("databasebackup.servicedb.dev/{name} created");
    if !args.wait.wait {
        return Ok(0);
    }
    let timeout = args.wait.timeout.unwrap_or(DEFAULT_TIMEOUT);
    let seen = std::cell::Cell::new(None);
    let done = poll(timeout, || {
        let api = api.clone();
        let name = name.clone();
        let seen = &seen;
        async move {
            let status = api
                .get(&name)
                .await
                .with_context(|| format!("reading DatabaseBackup {name}"))?
                .status
                .unwrap_or_default();
            if seen.get() != Some(status.phase) {
                eprintln!("{name}: {:?}", status.phase);
                seen.set(Some(status.phase));
            }
            Ok(
                matches!(status.phase, BackupPhase::Completed | BackupPhase::Failed)
                    .then_some(status),
            )
        }
    })
    .await?;
    match done {
        Some(status) => {
            print!("{}", report(&status));
            Ok(if status.phase == BackupPhase::Completed {
                0
            } else {
                1
            })
        }
        None => {
            eprintln!(
                "error: timed out after {}s: DatabaseBackup {name} has not finished; follow it with `kubectl get dbb {name} -n {} -w`",
                timeout.as_secs(),
                kube.namespace
            );
            Ok(1)
        }
    }
}

/// The outcome of a finished backup, one `Key: value` line each.
pub fn report(status: &DatabaseBackupStatus) -> String {
    let mut out = format!("Phase:      {:?}\n", status.phase);
    let mut line = |k: &str, v: Option<String>| {
        if let Some(v) = v {
            out.push_str(&format!("{:<12}{v}\n", format!("{k}:")));
        }
    };
    line(
        "Completed",
        status.completed_at.as_ref().map(|t| t.0.to_string()),
    );
    line(
        "Size",
        status
            .size
            .clone()
            .or(status.size_bytes.map(|b| format!("{b} B"))),
    );
    line("Location", status.location.clone());
    line("Checksum", status.checksum.clone());
    if status.phase == BackupPhase::Failed {
        line(
            "Message",
            status
                .conditions
                .iter()
                .find(|c| c.type_ == crate::api::conditions::types::COMPLETED)
                .map(|c| c.message.clone()),
        );
    }
    out
}
