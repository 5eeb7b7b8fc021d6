//! `servicedb agent` against Debian's PostgreSQL 15 and a real S3 server
//! (versitygw, hack/s3/build.sh): the real binary, `pg_dump`/`pg_restore`
//! from the PostgreSQL install, backups to S3 and to a directory, restored
//! and compared row for row; damaged archives and every kind of failure
//! refused without leaving a backup behind.
//!
//! Needs root (the server runs as the `postgres` system user), the
//! postgresql-15 package and versitygw.

mod agent_common;
mod common;

use std::collections::BTreeMap;
use std::path::Path;

use agent_common::servers::Postgres;
use agent_common::{Run, S3, agent, agent_command, files_under, random, verify_full};
use servicedb::engine::postgres_users::{
    ServiceUser, drop_scratch_database, ensure_scratch_database, ensure_service_database,
    quote_ident, scratch_name,
};
use servicedb::engine::tls::{TlsMode, TlsSettings};
use tokio_postgres::Client;

const ROLE: &str = "orders_svc";
const DATABASE: &str = "orders-db";

struct Fixture {
    pg: Postgres,
    s3: S3,
    dir: tempfile::TempDir,
    password: String,
    /// How the test's own clients reach the server.
    tls: TlsSettings,
    /// The agent's TLS flags.
    tls_args: Vec<String>,
}

impl Fixture {
    async fn new() -> Fixture {
        Fixture::with(Postgres::start_new()).await
    }

    /// A server that accepts TLS only, reached with `--tls verify-full`.
    async fn new_tls() -> Fixture {
        Fixture::with(Postgres::start_new_tls()).await
    }

    async fn with(pg: Postgres) -> Fixture {
        let s3 = S3::start();
        s3.create_bucket("backups");
        let (tls, tls_args) = match &pg.tls {
            None => (TlsSettings::default(), vec![]),
            Some(ca) => (
                TlsSettings {
                    mode: TlsMode::VerifyFull,
                    ca_pem: Some(ca.ca_pem.clone()),
                },
                verify_full(ca),
            ),
        };
        let fixture = Fixture {
            pg,
            s3,
            dir: tempfile::tempdir().expect("tempdir"),
            // Quotes, a backslash and a space: must reach the server intact
            // and never appear in the agent's output.
            password: format!("{}'\"\\ ;$1", random(20)),
            tls,
            tls_args,
        };
        fixture.recreate(DATABASE).await;
        fixture
    }

    async fn connect(&self, user: &str, password: &str, database: &str) -> Client {
        let mut config = tokio_postgres::Config::new();
        config
            .host("127.0.0.1")
            .port(self.pg.port)
            .user(user)
            .password(password)
            .dbname(database);
        servicedb::engine::tls::postgres(&mut config, &self.tls)
            .await
            .unwrap_or_else(|e| panic!("connecting to {database} as {user}: {e}"))
    }

    async fn admin(&self) -> Client {
        self.connect(&self.pg.admin_user, &self.pg.admin_password, "postgres")
            .await
    }

    async fn service(&self, database: &str) -> Client {
        self.connect(ROLE, &self.password, database).await
    }

