//! The registry service: the rules of the OCI distribution spec.
//!
//! Called by the HTTP layer (`api`); calls the catalog and the blob store.
//! It knows nothing of axum or sqlx: requests arrive as validated names,
//! digests and byte streams, answers leave as plain structs.
//!
//! # The consistency rule
//! Bytes first, then the catalog row. A blob's bytes are written under a
//! staging key (`uploads/...`), hashed while they stream, compared with the
//! digest the client named, and only then copied under `blobs/<digest>`;
//! only after that copy has returned is the catalog row written that makes
//! the blob visible. A crash at any point therefore leaves at worst
//! unreferenced bytes (for the garbage collector), never a row pointing at
//! missing or partial bytes, and nothing readable under a digest it does not
//! match. Upload sessions follow the same order: a chunk's bytes are written
//! whole, and durable, before the catalog row that appends it to the session.
//!
//! # Garbage collection
//! The collector (`crate::gc`) runs while pushes and pulls go on, so a push
//! takes a claim on the digest in the catalog (`Catalog::claim_blob`) before
//! it places bytes under `blobs/<digest>` (a rename, or nothing when the
//! bytes are already there), and the row that makes them live moves the
//! blob's `used_at`. The collector deletes a blob's row (marks it
//! `deleting`, in a statement that re-checks `used_at` and references)
//! before it deletes the object, so either it saw the claim and keeps the
//! blob, or the claim waits until the object is gone and the push places
//! the bytes again. A manifest put marks each blob it names used, in its
//! own transaction, and fails with MANIFEST_BLOB_UNKNOWN if one is gone.
//!
//! On the local filesystem a session's chunks share one file (see
//! `BlobStore::session_writer`); a catalog part then names a range of it, and
//! completing the session links that file under the blob's key instead of
//! copying its bytes. Writes and the completion of one session are
//! serialized by a per-session lock (`session_lock`), so no chunk can be
//! written into a file that has become a blob. The local store belongs to one
//! server process, so an in-process lock is enough.
//!
//! # Several replicas (object stores such as S3)
//! On any other store nothing about an upload lives only in one process, so
//! any number of servers may share the catalog and the bucket and any of
//! them may serve any request of a session:
//! - each chunk is a new object `uploads/<session>/<uuid>`, and it joins the
//!   session through one conditional catalog update ("append if the session
//!   is still N bytes long"); of two racing chunks one wins, the other gets
//!   416 and its object is deleted. No lock is taken.
//! - the hasher cache (`hashers`) is keyed by session *and size*, so a
//!   replica only uses its own cached state when no other replica appended
//!   since; otherwise the completion hashes the parts again.
//! - the final blob is written with a multipart upload under its
//!   `blobs/` key, which S3 only shows once the upload completes. When the
//!   digest is not known yet (parts written by another replica), the parts
//!   are hashed while they are concatenated and the upload is completed only
//!   if the digest matches, aborted otherwise; a single part is hashed and
//!   then copied server-side. A monolithic upload streams straight into its
//!   blob key the same way. So nothing unverified is ever visible under
//!   `blobs/`.

pub mod error;
pub mod manifest;

use std::collections::HashMap;
use std::io;
use std::ops::Range;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt};

pub use self::error::{RegistryError, Result};
use crate::catalog::{Catalog, NewManifest, Referrer, StoredManifest, Upload};
use crate::digest::{Algorithm, Digest, Hasher};
use crate::names::{Reference, RepoName, valid_tag};
use crate::store::{BlobStore, ObjectRead, ObjectWriter};

/// A request or response body as the service sees it.
pub type ByteStream = BoxStream<'static, Result<Bytes, io::Error>>;

/// How long a push waits for the garbage collector to finish deleting an
/// object of the digest it is placing before it gives up with a retry answer.
const CLAIM_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// The largest image config read (for platforms and the browse view).
pub const MAX_CONFIG_BYTES: u64 = 4 * 1024 * 1024;

/// Upper bound on one page of tags, repositories or referrers.
pub const MAX_PAGE: u32 = 100_000;

/// Hashers of in-progress uploads kept in memory; past this many (abandoned
/// sessions) the cache is dropped and completions re-read their parts.
const MAX_CACHED_HASHERS: usize = 4096;

#[derive(Debug, Clone)]
pub struct Limits {
    pub max_manifest_bytes: u64,
    pub delete_enabled: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_manifest_bytes: 4 * 1024 * 1024,
            delete_enabled: true,
        }
    }
}

/// A `Range: bytes=...` request, before it is resolved against a size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ByteRange {
    /// `a-b`, inclusive.
    FromTo(u64, u64),
    /// `a-`
    From(u64),
    /// `-n`: the last n bytes.
    Suffix(u64),
}

impl ByteRange {
    fn resolve(self, size: u64) -> Option<Range<u64>> {
        let r = match self {
            ByteRange::FromTo(a, b) if a <= b && a < size => a..(b.saturating_add(1)).min(size),
            ByteRange::From(a) if a < size => a..size,
            ByteRange::Suffix(n) if n > 0 && size > 0 => size.saturating_sub(n)..size,
            _ => return None,
        };
        Some(r)
    }
}

/// A blob about to be streamed to a client.
pub struct BlobBody {
    pub size: u64,
    /// Set when a range was asked for (a 206 answer).
    pub range: Option<Range<u64>>,
    pub stream: ByteStream,
}

/// Where an upload session stands.
#[derive(Debug, Clone)]
pub struct UploadStatus {
    pub id: String,
    pub size: u64,
}

pub struct PutManifest {
    pub digest: Digest,
    pub subject: Option<Digest>,
    /// The media type the manifest was stored with (for events).
    pub media_type: String,
}

