//! The instance manager for PostgreSQL: prepare the data directory, start
//! `postgres`, keep users in sync, and stop it cleanly on a signal.

mod binaries;
mod config;
mod datadir;
mod sync;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use nix::sys::signal::Signal;
use tracing::info;

use super::process::Stop;
use super::secrets::AdminCredentials;
use super::status::Health;
use super::{Args, InstanceManager};
use crate::engine::postgres_users;
use binaries::Binaries;
use datadir::Layout;

pub(super) struct Postgres {
    binaries: Binaries,
    layout: Layout,
    admin: AdminCredentials,
    settings: config::Settings,
}

impl InstanceManager for Postgres {
    const SERVER: &str = "postgres";
    const NOT_AS_ROOT: &str = "PostgreSQL will not run as root";
    /// Immediate shutdown: the server must not outlive us holding the data
    /// directory.
    const ON_PARENT_DEATH: Signal = Signal::SIGQUIT;
    /// Fast shutdown (roll back open transactions, checkpoint, exit); if that
    /// takes too long, immediate shutdown (crash recovery at the next start),
    /// which exits at once: its grace only bounds it before SIGKILL.
    const STOP: &[Stop] = &[
        Stop {
            signal: Signal::SIGINT,
            grace: Duration::from_secs(20),
            meaning: "fast shutdown",
        },
        Stop {
            signal: Signal::SIGQUIT,
            grace: Duration::from_secs(5),
            meaning: "immediate shutdown",
        },
    ];
    const AFTER_UNCLEAN_STOP: &str = "the next start will recover";

    async fn new(args: &Args, admin: AdminCredentials) -> anyhow::Result<Postgres> {
        let binaries = binaries::find(args.bin_dir.as_deref())?;
        info!(postgres = %binaries.postgres.display(), "using PostgreSQL binaries");
        postgres_users::validate_role_name(&admin.username).context("admin username")?;
        postgres_users::validate_password(&admin.password).context("admin password")?;
        let layout = Layout::new(&args.data_dir);
        let settings = config::Settings {
            listen_addresses: args.listen_address.clone(),
            port: args.port,
            socket_dir: layout.socket_dir.clone(),
            shared_buffers_mib: config::shared_buffers_mib(config::memory_limit()),
            parameters: crate::instance::secrets::read_parameters(&args.admin_secret_dir)
                .await?
                .unwrap_or_default(),
        };
        Ok(Postgres {
            binaries,
            layout,
            admin,
            settings,
        })
    }

    async fn prepare(&self) -> anyhow::Result<()> {
        datadir::prepare(&self.binaries, &self.layout, &self.admin, &self.settings).await
    }

    fn command(&self) -> tokio::process::Command {
        let mut command = tokio::process::Command::new(&self.binaries.postgres);
        command.arg("-D").arg(&self.layout.pgdata);
        command
    }

    fn sync(&self, args: &Args, health: Arc<Health>) -> impl Future<Output = ()> + Send + 'static {
        let syncer = sync::Syncer::new(sync::Settings {
            socket_dir: self.layout.socket_dir.clone(),
            port: args.port,
            admin_secret_dir: args.admin_secret_dir.clone(),
            app_secret_dir: args.app_secret_dir.clone(),
            service_owner: args.service_owner.clone(),
            pgdata: self.layout.pgdata.clone(),
        });
        super::sync::run(Self::SERVER, syncer, health, args.sync_interval)
    }
}
