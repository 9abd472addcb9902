//! The web catalog's service: what a person browsing the registry sees —
//! repositories (search, sort, paging), a repository's tags, a manifest with
//! its layers, image config and platforms, its referrers, totals — and the
//! one change they may make there, deleting a tag.
//!
//! Layer: called by `api` (the `/api/v1` JSON API) and `web` (the HTML UI);
//! calls `registry` (tag deletes, the bounded read of an image config) and
//! `catalog` (the listings). It knows no axum or sqlx types: its answers are
//! the serde types below, which are also the JSON of `/api/v1` (and derive
//! the OpenAPI schemas).
//!
//! Visibility: every call takes a [`Viewer`]. Listings and totals are
//! filtered in SQL by the viewer's pull patterns, so paging stays indexed
//! and a viewer never learns a name they may not pull, not even from a
//! count. A repository the viewer may not pull is answered exactly like an
//! unknown one ([`BrowseError::NotFound`]).
//!
//! Speed: a listing is one indexed page query and one count over columns
//! kept at write time (`repositories.pushed_at`, `tag_count`;
//! `manifests.total_size`, `platforms`, see `catalog/browse.rs`); only the
//! manifest view parses one manifest and reads one image config blob (at
//! most [`crate::registry::MAX_CONFIG_BYTES`]).

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::auth::Permissions;
use crate::auth::scope::Actions;
use crate::catalog::CatalogError;
use crate::catalog::browse::{self as cb, Listing, ManifestRow, Order};
use crate::digest::Digest;
use crate::names::{Reference, RepoName, valid_tag};
use crate::registry::manifest::{self as m, IMAGE_CONFIG_TYPES};
use crate::registry::{MAX_CONFIG_BYTES, Registry, RegistryError};

/// Largest page of a listing.
pub const MAX_LIMIT: u32 = 100;
/// Page size when none is asked for.
pub const DEFAULT_LIMIT: u32 = 25;
/// Longest search string accepted.
pub const MAX_QUERY_LEN: usize = 256;
/// Furthest offset accepted (well past any real catalog).
pub const MAX_OFFSET: u64 = 10_000_000;
/// Tags listed with one manifest.
const MAX_TAGS_OF_MANIFEST: u32 = 100;
/// Referrers listed for one manifest.
const MAX_REFERRERS: u32 = 1000;

/// The service; cheap to clone.
#[derive(Clone)]
pub struct Browse {
    registry: Arc<Registry>,
}

/// Who is looking, and so what they see.
#[derive(Debug, Clone)]
pub struct Viewer {
    subject: Option<String>,
    /// None: sees and may do everything (auth off).
    perms: Option<Permissions>,
}

impl Viewer {
    /// Auth is off: everything is visible and allowed.
    pub fn all() -> Viewer {
        Viewer {
            subject: None,
            perms: None,
        }
    }

    /// A signed-in user (`subject`) or, with None, an anonymous viewer, who
    /// sees only what `perms` lets them pull (for anonymous: the public
    /// patterns).
    pub fn new(subject: Option<String>, perms: Permissions) -> Viewer {
        Viewer {
            subject: subject.filter(|s| !s.is_empty()),
            perms: Some(perms),
        }
    }

    /// The signed-in user's name.
    pub fn subject(&self) -> Option<&str> {
        self.subject.as_deref()
    }

    /// An admin, or anyone with auth off.
    pub fn is_admin(&self) -> bool {
        self.perms.as_ref().is_none_or(|p| p.admin)
    }

    /// Neither signed in nor with auth off.
    pub fn is_anonymous(&self) -> bool {
        self.subject.is_none() && self.perms.is_some()
    }

    /// What the viewer may do in a repository.
    pub fn allowed(&self, repo: &str) -> Actions {
        match &self.perms {
            None => Actions::ALL,
            Some(p) => p.allowed(repo),
        }
    }

