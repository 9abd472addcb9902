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
//! Backends: `LocalFileSystem` (the embedded default), S3 and S3-compatible
//! stores through `AmazonS3` ([`BlobStore::s3`]), `InMemory` (tests). On S3
//! every object above the part size is written with a multipart upload
//! (parts of `storage.part_size_mib`, at least S3's 5 MiB), server-side
//! copies above S3's 5 GiB `CopyObject` limit are streamed instead, and blob
//! reads can be handed to the client as presigned URLs
//! ([`BlobStore::presigned_get`]). Nothing about an S3 store lives in this
//! process: any number of servers may share one bucket (and one catalog).
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
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::buffered::BufWriter;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::signer::Signer;
use object_store::{GetOptions, GetRange, GetResultPayload, ObjectStore, ObjectStoreExt};
use tokio::io::AsyncWriteExt;

use crate::config::StorageSettings;
use crate::digest::Digest;

/// How many bytes a writer buffers before it starts a multipart upload, and
/// the size of each part after that. Small enough that 64 concurrent uploads
/// stay far below the memory budget; S3 sets its own (at least 5 MiB, its
/// minimum part size).
const DEFAULT_PART_SIZE: usize = 1024 * 1024;

const MIB: u64 = 1024 * 1024;

/// S3's limit for one `CopyObject`: larger objects are copied by streaming
/// them through a multipart upload.
const S3_MAX_COPY: u64 = 5 * 1024 * MIB;

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
    #[error("object store settings: {0}")]
    Config(String),
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
    /// Objects above this size are copied by streaming them (S3's
    /// `CopyObject` stops at 5 GiB).
    max_server_copy: Option<u64>,
    /// Set on S3 with `storage.redirect`: blob GETs may be answered with a
    /// presigned URL valid this long.
    presign: Option<Presign>,
}

