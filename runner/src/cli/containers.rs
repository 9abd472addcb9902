//! The container commands (`run`, `create`, `start`, `ps`, `logs`,
//! `stop`, `kill`, `rm`, `wait`, `inspect`) with docker's output and exit
//! codes.
//!
//! Called by `cli::dispatch`; calls the daemon through `client`, `images`
//! (pulls for `run`/`create`), `format` and `bundle::parse`.

use std::io::Write;

use hyper::{Method, StatusCode};
use serde_json::Value;

use super::client::{Client, Error, copy_frames, encode};
use super::format::{self, Template};
use super::progress::Sink;
use super::{ContainerOpts, FormatNamesArgs, KillArgs, LogsArgs, NamesArgs, ObjectType, PsArgs};
use super::{RmArgs, RunArgs, StartArgs, StopArgs, images, outln};
use crate::api::{ContainerSummary, CreateRequest, CreateResponse, PullPolicy, WaitResponse};
use crate::bundle as parse;

/// Builds the create request from `run`/`create` flags, reading
/// `--env-file`s and resolving bare `-e KEY` from `lookup` (this
/// process's environment in real use).
pub fn create_request(
    opts: &ContainerOpts,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<CreateRequest, Error> {
    let Some((image, cmd)) = opts.args.split_first() else {
        return Err(Error::Message(
            "\"wharf-runner run\" requires at least 1 argument.".into(),
        ));
    };
    if opts.rm && opts.restart.as_ref().is_some_and(|r| !r.is_none()) {
        return Err(Error::Message(
            "wharf-runner: Conflicting options: cannot specify both --restart and --rm".into(),
        ));
    }
    let mut env = Vec::new();
    for path in &opts.env_file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Message(format!("wharf-runner: open {}: {e}", path.display())))?;
        let lines = parse::parse_env_file_with(&text, &lookup)
            .map_err(|e| Error::Message(format!("wharf-runner: {}: {e}", path.display())))?;
        env.extend(lines);
    }
    for arg in &opts.env {
        env.push(
            parse::resolve_env_arg(arg, &lookup)
                .map_err(|e| Error::Message(format!("wharf-runner: {e}")))?,
        );
    }
    let (mut binds, mut tmpfs) = (opts.volumes.clone(), opts.tmpfs.clone());
    for m in &opts.mounts {
        match super::volumes::parse_mount_flag(m).map_err(Error::Message)? {
            super::volumes::MountFlag::Volume(v) => binds.push(v),
            super::volumes::MountFlag::Tmpfs(t) => tmpfs.push(t),
        }
    }
    Ok(CreateRequest {
        image: image.clone(),
        name: opts.name.clone(),
        cmd: (!cmd.is_empty()).then(|| cmd.to_vec()),
        entrypoint: opts.entrypoint.clone(),
        env,
        workdir: opts.workdir.clone(),
        user: opts.user.clone(),
        hostname: opts.hostname.clone(),
        memory: opts.memory,
        memory_swap: opts.memory_swap,
        cpus: opts.cpus,
        cpu_shares: opts.cpu_shares,
        pids_limit: opts.pids_limit,
        network: opts.network,
        publish: opts.publish.clone(),
        publish_all: opts.publish_all,
        read_only: opts.read_only,
        auto_remove: opts.rm,
        runtime: opts.runtime.clone(),
        restart: opts.restart.clone().filter(|r| !r.is_none()),
        binds,
        tmpfs,
        tty: opts.tty,
        open_stdin: opts.interactive,
        // docker's StdinOnce (`create -i`; `run -d` clears it).
        stdin_once: opts.interactive,
        console_size: if opts.tty {
            super::tty::size().map(|(r, c)| [r, c])
        } else {
            None
        },
        labels: Default::default(),
    })
}

/// docker's "familiar" name with a default tag, as in `Unable to find
/// image 'busybox:latest' locally`.
pub fn with_default_tag(reference: &str) -> String {
    let last = reference.rsplit('/').next().unwrap_or(reference);
    if reference.contains('@') || last.contains(':') {
        reference.to_string()
    } else {
        format!("{reference}:latest")
    }
}

