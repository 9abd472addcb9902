//! The HTTP layer: routes, request parsing and response headers of the OCI
//! distribution API.
//!
//! Calls the registry service; never the catalog or the store directly. It
//! turns HTTP (paths, headers, query strings, bodies) into the service's
//! typed requests, and the service's answers and errors back into HTTP.
//! After a manifest push, pull or delete, or a blob delete, succeeded it
//! tells `events` (webhooks), which alone knows whether anyone listens.
//! `observe.rs` is the middleware in front of every route (request id,
//! metrics, access log); `/metrics`, `/healthz` and `/readyz` are served
//! here too. `browse.rs` is the web catalog's JSON API (`/api/v1/`), which
//! calls the browse service (`crate::browse`) rather than the registry.

pub mod auth;
pub mod browse;
pub mod error;
pub mod fleet;
pub mod observe;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, FromRequestParts, Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use futures::TryStreamExt;
use serde_json::json;

use self::auth::Need;
pub use self::error::ApiError;
use crate::auth::scope::Actions;
use crate::events::{EventAction, Events, Target};
use crate::names::{Reference, RepoName};
use crate::registry::{self, ByteRange, ByteStream, Registry, RegistryError};

const DOCKER_CONTENT_DIGEST: HeaderName = HeaderName::from_static("docker-content-digest");
const DOCKER_UPLOAD_UUID: HeaderName = HeaderName::from_static("docker-upload-uuid");
const OCI_SUBJECT: HeaderName = HeaderName::from_static("oci-subject");
const OCI_FILTERS_APPLIED: HeaderName = HeaderName::from_static("oci-filters-applied");
const API_VERSION: HeaderName = HeaderName::from_static("docker-distribution-api-version");

type ApiResult = Result<Response, ApiError>;

#[derive(Clone)]
pub struct AppState {
    pub registry: Arc<Registry>,
    /// The web catalog's service (`/api/v1` and the HTML UI).
    pub browse: crate::browse::Browse,
    /// None when auth is off: every request is allowed.
    pub auth: Option<Arc<crate::auth::Auth>>,
    /// Webhooks; `Events::disabled()` when none is configured.
    pub events: Arc<Events>,
    /// The Prometheus metrics (also written by garbage collection).
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Log one access line per `/v2/` request.
    pub access_log: bool,
    /// The control plane of runner nodes (`api/fleet.rs`).
    pub fleet: crate::fleet::Fleet,
}

/// The whole HTTP surface, so tests can drive it without a socket.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v2", any(base))
        .route("/v2/", any(base))
        .route("/v2/{*path}", any(dispatch))
        .route(
            "/token",
            axum::routing::get(auth::get_token)
                .post(auth::post_token)
                .fallback(auth::token_method_not_allowed),
        )
        .route("/metrics", axum::routing::get(observe::metrics))
        .route("/healthz", axum::routing::get(observe::healthz))
        .route("/readyz", axum::routing::get(observe::readyz))
        .merge(browse::routes())
        .merge(fleet::routes())
        .merge(crate::web::router())
        .fallback(|| async { ApiError::unsupported_route() })
        .layer(middleware::from_fn_with_state(
            state.clone(),
            observe::observe,
        ))
        .with_state(state)
}

