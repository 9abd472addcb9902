//! The daemon's one error type and its one mapping to the wire
//! (`{"message": ...}` with docker's status codes). Every handler returns
//! [`Error`]; the message is the one line the CLI prints after
//! "Error response from daemon: ".

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::api::ErrorBody;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// 400: the request is wrong (bad flag value, bad reference, ...).
    #[error("{0}")]
    BadRequest(String),
    /// 401: wrong credentials for a registry.
    #[error("{0}")]
    Unauthorized(String),
    /// 404: `No such container: X`, `No such image: X`, ...
    #[error("{0}")]
    NotFound(String),
    /// 409: the thing is in a state that forbids this (running, in use, ...).
    #[error("{0}")]
    Conflict(String),
    /// 304 for `stop` of a stopped container (docker's answer).
    #[error("{0}")]
    NotModified(String),
    /// 502: a registry answered with an error or could not be reached.
    #[error("{0}")]
    Registry(String),
    /// 400: the container's command could not be started; `exit_code` is
    /// what docker's CLI exits with (126, 127, or 125).
    #[error("{message}")]
    StartFailed { message: String, exit_code: i64 },
    /// 500: the daemon's own failure (disk, database, cgroups, mounts).
    #[error("{0}")]
    Internal(String),
}

impl Error {
    pub fn status(&self) -> StatusCode {
        match self {
            Error::BadRequest(_) | Error::StartFailed { .. } => StatusCode::BAD_REQUEST,
            Error::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Error::NotFound(_) => StatusCode::NOT_FOUND,
            Error::Conflict(_) => StatusCode::CONFLICT,
            Error::NotModified(_) => StatusCode::NOT_MODIFIED,
            Error::Registry(_) => StatusCode::BAD_GATEWAY,
            Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn internal(what: impl std::fmt::Display) -> Error {
        Error::Internal(what.to_string())
    }
}

impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Error {
        Error::Internal(format!("catalog: {e}"))
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::error!(error = %self, "request failed");
        }
        if status == StatusCode::NOT_MODIFIED {
            return status.into_response();
        }
        let exit_code = match &self {
            Error::StartFailed { exit_code, .. } => Some(*exit_code),
            _ => None,
        };
        (
            status,
            Json(ErrorBody {
                message: self.to_string(),
                exit_code,
            }),
        )
            .into_response()
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
