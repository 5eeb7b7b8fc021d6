//! The NetworkPolicy that makes the database private to its service: only
//! the owner's pods, the operator and servicedb's own backup, restore and
//! verify pods may open connections.

use std::collections::BTreeMap;

use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{OperatorFacts, object_meta, selector_labels};
use crate::controller::servicedatabase::validate::ValidatedDatabase;

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
    // are backups or a restore to run.
    let agents = (db.backup.is_some() || db.restore_from.is_some()).then(|| NetworkPolicyPeer {
        pod_selector: Some(LabelSelector {
            match_labels: Some(BTreeMap::from([(
                super::backup::LABEL_CLIENT_OF.to_string(),
                db.name.clone(),
            )])),
            ..Default::default()
        }),
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
            ingress: Some(vec![NetworkPolicyIngressRule {
                from: Some([owner_pods, operator].into_iter().chain(agents).collect()),
                ports: Some(vec![NetworkPolicyPort {
                    port: Some(IntOrString::Int(db.engine_spec.port())),
                    protocol: Some("TCP".into()),
                    ..Default::default()
                }]),
            }]),
            ..Default::default()
        }),
    }
}
