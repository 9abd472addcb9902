//! Attaching clients to containers: the hijacked (HTTP upgrade) stream of
//! `POST /containers/{id}/attach` and of an interactive
//! `POST /containers/{id}/start?attach=1`, and `POST /containers/{id}/resize`.
//!
//! After the `101 Switching Protocols` answer the client writes raw stdin
//! bytes (a half-close is the end of its input) and reads frames (see
//! `api`): output, then one exit frame (`{"StatusCode":N}`, or
//! `{"StatusCode":0,"Detached":true}` when the client typed the detach
//! keys). [`proxy`] joins a client to a shim's attach socket (see
//! `stdio`) or to an exec's output frames and input channel (`exec -i`,
//! `exec -t`, which [`switch`] serves too).
//!
//! Calls `containers` (targets), `stdio`, `api`; called by `http`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use bytes::Bytes;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use super::containers::{AttachTarget, Containers};
use super::error::{Error, Result};
use crate::api::{FrameKind, decode_frame, encode_frame};
use crate::stdio::{self, DetachMatcher, Msg};

/// How long the daemon tries to reach a just-started shim's socket.
const CONNECT_WAIT: Duration = Duration::from_secs(10);
/// How long the exit of a `--rm` container waits for its removal.
const REMOVE_WAIT: Duration = Duration::from_secs(10);

/// What the client asked for (docker's attach query).
#[derive(Debug, Clone)]
pub struct AttachOptions {
    /// Pass the client's input to the container.
    pub stdin: bool,
    /// The detach sequence (empty: none).
    pub detach_keys: Vec<u8>,
}

impl AttachOptions {
    pub fn from_query(q: &std::collections::HashMap<String, String>) -> Result<AttachOptions> {
        let on = |k: &str| {
            q.get(k)
                .is_some_and(|v| matches!(v.as_str(), "1" | "true" | "True"))
        };
        let keys = q
            .get("detachKeys")
            .map(String::as_str)
            .unwrap_or(stdio::DEFAULT_DETACH_KEYS);
        Ok(AttachOptions {
            stdin: on("stdin"),
            detach_keys: stdio::parse_detach_keys(keys).map_err(Error::BadRequest)?,
        })
    }
}

/// True when the request asks to take over the connection.
pub fn wants_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
}

/// The `101` answer; `work` runs on the connection once hyper hands it over.
pub fn switch<F, Fut>(mut req: Request, work: F) -> Response
where
    F: FnOnce(TokioIo<hyper::upgrade::Upgraded>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => work(TokioIo::new(upgraded)).await,
            Err(e) => tracing::debug!(error = %e, "attach upgrade failed"),
        }
    });
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = response.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("tcp"));
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/vnd.docker.multiplexed-stream"),
    );
    response
}

/// `POST /containers/{id}/attach` (must be an upgrade).
pub async fn attach(
    containers: &Containers,
    name: &str,
    opts: AttachOptions,
    req: Request,
) -> Result<Response> {
    if !wants_upgrade(req.headers()) {
        return Err(Error::BadRequest(
            "attach needs an upgraded connection (Upgrade: tcp)".into(),
        ));
    }
    let target = containers.attach_target(name).await?;
    let shim = if target.interactive {
        Some(connect_shim(&target.dir, None).await?)
    } else {
        None
    };
    Ok(switch(req, move |io| run(io, target, shim, opts, false)))
}

/// `POST /containers/{id}/start?attach=1` as an upgrade: start with the
/// shim waiting for us, then attach.
pub async fn start_attached(
    containers: &std::sync::Arc<Containers>,
    name: &str,
    opts: AttachOptions,
    req: Request,
) -> Result<Response> {
    let target = containers.start_for_attach(name).await?;
    let shim = if target.interactive {
        // When the shim ended before we reached it (the command could not
        // run), the log has its reason.
        connect_shim(&target.dir, Some(&target)).await.ok()
    } else {
        None
    };
    Ok(switch(req, move |io| run(io, target, shim, opts, true)))
}

/// `POST /containers/{id}/resize?h=ROWS&w=COLS`.
pub async fn resize(containers: &Containers, name: &str, rows: u16, cols: u16) -> Result<()> {
    let dir = containers.resize_target(name).await?;
    resize_shim(dir, rows, cols).await
}

