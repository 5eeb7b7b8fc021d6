//! The Argo CD health checks of `contrib/argocd/` and the kstatus rules over
//! the objects an e2e run took from a real API server (tests/fixtures/gitops/,
//! rewritten by `SERVICEDB_UPDATE_FIXTURES=1 cargo test --test e2e gitops`),
//! and the argocd-cm snippet against the scripts it embeds.

#[allow(dead_code)] // shared with the e2e test, which uses all of it
mod gitops_common;

use gitops_common::{EXPECTED, argocd_dir, argocd_health, expected, fixtures_dir, kstatus, script};

#[test]
fn every_fixture_has_the_expected_health_and_kstatus() {
    for (name, _, _) in EXPECTED {
        let path = fixtures_dir().join(format!("{name}.json"));
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (run the gitops e2e test)", path.display()));
        let obj: serde_json::Value = serde_json::from_str(&text).expect("fixture json");
        let (health, kstatus_want) = expected(name);
        let (status, message) = argocd_health(&obj);
        assert_eq!(status, health, "Argo CD health of {name}: {message}");
        assert!(!message.is_empty(), "{name} says why");
        assert_eq!(kstatus(&obj), kstatus_want, "kstatus of {name}");
    }
}

#[test]
fn every_fixture_is_expected() {
    for entry in std::fs::read_dir(fixtures_dir()).expect("fixtures") {
        let name = entry
            .expect("entry")
            .file_name()
            .to_string_lossy()
            .into_owned();
        let name = name.trim_end_matches(".json");
        assert!(
            EXPECTED.iter().any(|(n, _, _)| *n == name),
            "fixture {name} has no expectation"
        );
    }
}

#[test]
fn the_argocd_cm_snippet_embeds_the_scripts_as_they_are() {
    let text = std::fs::read_to_string(argocd_dir().join("argocd-cm.yaml")).expect("argocd-cm");
    let cm: serde_yaml::Value = serde_yaml::from_str(&text).expect("argocd-cm yaml");
    assert_eq!(cm["kind"].as_str(), Some("ConfigMap"));
    assert_eq!(cm["metadata"]["name"].as_str(), Some("argocd-cm"));
    let data = cm["data"].as_mapping().expect("data");
    let kinds = [
        "ServiceDatabase",
        "DatabaseServer",
        "DatabaseBackup",
        "DatabaseClass",
    ];
    assert_eq!(data.len(), kinds.len(), "one health check per kind");
    for kind in kinds {
        let key = format!("resource.customizations.health.servicedb.dev_{kind}");
        let embedded = data
            .get(key.as_str())
            .and_then(|v| v.as_str())
            .unwrap_or_else(|| panic!("{key} missing"));
        assert_eq!(
            embedded,
            script(kind),
            "{key} and {}.lua differ",
            kind.to_lowercase()
        );
    }
}

#[test]
fn an_object_servicedb_has_not_seen_yet_is_progressing() {
    for kind in ["ServiceDatabase", "DatabaseServer", "DatabaseBackup"] {
        let obj = serde_json::json!({"apiVersion": "servicedb.dev/v1alpha1", "kind": kind,
            "metadata": {"name": "x", "generation": 1}, "spec": {}});
        assert_eq!(argocd_health(&obj).0, "Progressing", "{kind}");
    }
}
