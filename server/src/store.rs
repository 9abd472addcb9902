//! The blob store: one small type over `Arc<dyn ObjectStore>`.
//!
//! Called by the registry service; calls only `object_store`. It knows object
//! keys and bytes, nothing of repositories, digests' meaning or the catalog.
//!
//! Key layout (stable; the garbage collector and operators rely on it):
//! - `blobs/<algorithm>/<hex[0..2]>/<hex>`: content that has been verified
//!   against its digest. Nothing else is ever written under `blobs/`.
//! - `uploads/<session>/<part>`: bytes of an upload in progress, one object
//!   per chunk, listed in the catalog's `upload_parts` table.
//!
//! Every write here is atomic on every backend: `LocalFileSystem` writes a
//! staging file and renames it, S3 only shows an object once its (multipart)
//! upload completes. So an object is either absent or whole.

use std::ops::Range;
use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt};
use object_store::buffered::BufWriter;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{GetOptions, GetRange, GetResultPayload, ObjectStore, ObjectStoreExt};
use tokio::io::AsyncWriteExt;

use crate::digest::Digest;

/// How many bytes a writer buffers before it starts a multipart upload, and
/// the size of each part after that. Small enough that 64 concurrent uploads
/// stay far below the memory budget; S3 (later) needs at least 5 MiB.
const DEFAULT_PART_SIZE: usize = 1024 * 1024;

/// Read size when streaming a local file out: large reads keep the socket
/// busy (object_store's own file stream reads 8 KiB at a time).
const LOCAL_READ_CHUNK: usize = 256 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("object {0} not found")]
    NotFound(String),
    #[error("object store: {0}")]
    Backend(#[from] object_store::Error),
    #[error("object store i/o: {0}")]
    Io(#[from] std::io::Error),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

fn map_err(e: object_store::Error) -> StoreError {
    match e {
        object_store::Error::NotFound { path, .. } => StoreError::NotFound(path),
        other => StoreError::Backend(other),
    }
}

#[derive(Clone, Debug)]
pub struct BlobStore {
    inner: Arc<dyn ObjectStore>,
    part_size: usize,
}

/// A byte stream read from the store, with the range it covers.
pub struct ObjectRead {
    pub range: Range<u64>,
    pub size: u64,
    pub stream: BoxStream<'static, Result<Bytes, std::io::Error>>,
}

impl BlobStore {
    pub fn new(inner: Arc<dyn ObjectStore>) -> Self {
        BlobStore {
            inner,
            part_size: DEFAULT_PART_SIZE,
        }
    }

    /// The embedded default: files under `root`, fsynced on write so a
    /// committed blob survives a power cut, not only a crash.
    pub fn local(root: &FsPath, fsync: bool) -> Result<Self> {
        std::fs::create_dir_all(root)?;
        let fs = LocalFileSystem::new_with_prefix(root)
            .map_err(map_err)?
            .with_automatic_cleanup(true)
            .with_fsync(fsync);
        Ok(Self::new(Arc::new(fs)))
    }

    pub fn in_memory() -> Self {
        Self::new(Arc::new(InMemory::new()))
    }

    pub fn blob_key(digest: &Digest) -> Path {
        let hex = digest.hex();
        Path::from(format!(
            "blobs/{}/{}/{}",
            digest.algorithm().as_str(),
            &hex[..2],
            hex
        ))
    }

    pub fn upload_part_key(session: &str, part: &str) -> Path {
        Path::from(format!("uploads/{session}/{part}"))
    }

    pub async fn writer(&self, key: Path) -> ObjectWriter {
        ObjectWriter {
            // Two parts in flight at most: memory per upload stays ~2 parts.
            inner: BufWriter::with_capacity(self.inner.clone(), key, self.part_size)
                .with_max_concurrency(2),
            written: 0,
        }
    }

    pub async fn size(&self, key: &Path) -> Result<Option<u64>> {
        match self.inner.head(key).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(StoreError::Backend(e)),
        }
    }

    /// Streams `range` (or the whole object) of `key`.
    pub async fn read(&self, key: &Path, range: Option<Range<u64>>) -> Result<ObjectRead> {
        let opts = GetOptions {
            range: range.map(GetRange::Bounded),
            ..Default::default()
        };
        let got = self.inner.get_opts(key, opts).await.map_err(map_err)?;
        let size = got.meta.size;
        let range = got.range.clone();
        let stream = match got.payload {
            GetResultPayload::File(file, _) => local_file_stream(file, range.clone()),
            GetResultPayload::Stream(s) => s.map(|r| r.map_err(std::io::Error::other)).boxed(),
        };
        Ok(ObjectRead {
            range,
            size,
            stream,
        })
    }

    /// Copies `from` to `to` (a hard link on the local filesystem, a
    /// server-side copy on S3); `from` stays.
    pub async fn copy(&self, from: &Path, to: &Path) -> Result<()> {
        self.inner.copy(from, to).await.map_err(map_err)
    }

    pub async fn rename(&self, from: &Path, to: &Path) -> Result<()> {
        self.inner.rename(from, to).await.map_err(map_err)
    }

    /// Deletes `key`; an object that is already gone is not an error.
    pub async fn delete(&self, key: &Path) -> Result<()> {
        match self.inner.delete(key).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(StoreError::Backend(e)),
        }
    }

    /// Deletes every object under `prefix`.
    pub async fn delete_prefix(&self, prefix: &Path) -> Result<()> {
        let mut listing = self.inner.list(Some(prefix));
        while let Some(meta) = listing.next().await {
            let meta = meta.map_err(map_err)?;
            self.delete(&meta.location).await?;
        }
        Ok(())
    }
}

/// Streams a local file with large reads off the async threads.
fn local_file_stream(
    file: std::fs::File,
    range: Range<u64>,
) -> BoxStream<'static, Result<Bytes, std::io::Error>> {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let stream = async move {
        let mut file = tokio::fs::File::from_std(file);
        file.seek(std::io::SeekFrom::Start(range.start)).await?;
        let reader = file.take(range.end - range.start);
        Ok::<_, std::io::Error>(tokio_util::io::ReaderStream::with_capacity(
            reader,
            LOCAL_READ_CHUNK,
        ))
    };
    futures::stream::once(stream)
        .map(|r| match r {
            Ok(s) => s.boxed(),
            Err(e) => futures::stream::once(async { Err(e) }).boxed(),
        })
        .flatten()
        .boxed()
}

/// Writes one object from a sequence of byte chunks. Nothing is visible under
/// the key until [`ObjectWriter::finish`] returns.
pub struct ObjectWriter {
    inner: BufWriter,
    written: u64,
}

impl ObjectWriter {
    pub async fn write(&mut self, bytes: Bytes) -> Result<()> {
        self.written += bytes.len() as u64;
        self.inner.put(bytes).await.map_err(map_err)
    }

    pub fn written(&self) -> u64 {
        self.written
    }

    pub async fn finish(mut self) -> Result<u64> {
        self.inner.shutdown().await?;
        Ok(self.written)
    }

    pub async fn abort(mut self) {
        if let Err(e) = self.inner.abort().await {
            tracing::warn!(error = %e, "could not clean up an aborted object write");
        }
    }
}

/// Where the local store keeps its files for a data dir.
pub fn default_local_root(data_dir: &FsPath) -> PathBuf {
    data_dir.join("blobs")
}
