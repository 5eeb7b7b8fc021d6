//! The Prometheus exporter each engine is watched with: the upstream
//! project's image at a pinned version, and the port it serves metrics on.

use crate::api::Engine;

/// An engine's exporter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exporter {
    /// Upstream image repository, without tag.
    pub default_image: &'static str,
    /// The pinned version: the image tag.
    pub tag: &'static str,
    /// The port `/metrics` is served on.
    pub port: i32,
}

/// Name of the metrics port on containers and Services.
pub const PORT_NAME: &str = "metrics";

/// The exporter of `engine`.
pub fn exporter(engine: Engine) -> &'static Exporter {
    match engine {
        Engine::Postgres => &POSTGRES,
        Engine::Redis => &REDIS,
        Engine::MongoDB => &MONGODB,
    }
}

/// prometheus-community/postgres_exporter.
const POSTGRES: Exporter = Exporter {
    default_image: "quay.io/prometheuscommunity/postgres-exporter",
    tag: "v0.17.1",
    port: 9187,
};

/// oliver006/redis_exporter.
const REDIS: Exporter = Exporter {
    default_image: "docker.io/oliver006/redis_exporter",
    tag: "v1.67.0",
    port: 9121,
};

/// percona/mongodb_exporter.
const MONGODB: Exporter = Exporter {
    default_image: "docker.io/percona/mongodb_exporter",
    tag: "0.43.1",
    port: 9216,
};

impl Exporter {
    /// `repository:tag`, from the class's repository or the upstream one.
    pub fn image(&self, repository: Option<&str>) -> String {
        format!("{}:{}", repository.unwrap_or(self.default_image), self.tag)
    }
}
