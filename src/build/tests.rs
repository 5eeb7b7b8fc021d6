//! Builders from YAML fixtures: what a reviewer would check on the objects.

use clap::Parser;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::Resource;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;

use super::*;
use crate::api::{DatabaseClass, ServiceDatabase};
use crate::model::database::validate;

use crate::test_support::fixture;

use crate::test_support::facts;

/// A dedicated instance's children, flattened for the assertions.
struct Flat {
    statefulset: StatefulSet,
    headless_service: Service,
    client_service: Service,
    pdb: PodDisruptionBudget,
    network_policy: NetworkPolicy,
    admin_secret: Secret,
    credentials_secret: Secret,
}

fn flat(c: Children) -> Flat {
    let Instance {
        statefulset,
        headless_service,
        client_service,
        pdb,
        network_policy,
        admin_secret,
    } = c.instance.expect("a dedicated instance");
    Flat {
        statefulset,
        headless_service,
        client_service,
        pdb,
        network_policy,
        admin_secret,
        credentials_secret: c.credentials_secret,
    }
}

fn build(sdb_fixture: &str) -> (Flat, OwnerReference) {
    let class: DatabaseClass = fixture("class-postgres.yaml");
    let sdb: ServiceDatabase = fixture(sdb_fixture);
    let db = validate(&sdb, &class, None).unwrap();
    let owner = sdb.controller_owner_ref(&()).unwrap();
    let creds = Credentials::single(&db, "admin-pw", "app/pw@1");
    (flat(children(&db, &creds, &facts(), &owner, None)), owner)
}

/// The subcommands of the binary whose arguments the builders write.
#[derive(clap::Parser)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once per test
enum Cmd {
    Instance(crate::instance::Args),
    Agent(crate::agent::Args),
}

/// The pod a CronJob's Jobs run.
fn cron_pod(cron: k8s_openapi::api::batch::v1::CronJob) -> k8s_openapi::api::core::v1::PodSpec {
    cron.spec
        .and_then(|s| s.job_template.spec)
        .and_then(|j| j.template.spec)
        .expect("a pod template")
}

fn secret(s: &k8s_openapi::api::core::v1::Secret, key: &str) -> String {
    String::from_utf8(s.data.as_ref().unwrap()[key].0.clone()).unwrap()
}

#[test]
fn every_child_is_owned_labelled_and_namespaced() {
    let (c, owner) = build("sdb-orders.yaml");
    let metas = [
        &c.statefulset.metadata,
        &c.headless_service.metadata,
        &c.client_service.metadata,
        &c.pdb.metadata,
        &c.network_policy.metadata,
        &c.admin_secret.metadata,
        &c.credentials_secret.metadata,
    ];
    for m in metas {
        assert_eq!(m.namespace.as_deref(), Some("shop"));
        assert_eq!(m.owner_references.as_ref().unwrap(), &vec![owner.clone()]);
        assert_eq!(owner.controller, Some(true));
        let l = m.labels.as_ref().unwrap();
        assert_eq!(l[LABEL_NAME], "postgres");
        assert_eq!(l[LABEL_INSTANCE], "orders");
        assert_eq!(l[LABEL_MANAGED_BY], "servicedb");
        assert!(l.contains_key(LABEL_COMPONENT));
    }
    let names: Vec<_> = metas.iter().map(|m| m.name.clone().unwrap()).collect();
    assert_eq!(
        names,
        [
            "orders-db",
            "orders-db-hl",
            "orders-db",
            "orders-db",
            "orders-db",
            "orders-db-admin",
            "orders-credentials"
        ]
    );
}

#[test]
fn the_database_container_runs_the_instance_manager_with_arguments_it_accepts() {
    let (c, _) = build("sdb-orders.yaml");
    let sts = c.statefulset.spec.unwrap();
    let pod = sts.template.spec.unwrap();
    let db = &pod.containers[0];
    assert_eq!(db.image.as_deref(), Some("docker.io/library/postgres:16"));
    let mut argv = db.command.clone().unwrap();
    argv.extend(db.args.clone().unwrap());

    // The same flags the instance manager's own parser accepts.
    let Cmd::Instance(args) = Cli::try_parse_from(&argv)
        .expect("the instance manager accepts the StatefulSet's arguments")
        .cmd
    else {
        panic!("not the instance manager: {argv:?}")
    };
    assert_eq!(args.port, 5432);
    assert_eq!(args.status_port as i32, statefulset::STATUS_PORT);

    // The binary it runs is the one the init container copies.
    let init = &pod.init_containers.unwrap()[0];
    assert_eq!(init.image.as_deref(), Some("example.com/servicedb:1.0"));
    assert_eq!(
        init.command.clone().unwrap(),
        [
            "/usr/local/bin/servicedb",
            "copy-binary",
            "/opt/servicedb/servicedb"
        ]
    );
    assert_eq!(argv[0], "/opt/servicedb/servicedb");

    // Secrets are mounted where the arguments say.
    let mounts = db.volume_mounts.clone().unwrap();
    let mount = |path: &str| {
        mounts
            .iter()
            .find(|m| m.mount_path == path)
            .unwrap()
            .name
            .clone()
    };
    let volumes = pod.volumes.unwrap();
    let secret_of = |vol: String| {
        volumes
            .iter()
            .find(|v| v.name == vol)
            .unwrap()
            .secret
            .as_ref()
            .unwrap()
            .secret_name
            .clone()
            .unwrap()
    };
    assert_eq!(
        secret_of(mount(statefulset::ADMIN_SECRET_DIR)),
        "orders-db-admin"
    );
    assert_eq!(
        secret_of(mount(statefulset::APP_SECRET_DIR)),
        "orders-credentials"
    );
    assert_eq!(mount(statefulset::DATA_DIR), statefulset::DATA_VOLUME);
}

#[test]
fn pods_meet_the_restricted_pod_security_standard() {
    let (c, _) = build("sdb-orders.yaml");
    let pod = c.statefulset.spec.unwrap().template.spec.unwrap();
    let psc = pod.security_context.unwrap();
    assert_eq!(psc.run_as_non_root, Some(true));
    assert_eq!(psc.seccomp_profile.unwrap().type_, "RuntimeDefault");
    assert_eq!(pod.automount_service_account_token, Some(false));
    for c in pod
        .init_containers
        .unwrap()
        .iter()
        .chain(pod.containers.iter())
    {
        let sc = c.security_context.clone().unwrap();
        assert_eq!(sc.allow_privilege_escalation, Some(false), "{}", c.name);
        assert_eq!(
            sc.capabilities.unwrap().drop.unwrap(),
            ["ALL"],
            "{}",
            c.name
        );
        assert_eq!(sc.run_as_non_root, Some(true));
        assert!(sc.privileged.is_none());
        assert!(
            c.resources
                .as_ref()
                .and_then(|r| r.limits.as_ref())
                .is_some_and(|l| l.contains_key("memory")),
            "{} has a memory limit",
            c.name
        );
    }
}

