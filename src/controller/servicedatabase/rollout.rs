//! A credential rotation reaching the pods that use the credentials.
//!
//! A pod that reads the Secret through `env`/`envFrom` keeps the password it
//! started with; once the grace period ends that password stops working.
//! After a rotation servicedb therefore looks at the owner's workloads
//! (Deployments and StatefulSets whose pod template matches
//! `spec.owner.podSelector`, except servicedb's own) and their pods:
//!
//! - a pod is *on the old password* when it was created before the current
//!   password was issued and its `servicedb.dev/password-issued-at`
//!   annotation (the Secret's annotation of the same name, copied to pod
//!   templates by a restart) does not name the current password;
//! - with `spec.credentials.restartOwners: true` every workload with such a
//!   pod gets that annotation on its pod template, which rolls it exactly
//!   like `kubectl rollout restart` (one patch per rotation and workload);
//! - without it, the condition `CredentialsRolledOut` names the workloads,
//!   and in the last quarter of the grace period (at most its last 15
//!   minutes) a Warning Event does too.
//!
//! The look is taken only while a grace period runs, or while the condition
//! still says that pods are behind, so a database that was never rotated
//! costs no request. The operator needs `list` on pods, Deployments and
//! StatefulSets and, for restarts, `patch` on Deployments and StatefulSets.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{ListParams, Patch, PatchParams};
use kube::core::{Selector, SelectorExt};
use kube::runtime::events::{Event as KubeEvent, EventType};
use kube::{Api, Client, Resource};
use serde_json::json;

use super::Context;
use crate::api::ServiceDatabase;
use crate::api::conditions::{Observed, types};
use crate::build::{LABEL_MANAGED_BY, MANAGED_BY};
use crate::model::database::ValidatedDatabase;
use crate::model::rotation::Plan;

/// On pod templates and pods: the credentials generation they started with;
/// the same key and value as the Secret's annotation.
pub const GENERATION_ANNOTATION: &str = super::rotation::ISSUED_AT;
/// Field manager of the restart patches.
const FIELD_MANAGER: &str = "servicedb-rollout";
/// The Warning Event's lead time is a quarter of the grace period, at most
/// this long.
const MAX_WARNING_LEAD: Duration = Duration::from_secs(15 * 60);
/// How often pods that are behind are looked at again.
pub const RECHECK: Duration = Duration::from_secs(30);

/// The kinds of workload a rollout restarts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Deployment,
    StatefulSet,
}

/// A Deployment or StatefulSet, as far as a rollout cares.
#[derive(Clone, Debug, PartialEq)]
pub struct Workload {
    pub kind: Kind,
    pub name: String,
    pub template_labels: BTreeMap<String, String>,
    pub selector: LabelSelector,
    /// The pod template's [`GENERATION_ANNOTATION`].
    pub generation: Option<String>,
    /// Made by servicedb (the instance itself): never restarted here.
    pub ours: bool,
}

impl Workload {
    /// `Deployment/web`, as kubectl names it.
    pub fn id(&self) -> String {
        format!("{:?}/{}", self.kind, self.name)
    }
}

/// A pod, as far as a rollout cares.
#[derive(Clone, Debug, PartialEq)]
pub struct PodFacts {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub created: Option<Timestamp>,
    pub generation: Option<String>,
}

/// What the owner's workloads run on.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Behind {
    /// Workloads with a pod on the old password; `restarted`: their template
    /// already carries the current generation (rolling).
    pub workloads: Vec<(Workload, bool)>,
    /// Owner pods on the old password that no listed workload manages.
    pub bare_pods: Vec<String>,
}

impl Behind {
    pub fn is_empty(&self) -> bool {
        self.workloads.is_empty() && self.bare_pods.is_empty()
    }

