//! Step 4 of the ServiceDatabase pipeline (async): server-side apply of every
//! built child with field manager `servicedb`, skipping objects that already
//! match (an unchanged resource costs no write), and removal of children that
//! are no longer built.
//!
//! A child is only ever written or removed when its controller owner
//! reference is this resource's UID (or, written only, when it has no
//! controller and servicedb's labels for this instance: what an earlier
//! resource of the same name retained). A managed DatabaseServer `x` builds
//! its instance under the name `x-server`, as a ServiceDatabase `x-server`
//! would: whichever came second is refused, and neither removes the other's
//! objects.

pub mod cleanup;
mod immutable;
mod ownership;
use immutable::*;
pub use ownership::*;

use std::collections::BTreeSet;
use std::fmt::Debug;

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::{Api, Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::cache::{self, Cache, Lookup};
use crate::build::{
    Children, FIELD_MANAGER, Instance, LABEL_INSTANCE, LABEL_MANAGED_BY, LEGACY_LABEL_INSTANCE,
    MANAGED_BY, instance_label, instance_selectors,
};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "{kind} {name} is {holder}, not this resource's; rename this resource or remove that object"
    )]
    Conflict {
        kind: &'static str,
        name: String,
        holder: String,
    },
    #[error("applying {kind} {name}: {source}")]
    Apply {
        kind: &'static str,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("removing {kind} {name}: {source}")]
    Delete {
        kind: &'static str,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("listing {kind}: {source}")]
    List {
        kind: &'static str,
        #[source]
        source: kube::Error,
    },
    #[error("serialising {kind}: {source}")]
    Serialize {
        kind: &'static str,
        #[source]
        source: serde_json::Error,
    },
}

/// How many objects were written; zero on an unchanged resync.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Applied {
    pub written: usize,
    pub deleted: usize,
    /// The `MonitoringConfigured` condition; `None` when monitoring is off.
    pub monitoring: Option<crate::api::conditions::Observed>,
}

/// Applies every child. The destructuring has no `..`: a new kind of child
/// that is built but not applied does not compile.
pub async fn apply(
    client: &Client,
    cache: Option<&Cache>,
    namespace: &str,
    instance: &str,
    children: Children,
    monitored_before: bool,
) -> Result<Applied, Error> {
    let Children {
        instance: dedicated,
        credentials_secret,
        backup_cronjob,
        verify_cronjob,
        monitoring,
    } = children;
    let stores = match cache {
        Some(cache) => cache.stores().await,
        None => None,
    };
    let mut out = Applied::default();
    let mut keep = Keep::default();
    // Every child carries the same controller owner reference.
    let uid = controller_uid(credentials_secret.meta()).unwrap_or_default();
    let uid = uid.as_str();
    apply_one(
        client,
        (
            cache,
            find(stores, |s| {
                cache::secret(s, namespace, &credentials_secret.name_any())
            }),
        ),
        namespace,
        &credentials_secret,
        &mut out,
        &mut keep.secrets,
    )
    .await?;
    let mut dedicated = dedicated;
    if let Some(instance) = dedicated.as_mut() {
        keep_immutable(client, namespace, instance).await?;
    }
    if let Some(Instance {
        statefulset,
        headless_service,
        client_service,
        pdb,
        network_policy,
        admin_secret,
    }) = dedicated
    {
        // Secrets before the StatefulSet: the pod mounts them.
        apply_one(
            client,
            (
                cache,
                find(stores, |s| {
                    cache::secret(s, namespace, &admin_secret.name_any())
                }),
            ),
            namespace,
            &admin_secret,
            &mut out,
            &mut keep.secrets,
        )
        .await?;
        apply_one(
            client,
            (
                cache,
                find(stores, |s| {
                    known(&s.services, namespace, &headless_service.name_any())
                }),
            ),
            namespace,
            &headless_service,
            &mut out,
            &mut keep.services,
        )
        .await?;
        apply_one(
            client,
            (
                cache,
                find(stores, |s| {
                    known(&s.services, namespace, &client_service.name_any())
                }),
            ),
            namespace,
            &client_service,
            &mut out,
            &mut keep.services,
        )
        .await?;
        apply_one(
            client,
            (
                cache,
                find(stores, |s| {
                    known(&s.network_policies, namespace, &network_policy.name_any())
                }),
            ),
            namespace,
            &network_policy,
            &mut out,
            &mut keep.network_policies,
        )
        .await?;
        apply_one(
            client,
            (
                cache,
                find(stores, |s| known(&s.pdbs, namespace, &pdb.name_any())),
            ),
            namespace,
            &pdb,
            &mut out,
            &mut keep.pdbs,
        )
        .await?;
        apply_one(
            client,
            (
                cache,
                find(stores, |s| {
                    known(&s.statefulsets, namespace, &statefulset.name_any())
                }),
            ),
            namespace,
            &statefulset,
            &mut out,
            &mut keep.statefulsets,
        )
        .await?;
        out.written += relabel_claims(client, namespace, Owner { instance, uid }).await?;
    }
    for cronjob in [backup_cronjob, verify_cronjob].iter().flatten() {
        apply_one(
            client,
            (
                cache,
                find(stores, |s| {
                    known(&s.cronjobs, namespace, &cronjob.name_any())
                }),
            ),
            namespace,
            cronjob,
            &mut out,
            &mut keep.cronjobs,
        )
        .await?;
    }

    let Keep {
        statefulsets,
        services,
        pdbs,
        network_policies,
        secrets,
        cronjobs,
    } = keep;
    let owner = Owner { instance, uid };
    // Listed from the stores when they are there: pruning an unchanged
    // resource then costs no request.
    out.deleted += prune::<StatefulSet>(
        client,
        namespace,
        owner,
        &statefulsets,
        stores.map(|s| cache::instance_objects(&s.statefulsets, namespace, instance)),
    )
    .await?;
    out.deleted += prune::<Service>(
        client,
        namespace,
        owner,
        &services,
        stores.map(|s| cache::instance_objects(&s.services, namespace, instance)),
    )
    .await?;
    out.deleted += prune::<PodDisruptionBudget>(
        client,
        namespace,
        owner,
        &pdbs,
        stores.map(|s| cache::instance_objects(&s.pdbs, namespace, instance)),
    )
    .await?;
    out.deleted += prune::<NetworkPolicy>(
        client,
        namespace,
        owner,
        &network_policies,
        stores.map(|s| cache::instance_objects(&s.network_policies, namespace, instance)),
    )
    .await?;
    out.deleted += prune::<Secret>(
        client,
        namespace,
        owner,
        &secrets,
        stores.map(|s| cache::instance_objects(&s.secrets, namespace, instance)),
    )
    .await?;
    out.deleted += prune::<CronJob>(
        client,
        namespace,
        owner,
        &cronjobs,
        stores.map(|s| cache::instance_objects(&s.cronjobs, namespace, instance)),
    )
    .await?;
    // Monitoring never on, and not on now: nothing of it to look up (no
    // discovery request, no prune), so an unmonitored database's pass costs
    // nothing more.
    if monitoring.is_some() || monitored_before {
        let (written, deleted, condition) =
            super::monitoring::apply(client, namespace, owner, monitoring).await?;
        out.written += written;
        out.deleted += deleted;
        out.monitoring = condition;
    }
    Ok(out)
}