pub struct Page<T> {
    pub items: Vec<T>,
    /// The `last` to ask for the next page, when there is one.
    pub next: Option<String>,
}

pub struct Registry {
    catalog: Catalog,
    store: BlobStore,
    limits: Limits,
    /// sha256 state of uploads at their current size, so a completion need
    /// not read the bytes again. A cache only: any replica can complete any
    /// upload by re-hashing its parts.
    hashers: Mutex<HashMap<String, (u64, Hasher)>>,
    /// Local filesystem only: one lock per upload session with a request in
    /// progress, so its chunk writes and its completion never overlap.
    /// Object stores take no lock (see "Several replicas").
    session_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// A chunk written to the store, not yet in the catalog.
struct Chunk {
    key: object_store::path::Path,
    written: u64,
    /// The session's hasher after this chunk, if it was cached.
    hasher: Option<Hasher>,
}

/// Bytes hashed on a blocking thread at once (while the next batch arrives).
const HASH_BATCH: usize = 1024 * 1024;

pub fn parse_name(name: &str) -> Result<RepoName> {
    RepoName::parse(name).ok_or_else(|| RegistryError::NameInvalid(name.to_owned()))
}

pub fn parse_digest(s: &str) -> Result<Digest> {
    s.parse::<Digest>()
        .map_err(|e| RegistryError::DigestInvalid(format!("invalid digest {s:?}: {e}")))
}

pub fn parse_reference(s: &str) -> Result<Reference> {
    if s.contains(':') {
        parse_digest(s).map(Reference::Digest)
    } else if valid_tag(s) {
        Ok(Reference::Tag(s.to_owned()))
    } else {
        Err(RegistryError::ManifestInvalid(format!("invalid tag {s:?}")))
    }
}

/// Upload ids are UUIDs we made; anything else is unknown, and never reaches
/// the store as part of a key.
fn check_upload_id(id: &str) -> Result<()> {
    uuid::Uuid::parse_str(id)
        .map(|_| ())
        .map_err(|_| RegistryError::BlobUploadUnknown(id.to_owned()))
}

fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

impl Registry {
    pub fn new(catalog: Catalog, store: BlobStore, limits: Limits) -> Self {
        Registry {
            catalog,
            store,
            limits,
            hashers: Mutex::new(HashMap::new()),
            session_locks: Mutex::new(HashMap::new()),
        }
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// What the catalog says is stored (for the metrics).
    pub async fn stored_totals(&self) -> Result<crate::metrics::StoredTotals> {
        let (blobs, bytes, uploads) = self.catalog.stored_totals().await?;
        Ok(crate::metrics::StoredTotals {
            blobs,
            bytes,
            uploads,
        })
    }

    /// Whether the catalog and the store answer (for `/readyz`): a `SELECT 1`
    /// and the head of a key that need not exist. The error says which failed.
    pub async fn ready(&self) -> std::result::Result<(), String> {
        self.catalog
            .ping()
            .await
            .map_err(|e| format!("catalog: {e}"))?;
        self.store
            .size(&object_store::path::Path::from("readyz-probe"))
            .await
            .map_err(|e| format!("store: {e}"))?;
        Ok(())
    }

    pub fn store(&self) -> &BlobStore {
        &self.store
    }

    // ---- blobs ------------------------------------------------------------

    /// Size of a blob the repository may serve.
    pub async fn blob_size(&self, repo: &RepoName, digest: &Digest) -> Result<u64> {
        self.catalog
            .repository_blob_size(repo.as_str(), digest.as_str())
            .await?
            .ok_or_else(|| RegistryError::BlobUnknown(digest.to_string()))
    }

    pub async fn open_blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
        range: Option<ByteRange>,
    ) -> Result<BlobBody> {
        let size = self.blob_size(repo, digest).await?;
        let wanted = match range {
            Some(r) => Some(
                r.resolve(size)
                    .ok_or(RegistryError::RangeNotSatisfiable { size })?,
            ),
            None => None,
        };
        let key = BlobStore::blob_key(digest);
        let read = match self.store.read(&key, wanted.clone()).await {
            Ok(read) => read,
            Err(crate::store::StoreError::NotFound(_)) => {
                tracing::error!(%digest, "catalog lists a blob the store does not have");
                return Err(RegistryError::BlobUnknown(digest.to_string()));
            }
            Err(e) => return Err(e.into()),
        };
        let ObjectRead { range, stream, .. } = read;
        Ok(BlobBody {
            size,
            range: wanted.map(|_| range),
            stream,
        })
    }

    /// A presigned URL to GET a blob the repository may serve straight from
    /// the store, when the store hands those out (S3 with
    /// `storage.redirect`); `None` otherwise.
    pub async fn blob_redirect(&self, repo: &RepoName, digest: &Digest) -> Result<Option<String>> {
        if !self.store.presigns() {
            return Ok(None);
        }
        self.blob_size(repo, digest).await?;
        Ok(self
            .store
            .presigned_get(&BlobStore::blob_key(digest))
            .await?)
    }

    pub async fn delete_blob(&self, repo: &RepoName, digest: &Digest) -> Result<()> {
        self.check_deletes()?;
        if self
            .catalog
            .unlink_blob(repo.as_str(), digest.as_str())
            .await?
        {
            Ok(())
        } else {
            Err(RegistryError::BlobUnknown(digest.to_string()))
        }
    }

    fn check_deletes(&self) -> Result<()> {
        if self.limits.delete_enabled {
            Ok(())
        } else {
            Err(RegistryError::Unsupported(
                "deletes are disabled on this registry".into(),
            ))
        }
    }

