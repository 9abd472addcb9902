//! The web UI at `/`: server-rendered HTML pages over the `browse` service,
//! sign-in with a session cookie, CSRF-checked forms, and the embedded
//! assets.
//!
//! Layer: `web` -> `browse` (every listing, manifest, stats and the tag
//! delete), `fleet` (the nodes and deployments pages) and `auth` (sign-in,
//! sessions). It never queries the catalog or
//! the registry itself. Routes (one `.merge` in `api::router`):
//! - `GET /` repositories (`q` search, `sort=name|pushed`, `offset`), stats;
//! - `GET /r/<repo>` a repository's tags and pull commands;
//! - `GET /r/<repo>/-/manifest/<tag|digest>` a manifest: platforms, layers,
//!   config, history, referrers;
//! - `GET|POST /r/<repo>/-/delete/<tag>` the confirmation, then the delete;
//! - `GET /nodes`, `GET /deployments`, `GET /deployments/<name>`: the
//!   fleet (admins only), from the `fleet` service;
//! - `GET|POST /login`, `POST /logout`;
//! - `GET /static/<hash>/<file>`, `GET /favicon.ico`.
//!
//! (`-` cannot be a component of a repository name, so `/-/` ends the name.)
//! A repository the viewer may not pull is answered exactly like an unknown
//! one: the same 404 page. Query strings and form bodies are bounded; every
//! value shown goes through maud's escaping (`pages.rs`).

pub mod assets;
pub mod format;
pub mod pages;
pub mod session;

use std::net::SocketAddr;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, FromRequestParts, Path, RawQuery, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use maud::Markup;

use self::session::{CSRF_COOKIE, Ctx, SESSION_COOKIE, SESSION_TTL_SECS, set_cookie};
use crate::api::AppState;
use crate::auth::AuthError;
use crate::auth::scope::Actions;
use crate::browse::{BrowseError, RepoQuery, Sort};

/// Largest query string a page reads.
const MAX_QUERY_BYTES: usize = 2048;
/// Largest form body a POST reads.
const MAX_FORM_BYTES: usize = 16 * 1024;
/// Repositories or tags per page.
const PAGE_SIZE: u32 = 25;

/// The UI's routes, merged into the application router.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(index))
        .route("/r/{*path}", get(repo_get).post(repo_post))
        .route("/nodes", get(nodes))
        .route("/deployments", get(deployments))
        .route("/deployments/{name}", get(deployment))
        .route("/login", get(login_form).post(login))
        .route("/logout", post(logout))
        .route("/static/{version}/{name}", get(assets::serve))
        .route("/favicon.ico", get(assets::favicon))
}

/// Why a page could not be shown.
#[derive(Debug)]
pub enum WebError {
    /// Unknown, or not visible to the viewer: the same page either way.
    NotFound,
    Forbidden(String),
    BadRequest(String),
    TooManyRequests(u64),
    Internal,
}

impl WebError {
    /// Logs an internal error (never shown to the browser).
    pub fn internal(e: impl std::fmt::Display) -> WebError {
        tracing::error!(error = %e, "web page failed");
        WebError::Internal
    }

    fn page(&self, ctx: Option<&Ctx>) -> Response {
        let (status, title, message) = match self {
            WebError::NotFound => (
                StatusCode::NOT_FOUND,
                "Not found",
                "There is no such repository, tag or manifest here — or you are not signed in \
                 as someone who may see it."
                    .to_owned(),
            ),
            WebError::Forbidden(m) => (StatusCode::FORBIDDEN, "Not allowed", m.clone()),
            WebError::BadRequest(m) => (StatusCode::BAD_REQUEST, "Bad request", m.clone()),
            WebError::TooManyRequests(after) => (
                StatusCode::TOO_MANY_REQUESTS,
                "Too many attempts",
                format!("Too many failed sign-ins. Try again in {after} seconds."),
            ),
            WebError::Internal => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "Something went wrong",
                "The server could not show this page. The error is in its log.".to_owned(),
            ),
        };
        let mut resp = html(status, pages::error(ctx, status.as_u16(), title, &message));
        if let WebError::TooManyRequests(after) = self
            && let Ok(v) = HeaderValue::from_str(&after.to_string())
        {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
        resp
    }
}

impl From<BrowseError> for WebError {
    fn from(e: BrowseError) -> Self {
        match e {
            BrowseError::NotFound { .. } => WebError::NotFound,
            BrowseError::Denied => {
                WebError::Forbidden("You may not delete tags in this repository.".into())
            }
            BrowseError::Invalid(m) => WebError::BadRequest(m),
            BrowseError::Unsupported(m) => WebError::Forbidden(m),
            BrowseError::Internal(m) => WebError::internal(m),
        }
    }
}

