//! Images on this node: pulling into the store, the catalog's image rows,
//! `images`/`inspect`/`rmi`/`prune`, and registry credentials (`login`).
//!
//! Called by the daemon's API handlers (and container creation, through
//! [`Images::find`]); calls `image::pull` (network + store), the catalog
//! (SQLite, tables of `migrations/runner/20261127000001_images.sql`), the
//! store's layout on disk (deleting layers) and `credentials`.
//!
//! Consistency: an image enters the catalog only after its pull completed,
//! in one transaction with its names and layers; the store already hides
//! partial layers (temp dirs), so a failed or interrupted pull leaves
//! nothing half-made, and the layers it did complete are reused by the
//! retry (or reclaimed by `prune`). Pulls hold a read lock and
//! `remove`/`prune` a write lock, so a layer is never deleted while a pull
//! may be counting on it.

use std::collections::{BTreeSet, HashMap};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use oci_spec::image::ImageConfiguration;
use serde_json::{Value, json};
use sqlx::{Row, SqlitePool};
use tokio::sync::{RwLock, mpsc};

use super::credentials::{CredentialStore, normalize_registry};
use super::error::{Error, Result};
use crate::api::{ImageSummary, LoginRequest, PruneReport, PullEvent, RemovedImage};
use crate::image::Platform;
use crate::image::client::{ClientConfig, ClientError, Credentials, RegistryClient};
use crate::image::pull::{self, Progress, ProgressEvent, PullError, PulledImage, SafeUnpacker};
use crate::image::reference::{DOCKER_HUB, Reference};
use crate::image::store::{Store, StoreError};

/// How often a layer's "Downloading" event is sent at most.
const DOWNLOAD_EVENT_INTERVAL: Duration = Duration::from_millis(100);
/// Bounds on what `login` accepts.
const MAX_USERNAME: usize = 256;
const MAX_PASSWORD: usize = 4096;

/// Settings for pulling.
#[derive(Debug, Clone, Default)]
pub struct ImagesConfig {
    /// Registry for short names (`busybox` -> `<default>/library/busybox`
    /// when it is docker.io, `<default>/busybox` otherwise).
    pub default_registry: String,
    /// Registries spoken to over plain HTTP besides loopback ones.
    pub insecure_registries: Vec<String>,
}

/// A local image as containers need it.
#[derive(Debug, Clone)]
pub struct ImageRecord {
    /// `sha256:<config digest hex>`.
    pub id: String,
    pub config: ImageConfiguration,
    /// Layer digests, bottom first.
    pub layers: Vec<String>,
}

pub struct Images {
    store: Store,
    pub(super) pool: SqlitePool,
    config: ImagesConfig,
    credentials: Mutex<CredentialStore>,
    /// Registries given at run time rather than by `login` (the fleet's
    /// registry with the node credential): kept in memory only, never in
    /// `auth.json`, and used over the stored ones.
    session: Mutex<HashMap<String, SessionRegistry>>,
    /// Read: a pull in flight. Write: `remove`/`prune` deleting from disk.
    pub(super) lock: RwLock<()>,
}

/// A registry added with [`Images::add_session_registry`].
struct SessionRegistry {
    credentials: Credentials,
    plain_http: bool,
}

/// How a name given by the user resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Resolved {
    pub(super) id: String,
    /// The catalog name it matched (`registry/repo:tag` or
    /// `registry/repo@sha256:..`); None when it matched by id.
    pub(super) name: Option<String>,
}

/// An image about to be recorded.
pub(super) struct NewImage {
    pub(super) id: String,
    pub(super) manifest_digest: String,
    pub(super) index_digest: Option<String>,
    pub(super) config_json: String,
    /// (digest, unpacked size), bottom first.
    pub(super) layers: Vec<(String, u64)>,
    pub(super) created: i64,
}

impl Images {
    pub async fn open(root: &Path, pool: SqlitePool, config: ImagesConfig) -> Result<Images> {
        let mut config = config;
        if config.default_registry.is_empty() {
            config.default_registry = DOCKER_HUB.to_string();
        }
        let store_root = root.to_path_buf();
        let store = tokio::task::spawn_blocking(move || Store::open(store_root))
            .await
            .map_err(Error::internal)?
            .map_err(|e| Error::Internal(format!("image store: {e}")))?;
        let credentials = CredentialStore::load(root.join("auth.json"))
            .map_err(|e| Error::Internal(e.to_string()))?;
        Ok(Images {
            store,
            pool,
            config,
            credentials: Mutex::new(credentials),
            session: Mutex::new(HashMap::new()),
            lock: RwLock::new(()),
        })
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The registry short names go to.
    pub fn default_registry(&self) -> &str {
        &self.config.default_registry
    }

    /// Where per-registry CAs are looked for: docker's `/etc/docker/certs.d`
    /// and `<state dir>/certs.d`, both as `<dir>/<host:port>/ca.crt`.
    fn ca_dirs(&self) -> Vec<PathBuf> {
        vec![
            PathBuf::from(crate::image::client::DOCKER_CERTS_D),
            self.store.root().join("certs.d"),
        ]
    }

    /// Adds a registry for this daemon's life: its credentials (memory
    /// only) and whether it speaks plain HTTP.
    pub fn add_session_registry(&self, registry: &str, credentials: Credentials, plain_http: bool) {
        self.session
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                registry.to_string(),
                SessionRegistry {
                    credentials,
                    plain_http,
                },
            );
    }

