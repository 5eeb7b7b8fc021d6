//! What GitOps tools make of servicedb's objects: Argo CD's health (the Lua
//! scripts of `contrib/argocd/`, run by a real Lua 5.1 interpreter, the
//! language of gopher-lua that Argo CD embeds, as Argo CD runs them: the
//! object as the global `obj`, a table `hs` returned) and
//! Flux's kstatus (the documented rules of sigs.k8s.io/cli-utils/pkg/kstatus
//! for custom resources). Shared by the e2e test, which takes the objects from
//! a real API server, and the fast test over the fixtures it saved.

use std::path::PathBuf;

use mlua::LuaSerdeExt;
use mlua::serde::SerializeOptions;
use serde_json::Value;

/// The repository's `contrib/argocd/`.
pub fn argocd_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("contrib/argocd")
}

/// Where the e2e test saves the objects it fetched.
pub fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gitops")
}

/// The health check script of a kind, as shipped.
pub fn script(kind: &str) -> String {
    let path = argocd_dir().join(format!("{}.lua", kind.to_lowercase()));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Argo CD's `(status, message)` for an object, by its kind's script.
pub fn argocd_health(obj: &Value) -> (String, String) {
    let kind = obj["kind"].as_str().expect("object has a kind");
    let lua = mlua::Lua::new();
    let version: String = lua.globals().get("_VERSION").expect("_VERSION");
    assert_eq!(version, "Lua 5.1", "Argo CD's gopher-lua speaks Lua 5.1");
    // Argo CD hands the object over with JSON null as nil.
    let options = SerializeOptions::new()
        .serialize_none_to_null(false)
        .serialize_unit_to_null(false);
    let value = lua.to_value_with(obj, options).expect("object to Lua");
    lua.globals().set("obj", value).expect("set obj");
    let hs: mlua::Table = lua
        .load(script(kind))
        .set_name(format!("{kind}.lua"))
        .eval()
        .unwrap_or_else(|e| panic!("health script of {kind}: {e}"));
    let status: String = hs.get("status").expect("hs.status");
    let message: String = hs.get("message").unwrap_or_default();
    (status, message)
}

/// kstatus's status of a custom resource: `Terminating` once deleted;
/// `InProgress` while `status.observedGeneration` differs from
/// `metadata.generation`; `InProgress` with `Reconciling=True`; `Failed` with
/// `Stalled=True`; else `Current`. (kstatus reads no other condition of a
/// custom resource: `Ready=False` alone would be `Current`, which is why
/// servicedb sets `Reconciling` and `Stalled`.)
pub fn kstatus(obj: &Value) -> &'static str {
    if obj["metadata"]["deletionTimestamp"].is_string() {
        return "Terminating";
    }
    if let (Some(generation), Some(observed)) = (
        obj["metadata"]["generation"].as_i64(),
        obj["status"]["observedGeneration"].as_i64(),
    ) && generation != observed
    {
        return "InProgress";
    }
    let conditions = obj["status"]["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let is_true = |t: &str| {
        conditions
            .iter()
            .any(|c| c["type"] == t && c["status"] == "True")
    };
    if is_true("Reconciling") {
        return "InProgress";
    }
    if is_true("Stalled") {
        return "Failed";
    }
    "Current"
}

/// Each fixture (a state an e2e run drives an object into) with the health
/// Argo CD must show and the status kstatus must compute.
pub const EXPECTED: &[(&str, &str, &str)] = &[
    ("databaseclass", "Healthy", "Current"),
    ("databaseserver-ready", "Healthy", "Current"),
    ("databaseserver-unreachable", "Progressing", "InProgress"),
    ("databaseserver-invalid", "Degraded", "Failed"),
    ("databaseserver-lost", "Degraded", "InProgress"),
    ("servicedatabase-shared-ready", "Healthy", "Current"),
    ("servicedatabase-provisioning", "Progressing", "InProgress"),
    (
        "servicedatabase-spec-not-observed",
        "Progressing",
        "InProgress",
    ),
    ("servicedatabase-invalid", "Degraded", "Failed"),
    ("servicedatabase-backups-failing", "Degraded", "Current"),
    ("servicedatabase-restore-failed", "Degraded", "Failed"),
    ("databasebackup-running", "Progressing", "InProgress"),
    ("databasebackup-completed", "Healthy", "Current"),
    ("databasebackup-failed", "Degraded", "Failed"),
];

/// The expectation for a fixture name.
pub fn expected(name: &str) -> (&'static str, &'static str) {
    EXPECTED
        .iter()
        .find(|(n, _, _)| *n == name)
        .map(|(_, health, kstatus)| (*health, *kstatus))
        .unwrap_or_else(|| panic!("no expectation for {name}"))
}

/// An object as saved: what the API server returned, less `managedFields`.
pub fn trimmed(mut obj: Value) -> Value {
    if let Some(meta) = obj["metadata"].as_object_mut() {
        meta.remove("managedFields");
    }
    obj
}