async fn base(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let claims = match auth::authorize(&state, &headers, &Need::Base) {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    let resp = axum::Json(json!({})).into_response();
    observe::with_user(resp, claims.as_ref())
}

/// The endpoints under `/v2/<name>/...`. Names contain slashes, so the path
/// is matched from its end.
#[derive(Debug, PartialEq)]
enum Route<'a> {
    Catalog,
    Tags(&'a str),
    Manifest(&'a str, &'a str),
    UploadStart(&'a str),
    Upload(&'a str, &'a str),
    Blob(&'a str, &'a str),
    Referrers(&'a str, &'a str),
}

fn parse_route(path: &str) -> Option<Route<'_>> {
    if path == "_catalog" {
        return Some(Route::Catalog);
    }
    if let Some(name) = path.strip_suffix("/tags/list") {
        return Some(Route::Tags(name));
    }
    if let Some(name) = path
        .strip_suffix("/blobs/uploads/")
        .or_else(|| path.strip_suffix("/blobs/uploads"))
    {
        return Some(Route::UploadStart(name));
    }
    let split = |sep: &str| {
        path.rsplit_once(sep)
            .filter(|(_, last)| !last.contains('/'))
    };
    if let Some((name, id)) = split("/blobs/uploads/") {
        return Some(Route::Upload(name, id));
    }
    if let Some((name, r)) = split("/manifests/") {
        return Some(Route::Manifest(name, r));
    }
    if let Some((name, d)) = split("/blobs/") {
        return Some(Route::Blob(name, d));
    }
    if let Some((name, d)) = split("/referrers/") {
        return Some(Route::Referrers(name, d));
    }
    None
}

/// Everything a handler may need from the request.
struct Req {
    method: Method,
    headers: HeaderMap,
    query: Vec<(String, String)>,
    body: Body,
}

/// Bodies up to this many bytes are read before the registry sees them.
const READ_AHEAD: usize = 64 * 1024;

impl Req {
    fn param(&self, key: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn header(&self, name: HeaderName) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    fn content_length(&self) -> Result<Option<u64>, ApiError> {
        self.header(header::CONTENT_LENGTH)
            .map(|v| {
                v.parse::<u64>()
                    .map_err(|_| ApiError::bad_request("SIZE_INVALID", "invalid Content-Length"))
            })
            .transpose()
    }

    /// A declared length of at most [`READ_AHEAD`].
    fn small_body(&self) -> bool {
        self.content_length()
            .ok()
            .flatten()
            .is_some_and(|n| n <= READ_AHEAD as u64)
    }

    /// Reads and drops a small body, for a request refused before any
    /// handler saw it (no token, not allowed): the connection stays clean,
    /// so the client's retry with a token on it is answered (unread bytes
    /// would make the server close it, and a client reusing it at once
    /// sees "connection closed" instead).
    async fn discard_small_body(self) {
        if self.small_body() {
            let _ = axum::body::to_bytes(self.body, READ_AHEAD).await;
        }
    }

    /// The body as a stream. A small body (a declared length of at most
    /// [`READ_AHEAD`]) is read whole first: when the registry then refuses
    /// the request before reading it (a chunk at the wrong offset, an
    /// unknown session), the bytes are not left unread in the socket, where
    /// closing the connection would send a TCP reset that can reach the
    /// client before the error response does.
    async fn into_stream(self) -> ByteStream {
        if self.small_body() {
            let read = axum::body::to_bytes(self.body, READ_AHEAD)
                .await
                .map_err(std::io::Error::other);
            return Box::pin(futures::stream::iter(
                read.map(|b| (!b.is_empty()).then_some(b)).transpose(),
            ));
        }
        Box::pin(self.body.into_data_stream().map_err(std::io::Error::other))
    }
}

async fn dispatch(
    State(state): State<AppState>,
    ClientAddr(addr): ClientAddr,
    Path(path): Path<String>,
    RawQuery(query): RawQuery,
    method: Method,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    let query = match query {
        Some(q) => serde_urlencoded::from_str(&q)
            .map_err(|_| ApiError::bad_request("UNSUPPORTED", "malformed query string"))?,
        None => Vec::new(),
    };
    let req = Req {
        method,
        headers,
        query,
        body,
    };
    let route = parse_route(&path).ok_or_else(ApiError::unsupported_route)?;
    let m = req.method.clone();
    let need = required_access(&route, &m, &req)?;
    let claims = match auth::authorize(&state, &req.headers, &need) {
        Ok(claims) => claims,
        Err(refused) => {
            req.discard_small_body().await;
            return Err(refused);
        }
    };
    let user = claims.as_ref().map(|c| c.sub.clone());
    let resp = handle(&state, route, m, req, claims, addr)
        .await
        .unwrap_or_else(IntoResponse::into_response);
    Ok(observe::with_user_name(resp, user))
}

/// Runs the handler of an authorized request.
async fn handle(
    state: &AppState,
    route: Route<'_>,
    m: Method,
    req: Req,
    claims: Option<crate::auth::AccessClaims>,
    addr: Option<SocketAddr>,
) -> ApiResult {
    let reg = &state.registry;
    let name = |n: &str| registry::parse_name(n).map_err(ApiError::from);
    let subject = claims.as_ref().map(|c| c.sub.clone());
    let caller = Caller {
        addr,
        actor: subject.as_deref(),
    };
    match route {
        Route::Catalog if m == Method::GET => catalog(state, claims, req).await,
        Route::Tags(n) if m == Method::GET => tags(reg, &name(n)?, req).await,
        Route::Manifest(n, r) => {
            let repo = name(n)?;
            let reference = registry::parse_reference(r)?;
            match m {
                Method::GET | Method::HEAD => {
                    let request = (&req.method, &req.headers);
                    get_manifest(state, caller, &repo, &reference, request).await
                }
                Method::PUT => put_manifest(state, caller, &repo, &reference, req).await,
                Method::DELETE => {
                    reg.delete_manifest(&repo, &reference).await?;
                    let (digest, tag) = match &reference {
                        Reference::Digest(d) => (Some(d.as_str()), None),
                        Reference::Tag(t) => (None, Some(t.as_str())),
                    };
                    let target = Target {
                        repository: repo.as_str(),
                        digest,
                        tag,
                        ..Target::default()
                    };
                    notify(
                        state,
                        EventAction::Delete,
                        &target,
                        (&req.method, &req.headers),
                        caller,
                    );
                    Ok(StatusCode::ACCEPTED.into_response())
                }
                _ => Err(ApiError::method_not_allowed()),
            }
        }
        Route::Blob(n, d) => {
            let repo = name(n)?;
            let digest = registry::parse_digest(d)?;
            match m {
                Method::GET | Method::HEAD => get_blob(reg, &repo, &digest, req).await,
                Method::DELETE => {
                    reg.delete_blob(&repo, &digest).await?;
                    let target = Target {
                        repository: repo.as_str(),
                        digest: Some(digest.as_str()),
                        ..Target::default()
                    };
                    notify(
                        state,
                        EventAction::Delete,
                        &target,
                        (&req.method, &req.headers),
                        caller,
                    );
                    Ok(StatusCode::ACCEPTED.into_response())
                }
                _ => Err(ApiError::method_not_allowed()),
            }
        }
        Route::UploadStart(n) if m == Method::POST => {
            start_upload(state, claims, &name(n)?, req).await
        }
        Route::Upload(n, id) => {
            let repo = name(n)?;
            let result = match m {
                Method::GET => upload_status(reg, &repo, id).await,
                Method::PATCH => patch_upload(reg, &repo, id, req).await,
                Method::PUT => put_upload(reg, &repo, id, req).await,
                Method::DELETE => reg
                    .cancel_upload(&repo, id)
                    .await
                    .map(|()| StatusCode::NO_CONTENT.into_response())
                    .map_err(ApiError::from),
                _ => Err(ApiError::method_not_allowed()),
            };
            result.map_err(|e| {
                if e.status() == StatusCode::RANGE_NOT_SATISFIABLE {
                    e.with_header(header::LOCATION, &upload_location(&repo, id))
                } else {
                    e
                }
            })
        }
        Route::Referrers(n, d) if m == Method::GET => {
            referrers(reg, &name(n)?, &registry::parse_digest(d)?, req).await
        }
        _ => Err(ApiError::method_not_allowed()),
    }
}

/// What a request must be allowed to do, from its route and method. Names
/// are validated here, so a malformed name is a 400 before any auth answer.
fn required_access(route: &Route<'_>, m: &Method, req: &Req) -> Result<Need, ApiError> {
    let read = *m == Method::GET || *m == Method::HEAD;
    let (name, actions) = match route {
        Route::Catalog => return Ok(Need::Catalog),
        Route::Tags(n) | Route::Referrers(n, _) => (n, Actions::PULL),
        Route::Manifest(n, _) | Route::Blob(n, _) if read => (n, Actions::PULL),
        Route::Manifest(n, _) | Route::Blob(n, _) if *m == Method::DELETE => (n, Actions::DELETE),
        Route::Manifest(n, _) | Route::Blob(n, _) => (n, Actions::PUSH),
        Route::UploadStart(n) | Route::Upload(n, _) => (n, Actions::PUSH.union(Actions::PULL)),
    };
    let mut repos = vec![(registry::parse_name(name)?, actions)];
    // A cross-mount reads the source repository: pull is needed there.
    if let (Route::UploadStart(_), Some(from)) = (route, req.param("from"))
        && req.param("mount").is_some()
    {
        repos.push((registry::parse_name(from)?, Actions::PULL));
    }
    Ok(Need::Repos(repos))
}

// ---- events ------------------------------------------------------------------

/// The client's address, when the server was started with connect info
/// (tests that drive the router without a socket have none).
struct ClientAddr(Option<SocketAddr>);

impl<S: Send + Sync> FromRequestParts<S> for ClientAddr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(ClientAddr(
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0),
        ))
    }
}

