//! MongoDB: the official `mongo` image, run by the instance manager as a
//! single-member replica set (so transactions and change streams work). The
//! service's user has `readWrite` on its own database only.

use super::tls::TlsMode;
use super::{Connection, EngineSpec, encode_userinfo};

/// MongoDB.
pub struct MongoDB;

/// Name of the replica set servicedb initiates.
pub const REPLICA_SET: &str = "rs0";

impl EngineSpec for MongoDB {
    fn default_image(&self) -> &'static str {
        "docker.io/library/mongo"
    }
    fn port(&self) -> i32 {
        27017
    }
    fn port_name(&self) -> &'static str {
        "mongodb"
    }
    fn admin_username(&self) -> &'static str {
        "root"
    }
    fn run_as_user(&self) -> i64 {
        // The uid and gid of the `mongodb` user in the official image.
        999
    }
    fn customary_variable(&self) -> &'static str {
        "MONGODB_URI"
    }
    fn uri(&self, c: &Connection<'_>) -> String {
        // directConnection: clients talk to the one member through the
        // Service instead of discovering it by its pod name. The mechanism is
        // named because the users have SCRAM-SHA-256 only, and some drivers
        // probe the mechanisms against `admin` whatever the authSource.
        let tls = match c.tls {
            TlsMode::Disable => "",
            TlsMode::Require => "&tls=true&tlsAllowInvalidCertificates=true",
            TlsMode::VerifyFull => "&tls=true",
        };
        format!(
            "mongodb://{}:{}@{}:{}/{db}?authSource={db}&authMechanism=SCRAM-SHA-256&directConnection=true{tls}",
            encode_userinfo(c.username),
            encode_userinfo(c.password),
            c.host,
            c.port,
            db = encode_userinfo(c.database),
        )
    }
    fn versions(&self) -> &'static [&'static str] {
        &["6.0", "7.0", "8.0"]
    }
    fn default_version(&self) -> &'static str {
        "7.0"
    }
    fn default_resources(&self) -> k8s_openapi::api::core::v1::ResourceRequirements {
        super::resources("200m", "512Mi", "1Gi")
    }
    fn default_storage(&self) -> &'static str {
        // The oplog of the replica set is capped at 5% of the disk but never
        // below 990 MB.
        "5Gi"
    }
    fn dedicated_supported(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uri_authenticates_against_the_service_database() {
        let c = Connection {
            host: "catalog-db.shop.svc",
            port: 27017,
            database: "catalog",
            username: "catalog",
            password: "s@fe",
            tls: TlsMode::Disable,
        };
        assert_eq!(
            MongoDB.uri(&c),
            "mongodb://catalog:s%40fe@catalog-db.shop.svc:27017/catalog?authSource=catalog&authMechanism=SCRAM-SHA-256&directConnection=true"
        );
        assert!(
            MongoDB
                .uri(&Connection {
                    tls: TlsMode::VerifyFull,
                    ..c
                })
                .ends_with("&directConnection=true&tls=true")
        );
    }
}