    fn names(&self) -> String {
        self.workloads
            .iter()
            .map(|(w, _)| w.id())
            .chain(self.bare_pods.iter().map(|p| format!("Pod/{p}")))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

fn matches(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    Selector::try_from(selector.clone()).is_ok_and(|s| s.matches(labels))
}

/// Which of the owner's workloads and pods still run on a password issued
/// before `issued_at` (`generation` is its text, as on the Secret).
pub fn behind(
    owner: &LabelSelector,
    generation: &str,
    issued_at: Timestamp,
    workloads: &[Workload],
    pods: &[PodFacts],
) -> Behind {
    // Creation times have whole seconds: a pod made in the second the
    // password was issued counts as current.
    let issued = Timestamp::from_second(issued_at.as_second()).unwrap_or(issued_at);
    let old = |p: &&PodFacts| {
        p.generation.as_deref() != Some(generation)
            && p.created.is_some_and(|c| c < issued)
            && matches(owner, &p.labels)
    };
    let old: Vec<&PodFacts> = pods.iter().filter(old).collect();
    let owners: Vec<&Workload> = workloads
        .iter()
        .filter(|w| !w.ours && matches(owner, &w.template_labels))
        .collect();
    let mut out = Behind::default();
    for w in &owners {
        if old.iter().any(|p| matches(&w.selector, &p.labels)) {
            let restarted = w.generation.as_deref() == Some(generation);
            out.workloads.push(((*w).clone(), restarted));
        }
    }
    out.bare_pods = old
        .iter()
        .filter(|p| !owners.iter().any(|w| matches(&w.selector, &p.labels)))
        .map(|p| p.name.clone())
        .collect();
    out
}

/// When the Warning Event is due: a quarter of the grace period (at most 15
/// minutes) before it ends.
pub fn warning_lead(grace: Duration) -> Duration {
    (grace / 4).min(MAX_WARNING_LEAD)
}

/// The condition for what [`behind`] found. `until`: the end of the grace
/// period, when it still runs.
pub fn condition(behind: &Behind, restart: bool, until: Option<Timestamp>) -> Observed {
    if behind.is_empty() {
        return Observed::new(
            types::CREDENTIALS_ROLLED_OUT,
            true,
            "PodsCurrent",
            "every pod of the owner started after the current password was issued",
        );
    }
    let names = behind.names();
    let deadline = match until {
        Some(until) => format!("the previous password works until {until}"),
        None => "the previous password no longer works".to_string(),
    };
    if restart && behind.bare_pods.is_empty() {
        return Observed::new(
            types::CREDENTIALS_ROLLED_OUT,
            false,
            "RestartingWorkloads",
            format!("restarted {names} for the new password; waiting for their pods ({deadline})"),
        );
    }
    let advice = if restart {
        "pods without a Deployment or StatefulSet must be restarted by hand"
    } else {
        "restart them (kubectl rollout restart) or set spec.credentials.restartOwners"
    };
    Observed::new(
        types::CREDENTIALS_ROLLED_OUT,
        false,
        "OldPasswordInUse",
        format!("{names} still run pods started with the previous password; {deadline}: {advice}"),
    )
}

/// The note of the Warning Event, when it is due.
pub fn warning(behind: &Behind, until: Timestamp) -> String {
    format!(
        "{} still run pods started with the previous password, which stops working at {until}: restart them (kubectl rollout restart) or set spec.credentials.restartOwners",
        behind.names()
    )
}

fn workload(
    kind: Kind,
    meta: &ObjectMeta,
    template: &PodTemplateSpec,
    selector: &LabelSelector,
) -> Workload {
    let template_meta = template.metadata.clone().unwrap_or_default();
    Workload {
        kind,
        name: meta.name.clone().unwrap_or_default(),
        template_labels: template_meta.labels.unwrap_or_default(),
        selector: selector.clone(),
        generation: template_meta
            .annotations
            .and_then(|a| a.get(GENERATION_ANNOTATION).cloned()),
        ours: meta
            .labels
            .as_ref()
            .and_then(|l| l.get(LABEL_MANAGED_BY))
            .is_some_and(|m| m == MANAGED_BY),
    }
}

/// Reads the namespace's Deployments, StatefulSets and the owner's pods.
pub async fn observe(
    client: &Client,
    namespace: &str,
    owner: &LabelSelector,
    generation: &str,
    issued_at: Timestamp,
) -> Result<Behind, kube::Error> {
    let all = ListParams::default();
    let mut workloads = Vec::new();
    for d in Api::<Deployment>::namespaced(client.clone(), namespace)
        .list(&all)
        .await?
    {
        let spec = d.spec.unwrap_or_default();
        workloads.push(workload(
            Kind::Deployment,
            &d.metadata,
            &spec.template,
            &spec.selector,
        ));
    }
    for s in Api::<StatefulSet>::namespaced(client.clone(), namespace)
        .list(&all)
        .await?
    {
        let spec = s.spec.unwrap_or_default();
        workloads.push(workload(
            Kind::StatefulSet,
            &s.metadata,
            &spec.template,
            &spec.selector,
        ));
    }
    let pods_selector = Selector::try_from(owner.clone())
        .map(|s| s.to_string())
        .unwrap_or_default();
    let pods = Api::<Pod>::namespaced(client.clone(), namespace)
        .list(&ListParams::default().labels(&pods_selector))
        .await?
        .into_iter()
        // servicedb's own pods (the instance, agent Jobs) and pods that
        // ended hold no connection.
        .filter(|p| {
            let ours = p
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(LABEL_MANAGED_BY))
                .is_some_and(|m| m == MANAGED_BY);
            let ended = p
                .status
                .as_ref()
                .and_then(|s| s.phase.as_deref())
                .is_some_and(|phase| matches!(phase, "Succeeded" | "Failed"));
            !ours && !ended
        })
        .map(|p| PodFacts {
            name: p.metadata.name.clone().unwrap_or_default(),
            labels: p.metadata.labels.clone().unwrap_or_default(),
            created: p.metadata.creation_timestamp.as_ref().map(|t| t.0),
            generation: p
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(GENERATION_ANNOTATION).cloned()),
        })
        .collect::<Vec<_>>();
    Ok(behind(owner, generation, issued_at, &workloads, &pods))
}