    /// The viewer's pull patterns as JSON array text of `LIKE` patterns,
    /// None when nothing is hidden from them.
    fn like_patterns(&self) -> Option<String> {
        let perms = self.perms.as_ref()?;
        if perms.admin {
            return None;
        }
        let mut patterns: Vec<String> = perms
            .grants
            .iter()
            .filter(|(_, a)| a.contains(Actions::PULL))
            .map(|(p, _)| cb::like_pattern(p))
            .chain(perms.public.iter().map(|p| cb::like_pattern(p)))
            .collect();
        // `*` lets them pull everything: no filter at all.
        if patterns.iter().any(|p| p == "%") {
            return None;
        }
        patterns.sort();
        patterns.dedup();
        Some(serde_json::to_string(&patterns).unwrap_or_else(|_| "[]".into()))
    }
}

/// The service's one error type; `api` maps it to JSON, `web` to pages.
#[derive(Debug, thiserror::Error)]
pub enum BrowseError {
    /// Unknown, or not visible to the viewer (the two are never told apart).
    #[error("{what} not found")]
    NotFound { what: String },
    /// The viewer may see the repository but not do this (delete).
    #[error("you may not delete tags in this repository")]
    Denied,
    /// A bad query value (limit, offset, search string, artifact type).
    #[error("{0}")]
    Invalid(String),
    /// The registry refuses it by configuration (deletes disabled).
    #[error("{0}")]
    Unsupported(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<CatalogError> for BrowseError {
    fn from(e: CatalogError) -> Self {
        BrowseError::Internal(e.to_string())
    }
}

impl From<RegistryError> for BrowseError {
    fn from(e: RegistryError) -> Self {
        BrowseError::Internal(e.to_string())
    }
}

pub type Result<T, E = BrowseError> = std::result::Result<T, E>;

fn not_found(what: impl Into<String>) -> BrowseError {
    BrowseError::NotFound { what: what.into() }
}

// ---- requests ------------------------------------------------------------------

/// How a listing is sorted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Sort {
    /// By name.
    #[default]
    Name,
    /// Most recently pushed first.
    Pushed,
}

/// A page of repositories: search, sort, paging.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RepoQuery {
    /// Substring of the name (case-insensitive; `%`, `_` and `\` are
    /// literal characters). At most 256 characters.
    pub q: Option<String>,
    /// `name` (default) or `pushed` (most recent first).
    #[serde(default)]
    #[param(inline)]
    pub sort: Sort,
    /// Page size, 1 to 100 (default 25).
    pub limit: Option<u32>,
    /// Items to skip (default 0).
    pub offset: Option<u64>,
}

/// A page of a repository's tags.
pub type TagQuery = RepoQuery;

/// Checked paging values.
struct Paging {
    like: Option<String>,
    order: Order,
    limit: u32,
    offset: u64,
}

fn paging(q: &RepoQuery) -> Result<Paging> {
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(BrowseError::Invalid(format!(
            "limit must be between 1 and {MAX_LIMIT}"
        )));
    }
    let offset = q.offset.unwrap_or(0);
    if offset > MAX_OFFSET {
        return Err(BrowseError::Invalid(format!(
            "offset must be at most {MAX_OFFSET}"
        )));
    }
    let like = match q.q.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
        None => None,
        Some(s) if s.chars().count() > MAX_QUERY_LEN => {
            return Err(BrowseError::Invalid(format!(
                "the search string is longer than {MAX_QUERY_LEN} characters"
            )));
        }
        Some(s) if s.chars().any(char::is_control) => {
            return Err(BrowseError::Invalid(
                "the search string has a control character".into(),
            ));
        }
        Some(s) => Some(cb::like_substring(&s.to_lowercase())),
    };
    Ok(Paging {
        like,
        order: match q.sort {
            Sort::Name => Order::Name,
            Sort::Pushed => Order::Pushed,
        },
        limit,
        offset,
    })
}

// ---- answers -------------------------------------------------------------------

/// One page of a listing.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// How many items match in all.
    pub total: u64,
    pub offset: u64,
    pub limit: u32,
    /// The offset of the next page, when there is one.
    pub next_offset: Option<u64>,
}

impl<T> Page<T> {
    fn new(items: Vec<T>, total: i64, p: &Paging) -> Page<T> {
        let total = total.max(0) as u64;
        let end = p.offset + items.len() as u64;
        Page {
            next_offset: (end < total && !items.is_empty()).then_some(end),
            items,
            total,
            offset: p.offset,
            limit: p.limit,
        }
    }
}

