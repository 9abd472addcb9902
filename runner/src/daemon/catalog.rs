//! The daemon's SQLite catalog: opening it and running the migrations in
//! `migrations/runner/`. Images keep their queries in `images`, containers
//! in `containers`; this file only owns the pool.

use std::path::Path;
use std::str::FromStr;

use sqlx::SqlitePool;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

use super::error::{Error, Result};

/// Opens (creating) `<root>/runner.db` and migrates it.
pub async fn open(root: &Path) -> Result<SqlitePool> {
    let path = root.join("runner.db");
    let opts = SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))
        .map_err(Error::internal)?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        // NORMAL in WAL mode: a power cut may lose the last transactions, never
        // consistency; container state is re-derived from the shims on start.
        .synchronous(SqliteSynchronous::Normal)
        .foreign_keys(true)
        .busy_timeout(std::time::Duration::from_secs(10));
    let pool = SqlitePoolOptions::new()
        .max_connections(4)
        .connect_with(opts)
        .await
        .map_err(|e| Error::Internal(format!("catalog {}: {e}", path.display())))?;
    sqlx::migrate!("../migrations/runner")
        .run(&pool)
        .await
        .map_err(|e| Error::Internal(format!("catalog {} migration: {e}", path.display())))?;
    Ok(pool)
}
