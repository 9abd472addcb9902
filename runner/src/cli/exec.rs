//! `exec`: runs a command in a running container with docker's flags,
//! output and exit codes (the command's own code; 126/127 when it cannot
//! be run, with the runtime's message; 1 when the container is missing or
//! not running).
//!
//! Two calls, as docker: create the exec instance, then start it attached
//! (copy the frames, exit with the exit frame's code) or detached (`-d`);
//! with `-i` the start is an upgraded connection carrying stdin up. `-t` is
//! refused until pty streaming exists. Called by
//! `cli::dispatch`; calls the daemon through `client`.

use clap::Args;
use hyper::Method;

use super::client::{Client, Error, copy_frames, encode};
use crate::api::{ExecCreateRequest, ExecCreateResponse};
use crate::bundle as parse;

const EXEC_USAGE: &str = "wharf-runner exec [OPTIONS] CONTAINER COMMAND [ARG...]";

#[derive(Debug, Args)]
#[command(override_usage = EXEC_USAGE)]
pub struct ExecArgs {
    /// Detached mode: run command in the background
    #[arg(short, long)]
    pub detach: bool,
    /// Set environment variables
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Read in a file of environment variables
    #[arg(long = "env-file", value_name = "FILE")]
    pub env_file: Vec<std::path::PathBuf>,
    /// Working directory inside the container
    #[arg(short = 'w', long = "workdir", value_name = "DIR")]
    pub workdir: Option<String>,
    /// Username or UID (format: "<name|uid>[:<group|gid>]")
    #[arg(short = 'u', long)]
    pub user: Option<String>,
    /// Keep STDIN open even if not attached
    #[arg(short, long)]
    pub interactive: bool,
    /// Allocate a pseudo-TTY
    #[arg(short, long)]
    pub tty: bool,
    /// The container, then the command and its arguments
    #[arg(
        value_name = "CONTAINER",
        required = true,
        num_args = 2..,
        trailing_var_arg = true
    )]
    pub args: Vec<String>,
}

/// The container and the exec request from `exec`'s flags, reading
/// `--env-file`s and resolving bare `-e KEY` through `lookup`.
pub fn exec_request(
    args: &ExecArgs,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<(String, ExecCreateRequest), Error> {
    let Some((container, cmd)) = args.args.split_first().filter(|(_, c)| !c.is_empty()) else {
        return Err(Error::Message(
            "\"wharf-runner exec\" requires at least 2 arguments.".into(),
        ));
    };
    let mut env = Vec::new();
    for path in &args.env_file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Message(format!("wharf-runner: open {}: {e}", path.display())))?;
        env.extend(
            parse::parse_env_file_with(&text, &lookup)
                .map_err(|e| Error::Message(format!("wharf-runner: {}: {e}", path.display())))?,
        );
    }
    for arg in &args.env {
        env.push(
            parse::resolve_env_arg(arg, &lookup)
                .map_err(|e| Error::Message(format!("wharf-runner: {e}")))?,
        );
    }
    Ok((
        container.clone(),
        ExecCreateRequest {
            cmd: cmd.to_vec(),
            env,
            workdir: args.workdir.clone(),
            user: args.user.clone(),
            attach_stdin: args.interactive,
            tty: args.tty,
        },
    ))
}

/// `exec`.
pub async fn exec(client: &Client, args: ExecArgs) -> Result<i32, Error> {
    if args.tty {
        return Err(Error::Message(
            "wharf-runner: exec -t is not supported yet".into(),
        ));
    }
    let (container, request) = exec_request(&args, |k| std::env::var(k).ok())?;
    let created: ExecCreateResponse = client
        .json(
            Method::POST,
            &format!("/containers/{}/exec", encode(&container)),
            Some(&request),
        )
        .await?;
    let path = format!("/exec/{}/start?detach={}", encode(&created.id), args.detach);
    if args.detach {
        return match client.call(Method::POST, &path).await {
            Ok(()) => Ok(0),
            Err(Error::Daemon {
                message,
                exit_code: Some(code),
                ..
            }) => {
                eprintln!("{message}");
                Ok(i32::try_from(code).unwrap_or(126))
            }
            Err(e) => Err(e),
        };
    }
    if args.interactive {
        return start_with_stdin(client, &created.id).await;
    }
    let response = client.send(Method::POST, &path, None).await?;
    let mut stdout = std::io::stdout();
    let mut stderr = std::io::stderr();
    match copy_frames(response.into_body(), &mut stdout, &mut stderr).await? {
        Some(code) => Ok(i32::try_from(code).unwrap_or(126)),
        None => Err(Error::Message(
            "wharf-runner: the daemon ended the exec's output without its exit status".into(),
        )),
    }
}

