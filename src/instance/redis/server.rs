//! The `redis-server` process: our child, its log going straight to the
//! container's, stopped with SIGTERM, on which Redis writes a final RDB
//! snapshot, flushes the AOF and exits 0.

use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use anyhow::Context;
use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use tracing::{info, warn};

use crate::instance::postgres::postmaster::signal_on_parent_death;

pub(super) struct RedisServer {
    child: tokio::process::Child,
    pid: Pid,
}

impl RedisServer {
    pub(super) fn start(binary: &Path, config: &Path) -> anyhow::Result<RedisServer> {
        let mut command = tokio::process::Command::new(binary);
        command
            .arg(config)
            .stdin(Stdio::null())
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit());
        // Should the instance manager die without stopping it, Redis still
        // saves and exits rather than living on unsupervised.
        signal_on_parent_death(&mut command, Signal::SIGTERM);
        let child = command
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        let raw_pid = child
            .id()
            .context("redis-server exited before it could be supervised")?;
        let pid = Pid::from_raw(i32::try_from(raw_pid).context("process id out of range")?);
        info!(pid = raw_pid, config = %config.display(), "redis-server started");
        Ok(RedisServer { child, pid })
    }

    /// Waits for the server to exit. Cancel-safe.
    pub(super) async fn wait(&mut self) -> std::io::Result<ExitStatus> {
        self.child.wait().await
    }

    /// SIGTERM, then SIGKILL if Redis has not exited within `grace` (it
    /// stays up when its final save fails; the AOF still holds every write
    /// up to the last second).
    pub(super) async fn shutdown(&mut self, grace: Duration) -> anyhow::Result<ExitStatus> {
        if let Some(status) = self.child.try_wait()? {
            return Ok(status);
        }
        info!(pid = %self.pid, "stopping redis-server (SIGTERM: final save)");
        if let Err(error) = signal::kill(self.pid, Signal::SIGTERM) {
            // ESRCH: it exited in between, which wait() reports.
            warn!(pid = %self.pid, %error, "cannot signal redis-server");
        }
        if let Ok(status) = tokio::time::timeout(grace, self.child.wait()).await {
            return Ok(status?);
        }
        warn!(?grace, "redis-server did not stop in time; killing it");
        self.child.start_kill()?;
        Ok(self.child.wait().await?)
    }
}
