//! The administrator Secret and the service's credentials Secret.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

use super::{Credentials, object_meta};
use crate::controller::servicedatabase::validate::ValidatedDatabase;
use crate::engine::Connection;

/// Component label of the service's credentials Secret.
pub const COMPONENT_CREDENTIALS: &str = "credentials";
/// Key of the credentials Secret holding the CA of a server reached over
/// TLS with `VerifyFull` and `caSecretRef`.
pub const CA_KEY: &str = "ca.crt";
/// Component label of the administrator Secret.
pub const COMPONENT_ADMIN: &str = "admin-credentials";

/// The administrator account of a dedicated instance, mounted into the
/// database pod only.
pub fn admin(db: &ValidatedDatabase, creds: &Credentials, owner: &OwnerReference) -> Secret {
    Secret {
        metadata: object_meta(db, db.admin_secret_name.clone(), COMPONENT_ADMIN, owner),
        type_: Some("Opaque".into()),
        data: Some(data([
            ("username", db.engine_spec.admin_username().to_string()),
            ("password", creds.admin_password.clone()),
        ])),
        ..Default::default()
    }
}

/// The service's connection details, with the same keys for every engine so
/// a Deployment can `envFrom` it unchanged.
pub fn credentials(db: &ValidatedDatabase, creds: &Credentials, owner: &OwnerReference) -> Secret {
    let host = db.host();
    let port = db.port();
    let current = &creds.logins.current;
    let tls = db.server.as_ref().map(|server| &server.tls);
    let uri = db.engine_spec.uri(&Connection {
        host: &host,
        port,
        database: &db.database,
        username: &current.username,
        password: &current.password,
        tls: tls.map(|t| t.mode).unwrap_or_default(),
    });
    let mut values = data([
        ("engine", db.engine.as_str().to_string()),
        ("host", host),
        ("port", port.to_string()),
        ("database", db.database.clone()),
        ("username", current.username.clone()),
        ("password", current.password.clone()),
        (db.engine_spec.customary_variable(), uri.clone()),
        ("uri", uri),
    ]);
    for (key, value) in db.engine_spec.extra_secret_keys(&db.username) {
        values.insert(key.to_string(), ByteString(value.into_bytes()));
    }
    // The CA that verifies the server (a public certificate, not a
    // secret): clients and the backup agent mount it from here.
    if let Some(ca) = tls.and_then(|t| t.ca_pem.as_ref()) {
        values.insert(CA_KEY.into(), ByteString(ca.clone().into_bytes()));
    }
    if let Some(schema) = &db.schema {
        values.insert("schema".into(), ByteString(schema.clone().into_bytes()));
    }
    // A rotation under way: the login being prepared, and the one that
    // stays valid for the grace period.
    for (prefix, login) in [
        ("next", &creds.logins.next),
        ("previous", &creds.logins.previous),
    ] {
        if let Some(login) = login {
            values.insert(
                format!("{prefix}-username"),
                ByteString(login.username.clone().into_bytes()),
            );
            values.insert(
                format!("{prefix}-password"),
                ByteString(login.password.clone().into_bytes()),
            );
        }
    }
    let mut metadata = object_meta(db, db.secret_name.clone(), COMPONENT_CREDENTIALS, owner);
    if !creds.annotations.is_empty() {
        metadata.annotations = Some(creds.annotations.clone());
    }
    Secret {
        metadata,
        type_: Some("Opaque".into()),
        data: Some(values),
        ..Default::default()
    }
}

fn data<const N: usize>(items: [(&str, String); N]) -> BTreeMap<String, ByteString> {
    items
        .into_iter()
        .map(|(k, v)| (k.to_string(), ByteString(v.into_bytes())))
        .collect()
}