/// An HTML response with the headers every page has: no caching (pages
/// depend on who is signed in), a strict CSP (only our own script and
/// styles), no framing, no sniffing.
fn html(status: StatusCode, markup: Markup) -> Response {
    let mut resp = (status, markup.into_string()).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
             connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    resp
}

/// A 303 to a path of ours.
fn see_other(location: &str) -> Response {
    let mut resp = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// Adds the cookies the context wants set.
fn finish(ctx: &Ctx, result: Result<Response, WebError>) -> Response {
    let mut resp = result.unwrap_or_else(|e| e.page(Some(ctx)));
    for c in &ctx.set_cookies {
        resp.headers_mut().append(header::SET_COOKIE, c.clone());
    }
    resp
}

/// The page context, read from the request's cookies; a request over TLS
/// (the TLS listener marks it with its `Peer`) gets `Secure` cookies.
pub struct Page(pub Ctx);

impl FromRequestParts<AppState> for Page {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        let secure = parts
            .extensions
            .get::<ConnectInfo<crate::tls::Peer>>()
            .is_some();
        let client = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip());
        let mut ctx = Ctx::load(state, &parts.headers, secure)
            .await
            .map_err(|e| e.page(None))?;
        ctx.client = client;
        ctx.here = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_else(|| "/".to_owned());
        Ok(Page(ctx))
    }
}

/// The parameters of a query string, bounded.
fn query_params(raw: Option<&str>) -> Result<Vec<(String, String)>, WebError> {
    let raw = raw.unwrap_or("");
    if raw.len() > MAX_QUERY_BYTES {
        return Err(WebError::BadRequest("The address is too long.".into()));
    }
    serde_urlencoded::from_str(raw)
        .map_err(|_| WebError::BadRequest("The address has a malformed query string.".into()))
}

fn param<'a>(params: &'a [(String, String)], key: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// A form body, bounded.
async fn form(body: Body) -> Result<Vec<(String, String)>, WebError> {
    let bytes = axum::body::to_bytes(body, MAX_FORM_BYTES)
        .await
        .map_err(|_| WebError::BadRequest("The form is too large.".into()))?;
    serde_urlencoded::from_bytes(&bytes)
        .map_err(|_| WebError::BadRequest("The form is malformed.".into()))
}

/// The listing query of a page's `q`, `sort` and `offset`.
fn listing_query(params: &[(String, String)]) -> Result<RepoQuery, WebError> {
    let sort = match param(params, "sort") {
        None | Some("") | Some("name") => Sort::Name,
        Some("pushed") => Sort::Pushed,
        Some(_) => return Err(WebError::BadRequest("sort is `name` or `pushed`.".into())),
    };
    let offset = match param(params, "offset").filter(|s| !s.is_empty()) {
        None => None,
        Some(s) => Some(
            s.parse::<u64>()
                .map_err(|_| WebError::BadRequest("offset must be a number.".into()))?,
        ),
    };
    Ok(RepoQuery {
        q: param(params, "q").map(str::to_owned),
        sort,
        limit: Some(PAGE_SIZE),
        offset,
    })
}

// ---- pages -------------------------------------------------------------------

/// `GET /`: the repositories the viewer may see.
async fn index(State(state): State<AppState>, Page(ctx): Page, RawQuery(q): RawQuery) -> Response {
    let result = async {
        let params = query_params(q.as_deref())?;
        let query = listing_query(&params)?;
        let page = state.browse.repositories(&ctx.viewer, &query).await?;
        let stats = state.browse.stats(&ctx.viewer).await?;
        Ok(html(
            StatusCode::OK,
            pages::repositories(&ctx, &query, &page, &stats),
        ))
    }
    .await;
    finish(&ctx, result)
}

/// The fleet pages are for admins (everyone when auth is off): signed out,
/// the sign-in page first; signed in without admin rights, a 403 page.
/// Returns the refusal, or None for an admin.
fn fleet_refusal(ctx: &Ctx) -> Option<Response> {
    if ctx.viewer.is_admin() {
        None
    } else if ctx.user.is_none() {
        Some(see_other(&pages::login_url(&ctx.here)))
    } else {
        Some(WebError::Forbidden("Only admins see the fleet.".into()).page(Some(ctx)))
    }
}

fn fleet_error(e: crate::fleet::FleetError) -> WebError {
    match e {
        crate::fleet::FleetError::NotFound(_) | crate::fleet::FleetError::Invalid(_) => {
            WebError::NotFound
        }
        e => WebError::internal(e),
    }
}

