//! The instance manager for Redis: write the configuration and the ACL file,
//! start `redis-server`, keep its users in step with the Secrets, and stop it
//! cleanly on a signal.
//!
//! Under `--data-dir`: `redis/` is Redis's `dir` (redis.conf, users.acl,
//! the AOF directory and dump.rdb), `run/redis.sock` the socket the instance
//! manager administers through. The app Secret carries `username`,
//! `password` and `keyPrefix`; its other keys are ignored.

mod binary;
mod config;
mod server;
mod sync;
mod users;

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use tracing::{error, info, warn};

use super::Args;
use super::postgres::Signals;
use super::postgres::postmaster::describe;
use super::secrets;
use super::status::{self, Health};
use crate::engine::redis_acl::AclUser;
use server::RedisServer;

/// Time Redis gets for its final save before it is killed; keep the pod's
/// terminationGracePeriodSeconds above this plus a few seconds.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(45);

pub(super) async fn run(args: Args) -> anyhow::Result<()> {
    if nix::unistd::geteuid().is_root() {
        bail!(
            "refusing to run as root: a compromised Redis would own the container; run the \
             container as a non-root user (securityContext.runAsUser, e.g. 999)"
        );
    }
    let settings = config::Settings {
        bind: config::bind_addresses(&args.listen_address)?,
        port: args.port,
    };
    let mut signals = Signals::new()?;
    let binary = binary::find(args.bin_dir.as_deref())?;
    info!(server = %binary.display(), "using the Redis server binary");
    let layout = config::Layout::new(&args.data_dir)?;

    // The admin is needed to administer the server at all; the service's
    // user can follow once its Secret is readable.
    let admin = secrets::read_admin(&args.admin_secret_dir)
        .await
        .context("cannot read the admin Secret")?;
    let mut acl = vec![
        AclUser::disabled_default(),
        users::admin_user(&admin).context("invalid admin Secret")?,
    ];
    match users::read_app(&args.app_secret_dir).await {
        Ok(app) => match users::service_user(&admin, &app) {
            Ok(user) => acl.push(user),
            Err(error) => {
                warn!(category = error.category(), %error, "starting without the service user")
            }
        },
        Err(error) => {
            warn!(category = error.category(), %error, "starting without the service user")
        }
    }

    let health = Arc::new(Health::default());
    let listener = status::bind(args.status_port)
        .await
        .with_context(|| format!("cannot listen on status port {}", args.status_port))?;
    let mut status_server = tokio::spawn(status::serve(listener, health.clone()));

    layout.prepare(&settings, &acl)?;
    let mut server = RedisServer::start(&binary, &layout.config)?;
    health.set_running(true);
    let sync = tokio::spawn(sync::run(
        sync::Settings {
            socket: layout.socket.clone(),
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
            let status = describe(exited.context("cannot wait for redis-server")?);
            error!(%status, "redis-server exited unexpectedly");
            return Err(anyhow!("redis-server exited unexpectedly ({status})"));
        }
        received = signals.recv() => {
            info!(signal = received, "shutting down");
            Ok(())
        }
        served = &mut status_server => {
            let reason = served
                .map_err(anyhow::Error::from)
                .and_then(|result| result.map_err(anyhow::Error::from))
                .map_or_else(|error| error.to_string(), |()| "stopped".to_owned());
            error!(%reason, "status server failed; shutting down");
            Err(anyhow!("status server failed: {reason}"))
        }
    };

    sync.abort();
    health.set_running(false);
    let status = server.shutdown(SHUTDOWN_GRACE).await?;
    if status.success() {
        info!("redis-server stopped");
    } else {
        warn!(status = %describe(status), "redis-server did not stop cleanly; the AOF will be replayed at the next start");
    }
    status_server.abort();
    outcome
}
