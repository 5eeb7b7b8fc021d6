//! PostgreSQL shared servers: the service's database (or its schema in the
//! shared database of isolation `Schema`), its login roles and the scratch
//! database of verification, over pooled administrator sessions.

use async_trait::async_trait;

use super::{
    CONNECT_TIMEOUT, Error, LOCK_TIMEOUT, Provisioned, Provisioner, STATEMENT_TIMEOUT, conflict_or,
    connect_error, provision,
};
use crate::controller::sessions::Sessions;
use crate::engine::logins::{Login, Logins, Marker};
use crate::engine::postgres_users::{self, ServiceUser};
use crate::engine::suspend;
use crate::engine::tls::TlsSettings;
use crate::model::database::ValidatedDatabase;
use crate::model::server::ServerFacts;

pub struct Postgres;

#[async_trait]
impl Provisioner for Postgres {
    async fn ensure(
        &self,
        db: &ValidatedDatabase,
        server: &ServerFacts,
        marker: &Marker,
        logins: &Logins,
        restoring: bool,
        sessions: &Sessions,
    ) -> Result<Provisioned, Error> {
        let client = pooled(sessions, server, "postgres").await?;
        let fail = |e: postgres_users::UserError| user_error(server, e);
        let taken_over = restoring
            && postgres_users::left_by_predecessor(&client, &db.username, marker)
                .await
                .map_err(fail)?;
        let mut kept = None;
        if db.schema.is_some() {
            postgres_users::ensure_schema_database(&client, &db.database)
                .await
                .map_err(fail)?;
            let shared = pooled(sessions, server, &db.database).await?;
            postgres_users::ensure_service_schema(
                &client,
                &shared,
                &db.username,
                &db.database,
                logins,
                Some(marker),
            )
            .await
            .map_err(fail)?;
            kept = Some(shared);
        } else {
            postgres_users::ensure_service_logins(
                &client,
                &db.username,
                &db.database,
                logins,
                Some(marker),
            )
            .await
            .map_err(fail)?;
        }
        verify_scratch(&client, db, marker).await.map_err(fail)?;
        // Sessions that did their work serve the next pass; a failed one is
        // dropped above.
        sessions.give_postgres(server, "postgres", client);
        if let Some(shared) = kept {
            sessions.give_postgres(server, &db.database, shared);
        }
        Ok(Provisioned { taken_over })
    }

    async fn remove(
        &self,
        db: &ValidatedDatabase,
        server: &ServerFacts,
        marker: &Marker,
    ) -> Result<(), Error> {
        let client = connect(server, "postgres").await?;
        // Before the role: DROP ROLE fails while it owns a database.
        drop_scratch(&client, db, server, marker).await?;
        if db.schema.is_some() {
            let shared = connect(server, &db.database).await?;
            return postgres_users::drop_service_schema(
                &client,
                &shared,
                &db.username,
                Some(marker),
            )
            .await
            .map_err(|e| provision(server, e.category(), e.to_string()));
        }
        let user = ServiceUser {
            role: db.username.clone(),
            password: String::new(),
            database: db.database.clone(),
        };
        postgres_users::drop_service_database(&client, &user, Some(marker))
            .await
            .map_err(|e| provision(server, e.category(), e.to_string()))
    }

    async fn suspend(
        &self,
        _db: &ValidatedDatabase,
        server: &ServerFacts,
        marker: &Marker,
        logins: &[String],
    ) -> Result<Vec<String>, Error> {
        let fail = |e: suspend::Error| provision(server, "suspend", e.to_string());
        let client = connect(server, "postgres").await?;
        let mut found = Vec::new();
        for login in logins {
            let ours = postgres_users::role_is_ours(&client, marker, login)
                .await
                .map_err(|e| provision(server, "suspend", e.to_string()))?;
            if ours && suspend::postgres(&client, login).await.map_err(fail)? {
                found.push(login.clone());
            }
        }
        Ok(found)
    }

    async fn check_login(
        &self,
        db: &ValidatedDatabase,
        host: &str,
        port: i32,
        tls: &TlsSettings,
        login: &Login,
    ) -> Result<(), String> {
        let mut config = tokio_postgres::Config::new();
        config
            .host(host)
            .port(u16::try_from(port).unwrap_or(5432))
            .user(&login.username)
            .password(&login.password)
            .dbname(&db.database)
            .application_name("servicedb")
            .connect_timeout(CONNECT_TIMEOUT);
        match crate::engine::tls::postgres(&mut config, tls).await {
            Ok(client) => client
                .simple_query("SELECT 1")
                .await
                .map(drop)
                .map_err(|e| postgres_users::describe(&e)),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// The scratch database of `spec.backup.verify` exists, owned by the
/// service's owner role, exactly while the spec asks for verification: the
/// verify Job restores into it as the service's own login, which may not
/// create databases.
async fn verify_scratch(
    client: &tokio_postgres::Client,
    db: &ValidatedDatabase,
    marker: &Marker,
) -> Result<(), postgres_users::UserError> {
    let scratch = postgres_users::scratch_name(&db.username);
    let verify = db
        .backup
        .as_ref()
        .is_some_and(|b| b.verify_schedule.is_some());
    if verify {
        postgres_users::ensure_scratch_database(client, &db.username, &scratch, Some(marker))
            .await?;
    } else {
        postgres_users::drop_scratch_database(client, &db.username, &scratch, Some(marker)).await?;
    }
    Ok(())
}

async fn drop_scratch(
    client: &tokio_postgres::Client,
    db: &ValidatedDatabase,
    server: &ServerFacts,
    marker: &Marker,
) -> Result<(), Error> {
    let scratch = postgres_users::scratch_name(&db.username);
    postgres_users::drop_scratch_database(client, &db.username, &scratch, Some(marker))
        .await
        .map(drop)
        .map_err(|e| provision(server, e.category(), e.to_string()))
}

/// An administrator session to `database`, its statements bounded.
async fn connect(server: &ServerFacts, database: &str) -> Result<tokio_postgres::Client, Error> {
    let mut config = tokio_postgres::Config::new();
    config
        .host(&server.host)
        .port(u16::try_from(server.port).unwrap_or(5432))
        .user(&server.admin_username)
        .password(&server.admin_password)
        .dbname(database)
        .application_name("servicedb")
        .connect_timeout(CONNECT_TIMEOUT);
    crate::engine::tls::bound_statements(&mut config, STATEMENT_TIMEOUT, LOCK_TIMEOUT);
    crate::engine::tls::postgres(&mut config, &server.tls)
        .await
        .map_err(|e| connect_error(server, &e.to_string()))
}

/// An idle administrator session of the server's pool, or a new one.
async fn pooled(
    sessions: &Sessions,
    server: &ServerFacts,
    database: &str,
) -> Result<tokio_postgres::Client, Error> {
    match sessions.take_postgres(server, database) {
        Some(client) => Ok(client),
        None => connect(server, database).await,
    }
}

/// A name held by an object that is not ours is a conflict to report, not
/// a failure to retry soon.
fn user_error(server: &ServerFacts, error: postgres_users::UserError) -> Error {
    conflict_or(server, error.category(), error.to_string())
}