/// Creates the container, pulling the image first when `--pull always`,
/// or when the daemon does not have it (unless `--pull never`).
async fn create_container(
    client: &Client,
    request: &CreateRequest,
    pull: PullPolicy,
) -> Result<String, Error> {
    if pull == PullPolicy::Always {
        images::pull(client, &request.image, Sink::Stderr, false).await?;
    }
    let created: CreateResponse = match client
        .json(Method::POST, "/containers/create", Some(request))
        .await
    {
        Err(Error::Daemon {
            status, message, ..
        }) if status == StatusCode::NOT_FOUND
            && message.starts_with("No such image")
            && pull == PullPolicy::Missing =>
        {
            eprintln!(
                "Unable to find image '{}' locally",
                with_default_tag(&request.image)
            );
            images::pull(client, &request.image, Sink::Stderr, false).await?;
            client
                .json(Method::POST, "/containers/create", Some(request))
                .await?
        }
        other => other?,
    };
    for warning in &created.warnings {
        eprintln!("WARNING: {warning}");
    }
    Ok(created.id)
}

/// `create`: prints the new container's id.
pub async fn create(client: &Client, opts: ContainerOpts) -> Result<i32, Error> {
    let request = create_request(&opts, |k| std::env::var(k).ok())?;
    let id = create_container(client, &request, opts.pull).await?;
    outln(id);
    Ok(0)
}

/// `run`: create, then start detached (print the id) or attached (copy
/// the output, exit with the container's code).
pub async fn run(client: &Client, args: RunArgs) -> Result<i32, Error> {
    let mut request = create_request(&args.opts, |k| std::env::var(k).ok())?;
    // docker's StdinOnce: the end of an attached `run -i`'s input closes
    // the container's stdin.
    request.stdin_once = args.opts.interactive && !args.detach;
    if !args.detach
        && let Err(e) = super::attach::check_tty(args.opts.interactive, args.opts.tty)
    {
        // Before anything is made, with docker's exit code.
        eprintln!("{e}");
        return Ok(1);
    }
    let id = create_container(client, &request, args.opts.pull).await?;
    if args.detach {
        let started = client
            .call(
                Method::POST,
                &format!("/containers/{}/start?attach=false", encode(&id)),
            )
            .await;
        return match started {
            Ok(()) => {
                outln(id);
                Ok(0)
            }
            // The command could not be run: docker's 126/127 (or 125).
            Err(
                e @ Error::Daemon {
                    exit_code: Some(code),
                    ..
                },
            ) => {
                eprintln!("{e}");
                Ok(i32::try_from(code).unwrap_or(125))
            }
            Err(e) => Err(e),
        };
    }
    let code = if args.opts.interactive || args.opts.tty {
        let opts = super::attach::StreamOptions {
            stdin: args.opts.interactive,
            tty: args.opts.tty,
        };
        let work = super::attach::start_attached(client, &id, opts, &args.detach_keys);
        // Without a terminal, signals to the CLI go to the container (as
        // docker's --sig-proxy); with one, ^C is a byte on the pty.
        if args.opts.tty {
            work.await?
        } else {
            proxy_signals(client, &id, work).await?
        }
    } else {
        attach_start(client, &id).await?
    };
    if request.auto_remove {
        wait_removed(client, &id).await;
    }
    Ok(code)
}

/// docker's `run --rm` returns once the container (and its anonymous
/// volumes) are gone, so a script's next command does not see it. Bounded:
/// a daemon that is slow to remove it does not hang the CLI.
async fn wait_removed(client: &Client, id: &str) {
    let path = format!("/containers/{}/json", encode(id));
    // The daemon sends the exit after the removal, so the first answer is
    // normally a 404; otherwise ask again from 1 ms, doubling up to 50 ms
    // (about 10 s in all).
    let mut pause = std::time::Duration::from_millis(1);
    for _ in 0..210 {
        match client.json::<Value>(Method::GET, &path, None::<&()>).await {
            Err(e) if e.is_not_found() => return,
            Err(_) => return,
            Ok(_) => tokio::time::sleep(pause).await,
        }
        pause = (pause * 2).min(std::time::Duration::from_millis(50));
    }
}

