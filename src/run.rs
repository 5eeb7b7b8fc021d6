//! `servicedb operator`: wires logs, metrics, the HTTP server, leader
//! election and the controllers, and shuts them down in order.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use kube::api::ListParams;
use kube::{Api, Client};
use tokio_util::sync::CancellationToken;

use crate::api::ServiceDatabase;
use crate::build::OperatorFacts;
use crate::controller::{Context, databasebackup, databaseclass, databaseserver, servicedatabase};
use crate::operator::{HttpState, LeaseConfig, LogFormat, Metrics};

#[derive(clap::Args, Debug, Clone)]
pub struct OperatorArgs {
    /// Address of /healthz, /readyz and /metrics.
    #[arg(long, env = "SERVICEDB_HTTP_ADDR", default_value = "0.0.0.0:8080")]
    pub http_addr: SocketAddr,
    /// Log format.
    #[arg(long, env = "SERVICEDB_LOG_FORMAT", value_enum, default_value = "json")]
    pub log_format: LogFormat,
    /// Reconciles that may run at once.
    #[arg(long, env = "SERVICEDB_CONCURRENCY", default_value_t = 8)]
    pub concurrency: u16,
    /// Reconciles that may work on one shared DatabaseServer at a time
    /// (default: half of --concurrency), so that a server that does not
    /// answer cannot hold every reconcile slot.
    #[arg(long, env = "SERVICEDB_PER_SERVER_CONCURRENCY")]
    pub per_server_concurrency: Option<u16>,
    /// Elect a leader on a Lease so that several replicas are safe.
    #[arg(long, env = "SERVICEDB_LEADER_ELECT", default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_elect: bool,
    /// Namespace the operator runs in (Lease, NetworkPolicy peer).
    #[arg(long, env = "POD_NAMESPACE", default_value = "servicedb-system")]
    pub namespace: String,
    /// This replica's identity for leader election.
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// Image of the operator; database pods copy the binary from it.
    #[arg(
        long,
        env = "SERVICEDB_IMAGE",
        default_value = "ghcr.io/servicedb/servicedb:0.1.0"
    )]
    pub image: String,
    /// Path of the binary inside that image.
    #[arg(
        long,
        env = "SERVICEDB_BINARY_PATH",
        default_value = "/usr/local/bin/servicedb"
    )]
    pub binary_path: String,
    /// How often a reachable DatabaseServer is probed again (seconds); also
    /// the longest backoff for an unreachable one.
    #[arg(long, env = "SERVICEDB_SERVER_REPROBE_SECONDS", default_value_t = 60)]
    pub server_reprobe_seconds: u64,
    /// Labels of the operator's pods, `k=v,k=v`, admitted by NetworkPolicies.
    #[arg(
        long,
        env = "SERVICEDB_POD_LABELS",
        default_value = "app.kubernetes.io/name=servicedb"
    )]
    pub pod_labels: String,
    /// Where the `runbook_url` of generated alerts points (sections of
    /// docs/runbooks.md are appended as `#anchor`).
    #[arg(
        long,
        env = "SERVICEDB_RUNBOOK_URL",
        default_value = crate::build::monitoring::DEFAULT_RUNBOOK_URL
    )]
    pub runbook_url: String,
    /// Labels of the namespaces whose Prometheus may scrape the exporters
    /// of monitored databases, `k=v,k=v`.
    #[arg(
        long,
        env = "SERVICEDB_SCRAPER_NAMESPACE_LABELS",
        default_value = "kubernetes.io/metadata.name=monitoring"
    )]
    pub scraper_namespace_labels: String,
    /// Labels of the Prometheus pods, in those namespaces, that may scrape
    /// them, `k=v,k=v`.
    #[arg(
        long,
        env = "SERVICEDB_SCRAPER_POD_LABELS",
        default_value = "app.kubernetes.io/name=prometheus"
    )]
    pub scraper_pod_labels: String,
}

/// How long in-flight reconciles may run on after a shutdown request.
const DRAIN: std::time::Duration = std::time::Duration::from_secs(10);

