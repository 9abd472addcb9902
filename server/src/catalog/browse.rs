//! The catalog's side of the web catalog (`crate::browse`): paged, filtered
//! listings of repositories and tags read from the columns kept at write
//! time (`repositories.pushed_at`/`tag_count`, kept by triggers;
//! `manifests.total_size`/`platforms`, written with the manifest), one
//! manifest with what the browse view shows, referrers with their times,
//! totals, and the fill-in of manifest summaries an older catalog lacks. The
//! SQL is `browse_queries.rs`, compiled for each dialect; every method here
//! dispatches to it.
//!
//! Visibility: a listing takes the viewer's pull patterns as `LIKE`
//! patterns (see [`like_pattern`]), so filtering happens in SQL and paging
//! and counts only ever see what the viewer may pull.

use super::{Catalog, Db, Result, impossible, postgres, sqlite};

macro_rules! browse_dispatch {
    ($self:ident, $f:ident($($arg:expr),* $(,)?)) => {
        match &$self.db {
            Db::Sqlite(h) => sqlite::browse_queries::$f(h, $($arg),*).await,
            Db::Postgres(h) => postgres::browse_queries::$f(h, $($arg),*).await,
        }
    };
}

/// A repository as listed.
#[derive(Debug, Clone, PartialEq)]
pub struct RepoRow {
    pub name: String,
    pub tag_count: i64,
    pub pushed_at: i64,
}

/// A tag as listed, with its manifest's summary.
#[derive(Debug, Clone, PartialEq)]
pub struct TagRow {
    pub name: String,
    pub digest: String,
    pub media_type: String,
    pub total_size: Option<i64>,
    /// JSON array text, None if not computed yet.
    pub platforms: Option<String>,
    pub updated_at: i64,
}

/// A manifest with its bytes and stored summary.
#[derive(Debug, Clone)]
pub struct ManifestRow {
    pub digest: String,
    pub media_type: String,
    pub artifact_type: Option<String>,
    pub subject: Option<String>,
    pub size: i64,
    pub content: Vec<u8>,
    pub total_size: Option<i64>,
    pub platforms: Option<String>,
    pub created_at: i64,
}

/// A referrer with the time it was pushed.
#[derive(Debug, Clone)]
pub struct ReferrerRow {
    pub digest: String,
    pub media_type: String,
    pub artifact_type: Option<String>,
    pub size: i64,
    pub annotations: Option<String>,
    pub created_at: i64,
}

/// Totals over what a viewer may see.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Totals {
    pub repositories: i64,
    pub tags: i64,
    pub manifests: i64,
    pub blobs: i64,
    pub bytes: i64,
}

/// A manifest whose summary is missing (a row of an older catalog).
#[derive(Debug, Clone)]
pub struct Unsummarized {
    pub repository_id: i64,
    pub repository: String,
    pub digest: String,
    pub media_type: String,
    pub content: Vec<u8>,
}

/// How a listing is sorted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// By name (tags: case-insensitively, ties by bytes).
    Name,
    /// Most recently pushed first, ties by name.
    Pushed,
}

/// The part of a listing request the catalog needs. `patterns` is JSON array
/// text of `LIKE` patterns (None: no restriction); `like` a `LIKE` pattern
/// for the name.
#[derive(Debug, Clone, Copy)]
pub struct Listing<'a> {
    pub patterns: Option<&'a str>,
    pub like: Option<&'a str>,
    pub order: Order,
    pub limit: u32,
    pub offset: u64,
}

/// `text` with `LIKE`'s metacharacters (`%`, `_`) and the escape itself
/// (`\`) escaped, for `LIKE ... ESCAPE '\'`.
pub fn like_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    for c in text.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// A grant pattern (`team/*`: `*` is any run of characters) as a `LIKE`
/// pattern that matches exactly the names `auth::scope::pattern_matches`
/// accepts.
pub fn like_pattern(glob: &str) -> String {
    glob.split('*')
        .map(like_escape)
        .collect::<Vec<_>>()
        .join("%")
}

/// `LIKE` pattern of names containing `q`.
pub fn like_substring(q: &str) -> String {
    format!("%{}%", like_escape(q))
}

