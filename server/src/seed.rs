//! The seeding tool behind the hidden `wharf-server seed` command, the scale
//! test (`tests/browse_scale.rs`) and the "web catalog at scale" benchmark:
//! fills a catalog with a large, realistic catalog in seconds.
//!
//! What it writes: `repositories` repositories in 50 namespaces (the first,
//! `library/big`, holds a tenth of the tags, the rest share the others);
//! one OCI image manifest per tag (config + 3 to 5 layers, annotations),
//! its `manifest_references`, the repository's `repository_blobs`; every
//! fifth repository's `latest` is a two-platform index over two untagged
//! images (linux/amd64, linux/arm64/v8). Configs (real image configs with
//! env, cmd, ports, labels, history) and layers come from a shared pool of
//! blobs whose bytes are written to the store first (bytes first, then the
//! rows: the catalog's invariant holds). The browse columns (sizes,
//! platforms; tag counts and push times through the triggers) are what a
//! push would have left. Push times are spread over the past year. Content
//! is deterministic, so the same options give the same digests.
//!
//! Layer: a tool beside the registry; calls `catalog` and `store`.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::catalog::browse::{SeedManifest, SeedRows};
use crate::catalog::{Catalog, CatalogError};
use crate::digest::{Algorithm, Digest};
use crate::registry::manifest::{OCI_INDEX, OCI_MANIFEST};
use crate::store::{BlobStore, StoreError};

const CONFIG_TYPE: &str = "application/vnd.oci.image.config.v1+json";
const LAYER_TYPE: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// Distinct image configs in the pool (even: amd64, odd: arm64).
const CONFIGS: usize = 200;
/// Distinct layers in the pool (1 to 32 KiB each).
const LAYERS: usize = 1000;
/// Repositories written per transaction.
const BATCH: usize = 250;
const YEAR_MS: i64 = 365 * 24 * 3600 * 1000;

const NAMESPACES: [&str; 50] = [
    "library",
    "team-a",
    "team-b",
    "platform",
    "infra",
    "data",
    "ml",
    "web",
    "mobile",
    "payments",
    "search",
    "ads",
    "growth",
    "security",
    "tools",
    "ci",
    "edge",
    "iot",
    "media",
    "games",
    "billing",
    "auth",
    "docs",
    "api",
    "core",
    "legacy",
    "labs",
    "research",
    "ops",
    "sre",
    "qa",
    "release",
    "vendor",
    "mirror",
    "partner",
    "internal",
    "public",
    "sandbox",
    "staging",
    "prod",
    "eu",
    "us",
    "apac",
    "finance",
    "hr",
    "support",
    "store",
    "analytics",
    "stream",
    "batch",
];
const WORDS: [&str; 40] = [
    "api",
    "web",
    "worker",
    "cron",
    "gateway",
    "proxy",
    "cache",
    "db",
    "queue",
    "indexer",
    "crawler",
    "frontend",
    "backend",
    "auth",
    "billing",
    "mailer",
    "notifier",
    "scheduler",
    "exporter",
    "collector",
    "agent",
    "cli",
    "sdk",
    "runner",
    "builder",
    "base",
    "python",
    "node",
    "golang",
    "rust",
    "java",
    "nginx",
    "redis",
    "postgres",
    "kafka",
    "spark",
    "model",
    "trainer",
    "server",
    "app",
];

#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Invalid(String),
}

/// How much to write.
#[derive(Debug, Clone, Copy)]
pub struct SeedOptions {
    pub repositories: u32,
    pub tags: u32,
}

impl Default for SeedOptions {
    fn default() -> Self {
        SeedOptions {
            repositories: 10_000,
            tags: 100_000,
        }
    }
}

/// What was written.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct SeedReport {
    pub repositories: u64,
    pub tags: u64,
    pub manifests: u64,
    pub blobs: u64,
    pub seconds: f64,
}

impl std::fmt::Display for SeedReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "seeded {} repositories, {} tags, {} manifests, {} blobs in {:.1} s",
            self.repositories, self.tags, self.manifests, self.blobs, self.seconds
        )
    }
}

