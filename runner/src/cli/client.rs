//! The CLI's HTTP/1.1 client for the daemon's API (see `api`): one
//! connection per request over the daemon's unix socket (hyper 1 +
//! hyper-util's `TokioIo` over `tokio::net::UnixStream`), JSON bodies, and
//! streaming readers for the two stream formats (container output frames
//! and the pull's NDJSON events).
//!
//! Called by the `cli` commands; calls nothing of ours but `api`.

use std::io::Write;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HOST};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::net::UnixStream;

use crate::api::{self, ErrorBody, FrameKind, WaitResponse};

/// Error answers are read up to this many bytes.
const MAX_ERROR_BODY: usize = 64 * 1024;
/// JSON answers (lists, inspect) are read up to this many bytes.
const MAX_JSON_BODY: usize = 64 * 1024 * 1024;
/// One NDJSON line of a pull is at most this long.
const MAX_LINE: usize = 1024 * 1024;

/// What can go wrong talking to the daemon; `Display` is the line the
/// CLI prints.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The socket is missing or nobody listens on it.
    #[error(
        "Cannot connect to the wharf-runner daemon at unix://{}. Is the daemon running? Start it with: wharf-runner daemon",
        .0.display()
    )]
    Connect(PathBuf),
    /// The daemon answered with an error status.
    #[error("Error response from daemon: {message}")]
    Daemon {
        status: StatusCode,
        message: String,
        /// The exit code the daemon gave a container that could not start.
        exit_code: Option<i64>,
    },
    /// The connection broke or the daemon's answer made no sense.
    #[error("error during connect: {0}")]
    Transport(String),
    /// Anything else: printed as is.
    #[error("{0}")]
    Message(String),
}

impl Error {
    /// True for the daemon's `404`.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::Daemon { status, .. } if *status == StatusCode::NOT_FOUND)
    }
}

fn transport(e: impl std::fmt::Display) -> Error {
    Error::Transport(e.to_string())
}

/// Percent-encodes one path segment or query value (everything but
/// RFC 3986's unreserved characters).
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The daemon's API, reached on a unix socket.
#[derive(Debug, Clone)]
pub struct Client {
    socket: PathBuf,
}

impl Client {
    pub fn new(socket: impl Into<PathBuf>) -> Client {
        Client {
            socket: socket.into(),
        }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Sends one request; error statuses (and docker's 304) become
    /// [`Error::Daemon`] with the answer's `message`.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Response<Incoming>, Error> {
        let stream = UnixStream::connect(&self.socket)
            .await
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::PermissionDenied => Error::Message(format!(
                    "permission denied while trying to connect to the wharf-runner daemon socket at unix://{}: {e}",
                    self.socket.display()
                )),
                _ => Error::Connect(self.socket.clone()),
            })?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(transport)?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "daemon connection ended");
            }
        });
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, "wharf-runner");
        if body.is_some() {
            request = request.header(CONTENT_TYPE, "application/json");
        }
        let request = request
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| Error::Message(format!("bad request {path:?}: {e}")))?;
        let response = sender.send_request(request).await.map_err(transport)?;
        let status = response.status();
        if status.is_client_error()
            || status.is_server_error()
            || status == StatusCode::NOT_MODIFIED
        {
            let bytes = Limited::new(response.into_body(), MAX_ERROR_BODY)
                .collect()
                .await
                .map(|c| c.to_bytes())
                .unwrap_or_default();
            let (message, exit_code) = match serde_json::from_slice::<ErrorBody>(&bytes) {
                Ok(body) => (body.message, body.exit_code),
                Err(_) => {
                    let text = String::from_utf8_lossy(&bytes).trim().to_string();
                    let message = if text.is_empty() {
                        status.canonical_reason().unwrap_or("").to_string()
                    } else {
                        text
                    };
                    (message, None)
                }
            };
            return Err(Error::Daemon {
                status,
                message,
                exit_code,
            });
        }
        Ok(response)
    }

    /// Sends `body` as JSON (if any) and reads a JSON answer.
    pub async fn json<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&(impl Serialize + ?Sized)>,
    ) -> Result<T, Error> {
        let body = body
            .map(serde_json::to_vec)
            .transpose()
            .map_err(|e| Error::Message(format!("encoding the request: {e}")))?;
        let response = self.send(method, path, body).await?;
        read_json(response).await
    }

    /// Sends a request without a body and drops the answer's body.
    pub async fn call(&self, method: Method, path: &str) -> Result<(), Error> {
        let response = self.send(method, path, None).await?;
        let _ = Limited::new(response.into_body(), MAX_JSON_BODY)
            .collect()
            .await;
        Ok(())
    }
}

