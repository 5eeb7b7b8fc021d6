//! The headless Service (stable pod DNS for the StatefulSet) and the client
//! Service the application connects to (and Prometheus scrapes, on `metrics`,
//! when the database is monitored).

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{object_meta, selector_labels};
use crate::engine::exporter;
use crate::model::database::ValidatedDatabase;

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
            ports: Some(std::iter::once(port(db)).chain(metrics_port(db)).collect()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Name of the headless Service.
pub fn headless_name(db: &ValidatedDatabase) -> String {
    format!("{}-hl", db.instance_name())
}

/// The exporter's `metrics` port, when the database is monitored.
fn metrics_port(db: &ValidatedDatabase) -> Option<ServicePort> {
    db.monitoring.as_ref().map(|_| ServicePort {
        name: Some(exporter::PORT_NAME.into()),
        port: exporter::exporter(db.engine).port,
        target_port: Some(IntOrString::String(exporter::PORT_NAME.into())),
        protocol: Some("TCP".into()),
        ..Default::default()
    })
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
