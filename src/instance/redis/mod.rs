//! The instance manager for Redis: write the configuration and the ACL file,
//! start `redis-server`, keep its users in step with the Secrets, and stop it
//! cleanly on a signal.
//!
//! Under `--data-dir`: `redis/` is Redis's `dir` (redis.conf, users.acl,
//! the AOF directory and dump.rdb), `run/redis.sock` the socket the instance
//! manager administers through. The app Secret carries `username`,
//! `password` and `keyPrefix`; its other keys are ignored. With
//! `--redis-scripting` the service user may run Lua scripts and functions
//! (see `engine::redis_acl`).

mod binary;
mod config;
mod sync;
mod users;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use nix::sys::signal::Signal;
use tracing::{info, warn};

use super::process::Stop;
use super::secrets::AdminCredentials;
use super::status::Health;
use super::{Args, InstanceManager};
use crate::engine::redis_acl::{AclUser, Scripting};

pub(super) struct Redis {
    binary: PathBuf,
    layout: config::Layout,
    settings: config::Settings,
    /// The ACL file's users.
    acl: Vec<AclUser>,
    /// Whether the service user may run Lua (`--redis-scripting`).
    scripting: Scripting,
}

impl InstanceManager for Redis {
    const SERVER: &str = "redis-server";
    const NOT_AS_ROOT: &str = "a compromised Redis would own the container";
    /// Should the instance manager die without stopping it, Redis still
    /// saves and exits rather than living on unsupervised.
    const ON_PARENT_DEATH: Signal = Signal::SIGTERM;
    /// Redis writes a final RDB snapshot, flushes the AOF and exits 0. It
    /// stays up when that save fails; the AOF still holds every write up to
    /// the last second.
    const STOP: &[Stop] = &[Stop {
        signal: Signal::SIGTERM,
        grace: Duration::from_secs(45),
        meaning: "SIGTERM: final save",
    }];
    const AFTER_UNCLEAN_STOP: &str = "the AOF will be replayed at the next start";

    async fn new(args: &Args, admin: AdminCredentials) -> anyhow::Result<Redis> {
        let settings = config::Settings {
            bind: config::bind_addresses(&args.listen_address)?,
            port: args.port,
        };
        let binary = binary::find(args.bin_dir.as_deref())?;
        info!(server = %binary.display(), "using the Redis server binary");
        let layout = config::Layout::new(&args.data_dir)?;
        let scripting = if args.redis_scripting {
            Scripting::Allowed
        } else {
            Scripting::Refused
        };
        info!(?scripting, "Lua scripts and functions for the service user");

        // The admin is needed to administer the server at all; the service's
        // user can follow once its Secret is readable.
        let mut acl = vec![
            AclUser::disabled_default(),
            users::admin_user(&admin).context("invalid admin Secret")?,
        ];
        match users::read_app(&args.app_secret_dir).await {
            Ok(app) => match users::service_user(&admin, &app, scripting) {
                Ok(user) => acl.push(user),
                Err(error) => {
                    warn!(category = error.category(), %error, "starting without the service user")
                }
            },
            Err(error) => {
                warn!(category = error.category(), %error, "starting without the service user")
            }
        }
        Ok(Redis {
            binary,
            layout,
            settings,
            acl,
            scripting,
        })
    }

    async fn prepare(&self) -> anyhow::Result<()> {
        self.layout.prepare(&self.settings, &self.acl)
    }

    fn command(&self) -> tokio::process::Command {
        let mut command = tokio::process::Command::new(&self.binary);
        command.arg(&self.layout.config);
        command
    }

    fn sync(&self, args: &Args, health: Arc<Health>) -> impl Future<Output = ()> + Send + 'static {
        let syncer = sync::Syncer::new(sync::Settings {
            socket: self.layout.socket.clone(),
            admin_secret_dir: args.admin_secret_dir.clone(),
            app_secret_dir: args.app_secret_dir.clone(),
            scripting: self.scripting,
        });
        super::sync::run(Self::SERVER, syncer, health, args.sync_interval)
    }
}
