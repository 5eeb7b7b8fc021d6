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

use std::collections::BTreeSet;
use std::fmt::Debug;

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::StatefulSet;
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

/// What a live StatefulSet cannot change is kept in the desired one.
///
/// - Its claim templates: an edit of `storage` must not make every apply
///   fail. A larger size grows the live claim instead ([`crate::controller::servicedatabase::storage`]).
/// - Its selector. A StatefulSet made by an earlier version selects its pods
///   by [`crate::build::LEGACY_LABEL_INSTANCE`]; the API server refuses an
///   apply with another selector (422), and recreating the StatefulSet only
///   to change it would take the database down for nothing. So the live
///   selector stays, the pod template carries its labels besides the
///   standard ones, and the Services, the PodDisruptionBudget and the
///   NetworkPolicy select the pods by it as well: the pods are served and
///   fenced by the NetworkPolicy throughout. Every object's metadata loses
///   the old label (servicedb's apply no longer sets it), and the data
///   volumes are relabelled by [`relabel_claims`].
///
/// Only a StatefulSet this resource may write is followed: another's
/// selector never reaches this resource's Services.
async fn keep_immutable(
    client: &Client,
    namespace: &str,
    instance: &mut Instance,
) -> Result<(), Error> {
    let name = instance.statefulset.name_any();
    let api: Api<StatefulSet> = Api::namespaced(client.clone(), namespace);
    let existing = api.get_opt(&name).await.map_err(|source| Error::Apply {
        kind: "StatefulSet",
        name: name.clone(),
        source,
    })?;
    let Some(existing) = existing else {
        return Ok(());
    };
    let meta = instance.statefulset.meta();
    let uid = controller_uid(meta).unwrap_or_default();
    let owner = Owner {
        instance: meta
            .labels
            .as_ref()
            .and_then(|l| l.get(LABEL_INSTANCE))
            .map_or("", String::as_str),
        uid: &uid,
    };
    if belongs_to_another(existing.meta(), owner).is_some() {
        return Ok(());
    }
    let (Some(live), Some(spec)) = (existing.spec, instance.statefulset.spec.as_mut()) else {
        return Ok(());
    };
    if live.volume_claim_templates != spec.volume_claim_templates {
        tracing::info!(
            name,
            "claim templates of an existing StatefulSet are kept; a larger size expands the live claim"
        );
        spec.volume_claim_templates = live.volume_claim_templates;
    }
    if live.selector == spec.selector {
        return Ok(());
    }
    // Every reconcile of such an instance comes here: not news.
    tracing::debug!(
        name,
        "the selector of an existing StatefulSet is kept; its pods are selected by it"
    );
    let selected = live.selector.match_labels.clone().unwrap_or_default();
    let template = spec.template.metadata.get_or_insert_with(Default::default);
    template
        .labels
        .get_or_insert_with(Default::default)
        .extend(selected.clone());
    spec.selector = live.selector.clone();
    for service in [&mut instance.headless_service, &mut instance.client_service] {
        if let Some(spec) = service.spec.as_mut() {
            spec.selector = Some(selected.clone());
        }
    }
    if let Some(spec) = instance.pdb.spec.as_mut() {
        spec.selector = Some(live.selector.clone());
    }
    if let Some(spec) = instance.network_policy.spec.as_mut() {
        spec.pod_selector = Some(live.selector.clone());
    }
    Ok(())
}

/// Data volumes an earlier version's StatefulSet made carry the legacy
/// instance label (the StatefulSet controller copies the claim template's
/// labels and its selector, and never updates them): they get
/// [`LABEL_INSTANCE`] instead, so that nothing of this instance carries
/// `app.kubernetes.io/instance` in its metadata. Only volumes this resource
/// may remove are touched, as in [`cleanup`].
async fn relabel_claims(
    client: &Client,
    namespace: &str,
    owner: Owner<'_>,
) -> Result<usize, Error> {
    let api: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), namespace);
    let mut relabelled = 0;
    for claim in list_instance(&api, owner.instance)
        .await
        .map_err(|source| Error::List {
            kind: "PersistentVolumeClaim",
            source,
        })?
    {
        let labels = claim.labels();
        if !labels.contains_key(LEGACY_LABEL_INSTANCE)
            || claim.owner_references().iter().any(|o| {
                o.controller == Some(true) && o.kind != "StatefulSet" && o.uid != owner.uid
            })
        {
            continue;
        }
        let name = claim.name_any();
        let patch = serde_json::json!({"metadata": {"labels": {
            LEGACY_LABEL_INSTANCE: null,
            LABEL_INSTANCE: owner.instance,
        }}});
        api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(|source| Error::Apply {
                kind: "PersistentVolumeClaim",
                name: name.clone(),
                source,
            })?;
        tracing::info!(name, "data volume relabelled with {LABEL_INSTANCE}");
        relabelled += 1;
    }
    Ok(relabelled)
}

