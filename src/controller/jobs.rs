//! What an agent Job says: its state from its conditions, and the agent's
//! report from the termination message of its pod (see src/build/backup.rs).

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::ListParams;
use kube::{Api, Client, ResourceExt};
use serde::Deserialize;

use crate::build::backup::LABEL_JOB_NAME;

/// Where a Job is, by its conditions.
#[derive(Clone, Debug, PartialEq)]
pub enum JobState {
    /// Created, no pod runs yet.
    Pending,
    /// A pod runs (or ran and the Job has not concluded).
    Running { started: Option<Time> },
    /// Condition `Complete`.
    Succeeded {
        started: Option<Time>,
        finished: Option<Time>,
    },
    /// Condition `Failed`, with the Job controller's message.
    Failed {
        finished: Option<Time>,
        message: String,
    },
}

/// The state of a Job from its status (pure).
pub fn state(job: &Job) -> JobState {
    let status = job.status.clone().unwrap_or_default();
    let condition = |t: &str| {
        status
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == t && c.status == "True")
            .cloned()
    };
    let started = status.start_time.clone();
    if let Some(c) = condition("Complete") {
        return JobState::Succeeded {
            started,
            finished: status.completion_time.clone().or(c.last_transition_time),
        };
    }
    if let Some(c) = condition("Failed") {
        let message = match (c.reason, c.message) {
            (Some(r), Some(m)) => format!("{r}: {m}"),
            (Some(r), None) => r,
            (None, Some(m)) => m,
            (None, None) => "the Job failed".into(),
        };
        return JobState::Failed {
            finished: c.last_transition_time,
            message,
        };
    }
    if status.active.unwrap_or(0) > 0 || started.is_some() {
        JobState::Running { started }
    } else {
        JobState::Pending
    }
}

/// The agent's termination message of a Job's newest pod that wrote one.
pub async fn termination_message(
    client: &Client,
    namespace: &str,
    job: &str,
) -> Result<Option<String>, kube::Error> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let mut found = pods
        .list(&ListParams::default().labels(&format!("{LABEL_JOB_NAME}={job}")))
        .await?
        .items;
    found.sort_by_key(|p| p.creation_timestamp());
    Ok(found.iter().rev().find_map(|pod| {
        pod.status
            .as_ref()?
            .container_statuses
            .iter()
            .flatten()
            .filter(|c| c.name == "agent")
            .find_map(|c| c.state.as_ref()?.terminated.as_ref()?.message.clone())
            .filter(|m| !m.trim().is_empty())
    }))
}

/// The manifest `servicedb agent backup` writes on success, or `{"error"}`.
#[derive(Deserialize, Debug, Default, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub location: Option<String>,
    pub size_bytes: Option<i64>,
    pub checksum: Option<String>,
    pub started_at: Option<String>,
    pub completed_at: Option<String>,
    /// `servicedb agent verify`: how long the restore took. (Its `backup`
    /// is the restored archive's manifest; which DatabaseBackup that was is
    /// the Job's label.)
    pub restore_seconds: Option<f64>,
    pub error: Option<String>,
}

impl Report {
    /// Parses a termination message; a message that is not the agent's JSON
    /// (a crash's log tail) is kept as the error.
    pub fn parse(message: &str) -> Report {
        serde_json::from_str(message).unwrap_or_else(|_| Report {
            error: Some(message.trim().chars().take(500).collect()),
            ..Default::default()
        })
    }
}

/// An RFC 3339 time as the agent writes it.
pub fn parse_time(s: &str) -> Option<Time> {
    s.parse::<k8s_openapi::jiff::Timestamp>().ok().map(Time)
}

/// The newest of some Jobs that concluded, by when they concluded.
pub fn newest_finished(jobs: &[Job]) -> Option<(&Job, JobState)> {
    jobs.iter()
        .filter_map(|j| {
            let s = state(j);
            let at = match &s {
                JobState::Succeeded { finished, .. } | JobState::Failed { finished, .. } => {
                    finished.clone().or_else(|| j.creation_timestamp())
                }
                _ => return None,
            };
            Some((j, s, at))
        })
        .max_by(|a, b| {
            a.2.cmp(&b.2)
                .then_with(|| a.0.name_any().cmp(&b.0.name_any()))
        })
        .map(|(j, s, _)| (j, s))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(status: serde_json::Value) -> Job {
        serde_json::from_value(serde_json::json!({"metadata": {"name": "j"}, "status": status}))
            .unwrap()
    }

    #[test]
    fn conditions_decide_the_state() {
        assert_eq!(state(&job(serde_json::json!({}))), JobState::Pending);
        assert!(matches!(
            state(&job(
                serde_json::json!({"active": 1, "startTime": "2026-01-01T00:00:00Z"})
            )),
            JobState::Running { .. }
        ));
        let done = job(
            serde_json::json!({"startTime": "2026-01-01T00:00:00Z", "completionTime": "2026-01-01T00:01:00Z",
            "conditions": [{"type": "SuccessCriteriaMet", "status": "True"}, {"type": "Complete", "status": "True"}]}),
        );
        assert!(matches!(
            state(&done),
            JobState::Succeeded {
                finished: Some(_),
                ..
            }
        ));
        let failed = job(
            serde_json::json!({"conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded", "message": "Job has reached the specified backoff limit"}]}),
        );
        assert!(
            matches!(state(&failed), JobState::Failed { message, .. } if message.starts_with("BackoffLimitExceeded"))
        );
    }

    #[test]
    fn reports_parse_and_garbage_becomes_the_error() {
        let r = Report::parse(
            r#"{"engine":"postgres","location":"s3://b/p/x","sizeBytes":42,"checksum":"sha256:ab","startedAt":"2026-01-01T00:00:00Z","completedAt":"2026-01-01T00:00:09Z"}"#,
        );
        assert_eq!(r.size_bytes, Some(42));
        assert_eq!(r.location.as_deref(), Some("s3://b/p/x"));
        assert!(parse_time(r.completed_at.as_deref().unwrap()).is_some());
        assert_eq!(
            Report::parse("panicked at main.rs").error.as_deref(),
            Some("panicked at main.rs")
        );
    }

    #[test]
    fn a_verification_report_gives_its_restore_time() {
        // What `servicedb agent verify` writes: the restored archive's
        // manifest under `backup`, the checks, and the restore time.
        let r = Report::parse(
            r#"{"backup":{"engine":"postgres","location":"s3://b/p/x","items":3},"restoreSeconds":1.25,"checks":{"tables":3,"rows":20503}}"#,
        );
        assert_eq!(r.error, None, "{r:?}");
        assert_eq!(r.restore_seconds, Some(1.25));
    }
}
