//! The agent's commands: `list`, `backup`, `restore`, `verify` and
//! `delete`, each from the destination's manifests and the engine's dump
//! and restore tools.

use super::*;

/// `list`: no database, no password, no termination log; the backups on
/// stdout, an error on stderr.
pub(super) fn list_main(args: &ListArgs) -> i32 {
    let listed = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
        .and_then(|runtime| runtime.block_on(list(args)));
    match listed {
        Ok(backups) => {
            for (name, manifest) in backups {
                let mut line = serde_json::to_value(&manifest).unwrap_or_default();
                line["name"] = json!(name);
                println!("{line}");
            }
            0
        }
        Err(error) => {
            eprintln!("error: {error:#}");
            1
        }
    }
}

/// The completed backups (those with a manifest) in the directory `from`,
/// oldest first.
pub(super) async fn completed_backups(
    store: &dyn ObjectStore,
    dir: &location::BackupDir,
) -> anyhow::Result<Vec<(String, Manifest)>> {
    let mut found = Vec::new();
    for name in dir.names(store).await? {
        let url = dir.backup(&name)?;
        match store.get(&url.manifest()).await {
            Ok(result) => {
                let bytes = result.bytes().await.context("reading a manifest")?;
                match serde_json::from_slice::<Manifest>(&bytes) {
                    Ok(manifest) => found.push((name, manifest)),
                    Err(e) => {
                        tracing::warn!(backup = %name, error = %e, "not a valid manifest; skipped")
                    }
                }
            }
            // An unfinished or failed run.
            Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(e).with_context(|| format!("reading the manifest of {name}")),
        }
    }
    found.sort_by_key(|(_, manifest)| completed_at(manifest));
    Ok(found)
}

pub(super) fn completed_at(manifest: &Manifest) -> Option<k8s_openapi::jiff::Timestamp> {
    manifest.completed_at.parse().ok()
}

pub(super) async fn list(args: &ListArgs) -> anyhow::Result<Vec<(String, Manifest)>> {
    let dir = location::BackupDir::parse(&args.from)?;
    let store = dir.open(&args.store)?;
    completed_backups(store.as_ref(), &dir).await
}

/// The backup `restore --latest` loads: the latest completed in the
/// directory `from`, before `before` if given.
pub(super) async fn latest(
    store: &dyn ObjectStore,
    from: &str,
    before: Option<&str>,
) -> anyhow::Result<BackupUrl> {
    let dir = location::BackupDir::parse(from)?;
    let before = before
        .map(|t| {
            t.parse::<k8s_openapi::jiff::Timestamp>()
                .with_context(|| format!("--before {t:?} is not an RFC 3339 time"))
        })
        .transpose()?;
    let chosen = completed_backups(store, &dir)
        .await?
        .into_iter()
        .rfind(|(_, manifest)| {
            before.is_none_or(|before| completed_at(manifest).is_some_and(|at| at < before))
        });
    let Some((name, _)) = chosen else {
        match before {
            Some(before) => bail!("no backup under {from} completed before {before}"),
            None => bail!("no completed backup under {from}"),
        }
    };
    info!(backup = %name, "chose the latest backup");
    dir.backup(&name)
}

pub(super) async fn backup(args: &BackupArgs, password: Secret) -> anyhow::Result<Manifest> {
    let url = BackupUrl::from_destination(&args.destination, &args.name)?;
    let location = url.url();
    let mut engine = Connected::connect(&args.database, password).await?;
    let store = url.open(&args.store)?;
    check_destination(store.as_ref(), &url).await?;

    let started_at = rfc3339_now();
    info!(
        engine = engine.name(),
        server_version = engine.server_version(),
        %location,
        "backup started"
    );
    let mut writer = ArchiveWriter::new(Arc::clone(&store), url.archive());
    let dumped = tokio::select! {
        dumped = engine.dump(&mut writer) => dumped,
        signal = interrupted() => Err(anyhow::anyhow!("stopped by {signal}")),
    };
    let items = match dumped {
        Ok(items) => items,
        Err(error) => {
            if let Err(abort) = writer.abort().await {
                warn!("{abort:#}");
            }
            return Err(error.context(format!("backup to {location} failed, nothing was stored")));
        }
    };
    let stored = writer
        .finish()
        .await
        .with_context(|| format!("backup to {location} failed"))?;
    let manifest = Manifest {
        engine: engine.name().to_owned(),
        format: engine.format().to_owned(),
        server_version: engine.server_version().to_owned(),
        database: engine.database(&args.database),
        key_prefix: engine.key_prefix().map(str::to_owned),
        started_at,
        completed_at: rfc3339_now(),
        size_bytes: stored.size_bytes,
        raw_bytes: stored.raw_bytes,
        checksum: format!("sha256:{}", stored.sha256_hex),
        archive: url.archive().to_string(),
        location: location.clone(),
        items,
    };
    let json = serde_json::to_vec_pretty(&manifest).context("encoding the manifest")?;
    if let Err(error) = store.put(&url.manifest(), PutPayload::from(json)).await {
        // Without its manifest the archive is no backup: do not leave it.
        if let Err(cleanup) = store.delete(&url.archive()).await {
            warn!("removing the archive without a manifest: {cleanup}");
        }
        return Err(error).with_context(|| format!("writing the manifest of {location}"));
    }
    info!(
        size_bytes = manifest.size_bytes,
        raw_bytes = manifest.raw_bytes,
        items = manifest.items,
        "backup complete"
    );
    Ok(manifest)
}

