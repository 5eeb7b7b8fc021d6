//! Part of step 4 (async): the Prometheus Operator objects of a monitored
//! ServiceDatabase ([`crate::build::monitoring`]), applied only when the
//! cluster serves their kinds (API discovery of `monitoring.coreos.com/v1`
//! on every reconcile, so installing the Prometheus Operator later is picked
//! up). Without them nothing fails: the condition `MonitoringConfigured`
//! says the objects were skipped. Objects that are no longer built
//! (monitoring switched off) are removed, found by label, as the other
//! children are.

use std::collections::BTreeSet;

use kube::api::{DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::{Api, Client, ResourceExt};

use super::apply::{Error, Owner, belongs_to_another, controller_uid};
use crate::api::conditions::Observed;
use crate::build::monitoring::{
    GROUP, Monitoring, POD_MONITOR, PROMETHEUS_RULE, VERSION, api_resource,
};
use crate::build::{FIELD_MANAGER, LABEL_COMPONENT, LABEL_INSTANCE, LABEL_MANAGED_BY, MANAGED_BY};

/// Condition type: the Prometheus Operator objects of a monitored database
/// are applied (`True`), or were skipped because the cluster does not serve
/// their kinds (`False`, reason `PrometheusOperatorAbsent`). Absent when
/// monitoring is off.
pub const MONITORING_CONFIGURED: &str = "MonitoringConfigured";

/// The kinds servicedb makes, in the order they are pruned.
const KINDS: [&str; 2] = [PROMETHEUS_RULE, POD_MONITOR];

/// Which of [`KINDS`] the API server serves.
async fn served(client: &Client) -> Result<BTreeSet<&'static str>, Error> {
    match client
        .list_api_group_resources(&format!("{GROUP}/{VERSION}"))
        .await
    {
        Ok(list) => Ok(KINDS
            .into_iter()
            .filter(|kind| list.resources.iter().any(|r| r.kind == *kind))
            .collect()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(BTreeSet::new()),
        Err(source) => Err(Error::List {
            kind: "monitoring.coreos.com/v1 (discovery)",
            source,
        }),
    }
}

/// Whether the status says monitoring objects were looked after (the
/// `MonitoringConfigured` condition): only then may some be left to prune
/// once monitoring is off.
pub fn recorded(sdb: &crate::api::ServiceDatabase) -> bool {
    sdb.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == MONITORING_CONFIGURED)
    })
}

/// Applies `built` where its kinds are served and prunes the rest. Returns
/// the `MonitoringConfigured` condition; `None` when monitoring is off.
pub async fn apply(
    client: &Client,
    namespace: &str,
    owner: Owner<'_>,
    built: Option<Monitoring>,
) -> Result<(usize, usize, Option<Observed>), Error> {
    let served = served(client).await?;
    let mut written = 0;
    let mut keep = BTreeSet::new();
    let condition = match built {
        None => None,
        Some(Monitoring { rule, pod_monitor }) => {
            let objects: Vec<(&str, DynamicObject)> =
                [(PROMETHEUS_RULE, rule), (POD_MONITOR, pod_monitor)]
                    .into_iter()
                    .filter_map(|(kind, object)| Some((kind, object?)))
                    .collect();
            let missing: Vec<&str> = objects
                .iter()
                .map(|(kind, _)| *kind)
                .filter(|kind| !served.contains(kind))
                .collect();
            let mut applied = Vec::new();
            for (kind, object) in &objects {
                if served.contains(kind) {
                    written += apply_one(client, namespace, owner, kind, object).await?;
                    keep.insert((*kind, object.name_any()));
                    applied.push(format!("{kind} {}", object.name_any()));
                }
            }
            Some(if missing.is_empty() {
                Observed::new(
                    MONITORING_CONFIGURED,
                    true,
                    "Applied",
                    format!("{} applied", applied.join(" and ")),
                )
            } else {
                Observed::new(
                    MONITORING_CONFIGURED,
                    false,
                    "PrometheusOperatorAbsent",
                    format!(
                        "the cluster does not serve {} of {GROUP}/{VERSION} (the Prometheus Operator's CRDs): skipped; the exporter still serves /metrics",
                        missing.join(", ")
                    ),
                )
            })
        }
    };
    let mut deleted = 0;
    for kind in KINDS.into_iter().filter(|k| served.contains(k)) {
        deleted += prune(client, namespace, owner, kind, &keep).await?;
    }
    Ok((written, deleted, condition))
}

