//! MongoDB shared servers: the service's database claimed in
//! `servicedb.claims`, its users defined on it; dropping drops both.

use async_trait::async_trait;

use super::{
    CONNECT_TIMEOUT, Error, Provisioned, Provisioner, conflict_or, connect_error, provision,
};
use crate::controller::sessions::Sessions;
use crate::engine::logins::{Login, Logins, Marker};
use crate::engine::mongodb_users;
use crate::engine::suspend;
use crate::engine::tls::TlsSettings;
use crate::model::database::ValidatedDatabase;
use crate::model::server::ServerFacts;

pub struct MongoDb;

#[async_trait]
impl Provisioner for MongoDb {
    async fn ensure(
        &self,
        db: &ValidatedDatabase,
        server: &ServerFacts,
        marker: &Marker,
        logins: &Logins,
        restoring: bool,
        _sessions: &Sessions,
    ) -> Result<Provisioned, Error> {
        let client = connect(server)?;
        let taken_over = restoring
            && mongodb_users::check_claim(&client, &db.database, marker)
                .await
                .map_err(|e| user_error(server, e))?
                == mongodb_users::Claim::Predecessor;
        mongodb_users::ensure_service_logins(
            &client,
            &db.database,
            &db.username,
            logins,
            Some(marker),
        )
        .await
        .map_err(|e| user_error(server, e))?;
        Ok(Provisioned { taken_over })
    }

    async fn remove(
        &self,
        db: &ValidatedDatabase,
        server: &ServerFacts,
        marker: &Marker,
    ) -> Result<(), Error> {
        let client = connect(server)?;
        match mongodb_users::check_claim(&client, &db.database, marker).await {
            Ok(_) => {}
            Err(e) if e.category() == "name_conflict" => {
                tracing::info!(database = %db.database, "not servicedb's for this service; left as it is");
                return Ok(());
            }
            Err(e) => return Err(user_error(server, e)),
        }
        let twin = crate::engine::logins::twin(&db.username);
        let legacy = crate::engine::logins::legacy_twin(&db.username);
        for user in [db.username.as_str(), twin.as_str(), legacy.as_str()] {
            mongodb_users::drop_user(&client, &db.database, user)
                .await
                .map_err(|e| user_error(server, e))?;
        }
        client
            .database(&db.database)
            .drop()
            .await
            .map_err(|e| provision(server, "drop-database", e.to_string()))?;
        mongodb_users::release_claim(&client, &db.database, marker)
            .await
            .map_err(|e| user_error(server, e))
    }

    async fn suspend(
        &self,
        db: &ValidatedDatabase,
        server: &ServerFacts,
        marker: &Marker,
        logins: &[String],
    ) -> Result<Vec<String>, Error> {
        let fail = |e: suspend::Error| provision(server, "suspend", e.to_string());
        let client = connect(server)?;
        let mut found = Vec::new();
        let claim = mongodb_users::check_claim(&client, &db.database, marker).await;
        if !matches!(claim, Ok(mongodb_users::Claim::Ours)) {
            return Ok(found);
        }
        for login in logins {
            if suspend::mongodb(&client, &db.database, login)
                .await
                .map_err(fail)?
            {
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
        let login = mongodb_users::Login {
            source: &db.database,
            user: &login.username,
            password: &login.password,
        };
        let port = u16::try_from(port).unwrap_or(27017);
        let client = crate::engine::tls::mongodb(tls)
            .map_err(|e| e.0)
            .and_then(|tls| {
                mongodb_users::direct_client_tls(host, port, Some(login), CONNECT_TIMEOUT, tls)
                    .map_err(|e| e.to_string())
            })?;
        client
            .database(&db.database)
            .run_command(mongodb::bson::doc! { "ping": 1 })
            .await
            .map(drop)
            .map_err(|e| e.to_string())
    }
}

fn connect(server: &ServerFacts) -> Result<mongodb::Client, Error> {
    let login = mongodb_users::Login {
        source: "admin",
        user: &server.admin_username,
        password: &server.admin_password,
    };
    let port = u16::try_from(server.port).unwrap_or(27017);
    let tls = crate::engine::tls::mongodb(&server.tls).map_err(|e| connect_error(server, &e.0))?;
    mongodb_users::direct_client_tls(&server.host, port, Some(login), CONNECT_TIMEOUT, tls)
        .map_err(|e| connect_error(server, &e.to_string()))
}

/// A refused login or no answer is the server's state; anything else is
/// about this database.
fn user_error(server: &ServerFacts, error: mongodb_users::UserError) -> Error {
    if error.category() == "name_conflict" {
        conflict_or(server, error.category(), error.to_string())
    } else if error.is_login_refused() || error.category() == "connection" {
        connect_error(server, &error.to_string())
    } else {
        provision(server, error.category(), error.to_string())
    }
}
