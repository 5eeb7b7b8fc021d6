//! Growing the data volume of a dedicated instance. A StatefulSet's claim
//! template cannot change, so (as CloudNativePG does) the live claim
//! `data-<name>-db-0` is patched to the new `spec.storage.size` when its
//! StorageClass has `allowVolumeExpansion: true`; the storage driver and the
//! kubelet grow the volume and its file system. The condition
//! `StorageResized` says how far that got, or why it cannot happen.
//! Shrinking is refused by the CRD (a volume cannot shrink).

use std::time::Duration;

use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};

use crate::api::conditions::Observed;
use crate::api::conditions::types::STORAGE_RESIZED;
use crate::build::statefulset::DATA_VOLUME;
use crate::model::database::ValidatedDatabase;
use crate::model::quantity::bytes;

/// How often a volume that is being expanded is looked at again.
pub const RECHECK: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading {kind} {name}: {source}")]
    Read {
        kind: &'static str,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("expanding PersistentVolumeClaim {name}: {source}")]
    Expand {
        name: String,
        #[source]
        source: kube::Error,
    },
}

/// The claim of the instance's only replica.
pub fn claim_name(db: &ValidatedDatabase) -> String {
    format!("{DATA_VOLUME}-{}-0", db.instance_name())
}

/// What [`grow`] found.
pub struct Volume {
    /// `StorageResized`.
    pub condition: Observed,
    /// The volume is being expanded: look again in [`RECHECK`].
    pub resizing: bool,
}

impl Volume {
    fn settled(condition: Observed) -> Option<Self> {
        Some(Self {
            condition,
            resizing: false,
        })
    }
}

/// Expands the data volume to `spec.storage.size` where it is smaller and
/// its StorageClass allows it. `None` on a shared server and before the
/// StatefulSet controller made the claim.
pub async fn grow(client: &Client, db: &ValidatedDatabase) -> Result<Option<Volume>, Error> {
    if db.server.is_some() {
        return Ok(None);
    }
    let name = claim_name(db);
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &db.namespace);
    let Some(claim) = claims.get_opt(&name).await.map_err(|source| Error::Read {
        kind: "PersistentVolumeClaim",
        name: name.clone(),
        source,
    })?
    else {
        return Ok(None);
    };
    let wanted = &db.storage_size.0;
    let requested = claim
        .spec
        .as_ref()
        .and_then(|s| s.resources.as_ref())
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("storage"))
        .map(|q| q.0.clone())
        .unwrap_or_default();
    let capacity = claim
        .status
        .as_ref()
        .and_then(|s| s.capacity.as_ref())
        .and_then(|c| c.get("storage"))
        .map(|q| q.0.clone());
    let (Some(wanted_bytes), Some(requested_bytes)) = (bytes(wanted), bytes(&requested)) else {
        return Ok(None);
    };
    if wanted_bytes < requested_bytes {
        return Ok(Volume::settled(Observed::new(
            STORAGE_RESIZED,
            false,
            "CannotShrink",
            format!(
                "a volume cannot shrink: PersistentVolumeClaim {name} keeps {requested}, the size asked for is {wanted}"
            ),
        )));
    }
    if wanted_bytes > requested_bytes {
        let class_name = claim
            .spec
            .as_ref()
            .and_then(|s| s.storage_class_name.clone());
        let expandable = match &class_name {
            Some(class) => Api::<StorageClass>::all(client.clone())
                .get_opt(class)
                .await
                .map_err(|source| Error::Read {
                    kind: "StorageClass",
                    name: class.clone(),
                    source,
                })?
                .and_then(|c| c.allow_volume_expansion)
                .unwrap_or(false),
            None => false,
        };
        if !expandable {
            let class = class_name.map_or_else(
                || "the claim has no StorageClass".to_string(),
                |c| {
                    format!(
                        "StorageClass {c} does not allow volume expansion (allowVolumeExpansion)"
                    )
                },
            );
            return Ok(Volume::settled(Observed::new(
                STORAGE_RESIZED,
                false,
                "ExpansionNotSupported",
                format!(
                    "PersistentVolumeClaim {name} stays at {requested}: {class}; the size {wanted} applies to a new instance only"
                ),
            )));
        }
        let patch = serde_json::json!({"spec": {"resources": {"requests": {"storage": wanted}}}});
        claims
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(|source| Error::Expand {
                name: name.clone(),
                source,
            })?;
        tracing::info!(claim = %name, from = %requested, to = %wanted, "expanding the data volume");
        return Ok(Some(resizing(&name, wanted, capacity.as_deref())));
    }
    match capacity.as_deref().and_then(bytes) {
        Some(now) if now < wanted_bytes => Ok(Some(resizing(&name, wanted, capacity.as_deref()))),
        _ => Ok(Volume::settled(Observed::new(
            STORAGE_RESIZED,
            true,
            "AsRequested",
            format!("PersistentVolumeClaim {name} requests {wanted}"),
        ))),
    }
}

fn resizing(name: &str, wanted: &str, capacity: Option<&str>) -> Volume {
    Volume {
        condition: Observed::new(
            STORAGE_RESIZED,
            false,
            "Resizing",
            format!(
                "PersistentVolumeClaim {name} is being expanded to {wanted} (capacity now {})",
                capacity.unwrap_or("unknown")
            ),
        ),
        resizing: true,
    }
}
