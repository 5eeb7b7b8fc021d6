//! A monitored dedicated instance: the exporter sidecar, its login, its
//! port on the Service and the NetworkPolicy rule for Prometheus.

use k8s_openapi::api::core::v1::Container;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::*;
use crate::engine::monitoring;

fn monitored(fixture_name: &str, monitoring: bool) -> Flat {
    let mut sdb: ServiceDatabase = fixture(fixture_name);
    sdb.spec.monitoring = Some(crate::api::common::MonitoringSpec {
        enabled: Some(monitoring),
    });
    let db = validate(&sdb, &bare_class(sdb.spec.engine), None).unwrap();
    let owner = sdb.controller_owner_ref(&()).unwrap();
    let creds = Credentials::single(&db, "admin-pw", "app-pw");
    flat(children(&db, &creds, &facts(), &owner, None))
}

fn containers(c: &Flat) -> Vec<Container> {
    c.statefulset
        .spec
        .clone()
        .unwrap()
        .template
        .spec
        .unwrap()
        .containers
}

/// `name` → (literal value, or `secret/key` it comes from).
fn env(container: &Container) -> BTreeMap<String, String> {
    container
        .env
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|e| {
            let value = match (e.value, e.value_from.and_then(|f| f.secret_key_ref)) {
                (Some(value), None) => value,
                (None, Some(r)) => format!("secret {}/{}", r.name, r.key),
                other => panic!("{}: {other:?}", e.name),
            };
            (e.name, value)
        })
        .collect()
}

#[test]
fn a_monitored_postgres_runs_the_exporter_with_its_own_login_from_the_admin_secret() {
    let c = monitored("sdb-orders.yaml", true);
    let containers = containers(&c);
    assert_eq!(containers.len(), 2);
    let exporter = &containers[1];
    assert_eq!(exporter.name, "exporter");
    assert_eq!(
        exporter.image.as_deref(),
        Some("quay.io/prometheuscommunity/postgres-exporter:v0.17.1")
    );
    assert_eq!(
        exporter.args.clone().unwrap(),
        vec!["--web.listen-address=:9187"]
    );
    let port = &exporter.ports.as_ref().unwrap()[0];
    assert_eq!(
        (port.name.as_deref(), port.container_port),
        (Some("metrics"), 9187)
    );
    assert_eq!(
        env(exporter),
        BTreeMap::from([
            (
                "DATA_SOURCE_URI".to_owned(),
                "127.0.0.1:5432/postgres?sslmode=disable".to_owned()
            ),
            (
                "DATA_SOURCE_USER".to_owned(),
                "secret orders-db-admin/monitoring-username".to_owned()
            ),
            (
                "DATA_SOURCE_PASS".to_owned(),
                "secret orders-db-admin/monitoring-password".to_owned()
            ),
        ])
    );
    let security = exporter.security_context.as_ref().unwrap();
    assert_eq!(security.read_only_root_filesystem, Some(true));
    assert_eq!(security.allow_privilege_escalation, Some(false));

    // The login the instance manager creates: not the admin's password.
    assert_eq!(
        secret(&c.admin_secret, "monitoring-username"),
        "servicedb-monitor"
    );
    let password = secret(&c.admin_secret, "monitoring-password");
    assert_eq!(password, monitoring::derive_password("admin-pw"));
    assert_ne!(password, "admin-pw");
    assert!(
        !serde_json::to_string(&c.statefulset)
            .unwrap()
            .contains(&password),
        "no password in the StatefulSet"
    );

    // Prometheus finds it on the client Service…
    let ports = c.client_service.spec.clone().unwrap().ports.unwrap();
    let metrics = ports
        .iter()
        .find(|p| p.name.as_deref() == Some("metrics"))
        .expect("a metrics port");
    assert_eq!(metrics.port, 9187);
    // …and may reach that port only, from its namespace and pods.
    let rules = c.network_policy.spec.clone().unwrap().ingress.unwrap();
    assert_eq!(rules.len(), 2);
    let scraper = &rules[1];
    let ports = scraper.ports.clone().unwrap();
    assert_eq!(ports.len(), 1);
    assert_eq!(ports[0].port, Some(IntOrString::Int(9187)));
    let peer = &scraper.from.clone().unwrap()[0];
    assert_eq!(
        peer.namespace_selector
            .clone()
            .unwrap()
            .match_labels
            .unwrap(),
        BTreeMap::from([(
            "kubernetes.io/metadata.name".to_owned(),
            "monitoring".to_owned()
        )])
    );
    assert_eq!(
        peer.pod_selector.clone().unwrap().match_labels.unwrap(),
        BTreeMap::from([(LABEL_NAME.to_owned(), "prometheus".to_owned())])
    );
    let first = rules[0].ports.clone().unwrap();
    assert_eq!(
        first[0].port,
        Some(IntOrString::Int(5432)),
        "the database port stays the owner's"
    );
}

#[test]
fn an_unmonitored_instance_has_no_exporter_login_port_or_rule() {
    let c = monitored("sdb-orders.yaml", false);
    assert_eq!(containers(&c).len(), 1);
    let keys: Vec<_> = c.admin_secret.data.clone().unwrap().into_keys().collect();
    assert_eq!(keys, ["password", "username"]);
    let ports = c.client_service.spec.clone().unwrap().ports.unwrap();
    assert_eq!(ports.len(), 1);
    let rules = c.network_policy.spec.clone().unwrap().ingress.unwrap();
    assert_eq!(rules.len(), 1);
}

#[test]
fn redis_and_mongodb_exporters_read_their_server_with_the_same_login() {
    for (fixture_name, image, port, variables) in [
        (
            "sdb-cart-redis.yaml",
            "docker.io/oliver006/redis_exporter:v1.74.0",
            9121,
            [
                ("REDIS_ADDR", "redis://127.0.0.1:6379"),
                ("REDIS_USER", "secret cart-db-admin/monitoring-username"),
                ("REDIS_PASSWORD", "secret cart-db-admin/monitoring-password"),
            ],
        ),
        (
            "sdb-catalog-mongodb.yaml",
            "docker.io/percona/mongodb_exporter:0.43.1",
            9216,
            [
                (
                    "MONGODB_URI",
                    "mongodb://127.0.0.1:27017/admin?directConnection=true",
                ),
                (
                    "MONGODB_USER",
                    "secret catalog-db-admin/monitoring-username",
                ),
                (
                    "MONGODB_PASSWORD",
                    "secret catalog-db-admin/monitoring-password",
                ),
            ],
        ),
    ] {
        let c = monitored(fixture_name, true);
        let exporter = &containers(&c)[1];
        assert_eq!(exporter.image.as_deref(), Some(image));
        assert_eq!(exporter.ports.as_ref().unwrap()[0].container_port, port);
        assert_eq!(
            env(exporter),
            variables
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .into_iter()
                .collect::<BTreeMap<_, _>>(),
            "{fixture_name}"
        );
    }
}
