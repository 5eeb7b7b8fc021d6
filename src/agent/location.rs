//! Where backups live: `s3://bucket/prefix` (any S3-compatible store) or
//! `file:///absolute/dir` (a mounted volume), both behind `object_store`, so
//! that the same streaming code writes, reads and deletes in either.
//!
//! A backup named `N` under destination `D` is the directory `D/N`, holding
//! `archive.zst` and `manifest.json`.

use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{BackoffConfig, ClientOptions, ObjectStore, RetryConfig};

use super::manifest::{ARCHIVE_NAME, MANIFEST_NAME};

/// How to reach S3, from flags; credentials come from the AWS_* environment.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct StoreArgs {
    /// S3 endpoint for S3-compatible stores (MinIO, Ceph, versitygw…), such
    /// as `http://minio.storage:9000`; path-style requests are used whenever
    /// it is set. Default: AWS.
    #[arg(long, env = "SERVICEDB_S3_ENDPOINT")]
    pub s3_endpoint: Option<String>,
    /// S3 region. Default: `AWS_REGION`, else `us-east-1`.
    #[arg(long, env = "SERVICEDB_S3_REGION")]
    pub s3_region: Option<String>,
    /// A mounted volume that holds the destination directory: directories
    /// missing under it (a new namespace's or service's) are made. The
    /// volume itself is never made, so a missing mount still fails.
    #[arg(long, env = "SERVICEDB_VOLUME_ROOT")]
    pub volume_root: Option<std::path::PathBuf>,
}

/// A destination: the kind of store and the place inside it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Base {
    S3 { bucket: String, prefix: String },
    File { dir: PathBuf },
}

/// One backup's directory, parsed from flags, not yet connected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupUrl {
    base: Base,
    name: String,
}

impl BackupUrl {
    /// `--destination URL --name NAME` of `backup`.
    pub fn from_destination(destination: &str, name: &str) -> anyhow::Result<BackupUrl> {
        validate_name(name)?;
        Ok(BackupUrl {
            base: parse_base(destination)?,
            name: name.to_owned(),
        })
    }

    /// `--from URL/NAME` of `restore`, `verify` and `delete`.
    pub fn from_backup(url: &str) -> anyhow::Result<BackupUrl> {
        let trimmed = url.trim_end_matches('/');
        let Some((destination, name)) = trimmed.rsplit_once('/') else {
            bail!(
                "--from {url:?} is not `s3://bucket/…/<backup-name>` or `file:///dir/<backup-name>`"
            );
        };
        // `s3://bucket` alone, or `file:///`: no backup name after the base.
        if destination.ends_with(':') || destination.ends_with(":/") || destination == "s3:/" {
            bail!("--from {url:?} names no backup: add `/<backup-name>`");
        }
        let destination = if destination == "file://" {
            "file:///"
        } else {
            destination
        };
        BackupUrl::from_destination(destination, name).with_context(|| format!("--from {url:?}"))
    }

    /// The backup's name (its directory's last segment).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The URL of the backup's directory, as the manifest records it.
    pub fn url(&self) -> String {
        match &self.base {
            Base::S3 { bucket, prefix } if prefix.is_empty() => {
                format!("s3://{bucket}/{}", self.name)
            }
            Base::S3 { bucket, prefix } => format!("s3://{bucket}/{prefix}/{}", self.name),
            Base::File { dir } => {
                format!("file://{}", dir.join(&self.name).display())
            }
        }
    }

    fn dir(&self) -> Path {
        match &self.base {
            Base::S3 { prefix, .. } if !prefix.is_empty() => {
                Path::from(format!("{prefix}/{}", self.name))
            }
            _ => Path::from(self.name.as_str()),
        }
    }

    /// Key of the archive, relative to the bucket or the destination directory.
    pub fn archive(&self) -> Path {
        self.dir().join(ARCHIVE_NAME)
    }

    /// Key of the manifest.
    pub fn manifest(&self) -> Path {
        self.dir().join(MANIFEST_NAME)
    }

    /// Key prefix of everything in this backup's directory.
    pub fn prefix(&self) -> Path {
        self.dir()
    }

    /// A client for the store. For a directory, checks that it exists: the
    /// agent never creates the volume's root (a missing mount must fail, not
    /// fill the container's own filesystem).
    pub fn open(&self, args: &StoreArgs) -> anyhow::Result<Arc<dyn ObjectStore>> {
        open_base(&self.base, args)
    }
}