/// Who made a request, for the events it causes.
#[derive(Clone, Copy)]
struct Caller<'a> {
    addr: Option<SocketAddr>,
    /// The token's subject (user or robot); None with auth off.
    actor: Option<&'a str>,
}

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Tells the webhooks about a request that succeeded. When no endpoint
/// wants it this is a pattern check and nothing else.
fn notify(
    state: &AppState,
    action: EventAction,
    target: &Target<'_>,
    (method, headers): (&Method, &HeaderMap),
    caller: Caller<'_>,
) {
    if !state.events.wants(action, target.repository) {
        return;
    }
    let header = |name| headers.get(name).and_then(|v| v.to_str().ok());
    let origin = crate::events::Origin {
        addr: caller.addr,
        method: method.as_str(),
        host: header(header::HOST),
        user_agent: header(header::USER_AGENT),
        request_id: header(REQUEST_ID),
        actor: caller.actor,
    };
    state.events.notify(action, target, &origin);
}

// ---- helpers -----------------------------------------------------------------

fn response(status: StatusCode) -> axum::http::response::Builder {
    Response::builder().status(status)
}

fn finish(b: axum::http::response::Builder, body: Body) -> Response {
    b.body(body).unwrap_or_else(|e| {
        tracing::error!(error = %e, "could not build a response");
        StatusCode::INTERNAL_SERVER_ERROR.into_response()
    })
}