/// Server-side apply of one object unless the live one already has it;
/// never over an object another resource controls.
async fn apply_one(
    client: &Client,
    namespace: &str,
    owner: Owner<'_>,
    kind: &'static str,
    desired: &DynamicObject,
) -> Result<usize, Error> {
    let api: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), namespace, &api_resource(kind));
    let name = desired.name_any();
    let existing = api.get_opt(&name).await.map_err(|source| Error::Apply {
        kind,
        name: name.clone(),
        source,
    })?;
    if let Some(existing) = &existing {
        if let Some(holder) = belongs_to_another(&existing.metadata, owner) {
            return Err(Error::Conflict { kind, name, holder });
        }
        let same_labels = desired
            .metadata
            .labels
            .iter()
            .flatten()
            .all(|(k, v)| existing.labels().get(k) == Some(v));
        let same_owner = controller_uid(&existing.metadata) == controller_uid(&desired.metadata);
        if same_labels && same_owner && existing.data.get("spec") == desired.data.get("spec") {
            return Ok(0);
        }
    }
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(desired),
    )
    .await
    .map_err(|source| Error::Apply {
        kind,
        name: name.clone(),
        source,
    })?;
    tracing::info!(kind, name, "applied");
    Ok(1)
}

/// Removes this resource's objects of `kind` that were not applied now.
async fn prune(
    client: &Client,
    namespace: &str,
    owner: Owner<'_>,
    kind: &'static str,
    keep: &BTreeSet<(&'static str, String)>,
) -> Result<usize, Error> {
    let api: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), namespace, &api_resource(kind));
    let mut deleted = 0;
    // These kinds are newer than the legacy instance label: one selector.
    let selector = format!(
        "{LABEL_INSTANCE}={},{LABEL_MANAGED_BY}={MANAGED_BY},{LABEL_COMPONENT}={}",
        owner.instance,
        crate::build::monitoring::COMPONENT
    );
    let list = api
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(|source| Error::List { kind, source })?;
    for object in list {
        let name = object.name_any();
        if keep.contains(&(kind, name.clone()))
            || controller_uid(&object.metadata).as_deref() != Some(owner.uid)
        {
            continue;
        }
        match api.delete(&name, &DeleteParams::background()).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => continue,
            Err(source) => return Err(Error::Delete { kind, name, source }),
        }
        tracing::info!(kind, name, "removed: no longer built");
        deleted += 1;
    }
    Ok(deleted)
}

/// Deletion of the ServiceDatabase: every object of these kinds it controls
/// goes (garbage collection would too, where it runs).
pub async fn remove_all(client: &Client, namespace: &str, owner: Owner<'_>) -> Result<(), Error> {
    let served = served(client).await?;
    for kind in KINDS.into_iter().filter(|k| served.contains(k)) {
        prune(client, namespace, owner, kind, &BTreeSet::new()).await?;
    }
    Ok(())
}

/// `conditions` with `MonitoringConfigured` set to `observed`, or without
/// it when monitoring is off.
pub fn condition(
    conditions: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
    observed: Option<&Observed>,
    generation: Option<i64>,
    now: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time,
) -> Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    match observed {
        Some(o) => {
            crate::api::conditions::merge(conditions, std::slice::from_ref(o), generation, now)
        }
        None => conditions
            .iter()
            .filter(|c| c.type_ != MONITORING_CONFIGURED)
            .cloned()
            .collect(),
    }
}
