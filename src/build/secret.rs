//! The administrator Secret and the service's credentials Secret.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

use super::{Credentials, object_meta};
use crate::api::Engine;
use crate::api::common::CredentialFormat;
use crate::engine::Connection;
use crate::engine::logins::Login;
use crate::engine::monitoring;
use crate::engine::tls::TlsMode;
use crate::model::database::ValidatedDatabase;

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
    let mut values = data([
        ("username", db.engine_spec.admin_username().to_string()),
        ("password", creds.admin_password.clone()),
    ]);
    // The exporter's login, which the instance manager keeps in step
    // (and removes once these keys are gone).
    if db.monitoring.is_some() {
        values.extend(data([
            (monitoring::USERNAME_KEY, monitoring::USERNAME.to_string()),
            (
                monitoring::PASSWORD_KEY,
                monitoring::derive_password(&creds.admin_password),
            ),
        ]));
    }
    // spec.postgres.parameters, which the instance manager reloads from here.
    if !db.postgres_parameters.is_empty() {
        use crate::engine::postgres_parameters::{SECRET_KEY, render};
        values.extend(data([(SECRET_KEY, render(&db.postgres_parameters))]));
    }
    // spec.redis's memory settings, which the instance manager applies live.
    if let Some(bytes) = db.redis_maxmemory {
        values.extend(data([(
            crate::engine::redis::MAXMEMORY_KEY,
            bytes.to_string(),
        )]));
    }
    if let Some(policy) = db.redis_maxmemory_policy {
        values.extend(data([(
            crate::engine::redis::MAXMEMORY_POLICY_KEY,
            policy.as_str().to_string(),
        )]));
    }
    Secret {
        metadata: object_meta(db, db.admin_secret_name.clone(), COMPONENT_ADMIN, owner),
        type_: Some("Opaque".into()),
        data: Some(values),
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
    let tls_mode = tls.map(|t| t.mode).unwrap_or_default();
    let uri = db.engine_spec.uri(&Connection {
        host: &host,
        port,
        database: &db.database,
        username: &current.username,
        password: &current.password,
        tls: tls_mode,
    });
    let mut values = data([
        ("engine", db.engine.as_str().to_string()),
        ("host", host),
        ("port", port.to_string()),
        ("database", db.database.clone()),
        ("username", current.username.clone()),
        ("password", current.password.clone()),
        (db.engine_spec.customary_variable(), uri.clone()),
        ("uri", uri.clone()),
    ]);
    values.extend(format_keys(db, current, tls_mode, &uri));
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

/// The keys of `spec.credentials.format` beyond the common ones, all for the
/// current login (`uri` is its connection URI): `jdbc-url` (Postgres, always),
/// then those of each format asked for.
fn format_keys(
    db: &ValidatedDatabase,
    current: &Login,
    tls: TlsMode,
    uri: &str,
) -> BTreeMap<String, ByteString> {
    let jdbc_url = || {
        let sslmode = match tls {
            TlsMode::Disable => "",
            TlsMode::Require => "?sslmode=require",
            TlsMode::VerifyFull => "?sslmode=verify-full",
        };
        format!(
            "jdbc:postgresql://{}:{}/{}{sslmode}",
            db.host(),
            db.port(),
            crate::engine::encode_userinfo(&db.database)
        )
    };
    let mut keys: Vec<(&str, String)> = Vec::new();
    if db.engine == Engine::Postgres {
        keys.push(("jdbc-url", jdbc_url()));
    }
    for format in &db.credential_formats {
        match (format, db.engine) {
            (CredentialFormat::Default, _) => {}
            (CredentialFormat::Spring, Engine::Postgres) => keys.extend([
                ("SPRING_DATASOURCE_URL", jdbc_url()),
                ("SPRING_DATASOURCE_USERNAME", current.username.clone()),
                ("SPRING_DATASOURCE_PASSWORD", current.password.clone()),
            ]),
            (CredentialFormat::Spring, Engine::Redis) => {
                keys.push(("SPRING_DATA_REDIS_URL", uri.to_string()))
            }
            (CredentialFormat::Spring, Engine::MongoDB) => {
                keys.push(("SPRING_DATA_MONGODB_URI", uri.to_string()))
            }
            (CredentialFormat::ServiceBinding, engine) => {
                let kind = match engine {
                    Engine::Postgres => "postgresql",
                    Engine::Redis => "redis",
                    Engine::MongoDB => "mongodb",
                };
                keys.extend([("type", kind.to_string()), ("provider", "servicedb".into())]);
                match (engine, tls) {
                    (_, TlsMode::Disable) => {}
                    (Engine::Postgres, TlsMode::Require) => {
                        keys.push(("sslmode", "require".into()))
                    }
                    (Engine::Postgres, TlsMode::VerifyFull) => {
                        keys.push(("sslmode", "verify-full".into()))
                    }
                    (Engine::Redis, _) => keys.push(("ssl", "true".into())),
                    (Engine::MongoDB, _) => {}
                }
            }
            // Refused by the CRD's schema for other engines.
            (CredentialFormat::Pgpass, Engine::Postgres) => keys.push((
                "pgpass",
                format!(
                    "{}:{}:{}:{}:{}\n",
                    pgpass_field(&db.host()),
                    db.port(),
                    pgpass_field(&db.database),
                    pgpass_field(&current.username),
                    pgpass_field(&current.password),
                ),
            )),
            (CredentialFormat::Pgpass, _) => {}
        }
    }
    keys.into_iter()
        .map(|(k, v)| (k.to_string(), ByteString(v.into_bytes())))
        .collect()
}

/// A field of a libpq password file line: `:` and `\` are escaped.
fn pgpass_field(value: &str) -> String {
    value.replace('\\', "\\\\").replace(':', "\\:")
}

fn data<const N: usize>(items: [(&str, String); N]) -> BTreeMap<String, ByteString> {
    items
        .into_iter()
        .map(|(k, v)| (k.to_string(), ByteString(v.into_bytes())))
        .collect()
}
