//! The DatabaseServer controller, a fixed pipeline:
//!
//! 1. [`dereference`] — the admin Secret, the ServiceDatabases placed here;
//! 2. [`validate`] — spec + Secret → a [`validate::Target`] (pure);
//! 3. [`probe`] — log in as the administrator, read the server's version;
//!    an external server's [`exporter`] with `external.monitoring`;
//! 4. [`status`] — `Reachable`, `Ready`, `MonitoringConfigured`, version,
//!    database count, Events.
//!
//! A reachable server is probed again every minute; an unreachable one with
//! a backoff of 2 s doubling up to a minute. Only `external` servers are
//! probed; a `managed` one is first built as a dedicated instance
//! ([`managed`]) and probed at its Service.
//! Which namespaces a server admits is decided in
//! [`crate::model::admission`].

pub mod dereference;
pub mod exporter;
pub mod managed;
pub mod probe;
pub mod status;
pub mod validate;

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, ResourceExt};
use tracing::{Instrument, info_span};

use super::Context;
use crate::api::{DatabaseServer, ServiceDatabase};
use probe::ProbeError;
use validate::{Invalid, Target};

/// Name of the controller in metrics and logs.
pub const CONTROLLER: &str = "databaseserver";

/// How often a reachable server is probed again.
pub const REPROBE: Duration = Duration::from_secs(60);
/// How often a server whose spec or Secret must change is looked at again
/// (Secrets are not watched: that would stream every Secret of the cluster).
pub const INVALID_RECHECK: Duration = Duration::from_secs(60);
/// A probe younger than this is reused: the watch event caused by our own
/// status write must not probe the server a second time.
const PROBE_REUSE: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Dereference(#[from] dereference::Error),
    #[error("invalid spec: {0}")]
    Invalid(Invalid),
    #[error("server unreachable ({}): {}", .0.reason, .0.message)]
    Unreachable(ProbeError),
    #[error(transparent)]
    Status(#[from] status::Error),
    #[error(transparent)]
    Managed(managed::Error),
    #[error("applying the exporter: {0}")]
    Exporter(crate::controller::apply::Error),
}

impl super::ReconcileError for Error {
    fn category(&self) -> &'static str {
        Error::category(self)
    }
    fn reason(&self) -> &'static str {
        Error::reason(self)
    }
    fn is_reported(&self) -> bool {
        Error::is_reported(self)
    }
}

impl Error {
    /// Stable category for metrics and Event reasons.
    pub fn category(&self) -> &'static str {
        match self {
            Error::Dereference(_) => "read",
            Error::Invalid(_) => "invalid-spec",
            Error::Unreachable(_) => "unreachable",
            Error::Status(_) => "status",
            Error::Managed(_) | Error::Exporter(_) => "apply",
        }
    }

    /// Whether the status step already told the user (condition and Event).
    fn is_reported(&self) -> bool {
        matches!(self, Error::Invalid(_) | Error::Unreachable(_))
    }

    fn reason(&self) -> &'static str {
        match self {
            Error::Dereference(_) => "ReadFailed",
            Error::Invalid(_) => "InvalidSpec",
            Error::Unreachable(_) => "Unreachable",
            Error::Status(_) => "StatusFailed",
            Error::Managed(_) | Error::Exporter(_) => "ApplyFailed",
        }
    }
}

/// Tuning of the controller; [`run`] uses the defaults.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    /// How often a reachable server is probed again; also the longest
    /// backoff for an unreachable one.
    pub reprobe: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self { reprobe: REPROBE }
    }
}

/// The controller's own state next to the shared [`Context`].
struct State {
    ctx: Arc<Context>,
    settings: Settings,
    backoff: Backoff,
    probes: Mutex<HashMap<ObjectRef<DatabaseServer>, LastProbe>>,
}

struct LastProbe {
    at: Instant,
    target: u64,
    result: Result<String, ProbeError>,
}

