//! `servicedb agent --engine mongodb` over the MongoDB wire protocol,
//! against FerretDB v1.24 (hack/ferretdb/build.sh; no mongod can be
//! installed on the test machines) and a real S3 server (versitygw).
//!
//! What FerretDB proves: collections, secondary (also unique) indexes and
//! documents of every BSON type FerretDB stores, backed up to S3 and a
//! directory, dropped and restored identical; damaged archives and
//! non-empty targets refused before anything is loaded; verify's counts.
//! What it cannot: collection options FerretDB lacks (capped, validators,
//! collations) are passed through `create` as listed but not exercised,
//! and FerretDB has no Decimal128.

mod agent_common;
mod common;

use agent_common::{FerretDb, Run, S3, agent, agent_endpoint, files_under};
use futures::TryStreamExt;
use mongodb::bson::{Binary, Bson, DateTime, Document, doc, oid::ObjectId, spec::BinarySubtype};
use mongodb::options::IndexOptions;
use mongodb::{Client, IndexModel};
use servicedb::engine::mongodb_users::{Login, direct_client};
use std::time::Duration;

const DB: &str = "shop";

struct Fixture {
    ferret: FerretDb,
    s3: S3,
    dir: tempfile::TempDir,
    /// The agent's port and TLS flags: the TLS listener with `--tls
    /// verify-full` when FerretDB has one; the test's own client keeps the
    /// plain port.
    agent_port: u16,
    tls_args: Vec<String>,
}

impl Fixture {
    fn new() -> Fixture {
        Fixture::with(FerretDb::start())
    }

    fn new_tls() -> Fixture {
        Fixture::with(FerretDb::start_tls())
    }

    fn with(ferret: FerretDb) -> Fixture {
        let s3 = S3::start();
        s3.create_bucket("backups");
        let (agent_port, tls_args) = agent_endpoint(ferret.port, &ferret.tls, ferret.tls_port);
        Fixture {
            ferret,
            s3,
            dir: tempfile::tempdir().expect("tempdir"),
            agent_port,
            tls_args,
        }
    }

    fn client(&self) -> Client {
        direct_client(
            "127.0.0.1",
            self.ferret.port,
            Some(Login {
                source: "admin",
                user: "root",
                password: &self.ferret.root_password,
            }),
            Duration::from_secs(10),
        )
        .expect("client")
    }

    fn dir_url(&self) -> String {
        format!("file://{}", self.dir.path().display())
    }

    fn run(&self, command: &str, db: &str, extra: &[&str]) -> Run {
        let port = self.agent_port.to_string();
        let mut args = vec![
            command,
            "--engine",
            "mongodb",
            "--host",
            "127.0.0.1",
            "--port",
            &port,
            "--database",
            db,
            "--username",
            "root",
            "--auth-database",
            "admin",
            "--s3-endpoint",
            &self.s3.endpoint,
        ];
        args.extend(self.tls_args.iter().map(String::as_str));
        args.extend_from_slice(extra);
        let mut env = self.s3.env();
        env.push((
            "SERVICEDB_PASSWORD".to_owned(),
            self.ferret.root_password.clone(),
        ));
        agent(
            &args,
            &env,
            &[&self.ferret.root_password, &self.s3.secret_key],
        )
    }
}

async fn write_data(client: &Client) {
    let db = client.database(DB);
    let items = db.collection::<Document>("items");
    items
        .create_index(
            IndexModel::builder()
                .keys(doc! { "sku": 1 })
                .options(
                    IndexOptions::builder()
                        .unique(true)
                        .name("sku_unique".to_owned())
                        .build(),
                )
                .build(),
        )
        .await
        .expect("index");
    let docs: Vec<Document> = (0..2500)
        .map(|i| {
            doc! {
                "_id": i,
                "sku": format!("S{i}"),
                "name": format!("item {i} ünïcødé ✓"),
                "price": f64::from(i) * 1.25,
                "stock": i64::from(i) * 1_000_000_000,
                "tags": ["a", "b", Bson::Int32(i)],
                "nested": { "level": { "deep": i % 7 == 0, "none": Bson::Null } },
                "added": DateTime::from_millis(1_764_547_200_000 + i64::from(i)),
                "raw": Binary { subtype: BinarySubtype::Generic, bytes: vec![0, 1, 2, (i % 256) as u8] },
            }
        })
        .collect();
    items.insert_many(docs).await.expect("insert items");
    let orders = db.collection::<Document>("orders");
    let orders_docs: Vec<Document> = (0..300)
        .map(|i| doc! { "_id": ObjectId::new(), "item": i % 2500, "qty": i % 9 })
        .collect();
    orders
        .insert_many(orders_docs)
        .await
        .expect("insert orders");
}

