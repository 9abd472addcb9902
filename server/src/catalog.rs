//! The SQL catalog: every query of the server lives here.
//!
//! Called by the registry service; calls only sqlx. It records facts (this
//! blob is stored, this repository may serve it, this tag names that
//! manifest) and enforces nothing of the distribution spec beyond what the
//! schema itself guarantees. Write paths that touch several rows run in one
//! `BEGIN IMMEDIATE` transaction, so concurrent writers queue on SQLite's
//! lock instead of failing on a stale snapshot.

use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Row, Sqlite, Transaction};

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("catalog database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("catalog migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("unsupported catalog URL {0:?} (use sqlite://PATH)")]
    UnsupportedUrl(String),
}

pub type Result<T, E = CatalogError> = std::result::Result<T, E>;

mod gc;
pub use gc::{Claim, GcBlob, GcManifest, GcReference, GcUpload, LeaseHolder};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/sqlite");

/// A page of names read as one `json_group_array` value: one row instead of
/// one per name, as sqlx's SQLite driver hands each row over from its worker
/// thread separately (a 50-tag page was ~3x slower than a manifest GET).
fn json_names(page: &str) -> Result<Vec<String>> {
    serde_json::from_str(page).map_err(|e| CatalogError::Db(sqlx::Error::Decode(Box::new(e))))
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[derive(Clone, Debug)]
pub struct Catalog {
    pool: SqlitePool,
    /// Connections with `synchronous=NORMAL`, for the rows of upload
    /// sessions only (see `Catalog::open`).
    sessions: SqlitePool,
}

/// A manifest as stored: its exact bytes and the media type it was pushed with.
#[derive(Debug, Clone)]
pub struct StoredManifest {
    pub digest: String,
    pub media_type: String,
    pub content: Vec<u8>,
}

/// A manifest about to be stored, with what it refers to.
#[derive(Debug)]
pub struct NewManifest<'a> {
    pub digest: &'a str,
    pub media_type: &'a str,
    pub artifact_type: Option<&'a str>,
    pub subject: Option<&'a str>,
    /// JSON object text, kept only for manifests with a subject (referrers).
    pub annotations: Option<&'a str>,
    pub content: &'a [u8],
    pub blobs: &'a [String],
    pub manifests: &'a [String],
}

#[derive(Debug, Clone)]
pub struct Referrer {
    pub digest: String,
    pub media_type: String,
    pub size: i64,
    pub artifact_type: Option<String>,
    pub annotations: Option<String>,
}

#[derive(Debug, Clone)]
pub struct UploadPart {
    pub key: String,
    pub size: u64,
}

#[derive(Debug, Clone)]
pub struct Upload {
    pub repository: String,
    pub size: u64,
    pub parts: Vec<UploadPart>,
}

