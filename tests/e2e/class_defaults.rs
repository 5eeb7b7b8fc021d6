//! What a DatabaseClass sets is what its ServiceDatabases get, under their
//! own settings: backups field by field (and required backups), the
//! disruption policy of the PodDisruptionBudget, and monitoring (required
//! by a class, or turned on and off by the database: the exporter sidecar,
//! its login in the admin Secret, the `metrics` port and the scraper's
//! NetworkPolicy rule come and go with it).

use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::batch::v1::CronJob;
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams};
use serde_json::{Value, json};
use servicedb::api::{DatabaseClass, Phase, ServiceDatabase};

use crate::support::harness::{Env, apply_manifest, backup_example, wait_for};
use crate::support::objects::get_when;
use crate::support::objects::wait_phase;

async fn class(env: &Env, name: &str, extra: Value) {
    let mut spec = json!({"engine": "Postgres", "versions": ["17"]});
    if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
        spec.extend(extra.clone());
    }
    let class = json!({"apiVersion": "servicedb.dev/v1alpha1", "kind": "DatabaseClass",
        "metadata": {"name": name}, "spec": spec});
    Api::<DatabaseClass>::all(env.client.clone())
        .patch(
            name,
            &PatchParams::apply("servicedb-e2e").force(),
            &Patch::Apply(&class),
        )
        .await
        .unwrap_or_else(|e| panic!("applying class {name}: {e}"));
}

async fn database(env: &Env, name: &str, extra: Value) {
    let mut spec =
        json!({"engine": "Postgres", "owner": {"podSelector": {"matchLabels": {"app": name}}}});
    if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
        spec.extend(extra.clone());
    }
    let sdb = json!({"apiVersion": "servicedb.dev/v1alpha1", "kind": "ServiceDatabase",
        "metadata": {"name": name}, "spec": spec});
    env.api::<ServiceDatabase>()
        .patch(
            name,
            &PatchParams::apply("servicedb-e2e").force(),
            &Patch::Apply(&sdb),
        )
        .await
        .unwrap_or_else(|e| panic!("applying {name}: {e}"));
}

fn spec_valid(sdb: &ServiceDatabase) -> (String, String, String) {
    sdb.status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "SpecValid"))
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
        .unwrap_or_default()
}

async fn pdb_policy(env: &Env, name: &str) -> (Option<IntOrString>, Option<IntOrString>) {
    let pdb = get_when(&env.api::<PodDisruptionBudget>(), &format!("{name}-db")).await;
    let spec = pdb.spec.expect("spec");
    (spec.min_available, spec.max_unavailable)
}

/// Whether the instance of `name` has, or has not, each part of monitoring,
/// as the operator applied it to the API server.
async fn assert_monitored(env: &Env, name: &str, on: bool) {
    let instance = format!("{name}-db");
    let admin = format!("{name}-db-admin");
    let statefulsets = env.api::<StatefulSet>();
    let secrets = env.api::<Secret>();
    let services = env.api::<Service>();
    let policies = env.api::<NetworkPolicy>();
    let exporter = wait_for(
        &format!(
            "{name}'s monitoring to be {}",
            if on { "on" } else { "off" }
        ),
        Duration::from_secs(60),
        || async {
            let pod = statefulsets
                .get(&instance)
                .await
                .ok()?
                .spec?
                .template
                .spec?;
            let exporter = pod.containers.iter().find(|c| c.name == "exporter");
            let keys = secrets.get(&admin).await.ok()?.data.unwrap_or_default();
            let ports = services.get(&instance).await.ok()?.spec?.ports?;
            let rules = policies.get(&instance).await.ok()?.spec?.ingress?;
            let metrics = ports.iter().any(|p| p.name.as_deref() == Some("metrics"));
            let state = (
                exporter.is_some(),
                keys.contains_key("monitoring-password"),
                metrics,
                rules.len() == 2,
            );
            (state == (on, on, on, on)).then_some(exporter.cloned())
        },
    )
    .await;
    if let Some(exporter) = exporter {
        // The password reaches the exporter from the Secret, never as a value.
        let env = exporter.env.unwrap_or_default();
        let password = env
            .iter()
            .find(|e| e.name == "DATA_SOURCE_PASS")
            .expect("DATA_SOURCE_PASS");
        assert!(password.value.is_none());
        let reference = password
            .value_from
            .as_ref()
            .and_then(|f| f.secret_key_ref.as_ref())
            .expect("from the Secret");
        assert_eq!(
            (reference.name.as_str(), reference.key.as_str()),
            (admin.as_str(), "monitoring-password")
        );
    }
}

