//! `servicedb agent --engine redis` against Debian's redis-server and a real
//! S3 server (versitygw): one service's key prefix on a shared server backed
//! up, wiped and restored with values and TTLs intact, the other services'
//! keys untouched; damaged archives refused before anything is loaded.
//!
//! Needs root (the server runs as the `redis` system user), redis-server
//! and versitygw (hack/s3/build.sh).

mod agent_common;
mod common;

use std::collections::BTreeMap;

use agent_common::servers::Redis;
use agent_common::{Run, S3, agent, agent_endpoint, files_under, random};
use redis::aio::MultiplexedConnection;
use redis::{AsyncCommands, ConnectionAddr, IntoConnectionInfo, RedisConnectionInfo};
use servicedb::engine::logins::{Login, Logins};

const PREFIX: &str = "cart:";

struct Fixture {
    redis: Redis,
    s3: S3,
    dir: tempfile::TempDir,
    /// The agent's port and TLS flags: the TLS port with `--tls
    /// verify-full` when the server has one.
    agent_port: u16,
    tls_args: Vec<String>,
}

impl Fixture {
    fn new() -> Fixture {
        Fixture::with(Redis::start_new())
    }

    /// The agent reaches the server on its TLS port; the test's own
    /// clients keep the plain one.
    fn new_tls() -> Fixture {
        Fixture::with(Redis::start_new_tls())
    }

    fn with(redis: Redis) -> Fixture {
        let s3 = S3::start();
        s3.create_bucket("backups");
        let (agent_port, tls_args) = agent_endpoint(redis.port, &redis.tls, redis.tls_port);
        Fixture {
            redis,
            s3,
            dir: tempfile::tempdir().expect("tempdir"),
            agent_port,
            tls_args,
        }
    }

    /// A connection as the administrator to logical database `db`.
    async fn conn(&self, db: i64) -> MultiplexedConnection {
        self.conn_as(&self.redis.admin_user, &self.redis.admin_password, db)
            .await
    }

    async fn conn_as(&self, user: &str, password: &str, db: i64) -> MultiplexedConnection {
        let info = ConnectionAddr::Tcp("127.0.0.1".to_owned(), self.redis.port)
            .into_connection_info()
            .expect("info")
            .set_redis_settings(
                RedisConnectionInfo::default()
                    .set_username(user)
                    .set_password(password)
                    .set_db(db),
            );
        redis::Client::open(info)
            .expect("client")
            .get_multiplexed_async_connection()
            .await
            .expect("connect")
    }

    fn dir_url(&self) -> String {
        format!("file://{}", self.dir.path().display())
    }

    fn env_with_password(&self, password: &str) -> Vec<(String, String)> {
        let mut env = self.s3.env();
        env.push(("SERVICEDB_PASSWORD".to_owned(), password.to_owned()));
        env
    }

    fn run(&self, command: &str, db: &str, extra: &[&str], password: &str) -> Run {
        let port = self.agent_port.to_string();
        let mut args = vec![
            command,
            "--engine",
            "redis",
            "--host",
            "127.0.0.1",
            "--port",
            &port,
            "--database",
            db,
            "--username",
            &self.redis.admin_user,
            "--s3-endpoint",
            &self.s3.endpoint,
        ];
        args.extend(self.tls_args.iter().map(String::as_str));
        args.extend_from_slice(extra);
        agent(
            &args,
            &self.env_with_password(password),
            &[&self.redis.admin_password, &self.s3.secret_key],
        )
    }

    fn backup(&self, destination: &str, name: &str, prefix: Option<&str>) -> Run {
        let mut extra = vec!["--destination", destination, "--name", name];
        if let Some(prefix) = prefix {
            extra.extend(["--key-prefix", prefix]);
        }
        self.run("backup", "0", &extra, &self.redis.admin_password)
    }

    fn restore(&self, command: &str, db: &str, from: &str, prefix: Option<&str>) -> Run {
        let mut extra = vec!["--from", from];
        if let Some(prefix) = prefix {
            extra.extend(["--key-prefix", prefix]);
        }
        self.run(command, db, &extra, &self.redis.admin_password)
    }
}

