//! The `postgres` server process: started as our child with its output
//! going straight to the container's log, stopped with PostgreSQL's own
//! shutdown signals.

use std::os::unix::process::ExitStatusExt;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use anyhow::Context;
use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use tracing::{info, warn};

use super::binaries::Binaries;
use super::datadir::Layout;

/// After a SIGQUIT (immediate shutdown) the server exits at once; this is
/// only a bound before SIGKILL.
const IMMEDIATE_SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

pub(super) struct Postmaster {
    child: tokio::process::Child,
    pid: Pid,
}

impl Postmaster {
    pub(super) fn start(binaries: &Binaries, layout: &Layout) -> anyhow::Result<Postmaster> {
        let mut command = tokio::process::Command::new(&binaries.postgres);
        command
            .arg("-D")
            .arg(&layout.pgdata)
            .stdin(Stdio::null())
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit());
        // If the instance manager dies without stopping the server (SIGKILL,
        // a crash) the server must not outlive it holding the data
        // directory: ask the kernel for an immediate shutdown then.
        signal_on_parent_death(&mut command, Signal::SIGQUIT);
        let child = command
            .spawn()
            .with_context(|| format!("cannot start {}", binaries.postgres.display()))?;
        let raw_pid = child
            .id()
            .context("the postgres process exited before it could be supervised")?;
        let pid = Pid::from_raw(i32::try_from(raw_pid).context("process id out of range")?);
        info!(pid = raw_pid, pgdata = %layout.pgdata.display(), "postgres started");
        Ok(Postmaster { child, pid })
    }

    /// Waits for the server to exit. Cancel-safe.
    pub(super) async fn wait(&mut self) -> std::io::Result<ExitStatus> {
        self.child.wait().await
    }

    /// Fast shutdown (SIGINT: roll back open transactions, checkpoint,
    /// exit); if that takes longer than `grace`, immediate shutdown
    /// (SIGQUIT: crash recovery at the next start); finally SIGKILL.
    pub(super) async fn shutdown(&mut self, grace: Duration) -> anyhow::Result<ExitStatus> {
        info!(pid = %self.pid, "stopping postgres (fast shutdown)");
        if let Some(status) = self.child.try_wait()? {
            return Ok(status);
        }
        self.signal(Signal::SIGINT);
        if let Ok(status) = tokio::time::timeout(grace, self.child.wait()).await {
            let status = status?;
            info!(%status, "postgres stopped");
            return Ok(status);
        }
        warn!(grace = ?grace, "fast shutdown did not finish in time; immediate shutdown");
        self.signal(Signal::SIGQUIT);
        if let Ok(status) = tokio::time::timeout(IMMEDIATE_SHUTDOWN_GRACE, self.child.wait()).await
        {
            return Ok(status?);
        }
        warn!("immediate shutdown did not finish in time; killing postgres");
        self.child.start_kill()?;
        Ok(self.child.wait().await?)
    }

    fn signal(&self, signal: Signal) {
        // ESRCH: it exited in between, which wait() will report.
        if let Err(error) = signal::kill(self.pid, signal) {
            warn!(pid = %self.pid, %signal, %error, "cannot signal postgres");
        }
    }
}

/// Has the kernel send `signal` to the child started by `command` when this
/// process dies, however it dies. Shared by the engines' supervisors.
pub(in crate::instance) fn signal_on_parent_death(
    command: &mut tokio::process::Command,
    signal: Signal,
) {
    let parent = nix::unistd::getpid();
    // SAFETY: runs between fork and exec; it calls only prctl and getppid,
    // which are async-signal-safe, and allocates nothing.
    unsafe {
        command.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(signal)?;
            // The parent may have died before prctl took effect.
            if nix::unistd::getppid() != parent {
                return Err(std::io::Error::other("parent exited"));
            }
            Ok(())
        });
    }
}

/// "exit status 1", "killed by signal 9".
pub(in crate::instance) fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(signal)) => match Signal::try_from(signal) {
            Ok(signal) => format!("killed by {signal}"),
            Err(_) => format!("killed by signal {signal}"),
        },
        (None, None) => status.to_string(),
    }
}
