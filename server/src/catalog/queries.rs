//! Every SQL query of the catalog, written once and compiled once per
//! dialect: `sqlite.rs` and `postgres.rs` each declare this file as their
//! `queries` module, and `super::` is then that dialect — its `DB`, `Conn`,
//! `Handle` (the pool(s)), `PG` flag, `write_tx`/`session_tx` and `retry`.
//! So every query below is monomorphised against the concrete sqlx driver
//! (no `Any` driver converting each value).
//!
//! Rules for the text, so that it means the same thing in both dialects:
//! - placeholders are `$1, $2, ...` (SQLite accepts them too; a number may be
//!   used twice);
//! - `ON CONFLICT ... DO NOTHING / DO UPDATE` rather than `INSERT OR ...`;
//! - text compares by bytes: SQLite's BINARY collation, and `COLLATE "C"` on
//!   every text column of the PostgreSQL schema;
//! - where the dialects really differ, branch on `PG` (a constant, so the
//!   other branch is dead code in each build);
//! - a write touching several rows runs in `retry(|| async move { tx ... })`:
//!   one `BEGIN IMMEDIATE` transaction on SQLite (writers queue on the lock),
//!   a READ COMMITTED transaction on PostgreSQL retried on serialization
//!   failures and deadlocks. Each statement must be safe under concurrent
//!   PostgreSQL writers on its own: upserts (`ON CONFLICT`) instead of
//!   read-then-insert, and conditional `UPDATE ... WHERE` (which re-checks the
//!   row after waiting for its lock) instead of read-then-update.
//!
//! Called by `catalog/mod.rs` only.

use sqlx::Row;

use super::{Conn, Handle, PG, retry};
use crate::catalog::{
    NewManifest, Referrer, Result, StoredManifest, Upload, UploadPart, UserRecord, json_names,
    now_ms,
};

async fn ensure_repository(conn: &mut Conn, name: &str) -> Result<i64> {
    sqlx::query(
        "INSERT INTO repositories (name, created_at) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
    )
    .bind(name)
    .bind(now_ms())
    .execute(&mut *conn)
    .await?;
    // A new statement: on PostgreSQL it sees the row a concurrent
    // transaction committed while our INSERT waited for it.
    let id = sqlx::query_scalar("SELECT id FROM repositories WHERE name = $1")
        .bind(name)
        .fetch_one(&mut *conn)
        .await?;
    Ok(id)
}

pub async fn ping(db: &Handle) -> Result<()> {
    sqlx::query("SELECT 1").execute(&db.pool).await?;
    Ok(())
}

pub async fn stored_totals(db: &Handle) -> Result<(u64, u64, u64)> {
    let (blobs, bytes, uploads): (i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT COUNT(*) FROM blobs), \
         (SELECT CAST(COALESCE(SUM(size), 0) AS BIGINT) FROM blobs), \
         (SELECT COUNT(*) FROM uploads)",
    )
    .fetch_one(&db.pool)
    .await?;
    let u = |v: i64| u64::try_from(v).unwrap_or(0);
    Ok((u(blobs), u(bytes), u(uploads)))
}

// ---- repositories ------------------------------------------------------

pub async fn repository_exists(db: &Handle, name: &str) -> Result<bool> {
    let row = sqlx::query("SELECT 1 FROM repositories WHERE name = $1")
        .bind(name)
        .fetch_optional(&db.pool)
        .await?;
    Ok(row.is_some())
}

pub async fn repositories(db: &Handle, last: &str, limit: u32) -> Result<Vec<String>> {
    if PG {
        return Ok(sqlx::query_scalar(
            "SELECT name FROM repositories WHERE name > $1 ORDER BY name LIMIT $2",
        )
        .bind(last)
        .bind(limit as i64)
        .fetch_all(&db.pool)
        .await?);
    }
    let page: String = sqlx::query_scalar(
        "SELECT json_group_array(name ORDER BY name) FROM (
           SELECT name FROM repositories WHERE name > $1 ORDER BY name LIMIT $2)",
    )
    .bind(last)
    .bind(limit as i64)
    .fetch_one(&db.pool)
    .await?;
    json_names(&page)
}

