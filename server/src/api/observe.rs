//! What the server tells its operator: the middleware in front of every
//! route (request id, metrics, the `/v2/` access log) and the `/metrics`,
//! `/healthz` and `/readyz` endpoints.
//!
//! Kept cheap, as every manifest GET goes through it: the route label is
//! found by suffix matching (no regex), counters are atomics resolved once,
//! and only bodies of unknown length (streamed blobs) and request bodies of
//! writes are wrapped to count their bytes. The access line never carries
//! headers, so no `Authorization` value or token reaches a log.
//!
//! Calls the registry (readiness, catalog figures) and `metrics`.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderName, HeaderValue, Method, StatusCode, Uri, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use tracing::Instrument;

use super::{API_VERSION, AppState, Route, parse_route};
use crate::metrics::{Metrics, RouteLabel};

pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The route label of a request path.
pub fn route_label(path: &str) -> RouteLabel {
    let Some(rest) = path.strip_prefix("/v2") else {
        return if path == "/token" {
            RouteLabel::Token
        } else {
            RouteLabel::Other
        };
    };
    let rest = match rest.strip_prefix('/') {
        None if rest.is_empty() => return RouteLabel::Base,
        None => return RouteLabel::Other,
        Some("") => return RouteLabel::Base,
        Some(r) => r,
    };
    match parse_route(rest) {
        Some(Route::Catalog) => RouteLabel::Catalog,
        Some(Route::Tags(_)) => RouteLabel::Tags,
        Some(Route::Manifest(..)) => RouteLabel::Manifest,
        Some(Route::UploadStart(_) | Route::Upload(..)) => RouteLabel::BlobUpload,
        Some(Route::Blob(..)) => RouteLabel::Blob,
        Some(Route::Referrers(..)) => RouteLabel::Referrers,
        None => RouteLabel::Other,
    }
}

/// A client's `X-Request-Id` is kept when it is 1 to 128 characters of
/// `[A-Za-z0-9._:/+=@-]`; anything else is replaced.
fn sane_request_id(v: &HeaderValue) -> bool {
    let b = v.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && b.iter().all(|c| {
            c.is_ascii_alphanumeric()
                || matches!(c, b'.' | b'_' | b':' | b'/' | b'+' | b'=' | b'@' | b'-')
        })
}

/// A new request id: a random per-process prefix and a counter, 20 hex
/// digits, unique across replicas in practice and cheap to make.
fn new_request_id() -> HeaderValue {
    use std::sync::OnceLock;
    static PREFIX: OnceLock<u32> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let prefix = *PREFIX.get_or_init(|| uuid::Uuid::new_v4().as_u128() as u32);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let mut buf = [0u8; 20];
    let hex = b"0123456789abcdef";
    for (i, slot) in buf.iter_mut().enumerate() {
        let nibble = if i < 8 {
            (prefix >> (28 - 4 * i)) & 0xf
        } else {
            ((n >> (44 - 4 * (i - 8))) & 0xf) as u32
        };
        *slot = hex[nibble as usize];
    }
    HeaderValue::from_bytes(&buf).unwrap_or_else(|_| HeaderValue::from_static("0"))
}

/// The authenticated user of a request, put on the response by the
/// handlers for the access log.
#[derive(Clone, Debug)]
pub struct AccessUser(pub String);

pub fn with_user(resp: Response, claims: Option<&crate::auth::AccessClaims>) -> Response {
    with_user_name(resp, claims.map(|c| c.sub.clone()))
}

pub fn with_user_name(mut resp: Response, user: Option<String>) -> Response {
    if let Some(u) = user.filter(|u| !u.is_empty()) {
        resp.extensions_mut().insert(AccessUser(u));
    }
    resp
}

/// A peer address for the log, `-` when unknown, formatted without an
/// intermediate string.
struct Remote(Option<SocketAddr>);

impl std::fmt::Display for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(a) => a.fmt(f),
            None => f.write_str("-"),
        }
    }
}

/// What the access line of a request says.
struct Access {
    method: Method,
    uri: Uri,
    route: RouteLabel,
    status: u16,
    bytes_in: u64,
    remote: Option<SocketAddr>,
    user: Option<String>,
    request_id: HeaderValue,
    started: Instant,
}