#[test]
fn storage_and_claim_retention_follow_the_spec() {
    let (c, _) = build("sdb-orders.yaml");
    let sts = c.statefulset.spec.unwrap();
    let claim = &sts.volume_claim_templates.unwrap()[0];
    let spec = claim.spec.clone().unwrap();
    assert_eq!(
        spec.resources.unwrap().requests.unwrap()["storage"].0,
        "2Gi"
    );
    assert_eq!(spec.storage_class_name.as_deref(), Some("fast"));
    assert_eq!(
        sts.persistent_volume_claim_retention_policy
            .unwrap()
            .when_deleted
            .as_deref(),
        Some("Delete")
    );
    let (retained, _) = build("sdb-minimal.yaml");
    let policy = retained
        .statefulset
        .spec
        .unwrap()
        .persistent_volume_claim_retention_policy
        .unwrap();
    assert_eq!(policy.when_deleted.as_deref(), Some("Retain"));
}

#[test]
fn services_pdb_and_policy_select_the_database_pods() {
    let (c, _) = build("sdb-orders.yaml");
    let sts = c.statefulset.spec.unwrap();
    let pod_labels = sts.template.metadata.unwrap().labels.unwrap();
    let matches =
        |sel: &BTreeMap<String, String>| sel.iter().all(|(k, v)| pod_labels.get(k) == Some(v));
    assert!(matches(sts.selector.match_labels.as_ref().unwrap()));
    for svc in [&c.headless_service, &c.client_service] {
        let spec = svc.spec.as_ref().unwrap();
        assert!(matches(spec.selector.as_ref().unwrap()));
        let port = &spec.ports.as_ref().unwrap()[0];
        assert_eq!(port.port, 5432);
    }
    assert_eq!(
        c.headless_service
            .spec
            .as_ref()
            .unwrap()
            .cluster_ip
            .as_deref(),
        Some("None")
    );
    assert_eq!(sts.service_name.as_deref(), Some("orders-db-hl"));
    assert!(matches(
        c.pdb
            .spec
            .as_ref()
            .unwrap()
            .selector
            .as_ref()
            .unwrap()
            .match_labels
            .as_ref()
            .unwrap()
    ));

    let np = c.network_policy.spec.unwrap();
    assert!(matches(
        np.pod_selector
            .as_ref()
            .unwrap()
            .match_labels
            .as_ref()
            .unwrap()
    ));
    let rule = &np.ingress.unwrap()[0];
    let peers = rule.from.as_ref().unwrap();
    assert_eq!(peers.len(), 2, "the owner and the operator, nobody else");
    assert_eq!(
        peers[0]
            .pod_selector
            .as_ref()
            .unwrap()
            .match_labels
            .as_ref()
            .unwrap()["app"],
        "orders"
    );
    assert!(
        peers[0].namespace_selector.is_none(),
        "owner pods of the same namespace only"
    );
    assert_eq!(
        peers[1]
            .namespace_selector
            .as_ref()
            .unwrap()
            .match_labels
            .as_ref()
            .unwrap()["kubernetes.io/metadata.name"],
        "servicedb-system"
    );
    assert_eq!(
        rule.ports.as_ref().unwrap()[0].port,
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(5432))
    );
}

#[test]
fn the_credentials_secret_has_every_key_and_an_encoded_uri() {
    let (c, _) = build("sdb-orders.yaml");
    let s = &c.credentials_secret;
    let keys: Vec<_> = s.data.as_ref().unwrap().keys().cloned().collect();
    assert_eq!(
        keys,
        [
            "DATABASE_URL",
            "database",
            "engine",
            "host",
            "jdbc-url",
            "password",
            "port",
            "uri",
            "username"
        ]
    );
    assert_eq!(secret(s, "host"), "orders-db.shop.svc");
    assert_eq!(secret(s, "password"), "app/pw@1");
    assert_eq!(
        secret(s, "uri"),
        "postgresql://orders:app%2Fpw%401@orders-db.shop.svc:5432/orders"
    );
    assert_eq!(secret(s, "DATABASE_URL"), secret(s, "uri"));
    assert_eq!(secret(&c.admin_secret, "username"), "postgres");
    assert_eq!(secret(&c.admin_secret, "password"), "admin-pw");
    assert_eq!(
        c.admin_secret.data.as_ref().unwrap().len(),
        2,
        "the admin Secret holds only the admin login"
    );
}

/// A class that approves an engine and leaves everything else to it.
fn bare_class(engine: crate::api::Engine) -> DatabaseClass {
    serde_yaml::from_str(&format!(
        "metadata: {{name: {}}}\nspec: {{engine: {engine}, default: true}}",
        engine.as_str()
    ))
    .unwrap()
}

#[test]
fn redis_scripting_reaches_the_instance_manager_only_when_asked_for() {
    let instance_args = |yaml: Option<&str>| {
        let mut sdb: ServiceDatabase = fixture("sdb-cart-redis.yaml");
        if let Some(yaml) = yaml {
            sdb.spec.redis = Some(serde_yaml::from_str(yaml).unwrap());
        }
        let db = validate(&sdb, &bare_class(sdb.spec.engine), None).unwrap();
        let owner = sdb.controller_owner_ref(&()).unwrap();
        let creds = Credentials::single(&db, "a", "b");
        let c = flat(children(&db, &creds, &facts(), &owner, None));
        let container = &c
            .statefulset
            .spec
            .unwrap()
            .template
            .spec
            .unwrap()
            .containers[0];
        let mut argv = container.command.clone().unwrap();
        argv.extend(container.args.clone().unwrap());
        let Cmd::Instance(args) = Cli::try_parse_from(&argv).expect("accepted").cmd else {
            panic!("not the instance manager: {argv:?}")
        };
        (argv, args)
    };
    let (argv, args) = instance_args(None);
    assert!(!args.redis_scripting);
    assert!(!argv.contains(&"--redis-scripting".to_owned()), "{argv:?}");
    let (_, args) = instance_args(Some("{scripting: false}"));
    assert!(!args.redis_scripting);
    let (_, args) = instance_args(Some("{scripting: true}"));
    assert!(args.redis_scripting);
}