fn open_base(base: &Base, args: &StoreArgs) -> anyhow::Result<Arc<dyn ObjectStore>> {
    match base {
        Base::S3 { bucket, .. } => s3_store(bucket, args),
        Base::File { dir } => {
            if let Some(root) = &args.volume_root
                && dir.starts_with(root)
                && root.is_dir()
                && !dir.exists()
            {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("making directory {} on the volume", dir.display()))?;
            }
            let meta = std::fs::metadata(dir).with_context(|| {
                format!("destination directory {} is not accessible", dir.display())
            })?;
            if !meta.is_dir() {
                bail!("destination {} is not a directory", dir.display());
            }
            let store = LocalFileSystem::new_with_prefix(dir)
                .with_context(|| format!("opening directory {}", dir.display()))?
                .with_automatic_cleanup(true);
            Ok(Arc::new(store))
        }
    }
}

/// A directory of backups (`<destination>/<namespace>/<name>`, or an S3
/// destination's own prefix): what `list` and `restore --latest` read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupDir {
    base: Base,
}

impl BackupDir {
    pub fn parse(url: &str) -> anyhow::Result<BackupDir> {
        Ok(BackupDir {
            base: parse_base(url)?,
        })
    }

    /// The backup `name` in this directory.
    pub fn backup(&self, name: &str) -> anyhow::Result<BackupUrl> {
        validate_name(name)?;
        Ok(BackupUrl {
            base: self.base.clone(),
            name: name.to_owned(),
        })
    }

    /// A client for the store (see [`BackupUrl::open`]).
    pub fn open(&self, args: &StoreArgs) -> anyhow::Result<Arc<dyn ObjectStore>> {
        open_base(&self.base, args)
    }

    /// The names of the directories right under this one (backups, finished
    /// or not: a finished one has a manifest).
    pub async fn names(&self, store: &dyn ObjectStore) -> anyhow::Result<Vec<String>> {
        let prefix = match &self.base {
            Base::S3 { prefix, .. } if !prefix.is_empty() => Some(Path::from(prefix.as_str())),
            _ => None,
        };
        let listed = store
            .list_with_delimiter(prefix.as_ref())
            .await
            .context("listing the backups")?;
        let mut names: Vec<String> = listed
            .common_prefixes
            .iter()
            .filter_map(|dir| dir.filename().map(str::to_owned))
            .filter(|name| validate_name(name).is_ok())
            .collect();
        names.sort();
        Ok(names)
    }
}

fn parse_base(url: &str) -> anyhow::Result<Base> {
    if let Some(rest) = url.strip_prefix("s3://") {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            bail!("{url:?} names no bucket (`s3://bucket/prefix`)");
        }
        let prefix = prefix.trim_matches('/');
        for segment in prefix.split('/').filter(|s| !s.is_empty()) {
            if segment == "." || segment == ".." {
                bail!("{url:?}: `.` and `..` are not allowed in the prefix");
            }
        }
        return Ok(Base::S3 {
            bucket: bucket.to_owned(),
            prefix: prefix
                .split('/')
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>()
                .join("/"),
        });
    }
    if let Some(path) = url.strip_prefix("file://") {
        let dir = FsPath::new(path);
        if !dir.is_absolute() {
            bail!("{url:?}: a file URL needs an absolute path (`file:///dir`)");
        }
        if dir
            .components()
            .any(|c| c == std::path::Component::ParentDir)
        {
            bail!("{url:?}: `..` is not allowed");
        }
        return Ok(Base::File {
            dir: dir.to_path_buf(),
        });
    }
    bail!("{url:?} is neither `s3://bucket/prefix` nor `file:///absolute/dir`")
}

/// A backup name becomes one path segment: letters, digits, `.`, `_`, `-`
/// (a Kubernetes object name fits).
fn validate_name(name: &str) -> anyhow::Result<()> {
    if name.is_empty() || name == "." || name == ".." {
        bail!("backup name {name:?} is empty or `.`/`..`");
    }
    if name.len() > 253 {
        bail!("backup name {name:?} is longer than 253 characters");
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        bail!("backup name {name:?} may hold only letters, digits, `.`, `_` and `-`");
    }
    Ok(())
}

/// Retries for one request: enough to ride out a restarting endpoint, short
/// enough that a wrong endpoint fails the Job within seconds, not minutes.
fn retry() -> RetryConfig {
    RetryConfig {
        backoff: BackoffConfig {
            init_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(5),
            base: 2.0,
        },
        max_retries: 4,
        retry_timeout: Duration::from_secs(60),
    }
}