/// The name of the `i`th seeded repository (`library/big` first).
pub fn repository_name(i: usize) -> String {
    if i == 0 {
        return "library/big".into();
    }
    let ns = NAMESPACES[i % NAMESPACES.len()];
    let word = WORDS[(i / NAMESPACES.len()) % WORDS.len()];
    format!("{ns}/{word}-{i:05}")
}

/// How many tags the `i`th of `repos` repositories gets out of `tags`.
pub fn tags_of_repository(i: usize, repos: usize, tags: usize) -> usize {
    if repos <= 1 {
        return tags;
    }
    let big = tags / 10;
    if i == 0 {
        return big;
    }
    let rest = tags - big;
    let others = repos - 1;
    rest / others + usize::from(i - 1 < rest % others)
}

/// The `j`th tag name of a repository.
pub fn tag_name(i: usize, j: usize) -> String {
    match (i, j) {
        (_, 0) => "latest".into(),
        (0, j) => format!("1.{}.{}", j / 100, j % 100),
        (_, j) if j % 3 == 0 => format!("main-{:07x}", (i * 7919 + j * 104_729) & 0xfff_ffff),
        (_, j) => format!("v{}.{}.0", j / 10, j % 10),
    }
}

struct Blob {
    digest: String,
    bytes: Vec<u8>,
}

fn blob(bytes: Vec<u8>) -> Blob {
    Blob {
        digest: Digest::of(Algorithm::Sha256, &bytes).to_string(),
        bytes,
    }
}

fn config_blob(k: usize) -> Blob {
    let (arch, variant) = if k.is_multiple_of(2) {
        ("amd64", None)
    } else {
        ("arm64", Some("v8"))
    };
    let word = WORDS[k % WORDS.len()];
    let mut c = json!({
        "created": format!("2026-{:02}-{:02}T{:02}:00:00Z", 1 + k % 12, 1 + k % 28, k % 24),
        "architecture": arch,
        "os": "linux",
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                    format!("APP={word}"), format!("BUILD={k}")],
            "Entrypoint": ["/usr/local/bin/docker-entrypoint.sh"],
            "Cmd": [word, "--config", "/etc/app.toml"],
            "WorkingDir": "/srv/app",
            "User": "10001",
            "ExposedPorts": { "8080/tcp": {}, "9090/tcp": {} },
            "Labels": {
                "org.opencontainers.image.title": word,
                "org.opencontainers.image.version": format!("1.{k}.0"),
                "org.opencontainers.image.source": format!("https://git.example.lan/{word}"),
            }
        },
        "rootfs": { "type": "layers", "diff_ids": (0..3).map(|l| format!("sha256:{:064x}", k * 10 + l)).collect::<Vec<_>>() },
        "history": [
            { "created": "2026-01-01T00:00:00Z", "created_by": "/bin/sh -c #(nop) ADD file:0123456789abcdef in / " },
            { "created": "2026-01-01T00:00:01Z", "created_by": "/bin/sh -c #(nop)  CMD [\"bash\"]", "empty_layer": true },
            { "created": "2026-01-02T00:00:00Z", "created_by": "RUN /bin/sh -c apt-get update && apt-get install -y ca-certificates # buildkit", "comment": "buildkit.dockerfile.v0" },
            { "created": "2026-01-02T00:00:05Z", "created_by": format!("COPY ./{word} /usr/local/bin/ # buildkit"), "comment": "buildkit.dockerfile.v0" },
            { "created": "2026-01-02T00:00:06Z", "created_by": format!("CMD [\"{word}\"]"), "empty_layer": true }
        ]
    });
    if let Some(v) = variant {
        c["variant"] = json!(v);
    }
    blob(serde_json::to_vec(&c).unwrap_or_default())
}

