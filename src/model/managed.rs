//! A `managed` DatabaseServer is a dedicated instance under the name
//! `<server>-server`: its names, and the instance it is in the terms of a
//! ServiceDatabase (so it is validated and built exactly as one).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::ResourceExt;

use super::naming::instance_name;
use crate::api::common::OwnerSpec;
use crate::api::service_database::ServiceDatabaseSpec;
use crate::api::{DatabaseServer, DeletionPolicy, Isolation, ServiceDatabase};

/// The name the server's instance is built under.
pub fn managed_instance(server: &str) -> String {
    format!("{server}-server")
}

/// Where clients reach a managed server, inside the cluster.
pub fn managed_host(server: &str, namespace: &str) -> String {
    format!(
        "{}.{namespace}.svc",
        instance_name(&managed_instance(server))
    )
}

/// The Secret with the managed server's administrator login.
pub fn managed_admin_secret(server: &str) -> String {
    format!("{}-admin", instance_name(&managed_instance(server)))
}

/// The dedicated instance a managed server is: the server's class, version,
/// storage, resources and monitoring; retained when deleted; owned by the
/// server (its UID), so the checks that a child is this resource's own
/// compare the server's. `None` for an external server.
pub fn instance_of(server: &DatabaseServer) -> Option<ServiceDatabase> {
    let managed = server.spec.managed.as_ref()?;
    let spec = ServiceDatabaseSpec {
        engine: server.spec.engine,
        version: managed.version.clone(),
        class_name: managed.class_name.clone(),
        owner: OwnerSpec {
            pod_selector: LabelSelector::default(),
        },
        isolation: Isolation::Dedicated,
        server_ref: None,
        storage: managed.storage.clone(),
        resources: managed.resources.clone(),
        credentials: None,
        backup: None,
        disruption: None,
        pod: None,
        monitoring: managed.monitoring.clone(),
        deletion_policy: DeletionPolicy::Retain,
        bootstrap: None,
        redis: None,
        postgres: None,
    };
    let mut sdb = ServiceDatabase::new(&managed_instance(&server.name_any()), spec);
    sdb.metadata.namespace = server.namespace();
    sdb.metadata.uid = server.uid();
    Some(sdb)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(spec: serde_json::Value) -> DatabaseServer {
        let mut s = DatabaseServer::new("shared-pg", serde_json::from_value(spec).unwrap());
        s.metadata.namespace = Some("platform".into());
        s.metadata.uid = Some("u1".into());
        s
    }

    #[test]
    fn a_managed_server_is_a_dedicated_instance_under_its_own_name() {
        let s = server(serde_json::json!({"engine": "Postgres",
            "managed": {"version": "16", "storage": {"size": "20Gi"}}}));
        let sdb = instance_of(&s).expect("managed");
        assert_eq!(sdb.name_any(), "shared-pg-server");
        assert_eq!(sdb.namespace().as_deref(), Some("platform"));
        assert_eq!(sdb.spec.version.as_deref(), Some("16"));
        assert_eq!(
            sdb.spec.storage.and_then(|s| s.size).as_deref(),
            Some("20Gi")
        );
        assert_eq!(
            managed_host("shared-pg", "platform"),
            "shared-pg-server-db.platform.svc"
        );
        assert_eq!(
            managed_admin_secret("shared-pg"),
            "shared-pg-server-db-admin"
        );
        let external = server(serde_json::json!({"engine": "Redis",
            "external": {"host": "r", "port": 6379, "adminSecretRef": {"name": "a"}}}));
        assert!(instance_of(&external).is_none());
    }

    #[test]
    fn a_monitored_managed_server_is_a_monitored_instance() {
        let unmonitored = server(serde_json::json!({"engine": "Postgres", "managed": {}}));
        assert_eq!(instance_of(&unmonitored).unwrap().spec.monitoring, None);
        let monitored = server(serde_json::json!({"engine": "Postgres",
            "managed": {"monitoring": {"enabled": true}}}));
        let sdb = instance_of(&monitored).unwrap();
        assert_eq!(sdb.spec.monitoring.and_then(|m| m.enabled), Some(true));
    }
}