    /// Cross-repository mount. `Ok(None)` means the blob is not available to
    /// mount and the client should upload it (the 202 fallback).
    pub async fn mount(
        &self,
        repo: &RepoName,
        digest: &Digest,
        from: Option<&RepoName>,
    ) -> Result<Option<u64>> {
        let size = match from {
            Some(from) => {
                self.catalog
                    .repository_blob_size(from.as_str(), digest.as_str())
                    .await?
            }
            None => self.catalog.blob_size(digest.as_str()).await?,
        };
        if size.is_none() {
            return Ok(None);
        }
        // Linked only if the blob is still live at that moment (the garbage
        // collector may have taken it since): otherwise a normal upload.
        Ok(self
            .catalog
            .mount_blob(repo.as_str(), digest.as_str())
            .await?)
    }

    /// Reserves `digest` in the catalog before its bytes are placed under
    /// `blobs/` (see "Garbage collection" above). Waits while the collector
    /// is deleting the digest's old object, which takes one store delete.
    /// Returns the incarnation of the claimed row, for `link_blob`.
    async fn claim_blob(&self, digest: &Digest, size: u64) -> Result<String> {
        use crate::catalog::Claim;
        let deadline = tokio::time::Instant::now() + CLAIM_WAIT;
        loop {
            match self.catalog.claim_blob(digest.as_str(), size).await? {
                Claim::Claimed(incarnation) => return Ok(incarnation),
                Claim::Deleting if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
                Claim::Deleting => return Err(RegistryError::BlobBusy(digest.to_string())),
            }
        }
    }

    /// Makes placed bytes visible: the row becomes live and `repo` may serve
    /// them.
    async fn link_blob(&self, repo: &RepoName, digest: &Digest, incarnation: &str) -> Result<()> {
        if self
            .catalog
            .link_blob(repo.as_str(), digest.as_str(), incarnation)
            .await?
        {
            Ok(())
        } else {
            // The claim outlived the collector's grace period (a push that
            // stalled for longer than it) and the digest is being deleted.
            Err(RegistryError::BlobBusy(digest.to_string()))
        }
    }

    /// Repositories that may serve a blob (at most 1000).
    pub async fn repositories_with_blob(&self, digest: &Digest) -> Result<Vec<RepoName>> {
        Ok(self
            .catalog
            .repositories_with_blob(digest.as_str())
            .await?
            .iter()
            .filter_map(|n| RepoName::parse(n))
            .collect())
    }

    // ---- uploads --------------------------------------------------------------

    /// The whole blob in one request (`POST ?digest=`).
    pub async fn upload_monolithic(
        &self,
        repo: &RepoName,
        digest: &Digest,
        body: ByteStream,
    ) -> Result<u64> {
        if !self.store.is_local() {
            return self.upload_monolithic_direct(repo, digest, body).await;
        }
        // Staged under a session id that has no catalog row: if we die here,
        // only an orphan object under uploads/ remains.
        let staging = self.store.session_part_key(&new_id());
        let writer = self.store.session_writer(staging.clone(), 0).await;
        let mut hasher = Some(digest.algorithm().hasher());
        let size = write_object(writer, body, &mut hasher, None).await?;
        if hasher.map(Hasher::finish).as_ref() != Some(digest) {
            self.store.delete(&staging).await?;
            return Err(digest_mismatch(digest));
        }
        let incarnation = match self.claim_blob(digest, size).await {
            Ok(i) => i,
            Err(e) => {
                self.store.delete(&staging).await?;
                return Err(e);
            }
        };
        let key = BlobStore::blob_key(digest);
        if self.store.size(&key).await? == Some(size) {
            self.store.delete(&staging).await?;
        } else {
            self.store.rename(&staging, &key).await?;
        }
        // The bytes are in place under their digest: now the row.
        self.link_blob(repo, digest, &incarnation).await?;
        Ok(size)
    }

    /// Object stores: the bytes stream straight into the blob's key, hashed
    /// on the way; the (multipart) write is completed only when the digest
    /// matches, and aborted otherwise, so nothing shows under `blobs/`
    /// before it is verified.
    async fn upload_monolithic_direct(
        &self,
        repo: &RepoName,
        digest: &Digest,
        body: ByteStream,
    ) -> Result<u64> {
        let key = BlobStore::blob_key(digest);
        let writer = self.store.writer(key).await;
        let mut hasher = Some(digest.algorithm().hasher());
        let writer = stream_object(writer, body, &mut hasher, None).await?;
        if hasher.map(Hasher::finish).as_ref() != Some(digest) {
            writer.abort().await;
            return Err(digest_mismatch(digest));
        }
        // Claimed before the write completes, which is when the object
        // appears under `blobs/`.
        let incarnation = match self.claim_blob(digest, writer.written()).await {
            Ok(i) => i,
            Err(e) => {
                writer.abort().await;
                return Err(e);
            }
        };
        let size = writer.finish().await?;
        self.link_blob(repo, digest, &incarnation).await?;
        Ok(size)
    }

    pub async fn start_upload(&self, repo: &RepoName) -> Result<UploadStatus> {
        let id = new_id();
        self.catalog.create_upload(&id, repo.as_str()).await?;
        Ok(UploadStatus { id, size: 0 })
    }

    async fn load_upload(&self, repo: &RepoName, id: &str) -> Result<Upload> {
        check_upload_id(id)?;
        match self.read_upload(id).await? {
            Some(u) if u.repository == repo.as_str() => Ok(u),
            _ => Err(RegistryError::BlobUploadUnknown(id.to_owned())),
        }
    }

    pub async fn upload_status(&self, repo: &RepoName, id: &str) -> Result<UploadStatus> {
        let u = self.load_upload(repo, id).await?;
        Ok(UploadStatus {
            id: id.to_owned(),
            size: u.size,
        })
    }