/// A key's value as a user reads it: its type, then its contents with the
/// order Redis does not promise (sets, hashes) sorted away. DUMP payloads
/// are not compared: a set or hash in a hash table serialises in bucket
/// order, which a restore is free to change.
async fn value(conn: &mut MultiplexedConnection, name: &[u8]) -> Vec<Vec<u8>> {
    let kind: String = redis::cmd("TYPE")
        .arg(name)
        .query_async(conn)
        .await
        .expect("TYPE");
    let mut contents: Vec<Vec<u8>> = match kind.as_str() {
        "string" => vec![conn.get(name).await.expect("GET")],
        "list" => conn.lrange(name, 0, -1).await.expect("LRANGE"),
        "set" => {
            let mut members: Vec<Vec<u8>> = conn.smembers(name).await.expect("SMEMBERS");
            members.sort();
            members
        }
        "zset" => conn.zrange_withscores(name, 0, -1).await.expect("ZRANGE"),
        "hash" => {
            let mut pairs: Vec<(Vec<u8>, Vec<u8>)> = conn.hgetall(name).await.expect("HGETALL");
            pairs.sort();
            pairs.into_iter().flat_map(|(k, v)| [k, v]).collect()
        }
        "stream" => {
            let entries: redis::Value = redis::cmd("XRANGE")
                .arg(name)
                .arg("-")
                .arg("+")
                .query_async(conn)
                .await
                .expect("XRANGE");
            vec![format!("{entries:?}").into_bytes()]
        }
        other => panic!(
            "unexpected type {other} of {}",
            String::from_utf8_lossy(name)
        ),
    };
    contents.insert(0, kind.into_bytes());
    contents
}

/// Keys matching `pattern` → (value, PTTL).
async fn keys(
    conn: &mut MultiplexedConnection,
    pattern: &str,
) -> BTreeMap<Vec<u8>, (Vec<Vec<u8>>, i64)> {
    let names: Vec<Vec<u8>> = conn.keys(pattern).await.expect("KEYS");
    let mut out = BTreeMap::new();
    for name in names {
        let contents = value(conn, &name).await;
        let pttl: i64 = conn.pttl(&name).await.expect("PTTL");
        out.insert(name, (contents, pttl));
    }
    out
}

async fn write_data(conn: &mut MultiplexedConnection) {
    let _: () = conn
        .set(
            b"cart:bin\x00\xff key".as_slice(),
            b"\x00\x01\xfe binary".as_slice(),
        )
        .await
        .expect("set");
    let _: () = conn.set("cart:plain", "ünïcødé ✓").await.expect("set");
    let _: () = conn
        .set_ex("cart:session", "expires", 3600)
        .await
        .expect("setex");
    let _: () = conn
        .hset_multiple("cart:hash", &[("a", "1"), ("b", "2")])
        .await
        .expect("hset");
    let _: () = conn
        .rpush("cart:list", &["x", "y", "z"])
        .await
        .expect("rpush");
    let _: () = conn.sadd("cart:set", &["m", "n"]).await.expect("sadd");
    let _: () = conn
        .zadd_multiple("cart:zset", &[(1.5, "one"), (2.5, "two")])
        .await
        .expect("zadd");
    let _: String = redis::cmd("XADD")
        .arg("cart:stream")
        .arg("*")
        .arg("field")
        .arg("value")
        .query_async(conn)
        .await
        .expect("xadd");
    for i in 0..3000 {
        let _: () = conn
            .set(
                format!("cart:item:{i}"),
                format!("value {i} {}", "x".repeat(i % 100)),
            )
            .await
            .expect("set");
    }
    // Another service on the same server.
    let _: () = conn.set("other:keep", "untouched").await.expect("set");
    // A key whose name only looks like a glob of the prefix.
    let _: () = conn.set("cartx:not-ours", "no").await.expect("set");
}

