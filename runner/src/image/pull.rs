//! Pulling an image: resolve the reference to a manifest (picking the host's
//! platform from an index), fetch the config, then download the layers in
//! parallel, each verified against its digest while it streams, decompressed
//! by media type and unpacked as the bytes arrive into a temp dir of the
//! store that becomes the layer dir only once everything checked out.
//!
//! The compressed bytes are written to a temp blob of the store as they
//! arrive and kept under the layer's digest once it is committed, so a
//! pulled image can be pushed elsewhere byte for byte.
//!
//! Calls `client` (network), `store` (disk) and a [`LayerUnpacker`] (the
//! safe tar unpacker, passed in so this module does not pick it); called by
//! the daemon/CLI.
//!
//! The data path of one layer: the async task reads the verifying blob
//! stream and sends chunks over a bounded channel (so a slow disk slows the
//! download instead of buffering it) to a blocking task that reads them
//! through the decompressor into the unpacker. The end of the stream is only
//! signalled to the blocking side after the digest matched, and the blocking
//! side drains the stream to that end before committing, so a layer with a
//! wrong digest is never committed even if its tar ended early. Any failure
//! or cancellation drops the temp dir (see `store::LayerTemp`), so a retry
//! starts clean and skips the layers already committed.

use std::collections::HashMap;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::{Buf, Bytes};
use futures::StreamExt;
use oci_spec::image::{ImageConfiguration, ImageManifest};
use sha2::{Digest as _, Sha256};
use tokio::sync::mpsc;

use super::Platform;
use super::client::{ClientError, RegistryClient, pick_platform, verify_stream};
use super::reference::Reference;
use super::store::{Store, StoreError};

/// How many layers download at once.
pub const PARALLEL_LAYERS: usize = 3;
/// Image configs are JSON with the history; big ones are a few hundred KiB.
pub const MAX_CONFIG_SIZE: usize = 8 << 20;
/// Chunks in flight between the download and the unpacker, per layer.
const CHANNEL_CHUNKS: usize = 16;

