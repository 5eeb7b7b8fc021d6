//! Leader election on a `coordination.k8s.io/v1` Lease, after client-go's
//! `leaderelection` package (kube-runtime 5 has none of its own).
//!
//! Every replica runs [`acquire`], which returns once this replica holds the
//! Lease. The returned [`LeaderGuard`] renews it every `retry_period` in the
//! background. The rules:
//!
//! - **Take** the Lease when it is missing (create it), has no holder (it was
//!   released), or its holder has not renewed it for `leaseDurationSeconds`.
//!   "Not renewed" is judged like client-go does: by how long *this* replica
//!   has seen the Lease unchanged on its own monotonic clock, not by comparing
//!   the holder's `renewTime` with our wall clock — so clock skew between
//!   nodes cannot make two replicas lead. The cost: a fresh replica waits one
//!   lease duration before it takes over a stale Lease.
//! - **Write** only with a `replace` that carries the `resourceVersion` just
//!   read; when two candidates race, the API server rejects the second write
//!   with 409 Conflict, so at most one wins.
//! - **Give up** when no renewal succeeded for `renew_deadline`, or when the
//!   Lease names another holder. [`LeaderGuard::lost`] then resolves and the
//!   operator must stop acting and exit. Because `renew_deadline <
//!   lease_duration`, the old leader has stopped before anyone may take over.
//! - **Fence** every API request: the controllers' client carries
//!   [`LeaderGuard::fence`], which refuses to send a request once
//!   `renew_deadline` has passed since the last successful renewal began. A
//!   replica that was frozen (SIGSTOP, a paused VM) and wakes after a
//!   standby took over therefore sends nothing, even in the instant before
//!   its renewal loop notices the loss and the process exits.
//! - **Release** on graceful shutdown ([`LeaderGuard::release`]) clears
//!   `holderIdentity`, so a standby takes over at its next poll instead of
//!   waiting a lease duration.

mod elector;
mod fence;
use elector::*;
use fence::*;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, PostParams};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::metrics::Metrics;

/// Where the Lease lives, who we are, and the timings (client-go's defaults).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseConfig {
    /// Namespace of the Lease; usually the operator's own namespace.
    pub namespace: String,
    /// Name of the Lease, shared by all replicas.
    pub name: String,
    /// This replica's identity, unique among candidates: the pod name.
    pub identity: String,
    /// How long a holder's claim lasts without renewal; what standbys wait.
    pub lease_duration: Duration,
    /// How long the leader keeps retrying a failing renewal before it gives
    /// up. Must be shorter than `lease_duration`.
    pub renew_deadline: Duration,
    /// Pause between attempts to acquire or renew. Must be shorter than
    /// `renew_deadline`.
    pub retry_period: Duration,
}

impl LeaseConfig {
    /// A config with client-go's timings: 15 s lease, 10 s renew deadline,
    /// 2 s retry period.
    pub fn new(
        namespace: impl Into<String>,
        name: impl Into<String>,
        identity: impl Into<String>,
    ) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }

    fn validate(&self) -> Result<(), LeaderError> {
        let invalid = |reason| Err(LeaderError::InvalidConfig(reason));
        if self.namespace.is_empty() || self.name.is_empty() {
            return invalid("the Lease namespace and name must not be empty");
        }
        if self.identity.is_empty() {
            return invalid("the identity must not be empty");
        }
        if self.lease_duration < Duration::from_secs(1) {
            return invalid("lease_duration must be at least 1s (the Lease counts whole seconds)");
        }
        if self.renew_deadline >= self.lease_duration {
            return invalid("renew_deadline must be shorter than lease_duration");
        }
        if self.retry_period.is_zero() || self.retry_period >= self.renew_deadline {
            return invalid("retry_period must be positive and shorter than renew_deadline");
        }
        Ok(())
    }

    /// `leaseDurationSeconds`, rounded up so a holder never promises less
    /// than it means.
    fn lease_duration_seconds(&self) -> i32 {
        let secs =
            self.lease_duration.as_secs() + u64::from(self.lease_duration.subsec_nanos() > 0);
        i32::try_from(secs).unwrap_or(i32::MAX)
    }
}

/// Why leader election could not proceed.
#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    /// The [`LeaseConfig`] is unusable; fix the flags.
    #[error("invalid leader election config: {0}")]
    InvalidConfig(&'static str),
    /// A request to the API server failed.
    #[error("failed to {action} Lease {lease}")]
    Api {
        action: &'static str,
        /// `namespace/name`.
        lease: String,
        #[source]
        source: Box<kube::Error>,
    },
}