impl State {
    /// Probes the target, or reuses a probe of the same target made a moment ago.
    async fn probe(
        &self,
        obj: &ObjectRef<DatabaseServer>,
        target: &Target,
    ) -> Result<String, ProbeError> {
        let fingerprint = fingerprint(target);
        {
            let probes = self.probes.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(last) = probes.get(obj)
                && last.target == fingerprint
                && last.at.elapsed() < PROBE_REUSE
            {
                return last.result.clone();
            }
        }
        let result = probe::probe(target).await;
        self.probes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                obj.clone(),
                LastProbe {
                    at: Instant::now(),
                    target: fingerprint,
                    result: result.clone(),
                },
            );
        result
    }

    fn forget(&self, obj: &ObjectRef<DatabaseServer>) {
        self.probes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(obj);
        self.backoff.reset(obj);
    }
}

/// In-memory only; it tells whether host, port or login changed.
fn fingerprint(target: &Target) -> u64 {
    let mut h = DefaultHasher::new();
    (
        target.engine.to_string(),
        &target.host,
        target.port,
        &target.username,
        &target.password,
    )
        .hash(&mut h);
    h.finish()
}

/// Per-object exponential backoff, 2 s doubling up to the re-probe interval, reset by a
/// successful probe. A retry that comes early (a watch event) does not
/// advance it: the next attempt stays where it was scheduled.
#[derive(Default)]
struct Backoff(Mutex<HashMap<ObjectRef<DatabaseServer>, (u32, Instant)>>);

impl Backoff {
    fn next(&self, obj: &ObjectRef<DatabaseServer>, max: Duration) -> Duration {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let (n, due) = map.entry(obj.clone()).or_insert((0, now));
        if *due > now {
            return *due - now;
        }
        let delay = backoff_delay(*n, max);
        *n = n.saturating_add(1);
        *due = now + delay;
        delay
    }

    fn reset(&self, obj: &ObjectRef<DatabaseServer>) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).remove(obj);
    }
}

/// The delay after `failures` earlier failures in a row: 2, 4, 8 … s up to `max`.
fn backoff_delay(failures: u32, max: Duration) -> Duration {
    Duration::from_secs(2u64 << failures.min(10)).min(max)
}

async fn reconcile(server: Arc<DatabaseServer>, state: Arc<State>) -> Result<Action, Error> {
    let span = info_span!("reconcile", controller = CONTROLLER, namespace = %server.namespace().unwrap_or_default(), object = %server.name_any());
    async move {
        let _timer = state.ctx.metrics.reconcile_started(CONTROLLER);
        let obj = ObjectRef::from_obj(server.as_ref());
        if server.metadata.deletion_timestamp.is_some() {
            state.forget(&obj);
            return Ok(Action::await_change());
        }
        let result = pipeline(&server, &state, &obj).await;
        if result.is_ok() {
            state.backoff.reset(&obj);
        }
        result
    }
    .instrument(span)
    .await
}

/// dereference → validate → probe → status.
async fn pipeline(
    server: &DatabaseServer,
    state: &State,
    obj: &ObjectRef<DatabaseServer>,
) -> Result<Action, Error> {
    let ctx = &state.ctx;
    let now = &Time(k8s_openapi::jiff::Timestamp::now());
    let found = dereference::dereference(&ctx.client, ctx.service_databases.get(), server).await?;
    let managed = server.spec.managed.is_some();
    let target = if managed {
        // servicedb runs the server: build it as a dedicated instance.
        managed::ensure(&ctx.client, server, &ctx.facts).await
    } else {
        validate::validate(server, &found.admin_secret, &found.ca_secret)
            .map_err(managed::Error::Invalid)
    };
    let target = match target {
        Ok(target) => target,
        Err(managed::Error::Invalid(invalid)) => {
            let status = status::compute(
                server,
                &status::Outcome::Invalid(&invalid),
                status::Monitoring::Unchanged,
                found.databases,
                now,
            );
            status::update(&ctx.client, &ctx.recorder, server, status).await?;
            return Err(Error::Invalid(invalid));
        }
        Err(e) => return Err(Error::Managed(e)),
    };
    // The exporter does not wait for the server: it says itself whether
    // it reaches it (`pg_up`, `redis_up`).
    let monitoring = if managed {
        status::Monitoring::Unchanged
    } else {
        let condition = exporter::ensure(
            &ctx.client,
            server,
            &found.monitoring_secret,
            target.tls.mode,
            &ctx.facts,
        )
        .await
        .map_err(Error::Exporter)?;
        status::Monitoring::Observed(condition)
    };
    let probed = state.probe(obj, &target).await;
    // The server's tenants are turned away at once while it does not
    // answer, and let through again as soon as it does.
    let via = format!(
        "{}/{}",
        server.namespace().unwrap_or_default(),
        server.name_any()
    );
    match &probed {
        Ok(_) => ctx.servers.up(&via),
        Err(e) => ctx.servers.down(&via, &e.to_string()),
    }
    let status = status::compute(
        server,
        &status::Outcome::Probed(&probed),
        monitoring,
        found.databases,
        now,
    );
    status::update(&ctx.client, &ctx.recorder, server, status).await?;
    match probed {
        Ok(_) => Ok(Action::requeue(state.settings.reprobe)),
        Err(e) => Err(Error::Unreachable(e)),
    }
}

