//! Part of step 3 for external servers: the exporter of
//! `spec.external.monitoring` ([`crate::build::exporter`]) applied, with
//! its PodMonitor where the Prometheus Operator's kinds are served, or
//! removed once monitoring is off. Its condition `MonitoringConfigured`
//! never touches `Ready`: a server whose exporter cannot run still takes
//! databases.

use kube::{Client, Resource, ResourceExt};

use super::validate::SecretData;
use crate::api::DatabaseServer;
use crate::api::conditions::Observed;
use crate::api::database_server::{ExternalMonitoring, TlsMode};
use crate::build::OperatorFacts;
use crate::build::exporter::{self, PASSWORD_KEY, USERNAME_KEY};
use crate::build::monitoring::Monitoring;
use crate::controller::apply::{self, Owner};
use crate::controller::monitoring::{self as prometheus, MONITORING_CONFIGURED};

/// The field a missing or incomplete Secret is named by.
pub const FIELD: &str = "spec.external.monitoring.credentialsSecretRef";

/// Applies or removes the exporter; the `MonitoringConfigured` condition,
/// `None` when monitoring is off.
pub async fn ensure(
    client: &Client,
    server: &DatabaseServer,
    credentials: &SecretData,
    tls: TlsMode,
    facts: &OperatorFacts,
) -> Result<Option<Observed>, apply::Error> {
    let Some(owner) = server.controller_owner_ref(&()) else {
        return Ok(None);
    };
    let namespace = server.namespace().unwrap_or_default();
    let instance = exporter::name(&server.name_any());
    let ours = Owner {
        instance: &instance,
        uid: &owner.uid,
    };
    let monitored = server.spec.external.as_ref().and_then(|e| e.monitored());
    let Some(monitoring) = monitored else {
        // Only a server whose status says it was monitored can have
        // anything left to remove: an unmonitored one costs no request.
        if recorded(server) {
            apply::apply_server_exporter(client, &namespace, ours, None).await?;
            prometheus::apply(client, &namespace, ours, None).await?;
        }
        return Ok(None);
    };
    if let Err((reason, message)) = check(monitoring, credentials) {
        return Ok(Some(Observed::new(
            MONITORING_CONFIGURED,
            false,
            reason,
            format!("{FIELD}: {message}; the exporter is not deployed"),
        )));
    }
    let Some(built) = exporter::build(server, tls, &facts.scraper, &owner) else {
        return Ok(None);
    };
    let pod_monitor = built.pod_monitor;
    let applied = async {
        let applied = apply::apply_server_exporter(
            client,
            &namespace,
            ours,
            Some((built.deployment, built.service, built.network_policy)),
        )
        .await?;
        let (_, _, condition) = prometheus::apply(
            client,
            &namespace,
            ours,
            Some(Monitoring {
                rule: None,
                pod_monitor: Some(pod_monitor),
            }),
        )
        .await?;
        Ok::<_, apply::Error>((applied, condition))
    }
    .await;
    // The exporter never holds up the server's probe and its tenants: what
    // stops it is said in its condition, and the next probe tries again.
    match applied {
        Ok((applied, condition)) => {
            if applied.written > 0 || applied.deleted > 0 {
                tracing::info!(
                    written = applied.written,
                    deleted = applied.deleted,
                    "server's exporter updated"
                );
            }
            Ok(condition.map(|mut c| {
                c.message = format!("Deployment {instance} runs the exporter; {}", c.message);
                c
            }))
        }
        Err(apply::Error::Conflict { kind, name, holder }) => Ok(Some(Observed::new(
            MONITORING_CONFIGURED,
            false,
            "NameTaken",
            format!(
                "{kind} {name} exists and is {holder}: not replaced, the exporter is not deployed"
            ),
        ))),
        Err(e) => {
            tracing::warn!(error = %e, "applying the server's exporter");
            Ok(Some(Observed::new(
                MONITORING_CONFIGURED,
                false,
                "ApplyFailed",
                format!("the exporter could not be applied: {e}"),
            )))
        }
    }
}

/// Whether the status records a `MonitoringConfigured` condition.
fn recorded(server: &DatabaseServer) -> bool {
    server.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == MONITORING_CONFIGURED)
    })
}

/// The credentials Secret exists and has both keys (their values are the
/// exporter's to read, never said).
pub fn check(
    monitoring: &ExternalMonitoring,
    credentials: &SecretData,
) -> Result<(), (&'static str, String)> {
    let Some(secret) = monitoring.credentials_secret_ref.as_ref() else {
        return Err(("SecretNotFound", "no Secret is named".into()));
    };
    let Some(data) = credentials else {
        return Err((
            "SecretNotFound",
            format!("Secret {} does not exist", secret.name),
        ));
    };
    for key in [USERNAME_KEY, PASSWORD_KEY] {
        if data.get(key).is_none_or(|v| v.0.is_empty()) {
            return Err((
                "SecretKeyMissing",
                format!("Secret {} has no key \"{key}\"", secret.name),
            ));
        }
    }
    Ok(())
}
