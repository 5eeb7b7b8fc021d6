//! `kubectl servicedb status NAME`: one ServiceDatabase as on-call needs it:
//! where it runs, its credentials' age, its conditions, its backups and the
//! Events about it (as `kubectl describe` shows them).

use anyhow::Context as _;
use k8s_openapi::api::core::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::ListParams;
use kube::{Api, ResourceExt};

use super::output::{Table, age, or_none, selector};
use super::{Kube, get_database};
use crate::api::database_backup::human_size;
use crate::api::{DatabaseBackup, Isolation, ServiceDatabase};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The ServiceDatabase.
    pub name: String,
}

pub async fn run(kube: &Kube, args: Args) -> anyhow::Result<i32> {
    let sdb = get_database(kube, &args.name).await?;
    let backups = backups_of(kube, &args.name).await?;
    let events = events_of(kube, &sdb).await?;
    print!("{}", describe(&sdb, &backups, &events));
    Ok(0)
}

/// The DatabaseBackups of `name`, oldest first.
pub async fn backups_of(kube: &Kube, name: &str) -> anyhow::Result<Vec<DatabaseBackup>> {
    let mut backups: Vec<DatabaseBackup> =
        Api::<DatabaseBackup>::namespaced(kube.client.clone(), &kube.namespace)
            .list(&ListParams::default())
            .await
            .context("listing DatabaseBackups")?
            .items
            .into_iter()
            .filter(|b| b.spec.service_database_ref.name == name)
            .collect();
    backups.sort_by_key(|b| {
        (
            b.metadata.creation_timestamp.as_ref().map(|t| t.0),
            b.name_any(),
        )
    });
    Ok(backups)
}

async fn events_of(kube: &Kube, sdb: &ServiceDatabase) -> anyhow::Result<Vec<Event>> {
    let mut selector = format!(
        "involvedObject.kind=ServiceDatabase,involvedObject.name={}",
        sdb.name_any()
    );
    if let Some(uid) = &sdb.metadata.uid {
        selector.push_str(&format!(",involvedObject.uid={uid}"));
    }
    let mut events = Api::<Event>::namespaced(kube.client.clone(), &kube.namespace)
        .list(&ListParams::default().fields(&selector))
        .await
        .context("listing Events")?
        .items;
    events.sort_by_key(last_seen);
    Ok(events)
}

/// When an Event was last seen, whichever API wrote it.
fn last_seen(e: &Event) -> Option<k8s_openapi::jiff::Timestamp> {
    e.series
        .as_ref()
        .and_then(|s| s.last_observed_time.as_ref().map(|t| t.0))
        .or(e.last_timestamp.as_ref().map(|t| t.0))
        .or(e.event_time.as_ref().map(|t| t.0))
        .or(e.first_timestamp.as_ref().map(|t| t.0))
        .or(e.metadata.creation_timestamp.as_ref().map(|t| t.0))
}

pub fn describe(sdb: &ServiceDatabase, backups: &[DatabaseBackup], events: &[Event]) -> String {
    let status = sdb.status.clone().unwrap_or_default();
    let spec = &sdb.spec;
    let mut out = String::new();
    let mut field = |k: &str, v: String| out.push_str(&format!("{:<15}{v}\n", format!("{k}:")));
    field("Name", sdb.name_any());
    field("Namespace", sdb.namespace().unwrap_or_default());
    field("Owner", selector(&spec.owner.pod_selector));
    field(
        "Engine",
        match &status.version {
            Some(v) => format!("{} {v}", spec.engine),
            None => spec.engine.to_string(),
        },
    );
    field("Isolation", spec.isolation.to_string());
    field(
        "Server",
        match (&spec.isolation, &spec.server_ref) {
            (Isolation::Dedicated, _) | (_, None) => "its own instance (dedicated)".into(),
            (_, Some(server)) => format!(
                "DatabaseServer {}/{}",
                server
                    .namespace
                    .clone()
                    .unwrap_or_else(|| sdb.namespace().unwrap_or_default()),
                server.name
            ),
        },
    );
    field(
        "Endpoint",
        or_none(
            status
                .endpoint
                .as_ref()
                .map(|e| format!("{}:{}", e.host, e.port)),
        ),
    );
    field("Phase", status.phase.to_string());
    let rotate_every = spec
        .credentials
        .as_ref()
        .and_then(|c| c.rotate_every.clone());
    field(
        "Credentials",
        format!(
            "Secret {}{}{}",
            or_none(status.credentials_secret.clone()),
            status
                .credentials_rotated_at
                .as_ref()
                .map(|t| format!(", issued {} ago", age(Some(t))))
                .unwrap_or_default(),
            rotate_every
                .map(|every| format!(", rotated every {every}"))
                .unwrap_or_default()
        ),
    );
    field(
        "Backups",
        spec.backup
            .as_ref()
            .and_then(|b| b.schedule.as_ref())
            .map(|schedule| format!("schedule {schedule}"))
            .unwrap_or_else(|| "not configured".into()),
    );
    field(
        "Last backup",
        status
            .last_backup
            .as_ref()
            .map(|b| {
                format!(
                    "{}, {} ago{}",
                    b.name,
                    age(b.completed_at.as_ref()),
                    b.size_bytes
                        .map(|s| format!(", {}", human_size(s)))
                        .unwrap_or_default()
                )
            })
            .unwrap_or_else(|| "<none>".into()),
    );
    field(
        "Last verified",
        status
            .last_verified_backup
            .as_ref()
            .map(|v| format!("{}, {} ago", v.name, age(v.verified_at.as_ref())))
            .unwrap_or_else(|| "<none>".into()),
    );

    out.push_str("Conditions:\n");
    let mut conditions = Table::new(&["TYPE", "STATUS", "REASON", "AGE", "MESSAGE"]);
    for c in &status.conditions {
        conditions.row(vec![
            c.type_.clone(),
            c.status.clone(),
            c.reason.clone(),
            age(Some(&c.last_transition_time)),
            c.message.clone(),
        ]);
    }
    out.push_str(&section(&conditions));

    out.push_str("Backups:\n");
    let mut table = Table::new(&[
        "NAME",
        "TRIGGER",
        "PHASE",
        "SIZE",
        "VERIFIED",
        "COMPLETED",
        "AGE",
    ]);
    for b in backups {
        let s = b.status.clone().unwrap_or_default();
        table.row(vec![
            b.name_any(),
            format!("{:?}", b.spec.trigger),
            format!("{:?}", s.phase),
            or_none(s.size.clone()),
            or_none(s.verified.map(|v| v.to_string())),
            age(s.completed_at.as_ref()),
            age(b.metadata.creation_timestamp.as_ref()),
        ]);
    }
    out.push_str(&section(&table));

    out.push_str("Events:\n");
    let mut table = Table::new(&["LAST SEEN", "TYPE", "REASON", "MESSAGE"]);
    for e in events {
        table.row(vec![
            age(last_seen(e).map(Time).as_ref()),
            e.type_.clone().unwrap_or_default(),
            e.reason.clone().unwrap_or_default(),
            e.message.clone().unwrap_or_default(),
        ]);
    }
    out.push_str(&section(&table));
    out
}

fn section(table: &Table) -> String {
    if table.is_empty() {
        "  <none>\n".into()
    } else {
        table.render(2)
    }
}
