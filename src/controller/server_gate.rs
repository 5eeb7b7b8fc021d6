//! Keeps one shared server from stalling the operator: before a reconcile
//! talks to a `DatabaseServer` it passes this gate, which
//!
//! - lets at most `limit` reconciles work on one server at a time (a server
//!   is its `host:port`, however many DatabaseServers name it); the others
//!   wait a moment for a place ([`ServerGate::enter_within`]), then are told
//!   the server is busy and retry later, so that a stalled server holds a
//!   reconcile slot no longer than that moment;
//! - turns them away at once while the server is known not to answer (its
//!   probe failed, or a tenant's connection did), so that its tenants say so
//!   in their status instead of each waiting out a connection deadline.
//!
//! A server is known down for [`DOWN_FOR`] after the last failure, or until
//! a probe or a connection succeeds. What is known down is one
//! DatabaseServer (its `namespace/name`), not the `host:port` it names: a
//! failure may be its own settings' (a wrong CA, a wrong password), and must
//! not turn away the tenants of another DatabaseServer naming the same
//! server. The maps are under short locks, never held across an await.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// How long a failure keeps a server's tenants from trying it again, unless
/// a probe or a connection says it answers earlier.
pub const DOWN_FOR: Duration = Duration::from_secs(20);

/// Why the gate turned a reconcile away.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Closed {
    /// The server did not answer a moment ago; the message says how.
    Down(String),
    /// `limit` reconciles already work on this server.
    Busy,
}

/// The per-server limits and what is known about each server.
pub struct ServerGate {
    limit: usize,
    /// Permits by server [`key`].
    servers: Mutex<HashMap<String, Arc<Semaphore>>>,
    /// Failures by DatabaseServer `namespace/name`.
    down: Mutex<HashMap<String, (Instant, String)>>,
}

/// Held while a reconcile works on a server; dropping it lets the next in.
#[derive(Debug)]
pub struct Pass {
    _permit: OwnedSemaphorePermit,
}

/// The key of a server: host names are case-insensitive.
pub fn key(host: &str, port: impl std::fmt::Display) -> String {
    format!("{}:{port}", host.to_ascii_lowercase())
}

impl ServerGate {
    /// A gate that lets `limit` (at least one) reconciles work on a server
    /// at a time.
    pub fn new(limit: usize) -> Self {
        Self {
            limit: limit.max(1),
            servers: Mutex::default(),
            down: Mutex::default(),
        }
    }

    /// At most how many reconciles work on one server at a time.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Lets the caller work on the server `server` (a [`key`]) through the
    /// DatabaseServer `via` (`namespace/name`), or says why not.
    pub fn enter(&self, server: &str, via: &str) -> Result<Pass, Closed> {
        self.semaphore(server, via)?
            .try_acquire_owned()
            .map(|permit| Pass { _permit: permit })
            .map_err(|_| Closed::Busy)
    }

    /// As [`ServerGate::enter`], waiting up to `wait` for a place: a
    /// reconcile turned away at once would come back later and be counted
    /// (and logged) once more for nothing.
    pub async fn enter_within(
        &self,
        server: &str,
        via: &str,
        wait: Duration,
    ) -> Result<Pass, Closed> {
        let semaphore = self.semaphore(server, via)?;
        match tokio::time::timeout(wait, semaphore.acquire_owned()).await {
            Ok(Ok(permit)) => Ok(Pass { _permit: permit }),
            _ => Err(Closed::Busy),
        }
    }

    fn semaphore(&self, server: &str, via: &str) -> Result<Arc<Semaphore>, Closed> {
        {
            let mut down = lock(&self.down);
            if let Some((since, message)) = down.get(via) {
                if since.elapsed() < DOWN_FOR {
                    return Err(Closed::Down(message.clone()));
                }
                down.remove(via);
            }
        }
        Ok(lock(&self.servers)
            .entry(server.to_owned())
            .or_insert_with(|| Arc::new(Semaphore::new(self.limit)))
            .clone())
    }

    /// The DatabaseServer `via` did not answer; `message` (no secret in it)
    /// says how.
    pub fn down(&self, via: &str, message: &str) {
        lock(&self.down).insert(via.to_owned(), (Instant::now(), message.to_owned()));
    }

    /// The DatabaseServer `via` answered.
    pub fn up(&self, via: &str) {
        lock(&self.down).remove(via);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_most_limit_reconciles_work_on_one_server() {
        let gate = ServerGate::new(2);
        let a = gate.enter("pg:5432", "db/one").expect("first");
        let _b = gate.enter("pg:5432", "db/one").expect("second");
        assert_eq!(gate.enter("pg:5432", "db/one").unwrap_err(), Closed::Busy);
        // Two DatabaseServers naming one server share its limit.
        assert_eq!(gate.enter("pg:5432", "db/two").unwrap_err(), Closed::Busy);
        // Another server is not held back.
        let _c = gate
            .enter("other:5432", "db/other")
            .expect("another server");
        drop(a);
        assert!(
            gate.enter("pg:5432", "db/two").is_ok(),
            "a pass dropped lets the next in"
        );
    }

    #[tokio::test]
    async fn a_reconcile_waits_a_moment_for_a_place() {
        let gate = Arc::new(ServerGate::new(1));
        let held = gate.enter("pg:5432", "db/one").expect("first");
        let wait = Duration::from_millis(50);
        assert_eq!(
            gate.enter_within("pg:5432", "db/one", wait)
                .await
                .unwrap_err(),
            Closed::Busy,
            "still held after the wait"
        );
        let waiting = {
            let gate = gate.clone();
            tokio::spawn(async move {
                gate.enter_within("pg:5432", "db/one", Duration::from_secs(5))
                    .await
                    .is_ok()
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(held);
        assert!(waiting.await.expect("task"), "the place freed is taken");
        gate.down("db/one", "no answer");
        assert!(matches!(
            gate.enter_within("pg:5432", "db/one", wait).await,
            Err(Closed::Down(_))
        ));
    }

    #[test]
    fn a_server_known_down_turns_its_tenants_away_until_it_answers() {
        let gate = ServerGate::new(2);
        gate.down("db/one", "no answer within 5s");
        assert_eq!(
            gate.enter("pg:5432", "db/one").unwrap_err(),
            Closed::Down("no answer within 5s".into())
        );
        assert!(gate.enter("other:5432", "db/other").is_ok());
        // Another DatabaseServer naming the same server, with settings of
        // its own (a CA, a password), is not turned away by that failure.
        assert!(gate.enter("pg:5432", "db/two").is_ok());
        gate.up("db/one");
        assert!(gate.enter("pg:5432", "db/one").is_ok());
    }

    #[test]
    fn keys_ignore_the_case_of_host_names() {
        assert_eq!(key("PG.example.com", 5432), key("pg.example.com", 5432));
    }
}