#[derive(Clone, Debug)]
struct Presign {
    signer: Arc<dyn Signer>,
    ttl: std::time::Duration,
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
            max_server_copy: None,
            presign: None,
        }
    }

    /// The store the settings name (`storage.backend`); an S3 bucket is
    /// checked with one request first.
    pub async fn open(settings: &crate::config::Settings) -> Result<Self> {
        use crate::config::StorageBackend;
        let s = &settings.storage;
        Ok(match s.backend {
            StorageBackend::Filesystem => Self::local(&settings.storage_path(), s.fsync)?,
            StorageBackend::S3 => {
                let store = Self::s3(s)?;
                store.check().await?;
                tracing::info!(
                    bucket = s.bucket.as_deref().unwrap_or("(AWS_BUCKET)"),
                    endpoint = s.endpoint.as_deref().unwrap_or("(AWS default)"),
                    "blobs are on S3"
                );
                store
            }
            StorageBackend::Gcs | StorageBackend::Azure => {
                let store = match s.backend {
                    StorageBackend::Gcs => Self::gcs(s)?,
                    _ => Self::azure(s)?,
                };
                store.check().await?;
                tracing::info!(
                    backend = ?s.backend,
                    bucket = s.bucket.as_deref().unwrap_or("(from the environment)"),
                    "blobs are in a cloud bucket"
                );
                store
            }
            StorageBackend::Memory => Self::in_memory(),
        })
    }

    /// An S3 or S3-compatible bucket. The builder starts from the `AWS_*`
    /// environment (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
    /// `AWS_SESSION_TOKEN`, `AWS_REGION`/`AWS_DEFAULT_REGION`,
    /// `AWS_ENDPOINT_URL`, `AWS_BUCKET`, ...); what the settings name wins.
    /// Path-style requests unless `virtual_hosted_style`. Nothing is sent
    /// here: a wrong endpoint or key shows at the first request (the server
    /// checks with [`BlobStore::check`] at start).
    pub fn s3(s: &StorageSettings) -> Result<Self> {
        let client = client_options(s)?;
        // As `AmazonS3Builder::from_env`, but over our client options (which
        // `with_client_options` would replace wholesale afterwards).
        let mut b = AmazonS3Builder::new().with_client_options(client);
        for (key, value) in env_with_prefix("AWS_") {
            if let Ok(k) = key.to_ascii_lowercase().parse::<AmazonS3ConfigKey>() {
                b = b.with_config(k, value);
            }
        }
        let mut b = b
            .with_virtual_hosted_style_request(s.virtual_hosted_style)
            .with_allow_http(s.allow_http);
        if let Some(v) = &s.bucket {
            b = b.with_bucket_name(v);
        }
        if let Some(v) = &s.endpoint {
            b = b.with_endpoint(v);
        }
        if let Some(v) = &s.region {
            b = b.with_region(v);
        }
        if let Some(v) = &s.access_key_id {
            b = b.with_access_key_id(v);
        }
        if let Some(v) = &s.secret_access_key {
            b = b.with_secret_access_key(v.expose());
        }
        if let Some(v) = &s.session_token {
            b = b.with_token(v.expose());
        }
        let s3 = Arc::new(b.build().map_err(map_err)?);
        let part_size = (s.part_size_mib.max(5) * MIB) as usize;
        Ok(BlobStore {
            inner: s3.clone(),
            part_size,
            local: None,
            max_server_copy: Some(S3_MAX_COPY),
            presign: s.redirect.then(|| Presign {
                signer: s3,
                ttl: std::time::Duration::from_secs(s.redirect_ttl_secs.max(1)),
            }),
        })
    }

    /// A Google Cloud Storage bucket (`storage.bucket`), through
    /// `GoogleCloudStorageBuilder` over the `GOOGLE_*` environment
    /// (`GOOGLE_SERVICE_ACCOUNT` / `GOOGLE_APPLICATION_CREDENTIALS`, ...);
    /// `storage.endpoint` replaces the API's base URL (a private
    /// GCS-compatible service). Upload sessions and completion take the
    /// general object-store path, as on S3; GCS's XML multipart API has S3's
    /// 5 MiB minimum part.
    pub fn gcs(s: &StorageSettings) -> Result<Self> {
        use object_store::gcp::{GoogleCloudStorageBuilder, GoogleConfigKey};
        let mut b = GoogleCloudStorageBuilder::new().with_client_options(client_options(s)?);
        for (key, value) in env_with_prefix("GOOGLE_") {
            if let Ok(k) = key.to_ascii_lowercase().parse::<GoogleConfigKey>() {
                b = b.with_config(k, value);
            }
        }
        if let Some(v) = &s.bucket {
            b = b.with_bucket_name(v);
        }
        if let Some(v) = &s.endpoint {
            b = b.with_base_url(v);
        }
        let gcs = Arc::new(b.build().map_err(map_err)?);
        Ok(Self::remote(gcs, s, None))
    }

    /// An Azure Blob Storage container (`storage.bucket`), through
    /// `MicrosoftAzureBuilder` over the `AZURE_*` environment
    /// (`AZURE_STORAGE_ACCOUNT_NAME`, `AZURE_STORAGE_ACCOUNT_KEY`, a client
    /// secret or managed identity, `AZURE_STORAGE_USE_EMULATOR` for
    /// Azurite, ...); `storage.endpoint` names a private endpoint.
    /// object_store copies an Azure blob with Copy Blob, which the service
    /// may finish asynchronously, so completion never relies on a
    /// server-side copy here: it streams (`max_server_copy` = 0).
    pub fn azure(s: &StorageSettings) -> Result<Self> {
        use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
        let mut b = MicrosoftAzureBuilder::new().with_client_options(client_options(s)?);
        for (key, value) in env_with_prefix("AZURE_") {
            if let Ok(k) = key.to_ascii_lowercase().parse::<AzureConfigKey>() {
                b = b.with_config(k, value);
            }
        }
        if let Some(v) = &s.bucket {
            b = b.with_container_name(v);
        }
        if let Some(v) = &s.endpoint {
            b = b.with_endpoint(v.clone());
        }
        let azure = Arc::new(b.build().map_err(map_err)?);
        Ok(Self::remote(azure, s, Some(0)))
    }

    /// A cloud store without presigned redirects (GCS, Azure).
    fn remote(
        inner: Arc<dyn ObjectStore>,
        s: &StorageSettings,
        max_server_copy: Option<u64>,
    ) -> Self {
        BlobStore {
            inner,
            part_size: (s.part_size_mib.max(5) * MIB) as usize,
            local: None,
            max_server_copy,
            presign: None,
        }
    }

    /// One request to the store (a listing of at most one key), so a wrong
    /// endpoint, bucket or credential fails the start and not the first push.
    pub async fn check(&self) -> Result<()> {
        let mut listing = self.inner.list(Some(&Path::from("blobs")));
        if let Some(first) = listing.next().await {
            first.map_err(map_err)?;
        }
        Ok(())
    }

    /// A URL the client may GET `key` from directly, when the store presigns
    /// (S3 with `storage.redirect`).
    pub async fn presigned_get(&self, key: &Path) -> Result<Option<String>> {
        let Some(p) = &self.presign else {
            return Ok(None);
        };
        let url = p
            .signer
            .signed_url(reqwest::Method::GET, key, p.ttl)
            .await
            .map_err(map_err)?;
        Ok(Some(url.to_string()))
    }

    /// True when [`BlobStore::presigned_get`] hands out URLs.
    pub fn presigns(&self) -> bool {
        self.presign.is_some()
    }

    /// The part size of multipart writes (tests).
    pub fn part_size(&self) -> usize {
        self.part_size
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
    /// server-side copy on S3 up to 5 GiB, a streamed multipart copy above);
    /// `from` stays.
    pub async fn copy(&self, from: &Path, to: &Path) -> Result<()> {
        if let Some(limit) = self.max_server_copy
            && self.size(from).await?.is_some_and(|n| n > limit)
        {
            return self.stream_copy(from, to).await;
        }
        self.inner.copy(from, to).await.map_err(map_err)
    }

    pub async fn rename(&self, from: &Path, to: &Path) -> Result<()> {
        if self.max_server_copy.is_some() {
            self.copy(from, to).await?;
            return self.delete(from).await;
        }
        self.inner.rename(from, to).await.map_err(map_err)
    }

    async fn stream_copy(&self, from: &Path, to: &Path) -> Result<()> {
        let mut stream = self.read(from, None).await?.stream;
        let mut w = self.writer(to.clone()).await;
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(b) => w.write(b).await?,
                Err(e) => {
                    w.abort().await;
                    return Err(e.into());
                }
            }
        }
        w.finish().await?;
        Ok(())
    }

    /// True when session chunks go to one local file (the fast path) rather
    /// than to part objects; the registry then serializes a session's writes
    /// in-process.
    pub fn is_local(&self) -> bool {
        self.local.is_some()
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

/// Installs rustls' ring provider as the process default: the S3 client
/// (reqwest built with `rustls-no-provider`) needs one for https. A no-op
/// when one is installed already.
pub fn install_tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// HTTP client options shared by the cloud backends: plain http allowed
/// for a LAN store (`storage.allow_http`), extra CA roots from
/// `storage.ca_file`. Installs the ring TLS provider first.
fn client_options(s: &StorageSettings) -> Result<object_store::ClientOptions> {
    install_tls_provider();
    let mut client = object_store::ClientOptions::new().with_allow_http(s.allow_http);
    if let Some(path) = &s.ca_file {
        let pem = std::fs::read(path).map_err(|e| {
            StoreError::Config(format!(
                "cannot read storage.ca_file {}: {e}",
                path.display()
            ))
        })?;
        let certs = object_store::Certificate::from_pem_bundle(&pem)
            .map_err(|e| StoreError::Config(format!("storage.ca_file {}: {e}", path.display())))?;
        if certs.is_empty() {
            return Err(StoreError::Config(format!(
                "storage.ca_file {} holds no PEM certificate",
                path.display()
            )));
        }
        for cert in certs {
            client = client.with_root_certificate(cert);
        }
    }
    Ok(client)
}

/// The process environment's UTF-8 variables whose name starts with
/// `prefix`: what each builder's `from_env` reads, applied over our client
/// options (which `with_client_options` would replace wholesale afterwards).
fn env_with_prefix(prefix: &str) -> impl Iterator<Item = (String, String)> + '_ {
    std::env::vars_os().filter_map(move |(k, v)| {
        let (k, v) = (k.into_string().ok()?, v.into_string().ok()?);
        k.starts_with(prefix).then_some((k, v))
    })
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{StorageBackend, StorageSettings};

    /// The GCS backend is built from the settings (no request is sent
    /// until `check`); a missing bucket is a clear error, not a panic.
    /// (Azure is exercised against Azurite in tests/e2e/test_azure.py.)
    #[test]
    fn gcs_is_built_from_the_settings() {
        let mut s = StorageSettings {
            backend: StorageBackend::Gcs,
            bucket: Some("wharf-blobs".into()),
            endpoint: Some("http://127.0.0.1:9".into()),
            allow_http: true,
            ..StorageSettings::default()
        };
        let store = BlobStore::gcs(&s).unwrap();
        assert_eq!(store.part_size, (s.part_size_mib * MIB) as usize);
        assert!(store.presign.is_none() && store.local.is_none());
        s.bucket = None;
        if std::env::var_os("GOOGLE_BUCKET").is_none() {
            let Err(err) = BlobStore::gcs(&s) else {
                panic!("a GCS store without a bucket was built");
            };
            let err = err.to_string();
            assert!(err.to_lowercase().contains("bucket"), "{err}");
        }
    }
}