/// Unpacks one layer's tar stream into `dest` (an existing, empty dir).
/// Blocking; runs on a blocking thread. The error should name the offending
/// tar entry. The integrator wires `unpack::unpack_layer` in here.
pub trait LayerUnpacker: Send + Sync {
    fn unpack(
        &self,
        reader: &mut dyn Read,
        dest: &Path,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>>;
}

/// Any `Fn(&mut dyn Read, &Path) -> Result<..>` is an unpacker (handy in
/// tests and for wiring a plain function).
impl<F> LayerUnpacker for F
where
    F: Fn(&mut dyn Read, &Path) -> Result<(), Box<dyn std::error::Error + Send + Sync>>
        + Send
        + Sync,
{
    fn unpack(
        &self,
        reader: &mut dyn Read,
        dest: &Path,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        self(reader, dest)
    }
}

/// The runner's safe unpacker ([`super::unpack::unpack_layer`]: openat-style
/// resolution, OCI whiteouts to overlayfs ones) as a [`LayerUnpacker`].
// The unpack module is declared in lib.rs (`#[path = "image/unpack.rs"]`)
// for now; once it moves to `pub mod unpack;` in image/mod.rs this becomes
// `super::unpack::unpack_layer` (declaring it in both places trips clippy's
// duplicate_mod).
pub struct SafeUnpacker;

impl LayerUnpacker for SafeUnpacker {
    fn unpack(
        &self,
        reader: &mut dyn Read,
        dest: &Path,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        super::unpack::unpack_layer(reader, dest)
            .map(|_stats| ())
            .map_err(Into::into)
    }
}

/// What a pull reports as it goes, for progress bars or log lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProgressEvent<'a> {
    /// The manifest is known: its digest and how many layers it has.
    Resolved { digest: &'a str, layers: usize },
    /// The layer is already in the store; nothing is fetched.
    LayerExists { digest: &'a str, size: u64 },
    /// The layer's download started.
    LayerStarted { digest: &'a str, size: u64 },
    /// Bytes of the (compressed) layer received so far.
    LayerBytes {
        digest: &'a str,
        done: u64,
        total: u64,
    },
    /// The layer is verified, unpacked and committed.
    LayerDone { digest: &'a str },
    /// The whole image is in the store.
    Done { digest: &'a str },
}

/// Receives progress events. Called from the pulling task only.
pub trait Progress: Sync {
    fn event(&self, event: ProgressEvent<'_>);
}

/// Ignores all events.
pub struct NoProgress;

impl Progress for NoProgress {
    fn event(&self, _: ProgressEvent<'_>) {}
}

/// How a layer's bytes are compressed, from its media type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    /// The compression of a layer media type (OCI and Docker names), or
    /// `None` for a type that is not a layer tar.
    pub fn from_media_type(media_type: &str) -> Option<Self> {
        match media_type {
            "application/vnd.oci.image.layer.v1.tar"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar"
            | "application/vnd.docker.image.rootfs.diff.tar" => Some(Self::None),
            "application/vnd.oci.image.layer.v1.tar+gzip"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
            | "application/vnd.docker.image.rootfs.diff.tar.gzip"
            | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => Some(Self::Gzip),
            "application/vnd.oci.image.layer.v1.tar+zstd"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"
            | "application/vnd.docker.image.rootfs.diff.tar.zstd" => Some(Self::Zstd),
            _ => None,
        }
    }

    /// A reader of the uncompressed tar over `inner`.
    pub fn decoder<'a>(self, inner: &'a mut dyn Read) -> io::Result<Box<dyn Read + 'a>> {
        Ok(match self {
            Self::None => Box::new(inner),
            // Multi-member: pigz and some tools write several gzip members.
            Self::Gzip => Box::new(flate2::read::MultiGzDecoder::new(inner)),
            Self::Zstd => Box::new(zstd::stream::read::Decoder::new(inner)?),
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("image {reference}: {detail}")]
    BadImage { reference: String, detail: String },
    #[error("layer {digest}: unsupported media type {media_type:?}")]
    UnsupportedLayer { digest: String, media_type: String },
    #[error("layer {digest}: {source}")]
    Download {
        digest: String,
        #[source]
        source: ClientError,
    },
    #[error("layer {digest}: {detail}")]
    Unpack { digest: String, detail: String },
    #[error("layer {digest}: uncompressed content hashes to {actual}, the config says {diff_id}")]
    DiffIdMismatch {
        digest: String,
        diff_id: String,
        actual: String,
    },
    #[error("layer {digest}: {source}")]
    LayerStore {
        digest: String,
        #[source]
        source: StoreError,
    },
    #[error("layer {digest}: unpack task failed: {detail}")]
    Task { digest: String, detail: String },
}

/// A pulled image: everything the bundle side needs.
#[derive(Debug, Clone)]
pub struct PulledImage {
    /// The reference as asked for.
    pub reference: Reference,
    /// Digest of the platform manifest (what `image@digest` pins).
    pub manifest_digest: String,
    /// Digest of the index it was picked from, when there was one.
    pub index_digest: Option<String>,
    pub config_digest: String,
    pub config: ImageConfiguration,
    /// Layer digests, bottom first.
    pub layer_digests: Vec<String>,
    /// Unpacked layer dirs, bottom first (overlay wants them top first).
    pub layers: Vec<PathBuf>,
}

/// Pulls `reference` into `store`. See the module doc for the data path.
pub async fn pull(
    client: &RegistryClient,
    store: &Store,
    reference: &Reference,
    platform: &Platform,
    unpacker: Arc<dyn LayerUnpacker>,
    progress: &dyn Progress,
) -> Result<PulledImage, PullError> {
    let bad = |detail: String| PullError::BadImage {
        reference: reference.to_string(),
        detail,
    };
    let mut manifest = client.get_manifest(reference).await?;
    let mut index_digest = None;
    if manifest.is_index() {
        let desc = pick_platform(reference, &manifest.bytes, platform)?;
        store.put_blob(&manifest.digest, &manifest.bytes)?;
        index_digest = Some(manifest.digest.clone());
        let pinned = reference.with_digest(desc.digest().as_ref());
        manifest = client.get_manifest(&pinned).await?;
        if manifest.is_index() {
            return Err(bad(format!(
                "the {platform} entry {} is itself an index",
                manifest.digest
            )));
        }
        if manifest.bytes.len() as u64 != desc.size() {
            return Err(bad(format!(
                "manifest {} is {} bytes, the index says {}",
                manifest.digest,
                manifest.bytes.len(),
                desc.size()
            )));
        }
    }
    let image: ImageManifest = serde_json::from_slice(&manifest.bytes)
        .map_err(|e| bad(format!("manifest {}: {e}", manifest.digest)))?;
    progress.event(ProgressEvent::Resolved {
        digest: &manifest.digest,
        layers: image.layers().len(),
    });

    let config_type = image.config().media_type().to_string();
    if config_type != "application/vnd.oci.image.config.v1+json"
        && config_type != "application/vnd.docker.container.image.v1+json"
    {
        return Err(bad(format!(
            "not a container image (its config has media type {config_type:?})"
        )));
    }
    let config_digest = image.config().digest().to_string();
    let config_bytes = if store.has_blob(&config_digest) {
        store.read_blob(&config_digest)?
    } else {
        let b = client
            .get_blob(reference, &config_digest, MAX_CONFIG_SIZE)
            .await?;
        store.put_blob(&config_digest, &b)?;
        b
    };
    let config: ImageConfiguration = serde_json::from_slice(&config_bytes)
        .map_err(|e| bad(format!("config {config_digest}: {e}")))?;
    let diff_ids = config.rootfs().diff_ids();
    if diff_ids.len() != image.layers().len() {
        return Err(bad(format!(
            "the config lists {} diff_ids for {} layers",
            diff_ids.len(),
            image.layers().len()
        )));
    }

    // Each distinct layer once, in manifest order.
    let mut jobs = Vec::new();
    let mut seen = HashMap::new();
    for (i, l) in image.layers().iter().enumerate() {
        let digest = l.digest().to_string();
        if seen.insert(digest.clone(), i).is_some() {
            continue;
        }
        let media_type = l.media_type().to_string();
        let compression = Compression::from_media_type(&media_type).ok_or_else(|| {
            PullError::UnsupportedLayer {
                digest: digest.clone(),
                media_type: media_type.clone(),
            }
        })?;
        jobs.push(LayerJob {
            digest,
            size: l.size(),
            compression,
            diff_id: diff_ids[i].clone(),
        });
    }
    // Set on the first failure: layers not started yet are skipped and the
    // running ones stop at their next chunk, so that when pull returns every
    // unpack task has ended and removed its temp dir.
    let abort = AtomicBool::new(false);
    let abort = &abort;
    let mut downloads = futures::stream::iter(jobs.into_iter().map(|job| {
        let unpacker = unpacker.clone();
        async move {
            if abort.load(Ordering::Relaxed) {
                return Ok(());
            }
            if store.has_layer(&job.digest) {
                progress.event(ProgressEvent::LayerExists {
                    digest: &job.digest,
                    size: job.size,
                });
                return Ok(());
            }
            let r = pull_layer(client, store, reference, &job, unpacker, progress, abort).await;
            if r.is_err() {
                abort.store(true, Ordering::Relaxed);
            }
            r?;
            progress.event(ProgressEvent::LayerDone {
                digest: &job.digest,
            });
            Ok::<(), PullError>(())
        }
    }))
    .buffer_unordered(PARALLEL_LAYERS);
    // The first error wins; the others are mostly "interrupted" by it.
    let mut first_error = None;
    while let Some(r) = downloads.next().await {
        if let Err(e) = r {
            first_error.get_or_insert(e);
        }
    }
    drop(downloads);
    if let Some(e) = first_error {
        return Err(e);
    }

    let layer_digests: Vec<String> = image
        .layers()
        .iter()
        .map(|l| l.digest().to_string())
        .collect();
    let layers = layer_digests
        .iter()
        .map(|d| store.layer_path(d))
        .collect::<Result<Vec<_>, _>>()?;
    store.put_blob(&manifest.digest, &manifest.bytes)?;
    progress.event(ProgressEvent::Done {
        digest: &manifest.digest,
    });
    Ok(PulledImage {
        reference: reference.clone(),
        manifest_digest: manifest.digest,
        index_digest,
        config_digest,
        config,
        layer_digests,
        layers,
    })
}

struct LayerJob {
    digest: String,
    size: u64,
    compression: Compression,
    diff_id: String,
}

async fn pull_layer(
    client: &RegistryClient,
    store: &Store,
    reference: &Reference,
    job: &LayerJob,
    unpacker: Arc<dyn LayerUnpacker>,
    progress: &dyn Progress,
    abort: &AtomicBool,
) -> Result<(), PullError> {
    let digest = job.digest.clone();
    let download_err = |source| PullError::Download {
        digest: digest.clone(),
        source,
    };
    let stream = client
        .blob_stream(reference, &job.digest)
        .await
        .map_err(download_err)?;
    let mut stream = verify_stream(stream, &job.digest, Some(job.size));
    progress.event(ProgressEvent::LayerStarted {
        digest: &job.digest,
        size: job.size,
    });

    let temp = store
        .begin_layer(&job.digest)
        .map_err(|source| PullError::LayerStore {
            digest: digest.clone(),
            source,
        })?;
    // The compressed bytes are kept too, so the image can be pushed as is.
    let blob = store.begin_blob().map_err(|source| PullError::LayerStore {
        digest: digest.clone(),
        source,
    })?;
    let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(CHANNEL_CHUNKS);
    let (d, compression, diff_id) = (digest.clone(), job.compression, job.diff_id.clone());
    let unpack_task = tokio::task::spawn_blocking(move || {
        unpack_blocking(rx, temp, blob, &d, compression, &diff_id, unpacker.as_ref())
    });

    let mut done = 0u64;
    let mut download_error = None;
    while let Some(chunk) = stream.next().await {
        if abort.load(Ordering::Relaxed) {
            // Another layer failed: end without the end marker, so the
            // unpacker fails and its temp dir goes.
            break;
        }
        match chunk {
            Ok(c) if c.is_empty() => {}
            Ok(c) => {
                done += c.len() as u64;
                progress.event(ProgressEvent::LayerBytes {
                    digest: &job.digest,
                    done,
                    total: job.size,
                });
                if tx.send(Ok(c)).await.is_err() {
                    break; // the unpacker gave up; its error says why
                }
            }
            Err(e) => {
                let _ = tx.send(Err(io::Error::other(e.to_string()))).await;
                download_error = Some(e);
                break;
            }
        }
    }
    if download_error.is_none() && !tx.is_closed() && !abort.load(Ordering::Relaxed) {
        // Verified end of stream: tell the unpacker the bytes are complete.
        let _ = tx.send(Ok(Bytes::new())).await;
    }
    drop(tx);
    let unpacked = unpack_task.await.map_err(|e| PullError::Task {
        digest: digest.clone(),
        detail: e.to_string(),
    });
    // A download error (unreachable, digest mismatch) explains any unpack
    // error that followed from it, so it is reported first.
    if let Some(e) = download_error {
        return Err(download_err(e));
    }
    unpacked?
}

/// The blocking half: decompress, unpack, drain to the verified end, check
/// the diff_id, commit. Dropping `temp` on any error removes the temp dir.
fn unpack_blocking(
    rx: mpsc::Receiver<io::Result<Bytes>>,
    temp: super::store::LayerTemp,
    blob: super::store::BlobTemp,
    digest: &str,
    compression: Compression,
    diff_id: &str,
    unpacker: &dyn LayerUnpacker,
) -> Result<(), PullError> {
    let unpack_err = |detail: String| PullError::Unpack {
        digest: digest.to_string(),
        detail,
    };
    let mut raw = ChannelReader {
        rx,
        current: Bytes::new(),
        ended: false,
        copy: Some(blob),
    };
    let actual = {
        let decoder = compression
            .decoder(&mut raw)
            .map_err(|e| unpack_err(format!("decompressing: {e}")))?;
        let mut tar = HashingReader {
            inner: decoder,
            hasher: Sha256::new(),
        };
        unpacker
            .unpack(&mut tar, &temp.diff_dir())
            .map_err(|e| unpack_err(e.to_string()))?;
        // The tar reader stops at the end-of-archive blocks; the diff_id
        // covers the padding after them too.
        io::copy(&mut tar, &mut io::sink())
            .map_err(|e| unpack_err(format!("reading past the end of the tar: {e}")))?;
        format!("sha256:{}", hex::encode(tar.hasher.finalize()))
    };
    // Trailing bytes after the compressed stream, up to the verified end.
    io::copy(&mut raw, &mut io::sink()).map_err(|e| unpack_err(e.to_string()))?;
    if actual != diff_id {
        return Err(PullError::DiffIdMismatch {
            digest: digest.to_string(),
            diff_id: diff_id.to_string(),
            actual,
        });
    }
    if let Some(blob) = raw.copy.take() {
        blob.commit(digest)
            .map_err(|source| PullError::LayerStore {
                digest: digest.to_string(),
                source,
            })?;
    }
    temp.commit().map_err(|source| PullError::LayerStore {
        digest: digest.to_string(),
        source,
    })?;
    Ok(())
}

/// Blocking `Read` over the chunks of a download. An empty chunk marks the
/// verified end; the channel closing without it is an interrupted download.
struct ChannelReader {
    rx: mpsc::Receiver<io::Result<Bytes>>,
    current: Bytes,
    ended: bool,
    /// Receives every chunk as it arrives (the compressed blob's file).
    copy: Option<super::store::BlobTemp>,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            if self.ended || buf.is_empty() {
                return Ok(0);
            }
            match self.rx.blocking_recv() {
                Some(Ok(c)) if c.is_empty() => self.ended = true,
                Some(Ok(c)) => {
                    if let Some(copy) = self.copy.as_mut() {
                        io::Write::write_all(copy, &c)?;
                    }
                    self.current = c;
                }
                Some(Err(e)) => return Err(e),
                None => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "download interrupted",
                    ));
                }
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        self.current.advance(n);
        Ok(n)
    }
}

struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn compression_follows_the_media_type() {
        use Compression::*;
        for (mt, want) in [
            ("application/vnd.oci.image.layer.v1.tar", Some(None)),
            ("application/vnd.oci.image.layer.v1.tar+gzip", Some(Gzip)),
            ("application/vnd.oci.image.layer.v1.tar+zstd", Some(Zstd)),
            (
                "application/vnd.docker.image.rootfs.diff.tar.gzip",
                Some(Gzip),
            ),
            (
                "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
                Some(Gzip),
            ),
            ("application/vnd.oci.image.config.v1+json", Option::None),
            ("application/octet-stream", Option::None),
        ] {
            assert_eq!(Compression::from_media_type(mt), want, "{mt}");
        }
    }

    fn roundtrip(c: Compression, data: &[u8]) -> Vec<u8> {
        let compressed = match c {
            Compression::None => data.to_vec(),
            Compression::Gzip => {
                let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                e.write_all(data).unwrap();
                e.finish().unwrap()
            }
            Compression::Zstd => zstd::encode_all(data, 1).unwrap(),
        };
        let mut src: &[u8] = &compressed;
        let mut out = Vec::new();
        c.decoder(&mut src).unwrap().read_to_end(&mut out).unwrap();
        out
    }

    #[test]
    fn decoders_restore_the_bytes() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        for c in [Compression::None, Compression::Gzip, Compression::Zstd] {
            assert_eq!(roundtrip(c, &data), data, "{c:?}");
        }
    }

    #[test]
    fn corrupt_gzip_is_an_error_not_a_panic() {
        let mut src: &[u8] = b"\x1f\x8b\x08\x00garbage";
        let mut out = Vec::new();
        assert!(
            Compression::Gzip
                .decoder(&mut src)
                .unwrap()
                .read_to_end(&mut out)
                .is_err()
        );
    }

    #[test]
    fn channel_reader_needs_the_end_marker() {
        let (tx, rx) = mpsc::channel(4);
        tx.try_send(Ok(Bytes::from_static(b"abc"))).unwrap();
        tx.try_send(Ok(Bytes::new())).unwrap();
        let mut r = ChannelReader {
            rx,
            current: Bytes::new(),
            ended: false,
            copy: None,
        };
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        assert_eq!(out, b"abc");

        let (tx, rx) = mpsc::channel(4);
        tx.try_send(Ok(Bytes::from_static(b"abc"))).unwrap();
        drop(tx);
        let mut r = ChannelReader {
            rx,
            current: Bytes::new(),
            ended: false,
            copy: None,
        };
        let e = r.read_to_end(&mut Vec::new()).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
    }

    use super::super::client::{ClientConfig, sha256_digest};
    use super::super::testutil::{Req, Resp, serve};
    use std::collections::HashMap;

    fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, data) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_entry_type(tar::EntryType::Regular);
            b.append_data(&mut h, path, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn plain_unpacker() -> Arc<dyn LayerUnpacker> {
        Arc::new(
            |r: &mut dyn Read,
             dest: &Path|
             -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
                tar::Archive::new(r).unpack(dest)?;
                Ok(())
            },
        )
    }