/// `Range` value for an upload of `size` bytes: `0-<last byte>`, and `0-0`
/// for an empty one, as distribution answers.
pub(crate) fn upload_range(size: u64) -> String {
    format!("0-{}", size.saturating_sub(1))
}

fn upload_location(repo: &RepoName, id: &str) -> String {
    format!("/v2/{repo}/blobs/uploads/{id}")
}

fn upload_accepted(repo: &RepoName, status: &registry::UploadStatus, code: StatusCode) -> Response {
    finish(
        response(code)
            .header(header::LOCATION, upload_location(repo, &status.id))
            .header(header::RANGE, upload_range(status.size))
            .header(header::CONTENT_LENGTH, "0")
            .header(DOCKER_UPLOAD_UUID, &status.id),
        Body::empty(),
    )
}

fn blob_created(repo: &RepoName, digest: &str) -> Response {
    finish(
        response(StatusCode::CREATED)
            .header(header::LOCATION, format!("/v2/{repo}/blobs/{digest}"))
            .header(header::CONTENT_LENGTH, "0")
            .header(DOCKER_CONTENT_DIGEST, digest),
        Body::empty(),
    )
}

/// `n` and `last` paging parameters.
fn paging(req: &Req) -> Result<(Option<u32>, Option<String>), ApiError> {
    let n = req
        .param("n")
        .map(|v| {
            v.parse::<u32>().map_err(|_| {
                ApiError::bad_request("UNSUPPORTED", "n must be a non-negative integer")
            })
        })
        .transpose()?;
    Ok((n, req.param("last").map(str::to_owned)))
}