    pub(super) fn client(&self) -> Result<RegistryClient> {
        let mut credentials: HashMap<String, Credentials> = self
            .credentials
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .all()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let mut insecure_registries = self.config.insecure_registries.clone();
        for (registry, s) in self
            .session
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            credentials.insert(registry.clone(), s.credentials.clone());
            if s.plain_http {
                insecure_registries.push(registry.clone());
            }
        }
        RegistryClient::new(ClientConfig {
            insecure_registries,
            credentials,
            user_agent: None,
            ca_dirs: self.ca_dirs(),
        })
        .map_err(|e| Error::Internal(e.to_string()))
    }

    /// Pulls `reference` (short names get the default registry), sending
    /// docker's progress vocabulary to `events`, and records the image once
    /// everything is in the store. Events stop before this returns; on an
    /// error the caller sends the last (error) event.
    pub async fn pull(
        &self,
        reference: &str,
        events: mpsc::Sender<PullEvent>,
    ) -> Result<ImageRecord> {
        let r = Reference::parse_with_default(reference, &self.config.default_registry)
            .map_err(|e| Error::BadRequest(e.to_string()))?;
        let client = self.client()?;
        let _pulling = self.lock.read().await;
        // The pull reports from a sync callback; an unbounded hop (the
        // events are few: Downloading is throttled) keeps it from blocking
        // on a slow reader, and everything is forwarded before we return.
        let (tx, mut rx) = mpsc::unbounded_channel();
        let work = async {
            let progress = EventProgress::new(tx, &r);
            let pulled = pull::pull(
                &client,
                &self.store,
                &r,
                &Platform::host(),
                Arc::new(SafeUnpacker),
                &progress,
            )
            .await
            .map_err(|e| pull_error(e, &r, self.store.root()))?;
            let digest = pulled
                .index_digest
                .clone()
                .unwrap_or_else(|| pulled.manifest_digest.clone());
            let (record, up_to_date) = self.record_pull(&r, &pulled).await?;
            progress.send(PullEvent {
                status: format!("Digest: {digest}"),
                ..Default::default()
            });
            let shown = match r.digest() {
                Some(_) => format!("{}/{}@{digest}", r.registry(), r.repository()),
                None => r.to_string(),
            };
            progress.send(PullEvent {
                status: if up_to_date {
                    format!("Status: Image is up to date for {shown}")
                } else {
                    format!("Status: Downloaded newer image for {shown}")
                },
                ..Default::default()
            });
            Ok(record)
        };
        let forward = async {
            while let Some(ev) = rx.recv().await {
                // A gone reader does not stop the pull.
                let _ = events.send(ev).await;
            }
        };
        let (result, ()) = tokio::join!(work, forward);
        result
    }

    /// Records a completed pull: the image, its layers and its names, in one
    /// transaction. Returns whether nothing changed ("up to date").
    async fn record_pull(&self, r: &Reference, p: &PulledImage) -> Result<(ImageRecord, bool)> {
        let config_bytes = self
            .store
            .read_blob(&p.config_digest)
            .map_err(|e| Error::Internal(format!("image {r}: {e}")))?;
        let config_json = String::from_utf8(config_bytes).map_err(|_| {
            Error::Registry(format!(
                "image {r}: config {} is not UTF-8 JSON",
                p.config_digest
            ))
        })?;
        let mut layers = Vec::new();
        let mut sizes: HashMap<String, u64> = HashMap::new();
        for (digest, path) in p.layer_digests.iter().zip(&p.layers) {
            let size = match sizes.get(digest) {
                Some(s) => *s,
                None => {
                    let known: Option<i64> = sqlx::query_scalar(
                        "SELECT size FROM image_layers WHERE digest = ? LIMIT 1",
                    )
                    .bind(digest)
                    .fetch_optional(&self.pool)
                    .await?;
                    let s = match known {
                        Some(s) => s.max(0) as u64,
                        None => {
                            let path = path.clone();
                            tokio::task::spawn_blocking(move || dir_size(&path))
                                .await
                                .map_err(Error::internal)?
                                .map_err(|e| {
                                    Error::Internal(format!("layer {digest}: measuring: {e}"))
                                })?
                        }
                    };
                    sizes.insert(digest.clone(), s);
                    s
                }
            };
            layers.push((digest.clone(), size));
        }
        let img = NewImage {
            id: p.config_digest.clone(),
            manifest_digest: p.manifest_digest.clone(),
            index_digest: p.index_digest.clone(),
            config_json,
            layers,
            created: p
                .config
                .created()
                .as_deref()
                .and_then(parse_time)
                .map(|t| t.timestamp())
                .unwrap_or(0),
        };
        let base = format!("{}/{}", r.registry(), r.repository());
        let digest = p.index_digest.as_deref().unwrap_or(&p.manifest_digest);
        let mut names = vec![(format!("{base}@{digest}"), "digest")];
        if r.digest().is_none() {
            names.push((format!("{base}:{}", r.tag().unwrap_or("latest")), "tag"));
        }
        let up_to_date = self.insert(&img, &names).await?;
        let record = ImageRecord {
            id: img.id,
            config: p.config.clone(),
            layers: p.layer_digests.clone(),
        };
        Ok((record, up_to_date))
    }

    /// Inserts or refreshes an image and points `names` at it (moving them
    /// from any other image). True when the image was there and every name
    /// already pointed at it.
    pub(super) async fn insert(&self, img: &NewImage, names: &[(String, &str)]) -> Result<bool> {
        let now = chrono::Utc::now().timestamp();
        let size: u64 = {
            let mut seen = BTreeSet::new();
            img.layers
                .iter()
                .filter(|(d, _)| seen.insert(d.clone()))
                .map(|(_, s)| *s)
                .sum()
        };
        // IMMEDIATE: this reads then writes; a deferred transaction would
        // fail with "database is locked" instead of waiting when another
        // pull commits in between (two pulls at once, as the fleet agent does).
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let existed = sqlx::query("SELECT 1 FROM images WHERE id = ?")
            .bind(&img.id)
            .fetch_optional(&mut *tx)
            .await?
            .is_some();
        let mut unchanged = existed;
        for (name, _) in names {
            let prev: Option<String> =
                sqlx::query_scalar("SELECT image_id FROM image_names WHERE name = ?")
                    .bind(name)
                    .fetch_optional(&mut *tx)
                    .await?;
            unchanged &= prev.as_deref() == Some(img.id.as_str());
        }
        sqlx::query(
            "INSERT INTO images (id, manifest_digest, index_digest, config, size, created, pulled_at)
             VALUES (?, ?, ?, ?, ?, ?, ?)
             ON CONFLICT (id) DO UPDATE SET manifest_digest = excluded.manifest_digest,
               index_digest = excluded.index_digest, size = excluded.size,
               pulled_at = excluded.pulled_at",
        )
        .bind(&img.id)
        .bind(&img.manifest_digest)
        .bind(&img.index_digest)
        .bind(&img.config_json)
        .bind(size as i64)
        .bind(img.created)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM image_layers WHERE image_id = ?")
            .bind(&img.id)
            .execute(&mut *tx)
            .await?;
        for (i, (digest, size)) in img.layers.iter().enumerate() {
            sqlx::query(
                "INSERT INTO image_layers (image_id, position, digest, size) VALUES (?, ?, ?, ?)",
            )
            .bind(&img.id)
            .bind(i as i64)
            .bind(digest)
            .bind(*size as i64)
            .execute(&mut *tx)
            .await?;
        }
        for (name, kind) in names {
            sqlx::query(
                "INSERT INTO image_names (name, kind, image_id) VALUES (?, ?, ?)
                 ON CONFLICT (name) DO UPDATE SET kind = excluded.kind, image_id = excluded.image_id",
            )
            .bind(name)
            .bind(kind)
            .bind(&img.id)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(unchanged)
    }

    /// Resolves a user-given name: `sha256:<id>` or a unique id prefix
    /// (with or without `sha256:`), or a reference (`busybox` means
    /// `<default registry>/[library/]busybox:latest`; `repo@sha256:..`).
    pub(super) async fn resolve(&self, name: &str) -> Result<Resolved> {
        let missing = || Error::NotFound(format!("No such image: {name}"));
        if name.is_empty() || name.len() > 512 {
            return Err(missing());
        }
        if let Some(hex) = name.strip_prefix("sha256:") {
            if !is_hex(hex) {
                return Err(missing());
            }
            return self
                .by_id_prefix(hex)
                .await?
                .map(|id| Resolved { id, name: None })
                .ok_or_else(missing);
        }
        if let Ok(r) = Reference::parse_with_default(name, &self.config.default_registry) {
            let key = catalog_name(&r);
            let id: Option<String> =
                sqlx::query_scalar("SELECT image_id FROM image_names WHERE name = ?")
                    .bind(&key)
                    .fetch_optional(&self.pool)
                    .await?;
            if let Some(id) = id {
                return Ok(Resolved {
                    id,
                    name: Some(key),
                });
            }
        }
        if is_hex(name)
            && let Some(id) = self.by_id_prefix(name).await?
        {
            return Ok(Resolved { id, name: None });
        }
        Err(missing())
    }

    /// The one image whose id starts with `sha256:<hex>` (None when none
    /// or several do, as docker).
    async fn by_id_prefix(&self, hex: &str) -> Result<Option<String>> {
        // `hex` is [0-9a-f]+ (checked by the callers): no LIKE wildcards.
        let ids: Vec<String> = sqlx::query_scalar("SELECT id FROM images WHERE id LIKE ? LIMIT 2")
            .bind(format!("sha256:{hex}%"))
            .fetch_all(&self.pool)
            .await?;
        Ok(match ids.as_slice() {
            [one] => Some(one.clone()),
            _ => None,
        })
    }

    async fn load(&self, id: &str) -> Result<ImageRecord> {
        let row = sqlx::query("SELECT config FROM images WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| Error::NotFound(format!("No such image: {id}")))?;
        let config_json: String = row.try_get("config")?;
        let config: ImageConfiguration = serde_json::from_str(&config_json)
            .map_err(|e| Error::Internal(format!("image {id}: stored config unreadable: {e}")))?;
        let layers = self.layers_of(id).await?;
        Ok(ImageRecord {
            id: id.to_string(),
            config,
            layers,
        })
    }

    async fn layers_of(&self, id: &str) -> Result<Vec<String>> {
        Ok(sqlx::query_scalar(
            "SELECT digest FROM image_layers WHERE image_id = ? ORDER BY position",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?)
    }

    /// (name, kind) of every name of the image, sorted.
    async fn names_of(&self, id: &str) -> Result<Vec<(String, String)>> {
        let rows =
            sqlx::query("SELECT name, kind FROM image_names WHERE image_id = ? ORDER BY name")
                .bind(id)
                .fetch_all(&self.pool)
                .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("name")?, r.try_get("kind")?)))
            .collect()
    }

    pub async fn find(&self, name: &str) -> Result<ImageRecord> {
        let r = self.resolve(name).await?;
        self.load(&r.id).await
    }

    /// One row per image, newest first.
    pub async fn list(&self, in_use: &HashMap<String, u64>) -> Result<Vec<ImageSummary>> {
        let rows = sqlx::query("SELECT id, size, created FROM images ORDER BY created DESC, id")
            .fetch_all(&self.pool)
            .await?;
        let mut names: HashMap<String, (Vec<String>, Vec<String>)> = HashMap::new();
        for r in sqlx::query("SELECT name, kind, image_id FROM image_names ORDER BY name")
            .fetch_all(&self.pool)
            .await?
        {
            let (name, kind, id): (String, String, String) = (
                r.try_get("name")?,
                r.try_get("kind")?,
                r.try_get("image_id")?,
            );
            let e = names.entry(id).or_default();
            if kind == "tag" {
                e.0.push(name);
            } else {
                e.1.push(name);
            }
        }
        rows.iter()
            .map(|r| {
                let id: String = r.try_get("id")?;
                let (repo_tags, repo_digests) = names.remove(&id).unwrap_or_default();
                Ok(ImageSummary {
                    containers: in_use.get(&id).copied().unwrap_or(0),
                    id,
                    repo_tags,
                    repo_digests,
                    created: r.try_get("created")?,
                    size: r.try_get::<i64, _>("size")?.max(0) as u64,
                })
            })
            .collect()
    }

    /// docker's image inspect object.
    pub async fn inspect(&self, name: &str) -> Result<Value> {
        let id = self.resolve(name).await?.id;
        let row = sqlx::query("SELECT config, size FROM images WHERE id = ?")
            .bind(&id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| Error::NotFound(format!("No such image: {name}")))?;
        let config_json: String = row.try_get("config")?;
        let size: i64 = row.try_get("size")?;
        let config: Value = serde_json::from_str(&config_json)
            .map_err(|e| Error::Internal(format!("image {id}: stored config unreadable: {e}")))?;
        let names = self.names_of(&id).await?;
        Ok(inspect_json(&id, &config, size, &names))
    }

    /// docker's `rmi` for one name. See the module doc of `api` for the
    /// answers; `in_use` maps image ids to how many containers use them.
    pub async fn remove(
        &self,
        name: &str,
        force: bool,
        in_use: &HashMap<String, u64>,
    ) -> Result<Vec<RemovedImage>> {
        let _deleting = self.lock.write().await;
        let res = self.resolve(name).await?;
        let id = res.id.clone();
        let used = in_use.get(&id).copied().unwrap_or(0) > 0;
        let short = short_id(&id);
        let names = self.names_of(&id).await?;
        let mut records = Vec::new();
        match &res.name {
            Some(key) => {
                if !force && used && is_single_reference(&names) {
                    return Err(Error::Conflict(format!(
                        "conflict: unable to remove repository reference \"{name}\" (must force) - container is using its referenced image {short}"
                    )));
                }
                self.untag(key, &mut records).await?;
                // Removing a repo's last tag also removes its digest names.
                let repo = repo_of(key);
                let remaining = self.names_of(&id).await?;
                if !remaining
                    .iter()
                    .any(|(n, k)| k == "tag" && repo_of(n) == repo)
                {
                    for (n, _) in remaining.iter().filter(|(n, _)| repo_of(n) == repo) {
                        self.untag(n, &mut records).await?;
                    }
                }
                if !self.names_of(&id).await?.is_empty() {
                    return Ok(records);
                }
            }
            None => {
                if is_single_reference(&names) {
                    if used && !force {
                        return Err(in_use_conflict(&short));
                    }
                    for (n, _) in &names {
                        self.untag(n, &mut records).await?;
                    }
                }
            }
        }
        // No names left (or removal by id of an image with several).
        let names = self.names_of(&id).await?;
        if !force {
            if used {
                return Err(in_use_conflict(&short));
            }
            if !names.is_empty() {
                return Err(Error::Conflict(format!(
                    "conflict: unable to delete {short} (must be forced) - image is referenced in multiple repositories"
                )));
            }
        }
        for (n, _) in &names {
            self.untag(n, &mut records).await?;
        }
        if used {
            // Forced: untagged, but a container still runs on its layers.
            return Ok(records);
        }
        self.delete_image(&id).await?;
        records.push(RemovedImage::Deleted(id));
        Ok(records)
    }

    async fn untag(&self, name: &str, records: &mut Vec<RemovedImage>) -> Result<()> {
        let done = sqlx::query("DELETE FROM image_names WHERE name = ?")
            .bind(name)
            .execute(&self.pool)
            .await?;
        if done.rows_affected() > 0 {
            records.push(RemovedImage::Untagged(name.to_string()));
        }
        Ok(())
    }

    /// Deletes the image's row (names and layer rows with it), then its
    /// blobs and layer dirs that no other image uses. Returns the bytes
    /// freed on disk. The catalog goes first: a crash in between leaves
    /// only unreferenced files, which `prune` reclaims.
    async fn delete_image(&self, id: &str) -> Result<u64> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let row = sqlx::query("SELECT manifest_digest, index_digest FROM images WHERE id = ?")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
        let Some(row) = row else {
            return Ok(0);
        };
        let mut blobs = vec![id.to_string(), row.try_get::<String, _>("manifest_digest")?];
        if let Some(i) = row.try_get::<Option<String>, _>("index_digest")? {
            blobs.push(i);
        }
        let layers: Vec<String> =
            sqlx::query_scalar("SELECT DISTINCT digest FROM image_layers WHERE image_id = ?")
                .bind(id)
                .fetch_all(&mut *tx)
                .await?;
        sqlx::query("DELETE FROM images WHERE id = ?")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        let mut gone_layers = Vec::new();
        for l in layers {
            let used = sqlx::query("SELECT 1 FROM image_layers WHERE digest = ? LIMIT 1")
                .bind(&l)
                .fetch_optional(&mut *tx)
                .await?
                .is_some();
            if !used {
                gone_layers.push(l);
            }
        }
        let mut gone_blobs = Vec::new();
        for b in blobs {
            let used = sqlx::query(
                "SELECT 1 FROM images WHERE id = ?1 OR manifest_digest = ?1 OR index_digest = ?1 LIMIT 1",
            )
            .bind(&b)
            .fetch_optional(&mut *tx)
            .await?
            .is_some();
            if !used {
                gone_blobs.push(b);
            }
        }
        tx.commit().await?;
        let store = self.store.clone();
        let id = id.to_string();
        tokio::task::spawn_blocking(move || {
            let mut freed = 0;
            for l in &gone_layers {
                // The unpacked dir and the compressed blob kept for push.
                match remove_layer(&store, l).and_then(|n| Ok(n + remove_blob(&store, l)?)) {
                    Ok(n) => freed += n,
                    Err(e) => tracing::warn!(image = %id, error = %e, "leaving a layer behind"),
                }
            }
            for b in &gone_blobs {
                match remove_blob(&store, b) {
                    Ok(n) => freed += n,
                    Err(e) => tracing::warn!(image = %id, error = %e, "leaving a blob behind"),
                }
            }
            freed
        })
        .await
        .map_err(Error::internal)
    }

    /// Deletes dangling images (no tag; digest names do not count, as in
    /// docker) or with `all` every image, that no container uses,
    /// then layer dirs and blobs no image references any more (leftovers of
    /// failed pulls and of crashes).
    pub async fn prune(&self, all: bool, in_use: &HashMap<String, u64>) -> Result<PruneReport> {
        let _deleting = self.lock.write().await;
        let ids: Vec<String> = if all {
            sqlx::query_scalar("SELECT id FROM images ORDER BY id")
                .fetch_all(&self.pool)
                .await?
        } else {
            sqlx::query_scalar(
                "SELECT id FROM images WHERE id NOT IN
                   (SELECT image_id FROM image_names WHERE kind = 'tag') ORDER BY id",
            )
            .fetch_all(&self.pool)
            .await?
        };
        let mut report = PruneReport::default();
        for id in ids {
            if in_use.get(&id).copied().unwrap_or(0) > 0 {
                continue;
            }
            for (n, _) in self.names_of(&id).await? {
                self.untag(&n, &mut report.images_deleted).await?;
            }
            report.space_reclaimed += self.delete_image(&id).await?;
            report.images_deleted.push(RemovedImage::Deleted(id));
        }
        report.space_reclaimed += self.collect_garbage().await?;
        Ok(report)
    }

    /// Removes layer dirs and blobs the catalog does not reference. Only
    /// under the write lock: a pull in flight has unreferenced layers.
    async fn collect_garbage(&self) -> Result<u64> {
        let layers: BTreeSet<String> =
            sqlx::query_scalar("SELECT DISTINCT digest FROM image_layers")
                .fetch_all(&self.pool)
                .await?
                .into_iter()
                .collect();
        // Compressed layer blobs (kept for push) live beside the others.
        let mut blobs = layers.clone();
        for r in sqlx::query("SELECT id, manifest_digest, index_digest FROM images")
            .fetch_all(&self.pool)
            .await?
        {
            blobs.insert(r.try_get::<String, _>("id")?);
            blobs.insert(r.try_get::<String, _>("manifest_digest")?);
            if let Some(i) = r.try_get::<Option<String>, _>("index_digest")? {
                blobs.insert(i);
            }
        }
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || {
            let mut freed = 0;
            let listed = |dir: &Path| -> Vec<String> {
                fs::read_dir(dir)
                    .map(|rd| {
                        rd.filter_map(|e| e.ok())
                            .map(|e| e.file_name().to_string_lossy().into_owned())
                            .filter(|n| n.len() == 64 && is_hex(n))
                            .map(|n| format!("sha256:{n}"))
                            .collect()
                    })
                    .unwrap_or_default()
            };
            for d in listed(&store.root().join("layers")) {
                if !layers.contains(&d) {
                    match remove_layer(&store, &d) {
                        Ok(n) => freed += n,
                        Err(e) => tracing::warn!(error = %e, "prune: leaving a layer behind"),
                    }
                }
            }
            for d in listed(&store.root().join("blobs/sha256")) {
                if !blobs.contains(&d) {
                    match remove_blob(&store, &d) {
                        Ok(n) => freed += n,
                        Err(e) => tracing::warn!(error = %e, "prune: leaving a blob behind"),
                    }
                }
            }
            freed
        })
        .await
        .map_err(Error::internal)
    }

    /// Checks the credentials against the registry, then keeps them.
    pub async fn login(&self, req: LoginRequest) -> Result<()> {
        let registry = self.registry_of(&req.registry)?;
        if req.username.is_empty() || req.password.is_empty() {
            return Err(Error::BadRequest(
                "login needs a username and a password".into(),
            ));
        }
        if req.username.len() > MAX_USERNAME
            || req.password.len() > MAX_PASSWORD
            || req.username.contains(':')
            || req.username.chars().any(char::is_control)
        {
            return Err(Error::BadRequest(format!(
                "login to {registry}: the username must be at most {MAX_USERNAME} characters without ':', the password at most {MAX_PASSWORD}"
            )));
        }
        let creds = Credentials {
            username: req.username,
            password: req.password,
        };
        let client = RegistryClient::new(ClientConfig {
            insecure_registries: self.config.insecure_registries.clone(),
            ca_dirs: self.ca_dirs(),
            ..Default::default()
        })
        .map_err(|e| Error::Internal(e.to_string()))?;
        client
            .check_auth(&registry, &creds)
            .await
            .map_err(|e| match e {
                ClientError::WrongCredentials { .. } => Error::Unauthorized(format!(
                    "login to {registry} failed: wrong username or password"
                )),
                other => Error::Registry(format!("login to {registry} failed: {other}")),
            })?;
        let user = creds.username.clone();
        self.credentials
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .set(&registry, creds)
            .map_err(|e| Error::Internal(format!("saving the credentials: {e}")))?;
        tracing::info!(registry, user, "logged in");
        Ok(())
    }

    pub async fn logout(&self, registry: &str) -> Result<()> {
        let registry = self.registry_of(registry)?;
        let removed = self
            .credentials
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&registry)
            .map_err(|e| Error::Internal(format!("saving the credentials: {e}")))?;
        if removed {
            tracing::info!(registry, "logged out");
            Ok(())
        } else {
            Err(Error::NotFound(format!("Not logged in to {registry}")))
        }
    }

    /// "" -> the default registry; others normalized as credentials keys.
    fn registry_of(&self, registry: &str) -> Result<String> {
        if registry.is_empty() {
            return Ok(self.config.default_registry.clone());
        }
        normalize_registry(registry).map_err(|e| Error::BadRequest(e.to_string()))
    }
}

