//! A PodDisruptionBudget: with `disruption: Protect` a voluntary eviction (a
//! node drain) never takes the only database pod down unannounced; with
//! `Allow` a drain may evict it.

use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{object_meta, selector_labels};
use crate::api::common::Disruption;
use crate::model::database::ValidatedDatabase;

pub fn build(db: &ValidatedDatabase, owner: &OwnerReference) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: object_meta(db, db.instance_name(), "database", owner),
        spec: Some(PodDisruptionBudgetSpec {
            min_available: (db.disruption == Disruption::Protect).then_some(IntOrString::Int(1)),
            max_unavailable: (db.disruption == Disruption::Allow).then_some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(selector_labels(db)),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}