// ---- blobs ---------------------------------------------------------------

pub async fn repository_blob_size(
    db: &Handle,
    repository: &str,
    digest: &str,
) -> Result<Option<u64>> {
    let size: Option<i64> = sqlx::query_scalar(
        "SELECT b.size FROM repository_blobs rb
           JOIN repositories r ON r.id = rb.repository_id
           JOIN blobs b ON b.digest = rb.digest
          WHERE r.name = $1 AND rb.digest = $2",
    )
    .bind(repository)
    .bind(digest)
    .fetch_optional(&db.pool)
    .await?;
    Ok(size.map(|s| s as u64))
}

pub async fn blob_size(db: &Handle, digest: &str) -> Result<Option<u64>> {
    let size: Option<i64> =
        sqlx::query_scalar("SELECT size FROM blobs WHERE digest = $1 AND state = 'live'")
            .bind(digest)
            .fetch_optional(&db.pool)
            .await?;
    Ok(size.map(|s| s as u64))
}

/// Makes a claimed row live (see `Catalog::link_blob`); false, with nothing
/// written, when the claim `incarnation` is no more.
pub async fn link_blob(
    db: &Handle,
    repository: &str,
    digest: &str,
    incarnation: &str,
) -> Result<bool> {
    retry(|| async move {
        let mut tx = db.write_tx().await?;
        if !link_blob_tx(&mut tx, repository, digest, incarnation).await? {
            return Ok(false);
        }
        tx.commit().await?;
        Ok(true)
    })
    .await
}

async fn link_blob_tx(
    conn: &mut Conn,
    repository: &str,
    digest: &str,
    incarnation: &str,
) -> Result<bool> {
    let now = now_ms();
    // The claimed row becomes (or stays) live unless GC took it; a row is
    // never made here, so one that GC removed (with its bytes) is not
    // brought back without them. `used_at` keeps it out of GC's reach for a
    // grace period (see gc.rs).
    let done = sqlx::query(
        "UPDATE blobs SET used_at = $1, state = 'live'
          WHERE digest = $2 AND incarnation = $3 AND state <> 'deleting'",
    )
    .bind(now)
    .bind(digest)
    .bind(incarnation)
    .execute(&mut *conn)
    .await?;
    if done.rows_affected() == 0 {
        return Ok(false);
    }
    let repo_id = ensure_repository(conn, repository).await?;
    insert_repository_blob(conn, repo_id, digest, now).await?;
    Ok(true)
}

async fn insert_repository_blob(
    conn: &mut Conn,
    repo_id: i64,
    digest: &str,
    now: i64,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO repository_blobs (repository_id, digest, created_at) VALUES ($1, $2, $3)
         ON CONFLICT DO NOTHING",
    )
    .bind(repo_id)
    .bind(digest)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Cross-repository mount of a live blob (see `Catalog::mount_blob`).
pub async fn mount_blob(db: &Handle, repository: &str, digest: &str) -> Result<Option<u64>> {
    retry(|| async move {
        let mut tx = db.write_tx().await?;
        let now = now_ms();
        let size: Option<i64> = sqlx::query_scalar(
            "UPDATE blobs SET used_at = $1 WHERE digest = $2 AND state = 'live' RETURNING size",
        )
        .bind(now)
        .bind(digest)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(size) = size else {
            return Ok(None);
        };
        let repo_id = ensure_repository(&mut tx, repository).await?;
        insert_repository_blob(&mut tx, repo_id, digest, now).await?;
        tx.commit().await?;
        Ok(Some(size as u64))
    })
    .await
}

pub async fn repositories_with_blob(db: &Handle, digest: &str) -> Result<Vec<String>> {
    Ok(sqlx::query_scalar(
        "SELECT r.name FROM repository_blobs rb JOIN repositories r ON r.id = rb.repository_id
          WHERE rb.digest = $1 ORDER BY r.name LIMIT 1000",
    )
    .bind(digest)
    .fetch_all(&db.pool)
    .await?)
}

