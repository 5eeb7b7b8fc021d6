//! Step 4 of the DatabaseServer pipeline (async): conditions `Reachable`,
//! `Ready` and an external server's `MonitoringConfigured` with `observedGeneration`, the server's version, the number of
//! databases placed on it, and an Event when `Ready` changes. The status is
//! written only when it changed.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::{Client, Resource};

use super::probe::ProbeError;
use super::validate::Invalid;
use crate::api::DatabaseServer;
use crate::api::conditions::{Observed, kstatus, merge};
use crate::api::database_server::DatabaseServerStatus;

/// Condition types of a `DatabaseServer`.
pub mod types {
    /// The server can take databases.
    pub const READY: &str = "Ready";
    /// The operator logged in as the administrator.
    pub const REACHABLE: &str = "Reachable";
    /// An external server's exporter is deployed (`external.monitoring`).
    pub const MONITORING_CONFIGURED: &str = crate::controller::monitoring::MONITORING_CONFIGURED;
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("writing status: {0}")]
    Patch(#[source] kube::Error),
}

/// What the pipeline found.
pub enum Outcome<'a> {
    /// The spec or the admin Secret must change; the server was not probed.
    Invalid(&'a Invalid),
    /// The probe's answer: the version, or why it failed.
    Probed(&'a Result<String, ProbeError>),
}

/// What this pass says of the exporter of an external server.
pub enum Monitoring {
    /// Not looked at: the condition stays as it was.
    Unchanged,
    /// The `MonitoringConfigured` condition; `None` removes it.
    Observed(Option<Observed>),
}

/// The status for an outcome, merged with the previous one.
pub fn compute(
    server: &DatabaseServer,
    outcome: &Outcome<'_>,
    monitoring: Monitoring,
    databases: i32,
    now: &Time,
) -> DatabaseServerStatus {
    let previous = server.status.clone().unwrap_or_default();
    let generation = server.metadata.generation;
    let mut server_version = previous.server_version.clone();
    let mut observed = match outcome {
        Outcome::Invalid(invalid) => {
            let mut observed = vec![Observed::new(
                types::READY,
                false,
                invalid.reason,
                invalid.to_string(),
            )];
            if server.spec.external.is_some() {
                observed.push(Observed::new(
                    types::REACHABLE,
                    false,
                    "NotProbed",
                    format!("not probed until {} is fixed", invalid.field),
                ));
            }
            observed
        }
        Outcome::Probed(Ok(version)) => {
            server_version = Some(version.clone());
            vec![
                Observed::new(
                    types::REACHABLE,
                    true,
                    "Reachable",
                    format!("the administrator logged in; server version {version}"),
                ),
                Observed::new(types::READY, true, "Ready", "the server can take databases"),
            ]
        }
        Outcome::Probed(Err(e)) => vec![
            Observed::new(types::REACHABLE, false, e.reason, e.message.clone()),
            Observed::new(
                types::READY,
                false,
                e.reason,
                format!("the server cannot be reached: {}", e.message),
            ),
        ],
    };
    // An invalid spec or admin Secret waits for a change; an unreachable
    // server is probed again.
    let stalled = matches!(outcome, Outcome::Invalid(_));
    if let Some(ready) = observed.iter().find(|o| o.type_ == types::READY).cloned() {
        observed.extend(kstatus(&ready, stalled));
    }
    let mut previous_conditions = previous.conditions.clone();
    match monitoring {
        Monitoring::Unchanged => {}
        Monitoring::Observed(Some(condition)) => observed.push(condition),
        Monitoring::Observed(None) => {
            previous_conditions.retain(|c| c.type_ != types::MONITORING_CONFIGURED)
        }
    }
    DatabaseServerStatus {
        observed_generation: generation,
        conditions: merge(&previous_conditions, &observed, generation, now),
        server_version,
        databases: Some(databases),
        mode: Some(crate::api::database_server::ServerMode::of(&server.spec)),
    }
}

/// Writes the status if it changed, and records an Event when `Ready`
/// changed status or reason.
pub async fn update(
    client: &Client,
    recorder: &Recorder,
    server: &DatabaseServer,
    status: DatabaseServerStatus,
) -> Result<(), Error> {
    let previous = server.status.clone().unwrap_or_default();
    if !crate::controller::write_status(client, server, &previous, &status)
        .await
        .map_err(Error::Patch)?
    {
        return Ok(());
    }

    if let Some(event) = transition(&previous, &status) {
        crate::controller::publish(recorder, &event, &server.object_ref(&())).await;
    }
    Ok(())
}

/// The Event for a change of `Ready`, if it changed.
pub fn transition(previous: &DatabaseServerStatus, status: &DatabaseServerStatus) -> Option<Event> {
    let ready = |s: &DatabaseServerStatus| {
        s.conditions
            .iter()
            .find(|c| c.type_ == types::READY)
            .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
    };
    let (before, (now, reason, message)) = (ready(previous), ready(status)?);
    if before
        .as_ref()
        .is_some_and(|(s, r, _)| *s == now && *r == reason)
    {
        return None;
    }
    Some(Event {
        type_: if now == "True" {
            EventType::Normal
        } else {
            EventType::Warning
        },
        reason,
        note: Some(message),
        action: "Probe".into(),
        secondary: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn server() -> DatabaseServer {
        serde_json::from_value(json!({
            "apiVersion": "servicedb.dev/v1alpha1", "kind": "DatabaseServer",
            "metadata": {"name": "pg", "namespace": "platform", "generation": 3},
            "spec": {"engine": "Postgres", "external": {
                "host": "db", "port": 5432, "adminSecretRef": {"name": "admin"}}},
        }))
        .unwrap()
    }

    fn t(s: &str) -> Time {
        Time(s.parse().unwrap())
    }

    fn condition<'a>(s: &'a DatabaseServerStatus, type_: &str) -> (&'a str, &'a str) {
        let c = s.conditions.iter().find(|c| c.type_ == type_).unwrap();
        (c.status.as_str(), c.reason.as_str())
    }

    #[test]
    fn a_reachable_server_reports_its_version_and_an_unchanged_world_is_equal() {
        let mut s = server();
        let ok = Ok("15.14".to_string());
        let first = compute(
            &s,
            &Outcome::Probed(&ok),
            Monitoring::Unchanged,
            2,
            &t("2026-01-01T00:00:00Z"),
        );
        assert_eq!(condition(&first, "Reachable"), ("True", "Reachable"));
        assert_eq!(condition(&first, "Ready"), ("True", "Ready"));
        assert_eq!(first.server_version.as_deref(), Some("15.14"));
        assert_eq!(
            (first.databases, first.observed_generation),
            (Some(2), Some(3))
        );
        assert!(transition(&Default::default(), &first).is_some());
        s.status = Some(first.clone());
        let again = compute(
            &s,
            &Outcome::Probed(&ok),
            Monitoring::Unchanged,
            2,
            &t("2026-01-01T00:10:00Z"),
        );
        assert_eq!(first, again, "a resync must not change the status");
        assert!(transition(&first, &again).is_none());
    }

    #[test]
    fn an_unreachable_server_keeps_its_last_version_and_warns_once() {
        let mut s = server();
        let ok = Ok("15.14".to_string());
        s.status = Some(compute(
            &s,
            &Outcome::Probed(&ok),
            Monitoring::Unchanged,
            0,
            &t("2026-01-01T00:00:00Z"),
        ));
        let refused = Err(ProbeError {
            reason: "ConnectionRefused",
            message: "connection refused".into(),
        });
        let down = compute(
            &s,
            &Outcome::Probed(&refused),
            Monitoring::Unchanged,
            0,
            &t("2026-01-01T00:01:00Z"),
        );
        assert_eq!(
            condition(&down, "Reachable"),
            ("False", "ConnectionRefused")
        );
        assert_eq!(condition(&down, "Ready"), ("False", "ConnectionRefused"));
        assert_eq!(down.server_version.as_deref(), Some("15.14"));
        let event = transition(s.status.as_ref().unwrap(), &down).unwrap();
        assert_eq!(
            (event.type_, event.reason.as_str()),
            (EventType::Warning, "ConnectionRefused")
        );
        s.status = Some(down.clone());
        let still = compute(
            &s,
            &Outcome::Probed(&refused),
            Monitoring::Unchanged,
            0,
            &t("2026-01-01T00:02:00Z"),
        );
        assert_eq!(down, still);
        assert!(transition(&down, &still).is_none());
    }

    #[test]
    fn the_exporters_condition_is_set_kept_and_removed_without_touching_ready() {
        let mut s = server();
        let ok = Ok("15.14".to_string());
        let missing = Observed::new(
            types::MONITORING_CONFIGURED,
            false,
            "SecretNotFound",
            "spec.external.monitoring.credentialsSecretRef: Secret monitor does not exist",
        );
        let first = compute(
            &s,
            &Outcome::Probed(&ok),
            Monitoring::Observed(Some(missing)),
            0,
            &t("2026-01-01T00:00:00Z"),
        );
        assert_eq!(
            condition(&first, "MonitoringConfigured"),
            ("False", "SecretNotFound")
        );
        assert_eq!(condition(&first, "Ready"), ("True", "Ready"));
        s.status = Some(first.clone());
        let kept = compute(
            &s,
            &Outcome::Probed(&ok),
            Monitoring::Unchanged,
            0,
            &t("2026-01-01T00:01:00Z"),
        );
        assert_eq!(kept, first);
        let off = compute(
            &s,
            &Outcome::Probed(&ok),
            Monitoring::Observed(None),
            0,
            &t("2026-01-01T00:02:00Z"),
        );
        assert!(
            off.conditions
                .iter()
                .all(|c| c.type_ != "MonitoringConfigured")
        );
    }

    #[test]
    fn an_invalid_server_is_not_probed_and_names_the_field() {
        let invalid = Invalid {
            field: "spec.external.adminSecretRef",
            reason: "SecretNotFound",
            message: "Secret admin does not exist".into(),
        };
        let s = compute(
            &server(),
            &Outcome::Invalid(&invalid),
            Monitoring::Unchanged,
            0,
            &t("2026-01-01T00:00:00Z"),
        );
        assert_eq!(condition(&s, "Ready"), ("False", "SecretNotFound"));
        assert_eq!(condition(&s, "Reachable"), ("False", "NotProbed"));
        let ready = s.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
        assert!(ready.message.contains("spec.external.adminSecretRef"));
    }
}
