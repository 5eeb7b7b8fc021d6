//! MongoDB: a logical dump through the driver.
//!
//! Why not `mongodump --archive`: the MongoDB Database Tools are a separate
//! download that neither Debian nor the `mongo` image's slim variants carry,
//! and the agent must run in whatever image holds the server. The driver is
//! already in this binary, so the agent writes its own archive in
//! [`super::frame`] records:
//!
//! 1. a catalog: the names of every collection of the database (views and
//!    `system.*` excluded), so a restore can refuse a target that already
//!    holds them before it loads anything;
//! 2. per collection: its `listCollections` options (capped, validator,
//!    collation…), its secondary indexes as `listIndexes` returns them, then
//!    every document as raw BSON (the server's bytes, never re-encoded, so
//!    every BSON type survives).
//!
//! Restore creates each collection with its options and indexes, then loads
//! the documents with ordered `insertMany` batches.
//!
//! What this does not give: a point in time across collections (as
//! `mongodump` without `--oplog`, each collection is read by its own
//! cursor), views, users and roles (the operator manages those), and
//! time-series or clustered collections' internal layout beyond their
//! options. Tested against FerretDB, which lacks capped collections,
//! validators and collations, so their options are passed through but not
//! proven there.

use std::time::Duration;

use anyhow::{Context, bail};
use futures::TryStreamExt;
use mongodb::bson::{Document, RawDocumentBuf, doc};
use mongodb::error::{CommandError, ErrorKind};
use mongodb::{Client, Database};
use serde_json::json;
use tokio::io::{AsyncRead, AsyncWrite};

use super::engine::{Checks, DatabaseArgs};
use super::frame::{FrameReader, FrameWriter};
use super::secret::Secret;
use crate::engine::mongodb_users::{Login, UserError, direct_client_tls};

pub const FORMAT: &str = "servicedb-mongodb-bson-v1";
const MAGIC: &[u8; 8] = b"SDBMGO1\n";
/// Fields: every collection name.
const CATALOG: u8 = 1;
/// Fields: name, options (BSON).
const COLLECTION: u8 = 2;
/// Fields: an index specification (BSON), of the last collection.
const INDEX: u8 = 3;
/// Fields: a document (BSON), of the last collection.
const DOCUMENT: u8 = 4;
const INSERT_BATCH: usize = 1000;
const INSERT_BATCH_BYTES: usize = 8 * 1024 * 1024;
const TIMEOUT: Duration = Duration::from_secs(15);
/// `NamespaceExists`.
const NAMESPACE_EXISTS: i32 = 48;

pub struct MongoDB {
    client: Client,
    database: String,
    server_version: String,
    password: Secret,
}

