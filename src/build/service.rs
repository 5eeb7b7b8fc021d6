//! The headless Service (stable pod DNS for the StatefulSet) and the client
//! Service the application connects to.

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{object_meta, selector_labels};
use crate::controller::servicedatabase::validate::ValidatedDatabase;

/// `<name>-db-hl`, governing the StatefulSet.
pub fn headless(db: &ValidatedDatabase, owner: &OwnerReference) -> Service {
    Service {
        metadata: object_meta(db, headless_name(db), "database", owner),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            publish_not_ready_addresses: Some(true),
            selector: Some(selector_labels(db)),
            ports: Some(vec![port(db)]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// `<name>-db`, the address in the credentials Secret.
pub fn client(db: &ValidatedDatabase, owner: &OwnerReference) -> Service {
    Service {
        metadata: object_meta(db, db.instance_name(), "database", owner),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(selector_labels(db)),
            ports: Some(vec![port(db)]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Name of the headless Service.
pub fn headless_name(db: &ValidatedDatabase) -> String {
    format!("{}-hl", db.instance_name())
}

fn port(db: &ValidatedDatabase) -> ServicePort {
    ServicePort {
        name: Some(db.engine_spec.port_name().into()),
        port: db.engine_spec.port(),
        target_port: Some(IntOrString::String(db.engine_spec.port_name().into())),
        protocol: Some("TCP".into()),
        ..Default::default()
    }
}