/// Applies an external DatabaseServer's exporter (Deployment, Service,
/// NetworkPolicy; its PodMonitor is [`super::monitoring::apply`]'s), or
/// with `None` removes what of it `owner` controls.
pub async fn apply_server_exporter(
    client: &Client,
    namespace: &str,
    owner: Owner<'_>,
    built: Option<(Deployment, Service, NetworkPolicy)>,
) -> Result<Applied, Error> {
    let mut out = Applied::default();
    let mut keep = Keep::default();
    let mut deployments = BTreeSet::new();
    if let Some((deployment, service, network_policy)) = &built {
        // The Service and the policy first: the pod is fenced when it starts.
        apply_one(
            client,
            (None, Lookup::Unknown),
            namespace,
            service,
            &mut out,
            &mut keep.services,
        )
        .await?;
        apply_one(
            client,
            (None, Lookup::Unknown),
            namespace,
            network_policy,
            &mut out,
            &mut keep.network_policies,
        )
        .await?;
        apply_one(
            client,
            (None, Lookup::Unknown),
            namespace,
            deployment,
            &mut out,
            &mut deployments,
        )
        .await?;
    }
    out.deleted += prune::<Deployment>(client, namespace, owner, &deployments, None).await?;
    out.deleted += prune::<Service>(client, namespace, owner, &keep.services, None).await?;
    out.deleted +=
        prune::<NetworkPolicy>(client, namespace, owner, &keep.network_policies, None).await?;
    Ok(out)
}

/// What the stores say of one object; without stores, ask the API server.
fn find<K>(
    stores: Option<&cache::Stores>,
    look: impl FnOnce(&cache::Stores) -> Lookup<K>,
) -> Lookup<K> {
    stores.map_or(Lookup::Unknown, look)
}

/// An object of a store of the operator's children: found, or unknown (an
/// object of that name that is not labelled as servicedb's is in no store).
fn known<K>(store: &kube::runtime::reflector::Store<K>, namespace: &str, name: &str) -> Lookup<K>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    cache::get(store, namespace, name).map_or(Lookup::Unknown, Lookup::Found)
}

/// Names applied in this reconcile, per kind.
#[derive(Default)]
struct Keep {
    statefulsets: BTreeSet<String>,
    services: BTreeSet<String>,
    pdbs: BTreeSet<String>,
    network_policies: BTreeSet<String>,
    secrets: BTreeSet<String>,
    cronjobs: BTreeSet<String>,
}

