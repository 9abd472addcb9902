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
//! Every write under `blobs/` is atomic on every backend: `LocalFileSystem`
//! writes a staging file and renames it, S3 only shows an object once its
//! (multipart) upload completes. So a blob is either absent or whole.
//!
//! Upload sessions have a fast path on the local filesystem (see
//! [`BlobStore::session_writer`]): all chunks of a session go into one file,
//! `uploads/<session>/data`, each written at the offset where the session
//! ends, so completing it is a hard link and not a copy of every byte. Bytes
//! past the session's size in the catalog are garbage from an interrupted
//! write and are overwritten by the next chunk or trimmed at completion;
//! nothing reads `uploads/` except through the catalog's parts, which name
//! the range of each chunk.

use std::ops::Range;
use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;

use tokio::sync::mpsc;

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

/// Local fast path: bytes handed to the writer thread at once, and how many
/// such batches may wait for it. Together with the batch being filled, an
/// upload holds at most ~3 batches (3 MiB) in memory, like the buffered path.
const LOCAL_BATCH: usize = 1024 * 1024;
const LOCAL_QUEUE: usize = 1;

/// Local fast path: start writeback of every this many bytes as they are
/// written, so the fsync at the end only waits for the tail.
const LOCAL_WRITEBACK_EVERY: u64 = 2 * 1024 * 1024;

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
    /// Set when `inner` is a `LocalFileSystem` rooted here: upload sessions
    /// then use the single-file fast path.
    local: Option<LocalRoot>,
}

