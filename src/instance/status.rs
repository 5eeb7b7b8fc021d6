//! The probes' HTTP server: `/healthz` (liveness: the server process is
//! running) and `/readyz` (readiness: it accepts connections and the last
//! user sync succeeded). Reasons are short and never contain secrets.

use std::sync::{Arc, Mutex, PoisonError};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use tokio::net::TcpListener;

/// Result of the last user sync.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SyncState {
    Pending,
    Succeeded,
    /// The failure's stable category.
    Failed(&'static str),
}

#[derive(Debug, Clone, Copy)]
struct Snapshot {
    running: bool,
    accepting: bool,
    sync: SyncState,
}

/// What the supervisor and the sync loop know, read by the probes.
#[derive(Debug)]
pub(crate) struct Health(Mutex<Snapshot>);

impl Default for Health {
    fn default() -> Self {
        Health(Mutex::new(Snapshot {
            running: false,
            accepting: false,
            sync: SyncState::Pending,
        }))
    }
}

impl Health {
    fn update(&self, change: impl FnOnce(&mut Snapshot)) {
        change(&mut self.0.lock().unwrap_or_else(PoisonError::into_inner));
    }

    fn get(&self) -> Snapshot {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn set_running(&self, running: bool) {
        self.update(|state| {
            state.running = running;
            if !running {
                state.accepting = false;
            }
        });
    }

    /// Returns the previous value.
    pub(crate) fn set_accepting(&self, accepting: bool) -> bool {
        let mut previous = false;
        self.update(|state| {
            previous = state.accepting;
            state.accepting = accepting;
        });
        previous
    }

    pub(crate) fn set_sync(&self, sync: SyncState) {
        self.update(|state| state.sync = sync);
    }

    pub(crate) fn liveness(&self) -> Result<(), String> {
        if self.get().running {
            Ok(())
        } else {
            Err("database server is not running".to_owned())
        }
    }

    pub(crate) fn readiness(&self) -> Result<(), String> {
        let state = self.get();
        if !state.running {
            return Err("database server is not running".to_owned());
        }
        if !state.accepting {
            return Err("database server is not accepting connections".to_owned());
        }
        match state.sync {
            SyncState::Succeeded => Ok(()),
            SyncState::Pending => Err("users are not synced yet".to_owned()),
            SyncState::Failed(category) => Err(format!("user sync failed: {category}")),
        }
    }
}

/// Binds `0.0.0.0:<port>` (done before anything slow, so that a port clash
/// fails the start at once).
pub(crate) async fn bind(port: u16) -> std::io::Result<TcpListener> {
    TcpListener::bind(("0.0.0.0", port)).await
}

pub(crate) async fn serve(listener: TcpListener, health: Arc<Health>) -> std::io::Result<()> {
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(health);
    axum::serve(listener, app).await
}

async fn healthz(State(health): State<Arc<Health>>) -> (StatusCode, String) {
    respond(health.liveness())
}

async fn readyz(State(health): State<Arc<Health>>) -> (StatusCode, String) {
    respond(health.readiness())
}

fn respond(result: Result<(), String>) -> (StatusCode, String) {
    match result {
        Ok(()) => (StatusCode::OK, "ok\n".to_owned()),
        Err(reason) => (StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_needs_a_running_accepting_synced_server() {
        let health = Health::default();
        assert!(health.liveness().is_err());
        assert!(health.readiness().is_err());
        health.set_running(true);
        assert!(health.liveness().is_ok());
        assert_eq!(
            health.readiness(),
            Err("database server is not accepting connections".to_owned())
        );
        assert!(!health.set_accepting(true));
        assert_eq!(
            health.readiness(),
            Err("users are not synced yet".to_owned())
        );
        health.set_sync(SyncState::Failed("permission_denied"));
        assert_eq!(
            health.readiness(),
            Err("user sync failed: permission_denied".to_owned())
        );
        health.set_sync(SyncState::Succeeded);
        assert_eq!(health.readiness(), Ok(()));
        health.set_running(false);
        assert!(health.readiness().is_err());
        assert!(health.liveness().is_err());
    }
}