    /// The service's database, empty (dropped first if it exists), made by
    /// the operator's own library.
    async fn recreate(&self, database: &str) {
        let admin = self.admin().await;
        admin
            .batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                quote_ident(database)
            ))
            .await
            .expect("drop database");
        ensure_service_database(
            &admin,
            &ServiceUser {
                role: ROLE.to_owned(),
                password: self.password.clone(),
                database: database.to_owned(),
            },
        )
        .await
        .expect("create the service's database");
    }

    fn dir_url(&self) -> String {
        format!("file://{}", self.dir.path().display())
    }

    fn env(&self) -> Vec<(String, String)> {
        let mut env = self.s3.env();
        env.push(("SERVICEDB_PASSWORD".to_owned(), self.password.clone()));
        env
    }

    /// `servicedb agent <command>` on `database` as the server's
    /// administrator (a dedicated instance's Jobs), from the S3 backup
    /// `orders-1`; its JSON result.
    fn as_admin(&self, command: &str, database: &str, extra: &[&str]) -> serde_json::Value {
        let mut args = vec![command.to_owned()];
        args.extend(self.db_args(database));
        let admin = args.iter().position(|a| a == ROLE).expect("role arg");
        args[admin] = self.pg.admin_user.clone();
        args.extend(extra.iter().map(|a| a.to_string()));
        args.extend(
            [
                "--from",
                "s3://backups/shop/orders/orders-1",
                "--s3-endpoint",
                &self.s3.endpoint,
            ]
            .map(str::to_owned),
        );
        let mut env = self.s3.env();
        env.push((
            "SERVICEDB_PASSWORD".to_owned(),
            self.pg.admin_password.clone(),
        ));
        self.run(&args, &env).json()
    }

    fn db_args(&self, database: &str) -> Vec<String> {
        [
            "--engine",
            "postgres",
            "--host",
            "127.0.0.1",
            "--port",
            &self.pg.port.to_string(),
            "--database",
            database,
            "--username",
            ROLE,
        ]
        .map(str::to_owned)
        .into_iter()
        .chain(self.tls_args.iter().cloned())
        .collect()
    }

    fn run(&self, args: &[String], env: &[(String, String)]) -> Run {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        agent(&args, env, &[&self.password, &self.s3.secret_key])
    }

    fn backup(&self, destination: &str, name: &str) -> Run {
        let mut args = vec!["backup".to_owned()];
        args.extend(self.db_args(DATABASE));
        args.extend(
            [
                "--destination",
                destination,
                "--name",
                name,
                "--s3-endpoint",
                &self.s3.endpoint,
            ]
            .map(str::to_owned),
        );
        self.run(&args, &self.env())
    }

    fn restore(&self, command: &str, database: &str, from: &str) -> Run {
        let mut args = vec![command.to_owned()];
        args.extend(self.db_args(database));
        args.extend(["--from", from, "--s3-endpoint", &self.s3.endpoint].map(str::to_owned));
        self.run(&args, &self.env())
    }

    fn delete(&self, from: &str) -> Run {
        let args =
            ["delete", "--from", from, "--s3-endpoint", &self.s3.endpoint].map(str::to_owned);
        self.run(&args, &self.env())
    }
}

/// Types that a dump must carry exactly, a sequence's position, an index,
/// a view, a foreign key, and rows enough to span several archive writes.
const SCHEMA: &str = r#"
CREATE TABLE customers (
    id bigserial PRIMARY KEY,
    name text NOT NULL,
    email text UNIQUE,
    created timestamptz NOT NULL DEFAULT '2026-01-02 03:04:05+00'
);
CREATE TABLE orders (
    id bigserial PRIMARY KEY,
    customer bigint NOT NULL REFERENCES customers(id),
    total numeric(12, 2) NOT NULL,
    items jsonb NOT NULL,
    note text,
    blob bytea
);
CREATE INDEX orders_by_customer ON orders (customer);
CREATE SCHEMA reporting;
CREATE VIEW reporting.totals AS SELECT customer, sum(total) AS total FROM orders GROUP BY customer;
CREATE TABLE reporting."Mixed Case" ("Key" text PRIMARY KEY, value double precision);
INSERT INTO customers (name, email)
    SELECT 'customer ' || i || ' ünïcødé ✓', 'c' || i || '@example.com' FROM generate_series(1, 500) i;
INSERT INTO orders (customer, total, items, note, blob)
    SELECT 1 + i % 500, i * 1.25, jsonb_build_object('sku', 'S' || i, 'qty', i % 7),
           CASE WHEN i % 3 = 0 THEN NULL ELSE repeat('note ', i % 50) END,
           decode(md5(i::text), 'hex')
    FROM generate_series(1, 20000) i;
INSERT INTO reporting."Mixed Case" VALUES ('a', 1.5), ('b', 'NaN'), ('c', '-Infinity');
"#;

