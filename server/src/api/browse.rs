//! The web catalog's JSON API under `/api/v1/` and its OpenAPI document
//! (`/api/v1/openapi.json`, derived with utoipa from the same types the
//! service returns).
//!
//! Calls the browse service (`crate::browse`) and, to know who is asking,
//! the auth service. Who is asking: no `Authorization` header is an
//! anonymous viewer (public repositories only); `Bearer` a token from
//! `/token`, whose subject's current permissions apply (as `/v2/_catalog`
//! does); `Basic` a user name and password (rate-limited like `/token`).
//! With auth off everyone sees everything.
//!
//! Repository names contain slashes, so paths under
//! `/api/v1/repositories/` are matched from their end, as `/v2/` does.
//! Errors are `{"errors":[{"code","message"}]}` like `/v2/`: 404 for a
//! repository, tag or digest that is unknown or not visible (the two are
//! never told apart), 400 for a bad query value, 401/403 for a delete
//! without the right.

use std::net::SocketAddr;

use axum::Router;
use axum::extract::{ConnectInfo, Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use base64::Engine;
use utoipa::OpenApi;

use super::{ApiError, AppState};
use crate::auth::{AuthError, Principal};
use crate::browse::{
    BrowseError, HistoryView, ImageConfigView, LayerView, ManifestView, Page, PlatformView,
    ReferrerView, RepoQuery, RepoSummary, Sort, Stats, TagSummary, Viewer,
};

/// Longest query string read.
const MAX_QUERY_BYTES: usize = 4096;

/// The `/api/v1` routes (merged into `api::router`).
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/openapi.json", get(openapi))
        .route("/api/v1/stats", any(stats))
        .route("/api/v1/repositories", any(repositories))
        .route("/api/v1/repositories/", any(repositories))
        .route("/api/v1/repositories/{*path}", any(repository_path))
        .route("/api/v1", any(not_found))
        .route("/api/v1/", any(not_found))
        .route("/api/v1/{*rest}", any(not_found))
}

impl From<BrowseError> for ApiError {
    fn from(e: BrowseError) -> Self {
        match e {
            BrowseError::NotFound { what } => {
                let code = if what.starts_with("repository") {
                    "NAME_UNKNOWN"
                } else {
                    "MANIFEST_UNKNOWN"
                };
                ApiError::new(StatusCode::NOT_FOUND, code, format!("{what} not found"))
            }
            BrowseError::Denied => ApiError::new(
                StatusCode::FORBIDDEN,
                "DENIED",
                "requested access to the resource is denied",
            ),
            BrowseError::Invalid(msg) => ApiError::bad_request("INVALID_PARAMETER", msg),
            BrowseError::Unsupported(msg) => {
                ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "UNSUPPORTED", msg)
            }
            BrowseError::Internal(msg) => {
                tracing::error!(error = %msg, "browse internal error");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "UNKNOWN",
                    "internal server error",
                )
            }
        }
    }
}

fn basic_challenge(e: ApiError) -> ApiError {
    e.with_header(header::WWW_AUTHENTICATE, "Basic realm=\"wharf\"")
}