pub async fn unlink_blob(db: &Handle, repository: &str, digest: &str) -> Result<bool> {
    let done = sqlx::query(
        "DELETE FROM repository_blobs
          WHERE digest = $1 AND repository_id = (SELECT id FROM repositories WHERE name = $2)",
    )
    .bind(digest)
    .bind(repository)
    .execute(&db.pool)
    .await?;
    Ok(done.rows_affected() > 0)
}

// ---- manifests and tags ----------------------------------------------------

pub async fn manifest_exists(db: &Handle, repository: &str, digest: &str) -> Result<bool> {
    let found = sqlx::query(
        "SELECT 1 FROM manifests m JOIN repositories r ON r.id = m.repository_id
          WHERE r.name = $1 AND m.digest = $2",
    )
    .bind(repository)
    .bind(digest)
    .fetch_optional(&db.pool)
    .await?;
    Ok(found.is_some())
}

pub async fn put_manifest(
    db: &Handle,
    repository: &str,
    m: &NewManifest<'_>,
    tag: Option<&str>,
) -> Result<Option<String>> {
    retry(|| async move {
        let mut tx = db.write_tx().await?;
        let repo_id = ensure_repository(&mut tx, repository).await?;
        let now = now_ms();
        // Every blob it names must be live, and is marked used; every child
        // manifest must still be there, and is marked used: in this
        // transaction, so GC's deletes (which re-check `used_at`) cannot
        // remove them under it. In one order, so two puts naming the same
        // blobs lock their rows in the same order.
        let blobs: std::collections::BTreeSet<&String> = m.blobs.iter().collect();
        for blob in blobs {
            let done =
                sqlx::query("UPDATE blobs SET used_at = $1 WHERE digest = $2 AND state = 'live'")
                    .bind(now)
                    .bind(blob)
                    .execute(&mut *tx)
                    .await?;
            if done.rows_affected() == 0 {
                return Ok(Some(blob.clone()));
            }
        }
        for child in m.manifests {
            let done = sqlx::query(
                "UPDATE manifests SET used_at = $1 WHERE repository_id = $2 AND digest = $3",
            )
            .bind(now)
            .bind(repo_id)
            .bind(child)
            .execute(&mut *tx)
            .await?;
            if done.rows_affected() == 0 {
                return Ok(Some(child.clone()));
            }
        }
        sqlx::query(
            "INSERT INTO manifests
               (repository_id, digest, media_type, artifact_type, subject, annotations, size, content,
                created_at, used_at, total_size, platforms)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9, $10, $11)
             ON CONFLICT (repository_id, digest) DO UPDATE SET used_at = excluded.used_at,
               total_size = COALESCE(manifests.total_size, excluded.total_size),
               platforms = COALESCE(manifests.platforms, excluded.platforms)",
        )
        .bind(repo_id)
        .bind(m.digest)
        .bind(m.media_type)
        .bind(m.artifact_type)
        .bind(m.subject)
        .bind(m.annotations)
        .bind(m.content.len() as i64)
        .bind(m.content)
        .bind(now)
        .bind(m.total_size)
        .bind(m.platforms)
        .execute(&mut *tx)
        .await?;
        let children = m
            .blobs
            .iter()
            .map(|d| (d, "blob"))
            .chain(m.manifests.iter().map(|d| (d, "manifest")));
        for (child, kind) in children {
            sqlx::query(
                "INSERT INTO manifest_references (repository_id, manifest_digest, child_digest, kind)
                 VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
            )
            .bind(repo_id)
            .bind(m.digest)
            .bind(child)
            .bind(kind)
            .execute(&mut *tx)
            .await?;
        }
        if let Some(tag) = tag {
            sqlx::query(
                "INSERT INTO tags (repository_id, name, manifest_digest, updated_at) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (repository_id, name)
                 DO UPDATE SET manifest_digest = excluded.manifest_digest, updated_at = excluded.updated_at",
            )
            .bind(repo_id)
            .bind(tag)
            .bind(m.digest)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(None)
    })
    .await
}

fn stored_manifest((digest, media_type, content): (String, String, Vec<u8>)) -> StoredManifest {
    StoredManifest {
        digest,
        media_type,
        content,
    }
}

