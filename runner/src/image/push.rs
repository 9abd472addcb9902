//! Pushing a local image to a registry: for each layer (then the config), a
//! `HEAD` on the target repository skips blobs it already has; the others
//! are uploaded monolithically (`POST` for a session, then one `PUT` with
//! the digest and the blob streamed from the store, never held in memory);
//! the manifest is `PUT` last, under the tag, exactly as stored, so its
//! digest is the one the image was pulled or committed with.
//!
//! Calls `client` (auth with the `pull,push` scope of the target) and
//! `store`; called by the daemon's `push`.

use std::io;

use futures::StreamExt;
use oci_spec::image::ImageManifest;
use reqwest::StatusCode;
use reqwest::header::{CONTENT_LENGTH, CONTENT_TYPE, LOCATION};
use tokio::io::AsyncReadExt;

use super::client::{ClientError, RegistryClient, read_limited, sha256_digest};
use super::reference::Reference;
use super::store::{Store, StoreError};

/// Bytes read from a blob file per chunk of the upload body.
const CHUNK: usize = 256 << 10;
/// Error bodies are read up to this size to name the registry's reason.
const MAX_ERROR_BODY: usize = 64 << 10;

#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("{0}")]
    Store(#[from] StoreError),
    /// The registry refused (denied, unauthorized, ...): docker's
    /// `code: message` line from its error body.
    #[error("{0}")]
    Refused(String),
    #[error("{host} answered {status} to {what}{detail}")]
    Status {
        host: String,
        status: u16,
        what: String,
        detail: String,
    },
    #[error("image manifest {digest} is unreadable: {detail}")]
    BadManifest { digest: String, detail: String },
    #[error(
        "layer {0} was pulled before wharf-runner kept compressed layers and is not in the target repository; pull the image again to push it"
    )]
    MissingLayerBlob(String),
}

