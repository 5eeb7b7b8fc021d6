//! The NetworkPolicy that makes the database private to its service: only
//! the owner's pods, the operator and servicedb's own backup, restore and
//! verify pods may open connections; and Prometheus (the operator's
//! `--scraper-*-labels`) may reach the exporter of a monitored database.

use std::collections::BTreeMap;

use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    LabelSelector, LabelSelectorRequirement, OwnerReference,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::backup::{LABEL_JOB_CONTROLLER_UID, component};
use super::{
    LABEL_COMPONENT, LABEL_INSTANCE, LABEL_MANAGED_BY, MANAGED_BY, OperatorFacts, Scraper,
    object_meta, selector_labels,
};
use crate::engine::exporter;
use crate::model::database::ValidatedDatabase;

pub fn build(
    db: &ValidatedDatabase,
    facts: &OperatorFacts,
    owner: &OwnerReference,
) -> NetworkPolicy {
    let owner_pods = NetworkPolicyPeer {
        pod_selector: Some(db.owner.clone()),
        ..Default::default()
    };
    let operator = NetworkPolicyPeer {
        namespace_selector: Some(LabelSelector {
            match_labels: Some(BTreeMap::from([(
                "kubernetes.io/metadata.name".to_string(),
                facts.namespace.clone(),
            )])),
            ..Default::default()
        }),
        pod_selector: Some(LabelSelector {
            match_labels: Some(facts.pod_labels.clone()),
            ..Default::default()
        }),
        ..Default::default()
    };
    // Agent pods of this database (src/build/backup.rs), only when there
    // are backups or a restore to run: pods of a Job (the Job controller's
    // `controller-uid` label), of servicedb's agent components, for this
    // database. No label of its own that a team could put on an app pod to
    // be let in (as a `client-of` label would read); the namespace's users
    // can still copy these labels onto a pod of theirs, which a
    // NetworkPolicy cannot prevent (see the README's security model).
    let agents = (db.backup.is_some() || db.restore_from.is_some()).then(|| NetworkPolicyPeer {
        pod_selector: Some(agent_selector(db)),
        ..Default::default()
    });
    NetworkPolicy {
        metadata: object_meta(db, db.instance_name(), "network-policy", owner),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: Some(selector_labels(db)),
                ..Default::default()
            }),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(
                std::iter::once(NetworkPolicyIngressRule {
                    from: Some([owner_pods, operator].into_iter().chain(agents).collect()),
                    ports: Some(vec![NetworkPolicyPort {
                        port: Some(IntOrString::Int(db.engine_spec.port())),
                        protocol: Some("TCP".into()),
                        ..Default::default()
                    }]),
                })
                .chain(scraper_rule(db, &facts.scraper))
                .collect(),
            ),
            ..Default::default()
        }),
    }
}

/// Prometheus may reach the exporter's port, and only that port, when the
/// database is monitored.
fn scraper_rule(db: &ValidatedDatabase, scraper: &Scraper) -> Option<NetworkPolicyIngressRule> {
    db.monitoring
        .as_ref()
        .map(|_| scrape_rule(scraper, exporter::exporter(db.engine).port))
}

/// The scraper's pods, and nothing else, to `port`. Also an external
/// server's exporter ([`super::exporter`]).
pub fn scrape_rule(scraper: &Scraper, port: i32) -> NetworkPolicyIngressRule {
    let selector = |labels: &BTreeMap<String, String>| LabelSelector {
        match_labels: Some(labels.clone()),
        ..Default::default()
    };
    NetworkPolicyIngressRule {
        from: Some(vec![NetworkPolicyPeer {
            namespace_selector: Some(selector(&scraper.namespace_labels)),
            pod_selector: Some(selector(&scraper.pod_labels)),
            ..Default::default()
        }]),
        ports: Some(vec![NetworkPolicyPort {
            port: Some(IntOrString::Int(port)),
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
    }
}

/// The pods of servicedb's backup, verify and restore Jobs of `db`.
pub fn agent_selector(db: &ValidatedDatabase) -> LabelSelector {
    LabelSelector {
        match_labels: Some(BTreeMap::from([
            (LABEL_INSTANCE.to_string(), db.name.clone()),
            (LABEL_MANAGED_BY.to_string(), MANAGED_BY.to_string()),
        ])),
        match_expressions: Some(vec![
            LabelSelectorRequirement {
                key: LABEL_COMPONENT.into(),
                operator: "In".into(),
                values: Some(
                    [component::BACKUP, component::VERIFY, component::RESTORE]
                        .map(String::from)
                        .to_vec(),
                ),
            },
            LabelSelectorRequirement {
                key: LABEL_JOB_CONTROLLER_UID.into(),
                operator: "Exists".into(),
                values: None,
            },
        ]),
    }
}
