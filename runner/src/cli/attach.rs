//! Interactive streams on the CLI side: `run -i`/`-t` (attached),
//! `start -a -i`, `attach` and `exec -i`/`-t`. The request is upgraded
//! (HTTP `101`, as docker's hijacked attach): stdin goes up raw (its end is
//! a half-close), frames come down (output, then the exit frame). With a
//! terminal the CLI puts its own in raw mode and posts its size on start
//! and on SIGWINCH.
//!
//! [`upgrade`] and [`stream`] are the reusable parts (`cli::exec` runs an
//! `exec -it` stream with them). Called by `cli::dispatch`,
//! `cli::containers` and `cli::exec`; calls `client`, `tty`, `api`.

use std::io::Write;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::header::{CONNECTION, HOST, UPGRADE};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use super::AttachArgs;
use super::client::{Client, Error, encode};
use super::tty;
use crate::api::{self, ErrorBody, FrameKind};

/// The exit frame of an attach stream.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct End {
    status_code: i64,
    #[serde(default)]
    detached: bool,
}

/// An upgraded connection to the daemon.
pub type Upgraded = TokioIo<hyper::upgrade::Upgraded>;

/// Sends `POST path` asking for an upgrade; the raw connection once the
/// daemon answered `101`, or the daemon's error.
pub async fn upgrade(client: &Client, path: &str) -> Result<Upgraded, Error> {
    let stream = UnixStream::connect(client.socket())
        .await
        .map_err(|_| Error::Connect(client.socket().to_path_buf()))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| Error::Transport(e.to_string()))?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "daemon connection ended");
        }
    });
    let request = Request::builder()
        .method(Method::POST)
        .uri(path)
        .header(HOST, "wharf-runner")
        .header(CONNECTION, "Upgrade")
        .header(UPGRADE, "tcp")
        .body(Empty::<Bytes>::new())
        .map_err(|e| Error::Message(format!("bad request {path:?}: {e}")))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| Error::Transport(e.to_string()))?;
    let status = response.status();
    if status != StatusCode::SWITCHING_PROTOCOLS {
        let bytes = Limited::new(response.into_body(), 64 * 1024)
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        let (message, exit_code) = match serde_json::from_slice::<ErrorBody>(&bytes) {
            Ok(b) => (b.message, b.exit_code),
            Err(_) => (String::from_utf8_lossy(&bytes).trim().to_string(), None),
        };
        return Err(Error::Daemon {
            status,
            message,
            exit_code,
        });
    }
    let upgraded = hyper::upgrade::on(response)
        .await
        .map_err(|e| Error::Transport(e.to_string()))?;
    Ok(TokioIo::new(upgraded))
}

/// docker's check before attaching a terminal: with stdin attached to a
/// `-t` container, stdin must be a terminal.
pub fn check_tty(stdin: bool, tty: bool) -> Result<(), Error> {
    if stdin && tty && !tty::is_terminal(0) {
        return Err(Error::Message("the input device is not a TTY".into()));
    }
    Ok(())
}

/// How [`stream`] runs.
#[derive(Debug, Clone, Copy)]
pub struct StreamOptions {
    /// Send this process's stdin.
    pub stdin: bool,
    /// The container has a terminal: raw mode (when stdin is one) and
    /// resizes.
    pub tty: bool,
}

/// How a stream ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    Exited(i64),
    Detached,
}

