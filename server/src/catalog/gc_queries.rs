//! The garbage collector's SQL (see `catalog/gc.rs` for what each query
//! means), written once and compiled per dialect like `queries.rs`: both
//! `sqlite.rs` and `postgres.rs` declare this file as their `gc_queries`
//! module, so `super::` is the dialect.
//!
//! Every delete re-checks, in its own statement, the facts the mark phase
//! relied on (no tag, no reference, `used_at` older than the cutoff), so a
//! push that commits between mark and sweep is never undone. On SQLite the
//! one writer orders these statements against the pushes'; on PostgreSQL
//! each is a single-row conditional UPDATE/DELETE/upsert, which waits for
//! the row lock a concurrent push holds and re-evaluates its WHERE on the
//! row that push left (every push, mount and manifest put that relies on a
//! blob or manifest moves that row's `used_at`).
//!
//! Called by `catalog/gc.rs` only.

use super::{Handle, retry};
use crate::catalog::gc::{Claim, GcBlob, GcManifest, GcReference, GcUpload, LeaseHolder};
use crate::catalog::{Result, now_ms};

// ---- the push side ----------------------------------------------------------

pub async fn claim_blob(db: &Handle, digest: &str, size: u64) -> Result<Claim> {
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
    .fetch_optional(&db.pool)
    .await?;
    Ok(match incarnation {
        Some(i) => Claim::Claimed(i),
        None => Claim::Deleting,
    })
}

pub async fn stored_blobs(db: &Handle) -> Result<(u64, u64)> {
    let (count, bytes): (i64, i64) = sqlx::query_as(
        "SELECT COUNT(*), CAST(COALESCE(SUM(size), 0) AS BIGINT) FROM blobs WHERE state = 'live'",
    )
    .fetch_one(&db.pool)
    .await?;
    Ok((count as u64, bytes as u64))
}

// ---- the lease ------------------------------------------------------------------

pub async fn take_lease(db: &Handle, name: &str, holder: &str, expires_at: i64) -> Result<bool> {
    let done = sqlx::query(
        "INSERT INTO leases (name, holder, expires_at) VALUES ($1, $2, $3)
         ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at
          WHERE leases.expires_at < $4 OR leases.holder = excluded.holder",
    )
    .bind(name)
    .bind(holder)
    .bind(expires_at)
    .bind(now_ms())
    .execute(&db.pool)
    .await?;
    Ok(done.rows_affected() > 0)
}

pub async fn release_lease(db: &Handle, name: &str, holder: &str) -> Result<()> {
    sqlx::query("UPDATE leases SET expires_at = 0 WHERE name = $1 AND holder = $2")
        .bind(name)
        .bind(holder)
        .execute(&db.pool)
        .await?;
    Ok(())
}

pub async fn lease(db: &Handle, name: &str) -> Result<Option<LeaseHolder>> {
    let row: Option<(String, i64)> =
        sqlx::query_as("SELECT holder, expires_at FROM leases WHERE name = $1")
            .bind(name)
            .fetch_optional(&db.pool)
            .await?;
    Ok(row.map(|(holder, expires_at)| LeaseHolder { holder, expires_at }))
}

// ---- what the mark phase reads ----------------------------------------------------

pub async fn gc_manifests(db: &Handle) -> Result<Vec<GcManifest>> {
    let rows: Vec<(i64, String, String, Option<String>, i64, i64)> = sqlx::query_as(
        "SELECT m.repository_id, r.name, m.digest, m.subject, m.size, m.used_at
           FROM manifests m JOIN repositories r ON r.id = m.repository_id",
    )
    .fetch_all(&db.pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(
            |(repository_id, repository, digest, subject, size, used_at)| GcManifest {
                repository_id,
                repository,
                digest,
                subject,
                size: size as u64,
                used_at,
            },
        )
        .collect())
}

