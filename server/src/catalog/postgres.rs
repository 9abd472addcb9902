//! The PostgreSQL dialect of the catalog: opening (one direct connection
//! first, so a bad or unreachable URL fails with its real cause, then the
//! pool), the migrations of `migrations/postgres/` (sqlx takes an advisory
//! lock, so replicas starting together migrate once), and READ COMMITTED
//! write transactions retried on serialization failures and deadlocks. The
//! queries themselves are `queries.rs`, compiled here against sqlx's
//! PostgreSQL driver. Several server replicas may share the database: what
//! keeps their writes correct is stated in `queries.rs`. Calls only sqlx.

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{ConnectOptions, Postgres, Transaction};

use super::{CatalogError, Result, redact_url};

pub type Conn = sqlx::PgConnection;
/// The sqlx driver (for `QueryBuilder`s).
pub type Driver = sqlx::Postgres;
/// Which dialect `queries.rs` is compiled for.
pub const PG: bool = true;

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

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/postgres");

/// How long the first connection may take before the start fails.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// Attempts of a write transaction that keeps meeting serialization
/// failures or deadlocks.
const ATTEMPTS: u32 = 8;

#[derive(Clone, Debug)]
pub struct Handle {
    pub pool: PgPool,
}

impl Handle {
    pub async fn open(url: &str) -> Result<Handle> {
        let connect_error = |error| CatalogError::Connect {
            url: redact_url(url),
            error,
        };
        let opts = PgConnectOptions::from_str(url)
            .map_err(connect_error)?
            .application_name("wharf-server");
        // One connection on its own first: the pool would retry until its
        // acquire timeout and then report only "timed out".
        match tokio::time::timeout(CONNECT_TIMEOUT, opts.connect()).await {
            Ok(Ok(conn)) => drop(conn),
            Ok(Err(e)) => return Err(connect_error(e)),
            Err(_) => {
                return Err(connect_error(sqlx::Error::Io(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no answer within {}s", CONNECT_TIMEOUT.as_secs()),
                ))));
            }
        }
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .min_connections(1)
            .connect_with(opts)
            .await
            .map_err(connect_error)?;
        MIGRATOR.run(&pool).await?;
        Ok(Handle { pool })
    }

    /// A write transaction (READ COMMITTED; see `queries.rs` for why each
    /// statement is safe under it).
    pub async fn write_tx(&self) -> Result<Transaction<'static, Postgres>> {
        Ok(self.pool.begin().await?)
    }

    /// Upload-session rows get no weaker durability here than other rows.
    pub async fn session_tx(&self) -> Result<Transaction<'static, Postgres>> {
        self.write_tx().await
    }

    pub fn sessions(&self) -> &PgPool {
        &self.pool
    }
}

/// Is this the kind of failure where running the transaction again is the
/// answer: a serialization failure (40001) or a deadlock (40P01)?
fn transient(e: &CatalogError) -> bool {
    match e {
        CatalogError::Db(sqlx::Error::Database(db)) => {
            matches!(db.code().as_deref(), Some("40001" | "40P01"))
        }
        _ => false,
    }
}

/// Runs a write transaction, again (after a short, growing pause) when
/// PostgreSQL aborted it for a serialization failure or a deadlock. The
/// transaction of a failed attempt is rolled back when it is dropped.
pub async fn retry<T, F, Fut>(mut attempt: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let mut n = 1;
    loop {
        match attempt().await {
            Err(e) if n < ATTEMPTS && transient(&e) => {
                tracing::debug!(error = %e, attempt = n, "catalog transaction retried");
                tokio::time::sleep(Duration::from_millis(5 * u64::from(n))).await;
                n += 1;
            }
            done => return done,
        }
    }
}
