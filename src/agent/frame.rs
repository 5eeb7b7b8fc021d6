//! A minimal record format for the dumps the agent writes itself (Redis and
//! MongoDB): an 8-byte magic naming the format, then records, then an end
//! record. A record is a tag byte, a field count byte, and each field as a
//! big-endian u32 length and its bytes. No escaping, no parsing of the
//! payloads (Redis `DUMP` blobs and BSON documents are opaque bytes), and a
//! missing end record tells a cut-off stream from a complete one even
//! without the manifest's checksum.

use anyhow::{Context, bail};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Tag of the end record.
const END: u8 = 0;

/// Writes records into `W`.
pub struct FrameWriter<W> {
    inner: W,
}

impl<W: AsyncWrite + Unpin> FrameWriter<W> {
    /// Starts a stream of format `magic`.
    pub async fn start(mut inner: W, magic: &[u8; 8]) -> anyhow::Result<FrameWriter<W>> {
        inner.write_all(magic).await.context("writing the dump")?;
        Ok(FrameWriter { inner })
    }

    /// One record. `tag` must not be 0 (the end record).
    pub async fn record(&mut self, tag: u8, fields: &[&[u8]]) -> anyhow::Result<()> {
        if tag == END {
            bail!("record tag 0 is reserved for the end record");
        }
        self.write(tag, fields).await
    }

    async fn write(&mut self, tag: u8, fields: &[&[u8]]) -> anyhow::Result<()> {
        let count = u8::try_from(fields.len()).context("more than 255 fields in a record")?;
        let mut head = Vec::with_capacity(2 + 4 * fields.len());
        head.push(tag);
        head.push(count);
        self.inner
            .write_all(&head)
            .await
            .context("writing the dump")?;
        for field in fields {
            let len = u32::try_from(field.len())
                .with_context(|| format!("a field of {} bytes is too large", field.len()))?;
            self.inner
                .write_all(&len.to_be_bytes())
                .await
                .context("writing the dump")?;
            self.inner
                .write_all(field)
                .await
                .context("writing the dump")?;
        }
        Ok(())
    }

    /// Writes the end record and hands back the sink (not shut down).
    pub async fn end(mut self) -> anyhow::Result<W> {
        self.write(END, &[]).await?;
        self.inner.flush().await.context("writing the dump")?;
        Ok(self.inner)
    }
}

/// A record read back.
#[derive(Debug, PartialEq, Eq)]
pub struct Record {
    pub tag: u8,
    pub fields: Vec<Vec<u8>>,
}

/// Reads records from `R`.
pub struct FrameReader<R> {
    inner: R,
    done: bool,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// Checks the magic: an archive of another format is refused before
    /// anything is loaded.
    pub async fn start(mut inner: R, magic: &[u8; 8]) -> anyhow::Result<FrameReader<R>> {
        let mut found = [0u8; 8];
        inner
            .read_exact(&mut found)
            .await
            .context("reading the dump's header")?;
        if &found != magic {
            bail!(
                "the dump is not in the expected format (header {:?}, expected {:?})",
                String::from_utf8_lossy(&found),
                String::from_utf8_lossy(magic)
            );
        }
        Ok(FrameReader { inner, done: false })
    }

    /// The next record, or `None` after the end record. A stream that stops
    /// before its end record, or goes on after it, is an error.
    pub async fn next(&mut self) -> anyhow::Result<Option<Record>> {
        if self.done {
            return Ok(None);
        }
        let mut head = [0u8; 2];
        self.inner
            .read_exact(&mut head)
            .await
            .context("the dump ends before its end record")?;
        let [tag, count] = head;
        let mut fields = Vec::with_capacity(usize::from(count));
        for _ in 0..count {
            let mut len = [0u8; 4];
            self.inner
                .read_exact(&mut len)
                .await
                .context("the dump ends inside a record")?;
            let len = u32::from_be_bytes(len) as usize;
            let mut field = vec![0u8; len];
            self.inner
                .read_exact(&mut field)
                .await
                .context("the dump ends inside a record")?;
            fields.push(field);
        }
        if tag == END {
            self.done = true;
            let mut extra = [0u8; 1];
            if self
                .inner
                .read(&mut extra)
                .await
                .context("reading the dump")?
                != 0
            {
                bail!("the dump has data after its end record");
            }
            return Ok(None);
        }
        Ok(Some(Record { tag, fields }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAGIC: &[u8; 8] = b"SDBTEST1";

    async fn written() -> Vec<u8> {
        let mut w = FrameWriter::start(Vec::new(), MAGIC).await.expect("start");
        w.record(1, &[b"key", b"", &[0u8, 1, 2]])
            .await
            .expect("record");
        w.record(2, &[]).await.expect("record");
        w.end().await.expect("end")
    }

    #[tokio::test]
    async fn round_trip() {
        let bytes = written().await;
        let mut r = FrameReader::start(bytes.as_slice(), MAGIC)
            .await
            .expect("start");
        assert_eq!(
            r.next().await.expect("next"),
            Some(Record {
                tag: 1,
                fields: vec![b"key".to_vec(), Vec::new(), vec![0, 1, 2]]
            })
        );
        assert_eq!(
            r.next().await.expect("next"),
            Some(Record {
                tag: 2,
                fields: vec![]
            })
        );
        assert_eq!(r.next().await.expect("next"), None);
        assert_eq!(r.next().await.expect("next"), None);
    }

    #[tokio::test]
    async fn a_cut_stream_is_an_error_not_an_end() {
        let bytes = written().await;
        for cut in 8..bytes.len() {
            let mut r = FrameReader::start(&bytes[..cut], MAGIC)
                .await
                .expect("start");
            let mut result = Ok(Some(Record {
                tag: 9,
                fields: vec![],
            }));
            while let Ok(Some(_)) = result {
                result = r.next().await;
            }
            assert!(result.is_err(), "cut at {cut} read as complete");
        }
    }

    #[tokio::test]
    async fn refuses_another_format_and_trailing_data() {
        let mut bytes = written().await;
        assert!(
            FrameReader::start(bytes.as_slice(), b"SDBOTHER")
                .await
                .is_err()
        );
        bytes.push(0);
        let mut r = FrameReader::start(bytes.as_slice(), MAGIC)
            .await
            .expect("start");
        r.next().await.expect("1");
        r.next().await.expect("2");
        assert!(r.next().await.is_err());
    }
}
