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

use std::future::Future;
use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use nix::sys::signal::Signal;
use tracing::warn;

use super::process::Stop;
use super::secrets::AdminCredentials;
use super::status::{Health, SyncState};
use super::{Args, InstanceManager};
use crate::engine::mongodb_users;

pub(super) struct MongoDB {
    program: PathBuf,
    settings: mongod::Settings,
    admin: AdminCredentials,
}

impl InstanceManager for MongoDB {
    const SERVER: &str = "mongod";
    const NOT_AS_ROOT: &str =
        "mongod's files would belong to root (the official image's mongodb user is 999)";
    /// mongod must not outlive the instance manager holding the data files'
    /// lock: SIGTERM is its clean shutdown.
    const ON_PARENT_DEATH: Signal = Signal::SIGTERM;
    /// Step down, checkpoint, exit 0; a lone primary's takes seconds.
    const STOP: &[Stop] = &[Stop {
        signal: Signal::SIGTERM,
        grace: Duration::from_secs(25),
        meaning: "SIGTERM",
    }];
    const AFTER_UNCLEAN_STOP: &str = "it recovers from its journal at the next start";

    async fn new(args: &Args, admin: AdminCredentials) -> anyhow::Result<MongoDB> {
        let program = mongod::find(args.bin_dir.as_deref())?;
        // The keyfile is derived from the admin password.
        mongodb_users::validate_username(&admin.username).context("admin username")?;
        mongodb_users::validate_password(&admin.password).context("admin password")?;
        let settings = mongod::Settings {
            dbpath: args.data_dir.join("mongodb"),
            keyfile: args.data_dir.join("mongodb-keyfile"),
            port: args.port,
            listen_address: args.listen_address.clone(),
        };
        Ok(MongoDB {
            program,
            settings,
            admin,
        })
    }

    async fn prepare(&self) -> anyhow::Result<()> {
        let dbpath = &self.settings.dbpath;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dbpath)
            .with_context(|| format!("cannot create {}", dbpath.display()))?;
        keyfile::write(
            &self.settings.keyfile,
            &keyfile::derive(&self.admin.password),
        )
    }

    fn command(&self) -> tokio::process::Command {
        let mut command = tokio::process::Command::new(&self.program);
        command.args(mongod::argv(&self.settings));
        command
    }

    fn sync(&self, args: &Args, health: Arc<Health>) -> impl Future<Output = ()> + Send + 'static {
        let settings = sync::Settings {
            port: args.port,
            admin_secret_dir: args.admin_secret_dir.clone(),
            app_secret_dir: args.app_secret_dir.clone(),
            service_owner: args.service_owner.clone(),
        };
        let interval = args.sync_interval;
        async move {
            match sync::Syncer::new(settings) {
                Ok(syncer) => super::sync::run(Self::SERVER, syncer, health, interval).await,
                Err(error) => {
                    warn!(%error, "cannot make a client for mongod");
                    health.set_sync(SyncState::Failed(error.category()));
                }
            }
        }
    }
}