impl Catalog {
    /// Opens (creating if needed) the catalog at `url` and runs the migrations.
    pub async fn open(url: &str) -> Result<Catalog> {
        if !url.starts_with("sqlite:") {
            return Err(CatalogError::UnsupportedUrl(url.to_owned()));
        }
        let opts = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // FULL: a commit acknowledged to a client survives a power cut.
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(30))
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .min_connections(1)
            .connect_with(opts.clone())
            .await?;
        MIGRATOR.run(&pool).await?;
        // Upload-session rows (a session made, a chunk appended, a session
        // cancelled) are committed without waiting for the WAL to reach the
        // disk. A power cut may lose the last of them: the session is then
        // unknown or shorter than the client was told, and the client starts
        // again or resumes from the size it is told, which the spec allows.
        // It cannot make a row point at lost bytes: a chunk's bytes are
        // synced before its row is even written (registry::append), so any
        // row that does reach the disk, now or with a later FULL commit,
        // refers to durable bytes. Rows that make content visible (blobs,
        // manifests, tags, a completed upload) stay on the FULL pool.
        let in_memory = url.contains(":memory:") || url.contains("mode=memory");
        let sessions = if in_memory {
            pool.clone()
        } else {
            SqlitePoolOptions::new()
                .max_connections(4)
                .min_connections(0)
                .connect_with(opts.synchronous(SqliteSynchronous::Normal))
                .await?
        };
        Ok(Catalog { pool, sessions })
    }

    /// Is the database reachable?
    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn write_tx(&self) -> Result<Transaction<'static, Sqlite>> {
        Ok(self.pool.begin_with("BEGIN IMMEDIATE").await?)
    }

    /// A write transaction for upload-session rows only (`synchronous=NORMAL`).
    async fn session_tx(&self) -> Result<Transaction<'static, Sqlite>> {
        Ok(self.sessions.begin_with("BEGIN IMMEDIATE").await?)
    }

    async fn ensure_repository(tx: &mut Transaction<'static, Sqlite>, name: &str) -> Result<i64> {
        sqlx::query("INSERT INTO repositories (name, created_at) VALUES (?, ?) ON CONFLICT (name) DO NOTHING")
            .bind(name)
            .bind(now_ms())
            .execute(&mut **tx)
            .await?;
        let id = sqlx::query_scalar("SELECT id FROM repositories WHERE name = ?")
            .bind(name)
            .fetch_one(&mut **tx)
            .await?;
        Ok(id)
    }

    // ---- repositories ------------------------------------------------------

    pub async fn repository_exists(&self, name: &str) -> Result<bool> {
        let row = sqlx::query("SELECT 1 FROM repositories WHERE name = ?")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.is_some())
    }

    /// Repository names after `last`, in lexical (byte) order.
    pub async fn repositories(&self, last: &str, limit: u32) -> Result<Vec<String>> {
        let page: String = sqlx::query_scalar(
            "SELECT json_group_array(name ORDER BY name) FROM (
               SELECT name FROM repositories WHERE name > ? ORDER BY name LIMIT ?)",
        )
        .bind(last)
        .bind(limit as i64)
        .fetch_one(&self.pool)
        .await?;
        json_names(&page)
    }

    // ---- blobs ---------------------------------------------------------------

    /// Size of `digest` if `repository` may serve it.
    pub async fn repository_blob_size(
        &self,
        repository: &str,
        digest: &str,
    ) -> Result<Option<u64>> {
        let size: Option<i64> = sqlx::query_scalar(
            "SELECT b.size FROM repository_blobs rb
               JOIN repositories r ON r.id = rb.repository_id
               JOIN blobs b ON b.digest = rb.digest
              WHERE r.name = ? AND rb.digest = ?",
        )
        .bind(repository)
        .bind(digest)
        .fetch_optional(&self.pool)
        .await?;
        Ok(size.map(|s| s as u64))
    }

    /// Size of `digest` if any repository holds it.
    pub async fn blob_size(&self, digest: &str) -> Result<Option<u64>> {
        let size: Option<i64> =
            sqlx::query_scalar("SELECT size FROM blobs WHERE digest = ? AND state = 'live'")
                .bind(digest)
                .fetch_optional(&self.pool)
                .await?;
        Ok(size.map(|s| s as u64))
    }

    /// Records that the blob is stored (its bytes must already be in place,
    /// placed after a [`Catalog::claim_blob`] that returned `incarnation`)
    /// and that `repository` may serve it. False when that claim is no more
    /// (the garbage collector took the row because the claim outlived its
    /// grace period, and may have deleted the bytes): nothing was written.
    pub async fn link_blob(
        &self,
        repository: &str,
        digest: &str,
        incarnation: &str,
    ) -> Result<bool> {
        let mut tx = self.write_tx().await?;
        if !Self::link_blob_tx(&mut tx, repository, digest, incarnation).await? {
            return Ok(false);
        }
        tx.commit().await?;
        Ok(true)
    }

    async fn link_blob_tx(
        tx: &mut Transaction<'static, Sqlite>,
        repository: &str,
        digest: &str,
        incarnation: &str,
    ) -> Result<bool> {
        let now = now_ms();
        // The claimed row becomes (or stays) live unless GC took it; a row
        // is never made here, so one that GC removed (with its bytes) is not
        // brought back without them. `used_at` keeps it out of GC's reach
        // for a grace period (see gc.rs).
        let done = sqlx::query(
            "UPDATE blobs SET used_at = $1, state = 'live'
              WHERE digest = $2 AND incarnation = $3 AND state <> 'deleting'",
        )
        .bind(now)
        .bind(digest)
        .bind(incarnation)
        .execute(&mut **tx)
        .await?;
        if done.rows_affected() == 0 {
            return Ok(false);
        }
        let repo_id = Self::ensure_repository(tx, repository).await?;
        Self::insert_repository_blob(tx, repo_id, digest, now).await?;
        Ok(true)
    }

    async fn insert_repository_blob(
        tx: &mut Transaction<'static, Sqlite>,
        repo_id: i64,
        digest: &str,
        now: i64,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO repository_blobs (repository_id, digest, created_at) VALUES (?, ?, ?)
             ON CONFLICT DO NOTHING",
        )
        .bind(repo_id)
        .bind(digest)
        .bind(now)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// Cross-repository mount of a blob that is already stored: links it
    /// into `repository` only if its row is live (not pending, not being
    /// collected), in the same transaction that marks it used. Returns its
    /// size, or `None` when there is nothing to mount.
    pub async fn mount_blob(&self, repository: &str, digest: &str) -> Result<Option<u64>> {
        let mut tx = self.write_tx().await?;
        let now = now_ms();
        let done =
            sqlx::query("UPDATE blobs SET used_at = $1 WHERE digest = $2 AND state = 'live'")
                .bind(now)
                .bind(digest)
                .execute(&mut *tx)
                .await?;
        if done.rows_affected() == 0 {
            return Ok(None);
        }
        let size: i64 = sqlx::query_scalar("SELECT size FROM blobs WHERE digest = $1")
            .bind(digest)
            .fetch_one(&mut *tx)
            .await?;
        let repo_id = Self::ensure_repository(&mut tx, repository).await?;
        Self::insert_repository_blob(&mut tx, repo_id, digest, now).await?;
        tx.commit().await?;
        Ok(Some(size as u64))
    }

    pub async fn repositories_with_blob(&self, digest: &str) -> Result<Vec<String>> {
        Ok(sqlx::query_scalar(
            "SELECT r.name FROM repository_blobs rb JOIN repositories r ON r.id = rb.repository_id
              WHERE rb.digest = ? ORDER BY r.name LIMIT 1000",
        )
        .bind(digest)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Removes `repository`'s right to serve the blob. The bytes stay for the
    /// garbage collector, since other repositories may share them.
    pub async fn unlink_blob(&self, repository: &str, digest: &str) -> Result<bool> {
        let done = sqlx::query(
            "DELETE FROM repository_blobs
              WHERE digest = ? AND repository_id = (SELECT id FROM repositories WHERE name = ?)",
        )
        .bind(digest)
        .bind(repository)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    // ---- manifests and tags ----------------------------------------------------

    /// Which of `digests` `repository` cannot serve as blobs.
    pub async fn missing_blobs(&self, repository: &str, digests: &[String]) -> Result<Vec<String>> {
        let mut missing = Vec::new();
        for d in digests {
            if self.repository_blob_size(repository, d).await?.is_none() {
                missing.push(d.clone());
            }
        }
        Ok(missing)
    }

    /// Which of `digests` are not manifests of `repository`.
    pub async fn missing_manifests(
        &self,
        repository: &str,
        digests: &[String],
    ) -> Result<Vec<String>> {
        let mut missing = Vec::new();
        for d in digests {
            let found = sqlx::query(
                "SELECT 1 FROM manifests m JOIN repositories r ON r.id = m.repository_id
                  WHERE r.name = ? AND m.digest = ?",
            )
            .bind(repository)
            .bind(d)
            .fetch_optional(&self.pool)
            .await?;
            if found.is_none() {
                missing.push(d.clone());
            }
        }
        Ok(missing)
    }

    /// Stores a manifest and, when `tag` is given, points the tag at it, in
    /// one transaction.
    ///
    /// In the same transaction every blob it names is marked used (it must
    /// be live: not being collected) and every child manifest too (it must
    /// still be in the repository), so the garbage collector, whose deletes
    /// re-check `used_at`, can never remove what this manifest points at.
    /// Returns `Some(digest)` of a blob or child that is gone (nothing is
    /// written then): the caller answers MANIFEST_BLOB_UNKNOWN and the client
    /// uploads it again.
    pub async fn put_manifest(
        &self,
        repository: &str,
        m: &NewManifest<'_>,
        tag: Option<&str>,
    ) -> Result<Option<String>> {
        let mut tx = self.write_tx().await?;
        let repo_id = Self::ensure_repository(&mut tx, repository).await?;
        let now = now_ms();
        // In one order, so two puts naming the same blobs lock their rows
        // in the same order (no deadlock on PostgreSQL).
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
               (repository_id, digest, media_type, artifact_type, subject, annotations, size, content, created_at, used_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9)
             ON CONFLICT (repository_id, digest) DO UPDATE SET used_at = excluded.used_at",
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
                 VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
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
                "INSERT INTO tags (repository_id, name, manifest_digest, updated_at) VALUES (?, ?, ?, ?)
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
    }

    pub async fn manifest_by_digest(
        &self,
        repository: &str,
        digest: &str,
    ) -> Result<Option<StoredManifest>> {
        let row = sqlx::query(
            "SELECT m.digest, m.media_type, m.content FROM manifests m
               JOIN repositories r ON r.id = m.repository_id
              WHERE r.name = ? AND m.digest = ?",
        )
        .bind(repository)
        .bind(digest)
        .fetch_optional(&self.pool)
        .await?;
        row.map(stored_manifest).transpose()
    }

    pub async fn manifest_by_tag(
        &self,
        repository: &str,
        tag: &str,
    ) -> Result<Option<StoredManifest>> {
        let row = sqlx::query(
            "SELECT m.digest, m.media_type, m.content FROM tags t
               JOIN repositories r ON r.id = t.repository_id
               JOIN manifests m ON m.repository_id = t.repository_id AND m.digest = t.manifest_digest
              WHERE r.name = ? AND t.name = ?",
        )
        .bind(repository)
        .bind(tag)
        .fetch_optional(&self.pool)
        .await?;
        row.map(stored_manifest).transpose()
    }

    /// Deletes a manifest, the tags that name it and its references.
    pub async fn delete_manifest(&self, repository: &str, digest: &str) -> Result<bool> {
        let done = sqlx::query(
            "DELETE FROM manifests
              WHERE digest = ? AND repository_id = (SELECT id FROM repositories WHERE name = ?)",
        )
        .bind(digest)
        .bind(repository)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Removes a tag, leaving its manifest.
    pub async fn delete_tag(&self, repository: &str, tag: &str) -> Result<bool> {
        let done = sqlx::query(
            "DELETE FROM tags
              WHERE name = ? AND repository_id = (SELECT id FROM repositories WHERE name = ?)",
        )
        .bind(tag)
        .bind(repository)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Tag names after `last`, in the spec's lexical order: case-insensitive,
    /// ties (`Beta`, `beta`) broken by bytes so paging never skips one.
    pub async fn tags(&self, repository: &str, last: &str, limit: u32) -> Result<Vec<String>> {
        let page: String = sqlx::query_scalar(
            "SELECT json_group_array(name ORDER BY lower(name), name) FROM (
               SELECT t.name FROM tags t JOIN repositories r ON r.id = t.repository_id
                WHERE r.name = ? AND (lower(t.name), t.name) > (lower(?), ?)
                ORDER BY lower(t.name), t.name LIMIT ?)",
        )
        .bind(repository)
        .bind(last)
        .bind(last)
        .bind(limit as i64)
        .fetch_one(&self.pool)
        .await?;
        json_names(&page)
    }

    /// Manifests of `repository` whose subject is `subject` (and, if given, of
    /// that artifact type), by digest, after `last`.
    pub async fn referrers(
        &self,
        repository: &str,
        subject: &str,
        artifact_type: Option<&str>,
        last: &str,
        limit: u32,
    ) -> Result<Vec<Referrer>> {
        let rows = sqlx::query(
            "SELECT m.digest, m.media_type, m.size, m.artifact_type, m.annotations FROM manifests m
               JOIN repositories r ON r.id = m.repository_id
              WHERE r.name = ? AND m.subject = ? AND (? IS NULL OR m.artifact_type = ?) AND m.digest > ?
              ORDER BY m.digest LIMIT ?",
        )
        .bind(repository)
        .bind(subject)
        .bind(artifact_type)
        .bind(artifact_type)
        .bind(last)
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|r| {
                Ok(Referrer {
                    digest: r.try_get(0)?,
                    media_type: r.try_get(1)?,
                    size: r.try_get(2)?,
                    artifact_type: r.try_get(3)?,
                    annotations: r.try_get(4)?,
                })
            })
            .collect()
    }

    // ---- uploads -----------------------------------------------------------------

    pub async fn create_upload(&self, id: &str, repository: &str) -> Result<()> {
        let now = now_ms();
        sqlx::query("INSERT INTO uploads (id, repository, size, created_at, updated_at) VALUES (?, ?, 0, ?, ?)")
            .bind(id)
            .bind(repository)
            .bind(now)
            .bind(now)
            .execute(&self.sessions)
            .await?;
        Ok(())
    }

    pub async fn upload(&self, id: &str) -> Result<Option<Upload>> {
        let Some(row) = sqlx::query("SELECT repository, size FROM uploads WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
        else {
            return Ok(None);
        };
        let parts = sqlx::query(
            "SELECT object_key, size FROM upload_parts WHERE upload_id = ? ORDER BY seq",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?
        .into_iter()
        .map(|r| {
            Ok(UploadPart {
                key: r.try_get(0)?,
                size: r.try_get::<i64, _>(1)? as u64,
            })
        })
        .collect::<Result<Vec<_>>>()?;
        Ok(Some(Upload {
            repository: row.try_get(0)?,
            size: row.try_get::<i64, _>(1)? as u64,
            parts,
        }))
    }

    /// Appends a part (already written to the store) to an upload, if the
    /// upload is still `expected_size` long. Returns false when another
    /// writer got there first or the upload is gone; the caller then deletes
    /// its part object.
    pub async fn append_upload_part(
        &self,
        id: &str,
        expected_size: u64,
        key: &str,
        size: u64,
    ) -> Result<bool> {
        let mut tx = self.session_tx().await?;
        let moved = sqlx::query(
            "UPDATE uploads SET size = size + ?, updated_at = ? WHERE id = ? AND size = ?",
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
        sqlx::query(
            "INSERT INTO upload_parts (upload_id, seq, object_key, size)
             VALUES (?, (SELECT COUNT(*) FROM upload_parts WHERE upload_id = ?), ?, ?)",
        )
        .bind(id)
        .bind(id)
        .bind(key)
        .bind(size as i64)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    pub async fn delete_upload(&self, id: &str) -> Result<bool> {
        let done = sqlx::query("DELETE FROM uploads WHERE id = ?")
            .bind(id)
            .execute(&self.sessions)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Completes an upload: the blob (whose bytes are already stored under
    /// its digest) becomes visible in `repository` and the session ends.
    /// False (nothing written) when the collector is deleting the digest.
    pub async fn finish_upload(
        &self,
        id: &str,
        repository: &str,
        digest: &str,
        incarnation: &str,
    ) -> Result<bool> {
        let mut tx = self.write_tx().await?;
        if !Self::link_blob_tx(&mut tx, repository, digest, incarnation).await? {
            return Ok(false);
        }
        sqlx::query("DELETE FROM uploads WHERE id = ?")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(true)
    }
}

fn stored_manifest(row: sqlx::sqlite::SqliteRow) -> Result<StoredManifest> {
    Ok(StoredManifest {
        digest: row.try_get(0)?,
        media_type: row.try_get(1)?,
        content: row.try_get(2)?,
    })
}

// ---- users, grants and public patterns ------------------------------------------

/// A user as the catalog holds it.
#[derive(Debug, Clone)]
pub struct UserRecord {
    pub id: i64,
    pub name: String,
    pub password_hash: String,
    pub is_admin: bool,
    pub is_robot: bool,
    pub password_changed_at: i64,
}

fn user_record(r: sqlx::sqlite::SqliteRow) -> Result<UserRecord> {
    Ok(UserRecord {
        id: r.try_get(0)?,
        name: r.try_get(1)?,
        password_hash: r.try_get(2)?,
        is_admin: r.try_get(3)?,
        is_robot: r.try_get::<String, _>(4)? == "robot",
        password_changed_at: r.try_get(5)?,
    })
}

const USER_COLUMNS: &str = "id, name, password_hash, is_admin, kind, password_changed_at";

impl Catalog {
    pub async fn user_count(&self) -> Result<i64> {
        Ok(sqlx::query_scalar("SELECT COUNT(*) FROM users")
            .fetch_one(&self.pool)
            .await?)
    }

    /// Creates a user; false when the name is taken.
    pub async fn create_user(
        &self,
        name: &str,
        password_hash: &str,
        is_admin: bool,
        is_robot: bool,
    ) -> Result<bool> {
        let now = now_ms();
        let done = sqlx::query(
            "INSERT INTO users (name, password_hash, is_admin, kind, password_changed_at, created_at)
             VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(password_hash)
        .bind(is_admin)
        .bind(if is_robot { "robot" } else { "user" })
        .bind(now)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    pub async fn user(&self, name: &str) -> Result<Option<UserRecord>> {
        let sql = sqlx::AssertSqlSafe(format!("SELECT {USER_COLUMNS} FROM users WHERE name = ?"));
        sqlx::query(sql)
            .bind(name)
            .fetch_optional(&self.pool)
            .await?
            .map(user_record)
            .transpose()
    }

    pub async fn users(&self) -> Result<Vec<UserRecord>> {
        let sql = sqlx::AssertSqlSafe(format!("SELECT {USER_COLUMNS} FROM users ORDER BY name"));
        sqlx::query(sql)
            .fetch_all(&self.pool)
            .await?
            .into_iter()
            .map(user_record)
            .collect()
    }

    pub async fn delete_user(&self, name: &str) -> Result<bool> {
        let done = sqlx::query("DELETE FROM users WHERE name = ?")
            .bind(name)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    pub async fn set_password(&self, name: &str, password_hash: &str) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE users SET password_hash = ?, password_changed_at = ? WHERE name = ?",
        )
        .bind(password_hash)
        .bind(now_ms())
        .bind(name)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Sets (replaces) a user's actions on a pattern; false if no such user.
    pub async fn set_grant(&self, user: &str, pattern: &str, actions: &str) -> Result<bool> {
        let done = sqlx::query(
            "INSERT INTO grants (user_id, pattern, actions)
             SELECT id, ?, ? FROM users WHERE name = ?
             ON CONFLICT (user_id, pattern) DO UPDATE SET actions = excluded.actions",
        )
        .bind(pattern)
        .bind(actions)
        .bind(user)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    pub async fn revoke_grant(&self, user: &str, pattern: &str) -> Result<bool> {
        let done = sqlx::query(
            "DELETE FROM grants WHERE pattern = ? AND user_id = (SELECT id FROM users WHERE name = ?)",
        )
        .bind(pattern)
        .bind(user)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    /// (pattern, actions) pairs of a user.
    pub async fn grants(&self, user_id: i64) -> Result<Vec<(String, String)>> {
        let rows =
            sqlx::query("SELECT pattern, actions FROM grants WHERE user_id = ? ORDER BY pattern")
                .bind(user_id)
                .fetch_all(&self.pool)
                .await?;
        rows.into_iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect()
    }

    pub async fn set_public(&self, pattern: &str, public: bool) -> Result<bool> {
        let sql = if public {
            "INSERT INTO public_patterns (pattern) VALUES (?) ON CONFLICT DO NOTHING"
        } else {
            "DELETE FROM public_patterns WHERE pattern = ?"
        };
        let done = sqlx::query(sql).bind(pattern).execute(&self.pool).await?;
        Ok(done.rows_affected() > 0)
    }

    pub async fn public_patterns(&self) -> Result<Vec<String>> {
        Ok(
            sqlx::query_scalar("SELECT pattern FROM public_patterns ORDER BY pattern")
                .fetch_all(&self.pool)
                .await?,
        )
    }
}
