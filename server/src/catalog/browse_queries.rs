//! The web catalog's SQL (see `catalog/browse.rs` for what each query
//! means), written once and compiled per dialect like `queries.rs`: both
//! `sqlite.rs` and `postgres.rs` declare this file as their `browse_queries`
//! module, so `super::` is the dialect.
//!
//! Every listing is one indexed query for the page and one count, filtered
//! by the viewer's patterns in SQL (`LIKE ... ESCAPE '\'`, patterns passed as
//! one JSON array parameter: `json_each` on SQLite,
//! `jsonb_array_elements_text` on PostgreSQL). Nothing here reads a
//! manifest's content to list it: sizes, platforms, tag counts and push
//! times are columns kept at write time.
//!
//! Called by `catalog/browse.rs` only.

use super::{Driver, Handle, PG, retry};
use crate::catalog::Result;
use crate::catalog::browse::{
    Listing, ManifestRow, Order, ReferrerRow, RepoRow, SeedRows, TagRow, Totals, Unsummarized,
};

/// The viewer's patterns ($1, JSON array text or NULL) and the name filter
/// ($2, a LIKE pattern or NULL) on `repositories r`.
macro_rules! repo_filter_sqlite {
    () => {
        r"($1 IS NULL OR EXISTS (SELECT 1 FROM json_each($1) p WHERE r.name LIKE p.value ESCAPE '\'))
          AND ($2 IS NULL OR r.name LIKE $2 ESCAPE '\')"
    };
}
macro_rules! repo_filter_pg {
    () => {
        r"($1::text IS NULL OR EXISTS (SELECT 1 FROM jsonb_array_elements_text($1::jsonb) p(v)
                                        WHERE r.name LIKE p.v ESCAPE '\'))
          AND ($2::text IS NULL OR r.name LIKE $2 ESCAPE '\')"
    };
}

type RepoTuple = (String, i64, i64);

pub async fn repositories(db: &Handle, l: Listing<'_>) -> Result<(i64, Vec<RepoRow>)> {
    let (count, page) = match (PG, l.order) {
        (false, Order::Name) => (
            concat!(
                "SELECT COUNT(*) FROM repositories r WHERE ",
                repo_filter_sqlite!()
            ),
            concat!(
                "SELECT r.name, r.tag_count, r.pushed_at FROM repositories r WHERE ",
                repo_filter_sqlite!(),
                " ORDER BY r.name LIMIT $3 OFFSET $4"
            ),
        ),
        (false, Order::Pushed) => (
            concat!(
                "SELECT COUNT(*) FROM repositories r WHERE ",
                repo_filter_sqlite!()
            ),
            concat!(
                "SELECT r.name, r.tag_count, r.pushed_at FROM repositories r WHERE ",
                repo_filter_sqlite!(),
                " ORDER BY r.pushed_at DESC, r.name LIMIT $3 OFFSET $4"
            ),
        ),
        (true, Order::Name) => (
            concat!(
                "SELECT COUNT(*) FROM repositories r WHERE ",
                repo_filter_pg!()
            ),
            concat!(
                "SELECT r.name, r.tag_count, r.pushed_at FROM repositories r WHERE ",
                repo_filter_pg!(),
                " ORDER BY r.name LIMIT $3 OFFSET $4"
            ),
        ),
        (true, Order::Pushed) => (
            concat!(
                "SELECT COUNT(*) FROM repositories r WHERE ",
                repo_filter_pg!()
            ),
            concat!(
                "SELECT r.name, r.tag_count, r.pushed_at FROM repositories r WHERE ",
                repo_filter_pg!(),
                " ORDER BY r.pushed_at DESC, r.name LIMIT $3 OFFSET $4"
            ),
        ),
    };
    let total: i64 = sqlx::query_scalar(count)
        .bind(l.patterns)
        .bind(l.like)
        .fetch_one(&db.pool)
        .await?;
    if l.offset >= total as u64 || l.limit == 0 {
        return Ok((total, Vec::new()));
    }
    let rows: Vec<RepoTuple> = sqlx::query_as(page)
        .bind(l.patterns)
        .bind(l.like)
        .bind(l.limit as i64)
        .bind(l.offset as i64)
        .fetch_all(&db.pool)
        .await?;
    Ok((
        total,
        rows.into_iter()
            .map(|(name, tag_count, pushed_at)| RepoRow {
                name,
                tag_count,
                pushed_at,
            })
            .collect(),
    ))
}

pub async fn repository(db: &Handle, name: &str) -> Result<Option<RepoRow>> {
    let row: Option<RepoTuple> =
        sqlx::query_as("SELECT name, tag_count, pushed_at FROM repositories WHERE name = $1")
            .bind(name)
            .fetch_optional(&db.pool)
            .await?;
    Ok(row.map(|(name, tag_count, pushed_at)| RepoRow {
        name,
        tag_count,
        pushed_at,
    }))
}

macro_rules! tag_filter_sqlite {
    () => {
        r" t.repository_id = (SELECT id FROM repositories WHERE name = $1)
           AND ($2 IS NULL OR lower(t.name) LIKE lower($2) ESCAPE '\')"
    };
}
macro_rules! tag_filter_pg {
    () => {
        r" t.repository_id = (SELECT id FROM repositories WHERE name = $1)
           AND ($2::text IS NULL OR lower(t.name) LIKE lower($2) ESCAPE '\')"
    };
}
/// The page of tags is cut from the tags' own index first (`p`), and only
/// its rows are joined with their manifests: an OFFSET deep into a large
/// repository then skips index entries, not manifest rows.
macro_rules! tag_page {
    ($filter:expr, $order:expr, $outer:expr) => {
        concat!(
            "SELECT p.name, p.manifest_digest, m.media_type, m.total_size, m.platforms, p.updated_at
               FROM (SELECT t.repository_id, t.name, t.manifest_digest, t.updated_at FROM tags t WHERE ",
            $filter,
            " ORDER BY ",
            $order,
            " LIMIT $3 OFFSET $4) p
               JOIN manifests m ON m.repository_id = p.repository_id AND m.digest = p.manifest_digest
              ORDER BY ",
            $outer
        )
    };
}
type TagTuple = (String, String, String, Option<i64>, Option<String>, i64);

pub async fn tags(db: &Handle, repo: &str, l: Listing<'_>) -> Result<(i64, Vec<TagRow>)> {
    let (count, page) = match (PG, l.order) {
        (false, Order::Name) => (
            concat!("SELECT COUNT(*) FROM tags t WHERE ", tag_filter_sqlite!()),
            tag_page!(
                tag_filter_sqlite!(),
                "lower(t.name), t.name",
                "lower(p.name), p.name"
            ),
        ),
        (false, Order::Pushed) => (
            concat!("SELECT COUNT(*) FROM tags t WHERE ", tag_filter_sqlite!()),
            tag_page!(
                tag_filter_sqlite!(),
                "t.updated_at DESC, t.name",
                "p.updated_at DESC, p.name"
            ),
        ),
        (true, Order::Name) => (
            concat!("SELECT COUNT(*) FROM tags t WHERE ", tag_filter_pg!()),
            tag_page!(
                tag_filter_pg!(),
                "lower(t.name), t.name",
                "lower(p.name), p.name"
            ),
        ),
        (true, Order::Pushed) => (
            concat!("SELECT COUNT(*) FROM tags t WHERE ", tag_filter_pg!()),
            tag_page!(
                tag_filter_pg!(),
                "t.updated_at DESC, t.name",
                "p.updated_at DESC, p.name"
            ),
        ),
    };
    let total: i64 = sqlx::query_scalar(count)
        .bind(repo)
        .bind(l.like)
        .fetch_one(&db.pool)
        .await?;
    if l.offset >= total as u64 || l.limit == 0 {
        return Ok((total, Vec::new()));
    }
    let rows: Vec<TagTuple> = sqlx::query_as(page)
        .bind(repo)
        .bind(l.like)
        .bind(l.limit as i64)
        .bind(l.offset as i64)
        .fetch_all(&db.pool)
        .await?;
    Ok((
        total,
        rows.into_iter()
            .map(
                |(name, digest, media_type, total_size, platforms, updated_at)| TagRow {
                    name,
                    digest,
                    media_type,
                    total_size,
                    platforms,
                    updated_at,
                },
            )
            .collect(),
    ))
}

type ManifestTuple = (
    String,
    String,
    Option<String>,
    Option<String>,
    i64,
    Vec<u8>,
    Option<i64>,
    Option<String>,
    i64,
);

fn manifest_row(t: ManifestTuple) -> ManifestRow {
    let (
        digest,
        media_type,
        artifact_type,
        subject,
        size,
        content,
        total_size,
        platforms,
        created_at,
    ) = t;
    ManifestRow {
        digest,
        media_type,
        artifact_type,
        subject,
        size,
        content,
        total_size,
        platforms,
        created_at,
    }
}

pub async fn manifest_by_digest(
    db: &Handle,
    repo: &str,
    digest: &str,
) -> Result<Option<ManifestRow>> {
    let row: Option<ManifestTuple> = sqlx::query_as(
        "SELECT m.digest, m.media_type, m.artifact_type, m.subject, m.size, m.content,
                m.total_size, m.platforms, m.created_at
           FROM manifests m JOIN repositories r ON r.id = m.repository_id
          WHERE r.name = $1 AND m.digest = $2",
    )
    .bind(repo)
    .bind(digest)
    .fetch_optional(&db.pool)
    .await?;
    Ok(row.map(manifest_row))
}

pub async fn manifest_by_tag(db: &Handle, repo: &str, tag: &str) -> Result<Option<ManifestRow>> {
    let row: Option<ManifestTuple> = sqlx::query_as(
        "SELECT m.digest, m.media_type, m.artifact_type, m.subject, m.size, m.content,
                m.total_size, m.platforms, m.created_at
           FROM tags t JOIN repositories r ON r.id = t.repository_id
           JOIN manifests m ON m.repository_id = t.repository_id AND m.digest = t.manifest_digest
          WHERE r.name = $1 AND t.name = $2",
    )
    .bind(repo)
    .bind(tag)
    .fetch_optional(&db.pool)
    .await?;
    Ok(row.map(manifest_row))
}

pub async fn tags_of(db: &Handle, repo: &str, digest: &str, limit: u32) -> Result<Vec<String>> {
    Ok(sqlx::query_scalar(
        "SELECT t.name FROM tags t JOIN repositories r ON r.id = t.repository_id
          WHERE r.name = $1 AND t.manifest_digest = $2
          ORDER BY lower(t.name), t.name LIMIT $3",
    )
    .bind(repo)
    .bind(digest)
    .bind(limit as i64)
    .fetch_all(&db.pool)
    .await?)
}

pub async fn summary(
    db: &Handle,
    repo: &str,
    digest: &str,
) -> Result<Option<(Option<i64>, Option<String>)>> {
    Ok(sqlx::query_as(
        "SELECT m.total_size, m.platforms FROM manifests m JOIN repositories r ON r.id = m.repository_id
          WHERE r.name = $1 AND m.digest = $2",
    )
    .bind(repo)
    .bind(digest)
    .fetch_optional(&db.pool)
    .await?)
}

pub async fn referrers(
    db: &Handle,
    repo: &str,
    subject: &str,
    artifact_type: Option<&str>,
    limit: u32,
) -> Result<Vec<ReferrerRow>> {
    type Row = (String, String, Option<String>, i64, Option<String>, i64);
    let sql = if PG {
        "SELECT m.digest, m.media_type, m.artifact_type, m.size, m.annotations, m.created_at
           FROM manifests m JOIN repositories r ON r.id = m.repository_id
          WHERE r.name = $1 AND m.subject = $2 AND ($3::text IS NULL OR m.artifact_type = $3)
          ORDER BY m.created_at DESC, m.digest LIMIT $4"
    } else {
        "SELECT m.digest, m.media_type, m.artifact_type, m.size, m.annotations, m.created_at
           FROM manifests m JOIN repositories r ON r.id = m.repository_id
          WHERE r.name = $1 AND m.subject = $2 AND ($3 IS NULL OR m.artifact_type = $3)
          ORDER BY m.created_at DESC, m.digest LIMIT $4"
    };
    let rows: Vec<Row> = sqlx::query_as(sql)
        .bind(repo)
        .bind(subject)
        .bind(artifact_type)
        .bind(limit as i64)
        .fetch_all(&db.pool)
        .await?;
    Ok(rows
        .into_iter()
        .map(
            |(digest, media_type, artifact_type, size, annotations, created_at)| ReferrerRow {
                digest,
                media_type,
                artifact_type,
                size,
                annotations,
                created_at,
            },
        )
        .collect())
}

/// Totals over the repositories `$filter` keeps: counts from the columns
/// the triggers keep; blobs from the visible repositories' links (primary
/// key prefix), each digest once. `CROSS JOIN` makes SQLite drive from the
/// visible repositories rather than scan every link (PostgreSQL plans it
/// like an inner join); `MATERIALIZED` evaluates the pattern filter once
/// per repository (SQLite 3.51 otherwise inlines `v` into every use, and
/// into the join, which made this 15x slower).
macro_rules! visible_totals {
    ($filter:expr) => {
        concat!(
            "WITH v AS MATERIALIZED (SELECT r.id, r.tag_count, r.manifest_count FROM repositories r WHERE ",
            $filter,
            "), d AS (SELECT DISTINCT rb.digest FROM v CROSS JOIN repository_blobs rb WHERE rb.repository_id = v.id),
             vb AS MATERIALIZED (SELECT b.size FROM d JOIN blobs b ON b.digest = d.digest WHERE b.state = 'live')
             SELECT (SELECT COUNT(*) FROM v),
                    (SELECT CAST(COALESCE(SUM(tag_count), 0) AS BIGINT) FROM v),
                    (SELECT CAST(COALESCE(SUM(manifest_count), 0) AS BIGINT) FROM v),
                    (SELECT COUNT(*) FROM vb),
                    (SELECT CAST(COALESCE(SUM(size), 0) AS BIGINT) FROM vb)"
        )
    };
}

pub async fn totals(db: &Handle, patterns: Option<&str>) -> Result<Totals> {
    let (repositories, tags, manifests, blobs, bytes): (i64, i64, i64, i64, i64) = match patterns
    {
        None => {
            sqlx::query_as(
                "SELECT (SELECT COUNT(*) FROM repositories),
                        (SELECT CAST(COALESCE(SUM(tag_count), 0) AS BIGINT) FROM repositories),
                        (SELECT CAST(COALESCE(SUM(manifest_count), 0) AS BIGINT) FROM repositories),
                        (SELECT COUNT(*) FROM blobs WHERE state = 'live'),
                        (SELECT CAST(COALESCE(SUM(size), 0) AS BIGINT) FROM blobs WHERE state = 'live')",
            )
            .fetch_one(&db.pool)
            .await?
        }
        Some(p) => {
            let sql = if PG {
                visible_totals!(
                    r"EXISTS (SELECT 1 FROM jsonb_array_elements_text($1::jsonb) p(v)
                              WHERE r.name LIKE p.v ESCAPE '\')"
                )
            } else {
                visible_totals!(
                    r"EXISTS (SELECT 1 FROM json_each($1) p WHERE r.name LIKE p.value ESCAPE '\')"
                )
            };
            sqlx::query_as(sql).bind(p).fetch_one(&db.pool).await?
        }
    };
    Ok(Totals {
        repositories,
        tags,
        manifests,
        blobs,
        bytes,
    })
}

pub async fn unsummarized(db: &Handle, indexes: bool, limit: u32) -> Result<Vec<Unsummarized>> {
    type Row = (i64, String, String, String, Vec<u8>);
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT m.repository_id, r.name, m.digest, m.media_type, m.content
           FROM manifests m JOIN repositories r ON r.id = m.repository_id
          WHERE m.platforms IS NULL
            AND (m.media_type IN ('application/vnd.oci.image.index.v1+json',
                                  'application/vnd.docker.distribution.manifest.list.v2+json')) = $1
          LIMIT $2",
    )
    .bind(indexes)
    .bind(limit as i64)
    .fetch_all(&db.pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(
            |(repository_id, repository, digest, media_type, content)| Unsummarized {
                repository_id,
                repository,
                digest,
                media_type,
                content,
            },
        )
        .collect())
}

pub async fn set_summary(
    db: &Handle,
    repository_id: i64,
    digest: &str,
    total_size: Option<i64>,
    platforms: &str,
) -> Result<()> {
    sqlx::query(
        "UPDATE manifests SET total_size = $3, platforms = $4
          WHERE repository_id = $1 AND digest = $2 AND platforms IS NULL",
    )
    .bind(repository_id)
    .bind(digest)
    .bind(total_size)
    .bind(platforms)
    .execute(&db.pool)
    .await?;
    Ok(())
}

// ---- seeding (benchmarks, scale tests) ---------------------------------------------

/// Rows per multi-row INSERT: well under SQLite's 32766 and PostgreSQL's
/// 65535 parameters for the widest (manifests, 8 columns).
const SEED_CHUNK: usize = 1000;

/// The joined inserts read `(VALUES ...) AS v` by its default column names
/// (`column1`, ... in both dialects); `WHERE true` keeps SQLite from reading
/// the join's `ON` and the upsert's `ON CONFLICT` as one clause.
pub async fn seed(db: &Handle, rows: &SeedRows) -> Result<()> {
    use sqlx::QueryBuilder;
    retry(|| async move {
        let mut tx = db.write_tx().await?;
        let now = crate::catalog::now_ms();
        for chunk in rows.repositories.chunks(SEED_CHUNK) {
            let mut q = QueryBuilder::<Driver>::new("INSERT INTO repositories (name, created_at) ");
            q.push_values(chunk, |mut b, (name, at)| {
                b.push_bind(name.as_str()).push_bind(*at);
            });
            q.push(" ON CONFLICT (name) DO NOTHING");
            q.build().execute(&mut *tx).await?;
        }
        for chunk in rows.blobs.chunks(SEED_CHUNK) {
            let mut q = QueryBuilder::<Driver>::new(
                "INSERT INTO blobs (digest, size, created_at, used_at, state, incarnation) ",
            );
            q.push_values(chunk, |mut b, (digest, size)| {
                b.push_bind(digest.as_str())
                    .push_bind(*size)
                    .push_bind(now)
                    .push_bind(now)
                    .push_bind("live")
                    .push_bind("seeded");
            });
            q.push(" ON CONFLICT (digest) DO NOTHING");
            q.build().execute(&mut *tx).await?;
        }
        for chunk in rows.repository_blobs.chunks(SEED_CHUNK) {
            let mut q = QueryBuilder::<Driver>::new(
                "INSERT INTO repository_blobs (repository_id, digest, created_at)
                 SELECT r.id, v.column2, v.column3 FROM (",
            );
            q.push_values(chunk, |mut b, (repo, digest)| {
                b.push_bind(repo.as_str())
                    .push_bind(digest.as_str())
                    .push_bind(now);
            });
            q.push(
                ") AS v JOIN repositories r ON r.name = v.column1
                 WHERE true ON CONFLICT DO NOTHING",
            );
            q.build().execute(&mut *tx).await?;
        }
        for chunk in rows.manifests.chunks(SEED_CHUNK) {
            let mut q = QueryBuilder::<Driver>::new(
                "INSERT INTO manifests (repository_id, digest, media_type, size, content,
                                        created_at, used_at, total_size, platforms)
                 SELECT r.id, v.column2, v.column3, v.column4, v.column5, v.column6, v.column6,
                        v.column7, v.column8 FROM (",
            );
            q.push_values(chunk, |mut b, m| {
                b.push_bind(m.repository.as_str())
                    .push_bind(m.digest.as_str())
                    .push_bind(m.media_type)
                    .push_bind(m.content.len() as i64)
                    .push_bind(m.content.as_slice())
                    .push_bind(m.created_at)
                    .push_bind(m.total_size)
                    .push_bind(m.platforms.as_str());
            });
            q.push(
                ") AS v JOIN repositories r ON r.name = v.column1
                 WHERE true ON CONFLICT DO NOTHING",
            );
            q.build().execute(&mut *tx).await?;
        }
        for chunk in rows.references.chunks(SEED_CHUNK) {
            let mut q = QueryBuilder::<Driver>::new(
                "INSERT INTO manifest_references (repository_id, manifest_digest, child_digest, kind)
                 SELECT r.id, v.column2, v.column3, v.column4 FROM (",
            );
            q.push_values(chunk, |mut b, (repo, m, c, k)| {
                b.push_bind(repo.as_str())
                    .push_bind(m.as_str())
                    .push_bind(c.as_str())
                    .push_bind(*k);
            });
            q.push(
                ") AS v JOIN repositories r ON r.name = v.column1
                 WHERE true ON CONFLICT DO NOTHING",
            );
            q.build().execute(&mut *tx).await?;
        }
        for chunk in rows.tags.chunks(SEED_CHUNK) {
            let mut q = QueryBuilder::<Driver>::new(
                "INSERT INTO tags (repository_id, name, manifest_digest, updated_at)
                 SELECT r.id, v.column2, v.column3, v.column4 FROM (",
            );
            q.push_values(chunk, |mut b, (repo, t, d, at)| {
                b.push_bind(repo.as_str())
                    .push_bind(t.as_str())
                    .push_bind(d.as_str())
                    .push_bind(*at);
            });
            q.push(
                ") AS v JOIN repositories r ON r.name = v.column1
                 WHERE true ON CONFLICT DO NOTHING",
            );
            q.build().execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    })
    .await
}

/// Refreshes the planner's statistics after a bulk load (PostgreSQL; its
/// autovacuum would do it later). Nothing on SQLite.
pub async fn analyze(db: &Handle) -> Result<()> {
    if PG {
        sqlx::query("ANALYZE").execute(&db.pool).await?;
    }
    Ok(())
}
