//! The archive: a dump, compressed with zstd, hashed and uploaded as it is
//! produced; and the reverse, downloaded to a temporary file, checked, then
//! decompressed as it is read.
//!
//! Upload: dump bytes → [`ArchiveWriter`] (counts raw bytes) → zstd →
//! [`Tap`] (SHA-256 and size of what is stored) → `object_store`'s
//! `BufWriter`, which turns into a multipart upload (`WriteMultipart`,
//! parts of [`PART_SIZE`], a few in flight) as soon as the archive outgrows
//! one part. Memory stays at a few parts whatever the database's size. On
//! any failure the caller aborts the upload, so no partial archive is left
//! behind (S3 `AbortMultipartUpload`; the directory store's staging file is
//! removed).
//!
//! Download: the archive goes to a temporary file on disk while it is
//! hashed; nothing reaches the database until size and checksum match the
//! manifest. Restoring from the file afterwards means a corrupted archive
//! can never leave a half-loaded database behind.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use anyhow::{Context as _, bail};
use async_compression::tokio::bufread::ZstdDecoder;
use async_compression::tokio::write::ZstdEncoder;
use futures::StreamExt;
use object_store::buffered::BufWriter;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};

/// Size of one uploaded part (S3 needs at least 5 MiB for all but the last).
pub const PART_SIZE: usize = 16 * 1024 * 1024;
/// Parts uploaded at once.
const PARTS_IN_FLIGHT: usize = 4;
/// zstd level 3 (zstd's default): several times faster than gzip at a
/// better ratio, cheap enough to keep up with a dump on one core.
const ZSTD_LEVEL: i32 = 3;

/// What was stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub size_bytes: u64,
    pub raw_bytes: u64,
    pub sha256_hex: String,
}

/// Passes bytes through to `inner`, counting them and hashing them.
struct Tap<W> {
    inner: W,
    bytes: u64,
    hash: Sha256,
}

impl<W: AsyncWrite + Unpin> AsyncWrite for Tap<W> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let written = ready!(Pin::new(&mut self.inner).poll_write(cx, buf))?;
        let this = &mut *self;
        this.bytes += written as u64;
        this.hash.update(&buf[..written]);
        Poll::Ready(Ok(written))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The sink a dump writes into. Nothing is visible in the store until
/// [`ArchiveWriter::finish`] succeeds.
pub struct ArchiveWriter {
    encoder: ZstdEncoder<Tap<BufWriter>>,
    raw_bytes: u64,
    path: Path,
}

impl ArchiveWriter {
    pub fn new(store: Arc<dyn ObjectStore>, path: Path) -> ArchiveWriter {
        let upload = BufWriter::with_capacity(store, path.clone(), PART_SIZE)
            .with_max_concurrency(PARTS_IN_FLIGHT);
        let tap = Tap {
            inner: upload,
            bytes: 0,
            hash: Sha256::new(),
        };
        ArchiveWriter {
            encoder: ZstdEncoder::with_quality(tap, async_compression::Level::Precise(ZSTD_LEVEL)),
            raw_bytes: 0,
            path,
        }
    }

    /// Ends the zstd stream and completes the upload.
    pub async fn finish(mut self) -> anyhow::Result<Stored> {
        // The encoder's shutdown writes the end of the frame, then shuts the
        // upload down, which sends the last part and completes it (a failed
        // completion is aborted by object_store itself).
        self.encoder
            .shutdown()
            .await
            .with_context(|| format!("completing the upload of {}", self.path))?;
        let tap = self.encoder.into_inner();
        Ok(Stored {
            size_bytes: tap.bytes,
            raw_bytes: self.raw_bytes,
            sha256_hex: hex(&tap.hash.finalize()),
        })
    }

    /// Discards whatever was uploaded.
    pub async fn abort(mut self) -> anyhow::Result<()> {
        self.encoder
            .get_mut()
            .inner
            .abort()
            .await
            .with_context(|| format!("aborting the upload of {}", self.path))
    }
}

impl AsyncWrite for ArchiveWriter {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let written = ready!(Pin::new(&mut self.encoder).poll_write(cx, buf))?;
        self.raw_bytes += written as u64;
        Poll::Ready(Ok(written))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.encoder).poll_flush(cx)
    }

    /// Not the way to end an archive (`finish` is): refusing keeps a dump
    /// that shuts its sink down from completing the upload behind the
    /// agent's back, before the dump's exit status is known.
    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Err(std::io::Error::other(
            "an archive is completed by ArchiveWriter::finish",
        )))
    }
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::new(), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    })
}

/// A downloaded archive whose size and checksum matched the manifest.
pub struct Downloaded {
    file: tempfile::NamedTempFile,
}

impl Downloaded {
    /// The decompressed dump.
    pub async fn reader(&self) -> anyhow::Result<impl AsyncRead + Unpin + Send + use<>> {
        let file = tokio::fs::File::open(self.file.path())
            .await
            .context("reopening the downloaded archive")?;
        Ok(ZstdDecoder::new(BufReader::with_capacity(1 << 20, file)))
    }
}

