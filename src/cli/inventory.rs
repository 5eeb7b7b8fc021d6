//! `kubectl servicedb inventory`: who owns which database where, one row
//! per ServiceDatabase, for audits. Names come from the credentials
//! Secret's non-secret keys (`database`, `schema`, `keyPrefix`, `username`);
//! the password keys are never read into the output.

use anyhow::Context as _;
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, ResourceExt};
use serde::Serialize;

use super::Kube;
use super::list::databases;
use super::output::{Table, selector};
use crate::api::{Isolation, ServiceDatabase};

#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Format {
    /// Aligned columns.
    #[default]
    Table,
    /// RFC 4180 CSV with a header line.
    Csv,
    /// A JSON array of objects.
    Json,
}

#[derive(clap::Args, Debug)]
#[command(
    after_help = "Columns: namespace, name, owner (pod selector), engine, version, isolation, \
server (the DatabaseServer, or `dedicated`), endpoint, database, schema, keyPrefix, login (the current \
username), secret, backupSchedule, lastBackup, phase, created. database, schema, keyPrefix and login come \
from the credentials Secret; without the right to read it they are empty and a warning says so."
)]
pub struct Args {
    /// Every namespace.
    #[arg(short = 'A', long)]
    pub all_namespaces: bool,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = Format::Table)]
    pub output: Format,
}

/// One ServiceDatabase in the inventory.
#[derive(Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Row {
    pub namespace: String,
    pub name: String,
    pub owner: String,
    pub engine: String,
    pub version: String,
    pub isolation: String,
    pub server: String,
    pub endpoint: String,
    pub database: String,
    pub schema: String,
    pub key_prefix: String,
    pub login: String,
    pub secret: String,
    pub backup_schedule: String,
    pub last_backup: String,
    pub phase: String,
    pub created: String,
}

const COLUMNS: [&str; 17] = [
    "namespace",
    "name",
    "owner",
    "engine",
    "version",
    "isolation",
    "server",
    "endpoint",
    "database",
    "schema",
    "keyPrefix",
    "login",
    "secret",
    "backupSchedule",
    "lastBackup",
    "phase",
    "created",
];

impl Row {
    fn cells(&self) -> [&str; 17] {
        [
            &self.namespace,
            &self.name,
            &self.owner,
            &self.engine,
            &self.version,
            &self.isolation,
            &self.server,
            &self.endpoint,
            &self.database,
            &self.schema,
            &self.key_prefix,
            &self.login,
            &self.secret,
            &self.backup_schedule,
            &self.last_backup,
            &self.phase,
            &self.created,
        ]
    }
}

/// The non-secret names the credentials Secret publishes.
#[derive(Clone, Debug, Default)]
pub struct Names {
    pub database: String,
    pub schema: String,
    pub key_prefix: String,
    pub login: String,
}

pub async fn run(kube: &Kube, args: Args) -> anyhow::Result<i32> {
    let items = databases(kube, args.all_namespaces).await?;
    let mut rows = vec![];
    let mut unreadable = vec![];
    for sdb in &items {
        let names = match names(kube, sdb).await {
            Ok(n) => n,
            Err(e) => {
                unreadable.push(format!(
                    "{}/{}: {e:#}",
                    sdb.namespace().unwrap_or_default(),
                    sdb.name_any()
                ));
                Names::default()
            }
        };
        rows.push(row(sdb, &names));
    }
    for u in &unreadable {
        eprintln!("warning: names unknown for {u}");
    }
    let text = match args.output {
        Format::Json => format!("{}\n", serde_json::to_string_pretty(&rows)?),
        Format::Csv => csv(&rows),
        Format::Table => {
            let headers: Vec<String> = COLUMNS.iter().map(|c| c.to_uppercase()).collect();
            let mut table = Table::new(&headers.iter().map(String::as_str).collect::<Vec<_>>());
            for r in &rows {
                table.row(
                    r.cells()
                        .iter()
                        .map(|c| {
                            if c.is_empty() {
                                "<none>".into()
                            } else {
                                c.to_string()
                            }
                        })
                        .collect(),
                );
            }
            table.render(0)
        }
    };
    print!("{text}");
    Ok(0)
}

