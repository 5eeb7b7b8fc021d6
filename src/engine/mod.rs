//! Per-engine knowledge behind one trait: images, ports, users, connection
//! URIs, and the live user/grant logic shared by the operator (shared servers)
//! and the instance manager (dedicated instances). One file per engine.

pub mod exporter;
pub mod logins;
pub mod mongodb;
pub mod mongodb_users;
pub mod monitoring;
pub mod postgres;
pub mod postgres_parameters;
pub mod postgres_users;
pub mod redis;
pub mod redis_acl;
pub mod suspend;
pub mod tls;

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use crate::api::Engine;

/// Requests of `cpu` and `memory`, and a memory limit.
pub fn resources(cpu: &str, memory: &str, memory_limit: &str) -> ResourceRequirements {
    let q = |s: &str| Quantity(s.to_string());
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".into(), q(cpu)),
            ("memory".into(), q(memory)),
        ])),
        limits: Some(BTreeMap::from([("memory".into(), q(memory_limit))])),
        ..Default::default()
    }
}

/// Everything the builders need to know about an engine's dedicated instance.
/// Adding an engine means adding one file that implements this trait and one
/// arm in [`for_engine`].
pub trait EngineSpec: Send + Sync {
    /// Official image repository (without tag); the tag is the version.
    fn default_image(&self) -> &'static str;
    /// TCP port clients connect to.
    fn port(&self) -> i32;
    /// Name of the port on the container and Services.
    fn port_name(&self) -> &'static str;
    /// The administrator account created by the instance manager.
    fn admin_username(&self) -> &'static str;
    /// The numeric user and group the engine image runs its server as.
    fn run_as_user(&self) -> i64;
    /// The environment variable applications customarily read (`DATABASE_URL`).
    fn customary_variable(&self) -> &'static str;
    /// The `database` of the credentials Secret for a service identifier
    /// (`orders` for Postgres and MongoDB; a database index for Redis).
    fn database_name(&self, identifier: &str) -> String {
        identifier.to_string()
    }
    /// Engine-specific keys of the credentials Secret, beyond the common ones.
    fn extra_secret_keys(&self, _identifier: &str) -> Vec<(&'static str, String)> {
        Vec::new()
    }
    /// Major versions servicedb supports, oldest first.
    fn versions(&self) -> &'static [&'static str];
    /// The version used when neither the resource nor its class names one.
    fn default_version(&self) -> &'static str;
    /// Data volume size when neither the resource nor its class names one.
    fn default_storage(&self) -> &'static str {
        "1Gi"
    }
    /// Container resources when neither the resource nor its class names them.
    fn default_resources(&self) -> ResourceRequirements;
    /// A connection URI for the given credentials.
    fn uri(&self, c: &Connection<'_>) -> String;
    /// Whether servicedb can run a dedicated instance of this engine yet.
    fn dedicated_supported(&self) -> bool;
}

/// Connection details as they go into a credentials Secret.
#[derive(Clone, Copy)]
pub struct Connection<'a> {
    pub host: &'a str,
    pub port: i32,
    pub database: &'a str,
    pub username: &'a str,
    pub password: &'a str,
    /// How the server is reached: the URI asks for TLS when it is on.
    pub tls: tls::TlsMode,
}

/// The implementation for an engine.
pub fn for_engine(engine: Engine) -> &'static dyn EngineSpec {
    match engine {
        Engine::Postgres => &postgres::Postgres,
        Engine::Redis => &redis::Redis,
        Engine::MongoDB => &mongodb::MongoDB,
    }
}

/// The versions a class allows (every version servicedb supports for the
/// engine when it lists none) and the one a ServiceDatabase that names none
/// gets: the class's `defaultVersion`, else the engine's default when
/// allowed, else the last allowed one.
pub fn class_versions(
    class: &crate::api::database_class::DatabaseClassSpec,
) -> (Vec<String>, Option<String>) {
    let engine = for_engine(class.engine);
    let allowed: Vec<String> = if class.versions.is_empty() {
        engine.versions().iter().map(|v| v.to_string()).collect()
    } else {
        class.versions.clone()
    };
    let default = class
        .default_version
        .clone()
        .or_else(|| {
            let engine_default = engine.default_version().to_string();
            allowed.contains(&engine_default).then_some(engine_default)
        })
        .or_else(|| allowed.last().cloned());
    (allowed, default)
}

/// Percent-encodes a URI user-info or path component.
pub fn encode_userinfo(s: &str) -> String {
    // RFC 3986 unreserved characters stay as they are (`shop_orders`).
    const ENCODE: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~');
    percent_encoding::utf8_percent_encode(s, ENCODE).to_string()
}

/// `name` if it is at most `max` bytes, else its first `max - 9` bytes, `_`
/// and 8 hex digits of its SHA-256: a readable start, and two long names
/// that share it still differ. Names here are ASCII.
pub fn fit_name(name: &str, max: usize) -> String {
    use sha2::{Digest, Sha256};
    if name.len() <= max {
        return name.to_string();
    }
    let hash = Sha256::digest(name.as_bytes());
    let hex: String = hash.iter().take(4).map(|b| format!("{b:02x}")).collect();
    let start = name.get(..max.saturating_sub(9)).unwrap_or(name);
    format!("{start}_{hex}")
}

#[cfg(test)]
mod tests {
    #[test]
    fn long_names_keep_their_start_and_a_hash_of_the_whole() {
        assert_eq!(super::fit_name("shop_orders", 61), "shop_orders");
        let a = format!("{}_a", "n".repeat(70));
        let b = format!("{}_b", "n".repeat(70));
        let (fa, fb) = (super::fit_name(&a, 61), super::fit_name(&b, 61));
        assert_eq!(fa.len(), 61);
        assert!(
            fa.starts_with(&a[..52]) && fa.as_bytes()[52] == b'_',
            "{fa}"
        );
        assert_ne!(fa, fb, "names that share the start still differ");
        assert_eq!(super::fit_name(&a, 61), fa, "stable");
    }
}