/// Rows written at once by the seeding tool (`crate::seed`): a few hundred
/// repositories with everything in them. Blob bytes must already be in the
/// store.
#[derive(Debug, Default)]
pub struct SeedRows {
    /// (name, created_at)
    pub repositories: Vec<(String, i64)>,
    /// (digest, size)
    pub blobs: Vec<(String, i64)>,
    /// (repository, digest)
    pub repository_blobs: Vec<(String, String)>,
    pub manifests: Vec<SeedManifest>,
    /// (repository, manifest digest, child digest, "blob" | "manifest")
    pub references: Vec<(String, String, String, &'static str)>,
    /// (repository, tag, manifest digest, updated_at)
    pub tags: Vec<(String, String, String, i64)>,
}

#[derive(Debug)]
pub struct SeedManifest {
    pub repository: String,
    pub digest: String,
    pub media_type: &'static str,
    pub content: Vec<u8>,
    pub total_size: Option<i64>,
    pub platforms: String,
    pub created_at: i64,
}

impl Catalog {
    /// Writes a batch of seeded rows in one transaction (multi-row inserts;
    /// existing rows are left as they are). For benchmarks and scale tests.
    pub async fn seed(&self, rows: &SeedRows) -> Result<()> {
        browse_dispatch!(self, seed(rows))
    }

    /// Refreshes the planner's statistics after a bulk load (PostgreSQL).
    pub async fn analyze(&self) -> Result<()> {
        browse_dispatch!(self, analyze())
    }

    /// One page of repositories, and how many there are in all, filtered
    /// and sorted in SQL.
    pub async fn browse_repositories(&self, l: Listing<'_>) -> Result<(i64, Vec<RepoRow>)> {
        if l.like.is_some_and(impossible) {
            return Ok((0, Vec::new()));
        }
        browse_dispatch!(self, repositories(l))
    }

    pub async fn browse_repository(&self, name: &str) -> Result<Option<RepoRow>> {
        if impossible(name) {
            return Ok(None);
        }
        browse_dispatch!(self, repository(name))
    }

    /// One page of a repository's tags and how many match in all
    /// (`patterns` of the listing is ignored: the caller checked the
    /// repository).
    pub async fn browse_tags(&self, repo: &str, l: Listing<'_>) -> Result<(i64, Vec<TagRow>)> {
        if l.like.is_some_and(impossible) || impossible(repo) {
            return Ok((0, Vec::new()));
        }
        browse_dispatch!(self, tags(repo, l))
    }

    pub async fn browse_manifest_by_digest(
        &self,
        repo: &str,
        digest: &str,
    ) -> Result<Option<ManifestRow>> {
        if impossible(digest) || impossible(repo) {
            return Ok(None);
        }
        browse_dispatch!(self, manifest_by_digest(repo, digest))
    }

    pub async fn browse_manifest_by_tag(
        &self,
        repo: &str,
        tag: &str,
    ) -> Result<Option<ManifestRow>> {
        if impossible(tag) || impossible(repo) {
            return Ok(None);
        }
        browse_dispatch!(self, manifest_by_tag(repo, tag))
    }

    /// Tags naming a manifest (at most `limit`), by name.
    pub async fn browse_tags_of(
        &self,
        repo: &str,
        digest: &str,
        limit: u32,
    ) -> Result<Vec<String>> {
        browse_dispatch!(self, tags_of(repo, digest, limit))
    }

    /// Summaries (total size, platforms) of manifests of a repository.
    pub async fn manifest_summaries(
        &self,
        repo: &str,
        digests: &[String],
    ) -> Result<Vec<(String, Option<i64>, Option<String>)>> {
        let mut out = Vec::with_capacity(digests.len());
        for d in digests {
            if impossible(d) {
                continue;
            }
            if let Some((size, platforms)) = browse_dispatch!(self, summary(repo, d))? {
                out.push((d.clone(), size, platforms));
            }
        }
        Ok(out)
    }

    pub async fn browse_referrers(
        &self,
        repo: &str,
        subject: &str,
        artifact_type: Option<&str>,
        limit: u32,
    ) -> Result<Vec<ReferrerRow>> {
        if artifact_type.is_some_and(impossible) || impossible(subject) {
            return Ok(Vec::new());
        }
        browse_dispatch!(self, referrers(repo, subject, artifact_type, limit))
    }

    /// Totals over the repositories `patterns` allows (None: all).
    pub async fn browse_totals(&self, patterns: Option<&str>) -> Result<Totals> {
        browse_dispatch!(self, totals(patterns))
    }

    /// Up to `limit` manifests without a summary; image manifests first
    /// (`indexes` false), then indexes, whose sizes sum their children's.
    pub async fn unsummarized(&self, indexes: bool, limit: u32) -> Result<Vec<Unsummarized>> {
        browse_dispatch!(self, unsummarized(indexes, limit))
    }

