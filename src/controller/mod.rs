//! Controllers, one folder per kind, each a fixed pipeline:
//! dereference → validate → build → apply → status. No controller imports
//! another (tests/architecture.rs): what two of them share lives here —
//! [`apply`] (children), [`dereference`], [`cache`], [`monitoring`]
//! objects, [`jobs`], [`sessions`] and the [`server_gate`].

pub mod apply;
pub mod cache;
pub mod databasebackup;
pub mod databaseclass;
pub mod databaseserver;
pub mod dereference;
pub mod jobs;
pub mod monitoring;
pub mod own_writes;
pub mod server_gate;
pub mod servicedatabase;
pub mod sessions;

use std::sync::Arc;

use kube::Client;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::Store;

use crate::build::OperatorFacts;
use crate::operator::Metrics;

/// What every reconcile gets: the client, facts about the operator, metrics
/// and the Event recorder. Nothing inside a reconcile reads the environment.
pub struct Context {
    pub client: Client,
    pub facts: OperatorFacts,
    pub metrics: Arc<Metrics>,
    pub recorder: Recorder,
    pub backoff: servicedatabase::Backoff,
    /// The ServiceDatabase controller's cache, once it started: which
    /// ServiceDatabase holds a name on a shared server is decided from it.
    pub service_databases: std::sync::OnceLock<Store<crate::api::ServiceDatabase>>,
    /// How many reconciles may work on one shared server at a time, and
    /// which servers do not answer (see [`server_gate`]).
    pub servers: server_gate::ServerGate,
    /// The ServiceDatabase controller's stores and its own last writes.
    pub cache: cache::Cache,
    /// What the last provisioning of each shared database was given.
    pub provisioned: servicedatabase::trigger::Provisioned,
    /// Administrator sessions to the shared servers, kept between passes.
    pub sessions: sessions::Sessions,
}

impl Context {
    pub fn new(
        client: Client,
        facts: OperatorFacts,
        metrics: Arc<Metrics>,
        instance: Option<String>,
    ) -> Self {
        let reporter = Reporter {
            controller: "servicedb".into(),
            instance,
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            facts,
            metrics,
            backoff: Default::default(),
            service_databases: std::sync::OnceLock::new(),
            servers: server_gate::ServerGate::new(DEFAULT_PER_SERVER),
            cache: Default::default(),
            provisioned: Default::default(),
            sessions: Default::default(),
        }
    }

    /// Lets at most `limit` reconciles work on one shared server at a time.
    pub fn with_per_server_limit(mut self, limit: usize) -> Self {
        self.servers = server_gate::ServerGate::new(limit);
        self
    }
}

/// Reconciles that may work on one shared server at a time unless the
/// operator says otherwise: half of the e2e operator's slots.
const DEFAULT_PER_SERVER: usize = 2;

/// Writes `status` with server-side apply when it differs from `previous`;
/// an unchanged status costs no request. Returns whether it wrote.
pub async fn write_status<K, S>(
    client: &Client,
    obj: &K,
    previous: &S,
    status: &S,
) -> Result<bool, kube::Error>
where
    K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned,
    S: serde::Serialize + PartialEq,
{
    use kube::ResourceExt;
    use kube::api::{Patch, PatchParams};
    if previous == status {
        return Ok(false);
    }
    let api: kube::Api<K> =
        kube::Api::namespaced(client.clone(), &obj.namespace().unwrap_or_default());
    let patch = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    api.patch_status(
        &obj.name_any(),
        &PatchParams::apply(crate::build::FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(true)
}

/// Records an Event. Best effort: failing to record one never fails a reconcile.
pub async fn publish(
    recorder: &Recorder,
    event: &kube::runtime::events::Event,
    reference: &k8s_openapi::api::core::v1::ObjectReference,
) {
    if let Err(e) = recorder.publish(event, reference).await {
        tracing::warn!(error = %e, "recording an Event failed");
    }
}

/// What a controller's error tells the shared outcome reporting.
pub trait ReconcileError: std::error::Error + Send + Sync + 'static {
    /// Stable category for metrics and logs.
    fn category(&self) -> &'static str;
    /// Event reason when the failure is reported as an Event.
    fn reason(&self) -> &'static str;
    /// Whether the status step already told the user (condition and Event):
    /// then the failure is only logged.
    fn is_reported(&self) -> bool;
}

/// Logs each outcome of a controller's stream and turns failures the status
/// did not report into Warning Events on the object.
pub async fn report<K, E>(
    controller: &'static str,
    result: Result<
        (
            kube::runtime::reflector::ObjectRef<K>,
            kube::runtime::controller::Action,
        ),
        kube::runtime::controller::Error<E, kube::runtime::watcher::Error>,
    >,
    ctx: &Context,
) where
    K: kube::Resource,
    E: ReconcileError,
{
    use kube::runtime::controller::Error as C;
    match result {
        Ok((obj, _)) => {
            tracing::debug!(controller, namespace = obj.namespace.as_deref().unwrap_or(""), object = %obj.name, "reconciled")
        }
        Err(C::ReconcilerFailed(error, obj)) => {
            let (category, namespace) = (error.category(), obj.namespace.as_deref().unwrap_or(""));
            if error.is_reported() {
                tracing::info!(controller, namespace, object = %obj.name, category, error = %error, "reported in the status");
                return;
            }
            tracing::warn!(controller, namespace, object = %obj.name, category, error = %error, "reconcile failed");
            let event = kube::runtime::events::Event {
                type_: kube::runtime::events::EventType::Warning,
                reason: error.reason().into(),
                // Events hold at most 1 kB of note.
                note: Some(error.to_string().chars().take(1000).collect()),
                action: "Reconcile".into(),
                secondary: None,
            };
            publish(&ctx.recorder, &event, &(*obj).into()).await;
        }
        // A watched Job that maps to no object yet (a scheduled backup Job
        // before it is recorded) is expected.
        Err(C::ObjectNotFound(obj)) => {
            tracing::debug!(controller, object = %obj, "triggered for an object that does not exist")
        }
        Err(e) => tracing::warn!(controller, error = %e, "controller error"),
    }
}
