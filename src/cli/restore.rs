//! `kubectl servicedb restore NAME --from BACKUP`: servicedb restores only
//! into a new database (`spec.bootstrap.fromBackup`), so this creates the
//! ServiceDatabase NAME like the backed-up one, starting from the backup,
//! and waits until it is Ready. It never touches the backed-up database.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context as _;
use kube::Api;
use kube::api::PostParams;

use super::{Kube, WaitArgs, poll};
use crate::api::conditions::types;
use crate::api::database_backup::BackupPhase;
use crate::api::service_database::BootstrapSpec;
use crate::api::{DatabaseBackup, Phase, ServiceDatabase, ServiceDatabaseSpec};

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3600);

#[derive(clap::Args, Debug)]
#[command(
    after_help = "servicedb restores into a new database only: NAME must not exist. The new \
ServiceDatabase copies engine, version, class, owner, isolation, serverRef, storage and resources of the \
backed-up one (the DatabaseBackup's spec.serviceDatabaseRef, which must still exist), sets \
spec.bootstrap.fromBackup, and gets its own credentials Secret (NAME-db), no backups and deletionPolicy \
Retain. To restore over a database, point its app at the new one, or delete the old one and restore under \
its name. Exit status: 0 when restored and Ready (or created, with --wait=false), 1 when the restore failed \
or the wait timed out."
)]
pub struct Args {
    /// The new ServiceDatabase.
    pub name: String,
    /// The completed DatabaseBackup to start from (same namespace).
    #[arg(long, value_name = "BACKUP")]
    pub from: String,
    /// The owner's pod labels, `key=value` (repeatable); default: the backed-up database's owner.
    #[arg(long = "owner", value_name = "KEY=VALUE", value_parser = parse_label)]
    pub owner: Vec<(String, String)>,
    /// Print the ServiceDatabase as YAML instead of creating it.
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub wait: WaitArgs,
}

fn parse_label(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("{text}: expected key=value")),
    }
}

pub async fn run(kube: &Kube, args: Args) -> anyhow::Result<i32> {
    let sdbs: Api<ServiceDatabase> = Api::namespaced(kube.client.clone(), &kube.namespace);
    let backups: Api<DatabaseBackup> = Api::namespaced(kube.client.clone(), &kube.namespace);
    let backup = backups
        .get_opt(&args.from)
        .await
        .with_context(|| format!("reading DatabaseBackup {}", args.from))?
        .ok_or_else(|| {
            anyhow::anyhow!(
                "DatabaseBackup {} not found in namespace {}",
                args.from,
                kube.namespace
            )
        })?;
    let phase = backup.status.as_ref().map(|s| s.phase).unwrap_or_default();
    if phase != BackupPhase::Completed {
        anyhow::bail!(
            "DatabaseBackup {} is {phase:?}; only a Completed backup can be restored",
            args.from
        );
    }
    if sdbs.get_opt(&args.name).await?.is_some() {
        anyhow::bail!(
            "ServiceDatabase {} exists: servicedb restores into a new database only (spec.bootstrap.fromBackup); choose a new NAME",
            args.name
        );
    }
    let source_name = &backup.spec.service_database_ref.name;
    let source = sdbs.get_opt(source_name).await?.ok_or_else(|| {
        anyhow::anyhow!(
            "ServiceDatabase {source_name}, which DatabaseBackup {} backed up, no longer exists: write the new ServiceDatabase yourself with spec.bootstrap.fromBackup.name: {}",
            args.from,
            args.from
        )
    })?;
    let sdb = new_database(
        &args.name,
        &kube.namespace,
        &source.spec,
        &args.from,
        &args.owner,
    );
    if args.dry_run {
        print!("{}", serde_yaml::to_string(&sdb)?);
        return Ok(0);
    }
    sdbs.create(&PostParams::default(), &sdb)
        .await
        .with_context(|| format!("creating ServiceDatabase {}", args.name))?;
    println!(
        "servicedatabase.servicedb.dev/{} created from DatabaseBackup {}",
        args.name, args.from
    );
    if !args.wait.wait {
        return Ok(0);
    }
    let timeout = args.wait.timeout.unwrap_or(DEFAULT_TIMEOUT);
    let outcome = poll(timeout, || async {
        let status = sdbs
            .get(&args.name)
            .await
            .with_context(|| format!("reading ServiceDatabase {}", args.name))?
            .status
            .unwrap_or_default();
        let failed = status.conditions.iter().find(|c| {
            c.status == "False"
                && ((c.type_ == types::RESTORED && c.reason == "RestoreFailed")
                    || c.type_ == types::SPEC_VALID)
        });
        if let Some(c) = failed {
            return Ok(Some(Err(format!("{}: {}", c.reason, c.message))));
        }
        let restored = status
            .conditions
            .iter()
            .any(|c| c.type_ == types::RESTORED && c.status == "True");
        Ok((restored && status.phase == Phase::Ready).then_some(Ok(())))
    })
    .await?;
    match outcome {
        Some(Ok(())) => {
            println!("{} restored from {} and Ready", args.name, args.from);
            Ok(0)
        }
        Some(Err(why)) => {
            eprintln!("error: restoring {} failed: {why}", args.name);
            Ok(1)
        }
        None => {
            eprintln!(
                "error: timed out after {}s: {} is not restored yet; see `kubectl servicedb status {}`",
                timeout.as_secs(),
                args.name,
                args.name
            );
            Ok(1)
        }
    }
}