pub async fn run(args: OperatorArgs) -> anyhow::Result<()> {
    crate::operator::init(args.log_format)?;
    // Listen for SIGTERM before anything else: a pod stopped while it starts
    // must still shut down cleanly.
    let shutdown = CancellationToken::new();
    let terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("listening for SIGTERM")?;
    tokio::spawn(signal_on(terminate, shutdown.clone()));
    let config = kube::Config::infer()
        .await
        .context("connecting to the Kubernetes API (KUBECONFIG or in-cluster config)")?;
    let client = Client::try_from(config.clone())
        .context("connecting to the Kubernetes API (KUBECONFIG or in-cluster config)")?;
    let metrics = Arc::new(Metrics::default());
    let http = HttpState::new(metrics.clone());
    let stop_http = CancellationToken::new();
    let server = tokio::spawn(crate::operator::serve(
        args.http_addr,
        http.clone(),
        stop_http.clone(),
    ));

    Api::<ServiceDatabase>::all(client.clone())
        .list(&ListParams::default().limit(1))
        .await
        .context("the servicedb CRDs are not served; install them with `servicedb crd | kubectl apply -f -`")?;
    http.set_ready(true);

    // The pod name is the identity; two replicas must never share one, so
    // the host name (a pod's name) and the pid both go in when it is missing.
    let identity = args.identity.clone().unwrap_or_else(|| {
        let host = nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| "servicedb".into());
        format!("{host}-{}", std::process::id())
    });
    let leader = if args.leader_elect {
        let cfg = LeaseConfig::new(&args.namespace, "servicedb-operator", &identity);
        tracing::info!(identity, namespace = %args.namespace, "waiting for leadership");
        tokio::select! {
            guard = crate::operator::acquire(client.clone(), cfg, metrics.clone()) => Some(guard?),
            _ = shutdown.cancelled() => None,
        }
    } else {
        metrics.set_leader(true);
        None
    };
    if shutdown.is_cancelled() {
        stop_http.cancel();
        return Ok(());
    }

    let facts = OperatorFacts {
        image: args.image.clone(),
        binary_path: args.binary_path.clone(),
        namespace: args.namespace.clone(),
        pod_labels: parse_labels("--pod-labels", &args.pod_labels)?,
        runbook_url: args.runbook_url.clone(),
        scraper: scraper(&args)?,
    };
    // The controllers' requests go out only while the Lease is surely ours
    // (see leader::Fence); the Lease itself is renewed on the plain client.
    let client = match &leader {
        Some(guard) => kube::client::ClientBuilder::try_from(config)
            .context("building the Kubernetes API client")?
            .with_layer(&guard.fence().layer())
            .build(),
        None => client,
    };
    let per_server = args
        .per_server_concurrency
        .unwrap_or(args.concurrency / 2)
        .max(1);
    let ctx = Arc::new(
        Context::new(client, facts, metrics, Some(identity))
            .with_per_server_limit(usize::from(per_server)),
    );
    let stop = shutdown.clone();
    if let Some(lost) = leader.as_ref().map(|g| g.lost()) {
        // As client-go's leader election: a replica that lost the Lease
        // exits at once, with no drain. A reconcile still running could
        // otherwise write to a server or the API while the new leader
        // works on the same objects.
        tokio::spawn(async move {
            lost.await;
            tracing::error!("leadership lost; exiting at once so that the new leader works alone");
            std::process::exit(1);
        });
    }
    tracing::info!("controllers starting");
    let controllers = futures::future::join4(
        databaseclass::run(ctx.clone(), stop.clone().cancelled_owned()),
        servicedatabase::run(
            ctx.clone(),
            args.concurrency,
            stop.clone().cancelled_owned(),
        ),
        databasebackup::run_controller(
            ctx.clone(),
            args.concurrency,
            stop.clone().cancelled_owned(),
        ),
        databaseserver::run_with(
            ctx,
            args.concurrency,
            databaseserver::Settings {
                reprobe: std::time::Duration::from_secs(args.server_reprobe_seconds.max(1)),
            },
            stop.cancelled_owned(),
        ),
    );
    let controllers = async move {
        controllers.await;
    };
    // In-flight reconciles get DRAIN to finish after a shutdown request; a
    // stop must never wait out the pod's whole grace period (a shutdown that
    // lands while the watches are still starting can otherwise stall).
    let deadline = async {
        shutdown.cancelled().await;
        tokio::time::sleep(DRAIN).await;
    };
    tokio::select! {
        () = controllers => tracing::info!("controllers stopped"),
        () = deadline => tracing::warn!(?DRAIN, "controllers did not stop in time; exiting anyway"),
    }

    if let Some(guard) = leader
        && let Err(e) = guard.release().await
    {
        tracing::warn!(error = %e, "releasing the Lease failed; a standby takes over when it expires");
    }
    stop_http.cancel();
    let _ = server.await;
    Ok(())
}

async fn signal_on(mut terminate: tokio::signal::unix::Signal, token: CancellationToken) {
    tokio::select! {
        _ = terminate.recv() => {},
        _ = tokio::signal::ctrl_c() => {},
    }
    tracing::info!("shutdown requested");
    token.cancel();
}

/// The Prometheus pods NetworkPolicies admit to exporters.
fn scraper(args: &OperatorArgs) -> anyhow::Result<crate::build::Scraper> {
    Ok(crate::build::Scraper {
        namespace_labels: parse_labels(
            "--scraper-namespace-labels",
            &args.scraper_namespace_labels,
        )?,
        pod_labels: parse_labels("--scraper-pod-labels", &args.scraper_pod_labels)?,
    })
}

fn parse_labels(flag: &str, s: &str) -> anyhow::Result<BTreeMap<String, String>> {
    s.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|pair| {
            pair.split_once('=')
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                .with_context(|| format!("{flag}: {pair:?} is not key=value"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: OperatorArgs,
    }

    fn args(flags: &[&str]) -> OperatorArgs {
        Cli::try_parse_from(std::iter::once("operator").chain(flags.iter().copied()))
            .expect("flags")
            .args
    }

    #[test]
    fn the_scraper_is_prometheus_in_monitoring_unless_the_flags_say_otherwise() {
        assert_eq!(
            scraper(&args(&[])).unwrap(),
            crate::build::Scraper::default()
        );
        let custom = scraper(&args(&[
            "--scraper-namespace-labels=team=observability",
            "--scraper-pod-labels=app=vmagent,tier=scrape",
        ]))
        .unwrap();
        assert_eq!(
            custom.namespace_labels,
            BTreeMap::from([("team".to_owned(), "observability".to_owned())])
        );
        assert_eq!(custom.pod_labels.len(), 2);
        let empty = scraper(&args(&["--scraper-namespace-labels="])).unwrap();
        assert!(empty.namespace_labels.is_empty(), "every namespace");
        let error = scraper(&args(&["--scraper-pod-labels=prometheus"])).unwrap_err();
        assert!(
            error.to_string().contains("--scraper-pod-labels"),
            "{error}"
        );
    }
}
