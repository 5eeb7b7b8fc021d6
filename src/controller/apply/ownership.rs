//! Whose a child is: the controller owner reference, the instance label,
//! and deleting only what is this resource's.

use super::*;

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