/// The new ServiceDatabase: the source's placement and owner, the backup
/// as its initial contents, nothing that would share the source's Secret
/// or backups.
pub fn new_database(
    name: &str,
    namespace: &str,
    source: &ServiceDatabaseSpec,
    backup: &str,
    owner: &[(String, String)],
) -> ServiceDatabase {
    let mut owner_spec = source.owner.clone();
    if !owner.is_empty() {
        owner_spec.pod_selector = k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector {
            match_labels: Some(owner.iter().cloned().collect::<BTreeMap<_, _>>()),
            ..Default::default()
        };
    }
    let spec = ServiceDatabaseSpec {
        engine: source.engine,
        version: source.version.clone(),
        class_name: source.class_name.clone(),
        owner: owner_spec,
        isolation: source.isolation,
        server_ref: source.server_ref.clone(),
        storage: source.storage.clone(),
        resources: source.resources.clone(),
        credentials: None,
        backup: None,
        monitoring: None,
        disruption: source.disruption,
        pod: source.pod.clone(),
        // Scripting is the service's choice for its data: kept.
        redis: source.redis.clone(),
        postgres: source.postgres.clone(),
        deletion_policy: Default::default(),
        bootstrap: Some(BootstrapSpec {
            from_archive: None,
            from_backup: Some(crate::api::common::LocalObjectRef {
                name: backup.to_string(),
            }),
        }),
    };
    let mut sdb = ServiceDatabase::new(name, spec);
    sdb.metadata.namespace = Some(namespace.to_string());
    sdb
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_restored_database_copies_placement_and_owner_not_secret_or_backups() {
        let source: ServiceDatabaseSpec = serde_json::from_value(serde_json::json!({
            "engine": "Postgres", "version": "17", "isolation": "Database",
            "serverRef": {"name": "shared-pg", "namespace": "platform"},
            "owner": {"podSelector": {"matchLabels": {"app": "orders"}}},
            "credentials": {"secretName": "orders-creds"},
            "backup": {"schedule": "@daily", "destination": {"volume": {"claimName": "b"}}},
            "deletionPolicy": "Delete"
        }))
        .unwrap();
        let sdb = new_database("orders-copy", "shop", &source, "orders-1", &[]);
        let v = serde_json::to_value(&sdb).unwrap();
        assert_eq!(v["metadata"]["name"], "orders-copy");
        assert_eq!(v["spec"]["serverRef"]["name"], "shared-pg");
        assert_eq!(
            v["spec"]["owner"]["podSelector"]["matchLabels"]["app"],
            "orders"
        );
        assert_eq!(v["spec"]["bootstrap"]["fromBackup"]["name"], "orders-1");
        assert_eq!(v["spec"]["deletionPolicy"], "Retain");
        assert!(v["spec"].get("credentials").is_none());
        assert!(v["spec"].get("backup").is_none());
        let other = new_database("c", "shop", &source, "b", &[("app".into(), "copy".into())]);
        assert_eq!(
            serde_json::to_value(&other).unwrap()["spec"]["owner"]["podSelector"]["matchLabels"],
            serde_json::json!({"app": "copy"})
        );
    }
}