/// Every collection's documents by `_id`, and its index names.
async fn snapshot(client: &Client, db: &str) -> Vec<(String, Vec<Document>, Vec<String>)> {
    let db = client.database(db);
    let mut names = db.list_collection_names().await.expect("collections");
    names.sort();
    let mut out = Vec::new();
    for name in names {
        let collection = db.collection::<Document>(&name);
        let documents: Vec<Document> = collection
            .find(doc! {})
            .sort(doc! { "_id": 1 })
            .await
            .expect("find")
            .try_collect()
            .await
            .expect("documents");
        let mut indexes = collection.list_index_names().await.expect("indexes");
        indexes.sort();
        out.push((name, documents, indexes));
    }
    out
}

async fn drop_all(client: &Client, db: &str) {
    let db = client.database(db);
    for name in db.list_collection_names().await.expect("collections") {
        db.collection::<Document>(&name).drop().await.expect("drop");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn collections_indexes_and_documents_are_restored_identical() {
    let f = Fixture::new();
    let client = f.client();
    write_data(&client).await;
    let before = snapshot(&client, DB).await;
    assert_eq!(before.len(), 2);
    assert!(
        before[0].2.contains(&"sku_unique".to_owned()),
        "{:?}",
        before[0].2
    );

    let manifest = f
        .run(
            "backup",
            DB,
            &["--destination", "s3://backups/mongo", "--name", "shop-1"],
        )
        .json();
    assert_eq!(manifest["engine"], "mongodb");
    assert_eq!(manifest["format"], "servicedb-mongodb-bson-v1");
    assert_eq!(manifest["database"], DB);
    assert_eq!(manifest["items"], 2800);
    assert!(
        manifest["serverVersion"]
            .as_str()
            .is_some_and(|v| !v.is_empty())
    );
    f.run(
        "backup",
        DB,
        &["--destination", &f.dir_url(), "--name", "shop-1"],
    )
    .json();

    for from in [
        "s3://backups/mongo/shop-1".to_owned(),
        format!("{}/shop-1", f.dir_url()),
    ] {
        drop_all(&client, DB).await;
        f.run("restore", DB, &["--from", &from]).json();
        assert!(
            snapshot(&client, DB).await == before,
            "restored from {from}: data differs"
        );
        // The unique index came back and works.
        let duplicate = client
            .database(DB)
            .collection::<Document>("items")
            .insert_one(doc! { "_id": 99_999, "sku": "S1" })
            .await;
        assert!(duplicate.is_err(), "the unique index was not restored");
    }

    // Restoring over documents that exist is refused, before loading.
    let refused = f
        .run("restore", DB, &["--from", "s3://backups/mongo/shop-1"])
        .error();
    assert!(refused.contains("already holds"), "{refused}");
    assert!(snapshot(&client, DB).await == before);

    let verified = f
        .run(
            "verify",
            "shop-scratch",
            &["--from", "s3://backups/mongo/shop-1"],
        )
        .json();
    assert!(verified["restoreSeconds"].as_f64().expect("restoreSeconds") > 0.0);
    assert_eq!(verified["checks"]["collections"], 2);
    assert_eq!(verified["checks"]["documents"], 2800);
    assert_eq!(verified["checks"]["documentsPerCollection"]["items"], 2500);
    let scratch = snapshot(&client, "shop-scratch").await;
    assert!(scratch == before, "verify restored different data");
    // The verify CronJob's scratch database (`*_verify`, with --scratch) is
    // dropped before the restore and after the check, so runs repeat.
    for _ in 0..2 {
        let verified = f
            .run(
                "verify",
                "shop_verify",
                &["--from", "s3://backups/mongo/shop-1", "--scratch"],
            )
            .json();
        assert_eq!(verified["checks"]["documents"], 2800);
    }
    let names = client.list_database_names().await.expect("databases");
    assert!(
        !names.iter().any(|n| n == "shop_verify"),
        "the scratch database is dropped after the check: {names:?}"
    );
    let refused = f
        .run(
            "verify",
            "shop-scratch",
            &["--from", "s3://backups/mongo/shop-1", "--scratch"],
        )
        .error();
    assert!(refused.contains("not a scratch database name"), "{refused}");
    assert!(
        snapshot(&client, "shop-scratch").await == before,
        "a database not named as scratch is left alone"
    );

    let from = format!("{}/shop-1", f.dir_url());
    agent(&["delete", "--from", &from], &[], &[]).json();
    assert_eq!(files_under(f.dir.path()), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_damaged_archive_is_refused_and_nothing_is_loaded() {
    let f = Fixture::new();
    let client = f.client();
    write_data(&client).await;
    f.run(
        "backup",
        DB,
        &["--destination", &f.dir_url(), "--name", "b1"],
    )
    .json();
    drop_all(&client, DB).await;

    let archive = f.dir.path().join("b1/archive.zst");
    let mut bytes = std::fs::read(&archive).expect("archive");
    bytes[10] ^= 0x10;
    std::fs::write(&archive, &bytes).expect("corrupt");
    let from = format!("{}/b1", f.dir_url());
    let reason = f.run("restore", DB, &["--from", &from]).error();
    assert!(reason.contains("checksum mismatch"), "{reason}");
    let reason = f.run("verify", "scratch", &["--from", &from]).error();
    assert!(reason.contains("checksum mismatch"), "{reason}");
    assert!(
        snapshot(&client, DB).await.is_empty(),
        "something was loaded"
    );
    assert!(
        snapshot(&client, "scratch").await.is_empty(),
        "something was loaded"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_database_is_backed_up_and_restored_over_verified_tls() {
    let f = Fixture::new_tls();
    let client = f.client();
    write_data(&client).await;
    let before = snapshot(&client, DB).await;

    let manifest = f
        .run(
            "backup",
            DB,
            &["--destination", "s3://backups/tls", "--name", "shop-1"],
        )
        .json();
    assert_eq!(manifest["items"], 2800);
    drop_all(&client, DB).await;
    f.run("restore", DB, &["--from", "s3://backups/tls/shop-1"])
        .json();
    assert!(
        snapshot(&client, DB).await == before,
        "restored over TLS: data differs"
    );

    // The certificate is checked: a CA that did not sign it is refused.
    let other = tempfile::tempdir().expect("dir");
    let wrong = agent_common::servers::TestCa::owned_by_me(other.path());
    let wrong_file = wrong.ca.display().to_string();
    let port = f.agent_port.to_string();
    let mut env = f.s3.env();
    env.push((
        "SERVICEDB_PASSWORD".to_owned(),
        f.ferret.root_password.clone(),
    ));
    let refused = agent(
        &[
            "backup",
            "--engine",
            "mongodb",
            "--host",
            "127.0.0.1",
            "--port",
            &port,
            "--database",
            DB,
            "--username",
            "root",
            "--auth-database",
            "admin",
            "--tls",
            "verify-full",
            "--tls-ca-file",
            &wrong_file,
            "--destination",
            &f.dir_url(),
            "--name",
            "wrong-ca",
        ],
        &env,
        &[&f.ferret.root_password, &f.s3.secret_key],
    )
    .error();
    assert!(
        refused.contains(&format!("MongoDB at 127.0.0.1:{port}"))
            && refused.to_lowercase().contains("certificate"),
        "{refused}"
    );
    assert!(
        files_under(f.dir.path()).is_empty(),
        "a refused run stores nothing"
    );
}
