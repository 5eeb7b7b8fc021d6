//! Redis: a logical dump of one service's keys.
//!
//! Why not `redis-cli --rdb`: an RDB file is the whole server, and a
//! service on a shared server owns only its key prefix; restoring an RDB
//! means replacing the server's data directory and restarting it. Instead
//! the agent walks the keys with `SCAN` (limited to `--key-prefix` when
//! given), takes each one's `DUMP` (Redis's own serialisation of a value of
//! any type, with its checksum) and `PTTL`, and writes them as records of
//! [`super::frame`]; restore is `RESTORE key ttl payload REPLACE`. That
//! works per prefix on a shared server and per database on a dedicated
//! one, needs no file access to the server, and never blocks it (no
//! `SAVE`, no `KEYS`).
//!
//! The price: the dump is not one point in time. Each key is consistent,
//! but keys written while the scan runs may or may not be in it (as with
//! any `SCAN`). A key's time to live is stored as what remained when it was
//! dumped, and restored relative to the restore. `DUMP` payloads restore on
//! the same or a newer Redis version only.

use std::time::Duration;

use anyhow::{Context, bail};
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, RedisConnectionInfo, Value};
use serde_json::json;
use tokio::io::{AsyncRead, AsyncWrite};

use super::engine::{Checks, DatabaseArgs};
use super::frame::{FrameReader, FrameWriter};
use super::manifest::Manifest;
use super::secret::Secret;
use crate::engine::redis_acl::describe;

pub const FORMAT: &str = "servicedb-redis-dump-v1";
const MAGIC: &[u8; 8] = b"SDBRDS1\n";
/// Record: key, PTTL (8 bytes, big-endian i64; -1 for none), DUMP payload.
const KEY: u8 = 1;
const SCAN_COUNT: u64 = 1000;
/// RESTOREs sent in one pipeline, and the bytes they may carry at most.
const RESTORE_BATCH: usize = 500;
const RESTORE_BATCH_BYTES: usize = 8 * 1024 * 1024;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(120);

pub struct Redis {
    conn: MultiplexedConnection,
    db: i64,
    key_prefix: Option<String>,
    /// A restore of another prefix's backup: its prefix, and this one.
    rename: Option<(Vec<u8>, Vec<u8>)>,
    server_version: String,
    password: Secret,
}