pub async fn gc_tagged(db: &Handle) -> Result<Vec<(i64, String)>> {
    Ok(
        sqlx::query_as("SELECT repository_id, manifest_digest FROM tags")
            .fetch_all(&db.pool)
            .await?,
    )
}

pub async fn gc_references(db: &Handle) -> Result<Vec<GcReference>> {
    let rows: Vec<(i64, String, String, String)> = sqlx::query_as(
        "SELECT repository_id, manifest_digest, child_digest, kind FROM manifest_references",
    )
    .fetch_all(&db.pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(repository_id, manifest, child, kind)| GcReference {
            repository_id,
            manifest,
            child,
            kind,
        })
        .collect())
}

pub async fn gc_blobs(db: &Handle) -> Result<Vec<GcBlob>> {
    let rows: Vec<(String, i64, String, i64)> =
        sqlx::query_as("SELECT digest, size, state, used_at FROM blobs")
            .fetch_all(&db.pool)
            .await?;
    Ok(rows
        .into_iter()
        .map(|(digest, size, state, used_at)| GcBlob {
            digest,
            size: size as u64,
            state,
            used_at,
        })
        .collect())
}

pub async fn gc_uploads(db: &Handle) -> Result<Vec<GcUpload>> {
    let rows: Vec<(String, i64, i64)> = sqlx::query_as("SELECT id, size, updated_at FROM uploads")
        .fetch_all(&db.pool)
        .await?;
    Ok(rows
        .into_iter()
        .map(|(id, size, updated_at)| GcUpload {
            id,
            size: size as u64,
            updated_at,
        })
        .collect())
}

pub async fn gc_interrupted(db: &Handle, limit: u32) -> Result<Vec<String>> {
    Ok(sqlx::query_scalar(
        "SELECT digest FROM blobs WHERE state = 'deleting' ORDER BY digest LIMIT $1",
    )
    .bind(limit as i64)
    .fetch_all(&db.pool)
    .await?)
}

pub async fn upload_exists(db: &Handle, id: &str) -> Result<bool> {
    let row: Option<(String,)> = sqlx::query_as("SELECT id FROM uploads WHERE id = $1")
        .bind(id)
        .fetch_optional(&db.pool)
        .await?;
    Ok(row.is_some())
}

// ---- the sweep ---------------------------------------------------------------------

pub async fn gc_delete_manifest(
    db: &Handle,
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
    .execute(&db.pool)
    .await?;
    Ok(done.rows_affected() > 0)
}

pub async fn gc_mark_blob_deleting(db: &Handle, digest: &str, cutoff: i64) -> Result<bool> {
    retry(|| async move {
        let mut tx = db.write_tx().await?;
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
    })
    .await
}

pub async fn gc_claim_orphan(db: &Handle, digest: &str, size: u64) -> Result<bool> {
    let done = sqlx::query(
        "INSERT INTO blobs (digest, size, created_at, used_at, state)
         VALUES ($1, $2, $3, 0, 'deleting')
         ON CONFLICT (digest) DO NOTHING",
    )
    .bind(digest)
    .bind(size as i64)
    .bind(now_ms())
    .execute(&db.pool)
    .await?;
    Ok(done.rows_affected() > 0)
}

pub async fn gc_abandon_delete(db: &Handle, digest: &str) -> Result<()> {
    sqlx::query("UPDATE blobs SET state = 'pending' WHERE digest = $1 AND state = 'deleting'")
        .bind(digest)
        .execute(&db.pool)
        .await?;
    Ok(())
}

pub async fn gc_forget_blob(db: &Handle, digest: &str) -> Result<()> {
    retry(|| async move {
        let mut tx = db.write_tx().await?;
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
    })
    .await
}

pub async fn gc_delete_upload(db: &Handle, id: &str, cutoff: i64) -> Result<bool> {
    let done = sqlx::query("DELETE FROM uploads WHERE id = $1 AND updated_at < $2")
        .bind(id)
        .bind(cutoff)
        .execute(db.sessions())
        .await?;
    Ok(done.rows_affected() > 0)
}