/// Rolls every workload in `behind` whose template does not carry the
/// current generation yet; returns the names of those patched.
pub async fn restart(
    client: &Client,
    namespace: &str,
    behind: &Behind,
    generation: &str,
) -> Result<Vec<String>, kube::Error> {
    let patch = json!({"spec": {"template": {"metadata": {"annotations": {GENERATION_ANNOTATION: generation}}}}});
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PatchParams::default()
    };
    let mut patched = Vec::new();
    for (w, restarted) in &behind.workloads {
        if *restarted {
            continue;
        }
        match w.kind {
            Kind::Deployment => {
                Api::<Deployment>::namespaced(client.clone(), namespace)
                    .patch(&w.name, &params, &Patch::Merge(&patch))
                    .await?;
            }
            Kind::StatefulSet => {
                Api::<StatefulSet>::namespaced(client.clone(), namespace)
                    .patch(&w.name, &params, &Patch::Merge(&patch))
                    .await?;
            }
        }
        patched.push(w.id());
    }
    Ok(patched)
}

/// When the Warning Event about pods on the previous password is due.
fn warning_at(until: Timestamp, grace: Duration) -> Option<Timestamp> {
    let lead = SignedDuration::try_from(warning_lead(grace)).ok()?;
    until.checked_sub(lead).ok()
}

/// How long until the Warning Event is due, while a grace period runs.
pub fn until_warning(plan: &Plan, grace: Duration, now: Timestamp) -> Option<Duration> {
    let warn_at = warning_at(plan.previous_valid_until?, grace)?;
    let wait = Duration::try_from(warn_at.duration_since(now)).ok()?;
    (!wait.is_zero()).then(|| wait + Duration::from_secs(1))
}