#[derive(Clone, Debug)]
struct LocalRoot {
    root: PathBuf,
    fsync: bool,
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
            local: None,
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
        let mut store = Self::new(Arc::new(fs));
        store.local = Some(LocalRoot {
            root: root.canonicalize()?,
            fsync,
        });
        Ok(store)
    }

    /// The same store without the local fast path (tests of the general,
    /// object-store-only path on a real directory).
    pub fn without_local_fast_path(mut self) -> Self {
        self.local = None;
        self
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

    /// An atomic writer: nothing is visible under `key` until `finish`.
    pub async fn writer(&self, key: Path) -> ObjectWriter {
        ObjectWriter {
            // Two parts in flight at most: memory per upload stays ~2 parts.
            inner: Sink::Buffered(
                BufWriter::with_capacity(self.inner.clone(), key, self.part_size)
                    .with_max_concurrency(2),
            ),
            written: 0,
        }
    }

    /// The key the next chunk of upload session `session` goes under:
    /// generally a new part object `uploads/<session>/<part>`, on the local
    /// filesystem the session's one file `uploads/<session>/data`.
    pub fn session_part_key(&self, session: &str) -> Path {
        match self.local {
            Some(_) => Self::upload_part_key(session, "data"),
            None => Self::upload_part_key(session, &uuid::Uuid::new_v4().to_string()),
        }
    }

    /// A writer for a chunk of an upload session at `key` (from
    /// [`BlobStore::session_part_key`]), where `offset` bytes of earlier
    /// chunks already are.
    ///
    /// Generally a new part object, written atomically (`offset` is 0). On
    /// the local filesystem the chunk is written into the session's file at
    /// `offset`, and `finish` returns once the bytes (and, for a new file,
    /// its directory entries) are on disk; the caller must serialize the
    /// writes of one session and record each chunk's range.
    pub async fn session_writer(&self, key: Path, offset: u64) -> ObjectWriter {
        let Some(local) = &self.local else {
            return self.writer(key).await;
        };
        let path = local.root.join(key.as_ref());
        let fsync = local.fsync;
        let (tx, rx) = mpsc::channel(LOCAL_QUEUE);
        let task = tokio::task::spawn_blocking(move || local_write(path, offset, fsync, rx));
        ObjectWriter {
            inner: Sink::Local {
                batch: Vec::new(),
                batch_len: 0,
                tx: Some(tx),
                task,
            },
            written: 0,
        }
    }

    /// Local fast path: makes `key` exactly `len` bytes long (a session file
    /// can hold garbage past its size after an interrupted write). A no-op
    /// elsewhere, where every part is exact.
    pub async fn trim(&self, key: &Path, len: u64) -> Result<()> {
        let Some(local) = &self.local else {
            return Ok(());
        };
        let path = local.root.join(key.as_ref());
        let fsync = local.fsync;
        tokio::task::spawn_blocking(move || {
            let file = std::fs::OpenOptions::new().write(true).open(&path)?;
            if file.metadata()?.len() != len {
                file.set_len(len)?;
                if fsync {
                    file.sync_all()?;
                }
            }
            Ok::<_, std::io::Error>(())
        })
        .await
        .map_err(std::io::Error::other)??;
        Ok(())
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

/// Writes one object (or one chunk of a local session file) from a sequence
/// of byte chunks. Nothing is visible under the key until
/// [`ObjectWriter::finish`] returns, except in a local session file, where
/// the catalog says which bytes count.
pub struct ObjectWriter {
    inner: Sink,
    written: u64,
}

enum Sink {
    Buffered(BufWriter),
    /// Batches go to a blocking thread that writes them at their offset.
    Local {
        batch: Vec<Bytes>,
        batch_len: usize,
        tx: Option<mpsc::Sender<Vec<Bytes>>>,
        task: tokio::task::JoinHandle<std::io::Result<()>>,
    },
}

impl ObjectWriter {
    pub async fn write(&mut self, bytes: Bytes) -> Result<()> {
        self.written += bytes.len() as u64;
        match &mut self.inner {
            Sink::Buffered(w) => w.put(bytes).await.map_err(map_err),
            Sink::Local {
                batch,
                batch_len,
                tx,
                ..
            } => {
                *batch_len += bytes.len();
                batch.push(bytes);
                if *batch_len >= LOCAL_BATCH {
                    *batch_len = 0;
                    let full = std::mem::take(batch);
                    send_batch(tx, full).await?;
                }
                Ok(())
            }
        }
    }

    pub fn written(&self) -> u64 {
        self.written
    }

    pub async fn finish(self) -> Result<u64> {
        match self.inner {
            Sink::Buffered(mut w) => w.shutdown().await?,
            Sink::Local {
                batch,
                mut tx,
                task,
                ..
            } => {
                if !batch.is_empty() {
                    send_batch(&mut tx, batch).await?;
                }
                drop(tx);
                task.await.map_err(std::io::Error::other)??;
            }
        }
        Ok(self.written)
    }

    pub async fn abort(self) {
        match self.inner {
            Sink::Buffered(mut w) => {
                if let Err(e) = w.abort().await {
                    tracing::warn!(error = %e, "could not clean up an aborted object write");
                }
            }
            // What was written past the session's size is garbage the next
            // chunk overwrites; only wait for the thread to stop.
            Sink::Local { tx, task, .. } => {
                drop(tx);
                let _ = task.await;
            }
        }
    }
}

async fn send_batch(tx: &mut Option<mpsc::Sender<Vec<Bytes>>>, batch: Vec<Bytes>) -> Result<()> {
    let sent = match tx {
        Some(t) => t.send(batch).await.is_ok(),
        None => false,
    };
    if sent {
        Ok(())
    } else {
        // The thread stopped on an error; `finish` reports it.
        *tx = None;
        Err(StoreError::Io(std::io::Error::other(
            "local writer stopped",
        )))
    }
}

/// The writer thread of a local session chunk: writes batches at `offset`
/// on, starting writeback as it goes, and makes the bytes durable at the end
/// when `fsync` is set (`fdatasync`; a new file also gets its directory
/// entries synced up to the first one that existed).
fn local_write(
    path: PathBuf,
    offset: u64,
    fsync: bool,
    mut rx: mpsc::Receiver<Vec<Bytes>>,
) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    let parent = path.parent().map(FsPath::to_path_buf).unwrap_or_default();
    let mut created_dirs = Vec::new();
    let mut dir = parent.clone();
    while !dir.exists() {
        created_dirs.push(dir.clone());
        match dir.parent() {
            Some(p) => dir = p.to_path_buf(),
            None => break,
        }
    }
    std::fs::create_dir_all(&parent)?;
    // Earlier chunks are at [0, offset): their file must be there, whole, or
    // this chunk would land after a hole and a cached hash would vouch for
    // bytes that are gone.
    let existed = offset > 0;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(!existed)
        .truncate(false)
        .open(&path)?;
    if existed && file.metadata()?.len() < offset {
        return Err(std::io::Error::other(format!(
            "{} is shorter than the {offset} bytes of its session",
            path.display()
        )));
    }
    let mut pos = offset;
    let mut synced_to = offset;
    let result = (|| -> std::io::Result<()> {
        while let Some(batch) = rx.blocking_recv() {
            for b in batch {
                file.write_all_at(&b, pos)?;
                pos += b.len() as u64;
            }
            if fsync && pos - synced_to >= LOCAL_WRITEBACK_EVERY {
                start_writeback(&file, synced_to, pos - synced_to);
                synced_to = pos;
            }
        }
        Ok(())
    })();
    // Dropping the receiver makes a sender that is still writing fail.
    drop(rx);
    result?;
    if fsync {
        file.sync_data()?;
        if !existed {
            // The new file's entry, and every directory made for it.
            fsync_dir(&parent)?;
            for d in &created_dirs {
                if let Some(p) = d.parent() {
                    fsync_dir(p)?;
                }
            }
        }
    }
    Ok(())
}

fn fsync_dir(dir: &FsPath) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Asks the kernel to start writing a range back now (no waiting), so the
/// final `fdatasync` has little left to do.
fn start_writeback(file: &std::fs::File, from: u64, len: u64) {
    use std::os::fd::AsRawFd;
    // SAFETY: a valid open fd; the call only schedules I/O on it.
    unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            from as libc::off64_t,
            len as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        );
    }
}

/// Where the local store keeps its files for a data dir.
pub fn default_local_root(data_dir: &FsPath) -> PathBuf {
    data_dir.join("blobs")
}

/// An object found by [`BlobStore::list`].
#[derive(Debug, Clone)]
pub struct ObjectInfo {
    pub key: Path,
    pub size: u64,
    pub last_modified: std::time::SystemTime,
}

impl BlobStore {
    /// Every object under `prefix` (`blobs/` or `uploads/`), as a stream:
    /// the garbage collector compares them with the catalog's rows.
    pub fn list(&self, prefix: &str) -> BoxStream<'static, Result<ObjectInfo>> {
        let prefix = Path::from(prefix);
        let inner = self.inner.clone();
        futures::stream::once(async move { inner.list(Some(&prefix)) })
            .flatten()
            .map(|meta| {
                let meta = meta.map_err(map_err)?;
                Ok(ObjectInfo {
                    key: meta.location,
                    size: meta.size,
                    last_modified: meta.last_modified.into(),
                })
            })
            .boxed()
    }
}