impl LeaderError {
    /// A stable, bounded label for metrics and Events.
    pub fn category(&self) -> &'static str {
        match self {
            Self::InvalidConfig(_) => "invalid_config",
            Self::Api { .. } => "lease_api",
        }
    }
}

/// Waits until this replica holds the Lease named by `cfg`, then keeps it.
///
/// Retries API errors forever (logging them), since RBAC or the API server
/// may be fixed while we wait; returns an error only for an invalid config.
/// Dropping the future while it waits is safe — wrap it in `select!` with
/// the shutdown signal. Sets the `servicedb_leader` gauge.
pub async fn acquire(
    client: Client,
    cfg: LeaseConfig,
    metrics: Arc<Metrics>,
) -> Result<LeaderGuard, LeaderError> {
    cfg.validate()?;
    let mut elector = Elector::new(client, cfg);
    let mut last_holder: Option<String> = None;
    loop {
        let started = Instant::now();
        match tokio::time::timeout(elector.cfg.renew_deadline, elector.try_acquire_or_renew()).await
        {
            Ok(Ok(Attempt::Leading)) => {
                return Ok(LeaderGuard::start(elector, started, metrics));
            }
            Ok(Ok(Attempt::Standby { holder })) => {
                if last_holder.as_ref() != Some(&holder) {
                    tracing::info!(%holder, lease = %elector.cfg.name, "waiting for the leader lease");
                    last_holder = Some(holder);
                }
            }
            Ok(Ok(Attempt::Raced)) => {
                tracing::debug!(lease = %elector.cfg.name, "another candidate wrote the lease first");
            }
            Ok(Err(error)) => {
                tracing::warn!(
                    error = &error as &dyn std::error::Error,
                    "leader election attempt failed"
                )
            }
            Err(_) => tracing::warn!("leader election attempt timed out"),
        }
        // Jitter as client-go does (factor 1.2), so standbys do not poll in
        // lock step.
        let jitter = elector
            .cfg
            .retry_period
            .mul_f64(rand::random_range(0.0..1.2));
        tokio::time::sleep(elector.cfg.retry_period + jitter).await;
    }
}

/// Proof that this replica leads; renews the Lease until dropped or
/// released.
///
/// Dropping it stops renewing without releasing: the Lease then expires and a
/// standby takes over after one lease duration. Prefer [`Self::release`] on
/// graceful shutdown.
#[derive(Debug)]
pub struct LeaderGuard {
    api: Api<Lease>,
    cfg: LeaseConfig,
    metrics: Arc<Metrics>,
    lost: CancellationToken,
    stop: CancellationToken,
    fence: Fence,
    renewer: Option<JoinHandle<()>>,
}

impl LeaderGuard {
    fn start(elector: Elector, renewed_at: Instant, metrics: Arc<Metrics>) -> Self {
        tracing::info!(identity = %elector.cfg.identity, lease = %elector.cfg.name, "acquired the leader lease");
        metrics.set_leader(true);
        let lost = CancellationToken::new();
        let stop = CancellationToken::new();
        let fence = Fence::until(renewed_at + elector.cfg.renew_deadline);
        let api = elector.api.clone();
        let cfg = elector.cfg.clone();
        let renewer = tokio::spawn(renew_loop(
            elector,
            renewed_at,
            metrics.clone(),
            Signals {
                lost: lost.clone(),
                stop: stop.clone(),
                fence: fence.clone(),
            },
        ));
        Self {
            api,
            cfg,
            metrics,
            lost,
            stop,
            fence,
            renewer: Some(renewer),
        }
    }

    /// The fence of this leadership, for the controllers' API client.
    pub fn fence(&self) -> Fence {
        self.fence.clone()
    }

    /// This replica's identity, as written to `holderIdentity`.
    pub fn identity(&self) -> &str {
        &self.cfg.identity
    }