#[test]
fn redis_and_mongodb_instances_get_their_image_port_and_secret_keys() {
    for (fixture_name, image, port, variable, uri_prefix, admin) in [
        (
            "sdb-cart-redis.yaml",
            "docker.io/library/redis:7.4",
            6379,
            "REDIS_URL",
            "redis://cart:",
            "admin",
        ),
        (
            "sdb-catalog-mongodb.yaml",
            "docker.io/library/mongo:8.0",
            27017,
            "MONGODB_URI",
            "mongodb://catalog:",
            "root",
        ),
    ] {
        let sdb: ServiceDatabase = fixture(fixture_name);
        let db = validate(&sdb, &bare_class(sdb.spec.engine), None).unwrap();
        let owner = sdb.controller_owner_ref(&()).unwrap();
        let creds = Credentials::single(&db, "a", "b");
        let c = flat(children(&db, &creds, &facts(), &owner, None));
        let pod = c.statefulset.spec.clone().unwrap().template.spec.unwrap();
        let container = &pod.containers[0];
        assert_eq!(container.image.as_deref(), Some(image));
        assert_eq!(container.ports.as_ref().unwrap()[0].container_port, port);
        let mut argv = container.command.clone().unwrap();
        argv.extend(container.args.clone().unwrap());
        assert!(
            argv.windows(2)
                .any(|w| w[0] == "--engine" && w[1] == sdb.spec.engine.as_str()),
            "{argv:?}"
        );
        assert!(
            argv.windows(2)
                .any(|w| w[0] == "--port" && w[1] == port.to_string()),
            "{argv:?}"
        );
        assert_eq!(
            c.client_service
                .spec
                .as_ref()
                .unwrap()
                .ports
                .as_ref()
                .unwrap()[0]
                .port,
            port
        );
        let np_port = &c
            .network_policy
            .spec
            .as_ref()
            .unwrap()
            .ingress
            .as_ref()
            .unwrap()[0]
            .ports
            .as_ref()
            .unwrap()[0];
        assert_eq!(
            np_port.port,
            Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(port))
        );
        let s = &c.credentials_secret;
        assert!(
            secret(s, variable).starts_with(uri_prefix),
            "{}",
            secret(s, variable)
        );
        assert_eq!(secret(s, "uri"), secret(s, variable));
        assert_eq!(secret(&c.admin_secret, "username"), admin);
        let limits = container
            .resources
            .as_ref()
            .unwrap()
            .limits
            .as_ref()
            .unwrap();
        assert!(
            limits.contains_key("memory"),
            "the engine's default resources"
        );
    }
    let cart: ServiceDatabase = fixture("sdb-cart-redis.yaml");
    let db = validate(&cart, &bare_class(cart.spec.engine), None).unwrap();
    let c = flat(children(
        &db,
        &Credentials::single(&db, "a", "b"),
        &facts(),
        &cart.controller_owner_ref(&()).unwrap(),
        None,
    ));
    assert_eq!(secret(&c.credentials_secret, "keyPrefix"), "cart:");
    assert_eq!(secret(&c.credentials_secret, "database"), "0");
}

#[test]
fn a_database_on_a_shared_server_is_only_a_secret_pointing_at_the_server() {
    use crate::model::server::ServerFacts;
    let class: DatabaseClass = fixture("class-postgres.yaml");
    let mut class = class;
    class.spec.allowed_isolations = None;
    let mut sdb: ServiceDatabase = fixture("sdb-orders.yaml");
    sdb.spec.isolation = crate::api::Isolation::Database;
    sdb.spec.server_ref = Some(crate::api::common::ObjectRef {
        name: "shared".into(),
        namespace: Some("platform".into()),
    });
    let server = ServerFacts {
        namespace: "platform".into(),
        port: 6432,
        ..ServerFacts::example()
    };
    let db = validate(&sdb, &class, Some(&server)).unwrap();
    assert_eq!(
        db.database, "shop_orders",
        "qualified by namespace on a shared server"
    );
    let creds = Credentials::single(&db, "unused", "pw");
    let c = children(
        &db,
        &creds,
        &facts(),
        &sdb.controller_owner_ref(&()).unwrap(),
        None,
    );
    assert!(c.instance.is_none(), "no instance of its own");
    let s = &c.credentials_secret;
    assert_eq!(secret(s, "host"), "pg.example.com");
    assert_eq!(secret(s, "port"), "6432");
    assert_eq!(
        secret(s, "uri"),
        "postgresql://shop_orders:pw@pg.example.com:6432/shop_orders"
    );
    assert!(
        !format!("{:?}", s.data).contains("admin-secret"),
        "the server's admin password never reaches the service"
    );
}

