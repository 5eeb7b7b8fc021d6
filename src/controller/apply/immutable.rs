//! Fields the API server will not change in place (a StatefulSet's
//! selector and claim templates): the live object is kept, or replaced
//! with its volumes relabelled, instead of failing every pass.

use super::*;

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
pub(super) async fn keep_immutable(
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
pub(super) async fn relabel_claims(
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
