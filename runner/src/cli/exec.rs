//! `exec`: runs a command in a running container with docker's flags,
//! output and exit codes (the command's own code; 126/127 when it cannot
//! be run, with the runtime's message; 1 when the container is missing or
//! not running).
//!
//! Two calls, as docker: create the exec instance, then start it attached
//! (copy the frames, exit with the exit frame's code) or detached (`-d`);
//! with `-i` or `-t` the start is an upgraded connection run by attach's
//! `stream` (stdin up, raw mode and window sizes for a terminal, the detach
//! keys with `-it`). Called by `cli::dispatch`; calls the daemon through
//! `client`, `attach`, `tty`.

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
    /// Override the key sequence for detaching a container
    #[arg(long = "detach-keys", value_name = "KEYS")]
    pub detach_keys: Option<String>,
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
            console_size: None,
            detach_keys: args.detach_keys.clone(),
        },
    ))
}

/// `exec`.
pub async fn exec(client: &Client, args: ExecArgs) -> Result<i32, Error> {
    if !args.detach {
        super::attach::check_tty(args.interactive, args.tty)?;
    }
    if let Some(keys) = &args.detach_keys {
        crate::stdio::parse_detach_keys(keys).map_err(Error::Message)?;
    }
    let (container, mut request) = exec_request(&args, |k| std::env::var(k).ok())?;
    if args.tty {
        request.console_size = super::tty::size().map(|(rows, cols)| [rows, cols]);
    }
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
    if args.interactive || args.tty {
        let path = format!(
            "/exec/{}/start?stdin={}",
            encode(&created.id),
            args.interactive
        );
        let io = super::attach::upgrade(client, &path).await?;
        let resize = format!("/exec/{}/resize", encode(&created.id));
        let opts = super::attach::StreamOptions {
            stdin: args.interactive,
            tty: args.tty,
        };
        return super::attach::stream(client, io, opts, Some(resize))
            .await
            .map(super::attach::exit_code);
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