#[tokio::test]
async fn a_class_gives_its_backups_and_disruption_policy_and_the_database_overrides_them() {
    let env = Env::new("class-defaults").await;
    let backed = format!("{}-backed", env.ns);
    let monitored = format!("{}-monitored", env.ns);
    class(
        &env,
        &backed,
        json!({"disruption": "Allow", "backup": {"required": true, "schedule": "0 3 * * *",
            "destination": {"volume": {"claimName": "backups"}}, "retention": {"keepLast": 3}}}),
    )
    .await;
    class(&env, &monitored, json!({"monitoring": {"required": true}})).await;

    // The class's backups and policy, nothing of its own.
    database(&env, "inherits", json!({"className": backed})).await;
    // Its own schedule and policy over the class's; the class's destination.
    database(
        &env,
        "overrides",
        json!({"className": backed, "backup": {"schedule": "@hourly"}, "disruption": "Protect"}),
    )
    .await;
    // The default class has no backups and protects.
    database(&env, "plain", json!({})).await;
    // Snapshot is accepted with the class's backups.
    database(
        &env,
        "snapshot",
        json!({"className": backed, "deletionPolicy": "Snapshot"}),
    )
    .await;

    let cronjobs: Api<CronJob> = env.api();
    let schedule = |c: CronJob| c.spec.expect("spec").schedule;
    assert_eq!(
        schedule(get_when(&cronjobs, "inherits-db-backup").await),
        "0 3 * * *",
        "the class's schedule"
    );
    let overrides = get_when(&cronjobs, "overrides-db-backup").await;
    let args = overrides
        .spec
        .clone()
        .and_then(|s| s.job_template.spec)
        .and_then(|s| s.template.spec)
        .and_then(|p| p.containers[0].args.clone())
        .unwrap_or_default();
    assert_eq!(schedule(overrides), "@hourly", "its own schedule");
    assert!(
        args.iter()
            .any(|a| a.contains(&format!("file:///backup/{}/overrides", env.ns))),
        "the class's volume destination: {args:?}"
    );
    get_when(&cronjobs, "snapshot-db-backup").await;

    assert_eq!(
        pdb_policy(&env, "inherits").await,
        (None, Some(IntOrString::Int(1))),
        "Allow from the class: maxUnavailable 1"
    );
    assert_eq!(
        pdb_policy(&env, "overrides").await,
        (Some(IntOrString::Int(1)), None),
        "its own Protect"
    );
    assert_eq!(
        pdb_policy(&env, "plain").await,
        (Some(IntOrString::Int(1)), None),
        "Protect by default"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        cronjobs
            .get_opt("plain-db-backup")
            .await
            .expect("get")
            .is_none(),
        "no backups without any backup settings"
    );

    // Switching its own policy to Allow changes the PDB in place.
    database(&env, "plain", json!({"disruption": "Allow"})).await;
    let pdbs: Api<PodDisruptionBudget> = env.api();
    wait_for(
        "plain's PDB to allow a drain",
        Duration::from_secs(30),
        || async {
            let spec = pdbs.get("plain-db").await.ok()?.spec?;
            (spec.max_unavailable == Some(IntOrString::Int(1)) && spec.min_available.is_none())
                .then_some(())
        },
    )
    .await;

    // Turning off the backups a class requires is refused, naming the class.
    database(
        &env,
        "opts-out",
        json!({"className": backed, "backup": {"enabled": false}}),
    )
    .await;
    let sdbs: Api<ServiceDatabase> = env.api();
    let refused = wait_phase(&sdbs, "opts-out", Phase::Failed).await;
    let (status, reason, message) = spec_valid(&refused);
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "BackupRequired")
    );
    assert!(
        message.contains(&backed) && message.contains("spec.backup.enabled"),
        "{message}"
    );
    // …and it was not built.
    assert!(
        cronjobs
            .get_opt("opts-out-db-backup")
            .await
            .expect("get")
            .is_none()
    );

    // A class that requires monitoring refuses a database turning it off…
    database(
        &env,
        "watched",
        json!({"className": monitored, "monitoring": {"enabled": false}}),
    )
    .await;
    let refused = wait_phase(&sdbs, "watched", Phase::Failed).await;
    let (_, reason, message) = spec_valid(&refused);
    assert_eq!(reason, "MonitoringRequired");
    assert!(message.contains(&monitored), "{message}");
    // …and accepts it once the database leaves the choice to the class.
    database(&env, "watched", json!({"className": monitored})).await;
    wait_for(
        "watched to be accepted with the class's monitoring",
        Duration::from_secs(30),
        || async {
            let sdb = sdbs.get("watched").await.ok()?;
            (spec_valid(&sdb).0 == "True").then_some(())
        },
    )
    .await;
    assert_monitored(&env, "watched", true).await;
    // A database turns it on and off itself.
    database(&env, "toggled", json!({"monitoring": {"enabled": true}})).await;
    assert_monitored(&env, "toggled", true).await;
    database(&env, "toggled", json!({"monitoring": {"enabled": false}})).await;
    assert_monitored(&env, "toggled", false).await;

    // The README's class: its databases get its nightly backups to S3.
    apply_manifest(
        &env.client,
        &env.ns,
        &backup_example("class-backed-up.yaml"),
    )
    .await;
    database(&env, "readme", json!({"className": "postgres-backed-up"})).await;
    let cron = get_when(&cronjobs, "readme-db-backup").await;
    assert_eq!(cron.spec.expect("spec").schedule, "0 2 * * *");
    database(
        &env,
        "readme-off",
        json!({"className": "postgres-backed-up", "backup": {"enabled": false}}),
    )
    .await;
    let refused = wait_phase(&sdbs, "readme-off", Phase::Failed).await;
    assert!(spec_valid(&refused).2.contains("postgres-backed-up"));

    // `kubectl servicedb backup` knows the class's backups too.
    let plugin = crate::support::cli::plugin_dir();
    let now = crate::support::cli::run(
        plugin.path(),
        &env.ns,
        &[
            "backup",
            "readme",
            "--backup-name",
            "readme-now",
            "--wait=false",
        ],
    );
    assert!(now.status.success(), "{}", crate::support::cli::text(&now));
    get_when(&env.api::<servicedb::api::DatabaseBackup>(), "readme-now").await;
    let plain = crate::support::cli::run(plugin.path(), &env.ns, &["backup", "plain"]);
    assert!(!plain.status.success());
    assert!(
        crate::support::cli::text(&plain).contains("has no backups"),
        "{}",
        crate::support::cli::text(&plain)
    );

    for sdb in [
        "inherits",
        "overrides",
        "opts-out",
        "watched",
        "readme",
        "readme-off",
    ] {
        let _ = sdbs.delete(sdb, &DeleteParams::default()).await;
    }
    for name in [backed.as_str(), monitored.as_str(), "postgres-backed-up"] {
        let _ = Api::<DatabaseClass>::all(env.client.clone())
            .delete(name, &DeleteParams::default())
            .await;
    }
}

