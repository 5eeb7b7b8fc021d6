//! Pure builders of child objects, one file per kind of object. Builders read
//! only the validated value (plus name, namespace and owner reference) and
//! return complete k8s-openapi objects.

pub mod backup;
pub mod exporter;
pub mod monitoring;
pub mod network_policy;
pub mod pdb;
pub mod secret;
pub mod service;
pub mod statefulset;

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::batch::v1::CronJob;
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

use crate::engine::logins::{Login, Logins};
use crate::model::database::ValidatedDatabase;

/// Field manager of every server-side apply.
pub const FIELD_MANAGER: &str = "servicedb";
pub const LABEL_NAME: &str = "app.kubernetes.io/name";
/// The ServiceDatabase a child belongs to. Not `app.kubernetes.io/instance`:
/// Argo CD tracks an Application's objects by that label by default, so
/// children carrying it would be claimed, shown out of sync and pruned
/// (retained volumes included) by an Application of the same name.
pub const LABEL_INSTANCE: &str = "servicedb.dev/instance";
/// What earlier versions labelled children with instead of [`LABEL_INSTANCE`].
/// Children that still carry it are found by it too ([`instance_selectors`]),
/// and lose it on their next apply; a StatefulSet keeps it in its immutable
/// selector (see `controller::apply`).
pub const LEGACY_LABEL_INSTANCE: &str = "app.kubernetes.io/instance";
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const LABEL_COMPONENT: &str = "app.kubernetes.io/component";
pub const MANAGED_BY: &str = "servicedb";

pub use crate::model::naming::{MAX_CRONJOB_NAME, MAX_NAME, fit_object_name};

/// Facts about the running operator that builders need (never read from the
/// environment inside a reconcile).
#[derive(Clone, Debug)]
pub struct OperatorFacts {
    /// Image of the operator; its `servicedb` binary is copied into database pods.
    pub image: String,
    /// Path of the `servicedb` binary inside that image.
    pub binary_path: String,
    /// Namespace the operator runs in, admitted by NetworkPolicies.
    pub namespace: String,
    /// Labels of the operator's pods, admitted by NetworkPolicies.
    pub pod_labels: BTreeMap<String, String>,
    /// Where alerts' `runbook_url` point: `docs/runbooks.md` of this
    /// release, or a copy the platform team keeps.
    pub runbook_url: String,
    /// The Prometheus that scrapes exporters, admitted to their port.
    pub scraper: Scraper,
}

/// Which pods may scrape a database's exporter: pods with `pod_labels` in
/// namespaces with `namespace_labels`.
#[derive(Clone, Debug, PartialEq)]
pub struct Scraper {
    pub namespace_labels: BTreeMap<String, String>,
    pub pod_labels: BTreeMap<String, String>,
}

impl Default for Scraper {
    /// Pods labelled as Prometheus in the namespace `monitoring`.
    fn default() -> Scraper {
        Scraper {
            namespace_labels: BTreeMap::from([(
                "kubernetes.io/metadata.name".to_string(),
                "monitoring".to_string(),
            )]),
            pod_labels: BTreeMap::from([(LABEL_NAME.to_string(), "prometheus".to_string())]),
        }
    }
}

/// Passwords, read from the existing Secrets or freshly generated, and the
/// service's logins as the rotation plan has them.
#[derive(Clone)]
pub struct Credentials {
    pub admin_password: String,
    /// What the credentials Secret lists: `username`/`password`, and the
    /// `next-`/`previous-` logins of a rotation under way.
    pub logins: Logins,
    /// The rotation record kept on the credentials Secret.
    pub annotations: BTreeMap<String, String>,
}

impl Credentials {
    /// One login under the service's own name, no rotation record.
    pub fn single(db: &ValidatedDatabase, admin_password: &str, app_password: &str) -> Credentials {
        Credentials {
            admin_password: admin_password.to_string(),
            logins: Logins::single(Login::new(db.username.clone(), app_password)),
            annotations: BTreeMap::new(),
        }
    }
}

/// Every object a ServiceDatabase becomes.
pub struct Children {
    /// The dedicated instance; none when the database lives on a shared server.
    pub instance: Option<Instance>,
    pub credentials_secret: Secret,
    /// The scheduled backups, when `spec.backup` is set.
    pub backup_cronjob: Option<CronJob>,
    /// The scheduled verifications, when `spec.backup.verify` is set and a
    /// backup completed.
    pub verify_cronjob: Option<CronJob>,
    /// The Prometheus Operator objects, when monitoring is on.
    pub monitoring: Option<monitoring::Monitoring>,
}

/// The objects of a dedicated instance.
pub struct Instance {
    pub statefulset: StatefulSet,
    pub headless_service: Service,
    pub client_service: Service,
    pub pdb: PodDisruptionBudget,
    pub network_policy: NetworkPolicy,
    pub admin_secret: Secret,
}