async fn delete_prefix(conn: &mut MultiplexedConnection, pattern: &str) {
    let names: Vec<Vec<u8>> = conn.keys(pattern).await.expect("KEYS");
    for name in names {
        let _: () = conn.del(name).await.expect("DEL");
    }
}

fn same_keys(
    before: &BTreeMap<Vec<u8>, (Vec<Vec<u8>>, i64)>,
    after: &BTreeMap<Vec<u8>, (Vec<Vec<u8>>, i64)>,
) {
    assert_eq!(
        before.keys().collect::<Vec<_>>(),
        after.keys().collect::<Vec<_>>(),
        "restored key names differ"
    );
    for (key, (payload, pttl)) in before {
        let (restored_payload, restored_pttl) = &after[key];
        assert!(
            payload == restored_payload,
            "value of {} differs",
            String::from_utf8_lossy(key)
        );
        if *pttl < 0 {
            assert_eq!(*restored_pttl, *pttl, "{}", String::from_utf8_lossy(key));
        } else {
            // The TTL left at dump time, counted again from the restore.
            assert!(
                *restored_pttl > 0
                    && *restored_pttl <= *pttl + 1000
                    && *restored_pttl > pttl - 120_000,
                "TTL of {}: {pttl} ms before, {restored_pttl} ms after",
                String::from_utf8_lossy(key)
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_key_prefix_is_backed_up_and_restored_alone_with_values_and_ttls() {
    let f = Fixture::new();
    let mut conn = f.conn(0).await;
    write_data(&mut conn).await;
    let before = keys(&mut conn, "cart:*").await;
    assert_eq!(before.len(), 3008);
    let others = keys(&mut conn, "other:*").await;

    let manifest = f
        .backup("s3://backups/redis", "cart-1", Some(PREFIX))
        .json();
    assert_eq!(manifest["engine"], "redis");
    assert_eq!(manifest["format"], "servicedb-redis-dump-v1");
    assert_eq!(manifest["database"], "0");
    assert_eq!(manifest["keyPrefix"], PREFIX);
    assert_eq!(manifest["serverVersion"], f.redis.version.as_str());
    assert_eq!(manifest["items"], 3008);
    let local = f.backup(&f.dir_url(), "cart-1", Some(PREFIX)).json();
    assert_eq!(local["items"], 3008);

    for from in [
        "s3://backups/redis/cart-1".to_owned(),
        format!("{}/cart-1", f.dir_url()),
    ] {
        delete_prefix(&mut conn, "cart:*").await;
        // Changed since the backup: the restore puts the old value back.
        let _: () = conn.set("cart:plain", "changed").await.expect("set");
        f.restore("restore", "0", &from, Some(PREFIX)).json();
        same_keys(&before, &keys(&mut conn, "cart:*").await);
        assert!(
            keys(&mut conn, "other:*").await == others,
            "other keys changed"
        );
        let not_ours: String = conn.get("cartx:not-ours").await.expect("get");
        assert_eq!(not_ours, "no");
    }

    // Restored under another prefix (a new ServiceDatabase made from this
    // one's backup), the keys move to it; this prefix is left alone.
    f.restore("restore", "0", "s3://backups/redis/cart-1", Some("orders:"))
        .json();
    let moved: BTreeMap<_, _> = before
        .iter()
        .map(|(key, value)| {
            let rest = key
                .strip_prefix(PREFIX.as_bytes())
                .expect("under the prefix");
            ([b"orders:".as_slice(), rest].concat(), value.clone())
        })
        .collect();
    same_keys(&moved, &keys(&mut conn, "orders:*").await);
    same_keys(&before, &keys(&mut conn, "cart:*").await);
    delete_prefix(&mut conn, "orders:*").await;

    // Verify into logical database 1.
    let verified = f
        .restore("verify", "1", "s3://backups/redis/cart-1", Some(PREFIX))
        .json();
    assert!(verified["restoreSeconds"].as_f64().expect("restoreSeconds") > 0.0);
    assert_eq!(verified["checks"]["keys"], 3008);
    assert_eq!(verified["checks"]["database"], 1);
    let mut scratch = f.conn(1).await;
    same_keys(&before, &keys(&mut scratch, "cart:*").await);
    // Without --scratch the next run finds the keys and refuses; the verify
    // CronJob passes --scratch, so its weekly runs repeat and leave nothing.
    let again = f
        .restore("verify", "1", "s3://backups/redis/cart-1", Some(PREFIX))
        .error();
    assert!(again.contains("needs an empty scratch database"), "{again}");
    for _ in 0..2 {
        let verified = f
            .run(
                "verify",
                "1",
                &[
                    "--from",
                    "s3://backups/redis/cart-1",
                    "--key-prefix",
                    PREFIX,
                    "--scratch",
                ],
                &f.redis.admin_password,
            )
            .json();
        assert_eq!(verified["checks"]["keys"], 3008);
    }
    assert!(
        keys(&mut scratch, "cart:*").await.is_empty(),
        "the scratch keys are removed after the check"
    );
    let refused = f
        .run(
            "verify",
            "0",
            &[
                "--from",
                "s3://backups/redis/cart-1",
                "--key-prefix",
                PREFIX,
                "--scratch",
            ],
            &f.redis.admin_password,
        )
        .error();
    assert!(refused.contains("logical database 0"), "{refused}");

    // A whole-database backup (no prefix) holds every key.
    let all = f.backup(&f.dir_url(), "all", None).json();
    assert_eq!(all["items"], 3010);
    assert!(all.get("keyPrefix").is_none(), "{all}");
    // Nothing says which of its keys would be this prefix's.
    let refused = f
        .restore(
            "restore",
            "0",
            &format!("{}/all", f.dir_url()),
            Some(PREFIX),
        )
        .error();
    assert!(
        refused.contains("needs a backup taken with that prefix"),
        "{refused}"
    );

    agent(
        &[
            "delete",
            "--from",
            "s3://backups/redis/cart-1",
            "--s3-endpoint",
            &f.s3.endpoint,
        ],
        &f.s3.env(),
        &[&f.s3.secret_key],
    )
    .json();
    assert!(
        files_under(&f.s3.bucket_dir("backups"))
            .iter()
            .all(|p| !p.contains("cart-1/")),
        "{:?}",
        files_under(&f.s3.bucket_dir("backups"))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn damaged_archives_and_wrong_passwords_are_refused() {
    let f = Fixture::new();
    let mut conn = f.conn(0).await;
    write_data(&mut conn).await;
    f.backup("s3://backups", "b1", Some(PREFIX)).json();
    delete_prefix(&mut conn, "cart:*").await;

    let archive = f.s3.bucket_dir("backups").join("b1/archive.zst");
    let mut bytes = std::fs::read(&archive).expect("archive");
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&archive, &bytes).expect("corrupt");
    let corrupted = f
        .restore("restore", "0", "s3://backups/b1", Some(PREFIX))
        .error();
    assert!(corrupted.contains("checksum mismatch"), "{corrupted}");
    std::fs::write(&archive, &bytes[..bytes.len() / 3]).expect("truncate");
    let truncated = f
        .restore("verify", "1", "s3://backups/b1", Some(PREFIX))
        .error();
    assert!(truncated.contains("archive truncated"), "{truncated}");
    assert!(
        keys(&mut conn, "cart:*").await.is_empty(),
        "something was loaded"
    );
    assert!(
        keys(&mut f.conn(1).await, "*").await.is_empty(),
        "something was loaded"
    );

    let wrong = random(16);
    let run = f.run(
        "backup",
        "0",
        &["--destination", "s3://backups", "--name", "b2"],
        &wrong,
    );
    assert!(!run.stderr.contains(&wrong) && !run.termination.contains(&wrong));
    let reason = run.error();
    assert!(
        reason.contains("connecting to Redis") && reason.contains("Password authentication failed"),
        "{reason}"
    );
    assert!(
        !files_under(&f.s3.bucket_dir("backups"))
            .iter()
            .any(|p| p.starts_with("b2")),
        "a failed backup left objects"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_key_prefix_is_backed_up_and_restored_over_verified_tls() {
    let f = Fixture::new_tls();
    let mut conn = f.conn(0).await;
    write_data(&mut conn).await;
    let before = keys(&mut conn, "cart:*").await;

    let manifest = f.backup("s3://backups/tls", "cart-1", Some(PREFIX)).json();
    assert_eq!(manifest["items"], 3008);
    delete_prefix(&mut conn, "cart:*").await;
    f.restore("restore", "0", "s3://backups/tls/cart-1", Some(PREFIX))
        .json();
    same_keys(&before, &keys(&mut conn, "cart:*").await);

    // The TLS port does not answer plain text: without --tls the agent
    // fails and says where it tried.
    let port = f.agent_port.to_string();
    let refused = agent(
        &[
            "backup",
            "--engine",
            "redis",
            "--host",
            "127.0.0.1",
            "--port",
            &port,
            "--username",
            &f.redis.admin_user,
            "--destination",
            &f.dir_url(),
            "--name",
            "plain",
        ],
        &f.env_with_password(&f.redis.admin_password),
        &[&f.redis.admin_password, &f.s3.secret_key],
    )
    .error();
    assert!(
        refused.contains(&format!("connecting to Redis at 127.0.0.1:{port}")),
        "{refused}"
    );
}

/// What a backup Job on a shared server does: the agent logs in as the
/// service's own ACL user (made by the operator's library: its key prefix,
/// no `@dangerous` commands such as INFO or KEYS) and backs up its prefix.
#[tokio::test(flavor = "multi_thread")]
async fn the_services_own_login_backs_up_its_prefix_and_restores_only_while_granted() {
    let f = Fixture::new();
    let mut admin = f.conn(0).await;
    let password = random(24);
    servicedb::engine::redis_acl::ensure_user(&mut admin, "cart", &password, PREFIX)
        .await
        .expect("the service's user");
    write_data(&mut admin).await;
    let before = keys(&mut admin, "cart:*").await;

    let port = f.redis.port.to_string();
    let service = |command: &str, extra: &[&str]| {
        let mut args = vec![
            command,
            "--engine",
            "redis",
            "--host",
            "127.0.0.1",
            "--port",
            &port,
            "--database",
            "0",
            "--username",
            "cart",
            "--key-prefix",
            PREFIX,
            "--s3-endpoint",
            &f.s3.endpoint,
        ];
        args.extend_from_slice(extra);
        agent(
            &args,
            &f.env_with_password(&password),
            &[&password, &f.s3.secret_key],
        )
    };
    let manifest = service(
        "backup",
        &["--destination", "s3://backups/svc", "--name", "cart-1"],
    )
    .json();
    assert_eq!(manifest["items"], 3008, "{manifest}");
    assert_eq!(manifest["serverVersion"], f.redis.version.as_str());

    // RESTORE is `@dangerous`: the service's login may not run it, until
    // the operator grants it for a restore into the prefix (what it does
    // while `spec.bootstrap.fromBackup` is pending on a shared server).
    delete_prefix(&mut admin, "cart:*").await;
    let refused = service("restore", &["--from", "s3://backups/svc/cart-1"]).error();
    assert!(
        refused.contains("no permissions to run the 'restore' command"),
        "{refused}"
    );
    assert!(
        keys(&mut admin, "cart:*").await.is_empty(),
        "nothing was loaded"
    );
    async fn grant(admin: &mut MultiplexedConnection, password: &str, restoring: bool) {
        let logins = Logins::single(Login::new("cart", password));
        servicedb::engine::redis_acl::ensure_user_logins(
            admin, "cart", &logins, PREFIX, restoring, None,
        )
        .await
        .expect("ACL SETUSER");
    }
    grant(&mut admin, &password, true).await;
    service("restore", &["--from", "s3://backups/svc/cart-1"]).json();
    same_keys(&before, &keys(&mut admin, "cart:*").await);
    // Still only its own keys: RESTORE of another prefix is refused.
    let mut own = f.conn_as("cart", &password, 0).await;
    let payload: Vec<u8> = redis::cmd("DUMP")
        .arg("cart:plain")
        .query_async(&mut own)
        .await
        .expect("DUMP");
    let foreign: redis::RedisResult<()> = redis::cmd("RESTORE")
        .arg("other:stolen")
        .arg(0)
        .arg(&payload)
        .query_async(&mut own)
        .await;
    let foreign = foreign.expect_err("RESTORE outside the prefix");
    assert!(
        foreign.to_string().contains("no permissions to access"),
        "{foreign}"
    );
    // Withdrawn once restored.
    grant(&mut admin, &password, false).await;
    delete_prefix(&mut admin, "cart:*").await;
    let refused = service("restore", &["--from", "s3://backups/svc/cart-1"]).error();
    assert!(
        refused.contains("no permissions to run the 'restore' command"),
        "{refused}"
    );
}

/// As on a shared server: a service's ACL user carries its marker and its
/// name is claimed once; a user made by hand, or another service's, is
/// refused unchanged and never deleted; two services racing for one name
/// cannot both get it.
#[tokio::test(flavor = "multi_thread")]
async fn users_are_claimed_once_and_foreign_users_are_never_touched() {
    use servicedb::engine::logins::Marker;
    use servicedb::engine::redis_acl::{ensure_user_logins, remove_marked_user};
    let f = Fixture::new();
    let mut admin = f.conn(0).await;
    let marker = |uid: &str| Marker {
        uid: uid.into(),
        service: format!("shop/{uid}"),
        server: "infra/kv".into(),
        adopt_unmarked: false,
        adopt_predecessor: false,
    };
    let (ours, theirs) = (marker("uid-a"), marker("uid-b"));
    let logins = Logins::single(Login::new("svc", "password a"));
    ensure_user_logins(&mut admin, "svc", &logins, "svc:", false, Some(&ours))
        .await
        .expect("made");
    let other = Logins::single(Login::new("svc", "password b"));
    let refused = ensure_user_logins(&mut admin, "svc", &other, "svc:", false, Some(&theirs))
        .await
        .expect_err("another service's user");
    assert_eq!(refused.category(), "name_conflict");
    assert!(refused.to_string().contains("uid-a"), "{refused}");
    assert!(
        !remove_marked_user(&mut admin, "svc", &theirs)
            .await
            .expect("not theirs")
    );
    f.conn_as("svc", "password a", 0).await;

    // Made by hand: refused, left as it is, not deleted.
    redis::cmd("ACL")
        .arg(
            &[
                "SETUSER",
                "hand",
                "on",
                ">their password",
                "~hand:*",
                "+@all",
            ][..],
        )
        .query_async::<()>(&mut admin)
        .await
        .expect("SETUSER");
    let mine = Logins::single(Login::new("hand", "password a"));
    ensure_user_logins(&mut admin, "hand", &mine, "hand:", false, Some(&ours))
        .await
        .expect_err("made by hand");
    assert!(
        !remove_marked_user(&mut admin, "hand", &ours)
            .await
            .expect("left")
    );
    f.conn_as("hand", "their password", 0).await;

    // Two services racing for one fresh name: one gets it.
    let mut second = f.conn(0).await;
    let race = Logins::single(Login::new("race", "password"));
    let (a, b) = tokio::join!(
        ensure_user_logins(&mut admin, "race", &race, "race:", false, Some(&ours)),
        ensure_user_logins(&mut second, "race", &race, "race:", false, Some(&theirs)),
    );
    assert!(a.is_ok() != b.is_ok(), "exactly one: {a:?} / {b:?}");

    // The holder's deletion removes its user and its claim.
    assert!(
        remove_marked_user(&mut admin, "svc", &ours)
            .await
            .expect("ours")
    );
    ensure_user_logins(&mut admin, "svc", &other, "svc:", false, Some(&theirs))
        .await
        .expect("the name is free again");
}
