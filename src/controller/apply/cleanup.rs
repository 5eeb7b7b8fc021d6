//! What deletion of a ServiceDatabase does to its children: only to those
//! it controls.

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
pub async fn delete_all(client: &Client, namespace: &str, owner: Owner<'_>) -> Result<(), Error> {
    remove_running(client, namespace, owner).await?;
    remove_all::<Secret>(client, namespace, owner).await?;
    remove_claims(client, namespace, owner).await?;
    Ok(())
}

async fn remove_running(client: &Client, namespace: &str, owner: Owner<'_>) -> Result<(), Error> {
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

async fn remove_claims(client: &Client, namespace: &str, owner: Owner<'_>) -> Result<(), Error> {
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