/// A repository as listed.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RepoSummary {
    pub name: String,
    pub tag_count: u64,
    /// Last manifest or tag push, unix milliseconds.
    pub pushed_at: i64,
}

/// A tag as listed.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TagSummary {
    pub name: String,
    pub digest: String,
    pub media_type: String,
    /// Compressed bytes (config + layers; an index: the sum over its
    /// children); null when unknown.
    pub size: Option<u64>,
    /// "os/arch[/variant]" of an image or each image of an index.
    pub platforms: Vec<String>,
    /// When the tag was last pushed, unix milliseconds.
    pub pushed_at: i64,
}

/// A blob a manifest names (config or layer).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct LayerView {
    pub digest: String,
    pub media_type: String,
    pub size: u64,
}

/// One image of an index.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PlatformView {
    /// "os/arch[/variant]", or "unknown" (e.g. an attestation manifest).
    pub platform: String,
    pub digest: String,
    pub media_type: String,
    /// Bytes of that manifest itself.
    pub size: u64,
}

/// One entry of an image's history.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct HistoryView {
    pub created: Option<String>,
    /// The command that made this layer.
    pub created_by: Option<String>,
    /// True when the step made no layer (ENV, CMD, ...).
    pub empty_layer: bool,
    pub comment: Option<String>,
}

/// What an image config says.
#[derive(Debug, Clone, Default, Serialize, ToSchema)]
pub struct ImageConfigView {
    pub created: Option<String>,
    pub os: Option<String>,
    pub architecture: Option<String>,
    pub variant: Option<String>,
    pub env: Vec<String>,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
    pub exposed_ports: Vec<String>,
    pub labels: BTreeMap<String, String>,
    pub history: Vec<HistoryView>,
}

/// A manifest as the browse view shows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ManifestView {
    pub repository: String,
    pub digest: String,
    pub media_type: String,
    pub artifact_type: Option<String>,
    /// Compressed bytes (config + layers; an index: the sum over its
    /// children); null when unknown.
    pub size: Option<u64>,
    /// Bytes of the manifest itself.
    pub manifest_size: u64,
    /// When this manifest was first pushed here, unix milliseconds.
    pub pushed_at: i64,
    /// Tags naming it (at most 100).
    pub tags: Vec<String>,
    /// An image: "os/arch[/variant]" from its config.
    pub platform: Option<String>,
    /// An image: its config blob.
    pub config_blob: Option<LayerView>,
    pub layers: Vec<LayerView>,
    /// An image: its parsed config, when it is an image config.
    pub config: Option<ImageConfigView>,
    /// Why `config` is missing, when it should be there (too large, gone,
    /// not JSON).
    pub config_error: Option<String>,
    /// An index: its images.
    pub platforms: Vec<PlatformView>,
    /// The manifest this one refers to (signatures, SBOMs, ...).
    pub subject: Option<String>,
    pub annotations: BTreeMap<String, String>,
}

/// A manifest that refers to another (signature, SBOM, attestation).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ReferrerView {
    pub digest: String,
    pub media_type: String,
    pub artifact_type: Option<String>,
    pub size: u64,
    pub annotations: BTreeMap<String, String>,
    /// Unix milliseconds.
    pub created_at: i64,
}

/// Totals over what the viewer may see.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
pub struct Stats {
    pub repositories: u64,
    pub tags: u64,
    pub manifests: u64,
    /// Distinct blobs the visible repositories may serve.
    pub blobs: u64,
    /// Their bytes, each blob counted once.
    pub bytes_stored: u64,
}

// ---- the service -----------------------------------------------------------------