    /// Resolves when leadership is lost: renewal failed for `renew_deadline`,
    /// or another candidate holds the Lease. The operator must then stop
    /// reconciling at once and exit, so that it restarts as a standby.
    pub fn lost(&self) -> impl Future<Output = ()> + Send + 'static {
        self.lost.clone().cancelled_owned()
    }

    /// Whether [`Self::lost`] has resolved.
    pub fn is_lost(&self) -> bool {
        self.lost.is_cancelled()
    }

    /// Stops renewing and clears `holderIdentity` so that a standby takes
    /// over at its next poll. Call it after the controllers have stopped.
    /// Does nothing to a Lease that another candidate already holds. An
    /// error (API unreachable) needs no handling beyond a log line: the
    /// Lease then expires as if we had crashed.
    pub async fn release(mut self) -> Result<(), LeaderError> {
        self.fence.close();
        self.stop.cancel();
        if let Some(renewer) = self.renewer.take() {
            // An error only says the task panicked; it renews no more either way.
            let _ = renewer.await;
        }
        self.metrics.set_leader(false);

        // A renewal sent just before the stop may land between our read and
        // our write, failing it with 409; read again and retry.
        for _ in 0..3 {
            let Some(mut lease) = self
                .api
                .get_opt(&self.cfg.name)
                .await
                .map_err(|e| self.api_error("read", e))?
            else {
                return Ok(());
            };
            let mut spec = lease.spec.take().unwrap_or_default();
            if spec.holder_identity.as_deref() != Some(self.cfg.identity.as_str()) {
                return Ok(());
            }
            let now = MicroTime(Timestamp::now());
            spec.holder_identity = None;
            spec.lease_duration_seconds = Some(1);
            spec.acquire_time = Some(now.clone());
            spec.renew_time = Some(now);
            lease.spec = Some(spec);
            match self
                .api
                .replace(&self.cfg.name, &PostParams::default(), &lease)
                .await
            {
                Ok(_) => {
                    tracing::info!(lease = %self.cfg.name, "released the leader lease");
                    return Ok(());
                }
                Err(kube::Error::Api(status)) if status.is_conflict() => continue,
                Err(e) => return Err(self.api_error("release", e)),
            }
        }
        tracing::warn!(lease = %self.cfg.name, "gave up releasing the leader lease after repeated conflicts; it will expire");
        Ok(())
    }

    fn api_error(&self, action: &'static str, source: kube::Error) -> LeaderError {
        LeaderError::Api {
            action,
            lease: format!("{}/{}", self.cfg.namespace, self.cfg.name),
            source: Box::new(source),
        }
    }
}

impl Drop for LeaderGuard {
    fn drop(&mut self) {
        if let Some(renewer) = self.renewer.take() {
            renewer.abort();
            self.metrics.set_leader(false);
        }
    }
}

/// Renews every `retry_period` until `stop`, or until leadership is lost,
/// which it signals through `lost`.
/// What the renewal loop is told and tells.
struct Signals {
    lost: CancellationToken,
    stop: CancellationToken,
    fence: Fence,
}