    /// Appends a chunk. `start` is the first byte of a `Content-Range`, which
    /// must be where the upload ends; `len` the length the client announced.
    pub async fn upload_chunk(
        &self,
        repo: &RepoName,
        id: &str,
        start: Option<u64>,
        len: Option<u64>,
        body: ByteStream,
    ) -> Result<UploadStatus> {
        let upload = self.load_upload(repo, id).await?;
        let lock = self.session_lock(id);
        let size = {
            let _guard = lock_opt(&lock).await;
            self.append(id, &upload, start, len, body).await
        };
        self.release_session_lock(id, lock);
        let size = size?;
        Ok(UploadStatus {
            id: id.to_owned(),
            size,
        })
    }

    /// Writes one chunk (see `write_chunk`), then appends it in the catalog.
    /// Returns the new size.
    async fn append(
        &self,
        id: &str,
        upload: &Upload,
        start: Option<u64>,
        len: Option<u64>,
        body: ByteStream,
    ) -> Result<u64> {
        let Some(chunk) = self.write_chunk(id, upload, start, len, body).await? else {
            return Ok(upload.size);
        };
        if !self
            .catalog
            .append_upload_part(id, upload.size, chunk.key.as_ref(), chunk.written)
            .await?
        {
            // The upload was cancelled (appends are serialized by the lock).
            if upload.parts.iter().all(|p| p.key != chunk.key.as_ref()) {
                self.store.delete(&chunk.key).await?;
            }
            let now = self.load_upload_any(id).await?;
            return Err(RegistryError::UploadOutOfOrder {
                upload: id.to_owned(),
                size: now.size,
            });
        }
        let size = upload.size + chunk.written;
        self.put_hasher(id, size, chunk.hasher);
        Ok(size)
    }

    /// Writes one chunk of a session at its end, durably, with no catalog
    /// row yet. `None` for an empty chunk. The caller holds the session lock.
    async fn write_chunk(
        &self,
        id: &str,
        upload: &Upload,
        start: Option<u64>,
        len: Option<u64>,
        body: ByteStream,
    ) -> Result<Option<Chunk>> {
        if start.is_some_and(|s| s != upload.size) {
            return Err(RegistryError::UploadOutOfOrder {
                upload: id.to_owned(),
                size: upload.size,
            });
        }
        // The caller holds the session lock; another request may have
        // appended while we waited for it.
        let now = self.load_upload_any(id).await?;
        if now.size != upload.size {
            return Err(RegistryError::UploadOutOfOrder {
                upload: id.to_owned(),
                size: now.size,
            });
        }
        let mut hasher = self.take_hasher(id, upload.size);
        let key = self.store.session_part_key(id);
        let offset = part_ranges(&upload.parts)
            .filter(|(p, _)| p.key == key.as_ref())
            .map(|(_, r)| r.end)
            .max()
            .unwrap_or(0);
        let writer = self.store.session_writer(key.clone(), offset).await;
        // Once `finish` has returned the chunk's bytes are durable (synced
        // when storage.fsync is on), before any catalog row refers to them:
        // the part row of `append`, or the blob row of a completion. This is
        // where "bytes first" is enforced for sessions; nothing is synced
        // twice (the local session file is linked, not copied, at the end).
        let written = write_object(writer, body, &mut hasher, len).await?;
        if written == 0 {
            if upload.parts.iter().all(|p| p.key != key.as_ref()) {
                self.store.delete(&key).await?;
            }
            self.put_hasher(id, upload.size, hasher);
            return Ok(None);
        }
        Ok(Some(Chunk {
            key,
            written,
            hasher,
        }))
    }

    /// The session's row and its parts, consistent with each other: the
    /// two are read by separate queries, and another replica may append a
    /// part in between; a completion must never use parts beyond the size it
    /// verified. Read again until the parts add up to the size.
    async fn read_upload(&self, id: &str) -> Result<Option<Upload>> {
        for _ in 0..8 {
            match self.catalog.upload(id).await? {
                Some(u) if u.parts.iter().map(|p| p.size).sum::<u64>() != u.size => {
                    tokio::task::yield_now().await;
                }
                other => return Ok(other),
            }
        }
        Err(RegistryError::BlobUploadInvalid(format!(
            "upload {id} is being written by concurrent requests; retry"
        )))
    }

    async fn load_upload_any(&self, id: &str) -> Result<Upload> {
        self.read_upload(id)
            .await?
            .ok_or_else(|| RegistryError::BlobUploadUnknown(id.to_owned()))
    }

    /// `PUT ?digest=`: the optional last chunk, then verification and commit.
    pub async fn complete_upload(
        &self,
        repo: &RepoName,
        id: &str,
        digest: &Digest,
        start: Option<u64>,
        len: Option<u64>,
        body: ByteStream,
    ) -> Result<u64> {
        let upload = self.load_upload(repo, id).await?;
        let lock = self.session_lock(id);
        let done = {
            let _guard = lock_opt(&lock).await;
            self.complete_locked(repo, id, digest, start, len, body, upload)
                .await
        };
        self.release_session_lock(id, lock);
        done
    }