/// Turns pull progress into docker's events (sync callback side).
struct EventProgress {
    tx: mpsc::UnboundedSender<PullEvent>,
    /// What "Pulling from" names (the repository) and its id (the tag).
    repository: String,
    tag: String,
    /// When each layer's last "Downloading" went out.
    last: Mutex<HashMap<String, Instant>>,
}

impl EventProgress {
    fn new(tx: mpsc::UnboundedSender<PullEvent>, r: &Reference) -> Self {
        Self {
            tx,
            repository: r.repository().to_string(),
            tag: r.manifest_reference().to_string(),
            last: Mutex::new(HashMap::new()),
        }
    }

    fn send(&self, ev: PullEvent) {
        let _ = self.tx.send(ev);
    }

    fn translate(&self, e: ProgressEvent<'_>, now: Instant) -> Option<PullEvent> {
        let layer = |digest: &str, status: &str| PullEvent {
            id: Some(short_id(digest)),
            status: status.to_string(),
            ..Default::default()
        };
        Some(match e {
            ProgressEvent::Resolved { .. } => PullEvent {
                id: Some(self.tag.clone()),
                status: format!("Pulling from {}", self.repository),
                ..Default::default()
            },
            ProgressEvent::LayerExists { digest, .. } => layer(digest, "Already exists"),
            ProgressEvent::LayerStarted { digest, size } => PullEvent {
                total: Some(size),
                ..layer(digest, "Pulling fs layer")
            },
            ProgressEvent::LayerBytes {
                digest,
                done,
                total,
            } => {
                if done >= total {
                    return Some(layer(digest, "Download complete"));
                }
                let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
                match last.get(digest) {
                    Some(t) if now.duration_since(*t) < DOWNLOAD_EVENT_INTERVAL => return None,
                    _ => {
                        last.insert(digest.to_string(), now);
                    }
                }
                PullEvent {
                    current: Some(done),
                    total: Some(total),
                    ..layer(digest, "Downloading")
                }
            }
            ProgressEvent::LayerDone { digest } => layer(digest, "Pull complete"),
            // Digest and Status follow once the image is recorded.
            ProgressEvent::Done { .. } => return None,
        })
    }
}