impl Redis {
    pub async fn connect(args: &DatabaseArgs, password: Secret) -> anyhow::Result<Redis> {
        let host = args.host.clone();
        let port = args.port.unwrap_or(6379);
        let db: i64 = match args.database.as_deref() {
            None | Some("") => 0,
            Some(text) => text.parse().ok().filter(|db| *db >= 0).with_context(|| {
                format!("--database {text:?}: for Redis, the logical database number (0, 1, …)")
            })?,
        };
        let mut settings = RedisConnectionInfo::default().set_db(db);
        if let Some(user) = args.username.as_deref().filter(|u| !u.is_empty()) {
            settings = settings.set_username(user);
        }
        if !password.is_empty() {
            settings = settings.set_password(password.expose());
        }
        let tls = args.tls_settings()?;
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT));
        let who = args.username.as_deref().unwrap_or("default");
        let fail = |error: redis::RedisError| {
            anyhow::anyhow!(
                "connecting to Redis at {host}:{port}, database {db}, as {who:?}: {}",
                password.scrub(&describe(&error))
            )
        };
        let mut conn = crate::engine::tls::redis_client(&host, port, settings, &tls)
            .map_err(fail)?
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(fail)?;
        // HELLO without arguments (the protocol stays as it is) names the
        // version to any logged-in user; INFO is `@dangerous`, which a
        // service's login on a shared server may not run.
        let hello: Vec<(String, Value)> = redis::cmd("HELLO")
            .query_async(&mut conn)
            .await
            .map_err(|e| anyhow::anyhow!("HELLO: {}", describe(&e)))?;
        let server_version = hello
            .into_iter()
            .find_map(|(field, value)| match (field.as_str(), value) {
                ("version", Value::BulkString(v)) => String::from_utf8(v).ok(),
                ("version", Value::SimpleString(v)) => Some(v),
                _ => None,
            })
            .unwrap_or_else(|| "unknown".to_owned());
        Ok(Redis {
            conn,
            db,
            key_prefix: args.key_prefix.clone().filter(|p| !p.is_empty()),
            rename: None,
            server_version,
            password,
        })
    }

    pub fn server_version(&self) -> &str {
        &self.server_version
    }

    pub fn database(&self) -> String {
        self.db.to_string()
    }

    pub fn key_prefix(&self) -> Option<&str> {
        self.key_prefix.as_deref()
    }

    /// Deletes every key (under the prefix) of this logical database, one
    /// `SCAN` page at a time; returns how many went.
    pub async fn empty(&mut self) -> anyhow::Result<u64> {
        let mut deleted = 0u64;
        let mut cursor = 0;
        loop {
            let (next, keys) = self.scan_page(cursor).await?;
            if !keys.is_empty() {
                let gone: u64 = redis::cmd("UNLINK")
                    .arg(&keys)
                    .query_async(&mut self.conn)
                    .await
                    .map_err(|e| {
                        anyhow::anyhow!("UNLINK: {}", self.password.scrub(&describe(&e)))
                    })?;
                deleted += gone;
            }
            if next == 0 {
                return Ok(deleted);
            }
            cursor = next;
        }
    }

    /// Every key (under the prefix), one `SCAN` page at a time.
    async fn scan_page(&mut self, cursor: u64) -> anyhow::Result<(u64, Vec<Vec<u8>>)> {
        let mut cmd = redis::cmd("SCAN");
        cmd.arg(cursor);
        if let Some(prefix) = &self.key_prefix {
            cmd.arg("MATCH").arg(format!("{}*", glob_escape(prefix)));
        }
        cmd.arg("COUNT").arg(SCAN_COUNT);
        cmd.query_async(&mut self.conn)
            .await
            .map_err(|e| anyhow::anyhow!("SCAN: {}", self.password.scrub(&describe(&e))))
    }

    /// Writes every key; returns how many.
    pub async fn dump(
        &mut self,
        sink: &mut (dyn AsyncWrite + Unpin + Send),
    ) -> anyhow::Result<u64> {
        let mut out = FrameWriter::start(sink, MAGIC).await?;
        let mut keys_written = 0u64;
        let mut cursor = 0u64;
        loop {
            let (next, keys) = self.scan_page(cursor).await?;
            if !keys.is_empty() {
                let mut pipe = redis::pipe();
                for key in &keys {
                    pipe.cmd("PTTL").arg(key).cmd("DUMP").arg(key);
                }
                let replies: Vec<Value> = pipe
                    .query_async(&mut self.conn)
                    .await
                    .map_err(|e| anyhow::anyhow!("PTTL/DUMP: {}", describe(&e)))?;
                if replies.len() != keys.len() * 2 {
                    bail!(
                        "PTTL/DUMP: {} replies for {} keys",
                        replies.len(),
                        keys.len()
                    );
                }
                for (key, pair) in keys.iter().zip(replies.chunks_exact(2)) {
                    let pttl: i64 = redis::from_redis_value_ref(&pair[0])
                        .map_err(|e| anyhow::anyhow!("PTTL reply: {e}"))?;
                    let payload: Option<Vec<u8>> = redis::from_redis_value_ref(&pair[1])
                        .map_err(|e| anyhow::anyhow!("DUMP reply: {e}"))?;
                    // Deleted or expired since SCAN saw it.
                    let Some(payload) = payload else { continue };
                    if pttl == -2 {
                        continue;
                    }
                    out.record(KEY, &[key, &pttl.to_be_bytes(), &payload])
                        .await?;
                    keys_written += 1;
                }
            }
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
        out.end().await?;
        Ok(keys_written)
    }

    /// Decides, before anything is loaded, where a restore limited to
    /// `--key-prefix` puts the backup's keys: where they were when the
    /// backup stays within that prefix; moved from the backup's prefix to
    /// this one when it is another's (a new ServiceDatabase restored from
    /// an older one's backup). A backup of every key is refused.
    pub fn check_prefix(&mut self, manifest: &Manifest) -> anyhow::Result<()> {
        let Some(wanted) = &self.key_prefix else {
            return Ok(());
        };
        match &manifest.key_prefix {
            Some(dumped) if dumped.starts_with(wanted.as_str()) => Ok(()),
            Some(dumped) => {
                tracing::info!(from = %dumped, to = %wanted, "the keys move to this key prefix");
                self.rename = Some((dumped.clone().into_bytes(), wanted.clone().into_bytes()));
                Ok(())
            }
            None => bail!(
                "the backup holds keys of every prefix; a restore limited to --key-prefix \
                 {wanted:?} needs a backup taken with that prefix"
            ),
        }
    }

    /// `RESTORE … REPLACE` for every key of the dump.
    pub async fn restore(&mut self, source: impl AsyncRead + Unpin + Send) -> anyhow::Result<u64> {
        let mut records = FrameReader::start(source, MAGIC).await?;
        let mut pipe = redis::pipe();
        let mut batch = (0usize, 0usize);
        let mut restored = 0u64;
        while let Some(record) = records.next().await? {
            let [key, pttl, payload] = <[Vec<u8>; 3]>::try_from(record.fields)
                .ok()
                .filter(|_| record.tag == KEY)
                .context("the dump holds a record that is not a key")?;
            let key = match &self.rename {
                None => key,
                Some((from, to)) => {
                    let rest = key.strip_prefix(from.as_slice()).with_context(|| {
                        format!(
                            "the dump holds key {:?} outside its own prefix {:?}",
                            String::from_utf8_lossy(&key),
                            String::from_utf8_lossy(from)
                        )
                    })?;
                    [to.as_slice(), rest].concat()
                }
            };
            if let Some(prefix) = &self.key_prefix
                && !key.starts_with(prefix.as_bytes())
            {
                bail!(
                    "the dump holds key {:?} outside --key-prefix {prefix:?}",
                    String::from_utf8_lossy(&key)
                );
            }
            let pttl = i64::from_be_bytes(
                <[u8; 8]>::try_from(pttl.as_slice()).context("a key's TTL is not 8 bytes")?,
            );
            batch.1 += key.len() + payload.len();
            pipe.cmd("RESTORE")
                .arg(&key)
                .arg(pttl.max(0))
                .arg(&payload)
                .arg("REPLACE")
                .ignore();
            batch.0 += 1;
            restored += 1;
            // The first key alone: a refusal (a login without RESTORE, a
            // payload of a newer Redis) is one clear error, not one per key
            // of a batch.
            if restored == 1 || batch.0 >= RESTORE_BATCH || batch.1 >= RESTORE_BATCH_BYTES {
                self.send(&mut pipe).await?;
                batch = (0, 0);
            }
        }
        if batch.0 > 0 {
            self.send(&mut pipe).await?;
        }
        Ok(restored)
    }

    async fn send(&mut self, pipe: &mut redis::Pipeline) -> anyhow::Result<()> {
        pipe.query_async::<()>(&mut self.conn)
            .await
            .map_err(|e| anyhow::anyhow!("RESTORE: {}", describe(&e)))?;
        pipe.clear();
        Ok(())
    }

    /// Number of keys (under the prefix).
    pub async fn check(&mut self) -> anyhow::Result<Checks> {
        let mut keys = 0u64;
        let mut cursor = 0u64;
        loop {
            let (next, page) = self.scan_page(cursor).await?;
            keys += page.len() as u64;
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
        Ok(Checks {
            items: keys,
            summary: json!({ "keys": keys, "database": self.db, "keyPrefix": self.key_prefix }),
            detail: None,
        })
    }
}

/// A literal prefix inside a `SCAN MATCH` glob.
fn glob_escape(prefix: &str) -> String {
    let mut out = String::with_capacity(prefix.len());
    for c in prefix.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_characters_in_a_prefix_are_literal() {
        assert_eq!(glob_escape("cart:"), "cart:");
        assert_eq!(glob_escape(r"a*b?[c]\"), r"a\*b\?\[c\]\\");
    }
}
