//! An async client for the OCI distribution API: the pull side (manifests,
//! with platform selection from an index, and blob streams) and, for
//! `push`, authenticated requests of any method with a given scope
//! ([`RegistryClient::send_scoped`]); anonymous, Basic and Bearer-token
//! auth (the `WWW-Authenticate` flow).
//!
//! Called by `pull`; calls only `reference` and the network (reqwest over
//! rustls with the ring provider).
//!
//! Hand-written rather than `oci-client`: that crate buffers whole blobs or
//! hands out streams without verification, picks its own TLS provider, and
//! its errors do not distinguish the cases a user must act on (wrong
//! password, unreachable host, missing image); the part needed here is small.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use reqwest::StatusCode;
use reqwest::header::{ACCEPT, CONTENT_TYPE, HeaderMap, WWW_AUTHENTICATE};
use sha2::{Digest as _, Sha256};

use super::Platform;
use super::reference::{Reference, is_loopback_host, validate_digest};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Manifests are small; a bigger answer is refused rather than buffered.
pub const MAX_MANIFEST_SIZE: usize = 4 << 20;
/// A token answer is a few KiB; this bounds what a hostile realm can send.
const MAX_TOKEN_RESPONSE: usize = 1 << 20;

/// Everything that can go wrong talking to a registry. Messages name the
/// host, reference or digest at fault.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("registry {host} unreachable: {detail}")]
    Unreachable { host: String, detail: String },
    #[error("wrong username or password for {host}")]
    WrongCredentials { host: String },
    #[error("{host} requires authentication and no credentials are stored for it (log in first)")]
    AuthRequired { host: String },
    #[error("access to {reference} denied by the registry")]
    Denied { reference: String },
    #[error("image not found: {reference}")]
    NotFound { reference: String },
    #[error("blob {digest} not found in {repository}")]
    BlobNotFound { repository: String, digest: String },
    #[error("digest mismatch for {expected}: the content hashes to {actual}")]
    DigestMismatch { expected: String, actual: String },
    #[error("blob {digest} is larger than the {size} bytes its descriptor states")]
    BlobTooLarge { digest: String, size: u64 },
    #[error("blob {digest} ended after {got} of the {size} bytes its descriptor states")]
    BlobTruncated { digest: String, size: u64, got: u64 },
    #[error("manifest of {reference} is larger than {MAX_MANIFEST_SIZE} bytes")]
    ManifestTooLarge { reference: String },
    #[error("manifest of {reference}: unsupported media type {media_type:?}")]
    UnsupportedMediaType {
        reference: String,
        media_type: String,
    },
    #[error("manifest of {reference} is invalid: {detail}")]
    BadManifest { reference: String, detail: String },
    #[error("no image for platform {platform} in {reference} (it has: {available})")]
    NoMatchingPlatform {
        reference: String,
        platform: String,
        available: String,
    },
    #[error("{host} sent an unusable auth challenge: {detail}")]
    BadChallenge { host: String, detail: String },
    #[error("getting a token for {host} from {realm}: {detail}")]
    Token {
        host: String,
        realm: String,
        detail: String,
    },
    #[error("{host} answered {status} for {what}")]
    Status {
        host: String,
        status: u16,
        what: String,
    },
    #[error("reading {what} from {host}: {detail}")]
    Transfer {
        host: String,
        what: String,
        detail: String,
    },
    #[error("building the HTTP client: {0}")]
    Setup(String),
}

/// A username and password for one registry.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// How the client is set up: which registries speak plain HTTP besides the
/// loopback ones, and the credentials per registry (keyed by the registry as
/// written in references, e.g. `docker.io`, `localhost:5000`).
#[derive(Debug, Clone, Default)]
pub struct ClientConfig {
    pub insecure_registries: Vec<String>,
    pub credentials: HashMap<String, Credentials>,
    pub user_agent: Option<String>,
    /// Directories laid out as docker's `/etc/docker/certs.d`: every `*.crt`
    /// in `<dir>/<host[:port]>/` is a CA trusted for that registry only,
    /// besides the system's roots.
    pub ca_dirs: Vec<std::path::PathBuf>,
}

/// docker's directory of per-registry CAs, which the runner reads too.
pub const DOCKER_CERTS_D: &str = "/etc/docker/certs.d";

/// One parsed `WWW-Authenticate` challenge that the client can answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
}

/// What a registry host wants, learnt from `GET /v2/`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum HostAuth {
    Anonymous,
    Challenged(Challenge),
}

/// The registry client. Cheap to share behind an `Arc`; it caches each
/// host's auth scheme and bearer tokens per scope.
pub struct RegistryClient {
    http: reqwest::Client,
    config: ClientConfig,
    hosts: Mutex<HashMap<String, HostAuth>>,
    tokens: Mutex<HashMap<(String, String), String>>,
    /// Per registry host: the client that trusts its `certs.d` CAs (the
    /// plain one when it has none).
    host_clients: Mutex<HashMap<String, reqwest::Client>>,
}

/// A stream of blob bytes.
pub type BlobStream = Pin<Box<dyn Stream<Item = Result<Bytes, ClientError>> + Send>>;

impl RegistryClient {
    pub fn new(config: ClientConfig) -> Result<Self, ClientError> {
        install_crypto_provider();
        let http = build_http(&config, Vec::new())?;
        Ok(Self {
            http,
            config,
            hosts: Mutex::new(HashMap::new()),
            tokens: Mutex::new(HashMap::new()),
            host_clients: Mutex::new(HashMap::new()),
        })
    }

    /// The HTTP client for a registry host: one that also trusts the CAs in
    /// `<ca dir>/<host>/*.crt` when there are any (docker's `certs.d`
    /// rule: a CA placed for one registry is trusted for that one only).
    fn http_for(&self, host: &str) -> Result<reqwest::Client, ClientError> {
        if let Some(c) = lock(&self.host_clients).get(host) {
            return Ok(c.clone());
        }
        let cas = registry_cas(&self.config.ca_dirs, host)?;
        let client = if cas.is_empty() {
            self.http.clone()
        } else {
            build_http(&self.config, cas)?
        };
        lock(&self.host_clients).insert(host.to_string(), client.clone());
        Ok(client)
    }