pub async fn manifest_by_digest(
    db: &Handle,
    repository: &str,
    digest: &str,
) -> Result<Option<StoredManifest>> {
    let row = sqlx::query_as(
        "SELECT m.digest, m.media_type, m.content FROM manifests m
           JOIN repositories r ON r.id = m.repository_id
          WHERE r.name = $1 AND m.digest = $2",
    )
    .bind(repository)
    .bind(digest)
    .fetch_optional(&db.pool)
    .await?;
    Ok(row.map(stored_manifest))
}

pub async fn manifest_by_tag(
    db: &Handle,
    repository: &str,
    tag: &str,
) -> Result<Option<StoredManifest>> {
    let row = sqlx::query_as(
        "SELECT m.digest, m.media_type, m.content FROM tags t
           JOIN repositories r ON r.id = t.repository_id
           JOIN manifests m ON m.repository_id = t.repository_id AND m.digest = t.manifest_digest
          WHERE r.name = $1 AND t.name = $2",
    )
    .bind(repository)
    .bind(tag)
    .fetch_optional(&db.pool)
    .await?;
    Ok(row.map(stored_manifest))
}

pub async fn delete_manifest(db: &Handle, repository: &str, digest: &str) -> Result<bool> {
    let done = sqlx::query(
        "DELETE FROM manifests
          WHERE digest = $1 AND repository_id = (SELECT id FROM repositories WHERE name = $2)",
    )
    .bind(digest)
    .bind(repository)
    .execute(&db.pool)
    .await?;
    Ok(done.rows_affected() > 0)
}

pub async fn delete_tag(db: &Handle, repository: &str, tag: &str) -> Result<bool> {
    let done = sqlx::query(
        "DELETE FROM tags
          WHERE name = $1 AND repository_id = (SELECT id FROM repositories WHERE name = $2)",
    )
    .bind(tag)
    .bind(repository)
    .execute(&db.pool)
    .await?;
    Ok(done.rows_affected() > 0)
}

pub async fn tags(db: &Handle, repository: &str, last: &str, limit: u32) -> Result<Vec<String>> {
    if PG {
        return Ok(sqlx::query_scalar(
            "SELECT t.name FROM tags t JOIN repositories r ON r.id = t.repository_id
              WHERE r.name = $1 AND (lower(t.name), t.name) > (lower($2), $2)
              ORDER BY lower(t.name), t.name LIMIT $3",
        )
        .bind(repository)
        .bind(last)
        .bind(limit as i64)
        .fetch_all(&db.pool)
        .await?);
    }
    let page: String = sqlx::query_scalar(
        "SELECT json_group_array(name ORDER BY lower(name), name) FROM (
           SELECT t.name FROM tags t JOIN repositories r ON r.id = t.repository_id
            WHERE r.name = $1 AND (lower(t.name), t.name) > (lower($2), $2)
            ORDER BY lower(t.name), t.name LIMIT $3)",
    )
    .bind(repository)
    .bind(last)
    .bind(limit as i64)
    .fetch_one(&db.pool)
    .await?;
    json_names(&page)
}

pub async fn referrers(
    db: &Handle,
    repository: &str,
    subject: &str,
    artifact_type: Option<&str>,
    last: &str,
    limit: u32,
) -> Result<Vec<Referrer>> {
    type ReferrerRow = (String, String, i64, Option<String>, Option<String>);
    let rows: Vec<ReferrerRow> = sqlx::query_as(
        "SELECT m.digest, m.media_type, m.size, m.artifact_type, m.annotations FROM manifests m
           JOIN repositories r ON r.id = m.repository_id
          WHERE r.name = $1 AND m.subject = $2 AND ($3 IS NULL OR m.artifact_type = $3)
            AND m.digest > $4
          ORDER BY m.digest LIMIT $5",
    )
    .bind(repository)
    .bind(subject)
    .bind(artifact_type)
    .bind(last)
    .bind(limit as i64)
    .fetch_all(&db.pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(
            |(digest, media_type, size, artifact_type, annotations)| Referrer {
                digest,
                media_type,
                size,
                artifact_type,
                annotations,
            },
        )
        .collect())
}

