//! The loop every engine's user sync runs in: one tick every interval (every
//! 200 ms while the server is still starting), its outcome reported to the
//! probes, and each distinct failure logged once rather than every interval.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tracing::{debug, info, warn};

use super::status::{Health, SyncState};

/// How often to look while the server is starting, so that readiness
/// follows soon after it answers.
const STARTUP_POLL: Duration = Duration::from_millis(200);

/// A successful tick.
pub(super) enum Progress {
    /// The server answers and its users are in step with the Secrets.
    Ready,
    /// Still starting (electing, or a bootstrap step to observe): not ready.
    Starting,
}

/// What a failed tick learnt about the server.
pub(super) enum Server<'a> {
    /// It does not answer (yet), for this reason: it is not accepting.
    Silent(&'a dyn fmt::Display),
    /// It answered, only not to our liking: it is accepting.
    Answered,
    /// Nothing new (the failure was ours, such as an unreadable Secret).
    Unknown,
}

/// A failed tick, as the probes and the log show it.
pub(super) trait SyncFailure: fmt::Display {
    /// Stable category: the readiness reason and the log's `category`.
    fn category(&self) -> &'static str;
    fn server(&self) -> Server<'_>;
}

/// One engine's way of bringing its server's users in step with the Secrets.
pub(super) trait UserSync: Send {
    type Error: SyncFailure + Send;

    /// Re-reads the Secrets, looks at the server, applies what changed.
    fn tick(
        &mut self,
        health: &Health,
    ) -> impl Future<Output = Result<Progress, Self::Error>> + Send;
}

/// Runs `syncer` until the task is aborted. `server` names the server in
/// the log.
pub(super) async fn run(
    server: &'static str,
    mut syncer: impl UserSync,
    health: Arc<Health>,
    interval: Duration,
) {
    let mut last_error: Option<String> = None;
    loop {
        let pause = match syncer.tick(&health).await {
            Ok(Progress::Ready) => {
                let recovered = last_error.take().is_some();
                if !health.set_accepting(true) || recovered {
                    info!("{server} answers and its users are in step");
                }
                health.set_sync(SyncState::Succeeded);
                interval
            }
            Ok(Progress::Starting) => {
                health.set_sync(SyncState::Pending);
                STARTUP_POLL
            }
            Err(error) => match error.server() {
                Server::Silent(reason) => {
                    if health.set_accepting(false) {
                        warn!(%reason, "{server} stopped answering");
                    } else {
                        debug!(%reason, "{server} does not answer yet");
                    }
                    STARTUP_POLL
                }
                answered => {
                    if let Server::Answered = answered {
                        health.set_accepting(true);
                    }
                    health.set_sync(SyncState::Failed(error.category()));
                    let message = error.to_string();
                    if last_error.as_ref() != Some(&message) {
                        warn!(category = error.category(), error = %message, "user sync failed");
                        last_error = Some(message);
                    }
                    interval
                }
            },
        };
        tokio::time::sleep(pause.min(interval)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    enum Fake {
        Silent,
        Refused,
        Ours,
    }

    impl fmt::Display for Fake {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "{self:?}")
        }
    }

    impl SyncFailure for Fake {
        fn category(&self) -> &'static str {
            match self {
                Fake::Silent => "not_accepting",
                Fake::Refused => "admin_rejected",
                Fake::Ours => "secret_missing",
            }
        }

        fn server(&self) -> Server<'_> {
            match self {
                Fake::Silent => Server::Silent(self),
                Fake::Refused => Server::Answered,
                Fake::Ours => Server::Unknown,
            }
        }
    }

    /// Plays `script`, noting what the probes said before each tick;
    /// `done` when it has played it all.
    struct Scripted {
        script: std::vec::IntoIter<Result<Progress, Fake>>,
        seen: Vec<Result<(), String>>,
        done: Option<tokio::sync::oneshot::Sender<Vec<Result<(), String>>>>,
    }

    impl UserSync for Scripted {
        type Error = Fake;

        async fn tick(&mut self, health: &Health) -> Result<Progress, Fake> {
            self.seen.push(health.readiness());
            match self.script.next() {
                Some(outcome) => outcome,
                None => {
                    if let Some(done) = self.done.take() {
                        done.send(std::mem::take(&mut self.seen)).expect("send");
                    }
                    std::future::pending().await
                }
            }
        }
    }

    #[tokio::test]
    async fn outcomes_reach_the_probes() {
        let health = Arc::new(Health::default());
        health.set_running(true);
        let (done, seen) = tokio::sync::oneshot::channel();
        let syncer = Scripted {
            script: vec![
                Err(Fake::Silent),
                Err(Fake::Refused),
                Ok(Progress::Ready),
                Err(Fake::Ours),
                Ok(Progress::Starting),
                Err(Fake::Silent),
                Ok(Progress::Ready),
            ]
            .into_iter(),
            seen: Vec::new(),
            done: Some(done),
        };
        let interval = Duration::from_millis(1);
        let seen = tokio::select! {
            () = run("server", syncer, health, interval) => unreachable!("runs until aborted"),
            seen = seen => seen.expect("played"),
        };
        let not_accepting = "database server is not accepting connections";
        let expected: Vec<Result<(), String>> = vec![
            Err(not_accepting.into()),
            Err(not_accepting.into()),
            Err("user sync failed: admin_rejected".into()),
            Ok(()),
            Err("user sync failed: secret_missing".into()),
            Err("users are not synced yet".into()),
            Err(not_accepting.into()),
            Ok(()),
        ];
        assert_eq!(seen, expected);
    }
}