fn unauthorized(msg: &str) -> ApiError {
    basic_challenge(ApiError::new(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", msg))
}

/// Who is asking (see the module doc).
pub(super) async fn viewer(
    state: &AppState,
    headers: &HeaderMap,
    addr: Option<SocketAddr>,
) -> Result<Viewer, ApiError> {
    let Some(auth) = &state.auth else {
        return Ok(Viewer::all());
    };
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        let perms = auth.permissions(&Principal::Anonymous).await?;
        return Ok(Viewer::new(None, perms));
    };
    let value = value
        .to_str()
        .map_err(|_| unauthorized("malformed Authorization header"))?;
    let (scheme, rest) = value
        .split_once(' ')
        .ok_or_else(|| unauthorized("malformed Authorization header"))?;
    if scheme.eq_ignore_ascii_case("bearer") {
        let claims = auth.verify_access(rest.trim()).map_err(|e| {
            tracing::debug!(error = %e, "refused a token on /api/v1");
            unauthorized("invalid or expired token")
        })?;
        let perms = auth.permissions_of_subject(&claims.sub).await?;
        Ok(Viewer::new(Some(claims.sub), perms))
    } else if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(rest.trim())
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(|| ApiError::from(AuthError::InvalidCredentials))?;
        let (user, pass) = decoded
            .split_once(':')
            .ok_or_else(|| ApiError::from(AuthError::InvalidCredentials))?;
        let user = auth.login(user, pass, addr.map(|a| a.ip())).await?;
        let name = user.name.clone();
        let perms = auth.permissions(&Principal::User(user)).await?;
        Ok(Viewer::new(Some(name), perms))
    } else {
        Err(unauthorized(
            "unsupported Authorization scheme (use Bearer or Basic)",
        ))
    }
}

pub(super) fn client(parts: &axum::http::Extensions) -> Option<SocketAddr> {
    parts.get::<ConnectInfo<SocketAddr>>().map(|c| c.0)
}

fn parse_query<T: serde::de::DeserializeOwned + Default>(
    query: Option<&str>,
) -> Result<T, ApiError> {
    let Some(q) = query else {
        return Ok(T::default());
    };
    if q.len() > MAX_QUERY_BYTES {
        return Err(ApiError::bad_request(
            "INVALID_PARAMETER",
            format!("the query string is longer than {MAX_QUERY_BYTES} bytes"),
        ));
    }
    serde_urlencoded::from_str(q)
        .map_err(|e| ApiError::bad_request("INVALID_PARAMETER", format!("bad query string: {e}")))
}

fn json<T: serde::Serialize>(status: StatusCode, body: &T) -> Response {
    let mut resp = (status, axum::Json(body)).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

fn only(method: &Method, allowed: &[Method]) -> Result<(), ApiError> {
    if allowed.contains(method) {
        Ok(())
    } else {
        Err(ApiError::method_not_allowed())
    }
}

async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "UNSUPPORTED",
        "no such endpoint in the /api/v1 API (see /api/v1/openapi.json)",
    )
}

/// The OpenAPI document.
async fn openapi() -> Response {
    let mut doc = ApiDoc::openapi();
    doc.merge(super::fleet::FleetDoc::openapi());
    json(StatusCode::OK, &doc)
}

#[utoipa::path(get, path = "/api/v1/stats", tag = "catalog",
    responses((status = 200, description = "Totals over what the caller may see", body = Stats)))]
async fn stats(
    State(state): State<AppState>,
    method: Method,
    headers: HeaderMap,
    req: axum::extract::Request,
) -> Result<Response, ApiError> {
    only(&method, &[Method::GET, Method::HEAD])?;
    let viewer = viewer(&state, &headers, client(req.extensions())).await?;
    Ok(json(StatusCode::OK, &state.browse.stats(&viewer).await?))
}

#[utoipa::path(get, path = "/api/v1/repositories", tag = "catalog",
    params(RepoQuery),
    responses(
        (status = 200, description = "A page of the repositories the caller may pull", body = Page<RepoSummary>),
        (status = 400, description = "A bad query value")))]
async fn repositories(
    State(state): State<AppState>,
    method: Method,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    req: axum::extract::Request,
) -> Result<Response, ApiError> {
    only(&method, &[Method::GET, Method::HEAD])?;
    let q: RepoQuery = parse_query(query.as_deref())?;
    let viewer = viewer(&state, &headers, client(req.extensions())).await?;
    Ok(json(
        StatusCode::OK,
        &state.browse.repositories(&viewer, &q).await?,
    ))
}

