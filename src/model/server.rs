//! What servicedb knows of a shared server: where it is, how to log in as
//! its administrator, which server two DatabaseServers are. Pure.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use kube::ResourceExt;

use super::database::Invalid;
use crate::api::database_server::{TlsMode, TlsSpec};
use crate::engine::tls::TlsSettings;

/// What the pipeline needs of a shared `DatabaseServer`.
#[derive(Clone)]
pub struct ServerFacts {
    pub name: String,
    pub namespace: String,
    pub engine: crate::api::Engine,
    pub host: String,
    pub port: i32,
    pub admin_username: String,
    pub admin_password: String,
    /// Postgres: the database whose schemas isolation `Schema` hands out.
    pub schema_database: String,
    /// TLS towards the server.
    pub tls: crate::engine::tls::TlsSettings,
}

#[cfg(test)]
impl ServerFacts {
    /// A shared PostgreSQL server `shop/shared` at `pg.example.com:5432`,
    /// administrator password `admin-secret`, plain TCP.
    pub fn example() -> ServerFacts {
        ServerFacts {
            name: "shared".into(),
            namespace: "shop".into(),
            engine: crate::api::Engine::Postgres,
            host: "pg.example.com".into(),
            port: 5432,
            admin_username: "admin".into(),
            admin_password: "admin-secret".into(),
            schema_database: DEFAULT_SCHEMA_DATABASE.into(),
            tls: Default::default(),
        }
    }
}

impl std::fmt::Debug for ServerFacts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerFacts")
            .field("name", &self.name)
            .field("namespace", &self.namespace)
            .field("host", &self.host)
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

/// Which server a DatabaseServer reaches, as `host:port` (the host in
/// lower case, without a trailing dot): two DatabaseServers with the same
/// identity are one server. A managed server is its instance's Service.
/// Different names of one host (an IP address and a DNS name) are not
/// recognised as one.
pub fn server_identity(server: &crate::api::DatabaseServer) -> Option<String> {
    let (host, port) = match (&server.spec.external, &server.spec.managed) {
        (Some(external), _) => (external.host.clone(), external.port),
        (None, Some(_)) => (
            super::managed::managed_host(&server.name_any(), &server.namespace()?),
            crate::engine::for_engine(server.spec.engine).port(),
        ),
        (None, None) => return None,
    };
    Some(format!(
        "{}:{port}",
        host.trim_end_matches('.').to_ascii_lowercase()
    ))
}

/// The database holding the schemas of isolation `Schema`, unless the
/// DatabaseServer names another.
pub const DEFAULT_SCHEMA_DATABASE: &str = "servicedb";

/// The data of the admin Secret, `None` when it does not exist.
pub type SecretData = Option<BTreeMap<String, ByteString>>;

/// The TLS settings, with the CA checked: a CA Secret that is missing,
/// lacks `ca.crt` or holds no certificate is named in the condition.
pub fn tls_settings(
    spec: Option<&TlsSpec>,
    ca_secret: &SecretData,
) -> Result<TlsSettings, Invalid> {
    const FIELD: &str = "spec.external.tls.caSecretRef";
    let Some(spec) = spec else {
        return Ok(TlsSettings::default());
    };
    let ca_pem = match &spec.ca_secret_ref {
        None => None,
        Some(ca) => {
            let Some(data) = ca_secret else {
                return Err(invalid(
                    FIELD,
                    "SecretNotFound",
                    format!("Secret {} does not exist", ca.name),
                ));
            };
            let pem = data
                .get("ca.crt")
                .and_then(|v| String::from_utf8(v.0.clone()).ok())
                .ok_or_else(|| {
                    invalid(
                        FIELD,
                        "SecretKeyMissing",
                        format!("Secret {} has no UTF-8 key \"ca.crt\"", ca.name),
                    )
                })?;
            crate::engine::tls::ca_certificates(&pem).map_err(|e| {
                invalid(
                    FIELD,
                    "InvalidCertificate",
                    format!("Secret {}: {e}", ca.name),
                )
            })?;
            Some(pem)
        }
    };
    if spec.mode == Some(TlsMode::Disable) && ca_pem.is_some() {
        return Err(invalid(
            "spec.external.tls.mode",
            "TlsDisabled",
            "a CA is given but mode is Disable; set mode VerifyFull or Require",
        ));
    }
    // A CA is given to be checked against: unset, the mode verifies.
    let mode = spec.mode.unwrap_or(if ca_pem.is_some() {
        TlsMode::VerifyFull
    } else {
        TlsMode::Disable
    });
    Ok(TlsSettings { mode, ca_pem })
}

fn invalid(field: &'static str, reason: &'static str, message: impl Into<String>) -> Invalid {
    Invalid {
        field,
        reason,
        message: message.into(),
    }
}