/// Everything a user would compare: every table's rows, indexes, views and
/// sequence positions.
async fn snapshot(client: &Client) -> BTreeMap<String, Vec<String>> {
    let mut out = BTreeMap::new();
    let tables = client
        .query(
            "SELECT quote_ident(schemaname) || '.' || quote_ident(tablename) FROM pg_tables \
             WHERE schemaname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1",
            &[],
        )
        .await
        .expect("tables");
    for row in tables {
        let table: String = row.get(0);
        let rows = client
            .query(
                &format!("SELECT to_jsonb(t)::text FROM {table} t ORDER BY 1"),
                &[],
            )
            .await
            .expect("rows");
        out.insert(table, rows.iter().map(|r| r.get(0)).collect());
    }
    for (name, sql) in [
        (
            "indexes",
            "SELECT indexdef FROM pg_indexes WHERE schemaname NOT IN ('pg_catalog') ORDER BY 1",
        ),
        (
            "views",
            "SELECT schemaname || '.' || viewname || ': ' || definition FROM pg_views \
             WHERE schemaname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1",
        ),
        (
            "sequences",
            "SELECT sequencename || '=' || last_value FROM pg_sequences ORDER BY 1",
        ),
    ] {
        let rows = client.query(sql, &[]).await.expect(name);
        out.insert(name.to_owned(), rows.iter().map(|r| r.get(0)).collect());
    }
    out
}

async fn table_count(client: &Client) -> i64 {
    client
        .query_one(
            "SELECT count(*) FROM pg_tables WHERE schemaname NOT IN ('pg_catalog', 'information_schema')",
            &[],
        )
        .await
        .expect("count tables")
        .get(0)
}

