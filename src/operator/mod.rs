//! What every controller of the operator shares at run time: logs
//! ([`telemetry`]), Prometheus metrics ([`metrics`]), the health, readiness and
//! metrics HTTP server ([`http`]) and leader election ([`leader`]).
//!
//! `main` wires them in this order:
//!
//! 1. [`telemetry::init`] with the `--log-format` flag;
//! 2. one `Arc<`[`Metrics`]`>` and an [`HttpState`] around it, then
//!    [`http::serve`] in a task, so `/healthz` answers while we wait;
//! 3. the controllers' watches; once they have synced,
//!    [`HttpState::set_ready`]`(true)` — standbys are ready too;
//! 4. if leader election is on, [`leader::acquire`] before the controllers
//!    start reconciling, on an API client fenced by
//!    [`LeaderGuard::fence`], then run them until shutdown or
//!    [`LeaderGuard::lost`] (exit non-zero at once then, with no drain, so
//!    the pod restarts as a standby);
//! 5. on graceful shutdown, stop the controllers, then
//!    [`LeaderGuard::release`], then cancel the HTTP server.

pub mod database_metrics;
pub mod http;
pub mod leader;
pub mod metrics;
pub mod telemetry;

pub use http::{HttpState, serve};
pub use leader::{LeaderError, LeaderGuard, LeaseConfig, acquire};
pub use metrics::{Metrics, ReconcileTimer};
pub use telemetry::{LogFormat, init};
