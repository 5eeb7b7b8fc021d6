//! `kubectl servicedb`: the kubectl plugin for on-call and app teams. The
//! same binary runs it when invoked as `kubectl-servicedb` (a link or copy on
//! PATH) or as `servicedb kubectl …`. One file per command. The commands
//! act through the existing API only (a DatabaseBackup, the rotation
//! annotation, `spec.bootstrap.fromBackup`), besides reading Events and the
//! credentials Secret's name keys and running `connect`'s pod; none prints
//! a secret value.

mod backup;
mod connect;
mod inventory;
mod list;
mod output;
mod restore;
mod rotate;
mod status;

use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use kube::Client;
use kube::config::{KubeConfigOptions, Kubeconfig};

/// The name kubectl finds the plugin by.
pub const PLUGIN_BINARY: &str = "kubectl-servicedb";

#[derive(Parser, Debug)]
#[command(
    name = "kubectl-servicedb",
    bin_name = "kubectl servicedb",
    version,
    about = "Inspect and operate servicedb databases: list, status, backup, rotate, restore, connect, inventory",
    after_help = "Install: put this binary on PATH as `kubectl-servicedb` (a link or a copy of `servicedb`)."
)]
pub struct Plugin {
    #[command(flatten)]
    pub kube: KubeArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Cluster access, as kubectl takes it.
#[derive(clap::Args, Debug, Clone)]
pub struct KubeArgs {
    /// Path to the kubeconfig file (default: $KUBECONFIG, then ~/.kube/config).
    #[arg(long, global = true, value_name = "PATH")]
    pub kubeconfig: Option<std::path::PathBuf>,
    /// The kubeconfig context to use (default: the current context).
    #[arg(long, global = true, value_name = "NAME")]
    pub context: Option<String>,
    /// The namespace (default: the context's namespace, else `default`).
    #[arg(short = 'n', long, global = true, value_name = "NAMESPACE")]
    pub namespace: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// List ServiceDatabases: owner, engine, isolation, phase, last backup, last verification, credential age.
    List(list::Args),
    /// Show one ServiceDatabase: server, credentials, conditions, backups and Events.
    Status(status::Args),
    /// Take a backup now (a DatabaseBackup), wait for it and show the result.
    Backup(backup::Args),
    /// Rotate the credentials now (the `servicedb.dev/rotate-credentials` annotation) and wait until done.
    Rotate(rotate::Args),
    /// Create a new ServiceDatabase that starts from a completed backup (spec.bootstrap.fromBackup).
    Restore(restore::Args),
    /// Open psql, redis-cli or mongosh as the service's login, in a short-lived pod.
    Connect(connect::Args),
    /// Every ServiceDatabase with its owner, server, database and login names, for audits.
    Inventory(inventory::Args),
}

/// Runs the plugin and returns the process exit code; errors go to stderr.
pub fn main(plugin: Plugin) -> i32 {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return 1;
        }
    };
    match runtime.block_on(run(plugin)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            1
        }
    }
}

async fn run(plugin: Plugin) -> anyhow::Result<i32> {
    let kube = Kube::connect(&plugin.kube).await?;
    match plugin.command {
        Command::List(args) => list::run(&kube, args).await,
        Command::Status(args) => status::run(&kube, args).await,
        Command::Backup(args) => backup::run(&kube, args).await,
        Command::Rotate(args) => rotate::run(&kube, args).await,
        Command::Restore(args) => restore::run(&kube, args).await,
        Command::Connect(args) => connect::run(&kube, &plugin.kube, args).await,
        Command::Inventory(args) => inventory::run(&kube, args).await,
    }
}

/// A client and the namespace commands act in.
pub struct Kube {
    pub client: Client,
    pub namespace: String,
}

impl Kube {
    async fn connect(args: &KubeArgs) -> anyhow::Result<Kube> {
        let options = KubeConfigOptions {
            context: args.context.clone(),
            ..Default::default()
        };
        let config = match (&args.kubeconfig, &args.context) {
            (Some(path), _) => {
                let file = Kubeconfig::read_from(path)
                    .with_context(|| format!("reading kubeconfig {}", path.display()))?;
                kube::Config::from_custom_kubeconfig(file, &options)
                    .await
                    .with_context(|| format!("loading kubeconfig {}", path.display()))?
            }
            (None, Some(_)) => kube::Config::from_kubeconfig(&options)
                .await
                .context("loading the kubeconfig")?,
            (None, None) => kube::Config::infer()
                .await
                .context("finding the cluster: set KUBECONFIG or --kubeconfig")?,
        };
        let namespace = args
            .namespace
            .clone()
            .unwrap_or_else(|| config.default_namespace.clone());
        let client = Client::try_from(config).context("building the Kubernetes client")?;
        Ok(Kube { client, namespace })
    }
}

/// Whether to wait, kubectl style: `--wait`, `--wait=true`, `--wait=false`.
#[derive(clap::Args, Debug, Clone)]
pub struct WaitArgs {
    /// Wait for the result (`--wait=false` to return at once).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1,
          default_missing_value = "true", value_name = "BOOL")]
    pub wait: bool,
    /// How long to wait, such as 30s, 10m or 1h.
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub timeout: Option<Duration>,
}

/// `90s`, `10m`, `1h`, `1h30m`: a Go-style duration without fractions.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let mut total = 0u64;
    let mut digits = String::new();
    let mut any = false;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let unit = if c == 'm' && chars.peek() == Some(&'s') {
            chars.next();
            return Err(format!("{text}: use s, m or h"));
        } else {
            match c {
                's' => 1,
                'm' => 60,
                'h' => 3600,
                _ => return Err(format!("{text}: not a duration such as 30s, 10m or 1h")),
            }
        };
        let n: u64 = digits
            .parse()
            .map_err(|_| format!("{text}: not a duration such as 30s, 10m or 1h"))?;
        total = total.saturating_add(n.saturating_mul(unit));
        digits.clear();
        any = true;
    }
    if !digits.is_empty() || !any {
        return Err(format!("{text}: not a duration such as 30s, 10m or 1h"));
    }
    Ok(Duration::from_secs(total))
}

/// Polls `f` every second until it returns Some or `timeout` passes.
pub async fn poll<T, F, Fut>(timeout: Duration, mut f: F) -> anyhow::Result<Option<T>>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f().await? {
            return Ok(Some(v));
        }
        if tokio::time::Instant::now() >= deadline {
            return Ok(None);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Reads one ServiceDatabase, with kubectl's wording when it is missing.
pub async fn get_database(kube: &Kube, name: &str) -> anyhow::Result<crate::api::ServiceDatabase> {
    kube::Api::<crate::api::ServiceDatabase>::namespaced(kube.client.clone(), &kube.namespace)
        .get_opt(name)
        .await
        .with_context(|| format!("reading ServiceDatabase {name}"))?
        .ok_or_else(|| {
            anyhow::anyhow!(
                "ServiceDatabase {name} not found in namespace {}",
                kube.namespace
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_kubectl_takes_them() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        for bad in ["", "10", "m", "1d", "5ms", "-1s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_plugin_command_line_is_consistent() {
        use clap::CommandFactory as _;
        Plugin::command().debug_assert();
    }
}