#[test]
fn a_server_reached_over_tls_gives_its_ca_to_the_service_and_to_the_backup_agent() {
    use crate::engine::tls::{TlsMode, TlsSettings};
    use crate::model::server::ServerFacts;
    let mut class: DatabaseClass = fixture("class-postgres.yaml");
    class.spec.allowed_isolations = None;
    let mut sdb: ServiceDatabase = fixture("sdb-orders.yaml");
    let mut spec = serde_json::to_value(&sdb.spec).unwrap();
    spec["isolation"] = "Database".into();
    spec["serverRef"] = serde_json::json!({"name": "shared"});
    spec["backup"] = serde_json::json!({"schedule": "@daily",
        "destination": {"s3": {"bucket": "b", "credentialsSecret": "s3"}}});
    sdb.spec = serde_json::from_value(spec).unwrap();
    let ca = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
    let server = ServerFacts {
        tls: TlsSettings {
            mode: TlsMode::VerifyFull,
            ca_pem: Some(ca.into()),
        },
        ..ServerFacts::example()
    };
    let db = validate(&sdb, &class, Some(&server)).expect("backups over TLS are accepted");
    let creds = Credentials::single(&db, "unused", "pw");
    let owner = sdb.controller_owner_ref(&()).unwrap();
    let c = children(&db, &creds, &facts(), &owner, None);
    let s = &c.credentials_secret;
    assert_eq!(secret(s, "ca.crt"), ca);
    assert_eq!(
        secret(s, "uri"),
        "postgresql://shop_orders:pw@pg.example.com:5432/shop_orders?sslmode=verify-full"
    );

    let pod = cron_pod(c.backup_cronjob.expect("backup CronJob"));
    let agent = &pod.containers[0];
    let mut argv = vec!["servicedb".to_string()];
    argv.extend(agent.args.clone().unwrap());
    let Cmd::Agent(args) = Cli::try_parse_from(&argv)
        .expect("the agent accepts the CronJob's arguments")
        .cmd
    else {
        panic!("not the agent: {argv:?}")
    };
    let crate::agent::Command::Backup(backup) = args.command else {
        panic!("not a backup: {argv:?}")
    };
    assert_eq!(backup.database.tls, crate::agent::TlsArg::VerifyFull);
    let ca_file = backup.database.tls_ca_file.expect("--tls-ca-file");
    assert_eq!(ca_file.to_str(), Some("/etc/servicedb/server-ca/ca.crt"));
    // The file comes from the credentials Secret, read-only.
    let mount = agent
        .volume_mounts
        .as_ref()
        .unwrap()
        .iter()
        .find(|m| ca_file.starts_with(&m.mount_path))
        .expect("the CA file is mounted");
    assert_eq!(mount.read_only, Some(true));
    let volume = pod
        .volumes
        .as_ref()
        .unwrap()
        .iter()
        .find(|v| v.name == mount.name)
        .unwrap();
    let source = volume.secret.as_ref().expect("a Secret volume");
    assert_eq!(source.secret_name.as_ref(), Some(&db.secret_name));
    let items = source.items.as_ref().unwrap();
    assert_eq!(
        (items[0].key.as_str(), items[0].path.as_str()),
        ("ca.crt", "ca.crt")
    );
}

mod formats {
    //! `spec.credentials.format`: every engine × format, on a dedicated
    //! instance and on a shared server, always for the current login.
    use super::*;
    use crate::api::Engine;
    use crate::engine::logins::{Login, Logins};
    use crate::engine::tls::{TlsMode, TlsSettings};
    use crate::model::server::ServerFacts;