/// Starts a container attached and copies its output; the container's
/// exit code, or an error when the stream ends without one.
async fn attach_start(client: &Client, container: &str) -> Result<i32, Error> {
    let response = client
        .send(
            Method::POST,
            &format!("/containers/{}/start?attach=true", encode(container)),
            None,
        )
        .await?;
    let mut stdout = std::io::stdout();
    let mut stderr = std::io::stderr();
    let copy = copy_frames(response.into_body(), &mut stdout, &mut stderr);
    match proxy_signals(client, container, copy).await? {
        Some(code) => Ok(i32::try_from(code).unwrap_or(super::EXIT_USAGE)),
        None => Err(Error::Message(
            "wharf-runner: the daemon ended the container's output without its exit status".into(),
        )),
    }
}

/// Waits for `work` while forwarding the signals a user or a supervisor
/// sends this process (INT, TERM, HUP, QUIT, USR1, USR2) to the
/// container, as docker's `--sig-proxy` does: `timeout 5 wharf-runner run
/// ...` stops the container, not just the CLI.
async fn proxy_signals<T>(
    client: &Client,
    container: &str,
    work: impl std::future::Future<Output = T>,
) -> T {
    use tokio::signal::unix::{SignalKind, signal};
    let kinds = [
        (SignalKind::interrupt(), "INT"),
        (SignalKind::terminate(), "TERM"),
        (SignalKind::hangup(), "HUP"),
        (SignalKind::quit(), "QUIT"),
        (SignalKind::user_defined1(), "USR1"),
        (SignalKind::user_defined2(), "USR2"),
    ];
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<&'static str>();
    let mut listeners = Vec::new();
    for (kind, name) in kinds {
        match signal(kind) {
            Ok(mut stream) => {
                let tx = tx.clone();
                listeners.push(tokio::spawn(async move {
                    while stream.recv().await.is_some() {
                        if tx.send(name).is_err() {
                            break;
                        }
                    }
                }));
            }
            Err(e) => tracing::debug!(error = %e, signal = name, "cannot proxy signal"),
        }
    }
    drop(tx);
    tokio::pin!(work);
    let result = loop {
        tokio::select! {
            result = &mut work => break result,
            Some(name) = rx.recv() => {
                let client = client.clone();
                let path = format!("/containers/{}/kill?signal={name}", encode(container));
                tokio::spawn(async move {
                    if let Err(e) = client.call(Method::POST, &path).await {
                        tracing::debug!(error = %e, "forwarding a signal");
                    }
                });
            }
        }
    };
    for listener in listeners {
        listener.abort();
    }
    result
}

/// `start`: prints each container as named; `-a` attaches to one.
pub async fn start(client: &Client, args: StartArgs) -> Result<i32, Error> {
    if args.attach {
        if args.containers.len() > 1 {
            return Err(Error::Message(
                "Error: you cannot start and attach multiple containers at once".into(),
            ));
        }
        if args.interactive {
            let name = &args.containers[0];
            let info: Value = client
                .json(
                    Method::GET,
                    &format!("/containers/{}/json", encode(name)),
                    None::<&()>,
                )
                .await?;
            let opts = super::attach::StreamOptions {
                stdin: info["Config"]["OpenStdin"].as_bool().unwrap_or(false),
                tty: info["Config"]["Tty"].as_bool().unwrap_or(false),
            };
            if let Err(e) = super::attach::check_tty(opts.stdin, opts.tty) {
                eprintln!("{e}");
                return Ok(1);
            }
            return super::attach::start_attached(client, name, opts, &args.detach_keys).await;
        }
        return attach_start(client, &args.containers[0]).await;
    }
    let mut failed = Vec::new();
    for name in &args.containers {
        let path = format!("/containers/{}/start?attach=false", encode(name));
        match client.call(Method::POST, &path).await {
            Ok(()) => outln(name),
            Err(e @ Error::Connect(_)) => return Err(e),
            Err(e) => {
                eprintln!("{e}");
                failed.push(name.as_str());
            }
        }
    }
    if failed.is_empty() {
        Ok(0)
    } else {
        Err(Error::Message(format!(
            "Error: failed to start containers: {}",
            failed.join(", ")
        )))
    }
}

