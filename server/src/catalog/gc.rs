//! The catalog's side of garbage collection (`crate::gc`): the claim a push
//! takes on a digest before placing its bytes, the lease that lets one
//! process collect at a time, the listings the mark phase reads, and the
//! conditional deletes of the sweep.
//!
//! Every delete here re-checks, in its own statement, the facts the mark
//! phase relied on (no tag, no reference, `used_at` older than the cutoff),
//! so a push that commits between mark and sweep is never undone. The SQL is
//! portable (`$n` placeholders, `ON CONFLICT` upserts, no SQLite functions):
//! on PostgreSQL the conditional UPDATE/DELETE of a row that a concurrent
//! push updates waits for it and re-evaluates its WHERE on the new version,
//! which is the same guarantee SQLite's single writer gives.

use sqlx::Row;

use super::{Catalog, Result, now_ms};

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
        let now = now_ms();
        let fresh = uuid::Uuid::new_v4().simple().to_string();
        let incarnation: Option<String> = sqlx::query_scalar(
            "INSERT INTO blobs (digest, size, created_at, used_at, state, incarnation)
             VALUES ($1, $2, $3, $3, 'pending', $4)
             ON CONFLICT (digest) DO UPDATE SET used_at = excluded.used_at
              WHERE blobs.state <> 'deleting'
             RETURNING incarnation",
        )
        .bind(digest)
        .bind(size as i64)
        .bind(now)
        .bind(&fresh)
        .fetch_optional(&self.pool)
        .await?;
        Ok(match incarnation {
            Some(i) => Claim::Claimed(i),
            None => Claim::Deleting,
        })
    }

    /// Live blobs and their bytes: what the store holds under `blobs/` once
    /// no push is in flight.
    pub async fn stored_blobs(&self) -> Result<(u64, u64)> {
        let row =
            sqlx::query("SELECT COUNT(*), CAST(COALESCE(SUM(size), 0) AS BIGINT) FROM blobs WHERE state = 'live'")
                .fetch_one(&self.pool)
                .await?;
        Ok((
            row.try_get::<i64, _>(0)? as u64,
            row.try_get::<i64, _>(1)? as u64,
        ))
    }

    // ---- the lease ------------------------------------------------------------------

    /// Takes (or renews) the lease `name` for `holder` until `expires_at`,
    /// if it is free, expired, or already `holder`'s. True when taken.
    pub async fn take_lease(&self, name: &str, holder: &str, expires_at: i64) -> Result<bool> {
        let done = sqlx::query(
            "INSERT INTO leases (name, holder, expires_at) VALUES ($1, $2, $3)
             ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at
              WHERE leases.expires_at < $4 OR leases.holder = excluded.holder",
        )
        .bind(name)
        .bind(holder)
        .bind(expires_at)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Gives the lease back (only if `holder` still has it).
    pub async fn release_lease(&self, name: &str, holder: &str) -> Result<()> {
        sqlx::query("UPDATE leases SET expires_at = 0 WHERE name = $1 AND holder = $2")
            .bind(name)
            .bind(holder)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn lease(&self, name: &str) -> Result<Option<LeaseHolder>> {
        let row = sqlx::query("SELECT holder, expires_at FROM leases WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| {
            Ok(LeaseHolder {
                holder: r.try_get(0)?,
                expires_at: r.try_get(1)?,
            })
        })
        .transpose()
    }

    // ---- what the mark phase reads ----------------------------------------------------

    pub async fn gc_manifests(&self) -> Result<Vec<GcManifest>> {
        let rows = sqlx::query(
            "SELECT m.repository_id, r.name, m.digest, m.subject, m.size, m.used_at
               FROM manifests m JOIN repositories r ON r.id = m.repository_id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|r| {
                Ok(GcManifest {
                    repository_id: r.try_get(0)?,
                    repository: r.try_get(1)?,
                    digest: r.try_get(2)?,
                    subject: r.try_get(3)?,
                    size: r.try_get::<i64, _>(4)? as u64,
                    used_at: r.try_get(5)?,
                })
            })
            .collect()
    }

    /// (repository id, manifest digest) of every tag.
    pub async fn gc_tagged(&self) -> Result<Vec<(i64, String)>> {
        let rows = sqlx::query("SELECT repository_id, manifest_digest FROM tags")
            .fetch_all(&self.pool)
            .await?;
        rows.into_iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect()
    }

    pub async fn gc_references(&self) -> Result<Vec<GcReference>> {
        let rows = sqlx::query(
            "SELECT repository_id, manifest_digest, child_digest, kind FROM manifest_references",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|r| {
                Ok(GcReference {
                    repository_id: r.try_get(0)?,
                    manifest: r.try_get(1)?,
                    child: r.try_get(2)?,
                    kind: r.try_get(3)?,
                })
            })
            .collect()
    }

    pub async fn gc_blobs(&self) -> Result<Vec<GcBlob>> {
        let rows = sqlx::query("SELECT digest, size, state, used_at FROM blobs")
            .fetch_all(&self.pool)
            .await?;
        rows.into_iter()
            .map(|r| {
                Ok(GcBlob {
                    digest: r.try_get(0)?,
                    size: r.try_get::<i64, _>(1)? as u64,
                    state: r.try_get(2)?,
                    used_at: r.try_get(3)?,
                })
            })
            .collect()
    }

    pub async fn gc_uploads(&self) -> Result<Vec<GcUpload>> {
        let rows = sqlx::query("SELECT id, size, updated_at FROM uploads")
            .fetch_all(&self.pool)
            .await?;
        rows.into_iter()
            .map(|r| {
                Ok(GcUpload {
                    id: r.try_get(0)?,
                    size: r.try_get::<i64, _>(1)? as u64,
                    updated_at: r.try_get(2)?,
                })
            })
            .collect()
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
        let done = sqlx::query(
            "DELETE FROM manifests
              WHERE repository_id = $1 AND digest = $2 AND used_at < $3
                AND NOT EXISTS (SELECT 1 FROM tags t
                                 WHERE t.repository_id = $1 AND t.manifest_digest = $2)
                AND NOT EXISTS (SELECT 1 FROM manifest_references mr
                                 WHERE mr.repository_id = $1 AND mr.child_digest = $2
                                   AND mr.kind = 'manifest')",
        )
        .bind(repository_id)
        .bind(digest)
        .bind(cutoff)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Step one of deleting a blob: if no manifest refers to it and nobody
    /// used it since `cutoff`, the row becomes `deleting` (pushes of the
    /// digest now wait, mounts and manifest puts refuse it) and its
    /// repository links go, in one transaction. True when the collector now
    /// owns the row and may delete the object.
    pub async fn gc_mark_blob_deleting(&self, digest: &str, cutoff: i64) -> Result<bool> {
        let mut tx = self.write_tx().await?;
        let done = sqlx::query(
            "UPDATE blobs SET state = 'deleting'
              WHERE digest = $1 AND state <> 'deleting' AND used_at < $2
                AND NOT EXISTS (SELECT 1 FROM manifest_references mr
                                 WHERE mr.child_digest = $1 AND mr.kind = 'blob')",
        )
        .bind(digest)
        .bind(cutoff)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            return Ok(false);
        }
        sqlx::query("DELETE FROM repository_blobs WHERE digest = $1")
            .bind(digest)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Step one of deleting an object no row knows (`blobs/` bytes left by a
    /// crash): a `deleting` row is inserted only if there is no row at all,
    /// so a push that claims the digest first wins, and one that comes later
    /// waits for step three.
    pub async fn gc_claim_orphan(&self, digest: &str, size: u64) -> Result<bool> {
        let done = sqlx::query(
            "INSERT INTO blobs (digest, size, created_at, used_at, state) VALUES ($1, $2, $3, 0, 'deleting')
             ON CONFLICT (digest) DO NOTHING",
        )
        .bind(digest)
        .bind(size as i64)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    /// When the object could not be deleted (a store error): the row goes
    /// back to `pending`, invisible, so pushes of the digest are not kept
    /// waiting; a push that claims it finds (or places) the bytes and makes
    /// it live, otherwise the next run collects it again.
    pub async fn gc_abandon_delete(&self, digest: &str) -> Result<()> {
        sqlx::query("UPDATE blobs SET state = 'pending' WHERE digest = $1 AND state = 'deleting'")
            .bind(digest)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Step three (after the object is gone): the `deleting` row goes, and
    /// pushes of the digest may claim it anew.
    pub async fn gc_forget_blob(&self, digest: &str) -> Result<()> {
        let mut tx = self.write_tx().await?;
        // Links were removed with the mark; a link can only be added to a
        // live row, so none came back. Deleted again for rows left
        // `deleting` by an older version or a manual edit.
        sqlx::query("DELETE FROM repository_blobs WHERE digest = $1")
            .bind(digest)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM blobs WHERE digest = $1 AND state = 'deleting'")
            .bind(digest)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Deletes an upload session not touched since `cutoff` (its parts go
    /// with it). True when it was deleted; the caller then removes its
    /// objects under `uploads/<id>/`.
    pub async fn gc_delete_upload(&self, id: &str, cutoff: i64) -> Result<bool> {
        let done = sqlx::query("DELETE FROM uploads WHERE id = $1 AND updated_at < $2")
            .bind(id)
            .bind(cutoff)
            .execute(&self.sessions)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Digests whose rows a collection left `deleting` (it died between
    /// taking the row and forgetting it), at most `limit`.
    pub async fn gc_interrupted(&self, limit: u32) -> Result<Vec<String>> {
        Ok(sqlx::query_scalar(
            "SELECT digest FROM blobs WHERE state = 'deleting' ORDER BY digest LIMIT $1",
        )
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Is there an upload session `id`?
    pub async fn upload_exists(&self, id: &str) -> Result<bool> {
        let row = sqlx::query("SELECT 1 FROM uploads WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.is_some())
    }
}