/// What a path under `/api/v1/repositories/` names, matched from its end.
#[derive(Debug, PartialEq)]
enum Route<'a> {
    Repository(&'a str),
    Tags(&'a str),
    Tag(&'a str, &'a str),
    Manifest(&'a str, &'a str),
    Referrers(&'a str, &'a str),
}

fn parse_route(path: &str) -> Option<Route<'_>> {
    let path = path.strip_suffix('/').unwrap_or(path);
    if path.is_empty() {
        return None;
    }
    if let Some(name) = path.strip_suffix("/tags") {
        return Some(Route::Tags(name));
    }
    let split = |sep: &str| {
        path.rsplit_once(sep)
            .filter(|(name, last)| !name.is_empty() && !last.is_empty() && !last.contains('/'))
    };
    if let Some(rest) = path.strip_suffix("/referrers") {
        return rest
            .rsplit_once("/manifests/")
            .filter(|(name, d)| !name.is_empty() && !d.is_empty() && !d.contains('/'))
            .map(|(name, d)| Route::Referrers(name, d));
    }
    if let Some((name, r)) = split("/manifests/") {
        return Some(Route::Manifest(name, r));
    }
    if let Some((name, t)) = split("/tags/") {
        return Some(Route::Tag(name, t));
    }
    Some(Route::Repository(path))
}

async fn repository_path(
    State(state): State<AppState>,
    Path(path): Path<String>,
    method: Method,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    req: axum::extract::Request,
) -> Result<Response, ApiError> {
    let route = parse_route(&path).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "NAME_UNKNOWN",
            "repository not found",
        )
    })?;
    let read = [Method::GET, Method::HEAD];
    match &route {
        Route::Tag(..) => only(&method, &[Method::DELETE])?,
        _ => only(&method, &read)?,
    }
    let addr = client(req.extensions());
    let viewer = viewer(&state, &headers, addr).await?;
    let b = &state.browse;
    match route {
        Route::Repository(name) => Ok(json(StatusCode::OK, &b.repository(&viewer, name).await?)),
        Route::Tags(name) => tags(&state, &viewer, name, query.as_deref()).await,
        Route::Manifest(name, reference) => manifest(&state, &viewer, name, reference).await,
        Route::Referrers(name, digest) => {
            referrers(&state, &viewer, name, digest, query.as_deref()).await
        }
        Route::Tag(name, tag) => delete_tag(&state, &viewer, name, tag).await,
    }
}

#[utoipa::path(get, path = "/api/v1/repositories/{name}", tag = "catalog",
    params(("name" = String, Path, description = "Repository name; may contain slashes")),
    responses(
        (status = 200, description = "The repository", body = RepoSummary),
        (status = 404, description = "Unknown, or not visible to the caller")))]
#[allow(dead_code)]
fn repository_doc() {}

#[utoipa::path(get, path = "/api/v1/repositories/{name}/tags", tag = "catalog",
    params(("name" = String, Path, description = "Repository name; may contain slashes"), RepoQuery),
    responses(
        (status = 200, description = "A page of the repository's tags", body = Page<TagSummary>),
        (status = 400, description = "A bad query value"),
        (status = 404, description = "Unknown, or not visible to the caller")))]
async fn tags(
    state: &AppState,
    viewer: &Viewer,
    name: &str,
    query: Option<&str>,
) -> Result<Response, ApiError> {
    let q: RepoQuery = parse_query(query)?;
    Ok(json(
        StatusCode::OK,
        &state.browse.tags(viewer, name, &q).await?,
    ))
}

#[utoipa::path(get, path = "/api/v1/repositories/{name}/manifests/{reference}", tag = "catalog",
    params(
        ("name" = String, Path, description = "Repository name; may contain slashes"),
        ("reference" = String, Path, description = "A tag or a digest")),
    responses(
        (status = 200, description = "The manifest: layers, image config, platforms", body = ManifestView),
        (status = 404, description = "Unknown, or not visible to the caller")))]
