//! Shared servers: a DatabaseServer in front of a test server, and the
//! clients a test logs in with.

use crate::support::harness::Env;
use crate::support::servers::Postgres;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::json;
use servicedb::api::DatabaseServer;
use std::time::Duration;

pub async fn connect(
    port: u16,
    user: &str,
    password: &str,
    database: &str,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::Config::new()
        .host("127.0.0.1")
        .port(port)
        .user(user)
        .password(password)
        .dbname(database)
        .connect_timeout(Duration::from_secs(5))
        .connect(tokio_postgres::NoTls)
        .await?;
    tokio::spawn(connection);
    Ok(client)
}

pub async fn server(env: &Env, name: &str, pg: &Postgres, allowed: serde_json::Value) {
    server_of(
        env,
        name,
        "Postgres",
        pg.port,
        &pg.admin_user,
        &pg.admin_password,
        allowed,
    )
    .await
}

pub async fn server_of(
    env: &Env,
    name: &str,
    engine: &str,
    port: u16,
    user: &str,
    password: &str,
    allowed: serde_json::Value,
) {
    let secrets: Api<Secret> = env.api();
    let admin = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": format!("{name}-admin")},
        "stringData": {"username": user, "password": password}});
    secrets
        .patch(
            &format!("{name}-admin"),
            &PatchParams::apply("servicedb-e2e"),
            &Patch::Apply(&admin),
        )
        .await
        .expect("admin secret");
    let server = json!({"apiVersion": "servicedb.dev/v1alpha1", "kind": "DatabaseServer", "metadata": {"name": name},
        "spec": {"engine": engine, "allowedNamespaces": allowed,
                 "external": {"host": "127.0.0.1", "port": port, "adminSecretRef": {"name": format!("{name}-admin")}}}});
    env.api::<DatabaseServer>()
        .patch(
            name,
            &PatchParams::apply("servicedb-e2e"),
            &Patch::Apply(&server),
        )
        .await
        .expect("server");
}

pub async fn redis_as(
    port: u16,
    user: &str,
    password: &str,
) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
    use redis::{ConnectionAddr, IntoConnectionInfo, RedisConnectionInfo};
    let info = ConnectionAddr::Tcp("127.0.0.1".into(), port)
        .into_connection_info()?
        .set_redis_settings(
            RedisConnectionInfo::default()
                .set_username(user)
                .set_password(password),
        );
    redis::Client::open(info)?
        .get_multiplexed_async_connection()
        .await
}