    fn fixture_of(engine: Engine) -> &'static str {
        match engine {
            Engine::Postgres => "sdb-orders.yaml",
            Engine::Redis => "sdb-cart-redis.yaml",
            Engine::MongoDB => "sdb-catalog-mongodb.yaml",
        }
    }

    /// The credentials Secret of the engine's fixture with these formats;
    /// on `server` (isolation `Database`) when given.
    fn secret_with(
        engine: Engine,
        formats: &[&str],
        server: Option<ServerFacts>,
        logins: Option<Logins>,
    ) -> Secret {
        let mut sdb: ServiceDatabase = fixture(fixture_of(engine));
        let mut spec = serde_json::to_value(&sdb.spec).unwrap();
        spec["credentials"]["format"] = serde_json::json!(formats);
        if server.is_some() {
            spec["isolation"] = "Database".into();
            spec["serverRef"] = serde_json::json!({"name": "shared"});
            spec.as_object_mut().unwrap().remove("storage");
        }
        sdb.spec = serde_json::from_value(spec).unwrap();
        let mut class = bare_class(engine);
        class.spec.allowed_isolations = None;
        let server = server.map(|s| ServerFacts { engine, ..s });
        let db = validate(&sdb, &class, server.as_ref()).unwrap();
        let mut creds = Credentials::single(&db, "admin", "pw:1\\x");
        if let Some(logins) = logins {
            creds.logins = logins;
        }
        let owner = sdb.controller_owner_ref(&()).unwrap();
        children(&db, &creds, &facts(), &owner, None).credentials_secret
    }

    fn keys(s: &Secret) -> Vec<String> {
        s.data.as_ref().unwrap().keys().cloned().collect()
    }

    const COMMON: [&str; 7] = [
        "engine", "host", "port", "database", "username", "password", "uri",
    ];

    /// Keys beyond the common ones and the engine's own.
    fn extra(s: &Secret) -> Vec<String> {
        let own = ["DATABASE_URL", "REDIS_URL", "MONGODB_URI", "keyPrefix"];
        let mut extra: Vec<String> = keys(s)
            .into_iter()
            .filter(|k| !COMMON.contains(&k.as_str()) && !own.contains(&k.as_str()))
            .collect();
        extra.sort();
        extra
    }

    #[test]
    fn the_format_defaults_to_default_when_unset() {
        let spec: crate::api::common::CredentialsSpec = serde_json::from_str("{}").unwrap();
        assert_eq!(spec.format, [crate::api::common::CredentialFormat::Default]);
    }

    #[test]
    fn every_engine_and_format_gives_its_keys_dedicated_and_shared() {
        let shared = || ServerFacts {
            host: "db.example.com".into(),
            port: 7000,
            ..ServerFacts::example()
        };
        for placement in [None, Some(shared())] {
            let on = if placement.is_some() {
                "shared"
            } else {
                "dedicated"
            };
            for engine in [Engine::Postgres, Engine::Redis, Engine::MongoDB] {
                let default = secret_with(engine, &["Default"], placement.clone(), None);
                for key in COMMON {
                    assert!(
                        keys(&default).contains(&key.to_string()),
                        "{on} {engine:?}: {key}"
                    );
                }
                let expected_default: &[&str] = match engine {
                    Engine::Postgres => &["jdbc-url"],
                    _ => &[],
                };
                assert_eq!(extra(&default), expected_default, "{on} {engine:?} Default");
                let uri = secret(&default, "uri");
                let host = secret(&default, "host");
                let port = secret(&default, "port");
                let database = secret(&default, "database");
                if placement.is_some() {
                    assert_eq!((host.as_str(), port.as_str()), ("db.example.com", "7000"));
                }

                let spring = secret_with(engine, &["Default", "Spring"], placement.clone(), None);
                match engine {
                    Engine::Postgres => {
                        let jdbc = format!("jdbc:postgresql://{host}:{port}/{database}");
                        assert_eq!(secret(&spring, "jdbc-url"), jdbc, "{on}");
                        assert_eq!(secret(&spring, "SPRING_DATASOURCE_URL"), jdbc, "{on}");
                        assert_eq!(
                            secret(&spring, "SPRING_DATASOURCE_USERNAME"),
                            secret(&spring, "username")
                        );
                        assert_eq!(secret(&spring, "SPRING_DATASOURCE_PASSWORD"), "pw:1\\x");
                        assert_eq!(
                            extra(&spring),
                            [
                                "SPRING_DATASOURCE_PASSWORD",
                                "SPRING_DATASOURCE_URL",
                                "SPRING_DATASOURCE_USERNAME",
                                "jdbc-url"
                            ]
                        );
                    }
                    Engine::Redis => {
                        assert_eq!(secret(&spring, "SPRING_DATA_REDIS_URL"), uri, "{on}");
                        assert_eq!(extra(&spring), ["SPRING_DATA_REDIS_URL"]);
                    }
                    Engine::MongoDB => {
                        assert_eq!(secret(&spring, "SPRING_DATA_MONGODB_URI"), uri, "{on}");
                        assert_eq!(extra(&spring), ["SPRING_DATA_MONGODB_URI"]);
                    }
                }

                let binding = secret_with(
                    engine,
                    &["Default", "ServiceBinding"],
                    placement.clone(),
                    None,
                );
                let kind = match engine {
                    Engine::Postgres => "postgresql",
                    Engine::Redis => "redis",
                    Engine::MongoDB => "mongodb",
                };
                assert_eq!(secret(&binding, "type"), kind, "{on}");
                assert_eq!(secret(&binding, "provider"), "servicedb");
                for key in ["host", "port", "database", "username", "password", "uri"] {
                    assert_eq!(secret(&binding, key), secret(&default, key), "{on} {key}");
                }
                let mut with_binding = expected_default.to_vec();
                with_binding.extend(["provider", "type"]);
                with_binding.sort();
                assert_eq!(extra(&binding), with_binding, "{on} {engine:?}");

                if engine == Engine::Postgres {
                    let all = secret_with(
                        engine,
                        &["Default", "Spring", "ServiceBinding", "Pgpass"],
                        placement.clone(),
                        None,
                    );
                    assert_eq!(
                        secret(&all, "pgpass"),
                        format!(
                            "{host}:{port}:{database}:{}:pw\\:1\\\\x\n",
                            secret(&all, "username")
                        ),
                        "{on}: ':' and '\\' are escaped"
                    );
                    assert_eq!(extra(&all).len(), 7, "{:?}", extra(&all));
                }
            }
        }
    }

    #[test]
    fn formats_follow_the_current_login_while_a_rotation_keeps_the_other_one_apart() {
        let logins = Logins {
            current: Login::new("orders_b", "new-pw"),
            next: None,
            previous: Some(Login::new("orders", "old-pw")),
        };
        let s = secret_with(
            Engine::Postgres,
            &["Default", "Spring", "ServiceBinding", "Pgpass"],
            None,
            Some(logins),
        );
        assert_eq!(secret(&s, "username"), "orders_b");
        assert_eq!(secret(&s, "SPRING_DATASOURCE_USERNAME"), "orders_b");
        assert_eq!(secret(&s, "SPRING_DATASOURCE_PASSWORD"), "new-pw");
        assert_eq!(
            secret(&s, "pgpass"),
            "orders-db.shop.svc:5432:orders:orders_b:new-pw\n"
        );
        assert_eq!(secret(&s, "previous-username"), "orders");
        assert_eq!(secret(&s, "previous-password"), "old-pw");
        let values: Vec<String> = s
            .data
            .as_ref()
            .unwrap()
            .iter()
            .filter(|(k, _)| !k.starts_with("previous-"))
            .map(|(_, v)| String::from_utf8(v.0.clone()).unwrap())
            .collect();
        assert!(
            values.iter().all(|v| !v.contains("old-pw")),
            "only previous-* carries the replaced login"
        );

        let next = Logins {
            current: Login::new("cart", "now"),
            next: Some(Login::new("cart", "soon")),
            previous: None,
        };
        let s = secret_with(Engine::Redis, &["Default", "Spring"], None, Some(next));
        assert!(secret(&s, "SPRING_DATA_REDIS_URL").contains(":now@"));
        assert_eq!(secret(&s, "next-password"), "soon");
    }

    #[test]
    fn over_tls_the_jdbc_url_and_the_binding_ask_for_it() {
        let tls = |mode| ServerFacts {
            tls: TlsSettings { mode, ca_pem: None },
            ..ServerFacts::example()
        };
        let pg = secret_with(
            Engine::Postgres,
            &["Default", "Spring", "ServiceBinding"],
            Some(tls(TlsMode::VerifyFull)),
            None,
        );
        assert!(secret(&pg, "jdbc-url").ends_with("?sslmode=verify-full"));
        assert_eq!(
            secret(&pg, "SPRING_DATASOURCE_URL"),
            secret(&pg, "jdbc-url")
        );
        assert_eq!(secret(&pg, "sslmode"), "verify-full");
        let pg = secret_with(
            Engine::Postgres,
            &["Default", "ServiceBinding"],
            Some(tls(TlsMode::Require)),
            None,
        );
        assert_eq!(secret(&pg, "sslmode"), "require");
        let redis = secret_with(
            Engine::Redis,
            &["Default", "Spring", "ServiceBinding"],
            Some(tls(TlsMode::Require)),
            None,
        );
        assert_eq!(secret(&redis, "ssl"), "true");
        assert!(secret(&redis, "SPRING_DATA_REDIS_URL").starts_with("rediss://"));
    }
}

mod backups {
    use super::*;
    use crate::build::backup::{self, Archive};

    fn orders_with_backup(destination: &str) -> ValidatedDatabase {
        let class: DatabaseClass = fixture("class-postgres.yaml");
        let mut sdb: ServiceDatabase = fixture("sdb-orders.yaml");
        let mut spec = serde_json::to_value(&sdb.spec).unwrap();
        spec["backup"] = serde_yaml::from_str(&format!(
            "{{schedule: '0 2 * * *', destination: {destination}, verify: {{schedule: '@weekly'}}}}"
        ))
        .unwrap();
        sdb.spec = serde_json::from_value(spec).unwrap();
        validate(&sdb, &class, None).unwrap()
    }

    use crate::model::database::ValidatedDatabase;

    fn owner() -> OwnerReference {
        let sdb: ServiceDatabase = fixture("sdb-orders.yaml");
        sdb.controller_owner_ref(&()).unwrap()
    }

    fn arg(args: &[String], flag: &str) -> String {
        let i = args
            .iter()
            .position(|a| a == flag)
            .unwrap_or_else(|| panic!("{flag} in {args:?}"));
        args[i + 1].clone()
    }