fn manifests_under(dir: &Path) -> Vec<String> {
    files_under(dir)
        .into_iter()
        .filter(|f| f.ends_with("manifest.json"))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn backups_to_s3_and_a_directory_restore_identical_data() {
    let f = Fixture::new().await;
    let service = f.service(DATABASE).await;
    service.batch_execute(SCHEMA).await.expect("schema");
    let before = snapshot(&service).await;
    assert_eq!(before["public.orders"].len(), 20000);
    drop(service);

    // To S3.
    let run = f.backup("s3://backups/shop/orders", "orders-1");
    let manifest = run.json();
    assert_eq!(manifest["engine"], "postgres");
    assert_eq!(manifest["format"], "pg_dump-custom");
    assert_eq!(manifest["database"], DATABASE);
    assert_eq!(manifest["serverVersion"], f.pg.version.as_str());
    assert_eq!(manifest["location"], "s3://backups/shop/orders/orders-1");
    assert_eq!(manifest["archive"], "shop/orders/orders-1/archive.zst");
    assert_eq!(manifest["items"], 3, "three tables");
    let stored = std::fs::read(
        f.s3.bucket_dir("backups")
            .join("shop/orders/orders-1/archive.zst"),
    )
    .expect("the archive is in the bucket");
    assert_eq!(manifest["sizeBytes"], stored.len() as u64);
    let sha = {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(&stored);
        digest
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    assert_eq!(manifest["checksum"], format!("sha256:{sha}"));
    assert!(
        manifest["rawBytes"].as_u64().expect("rawBytes") > stored.len() as u64,
        "compressed: {manifest}"
    );
    for key in ["startedAt", "completedAt"] {
        let text = manifest[key].as_str().expect(key);
        chrono::DateTime::parse_from_rfc3339(text).unwrap_or_else(|e| panic!("{key} {text}: {e}"));
    }
    let on_disk: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            f.s3.bucket_dir("backups")
                .join("shop/orders/orders-1/manifest.json"),
        )
        .expect("the manifest is in the bucket"),
    )
    .expect("manifest JSON");
    assert_eq!(on_disk, manifest);

    // To a directory.
    let local = f.backup(&f.dir_url(), "orders-1").json();
    assert_eq!(local["location"], format!("{}/orders-1", f.dir_url()));
    assert_eq!(
        files_under(f.dir.path()),
        ["orders-1/archive.zst", "orders-1/manifest.json"]
    );

    // A completed backup is never overwritten.
    let again = f.backup(&f.dir_url(), "orders-1").error();
    assert!(again.contains("already exists"), "{again}");

    for from in [
        "s3://backups/shop/orders/orders-1".to_owned(),
        format!("{}/orders-1", f.dir_url()),
    ] {
        f.recreate(DATABASE).await;
        assert_eq!(table_count(&f.service(DATABASE).await).await, 0);
        let restored = f.restore("restore", DATABASE, &from).json();
        assert!(restored["restoreSeconds"].as_f64().is_some(), "{restored}");
        let after = snapshot(&f.service(DATABASE).await).await;
        assert!(after == before, "restored from {from}: the data differs");
    }

    // As a dedicated instance's restore Job does: the administrator
    // restores, and `--restore-role` makes the service's role own (and so
    // read) what was restored.
    f.recreate(DATABASE).await;
    f.as_admin("restore", DATABASE, &["--restore-role", ROLE]);
    let service = f.service(DATABASE).await;
    let owners: Vec<String> = service
        .query(
            "SELECT DISTINCT tableowner::text FROM pg_tables WHERE schemaname = 'public'",
            &[],
        )
        .await
        .expect("owners")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        owners,
        [ROLE],
        "the service's role owns the restored tables"
    );
    assert!(
        snapshot(&service).await == before,
        "the service reads the data its administrator restored"
    );
    drop(service);

    // Verify into an empty scratch database.
    f.recreate("orders-scratch").await;
    let verified = f
        .restore(
            "verify",
            "orders-scratch",
            "s3://backups/shop/orders/orders-1",
        )
        .json();
    assert_eq!(verified["backup"], manifest);
    assert!(verified["restoreSeconds"].as_f64().expect("restoreSeconds") > 0.0);
    assert_eq!(verified["checks"]["tables"], 3);
    assert_eq!(verified["checks"]["rows"], 500 + 20000 + 3);
    assert_eq!(verified["checks"]["rowsPerTable"]["public.orders"], 20000);
    let scratch = snapshot(&f.service("orders-scratch").await).await;
    assert!(scratch == before, "verify restored different data");
    // A scratch database that is not empty is refused.
    let busy = f
        .restore(
            "verify",
            "orders-scratch",
            "s3://backups/shop/orders/orders-1",
        )
        .error();
    assert!(busy.contains("needs an empty scratch database"), "{busy}");

    // The verify CronJob's scratch database (`*_verify`, as the instance's
    // administrator) is made afresh, so runs repeat, and dropped afterwards.
    for _ in 0..2 {
        let verified = f.as_admin("verify", "orders_verify", &[]);
        assert_eq!(verified["checks"]["rows"], 500 + 20000 + 3);
    }
    let left: i64 = f
        .connect(&f.pg.admin_user, &f.pg.admin_password, "postgres")
        .await
        .query_one(
            "SELECT count(*) FROM pg_database WHERE datname = 'orders_verify'",
            &[],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(left, 0, "the scratch database is dropped after the check");

    // On a shared server the service's own login verifies, in the scratch
    // database the operator keeps for it (`<login>-verify`, made by the
    // operator's library): emptied before the restore and after the check.
    let scratch = scratch_name(ROLE);
    let verify_as_service = || f.restore("verify", &scratch, "s3://backups/shop/orders/orders-1");
    let unmade = verify_as_service().error();
    assert!(
        unmade.contains("scratch database") && unmade.contains("permission denied"),
        "the service's login may not make it: {unmade}"
    );
    let admin = f.admin().await;
    assert!(
        ensure_scratch_database(&admin, ROLE, &scratch, None)
            .await
            .expect("scratch database"),
        "made"
    );
    assert!(
        !ensure_scratch_database(&admin, ROLE, &scratch, None)
            .await
            .expect("scratch database"),
        "a repeat changes nothing"
    );
    for _ in 0..2 {
        let verified = verify_as_service().json();
        assert_eq!(verified["checks"]["rows"], 500 + 20000 + 3);
        assert_eq!(verified["checks"]["rowsPerTable"]["public.orders"], 20000);
    }
    assert_eq!(
        table_count(&f.service(&scratch).await).await,
        0,
        "the scratch database is emptied after the check"
    );
    let own = snapshot(&f.service(DATABASE).await).await;
    assert!(own == before, "the service's own database is untouched");
    // Nobody else may enter it, and another role's database of that name is
    // never taken over.
    admin
        .batch_execute("CREATE ROLE intruder LOGIN PASSWORD 'intruder-pw'")
        .await
        .expect("another role");
    let mut config = tokio_postgres::Config::new();
    config
        .host("127.0.0.1")
        .port(f.pg.port)
        .user("intruder")
        .password("intruder-pw")
        .dbname(&scratch);
    let Err(refused) = servicedb::engine::tls::postgres(&mut config, &f.tls).await else {
        panic!("another role can connect to the scratch database");
    };
    assert!(
        refused.to_string().contains("permission denied"),
        "{refused}"
    );
    let taken = ensure_scratch_database(&admin, "intruder", &scratch, None)
        .await
        .expect_err("not taken over");
    assert!(taken.to_string().contains("belongs to role"), "{taken}");
    assert!(
        !drop_scratch_database(&admin, "intruder", &scratch, None)
            .await
            .expect("drop"),
        "nor dropped for another role"
    );
    assert!(
        drop_scratch_database(&admin, ROLE, &scratch, None)
            .await
            .expect("drop"),
        "dropped for its owner"
    );

    // Delete removes the objects; deleting what is gone succeeds.
    let deleted = f.delete("s3://backups/shop/orders/orders-1").json();
    assert_eq!(deleted["objects"], 2);
    assert_eq!(
        manifests_under(&f.s3.bucket_dir("backups")),
        Vec::<String>::new()
    );
    assert!(
        !files_under(&f.s3.bucket_dir("backups"))
            .iter()
            .any(|p| p.contains("orders-1/")),
        "{:?}",
        files_under(&f.s3.bucket_dir("backups"))
    );
    assert_eq!(
        f.delete("s3://backups/shop/orders/orders-1").json()["objects"],
        0
    );
    f.delete(&format!("{}/orders-1", f.dir_url())).json();
    assert_eq!(files_under(f.dir.path()), Vec::<String>::new());
    let gone = f
        .restore("restore", DATABASE, &format!("{}/orders-1", f.dir_url()))
        .error();
    assert!(gone.contains("no backup at"), "{gone}");
}