/// Sends a resize to the shim whose attach socket is in `dir`.
pub async fn resize_shim(dir: PathBuf, rows: u16, cols: u16) -> Result<()> {
    tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        use std::io::Write;
        let mut s = stdio::connect_in(&dir, stdio::ATTACH_SOCKET)?;
        s.write_all(&Msg::Resize { rows, cols }.encode())
    })
    .await
    .map_err(Error::internal)?
    .map_err(|e| Error::Conflict(format!("cannot resize the container's terminal: {e}")))
}

/// Connects to a shim's attach socket; with `starting`, retries while the
/// shim comes up (until the container stops).
async fn connect_shim(
    dir: &Path,
    starting: Option<&AttachTarget>,
) -> Result<tokio::net::UnixStream> {
    let deadline = Instant::now() + CONNECT_WAIT;
    loop {
        let d = dir.to_path_buf();
        let tried = tokio::task::spawn_blocking(move || {
            let s = stdio::connect_in(&d, stdio::ATTACH_SOCKET)?;
            s.set_nonblocking(true)?;
            tokio::net::UnixStream::from_std(s)
        })
        .await
        .map_err(Error::internal)?;
        match tried {
            Ok(s) => return Ok(s),
            Err(e) => {
                let retry = starting.is_some_and(|t| t.exits.borrow().0 == t.seen)
                    && Instant::now() < deadline;
                if !retry {
                    return Err(Error::Conflict(format!(
                        "cannot attach to the container: {e}"
                    )));
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn exit_frame(code: i64, detached: bool) -> Vec<u8> {
    let body = if detached {
        serde_json::json!({"StatusCode": code, "Detached": true})
    } else {
        serde_json::json!({"StatusCode": code})
    };
    encode_frame(FrameKind::Exit, body.to_string().as_bytes())
}

/// Serves one upgraded attach connection to its end.
async fn run<C>(
    client: C,
    target: AttachTarget,
    shim: Option<tokio::net::UnixStream>,
    opts: AttachOptions,
    starting: bool,
) where
    C: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let close_stdin = target.stdin_once && starting;
    let end = match shim {
        Some(shim) => {
            let mut exits = target.exits.clone();
            let seen = target.seen;
            let (auto_remove, dir) = (target.auto_remove, target.dir.clone());
            let exit = async move {
                let code = match exits.wait_for(|(n, _)| *n != seen).await {
                    Ok(v) => v.1,
                    Err(_) => 255,
                };
                let deadline = Instant::now() + REMOVE_WAIT;
                while auto_remove && dir.exists() && Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                code
            };
            proxy(client, Source::Shim(shim), &opts, close_stdin, exit).await
        }
        None => {
            let rx = target.follow_log();
            proxy(client, Source::Frames(rx), &opts, false, async { 0 }).await
        }
    };
    tracing::debug!(container = %target.id, ?end, "attach ended");
}

/// Where a proxied stream's output comes from.
pub enum Source {
    /// A shim's attach socket: frames, then EOF when the output ended.
    Shim(tokio::net::UnixStream),
    /// Frames already made, ending with their own exit frame.
    Frames(mpsc::Receiver<Bytes>),
    /// An exec's frames (ending with their own exit frame) and where its
    /// input goes ([`Msg::Stdin`], [`Msg::CloseStdin`]).
    Exec {
        output: mpsc::Receiver<Bytes>,
        input: Option<mpsc::Sender<Msg>>,
    },
}

/// [`Source`] with the shim's socket's write half taken for input.
enum Output {
    Shim(tokio::net::unix::OwnedReadHalf),
    Frames(mpsc::Receiver<Bytes>),
}

/// Where the client's input goes.
enum InputSink {
    Shim(tokio::net::unix::OwnedWriteHalf),
    Channel(mpsc::Sender<Msg>),
}

impl InputSink {
    /// False once the other side is gone.
    async fn send(&mut self, msg: Msg) -> bool {
        match self {
            InputSink::Shim(w) => w.write_all(&msg.encode()).await.is_ok(),
            InputSink::Channel(tx) => tx.send(msg).await.is_ok(),
        }
    }
}

/// How a proxied stream ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyEnd {
    /// The output ended and the exit frame was sent.
    Exited,
    /// The client typed the detach keys.
    Detached,
    /// The client went away.
    ClientGone,
}

/// The next whole frames of `source`'s output; `None` at its end.
async fn next_output(source: &mut Output, buf: &mut Vec<u8>, tmp: &mut [u8]) -> Option<Vec<u8>> {
    match source {
        Output::Frames(rx) => rx.recv().await.map(|b| b.to_vec()),
        Output::Shim(s) => loop {
            let mut whole = 0;
            while let Ok(Some((_, _, used))) = decode_frame(&buf[whole..]) {
                whole += used;
            }
            if whole > 0 {
                return Some(buf.drain(..whole).collect());
            }
            if decode_frame(buf).is_err() {
                tracing::warn!("bad frame from a shim");
                return None;
            }
            match s.read(tmp).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => buf.extend_from_slice(&tmp[..n]),
            }
        },
    }
}

/// Joins `client` (raw input in, frames out) to `source`. Input goes to
/// the shim as [`Msg::Stdin`] when `opts.stdin`; the end of the client's
/// input closes the container's stdin when `close_stdin`. When the output
/// ends, the exit frame carries what `exit` resolves to (a
/// [`Source::Frames`] brings its own).
pub async fn proxy<C>(
    client: C,
    source: Source,
    opts: &AttachOptions,
    close_stdin: bool,
    exit: impl std::future::Future<Output = i64>,
) -> ProxyEnd
where
    C: AsyncRead + AsyncWrite + Unpin,
{
    let (mut cr, mut cw) = tokio::io::split(client);
    let (mut source, mut input_w) = match source {
        Source::Shim(s) => {
            let (r, w) = s.into_split();
            (Output::Shim(r), Some(InputSink::Shim(w)))
        }
        Source::Frames(rx) => (Output::Frames(rx), None),
        Source::Exec { output, input } => (Output::Frames(output), input.map(InputSink::Channel)),
    };
    let mut matcher = DetachMatcher::new(if opts.stdin {
        opts.detach_keys.clone()
    } else {
        Vec::new()
    });
    // Input and output run side by side, so a container that does not
    // read its stdin never holds up its output.
    let is_shim = matches!(source, Output::Shim(_));
    let end = {
        let input = async {
            let mut buf = vec![0u8; 32 * 1024];
            loop {
                let n = cr.read(&mut buf).await.unwrap_or(0);
                let (pass, detach) = if n == 0 {
                    (matcher.flush(), false)
                } else {
                    matcher.feed(&buf[..n])
                };
                if opts.stdin
                    && !pass.is_empty()
                    && let Some(w) = input_w.as_mut()
                {
                    for chunk in pass.chunks(stdio::MAX_MSG) {
                        if !w.send(Msg::Stdin(chunk.to_vec())).await {
                            break;
                        }
                    }
                }
                if detach {
                    return true;
                }
                if n == 0 {
                    if close_stdin && let Some(w) = input_w.as_mut() {
                        let _ = w.send(Msg::CloseStdin).await;
                    }
                    return false;
                }
            }
        };
        let output = async {
            let mut tmp = vec![0u8; 64 * 1024];
            let mut buf: Vec<u8> = Vec::new();
            loop {
                match next_output(&mut source, &mut buf, &mut tmp).await {
                    Some(bytes) => {
                        if cw.write_all(&bytes).await.is_err() || cw.flush().await.is_err() {
                            return ProxyEnd::ClientGone;
                        }
                    }
                    None => return ProxyEnd::Exited,
                }
            }
        };
        tokio::pin!(input, output);
        let end = tokio::select! {
            detached = &mut input => {
                if detached {
                    ProxyEnd::Detached
                } else {
                    // The input ended; the output goes on to its end.
                    (&mut output).await
                }
            }
            end = &mut output => end,
        };
        end
    };
    match end {
        ProxyEnd::Exited => {
            if is_shim {
                let code = exit.await;
                let _ = cw.write_all(&exit_frame(code, false)).await;
            }
        }
        ProxyEnd::Detached => {
            let _ = cw.write_all(&exit_frame(0, true)).await;
        }
        ProxyEnd::ClientGone => {}
    }
    let _ = cw.flush().await;
    let _ = cw.shutdown().await;
    end
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(stdin: bool) -> AttachOptions {
        AttachOptions {
            stdin,
            detach_keys: stdio::parse_detach_keys(stdio::DEFAULT_DETACH_KEYS).unwrap(),
        }
    }

    #[tokio::test]
    async fn input_goes_to_the_shim_and_output_ends_with_the_exit_frame() {
        let (client, mut user) = tokio::io::duplex(4096);
        let (daemon_side, mut shim) = tokio::net::UnixStream::pair().unwrap();
        let task = tokio::spawn(async move {
            proxy(
                client,
                Source::Shim(daemon_side),
                &opts(true),
                true,
                async { 3 },
            )
            .await
        });
        user.write_all(b"ls\n").await.unwrap();
        user.shutdown().await.unwrap();
        let mut got = Vec::new();
        let want = [
            Msg::Stdin(b"ls\n".to_vec()).encode(),
            Msg::CloseStdin.encode(),
        ]
        .concat();
        while got.len() < want.len() {
            let mut b = [0u8; 256];
            let n = shim.read(&mut b).await.unwrap();
            got.extend_from_slice(&b[..n]);
        }
        assert_eq!(got, want);
        shim.write_all(&encode_frame(FrameKind::Stdout, b"out"))
            .await
            .unwrap();
        drop(shim);
        assert_eq!(task.await.unwrap(), ProxyEnd::Exited);
        let mut all = Vec::new();
        user.read_to_end(&mut all).await.unwrap();
        let (k, p, n) = decode_frame(&all).unwrap().unwrap();
        assert_eq!((k, p), (FrameKind::Stdout, &b"out"[..]));
        let (k, p, _) = decode_frame(&all[n..]).unwrap().unwrap();
        assert_eq!((k, p), (FrameKind::Exit, &br#"{"StatusCode":3}"#[..]));
    }

    #[tokio::test]
    async fn the_detach_keys_end_the_stream_and_leave_stdin_open() {
        let (client, mut user) = tokio::io::duplex(4096);
        let (daemon_side, mut shim) = tokio::net::UnixStream::pair().unwrap();
        let task = tokio::spawn(async move {
            proxy(
                client,
                Source::Shim(daemon_side),
                &opts(true),
                true,
                async { 0 },
            )
            .await
        });
        user.write_all(b"a\x10\x11b").await.unwrap();
        assert_eq!(task.await.unwrap(), ProxyEnd::Detached);
        let mut got = Vec::new();
        shim.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, Msg::Stdin(b"a".to_vec()).encode(), "no CloseStdin");
        let mut all = Vec::new();
        user.read_to_end(&mut all).await.unwrap();
        let (k, p, _) = decode_frame(&all).unwrap().unwrap();
        assert_eq!(k, FrameKind::Exit);
        assert!(String::from_utf8_lossy(p).contains(r#""Detached":true"#));
    }

    #[tokio::test]
    async fn an_exec_stream_feeds_its_channel_and_brings_its_own_exit_frame() {
        let (client, mut user) = tokio::io::duplex(4096);
        let (out_tx, out_rx) = mpsc::channel(4);
        let (in_tx, mut in_rx) = mpsc::channel(4);
        let task = tokio::spawn(async move {
            let source = Source::Exec {
                output: out_rx,
                input: Some(in_tx),
            };
            proxy(client, source, &opts(true), true, async { 99 }).await
        });
        user.write_all(b"hi").await.unwrap();
        user.shutdown().await.unwrap();
        assert_eq!(in_rx.recv().await, Some(Msg::Stdin(b"hi".to_vec())));
        assert_eq!(in_rx.recv().await, Some(Msg::CloseStdin));
        out_tx
            .send(Bytes::from(encode_frame(FrameKind::Stdout, b"o")))
            .await
            .unwrap();
        out_tx
            .send(Bytes::from(exit_frame(7, false)))
            .await
            .unwrap();
        drop(out_tx);
        assert_eq!(task.await.unwrap(), ProxyEnd::Exited);
        let mut all = Vec::new();
        user.read_to_end(&mut all).await.unwrap();
        let (k, p, n) = decode_frame(&all).unwrap().unwrap();
        assert_eq!((k, p), (FrameKind::Stdout, &b"o"[..]));
        let (k, p, m) = decode_frame(&all[n..]).unwrap().unwrap();
        assert_eq!((k, p), (FrameKind::Exit, &br#"{"StatusCode":7}"#[..]));
        assert_eq!(n + m, all.len(), "one exit frame, the exec's own");
    }
}