    #[test]
    fn the_backup_cronjob_runs_the_agent_in_the_engine_image_restricted() {
        let db = orders_with_backup(
            "{s3: {bucket: b, endpoint: 'http://s3:9000', credentialsSecret: s3}}",
        );
        let cron = backup::backup_cronjob(&db, db.backup.as_ref().unwrap(), &facts(), &owner());
        assert_eq!(cron.metadata.name.as_deref(), Some("orders-db-backup"));
        let spec = cron.spec.unwrap();
        assert_eq!(spec.concurrency_policy.as_deref(), Some("Forbid"));
        assert_eq!(spec.time_zone.as_deref(), Some("UTC"));
        let job = spec.job_template.spec.unwrap();
        assert_eq!(job.backoff_limit, Some(0));
        let pod = job.template.spec.unwrap();
        let agent = &pod.containers[0];
        assert_eq!(
            agent.image.as_deref(),
            Some("docker.io/library/postgres:16")
        );
        let args = agent.args.clone().unwrap();
        assert_eq!(args[..2], ["agent", "backup"]);
        assert_eq!(arg(&args, "--destination"), "s3://b/shop/orders");
        assert_eq!(arg(&args, "--name"), "$(JOB_NAME)");
        assert_eq!(arg(&args, "--s3-endpoint"), "http://s3:9000");
        assert_eq!(arg(&args, "--username"), "postgres");
        let env = agent.env.clone().unwrap();
        let job_name = env.iter().find(|e| e.name == "JOB_NAME").unwrap();
        assert_eq!(
            job_name
                .value_from
                .as_ref()
                .unwrap()
                .field_ref
                .as_ref()
                .unwrap()
                .field_path,
            "metadata.labels['batch.kubernetes.io/job-name']"
        );
        let secret_of = |name: &str| {
            let r = env
                .iter()
                .find(|e| e.name == name)
                .unwrap()
                .value_from
                .clone()
                .unwrap()
                .secret_key_ref
                .unwrap();
            (r.name, r.key)
        };
        assert_eq!(
            secret_of("SERVICEDB_PASSWORD"),
            ("orders-db-admin".into(), "password".into())
        );
        assert_eq!(
            secret_of("AWS_SECRET_ACCESS_KEY"),
            ("s3".into(), "AWS_SECRET_ACCESS_KEY".into())
        );
        assert!(
            pod.init_containers.unwrap()[0]
                .command
                .as_ref()
                .unwrap()
                .contains(&"copy-binary".to_string())
        );
        let sc = agent.security_context.as_ref().unwrap();
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(pod.security_context.unwrap().run_as_non_root, Some(true));
    }

    #[test]
    fn a_volume_destination_is_mounted_and_no_s3_settings_are_passed() {
        let db = orders_with_backup("{volume: {claimName: backups}}");
        let job = backup::backup_job(&db, db.backup.as_ref().unwrap(), &facts(), "b1", &owner());
        assert_eq!(job.metadata.name.as_deref(), Some("b1-backup"));
        assert_eq!(
            job.metadata.labels.as_ref().unwrap()[backup::LABEL_BACKUP],
            "b1"
        );
        let pod = job.spec.unwrap().template.spec.unwrap();
        let args = pod.containers[0].args.clone().unwrap();
        assert_eq!(arg(&args, "--destination"), "file:///backup/shop/orders");
        assert_eq!(arg(&args, "--name"), "b1");
        assert!(!args.contains(&"--s3-endpoint".to_string()));
        let claim = pod
            .volumes
            .unwrap()
            .into_iter()
            .find_map(|v| v.persistent_volume_claim)
            .unwrap();
        assert_eq!(claim.claim_name, "backups");
        assert!(
            pod.containers[0]
                .volume_mounts
                .as_ref()
                .unwrap()
                .iter()
                .any(|m| m.mount_path == "/backup")
        );
    }

    #[test]
    fn verify_and_restore_read_the_archive_where_it_is() {
        let db = orders_with_backup("{volume: {claimName: backups}}");
        let archive = Archive {
            name: "b7".into(),
            location: "s3://old/shop/orders/b7".into(),
            destination: serde_yaml::from_str(
                "{s3: {bucket: old, region: eu, credentialsSecret: old-creds}}",
            )
            .unwrap(),
        };
        let verify = backup::verify_cronjob(&db, "@weekly", &archive, &facts(), &owner());
        let pod = cron_pod(verify);
        let args = pod.containers[0].args.clone().unwrap();
        assert_eq!(args[..2], ["agent", "verify"]);
        assert_eq!(arg(&args, "--database"), "orders_verify");
        assert_eq!(arg(&args, "--from"), "s3://old/shop/orders/b7");
        assert_eq!(arg(&args, "--s3-region"), "eu");
        let mut argv = vec!["servicedb".to_string()];
        argv.extend(args.clone());
        let Cmd::Agent(parsed) = Cli::try_parse_from(&argv)
            .expect("the agent accepts the verify CronJob's arguments")
            .cmd
        else {
            panic!("not the agent: {argv:?}")
        };
        let crate::agent::Command::Verify(verify) = parsed.command else {
            panic!("not a verify: {argv:?}")
        };
        assert!(verify.scratch, "each run empties its scratch target");

        let restore = backup::restore_job(&db, &archive, &backup::Pick::This, &facts(), &owner());
        assert_eq!(restore.metadata.name.as_deref(), Some("orders-db-restore"));
        let pod = restore.spec.unwrap().template.spec.unwrap();
        let args = pod.containers[0].args.clone().unwrap();
        assert_eq!(args[..2], ["agent", "restore"]);
        assert_eq!(arg(&args, "--database"), "orders");
        // The administrator restores; what it makes belongs to the service.
        assert_eq!(arg(&args, "--username"), "postgres");
        assert_eq!(arg(&args, "--restore-role"), db.username);
        let mut argv = vec!["servicedb".to_string()];
        argv.extend(args.clone());
        assert!(
            Cli::try_parse_from(&argv).is_ok(),
            "the agent accepts the restore Job's arguments: {argv:?}"
        );

        let delete = backup::delete_job(
            "shop",
            "orders",
            &archive,
            Some(crate::api::Engine::Postgres),
            &facts(),
            &owner(),
        );
        assert_eq!(delete.metadata.name.as_deref(), Some("b7-delete"));
        let pod = delete.spec.unwrap().template.spec.unwrap();
        assert_eq!(
            pod.containers[0].image.as_deref(),
            Some("example.com/servicedb:1.0")
        );
        assert_eq!(
            pod.containers[0].args.as_ref().unwrap()[..4],
            ["agent", "delete", "--from", "s3://old/shop/orders/b7"]
        );
    }

