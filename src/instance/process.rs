//! The database server as our child: its output goes straight to the
//! container's log, the kernel signals it should we die without stopping it,
//! and it is stopped with the engine's own shutdown signals, each given its
//! time, before SIGKILL.

use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use anyhow::Context;
use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use tokio::process::{Child, Command};
use tracing::{info, warn};

/// One step of a stop: send `signal`, wait up to `grace` for the exit.
#[derive(Debug, Clone, Copy)]
pub(super) struct Stop {
    pub signal: Signal,
    pub grace: Duration,
    /// What the signal asks of the server, for the log.
    pub meaning: &'static str,
}

pub(super) struct Server {
    /// As the log names it: "postgres", "redis-server", "mongod".
    name: &'static str,
    child: Child,
    pid: Pid,
}

impl Server {
    /// Starts `command` with no stdin and our stdout and stderr; should this
    /// process die however it dies, the kernel sends the server
    /// `on_parent_death`, so that it never outlives us holding the data.
    pub(super) fn spawn(
        name: &'static str,
        mut command: Command,
        on_parent_death: Signal,
    ) -> anyhow::Result<Server> {
        command
            .stdin(Stdio::null())
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit());
        signal_on_parent_death(&mut command, on_parent_death);
        let program = PathBuf::from(command.as_std().get_program());
        let child = command
            .spawn()
            .with_context(|| format!("cannot start {}", program.display()))?;
        let id = child
            .id()
            .with_context(|| format!("{name} exited before it could be supervised"))?;
        let pid = Pid::from_raw(i32::try_from(id).context("process id out of range")?);
        info!(pid = id, program = %program.display(), "{name} started");
        Ok(Server { name, child, pid })
    }

    /// Waits for the server to exit. Cancel-safe.
    pub(super) async fn wait(&mut self) -> std::io::Result<ExitStatus> {
        self.child.wait().await
    }

    /// Takes the `steps` in turn until the server exits; SIGKILL after the
    /// last one's grace.
    pub(super) async fn stop(&mut self, steps: &[Stop]) -> std::io::Result<ExitStatus> {
        let name = self.name;
        if let Some(status) = self.child.try_wait()? {
            return Ok(status);
        }
        for (index, step) in steps.iter().enumerate() {
            if index == 0 {
                info!(pid = %self.pid, "stopping {name} ({})", step.meaning);
            } else {
                warn!(pid = %self.pid, "stopping {name} ({})", step.meaning);
            }
            // ESRCH: it exited in between, which wait() reports.
            if let Err(error) = signal::kill(self.pid, step.signal) {
                warn!(pid = %self.pid, signal = %step.signal, %error, "cannot signal {name}");
            }
            if let Ok(status) = tokio::time::timeout(step.grace, self.child.wait()).await {
                return status;
            }
            warn!(grace = ?step.grace, "{name} did not stop in time");
        }
        warn!(pid = %self.pid, "killing {name}");
        self.child.start_kill()?;
        self.child.wait().await
    }
}

/// Has the kernel send `signal` to the child started by `command` when this
/// process dies, however it dies.
fn signal_on_parent_death(command: &mut Command, signal: Signal) {
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

/// "exit status 1", "killed by SIGKILL".
pub(super) fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(signal)) => match Signal::try_from(signal) {
            Ok(signal) => format!("killed by {signal}"),
            Err(_) => format!("killed by signal {signal}"),
        },
        (None, None) => status.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TERM: Stop = Stop {
        signal: Signal::SIGTERM,
        grace: Duration::from_secs(5),
        meaning: "SIGTERM",
    };

    /// Starts `sh` with `traps` set, once they are set.
    async fn trapping(traps: &str) -> (Server, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("tempdir");
        let ready = dir.path().join("ready");
        let mut command = Command::new("/bin/sh");
        command
            .arg("-c")
            .arg(format!("{traps}; : > \"$0\"; while :; do sleep 0.05; done"))
            .arg(&ready);
        let server = Server::spawn("test", command, Signal::SIGTERM).expect("spawned");
        while !ready.exists() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        (server, dir)
    }

    #[tokio::test]
    async fn stops_with_the_first_signal_it_obeys() {
        let (mut server, _dir) = trapping("trap '' INT; trap 'exit 0' TERM").await;
        let ignored = Stop {
            signal: Signal::SIGINT,
            grace: Duration::from_millis(300),
            meaning: "SIGINT",
        };
        let status = server.stop(&[ignored, TERM]).await.expect("stopped");
        assert_eq!(describe(status), "exit status 0");
    }

    #[tokio::test]
    async fn kills_what_does_not_stop() {
        let (mut server, _dir) = trapping("trap '' TERM").await;
        let short = Stop {
            grace: Duration::from_millis(300),
            ..TERM
        };
        let status = server.stop(&[short]).await.expect("stopped");
        assert_eq!(describe(status), "killed by SIGKILL");
    }

    #[tokio::test]
    async fn reports_an_exit_and_a_missing_program() {
        let mut exits = Command::new("/bin/sh");
        exits.arg("-c").arg("exit 3");
        let mut server = Server::spawn("test", exits, Signal::SIGTERM).expect("spawned");
        let status = server.wait().await.expect("waited");
        assert_eq!(describe(status), "exit status 3");
        assert_eq!(
            describe(server.stop(&[TERM]).await.expect("already exited")),
            "exit status 3"
        );
        let missing = Server::spawn("x", Command::new("/nonexistent/x"), Signal::SIGTERM);
        let error = missing.err().expect("no such program").to_string();
        assert_eq!(error, "cannot start /nonexistent/x");
    }
}