async fn apply_one<K>(
    client: &Client,
    (cache, found): (Option<&Cache>, Lookup<K>),
    namespace: &str,
    desired: &K,
    out: &mut Applied,
    keep: &mut BTreeSet<String>,
) -> Result<(), Error>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + Debug
        + Serialize
        + DeserializeOwned,
{
    let kind = kind::<K>();
    let name = desired.name_any();
    keep.insert(name.clone());
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    let existing = match found {
        Lookup::Found(existing) => Some(existing),
        Lookup::Absent => None,
        Lookup::Unknown => api.get_opt(&name).await.map_err(|source| Error::Apply {
            kind,
            name: name.clone(),
            source,
        })?,
    };
    if let Some(existing) = existing {
        let owner = Owner {
            instance: desired
                .meta()
                .labels
                .as_ref()
                .and_then(|l| l.get(LABEL_INSTANCE))
                .map_or("", String::as_str),
            uid: &controller_uid(desired.meta()).unwrap_or_default(),
        };
        if let Some(holder) = belongs_to_another(existing.meta(), owner) {
            return Err(Error::Conflict {
                kind,
                name: name.clone(),
                holder,
            });
        }
        let want = to_value(desired, kind)?;
        let have = to_value(&existing, kind)?;
        // A Secret's keys are all ours: a key that is no longer built (a
        // rotation's previous login) must go, so its data compares exactly.
        if contains(&have, &want) && have.get("data") == want.get("data") {
            return Ok(());
        }
    }
    let mut body = to_value(desired, kind)?;
    if let Value::Object(map) = &mut body {
        map.insert("apiVersion".into(), K::api_version(&()).into());
        map.insert("kind".into(), K::kind(&()).into());
    }
    let written = api
        .patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(body),
        )
        .await
        .map_err(|source| Error::Apply {
            kind,
            name: name.clone(),
            source,
        })?;
    if let Some(cache) = cache {
        cache.own_writes.wrote(&written);
    }
    tracing::info!(kind, name, "applied");
    out.written += 1;
    Ok(())
}

/// Deletes this instance's objects of kind `K` that were not applied now
/// and that it controls.
async fn prune<K>(
    client: &Client,
    namespace: &str,
    owner: Owner<'_>,
    keep: &BTreeSet<String>,
    listed: Option<Vec<K>>,
) -> Result<usize, Error>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + Debug
        + DeserializeOwned,
{
    let kind = kind::<K>();
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    let mut deleted = 0;
    let listed = match listed {
        Some(listed) => listed,
        None => list_instance(&api, owner.instance)
            .await
            .map_err(|source| Error::List { kind, source })?,
    };
    for obj in listed {
        let name = obj.name_any();
        if keep.contains(&name) || obj.meta().deletion_timestamp.is_some() {
            continue;
        }
        if controller_uid(obj.meta()).as_deref() != Some(owner.uid) {
            // Another resource's (or retained by an earlier one): not ours
            // to remove.
            continue;
        }
        delete(&api, &name).await.map_err(|source| Error::Delete {
            kind,
            name: name.clone(),
            source,
        })?;
        tracing::info!(kind, name, "removed child that is no longer built");
        deleted += 1;
    }
    Ok(deleted)
}

fn kind<K: Resource<DynamicType = ()>>() -> &'static str {
    // Kinds of k8s-openapi types are static strings behind a Cow.
    match K::kind(&()) {
        std::borrow::Cow::Borrowed(s) => s,
        std::borrow::Cow::Owned(_) => "object",
    }
}

fn to_value<T: Serialize>(obj: &T, kind: &'static str) -> Result<Value, Error> {
    serde_json::to_value(obj).map_err(|source| Error::Serialize { kind, source })
}

/// Whether every field of `want` is present in `have` with the same value.
/// Fields the API server adds (defaults, status, metadata) are ignored; lists
/// must have the same length and match element by element.
pub fn contains(have: &Value, want: &Value) -> bool {
    match (have, want) {
        (Value::Object(h), Value::Object(w)) => w.iter().all(|(k, wv)| match h.get(k) {
            Some(hv) => contains(hv, wv),
            None => {
                wv.is_null()
                    || wv.as_object().is_some_and(|o| o.is_empty())
                    || wv.as_array().is_some_and(|a| a.is_empty())
            }
        }),
        (Value::Array(h), Value::Array(w)) => {
            h.len() == w.len() && h.iter().zip(w).all(|(hv, wv)| contains(hv, wv))
        }
        _ => have == want,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::contains;

    #[test]
    fn server_defaults_do_not_count_as_drift() {
        let want = json!({"spec": {"replicas": 1, "ports": [{"port": 5432}]}});
        let have = json!({"spec": {"replicas": 1, "revisionHistoryLimit": 10, "ports": [{"port": 5432, "protocol": "TCP"}]}, "status": {}});
        assert!(contains(&have, &want));
    }

    #[test]
    fn changed_or_missing_values_are_drift() {
        let want = json!({"spec": {"replicas": 1, "ports": [{"port": 5432}]}});
        assert!(!contains(
            &json!({"spec": {"replicas": 2, "ports": [{"port": 5432}]}}),
            &want
        ));
        assert!(!contains(
            &json!({"spec": {"replicas": 1, "ports": []}}),
            &want
        ));
        assert!(!contains(
            &json!({"spec": {"ports": [{"port": 5432}]}}),
            &want
        ));
    }
}