/// Reads only the name keys of the credentials Secret.
async fn names(kube: &Kube, sdb: &ServiceDatabase) -> anyhow::Result<Names> {
    let Some(secret) = sdb
        .status
        .as_ref()
        .and_then(|s| s.credentials_secret.clone())
    else {
        return Ok(Names::default());
    };
    let ns = sdb.namespace().unwrap_or_default();
    let Some(found) = Api::<Secret>::namespaced(kube.client.clone(), &ns)
        .get_opt(&secret)
        .await
        .with_context(|| format!("reading Secret {secret}"))?
    else {
        return Ok(Names::default());
    };
    let data = found.data.unwrap_or_default();
    let key = |k: &str| {
        data.get(k)
            .map(|v| String::from_utf8_lossy(&v.0).into_owned())
            .unwrap_or_default()
    };
    Ok(Names {
        database: key("database"),
        schema: key("schema"),
        key_prefix: key("keyPrefix"),
        login: key("username"),
    })
}

pub fn row(sdb: &ServiceDatabase, names: &Names) -> Row {
    let status = sdb.status.clone().unwrap_or_default();
    let ns = sdb.namespace().unwrap_or_default();
    Row {
        namespace: ns.clone(),
        name: sdb.name_any(),
        owner: selector(&sdb.spec.owner.pod_selector),
        engine: sdb.spec.engine.to_string(),
        version: status
            .version
            .clone()
            .or(sdb.spec.version.clone())
            .unwrap_or_default(),
        isolation: sdb.spec.isolation.to_string(),
        server: match (&sdb.spec.isolation, &sdb.spec.server_ref) {
            (Isolation::Dedicated, _) | (_, None) => "dedicated".into(),
            (_, Some(s)) => format!("{}/{}", s.namespace.clone().unwrap_or(ns), s.name),
        },
        endpoint: status
            .endpoint
            .as_ref()
            .map(|e| format!("{}:{}", e.host, e.port))
            .unwrap_or_default(),
        database: names.database.clone(),
        schema: names.schema.clone(),
        key_prefix: names.key_prefix.clone(),
        login: names.login.clone(),
        secret: status.credentials_secret.clone().unwrap_or_default(),
        backup_schedule: sdb
            .spec
            .backup
            .as_ref()
            .and_then(|b| b.schedule.clone())
            .unwrap_or_default(),
        last_backup: status
            .last_backup
            .as_ref()
            .and_then(|b| b.completed_at.as_ref())
            .map(|t| t.0.to_string())
            .unwrap_or_default(),
        phase: status.phase.to_string(),
        created: sdb
            .metadata
            .creation_timestamp
            .as_ref()
            .map(|t| t.0.to_string())
            .unwrap_or_default(),
    }
}

/// RFC 4180: fields with a comma, quote or line break are quoted.
pub fn csv(rows: &[Row]) -> String {
    fn field(s: &str) -> String {
        if s.contains([',', '"', '\n', '\r']) {
            format!("\"{}\"", s.replace('"', "\"\""))
        } else {
            s.to_string()
        }
    }
    let mut out = COLUMNS.join(",");
    out.push_str("\r\n");
    for r in rows {
        out.push_str(
            &r.cells()
                .iter()
                .map(|c| field(c))
                .collect::<Vec<_>>()
                .join(","),
        );
        out.push_str("\r\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quotes_selectors_with_commas() {
        let row = Row {
            name: "orders".into(),
            owner: "app=orders,tier in (a,b)".into(),
            phase: "say \"hi\"".into(),
            ..Default::default()
        };
        let text = csv(&[row]);
        let mut lines = text.split("\r\n");
        assert_eq!(lines.next().unwrap(), COLUMNS.join(","));
        assert_eq!(
            lines.next().unwrap(),
            ",orders,\"app=orders,tier in (a,b)\",,,,,,,,,,,,,\"say \"\"hi\"\"\","
        );
    }

    #[test]
    fn json_names_match_the_csv_header() {
        let v = serde_json::to_value(Row::default()).unwrap();
        let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
        let mut columns: Vec<&str> = COLUMNS.to_vec();
        columns.sort();
        let mut keys: Vec<&str> = keys.iter().map(|k| k.as_str()).collect();
        keys.sort();
        assert_eq!(keys, columns);
    }
}