impl MongoDB {
    pub async fn connect(args: &DatabaseArgs, password: Secret) -> anyhow::Result<MongoDB> {
        let host = args.host.clone();
        let port = args.port.unwrap_or(27017);
        let database = args
            .database
            .clone()
            .context("--database is required for MongoDB")?;
        let source = args
            .auth_database
            .clone()
            .unwrap_or_else(|| database.clone());
        let login = args
            .username
            .as_deref()
            .filter(|u| !u.is_empty())
            .map(|user| Login {
                source: &source,
                user,
                password: password.expose(),
            });
        let who = args.username.as_deref().unwrap_or("(no login)");
        let tls = crate::engine::tls::mongodb(&args.tls_settings()?)
            .map_err(|e| anyhow::anyhow!("TLS towards MongoDB at {host}:{port}: {e}"))?;
        let client = direct_client_tls(&host, port, login, TIMEOUT, tls).map_err(|e| {
            anyhow::anyhow!("connecting to MongoDB at {host}:{port} as {who:?}: {e}")
        })?;
        let mut this = MongoDB {
            client,
            database,
            server_version: String::new(),
            password,
        };
        let info = this
            .db()
            .run_command(doc! { "buildInfo": 1 })
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "connecting to MongoDB at {host}:{port}, database {:?}, as {who:?}: {}",
                    this.database,
                    this.describe("buildInfo", &e)
                )
            })?;
        this.server_version = info.get_str("version").unwrap_or("unknown").to_owned();
        Ok(this)
    }

    fn db(&self) -> Database {
        self.client.database(&self.database)
    }

    fn describe(&self, action: &'static str, error: &mongodb::error::Error) -> String {
        UserError::from_driver(action, error, self.password.expose()).to_string()
    }

    pub fn server_version(&self) -> &str {
        &self.server_version
    }

    /// Collections (not views, not `system.*`) with their options, by name.
    async fn collections(&self) -> anyhow::Result<Vec<(String, Document)>> {
        let mut cursor = self
            .db()
            .run_cursor_command(doc! {
                "listCollections": 1,
                "filter": { "type": "collection" },
            })
            .await
            .map_err(|e| anyhow::anyhow!("{}", self.describe("listCollections", &e)))?;
        let mut out = Vec::new();
        while let Some(spec) = cursor
            .try_next()
            .await
            .map_err(|e| anyhow::anyhow!("{}", self.describe("listCollections", &e)))?
        {
            let name = spec
                .get_str("name")
                .context("listCollections: an entry without a name")?
                .to_owned();
            if name.starts_with("system.") {
                continue;
            }
            let options = spec.get_document("options").cloned().unwrap_or_default();
            out.push((name, options));
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// Secondary index specifications (`_id_` is implicit).
    async fn indexes(&self, collection: &str) -> anyhow::Result<Vec<Document>> {
        let mut cursor = self
            .db()
            .run_cursor_command(doc! { "listIndexes": collection })
            .await
            .map_err(|e| anyhow::anyhow!("{}", self.describe("listIndexes", &e)))?;
        let mut out = Vec::new();
        while let Some(mut spec) = cursor
            .try_next()
            .await
            .map_err(|e| anyhow::anyhow!("{}", self.describe("listIndexes", &e)))?
        {
            if matches!(spec.get_str("name"), Ok("_id_")) {
                continue;
            }
            // The server fills these in; sending them back is refused by some.
            spec.remove("ns");
            spec.remove("v");
            out.push(spec);
        }
        Ok(out)
    }

    /// Writes every collection; returns the number of documents.
    pub async fn dump(&self, sink: &mut (dyn AsyncWrite + Unpin + Send)) -> anyhow::Result<u64> {
        let collections = self.collections().await?;
        let mut out = FrameWriter::start(sink, MAGIC).await?;
        let names: Vec<&[u8]> = collections.iter().map(|(n, _)| n.as_bytes()).collect();
        // A record holds at most 255 fields: a long catalog takes several.
        for chunk in names.chunks(usize::from(u8::MAX)) {
            out.record(CATALOG, chunk).await?;
        }
        let mut documents = 0u64;
        for (name, options) in &collections {
            out.record(COLLECTION, &[name.as_bytes(), &to_bson(options)?])
                .await?;
            for index in self.indexes(name).await? {
                out.record(INDEX, &[&to_bson(&index)?]).await?;
            }
            let mut cursor = self
                .db()
                .collection::<RawDocumentBuf>(name)
                .find(doc! {})
                .await
                .map_err(|e| anyhow::anyhow!("reading {name}: {}", self.describe("find", &e)))?;
            while let Some(document) = cursor
                .try_next()
                .await
                .map_err(|e| anyhow::anyhow!("reading {name}: {}", self.describe("find", &e)))?
            {
                out.record(DOCUMENT, &[document.as_bytes()]).await?;
                documents += 1;
            }
        }
        out.end().await?;
        Ok(documents)
    }

    /// Loads a dump; refuses, before loading anything, a database that
    /// already holds documents in one of the dump's collections.
    pub async fn restore(&self, source: impl AsyncRead + Unpin + Send) -> anyhow::Result<u64> {
        let mut records = FrameReader::start(source, MAGIC).await?;
        let existing = self.collections().await?;
        let mut current: Option<String> = None;
        let mut batch: Vec<RawDocumentBuf> = Vec::new();
        let mut batch_bytes = 0usize;
        let mut restored = 0u64;
        while let Some(record) = records.next().await? {
            match (record.tag, record.fields.as_slice()) {
                (CATALOG, names) => {
                    for name in names {
                        let name = String::from_utf8_lossy(name);
                        if existing.iter().any(|(e, _)| *e == name) {
                            let count = self
                                .db()
                                .collection::<Document>(&name)
                                .count_documents(doc! {})
                                .await
                                .map_err(|e| anyhow::anyhow!("{}", self.describe("count", &e)))?;
                            if count > 0 {
                                bail!(
                                    "collection {name:?} of database {:?} already holds {count} \
                                     documents; restore into an empty database (nothing was restored)",
                                    self.database
                                );
                            }
                        }
                    }
                }
                (COLLECTION, [name, options]) => {
                    if let Some(previous) = current.take() {
                        restored += self.insert(&previous, &mut batch).await?;
                        batch_bytes = 0;
                    }
                    let name = String::from_utf8(name.clone())
                        .context("a collection name in the dump is not UTF-8")?;
                    self.create_collection(&name, from_bson(options)?).await?;
                    current = Some(name);
                }
                (INDEX, [spec]) => {
                    let name = current
                        .as_deref()
                        .context("an index before any collection")?;
                    self.db()
                        .run_command(doc! { "createIndexes": name, "indexes": [from_bson(spec)?] })
                        .await
                        .map_err(|e| {
                            anyhow::anyhow!(
                                "creating an index on {name}: {}",
                                self.describe("createIndexes", &e)
                            )
                        })?;
                }
                (DOCUMENT, [bytes]) => {
                    let name = current
                        .as_deref()
                        .context("a document before any collection")?;
                    batch_bytes += bytes.len();
                    batch.push(
                        RawDocumentBuf::from_bytes(bytes.clone())
                            .context("a document in the dump is not BSON")?,
                    );
                    if batch.len() >= INSERT_BATCH || batch_bytes >= INSERT_BATCH_BYTES {
                        restored += self.insert(name, &mut batch).await?;
                        batch_bytes = 0;
                    }
                }
                (tag, fields) => bail!(
                    "the dump holds an unknown record (tag {tag}, {} fields)",
                    fields.len()
                ),
            }
        }
        if let Some(name) = current {
            restored += self.insert(&name, &mut batch).await?;
        }
        Ok(restored)
    }

    async fn create_collection(&self, name: &str, options: Document) -> anyhow::Result<()> {
        let mut command = doc! { "create": name };
        for (key, value) in options {
            command.insert(key, value);
        }
        match self.db().run_command(command).await {
            Ok(_) => Ok(()),
            Err(error)
                if matches!(
                    error.kind.as_ref(),
                    ErrorKind::Command(CommandError {
                        code: NAMESPACE_EXISTS,
                        ..
                    })
                ) =>
            {
                Ok(())
            }
            Err(error) => bail!(
                "creating collection {name}: {}",
                self.describe("create", &error)
            ),
        }
    }

    async fn insert(&self, name: &str, batch: &mut Vec<RawDocumentBuf>) -> anyhow::Result<u64> {
        if batch.is_empty() {
            return Ok(0);
        }
        let count = batch.len() as u64;
        self.db()
            .collection::<RawDocumentBuf>(name)
            .insert_many(batch.iter())
            .await
            .map_err(|e| {
                anyhow::anyhow!("inserting into {name}: {}", self.describe("insert", &e))
            })?;
        batch.clear();
        Ok(count)
    }

    /// Collections and their document counts.
    /// Drops the whole database (a verification's scratch one); returns how
    /// many collections it held.
    pub async fn drop_database(&self) -> anyhow::Result<u64> {
        let collections = self.collections().await?.len() as u64;
        self.client
            .database(&self.database)
            .drop()
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "dropping scratch database {:?}: {}",
                    self.database,
                    self.password.scrub(&e.to_string())
                )
            })?;
        Ok(collections)
    }

    pub async fn check(&self) -> anyhow::Result<Checks> {
        let collections = self.collections().await?;
        let mut per_collection = serde_json::Map::new();
        let mut total = 0u64;
        for (name, _) in &collections {
            let count = self
                .db()
                .collection::<Document>(name)
                .count_documents(doc! {})
                .await
                .map_err(|e| anyhow::anyhow!("counting {name}: {}", self.describe("count", &e)))?;
            total += count;
            per_collection.insert(name.clone(), json!(count));
        }
        Ok(Checks {
            items: total,
            summary: json!({ "collections": collections.len(), "documents": total }),
            detail: Some((
                "documentsPerCollection",
                serde_json::Value::Object(per_collection),
            )),
        })
    }
}

fn to_bson(document: &Document) -> anyhow::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    document
        .to_writer(&mut bytes)
        .context("encoding collection metadata as BSON")?;
    Ok(bytes)
}

fn from_bson(bytes: &[u8]) -> anyhow::Result<Document> {
    Document::from_reader(bytes).context("collection metadata in the dump is not BSON")
}