    pub async fn set_summary(
        &self,
        repository_id: i64,
        digest: &str,
        total_size: Option<i64>,
        platforms: &str,
    ) -> Result<()> {
        browse_dispatch!(
            self,
            set_summary(repository_id, digest, total_size, platforms)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::scope::pattern_matches;

    #[test]
    fn like_patterns_escape_and_match_like_globs() {
        assert_eq!(like_escape(r"a%b_c\d"), r"a\%b\_c\\d");
        assert_eq!(like_pattern("team/*"), "team/%");
        assert_eq!(like_pattern("a_b/*/x"), r"a\_b/%/x");
        assert_eq!(like_substring("50%"), r"%50\%%");
        // The glob and its LIKE agree (checked against SQL in the API tests).
        assert!(pattern_matches("team/*", "team/a/b"));
    }

    fn digest(n: u32) -> String {
        format!("sha256:{n:064x}")
    }

    /// Tag counts and push times follow every write (the triggers), and the
    /// listings filter, search, sort and page in SQL, in both dialects.
    #[tokio::test]
    async fn listings_follow_writes_in_every_dialect() {
        let backends = crate::catalog::Backends::new().await;
        for url in &backends.urls {
            let cat = Catalog::open(url).await.expect("open");
            let blob = digest(1);
            for repo in ["team/app", "team/a_b", "pub/x", "other"] {
                let crate::catalog::Claim::Claimed(inc) = cat.claim_blob(&blob, 10).await.unwrap()
                else {
                    panic!("claim")
                };
                assert!(cat.link_blob(repo, &blob, &inc).await.unwrap());
            }
            let blobs = [blob.clone()];
            let m = |d: &'static str| crate::catalog::NewManifest {
                digest: d,
                media_type: "application/vnd.oci.image.manifest.v1+json",
                artifact_type: None,
                subject: None,
                annotations: None,
                content: b"{}",
                blobs: &blobs,
                manifests: &[],
                total_size: Some(42),
                platforms: Some(r#"["linux/amd64"]"#),
            };
            let d2 = digest(2);
            let d2: &'static str = Box::leak(d2.into_boxed_str());
            for tag in ["v1", "v2", "V3"] {
                cat.put_manifest("team/app", &m(d2), Some(tag))
                    .await
                    .unwrap();
            }
            cat.put_manifest("team/app", &m(d2), Some("v1"))
                .await
                .unwrap();
            cat.put_manifest("pub/x", &m(d2), Some("latest"))
                .await
                .unwrap();
            let repo = cat.browse_repository("team/app").await.unwrap().unwrap();
            assert_eq!(repo.tag_count, 3, "{url}");
            assert!(repo.pushed_at > 0);
            cat.delete_tag("team/app", "v2").await.unwrap();
            assert_eq!(
                cat.browse_repository("team/app")
                    .await
                    .unwrap()
                    .unwrap()
                    .tag_count,
                2
            );
            // Deleting the manifest cascades to its tags: counted too.
            cat.delete_manifest("pub/x", d2).await.unwrap();
            assert_eq!(
                cat.browse_repository("pub/x")
                    .await
                    .unwrap()
                    .unwrap()
                    .tag_count,
                0
            );

            let all = Listing {
                patterns: None,
                like: None,
                order: Order::Name,
                limit: 10,
                offset: 0,
            };
            let (total, rows) = cat.browse_repositories(all).await.unwrap();
            assert_eq!(total, 4);
            let names: Vec<_> = rows.iter().map(|r| r.name.as_str()).collect();
            assert_eq!(names, ["other", "pub/x", "team/a_b", "team/app"], "{url}");
            let pats = serde_json::to_string(&[like_pattern("team/*")]).unwrap();
            let team = Listing {
                patterns: Some(&pats),
                ..all
            };
            let (total, _) = cat.browse_repositories(team).await.unwrap();
            assert_eq!(total, 2, "{url}");
            // '_' is literal: "a_b" matches, "app" does not.
            let like = like_substring("a_");
            let (total, rows) = cat
                .browse_repositories(Listing {
                    like: Some(&like),
                    ..team
                })
                .await
                .unwrap();
            assert_eq!((total, rows[0].name.as_str()), (1, "team/a_b"), "{url}");
            let pushed = Listing {
                order: Order::Pushed,
                limit: 1,
                ..all
            };
            let (_, rows) = cat.browse_repositories(pushed).await.unwrap();
            assert_eq!(rows[0].name, "pub/x", "{url}: pushed last");
            let (_, rows) = cat
                .browse_repositories(Listing { offset: 3, ..all })
                .await
                .unwrap();
            assert_eq!(rows.len(), 1);

            let (total, tags) = cat.browse_tags("team/app", all).await.unwrap();
            assert_eq!(total, 2);
            assert_eq!(tags[0].name, "v1");
            assert_eq!(tags[1].name, "V3");
            assert_eq!(tags[0].total_size, Some(42));
            let like = like_substring("v3");
            let (total, _) = cat
                .browse_tags(
                    "team/app",
                    Listing {
                        like: Some(&like),
                        ..all
                    },
                )
                .await
                .unwrap();
            assert_eq!(total, 1, "{url}: tag search is case-insensitive");

            let t = cat.browse_totals(None).await.unwrap();
            assert_eq!(
                (t.repositories, t.tags, t.manifests, t.blobs, t.bytes),
                (4, 2, 1, 1, 10)
            );
            let t = cat.browse_totals(Some(&pats)).await.unwrap();
            assert_eq!(
                (t.repositories, t.tags, t.manifests, t.blobs, t.bytes),
                (2, 2, 1, 1, 10),
                "{url}"
            );
            let none = serde_json::to_string::<[String]>(&[]).unwrap();
            let t = cat.browse_totals(Some(&none)).await.unwrap();
            assert_eq!((t.repositories, t.tags, t.blobs), (0, 0, 0), "{url}");
        }
        backends.drop_all().await;
    }

    /// Two catalogs on one database (replicas) tagging, moving and deleting
    /// tags of one repository at once: the counts the triggers keep match
    /// the rows.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn counts_stay_exact_under_concurrent_writers() {
        let backends = crate::catalog::Backends::new().await;
        for url in &backends.urls {
            let a = Catalog::open(url).await.expect("open a");
            let b = Catalog::open(url).await.expect("open b");
            let blob = digest(1);
            let crate::catalog::Claim::Claimed(inc) = a.claim_blob(&blob, 10).await.unwrap() else {
                panic!("claim")
            };
            assert!(a.link_blob("team/app", &blob, &inc).await.unwrap());
            let mut tasks = Vec::new();
            for i in 0..24u32 {
                let cat = if i % 2 == 0 { a.clone() } else { b.clone() };
                let blob = blob.clone();
                tasks.push(tokio::spawn(async move {
                    let blobs = [blob];
                    let d = digest(100 + i % 4);
                    let m = crate::catalog::NewManifest {
                        digest: &d,
                        media_type: "application/vnd.oci.image.manifest.v1+json",
                        artifact_type: None,
                        subject: None,
                        annotations: None,
                        content: b"{}",
                        blobs: &blobs,
                        manifests: &[],
                        total_size: Some(1),
                        platforms: Some("[]"),
                    };
                    // Each task: its own tag, a shared one moved, and one
                    // tag deleted by every third task.
                    cat.put_manifest("team/app", &m, Some(&format!("t{i}")))
                        .await?;
                    cat.put_manifest("team/app", &m, Some("moving")).await?;
                    if i % 3 == 0 {
                        cat.delete_tag("team/app", &format!("t{i}")).await?;
                    }
                    Ok::<_, crate::catalog::CatalogError>(())
                }));
            }
            for t in tasks {
                t.await
                    .expect("task")
                    .unwrap_or_else(|e| panic!("{url}: {e}"));
            }
            let repo = a.browse_repository("team/app").await.unwrap().unwrap();
            let all = Listing {
                patterns: None,
                like: None,
                order: Order::Name,
                limit: 100,
                offset: 0,
            };
            let (tags, _) = a.browse_tags("team/app", all).await.unwrap();
            assert_eq!(tags, 24 - 8 + 1, "{url}");
            assert_eq!(repo.tag_count, tags, "{url}: tag_count drifted");
            let t = a.browse_totals(None).await.unwrap();
            assert_eq!((t.tags, t.manifests), (tags, 4), "{url}");
            a.delete_manifest("team/app", &digest(100)).await.unwrap();
            let (tags, _) = a.browse_tags("team/app", all).await.unwrap();
            let t = b.browse_totals(None).await.unwrap();
            assert_eq!((t.tags, t.manifests), (tags, 3), "{url}: after a cascade");
        }
        backends.drop_all().await;
    }
}