/// `GET /nodes`.
async fn nodes(State(state): State<AppState>, Page(ctx): Page) -> Response {
    if let Some(refused) = fleet_refusal(&ctx) {
        return refused;
    }
    let result = state
        .fleet
        .nodes()
        .await
        .map(|n| html(StatusCode::OK, pages::nodes(&ctx, &n)))
        .map_err(fleet_error);
    finish(&ctx, result)
}

/// `GET /deployments`.
async fn deployments(State(state): State<AppState>, Page(ctx): Page) -> Response {
    if let Some(refused) = fleet_refusal(&ctx) {
        return refused;
    }
    let result = state
        .fleet
        .deployments()
        .await
        .map(|d| html(StatusCode::OK, pages::deployments(&ctx, &d)))
        .map_err(fleet_error);
    finish(&ctx, result)
}

/// `GET /deployments/<name>`.
async fn deployment(
    State(state): State<AppState>,
    Page(ctx): Page,
    Path(name): Path<String>,
) -> Response {
    if let Some(refused) = fleet_refusal(&ctx) {
        return refused;
    }
    let result = state
        .fleet
        .deployment(&name, true)
        .await
        .map(|d| html(StatusCode::OK, pages::deployment(&ctx, &d)))
        .map_err(fleet_error);
    finish(&ctx, result)
}

/// What follows `/r/`: a repository page, a manifest page, a delete.
enum RepoPath<'a> {
    Repo(&'a str),
    Manifest(&'a str, &'a str),
    Delete(&'a str, &'a str),
}

fn parse_repo_path(path: &str) -> Option<RepoPath<'_>> {
    let path = path.trim_end_matches('/');
    match path.split_once("/-/") {
        None => Some(RepoPath::Repo(path)),
        Some((repo, rest)) => match rest.split_once('/')? {
            ("manifest", r) if !r.is_empty() && !r.contains('/') => {
                Some(RepoPath::Manifest(repo, r))
            }
            ("delete", t) if !t.is_empty() && !t.contains('/') => Some(RepoPath::Delete(repo, t)),
            _ => None,
        },
    }
}

/// `GET /r/...`.
async fn repo_get(
    State(state): State<AppState>,
    Page(ctx): Page,
    Path(path): Path<String>,
    RawQuery(q): RawQuery,
) -> Response {
    let result = async {
        let params = query_params(q.as_deref())?;
        match parse_repo_path(&path).ok_or(WebError::NotFound)? {
            RepoPath::Repo(repo) => {
                let query = listing_query(&params)?;
                let summary = state.browse.repository(&ctx.viewer, repo).await?;
                let tags = state.browse.tags(&ctx.viewer, repo, &query).await?;
                let can_delete = ctx.viewer.allowed(repo).contains(Actions::DELETE);
                let deleted = param(&params, "deleted").filter(|t| crate::names::valid_tag(t));
                Ok(html(
                    StatusCode::OK,
                    pages::repository(&ctx, &summary, &query, &tags, can_delete, deleted),
                ))
            }
            RepoPath::Manifest(repo, reference) => {
                let view = state.browse.manifest(&ctx.viewer, repo, reference).await?;
                let referrers = state
                    .browse
                    .referrers(&ctx.viewer, repo, &view.digest, None)
                    .await?;
                let by_tag = crate::names::valid_tag(reference).then_some(reference);
                Ok(html(
                    StatusCode::OK,
                    pages::manifest(&ctx, &view, &referrers, by_tag),
                ))
            }
            RepoPath::Delete(repo, tag) => {
                // Unknown tag or invisible repository: 404 first; then the right.
                let view = state.browse.manifest(&ctx.viewer, repo, tag).await?;
                if !crate::names::valid_tag(tag) {
                    return Err(WebError::NotFound);
                }
                if !ctx.viewer.allowed(repo).contains(Actions::DELETE) {
                    return Err(BrowseError::Denied.into());
                }
                Ok(html(
                    StatusCode::OK,
                    pages::confirm_delete(&ctx, repo, tag, &view),
                ))
            }
        }
    }
    .await;
    finish(&ctx, result)
}

/// `POST /r/<repo>/-/delete/<tag>`: deletes the tag, then back to the
/// repository with a notice.
async fn repo_post(
    State(state): State<AppState>,
    Page(ctx): Page,
    Path(path): Path<String>,
    body: Body,
) -> Response {
    let result = async {
        let form = form(body).await?;
        ctx.check_csrf(param(&form, "csrf"))?;
        let Some(RepoPath::Delete(repo, tag)) = parse_repo_path(&path) else {
            return Err(WebError::NotFound);
        };
        state.browse.delete_tag(&ctx.viewer, repo, tag).await?;
        Ok(see_other(&format!("/r/{repo}?deleted={tag}")))
    }
    .await;
    finish(&ctx, result)
}

