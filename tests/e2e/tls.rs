//! TLS towards external servers: a PostgreSQL that accepts TLS only and a
//! Redis with a TLS port, both with certificates from a CA the test makes.
//! `VerifyFull` with the CA and `Require` work; plain TCP and a wrong CA are
//! refused and said so in the DatabaseServer's status; a service placed on
//! a server whose CA Secret is missing waits, naming the field.

use std::time::Duration;

use k8s_openapi::api::batch::v1::CronJob;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::json;
use servicedb::api::{DatabaseServer, Phase, ServiceDatabase};
use servicedb::engine::tls::{TlsMode, TlsSettings};

use crate::support::harness::{Env, wait_for};
use crate::support::objects::secret_value;
use crate::support::objects::wait_phase;
use crate::support::servers::{Postgres, Redis, TestCa};

async fn secret(env: &Env, name: &str, data: serde_json::Value) {
    let body = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "stringData": data});
    env.api::<Secret>()
        .patch(
            name,
            &PatchParams::apply("servicedb-e2e"),
            &Patch::Apply(&body),
        )
        .await
        .expect("secret");
}

async fn server(env: &Env, name: &str, engine: &str, port: u16, tls: serde_json::Value) {
    let body = json!({"apiVersion": "servicedb.dev/v1alpha1", "kind": "DatabaseServer", "metadata": {"name": name},
        "spec": {"engine": engine, "external": {"host": "127.0.0.1", "port": port,
                 "adminSecretRef": {"name": format!("{}-admin", engine.to_lowercase())}, "tls": tls}}});
    env.api::<DatabaseServer>()
        .patch(
            name,
            &PatchParams::apply("servicedb-e2e"),
            &Patch::Apply(&body),
        )
        .await
        .expect("server");
}

/// The `Reachable` condition once it has the wanted status.
async fn reachable(env: &Env, name: &str, want: &str) -> (String, String) {
    let api: Api<DatabaseServer> = env.api();
    wait_for(
        &format!("{name} Reachable={want}"),
        Duration::from_secs(60),
        || async {
            let s = api.get(name).await.ok()?;
            let c = s
                .status?
                .conditions
                .into_iter()
                .find(|c| c.type_ == "Reachable")?;
            (c.status == want).then_some((c.reason, c.message))
        },
    )
    .await
}