    fn base_url(&self, r: &Reference) -> String {
        let plain = r.plain_http()
            || self
                .config
                .insecure_registries
                .iter()
                .any(|i| i == r.registry() || i == r.registry_host())
            || is_loopback_host(r.registry_host());
        let scheme = if plain { "http" } else { "https" };
        format!("{scheme}://{}", r.registry_host())
    }

    fn credentials(&self, r: &Reference) -> Option<&Credentials> {
        self.config
            .credentials
            .get(r.registry())
            .or_else(|| self.config.credentials.get(r.registry_host()))
    }

    /// `GET /v2/` once per host: learns whether the host is open, wants
    /// Basic, or wants a bearer token, and fails early (naming the host)
    /// when it cannot be reached.
    async fn host_auth(&self, r: &Reference) -> Result<HostAuth, ClientError> {
        let host = r.registry_host().to_string();
        if let Some(a) = lock(&self.hosts).get(&host) {
            return Ok(a.clone());
        }
        let url = format!("{}/v2/", self.base_url(r));
        let resp = self
            .http_for(&host)?
            .get(&url)
            .send()
            .await
            .map_err(|e| unreachable_err(&host, &e))?;
        let auth = match resp.status() {
            StatusCode::UNAUTHORIZED => HostAuth::Challenged(
                challenge_from(resp.headers()).ok_or_else(|| no_challenge(&host))?,
            ),
            // Some registries answer 404 here; auth is then learnt per request.
            _ => HostAuth::Anonymous,
        };
        lock(&self.hosts).insert(host, auth.clone());
        Ok(auth)
    }

    /// Sends a GET for `path` on the reference's registry with auth, and on
    /// a 401 answers the challenge in the response and retries once.
    async fn get(
        &self,
        r: &Reference,
        path: &str,
        accept: Option<&str>,
    ) -> Result<reqwest::Response, ClientError> {
        let host = r.registry_host().to_string();
        let url = format!("{}{}", self.base_url(r), path);
        let default_scope = format!("repository:{}:pull", r.repository());
        let mut auth = self.host_auth(r).await?;
        let creds = self.credentials(r);
        let mut retried = false;
        let http = self.http_for(&host)?;
        loop {
            let mut req = http.get(&url);
            if let Some(a) = accept {
                req = req.header(ACCEPT, a);
            }
            match &auth {
                HostAuth::Anonymous => {}
                HostAuth::Challenged(Challenge::Basic) => {
                    let c =
                        creds.ok_or_else(|| ClientError::AuthRequired { host: host.clone() })?;
                    req = req.basic_auth(&c.username, Some(&c.password));
                }
                HostAuth::Challenged(Challenge::Bearer {
                    realm,
                    service,
                    scope,
                }) => {
                    let scope = scope.as_deref().unwrap_or(&default_scope);
                    let token = self
                        .token(r, realm, service.as_deref(), scope, retried)
                        .await?;
                    req = req.bearer_auth(token);
                }
            }
            let resp = req.send().await.map_err(|e| unreachable_err(&host, &e))?;
            if resp.status() != StatusCode::UNAUTHORIZED {
                return Ok(resp);
            }
            if retried {
                return Err(refused(&host, creds));
            }
            retried = true;
            if let Some(ch) = challenge_from(resp.headers()) {
                auth = HostAuth::Challenged(ch);
                lock(&self.hosts).insert(host.clone(), auth.clone());
            } else if auth == HostAuth::Anonymous {
                return Err(no_challenge(&host));
            }
        }
    }

    /// The registry's base URL (`http(s)://host[:port]`) for `r`.
    pub fn registry_url(&self, r: &Reference) -> String {
        self.base_url(r)
    }

    /// Sends the request `build` makes (called again for the retry, so a
    /// streamed body can be reopened) with auth for `scope` (e.g.
    /// `repository:team/app:pull,push`), answering one 401 challenge.
    /// Used by `push`; the status is the caller's to judge.
    pub async fn send_scoped<F>(
        &self,
        r: &Reference,
        scope: &str,
        build: F,
    ) -> Result<reqwest::Response, ClientError>
    where
        F: Fn(&reqwest::Client) -> Result<reqwest::RequestBuilder, ClientError>,
    {
        let host = r.registry_host().to_string();
        let mut auth = self.host_auth(r).await?;
        let creds = self.credentials(r);
        let mut retried = false;
        let http = self.http_for(&host)?;
        loop {
            let mut req = build(&http)?;
            match &auth {
                HostAuth::Anonymous => {}
                HostAuth::Challenged(Challenge::Basic) => {
                    let c =
                        creds.ok_or_else(|| ClientError::AuthRequired { host: host.clone() })?;
                    req = req.basic_auth(&c.username, Some(&c.password));
                }
                HostAuth::Challenged(Challenge::Bearer { realm, service, .. }) => {
                    let token = self
                        .token(r, realm, service.as_deref(), scope, retried)
                        .await?;
                    req = req.bearer_auth(token);
                }
            }
            let resp = req.send().await.map_err(|e| unreachable_err(&host, &e))?;
            if resp.status() != StatusCode::UNAUTHORIZED {
                return Ok(resp);
            }
            if retried {
                return Err(refused(&host, creds));
            }
            retried = true;
            if let Some(ch) = challenge_from(resp.headers()) {
                auth = HostAuth::Challenged(ch);
                lock(&self.hosts).insert(host.clone(), auth.clone());
            } else if auth == HostAuth::Anonymous {
                return Err(no_challenge(&host));
            }
        }
    }

    /// A bearer token for the challenge's scope (or the pull scope of the
    /// reference), from the cache unless `fresh`.
    async fn token(
        &self,
        r: &Reference,
        realm: &str,
        service: Option<&str>,
        scope: &str,
        fresh: bool,
    ) -> Result<String, ClientError> {
        let host = r.registry_host().to_string();
        let key = (host.clone(), scope.to_string());
        if !fresh && let Some(t) = lock(&self.tokens).get(&key) {
            return Ok(t.clone());
        }
        let token = self
            .request_token(&host, realm, service, Some(scope), self.credentials(r))
            .await?;
        lock(&self.tokens).insert(key, token.clone());
        Ok(token)
    }