fn next_link(path: &str, n: Option<u32>, next: Option<&str>, extra: &str) -> Option<String> {
    let last = next?;
    let mut query = vec![("last", last.to_owned())];
    if let Some(n) = n {
        query.push(("n", n.to_string()));
    }
    let q = serde_urlencoded::to_string(&query).ok()?;
    Some(format!("<{path}?{q}{extra}>; rel=\"next\""))
}

fn json_response(value: serde_json::Value, content_type: &str, link: Option<String>) -> Response {
    let body = serde_json::to_vec(&value).unwrap_or_default();
    let mut b = response(StatusCode::OK)
        .header(header::CONTENT_TYPE, content_type)
        .header(header::CONTENT_LENGTH, body.len());
    if let Some(link) = link {
        b = b.header(header::LINK, link);
    }
    finish(b, Body::from(body))
}

// ---- listings ---------------------------------------------------------------------

async fn catalog(
    state: &AppState,
    claims: Option<crate::auth::AccessClaims>,
    req: Req,
) -> ApiResult {
    let (n, last) = paging(&req)?;
    // With auth on, the listing shows only what the caller may pull.
    let perms = match (&state.auth, &claims) {
        (Some(auth), Some(c)) => Some(auth.permissions_of_subject(&c.sub).await?),
        _ => None,
    };
    let visible = |repo: &str| {
        perms
            .as_ref()
            .is_none_or(|p| p.allowed(repo).contains(Actions::PULL))
    };
    let page = state
        .registry
        .repositories(n, last.as_deref(), &visible)
        .await?;
    let link = next_link("/v2/_catalog", n, page.next.as_deref(), "");
    Ok(json_response(
        json!({ "repositories": page.items }),
        "application/json",
        link,
    ))
}

async fn tags(reg: &Registry, repo: &RepoName, req: Req) -> ApiResult {
    let (n, last) = paging(&req)?;
    let page = reg.tags(repo, n, last.as_deref()).await?;
    let link = next_link(
        &format!("/v2/{repo}/tags/list"),
        n,
        page.next.as_deref(),
        "",
    );
    Ok(json_response(
        json!({ "name": repo.as_str(), "tags": page.items }),
        "application/json",
        link,
    ))
}

async fn referrers(
    reg: &Registry,
    repo: &RepoName,
    subject: &crate::digest::Digest,
    req: Req,
) -> ApiResult {
    let (n, last) = paging(&req)?;
    let artifact_type = req.param("artifactType").map(str::to_owned);
    let page = reg
        .referrers(repo, subject, artifact_type.as_deref(), n, last.as_deref())
        .await?;
    let manifests: Vec<_> = page
        .items
        .iter()
        .map(|r| {
            let mut d = json!({ "mediaType": r.media_type, "digest": r.digest, "size": r.size });
            if let Some(t) = &r.artifact_type {
                d["artifactType"] = json!(t);
            }
            if let Some(a) = r
                .annotations
                .as_deref()
                .and_then(|a| serde_json::from_str::<serde_json::Value>(a).ok())
            {
                d["annotations"] = a;
            }
            d
        })
        .collect();
    let extra = match &artifact_type {
        Some(t) => format!(
            "&{}",
            serde_urlencoded::to_string([("artifactType", t)]).unwrap_or_default()
        ),
        None => String::new(),
    };
    let link = next_link(
        &format!("/v2/{repo}/referrers/{subject}"),
        n,
        page.next.as_deref(),
        &extra,
    );
    let body = json!({
        "schemaVersion": 2,
        "mediaType": registry::manifest::OCI_INDEX,
        "manifests": manifests,
    });
    let mut resp = json_response(body, registry::manifest::OCI_INDEX, link);
    if artifact_type.is_some() {
        resp.headers_mut().insert(
            OCI_FILTERS_APPLIED,
            HeaderValue::from_static("artifactType"),
        );
    }
    Ok(resp)
}