#[tokio::test]
async fn external_servers_are_reached_over_tls() {
    let env = Env::new("tls").await;
    let pg = Postgres::start_new_tls();
    let redis = Redis::start_new_tls();
    let ca = &pg.tls.as_ref().expect("tls").ca_pem;
    secret(
        &env,
        "postgres-admin",
        json!({"username": pg.admin_user, "password": pg.admin_password}),
    )
    .await;
    secret(
        &env,
        "redis-admin",
        json!({"username": redis.admin_user, "password": redis.admin_password}),
    )
    .await;
    secret(&env, "pg-ca", json!({"ca.crt": ca})).await;
    secret(
        &env,
        "redis-ca",
        json!({"ca.crt": redis.tls.as_ref().expect("tls").ca_pem}),
    )
    .await;
    let other = tempfile::tempdir().expect("dir");
    let wrong = TestCa::owned_by_me(other.path());
    secret(&env, "wrong-ca", json!({"ca.crt": wrong.ca_pem})).await;

    server(
        &env,
        "pg-verified",
        "Postgres",
        pg.port,
        json!({"mode": "VerifyFull", "caSecretRef": {"name": "pg-ca"}}),
    )
    .await;
    server(
        &env,
        "pg-encrypted",
        "Postgres",
        pg.port,
        json!({"mode": "Require"}),
    )
    .await;
    server(
        &env,
        "pg-plain",
        "Postgres",
        pg.port,
        json!({"mode": "Disable"}),
    )
    .await;
    server(
        &env,
        "pg-wrong-ca",
        "Postgres",
        pg.port,
        json!({"mode": "VerifyFull", "caSecretRef": {"name": "wrong-ca"}}),
    )
    .await;
    let tls_port = redis.tls_port.expect("tls port");
    server(
        &env,
        "redis-verified",
        "Redis",
        tls_port,
        json!({"mode": "VerifyFull", "caSecretRef": {"name": "redis-ca"}}),
    )
    .await;
    server(
        &env,
        "redis-encrypted",
        "Redis",
        tls_port,
        json!({"mode": "Require"}),
    )
    .await;

    for name in [
        "pg-verified",
        "pg-encrypted",
        "redis-verified",
        "redis-encrypted",
    ] {
        reachable(&env, name, "True").await;
    }
    let (_, message) = reachable(&env, "pg-plain", "False").await;
    assert!(
        message.contains("no encryption") || message.contains("pg_hba"),
        "{message}"
    );
    let (_, message) = reachable(&env, "pg-wrong-ca", "False").await;
    assert!(message.to_lowercase().contains("certificate"), "{message}");

    // A service placed on the verified server gets its login over TLS.
    let sdbs: Api<ServiceDatabase> = env.api();
    for (name, engine, server) in [
        ("orders", "Postgres", "pg-verified"),
        ("cart", "Redis", "redis-verified"),
    ] {
        let body = json!({"apiVersion": "servicedb.dev/v1alpha1", "kind": "ServiceDatabase", "metadata": {"name": name},
            "spec": {"engine": engine, "isolation": "Database", "serverRef": {"name": server},
                     "owner": {"podSelector": {"matchLabels": {"app": name}}}, "deletionPolicy": "Delete"}});
        sdbs.patch(
            name,
            &PatchParams::apply("servicedb-e2e"),
            &Patch::Apply(&body),
        )
        .await
        .expect("sdb");
        wait_phase(&sdbs, name, Phase::Ready).await;
    }
    let s = env.api::<Secret>().get("orders-db").await.expect("secret");
    let mut config = tokio_postgres::Config::new();
    config
        .host("127.0.0.1")
        .port(pg.port)
        .user(secret_value(&s, "username"))
        .password(secret_value(&s, "password"))
        .dbname(secret_value(&s, "database"));
    let verified = TlsSettings {
        mode: TlsMode::VerifyFull,
        ca_pem: Some(ca.clone()),
    };
    let client = servicedb::engine::tls::postgres(&mut config, &verified)
        .await
        .expect("the service logs in over TLS");
    let ssl: bool = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .expect("pg_stat_ssl")
        .get(0);
    assert!(ssl, "the session is encrypted");
    // The Secret carries what a client needs to verify the server.
    assert_eq!(&secret_value(&s, "ca.crt"), ca);
    assert!(
        secret_value(&s, "uri").ends_with("?sslmode=verify-full"),
        "the URI asks for TLS"
    );

    // Backups reach the server over TLS too: the agent gets the mode and
    // the CA, mounted from the credentials Secret.
    let backup = json!({"apiVersion": "servicedb.dev/v1alpha1", "kind": "ServiceDatabase", "metadata": {"name": "orders"},
        "spec": {"backup": {"schedule": "@daily", "destination": {"volume": {"claimName": "backups"}}}}});
    sdbs.patch(
        "orders",
        &PatchParams::apply("servicedb-e2e-backup"),
        &Patch::Apply(&backup),
    )
    .await
    .expect("add backups");
    let cronjobs: Api<CronJob> = env.api();
    let cron = wait_for("orders-db-backup", Duration::from_secs(30), || async {
        cronjobs.get_opt("orders-db-backup").await.ok().flatten()
    })
    .await;
    let pod = cron
        .spec
        .and_then(|s| s.job_template.spec)
        .and_then(|j| j.template.spec)
        .expect("pod");
    let args = pod.containers[0].args.clone().unwrap_or_default().join(" ");
    assert!(
        args.contains("--tls verify-full --tls-ca-file /etc/servicedb/server-ca/ca.crt"),
        "{args}"
    );
    let ca_volume = pod
        .volumes
        .unwrap_or_default()
        .into_iter()
        .find_map(|v| v.secret)
        .expect("the CA volume");
    assert_eq!(ca_volume.secret_name.as_deref(), Some("orders-db"));
    let cleared = wait_phase(&sdbs, "orders", Phase::Ready).await;
    assert!(
        cleared
            .status
            .expect("status")
            .conditions
            .iter()
            .all(|c| c.reason != "Unsupported"),
        "backups over TLS are not refused"
    );
    let c = env.api::<Secret>().get("cart-db").await.expect("secret");
    let mut conn = servicedb::engine::tls::redis(
        "127.0.0.1",
        tls_port,
        &secret_value(&c, "username"),
        &secret_value(&c, "password"),
        &TlsSettings {
            mode: TlsMode::VerifyFull,
            ca_pem: redis.tls.as_ref().map(|t| t.ca_pem.clone()),
        },
        Duration::from_secs(5),
    )
    .await
    .expect("the cart service logs in over TLS");
    let _: () = redis::cmd("SET")
        .arg(format!("{}k", secret_value(&c, "keyPrefix")))
        .arg("v")
        .query_async(&mut conn)
        .await
        .expect("writes");

    // A CA Secret that does not exist yet: the service says which field of
    // which server, and is placed without a nudge once the Secret is made.
    server(
        &env,
        "pg-ca-later",
        "Postgres",
        pg.port,
        json!({"mode": "VerifyFull", "caSecretRef": {"name": "pg-ca-later"}}),
    )
    .await;
    let body = json!({"apiVersion": "servicedb.dev/v1alpha1", "kind": "ServiceDatabase", "metadata": {"name": "invoices"},
        "spec": {"engine": "Postgres", "isolation": "Database", "serverRef": {"name": "pg-ca-later"},
                 "owner": {"podSelector": {"matchLabels": {"app": "invoices"}}}, "deletionPolicy": "Delete"}});
    sdbs.patch(
        "invoices",
        &PatchParams::apply("servicedb-e2e"),
        &Patch::Apply(&body),
    )
    .await
    .expect("sdb");
    let message = wait_for(
        "invoices SpecValid=False ServerTlsInvalid",
        Duration::from_secs(30),
        || async {
            let c = sdbs
                .get("invoices")
                .await
                .ok()?
                .status?
                .conditions
                .into_iter()
                .find(|c| c.type_ == "SpecValid")?;
            (c.status == "False" && c.reason == "ServerTlsInvalid").then_some(c.message)
        },
    )
    .await;
    assert!(
        message.contains("spec.external.tls.caSecretRef") && message.contains("pg-ca-later"),
        "{message}"
    );
    secret(&env, "pg-ca-later", json!({"ca.crt": ca})).await;
    wait_for("invoices Ready", Duration::from_secs(90), || async {
        let sdb = sdbs.get("invoices").await.ok()?;
        (sdb.status?.phase == Phase::Ready).then_some(())
    })
    .await;
}

