//! The instance manager for PostgreSQL: prepare the data directory, start
//! `postgres`, keep users in sync, and stop it cleanly on a signal.

mod binaries;
mod config;
pub(super) mod datadir;
pub(super) mod postmaster;
mod sync;

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use tokio::signal::unix::{Signal, SignalKind, signal};
use tracing::{error, info};

use super::Args;
use super::secrets;
use super::status::{self, Health};
use crate::engine::postgres_users;
use postmaster::Postmaster;

/// Time allowed for a fast shutdown before an immediate one; keep the pod's
/// terminationGracePeriodSeconds above this plus a few seconds.
const FAST_SHUTDOWN_GRACE: Duration = Duration::from_secs(20);

pub(super) async fn run(args: Args) -> anyhow::Result<()> {
    if nix::unistd::geteuid().is_root() {
        bail!(
            "refusing to run as root: PostgreSQL will not run as root; run the container as \
             a non-root user (securityContext.runAsUser, e.g. 999)"
        );
    }
    if args.listen_address.chars().any(char::is_control) {
        bail!("--listen-address must not contain control characters");
    }
    let mut signals = Signals::new()?;
    let binaries = binaries::find(args.bin_dir.as_deref())?;
    info!(postgres = %binaries.postgres.display(), "using PostgreSQL binaries");
    let layout = datadir::Layout::new(&args.data_dir);

    // The admin credentials are needed by initdb; without them nothing can start.
    let admin = secrets::read_admin(&args.admin_secret_dir)
        .await
        .context("cannot read the admin Secret")?;
    postgres_users::validate_role_name(&admin.username).context("admin username")?;
    postgres_users::validate_password(&admin.password).context("admin password")?;

    let health = Arc::new(Health::default());
    let listener = status::bind(args.status_port)
        .await
        .with_context(|| format!("cannot listen on status port {}", args.status_port))?;
    let mut status_server = tokio::spawn(status::serve(listener, health.clone()));

    let settings = config::Settings {
        listen_addresses: args.listen_address.clone(),
        port: args.port,
        socket_dir: layout.socket_dir.clone(),
        shared_buffers_mib: config::shared_buffers_mib(config::memory_limit()),
    };
    tokio::select! {
        prepared = datadir::prepare(&binaries, &layout, &admin, &settings) => prepared?,
        received = signals.recv() => {
            info!(signal = received, "stopped before the server was started");
            return Ok(());
        }
    }

    let mut server = Postmaster::start(&binaries, &layout)?;
    health.set_running(true);
    let sync = tokio::spawn(sync::run(
        sync::Settings {
            socket_dir: layout.socket_dir.clone(),
            port: args.port,
            admin_secret_dir: args.admin_secret_dir.clone(),
            app_secret_dir: args.app_secret_dir.clone(),
            interval: args.sync_interval,
        },
        health.clone(),
    ));

    let outcome = tokio::select! {
        exited = server.wait() => {
            health.set_running(false);
            sync.abort();
            let status = exited.context("cannot wait for postgres")?;
            let status = postmaster::describe(status);
            error!(%status, "postgres exited unexpectedly");
            return Err(anyhow!("postgres exited unexpectedly ({status})"));
        }
        received = signals.recv() => {
            info!(signal = received, "shutting down");
            Ok(())
        }
        served = &mut status_server => {
            let reason = match served {
                Ok(Ok(())) => "stopped".to_owned(),
                Ok(Err(error)) => error.to_string(),
                Err(error) => error.to_string(),
            };
            error!(%reason, "status server failed; shutting down");
            Err(anyhow!("status server failed: {reason}"))
        }
    };

    sync.abort();
    health.set_running(false);
    let status = server.shutdown(FAST_SHUTDOWN_GRACE).await?;
    if !status.success() {
        info!(status = %postmaster::describe(status), "postgres did not stop cleanly");
    }
    if layout.postmaster_pid().exists() {
        info!("postmaster.pid is still present: the next start will recover");
    }
    status_server.abort();
    outcome
}

/// SIGTERM (the kubelet) and SIGINT (a terminal) both mean "stop".
pub(super) struct Signals {
    terminate: Signal,
    interrupt: Signal,
}

impl Signals {
    pub(super) fn new() -> anyhow::Result<Signals> {
        Ok(Signals {
            terminate: signal(SignalKind::terminate()).context("cannot handle SIGTERM")?,
            interrupt: signal(SignalKind::interrupt()).context("cannot handle SIGINT")?,
        })
    }

    pub(super) async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.terminate.recv() => "SIGTERM",
            _ = self.interrupt.recv() => "SIGINT",
        }
    }
}