    /// Asks the token realm for a token, with Basic credentials when given
    /// (`scope` None: a login check, no repository access asked for).
    async fn request_token(
        &self,
        host: &str,
        realm: &str,
        service: Option<&str>,
        scope: Option<&str>,
        creds: Option<&Credentials>,
    ) -> Result<String, ClientError> {
        let token_err = |detail: String| ClientError::Token {
            host: host.to_string(),
            realm: realm.to_string(),
            detail,
        };
        if !(realm.starts_with("https://") || realm.starts_with("http://")) {
            return Err(ClientError::BadChallenge {
                host: host.to_string(),
                detail: format!("realm {realm:?} is not an http(s) URL"),
            });
        }
        let mut url = reqwest::Url::parse(realm).map_err(|e| ClientError::BadChallenge {
            host: host.to_string(),
            detail: format!("realm {realm:?}: {e}"),
        })?;
        {
            let mut q = url.query_pairs_mut();
            if let Some(s) = service {
                q.append_pair("service", s);
            }
            if let Some(scope) = scope {
                q.append_pair("scope", scope);
            }
        }
        let mut req = self.http_for(host)?.get(url);
        if let Some(c) = creds {
            req = req.basic_auth(&c.username, Some(&c.password));
        }
        let resp = req.send().await.map_err(|e| token_err(error_chain(&e)))?;
        let status = resp.status();
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            return Err(refused(host, creds));
        }
        if !status.is_success() {
            return Err(token_err(format!("status {status}")));
        }
        let body = read_limited(resp, MAX_TOKEN_RESPONSE)
            .await
            .map_err(|e| token_err(e.unwrap_or_else(|| "answer too large".into())))?;
        #[derive(serde::Deserialize)]
        struct TokenAnswer {
            token: Option<String>,
            access_token: Option<String>,
        }
        let ans: TokenAnswer =
            serde_json::from_slice(&body).map_err(|e| token_err(format!("bad JSON: {e}")))?;
        let token = ans
            .token
            .or(ans.access_token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| token_err("answer has no token".into()))?;
        Ok(token)
    }

    /// Checks credentials against a registry the way `docker login` does:
    /// `GET /v2/`, and when it answers 401, the challenge it names (Basic:
    /// the same request with the credentials; Bearer: a token from the
    /// realm with the credentials, then `GET /v2/` with it). `registry` is
    /// `host[:port]` as written in references. Nothing is cached.
    pub async fn check_auth(&self, registry: &str, creds: &Credentials) -> Result<(), ClientError> {
        let probe = Reference::parse_with_default(&format!("{registry}/login-check"), registry)
            .map_err(|e| ClientError::Setup(e.to_string()))?;
        let host = probe.registry_host().to_string();
        let url = format!("{}/v2/", self.base_url(&probe));
        let http = self.http_for(&host)?;
        let resp = http
            .get(&url)
            .send()
            .await
            .map_err(|e| unreachable_err(&host, &e))?;
        let status = resp.status();
        if status != StatusCode::UNAUTHORIZED {
            // An open registry accepts any credentials, as docker sees it.
            return if status.is_success() {
                Ok(())
            } else {
                Err(ClientError::Status {
                    host,
                    status: status.as_u16(),
                    what: "/v2/".into(),
                })
            };
        }
        let challenge = challenge_from(resp.headers()).ok_or_else(|| no_challenge(&host))?;
        let req = http.get(&url);
        let req = match challenge {
            Challenge::Basic => req.basic_auth(&creds.username, Some(&creds.password)),
            Challenge::Bearer {
                realm,
                service,
                scope,
            } => {
                let token = self
                    .request_token(
                        &host,
                        &realm,
                        service.as_deref(),
                        scope.as_deref(),
                        Some(creds),
                    )
                    .await?;
                req.bearer_auth(token)
            }
        };
        let resp = req.send().await.map_err(|e| unreachable_err(&host, &e))?;
        match resp.status() {
            s if s.is_success() => Ok(()),
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                Err(ClientError::WrongCredentials { host })
            }
            s => Err(ClientError::Status {
                host,
                status: s.as_u16(),
                what: "/v2/".into(),
            }),
        }
    }

    /// Fetches the manifest (or index) for the reference. Returns its bytes,
    /// media type and digest; when the reference pins a digest the bytes
    /// must hash to it.
    pub async fn get_manifest(&self, r: &Reference) -> Result<Manifest, ClientError> {
        let host = r.registry_host().to_string();
        let path = format!(
            "/v2/{}/manifests/{}",
            r.repository(),
            r.manifest_reference()
        );
        let accept = [OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST].join(", ");
        let resp = self.get(r, &path, Some(&accept)).await?;
        let what = format!("manifest {r}");
        fetch_status(resp.status(), r, &host, &what, || ClientError::NotFound {
            reference: r.to_string(),
        })?;
        let header_type = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or("").trim().to_string());
        let bytes = read_limited(resp, MAX_MANIFEST_SIZE)
            .await
            .map_err(|e| match e {
                None => ClientError::ManifestTooLarge {
                    reference: r.to_string(),
                },
                Some(detail) => ClientError::Transfer {
                    host: host.clone(),
                    what,
                    detail,
                },
            })?;
        let digest = sha256_digest(&bytes);
        if let Some(want) = r.digest()
            && want != digest
        {
            return Err(ClientError::DigestMismatch {
                expected: want.to_string(),
                actual: digest,
            });
        }
        // The body's own mediaType wins over a generic Content-Type.
        #[derive(serde::Deserialize)]
        struct Probe {
            #[serde(rename = "mediaType")]
            media_type: Option<String>,
        }
        let body_type = serde_json::from_slice::<Probe>(&bytes)
            .map_err(|e| ClientError::BadManifest {
                reference: r.to_string(),
                detail: e.to_string(),
            })?
            .media_type;
        let media_type = body_type
            .or(header_type)
            .unwrap_or_else(|| OCI_MANIFEST.to_string());
        if ![OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST].contains(&media_type.as_str()) {
            return Err(ClientError::UnsupportedMediaType {
                reference: r.to_string(),
                media_type,
            });
        }
        Ok(Manifest {
            bytes,
            media_type,
            digest,
        })
    }

    /// Streams a blob's bytes as they arrive (not verified: wrap it with
    /// [`verify_stream`], which also bounds the size).
    pub async fn blob_stream(
        &self,
        r: &Reference,
        digest: &str,
    ) -> Result<BlobStream, ClientError> {
        validate_digest(digest).map_err(|detail| ClientError::BadManifest {
            reference: r.to_string(),
            detail,
        })?;
        let host = r.registry_host().to_string();
        let path = format!("/v2/{}/blobs/{digest}", r.repository());
        let resp = self.get(r, &path, None).await?;
        let what = format!("blob {digest}");
        fetch_status(resp.status(), r, &host, &what, || {
            ClientError::BlobNotFound {
                repository: r.repository().to_string(),
                digest: digest.to_string(),
            }
        })?;
        Ok(Box::pin(resp.bytes_stream().map(move |c| {
            c.map_err(|e| ClientError::Transfer {
                host: host.clone(),
                what: what.clone(),
                detail: error_chain(&e),
            })
        })))
    }

    /// Fetches a small blob (a config) whole, verified, at most `max` bytes.
    pub async fn get_blob(
        &self,
        r: &Reference,
        digest: &str,
        max: usize,
    ) -> Result<Vec<u8>, ClientError> {
        let mut s = verify_stream(self.blob_stream(r, digest).await?, digest, None);
        let mut out = Vec::new();
        while let Some(chunk) = s.next().await {
            let chunk = chunk?;
            if out.len() + chunk.len() > max {
                return Err(ClientError::BlobTooLarge {
                    digest: digest.to_string(),
                    size: max as u64,
                });
            }
            out.extend_from_slice(&chunk);
        }
        Ok(out)
    }
}