/// A server posing as PostgreSQL on the path to the real one: it accepts
/// TLS with a certificate of its own CA, asks for the password in clear
/// text, and keeps every byte the client sends after the handshake.
struct Impostor {
    port: u16,
    /// Handshakes that completed (the client accepted the certificate).
    handshakes: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    received: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    _ca: TestCa,
    _dir: tempfile::TempDir,
}

impl Impostor {
    fn start() -> Impostor {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        use std::sync::Arc;
        let dir = tempfile::tempdir().expect("dir");
        let ca = TestCa::owned_by_me(dir.path());
        let certs = CertificateDer::pem_file_iter(&ca.cert)
            .expect("cert")
            .collect::<Result<Vec<_>, _>>()
            .expect("cert");
        let key = PrivateKeyDer::from_pem_file(&ca.key).expect("key");
        let config = Arc::new(
            rustls::ServerConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .expect("server config"),
        );
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("address").port();
        let handshakes = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let received = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (h, r) = (handshakes.clone(), received.clone());
        std::thread::spawn(move || {
            for tcp in listener.incoming() {
                let Ok(tcp) = tcp else { return };
                let (config, h, r) = (config.clone(), h.clone(), r.clone());
                std::thread::spawn(move || {
                    let _ = Impostor::serve(tcp, config, &h, &r);
                });
            }
        });
        Impostor {
            port,
            handshakes,
            received,
            _ca: ca,
            _dir: dir,
        }
    }