// ---- uploads -----------------------------------------------------------------

pub async fn create_upload(db: &Handle, id: &str, repository: &str) -> Result<()> {
    let now = now_ms();
    sqlx::query(
        "INSERT INTO uploads (id, repository, size, created_at, updated_at) VALUES ($1, $2, 0, $3, $3)",
    )
    .bind(id)
    .bind(repository)
    .bind(now)
    .execute(db.sessions())
    .await?;
    Ok(())
}

pub async fn upload(db: &Handle, id: &str) -> Result<Option<Upload>> {
    // One statement, so the size and the parts come from one snapshot even
    // while another replica appends to the session.
    let rows = sqlx::query(
        "SELECT u.repository, u.size, p.object_key, p.size FROM uploads u
           LEFT JOIN upload_parts p ON p.upload_id = u.id
          WHERE u.id = $1 ORDER BY p.seq",
    )
    .bind(id)
    .fetch_all(&db.pool)
    .await?;
    let Some(first) = rows.first() else {
        return Ok(None);
    };
    let repository: String = first.try_get(0)?;
    let size = first.try_get::<i64, _>(1)? as u64;
    let mut parts = Vec::with_capacity(rows.len());
    for r in &rows {
        let Some(key) = r.try_get::<Option<String>, _>(2)? else {
            continue;
        };
        parts.push(UploadPart {
            key,
            size: r.try_get::<Option<i64>, _>(3)?.unwrap_or(0) as u64,
        });
    }
    Ok(Some(Upload {
        repository,
        size,
        parts,
    }))
}

pub async fn append_upload_part(
    db: &Handle,
    id: &str,
    expected_size: u64,
    key: &str,
    size: u64,
) -> Result<bool> {
    retry(|| async move {
        let mut tx = db.session_tx().await?;
        // On PostgreSQL a concurrent appender waits here for our row lock,
        // then re-checks `size = $4` against the committed row and moves
        // nothing: one append wins, the other is told false.
        let moved = sqlx::query(
            "UPDATE uploads SET size = size + $1, updated_at = $2 WHERE id = $3 AND size = $4",
        )
        .bind(size as i64)
        .bind(now_ms())
        .bind(id)
        .bind(expected_size as i64)
        .execute(&mut *tx)
        .await?;
        if moved.rows_affected() == 0 {
            return Ok(false);
        }
        // The uploads row is locked by now, so the count is stable.
        sqlx::query(
            "INSERT INTO upload_parts (upload_id, seq, object_key, size)
             VALUES ($1, (SELECT COUNT(*) FROM upload_parts WHERE upload_id = $1), $2, $3)",
        )
        .bind(id)
        .bind(key)
        .bind(size as i64)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(true)
    })
    .await
}

pub async fn delete_upload(db: &Handle, id: &str) -> Result<bool> {
    let done = sqlx::query("DELETE FROM uploads WHERE id = $1")
        .bind(id)
        .execute(db.sessions())
        .await?;
    Ok(done.rows_affected() > 0)
}