/// A fetched manifest or index.
#[derive(Debug, Clone)]
pub struct Manifest {
    pub bytes: Vec<u8>,
    pub media_type: String,
    pub digest: String,
}

impl Manifest {
    pub fn is_index(&self) -> bool {
        self.media_type == OCI_INDEX || self.media_type == DOCKER_LIST
    }
}

/// Picks the manifest for `platform` from an OCI index or a Docker manifest
/// list (the same JSON shape). Entries without a platform are skipped. When
/// the wanted variant is set, an exact variant match wins, then an entry
/// without a variant, then any entry of the right os/arch.
pub fn pick_platform(
    reference: &Reference,
    index: &[u8],
    platform: &Platform,
) -> Result<oci_spec::image::Descriptor, ClientError> {
    let index: oci_spec::image::ImageIndex =
        serde_json::from_slice(index).map_err(|e| ClientError::BadManifest {
            reference: reference.to_string(),
            detail: e.to_string(),
        })?;
    let same_os_arch: Vec<&oci_spec::image::Descriptor> = index
        .manifests()
        .iter()
        .filter(|d| {
            d.platform().as_ref().is_some_and(|p| {
                p.os().to_string() == platform.os
                    && p.architecture().to_string() == platform.architecture
            })
        })
        .collect();
    let variant_of =
        |d: &oci_spec::image::Descriptor| d.platform().as_ref().and_then(|p| p.variant().clone());
    let chosen = match &platform.variant {
        Some(v) => same_os_arch
            .iter()
            .find(|d| variant_of(d).as_deref() == Some(v.as_str()))
            .or_else(|| same_os_arch.iter().find(|d| variant_of(d).is_none()))
            .or(same_os_arch.first()),
        None => same_os_arch
            .iter()
            .find(|d| variant_of(d).is_none())
            .or(same_os_arch.first()),
    };
    match chosen {
        Some(d) => Ok((*d).clone()),
        None => {
            let available: Vec<String> = index
                .manifests()
                .iter()
                .filter_map(|d| d.platform().as_ref())
                .map(|p| {
                    let mut s = format!("{}/{}", p.os(), p.architecture());
                    if let Some(v) = p.variant() {
                        s.push('/');
                        s.push_str(v);
                    }
                    s
                })
                .collect();
            Err(ClientError::NoMatchingPlatform {
                reference: reference.to_string(),
                platform: platform.to_string(),
                available: if available.is_empty() {
                    "none".into()
                } else {
                    available.join(", ")
                },
            })
        }
    }
}

/// Wraps a blob stream so that it hashes the bytes as they pass and fails at
/// the end when they do not match `digest` (or when more, or fewer, than
/// `size` bytes arrive). Nothing downstream may treat the content as valid
/// before this stream has ended without an error.
pub fn verify_stream(inner: BlobStream, digest: &str, size: Option<u64>) -> BlobStream {
    Box::pin(VerifyingStream {
        inner,
        hasher: Some(Sha256::new()),
        digest: digest.to_string(),
        size,
        seen: 0,
    })
}

struct VerifyingStream {
    inner: BlobStream,
    hasher: Option<Sha256>,
    digest: String,
    size: Option<u64>,
    seen: u64,
}

impl Stream for VerifyingStream {
    type Item = Result<Bytes, ClientError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        let Some(hasher) = this.hasher.as_mut() else {
            return Poll::Ready(None);
        };
        match this.inner.as_mut().poll_next(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(chunk))) => {
                this.seen += chunk.len() as u64;
                if let Some(size) = this.size
                    && this.seen > size
                {
                    this.hasher = None;
                    return Poll::Ready(Some(Err(ClientError::BlobTooLarge {
                        digest: this.digest.clone(),
                        size,
                    })));
                }
                hasher.update(&chunk);
                Poll::Ready(Some(Ok(chunk)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.hasher = None;
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => {
                let Some(hasher) = this.hasher.take() else {
                    return Poll::Ready(None);
                };
                if let Some(size) = this.size
                    && this.seen < size
                {
                    return Poll::Ready(Some(Err(ClientError::BlobTruncated {
                        digest: this.digest.clone(),
                        size,
                        got: this.seen,
                    })));
                }
                let actual = format!("sha256:{}", hex::encode(hasher.finalize()));
                if actual != this.digest {
                    return Poll::Ready(Some(Err(ClientError::DigestMismatch {
                        expected: this.digest.clone(),
                        actual,
                    })));
                }
                Poll::Ready(None)
            }
        }
    }
}