    fn serve(
        mut tcp: std::net::TcpStream,
        config: std::sync::Arc<rustls::ServerConfig>,
        handshakes: &std::sync::atomic::AtomicUsize,
        received: &std::sync::Mutex<Vec<u8>>,
    ) -> std::io::Result<()> {
        use std::io::{Read, Write};
        tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
        // SSLRequest: length 8, code 80877103; say yes.
        let mut request = [0u8; 8];
        tcp.read_exact(&mut request)?;
        if request[4..] != 80877103u32.to_be_bytes() {
            return Ok(());
        }
        tcp.write_all(b"S")?;
        let connection = rustls::ServerConnection::new(config).map_err(std::io::Error::other)?;
        let mut tls = rustls::StreamOwned::new(connection, tcp);
        // The startup message; reading it completes the handshake.
        let mut length = [0u8; 4];
        tls.read_exact(&mut length)?;
        handshakes.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let mut startup = vec![0u8; (u32::from_be_bytes(length) as usize).saturating_sub(4)];
        tls.read_exact(&mut startup)?;
        // AuthenticationCleartextPassword.
        tls.write_all(&[b'R', 0, 0, 0, 8, 0, 0, 0, 3])?;
        tls.flush()?;
        let mut buf = [0u8; 4096];
        loop {
            let n = tls.read(&mut buf)?;
            if n == 0 {
                return Ok(());
            }
            received
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend_from_slice(&buf[..n]);
        }
    }

    fn received(&self) -> Vec<u8> {
        self.received
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// The administrator's password never reaches a server that cannot prove
/// who it is: with a CA given and no mode, the server is verified
/// (`VerifyFull`), so an impostor fails the handshake; with `Require`
/// (encrypted, not verified) an impostor completes the handshake but gets
/// no password, because PostgreSQL logins require channel binding, which
/// an impostor cannot fake.
#[tokio::test]
async fn the_admin_password_never_reaches_an_impostor() {
    let env = Env::new("mitm").await;
    let pg = Postgres::start_new_tls();
    let ca = &pg.tls.as_ref().expect("tls").ca_pem;
    let impostor = Impostor::start();
    secret(
        &env,
        "postgres-admin",
        json!({"username": pg.admin_user, "password": pg.admin_password}),
    )
    .await;
    secret(&env, "pg-ca", json!({"ca.crt": ca})).await;

    // A CA and no mode: verified, and the real server passes.
    let ca_only = json!({"caSecretRef": {"name": "pg-ca"}});
    server(&env, "real", "Postgres", pg.port, ca_only.clone()).await;
    server(&env, "posed", "Postgres", impostor.port, ca_only).await;
    server(
        &env,
        "posed-require",
        "Postgres",
        impostor.port,
        json!({"mode": "Require"}),
    )
    .await;
    let (reason, message) = reachable(&env, "posed-require", "False").await;
    // Wait for a second try of each probe: anything sent has arrived.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(
        impostor
            .handshakes
            .load(std::sync::atomic::Ordering::SeqCst)
            >= 1,
        "the Require probe reached the login step ({reason}: {message})"
    );
    let received = impostor.received();
    let password = pg.admin_password.as_bytes();
    assert!(
        !received.windows(password.len()).any(|w| w == password),
        "the impostor received the administrator's password ({reason}: {message})"
    );
    reachable(&env, "real", "True").await;
    let (_, message) = reachable(&env, "posed", "False").await;
    assert!(message.to_lowercase().contains("certificate"), "{message}");
}
