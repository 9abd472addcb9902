//! The catalog's side of garbage collection (`crate::gc`): the claim a push
//! takes on a digest before placing its bytes, the lease that lets one
//! process collect at a time, the listings the mark phase reads, and the
//! conditional deletes of the sweep. The SQL is `gc_queries.rs`, compiled
//! for each dialect; every method here dispatches to it.

use super::{Catalog, Db, Result, postgres, sqlite};

/// Calls the function of `gc_queries.rs` of the catalog's dialect.
macro_rules! gc_dispatch {
    ($self:ident, $f:ident($($arg:expr),* $(,)?)) => {
        match &$self.db {
            Db::Sqlite(h) => sqlite::gc_queries::$f(h, $($arg),*).await,
            Db::Postgres(h) => postgres::gc_queries::$f(h, $($arg),*).await,
        }
    };
}

/// A blob row as the collector sees it.
#[derive(Debug, Clone)]
pub struct GcBlob {
    pub digest: String,
    pub size: u64,
    /// `live`, `pending` or `deleting`.
    pub state: String,
    pub used_at: i64,
}

/// A manifest row without its content.
#[derive(Debug, Clone)]
pub struct GcManifest {
    pub repository_id: i64,
    pub repository: String,
    pub digest: String,
    pub subject: Option<String>,
    pub size: u64,
    pub used_at: i64,
}

/// A `manifest_references` row.
#[derive(Debug, Clone)]
pub struct GcReference {
    pub repository_id: i64,
    pub manifest: String,
    pub child: String,
    /// `blob` or `manifest`.
    pub kind: String,
}

/// An upload session row.
#[derive(Debug, Clone)]
pub struct GcUpload {
    pub id: String,
    pub size: u64,
    pub updated_at: i64,
}

/// Who holds a lease and until when (unix ms).
#[derive(Debug, Clone)]
pub struct LeaseHolder {
    pub holder: String,
    pub expires_at: i64,
}

/// Outcome of [`Catalog::claim_blob`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The digest is reserved for this push for a grace period; the
    /// incarnation of its row, which [`Catalog::link_blob`] must be given.
    Claimed(String),
    /// The collector is deleting the digest's object: wait and claim again.
    Deleting,
}

impl Catalog {
    // ---- the push side ----------------------------------------------------------

    /// Reserves `digest` before a push places its bytes under `blobs/`: a new
    /// row is `pending` (invisible to pulls and mounts), an existing live
    /// one only gets its `used_at` moved. The collector never deletes a row
    /// used within its grace period, so the bytes placed after this call
    /// stay until [`Catalog::link_blob`] makes them live.
    pub async fn claim_blob(&self, digest: &str, size: u64) -> Result<Claim> {
        gc_dispatch!(self, claim_blob(digest, size))
    }

    /// Live blobs and their bytes: what the store holds under `blobs/` once
    /// no push is in flight.
    pub async fn stored_blobs(&self) -> Result<(u64, u64)> {
        gc_dispatch!(self, stored_blobs())
    }

    // ---- the lease ------------------------------------------------------------------

    /// Takes (or renews) the lease `name` for `holder` until `expires_at`,
    /// if it is free, expired, or already `holder`'s. True when taken.
    pub async fn take_lease(&self, name: &str, holder: &str, expires_at: i64) -> Result<bool> {
        gc_dispatch!(self, take_lease(name, holder, expires_at))
    }

    /// Gives the lease back (only if `holder` still has it).
    pub async fn release_lease(&self, name: &str, holder: &str) -> Result<()> {
        gc_dispatch!(self, release_lease(name, holder))
    }

    pub async fn lease(&self, name: &str) -> Result<Option<LeaseHolder>> {
        gc_dispatch!(self, lease(name))
    }

    // ---- what the mark phase reads ----------------------------------------------------

    pub async fn gc_manifests(&self) -> Result<Vec<GcManifest>> {
        gc_dispatch!(self, gc_manifests())
    }

    /// (repository id, manifest digest) of every tag.
    pub async fn gc_tagged(&self) -> Result<Vec<(i64, String)>> {
        gc_dispatch!(self, gc_tagged())
    }

    pub async fn gc_references(&self) -> Result<Vec<GcReference>> {
        gc_dispatch!(self, gc_references())
    }

    pub async fn gc_blobs(&self) -> Result<Vec<GcBlob>> {
        gc_dispatch!(self, gc_blobs())
    }

    pub async fn gc_uploads(&self) -> Result<Vec<GcUpload>> {
        gc_dispatch!(self, gc_uploads())
    }

    /// Digests whose rows a collection left `deleting` (it died between
    /// taking the row and forgetting it), at most `limit`.
    pub async fn gc_interrupted(&self, limit: u32) -> Result<Vec<String>> {
        gc_dispatch!(self, gc_interrupted(limit))
    }

    /// Is there an upload session `id`?
    pub async fn upload_exists(&self, id: &str) -> Result<bool> {
        gc_dispatch!(self, upload_exists(id))
    }

    // ---- the sweep ---------------------------------------------------------------------

    /// Deletes an untagged manifest that nothing refers to as a child and
    /// nobody used since `cutoff`. False when any of that stopped being true.
    pub async fn gc_delete_manifest(
        &self,
        repository_id: i64,
        digest: &str,
        cutoff: i64,
    ) -> Result<bool> {
        gc_dispatch!(self, gc_delete_manifest(repository_id, digest, cutoff))
    }

    /// Step one of deleting a blob: if no manifest refers to it and nobody
    /// used it since `cutoff`, the row becomes `deleting` (pushes of the
    /// digest now wait, mounts and manifest puts refuse it) and its
    /// repository links go, in one transaction. True when the collector now
    /// owns the row and may delete the object.
    pub async fn gc_mark_blob_deleting(&self, digest: &str, cutoff: i64) -> Result<bool> {
        gc_dispatch!(self, gc_mark_blob_deleting(digest, cutoff))
    }

    /// Step one of deleting an object no row knows (`blobs/` bytes left by a
    /// crash): a `deleting` row is inserted only if there is no row at all,
    /// so a push that claims the digest first wins, and one that comes later
    /// waits for step three.
    pub async fn gc_claim_orphan(&self, digest: &str, size: u64) -> Result<bool> {
        gc_dispatch!(self, gc_claim_orphan(digest, size))
    }

    /// When the object could not be deleted (a store error): the row goes
    /// back to `pending`, invisible, so pushes of the digest are not kept
    /// waiting; a push that claims it finds (or places) the bytes and makes
    /// it live, otherwise the next run collects it again.
    pub async fn gc_abandon_delete(&self, digest: &str) -> Result<()> {
        gc_dispatch!(self, gc_abandon_delete(digest))
    }

    /// Step three (after the object is gone): the `deleting` row goes (with
    /// any repository link, which can only be a leftover), and pushes of the
    /// digest may claim it anew.
    pub async fn gc_forget_blob(&self, digest: &str) -> Result<()> {
        gc_dispatch!(self, gc_forget_blob(digest))
    }

    /// Deletes an upload session not touched since `cutoff` (its parts go
    /// with it). True when it was deleted; the caller then removes its
    /// objects under `uploads/<id>/`.
    pub async fn gc_delete_upload(&self, id: &str, cutoff: i64) -> Result<bool> {
        gc_dispatch!(self, gc_delete_upload(id, cutoff))
    }
}