pub async fn finish_upload(
    db: &Handle,
    id: &str,
    repository: &str,
    digest: &str,
    incarnation: &str,
) -> Result<bool> {
    retry(|| async move {
        let mut tx = db.write_tx().await?;
        if !link_blob_tx(&mut tx, repository, digest, incarnation).await? {
            return Ok(false);
        }
        sqlx::query("DELETE FROM uploads WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(true)
    })
    .await
}

// ---- users, grants and public patterns ------------------------------------------

type UserRow = (i64, String, String, bool, String, i64);

fn user_record(
    (id, name, password_hash, is_admin, kind, password_changed_at): UserRow,
) -> UserRecord {
    UserRecord {
        id,
        name,
        password_hash,
        is_admin,
        is_robot: kind == "robot",
        password_changed_at,
    }
}

pub async fn user_count(db: &Handle) -> Result<i64> {
    Ok(sqlx::query_scalar("SELECT COUNT(*) FROM users")
        .fetch_one(&db.pool)
        .await?)
}

pub async fn create_user(
    db: &Handle,
    name: &str,
    password_hash: &str,
    is_admin: bool,
    is_robot: bool,
) -> Result<bool> {
    let done = sqlx::query(
        "INSERT INTO users (name, password_hash, is_admin, kind, password_changed_at, created_at)
         VALUES ($1, $2, $3, $4, $5, $5) ON CONFLICT (name) DO NOTHING",
    )
    .bind(name)
    .bind(password_hash)
    .bind(is_admin)
    .bind(if is_robot { "robot" } else { "user" })
    .bind(now_ms())
    .execute(&db.pool)
    .await?;
    Ok(done.rows_affected() > 0)
}

pub async fn user(db: &Handle, name: &str) -> Result<Option<UserRecord>> {
    let row: Option<UserRow> = sqlx::query_as(
        "SELECT id, name, password_hash, is_admin, kind, password_changed_at
           FROM users WHERE name = $1",
    )
    .bind(name)
    .fetch_optional(&db.pool)
    .await?;
    Ok(row.map(user_record))
}

pub async fn users(db: &Handle) -> Result<Vec<UserRecord>> {
    let rows: Vec<UserRow> = sqlx::query_as(
        "SELECT id, name, password_hash, is_admin, kind, password_changed_at
           FROM users ORDER BY name",
    )
    .fetch_all(&db.pool)
    .await?;
    Ok(rows.into_iter().map(user_record).collect())
}

pub async fn delete_user(db: &Handle, name: &str) -> Result<bool> {
    let done = sqlx::query("DELETE FROM users WHERE name = $1")
        .bind(name)
        .execute(&db.pool)
        .await?;
    Ok(done.rows_affected() > 0)
}

pub async fn set_password(db: &Handle, name: &str, password_hash: &str) -> Result<bool> {
    let done = sqlx::query(
        "UPDATE users SET password_hash = $1, password_changed_at = $2 WHERE name = $3",
    )
    .bind(password_hash)
    .bind(now_ms())
    .bind(name)
    .execute(&db.pool)
    .await?;
    Ok(done.rows_affected() > 0)
}

pub async fn set_grant(db: &Handle, user: &str, pattern: &str, actions: &str) -> Result<bool> {
    let done = sqlx::query(
        "INSERT INTO grants (user_id, pattern, actions)
         SELECT id, $1, $2 FROM users WHERE name = $3
         ON CONFLICT (user_id, pattern) DO UPDATE SET actions = excluded.actions",
    )
    .bind(pattern)
    .bind(actions)
    .bind(user)
    .execute(&db.pool)
    .await?;
    Ok(done.rows_affected() > 0)
}

pub async fn revoke_grant(db: &Handle, user: &str, pattern: &str) -> Result<bool> {
    let done = sqlx::query(
        "DELETE FROM grants WHERE pattern = $1 AND user_id = (SELECT id FROM users WHERE name = $2)",
    )
    .bind(pattern)
    .bind(user)
    .execute(&db.pool)
    .await?;
    Ok(done.rows_affected() > 0)
}

pub async fn grants(db: &Handle, user_id: i64) -> Result<Vec<(String, String)>> {
    Ok(
        sqlx::query_as("SELECT pattern, actions FROM grants WHERE user_id = $1 ORDER BY pattern")
            .bind(user_id)
            .fetch_all(&db.pool)
            .await?,
    )
}

pub async fn set_public(db: &Handle, pattern: &str, public: bool) -> Result<bool> {
    let sql = if public {
        "INSERT INTO public_patterns (pattern) VALUES ($1) ON CONFLICT DO NOTHING"
    } else {
        "DELETE FROM public_patterns WHERE pattern = $1"
    };
    let done = sqlx::query(sql).bind(pattern).execute(&db.pool).await?;
    Ok(done.rows_affected() > 0)
}

pub async fn public_patterns(db: &Handle) -> Result<Vec<String>> {
    Ok(
        sqlx::query_scalar("SELECT pattern FROM public_patterns ORDER BY pattern")
            .fetch_all(&db.pool)
            .await?,
    )
}