// ---- manifests ------------------------------------------------------------------------

async fn get_manifest(
    state: &AppState,
    caller: Caller<'_>,
    repo: &RepoName,
    reference: &Reference,
    request: (&Method, &HeaderMap),
) -> ApiResult {
    let head = request.0 == Method::HEAD;
    let m = state.registry.get_manifest(repo, reference).await?;
    // A HEAD only checks; a GET is a pull.
    if !head {
        let target = Target {
            repository: repo.as_str(),
            digest: Some(&m.digest),
            media_type: Some(&m.media_type),
            size: Some(m.content.len() as u64),
            tag: tag_of(reference),
        };
        notify(state, EventAction::Pull, &target, request, caller);
    }
    let b = response(StatusCode::OK)
        .header(header::CONTENT_TYPE, &m.media_type)
        .header(header::CONTENT_LENGTH, m.content.len())
        .header(DOCKER_CONTENT_DIGEST, &m.digest)
        .header(header::ETAG, format!("\"{}\"", m.digest));
    Ok(finish(
        b,
        if head {
            Body::empty()
        } else {
            Body::from(m.content)
        },
    ))
}

fn tag_of(reference: &Reference) -> Option<&str> {
    match reference {
        Reference::Tag(t) => Some(t),
        Reference::Digest(_) => None,
    }
}

async fn put_manifest(
    state: &AppState,
    caller: Caller<'_>,
    repo: &RepoName,
    reference: &Reference,
    req: Req,
) -> ApiResult {
    let reg = &state.registry;
    let limit = reg.limits().max_manifest_bytes;
    let too_large = || ApiError::from(RegistryError::ManifestTooLarge { limit });
    if req.content_length()?.is_some_and(|l| l > limit) {
        return Err(too_large());
    }
    let content_type = req.header(header::CONTENT_TYPE).map(str::to_owned);
    let bytes = axum::body::to_bytes(req.body, limit as usize)
        .await
        .map_err(|e| {
            let is_limit = std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
            if is_limit {
                too_large()
            } else {
                ApiError::bad_request(
                    "MANIFEST_INVALID",
                    format!("could not read the manifest: {e}"),
                )
            }
        })?;
    let put = reg
        .put_manifest(repo, reference, content_type.as_deref(), &bytes)
        .await?;
    let target = Target {
        repository: repo.as_str(),
        digest: Some(put.digest.as_str()),
        media_type: Some(&put.media_type),
        size: Some(bytes.len() as u64),
        tag: tag_of(reference),
    };
    notify(
        state,
        EventAction::Push,
        &target,
        (&req.method, &req.headers),
        caller,
    );
    let mut b = response(StatusCode::CREATED)
        .header(
            header::LOCATION,
            format!("/v2/{repo}/manifests/{}", put.digest),
        )
        .header(header::CONTENT_LENGTH, "0")
        .header(DOCKER_CONTENT_DIGEST, put.digest.as_str());
    if let Some(subject) = &put.subject {
        b = b.header(OCI_SUBJECT, subject.as_str());
    }
    Ok(finish(b, Body::empty()))
}

// ---- blobs ---------------------------------------------------------------------------------

/// Parses a single `bytes=` range; anything else (several ranges, other
/// units) is ignored and the whole blob is served, as RFC 9110 allows.
fn parse_byte_range(v: &str) -> Option<ByteRange> {
    let spec = v.trim().strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None;
    }
    let (a, b) = spec.split_once('-')?;
    let (a, b) = (a.trim(), b.trim());
    match (a.is_empty(), b.is_empty()) {
        (true, false) => b.parse().ok().map(ByteRange::Suffix),
        (false, true) => a.parse().ok().map(ByteRange::From),
        (false, false) => Some(ByteRange::FromTo(a.parse().ok()?, b.parse().ok()?)),
        (true, true) => None,
    }
}