    /// Whether `selector` selects a pod with `labels`, as the API server
    /// evaluates it.
    fn selects(
        selector: &k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector,
        labels: &BTreeMap<String, String>,
    ) -> bool {
        selector
            .match_labels
            .iter()
            .flatten()
            .all(|(k, v)| labels.get(k) == Some(v))
            && selector.match_expressions.iter().flatten().all(|e| {
                let value = labels.get(&e.key);
                let values = e.values.clone().unwrap_or_default();
                match e.operator.as_str() {
                    "In" => value.is_some_and(|v| values.contains(v)),
                    "NotIn" => value.is_none_or(|v| !values.contains(v)),
                    "Exists" => value.is_some(),
                    "DoesNotExist" => value.is_none(),
                    other => panic!("operator {other}"),
                }
            })
    }

    #[test]
    fn the_network_policy_admits_the_agent_pods_of_its_jobs_and_no_app_pod_by_a_label() {
        let db = orders_with_backup("{volume: {claimName: backups}}");
        let cron = backup::backup_cronjob(&db, db.backup.as_ref().unwrap(), &facts(), &owner());
        let mut agent = cron
            .spec
            .unwrap()
            .job_template
            .spec
            .unwrap()
            .template
            .metadata
            .unwrap()
            .labels
            .unwrap();
        let policy = network_policy::build(&db, &facts(), &owner());
        let from = policy.spec.unwrap().ingress.unwrap()[0]
            .from
            .clone()
            .unwrap();
        let admitted = |labels: &BTreeMap<String, String>| {
            from.iter()
                .filter(|p| p.namespace_selector.is_none())
                .any(|p| selects(p.pod_selector.as_ref().unwrap(), labels))
        };
        assert!(
            !admitted(&agent),
            "a pod that is not a Job's is not admitted with the agent's labels alone"
        );
        // What the API server adds to a Job's pod template.
        agent.insert(backup::LABEL_JOB_CONTROLLER_UID.into(), "3f2a".into());
        agent.insert(backup::LABEL_JOB_NAME.into(), "orders-db-backup-1".into());
        assert!(admitted(&agent), "{agent:?}");
        let app = BTreeMap::from([
            ("app".to_string(), "reporting".to_string()),
            ("servicedb.dev/client-of".to_string(), "orders".to_string()),
            (
                backup::LABEL_JOB_CONTROLLER_UID.to_string(),
                "9".to_string(),
            ),
        ]);
        assert!(
            !admitted(&app),
            "no label of servicedb's own lets an app in"
        );
        assert!(
            !crate::build::selector_labels(&db)
                .iter()
                .all(|(k, v)| agent.get(k) == Some(v)),
            "agent pods are not database pods"
        );
    }

    #[test]
    fn agent_jobs_end_by_a_deadline_and_have_bounded_scratch_space() {
        let db = orders_with_backup("{volume: {claimName: backups}}");
        let archive = Archive {
            name: "b1".into(),
            location: "file:///backup/shop/orders/b1".into(),
            destination: db.backup.clone().unwrap().destination,
        };
        let from_cron =
            |c: k8s_openapi::api::batch::v1::CronJob| c.spec.unwrap().job_template.spec.unwrap();
        let jobs = [
            (
                "scheduled backup",
                from_cron(backup::backup_cronjob(
                    &db,
                    db.backup.as_ref().unwrap(),
                    &facts(),
                    &owner(),
                )),
                backup::AGENT_DEADLINE_SECONDS,
            ),
            (
                "verify",
                from_cron(backup::verify_cronjob(
                    &db,
                    "@weekly",
                    &archive,
                    &facts(),
                    &owner(),
                )),
                backup::AGENT_DEADLINE_SECONDS,
            ),
            (
                "backup",
                backup::backup_job(&db, db.backup.as_ref().unwrap(), &facts(), "b1", &owner())
                    .spec
                    .unwrap(),
                backup::AGENT_DEADLINE_SECONDS,
            ),
            (
                "restore",
                backup::restore_job(&db, &archive, &backup::Pick::This, &facts(), &owner())
                    .spec
                    .unwrap(),
                backup::AGENT_DEADLINE_SECONDS,
            ),
            (
                "delete",
                backup::delete_job("shop", "orders", &archive, None, &facts(), &owner())
                    .spec
                    .unwrap(),
                backup::DELETE_DEADLINE_SECONDS,
            ),
        ];
        for (what, job, deadline) in jobs {
            assert_eq!(job.active_deadline_seconds, Some(deadline), "{what}");
            let pod = job.template.spec.unwrap();
            for volume in pod.volumes.unwrap() {
                if let Some(dir) = volume.empty_dir {
                    assert!(
                        dir.size_limit.is_some(),
                        "{what}: emptyDir {} is bounded",
                        volume.name
                    );
                }
            }
        }
    }

