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

/// Whether this replica may still act as the leader: until `renew_deadline`
/// after the start of its last successful renewal, on the monotonic clock
/// (which keeps counting while the process is stopped). Standbys wait a
/// longer `lease_duration` before they take over.
#[derive(Clone, Debug)]
pub struct Fence(Arc<std::sync::Mutex<Instant>>);

impl Fence {
    fn until(until: Instant) -> Self {
        Self(Arc::new(std::sync::Mutex::new(until)))
    }

    fn extend(&self, until: Instant) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = until;
    }

    fn close(&self) {
        self.extend(Instant::now());
    }

    /// Whether the Lease is surely still ours.
    pub fn holds(&self) -> bool {
        Instant::now() < *self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A layer for [`kube::client::ClientBuilder::with_layer`]: requests
    /// fail without being sent once the fence no longer holds.
    pub fn layer(&self) -> FenceLayer {
        FenceLayer(self.clone())
    }
}

/// See [`Fence::layer`].
#[derive(Clone, Debug)]
pub struct FenceLayer(Fence);

impl<S> tower::Layer<S> for FenceLayer {
    type Service = Fenced<S>;

    fn layer(&self, inner: S) -> Fenced<S> {
        Fenced {
            inner,
            fence: self.0.clone(),
        }
    }
}

/// A client service that sends a request only while the [`Fence`] holds.
#[derive(Clone, Debug)]
pub struct Fenced<S> {
    inner: S,
    fence: Fence,
}

/// The error of a request the fence kept back.
#[derive(Debug, thiserror::Error)]
#[error("not sent: this replica may no longer hold the leader Lease")]
pub struct FencedOff;

impl<S, R> tower::Service<R> for Fenced<S>
where
    S: tower::Service<R>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
{
    type Response = S::Response;
    type Error = Box<dyn std::error::Error + Send + Sync>;
    type Future =
        std::pin::Pin<Box<dyn Future<Output = Result<S::Response, Self::Error>> + Send + 'static>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: R) -> Self::Future {
        if !self.fence.holds() {
            return Box::pin(std::future::ready(Err(FencedOff.into())));
        }
        let response = self.inner.call(request);
        Box::pin(async move { response.await.map_err(Into::into) })
    }
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

/// The outcome of one try.
#[derive(Debug, PartialEq, Eq)]
enum Attempt {
    /// We hold the Lease now.
    Leading,
    /// Someone else does; `holder` names them for the logs.
    Standby { holder: String },
    /// Another write got in between our read and our write (409); the next
    /// try reads the new state.
    Raced,
}

/// One candidate's view of the Lease, as in client-go's `LeaderElector`.
struct Elector {
    api: Api<Lease>,
    cfg: LeaseConfig,
    /// The Lease spec last read, and when it was first seen in that state.
    observed: Option<(LeaseSpec, Instant)>,
}

impl Elector {
    fn new(client: Client, cfg: LeaseConfig) -> Self {
        Self {
            api: Api::namespaced(client, &cfg.namespace),
            cfg,
            observed: None,
        }
    }

    /// Reads the Lease and, if it is free, ours or expired, writes ourselves
    /// in as holder. A lost race is [`Attempt::Raced`], not an error.
    async fn try_acquire_or_renew(&mut self) -> Result<Attempt, LeaderError> {
        let now = Timestamp::now();
        let Some(mut lease) = self
            .api
            .get_opt(&self.cfg.name)
            .await
            .map_err(|e| self.api_error("read", e))?
        else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.cfg.name.clone()),
                    namespace: Some(self.cfg.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(claim(&LeaseSpec::default(), &self.cfg, now)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(created) => {
                    self.observe(created.spec.unwrap_or_default());
                    Ok(Attempt::Leading)
                }
                Err(kube::Error::Api(status)) if status.is_already_exists() => Ok(Attempt::Raced),
                Err(e) => Err(self.api_error("create", e)),
            };
        };

        let spec = lease.spec.take().unwrap_or_default();
        let unchanged_for = self.observe(spec.clone());
        if let Some(holder) = holder_blocking(&spec, &self.cfg, unchanged_for) {
            return Ok(Attempt::Standby { holder });
        }

        lease.spec = Some(claim(&spec, &self.cfg, now));
        // `lease.metadata.resourceVersion` is the one just read: if anyone
        // wrote in between, this fails with 409 instead of overwriting them.
        match self
            .api
            .replace(&self.cfg.name, &PostParams::default(), &lease)
            .await
        {
            Ok(updated) => {
                self.observe(updated.spec.unwrap_or_default());
                Ok(Attempt::Leading)
            }
            Err(kube::Error::Api(status)) if status.is_conflict() => Ok(Attempt::Raced),
            Err(e) => Err(self.api_error("update", e)),
        }
    }

    /// Records `spec` and returns how long it has been seen unchanged.
    fn observe(&mut self, spec: LeaseSpec) -> Duration {
        match &self.observed {
            Some((seen, since)) if *seen == spec => since.elapsed(),
            _ => {
                self.observed = Some((spec, Instant::now()));
                Duration::ZERO
            }
        }
    }

    fn api_error(&self, action: &'static str, source: kube::Error) -> LeaderError {
        LeaderError::Api {
            action,
            lease: format!("{}/{}", self.cfg.namespace, self.cfg.name),
            source: Box::new(source),
        }
    }
}

/// The holder that keeps us from taking the Lease, if any: someone other
/// than us, whose claim we have not seen go stale for its lease duration.
fn holder_blocking(spec: &LeaseSpec, cfg: &LeaseConfig, unchanged_for: Duration) -> Option<String> {
    let holder = spec.holder_identity.as_deref().filter(|h| !h.is_empty())?;
    if holder == cfg.identity {
        return None;
    }
    // The holder's own promise counts; ours is the fallback.
    let lease_duration = spec
        .lease_duration_seconds
        .and_then(|s| u64::try_from(s).ok())
        .filter(|s| *s > 0)
        .map_or(cfg.lease_duration, Duration::from_secs);
    (unchanged_for < lease_duration).then(|| holder.to_owned())
}

/// `current` with us as holder, renewed at `now`; a change of holder sets
/// `acquireTime` and counts a transition.
fn claim(current: &LeaseSpec, cfg: &LeaseConfig, now: Timestamp) -> LeaseSpec {
    let already_ours = current.holder_identity.as_deref() == Some(cfg.identity.as_str());
    let transitions = current.lease_transitions.unwrap_or(0);
    LeaseSpec {
        holder_identity: Some(cfg.identity.clone()),
        lease_duration_seconds: Some(cfg.lease_duration_seconds()),
        acquire_time: if already_ours {
            current.acquire_time.clone()
        } else {
            Some(MicroTime(now))
        },
        renew_time: Some(MicroTime(now)),
        lease_transitions: Some(match (already_ours, &current.holder_identity) {
            (true, _) => transitions,
            // A brand-new Lease starts at 0, as in client-go.
            (false, None) if current.renew_time.is_none() => 0,
            (false, _) => transitions.saturating_add(1),
        }),
        ..current.clone()
    }
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