/// `exec -i`: starts the exec on a connection upgraded to a raw stream
/// (docker's hijack): this process's stdin goes up (its end half-closes
/// the connection, which closes the command's stdin), frames come down.
async fn start_with_stdin(client: &Client, exec_id: &str) -> Result<i32, Error> {
    use std::io::Read;

    use bytes::Bytes;
    use http_body_util::{BodyExt, Empty, Limited};
    use hyper::header::{CONNECTION, HOST, UPGRADE};
    use hyper::{Request, StatusCode};
    use hyper_util::rt::TokioIo;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let transport = |e: &dyn std::fmt::Display| Error::Transport(e.to_string());
    let stream = tokio::net::UnixStream::connect(client.socket())
        .await
        .map_err(|_| Error::Connect(client.socket().to_path_buf()))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| transport(&e))?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "daemon connection ended");
        }
    });
    let request = Request::builder()
        .method(Method::POST)
        .uri(format!("/exec/{}/start?stdin=true", encode(exec_id)))
        .header(HOST, "wharf-runner")
        .header(CONNECTION, "Upgrade")
        .header(UPGRADE, "tcp")
        .body(Empty::<Bytes>::new())
        .map_err(|e| transport(&e))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| transport(&e))?;
    let status = response.status();
    if status != StatusCode::SWITCHING_PROTOCOLS {
        let bytes = Limited::new(response.into_body(), 64 * 1024)
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        let body: Option<crate::api::ErrorBody> = serde_json::from_slice(&bytes).ok();
        return Err(Error::Daemon {
            status,
            message: body.as_ref().map_or_else(
                || String::from_utf8_lossy(&bytes).trim().to_string(),
                |b| b.message.clone(),
            ),
            exit_code: body.and_then(|b| b.exit_code),
        });
    }
    let upgraded = hyper::upgrade::on(response)
        .await
        .map_err(|e| transport(&e))?;
    let (mut down, mut up) = tokio::io::split(TokioIo::new(upgraded));
    // A plain thread reads stdin: a blocking read of a terminal must not
    // hold up the end of the async runtime when the command is done.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(8);
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 32 * 1024];
        let mut stdin = std::io::stdin().lock();
        loop {
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx.blocking_send(buf[..n].to_vec()).is_err() {
                        break;
                    }
                }
            }
        }
    });
    let writer = tokio::spawn(async move {
        while let Some(chunk) = rx.recv().await {
            if up.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = up.shutdown().await;
    });
    let mut stdout = std::io::stdout();
    let mut stderr = std::io::stderr();
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let code = 'read: loop {
        while let Some((kind, payload, used)) = crate::api::decode_frame(&buf)
            .map_err(|e| Error::Transport(format!("bad output stream from the daemon: {e}")))?
        {
            use std::io::Write;
            match kind {
                crate::api::FrameKind::Stdout => {
                    let _ = stdout.write_all(payload).and_then(|_| stdout.flush());
                }
                crate::api::FrameKind::Stderr => {
                    let _ = stderr.write_all(payload).and_then(|_| stderr.flush());
                }
                crate::api::FrameKind::Exit => {
                    let exit: crate::api::WaitResponse = serde_json::from_slice(payload)
                        .map_err(|e| Error::Transport(format!("bad exit frame: {e}")))?;
                    break 'read Some(exit.status_code);
                }
            }
            buf.drain(..used);
        }
        match down.read(&mut chunk).await {
            Ok(0) | Err(_) => break None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    writer.abort();
    match code {
        Some(code) => Ok(i32::try_from(code).unwrap_or(126)),
        None => Err(Error::Message(
            "wharf-runner: the daemon ended the exec's output without its exit status".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command, ContainerCommand};

    fn exec_args(args: &[&str]) -> Result<ExecArgs, clap::Error> {
        let cli = Cli::try_parse_from(std::iter::once("wharf-runner").chain(args.iter().copied()))?;
        match cli.command {
            Command::Exec(a) | Command::Container(ContainerCommand::Exec(a)) => Ok(a),
            other => panic!("not exec: {other:?}"),
        }
    }

    #[test]
    fn flags_stop_at_the_container_and_the_command_keeps_its_own() {
        let a = exec_args(&[
            "exec",
            "-d",
            "-e",
            "A=1",
            "-w",
            "/tmp",
            "-u",
            "nobody:users",
            "web",
            "ls",
            "-la",
            "-e",
            "X",
        ])
        .unwrap();
        assert!(a.detach && !a.interactive && !a.tty);
        let (container, req) = exec_request(&a, |_| None).unwrap();
        assert_eq!(container, "web");
        assert_eq!(req.cmd, vec!["ls", "-la", "-e", "X"]);
        assert_eq!(req.env, vec!["A=1"]);
        assert_eq!(req.workdir.as_deref(), Some("/tmp"));
        assert_eq!(req.user.as_deref(), Some("nobody:users"));
        let a = exec_args(&["container", "exec", "-it", "c", "sh"]).unwrap();
        assert!(a.interactive && a.tty);
    }

    #[test]
    fn env_files_then_flags_and_bare_keys_from_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("env");
        std::fs::write(&file, "# c\nF=1\nHOSTVAR\n").unwrap();
        let a = exec_args(&[
            "exec",
            "--env-file",
            file.to_str().unwrap(),
            "-e",
            "HOSTVAR",
            "-e",
            "UNSET",
            "c",
            "env",
        ])
        .unwrap();
        let lookup = |k: &str| (k == "HOSTVAR").then(|| "h".to_string());
        let (_, req) = exec_request(&a, lookup).unwrap();
        assert_eq!(req.env, vec!["F=1", "HOSTVAR=h", "HOSTVAR=h", "UNSET"]);
        let a = exec_args(&["exec", "-e", "BAD KEY=1", "c", "env"]).unwrap();
        assert!(exec_request(&a, |_| None).is_err());
    }

    #[test]
    fn a_container_without_a_command_is_a_usage_error() {
        for args in [&["exec"][..], &["exec", "c"], &["exec", "-d", "c"]] {
            assert!(exec_args(args).is_err(), "{args:?}");
        }
    }
}
