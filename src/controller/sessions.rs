//! Administrator sessions to the shared servers, kept between passes: a
//! pass takes an idle PostgreSQL session of the server (per database) or
//! the server's Redis connection instead of logging in again, and gives it
//! back when its work succeeded. A session that failed is dropped, never
//! reused.
//!
//! Bounded: a server never has more sessions in use than the
//! [`super::server_gate`] lets reconciles work on it, and at most
//! [`IDLE_PER_DATABASE`] wait idle per database. Sessions are keyed by the
//! server's address and credentials: once either changes, the next pass
//! logs in anew and the sessions made with the old ones are closed.

use std::collections::HashMap;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::Mutex;

use crate::model::server::ServerFacts;

/// Idle PostgreSQL sessions kept per server and database.
pub const IDLE_PER_DATABASE: usize = 4;

/// The pools of every shared server.
#[derive(Default)]
pub struct Sessions {
    postgres: Mutex<HashMap<String, Pool<tokio_postgres::Client>>>,
    redis: Mutex<HashMap<String, Pool<redis::aio::MultiplexedConnection>>>,
}

/// One server's idle sessions, made with the address and credentials of
/// `login`.
struct Pool<C> {
    login: u64,
    idle: HashMap<String, Vec<C>>,
}

/// The server's `namespace/name`: one pool each.
fn server_key(server: &ServerFacts) -> String {
    format!("{}/{}", server.namespace, server.name)
}

/// What a session was made with: address, credentials, TLS.
pub fn login(server: &ServerFacts) -> u64 {
    let mut h = DefaultHasher::new();
    (&server.host, server.port).hash(&mut h);
    (&server.admin_username, &server.admin_password).hash(&mut h);
    server.tls.ca_pem.hash(&mut h);
    format!("{:?}", server.tls.mode).hash(&mut h);
    h.finish()
}

impl<C> Pool<C> {
    fn take(&mut self, database: &str, usable: impl Fn(&C) -> bool) -> Option<C> {
        let idle = self.idle.get_mut(database)?;
        while let Some(session) = idle.pop() {
            if usable(&session) {
                return Some(session);
            }
        }
        None
    }
}

fn take<C>(
    pools: &Mutex<HashMap<String, Pool<C>>>,
    server: &ServerFacts,
    database: &str,
    usable: impl Fn(&C) -> bool,
) -> Option<C> {
    let mut pools = pools.lock().unwrap_or_else(|p| p.into_inner());
    let pool = pools.get_mut(&server_key(server))?;
    if pool.login != login(server) {
        // Made with an old address or credentials: closed as they drop.
        pools.remove(&server_key(server));
        return None;
    }
    pool.take(database, usable)
}

fn give<C>(
    pools: &Mutex<HashMap<String, Pool<C>>>,
    server: &ServerFacts,
    database: &str,
    session: C,
    limit: usize,
) {
    let mut pools = pools.lock().unwrap_or_else(|p| p.into_inner());
    let login = login(server);
    let pool = pools.entry(server_key(server)).or_insert_with(|| Pool {
        login,
        idle: HashMap::new(),
    });
    if pool.login != login {
        *pool = Pool {
            login,
            idle: HashMap::new(),
        };
    }
    let idle = pool.idle.entry(database.to_string()).or_default();
    if idle.len() < limit {
        idle.push(session);
    }
}

impl Sessions {
    /// An idle session to `database` of the server, made with its current
    /// address and credentials and still open.
    pub fn take_postgres(
        &self,
        server: &ServerFacts,
        database: &str,
    ) -> Option<tokio_postgres::Client> {
        take(&self.postgres, server, database, |c| !c.is_closed())
    }

    /// Keeps a session that did its work for the next pass.
    pub fn give_postgres(
        &self,
        server: &ServerFacts,
        database: &str,
        client: tokio_postgres::Client,
    ) {
        if !client.is_closed() {
            give(&self.postgres, server, database, client, IDLE_PER_DATABASE);
        }
    }

    /// The server's Redis connection (one multiplexed connection serves
    /// every pass at once).
    pub fn take_redis(&self, server: &ServerFacts) -> Option<redis::aio::MultiplexedConnection> {
        let pools = &self.redis;
        // A multiplexed connection is shared, not lent: a clone stays.
        let conn = take(pools, server, "", |_| true)?;
        give(pools, server, "", conn.clone(), 1);
        Some(conn)
    }

    pub fn give_redis(&self, server: &ServerFacts, conn: redis::aio::MultiplexedConnection) {
        give(&self.redis, server, "", conn, 1);
    }

    /// Drops the server's Redis connection after a failure on it.
    pub fn forget_redis(&self, server: &ServerFacts) {
        self.redis
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&server_key(server));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pools() -> Mutex<HashMap<String, Pool<u32>>> {
        Mutex::default()
    }

    #[test]
    fn a_session_given_back_is_taken_again_for_the_same_database() {
        let pools = pools();
        let server = ServerFacts::example();
        assert_eq!(take(&pools, &server, "postgres", |_| true), None);
        give(&pools, &server, "postgres", 1, 2);
        assert_eq!(take(&pools, &server, "orders", |_| true), None);
        assert_eq!(take(&pools, &server, "postgres", |_| true), Some(1));
        assert_eq!(
            take(&pools, &server, "postgres", |_| true),
            None,
            "lent, not copied"
        );
    }

    #[test]
    fn idle_sessions_are_bounded_and_closed_ones_are_skipped() {
        let pools = pools();
        let server = ServerFacts::example();
        for n in 1..=5 {
            give(&pools, &server, "postgres", n, 2);
        }
        assert_eq!(take(&pools, &server, "postgres", |n| *n != 2), Some(1));
        assert_eq!(take(&pools, &server, "postgres", |_| true), None);
    }

    #[test]
    fn new_credentials_or_address_make_new_sessions() {
        let pools = pools();
        let server = ServerFacts::example();
        give(&pools, &server, "postgres", 1, 2);
        let mut rotated = server.clone();
        rotated.admin_password = "new-secret".into();
        assert_eq!(take(&pools, &rotated, "postgres", |_| true), None);
        assert_eq!(
            take(&pools, &server, "postgres", |_| true),
            None,
            "the old sessions are gone"
        );
        give(&pools, &rotated, "postgres", 2, 2);
        let mut moved = rotated.clone();
        moved.host = "pg2.example.com".into();
        assert_eq!(take(&pools, &moved, "postgres", |_| true), None);
    }
}