/// Where to go after signing in: a path of ours, never another site.
fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n)
            if n.starts_with('/')
                && !n.starts_with("//")
                && n.len() <= 1024
                && !n.contains('\\')
                && !n.chars().any(char::is_control) =>
        {
            n.to_owned()
        }
        _ => "/".to_owned(),
    }
}

fn sign_in_disabled() -> WebError {
    WebError::Forbidden(
        "Sign-in is not enabled on this registry: auth is off, so everything is visible.".into(),
    )
}

/// `GET /login`.
async fn login_form(
    State(state): State<AppState>,
    Page(ctx): Page,
    RawQuery(q): RawQuery,
) -> Response {
    let result = async {
        if state.auth.is_none() {
            return Err(sign_in_disabled());
        }
        let params = query_params(q.as_deref())?;
        let next = safe_next(param(&params, "next"));
        if ctx.user.is_some() {
            return Ok(see_other(&next));
        }
        Ok(html(StatusCode::OK, pages::login(&ctx, "", &next, None)))
    }
    .await;
    finish(&ctx, result)
}

/// `POST /login`: checks the password (rate-limited like `/token`), then
/// sets the session cookie and goes on to `next`.
async fn login(State(state): State<AppState>, Page(ctx): Page, body: Body) -> Response {
    let result = async {
        let Some(auth) = &state.auth else {
            return Err(sign_in_disabled());
        };
        let form = form(body).await?;
        ctx.check_csrf(param(&form, "csrf"))?;
        let next = safe_next(param(&form, "next"));
        let username = param(&form, "username").unwrap_or("").trim();
        let password = param(&form, "password").unwrap_or("");
        if username.is_empty()
            || password.is_empty()
            || username.len() > 255
            || password.len() > 1024
        {
            return Ok(html(
                StatusCode::BAD_REQUEST,
                pages::login(
                    &ctx,
                    username,
                    &next,
                    Some("Enter a username and a password."),
                ),
            ));
        }
        match auth.login(username, password, ctx.client).await {
            Ok(user) => {
                let (token, _) = auth
                    .issue_session(&user, SESSION_TTL_SECS)
                    .map_err(WebError::internal)?;
                let mut resp = see_other(&next);
                let h = resp.headers_mut();
                h.append(
                    header::SET_COOKIE,
                    set_cookie(SESSION_COOKIE, &token, Some(SESSION_TTL_SECS), ctx.secure),
                );
                h.append(
                    header::SET_COOKIE,
                    set_cookie(CSRF_COOKIE, "", Some(0), ctx.secure),
                );
                tracing::info!(user = %user.name, "signed in to the web catalog");
                Ok(resp)
            }
            Err(AuthError::InvalidCredentials) => Ok(html(
                StatusCode::UNAUTHORIZED,
                pages::login(&ctx, username, &next, Some("Invalid username or password.")),
            )),
            Err(AuthError::RateLimited { retry_after }) => {
                Err(WebError::TooManyRequests(retry_after))
            }
            Err(e) => Err(WebError::internal(e)),
        }
    }
    .await;
    finish(&ctx, result)
}

/// `POST /logout`: clears the session cookie.
async fn logout(Page(ctx): Page, body: Body) -> Response {
    let result = async {
        let form = form(body).await?;
        ctx.check_csrf(param(&form, "csrf"))?;
        let mut resp = see_other("/");
        resp.headers_mut().append(
            header::SET_COOKIE,
            set_cookie(SESSION_COOKIE, "", Some(0), ctx.secure),
        );
        Ok(resp)
    }
    .await;
    finish(&ctx, result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_paths() {
        assert!(matches!(
            parse_repo_path("team/app"),
            Some(RepoPath::Repo("team/app"))
        ));
        assert!(matches!(
            parse_repo_path("team/app/-/manifest/latest"),
            Some(RepoPath::Manifest("team/app", "latest"))
        ));
        assert!(matches!(
            parse_repo_path("a/-/delete/v1"),
            Some(RepoPath::Delete("a", "v1"))
        ));
        assert!(parse_repo_path("a/-/other/x").is_none());
        assert!(parse_repo_path("a/-/manifest/").is_none());
        assert!(parse_repo_path("a/-/manifest/x/y").is_none());
    }

    #[test]
    fn next_stays_on_this_site() {
        assert_eq!(safe_next(Some("/r/a")), "/r/a");
        assert_eq!(safe_next(Some("//evil.example/")), "/");
        assert_eq!(safe_next(Some("https://evil.example/")), "/");
        assert_eq!(safe_next(Some("/\\evil")), "/");
        assert_eq!(safe_next(None), "/");
    }
}