/// The `ps` table (or ids with `-q`).
/// docker's default `ps` format.
const PS_FORMAT: &str =
    "table {{.ID}}\t{{.Image}}\t{{.Command}}\t{{.RunningFor}}\t{{.Status}}\t{{.Ports}}\t{{.Names}}";

/// `ps` as text. `--format` is parsed by the caller ([`ps_format`]); `-q`
/// wins over it, as in docker.
pub fn ps_output(
    containers: &[ContainerSummary],
    args: &PsArgs,
    format: Option<&format::ListFormat>,
    now: i64,
) -> String {
    let id = |c: &ContainerSummary| {
        if args.no_trunc {
            c.id.clone()
        } else {
            format::short_id(&c.id)
        }
    };
    if args.quiet {
        return containers.iter().map(|c| id(c) + "\n").collect();
    }
    if let Some(f) = format {
        // The fields of docker's container context.
        let header = serde_json::json!({
            "ID": "CONTAINER ID", "Image": "IMAGE", "Command": "COMMAND",
            "CreatedAt": "CREATED AT", "RunningFor": "CREATED", "Ports": "PORTS",
            "State": "STATE", "Status": "STATUS", "Names": "NAMES",
        });
        let rows: Vec<serde_json::Value> = containers
            .iter()
            .map(|c| {
                serde_json::json!({
                    "ID": id(c),
                    "Image": c.image,
                    "Command": format::command_cell(&c.command, args.no_trunc),
                    "CreatedAt": chrono::DateTime::from_timestamp(c.created, 0)
                        .map(|t| t.format("%Y-%m-%d %H:%M:%S +0000 UTC").to_string())
                        .unwrap_or_default(),
                    "RunningFor": format::ago(c.created, now),
                    "Ports": super::network::ports_cell(&c.ports),
                    "State": c.state,
                    "Status": c.status,
                    "Names": c.name,
                })
            })
            .collect();
        return f.render(&header, &rows);
    }
    let mut rows = vec![
        [
            "CONTAINER ID",
            "IMAGE",
            "COMMAND",
            "CREATED",
            "STATUS",
            "PORTS",
            "NAMES",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for c in containers {
        rows.push(vec![
            id(c),
            c.image.clone(),
            format::command_cell(&c.command, args.no_trunc),
            format::ago(c.created, now),
            c.status.clone(),
            super::network::ports_cell(&c.ports),
            c.name.clone(),
        ]);
    }
    format::table(&rows)
}

/// `--format` of `ps`: None for docker's own table.
pub fn ps_format(format: Option<&str>) -> Result<Option<format::ListFormat>, String> {
    format
        .map(|f| format::ListFormat::parse(Some(f), PS_FORMAT))
        .transpose()
}

/// `ps`.
pub async fn ps(client: &Client, args: PsArgs) -> Result<i32, Error> {
    let ps_format = ps_format(args.format.as_deref()).map_err(Error::Message)?;
    let mut containers: Vec<ContainerSummary> = client
        .json(
            Method::GET,
            &format!("/containers/json?all={}", args.all),
            None::<&()>,
        )
        .await?;
    containers.sort_by_key(|c| std::cmp::Reverse(c.created));
    let text = ps_output(&containers, &args, ps_format.as_ref(), format::now());
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
    Ok(0)
}

/// `logs`: the frames to stdout/stderr.
pub async fn logs(client: &Client, args: LogsArgs) -> Result<i32, Error> {
    let path = format!(
        "/containers/{}/logs?follow={}&tail={}&timestamps={}",
        encode(&args.container),
        args.follow,
        encode(&args.tail),
        args.timestamps
    );
    let response = client.send(Method::GET, &path, None).await?;
    let mut stdout = std::io::stdout();
    let mut stderr = std::io::stderr();
    copy_frames(response.into_body(), &mut stdout, &mut stderr).await?;
    Ok(0)
}

/// Runs one request per container, printing the name on success and the
/// daemon's error otherwise; 1 when any failed.
async fn each(
    client: &Client,
    containers: &[String],
    path: impl Fn(&str) -> String,
    ok_status: Option<StatusCode>,
    method: Method,
) -> Result<i32, Error> {
    let mut code = 0;
    for name in containers {
        match client.call(method.clone(), &path(&encode(name))).await {
            Ok(()) => outln(name),
            Err(Error::Daemon { status, .. }) if Some(status) == ok_status => outln(name),
            Err(e @ Error::Connect(_)) => return Err(e),
            Err(e) => {
                eprintln!("{e}");
                code = 1;
            }
        }
    }
    Ok(code)
}

/// `stop`: a stopped container (304) counts as stopped, as in docker.
pub async fn stop(client: &Client, args: StopArgs) -> Result<i32, Error> {
    let query = args.time.map(|t| format!("?t={t}")).unwrap_or_default();
    each(
        client,
        &args.containers,
        |c| format!("/containers/{c}/stop{query}"),
        Some(StatusCode::NOT_MODIFIED),
        Method::POST,
    )
    .await
}

/// `restart`.
pub async fn restart(client: &Client, args: StopArgs) -> Result<i32, Error> {
    let query = args.time.map(|t| format!("?t={t}")).unwrap_or_default();
    each(
        client,
        &args.containers,
        |c| format!("/containers/{c}/restart{query}"),
        None,
        Method::POST,
    )
    .await
}

/// `kill`.
pub async fn kill(client: &Client, args: KillArgs) -> Result<i32, Error> {
    let signal = encode(&args.signal);
    each(
        client,
        &args.containers,
        |c| format!("/containers/{c}/kill?signal={signal}"),
        None,
        Method::POST,
    )
    .await
}

/// `rm`.
pub async fn rm(client: &Client, args: RmArgs) -> Result<i32, Error> {
    each(
        client,
        &args.containers,
        |c| format!("/containers/{c}?force={}&v={}", args.force, args.volumes),
        None,
        Method::DELETE,
    )
    .await
}

/// `wait`: prints each exit code.
pub async fn wait(client: &Client, args: NamesArgs) -> Result<i32, Error> {
    let mut code = 0;
    for name in &args.containers {
        let path = format!("/containers/{}/wait", encode(name));
        match client
            .json::<WaitResponse>(Method::POST, &path, None::<&()>)
            .await
        {
            Ok(w) => outln(w.status_code),
            Err(e @ Error::Connect(_)) => return Err(e),
            Err(e) => {
                eprintln!("{e}");
                code = 1;
            }
        }
    }
    Ok(code)
}

/// `inspect`: a JSON array of what was found (or one templated line per
/// object); `Error: No such object: X` for the rest, exit 1.
pub async fn inspect(
    client: &Client,
    object_type: Option<ObjectType>,
    args: FormatNamesArgs,
) -> Result<i32, Error> {
    let template = args
        .format
        .as_deref()
        .map(Template::parse)
        .transpose()
        .map_err(Error::Message)?;
    let mut found: Vec<Value> = Vec::new();
    let mut code = 0;
    for name in &args.names {
        let container_path = format!("/containers/{}/json", encode(name));
        let image_path = format!("/images/inspect?name={}", encode(name));
        let mut result = Err(Error::Daemon {
            status: StatusCode::NOT_FOUND,
            message: String::new(),
            exit_code: None,
        });
        if object_type != Some(ObjectType::Image) {
            result = client.json(Method::GET, &container_path, None::<&()>).await;
        }
        if object_type != Some(ObjectType::Container)
            && matches!(&result, Err(e) if e.is_not_found())
        {
            result = client.json(Method::GET, &image_path, None::<&()>).await;
        }
        match result {
            Ok(value) => found.push(value),
            Err(e) if e.is_not_found() => {
                let what = match object_type {
                    None => "object",
                    Some(ObjectType::Container) => "container",
                    Some(ObjectType::Image) => "image",
                };
                eprintln!("Error: No such {what}: {name}");
                code = 1;
            }
            Err(e @ Error::Connect(_)) => return Err(e),
            Err(e) => {
                eprintln!("{e}");
                code = 1;
            }
        }
    }
    match template {
        Some(t) => {
            for value in &found {
                outln(t.render(value));
            }
        }
        None => outln(format::json_pretty(&Value::Array(found))),
    }
    Ok(code)
}
