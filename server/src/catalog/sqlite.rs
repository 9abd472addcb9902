//! The SQLite dialect of the catalog: opening (WAL, `synchronous=FULL`, a
//! second pool with `synchronous=NORMAL` for upload-session rows), the
//! migrations of `migrations/sqlite/`, and `BEGIN IMMEDIATE` write
//! transactions, so concurrent writers queue on SQLite's lock instead of
//! failing on a stale snapshot. The queries themselves are `queries.rs`,
//! compiled here against sqlx's SQLite driver. Calls only sqlx.

use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Sqlite, Transaction};

use super::{CatalogError, Result};

pub type Conn = sqlx::SqliteConnection;
/// The sqlx driver (for `QueryBuilder`s).
pub type Driver = sqlx::Sqlite;
/// Which dialect `queries.rs` is compiled for.
pub const PG: bool = false;

// The same file is this module in both dialects, on purpose.
#[allow(clippy::duplicate_mod)]
#[path = "queries.rs"]
pub mod queries;

// The garbage collector's queries, likewise (see `catalog/gc.rs`).
#[allow(clippy::duplicate_mod)]
#[path = "gc_queries.rs"]
pub mod gc_queries;

// The web catalog's queries, likewise (see `catalog/browse.rs`).
#[allow(clippy::duplicate_mod)]
#[path = "browse_queries.rs"]
pub mod browse_queries;

// The fleet control plane's queries, likewise (see `catalog/fleet.rs`).
#[allow(clippy::duplicate_mod)]
#[path = "fleet_queries.rs"]
pub mod fleet_queries;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/sqlite");

#[derive(Clone, Debug)]
pub struct Handle {
    pub pool: SqlitePool,
    /// Connections with `synchronous=NORMAL`, for the rows of upload
    /// sessions only (see `Handle::open`).
    sessions: SqlitePool,
}

impl Handle {
    pub async fn open(url: &str) -> Result<Handle> {
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
            .await
            .map_err(|error| CatalogError::Connect {
                url: url.to_owned(),
                error,
            })?;
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
        Ok(Handle { pool, sessions })
    }

    /// A write transaction: `BEGIN IMMEDIATE` takes the write lock first.
    pub async fn write_tx(&self) -> Result<Transaction<'static, Sqlite>> {
        Ok(self.pool.begin_with("BEGIN IMMEDIATE").await?)
    }

    /// A write transaction for upload-session rows only (`synchronous=NORMAL`).
    pub async fn session_tx(&self) -> Result<Transaction<'static, Sqlite>> {
        Ok(self.sessions.begin_with("BEGIN IMMEDIATE").await?)
    }

    /// The pool for single statements on upload-session rows.
    pub fn sessions(&self) -> &SqlitePool {
        &self.sessions
    }
}

/// Runs a write transaction once: SQLite serialises writers itself.
pub async fn retry<T, F, Fut>(mut attempt: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    attempt().await
}