    /// A registry serving one image `app:1` whose layers are given as
    /// (media type, bytes served, digest claimed, diff_id claimed).
    async fn registry_with(layers: Vec<(&'static str, Vec<u8>, String, String)>) -> String {
        let config = serde_json::json!({
            "architecture": "amd64", "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": layers.iter().map(|l| l.3.clone()).collect::<Vec<_>>()},
        })
        .to_string();
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "config": {"mediaType": "application/vnd.docker.container.image.v1+json",
                       "digest": sha256_digest(config.as_bytes()), "size": config.len()},
            "layers": layers.iter().map(|(mt, b, d, _)| serde_json::json!(
                {"mediaType": mt, "digest": d, "size": b.len()})).collect::<Vec<_>>(),
        })
        .to_string();
        let mut blobs: HashMap<String, Vec<u8>> = layers
            .into_iter()
            .map(|(_, b, d, _)| (format!("/v2/app/blobs/{d}"), b))
            .collect();
        blobs.insert(
            format!("/v2/app/blobs/{}", sha256_digest(config.as_bytes())),
            config.into_bytes(),
        );
        serve(move |r: &Req| match r.path.as_str() {
            "/v2/" => Resp::new(200, "{}"),
            "/v2/app/manifests/1" => Resp::new(200, manifest.clone()).header(
                "Content-Type",
                "application/vnd.docker.distribution.manifest.v2+json",
            ),
            p => match blobs.get(p) {
                Some(b) => Resp::new(200, b.clone()),
                None => Resp::new(404, ""),
            },
        })
        .await
    }

    #[tokio::test]
    async fn pulls_gzip_zstd_and_plain_layers() {
        let tars = [
            tar_of(&[("a", b"gzip")]),
            tar_of(&[("b", b"zstd")]),
            tar_of(&[("c", b"plain")]),
        ];
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tars[0]).unwrap();
        let gz = gz.finish().unwrap();
        let zs = zstd::encode_all(&tars[1][..], 1).unwrap();
        let layer = |mt, b: Vec<u8>, t: &[u8]| {
            let d = sha256_digest(&b);
            (mt, b, d, sha256_digest(t))
        };
        let addr = registry_with(vec![
            layer(
                "application/vnd.docker.image.rootfs.diff.tar.gzip",
                gz,
                &tars[0],
            ),
            layer("application/vnd.oci.image.layer.v1.tar+zstd", zs, &tars[1]),
            layer(
                "application/vnd.oci.image.layer.v1.tar",
                tars[2].clone(),
                &tars[2],
            ),
        ])
        .await;
        let root = tempfile::tempdir().unwrap();
        let store = Store::open(root.path()).unwrap().without_sync();
        let client = RegistryClient::new(ClientConfig::default()).unwrap();
        let r = Reference::parse(&format!("{addr}/app:1")).unwrap();
        let p = pull(
            &client,
            &store,
            &r,
            &Platform::host(),
            plain_unpacker(),
            &NoProgress,
        )
        .await
        .unwrap();
        let got: Vec<Vec<u8>> = ["a", "b", "c"]
            .iter()
            .zip(&p.layers)
            .map(|(f, l)| std::fs::read(l.join(f)).unwrap())
            .collect();
        assert_eq!(got, [b"gzip".to_vec(), b"zstd".to_vec(), b"plain".to_vec()]);
    }

    #[tokio::test]
    async fn wrong_layer_bytes_or_diff_id_commit_nothing() {
        let t = tar_of(&[("a", b"real")]);
        let claimed = sha256_digest(b"something else");
        let addr = registry_with(vec![(
            "application/vnd.oci.image.layer.v1.tar",
            t.clone(),
            claimed.clone(),
            sha256_digest(&t),
        )])
        .await;
        let root = tempfile::tempdir().unwrap();
        let store = Store::open(root.path()).unwrap().without_sync();
        let client = RegistryClient::new(ClientConfig::default()).unwrap();
        let r = Reference::parse(&format!("{addr}/app:1")).unwrap();
        let e = pull(
            &client,
            &store,
            &r,
            &Platform::host(),
            plain_unpacker(),
            &NoProgress,
        )
        .await
        .unwrap_err();
        assert!(
            matches!(
                &e,
                PullError::Download {
                    source: ClientError::DigestMismatch { .. },
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains(&claimed), "{e}");
        assert!(!store.has_layer(&claimed));
        assert_eq!(
            std::fs::read_dir(root.path().join("tmp")).unwrap().count(),
            0
        );
        assert_eq!(
            std::fs::read_dir(root.path().join("layers"))
                .unwrap()
                .count(),
            0
        );

        // Right blob digest, wrong diff_id in the config.
        let addr = registry_with(vec![(
            "application/vnd.oci.image.layer.v1.tar",
            t.clone(),
            sha256_digest(&t),
            claimed.clone(),
        )])
        .await;
        let r = Reference::parse(&format!("{addr}/app:1")).unwrap();
        let e = pull(
            &client,
            &store,
            &r,
            &Platform::host(),
            plain_unpacker(),
            &NoProgress,
        )
        .await
        .unwrap_err();
        assert!(matches!(e, PullError::DiffIdMismatch { .. }), "{e}");
        assert_eq!(
            std::fs::read_dir(root.path().join("tmp")).unwrap().count(),
            0
        );
        assert!(!store.has_layer(&sha256_digest(&t)));
    }

    #[tokio::test]
    async fn unknown_layer_media_types_are_refused() {
        let t = tar_of(&[("a", b"x")]);
        let addr = registry_with(vec![(
            "application/x-weird",
            t.clone(),
            sha256_digest(&t),
            sha256_digest(&t),
        )])
        .await;
        let root = tempfile::tempdir().unwrap();
        let store = Store::open(root.path()).unwrap().without_sync();
        let client = RegistryClient::new(ClientConfig::default()).unwrap();
        let r = Reference::parse(&format!("{addr}/app:1")).unwrap();
        let e = pull(
            &client,
            &store,
            &r,
            &Platform::host(),
            plain_unpacker(),
            &NoProgress,
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("application/x-weird") && e.contains(&sha256_digest(&t)),
            "{e}"
        );
    }
}
