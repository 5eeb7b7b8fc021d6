//! Why a dedicated instance is not ready, read from its pod: what on-call
//! would otherwise find with `kubectl describe pod`, given in the
//! `InstanceReady` condition (and `Ready`, when it is stuck rather than
//! starting). Looked at only while the StatefulSet reports no ready replica.

use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use kube::Api;

/// How long a termination message may be in a condition.
const MESSAGE_LIMIT: usize = 400;

/// The pod's trouble: a condition reason and its message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotReady {
    pub reason: &'static str,
    pub message: String,
    /// The instance will not start without someone's help (an image that
    /// cannot be pulled, a crash loop, no node, no volume): `Ready` says so
    /// too, not only `InstanceReady`.
    pub stuck: bool,
}

impl NotReady {
    fn starting(message: String) -> Self {
        Self {
            reason: "Starting",
            message,
            stuck: false,
        }
    }
    fn stuck(reason: &'static str, message: String) -> Self {
        Self {
            reason,
            message,
            stuck: true,
        }
    }
}

/// The instance's one pod, `<instance>-0`, if there is one.
pub async fn pod(
    client: &kube::Client,
    namespace: &str,
    instance: &str,
) -> kube::Result<Option<Pod>> {
    Api::<Pod>::namespaced(client.clone(), namespace)
        .get_opt(&format!("{instance}-0"))
        .await
}

/// What keeps the instance's pod from being ready, as precise as its status
/// tells: scheduling, volumes, images, crashes, then plain start-up.
pub fn diagnose(instance: &str, pod: Option<&Pod>) -> NotReady {
    let pod_name = format!("{instance}-0");
    let Some(pod) = pod else {
        return NotReady::starting(format!(
            "waiting for StatefulSet {instance} to create pod {pod_name}"
        ));
    };
    let status = pod.status.clone().unwrap_or_default();
    let unscheduled = status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "PodScheduled" && c.status == "False");
    if let Some(c) = unscheduled {
        let message = c.message.clone().unwrap_or_default();
        let reason = if message.contains("PersistentVolumeClaim") || message.contains("volume") {
            "VolumeNotBound"
        } else {
            "Unschedulable"
        };
        return NotReady::stuck(
            reason,
            format!("pod {pod_name} cannot be scheduled: {message}"),
        );
    }
    let statuses: Vec<&ContainerStatus> = status
        .init_container_statuses
        .iter()
        .flatten()
        .chain(status.container_statuses.iter().flatten())
        .collect();
    if let Some(found) = statuses
        .iter()
        .find_map(|c| container_trouble(&pod_name, c))
    {
        return found;
    }
    let waiting = statuses.iter().find_map(|c| {
        let reason = c.state.as_ref()?.waiting.as_ref()?.reason.clone()?;
        Some(format!("container {} is {reason}", c.name))
    });
    if let Some(waiting) = waiting {
        return NotReady::starting(format!("pod {pod_name}: {waiting}"));
    }
    let unready = status
        .container_statuses
        .iter()
        .flatten()
        .find(|c| !c.ready && c.state.as_ref().is_some_and(|s| s.running.is_some()));
    if let Some(c) = unready {
        return NotReady {
            reason: "NotReady",
            message: format!(
                "pod {pod_name}: container {} runs but its readiness probe does not pass yet",
                c.name
            ),
            stuck: false,
        };
    }
    NotReady::starting(format!(
        "waiting for pod {pod_name} to become ready (phase {})",
        status.phase.as_deref().unwrap_or("unknown")
    ))
}

/// An image that cannot be pulled, a crash loop or a container that cannot
/// be created.
fn container_trouble(pod_name: &str, c: &ContainerStatus) -> Option<NotReady> {
    let waiting = c.state.as_ref()?.waiting.as_ref()?;
    let reason = waiting.reason.as_deref().unwrap_or_default();
    let detail = waiting.message.as_deref().unwrap_or_default();
    match reason {
        "ErrImagePull" | "ImagePullBackOff" | "InvalidImageName" | "ErrImageNeverPull" => {
            Some(NotReady::stuck(
                "ImagePullFailed",
                format!(
                    "pod {pod_name}: container {} cannot pull image {} ({reason}): {}",
                    c.name,
                    c.image,
                    limit(detail)
                ),
            ))
        }
        "CrashLoopBackOff" => {
            let last = c
                .last_state
                .as_ref()
                .and_then(|s| s.terminated.as_ref())
                .map(|t| {
                    let mut last = format!("last exit code {}", t.exit_code);
                    if let Some(reason) = &t.reason {
                        last.push_str(&format!(" ({reason})"));
                    }
                    if let Some(message) = t
                        .message
                        .as_deref()
                        .map(str::trim)
                        .filter(|m| !m.is_empty())
                    {
                        last.push_str(&format!(": {}", limit(message)));
                    }
                    last
                })
                .unwrap_or_else(|| "no exit recorded".into());
            Some(NotReady::stuck(
                "CrashLooping",
                format!(
                    "pod {pod_name}: container {} keeps crashing ({} restarts), {last}; see kubectl logs --previous {pod_name} -c {}",
                    c.name, c.restart_count, c.name
                ),
            ))
        }
        "CreateContainerConfigError" | "CreateContainerError" | "RunContainerError" => {
            Some(NotReady::stuck(
                "ContainerConfigError",
                format!(
                    "pod {pod_name}: container {} cannot start ({reason}): {}",
                    c.name,
                    limit(detail)
                ),
            ))
        }
        _ => None,
    }
}

