//! HTTP side of auth: the token endpoint (`GET`/`POST /token`) and the check
//! in front of every `/v2/` route, with the challenges docker expects.
//!
//! Calls the auth service; parses headers and forms, nothing more.

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, RawQuery, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde_json::json;

use super::{ApiError, AppState};
use crate::auth::scope::{Actions, Scope, parse_scope};
use crate::auth::{AccessClaims, Auth, AuthError, IssuedToken, Principal};
use crate::names::RepoName;

/// Largest token request form we read.
const MAX_FORM_BYTES: usize = 64 * 1024;

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::InvalidCredentials => {
                ApiError::new(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", e.to_string())
                    .with_header(header::WWW_AUTHENTICATE, "Basic realm=\"wharf\"")
            }
            AuthError::RateLimited { retry_after } => ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "TOOMANYREQUESTS",
                e.to_string(),
            )
            .with_header(header::RETRY_AFTER, &retry_after.to_string()),
            AuthError::InvalidToken(_) => {
                ApiError::new(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", e.to_string())
            }
            AuthError::InvalidScope(_) => ApiError::bad_request("NAME_INVALID", e.to_string()),
            AuthError::UnknownService(_) | AuthError::BadRequest(_) => {
                ApiError::bad_request("UNSUPPORTED", e.to_string())
            }
            AuthError::NoAdmin
            | AuthError::Key(_)
            | AuthError::Internal(_)
            | AuthError::Catalog(_) => {
                tracing::error!(error = %e, "auth internal error");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "UNKNOWN",
                    "internal server error",
                )
            }
        }
    }
}

/// What a route needs before it runs.
pub enum Need {
    /// `GET /v2/`: any valid token.
    Base,
    /// `/v2/_catalog`: a token with the catalog scope.
    Catalog,
    /// These actions on each of these repositories.
    Repos(Vec<(RepoName, Actions)>),
}

fn challenge_scope(need: &Need) -> Option<String> {
    match need {
        Need::Base => None,
        Need::Catalog => Some("registry:catalog:*".into()),
        Need::Repos(repos) => Some(
            repos
                .iter()
                .map(|(r, a)| {
                    // Writers are asked for pull too, as distribution does.
                    let a = if a.contains(Actions::PUSH) {
                        a.union(Actions::PULL)
                    } else {
                        *a
                    };
                    format!("repository:{r}:{a}")
                })
                .collect::<Vec<_>>()
                .join(" "),
        ),
    }
}

fn realm(auth: &Auth, headers: &HeaderMap) -> String {
    if let Some(r) = &auth.config().realm {
        return r.clone();
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| {
            h.len() <= 255
                && h.bytes().all(|b| {
                    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']')
                })
        })
        .unwrap_or("localhost");
    let scheme = if auth.config().https { "https" } else { "http" };
    format!("{scheme}://{host}/token")
}

fn unauthorized(auth: &Auth, headers: &HeaderMap, need: &Need, error: Option<&str>) -> ApiError {
    let value = challenge_value(auth, headers, need, error);
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "UNAUTHORIZED",
        "authentication required",
    )
    .with_header(header::WWW_AUTHENTICATE, &value)
}

fn challenge_value(auth: &Auth, headers: &HeaderMap, need: &Need, error: Option<&str>) -> String {
    let mut value = format!(
        "Bearer realm=\"{}\",service=\"{}\"",
        realm(auth, headers),
        auth.config().service
    );
    if let Some(scope) = challenge_scope(need) {
        value.push_str(&format!(",scope=\"{scope}\""));
    }
    if let Some(e) = error {
        value.push_str(&format!(",error=\"{e}\""));
    }
    value
}

/// Checks the request's bearer token against what the route needs. Returns
/// the token's claims (None when auth is off).
pub fn authorize(
    state: &AppState,
    headers: &HeaderMap,
    need: &Need,
) -> Result<Option<AccessClaims>, ApiError> {
    let Some(auth) = &state.auth else {
        return Ok(None);
    };
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Err(unauthorized(auth, headers, need, None));
    };
    let token = value
        .to_str()
        .ok()
        .and_then(|v| {
            let (scheme, rest) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
        })
        .ok_or_else(|| unauthorized(auth, headers, need, Some("invalid_request")))?;
    let claims = auth.verify_access(token).map_err(|e| {
        tracing::debug!(error = %e, "refused a token");
        unauthorized(auth, headers, need, Some("invalid_token"))
    })?;
    let ok = match need {
        Need::Base => true,
        Need::Catalog => claims.has_catalog(),
        Need::Repos(repos) => repos
            .iter()
            .all(|(r, a)| claims.actions_on(r.as_str()).contains(*a)),
    };
    if ok {
        Ok(Some(claims))
    } else if claims.sub.is_empty() {
        // Anonymous: ask for credentials rather than deny outright.
        Err(unauthorized(
            auth,
            headers,
            need,
            Some("insufficient_scope"),
        ))
    } else {
        // 403 with the scope it lacks: the detail keeps docker from
        // retrying (it retries a bare "denied"), and the insufficient_scope
        // challenge (RFC 6750 3.1) lets clients such as oras ask for a
        // token with more actions.
        let www = challenge_value(auth, headers, need, Some("insufficient_scope"));
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "DENIED",
            "requested access to the resource is denied",
        )
        .with_detail(serde_json::json!({ "scope": challenge_scope(need) }))
        .with_header(header::WWW_AUTHENTICATE, &www))
    }
}