/// What a push reports as it goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushEvent<'a> {
    /// The layer is queued.
    Preparing { digest: &'a str },
    /// The registry already has it.
    Exists { digest: &'a str },
    /// Uploaded and accepted.
    Pushed { digest: &'a str },
}

/// The manifest as sent: its digest and size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pushed {
    pub digest: String,
    pub size: usize,
}

/// Pushes the stored manifest `manifest_digest` (an image manifest, not
/// an index) with its config and layers to `target` (repository + tag).
pub async fn push(
    client: &RegistryClient,
    store: &Store,
    target: &Reference,
    manifest_digest: &str,
    progress: &(dyn Fn(PushEvent<'_>) + Sync),
) -> Result<Pushed, PushError> {
    let bytes = store.read_blob(manifest_digest)?;
    let bad = |detail: String| PushError::BadManifest {
        digest: manifest_digest.to_string(),
        detail,
    };
    let manifest: ImageManifest = serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
    let media_type = manifest
        .media_type()
        .as_ref()
        .map(|m| m.to_string())
        .unwrap_or_else(|| super::client::OCI_MANIFEST.to_string());
    let scope = format!("repository:{}:pull,push", target.repository());
    // Each distinct layer once, bottom first.
    let mut layers: Vec<(String, u64)> = Vec::new();
    for l in manifest.layers() {
        let d = l.digest().to_string();
        if !layers.iter().any(|(x, _)| *x == d) {
            layers.push((d, l.size()));
        }
    }
    for (d, _) in &layers {
        progress(PushEvent::Preparing { digest: d });
    }
    for (d, size) in &layers {
        if blob_exists(client, target, &scope, d).await? {
            progress(PushEvent::Exists { digest: d });
            continue;
        }
        if !store.has_blob(d) {
            return Err(PushError::MissingLayerBlob(d.clone()));
        }
        upload(client, store, target, &scope, d, *size).await?;
        progress(PushEvent::Pushed { digest: d });
    }
    let config = manifest.config().digest().to_string();
    if !blob_exists(client, target, &scope, &config).await? {
        let size = manifest.config().size();
        upload(client, store, target, &scope, &config, size).await?;
    }
    let tag = target.manifest_reference().to_string();
    let url = format!(
        "{}/v2/{}/manifests/{tag}",
        client.registry_url(target),
        target.repository()
    );
    let body = bytes.clone();
    let resp = client
        .send_scoped(target, &scope, |http| {
            Ok(http
                .put(&url)
                .header(CONTENT_TYPE, media_type.as_str())
                .body(body.clone()))
        })
        .await?;
    expect(
        resp,
        target,
        &format!("the manifest {tag}"),
        StatusCode::CREATED,
    )
    .await?;
    Ok(Pushed {
        digest: sha256_digest(&bytes),
        size: bytes.len(),
    })
}

async fn blob_exists(
    client: &RegistryClient,
    r: &Reference,
    scope: &str,
    digest: &str,
) -> Result<bool, PushError> {
    let url = format!(
        "{}/v2/{}/blobs/{digest}",
        client.registry_url(r),
        r.repository()
    );
    let resp = client
        .send_scoped(r, scope, |http| Ok(http.head(&url)))
        .await?;
    match resp.status() {
        s if s.is_success() => Ok(true),
        StatusCode::NOT_FOUND => Ok(false),
        _ => Err(refusal(resp, r, &format!("HEAD blob {digest}")).await),
    }
}

/// `POST` an upload session, then `PUT` the whole blob with its digest.
async fn upload(
    client: &RegistryClient,
    store: &Store,
    r: &Reference,
    scope: &str,
    digest: &str,
    size: u64,
) -> Result<(), PushError> {
    let base = client.registry_url(r);
    let start = format!("{base}/v2/{}/blobs/uploads/", r.repository());
    let resp = client
        .send_scoped(r, scope, |http| {
            Ok(http.post(&start).header(CONTENT_LENGTH, "0"))
        })
        .await?;
    if resp.status() != StatusCode::ACCEPTED {
        return Err(refusal(resp, r, &format!("starting the upload of {digest}")).await);
    }
    let location = resp
        .headers()
        .get(LOCATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| PushError::Status {
            host: r.registry_host().to_string(),
            status: 202,
            what: format!("starting the upload of {digest}"),
            detail: " without a Location header".into(),
        })?
        .to_string();
    let mut url = reqwest::Url::parse(&base)
        .and_then(|b| b.join(&location))
        .map_err(|e| PushError::Status {
            host: r.registry_host().to_string(),
            status: 202,
            what: format!("starting the upload of {digest}"),
            detail: format!(" with a bad Location {location:?}: {e}"),
        })?;
    url.query_pairs_mut().append_pair("digest", digest);
    let (_, len) = store.open_blob(digest)?;
    if size > 0 && len != size {
        return Err(PushError::Store(StoreError::DigestMismatch {
            digest: digest.to_string(),
            actual: format!("a file of {len} bytes, not {size}"),
        }));
    }
    let resp = client
        .send_scoped(r, scope, |http| {
            let (file, len) = store
                .open_blob(digest)
                .map_err(|e| ClientError::Setup(format!("reading the local blob {digest}: {e}")))?;
            let stream = blob_body(file);
            Ok(http
                .put(url.clone())
                .header(CONTENT_TYPE, "application/octet-stream")
                .header(CONTENT_LENGTH, len)
                .body(reqwest::Body::wrap_stream(stream)))
        })
        .await?;
    expect(
        resp,
        r,
        &format!("the upload of {digest}"),
        StatusCode::CREATED,
    )
    .await
}

/// The blob file as a stream of chunks.
fn blob_body(file: std::fs::File) -> impl futures::Stream<Item = io::Result<Vec<u8>>> + Send {
    let file = tokio::fs::File::from_std(file);
    futures::stream::unfold(file, |mut f| async move {
        let mut buf = vec![0u8; CHUNK];
        match f.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(buf), f))
            }
            Err(e) => Some((Err(e), f)),
        }
    })
    .boxed()
}

async fn expect(
    resp: reqwest::Response,
    r: &Reference,
    what: &str,
    want: StatusCode,
) -> Result<(), PushError> {
    if resp.status() == want {
        return Ok(());
    }
    Err(refusal(resp, r, what).await)
}

/// docker's line for a refused request: `code: message` from the
/// registry's error body (`denied: requested access to the resource is
/// denied`), or the bare status.
async fn refusal(resp: reqwest::Response, r: &Reference, what: &str) -> PushError {
    let status = resp.status();
    let body = read_limited(resp, MAX_ERROR_BODY).await.unwrap_or_default();
    #[derive(serde::Deserialize)]
    struct Body {
        errors: Vec<Item>,
    }
    #[derive(serde::Deserialize)]
    struct Item {
        code: String,
        #[serde(default)]
        message: String,
    }
    let first = serde_json::from_slice::<Body>(&body)
        .ok()
        .and_then(|b| b.errors.into_iter().next());
    match (status, first) {
        (StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN, Some(e)) => {
            PushError::Refused(format!("{}: {}", e.code.to_ascii_lowercase(), e.message))
        }
        (StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN, None) => {
            PushError::Refused("denied: requested access to the resource is denied".into())
        }
        (s, Some(e)) => PushError::Status {
            host: r.registry_host().to_string(),
            status: s.as_u16(),
            what: what.to_string(),
            detail: format!(": {}: {}", e.code.to_ascii_lowercase(), e.message),
        },
        (s, None) => PushError::Status {
            host: r.registry_host().to_string(),
            status: s.as_u16(),
            what: what.to_string(),
            detail: String::new(),
        },
    }
}
