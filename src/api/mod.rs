//! The servicedb API, group `servicedb.dev`, version `v1alpha1`: one file per
//! kind, plus shared types and condition helpers.

pub mod common;
pub mod conditions;
pub mod database_backup;
pub mod database_class;
pub mod database_server;
pub mod service_database;

pub use common::{DeletionPolicy, Engine, Isolation};
pub use database_backup::DatabaseBackup;
pub use database_class::DatabaseClass;
pub use database_server::DatabaseServer;
pub use service_database::{Phase, ServiceDatabase, ServiceDatabaseSpec, ServiceDatabaseStatus};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

/// API group of every servicedb kind.
pub const GROUP: &str = "servicedb.dev";

/// Every CRD servicedb serves, in a stable order.
pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![
        DatabaseBackup::crd(),
        DatabaseClass::crd(),
        DatabaseServer::crd(),
        ServiceDatabase::crd(),
    ]
}
