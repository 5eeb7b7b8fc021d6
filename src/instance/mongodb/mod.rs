//! The instance manager for MongoDB: a one-member replica set (so that
//! transactions and change streams work) with access control on.
//!
//! write the keyfile → start `mongod` → (every interval: initiate the
//! replica set, create root, keep root's and the service's passwords in
//! step) → wait for a signal (SIGTERM to mongod, exit 0) or mongod's death
//! (exit non-zero, so that the kubelet restarts the container).
//!
//! Contract with the pod, beyond the shared one (see the parent module):
//! `<data-dir>/mongodb` is mongod's `--dbpath`, `<data-dir>/mongodb-keyfile`
//! the replica set's keyfile; clients connect with `directConnection=true`.

mod bootstrap;
mod keyfile;
mod mongod;
mod sync;

use std::os::unix::fs::DirBuilderExt;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use tracing::{error, info, warn};

use super::Args;
use super::postgres::Signals;
use super::postgres::postmaster::describe;
use super::secrets;
use super::status::{self, Health};
use crate::engine::mongodb_users;
use mongod::Mongod;

/// mongod's clean shutdown of a lone primary takes seconds; keep the pod's
/// terminationGracePeriodSeconds above this.
const STOP_GRACE: Duration = Duration::from_secs(25);

pub(super) async fn run(args: Args) -> anyhow::Result<()> {
    if nix::unistd::geteuid().is_root() {
        bail!(
            "refusing to run as root: mongod's files would belong to root; run the container \
             as a non-root user (securityContext.runAsUser 999, the official image's mongodb)"
        );
    }
    if args.listen_address.chars().any(char::is_control) {
        bail!("--listen-address must not contain control characters");
    }
    let mut signals = Signals::new()?;
    let program = mongod::find(args.bin_dir.as_deref())?;

    // The keyfile is derived from the admin password: no start without it.
    let admin = secrets::read_admin(&args.admin_secret_dir)
        .await
        .context("cannot read the admin Secret")?;
    mongodb_users::validate_username(&admin.username).context("admin username")?;
    mongodb_users::validate_password(&admin.password).context("admin password")?;

    let health = Arc::new(Health::default());
    let listener = status::bind(args.status_port)
        .await
        .with_context(|| format!("cannot listen on status port {}", args.status_port))?;
    let mut status_server = tokio::spawn(status::serve(listener, health.clone()));

    let settings = mongod::Settings {
        dbpath: args.data_dir.join("mongodb"),
        keyfile: args.data_dir.join("mongodb-keyfile"),
        port: args.port,
        listen_address: args.listen_address.clone(),
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&settings.dbpath)
        .with_context(|| format!("cannot create {}", settings.dbpath.display()))?;
    keyfile::write(&settings.keyfile, &keyfile::derive(&admin.password))?;

    let mut server = Mongod::start(&program, mongod::argv(&settings))?;
    health.set_running(true);
    let sync = tokio::spawn(sync::run(
        sync::Settings {
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
            let status = describe(exited.context("cannot wait for mongod")?);
            error!(%status, "mongod exited unexpectedly");
            return Err(anyhow!("mongod exited unexpectedly ({status})"));
        }
        received = signals.recv() => {
            info!(signal = received, "shutting down");
            Ok(())
        }
        served = &mut status_server => {
            let failure = match served {
                Ok(Ok(())) => anyhow!("the status server stopped"),
                Ok(Err(error)) => anyhow!(error).context("the status server failed"),
                Err(error) => anyhow!(error).context("the status server task died"),
            };
            error!(error = format!("{failure:#}"), "shutting down");
            Err(failure)
        }
    };

    sync.abort();
    health.set_running(false);
    let status = server
        .stop(STOP_GRACE)
        .await
        .context("cannot stop mongod")?;
    if status.success() {
        info!("mongod stopped");
    } else {
        let status = describe(status);
        warn!(%status, "mongod did not stop cleanly; it recovers from its journal at the next start");
    }
    status_server.abort();
    outcome
}
