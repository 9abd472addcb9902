//! The one mapping from service errors to the wire: status, the spec's error
//! code and its JSON body (`{"errors":[{"code","message","detail"}]}`).
//! Internal failures are logged here and answered with a bare 500; their
//! details never reach the client.

use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::registry::RegistryError;

/// Boxed, so `Result<_, ApiError>` stays one pointer wide on the happy path.
#[derive(Debug)]
pub struct ApiError(Box<Inner>);

#[derive(Debug)]
struct Inner {
    status: StatusCode,
    code: &'static str,
    message: String,
    detail: serde_json::Value,
    headers: HeaderMap,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError(Box::new(Inner {
            status,
            code,
            message: message.into(),
            detail: serde_json::Value::Null,
            headers: HeaderMap::new(),
        }))
    }

    pub fn with_header(mut self, name: HeaderName, value: &str) -> Self {
        if let Ok(v) = HeaderValue::from_str(value) {
            self.0.headers.insert(name, v);
        }
        self
    }

    pub(crate) fn with_detail(mut self, detail: serde_json::Value) -> Self {
        self.0.detail = detail;
        self
    }

    pub fn status(&self) -> StatusCode {
        self.0.status
    }

    pub fn unsupported_route() -> Self {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "UNSUPPORTED",
            "no such endpoint in the registry API",
        )
    }

    pub fn method_not_allowed() -> Self {
        ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "UNSUPPORTED",
            "this method is not supported on this endpoint",
        )
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, code, message)
    }
}

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> Self {
        use RegistryError as E;
        let msg = e.to_string();
        let (status, code) = match &e {
            E::NameInvalid(_) => (StatusCode::BAD_REQUEST, "NAME_INVALID"),
            E::NameUnknown(_) => (StatusCode::NOT_FOUND, "NAME_UNKNOWN"),
            E::DigestInvalid(_) => (StatusCode::BAD_REQUEST, "DIGEST_INVALID"),
            E::BlobUnknown(_) => (StatusCode::NOT_FOUND, "BLOB_UNKNOWN"),
            E::BlobUploadUnknown(_) => (StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN"),
            E::BlobUploadInvalid(_) | E::BodyRead(_) => {
                (StatusCode::BAD_REQUEST, "BLOB_UPLOAD_INVALID")
            }
            E::UploadOutOfOrder { .. } => {
                (StatusCode::RANGE_NOT_SATISFIABLE, "BLOB_UPLOAD_INVALID")
            }
            E::RangeNotSatisfiable { .. } => (StatusCode::RANGE_NOT_SATISFIABLE, "BLOB_UNKNOWN"),
            E::SizeInvalid(_) => (StatusCode::BAD_REQUEST, "SIZE_INVALID"),
            E::ManifestUnknown(_) => (StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN"),
            E::ManifestInvalid(_) => (StatusCode::BAD_REQUEST, "MANIFEST_INVALID"),
            E::ManifestBlobUnknown(_) => (StatusCode::BAD_REQUEST, "MANIFEST_BLOB_UNKNOWN"),
            E::ManifestTooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "MANIFEST_INVALID"),
            E::Unsupported(_) => (StatusCode::METHOD_NOT_ALLOWED, "UNSUPPORTED"),
            E::BlobBusy(_) => (StatusCode::TOO_MANY_REQUESTS, "TOOMANYREQUESTS"),
            E::Catalog(_) | E::Store(_) => {
                tracing::error!(error = %e, "internal error");
                return ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "UNKNOWN",
                    "internal server error",
                );
            }
        };
        let mut err = ApiError::new(status, code, msg);
        match e {
            E::ManifestBlobUnknown(d) | E::BlobUnknown(d) => {
                err = err.with_detail(json!({ "digest": d }))
            }
            E::NameInvalid(n) | E::NameUnknown(n) => err = err.with_detail(json!({ "name": n })),
            E::BlobBusy(d) => {
                err = err
                    .with_detail(json!({ "digest": d }))
                    .with_header(header::RETRY_AFTER, "1")
            }
            // The handler adds Location, which needs the repository name.
            E::UploadOutOfOrder { size, .. } => {
                err = err.with_header(header::RANGE, &super::upload_range(size))
            }
            E::RangeNotSatisfiable { size } => {
                err = err.with_header(header::CONTENT_RANGE, &format!("bytes */{size}"))
            }
            _ => {}
        }
        err
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let e = *self.0;
        let mut item = json!({ "code": e.code, "message": e.message });
        if !e.detail.is_null() {
            item["detail"] = e.detail;
        }
        let body = json!({ "errors": [item] });
        let mut resp = (e.status, axum::Json(body)).into_response();
        resp.headers_mut().extend(e.headers);
        resp
    }
}