    #[allow(clippy::too_many_arguments)]
    async fn complete_locked(
        &self,
        repo: &RepoName,
        id: &str,
        digest: &Digest,
        start: Option<u64>,
        len: Option<u64>,
        body: ByteStream,
        mut upload: Upload,
    ) -> Result<u64> {
        // The last chunk gets no catalog row of its own: the upload either
        // completes below, or the session stays as it was (its bytes then lie
        // past the session's end, or in a part object no row names, both
        // removed with the session).
        let hasher = match self.write_chunk(id, &upload, start, len, body).await? {
            Some(chunk) => {
                upload.size += chunk.written;
                upload.parts.push(crate::catalog::UploadPart {
                    key: chunk.key.as_ref().to_owned(),
                    size: chunk.written,
                });
                chunk.hasher
            }
            None => self.take_hasher(id, upload.size),
        };
        let known = match hasher {
            Some(h) if h.algorithm() == digest.algorithm() => Some(h.finish()),
            _ => None,
        };
        // The digest is claimed in the catalog before the bytes are placed
        // under `blobs/` (see "Garbage collection" above).
        let incarnation = if self.store.is_local() {
            let computed = match known {
                Some(d) => d,
                None => self.rehash(id, &upload, digest.algorithm()).await?,
            };
            if computed != *digest {
                self.discard_upload(id).await?;
                return Err(digest_mismatch(digest));
            }
            let incarnation = self.claim_blob(digest, upload.size).await?;
            self.commit_local(&upload, digest).await?;
            incarnation
        } else {
            let incarnation = self.claim_blob(digest, upload.size).await?;
            if let Err(e) = self.commit_object(id, &upload, digest, known).await {
                if matches!(e, RegistryError::DigestInvalid(_)) {
                    self.discard_upload(id).await?;
                }
                return Err(e);
            }
            incarnation
        };
        // Bytes verified and in place: now the row, and the session ends.
        if !self
            .catalog
            .finish_upload(id, repo.as_str(), digest.as_str(), &incarnation)
            .await?
        {
            return Err(RegistryError::BlobBusy(digest.to_string()));
        }
        self.remove_upload_objects(id).await;
        Ok(upload.size)
    }

    /// Local filesystem: puts the verified bytes of a session under the
    /// blob's key, a hard link of the session file.
    async fn commit_local(&self, upload: &Upload, digest: &Digest) -> Result<()> {
        let key = BlobStore::blob_key(digest);
        if self.store.size(&key).await? == Some(upload.size) {
            return Ok(());
        }
        match upload.parts.as_slice() {
            [] => {
                let w = self.store.writer(key.clone()).await;
                w.finish().await?;
            }
            // One object holds every byte (the session file, or one part):
            // copy it, which is a hard link locally, not a copy of the bytes.
            // Not rename: if we die before the catalog row, the session still
            // has its bytes and can be completed again. The session file may
            // hold garbage past the upload's size from an interrupted chunk:
            // trimmed first.
            [first, rest @ ..] if rest.iter().all(|p| p.key == first.key) => {
                let from = object_store::path::Path::from(first.key.as_str());
                self.store.trim(&from, upload.size).await?;
                self.store.copy(&from, &key).await?
            }
            many => self.concat(many, &key, None).await?,
        }
        Ok(())
    }

    /// Object stores: writes the blob of a session under its key, verified.
    /// `known` is the session's digest when this replica hashed every chunk
    /// as it arrived; otherwise the parts are hashed now: a single part
    /// before its server-side copy, several while they are concatenated into
    /// the blob's multipart upload, which is completed only if the digest
    /// matches. `DigestInvalid` when it does not.
    async fn commit_object(
        &self,
        id: &str,
        upload: &Upload,
        digest: &Digest,
        known: Option<Digest>,
    ) -> Result<()> {
        let key = BlobStore::blob_key(digest);
        let exists = self.store.size(&key).await? == Some(upload.size);
        let known = match known {
            Some(d) => Some(d),
            // The bytes are needed only to hash them: read them once.
            None if exists || upload.parts.len() <= 1 => {
                Some(self.rehash(id, upload, digest.algorithm()).await?)
            }
            None => None,
        };
        if let Some(computed) = &known
            && computed != digest
        {
            return Err(digest_mismatch(digest));
        }
        if exists {
            return Ok(());
        }
        match upload.parts.as_slice() {
            [] => {
                let w = self.store.writer(key.clone()).await;
                w.finish().await?;
            }
            [one] => {
                let from = object_store::path::Path::from(one.key.as_str());
                self.store.copy(&from, &key).await?
            }
            many => {
                let verify = if known.is_some() { None } else { Some(digest) };
                self.concat(many, &key, verify).await?
            }
        }
        Ok(())
    }

    pub async fn cancel_upload(&self, repo: &RepoName, id: &str) -> Result<()> {
        self.load_upload(repo, id).await?;
        let lock = self.session_lock(id);
        let done = {
            let _guard = lock_opt(&lock).await;
            self.discard_upload(id).await
        };
        self.release_session_lock(id, lock);
        done
    }

    /// The session's lock on the local filesystem; `None` elsewhere.
    fn session_lock(&self, id: &str) -> Option<Arc<tokio::sync::Mutex<()>>> {
        if !self.store.is_local() {
            return None;
        }
        let mut map = self.session_locks.lock().unwrap_or_else(|p| p.into_inner());
        Some(map.entry(id.to_owned()).or_default().clone())
    }

    /// Drops the session's lock from the map once nobody else holds or
    /// waits for it.
    fn release_session_lock(&self, id: &str, lock: Option<Arc<tokio::sync::Mutex<()>>>) {
        let Some(lock) = lock else { return };
        let mut map = self.session_locks.lock().unwrap_or_else(|p| p.into_inner());
        drop(lock);
        if map.get(id).is_some_and(|l| Arc::strong_count(l) == 1) {
            map.remove(id);
        }
    }

    async fn discard_upload(&self, id: &str) -> Result<()> {
        self.take_hasher(id, u64::MAX);
        self.catalog.delete_upload(id).await?;
        self.remove_upload_objects(id).await;
        Ok(())
    }

    async fn remove_upload_objects(&self, id: &str) {
        let prefix = object_store::path::Path::from(format!("uploads/{id}"));
        if let Err(e) = self.store.delete_prefix(&prefix).await {
            tracing::warn!(upload = id, error = %e, "could not remove an upload's parts; GC will");
        }
    }