/// Installs rustls' ring provider as the process default (reqwest is built
/// with `rustls-no-provider`, so any `reqwest::Client` needs one). Safe to
/// call many times; a provider installed earlier by someone else is kept.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// `sha256:<hex>` of some bytes.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Reads a response body up to `max` bytes: `Err(None)` when larger,
/// `Err(Some(detail))` on a transfer error.
pub(crate) async fn read_limited(
    resp: reqwest::Response,
    max: usize,
) -> Result<Vec<u8>, Option<String>> {
    if resp.content_length().is_some_and(|l| l > max as u64) {
        return Err(None);
    }
    let mut out = Vec::new();
    let mut s = resp.bytes_stream();
    while let Some(chunk) = s.next().await {
        let chunk = chunk.map_err(|e| Some(error_chain(&e)))?;
        if out.len() + chunk.len() > max {
            return Err(None);
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// Locks one of the client's caches. A panic while it was held (poisoning)
/// cannot leave a cache entry half-written, so the data is used as is.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The error for a manifest or blob GET that did not succeed: `not_found()`
/// for a 404, [`ClientError::Denied`] for a 403, else the bare status
/// naming `what` was asked for.
fn fetch_status(
    status: StatusCode,
    r: &Reference,
    host: &str,
    what: &str,
    not_found: impl FnOnce() -> ClientError,
) -> Result<(), ClientError> {
    match status {
        s if s.is_success() => Ok(()),
        StatusCode::NOT_FOUND => Err(not_found()),
        StatusCode::FORBIDDEN => Err(ClientError::Denied {
            reference: r.to_string(),
        }),
        s => Err(ClientError::Status {
            host: host.to_string(),
            status: s.as_u16(),
            what: what.to_string(),
        }),
    }
}

/// A 401 that names no challenge the client can answer.
fn no_challenge(host: &str) -> ClientError {
    ClientError::BadChallenge {
        host: host.to_string(),
        detail: "401 without a Basic or Bearer WWW-Authenticate header".into(),
    }
}

/// Auth that was answered and still refused: the stored credentials are
/// wrong, or there were none to send.
fn refused(host: &str, creds: Option<&Credentials>) -> ClientError {
    match creds {
        Some(_) => ClientError::WrongCredentials {
            host: host.to_string(),
        },
        None => ClientError::AuthRequired {
            host: host.to_string(),
        },
    }
}

fn build_http(
    config: &ClientConfig,
    cas: Vec<reqwest::Certificate>,
) -> Result<reqwest::Client, ClientError> {
    let ua = config
        .user_agent
        .clone()
        .unwrap_or_else(|| format!("wharf-runner/{}", env!("CARGO_PKG_VERSION")));
    let mut b = reqwest::Client::builder()
        .tls_backend_rustls()
        .user_agent(ua)
        .connect_timeout(Duration::from_secs(15))
        .read_timeout(Duration::from_secs(60));
    if !cas.is_empty() {
        b = b.tls_certs_merge(cas);
    }
    b.build().map_err(|e| ClientError::Setup(error_chain(&e)))
}

/// The CA certificates placed for `host` (`host[:port]`) in the `certs.d`
/// style directories, in name order; a file that is there but is not PEM
/// certificates is an error naming it.
pub(crate) fn registry_cas(
    dirs: &[std::path::PathBuf],
    host: &str,
) -> Result<Vec<reqwest::Certificate>, ClientError> {
    let mut cas = Vec::new();
    // Hosts come from parsed references; still, never leave the directory.
    if host.is_empty() || host.starts_with('.') || host.contains(['/', '\\', '\0']) {
        return Ok(cas);
    }
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(dir.join(host)) else {
            continue;
        };
        let mut files: Vec<_> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "crt"))
            .collect();
        files.sort();
        for f in files {
            let bad = |detail: String| {
                ClientError::Setup(format!("CA certificate {}: {detail}", f.display()))
            };
            let pem = std::fs::read(&f).map_err(|e| bad(e.to_string()))?;
            let certs =
                reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| bad(error_chain(&e)))?;
            if certs.is_empty() {
                return Err(bad("no PEM certificate in the file".into()));
            }
            cas.extend(certs);
        }
    }
    Ok(cas)
}

fn unreachable_err(host: &str, e: &reqwest::Error) -> ClientError {
    ClientError::Unreachable {
        host: host.to_string(),
        detail: error_chain(e),
    }
}

/// reqwest's own message hides the cause ("error sending request"); the
/// chain has the useful part ("connection refused", a TLS error).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        src = c.source();
    }
    s
}

/// The challenge to answer among all `WWW-Authenticate` headers: Bearer
/// (with a realm) preferred over Basic.
fn challenge_from(headers: &HeaderMap) -> Option<Challenge> {
    let mut found = Vec::new();
    for v in headers.get_all(WWW_AUTHENTICATE) {
        if let Ok(s) = v.to_str() {
            found.extend(parse_challenges(s));
        }
    }
    let bearer = found.iter().find(|c| matches!(c, Challenge::Bearer { .. }));
    bearer
        .or_else(|| found.iter().find(|c| **c == Challenge::Basic))
        .cloned()
}