    #[test]
    fn every_derived_name_fits_for_the_longest_names_the_crds_admit() {
        use crate::model::managed;
        use crate::model::naming::{final_backup_name, instance_name};
        use kube::ResourceExt;
        let longest = "payments-reconciliation-ledger-export-v2";
        assert_eq!(longest.len(), 40, "the CRD's maximum");
        let class: DatabaseClass = fixture("class-postgres.yaml");
        let mut sdb: ServiceDatabase = fixture("sdb-orders.yaml");
        sdb.metadata.name = Some(longest.into());
        sdb.spec.credentials = None;
        let mut spec = serde_json::to_value(&sdb.spec).unwrap();
        spec["backup"] = serde_yaml::from_str(
            "{schedule: '0 2 * * *', destination: {volume: {claimName: b}}, verify: {schedule: '@weekly'}, retention: {keepLast: 2}}",
        )
        .unwrap();
        spec["deletionPolicy"] = "Snapshot".into();
        sdb.spec = serde_json::from_value(spec).unwrap();
        let db = validate(&sdb, &class, None).unwrap();
        let owner = sdb.controller_owner_ref(&()).unwrap();
        let archive = Archive {
            name: "b".repeat(63),
            location: "file:///backup/x".into(),
            destination: db.backup.clone().unwrap().destination,
        };
        let creds = Credentials::single(&db, "a", "b");
        let c = children(&db, &creds, &facts(), &owner, Some(&archive));
        let (backup_cron, verify_cron) = (
            c.backup_cronjob.clone().unwrap(),
            c.verify_cronjob.clone().unwrap(),
        );
        let mut names: Vec<(String, usize)> = Vec::new();
        for cron in [&backup_cron, &verify_cron] {
            let name = cron.metadata.name.clone().unwrap();
            names.push((name.clone(), crate::build::MAX_CRONJOB_NAME));
            // Its Jobs: `<cronjob>-<scheduled minute>`, and a scheduled
            // backup is recorded under its Job's name.
            let job = format!("{name}-{}", "9".repeat(10));
            names.push((job.clone(), 63));
            names.push((backup::delete_job_name(&job), 63));
        }
        let built = flat(c);
        // A StatefulSet's pods are labelled `<name>-<10-char revision hash>`.
        names.push((built.statefulset.metadata.name.clone().unwrap(), 52));
        for meta in [
            &built.headless_service.metadata,
            &built.client_service.metadata,
            &built.pdb.metadata,
            &built.network_policy.metadata,
            &built.admin_secret.metadata,
            &built.credentials_secret.metadata,
        ] {
            names.push((meta.name.clone().unwrap(), 63));
        }
        names.push((backup::restore_job_name(longest), 63));
        let mut final_of = sdb.clone();
        final_of.metadata.uid = Some("6b1f9b4e-0000-4000-8000-000000000001".into());
        let final_backup = final_backup_name(&final_of);
        names.push((final_backup.clone(), 63));
        names.push((backup::backup_job_name(&final_backup), 63));
        // The longest DatabaseBackup name (the CRD's maximum).
        let manual = "m".repeat(63);
        names.push((backup::backup_job_name(&manual), 63));
        names.push((backup::delete_job_name(&manual), 63));
        for (name, max) in &names {
            assert!(name.len() <= *max, "{name}: {} > {max}", name.len());
            assert!(
                name.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                    && !name.starts_with('-')
                    && !name.ends_with('-'),
                "{name} is a DNS label"
            );
        }
        assert_ne!(
            backup::delete_job_name(&"m".repeat(63)),
            backup::delete_job_name(&format!("{}n", "m".repeat(62))),
            "long names that share a start still differ"
        );
        assert_eq!(
            backup::delete_job_name("b7"),
            "b7-delete",
            "short names as they were"
        );
        for labels in [
            built.statefulset.metadata.labels.clone().unwrap(),
            backup_cron.metadata.labels.clone().unwrap(),
        ] {
            assert!(labels.values().all(|v| v.len() <= 63), "{labels:?}");
        }

        // A managed DatabaseServer with the longest name its CRD admits.
        let server: crate::api::DatabaseServer = serde_json::from_value(serde_json::json!({
            "apiVersion": "servicedb.dev/v1alpha1", "kind": "DatabaseServer",
            "metadata": {"name": "s".repeat(42), "namespace": "platform", "uid": "u1"},
            "spec": {"engine": "Postgres", "managed": {}}}))
        .unwrap();
        let as_sdb = managed::instance_of(&server).unwrap();
        let db = validate(&as_sdb, &bare_class(crate::api::Engine::Postgres), None).unwrap();
        let owner = server.controller_owner_ref(&()).unwrap();
        let managed_children = flat(children(&db, &creds, &facts(), &owner, None));
        assert!(
            managed_children
                .statefulset
                .metadata
                .name
                .clone()
                .unwrap()
                .len()
                <= 52
        );
        assert_eq!(
            managed_children.statefulset.metadata.name.clone().unwrap(),
            instance_name(&managed::managed_instance(&server.name_any()))
        );
        for meta in [
            &managed_children.headless_service.metadata,
            &managed_children.client_service.metadata,
            &managed_children.admin_secret.metadata,
            &managed_children.credentials_secret.metadata,
        ] {
            assert!(meta.name.clone().unwrap().len() <= 63, "{meta:?}");
        }
    }

    #[test]
    fn children_include_the_cronjobs_and_verify_only_with_a_completed_backup() {
        let db = orders_with_backup("{volume: {claimName: backups}}");
        let creds = Credentials::single(&db, "a", "b");
        let c = children(&db, &creds, &facts(), &owner(), None);
        assert!(c.backup_cronjob.is_some() && c.verify_cronjob.is_none());
        let archive = Archive {
            name: "b1".into(),
            location: "file:///backup/shop/orders/b1".into(),
            destination: db.backup.clone().unwrap().destination,
        };
        let c = children(&db, &creds, &facts(), &owner(), Some(&archive));
        assert_eq!(
            c.verify_cronjob.unwrap().metadata.name.as_deref(),
            Some("orders-db-verify")
        );
    }
}

#[test]
fn the_disruption_policy_protects_by_default_and_allow_lets_a_drain_evict() {
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    let pdb_of = |sdb: &ServiceDatabase, class: &DatabaseClass| {
        let db = validate(sdb, class, None).unwrap();
        let owner = sdb.controller_owner_ref(&()).unwrap();
        let creds = Credentials::single(&db, "admin-pw", "app/pw@1");
        flat(children(&db, &creds, &facts(), &owner, None))
            .pdb
            .spec
            .unwrap()
    };
    let class: DatabaseClass = fixture("class-postgres.yaml");
    let sdb: ServiceDatabase = fixture("sdb-orders.yaml");
    let protect = pdb_of(&sdb, &class);
    assert_eq!(protect.min_available, Some(IntOrString::Int(1)));
    assert_eq!(protect.max_unavailable, None);

    let mut allowing_class = class.clone();
    allowing_class.spec.disruption = Some(crate::api::common::Disruption::Allow);
    let allow = pdb_of(&sdb, &allowing_class);
    assert_eq!(
        allow.max_unavailable,
        Some(IntOrString::Int(1)),
        "the class's default"
    );
    assert_eq!(allow.min_available, None);

    let mut protected = sdb.clone();
    protected.spec.disruption = Some(crate::api::common::Disruption::Protect);
    let own = pdb_of(&protected, &allowing_class);
    assert_eq!(
        own.min_available,
        Some(IntOrString::Int(1)),
        "the ServiceDatabase wins"
    );
}

mod exporter;
mod parameters;
