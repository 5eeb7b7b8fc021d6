//! Which namespaces may place databases on a server (`spec.allowedNamespaces`),
//! as Gateway API listeners decide it. Pure: the ServiceDatabase controller
//! reads the candidate Namespace and asks.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};

use crate::api::database_server::{AllowedNamespaces, NamespacesFrom};

/// Whether a server in `server_namespace` admits databases from `candidate`.
///
/// `Same` admits only the server's own namespace, `All` every namespace, and
/// `Selector` the namespaces whose labels match `selector` with Kubernetes'
/// label-selector rules (an empty selector matches every namespace). Anything
/// that cannot be understood — `Selector` without a selector, an unknown
/// operator, `In` without values — admits nobody: a server is never opened by
/// a mistake.
pub fn admits(allowed: &AllowedNamespaces, server_namespace: &str, candidate: &Namespace) -> bool {
    match allowed.from {
        NamespacesFrom::Same => candidate.metadata.name.as_deref() == Some(server_namespace),
        NamespacesFrom::All => true,
        NamespacesFrom::Selector => match &allowed.selector {
            Some(selector) => {
                let empty = BTreeMap::new();
                let labels = candidate.metadata.labels.as_ref().unwrap_or(&empty);
                selector_matches(selector, labels)
            }
            None => false,
        },
    }
}

fn selector_matches(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let by_labels = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let by_expressions = selector
        .match_expressions
        .iter()
        .flatten()
        .all(|r| requirement_matches(r, labels));
    by_labels && by_expressions
}

fn requirement_matches(r: &LabelSelectorRequirement, labels: &BTreeMap<String, String>) -> bool {
    let values = r.values.as_deref().unwrap_or_default();
    let value = labels.get(&r.key);
    match r.operator.as_str() {
        // The API server rejects In/NotIn without values on its own kinds;
        // here they would match everything or nothing by accident.
        "In" => !values.is_empty() && value.is_some_and(|v| values.contains(v)),
        "NotIn" => !values.is_empty() && value.is_none_or(|v| !values.contains(v)),
        "Exists" => values.is_empty() && value.is_some(),
        "DoesNotExist" => values.is_empty() && value.is_none(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ns(name: &str, labels: serde_json::Value) -> Namespace {
        serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}})).unwrap()
    }

    fn allowed(v: serde_json::Value) -> AllowedNamespaces {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn same_admits_only_the_servers_namespace() {
        let a = AllowedNamespaces::default();
        assert!(admits(&a, "platform", &ns("platform", json!({}))));
        assert!(!admits(&a, "platform", &ns("shop", json!({}))));
        assert!(!admits(&a, "platform", &Namespace::default()));
    }

    #[test]
    fn all_admits_every_namespace() {
        let a = allowed(json!({"from": "All"}));
        assert!(admits(&a, "platform", &ns("shop", json!({}))));
        assert!(admits(&a, "platform", &ns("platform", json!({}))));
    }

    #[test]
    fn selector_match_labels() {
        let a = allowed(
            json!({"from": "Selector", "selector": {"matchLabels": {"team": "shop", "env": "prod"}}}),
        );
        assert!(admits(
            &a,
            "p",
            &ns("shop", json!({"team": "shop", "env": "prod", "x": "y"}))
        ));
        assert!(!admits(&a, "p", &ns("shop", json!({"team": "shop"}))));
        assert!(!admits(
            &a,
            "p",
            &ns("shop", json!({"team": "shop", "env": "dev"}))
        ));
        // The server's own namespace is not special under a selector.
        assert!(!admits(&a, "p", &ns("p", json!({}))));
    }

    #[test]
    fn selector_match_expressions() {
        let a = allowed(
            json!({"from": "Selector", "selector": {"matchExpressions": [
                {"key": "env", "operator": "In", "values": ["prod", "staging"]},
                {"key": "tier", "operator": "NotIn", "values": ["sandbox"]},
                {"key": "team", "operator": "Exists"},
                {"key": "quarantined", "operator": "DoesNotExist"},
            ]}}),
        );
        assert!(admits(
            &a,
            "p",
            &ns("a", json!({"env": "prod", "team": "x"}))
        ));
        assert!(admits(
            &a,
            "p",
            &ns("a", json!({"env": "staging", "team": "x", "tier": "web"}))
        ));
        assert!(!admits(
            &a,
            "p",
            &ns("a", json!({"env": "dev", "team": "x"}))
        ));
        assert!(!admits(&a, "p", &ns("a", json!({"team": "x"}))));
        assert!(!admits(
            &a,
            "p",
            &ns("a", json!({"env": "prod", "team": "x", "tier": "sandbox"}))
        ));
        assert!(!admits(&a, "p", &ns("a", json!({"env": "prod"}))));
        assert!(!admits(
            &a,
            "p",
            &ns("a", json!({"env": "prod", "team": "x", "quarantined": ""}))
        ));
    }

    #[test]
    fn labels_and_expressions_must_both_match() {
        let a = allowed(json!({"from": "Selector", "selector": {
            "matchLabels": {"team": "shop"},
            "matchExpressions": [{"key": "env", "operator": "In", "values": ["prod"]}],
        }}));
        assert!(admits(
            &a,
            "p",
            &ns("a", json!({"team": "shop", "env": "prod"}))
        ));
        assert!(!admits(
            &a,
            "p",
            &ns("a", json!({"team": "shop", "env": "dev"}))
        ));
        assert!(!admits(
            &a,
            "p",
            &ns("a", json!({"team": "cart", "env": "prod"}))
        ));
    }

    #[test]
    fn empty_selector_matches_every_namespace() {
        let a = allowed(json!({"from": "Selector", "selector": {}}));
        assert!(admits(&a, "p", &ns("a", json!({}))));
        assert!(admits(&a, "p", &Namespace::default()));
    }

    #[test]
    fn nonsense_admits_nobody() {
        let none = AllowedNamespaces {
            from: NamespacesFrom::Selector,
            selector: None,
        };
        assert!(!admits(&none, "p", &ns("p", json!({}))));
        for bad in [
            json!({"key": "env", "operator": "Matches", "values": ["prod"]}),
            json!({"key": "env", "operator": "In", "values": []}),
            json!({"key": "env", "operator": "NotIn"}),
            json!({"key": "env", "operator": "Exists", "values": ["prod"]}),
        ] {
            let a = allowed(
                json!({"from": "Selector", "selector": {"matchExpressions": [bad.clone()]}}),
            );
            assert!(!admits(&a, "p", &ns("a", json!({"env": "prod"}))), "{bad}");
            assert!(!admits(&a, "p", &ns("a", json!({}))), "{bad}");
        }
    }
}
