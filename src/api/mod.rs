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
pub use service_database::{
    Phase, PostgresSpec, ServiceDatabase, ServiceDatabaseSpec, ServiceDatabaseStatus,
};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

/// API group of every servicedb kind.
pub const GROUP: &str = "servicedb.dev";

/// Every CRD servicedb serves, in a stable order, each with the text
/// `kubectl explain <kind>` shows for the kind itself.
pub fn crds() -> Vec<CustomResourceDefinition> {
    [
        (DatabaseBackup::crd(), DATABASE_BACKUP),
        (DatabaseClass::crd(), DATABASE_CLASS),
        (DatabaseServer::crd(), DATABASE_SERVER),
        (ServiceDatabase::crd(), SERVICE_DATABASE),
    ]
    .into_iter()
    .map(|(mut crd, text)| {
        for version in &mut crd.spec.versions {
            if let Some(schema) = version
                .schema
                .as_mut()
                .and_then(|s| s.open_api_v3_schema.as_mut())
            {
                schema.description = Some(text.to_string());
            }
        }
        crd
    })
    .collect()
}

const SERVICE_DATABASE: &str = "\
ServiceDatabase (short name sdb) is one microservice's private database. \
The application team declares the engine (Postgres, Redis or MongoDB), the \
pods that own it (spec.owner.podSelector) and how it is isolated: a \
dedicated instance (a StatefulSet fenced by a NetworkPolicy) or its own \
database, schema or key prefix with its own login on a shared \
DatabaseServer. servicedb writes the connection details to a Secret \
(<name>-db by default), rotates its password, takes and verifies backups, \
and reports progress in status.phase and the conditions Ready, SpecValid, \
InstanceReady, CredentialsReady, NetworkIsolated and BackupHealthy.";

const DATABASE_CLASS: &str = "\
DatabaseClass (short name dbc) is a platform team's approved engine: the \
versions a ServiceDatabase may ask for and the defaults it gets (image, \
storage, resources), like a StorageClass. The class marked default for an \
engine serves every ServiceDatabase of that engine that names no class. A \
ServiceDatabase asking for what its class does not allow gets \
SpecValid=False naming the field.";

const DATABASE_SERVER: &str = "\
DatabaseServer (short name dbs) is a database server that hosts many \
services' databases (ServiceDatabase isolation Database or Schema): an \
existing server reached over the network with an administrator Secret \
(spec.external), or one servicedb runs itself (spec.managed). \
spec.allowedNamespaces says which namespaces may place databases on it; \
status says whether it is reachable, its version and how many databases it \
hosts.";

const DATABASE_BACKUP: &str = "\
DatabaseBackup (short name dbb) is one backup of a ServiceDatabase: made \
by its backup schedule, by its final backup on deletion, or by hand (create \
one to back up now). A Job runs the backup agent in the engine's image; \
status says the phase, where the archive is, its size and checksum, and \
whether a restore into a scratch database verified it. Deleting a \
DatabaseBackup deletes its archive.";