fn u(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn platforms_of(json: Option<&str>) -> Vec<String> {
    json.and_then(|j| serde_json::from_str(j).ok())
        .unwrap_or_default()
}

fn annotations_of(json: Option<&str>) -> BTreeMap<String, String> {
    json.and_then(|j| serde_json::from_str(j).ok())
        .unwrap_or_default()
}

impl Browse {
    pub fn new(registry: Arc<Registry>) -> Browse {
        Browse { registry }
    }

    /// The repository, if the viewer may pull it (else NotFound).
    fn visible(&self, viewer: &Viewer, repo: &str) -> Result<RepoName> {
        let name = RepoName::parse(repo).ok_or_else(|| not_found(format!("repository {repo}")))?;
        if !viewer.allowed(name.as_str()).contains(Actions::PULL) {
            return Err(not_found(format!("repository {repo}")));
        }
        Ok(name)
    }

    /// What to answer when something in a visible repository is missing:
    /// `err`, or "repository not found" when the repository itself is.
    async fn missing(&self, name: &RepoName, err: BrowseError) -> BrowseError {
        match self
            .registry
            .catalog()
            .browse_repository(name.as_str())
            .await
        {
            Ok(Some(_)) => err,
            Ok(None) => not_found(format!("repository {name}")),
            Err(e) => e.into(),
        }
    }

    /// A page of the repositories the viewer may pull.
    pub async fn repositories(&self, viewer: &Viewer, q: &RepoQuery) -> Result<Page<RepoSummary>> {
        let p = paging(q)?;
        let patterns = viewer.like_patterns();
        let (total, rows) = self
            .registry
            .catalog()
            .browse_repositories(Listing {
                patterns: patterns.as_deref(),
                like: p.like.as_deref(),
                order: p.order,
                limit: p.limit,
                offset: p.offset,
            })
            .await?;
        let items = rows
            .into_iter()
            .map(|r| RepoSummary {
                name: r.name,
                tag_count: u(r.tag_count),
                pushed_at: r.pushed_at,
            })
            .collect();
        Ok(Page::new(items, total, &p))
    }

    /// One repository's summary.
    pub async fn repository(&self, viewer: &Viewer, repo: &str) -> Result<RepoSummary> {
        let name = self.visible(viewer, repo)?;
        let r = self
            .registry
            .catalog()
            .browse_repository(name.as_str())
            .await?
            .ok_or_else(|| not_found(format!("repository {repo}")))?;
        Ok(RepoSummary {
            name: r.name,
            tag_count: u(r.tag_count),
            pushed_at: r.pushed_at,
        })
    }

    /// A page of a repository's tags (search, sort by name or push time).
    pub async fn tags(
        &self,
        viewer: &Viewer,
        repo: &str,
        q: &TagQuery,
    ) -> Result<Page<TagSummary>> {
        let p = paging(q)?;
        let name = self.visible(viewer, repo)?;
        let catalog = self.registry.catalog();
        let (total, rows) = catalog
            .browse_tags(
                name.as_str(),
                Listing {
                    patterns: None,
                    like: p.like.as_deref(),
                    order: p.order,
                    limit: p.limit,
                    offset: p.offset,
                },
            )
            .await?;
        if total == 0 && catalog.browse_repository(name.as_str()).await?.is_none() {
            return Err(not_found(format!("repository {repo}")));
        }
        let items = rows
            .into_iter()
            .map(|t| TagSummary {
                platforms: platforms_of(t.platforms.as_deref()),
                name: t.name,
                digest: t.digest,
                media_type: t.media_type,
                size: t.total_size.map(u),
                pushed_at: t.updated_at,
            })
            .collect();
        Ok(Page::new(items, total, &p))
    }

    /// A manifest by tag or digest, with its layers, config and platforms.
    pub async fn manifest(
        &self,
        viewer: &Viewer,
        repo: &str,
        reference: &str,
    ) -> Result<ManifestView> {
        let name = self.visible(viewer, repo)?;
        let catalog = self.registry.catalog();
        let unknown = || not_found(format!("manifest {reference} in {repo}"));
        let Some(parsed) = parse_reference(reference) else {
            return Err(self.missing(&name, unknown()).await);
        };
        let row = match parsed {
            Reference::Digest(d) => {
                catalog
                    .browse_manifest_by_digest(name.as_str(), d.as_str())
                    .await?
            }
            Reference::Tag(t) => catalog.browse_manifest_by_tag(name.as_str(), &t).await?,
        };
        let Some(row) = row else {
            return Err(self.missing(&name, unknown()).await);
        };
        let tags = catalog
            .browse_tags_of(name.as_str(), &row.digest, MAX_TAGS_OF_MANIFEST)
            .await?;
        let mut view = manifest_view(&name, row, tags);
        if let Some(config) = view.config_blob.clone()
            && IMAGE_CONFIG_TYPES.contains(&config.media_type.as_str())
        {
            match self.read_config(&config).await {
                Ok(c) => {
                    if view.platform.is_none() {
                        view.platform = m::platform_string(
                            c.os.as_deref().unwrap_or(""),
                            c.architecture.as_deref().unwrap_or(""),
                            c.variant.as_deref(),
                        );
                    }
                    view.config = Some(c);
                }
                Err(e) => view.config_error = Some(e),
            }
        }
        Ok(view)
    }

    /// The image config blob, read bounded and parsed; a message when it
    /// cannot be shown.
    async fn read_config(
        &self,
        config: &LayerView,
    ) -> std::result::Result<ImageConfigView, String> {
        if config.size > MAX_CONFIG_BYTES {
            return Err(format!(
                "the image config is {} bytes, more than the {MAX_CONFIG_BYTES} bytes shown",
                config.size
            ));
        }
        let digest: Digest = config
            .digest
            .parse()
            .map_err(|_| "the config digest is invalid".to_owned())?;
        let bytes = match self
            .registry
            .read_blob_bounded(&digest, MAX_CONFIG_BYTES)
            .await
        {
            Ok(b) => b,
            Err(RegistryError::BlobUnknown(_)) => {
                return Err("the image config blob is not in the registry".into());
            }
            Err(RegistryError::SizeInvalid(msg)) => return Err(msg),
            Err(e) => {
                tracing::error!(%digest, error = %e, "reading an image config");
                return Err("the image config could not be read".into());
            }
        };
        parse_config(&bytes).ok_or_else(|| "the image config is not valid JSON".to_owned())
    }

    /// Manifests in `repo` whose subject is `digest`, newest first,
    /// optionally of one artifact type.
    pub async fn referrers(
        &self,
        viewer: &Viewer,
        repo: &str,
        digest: &str,
        artifact_type: Option<&str>,
    ) -> Result<Vec<ReferrerView>> {
        if let Some(t) = artifact_type
            && (t.len() > 255 || t.chars().any(char::is_control))
        {
            return Err(BrowseError::Invalid(
                "artifactType must be a media type of at most 255 characters".into(),
            ));
        }
        let name = self.visible(viewer, repo)?;
        let unknown = || not_found(format!("manifest {digest} in {repo}"));
        let Ok(d) = digest.parse::<Digest>() else {
            return Err(self.missing(&name, unknown()).await);
        };
        let catalog = self.registry.catalog();
        if catalog
            .browse_manifest_by_digest(name.as_str(), d.as_str())
            .await?
            .is_none()
        {
            return Err(self.missing(&name, unknown()).await);
        }
        let rows = catalog
            .browse_referrers(name.as_str(), d.as_str(), artifact_type, MAX_REFERRERS)
            .await?;
        Ok(rows
            .into_iter()
            .map(|r| ReferrerView {
                annotations: annotations_of(r.annotations.as_deref()),
                digest: r.digest,
                media_type: r.media_type,
                artifact_type: r.artifact_type,
                size: u(r.size),
                created_at: r.created_at,
            })
            .collect())
    }

    /// Totals over what the viewer may see.
    pub async fn stats(&self, viewer: &Viewer) -> Result<Stats> {
        let patterns = viewer.like_patterns();
        let t = self
            .registry
            .catalog()
            .browse_totals(patterns.as_deref())
            .await?;
        Ok(Stats {
            repositories: u(t.repositories),
            tags: u(t.tags),
            manifests: u(t.manifests),
            blobs: u(t.blobs),
            bytes_stored: u(t.bytes),
        })
    }

    /// Deletes a tag (its manifest stays, as `DELETE /v2/<name>/manifests/<tag>`
    /// does). Needs the delete action; a viewer who may not even pull the
    /// repository is told it does not exist.
    pub async fn delete_tag(&self, viewer: &Viewer, repo: &str, tag: &str) -> Result<()> {
        let name = self.visible(viewer, repo)?;
        if !viewer.allowed(name.as_str()).contains(Actions::DELETE) {
            return Err(BrowseError::Denied);
        }
        if !valid_tag(tag) {
            return Err(self
                .missing(&name, not_found(format!("tag {tag} in {repo}")))
                .await);
        }
        match self
            .registry
            .delete_manifest(&name, &Reference::Tag(tag.to_owned()))
            .await
        {
            Ok(()) => {
                tracing::info!(repository = %name, tag, user = viewer.subject().unwrap_or(""), "tag deleted from the web catalog");
                Ok(())
            }
            Err(RegistryError::ManifestUnknown(_)) => Err(self
                .missing(&name, not_found(format!("tag {tag} in {repo}")))
                .await),
            Err(RegistryError::Unsupported(msg)) => Err(BrowseError::Unsupported(msg)),
            Err(e) => Err(e.into()),
        }
    }
}

fn parse_reference(s: &str) -> Option<Reference> {
    if s.contains(':') {
        s.parse::<Digest>().ok().map(Reference::Digest)
    } else if valid_tag(s) {
        Some(Reference::Tag(s.to_owned()))
    } else {
        None
    }
}

/// The view of a stored manifest, from its bytes (the config is read later).
fn manifest_view(repo: &RepoName, row: ManifestRow, tags: Vec<String>) -> ManifestView {
    #[derive(Deserialize)]
    struct Desc {
        #[serde(rename = "mediaType", default)]
        media_type: String,
        #[serde(default)]
        digest: String,
        #[serde(default)]
        size: i64,
        #[serde(default)]
        platform: Option<Plat>,
    }
    #[derive(Deserialize)]
    struct Plat {
        #[serde(default)]
        os: String,
        #[serde(default)]
        architecture: String,
        #[serde(default)]
        variant: Option<String>,
    }
    #[derive(Deserialize)]
    struct Any {
        #[serde(default)]
        config: Option<Desc>,
        #[serde(default)]
        layers: Vec<Desc>,
        #[serde(default)]
        manifests: Vec<Desc>,
        #[serde(default)]
        annotations: BTreeMap<String, String>,
    }
    let layer = |d: Desc| LayerView {
        digest: d.digest,
        media_type: d.media_type,
        size: u(d.size),
    };
    let parsed: Option<Any> = serde_json::from_slice(&row.content).ok();
    let (config_blob, layers, platforms, annotations) = match parsed {
        Some(a) => (
            a.config.map(layer),
            a.layers.into_iter().map(layer).collect(),
            a.manifests
                .into_iter()
                .map(|d| PlatformView {
                    platform: d
                        .platform
                        .as_ref()
                        .and_then(|p| {
                            m::platform_string(&p.os, &p.architecture, p.variant.as_deref())
                        })
                        .unwrap_or_else(|| "unknown".into()),
                    digest: d.digest,
                    media_type: d.media_type,
                    size: u(d.size),
                })
                .collect(),
            a.annotations,
        ),
        None => (None, Vec::new(), Vec::new(), BTreeMap::new()),
    };
    let stored_platforms = platforms_of(row.platforms.as_deref());
    let is_index =
        !platforms.is_empty() || row.media_type == m::OCI_INDEX || row.media_type == m::DOCKER_LIST;
    ManifestView {
        repository: repo.to_string(),
        digest: row.digest,
        media_type: row.media_type,
        artifact_type: row.artifact_type,
        size: row.total_size.map(u),
        manifest_size: u(row.size),
        pushed_at: row.created_at,
        tags,
        platform: if is_index {
            None
        } else {
            stored_platforms.into_iter().next()
        },
        config_blob,
        layers,
        config: None,
        config_error: None,
        platforms,
        subject: row.subject,
        annotations,
    }
}

/// An image config (OCI or Docker) as the view shows it. Lenient: every
/// field is optional, unknown ones are ignored.
pub fn parse_config(bytes: &[u8]) -> Option<ImageConfigView> {
    #[derive(Deserialize, Default)]
    #[serde(default)]
    struct Config {
        created: Option<String>,
        os: Option<String>,
        architecture: Option<String>,
        variant: Option<String>,
        config: Option<Inner>,
        history: Option<Vec<History>>,
    }
    #[derive(Deserialize, Default)]
    #[serde(default, rename_all = "PascalCase")]
    struct Inner {
        env: Option<Vec<String>>,
        entrypoint: Option<Vec<String>>,
        cmd: Option<Vec<String>>,
        working_dir: Option<String>,
        user: Option<String>,
        exposed_ports: Option<BTreeMap<String, serde::de::IgnoredAny>>,
        labels: Option<BTreeMap<String, String>>,
    }
    #[derive(Deserialize, Default)]
    #[serde(default)]
    struct History {
        created: Option<String>,
        created_by: Option<String>,
        empty_layer: Option<bool>,
        comment: Option<String>,
    }
    let c: Config = serde_json::from_slice(bytes).ok()?;
    let inner = c.config.unwrap_or_default();
    let nonempty = |s: Option<String>| s.filter(|s| !s.is_empty());
    Some(ImageConfigView {
        created: c.created,
        os: nonempty(c.os),
        architecture: nonempty(c.architecture),
        variant: nonempty(c.variant),
        env: inner.env.unwrap_or_default(),
        entrypoint: inner.entrypoint.unwrap_or_default(),
        cmd: inner.cmd.unwrap_or_default(),
        working_dir: nonempty(inner.working_dir),
        user: nonempty(inner.user),
        exposed_ports: inner
            .exposed_ports
            .map(|p| p.into_keys().collect())
            .unwrap_or_default(),
        labels: inner.labels.unwrap_or_default(),
        history: c
            .history
            .unwrap_or_default()
            .into_iter()
            .map(|h| HistoryView {
                created: h.created,
                created_by: h.created_by,
                empty_layer: h.empty_layer.unwrap_or(false),
                comment: h.comment,
            })
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_parse_leniently() {
        let c = parse_config(
            br#"{"created":"2026-01-02T03:04:05Z","os":"linux","architecture":"arm64","variant":"v8",
                "config":{"Env":["PATH=/bin"],"Cmd":["sh"],"ExposedPorts":{"80/tcp":{}},"Labels":{"a":"b"},"WorkingDir":""},
                "history":[{"created_by":"RUN x","empty_layer":true},{"created_by":"COPY y"}],
                "rootfs":{"type":"layers","diff_ids":[]}}"#,
        )
        .unwrap();
        assert_eq!(c.os.as_deref(), Some("linux"));
        assert_eq!(c.exposed_ports, ["80/tcp"]);
        assert_eq!(c.cmd, ["sh"]);
        assert_eq!(c.working_dir, None);
        assert_eq!(c.history.len(), 2);
        assert!(c.history[0].empty_layer && !c.history[1].empty_layer);
        assert!(parse_config(b"{}").is_some());
        assert!(parse_config(b"{\"config\":null,\"history\":null}").is_some());
        assert!(parse_config(b"not json").is_none());
    }

    #[test]
    fn paging_is_bounded() {
        let q = |limit, offset, s: &str| RepoQuery {
            q: Some(s.into()),
            sort: Sort::Name,
            limit,
            offset,
        };
        assert!(paging(&q(Some(0), None, "")).is_err());
        assert!(paging(&q(Some(101), None, "")).is_err());
        assert!(paging(&q(None, Some(MAX_OFFSET + 1), "")).is_err());
        assert!(paging(&q(None, None, &"x".repeat(257))).is_err());
        let p = paging(&q(None, None, "A%_")).unwrap();
        assert_eq!(p.like.as_deref(), Some(r"%a\%\_%"));
        assert_eq!(p.limit, DEFAULT_LIMIT);
    }

    #[test]
    fn viewers_see_their_patterns() {
        let perms = Permissions {
            admin: false,
            grants: vec![
                ("team/*".into(), Actions::PULL),
                ("push_only".into(), Actions::PUSH),
            ],
            public: vec!["pub/*".into()],
        };
        let v = Viewer::new(Some("u".into()), perms);
        assert_eq!(v.like_patterns().unwrap(), r#"["pub/%","team/%"]"#);
        assert!(Viewer::all().like_patterns().is_none());
        assert!(!Viewer::all().is_anonymous());
        assert!(Viewer::new(None, Permissions::default()).is_anonymous());
    }
}