impl Progress for EventProgress {
    fn event(&self, e: ProgressEvent<'_>) {
        if let Some(ev) = self.translate(e, Instant::now()) {
            self.send(ev);
        }
    }
}

/// One clear line per failure, with the status the CLI acts on.
fn pull_error(e: PullError, r: &Reference, store_root: &Path) -> Error {
    match e {
        PullError::Client(c) => client_error(c, r),
        PullError::Download { digest, source } => match source {
            ClientError::Unreachable { .. }
            | ClientError::WrongCredentials { .. }
            | ClientError::AuthRequired { .. }
            | ClientError::Denied { .. } => client_error(source, r),
            other => Error::Registry(format!("layer {digest}: {other}")),
        },
        PullError::Store(s) => store_error(s),
        PullError::LayerStore { digest, source } => {
            Error::Internal(format!("layer {digest}: {source}"))
        }
        PullError::Unpack { digest, detail } => {
            if detail.contains("No space left on device") || detail.contains("Disk quota exceeded")
            {
                Error::Internal(format!(
                    "layer {digest}: unpacking into {}: {detail}",
                    store_root.join("tmp").display()
                ))
            } else {
                Error::Registry(format!("layer {digest}: {detail}"))
            }
        }
        e @ PullError::DiffIdMismatch { .. } => Error::Registry(e.to_string()),
        e @ (PullError::BadImage { .. } | PullError::UnsupportedLayer { .. }) => {
            Error::BadRequest(e.to_string())
        }
        e @ PullError::Task { .. } => Error::Internal(e.to_string()),
    }
}