async fn get_blob(
    reg: &Registry,
    repo: &RepoName,
    digest: &crate::digest::Digest,
    req: Req,
) -> ApiResult {
    let common = |b: axum::http::response::Builder| {
        b.header(DOCKER_CONTENT_DIGEST, digest.as_str())
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .header(header::ACCEPT_RANGES, "bytes")
            .header(header::ETAG, format!("\"{digest}\""))
            .header(header::CACHE_CONTROL, "max-age=31536000")
    };
    if req.method == Method::HEAD {
        let size = reg.blob_size(repo, digest).await?;
        let b = common(response(StatusCode::OK)).header(header::CONTENT_LENGTH, size);
        return Ok(finish(b, Body::empty()));
    }
    // S3 with storage.redirect: the client fetches the bytes from the store
    // (a presigned URL honours Range too).
    if let Some(url) = reg.blob_redirect(repo, digest).await? {
        let b = response(StatusCode::TEMPORARY_REDIRECT)
            .header(DOCKER_CONTENT_DIGEST, digest.as_str())
            .header(header::LOCATION, url);
        return Ok(finish(b, Body::empty()));
    }
    let range = req.header(header::RANGE).and_then(parse_byte_range);
    let blob = reg.open_blob(repo, digest, range).await?;
    let b = match &blob.range {
        Some(r) => common(response(StatusCode::PARTIAL_CONTENT))
            .header(header::CONTENT_LENGTH, r.end - r.start)
            .header(
                header::CONTENT_RANGE,
                format!("bytes {}-{}/{}", r.start, r.end - 1, blob.size),
            ),
        None => common(response(StatusCode::OK)).header(header::CONTENT_LENGTH, blob.size),
    };
    Ok(finish(b, Body::from_stream(blob.stream)))
}

// ---- uploads --------------------------------------------------------------------------------

async fn start_upload(
    state: &AppState,
    claims: Option<crate::auth::AccessClaims>,
    repo: &RepoName,
    req: Req,
) -> ApiResult {
    let reg = &state.registry;
    if let Some(mount) = req.param("mount") {
        let digest = registry::parse_digest(mount)?;
        let mut from = req.param("from").map(registry::parse_name).transpose()?;
        // Without `from`, a known blob is mounted from anywhere; with auth
        // on, only from a repository the caller may pull, so a digest alone
        // never opens another team's private blob.
        if let (None, Some(auth), Some(claims)) = (&from, &state.auth, &claims) {
            let perms = auth.permissions_of_subject(&claims.sub).await?;
            let holders = reg.repositories_with_blob(&digest).await?;
            match holders
                .into_iter()
                .find(|r| perms.allowed(r.as_str()).contains(Actions::PULL))
            {
                Some(r) => from = Some(r),
                None => {
                    let status = reg.start_upload(repo).await?;
                    return Ok(upload_accepted(repo, &status, StatusCode::ACCEPTED));
                }
            }
        }
        if reg.mount(repo, &digest, from.as_ref()).await?.is_some() {
            return Ok(blob_created(repo, digest.as_str()));
        }
        // Not mountable: fall back to a new upload session (202).
    } else if let Some(d) = req.param("digest") {
        let digest = registry::parse_digest(d)?;
        reg.upload_monolithic(repo, &digest, req.into_stream().await)
            .await?;
        return Ok(blob_created(repo, digest.as_str()));
    }
    let status = reg.start_upload(repo).await?;
    Ok(upload_accepted(repo, &status, StatusCode::ACCEPTED))
}

async fn upload_status(reg: &Registry, repo: &RepoName, id: &str) -> ApiResult {
    let status = reg.upload_status(repo, id).await?;
    Ok(upload_accepted(repo, &status, StatusCode::NO_CONTENT))
}