/// Lists the backup's directory: the cheapest request that fails for a
/// missing bucket, wrong credentials or an unreachable endpoint. A backup
/// of the same name that already completed is never overwritten.
pub(super) async fn check_destination(
    store: &dyn ObjectStore,
    url: &BackupUrl,
) -> anyhow::Result<()> {
    let listing = store
        .list_with_delimiter(Some(&url.prefix()))
        .await
        .with_context(|| format!("checking the destination {}", url.url()))?;
    if listing.objects.iter().any(|o| o.location == url.manifest()) {
        bail!(
            "a backup named {:?} already exists at {}; backups are never overwritten",
            url.name(),
            url.url()
        );
    }
    Ok(())
}

pub(super) async fn read_manifest(
    store: &dyn ObjectStore,
    url: &BackupUrl,
) -> anyhow::Result<Manifest> {
    let bytes = match store.get(&url.manifest()).await {
        Ok(result) => result.bytes().await,
        Err(error) => Err(error),
    };
    let bytes = match bytes {
        Ok(bytes) => bytes,
        Err(object_store::Error::NotFound { .. }) => bail!(
            "no backup at {}: {} not found (the backup does not exist or did not complete)",
            url.url(),
            url.manifest()
        ),
        Err(error) => {
            return Err(error).with_context(|| format!("reading the manifest of {}", url.url()));
        }
    };
    let manifest: Manifest = serde_json::from_slice(&bytes)
        .with_context(|| format!("the manifest of {} is not valid", url.url()))?;
    Ok(manifest)
}

/// Download, check, load. Returns the manifest and the seconds it took.
pub(super) async fn restore_into(
    engine: &mut Connected,
    store: &dyn ObjectStore,
    url: &BackupUrl,
    manifest: &Manifest,
    work_dir: Option<&std::path::Path>,
) -> anyhow::Result<f64> {
    engine.accepts(manifest)?;
    let sha256 = manifest.sha256_hex().with_context(|| {
        format!(
            "the manifest's checksum {:?} is not sha256:…",
            manifest.checksum
        )
    })?;
    let start = Instant::now();
    let work_dir = work_dir.map_or_else(std::env::temp_dir, PathBuf::from);
    // The archive next to the manifest, wherever the backup's directory
    // has been copied to since (`archive` in the manifest is informational).
    let archive = url.archive();
    info!(location = %url.url(), "downloading the archive");
    let downloaded = archive::download(store, &archive, &work_dir, manifest.size_bytes, sha256)
        .await
        .context("nothing was restored")?;
    info!("archive checked, loading");
    engine.restore(downloaded.reader().await?).await?;
    Ok(start.elapsed().as_secs_f64())
}

pub(super) async fn restore(
    args: &RestoreArgs,
    password: Secret,
) -> anyhow::Result<(Manifest, f64)> {
    let (url, store) = if args.latest {
        let store = location::BackupDir::parse(&args.from)?.open(&args.store)?;
        let url = latest(store.as_ref(), &args.from, args.before.as_deref()).await?;
        (url, store)
    } else {
        let url = BackupUrl::from_backup(&args.from)?;
        let store = url.open(&args.store)?;
        (url, store)
    };
    let manifest = read_manifest(store.as_ref(), &url).await?;
    let mut engine = Connected::connect(&args.database, password).await?;
    let seconds = restore_into(
        &mut engine,
        store.as_ref(),
        &url,
        &manifest,
        args.work_dir.as_deref(),
    )
    .await
    .with_context(|| format!("restore of {}", url.url()))?;
    info!(seconds, "restore complete");
    Ok((manifest, seconds))
}