fn error_policy(server: Arc<DatabaseServer>, error: &Error, state: Arc<State>) -> Action {
    state
        .ctx
        .metrics
        .reconcile_failed(CONTROLLER, error.category());
    match error {
        // The user must change something; the DatabaseServer watch brings a
        // changed spec, the slow re-check a created Secret.
        Error::Invalid(_) => Action::requeue(INVALID_RECHECK),
        _ => Action::requeue(state.backoff.next(
            &ObjectRef::from_obj(server.as_ref()),
            state.settings.reprobe,
        )),
    }
}

/// Runs the controller until `shutdown` resolves.
pub async fn run(
    ctx: Arc<Context>,
    concurrency: u16,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    run_with(ctx, concurrency, Settings::default(), shutdown).await
}

/// [`run`] with other [`Settings`] (tests shorten the re-probe interval).
pub async fn run_with(
    ctx: Arc<Context>,
    concurrency: u16,
    settings: Settings,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let client = ctx.client.clone();
    let state = Arc::new(State {
        ctx: ctx.clone(),
        settings,
        backoff: Backoff::default(),
        probes: Mutex::default(),
    });
    Controller::new(
        Api::<DatabaseServer>::all(client.clone()),
        watcher::Config::default().any_semantic(),
    )
    // A managed server's instance becoming ready is probed at once.
    .owns(
        Api::<k8s_openapi::api::apps::v1::StatefulSet>::all(client.clone()),
        watcher::Config::default().labels(&format!(
            "{}={}",
            crate::build::LABEL_MANAGED_BY,
            crate::build::MANAGED_BY
        )),
    )
    // Keeps `status.databases` current as ServiceDatabases come and go:
    // only a creation, a deletion or a moved serverRef changes a count, and
    // a burst of them is counted once (debounced).
    .reconcile_on({
        let mut placements = Placements::default();
        watcher(
            Api::<ServiceDatabase>::all(client),
            watcher::Config::default().any_semantic(),
        )
        .default_backoff()
        .filter_map(|event| std::future::ready(event.ok()))
        .flat_map(move |event| futures::stream::iter(placements.changed(event)))
    })
    .with_config(
        ControllerConfig::default()
            .concurrency(concurrency)
            .debounce(DEBOUNCE),
    )
    .graceful_shutdown_on(shutdown)
    .run(reconcile, error_policy, state)
    .for_each(|result| {
        let ctx = ctx.clone();
        async move { super::report(CONTROLLER, result, &ctx).await }
    })
    .await;
}

/// How long a burst of triggers is gathered into one reconcile.
const DEBOUNCE: Duration = Duration::from_secs(1);

/// The server each ServiceDatabase is placed on, by UID, to tell which
/// watch events change a server's count of databases.
#[derive(Default)]
pub struct Placements(HashMap<String, Option<ObjectRef<DatabaseServer>>>);

