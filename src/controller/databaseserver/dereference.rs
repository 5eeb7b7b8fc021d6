//! Step 1 of the DatabaseServer pipeline (async, reads the cluster): the
//! admin Secret, the CA and exporter Secrets, and the ServiceDatabases
//! placed on the server.

use k8s_openapi::api::core::v1::Secret;
use kube::api::ListParams;
use kube::runtime::reflector::Store;
use kube::{Api, Client, ResourceExt};

use super::validate::SecretData;
use crate::api::{DatabaseServer, ServiceDatabase};

/// What the cluster says about a server's surroundings.
pub struct Dereferenced {
    /// Data of `spec.external.adminSecretRef`; `None` when it doesn't exist
    /// (or the server is managed).
    pub admin_secret: SecretData,
    /// ServiceDatabases whose `spec.serverRef` names this server.
    pub databases: i32,
    /// Data of `spec.external.tls.caSecretRef`; `None` when unset or missing.
    pub ca_secret: SecretData,
    /// Data of `spec.external.monitoring.credentialsSecretRef` when
    /// monitoring is on; `None` otherwise or when missing.
    pub monitoring_secret: SecretData,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading {kind}: {source}")]
    Read {
        kind: &'static str,
        #[source]
        source: kube::Error,
    },
}

/// How long a count waits for the ServiceDatabase store's first list
/// before it lists instead.
const STORE_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// The data of the named Secret; `None` when no name is given or it does
/// not exist.
async fn secret_data(secrets: &Api<Secret>, name: Option<&String>) -> Result<SecretData, Error> {
    let Some(name) = name else { return Ok(None) };
    Ok(secrets
        .get_opt(name)
        .await
        .map_err(|source| Error::Read {
            kind: "Secret",
            source,
        })?
        .map(|s| s.data.unwrap_or_default()))
}

/// `tenants`: the ServiceDatabase controller's store, when it runs; the
/// count is then read from it instead of a list of every ServiceDatabase.
pub async fn dereference(
    client: &Client,
    tenants: Option<&Store<ServiceDatabase>>,
    server: &DatabaseServer,
) -> Result<Dereferenced, Error> {
    let namespace = server.namespace().unwrap_or_default();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &namespace);
    let external = server.spec.external.as_ref();
    let admin_secret = secret_data(&secrets, external.map(|e| &e.admin_secret_ref.name)).await?;
    let ca_secret = secret_data(
        &secrets,
        external
            .and_then(|e| e.tls.as_ref())
            .and_then(|t| t.ca_secret_ref.as_ref())
            .map(|ca| &ca.name),
    )
    .await?;
    let monitoring_secret = secret_data(
        &secrets,
        external
            .and_then(|e| e.monitored())
            .and_then(|m| m.credentials_secret_ref.as_ref())
            .map(|s| &s.name),
    )
    .await?;
    let name = server.name_any();
    let ready = match tenants {
        Some(store) => tokio::time::timeout(STORE_WAIT, store.wait_until_ready())
            .await
            .is_ok_and(|r| r.is_ok()),
        None => false,
    };
    let databases = match tenants {
        Some(store) if ready => store
            .state()
            .iter()
            .filter(|sdb| places_on(sdb, &namespace, &name))
            .count(),
        _ => Api::<ServiceDatabase>::all(client.clone())
            .list(&ListParams::default())
            .await
            .map_err(|source| Error::Read {
                kind: "ServiceDatabase",
                source,
            })?
            .items
            .iter()
            .filter(|sdb| places_on(sdb, &namespace, &name))
            .count(),
    };
    Ok(Dereferenced {
        admin_secret,
        ca_secret,
        monitoring_secret,
        databases: i32::try_from(databases).unwrap_or(i32::MAX),
    })
}

/// Whether a ServiceDatabase's `spec.serverRef` names the server
/// `namespace/name`; the reference's namespace defaults to the
/// ServiceDatabase's own.
pub fn places_on(sdb: &ServiceDatabase, namespace: &str, name: &str) -> bool {
    sdb.spec.server_ref.as_ref().is_some_and(|r| {
        r.name == name
            && r.namespace.as_deref().or(sdb.metadata.namespace.as_deref()) == Some(namespace)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sdb(ns: &str, server_ref: serde_json::Value) -> ServiceDatabase {
        serde_json::from_value(json!({
            "apiVersion": "servicedb.dev/v1alpha1", "kind": "ServiceDatabase",
            "metadata": {"name": "orders", "namespace": ns},
            "spec": {"engine": "Postgres", "owner": {"podSelector": {}},
                     "isolation": "Database", "serverRef": server_ref},
        }))
        .unwrap()
    }

    #[test]
    fn server_ref_namespace_defaults_to_the_databases_own() {
        assert!(places_on(
            &sdb("platform", json!({"name": "pg"})),
            "platform",
            "pg"
        ));
        assert!(!places_on(
            &sdb("shop", json!({"name": "pg"})),
            "platform",
            "pg"
        ));
        assert!(places_on(
            &sdb("shop", json!({"name": "pg", "namespace": "platform"})),
            "platform",
            "pg"
        ));
        assert!(!places_on(
            &sdb("platform", json!({"name": "other"})),
            "platform",
            "pg"
        ));
    }
}
