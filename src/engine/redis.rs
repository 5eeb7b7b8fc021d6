//! Redis: the official `redis` image, run by the instance manager. The
//! service's ACL user may touch only keys and channels under its prefix.

use super::tls::TlsMode;
use super::{Connection, EngineSpec, encode_userinfo};

/// Redis.
pub struct Redis;

/// Keys of the administrator Secret with `spec.redis.maxmemory` (bytes)
/// and `spec.redis.maxmemoryPolicy`, which the instance manager applies
/// with `CONFIG SET` (Redis's defaults, no limit and `noeviction`, without
/// them).
pub const MAXMEMORY_KEY: &str = "redis-maxmemory";
pub const MAXMEMORY_POLICY_KEY: &str = "redis-maxmemory-policy";

/// The key prefix of a service: `cart_items` → `cart_items:`.
pub fn key_prefix(identifier: &str) -> String {
    format!("{identifier}:")
}

impl EngineSpec for Redis {
    fn default_image(&self) -> &'static str {
        "docker.io/library/redis"
    }
    fn port(&self) -> i32 {
        6379
    }
    fn port_name(&self) -> &'static str {
        "redis"
    }
    fn admin_username(&self) -> &'static str {
        "admin"
    }
    fn run_as_user(&self) -> i64 {
        // The uid and gid of the `redis` user in the official image.
        999
    }
    fn customary_variable(&self) -> &'static str {
        "REDIS_URL"
    }
    fn database_name(&self, _identifier: &str) -> String {
        "0".into()
    }
    fn extra_secret_keys(&self, identifier: &str) -> Vec<(&'static str, String)> {
        vec![("keyPrefix", key_prefix(identifier))]
    }
    fn uri(&self, c: &Connection<'_>) -> String {
        // `rediss://` is TLS; clients check the certificate by default.
        let scheme = match c.tls {
            TlsMode::Disable => "redis",
            TlsMode::Require | TlsMode::VerifyFull => "rediss",
        };
        format!(
            "{scheme}://{}:{}@{}:{}/{}",
            encode_userinfo(c.username),
            encode_userinfo(c.password),
            c.host,
            c.port,
            c.database
        )
    }
    fn versions(&self) -> &'static [&'static str] {
        &["7.2", "7.4", "8.0"]
    }
    fn default_version(&self) -> &'static str {
        "7.4"
    }
    fn default_resources(&self) -> k8s_openapi::api::core::v1::ResourceRequirements {
        super::resources("50m", "128Mi", "256Mi")
    }
    fn dedicated_supported(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uri_names_user_and_database_index() {
        let c = Connection {
            host: "cart-db.shop.svc",
            port: 6379,
            database: "0",
            username: "cart",
            password: "p:w",
            tls: TlsMode::Disable,
        };
        assert_eq!(Redis.uri(&c), "redis://cart:p%3Aw@cart-db.shop.svc:6379/0");
        assert_eq!(
            Redis.uri(&Connection {
                tls: TlsMode::VerifyFull,
                ..c
            }),
            "rediss://cart:p%3Aw@cart-db.shop.svc:6379/0"
        );
        assert_eq!(
            Redis.extra_secret_keys("cart"),
            vec![("keyPrefix", "cart:".to_string())]
        );
    }
}