impl Placements {
    /// The servers whose count this event may change: the old and the new
    /// server of a created, deleted or moved ServiceDatabase; none for a
    /// status or any other change.
    pub fn changed(
        &mut self,
        event: watcher::Event<ServiceDatabase>,
    ) -> Vec<ObjectRef<DatabaseServer>> {
        match event {
            watcher::Event::Apply(sdb) | watcher::Event::InitApply(sdb) => {
                let now = placed_on(&sdb);
                let before = self.0.insert(sdb.uid().unwrap_or_default(), now.clone());
                match before {
                    Some(before) if before == now => vec![],
                    Some(before) => before.into_iter().chain(now).collect(),
                    None => now.into_iter().collect(),
                }
            }
            watcher::Event::Delete(sdb) => {
                let before = self.0.remove(&sdb.uid().unwrap_or_default());
                before
                    .flatten()
                    .or_else(|| placed_on(&sdb))
                    .into_iter()
                    .collect()
            }
            watcher::Event::Init | watcher::Event::InitDone => vec![],
        }
    }
}

/// The DatabaseServer a ServiceDatabase's `spec.serverRef` names.
fn placed_on(sdb: &ServiceDatabase) -> Option<ObjectRef<DatabaseServer>> {
    let r = sdb.spec.server_ref.as_ref()?;
    let ns = r.namespace.clone().or_else(|| sdb.namespace())?;
    Some(ObjectRef::new(&r.name).within(&ns))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sdb(uid: &str, server: Option<&str>, rv: &str) -> ServiceDatabase {
        let mut spec = serde_json::json!({"engine": "Postgres", "isolation": "Database",
            "owner": {"podSelector": {"matchLabels": {"app": "a"}}}});
        if let Some(server) = server {
            spec["serverRef"] = serde_json::json!({"name": server});
        }
        serde_json::from_value(serde_json::json!({
            "apiVersion": "servicedb.dev/v1alpha1", "kind": "ServiceDatabase",
            "metadata": {"name": "a", "namespace": "shop", "uid": uid, "resourceVersion": rv},
            "spec": spec}))
        .expect("sdb")
    }

    fn server(name: &str) -> ObjectRef<DatabaseServer> {
        ObjectRef::new(name).within("shop")
    }

    #[test]
    fn only_creations_deletions_and_moves_change_a_count() {
        use watcher::Event::{Apply, Delete, InitApply};
        let mut placements = Placements::default();
        assert_eq!(
            placements.changed(Apply(sdb("u1", Some("pg"), "1"))),
            [server("pg")]
        );
        // Its own status writes and finalizer: no change of any count.
        assert!(
            placements
                .changed(Apply(sdb("u1", Some("pg"), "2")))
                .is_empty()
        );
        assert!(
            placements
                .changed(InitApply(sdb("u1", Some("pg"), "3")))
                .is_empty()
        );
        assert_eq!(
            placements.changed(Apply(sdb("u1", Some("pg2"), "4"))),
            [server("pg"), server("pg2")]
        );
        assert_eq!(
            placements.changed(Delete(sdb("u1", Some("pg2"), "5"))),
            [server("pg2")]
        );
        // A dedicated database counts nowhere.
        assert!(placements.changed(Apply(sdb("u2", None, "6"))).is_empty());
        assert!(placements.changed(Delete(sdb("u2", None, "7"))).is_empty());
    }

    #[test]
    fn backoff_doubles_from_two_seconds_up_to_a_minute() {
        let delays: Vec<u64> = (0..8)
            .map(|n| backoff_delay(n, REPROBE).as_secs())
            .collect();
        assert_eq!(delays, [2, 4, 8, 16, 32, 60, 60, 60]);
    }

    #[test]
    fn an_early_retry_does_not_advance_the_backoff() {
        let backoff = Backoff::default();
        let obj = ObjectRef::<DatabaseServer>::new("pg").within("platform");
        assert_eq!(backoff.next(&obj, REPROBE), Duration::from_secs(2));
        // A watch event reconciles again at once: the retry stays at ~2 s.
        assert!(backoff.next(&obj, REPROBE) <= Duration::from_secs(2));
        backoff.reset(&obj);
        assert_eq!(backoff.next(&obj, REPROBE), Duration::from_secs(2));
    }

    #[test]
    fn error_categories_are_stable() {
        let unreachable = Error::Unreachable(ProbeError {
            reason: "Timeout",
            message: "x".into(),
        });
        assert_eq!(unreachable.category(), "unreachable");
        assert!(unreachable.is_reported());
    }
}
