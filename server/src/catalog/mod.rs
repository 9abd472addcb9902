//! The SQL catalog: every query of the server lives under this module.
//!
//! Called by the registry service, auth and admin; calls only sqlx. It
//! records facts (this blob is stored, this repository may serve it, this
//! tag names that manifest) and enforces nothing of the distribution spec
//! beyond what the schema itself guarantees.
//!
//! Two dialects, chosen by the URL: SQLite (`sqlite://PATH`, `sqlite.rs`)
//! and PostgreSQL (`postgres://` or `postgresql://`, `postgres.rs`), which
//! several server replicas may share. `Catalog` holds one `Db` and each
//! public method dispatches to the same function of `queries.rs`, which is
//! written once and compiled once per dialect against its concrete sqlx
//! driver (not sqlx's `Any` driver, which converts every value).
//!
//! To add a query: write it in `queries.rs` (its doc has the rules that keep
//! the text portable and concurrent PostgreSQL writers correct), then a
//! method here that calls `dispatch!(self, name(args..))`. A schema change
//! goes into both `migrations/sqlite/` and `migrations/postgres/`, as a file
//! of the same name (`tests::migrations_are_in_step` checks it).

use std::time::{SystemTime, UNIX_EPOCH};

mod postgres;
mod sqlite;

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("catalog database: {0}")]
    Db(#[from] sqlx::Error),
    /// The catalog could not be opened; `url` has its password masked.
    #[error("cannot open the catalog at {url}: {source}")]
    Connect { url: String, source: sqlx::Error },
    #[error("catalog migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error(
        "unsupported catalog URL {0:?} (use sqlite://PATH or postgres://USER:PASSWORD@HOST:PORT/DB)"
    )]
    UnsupportedUrl(String),
}

pub type Result<T, E = CatalogError> = std::result::Result<T, E>;

/// A page of names read as one `json_group_array` value: one row instead of
/// one per name, as sqlx's SQLite driver hands each row over from its worker
/// thread separately (a 50-tag page was ~3x slower than a manifest GET).
pub(crate) fn json_names(page: &str) -> Result<Vec<String>> {
    serde_json::from_str(page).map_err(|e| CatalogError::Db(sqlx::Error::Decode(Box::new(e))))
}

pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// `url` with its password (in the user info or a `password=` parameter)
/// replaced by `***`, fit for logs and error messages.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    // The user info ends at the last '@'; mask all of it after the first
    // ':' (an unencoded '@' or '?' in a password then over-masks, never
    // leaks).
    let (userinfo, tail) = match rest.rfind('@') {
        Some(at) => {
            let (user, had_password) = match rest[..at].split_once(':') {
                Some((user, _)) => (user, true),
                None => (&rest[..at], false),
            };
            let masked = if had_password {
                format!("{user}:***@")
            } else {
                format!("{user}@")
            };
            (masked, &rest[at + 1..])
        }
        None => (String::new(), rest),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let query: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                    _ => pair.to_owned(),
                })
                .collect();
            format!("{path}?{}", query.join("&"))
        }
        None => tail.to_owned(),
    };
    format!("{scheme}://{userinfo}{tail}")
}

/// Which database a catalog URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

impl Dialect {
    pub fn of_url(url: &str) -> Option<Dialect> {
        if url.starts_with("sqlite:") {
            Some(Dialect::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Some(Dialect::Postgres)
        } else {
            None
        }
    }
}

#[derive(Clone, Debug)]
pub struct Catalog {
    db: Db,
}

#[derive(Clone, Debug)]
enum Db {
    Sqlite(sqlite::Handle),
    Postgres(postgres::Handle),
}

/// Calls the function of `queries.rs` of the catalog's dialect with the
/// dialect's handle first: `dispatch!(self, blob_size(digest))`.
macro_rules! dispatch {
    ($self:ident, $f:ident($($arg:expr),* $(,)?)) => {
        match &$self.db {
            Db::Sqlite(h) => sqlite::queries::$f(h, $($arg),*).await,
            Db::Postgres(h) => postgres::queries::$f(h, $($arg),*).await,
        }
    };
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
    /// Opens (creating if needed, for SQLite) the catalog at `url` and runs
    /// the migrations of its dialect.
    pub async fn open(url: &str) -> Result<Catalog> {
        let db = match Dialect::of_url(url) {
            Some(Dialect::Sqlite) => Db::Sqlite(sqlite::Handle::open(url).await?),
            Some(Dialect::Postgres) => Db::Postgres(postgres::Handle::open(url).await?),
            None => return Err(CatalogError::UnsupportedUrl(redact_url(url))),
        };
        tracing::debug!(catalog = %redact_url(url), "catalog opened");
        Ok(Catalog { db })
    }

    pub fn dialect(&self) -> Dialect {
        match self.db {
            Db::Sqlite(_) => Dialect::Sqlite,
            Db::Postgres(_) => Dialect::Postgres,
        }
    }

    /// Is the database reachable?
    pub async fn ping(&self) -> Result<()> {
        dispatch!(self, ping())
    }

    // ---- repositories ------------------------------------------------------

    pub async fn repository_exists(&self, name: &str) -> Result<bool> {
        dispatch!(self, repository_exists(name))
    }

    /// Repository names after `last`, in lexical (byte) order.
    pub async fn repositories(&self, last: &str, limit: u32) -> Result<Vec<String>> {
        dispatch!(self, repositories(last, limit))
    }

    // ---- blobs ---------------------------------------------------------------

    /// Size of `digest` if `repository` may serve it.
    pub async fn repository_blob_size(
        &self,
        repository: &str,
        digest: &str,
    ) -> Result<Option<u64>> {
        dispatch!(self, repository_blob_size(repository, digest))
    }

    /// Size of `digest` if any repository holds it.
    pub async fn blob_size(&self, digest: &str) -> Result<Option<u64>> {
        dispatch!(self, blob_size(digest))
    }

    /// Records that the blob is stored (its bytes must already be in place)
    /// and that `repository` may serve it.
    pub async fn link_blob(&self, repository: &str, digest: &str, size: u64) -> Result<()> {
        dispatch!(self, link_blob(repository, digest, size))
    }

    pub async fn repositories_with_blob(&self, digest: &str) -> Result<Vec<String>> {
        dispatch!(self, repositories_with_blob(digest))
    }

    /// Removes `repository`'s right to serve the blob. The bytes stay for the
    /// garbage collector, since other repositories may share them.
    pub async fn unlink_blob(&self, repository: &str, digest: &str) -> Result<bool> {
        dispatch!(self, unlink_blob(repository, digest))
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
            if !dispatch!(self, manifest_exists(repository, d))? {
                missing.push(d.clone());
            }
        }
        Ok(missing)
    }