/// Builds every child of a ServiceDatabase. `latest` is the newest completed
/// backup, which verification runs restore.
pub fn children(
    db: &ValidatedDatabase,
    creds: &Credentials,
    facts: &OperatorFacts,
    owner: &OwnerReference,
    latest: Option<&backup::Archive>,
) -> Children {
    let instance = db.server.is_none().then(|| Instance {
        statefulset: statefulset::build(db, facts, owner),
        headless_service: service::headless(db, owner),
        client_service: service::client(db, owner),
        pdb: pdb::build(db, owner),
        network_policy: network_policy::build(db, facts, owner),
        admin_secret: secret::admin(db, creds, owner),
    });
    let backup_cronjob = db
        .backup
        .as_ref()
        .map(|b| backup::backup_cronjob(db, b, facts, owner));
    let verify_cronjob = match (
        db.backup.as_ref().and_then(|b| b.verify_schedule.as_ref()),
        latest,
    ) {
        (Some(schedule), Some(latest)) => {
            Some(backup::verify_cronjob(db, schedule, latest, facts, owner))
        }
        _ => None,
    };
    Children {
        instance,
        credentials_secret: secret::credentials(db, creds, owner),
        backup_cronjob,
        verify_cronjob,
        monitoring: monitoring::build(db, facts, owner),
    }
}

/// The standard labels of a ServiceDatabase's child with the given component.
pub fn labels(db: &ValidatedDatabase, component: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_NAME.to_string(), db.engine.as_str().to_string()),
        (LABEL_INSTANCE.to_string(), db.name.clone()),
        (LABEL_MANAGED_BY.to_string(), MANAGED_BY.to_string()),
        (LABEL_COMPONENT.to_string(), component.to_string()),
    ])
}

/// Labels that select the database pods (a subset of the pod labels that
/// never changes, since a StatefulSet selector is immutable).
pub fn selector_labels(db: &ValidatedDatabase) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_INSTANCE.to_string(), db.name.clone()),
        (LABEL_MANAGED_BY.to_string(), MANAGED_BY.to_string()),
        (LABEL_COMPONENT.to_string(), "database".to_string()),
    ])
}

/// Label selectors of an instance's objects made by servicedb: by
/// [`LABEL_INSTANCE`], then by [`LEGACY_LABEL_INSTANCE`] (objects made by
/// an earlier version). A list by both finds every one; extra terms are
/// appended to each.
pub fn instance_selectors(instance: &str, extra: &str) -> [String; 2] {
    [LABEL_INSTANCE, LEGACY_LABEL_INSTANCE].map(|label| {
        let base = format!("{label}={instance},{LABEL_MANAGED_BY}={MANAGED_BY}");
        if extra.is_empty() {
            base
        } else {
            format!("{base},{extra}")
        }
    })
}

/// The instance an object's labels name, by [`LABEL_INSTANCE`] or else by
/// [`LEGACY_LABEL_INSTANCE`].
pub fn instance_label(labels: &BTreeMap<String, String>) -> Option<&String> {
    labels
        .get(LABEL_INSTANCE)
        .or_else(|| labels.get(LEGACY_LABEL_INSTANCE))
}

/// Name, namespace, standard labels and the controller owner reference.
pub fn object_meta(
    db: &ValidatedDatabase,
    name: String,
    component: &str,
    owner: &OwnerReference,
) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: Some(db.namespace.clone()),
        labels: Some(labels(db, component)),
        owner_references: Some(vec![owner.clone()]),
        ..Default::default()
    }
}

#[cfg(test)]
mod monitoring_tests;
#[cfg(test)]
mod tests;

/// The uid (and gid, and volume group) the engine's processes run as:
/// `pod.runAsUser`, else the image's own.
pub fn run_as_user(db: &ValidatedDatabase) -> i64 {
    db.pod
        .run_as_user
        .unwrap_or_else(|| db.engine_spec.run_as_user())
}

/// `spec.pod` (over the class's) on a pod template: scheduling, pull
/// Secrets, extra labels and annotations. servicedb's own labels win (the
/// CRD refuses theirs among the extra ones).
pub fn with_pod_settings(
    db: &ValidatedDatabase,
    mut template: k8s_openapi::api::core::v1::PodTemplateSpec,
) -> k8s_openapi::api::core::v1::PodTemplateSpec {
    let settings = &db.pod;
    let meta = template.metadata.get_or_insert_with(Default::default);
    if let Some(extra) = &settings.labels {
        let labels = meta.labels.get_or_insert_with(Default::default);
        for (key, value) in extra {
            labels.entry(key.clone()).or_insert_with(|| value.clone());
        }
    }
    if let Some(extra) = &settings.annotations {
        let annotations = meta.annotations.get_or_insert_with(Default::default);
        for (key, value) in extra {
            annotations
                .entry(key.clone())
                .or_insert_with(|| value.clone());
        }
    }
    if let Some(pod) = template.spec.as_mut() {
        pod.node_selector.clone_from(&settings.node_selector);
        pod.tolerations.clone_from(&settings.tolerations);
        pod.affinity.clone_from(&settings.affinity);
        pod.topology_spread_constraints
            .clone_from(&settings.topology_spread_constraints);
        pod.priority_class_name
            .clone_from(&settings.priority_class_name);
        pod.image_pull_secrets
            .clone_from(&settings.image_pull_secrets);
    }
    template
}