#[tokio::test(flavor = "multi_thread")]
async fn damaged_archives_are_refused_before_anything_is_loaded() {
    let f = Fixture::new().await;
    f.service(DATABASE)
        .await
        .batch_execute(SCHEMA)
        .await
        .expect("schema");
    f.backup(&f.dir_url(), "b1").json();
    f.backup("s3://backups", "b1").json();
    f.recreate(DATABASE).await;

    // One byte changed, same size: in S3.
    let in_bucket = f.s3.bucket_dir("backups").join("b1/archive.zst");
    let mut bytes = std::fs::read(&in_bucket).expect("archive");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&in_bucket, &bytes).expect("corrupt");
    let corrupted = f.restore("restore", DATABASE, "s3://backups/b1").error();
    assert!(
        corrupted.contains("checksum mismatch: manifest says sha256:")
            && corrupted.contains(", archive is sha256:"),
        "{corrupted}"
    );
    assert_eq!(
        table_count(&f.service(DATABASE).await).await,
        0,
        "something was loaded"
    );
    let verify = f.restore("verify", DATABASE, "s3://backups/b1").error();
    assert!(verify.contains("checksum mismatch"), "{verify}");

    // Cut short: in the directory.
    let in_dir = f.dir.path().join("b1/archive.zst");
    let bytes = std::fs::read(&in_dir).expect("archive");
    std::fs::write(&in_dir, &bytes[..bytes.len() / 2]).expect("truncate");
    let from = format!("{}/b1", f.dir_url());
    let truncated = f.restore("restore", DATABASE, &from).error();
    assert!(truncated.contains("archive truncated"), "{truncated}");
    assert_eq!(
        table_count(&f.service(DATABASE).await).await,
        0,
        "something was loaded"
    );
    let verify = f.restore("verify", DATABASE, &from).error();
    assert!(verify.contains("archive truncated"), "{verify}");
}