/// `pod` from the class, field by field under the database's own: the
/// database's pods and its backup Jobs' pods carry the scheduling, pull
/// Secrets, extra labels and annotations and the uid; servicedb's own
/// labels cannot be set.
#[tokio::test]
async fn pod_settings_reach_the_database_and_its_jobs() {
    let env = Env::new("class-pod").await;
    let class_name = format!("{}-pinned", env.ns);
    class(
        &env,
        &class_name,
        json!({"pod": {"nodeSelector": {"disk": "ssd"}, "priorityClassName": "databases",
            "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "db", "effect": "NoSchedule"}],
            "imagePullSecrets": [{"name": "mirror"}], "runAsUser": 26,
            "labels": {"team": "platform"}}}),
    )
    .await;
    database(
        &env,
        "orders",
        json!({"className": class_name, "pod": {"nodeSelector": {"zone": "a"}, "labels": {"team": "orders"},
            "annotations": {"example.com/audit": "yes"},
            "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "ScheduleAnyway"}]},
            "backup": {"schedule": "@daily", "destination": {"volume": {"claimName": "backups"}}}}),
    )
    .await;
    let sts = get_when(&env.api::<StatefulSet>(), "orders-db").await;
    let template = sts.spec.expect("spec").template;
    let cron = get_when(&env.api::<CronJob>(), "orders-db-backup").await;
    let job_template = cron
        .spec
        .expect("spec")
        .job_template
        .spec
        .expect("job spec")
        .template;
    for (what, template) in [("database", template), ("backup", job_template)] {
        let meta = template.metadata.expect("metadata");
        let labels = meta.labels.expect("labels");
        assert_eq!(
            labels.get("team").map(String::as_str),
            Some("orders"),
            "{what}: the database's own"
        );
        assert_eq!(
            labels.get("servicedb.dev/instance").map(String::as_str),
            Some("orders"),
            "{what}: servicedb's labels stay"
        );
        assert_eq!(
            meta.annotations
                .unwrap_or_default()
                .get("example.com/audit")
                .map(String::as_str),
            Some("yes"),
            "{what}"
        );
        let pod = template.spec.expect("pod");
        assert_eq!(
            pod.node_selector,
            Some([("zone".to_string(), "a".to_string())].into()),
            "{what}: the database's nodeSelector replaces the class's"
        );
        assert_eq!(
            pod.priority_class_name.as_deref(),
            Some("databases"),
            "{what}: from the class"
        );
        assert_eq!(pod.tolerations.map(|t| t.len()), Some(1), "{what}");
        assert_eq!(
            pod.image_pull_secrets.map(|s| s[0].name.clone()),
            Some("mirror".to_string()),
            "{what}"
        );
        assert_eq!(
            pod.topology_spread_constraints.map(|t| t.len()),
            Some(1),
            "{what}"
        );
        let security = pod.security_context.expect("security context");
        assert_eq!(
            (security.run_as_user, security.fs_group),
            (Some(26), Some(26)),
            "{what}"
        );
    }

    // servicedb's own labels are refused by the API server.
    let refused = env
        .api::<ServiceDatabase>()
        .patch(
            "orders",
            &PatchParams::apply("servicedb-e2e").force(),
            &Patch::Apply(&json!({"apiVersion": "servicedb.dev/v1alpha1", "kind": "ServiceDatabase",
                "metadata": {"name": "orders"},
                "spec": {"engine": "Postgres", "owner": {"podSelector": {"matchLabels": {"app": "orders"}}},
                    "pod": {"labels": {"servicedb.dev/instance": "other"}}}})),
        )
        .await
        .expect_err("refused");
    assert!(refused.to_string().contains("servicedb's own"), "{refused}");
}

/// A running PostgreSQL instance keeps its version: a class's new
/// `defaultVersion` does not move it (`status.version` holds), and a
/// `spec.version` of another major is refused with a condition naming
/// `spec.version` while the StatefulSet's image stays; asking for the
/// running version again clears it.
#[tokio::test]
async fn a_major_version_change_is_refused_and_the_instance_keeps_running() {
    let env = Env::new("class-version").await;
    let class_name = format!("{}-pg", env.ns);
    class(
        &env,
        &class_name,
        json!({"versions": ["15", "17"], "defaultVersion": "15"}),
    )
    .await;
    database(&env, "orders", json!({"className": class_name})).await;
    let sts_api = env.api::<StatefulSet>();
    let image = |sts: StatefulSet| {
        sts.spec
            .expect("spec")
            .template
            .spec
            .expect("pod")
            .containers[0]
            .image
            .clone()
            .expect("image")
    };
    let before = image(get_when(&sts_api, "orders-db").await);
    assert!(before.ends_with(":15"), "{before}");
    let sdbs = env.api::<ServiceDatabase>();
    wait_for("status.version 15", Duration::from_secs(30), || async {
        let sdb = sdbs.get("orders").await.ok()?;
        (sdb.status?.version.as_deref() == Some("15")).then_some(())
    })
    .await;

    // The class moves on to 17: the unpinned database stays on 15.
    class(
        &env,
        &class_name,
        json!({"versions": ["15", "17"], "defaultVersion": "17"}),
    )
    .await;
    database(&env, "newcomer", json!({"className": class_name})).await;
    let newcomer = image(get_when(&sts_api, "newcomer-db").await);
    assert!(
        newcomer.ends_with(":17"),
        "a new database gets the new default: {newcomer}"
    );
    let orders = sdbs.get("orders").await.expect("orders");
    assert_eq!(spec_valid(&orders).0, "True");
    assert_eq!(
        image(sts_api.get("orders-db").await.expect("sts")),
        before,
        "the class's new default does not move a running instance"
    );

    // Its own spec.version asks for 17: refused, the image stays.
    database(
        &env,
        "orders",
        json!({"className": class_name, "version": "17"}),
    )
    .await;
    let refused = wait_for("the change refused", Duration::from_secs(30), || async {
        let sdb = sdbs.get("orders").await.ok()?;
        let (status, reason, message) = spec_valid(&sdb);
        (status == "False" && reason == "MajorUpgradeUnsupported").then_some(message)
    })
    .await;
    assert!(
        refused.contains("spec.version") && refused.contains("spec.version: \"15\""),
        "{refused}"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        image(sts_api.get("orders-db").await.expect("sts")),
        before,
        "the image is not changed under the data"
    );

    // Pinned to what runs: valid again, same image.
    database(
        &env,
        "orders",
        json!({"className": class_name, "version": "15"}),
    )
    .await;
    wait_for("valid again", Duration::from_secs(30), || async {
        let sdb = sdbs.get("orders").await.ok()?;
        (spec_valid(&sdb).0 == "True").then_some(())
    })
    .await;
    assert_eq!(image(sts_api.get("orders-db").await.expect("sts")), before);
}