/// `Content-Range` of a chunk: the spec's `<start>-<end>`, or the HTTP form
/// `bytes <start>-<end>/<total>` some clients send. Returns (start, length).
fn parse_content_range(v: &str) -> Option<(u64, u64)> {
    let v = v.trim();
    let v = v
        .strip_prefix("bytes")
        .map(|r| r.trim_start_matches([' ', '=']))
        .unwrap_or(v);
    let range = v.split('/').next()?;
    let (a, b) = range.split_once('-')?;
    let (a, b): (u64, u64) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
    (b >= a)
        .then(|| (b - a).checked_add(1).map(|len| (a, len)))
        .flatten()
}

/// The chunk's start and length from `Content-Range` and `Content-Length`,
/// which must agree when both are given.
fn chunk_bounds(req: &Req) -> Result<(Option<u64>, Option<u64>), ApiError> {
    let len = req.content_length()?;
    let Some(cr) = req.header(header::CONTENT_RANGE) else {
        return Ok((None, len));
    };
    let (start, range_len) = parse_content_range(cr).ok_or_else(|| {
        ApiError::new(
            StatusCode::RANGE_NOT_SATISFIABLE,
            "BLOB_UPLOAD_INVALID",
            "malformed Content-Range",
        )
    })?;
    if len.is_some_and(|l| l != range_len) {
        return Err(ApiError::new(
            StatusCode::RANGE_NOT_SATISFIABLE,
            "BLOB_UPLOAD_INVALID",
            "Content-Range does not match Content-Length",
        ));
    }
    Ok((Some(start), Some(range_len)))
}

async fn patch_upload(reg: &Registry, repo: &RepoName, id: &str, req: Req) -> ApiResult {
    let (start, len) = chunk_bounds(&req)?;
    let status = reg
        .upload_chunk(repo, id, start, len, req.into_stream().await)
        .await?;
    Ok(upload_accepted(repo, &status, StatusCode::ACCEPTED))
}

async fn put_upload(reg: &Registry, repo: &RepoName, id: &str, req: Req) -> ApiResult {
    let digest = req
        .param("digest")
        .ok_or_else(|| {
            ApiError::bad_request("DIGEST_INVALID", "the digest query parameter is required")
        })
        .and_then(|d| registry::parse_digest(d).map_err(ApiError::from))?;
    let (start, len) = chunk_bounds(&req)?;
    reg.complete_upload(repo, id, &digest, start, len, req.into_stream().await)
        .await?;
    Ok(blob_created(repo, digest.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(parse_route("_catalog"), Some(Route::Catalog));
        assert_eq!(parse_route("a/b/tags/list"), Some(Route::Tags("a/b")));
        assert_eq!(
            parse_route("a/manifests/x/manifests/v1"),
            Some(Route::Manifest("a/manifests/x", "v1"))
        );
        assert_eq!(
            parse_route("a/blobs/uploads/"),
            Some(Route::UploadStart("a"))
        );
        assert_eq!(
            parse_route("a/blobs/uploads/123"),
            Some(Route::Upload("a", "123"))
        );
        assert_eq!(
            parse_route("a/blobs/sha256:00"),
            Some(Route::Blob("a", "sha256:00"))
        );
        assert_eq!(
            parse_route("a/referrers/sha256:00"),
            Some(Route::Referrers("a", "sha256:00"))
        );
        assert_eq!(parse_route("a/unknown"), None);
    }

    #[test]
    fn ranges() {
        assert_eq!(parse_byte_range("bytes=0-9"), Some(ByteRange::FromTo(0, 9)));
        assert_eq!(parse_byte_range("bytes=5-"), Some(ByteRange::From(5)));
        assert_eq!(parse_byte_range("bytes=-5"), Some(ByteRange::Suffix(5)));
        assert_eq!(parse_byte_range("bytes=0-1,3-4"), None);
        assert_eq!(parse_byte_range("items=0-1"), None);
        assert_eq!(parse_content_range("0-99"), Some((0, 100)));
        assert_eq!(parse_content_range("bytes 100-199/*"), Some((100, 100)));
        assert_eq!(parse_content_range("9-3"), None);
        assert_eq!(parse_content_range("x-y"), None);
    }
}