impl Access {
    fn log(&self, bytes_out: u64) {
        tracing::info!(
            target: "wharf::access",
            request_id = %self.request_id.to_str().unwrap_or("-"),
            method = %self.method,
            route = %self.route.as_str(),
            path = %self.uri.path(),
            status = self.status,
            bytes_in = self.bytes_in,
            bytes_out,
            ms = (self.started.elapsed().as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0,
            remote = %Remote(self.remote),
            user = %self.user.as_deref().unwrap_or("-"),
            "access"
        );
    }
}

/// The middleware in front of every route: request id (kept or made, and
/// returned in `X-Request-Id`), the API version header, metrics and the
/// access line of `/v2/` requests.
pub async fn observe(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = route_label(req.uri().path());
    let metrics = &state.metrics;
    let _in_flight = metrics.in_flight();
    let request_id = match req.headers().get(X_REQUEST_ID) {
        Some(v) if sane_request_id(v) => v.clone(),
        _ => {
            // Also on the request, for the webhooks' `request.id`.
            let id = new_request_id();
            req.headers_mut().insert(X_REQUEST_ID, id.clone());
            id
        }
    };
    let method = req.method().clone();
    let counted_in = if method == Method::GET || method == Method::HEAD {
        None
    } else {
        let count = Arc::new(AtomicU64::new(0));
        let (parts, body) = req.into_parts();
        req = Request::from_parts(
            parts,
            Body::new(CountIn {
                inner: body,
                count: count.clone(),
            }),
        );
        Some(count)
    };
    let logged = state.access_log && route != RouteLabel::Token && route != RouteLabel::Other;
    let access_parts = logged.then(|| {
        (
            req.uri().clone(),
            req.extensions()
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0),
        )
    });
    // Requests without an access line (the token endpoint, /metrics, ...)
    // still get a debug line, as every request had before the access log.
    let debug_uri =
        (!logged && tracing::enabled!(tracing::Level::DEBUG)).then(|| req.uri().clone());
    let span = tracing::info_span!("request", request_id = %request_id.to_str().unwrap_or("-"));
    let mut resp = next.run(req).instrument(span).await;
    let status = resp.status().as_u16();
    metrics.request_done(route, status, started.elapsed());
    let bytes_in = counted_in.map_or(0, |c| c.load(Ordering::Relaxed));
    metrics.bytes_in(route, bytes_in);
    if let Some(uri) = debug_uri {
        tracing::debug!(
            method = %method, path = %uri.path(), status,
            ms = started.elapsed().as_secs_f64() * 1000.0, "request"
        );
    }
    let headers = resp.headers_mut();
    headers.insert(API_VERSION, HeaderValue::from_static("registry/2.0"));
    headers.insert(X_REQUEST_ID, request_id.clone());
    let access = access_parts.map(|(uri, remote)| Access {
        method,
        uri,
        route,
        status,
        bytes_in,
        remote,
        user: resp.extensions_mut().remove::<AccessUser>().map(|u| u.0),
        request_id,
        started,
    });
    match resp.body().size_hint().exact() {
        Some(n) => {
            metrics.bytes_out(route, n);
            if let Some(a) = access {
                a.log(n);
            }
            resp
        }
        None => {
            // A streamed body: count what is sent, log when it ends.
            let (parts, body) = resp.into_parts();
            Response::from_parts(
                parts,
                Body::new(CountOut {
                    inner: body,
                    sent: 0,
                    route,
                    metrics: state.metrics.clone(),
                    access: access.map(Box::new),
                }),
            )
        }
    }
}

/// A request body that counts its bytes.
struct CountIn {
    inner: Body,
    count: Arc<AtomicU64>,
}

impl HttpBody for CountIn {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(d) = frame.data_ref()
        {
            self.count.fetch_add(d.len() as u64, Ordering::Relaxed);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A streamed response body that counts what was sent and, when it ends
/// or the client goes away, adds it to the metrics and logs the access
/// line.
struct CountOut {
    inner: Body,
    sent: u64,
    route: RouteLabel,
    metrics: Arc<Metrics>,
    access: Option<Box<Access>>,
}

impl HttpBody for CountOut {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(d) = frame.data_ref()
        {
            self.sent += d.len() as u64;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for CountOut {
    fn drop(&mut self) {
        self.metrics.bytes_out(self.route, self.sent);
        if let Some(a) = &self.access {
            a.log(self.sent);
        }
    }
}

/// `GET /metrics`: every metric in the OpenMetrics text format. The catalog
/// figures are read again when they are older than the configured period.
pub async fn metrics(State(state): State<AppState>) -> Response {
    let m = &state.metrics;
    if m.stored_totals_due() {
        match state.registry.stored_totals().await {
            Ok(t) => m.set_stored_totals(t),
            Err(e) => {
                m.stored_totals_stale();
                tracing::warn!(error = %e, "metrics: cannot read the stored totals from the catalog");
            }
        }
    }
    (
        [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
        m.encode(),
    )
        .into_response()
}

/// `GET /healthz`: the process is up and serving.
pub async fn healthz() -> Response {
    (StatusCode::OK, "ok\n").into_response()
}

/// `GET /readyz`: 200 when the catalog and the store answer, else 503 with
/// the reason.
pub async fn readyz(State(state): State<AppState>) -> Response {
    match state.registry.ready().await {
        Ok(()) => (StatusCode::OK, "ready\n").into_response(),
        Err(reason) => {
            tracing::warn!(%reason, "not ready");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {reason}\n"),
            )
                .into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_labels() {
        assert_eq!(route_label("/v2/"), RouteLabel::Base);
        assert_eq!(route_label("/v2"), RouteLabel::Base);
        assert_eq!(route_label("/v2x"), RouteLabel::Other);
        assert_eq!(
            route_label("/v2/a/b/manifests/latest"),
            RouteLabel::Manifest
        );
        assert_eq!(route_label("/v2/a/blobs/sha256:00"), RouteLabel::Blob);
        assert_eq!(route_label("/v2/a/blobs/uploads/"), RouteLabel::BlobUpload);
        assert_eq!(route_label("/v2/a/blobs/uploads/x"), RouteLabel::BlobUpload);
        assert_eq!(route_label("/v2/a/tags/list"), RouteLabel::Tags);
        assert_eq!(route_label("/v2/_catalog"), RouteLabel::Catalog);
        assert_eq!(
            route_label("/v2/a/referrers/sha256:00"),
            RouteLabel::Referrers
        );
        assert_eq!(route_label("/v2/a/nothing"), RouteLabel::Other);
        assert_eq!(route_label("/token"), RouteLabel::Token);
        assert_eq!(route_label("/metrics"), RouteLabel::Other);
    }

    #[test]
    fn request_ids() {
        assert!(sane_request_id(&HeaderValue::from_static("abc-123_x.y")));
        assert!(!sane_request_id(&HeaderValue::from_static("")));
        assert!(!sane_request_id(&HeaderValue::from_static("a b")));
        assert!(!sane_request_id(
            &HeaderValue::from_str(&"a".repeat(129)).unwrap()
        ));
        let a = new_request_id();
        let b = new_request_id();
        assert_ne!(a, b);
        assert_eq!(a.len(), 20);
        assert!(sane_request_id(&a));
    }
}