fn limit(text: &str) -> String {
    if text.chars().count() <= MESSAGE_LIMIT {
        return text.to_owned();
    }
    let cut: String = text.chars().take(MESSAGE_LIMIT).collect();
    format!("{cut}…")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(status: serde_json::Value) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": "orders-db-0"}, "status": status}))
            .expect("a pod")
    }

    #[test]
    fn no_pod_yet_is_starting() {
        let found = diagnose("orders-db", None);
        assert_eq!(found.reason, "Starting");
        assert!(!found.stuck);
        assert!(found.message.contains("orders-db-0"), "{}", found.message);
    }

    #[test]
    fn an_image_that_cannot_be_pulled_is_named() {
        let p = pod(json!({"phase": "Pending", "containerStatuses": [{
            "name": "mongodb", "image": "docker.io/library/mongo:8.0", "imageID": "", "ready": false,
            "restartCount": 0,
            "state": {"waiting": {"reason": "ImagePullBackOff",
                "message": "Back-off pulling image \"docker.io/library/mongo:8.0\""}}}]}));
        let found = diagnose("catalog-db", Some(&p));
        assert_eq!(found.reason, "ImagePullFailed");
        assert!(found.stuck);
        assert!(
            found
                .message
                .contains("cannot pull image docker.io/library/mongo:8.0"),
            "{}",
            found.message
        );
    }

    #[test]
    fn a_crash_loop_gives_the_last_exit() {
        let p = pod(json!({"phase": "Running", "containerStatuses": [{
            "name": "postgres", "image": "postgres:17", "imageID": "", "ready": false,
            "restartCount": 4,
            "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s"}},
            "lastState": {"terminated": {"exitCode": 1, "reason": "Error",
                "message": "initdb: directory is not empty"}}}]}));
        let found = diagnose("orders-db", Some(&p));
        assert_eq!(found.reason, "CrashLooping");
        for part in [
            "4 restarts",
            "exit code 1 (Error)",
            "initdb: directory is not empty",
        ] {
            assert!(found.message.contains(part), "{part}: {}", found.message);
        }
    }

    #[test]
    fn an_unschedulable_pod_gives_the_schedulers_message() {
        let p = pod(
            json!({"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False",
            "reason": "Unschedulable",
            "message": "0/1 nodes are available: 1 Insufficient memory."}]}),
        );
        let found = diagnose("orders-db", Some(&p));
        assert_eq!(found.reason, "Unschedulable");
        assert!(
            found.message.contains("Insufficient memory"),
            "{}",
            found.message
        );

        let p = pod(
            json!({"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False",
            "reason": "Unschedulable",
            "message": "0/1 nodes are available: pod has unbound immediate PersistentVolumeClaims."}]}),
        );
        assert_eq!(diagnose("orders-db", Some(&p)).reason, "VolumeNotBound");
    }

    #[test]
    fn a_running_container_that_is_not_ready_waits_for_its_probe() {
        let p = pod(json!({"phase": "Running", "containerStatuses": [{
            "name": "postgres", "image": "postgres:17", "imageID": "", "ready": false,
            "restartCount": 0, "state": {"running": {}}}]}));
        let found = diagnose("orders-db", Some(&p));
        assert_eq!(found.reason, "NotReady");
        assert!(!found.stuck);
    }

    #[test]
    fn a_long_termination_message_is_cut() {
        let long = "x".repeat(5000);
        let p = pod(json!({"phase": "Running", "containerStatuses": [{
            "name": "postgres", "image": "postgres:17", "imageID": "", "ready": false,
            "restartCount": 1,
            "state": {"waiting": {"reason": "CrashLoopBackOff"}},
            "lastState": {"terminated": {"exitCode": 2, "message": long}}}]}));
        assert!(diagnose("orders-db", Some(&p)).message.len() < 700);
    }
}