/// Reads a JSON answer (bounded).
pub async fn read_json<T: DeserializeOwned>(response: Response<Incoming>) -> Result<T, Error> {
    let bytes = Limited::new(response.into_body(), MAX_JSON_BODY)
        .collect()
        .await
        .map_err(transport)?
        .to_bytes();
    serde_json::from_slice(&bytes)
        .map_err(|e| Error::Transport(format!("bad answer from the daemon: {e}")))
}

/// The next data chunk of a streamed body, `None` at its end.
async fn next_chunk(body: &mut Incoming) -> Result<Option<Bytes>, Error> {
    loop {
        match body.frame().await {
            None => return Ok(None),
            Some(Err(e)) => return Err(transport(e)),
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    return Ok(Some(data));
                }
            }
        }
    }
}

/// Copies a frame stream (see [`api::encode_frame`]) as it arrives:
/// stdout frames to `stdout`, stderr frames to `stderr`, each flushed at
/// once. Returns the exit frame's status code, or `None` when the stream
/// ended without one. Write errors (a closed pipe) are ignored so the
/// stream is still drained.
pub async fn copy_frames(
    body: Incoming,
    stdout: &mut dyn Write,
    stderr: &mut dyn Write,
) -> Result<Option<i64>, Error> {
    let mut body = body;
    let mut buf: Vec<u8> = Vec::new();
    loop {
        loop {
            let consumed = match api::decode_frame(&buf) {
                Err(e) => {
                    return Err(Error::Transport(format!(
                        "bad output stream from the daemon: {e}"
                    )));
                }
                Ok(None) => break,
                Ok(Some((kind, payload, consumed))) => {
                    match kind {
                        FrameKind::Stdout => {
                            let _ = stdout.write_all(payload).and_then(|_| stdout.flush());
                        }
                        FrameKind::Stderr => {
                            let _ = stderr.write_all(payload).and_then(|_| stderr.flush());
                        }
                        FrameKind::Exit => {
                            let exit: WaitResponse =
                                serde_json::from_slice(payload).map_err(|e| {
                                    Error::Transport(format!("bad exit frame from the daemon: {e}"))
                                })?;
                            return Ok(Some(exit.status_code));
                        }
                    }
                    consumed
                }
            };
            buf.drain(..consumed);
        }
        match next_chunk(&mut body).await? {
            None => return Ok(None),
            Some(chunk) => buf.extend_from_slice(&chunk),
        }
    }
}

/// Reads a body line by line (NDJSON), each line at most [`MAX_LINE`].
pub struct Lines {
    body: Incoming,
    buf: Vec<u8>,
    done: bool,
}

impl Lines {
    pub fn new(body: Incoming) -> Lines {
        Lines {
            body,
            buf: Vec::new(),
            done: false,
        }
    }

    /// The next non-empty line without its newline; `None` at the end.
    pub async fn next_line(&mut self) -> Result<Option<Vec<u8>>, Error> {
        loop {
            if let Some(pos) = self.buf.iter().position(|b| *b == b'\n') {
                let mut line: Vec<u8> = self.buf.drain(..=pos).collect();
                line.pop();
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                return Ok(Some(line));
            }
            if self.done {
                if self.buf.iter().all(u8::is_ascii_whitespace) {
                    return Ok(None);
                }
                return Ok(Some(std::mem::take(&mut self.buf)));
            }
            if self.buf.len() > MAX_LINE {
                return Err(Error::Transport(
                    "a line from the daemon is over the limit".into(),
                ));
            }
            match next_chunk(&mut self.body).await? {
                None => self.done = true,
                Some(chunk) => self.buf.extend_from_slice(&chunk),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_references_for_queries() {
        assert_eq!(
            encode("localhost:5000/team/app@sha256:ab"),
            "localhost%3A5000%2Fteam%2Fapp%40sha256%3Aab"
        );
        assert_eq!(encode("my_name-1.x~"), "my_name-1.x~");
    }

    #[test]
    fn connect_error_is_docker_like_one_line() {
        let e = Error::Connect("/run/wharf-runner/runner.sock".into());
        assert_eq!(
            e.to_string(),
            "Cannot connect to the wharf-runner daemon at unix:///run/wharf-runner/runner.sock. Is the daemon running? Start it with: wharf-runner daemon"
        );
    }
}