pub(super) fn client_error(e: ClientError, r: &Reference) -> Error {
    match e {
        ClientError::NotFound { reference } => Error::NotFound(format!(
            "manifest for {reference} not found: manifest unknown"
        )),
        ClientError::NoMatchingPlatform { .. } => Error::NotFound(e.to_string()),
        ClientError::WrongCredentials { .. } | ClientError::AuthRequired { .. } => {
            Error::Unauthorized(format!("pulling {r}: {e}"))
        }
        ClientError::Denied { .. } => Error::Unauthorized(format!(
            "pull access denied for {}/{}: {e}",
            r.registry(),
            r.repository()
        )),
        ClientError::Setup(_) => Error::Internal(e.to_string()),
        other => Error::Registry(other.to_string()),
    }
}

fn store_error(e: StoreError) -> Error {
    match e {
        StoreError::DigestMismatch { .. } | StoreError::BadDigest(_) => {
            Error::Registry(e.to_string())
        }
        other => Error::Internal(other.to_string()),
    }
}

fn in_use_conflict(short: &str) -> Error {
    Error::Conflict(format!(
        "conflict: unable to delete {short} (must be forced) - image is being used by a container"
    ))
}

/// The catalog name a reference is looked up by.
pub(super) fn catalog_name(r: &Reference) -> String {
    let base = format!("{}/{}", r.registry(), r.repository());
    match (r.digest(), r.tag()) {
        (Some(d), _) => format!("{base}@{d}"),
        (None, t) => format!("{base}:{}", t.unwrap_or("latest")),
    }
}

