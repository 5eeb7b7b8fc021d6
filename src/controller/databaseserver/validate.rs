//! Step 2 of the DatabaseServer pipeline (pure): spec + admin Secret → the
//! target to probe, or an [`Invalid`] naming the field to change.

use std::fmt;

use crate::api::DatabaseServer;
use crate::api::common::Engine;
use crate::engine::tls::TlsSettings;
pub use crate::model::database::Invalid;
pub use crate::model::server::{SecretData, tls_settings};

const SECRET_FIELD: &str = "spec.external.adminSecretRef";

/// An external server and the administrator's login.
#[derive(Clone, PartialEq, Eq)]
pub struct Target {
    pub engine: Engine,
    pub host: String,
    pub port: u16,
    pub tls: TlsSettings,
    pub username: String,
    pub password: String,
}

// Hand-written so that a `{:?}` anywhere can never print the password.
impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Target")
            .field("engine", &self.engine)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("tls", &self.tls.mode)
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// Checks what the API server cannot: that this release can reach the server
/// and that the admin Secret holds a login.
pub fn validate(
    server: &DatabaseServer,
    admin_secret: &SecretData,
    ca_secret: &SecretData,
) -> Result<Target, Invalid> {
    let Some(external) = &server.spec.external else {
        // A managed server is built, not validated here (see `managed`).
        return Err(invalid(
            "spec.external",
            "InvalidSpec",
            "set spec.external (or spec.managed)",
        ));
    };
    let tls = tls_settings(external.tls.as_ref(), ca_secret)?;
    let port = u16::try_from(external.port)
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| {
            invalid(
                "spec.external.port",
                "InvalidPort",
                format!("{} is not a TCP port", external.port),
            )
        })?;
    let name = &external.admin_secret_ref.name;
    let Some(data) = admin_secret else {
        return Err(invalid(
            SECRET_FIELD,
            "SecretNotFound",
            format!("Secret {name} does not exist"),
        ));
    };
    let key = |key: &str| -> Result<String, Invalid> {
        let value = data
            .get(key)
            .and_then(|v| String::from_utf8(v.0.clone()).ok())
            .map(|v| v.trim_end_matches(['\r', '\n']).to_owned())
            .filter(|v| !v.is_empty());
        value.ok_or_else(|| {
            invalid(
                SECRET_FIELD,
                "SecretKeyMissing",
                format!("Secret {name} has no non-empty UTF-8 key {key:?}"),
            )
        })
    };
    Ok(Target {
        engine: server.spec.engine,
        host: external.host.clone(),
        port,
        tls,
        username: key("username")?,
        password: key("password")?,
    })
}

fn invalid(field: &'static str, reason: &'static str, message: impl Into<String>) -> Invalid {
    Invalid {
        field,
        reason,
        message: message.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::database_server::{TlsMode, TlsSpec};
    use k8s_openapi::ByteString;
    use serde_json::json;

    fn server(spec: serde_json::Value) -> DatabaseServer {
        serde_json::from_value(json!({
            "apiVersion": "servicedb.dev/v1alpha1", "kind": "DatabaseServer",
            "metadata": {"name": "shared", "namespace": "platform"},
            "spec": spec,
        }))
        .unwrap()
    }

    fn external() -> DatabaseServer {
        server(json!({"engine": "Postgres", "external": {
            "host": "db.example", "port": 5432, "adminSecretRef": {"name": "admin"}}}))
    }

    fn secret(pairs: &[(&str, &str)]) -> SecretData {
        Some(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
                .collect(),
        )
    }

    #[test]
    fn external_with_a_login_is_a_target() {
        let t = validate(
            &external(),
            &secret(&[
                ("username", "admin"),
                (
                    "password", "s3cret
",
                ),
            ]),
            &None,
        )
        .unwrap();
        assert_eq!((t.host.as_str(), t.port), ("db.example", 5432));
        assert_eq!(
            (t.username.as_str(), t.password.as_str()),
            ("admin", "s3cret")
        );
        assert!(!format!("{t:?}").contains("s3cret"));
    }

    #[test]
    fn a_missing_secret_names_the_field() {
        let e = validate(&external(), &None, &None).unwrap_err();
        assert_eq!((e.field, e.reason), (SECRET_FIELD, "SecretNotFound"));
        assert!(
            e.to_string().contains("spec.external.adminSecretRef"),
            "{e}"
        );
        assert!(e.to_string().contains("admin"), "{e}");
    }

    #[test]
    fn missing_keys_name_the_field_and_key_without_values() {
        for (pairs, key) in [
            (vec![("password", "s3cret")], "username"),
            (vec![("username", "admin")], "password"),
            (vec![("username", "admin"), ("password", "")], "password"),
        ] {
            let e = validate(&external(), &secret(&pairs), &None).unwrap_err();
            assert_eq!((e.field, e.reason), (SECRET_FIELD, "SecretKeyMissing"));
            assert!(e.message.contains(key), "{e}");
            assert!(!e.to_string().contains("s3cret"), "{e}");
        }
    }

    #[test]
    fn tls_settings_check_the_ca() {
        let s = server(json!({"engine": "Postgres", "external": {
            "host": "db", "port": 5432, "adminSecretRef": {"name": "admin"},
            "tls": {"mode": "VerifyFull", "caSecretRef": {"name": "db-ca"}}}}));
        let login = secret(&[("username", "a"), ("password", "b")]);
        let field = "spec.external.tls.caSecretRef";
        let e = validate(&s, &login, &None).unwrap_err();
        assert_eq!((e.field, e.reason), (field, "SecretNotFound"));
        let e = validate(&s, &login, &secret(&[("tls.crt", "x")])).unwrap_err();
        assert_eq!((e.field, e.reason), (field, "SecretKeyMissing"));
        let e = validate(&s, &login, &secret(&[("ca.crt", "garbage")])).unwrap_err();
        assert_eq!((e.field, e.reason), (field, "InvalidCertificate"));
        let require = server(json!({"engine": "Redis", "external": {
            "host": "db", "port": 6379, "adminSecretRef": {"name": "admin"},
            "tls": {"mode": "Require"}}}));
        let t = validate(&require, &login, &None).unwrap();
        assert_eq!(t.tls.mode, TlsMode::Require);
        assert_eq!(t.tls.ca_pem, None);
    }

    #[test]
    fn a_ca_without_a_mode_verifies_the_server() {
        // Checked as PEM only; the handshake checks the certificate.
        let pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
        let spec: TlsSpec =
            serde_json::from_value(json!({"caSecretRef": {"name": "db-ca"}})).unwrap();
        assert_eq!(spec.mode, None);
        let t = tls_settings(Some(&spec), &secret(&[("ca.crt", pem)])).unwrap();
        assert_eq!(t.mode, TlsMode::VerifyFull);
        let none: TlsSpec = serde_json::from_value(json!({})).unwrap();
        assert_eq!(
            tls_settings(Some(&none), &None).unwrap().mode,
            TlsMode::Disable
        );
    }
}