/// Parses a `WWW-Authenticate` value (RFC 7235: one or more challenges,
/// each a scheme and comma-separated `key=value` / `key="quoted"` params;
/// quoted values may hold commas and `\"`). Unknown schemes and Bearer
/// challenges without a realm are dropped. Hand-written: no maintained
/// crate parses this header for Bearer params (the `headers` crate only
/// knows Basic/Bearer credentials, not challenges).
pub fn parse_challenges(header: &str) -> Vec<Challenge> {
    let raw = parse_raw_challenges(header);
    raw.into_iter()
        .filter_map(|(scheme, params)| {
            let get = |k: &str| {
                params
                    .iter()
                    .find(|(pk, _)| pk.eq_ignore_ascii_case(k))
                    .map(|(_, v)| v.clone())
            };
            if scheme.eq_ignore_ascii_case("basic") {
                Some(Challenge::Basic)
            } else if scheme.eq_ignore_ascii_case("bearer") {
                Some(Challenge::Bearer {
                    realm: get("realm").filter(|r| !r.is_empty())?,
                    service: get("service"),
                    scope: get("scope").filter(|s| !s.is_empty()),
                })
            } else {
                None
            }
        })
        .collect()
}

type RawChallenge = (String, Vec<(String, String)>);

fn parse_raw_challenges(h: &str) -> Vec<RawChallenge> {
    let b = h.as_bytes();
    let mut i = 0;
    let mut out: Vec<RawChallenge> = Vec::new();
    let is_ws = |c: u8| c == b' ' || c == b'\t';
    let is_tok = |c: u8| !is_ws(c) && c != b',' && c != b'=' && c != b'"';
    let skip = |i: &mut usize, also_comma: bool| {
        while *i < b.len() && (is_ws(b[*i]) || (also_comma && b[*i] == b',')) {
            *i += 1;
        }
    };
    let token = |i: &mut usize| -> String {
        let s = *i;
        while *i < b.len() && is_tok(b[*i]) {
            *i += 1;
        }
        h[s..*i].to_string()
    };
    // Is a `key =` param next (as opposed to a new scheme)?
    let param_next = |mut j: usize| -> bool {
        while j < b.len() && (is_ws(b[j]) || b[j] == b',') {
            j += 1;
        }
        let s = j;
        while j < b.len() && is_tok(b[j]) {
            j += 1;
        }
        if j == s {
            return false;
        }
        while j < b.len() && is_ws(b[j]) {
            j += 1;
        }
        j < b.len() && b[j] == b'='
    };
    loop {
        skip(&mut i, true);
        if i >= b.len() {
            break;
        }
        let scheme = token(&mut i);
        if scheme.is_empty() {
            // Stray '=' or '"': skip one byte and resynchronise.
            i += 1;
            continue;
        }
        let mut params = Vec::new();
        while param_next(i) {
            skip(&mut i, true);
            let key = token(&mut i);
            skip(&mut i, false);
            i += 1; // '='
            skip(&mut i, false);
            let value = if i < b.len() && b[i] == b'"' {
                i += 1;
                let mut v = Vec::new();
                while i < b.len() && b[i] != b'"' {
                    if b[i] == b'\\' && i + 1 < b.len() {
                        i += 1;
                    }
                    v.push(b[i]);
                    i += 1;
                }
                i += 1; // closing quote (or past the end)
                String::from_utf8_lossy(&v).into_owned()
            } else {
                let s = i;
                while i < b.len() && b[i] != b',' && !is_ws(b[i]) {
                    i += 1;
                }
                h[s..i].to_string()
            };
            params.push((key, value));
        }
        out.push((scheme, params));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_docker_hub_bearer_challenge() {
        let h = r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull""#;
        assert_eq!(
            parse_challenges(h),
            vec![Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
                scope: Some("repository:library/busybox:pull".into()),
            }]
        );
    }

    #[test]
    fn parses_commas_in_quotes_spaces_case_and_escapes() {
        let h = r#"bearer  Realm = "http://h/t\"x" , scope="repository:a/b:pull,push",service=reg"#;
        assert_eq!(
            parse_challenges(h),
            vec![Challenge::Bearer {
                realm: "http://h/t\"x".into(),
                service: Some("reg".into()),
                scope: Some("repository:a/b:pull,push".into()),
            }]
        );
    }

    #[test]
    fn parses_several_challenges_and_drops_unusable_ones() {
        let h = r#"Basic realm="Registry Realm", Bearer realm="https://a/token", Negotiate, Bearer service="x""#;
        assert_eq!(
            parse_challenges(h),
            vec![
                Challenge::Basic,
                Challenge::Bearer {
                    realm: "https://a/token".into(),
                    service: None,
                    scope: None
                }
            ]
        );
        assert_eq!(parse_challenges("Basic"), vec![Challenge::Basic]);
        for junk in [
            "",
            ",,,",
            "=\"",
            "Bearer realm=\"unterminated",
            "\"\"\"",
            "Bearer =",
        ] {
            // Never panics; whatever it finds is well-formed.
            let _ = parse_challenges(junk);
        }
        assert_eq!(
            parse_challenges("Bearer realm=\"unterminated"),
            vec![Challenge::Bearer {
                realm: "unterminated".into(),
                service: None,
                scope: None
            }]
        );
    }

    #[test]
    fn bearer_is_preferred_over_basic() {
        let mut h = HeaderMap::new();
        h.append(WWW_AUTHENTICATE, "Basic realm=\"x\"".parse().unwrap());
        h.append(
            WWW_AUTHENTICATE,
            "Bearer realm=\"https://t/token\"".parse().unwrap(),
        );
        assert!(matches!(challenge_from(&h), Some(Challenge::Bearer { .. })));
    }

    fn index_json() -> Vec<u8> {
        serde_json::json!({
            "schemaVersion": 2,
            "mediaType": DOCKER_LIST,
            "manifests": [
                {"mediaType": DOCKER_MANIFEST, "size": 1, "digest": format!("sha256:{}", "1".repeat(64)),
                 "platform": {"os": "linux", "architecture": "arm", "variant": "v7"}},
                {"mediaType": DOCKER_MANIFEST, "size": 1, "digest": format!("sha256:{}", "2".repeat(64)),
                 "platform": {"os": "linux", "architecture": "amd64"}},
                {"mediaType": DOCKER_MANIFEST, "size": 1, "digest": format!("sha256:{}", "3".repeat(64)),
                 "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
                {"mediaType": OCI_MANIFEST, "size": 1, "digest": format!("sha256:{}", "4".repeat(64)),
                 "platform": {"os": "unknown", "architecture": "unknown"}},
                {"mediaType": DOCKER_MANIFEST, "size": 1, "digest": format!("sha256:{}", "5".repeat(64)),
                 "platform": {"os": "linux", "architecture": "arm", "variant": "v6"}}
            ]
        })
        .to_string()
        .into_bytes()
    }

    #[test]
    fn picks_the_host_platform_from_an_index() {
        let r = Reference::parse("localhost:5000/a").unwrap();
        let pick = |p: Platform| {
            pick_platform(&r, &index_json(), &p).map(|d| d.digest().to_string()[7..8].to_string())
        };
        assert_eq!(pick(Platform::new("linux", "amd64", None)).unwrap(), "2");
        assert_eq!(
            pick(Platform::new("linux", "arm64", Some("v8"))).unwrap(),
            "3"
        );
        assert_eq!(pick(Platform::new("linux", "arm64", None)).unwrap(), "3");
        assert_eq!(
            pick(Platform::new("linux", "arm", Some("v6"))).unwrap(),
            "5"
        );
        assert_eq!(
            pick(Platform::new("linux", "arm", Some("v5"))).unwrap(),
            "1"
        );
        let e = pick(Platform::new("windows", "amd64", None))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("windows/amd64") && e.contains("linux/arm/v7"),
            "{e}"
        );
        assert!(pick_platform(&r, b"{not json", &Platform::host()).is_err());
    }

    fn stream_of(parts: &[&'static [u8]]) -> BlobStream {
        let v: Vec<Result<Bytes, ClientError>> =
            parts.iter().map(|p| Ok(Bytes::from_static(p))).collect();
        Box::pin(futures::stream::iter(v))
    }

    async fn collect(mut s: BlobStream) -> Result<Vec<u8>, ClientError> {
        let mut out = Vec::new();
        while let Some(c) = s.next().await {
            out.extend_from_slice(&c?);
        }
        Ok(out)
    }

    #[tokio::test]
    async fn verifying_stream_passes_good_and_fails_bad_content() {
        let good = sha256_digest(b"hello world");
        let out = collect(verify_stream(
            stream_of(&[b"hello ", b"world"]),
            &good,
            Some(11),
        ))
        .await
        .unwrap();
        assert_eq!(out, b"hello world");

        let e = collect(verify_stream(
            stream_of(&[b"hello ", b"w0rld"]),
            &good,
            None,
        ))
        .await
        .unwrap_err();
        assert!(matches!(e, ClientError::DigestMismatch { .. }));
        assert!(e.to_string().contains(&good), "{e}");

        let e = collect(verify_stream(
            stream_of(&[b"hello ", b"world!"]),
            &good,
            Some(11),
        ))
        .await
        .unwrap_err();
        assert!(matches!(e, ClientError::BlobTooLarge { .. }), "{e}");
        let e = collect(verify_stream(stream_of(&[b"hello"]), &good, Some(11)))
            .await
            .unwrap_err();
        assert!(matches!(e, ClientError::BlobTruncated { .. }), "{e}");
    }

    #[tokio::test]
    async fn unreachable_registry_names_the_host() {
        let c = RegistryClient::new(ClientConfig::default()).unwrap();
        // Port 9 on loopback: nothing listens there.
        let r = Reference::parse("127.0.0.1:9/a:1").unwrap();
        let e = c.get_manifest(&r).await.unwrap_err();
        assert!(matches!(e, ClientError::Unreachable { .. }), "{e}");
        assert!(e.to_string().contains("127.0.0.1:9"), "{e}");
    }

    use super::super::testutil::{Req, Resp, serve};
    use base64::Engine as _;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    const MANIFEST: &str = r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855","size":0},"layers":[]}"#;

    fn client_with(registry: &str, user: &str, password: &str) -> RegistryClient {
        let mut c = ClientConfig::default();
        c.credentials.insert(
            registry.to_string(),
            Credentials {
                username: user.into(),
                password: password.into(),
            },
        );
        RegistryClient::new(c).unwrap()
    }

    fn manifest_resp() -> Resp {
        Resp::new(200, MANIFEST).header("Content-Type", OCI_MANIFEST)
    }

    #[tokio::test]
    async fn basic_auth_right_wrong_and_missing() {
        let good = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("alice:pw")
        );
        let addr = serve(move |r: &Req| {
            if r.headers.get("authorization") != Some(&good) {
                return Resp::new(401, "").header("WWW-Authenticate", "Basic realm=\"reg\"");
            }
            match r.path.as_str() {
                "/v2/" => Resp::new(200, "{}"),
                "/v2/team/app/manifests/1" => manifest_resp(),
                _ => Resp::new(404, ""),
            }
        })
        .await;
        let r = Reference::parse(&format!("{addr}/team/app:1")).unwrap();
        let m = client_with(&addr, "alice", "pw")
            .get_manifest(&r)
            .await
            .unwrap();
        assert_eq!(m.media_type, OCI_MANIFEST);
        assert_eq!(m.digest, sha256_digest(MANIFEST.as_bytes()));
        assert!(!m.is_index());

        let e = client_with(&addr, "alice", "nope")
            .get_manifest(&r)
            .await
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("wrong username or password for {addr}")
        );
        let anon = RegistryClient::new(ClientConfig::default()).unwrap();
        let e = anon.get_manifest(&r).await.unwrap_err();
        assert!(matches!(e, ClientError::AuthRequired { .. }), "{e}");

        let missing = Reference::parse(&format!("{addr}/team/app:2")).unwrap();
        let e = client_with(&addr, "alice", "pw")
            .get_manifest(&missing)
            .await
            .unwrap_err();
        assert_eq!(e.to_string(), format!("image not found: {missing}"));
    }

    #[tokio::test]
    async fn check_auth_answers_basic_challenges_and_open_registries() {
        let good = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("alice:pw")
        );
        let addr = serve(move |r: &Req| {
            if r.headers.get("authorization") != Some(&good) {
                return Resp::new(401, "").header("WWW-Authenticate", "Basic realm=\"reg\"");
            }
            Resp::new(200, "{}")
        })
        .await;
        let c = RegistryClient::new(ClientConfig::default()).unwrap();
        let creds = |p: &str| Credentials {
            username: "alice".into(),
            password: p.into(),
        };
        c.check_auth(&addr, &creds("pw")).await.unwrap();
        let e = c.check_auth(&addr, &creds("nope")).await.unwrap_err();
        assert!(matches!(e, ClientError::WrongCredentials { .. }), "{e}");
        assert!(!e.to_string().contains("nope"), "{e}");

        let open = serve(|_: &Req| Resp::new(200, "{}")).await;
        c.check_auth(&open, &creds("any")).await.unwrap();
        let e = c.check_auth("127.0.0.1:9", &creds("pw")).await.unwrap_err();
        assert!(matches!(e, ClientError::Unreachable { .. }), "{e}");
    }

    #[tokio::test]
    async fn bearer_tokens_are_cached_per_scope_and_renewed_on_401() {
        let issued = Arc::new(AtomicUsize::new(0));
        let valid_from = Arc::new(AtomicUsize::new(1));
        let (i2, v2) = (issued.clone(), valid_from.clone());
        let addr = serve(move |r: &Req| {
            if r.path.starts_with("/token?") {
                // Credentials must be sent to the realm, with the scope.
                assert!(r.path.contains("scope=repository%3Ateam%2Fapp%3Apull"), "{}", r.path);
                assert!(r.path.contains("service=reg"), "{}", r.path);
                if !r.headers.contains_key("authorization") {
                    return Resp::new(401, "");
                }
                let n = i2.fetch_add(1, Ordering::SeqCst) + 1;
                return Resp::new(200, format!("{{\"token\":\"tok-{n}\"}}"));
            }
            let ok = r
                .headers
                .get("authorization")
                .and_then(|a| a.strip_prefix("Bearer tok-"))
                .and_then(|n| n.parse::<usize>().ok())
                .is_some_and(|n| n >= v2.load(Ordering::SeqCst));
            if !ok {
                let host = r.headers.get("host").cloned().unwrap_or_default();
                let ch = format!(
                    "Bearer realm=\"http://{host}/token\",service=\"reg\",scope=\"repository:team/app:pull\""
                );
                return Resp::new(401, "").header("WWW-Authenticate", &ch);
            }
            match r.path.as_str() {
                "/v2/" => Resp::new(200, "{}"),
                "/v2/team/app/manifests/1" => manifest_resp(),
                _ => Resp::new(404, ""),
            }
        })
        .await;
        let r = Reference::parse(&format!("{addr}/team/app:1")).unwrap();
        let c = client_with(&addr, "bob", "pw");
        c.get_manifest(&r).await.unwrap();
        c.get_manifest(&r).await.unwrap();
        assert_eq!(issued.load(Ordering::SeqCst), 1, "token reused");
        // The registry stops accepting tok-1 (expired): one 401, a fresh
        // token, one retry.
        valid_from.store(2, Ordering::SeqCst);
        c.get_manifest(&r).await.unwrap();
        assert_eq!(issued.load(Ordering::SeqCst), 2);
        // The token endpoint refuses anonymous requests.
        let anon = RegistryClient::new(ClientConfig::default()).unwrap();
        let e = anon.get_manifest(&r).await.unwrap_err();
        assert!(matches!(e, ClientError::AuthRequired { .. }), "{e}");
    }

    #[tokio::test]
    async fn manifests_are_bounded_and_pinned_digests_checked() {
        let addr = serve(|r: &Req| match r.path.as_str() {
            "/v2/" => Resp::new(200, "{}"),
            "/v2/big/manifests/1" => Resp::new(200, vec![b' '; MAX_MANIFEST_SIZE + 1])
                .header("Content-Type", OCI_MANIFEST),
            p if p.starts_with("/v2/app/manifests/") => manifest_resp(),
            _ => Resp::new(404, ""),
        })
        .await;
        let c = RegistryClient::new(ClientConfig::default()).unwrap();
        let big = Reference::parse(&format!("{addr}/big:1")).unwrap();
        let e = c.get_manifest(&big).await.unwrap_err();
        assert!(matches!(e, ClientError::ManifestTooLarge { .. }), "{e}");

        let right = sha256_digest(MANIFEST.as_bytes());
        let r = Reference::parse(&format!("{addr}/app@{right}")).unwrap();
        assert_eq!(c.get_manifest(&r).await.unwrap().digest, right);
        let wrong = format!("sha256:{}", "0".repeat(64));
        let r = Reference::parse(&format!("{addr}/app@{wrong}")).unwrap();
        let e = c.get_manifest(&r).await.unwrap_err();
        assert!(matches!(e, ClientError::DigestMismatch { .. }), "{e}");
        assert!(e.to_string().contains(&wrong), "{e}");
    }

    #[test]
    fn registry_cas_come_from_the_hosts_own_dir() {
        let dir = tempfile::tempdir().unwrap();
        let dirs = vec![dir.path().join("missing"), dir.path().to_path_buf()];
        assert!(registry_cas(&dirs, "reg.lan:5000").unwrap().is_empty());
        let host_dir = dir.path().join("reg.lan:5000");
        std::fs::create_dir_all(&host_dir).unwrap();
        // docker's client certificate and key files are not CAs.
        std::fs::write(host_dir.join("client.cert"), "x").unwrap();
        std::fs::write(host_dir.join("client.key"), "x").unwrap();
        assert!(registry_cas(&dirs, "reg.lan:5000").unwrap().is_empty());
        std::fs::write(host_dir.join("ca.crt"), "not a certificate").unwrap();
        let e = registry_cas(&dirs, "reg.lan:5000").unwrap_err().to_string();
        assert!(e.contains("ca.crt"), "{e}");
        // Another host's CA is not read, nor anything outside the dirs.
        assert!(registry_cas(&dirs, "other:5000").unwrap().is_empty());
        assert!(registry_cas(&dirs, "../reg.lan:5000").unwrap().is_empty());
    }
}
