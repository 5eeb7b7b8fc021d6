//! Redis shared servers: the service's ACL user confined to its key prefix,
//! over a kept administrator connection; dropping deletes its keys.

use async_trait::async_trait;

use super::{
    CONNECT_TIMEOUT, Error, Provisioned, Provisioner, conflict_or, connect_error, provision,
};
use crate::controller::sessions::Sessions;
use crate::engine::logins::{Login, Logins, Marker};
use crate::engine::redis_acl;
use crate::engine::suspend;
use crate::engine::tls::TlsSettings;
use crate::model::database::ValidatedDatabase;
use crate::model::server::ServerFacts;

pub struct Redis;

#[async_trait]
impl Provisioner for Redis {
    async fn ensure(
        &self,
        db: &ValidatedDatabase,
        server: &ServerFacts,
        marker: &Marker,
        logins: &Logins,
        restoring: bool,
        sessions: &Sessions,
    ) -> Result<Provisioned, Error> {
        let mut conn = match sessions.take_redis(server) {
            Some(conn) => conn,
            None => connect(server).await?,
        };
        let prefix = crate::engine::redis::key_prefix(&db.username);
        let taken_over = restoring
            && redis_acl::left_by_predecessor(&mut conn, &db.username, marker)
                .await
                .map_err(|e| {
                    sessions.forget_redis(server);
                    conflict_or(server, e.category(), e.to_string())
                })?;
        redis_acl::ensure_user_logins(
            &mut conn,
            &db.username,
            logins,
            &prefix,
            restoring,
            Some(marker),
        )
        .await
        .map_err(|e| {
            sessions.forget_redis(server);
            conflict_or(server, e.category(), e.to_string())
        })?;
        save_acl(&mut conn).await;
        sessions.give_redis(server, conn);
        Ok(Provisioned { taken_over })
    }

    async fn remove(
        &self,
        db: &ValidatedDatabase,
        server: &ServerFacts,
        marker: &Marker,
    ) -> Result<(), Error> {
        let mut conn = connect(server).await?;
        let ours = redis_acl::remove_marked_user(&mut conn, &db.username, marker)
            .await
            .map_err(|e| provision(server, e.category(), e.to_string()))?;
        if !ours {
            // The user, and so the keys under its prefix, are someone
            // else's.
            return Ok(());
        }
        save_acl(&mut conn).await;
        let prefix = crate::engine::redis::key_prefix(&db.username);
        delete_keys(&mut conn, &prefix)
            .await
            .map_err(|e| provision(server, "delete-keys", redis_acl::describe(&e)))
    }

    async fn suspend(
        &self,
        _db: &ValidatedDatabase,
        server: &ServerFacts,
        marker: &Marker,
        logins: &[String],
    ) -> Result<Vec<String>, Error> {
        let fail = |e: suspend::Error| provision(server, "suspend", e.to_string());
        let mut conn = connect(server).await?;
        let mut found = Vec::new();
        for login in logins {
            let ours = redis_acl::user_is_ours(&mut conn, login, marker)
                .await
                .map_err(|e| provision(server, "suspend", e.to_string()))?;
            if ours && suspend::redis(&mut conn, login).await.map_err(fail)? {
                found.push(login.clone());
            }
        }
        save_acl(&mut conn).await;
        Ok(found)
    }

    async fn check_login(
        &self,
        _db: &ValidatedDatabase,
        host: &str,
        port: i32,
        tls: &TlsSettings,
        login: &Login,
    ) -> Result<(), String> {
        let port = u16::try_from(port).unwrap_or(6379);
        match crate::engine::tls::redis(
            host,
            port,
            &login.username,
            &login.password,
            tls,
            CONNECT_TIMEOUT,
        )
        .await
        {
            Ok(mut conn) => redis::cmd("PING")
                .query_async::<String>(&mut conn)
                .await
                .map(drop)
                .map_err(|e| redis_acl::describe(&e)),
            Err(e) => Err(redis_acl::describe(&e)),
        }
    }
}

async fn connect(server: &ServerFacts) -> Result<redis::aio::MultiplexedConnection, Error> {
    crate::engine::tls::redis(
        &server.host,
        u16::try_from(server.port).unwrap_or(6379),
        &server.admin_username,
        &server.admin_password,
        &server.tls,
        CONNECT_TIMEOUT,
    )
    .await
    .map_err(|e| connect_error(server, &redis_acl::describe(&e)))
}

/// Writes the live ACL to the server's ACL file, so that the logins survive
/// a restart. A server without an ACL file (`aclfile`) keeps them in memory
/// only: said once per reconcile at debug level, not an error.
async fn save_acl(conn: &mut redis::aio::MultiplexedConnection) {
    if let Err(e) = redis_acl::save_acl_file(conn).await {
        tracing::debug!(error = %e, "ACL SAVE failed; the server keeps users in memory only");
    }
}

/// Deletes every key under a prefix, a batch at a time (SCAN, never KEYS).
async fn delete_keys(
    conn: &mut redis::aio::MultiplexedConnection,
    prefix: &str,
) -> Result<(), redis::RedisError> {
    let pattern = format!("{}*", glob_escape(prefix));
    let mut cursor: u64 = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(500)
            .query_async(conn)
            .await?;
        if !keys.is_empty() {
            redis::cmd("UNLINK")
                .arg(&keys)
                .query_async::<()>(conn)
                .await?;
        }
        if next == 0 {
            return Ok(());
        }
        cursor = next;
    }
}

/// Escapes Redis glob characters so a prefix matches only itself.
fn glob_escape(s: &str) -> String {
    s.chars().fold(String::new(), |mut out, c| {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
        out
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_prefix_matches_only_itself() {
        assert_eq!(super::glob_escape("shop_cart:"), "shop_cart:");
        assert_eq!(super::glob_escape("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\");
    }
}