/// After a rotation: the owner's workloads still on the previous password,
/// restarted with `spec.credentials.restartOwners`, or named in a condition
/// and (near the end of the grace period) a Warning Event. `None` when
/// nothing was looked at: no grace period runs and no pod was behind.
pub async fn ensure(
    sdb: &ServiceDatabase,
    db: &ValidatedDatabase,
    plan: &Plan,
    ctx: &Context,
    now: Timestamp,
) -> Option<crate::api::conditions::Observed> {
    let was_behind = sdb.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == types::CREDENTIALS_ROLLED_OUT && c.status == "False")
    });
    let until = plan.previous_valid_until.filter(|until| *until > now);
    if until.is_none() && !was_behind {
        return None;
    }
    let generation = plan.issued_at.to_string();
    let observed = match observe(
        &ctx.client,
        &db.namespace,
        &db.owner,
        &generation,
        plan.issued_at,
    )
    .await
    {
        Ok(behind) => behind,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the owner's workloads and pods");
            return Some(Observed::unknown(
                types::CREDENTIALS_ROLLED_OUT,
                "CannotReadWorkloads",
                format!("cannot read the Deployments, StatefulSets and pods of the namespace: {e}"),
            ));
        }
    };
    if db.restart_owners && !observed.workloads.is_empty() {
        match restart(&ctx.client, &db.namespace, &observed, &generation).await {
            Ok(patched) if !patched.is_empty() => {
                tracing::info!(workloads = %patched.join(", "), "restarted for the new password");
                let event = KubeEvent {
                    type_: EventType::Normal,
                    reason: "WorkloadsRestarted".into(),
                    note: Some(format!(
                        "restarted {} for the new password",
                        patched.join(", ")
                    )),
                    action: "Restart".into(),
                    secondary: None,
                };
                crate::controller::publish(&ctx.recorder, &event, &sdb.object_ref(&())).await;
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "cannot restart the owner's workloads");
                return Some(Observed::new(
                    types::CREDENTIALS_ROLLED_OUT,
                    false,
                    "RestartFailed",
                    format!("cannot restart the owner's workloads for the new password: {e}"),
                ));
            }
        }
    }
    let near_end = until
        .and_then(|until| warning_at(until, db.grace_period))
        .is_some_and(|warn_at| warn_at <= now);
    let condition = condition(&observed, db.restart_owners, until);
    if near_end
        && condition.reason == "OldPasswordInUse"
        && let Some(until) = until
    {
        let event = KubeEvent {
            type_: EventType::Warning,
            reason: "OldPasswordInUse".into(),
            note: Some(warning(&observed, until)),
            action: "Rotate".into(),
            secondary: None,
        };
        crate::controller::publish(&ctx.recorder, &event, &sdb.object_ref(&())).await;
    }
    Some(condition)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn selector(pairs: &[(&str, &str)]) -> LabelSelector {
        LabelSelector {
            match_labels: Some(labels(pairs)),
            ..LabelSelector::default()
        }
    }

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn deployment(name: &str, app: &str, generation: Option<&str>) -> Workload {
        Workload {
            kind: Kind::Deployment,
            name: name.into(),
            template_labels: labels(&[("app", app), ("tier", "web")]),
            selector: selector(&[("app", app)]),
            generation: generation.map(str::to_string),
            ours: false,
        }
    }

    fn pod(name: &str, app: &str, created: &str, generation: Option<&str>) -> PodFacts {
        PodFacts {
            name: name.into(),
            labels: labels(&[("app", app), ("tier", "web")]),
            created: Some(at(created)),
            generation: generation.map(str::to_string),
        }
    }

    const ISSUED: &str = "2026-12-04T10:00:00.5Z";

    #[test]
    fn pods_started_before_the_password_are_behind_and_named_by_workload() {
        let owner = selector(&[("tier", "web")]);
        let workloads = [
            deployment("web", "web", None),
            deployment("api", "api", None),
            Workload {
                ours: true,
                ..deployment("orders-db", "web", None)
            },
        ];
        let pods = [
            pod("web-1", "web", "2026-12-04T09:00:00Z", None),
            pod("api-1", "api", "2026-12-04T10:05:00Z", None),
            pod("stray", "stray", "2026-12-04T09:00:00Z", None),
        ];
        let found = behind(&owner, ISSUED, at(ISSUED), &workloads, &pods);
        let names: Vec<_> = found.workloads.iter().map(|(w, r)| (w.id(), *r)).collect();
        assert_eq!(names, [("Deployment/web".to_string(), false)]);
        assert_eq!(found.bare_pods, ["stray"]);
        let c = condition(&found, false, Some(at("2026-12-04T11:00:00Z")));
        assert!(!c.status);
        assert_eq!(c.reason, "OldPasswordInUse");
        assert!(
            c.message.contains("Deployment/web, Pod/stray"),
            "{}",
            c.message
        );
        assert!(c.message.contains("2026-12-04T11:00:00Z"), "{}", c.message);
    }

    #[test]
    fn a_pod_carrying_the_current_generation_or_made_in_its_second_is_current() {
        let owner = selector(&[("app", "web")]);
        let workloads = [deployment("web", "web", Some(ISSUED))];
        let pods = [
            pod("web-1", "web", "2026-12-04T09:00:00Z", Some(ISSUED)),
            pod("web-2", "web", "2026-12-04T10:00:00Z", None),
        ];
        let found = behind(&owner, ISSUED, at(ISSUED), &workloads, &pods);
        assert!(found.is_empty(), "{found:?}");
        assert!(condition(&found, true, None).status);
    }

    #[test]
    fn a_restarted_workload_is_not_patched_again_while_it_rolls() {
        let owner = selector(&[("app", "web")]);
        let workloads = [deployment("web", "web", Some(ISSUED))];
        let pods = [pod("web-1", "web", "2026-12-04T09:00:00Z", None)];
        let found = behind(&owner, ISSUED, at(ISSUED), &workloads, &pods);
        assert_eq!(found.workloads.len(), 1);
        assert!(
            found.workloads[0].1,
            "the template already carries the generation"
        );
        let c = condition(&found, true, Some(at("2026-12-04T11:00:00Z")));
        assert_eq!(c.reason, "RestartingWorkloads");
    }

    #[test]
    fn the_warning_comes_a_quarter_of_the_grace_period_before_its_end_at_most_15_minutes() {
        assert_eq!(
            warning_lead(Duration::from_secs(40)),
            Duration::from_secs(10)
        );
        assert_eq!(
            warning_lead(Duration::from_secs(24 * 3600)),
            MAX_WARNING_LEAD
        );
    }
}
