//! Controllers, one folder per kind, each a fixed pipeline:
//! dereference → validate → build → apply → status.

pub mod databaseserver;
pub mod servicedatabase;

use std::sync::Arc;

use kube::Client;
use kube::runtime::events::{Recorder, Reporter};

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
        }
    }
}

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
