//! What a ServiceDatabase pass reads comes from the controller's watches:
//! the operator's children (by servicedb's label), the names of every
//! Secret (metadata only: whether a name is taken), the classes, the
//! DatabaseServers and the namespaces' labels (metadata only). A pass asks
//! the API server only for what no watch holds (a DatabaseServer's admin
//! Secret) or what a watch may not have seen yet (an object of that name
//! appeared a moment ago).

use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::batch::v1::CronJob;
use k8s_openapi::api::core::v1::{Namespace, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Resource, ResourceExt};

use super::own_writes::OwnWrites;
use crate::api::{DatabaseClass, DatabaseServer};
use crate::build::{LABEL_INSTANCE, LEGACY_LABEL_INSTANCE};

/// The watches' stores; set once the controller made them.
pub struct Stores {
    pub secrets: Store<Secret>,
    pub secret_names: Store<PartialObjectMeta<Secret>>,
    pub statefulsets: Store<StatefulSet>,
    pub services: Store<Service>,
    pub pdbs: Store<PodDisruptionBudget>,
    pub network_policies: Store<NetworkPolicy>,
    pub cronjobs: Store<CronJob>,
    pub classes: Store<DatabaseClass>,
    pub servers: Store<DatabaseServer>,
    pub namespaces: Store<PartialObjectMeta<Namespace>>,
}

/// The controller's memory of the cluster: its stores and its own writes.
#[derive(Default)]
pub struct Cache {
    pub own_writes: OwnWrites,
    stores: std::sync::OnceLock<Stores>,
}

/// How long a pass waits for a watch's first list before it asks the API
/// server instead.
const READY_WAIT: Duration = Duration::from_secs(10);

/// What a store says of one object.
pub enum Lookup<K> {
    Found(K),
    /// No such object: the store is complete for this kind.
    Absent,
    /// The store cannot tell: ask the API server.
    Unknown,
}

impl Cache {
    pub fn set(&self, stores: Stores) {
        if self.stores.set(stores).is_err() {
            tracing::warn!(
                "the ServiceDatabase controller started twice; its first stores are used"
            );
        }
    }

    /// The stores, once every one of them listed its objects.
    pub async fn stores(&self) -> Option<&Stores> {
        let stores = self.stores.get()?;
        let ready = async {
            stores.secrets.wait_until_ready().await?;
            stores.secret_names.wait_until_ready().await?;
            stores.statefulsets.wait_until_ready().await?;
            stores.services.wait_until_ready().await?;
            stores.pdbs.wait_until_ready().await?;
            stores.network_policies.wait_until_ready().await?;
            stores.cronjobs.wait_until_ready().await?;
            stores.classes.wait_until_ready().await?;
            stores.servers.wait_until_ready().await?;
            stores.namespaces.wait_until_ready().await
        };
        match tokio::time::timeout(READY_WAIT, ready).await {
            Ok(Ok(())) => Some(stores),
            _ => None,
        }
    }
}

/// A namespaced object of a store.
pub fn get<K>(store: &Store<K>, namespace: &str, name: &str) -> Option<K>
where
    K: Resource + Clone + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    store
        .get(&ObjectRef::new(name).within(namespace))
        .map(|obj| (*obj).clone())
}

/// A Secret by name: the operator's (its data), taken by another (ask the
/// API server, which says whose), or free.
pub fn secret(stores: &Stores, namespace: &str, name: &str) -> Lookup<Secret> {
    if let Some(secret) = get(&stores.secrets, namespace, name) {
        return Lookup::Found(secret);
    }
    match get(&stores.secret_names, namespace, name) {
        Some(_) => Lookup::Unknown,
        None => Lookup::Absent,
    }
}

/// The objects of a store that carry `instance`'s label (of now or of an
/// earlier version) in `namespace`: what `list_instance` lists.
pub fn instance_objects<K>(store: &Store<K>, namespace: &str, instance: &str) -> Vec<K>
where
    K: Resource + Clone + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    store
        .state()
        .iter()
        .filter(|obj| obj.namespace().as_deref() == Some(namespace))
        .filter(|obj| {
            let labels = obj.labels();
            [LABEL_INSTANCE, LEGACY_LABEL_INSTANCE]
                .iter()
                .any(|label| labels.get(*label).map(String::as_str) == Some(instance))
        })
        .map(|obj| (**obj).clone())
        .collect()
}