pub(super) async fn verify(args: &RestoreArgs, password: Secret) -> anyhow::Result<Report> {
    // A scratch database named `*_verify` or `*-verify` (what the verify
    // CronJob passes) is emptied or made afresh, and emptied or dropped
    // afterwards; any other must exist and be empty, and is left as it is:
    // the agent never drops or empties a database it was not told is
    // scratch.
    use crate::instance::EngineKind;
    if args.latest {
        bail!("--latest is for restore: verify names one backup in --from");
    }
    let database = args.database.database.as_deref().unwrap_or_default();
    let scratch_name = database.ends_with("_verify") || database.ends_with("-verify");
    let engine = args.database.engine;
    if args.scratch {
        match engine {
            EngineKind::Redis if database == "0" || database.is_empty() => bail!(
                "--scratch: Redis logical database 0 holds the services' data; verify into another one"
            ),
            EngineKind::Postgres | EngineKind::MongoDB if !scratch_name => bail!(
                "--scratch: {database:?} is not a scratch database name (it must end in _verify or -verify)"
            ),
            _ => {}
        }
    }
    let postgres = engine == EngineKind::Postgres && scratch_name;
    let other = args.scratch && engine != EngineKind::Postgres;
    if postgres {
        postgres::scratch(&args.database, &password, true).await?;
    }
    if other {
        let emptied = Connected::connect(&args.database, password.clone())
            .await?
            .empty_scratch()
            .await?;
        if emptied > 0 {
            info!(
                emptied,
                "an earlier run's leftovers were removed from the scratch target"
            );
        }
    }
    let result = verify_into(args, password.clone()).await;
    let cleaned = if postgres {
        postgres::scratch(&args.database, &password, false).await
    } else if other {
        match Connected::connect(&args.database, password.clone()).await {
            Ok(mut engine) => engine.empty_scratch().await.map(drop),
            Err(e) => Err(e),
        }
    } else {
        Ok(())
    };
    if let Err(e) = cleaned {
        tracing::warn!(error = %e, "the scratch target could not be emptied or dropped");
    }
    result
}

pub(super) async fn verify_into(args: &RestoreArgs, password: Secret) -> anyhow::Result<Report> {
    let url = BackupUrl::from_backup(&args.from)?;
    let store = url.open(&args.store)?;
    let manifest = read_manifest(store.as_ref(), &url).await?;
    let mut engine = Connected::connect(&args.database, password).await?;
    let before = engine.check().await?;
    if before.items > 0 {
        bail!(
            "verify needs an empty scratch database, and {:?} already holds {} {}",
            engine.database(&args.database),
            before.items,
            engine.items_word()
        );
    }
    let seconds = restore_into(
        &mut engine,
        store.as_ref(),
        &url,
        &manifest,
        args.work_dir.as_deref(),
    )
    .await
    .with_context(|| format!("verify of {}", url.url()))?;
    let checks = engine.check().await?;
    if checks.items == 0 && manifest.items > 0 {
        bail!(
            "verify of {}: the restore succeeded but the database is empty, while the backup holds {} {}",
            url.url(),
            manifest.items,
            engine.items_word()
        );
    }
    let result = |with_detail| {
        json!({
            "backup": manifest,
            "restoreSeconds": seconds,
            "checks": checks.to_json(with_detail),
        })
    };
    let full = result(true);
    let compact = if full.to_string().len() <= TERMINATION_LOG_LIMIT {
        full.clone()
    } else {
        result(false)
    };
    info!(seconds, items = checks.items, "verify complete");
    Ok((full, compact))
}

pub(super) async fn delete(args: &DeleteArgs) -> anyhow::Result<serde_json::Value> {
    use futures::TryStreamExt;
    let url = BackupUrl::from_backup(&args.from)?;
    let store = url.open(&args.store)?;
    let mut objects: Vec<Path> = store
        .list(Some(&url.prefix()))
        .map_ok(|meta| meta.location)
        .try_collect()
        .await
        .with_context(|| format!("listing {}", url.url()))?;
    // The manifest first: a half-deleted backup must not look complete.
    objects.sort_by_key(|path| *path != url.manifest());
    for path in &objects {
        match store.delete(path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(error) => {
                return Err(error).with_context(|| format!("deleting {path} of {}", url.url()));
            }
        }
    }
    info!(location = %url.url(), objects = objects.len(), "deleted");
    Ok(json!({ "deleted": url.url(), "objects": objects.len() }))
}