/// The resource whose children are applied or removed: its name (the
/// instance label of its children) and its UID (their controller).
#[derive(Clone, Copy, Debug)]
pub struct Owner<'a> {
    pub instance: &'a str,
    pub uid: &'a str,
}

/// The UID of an object's controller owner reference, if it has one.
pub fn controller_uid(meta: &ObjectMeta) -> Option<String> {
    meta.owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))
        .map(|o| o.uid.clone())
}

/// Who else an existing child belongs to, said for a condition; `None`
/// when `owner` may write it: it controls it, or nobody does and it carries
/// servicedb's labels for this instance (a child an earlier resource of the
/// same name retained).
pub fn belongs_to_another(meta: &ObjectMeta, owner: Owner<'_>) -> Option<String> {
    if let Some(other) = meta
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))
    {
        return (other.uid != owner.uid).then(|| {
            format!(
                "controlled by {} {} (uid {})",
                other.kind, other.name, other.uid
            )
        });
    }
    let labels = meta.labels.clone().unwrap_or_default();
    let ours = labels.get(LABEL_MANAGED_BY).map(String::as_str) == Some(MANAGED_BY)
        && instance_label(&labels).map(String::as_str) == Some(owner.instance);
    (!ours).then(|| "not made by servicedb for this resource".to_string())
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

/// Objects labelled as this instance's, managed by servicedb, by the
/// instance label of now or of earlier versions.
pub async fn list_instance<K>(api: &Api<K>, instance: &str) -> Result<Vec<K>, kube::Error>
where
    K: Resource + Clone + Debug + DeserializeOwned,
{
    let mut found: Vec<K> = Vec::new();
    for selector in instance_selectors(instance, "") {
        for obj in api
            .list(&ListParams::default().labels(&selector))
            .await?
            .items
        {
            // One that carries both labels is listed twice.
            if !found.iter().any(|f| f.meta().uid == obj.meta().uid) {
                found.push(obj);
            }
        }
    }
    Ok(found)
}

/// Deletes an object; already gone is fine.
pub async fn delete<K>(api: &Api<K>, name: &str) -> Result<(), kube::Error>
where
    K: Resource + Clone + Debug + DeserializeOwned,
{
    match api.delete(name, &DeleteParams::background()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e),
    }
}

/// What deletion of a ServiceDatabase does to its children: only to those
/// it controls.
pub mod cleanup {
    use super::*;