fn s3_store(bucket: &str, args: &StoreArgs) -> anyhow::Result<Arc<dyn ObjectStore>> {
    // from_env: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN,
    // AWS_REGION, and the web identity (IRSA) and container credentials
    // variables, so every way a pod gets AWS credentials works.
    let mut builder = AmazonS3Builder::from_env()
        .with_bucket_name(bucket)
        .with_retry(retry())
        .with_client_options(
            ClientOptions::new()
                .with_connect_timeout(Duration::from_secs(10))
                .with_timeout(Duration::from_secs(120)),
        );
    if let Some(region) = &args.s3_region {
        builder = builder.with_region(region);
    }
    if let Some(endpoint) = &args.s3_endpoint {
        let endpoint = endpoint.trim_end_matches('/');
        if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
            bail!("--s3-endpoint {endpoint:?} must start with http:// or https://");
        }
        builder = builder
            .with_endpoint(endpoint)
            .with_allow_http(endpoint.starts_with("http://"))
            .with_virtual_hosted_style_request(false);
    }
    let store = builder
        .build()
        .with_context(|| format!("configuring S3 for bucket {bucket}"))?;
    Ok(Arc::new(store))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_services_directory_is_made_on_the_volume_only() {
        let root = tempfile::tempdir().expect("tempdir");
        let dir = root.path().join("shop/cart");
        let url = format!("file://{}", dir.display());
        let backup = BackupUrl::from_destination(&url, "cart-1").expect("url");
        let plain = StoreArgs {
            s3_endpoint: None,
            s3_region: None,
            volume_root: None,
        };
        let Err(missing) = backup.open(&plain) else {
            panic!("no volume root: refused");
        };
        assert!(missing.to_string().contains("not accessible"), "{missing}");
        assert!(!dir.exists());
        let on_volume = StoreArgs {
            volume_root: Some(root.path().to_path_buf()),
            ..plain
        };
        backup.open(&on_volume).expect("made under the volume");
        assert!(dir.is_dir());
        // A volume that is not mounted is never made.
        let elsewhere = StoreArgs {
            volume_root: Some(root.path().join("not-mounted")),
            s3_endpoint: None,
            s3_region: None,
        };
        let url = format!("file://{}/not-mounted/shop/cart", root.path().display());
        let backup = BackupUrl::from_destination(&url, "cart-1").expect("url");
        assert!(backup.open(&elsewhere).is_err());
        assert!(!root.path().join("not-mounted").exists());
    }

    #[test]
    fn s3_destination_and_name() {
        let url = BackupUrl::from_destination("s3://backups/shop/orders/", "orders-1").expect("ok");
        assert_eq!(url.url(), "s3://backups/shop/orders/orders-1");
        assert_eq!(url.archive().as_ref(), "shop/orders/orders-1/archive.zst");
        assert_eq!(
            url.manifest().as_ref(),
            "shop/orders/orders-1/manifest.json"
        );
        let back = BackupUrl::from_backup(&url.url()).expect("ok");
        assert_eq!(back, url);
    }

    #[test]
    fn s3_bucket_without_prefix() {
        let url = BackupUrl::from_destination("s3://backups", "b1").expect("ok");
        assert_eq!(url.url(), "s3://backups/b1");
        assert_eq!(url.archive().as_ref(), "b1/archive.zst");
        assert_eq!(BackupUrl::from_backup("s3://backups/b1").expect("ok"), url);
    }

    #[test]
    fn file_destination() {
        let url = BackupUrl::from_destination("file:///mnt/backups", "b1").expect("ok");
        assert_eq!(url.url(), "file:///mnt/backups/b1");
        assert_eq!(url.archive().as_ref(), "b1/archive.zst");
        assert_eq!(
            BackupUrl::from_backup("file:///mnt/backups/b1/").expect("ok"),
            url
        );
        let root = BackupUrl::from_backup("file:///b1").expect("ok");
        assert_eq!(root.url(), "file:///b1");
    }

    #[test]
    fn refuses_what_is_not_a_backup_location() {
        for bad in [
            "s3://",
            "s3://bucket",
            "file:///",
            "file://relative/b1",
            "http://host/b1",
            "/mnt/b1",
            "s3://bucket/../b1",
            "file:///mnt/../b1",
        ] {
            assert!(BackupUrl::from_backup(bad).is_err(), "{bad} was accepted");
        }
        for bad in ["", "..", "a/b", "a b", "ä"] {
            assert!(
                BackupUrl::from_destination("s3://bucket", bad).is_err(),
                "name {bad:?} was accepted"
            );
        }
    }
}
