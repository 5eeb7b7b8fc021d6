//! DatabaseClass status: the versions a class allows in effect and the one a
//! ServiceDatabase that names none gets, so that `kubectl get dbc` answers
//! "what may I ask for" without reading the engine's defaults. Nothing else
//! reads it: ServiceDatabases are validated against the spec.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::watcher;
use kube::{Api, ResourceExt};
use serde_json::json;

use super::Context;
use crate::api::DatabaseClass;
use crate::api::database_class::DatabaseClassStatus;

const CONTROLLER: &str = "databaseclass";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("writing the status of DatabaseClass {name}: {source}")]
    Status {
        name: String,
        #[source]
        source: kube::Error,
    },
}

impl super::ReconcileError for Error {
    fn category(&self) -> &'static str {
        "kubernetes"
    }
    fn reason(&self) -> &'static str {
        "StatusFailed"
    }
    fn is_reported(&self) -> bool {
        false
    }
}

/// The status a class should have.
pub fn status(class: &DatabaseClass) -> DatabaseClassStatus {
    let (versions, default_version) = crate::engine::class_versions(&class.spec);
    DatabaseClassStatus {
        versions: (!versions.is_empty()).then(|| versions.join(", ")),
        default_version,
        observed_generation: class.metadata.generation,
    }
}

async fn reconcile(class: Arc<DatabaseClass>, ctx: Arc<Context>) -> Result<Action, Error> {
    let want = status(&class);
    if class.status.as_ref() != Some(&want) {
        let name = class.name_any();
        Api::<DatabaseClass>::all(ctx.client.clone())
            .patch_status(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({ "status": want })),
            )
            .await
            .map_err(|source| Error::Status { name, source })?;
    }
    Ok(Action::await_change())
}

fn error_policy(_: Arc<DatabaseClass>, _: &Error, _: Arc<Context>) -> Action {
    Action::requeue(Duration::from_secs(30))
}

pub async fn run(
    ctx: Arc<Context>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    Controller::new(
        Api::<DatabaseClass>::all(ctx.client.clone()),
        watcher::Config::default().any_semantic(),
    )
    .with_config(ControllerConfig::default().concurrency(1))
    .graceful_shutdown_on(shutdown)
    .run(reconcile, error_policy, ctx.clone())
    .for_each(|result| {
        let ctx = ctx.clone();
        async move { super::report(CONTROLLER, result, &ctx).await }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::database_class::DatabaseClassSpec;

    fn class(spec: serde_json::Value) -> DatabaseClass {
        let spec: DatabaseClassSpec = serde_json::from_value(spec).expect("spec");
        DatabaseClass::new("c", spec)
    }

    #[test]
    fn the_status_joins_the_allowed_versions_and_names_the_default() {
        let s = status(&class(
            json!({"engine": "Postgres", "versions": ["16", "17"]}),
        ));
        assert_eq!(s.versions.as_deref(), Some("16, 17"));
        assert_eq!(s.default_version.as_deref(), Some("17"));
        let s = status(&class(
            json!({"engine": "Postgres", "versions": ["15", "16", "17"], "defaultVersion": "16"}),
        ));
        assert_eq!(s.default_version.as_deref(), Some("16"));
        let all = status(&class(json!({"engine": "Redis"})));
        assert!(
            all.versions.is_some_and(|v| v.contains(", ")),
            "every supported version"
        );
    }
}