/// Runs an upgraded stream to its end. `resize_path` (for a terminal) is
/// where the window size is posted, at once and on every SIGWINCH.
pub async fn stream(
    client: &Client,
    io: Upgraded,
    opts: StreamOptions,
    resize_path: Option<String>,
) -> Result<Ended, Error> {
    use tokio::signal::unix::{SignalKind, signal};
    let _raw = if opts.tty && opts.stdin {
        tty::RawMode::enable()
            .map_err(|e| Error::Message(format!("wharf-runner: setting the terminal raw: {e}")))?
    } else {
        None
    };
    let resize = |client: Client, path: String| async move {
        if let Some((rows, cols)) = tty::size() {
            let path = format!("{path}?h={rows}&w={cols}");
            if let Err(e) = client.call(Method::POST, &path).await {
                tracing::debug!(error = %e, "resize");
            }
        }
    };
    let mut winch = match (&resize_path, opts.tty) {
        (Some(path), true) => {
            tokio::spawn(resize(client.clone(), path.clone()));
            signal(SignalKind::window_change()).ok()
        }
        _ => None,
    };
    // With a terminal, ^C is a byte for the container; a signal sent to
    // this process ends the stream (the guard restores the terminal).
    let mut stop_signals = Vec::new();
    if opts.tty {
        for (kind, number) in [
            (SignalKind::terminate(), 15),
            (SignalKind::hangup(), 1),
            (SignalKind::interrupt(), 2),
        ] {
            if let Ok(s) = signal(kind) {
                stop_signals.push((s, number));
            }
        }
    }
    let (mut rd, mut wr) = tokio::io::split(io);
    let input = if opts.stdin {
        let mut chunks = tty::stdin_chunks();
        Some(tokio::spawn(async move {
            while let Some(chunk) = chunks.recv().await {
                if wr.write_all(&chunk).await.is_err() || wr.flush().await.is_err() {
                    return;
                }
            }
            let _ = wr.shutdown().await;
        }))
    } else {
        // No input: the end of it at once.
        let _ = wr.shutdown().await;
        None
    };
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let mut stdout = std::io::stdout();
    let mut stderr = std::io::stderr();
    let stopped = async {
        if stop_signals.is_empty() {
            std::future::pending::<()>().await;
        }
        let waits = stop_signals.iter_mut().map(|(s, n)| {
            let n = *n;
            Box::pin(async move {
                s.recv().await;
                n
            })
        });
        futures::future::select_all(waits).await.0
    };
    tokio::pin!(stopped);
    let ended = loop {
        loop {
            match api::decode_frame(&buf) {
                Err(_) | Ok(None) => break,
                Ok(Some((kind, payload, used))) => {
                    let done = match kind {
                        FrameKind::Stdout => {
                            let _ = stdout.write_all(payload).and_then(|_| stdout.flush());
                            None
                        }
                        FrameKind::Stderr => {
                            let _ = stderr.write_all(payload).and_then(|_| stderr.flush());
                            None
                        }
                        FrameKind::Exit => Some(serde_json::from_slice::<End>(payload)),
                    };
                    buf.drain(..used);
                    match done {
                        None => {}
                        Some(Ok(end)) if end.detached => return finish(input, Ended::Detached),
                        Some(Ok(end)) => return finish(input, Ended::Exited(end.status_code)),
                        Some(Err(e)) => {
                            return Err(Error::Transport(format!(
                                "bad exit frame from the daemon: {e}"
                            )));
                        }
                    }
                }
            }
        }
        if let Err(e) = api::decode_frame(&buf) {
            return Err(Error::Transport(format!(
                "bad output stream from the daemon: {e}"
            )));
        }
        tokio::select! {
            r = rd.read(&mut chunk) => match r {
                Ok(0) | Err(_) => break None,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            },
            Some(()) = async { match winch.as_mut() { Some(w) => w.recv().await, None => std::future::pending().await } } => {
                if let Some(path) = &resize_path {
                    tokio::spawn(resize(client.clone(), path.clone()));
                }
            }
            n = &mut stopped => break Some(n),
        }
    };
    if let Some(input) = input {
        input.abort();
    }
    match ended {
        Some(signal) => Ok(Ended::Exited(128 + signal)),
        None => Err(Error::Message(
            "wharf-runner: the daemon ended the container's stream without its exit status".into(),
        )),
    }
}

fn finish(input: Option<tokio::task::JoinHandle<()>>, ended: Ended) -> Result<Ended, Error> {
    if let Some(input) = input {
        input.abort();
    }
    Ok(ended)
}

/// The detach keys for a query string.
fn keys_query(keys: &Option<String>) -> Result<String, Error> {
    match keys {
        Some(k) => {
            crate::stdio::parse_detach_keys(k).map_err(Error::Message)?;
            Ok(format!("&detachKeys={}", encode(k)))
        }
        None => Ok(String::new()),
    }
}

/// The CLI's exit code for how a stream ended (0 when detached).
pub fn exit_code(ended: Ended) -> i32 {
    match ended {
        Ended::Detached => 0,
        Ended::Exited(code) => i32::try_from(code).unwrap_or(super::EXIT_USAGE),
    }
}

/// Starts a created `-i`/`-t` container attached: `run -it`, `start -a -i`.
pub async fn start_attached(
    client: &Client,
    container: &str,
    opts: StreamOptions,
    detach_keys: &Option<String>,
) -> Result<i32, Error> {
    let path = format!(
        "/containers/{}/start?attach=1&stdin={}{}",
        encode(container),
        u8::from(opts.stdin),
        keys_query(detach_keys)?
    );
    let io = upgrade(client, &path).await?;
    let resize = format!("/containers/{}/resize", encode(container));
    stream(client, io, opts, Some(resize)).await.map(exit_code)
}

/// `attach CONTAINER`.
pub async fn attach(client: &Client, args: AttachArgs) -> Result<i32, Error> {
    let info: serde_json::Value = client
        .json(
            Method::GET,
            &format!("/containers/{}/json", encode(&args.container)),
            None::<&()>,
        )
        .await?;
    let config = &info["Config"];
    let tty = config["Tty"].as_bool().unwrap_or(false);
    let stdin = !args.no_stdin && config["OpenStdin"].as_bool().unwrap_or(false);
    check_tty(stdin, tty)?;
    let path = format!(
        "/containers/{}/attach?stream=1&stdout=1&stderr=1&stdin={}{}",
        encode(&args.container),
        u8::from(stdin),
        keys_query(&args.detach_keys)?
    );
    let io = upgrade(client, &path).await?;
    let resize = format!("/containers/{}/resize", encode(&args.container));
    stream(client, io, StreamOptions { stdin, tty }, Some(resize))
        .await
        .map(exit_code)
}
