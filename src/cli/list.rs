//! `kubectl servicedb list`: every ServiceDatabase with what on-call asks
//! first: whose it is, what runs, is it up, when was the last backup and
//! verification, how old are the credentials.

use anyhow::Context as _;
use kube::api::ListParams;
use kube::{Api, ResourceExt};

use super::Kube;
use super::output::{Table, age, selector};
use crate::api::ServiceDatabase;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// List the ServiceDatabases of every namespace.
    #[arg(short = 'A', long)]
    pub all_namespaces: bool,
}

/// The ServiceDatabases of the namespace, or of all, sorted by namespace and name.
pub async fn databases(kube: &Kube, all_namespaces: bool) -> anyhow::Result<Vec<ServiceDatabase>> {
    let api: Api<ServiceDatabase> = if all_namespaces {
        Api::all(kube.client.clone())
    } else {
        Api::namespaced(kube.client.clone(), &kube.namespace)
    };
    let mut items = api
        .list(&ListParams::default())
        .await
        .context("listing ServiceDatabases")?
        .items;
    items.sort_by_key(|d| (d.namespace().unwrap_or_default(), d.name_any()));
    Ok(items)
}

pub async fn run(kube: &Kube, args: Args) -> anyhow::Result<i32> {
    let items = databases(kube, args.all_namespaces).await?;
    if items.is_empty() {
        if args.all_namespaces {
            eprintln!("No ServiceDatabases found.");
        } else {
            eprintln!("No ServiceDatabases found in {} namespace.", kube.namespace);
        }
        return Ok(0);
    }
    print!("{}", table(&items, args.all_namespaces).render(0));
    Ok(0)
}

pub fn table(items: &[ServiceDatabase], all_namespaces: bool) -> Table {
    let mut headers = vec![
        "NAME",
        "OWNER",
        "ENGINE",
        "ISOLATION",
        "PHASE",
        "LAST BACKUP",
        "LAST VERIFIED",
        "CREDENTIALS",
        "AGE",
    ];
    if all_namespaces {
        headers.insert(0, "NAMESPACE");
    }
    let mut table = Table::new(&headers);
    for sdb in items {
        let status = sdb.status.clone().unwrap_or_default();
        let mut row = vec![
            sdb.name_any(),
            selector(&sdb.spec.owner.pod_selector),
            sdb.spec.engine.to_string(),
            sdb.spec.isolation.to_string(),
            status.phase.to_string(),
            age(status
                .last_backup
                .as_ref()
                .and_then(|b| b.completed_at.as_ref())),
            age(status
                .last_verified_backup
                .as_ref()
                .and_then(|v| v.verified_at.as_ref())),
            age(status.credentials_rotated_at.as_ref()),
            age(sdb.metadata.creation_timestamp.as_ref()),
        ];
        if all_namespaces {
            row.insert(0, sdb.namespace().unwrap_or_default());
        }
        table.row(row);
    }
    table
}