fn client_ip(req: &Request) -> Option<IpAddr> {
    req.extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
}

/// `Authorization: Basic` credentials, if any. A malformed header is a 401.
fn basic_credentials(headers: &HeaderMap) -> Result<Option<(String, String)>, ApiError> {
    let Some(v) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let bad = || ApiError::from(AuthError::InvalidCredentials);
    let v = v.to_str().map_err(|_| bad())?;
    let (scheme, rest) = v.split_once(' ').ok_or_else(bad)?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(bad());
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(rest.trim())
        .map_err(|_| bad())?;
    let text = String::from_utf8(decoded).map_err(|_| bad())?;
    let (user, pass) = text.split_once(':').ok_or_else(bad)?;
    Ok(Some((user.to_owned(), pass.to_owned())))
}

fn parse_scopes<'a>(raw: impl Iterator<Item = &'a str>) -> Result<Vec<Scope>, ApiError> {
    raw.flat_map(|s| s.split(' '))
        .filter(|s| !s.is_empty())
        .map(|s| parse_scope(s).ok_or_else(|| AuthError::InvalidScope(s.to_owned()).into()))
        .collect()
}

fn token_response(issued: IssuedToken, refresh: Option<String>) -> Response {
    let issued_at = chrono::DateTime::from_timestamp(issued.issued_at as i64, 0)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let mut body = json!({
        "token": issued.token,
        "access_token": issued.token,
        "expires_in": issued.expires_in,
        "issued_at": issued_at,
    });
    if let Some(r) = refresh {
        body["refresh_token"] = json!(r);
    }
    let mut resp = axum::Json(body).into_response();
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    resp
}

fn token_auth(state: &AppState) -> Result<&Auth, ApiError> {
    state.auth.as_deref().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "UNSUPPORTED",
            "auth is not enabled on this registry",
        )
    })
}

/// `GET /token?service=&scope=...`, with Basic credentials or anonymous.
pub async fn get_token(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
    req: Request,
) -> Result<Response, ApiError> {
    let auth = token_auth(&state)?;
    let params: Vec<(String, String)> = serde_urlencoded::from_str(query.as_deref().unwrap_or(""))
        .map_err(|_| ApiError::bad_request("UNSUPPORTED", "malformed query string"))?;
    let get = |k: &str| {
        params
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    };
    auth.check_service(get("service"))?;
    let scopes = parse_scopes(
        params
            .iter()
            .filter(|(k, _)| k == "scope")
            .map(|(_, v)| v.as_str()),
    )?;
    let principal = match basic_credentials(req.headers())? {
        Some((user, pass)) => Principal::User(auth.login(&user, &pass, client_ip(&req)).await?),
        None => Principal::Anonymous,
    };
    let refresh = match (&principal, get("offline_token")) {
        (Principal::User(u), Some("true")) => Some(auth.issue_refresh(u)?),
        _ => None,
    };
    let issued = auth.issue(&principal, &scopes).await?;
    Ok(token_response(issued, refresh))
}

/// `POST /token`: the OAuth2 form `docker login` uses (grant_type password
/// or refresh_token).
pub async fn post_token(State(state): State<AppState>, req: Request) -> Result<Response, ApiError> {
    let auth = token_auth(&state)?;
    let client = client_ip(&req);
    let body = axum::body::to_bytes(req.into_body(), MAX_FORM_BYTES)
        .await
        .map_err(|_| {
            ApiError::bad_request("UNSUPPORTED", "token request body too large or unreadable")
        })?;
    let form: Vec<(String, String)> = serde_urlencoded::from_bytes(&body)
        .map_err(|_| ApiError::bad_request("UNSUPPORTED", "malformed token request form"))?;
    let get = |k: &str| {
        form.iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    };
    auth.check_service(get("service"))?;
    let scopes = parse_scopes(get("scope").into_iter())?;
    let (user, refresh) = match get("grant_type") {
        Some("password") => {
            let (Some(u), Some(p)) = (get("username"), get("password")) else {
                return Err(
                    AuthError::BadRequest("username and password are required".into()).into(),
                );
            };
            let user = auth.login(u, p, client).await?;
            let refresh = match get("access_type") {
                Some("offline") => Some(auth.issue_refresh(&user)?),
                _ => None,
            };
            (user, refresh)
        }
        Some("refresh_token") => {
            let Some(t) = get("refresh_token") else {
                return Err(AuthError::BadRequest("refresh_token is required".into()).into());
            };
            (auth.refresh(t).await?, None)
        }
        other => {
            return Err(AuthError::BadRequest(format!("unsupported grant_type {other:?}")).into());
        }
    };
    let issued = auth.issue(&Principal::User(user), &scopes).await?;
    Ok(token_response(issued, refresh))
}

/// For a method on `/token` that is neither GET nor POST.
pub async fn token_method_not_allowed() -> ApiError {
    ApiError::method_not_allowed()
}