/// Downloads `path` into a temporary file in `work_dir`, hashing it, and
/// refuses it unless it is exactly `expected_size` bytes with SHA-256
/// `expected_sha256_hex`.
pub async fn download(
    store: &dyn ObjectStore,
    path: &Path,
    work_dir: &std::path::Path,
    expected_size: u64,
    expected_sha256_hex: &str,
) -> anyhow::Result<Downloaded> {
    let file = tempfile::Builder::new()
        .prefix("servicedb-restore-")
        .suffix(".zst")
        .tempfile_in(work_dir)
        .with_context(|| {
            format!(
                "creating a temporary file in {} for the archive",
                work_dir.display()
            )
        })?;
    let mut out = tokio::fs::File::from_std(
        file.reopen()
            .context("opening the temporary file for the archive")?,
    );
    let mut stream = store
        .get(path)
        .await
        .with_context(|| format!("reading archive {path}"))?
        .into_stream();
    let mut hash = Sha256::new();
    let mut size: u64 = 0;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.with_context(|| format!("downloading archive {path}"))?;
        size += chunk.len() as u64;
        if size > expected_size {
            bail!(
                "archive {path} is larger than the manifest says ({expected_size} bytes): \
                 it is not the archive the manifest describes"
            );
        }
        hash.update(&chunk);
        out.write_all(&chunk)
            .await
            .context("writing the archive to the temporary file")?;
    }
    out.flush()
        .await
        .context("writing the archive to the temporary file")?;
    if size < expected_size {
        bail!("archive truncated: manifest says {expected_size} bytes, archive {path} has {size}");
    }
    let actual = hex(&hash.finalize());
    if !actual.eq_ignore_ascii_case(expected_sha256_hex) {
        bail!(
            "checksum mismatch: manifest says sha256:{expected_sha256_hex}, archive is sha256:{actual}"
        );
    }
    Ok(Downloaded { file })
}

#[cfg(test)]
mod tests {
    use object_store::memory::InMemory;
    use tokio::io::AsyncReadExt;

    use super::*;

    async fn store_archive(store: &Arc<dyn ObjectStore>, data: &[u8]) -> Stored {
        let path = Path::from("b/archive.zst");
        let mut writer = ArchiveWriter::new(Arc::clone(store), path);
        // Several writes, as a dump does.
        for chunk in data.chunks(100_000) {
            writer.write_all(chunk).await.expect("write");
        }
        writer.finish().await.expect("finish")
    }

    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8 ^ (i / 7) as u8).collect()
    }

    /// Incompressible bytes (xorshift64), cheap even in a debug build.
    fn noise(len: usize) -> Vec<u8> {
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            out.extend_from_slice(&state.to_le_bytes());
        }
        out.truncate(len);
        out
    }

    #[tokio::test]
    async fn round_trip_through_multipart_upload() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        // Incompressible enough to need more than one part.
        let data = noise(PART_SIZE * 2 + 12345);
        let stored = store_archive(&store, &data).await;
        assert_eq!(stored.raw_bytes, data.len() as u64);
        let path = Path::from("b/archive.zst");
        let bytes = store
            .get(&path)
            .await
            .expect("get")
            .bytes()
            .await
            .expect("bytes");
        assert_eq!(bytes.len() as u64, stored.size_bytes);
        assert_eq!(hex(&Sha256::digest(&bytes)), stored.sha256_hex);

        let dir = tempfile::tempdir().expect("tempdir");
        let downloaded = download(
            store.as_ref(),
            &path,
            dir.path(),
            stored.size_bytes,
            &stored.sha256_hex,
        )
        .await
        .expect("download");
        let mut back = Vec::new();
        downloaded
            .reader()
            .await
            .expect("reader")
            .read_to_end(&mut back)
            .await
            .expect("decompress");
        assert!(back == data, "decompressed data differs");
    }

    #[tokio::test]
    async fn refuses_a_truncated_or_altered_archive() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let stored = store_archive(&store, &data(300_000)).await;
        let path = Path::from("b/archive.zst");
        let dir = tempfile::tempdir().expect("tempdir");

        let short = download(
            store.as_ref(),
            &path,
            dir.path(),
            stored.size_bytes + 1,
            &stored.sha256_hex,
        )
        .await
        .err()
        .expect("refused");
        assert!(
            short.to_string().starts_with("archive truncated"),
            "{short}"
        );

        let wrong = "0".repeat(64);
        let altered = download(store.as_ref(), &path, dir.path(), stored.size_bytes, &wrong)
            .await
            .err()
            .expect("refused");
        assert!(
            altered
                .to_string()
                .starts_with("checksum mismatch: manifest says sha256:0000"),
            "{altered}"
        );
    }

    #[tokio::test]
    async fn an_aborted_archive_leaves_nothing() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let path = Path::from("b/archive.zst");
        let mut writer = ArchiveWriter::new(Arc::clone(&store), path.clone());
        let big = noise(PART_SIZE * 2);
        writer.write_all(&big).await.expect("write");
        writer.abort().await.expect("abort");
        assert!(store.head(&path).await.is_err(), "an archive was stored");
    }

    #[tokio::test]
    async fn a_dump_cannot_complete_the_upload_itself() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let mut writer = ArchiveWriter::new(Arc::clone(&store), Path::from("b/archive.zst"));
        writer.write_all(b"partial").await.expect("write");
        assert!(writer.shutdown().await.is_err());
        writer.abort().await.expect("abort");
        assert!(store.head(&Path::from("b/archive.zst")).await.is_err());
    }
}