/// `registry/repo` of a catalog name (`...:tag` or `...@sha256:..`).
fn repo_of(name: &str) -> &str {
    if let Some((repo, _)) = name.split_once('@') {
        return repo;
    }
    let last_slash = name.rfind('/').map(|i| i + 1).unwrap_or(0);
    match name[last_slash..].rfind(':') {
        Some(i) => &name[..last_slash + i],
        None => name,
    }
}

/// docker's isSingleReference: at most one tag, and every name in one
/// repository.
fn is_single_reference(names: &[(String, String)]) -> bool {
    let tags = names.iter().filter(|(_, k)| k == "tag").count();
    let repos: BTreeSet<&str> = names.iter().map(|(n, _)| repo_of(n)).collect();
    tags <= 1 && repos.len() <= 1
}

/// The 12 hex digits docker shows for an id or digest.
fn short_id(digest: &str) -> String {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    hex.chars().take(12).collect()
}

fn is_hex(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn parse_time(s: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    chrono::DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&chrono::Utc))
}

/// docker's image inspect object from the stored config JSON.
fn inspect_json(id: &str, config: &Value, size: i64, names: &[(String, String)]) -> Value {
    let (tags, digests): (Vec<_>, Vec<_>) = names.iter().partition(|(_, k)| k == "tag");
    let c = config.get("config").cloned().unwrap_or(Value::Null);
    let field = |k: &str, default: Value| match c.get(k) {
        Some(v) if !v.is_null() => v.clone(),
        _ => default,
    };
    let mut cfg = serde_json::Map::new();
    cfg.insert("User".into(), field("User", json!("")));
    cfg.insert("Env".into(), field("Env", Value::Null));
    cfg.insert("Cmd".into(), field("Cmd", Value::Null));
    cfg.insert("Entrypoint".into(), field("Entrypoint", Value::Null));
    cfg.insert("WorkingDir".into(), field("WorkingDir", json!("")));
    cfg.insert("Labels".into(), field("Labels", Value::Null));
    cfg.insert("Volumes".into(), field("Volumes", Value::Null));
    if let Some(v) = c.get("ExposedPorts").filter(|v| !v.is_null()) {
        cfg.insert("ExposedPorts".into(), v.clone());
    }
    if let Some(v) = c.get("StopSignal").filter(|v| !v.is_null()) {
        cfg.insert("StopSignal".into(), v.clone());
    }
    let created = config
        .get("created")
        .and_then(Value::as_str)
        .and_then(parse_time)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true))
        .unwrap_or_else(|| "0001-01-01T00:00:00Z".into());
    let text = |k: &str| {
        config
            .get(k)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    let mut out = json!({
        "Id": id,
        "RepoTags": tags.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>(),
        "RepoDigests": digests.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>(),
        "Parent": "",
        "Comment": text("comment"),
        "Created": created,
        "Author": text("author"),
        "Config": Value::Object(cfg),
        "Architecture": text("architecture"),
        "Os": text("os"),
        "Size": size,
        "RootFS": {
            "Type": "layers",
            "Layers": config.pointer("/rootfs/diff_ids").cloned().unwrap_or_else(|| json!([])),
        },
    });
    if let Some(v) = config.get("variant").and_then(Value::as_str) {
        out["Variant"] = json!(v);
    }
    out
}

/// Bytes of the regular files under `dir` (symlinks not followed).
pub(super) fn dir_size(dir: &Path) -> io::Result<u64> {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d)? {
            let e = e?;
            let m = e.metadata()?;
            if m.is_dir() {
                stack.push(e.path());
            } else if m.is_file() {
                total += m.len();
            }
        }
    }
    Ok(total)
}

fn hex_part(digest: &str) -> io::Result<&str> {
    match digest.strip_prefix("sha256:") {
        Some(h) if h.len() == 64 && is_hex(h) => Ok(h),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("bad digest {digest:?}"),
        )),
    }
}

/// Removes a layer from the store (see `store`'s layout): the dir is first
/// renamed into `tmp/` so it vanishes from `layers/` at once, then its
/// short link and the files go. Returns the bytes freed; a missing layer
/// frees nothing.
fn remove_layer(store: &Store, digest: &str) -> io::Result<u64> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let hex = hex_part(digest)?;
    let dir = store.root().join("layers").join(hex);
    let trash = store.root().join("tmp").join(format!(
        "rm-{hex}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let with_path = |p: &Path| {
        let p = p.to_path_buf();
        move |e: io::Error| io::Error::new(e.kind(), format!("{}: {e}", p.display()))
    };
    match fs::rename(&dir, &trash) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(with_path(&dir)(e)),
    }
    if let Ok(id) = fs::read_to_string(trash.join("link")) {
        let id = id.trim();
        if !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric()) {
            let _ = fs::remove_file(store.root().join("l").join(id));
        }
    }
    let size = dir_size(&trash).unwrap_or(0);
    fs::remove_dir_all(&trash).map_err(with_path(&trash))?;
    Ok(size)
}