    async fn rehash(&self, id: &str, upload: &Upload, algorithm: Algorithm) -> Result<Digest> {
        let mut hasher = algorithm.hasher();
        for (part, range) in part_ranges(&upload.parts) {
            let read = self
                .store
                .read(&part.key.as_str().into(), Some(range))
                .await
                .map_err(|e| {
                    tracing::error!(upload = id, error = %e, "upload part unreadable");
                    RegistryError::BlobUploadInvalid(format!(
                        "upload {id} lost a part; start it again"
                    ))
                })?;
            let mut stream = read.stream;
            while let Some(chunk) = stream.next().await {
                hasher.update(&chunk.map_err(crate::store::StoreError::from)?);
            }
        }
        Ok(hasher.finish())
    }

    /// Concatenates `parts` into `to` (a multipart upload on S3). With
    /// `verify`, the bytes are hashed on the way and the write is completed
    /// only if they match that digest (aborted otherwise: `DigestInvalid`).
    async fn concat(
        &self,
        parts: &[crate::catalog::UploadPart],
        to: &object_store::path::Path,
        verify: Option<&Digest>,
    ) -> Result<()> {
        let mut w = self.store.writer(to.clone()).await;
        let mut hasher = verify.map(|d| d.algorithm().hasher());
        for (part, range) in part_ranges(parts) {
            let mut stream = match self
                .store
                .read(&part.key.as_str().into(), Some(range))
                .await
            {
                Ok(read) => read.stream,
                Err(e) => {
                    w.abort().await;
                    return Err(e.into());
                }
            };
            while let Some(chunk) = stream.next().await {
                let b = match chunk {
                    Ok(b) => b,
                    Err(e) => {
                        w.abort().await;
                        return Err(crate::store::StoreError::from(e).into());
                    }
                };
                if let Some(h) = hasher.as_mut() {
                    h.update(&b);
                }
                if let Err(e) = w.write(b).await {
                    w.abort().await;
                    return Err(e.into());
                }
            }
        }
        if let (Some(h), Some(d)) = (hasher, verify)
            && h.finish() != *d
        {
            w.abort().await;
            return Err(digest_mismatch(d));
        }
        w.finish().await?;
        Ok(())
    }

    fn take_hasher(&self, id: &str, at: u64) -> Option<Hasher> {
        let mut map = self.hashers.lock().unwrap_or_else(|p| p.into_inner());
        match map.remove(id) {
            Some((size, h)) if size == at => Some(h),
            _ if at == 0 => Some(Algorithm::Sha256.hasher()),
            _ => None,
        }
    }

    fn put_hasher(&self, id: &str, at: u64, hasher: Option<Hasher>) {
        let Some(h) = hasher else { return };
        let mut map = self.hashers.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_CACHED_HASHERS {
            map.clear();
        }
        map.insert(id.to_owned(), (at, h));
    }

    // ---- manifests -------------------------------------------------------------

    pub async fn put_manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
        content_type: Option<&str>,
        bytes: &[u8],
    ) -> Result<PutManifest> {
        let parsed = manifest::parse(content_type, bytes)?;
        let digest = match reference {
            Reference::Digest(d) => {
                let computed = Digest::of(d.algorithm(), bytes);
                if computed != *d {
                    return Err(digest_mismatch(d));
                }
                computed
            }
            Reference::Tag(_) => Digest::of(Algorithm::Sha256, bytes),
        };
        if let Some(missing) = self
            .catalog
            .missing_blobs(repo.as_str(), &parsed.blobs)
            .await?
            .into_iter()
            .next()
        {
            return Err(RegistryError::ManifestBlobUnknown(missing));
        }
        if let Some(missing) = self
            .catalog
            .missing_manifests(repo.as_str(), &parsed.manifests)
            .await?
            .into_iter()
            .next()
        {
            return Err(RegistryError::ManifestBlobUnknown(missing));
        }
        let subject = parsed.subject.as_ref().map(|s| s.to_string());
        let (total_size, platforms) = self
            .summarize(repo.as_str(), &parsed.media_type, bytes)
            .await;
        let new = NewManifest {
            digest: digest.as_str(),
            media_type: &parsed.media_type,
            artifact_type: parsed.artifact_type.as_deref(),
            subject: subject.as_deref(),
            annotations: parsed.annotations.as_deref(),
            content: bytes,
            blobs: &parsed.blobs,
            manifests: &parsed.manifests,
            total_size,
            platforms: Some(&platforms),
        };
        let tag = match reference {
            Reference::Tag(t) => Some(t.as_str()),
            Reference::Digest(_) => None,
        };
        if let Some(gone) = self.catalog.put_manifest(repo.as_str(), &new, tag).await? {
            // Collected between the check above and the transaction.
            return Err(RegistryError::ManifestBlobUnknown(gone));
        }
        Ok(PutManifest {
            digest,
            subject: parsed.subject,
            media_type: parsed.media_type,
        })
    }

    /// The browse summary of a manifest (see `crate::browse`): its total
    /// compressed size and its platforms as JSON array text. An image's
    /// size is its config + layers, its platform is read from its config
    /// blob (bounded by [`MAX_CONFIG_BYTES`]); an index's size is the sum of
    /// its children's (None if one is unknown), its platforms its
    /// descriptors'. Never fails: what cannot be told is left out.
    pub async fn summarize(
        &self,
        repo: &str,
        media_type: &str,
        bytes: &[u8],
    ) -> (Option<i64>, String) {
        let parts = manifest::summary_parts(media_type, bytes);
        let mut platforms = parts.platforms;
        let mut total = parts.image_size;
        if let Some((config, size)) = &parts.config
            && (*size as u64) <= MAX_CONFIG_BYTES
            && let Ok(digest) = config.parse::<Digest>()
        {
            match self.read_blob_bounded(&digest, MAX_CONFIG_BYTES).await {
                Ok(bytes) => platforms.extend(manifest::config_platform(&bytes)),
                Err(e) => tracing::debug!(%digest, error = %e, "no platform from the config"),
            }
        }
        if !parts.children.is_empty() {
            total = match self.catalog.manifest_summaries(repo, &parts.children).await {
                Ok(found) if found.len() == parts.children.len() => {
                    found.iter().map(|(_, s, _)| *s).sum::<Option<i64>>()
                }
                _ => None,
            };
        }
        let platforms = serde_json::to_string(&platforms).unwrap_or_else(|_| "[]".into());
        (total, platforms)
    }

