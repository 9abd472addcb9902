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

/// The catalog's errors. The underlying sqlx error is part of each message
/// and deliberately not a `#[source]`: `{:#}` (how `main` prints the one
/// line of a failed start) would print it again for every level.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("catalog database: {0}")]
    Db(sqlx::Error),
    /// The catalog could not be opened; `url` has its password masked.
    #[error("cannot open the catalog at {url}: {error}")]
    Connect { url: String, error: sqlx::Error },
    #[error("catalog migration: {0}")]
    Migrate(sqlx::migrate::MigrateError),
    #[error(
        "unsupported catalog URL {0:?} (use sqlite://PATH or postgres://USER:PASSWORD@HOST:PORT/DB)"
    )]
    UnsupportedUrl(String),
}

impl From<sqlx::Error> for CatalogError {
    fn from(e: sqlx::Error) -> Self {
        CatalogError::Db(e)
    }
}

impl From<sqlx::migrate::MigrateError> for CatalogError {
    fn from(e: sqlx::migrate::MigrateError) -> Self {
        CatalogError::Migrate(e)
    }
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

/// A paging cursor (`last`) as the queries get it: cut at its first NUL.
/// PostgreSQL text cannot hold NUL, and nothing the catalog stores contains
/// one, so for `x > last` the cut is exact (a stored `x` is after
/// `"ab\0c"` exactly when it is after `"ab"`); both dialects get the same
/// cursor, so they answer alike.
fn cursor(last: &str) -> &str {
    last.split('\0').next().unwrap_or("")
}

/// A key no stored row can have: text with a NUL character (PostgreSQL
/// refuses it, and the grammars of names, tags, digests and user names
/// exclude it). Lookups by such a key find nothing, in both dialects.
fn impossible(key: &str) -> bool {
    key.contains('\0')
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
pub mod browse;
pub mod fleet;
mod gc;
pub use gc::{Claim, GcBlob, GcManifest, GcReference, GcUpload, LeaseHolder};

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
    /// Compressed bytes of an image (config + layers), for an index the sum
    /// over its children; None when unknown (see `crate::browse`).
    pub total_size: Option<i64>,
    /// JSON array text of "os/arch[/variant]".
    pub platforms: Option<&'a str>,
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

    /// Blobs stored, the sum of their sizes, and open upload sessions, for
    /// the metrics (one query; the store is never walked).
    pub async fn stored_totals(&self) -> Result<(u64, u64, u64)> {
        dispatch!(self, stored_totals())
    }

    // ---- repositories ------------------------------------------------------

    pub async fn repository_exists(&self, name: &str) -> Result<bool> {
        dispatch!(self, repository_exists(name))
    }

    /// Repository names after `last`, in lexical (byte) order.
    pub async fn repositories(&self, last: &str, limit: u32) -> Result<Vec<String>> {
        dispatch!(self, repositories(cursor(last), limit))
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
        dispatch!(self, link_blob(repository, digest, incarnation))
    }

    /// Cross-repository mount of a blob that is already stored: links it
    /// into `repository` only if its row is live (not pending, not being
    /// collected), in the same transaction that marks it used. Returns its
    /// size, or `None` when there is nothing to mount.
    pub async fn mount_blob(&self, repository: &str, digest: &str) -> Result<Option<u64>> {
        dispatch!(self, mount_blob(repository, digest))
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
            if impossible(d) || self.repository_blob_size(repository, d).await?.is_none() {
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
            if impossible(d) || !dispatch!(self, manifest_exists(repository, d))? {
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
    /// ties (`Beta`, `beta`) broken by bytes so paging never skips one. A
    /// `last` with a NUL is cut there (see `cursor`).
    pub async fn tags(&self, repository: &str, last: &str, limit: u32) -> Result<Vec<String>> {
        dispatch!(self, tags(repository, cursor(last), limit))
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
        if artifact_type.is_some_and(impossible) {
            return Ok(Vec::new());
        }
        let last = cursor(last);
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
        incarnation: &str,
    ) -> Result<bool> {
        dispatch!(self, finish_upload(id, repository, digest, incarnation))
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
        if impossible(name) {
            return Ok(None);
        }
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

#[cfg(test)]
pub(crate) use tests::Backends;

#[cfg(test)]
mod tests {
    //! The catalog's own rules, on SQLite always and on PostgreSQL too when
    //! `WHARF_TEST_POSTGRES_URL` names a server (as `scripts/test` does).

    use super::*;
    use sqlx::Connection as _;

    /// A fresh catalog of each dialect available; the PostgreSQL one gets a
    /// database of its own with an ICU en-US default collation (one that
    /// does not sort by bytes), dropped by `Backends::drop_all`.
    /// The catalogs a test runs on: SQLite in a temporary directory, and a
    /// fresh PostgreSQL database when `WHARF_TEST_POSTGRES_URL` is set (also
    /// used by the garbage collector's tests).
    pub(crate) struct Backends {
        _dir: tempfile::TempDir,
        pub(crate) urls: Vec<String>,
        pg: Option<(String, String)>,
    }

    impl Backends {
        pub(crate) async fn new() -> Backends {
            let dir = tempfile::tempdir().expect("tempdir");
            let mut urls = vec![format!(
                "sqlite://{}",
                dir.path().join("catalog.db").display()
            )];
            let mut pg = None;
            if let Some(admin) = std::env::var("WHARF_TEST_POSTGRES_URL")
                .ok()
                .filter(|u| !u.is_empty())
            {
                static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
                let name = format!(
                    "wharf_unit_{}_{}",
                    std::process::id(),
                    N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                );
                let mut conn = sqlx::PgConnection::connect(&admin).await.expect("connect");
                let icu = format!(
                    "CREATE DATABASE {name} TEMPLATE template0 ENCODING 'UTF8' \
                     LOCALE_PROVIDER icu ICU_LOCALE 'en-US' LOCALE 'C.UTF-8'"
                );
                if sqlx::raw_sql(sqlx::AssertSqlSafe(icu))
                    .execute(&mut conn)
                    .await
                    .is_err()
                {
                    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                        .execute(&mut conn)
                        .await
                        .expect("create database");
                }
                let (server, _) = admin.rsplit_once('/').expect("database in the URL");
                urls.push(format!("{server}/{name}"));
                pg = Some((admin.clone(), name));
            }
            Backends {
                _dir: dir,
                urls,
                pg,
            }
        }

        pub(crate) async fn drop_all(self) {
            if let Some((admin, name)) = &self.pg {
                let mut conn = sqlx::PgConnection::connect(admin).await.expect("connect");
                let sql = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
                sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                    .execute(&mut conn)
                    .await
                    .expect("drop database");
            }
        }
    }

    #[test]
    fn migrations_are_in_step() {
        // Same file names, and the same tables, columns and indexes.
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../migrations");
        let read = |dialect: &str| {
            let mut files: Vec<(String, String)> = std::fs::read_dir(root.join(dialect))
                .expect("migrations dir")
                .map(|e| {
                    let p = e.expect("entry").path();
                    let name = p.file_name().unwrap().to_string_lossy().into_owned();
                    (name, std::fs::read_to_string(&p).expect("read"))
                })
                .collect();
            files.sort();
            files
        };
        // "table.column" and "index name" lines of a schema file.
        let shape = |sql: &str| {
            let mut out = Vec::new();
            let mut table = None;
            for line in sql.lines().map(str::trim) {
                let words: Vec<&str> = line.split_whitespace().collect();
                match words.as_slice() {
                    ["CREATE", "TABLE", name, ..] => table = Some(name.to_string()),
                    ["CREATE", "INDEX", name, ..] => out.push(format!("index {name}")),
                    [")" | ");", ..] => table = None,
                    [col, ..]
                        if table.is_some()
                            && !col.starts_with("--")
                            && !["PRIMARY", "FOREIGN", "REFERENCES"].contains(col) =>
                    {
                        out.push(format!("{}.{col}", table.as_deref().unwrap_or("")));
                    }
                    _ => {}
                }
            }
            out
        };
        let (sqlite, pg) = (read("sqlite"), read("postgres"));
        let names = |v: &[(String, String)]| v.iter().map(|f| f.0.clone()).collect::<Vec<_>>();
        assert_eq!(names(&sqlite), names(&pg), "migration file names differ");
        for ((name, a), (_, b)) in sqlite.iter().zip(&pg) {
            assert_eq!(shape(a), shape(b), "{name}: the schemas differ");
            assert!(!shape(a).is_empty(), "{name}: nothing parsed");
        }
    }

    #[test]
    fn urls_are_logged_without_their_password() {
        let cases = [
            (
                "postgres://wharf:s3cr%40t@db.lan:5432/wharf",
                "postgres://wharf:***@db.lan:5432/wharf",
            ),
            (
                "postgresql://u:p@ss:w@rd@h/db?sslmode=disable&password=x",
                "postgresql://u:***@h/db?sslmode=disable&password=***",
            ),
            ("postgres://u@h/db", "postgres://u@h/db"),
            ("postgres://h/db?PASSWORD=x", "postgres://h/db?PASSWORD=***"),
            (
                "sqlite:///var/lib/wharf/catalog.db",
                "sqlite:///var/lib/wharf/catalog.db",
            ),
        ];
        for (url, want) in cases {
            assert_eq!(redact_url(url), want, "{url}");
        }
        assert_eq!(Dialect::of_url("postgresql://h/d"), Some(Dialect::Postgres));
        assert_eq!(Dialect::of_url("sqlite://x"), Some(Dialect::Sqlite));
        assert_eq!(Dialect::of_url("mysql://x"), None);
    }

    #[tokio::test]
    async fn a_bad_url_is_one_clear_error_without_the_password() {
        let err = Catalog::open("mysql://u:hunter2@h/db").await.unwrap_err();
        let text = err.to_string();
        assert!(text.contains("unsupported catalog URL"), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
        // Nothing listens on port 1.
        let err = Catalog::open("postgres://u:hunter2@127.0.0.1:1/db")
            .await
            .unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with("cannot open the catalog at postgres://u:***@127.0.0.1:1/db:"),
            "{text}"
        );
        assert!(!text.contains("hunter2"), "{text}");
    }

    fn manifest<'a>(digest: &'a str, blobs: &'a [String]) -> NewManifest<'a> {
        NewManifest {
            digest,
            media_type: "application/vnd.oci.image.manifest.v1+json",
            artifact_type: None,
            subject: None,
            annotations: None,
            content: b"{}",
            blobs,
            manifests: &[],
            total_size: None,
            platforms: None,
        }
    }

    /// Claims the digest, then links it, as a push does once its bytes are
    /// placed (see `Catalog::claim_blob`).
    async fn link(cat: &Catalog, repository: &str, digest: &str, size: u64) -> Result<bool> {
        match cat.claim_blob(digest, size).await? {
            Claim::Claimed(incarnation) => cat.link_blob(repository, digest, &incarnation).await,
            Claim::Deleting => Ok(false),
        }
    }

    fn digest(n: u32) -> String {
        format!("sha256:{n:064x}")
    }

    #[tokio::test]
    async fn names_and_tags_sort_by_bytes_in_every_dialect() {
        let backends = Backends::new().await;
        for url in &backends.urls {
            let cat = Catalog::open(url).await.expect("open");
            // Byte order: '-' < '.' < '/' < digits < letters; a locale
            // collation would ignore the punctuation.
            let repos = ["a-c", "a.b", "a/a", "a0", "ab"];
            for r in repos.iter().rev() {
                assert!(link(&cat, r, &digest(1), 1).await.expect("link"));
            }
            assert_eq!(cat.repositories("", 100).await.unwrap(), repos, "{url}");
            assert_eq!(cat.repositories("a.b", 2).await.unwrap(), ["a/a", "a0"]);
            assert_eq!(cat.repositories("a.b\0zz", 1).await.unwrap(), ["a/a"]);

            let blobs = [digest(1)];
            cat.put_manifest("a0", &manifest(&digest(2), &blobs), None)
                .await
                .unwrap();
            for t in ["beta", "Beta", "alpha", "B-1", "b.2", "ALPHA2"] {
                cat.put_manifest("a0", &manifest(&digest(2), &blobs), Some(t))
                    .await
                    .unwrap();
            }
            let want = ["alpha", "ALPHA2", "B-1", "b.2", "Beta", "beta"];
            assert_eq!(cat.tags("a0", "", 100).await.unwrap(), want, "{url}");
            let mut paged = Vec::new();
            let mut last = String::new();
            loop {
                let page = cat.tags("a0", &last, 1).await.unwrap();
                let Some(l) = page.last() else { break };
                last = l.clone();
                paged.extend(page);
            }
            assert_eq!(paged, want, "{url}: paging one by one");
            assert!(cat.user("ad\0min").await.unwrap().is_none());
            let none = cat
                .referrers("a0", &digest(2), Some("x\0y"), "", 10)
                .await
                .unwrap();
            assert!(none.is_empty());
        }
        backends.drop_all().await;
    }

    /// Two catalogs on one database, as two replicas: the same blob,
    /// manifest and tag written at once from many tasks all succeed and
    /// leave one row each; of two appends at the same upload offset exactly
    /// one wins; finishing one upload twice at once is fine.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_writers_neither_fail_nor_lose_rows() {
        let backends = Backends::new().await;
        for url in &backends.urls {
            let a = Catalog::open(url).await.expect("open a");
            let b = Catalog::open(url).await.expect("open b");
            let mut tasks = Vec::new();
            for i in 0..24u32 {
                let cat = if i % 2 == 0 { a.clone() } else { b.clone() };
                tasks.push(tokio::spawn(async move {
                    let repo = format!("team/app{}", i % 3);
                    assert!(link(&cat, &repo, &digest(7), 70).await?);
                    let blobs = [digest(7)];
                    cat.put_manifest(&repo, &manifest(&digest(8), &blobs), Some("latest"))
                        .await?;
                    let m = digest(100 + i);
                    cat.put_manifest("team/shared", &manifest(&m, &blobs), None)
                        .await?;
                    assert!(link(&cat, "team/shared", &digest(7), 70).await?);
                    cat.put_manifest("team/shared", &manifest(&m, &blobs), Some("moving"))
                        .await?;
                    Ok::<_, CatalogError>(())
                }));
            }
            for t in tasks {
                t.await
                    .expect("task")
                    .unwrap_or_else(|e| panic!("{url}: {e}"));
            }
            assert_eq!(
                a.repositories("", 100).await.unwrap(),
                ["team/app0", "team/app1", "team/app2", "team/shared"]
            );
            assert_eq!(a.repositories_with_blob(&digest(7)).await.unwrap().len(), 4);
            assert_eq!(b.tags("team/shared", "", 10).await.unwrap(), ["moving"]);
            let moving = b.manifest_by_tag("team/shared", "moving").await.unwrap();
            assert!(moving.is_some(), "{url}: the tag lost its manifest");

            // Appends racing at one offset: exactly one wins, parts stay dense.
            a.create_upload("u1", "team/app0").await.unwrap();
            let mut size = 0;
            for round in 0..5u64 {
                let races = (0..6).map(|i| {
                    let cat = if i % 2 == 0 { a.clone() } else { b.clone() };
                    tokio::spawn(async move {
                        let key = format!("uploads/u1/{round}-{i}");
                        cat.append_upload_part("u1", size, &key, 10).await
                    })
                });
                let mut wins = 0;
                for r in futures::future::join_all(races).await {
                    if r.expect("task").unwrap_or_else(|e| panic!("{url}: {e}")) {
                        wins += 1;
                    }
                }
                assert_eq!(wins, 1, "{url}: round {round}");
                size += 10;
            }
            let u = b.upload("u1").await.unwrap().expect("upload");
            assert_eq!((u.size, u.parts.len()), (50, 5), "{url}");

            let d9 = digest(9);
            let Claim::Claimed(incarnation) = a.claim_blob(&d9, 50).await.unwrap() else {
                panic!("{url}: not claimed")
            };
            let (x, y) = tokio::join!(
                a.finish_upload("u1", "team/app0", &d9, &incarnation),
                b.finish_upload("u1", "team/app0", &d9, &incarnation)
            );
            assert!(x.unwrap() && y.unwrap(), "{url}: a finish was refused");
            assert!(a.upload("u1").await.unwrap().is_none());
            assert_eq!(
                a.repository_blob_size("team/app0", &digest(9))
                    .await
                    .unwrap(),
                Some(50)
            );
        }
        backends.drop_all().await;
    }
}