fn remove_blob(store: &Store, digest: &str) -> io::Result<u64> {
    let path: PathBuf = store.root().join("blobs/sha256").join(hex_part(digest)?);
    let size = match fs::symlink_metadata(&path) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    match fs::remove_file(&path) {
        Ok(()) => Ok(size),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(io::Error::new(e.kind(), format!("{}: {e}", path.display()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(n: u8) -> String {
        format!("sha256:{}", hex::encode([n; 32]))
    }

    async fn images(default_registry: &str) -> (tempfile::TempDir, Images) {
        let root = tempfile::tempdir().unwrap();
        let pool = super::super::catalog::open(root.path()).await.unwrap();
        let images = Images::open(
            root.path(),
            pool,
            ImagesConfig {
                default_registry: default_registry.into(),
                insecure_registries: vec![],
            },
        )
        .await
        .unwrap();
        (root, images)
    }

    /// Records a fake image `n` (config digest(n), layers as given).
    async fn add(images: &Images, n: u8, layers: &[u8], names: &[(&str, &str)]) -> String {
        let img = NewImage {
            id: digest(n),
            manifest_digest: digest(n.wrapping_add(100)),
            index_digest: None,
            config_json: json!({
                "architecture": "amd64", "os": "linux",
                "created": "2024-05-06T07:08:09Z",
                "config": {"Cmd": ["/bin/sh"], "Env": ["PATH=/bin"], "ExposedPorts": {"80/tcp": {}}},
                "rootfs": {"type": "layers", "diff_ids": layers.iter().map(|l| digest(l.wrapping_add(200))).collect::<Vec<_>>()},
            })
            .to_string(),
            layers: layers.iter().map(|l| (digest(*l), 10)).collect(),
            created: 1_714_979_289,
        };
        let names: Vec<(String, &str)> = names.iter().map(|(n, k)| (n.to_string(), *k)).collect();
        images.insert(&img, &names).await.unwrap();
        img.id
    }

    #[tokio::test]
    async fn names_ids_and_prefixes_resolve() {
        let (_root, im) = images("localhost:5000").await;
        let a = add(
            &im,
            0xab,
            &[1, 2],
            &[
                ("localhost:5000/busybox:latest", "tag"),
                ("localhost:5000/busybox@sha256:0000000000000000000000000000000000000000000000000000000000000001", "digest"),
            ],
        )
        .await;
        let b = add(&im, 0xac, &[1], &[("reg.example.com/team/app:1.0", "tag")]).await;
        for (name, want) in [
            ("busybox", &a),
            ("busybox:latest", &a),
            ("localhost:5000/busybox", &a),
            (
                "busybox@sha256:0000000000000000000000000000000000000000000000000000000000000001",
                &a,
            ),
            ("reg.example.com/team/app:1.0", &b),
            (a.as_str(), &a),
            (&a[7..], &a),
            ("sha256:abab", &a),
            ("abab", &a),
            ("acac", &b),
        ] {
            assert_eq!(&im.find(name).await.unwrap().id, want, "{name}");
        }
        // "a" is a prefix of both ids: ambiguous, as unknown in docker.
        for name in [
            "a",
            "sha256:a",
            "busybox:1",
            "team/app:1.0",
            "nope",
            "sha256:zz",
            "",
        ] {
            let e = im.find(name).await.unwrap_err();
            assert!(matches!(e, Error::NotFound(_)), "{name}: {e}");
            assert_eq!(e.to_string(), format!("No such image: {name}"));
        }
        let rec = im.find("busybox").await.unwrap();
        assert_eq!(rec.layers, vec![digest(1), digest(2)]);
        assert_eq!(
            rec.config.config().as_ref().unwrap().cmd().as_deref(),
            Some(&["/bin/sh".to_string()][..])
        );
    }

    #[tokio::test]
    async fn docker_hub_short_names_get_library() {
        let (_root, im) = images("").await;
        let a = add(&im, 1, &[1], &[("docker.io/library/busybox:latest", "tag")]).await;
        assert_eq!(im.find("busybox").await.unwrap().id, a);
        assert_eq!(im.find("docker.io/busybox").await.unwrap().id, a);
        assert_eq!(im.find("library/busybox:latest").await.unwrap().id, a);
    }

    #[tokio::test]
    async fn a_tag_moves_and_the_old_image_dangles() {
        let (_root, im) = images("localhost:5000").await;
        let a = add(&im, 1, &[1], &[("localhost:5000/app:1", "tag")]).await;
        let b = add(&im, 2, &[2], &[("localhost:5000/app:1", "tag")]).await;
        assert_eq!(im.find("app:1").await.unwrap().id, b);
        let list = im.list(&HashMap::from([(b.clone(), 2)])).await.unwrap();
        assert_eq!(list.len(), 2);
        let row = |id: &str| list.iter().find(|s| s.id == id).unwrap().clone();
        assert!(row(&a).repo_tags.is_empty());
        assert_eq!(row(&b).repo_tags, vec!["localhost:5000/app:1"]);
        assert_eq!((row(&b).containers, row(&a).containers), (2, 0));
        assert_eq!((row(&b).size, row(&b).created), (10, 1_714_979_289));

        // Same image, same names: up to date.
        let again = NewImage {
            id: b.clone(),
            manifest_digest: digest(102),
            index_digest: None,
            config_json: "{}".into(),
            layers: vec![(digest(2), 10)],
            created: 0,
        };
        let names = [("localhost:5000/app:1".to_string(), "tag")];
        assert!(im.insert(&again, &names).await.unwrap());
        let moved = [("localhost:5000/app:2".to_string(), "tag")];
        assert!(!im.insert(&again, &moved).await.unwrap());
    }

    #[tokio::test]
    async fn inspect_has_dockers_keys() {
        let (_root, im) = images("localhost:5000").await;
        let a = add(&im, 1, &[1, 2], &[("localhost:5000/app:1", "tag")]).await;
        let v = im.inspect("app:1").await.unwrap();
        assert_eq!(v["Id"], json!(a));
        assert_eq!(v["RepoTags"], json!(["localhost:5000/app:1"]));
        assert_eq!(v["RepoDigests"], json!([]));
        assert_eq!(v["Created"], json!("2024-05-06T07:08:09Z"));
        assert_eq!(
            (v["Os"].clone(), v["Architecture"].clone()),
            (json!("linux"), json!("amd64"))
        );
        assert_eq!(v["Size"], json!(20));
        assert_eq!(v["Config"]["Cmd"], json!(["/bin/sh"]));
        assert_eq!(v["Config"]["Entrypoint"], Value::Null);
        assert_eq!(v["Config"]["WorkingDir"], json!(""));
        assert_eq!(v["Config"]["ExposedPorts"], json!({"80/tcp": {}}));
        assert_eq!(v["RootFS"]["Type"], json!("layers"));
        assert_eq!(v["RootFS"]["Layers"], json!([digest(201), digest(202)]));
    }

    #[tokio::test]
    async fn rmi_untags_then_deletes_as_docker() {
        let (_root, im) = images("localhost:5000").await;
        let dg = "localhost:5000/app@sha256:0000000000000000000000000000000000000000000000000000000000000001";
        let a = add(
            &im,
            1,
            &[1],
            &[
                ("localhost:5000/app:1", "tag"),
                ("localhost:5000/app:2", "tag"),
                (dg, "digest"),
            ],
        )
        .await;
        let none = HashMap::new();
        let used = HashMap::from([(a.clone(), 1)]);
        // By id with two tags: must force.
        let e = im.remove(&a[7..19], false, &none).await.unwrap_err();
        assert!(matches!(e, Error::Conflict(_)), "{e}");
        assert!(
            e.to_string()
                .contains("referenced in multiple repositories"),
            "{e}"
        );
        // By name with another tag left: untag only, even in use.
        assert_eq!(
            im.remove("app:1", false, &used).await.unwrap(),
            vec![RemovedImage::Untagged("localhost:5000/app:1".into())]
        );
        // The last tag of an image in use: conflict, docker's message.
        let e = im.remove("app:2", false, &used).await.unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "conflict: unable to remove repository reference \"app:2\" (must force) - container is using its referenced image {}",
                &a[7..19]
            )
        );
        // Forced: untagged (with its repo's digest name), but kept.
        assert_eq!(
            im.remove("app:2", true, &used).await.unwrap(),
            vec![
                RemovedImage::Untagged("localhost:5000/app:2".into()),
                RemovedImage::Untagged(dg.into())
            ]
        );
        assert_eq!(im.find(&a).await.unwrap().id, a);
        // Dangling and in use: prune keeps it; rmi by id must force and
        // even then does not delete it.
        assert!(
            im.prune(false, &used)
                .await
                .unwrap()
                .images_deleted
                .is_empty()
        );
        assert!(matches!(
            im.remove(&a, false, &used).await,
            Err(Error::Conflict(_))
        ));
        assert_eq!(im.remove(&a, true, &used).await.unwrap(), vec![]);
        // Not in use any more: deleted.
        assert_eq!(
            im.remove(&a, false, &none).await.unwrap(),
            vec![RemovedImage::Deleted(a.clone())]
        );
        assert!(im.find(&a).await.is_err());
        assert!(im.list(&none).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn rmi_of_a_single_name_deletes_and_prune_all_takes_the_rest() {
        let (_root, im) = images("localhost:5000").await;
        let a = add(&im, 1, &[1], &[("localhost:5000/a:1", "tag")]).await;
        let b = add(&im, 2, &[1], &[("localhost:5000/b:1", "tag")]).await;
        let c = add(&im, 3, &[3], &[]).await;
        let none = HashMap::new();
        assert_eq!(
            im.remove("a:1", false, &none).await.unwrap(),
            vec![
                RemovedImage::Untagged("localhost:5000/a:1".into()),
                RemovedImage::Deleted(a.clone())
            ]
        );
        // The layer b shares with a is still b's.
        assert_eq!(im.find("b:1").await.unwrap().layers, vec![digest(1)]);
        let r = im.prune(false, &none).await.unwrap();
        assert_eq!(r.images_deleted, vec![RemovedImage::Deleted(c.clone())]);
        let r = im
            .prune(true, &HashMap::from([(b.clone(), 1)]))
            .await
            .unwrap();
        assert!(r.images_deleted.is_empty());
        let r = im.prune(true, &none).await.unwrap();
        assert_eq!(
            r.images_deleted,
            vec![
                RemovedImage::Untagged("localhost:5000/b:1".into()),
                RemovedImage::Deleted(b.clone())
            ]
        );
        let e = im.remove("nope", false, &none).await.unwrap_err();
        assert_eq!(e.to_string(), "No such image: nope");
    }

    fn progress() -> (EventProgress, mpsc::UnboundedReceiver<PullEvent>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let r = Reference::parse_with_default("team/app:1.0", "localhost:5000").unwrap();
        (EventProgress::new(tx, &r), rx)
    }

    #[test]
    fn progress_becomes_dockers_vocabulary_with_throttled_downloads() {
        let (p, _rx) = progress();
        let d = digest(0x12);
        let t0 = Instant::now();
        let ev = |e| p.translate(e, t0);
        assert_eq!(
            ev(ProgressEvent::Resolved {
                digest: &d,
                layers: 2
            })
            .unwrap(),
            PullEvent {
                id: Some("1.0".into()),
                status: "Pulling from team/app".into(),
                ..Default::default()
            }
        );
        let e = ev(ProgressEvent::LayerStarted {
            digest: &d,
            size: 1000,
        })
        .unwrap();
        assert_eq!(
            (e.id.as_deref(), e.status.as_str(), e.total),
            (Some("121212121212"), "Pulling fs layer", Some(1000))
        );
        assert_eq!(
            ev(ProgressEvent::LayerExists {
                digest: &d,
                size: 1
            })
            .unwrap()
            .status,
            "Already exists"
        );
        let bytes = |done, at| {
            p.translate(
                ProgressEvent::LayerBytes {
                    digest: &d,
                    done,
                    total: 1000,
                },
                at,
            )
        };
        let first = bytes(10, t0).unwrap();
        assert_eq!(
            (first.status.as_str(), first.current, first.total),
            ("Downloading", Some(10), Some(1000))
        );
        assert_eq!(bytes(20, t0 + Duration::from_millis(50)), None);
        assert_eq!(
            bytes(30, t0 + Duration::from_millis(150)).unwrap().current,
            Some(30)
        );
        // The end always goes out.
        assert_eq!(
            bytes(1000, t0 + Duration::from_millis(151)).unwrap().status,
            "Download complete"
        );
        assert_eq!(
            ev(ProgressEvent::LayerDone { digest: &d }).unwrap().status,
            "Pull complete"
        );
        assert_eq!(ev(ProgressEvent::Done { digest: &d }), None);
    }

    #[test]
    fn errors_are_one_line_with_the_right_status() {
        let r = Reference::parse_with_default("nope", "localhost:5000").unwrap();
        let root = Path::new("/var/lib/wharf-runner");
        let e = pull_error(
            PullError::Client(ClientError::NotFound {
                reference: r.to_string(),
            }),
            &r,
            root,
        );
        assert!(matches!(e, Error::NotFound(_)));
        assert_eq!(
            e.to_string(),
            "manifest for localhost:5000/nope:latest not found: manifest unknown"
        );
        let e = pull_error(
            PullError::Client(ClientError::Unreachable {
                host: "localhost:5000".into(),
                detail: "connection refused".into(),
            }),
            &r,
            root,
        );
        assert!(matches!(e, Error::Registry(_)) && e.to_string().contains("localhost:5000"));
        let e = pull_error(
            PullError::Client(ClientError::WrongCredentials {
                host: "localhost:5000".into(),
            }),
            &r,
            root,
        );
        assert!(matches!(e, Error::Unauthorized(_)), "{e}");
        let d = digest(7);
        let e = pull_error(
            PullError::Download {
                digest: d.clone(),
                source: ClientError::DigestMismatch {
                    expected: d.clone(),
                    actual: digest(8),
                },
            },
            &r,
            root,
        );
        assert!(
            matches!(e, Error::Registry(_)) && e.to_string().contains(&d),
            "{e}"
        );
        let e = pull_error(
            PullError::Unpack {
                digest: d.clone(),
                detail: "tar entry \"x\": write: No space left on device (os error 28)".into(),
            },
            &r,
            root,
        );
        assert!(matches!(e, Error::Internal(_)), "{e}");
        assert!(e.to_string().contains("/var/lib/wharf-runner/tmp") && e.to_string().contains(&d));
        for e in [
            Error::NotFound(String::new()),
            pull_error(
                PullError::Unpack {
                    digest: d.clone(),
                    detail: "a\nb".replace('\n', " "),
                },
                &r,
                root,
            ),
        ] {
            assert!(!e.to_string().contains('\n'));
        }
    }

    #[test]
    fn repos_of_names_and_single_references() {
        assert_eq!(repo_of("localhost:5000/a/b:1"), "localhost:5000/a/b");
        assert_eq!(
            repo_of(&format!("localhost:5000/a@{}", digest(1))),
            "localhost:5000/a"
        );
        let n = |v: &[(&str, &str)]| -> Vec<(String, String)> {
            v.iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect()
        };
        let dg = format!("h:1/a@{}", digest(1));
        assert!(is_single_reference(&n(&[
            ("h:1/a:1", "tag"),
            (&dg, "digest")
        ])));
        assert!(!is_single_reference(&n(&[
            ("h:1/a:1", "tag"),
            ("h:1/a:2", "tag")
        ])));
        assert!(!is_single_reference(&n(&[
            ("h:1/a:1", "tag"),
            ("h:1/b:1", "tag")
        ])));
        assert!(is_single_reference(&[]));
    }
}