    /// Fills in the summaries of manifests stored before the catalog kept
    /// them (an older wharf's catalog): images first, then indexes, whose
    /// sizes need their children's. Returns how many were filled in.
    pub async fn summarize_missing(&self) -> Result<u64> {
        let mut done = 0;
        for indexes in [false, true] {
            loop {
                let batch = self.catalog.unsummarized(indexes, 500).await?;
                if batch.is_empty() {
                    break;
                }
                for m in batch {
                    let (total, platforms) = self
                        .summarize(&m.repository, &m.media_type, &m.content)
                        .await;
                    self.catalog
                        .set_summary(m.repository_id, &m.digest, total, &platforms)
                        .await?;
                    done += 1;
                }
            }
        }
        if done > 0 {
            tracing::info!(
                manifests = done,
                "filled in the browse summaries of older manifests"
            );
        }
        Ok(done)
    }

    /// A whole blob, read only if it is at most `limit` bytes (an image
    /// config): larger ones are refused before any byte is read.
    pub async fn read_blob_bounded(&self, digest: &Digest, limit: u64) -> Result<Vec<u8>> {
        let key = BlobStore::blob_key(digest);
        let size = self
            .catalog
            .blob_size(digest.as_str())
            .await?
            .ok_or_else(|| RegistryError::BlobUnknown(digest.to_string()))?;
        if size > limit {
            return Err(RegistryError::SizeInvalid(format!(
                "blob {digest} is {size} bytes, more than the {limit} bytes read here"
            )));
        }
        let read = match self.store.read(&key, None).await {
            Ok(read) => read,
            Err(crate::store::StoreError::NotFound(_)) => {
                return Err(RegistryError::BlobUnknown(digest.to_string()));
            }
            Err(e) => return Err(e.into()),
        };
        let mut out = Vec::with_capacity(size as usize);
        let mut stream = read.stream;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| RegistryError::Store(crate::store::StoreError::Io(e)))?;
            if (out.len() + chunk.len()) as u64 > limit {
                return Err(RegistryError::SizeInvalid(format!(
                    "blob {digest} is larger than the {limit} bytes read here"
                )));
            }
            out.extend_from_slice(&chunk);
        }
        Ok(out)
    }

    pub async fn get_manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
    ) -> Result<StoredManifest> {
        let found = match reference {
            Reference::Digest(d) => {
                self.catalog
                    .manifest_by_digest(repo.as_str(), d.as_str())
                    .await?
            }
            Reference::Tag(t) => self.catalog.manifest_by_tag(repo.as_str(), t).await?,
        };
        found.ok_or_else(|| RegistryError::ManifestUnknown(reference.to_string()))
    }

    pub async fn delete_manifest(&self, repo: &RepoName, reference: &Reference) -> Result<()> {
        self.check_deletes()?;
        let deleted = match reference {
            Reference::Digest(d) => {
                self.catalog
                    .delete_manifest(repo.as_str(), d.as_str())
                    .await?
            }
            Reference::Tag(t) => self.catalog.delete_tag(repo.as_str(), t).await?,
        };
        if deleted {
            Ok(())
        } else {
            Err(RegistryError::ManifestUnknown(reference.to_string()))
        }
    }

    // ---- listings ------------------------------------------------------------------

    pub async fn tags(
        &self,
        repo: &RepoName,
        n: Option<u32>,
        last: Option<&str>,
    ) -> Result<Page<String>> {
        let limit = n.unwrap_or(MAX_PAGE).min(MAX_PAGE);
        let items = if limit == 0 {
            Vec::new()
        } else {
            self.catalog
                .tags(repo.as_str(), last.unwrap_or(""), limit + 1)
                .await?
        };
        // Only an empty page needs to tell "no such repository" from "no
        // (more) tags": one query instead of two for the usual listing.
        if items.is_empty() && !self.catalog.repository_exists(repo.as_str()).await? {
            return Err(RegistryError::NameUnknown(repo.to_string()));
        }
        Ok(page(items, limit, |t| t.clone()))
    }

    /// Repository names in lexical order, keeping only those `visible`
    /// accepts (the caller's pull rights), a page at a time.
    pub async fn repositories(
        &self,
        n: Option<u32>,
        last: Option<&str>,
        visible: &(dyn Fn(&str) -> bool + Sync),
    ) -> Result<Page<String>> {
        let limit = n.unwrap_or(MAX_PAGE).min(MAX_PAGE);
        if limit == 0 {
            return Ok(Page {
                items: Vec::new(),
                next: None,
            });
        }
        let mut items = Vec::new();
        let mut cursor = last.unwrap_or("").to_owned();
        // Read in batches until the page is full (plus one, to know whether
        // there is a next page) or the catalog ends.
        let batch = (limit + 1).max(1000);
        loop {
            let rows = self.catalog.repositories(&cursor, batch).await?;
            let exhausted = rows.len() < batch as usize;
            if let Some(l) = rows.last() {
                cursor = l.clone();
            }
            items.extend(rows.into_iter().filter(|r| visible(r)));
            if exhausted || items.len() > limit as usize {
                break;
            }
        }
        Ok(page(items, limit, |r| r.clone()))
    }

    /// Manifests whose subject is `subject`, optionally of one artifact type.
    /// Never "unknown": a subject nobody refers to has an empty list.
    pub async fn referrers(
        &self,
        repo: &RepoName,
        subject: &Digest,
        artifact_type: Option<&str>,
        n: Option<u32>,
        last: Option<&str>,
    ) -> Result<Page<Referrer>> {
        let limit = n.unwrap_or(1000).clamp(1, MAX_PAGE);
        let rows = self
            .catalog
            .referrers(
                repo.as_str(),
                subject.as_str(),
                artifact_type,
                last.unwrap_or(""),
                limit + 1,
            )
            .await?;
        Ok(page(rows, limit, |r| r.digest.clone()))
    }
}