async fn manifest(
    state: &AppState,
    viewer: &Viewer,
    name: &str,
    reference: &str,
) -> Result<Response, ApiError> {
    Ok(json(
        StatusCode::OK,
        &state.browse.manifest(viewer, name, reference).await?,
    ))
}

#[derive(serde::Deserialize, Default, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct ReferrersQuery {
    /// Only referrers of this artifact type.
    #[serde(rename = "artifactType")]
    #[param(rename = "artifactType")]
    artifact_type: Option<String>,
}

#[utoipa::path(get, path = "/api/v1/repositories/{name}/manifests/{digest}/referrers", tag = "catalog",
    params(
        ("name" = String, Path, description = "Repository name; may contain slashes"),
        ("digest" = String, Path, description = "The subject manifest's digest"),
        ReferrersQuery),
    responses(
        (status = 200, description = "Manifests whose subject is this one, newest first", body = Vec<ReferrerView>),
        (status = 400, description = "A bad query value"),
        (status = 404, description = "Unknown, or not visible to the caller")))]
async fn referrers(
    state: &AppState,
    viewer: &Viewer,
    name: &str,
    digest: &str,
    query: Option<&str>,
) -> Result<Response, ApiError> {
    let q: ReferrersQuery = parse_query(query)?;
    let list = state
        .browse
        .referrers(viewer, name, digest, q.artifact_type.as_deref())
        .await?;
    Ok(json(StatusCode::OK, &list))
}

#[utoipa::path(delete, path = "/api/v1/repositories/{name}/tags/{tag}", tag = "catalog",
    params(
        ("name" = String, Path, description = "Repository name; may contain slashes"),
        ("tag" = String, Path, description = "The tag to delete; its manifest stays")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "Anonymous, and the repository is visible but needs a user with the delete right"),
        (status = 403, description = "The caller may pull but not delete"),
        (status = 404, description = "Unknown tag or repository, or not visible to the caller"),
        (status = 405, description = "Deletes are disabled on this registry")))]
async fn delete_tag(
    state: &AppState,
    viewer: &Viewer,
    name: &str,
    tag: &str,
) -> Result<Response, ApiError> {
    match state.browse.delete_tag(viewer, name, tag).await {
        Ok(()) => Ok(StatusCode::NO_CONTENT.into_response()),
        // Anonymous callers are asked to sign in, as /v2/ does.
        Err(BrowseError::Denied) if viewer.is_anonymous() => {
            Err(unauthorized("authentication required to delete"))
        }
        Err(e) => Err(e.into()),
    }
}

/// The OpenAPI document of `/api/v1`.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "wharf web catalog API",
        description = "Browse repositories, tags, manifests and referrers of a wharf registry. \
            Auth: none (anonymous: public repositories only), `Authorization: Bearer <token from /token>`, \
            or `Authorization: Basic`. Errors: `{\"errors\":[{\"code\",\"message\"}]}`."
    ),
    paths(stats, repositories, repository_doc, tags, manifest, referrers, delete_tag),
    components(schemas(
        Sort, Stats, RepoSummary, TagSummary, ManifestView, LayerView, PlatformView,
        ImageConfigView, HistoryView, ReferrerView, Page<RepoSummary>, Page<TagSummary>
    ))
)]
pub struct ApiDoc;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_matched_from_their_end() {
        assert_eq!(parse_route("a/b"), Some(Route::Repository("a/b")));
        assert_eq!(parse_route("a/b/tags"), Some(Route::Tags("a/b")));
        assert_eq!(parse_route("a/b/tags/v1"), Some(Route::Tag("a/b", "v1")));
        assert_eq!(
            parse_route("a/b/manifests/latest"),
            Some(Route::Manifest("a/b", "latest"))
        );
        assert_eq!(
            parse_route("a/manifests/x/manifests/sha256:00/referrers"),
            Some(Route::Referrers("a/manifests/x", "sha256:00"))
        );
        assert_eq!(parse_route(""), None);
        assert_eq!(parse_route("/manifests/x/referrers"), None);
    }
}