fn layer_blob(k: usize) -> Blob {
    let len = 1024 + (k * 7919) % (31 * 1024);
    let mut x = (k as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let bytes = (0..len)
        .map(|_| {
            // xorshift: incompressible-looking, deterministic bytes.
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    blob(bytes)
}

fn desc(media_type: &str, b: &Blob) -> serde_json::Value {
    json!({ "mediaType": media_type, "digest": b.digest, "size": b.bytes.len() })
}

/// One image manifest of the seeded catalog.
struct Image {
    digest: String,
    content: Vec<u8>,
    blobs: Vec<usize>,
    config: usize,
    total: i64,
}

fn image(
    configs: &[Blob],
    layers: &[Blob],
    repo: &str,
    tag: &str,
    config: usize,
    picks: &[usize],
) -> Image {
    let c = &configs[config];
    let m = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": desc(CONFIG_TYPE, c),
        "layers": picks.iter().map(|&l| desc(LAYER_TYPE, &layers[l])).collect::<Vec<_>>(),
        "annotations": {
            "org.opencontainers.image.ref.name": tag,
            "org.opencontainers.image.base.name": format!("{repo}:{tag}"),
        }
    });
    let content = serde_json::to_vec(&m).unwrap_or_default();
    let total =
        (c.bytes.len() + picks.iter().map(|&l| layers[l].bytes.len()).sum::<usize>()) as i64;
    Image {
        digest: Digest::of(Algorithm::Sha256, &content).to_string(),
        content,
        blobs: picks.to_vec(),
        config,
        total,
    }
}

/// Adds an image manifest's rows: the manifest, its references, and the
/// blobs the repository must be able to serve.
fn push_image(
    rows: &mut SeedRows,
    used: &mut BTreeSet<String>,
    repo: &str,
    img: &Image,
    at: i64,
    configs: &[Blob],
    layers: &[Blob],
) {
    let arch = if img.config.is_multiple_of(2) {
        "linux/amd64"
    } else {
        "linux/arm64/v8"
    };
    rows.manifests.push(SeedManifest {
        repository: repo.to_owned(),
        digest: img.digest.clone(),
        media_type: OCI_MANIFEST,
        content: img.content.clone(),
        total_size: Some(img.total),
        platforms: format!("[\"{arch}\"]"),
        created_at: at,
    });
    let mut children = vec![configs[img.config].digest.clone()];
    children.extend(img.blobs.iter().map(|&l| layers[l].digest.clone()));
    for c in children {
        rows.references
            .push((repo.to_owned(), img.digest.clone(), c.clone(), "blob"));
        used.insert(c);
    }
}

/// Fills `catalog` (and the blob pool into `store`); see the module doc.
pub async fn seed(
    catalog: &Catalog,
    store: &BlobStore,
    opts: SeedOptions,
) -> Result<SeedReport, SeedError> {
    let started = Instant::now();
    let repos = opts.repositories as usize;
    let tags = opts.tags as usize;
    if repos == 0 || tags < repos {
        return Err(SeedError::Invalid(
            "seed needs at least one repository and one tag per repository".into(),
        ));
    }
    let configs: Vec<Blob> = (0..CONFIGS).map(config_blob).collect();
    let layers: Vec<Blob> = (0..LAYERS).map(layer_blob).collect();
    // Bytes first.
    for b in configs.iter().chain(&layers) {
        let digest: Digest = b
            .digest
            .parse()
            .map_err(|_| SeedError::Invalid("digest".into()))?;
        let key = BlobStore::blob_key(&digest);
        if store.size(&key).await? == Some(b.bytes.len() as u64) {
            continue;
        }
        let mut w = store.writer(key).await;
        w.write(bytes::Bytes::copy_from_slice(&b.bytes)).await?;
        w.finish().await?;
    }
    let mut rows = SeedRows {
        blobs: configs
            .iter()
            .chain(&layers)
            .map(|b| (b.digest.clone(), b.bytes.len() as i64))
            .collect(),
        ..SeedRows::default()
    };
    catalog.seed(&rows).await?;
    rows.blobs.clear();

    let now = crate::catalog::now_ms();
    let mut report = SeedReport {
        repositories: 0,
        tags: 0,
        manifests: 0,
        blobs: (CONFIGS + LAYERS) as u64,
        seconds: 0.0,
    };
    for start in (0..repos).step_by(BATCH) {
        let mut rows = SeedRows::default();
        for i in start..(start + BATCH).min(repos) {
            let name = repository_name(i);
            let created = now - YEAR_MS + (i as i64 * 7919) % (YEAR_MS / 2);
            rows.repositories.push((name.clone(), created));
            let mut used: BTreeSet<String> = BTreeSet::new();
            let base = [(i * 3) % 60, 60 + (i * 7) % 140, 200 + (i * 11) % 300];
            let n = tags_of_repository(i, repos, tags);
            for j in 0..n {
                let tag = tag_name(i, j);
                let at = created + ((i as i64 * 104_729 + j as i64 * 7919) % (YEAR_MS / 2));
                let top: Vec<usize> = (0..(j % 3))
                    .map(|t| 500 + (i * 13 + j * 17 + t) % 500)
                    .collect();
                let picks: Vec<usize> = base.iter().copied().chain(top).collect();
                if j == 0 && i % 5 == 0 && i != 0 {
                    // A multi-arch `latest`: an index over two untagged images.
                    let amd = image(
                        &configs,
                        &layers,
                        &name,
                        "latest-amd64",
                        (i * 2) % CONFIGS,
                        &picks,
                    );
                    let arm = image(
                        &configs,
                        &layers,
                        &name,
                        "latest-arm64",
                        (i * 2 + 1) % CONFIGS,
                        &picks,
                    );
                    push_image(&mut rows, &mut used, &name, &amd, at, &configs, &layers);
                    push_image(&mut rows, &mut used, &name, &arm, at, &configs, &layers);
                    let index = json!({
                        "schemaVersion": 2,
                        "mediaType": OCI_INDEX,
                        "manifests": [
                            { "mediaType": OCI_MANIFEST, "digest": amd.digest, "size": amd.content.len(),
                              "platform": { "os": "linux", "architecture": "amd64" } },
                            { "mediaType": OCI_MANIFEST, "digest": arm.digest, "size": arm.content.len(),
                              "platform": { "os": "linux", "architecture": "arm64", "variant": "v8" } }
                        ]
                    });
                    let content = serde_json::to_vec(&index).unwrap_or_default();
                    let digest = Digest::of(Algorithm::Sha256, &content).to_string();
                    rows.manifests.push(SeedManifest {
                        repository: name.clone(),
                        digest: digest.clone(),
                        media_type: OCI_INDEX,
                        content,
                        total_size: Some(amd.total + arm.total),
                        platforms: "[\"linux/amd64\",\"linux/arm64/v8\"]".into(),
                        created_at: at,
                    });
                    for child in [&amd.digest, &arm.digest] {
                        rows.references.push((
                            name.clone(),
                            digest.clone(),
                            child.clone(),
                            "manifest",
                        ));
                    }
                    rows.tags.push((name.clone(), tag, digest, at));
                } else {
                    let img = image(&configs, &layers, &name, &tag, (i + j) % CONFIGS, &picks);
                    push_image(&mut rows, &mut used, &name, &img, at, &configs, &layers);
                    rows.tags.push((name.clone(), tag, img.digest, at));
                }
                report.tags += 1;
            }
            rows.repository_blobs
                .extend(used.into_iter().map(|d| (name.clone(), d)));
            report.repositories += 1;
        }
        report.manifests += rows.manifests.len() as u64;
        catalog.seed(&rows).await?;
    }
    catalog.analyze().await?;
    report.seconds = started.elapsed().as_secs_f64();
    tracing::info!(%report, "seeded the catalog");
    Ok(report)
}

/// How long seeding the default catalog may take on a slow machine before
/// the scale test calls it broken.
pub const SEED_BUDGET: Duration = Duration::from_secs(120);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_tag_counts_add_up() {
        let (repos, tags) = (10_000, 100_000);
        let sum: usize = (0..repos).map(|i| tags_of_repository(i, repos, tags)).sum();
        assert_eq!(sum, tags);
        assert_eq!(tags_of_repository(0, repos, tags), 10_000);
        let names: BTreeSet<String> = (0..repos).map(repository_name).collect();
        assert_eq!(names.len(), repos, "names are unique");
        assert!(
            names
                .iter()
                .all(|n| crate::names::RepoName::parse(n).is_some())
        );
        let tags: BTreeSet<String> = (0..10_000).map(|j| tag_name(0, j)).collect();
        assert_eq!(tags.len(), 10_000);
        assert!(tags.iter().all(|t| crate::names::valid_tag(t)));
        let small: BTreeSet<String> = (0..12).map(|j| tag_name(7, j)).collect();
        assert_eq!(small.len(), 12);
    }
}