#[tokio::test(flavor = "multi_thread")]
async fn failed_backups_exit_non_zero_with_a_reason_and_leave_no_manifest() {
    let f = Fixture::new().await;
    f.service(DATABASE)
        .await
        .batch_execute("CREATE TABLE t (x int); INSERT INTO t VALUES (1);")
        .await
        .expect("table");
    let good = f.env();
    let with = |name: &str, value: &str| -> Vec<(String, String)> {
        good.iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    if k == name {
                        value.to_owned()
                    } else {
                        v.clone()
                    },
                )
            })
            .collect()
    };
    let backup_args = |destination: &str, endpoint: &str, database: &str| -> Vec<String> {
        let mut args = vec!["backup".to_owned()];
        args.extend(f.db_args(database));
        args.extend(
            [
                "--destination",
                destination,
                "--name",
                "b1",
                "--s3-endpoint",
                endpoint,
            ]
            .map(str::to_owned),
        );
        args
    };
    let wrong_s3_secret = random(40);
    let wrong_password = format!("{}-wrong", random(12));
    let unreachable = format!("http://127.0.0.1:{}", common::free_port());
    /// What fails, the agent's arguments and environment, and what its
    /// reason must say.
    type Case<'a> = (&'a str, Vec<String>, Vec<(String, String)>, &'a str);
    let cases: Vec<Case> = vec![
        (
            "unreachable S3 endpoint",
            backup_args("s3://backups", &unreachable, DATABASE),
            good.clone(),
            "checking the destination s3://backups/b1",
        ),
        (
            "wrong S3 credentials",
            backup_args("s3://backups", &f.s3.endpoint, DATABASE),
            with("AWS_SECRET_ACCESS_KEY", &wrong_s3_secret),
            "SignatureDoesNotMatch",
        ),
        (
            "missing bucket",
            backup_args("s3://no-such-bucket/x", &f.s3.endpoint, DATABASE),
            good.clone(),
            "NoSuchBucket",
        ),
        (
            "missing directory",
            backup_args(
                "file:///nonexistent/servicedb-backups",
                &f.s3.endpoint,
                DATABASE,
            ),
            good.clone(),
            "destination directory /nonexistent/servicedb-backups is not accessible",
        ),
        (
            "wrong database password",
            backup_args("s3://backups", &f.s3.endpoint, DATABASE),
            with("SERVICEDB_PASSWORD", &wrong_password),
            "password authentication failed",
        ),
        (
            "nonexistent database",
            backup_args("s3://backups", &f.s3.endpoint, "no-such-db"),
            good.clone(),
            "database \"no-such-db\" does not exist",
        ),
    ];
    for (what, args, env, expected) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let run = agent(
            &args,
            &env,
            &[
                &f.password,
                &f.s3.secret_key,
                &wrong_s3_secret,
                &wrong_password,
            ],
        );
        let reason = run.error();
        eprintln!("{what}: {reason}");
        assert!(reason.contains(expected), "{what}: {reason}");
    }

    // pg_dump itself fails after the login worked: a table the service
    // cannot read. Its stderr is the reason; the upload is aborted.
    f.connect(&f.pg.admin_user, &f.pg.admin_password, DATABASE)
        .await
        .batch_execute(
            "CREATE TABLE admin_only (secret text); REVOKE ALL ON admin_only FROM PUBLIC;",
        )
        .await
        .expect("admin table");
    for destination in ["s3://backups".to_owned(), f.dir_url()] {
        let reason = f.backup(&destination, "b1").error();
        assert!(
            reason.contains("pg_dump failed")
                && reason.contains("permission denied for table admin_only"),
            "{reason}"
        );
    }

    assert_eq!(
        files_under(&f.s3.bucket_dir("backups")),
        Vec::<String>::new()
    );
    assert_eq!(files_under(f.dir.path()), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_stops_a_backup_and_stores_nothing() {
    let f = Fixture::new().await;
    f.service(DATABASE)
        .await
        .batch_execute("CREATE TABLE t (x int); INSERT INTO t VALUES (1);")
        .await
        .expect("table");
    // A session holding an exclusive lock keeps pg_dump waiting, so the
    // backup is surely in the middle of its dump when the signal comes.
    let locker = f.service(DATABASE).await;
    locker
        .batch_execute("BEGIN; LOCK TABLE t IN ACCESS EXCLUSIVE MODE;")
        .await
        .expect("lock");
    let log_dir = tempfile::tempdir().expect("tempdir");
    let log = log_dir.path().join("termination-log");
    let mut args = vec!["backup".to_owned()];
    args.extend(f.db_args(DATABASE));
    args.extend([
        "--destination".to_owned(),
        f.dir_url(),
        "--name".to_owned(),
        "b1".to_owned(),
    ]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let child = agent_command(&args, &f.env(), &log)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start the agent");

    let admin = f.admin().await;
    let waiting_dump = "SELECT count(*) FROM pg_stat_activity \
        WHERE application_name = 'servicedb-agent' AND wait_event_type = 'Lock'";
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let n: i64 = admin
            .query_one(waiting_dump, &[])
            .await
            .expect("activity")
            .get(0);
        if n > 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "pg_dump never waited for the lock"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let pg_dumps = children_named(child.id(), "pg_dump");
    assert_eq!(pg_dumps.len(), 1, "the agent runs one pg_dump");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM");
    let output = child.wait_with_output().expect("wait");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains("stopped by SIGTERM"), "{stderr}");
    assert!(!stderr.contains(&f.password));
    let termination = std::fs::read_to_string(&log).expect("termination log");
    assert!(termination.contains("stopped by SIGTERM"), "{termination}");
    assert_eq!(files_under(f.dir.path()), Vec::<String>::new());
    // pg_dump went with it (its server session waits for the lock until the
    // server next talks to it, so the process is what to look at).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while is_running(pg_dumps[0]) {
        assert!(std::time::Instant::now() < deadline, "pg_dump still runs");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    drop(locker);
}

/// Child processes of `pid` whose command is `name`.
#[tokio::test(flavor = "multi_thread")]
async fn a_server_that_accepts_only_tls_is_backed_up_and_restored_over_verified_tls() {
    let f = Fixture::new_tls().await;
    f.service(DATABASE)
        .await
        .batch_execute(SCHEMA)
        .await
        .expect("schema and data");
    let before = snapshot(&f.service(DATABASE).await).await;

    // pg_dump and pg_restore follow the agent's --tls: the server has no
    // plain-text entry in pg_hba.conf.
    let manifest = f.backup("s3://backups/tls", "b1").json();
    assert_eq!(manifest["engine"], "postgres");
    f.recreate(DATABASE).await;
    f.restore("restore", DATABASE, "s3://backups/tls/b1").json();
    assert_eq!(
        snapshot(&f.service(DATABASE).await).await,
        before,
        "restored over TLS"
    );

    // Without --tls the server turns the agent away, and the agent says so.
    let mut plain = vec!["backup".to_owned()];
    plain.extend(f.db_args(DATABASE).into_iter().take(10));
    plain.extend(["--destination", &f.dir_url(), "--name", "plain"].map(str::to_owned));
    let refused = f.run(&plain, &f.env()).error();
    assert!(
        refused.contains("no encryption") || refused.contains("pg_hba"),
        "{refused}"
    );
    // A CA that did not sign the server's certificate is refused.
    let other = tempfile::tempdir().expect("dir");
    let wrong = agent_common::servers::TestCa::owned_by_me(other.path());
    let mut wrong_ca = vec!["backup".to_owned()];
    wrong_ca.extend(f.db_args(DATABASE).into_iter().take(10));
    wrong_ca.extend(
        [
            "--tls",
            "verify-full",
            "--tls-ca-file",
            &wrong.ca.display().to_string(),
            "--destination",
            &f.dir_url(),
            "--name",
            "wrong-ca",
        ]
        .map(str::to_owned),
    );
    let refused = f.run(&wrong_ca, &f.env()).error();
    assert!(refused.to_lowercase().contains("certificate"), "{refused}");
    assert!(
        manifests_under(f.dir.path()).is_empty(),
        "no backup is left by a refused run"
    );
}

fn children_named(pid: u32, name: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("tasks")
        .flatten()
    {
        let children = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
        for child in children
            .split_whitespace()
            .filter_map(|c| c.parse::<u32>().ok())
        {
            let comm = std::fs::read_to_string(format!("/proc/{child}/comm")).unwrap_or_default();
            if comm.trim() == name {
                out.push(child);
            }
        }
    }
    out
}

/// Alive, and not a zombie waiting to be reaped.
fn is_running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z'))
    })
}