fn page<T>(mut items: Vec<T>, limit: u32, key: impl Fn(&T) -> String) -> Page<T> {
    let next = if items.len() > limit as usize {
        items.truncate(limit as usize);
        items.last().map(key)
    } else {
        None
    };
    Page { items, next }
}

/// Each part with the range of the object that holds it: parts that share an
/// object (the local session file) follow each other in it, in order.
fn part_ranges(
    parts: &[crate::catalog::UploadPart],
) -> impl Iterator<Item = (&crate::catalog::UploadPart, Range<u64>)> {
    let mut ends: HashMap<&str, u64> = HashMap::new();
    parts.iter().map(move |p| {
        let end = ends.entry(p.key.as_str()).or_insert(0);
        let range = *end..*end + p.size;
        *end += p.size;
        (p, range)
    })
}

/// Streams `body` into `w` and finishes it (see [`stream_object`]).
async fn write_object(
    w: ObjectWriter,
    body: ByteStream,
    hasher: &mut Option<Hasher>,
    len: Option<u64>,
) -> Result<u64> {
    Ok(stream_object(w, body, hasher, len).await?.finish().await?)
}

/// Streams `body` into `w`, hashing on the way, and returns the writer still
/// unfinished (nothing visible yet), for the caller to finish or abort. The
/// bytes count only if every one arrived (and `len` of them, if given):
/// otherwise the write is aborted.
///
/// Hashing runs on a blocking thread, a batch at a time, while the next batch
/// arrives and is handed to the writer; at most one batch is being hashed, so
/// memory stays bounded. `hasher` is left `None` when the body failed.
async fn stream_object(
    mut w: ObjectWriter,
    mut body: ByteStream,
    hasher: &mut Option<Hasher>,
    len: Option<u64>,
) -> Result<ObjectWriter> {
    type HashTask = tokio::task::JoinHandle<Hasher>;
    async fn join(task: Option<HashTask>, hasher: &mut Option<Hasher>) -> Result<()> {
        if let Some(t) = task {
            let h = t
                .await
                .map_err(|e| RegistryError::BodyRead(io::Error::other(e)))?;
            *hasher = Some(h);
        }
        Ok(())
    }
    let mut pending: Option<HashTask> = None;
    let mut batch: Vec<Bytes> = Vec::new();
    let mut batch_len = 0;
    let failed: Option<RegistryError> = loop {
        let chunk = match body.next().await {
            Some(Ok(c)) => c,
            Some(Err(e)) => break Some(RegistryError::BodyRead(e)),
            None => break None,
        };
        if hasher.is_some() || pending.is_some() {
            batch_len += chunk.len();
            batch.push(chunk.clone());
        }
        if let Err(e) = w.write(chunk).await {
            break Some(e.into());
        }
        if batch_len >= HASH_BATCH {
            if let Err(e) = join(pending.take(), hasher).await {
                break Some(e);
            }
            if let Some(mut h) = hasher.take() {
                let full = std::mem::take(&mut batch);
                batch_len = 0;
                pending = Some(tokio::task::spawn_blocking(move || {
                    for b in &full {
                        h.update(b);
                    }
                    h
                }));
            }
        }
    };
    let joined = join(pending.take(), hasher).await;
    let failed = failed.or(joined.err());
    if let Some(e) = failed {
        *hasher = None;
        w.abort().await;
        return Err(e);
    }
    if let Some(h) = hasher.as_mut() {
        for b in &batch {
            h.update(b);
        }
    }
    if let Some(len) = len
        && w.written() != len
    {
        let got = w.written();
        w.abort().await;
        *hasher = None;
        return Err(RegistryError::SizeInvalid(format!(
            "announced {len} bytes but {got} arrived"
        )));
    }
    Ok(w)
}

/// Holds a session lock, when there is one.
async fn lock_opt(
    lock: &Option<Arc<tokio::sync::Mutex<()>>>,
) -> Option<tokio::sync::MutexGuard<'_, ()>> {
    match lock {
        Some(l) => Some(l.lock().await),
        None => None,
    }
}

fn digest_mismatch(d: &Digest) -> RegistryError {
    RegistryError::DigestInvalid(format!("content does not match digest {d}"))
}

#[cfg(test)]
mod tests {
    use super::ByteRange;

    #[test]
    fn ranges_resolve_against_size() {
        assert_eq!(ByteRange::FromTo(0, 9).resolve(100), Some(0..10));
        assert_eq!(ByteRange::FromTo(90, 200).resolve(100), Some(90..100));
        assert_eq!(ByteRange::From(99).resolve(100), Some(99..100));
        assert_eq!(ByteRange::Suffix(10).resolve(100), Some(90..100));
        assert_eq!(ByteRange::Suffix(1000).resolve(100), Some(0..100));
        assert_eq!(ByteRange::From(100).resolve(100), None);
        assert_eq!(ByteRange::FromTo(5, 4).resolve(100), None);
        assert_eq!(ByteRange::Suffix(0).resolve(100), None);
        assert_eq!(ByteRange::From(0).resolve(0), None);
    }
}