    /// `Retain`: the running parts go; the data volume and both Secrets stay,
    /// freed of their owner reference so that garbage collection leaves them.
    /// A new ServiceDatabase of the same name adopts them again.
    pub async fn retain(client: &Client, namespace: &str, owner: Owner<'_>) -> Result<(), Error> {
        remove_running(client, namespace, owner).await?;
        orphan::<Secret>(client, namespace, owner).await?;
        let api: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), namespace);
        for claim in claims(client, namespace, owner).await? {
            if claim.owner_references().is_empty() {
                continue;
            }
            let name = claim.name_any();
            // Whichever StatefulSet's they were, garbage collection must
            // leave them now.
            let patch = serde_json::json!({"metadata": {"ownerReferences": null}});
            api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map_err(|source| Error::Apply {
                    kind: "PersistentVolumeClaim",
                    name: name.clone(),
                    source,
                })?;
            tracing::info!(name, "data volume retained");
        }
        Ok(())
    }

    /// `Delete`: everything goes, data volumes included.
    pub async fn delete_all(
        client: &Client,
        namespace: &str,
        owner: Owner<'_>,
    ) -> Result<(), Error> {
        remove_running(client, namespace, owner).await?;
        remove_all::<Secret>(client, namespace, owner).await?;
        remove_claims(client, namespace, owner).await?;
        Ok(())
    }

    async fn remove_running(
        client: &Client,
        namespace: &str,
        owner: Owner<'_>,
    ) -> Result<(), Error> {
        remove_all::<StatefulSet>(client, namespace, owner).await?;
        remove_all::<Service>(client, namespace, owner).await?;
        remove_all::<PodDisruptionBudget>(client, namespace, owner).await?;
        remove_all::<NetworkPolicy>(client, namespace, owner).await?;
        remove_all::<CronJob>(client, namespace, owner).await?;
        crate::controller::monitoring::remove_all(client, namespace, owner).await?;
        // The restore Job; backup Jobs belong to their DatabaseBackups, which
        // outlive the database.
        let jobs: Api<Job> = Api::namespaced(client.clone(), namespace);
        let restore = crate::build::backup::restore_job_name(owner.instance);
        let found = jobs.get_opt(&restore).await.map_err(|source| Error::List {
            kind: "Job",
            source,
        })?;
        if found.is_some_and(|job| controller_uid(job.meta()).as_deref() == Some(owner.uid)) {
            delete(&jobs, &restore)
                .await
                .map_err(|source| Error::Delete {
                    kind: "Job",
                    name: restore,
                    source,
                })?;
        }
        Ok(())
    }

    async fn remove_claims(
        client: &Client,
        namespace: &str,
        owner: Owner<'_>,
    ) -> Result<(), Error> {
        let api: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), namespace);
        for claim in claims(client, namespace, owner).await? {
            let name = claim.name_any();
            delete(&api, &name).await.map_err(|source| Error::Delete {
                kind: "PersistentVolumeClaim",
                name: name.clone(),
                source,
            })?;
            tracing::info!(name, "removed data volume");
        }
        Ok(())
    }

    /// The data volumes: made by the StatefulSet controller from the claim
    /// templates, so they carry the instance's labels but no owner of ours
    /// (at most the StatefulSet). None while a StatefulSet of another
    /// resource has the instance's name: they would be that one's data.
    async fn claims(
        client: &Client,
        namespace: &str,
        owner: Owner<'_>,
    ) -> Result<Vec<PersistentVolumeClaim>, Error> {
        let statefulsets: Api<StatefulSet> = Api::namespaced(client.clone(), namespace);
        let name = crate::model::naming::instance_name(owner.instance);
        let live = statefulsets
            .get_opt(&name)
            .await
            .map_err(|source| Error::List {
                kind: "StatefulSet",
                source,
            })?;
        if let Some(holder) = live.and_then(|s| belongs_to_another(s.meta(), owner)) {
            tracing::info!(statefulset = %name, %holder, "data volumes of that name are another resource's; kept");
            return Ok(Vec::new());
        }
        let api: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), namespace);
        Ok(list_instance(&api, owner.instance)
            .await
            .map_err(|source| Error::List {
                kind: "PersistentVolumeClaim",
                source,
            })?
            .into_iter()
            .filter(|claim| claim.meta().deletion_timestamp.is_none())
            .filter(|claim| {
                claim.owner_references().iter().all(|o| {
                    o.controller != Some(true) || o.kind == "StatefulSet" || o.uid == owner.uid
                })
            })
            .collect())
    }

    async fn remove_all<K>(client: &Client, namespace: &str, owner: Owner<'_>) -> Result<(), Error>
    where
        K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
            + Clone
            + Debug
            + DeserializeOwned,
    {
        prune::<K>(client, namespace, owner, &BTreeSet::new(), None)
            .await
            .map(|_| ())
    }

    async fn orphan<K>(client: &Client, namespace: &str, owner: Owner<'_>) -> Result<(), Error>
    where
        K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
            + Clone
            + Debug
            + DeserializeOwned
            + Serialize,
    {
        let kind = kind::<K>();
        let api: Api<K> = Api::namespaced(client.clone(), namespace);
        for obj in list_instance(&api, owner.instance)
            .await
            .map_err(|source| Error::List { kind, source })?
        {
            if controller_uid(obj.meta()).as_deref() != Some(owner.uid) {
                continue;
            }
            let name = obj.name_any();
            // A merge patch replaces the list; the owner references servicedb
            // set are the only ones on these objects.
            let patch = serde_json::json!({"metadata": {"ownerReferences": null}});
            api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map_err(|source| Error::Apply {
                    kind,
                    name: name.clone(),
                    source,
                })?;
            tracing::info!(kind, name, "retained");
        }
        Ok(())
    }
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