    /// Stores a manifest and, when `tag` is given, points the tag at it, in
    /// one transaction.
    pub async fn put_manifest(
        &self,
        repository: &str,
        m: &NewManifest<'_>,
        tag: Option<&str>,
    ) -> Result<()> {
        dispatch!(self, put_manifest(repository, m, tag))
    }

    pub async fn manifest_by_digest(
        &self,
        repository: &str,
        digest: &str,
    ) -> Result<Option<StoredManifest>> {
        dispatch!(self, manifest_by_digest(repository, digest))
    }

    pub async fn manifest_by_tag(
        &self,
        repository: &str,
        tag: &str,
    ) -> Result<Option<StoredManifest>> {
        dispatch!(self, manifest_by_tag(repository, tag))
    }

    /// Deletes a manifest, the tags that name it and its references.
    pub async fn delete_manifest(&self, repository: &str, digest: &str) -> Result<bool> {
        dispatch!(self, delete_manifest(repository, digest))
    }

    /// Removes a tag, leaving its manifest.
    pub async fn delete_tag(&self, repository: &str, tag: &str) -> Result<bool> {
        dispatch!(self, delete_tag(repository, tag))
    }

    /// Tag names after `last`, in the spec's lexical order: case-insensitive,
    /// ties (`Beta`, `beta`) broken by bytes so paging never skips one.
    pub async fn tags(&self, repository: &str, last: &str, limit: u32) -> Result<Vec<String>> {
        dispatch!(self, tags(repository, last, limit))
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
        dispatch!(
            self,
            referrers(repository, subject, artifact_type, last, limit)
        )
    }

    // ---- uploads -----------------------------------------------------------------

    pub async fn create_upload(&self, id: &str, repository: &str) -> Result<()> {
        dispatch!(self, create_upload(id, repository))
    }

    pub async fn upload(&self, id: &str) -> Result<Option<Upload>> {
        dispatch!(self, upload(id))
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
        dispatch!(self, append_upload_part(id, expected_size, key, size))
    }

    pub async fn delete_upload(&self, id: &str) -> Result<bool> {
        dispatch!(self, delete_upload(id))
    }

    /// Completes an upload: the blob (whose bytes are already stored under
    /// its digest) becomes visible in `repository` and the session ends.
    pub async fn finish_upload(
        &self,
        id: &str,
        repository: &str,
        digest: &str,
        size: u64,
    ) -> Result<()> {
        dispatch!(self, finish_upload(id, repository, digest, size))
    }
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

impl Catalog {
    pub async fn user_count(&self) -> Result<i64> {
        dispatch!(self, user_count())
    }

    /// Creates a user; false when the name is taken.
    pub async fn create_user(
        &self,
        name: &str,
        password_hash: &str,
        is_admin: bool,
        is_robot: bool,
    ) -> Result<bool> {
        dispatch!(self, create_user(name, password_hash, is_admin, is_robot))
    }

    pub async fn user(&self, name: &str) -> Result<Option<UserRecord>> {
        dispatch!(self, user(name))
    }

    pub async fn users(&self) -> Result<Vec<UserRecord>> {
        dispatch!(self, users())
    }

    pub async fn delete_user(&self, name: &str) -> Result<bool> {
        dispatch!(self, delete_user(name))
    }

    pub async fn set_password(&self, name: &str, password_hash: &str) -> Result<bool> {
        dispatch!(self, set_password(name, password_hash))
    }

    /// Sets (replaces) a user's actions on a pattern; false if no such user.
    pub async fn set_grant(&self, user: &str, pattern: &str, actions: &str) -> Result<bool> {
        dispatch!(self, set_grant(user, pattern, actions))
    }

    pub async fn revoke_grant(&self, user: &str, pattern: &str) -> Result<bool> {
        dispatch!(self, revoke_grant(user, pattern))
    }

    /// (pattern, actions) pairs of a user.
    pub async fn grants(&self, user_id: i64) -> Result<Vec<(String, String)>> {
        dispatch!(self, grants(user_id))
    }

    pub async fn set_public(&self, pattern: &str, public: bool) -> Result<bool> {
        dispatch!(self, set_public(pattern, public))
    }

    pub async fn public_patterns(&self) -> Result<Vec<String>> {
        dispatch!(self, public_patterns())
    }
}