async fn renew_loop(
    mut elector: Elector,
    mut renewed_at: Instant,
    metrics: Arc<Metrics>,
    signals: Signals,
) {
    let Signals { lost, stop, fence } = signals;
    let cfg = elector.cfg.clone();
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(cfg.retry_period) => {}
        }
        let deadline = renewed_at + cfg.renew_deadline;
        // Taken before the request: the server writes renewTime after this,
        // so our deadline runs out before a standby's lease duration does.
        let attempt_started = Instant::now();
        let attempt = tokio::select! {
            () = stop.cancelled() => return,
            attempt = tokio::time::timeout_at(deadline, elector.try_acquire_or_renew()) => attempt,
        };
        match attempt {
            Ok(Ok(Attempt::Leading)) => {
                renewed_at = attempt_started;
                fence.extend(renewed_at + cfg.renew_deadline);
                continue;
            }
            Ok(Ok(Attempt::Standby { holder })) => {
                tracing::error!(%holder, lease = %cfg.name, "the leader lease was taken by another candidate");
                break;
            }
            Ok(Ok(Attempt::Raced)) => {
                tracing::warn!(lease = %cfg.name, "the leader lease changed while renewing it; retrying");
            }
            Ok(Err(error)) => {
                tracing::warn!(
                    error = &error as &dyn std::error::Error,
                    "renewing the leader lease failed"
                )
            }
            Err(_) => tracing::warn!("renewing the leader lease timed out"),
        }
        if Instant::now() >= deadline {
            tracing::error!(lease = %cfg.name, renew_deadline = ?cfg.renew_deadline, "could not renew the leader lease in time");
            break;
        }
    }
    fence.close();
    metrics.set_leader(false);
    lost.cancel();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(identity: &str) -> LeaseConfig {
        LeaseConfig::new("ns", "servicedb-leader", identity)
    }

    fn held_by(holder: &str, seconds: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.to_owned()),
            lease_duration_seconds: Some(seconds),
            lease_transitions: Some(4),
            acquire_time: Some(MicroTime(Timestamp::UNIX_EPOCH)),
            renew_time: Some(MicroTime(Timestamp::UNIX_EPOCH)),
            ..LeaseSpec::default()
        }
    }

    #[tokio::test]
    async fn the_fence_holds_until_its_deadline_or_until_closed() {
        use tower::{Layer, Service};
        let fence = Fence::until(Instant::now() + Duration::from_secs(60));
        assert!(fence.holds());
        /// Answers n + 1.
        struct Next;
        impl Service<u32> for Next {
            type Response = u32;
            type Error = std::convert::Infallible;
            type Future = std::future::Ready<Result<u32, Self::Error>>;
            fn poll_ready(
                &mut self,
                _: &mut std::task::Context<'_>,
            ) -> std::task::Poll<Result<(), Self::Error>> {
                std::task::Poll::Ready(Ok(()))
            }
            fn call(&mut self, n: u32) -> Self::Future {
                std::future::ready(Ok(n + 1))
            }
        }
        let mut service = fence.layer().layer(Next);
        assert_eq!(service.call(1).await.expect("sent while it holds"), 2);
        fence.close();
        assert!(!fence.holds());
        let refused = service.call(1).await.expect_err("kept back once closed");
        assert!(refused.to_string().contains("leader Lease"), "{refused}");
        fence.extend(Instant::now() - Duration::from_millis(1));
        assert!(!fence.holds(), "a deadline in the past does not hold");
    }

    #[test]
    fn defaults_are_client_go_timings() {
        let cfg = cfg("a");
        assert_eq!(cfg.lease_duration, Duration::from_secs(15));
        assert_eq!(cfg.renew_deadline, Duration::from_secs(10));
        assert_eq!(cfg.retry_period, Duration::from_secs(2));
        assert!(cfg.validate().is_ok());
        assert_eq!(cfg.lease_duration_seconds(), 15);
    }

    #[test]
    fn timings_that_allow_two_leaders_are_rejected() {
        let mut bad = cfg("a");
        bad.renew_deadline = bad.lease_duration;
        assert!(matches!(bad.validate(), Err(LeaderError::InvalidConfig(_))));

        let mut bad = cfg("a");
        bad.retry_period = bad.renew_deadline;
        assert!(matches!(bad.validate(), Err(LeaderError::InvalidConfig(_))));

        let bad = cfg("");
        assert_eq!(
            bad.validate().map_err(|e| e.category()),
            Err("invalid_config")
        );
    }

    #[test]
    fn a_live_holder_blocks_until_unchanged_for_its_lease_duration() {
        let spec = held_by("b", 15);
        let me = cfg("a");
        assert_eq!(
            holder_blocking(&spec, &me, Duration::from_secs(14)).as_deref(),
            Some("b")
        );
        assert_eq!(holder_blocking(&spec, &me, Duration::from_secs(15)), None);
    }

    #[test]
    fn the_holders_lease_duration_wins_over_ours() {
        let spec = held_by("b", 60);
        assert_eq!(
            holder_blocking(&spec, &cfg("a"), Duration::from_secs(30)).as_deref(),
            Some("b")
        );
    }

    #[test]
    fn a_released_or_own_lease_does_not_block() {
        let mut spec = held_by("b", 15);
        spec.holder_identity = None;
        assert_eq!(holder_blocking(&spec, &cfg("a"), Duration::ZERO), None);
        spec.holder_identity = Some(String::new());
        assert_eq!(holder_blocking(&spec, &cfg("a"), Duration::ZERO), None);
        assert_eq!(
            holder_blocking(&held_by("a", 15), &cfg("a"), Duration::ZERO),
            None
        );
    }

    #[test]
    fn taking_over_counts_a_transition_and_sets_acquire_time() {
        let now = Timestamp::from_second(1_000).unwrap();
        let spec = claim(&held_by("b", 15), &cfg("a"), now);
        assert_eq!(spec.holder_identity.as_deref(), Some("a"));
        assert_eq!(spec.lease_transitions, Some(5));
        assert_eq!(spec.acquire_time, Some(MicroTime(now)));
        assert_eq!(spec.renew_time, Some(MicroTime(now)));
        assert_eq!(spec.lease_duration_seconds, Some(15));
    }

    #[test]
    fn renewing_keeps_acquire_time_and_transitions() {
        let now = Timestamp::from_second(1_000).unwrap();
        let spec = claim(&held_by("a", 15), &cfg("a"), now);
        assert_eq!(spec.lease_transitions, Some(4));
        assert_eq!(spec.acquire_time, Some(MicroTime(Timestamp::UNIX_EPOCH)));
        assert_eq!(spec.renew_time, Some(MicroTime(now)));
    }

    #[test]
    fn a_new_lease_starts_with_no_transitions() {
        let now = Timestamp::from_second(1_000).unwrap();
        let spec = claim(&LeaseSpec::default(), &cfg("a"), now);
        assert_eq!(spec.lease_transitions, Some(0));
        assert_eq!(spec.holder_identity.as_deref(), Some("a"));
    }

    #[test]
    fn fractional_lease_durations_round_up() {
        let mut c = cfg("a");
        c.lease_duration = Duration::from_millis(2_500);
        assert_eq!(c.lease_duration_seconds(), 3);
    }
}
